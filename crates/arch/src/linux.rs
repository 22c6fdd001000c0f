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
    let bytes = image
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>())?;
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

/// Loads `image` (ELF vmlinux or bzImage) into `mem`, whose RAM below the MMIO hole ends at
/// `low_ram_end`.
pub fn load<M: GuestMemoryBackend>(
    mem: &M,
    image: &[u8],
    decompress: Decompress,
    low_ram_end: u64,
) -> Result<LoadedKernel, LoadError> {
    match kernel::KernelImage::parse(image)? {
        kernel::KernelImage::Elf(_) => {
            let (entry, end) = load_elf(mem, image, low_ram_end)?;
            Ok(LoadedKernel {
                entry,
                end,
                header: None,
                format: KernelFormat::Elf,
            })
        }
        kernel::KernelImage::BzImage(bz) => match decompress {
            Decompress::Host => {
                let compression = format!("{:?}", bz.compression).to_lowercase();
                let vmlinux = bz.decompress(image)?;
                let (entry, end) = load_elf(mem, &vmlinux, low_ram_end)?;
                Ok(LoadedKernel {
                    entry,
                    end,
                    header: raw_setup_header(image),
                    format: KernelFormat::BzImageHost(compression),
                })
            }
            Decompress::Guest => {
                let init_size = u64::from(bz.header.init_size);
                let pref = bz.header.pref_address.max(HIGH_MEMORY_START);
                let needed = pref.saturating_add(init_size);
                if needed > low_ram_end {
                    return Err(LoadError::TooLarge {
                        needed,
                        have: low_ram_end,
                    });
                }
                let r = BzImage::load(
                    mem,
                    None,
                    &mut Cursor::new(image),
                    Some(GuestAddress(HIGH_MEMORY_START)),
                )
                .map_err(LoadError::Load)?;
                Ok(LoadedKernel {
                    entry: r.kernel_load.0 + STARTUP_64_OFFSET,
                    // The kernel decompresses itself into [pref_address, + init_size).
                    end: r.kernel_end.max(needed),
                    header: r.setup_header,
                    format: KernelFormat::BzImageGuest,
                })
            }
        },
    }
}
