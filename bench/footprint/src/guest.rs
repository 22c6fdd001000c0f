//! The start-up guest: real-mode code whose first instruction sends one byte to the
//! serial port (so its arrival on the VMM's stdout marks the guest's first instruction)
//! and whose next ones power the VM off through ferrovm's debug-exit port.

/// The byte the guest writes first.
pub const FIRST_BYTE: u8 = b'!';
/// COM1's data port.
pub const SERIAL_PORT: u16 = 0x3f8;
/// ferrovm's debug-exit port.
pub const DEBUG_EXIT_PORT: u8 = 0xf4;
/// Where the guest is loaded and entered (CS base; IP = 0), as ferrovm's `--raw` default.
pub const LOAD_ADDR: u64 = 0x1_0000;

/// Machine code:
///
/// ```text
/// b0 21       mov al, '!'
/// ba f8 03    mov dx, 0x3f8
/// ee          out dx, al
/// b0 00       mov al, 0
/// e6 f4       out 0xf4, al
/// f4          hlt
/// ```
pub fn first_byte_then_exit() -> Vec<u8> {
    let [lo, hi] = SERIAL_PORT.to_le_bytes();
    vec![
        0xb0,
        FIRST_BYTE,
        0xba,
        lo,
        hi,
        0xee,
        0xb0,
        0x00,
        0xe6,
        DEBUG_EXIT_PORT,
        0xf4,
    ]
}

/// A real-mode guest that writes port 0x80 forever (`out 0x80, al; jmp $-2`): it keeps
/// running, touching one page of guest RAM, until it is killed.
pub const PORT_LOOP: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfc];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_layout() {
        let c = first_byte_then_exit();
        assert_eq!(c.len(), 11);
        assert_eq!(&c[2..5], &[0xba, 0xf8, 0x03]);
        assert_eq!(c[9], DEBUG_EXIT_PORT);
    }
}
