//! Guest memory (vm-memory, anonymous mmap) and its registration as KVM memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::options::human_size;

/// Guest memory type used throughout the VMM: the devices' (with a dirty bitmap per
/// region, which vm-memory and the devices set for what they write).
pub type GuestMem = devices::virtio::GuestMemoryMmap;

/// Memory errors.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest RAM failed.
    #[error("cannot allocate {} of guest memory: {source}", human_size(*size))]
    Allocate {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("cannot register memory slot {slot} (guest {start:#x}, {}): {source}", human_size(*size))]
    Slot {
        slot: u32,
        start: u64,
        size: u64,
        source: kvm_ioctls::Error,
    },
    /// The host address of a region could not be found.
    #[error("guest memory region at {0:#x} has no host mapping")]
    HostAddress(u64),
}

/// Allocates guest RAM for `mem_size` bytes following [`arch::layout::ram_ranges`].
pub fn create(mem_size: u64) -> Result<GuestMem, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = arch::layout::ram_ranges(mem_size)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
        size: mem_size,
        source,
    })?;
    for region in mem.iter() {
        if let Ok(host) = mem.get_host_address(region.start_addr()) {
            // SAFETY: advice on a mapping owned by `mem`; MADV_HUGEPAGE does not change its
            // contents. Transparent huge pages cut page faults (very costly under nested
            // virtualization) when the kernel is copied in and when the guest touches RAM.
            let r =
                unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
            if r != 0 {
                tracing::debug!(
                    "madvise(MADV_HUGEPAGE) on guest RAM: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    Ok(mem)
}

/// Registers every region of `mem` as a KVM memory slot (slot numbers from 0), with KVM's
/// dirty page log on if `track_dirty_pages`.
pub fn register(vm: &VmFd, mem: &GuestMem, track_dirty_pages: bool) -> Result<(), MemoryError> {
    let flags = if track_dirty_pages {
        kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
    } else {
        0
    };
    for (slot, region) in mem.iter().enumerate() {
        let start = region.start_addr().raw_value();
        let size = region.len();
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::HostAddress(start))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags,
            guest_phys_addr: start,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: the host range [host, host + size) is a live mapping owned by `mem`, which
        // the VMM keeps alive for as long as the VM exists (vCPU threads hold clones).
        unsafe { vm.set_user_memory_region(r) }.map_err(|source| MemoryError::Slot {
            slot: slot as u32,
            start,
            size,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        let m = create(16 << 20).unwrap();
        assert_eq!(m.num_regions(), 1);
    }

    #[test]
    fn large_memory_skips_the_hole() {
        // Anonymous mappings are lazy: 5 GiB of address space costs nothing here.
        let m = create(5 << 30).unwrap();
        assert_eq!(m.num_regions(), 2);
        let starts: Vec<u64> = m.iter().map(|r| r.start_addr().raw_value()).collect();
        let lens: Vec<u64> = m.iter().map(|r| r.len()).collect();
        assert_eq!(starts, vec![0, 0x1_0000_0000]);
        assert_eq!(lens, vec![0xc000_0000, 0x8000_0000]);
    }
}
