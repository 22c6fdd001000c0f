//! virtio-rng (virtio 1.2, section 5.4): one queue of device-writable buffers that the
//! device fills with bytes from the host's `getrandom(2)`.

use std::sync::Arc;

use vm_memory::{Bytes, GuestMemoryBackend};

use super::worker::{Chain, QueueHandler, Worker, WorkerCtx};
use super::{
    device_type, features, ActivateError, ActiveQueue, GuestMemoryMmap, Interrupt, VirtioDevice,
};

/// The size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// The most bytes handed out per request: larger buffers are filled only this far (the
/// driver sees how much was written), so one request cannot keep the worker busy long.
pub const MAX_BYTES_PER_REQUEST: usize = 64 << 10;

/// The entropy device.
#[derive(Debug, Default)]
pub struct Rng {
    worker: Option<Worker>,
}

impl Rng {
    /// A new, inactive entropy device.
    pub fn new() -> Self {
        Rng::default()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn name(&self) -> &str {
        "rng"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        self.worker = Some(Worker::spawn(
            "virtio-rng",
            RngHandler::default(),
            mem,
            interrupt,
            queues,
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }
}

#[derive(Default)]
struct RngHandler {
    buf: Vec<u8>,
}

impl QueueHandler for RngHandler {
    fn queue_notified(&mut self, index: usize, ctx: &mut WorkerCtx) {
        let buf = &mut self.buf;
        ctx.drain_queue(index, |mem, chain| Some(fill(mem, chain, buf)));
    }
}

/// Fills the writable descriptors of `chain` with random bytes, up to
/// [`MAX_BYTES_PER_REQUEST`]; returns how many were written. Readable descriptors and
/// descriptors outside guest memory end the request (what was written so far counts).
fn fill(mem: &GuestMemoryMmap, chain: Chain<'_>, buf: &mut Vec<u8>) -> u32 {
    let mut written = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            tracing::debug!("virtio-rng: read-only descriptor in a request; ending it");
            break;
        }
        let want = (desc.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
        if want == 0 {
            break;
        }
        if !mem.check_range(desc.addr(), want) {
            tracing::debug!("virtio-rng: descriptor outside guest memory; ending the request");
            break;
        }
        buf.resize(want, 0);
        if getrandom(buf).is_err() || mem.write_slice(buf, desc.addr()).is_err() {
            break;
        }
        written += want;
    }
    written as u32
}

/// Fills `buf` from the kernel's CSPRNG.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which we own
        // mutably; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}
