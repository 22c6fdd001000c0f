//! vhost-net tests.
//!
//! - Pure parts (features, header length, queue layout, ring checks, memory table, error
//!   messages, the sticky interrupt bit) run anywhere.
//! - Tests with real taps create them in a network namespace of their own
//!   (`unshare(CLONE_NEWNET)` on a thread of their own), never among the host's
//!   interfaces; they need CAP_NET_ADMIN and `/dev/net/tun` and say "skipped" without.
//! - End-to-end tests need `/dev/vhost-net` too: a tiny driver builds rings in guest memory,
//!   the kernel moves the frames, a packet socket on the tap sees them. Without
//!   `/dev/vhost-net` they print a loud `SKIPPED` line and pass; the nested testbed (which
//!   loads vhost_net) runs them for real.
//!
//! Waits are bounded (a broken device fails the test instead of hanging it); sleeps only
//! give the kernel the chance to do what it must not.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::kern::{host_range, memory_regions, open_error, ring_sizes, vring_host};
use super::*;
use crate::virtio::net::{FrameBufs, Net, Recv, TapError};
use crate::virtio::test_util::{guest_memory, wait_readable, DriverQueue};
use crate::virtio::{interrupt_status, Interrupt};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];

/// What the kernel's vhost-net reports (`VHOST_NET_FEATURES` of Linux 6.x): the ring
/// features, `VIRTIO_F_NOTIFY_ON_EMPTY`, `VIRTIO_F_ANY_LAYOUT` (= bit 27,
/// `VHOST_NET_F_VIRTIO_NET_HDR`), `VHOST_F_LOG_ALL`, `VIRTIO_F_ACCESS_PLATFORM`,
/// `VIRTIO_F_RING_RESET`.
const KERNEL_REPORTS: u64 = features::VERSION_1
    | features::RING_EVENT_IDX
    | features::RING_INDIRECT_DESC
    | nf::MRG_RXBUF
    | (1 << 24)
    | VHOST_NET_F_VIRTIO_NET_HDR
    | VHOST_F_LOG_ALL
    | (1 << 33)
    | (1 << 40);

/// What the guest accepts in the end-to-end tests.
const ACKED: u64 = features::VERSION_1 | nf::MRG_RXBUF | nf::MAC | nf::STATUS;

// --- a stand-in backend for the userspace device, to compare with --------------------------

struct FakeTap(UnixDatagram);

impl NetBackend for FakeTap {
    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
    fn has_vnet_hdr(&self) -> bool {
        true
    }
    fn recv(&mut self, _: &mut FrameBufs<'_>) -> std::io::Result<Recv> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
    fn send(&mut self, _: &mut FrameBufs<'_>) -> std::io::Result<()> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
    fn set_offload(&self, _: u32) -> std::io::Result<()> {
        Ok(())
    }
}

fn userspace_net(pairs: usize, cfg: NetConfig) -> Net {
    let backends = (0..pairs)
        .map(|_| Box::new(FakeTap(UnixDatagram::unbound().unwrap())) as Box<dyn NetBackend>)
        .collect();
    Net::new("net0", cfg, backends).unwrap()
}

fn with_mtu(mtu: u16) -> NetConfig {
    let mut c = NetConfig::new(MAC);
    c.mtu = Some(mtu);
    c
}

// --- pure parts ----------------------------------------------------------------------------

#[test]
fn offered_features_are_the_userspace_devices_with_a_tap() {
    for (pairs, mtu) in [(1, None), (1, Some(1400)), (2, None), (4, Some(9000))] {
        let cfg = match mtu {
            Some(m) => with_mtu(m),
            None => NetConfig::new(MAC),
        };
        let want = userspace_net(pairs, cfg).avail_features();
        assert_eq!(
            offered_features(KERNEL_REPORTS, pairs, mtu),
            want,
            "{pairs} pairs, MTU {mtu:?}"
        );
    }
    let f = offered_features(KERNEL_REPORTS, 2, None);
    for bit in [
        VHOST_F_LOG_ALL,
        VHOST_NET_F_VIRTIO_NET_HDR,
        1 << 24,
        1 << 33,
        1 << 40,
    ] {
        assert_eq!(f & bit, 0, "{bit:#x} is the kernel's, not the guest's");
    }
    assert_ne!(f & (nf::MQ | nf::CTRL_VQ), 0);
    assert_eq!(
        offered_features(KERNEL_REPORTS, 1, None) & (nf::MQ | nf::CTRL_VQ),
        0
    );
}

#[test]
fn ring_features_the_kernel_lacks_are_not_offered_but_device_features_are() {
    let f = offered_features(features::VERSION_1, 1, None);
    assert_eq!(
        f & (features::RING_EVENT_IDX | features::RING_INDIRECT_DESC | nf::MRG_RXBUF),
        0
    );
    assert_eq!(f & DEVICE_FEATURES, DEVICE_FEATURES);
    assert_ne!(f & features::VERSION_1, 0);
}

#[test]
fn the_kernel_is_told_only_ring_features_and_never_to_handle_the_header() {
    let everything = offered_features(KERNEL_REPORTS, 4, Some(1500));
    let k = kernel_features(everything, KERNEL_REPORTS);
    assert_eq!(k, KERNEL_FEATURES);
    assert_eq!(k & VHOST_NET_F_VIRTIO_NET_HDR, 0);
    assert_eq!(k & VHOST_F_LOG_ALL, 0);
    // Nothing the kernel did not report, even if acked.
    assert_eq!(
        kernel_features(everything, features::VERSION_1),
        features::VERSION_1
    );
}

#[test]
fn the_vnet_header_is_12_bytes_with_version_1_or_mrg_rxbuf() {
    assert_eq!(vnet_hdr_len(features::VERSION_1), 12);
    assert_eq!(vnet_hdr_len(nf::MRG_RXBUF), 12);
    assert_eq!(vnet_hdr_len(ACKED), 12);
    assert_eq!(vnet_hdr_len(nf::MAC), 10);
}

#[test]
fn the_queue_layout_follows_mq_and_ctrl_vq() {
    let mq = nf::MQ | nf::CTRL_VQ;
    assert_eq!(
        Layout::new(1, ACKED),
        Layout {
            pairs: 1,
            ctrl: None
        }
    );
    assert_eq!(Layout::new(1, ACKED).queues(), 2);
    let l = Layout::new(3, ACKED | mq);
    assert_eq!(
        l,
        Layout {
            pairs: 3,
            ctrl: Some(6)
        }
    );
    assert_eq!(l.queues(), 7);
    // A driver without MQ uses one pair; its control queue follows that pair.
    assert_eq!(
        Layout::new(3, ACKED | nf::CTRL_VQ),
        Layout {
            pairs: 1,
            ctrl: Some(2)
        }
    );
}

fn queue(size: u16, desc: u64, avail: u64, used: u64) -> QueueState {
    QueueState {
        max_size: 256,
        next_avail: 0,
        next_used: 0,
        event_idx_enabled: false,
        size,
        ready: true,
        desc_table: desc,
        avail_ring: avail,
        used_ring: used,
    }
}

#[test]
fn rings_inside_guest_memory_translate_to_its_host_addresses() {
    let mem = guest_memory(1 << 20);
    let q = queue(256, 0x1_0000, 0x1_1000, 0x1_2000);
    let h = vring_host(&mem, &q).unwrap();
    let host = |a: u64| mem.get_host_address(GuestAddress(a)).unwrap() as u64;
    assert_eq!(
        h,
        kern::VringHost {
            desc: host(0x1_0000),
            avail: host(0x1_1000),
            used: host(0x1_2000),
        }
    );
    assert_eq!(ring_sizes(256), (4096, 6 + 512, 6 + 2048));
    // A ring that ends exactly at the end of memory is inside.
    let (_, _, used_len) = ring_sizes(256);
    let end = (1 << 20) - used_len;
    let end = end & !3;
    assert!(vring_host(&mem, &queue(256, 0x1_0000, 0x1_1000, end)).is_ok());
}

#[test]
fn rings_outside_guest_memory_or_across_regions_are_refused() {
    // Two regions, adjacent in guest memory but separate host mappings, and a hole.
    let mem = crate::virtio::GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x1_0000),
        (GuestAddress(0x1_0000), 0x1_0000),
        (GuestAddress(0x10_0000), 0x1_0000),
    ])
    .unwrap();
    let ok = queue(64, 0x1000, 0x2000, 0x3000);
    assert!(vring_host(&mem, &ok).is_ok());
    let outside = |r: Result<kern::VringHost, RingError>, which: &str| match r {
        Err(RingError::OutsideMemory { ring, .. }) => assert_eq!(ring, which),
        other => panic!("{which}: {other:?}"),
    };
    // The descriptor table (1 KiB) straddles the first region's end.
    outside(
        vring_host(&mem, &queue(64, 0xFE00, 0x2000, 0x3000)),
        "descriptor table",
    );
    // The available ring runs into the hole after the second region.
    outside(
        vring_host(&mem, &queue(64, 0x1000, 0x1_FFF0, 0x3000)),
        "available ring",
    );
    // The used ring is in no region at all, or wraps around the address space.
    outside(
        vring_host(&mem, &queue(64, 0x1000, 0x2000, 0x5_0000)),
        "used ring",
    );
    outside(
        vring_host(&mem, &queue(64, 0x1000, 0x2000, u64::MAX - 3)),
        "used ring",
    );
    assert!(host_range(&mem, 0x10_0000, 0x1_0000).is_some());
    assert!(host_range(&mem, 0x10_0000, 0x1_0001).is_none());
    // Misaligned parts.
    assert_eq!(
        vring_host(&mem, &queue(64, 0x1008, 0x2000, 0x3000)),
        Err(RingError::Misaligned {
            ring: "descriptor table",
            addr: 0x1008,
            align: 16
        })
    );
    assert!(matches!(
        vring_host(&mem, &queue(64, 0x1000, 0x2001, 0x3000)),
        Err(RingError::Misaligned { align: 2, .. })
    ));
    assert!(matches!(
        vring_host(&mem, &queue(64, 0x1000, 0x2000, 0x3002)),
        Err(RingError::Misaligned { align: 4, .. })
    ));
    // Sizes the kernel would refuse.
    for size in [0, 100, 512] {
        assert!(
            matches!(
                vring_host(&mem, &queue(size, 0x1000, 0x2000, 0x3000)),
                Err(RingError::BadSize { .. })
            ),
            "size {size}"
        );
    }
    let e = VhostNetError::Ring {
        name: "net0".into(),
        queue: 3,
        why: RingError::OutsideMemory {
            ring: "used ring",
            addr: 0x5_0000,
            len: 518,
        },
    };
    assert_eq!(
        e.to_string(),
        "net0: queue 3 cannot be given to vhost-net: its used ring at 0x50000 (518 bytes) is not inside one guest memory region"
    );
}

#[test]
fn the_memory_table_lists_every_region_with_its_host_mapping() {
    let mem = crate::virtio::GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10_0000),
        (GuestAddress(0x1_0000_0000), 0x2_0000),
    ])
    .unwrap();
    let t = memory_regions(&mem);
    assert_eq!(t.len(), 2);
    for (r, (base, size)) in t
        .iter()
        .zip([(0u64, 0x10_0000u64), (0x1_0000_0000, 0x2_0000)])
    {
        assert_eq!(r.guest_phys_addr, base);
        assert_eq!(r.memory_size, size);
        assert_eq!(
            r.userspace_addr,
            mem.get_host_address(GuestAddress(base)).unwrap() as u64
        );
        assert_eq!(r.mmap_handle, -1);
    }
}

#[test]
fn error_messages_say_what_to_do() {
    let errno = std::io::Error::from_raw_os_error;
    for e in [libc::ENOENT, libc::ENODEV, libc::ENXIO] {
        let err = open_error(errno(e));
        assert!(
            matches!(err, VhostNetError::Unavailable { .. }),
            "{e}: {err}"
        );
        assert!(err.is_unavailable());
        assert!(err.to_string().contains("modprobe vhost_net"), "{err}");
    }
    let err = open_error(errno(libc::EACCES));
    assert!(matches!(err, VhostNetError::Permission { .. }) && err.is_unavailable());
    assert!(err.to_string().contains("read/write access"), "{err}");
    let err = open_error(errno(libc::EIO));
    assert!(matches!(err, VhostNetError::Open { .. }) && !err.is_unavailable());
    assert!(err.into_taps().is_empty());
    let err = VhostNetError::Ioctl {
        name: "net0".into(),
        op: "VHOST_SET_VRING_ADDR",
        pair: Some(1),
        source: errno(libc::EINVAL),
    };
    let m = err.to_string();
    assert!(
        m.starts_with("net0: VHOST_SET_VRING_ADDR (queue pair 1) failed: "),
        "{m}"
    );
    let err = VhostNetError::Ioctl {
        name: VHOST_NET_PATH.into(),
        op: "VHOST_GET_FEATURES",
        pair: None,
        source: errno(libc::ENOTTY),
    };
    assert!(err
        .to_string()
        .starts_with("/dev/vhost-net: VHOST_GET_FEATURES failed: "));
    let err = VhostNetError::NoVersion1 { features: 0x1234 };
    assert!(err.to_string().contains("use the userspace network device"));
}

#[test]
fn the_sticky_used_ring_bit_survives_acks_until_reset() {
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let i = Interrupt::new(irq);
    assert_eq!(i.status(), 0);
    i.set_sticky_used_ring(true);
    assert_eq!(i.status(), interrupt_status::USED_RING);
    i.ack(interrupt_status::USED_RING);
    assert_eq!(i.status(), interrupt_status::USED_RING);
    i.signal_config_change();
    assert_eq!(
        i.status(),
        interrupt_status::USED_RING | interrupt_status::CONFIG_CHANGE
    );
    i.ack(interrupt_status::CONFIG_CHANGE | interrupt_status::USED_RING);
    assert_eq!(i.status(), interrupt_status::USED_RING);
    i.set_sticky_used_ring(false);
    assert_eq!(i.status(), 0);
    i.set_sticky_used_ring(true);
    i.reset();
    assert_eq!(i.status(), 0);
}

struct Unlimited;

impl crate::virtio::net::Limiter for Unlimited {
    fn consume(&mut self, _: u64) -> bool {
        true
    }
    fn blocked_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn replenished(&mut self) -> bool {
        true
    }
}

#[test]
fn bad_configurations_are_refused_before_vhost_is_asked() {
    let e = VhostNet::new("net0", NetConfig::new(MAC), Vec::new()).unwrap_err();
    assert!(
        matches!(e, VhostNetError::Config(NetError::NoBackends { .. })),
        "{e}"
    );
    assert!(!e.is_unavailable());
    let mut cfg = NetConfig::new(MAC);
    cfg.mtu = Some(60);
    assert!(check_config("net0", &cfg, 1)
        .unwrap_err()
        .to_string()
        .contains("below the minimum"));
    let cfg = NetConfig::new([0x01, 0, 0, 0, 0, 1]);
    assert!(check_config("net0", &cfg, 1)
        .unwrap_err()
        .to_string()
        .contains("multicast"));
    assert!(check_config("net0", &NetConfig::new(MAC), MAX_QUEUE_PAIRS + 1).is_err());
    let mut cfg = NetConfig::new(MAC);
    cfg.tx_limiter = Some(Box::new(Unlimited));
    let e = check_config("net0", &cfg, 1).unwrap_err();
    assert!(
        matches!(e, VhostNetError::RateLimits { .. }) && e.to_string().contains("rate limits"),
        "{e}"
    );
}

// --- taps in a network namespace of the test's own ------------------------------------------

/// Runs `f` on a thread in a new network namespace (which ends with the thread); `None`
/// where this process may not make one.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipped: cannot make a network namespace: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(f())
    })
    .join()
    .unwrap()
}

/// Opens `count` queues of a new tap `name` (in the calling thread's namespace); `None`
/// where taps cannot be made.
fn taps(name: &str, count: usize) -> Option<Vec<Tap>> {
    match Tap::open_queues(name, count) {
        Ok(t) => Some(t),
        Err(
            e @ (TapError::Permission { .. }
            | TapError::TunMissing { .. }
            | TapError::TunAccess { .. }),
        ) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// True if `/dev/vhost-net` can be used; prints why not otherwise.
fn vhost_available(test: &str) -> bool {
    match VhostNet::probe() {
        Ok(_) => true,
        Err(e) if e.is_unavailable() => {
            eprintln!("SKIPPED: /dev/vhost-net not available ({e}): {test} did not run");
            false
        }
        Err(e) => panic!("{e}"),
    }
}

fn read_config(dev: &dyn VirtioDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0xAA; len];
    dev.read_config(offset, &mut v);
    v
}

#[test]
fn the_configuration_space_and_queues_are_the_userspace_devices() {
    in_netns(|| {
        for (pairs, mtu) in [(1, None), (1, Some(1400)), (3, Some(9000))] {
            let Some(taps) = taps("fvh%d", pairs) else {
                return;
            };
            let cfg = || match mtu {
                Some(m) => with_mtu(m),
                None => NetConfig::new(MAC),
            };
            let dev = VhostNet::with_vhost_features("net0", cfg(), taps, KERNEL_REPORTS).unwrap();
            let user = userspace_net(pairs, cfg());
            assert_eq!(dev.device_type(), device_type::NET);
            assert_eq!(dev.queue_max_sizes(), user.queue_max_sizes());
            assert_eq!(dev.avail_features(), user.avail_features());
            assert_eq!(dev.queue_pairs(), pairs);
            assert_eq!(dev.mac(), MAC);
            for offset in 0..16 {
                assert_eq!(
                    read_config(&dev, offset, 4),
                    read_config(&user, offset, 4),
                    "{pairs} pairs, offset {offset}"
                );
            }
            let c = read_config(&dev, 0, config_offset::SIZE);
            assert_eq!(&c[..6], &MAC);
            assert_eq!(u16::from_le_bytes([c[6], c[7]]), STATUS_LINK_UP);
            assert_eq!(u16::from_le_bytes([c[8], c[9]]), pairs as u16);
            assert_eq!(u16::from_le_bytes([c[10], c[11]]), mtu.unwrap_or(0));
            assert_eq!(read_config(&dev, 1 << 40, 2), [0, 0]);
            // Not active: nothing to report, nothing to pause.
            assert!(dev.queue_states().is_err());
        }
        let Some(taps) = taps("fvh%d", 1) else {
            return;
        };
        let e = VhostNet::with_vhost_features("net0", NetConfig::new(MAC), taps, 0).unwrap_err();
        assert!(matches!(e, VhostNetError::NoVersion1 { .. }), "{e}");
    });
}

#[test]
fn without_vhost_net_the_taps_come_back_for_the_userspace_device() {
    in_netns(|| {
        let Some(t) = taps("fvh%d", 1) else {
            return;
        };
        let tap_name = t[0].name().to_string();
        match VhostNet::new("net0", NetConfig::new(MAC), t) {
            Ok(dev) => {
                eprintln!("vhost-net is available here: nothing to fall back from");
                assert_eq!(dev.queue_pairs(), 1);
                assert_ne!(dev.vhost_features() & features::VERSION_1, 0);
            }
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                let back = e.into_taps();
                assert_eq!(back.len(), 1);
                assert_eq!(back[0].name(), tap_name);
                // They work for the userspace device.
                let backends = back
                    .into_iter()
                    .map(|t| Box::new(t) as Box<dyn NetBackend>)
                    .collect();
                Net::new("net0", NetConfig::new(MAC), backends).unwrap();
            }
        }
    });
}

// --- a driver ---------------------------------------------------------------------------

const MEM_SIZE: usize = 4 << 20;
const BUF_BASE: u64 = 0x10_0000;
const QSIZE: u16 = 64;

/// The driver side of an activated device's queues.
struct Rig {
    mem: crate::virtio::GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    irq: EventFd,
    qs: Vec<DriverQueue>,
    next_desc: Vec<u16>,
    notify: Vec<EventFd>,
    next_buf: u64,
}

impl Rig {
    fn new(queues: usize) -> Rig {
        let mem = guest_memory(MEM_SIZE);
        Rig::with_memory(mem, queues)
    }

    fn with_memory(mem: crate::virtio::GuestMemoryMmap, queues: usize) -> Rig {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        Rig {
            mem,
            interrupt: Arc::new(Interrupt::new(irq.try_clone().unwrap())),
            irq,
            qs: (0..queues)
                .map(|i| DriverQueue::new(QSIZE, 0x1_0000 + 0x4000 * i as u64))
                .collect(),
            next_desc: vec![0; queues],
            notify: (0..queues)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            next_buf: BUF_BASE,
        }
    }

    /// The queues as the transport hands them over, continuing from `states` if given.
    fn active(&self, states: Option<&[QueueState]>) -> Vec<ActiveQueue> {
        self.qs
            .iter()
            .zip(&self.notify)
            .enumerate()
            .map(|(i, (q, n))| ActiveQueue {
                queue: match states {
                    Some(s) => virtio_queue::Queue::try_from(s[i]).unwrap(),
                    None => q.device_queue(false),
                },
                notify: n.try_clone().unwrap(),
            })
            .collect()
    }

    fn activate(&self, dev: &mut VhostNet, acked: u64) {
        dev.activate(
            self.mem.clone(),
            self.interrupt.clone(),
            self.active(None),
            acked,
        )
        .expect("activate");
    }

    fn buf(&mut self, data: &[u8], len: usize) -> u64 {
        let a = self.next_buf;
        self.next_buf = (a + len as u64 + 64) & !63;
        assert!(self.next_buf < MEM_SIZE as u64);
        let mut fill = vec![0x5A; len];
        fill[..data.len()].copy_from_slice(data);
        self.mem.write_slice(&fill, GuestAddress(a)).unwrap();
        a
    }

    /// Publishes a chain of `(addr, len, writable)` on queue `q` and kicks it.
    fn post(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let first = self.next_desc[q];
        assert!(usize::from(first) + bufs.len() <= usize::from(QSIZE));
        let head = self.qs[q].chain(&self.mem, first, bufs);
        self.next_desc[q] += bufs.len() as u16;
        self.qs[q].publish(&self.mem, head);
        self.notify[q].write(1).unwrap();
        head
    }

    /// A transmit chain: a zero vnet header and `frame`, in two descriptors.
    fn tx(&mut self, q: usize, frame: &[u8]) -> u16 {
        let h = self.buf(&[0; 12], 12);
        let f = self.buf(frame, frame.len());
        self.post(q, &[(h, 12, false), (f, frame.len() as u32, false)])
    }

    /// A receive buffer of `len` bytes; returns its address.
    fn rx(&mut self, q: usize, len: usize) -> u64 {
        let a = self.buf(&[], len);
        self.post(q, &[(a, len as u32, true)]);
        a
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.qs[q].used_idx(&self.mem)
    }

    fn wait_used(&self, q: usize, n: u16) {
        wait_for(&format!("{n} used buffers on queue {q}"), || {
            self.used_idx(q) >= n
        });
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Sends control command (class, command, data); returns the ack byte.
    fn ctrl(&mut self, q: usize, class: u8, command: u8, data: &[u8]) -> u8 {
        let hdr = self.buf(&[class, command], 2);
        let d = self.buf(data, data.len());
        let ack = self.buf(&[0xFF], 1);
        let n = self.used_idx(q);
        self.post(
            q,
            &[
                (hdr, 2, false),
                (d, data.len() as u32, false),
                (ack, 1, true),
            ],
        );
        self.wait_used(q, n + 1);
        self.read(ack, 1)[0]
    }

    fn drain_irq(&self) {
        let _ = self.irq.read();
    }
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn rings_across_guest_memory_regions_are_refused_at_activation() {
    in_netns(|| {
        let Some(t) = taps("fvh%d", 1) else {
            return;
        };
        let mut dev =
            VhostNet::with_vhost_features("net0", NetConfig::new(MAC), t, KERNEL_REPORTS).unwrap();
        let mem = crate::virtio::GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_2000),
            (GuestAddress(0x1_2000), MEM_SIZE - 0x1_2000),
        ])
        .unwrap();
        // Queue 0's used ring is at 0x1_2000 (whole in the second region); move queue
        // 1's descriptor table across the boundary.
        let mut rig = Rig::with_memory(mem, 2);
        rig.qs[1] = DriverQueue::new(QSIZE, 0x1_1E00);
        let e = dev
            .activate(
                rig.mem.clone(),
                rig.interrupt.clone(),
                rig.active(None),
                ACKED,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("queue 1") && e.contains("descriptor table at 0x11e00"),
            "{e}"
        );
        assert_eq!(
            rig.interrupt.status(),
            0,
            "no sticky bit after a failed activation"
        );
        assert!(!dev.pair_attached(0));
    });
}

#[test]
fn activation_without_vhost_net_fails_with_what_to_do() {
    if VhostNet::probe().is_ok() {
        eprintln!("vhost-net is available here: the end-to-end tests activate it");
        return;
    }
    in_netns(|| {
        let Some(t) = taps("fvh%d", 1) else {
            return;
        };
        let mut dev =
            VhostNet::with_vhost_features("net0", NetConfig::new(MAC), t, KERNEL_REPORTS).unwrap();
        let rig = Rig::new(2);
        let e = dev
            .activate(
                rig.mem.clone(),
                rig.interrupt.clone(),
                rig.active(None),
                ACKED,
            )
            .unwrap_err();
        assert!(e.to_string().contains("modprobe vhost_net"), "{e}");
        assert_eq!(rig.interrupt.status(), 0);
        assert!(dev.queue_states().is_err());
        dev.reset();
        dev.pause().unwrap();
        dev.resume();
    });
}

// --- end to end, with the kernel's vhost-net ------------------------------------------------

/// Brings interface `name` up (in the calling thread's namespace), IPv6 off first so
/// that the kernel sends nothing of its own on it.
fn ifup(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    // SAFETY: socket takes no pointers.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(s >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: the descriptor was just created and is owned here only.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &b) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads and writes one ifreq; `ifr` is live and writable.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) };
    assert_eq!(r, 0, "SIOCGIFFLAGS: {}", std::io::Error::last_os_error());
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads one ifreq; `ifr` is live.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) };
    assert_eq!(r, 0, "SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
}

/// A raw packet socket on one interface: it sees the frames the guest sends (the tap
/// delivers them to the host's stack) and sends frames to the guest (out of the tap).
struct PacketSocket {
    fd: OwnedFd,
}

const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;
/// A local experimental EtherType (IEEE 802): nothing else in the namespace sends it.
const ETHERTYPE: [u8; 2] = [0x88, 0xB5];

impl PacketSocket {
    fn bind(ifname: &str) -> PacketSocket {
        let proto = ETH_P_ALL.to_be();
        // SAFETY: socket takes no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the descriptor was just created and is owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cname = CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: bind reads size_of::<sockaddr_ll>() bytes of the live `sll`.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        PacketSocket { fd }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: send reads `frame.len()` bytes of the live slice.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame of our EtherType (others are skipped).
    fn recv(&self) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no frame from the guest on the tap");
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd, count 1.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
            if r <= 0 {
                continue;
            }
            // SAFETY: recv writes at most `buf.len()` bytes into the live buffer.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 14 && buf[12..14] == ETHERTYPE {
                return buf[..n as usize].to_vec();
            }
        }
    }
}

/// A broadcast frame of our EtherType from `MAC`, `len` bytes in all, marked `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xFF; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&ETHERTYPE);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// Waits for a receive buffer holding frame `want` behind its header (other frames may
/// come first); returns its header.
fn wait_rx(rig: &Rig, q: usize, bufs: &[u64], want: &[u8]) -> Vec<u8> {
    let mut seen = 0;
    loop {
        rig.wait_used(q, seen + 1);
        let (head, len) = rig.qs[q].used_elem(&rig.mem, seen);
        seen += 1;
        let addr = bufs[head as usize];
        let got = rig.read(addr, len as usize);
        if got.len() == 12 + want.len() && got[12..] == *want {
            return got[..12].to_vec();
        }
        assert!(
            usize::from(seen) < bufs.len(),
            "frame not received ({seen} others were)"
        );
    }
}

#[test]
fn frames_move_through_the_kernel_both_ways_and_pause_stops_it() {
    if !vhost_available("frames_move_through_the_kernel_both_ways_and_pause_stops_it") {
        return;
    }
    in_netns(|| {
        let Some(t) = taps("fvh%d", 1) else {
            return;
        };
        let ifname = t[0].name().to_string();
        ifup(&ifname);
        let sock = PacketSocket::bind(&ifname);
        let mut dev = VhostNet::new("net0", NetConfig::new(MAC), t).unwrap();
        let mut rig = Rig::new(2);
        rig.activate(&mut dev, ACKED);
        assert!(dev.pair_attached(0));
        assert_eq!(
            rig.interrupt.status() & interrupt_status::USED_RING,
            interrupt_status::USED_RING,
            "the driver must look at its rings on the kernel's interrupts"
        );

        // Transmit: the guest's frame comes out of the tap, byte for byte.
        let f1 = frame(200, 1);
        rig.tx(1, &f1);
        assert_eq!(sock.recv(), f1);
        rig.wait_used(1, 1);
        wait_readable(&rig.irq);

        // Paused: the kernel gives the rings' state and touches nothing.
        assert!(dev.queue_states().is_err(), "running: no states");
        dev.pause().unwrap();
        assert!(!dev.pair_attached(0));
        let states = dev.queue_states().unwrap();
        assert_eq!(states.len(), 2);
        assert_eq!((states[1].next_avail, states[1].next_used), (1, 1));
        assert_eq!((states[0].next_avail, states[0].next_used), (0, 0));
        assert_eq!(states[1].desc_table, rig.qs[1].desc);
        // A frame for the guest and buffers for it, while paused: nothing moves.
        let bufs: Vec<u64> = (0..8).map(|_| rig.rx(0, 2048)).collect();
        let f2 = frame(1000, 2);
        sock.send(&f2);
        rig.drain_irq();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(rig.used_idx(0), 0, "the kernel used a ring while paused");

        // Resumed: the waiting kick and frame are served; the guest is interrupted.
        dev.resume();
        assert!(dev.pair_attached(0));
        let hdr = wait_rx(&rig, 0, &bufs, &f2);
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1, "num_buffers");
        wait_readable(&rig.irq);

        // Reset, then activation from the saved state (a snapshot restore): the kernel
        // continues at the saved index instead of sending frame 1 again.
        dev.pause().unwrap();
        let saved = dev.queue_states().unwrap();
        dev.reset();
        assert!(!dev.pair_attached(0));
        assert_eq!(rig.interrupt.status() & interrupt_status::USED_RING, 0);
        dev.activate(
            rig.mem.clone(),
            rig.interrupt.clone(),
            rig.active(Some(&saved)),
            ACKED,
        )
        .unwrap();
        let f3 = frame(60, 3);
        rig.tx(1, &f3);
        assert_eq!(sock.recv(), f3);
        rig.wait_used(1, 2);
        assert_eq!(rig.qs[1].used_elem(&rig.mem, 1).0, 2, "frame 3's chain");
        dev.reset();
    });
}

#[test]
fn a_second_queue_pair_runs_after_vq_pairs_set() {
    if !vhost_available("a_second_queue_pair_runs_after_vq_pairs_set") {
        return;
    }
    in_netns(|| {
        let Some(t) = taps("fvq%d", 2) else {
            return;
        };
        let ifname = t[0].name().to_string();
        ifup(&ifname);
        let sock = PacketSocket::bind(&ifname);
        let mut dev = VhostNet::new("net0", NetConfig::new(MAC), t).unwrap();
        assert_eq!(dev.queue_max_sizes().len(), 5);
        let mut rig = Rig::new(5);
        let acked = ACKED | nf::MQ | nf::CTRL_VQ;
        rig.activate(&mut dev, acked);
        assert!(dev.pair_attached(0) && !dev.pair_attached(1));
        assert_eq!(dev.active_pairs(), 1);

        let mq = virtio_bindings::virtio_net::VIRTIO_NET_CTRL_MQ as u8;
        let set = virtio_bindings::virtio_net::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
        assert_eq!(
            rig.ctrl(4, mq, set, &3u16.to_le_bytes()),
            1,
            "3 pairs: refused"
        );
        assert_eq!(rig.ctrl(4, mq, set, &2u16.to_le_bytes()), 0);
        assert_eq!(dev.active_pairs(), 2);
        assert!(dev.pair_attached(1));

        let f = frame(300, 9);
        rig.tx(3, &f);
        assert_eq!(sock.recv(), f);
        rig.wait_used(3, 1);

        dev.pause().unwrap();
        let states = dev.queue_states().unwrap();
        assert_eq!(states.len(), 5);
        assert_eq!(states[3].next_avail, 1);
        assert_eq!(states[1].next_avail, 0);
        assert_eq!(states[4].next_avail, 2, "two control commands");
        dev.resume();
        assert!(dev.pair_attached(0) && dev.pair_attached(1));

        assert_eq!(dev.device_state(), 2u16.to_le_bytes());
        assert_eq!(rig.ctrl(4, mq, set, &1u16.to_le_bytes()), 0);
        assert!(!dev.pair_attached(1));
        assert_eq!(dev.active_pairs(), 1);
        assert_eq!(dev.device_state(), 1u16.to_le_bytes());

        // A snapshot's pairs in use come back with the device state.
        assert!(dev.restore_device_state(&3u16.to_le_bytes()).is_err());
        assert!(dev.restore_device_state(&[0, 0]).is_err());
        assert!(dev.restore_device_state(&[2]).is_err());
        dev.restore_device_state(&2u16.to_le_bytes()).unwrap();
        assert!(dev.pair_attached(1));
        assert_eq!(dev.active_pairs(), 2);
        let f = frame(80, 10);
        rig.tx(3, &f);
        assert_eq!(sock.recv(), f);
        dev.reset();
        assert!(!dev.pair_attached(0) && !dev.pair_attached(1));
        assert!(
            dev.restore_device_state(&1u16.to_le_bytes()).is_err(),
            "not active"
        );
    });
}
