//! POST diagnostic port (0x80): remembers the last code written. Linux writes it for I/O
//! delays, firmware for progress codes; the exit-cost benchmark hammers it.

use crate::bus::{BusDevice, DeviceAction};

/// POST code latch.
#[derive(Debug, Default)]
pub struct PostCode {
    last: u8,
}

impl PostCode {
    /// The last code written.
    pub fn last(&self) -> u8 {
        self.last
    }
}

impl BusDevice for PostCode {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.last);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> DeviceAction {
        if let Some(&b) = data.first() {
            self.last = b;
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latches_last_code() {
        let mut p = PostCode::default();
        p.write(0, &[0x12]);
        p.write(0, &[0x34]);
        assert_eq!(p.last(), 0x34);
        let mut b = [0u8];
        p.read(0, &mut b);
        assert_eq!(b[0], 0x34);
    }
}
