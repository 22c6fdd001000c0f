//! Virtio devices of a VM: built from the configuration, each put behind a virtio-mmio
//! window with its irqfd and one ioeventfd per queue, and announced to the guest in the
//! ACPI DSDT (`LNRO0005` devices, which Linux's virtio_mmio driver binds to).
//!
//! Device `i` gets window `VIRTIO_MMIO_START + i * 4 KiB` and GSI `5 + i`
//! ([`arch::layout::virtio_mmio_slot`]). Disks come first, in `--drive` order, so the first
//! drive is `/dev/vda`; the entropy device follows.

use std::sync::{Arc, Mutex};

use arch::acpi::VirtioMmio;
use arch::layout;
use block::FileIdentity;
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::mmio::{regs, MmioTransport};
use devices::virtio::VirtioDevice;
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::VmConfig;
use crate::drive::{self, DriveConfig, PreparedDrive};
use crate::memory::GuestMem;
use crate::vcpu::exit::Buses;
use crate::vm::VmError;

/// Checks the drives before anything is created: each exists and is not a directory, and
/// no file is attached twice unless every attachment is read-only (or `--snapshot`).
pub fn check_drives(config: &VmConfig) -> Result<(), VmError> {
    let mut seen: Vec<(FileIdentity, usize)> = Vec::new();
    let slots_left = layout::VIRTIO_MAX_DEVICES as usize - usize::from(config.rng);
    if config.drives.len() > slots_left {
        return Err(VmError::Config(format!(
            "{} drives given; at most {slots_left} fit (one interrupt line each)",
            config.drives.len()
        )));
    }
    for (i, d) in config.drives.iter().enumerate() {
        let meta = std::fs::metadata(&d.path).map_err(|e| {
            VmError::Config(format!("drive {i}: cannot open {}: {e}", d.path.display()))
        })?;
        if meta.is_dir() {
            return Err(VmError::Config(format!(
                "drive {i}: {} is a directory",
                d.path.display()
            )));
        }
        let identity = FileIdentity::of(&meta);
        if let Some(&(_, j)) = seen.iter().find(|(id, _)| *id == identity) {
            let other = &config.drives[j];
            // With --snapshot the images themselves are only read.
            if !config.snapshot && (!d.read_only || !other.read_only) {
                return Err(VmError::Config(format!(
                    "drives {j} ({}) and {i} ({}) are the same file and not both readonly=on: \
                     two writers would corrupt it",
                    other.path.display(),
                    d.path.display()
                )));
            }
        }
        seen.push((identity, i));
    }
    Ok(())
}

/// Resolves every drive's format and, with `--snapshot`, creates its overlay: once per
/// run, so guest reboots keep the same overlays.
pub fn prepare_drives(config: &VmConfig) -> Result<Vec<PreparedDrive>, VmError> {
    config
        .drives
        .iter()
        .enumerate()
        .map(|(i, d)| drive::prepare(i, d, config.snapshot).map_err(VmError::Config))
        .collect()
}

/// Builds the devices the configuration asks for, in slot order (`drives` from
/// [`prepare_drives`]).
pub fn build(
    config: &VmConfig,
    drives: &[PreparedDrive],
) -> Result<Vec<Box<dyn VirtioDevice>>, VmError> {
    let mut out: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (i, (d, p)) in config.drives.iter().zip(drives).enumerate() {
        out.push(Box::new(block_device(i, d, p)?));
    }
    if config.rng {
        out.push(Box::new(devices::virtio::rng::Rng::new()));
    }
    Ok(out)
}

/// Opens drive `index` as a virtio-blk device.
pub fn block_device(index: usize, d: &DriveConfig, p: &PreparedDrive) -> Result<Block, VmError> {
    let cfg = BlockConfig {
        path: p.path.clone(),
        format: p.format,
        read_only: p.read_only,
        cache: d.cache,
        id: d.id.clone().unwrap_or_else(|| format!("drive{index}")),
        engine: d.aio,
    };
    Block::open(&format!("blk{index}"), &cfg)
        .map_err(|e| VmError::Config(format!("drive {index}: {e}")))
}

/// Puts each device behind its MMIO window on `buses`, wires its interrupt and queue
/// notifications into KVM, and returns what the DSDT must declare.
pub fn attach(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMem,
    buses: &mut Buses,
    devices: Vec<Box<dyn VirtioDevice>>,
) -> Result<Vec<VirtioMmio>, VmError> {
    let ioctl = |what| move |source| VmError::Ioctl { what, source };
    let ioeventfd = kvm.check_extension(Cap::Ioeventfd);
    if !ioeventfd && !devices.is_empty() {
        tracing::warn!(
            "KVM has no ioeventfd: virtio notifications will exit to user space (slower)"
        );
    }
    let mut acpi = Vec::new();
    for (i, dev) in devices.into_iter().enumerate() {
        let (base, gsi) = layout::virtio_mmio_slot(i as u32).ok_or_else(|| {
            VmError::Config(format!(
                "too many virtio devices: at most {}",
                layout::VIRTIO_MAX_DEVICES
            ))
        })?;
        let name = dev.name().to_string();
        let irq = EventFd::new(EFD_NONBLOCK).map_err(|source| VmError::Host {
            what: "eventfd",
            source,
        })?;
        let transport =
            MmioTransport::new(dev, mem.clone(), irq).map_err(|source| VmError::Host {
                what: "virtio transport",
                source,
            })?;
        vm.register_irqfd(transport.irq_evt(), gsi)
            .map_err(ioctl("KVM_IRQFD (virtio)"))?;
        if ioeventfd {
            for (q, evt) in transport.notify_evts().iter().enumerate() {
                vm.register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + regs::QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(ioctl("KVM_IOEVENTFD (virtio)"))?;
            }
        }
        tracing::info!("virtio {name} at {base:#x}, GSI {gsi}");
        buses.mmio.insert(
            &format!("virtio-{name}"),
            base,
            layout::VIRTIO_MMIO_WINDOW,
            Arc::new(Mutex::new(transport)),
        )?;
        acpi.push(VirtioMmio {
            base,
            len: layout::VIRTIO_MMIO_WINDOW,
            gsi,
        });
    }
    Ok(acpi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drive::parse_drive;

    fn config(drives: &[&str], rng: bool) -> VmConfig {
        VmConfig {
            kvm_path: "/dev/kvm".into(),
            mem_size: 64 << 20,
            cpus: 1,
            payload: crate::Payload::Raw {
                path: "x".into(),
                load_addr: 0,
                mode: crate::config::EntryMode::Real,
            },
            stats: false,
            stats_json: None,
            console_input: false,
            on_reboot: Default::default(),
            kernel_cache: false,
            drives: drives.iter().map(|d| parse_drive(d).unwrap()).collect(),
            rng,
            snapshot: false,
        }
    }

    #[test]
    fn drive_files_are_checked_before_the_vm_exists() {
        let dir = std::env::temp_dir().join(format!("ferrovm-drives-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.img");
        let b = dir.join("b.img");
        std::fs::write(&a, vec![0u8; 4096]).unwrap();
        std::fs::write(&b, vec![0u8; 4096]).unwrap();
        let link = dir.join("a-link.img");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let (a, b, link, d) = (
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            link.to_str().unwrap(),
            dir.to_str().unwrap(),
        );
        let err = |drives: &[&str]| check_drives(&config(drives, true)).unwrap_err().to_string();

        assert!(check_drives(&config(&[a, b], true)).is_ok());
        let ro = |p: &str| format!("path={p},readonly=on");
        assert!(check_drives(&config(&[&ro(a), &ro(link)], true)).is_ok());
        assert!(err(&[a, link]).contains("are the same file"));
        assert!(err(&[&ro(a), a]).contains("not both readonly=on"));
        let mut snap = config(&[a, link], true);
        snap.snapshot = true;
        assert!(
            check_drives(&snap).is_ok(),
            "--snapshot only reads the images"
        );
        assert!(err(&[d]).contains("is a directory"));
        let missing = format!("{d}/missing.img");
        let e = err(&[&missing]);
        assert!(
            e.contains("drive 0: cannot open") && e.contains("missing.img"),
            "{e}"
        );
        let many: Vec<&str> = std::iter::repeat_n(a, 19).collect();
        let many_ro: Vec<String> = many.iter().map(|p| ro(p)).collect();
        let many_ro: Vec<&str> = many_ro.iter().map(|s| s.as_str()).collect();
        assert!(err(&many_ro).contains("at most 18 fit"));
        assert!(check_drives(&config(&many_ro, false)).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
