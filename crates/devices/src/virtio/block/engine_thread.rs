//! The thread engine: every request runs to completion on the worker thread, with
//! synchronous system calls (for raw images straight between the file and guest memory).
//! The io_uring engine uses [`run`], [`reject`] and [`finish`] for what it does not
//! submit. A drive with a rate limiter waits on the limiter's descriptors, its only extra
//! ones.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::disk::{Bounce, Disk, IoError};
use super::limit::{self, Gate, SharedLimiter, Taken};
use super::request::{self, Limits, Op, Parsed, Request, ID_BYTES, S_IOERR, S_OK};
use super::GuestMemoryMmap;
use crate::virtio::worker::{Chain, ExtraFds, QueueHandler, WorkerCtx};

/// Where the limiter's descriptors start among the extra descriptors.
const FD_LIMITER: usize = 0;

pub(crate) struct ThreadHandler {
    disk: Arc<Disk>,
    limits: Limits,
    bounce: Bounce,
    gate: Option<Gate>,
}

impl ThreadHandler {
    pub(crate) fn new(
        disk: Arc<Disk>,
        limits: Limits,
        limiter: Option<SharedLimiter>,
    ) -> io::Result<Self> {
        Ok(ThreadHandler {
            disk,
            limits,
            bounce: Bounce::default(),
            gate: limiter.map(|l| Gate::new(l, FD_LIMITER)).transpose()?,
        })
    }

    /// Serves what queue `index` holds, as far as the limiter lets it.
    fn serve(&mut self, index: usize, ctx: &mut WorkerCtx) {
        let ThreadHandler {
            disk,
            limits,
            bounce,
            gate,
        } = self;
        limit::drain(ctx, index, gate.as_mut(), |mem, chain| {
            process(disk, limits, mem, chain, bounce)
        });
    }
}

impl QueueHandler for ThreadHandler {
    fn thread_kind(&self) -> seccomp::ThreadKind {
        seccomp::ThreadKind::Block
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        self.gate.iter().flat_map(Gate::extra_fds).collect()
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
        let Some(g) = &mut self.gate else {
            return;
        };
        if g.ready(which) {
            for index in 0..ctx.queues.len() {
                self.serve(index, ctx);
            }
        }
    }
}

/// Parses and executes one chain.
fn process(
    disk: &Disk,
    limits: &Limits,
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    bounce: &mut Bounce,
) -> Taken {
    let parsed = request::parse(mem, chain, limits);
    let bytes = parsed.data_bytes();
    let used = match parsed {
        Parsed::Ok(req) => run(disk, mem, &req, bounce),
        other => reject(disk, mem, other),
    };
    Taken {
        used: Some(used),
        bytes,
    }
}

/// Answers a chain that [`request::parse`] refused; returns the used length.
pub(crate) fn reject(disk: &Disk, mem: &GuestMemoryMmap, parsed: Parsed) -> u32 {
    match parsed {
        Parsed::Ok(_) => 0,
        Parsed::Reject { status, code, why } => {
            tracing::debug!("{}: bad request: {why}", disk.path().display());
            finish(mem, status, code, 0)
        }
        Parsed::Drop { why } => {
            tracing::debug!("{}: unusable chain: {why}", disk.path().display());
            0
        }
    }
}

/// Executes a valid request synchronously; returns the used length.
pub(crate) fn run(disk: &Disk, mem: &GuestMemoryMmap, req: &Request, bounce: &mut Bounce) -> u32 {
    let (code, written) = match execute(disk, mem, &req.op, bounce) {
        Ok(written) => (S_OK, written),
        Err(e) => {
            disk.log_failure(&e);
            (S_IOERR, 0)
        }
    };
    finish(mem, req.status, code, written)
}

/// Does the I/O of `op`; returns the data bytes written into the chain.
pub(crate) fn execute(
    disk: &Disk,
    mem: &GuestMemoryMmap,
    op: &Op,
    bounce: &mut Bounce,
) -> Result<u64, IoError> {
    match op {
        Op::Read { sector, data, len } => {
            disk.read(mem, *sector, data, *len, bounce)?;
            Ok(*len)
        }
        Op::Write { sector, data, len } => {
            disk.write(mem, *sector, data, *len, bounce)?;
            Ok(0)
        }
        Op::Flush => {
            disk.flush()?;
            Ok(0)
        }
        Op::GetId { data, len } => {
            let n = (*len).min(ID_BYTES as u64) as usize;
            if !request::write_stream(mem, data, 0, &disk.id()[..n]) {
                return Err(IoError::GuestMemory);
            }
            Ok(n as u64)
        }
        Op::Discard(ranges) => {
            for r in ranges {
                disk.discard(r.sector, r.sectors)?;
            }
            Ok(0)
        }
        Op::WriteZeroes(ranges) => {
            for r in ranges {
                disk.write_zeroes(r.sector, r.sectors, r.unmap, bounce)?;
            }
            Ok(0)
        }
    }
}

/// Writes the status byte; returns the used length (`written` data bytes and the status on
/// success, the status alone on failure, 0 if the status byte cannot be written).
pub(crate) fn finish(mem: &GuestMemoryMmap, status: GuestAddress, code: u8, written: u64) -> u32 {
    if mem.write_obj(code, status).is_err() {
        return 0;
    }
    if code == S_OK {
        request::used_len(written)
    } else {
        1
    }
}
