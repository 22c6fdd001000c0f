//! What to build: the VM configuration the command line, `--config-file` and the API
//! produce.

use std::path::PathBuf;

use crate::error::ConfigError;

pub use arch::linux::Decompress;
pub use arch::regs::EntryMode;

/// Default kernel command line: serial console on ttyS0, a panic ends the VM at once
/// (ferrovm reports it), no PCI probing (devices are on virtio-mmio), quiet boot.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1 pci=off quiet";

/// Default guest memory size.
pub const DEFAULT_MEM_SIZE: u64 = 128 << 20;
/// Smallest guest memory accepted (room for boot structures and a tiny image).
pub const MIN_MEM_SIZE: u64 = 1 << 20;
/// Default KVM device node.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

/// A complete VM configuration.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// KVM device node (normally `/dev/kvm`).
    pub kvm_path: PathBuf,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub cpus: u32,
    /// What the guest runs (`None` until a VM configured over the API is given one).
    pub payload: Option<Payload>,
    /// Print the exit-statistics table on stderr when the VM ends.
    pub stats: bool,
    /// Write the exit statistics as JSON here when the VM ends.
    pub stats_json: Option<PathBuf>,
    /// Bridge the host's stdin to the serial console (raw mode when it is a terminal).
    /// Off for embedded uses such as tests.
    pub console_input: bool,
    /// What a guest reset does.
    pub on_reboot: OnReboot,
    /// Reuse host-decompressed kernels from the cache ([`crate::kernel_cache`]).
    pub kernel_cache: bool,
    /// Disks (virtio-blk), in order: the first is the guest's `/dev/vda`.
    pub drives: Vec<crate::drive::DriveConfig>,
    /// A virtio entropy device (`/dev/hwrng` in the guest).
    pub rng: bool,
    /// Network interfaces (virtio-net), in order: the first is the guest's `eth0`.
    pub nets: Vec<crate::net::NetConfig>,
    /// A virtio-vsock device.
    pub vsock: Option<crate::vsock_balloon::VsockConfig>,
    /// A memory balloon.
    pub balloon: Option<crate::vsock_balloon::BalloonConfig>,
    /// Every writable drive writes to a temporary qcow2 overlay, deleted when the VM
    /// ends; the images themselves are only read (QEMU's `-snapshot`).
    pub snapshot: bool,
    /// KVM's dirty page log on every memory slot (for diff snapshots).
    pub track_dirty_pages: bool,
    /// The threads' seccomp filters (`--seccomp`; off for embedded uses such as tests,
    /// whose threads are not ferrovm's).
    pub seccomp: seccomp::Mode,
    /// The host CPUs of the vCPU and device threads (`--vcpu-affinity`,
    /// `--device-affinity`).
    pub placement: seccomp::Placement,
}

/// What a guest reset (reboot) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReboot {
    /// The VM ends (exit status 0).
    #[default]
    Exit,
    /// The VM is rebuilt from scratch and boots again.
    Restart,
}

/// What the guest runs.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A flat binary loaded at `load_addr` and entered in `mode`.
    Raw {
        /// Image file.
        path: PathBuf,
        /// Guest physical load address (= entry point).
        load_addr: u64,
        /// CPU mode at entry.
        mode: EntryMode,
    },
    /// A Linux kernel (ELF vmlinux or bzImage).
    Kernel {
        /// Kernel image.
        path: PathBuf,
        /// Initial ramdisk.
        initrd: Option<PathBuf>,
        /// Kernel command line.
        cmdline: String,
        /// Where a bzImage is decompressed.
        decompress: Decompress,
    },
}

impl VmConfig {
    /// A configuration with Firecracker's defaults (1 vCPU, 128 MiB) and nothing to boot
    /// yet: what a VM configured over the API starts from.
    pub fn empty() -> Self {
        VmConfig {
            kvm_path: DEFAULT_KVM_PATH.into(),
            mem_size: DEFAULT_MEM_SIZE,
            cpus: 1,
            payload: None,
            stats: false,
            stats_json: None,
            console_input: true,
            on_reboot: OnReboot::Exit,
            kernel_cache: true,
            drives: Vec::new(),
            rng: false,
            nets: Vec::new(),
            vsock: None,
            balloon: None,
            snapshot: false,
            track_dirty_pages: false,
            seccomp: seccomp::Mode::Off,
            placement: seccomp::Placement::NONE,
        }
    }

    /// Checks what can be checked without KVM or files: vCPUs, memory size, devices only
    /// for Linux guests.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        let pins = self.placement.vcpus.len();
        if pins != 0 && pins != self.cpus as usize {
            return Err(ConfigError::VcpuAffinity {
                given: pins,
                cpus: self.cpus,
            });
        }
        if self.mem_size < MIN_MEM_SIZE {
            return Err(ConfigError::MemoryTooSmall {
                size: self.mem_size,
                min: MIN_MEM_SIZE,
            });
        }
        if !self.mem_size.is_multiple_of(arch::layout::PAGE_SIZE) {
            return Err(ConfigError::MemoryUnaligned(self.mem_size));
        }
        match &self.payload {
            None => Err(ConfigError::NoBootSource),
            Some(Payload::Raw { .. }) if self.virtio_devices() > 0 => {
                Err(ConfigError::VirtioNeedsLinux)
            }
            Some(_) => Ok(()),
        }
    }

    /// How many virtio devices the configuration has.
    pub fn virtio_devices(&self) -> usize {
        self.drives.len()
            + self.nets.len()
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some())
            + usize::from(self.balloon.is_some())
    }

    /// How many virtio-mmio slots are left for drives (the entropy device, each network
    /// interface, the vsock and the balloon take one).
    pub fn drive_slots(&self) -> usize {
        (arch::layout::VIRTIO_MAX_DEVICES as usize)
            .saturating_sub(self.virtio_devices() - self.drives.len())
    }

    /// Whether the guest is a Linux kernel.
    pub fn is_linux(&self) -> bool {
        matches!(self.payload, Some(Payload::Kernel { .. }))
    }

    /// What a root drive adds to the kernel command line (Firecracker's rule; the root
    /// drive is always the first, `/dev/vda`): `root=/dev/vda` (or `root=PARTUUID=...`)
    /// and `ro` or `rw`.
    pub fn root_args(&self) -> Option<String> {
        let root = self.drives.iter().find(|d| d.root)?;
        let dev = match &root.partuuid {
            Some(u) => format!("root=PARTUUID={u}"),
            None => "root=/dev/vda".to_string(),
        };
        let mode = if root.read_only { "ro" } else { "rw" };
        Some(format!("{dev} {mode}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drive::parse_drive;

    #[test]
    fn root_drive_extends_the_command_line() {
        let mut c = VmConfig::empty();
        assert_eq!(c.root_args(), None);
        let mut d = parse_drive("path=/r.img,readonly=on").unwrap();
        d.root = true;
        c.drives.push(d.clone());
        assert_eq!(c.root_args().as_deref(), Some("root=/dev/vda ro"));
        d.read_only = false;
        d.partuuid = Some("0eaa91a0-01".into());
        c.drives[0] = d;
        assert_eq!(
            c.root_args().as_deref(),
            Some("root=PARTUUID=0eaa91a0-01 rw")
        );
    }
}
