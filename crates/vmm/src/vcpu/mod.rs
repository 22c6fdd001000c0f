//! vCPU threads: configuration, the `KVM_RUN` loop, and the register dump on fatal exits.

pub mod exit;

use std::fmt::Write as _;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use arch::regs::EntryMode;
use kvm_bindings::kvm_run;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress};

use crate::control::{Control, VmStop};
use crate::memory::GuestMem;
use crate::stats::VcpuStats;
use exit::{Buses, ExitAction, ExitStop, VmExit};

/// Number of CPUID entries asked of `KVM_GET_SUPPORTED_CPUID`.
const CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// vCPU errors.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vcpu{index}: {what} failed: {source}")]
    Ioctl {
        index: u32,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Building a vCPU set-up structure failed.
    #[error("vcpu{index}: cannot build the {what}")]
    Setup { index: u32, what: &'static str },
    /// The thread could not be spawned.
    #[error("vcpu{index}: cannot spawn thread: {source}")]
    Spawn { index: u32, source: std::io::Error },
}

/// Where and how every vCPU enters the guest.
#[derive(Debug, Clone, Copy)]
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

/// Local APIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, v) in b.iter_mut().enumerate() {
        *v = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, v) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *v as std::os::raw::c_char;
    }
}

/// Creates and configures vCPU `index` of `count`.
pub fn create(
    kvm: &Kvm,
    vm: &VmFd,
    index: u32,
    count: u32,
    entry: Entry,
) -> Result<VcpuFd, VcpuError> {
    let err = |what| {
        move |source| VcpuError::Ioctl {
            index,
            what,
            source,
        }
    };
    let fd = vm
        .create_vcpu(u64::from(index))
        .map_err(err("KVM_CREATE_VCPU"))?;
    let mut cpuid = kvm
        .get_supported_cpuid(CPUID_ENTRIES)
        .map_err(err("KVM_GET_SUPPORTED_CPUID"))?;
    arch::cpuid::patch_for_vcpu(cpuid.as_mut_slice(), index, count);
    fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
    let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    match entry {
        Entry::Raw {
            mode,
            load_addr,
            cr3,
        } => {
            let sregs = match mode {
                EntryMode::Real => arch::regs::real_mode_sregs(sregs, load_addr),
                EntryMode::Long => arch::regs::long_mode_sregs(sregs, cr3),
            };
            fd.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
            let regs = arch::regs::entry_regs(mode, load_addr, index.into(), count.into());
            fd.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;
        }
        Entry::Linux {
            entry,
            zero_page,
            cr3,
        } => {
            let entries: Vec<kvm_bindings::kvm_msr_entry> = arch::msr::boot_msrs()
                .into_iter()
                .map(|(index, data)| kvm_bindings::kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect();
            let msrs =
                kvm_bindings::Msrs::from_entries(&entries).map_err(|_| VcpuError::Setup {
                    index,
                    what: "MSR list",
                })?;
            let set = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
            if set != entries.len() {
                tracing::debug!(
                    "vcpu{index}: KVM accepted {set} of {} boot MSRs (MSR {:#x} refused)",
                    entries.len(),
                    entries[set].index
                );
            }
            let mut lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
            set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
            set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
            fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;
            if index == 0 {
                fd.set_sregs(&arch::regs::long_mode_sregs(sregs, cr3))
                    .map_err(err("KVM_SET_SREGS"))?;
                fd.set_regs(&arch::regs::linux_entry_regs(entry, zero_page))
                    .map_err(err("KVM_SET_REGS"))?;
            }
        }
    }
    fd.set_fpu(&arch::regs::boot_fpu())
        .map_err(err("KVM_SET_FPU"))?;
    Ok(fd)
}

/// Converts a kvm-ioctls exit into a [`VmExit`], reading the fields kvm-ioctls does not
/// expose from the vCPU's `kvm_run` page.
///
/// # Safety
/// `run` must point at the `kvm_run` mapping of the vCPU that produced `exit`, and
/// `KVM_RUN` must have returned (the kernel does not touch the page meanwhile).
unsafe fn convert<'a>(exit: VcpuExit<'a>, run: *const kvm_run) -> VmExit<'a> {
    match exit {
        VcpuExit::IoOut(port, data) => VmExit::IoOut {
            port,
            // SAFETY: the caller guarantees `run` is valid; `io` is the active union member
            // for KVM_EXIT_IO and `size` does not overlap the data slice.
            size: unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read() } as usize,
            data,
        },
        VcpuExit::IoIn(port, data) => VmExit::IoIn {
            port,
            // SAFETY: as for IoOut.
            size: unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read() } as usize,
            data,
        },
        VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
        VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
        VcpuExit::Hlt => VmExit::Hlt,
        VcpuExit::Shutdown => VmExit::Shutdown,
        VcpuExit::SystemEvent(kind, data) => VmExit::SystemEvent { kind, data },
        VcpuExit::IrqWindowOpen => VmExit::IrqWindowOpen,
        VcpuExit::FailEntry(reason, cpu) => VmExit::FailEntry { reason, cpu },
        VcpuExit::InternalError => {
            // SAFETY: `internal` is the active union member for KVM_EXIT_INTERNAL_ERROR.
            // SAFETY: `internal` is the active union member for KVM_EXIT_INTERNAL_ERROR.
            let internal = unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.internal).read() };
            let n = (internal.ndata as usize).min(internal.data.len());
            VmExit::InternalError {
                suberror: internal.suberror,
                data: internal.data[..n].to_vec(),
            }
        }
        VcpuExit::Unknown => VmExit::Unknown {
            // SAFETY: `hw` is the active union member for KVM_EXIT_UNKNOWN.
            hardware_exit_reason: unsafe {
                std::ptr::addr_of!((*run).__bindgen_anon_1.hw.hardware_exit_reason).read()
            },
        },
        VcpuExit::Intr => VmExit::Interrupted,
        VcpuExit::Exception => VmExit::Other("KVM_EXIT_EXCEPTION"),
        VcpuExit::Hypercall(_) => VmExit::Other("KVM_EXIT_HYPERCALL"),
        VcpuExit::Debug(_) => VmExit::Other("KVM_EXIT_DEBUG"),
        VcpuExit::MemoryFault { .. } => VmExit::Other("KVM_EXIT_MEMORY_FAULT"),
        VcpuExit::X86Rdmsr(_) => VmExit::Other("KVM_EXIT_X86_RDMSR"),
        VcpuExit::X86Wrmsr(_) => VmExit::Other("KVM_EXIT_X86_WRMSR"),
        VcpuExit::IoapicEoi(_) => VmExit::Other("KVM_EXIT_IOAPIC_EOI"),
        VcpuExit::Nmi => VmExit::Other("KVM_EXIT_NMI"),
        _ => VmExit::Other("an exit reason ferrovm does not know"),
    }
}

/// Spawns the thread `vcpu{index}` running `fd` until the VM stops; it returns the vCPU's
/// statistics.
pub fn spawn(
    index: u32,
    fd: VcpuFd,
    buses: Arc<Buses>,
    control: Arc<Control>,
    mem: GuestMem,
) -> Result<JoinHandle<VcpuStats>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            let ctl = control.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                run_loop(index, fd, &buses, &control, &mem)
            }));
            match result {
                Ok(stats) => stats,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    ctl.request_stop(VmStop::Error(format!("vcpu{index} panicked: {msg}")));
                    VcpuStats::default()
                }
            }
        })
        .map_err(|source| VcpuError::Spawn { index, source })
}

fn run_loop(
    index: u32,
    mut fd: VcpuFd,
    buses: &Buses,
    control: &Control,
    mem: &GuestMem,
) -> VcpuStats {
    let mut stats = VcpuStats::default();
    let run_ptr: *const kvm_run = fd.get_kvm_run();
    let mut t0 = Instant::now();
    loop {
        if control.stopping() {
            if tracing::enabled!(tracing::Level::DEBUG) {
                tracing::debug!("vcpu{index} stopped at:\n{}", dump(&fd, mem));
            }
            return stats;
        }
        let result = fd.run();
        let t1 = Instant::now();
        let exit = match result {
            // SAFETY: `run_ptr` is this vCPU's kvm_run mapping and KVM_RUN has returned.
            Ok(e) => unsafe { convert(e, run_ptr) },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => VmExit::Interrupted,
            Err(e) => {
                control.request_stop(VmStop::Error(format!("vcpu{index}: KVM_RUN failed: {e}")));
                return stats;
            }
        };
        let handled = exit::handle(exit, buses);
        let t2 = Instant::now();
        stats.record(&handled.key, t1 - t0, t2 - t1);
        t0 = t2;
        match handled.action {
            ExitAction::Continue => {}
            ExitAction::Halt if control.has_irqchip() => {
                // With an in-kernel irqchip KVM handles HLT itself; a HLT exit here is
                // spurious: go back in.
            }
            ExitAction::Halt => {
                control.vcpu_halted();
                return stats;
            }
            ExitAction::Stop(ExitStop::Fault(fault)) => {
                let dump = dump(&fd, mem);
                control.request_stop(VmStop::Fault {
                    vcpu: index,
                    fault,
                    dump,
                });
                return stats;
            }
            ExitAction::Stop(ExitStop::Crash) => {
                control.request_stop(VmStop::Crash);
                return stats;
            }
            ExitAction::Stop(ExitStop::Device(reason)) => {
                control.request_stop(VmStop::Device(reason));
                return stats;
            }
        }
    }
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
