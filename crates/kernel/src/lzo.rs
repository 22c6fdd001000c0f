//! LZO (`CONFIG_KERNEL_LZO`): the lzop container the kernel build writes, and an
//! LZO1X block decoder written from Documentation/staging/lzo.rst.
//!
//! Every read and back-reference is bounds-checked; malformed input is an error.
//! Block and header checksums are skipped (as the kernel's own unlzo does for
//! headers); the payload's size trailer still checks the result.

/// lzop file magic.
pub(crate) const LZOP_MAGIC: [u8; 9] = [0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a];

const F_ADLER32_D: u32 = 0x0000_0001;
const F_ADLER32_C: u32 = 0x0000_0002;
const F_H_EXTRA_FIELD: u32 = 0x0000_0040;
const F_CRC32_D: u32 = 0x0000_0100;
const F_CRC32_C: u32 = 0x0000_0200;
const F_H_FILTER: u32 = 0x0000_0800;
/// lzop versions from 0.9.4 on carry extra header fields.
const LZOP_VERSION_EXTENDED: u16 = 0x0940;
/// lzop never writes blocks larger than 64 MiB (default 256 KiB).
const MAX_BLOCK: usize = 64 << 20;

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "input ends at {} while {n} more bytes are needed at {}",
                    self.data.len(),
                    self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn be16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn be32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Decodes an lzop stream (header, then blocks until a zero block length), appending to
/// `out`; stops with an error once `out` would exceed `limit`.
pub(crate) fn decompress_lzop(data: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), String> {
    let mut r = Reader { data, pos: 0 };
    if r.take(LZOP_MAGIC.len())? != LZOP_MAGIC {
        return Err("not an lzop stream (bad magic)".into());
    }
    let version = r.be16()?;
    let _lib_version = r.be16()?;
    if version >= LZOP_VERSION_EXTENDED {
        let _version_needed = r.be16()?;
    }
    let method = r.u8()?;
    if !(1..=3).contains(&method) {
        return Err(format!("lzop method {method} is not LZO1X"));
    }
    if version >= LZOP_VERSION_EXTENDED {
        let _level = r.u8()?;
    }
    let flags = r.be32()?;
    if flags & F_H_FILTER != 0 {
        return Err("lzop filters are not supported".into());
    }
    let _mode = r.be32()?;
    let _mtime_low = r.be32()?;
    if version >= LZOP_VERSION_EXTENDED {
        let _mtime_high = r.be32()?;
    }
    let name_len = r.u8()?;
    r.take(usize::from(name_len))?;
    let _header_checksum = r.be32()?;
    if flags & F_H_EXTRA_FIELD != 0 {
        let len = r.be32()? as usize;
        r.take(len)?;
        let _extra_checksum = r.be32()?;
    }
    loop {
        let dst_len = r.be32()? as usize;
        if dst_len == 0 {
            return Ok(());
        }
        if dst_len > MAX_BLOCK {
            return Err(format!("lzop block of {dst_len} bytes exceeds {MAX_BLOCK}"));
        }
        let src_len = r.be32()? as usize;
        for f in [F_ADLER32_D, F_CRC32_D] {
            if flags & f != 0 {
                r.be32()?;
            }
        }
        if src_len < dst_len {
            for f in [F_ADLER32_C, F_CRC32_C] {
                if flags & f != 0 {
                    r.be32()?;
                }
            }
        }
        if out.len().saturating_add(dst_len) > limit {
            return Err(format!("output exceeds {limit} bytes"));
        }
        let block = r.take(src_len)?;
        match src_len.cmp(&dst_len) {
            std::cmp::Ordering::Equal => out.extend_from_slice(block),
            std::cmp::Ordering::Less => {
                let start = out.len();
                lzo1x_decompress(block, out, start + dst_len)?;
                if out.len() != start + dst_len {
                    return Err(format!(
                        "block decoded to {} bytes, header says {dst_len}",
                        out.len() - start
                    ));
                }
            }
            std::cmp::Ordering::Greater => {
                return Err(format!(
                    "block compressed size {src_len} > uncompressed {dst_len}"
                ));
            }
        }
    }
}

/// Decodes one LZO1X block, appending to `out` (whose earlier bytes are not
/// referenced: the lzop blocks are independent) but never past `out_end`.
pub(crate) fn lzo1x_decompress(
    input: &[u8],
    out: &mut Vec<u8>,
    out_end: usize,
) -> Result<(), String> {
    let block_start = out.len();
    let mut r = Reader {
        data: input,
        pos: 0,
    };
    let literals = |r: &mut Reader<'_>, out: &mut Vec<u8>, n: usize| -> Result<(), String> {
        if out.len() + n > out_end {
            return Err("literal run overflows the block".into());
        }
        out.extend_from_slice(r.take(n)?);
        Ok(())
    };
    // Length with `bits` low bits in the opcode; zero means "extended".
    let ext_len = |r: &mut Reader<'_>, op: u8, mask: u8| -> Result<usize, String> {
        let l = usize::from(op & mask);
        if l != 0 {
            return Ok(l);
        }
        let mut len = usize::from(mask);
        loop {
            let b = r.u8()?;
            if b != 0 {
                return Ok(len + usize::from(b));
            }
            len += 255;
            if len > MAX_BLOCK {
                return Err("length run too long".into());
            }
        }
    };
    let copy = |out: &mut Vec<u8>, dist: usize, len: usize| -> Result<(), String> {
        if dist == 0 || dist > out.len() - block_start {
            return Err(format!(
                "back-reference distance {dist} before the block start"
            ));
        }
        if out.len() + len > out_end {
            return Err("match overflows the block".into());
        }
        let from = out.len() - dist;
        for i in 0..len {
            let b = out[from + i];
            out.push(b);
        }
        Ok(())
    };

    // state: literals copied by the previous instruction (0, 1..3, or 4 meaning >= 4).
    let mut state: usize;
    let first = *input.first().ok_or("empty LZO block")?;
    if first > 17 {
        r.pos = 1;
        let n = usize::from(first - 17);
        literals(&mut r, out, n)?;
        state = if n >= 4 { 4 } else { n };
    } else if first == 17 && input.len() >= 5 {
        // A versioned bitstream (LZO-RLE, zram only); lzop never writes one.
        return Err(format!(
            "LZO bitstream version {} (LZO-RLE) is not supported",
            input[1]
        ));
    } else {
        state = 0;
    }
    loop {
        let op = r.u8()?;
        let (dist, len, next_state) = match op {
            0..=15 => match state {
                0 => {
                    let n = 3 + ext_len(&mut r, op, 0x0f)?;
                    literals(&mut r, out, n)?;
                    state = 4;
                    continue;
                }
                1..=3 => {
                    let h = usize::from(r.u8()?);
                    (
                        (h << 2) + usize::from((op >> 2) & 3) + 1,
                        2,
                        usize::from(op & 3),
                    )
                }
                _ => {
                    let h = usize::from(r.u8()?);
                    (
                        (h << 2) + usize::from((op >> 2) & 3) + 2049,
                        3,
                        usize::from(op & 3),
                    )
                }
            },
            16..=31 => {
                let len = 2 + ext_len(&mut r, op, 0x07)?;
                let le = usize::from(u16::from_le_bytes([r.u8()?, r.u8()?]));
                let dist = 16384 + (usize::from(op & 0x08) << 11) + (le >> 2);
                if dist == 16384 {
                    return if r.pos == input.len() {
                        Ok(())
                    } else {
                        Err(format!(
                            "{} bytes after the end-of-stream marker",
                            input.len() - r.pos
                        ))
                    };
                }
                (dist, len, le & 3)
            }
            32..=63 => {
                let len = 2 + ext_len(&mut r, op, 0x1f)?;
                let le = usize::from(u16::from_le_bytes([r.u8()?, r.u8()?]));
                ((le >> 2) + 1, len, le & 3)
            }
            64..=127 => {
                let h = usize::from(r.u8()?);
                (
                    (h << 3) + usize::from((op >> 2) & 7) + 1,
                    3 + usize::from((op >> 5) & 1),
                    usize::from(op & 3),
                )
            }
            128..=255 => {
                let h = usize::from(r.u8()?);
                (
                    (h << 3) + usize::from((op >> 2) & 7) + 1,
                    5 + usize::from((op >> 5) & 3),
                    usize::from(op & 3),
                )
            }
        };
        copy(out, dist, len)?;
        literals(&mut r, out, next_state)?;
        state = next_state;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An lzop file (version 0x1030, no checksums) around LZO1X blocks made by
    /// `lzokay_native` (the test-only encoder), in blocks of `block` bytes.
    pub(crate) fn lzop(data: &[u8], block: usize) -> Vec<u8> {
        let mut f = LZOP_MAGIC.to_vec();
        f.extend_from_slice(&0x1030u16.to_be_bytes()); // version
        f.extend_from_slice(&0x2080u16.to_be_bytes()); // lib version
        f.extend_from_slice(&0x0940u16.to_be_bytes()); // version needed
        f.push(1); // method LZO1X_1
        f.push(5); // level
        f.extend_from_slice(&0u32.to_be_bytes()); // flags
        f.extend_from_slice(&0o100644u32.to_be_bytes()); // mode
        f.extend_from_slice(&0u32.to_be_bytes()); // mtime low
        f.extend_from_slice(&0u32.to_be_bytes()); // mtime high
        f.push(0); // name length
        f.extend_from_slice(&0u32.to_be_bytes()); // header checksum (unchecked)
        for chunk in data.chunks(block) {
            let c = lzokay_native::compress(chunk).unwrap();
            f.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            if c.len() < chunk.len() {
                f.extend_from_slice(&(c.len() as u32).to_be_bytes());
                f.extend_from_slice(&c);
            } else {
                f.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
                f.extend_from_slice(chunk);
            }
        }
        f.extend_from_slice(&0u32.to_be_bytes());
        f
    }

    #[test]
    fn roundtrips_varied_data() {
        let mut rng = crate::tests::Rng::new(3);
        let mut data: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect();
        data.extend(rng.bytes(5000)); // incompressible: a stored block
        data.extend(std::iter::repeat_n(0u8, 70_000)); // long runs: extended lengths
        data.extend(b"abcabcabcabd".repeat(3000));
        let f = lzop(&data, 256 * 1024);
        let mut out = Vec::new();
        decompress_lzop(&f, &mut out, usize::MAX).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn malformed_blocks_error_without_panic() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 97) as u8).collect();
        let good = lzop(&data, 16 * 1024);
        let mut rng = crate::tests::Rng::new(11);
        for cut in [0, 8, 20, good.len() / 2, good.len() - 1] {
            assert!(decompress_lzop(&good[..cut], &mut Vec::new(), usize::MAX).is_err());
        }
        for _ in 0..2000 {
            let mut bad = good.clone();
            for _ in 0..3 {
                let i = 9 + (rng.next() as usize) % (bad.len() - 9);
                bad[i] = rng.next() as u8;
            }
            let _ = decompress_lzop(&bad, &mut Vec::new(), 1 << 20);
        }
        for _ in 0..2000 {
            let n = (rng.next() % 64) as usize;
            let block = rng.bytes(n);
            let _ = lzo1x_decompress(&block, &mut Vec::new(), 4096);
        }
    }
}
