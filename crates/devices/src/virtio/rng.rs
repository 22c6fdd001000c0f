//! virtio-rng (virtio 1.2, section 5.4): one queue of device-writable buffers that the
//! device fills with bytes from the host's `getrandom(2)`.

use std::sync::Arc;

use vm_memory::{Bytes, GuestMemoryBackend};

use super::worker::{Chain, QueueHandler, WorkerCtx, WorkerSlot};
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
    worker: WorkerSlot,
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
        self.worker
            .start("virtio-rng", RngHandler::default(), mem, interrupt, queues)?;
        Ok(())
    }

    fn reset(&mut self) {
        self.worker.retire();
    }

    fn worker_slot(&self) -> Option<&WorkerSlot> {
        Some(&self.worker)
    }
}

#[derive(Default)]
struct RngHandler {
    buf: Vec<u8>,
}

impl QueueHandler for RngHandler {
    fn thread_kind(&self) -> seccomp::ThreadKind {
        seccomp::ThreadKind::Rng
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_util::{guest_memory, wait_readable, DriverQueue};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const MEM: usize = 0x40_0000;

    /// Runs the device on the chains `build` publishes and returns the used elements.
    fn run(
        build: impl FnOnce(&GuestMemoryMmap, &mut DriverQueue) -> u16,
    ) -> (GuestMemoryMmap, Vec<(u32, u32)>) {
        let mem = guest_memory(MEM);
        let mut dq = DriverQueue::new(16, 0x1_0000);
        let chains = build(&mem, &mut dq);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let notify = EventFd::new(0).unwrap();
        let mut rng = Rng::new();
        rng.activate(
            mem.clone(),
            interrupt.clone(),
            vec![ActiveQueue {
                queue: dq.device_queue(true),
                notify: notify.try_clone().unwrap(),
            }],
            features::VERSION_1,
        )
        .unwrap();
        notify.write(1).unwrap();
        // Block until the device has put everything on the used ring (poll on the irq).
        while dq.used_idx(&mem) != chains {
            wait_readable(&irq);
        }
        rng.reset();
        let used = (0..chains).map(|i| dq.used_elem(&mem, i)).collect();
        (mem, used)
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes() {
        let (mem, used) = run(|mem, dq| {
            let h = dq.chain(mem, 0, &[(0x10_0000, 4096, true), (0x20_0000, 100, true)]);
            dq.publish(mem, h);
            1
        });
        assert_eq!(used, vec![(0, 4196)]);
        let mut a = vec![0u8; 4096];
        mem.read_slice(&mut a, GuestAddress(0x10_0000)).unwrap();
        assert!(a.iter().filter(|&&b| b == 0).count() < 100, "looks random");
        let mut after = [0u8; 16];
        mem.read_slice(&mut after, GuestAddress(0x20_0000 + 100))
            .unwrap();
        assert_eq!(after, [0; 16], "nothing written past the buffer");
    }

    #[test]
    fn hostile_chains_get_short_or_empty_answers() {
        let (mem, used) = run(|mem, dq| {
            // Read-only buffer: nothing written.
            let a = dq.chain(mem, 0, &[(0x10_0000, 64, false)]);
            // Outside guest memory: nothing written.
            let b = dq.chain(mem, 1, &[(MEM as u64 - 8, 64, true)]);
            // A loop: 2 -> 3 -> 2; bounded by the queue size, then dropped by the iterator.
            dq.set_desc(
                mem,
                2,
                0x11_0000,
                8,
                crate::virtio::test_util::WRITE | crate::virtio::test_util::NEXT,
                3,
            );
            dq.set_desc(
                mem,
                3,
                0x11_0008,
                8,
                crate::virtio::test_util::WRITE | crate::virtio::test_util::NEXT,
                2,
            );
            // Larger than the per-request cap: filled to the cap.
            let d = dq.chain(mem, 4, &[(0x20_0000, 1 << 20, true)]);
            for h in [a, b, 2, d] {
                dq.publish(mem, h);
            }
            4
        });
        assert_eq!(used[0], (0, 0));
        assert_eq!(used[1], (1, 0));
        assert_eq!(used[2].0, 2);
        assert!(
            used[2].1 <= 16 * 8,
            "a looping chain is cut at the queue size"
        );
        assert_eq!(used[3], (4, MAX_BYTES_PER_REQUEST as u32));
        let mut ro = [0u8; 64];
        mem.read_slice(&mut ro, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(ro, [0; 64]);
    }

    #[test]
    fn an_impossible_available_index_marks_the_device_as_needing_reset() {
        let mem = guest_memory(MEM);
        let mut dq = DriverQueue::new(16, 0x1_0000);
        dq.set_avail_idx(&mem, 100); // 100 chains "available" in a 16-entry ring
        let irq = EventFd::new(0).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let notify = EventFd::new(0).unwrap();
        let mut rng = Rng::new();
        let queue = ActiveQueue {
            queue: dq.device_queue(false),
            notify: notify.try_clone().unwrap(),
        };
        rng.activate(
            mem.clone(),
            interrupt.clone(),
            vec![queue],
            features::VERSION_1,
        )
        .unwrap();
        notify.write(1).unwrap();
        irq.read().unwrap(); // blocks until the worker signals
        assert!(interrupt.needs_reset());
        assert_eq!(
            interrupt.status() & crate::virtio::interrupt_status::CONFIG_CHANGE,
            crate::virtio::interrupt_status::CONFIG_CHANGE
        );
        assert_eq!(dq.used_idx(&mem), 0, "nothing was consumed");
        rng.reset();
    }
}
