//! Per-vCPU CPUID: the host-supported leaves (`KVM_GET_SUPPORTED_CPUID`) with each vCPU's
//! APIC id, logical-processor count and the hypervisor bit filled in.

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: HTT (the logical-processor count in EBX[23:16] is valid).
const EDX_HTT: u32 = 1 << 28;

/// CPUID.1:ECX bit 24: the LAPIC timer has TSC-deadline mode.
const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Topology level type: SMT.
const LEVEL_SMT: u32 = 1;
/// Topology level type: core.
const LEVEL_CORE: u32 = 2;

/// Patches `entries` for vCPU `cpu_index` of `cpu_count`.
pub fn patch_for_vcpu(entries: &mut [kvm_cpuid_entry2], cpu_index: u32, cpu_count: u32) {
    let apic_id = cpu_index;
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff)
                    | ((apic_id & 0xff) << 24)
                    | ((cpu_count.min(255) & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if cpu_count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            // Extended topology: one thread per core, `cpu_count` cores in one package.
            0xb | 0x1f => {
                let core_shift = 32 - cpu_count.saturating_sub(1).leading_zeros();
                let (eax, ebx, level_type) = match e.index {
                    0 => (0, 1, LEVEL_SMT),
                    1 => (core_shift, cpu_count, LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level_type << 8) | (e.index & 0xff);
                e.edx = apic_id;
            }
            // Deterministic cache parameters: EAX[31:26] = cores per package - 1.
            4 => e.eax = (e.eax & 0x03ff_ffff) | ((cpu_count.saturating_sub(1) & 0x3f) << 26),
            // AMD: ECX[7:0] = number of cores - 1.
            0x8000_0008 => e.ecx = (e.ecx & !0xff) | (cpu_count.saturating_sub(1) & 0xff),
            _ => {}
        }
    }
}

/// Advertises the LAPIC timer's TSC-deadline mode (CPUID.1:ECX bit 24).
/// `KVM_GET_SUPPORTED_CPUID` leaves it out even where KVM emulates it (with an in-kernel
/// LAPIC and `KVM_CAP_TSC_DEADLINE_TIMER`); without it a Linux guest calibrates the
/// LAPIC timer against the PIT at boot and reprograms it in one-shot mode.
pub fn set_tsc_deadline(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries.iter_mut().filter(|e| e.function == 1) {
        e.ecx |= ECX_TSC_DEADLINE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_0800,
            ..Default::default()
        }
    }

    #[test]
    fn tsc_deadline_goes_into_leaf_1_only() {
        let mut e = vec![leaf(0, 0), leaf(1, 0), leaf(7, 0)];
        set_tsc_deadline(&mut e);
        assert_eq!(e[1].ecx & ECX_TSC_DEADLINE, ECX_TSC_DEADLINE);
        assert_eq!(e[0].ecx, 0);
        assert_eq!(e[2].ecx, 0);
    }

    #[test]
    fn apic_id_and_count_land_in_leaf_1_and_0xb() {
        let mut e = vec![leaf(0, 0), leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1)];
        patch_for_vcpu(&mut e, 3, 4);
        assert_eq!(e[1].ebx >> 24, 3);
        assert_eq!((e[1].ebx >> 16) & 0xff, 4);
        assert_eq!(e[1].ebx & 0xffff, 0x0800, "brand/clflush bits kept");
        assert_ne!(e[1].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[1].edx & EDX_HTT, 0);
        assert_eq!((e[2].edx, e[3].edx), (3, 3));
        // Sub-leaf 0: SMT level, 1 thread; sub-leaf 1: core level, 4 cores, shift 2.
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx >> 8), (0, 1, LEVEL_SMT));
        assert_eq!(
            (e[3].eax, e[3].ebx, e[3].ecx >> 8, e[3].ecx & 0xff),
            (2, 4, LEVEL_CORE, 1)
        );
        assert_eq!(e[0].ebx, 0xdead_0800, "other leaves untouched");
    }
}

#[cfg(test)]
mod topology_tests {
    use super::*;

    #[test]
    fn core_shift_covers_every_apic_id() {
        for (count, shift) in [(1u32, 0u32), (2, 1), (3, 2), (4, 2), (5, 3), (64, 6)] {
            let mut e = vec![kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            }];
            patch_for_vcpu(&mut e, 0, count);
            assert_eq!(e[0].eax, shift, "{count} cpus");
        }
    }
}
