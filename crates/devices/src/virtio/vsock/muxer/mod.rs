//! The vsock worker's handler: every connection, the listener, the timers, the three queues.
//!
//! It waits on nothing it cannot act on. The worker's epoll holds one extra descriptor, the
//! muxer's *control* epoll, which holds:
//!
//! - the listener (host processes connecting), a timerfd (the earliest deadline), an eventfd
//!   (transport-reset requests);
//! - each host socket still sending its `CONNECT` line, for reading;
//! - each connection's socket for writing, only while guest bytes wait for it;
//! - the *data* epoll, only while the guest has rx buffers (the device has not found the rx
//!   queue empty since the guest last notified it).
//!
//! The data epoll holds each connection's socket for reading, only while the connection
//! may send the guest data (established, not shut down that way, guest credit left). With
//! no rx buffers the data epoll is out of the control epoll: host data waits in the socket
//! buffers, unpolled, until the guest notifies the rx queue.
//!
//! The tx queue is always drained at once: guest data goes straight to the host socket, or
//! into the connection's buffer, whose size is the credit the device advertised. Packets
//! to the guest take rx buffers in this order: RSTs owed, other control packets owed (per
//! connection, round robin), data from readable sockets (round robin, one packet each).

mod host;
mod rx;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::QueueT;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::conn::{Conn, ConnKey, Origin, Phase, Verdict};
use super::packet::{self, op, Header, RxBuf, HOST_CID, MAX_PKT_LEN, TYPE_STREAM};
use super::sock;
use super::{Shared, VsockLimits, VsockStats, FIRST_LOCAL_PORT, RX_QUEUE, TX_QUEUE};
use crate::virtio::worker::{Chain, QueueHandler, WorkerCtx};
use crate::virtio::GuestMemoryMmap;

/// Control-epoll tokens; connection and greeting ids start at [`FIRST_ID`].
const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const TOKEN_DATA: u64 = 2;
const TOKEN_KICK: u64 = 3;
const FIRST_ID: u64 = 16;
/// The deadline id of "accept again" after the listener failed (out of descriptors, say).
const LISTENER_RETRY: u64 = TOKEN_LISTENER;
/// How long the listener rests after an accept error other than "nothing to accept".
const LISTENER_BACKOFF: Duration = Duration::from_millis(100);

/// Most RSTs waiting for rx buffers; beyond it replies to a guest that gives none are dropped.
const MAX_OWED_RSTS: usize = 1024;
/// Epoll events taken per wait.
const EVENTS: usize = 64;
/// Data-epoll rounds per pass over the rx queue. A round serves each ready socket (up to
/// [`EVENTS`]) one packet, which keeps connections fair; the bound keeps the tx queue from
/// waiting behind a long run of host data (the worker comes back at once, the data epoll
/// still being readable).
const MAX_DATA_ROUNDS: usize = 64;

/// An RST the device owes the guest.
#[derive(Debug, Clone, Copy)]
struct Rst {
    key: ConnKey,
    type_: u16,
}

/// A connection and its socket.
struct Entry {
    conn: Conn,
    stream: UnixStream,
    /// Registered in the data epoll (for reading).
    in_data: bool,
    /// Registered in the control epoll (for writing).
    in_ctl: bool,
    /// In `owed` (the control-packet round robin).
    queued: bool,
    /// The deadline last put on the heap.
    deadline_set: Option<Instant>,
}

/// A host socket that has not sent its `CONNECT` line yet.
struct Greeting {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Abortively: RST to the guest.
    Reset,
    /// In order, after the guest closed both ways: RST to the guest (which it waits for).
    Close,
    /// The guest sent RST.
    Forgotten { orderly: bool },
    /// Everything is dropped at once (transport reset, device stop): nothing to the guest.
    Dropped,
}

/// What the device hands its muxer.
pub struct Setup {
    pub name: String,
    pub guest_cid: u64,
    pub uds_path: PathBuf,
    pub limits: VsockLimits,
    pub listener: UnixListener,
    pub stats: Arc<VsockStats>,
    pub shared: Arc<Shared>,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// The vsock worker's [`QueueHandler`].
pub struct Muxer {
    name: String,
    cid: u64,
    uds_path: PathBuf,
    limits: VsockLimits,
    listener: UnixListener,
    listener_armed: bool,
    ctl: Epoll,
    data: Epoll,
    data_attached: bool,
    timer: TimerFd,
    timer_at: Option<Instant>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    shared: Arc<Shared>,
    stats: Arc<VsockStats>,
    conns: HashMap<u64, Entry>,
    by_key: HashMap<ConnKey, u64>,
    greetings: HashMap<u64, Greeting>,
    next_id: u64,
    /// Host-side ports of host-initiated connections.
    ports_in_use: HashSet<u32>,
    next_port: u32,
    /// Connections owing control packets, in turn.
    owed: VecDeque<u64>,
    rsts: VecDeque<Rst>,
    /// Connections the data epoll reported readable, not served yet.
    ready: VecDeque<u64>,
    /// An rx chain popped and not used yet (always the last one popped).
    held: Option<RxBuf>,
    /// The rx queue was found empty; waiting for the guest's notification.
    rx_starved: bool,
    rx_used: bool,
    /// A transport-reset event waits for an event-queue buffer.
    event_owed: bool,
    /// A queue is unusable (the device needs a reset): serve nothing.
    broken: bool,
    bounce: Vec<u8>,
    events: Vec<EpollEvent>,
}

impl Muxer {
    /// The handler, with its epolls and timer set up (nothing runs until the worker starts).
    pub fn new(s: Setup) -> io::Result<Muxer> {
        let ctl = Epoll::new()?;
        let data = Epoll::new()?;
        let timer = TimerFd::new()?;
        // A non-blocking timer: reading an expiry that a re-arm cancelled must not block.
        // SAFETY: fcntl on a descriptor we own, with an integer argument.
        let rc = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let watch = |fd: RawFd, token: u64| {
            ctl.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        watch(s.listener.as_raw_fd(), TOKEN_LISTENER)?;
        watch(timer.as_raw_fd(), TOKEN_TIMER)?;
        watch(data.as_raw_fd(), TOKEN_DATA)?;
        watch(s.shared.kick.as_raw_fd(), TOKEN_KICK)?;
        Ok(Muxer {
            name: s.name,
            cid: s.guest_cid,
            uds_path: s.uds_path,
            limits: s.limits,
            listener: s.listener,
            listener_armed: true,
            ctl,
            data,
            data_attached: true,
            timer,
            timer_at: None,
            deadlines: BinaryHeap::new(),
            shared: s.shared,
            stats: s.stats,
            conns: HashMap::new(),
            by_key: HashMap::new(),
            greetings: HashMap::new(),
            next_id: FIRST_ID,
            ports_in_use: HashSet::new(),
            next_port: FIRST_LOCAL_PORT,
            owed: VecDeque::new(),
            rsts: VecDeque::new(),
            ready: VecDeque::new(),
            held: None,
            rx_starved: false,
            rx_used: false,
            event_owed: false,
            broken: false,
            bounce: vec![0; MAX_PKT_LEN],
            events: vec![EpollEvent::default(); EVENTS],
        })
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn occupancy(&self) -> usize {
        self.conns.len() + self.greetings.len()
    }

    fn set_active_gauge(&self) {
        self.stats
            .connections_active
            .store(self.conns.len() as u64, Ordering::Relaxed);
    }

    // ---- guest packets (tx queue) ----

    fn process_tx(&mut self, ctx: &mut WorkerCtx) {
        ctx.drain_queue(TX_QUEUE, |mem, chain| {
            self.on_tx_chain(mem, chain);
            Some(0)
        });
    }

    fn on_tx_chain(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) {
        let mut payload = std::mem::take(&mut self.bounce);
        match packet::read_tx(mem, chain, &mut payload) {
            Ok(hdr) => self.on_packet(&hdr, &payload),
            Err(e) => {
                bump(&self.stats.dropped_packets);
                tracing::debug!("{}: dropping a tx packet: {e}", self.name);
                // A broken packet on a connection leaves a hole in its stream: reset it.
                if let Some(hdr) = e.header() {
                    if self.addressed_to_us(hdr) {
                        let key = ConnKey {
                            local_port: hdr.dst_port,
                            peer_port: hdr.src_port,
                        };
                        if let Some(&id) = self.by_key.get(&key) {
                            self.end(id, End::Reset);
                        }
                    }
                }
            }
        }
        payload.resize(MAX_PKT_LEN, 0);
        self.bounce = payload;
    }

    fn addressed_to_us(&self, hdr: &Header) -> bool {
        hdr.src_cid == self.cid && hdr.dst_cid == HOST_CID
    }

    fn on_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if !self.addressed_to_us(hdr) {
            bump(&self.stats.dropped_packets);
            tracing::debug!(
                "{}: dropping a packet from CID {} to CID {} (the guest is {}, the host {HOST_CID})",
                self.name,
                hdr.src_cid,
                hdr.dst_cid,
                self.cid
            );
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.type_ != TYPE_STREAM {
            bump(&self.stats.dropped_packets);
            if hdr.op != op::RST {
                self.owe_rst(key, hdr.type_);
            }
            return;
        }
        bump(&self.stats.tx_packets);
        if hdr.op == op::RW {
            add(&self.stats.tx_bytes, payload.len());
        }
        let Some(&id) = self.by_key.get(&key) else {
            match hdr.op {
                op::REQUEST => self.guest_connect(key, hdr),
                op::RST => {}
                other => {
                    bump(&self.stats.dropped_packets);
                    tracing::debug!(
                        "{}: op {other} from guest port {} to host port {}, no such \
                         connection; answering RST",
                        self.name,
                        key.peer_port,
                        key.local_port
                    );
                    self.owe_rst(key, TYPE_STREAM);
                }
            }
            return;
        };
        let close_by = Instant::now() + self.limits.close_timeout;
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        match e.conn.on_packet(hdr, close_by) {
            Verdict::Continue => {}
            Verdict::Data => {
                let Entry { conn, stream, .. } = e;
                if let Err(err) = conn.send_to_host(payload, |b| sock::send_nosignal(stream, b)) {
                    tracing::debug!(
                        "{}: host socket of port {} failed ({err}); resetting",
                        self.name,
                        key.local_port
                    );
                    return self.end(id, End::Reset);
                }
            }
            Verdict::Accepted => {
                tracing::debug!(
                    "{}: guest port {} accepted host port {}",
                    self.name,
                    key.peer_port,
                    key.local_port
                );
                // The OK line, at once.
                let Entry { conn, stream, .. } = e;
                if let Err(err) = conn.flush_to_host(|b| sock::send_nosignal(stream, b)) {
                    tracing::debug!("{}: cannot answer the host ({err}); resetting", self.name);
                    return self.end(id, End::Reset);
                }
            }
            Verdict::Forget { orderly } => {
                if e.conn.phase == Phase::Connecting {
                    tracing::debug!(
                        "{}: the guest refused host port {} -> guest port {} (RST)",
                        self.name,
                        key.local_port,
                        key.peer_port
                    );
                }
                return self.end(id, End::Forgotten { orderly });
            }
            Verdict::Reset(why) => {
                tracing::debug!(
                    "{}: resetting {}:{} ({why:?})",
                    self.name,
                    key.local_port,
                    key.peer_port
                );
                return self.end(id, End::Reset);
            }
        }
        self.sync(id);
    }

    /// A guest REQUEST for a connection the device does not know: connect to
    /// `<uds_path>_<port>`, RESPONSE if a listener is there, RST otherwise.
    fn guest_connect(&mut self, key: ConnKey, req: &Header) {
        if self.occupancy() >= self.limits.max_connections {
            tracing::debug!(
                "{}: refusing guest port {} -> {}: {} connections already",
                self.name,
                key.peer_port,
                key.local_port,
                self.limits.max_connections
            );
            bump(&self.stats.connections_refused);
            return self.owe_rst(key, TYPE_STREAM);
        }
        let path = sock::port_path(&self.uds_path, key.local_port);
        let stream = match sock::connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(
                    "{}: guest connection to port {} refused: {}: {e}",
                    self.name,
                    key.local_port,
                    path.display()
                );
                bump(&self.stats.connections_refused);
                return self.owe_rst(key, TYPE_STREAM);
            }
        };
        let conn = Conn::guest_initiated(key, self.limits.buf_alloc, req);
        let id = self.insert(conn, stream);
        self.sync(id);
    }

    fn insert(&mut self, conn: Conn, stream: UnixStream) -> u64 {
        let id = self.new_id();
        self.by_key.insert(conn.key, id);
        if conn.origin == Origin::Host {
            self.ports_in_use.insert(conn.key.local_port);
        }
        self.conns.insert(
            id,
            Entry {
                conn,
                stream,
                in_data: false,
                in_ctl: false,
                queued: false,
                deadline_set: None,
            },
        );
        bump(&self.stats.connections_opened);
        self.set_active_gauge();
        id
    }

    fn owe_rst(&mut self, key: ConnKey, type_: u16) {
        if self.rsts.len() >= MAX_OWED_RSTS {
            bump(&self.stats.dropped_packets);
            return;
        }
        self.rsts.push_back(Rst { key, type_ });
    }

    /// Brings connection `id`'s registrations, owed packets and deadline in line with its
    /// state, and closes it if it is done.
    fn sync(&mut self, id: u64) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if e.conn.take_host_write_shutdown() {
            let _ = e.stream.shutdown(std::net::Shutdown::Write);
        }
        if e.conn.close_due() {
            return self.end(id, End::Close);
        }
        let fd = e.stream.as_raw_fd();
        let mut failed = None;
        let want_read = e.conn.wants_read();
        if want_read != e.in_data {
            match set_interest(&self.data, fd, want_read, EventSet::IN, id) {
                Ok(()) => e.in_data = want_read,
                Err(err) => failed = Some(err),
            }
        }
        let want_write = e.conn.wants_write();
        if want_write != e.in_ctl && failed.is_none() {
            match set_interest(&self.ctl, fd, want_write, EventSet::OUT, id) {
                Ok(()) => e.in_ctl = want_write,
                Err(err) => failed = Some(err),
            }
        }
        if let Some(err) = failed {
            tracing::warn!("{}: cannot watch a connection's socket: {err}", self.name);
            return self.end(id, End::Reset);
        }
        if e.conn.has_owed() && !e.queued {
            e.queued = true;
            self.owed.push_back(id);
        }
        if let Some(d) = e.conn.deadline {
            if e.deadline_set != Some(d) {
                e.deadline_set = Some(d);
                self.push_deadline(d, id);
            }
        }
    }

    /// Ends connection `id`: its socket closed, the guest told as `how` says.
    fn end(&mut self, id: u64, how: End) {
        let Some(e) = self.conns.remove(&id) else {
            return;
        };
        let key = e.conn.key;
        self.by_key.remove(&key);
        if e.conn.origin == Origin::Host {
            self.ports_in_use.remove(&key.local_port);
        }
        let fd = e.stream.as_raw_fd();
        if e.in_data {
            let _ = set_interest(&self.data, fd, false, EventSet::IN, id);
        }
        if e.in_ctl {
            let _ = set_interest(&self.ctl, fd, false, EventSet::OUT, id);
        }
        match how {
            End::Reset => {
                bump(&self.stats.connections_reset);
                self.owe_rst(key, TYPE_STREAM);
            }
            End::Close => self.owe_rst(key, TYPE_STREAM),
            End::Forgotten { orderly } => {
                if !orderly {
                    bump(&self.stats.connections_reset);
                }
            }
            End::Dropped => bump(&self.stats.connections_reset),
        }
        bump(&self.stats.connections_closed);
        self.set_active_gauge();
        tracing::trace!("{}: connection {key:?} ended ({how:?})", self.name);
    }
    // ---- the rest ----

    fn queue_broken(&mut self, ctx: &mut WorkerCtx, index: usize, e: &str) {
        tracing::warn!(
            "{}: virtio queue {index} is unusable ({e}); the device needs a reset",
            self.name
        );
        ctx.interrupt.set_needs_reset();
        self.go_broken();
    }

    /// Stops serving: a queue is unusable. Only transport-reset kicks are still read.
    fn go_broken(&mut self) {
        if self.broken {
            return;
        }
        self.broken = true;
        self.drop_all();
        self.held = None;
        if self.listener_armed {
            let fd = self.listener.as_raw_fd();
            let _ = set_interest(&self.ctl, fd, false, EventSet::IN, TOKEN_LISTENER);
            self.listener_armed = false;
        }
        self.attach_data(false);
        self.deadlines.clear();
        self.arm_timer();
    }

    fn on_ctl_events(&mut self) {
        let n = match self.ctl.wait(0, &mut self.events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!("{}: control epoll failed: {e}", self.name);
                }
                return;
            }
        };
        let events: Vec<(u64, EventSet)> = self.events[..n]
            .iter()
            .map(|ev| (ev.data(), ev.event_set()))
            .collect();
        for (token, _set) in events {
            match token {
                TOKEN_LISTENER => {
                    if !self.broken {
                        self.accept_host();
                    }
                }
                TOKEN_TIMER => {
                    let _ = self.timer.wait();
                    self.timer_at = None;
                    self.expire();
                }
                // The rx pass that follows polls it.
                TOKEN_DATA => {}
                TOKEN_KICK => self.on_kick(),
                id if self.greetings.contains_key(&id) => self.on_greeting_readable(id),
                id => self.on_writable(id),
            }
        }
    }

    /// What every entry point ends with.
    fn finish(&mut self, ctx: &mut WorkerCtx) {
        if ctx.interrupt.needs_reset() && !self.broken {
            // The worker found a queue unusable (drain_queue / complete).
            self.go_broken();
        }
        self.process_rx(ctx);
        self.send_event(ctx);
        self.arm_timer();
    }
}

/// Adds (`on`) or removes `fd` in `epoll`, waiting for `events` under `token`.
fn set_interest(
    epoll: &Epoll,
    fd: RawFd,
    on: bool,
    events: EventSet,
    token: u64,
) -> io::Result<()> {
    if on {
        epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    } else {
        epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

impl QueueHandler for Muxer {
    fn thread_kind(&self) -> seccomp::ThreadKind {
        seccomp::ThreadKind::Vsock
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        vec![self.ctl.as_raw_fd()]
    }

    fn queue_notified(&mut self, index: usize, ctx: &mut WorkerCtx) {
        if self.broken {
            return;
        }
        match index {
            RX_QUEUE => {
                // Buffers arrived. Ask for no more notifications while there are some.
                self.rx_starved = false;
                if let Some(q) = ctx.queues.get_mut(RX_QUEUE) {
                    if let Err(e) = q.disable_notification(&ctx.mem) {
                        return self.queue_broken(ctx, RX_QUEUE, &e.to_string());
                    }
                }
            }
            TX_QUEUE => self.process_tx(ctx),
            _ => {}
        }
        self.finish(ctx);
    }

    fn extra_ready(&mut self, _which: usize, ctx: &mut WorkerCtx) {
        bump(&self.stats.socket_wakeups);
        self.on_ctl_events();
        if !self.broken {
            self.finish(ctx);
        }
    }

    fn quiesce(&mut self, ctx: &mut WorkerCtx) {
        // Give the popped rx buffer back (it is the last one popped), so that the queue as
        // saved holds no buffer the device took without using.
        if self.held.take().is_some() {
            if let Some(q) = ctx.queues.get_mut(RX_QUEUE) {
                q.set_next_avail(q.next_avail().wrapping_sub(1));
            }
        }
    }

    fn stop(&mut self, _ctx: &mut WorkerCtx) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.end(id, End::Dropped);
        }
    }
}
