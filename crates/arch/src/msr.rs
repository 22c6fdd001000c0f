//! Model-specific registers set on every vCPU before a Linux boot.

/// `(index, value)` pairs.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WRBACK: u64 = 6;
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn mtrrs_default_to_write_back() {
        let m = super::boot_msrs();
        assert!(m.contains(&(0x2ff, (1 << 11) | 6)));
        assert!(m.contains(&(0x1a0, 1)));
    }
}
