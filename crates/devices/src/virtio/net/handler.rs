//! The worker of one queue pair: receive (backend -> guest), transmit (guest -> backend),
//! flow control, and for pair 0 the control queue.
//!
//! The worker waits on the pair's queue notifications and on extra descriptors: the
//! backend (readable: frames to receive; writable: a blocked send can go on), the pair's
//! kick eventfd (the pairs in use changed, or a batch was cut short), and the limiters'
//! descriptors. Nothing is polled: the backend is disarmed while the guest has given too
//! few receive buffers (re-armed when it notifies the receive queue), while the receive
//! limiter is blocked, and removed for good when it hangs up.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::backend::{push_segments, write_at, FrameBufs, Recv, Segment, MAX_IOVECS};
use super::{add, ctrl, lock_limiter, Shared, MAX_TX_LEN, NUM_BUFFERS_OFFSET, VNET_HDR_LEN};
use crate::virtio::worker::{Chain, ExtraFds, QueueHandler, WorkerCtx};
use crate::virtio::GuestMemoryMmap;

/// Local queue indices in the worker.
const RXQ: usize = 0;
const TXQ: usize = 1;
const CTRLQ: usize = 2;

/// Extra descriptor indices.
const FD_BACKEND: usize = 0;
const FD_KICK: usize = 1;

/// The shortest transmit chain sent: the header and an Ethernet header.
const MIN_TX_LEN: usize = VNET_HDR_LEN + super::ETH_HLEN;

/// Frames moved per direction before the worker looks at its other events.
const BATCH: usize = 256;

/// Consecutive unexpected receive errors after which the backend counts as failed.
const MAX_RX_ERRORS: u32 = 64;

/// Failures logged as warnings before the log goes quiet (then one in
/// [`LOG_EVERY`]): a guest can make sends fail at will and must not flood the host log.
const LOG_FIRST: u64 = 10;
const LOG_EVERY: u64 = 10_000;

/// What a pair's worker is made with.
pub(crate) struct Setup {
    pub(crate) pair: usize,
    pub(crate) shared: Arc<Shared>,
    /// The worker serves the control queue (its third queue).
    pub(crate) has_ctrl: bool,
    /// VIRTIO_NET_F_MQ was negotiated.
    pub(crate) mq: bool,
    pub(crate) mrg_rxbuf: bool,
    /// Header bytes the device writes on receive and drops on transmit (backends
    /// without a vnet header), else 0.
    pub(crate) hdr_skip: usize,
    /// Receive buffer bytes to gather for one frame (header included).
    pub(crate) rx_max: usize,
}

/// A receive chain held for the frame being received.
#[derive(Debug, Clone, Copy)]
struct RxChain {
    head: u16,
    /// The available-ring position it was taken from (to give it back).
    pos: u16,
    cap: usize,
    segs: (usize, usize),
}

/// Receive chains taken for the next frame (given back when it does not need them).
#[derive(Debug, Default)]
struct RxPending {
    chains: Vec<RxChain>,
    segs: Vec<Segment>,
    cap: usize,
    /// The backend wrote part of a frame into these chains.
    partial: bool,
}

enum Gather {
    /// Chains for one frame are held.
    Ready,
    /// Too few buffers; the guest will notify when it adds some.
    Starved,
}

/// Why a chain cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadChain {
    WrongDirection,
    NotInMemory,
    TooManySegments,
    Empty,
}

/// The buffers of `chain` that go the way `writable` says, as host-contiguous segments
/// appended to `segs` (at most `max` of them); returns their bytes. On error `segs` may
/// have grown: the caller truncates.
fn parse_chain(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    writable: bool,
    segs: &mut Vec<Segment>,
    max: usize,
) -> Result<usize, BadChain> {
    let start = segs.len();
    let mut total = 0usize;
    let mut any = false;
    for d in chain {
        any = true;
        if d.is_write_only() != writable {
            return Err(BadChain::WrongDirection);
        }
        if d.len() == 0 {
            continue;
        }
        if !push_segments(mem, d.addr(), d.len() as usize, segs) {
            return Err(BadChain::NotInMemory);
        }
        if segs.len() - start > max {
            return Err(BadChain::TooManySegments);
        }
        total += d.len() as usize;
    }
    if !any {
        return Err(BadChain::Empty);
    }
    Ok(total)
}

fn pop<'a>(
    q: &mut Queue,
    mem: &'a GuestMemoryMmap,
) -> Result<Option<Chain<'a>>, virtio_queue::Error> {
    Ok(q.iter(mem)?.next())
}

/// Errors after which a backend is not used again.
fn fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EBADF
                | libc::EBADFD
                | libc::EPIPE
                | libc::ECONNRESET
                | libc::ENOTCONN
                | libc::ESHUTDOWN
                | libc::ENODEV
                | libc::ENXIO
        )
    )
}

pub(crate) struct PairHandler {
    s: Setup,
    fds: Option<ExtraFds>,
    /// Extra descriptors: backend, kick, then the limiters' (if any).
    extra: Vec<std::os::fd::RawFd>,
    rx_limit_fd: Option<usize>,
    tx_limit_fd: Option<usize>,
    rx: RxPending,
    tx_segs: Vec<Segment>,
    /// The guest gave too few receive buffers; wait for its notification.
    starved: bool,
    rx_limited: bool,
    tx_limited: bool,
    /// A send would block: wait for the backend to be writable.
    tx_blocked: bool,
    rx_errors: u32,
    failures: u64,
    /// A queue proved unusable; the device needs a reset and does nothing more.
    broken: bool,
}

impl PairHandler {
    pub(crate) fn new(s: Setup) -> PairHandler {
        let p = &s.shared.pairs[s.pair];
        let mut extra = vec![p.backend_fd, std::os::fd::AsRawFd::as_raw_fd(&p.kick)];
        let mut fd_of = |l: &Option<std::sync::Mutex<Box<dyn super::Limiter>>>| {
            let fd = l.as_ref().and_then(|l| lock_limiter(l).blocked_fd())?;
            Some(match extra.iter().position(|&f| f == fd) {
                Some(i) => i,
                None => {
                    extra.push(fd);
                    extra.len() - 1
                }
            })
        };
        let rx_limit_fd = fd_of(&s.shared.rx_limiter);
        let tx_limit_fd = fd_of(&s.shared.tx_limiter);
        PairHandler {
            s,
            fds: None,
            extra,
            rx_limit_fd,
            tx_limit_fd,
            rx: RxPending::default(),
            tx_segs: Vec::new(),
            starved: false,
            rx_limited: false,
            tx_limited: false,
            tx_blocked: false,
            rx_errors: 0,
            failures: 0,
            broken: false,
        }
    }

    fn shared(&self) -> Arc<Shared> {
        self.s.shared.clone()
    }

    fn enabled(&self) -> bool {
        self.s.pair < usize::from(self.s.shared.active_pairs.load(Ordering::SeqCst))
    }

    fn dead(&self) -> bool {
        self.s.shared.pairs[self.s.pair].dead.load(Ordering::SeqCst)
    }

    fn queue_broken(&mut self, ctx: &WorkerCtx, what: &str, e: &virtio_queue::Error) {
        tracing::warn!(
            "{}: {what} queue of pair {} is unusable ({e}); the device needs a reset",
            self.s.shared.name,
            self.s.pair
        );
        self.broken = true;
        ctx.interrupt.set_needs_reset();
    }

    fn log_failure(&mut self, what: std::fmt::Arguments<'_>) {
        self.failures += 1;
        let n = self.failures;
        if n <= LOG_FIRST || n.checked_rem(LOG_EVERY) == Some(0) {
            tracing::warn!(
                "{} pair {}: {what} ({n} so far)",
                self.s.shared.name,
                self.s.pair
            );
        } else {
            tracing::debug!("{} pair {}: {what}", self.s.shared.name, self.s.pair);
        }
    }

    /// The backend is gone: the link goes down (once), and it is not waited on again.
    fn mark_dead(&mut self, ctx: &WorkerCtx, why: &dyn std::fmt::Display) {
        let shared = self.shared();
        let p = &shared.pairs[self.s.pair];
        if !p.dead.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "{}: backend {} of queue pair {} {why}; the link is down",
                shared.name,
                p.backend_name,
                self.s.pair
            );
            shared
                .status
                .fetch_and(!super::STATUS_LINK_UP, Ordering::SeqCst);
            ctx.interrupt.signal_config_change();
        }
        self.tx_blocked = false;
        if self.rx.partial {
            p.backend().abandon_partial();
        }
        self.rx.partial = false;
    }

    /// Brings what the epoll waits for in line with the state.
    fn update_interest(&mut self) {
        let enabled = self.enabled();
        let dead = self.dead();
        let partial = self.rx.partial;
        let mut ev = EventSet::empty();
        if (enabled || partial) && !self.starved && (!self.rx_limited || partial) {
            ev |= EventSet::IN;
        }
        if self.tx_blocked {
            ev |= EventSet::OUT;
        }
        let backend = if dead || (!enabled && !partial) {
            None
        } else {
            Some(ev)
        };
        let limits = [
            (self.rx_limit_fd, self.rx_limited),
            (self.tx_limit_fd, self.tx_limited),
        ];
        let Some(fds) = &mut self.fds else {
            return;
        };
        let r = match backend {
            None => fds.remove(FD_BACKEND),
            Some(ev) => fds.watch(FD_BACKEND, ev),
        };
        if let Err(e) = r {
            tracing::warn!(
                "{} pair {}: cannot change what the worker waits for: {e}",
                self.s.shared.name,
                self.s.pair
            );
        }
        // A limiter descriptor shared by both directions stays armed while either waits.
        let mut want: Vec<(usize, bool)> = Vec::new();
        for (fd, blocked) in limits {
            if let Some(i) = fd {
                match want.iter_mut().find(|(j, _)| *j == i) {
                    Some((_, b)) => *b |= blocked,
                    None => want.push((i, blocked)),
                }
            }
        }
        for (i, blocked) in want {
            let r = if blocked { fds.arm(i) } else { fds.disarm(i) };
            if let Err(e) = r {
                tracing::warn!(
                    "{}: cannot (dis)arm a rate limiter: {e}",
                    self.s.shared.name
                );
            }
        }
    }

    /// Gives back the held receive chains from the `k`-th on (the guest's buffers are
    /// taken again for the next frame).
    fn give_back(&mut self, q: &mut Queue, k: usize) {
        if let Some(c) = self.rx.chains.get(k) {
            q.set_next_avail(c.pos);
        }
        self.rx.chains.clear();
        self.rx.segs.clear();
        self.rx.cap = 0;
        self.rx.partial = false;
    }

    /// Takes receive chains until they hold `rx_max` bytes (one chain without
    /// MRG_RXBUF). Malformed chains met first are returned unused; one met after good ones
    /// ends the gathering (it is returned next time). Too few buffers: gives them back
    /// and asks the driver to notify when it adds more, unless the whole ring is held.
    fn gather(
        &mut self,
        mem: &GuestMemoryMmap,
        q: &mut Queue,
        used_any: &mut bool,
    ) -> Result<Gather, virtio_queue::Error> {
        let stats = &self.s.shared.pairs[self.s.pair].stats;
        let (max_chains, need) = if self.s.mrg_rxbuf {
            (usize::from(q.size()), self.s.rx_max)
        } else {
            (1, 1)
        };
        loop {
            let mut boundary = false;
            while self.rx.chains.len() < max_chains && self.rx.cap < need {
                let pos = q.next_avail();
                let Some(chain) = pop(q, mem)? else {
                    break;
                };
                let head = chain.head_index();
                let start = self.rx.segs.len();
                let room = MAX_IOVECS.saturating_sub(start);
                match parse_chain(mem, chain, true, &mut self.rx.segs, room) {
                    Ok(cap) if cap >= VNET_HDR_LEN => {
                        self.rx.chains.push(RxChain {
                            head,
                            pos,
                            cap,
                            segs: (start, self.rx.segs.len()),
                        });
                        self.rx.cap += cap;
                    }
                    bad => {
                        self.rx.segs.truncate(start);
                        if self.rx.chains.is_empty() {
                            // Unusable (wrong direction, outside guest memory, smaller
                            // than the header, more buffers than one read takes).
                            tracing::debug!(
                                "{}: receive chain {head} unusable ({bad:?}); returned empty",
                                self.s.shared.name
                            );
                            add(&stats.bad_chains, 1);
                            q.add_used(mem, head, 0)?;
                            *used_any = true;
                            continue;
                        }
                        // Used after the chains held (a merged frame's chains must be
                        // consecutive on the used ring): dealt with next time.
                        q.set_next_avail(pos);
                        boundary = true;
                        break;
                    }
                }
            }
            let enough = self.rx.cap >= need || (!self.s.mrg_rxbuf && !self.rx.chains.is_empty());
            let whole_ring = self.rx.chains.len() >= usize::from(q.size());
            if !self.rx.chains.is_empty() && (enough || boundary || whole_ring) {
                return Ok(Gather::Ready);
            }
            // Too few: give them back, and have the driver notify about any buffer added
            // after those already there (with EVENT_IDX, avail_event = the avail index).
            let first = self.rx.chains.first().map_or(q.next_avail(), |c| c.pos);
            let avail = q.avail_idx(mem, Ordering::Acquire)?;
            q.set_next_avail(avail.0);
            let more = q.enable_notification(mem);
            q.set_next_avail(first);
            self.rx.chains.clear();
            self.rx.segs.clear();
            self.rx.cap = 0;
            if !more? {
                return Ok(Gather::Starved);
            }
        }
    }

    /// Receives frames while there are frames, buffers and budget.
    fn rx(&mut self, ctx: &mut WorkerCtx) {
        if self.broken || self.dead() || (!self.enabled() && !self.rx.partial) {
            return;
        }
        let shared = self.shared();
        let p = &shared.pairs[self.s.pair];
        let stats = &p.stats;
        let mut backend = p.backend();
        let mut used_any = false;
        let mut dead: Option<String> = None;
        let WorkerCtx {
            mem,
            queues,
            stats: wstats,
            ..
        } = ctx;
        let Some(q) = queues.get_mut(RXQ) else {
            return;
        };
        let mut err = None;
        for _ in 0..BATCH {
            if !self.rx.partial {
                if self.rx_limited || !self.enabled() {
                    break;
                }
                match self.gather(mem, q, &mut used_any) {
                    Ok(Gather::Ready) => {}
                    Ok(Gather::Starved) => {
                        self.starved = true;
                        add(&stats.rx_no_buffers, 1);
                        break;
                    }
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            let r = match FrameBufs::new(mem, &self.rx.segs, self.s.hdr_skip, true) {
                Ok(mut bufs) => backend.recv(&mut bufs),
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            let total = match r {
                Ok(Recv::Frame(n)) => n.saturating_add(self.s.hdr_skip),
                Ok(Recv::Partial) => {
                    self.rx.partial = true;
                    break;
                }
                Ok(Recv::Dropped) => {
                    add(&stats.rx_dropped, 1);
                    self.give_back(q, 0);
                    continue;
                }
                Ok(Recv::Closed) => {
                    self.give_back(q, 0);
                    dead = Some("closed the connection".into());
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.give_back(q, 0);
                    self.rx_errors = 0;
                    break;
                }
                Err(e) => {
                    self.give_back(q, 0);
                    self.rx_errors += 1;
                    if fatal(&e) || self.rx_errors >= MAX_RX_ERRORS {
                        dead = Some(format!("failed receiving ({e})"));
                    } else {
                        tracing::warn!("{}: receive failed: {e}", shared.name);
                    }
                    break;
                }
            };
            self.rx_errors = 0;
            self.rx.partial = false;
            if total > self.rx.cap || total < VNET_HDR_LEN {
                // Cut short by the kernel to fit the buffers, or a runt.
                add(&stats.rx_dropped, 1);
                self.give_back(q, 0);
                continue;
            }
            // The chains the frame fills, in order.
            let mut left = total;
            let mut lens = Vec::with_capacity(self.rx.chains.len());
            for c in &self.rx.chains {
                if left == 0 {
                    break;
                }
                let l = c.cap.min(left);
                lens.push(l);
                left -= l;
            }
            let k = lens.len();
            let num_buffers = if self.s.mrg_rxbuf { k as u16 } else { 1 };
            let (a, b) = self.rx.chains[0].segs;
            let first = &self.rx.segs[a..b];
            let ok = if self.s.hdr_skip > 0 {
                let mut hdr = [0u8; VNET_HDR_LEN];
                hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&num_buffers.to_le_bytes());
                write_at(mem, first, 0, &hdr)
            } else {
                write_at(mem, first, NUM_BUFFERS_OFFSET, &num_buffers.to_le_bytes())
            };
            if !ok {
                add(&stats.rx_dropped, 1);
                self.give_back(q, 0);
                continue;
            }
            // Counted before the guest can see it (readers may wait for the used ring).
            let frame = (total - VNET_HDR_LEN) as u64;
            add(&stats.rx_packets, 1);
            add(&stats.rx_bytes, frame);
            for (c, &l) in self.rx.chains.iter().zip(&lens) {
                if let Err(e) = q.add_used(mem, c.head, l as u32) {
                    err = Some(e);
                    break;
                }
            }
            if err.is_some() {
                break;
            }
            used_any = true;
            wstats.chains.fetch_add(k as u64, Ordering::Relaxed);
            self.give_back(q, k);
            if let Some(l) = &shared.rx_limiter {
                // A limiter without a descriptor to wait on cannot block.
                if !lock_limiter(l).consume(frame) && self.rx_limit_fd.is_some() {
                    self.rx_limited = true;
                }
            }
        }
        drop(backend);
        if let Some(e) = err {
            return self.queue_broken(ctx, "receive", &e);
        }
        if used_any {
            ctx.notify_guest(RXQ);
        }
        if let Some(why) = dead {
            self.mark_dead(ctx, &why);
            // Transmissions waiting for the backend complete now (dropped).
            self.tx(ctx);
        }
    }

    /// Sends what the guest queued while the backend takes it and the budget lasts.
    fn tx(&mut self, ctx: &mut WorkerCtx) {
        if self.broken || self.tx_limited || self.tx_blocked {
            return;
        }
        let shared = self.shared();
        let p = &shared.pairs[self.s.pair];
        let stats = &p.stats;
        let usable = !self.dead() && self.enabled();
        let mut backend = p.backend();
        let mut dead: Option<String> = None;
        if usable {
            match backend.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tx_blocked = true;
                    return;
                }
                Err(e) => dead = Some(format!("failed sending ({e})")),
            }
        }
        let mut usable = usable && dead.is_none();
        let mut used_any = false;
        let mut err = None;
        let mut sent = 0usize;
        let WorkerCtx {
            mem,
            queues,
            stats: wstats,
            ..
        } = ctx;
        let Some(q) = queues.get_mut(TXQ) else {
            return;
        };
        'ring: loop {
            if let Err(e) = q.disable_notification(mem) {
                err = Some(e);
                break;
            }
            loop {
                if sent >= BATCH {
                    // Let the other events in; come back at once.
                    let _ = p.kick.write(1);
                    break 'ring;
                }
                let pos = q.next_avail();
                let chain = match pop(q, mem) {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e);
                        break 'ring;
                    }
                };
                wstats.chains.fetch_add(1, Ordering::Relaxed);
                let head = chain.head_index();
                self.tx_segs.clear();
                // One iovec is left for a stream backend's length prefix.
                let max = MAX_IOVECS - 1;
                let len = match parse_chain(mem, chain, false, &mut self.tx_segs, max) {
                    Ok(len) if (MIN_TX_LEN..=MAX_TX_LEN).contains(&len) => Some(len),
                    _ => None,
                };
                let bufs = match len {
                    Some(_) if usable => {
                        FrameBufs::new(mem, &self.tx_segs, self.s.hdr_skip, false).ok()
                    }
                    _ => None,
                };
                let (Some(len), Some(mut bufs)) = (len, bufs) else {
                    add(&stats.tx_dropped, 1);
                    if let Err(e) = q.add_used(mem, head, 0) {
                        err = Some(e);
                        break 'ring;
                    }
                    used_any = true;
                    continue;
                };
                let r = backend.send(&mut bufs);
                drop(bufs);
                let frame = (len - VNET_HDR_LEN) as u64;
                let mut took = false;
                match r {
                    Ok(()) => {
                        sent += 1;
                        took = true;
                        add(&stats.tx_packets, 1);
                        add(&stats.tx_bytes, frame);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Not taken: the same chain goes when the backend is writable.
                        q.set_next_avail(pos);
                        wstats.chains.fetch_sub(1, Ordering::Relaxed);
                        self.tx_blocked = true;
                        break 'ring;
                    }
                    Err(e) => {
                        add(&stats.tx_dropped, 1);
                        if fatal(&e) {
                            dead = Some(format!("failed sending ({e})"));
                            usable = false;
                        } else {
                            self.log_failure(format_args!("send failed: {e}; frame dropped"));
                        }
                    }
                }
                if let Err(e) = q.add_used(mem, head, 0) {
                    err = Some(e);
                    break 'ring;
                }
                used_any = true;
                if let (Some(l), true) = (&shared.tx_limiter, took) {
                    // A limiter without a descriptor to wait on cannot block.
                    if !lock_limiter(l).consume(frame) && self.tx_limit_fd.is_some() {
                        self.tx_limited = true;
                        break 'ring;
                    }
                }
            }
            match q.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        if usable && !self.tx_blocked && err.is_none() {
            match backend.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tx_blocked = true,
                Err(e) => dead = Some(format!("failed sending ({e})")),
            }
        }
        drop(backend);
        if let Some(e) = err {
            return self.queue_broken(ctx, "transmit", &e);
        }
        if let Some(why) = dead {
            self.mark_dead(ctx, &why);
        }
        if used_any {
            ctx.notify_guest(TXQ);
        }
    }

    fn ctrl(&mut self, ctx: &mut WorkerCtx) {
        if self.broken || !self.s.has_ctrl {
            return;
        }
        let shared = self.shared();
        let mq = self.s.mq;
        ctx.drain_queue(CTRLQ, |mem, chain| {
            Some(ctrl::handle(mem, chain, &shared, mq))
        });
    }

    /// The pairs in use changed (or a batch was cut short): catch up.
    fn kicked(&mut self, ctx: &mut WorkerCtx) {
        if !self.enabled() && !self.rx.partial && !self.rx.chains.is_empty() {
            if let Some(q) = ctx.queues.get_mut(RXQ) {
                self.give_back(q, 0);
            }
        }
        self.rx(ctx);
        self.tx(ctx);
    }
}

impl QueueHandler for PairHandler {
    fn thread_kind(&self) -> seccomp::ThreadKind {
        seccomp::ThreadKind::Net
    }

    fn extra_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.extra.clone()
    }

    fn set_extra_fds(&mut self, fds: ExtraFds) {
        self.fds = Some(fds);
        self.update_interest();
    }

    fn queue_notified(&mut self, index: usize, ctx: &mut WorkerCtx) {
        match index {
            RXQ => {
                if self.starved {
                    self.starved = false;
                    // Buffers arrived; until they run out again, no notifications needed.
                    if let Some(q) = ctx.queues.get_mut(RXQ) {
                        let _ = q.disable_notification(&ctx.mem);
                    }
                }
                self.rx(ctx);
            }
            TXQ => self.tx(ctx),
            CTRLQ => self.ctrl(ctx),
            _ => {}
        }
        self.update_interest();
    }

    fn extra_event(&mut self, which: usize, events: EventSet, ctx: &mut WorkerCtx) {
        if which == FD_BACKEND {
            let p = &self.s.shared.pairs[self.s.pair];
            add(&p.stats.backend_events, 1);
            if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                if self.enabled() && !self.dead() {
                    // Take what is still there, then stop using it.
                    self.rx(ctx);
                    let why = if events.contains(EventSet::ERROR) {
                        "reported an error"
                    } else {
                        "hung up"
                    };
                    self.mark_dead(ctx, &why);
                    self.tx(ctx);
                } else if let Some(fds) = &mut self.fds {
                    // A detached queue, or one already dead: nothing to hear from it.
                    let _ = fds.remove(FD_BACKEND);
                    return;
                }
            } else {
                if events.contains(EventSet::OUT) {
                    self.tx_blocked = false;
                    self.tx(ctx);
                }
                if events.contains(EventSet::IN) {
                    self.rx(ctx);
                }
            }
        } else if which == FD_KICK {
            let _ = self.s.shared.pairs[self.s.pair].kick.read();
            self.kicked(ctx);
        } else {
            let shared = self.shared();
            if Some(which) == self.rx_limit_fd {
                if let Some(l) = &shared.rx_limiter {
                    self.rx_limited = !lock_limiter(l).replenished();
                }
                if !self.rx_limited {
                    self.rx(ctx);
                }
            }
            if Some(which) == self.tx_limit_fd {
                if let Some(l) = &shared.tx_limiter {
                    self.tx_limited = !lock_limiter(l).replenished();
                }
                if !self.tx_limited {
                    self.tx(ctx);
                }
            }
        }
        self.update_interest();
    }

    fn stop(&mut self, _ctx: &mut WorkerCtx) {
        if self.rx.partial {
            self.s.shared.pairs[self.s.pair].backend().abandon_partial();
            self.rx.partial = false;
        }
    }
}
