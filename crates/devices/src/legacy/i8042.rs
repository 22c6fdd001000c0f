//! Just enough of the i8042 keyboard controller for the CPU reset line: command 0xFE on the
//! command port pulses reset (how Linux and many boot loaders reboot). Everything else reads
//! as "no data, input buffer empty" and is ignored.

use crate::bus::{BusDevice, DeviceAction, StopReason};

/// Offset of the command/status port relative to the data port (0x64 - 0x60).
pub const COMMAND_OFFSET: u64 = 4;
/// "Pulse output line 0" with bit 0 low: CPU reset.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// i8042 controller spanning ports 0x60..=0x64.
#[derive(Debug, Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; data reads 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            return DeviceAction::Stop(StopReason::Reset);
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_only_on_command_port() {
        let mut d = I8042;
        assert_eq!(
            d.write(COMMAND_OFFSET, &[0xfe]),
            DeviceAction::Stop(StopReason::Reset)
        );
        assert_eq!(d.write(0, &[0xfe]), DeviceAction::None);
        assert_eq!(d.write(COMMAND_OFFSET, &[0xad]), DeviceAction::None);
        let mut s = [0xffu8];
        d.read(COMMAND_OFFSET, &mut s);
        assert_eq!(s[0], 0);
    }
}
