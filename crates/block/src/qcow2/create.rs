//! Creating empty qcow2 images.

use super::header::{self, Compression, Header};
use super::meta::Geo;
use super::refcount;
use crate::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Parameters of a new qcow2 image (defaults as `qemu-img create -f qcow2`).
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub size: u64,
    pub cluster_size: u64,
    /// 2 (compat=0.10) or 3 (compat=1.1).
    pub version: u32,
    pub refcount_bits: u32,
    pub compression: Compression,
    pub lazy_refcounts: bool,
    /// Backing file name as stored in the header.
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: 65536,
            version: 3,
            refcount_bits: 16,
            compression: Compression::Zlib,
            lazy_refcounts: false,
            backing_file: None,
            backing_format: None,
        }
    }
}

/// Creates (truncates) a qcow2 image: header, empty L1 table, refcount table and blocks.
pub fn create(path: &Path, o: &CreateOptions) -> Result<()> {
    let invalid = |msg: String| Error::Invalid {
        path: path.to_owned(),
        msg,
    };
    let cs = o.cluster_size;
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err(invalid(format!(
            "cluster size {cs} must be a power of two between 512 and 2M"
        )));
    }
    if !o.refcount_bits.is_power_of_two() || o.refcount_bits > 64 {
        return Err(invalid(format!(
            "refcount_bits {} must be a power of two up to 64",
            o.refcount_bits
        )));
    }
    if o.version != 2 && o.version != 3 {
        return Err(invalid(format!(
            "qcow2 version {} (compat must be 0.10 or 1.1)",
            o.version
        )));
    }
    if o.version == 2 && o.refcount_bits != 16 {
        return Err(invalid(
            "refcount widths other than 16 bits require compat=1.1".into(),
        ));
    }
    if o.version == 2 && (o.compression != Compression::Zlib || o.lazy_refcounts) {
        return Err(invalid(
            "compression_type and lazy_refcounts require compat=1.1".into(),
        ));
    }
    if o.size > header::MAX_VIRTUAL_SIZE {
        return Err(invalid(format!("image size {} too large", o.size)));
    }
    let bits = cs.trailing_zeros();
    let order = o.refcount_bits.trailing_zeros();
    let geo = Geo::new(o.version, bits, order, o.compression);
    let l1_entries = o.size.div_ceil(geo.l2_span()).max(1);
    if l1_entries * 8 > header::MAX_L1_BYTES {
        return Err(invalid(format!(
            "image size {} needs an L1 table larger than 32 MiB",
            o.size
        )));
    }
    let l1_clusters = (l1_entries * 8).div_ceil(cs);
    // Fixed point: refcount blocks and table covering every metadata cluster.
    let (mut rt_clusters, mut rb_count) = (1u64, 1u64);
    loop {
        let total = 1 + l1_clusters + rt_clusters + rb_count;
        let rb = total.div_ceil(geo.rb_entries);
        let rt = (rb * 8).div_ceil(cs);
        if rb == rb_count && rt == rt_clusters {
            break;
        }
        rb_count = rb;
        rt_clusters = rt;
    }
    let l1_off = cs;
    let rt_off = l1_off + l1_clusters * cs;
    let rb_off = rt_off + rt_clusters * cs;
    let total = 1 + l1_clusters + rt_clusters + rb_count;

    let mut incompat = 0;
    if o.compression != Compression::Zlib {
        incompat |= header::INCOMPAT_COMPRESSION;
    }
    let h = Header {
        version: o.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits: bits,
        size: o.size,
        crypt_method: 0,
        l1_size: l1_entries as u32,
        l1_table_offset: l1_off,
        refcount_table_offset: rt_off,
        refcount_table_clusters: rt_clusters as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: incompat,
        compatible_features: if o.lazy_refcounts {
            header::COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear_features: 0,
        refcount_order: order,
        header_length: if o.version == 3 {
            header::V3_HEADER_LEN
        } else {
            header::V2_HEADER_LEN
        },
        compression: o.compression,
        backing_format: o.backing_format.clone(),
        backing_file: o.backing_file.clone(),
        feature_names: Vec::new(),
    };
    let hdr = h.to_cluster(path)?;

    let file = File::create(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    let io_err = |op: &'static str, offset: u64| {
        move |source| Error::Io {
            path: path.to_owned(),
            op,
            offset,
            source,
        }
    };
    file.set_len(total * cs)
        .map_err(io_err("truncate", total * cs))?;
    let mut rt = vec![0u8; (rt_clusters * cs) as usize];
    for i in 0..rb_count {
        let off = rb_off + i * cs;
        rt[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
    }
    file.write_all_at(&rt, rt_off)
        .map_err(io_err("write", rt_off))?;
    let mut rbs = vec![0u8; (rb_count * cs) as usize];
    for c in 0..total {
        let block = (c / geo.rb_entries) as usize;
        let idx = (c % geo.rb_entries) as usize;
        let start = block * cs as usize;
        refcount::set(&mut rbs[start..start + cs as usize], order, idx, 1);
    }
    file.write_all_at(&rbs, rb_off)
        .map_err(io_err("write", rb_off))?;
    file.write_all_at(&hdr, 0).map_err(io_err("write", 0))?;
    file.sync_all().map_err(io_err("fsync", 0))?;
    Ok(())
}
