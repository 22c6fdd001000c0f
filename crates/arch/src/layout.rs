//! Guest physical memory layout (x86_64). One place for every fixed address.
//!
//! ```text
//! 0x0000_0500  GDT used to enter long mode
//! 0x0000_1000 .. 0x0000_8ff0   boot stack (grows down from BOOT_STACK_POINTER)
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four page directories (2 MiB pages)
//!              identity-mapping the first 4 GiB
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0001_0000  default load address of raw images (RAW_DEFAULT_LOAD_ADDR)
//! 0x0002_0000  Linux command line
//! 0x0009_fc00 .. 0x000a_0000  EBDA (reserved)
//! 0x000e_0000 .. 0x0010_0000  ACPI tables, RSDP first (reserved)
//! 0x0010_0000  start of high memory: bzImage protected-mode code (guest decompression)
//! 0x0100_0000  vmlinux (its ELF physical addresses, normally 16 MiB)
//! ...          initrd at the top of RAM below the hole
//! 3 GiB .. 4 GiB   32-bit MMIO hole: never RAM (IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000,
//!                  KVM's TSS at 0xfffb_d000 and identity-map page at 0xfffb_c000)
//! 4 GiB ..         RAM beyond 3 GiB continues here
//! ```

/// Size of one 4 KiB page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Start of the 32-bit MMIO hole (PCI and device MMIO below 4 GiB).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO hole.
pub const MMIO_HOLE_SIZE: u64 = 0x4000_0000;
/// Where RAM resumes above the hole.
pub const HIGH_RAM_START: u64 = MMIO_HOLE_START + MMIO_HOLE_SIZE;
/// End of the real-mode addressable first megabyte.
pub const REAL_MODE_LIMIT: u64 = 0x10_0000;

/// Guest address of the boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Initial stack pointer of every vCPU (real and long mode).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Guest address of the PML4 table.
pub const PML4_START: u64 = 0x9000;
/// Guest address of the PDPT.
pub const PDPT_START: u64 = 0xa000;
/// Guest address of the first of the page directories.
pub const PD_START: u64 = 0xb000;
/// Number of page directories (each maps 1 GiB with 2 MiB pages).
pub const PD_COUNT: u64 = 4;
/// End (exclusive) of the boot structures written for long mode.
pub const BOOT_STRUCTURES_END: u64 = PD_START + PD_COUNT * PAGE_SIZE;
/// Default load address of `--raw` images.
pub const RAW_DEFAULT_LOAD_ADDR: u64 = 0x1_0000;

/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Linux command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest command line ferrovm accepts when the kernel does not say (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area (RAM below it is usable).
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of the reserved BIOS area holding the ACPI tables.
pub const BIOS_AREA_START: u64 = 0xe_0000;
/// Where the RSDP is written (inside the range Linux scans).
pub const RSDP_START: u64 = BIOS_AREA_START;
/// Start of high memory (1 MiB).
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Number of IOAPIC pins (GSIs 0..24).
pub const IOAPIC_PINS: u32 = 24;
/// First virtio-mmio window (in the 32-bit MMIO hole); device `i` is at
/// `VIRTIO_MMIO_START + i * VIRTIO_MMIO_WINDOW`.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
/// GSI of the first virtio-mmio device; device `i` uses `VIRTIO_GSI_START + i`. GSIs
/// 0-4 belong to the PIT (0 -> 2), the keyboard and COM1.
pub const VIRTIO_GSI_START: u32 = 5;
/// How many virtio-mmio devices fit: one IOAPIC pin each.
pub const VIRTIO_MAX_DEVICES: u32 = IOAPIC_PINS - VIRTIO_GSI_START;

/// Window and GSI of virtio-mmio device `index`, if there is room for it.
pub fn virtio_mmio_slot(index: u32) -> Option<(u64, u32)> {
    (index < VIRTIO_MAX_DEVICES).then(|| {
        (
            VIRTIO_MMIO_START + u64::from(index) * VIRTIO_MMIO_WINDOW,
            VIRTIO_GSI_START + index,
        )
    })
}
/// Local APIC base address.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages, inside the MMIO hole).
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// ACPI (hardware-reduced) sleep control register, an I/O port: the guest writes
/// `SLP_TYP << 2 | SLP_EN` here to power off.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register: writing [`ACPI_RESET_VALUE`] resets the machine.
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to [`ACPI_RESET_PORT`].
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// Number of ACPI power-management ports.
pub const ACPI_PM_PORTS: u16 = 3;
/// `SLP_TYP` of the S5 (soft-off) state as declared by the DSDT's `_S5_` object.
pub const ACPI_S5_SLP_TYP: u8 = 5;

/// Physical address of the real-mode reset vector `f000:fff0`, where Linux jumps when it
/// reboots through the BIOS; ferrovm puts a reset stub there ([`crate::firmware`]).
pub const RESET_VECTOR: u64 = 0xf_fff0;

/// KVM's identity-map page (just below the TSS).
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;

/// The RAM ranges `(start, size)` for `mem_size` bytes of guest memory: one range below the
/// MMIO hole, and a second one from 4 GiB for whatever does not fit below it.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (HIGH_RAM_START, mem_size - MMIO_HOLE_START),
        ]
    }
}

/// Whether `[addr, addr + len)` lies inside one RAM range of a `mem_size`-byte guest.
pub fn range_in_ram(mem_size: u64, addr: u64, len: u64) -> bool {
    ram_ranges(mem_size).iter().any(|&(start, size)| {
        addr >= start && addr.checked_add(len).is_some_and(|end| end <= start + size)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_inside_ram() {
        let m = 16 << 20;
        assert!(range_in_ram(m, 0, 16 << 20));
        assert!(!range_in_ram(m, 1, 16 << 20));
        assert!(!range_in_ram(m, u64::MAX, 2));
        let m = 5 << 30;
        assert!(range_in_ram(m, 0xbfff_f000, 0x1000));
        assert!(!range_in_ram(m, 0xc000_0000, 1));
        assert!(range_in_ram(m, 0x1_0000_0000, 0x1000));
        assert!(range_in_ram(m, 0x1_7fff_f000, 0x1000));
        assert!(!range_in_ram(m, 0x1_8000_0000, 1));
    }

    #[test]
    fn ram_below_hole_is_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(3 << 30), vec![(0, 3 << 30)]);
    }

    #[test]
    fn ram_above_three_gib_skips_the_hole() {
        assert_eq!(ram_ranges(5 << 30), vec![(0, 3 << 30), (4 << 30, 2 << 30)]);
    }

    #[test]
    fn boot_structures_fit_below_default_load_address() {
        const { assert!(BOOT_STRUCTURES_END <= RAW_DEFAULT_LOAD_ADDR) };
        const { assert!(BOOT_STACK_POINTER < PML4_START) };
    }
}
