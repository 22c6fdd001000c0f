//! Address-range buses: the port-I/O bus and the MMIO bus.
//!
//! A bus maps non-overlapping `[base, base + len)` ranges to devices. Registration rejects
//! overlaps. An access is delivered only when it lies entirely inside one range; the device
//! sees the offset from its base. Lock order: a bus never holds one device's lock while
//! taking another's, so devices may be shared between buses.

use std::fmt;
use std::sync::{Arc, Mutex};

/// What a guest write asks the VMM to do besides updating device state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// Nothing: keep running.
    None,
    /// End (or reset) the virtual machine.
    Stop(StopReason),
}

/// Why a device asked the VM to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote this status to the debug-exit port.
    DebugExit(u8),
    /// The guest asked for a reset (i8042 pulse, ACPI reset).
    Reset,
    /// The guest powered off.
    PowerOff,
}

/// A device on a bus. Methods take `&mut self`; the bus serialises access per device.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction;
}

/// A shared, lockable device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Bus errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A registration overlaps one already present.
    #[error("{bus} range {new_name} [{new_base:#x}, {new_end:#x}) overlaps {old_name} [{old_base:#x}, {old_end:#x})")]
    Overlap {
        bus: &'static str,
        new_name: String,
        new_base: u64,
        new_end: u64,
        old_name: String,
        old_base: u64,
        old_end: u64,
    },
    /// A registration with zero length or one that wraps around the address space.
    #[error("{bus} range {name} at {base:#x} with length {len:#x} is empty or wraps around")]
    BadRange {
        bus: &'static str,
        name: String,
        base: u64,
        len: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    name: String,
    device: SharedDevice,
}

/// Where an access landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region<'a> {
    /// Name of the device range.
    pub name: &'a str,
    /// Base address of the range.
    pub base: u64,
}

/// An address-range bus.
pub struct Bus {
    kind: &'static str,
    entries: Vec<Entry>, // sorted by base, non-overlapping
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for e in &self.entries {
            l.entry(&format_args!(
                "{} [{:#x}, {:#x})",
                e.name,
                e.base,
                e.base + e.len
            ));
        }
        l.finish()
    }
}

impl Bus {
    /// A new empty bus; `kind` names it in errors ("pio", "mmio").
    pub fn new(kind: &'static str) -> Self {
        Bus {
            kind,
            entries: Vec::new(),
        }
    }

    /// Registers `device` over `[base, base + len)` under `name`.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => {
                return Err(BusError::BadRange {
                    bus: self.kind,
                    name: name.to_string(),
                    base,
                    len,
                })
            }
        };
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap {
                bus: self.kind,
                new_name: name.to_string(),
                new_base: base,
                new_end: end,
                old_name: e.name.clone(),
                old_base: e.base,
                old_end: e.base + e.len,
            });
        }
        let pos = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(
            pos,
            Entry {
                base,
                len,
                name: name.to_string(),
                device,
            },
        );
        Ok(())
    }

    /// The entry fully containing `[addr, addr + size)`, if any.
    fn find(&self, addr: u64, size: usize) -> Option<&Entry> {
        let idx = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(idx.checked_sub(1)?)?;
        let off = addr - e.base;
        (off.checked_add(size as u64)? <= e.len).then_some(e)
    }

    /// The region an access at `addr` of `size` bytes would reach.
    pub fn region(&self, addr: u64, size: usize) -> Option<Region<'_>> {
        self.find(addr, size).map(|e| Region {
            name: &e.name,
            base: e.base,
        })
    }

    /// Delivers a read; `None` when no device claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Option<Region<'_>> {
        let e = self.find(addr, data.len())?;
        lock(&e.device).read(addr - e.base, data);
        Some(Region {
            name: &e.name,
            base: e.base,
        })
    }

    /// Delivers a write; `None` when no device claims the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<(Region<'_>, DeviceAction)> {
        let e = self.find(addr, data.len())?;
        let action = lock(&e.device).write(addr - e.base, data);
        Some((
            Region {
                name: &e.name,
                base: e.base,
            },
            action,
        ))
    }

    /// Number of registered ranges.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Locks a device, recovering from a poisoned lock: a panicking device thread must not take
/// every other vCPU down with it (the panic itself is reported where it happened).
pub fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        log: Vec<(char, u64, Vec<u8>)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
            self.log.push(('r', offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
            self.log.push(('w', offset, data.to_vec()));
            DeviceAction::None
        }
    }

    fn dev() -> (Arc<Mutex<Recorder>>, SharedDevice) {
        let d = Arc::new(Mutex::new(Recorder::default()));
        let s: SharedDevice = d.clone();
        (d, s)
    }

    #[test]
    fn rejects_overlaps_and_accepts_adjacent() {
        let mut bus = Bus::new("pio");
        bus.insert("a", 0x100, 0x10, dev().1).unwrap();
        bus.insert("b", 0x110, 0x10, dev().1).unwrap();
        bus.insert("c", 0xf0, 0x10, dev().1).unwrap();
        for (base, len) in [(0x10f, 1), (0xff, 2), (0x80, 0x200), (0x105, 1)] {
            let err = bus.insert("x", base, len, dev().1).unwrap_err();
            assert!(
                matches!(err, BusError::Overlap { .. }),
                "{base:#x}+{len:#x}"
            );
        }
        assert!(matches!(
            bus.insert("z", 0x1000, 0, dev().1),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert("w", u64::MAX, 2, dev().1),
            Err(BusError::BadRange { .. })
        ));
        assert_eq!(bus.len(), 3);
        let msg = bus.insert("x", 0x108, 4, dev().1).unwrap_err().to_string();
        assert!(msg.contains("overlaps a [0x100, 0x110)"), "{msg}");
    }

    #[test]
    fn devices_see_offsets() {
        let mut bus = Bus::new("mmio");
        let (a, sa) = dev();
        let (b, sb) = dev();
        bus.insert("a", 0x1000, 0x100, sa).unwrap();
        bus.insert("b", 0x2000, 0x100, sb).unwrap();
        let mut buf = [0u8; 4];
        let r = bus.read(0x1004, &mut buf).unwrap();
        assert_eq!((r.name, r.base), ("a", 0x1000));
        assert_eq!(buf, [4; 4]);
        bus.write(0x20ff, &[9]).unwrap();
        assert_eq!(a.lock().unwrap().log, vec![('r', 4, vec![4; 4])]);
        assert_eq!(b.lock().unwrap().log, vec![('w', 0xff, vec![9])]);
    }

    #[test]
    fn unclaimed_and_straddling_accesses_miss() {
        let mut bus = Bus::new("pio");
        let (a, sa) = dev();
        bus.insert("a", 0x10, 0x8, sa).unwrap();
        let mut buf = [0u8; 2];
        assert!(bus.read(0x0f, &mut buf).is_none()); // before
        assert!(bus.read(0x17, &mut buf).is_none()); // straddles end
        assert!(bus.write(0x18, &[1]).is_none()); // after
        assert!(bus.read(0x17, &mut buf[..1]).is_some()); // last byte
        assert_eq!(a.lock().unwrap().log.len(), 1);
        assert!(Bus::new("pio").read(0, &mut buf).is_none());
    }
}
