//! Snapshots: a paused VM's whole state in one file ([`format`]) and its memory in another
//! ([`memfile`]), and a VM rebuilt from them.
//!
//! The state holds what is needed to rebuild the VM (its configuration), the KVM VM state
//! ([`kvm_state`]), every vCPU ([`crate::vcpu::state`]) and every device.

pub mod format;
pub mod kvm_state;
pub mod memfile;

#[cfg(test)]
mod tests {
    use crate::vcpu::state;

    fn kvm() -> Option<kvm_ioctls::Kvm> {
        match kvm_ioctls::Kvm::new() {
            Ok(k) => Some(k),
            Err(e) if std::env::var("FERROVM_SKIP_KVM").as_deref() == Ok("1") => {
                eprintln!("*** SKIPPED snapshot tests: /dev/kvm unusable ({e}) ***");
                None
            }
            Err(e) => panic!("/dev/kvm is not usable ({e}); set FERROVM_SKIP_KVM=1 to skip"),
        }
    }

    #[test]
    fn vcpu_state_from_a_real_vcpu_round_trips() {
        let Some(kvm) = kvm() else {
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let fd = crate::vcpu::setup::create(&kvm, &vm, 0, 1).unwrap();
        let entry = arch::boot::Entry::Raw {
            mode: arch::regs::EntryMode::Long,
            load_addr: 0x20_0000,
            cr3: arch::layout::PML4_START,
        };
        crate::vcpu::setup::configure(&fd, 0, 1, entry).unwrap();
        let msrs = state::saveable_msrs(&kvm).unwrap();
        let s = state::save(&fd, 0, &msrs).unwrap();
        assert_eq!(s.regs.rip, 0x20_0000);
        assert!(!s.msrs.is_empty() && !s.cpuid.is_empty());
        // Through the file format and into a new VM's vCPU.
        let bytes = super::format::encode(&s).unwrap();
        let back: state::VcpuState = super::format::decode(&bytes).unwrap();
        let vm2 = kvm.create_vm().unwrap();
        vm2.create_irq_chip().unwrap();
        let fd2 = vm2.create_vcpu(0).unwrap();
        state::restore(&fd2, &back).unwrap();
        let again = state::save(&fd2, 0, &msrs).unwrap();
        assert_eq!(again.regs.rip, s.regs.rip);
        assert_eq!(again.sregs.cr3, s.sregs.cr3);
        assert_eq!(again.sregs.efer, s.sregs.efer);
        assert_eq!(again.lapic.regs[..], s.lapic.regs[..]);
        assert_eq!(again.msrs.len(), s.msrs.len());
        for (a, b) in again.msrs.iter().zip(&s.msrs) {
            assert_eq!(a.index, b.index);
        }
    }

    #[test]
    fn vm_state_round_trips() {
        let Some(kvm) = kvm() else {
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(kvm_bindings::kvm_pit_config::default())
            .unwrap();
        let s = super::kvm_state::save(&vm).unwrap();
        let bytes = super::format::encode(&s).unwrap();
        let back: super::kvm_state::KvmVmState = super::format::decode(&bytes).unwrap();
        let vm2 = kvm.create_vm().unwrap();
        vm2.create_irq_chip().unwrap();
        vm2.create_pit2(kvm_bindings::kvm_pit_config::default())
            .unwrap();
        super::kvm_state::restore(&vm2, &back).unwrap();
        let again = super::kvm_state::save(&vm2).unwrap();
        // SAFETY: reading the ioapic arm of the union KVM_GET_IRQCHIP(IOAPIC) filled.
        let (a, b) = unsafe { (again.ioapic.chip.ioapic, s.ioapic.chip.ioapic) };
        assert_eq!(a.base_address, b.base_address);
    }
}
