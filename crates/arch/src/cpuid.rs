//! Per-vCPU CPUID: the host-supported leaves (`KVM_GET_SUPPORTED_CPUID`) with each vCPU's
//! APIC id, logical-processor count and the hypervisor bit filled in.

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: HTT (the logical-processor count in EBX[23:16] is valid).
const EDX_HTT: u32 = 1 << 28;

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
            // Extended topology: EDX holds the x2APIC id on every sub-leaf.
            0xb | 0x1f => e.edx = apic_id,
            _ => {}
        }
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
    fn apic_id_and_count_land_in_leaf_1_and_0xb() {
        let mut e = vec![leaf(0, 0), leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1)];
        patch_for_vcpu(&mut e, 3, 4);
        assert_eq!(e[1].ebx >> 24, 3);
        assert_eq!((e[1].ebx >> 16) & 0xff, 4);
        assert_eq!(e[1].ebx & 0xffff, 0x0800, "brand/clflush bits kept");
        assert_ne!(e[1].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[1].edx & EDX_HTT, 0);
        assert_eq!((e[2].edx, e[3].edx), (3, 3));
        assert_eq!(e[0].ebx, 0xdead_0800, "other leaves untouched");
    }
}
