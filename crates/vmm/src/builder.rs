//! Configuration -> a built [`Vm`], as one linear recipe: KVM checks, the VM and its
//! in-kernel interrupt controllers, guest memory and its slots, the devices, the vCPUs.
//! Nothing is loaded into guest memory here ([`Vm::load`] does that).

use std::sync::Arc;

use arch::layout;
use kvm_ioctls::{Cap, Kvm};

use crate::config::VmConfig;
use crate::control::Control;
use crate::device_manager::{DeviceManager, ExtraDevice, VirtioSet};
use crate::error::{host, ioctl, ConfigError, VmError};
use crate::kvm::KvmError;
use crate::memory;
use crate::vm::{Phase, Vm};

/// Capabilities a Linux guest (in-kernel irqchip, PIT, interrupts through irqfds) needs.
const LINUX_CAPS: [(Cap, &str); 3] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
];

/// Checks what `config` asks of this host's KVM (vCPU count, capabilities).
pub fn check_host(kvm: &Kvm, config: &VmConfig) -> Result<(), VmError> {
    check_host_for(kvm, config, config.is_linux())
}

fn check_host_for(kvm: &Kvm, config: &VmConfig, linux: bool) -> Result<(), VmError> {
    let max = kvm.get_max_vcpus();
    if config.cpus as usize > max {
        return Err(ConfigError::TooManyVcpus {
            requested: config.cpus,
            max,
        }
        .into());
    }
    if linux {
        for (cap, name) in LINUX_CAPS {
            if !kvm.check_extension(cap) {
                return Err(VmError::Kvm(KvmError::MissingCap {
                    path: config.kvm_path.clone(),
                    cap: name,
                }));
            }
        }
    }
    Ok(())
}

/// Builds the VM `config` describes, with the `virtio` devices and any `extra` MMIO
/// devices, ready to be loaded. A Linux configuration gets the in-kernel irqchip and PIT.
pub fn build(
    kvm: &Kvm,
    config: &VmConfig,
    virtio: VirtioSet,
    extra: &[ExtraDevice],
) -> Result<Vm, VmError> {
    let mem = memory::create(config.mem_size)?;
    build_with(kvm, config, config.is_linux(), mem, virtio, extra, None)
}

/// [`build`] around guest memory made elsewhere (mapped from a snapshot's memory file),
/// with the legacy devices in `legacy` state when given; `linux` says whether the VM gets
/// the in-kernel irqchip and PIT (a restored VM has no payload to tell). A restore (with
/// `legacy`) creates its vCPUs without CPUID: the vCPU state restored next sets each
/// one's saved CPUID, so KVM's supported list is neither asked for nor set twice.
pub fn build_with(
    kvm: &Kvm,
    config: &VmConfig,
    linux: bool,
    mem: memory::GuestMem,
    virtio: VirtioSet,
    extra: &[ExtraDevice],
    legacy: Option<crate::device_manager::LegacyState<'_>>,
) -> Result<Vm, VmError> {
    check_host_for(kvm, config, linux)?;
    let fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    if linux {
        if kvm.check_extension(Cap::SetIdentityMapAddr) {
            fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
                .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        }
        if kvm.check_extension(Cap::SetTssAddr) {
            fd.set_tss_address(layout::KVM_TSS_START as usize)
                .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        }
        fd.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    }
    memory::register(&fd, &mem, config.track_dirty_pages)?;
    let restoring = legacy.is_some();
    let devices = DeviceManager::new(kvm, &fd, &mem, linux, virtio, extra, legacy)?;
    // A restore sets each vCPU's saved CPUID itself.
    let supported = (!restoring)
        .then(|| crate::vcpu::setup::supported_cpuid(kvm, linux))
        .transpose()?;
    let vcpu_fds = (0..config.cpus)
        .map(|i| match &supported {
            Some(s) => crate::vcpu::setup::create(s, &fd, i, config.cpus),
            None => crate::vcpu::setup::create_without_cpuid(&fd, i),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let control = Arc::new(Control::with_irqchip(config.cpus, linux).map_err(host("eventfd"))?);
    Ok(Vm {
        fd,
        memory: mem,
        vcpu_fds,
        vcpus: Vec::new(),
        devices,
        control,
        phase: Phase::Configured,
        mem_size: config.mem_size,
        started: None,
        final_stats: None,
        devices_paused: false,
        paused_clock: None,
    })
}
