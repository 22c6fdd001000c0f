//! Opening `/dev/kvm`, checking the API version and capabilities, and `kvm-info`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};
use serde::Serialize;

/// The only stable KVM API version.
pub const KVM_API_VERSION: i32 = 12;

/// Errors opening or checking KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The device node could not be opened.
    #[error("cannot open {}: {source}{}", path.display(), open_hint(source))]
    Open { path: PathBuf, source: io::Error },
    /// The kernel speaks another API version.
    #[error("{}: KVM API version {found}, ferrovm needs {KVM_API_VERSION}", path.display())]
    ApiVersion { path: PathBuf, found: i32 },
    /// The node is not a KVM device.
    #[error("{}: not a KVM device (KVM_GET_API_VERSION failed; API version 12 expected)", path.display())]
    NotKvm { path: PathBuf },
    /// A capability ferrovm cannot work without.
    #[error("{}: KVM lacks the required capability {cap}", path.display())]
    MissingCap { path: PathBuf, cap: &'static str },
}

fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) => " (is KVM enabled? load kvm_intel or kvm_amd, or check that the host supports virtualization)",
        Some(libc::EACCES) | Some(libc::EPERM) => " (no permission: add your user to the 'kvm' group or run as root)",
        Some(libc::ENXIO) | Some(libc::ENODEV) => " (the KVM module is not loaded)",
        _ => "",
    }
}

/// Capabilities ferrovm requires.
pub const REQUIRED_CAPS: [(Cap, &str); 1] = [(Cap::UserMemory, "KVM_CAP_USER_MEMORY")];

/// Opens the KVM device at `path` and checks the API version and required capabilities.
pub fn open(path: &Path) -> Result<Kvm, KvmError> {
    use std::os::unix::ffi::OsStrExt;
    let cpath =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| KvmError::Open {
            path: path.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
    let kvm = Kvm::new_with_path(cpath).map_err(|e| KvmError::Open {
        path: path.to_path_buf(),
        source: io::Error::from_raw_os_error(e.errno()),
    })?;
    let found = kvm.get_api_version();
    if found < 0 {
        return Err(KvmError::NotKvm {
            path: path.to_path_buf(),
        });
    }
    if found != KVM_API_VERSION {
        return Err(KvmError::ApiVersion {
            path: path.to_path_buf(),
            found,
        });
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap {
                path: path.to_path_buf(),
                cap: name,
            });
        }
    }
    Ok(kvm)
}

/// What `ferrovm kvm-info` reports.
#[derive(Debug, Clone, Serialize)]
pub struct KvmInfo {
    /// Device node.
    pub device: String,
    /// KVM API version (12).
    pub api_version: i32,
    /// Maximum vCPUs per VM (KVM_CAP_MAX_VCPUS).
    pub max_vcpus: usize,
    /// Recommended vCPUs per VM (KVM_CAP_NR_VCPUS).
    pub recommended_vcpus: usize,
    /// Number of memory slots (KVM_CAP_NR_MEMSLOTS).
    pub memory_slots: usize,
    /// In-kernel interrupt controller.
    pub irqchip: bool,
    /// ioeventfd.
    pub ioeventfd: bool,
    /// irqfd.
    pub irqfd: bool,
    /// User memory regions.
    pub user_memory: bool,
    /// `immediate_exit` in kvm_run.
    pub immediate_exit: bool,
    /// Hardware virtualization flag in /proc/cpuinfo: "vmx", "svm" or none.
    pub hardware_virtualization: Option<String>,
    /// Loaded KVM backend modules (kvm_intel, kvm_amd, kvm_pvm ...).
    pub backend_modules: Vec<String>,
}

/// The `vmx`/`svm` CPU flag of this host, if any.
pub fn host_hw_virt() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    hw_virt_flag(&cpuinfo).map(str::to_string)
}

/// The `vmx`/`svm` flag in a /proc/cpuinfo text.
pub fn hw_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))?
        .split(':')
        .nth(1)?;
    flags.split_whitespace().find_map(|f| match f {
        "vmx" => Some("vmx"),
        "svm" => Some("svm"),
        _ => None,
    })
}

fn backend_modules() -> Vec<String> {
    ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .map(str::to_string)
        .collect()
}

/// Gathers [`KvmInfo`] from the device at `path`.
pub fn info(path: &Path) -> Result<KvmInfo, KvmError> {
    let kvm = open(path)?;
    Ok(KvmInfo {
        device: path.display().to_string(),
        api_version: kvm.get_api_version(),
        max_vcpus: kvm.get_max_vcpus(),
        recommended_vcpus: kvm.get_nr_vcpus(),
        memory_slots: kvm.get_nr_memslots(),
        irqchip: kvm.check_extension(Cap::Irqchip),
        ioeventfd: kvm.check_extension(Cap::Ioeventfd),
        irqfd: kvm.check_extension(Cap::Irqfd),
        user_memory: kvm.check_extension(Cap::UserMemory),
        immediate_exit: kvm.check_extension(Cap::ImmediateExit),
        hardware_virtualization: host_hw_virt(),
        backend_modules: backend_modules(),
    })
}

impl fmt::Display for KvmInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "device:                  {}", self.device)?;
        writeln!(f, "API version:             {}", self.api_version)?;
        writeln!(f, "max vCPUs:               {}", self.max_vcpus)?;
        writeln!(f, "recommended vCPUs:       {}", self.recommended_vcpus)?;
        writeln!(f, "memory slots:            {}", self.memory_slots)?;
        writeln!(f, "irqchip:                 {}", yn(self.irqchip))?;
        writeln!(f, "ioeventfd:               {}", yn(self.ioeventfd))?;
        writeln!(f, "irqfd:                   {}", yn(self.irqfd))?;
        writeln!(f, "user memory:             {}", yn(self.user_memory))?;
        writeln!(f, "immediate exit:          {}", yn(self.immediate_exit))?;
        match &self.hardware_virtualization {
            Some(flag) => writeln!(f, "hardware virtualization: yes ({flag})")?,
            None => writeln!(
                f,
                "hardware virtualization: no (no vmx/svm flag: KVM runs guests without VT-x/AMD-V, e.g. PVM or instruction emulation; stock Linux guests may not boot)"
            )?,
        }
        write!(
            f,
            "backend modules:         {}",
            if self.backend_modules.is_empty() {
                "unknown".to_string()
            } else {
                self.backend_modules.join(", ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hw_virt_flags() {
        assert_eq!(hw_virt_flag("flags\t\t: fpu vme vmx sse\n"), Some("vmx"));
        assert_eq!(hw_virt_flag("processor: 0\nflags : fpu svm\n"), Some("svm"));
        assert_eq!(hw_virt_flag("flags : fpu sse2\n"), None);
        assert_eq!(hw_virt_flag(""), None);
    }

    #[test]
    fn missing_device_is_a_clear_error() {
        let e = open(Path::new("/nonexistent/kvm")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/kvm"), "{e}");
        assert!(e.contains("No such file"), "{e}");
    }

    #[test]
    fn non_kvm_device_is_rejected() {
        // /dev/null opens but the KVM_GET_API_VERSION ioctl fails: not version 12.
        let e = open(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(e, KvmError::NotKvm { .. }), "{e}");
        assert!(e.to_string().contains("not a KVM device"));
    }
}
