//! The io_uring engine (raw images): reads, writes and flushes are submitted with the guest
//! buffers as iovecs and complete out of order; the ring signals completions on an eventfd
//! the worker waits on. At most one request per slot (the queue size) is in flight; what
//! cannot be submitted (no free slot, O_DIRECT buffers that are not aligned, GET_ID,
//! discard, write zeroes, errors) runs synchronously as in the thread engine. A drive with
//! a rate limiter is charged as requests are taken and submitted, and stops taking them
//! while the limiter's timer (an extra descriptor after the completion eventfd) is
//! pending; what is in flight completes meanwhile.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring, Probe};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::poll::PollContext;

use super::disk::{Bounce, Disk, IoVecs, IOV_MAX};
use super::engine_thread;
use super::limit::{self, Gate, SharedLimiter, Taken};
use super::request::{self, Limits, Op, Parsed, Request, SECTOR_SHIFT, S_IOERR, S_OK};
use super::GuestMemoryMmap;
use crate::virtio::worker::{ExtraFds, QueueHandler, WorkerCtx};

/// Extra descriptors: the ring's completion eventfd, then the limiter's (if any).
const FD_COMPLETIONS: usize = 0;
const FD_LIMITER: usize = 1;

const OPCODES: [u8; 3] = [
    opcode::Readv::CODE,
    opcode::Writev::CODE,
    opcode::Fsync::CODE,
];

/// Checks that this kernel (and any seccomp filter) lets us use io_uring for block I/O.
pub(crate) fn probe() -> io::Result<()> {
    let ring = IoUring::new(2)?;
    check_opcodes(&ring)
}

fn check_opcodes(ring: &IoUring) -> io::Result<()> {
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p)?;
    if OPCODES.iter().all(|&c| p.is_supported(c)) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks readv, writev or fsync",
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
}

/// A request the kernel owns until its completion is reaped.
struct InFlight {
    queue: usize,
    head: u16,
    req: Request,
    kind: Kind,
    offset: u64,
    len: u64,
    /// The iovec array the SQE points to (its heap buffer never moves while in flight);
    /// `None` for a flush.
    iovs: Option<IoVecs>,
}

pub(crate) struct UringHandler {
    disk: Arc<Disk>,
    fd: RawFd,
    limits: Limits,
    ring: IoUring,
    evt: EventFd,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Slots pushed to the submission queue that the kernel has not consumed, oldest first.
    unsubmitted: VecDeque<usize>,
    bounce: Bounce,
    /// io_uring_enter failed for good: submit nothing more, run everything synchronously.
    broken: bool,
    gate: Option<Gate>,
}

impl UringHandler {
    /// A ring with `entries` slots (the queue size) over `disk`, a raw image.
    pub(crate) fn new(
        disk: Arc<Disk>,
        limits: Limits,
        entries: u16,
        limiter: Option<SharedLimiter>,
    ) -> io::Result<Self> {
        let fd = disk.raw_fd().ok_or_else(|| {
            io::Error::new(io::ErrorKind::Unsupported, "io_uring needs a raw image")
        })?;
        let ring = IoUring::new(u32::from(entries).next_power_of_two())?;
        check_opcodes(&ring)?;
        let evt = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(evt.as_raw_fd())?;
        let n = usize::from(entries);
        Ok(UringHandler {
            disk,
            fd,
            limits,
            ring,
            evt,
            slots: (0..n).map(|_| None).collect(),
            free: (0..n).rev().collect(),
            unsubmitted: VecDeque::new(),
            bounce: Bounce::default(),
            broken: false,
            gate: limiter.map(|l| Gate::new(l, FD_LIMITER)).transpose()?,
        })
    }

    /// Takes what queue `index` holds, as far as the limiter lets it, and submits it.
    fn serve(&mut self, index: usize, ctx: &mut WorkerCtx) {
        // Out of `self` while the closure borrows the rest of it.
        let mut gate = self.gate.take();
        limit::drain(ctx, index, gate.as_mut(), |mem, chain| {
            let head = chain.head_index();
            let parsed = request::parse(mem, chain, &self.limits);
            let bytes = parsed.data_bytes();
            let used = match parsed {
                Parsed::Ok(req) => match self.start(mem, index, head, req) {
                    Ok(()) => None,
                    Err(req) => Some(engine_thread::run(&self.disk, mem, &req, &mut self.bounce)),
                },
                other => Some(engine_thread::reject(&self.disk, mem, other)),
            };
            Taken { used, bytes }
        });
        self.gate = gate;
        self.submit(ctx);
    }

    /// Requests the kernel still owns.
    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Pushes `req` to the submission queue, or hands it back to be run synchronously.
    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: usize,
        head: u16,
        req: Request,
    ) -> Result<(), Request> {
        if self.broken {
            return Err(req);
        }
        let Some(&slot) = self.free.last() else {
            return Err(req);
        };
        let (kind, offset, len, iovs) = match &req.op {
            Op::Read { sector, data, len } | Op::Write { sector, data, len } => {
                let into_guest = matches!(req.op, Op::Read { .. });
                let Some(iovs) = self.disk.direct_iovecs(mem, data, into_guest) else {
                    return Err(req);
                };
                if iovs.len() > IOV_MAX {
                    return Err(req);
                }
                let kind = if matches!(req.op, Op::Read { .. }) {
                    Kind::Read
                } else {
                    Kind::Write
                };
                (kind, sector << SECTOR_SHIFT, *len, Some(iovs))
            }
            Op::Flush if !self.disk.read_only() => (Kind::Flush, 0, 0, None),
            _ => return Err(req),
        };
        let fd = types::Fd(self.fd);
        let entry = match (&iovs, kind) {
            (Some(v), Kind::Read) => opcode::Readv::new(fd, v.as_ptr(), v.len() as u32)
                .offset(offset)
                .build(),
            (Some(v), Kind::Write) => opcode::Writev::new(fd, v.as_ptr(), v.len() as u32)
                .offset(offset)
                .build(),
            _ => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(slot as u64);
        // The slot holds the iovecs before the kernel can see the entry.
        self.free.pop();
        self.slots[slot] = Some(InFlight {
            queue,
            head,
            req,
            kind,
            offset,
            len,
            iovs,
        });
        // SAFETY: the entry's iovec array belongs to `iovs`, which was moved into slot
        // `slot` above (moving it left the array in place) and stays there, unchanged,
        // until the completion for `slot` is reaped: by `reap`, or by `Drop`, which waits
        // for every completion however the handler ends. The buffers it describes are
        // guest memory that vm-memory resolved inside guest memory, kept mapped by `iovs`.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.free.push(slot);
            return match self.slots[slot].take() {
                Some(f) => Err(f.req),
                None => unreachable!("slot {slot} was filled above"),
            };
        }
        self.unsubmitted.push_back(slot);
        Ok(())
    }

    /// Hands the pushed entries to the kernel. If io_uring_enter fails for good, the
    /// entries the kernel did not take run synchronously and io_uring is not used again.
    fn submit(&mut self, ctx: &mut WorkerCtx) {
        while !self.unsubmitted.is_empty() && !self.broken {
            match self.ring.submit() {
                Ok(n) => {
                    let n = n.min(self.unsubmitted.len());
                    self.unsubmitted.drain(..n);
                    if n == 0 {
                        // The kernel took nothing and said nothing: do not spin.
                        self.give_up(ctx, "io_uring_enter consumed no entries".into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.give_up(ctx, e.to_string()),
            }
        }
    }

    fn give_up(&mut self, ctx: &mut WorkerCtx, why: String) {
        tracing::warn!(
            "{}: io_uring submission failed ({why}); continuing with synchronous I/O",
            self.disk.path().display()
        );
        self.broken = true;
        let mut touched = Vec::new();
        while let Some(slot) = self.unsubmitted.pop_front() {
            let Some(f) = self.slots[slot].take() else {
                continue;
            };
            self.free.push(slot);
            let used = engine_thread::run(&self.disk, &ctx.mem, &f.req, &mut self.bounce);
            ctx.complete(f.queue, f.head, used);
            if !touched.contains(&f.queue) {
                touched.push(f.queue);
            }
        }
        for q in touched {
            ctx.notify_guest(q);
        }
    }

    /// Completes every request whose completion is in the ring; returns how many.
    fn reap(&mut self, ctx: &mut WorkerCtx) -> usize {
        let mut touched = Vec::new();
        let mut count = 0;
        loop {
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            if done.is_empty() {
                break;
            }
            for (slot, res) in done {
                let Some(f) = usize::try_from(slot)
                    .ok()
                    .and_then(|s| self.slots.get_mut(s))
                    .and_then(Option::take)
                else {
                    continue;
                };
                self.free.push(slot as usize);
                count += 1;
                let used = self.finish(&ctx.mem, f.kind, f.offset, f.len, f.iovs, &f.req, res);
                ctx.complete(f.queue, f.head, used);
                if !touched.contains(&f.queue) {
                    touched.push(f.queue);
                }
            }
        }
        for q in touched {
            ctx.notify_guest(q);
        }
        count
    }

    /// Turns a completion into a status byte (finishing a short transfer synchronously);
    /// returns the used length.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        mem: &GuestMemoryMmap,
        kind: Kind,
        offset: u64,
        len: u64,
        iovs: Option<IoVecs>,
        req: &Request,
        res: i32,
    ) -> u32 {
        let fail = |e: io::Error| {
            self.disk
                .log_failure(&format_args!("{kind:?} at offset {offset:#x}: {e}"));
            S_IOERR
        };
        let code = if res < 0 {
            fail(io::Error::from_raw_os_error(-res))
        } else if let (Some(mut iovs), true) = (iovs, (res as u64) < len) {
            iovs.advance(res as usize);
            let rest = match self.disk.raw_file() {
                Some(f) => iovs.rw_all(f.as_fd(), offset + res as u64, kind == Kind::Write),
                None => Err(io::ErrorKind::Unsupported.into()),
            };
            match rest {
                Ok(()) => S_OK,
                Err(e) => fail(e),
            }
        } else {
            S_OK
        };
        let written = if kind == Kind::Read && code == S_OK {
            len
        } else {
            0
        };
        engine_thread::finish(mem, req.status, code, written)
    }

    /// Blocks until a completion may be available.
    fn wait(&mut self) {
        if !self.broken {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
                Err(e) => {
                    tracing::warn!("io_uring wait failed ({e}); polling its eventfd");
                    self.broken = true;
                }
            }
        }
        wait_readable(&self.evt);
        let _ = self.evt.read();
    }

    /// Waits for (and completes) every request in flight. Tests use it to make the engine
    /// synchronous without timing.
    pub(crate) fn wait_idle(&mut self, ctx: &mut WorkerCtx) {
        self.submit(ctx);
        while self.in_flight() > 0 {
            if self.reap(ctx) == 0 {
                self.wait();
            }
        }
    }
}

/// Blocks until `evt` is readable (or the wait fails: the caller looks again).
fn wait_readable(evt: &EventFd) {
    let waited = PollContext::<u32>::new().and_then(|p| {
        p.add(evt, 0)?;
        p.wait().map(|_| ())
    });
    if let Err(e) = waited {
        tracing::warn!("cannot wait for io_uring completions: {e}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

impl Drop for UringHandler {
    /// Waits for the kernel to finish every request it still holds, whatever ended the
    /// handler (a stop completes them first; a panic leaves them): their iovecs point into
    /// guest memory and must outlive the kernel's use of them.
    fn drop(&mut self) {
        while self.slots.iter().any(Option::is_some) {
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for d in &done {
                let Some(f) = usize::try_from(*d)
                    .ok()
                    .and_then(|s| self.slots.get_mut(s))
                    .and_then(Option::take)
                else {
                    continue;
                };
                self.free.push(*d as usize);
                tracing::debug!(
                    "{}: request on queue {} dropped unanswered (the handler ended)",
                    self.disk.path().display(),
                    f.queue
                );
            }
            self.unsubmitted.retain(|&s| self.slots[s].is_some());
            if !done.is_empty() {
                continue;
            }
            if self.broken {
                if self.slots.iter().flatten().count() == self.unsubmitted.len() {
                    // What is left never reached the kernel; it dies with the ring.
                    break;
                }
                wait_readable(&self.evt);
                let _ = self.evt.read();
            } else {
                match self.ring.submit_and_wait(1) {
                    Ok(n) => {
                        let n = n.min(self.unsubmitted.len());
                        self.unsubmitted.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => self.broken = true,
                }
            }
        }
    }
}

impl QueueHandler for UringHandler {
    fn thread_kind(&self) -> seccomp::ThreadKind {
        seccomp::ThreadKind::BlockUring
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.evt.as_raw_fd()];
        fds.extend(self.gate.iter().flat_map(Gate::extra_fds));
        fds
    }

    fn set_extra_fds(&mut self, fds: ExtraFds) {
        if let Some(g) = &mut self.gate {
            g.set_fds(fds);
        }
    }

    fn queue_notified(&mut self, index: usize, ctx: &mut WorkerCtx) {
        self.serve(index, ctx);
    }

    fn extra_ready(&mut self, which: usize, ctx: &mut WorkerCtx) {
        if which == FD_COMPLETIONS {
            let _ = self.evt.read();
            self.reap(ctx);
            self.submit(ctx);
            return;
        }
        let Some(g) = &mut self.gate else {
            return;
        };
        if g.ready(which) {
            for index in 0..ctx.queues.len() {
                self.serve(index, ctx);
            }
        }
    }

    fn quiesce(&mut self, ctx: &mut WorkerCtx) {
        // Paused, neither the kernel nor the used ring may change guest memory.
        self.wait_idle(ctx);
    }

    fn stop(&mut self, ctx: &mut WorkerCtx) {
        // The kernel must be done with guest memory before the worker lets go of it. The
        // requests complete normally (the driver is resetting the device or the VM ends).
        self.wait_idle(ctx);
    }
}
