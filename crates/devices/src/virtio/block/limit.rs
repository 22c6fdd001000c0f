//! Rate limiting for both engines: a [`Gate`] over the drive's shared
//! [`RateLimiter`], and [`drain`], which takes requests from a queue only while the gate is
//! open.
//!
//! Every chain taken from the queue is charged one operation and its data bytes
//! ([`Parsed::data_bytes`]) as it is taken (after the fact, as the limiter wants: the
//! request is served, then paid for). When the limiter says the budget is spent the gate
//! closes: no further chain is popped (the guest's requests wait in the ring), the queue's
//! notifications are suppressed, and the worker waits on the limiter's refill timer, an
//! extra descriptor that is armed only while the gate is closed. When the timer fires and
//! the limiter has been paid, the gate opens and the queue is drained again. Requests
//! already handed to the kernel (io_uring) complete normally meanwhile. A drive without a
//! limiter has no gate: [`drain`] is then [`WorkerCtx::drain_queue`] itself.
//!
//! A worker stopped while the gate was closed (a disk swap, a snapshot of a paused VM)
//! leaves requests in the ring with notifications suppressed, so the driver will not kick
//! for them: the gate's second descriptor, an eventfd signalled when the gate is made,
//! wakes the next worker once to take them.
//!
//! [`Parsed::data_bytes`]: super::request::Parsed::data_bytes

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::GuestMemoryMmap;
use crate::rate_limiter::RateLimiter;
use crate::virtio::worker::{Chain, ExtraFds, WorkerCtx, WorkerStats};

/// A limiter shared by the device's worker and the VMM.
pub(crate) type SharedLimiter = Arc<Mutex<RateLimiter>>;

fn lock(l: &SharedLimiter) -> MutexGuard<'_, RateLimiter> {
    // A panic elsewhere while holding the lock leaves the buckets usable.
    l.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an engine did with a chain [`drain`] handed it.
pub(crate) struct Taken {
    /// The used length to put on the used ring now (`None`: the request is in flight and
    /// the engine completes it later).
    pub used: Option<u32>,
    /// The data bytes to charge (one operation is charged as well).
    pub bytes: u64,
}

/// Whether the worker may take requests, as far as the drive's limiter is concerned.
pub(crate) struct Gate {
    limiter: SharedLimiter,
    /// Where the gate's descriptors ([`Gate::extra_fds`]) are among the handler's extra
    /// descriptors: the limiter's timer, then `started`.
    first: usize,
    /// Readable from the gate's making until the worker has looked at the ring once.
    started: EventFd,
    /// Set once on the worker thread; `None` on a handler driven by hand (tests).
    fds: Option<ExtraFds>,
    closed: bool,
}

impl Gate {
    /// A gate over `limiter` whose descriptors are the handler's extra descriptors `first`
    /// and `first + 1`. A limiter still owed from a previous worker starts closed.
    pub(crate) fn new(limiter: SharedLimiter, first: usize) -> io::Result<Gate> {
        let started = EventFd::new(EFD_NONBLOCK)?;
        started.write(1)?;
        let closed = lock(&limiter).is_blocked();
        Ok(Gate {
            limiter,
            first,
            started,
            fds: None,
            closed,
        })
    }

    /// The descriptors to wait on: the limiter's refill timer (the same descriptor for the
    /// limiter's whole life, whatever its limits become) and the start signal.
    pub(crate) fn extra_fds(&self) -> [RawFd; 2] {
        [lock(&self.limiter).fd(), self.started.as_raw_fd()]
    }

    /// Takes the worker's extra descriptors and arms the timer only if the gate is closed.
    pub(crate) fn set_fds(&mut self, fds: ExtraFds) {
        self.fds = Some(fds);
        self.set_closed(self.closed);
    }

    /// Extra descriptor `which` is readable: true if it is one of the gate's and the
    /// handler should now take what its queues hold (the gate is open).
    pub(crate) fn ready(&mut self, which: usize) -> bool {
        if which == self.first {
            self.timer_fired()
        } else if which == self.first + 1 {
            // Read, it does not wake the worker again.
            let _ = self.started.read();
            !self.closed
        } else {
            false
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Charges one request that was just taken.
    fn charge(&mut self, bytes: u64) {
        if !lock(&self.limiter).consume(bytes) {
            self.set_closed(true);
        }
    }

    /// The timer is readable: true when the gate is open (again).
    fn timer_fired(&mut self) -> bool {
        let open = lock(&self.limiter).replenished();
        self.set_closed(!open);
        !self.closed
    }

    /// Waits on the timer exactly while closed. If the timer cannot be armed the gate stays
    /// open: a drive served too fast is better than one that never answers.
    fn set_closed(&mut self, closed: bool) {
        self.closed = closed;
        let Some(fds) = &mut self.fds else {
            return;
        };
        let r = if closed {
            fds.arm(self.first)
        } else {
            fds.disarm(self.first)
        };
        if let Err(e) = r {
            tracing::warn!("virtio-blk: cannot (dis)arm the rate limiter's timer: {e}");
            if closed {
                self.closed = false;
            }
        }
    }
}

/// Takes the available chains of queue `index` while `gate` (if any) is open, handing each
/// to `handle`; completes those it answers at once, then interrupts the guest if it asked
/// to be. Without a gate this is [`WorkerCtx::drain_queue`]. With one, a closed gate leaves
/// the rest in the ring with the queue's notifications suppressed: the worker comes back
/// for them when the timer fires ([`Gate::ready`]), not when the guest kicks.
pub(crate) fn drain(
    ctx: &mut WorkerCtx,
    index: usize,
    gate: Option<&mut Gate>,
    mut handle: impl FnMut(&GuestMemoryMmap, Chain<'_>) -> Taken,
) {
    let Some(gate) = gate else {
        return ctx.drain_queue(index, |mem, chain| handle(mem, chain).used);
    };
    let Some(queue) = ctx.queues.get_mut(index) else {
        return;
    };
    match take_while_open(queue, &ctx.mem, &ctx.stats, gate, &mut handle) {
        Ok(true) => ctx.notify_guest(index),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!("virtio queue {index} is unusable ({e}); the device needs a reset");
            ctx.interrupt.set_needs_reset();
        }
    }
}

/// The loop of [`drain`] with a gate; true if a chain was put on the used ring.
fn take_while_open(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    stats: &WorkerStats,
    gate: &mut Gate,
    handle: &mut impl FnMut(&GuestMemoryMmap, Chain<'_>) -> Taken,
) -> Result<bool, virtio_queue::Error> {
    let mut used_any = false;
    loop {
        q.disable_notification(mem)?;
        while !gate.is_closed() {
            // One chain at a time: the next stays in the ring if this one closes the gate.
            let Some(chain) = q.iter(mem)?.next() else {
                break;
            };
            stats.chains.fetch_add(1, Ordering::Relaxed);
            let head = chain.head_index();
            let taken = handle(mem, chain);
            if let Some(len) = taken.used {
                q.add_used(mem, head, len)?;
                used_any = true;
            }
            gate.charge(taken.bytes);
        }
        // Closed: notifications stay off until the timer reopens the gate.
        if gate.is_closed() || !q.enable_notification(mem)? {
            return Ok(used_any);
        }
    }
}
