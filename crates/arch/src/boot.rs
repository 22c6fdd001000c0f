//! Filling a VM's memory for its first instruction: a raw image with (in long mode) the boot
//! GDT and page tables, or a Linux kernel with its command line, initrd, ACPI tables,
//! zero page, reset stub, GDT and page tables. The result is where and how the vCPUs
//! enter ([`Entry`]); setting their registers is the VMM's (ioctls).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::acpi::{AcpiError, VirtioMmio};
use crate::bootparams::{self, BootParamsError};
use crate::layout;
use crate::linux::{LoadError, PreparedKernel};
use crate::regs::EntryMode;

/// Where and how every vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A raw image: every vCPU starts at the load address.
    Raw {
        /// Entry mode.
        mode: EntryMode,
        /// Load address (real mode: CS base; long mode: RIP).
        load_addr: u64,
        /// CR3 for long mode.
        cr3: u64,
    },
    /// Linux 64-bit boot protocol: vCPU 0 starts at `entry` with RSI = `zero_page`; the
    /// others wait for INIT/SIPI from the in-kernel local APIC.
    Linux {
        /// 64-bit entry point.
        entry: u64,
        /// Guest address of the zero page.
        zero_page: u64,
        /// CR3 (identity page tables).
        cr3: u64,
    },
}

/// Why the guest's memory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel does not fit or cannot be placed.
    #[error(transparent)]
    Kernel(#[from] LoadError),
    /// Command line or initrd placement.
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// A write into guest memory.
    #[error(transparent)]
    Write(#[from] crate::Error),
}

fn write<M: GuestMemoryBackend>(
    mem: &M,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), crate::Error> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| crate::Error::GuestWrite { what, addr, source })
}

/// Copies a raw image to `load_addr` (with the GDT and identity page tables in long mode).
pub fn load_raw<M: GuestMemoryBackend>(
    mem: &M,
    bytes: &[u8],
    load_addr: u64,
    mode: EntryMode,
) -> Result<Entry, BootError> {
    write(mem, "the raw image", load_addr, bytes)?;
    let cr3 = match mode {
        EntryMode::Long => {
            crate::regs::write_gdt(mem)?;
            crate::paging::write_identity_tables(mem)?
        }
        EntryMode::Real => 0,
    };
    Ok(Entry::Raw {
        mode,
        load_addr,
        cr3,
    })
}

/// A Linux boot.
#[derive(Debug)]
pub struct LinuxBoot<'a> {
    /// The kernel.
    pub kernel: &'a PreparedKernel,
    /// The initrd's bytes.
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM size.
    pub mem_size: u64,
    /// vCPUs (for the MADT).
    pub cpus: u32,
    /// virtio-mmio devices (for the DSDT).
    pub virtio: &'a [VirtioMmio],
}

/// Writes kernel, command line, initrd, ACPI tables, zero page, reset stub, GDT and page
/// tables for `boot`.
pub fn load_linux<M: GuestMemoryBackend>(
    mem: &M,
    boot: &LinuxBoot<'_>,
) -> Result<Entry, BootError> {
    let low_ram_end = layout::ram_ranges(boot.mem_size)[0].1;
    let loaded = boot.kernel.load(mem, low_ram_end)?;
    let header = loaded.header.unwrap_or_default();
    let cmdline = bootparams::cmdline_bytes(boot.cmdline, &header)?;
    write(mem, "the command line", layout::CMDLINE_START, &cmdline)?;
    let initrd = match boot.initrd {
        Some(bytes) => {
            let size = bytes.len() as u64;
            let addr = bootparams::initrd_address(boot.mem_size, &header, loaded.end, size)?;
            write(mem, "the initrd", addr, bytes)?;
            Some((addr, size))
        }
        None => None,
    };
    for (addr, bytes) in crate::acpi::tables(boot.cpus, boot.virtio)? {
        write(mem, "ACPI tables", addr, &bytes)?;
    }
    let zero_page = bootparams::build(&bootparams::ZeroPage {
        header: loaded.header,
        cmdline_addr: layout::CMDLINE_START,
        cmdline_len: cmdline.len() - 1,
        initrd,
        mem_size: boot.mem_size,
        rsdp_addr: layout::RSDP_START,
    });
    write(
        mem,
        "the zero page",
        layout::ZERO_PAGE_START,
        vm_memory::ByteValued::as_slice(&zero_page),
    )?;
    write(
        mem,
        "the reset stub",
        layout::RESET_VECTOR,
        &crate::firmware::reset_stub(),
    )?;
    crate::regs::write_gdt(mem)?;
    let cr3 = crate::paging::write_identity_tables(mem)?;
    tracing::info!(
        format = ?loaded.format,
        entry = format_args!("{:#x}", loaded.entry),
        initrd = ?initrd,
        "kernel loaded"
    );
    Ok(Entry::Linux {
        entry: loaded.entry,
        zero_page: layout::ZERO_PAGE_START,
        cr3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn raw_images_land_at_their_address() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let e = load_raw(&mem, &[0xf4, 0x90], 0x1_0000, EntryMode::Real).unwrap();
        assert_eq!(
            e,
            Entry::Raw {
                mode: EntryMode::Real,
                load_addr: 0x1_0000,
                cr3: 0
            }
        );
        let b: u8 = mem.read_obj(GuestAddress(0x1_0000)).unwrap();
        assert_eq!(b, 0xf4);
        let Entry::Raw { cr3, .. } = load_raw(&mem, &[0xf4], 0x20_0000, EntryMode::Long).unwrap()
        else {
            panic!()
        };
        assert_eq!(cr3, layout::PML4_START);
        assert!(load_raw(&mem, &[0xf4], 8 << 20, EntryMode::Real).is_err());
    }
}
