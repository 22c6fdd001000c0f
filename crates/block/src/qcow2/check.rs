//! Consistency check and repair of qcow2 images (the engine of `img check`): recomputes
//! every cluster's reference count from the metadata and compares it with the refcount
//! blocks, and verifies the COPIED flags.

use super::header::{self, Header};
use super::meta::{Geo, Io, Kind, OFFSET_MASK, RT_OFFSET_MASK};
use super::{read_header, read_table, refcount};
use crate::Result;
use std::path::Path;

/// Clusters past the end of the file whose refcounts are examined (bounds hostile images).
const MAX_EXTRA_CLUSTERS: u64 = 1 << 24;

/// What `check -r` may repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    None,
    Leaks,
    All,
}

/// Result of a check, with the same counters as `qemu-img check`.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub corruptions: u64,
    pub leaks: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    pub total_clusters: u64,
    pub allocated_clusters: u64,
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
    pub image_end_offset: u64,
    /// One line per problem found (qemu-img prints these on stderr).
    pub messages: Vec<String>,
}

struct Walk<'a> {
    io: &'a Io,
    geo: Geo,
    nclusters: u64,
    refs: Vec<u64>,
    report: CheckReport,
    /// (description, host cluster, copied flag) for the COPIED check of the active tables.
    copied: Vec<(String, u64, bool)>,
}

impl Walk<'_> {
    fn inc(&mut self, off: u64, len: u64, what: &str) {
        if len == 0 {
            return;
        }
        let cs = self.geo.cs;
        let first = off / cs;
        let Some(end) = off.checked_add(len - 1) else {
            self.report.corruptions += 1;
            self.report
                .messages
                .push(format!("ERROR {what} at {off:#x}: offset overflows"));
            return;
        };
        let last = end / cs;
        for c in first..=last {
            if c >= self.nclusters {
                self.report.corruptions += 1;
                self.report.messages.push(format!(
                    "ERROR {what} at {off:#x}: cluster {c} is past the end of the image"
                ));
                return;
            }
            self.refs[c as usize] += 1;
        }
    }

    fn walk_l1(&mut self, l1_off: u64, l1_size: u32, active: bool) -> Result<()> {
        let cs = self.geo.cs;
        self.inc(l1_off, u64::from(l1_size) * 8, "L1 table");
        if l1_off.saturating_add(u64::from(l1_size) * 8) > self.nclusters * cs {
            return Ok(());
        }
        let l1 = read_table(self.io, l1_off, l1_size as usize)?;
        let mut prev_end: Option<u64> = None;
        for (i, &l1e) in l1.iter().enumerate() {
            let l2 = l1e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if !l2.is_multiple_of(cs) {
                self.report.corruptions += 1;
                self.report.messages.push(format!(
                    "ERROR l2_offset={l2:#x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                continue;
            }
            self.inc(l2, cs, "L2 table");
            if l2 + cs > self.nclusters * cs {
                continue;
            }
            if active {
                self.copied.push((
                    format!("L2 cluster: l1_index={i} l1_entry={l1e:x}"),
                    l2,
                    l1e & super::meta::COPIED != 0,
                ));
            }
            let table = read_table(self.io, l2, self.geo.l2_entries as usize)?;
            for (j, &e) in table.iter().enumerate() {
                match Kind::of(&self.geo, e) {
                    Kind::Unallocated => {}
                    Kind::Zero => {
                        let host = e & OFFSET_MASK;
                        if host != 0 {
                            self.inc(host, cs, "preallocated zero cluster");
                        }
                    }
                    Kind::Compressed(e) => {
                        let (host, len) = self.geo.compressed_range(e);
                        self.inc(host, len, "compressed cluster");
                        if active {
                            self.report.allocated_clusters += 1;
                            self.report.compressed_clusters += 1;
                        }
                    }
                    Kind::Data { host, copied } => {
                        if host % cs != 0 {
                            self.report.corruptions += 1;
                            self.report.messages.push(format!(
                                "ERROR offset={host:#x}: Cluster is not properly aligned; L2 entry corrupted (l2 table {l2:#x} index {j})"
                            ));
                            continue;
                        }
                        self.inc(host, cs, "data cluster");
                        if active {
                            self.report.allocated_clusters += 1;
                            if prev_end.is_some_and(|p| p != host) {
                                self.report.fragmented_clusters += 1;
                            }
                            prev_end = Some(host + cs);
                            self.copied.push((
                                format!("data cluster: l2_entry={e:x}"),
                                host,
                                copied,
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn walk_snapshots(&mut self, h: &Header) -> Result<()> {
        let mut off = h.snapshots_offset;
        let start = off;
        for _ in 0..h.nb_snapshots {
            let mut fixed = [0u8; 40];
            if off.saturating_add(40) > self.nclusters * self.geo.cs {
                return Err(self
                    .io
                    .corrupt(off, "snapshot table past the end of the image".into()));
            }
            self.io.pread(&mut fixed, off)?;
            let l1_off = u64::from_be_bytes(<[u8; 8]>::try_from(&fixed[0..8]).unwrap_or_default());
            let l1_size = u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
            let id_len = u64::from(u16::from_be_bytes([fixed[12], fixed[13]]));
            let name_len = u64::from(u16::from_be_bytes([fixed[14], fixed[15]]));
            let extra = u64::from(u32::from_be_bytes([
                fixed[36], fixed[37], fixed[38], fixed[39],
            ]));
            if u64::from(l1_size) * 8 > header::MAX_L1_BYTES || l1_off % self.geo.cs != 0 {
                return Err(self.io.corrupt(
                    off,
                    format!("snapshot L1 table {l1_off:#x} ({l1_size} entries) invalid"),
                ));
            }
            self.walk_l1(l1_off, l1_size, false)?;
            off += (40 + extra + id_len + name_len).div_ceil(8) * 8;
        }
        self.inc(start, off - start, "snapshot table");
        Ok(())
    }
}

/// Checks (and optionally repairs) the qcow2 image at `path`.
pub fn check(path: &Path, repair: Repair) -> Result<CheckReport> {
    let first = check_once(path, repair)?;
    if repair == Repair::None || (first.leaks_fixed == 0 && first.corruptions_fixed == 0) {
        return Ok(first);
    }
    // Double-check the repaired image.
    let mut second = check_once(path, Repair::None)?;
    second.leaks_fixed = first.leaks_fixed;
    second.corruptions_fixed = first.corruptions_fixed;
    let mut messages = first.messages;
    messages.append(&mut second.messages);
    second.messages = messages;
    Ok(second)
}

fn check_once(path: &Path, repair: Repair) -> Result<CheckReport> {
    let file = crate::open_file(path, repair != Repair::None)?;
    let io = Io {
        file,
        path: path.to_owned(),
        no_sync: false,
    };
    let (h, file_len) = read_header(&io)?;
    let geo = Geo::new(h.version, h.cluster_bits, h.refcount_order, h.compression);
    let cs = geo.cs;
    let nclusters = file_len.div_ceil(cs);
    let mut w = Walk {
        io: &io,
        geo,
        nclusters,
        refs: vec![0; nclusters as usize],
        report: CheckReport {
            total_clusters: h.size.div_ceil(cs),
            ..Default::default()
        },
        copied: Vec::new(),
    };
    w.inc(0, cs, "header");
    w.walk_l1(h.l1_table_offset, h.l1_size, true)?;
    if h.nb_snapshots > 0 {
        w.walk_snapshots(&h)?;
    }
    let rt_entries = (u64::from(h.refcount_table_clusters) * cs / 8) as usize;
    w.inc(
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters) * cs,
        "refcount table",
    );
    let reftable = read_table(&io, h.refcount_table_offset, rt_entries)?;
    // Refcount blocks: (table index, offset, contents, modified).
    let mut blocks: Vec<(u64, u64, Vec<u8>, bool)> = Vec::new();
    for (i, &rte) in reftable.iter().enumerate() {
        let rb = rte & RT_OFFSET_MASK;
        if rb == 0 {
            continue;
        }
        if !rb.is_multiple_of(cs) {
            w.report.corruptions += 1;
            w.report.messages.push(format!(
                "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
            ));
            continue;
        }
        if rb + cs > nclusters * cs {
            w.report.corruptions += 1;
            w.report.messages.push(format!(
                "ERROR refcount block {i} is past the end of the image"
            ));
            continue;
        }
        w.inc(rb, cs, "refcount block");
        let mut data = vec![0u8; cs as usize];
        io.pread(&mut data, rb)?;
        blocks.push((i as u64, rb, data, false));
    }
    let Walk {
        refs,
        mut report,
        copied,
        ..
    } = w;
    let order = h.refcount_order;
    let index: std::collections::HashMap<u64, usize> =
        blocks.iter().enumerate().map(|(p, b)| (b.0, p)).collect();
    let ondisk = |_: &[(u64, u64, Vec<u8>, bool)], c: u64| -> Option<(usize, usize)> {
        index
            .get(&(c / geo.rb_entries))
            .map(|&p| (p, (c % geo.rb_entries) as usize))
    };
    // Every cluster of the file, plus (a bounded number of) clusters past its end that
    // refcount blocks cover.
    let mut last_used = 0u64;
    let mut candidates: Vec<u64> = (0..nclusters).collect();
    'blocks: for b in &blocks {
        let first = b.0 * geo.rb_entries;
        for c in first.max(nclusters)..first + geo.rb_entries {
            if candidates.len() as u64 >= nclusters + MAX_EXTRA_CLUSTERS {
                break 'blocks;
            }
            candidates.push(c);
        }
    }
    let mut block_pos: Option<(u64, usize)> = None;
    for c in candidates {
        let computed = refs.get(c as usize).copied().unwrap_or(0);
        if computed > 0 {
            last_used = c + 1;
        }
        let ti = c / geo.rb_entries;
        let pos = match block_pos {
            Some((t, p)) if t == ti => Some((p, (c % geo.rb_entries) as usize)),
            _ => {
                let p = ondisk(&blocks, c);
                block_pos = p.map(|(p, _)| (ti, p));
                p
            }
        };
        let stored = pos.map_or(0, |(p, i)| refcount::get(&blocks[p].2, order, i));
        if stored == computed {
            continue;
        }
        let is_leak = stored > computed;
        let fixable = match repair {
            Repair::None => false,
            Repair::Leaks => is_leak,
            Repair::All => computed <= refcount::max(order),
        };
        let fixed = match (fixable, pos) {
            (true, Some((p, i))) => {
                refcount::set(&mut blocks[p].2, order, i, computed);
                blocks[p].3 = true;
                true
            }
            _ => false,
        };
        let word = if fixed {
            "Repairing"
        } else if is_leak {
            "Leaked"
        } else {
            "ERROR"
        };
        report.messages.push(format!(
            "{word} cluster {c} refcount={stored} reference={computed}"
        ));
        match (fixed, is_leak) {
            (true, true) => report.leaks_fixed += 1,
            (true, false) => report.corruptions_fixed += 1,
            (false, true) => report.leaks += 1,
            (false, false) => report.corruptions += 1,
        }
    }
    for (_, off, data, modified) in &blocks {
        if *modified {
            io.pwrite(data, *off)?;
        }
    }
    // COPIED flags against the (possibly repaired) refcounts.
    for (desc, host, flag) in &copied {
        let c = host / cs;
        let stored = ondisk(&blocks, c).map_or(0, |(p, i)| refcount::get(&blocks[p].2, order, i));
        if (stored == 1) != *flag {
            report.corruptions += 1;
            report
                .messages
                .push(format!("ERROR OFLAG_COPIED {desc} refcount={stored}"));
        }
    }
    if repair != Repair::None {
        io.sync()?;
        if report.corruptions == 0 && h.incompatible_features & header::INCOMPAT_DIRTY != 0 {
            let clean = h.incompatible_features & !header::INCOMPAT_DIRTY;
            io.pwrite(&clean.to_be_bytes(), header::OFF_INCOMPAT)?;
            io.sync()?;
        }
    }
    report.image_end_offset = last_used * cs;
    Ok(report)
}
