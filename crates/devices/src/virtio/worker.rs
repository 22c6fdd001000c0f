//! The thread an activated device works on: it waits (epoll) on the queues' notification
//! eventfds, on any extra file descriptors the device needs (an io_uring completion
//! eventfd, say) and on a stop eventfd, and calls the device's [`QueueHandler`].

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
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
    /// What the worker did, logged when it stops.
    pub stats: WorkerStats,
}

/// Counters of a worker (for `FERROVM_LOG=info`: how well requests batch).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    /// Queue notifications the worker woke up for.
    pub notifications: u64,
    /// Descriptor chains taken from the queues.
    pub chains: u64,
    /// Interrupts raised for used buffers.
    pub interrupts: u64,
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
                self.stats.chains += 1;
                let head = chain.head_index();
                if let Some(len) = handle(mem, chain) {
                    completed.push((head, len));
                }
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
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if let Err(e) = queue.add_used(&self.mem, head, len) {
            broken(&self.interrupt, index, &e);
        }
    }

    /// Interrupts the guest for queue `index` unless it suppressed the notification.
    pub fn notify_guest(&mut self, index: usize) {
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        match queue.needs_notification(&self.mem) {
            Ok(true) => {
                self.stats.interrupts += 1;
                self.interrupt.signal_used_queue();
            }
            Ok(false) => {}
            Err(e) => broken(&self.interrupt, index, &e),
        }
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
    tracing::info!(
        "{name}: {} requests, {} queue notifications, {} interrupts",
        s.chains,
        s.notifications,
        s.interrupts
    );
}

/// A device's work, run on its worker thread.
pub trait QueueHandler: Send + 'static {
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

    /// The worker is stopping: finish or abandon in-flight work.
    fn stop(&mut self, ctx: &mut WorkerCtx) {
        let _ = ctx;
    }
}

/// A running worker thread. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

const STOP_TOKEN: u64 = u64::MAX;
const EXTRA_BASE: u64 = 1 << 32;

impl Worker {
    /// Starts thread `name` running `handler` over `queues`.
    pub fn spawn<H: QueueHandler>(
        name: &str,
        mut handler: H,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> std::io::Result<Worker> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(stop.as_raw_fd(), STOP_TOKEN)?;
        for (i, q) in queues.iter().enumerate() {
            add(q.notify.as_raw_fd(), i as u64)?;
        }
        for (i, fd) in handler.extra_fds().into_iter().enumerate() {
            add(fd, EXTRA_BASE + i as u64)?;
        }
        let (queues, notify): (Vec<Queue>, Vec<EventFd>) =
            queues.into_iter().map(|q| (q.queue, q.notify)).unzip();
        let mut ctx = WorkerCtx {
            mem,
            queues,
            interrupt,
            stats: WorkerStats::default(),
        };
        let thread_name = name.to_string();
        let stop_evt = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                batch_scheduling();
                // Notifications that arrived before the thread started are level in the
                // eventfds, so epoll reports them on the first wait.
                let mut events = vec![EpollEvent::default(); 16];
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::error!("device worker epoll failed: {e}");
                            break;
                        }
                    };
                    for ev in &events[..n] {
                        match ev.data() {
                            STOP_TOKEN => {
                                handler.stop(&mut ctx);
                                log_stats(&thread_name, &ctx.stats);
                                return;
                            }
                            t if t >= EXTRA_BASE => {
                                handler.extra_ready((t - EXTRA_BASE) as usize, &mut ctx)
                            }
                            t => {
                                let i = t as usize;
                                let _ = notify[i].read();
                                ctx.stats.notifications += 1;
                                handler.queue_notified(i, &mut ctx);
                            }
                        }
                    }
                }
                handler.stop(&mut ctx);
                log_stats(&thread_name, &ctx.stats);
            })?;
        Ok(Worker {
            stop: stop_evt,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            if t.join().is_err() {
                tracing::error!("a device worker thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}
