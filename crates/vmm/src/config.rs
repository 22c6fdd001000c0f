//! What to build: the VM configuration the binary hands to [`crate::run`].

use std::path::PathBuf;

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
    /// What the guest runs.
    pub payload: Payload,
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
    /// Every writable drive writes to a temporary qcow2 overlay, deleted when the VM
    /// ends; the images themselves are only read (QEMU's `-snapshot`).
    pub snapshot: bool,
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

/// Error parsing a size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Empty string.
    #[error("empty size")]
    Empty,
    /// Not a number with an optional K/M/G/T suffix.
    #[error("invalid size {0:?}: expected a number with an optional K, M, G or T suffix (e.g. 128M, 2G)")]
    Invalid(String),
    /// Too large for 64 bits.
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// Parses a byte size: a decimal number (or `0x` hex) with an optional binary suffix
/// `K`, `M`, `G`, `T` (optionally followed by `iB` or `B`). A bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let invalid = || SizeError::Invalid(s.to_string());
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| invalid());
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(invalid());
    }
    let n: u64 = num
        .parse()
        .map_err(|_| SizeError::Overflow(s.to_string()))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(invalid()),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(s.to_string()))
}

/// Parses a guest physical address: `0x` hex or decimal, with size suffixes allowed.
pub fn parse_addr(s: &str) -> Result<u64, SizeError> {
    parse_size(s)
}

/// Formats a byte count for messages (e.g. `128 MiB`).
pub fn human_size(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 64MB "), Ok(64 << 20));
        assert_eq!(parse_size("0x10000"), Ok(0x10000));
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        for bad in ["M", "12Q", "-1", "1.5G", "0xzz", "G12"] {
            assert!(
                matches!(parse_size(bad), Err(SizeError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("20000000T"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(128 << 20), "128 MiB");
        assert_eq!(human_size(3 << 30), "3 GiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }
}
