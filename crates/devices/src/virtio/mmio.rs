//! The virtio-mmio transport (virtio 1.2, section 4.2, register layout version 2).
//!
//! One 4 KiB window per device: 32-bit registers below [`regs::CONFIG`], the device's
//! configuration space from there. The transport keeps the driver-visible state (feature
//! selection, queue set-up, status) and activates the device when the driver sets
//! DRIVER_OK. Queue notifications go to one eventfd per queue: the VMM registers them as
//! KVM ioeventfds on [`regs::QUEUE_NOTIFY`] (matching the queue index), so a notify costs no
//! exit to user space; a write that does reach the transport (no ioeventfd) is forwarded
//! to the same eventfd.

use std::sync::Arc;

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{features, ActiveQueue, GuestMemoryMmap, Interrupt, VirtioDevice};
use crate::bus::{BusDevice, DeviceAction};

/// The size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Register offsets (virtio 1.2, section 4.2.2).
pub mod regs {
    /// "virt" in little endian.
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Transport version: 2.
    pub const VERSION: u64 = 0x004;
    /// Device type.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor id.
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features, 32 bits selected by DEVICE_FEATURES_SEL.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Which 32 bits of the device features to show.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features, 32 bits selected by DRIVER_FEATURES_SEL.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Which 32 bits of the driver features are written.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue selector.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// The selected queue is ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notification: the value is the queue index.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring address, low 32 bits.
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// Available ring address, high 32 bits.
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// Used ring address, low 32 bits.
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// Used ring address, high 32 bits.
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// Shared memory region selector (no regions here).
    pub const SHM_SEL: u64 = 0x0ac;
    /// Shared memory region length, low 32 bits (all ones: no such region).
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// Shared memory region length, high 32 bits.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// Shared memory region base, low 32 bits.
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// Shared memory region base, high 32 bits.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// Configuration generation counter.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// `MagicValue`: "virt".
pub const MAGIC: u32 = 0x7472_6976;
/// Transport version implemented (virtio 1.x, no legacy).
pub const VERSION: u32 = 2;
/// Vendor id reported to the guest ("FVMM").
pub const VENDOR: u32 = 0x4d4d_5646;

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// A queue as saved in a snapshot (virtio-queue's `QueueState`, with serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// The device's next available-ring index.
    pub next_avail: u16,
    /// The device's next used-ring index.
    pub next_used: u16,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table.
    pub desc_table: u64,
    /// Available ring.
    pub avail_ring: u64,
    /// Used ring.
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(q: QueueSnapshot) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// The transport's state in a snapshot: the driver-visible registers, the interrupt, and
/// the queues (as the device's worker has them when the device is active).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    /// The device type it was saved from (checked on restore).
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Status.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The device was handed its queues.
    pub activated: bool,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// DEVICE_NEEDS_RESET was raised.
    pub needs_reset: bool,
    /// Every queue.
    pub queues: Vec<QueueSnapshot>,
    /// Queues given an invalid set-up.
    pub bad_setup: Vec<bool>,
    /// The device's own state ([`VirtioDevice::device_state`]).
    pub device: Vec<u8>,
}

/// Why a saved transport cannot be put back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    /// Another kind of device.
    #[error("{name}: the snapshot holds a device of type {saved} here, not {have}")]
    DeviceType {
        /// The device.
        name: String,
        /// Saved type.
        saved: u32,
        /// This device's type.
        have: u32,
    },
    /// Another number of queues.
    #[error("{name}: the snapshot has {saved} queues, the device {have}")]
    QueueCount {
        /// The device.
        name: String,
        /// Saved count.
        saved: usize,
        /// This device's count.
        have: usize,
    },
    /// A queue the device cannot take.
    #[error("{name}: saved queue {index} is invalid: {why}")]
    Queue {
        /// The device.
        name: String,
        /// The queue.
        index: usize,
        /// Why.
        why: String,
    },
    /// The device refused its saved queues.
    #[error("{name}: the device cannot be activated with its saved queues")]
    Activation {
        /// The device.
        name: String,
    },
    /// The device refused its saved state.
    #[error("{name}: {why}")]
    DeviceState {
        /// The device.
        name: String,
        /// Why.
        why: String,
    },
    /// The device was busy (its worker did not report its queues).
    #[error("{name}: the device's queues cannot be read: {why}")]
    Busy {
        /// The device.
        name: String,
        /// Why.
        why: String,
    },
}

/// A virtio device behind its MMIO register window.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    notify: Vec<EventFd>,
    queues: Vec<Queue>,
    bad_setup: Vec<bool>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
    notify_exits: u64,
}

impl<D: VirtioDevice> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device", &self.device.name())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish()
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Puts `device` behind a register window; its interrupt is raised on `irq`.
    pub fn new(device: D, mem: GuestMemoryMmap, irq: EventFd) -> std::io::Result<Self> {
        let sizes = device.queue_max_sizes().to_vec();
        let queues = sizes
            .iter()
            .map(|&max| {
                Queue::new(max).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{}: bad queue size {max}: {e}", device.name()),
                    )
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let notify = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            notify,
            bad_setup: vec![false; queues.len()],
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            notify_exits: 0,
        })
    }

    /// How many queue notifications reached the transport (KVM's ioeventfd absorbs them
    /// when registered, so this stays 0 in a VM).
    pub fn notify_exits(&self) -> u64 {
        self.notify_exits
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        self.device.name()
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, to change it (a disk swap); follow with
    /// [`MmioTransport::config_changed`] if its configuration space changed.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The transport's state for a snapshot. The VM must be paused (device workers
    /// paused), so that the queues do not move while they are read.
    pub fn save_state(&mut self) -> Result<TransportState, RestoreError> {
        let name = self.device.name().to_string();
        let queues: Vec<QueueSnapshot> = if self.activated {
            let live = self
                .device
                .queue_states()
                .map_err(|why| RestoreError::Busy { name, why })?;
            live.into_iter().map(QueueSnapshot::from).collect()
        } else {
            self.queues.iter().map(|q| q.state().into()).collect()
        };
        Ok(TransportState {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            queues,
            bad_setup: self.bad_setup.clone(),
            device: if self.activated {
                self.device.device_state()
            } else {
                Vec::new()
            },
        })
    }

    /// Puts a saved state into this (fresh) transport; an activated device is handed its
    /// saved queues again, so it continues where it was. Everything in the state is
    /// checked first: it comes from a file.
    pub fn restore_state(&mut self, s: &TransportState) -> Result<(), RestoreError> {
        let name = self.device.name().to_string();
        if s.device_type != self.device.device_type() {
            return Err(RestoreError::DeviceType {
                name,
                saved: s.device_type,
                have: self.device.device_type(),
            });
        }
        if s.queues.len() != self.queues.len() || s.bad_setup.len() != self.queues.len() {
            return Err(RestoreError::QueueCount {
                name,
                saved: s.queues.len(),
                have: self.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (saved, mine)) in s.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != mine.max_size() {
                return Err(RestoreError::Queue {
                    name,
                    index: i,
                    why: format!(
                        "maximum size {} where the device has {}",
                        saved.max_size,
                        mine.max_size()
                    ),
                });
            }
            let q = Queue::try_from(QueueState::from(*saved)).map_err(|e| RestoreError::Queue {
                name: name.clone(),
                index: i,
                why: e.to_string(),
            })?;
            if s.activated && !q.is_valid(&self.mem) {
                return Err(RestoreError::Queue {
                    name,
                    index: i,
                    why: "its rings are outside guest memory".into(),
                });
            }
            queues.push(q);
        }
        self.reset();
        self.queues = queues;
        self.bad_setup = s.bad_setup.clone();
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.interrupt.restore(s.interrupt_status, s.needs_reset);
        if s.activated && !self.activate() {
            return Err(RestoreError::Activation { name });
        }
        if s.activated {
            self.device
                .restore_device_state(&s.device)
                .map_err(|why| RestoreError::DeviceState { name, why })?;
        } else if !s.device.is_empty() {
            return Err(RestoreError::DeviceState {
                name,
                why: "device state saved for a device that was not active".into(),
            });
        }
        Ok(())
    }

    /// Tells the driver that the device's configuration space changed (a new generation
    /// and a configuration-change interrupt), as after a disk resize.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt.signal_config_change();
        }
    }

    /// The interrupt eventfd (to register as an irqfd).
    pub fn irq_evt(&self) -> &EventFd {
        self.interrupt.evt()
    }

    /// One notification eventfd per queue, in queue order (to register as ioeventfds on
    /// [`regs::QUEUE_NOTIFY`] with the queue index as the data match).
    pub fn notify_evts(&self) -> &[EventFd] {
        &self.notify
    }

    /// The device status register as the guest sees it.
    pub fn status(&self) -> u32 {
        let mut s = self.status;
        if self.interrupt.needs_reset() {
            s |= status::DEVICE_NEEDS_RESET;
        }
        s
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue set-up is allowed before DRIVER_OK on a queue that is not yet ready.
    fn queue_configurable(&mut self) -> Option<&mut Queue> {
        if self.status & status::DRIVER_OK != 0 {
            tracing::debug!(
                "{}: queue set-up after DRIVER_OK ignored",
                self.device.name()
            );
            return None;
        }
        self.selected_queue().filter(|q| !q.ready())
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            regs::MAGIC_VALUE => MAGIC,
            regs::VERSION => VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => VENDOR,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            regs::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS => self.status(),
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => {
                u32::MAX
            }
            regs::CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!(
                    "{}: read of write-only or unknown register {offset:#x}",
                    self.device.name()
                );
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            regs::DRIVER_FEATURES => {
                let negotiating =
                    self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0;
                if !negotiating {
                    tracing::debug!(
                        "{}: driver features written outside negotiation",
                        self.name()
                    );
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {
                        if v != 0 {
                            tracing::debug!("{}: driver set unknown feature bits", self.name());
                            // No such features offered: negotiation must fail.
                            self.driver_features |= 1 << 63;
                        }
                    }
                }
            }
            regs::QUEUE_SEL => self.queue_sel = v,
            regs::QUEUE_NUM => {
                let sel = self.queue_sel as usize;
                if let Some(q) = self.queue_configurable() {
                    // An invalid size (zero, not a power of two, above the maximum) makes
                    // the queue unusable: activation fails rather than guessing a size.
                    let ok = u16::try_from(v).is_ok_and(|n| q.try_set_size(n).is_ok());
                    self.bad_setup[sel] |= !ok;
                }
            }
            regs::QUEUE_READY => {
                if self.status & status::DRIVER_OK != 0 {
                    return;
                }
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            regs::QUEUE_NOTIFY => match self.notify.get(v as usize) {
                Some(evt) => {
                    self.notify_exits += 1;
                    if let Err(e) = evt.write(1) {
                        tracing::warn!("{}: cannot forward a notification: {e}", self.name());
                    }
                }
                None => tracing::debug!("{}: notify of unknown queue {v}", self.name()),
            },
            regs::INTERRUPT_ACK => self.interrupt.ack(v),
            regs::STATUS => self.write_status(v),
            regs::QUEUE_DESC_LOW..=regs::QUEUE_USED_HIGH => self.set_addr(offset, v),
            regs::SHM_SEL => {}
            _ => tracing::debug!(
                "{}: write of read-only or unknown register {offset:#x}",
                self.name()
            ),
        }
    }

    /// One half of a ring address; a misaligned or otherwise refused address makes the
    /// queue unusable (activation fails) instead of leaving the old one in place.
    fn set_addr(&mut self, offset: u64, v: u32) {
        let sel = self.queue_sel as usize;
        let Some(q) = self.queue_configurable() else {
            return;
        };
        let merge = |old: u64| {
            if offset.is_multiple_of(8) {
                (old & !0xffff_ffff) | u64::from(v)
            } else {
                (old & 0xffff_ffff) | (u64::from(v) << 32)
            }
        };
        let result = match offset & !7 {
            regs::QUEUE_DESC_LOW => {
                q.try_set_desc_table_address(GuestAddress(merge(q.desc_table())))
            }
            regs::QUEUE_AVAIL_LOW => {
                q.try_set_avail_ring_address(GuestAddress(merge(q.avail_ring())))
            }
            regs::QUEUE_USED_LOW => q.try_set_used_ring_address(GuestAddress(merge(q.used_ring()))),
            _ => {
                tracing::debug!("{}: write of unknown register {offset:#x}", self.name());
                return;
            }
        };
        self.bad_setup[sel] |= result.is_err();
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & self.status != self.status {
            tracing::debug!(
                "{}: status {v:#x} clears bits of {:#x}; ignored",
                self.name(),
                self.status
            );
            return;
        }
        let new = v & !self.status;
        let mut accepted =
            v & !(status::FEATURES_OK | status::DRIVER_OK | status::DEVICE_NEEDS_RESET);
        if new & status::FEATURES_OK != 0 {
            let offered = self.device.avail_features();
            let ok = self.status & status::DRIVER != 0
                && self.driver_features & !offered == 0
                && self.driver_features & features::VERSION_1 != 0;
            if ok {
                accepted |= status::FEATURES_OK;
            } else {
                tracing::warn!(
                    "{}: driver features {:#x} not acceptable (offered {offered:#x}, VERSION_1 required)",
                    self.name(),
                    self.driver_features
                );
            }
        } else {
            accepted |= self.status & status::FEATURES_OK;
        }
        if new & status::DRIVER_OK != 0 {
            if accepted & status::FEATURES_OK == 0 {
                tracing::warn!("{}: DRIVER_OK without FEATURES_OK; ignored", self.name());
            } else {
                accepted |= status::DRIVER_OK;
                if !self.activate() {
                    self.interrupt.set_needs_reset();
                }
            }
        } else {
            accepted |= self.status & status::DRIVER_OK;
        }
        self.status = accepted;
    }

    /// Hands the queues to the device. False if the queues or the device refuse.
    fn activate(&mut self) -> bool {
        let name = self.device.name().to_string();
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                tracing::warn!("{name}: DRIVER_OK with queue {i} not ready");
                return false;
            }
            if self.bad_setup[i] {
                tracing::warn!("{name}: queue {i} was given an invalid size or ring address");
                return false;
            }
            if !q.is_valid(&self.mem) {
                tracing::warn!(
                    "{name}: queue {i} is invalid (size {}, rings at {:#x}/{:#x}/{:#x} outside guest memory or misaligned)",
                    q.size(),
                    q.desc_table(),
                    q.avail_ring(),
                    q.used_ring()
                );
                return false;
            }
        }
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (q, evt) in self.queues.iter().zip(&self.notify) {
            let mut q = match Queue::try_from(q.state()) {
                Ok(q) => q,
                Err(e) => {
                    tracing::warn!("{name}: queue refused: {e}");
                    return false;
                }
            };
            q.set_event_idx(event_idx);
            let notify = match evt.try_clone() {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!("{name}: cannot clone a notify eventfd: {e}");
                    return false;
                }
            };
            queues.push(ActiveQueue { queue: q, notify });
        }
        match self.device.activate(
            self.mem.clone(),
            self.interrupt.clone(),
            queues,
            self.driver_features,
        ) {
            Ok(()) => {
                tracing::debug!("{name}: activated");
                self.activated = true;
                true
            }
            Err(e) => {
                tracing::error!("{name}: activation failed: {e}");
                false
            }
        }
    }

    /// Device reset (status 0 written, or the VM ends).
    pub fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.bad_setup.fill(false);
        for evt in &self.notify {
            let _ = evt.read();
        }
        self.interrupt.reset();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
    }
}

/// What the VMM does with any virtio device behind its window, whatever its type.
pub trait VirtioTransport: BusDevice {
    /// The device's name ("blk0", "rng").
    fn device_name(&self) -> &str;
    /// Stops the device's work (the VM pauses); in-flight requests complete first.
    fn pause(&mut self) -> Result<(), super::worker::WorkerError>;
    /// Continues after [`VirtioTransport::pause`].
    fn resume(&mut self);
    /// The device's counters.
    fn counts(&self) -> DeviceCounts;
    /// The state for a snapshot ([`MmioTransport::save_state`]).
    fn save(&mut self) -> Result<TransportState, RestoreError>;
    /// Puts a saved state back ([`MmioTransport::restore_state`]).
    fn restore(&mut self, s: &TransportState) -> Result<(), RestoreError>;
}

/// Counters of one virtio device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeviceCounts {
    /// Queue notifications that reached the VMM as MMIO exits (0 with ioeventfd).
    pub notify_exits: u64,
    /// What the device's worker did.
    #[serde(flatten)]
    pub worker: super::worker::WorkerCounts,
}

impl<D: VirtioDevice> VirtioTransport for MmioTransport<D> {
    fn device_name(&self) -> &str {
        self.device.name()
    }

    fn pause(&mut self) -> Result<(), super::worker::WorkerError> {
        if self.activated {
            self.device.pause()
        } else {
            Ok(())
        }
    }

    fn resume(&mut self) {
        if self.activated {
            self.device.resume();
        }
    }

    fn counts(&self) -> DeviceCounts {
        DeviceCounts {
            notify_exits: self.notify_exits,
            worker: self.device.worker_stats(),
        }
    }

    fn save(&mut self) -> Result<TransportState, RestoreError> {
        self.save_state()
    }

    fn restore(&mut self, s: &TransportState) -> Result<(), RestoreError> {
        self.restore_state(s)
    }
}

impl<D: VirtioDevice> Drop for MmioTransport<D> {
    fn drop(&mut self) {
        tracing::info!(
            "virtio {}: {} queue notifications exited to the VMM (0 when KVM's ioeventfd takes them)",
            self.name(),
            self.notify_exits
        );
        if self.activated {
            self.device.reset();
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            self.device.read_config(offset - regs::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::debug!(
                "{}: {}-byte read at {offset:#x}: registers are 32-bit",
                self.name(),
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if offset >= regs::CONFIG {
            self.device.write_config(offset - regs::CONFIG, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return DeviceAction::None;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(b) if offset.is_multiple_of(4) => self.write_reg(offset, u32::from_le_bytes(b)),
            _ => tracing::debug!(
                "{}: {}-byte write at {offset:#x} ignored: registers are 32-bit",
                self.name(),
                data.len()
            ),
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::ActivateError;
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    const MEM_SIZE: usize = 0x10_0000;
    const FEATURE_X: u64 = 1 << 5;

    /// Size, event-idx, descriptor table address.
    type QueueSeen = (u16, bool, u64);

    #[derive(Default)]
    struct Seen {
        activations: Vec<(u64, Vec<QueueSeen>)>,
        resets: usize,
        config_writes: Vec<(u64, Vec<u8>)>,
        /// The queues handed over at the last activation, as the device "runs" them.
        live: Vec<QueueState>,
        /// What `device_state` returns / what `restore_device_state` got.
        device_state: Vec<u8>,
        restored_state: Option<Vec<u8>>,
    }

    struct Fake {
        seen: Arc<Mutex<Seen>>,
        sizes: Vec<u16>,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            42
        }
        fn name(&self) -> &str {
            "fake"
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn avail_features(&self) -> u64 {
            features::VERSION_1 | features::RING_EVENT_IDX | FEATURE_X
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.seen
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            _interrupt: Arc<Interrupt>,
            queues: Vec<ActiveQueue>,
            acked: u64,
        ) -> Result<(), ActivateError> {
            let qs = queues
                .iter()
                .map(|q| {
                    (
                        q.queue.size(),
                        q.queue.event_idx_enabled(),
                        q.queue.desc_table(),
                    )
                })
                .collect();
            let mut seen = self.seen.lock().unwrap();
            seen.activations.push((acked, qs));
            seen.live = queues.iter().map(|q| q.queue.state()).collect();
            Ok(())
        }
        fn reset(&mut self) {
            self.seen.lock().unwrap().resets += 1;
        }
        fn queue_states(&self) -> Result<Vec<QueueState>, String> {
            Ok(self.seen.lock().unwrap().live.clone())
        }
        fn device_state(&self) -> Vec<u8> {
            self.seen.lock().unwrap().device_state.clone()
        }
        fn restore_device_state(&mut self, state: &[u8]) -> Result<(), String> {
            if state == b"bad" {
                return Err("bad state".into());
            }
            self.seen.lock().unwrap().restored_state = Some(state.to_vec());
            Ok(())
        }
    }

    fn transport(sizes: &[u16]) -> (MmioTransport<Fake>, Arc<Mutex<Seen>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let dev = Fake {
            seen: seen.clone(),
            sizes: sizes.to_vec(),
        };
        let t = MmioTransport::new(dev, mem, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        (t, seen)
    }

    fn rd(t: &mut MmioTransport<Fake>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport<Fake>, off: u64, v: u32) {
        assert_eq!(t.write(off, &v.to_le_bytes()), DeviceAction::None);
    }

    fn negotiate(t: &mut MmioTransport<Fake>, features: u64) {
        wr(t, regs::STATUS, status::ACKNOWLEDGE);
        wr(t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(t, regs::DRIVER_FEATURES_SEL, 0);
        wr(t, regs::DRIVER_FEATURES, features as u32);
        wr(t, regs::DRIVER_FEATURES_SEL, 1);
        wr(t, regs::DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    /// Sets up queue `i` with `size` entries at 64 KiB * (i + 1).
    fn setup_queue(t: &mut MmioTransport<Fake>, i: u32, size: u32) {
        let base = 0x1_0000 * (u64::from(i) + 1);
        wr(t, regs::QUEUE_SEL, i);
        wr(t, regs::QUEUE_NUM, size);
        wr(t, regs::QUEUE_DESC_LOW, base as u32);
        wr(t, regs::QUEUE_DESC_HIGH, 0);
        wr(t, regs::QUEUE_AVAIL_LOW, (base + 0x4000) as u32);
        wr(t, regs::QUEUE_AVAIL_HIGH, 0);
        wr(t, regs::QUEUE_USED_LOW, (base + 0x8000) as u32);
        wr(t, regs::QUEUE_USED_HIGH, 0);
        wr(t, regs::QUEUE_READY, 1);
    }

    const ALL_OK: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport(&[16, 8]);
        assert_eq!(rd(&mut t, regs::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut t, regs::VERSION), 2);
        assert_eq!(rd(&mut t, regs::DEVICE_ID), 42);
        assert_eq!(rd(&mut t, regs::VENDOR_ID), VENDOR);
        wr(&mut t, regs::DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            rd(&mut t, regs::DEVICE_FEATURES),
            (features::RING_EVENT_IDX | FEATURE_X) as u32
        );
        wr(&mut t, regs::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, regs::DEVICE_FEATURES), 1); // VERSION_1 is bit 32
        wr(&mut t, regs::DEVICE_FEATURES_SEL, 7);
        assert_eq!(rd(&mut t, regs::DEVICE_FEATURES), 0);
        wr(&mut t, regs::QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 8);
        wr(&mut t, regs::QUEUE_SEL, 2);
        assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 0, "no queue 2");
        assert_eq!(rd(&mut t, regs::SHM_LEN_LOW), u32::MAX, "no shared memory");
    }

    #[test]
    fn full_negotiation_activates_with_the_driver_setup() {
        let (mut t, seen) = transport(&[16, 8]);
        let acked = features::VERSION_1 | features::RING_EVENT_IDX;
        negotiate(&mut t, acked);
        assert_eq!(
            rd(&mut t, regs::STATUS) & status::FEATURES_OK,
            status::FEATURES_OK
        );
        setup_queue(&mut t, 0, 16);
        setup_queue(&mut t, 1, 4);
        wr(&mut t, regs::STATUS, ALL_OK);
        assert_eq!(rd(&mut t, regs::STATUS), ALL_OK);
        let s = seen.lock().unwrap();
        assert_eq!(
            s.activations,
            vec![(acked, vec![(16, true, 0x1_0000), (4, true, 0x2_0000)])]
        );
    }

    #[test]
    fn features_not_offered_or_without_version_1_fail_negotiation() {
        for bad in [FEATURE_X, features::VERSION_1 | 1 << 40] {
            let (mut t, _) = transport(&[16]);
            negotiate(&mut t, bad);
            assert_eq!(
                rd(&mut t, regs::STATUS) & status::FEATURES_OK,
                0,
                "{bad:#x}"
            );
            // DRIVER_OK without FEATURES_OK does not activate.
            setup_queue(&mut t, 0, 16);
            wr(
                &mut t,
                regs::STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
            );
            assert_eq!(rd(&mut t, regs::STATUS) & status::DRIVER_OK, 0);
        }
        // Feature words beyond 64 bits cannot be accepted either.
        let (mut t, _) = transport(&[16]);
        wr(&mut t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(&mut t, regs::DRIVER_FEATURES_SEL, 1);
        wr(&mut t, regs::DRIVER_FEATURES, 1);
        wr(&mut t, regs::DRIVER_FEATURES_SEL, 2);
        wr(&mut t, regs::DRIVER_FEATURES, 1);
        wr(
            &mut t,
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(rd(&mut t, regs::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn features_cannot_change_after_features_ok() {
        let (mut t, seen) = transport(&[16]);
        negotiate(&mut t, features::VERSION_1);
        wr(&mut t, regs::DRIVER_FEATURES_SEL, 0);
        wr(&mut t, regs::DRIVER_FEATURES, FEATURE_X as u32);
        setup_queue(&mut t, 0, 16);
        wr(&mut t, regs::STATUS, ALL_OK);
        assert_eq!(seen.lock().unwrap().activations[0].0, features::VERSION_1);
    }

    #[test]
    fn status_bits_cannot_be_cleared_but_zero_resets() {
        let (mut t, seen) = transport(&[16]);
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0, 16);
        wr(&mut t, regs::STATUS, ALL_OK);
        wr(&mut t, regs::STATUS, status::ACKNOWLEDGE);
        assert_eq!(rd(&mut t, regs::STATUS), ALL_OK);
        assert_eq!(seen.lock().unwrap().resets, 0);
        t.interrupt.signal_used_queue();
        wr(&mut t, regs::STATUS, 0);
        assert_eq!(rd(&mut t, regs::STATUS), 0);
        assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
        assert_eq!(seen.lock().unwrap().resets, 1);
        wr(&mut t, regs::QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, regs::QUEUE_READY), 0, "queues are reset too");
        // And the device can be brought up again.
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0, 8);
        wr(&mut t, regs::STATUS, ALL_OK);
        assert_eq!(seen.lock().unwrap().activations.len(), 2);
        drop(t);
        assert_eq!(
            seen.lock().unwrap().resets,
            2,
            "dropping an active transport stops the device"
        );
    }

    #[test]
    fn queue_setup_is_frozen_once_ready_or_driver_ok() {
        let (mut t, seen) = transport(&[16]);
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0, 16);
        wr(&mut t, regs::QUEUE_NUM, 2);
        wr(&mut t, regs::QUEUE_DESC_LOW, 0x5_0000);
        wr(&mut t, regs::STATUS, ALL_OK);
        wr(&mut t, regs::QUEUE_READY, 0);
        assert_eq!(rd(&mut t, regs::QUEUE_READY), 1);
        assert_eq!(
            seen.lock().unwrap().activations[0].1,
            vec![(16, false, 0x1_0000)]
        );
    }

    fn assert_needs_reset(t: &mut MmioTransport<Fake>, seen: &Mutex<Seen>, why: &str) {
        wr(t, regs::STATUS, ALL_OK);
        assert_eq!(
            rd(t, regs::STATUS) & status::DEVICE_NEEDS_RESET,
            status::DEVICE_NEEDS_RESET,
            "{why}"
        );
        assert!(seen.lock().unwrap().activations.is_empty(), "{why}");
        assert_eq!(
            rd(t, regs::INTERRUPT_STATUS) & crate::virtio::interrupt_status::CONFIG_CHANGE,
            crate::virtio::interrupt_status::CONFIG_CHANGE,
            "{why}"
        );
        // A reset clears it.
        wr(t, regs::STATUS, 0);
        assert_eq!(rd(t, regs::STATUS), 0);
    }

    #[test]
    fn bad_queue_setups_mark_the_device_as_needing_reset() {
        type Setup = fn(&mut MmioTransport<Fake>);
        let cases: [(&str, Setup); 7] = [
            ("queue not ready", |t| {
                setup_queue(t, 0, 16);
                wr(t, regs::QUEUE_READY, 0);
            }),
            ("size not a power of two", |t| setup_queue(t, 0, 12)),
            ("size above the maximum", |t| setup_queue(t, 0, 32)),
            ("size zero", |t| setup_queue(t, 0, 0)),
            ("size beyond 16 bits", |t| setup_queue(t, 0, 0x1_0010)),
            ("misaligned descriptor table", |t| {
                setup_queue(t, 0, 16);
                wr(t, regs::QUEUE_READY, 0);
                wr(t, regs::QUEUE_DESC_LOW, 0x1_0004);
                wr(t, regs::QUEUE_READY, 1);
            }),
            ("rings outside guest memory", |t| {
                setup_queue(t, 0, 16);
                wr(t, regs::QUEUE_READY, 0);
                wr(t, regs::QUEUE_USED_HIGH, 0x10);
                wr(t, regs::QUEUE_READY, 1);
            }),
        ];
        for (why, setup) in cases {
            let (mut t, seen) = transport(&[16]);
            negotiate(&mut t, features::VERSION_1);
            setup(&mut t);
            assert_needs_reset(&mut t, &seen, why);
        }
    }

    #[test]
    fn notify_is_forwarded_to_the_queue_eventfd() {
        let (mut t, _) = transport(&[16, 8]);
        wr(&mut t, regs::QUEUE_NOTIFY, 1);
        wr(&mut t, regs::QUEUE_NOTIFY, 1);
        wr(&mut t, regs::QUEUE_NOTIFY, 9); // no such queue: ignored
        assert_eq!(t.notify_exits(), 2);
        assert_eq!(t.notify_evts()[1].read().unwrap(), 2);
        assert!(
            t.notify_evts()[0].read().is_err(),
            "queue 0 was not notified"
        );
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, _) = transport(&[16]);
        t.interrupt.signal_used_queue();
        t.interrupt.signal_config_change();
        assert_eq!(t.irq_evt().read().unwrap(), 2);
        assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 3);
        wr(&mut t, regs::INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 2);
        wr(&mut t, regs::INTERRUPT_ACK, 2);
        assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn worker_reported_breakage_shows_in_the_status() {
        let (mut t, _) = transport(&[16]);
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0, 16);
        wr(&mut t, regs::STATUS, ALL_OK);
        t.interrupt.set_needs_reset();
        assert_eq!(
            rd(&mut t, regs::STATUS),
            ALL_OK | status::DEVICE_NEEDS_RESET
        );
    }

    #[test]
    fn config_space_and_access_widths() {
        let (mut t, seen) = transport(&[16]);
        let mut b = [0u8; 2];
        t.read(regs::CONFIG + 3, &mut b);
        assert_eq!(b, [3, 4]);
        t.write(regs::CONFIG + 1, &[9]);
        assert_eq!(seen.lock().unwrap().config_writes, vec![(1, vec![9])]);
        assert_eq!(rd(&mut t, regs::CONFIG_GENERATION), 1);
        // Registers are 32-bit only: narrower or misaligned accesses read zero, writes drop.
        let mut b = [0xffu8; 2];
        t.read(regs::MAGIC_VALUE, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        t.read(regs::MAGIC_VALUE + 2, &mut b);
        assert_eq!(b, [0; 4]);
        t.write(regs::STATUS, &[1]);
        assert_eq!(rd(&mut t, regs::STATUS), 0);
        // Write-only registers read zero.
        assert_eq!(rd(&mut t, regs::QUEUE_NOTIFY), 0);
    }

    /// An activated transport whose device has moved queue 0 to avail/used index 5 and
    /// keeps device state `[1, 2, 3]`.
    fn running() -> (MmioTransport<Fake>, Arc<Mutex<Seen>>) {
        let (mut t, seen) = transport(&[16, 8]);
        negotiate(&mut t, features::VERSION_1 | FEATURE_X);
        setup_queue(&mut t, 0, 16);
        setup_queue(&mut t, 1, 8);
        wr(&mut t, regs::STATUS, ALL_OK);
        assert_eq!(seen.lock().unwrap().activations.len(), 1);
        {
            let mut s = seen.lock().unwrap();
            s.live[0].next_avail = 5;
            s.live[0].next_used = 5;
            s.device_state = vec![1, 2, 3];
        }
        (t, seen)
    }

    #[test]
    fn saved_transports_come_back_where_they_were() {
        let (mut t, _) = running();
        t.interrupt.signal_used_queue();
        let saved = t.save_state().unwrap();
        assert!(saved.activated);
        assert_eq!(saved.status, ALL_OK);
        assert_eq!(
            saved.queues[0].next_avail, 5,
            "the device's live index, not the transport's"
        );
        assert_eq!(saved.queues[1].size, 8);
        assert_eq!(saved.device, vec![1, 2, 3]);
        assert_eq!(
            saved.interrupt_status,
            crate::virtio::interrupt_status::USED_RING
        );

        let (mut fresh, seen) = transport(&[16, 8]);
        fresh.restore_state(&saved).unwrap();
        let s = seen.lock().unwrap();
        assert_eq!(
            s.activations.len(),
            1,
            "activated again with the saved queues"
        );
        assert_eq!(s.activations[0].0, features::VERSION_1 | FEATURE_X);
        assert_eq!(
            s.activations[0].1,
            vec![(16, false, 0x1_0000), (8, false, 0x2_0000)]
        );
        assert_eq!(s.live[0].next_avail, 5);
        assert_eq!(s.restored_state.as_deref(), Some(&[1u8, 2, 3][..]));
        drop(s);
        assert_eq!(rd(&mut fresh, regs::STATUS), ALL_OK);
        assert_eq!(
            rd(&mut fresh, regs::INTERRUPT_STATUS),
            crate::virtio::interrupt_status::USED_RING
        );
        wr(&mut fresh, regs::QUEUE_SEL, 1);
        assert_eq!(rd(&mut fresh, regs::QUEUE_READY), 1);
    }

    #[test]
    fn a_transport_before_activation_saves_its_own_queues() {
        let (mut t, _) = transport(&[16, 8]);
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0, 4);
        let saved = t.save_state().unwrap();
        assert!(!saved.activated);
        assert_eq!((saved.queues[0].size, saved.queues[0].ready), (4, true));
        assert!(saved.device.is_empty());
        let (mut fresh, seen) = transport(&[16, 8]);
        fresh.restore_state(&saved).unwrap();
        assert!(seen.lock().unwrap().activations.is_empty());
        wr(&mut fresh, regs::QUEUE_SEL, 0);
        assert_eq!(rd(&mut fresh, regs::QUEUE_READY), 1);
        // The driver goes on to finish its set-up.
        setup_queue(&mut fresh, 1, 8);
        wr(&mut fresh, regs::STATUS, ALL_OK);
        assert_eq!(seen.lock().unwrap().activations.len(), 1);
    }

    #[test]
    fn saved_transports_that_do_not_fit_are_refused() {
        let (mut t, _) = running();
        let saved = t.save_state().unwrap();
        let refused = |s: &TransportState, sizes: &[u16]| {
            let (mut fresh, seen) = transport(sizes);
            let e = fresh.restore_state(s).unwrap_err();
            assert!(
                seen.lock().unwrap().restored_state.is_none(),
                "nothing restored after {e}"
            );
            e
        };
        let mut other = saved.clone();
        other.device_type = 7;
        assert!(matches!(
            refused(&other, &[16, 8]),
            RestoreError::DeviceType { .. }
        ));
        assert!(matches!(
            refused(&saved, &[16]),
            RestoreError::QueueCount { .. }
        ));
        assert!(matches!(
            refused(&saved, &[32, 8]),
            RestoreError::Queue { index: 0, .. }
        ));
        let mut outside = saved.clone();
        outside.queues[1].used_ring = MEM_SIZE as u64 - 4;
        let e = refused(&outside, &[16, 8]);
        assert!(e.to_string().contains("outside guest memory"), "{e}");
        let mut bad = saved.clone();
        bad.queues[0].size = 3;
        assert!(matches!(
            refused(&bad, &[16, 8]),
            RestoreError::Queue { index: 0, .. }
        ));
        let mut state = saved.clone();
        state.device = b"bad".to_vec();
        assert!(matches!(
            refused(&state, &[16, 8]),
            RestoreError::DeviceState { .. }
        ));
        let mut idle = saved.clone();
        idle.activated = false;
        assert!(matches!(
            refused(&idle, &[16, 8]),
            RestoreError::DeviceState { .. }
        ));
    }
}
