//! virtio-vsock end-to-end tests: the device runs on its worker thread, activated on three
//! [`DriverQueue`]s in real guest memory; the test is the guest (a tiny vsock stack writing
//! and reading `virtio_vsock_hdr` packets) and the host processes (Unix sockets, often on
//! threads). Every wait is bounded: a broken device fails a test instead of hanging it.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{op, shutdown, Header, HDR_SIZE, HOST_CID, MAX_PKT_LEN, TYPE_STREAM};
use super::*;
use crate::virtio::test_util::{guest_memory, DriverQueue, WRITE};

const MEM_SIZE: usize = 0x160_0000;
const RXQ: u64 = 0x0;
const TXQ: u64 = 0x4000;
const EVQ: u64 = 0x8000;
const EV_BUFS: u64 = 0xC000;
const RX_BUFS: u64 = 0x10_0000;
const RX_SLOT: u64 = 0x1_1000;
const TX_AREA: u64 = 0x130_0000;
const TX_SLOT: u64 = 0x2_0000;
const TX_SLOTS: u16 = 16;
const CID: u64 = 3;
/// The bound on any one wait (a hang guard, not a performance assertion).
const T: Duration = Duration::from_secs(30);
/// A Linux guest's rx buffer: 4 KiB of payload after the header.
const RX_LEN: u32 = 4096 + HDR_SIZE as u32;

/// A directory for sockets, removed at the end. Under the system temp dir: socket paths
/// must stay short.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("fvm-vsock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Byte `i` of stream `seed`.
fn pattern(seed: u32, from: usize, len: usize) -> Vec<u8> {
    (from..from + len)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(97));
            (x >> 13) as u8 ^ (i >> 8) as u8
        })
        .collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Waits up to `ms` for `evt` to be readable and reads it.
fn wait_evt(evt: &EventFd, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, count 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n == 1 {
        let _ = evt.read();
    }
    n == 1
}

fn hdr(src_port: u32, dst_port: u32, op_: u16) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op: op_,
        ..Header::default()
    }
}

fn limits() -> VsockLimits {
    VsockLimits::default()
}

/// The guest's driver: three queues, the interrupt, the device.
struct Guest {
    mem: GuestMemoryMmap,
    rx: DriverQueue,
    tx: DriverQueue,
    ev: DriverQueue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    ev_kick: EventFd,
    irq: EventFd,
    rx_seen: u16,
    tx_pub: u16,
    rx_len: u32,
    /// Give every rx buffer back once read.
    refill: bool,
    /// Used rx buffers the device wrote nothing into.
    rx_empty: usize,
    /// VIRTIO_F_EVENT_IDX negotiated: the guest says when it wants interrupts and kicks
    /// only when the device asked.
    event_idx: bool,
    dev: Vsock,
    dir: TempDir,
}

impl Guest {
    fn start(limits: VsockLimits, rx_bufs: u16) -> Guest {
        let dir = TempDir::new();
        let dev = Vsock::with_limits("vsock-test", CID, dir.path("v.sock"), limits).unwrap();
        Guest::activate(dev, dir, rx_bufs, false)
    }

    fn activate(mut dev: Vsock, dir: TempDir, rx_bufs: u16, event_idx: bool) -> Guest {
        let mem = guest_memory(MEM_SIZE);
        let rx = DriverQueue::new(QUEUE_SIZE, RXQ);
        let tx = DriverQueue::new(QUEUE_SIZE, TXQ);
        let ev = DriverQueue::new(16, EVQ);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let kick = || EventFd::new(EFD_NONBLOCK).unwrap();
        let (rx_kick, tx_kick, ev_kick) = (kick(), kick(), kick());
        let queues = vec![
            ActiveQueue {
                queue: rx.device_queue(event_idx),
                notify: rx_kick.try_clone().unwrap(),
            },
            ActiveQueue {
                queue: tx.device_queue(event_idx),
                notify: tx_kick.try_clone().unwrap(),
            },
            ActiveQueue {
                queue: ev.device_queue(event_idx),
                notify: ev_kick.try_clone().unwrap(),
            },
        ];
        let mut acked = dev.avail_features();
        if !event_idx {
            acked &= !features::RING_EVENT_IDX;
        }
        dev.activate(mem.clone(), interrupt, queues, acked).unwrap();
        let mut g = Guest {
            mem,
            rx,
            tx,
            ev,
            rx_kick,
            tx_kick,
            ev_kick,
            irq,
            rx_seen: 0,
            tx_pub: 0,
            rx_len: RX_LEN,
            refill: true,
            rx_empty: 0,
            event_idx,
            dev,
            dir,
        };
        for i in 0..rx_bufs {
            g.give_rx(i);
        }
        if rx_bufs > 0 {
            g.rx_kick.write(1).unwrap();
        }
        g
    }

    fn uds(&self) -> PathBuf {
        self.dev.uds_path().to_path_buf()
    }

    fn give_rx(&mut self, i: u16) {
        let addr = RX_BUFS + u64::from(i) * RX_SLOT;
        self.rx.set_desc(&self.mem, i, addr, self.rx_len, WRITE, 0);
        self.rx.publish(&self.mem, i);
    }

    /// Notifies the rx queue after one buffer was added, unless the device said it needs
    /// no notification (the NO_NOTIFY flag, or `avail_event` with EVENT_IDX).
    fn kick_rx_if_asked(&self) {
        let new: u16 = self.mem.read_obj(GuestAddress(self.rx.avail + 2)).unwrap();
        let kick = if self.event_idx {
            let at = self.rx.used + 4 + 8 * u64::from(self.rx.size);
            let avail_event: u16 = self.mem.read_obj(GuestAddress(at)).unwrap();
            new.wrapping_sub(avail_event).wrapping_sub(1) < 1
        } else {
            let flags: u16 = self.mem.read_obj(GuestAddress(self.rx.used)).unwrap();
            flags & 1 == 0
        };
        if kick {
            self.rx_kick.write(1).unwrap();
        }
    }

    /// With EVENT_IDX: asks for an interrupt when the device uses entry `n` of queue `q`.
    fn want_interrupt_at(&self, q: &DriverQueue, n: u16) {
        if self.event_idx {
            let used_event = q.avail + 4 + 2 * u64::from(q.size);
            self.mem.write_obj(n, GuestAddress(used_event)).unwrap();
        }
    }

    /// Sends a packet: header and payload in two descriptors (one when there is no payload).
    fn send(&mut self, h: Header, payload: &[u8]) {
        let mut h = h;
        if h.op == op::RW {
            h.len = payload.len() as u32;
        }
        self.send_raw(&h.to_bytes(), payload);
    }

    fn send_raw(&mut self, head: &[u8], payload: &[u8]) {
        let slot = self.tx_pub % TX_SLOTS;
        let base = TX_AREA + u64::from(slot) * TX_SLOT;
        self.mem.write_slice(head, GuestAddress(base)).unwrap();
        let mut bufs = vec![(base, head.len() as u32, false)];
        if !payload.is_empty() {
            self.mem
                .write_slice(payload, GuestAddress(base + 0x1000))
                .unwrap();
            bufs.push((base + 0x1000, payload.len() as u32, false));
        }
        let d = self.tx.chain(&self.mem, slot * 2, &bufs);
        self.publish_tx(d);
    }

    /// Makes tx chain `head` available and waits until the device has consumed it.
    fn publish_tx(&mut self, head: u16) {
        self.want_interrupt_at(&self.tx, self.tx_pub);
        self.tx.publish(&self.mem, head);
        self.tx_pub = self.tx_pub.wrapping_add(1);
        self.tx_kick.write(1).unwrap();
        let end = Instant::now() + T;
        while self.tx.used_idx(&self.mem) != self.tx_pub {
            assert!(
                Instant::now() < end,
                "the device did not consume a tx packet"
            );
            wait_evt(&self.irq, 10);
        }
    }

    fn try_recv(&mut self) -> Option<(Header, Vec<u8>)> {
        loop {
            if self.rx.used_idx(&self.mem) == self.rx_seen {
                return None;
            }
            let (id, len) = self.rx.used_elem(&self.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            self.want_interrupt_at(&self.rx, self.rx_seen);
            // Read the buffer before giving it back.
            let packet = if len == 0 {
                self.rx_empty += 1;
                None
            } else {
                assert!(
                    len as usize >= HDR_SIZE && len <= self.rx_len,
                    "used length {len}"
                );
                let mut b = vec![0u8; len as usize];
                let addr = RX_BUFS + u64::from(id) * RX_SLOT;
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                let h = Header::from_bytes(b[..HDR_SIZE].try_into().unwrap());
                assert_eq!(len as usize, HDR_SIZE + h.len as usize, "{h:?}");
                Some((h, b[HDR_SIZE..].to_vec()))
            };
            if self.refill {
                self.give_rx(id as u16);
                self.kick_rx_if_asked();
            }
            if packet.is_some() {
                return packet;
            }
        }
    }

    fn recv(&mut self, within: Duration) -> Option<(Header, Vec<u8>)> {
        let end = Instant::now() + within;
        loop {
            if let Some(p) = self.try_recv() {
                return Some(p);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            wait_evt(&self.irq, left.as_millis().clamp(1, 20) as i32);
        }
    }

    fn expect(&mut self) -> (Header, Vec<u8>) {
        self.recv(T).expect("a packet from the device")
    }

    fn counts(&self) -> VsockCounts {
        self.dev.counts()
    }

    fn wait_counts(&self, what: &str, f: impl Fn(&VsockCounts) -> bool) {
        let end = Instant::now() + T;
        while !f(&self.counts()) {
            assert!(Instant::now() < end, "{what}: {:?}", self.counts());
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The guest's side of one connection.
#[derive(Debug, Default)]
struct GConn {
    accepted: bool,
    rx: Vec<u8>,
    rx_cnt: u32,
    fwd_cnt: u32,
    fwd_sent: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    shut: u32,
    rst: bool,
    /// Bytes of `rx` sent back (echo tests).
    echoed: usize,
}

/// A tiny guest vsock stack over [`Guest`]. Connections are keyed (guest port, host port).
struct Stack {
    g: Guest,
    conns: HashMap<(u32, u32), GConn>,
    listening: HashSet<u32>,
    buf_alloc: u32,
    /// Consume received data at once and send credit updates.
    auto_credit: bool,
    /// Every non-RW packet received, in order.
    log: Vec<Header>,
    /// Packets for connections the stack does not know.
    strays: Vec<Header>,
}

impl Stack {
    fn new(g: Guest) -> Stack {
        Stack {
            g,
            conns: HashMap::new(),
            listening: HashSet::new(),
            buf_alloc: 256 << 10,
            auto_credit: true,
            log: Vec::new(),
            strays: Vec::new(),
        }
    }

    fn start() -> Stack {
        Stack::new(Guest::start(limits(), QUEUE_SIZE))
    }

    fn send_ctl(&mut self, key: (u32, u32), op_: u16, flags: u32) {
        let mut h = hdr(key.0, key.1, op_);
        h.flags = flags;
        h.buf_alloc = self.buf_alloc;
        if let Some(c) = self.conns.get_mut(&key) {
            h.fwd_cnt = c.fwd_cnt;
            c.fwd_sent = c.fwd_cnt;
        }
        self.g.send(h, &[]);
    }

    /// Sends as much of `data` as the device's credit allows; returns how much.
    fn write(&mut self, key: (u32, u32), data: &[u8], chunk: usize) -> usize {
        let mut done = 0;
        while done < data.len() {
            let c = self.conns.get_mut(&key).expect("a connection");
            let in_flight = c.tx_cnt.wrapping_sub(c.peer_fwd_cnt);
            let free = c.peer_buf_alloc.saturating_sub(in_flight) as usize;
            let n = free.min(chunk).min(data.len() - done);
            if n == 0 {
                break;
            }
            c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            let mut h = hdr(key.0, key.1, op::RW);
            h.buf_alloc = self.buf_alloc;
            h.fwd_cnt = c.fwd_cnt;
            c.fwd_sent = c.fwd_cnt;
            self.g.send(h, &data[done..done + n]);
            done += n;
        }
        done
    }

    /// Handles one packet if one arrives within `wait`.
    fn step(&mut self, wait: Duration) -> bool {
        let Some((h, payload)) = self.g.recv(wait) else {
            return false;
        };
        self.handle(h, payload);
        true
    }

    fn handle(&mut self, h: Header, payload: Vec<u8>) {
        assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, CID), "{h:?}");
        let key = (h.dst_port, h.src_port);
        if h.op != op::RW {
            self.log.push(h);
        }
        if h.op == op::REQUEST && !self.conns.contains_key(&key) {
            assert_eq!(h.type_, TYPE_STREAM);
            if self.listening.contains(&h.dst_port) {
                self.conns.insert(
                    key,
                    GConn {
                        accepted: true,
                        peer_buf_alloc: h.buf_alloc,
                        peer_fwd_cnt: h.fwd_cnt,
                        ..GConn::default()
                    },
                );
                self.send_ctl(key, op::RESPONSE, 0);
            } else {
                self.send_ctl(key, op::RST, 0);
            }
            return;
        }
        let buf_alloc = self.buf_alloc;
        let Some(c) = self.conns.get_mut(&key) else {
            self.strays.push(h);
            return;
        };
        if h.op != op::RST {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
        }
        match h.op {
            op::RESPONSE => c.accepted = true,
            op::RW => {
                assert_eq!(payload.len(), h.len as usize);
                c.rx.extend_from_slice(&payload);
                c.rx_cnt = c.rx_cnt.wrapping_add(h.len);
                assert!(
                    c.rx_cnt.wrapping_sub(c.fwd_cnt) <= buf_alloc,
                    "the device sent beyond the guest's credit: {} unconsumed of {buf_alloc}",
                    c.rx_cnt.wrapping_sub(c.fwd_cnt)
                );
                if self.auto_credit {
                    c.fwd_cnt = c.rx_cnt;
                    if c.fwd_cnt.wrapping_sub(c.fwd_sent) >= buf_alloc / 2 {
                        self.send_ctl(key, op::CREDIT_UPDATE, 0);
                    }
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => self.send_ctl(key, op::CREDIT_UPDATE, 0),
            op::SHUTDOWN => c.shut |= h.flags,
            op::RST => c.rst = true,
            o => panic!("unexpected op {o} from the device"),
        }
    }

    fn pump_until(&mut self, what: &str, cond: impl Fn(&Stack) -> bool) {
        let end = Instant::now() + T;
        while !cond(self) {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            self.step(Duration::from_millis(20));
        }
    }

    /// Handles whatever arrives for `d`.
    fn pump_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.step(Duration::from_millis(5));
        }
    }

    fn conn(&self, key: (u32, u32)) -> &GConn {
        self.conns.get(&key).expect("a connection")
    }

    /// A guest connection from guest port `gport` to host port `hport`; true if accepted.
    fn connect(&mut self, gport: u32, hport: u32) -> bool {
        let key = (gport, hport);
        self.conns.insert(key, GConn::default());
        self.send_ctl(key, op::REQUEST, 0);
        self.pump_until("RESPONSE or RST", |s| {
            let c = s.conn(key);
            c.accepted || c.rst
        });
        self.conn(key).accepted
    }
}

/// A host process connecting to `uds` and asking for guest port `port`.
fn host_connect(uds: &Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(uds).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    s
}

/// Reads a `\n`-terminated line (one byte at a time: nothing after it is consumed).
fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => panic!("reading a line: {e}"),
        }
    }
    String::from_utf8(line).unwrap()
}

/// Whether the host socket reads end of file (or a reset) within `T`.
fn reads_eof(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) => panic!("expected end of file, got {e}"),
        }
    }
}

fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

// ---- the device ----

#[test]
fn the_device_describes_itself() {
    let dir = TempDir::new();
    let path = dir.path("v.sock");
    let dev = Vsock::new("vsock0", 0x1234_5678, path.clone()).unwrap();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(
        dev.avail_features(),
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    );
    let mut c = [0xFFu8; 12];
    dev.read_config(0, &mut c);
    assert_eq!(c, [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut hi = [0xFFu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    dev.read_config(u64::MAX, &mut hi);
    assert_eq!(hi, [0; 4]);
    let e = dev.send_transport_reset().unwrap_err();
    assert!(matches!(e, VsockError::NotActive(_)), "{e}");
    assert!(path.exists());
    drop(dev);
    assert!(!path.exists(), "the socket file goes with the device");
}

#[test]
fn reserved_cids_and_busy_paths_are_refused() {
    let dir = TempDir::new();
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let e = Vsock::new("v", cid, dir.path("a.sock")).unwrap_err();
        assert!(matches!(e, VsockError::ReservedCid(c) if c == cid), "{e}");
        assert!(e.to_string().contains(&cid.to_string()), "{e}");
    }
    let _a = Vsock::new("v", 3, dir.path("b.sock")).unwrap();
    let e = Vsock::new("v", 4, dir.path("b.sock")).unwrap_err();
    assert!(matches!(e, VsockError::InUse { .. }), "{e}");
    let bad = VsockLimits {
        max_connections: 0,
        ..limits()
    };
    assert!(matches!(
        Vsock::with_limits("v", 3, dir.path("c.sock"), bad),
        Err(VsockError::Limits(_))
    ));
    for bad in [
        VsockLimits {
            buf_alloc: MAX_BUF_ALLOC + 1,
            ..limits()
        },
        VsockLimits {
            close_timeout: Duration::MAX,
            ..limits()
        },
        VsockLimits {
            request_timeout: Duration::ZERO,
            ..limits()
        },
    ] {
        let e = Vsock::with_limits("v", 3, dir.path("c.sock"), bad).unwrap_err();
        assert!(matches!(e, VsockError::Limits(_)), "{e}");
    }
    assert!(!dir.path("c.sock").exists(), "nothing bound for bad limits");
}

// ---- host-initiated ----

#[test]
fn host_initiated_connection_moves_data_and_closes_in_order() {
    let mut s = Stack::start();
    s.listening.insert(1234);
    let uds = s.g.uds();
    let host = std::thread::spawn(move || {
        let mut h = host_connect(&uds, 1234);
        let ok = read_line(&mut h);
        h.write_all(b"ping from the host").unwrap();
        let reply = read_exactly(&mut h, 14);
        (ok, reply, h)
    });
    s.pump_until("the guest's connection", |s| !s.conns.is_empty());
    let (&key, _) = s.conns.iter().next().unwrap();
    assert_eq!(key, (1234, FIRST_LOCAL_PORT));
    let req = s.log[0];
    assert_eq!(req.op, op::REQUEST);
    assert_eq!(req.buf_alloc, limits().buf_alloc);
    s.pump_until("the host's data", |s| s.conn(key).rx.len() == 18);
    assert_eq!(s.conn(key).rx, b"ping from the host");
    assert_eq!(s.write(key, b"pong the guest", 4096), 14);
    let (ok, reply, h) = host.join().unwrap();
    assert_eq!(ok, format!("OK {FIRST_LOCAL_PORT}"));
    assert_eq!(reply, b"pong the guest");
    // The host closes: a SHUTDOWN both ways; the guest's RST ends it in order.
    drop(h);
    s.pump_until("SHUTDOWN", |s| s.conn(key).shut == shutdown::BOTH);
    s.send_ctl(key, op::RST, 0);
    s.g.wait_counts("closed", |c| c.connections_closed == 1);
    let c = s.g.counts();
    assert_eq!(
        (
            c.connections_opened,
            c.connections_reset,
            c.connections_active
        ),
        (1, 0, 0)
    );
    assert_eq!((c.tx_bytes, c.rx_bytes), (14, 18));
    assert!(c.rx_packets >= 3 && c.tx_packets >= 3, "{c:?}");
}

#[test]
fn a_refused_or_unanswered_host_connection_closes_the_host_socket() {
    let lim = VsockLimits {
        request_timeout: Duration::from_millis(200),
        ..limits()
    };
    let mut s = Stack::new(Guest::start(lim, QUEUE_SIZE));
    // Nobody listens on 77: the guest answers RST.
    let mut h = host_connect(&s.g.uds(), 77);
    s.pump_until("the REQUEST", |s| !s.log.is_empty());
    assert!(reads_eof(&mut h), "closed without OK");
    // 78: the guest says nothing; the device gives up and tells the guest.
    let mut h2 = host_connect(&s.g.uds(), 78);
    let (req, _) = s.g.expect();
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 78));
    let (rst, _) = s.g.expect();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port),
        (op::RST, req.src_port, 78)
    );
    assert!(reads_eof(&mut h2));
    s.g.wait_counts("both reset", |c| c.connections_reset == 2);
    assert_eq!(s.g.counts().connections_active, 0);
}

#[test]
fn bad_connect_lines_get_the_socket_closed() {
    let lim = VsockLimits {
        connect_line_timeout: Duration::from_millis(200),
        ..limits()
    };
    let g = Guest::start(lim, QUEUE_SIZE);
    let uds = g.uds();
    for line in [
        &b"GARBAGE\n"[..],
        b"CONNECT\n",
        b"CONNECT 99999999999\n",
        b"CONNECT 1 2\n",
        &[b'x'; 200][..],
    ] {
        let mut h = UnixStream::connect(&uds).unwrap();
        h.set_read_timeout(Some(T)).unwrap();
        h.write_all(line).unwrap();
        assert!(reads_eof(&mut h), "{:?}", String::from_utf8_lossy(line));
    }
    // Silence: closed after the time limit.
    let mut h = UnixStream::connect(&uds).unwrap();
    h.set_read_timeout(Some(T)).unwrap();
    h.write_all(b"CONN").unwrap();
    assert!(reads_eof(&mut h));
    g.wait_counts("refused", |c| c.connections_refused == 6);
    assert_eq!(g.counts().connections_opened, 0);
}

// ---- guest-initiated ----

#[test]
fn guest_initiated_connection_moves_data_and_closes_in_order() {
    let mut s = Stack::start();
    let listener = UnixListener::bind(sock::port_path(&s.g.uds(), 5000)).unwrap();
    assert!(s.connect(700, 5000));
    let (mut h, _) = listener.accept().unwrap();
    h.set_read_timeout(Some(T)).unwrap();
    let key = (700, 5000);
    assert_eq!(s.conn(key).peer_buf_alloc, limits().buf_alloc);
    h.write_all(b"hello guest").unwrap();
    s.pump_until("data", |s| s.conn(key).rx.len() == 11);
    assert_eq!(s.conn(key).rx, b"hello guest");
    // Data, then SHUTDOWN both: the host reads everything, then end of file; the guest
    // gets the RST it waits for.
    let data = pattern(1, 0, 100_000);
    assert_eq!(s.write(key, &data, 32 << 10), data.len());
    s.send_ctl(key, op::SHUTDOWN, shutdown::BOTH);
    let mut got = Vec::new();
    h.read_to_end(&mut got).unwrap();
    assert_eq!(fnv(&got), fnv(&data));
    s.pump_until("RST", |s| s.conn(key).rst);
    let c = s.g.counts();
    assert_eq!(
        (
            c.connections_opened,
            c.connections_closed,
            c.connections_reset
        ),
        (1, 1, 0)
    );
}

#[test]
fn a_guest_connection_to_a_port_without_listener_is_reset() {
    let mut s = Stack::start();
    assert!(!s.connect(701, 5001));
    let rst = *s.log.last().unwrap();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 5001, 701));
    // A listener that is gone (stale socket file): refused too.
    let stale = sock::port_path(&s.g.uds(), 5002);
    drop(UnixListener::bind(&stale).unwrap());
    assert!(!s.connect(702, 5002));
    let c = s.g.counts();
    assert_eq!((c.connections_refused, c.connections_opened), (2, 0));
}

#[test]
fn guest_half_close_shuts_the_host_write_side() {
    let mut s = Stack::start();
    let listener = UnixListener::bind(sock::port_path(&s.g.uds(), 5003)).unwrap();
    let key = (703, 5003);
    assert!(s.connect(key.0, key.1));
    let (mut h, _) = listener.accept().unwrap();
    h.set_read_timeout(Some(T)).unwrap();
    s.write(key, b"request", 4096);
    s.send_ctl(key, op::SHUTDOWN, shutdown::SEND);
    let mut got = Vec::new();
    h.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"request", "then end of file");
    // The guest still receives: the host answers, then closes.
    h.write_all(b"response").unwrap();
    drop(h);
    s.pump_until("the answer and SHUTDOWN", |s| {
        s.conn(key).shut == shutdown::BOTH
    });
    assert_eq!(s.conn(key).rx, b"response");
    s.send_ctl(key, op::RST, 0);
    s.g.wait_counts("closed", |c| c.connections_closed == 1);
    assert_eq!(s.g.counts().connections_reset, 0);
}

// ---- credit ----

#[test]
fn the_device_keeps_to_the_guests_credit() {
    let mut s = Stack::start();
    s.buf_alloc = 3000;
    s.auto_credit = false;
    let listener = UnixListener::bind(sock::port_path(&s.g.uds(), 5004)).unwrap();
    let key = (704, 5004);
    assert!(s.connect(key.0, key.1));
    let (mut h, _) = listener.accept().unwrap();
    let data = pattern(4, 0, 10_000);
    h.write_all(&data).unwrap();
    s.pump_until("the first 3000 bytes", |s| s.conn(key).rx.len() == 3000);
    // No more without credit (Stack::handle asserts the bound on every packet).
    s.pump_for(Duration::from_millis(100));
    assert_eq!(s.conn(key).rx.len(), 3000);
    // Consume 1000: exactly 1000 more.
    s.conns.get_mut(&key).unwrap().fwd_cnt = 1000;
    s.send_ctl(key, op::CREDIT_UPDATE, 0);
    s.pump_until("1000 more", |s| s.conn(key).rx.len() == 4000);
    s.pump_for(Duration::from_millis(50));
    assert_eq!(s.conn(key).rx.len(), 4000);
    // A larger buffer opens the window wider; the rest arrives.
    s.buf_alloc = 1 << 20;
    s.send_ctl(key, op::CREDIT_UPDATE, 0);
    s.pump_until("the rest", |s| s.conn(key).rx.len() == data.len());
    assert_eq!(s.conn(key).rx, data);
    // CREDIT_REQUEST is answered with the device's credit.
    s.log.clear();
    s.send_ctl(key, op::CREDIT_REQUEST, 0);
    s.pump_until("CREDIT_UPDATE", |s| {
        s.log.iter().any(|h| h.op == op::CREDIT_UPDATE)
    });
    let up = *s.log.iter().find(|h| h.op == op::CREDIT_UPDATE).unwrap();
    assert_eq!((up.buf_alloc, up.fwd_cnt), (limits().buf_alloc, 0));
}

#[test]
fn the_device_reports_consumed_credit_and_a_flooding_guest_is_reset() {
    let lim = VsockLimits {
        buf_alloc: 16 << 10,
        ..limits()
    };
    let mut s = Stack::new(Guest::start(lim, QUEUE_SIZE));
    let listener = UnixListener::bind(sock::port_path(&s.g.uds(), 5005)).unwrap();
    let key = (705, 5005);
    assert!(s.connect(key.0, key.1));
    let (mut h, _) = listener.accept().unwrap();
    h.set_read_timeout(Some(T)).unwrap();
    // A well-behaved guest: 200 KiB through a 16 KiB window, credit updates keep it going.
    let data = pattern(5, 0, 200 << 10);
    let mut sent = 0;
    let reader = std::thread::spawn(move || {
        let got = read_exactly(&mut h, 200 << 10);
        (got, h)
    });
    while sent < data.len() {
        sent += s.write(key, &data[sent..], 8192);
        s.step(Duration::from_millis(5));
    }
    let (got, h) = reader.join().unwrap();
    assert_eq!(fnv(&got), fnv(&data));
    assert!(
        s.log.iter().filter(|h| h.op == op::CREDIT_UPDATE).count() >= 10,
        "credit updates as the host read"
    );
    // A guest ignoring credit, towards a host that does not read: the host socket fills,
    // then the device's 16 KiB, then the connection is reset (not buffered further).
    let mut flood = hdr(key.0, key.1, op::RW);
    flood.buf_alloc = s.buf_alloc;
    let chunk = vec![0x5Au8; 8192];
    let mut flooded = 0usize;
    while !s.conn(key).rst {
        assert!(flooded < 64 << 20, "never reset");
        s.g.send(flood, &chunk);
        flooded += chunk.len();
        while s.step(Duration::ZERO) {}
    }
    assert!(
        flooded > 16 << 10,
        "what the host socket took was not counted against credit"
    );
    let c = s.g.counts();
    assert_eq!((c.connections_reset, c.connections_active), (1, 0));
    // The host sees the end of the stream after what the socket took.
    let mut h = h;
    assert!(reads_eof(&mut h));
    // A single packet larger than the whole window is refused outright.
    assert!(s.connect(706, 5005));
    let (_h2, _) = listener.accept().unwrap();
    let mut big = hdr(706, 5005, op::RW);
    big.buf_alloc = s.buf_alloc;
    s.g.send(big, &vec![0u8; 32 << 10]);
    s.pump_until("RST", |s| s.conn((706, 5005)).rst);
}

// ---- many connections, a large transfer ----

#[test]
fn fifty_connections_at_once_move_checksummed_data_both_ways() {
    const N: u32 = 25;
    const LEN: usize = 64 << 10;
    let mut s = Stack::start();
    let uds = s.g.uds();
    // Host-initiated: the host sends, the guest echoes.
    let mut hosts: Vec<JoinHandle<()>> = Vec::new();
    for i in 0..N {
        s.listening.insert(6000 + i);
        let uds = uds.clone();
        hosts.push(std::thread::spawn(move || {
            let mut h = host_connect(&uds, 6000 + i);
            let ok = read_line(&mut h);
            assert!(ok.starts_with("OK "), "{ok}");
            let data = pattern(i, 0, LEN);
            h.write_all(&data).unwrap();
            let back = read_exactly(&mut h, LEN);
            assert_eq!(fnv(&back), fnv(&data), "connection {i}");
        }));
    }
    // Guest-initiated: the guest sends, the host echoes.
    let listener = UnixListener::bind(sock::port_path(&uds, 5000)).unwrap();
    let echo = std::thread::spawn(move || {
        let mut echoes = Vec::new();
        for _ in 0..N {
            let (mut h, _) = listener.accept().unwrap();
            echoes.push(std::thread::spawn(move || {
                h.set_read_timeout(Some(T)).unwrap();
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    let n = h.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    h.write_all(&buf[..n]).unwrap();
                }
            }));
        }
        for e in echoes {
            e.join().unwrap();
        }
    });
    let guest_keys: Vec<(u32, u32)> = (0..N).map(|i| (7000 + i, 5000)).collect();
    for &k in &guest_keys {
        assert!(s.connect(k.0, k.1));
    }
    let mut sent = vec![0usize; N as usize];
    let end = Instant::now() + T;
    loop {
        assert!(Instant::now() < end, "timed out: {:?}", s.g.counts());
        while s.step(Duration::ZERO) {}
        let mut progress = false;
        // Echo what the hosts sent.
        let keys: Vec<_> = s.conns.keys().copied().collect();
        for k in keys {
            if k.1 == 5000 {
                continue;
            }
            let c = s.conn(k);
            if c.echoed < c.rx.len() {
                let pending = c.rx[c.echoed..].to_vec();
                let n = s.write(k, &pending, 32 << 10);
                s.conns.get_mut(&k).unwrap().echoed += n;
                progress |= n > 0;
            }
        }
        // Send our own streams, then half-close.
        for (i, &k) in guest_keys.iter().enumerate() {
            if sent[i] < LEN {
                let data = pattern(100 + i as u32, sent[i], LEN - sent[i]);
                let n = s.write(k, &data, 32 << 10);
                sent[i] += n;
                progress |= n > 0;
                if sent[i] == LEN {
                    s.send_ctl(k, op::SHUTDOWN, shutdown::SEND);
                }
            }
        }
        let echoed_back = guest_keys.iter().all(|k| s.conn(*k).rx.len() >= LEN);
        if echoed_back && hosts.iter().all(|h| h.is_finished()) {
            break;
        }
        if !progress {
            s.step(Duration::from_millis(5));
        }
    }
    for h in hosts {
        h.join().unwrap();
    }
    for (i, k) in guest_keys.iter().enumerate() {
        let want = pattern(100 + i as u32, 0, LEN);
        assert_eq!(fnv(&s.conn(*k).rx), fnv(&want), "guest connection {i}");
    }
    // The echo servers see end of file and close: every guest-initiated connection
    // ends with a SHUTDOWN to the guest.
    s.pump_until("the echo servers' close", |s| {
        guest_keys.iter().all(|k| s.conn(*k).shut == shutdown::BOTH)
    });
    echo.join().unwrap();
    // The hosts closed too: the guest answers every SHUTDOWN with RST.
    s.pump_until("the hosts' close", |s| {
        s.conns.values().all(|c| c.shut == shutdown::BOTH)
    });
    let keys: Vec<_> = s.conns.keys().copied().collect();
    for k in keys {
        s.send_ctl(k, op::RST, 0);
    }
    s.g.wait_counts("all closed", |c| c.connections_closed == 2 * u64::from(N));
    let c = s.g.counts();
    assert_eq!(c.connections_opened, 2 * u64::from(N));
    assert_eq!((c.connections_reset, c.connections_active), (0, 0), "{c:?}");
    assert_eq!(c.rx_bytes, 2 * u64::from(N) * LEN as u64);
    assert_eq!(c.tx_bytes, 2 * u64::from(N) * LEN as u64);
}

#[test]
fn thirty_two_mib_reach_the_guest_intact_through_the_credit_window() {
    const LEN: usize = 32 << 20;
    let mut s = Stack::start();
    s.listening.insert(2000);
    let uds = s.g.uds();
    let host = std::thread::spawn(move || {
        let mut h = host_connect(&uds, 2000);
        assert!(read_line(&mut h).starts_with("OK "));
        let mut off = 0;
        while off < LEN {
            let n = (1 << 20).min(LEN - off);
            h.write_all(&pattern(32, off, n)).unwrap();
            off += n;
        }
        h
    });
    s.pump_until("the connection", |s| !s.conns.is_empty());
    let key = *s.conns.keys().next().unwrap();
    s.pump_until("32 MiB", |s| s.conn(key).rx.len() >= LEN);
    let h = host.join().unwrap();
    assert_eq!(s.conn(key).rx.len(), LEN);
    assert_eq!(fnv(&s.conn(key).rx), fnv(&pattern(32, 0, LEN)));
    drop(h);
    s.pump_until("SHUTDOWN", |s| s.conn(key).shut == shutdown::BOTH);
    assert_eq!(s.g.counts().rx_bytes, LEN as u64);
}

// ---- resets ----

#[test]
fn resets_both_ways() {
    let mut s = Stack::start();
    s.listening.insert(3000);
    s.listening.insert(3001);
    // The guest resets: the host socket closes.
    let mut a = host_connect(&s.g.uds(), 3000);
    s.pump_until("connection a", |s| !s.conns.is_empty());
    assert!(read_line(&mut a).starts_with("OK "));
    let ka = *s.conns.keys().next().unwrap();
    s.send_ctl(ka, op::RST, 0);
    assert!(reads_eof(&mut a));
    s.g.wait_counts("a reset", |c| c.connections_reset == 1);
    // The host closes without reading what the guest sent (a reset on a Unix socket):
    // the guest gets RST.
    let mut b = host_connect(&s.g.uds(), 3001);
    s.pump_until("connection b", |s| s.conns.len() == 2);
    assert!(read_line(&mut b).starts_with("OK "));
    let kb = *s.conns.keys().find(|k| **k != ka).unwrap();
    s.write(kb, b"never read", 4096);
    let mut pfd = libc::pollfd {
        fd: b.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, count 1.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 30_000) }, 1);
    drop(b);
    s.pump_until("RST for b", |s| s.conn(kb).rst);
    assert_eq!(s.conn(kb).shut, 0, "abortive, not a SHUTDOWN");
    s.g.wait_counts("b reset", |c| c.connections_reset == 2);
    assert_eq!(s.g.counts().connections_active, 0);
}

// ---- hostile guests ----

#[test]
fn packets_for_unknown_connections_get_rst_except_rst() {
    let mut g = Guest::start(limits(), QUEUE_SIZE);
    for o in [
        op::RW,
        op::RESPONSE,
        op::SHUTDOWN,
        op::CREDIT_UPDATE,
        op::CREDIT_REQUEST,
        42,
    ] {
        g.send(hdr(800, 9999, o), if o == op::RW { b"data" } else { &[] });
        let (h, _) = g.expect();
        assert_eq!(
            (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port, h.type_),
            (op::RST, HOST_CID, CID, 9999, 800, TYPE_STREAM),
            "op {o}"
        );
    }
    g.send(hdr(800, 9999, op::RST), &[]);
    assert!(
        g.recv(Duration::from_millis(100)).is_none(),
        "no reply to RST"
    );
    assert_eq!(g.counts().dropped_packets, 6);
}

#[test]
fn packets_with_wrong_cids_are_dropped_and_other_types_refused() {
    let mut g = Guest::start(limits(), QUEUE_SIZE);
    let _l = UnixListener::bind(sock::port_path(&g.uds(), 5000)).unwrap();
    let mut h = hdr(800, 5000, op::REQUEST);
    h.src_cid = 99;
    g.send(h, &[]);
    let mut h = hdr(800, 5000, op::REQUEST);
    h.dst_cid = 5;
    g.send(h, &[]);
    let mut h = hdr(800, 5000, op::REQUEST);
    h.src_cid = CID | 1 << 32;
    g.send(h, &[]);
    assert!(g.recv(Duration::from_millis(100)).is_none());
    // SEQPACKET is not offered: RST, of that type.
    let mut h = hdr(801, 5000, op::REQUEST);
    h.type_ = 2;
    g.send(h, &[]);
    let (r, _) = g.expect();
    assert_eq!((r.op, r.type_, r.dst_port), (op::RST, 2, 801));
    let c = g.counts();
    assert_eq!((c.dropped_packets, c.connections_opened), (4, 0));
}

#[test]
fn malformed_packets_are_dropped_and_bad_lengths_reset_their_connection() {
    let mut s = Stack::start();
    let listener = UnixListener::bind(sock::port_path(&s.g.uds(), 5000)).unwrap();
    // Short header.
    s.g.send_raw(&hdr(1, 5000, op::REQUEST).to_bytes()[..20], &[]);
    // A device-writable descriptor in tx.
    let base = TX_AREA;
    s.g.mem
        .write_slice(&hdr(2, 5000, op::REQUEST).to_bytes(), GuestAddress(base))
        .unwrap();
    s.g.tx
        .set_desc(&s.g.mem, 40, base, HDR_SIZE as u32, WRITE, 0);
    s.g.publish_tx(40);
    // Outside guest memory.
    s.g.tx
        .set_desc(&s.g.mem, 41, MEM_SIZE as u64 - 10, HDR_SIZE as u32, 0, 0);
    s.g.publish_tx(41);
    // A length near u32::MAX that wraps.
    s.g.tx.set_desc(&s.g.mem, 42, u64::MAX - 20, 64, 0, 0);
    s.g.publish_tx(42);
    assert!(
        s.g.recv(Duration::from_millis(100)).is_none(),
        "all dropped"
    );
    assert_eq!(s.g.counts().dropped_packets, 4);
    // On a connection: a payload over the limit, and one longer than its chain.
    for (gport, len, have) in [
        (10u32, MAX_PKT_LEN as u32 + 1, MAX_PKT_LEN + 1),
        (11, 5000, 100),
    ] {
        assert!(s.connect(gport, 5000));
        let (_h, _) = listener.accept().unwrap();
        let mut h = hdr(gport, 5000, op::RW);
        h.len = len;
        h.buf_alloc = s.buf_alloc;
        s.g.send_raw(&h.to_bytes(), &vec![7u8; have]);
        s.pump_until("RST", |s| s.conn((gport, 5000)).rst);
    }
    let c = s.g.counts();
    assert_eq!((c.dropped_packets, c.connections_reset), (6, 2));
    // Still serving.
    assert!(s.connect(12, 5000));
}

#[test]
fn unusable_rx_buffers_are_skipped() {
    let mut g = Guest::start(limits(), 0);
    // A readable buffer, one outside memory, one too small for a header, then a good one.
    g.rx.set_desc(&g.mem, 0, RX_BUFS, RX_LEN, 0, 0);
    g.rx.set_desc(&g.mem, 1, MEM_SIZE as u64 - 100, RX_LEN, WRITE, 0);
    g.rx.set_desc(&g.mem, 2, RX_BUFS + RX_SLOT * 2, HDR_SIZE as u32, WRITE, 0);
    for i in 0..3 {
        g.rx.publish(&g.mem, i);
    }
    g.give_rx(3);
    g.refill = false;
    g.rx_kick.write(1).unwrap();
    g.send(hdr(900, 9999, op::RW), b"x");
    let (h, _) = g.expect();
    assert_eq!(h.op, op::RST);
    assert_eq!(g.rx_empty, 3);
    assert_eq!(
        g.rx.used_elem(&g.mem, 3).0,
        3,
        "the good buffer held the RST"
    );
    let before = [0u8; 16];
    let mut after = [0u8; 16];
    g.mem.read_slice(&mut after, GuestAddress(RX_BUFS)).unwrap();
    assert_eq!(before, after, "nothing written into the readable buffer");
}

#[test]
fn the_connection_limit_refuses_more_with_rst() {
    let lim = VsockLimits {
        max_connections: 3,
        ..limits()
    };
    let mut s = Stack::new(Guest::start(lim, QUEUE_SIZE));
    let listener = UnixListener::bind(sock::port_path(&s.g.uds(), 5000)).unwrap();
    let mut held = Vec::new();
    for p in 0..3 {
        assert!(s.connect(100 + p, 5000));
        held.push(listener.accept().unwrap().0);
    }
    assert!(!s.connect(103, 5000), "a fourth is refused");
    let mut h = UnixStream::connect(s.g.uds()).unwrap();
    h.set_read_timeout(Some(T)).unwrap();
    assert!(
        reads_eof(&mut h),
        "a host connection beyond the limit is closed"
    );
    // One ends: room again.
    s.send_ctl((100, 5000), op::RST, 0);
    s.g.wait_counts("closed", |c| c.connections_closed == 1);
    assert!(s.connect(104, 5000));
    assert_eq!(s.g.counts().connections_refused, 2);
}

#[test]
fn hundreds_of_connections() {
    let mut s = Stack::start();
    let listener = UnixListener::bind(sock::port_path(&s.g.uds(), 5000)).unwrap();
    let mut hosts = Vec::new();
    for p in 0..300 {
        assert!(s.connect(10_000 + p, 5000), "connection {p}");
        hosts.push(listener.accept().unwrap().0);
    }
    for (p, h) in hosts.iter_mut().enumerate() {
        h.write_all(format!("#{p}").as_bytes()).unwrap();
    }
    s.pump_until("a message on each", |s| {
        (0..300).all(|p| s.conn((10_000 + p, 5000)).rx == format!("#{p}").as_bytes())
    });
    assert_eq!(s.g.counts().connections_active, 300);
}

// ---- waiting without polling ----

#[test]
fn without_rx_buffers_host_data_waits_unpolled_until_buffers_arrive() {
    let mut s = Stack::new(Guest::start(limits(), 8));
    s.g.refill = false;
    s.buf_alloc = 4 << 20;
    let listener = UnixListener::bind(sock::port_path(&s.g.uds(), 5000)).unwrap();
    let key = (600, 5000);
    assert!(s.connect(key.0, key.1));
    let (mut h, _) = listener.accept().unwrap();
    const LEN: usize = 1 << 20;
    let writer = std::thread::spawn(move || {
        h.write_all(&pattern(6, 0, LEN)).unwrap();
        h
    });
    // Seven buffers' worth arrives, then the queue is empty.
    s.pump_until("the buffers used", |s| s.g.rx_seen == 8);
    let received = s.conn(key).rx.len();
    assert!(received > 0 && received <= 7 * 4096, "{received}");
    let (w0, n0) = (
        s.g.counts().socket_wakeups,
        s.g.dev.worker_stats().notifications,
    );
    std::thread::sleep(Duration::from_millis(300));
    let (w1, n1) = (
        s.g.counts().socket_wakeups,
        s.g.dev.worker_stats().notifications,
    );
    assert!(
        w1 - w0 <= 2,
        "the device polls a socket it cannot serve: {} wakeups",
        w1 - w0
    );
    assert_eq!(n1, n0, "no queue activity");
    assert_eq!(s.conn(key).rx.len(), received);
    // Buffers arrive: everything follows.
    s.g.refill = true;
    for i in 0..QUEUE_SIZE {
        s.g.give_rx(i);
    }
    s.g.rx_kick.write(1).unwrap();
    s.pump_until("all of it", |s| s.conn(key).rx.len() == LEN);
    assert_eq!(fnv(&s.conn(key).rx), fnv(&pattern(6, 0, LEN)));
    drop(writer.join().unwrap());
}

#[test]
fn an_idle_device_does_not_wake_up() {
    let s = Stack::start();
    let w0 = s.g.counts().socket_wakeups;
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.g.counts().socket_wakeups, w0);
}

// ---- transport reset ----

#[test]
fn a_transport_reset_drops_every_connection_and_tells_the_guest() {
    let mut s = Stack::start();
    s.listening.insert(4000);
    let mut h = host_connect(&s.g.uds(), 4000);
    s.pump_until("connection", |s| !s.conns.is_empty());
    assert!(read_line(&mut h).starts_with("OK "));
    s.g.ev.set_desc(&s.g.mem, 0, EV_BUFS, 16, WRITE, 0);
    s.g.ev.publish(&s.g.mem, 0);
    s.g.ev_kick.write(1).unwrap();
    s.g.dev.send_transport_reset().unwrap();
    let end = Instant::now() + T;
    while s.g.ev.used_idx(&s.g.mem) != 1 {
        assert!(Instant::now() < end, "no event");
        wait_evt(&s.g.irq, 10);
    }
    assert_eq!(s.g.ev.used_elem(&s.g.mem, 0), (0, 4));
    let id: u32 = s.g.mem.read_obj(GuestAddress(EV_BUFS)).unwrap();
    assert_eq!(id, EVENT_TRANSPORT_RESET);
    assert!(reads_eof(&mut h));
    assert_eq!(s.g.counts().connections_active, 0);
    assert!(
        s.g.recv(Duration::from_millis(50)).is_none(),
        "no RST: the guest resets itself"
    );
    // The device keeps serving.
    s.conns.clear();
    s.listening.insert(4001);
    let mut h = host_connect(&s.g.uds(), 4001);
    s.pump_until("a new connection", |s| !s.conns.is_empty());
    assert!(read_line(&mut h).starts_with("OK "));
}

#[test]
fn a_reset_device_can_be_activated_again() {
    let mut s = Stack::start();
    s.listening.insert(4100);
    let mut h = host_connect(&s.g.uds(), 4100);
    s.pump_until("connection", |s| !s.conns.is_empty());
    assert!(read_line(&mut h).starts_with("OK "));
    s.g.dev.reset();
    assert!(reads_eof(&mut h), "a device reset closes the host sockets");
    let Guest { dev, dir, .. } = s.g;
    let mut s = Stack::new(Guest::activate(dev, dir, QUEUE_SIZE, false));
    s.listening.insert(4101);
    let mut h = host_connect(&s.g.uds(), 4101);
    s.pump_until("connection", |s| !s.conns.is_empty());
    assert!(read_line(&mut h).starts_with("OK "));
}

#[test]
fn pausing_holds_traffic_until_resumed() {
    let mut s = Stack::start();
    let listener = UnixListener::bind(sock::port_path(&s.g.uds(), 5000)).unwrap();
    let key = (650, 5000);
    assert!(s.connect(key.0, key.1));
    let (mut h, _) = listener.accept().unwrap();
    s.g.dev.pause().unwrap();
    h.write_all(b"while paused").unwrap();
    s.pump_for(Duration::from_millis(100));
    assert!(s.conn(key).rx.is_empty());
    s.g.dev.resume();
    s.pump_until("the data", |s| s.conn(key).rx == b"while paused");
}

#[test]
fn with_event_idx_data_flows_both_ways() {
    let dir = TempDir::new();
    let dev = Vsock::new("vsock-test", CID, dir.path("v.sock")).unwrap();
    let mut s = Stack::new(Guest::activate(dev, dir, QUEUE_SIZE, true));
    // Host to guest, 4 MiB.
    s.listening.insert(2000);
    let uds = s.g.uds();
    const LEN: usize = 4 << 20;
    let host = std::thread::spawn(move || {
        let mut h = host_connect(&uds, 2000);
        assert!(read_line(&mut h).starts_with("OK "));
        h.write_all(&pattern(8, 0, LEN)).unwrap();
        h
    });
    s.pump_until("the connection", |s| !s.conns.is_empty());
    let key = *s.conns.keys().next().unwrap();
    s.pump_until("4 MiB", |s| s.conn(key).rx.len() >= LEN);
    assert_eq!(fnv(&s.conn(key).rx), fnv(&pattern(8, 0, LEN)));
    // Guest to host, 1 MiB.
    let mut h = host.join().unwrap();
    let data = pattern(9, 0, 1 << 20);
    let reader = std::thread::spawn(move || read_exactly(&mut h, 1 << 20));
    let mut sent = 0;
    while sent < data.len() {
        sent += s.write(key, &data[sent..], 32 << 10);
        s.step(Duration::from_millis(2));
    }
    assert_eq!(fnv(&reader.join().unwrap()), fnv(&data));
    let w = s.g.dev.worker_stats();
    assert!(w.interrupts > 0 && w.notifications > 0, "{w:?}");
}

#[test]
fn a_connection_that_always_has_data_does_not_starve_the_others() {
    let mut s = Stack::new(Guest::start(limits(), 8));
    s.g.refill = false;
    s.buf_alloc = 64 << 20;
    let listener = UnixListener::bind(sock::port_path(&s.g.uds(), 5000)).unwrap();
    let (ka, kb) = ((610, 5000), (611, 5000));
    assert!(s.connect(ka.0, ka.1));
    let (mut a, _) = listener.accept().unwrap();
    assert!(s.connect(kb.0, kb.1));
    let (mut b, _) = listener.accept().unwrap();
    // A's socket full, the guest out of buffers.
    a.set_nonblocking(true).unwrap();
    let chunk = vec![0xAAu8; 4096];
    loop {
        match a.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    s.pump_until("the buffers used", |s| s.g.rx_seen == 8);
    assert!(s.conn(ka).rx.len() < 200 << 10, "A has more waiting");
    // B has a little; buffers come back: B's turn comes within a round, not after A's pile.
    b.write_all(b"B!").unwrap();
    let a_before = s.conn(ka).rx.len();
    s.g.refill = true;
    for i in 0..QUEUE_SIZE {
        s.g.give_rx(i);
    }
    s.g.rx_kick.write(1).unwrap();
    s.pump_until("B's bytes", |s| s.conn(kb).rx == b"B!");
    let a_during = s.conn(ka).rx.len() - a_before;
    assert!(
        a_during <= 2 * 4096,
        "A took {a_during} bytes before B's turn"
    );
}
