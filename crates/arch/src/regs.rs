//! Register state for entering the guest: real mode at a load address, or 64-bit long mode
//! with the boot GDT and identity page tables.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::gdt::{self, BOOT_GDT, CODE64_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use crate::layout::{BOOT_GDT_START, BOOT_STACK_POINTER};
use crate::{Error, Result};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS with only the always-one bit set.
pub const RFLAGS_RESERVED: u64 = 0x2;

/// The CPU mode a raw image starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 16-bit real mode: CS = DS = ES = SS base at the load address, IP = 0.
    Real,
    /// 64-bit long mode: paging on with the first 4 GiB identity-mapped, RIP = load address.
    Long,
}

/// Writes the boot GDT into guest memory.
pub fn write_gdt<M: GuestMemory>(mem: &M) -> Result<()> {
    let bytes: Vec<u8> = BOOT_GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_START))
        .map_err(|source| Error::GuestWrite {
            what: "GDT",
            addr: BOOT_GDT_START,
            source,
        })
}

/// Special registers for 64-bit long mode, starting from the vCPU's current `sregs`.
pub fn long_mode_sregs(mut sregs: kvm_sregs, cr3: u64) -> kvm_sregs {
    let code = gdt::segment(BOOT_GDT[2], CODE64_SELECTOR);
    let data = gdt::segment(BOOT_GDT[3], DATA_SELECTOR);
    let tss = gdt::segment(BOOT_GDT[4], TSS_SELECTOR);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = cr3;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET | X86_CR0_NE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

fn real_segment(selector: u16, base: u64, code: bool) -> kvm_segment {
    kvm_segment {
        base,
        limit: 0xffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for real mode with code and data segments based at `load_addr`
/// (which must be 16-byte aligned and below 1 MiB) and the stack segment at 0.
pub fn real_mode_sregs(mut sregs: kvm_sregs, load_addr: u64) -> kvm_sregs {
    let sel = (load_addr >> 4) as u16;
    sregs.cs = real_segment(sel, load_addr, true);
    let data = real_segment(sel, load_addr, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = real_segment(0, 0, false);
    sregs.cr0 &= !(X86_CR0_PE | X86_CR0_PG);
    sregs.efer &= !(EFER_LME | EFER_LMA);
    sregs
}

/// Registers for the Linux 64-bit boot protocol: RIP at the 64-bit entry, RSI = the zero
/// page, interrupts off.
pub fn linux_entry_regs(entry: u64, zero_page: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: zero_page,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// General registers at entry. Every vCPU starts at the image entry with `rdi` = its index
/// and `rsi` = the number of vCPUs (the documented raw-image convention).
pub fn entry_regs(mode: EntryMode, load_addr: u64, cpu_index: u64, cpu_count: u64) -> kvm_regs {
    kvm_regs {
        rip: match mode {
            EntryMode::Real => 0,
            EntryMode::Long => load_addr,
        },
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rdi: cpu_index,
        rsi: cpu_count,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// FPU state at reset: x87 control word 0x37f, MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn long_mode_enables_paging_pae_and_lma() {
        let s = long_mode_sregs(kvm_sregs::default(), 0x9000);
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cs.selector, CODE64_SELECTOR);
        assert_eq!(s.gdt.limit, 39);
    }

    #[test]
    fn real_mode_segments_at_load_address() {
        let start = kvm_sregs {
            cr0: X86_CR0_PE | X86_CR0_PG,
            ..Default::default()
        };
        let s = real_mode_sregs(start, 0x1_0000);
        assert_eq!(
            (s.cs.base, s.cs.selector, s.ds.base),
            (0x1_0000, 0x1000, 0x1_0000)
        );
        assert_eq!(s.ss.base, 0);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), 0);
    }

    #[test]
    fn entry_registers_carry_cpu_index() {
        let r = entry_regs(EntryMode::Long, 0x20_0000, 3, 4);
        assert_eq!((r.rip, r.rdi, r.rsi, r.rflags), (0x20_0000, 3, 4, 2));
        assert_eq!(entry_regs(EntryMode::Real, 0x20_0000, 0, 1).rip, 0);
    }

    #[test]
    fn gdt_is_written() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        write_gdt(&mem).unwrap();
        let v: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 16)).unwrap();
        assert_eq!(v, BOOT_GDT[2]);
        let tiny =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(write_gdt(&tiny).is_err());
    }
}
