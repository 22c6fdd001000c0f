//! The thread an activated device works on: it waits (epoll) on the queues' notification
//! eventfds, on any extra file descriptors the device needs (an io_uring completion
//! eventfd, say) and on a control eventfd (pause, resume, stop), and calls the device's
//! [`QueueHandler`]. A handler that panics marks its device as needing a reset (the guest
//! is told) instead of leaving the guest's requests unanswered. A handler can stop and
//! restart waiting on its extra descriptors ([`ExtraFds`]), so that one that is ready but
//! cannot be served yet (a readable tap while the guest has given no receive buffers)
//! does not make the worker spin.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueState, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActiveQueue, GuestMemoryMmap, Interrupt};

/// What a handler works with: guest memory, its queues and its interrupt.
pub struct WorkerCtx {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's queues, in the device's order.
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// What the worker did (shared with the device, which hands them out).
    pub stats: Arc<WorkerStats>,
    /// Set when a driver reset told the worker to stop ([`Worker::request_stop`]): from
    /// then on [`WorkerCtx::drain_queue`], [`WorkerCtx::complete`] and
    /// [`WorkerCtx::notify_guest`] leave the rings and the interrupt alone, as the driver
    /// may already be reusing that memory.
    pub stopping: Arc<AtomicBool>,
}

/// Counters of a device's worker: how well requests batch. The worker thread adds to them;
/// anyone holding the `Arc` reads them at any time.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Queue notifications the worker woke up for.
    pub notifications: AtomicU64,
    /// Descriptor chains taken from the queues.
    pub chains: AtomicU64,
    /// Interrupts raised for used buffers.
    pub interrupts: AtomicU64,
}

/// A copy of [`WorkerStats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WorkerCounts {
    /// Queue notifications the worker woke up for.
    pub notifications: u64,
    /// Descriptor chains (requests) taken from the queues.
    pub requests: u64,
    /// Interrupts raised for used buffers.
    pub interrupts: u64,
}

impl WorkerStats {
    /// The counts now.
    pub fn snapshot(&self) -> WorkerCounts {
        WorkerCounts {
            notifications: self.notifications.load(Ordering::Relaxed),
            requests: self.chains.load(Ordering::Relaxed),
            interrupts: self.interrupts.load(Ordering::Relaxed),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One chain popped from a queue.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

impl WorkerCtx {
    /// Pops every available chain of queue `index`, handing each (with guest memory) to `handle`, which returns
    /// the number of bytes it wrote into the chain (`None`: the chain is still in flight and
    /// the handler will call [`WorkerCtx::complete`] later). Re-enables notifications
    /// (event-idx aware) and loops until the ring is empty, then interrupts the guest if it
    /// asked to be. A ring the device cannot read marks the device as needing a reset.
    pub fn drain_queue(
        &mut self,
        index: usize,
        mut handle: impl FnMut(&GuestMemoryMmap, Chain<'_>) -> Option<u32>,
    ) {
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        let mem = &self.mem;
        let mut used_any = false;
        loop {
            if let Err(e) = queue.disable_notification(mem) {
                return broken(&self.interrupt, index, &e);
            }
            let mut completed = Vec::new();
            let iter = match queue.iter(mem) {
                Ok(iter) => iter,
                Err(e) => return broken(&self.interrupt, index, &e),
            };
            for chain in iter {
                bump(&self.stats.chains);
                let head = chain.head_index();
                if let Some(len) = handle(mem, chain) {
                    completed.push((head, len));
                }
            }
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            for (head, len) in completed {
                if let Err(e) = queue.add_used(mem, head, len) {
                    return broken(&self.interrupt, index, &e);
                }
                used_any = true;
            }
            match queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return broken(&self.interrupt, index, &e),
            }
        }
        if used_any {
            self.notify_guest(index);
        }
    }

    /// Completes a chain that was left in flight: puts it on the used ring with `len`
    /// bytes written. Call [`WorkerCtx::notify_guest`] after a batch.
    pub fn complete(&mut self, index: usize, head: u16, len: u32) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if let Err(e) = queue.add_used(&self.mem, head, len) {
            broken(&self.interrupt, index, &e);
        }
    }

    /// Interrupts the guest for queue `index` unless it suppressed the notification.
    pub fn notify_guest(&mut self, index: usize) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        match queue.needs_notification(&self.mem) {
            Ok(true) => {
                bump(&self.stats.interrupts);
                self.interrupt.signal_used_queue();
            }
            Ok(false) => {}
            Err(e) => broken(&self.interrupt, index, &e),
        }
    }
}

/// The handler's extra file descriptors ([`QueueHandler::extra_fds`]) as the worker's epoll
/// waits on them, handed to the handler once ([`QueueHandler::set_extra_fds`]) so that it can
/// stop waiting on one and wait again later: a tap that is readable while the guest has
/// given no receive buffers must be disarmed, not polled.
///
/// Every descriptor starts armed for reading. Epoll always reports errors and hang-ups of a
/// registered descriptor, even a disarmed one; a descriptor that is dead for good is
/// [`ExtraFds::remove`]d.
#[derive(Debug)]
pub struct ExtraFds {
    epoll: Arc<Epoll>,
    /// The descriptors and what the epoll waits for on each (`None`: not registered).
    fds: Vec<(RawFd, Option<EventSet>)>,
}

impl ExtraFds {
    /// How many extra descriptors there are.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// What the worker waits for on descriptor `which` (`None`: removed or no such descriptor).
    pub fn events(&self, which: usize) -> Option<EventSet> {
        self.fds.get(which).and_then(|&(_, ev)| ev)
    }

    /// Waits for descriptor `which` to become readable (again).
    pub fn arm(&mut self, which: usize) -> std::io::Result<()> {
        self.watch(which, EventSet::IN)
    }

    /// Stops waiting for descriptor `which` to become readable or writable (`EPOLL_CTL_MOD`
    /// with no events); errors and hang-ups are still reported.
    pub fn disarm(&mut self, which: usize) -> std::io::Result<()> {
        self.watch(which, EventSet::empty())
    }

    /// Waits for `events` (e.g. `IN | OUT`) on descriptor `which`, registering it again if it
    /// was removed. Nothing happens if that is what the worker waits for already.
    pub fn watch(&mut self, which: usize, events: EventSet) -> std::io::Result<()> {
        let (fd, current) = self.slot(which)?;
        if current == Some(events) {
            return Ok(());
        }
        let op = if current.is_some() {
            ControlOperation::Modify
        } else {
            ControlOperation::Add
        };
        self.epoll
            .ctl(op, fd, EpollEvent::new(events, EXTRA_BASE + which as u64))?;
        self.fds[which].1 = Some(events);
        Ok(())
    }

    /// Stops watching descriptor `which` altogether (`EPOLL_CTL_DEL`): not even a hang-up
    /// wakes the worker. [`ExtraFds::arm`] or [`ExtraFds::watch`] register it again.
    pub fn remove(&mut self, which: usize) -> std::io::Result<()> {
        let (fd, current) = self.slot(which)?;
        if current.is_none() {
            return Ok(());
        }
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())?;
        self.fds[which].1 = None;
        Ok(())
    }

    fn slot(&self, which: usize) -> std::io::Result<(RawFd, Option<EventSet>)> {
        self.fds.get(which).copied().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "no extra descriptor {which} (the handler has {})",
                    self.fds.len()
                ),
            )
        })
    }
}

fn broken(interrupt: &Interrupt, index: usize, e: &virtio_queue::Error) {
    tracing::warn!("virtio queue {index} is unusable ({e}); the device needs a reset");
    interrupt.set_needs_reset();
}

/// Puts the calling thread in `SCHED_BATCH`: a woken device worker does not preempt the
/// vCPU thread that notified it, it runs on an idle CPU at once or else when the vCPU
/// yields (the guest idles or its time slice ends). Where CPUs are scarce this lets the
/// guest queue many requests before the worker takes them all in one pass with one
/// interrupt; preempting the vCPU at every notification serialises the queue (measured in
/// the nested testbed, one L1 CPU, 4 KiB random reads at queue depth 16: 1.0x the depth-1
/// rate before, about 5x after, for about 13% less at depth 1; `bench/blk-io/RESULTS.md`).
fn batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid parameter.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        tracing::debug!(
            "cannot put a device worker in SCHED_BATCH: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn log_stats(name: &str, s: &WorkerStats) {
    let c = s.snapshot();
    tracing::info!(
        "{name}: {} requests, {} queue notifications, {} interrupts",
        c.requests,
        c.notifications,
        c.interrupts
    );
}

/// A device's work, run on its worker thread.
pub trait QueueHandler: Send + 'static {
    /// The seccomp allow-list (and placement) of the worker thread.
    fn thread_kind(&self) -> seccomp::ThreadKind {
        seccomp::ThreadKind::AnyWorker
    }

    /// File descriptors to wait on besides the queue notifications.
    fn extra_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// The driver notified queue `index` (the eventfd is already drained).
    fn queue_notified(&mut self, index: usize, ctx: &mut WorkerCtx);

    /// Extra descriptor number `which` (in [`QueueHandler::extra_fds`] order) is readable.
    fn extra_ready(&mut self, which: usize, ctx: &mut WorkerCtx) {
        let _ = (which, ctx);
    }

    /// Called once on the worker thread, before any other call, with the handle that arms
    /// and disarms the extra descriptors (all armed for reading at first).
    fn set_extra_fds(&mut self, fds: ExtraFds) {
        let _ = fds;
    }

    /// Extra descriptor `which` has `events` (readable, writable, error, hang-up). The
    /// default calls [`QueueHandler::extra_ready`].
    fn extra_event(&mut self, which: usize, events: EventSet, ctx: &mut WorkerCtx) {
        let _ = events;
        self.extra_ready(which, ctx);
    }

    /// The worker is pausing: complete the requests in flight, so that guest memory and
    /// the queues do not change until it resumes.
    fn quiesce(&mut self, ctx: &mut WorkerCtx) {
        let _ = ctx;
    }

    /// The worker is stopping: finish or abandon in-flight work.
    fn stop(&mut self, ctx: &mut WorkerCtx) {
        let _ = ctx;
    }
}

/// What the owner of a worker asks of its thread.
enum Command {
    /// Complete in-flight work, answer on the channel, then wait for `Resume` or `Stop`.
    Pause(mpsc::Sender<()>),
    /// Continue after `Pause`.
    Resume,
    /// End the thread, handing back the queues.
    Stop,
    /// Answer with the queues' state (a snapshot of a paused device).
    QueueStates(mpsc::Sender<Vec<QueueState>>),
}

/// How long [`Worker::pause`] waits for the thread.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a worker did not pause.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The thread did not answer in time.
    #[error("device worker {0} did not pause within {PAUSE_TIMEOUT:?}")]
    PauseTimeout(String),
    /// The thread is gone.
    #[error("device worker {0} has stopped")]
    Gone(String),
}

/// A running worker thread. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Worker {
    name: String,
    control: EventFd,
    commands: mpsc::Sender<Command>,
    /// Set by [`Worker::request_stop`]: the thread calls no handler any more, whatever
    /// events it still has in hand, and ends at its next look at the commands.
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<ActiveQueue>>>,
}

const CONTROL_TOKEN: u64 = u64::MAX;
const EXTRA_BASE: u64 = 1 << 32;

/// Runs `f`, turning a panic into `false` after marking the device as needing a reset: a
/// bug in a device must not leave the guest waiting forever for its requests.
fn guarded(name: &str, interrupt: &Interrupt, f: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => true,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!("device worker {name} panicked ({msg}); the device needs a reset");
            interrupt.set_needs_reset();
            false
        }
    }
}

impl Worker {
    /// Starts thread `name` running `handler` over `queues`, counting into `stats`.
    pub fn spawn<H: QueueHandler>(
        name: &str,
        mut handler: H,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
        stats: Arc<WorkerStats>,
    ) -> std::io::Result<Worker> {
        let control = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Arc::new(Epoll::new()?);
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(control.as_raw_fd(), CONTROL_TOKEN)?;
        for (i, q) in queues.iter().enumerate() {
            add(q.notify.as_raw_fd(), i as u64)?;
        }
        let extra_fds = handler.extra_fds();
        for (i, &fd) in extra_fds.iter().enumerate() {
            add(fd, EXTRA_BASE + i as u64)?;
        }
        let extra = ExtraFds {
            epoll: epoll.clone(),
            fds: extra_fds
                .into_iter()
                .map(|fd| (fd, Some(EventSet::IN)))
                .collect(),
        };
        let (queues, notify): (Vec<Queue>, Vec<EventFd>) =
            queues.into_iter().map(|q| (q.queue, q.notify)).unzip();
        let stopping = Arc::new(AtomicBool::new(false));
        let mut ctx = WorkerCtx {
            mem,
            queues,
            interrupt,
            stats,
            stopping: stopping.clone(),
        };
        let (commands, command_rx) = mpsc::channel();
        let thread_name = name.to_string();
        let thread_control = control.try_clone()?;
        let thread_stopping = stopping.clone();
        let kind = handler.thread_kind();
        let thread = seccomp::spawn(name.to_string(), kind, move || {
            batch_scheduling();
            let interrupt = ctx.interrupt.clone();
            let broken = !guarded(&thread_name, &interrupt, || handler.set_extra_fds(extra));
            run(
                &thread_name,
                &mut handler,
                &mut ctx,
                broken,
                &epoll,
                &notify,
                &thread_control,
                &command_rx,
                &thread_stopping,
            );
            log_stats(&thread_name, &ctx.stats);
            ctx.queues
                .into_iter()
                .zip(notify)
                .map(|(queue, notify)| ActiveQueue { queue, notify })
                .collect()
        })?;
        Ok(Worker {
            name: name.to_string(),
            control,
            commands,
            stopping,
            thread: Some(thread),
        })
    }

    fn send(&self, c: Command) -> bool {
        if self.commands.send(c).is_err() {
            return false;
        }
        if let Err(e) = self.control.write(1) {
            tracing::error!("cannot wake device worker {}: {e}", self.name);
        }
        true
    }

    /// Stops the thread from taking new requests once those in flight are done; returns
    /// when it has.
    pub fn pause(&self) -> Result<(), WorkerError> {
        let (tx, rx) = mpsc::channel();
        if !self.send(Command::Pause(tx)) {
            return Err(WorkerError::Gone(self.name.clone()));
        }
        match rx.recv_timeout(PAUSE_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(WorkerError::PauseTimeout(self.name.clone()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(WorkerError::Gone(self.name.clone())),
        }
    }

    /// The state of the thread's queues (indices, addresses), for a snapshot: meaningful
    /// while the worker is paused, when nothing moves them.
    pub fn queue_states(&self) -> Result<Vec<QueueState>, WorkerError> {
        let (tx, rx) = mpsc::channel();
        if !self.send(Command::QueueStates(tx)) {
            return Err(WorkerError::Gone(self.name.clone()));
        }
        match rx.recv_timeout(PAUSE_TIMEOUT) {
            Ok(q) => Ok(q),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(WorkerError::PauseTimeout(self.name.clone()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(WorkerError::Gone(self.name.clone())),
        }
    }

    /// Lets a paused thread continue (notifications that arrived meanwhile are served).
    pub fn resume(&self) {
        self.send(Command::Resume);
    }

    /// Tells the thread to stop without waiting for it, for a driver reset: from now on
    /// it calls no handler, [`WorkerCtx`] puts nothing more on the used rings and raises
    /// no interrupt, and the thread ends after the handler's [`QueueHandler::stop`]. A
    /// reset runs on the vCPU thread that wrote the status, holding the transport's lock:
    /// a handler stuck in slow I/O must stall neither that vCPU nor whoever waits for the
    /// lock.
    pub fn request_stop(&mut self) {
        if self.thread.is_some() && !self.stopping.swap(true, Ordering::SeqCst) {
            self.send(Command::Stop);
        }
    }

    /// Whether the thread has ended (then [`Worker::stop`] returns at once).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread and waits for it; returns the queues (with their indices) and
    /// their notification eventfds, so that a new worker can continue where this one
    /// stopped. `None` if the thread had already ended abnormally.
    pub fn stop(&mut self) -> Option<Vec<ActiveQueue>> {
        let t = self.thread.take()?;
        if !self.stopping.load(Ordering::SeqCst) {
            self.send(Command::Stop);
        }
        match t.join() {
            Ok(q) => Some(q),
            Err(_) => {
                tracing::error!("device worker {} thread panicked", self.name);
                None
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A device's worker, when it has one, and the counters that outlive it (a device keeps
/// its counters across resets and worker restarts).
#[derive(Debug, Default)]
pub struct WorkerSlot {
    worker: Option<Worker>,
    /// Workers told to stop by [`WorkerSlot::retire`] that may not have ended yet.
    retired: Vec<Worker>,
    stats: Arc<WorkerStats>,
}

impl WorkerSlot {
    /// Starts thread `name` running `handler` over `queues` (stopping any worker before).
    pub fn start<H: QueueHandler>(
        &mut self,
        name: &str,
        handler: H,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> std::io::Result<()> {
        self.stop();
        self.reap(true);
        self.worker = Some(Worker::spawn(
            name,
            handler,
            mem,
            interrupt,
            queues,
            self.stats.clone(),
        )?);
        Ok(())
    }

    /// Stops the worker, if any; returns its queues ([`Worker::stop`]).
    pub fn stop(&mut self) -> Option<Vec<ActiveQueue>> {
        self.worker.take().and_then(|mut w| w.stop())
    }

    /// Tells the worker, if any, to stop without waiting for it ([`Worker::request_stop`]),
    /// for a driver reset. The thread is joined once it has ended, at the latest
    /// before the next [`WorkerSlot::start`] (two workers never serve one device's
    /// backend at once) or when the slot is dropped.
    pub fn retire(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.request_stop();
            self.retired.push(w);
        }
        self.reap(false);
    }

    /// Joins the retired workers that have ended (`wait`: all of them, waiting).
    fn reap(&mut self, wait: bool) {
        if wait {
            for w in &self.retired {
                if !w.is_finished() {
                    tracing::warn!(
                        "{}: waiting for the worker of the previous driver to finish its request",
                        w.name
                    );
                }
            }
            self.retired.clear();
        } else {
            self.retired.retain(|w| !w.is_finished());
        }
    }

    /// Pauses the worker, if any ([`Worker::pause`]).
    pub fn pause(&self) -> Result<(), WorkerError> {
        self.worker.as_ref().map_or(Ok(()), Worker::pause)
    }

    /// Resumes the worker, if any.
    pub fn resume(&self) {
        if let Some(w) = &self.worker {
            w.resume();
        }
    }

    /// The worker's queue states ([`Worker::queue_states`]); an error without a worker.
    pub fn queue_states(&self) -> Result<Vec<QueueState>, WorkerError> {
        match &self.worker {
            Some(w) => w.queue_states(),
            None => Err(WorkerError::Gone("(none)".into())),
        }
    }

    /// The counters.
    pub fn counts(&self) -> WorkerCounts {
        self.stats.snapshot()
    }
}

/// The worker thread's loop; returns when told to stop.
#[allow(clippy::too_many_arguments)]
fn run<H: QueueHandler>(
    name: &str,
    handler: &mut H,
    ctx: &mut WorkerCtx,
    broken: bool,
    epoll: &Epoll,
    notify: &[EventFd],
    control: &EventFd,
    commands: &mpsc::Receiver<Command>,
    stopping: &AtomicBool,
) {
    let interrupt = ctx.interrupt.clone();
    // After a handler panic the device is marked NEEDS_RESET and only commands are served.
    let mut broken = broken;
    // Notifications that arrived before the thread started are level in the eventfds, so
    // epoll reports them on the first wait.
    let mut events = vec![EpollEvent::default(); 16];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("device worker {name}: epoll failed: {e}");
                // Without epoll only commands can be served.
                return wait_for_stop(name, handler, ctx, commands);
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                CONTROL_TOKEN => {
                    let _ = control.read();
                    while let Ok(c) = commands.try_recv() {
                        match c {
                            Command::Stop => {
                                if !broken {
                                    guarded(name, &interrupt, || handler.stop(ctx));
                                }
                                return;
                            }
                            Command::Resume => {}
                            Command::QueueStates(ack) => {
                                let _ = ack.send(states(ctx));
                            }
                            Command::Pause(ack) => {
                                if !broken {
                                    broken = !guarded(name, &interrupt, || handler.quiesce(ctx));
                                }
                                let _ = ack.send(());
                                if !paused(ctx, commands) {
                                    if !broken {
                                        guarded(name, &interrupt, || handler.stop(ctx));
                                    }
                                    return;
                                }
                            }
                        }
                    }
                }
                _ if broken => {}
                // Told to stop (a reset): no more handler calls, the Stop command ends it.
                _ if stopping.load(Ordering::SeqCst) => {}
                t if t >= EXTRA_BASE => {
                    let which = (t - EXTRA_BASE) as usize;
                    let events = ev.event_set();
                    broken = !guarded(name, &interrupt, || handler.extra_event(which, events, ctx));
                }
                t => {
                    let i = t as usize;
                    if let Some(evt) = notify.get(i) {
                        let _ = evt.read();
                    }
                    bump(&ctx.stats.notifications);
                    broken = !guarded(name, &interrupt, || handler.queue_notified(i, ctx));
                }
            }
        }
    }
}

fn states(ctx: &WorkerCtx) -> Vec<QueueState> {
    ctx.queues.iter().map(|q| q.state()).collect()
}

/// Waits while paused; true on `Resume`, false on `Stop` (or the owner gone).
fn paused(ctx: &WorkerCtx, commands: &mpsc::Receiver<Command>) -> bool {
    loop {
        match commands.recv() {
            Ok(Command::Resume) => return true,
            Ok(Command::QueueStates(ack)) => {
                let _ = ack.send(states(ctx));
            }
            Ok(Command::Pause(ack)) => {
                let _ = ack.send(());
            }
            Ok(Command::Stop) | Err(_) => return false,
        }
    }
}

fn wait_for_stop<H: QueueHandler>(
    name: &str,
    handler: &mut H,
    ctx: &mut WorkerCtx,
    commands: &mpsc::Receiver<Command>,
) {
    let interrupt = ctx.interrupt.clone();
    loop {
        match commands.recv() {
            Ok(Command::Pause(ack)) => {
                let _ = ack.send(());
            }
            Ok(Command::Resume) => {}
            Ok(Command::QueueStates(ack)) => {
                let _ = ack.send(states(ctx));
            }
            Ok(Command::Stop) | Err(_) => {
                guarded(name, &interrupt, || handler.stop(ctx));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_util::{guest_memory, wait_readable, DriverQueue};
    use std::sync::atomic::AtomicBool;

    /// Completes every chain with 0 bytes; panics on a chain whose head is 13.
    struct Echo {
        served: Arc<AtomicU64>,
        quiesced: Arc<AtomicBool>,
    }

    impl QueueHandler for Echo {
        fn queue_notified(&mut self, index: usize, ctx: &mut WorkerCtx) {
            let served = self.served.clone();
            ctx.drain_queue(index, |_, chain| {
                assert_ne!(chain.head_index(), 13, "test panic");
                served.fetch_add(1, Ordering::SeqCst);
                Some(0)
            });
        }
        fn quiesce(&mut self, _ctx: &mut WorkerCtx) {
            self.quiesced.store(true, Ordering::SeqCst);
        }
    }

    struct Rig {
        mem: GuestMemoryMmap,
        dq: DriverQueue,
        irq: EventFd,
        notify: EventFd,
        interrupt: Arc<Interrupt>,
        served: Arc<AtomicU64>,
        quiesced: Arc<AtomicBool>,
        stats: Arc<WorkerStats>,
        worker: Worker,
    }

    fn rig() -> Rig {
        let mem = guest_memory(0x10_0000);
        let dq = DriverQueue::new(16, 0x1_0000);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let quiesced = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WorkerStats::default());
        let worker = Worker::spawn(
            "test-worker",
            Echo {
                served: served.clone(),
                quiesced: quiesced.clone(),
            },
            mem.clone(),
            interrupt.clone(),
            vec![ActiveQueue {
                queue: dq.device_queue(false),
                notify: notify.try_clone().unwrap(),
            }],
            stats.clone(),
        )
        .unwrap();
        Rig {
            mem,
            dq,
            irq,
            notify,
            interrupt,
            served,
            quiesced,
            stats,
            worker,
        }
    }

    impl Rig {
        fn submit(&mut self, head: u16) {
            let h = self.dq.chain(&self.mem, head, &[(0x8_0000, 16, true)]);
            self.dq.publish(&self.mem, h);
            self.notify.write(1).unwrap();
        }
    }

    #[test]
    fn paused_workers_hold_requests_until_resumed() {
        let mut r = rig();
        r.submit(0);
        wait_readable(&r.irq);
        assert_eq!(r.served.load(Ordering::SeqCst), 1);
        r.worker.pause().unwrap();
        assert!(
            r.quiesced.load(Ordering::SeqCst),
            "in-flight work was completed"
        );
        r.submit(1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            r.served.load(Ordering::SeqCst),
            1,
            "no progress while paused"
        );
        assert_eq!(r.dq.used_idx(&r.mem), 1);
        // A second pause while paused is answered too.
        r.worker.pause().unwrap();
        r.worker.resume();
        wait_readable(&r.irq);
        assert_eq!(r.served.load(Ordering::SeqCst), 2);
        assert_eq!(r.dq.used_idx(&r.mem), 2);
        let s = r.stats.snapshot();
        assert_eq!((s.requests, s.interrupts), (2, 2));
        assert!(s.notifications >= 2);
    }

    #[test]
    fn paused_workers_report_their_queue_states() {
        let mut r = rig();
        r.submit(0);
        wait_readable(&r.irq);
        r.worker.pause().unwrap();
        r.submit(1);
        let states = r.worker.queue_states().unwrap();
        assert_eq!(states.len(), 1);
        assert_eq!(
            states[0].next_avail, 1,
            "the request held back is not taken"
        );
        assert_eq!(states[0].next_used, 1);
        assert!(states[0].ready);
        r.worker.resume();
        wait_readable(&r.irq);
        // A running worker answers too.
        let states = r.worker.queue_states().unwrap();
        assert_eq!((states[0].next_avail, states[0].next_used), (2, 2));
        r.worker.stop();
        assert!(matches!(r.worker.queue_states(), Err(WorkerError::Gone(_))));
    }

    #[test]
    fn stopping_hands_back_the_queues_where_they_are() {
        let mut r = rig();
        r.submit(0);
        wait_readable(&r.irq);
        let queues = r.worker.stop().expect("queues back");
        assert_eq!(queues.len(), 1);
        assert_eq!(queues[0].queue.next_avail(), 1, "the index survives");
        // A stopped worker stays stopped; stopping again is harmless.
        assert!(r.worker.stop().is_none());
        // A new worker continues on the same queue and eventfd.
        let served = Arc::new(AtomicU64::new(0));
        let _w = Worker::spawn(
            "test-worker-2",
            Echo {
                served: served.clone(),
                quiesced: Arc::new(AtomicBool::new(false)),
            },
            r.mem.clone(),
            r.interrupt.clone(),
            queues,
            r.stats.clone(),
        )
        .unwrap();
        r.submit(1);
        wait_readable(&r.irq);
        assert_eq!(served.load(Ordering::SeqCst), 1, "only the new chain");
        assert_eq!(r.dq.used_idx(&r.mem), 2);
    }

    /// Counts events on its one extra descriptor, disarms it at every event (removes it on
    /// a hang-up) and arms it again when the queue is notified.
    struct Disarming {
        fd: RawFd,
        fds: Option<ExtraFds>,
        events: Arc<AtomicU64>,
        hangups: Arc<AtomicU64>,
    }

    impl QueueHandler for Disarming {
        fn extra_fds(&self) -> Vec<RawFd> {
            vec![self.fd]
        }
        fn set_extra_fds(&mut self, fds: ExtraFds) {
            assert_eq!(fds.len(), 1);
            assert_eq!(fds.events(0), Some(EventSet::IN));
            self.fds = Some(fds);
        }
        fn queue_notified(&mut self, index: usize, ctx: &mut WorkerCtx) {
            ctx.drain_queue(index, |_, _| Some(0));
            self.fds.as_mut().unwrap().arm(0).unwrap();
        }
        fn extra_event(&mut self, which: usize, events: EventSet, _ctx: &mut WorkerCtx) {
            assert_eq!(which, 0);
            let fds = self.fds.as_mut().unwrap();
            if events.contains(EventSet::HANG_UP) {
                self.hangups.fetch_add(1, Ordering::SeqCst);
                fds.remove(0).unwrap();
                assert_eq!(fds.events(0), None);
            } else {
                self.events.fetch_add(1, Ordering::SeqCst);
                fds.disarm(0).unwrap();
                assert_eq!(fds.events(0), Some(EventSet::empty()));
            }
        }
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..2000 {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn handlers_disarm_and_rearm_their_extra_descriptors() {
        let mut r = rig();
        // A descriptor that stays readable: without disarming the worker would spin.
        let busy = EventFd::new(EFD_NONBLOCK).unwrap();
        busy.write(1).unwrap();
        let events = Arc::new(AtomicU64::new(0));
        let hangups = Arc::new(AtomicU64::new(0));
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut w = Worker::spawn(
            "test-disarm",
            Disarming {
                fd: busy.as_raw_fd(),
                fds: None,
                events: events.clone(),
                hangups: hangups.clone(),
            },
            r.mem.clone(),
            r.interrupt.clone(),
            vec![ActiveQueue {
                queue: r.dq.device_queue(false),
                notify: notify.try_clone().unwrap(),
            }],
            r.stats.clone(),
        )
        .unwrap();
        wait_for("the first event", || events.load(Ordering::SeqCst) == 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(events.load(Ordering::SeqCst), 1, "disarmed: no more events");
        // A queue notification arms it again: one more event, then quiet again.
        let h = r.dq.chain(&r.mem, 0, &[(0x8_0000, 16, true)]);
        r.dq.publish(&r.mem, h);
        notify.write(1).unwrap();
        wait_for("the event after re-arming", || {
            events.load(Ordering::SeqCst) == 2
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(events.load(Ordering::SeqCst), 2);
        assert!(w.stop().is_some());
        r.worker.stop();

        // A hang-up is reported even while disarmed; removing the descriptor silences it.
        let mut p = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the live two-element array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
        // SAFETY: both descriptors were just created and are owned here only.
        let (rd, wr) = unsafe {
            use std::os::fd::FromRawFd;
            (
                std::os::fd::OwnedFd::from_raw_fd(p[0]),
                std::os::fd::OwnedFd::from_raw_fd(p[1]),
            )
        };
        let (events, hangups) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut w = Worker::spawn(
            "test-hangup",
            Disarming {
                fd: rd.as_raw_fd(),
                fds: None,
                events: events.clone(),
                hangups: hangups.clone(),
            },
            r.mem.clone(),
            r.interrupt.clone(),
            vec![],
            r.stats.clone(),
        )
        .unwrap();
        drop(wr);
        wait_for("the hang-up", || hangups.load(Ordering::SeqCst) == 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(hangups.load(Ordering::SeqCst), 1, "removed: no more events");
        assert_eq!(events.load(Ordering::SeqCst), 0);
        assert!(w.stop().is_some());
    }

    #[test]
    fn a_panicking_handler_marks_the_device_as_needing_reset() {
        let mut r = rig();
        r.submit(13);
        wait_readable(&r.irq);
        assert!(r.interrupt.needs_reset());
        // The worker still answers commands and stops cleanly.
        r.worker.pause().unwrap();
        r.worker.resume();
        r.submit(0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            r.served.load(Ordering::SeqCst),
            0,
            "a broken device serves nothing"
        );
        assert!(r.worker.stop().is_some());
    }
}
