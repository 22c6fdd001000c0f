//! Guest memory (vm-memory, anonymous mmap) and its registration as KVM memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::options::human_size;

/// Guest memory type used throughout the VMM: with a dirty bitmap per region, which
/// vm-memory sets for every write it makes (and the devices for writes they make through
/// raw pointers), so that a diff snapshot also holds the pages the devices wrote.
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
    /// Mapping a snapshot's memory file failed.
    #[error("cannot map guest memory (guest {start:#x}, {}) from the snapshot's memory file: {source}", human_size(*size))]
    Map {
        start: u64,
        size: u64,
        source: std::io::Error,
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

/// Guest memory mapped `MAP_PRIVATE` from a snapshot's memory file, whose regions
/// `layout` (guest address, size) lie one after the other: nothing is read now, a page is
/// read from the file (or the page cache) when the guest first touches it, and writes stay
/// private to this VM.
pub fn map_file(file: &std::fs::File, layout: &[(u64, u64)]) -> Result<GuestMem, MemoryError> {
    use vm_memory::bitmap::AtomicBitmap;
    use vm_memory::{FileOffset, GuestRegionMmap, MmapRegion};
    let mut regions = Vec::with_capacity(layout.len());
    let mut offset = 0u64;
    for &(start, size) in layout {
        let clone = file.try_clone().map_err(|source| MemoryError::Map {
            start,
            size,
            source,
        })?;
        let mapping = MmapRegion::<AtomicBitmap>::build(
            Some(FileOffset::new(clone, offset)),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| MemoryError::Map {
            start,
            size,
            source: std::io::Error::other(e.to_string()),
        })?;
        regions.push(GuestRegionMmap::new(mapping, GuestAddress(start)).ok_or(
            MemoryError::Map {
                start,
                size,
                source: std::io::Error::other("the region wraps around the address space"),
            },
        )?);
        offset += size;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Map {
        start: 0,
        size: offset,
        source: std::io::Error::other(e.to_string()),
    })
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
