//! The thread engine: every request runs to completion on the worker thread, with
//! synchronous system calls (for raw images straight between the file and guest memory).
//! The io_uring engine uses [`process`] and [`execute`] for what it does not submit.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::disk::{Bounce, Disk, IoError};
use super::request::{self, Limits, Op, Parsed, Request, ID_BYTES, S_IOERR, S_OK};
use super::GuestMemoryMmap;
use crate::virtio::worker::{Chain, QueueHandler, WorkerCtx};

pub(crate) struct ThreadHandler {
    disk: Arc<Disk>,
    limits: Limits,
    bounce: Bounce,
}

impl ThreadHandler {
    pub(crate) fn new(disk: Arc<Disk>, limits: Limits) -> Self {
        ThreadHandler {
            disk,
            limits,
            bounce: Bounce::default(),
        }
    }
}

impl QueueHandler for ThreadHandler {
    fn queue_notified(&mut self, index: usize, ctx: &mut WorkerCtx) {
        let ThreadHandler {
            disk,
            limits,
            bounce,
        } = self;
        ctx.drain_queue(index, |mem, chain| {
            Some(process(disk, limits, mem, chain, bounce))
        });
    }
}

/// Parses and executes one chain; returns the used length.
pub(crate) fn process(
    disk: &Disk,
    limits: &Limits,
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    bounce: &mut Bounce,
) -> u32 {
    match request::parse(mem, chain, limits) {
        Parsed::Ok(req) => run(disk, mem, &req, bounce),
        other => reject(disk, mem, other),
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
