//! virtio-net tests: the device is activated on queues a tiny driver builds in real guest
//! memory and driven through the queue eventfds, against in-process backends: a
//! `SOCK_SEQPACKET` socket pair standing in for a tap (one datagram = one frame with its
//! 12-byte header) and a `SOCK_STREAM` pair for the stream backend. Waits are bounded
//! (a broken device fails the test instead of hanging it); sleeps only give a device the
//! chance to do what it must not.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicI64;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::net_features as nf;
use super::*;
use crate::virtio::test_util::{guest_memory, DriverQueue, INDIRECT, NEXT, WRITE};
use crate::virtio::{interrupt_status, Interrupt};

const MEM_SIZE: usize = 32 << 20;
/// Guest buffers are allocated from here up.
const BUF_BASE: u64 = 0x20_0000;
/// Filler of guest buffers before the device writes them.
const CANARY: u8 = 0x5A;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
const BASE: u64 = features::VERSION_1 | nf::MAC | nf::STATUS;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// A frame with a vnet header whose first 10 bytes are recognisable.
fn with_hdr(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![1, 0, 0x22, 0, 0x33, 0, 0x44, 0, 0x55, 0, 0xEE, 0xEE];
    v.extend_from_slice(frame);
    v
}

/// Compares byte strings, reporting the first difference instead of both strings.
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: {} bytes, {} expected; first difference at {at:?}",
        got.len(),
        want.len()
    );
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// --- fake backends -------------------------------------------------------------------

/// What a fake tap was told.
#[derive(Debug, Default)]
struct FakeLog {
    offloads: Vec<u32>,
    enabled: Vec<bool>,
}

/// A tap stand-in: a SOCK_SEQPACKET socket, one datagram per frame (header included).
struct SeqPacket {
    fd: OwnedFd,
    log: Arc<Mutex<FakeLog>>,
}

impl NetBackend for SeqPacket {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
    fn has_vnet_hdr(&self) -> bool {
        true
    }
    fn recv(&mut self, frame: &mut FrameBufs<'_>) -> std::io::Result<Recv> {
        // MSG_TRUNC: the datagram's real length, as a tap reports it.
        match frame.recv_from(self.fd.as_fd(), libc::MSG_TRUNC | libc::MSG_DONTWAIT)? {
            0 => Ok(Recv::Closed),
            n => Ok(Recv::Frame(n)),
        }
    }
    fn send(&mut self, frame: &mut FrameBufs<'_>) -> std::io::Result<()> {
        frame.send_to(self.fd.as_fd(), &[], 0, libc::MSG_DONTWAIT)?;
        Ok(())
    }
    fn set_offload(&self, tun_flags: u32) -> std::io::Result<()> {
        self.log.lock().unwrap().offloads.push(tun_flags);
        Ok(())
    }
    fn set_queue_enabled(&self, enabled: bool) -> std::io::Result<()> {
        self.log.lock().unwrap().enabled.push(enabled);
        Ok(())
    }
    fn name(&self) -> &str {
        "seqpacket"
    }
}

fn socketpair(kind: libc::c_int) -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into the live two-element array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned here only.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The test's end of a fake tap.
struct Peer {
    fd: OwnedFd,
}

impl Peer {
    fn send(&self, data: &[u8]) {
        // SAFETY: `data` is a live slice; the kernel reads at most its length.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
        assert_eq!(
            r,
            data.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// The next datagram, if one arrives within `ms`.
    fn recv_within(&self, ms: i32) -> Option<Vec<u8>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, count 1.
        if unsafe { libc::poll(&mut pfd, 1, ms) } != 1 {
            return None;
        }
        let mut buf = vec![0u8; 128 << 10];
        // SAFETY: `buf` is a live, writable buffer of the length given.
        let r = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        assert!(r >= 0, "{}", std::io::Error::last_os_error());
        buf.truncate(r as usize);
        Some(buf)
    }

    fn recv(&self) -> Vec<u8> {
        self.recv_within(20_000).expect("a frame from the device")
    }
}

fn seqpacket() -> (Box<dyn NetBackend>, Peer, Arc<Mutex<FakeLog>>) {
    let (dev, peer) = socketpair(libc::SOCK_SEQPACKET);
    let log = Arc::new(Mutex::new(FakeLog::default()));
    (
        Box::new(SeqPacket {
            fd: dev,
            log: log.clone(),
        }),
        Peer { fd: peer },
        log,
    )
}

fn stream() -> (Box<dyn NetBackend>, UnixStream) {
    let (dev, peer) = socketpair(libc::SOCK_STREAM);
    let peer = UnixStream::from(peer);
    peer.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (Box::new(Stream::new(UnixStream::from(dev)).unwrap()), peer)
}

/// A limiter with a byte budget, released by the test through an eventfd.
struct FakeLimiter {
    budget: Arc<AtomicI64>,
    evt: EventFd,
}

impl Limiter for FakeLimiter {
    fn consume(&mut self, bytes: u64) -> bool {
        self.budget.fetch_sub(bytes as i64, Ordering::SeqCst) - bytes as i64 > 0
    }
    fn blocked_fd(&self) -> Option<RawFd> {
        Some(self.evt.as_raw_fd())
    }
    fn replenished(&mut self) -> bool {
        let _ = self.evt.read();
        self.budget.load(Ordering::SeqCst) > 0
    }
}

fn limiter(budget: i64) -> (Box<dyn Limiter>, Arc<AtomicI64>, EventFd) {
    let budget = Arc::new(AtomicI64::new(budget));
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    (
        Box::new(FakeLimiter {
            budget: budget.clone(),
            evt: evt.try_clone().unwrap(),
        }),
        budget,
        evt,
    )
}

// --- the driver ------------------------------------------------------------------------

struct Drv {
    q: DriverQueue,
    next_desc: u16,
}

/// An activated device and the driver side of its queues.
struct Rig {
    mem: GuestMemoryMmap,
    net: Net,
    interrupt: Arc<Interrupt>,
    _irq: EventFd,
    qs: Vec<Drv>,
    notify: Vec<EventFd>,
    next_buf: u64,
}

impl Rig {
    fn new(net: Net, acked: u64) -> Rig {
        Rig::with(net, acked, 64)
    }

    fn with(mut net: Net, acked: u64, qsize: u16) -> Rig {
        let mem = guest_memory(MEM_SIZE);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let n = net.queue_max_sizes().len();
        let event_idx = acked & features::RING_EVENT_IDX != 0;
        let mut qs = Vec::new();
        let mut notify = Vec::new();
        let mut active = Vec::new();
        for i in 0..n {
            let q = DriverQueue::new(qsize, 0x1_0000 + 0x4000 * i as u64);
            let evt = EventFd::new(EFD_NONBLOCK).unwrap();
            active.push(ActiveQueue {
                queue: q.device_queue(event_idx),
                notify: evt.try_clone().unwrap(),
            });
            notify.push(evt);
            qs.push(Drv { q, next_desc: 0 });
        }
        net.activate(mem.clone(), interrupt.clone(), active, acked)
            .expect("activate");
        Rig {
            mem,
            net,
            interrupt,
            _irq: irq,
            qs,
            notify,
            next_buf: BUF_BASE,
        }
    }

    /// A guest buffer of `len` bytes, filled with [`CANARY`] up to the next one.
    fn buf(&mut self, len: u32) -> u64 {
        let a = self.next_buf;
        self.next_buf = (a + u64::from(len) + 64) & !63;
        assert!(self.next_buf < MEM_SIZE as u64);
        self.mem
            .write_slice(&vec![CANARY; (self.next_buf - a) as usize], GuestAddress(a))
            .unwrap();
        a
    }

    /// Publishes a chain of `(addr, len, flags)` (NEXT added) on queue `q`; returns its head.
    fn chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let d = &mut self.qs[q];
        let size = d.q.size;
        let head = d.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % size;
            let next = (idx + 1) % size;
            let flags = if i + 1 < descs.len() {
                flags | NEXT
            } else {
                flags
            };
            d.q.set_desc(&self.mem, idx, addr, len, flags, next);
        }
        d.next_desc = (head + descs.len() as u16) % size;
        d.q.publish(&self.mem, head);
        head
    }

    /// One device-writable buffer of `len` bytes as a receive chain on `q`; returns
    /// (head, buffer address).
    fn rx_chain(&mut self, q: usize, len: u32) -> (u16, u64) {
        let a = self.buf(len);
        (self.chain(q, &[(a, len, WRITE)]), a)
    }

    /// A transmit chain on `q` carrying `data`, cut into descriptors of the `cuts` sizes
    /// (the rest in a last one).
    fn tx_chain(&mut self, q: usize, data: &[u8], cuts: &[usize]) -> u16 {
        let mut descs = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let n = c.min(data.len() - at);
            if n == 0 && at == data.len() {
                break;
            }
            let a = self.buf(n as u32);
            self.mem
                .write_slice(&data[at..at + n], GuestAddress(a))
                .unwrap();
            descs.push((a, n as u32, 0));
            at += n;
        }
        self.chain(q, &descs)
    }

    fn kick(&self, q: usize) {
        self.notify[q].write(1).unwrap();
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.qs[q].q.used_idx(&self.mem)
    }

    fn used(&self, q: usize, n: u16) -> (u32, u32) {
        self.qs[q].q.used_elem(&self.mem, n)
    }

    fn wait_used(&self, q: usize, n: u16) {
        wait_for(&format!("{n} used buffers on queue {q}"), || {
            self.used_idx(q) >= n
        });
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn counts(&self, pair: usize) -> PairCounts {
        self.net.net_counts().pairs[pair]
    }

    /// Sends control command (class, command, data) on queue `q`; returns (used length,
    /// ack byte).
    fn ctrl(&mut self, q: usize, class: u8, command: u8, data: &[u8]) -> (u32, u8) {
        let hdr = self.buf(2);
        self.mem
            .write_slice(&[class, command], GuestAddress(hdr))
            .unwrap();
        let ack = self.buf(1);
        let mut descs = vec![(hdr, 2, 0)];
        if !data.is_empty() {
            let d = self.buf(data.len() as u32);
            self.mem.write_slice(data, GuestAddress(d)).unwrap();
            descs.push((d, data.len() as u32, 0));
        }
        descs.push((ack, 1, WRITE));
        let n = self.used_idx(q);
        self.chain(q, &descs);
        self.kick(q);
        self.wait_used(q, n + 1);
        (self.used(q, n).1, self.read(ack, 1)[0])
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.net.reset();
    }
}

fn tap_net(cfg: NetConfig) -> (Net, Peer, Arc<Mutex<FakeLog>>) {
    let (b, peer, log) = seqpacket();
    (Net::new("net0", cfg, vec![b]).unwrap(), peer, log)
}

fn stream_net(cfg: NetConfig) -> (Net, UnixStream) {
    let (b, peer) = stream();
    (Net::new("net0", cfg, vec![b]).unwrap(), peer)
}

fn read_stream_frame(peer: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    peer.read_exact(&mut len).unwrap();
    let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
    peer.read_exact(&mut f).unwrap();
    f
}

fn write_stream_frame(peer: &mut UnixStream, frame: &[u8]) {
    peer.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    peer.write_all(frame).unwrap();
}

const RXQ: usize = 0;
const TXQ: usize = 1;

// --- identity, features, configuration ---------------------------------------------------

#[test]
fn offered_features_depend_on_the_backend_and_the_pair_count() {
    let (net, _peer, _) = tap_net(NetConfig::new(MAC));
    assert_eq!(net.device_type(), 1);
    let f = net.avail_features();
    for bit in [
        features::VERSION_1,
        features::RING_EVENT_IDX,
        features::RING_INDIRECT_DESC,
        nf::MAC,
        nf::STATUS,
        nf::MRG_RXBUF,
        nf::CSUM,
        nf::GUEST_CSUM,
        nf::HOST_TSO4,
        nf::HOST_TSO6,
        nf::GUEST_TSO4,
        nf::GUEST_TSO6,
        nf::HOST_ECN,
        nf::GUEST_ECN,
    ] {
        assert_ne!(f & bit, 0, "bit {} offered", bit.trailing_zeros());
    }
    for bit in [nf::MQ, nf::CTRL_VQ, nf::MTU, nf::GUEST_UFO, nf::CTRL_RX] {
        assert_eq!(f & bit, 0, "bit {} not offered", bit.trailing_zeros());
    }
    assert_eq!(net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);

    // No vnet header: no offloads at all.
    let (net, _peer) = stream_net(NetConfig::new(MAC));
    assert_eq!(net.avail_features() & nf::OFFLOADS, 0);
    assert_ne!(net.avail_features() & nf::MRG_RXBUF, 0);

    // An MTU is offered when configured.
    let mut cfg = NetConfig::new(MAC);
    cfg.mtu = Some(9000);
    let (net, _peer, _) = tap_net(cfg);
    assert_ne!(net.avail_features() & nf::MTU, 0);

    // Several pairs: MQ and a control queue, last.
    let (b0, _p0, _) = seqpacket();
    let (b1, _p1, _) = seqpacket();
    let net = Net::new("net1", NetConfig::new(MAC), vec![b0, b1]).unwrap();
    assert_eq!(
        net.avail_features() & (nf::MQ | nf::CTRL_VQ),
        nf::MQ | nf::CTRL_VQ
    );
    assert_eq!(net.queue_max_sizes().len(), 5);
    assert_eq!(net.queue_pairs(), 2);
}

#[test]
fn bad_configurations_are_refused_with_the_reason() {
    let e = Net::new("net0", NetConfig::new(MAC), vec![]).unwrap_err();
    assert!(e.to_string().contains("no backend"), "{e}");
    let (a, _pa, _) = seqpacket();
    let (b, _pb) = stream();
    let e = Net::new("net0", NetConfig::new(MAC), vec![a, b]).unwrap_err();
    assert!(matches!(e, NetError::MixedBackends { .. }), "{e}");
    let (a, _pa, _) = seqpacket();
    let mut cfg = NetConfig::new(MAC);
    cfg.mtu = Some(60);
    let e = Net::new("net0", cfg, vec![a]).unwrap_err();
    assert!(e.to_string().contains("MTU 60"), "{e}");
    let (a, _pa, _) = seqpacket();
    let e = Net::new("net0", NetConfig::new([1, 2, 3, 4, 5, 6]), vec![a]).unwrap_err();
    assert!(e.to_string().contains("01:02:03:04:05:06"), "{e}");
}

#[test]
fn configuration_space_holds_mac_status_pairs_and_mtu() {
    let (b0, _p0, _) = seqpacket();
    let (b1, _p1, _) = seqpacket();
    let mut cfg = NetConfig::new(MAC);
    cfg.mtu = Some(1400);
    let net = Net::new("net0", cfg, vec![b0, b1]).unwrap();
    let mut c = [0xFFu8; 16];
    net.read_config(0, &mut c);
    assert_eq!(&c[..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), STATUS_LINK_UP);
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 2);
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1400);
    assert_eq!(&c[12..], &[0; 4], "past the end reads as zero");
    let mut two = [0u8; 2];
    net.read_config(10, &mut two);
    assert_eq!(u16::from_le_bytes(two), 1400);
    net.read_config(1 << 40, &mut two);
    assert_eq!(two, [0, 0]);

    let (m0, m1) = (default_mac(0), default_mac(1));
    for m in [m0, m1, default_mac(u32::MAX)] {
        assert_eq!(
            m[0] & 0b11,
            0b10,
            "locally administered unicast: {}",
            format_mac(&m)
        );
    }
    assert_ne!(m0, m1);
    assert_eq!(default_mac(7), default_mac(7), "stable");
}

#[test]
fn offloads_follow_the_negotiated_features() {
    assert_eq!(
        tun_offload_flags(nf::GUEST_TSO4 | nf::GUEST_TSO6),
        0,
        "not without GUEST_CSUM"
    );
    assert_eq!(tun_offload_flags(nf::GUEST_CSUM), libc::TUN_F_CSUM);
    assert_eq!(
        tun_offload_flags(nf::GUEST_CSUM | nf::GUEST_ECN),
        libc::TUN_F_CSUM,
        "ECN only with TSO"
    );
    let (net, _peer, log) = tap_net(NetConfig::new(MAC));
    let all = nf::GUEST_CSUM | nf::GUEST_TSO4 | nf::GUEST_TSO6 | nf::GUEST_ECN;
    let mut rig = Rig::new(net, BASE | all);
    let want = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
    assert_eq!(log.lock().unwrap().offloads.last(), Some(&want));
    rig.net.reset();
    assert_eq!(log.lock().unwrap().offloads.last(), Some(&0), "reset: none");
    let mem = rig.mem.clone();
    let irq = rig.interrupt.clone();
    let qs = (0..2)
        .map(|i| ActiveQueue {
            queue: rig.qs[i].q.device_queue(false),
            notify: rig.notify[i].try_clone().unwrap(),
        })
        .collect();
    rig.net
        .activate(mem, irq, qs, BASE | nf::GUEST_TSO4 | nf::GUEST_TSO6)
        .unwrap();
    assert_eq!(log.lock().unwrap().offloads.last(), Some(&0));
}

// --- transmit ------------------------------------------------------------------------------

#[test]
fn transmitted_frames_reach_a_tap_byte_exact() {
    let (net, peer, _) = tap_net(NetConfig::new(MAC));
    let mut rig = Rig::new(net, BASE | features::RING_INDIRECT_DESC);
    let f1 = with_hdr(&pattern(1000, 1));
    // The header itself split across descriptors.
    rig.tx_chain(TXQ, &f1, &[5, 7, 300]);
    rig.kick(TXQ);
    same(&peer.recv(), &f1, "bytes");
    rig.wait_used(TXQ, 1);
    assert_eq!(rig.used(TXQ, 0), (0, 0));

    // Through an indirect table.
    let f2 = with_hdr(&pattern(200, 2));
    let (h, d) = (rig.buf(12), rig.buf(200));
    rig.mem.write_slice(&f2[..12], GuestAddress(h)).unwrap();
    rig.mem.write_slice(&f2[12..], GuestAddress(d)).unwrap();
    let table = rig.buf(32);
    crate::virtio::test_util::write_desc(&rig.mem, table, 0, h, 12, NEXT, 1);
    crate::virtio::test_util::write_desc(&rig.mem, table, 1, d, 200, 0, 0);
    rig.chain(TXQ, &[(table, 32, INDIRECT)]);
    rig.kick(TXQ);
    same(&peer.recv(), &f2, "bytes");
    rig.wait_used(TXQ, 2);
    let c = rig.counts(0);
    assert_eq!((c.tx_packets, c.tx_bytes, c.tx_dropped), (2, 1200, 0));
    assert!(rig.net.worker_stats().requests >= 2);
}

#[test]
fn transmitted_frames_reach_a_stream_length_prefixed_without_header() {
    let (net, mut peer) = stream_net(NetConfig::new(MAC));
    let mut rig = Rig::new(net, BASE);
    let frames: Vec<Vec<u8>> = (0..3).map(|i| pattern(100 + 500 * i, i as u8)).collect();
    for f in &frames {
        rig.tx_chain(TXQ, &with_hdr(f), &[12]);
    }
    rig.kick(TXQ);
    for f in &frames {
        same(&read_stream_frame(&mut peer), f, "stream frame");
    }
    rig.wait_used(TXQ, 3);
    assert_eq!(rig.counts(0).tx_packets, 3);
}

#[test]
fn a_stream_that_takes_frames_in_pieces_gets_them_whole_and_in_order() {
    let (dev, peer) = socketpair(libc::SOCK_STREAM);
    let small: libc::c_int = 4096;
    for fd in [&dev, &peer] {
        for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
            // SAFETY: SO_SNDBUF/SO_RCVBUF read one int from the live `small`.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&small as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0);
        }
    }
    let mut peer = UnixStream::from(peer);
    peer.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let backend = Box::new(Stream::new(UnixStream::from(dev)).unwrap());
    let net = Net::new("net0", NetConfig::new(MAC), vec![backend]).unwrap();
    let mut rig = Rig::with(net, BASE, 256);
    let frames: Vec<Vec<u8>> = (0..30).map(|i| pattern(3000 + i, i as u8)).collect();
    for f in &frames {
        rig.tx_chain(TXQ, &with_hdr(f), &[12, 1000]);
    }
    rig.kick(TXQ);
    // The socket fills up: the device waits for it instead of losing frames.
    wait_for("a full socket", || rig.counts(0).tx_packets > 0);
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        rig.counts(0).tx_packets < 30,
        "the socket cannot hold 90 KB"
    );
    for (i, f) in frames.iter().enumerate() {
        same(&read_stream_frame(&mut peer), f, &format!("frame {i}"));
    }
    rig.wait_used(TXQ, 30);
    let c = rig.counts(0);
    assert_eq!((c.tx_packets, c.tx_dropped), (30, 0));
}

#[test]
fn hostile_transmit_chains_are_dropped_and_counted() {
    let (net, peer, _) = tap_net(NetConfig::new(MAC));
    let mut rig = Rig::new(net, BASE);
    // Shorter than the header.
    let a = rig.buf(8);
    rig.chain(TXQ, &[(a, 8, 0)]);
    // A device-writable buffer in a transmit chain.
    let (h, w) = (rig.buf(12), rig.buf(100));
    rig.chain(TXQ, &[(h, 12, 0), (w, 100, WRITE)]);
    // Outside guest memory.
    rig.chain(TXQ, &[(h, 12, 0), (MEM_SIZE as u64 - 50, 100, 0)]);
    // Longer than the largest frame.
    let big = rig.buf(MAX_TX_LEN as u32 + 1);
    rig.chain(TXQ, &[(big, MAX_TX_LEN as u32 + 1, 0)]);
    // A loop: bounded by the queue size (64 x 2 KiB, more than the largest frame).
    let l = rig.buf(2048);
    let d = &mut rig.qs[TXQ];
    let first = d.next_desc;
    d.q.set_desc(&rig.mem, first, l, 2048, NEXT, first + 1);
    d.q.set_desc(&rig.mem, first + 1, l, 2048, NEXT, first);
    d.next_desc += 2;
    d.q.publish(&rig.mem, first);
    // And a good one.
    let good = with_hdr(&pattern(64, 9));
    rig.tx_chain(TXQ, &good, &[]);
    rig.kick(TXQ);
    rig.wait_used(TXQ, 6);
    for i in 0..6 {
        assert_eq!(rig.used(TXQ, i).1, 0);
    }
    same(&peer.recv(), &good, "only the good frame");
    assert_eq!(peer.recv_within(50), None);
    same(
        &rig.read(w, 100),
        &[CANARY; 100],
        "nothing written anywhere",
    );
    let c = rig.counts(0);
    assert_eq!((c.tx_packets, c.tx_dropped), (1, 5));
    assert!(!rig.interrupt.needs_reset());
}

#[test]
fn an_impossible_available_index_needs_a_reset() {
    let (net, _peer, _) = tap_net(NetConfig::new(MAC));
    let mut rig = Rig::new(net, BASE);
    let mem = rig.mem.clone();
    rig.qs[TXQ].q.set_avail_idx(&mem, 1000);
    rig.kick(TXQ);
    wait_for("NEEDS_RESET", || rig.interrupt.needs_reset());
    assert_ne!(rig.interrupt.status() & interrupt_status::CONFIG_CHANGE, 0);
}

// --- receive -------------------------------------------------------------------------------

#[test]
fn received_frames_merge_chains_and_unused_chains_are_given_back() {
    let mut cfg = NetConfig::new(MAC);
    cfg.mtu = Some(4000); // receive buffers are gathered for 12 + 4000 + 18 bytes
    let (net, peer, _) = tap_net(cfg);
    let mut rig = Rig::new(net, BASE | nf::MRG_RXBUF | features::RING_EVENT_IDX);
    let chains: Vec<(u16, u64)> = (0..10).map(|_| rig.rx_chain(RXQ, 1000)).collect();
    rig.kick(RXQ);
    let frame = with_hdr(&pattern(2488, 3));
    peer.send(&frame);
    rig.wait_used(RXQ, 3);
    assert_eq!(rig.used(RXQ, 0), (u32::from(chains[0].0), 1000));
    assert_eq!(rig.used(RXQ, 1), (u32::from(chains[1].0), 1000));
    assert_eq!(rig.used(RXQ, 2), (u32::from(chains[2].0), 500));
    let mut got = rig.read(chains[0].1, 1000);
    got.extend(rig.read(chains[1].1, 1000));
    got.extend(rig.read(chains[2].1, 500));
    same(&got[..10], &frame[..10], "the backend's header");
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    same(&got[12..], &frame[12..], "bytes");
    same(&rig.read(chains[2].1 + 500, 500), &[CANARY; 500], "bytes");
    same(
        &rig.read(chains[3].1, 1000),
        &[CANARY; 1000],
        "given back untouched",
    );

    // The next frame takes the first chain given back.
    let small = with_hdr(&pattern(100, 4));
    peer.send(&small);
    rig.wait_used(RXQ, 4);
    assert_eq!(rig.used(RXQ, 3), (u32::from(chains[3].0), 112));
    let got = rig.read(chains[3].1, 112);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    same(&got[12..], &small[12..], "bytes");
    let c = rig.counts(0);
    assert_eq!((c.rx_packets, c.rx_bytes, c.rx_dropped), (2, 2588, 0));
}

#[test]
fn with_tso_a_ring_smaller_than_the_largest_frame_waits_for_more_then_is_used_whole() {
    let (net, peer, _) = tap_net(NetConfig::new(MAC));
    let acked = BASE | nf::MRG_RXBUF | nf::GUEST_CSUM | nf::GUEST_TSO4 | features::RING_EVENT_IDX;
    let mut rig = Rig::with(net, acked, 16);
    // 8 x 2 KiB: less than a 64 KiB frame, and the guest may add more: wait.
    let mut chains: Vec<(u16, u64)> = (0..8).map(|_| rig.rx_chain(RXQ, 2048)).collect();
    rig.kick(RXQ);
    let frame = with_hdr(&pattern(3000, 5));
    peer.send(&frame);
    wait_for("starvation", || rig.counts(0).rx_no_buffers >= 1);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(rig.used_idx(RXQ), 0);
    // EVENT_IDX: the device asked to be told about any buffer beyond those there.
    let q = &rig.qs[RXQ].q;
    let avail_event: u16 = rig
        .mem
        .read_obj(GuestAddress(q.used + 4 + 8 * u64::from(q.size)))
        .unwrap();
    assert_eq!(avail_event, 8);
    // The whole ring (16 x 2 KiB) is still smaller, but it is all there is: used.
    chains.extend((0..8).map(|_| rig.rx_chain(RXQ, 2048)));
    rig.kick(RXQ);
    rig.wait_used(RXQ, 2);
    assert_eq!(rig.used(RXQ, 0), (u32::from(chains[0].0), 2048));
    assert_eq!(rig.used(RXQ, 1), (u32::from(chains[1].0), 3012 - 2048));
    let mut got = rig.read(chains[0].1, 2048);
    got.extend(rig.read(chains[1].1, 3012 - 2048));
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2);
    same(&got[12..], &frame[12..], "bytes");
}

#[test]
fn without_mrg_rxbuf_a_frame_bigger_than_its_chain_is_dropped() {
    let (net, peer, _) = tap_net(NetConfig::new(MAC));
    let mut rig = Rig::new(net, BASE);
    let (h, a) = rig.rx_chain(RXQ, 1000);
    rig.kick(RXQ);
    peer.send(&with_hdr(&pattern(1500, 6)));
    wait_for("the drop", || rig.counts(0).rx_dropped == 1);
    let small = with_hdr(&pattern(600, 7));
    peer.send(&small);
    rig.wait_used(RXQ, 1);
    assert_eq!(
        rig.used(RXQ, 0),
        (u32::from(h), 612),
        "the same chain, reused"
    );
    let got = rig.read(a, 612);
    assert_eq!(
        u16::from_le_bytes([got[10], got[11]]),
        1,
        "num_buffers is 1"
    );
    same(&got[12..], &small[12..], "frame");
    // The dropped frame may have been written into the chain before it was given back,
    // but never past it.
    same(&rig.read(a + 1000, 24), &[CANARY; 24], "past the chain");

    // The stream backend discards the frame it cannot place, and keeps the framing.
    let (net, mut peer) = stream_net(NetConfig::new(MAC));
    let mut rig = Rig::new(net, BASE);
    let (h, a) = rig.rx_chain(RXQ, 1000);
    rig.kick(RXQ);
    write_stream_frame(&mut peer, &pattern(1200, 8));
    wait_for("the drop", || rig.counts(0).rx_dropped == 1);
    let f = pattern(500, 9);
    write_stream_frame(&mut peer, &f);
    rig.wait_used(RXQ, 1);
    assert_eq!(rig.used(RXQ, 0), (u32::from(h), 512));
    let got = rig.read(a, 512);
    let mut hdr = [0u8; 12];
    hdr[10] = 1;
    same(&got[..12], &hdr, "a zeroed header, num_buffers 1");
    same(&got[12..], &f[..], "bytes");
}

#[test]
fn stream_frames_arriving_in_pieces_land_whole() {
    let mut cfg = NetConfig::new(MAC);
    cfg.mtu = Some(1500);
    let (net, mut peer) = stream_net(cfg);
    let mut rig = Rig::new(net, BASE | nf::MRG_RXBUF);
    let chains: Vec<(u16, u64)> = (0..6).map(|_| rig.rx_chain(RXQ, 1024)).collect();
    rig.kick(RXQ);
    let f = pattern(1400, 10);
    let len = (f.len() as u32).to_be_bytes();
    peer.write_all(&len[..2]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    peer.write_all(&len[2..]).unwrap();
    peer.write_all(&f[..100]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rig.used_idx(RXQ), 0, "not before the frame is whole");
    peer.write_all(&f[100..]).unwrap();
    rig.wait_used(RXQ, 2);
    assert_eq!(rig.used(RXQ, 0), (u32::from(chains[0].0), 1024));
    assert_eq!(rig.used(RXQ, 1), (u32::from(chains[1].0), 1412 - 1024));
    let mut got = rig.read(chains[0].1, 1024);
    got.extend(rig.read(chains[1].1, 1412 - 1024));
    let mut hdr = [0u8; 12];
    hdr[10] = 2;
    same(&got[..12], &hdr, "bytes");
    same(&got[12..], &f[..], "bytes");
    // Two frames in one write.
    let (g1, g2) = (pattern(60, 11), pattern(70, 12));
    let mut both = Vec::new();
    for g in [&g1, &g2] {
        both.extend_from_slice(&(g.len() as u32).to_be_bytes());
        both.extend_from_slice(g);
    }
    peer.write_all(&both).unwrap();
    rig.wait_used(RXQ, 4);
    assert_eq!(rig.used(RXQ, 2), (u32::from(chains[2].0), 72));
    assert_eq!(rig.used(RXQ, 3), (u32::from(chains[3].0), 82));
    same(&rig.read(chains[3].1 + 12, 70), &g2, "bytes");
}

#[test]
fn a_readable_backend_without_receive_buffers_does_not_spin() {
    let (net, peer, _) = tap_net(NetConfig::new(MAC));
    let mut rig = Rig::new(net, BASE);
    let frames: Vec<Vec<u8>> = (0..20)
        .map(|i| with_hdr(&pattern(100 + i, i as u8)))
        .collect();
    peer.send(&frames[0]);
    wait_for("starvation", || rig.counts(0).rx_no_buffers >= 1);
    for f in &frames[1..] {
        peer.send(f);
    }
    std::thread::sleep(Duration::from_millis(200));
    let c = rig.counts(0);
    assert!(
        c.backend_events <= 2,
        "{} wake-ups while disarmed",
        c.backend_events
    );
    assert_eq!(c.rx_packets, 0);
    let w = rig.net.worker_stats();
    assert_eq!(w.notifications, 0);
    // Buffers arrive: everything queued meanwhile is delivered, in order.
    let chains: Vec<(u16, u64)> = (0..20).map(|_| rig.rx_chain(RXQ, 256)).collect();
    rig.kick(RXQ);
    rig.wait_used(RXQ, 20);
    for (i, f) in frames.iter().enumerate() {
        let (head, len) = rig.used(RXQ, i as u16);
        assert_eq!((head, len as usize), (u32::from(chains[i].0), f.len()));
        same(&rig.read(chains[i].1 + 12, f.len() - 12), &f[12..], "bytes");
    }
    assert!(rig.counts(0).backend_events <= 4);
}

#[test]
fn hostile_receive_chains_are_returned_empty_and_never_written() {
    let (net, peer, _) = tap_net(NetConfig::new(MAC));
    let mut rig = Rig::new(net, BASE | nf::MRG_RXBUF);
    let ro = rig.buf(2000);
    rig.chain(RXQ, &[(ro, 2000, 0)]); // device-readable
    let (_, tiny) = rig.rx_chain(RXQ, 8); // smaller than the header
    rig.chain(RXQ, &[(MEM_SIZE as u64 - 100, 2000, WRITE)]); // outside guest memory
    let (g1, a1) = rig.rx_chain(RXQ, 1000);
    let ro2 = rig.buf(64);
    rig.chain(RXQ, &[(ro2, 64, 0)]); // after a good chain: returned next time
    let (g2, a2) = rig.rx_chain(RXQ, 2000);
    rig.kick(RXQ);
    let (f1, f2) = (with_hdr(&pattern(400, 13)), with_hdr(&pattern(900, 14)));
    peer.send(&f1);
    peer.send(&f2);
    rig.wait_used(RXQ, 6);
    let lens: Vec<u32> = (0..6).map(|i| rig.used(RXQ, i).1).collect();
    assert_eq!(lens, vec![0, 0, 0, 412, 0, 912]);
    assert_eq!(rig.used(RXQ, 3).0, u32::from(g1));
    assert_eq!(rig.used(RXQ, 5).0, u32::from(g2));
    same(&rig.read(a1 + 12, 400), &f1[12..], "bytes");
    same(&rig.read(a2 + 12, 900), &f2[12..], "bytes");
    same(&rig.read(ro, 2000), &[CANARY; 2000], "bytes");
    same(&rig.read(tiny, 8), &[CANARY; 8], "bytes");
    same(&rig.read(ro2, 64), &[CANARY; 64], "bytes");
    assert_eq!(rig.counts(0).bad_chains, 4);
    assert!(!rig.interrupt.needs_reset());
}

// --- several queue pairs and the control queue ---------------------------------------------

#[test]
fn two_queue_pairs_each_move_traffic_on_their_own_backend() {
    let (b0, p0, _) = seqpacket();
    let (b1, p1, log1) = seqpacket();
    let net = Net::new("net0", NetConfig::new(MAC), vec![b0, b1]).unwrap();
    let acked = BASE | nf::MQ | nf::CTRL_VQ | nf::MRG_RXBUF;
    let mut rig = Rig::new(net, acked);
    let (rx0, tx0, rx1, tx1, ctrlq) = (0, 1, 2, 3, 4);
    assert_eq!(
        log1.lock().unwrap().enabled,
        vec![false],
        "pair 1 unused at first"
    );
    let (h0, a0) = rig.rx_chain(rx0, 2048);
    let (h1, a1) = rig.rx_chain(rx1, 2048);
    rig.kick(rx0);
    rig.kick(rx1);
    let early = with_hdr(&pattern(300, 15));
    p1.send(&early);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rig.used_idx(rx1), 0, "not before VQ_PAIRS_SET");

    assert_eq!(rig.ctrl(ctrlq, 4, 0, &2u16.to_le_bytes()), (1, 0));
    assert_eq!(log1.lock().unwrap().enabled, vec![false, true]);
    assert_eq!(rig.net.net_counts().active_pairs, 2);
    rig.wait_used(rx1, 1);
    assert_eq!(rig.used(rx1, 0), (u32::from(h1), 312));
    same(&rig.read(a1 + 12, 300), &early[12..], "bytes");

    let f0 = with_hdr(&pattern(200, 16));
    p0.send(&f0);
    rig.wait_used(rx0, 1);
    assert_eq!(rig.used(rx0, 0), (u32::from(h0), 212));
    same(&rig.read(a0 + 12, 200), &f0[12..], "bytes");

    let (t0, t1) = (with_hdr(&pattern(80, 17)), with_hdr(&pattern(90, 18)));
    rig.tx_chain(tx0, &t0, &[]);
    rig.tx_chain(tx1, &t1, &[]);
    rig.kick(tx0);
    rig.kick(tx1);
    assert_eq!(p0.recv(), t0);
    assert_eq!(p1.recv(), t1);
    rig.wait_used(tx0, 1);
    rig.wait_used(tx1, 1);
    let n = rig.net.net_counts();
    assert_eq!((n.pairs[0].rx_packets, n.pairs[0].tx_packets), (1, 1));
    assert_eq!((n.pairs[1].rx_packets, n.pairs[1].tx_packets), (1, 1));
    assert_eq!(n.total().tx_bytes, 170);

    // Back to one pair: pair 1 is detached and delivers nothing more.
    assert_eq!(rig.ctrl(ctrlq, 4, 0, &1u16.to_le_bytes()), (1, 0));
    assert_eq!(log1.lock().unwrap().enabled, vec![false, true, false]);
    rig.rx_chain(rx1, 2048);
    rig.kick(rx1);
    p1.send(&early);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rig.used_idx(rx1), 1);
}

#[test]
fn control_commands_are_answered() {
    let (b0, _p0, _) = seqpacket();
    let (b1, _p1, _) = seqpacket();
    let net = Net::new("net0", NetConfig::new(MAC), vec![b0, b1]).unwrap();
    let mut rig = Rig::new(net, BASE | nf::MQ | nf::CTRL_VQ);
    let c = 4;
    let (ok, err) = (0u8, 1u8);
    assert_eq!(rig.ctrl(c, 4, 0, &1u16.to_le_bytes()), (1, ok));
    assert_eq!(rig.ctrl(c, 4, 0, &2u16.to_le_bytes()), (1, ok));
    assert_eq!(rig.ctrl(c, 4, 0, &0u16.to_le_bytes()), (1, err));
    assert_eq!(rig.ctrl(c, 4, 0, &3u16.to_le_bytes()), (1, err));
    assert_eq!(rig.ctrl(c, 4, 0, &[1]), (1, err), "short data");
    assert_eq!(rig.ctrl(c, 4, 0, &[1, 0, 0]), (1, err), "long data");
    assert_eq!(rig.ctrl(c, 4, 1, &[]), (1, err), "RSS is not offered");
    assert_eq!(
        rig.net.net_counts().active_pairs,
        2,
        "refusals change nothing"
    );
    // RX mode (promiscuous, all-multicast ...): acknowledged.
    for cmd in 0..=5 {
        assert_eq!(rig.ctrl(c, 0, cmd, &[1]), (1, ok));
    }
    assert_eq!(rig.ctrl(c, 0, 0, &[]), (1, err));
    assert_eq!(rig.ctrl(c, 0, 6, &[1]), (1, err));
    let mut tables = 1u32.to_le_bytes().to_vec();
    tables.extend_from_slice(&[0x02, 1, 2, 3, 4, 5]);
    tables.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(rig.ctrl(c, 1, 0, &tables), (1, ok));
    assert_eq!(rig.ctrl(c, 1, 0, &tables[..8]), (1, err));
    assert_eq!(
        rig.ctrl(c, 1, 1, &MAC),
        (1, err),
        "MAC_ADDR_SET is not offered"
    );
    assert_eq!(rig.ctrl(c, 9, 0, &[]), (1, err));
    // Without an ack byte nothing is written.
    let hdr = rig.buf(2);
    let n = rig.used_idx(c);
    rig.chain(c, &[(hdr, 2, 0)]);
    rig.kick(c);
    rig.wait_used(c, n + 1);
    assert_eq!(rig.used(c, n).1, 0);
    same(&rig.read(hdr, 2), &[CANARY; 2], "bytes");
    // Readable after writable, and outside guest memory: refused.
    let (h2, ack) = (rig.buf(2), rig.buf(1));
    rig.mem.write_slice(&[0, 0], GuestAddress(h2)).unwrap();
    rig.chain(
        c,
        &[(h2, 2, 0), (ack, 1, WRITE), (h2, 1, 0), (ack, 1, WRITE)],
    );
    rig.kick(c);
    rig.wait_used(c, n + 2);
    assert_eq!((rig.used(c, n + 1).1, rig.read(ack, 1)[0]), (1, err));
    let ack2 = rig.buf(1);
    rig.chain(c, &[(MEM_SIZE as u64 - 1, 2, 0), (ack2, 1, WRITE)]);
    rig.kick(c);
    rig.wait_used(c, n + 3);
    assert_eq!(rig.read(ack2, 1)[0], err);
    assert!(!rig.interrupt.needs_reset());
}

#[test]
fn without_mq_the_control_queue_is_the_third_and_pairs_cannot_change() {
    let (b0, p0, _) = seqpacket();
    let (b1, _p1, _) = seqpacket();
    let net = Net::new("net0", NetConfig::new(MAC), vec![b0, b1]).unwrap();
    let mut rig = Rig::new(net, BASE | nf::CTRL_VQ);
    assert_eq!(rig.ctrl(2, 4, 0, &1u16.to_le_bytes()), (1, 1));
    assert_eq!(rig.ctrl(2, 0, 0, &[1]), (1, 0));
    let f = with_hdr(&pattern(50, 19));
    rig.tx_chain(TXQ, &f, &[]);
    rig.kick(TXQ);
    assert_eq!(p0.recv(), f);
}

// --- hang-ups and limits -----------------------------------------------------------------------

#[test]
fn a_backend_that_hangs_up_takes_the_link_down_without_spinning() {
    let (net, peer, _) = tap_net(NetConfig::new(MAC));
    let mut rig = Rig::new(net, BASE);
    let (h, a) = rig.rx_chain(RXQ, 2048);
    rig.kick(RXQ);
    let last = with_hdr(&pattern(100, 20));
    peer.send(&last);
    rig.wait_used(RXQ, 1);
    drop(peer);
    wait_for("the link to go down", || !rig.net.link_up());
    assert_eq!(rig.used(RXQ, 0), (u32::from(h), 112));
    same(&rig.read(a + 12, 100), &last[12..], "bytes");
    let mut status = [0xFFu8; 2];
    rig.net
        .read_config(config_offset::STATUS as u64, &mut status);
    assert_eq!(status, [0, 0]);
    assert_ne!(rig.interrupt.status() & interrupt_status::CONFIG_CHANGE, 0);
    std::thread::sleep(Duration::from_millis(100));
    let events = rig.counts(0).backend_events;
    assert!(events <= 3, "{events} wake-ups");
    // The guest's transmissions still complete (dropped).
    rig.tx_chain(TXQ, &with_hdr(&[1; 60]), &[]);
    rig.kick(TXQ);
    rig.wait_used(TXQ, 1);
    assert_eq!(rig.counts(0).tx_dropped, 1);
    assert!(!rig.net.net_counts().link_up);
    assert!(!rig.interrupt.needs_reset());
}

#[test]
fn a_hang_up_is_noticed_while_receive_is_disarmed() {
    let (net, peer, _) = tap_net(NetConfig::new(MAC));
    let rig = Rig::new(net, BASE);
    peer.send(&with_hdr(&[0; 60]));
    wait_for("starvation", || rig.counts(0).rx_no_buffers >= 1);
    drop(peer);
    wait_for("the link to go down", || !rig.net.link_up());
    std::thread::sleep(Duration::from_millis(100));
    assert!(rig.counts(0).backend_events <= 3);

    // passt going away.
    let (net, peer) = stream_net(NetConfig::new(MAC));
    let mut rig = Rig::new(net, BASE);
    rig.rx_chain(RXQ, 2048);
    rig.kick(RXQ);
    drop(peer);
    wait_for("the link to go down", || !rig.net.link_up());
    std::thread::sleep(Duration::from_millis(100));
    assert!(rig.counts(0).backend_events <= 3);
}

#[test]
fn a_blocked_transmit_limiter_holds_frames_until_released() {
    let (tx_lim, budget, evt) = limiter(250);
    let mut cfg = NetConfig::new(MAC);
    cfg.tx_limiter = Some(tx_lim);
    let (net, peer, _) = tap_net(cfg);
    let mut rig = Rig::new(net, BASE);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| with_hdr(&pattern(100, i))).collect();
    for f in &frames {
        rig.tx_chain(TXQ, f, &[]);
    }
    rig.kick(TXQ);
    // 100 + 100 + 100 bytes spend the 250: three frames go, then nothing.
    for f in &frames[..3] {
        same(&peer.recv(), f, "frame within the budget");
    }
    assert_eq!(peer.recv_within(100), None);
    rig.kick(TXQ); // a notification does not get around the limiter
    assert_eq!(peer.recv_within(50), None);
    assert_eq!(rig.counts(0).tx_packets, 3);
    budget.store(1 << 20, Ordering::SeqCst);
    evt.write(1).unwrap();
    for f in &frames[3..] {
        same(&peer.recv(), f, "frame after the release");
    }
    rig.wait_used(TXQ, 5);
}

#[test]
fn a_blocked_receive_limiter_holds_frames_until_released() {
    let (rx_lim, budget, evt) = limiter(250);
    let mut cfg = NetConfig::new(MAC);
    cfg.rx_limiter = Some(rx_lim);
    let (net, peer, _) = tap_net(cfg);
    let mut rig = Rig::new(net, BASE);
    let chains: Vec<(u16, u64)> = (0..5).map(|_| rig.rx_chain(RXQ, 512)).collect();
    rig.kick(RXQ);
    for i in 0..5 {
        peer.send(&with_hdr(&pattern(100, i)));
    }
    rig.wait_used(RXQ, 3);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rig.used_idx(RXQ), 3, "blocked after 250 bytes");
    let events = rig.counts(0).backend_events;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        rig.counts(0).backend_events,
        events,
        "the backend is disarmed"
    );
    budget.store(1 << 20, Ordering::SeqCst);
    evt.write(1).unwrap();
    rig.wait_used(RXQ, 5);
    assert_eq!(rig.used(RXQ, 4), (u32::from(chains[4].0), 112));
}

#[test]
fn pause_holds_traffic_and_resume_continues() {
    let (net, peer, _) = tap_net(NetConfig::new(MAC));
    let mut rig = Rig::new(net, BASE);
    rig.net.pause().unwrap();
    let f = with_hdr(&pattern(70, 21));
    rig.tx_chain(TXQ, &f, &[]);
    rig.kick(TXQ);
    assert_eq!(peer.recv_within(50), None);
    rig.net.resume();
    same(&peer.recv(), &f, "bytes");
}

// --- a real tap (where this process may create one) ---------------------------------------------

/// Brings interface `name` up and returns a packet socket bound to it.
fn up_with_packet_socket(name: &str) -> OwnedFd {
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: plain socket creation; no memory is passed.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(s >= 0);
    // SAFETY: `s` was just created and is owned here only.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain data; zeroes are valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &b) in ifr.ifr_name.iter_mut().zip(cname.as_bytes()) {
        *d = b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one live ifreq.
    unsafe {
        assert_eq!(libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr), 0);
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr), 0);
    }
    // SAFETY: the name is a valid C string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(index, 0);
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation; no memory is passed.
    let p = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(p >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: `p` was just created and is owned here only.
    let p = unsafe { OwnedFd::from_raw_fd(p) };
    // SAFETY: sockaddr_ll is plain data; zeroes are valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: bind reads one live sockaddr_ll of the length given.
    let r = unsafe {
        libc::bind(
            p.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    p
}

/// An Ethernet frame of the local experimental type 0x88b5 with `payload`.
fn eth_frame(src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xFF; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xB5]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_real_tap_moves_frames_both_ways() {
    let name = format!("fvn{}", std::process::id() % 100_000);
    let tap = match Tap::open(&name) {
        Ok(t) => t,
        Err(
            e @ (TapError::Permission { .. }
            | TapError::TunMissing { .. }
            | TapError::TunAccess { .. }),
        ) => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let packet = Peer {
        fd: up_with_packet_socket(&name),
    };
    let net = Net::new("net0", NetConfig::new(MAC), vec![Box::new(tap)]).unwrap();
    let mut rig = Rig::new(net, BASE | nf::MRG_RXBUF | nf::CSUM | nf::GUEST_CSUM);
    let chains: Vec<(u16, u64)> = (0..16).map(|_| rig.rx_chain(RXQ, 2048)).collect();
    rig.kick(RXQ);

    // Guest to host: the header is taken by the tap, the frame appears on the interface.
    let out = eth_frame(MAC, &pattern(100, 30));
    let mut with = vec![0u8; 12];
    with.extend_from_slice(&out);
    rig.tx_chain(TXQ, &with, &[12]);
    rig.kick(TXQ);
    let seen = loop {
        let f = packet.recv();
        if f.get(12..14) == Some(&[0x88, 0xB5][..]) {
            break f;
        }
    };
    same(&seen, &out, "frame on the interface");

    // Host to guest: a frame sent out of the interface lands in the receive buffers.
    let inbound = eth_frame([0x02, 9, 9, 9, 9, 9], &pattern(300, 31));
    packet.send(&inbound);
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = 'search: loop {
        let used = rig.used_idx(RXQ);
        for i in 0..used {
            let (head, len) = rig.used(RXQ, i);
            let (_, addr) = chains
                .iter()
                .find(|c| u32::from(c.0) == head)
                .copied()
                .unwrap();
            let buf = rig.read(addr, len as usize);
            if buf.get(24..26) == Some(&[0x88, 0xB5][..]) {
                break 'search buf;
            }
        }
        assert!(Instant::now() < deadline, "the frame did not arrive");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(u16::from_le_bytes([found[10], found[11]]), 1, "num_buffers");
    same(&found[12..], &inbound, "frame in the guest");
    assert!(rig.counts(0).rx_packets >= 1);
}

#[test]
fn snapshots_read_every_queue_where_it_is_and_the_pairs_in_use() {
    let (b0, p0, _) = seqpacket();
    let (b1, _p1, _) = seqpacket();
    let net = Net::new("net0", NetConfig::new(MAC), vec![b0, b1]).unwrap();
    assert!(net.queue_states().is_err(), "not active yet");
    let acked = BASE | nf::MQ | nf::CTRL_VQ | nf::MRG_RXBUF;
    let mut rig = Rig::new(net, acked);
    let (tx0, ctrlq) = (1, 4);
    assert_eq!(rig.net.device_state(), 1u16.to_le_bytes());
    assert_eq!(rig.ctrl(ctrlq, 4, 0, &2u16.to_le_bytes()), (1, 0));
    for i in 0..3 {
        let f = with_hdr(&pattern(60, i));
        rig.tx_chain(tx0, &f, &[]);
        rig.kick(tx0);
        assert_eq!(p0.recv(), f);
    }
    rig.wait_used(tx0, 3);
    rig.net.pause().unwrap();
    let states = rig.net.queue_states().unwrap();
    assert_eq!(states.len(), 5, "rx0 tx0 rx1 tx1 ctrl");
    assert_eq!((states[tx0].next_avail, states[tx0].next_used), (3, 3));
    assert_eq!(
        states[ctrlq].next_avail, 1,
        "the control queue answered one command"
    );
    assert_eq!(states[3].desc_table, 0x1_0000 + 0x4000 * 3);
    assert_eq!(rig.net.device_state(), 2u16.to_le_bytes());
    rig.net.resume();

    // A restored device is activated on its saved queues, then told the pairs in use.
    drop(rig);
    let (b0, _q0, _) = seqpacket();
    let (b1, _q1, log1) = seqpacket();
    let net = Net::new("net0", NetConfig::new(MAC), vec![b0, b1]).unwrap();
    let mut rig = Rig::new(net, acked);
    assert!(
        rig.net.restore_device_state(&[3, 0]).is_err(),
        "only 2 pairs"
    );
    assert!(rig.net.restore_device_state(&[0, 0]).is_err());
    assert!(rig.net.restore_device_state(&[1]).is_err());
    rig.net.restore_device_state(&2u16.to_le_bytes()).unwrap();
    assert_eq!(rig.net.net_counts().active_pairs, 2);
    assert_eq!(log1.lock().unwrap().enabled, vec![false, true]);
}

#[test]
fn received_frames_mark_their_guest_pages_dirty() {
    use vm_memory::GuestMemoryBackend;
    let dirty = |mem: &GuestMemoryMmap| -> Vec<u64> {
        let mapping: &vm_memory::MmapRegion<_> = mem.iter().next().unwrap();
        let words = mapping.bitmap().get_and_reset();
        (0..words.len() as u64 * 64)
            .filter(|&i| words[(i / 64) as usize] & (1 << (i % 64)) != 0)
            .collect()
    };
    let mut cfg = NetConfig::new(MAC);
    cfg.mtu = Some(9000);
    let (net, peer, _) = tap_net(cfg);
    let mut rig = Rig::new(net, BASE | nf::MRG_RXBUF);
    let (_, a) = rig.rx_chain(RXQ, 12_000);
    rig.kick(RXQ);
    std::thread::sleep(Duration::from_millis(20));
    let _ = dirty(&rig.mem);
    // Only the backend's readv writes the frame's tail, behind vm-memory's back.
    peer.send(&with_hdr(&pattern(9000, 9)));
    rig.wait_used(RXQ, 1);
    let tail = (a + 8000) / 4096;
    let d = dirty(&rig.mem);
    assert!(
        d.contains(&tail),
        "page {tail:#x} of the frame not marked in {d:x?}"
    );
}
