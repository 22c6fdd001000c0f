//! Global descriptor table entries and their KVM segment form.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment in the boot GDT (`__BOOT_CS` of the Linux 64-bit
/// boot protocol).
pub const CODE64_SELECTOR: u16 = 0x10;
/// Selector of the data segment in the boot GDT (`__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the TSS in the boot GDT.
pub const TSS_SELECTOR: u16 = 0x20;

/// Builds a descriptor from flags (high nibble: G, D/B, L, AVL; low byte: access), base and
/// limit.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, unused, 64-bit code, data, TSS; the layout the Linux 64-bit boot
/// protocol asks for (flat `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18).
pub const BOOT_GDT: [u64; 5] = [
    0,
    0,
    entry(0xa09b, 0, 0xfffff), // code: G, L, present, exec/read, accessed
    entry(0xc093, 0, 0xfffff), // data: G, D/B, present, read/write, accessed
    entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS
];

/// The KVM segment register value for GDT entry `entry` loaded with selector `selector`.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: {
            let raw = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
            if bit(55) == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64bit_present_executable() {
        let s = segment(BOOT_GDT[2], CODE64_SELECTOR);
        assert_eq!((s.l, s.db, s.present, s.s, s.type_), (1, 0, 1, 1, 0xb));
        assert_eq!((s.base, s.limit, s.g), (0, 0xffff_ffff, 1));
    }

    #[test]
    fn data_segment_fields() {
        let s = segment(BOOT_GDT[3], DATA_SELECTOR);
        assert_eq!(
            (s.l, s.db, s.present, s.type_, s.selector),
            (0, 1, 1, 3, 0x18)
        );
        assert_eq!(s.unusable, 0);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = entry(0x0093, 0x1234_5678, 0xabcde);
        let s = segment(e, 0);
        assert_eq!((s.base, s.limit, s.g), (0x1234_5678, 0xabcde, 0));
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
