//! Errors building and running a VM: one variant per kind of cause, each keeping it.

use crate::drive::DriveError;
use crate::kvm::KvmError;
use crate::memory::MemoryError;
use crate::options::human_size;
use crate::payload::PayloadError;
use crate::vcpu::VcpuError;

/// A configuration that cannot be built, found before anything is created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No vCPUs.
    #[error("--cpus must be at least 1")]
    NoVcpus,
    /// `--vcpu-affinity` does not give one host CPU per vCPU.
    #[error("--vcpu-affinity gives {given} host CPUs for {cpus} vCPUs (one per vCPU)")]
    VcpuAffinity {
        /// CPUs in the list.
        given: usize,
        /// vCPUs.
        cpus: u32,
    },
    /// More vCPUs than the host's KVM allows.
    #[error("--cpus {requested} is above this host's KVM maximum of {max} vCPUs")]
    TooManyVcpus {
        /// Asked for.
        requested: u32,
        /// KVM's limit.
        max: usize,
    },
    /// Less memory than anything can run in.
    #[error("--mem {} is too small: at least {} is needed", human_size(*size), human_size(*min))]
    MemoryTooSmall {
        /// Asked for.
        size: u64,
        /// The minimum.
        min: u64,
    },
    /// Memory that is not whole pages.
    #[error("--mem {0} is not a multiple of 4 KiB")]
    MemoryUnaligned(u64),
    /// virtio devices on a raw image.
    #[error("virtio devices (--drive, --net, rng) need a Linux boot (--kernel)")]
    VirtioNeedsLinux,
    /// Nothing to boot.
    #[error("no boot source: give --kernel or --raw, or configure one (PUT /boot-source) before InstanceStart")]
    NoBootSource,
    /// More devices than interrupt lines.
    #[error("too many virtio devices: at most {max}")]
    TooManyDevices {
        /// The limit.
        max: u32,
    },
}

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The guest image cannot be used.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A drive cannot be used.
    #[error(transparent)]
    Drive(#[from] DriveError),
    /// KVM could not be opened or lacks something.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A VM-level ioctl failed.
    #[error("{what} failed: {source}")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Filling guest memory for the boot.
    #[error(transparent)]
    Boot(#[from] arch::boot::BootError),
    /// Registering a device.
    #[error(transparent)]
    Bus(#[from] devices::BusError),
    /// A vCPU could not be created or driven.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The vsock or balloon device cannot be set up (the message says which and why).
    #[error("{0}")]
    DeviceSetup(String),
    /// A network interface cannot be set up.
    #[error(transparent)]
    Net(#[from] crate::net_device::NetSetupError),
    /// A device worker did not pause.
    #[error(transparent)]
    Worker(#[from] devices::virtio::worker::WorkerError),
    /// A snapshot could not be restored.
    #[error(transparent)]
    Snapshot(Box<crate::snapshot::SnapshotError>),
    /// An operation that needs a paused VM.
    #[error("the VM must be paused first (PATCH /vm {{\"state\": \"Paused\"}})")]
    NotPaused,
    /// The threads' seccomp filters or host CPUs.
    #[error(transparent)]
    Sandbox(#[from] seccomp::Error),
    /// Host resources (eventfd, epoll, threads, files).
    #[error("{what}: {source}")]
    Host {
        /// What was being set up.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// `VmError::Host` for `what`, as a `map_err` argument.
pub fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Host { what, source }
}

/// `VmError::Ioctl` for `what`, as a `map_err` argument.
pub fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}
