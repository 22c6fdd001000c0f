//! The only "firmware" ferrovm has: a reset stub at the real-mode reset vector.
//!
//! Linux has several ways to reboot; when the ones it tries first do nothing (no EFI, for
//! example; with a hardware-reduced FADT and no EFI, Linux picks EFI and falls back to the
//! BIOS) it jumps to the BIOS at `f000:fff0`. There is no BIOS, so that used to run
//! through zeroed memory forever. The stub turns that jump into a write to the ACPI reset
//! register, so every reboot path ends the way the user asked (exit or restart).

use crate::layout::{ACPI_RESET_PORT, ACPI_RESET_VALUE};

/// Real-mode code for the reset vector:
///
/// ```text
/// ba lo hi   mov dx, ACPI_RESET_PORT
/// b0 vv      mov al, ACPI_RESET_VALUE
/// ee         out dx, al
/// f4         hlt
/// eb fd      jmp (back to hlt)
/// ```
pub fn reset_stub() -> Vec<u8> {
    let [lo, hi] = ACPI_RESET_PORT.to_le_bytes();
    vec![0xba, lo, hi, 0xb0, ACPI_RESET_VALUE, 0xee, 0xf4, 0xeb, 0xfd]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::RESET_VECTOR;

    #[test]
    fn stub_fits_below_one_mib_and_writes_the_reset_register() {
        let s = reset_stub();
        assert!(RESET_VECTOR + s.len() as u64 <= 0x10_0000);
        assert_eq!(u16::from_le_bytes([s[1], s[2]]), ACPI_RESET_PORT);
        assert_eq!(s[4], ACPI_RESET_VALUE);
        // The final jump lands on the hlt: offset of jmp end (9) - 3 = 6 (the hlt).
        assert_eq!(s[6], 0xf4);
        assert_eq!(9i8 + s[8] as i8, 6);
    }
}
