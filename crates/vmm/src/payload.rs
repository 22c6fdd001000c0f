//! What the guest boots, read and checked once before KVM is touched: a raw image, or a
//! Linux kernel (decompressed on the host, through the cache) with its initrd and command
//! line. Every boot of the VM (reboots included) loads from this.

use std::path::{Path, PathBuf};
use std::time::Instant;

use arch::layout::{self, BOOT_STRUCTURES_END, REAL_MODE_LIMIT};
use arch::regs::EntryMode;

use crate::config::{Payload, VmConfig};
use crate::error::{ConfigError, VmError};
use crate::options::human_size;

/// Why the guest image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// An input file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A directory where a file belongs.
    #[error("{what} {} is a directory", path.display())]
    IsDirectory {
        /// Which input.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// An empty file.
    #[error("{what} {} is empty", path.display())]
    Empty {
        /// Which input.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A raw image outside guest RAM.
    #[error("raw image {} ({len} bytes) does not fit in guest RAM at load address {load_addr:#x} ({} of RAM: {ranges})", path.display(), human_size(*mem_size))]
    RawOutsideRam {
        /// The image.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// Where it was to go.
        load_addr: u64,
        /// Guest RAM.
        mem_size: u64,
        /// RAM ranges, for the message.
        ranges: String,
    },
    /// A real-mode image that real mode cannot reach.
    #[error("--mode real needs a 16-byte aligned load address with the image below 1 MiB; {} ({len} bytes) at {load_addr:#x} is not", path.display())]
    RealModeRange {
        /// The image.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// Its load address.
        load_addr: u64,
    },
    /// A long-mode image over the boot structures.
    #[error("--mode long: image at {load_addr:#x} ({len} bytes) overlaps the GDT and page tables at [{:#x}, {BOOT_STRUCTURES_END:#x}); load it at or above {BOOT_STRUCTURES_END:#x}", layout::BOOT_GDT_START)]
    LongModeOverlap {
        /// Its load address.
        load_addr: u64,
        /// Its size.
        len: u64,
    },
    /// A long-mode image beyond the identity map.
    #[error("--mode long: the identity map covers the first 4 GiB; load address {load_addr:#x} is beyond it")]
    LongModeBeyondMap {
        /// Its load address.
        load_addr: u64,
    },
    /// The kernel image is not usable.
    #[error("kernel {}: {source}", path.display())]
    Kernel {
        /// The kernel.
        path: PathBuf,
        /// What is wrong.
        source: arch::linux::LoadError,
    },
}

/// A raw image loaded and checked against the configuration.
#[derive(Debug)]
pub struct RawImage {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Load address (= entry point).
    pub load_addr: u64,
    /// CPU mode at entry.
    pub mode: EntryMode,
}

/// What the guest boots.
#[derive(Debug)]
pub enum BootPayload {
    /// A flat binary.
    Raw(RawImage),
    /// A Linux kernel.
    Kernel {
        /// The kernel, ready to load.
        kernel: arch::linux::PreparedKernel,
        /// The initrd's bytes.
        initrd: Option<Vec<u8>>,
        /// The command line.
        cmdline: String,
    },
}

impl BootPayload {
    /// Whether this is a Linux boot (in-kernel irqchip, ACPI, virtio).
    pub fn is_linux(&self) -> bool {
        matches!(self, BootPayload::Kernel { .. })
    }
}

/// Opens an input file (`what` names it in errors) through `open`, rejecting directories.
fn input_file<T>(
    path: &Path,
    what: &'static str,
    open: impl FnOnce(&Path) -> std::io::Result<T>,
) -> Result<T, PayloadError> {
    let read_err = |source| PayloadError::Read {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::metadata(path).map_err(read_err)?.is_dir() {
        return Err(PayloadError::IsDirectory {
            what,
            path: path.to_path_buf(),
        });
    }
    open(path).map_err(read_err)
}

/// Reads a whole input file, refusing an empty one.
fn read_nonempty(path: &Path, what: &'static str) -> Result<Vec<u8>, PayloadError> {
    let bytes = input_file(path, what, |p| std::fs::read(p))?;
    if bytes.is_empty() {
        return Err(PayloadError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

fn load_raw(
    path: &Path,
    load_addr: u64,
    mode: EntryMode,
    mem_size: u64,
) -> Result<RawImage, PayloadError> {
    let bytes = read_nonempty(path, "raw image")?;
    let len = bytes.len() as u64;
    if !layout::range_in_ram(mem_size, load_addr, len) {
        return Err(PayloadError::RawOutsideRam {
            path: path.to_path_buf(),
            len,
            load_addr,
            mem_size,
            ranges: layout::ram_ranges(mem_size)
                .iter()
                .map(|(s, l)| format!("[{s:#x}, {:#x})", s + l))
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    match mode {
        EntryMode::Real => {
            if !load_addr.is_multiple_of(16) || load_addr + len > REAL_MODE_LIMIT {
                return Err(PayloadError::RealModeRange {
                    path: path.to_path_buf(),
                    len,
                    load_addr,
                });
            }
        }
        EntryMode::Long => {
            if load_addr < BOOT_STRUCTURES_END && load_addr + len > layout::BOOT_GDT_START {
                return Err(PayloadError::LongModeOverlap { load_addr, len });
            }
            if load_addr + len > layout::MMIO_HOLE_START + layout::MMIO_HOLE_SIZE {
                return Err(PayloadError::LongModeBeyondMap { load_addr });
            }
        }
    }
    Ok(RawImage {
        bytes,
        load_addr,
        mode,
    })
}

/// Reads and checks what `config` boots; a bzImage is decompressed (or taken from the
/// cache) here, once.
pub fn prepare(config: &VmConfig) -> Result<BootPayload, VmError> {
    let Some(payload) = &config.payload else {
        return Err(ConfigError::NoBootSource.into());
    };
    Ok(match payload {
        Payload::Raw {
            path,
            load_addr,
            mode,
        } => BootPayload::Raw(load_raw(path, *load_addr, *mode, config.mem_size)?),
        Payload::Kernel {
            path,
            initrd,
            cmdline,
            decompress,
        } => {
            let bytes = input_file(path, "kernel", crate::kernel_cache::map_file)?;
            let start = Instant::now();
            let kernel = prepare_kernel(config.kernel_cache, path, bytes, *decompress)?;
            tracing::info!(format = ?kernel.format, elapsed = ?start.elapsed(), "kernel prepared");
            let initrd = initrd
                .as_deref()
                .map(|p| read_nonempty(p, "initrd"))
                .transpose()?;
            BootPayload::Kernel {
                kernel,
                initrd,
                cmdline: cmdline.clone(),
            }
        }
    })
}

/// Checks the kernel and decompresses a bzImage on the host, through the cache.
fn prepare_kernel(
    use_cache: bool,
    path: &Path,
    bytes: arch::linux::KernelBytes,
    decompress: arch::linux::Decompress,
) -> Result<arch::linux::PreparedKernel, PayloadError> {
    let err = |source| PayloadError::Kernel {
        path: path.to_path_buf(),
        source,
    };
    let is_bzimage = matches!(
        kernel::KernelImage::parse(&bytes),
        Ok(kernel::KernelImage::BzImage(_))
    );
    let cache = (use_cache && is_bzimage && decompress == arch::linux::Decompress::Host)
        .then(|| {
            Some((
                crate::kernel_cache::cache_dir()?,
                crate::kernel_cache::key(path).ok()?,
            ))
        })
        .flatten();
    if let Some((dir, key)) = &cache {
        if let Some(elf) = crate::kernel_cache::lookup(dir, key) {
            tracing::info!("kernel cache hit {key}");
            return arch::linux::prepare_decompressed(&bytes, elf).map_err(err);
        }
    }
    let prepared = arch::linux::prepare(bytes, decompress).map_err(err)?;
    if let (Some((dir, key)), Some(elf)) = (&cache, prepared.decompressed_elf()) {
        crate::kernel_cache::store(dir, key, elf);
    }
    Ok(prepared)
}
