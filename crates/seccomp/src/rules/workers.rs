//! The lists of the device workers. Each waits on its epoll set, lowers its own
//! scheduling class (`SCHED_BATCH`), and does its device's I/O.

use super::ioctls::*;
use super::threads::EPOLL;
use super::List;

/// What every worker does: its event loop, its priority, a rate limiter's timer.
fn worker() -> List {
    let mut l = List::default();
    l.allow(EPOLL).allow(&[
        libc::SYS_sched_setscheduler,
        libc::SYS_timerfd_settime,
        libc::SYS_timerfd_gettime,
    ]);
    l
}

/// virtio-blk with the thread engine: vectored reads and writes at offsets, flushes,
/// discard and write-zeroes (fallocate), qcow2's growth.
pub(super) fn block() -> List {
    let mut l = worker();
    l.allow(&[
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_preadv2,
        libc::SYS_pwritev2,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
        libc::SYS_ftruncate,
        libc::SYS_lseek,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
    ]);
    l
}

/// virtio-blk with the io_uring engine: the same, plus submitting to its ring.
pub(super) fn block_uring() -> List {
    let mut l = block();
    l.allow(&[libc::SYS_io_uring_enter, libc::SYS_io_uring_register]);
    l
}

/// virtio-net: frames to and from a tap (readv/writev) or passt's stream socket, and the
/// control queue's changes to the tap (offloads, multi-queue).
pub(super) fn net() -> List {
    let mut l = worker();
    l.allow(&[
        libc::SYS_readv,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
    ])
    .ioctls(&[TUNSETOFFLOAD, TUNSETQUEUE, TUNSETVNETHDRSZ]);
    l
}

/// vhost-net's control queue: re-pairing the kernel's rings and the taps' queues.
pub(super) fn vhost_net() -> List {
    let mut l = worker();
    l.ioctls(VHOST_NET)
        .ioctls(&[TUNSETOFFLOAD, TUNSETQUEUE, TUNSETVNETHDRSZ]);
    l
}

/// virtio-vsock: the host side's Unix sockets (connecting to `<uds>_<port>`, accepting
/// on `<uds>`), credit and retry timers, and whether a host socket that reached its end
/// of stream was closed altogether (`sock::hung_up`: a throwaway epoll).
pub(super) fn vsock() -> List {
    let mut l = worker();
    l.allow(&[
        libc::SYS_epoll_create1,
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_accept4,
        libc::SYS_shutdown,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_getsockopt,
        libc::SYS_fcntl,
    ])
    .ioctls(&[FIONBIO]);
    l
}

/// virtio-balloon: giving pages back (madvise, in every list) and punching holes in a
/// file that backs guest memory; the statistics timer.
pub(super) fn balloon() -> List {
    let mut l = worker();
    l.allow(&[libc::SYS_fallocate]);
    l
}

/// virtio-rng: the kernel's random bytes.
pub(super) fn rng() -> List {
    worker()
}

/// A worker of no declared kind: any of the above.
pub(super) fn any() -> List {
    let mut l = block_uring();
    for other in [net(), vhost_net(), vsock(), balloon(), rng()] {
        l.union(&other);
    }
    l
}
