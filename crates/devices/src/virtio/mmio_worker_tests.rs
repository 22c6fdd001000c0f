//! The transport with a device that runs a real worker: what a guest driver sees when the
//! worker's handler panics (NEEDS_RESET and a configuration-change interrupt), and that a
//! reset written while the handler is stuck in slow work returns at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mmio::{regs, status, MmioTransport};
use super::test_util::{guest_memory, wait_readable, DriverQueue};
use super::worker::{QueueHandler, WorkerCtx, WorkerSlot};
use super::{
    features, interrupt_status, ActivateError, ActiveQueue, GuestMemoryMmap, Interrupt,
    VirtioDevice,
};
use crate::BusDevice;

/// What the handler does with a notification.
#[derive(Clone, Copy)]
enum Mode {
    /// Panics.
    Panic,
    /// Takes this long per notification (a request on a slow disk), then completes the
    /// chains.
    Slow(Duration),
}

struct Handler {
    mode: Mode,
    /// Handler calls begun.
    calls: Arc<AtomicU64>,
}

impl QueueHandler for Handler {
    fn queue_notified(&mut self, index: usize, ctx: &mut WorkerCtx) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.mode {
            Mode::Panic => panic!("a device bug"),
            Mode::Slow(d) => {
                std::thread::sleep(d);
                ctx.drain_queue(index, |_, _| Some(0));
            }
        }
    }
}

struct Device {
    mode: Mode,
    calls: Arc<AtomicU64>,
    worker: WorkerSlot,
}

impl VirtioDevice for Device {
    fn device_type(&self) -> u32 {
        42
    }
    fn name(&self) -> &str {
        "worked"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn avail_features(&self) -> u64 {
        features::VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
        _acked: u64,
    ) -> Result<(), ActivateError> {
        let h = Handler {
            mode: self.mode,
            calls: self.calls.clone(),
        };
        self.worker.start("worked", h, mem, interrupt, queues)?;
        Ok(())
    }
    fn reset(&mut self) {
        self.worker.retire();
    }
    fn worker_slot(&self) -> Option<&WorkerSlot> {
        Some(&self.worker)
    }
}

struct Rig {
    t: MmioTransport<Device>,
    mem: GuestMemoryMmap,
    dq: DriverQueue,
    irq: EventFd,
    calls: Arc<AtomicU64>,
}

fn rd(t: &mut MmioTransport<Device>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport<Device>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

const QUEUE_BASE: u64 = 0x1_0000;

fn rig(mode: Mode) -> Rig {
    let mem = guest_memory(0x10_0000);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let dev = Device {
        mode,
        calls: calls.clone(),
        worker: WorkerSlot::default(),
    };
    let t = MmioTransport::new(dev, mem.clone(), irq.try_clone().unwrap()).unwrap();
    let mut r = Rig {
        t,
        mem,
        dq: DriverQueue::new(16, QUEUE_BASE),
        irq,
        calls,
    };
    r.bring_up();
    r
}

impl Rig {
    /// A driver's set-up, up to DRIVER_OK, with fresh rings.
    fn bring_up(&mut self) {
        self.dq = DriverQueue::new(16, QUEUE_BASE);
        let t = &mut self.t;
        wr(t, regs::STATUS, status::ACKNOWLEDGE);
        wr(t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(t, regs::DRIVER_FEATURES_SEL, 1);
        wr(t, regs::DRIVER_FEATURES, (features::VERSION_1 >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(t, regs::STATUS, s);
        let q = self.dq.device_queue(false);
        use virtio_queue::QueueT;
        wr(t, regs::QUEUE_SEL, 0);
        wr(t, regs::QUEUE_NUM, 16);
        for (reg, addr) in [
            (regs::QUEUE_DESC_LOW, q.desc_table()),
            (regs::QUEUE_AVAIL_LOW, q.avail_ring()),
            (regs::QUEUE_USED_LOW, q.used_ring()),
        ] {
            wr(t, reg, addr as u32);
            wr(t, reg + 4, (addr >> 32) as u32);
        }
        wr(t, regs::QUEUE_READY, 1);
        wr(t, regs::STATUS, s | status::DRIVER_OK);
        assert_eq!(rd(t, regs::STATUS), s | status::DRIVER_OK, "device is live");
    }

    fn submit(&mut self, head: u16) {
        let h = self.dq.chain(&self.mem, head, &[(0x8_0000, 16, true)]);
        self.dq.publish(&self.mem, h);
        wr(&mut self.t, regs::QUEUE_NOTIFY, 0);
    }

    fn wait_calls(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.calls.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "the handler was never called");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn a_panicking_worker_shows_the_driver_needs_reset_and_a_config_interrupt() {
    let mut r = rig(Mode::Panic);
    assert_eq!(rd(&mut r.t, regs::INTERRUPT_STATUS), 0);
    r.submit(0);
    // The guest is interrupted, and what it reads says why.
    wait_readable(&r.irq);
    let st = rd(&mut r.t, regs::STATUS);
    assert_ne!(st & status::DEVICE_NEEDS_RESET, 0, "status {st:#x}");
    assert_ne!(st & status::DRIVER_OK, 0, "the driver's bits stay");
    assert_eq!(
        rd(&mut r.t, regs::INTERRUPT_STATUS),
        interrupt_status::CONFIG_CHANGE
    );
    assert_eq!(r.dq.used_idx(&r.mem), 0, "the request was not completed");
    // A broken device takes no more requests...
    r.submit(1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.calls.load(Ordering::SeqCst), 1);
    // ...until the driver resets it: then everything is clear and it works again.
    wr(
        &mut r.t,
        regs::INTERRUPT_ACK,
        interrupt_status::CONFIG_CHANGE,
    );
    wr(&mut r.t, regs::STATUS, 0);
    assert_eq!(rd(&mut r.t, regs::STATUS), 0);
    assert_eq!(rd(&mut r.t, regs::INTERRUPT_STATUS), 0);
    r.bring_up();
    r.submit(0);
    wait_readable(&r.irq);
    assert_ne!(rd(&mut r.t, regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.calls.load(Ordering::SeqCst), 2, "a new worker was called");
}

#[test]
fn a_reset_does_not_wait_for_a_worker_stuck_in_slow_work() {
    const SLOW: Duration = Duration::from_millis(1500);
    let mut r = rig(Mode::Slow(SLOW));
    r.submit(0);
    r.wait_calls(1);
    let t0 = Instant::now();
    wr(&mut r.t, regs::STATUS, 0);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(200),
        "the reset took {took:?}: the vCPU waited for the handler"
    );
    assert_eq!(rd(&mut r.t, regs::STATUS), 0);
    // The old worker calls no handler for what it still had in hand.
    r.submit(1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.calls.load(Ordering::SeqCst), 1);
    // Once its slow call returns, the old worker puts nothing on the used ring and raises
    // no interrupt: the driver may be reusing that memory.
    std::thread::sleep(SLOW);
    assert_eq!(
        r.dq.used_idx(&r.mem),
        0,
        "the old worker completed after the reset"
    );
    assert!(
        r.irq.read().is_err(),
        "the old worker interrupted after the reset"
    );
    // A new driver: activation joins the old worker (never two on one backend), then the
    // new worker serves the new rings from the start.
    r.bring_up();
    r.submit(0);
    wait_readable(&r.irq);
    assert_eq!(r.dq.used_idx(&r.mem), 1, "the new driver's request");
    assert_eq!(r.calls.load(Ordering::SeqCst), 2);
    // Dropping the transport with a worker in slow work ends it (the VM's end).
    r.submit(2);
    r.wait_calls(3);
    drop(r.t);
}
