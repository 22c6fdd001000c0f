//! bzImage payload compression: detection by magic and host-side decompression.
//!
//! The kernel build compresses `vmlinux.bin` (an ELF, possibly followed by relocation
//! data) and appends the uncompressed size as a little-endian `u32` (`size_append`).
//! [`decompress_payload`] strips and checks that trailer; [`decompress_stream`] takes a
//! bare compressed stream.

use std::fmt;
use std::io::Read;

use crate::{Error, Result};

/// Upper bound on a decompressed kernel, against decompression bombs (1 GiB).
pub const MAX_DECOMPRESSED_SIZE: u64 = 1 << 30;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const LZMA_MAGIC: &[u8] = &[0x5d, 0x00, 0x00];
const BZIP2_MAGIC: &[u8] = b"BZh";
const LZO_MAGIC: &[u8] = &[0x89, b'L', b'Z', b'O'];
const LZ4_LEGACY_MAGIC: &[u8] = &[0x02, 0x21, 0x4c, 0x18];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// LZ4 legacy frame: every block but the last decompresses to exactly 8 MiB.
const LZ4_LEGACY_BLOCK_SIZE: usize = 8 << 20;
/// Size of the `size_append` trailer.
const SIZE_TRAILER: usize = 4;

/// The compression of a bzImage payload (`CONFIG_KERNEL_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Xz => "xz",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

impl Compression {
    /// All variants, in detection order.
    pub const ALL: [Compression; 7] = [
        Compression::Gzip,
        Compression::Xz,
        Compression::Lzma,
        Compression::Bzip2,
        Compression::Lzo,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The leading magic bytes of this compression.
    pub fn magic(self) -> &'static [u8] {
        match self {
            Compression::Gzip => GZIP_MAGIC,
            Compression::Bzip2 => BZIP2_MAGIC,
            Compression::Lzma => LZMA_MAGIC,
            Compression::Xz => XZ_MAGIC,
            Compression::Lzo => LZO_MAGIC,
            Compression::Lz4 => LZ4_LEGACY_MAGIC,
            Compression::Zstd => ZSTD_MAGIC,
        }
    }

    /// Detects the compression from the first bytes of `payload`.
    pub fn detect(payload: &[u8]) -> Result<Self> {
        Compression::ALL
            .into_iter()
            .find(|c| payload.starts_with(c.magic()))
            .ok_or_else(|| {
                let head: Vec<String> =
                    payload.iter().take(6).map(|b| format!("{b:02x}")).collect();
                Error::UnsupportedCompression(format!("unknown magic [{}]", head.join(" ")))
            })
    }

    /// Whether this build can decompress the format (all of them, today).
    pub fn is_supported(self) -> bool {
        true
    }
}

/// Decompresses a bzImage payload: the compressed stream followed by its 4-byte
/// little-endian uncompressed size, which is checked against the output.
pub fn decompress_payload(compression: Compression, payload: &[u8]) -> Result<Vec<u8>> {
    let split = payload
        .len()
        .checked_sub(SIZE_TRAILER)
        .ok_or(Error::Truncated {
            what: "payload size trailer",
            need: SIZE_TRAILER as u64,
            have: payload.len() as u64,
        })?;
    let (stream, trailer) = payload.split_at(split);
    let expected = u64::from(u32::from_le_bytes([
        trailer[0], trailer[1], trailer[2], trailer[3],
    ]));
    let out = decompress_stream(compression, stream, Some(expected))?;
    // The trailer is a u32; a kernel past 4 GiB wraps (none is that big, but be exact).
    if out.len() as u64 & 0xffff_ffff != expected {
        return Err(Error::SizeMismatch {
            compression,
            expected,
            actual: out.len() as u64,
        });
    }
    tracing::debug!(%compression, size = out.len(), "kernel payload decompressed");
    Ok(out)
}

/// The most memory the XZ and LZMA decoders may take (mostly the dictionary the stream's
/// header asks for, allocated before any data is decoded). Kernels are built with a
/// 32 MiB (xz) or 64 MiB (`lzma -9`) dictionary; without a limit a 15-byte header asking
/// for a 2 GiB dictionary made the decoder allocate 2 GiB (found by fuzzing).
pub const LZMA_MEMLIMIT: u64 = 128 << 20;

/// The most a size hint pre-sizes the output, per byte of compressed input: kernels
/// compress 3 to 10 times; a larger output grows as it is written.
const PRESIZE_RATIO: u64 = 32;

/// Decompresses a bare compressed stream (no size trailer). `size_hint` only
/// pre-sizes the output buffer, and never beyond [`PRESIZE_RATIO`] times the input (the
/// hint is the image's own claim: a 4 KiB file claiming 1 GiB must not allocate it, as
/// fuzzing found); output is capped at [`MAX_DECOMPRESSED_SIZE`].
pub fn decompress_stream(
    compression: Compression,
    data: &[u8],
    size_hint: Option<u64>,
) -> Result<Vec<u8>> {
    let cap = size_hint
        .unwrap_or(0)
        .min(MAX_DECOMPRESSED_SIZE)
        .min((data.len() as u64).saturating_mul(PRESIZE_RATIO)) as usize;
    let fail = |e: &dyn fmt::Display| Error::Decompress {
        compression,
        cause: e.to_string(),
    };
    match compression {
        Compression::Gzip => read_all(compression, flate2::read::GzDecoder::new(data), cap),
        Compression::Bzip2 => read_all(compression, bzip2::read::BzDecoder::new(data), cap),
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(LZMA_MEMLIMIT, 0)
                .map_err(|e| fail(&e))?;
            read_all(
                compression,
                liblzma::read::XzDecoder::new_stream(data, stream),
                cap,
            )
        }
        Compression::Lzma => {
            let stream =
                liblzma::stream::Stream::new_lzma_decoder(LZMA_MEMLIMIT).map_err(|e| fail(&e))?;
            read_all(
                compression,
                liblzma::read::XzDecoder::new_stream(data, stream),
                cap,
            )
        }
        Compression::Zstd => {
            let dec = zstd::stream::read::Decoder::with_buffer(data).map_err(|e| fail(&e))?;
            read_all(compression, dec.single_frame(), cap)
        }
        Compression::Lz4 => lz4_legacy_decompress(data, cap),
        Compression::Lzo => {
            let mut out = Vec::with_capacity(cap);
            crate::lzo::decompress_lzop(data, &mut out, MAX_DECOMPRESSED_SIZE as usize)
                .map_err(|cause| Error::Decompress { compression, cause })?;
            Ok(out)
        }
    }
}

fn read_all(compression: Compression, reader: impl Read, cap: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(cap);
    reader
        .take(MAX_DECOMPRESSED_SIZE + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Decompress {
            compression,
            cause: e.to_string(),
        })?;
    if out.len() as u64 > MAX_DECOMPRESSED_SIZE {
        return Err(Error::TooLarge {
            compression,
            limit: MAX_DECOMPRESSED_SIZE,
        });
    }
    Ok(out)
}

/// LZ4 legacy frame (`lz4 -l`, as used by the kernel): magic 0x184C2102, then blocks,
/// each a little-endian `u32` compressed size and an LZ4 block of at most 8 MiB
/// uncompressed. A repeated magic starts a new frame; the data ends the stream.
fn lz4_legacy_decompress(data: &[u8], cap: usize) -> Result<Vec<u8>> {
    const C: Compression = Compression::Lz4;
    let err = |cause: String| Error::Decompress {
        compression: C,
        cause,
    };
    let mut rest = data
        .strip_prefix(LZ4_LEGACY_MAGIC)
        .ok_or_else(|| err("missing legacy frame magic 02 21 4c 18".into()))?;
    let mut out = Vec::with_capacity(cap);
    while !rest.is_empty() {
        let (len_bytes, tail) = rest.split_first_chunk::<4>().ok_or_else(|| {
            err(format!(
                "{} stray bytes where a block size belongs",
                rest.len()
            ))
        })?;
        if len_bytes.as_slice() == LZ4_LEGACY_MAGIC {
            rest = tail;
            continue;
        }
        let len = u32::from_le_bytes(*len_bytes) as usize;
        let block = tail.get(..len).ok_or_else(|| {
            err(format!(
                "block of {len} bytes but only {} remain",
                tail.len()
            ))
        })?;
        let start = out.len();
        if (start + LZ4_LEGACY_BLOCK_SIZE) as u64
            > MAX_DECOMPRESSED_SIZE + LZ4_LEGACY_BLOCK_SIZE as u64
        {
            return Err(Error::TooLarge {
                compression: C,
                limit: MAX_DECOMPRESSED_SIZE,
            });
        }
        out.resize(start + LZ4_LEGACY_BLOCK_SIZE, 0);
        let n = lz4_flex::block::decompress_into(block, &mut out[start..]).map_err(|e| {
            err(format!(
                "block at input offset {}: {e}",
                data.len() - rest.len()
            ))
        })?;
        out.truncate(start + n);
        rest = &tail[len..];
    }
    if out.len() as u64 > MAX_DECOMPRESSED_SIZE {
        return Err(Error::TooLarge {
            compression: C,
            limit: MAX_DECOMPRESSED_SIZE,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bzimage::tests::synthetic_bzimage;
    use crate::bzimage::XLF_KERNEL_64;
    use crate::BzImage;
    use std::io::Write;

    /// Fuzzing found these: an LZMA header asking for a 2 GiB dictionary (the decoder
    /// allocated it), and an XZ-format one is refused the same way; a real kernel's
    /// dictionary still decodes.
    #[test]
    fn decoders_refuse_dictionaries_beyond_the_memory_limit() {
        let lzma = [
            0x00, 0x00, 0x46, 0x1f, 0x83, 0xf4, 0xf4, 0xf4, 0xf4, 0xe4, 0xf4, 0xd0, 0xf4, 0xf4,
            0xf4, 0xf4,
        ];
        let e = decompress_stream(Compression::Lzma, &lzma, None).unwrap_err();
        assert!(e.to_string().to_lowercase().contains("memory"), "{e}");
        // A 64 MiB dictionary (`lzma -9`, the kernel's setting) is within the limit.
        let mut ok = Vec::new();
        let mut enc = liblzma::write::XzEncoder::new_stream(
            &mut ok,
            liblzma::stream::Stream::new_lzma_encoder(
                &liblzma::stream::LzmaOptions::new_preset(9).unwrap(),
            )
            .unwrap(),
        );
        enc.write_all(&sample()).unwrap();
        enc.finish().unwrap();
        assert_eq!(
            decompress_stream(Compression::Lzma, &ok, None).unwrap(),
            sample()
        );
    }

    fn sample() -> Vec<u8> {
        // Compressible but not trivial: 200 KiB of a repeating counter pattern.
        (0..200 * 1024u32)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect()
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Lzma => {
                let opts = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
                let s = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
                let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), s);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::bulk::compress(data, 19).unwrap(),
            Compression::Lz4 => {
                // Legacy frame with small pieces: exercise multi-block and a repeated magic.
                let mut out = LZ4_LEGACY_MAGIC.to_vec();
                for (i, chunk) in data.chunks(LZ4_LEGACY_BLOCK_SIZE).enumerate() {
                    if i > 0 {
                        out.extend_from_slice(LZ4_LEGACY_MAGIC);
                    }
                    let block = lz4_flex::block::compress(chunk);
                    out.extend_from_slice(&(block.len() as u32).to_le_bytes());
                    out.extend_from_slice(&block);
                }
                out
            }
            Compression::Lzo => crate::lzo::tests::lzop(data, 64 * 1024),
        }
    }

    fn with_trailer(mut stream: Vec<u8>, size: usize) -> Vec<u8> {
        stream.extend_from_slice(&(size as u32).to_le_bytes());
        stream
    }

    #[test]
    fn every_supported_compression_roundtrips_through_a_bzimage() {
        let data = sample();
        for c in Compression::ALL.into_iter().filter(|c| c.is_supported()) {
            let payload = with_trailer(compress(c, &data), data.len());
            assert_eq!(Compression::detect(&payload).unwrap(), c, "{c}");
            let img = synthetic_bzimage(&payload, 0x020f, XLF_KERNEL_64);
            let bz = BzImage::parse(&img).unwrap();
            assert_eq!(bz.compression, c);
            assert_eq!(bz.decompress(&img).unwrap(), data, "{c}");
        }
    }

    #[test]
    fn lz4_multi_block() {
        let data: Vec<u8> = (0..(LZ4_LEGACY_BLOCK_SIZE + 1000))
            .map(|i| (i % 7) as u8)
            .collect();
        let payload = with_trailer(compress(Compression::Lz4, &data), data.len());
        assert_eq!(
            decompress_payload(Compression::Lz4, &payload).unwrap(),
            data
        );
    }

    #[test]
    fn detects_all_magics() {
        for c in Compression::ALL {
            let mut p = c.magic().to_vec();
            p.extend_from_slice(&[0; 8]);
            assert_eq!(Compression::detect(&p).unwrap(), c);
        }
        assert!(matches!(
            Compression::detect(&[1, 2, 3, 4, 5, 6]),
            Err(Error::UnsupportedCompression(_))
        ));
        let mut lzo = LZO_MAGIC.to_vec();
        lzo.extend_from_slice(&[0; 16]);
        assert!(matches!(
            decompress_payload(Compression::Lzo, &lzo),
            Err(Error::Decompress { .. })
        ));
    }

    #[test]
    fn size_trailer_mismatch_is_an_error() {
        let data = sample();
        let payload = with_trailer(compress(Compression::Gzip, &data), data.len() + 1);
        assert!(matches!(
            decompress_payload(Compression::Gzip, &payload),
            Err(Error::SizeMismatch { .. })
        ));
    }

    #[test]
    fn corrupt_streams_fail_without_panic() {
        let data = sample();
        let mut rng = crate::tests::Rng::new(7);
        for c in Compression::ALL.into_iter().filter(|c| c.is_supported()) {
            let good = with_trailer(compress(c, &data), data.len());
            // Truncations.
            for cut in [0, 3, 4, 5, 10, good.len() / 2, good.len() - 5] {
                assert!(
                    decompress_payload(c, &good[..cut]).is_err(),
                    "{c} cut at {cut}"
                );
            }
            // Byte flips after the magic: must return (Ok or Err), never panic.
            for _ in 0..40 {
                let mut bad = good.clone();
                let i = c.magic().len() + (rng.next() as usize) % (bad.len() - c.magic().len());
                bad[i] ^= 1 + (rng.next() as u8 % 255);
                let _ = decompress_payload(c, &bad);
            }
        }
    }
}
