//! The start-up baseline: the least a VMM does to run the start-up guest. Opens
//! `/dev/kvm`, creates a VM, maps `MEM_MIB` MiB of anonymous guest RAM (no reserve, huge
//! pages advised, as ferrovm does) as one memory slot, copies the guest in, creates one
//! vCPU in real mode, and runs it: a write to the serial port goes to stdout, the
//! debug-exit port ends the process (closing the vCPU and VM and unmapping the RAM first).
//!
//! Usage: bare-kvm-start MEM_MIB

use std::io::Write;

use footprint::guest::{first_byte_then_exit, DEBUG_EXIT_PORT, LOAD_ADDR, SERIAL_PORT};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: bare-kvm-start MEM_MIB");
            std::process::exit(2)
        });
    let size = mib << 20;
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    // SAFETY: a fresh anonymous private mapping; nothing else refers to that range.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert!(host != libc::MAP_FAILED, "mmap of guest RAM failed");
    // SAFETY: advice on the mapping made above; it does not change its contents.
    unsafe { libc::madvise(host, size as usize, libc::MADV_HUGEPAGE) };
    let code = first_byte_then_exit();
    // SAFETY: LOAD_ADDR + code.len() lies inside the `size`-byte mapping (mib >= 1).
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            host.cast::<u8>().add(LOAD_ADDR as usize),
            code.len(),
        )
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: host as u64,
    };
    // SAFETY: the region is the live mapping above, unmapped only after the VM is closed.
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    sregs.cs.base = LOAD_ADDR;
    sregs.cs.selector = (LOAD_ADDR >> 4) as u16;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let mut regs = vcpu.get_regs().expect("KVM_GET_REGS");
    regs.rip = 0;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");
    let mut out = std::io::stdout().lock();
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(SERIAL_PORT, data) => {
                out.write_all(data)
                    .and_then(|_| out.flush())
                    .expect("stdout");
            }
            VcpuExit::IoOut(port, _) if port == u16::from(DEBUG_EXIT_PORT) => break,
            e => panic!("unexpected exit {e:?}"),
        }
    }
    drop(vcpu);
    drop(vm);
    // SAFETY: the VM using the mapping is closed; nothing refers to it any more.
    unsafe { libc::munmap(host, size as usize) };
}
