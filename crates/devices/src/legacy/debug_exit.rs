//! The debug-exit port: a guest write ends the VM and the written value (its low byte)
//! becomes ferrovm's exit status. Tests and scripts use it to return a verdict.

use crate::bus::{BusDevice, DeviceAction, StopReason};

/// Debug-exit device (one port).
#[derive(Debug, Default)]
pub struct DebugExit;

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> DeviceAction {
        match data.first() {
            Some(&code) => DeviceAction::Stop(StopReason::DebugExit(code)),
            None => DeviceAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_stops_with_low_byte() {
        let mut d = DebugExit;
        assert_eq!(
            d.write(0, &[42]),
            DeviceAction::Stop(StopReason::DebugExit(42))
        );
        assert_eq!(
            d.write(0, &0x1234_5607u32.to_le_bytes()),
            DeviceAction::Stop(StopReason::DebugExit(7))
        );
        assert_eq!(d.write(0, &[]), DeviceAction::None);
    }
}
