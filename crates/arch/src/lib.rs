//! x86_64 platform knowledge: the guest physical memory layout, GDT, identity page tables,
//! the register state for entering real or long mode, and CPUID set-up.
//!
//! Everything here is pure computation plus writes into guest memory; no ioctls.

pub mod acpi;
pub mod boot;
pub mod bootparams;
pub mod cpuid;
pub mod firmware;
pub mod gdt;
pub mod layout;
pub mod linux;
pub mod msr;
pub mod paging;
pub mod regs;

/// Errors of the arch crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write {what} at guest address {addr:#x}: {source}")]
    GuestWrite {
        what: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;
