//! The physical limit for the exit-cost benchmark: the smallest program that runs the
//! benchmark guest. One vCPU on the main thread, real mode, a `KVM_RUN` loop that does
//! nothing but count port writes. No threads, no buses, no statistics.
//!
//! Usage: bare-kvm-loop N    (prints the number of exits seen)

#[path = "../guest.rs"]
mod guest;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

const MEM_SIZE: usize = 1 << 20;
const LOAD: u64 = 0x1_0000;

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: bare-kvm-loop N");
            std::process::exit(2)
        });
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    // SAFETY: anonymous private mapping, checked below, never unmapped before exit.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED, "mmap");
    let code = guest::port_loop(n);
    // SAFETY: the mapping is MEM_SIZE bytes and LOAD + code.len() is far below that.
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            (mem as *mut u8).add(LOAD as usize),
            code.len(),
        )
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the region is a live mapping of MEM_SIZE bytes for the life of the process.
    unsafe { vm.set_user_memory_region(region) }.expect("set memory");
    let mut vcpu = vm.create_vcpu(0).expect("create vcpu");
    let mut sregs = vcpu.get_sregs().expect("get sregs");
    sregs.cs.base = LOAD;
    sregs.cs.selector = (LOAD >> 4) as u16;
    vcpu.set_sregs(&sregs).expect("set sregs");
    let mut regs = vcpu.get_regs().expect("get regs");
    regs.rip = 0;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("set regs");
    let mut exits: u64 = 0;
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, _) if port == u16::from(guest::DEBUG_EXIT_PORT) => break,
            VcpuExit::IoOut(_, _) => exits += 1,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    println!("{exits}");
}
