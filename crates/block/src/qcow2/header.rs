//! The qcow2 header: parsing with validation, and serialization.

use crate::{Error, Result};
use std::path::Path;

/// "QFI\xfb".
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Smallest and largest cluster_bits QEMU accepts (512 B .. 2 MiB).
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Length of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Length of the version 3 header this implementation writes (with compression_type).
pub const V3_HEADER_LEN: u32 = 112;
/// Limits against hostile images (same order as QEMU's).
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_BACKING_NAME: u32 = 1023;
/// Largest virtual size accepted (2^61 bytes; keeps offsets far from u64 overflow).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Compatible feature bits.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// Header extension types.
pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;

/// Byte offsets of header fields that are updated in place.
pub const OFF_SIZE: u64 = 24;
pub const OFF_L1_SIZE: u64 = 36; // l1_size (u32) then l1_table_offset (u64): 12 bytes
pub const OFF_REFTABLE: u64 = 48; // refcount_table_offset (u64) then clusters (u32): 12 bytes
pub const OFF_INCOMPAT: u64 = 72;
pub const OFF_AUTOCLEAR: u64 = 88;

/// Compression types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zlib,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// A parsed, validated header.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression: Compression,
    /// From the extensions area.
    pub backing_format: Option<String>,
    pub backing_file: Option<String>,
    /// Names of incompatible features from the feature name table, by bit.
    pub feature_names: Vec<(u8, String)>,
}

fn be32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Parses the first cluster of an image (`buf` holds at least min(file length, 2 MiB)
    /// bytes; it is validated against `file_len`).
    pub fn parse(path: &Path, buf: &[u8], file_len: u64) -> Result<Header> {
        let corrupt = |offset: u64, msg: String| Error::Corrupt {
            path: path.to_owned(),
            offset,
            msg,
        };
        let unsupported = |msg: String| Error::Unsupported {
            path: path.to_owned(),
            msg,
        };
        if buf.len() < V2_HEADER_LEN as usize || buf[0..4] != MAGIC {
            return Err(Error::Invalid {
                path: path.to_owned(),
                msg: "not a qcow2 image (bad magic)".into(),
            });
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(format!(
                "qcow2 version {version} (only 2 and 3)"
            )));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(corrupt(
                20,
                format!("cluster_bits {cluster_bits} outside 9..=21"),
            ));
        }
        let cs = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression: Compression::Zlib,
            backing_format: None,
            backing_file: None,
            feature_names: Vec::new(),
        };
        if version == 3 {
            if buf.len() < 104 {
                return Err(corrupt(0, "truncated version 3 header".into()));
            }
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < 104
                || !h.header_length.is_multiple_of(8)
                || u64::from(h.header_length) > cs
            {
                return Err(corrupt(
                    100,
                    format!("invalid header_length {}", h.header_length),
                ));
            }
            if buf.len() < h.header_length as usize {
                return Err(corrupt(0, "file shorter than its header".into()));
            }
            if h.header_length > 104 {
                h.compression = match buf[104] {
                    0 => Compression::Zlib,
                    1 => Compression::Zstd,
                    t => return Err(unsupported(format!("compression type {t}"))),
                };
            }
        }
        if buf.len() < h.header_length as usize {
            return Err(corrupt(0, "file shorter than its header".into()));
        }
        if h.refcount_order > 6 {
            return Err(corrupt(
                96,
                format!("refcount_order {} > 6", h.refcount_order),
            ));
        }
        // Extensions (must lie inside the first cluster).
        h.parse_extensions(path, buf, cs)?;

        let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION;
        let unknown = h.incompatible_features & !known;
        if unknown != 0 {
            let names: Vec<String> = (0..64u8)
                .filter(|b| unknown & (1u64 << b) != 0)
                .map(|b| {
                    let named = h.feature_names.iter().find(|(bit, _)| *bit == b);
                    match (b, named) {
                        (_, Some((_, n))) => format!("'{n}' (bit {b})"),
                        (2, None) => "'external data file' (bit 2)".to_string(),
                        (4, None) => "'extended L2 entries' (bit 4)".to_string(),
                        (_, None) => format!("unknown (bit {b})"),
                    }
                })
                .collect();
            return Err(unsupported(format!(
                "incompatible feature(s) {}",
                names.join(", ")
            )));
        }
        if (h.compression != Compression::Zlib)
            != (h.incompatible_features & INCOMPAT_COMPRESSION != 0)
        {
            return Err(corrupt(
                72,
                "compression type bit disagrees with compression_type".into(),
            ));
        }
        if h.crypt_method != 0 {
            return Err(unsupported(format!(
                "encryption (crypt_method {})",
                h.crypt_method
            )));
        }
        if h.size > MAX_VIRTUAL_SIZE {
            return Err(corrupt(24, format!("virtual size {} too large", h.size)));
        }
        // L1 table.
        let l1_bytes = u64::from(h.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(corrupt(
                36,
                format!("L1 table of {} entries too large", h.l1_size),
            ));
        }
        let l2_span = cs * (cs / 8);
        if u64::from(h.l1_size) < h.size.div_ceil(l2_span) {
            return Err(corrupt(
                36,
                format!(
                    "L1 table of {} entries too small for size {}",
                    h.l1_size, h.size
                ),
            ));
        }
        check_table(
            path,
            40,
            "L1 table",
            h.l1_table_offset,
            l1_bytes,
            cs,
            file_len,
        )?;
        let rt_bytes = u64::from(h.refcount_table_clusters) * cs;
        if rt_bytes > MAX_REFTABLE_BYTES || h.refcount_table_clusters == 0 {
            return Err(corrupt(
                56,
                format!(
                    "refcount table of {} clusters invalid",
                    h.refcount_table_clusters
                ),
            ));
        }
        check_table(
            path,
            48,
            "refcount table",
            h.refcount_table_offset,
            rt_bytes,
            cs,
            file_len,
        )?;
        if h.nb_snapshots > 0 && !h.snapshots_offset.is_multiple_of(cs) {
            return Err(corrupt(
                64,
                format!("snapshot table offset {:#x} unaligned", h.snapshots_offset),
            ));
        }
        // Overlaps between header, L1 table and refcount table.
        let ranges = [
            ("header", 0, cs),
            ("L1 table", h.l1_table_offset, l1_bytes),
            ("refcount table", h.refcount_table_offset, rt_bytes),
        ];
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.2 > 0 && b.2 > 0 && a.1 < b.1 + b.2 && b.1 < a.1 + a.2 {
                    return Err(corrupt(b.1, format!("{} overlaps the {}", b.0, a.0)));
                }
            }
        }
        Ok(h)
    }

    fn parse_extensions(&mut self, path: &Path, buf: &[u8], cs: u64) -> Result<()> {
        let corrupt = |offset: u64, msg: String| Error::Corrupt {
            path: path.to_owned(),
            offset,
            msg,
        };
        let limit = (cs as usize).min(buf.len());
        let mut off = self.header_length as usize;
        loop {
            if off + 8 > limit {
                // Version 2 images may have no end marker before the backing name.
                break;
            }
            let typ = be32(buf, off);
            let len = be32(buf, off + 4) as usize;
            if typ == EXT_END {
                break;
            }
            let data_start = off + 8;
            let Some(data_end) = data_start.checked_add(len).filter(|&e| e <= limit) else {
                return Err(corrupt(
                    off as u64,
                    format!("header extension {typ:#x} of {len} bytes overruns the first cluster"),
                ));
            };
            let data = &buf[data_start..data_end];
            match typ {
                EXT_BACKING_FORMAT => {
                    let s = String::from_utf8_lossy(data)
                        .trim_end_matches('\0')
                        .to_string();
                    self.backing_format = Some(s);
                }
                EXT_FEATURE_TABLE => {
                    for entry in data.chunks_exact(48) {
                        if entry[0] == 0 {
                            let name = String::from_utf8_lossy(&entry[2..])
                                .trim_end_matches('\0')
                                .to_string();
                            self.feature_names.push((entry[1], name));
                        }
                    }
                }
                _ => {}
            }
            off = data_start + len.div_ceil(8) * 8;
        }
        if self.backing_file_offset != 0 {
            let start = self.backing_file_offset;
            let n = self.backing_file_size;
            if n == 0
                || n > MAX_BACKING_NAME
                || start
                    .checked_add(u64::from(n))
                    .is_none_or(|e| e > limit as u64)
            {
                return Err(corrupt(8, format!("backing file name at {start:#x} ({n} bytes) invalid or outside the first cluster")));
            }
            let name = &buf[start as usize..start as usize + n as usize];
            let name = std::str::from_utf8(name)
                .map_err(|_| corrupt(start, "backing file name is not UTF-8".into()))?;
            self.backing_file = Some(name.to_string());
        }
        Ok(())
    }

    /// Serializes the header plus extensions and backing name into a cluster-sized buffer.
    pub fn to_cluster(&self, path: &Path) -> Result<Vec<u8>> {
        let cs = self.cluster_size() as usize;
        let mut b = Vec::with_capacity(cs);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.version.to_be_bytes());
        let backing_off_pos = b.len();
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&self.cluster_bits.to_be_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&self.crypt_method.to_be_bytes());
        b.extend_from_slice(&self.l1_size.to_be_bytes());
        b.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        b.extend_from_slice(&self.refcount_table_offset.to_be_bytes());
        b.extend_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b.extend_from_slice(&self.nb_snapshots.to_be_bytes());
        b.extend_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version == 3 {
            b.extend_from_slice(&self.incompatible_features.to_be_bytes());
            b.extend_from_slice(&self.compatible_features.to_be_bytes());
            b.extend_from_slice(&self.autoclear_features.to_be_bytes());
            b.extend_from_slice(&self.refcount_order.to_be_bytes());
            b.extend_from_slice(&V3_HEADER_LEN.to_be_bytes());
            b.push(match self.compression {
                Compression::Zlib => 0,
                Compression::Zstd => 1,
            });
            b.resize(V3_HEADER_LEN as usize, 0);
        }
        let ext = |b: &mut Vec<u8>, typ: u32, data: &[u8]| {
            b.extend_from_slice(&typ.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            b.resize(b.len().div_ceil(8) * 8, 0);
        };
        if let Some(fmt) = &self.backing_format {
            ext(&mut b, EXT_BACKING_FORMAT, fmt.as_bytes());
        }
        if self.version == 3 {
            let mut table = Vec::new();
            for (kind, bit, name) in [
                (0u8, 0u8, "dirty bit"),
                (0, 1, "corrupt bit"),
                (0, 2, "external data file"),
                (0, 3, "compression type"),
                (0, 4, "extended L2 entries"),
                (1, 0, "lazy refcounts"),
                (2, 0, "bitmaps"),
                (2, 1, "raw external data"),
            ] {
                let mut e = [0u8; 48];
                e[0] = kind;
                e[1] = bit;
                e[2..2 + name.len()].copy_from_slice(name.as_bytes());
                table.extend_from_slice(&e);
            }
            ext(&mut b, EXT_FEATURE_TABLE, &table);
        }
        ext(&mut b, EXT_END, &[]);
        if let Some(name) = &self.backing_file {
            if name.is_empty() || name.len() > MAX_BACKING_NAME as usize {
                return Err(Error::Invalid {
                    path: path.to_owned(),
                    msg: format!("backing file name of {} bytes", name.len()),
                });
            }
            let off = b.len() as u64;
            b[backing_off_pos..backing_off_pos + 8].copy_from_slice(&off.to_be_bytes());
            b[backing_off_pos + 8..backing_off_pos + 12]
                .copy_from_slice(&(name.len() as u32).to_be_bytes());
            b.extend_from_slice(name.as_bytes());
        }
        if b.len() > cs {
            return Err(Error::Invalid {
                path: path.to_owned(),
                msg: format!(
                    "header and backing file name ({} bytes) do not fit in one {cs}-byte cluster",
                    b.len()
                ),
            });
        }
        b.resize(cs, 0);
        Ok(b)
    }
}

/// Validates a table's placement: aligned, inside the file.
fn check_table(
    path: &Path,
    field: u64,
    what: &str,
    offset: u64,
    bytes: u64,
    cs: u64,
    file_len: u64,
) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    if !offset.is_multiple_of(cs) || offset == 0 {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            offset: field,
            msg: format!("{what} offset {offset:#x} invalid (unaligned or zero)"),
        });
    }
    if offset
        .checked_add(bytes)
        .is_none_or(|end| end > file_len.div_ceil(cs) * cs)
    {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            offset: field,
            msg: format!("{what} at {offset:#x} ({bytes} bytes) extends past the end of the file ({file_len} bytes)"),
        });
    }
    Ok(())
}
