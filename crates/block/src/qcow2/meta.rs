//! Metadata engine of an open qcow2 image: L1/L2 lookup through a bounded L2 cache, refcount
//! blocks through a bounded cache, cluster allocation, and crash-safe write-back.
//!
//! Write-back order (`flush_meta`), which keeps the image consistent if the process dies at
//! any instant (only leaks are possible):
//! 1. guest data is written to newly allocated clusters immediately (unreferenced: a leak);
//! 2. dirty refcount blocks, then refcount table entries (increments only);
//! 3. fdatasync, then dirty L2 tables; fdatasync, then dirty L1 entries;
//! 4. fdatasync, then the deferred refcount decrements of freed clusters.
//!
//! Clusters are allocated at the end of the image only, so a freed cluster is never reused
//! while an old on-disk reference might still point to it.

use super::cache::Lru;
use super::header::Compression;
use super::refcount;
use crate::{read_full, Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Offset bits of L1/L2 entries (bits 9..=55).
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Offset bits of refcount table entries.
pub const RT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
pub const COPIED: u64 = 1 << 63;
pub const COMPRESSED: u64 = 1 << 62;
pub const ZERO: u64 = 1;

/// Allocation gives up when this many clusters past the end of the file are marked used
/// (hostile refcount blocks).
const MAX_SKIPPED_CLUSTERS: u64 = 1 << 16;

/// Most tables a cache holds (eviction scans all entries).
const MAX_CACHE_ENTRIES: u64 = 8192;

/// Cache budgets in bytes.
const L2_CACHE_BYTES: u64 = 32 << 20;
const RB_CACHE_BYTES: u64 = 8 << 20;

/// The file plus its name, with error-mapping helpers.
#[derive(Debug)]
pub struct Io {
    pub file: File,
    pub path: PathBuf,
    /// QEMU's `cache=unsafe`: flushes write metadata back but skip fdatasync.
    pub no_sync: bool,
}

impl Io {
    pub fn err(&self, op: &'static str, offset: u64) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: self.path.clone(),
            op,
            offset,
            source,
        }
    }

    pub fn corrupt(&self, offset: u64, msg: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            offset,
            msg,
        }
    }

    /// Reads `buf.len()` bytes; bytes past the end of the file read as zero.
    pub fn pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = read_full(&self.file, buf, offset).map_err(self.err("read", offset))?;
        buf[n..].fill(0);
        Ok(())
    }

    pub fn pwrite(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(self.err("write", offset))
    }

    pub fn sync(&self) -> Result<()> {
        if self.no_sync {
            return Ok(());
        }
        self.file.sync_data().map_err(self.err("fdatasync", 0))
    }
}

/// Immutable geometry of an image.
#[derive(Debug, Clone, Copy)]
pub struct Geo {
    pub version: u32,
    pub cluster_bits: u32,
    pub cs: u64,
    /// Entries per L2 table.
    pub l2_entries: u64,
    pub refcount_order: u32,
    /// Refcount entries per refcount block.
    pub rb_entries: u64,
    pub compression: Compression,
}

impl Geo {
    pub fn new(
        version: u32,
        cluster_bits: u32,
        refcount_order: u32,
        compression: Compression,
    ) -> Geo {
        let cs = 1u64 << cluster_bits;
        Geo {
            version,
            cluster_bits,
            cs,
            l2_entries: cs / 8,
            refcount_order,
            rb_entries: (cs * 8) >> refcount_order,
            compression,
        }
    }

    /// Bytes of guest space covered by one L2 table.
    pub fn l2_span(&self) -> u64 {
        self.cs * self.l2_entries
    }

    /// Bit position of the sector count in a compressed L2 entry.
    pub fn csize_shift(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }

    /// Host offset and byte length of a compressed cluster's data.
    pub fn compressed_range(&self, entry: u64) -> (u64, u64) {
        let x = self.csize_shift();
        let host = entry & ((1u64 << x) - 1);
        let sectors = (entry >> x) & ((1u64 << (self.cluster_bits - 8)) - 1);
        (host, (sectors + 1) * 512 - (host & 511))
    }
}

/// Classification of one L2 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unallocated,
    Zero,
    /// Uncompressed data at this host offset; `copied` means refcount is exactly one.
    Data {
        host: u64,
        copied: bool,
    },
    Compressed(u64),
}

impl Kind {
    pub fn of(geo: &Geo, entry: u64) -> Kind {
        if entry & COMPRESSED != 0 {
            return Kind::Compressed(entry);
        }
        if geo.version >= 3 && entry & ZERO != 0 {
            return Kind::Zero;
        }
        match entry & OFFSET_MASK {
            0 => Kind::Unallocated,
            host => Kind::Data {
                host,
                copied: entry & COPIED != 0,
            },
        }
    }
}

/// Mutable metadata state, protected by the image's mutex.
#[derive(Debug)]
pub struct Meta {
    pub io: Io,
    pub geo: Geo,
    pub writable: bool,
    pub size: u64,
    pub l1: Vec<u64>,
    pub l1_offset: u64,
    /// Dirty range of L1 entries, [lo, hi).
    pub l1_dirty: Option<(usize, usize)>,
    pub reftable: Vec<u64>,
    pub reftable_offset: u64,
    pub reftable_dirty: Option<(usize, usize)>,
    pub l2_cache: Lru<Vec<u64>>,
    pub rb_cache: Lru<Vec<u8>>,
    /// Next candidate cluster for allocation (always at or past the end of the file).
    pub next_alloc: u64,
    /// Length of the file as far as our writes are concerned.
    pub phys_len: u64,
    /// Host clusters whose refcount drops by one at the next metadata flush.
    pub pending_free: Vec<u64>,
    /// Next free byte in the cluster currently being filled with compressed data.
    pub comp_cursor: Option<u64>,
    /// Last decompressed cluster: (L2 entry, data).
    pub decomp: Option<(u64, Vec<u8>)>,
}

fn widen(range: Option<(usize, usize)>, lo: usize, hi: usize) -> Option<(usize, usize)> {
    Some(match range {
        None => (lo, hi),
        Some((a, b)) => (a.min(lo), b.max(hi)),
    })
}

impl Meta {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        io: Io,
        geo: Geo,
        writable: bool,
        size: u64,
        l1: Vec<u64>,
        l1_offset: u64,
        reftable: Vec<u64>,
        reftable_offset: u64,
        file_len: u64,
    ) -> Meta {
        let l2_cap = (L2_CACHE_BYTES / geo.cs).clamp(16, MAX_CACHE_ENTRIES) as usize;
        let rb_cap = (RB_CACHE_BYTES / geo.cs).clamp(16, MAX_CACHE_ENTRIES) as usize;
        Meta {
            io,
            geo,
            writable,
            size,
            l1,
            l1_offset,
            l1_dirty: None,
            reftable,
            reftable_offset,
            reftable_dirty: None,
            l2_cache: Lru::new(l2_cap),
            rb_cache: Lru::new(rb_cap),
            next_alloc: file_len.div_ceil(geo.cs) * geo.cs,
            phys_len: file_len,
            pending_free: Vec::new(),
            comp_cursor: None,
            decomp: None,
        }
    }

    /// End of the image as far as valid references go.
    pub fn image_end(&self) -> u64 {
        self.next_alloc.max(self.phys_len)
    }

    /// Checks that a metadata table offset is a sane cluster inside the image.
    fn check_table_offset(&self, what: &str, off: u64, referenced_at: u64) -> Result<()> {
        if !off.is_multiple_of(self.geo.cs) {
            return Err(self.io.corrupt(
                referenced_at,
                format!("{what} offset {off:#x} is not cluster aligned"),
            ));
        }
        if off < self.geo.cs || off + self.geo.cs > self.image_end() {
            return Err(self.io.corrupt(
                referenced_at,
                format!(
                    "{what} offset {off:#x} is outside the image (end {:#x})",
                    self.image_end()
                ),
            ));
        }
        Ok(())
    }

    // ---- L2 tables -------------------------------------------------------------------

    /// Makes sure the L2 table at `off` is cached.
    fn load_l2(&mut self, off: u64, referenced_at: u64) -> Result<()> {
        if self.l2_cache.contains(off) {
            return Ok(());
        }
        self.check_table_offset("L2 table", off, referenced_at)?;
        self.make_room_l2()?;
        let mut raw = vec![0u8; self.geo.cs as usize];
        self.io.pread(&mut raw, off)?;
        let table = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(<[u8; 8]>::try_from(c).unwrap_or_default()))
            .collect();
        self.l2_cache.insert(off, table, false);
        Ok(())
    }

    fn make_room_l2(&mut self) -> Result<()> {
        if let Some(victim) = self.l2_cache.victim() {
            let dirty = self.l2_cache.get_mut(victim).is_some_and(|s| s.dirty);
            if dirty {
                // The L2 table may reference clusters whose refcounts are only in memory.
                self.write_refcounts()?;
                self.io.sync()?;
                self.write_l2(victim)?;
            }
            self.l2_cache.remove(victim);
        }
        Ok(())
    }

    fn write_l2(&mut self, off: u64) -> Result<()> {
        let Some(slot) = self.l2_cache.get_mut(off) else {
            return Ok(());
        };
        let mut raw = Vec::with_capacity(slot.val.len() * 8);
        for e in &slot.val {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        slot.dirty = false;
        self.io.pwrite(&raw, off)?;
        self.phys_len = self.phys_len.max(off + raw.len() as u64);
        Ok(())
    }

    fn l1_index(&self, guest: u64) -> usize {
        (guest / self.geo.l2_span()) as usize
    }

    fn l2_index(&self, guest: u64) -> usize {
        ((guest >> self.geo.cluster_bits) % self.geo.l2_entries) as usize
    }

    /// L2 table offset for `guest`, or 0 when no table is allocated.
    fn l2_offset(&self, guest: u64) -> u64 {
        self.l1
            .get(self.l1_index(guest))
            .map_or(0, |e| e & OFFSET_MASK)
    }

    /// Runs of equally classified clusters starting at `guest`, at most `max` bytes, not
    /// crossing an L2 table. Returns the kind of the first cluster (for data: the host
    /// offset of `guest` itself) and the length of the run.
    pub fn run(&mut self, guest: u64, max: u64) -> Result<(Kind, u64)> {
        let cs = self.geo.cs;
        let in_cluster = guest & (cs - 1);
        let to_l2_end = self.geo.l2_span() - guest % self.geo.l2_span();
        let max = max.min(to_l2_end);
        let l2off = self.l2_offset(guest);
        if l2off == 0 {
            return Ok((Kind::Unallocated, max));
        }
        let l1_at = self.l1_offset + self.l1_index(guest) as u64 * 8;
        self.load_l2(l2off, l1_at)?;
        let idx = self.l2_index(guest);
        let geo = self.geo;
        let end = self.image_end();
        let Some(slot) = self.l2_cache.get_mut(l2off) else {
            return Err(self
                .io
                .corrupt(l2off, "L2 table vanished from the cache".into()));
        };
        let table = &slot.val;
        let first = Kind::of(&geo, table[idx]);
        let first_len = (cs - in_cluster).min(max);
        let check_data = |host: u64, entry_at: u64| -> std::result::Result<(), (u64, String)> {
            if host & (cs - 1) != 0 {
                return Err((
                    entry_at,
                    format!("data cluster offset {host:#x} is not cluster aligned"),
                ));
            }
            if host + cs > end.div_ceil(cs) * cs {
                return Err((
                    entry_at,
                    format!(
                        "data cluster offset {host:#x} is past the end of the image ({end:#x})"
                    ),
                ));
            }
            Ok(())
        };
        let entry_at = l2off + idx as u64 * 8;
        let kind = match first {
            Kind::Data { host, copied } => {
                check_data(host, entry_at).map_err(|(o, m)| self.io.corrupt(o, m))?;
                Kind::Data {
                    host: host + in_cluster,
                    copied,
                }
            }
            Kind::Compressed(e) => return Ok((Kind::Compressed(e), first_len)),
            k => k,
        };
        let mut len = first_len;
        let mut i = idx + 1;
        while len < max && i < table.len() {
            let k = Kind::of(&geo, table[i]);
            let same = match (first, k) {
                (
                    Kind::Data {
                        host: h0,
                        copied: c0,
                    },
                    Kind::Data { host, copied },
                ) => {
                    copied == c0
                        && host == h0 + (i - idx) as u64 * cs
                        && check_data(host, l2off + i as u64 * 8).is_ok()
                }
                (Kind::Zero, Kind::Zero) | (Kind::Unallocated, Kind::Unallocated) => true,
                _ => false,
            };
            if !same {
                break;
            }
            len = (len + cs).min(max);
            i += 1;
        }
        Ok((kind, len))
    }

    /// The raw L2 entry for `guest` (0 when unallocated).
    pub fn entry(&mut self, guest: u64) -> Result<u64> {
        let l2off = self.l2_offset(guest);
        if l2off == 0 {
            return Ok(0);
        }
        let l1_at = self.l1_offset + self.l1_index(guest) as u64 * 8;
        self.load_l2(l2off, l1_at)?;
        let idx = self.l2_index(guest);
        Ok(self.l2_cache.get_mut(l2off).map_or(0, |s| s.val[idx]))
    }

    /// Sets the L2 entry for `guest`, allocating the L2 table when needed.
    pub fn set_entry(&mut self, guest: u64, val: u64) -> Result<()> {
        let l1i = self.l1_index(guest);
        if l1i >= self.l1.len() {
            return Err(self.io.corrupt(
                self.l1_offset,
                format!("guest offset {guest:#x} beyond the L1 table"),
            ));
        }
        let l1e = self.l1[l1i];
        let mut l2off = l1e & OFFSET_MASK;
        if l2off == 0 {
            l2off = self.alloc_cluster()?;
            self.make_room_l2()?;
            self.l2_cache
                .insert(l2off, vec![0u64; self.geo.l2_entries as usize], true);
            self.l1[l1i] = l2off | COPIED;
            self.l1_dirty = widen(self.l1_dirty, l1i, l1i + 1);
        } else if l1e & COPIED == 0 {
            return Err(Error::Unsupported {
                path: self.io.path.clone(),
                msg: format!("L2 table at {l2off:#x} is shared (internal snapshots); writing it is not supported"),
            });
        } else {
            self.load_l2(l2off, self.l1_offset + l1i as u64 * 8)?;
        }
        let idx = self.l2_index(guest);
        if let Some(slot) = self.l2_cache.get_mut(l2off) {
            slot.val[idx] = val;
            slot.dirty = true;
        }
        Ok(())
    }

    // ---- refcounts -------------------------------------------------------------------

    fn rb_pos(&self, host: u64) -> (usize, usize) {
        let cluster = host >> self.geo.cluster_bits;
        (
            (cluster / self.geo.rb_entries) as usize,
            (cluster % self.geo.rb_entries) as usize,
        )
    }

    fn load_rb(&mut self, off: u64, referenced_at: u64) -> Result<()> {
        if self.rb_cache.contains(off) {
            return Ok(());
        }
        self.check_table_offset("refcount block", off, referenced_at)?;
        self.make_room_rb()?;
        let mut raw = vec![0u8; self.geo.cs as usize];
        self.io.pread(&mut raw, off)?;
        self.rb_cache.insert(off, raw, false);
        Ok(())
    }

    fn make_room_rb(&mut self) -> Result<()> {
        if let Some(victim) = self.rb_cache.victim() {
            if self.rb_cache.get_mut(victim).is_some_and(|s| s.dirty) {
                // Refcount blocks only ever hold increments here: writing early is safe.
                self.write_rb(victim)?;
            }
            self.rb_cache.remove(victim);
        }
        Ok(())
    }

    fn write_rb(&mut self, off: u64) -> Result<()> {
        let Some(slot) = self.rb_cache.get_mut(off) else {
            return Ok(());
        };
        slot.dirty = false;
        let end = off + slot.val.len() as u64;
        self.io.pwrite(&slot.val, off)?;
        self.phys_len = self.phys_len.max(end);
        Ok(())
    }

    /// Refcount of the cluster containing `host`.
    pub fn refcount(&mut self, host: u64) -> Result<u64> {
        let (ti, idx) = self.rb_pos(host);
        let Some(&rte) = self.reftable.get(ti) else {
            return Ok(0);
        };
        let rb = rte & RT_OFFSET_MASK;
        if rb == 0 {
            return Ok(0);
        }
        self.load_rb(rb, self.reftable_offset + ti as u64 * 8)?;
        let order = self.geo.refcount_order;
        Ok(self
            .rb_cache
            .get_mut(rb)
            .map_or(0, |s| refcount::get(&s.val, order, idx)))
    }

    /// Sets the refcount of the cluster containing `host`, allocating refcount blocks (and
    /// growing the refcount table) as needed.
    pub fn set_refcount(&mut self, host: u64, val: u64) -> Result<()> {
        let order = self.geo.refcount_order;
        if val > refcount::max(order) {
            return Err(Error::Unsupported {
                path: self.io.path.clone(),
                msg: format!(
                    "refcount of cluster {host:#x} would exceed {}",
                    refcount::max(order)
                ),
            });
        }
        let (ti, idx) = self.rb_pos(host);
        let rb = self.ensure_rb(ti)?;
        if let Some(slot) = self.rb_cache.get_mut(rb) {
            refcount::set(&mut slot.val, order, idx, val);
            slot.dirty = true;
        }
        Ok(())
    }

    /// Offset of refcount block `ti` (cached), allocating it if missing.
    fn ensure_rb(&mut self, ti: usize) -> Result<u64> {
        if ti >= self.reftable.len() {
            self.grow_reftable(ti)?;
        }
        let rb = self.reftable[ti] & RT_OFFSET_MASK;
        if rb != 0 {
            self.load_rb(rb, self.reftable_offset + ti as u64 * 8)?;
            return Ok(rb);
        }
        let off = self.bump()?;
        self.make_room_rb()?;
        self.rb_cache
            .insert(off, vec![0u8; self.geo.cs as usize], true);
        self.reftable[ti] = off;
        self.reftable_dirty = widen(self.reftable_dirty, ti, ti + 1);
        // The new block's own refcount (possibly stored in itself).
        self.set_refcount(off, 1)?;
        // Re-load in case the recursion evicted it.
        self.load_rb(off, self.reftable_offset + ti as u64 * 8)?;
        Ok(off)
    }

    /// Replaces the refcount table by a larger copy (committed to the header immediately).
    fn grow_reftable(&mut self, min_index: usize) -> Result<()> {
        let per_cluster = (self.geo.cs / 8) as usize;
        let want = (min_index + 1)
            .max(self.reftable.len() * 2)
            .div_ceil(per_cluster)
            * per_cluster;
        let bytes = want as u64 * 8;
        if bytes > super::header::MAX_REFTABLE_BYTES {
            return Err(Error::Unsupported {
                path: self.io.path.clone(),
                msg: format!("refcount table would grow to {bytes} bytes"),
            });
        }
        let clusters = bytes / self.geo.cs;
        let new_off = self.next_alloc;
        self.next_alloc += clusters * self.geo.cs;
        let old_off = self.reftable_offset;
        let old_clusters = (self.reftable.len() as u64 * 8).div_ceil(self.geo.cs);
        self.reftable.resize(want, 0);
        for c in 0..clusters {
            self.set_refcount(new_off + c * self.geo.cs, 1)?;
        }
        // Everything the new table points to must be on disk before the table.
        for off in self.rb_cache.dirty_keys() {
            self.write_rb(off)?;
        }
        let mut raw = Vec::with_capacity(bytes as usize);
        for e in &self.reftable {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        self.io.pwrite(&raw, new_off)?;
        self.phys_len = self.phys_len.max(new_off + bytes);
        self.io.sync()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&new_off.to_be_bytes());
        hdr[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
        self.io.pwrite(&hdr, super::header::OFF_REFTABLE)?;
        self.io.sync()?;
        self.reftable_offset = new_off;
        self.reftable_dirty = None;
        for c in 0..old_clusters {
            self.pending_free.push(old_off + c * self.geo.cs);
        }
        Ok(())
    }

    /// Reserves the next free cluster at the end of the image (refcount not yet set).
    fn bump(&mut self) -> Result<u64> {
        let start = self.next_alloc;
        loop {
            let off = self.next_alloc;
            self.next_alloc += self.geo.cs;
            if self.refcount(off)? == 0 {
                return Ok(off);
            }
            if (off - start) / self.geo.cs > MAX_SKIPPED_CLUSTERS {
                return Err(self.io.corrupt(
                    start,
                    format!("refcounts claim more than {MAX_SKIPPED_CLUSTERS} clusters past the end of the file are in use"),
                ));
            }
        }
    }

    /// Allocates one cluster (refcount 1).
    pub fn alloc_cluster(&mut self) -> Result<u64> {
        let off = self.bump()?;
        self.set_refcount(off, 1)?;
        Ok(off)
    }

    /// Allocates `n` contiguous clusters (refcount 1 each).
    pub fn alloc_contiguous(&mut self, n: u64) -> Result<u64> {
        'retry: loop {
            let start = self.next_alloc;
            if (start - self.phys_len.min(start)) / self.geo.cs > MAX_SKIPPED_CLUSTERS {
                return Err(self.io.corrupt(
                    start,
                    "refcounts claim too many clusters past the end of the file".into(),
                ));
            }
            for c in 0..n {
                if self.refcount(start + c * self.geo.cs)? != 0 {
                    self.next_alloc = start + (c + 1) * self.geo.cs;
                    continue 'retry;
                }
            }
            self.next_alloc = start + n * self.geo.cs;
            for c in 0..n {
                self.set_refcount(start + c * self.geo.cs, 1)?;
            }
            return Ok(start);
        }
    }

    /// Queues the host clusters referenced by an L2 entry for release.
    pub fn free_entry(&mut self, entry: u64) {
        match Kind::of(&self.geo, entry) {
            Kind::Data { host, .. } => self.pending_free.push(host),
            Kind::Compressed(e) => {
                let (host, len) = self.geo.compressed_range(e);
                let cs = self.geo.cs;
                let first = host & !(cs - 1);
                let last = (host + len - 1) & !(cs - 1);
                let mut c = first;
                while c <= last {
                    self.pending_free.push(c);
                    c += cs;
                }
            }
            Kind::Zero | Kind::Unallocated => {
                // A v3 zero entry may keep a preallocated cluster.
                let host = entry & OFFSET_MASK;
                if host != 0 && entry & COMPRESSED == 0 {
                    self.pending_free.push(host);
                }
            }
        }
    }

    // ---- write-back ------------------------------------------------------------------

    /// Writes dirty refcount blocks and refcount table entries.
    fn write_refcounts(&mut self) -> Result<bool> {
        let dirty = self.rb_cache.dirty_keys();
        for off in &dirty {
            self.write_rb(*off)?;
        }
        let mut wrote = !dirty.is_empty();
        if let Some((lo, hi)) = self.reftable_dirty.take() {
            let mut raw = Vec::with_capacity((hi - lo) * 8);
            for e in &self.reftable[lo..hi] {
                raw.extend_from_slice(&e.to_be_bytes());
            }
            self.io.pwrite(&raw, self.reftable_offset + lo as u64 * 8)?;
            wrote = true;
        }
        Ok(wrote)
    }

    /// Writes all dirty metadata in crash-safe order; `sync` adds a final fdatasync.
    pub fn flush_meta(&mut self, sync: bool) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        if self.phys_len < self.next_alloc {
            self.io
                .file
                .set_len(self.next_alloc)
                .map_err(self.io.err("truncate", self.next_alloc))?;
            self.phys_len = self.next_alloc;
        }
        let mut unsynced = self.write_refcounts()?;
        if self.l2_cache.any_dirty() {
            self.io.sync()?;
            for off in self.l2_cache.dirty_keys() {
                self.write_l2(off)?;
            }
            unsynced = true;
        }
        if let Some((lo, hi)) = self.l1_dirty.take() {
            self.io.sync()?;
            let mut raw = Vec::with_capacity((hi - lo) * 8);
            for e in &self.l1[lo..hi] {
                raw.extend_from_slice(&e.to_be_bytes());
            }
            self.io.pwrite(&raw, self.l1_offset + lo as u64 * 8)?;
            unsynced = true;
        }
        if !self.pending_free.is_empty() {
            self.io.sync()?;
            let pending = std::mem::take(&mut self.pending_free);
            for off in pending {
                let rc = self.refcount(off)?;
                if rc == 0 {
                    tracing::warn!(path = %self.io.path.display(), "freeing cluster {off:#x} with refcount 0");
                    continue;
                }
                self.set_refcount(off, rc - 1)?;
            }
            self.write_refcounts()?;
            unsynced = true;
        }
        if sync && unsynced {
            self.io.sync()?;
        }
        Ok(())
    }

    /// Writes the whole L1 table to a new location (for growing it), committing the header.
    pub fn grow_l1(&mut self, entries: usize) -> Result<()> {
        let bytes = entries as u64 * 8;
        if bytes > super::header::MAX_L1_BYTES {
            return Err(Error::Unsupported {
                path: self.io.path.clone(),
                msg: format!("L1 table of {entries} entries"),
            });
        }
        self.flush_meta(true)?;
        let clusters = bytes.div_ceil(self.geo.cs);
        let new_off = self.alloc_contiguous(clusters)?;
        let old_off = self.l1_offset;
        let old_clusters = (self.l1.len() as u64 * 8).div_ceil(self.geo.cs);
        let mut l1 = self.l1.clone();
        l1.resize(entries, 0);
        let mut raw = Vec::with_capacity((clusters * self.geo.cs) as usize);
        for e in &l1 {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        raw.resize((clusters * self.geo.cs) as usize, 0);
        self.io.pwrite(&raw, new_off)?;
        self.phys_len = self.phys_len.max(new_off + raw.len() as u64);
        self.flush_meta(true)?;
        self.io.sync()?;
        let mut hdr = [0u8; 12];
        hdr[..4].copy_from_slice(&(entries as u32).to_be_bytes());
        hdr[4..].copy_from_slice(&new_off.to_be_bytes());
        self.io.pwrite(&hdr, super::header::OFF_L1_SIZE)?;
        self.io.sync()?;
        self.l1 = l1;
        self.l1_offset = new_off;
        for c in 0..old_clusters {
            self.pending_free.push(old_off + c * self.geo.cs);
        }
        self.flush_meta(true)
    }
}
