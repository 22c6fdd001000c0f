//! Memory statistics (virtio 1.2, 5.5.6.3): the guest's stats buffer is an array of
//! packed 10-byte entries, `le16 tag` then `le64 val`. Unknown tags are ignored (the spec
//! requires it); the latest value of each known tag is kept.

use super::PAGES_PER_MIB;

/// The size of one entry.
pub const STAT_SIZE: usize = 10;

/// The most entries read from one buffer (the spec defines 10 tags, Linux 6.12 sends 16);
/// the rest of a larger buffer is dropped.
pub const MAX_STATS_ENTRIES: usize = 256;

/// Statistics tags (virtio 1.2, 5.5.6.3.1, and the Linux 6.12 additions).
pub mod tag {
    /// Bytes swapped in.
    pub const SWAP_IN: u16 = 0;
    /// Bytes swapped out.
    pub const SWAP_OUT: u16 = 1;
    /// Major page faults.
    pub const MAJFLT: u16 = 2;
    /// Minor page faults.
    pub const MINFLT: u16 = 3;
    /// Bytes of memory not used for anything.
    pub const MEMFREE: u16 = 4;
    /// Bytes of memory in all.
    pub const MEMTOT: u16 = 5;
    /// Bytes available to new applications without swapping (an estimate).
    pub const AVAIL: u16 = 6;
    /// Bytes of caches reclaimable without I/O.
    pub const CACHES: u16 = 7;
    /// Successful hugetlb page allocations.
    pub const HTLB_PGALLOC: u16 = 8;
    /// Failed hugetlb page allocations.
    pub const HTLB_PGFAIL: u16 = 9;
    /// OOM killer invocations.
    pub const OOM_KILL: u16 = 10;
    /// Allocation stalls.
    pub const ALLOC_STALL: u16 = 11;
    /// Pages scanned asynchronously (kswapd).
    pub const ASYNC_SCAN: u16 = 12;
    /// Pages scanned directly.
    pub const DIRECT_SCAN: u16 = 13;
    /// Pages reclaimed asynchronously.
    pub const ASYNC_RECLAIM: u16 = 14;
    /// Pages reclaimed directly.
    pub const DIRECT_RECLAIM: u16 = 15;
    /// The number of known tags.
    pub const COUNT: usize = 16;
}

/// The latest value of each known tag the guest sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct GuestStats {
    values: [Option<u64>; tag::COUNT],
}

/// What one buffer held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Parsed {
    /// Entries with a known tag.
    pub known: u64,
    /// Entries with an unknown tag (ignored, as the spec requires).
    pub unknown: u64,
    /// A trailing partial entry (1 or 0).
    pub partial: u64,
}

impl GuestStats {
    /// Applies the entries in `bytes` (at most [`MAX_STATS_ENTRIES`]; the caller cuts).
    pub(super) fn apply(&mut self, bytes: &[u8]) -> Parsed {
        let mut p = Parsed::default();
        let entries = bytes.chunks_exact(STAT_SIZE);
        p.partial = u64::from(!entries.remainder().is_empty());
        for e in entries {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let val = u64::from_le_bytes([e[2], e[3], e[4], e[5], e[6], e[7], e[8], e[9]]);
            match self.values.get_mut(usize::from(tag)) {
                Some(slot) => {
                    *slot = Some(val);
                    p.known += 1;
                }
                None => p.unknown += 1,
            }
        }
        p
    }

    fn get(&self, tag: u16) -> Option<u64> {
        self.values.get(usize::from(tag)).copied().flatten()
    }
}

/// The balloon's sizes and the guest's latest statistics (the Firecracker `BalloonStats`
/// API object). A statistic the guest did not send is `None`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BalloonStats {
    /// The target, in 4 KiB pages.
    pub target_pages: u32,
    /// What the balloon holds, in 4 KiB pages.
    pub actual_pages: u32,
    /// The target, in MiB.
    pub target_mib: u32,
    /// What the balloon holds, in MiB.
    pub actual_mib: u32,
    /// Bytes swapped in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// Bytes swapped out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// Major page faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// Minor page faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// Bytes not used for anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// Bytes in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// Bytes available to new applications without swapping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// Bytes of caches reclaimable without I/O.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// Successful hugetlb page allocations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb page allocations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// OOM killer invocations (Linux 6.12 and later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    /// Allocation stalls (Linux 6.12 and later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    /// Pages scanned asynchronously (Linux 6.12 and later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    /// Pages scanned directly (Linux 6.12 and later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    /// Pages reclaimed asynchronously (Linux 6.12 and later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    /// Pages reclaimed directly (Linux 6.12 and later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

impl BalloonStats {
    pub(super) fn new(target_pages: u32, actual_pages: u32, g: &GuestStats) -> Self {
        BalloonStats {
            target_pages,
            actual_pages,
            target_mib: target_pages / PAGES_PER_MIB,
            actual_mib: actual_pages / PAGES_PER_MIB,
            swap_in: g.get(tag::SWAP_IN),
            swap_out: g.get(tag::SWAP_OUT),
            major_faults: g.get(tag::MAJFLT),
            minor_faults: g.get(tag::MINFLT),
            free_memory: g.get(tag::MEMFREE),
            total_memory: g.get(tag::MEMTOT),
            available_memory: g.get(tag::AVAIL),
            disk_caches: g.get(tag::CACHES),
            hugetlb_allocations: g.get(tag::HTLB_PGALLOC),
            hugetlb_failures: g.get(tag::HTLB_PGFAIL),
            oom_kill: g.get(tag::OOM_KILL),
            alloc_stall: g.get(tag::ALLOC_STALL),
            async_scan: g.get(tag::ASYNC_SCAN),
            direct_scan: g.get(tag::DIRECT_SCAN),
            async_reclaim: g.get(tag::ASYNC_RECLAIM),
            direct_reclaim: g.get(tag::DIRECT_RECLAIM),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, val: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend_from_slice(&val.to_le_bytes());
        e
    }

    #[test]
    fn entries_are_parsed_unknown_tags_and_partial_entries_ignored() {
        let mut g = GuestStats::default();
        let mut buf = [
            entry(tag::MEMFREE, 1 << 30),
            entry(999, 5),
            entry(tag::DIRECT_RECLAIM, 7),
            entry(tag::MEMFREE, 2 << 30),
        ]
        .concat();
        buf.extend_from_slice(&[1, 2, 3]);
        let p = g.apply(&buf);
        assert_eq!(
            p,
            Parsed {
                known: 3,
                unknown: 1,
                partial: 1
            }
        );
        let s = BalloonStats::new(512, 300, &g);
        assert_eq!((s.target_mib, s.actual_mib), (2, 1));
        assert_eq!(s.free_memory, Some(2 << 30), "the last value wins");
        assert_eq!(s.direct_reclaim, Some(7));
        assert_eq!(s.total_memory, None);
        assert_eq!(g.apply(&[]), Parsed::default());
    }
}
