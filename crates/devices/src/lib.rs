//! Devices emulated in user space, and the buses the vCPU exit handler dispatches to.
//!
//! A device implements [`bus::BusDevice`] and is registered on a [`bus::Bus`] (port I/O or
//! MMIO) over an address range; it only ever sees offsets into that range.

pub mod bus;
pub mod legacy;
pub mod rate_limiter;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, DeviceAction, StopReason};
