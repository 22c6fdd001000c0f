//! Virtio devices (virtio 1.x) and their MMIO transport.
//!
//! A device implements [`VirtioDevice`]: it says what it is (type, features, queue sizes,
//! config space) and, once the driver has set it up, is *activated* with its queues, each
//! with the eventfd the guest's notifications arrive on, guest memory and an
//! [`Interrupt`] to signal the guest through. Activated devices do their work on their
//! own threads, never on a vCPU thread. [`mmio::MmioTransport`] is the register interface
//! the guest driver talks to.

pub mod balloon;
pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vhost_net;
pub mod vsock;
pub mod worker;

#[cfg(test)]
mod mmio_worker_tests;

#[cfg(test)]
pub(crate) mod test_util;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as virtio devices see it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Device type ids (virtio 1.2, section 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device (vsock).
    pub const VSOCK: u32 = 19;
    /// Traditional memory balloon.
    pub const BALLOON: u32 = 5;
}

/// Feature bits common to every device (virtio 1.2, section 6).
pub mod features {
    /// The device complies with virtio 1.x (required of every device here).
    pub const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    /// Indirect descriptor tables.
    pub const RING_INDIRECT_DESC: u64 =
        1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
}

/// Interrupt status bits (the MMIO `InterruptStatus` register).
pub mod interrupt_status {
    /// A used buffer was added to a queue.
    pub const USED_RING: u32 = 1;
    /// The configuration (or the device status, e.g. NEEDS_RESET) changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// The device side of a device's interrupt line, shared between the transport (which the
/// guest reads and acknowledges through) and the device's worker threads.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    /// `InterruptStatus` shows USED_RING whatever was acknowledged (see
    /// [`Interrupt::set_sticky_used_ring`]).
    sticky_used_ring: AtomicBool,
    evt: EventFd,
}

impl Interrupt {
    /// An interrupt raised by writing `evt` (an irqfd under KVM).
    pub fn new(evt: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            sticky_used_ring: AtomicBool::new(false),
            evt,
        }
    }

    /// The eventfd the interrupt is raised through.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }

    fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("cannot raise a virtio interrupt: {e}");
        }
    }

    /// Tells the driver that used buffers are waiting.
    pub fn signal_used_queue(&self) {
        self.raise(interrupt_status::USED_RING);
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(interrupt_status::CONFIG_CHANGE);
    }

    /// Marks the device as broken by the driver (DEVICE_NEEDS_RESET in its status) and
    /// tells the driver. A device does this when the guest hands it a queue it cannot use.
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config_change();
    }

    /// Whether [`Interrupt::set_needs_reset`] was called since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        let sticky = if self.sticky_used_ring.load(Ordering::SeqCst) {
            interrupt_status::USED_RING
        } else {
            0
        };
        self.status.load(Ordering::SeqCst) | sticky
    }

    /// While `on`, `InterruptStatus` reads with USED_RING set, acknowledged or not. For a
    /// device whose used-buffer interrupts are raised by someone who cannot set the bit: the
    /// kernel's vhost writes the irqfd directly. The driver then looks at its used rings on
    /// every interrupt of the device, which costs a scan and is otherwise harmless (a
    /// driver must cope with an interrupt that brought nothing new anyway).
    pub fn set_sticky_used_ring(&self, on: bool) {
        self.sticky_used_ring.store(on, Ordering::SeqCst);
    }

    /// The `InterruptACK` register: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Puts back a saved `InterruptStatus` and NEEDS_RESET flag (a snapshot restore); the
    /// interrupt is raised again if bits are pending, as the guest had not seen them.
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
        if status != 0 {
            let _ = self.evt.write(1);
        }
    }

    /// Device reset: no pending interrupt, no pending NEEDS_RESET, no sticky USED_RING.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        self.sticky_used_ring.store(false, Ordering::SeqCst);
    }
}

/// A queue the driver set up, handed to the device at activation, with the eventfd its
/// notifications arrive on.
#[derive(Debug)]
pub struct ActiveQueue {
    /// The queue (addresses, size, event-idx setting) as the driver configured it.
    pub queue: Queue,
    /// Written (by KVM's ioeventfd, or by the transport) when the driver notifies.
    pub notify: EventFd,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not set up a queue the device needs.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// Host resources for the device's worker.
    #[error("cannot start the device worker: {0}")]
    Worker(#[from] std::io::Error),
}

/// A boxed device is a device (a transport may hold any device type-erased).
impl<D: VirtioDevice + ?Sized> VirtioDevice for Box<D> {
    fn device_type(&self) -> u32 {
        (**self).device_type()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        (**self).queue_max_sizes()
    }
    fn avail_features(&self) -> u64 {
        (**self).avail_features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        (**self).read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        (**self).write_config(offset, data)
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: std::sync::Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        (**self).activate(mem, interrupt, queues, acked_features)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn worker_slot(&self) -> Option<&worker::WorkerSlot> {
        (**self).worker_slot()
    }
    fn pause(&mut self) -> Result<(), worker::WorkerError> {
        (**self).pause()
    }
    fn resume(&mut self) {
        (**self).resume()
    }
    fn worker_stats(&self) -> worker::WorkerCounts {
        (**self).worker_stats()
    }
    fn queue_states(&self) -> Result<Vec<virtio_queue::QueueState>, String> {
        (**self).queue_states()
    }
    fn device_state(&self) -> Vec<u8> {
        (**self).device_state()
    }
    fn restore_device_state(&mut self, state: &[u8]) -> Result<(), String> {
        (**self).restore_device_state(state)
    }
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// The device type id (see [`device_type`]).
    fn device_type(&self) -> u32;

    /// A short name for logs and thread names ("blk0", "rng").
    fn name(&self) -> &str;

    /// The maximum size of each of the device's queues (the length is the queue count).
    fn queue_max_sizes(&self) -> &[u16];

    /// The features the device offers, including [`features::VERSION_1`].
    fn avail_features(&self) -> u64;

    /// Reads the device configuration space at `offset`. Bytes outside it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space (most devices ignore writes).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// Starts the device on `queues` (every queue of [`VirtioDevice::queue_max_sizes`], in
    /// order) with the features the driver accepted.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: std::sync::Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
    ) -> Result<(), ActivateError>;

    /// Stops the device's work and returns it to its state before activation. Called on a
    /// driver reset (on the vCPU thread that wrote the status, holding the transport's
    /// lock) and when the VM ends: tell the workers to stop ([`worker::WorkerSlot::retire`])
    /// rather than wait for them, so that a request stuck in slow I/O stalls no vCPU.
    fn reset(&mut self);

    /// The device's one worker, if that is how it works: the defaults of
    /// [`VirtioDevice::pause`], [`VirtioDevice::resume`], [`VirtioDevice::worker_stats`]
    /// and [`VirtioDevice::queue_states`] use it. Devices with several workers override
    /// those instead.
    fn worker_slot(&self) -> Option<&worker::WorkerSlot> {
        None
    }

    /// Stops taking requests once those in flight are done (the VM is pausing). Devices
    /// without a worker have nothing to do.
    fn pause(&mut self) -> Result<(), worker::WorkerError> {
        self.worker_slot().map_or(Ok(()), worker::WorkerSlot::pause)
    }

    /// Continues after [`VirtioDevice::pause`].
    fn resume(&mut self) {
        if let Some(w) = self.worker_slot() {
            w.resume();
        }
    }

    /// The counters of the device's worker.
    fn worker_stats(&self) -> worker::WorkerCounts {
        self.worker_slot()
            .map(worker::WorkerSlot::counts)
            .unwrap_or_default()
    }

    /// The live state of an activated device's queues (its worker has them), for a
    /// snapshot of a paused VM. Devices without a worker keep none.
    fn queue_states(&self) -> Result<Vec<virtio_queue::QueueState>, String> {
        match self.worker_slot() {
            Some(w) => w
                .queue_states()
                .map_err(|e| format!("{}: {e}", self.name())),
            None => Err(format!("{} cannot report its queues", self.name())),
        }
    }

    /// What a snapshot must keep of the device beyond its transport and queues (a
    /// network card's queue pairs in use, a balloon's target), in the device's own
    /// encoding. Read while the VM is paused.
    fn device_state(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Puts back [`VirtioDevice::device_state`] after the restored transport activated the
    /// device again. The bytes come from a file: check them.
    fn restore_device_state(&mut self, state: &[u8]) -> Result<(), String> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}: the snapshot holds {} bytes of device state this device does not keep",
                self.name(),
                state.len()
            ))
        }
    }
}

/// A device's `read_config`: the bytes of `config` at `offset` into `data`, zeros where
/// the read goes past the end (or the offset is out of range).
pub(crate) fn read_config_window(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}
