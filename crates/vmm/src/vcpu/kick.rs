//! The kick's target: the byte `kvm_run.immediate_exit` of the vCPU running on this thread,
//! which the kick signal's handler sets so that `KVM_RUN` returns at once (or is not
//! entered), even when the signal arrives just before the vCPU enters it.
//!
//! The handler cannot borrow the `VcpuFd` (the thread holds it mutably, and kvm-ioctls
//! hands out `&mut kvm_run` at every `run()`), and a pointer taken from one of those
//! borrows would outlive it. So the thread maps its vCPU's `kvm_run` page a second time
//! ([`KickTarget`]): memory that no Rust reference ever covers, shared with KVM's own
//! mapping as the kernel shares it with every mapping of the vCPU file, written only with
//! volatile stores.

use std::cell::Cell;
use std::os::fd::AsRawFd;

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;

thread_local! {
    /// `immediate_exit` in this thread's [`KickTarget`] mapping; null when there is none.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal's handler: makes the vCPU of this thread leave (or not enter)
/// `KVM_RUN`. Async-signal-safe: one thread-local read and one byte write.
pub(crate) fn on_kick() {
    IMMEDIATE_EXIT.with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: a non-null pointer is `immediate_exit` inside this thread's live
            // KickTarget mapping (set by `KickTarget::install`, cleared before the unmap;
            // a signal handler runs on this thread). No Rust reference points into that
            // mapping; a volatile write because KVM reads the byte.
            unsafe { p.write_volatile(1) };
        }
    });
}

/// This thread's second mapping of its vCPU's `kvm_run` page, for [`on_kick`]; dropping
/// it disarms the kick and unmaps the page.
pub(super) struct KickTarget {
    page: *mut libc::c_void,
    len: usize,
}

impl KickTarget {
    /// Maps `fd`'s `kvm_run` page and points this thread's kick at its `immediate_exit`.
    pub(super) fn install(fd: &VcpuFd) -> std::io::Result<KickTarget> {
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let len = usize::try_from(page)
            .unwrap_or(4096)
            .max(std::mem::size_of::<kvm_run>());
        // SAFETY: a new shared mapping of the vCPU file's first page (its kvm_run, which
        // KVM lets any number of mappings share) at an address the kernel picks: no memory
        // the program uses is affected. The result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let target = p
            .cast::<u8>()
            .wrapping_add(std::mem::offset_of!(kvm_run, immediate_exit));
        IMMEDIATE_EXIT.with(|c| c.set(target));
        Ok(KickTarget { page: p, len })
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
        // SAFETY: the mapping made in `install`, of `len` bytes, no longer reachable by
        // the kick handler (the thread-local was cleared on this thread just above).
        if unsafe { libc::munmap(self.page, self.len) } != 0 {
            tracing::warn!(
                "cannot unmap a vCPU's kick page: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
