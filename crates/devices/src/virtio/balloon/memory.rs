//! Giving guest memory back to the host: `madvise(MADV_DONTNEED)` on the host mapping of
//! guest RAM. This is the only code that hands the kernel a pointer into guest memory, and
//! only ever one that vm-memory produced for a range it checked lies inside one region.
//!
//! What `MADV_DONTNEED` does depends on the mapping:
//! - anonymous private memory (guest RAM today): the pages are freed and fault back in as
//!   zeroes;
//! - a private file mapping (`MAP_PRIVATE`, guest RAM restored from a snapshot file): the
//!   guest's private copies are freed and the pages read the *file's* content again, not
//!   zeroes. That is still correct (the guest must treat ballooned and reported pages as
//!   uninitialised) and gives the anonymous memory back; the file's page cache stays, as
//!   the kernel's to reclaim. Punching a hole (`MADV_REMOVE`, `fallocate`) is not possible
//!   on a private mapping, and would destroy the snapshot anyway;
//! - a shared mapping (memfd, hugetlbfs, `MAP_SHARED` file): `MADV_DONTNEED` only unmaps,
//!   the memory stays allocated; giving it back would take `MADV_REMOVE` (not done here).
//!   Hugetlbfs additionally refuses ranges that are not whole huge pages (counted as
//!   failures).

use std::sync::OnceLock;

use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::super::GuestMemoryMmap;

/// The balloon's page size (fixed by the spec, whatever the guest's page size).
pub const PAGE_SHIFT: u32 = 12;
/// 4 KiB.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// Why a range was not given back.
#[derive(Debug, thiserror::Error)]
pub(super) enum DiscardError {
    /// vm-memory refused the range (it checked it lies inside the region).
    #[error("no host mapping for guest range {gpa:#x}+{len:#x}: {source}")]
    Mapping {
        gpa: u64,
        len: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The kernel refused.
    #[error(
        "madvise(MADV_DONTNEED) of guest range {gpa:#x}+{len:#x} (host {host:#x}) failed: {source}"
    )]
    Madvise {
        gpa: u64,
        len: u64,
        host: usize,
        #[source]
        source: std::io::Error,
    },
}

/// What [`discard`] did with a range.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Discarded {
    /// Bytes of the range inside guest RAM.
    pub in_ram: u64,
    /// Bytes handed back to the host (whole host pages inside the range).
    pub released: u64,
    /// The first failure, if any (the other regions are still tried).
    pub failed: bool,
}

fn host_page_size() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| {
        // SAFETY: sysconf takes no pointers.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n)
            .ok()
            .filter(|n| n.is_power_of_two())
            .unwrap_or(PAGE_SIZE as usize)
    })
}

/// Gives guest physical range `[gpa, gpa + len)` back to the host: the parts inside guest
/// RAM, split at region boundaries, shrunk to whole host pages. Parts outside RAM are left
/// alone (`in_ram` says how much was inside). `errors` gets each failure.
pub(super) fn discard(
    mem: &GuestMemoryMmap,
    gpa: u64,
    len: u64,
    mut errors: impl FnMut(DiscardError),
) -> Discarded {
    let mut out = Discarded::default();
    // A range wrapping past the top of the address space is cut at the top.
    let end = gpa.saturating_add(len);
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let region_end = start.saturating_add(region.len());
        let (s, e) = (gpa.max(start), end.min(region_end));
        if s >= e {
            continue;
        }
        out.in_ram += e - s;
        match release(region, s - start, e - s, s) {
            Ok(n) => out.released += n,
            Err(err) => {
                out.failed = true;
                errors(err);
            }
        }
    }
    out
}

/// `madvise(MADV_DONTNEED)` on the whole host pages of `len` bytes at `offset` in `region`.
fn release<R: GuestMemoryRegion>(
    region: &R,
    offset: u64,
    len: u64,
    gpa: u64,
) -> Result<u64, DiscardError> {
    let mapping = |source| DiscardError::Mapping { gpa, len, source };
    let count = usize::try_from(len).map_err(|_| {
        mapping(vm_memory::GuestMemoryError::InvalidGuestAddress(
            vm_memory::GuestAddress(gpa),
        ))
    })?;
    // vm-memory checks that [offset, offset + count) lies inside the region's mapping.
    let slice = region
        .get_slice(MemoryRegionAddress(offset), count)
        .map_err(mapping)?;
    let host = slice.ptr_guard_mut().as_ptr() as usize;
    let page = host_page_size();
    let (Some(first), Some(last)) = (
        host.checked_next_multiple_of(page),
        host.checked_add(slice.len()).map(|end| end / page * page),
    ) else {
        return Ok(0);
    };
    if last <= first {
        return Ok(0);
    }
    // SAFETY: [first, last) lies inside [host, host + count), which vm-memory checked is
    // part of the live mapping of this guest memory region (kept alive by `region`, which
    // the caller borrows for the duration). MADV_DONTNEED only drops the contents of those
    // pages, memory the guest gave up; nothing in this process holds a Rust reference into
    // guest memory (it is only accessed through volatile pointers), so no aliasing
    // guarantee is broken.
    let rc = unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            last - first,
            libc::MADV_DONTNEED,
        )
    };
    if rc != 0 {
        return Err(DiscardError::Madvise {
            gpa,
            len,
            host: first,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok((last - first) as u64)
}

/// Sorts and de-duplicates `pfns`, then appends each run of consecutive page frame numbers
/// to `runs` as (first guest physical address, bytes).
pub(super) fn coalesce(pfns: &mut Vec<u32>, runs: &mut Vec<(u64, u64)>) {
    pfns.sort_unstable();
    pfns.dedup();
    let mut iter = pfns.iter().map(|&p| u64::from(p));
    let Some(mut first) = iter.next() else {
        return;
    };
    let mut count = 1u64;
    for pfn in iter {
        if pfn == first + count {
            count += 1;
        } else {
            runs.push((first << PAGE_SHIFT, count << PAGE_SHIFT));
            first = pfn;
            count = 1;
        }
    }
    runs.push((first << PAGE_SHIFT, count << PAGE_SHIFT));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn runs_are_sorted_deduplicated_and_never_overflow() {
        let mut runs = Vec::new();
        coalesce(&mut vec![], &mut runs);
        assert!(runs.is_empty());
        coalesce(&mut vec![7, 5, 6, 6, 9, u32::MAX, u32::MAX, 0], &mut runs);
        assert_eq!(
            runs,
            vec![
                (0, PAGE_SIZE),
                (5 << 12, 3 << 12),
                (9 << 12, PAGE_SIZE),
                (u64::from(u32::MAX) << 12, PAGE_SIZE),
            ]
        );
    }

    fn fill(mem: &GuestMemoryMmap, at: u64, len: usize, byte: u8) {
        mem.write_slice(&vec![byte; len], GuestAddress(at)).unwrap();
    }

    fn all(mem: &GuestMemoryMmap, at: u64, len: usize, byte: u8) -> bool {
        let mut b = vec![0u8; len];
        mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        b.iter().all(|&x| x == byte)
    }

    #[test]
    fn discarding_stays_inside_ram_and_splits_at_region_boundaries() {
        // Two adjacent regions (separate mappings), a hole, a third region.
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x10_0000), 0x10_0000),
            (GuestAddress(0x40_0000), 0x10_0000),
        ])
        .unwrap();
        for (at, len) in [(0, 0x20_0000), (0x40_0000, 0x10_0000)] {
            fill(&mem, at, len, 0xaa);
        }
        let mut errs = 0;
        // Across the boundary of the adjacent regions.
        let d = discard(&mem, 0xf_f000, 0x2000, |_| errs += 1);
        assert_eq!((d.in_ram, d.released, d.failed), (0x2000, 0x2000, false));
        assert!(all(&mem, 0xf_f000, 0x2000, 0));
        assert!(all(&mem, 0xf_e000, 0x1000, 0xaa));
        assert!(all(&mem, 0x10_1000, 0x1000, 0xaa));
        // From the end of RAM into the hole and on into the third region.
        let d = discard(&mem, 0x1f_f000, 0x20_2000, |_| errs += 1);
        assert_eq!((d.in_ram, d.released), (0x2000, 0x2000));
        assert!(all(&mem, 0x1f_f000, 0x1000, 0));
        assert!(all(&mem, 0x40_0000, 0x1000, 0));
        assert!(all(&mem, 0x40_1000, 0x1000, 0xaa));
        // Entirely outside, or wrapping the address space: nothing.
        assert_eq!(discard(&mem, 0x30_0000, 0x1000, |_| errs += 1).in_ram, 0);
        assert_eq!(
            discard(&mem, u64::MAX - 0xfff, u64::MAX, |_| errs += 1).in_ram,
            0
        );
        // Not page aligned: only the whole page inside is released.
        fill(&mem, 0x8_0000, 0x3000, 0xbb);
        let d = discard(&mem, 0x8_0800, 0x2000, |_| errs += 1);
        assert_eq!((d.in_ram, d.released), (0x2000, 0x1000));
        assert!(all(&mem, 0x8_0000, 0x1000, 0xbb));
        assert!(all(&mem, 0x8_1000, 0x1000, 0));
        assert!(all(&mem, 0x8_2000, 0x1000, 0xbb));
        assert_eq!(errs, 0);
    }
}
