//! The Linux zero page (`struct boot_params`): e820 map, command line, initrd, ACPI RSDP.
//!
//! Facts from the x86 boot protocol (Documentation/arch/x86/boot.rst) and zero-page.rst.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use crate::layout::{
    ram_ranges, BIOS_AREA_START, CMDLINE_MAX_SIZE, EBDA_START, HIGH_MEMORY_START, PAGE_SIZE,
};

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// `boot_flag` value.
pub const BOOT_FLAG: u16 = 0xaa55;
/// "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: undefined/other boot loader.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `loadflags` bit: protected-mode code loaded at 1 MiB.
pub const LOADED_HIGH: u8 = 0x01;
/// `loadflags` bit: the heap_end_ptr is valid.
pub const CAN_USE_HEAP: u8 = 0x80;
/// Default `initrd_addr_max` for kernels that do not state one (protocol < 2.03).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Kernel alignment of x86_64 kernels (CONFIG_PHYSICAL_ALIGN default).
pub const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// Errors building the zero page.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BootParamsError {
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    /// The command line has a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// No room for the initrd.
    #[error("initrd of {size} bytes does not fit in guest RAM between the kernel end {kernel_end:#x} and {limit:#x}; give the VM more memory (--mem)")]
    InitrdTooLarge {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
}

/// The e820 map for `mem_size` bytes of guest RAM.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr, size, r#type| boot_e820_entry { addr, size, r#type };
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, 0xa_0000 - EBDA_START, E820_RESERVED),
        entry(
            BIOS_AREA_START,
            HIGH_MEMORY_START - BIOS_AREA_START,
            E820_RESERVED,
        ),
    ];
    for (start, size) in ram_ranges(mem_size) {
        let (start, size) = if start == 0 {
            (HIGH_MEMORY_START, size.saturating_sub(HIGH_MEMORY_START))
        } else {
            (start, size)
        };
        if size > 0 {
            map.push(entry(start, size, E820_RAM));
        }
    }
    map
}

/// The largest command line (without the NUL) a kernel with header `hdr` accepts.
pub fn cmdline_limit(hdr: &setup_header) -> usize {
    // cmdline_size exists from protocol 2.06; older kernels take 255 bytes.
    if hdr.header == HDRS_MAGIC && hdr.version >= 0x0206 && hdr.cmdline_size > 0 {
        (hdr.cmdline_size as usize).min(CMDLINE_MAX_SIZE * 64)
    } else if hdr.header == HDRS_MAGIC {
        255
    } else {
        CMDLINE_MAX_SIZE - 1
    }
}

/// Checks the command line and returns it NUL-terminated.
pub fn cmdline_bytes(cmdline: &str, hdr: &setup_header) -> Result<Vec<u8>, BootParamsError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootParamsError::CmdlineNul);
    }
    let max = cmdline_limit(hdr);
    if cmdline.len() > max {
        return Err(BootParamsError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut v = cmdline.as_bytes().to_vec();
    v.push(0);
    Ok(v)
}

/// Where the initrd goes: page-aligned, as high as possible below both the end of RAM under
/// the MMIO hole and the kernel's `initrd_addr_max`, and above the kernel.
pub fn initrd_address(
    mem_size: u64,
    hdr: &setup_header,
    kernel_end: u64,
    size: u64,
) -> Result<u64, BootParamsError> {
    let low_ram_end = ram_ranges(mem_size)[0].1;
    let addr_max = if hdr.header == HDRS_MAGIC && hdr.version >= 0x0203 && hdr.initrd_addr_max != 0
    {
        u64::from(hdr.initrd_addr_max)
    } else {
        DEFAULT_INITRD_ADDR_MAX
    };
    // initrd_addr_max is the highest address of the last byte.
    let limit = low_ram_end.min(addr_max.saturating_add(1));
    let too_large = BootParamsError::InitrdTooLarge {
        size,
        kernel_end,
        limit,
    };
    let start = limit.checked_sub(size).ok_or(too_large.clone())? & !(PAGE_SIZE - 1);
    if start < kernel_end {
        return Err(too_large);
    }
    Ok(start)
}

/// Inputs of the zero page.
#[derive(Debug, Clone)]
pub struct ZeroPage {
    /// The kernel's setup header (from a bzImage), or `None` for an ELF vmlinux.
    pub header: Option<setup_header>,
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Its length without the NUL.
    pub cmdline_len: usize,
    /// Initrd address and size, if any.
    pub initrd: Option<(u64, u64)>,
    /// Guest memory size.
    pub mem_size: u64,
    /// RSDP address.
    pub rsdp_addr: u64,
}

/// Builds `struct boot_params`.
pub fn build(z: &ZeroPage) -> boot_params {
    let mut p = boot_params::default();
    match z.header {
        Some(h) => p.hdr = h,
        None => {
            p.hdr.boot_flag = BOOT_FLAG;
            p.hdr.header = HDRS_MAGIC;
            p.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
            p.hdr.loadflags = LOADED_HIGH;
        }
    }
    p.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    p.hdr.cmd_line_ptr = z.cmdline_addr as u32;
    p.ext_cmd_line_ptr = (z.cmdline_addr >> 32) as u32;
    p.hdr.cmdline_size = z.cmdline_len as u32 + 1;
    if let Some((addr, size)) = z.initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.ext_ramdisk_image = (addr >> 32) as u32;
        p.hdr.ramdisk_size = size as u32;
        p.ext_ramdisk_size = (size >> 32) as u32;
    }
    p.acpi_rsdp_addr = z.rsdp_addr;
    let map = e820_map(z.mem_size);
    for (slot, e) in p.e820_table.iter_mut().zip(&map) {
        *slot = *e;
    }
    p.e820_entries = map.len().min(p.e820_table.len()) as u8;
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bz_header(version: u16, initrd_addr_max: u32, cmdline_size: u32) -> setup_header {
        setup_header {
            header: HDRS_MAGIC,
            version,
            initrd_addr_max,
            cmdline_size,
            ..Default::default()
        }
    }

    #[test]
    fn e820_small_memory() {
        let m = e820_map(256 << 20);
        let t: Vec<(u64, u64, u32)> = m.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            t,
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x400, E820_RESERVED),
                (0xe0000, 0x20000, E820_RESERVED),
                (0x100000, (256 << 20) - 0x100000, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_large_memory_has_the_hole() {
        let m = e820_map(6 << 30);
        assert_eq!(m.len(), 5);
        assert_eq!((m[3].addr, m[3].addr + m[3].size), (0x100000, 0xc000_0000));
        assert_eq!(
            (m[4].addr, m[4].size, m[4].r#type),
            (4 << 30, 3 << 30, E820_RAM)
        );
        // No RAM entry overlaps the 32-bit hole.
        assert!(m
            .iter()
            .all(|e| e.addr + e.size <= 0xc000_0000 || e.addr >= 0x1_0000_0000));
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let h = bz_header(0x020f, 0x7fff_ffff, 2048);
        let a = initrd_address(256 << 20, &h, 0x200_0000, 10_000_001).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 10_000_001 <= 256 << 20);
        assert!((256 << 20) - (a + 10_000_001) < 4096);
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let h = bz_header(0x020f, 0x0fff_ffff, 2048); // 256 MiB - 1
        let a = initrd_address(2 << 30, &h, 0x200_0000, 1 << 20).unwrap();
        assert_eq!(a + (1 << 20), 0x1000_0000);
        // An ELF vmlinux (no header) gets the conservative default.
        let none = setup_header::default();
        let a = initrd_address(2 << 30, &none, 0x200_0000, 1 << 20).unwrap();
        assert!(a + (1 << 20) <= DEFAULT_INITRD_ADDR_MAX + 1);
    }

    #[test]
    fn initrd_too_large_is_an_error() {
        let h = bz_header(0x020f, 0x7fff_ffff, 2048);
        let e = initrd_address(64 << 20, &h, 0x300_0000, 60 << 20).unwrap_err();
        assert!(matches!(e, BootParamsError::InitrdTooLarge { .. }));
        assert!(e.to_string().contains("--mem"));
        assert!(initrd_address(64 << 20, &h, 0, u64::MAX).is_err());
    }

    #[test]
    fn cmdline_limits() {
        let h = bz_header(0x020f, 0, 10);
        assert_eq!(cmdline_bytes("console=0", &h).unwrap(), b"console=0\0");
        assert!(matches!(
            cmdline_bytes("console=ttyS0", &h),
            Err(BootParamsError::CmdlineTooLong { len: 13, max: 10 })
        ));
        assert_eq!(cmdline_limit(&bz_header(0x0205, 0, 0)), 255);
        assert_eq!(cmdline_limit(&setup_header::default()), 2047);
        assert_eq!(cmdline_bytes("a\0b", &h), Err(BootParamsError::CmdlineNul));
    }

    #[test]
    fn zero_page_fields() {
        let p = build(&ZeroPage {
            header: None,
            cmdline_addr: 0x20000,
            cmdline_len: 13,
            initrd: Some((0x0f00_0000, 0x12345)),
            mem_size: 256 << 20,
            rsdp_addr: 0xe0000,
        });
        let (boot_flag, header, loader, cmdline_ptr, cmdline_size) = (
            p.hdr.boot_flag,
            p.hdr.header,
            p.hdr.type_of_loader,
            p.hdr.cmd_line_ptr,
            p.hdr.cmdline_size,
        );
        assert_eq!(boot_flag, BOOT_FLAG);
        assert_eq!(header, HDRS_MAGIC);
        assert_eq!(loader, 0xff);
        assert_eq!((cmdline_ptr, cmdline_size), (0x20000, 14));
        let (ri, rs) = (p.hdr.ramdisk_image, p.hdr.ramdisk_size);
        assert_eq!((ri, rs), (0x0f00_0000, 0x12345));
        assert_eq!(p.e820_entries, 4);
        let rsdp = p.acpi_rsdp_addr;
        assert_eq!(rsdp, 0xe0000);
        // The zero page is exactly one page.
        assert_eq!(std::mem::size_of::<boot_params>(), 4096);
    }
}
