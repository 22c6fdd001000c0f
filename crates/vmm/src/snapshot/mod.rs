//! Snapshots: a paused VM's whole state in one file ([`format`]) and its memory in another
//! ([`memfile`]), and a VM rebuilt from them.
//!
//! The state holds what is needed to rebuild the VM (its configuration), the KVM VM state
//! ([`kvm_state`]), every vCPU ([`crate::vcpu::state`]) and every device.

pub mod format;
pub mod kvm_state;
pub mod memfile;
pub mod state;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvm_ioctls::Kvm;

use crate::config::VmConfig;
use crate::device_manager::{ExtraDevice, LegacyState, VirtioSet};
use crate::drive::{self, Format, PreparedDrive};
use crate::error::VmError;
use crate::vm::Vm;
use format::FormatError;
use memfile::{MemFileError, WriteStats};
use state::{MicrovmState, SavedConfig, SavedVirtio, SnapshotInfo};

/// Why a snapshot could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state file is not usable.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
    /// The memory file.
    #[error(transparent)]
    MemFile(#[from] MemFileError),
    /// A file operation on the state file.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The step.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The memory file does not fit the state.
    #[error("the memory file {} is {have} bytes; the snapshot's guest has {want}", path.display())]
    MemorySize {
        /// The file.
        path: PathBuf,
        /// Its size.
        have: u64,
        /// The guest's memory.
        want: u64,
    },
    /// The state cannot be put back into this VM.
    #[error("the snapshot does not fit the VM rebuilt from it: {0}")]
    Mismatch(String),
    /// Something this ferrovm cannot snapshot.
    #[error("{0}")]
    Unsupported(String),
    /// Building or driving the VM.
    #[error(transparent)]
    Vm(#[from] VmError),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What to save.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The state file.
    pub state_path: PathBuf,
    /// The memory file.
    pub mem_path: PathBuf,
    /// Only the pages written since the last snapshot (needs dirty page tracking).
    pub diff: bool,
}

/// What a snapshot took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreateReport {
    /// Bytes of the state file.
    pub state_bytes: u64,
    /// The memory file.
    pub memory: WriteStats,
    /// How long it took.
    pub took_us: u64,
}

/// What the VM of a snapshot needs besides the VM itself.
pub struct SnapshotContext<'a> {
    /// The VM's configuration.
    pub config: &'a VmConfig,
    /// The drives' resolved formats, in order.
    pub formats: Vec<Format>,
    /// The interfaces' MACs, in order.
    pub macs: Vec<[u8; 6]>,
    /// MSRs to save.
    pub msrs: Arc<Vec<u32>>,
    /// The instance id.
    pub instance_id: &'a str,
    /// Guest memory is anonymous (not mapped from a memory file).
    pub anonymous_memory: bool,
}

/// Saves the paused `vm`: the state file first (atomically: a temporary file renamed into
/// place), then the memory file.
pub fn create(
    vm: &Vm,
    ctx: &SnapshotContext<'_>,
    req: &CreateRequest,
) -> Result<CreateReport, SnapshotError> {
    let t = Instant::now();
    if ctx.config.snapshot {
        return Err(SnapshotError::Unsupported(
            "this VM runs with --snapshot: its drives' temporary overlays end with this process, so no snapshot could be restored".into(),
        ));
    }
    if req.diff && !ctx.config.track_dirty_pages {
        return Err(SnapshotError::Unsupported(
            "a Diff snapshot needs dirty page tracking: boot with machine-config track_dirty_pages (or restore with track_dirty_pages)".into(),
        ));
    }
    if req.diff && vm.devices().has_vhost() {
        return Err(SnapshotError::Unsupported(
            "a Diff snapshot cannot see the pages vhost-net wrote: take a Full one, or use vhost=off".into(),
        ));
    }
    let vcpus = vm.vcpu_states(&ctx.msrs)?;
    let kvm = if vm.control().has_irqchip() {
        Some(kvm_state::save(vm.fd(), vm.paused_clock())?)
    } else {
        None
    };
    let (serial, i8042) = vm.devices().legacy_state();
    let mut virtio = Vec::new();
    for v in vm.devices().virtio() {
        let transport = v
            .transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .save()
            .map_err(|e| SnapshotError::Unsupported(e.to_string()))?;
        virtio.push(SavedVirtio {
            name: v.name.clone(),
            transport,
        });
    }
    // KVM's dirty log (what the vCPUs wrote) and vm-memory's bitmap (what the VMM and its
    // devices wrote) are read and cleared now, after the state: nothing runs meanwhile.
    let dirty = if ctx.config.track_dirty_pages {
        let mut logs = Vec::new();
        use vm_memory::GuestMemoryBackend;
        let layout = vm.memory_layout();
        for (slot, ((_, size), region)) in layout.iter().zip(vm.memory().iter()).enumerate() {
            let mut log = vm
                .fd()
                .get_dirty_log(slot as u32, *size as usize)
                .map_err(crate::error::ioctl("KVM_GET_DIRTY_LOG"))?;
            let mapping: &vm_memory::MmapRegion<_> = region;
            let devices = mapping.bitmap().get_and_reset();
            for (w, d) in log.iter_mut().zip(devices) {
                *w |= d;
            }
            logs.push(log);
        }
        Some(logs)
    } else {
        None
    };
    let state = MicrovmState {
        info: SnapshotInfo {
            ferrovm_version: env!("CARGO_PKG_VERSION").into(),
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            instance_id: ctx.instance_id.into(),
            diff: req.diff,
        },
        config: SavedConfig::of(ctx.config, &ctx.formats, &ctx.macs),
        memory: vm.memory_layout(),
        kvm,
        vcpus,
        serial,
        i8042,
        virtio,
    };
    let bytes = format::encode(&state).map_err(|source| SnapshotError::Format {
        path: req.state_path.clone(),
        source,
    })?;
    let tmp = req
        .state_path
        .with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &req.state_path).map_err(io("renaming into place", &req.state_path))?;
    let memory = match (&dirty, req.diff) {
        (Some(d), true) => memfile::write_diff(vm.memory(), &req.mem_path, d)?,
        _ => memfile::write_full(vm.memory(), &req.mem_path, ctx.anonymous_memory)?,
    };
    Ok(CreateReport {
        state_bytes: bytes.len() as u64,
        memory,
        took_us: t.elapsed().as_micros() as u64,
    })
}

/// Reads and checks a state file.
pub fn read_state(path: &Path) -> Result<MicrovmState, SnapshotError> {
    let file = std::fs::File::open(path).map_err(io("opening", path))?;
    let limit = format::MAX_PAYLOAD + (format::HEADER_LEN + format::CRC_LEN) as u64 + 1;
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(io("reading", path))?;
    format::decode(&bytes).map_err(|source| SnapshotError::Format {
        path: path.to_path_buf(),
        source,
    })
}

/// What to restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The state file.
    pub state_path: PathBuf,
    /// The memory file.
    pub mem_path: PathBuf,
    /// The KVM device.
    pub kvm_path: Option<PathBuf>,
    /// Interface id -> tap name.
    pub tap_overrides: Vec<(String, String)>,
    /// Track dirty pages from now on (for diff snapshots of the restored VM).
    pub track_dirty_pages: bool,
}

/// A VM rebuilt from a snapshot, not started.
pub struct Restored {
    /// The VM, its vCPUs and devices holding the saved state.
    pub vm: Vm,
    /// Its configuration.
    pub config: VmConfig,
    /// The drives it opened.
    pub drives: Vec<PreparedDrive>,
    /// What the snapshot said of itself.
    pub info: SnapshotInfo,
    /// How long the rebuild took.
    pub took: Duration,
}

/// Rebuilds the VM of a snapshot: every check first (state file, memory file size,
/// drives), then the VM around the memory file mapped `MAP_PRIVATE`, the KVM state, the
/// vCPUs and the devices.
pub fn restore(
    kvm: &Kvm,
    req: &RestoreRequest,
    extra: &[ExtraDevice],
) -> Result<Restored, SnapshotError> {
    let t = Instant::now();
    let state = read_state(&req.state_path)?;
    if state.info.diff {
        // The state of a diff snapshot is whole; only its memory file holds just the pages
        // written since the snapshot before. With the full memory file that diff was merged
        // onto (`ferrovm snapshot merge BASE DIFF`), it restores the VM as it was.
        tracing::info!(
            "{} is a diff snapshot: {} must be the full memory file its diff was merged onto",
            req.state_path.display(),
            req.mem_path.display()
        );
    }
    let want: u64 = state.memory.iter().map(|(_, s)| s).sum();
    if want != state.config.mem_size {
        return Err(SnapshotError::Mismatch(format!(
            "its memory layout covers {want} bytes of a {}-byte guest",
            state.config.mem_size
        )));
    }
    let mem_file = std::fs::OpenOptions::new()
        .read(true)
        .open(&req.mem_path)
        .map_err(io("opening", &req.mem_path))?;
    let have = mem_file
        .metadata()
        .map_err(io("inspecting", &req.mem_path))?
        .len();
    if have != want {
        return Err(SnapshotError::MemorySize {
            path: req.mem_path.clone(),
            have,
            want,
        });
    }
    let mut config = state
        .config
        .to_config(req.kvm_path.clone(), &req.tap_overrides)
        .map_err(SnapshotError::Mismatch)?;
    config.track_dirty_pages |= req.track_dirty_pages;
    if state.vcpus.len() != config.cpus as usize {
        return Err(SnapshotError::Mismatch(format!(
            "{} vCPU states for {} vCPUs",
            state.vcpus.len(),
            config.cpus
        )));
    }
    drive::check_drives(&config.drives, config.drive_slots(), false).map_err(VmError::from)?;
    let drives = config
        .drives
        .iter()
        .enumerate()
        .map(|(i, d)| drive::prepare(i, d, false))
        .collect::<Result<Vec<_>, _>>()
        .map_err(VmError::from)?;
    let virtio = VirtioSet::build(&config, &drives)?;
    let mem = crate::memory::map_file(&mem_file, &state.memory).map_err(VmError::from)?;
    let vm = crate::builder::build_with(
        kvm,
        &config,
        state.config.linux,
        mem,
        virtio,
        extra,
        Some(LegacyState {
            serial: &state.serial,
            i8042: &state.i8042,
        }),
    )?;
    let tsc_offsets = match (&state.kvm, state.config.linux) {
        (Some(k), true) => {
            kvm_state::restore(vm.fd(), k)?;
            kvm_state::tsc_offsets(vm.fd(), &k.clock, &state.vcpus)?
        }
        (None, false) => vec![None; state.vcpus.len()],
        _ => {
            return Err(SnapshotError::Mismatch(
                "the in-kernel irqchip state does not match the guest kind".into(),
            ))
        }
    };
    vm.restore_vcpus(&state.vcpus, &tsc_offsets)?;
    let entries = vm.devices().virtio();
    if entries.len() != state.virtio.len() {
        return Err(SnapshotError::Mismatch(format!(
            "{} virtio devices saved, {} rebuilt",
            state.virtio.len(),
            entries.len()
        )));
    }
    for (e, saved) in entries.iter().zip(&state.virtio) {
        if e.name != saved.name {
            return Err(SnapshotError::Mismatch(format!(
                "virtio device {} where the snapshot has {}",
                e.name, saved.name
            )));
        }
        e.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(&saved.transport)
            .map_err(|err| SnapshotError::Mismatch(err.to_string()))?;
    }
    Ok(Restored {
        vm,
        config,
        drives,
        info: state.info,
        took: t.elapsed(),
    })
}

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
        let fd = crate::vcpu::setup::create(
            &crate::vcpu::setup::supported_cpuid(&kvm, false).unwrap(),
            &vm,
            0,
            1,
        )
        .unwrap();
        let entry = arch::boot::Entry::Raw {
            mode: arch::regs::EntryMode::Long,
            load_addr: 0x20_0000,
            cr3: arch::layout::PML4_START,
        };
        crate::vcpu::setup::configure(&fd, 0, 1, entry).unwrap();
        let msrs = state::saveable_msrs(&kvm).unwrap();
        let s = state::save(&fd, 0, &msrs, true).unwrap();
        assert_eq!(s.regs.rip, 0x20_0000);
        assert!(!s.msrs.is_empty() && !s.cpuid.is_empty());
        // Through the file format and into a new VM's vCPU.
        let bytes = super::format::encode(&s).unwrap();
        let back: state::VcpuState = super::format::decode(&bytes).unwrap();
        let vm2 = kvm.create_vm().unwrap();
        vm2.create_irq_chip().unwrap();
        let fd2 = vm2.create_vcpu(0).unwrap();
        state::restore(&fd2, &back, None).unwrap();
        let again = state::save(&fd2, 0, &msrs, true).unwrap();
        assert_eq!(again.regs.rip, s.regs.rip);
        assert_eq!(again.sregs.cr3, s.sregs.cr3);
        assert_eq!(again.sregs.efer, s.sregs.efer);
        assert_eq!(again.lapic.unwrap().regs[..], s.lapic.unwrap().regs[..]);
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
        let s = super::kvm_state::save(&vm, None).unwrap();
        let bytes = super::format::encode(&s).unwrap();
        let back: super::kvm_state::KvmVmState = super::format::decode(&bytes).unwrap();
        let vm2 = kvm.create_vm().unwrap();
        vm2.create_irq_chip().unwrap();
        vm2.create_pit2(kvm_bindings::kvm_pit_config::default())
            .unwrap();
        super::kvm_state::restore(&vm2, &back).unwrap();
        let again = super::kvm_state::save(&vm2, None).unwrap();
        // SAFETY: reading the ioapic arm of the union KVM_GET_IRQCHIP(IOAPIC) filled.
        let (a, b) = unsafe { (again.ioapic.chip.ioapic, s.ioapic.chip.ioapic) };
        assert_eq!(a.base_address, b.base_address);
    }
}
