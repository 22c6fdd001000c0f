//! The register dump and code bytes printed when a vCPU dies (as kvmtool prints them).

use std::fmt::Write as _;

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

/// Whether the registers are those of a CPU just reset (RIP 0xfff0 in the segment at
/// 0xffff0000, real mode): what KVM on AMD leaves after a triple fault.
fn is_reset_state(rip: u64, cs_sel: u16, cs_base: u64, cr0: u64) -> bool {
    rip == 0xfff0 && cs_sel == 0xf000 && cs_base == 0xffff_0000 && cr0 & 1 == 0
}

/// A register dump and the code bytes at RIP, for fatal exits (as kvmtool prints).
pub fn dump(fd: &VcpuFd, mem: &GuestMem) -> String {
    let mut s = String::new();
    let regs = match fd.get_regs() {
        Ok(r) => r,
        Err(e) => return format!("(registers unavailable: {e})"),
    };
    let sregs = fd.get_sregs().ok();
    let _ = writeln!(
        s,
        " rip {:016x}  rsp {:016x}  rflags {:016x}",
        regs.rip, regs.rsp, regs.rflags
    );
    let _ = writeln!(
        s,
        " rax {:016x}  rbx {:016x}  rcx {:016x}  rdx {:016x}",
        regs.rax, regs.rbx, regs.rcx, regs.rdx
    );
    let _ = writeln!(
        s,
        " rsi {:016x}  rdi {:016x}  rbp {:016x}  r8  {:016x}",
        regs.rsi, regs.rdi, regs.rbp, regs.r8
    );
    let _ = writeln!(
        s,
        " r9  {:016x}  r10 {:016x}  r11 {:016x}  r12 {:016x}",
        regs.r9, regs.r10, regs.r11, regs.r12
    );
    let _ = writeln!(
        s,
        " r13 {:016x}  r14 {:016x}  r15 {:016x}",
        regs.r13, regs.r14, regs.r15
    );
    let mut linear = regs.rip;
    if sregs.is_some_and(|sr| is_reset_state(regs.rip, sr.cs.selector, sr.cs.base, sr.cr0)) {
        let _ = writeln!(
            s,
            " (this is the CPU's reset state, not where it failed: on AMD SVM, KVM re-initializes \
             a vCPU at a shutdown; a guest kernel log with a console on ttyS0 may say more)"
        );
    }
    if let Some(sr) = sregs {
        for (name, seg) in [("cs", sr.cs), ("ds", sr.ds), ("ss", sr.ss), ("tr", sr.tr)] {
            let _ = writeln!(
                s,
                " {name}  sel {:04x} base {:016x} limit {:08x} type {:x} l {} db {}",
                seg.selector, seg.base, seg.limit, seg.type_, seg.l, seg.db
            );
        }
        let _ = writeln!(
            s,
            " cr0 {:016x}  cr2 {:016x}  cr3 {:016x}  cr4 {:016x}  efer {:x}",
            sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer
        );
        if sr.cs.l == 0 {
            linear = sr.cs.base.wrapping_add(regs.rip);
        }
    }
    let phys = fd
        .translate_gva(linear)
        .ok()
        .filter(|t| t.valid != 0)
        .map(|t| t.physical_address)
        .unwrap_or(linear);
    let mut code = [0u8; 16];
    match mem.read_slice(&mut code, GuestAddress(phys)) {
        Ok(()) => {
            let hex: Vec<String> = code.iter().map(|b| format!("{b:02x}")).collect();
            let _ = write!(s, " code at {phys:#x}: {}", hex.join(" "));
        }
        Err(_) => {
            let _ = write!(s, " code at {phys:#x}: (not in guest RAM)");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::is_reset_state;

    #[test]
    fn reset_state_is_recognised() {
        assert!(is_reset_state(0xfff0, 0xf000, 0xffff_0000, 0x10));
        assert!(
            !is_reset_state(0xfff0, 0xf000, 0xffff_0000, 0x11),
            "protected mode"
        );
        assert!(
            !is_reset_state(0x1000, 0x10, 0, 0x8005_0033),
            "a running kernel"
        );
    }
}
