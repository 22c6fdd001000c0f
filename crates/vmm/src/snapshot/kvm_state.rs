//! The VM-level KVM state of a snapshot: the in-kernel interrupt controllers (both PICs and
//! the IOAPIC), the PIT, and the KVM clock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use crate::error::{ioctl, VmError};

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
    /// kvmclock.
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

/// Reads the state of a VM with an in-kernel irqchip (its vCPUs stopped).
pub fn save(fd: &VmFd) -> Result<KvmVmState, VmError> {
    Ok(KvmVmState {
        pic_master: chip(fd, KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
        pic_slave: chip(fd, KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
        ioapic: chip(fd, KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
        pit: fd.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?,
        clock: fd.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?,
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
