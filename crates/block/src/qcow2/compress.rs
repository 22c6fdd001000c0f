//! Compressed clusters: raw deflate (zlib type) or zstd, per the header's compression type.

use super::header::Compression;
use super::meta::Meta;
use super::refcount;
use crate::{Error, Result};

/// The decompressed contents of the compressed cluster described by L2 `entry`.
pub fn cluster(m: &mut Meta, entry: u64) -> Result<&[u8]> {
    if m.decomp.as_ref().is_none_or(|(e, _)| *e != entry) {
        let data = decompress_entry(m, entry)?;
        m.decomp = Some((entry, data));
    }
    match &m.decomp {
        Some((_, d)) => Ok(d),
        None => Err(m.io.corrupt(0, "decompression cache empty".into())),
    }
}

fn decompress_entry(m: &Meta, entry: u64) -> Result<Vec<u8>> {
    let (host, len) = m.geo.compressed_range(entry);
    let end = m.image_end();
    if host >= end {
        return Err(m.io.corrupt(
            host,
            format!("compressed cluster at {host:#x} is past the end of the image ({end:#x})"),
        ));
    }
    let len = len.min(end - host) as usize;
    let mut input = vec![0u8; len];
    m.io.pread(&mut input, host)?;
    let mut out = vec![0u8; m.geo.cs as usize];
    let ok = match m.geo.compression {
        Compression::Zlib => inflate(&input, &mut out),
        Compression::Zstd => unzstd(&input, &mut out),
    };
    if !ok {
        return Err(m.io.corrupt(
            host,
            format!(
                "compressed cluster at {host:#x} ({len} bytes, {}) does not decompress to {} bytes",
                m.geo.compression.name(),
                m.geo.cs
            ),
        ));
    }
    Ok(out)
}

/// Raw deflate; true when exactly `out.len()` bytes were produced (trailing input ignored).
fn inflate(input: &[u8], out: &mut [u8]) -> bool {
    let mut d = flate2::Decompress::new(false);
    loop {
        let before_in = d.total_in();
        let before_out = d.total_out();
        let (i, o) = (before_in as usize, before_out as usize);
        match d.decompress(&input[i..], &mut out[o..], flate2::FlushDecompress::Finish) {
            Ok(flate2::Status::StreamEnd) => return d.total_out() as usize == out.len(),
            Ok(_) => {
                if d.total_out() as usize == out.len() {
                    return true;
                }
                if d.total_in() == before_in && d.total_out() == before_out {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// zstd (one or more frames); true when exactly `out.len()` bytes were produced.
fn unzstd(input: &[u8], out: &mut [u8]) -> bool {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let Ok(mut dec) = Decoder::new() else {
        return false;
    };
    let mut inb = InBuffer::around(input);
    let mut outb = OutBuffer::around(&mut *out);
    loop {
        let (in_before, out_before) = (inb.pos(), outb.pos());
        if dec.run(&mut inb, &mut outb).is_err() {
            return false;
        }
        if outb.pos() == outb.capacity() {
            return true;
        }
        if inb.pos() == in_before && outb.pos() == out_before {
            return false;
        }
        if inb.pos() == input.len() {
            // Flush whatever the decoder still holds.
            if dec.run(&mut inb, &mut outb).is_err() {
                return false;
            }
            return outb.pos() == outb.capacity();
        }
    }
}

/// Compresses one cluster; `None` when the result would not be smaller than a cluster.
pub fn compress(m: &Meta, data: &[u8]) -> Option<Vec<u8>> {
    let cs = data.len();
    let packed = match m.geo.compression {
        Compression::Zlib => {
            let mut c = flate2::Compress::new(flate2::Compression::default(), false);
            let mut out = vec![0u8; cs];
            match c.compress(data, &mut out, flate2::FlushCompress::Finish) {
                Ok(flate2::Status::StreamEnd) => {
                    out.truncate(c.total_out() as usize);
                    out
                }
                _ => return None,
            }
        }
        Compression::Zstd => zstd::bulk::compress(data, 3).ok()?,
    };
    (packed.len() < cs).then_some(packed)
}

/// Chooses the host byte offset for `len` bytes of compressed data, sharing clusters between
/// consecutive compressed clusters (each sharer holds one reference).
pub fn place(m: &mut Meta, len: u64) -> Result<u64> {
    let cs = m.geo.cs;
    if let Some(cur) = m.comp_cursor {
        let cluster = cur & !(cs - 1);
        let rc = m.refcount(cluster)?;
        if cur + len <= cluster + cs && rc > 0 && rc < refcount::max(m.geo.refcount_order) {
            m.set_refcount(cluster, rc + 1)?;
            m.comp_cursor = (cur + len < cluster + cs).then_some(cur + len);
            return Ok(cur);
        }
    }
    let host = m.alloc_cluster()?;
    if len > cs {
        return Err(Error::Invalid {
            path: m.io.path.clone(),
            msg: format!("compressed data of {len} bytes exceeds a cluster"),
        });
    }
    m.comp_cursor = (len < cs).then_some(host + len);
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflate_rejects_garbage_and_short_streams() {
        let mut out = vec![0u8; 4096];
        assert!(!inflate(&[0xff; 64], &mut out));
        assert!(!inflate(&[], &mut out));
        assert!(!unzstd(&[0xff; 64], &mut out));
    }

    #[test]
    fn deflate_roundtrip_with_trailing_garbage() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut packed = vec![0u8; 4096];
        c.compress(&data, &mut packed, flate2::FlushCompress::Finish)
            .unwrap();
        packed.truncate(c.total_out() as usize);
        packed.extend_from_slice(&[0xaa; 300]);
        let mut out = vec![0u8; 4096];
        assert!(inflate(&packed, &mut out));
        assert_eq!(out, data);
        let mut z = zstd::bulk::compress(&data, 3).unwrap();
        z.extend_from_slice(&[0u8; 100]);
        let mut out2 = vec![0u8; 4096];
        assert!(unzstd(&z, &mut out2));
        assert_eq!(out2, data);
    }
}
