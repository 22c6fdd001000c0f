//! The VM-level KVM state of a snapshot: the in-kernel interrupt controllers (both PICs and
//! the IOAPIC), the PIT, and the KVM clock with the host TSC at that moment; and the TSC
//! offsets that give a restored guest's TSC the place it had relative to kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_HOST_TSC, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use crate::error::{ioctl, VmError};
use crate::vcpu::state::VcpuState;

/// The in-kernel devices' state.
#[derive(Serialize, Deserialize)]
pub struct KvmVmState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock, with `host_tsc` the host's TSC at that moment ([`clock_now`]).
    pub clock: kvm_clock_data,
}

fn chip(fd: &VmFd, id: u32, what: &'static str) -> Result<kvm_irqchip, VmError> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    fd.get_irqchip(&mut c).map_err(ioctl(what))?;
    Ok(c)
}

fn host_tsc() -> u64 {
    // SAFETY: RDTSC reads the time-stamp counter into registers; it touches no memory and
    // every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// kvmclock now, with `host_tsc` set to the host's TSC at the same moment: KVM's own
/// reading when it gives one (`KVM_CLOCK_HOST_TSC`, a host on the TSC clocksource), else
/// the middle of two readings around the ioctl.
pub fn clock_now(fd: &VmFd) -> Result<kvm_clock_data, VmError> {
    let before = host_tsc();
    let mut clock = fd.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?;
    let after = host_tsc();
    if clock.flags & KVM_CLOCK_HOST_TSC == 0 {
        clock.host_tsc = before.wrapping_add(after.wrapping_sub(before) / 2);
    }
    Ok(clock)
}

/// Reads the state of a VM with an in-kernel irqchip (its vCPUs stopped); `clock` is the
/// kvmclock reading taken when they stopped ([`clock_now`]; `None`: read it now), so that
/// the restored guest sees no time pass between its pause and the snapshot either.
pub fn save(fd: &VmFd, clock: Option<kvm_clock_data>) -> Result<KvmVmState, VmError> {
    let clock = match clock {
        Some(c) => c,
        None => clock_now(fd)?,
    };
    Ok(KvmVmState {
        pic_master: chip(fd, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
        pic_slave: chip(fd, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
        ioapic: chip(fd, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
        pit: fd.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?,
        clock,
    })
}

/// Puts `s` into a freshly built VM, before its vCPUs run. The clock continues from the
/// snapshot's value: the guest sees no time pass while it was saved.
pub fn restore(fd: &VmFd, s: &KvmVmState) -> Result<(), VmError> {
    fd.set_pit2(&s.pit).map_err(ioctl("KVM_SET_PIT2"))?;
    let mut clock = s.clock;
    // Only the value is restored (no KVM_CLOCK_TSC_STABLE / REALTIME request).
    clock.flags = 0;
    fd.set_clock(&clock).map_err(ioctl("KVM_SET_CLOCK"))?;
    for (c, what) in [
        (&s.pic_master, "KVM_SET_IRQCHIP (PIC master)"),
        (&s.pic_slave, "KVM_SET_IRQCHIP (PIC slave)"),
        (&s.ioapic, "KVM_SET_IRQCHIP (IOAPIC)"),
    ] {
        fd.set_irqchip(c).map_err(ioctl(what))?;
    }
    Ok(())
}

/// For each vCPU of `vcpus`, the TSC offset that puts its TSC where it stood relative to
/// kvmclock in the snapshot whose kvmclock reading was `saved` (call it once [`restore`]
/// has set the clock): TSC and kvmclock then go on together, as they ran before. The
/// algorithm of the kernel's KVM_VCPU_TSC_OFFSET documentation: offset + saved host TSC -
/// host TSC now + kvmclock time since the saved reading, in TSC cycles. `None` for a vCPU
/// whose offset or TSC frequency was not saved (its TSC value is restored instead).
/// Assumes no TSC scaling (the guest's TSC runs at the host's rate).
pub fn tsc_offsets(
    fd: &VmFd,
    saved: &kvm_clock_data,
    vcpus: &[VcpuState],
) -> Result<Vec<Option<u64>>, VmError> {
    let now = clock_now(fd)?;
    let elapsed_ns = i128::from(now.clock.wrapping_sub(saved.clock) as i64);
    Ok(vcpus
        .iter()
        .map(|v| {
            let (offset, khz) = (v.tsc_offset?, v.tsc_khz?);
            (saved.host_tsc != 0).then_some(())?;
            let cycles = (elapsed_ns * i128::from(khz) / 1_000_000) as i64 as u64;
            Some(
                offset
                    .wrapping_add(saved.host_tsc)
                    .wrapping_sub(now.host_tsc)
                    .wrapping_add(cycles),
            )
        })
        .collect())
}
