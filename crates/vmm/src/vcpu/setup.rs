//! Creating a vCPU (CPUID) and setting its registers for the boot entry.

use arch::boot::Entry;
use arch::regs::EntryMode;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::VcpuError;

/// Number of CPUID entries asked of `KVM_GET_SUPPORTED_CPUID`.
const CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// Local APIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, v) in b.iter_mut().enumerate() {
        *v = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, v) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *v as std::os::raw::c_char;
    }
}

fn ioctl_err(index: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Ioctl {
        index,
        what,
        source,
    }
}

/// The CPUID KVM supports, asked once per VM (every host `cpuid` it runs traps on some
/// hosts, PVM among them) and patched for each vCPU by [`create`]. With an in-kernel
/// LAPIC (`in_kernel_lapic`) it also advertises the TSC-deadline timer when KVM has it,
/// which its supported list never includes (Firecracker and QEMU set it the same way).
pub fn supported_cpuid(kvm: &Kvm, in_kernel_lapic: bool) -> Result<kvm_bindings::CpuId, VcpuError> {
    let mut cpuid = kvm
        .get_supported_cpuid(CPUID_ENTRIES)
        .map_err(ioctl_err(0, "KVM_GET_SUPPORTED_CPUID"))?;
    if in_kernel_lapic && kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        arch::cpuid::set_tsc_deadline(cpuid.as_mut_slice());
    }
    Ok(cpuid)
}

/// Creates vCPU `index` of `count` with its CPUID (`supported`, from
/// [`supported_cpuid`], with this vCPU's APIC id and the topology).
pub fn create(
    supported: &kvm_bindings::CpuId,
    vm: &VmFd,
    index: u32,
    count: u32,
) -> Result<VcpuFd, VcpuError> {
    let fd = create_without_cpuid(vm, index)?;
    let mut cpuid = supported.clone();
    arch::cpuid::patch_for_vcpu(cpuid.as_mut_slice(), index, count);
    fd.set_cpuid2(&cpuid)
        .map_err(ioctl_err(index, "KVM_SET_CPUID2"))?;
    Ok(fd)
}

/// vCPU `index` without CPUID. It must get one before it first runs: [`create`] sets
/// KVM's supported list; a restore sets the saved one (before any other state, as KVM
/// needs).
pub fn create_without_cpuid(vm: &VmFd, index: u32) -> Result<VcpuFd, VcpuError> {
    vm.create_vcpu(u64::from(index))
        .map_err(ioctl_err(index, "KVM_CREATE_VCPU"))
}

/// Sets the registers (and for Linux the boot MSRs and LAPIC LINT modes) of vCPU `index`
/// of `count` for `entry`.
pub fn configure(fd: &VcpuFd, index: u32, count: u32, entry: Entry) -> Result<(), VcpuError> {
    let err = |what| ioctl_err(index, what);
    let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    match entry {
        Entry::Raw {
            mode,
            load_addr,
            cr3,
        } => {
            let sregs = match mode {
                EntryMode::Real => arch::regs::real_mode_sregs(sregs, load_addr),
                EntryMode::Long => arch::regs::long_mode_sregs(sregs, cr3),
            };
            fd.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
            let regs = arch::regs::entry_regs(mode, load_addr, index.into(), count.into());
            fd.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;
        }
        Entry::Linux {
            entry,
            zero_page,
            cr3,
        } => {
            let entries: Vec<kvm_bindings::kvm_msr_entry> = arch::msr::boot_msrs()
                .into_iter()
                .map(|(index, data)| kvm_bindings::kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let msrs =
                kvm_bindings::Msrs::from_entries(&entries).map_err(|_| VcpuError::Setup {
                    index,
                    what: "MSR list",
                })?;
            let set = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
            if set != entries.len() {
                tracing::debug!(
                    "vcpu{index}: KVM accepted {set} of {} boot MSRs (MSR {:#x} refused)",
                    entries.len(),
                    entries[set].index
                );
            }
            let mut lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
            set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
            set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
            fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;
            if index == 0 {
                fd.set_sregs(&arch::regs::long_mode_sregs(sregs, cr3))
                    .map_err(err("KVM_SET_SREGS"))?;
                fd.set_regs(&arch::regs::linux_entry_regs(entry, zero_page))
                    .map_err(err("KVM_SET_REGS"))?;
            }
        }
    }
    fd.set_fpu(&arch::regs::boot_fpu())
        .map_err(err("KVM_SET_FPU"))?;
    Ok(())
}
