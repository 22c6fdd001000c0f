//! The lists of the VMM's own threads: main, vCPU, API, stdin, passt's log, and what
//! starting a thread takes (the spawner's share).

use super::ioctls::{self, *};
use super::List;

/// Waiting on an epoll set (event loops, device workers).
pub(super) const EPOLL: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
];

/// The main thread once its VM runs: the event loop, the API's requests (pause,
/// resume, snapshots, drive and network updates, the balloon), a reboot's rebuild of the
/// VM (`--on-reboot restart`: KVM, guest memory, devices, the kernel read again), kicks
/// of vCPU threads, and the end of the run (files removed, the terminal restored).
pub(super) fn main() -> List {
    let mut l = List::default();
    l.allow(EPOLL)
        .allow(&[
            libc::SYS_epoll_create1,
            libc::SYS_eventfd2,
            libc::SYS_timerfd_create,
            libc::SYS_timerfd_settime,
            // PATCH /balloon/statistics: whether the balloon's statistics timer is armed.
            libc::SYS_timerfd_gettime,
            libc::SYS_openat,
            libc::SYS_newfstatat,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_lseek,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_ftruncate,
            libc::SYS_fallocate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_rename,
            libc::SYS_renameat2,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_mkdir,
            libc::SYS_mkdirat,
            libc::SYS_getcwd,
            libc::SYS_getdents64,
            libc::SYS_readlink,
            libc::SYS_mincore,
            libc::SYS_memfd_create,
            libc::SYS_fcntl,
            libc::SYS_dup,
            libc::SYS_dup3,
            libc::SYS_pipe2,
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_tgkill,
            libc::SYS_kill,
            libc::SYS_wait4,
            libc::SYS_socket,
            libc::SYS_socketpair,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_shutdown,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_getsockopt,
            libc::SYS_setsockopt,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ])
        .ioctls(KVM_BUILD)
        .ioctls(TAP)
        .ioctls(VHOST_NET)
        .ioctls(TERMINAL)
        .ioctls(&[FIONBIO, FIOCLEX]);
    l
}

/// A vCPU thread: `KVM_RUN`, the device emulation of its exits (the serial console's
/// output, eventfds), a paused vCPU's state, and what a driver's status write does to a
/// device: activation (a worker's epoll set and eventfds, an io_uring, a rate limiter's
/// timer, a tap's offloads, vhost-net's rings, irqfds) and reset (joining the worker).
pub(super) fn vcpu() -> List {
    let mut l = List::default();
    l.allow(EPOLL)
        .allow(&[
            libc::SYS_epoll_create1,
            libc::SYS_eventfd2,
            libc::SYS_fcntl,
            libc::SYS_dup,
            libc::SYS_timerfd_create,
            libc::SYS_timerfd_settime,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_register,
            libc::SYS_io_uring_enter,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            // vhost-net opens /dev/vhost-net (one instance per queue pair) when the
            // guest's driver activates the device, on the vCPU thread that wrote the
            // status; the jail leaves nothing else to open.
            libc::SYS_openat,
        ])
        .ioctls(ioctls::VCPU_RUN)
        .ioctls(KVM_EVENTFDS)
        .ioctls(TAP)
        .ioctls(VHOST_NET)
        .ioctls(&[FIONBIO]);
    l
}

/// The API server: a current-thread tokio runtime accepting and serving HTTP
/// connections on its Unix socket; requests go to the main thread over a channel and
/// an eventfd.
pub(super) fn api() -> List {
    let mut l = List::default();
    l.allow(EPOLL).allow(&[
        libc::SYS_accept4,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
        libc::SYS_fcntl,
    ]);
    l.ioctls(&[FIONBIO]);
    l
}

/// The stdin reader: reads stdin, writes an eventfd.
pub(super) fn stdin() -> List {
    List::default()
}

/// passt's stderr copier: reads a pipe, writes the log.
pub(super) fn passt_log() -> List {
    List::default()
}

/// `prctl` options: naming a thread (std does it in the new thread) and the
/// no-new-privileges bit a seccomp filter needs.
const PR_SET_NAME: u64 = libc::PR_SET_NAME as u64;
const PR_SET_NO_NEW_PRIVS: u64 = libc::PR_SET_NO_NEW_PRIVS as u64;

/// Starting a thread, and what the new thread does before its own filter is on: its
/// robust futex list, rseq, its name, its CPUs, the filter itself.
pub(super) fn spawning() -> List {
    let mut l = List::default();
    l.allow(&[
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sched_setaffinity,
        libc::SYS_seccomp,
    ])
    .allow_arg(libc::SYS_prctl, 0, &[PR_SET_NAME, PR_SET_NO_NEW_PRIVS]);
    l
}
