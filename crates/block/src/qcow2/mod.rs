//! qcow2 images (versions 2 and 3), as specified in QEMU's `docs/interop/qcow2.txt`.
//!
//! Supported: cluster sizes 512 B..2 MiB, refcount widths 1..64 bits, zero clusters,
//! backing chains, compressed clusters (deflate and zstd; read and write), allocation with
//! copy-on-write from the backing image, L1 growth, discard. Not supported: encryption,
//! external data files, extended L2 entries, writing images with internal snapshots.

mod cache;
pub mod check;
mod compress;
pub mod create;
pub mod header;
mod meta;
pub mod refcount;

pub use create::{create, CreateOptions};
pub use header::{Compression, Header, MAGIC};

use crate::{
    chain_key, open_in_chain, BlockDev, Error, Extent, FileIdentity, Format, ImageInfo,
    OpenOptions, Qcow2Info, Result, Status,
};
use meta::{Geo, Io, Kind, Meta, COMPRESSED, COPIED, ZERO};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// An open qcow2 image. Requests are serialized by an internal mutex.
pub struct Qcow2 {
    path: PathBuf,
    header: Header,
    backing: Option<Box<dyn BlockDev>>,
    full_backing: Option<PathBuf>,
    meta: Mutex<Meta>,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Reads the first cluster (at most 2 MiB) of a file and parses the header.
pub(crate) fn read_header(io: &Io) -> Result<(Header, u64)> {
    let file_len = io.file.metadata().map_err(io.err("stat", 0))?.len();
    let mut first = vec![0u8; (header::V3_HEADER_LEN as u64).min(file_len) as usize];
    io.pread(&mut first, 0)?;
    if first.len() < header::V2_HEADER_LEN as usize || first[0..4] != MAGIC {
        return Err(Error::Invalid {
            path: io.path.clone(),
            msg: "not a qcow2 image (bad magic)".into(),
        });
    }
    let bits = u32::from_be_bytes([first[20], first[21], first[22], first[23]]);
    let cs = if (header::MIN_CLUSTER_BITS..=header::MAX_CLUSTER_BITS).contains(&bits) {
        1u64 << bits
    } else {
        512
    };
    let mut buf = vec![0u8; cs.min(file_len) as usize];
    io.pread(&mut buf, 0)?;
    Ok((Header::parse(&io.path, &buf, file_len)?, file_len))
}

/// Reads a table of big-endian u64 entries.
pub(crate) fn read_table(io: &Io, offset: u64, entries: usize) -> Result<Vec<u64>> {
    let mut raw = vec![0u8; entries * 8];
    io.pread(&mut raw, offset)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(<[u8; 8]>::try_from(c).unwrap_or_default()))
        .collect())
}

impl Qcow2 {
    /// Opens a qcow2 image and its backing chain.
    pub fn open(path: &Path, writable: bool) -> Result<Qcow2> {
        Qcow2::open_chain(path, writable, false, &mut vec![chain_key(path)?])
    }

    /// Opens a qcow2 image with explicit options (the format field is ignored).
    pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<Qcow2> {
        Qcow2::open_chain(
            path,
            opts.writable,
            opts.unsafe_cache,
            &mut vec![chain_key(path)?],
        )
    }

    pub(crate) fn open_chain(
        path: &Path,
        writable: bool,
        unsafe_cache: bool,
        chain: &mut Vec<FileIdentity>,
    ) -> Result<Qcow2> {
        let file = crate::open_file(path, writable)?;
        let io = Io {
            file,
            path: path.to_owned(),
            no_sync: unsafe_cache,
        };
        let (h, file_len) = read_header(&io)?;
        if writable {
            if h.incompatible_features & header::INCOMPAT_CORRUPT != 0 {
                return Err(Error::Unsupported {
                    path: path.to_owned(),
                    msg: "image is marked corrupt; open it read-only or repair it with `img check -r all`".into(),
                });
            }
            if h.incompatible_features & header::INCOMPAT_DIRTY != 0 {
                return Err(Error::Unsupported {
                    path: path.to_owned(),
                    msg: "image is dirty (lazy refcounts); repair it with `img check -r all`"
                        .into(),
                });
            }
            if h.nb_snapshots > 0 {
                return Err(Error::Unsupported {
                    path: path.to_owned(),
                    msg: "writing images with internal snapshots".into(),
                });
            }
            if h.version == 3 && h.autoclear_features != 0 {
                // We do not maintain bitmaps: clear the autoclear bits as the spec requires.
                io.pwrite(&0u64.to_be_bytes(), header::OFF_AUTOCLEAR)?;
            }
        }
        let geo = Geo::new(h.version, h.cluster_bits, h.refcount_order, h.compression);
        let l1 = read_table(&io, h.l1_table_offset, h.l1_size as usize)?;
        let rt_entries = (u64::from(h.refcount_table_clusters) * geo.cs / 8) as usize;
        let reftable = read_table(&io, h.refcount_table_offset, rt_entries)?;
        let (backing, full_backing) = match &h.backing_file {
            None => (None, None),
            Some(name) => {
                let full = resolve_backing(path, name);
                let format = match &h.backing_format {
                    None => None,
                    Some(f) => Some(Format::from_name(f).ok_or_else(|| Error::Unsupported {
                        path: path.to_owned(),
                        msg: format!("backing file format '{f}'"),
                    })?),
                };
                let opts = OpenOptions {
                    writable: false,
                    format,
                    unsafe_cache: false,
                };
                let dev = open_in_chain(&full, &opts, chain).map_err(|e| match e {
                    Error::Open { source, .. } => Error::Backing {
                        path: path.to_owned(),
                        msg: format!("cannot open backing file {}: {source}", full.display()),
                    },
                    e => e,
                })?;
                (Some(dev), Some(full))
            }
        };
        let meta = Meta::new(
            io,
            geo,
            writable,
            h.size,
            l1,
            h.l1_table_offset,
            reftable,
            h.refcount_table_offset,
            file_len,
        );
        Ok(Qcow2 {
            path: path.to_owned(),
            header: h,
            backing,
            full_backing,
            meta: Mutex::new(meta),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        // A panic while holding the lock cannot leave metadata half-updated on disk (writes
        // are ordered), so continuing with the inner state is acceptable.
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The parsed header as read at open time.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    fn check_range(&self, m: &Meta, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > m.size) {
            return Err(Error::OutOfRange {
                path: self.path.clone(),
                offset,
                len,
                size: m.size,
            });
        }
        Ok(())
    }

    fn check_writable(&self, m: &Meta) -> Result<()> {
        if m.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly {
                path: self.path.clone(),
            })
        }
    }

    /// Reads from the backing file (zeroes past its end or without one).
    fn read_backing(&self, buf: &mut [u8], guest: u64) -> Result<()> {
        match &self.backing {
            Some(b) if guest < b.size() => {
                let n = (b.size() - guest).min(buf.len() as u64) as usize;
                b.read_at(&mut buf[..n], guest)?;
                buf[n..].fill(0);
                Ok(())
            }
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// True if guest cluster contents would come from a backing file with data there.
    fn backing_covers(&self, guest: u64) -> bool {
        self.backing.as_ref().is_some_and(|b| guest < b.size())
    }

    fn read_locked(&self, m: &mut Meta, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut pos = 0usize;
        while pos < buf.len() {
            let guest = offset + pos as u64;
            let (kind, len) = m.run(guest, (buf.len() - pos) as u64)?;
            let out = &mut buf[pos..pos + len as usize];
            match kind {
                Kind::Unallocated => self.read_backing(out, guest)?,
                Kind::Zero => out.fill(0),
                Kind::Data { host, .. } => m.io.pread(out, host)?,
                Kind::Compressed(entry) => {
                    let in_cluster = (guest & (m.geo.cs - 1)) as usize;
                    let data = compress::cluster(m, entry)?;
                    out.copy_from_slice(&data[in_cluster..in_cluster + out.len()]);
                }
            }
            pos += len as usize;
        }
        Ok(())
    }

    /// Old contents of the guest cluster at `guest` (cluster aligned) for copy-on-write.
    fn old_cluster(&self, m: &mut Meta, guest: u64, entry: u64, buf: &mut [u8]) -> Result<()> {
        match Kind::of(&m.geo, entry) {
            Kind::Unallocated => self.read_backing(buf, guest),
            Kind::Zero => {
                buf.fill(0);
                Ok(())
            }
            Kind::Data { host, .. } => m.io.pread(buf, host),
            Kind::Compressed(e) => {
                let data = compress::cluster(m, e)?;
                buf.copy_from_slice(data);
                Ok(())
            }
        }
    }

    fn write_locked(&self, m: &mut Meta, buf: &[u8], offset: u64) -> Result<()> {
        let cs = m.geo.cs;
        let mut pos = 0usize;
        // Pending contiguous host write: (host, start in buf, len).
        let mut run: Option<(u64, usize, usize)> = None;
        let mut scratch: Vec<u8> = Vec::new();
        while pos < buf.len() {
            let guest = offset + pos as u64;
            let in_cluster = guest & (cs - 1);
            let n = ((cs - in_cluster) as usize).min(buf.len() - pos);
            let entry = m.entry(guest)?;
            let host = match Kind::of(&m.geo, entry) {
                Kind::Data { host, copied: true } => host + in_cluster,
                kind => {
                    let new = m.alloc_cluster()?;
                    let implicit_zero = match kind {
                        Kind::Zero => true,
                        Kind::Unallocated => !self.backing_covers(guest - in_cluster),
                        _ => false,
                    };
                    if n as u64 != cs && !implicit_zero {
                        // Copy-on-write: old contents with the new bytes merged in.
                        scratch.resize(cs as usize, 0);
                        self.old_cluster(m, guest - in_cluster, entry, &mut scratch)?;
                        scratch[in_cluster as usize..in_cluster as usize + n]
                            .copy_from_slice(&buf[pos..pos + n]);
                        m.io.pwrite(&scratch, new)?;
                        m.phys_len = m.phys_len.max(new + cs);
                    }
                    // A freshly allocated cluster lies past the end of the file and reads as
                    // zeroes, so for an implicit-zero cluster only the new bytes are written.
                    m.free_entry(entry);
                    m.set_entry(guest - in_cluster, new | COPIED)?;
                    if n as u64 != cs && !implicit_zero {
                        pos += n;
                        continue;
                    }
                    new + in_cluster
                }
            };
            run = match run {
                Some((h, s, l)) if h + l as u64 == host && s + l == pos => Some((h, s, l + n)),
                Some((h, s, l)) => {
                    m.io.pwrite(&buf[s..s + l], h)?;
                    m.phys_len = m.phys_len.max(h + l as u64);
                    Some((host, pos, n))
                }
                None => Some((host, pos, n)),
            };
            pos += n;
        }
        if let Some((h, s, l)) = run {
            m.io.pwrite(&buf[s..s + l], h)?;
            m.phys_len = m.phys_len.max(h + l as u64);
        }
        Ok(())
    }

    /// Sets whole clusters in [offset, offset+len) to `entry_for(old)`; partial clusters
    /// are passed to `partial`.
    fn zero_or_discard(&self, offset: u64, len: u64, discard: bool) -> Result<()> {
        let mut m = self.lock();
        self.check_writable(&m)?;
        self.check_range(&m, offset, len)?;
        let cs = m.geo.cs;
        let v3 = m.geo.version >= 3;
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let in_cluster = pos & (cs - 1);
            let n = (cs - in_cluster).min(end - pos);
            let cluster = pos - in_cluster;
            // A full cluster, or the tail of the last cluster past the virtual size.
            let whole = in_cluster == 0 && (n == cs || pos + n == m.size);
            if whole {
                let old = m.entry(cluster)?;
                let covered = self.backing_covers(cluster);
                let new = if discard {
                    match (covered, v3) {
                        (false, _) => Some(0),
                        (true, true) => Some(ZERO),
                        (true, false) => None, // v2 cannot hide backing data: keep it
                    }
                } else if v3 {
                    Some(ZERO)
                } else if !covered {
                    Some(0)
                } else {
                    None
                };
                match new {
                    Some(new) if old != new => {
                        m.free_entry(old);
                        m.set_entry(cluster, new)?;
                    }
                    Some(_) => {}
                    None if !discard => self.write_locked(&mut m, &vec![0u8; n as usize], pos)?,
                    None => {}
                }
            } else if !discard {
                let entry = m.entry(cluster)?;
                let reads_zero = match Kind::of(&m.geo, entry) {
                    Kind::Zero => true,
                    Kind::Unallocated => !self.backing_covers(cluster),
                    _ => false,
                };
                if !reads_zero {
                    self.write_locked(&mut m, &vec![0u8; n as usize], pos)?;
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Writes one whole guest cluster compressed (falls back to a normal write when the
    /// data does not compress). `offset` must be cluster aligned; `buf` one cluster (or the
    /// tail up to the virtual size, zero padded internally).
    pub fn write_compressed(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut m = self.lock();
        self.check_writable(&m)?;
        self.check_range(&m, offset, buf.len() as u64)?;
        let cs = m.geo.cs;
        if offset & (cs - 1) != 0
            || buf.len() as u64 > cs
            || (buf.len() as u64 != cs && offset + buf.len() as u64 != m.size)
        {
            return Err(Error::Invalid {
                path: self.path.clone(),
                msg: format!(
                    "compressed write of {} bytes at {offset:#x} is not one whole cluster",
                    buf.len()
                ),
            });
        }
        let padded;
        let data = if buf.len() as u64 == cs {
            buf
        } else {
            let mut v = vec![0u8; cs as usize];
            v[..buf.len()].copy_from_slice(buf);
            padded = v;
            &padded[..]
        };
        let Some(packed) = compress::compress(&m, data) else {
            return self.write_locked(&mut m, buf, offset);
        };
        let host = compress::place(&mut m, packed.len() as u64)?;
        m.io.pwrite(&packed, host)?;
        m.phys_len = m.phys_len.max(host + packed.len() as u64);
        let sectors = ((host + packed.len() as u64 - 1) >> 9) - (host >> 9);
        let entry = COMPRESSED | (sectors << m.geo.csize_shift()) | host;
        let old = m.entry(offset)?;
        m.free_entry(old);
        m.set_entry(offset, entry)
    }
}

/// Resolves a backing file name relative to the directory of the image referencing it.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_owned();
    }
    match image.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_owned(),
    }
}

impl BlockDev for Qcow2 {
    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.lock().size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut m = self.lock();
        self.check_range(&m, offset, buf.len() as u64)?;
        self.read_locked(&mut m, buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut m = self.lock();
        self.check_writable(&m)?;
        self.check_range(&m, offset, buf.len() as u64)?;
        self.write_locked(&mut m, buf, offset)
    }

    fn flush(&self) -> Result<()> {
        self.lock().flush_meta(true)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_or_discard(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_or_discard(offset, len, false)
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        let mut m = self.lock();
        self.check_range(&m, offset, len)?;
        let (kind, n) = m.run(offset, len)?;
        Ok(match kind {
            Kind::Unallocated => Extent {
                len: n,
                status: Status::Unallocated,
                host_offset: None,
                compressed: false,
            },
            Kind::Zero => Extent {
                len: n,
                status: Status::Zero,
                host_offset: None,
                compressed: false,
            },
            Kind::Data { host, .. } => Extent {
                len: n,
                status: Status::Data,
                host_offset: Some(host),
                compressed: false,
            },
            Kind::Compressed(_) => Extent {
                len: n,
                status: Status::Data,
                host_offset: None,
                compressed: true,
            },
        })
    }

    fn backing(&self) -> Option<&dyn BlockDev> {
        self.backing.as_deref()
    }

    fn info(&self) -> ImageInfo {
        let h = &self.header;
        ImageInfo {
            format: Format::Qcow2,
            virtual_size: self.size(),
            cluster_size: Some(h.cluster_size()),
            backing_file: h.backing_file.clone(),
            full_backing_file: self.full_backing.clone(),
            backing_format: h.backing_format.clone(),
            qcow2: Some(Qcow2Info {
                version: h.version,
                compression_type: h.compression.name(),
                lazy_refcounts: h.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0,
                refcount_bits: 1 << h.refcount_order,
                corrupt: h.incompatible_features & header::INCOMPAT_CORRUPT != 0,
                dirty: h.incompatible_features & header::INCOMPAT_DIRTY != 0,
                extended_l2: false,
            }),
        }
    }

    fn resize(&self, new_size: u64) -> Result<()> {
        let mut m = self.lock();
        self.check_writable(&m)?;
        if new_size > header::MAX_VIRTUAL_SIZE {
            return Err(Error::Invalid {
                path: self.path.clone(),
                msg: format!("size {new_size} too large"),
            });
        }
        let old = m.size;
        if new_size < old {
            drop(m);
            // Drop the clusters past the new end; zero the tail of the boundary cluster.
            let cs = self.cluster_size();
            let boundary = new_size.div_ceil(cs) * cs;
            if boundary > new_size {
                self.write_zeroes(new_size, boundary.min(old) - new_size)?;
            }
            let mut m = self.lock();
            let mut pos = boundary;
            while pos < old {
                let e = m.entry(pos)?;
                if e != 0 {
                    m.free_entry(e);
                    m.set_entry(pos, 0)?;
                }
                pos += cs;
            }
            m.flush_meta(true)?;
            m.io.pwrite(&new_size.to_be_bytes(), header::OFF_SIZE)?;
            m.size = new_size;
            return m.io.sync();
        }
        let need = new_size.div_ceil(m.geo.l2_span()) as usize;
        if need > m.l1.len() {
            m.grow_l1(need)?;
        }
        m.io.pwrite(&new_size.to_be_bytes(), header::OFF_SIZE)?;
        m.size = new_size;
        m.io.sync()
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        let mut m = self.lock();
        if let Err(e) = m.flush_meta(true) {
            tracing::error!("{e}");
        }
    }
}
