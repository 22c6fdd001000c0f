//! ACPI power management for a hardware-reduced platform: the sleep control, sleep status
//! and reset registers the FADT points at (three consecutive I/O ports).
//!
//! - sleep control (offset 0): a write with `SLP_EN` (bit 5) and `SLP_TYP` (bits 2-4) equal
//!   to the S5 type declared by the DSDT powers the VM off;
//! - sleep status (offset 1): reads 0 (never woken);
//! - reset (offset 2): writing the FADT's reset value resets the VM.

use crate::bus::{BusDevice, DeviceAction, StopReason};

/// Offset of the sleep control register.
pub const SLEEP_CONTROL: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS: u64 = 1;
/// Offset of the reset register.
pub const RESET: u64 = 2;
/// `SLP_EN` bit of the sleep control register.
pub const SLP_EN: u8 = 1 << 5;

/// The ACPI PM registers.
#[derive(Debug)]
pub struct AcpiPm {
    s5_type: u8,
    reset_value: u8,
}

impl AcpiPm {
    /// Registers that power off on `SLP_TYP == s5_type` and reset on `reset_value`.
    pub fn new(s5_type: u8, reset_value: u8) -> Self {
        AcpiPm {
            s5_type,
            reset_value,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let Some(&v) = data.first() else {
            return DeviceAction::None;
        };
        match offset {
            SLEEP_CONTROL if v & SLP_EN != 0 && (v >> 2) & 7 == self.s5_type => {
                DeviceAction::Stop(StopReason::PowerOff)
            }
            RESET if v == self.reset_value => DeviceAction::Stop(StopReason::Reset),
            _ => DeviceAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_other_states_do_not() {
        let mut pm = AcpiPm::new(5, 1);
        assert_eq!(
            pm.write(SLEEP_CONTROL, &[(5 << 2) | SLP_EN]),
            DeviceAction::Stop(StopReason::PowerOff)
        );
        assert_eq!(
            pm.write(SLEEP_CONTROL, &[5 << 2]),
            DeviceAction::None,
            "no SLP_EN"
        );
        assert_eq!(
            pm.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]),
            DeviceAction::None,
            "S3"
        );
    }

    #[test]
    fn reset_register() {
        let mut pm = AcpiPm::new(5, 1);
        assert_eq!(pm.write(RESET, &[1]), DeviceAction::Stop(StopReason::Reset));
        assert_eq!(pm.write(RESET, &[2]), DeviceAction::None);
        assert_eq!(pm.write(SLEEP_STATUS, &[0xff]), DeviceAction::None);
        let mut b = [0xffu8];
        pm.read(SLEEP_STATUS, &mut b);
        assert_eq!(b[0], 0);
        assert_eq!(pm.write(RESET, &[]), DeviceAction::None);
    }
}
