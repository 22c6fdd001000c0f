//! Loading a Linux kernel into guest memory.
//!
//! Every format ends in the same place: the 64-bit entry of the Linux boot protocol
//! (`startup_64`), entered in long mode with RSI pointing at the zero page. We use it
//! rather than PVH because it skips the 32-bit stage: the VMM already provides long mode,
//! identity page tables and a flat GDT, so the kernel starts on its 64-bit path at once.
//!
//! - ELF `vmlinux`: PT_LOAD segments at their physical addresses (linux-loader), entry at
//!   the ELF entry point.
//! - bzImage, host decompression (default): the payload is decompressed on the host into
//!   the ELF `vmlinux` (kernel crate) and loaded as above; the bzImage's setup header goes
//!   into the zero page. The guest spends no time decompressing itself.
//! - bzImage, guest decompression: the protected-mode part is loaded at 1 MiB
//!   (linux-loader) and entered at its 64-bit entry (load address + 0x200); the kernel
//!   decompresses itself, as under QEMU.

use std::io::Cursor;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{elf::Elf, BzImage, KernelLoader};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend};

use crate::layout::HIGH_MEMORY_START;

/// Offset of the setup header in a bzImage.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Offset of the 64-bit entry from the protected-mode load address.
const STARTUP_64_OFFSET: u64 = 0x200;

/// The bytes of a kernel image: owned (decompressed on the host) or a read-only mapping of
/// a file (a vmlinux, a cached decompressed kernel), so that loading copies once, from the
/// page cache straight into guest RAM.
pub enum KernelBytes {
    /// In memory.
    Owned(Vec<u8>),
    /// A read-only file mapping.
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for KernelBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            KernelBytes::Owned(v) => v,
            KernelBytes::Mapped(m) => m,
        }
    }
}

impl From<Vec<u8>> for KernelBytes {
    fn from(v: Vec<u8>) -> Self {
        KernelBytes::Owned(v)
    }
}

/// Where a bzImage gets decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decompress {
    /// On the host, before boot (default).
    #[default]
    Host,
    /// In the guest, by the kernel's own decompressor.
    Guest,
}

/// What was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF vmlinux.
    Elf,
    /// A bzImage decompressed on the host (payload compression named).
    BzImageHost(String),
    /// A bzImage left for the guest to decompress.
    BzImageGuest,
}

/// A kernel in guest memory.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// 64-bit entry point (guest physical).
    pub entry: u64,
    /// End of the kernel image in guest memory (for placing the initrd above it).
    pub end: u64,
    /// The bzImage setup header, if the image had one.
    pub header: Option<setup_header>,
    /// What was loaded.
    pub format: KernelFormat,
}

/// Errors loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a usable kernel image (format, truncation, compression ...).
    #[error(transparent)]
    Format(#[from] kernel::Error),
    /// linux-loader could not place it in guest memory.
    #[error("cannot load the kernel into guest memory: {0}")]
    Load(linux_loader::loader::Error),
    /// The image needs more memory than the VM has.
    #[error("the kernel needs guest memory up to {needed:#x} but the VM's RAM below 3 GiB ends at {have:#x}; give it more memory (--mem)")]
    TooLarge { needed: u64, have: u64 },
}

fn raw_setup_header(image: &[u8]) -> Option<setup_header> {
    let end = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>();
    let bytes = image.get(SETUP_HEADER_OFFSET..end)?;
    setup_header::from_slice(bytes).copied()
}

fn load_elf<M: GuestMemoryBackend>(
    mem: &M,
    elf: &[u8],
    low_ram_end: u64,
) -> Result<(u64, u64), LoadError> {
    let info = kernel::ElfInfo::parse(elf)?;
    let needed = info.highest_paddr_end();
    if needed > low_ram_end {
        return Err(LoadError::TooLarge {
            needed,
            have: low_ram_end,
        });
    }
    let r = Elf::load(
        mem,
        None,
        &mut Cursor::new(elf),
        Some(GuestAddress(HIGH_MEMORY_START)),
    )
    .map_err(LoadError::Load)?;
    Ok((r.kernel_load.0, r.kernel_end.max(needed)))
}

enum Prepared {
    /// An ELF to load (a vmlinux, or a bzImage payload decompressed on the host).
    Elf {
        elf: KernelBytes,
        header: Option<setup_header>,
    },
    /// A bzImage the guest decompresses.
    BzGuest { image: KernelBytes, needed: u64 },
}

/// A kernel image checked (and decompressed, if asked) once, loadable on every boot.
pub struct PreparedKernel {
    prepared: Prepared,
    /// What it is.
    pub format: KernelFormat,
}

impl std::fmt::Debug for PreparedKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedKernel({:?})", self.format)
    }
}

/// Checks `image` (ELF vmlinux or bzImage) and, for a bzImage with
/// [`Decompress::Host`], decompresses its payload.
pub fn prepare(image: KernelBytes, decompress: Decompress) -> Result<PreparedKernel, LoadError> {
    match kernel::KernelImage::parse(&image)? {
        kernel::KernelImage::Elf(_) => Ok(PreparedKernel {
            prepared: Prepared::Elf {
                elf: image,
                header: None,
            },
            format: KernelFormat::Elf,
        }),
        kernel::KernelImage::BzImage(bz) => match decompress {
            Decompress::Host => {
                let compression = format!("{:?}", bz.compression).to_lowercase();
                let elf = bz.decompress(&image)?;
                kernel::ElfInfo::parse(&elf)?;
                Ok(PreparedKernel {
                    prepared: Prepared::Elf {
                        elf: elf.into(),
                        header: raw_setup_header(&image),
                    },
                    format: KernelFormat::BzImageHost(compression),
                })
            }
            Decompress::Guest => {
                let init_size = u64::from(bz.header.init_size);
                let pref = bz.header.pref_address.max(HIGH_MEMORY_START);
                Ok(PreparedKernel {
                    prepared: Prepared::BzGuest {
                        image,
                        needed: pref.saturating_add(init_size),
                    },
                    format: KernelFormat::BzImageGuest,
                })
            }
        },
    }
}

/// A bzImage whose payload was decompressed earlier (e.g. from a cache): `image` gives
/// the setup header, `elf` the uncompressed kernel.
pub fn prepare_decompressed(image: &[u8], elf: KernelBytes) -> Result<PreparedKernel, LoadError> {
    let bz = kernel::BzImage::parse(image)?;
    kernel::ElfInfo::parse(&elf)?;
    Ok(PreparedKernel {
        prepared: Prepared::Elf {
            elf,
            header: raw_setup_header(image),
        },
        format: KernelFormat::BzImageHost(format!("{:?}", bz.compression).to_lowercase()),
    })
}

impl PreparedKernel {
    /// The uncompressed ELF of a host-decompressed bzImage (what a cache stores).
    pub fn decompressed_elf(&self) -> Option<&[u8]> {
        match (&self.prepared, &self.format) {
            (Prepared::Elf { elf, .. }, KernelFormat::BzImageHost(_)) => Some(elf),
            _ => None,
        }
    }

    /// Loads the kernel into `mem`, whose RAM below the MMIO hole ends at `low_ram_end`.
    pub fn load<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        low_ram_end: u64,
    ) -> Result<LoadedKernel, LoadError> {
        match &self.prepared {
            Prepared::Elf { elf, header } => {
                let (entry, end) = load_elf(mem, &elf[..], low_ram_end)?;
                Ok(LoadedKernel {
                    entry,
                    end,
                    header: *header,
                    format: self.format.clone(),
                })
            }
            Prepared::BzGuest { image, needed } => {
                if *needed > low_ram_end {
                    return Err(LoadError::TooLarge {
                        needed: *needed,
                        have: low_ram_end,
                    });
                }
                let r = BzImage::load(
                    mem,
                    None,
                    &mut Cursor::new(&image[..]),
                    Some(GuestAddress(HIGH_MEMORY_START)),
                )
                .map_err(LoadError::Load)?;
                Ok(LoadedKernel {
                    entry: r.kernel_load.0 + STARTUP_64_OFFSET,
                    // The kernel decompresses itself into [pref_address, + init_size).
                    end: r.kernel_end.max(*needed),
                    header: r.setup_header,
                    format: self.format.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    /// A minimal x86_64 ELF with one PT_LOAD segment of `code` at physical `paddr`.
    fn tiny_elf(paddr: u64, code: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; 0x78];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // 64-bit
        e[5] = 1; // little endian
        e[6] = 1; // version
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[24..32].copy_from_slice(&paddr.to_le_bytes()); // entry
        e[32..40].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
        e[52..54].copy_from_slice(&0x40u16.to_le_bytes()); // ehsize
        e[54..56].copy_from_slice(&0x38u16.to_le_bytes()); // phentsize
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 0x40;
        e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        e[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes());
        e[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes()); // offset
        e[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes()); // vaddr
        e[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes()); // paddr
        e[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        e[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64 + 0x1000).to_le_bytes());
        e.extend_from_slice(code);
        e
    }

    #[test]
    fn elf_segments_land_at_their_physical_address() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let k = prepare(tiny_elf(0x100_0000, &[0xf4, 0x90]).into(), Decompress::Host).unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
        let l = k.load(&mem, 32 << 20).unwrap();
        assert_eq!(l.entry, 0x100_0000);
        assert!(l.end >= 0x100_0002 + 0x1000 - 2);
        let b: u8 = mem.read_obj(GuestAddress(0x100_0000)).unwrap();
        assert_eq!(b, 0xf4);
        assert!(l.header.is_none());
    }

    #[test]
    fn kernel_beyond_memory_is_a_clear_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let k = prepare(tiny_elf(0x100_0000, &[0xf4]).into(), Decompress::Host).unwrap();
        let e = k.load(&mem, 8 << 20).unwrap_err();
        assert!(matches!(e, LoadError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("--mem"));
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        for bytes in [
            vec![],
            vec![0u8; 100],
            b"\x7fELF".to_vec(),
            vec![0xffu8; 4096],
        ] {
            assert!(prepare(bytes.into(), Decompress::Host).is_err());
        }
    }
}
