//! A vCPU's complete architectural state, as KVM hands it out and takes it back: general
//! and special registers, FPU/SSE/AVX (XSAVE), XCRs, every MSR KVM reports as saveable,
//! the local APIC, the MP state, pending events, debug registers, the CPUID it was given,
//! its TSC frequency and its TSC offset.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_device_attr, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVMIO,
    KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::VcpuError;

/// The time-stamp counter MSR (not restored by value when the TSC offset is).
const MSR_IA32_TSC: u32 = 0x10;

// vCPU device attributes (kvm-ioctls wraps them for arm64 only).
vmm_sys_util::ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
vmm_sys_util::ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);
vmm_sys_util::ioctl_iow_nr!(KVM_HAS_DEVICE_ATTR, KVMIO, 0xe3, kvm_device_attr);

fn tsc_offset_attr(value: &mut u64) -> kvm_device_attr {
    kvm_device_attr {
        flags: 0,
        group: KVM_VCPU_TSC_CTRL,
        attr: u64::from(KVM_VCPU_TSC_OFFSET),
        addr: value as *mut u64 as u64,
    }
}

/// The vCPU's TSC offset (its TSC = the host's TSC + this), when KVM tells it
/// (`KVM_VCPU_TSC_OFFSET`, Linux 5.16+).
pub fn tsc_offset(fd: &VcpuFd) -> Option<u64> {
    let mut value = 0u64;
    let attr = tsc_offset_attr(&mut value);
    // SAFETY: KVM_HAS_DEVICE_ATTR only reads `attr`, a live kvm_device_attr.
    if unsafe { ioctl_with_ref(fd, KVM_HAS_DEVICE_ATTR(), &attr) } != 0 {
        return None;
    }
    // SAFETY: KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET) reads `attr` and
    // writes one u64 at attr.addr, which points at `value`, alive for the call.
    let r = unsafe { ioctl_with_ref(fd, KVM_GET_DEVICE_ATTR(), &attr) };
    (r == 0).then_some(value)
}

/// Sets the vCPU's TSC offset (see [`tsc_offset`]).
pub fn set_tsc_offset(fd: &VcpuFd, offset: u64) -> std::io::Result<()> {
    let mut value = offset;
    let attr = tsc_offset_attr(&mut value);
    // SAFETY: KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET) reads `attr` and
    // the u64 at attr.addr (`value`, alive for the call); it writes no memory.
    if unsafe { ioctl_with_ref(fd, KVM_SET_DEVICE_ATTR(), &attr) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The state of one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's index.
    pub index: u32,
    /// CPUID as the vCPU was configured.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every saveable MSR that this vCPU could read.
    pub msrs: Vec<kvm_msr_entry>,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE, AVX ... (the 4 KiB XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC (`None` in a VM without an in-kernel irqchip).
    pub lapic: Option<kvm_lapic_state>,
    /// Running, halted, waiting for SIPI ...
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub vcpu_events: kvm_vcpu_events,
    /// The TSC frequency in kHz (`None`: KVM could not tell).
    pub tsc_khz: Option<u32>,
    /// The TSC offset ([`tsc_offset`]; `None`: KVM could not tell). With the kvmclock
    /// value and host TSC the snapshot holds, it lets a restore put the TSC where it stood
    /// to kvmclock (the guest's clocksource watchdog compares them).
    pub tsc_offset: Option<u64>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("index", &self.index)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .field("cpuid", &self.cpuid.len())
            .field("tsc_khz", &self.tsc_khz)
            .finish()
    }
}

fn err(index: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Ioctl {
        index,
        what,
        source,
    }
}

/// The MSRs KVM says a VMM should save (`KVM_GET_MSR_INDEX_LIST`).
pub fn saveable_msrs(kvm: &Kvm) -> Result<Vec<u32>, kvm_ioctls::Error> {
    Ok(kvm.get_msr_index_list()?.as_slice().to_vec())
}

/// Reads `indices`, skipping the MSRs this vCPU refuses (KVM stops at the first one it
/// cannot read and says how many it read).
fn read_msrs(fd: &VcpuFd, index: u32, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut pos = 0;
    while pos < indices.len() {
        let chunk = &indices[pos..(pos + KVM_MAX_MSR_ENTRIES).min(indices.len())];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Setup {
            index,
            what: "MSR list",
        })?;
        let n = fd.get_msrs(&mut msrs).map_err(err(index, "KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n.min(chunk.len())]);
        pos += n;
        if n < chunk.len() {
            // MSR number n of the chunk could not be read: skip it.
            pos += 1;
        }
    }
    Ok(out)
}

/// Captures the state of vCPU `index` (which must not be running); `irqchip`: the VM has
/// an in-kernel irqchip (and so the vCPU a local APIC).
pub fn save(
    fd: &VcpuFd,
    index: u32,
    msr_indices: &[u32],
    irqchip: bool,
) -> Result<VcpuState, VcpuError> {
    let e = |what| err(index, what);
    // MP state first: KVM_GET_MP_STATE can flush pending events into the other state.
    let mp_state = fd.get_mp_state().map_err(e("KVM_GET_MP_STATE"))?;
    Ok(VcpuState {
        index,
        cpuid: fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(e("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec(),
        msrs: read_msrs(fd, index, msr_indices)?,
        regs: fd.get_regs().map_err(e("KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(e("KVM_GET_SREGS"))?,
        xsave: fd.get_xsave().map_err(e("KVM_GET_XSAVE"))?,
        xcrs: fd.get_xcrs().map_err(e("KVM_GET_XCRS"))?,
        debug_regs: fd.get_debug_regs().map_err(e("KVM_GET_DEBUGREGS"))?,
        lapic: if irqchip {
            Some(fd.get_lapic().map_err(e("KVM_GET_LAPIC"))?)
        } else {
            None
        },
        mp_state,
        vcpu_events: fd.get_vcpu_events().map_err(e("KVM_GET_VCPU_EVENTS"))?,
        tsc_khz: fd.get_tsc_khz().ok(),
        tsc_offset: tsc_offset(fd),
    })
}

/// Puts `state` into a freshly created vCPU (before it first runs), in the order KVM needs:
/// CPUID first, the TSC frequency and offset, then registers, with the LAPIC, MSRs and
/// pending events last. With `tsc_offset` the TSC gets that offset instead of the saved
/// TSC value (whose MSR is then left out: the TSC deadline MSR is armed after either).
pub fn restore(fd: &VcpuFd, state: &VcpuState, tsc_offset: Option<u64>) -> Result<(), VcpuError> {
    let index = state.index;
    let e = |what| err(index, what);
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuError::Setup {
        index,
        what: "CPUID list",
    })?;
    fd.set_cpuid2(&cpuid).map_err(e("KVM_SET_CPUID2"))?;
    if let Some(khz) = state.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            if let Err(err) = fd.set_tsc_khz(khz) {
                tracing::warn!(
                    "vcpu{index}: cannot set the TSC to the snapshot's {khz} kHz ({err}); \
                     the guest's clock may drift"
                );
            }
        }
    }
    let offset_set = tsc_offset.is_some_and(|o| match set_tsc_offset(fd, o) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(
                "vcpu{index}: cannot set the TSC offset ({err}); restoring the TSC value"
            );
            false
        }
    });
    let msrs: Vec<kvm_msr_entry> = state
        .msrs
        .iter()
        .filter(|m| !(offset_set && m.index == MSR_IA32_TSC))
        .copied()
        .collect();
    fd.set_mp_state(state.mp_state)
        .map_err(e("KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs).map_err(e("KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs).map_err(e("KVM_SET_SREGS"))?;
    // SAFETY: KVM_SET_XSAVE copies more than the 4 KiB `kvm_xsave` only when XSTATE
    // features were enabled dynamically for the guest (arch_prctl
    // ARCH_REQ_XCOMP_GUEST_PERM, e.g. AMX); ferrovm never asks for them, so the kernel reads
    // exactly the struct passed.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(e("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&state.xcrs).map_err(e("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&state.debug_regs)
        .map_err(e("KVM_SET_DEBUGREGS"))?;
    if let Some(lapic) = &state.lapic {
        fd.set_lapic(lapic).map_err(e("KVM_SET_LAPIC"))?;
    }
    let mut pos = 0;
    while pos < msrs.len() {
        let chunk = &msrs[pos..(pos + KVM_MAX_MSR_ENTRIES).min(msrs.len())];
        let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuError::Setup {
            index,
            what: "MSR list",
        })?;
        let n = fd.set_msrs(&msrs).map_err(e("KVM_SET_MSRS"))?;
        pos += n;
        if n < chunk.len() {
            // KVM stops at the first MSR it refuses: say which, and go on without it
            // (a zero is what a new vCPU has anyway, e.g. the async-PF acknowledge MSR).
            let (msr, data) = (chunk[n].index, chunk[n].data);
            if data == 0 {
                tracing::debug!(
                    "vcpu{index}: KVM refused to restore MSR {msr:#x} = 0; skipping it"
                );
            } else {
                tracing::warn!(
                    "vcpu{index}: KVM refused to restore MSR {msr:#x} = {data:#x}; skipping it"
                );
            }
            pos += 1;
        }
    }
    fd.set_vcpu_events(&state.vcpu_events)
        .map_err(e("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
