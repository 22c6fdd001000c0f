//! Turning a descriptor chain into a validated block request (virtio 1.2, section 5.2.6).
//!
//! The chain is read as the spec's byte streams (any layout): the device-readable
//! descriptors come first and begin with the 16-byte header; the device-writable ones
//! follow. The status byte is the last byte of the last descriptor, which must be
//! device-writable. Everything the guest controls is checked here, before any I/O: every
//! descriptor lies inside guest memory, directions match the request type, lengths are
//! whole sectors, sector ranges lie inside the disk (without overflow), the chain is not
//! longer than advertised. What is left for the engines is I/O on buffers known to be valid.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use virtio_bindings::virtio_blk as vb;
use virtio_queue::desc::split::Descriptor;

use super::GuestMemoryMmap;

/// Bytes per virtio-blk sector (requests always count in these, whatever `blk_size` says).
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Size of the request header (type, reserved, sector).
pub const HEADER_SIZE: usize = 16;
/// Size of one discard / write-zeroes segment (sector, num_sectors, flags).
pub const DISCARD_SEGMENT_SIZE: usize = 16;
/// Bytes of the GET_ID answer.
pub const ID_BYTES: usize = vb::VIRTIO_BLK_ID_BYTES as usize;

/// Status byte values.
pub const S_OK: u8 = vb::VIRTIO_BLK_S_OK as u8;
/// Status byte: the request failed (or was malformed).
pub const S_IOERR: u8 = vb::VIRTIO_BLK_S_IOERR as u8;
/// Status byte: the request type (or a flag) is not supported.
pub const S_UNSUPP: u8 = vb::VIRTIO_BLK_S_UNSUPP as u8;

/// A guest buffer (or a piece of one) that was checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: usize,
}

/// One discard or write-zeroes range, already checked against the disk size and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub sector: u64,
    pub sectors: u32,
    /// Write zeroes only: the driver allows the range to be deallocated.
    pub unmap: bool,
}

/// What a valid request asks for.
#[derive(Debug)]
pub enum Op {
    /// Read `len` bytes at `sector` into the device-writable `data`.
    Read {
        sector: u64,
        data: Vec<Segment>,
        len: u64,
    },
    /// Write the device-readable `data` (`len` bytes) at `sector`.
    Write {
        sector: u64,
        data: Vec<Segment>,
        len: u64,
    },
    Flush,
    /// Write the serial into `data` (at most [`ID_BYTES`] of it).
    GetId {
        data: Vec<Segment>,
        len: u64,
    },
    Discard(Vec<Range>),
    WriteZeroes(Vec<Range>),
}

/// A valid request: what to do and where its status byte is.
#[derive(Debug)]
pub struct Request {
    pub op: Op,
    pub status: GuestAddress,
}

/// The outcome of parsing a chain.
#[derive(Debug)]
pub enum Parsed {
    Ok(Request),
    /// Answer `code` in the status byte without doing anything.
    Reject {
        status: GuestAddress,
        code: u8,
        why: &'static str,
    },
    /// No usable status byte: return the chain with nothing written.
    Drop {
        why: &'static str,
    },
}

impl Parsed {
    /// The data bytes the request moves, what a rate limiter charges besides the one
    /// operation: a read's or write's length; 0 for anything else (flush, GET_ID, discard,
    /// write zeroes, a refused chain).
    pub fn data_bytes(&self) -> u64 {
        match self {
            Parsed::Ok(Request {
                op: Op::Read { len, .. } | Op::Write { len, .. },
                ..
            }) => *len,
            _ => 0,
        }
    }
}

/// What the device allows, and what the driver negotiated.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Disk size in sectors.
    pub capacity: u64,
    /// Most descriptors in one chain (header and status included).
    pub max_descriptors: usize,
    /// Most data bytes in one read or write.
    pub max_data_bytes: u64,
    pub read_only: bool,
    pub discard: bool,
    pub write_zeroes: bool,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
}

/// The used length to report for a finished request: `data_written` bytes plus the status.
pub fn used_len(data_written: u64) -> u32 {
    u32::try_from(data_written.saturating_add(1)).unwrap_or(u32::MAX)
}

/// Parses and validates one chain. Never touches guest memory except to read the header and
/// the discard segments.
pub fn parse(
    mem: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    lim: &Limits,
) -> Parsed {
    // Collect (a bounded number of) descriptors; keep walking past the bound only to find
    // the last one, which holds the status byte. virtio-queue bounds the walk itself (a
    // descriptor table's size), so a looping chain ends.
    let mut descs = Vec::new();
    let mut count = 0usize;
    let mut last = None;
    for d in chain {
        count += 1;
        if descs.len() <= lim.max_descriptors {
            descs.push(d);
        }
        last = Some(d);
    }
    let Some(last) = last else {
        return Parsed::Drop { why: "empty chain" };
    };
    if !last.is_write_only() || last.len() == 0 {
        return Parsed::Drop {
            why: "the last descriptor is not a device-writable status byte",
        };
    }
    let Some(status) = last.addr().checked_add(u64::from(last.len()) - 1) else {
        return Parsed::Drop {
            why: "status byte address overflows",
        };
    };
    if !mem.check_range(status, 1) {
        return Parsed::Drop {
            why: "status byte outside guest memory",
        };
    }
    let reject = |code, why| Parsed::Reject { status, code, why };
    let ioerr = |why| reject(S_IOERR, why);
    if last.has_next() {
        // virtio-queue cut the walk short: the chain loops, is longer than its descriptor
        // table, or names a descriptor it could not read.
        return ioerr("chain does not end");
    }
    if count > lim.max_descriptors {
        return ioerr("chain longer than seg_max allows");
    }

    // Split into the device-readable and device-writable streams (the status byte is kept
    // out of the latter).
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let n = descs.len();
    for (i, d) in descs.into_iter().enumerate() {
        let mut len = d.len() as usize;
        if i == n - 1 {
            len -= 1; // the status byte
        }
        if d.is_write_only() {
            if len > 0 {
                writable.push(Segment {
                    addr: d.addr(),
                    len,
                });
            }
        } else if !writable.is_empty() {
            return ioerr("device-readable descriptor after a device-writable one");
        } else if len > 0 {
            readable.push(Segment {
                addr: d.addr(),
                len,
            });
        }
    }
    for s in readable.iter().chain(&writable) {
        if !mem.check_range(s.addr, s.len) {
            return ioerr("buffer outside guest memory");
        }
    }
    let readable_len = total(&readable);
    let writable_len = total(&writable);

    let mut header = [0u8; HEADER_SIZE];
    if readable_len < HEADER_SIZE as u64 || !read_stream(mem, &readable, &mut header) {
        return ioerr("no 16-byte device-readable header");
    }
    let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    let payload = skip(&readable, HEADER_SIZE);
    let payload_len = readable_len - HEADER_SIZE as u64;

    let op = match req_type {
        vb::VIRTIO_BLK_T_IN => {
            if payload_len != 0 {
                return ioerr("read request with device-readable data");
            }
            if let Err(why) = check_rw(sector, writable_len, lim) {
                return ioerr(why);
            }
            Op::Read {
                sector,
                data: writable,
                len: writable_len,
            }
        }
        vb::VIRTIO_BLK_T_OUT => {
            if lim.read_only {
                return ioerr("write to a read-only disk");
            }
            if writable_len != 0 {
                return ioerr("write request with device-writable data");
            }
            if let Err(why) = check_rw(sector, payload_len, lim) {
                return ioerr(why);
            }
            Op::Write {
                sector,
                data: payload,
                len: payload_len,
            }
        }
        vb::VIRTIO_BLK_T_FLUSH => Op::Flush,
        vb::VIRTIO_BLK_T_GET_ID => Op::GetId {
            data: writable,
            len: writable_len,
        },
        vb::VIRTIO_BLK_T_DISCARD | vb::VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = req_type == vb::VIRTIO_BLK_T_DISCARD;
            if lim.read_only {
                return ioerr("discard or write zeroes on a read-only disk");
            }
            if (discard && !lim.discard) || (!discard && !lim.write_zeroes) {
                return reject(S_UNSUPP, "discard or write zeroes not negotiated");
            }
            match parse_ranges(mem, &payload, payload_len, discard, lim) {
                Ok(ranges) if discard => Op::Discard(ranges),
                Ok(ranges) => Op::WriteZeroes(ranges),
                Err((code, why)) => return reject(code, why),
            }
        }
        _ => return reject(S_UNSUPP, "unsupported request type"),
    };
    Parsed::Ok(Request { op, status })
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| s.len as u64).sum()
}

/// A read or write of `len` bytes at `sector`: whole sectors, within the size limit and the disk.
fn check_rw(sector: u64, len: u64, lim: &Limits) -> Result<(), &'static str> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err("data length is not a multiple of 512");
    }
    if len > lim.max_data_bytes {
        return Err("request larger than the device allows");
    }
    check_sectors(sector, len >> SECTOR_SHIFT, lim.capacity)
}

fn check_sectors(sector: u64, sectors: u64, capacity: u64) -> Result<(), &'static str> {
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        Some(_) => Err("sector range beyond the end of the disk"),
        None => Err("sector range overflows"),
    }
}

fn parse_ranges(
    mem: &GuestMemoryMmap,
    payload: &[Segment],
    len: u64,
    discard: bool,
    lim: &Limits,
) -> Result<Vec<Range>, (u8, &'static str)> {
    let (max_seg, max_sectors) = if discard {
        (lim.max_discard_seg, lim.max_discard_sectors)
    } else {
        (lim.max_write_zeroes_seg, lim.max_write_zeroes_sectors)
    };
    if len == 0 || !len.is_multiple_of(DISCARD_SEGMENT_SIZE as u64) {
        return Err((S_IOERR, "discard/write-zeroes data is not whole segments"));
    }
    if len / DISCARD_SEGMENT_SIZE as u64 > u64::from(max_seg) {
        return Err((S_IOERR, "more discard/write-zeroes segments than allowed"));
    }
    let mut raw = vec![0u8; len as usize];
    if !read_stream(mem, payload, &mut raw) {
        return Err((S_IOERR, "cannot read discard/write-zeroes segments"));
    }
    let mut ranges = Vec::with_capacity(raw.len() / DISCARD_SEGMENT_SIZE);
    for seg in raw.chunks_exact(DISCARD_SEGMENT_SIZE) {
        let mut s = [0u8; 8];
        s.copy_from_slice(&seg[0..8]);
        let sector = u64::from_le_bytes(s);
        let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
        let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
        let unmap = flags & vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        if flags & !vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (discard && unmap) {
            return Err((S_UNSUPP, "unknown or invalid segment flags"));
        }
        if sectors > max_sectors {
            return Err((S_IOERR, "discard/write-zeroes segment larger than allowed"));
        }
        check_sectors(sector, u64::from(sectors), lim.capacity).map_err(|why| (S_IOERR, why))?;
        ranges.push(Range {
            sector,
            sectors,
            unmap,
        });
    }
    Ok(ranges)
}

/// `segs` without its first `n` bytes.
pub fn skip(segs: &[Segment], mut n: usize) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        if n >= s.len {
            n -= s.len;
            continue;
        }
        out.push(Segment {
            addr: s.addr.unchecked_add(n as u64),
            len: s.len - n,
        });
        n = 0;
    }
    out
}

/// Fills `buf` from the start of the stream `segs`; false if the stream is too short or
/// unreadable.
pub fn read_stream(mem: &GuestMemoryMmap, segs: &[Segment], buf: &mut [u8]) -> bool {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = s.len.min(buf.len() - done);
        if mem.read_slice(&mut buf[done..done + n], s.addr).is_err() {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// Copies `buf` into the stream `segs` starting `at` bytes into it; false if the stream is
/// too short or unwritable.
pub fn write_stream(mem: &GuestMemoryMmap, segs: &[Segment], at: usize, buf: &[u8]) -> bool {
    let mut done = 0;
    for s in skip(segs, at) {
        if done == buf.len() {
            break;
        }
        let n = s.len.min(buf.len() - done);
        if mem.write_slice(&buf[done..done + n], s.addr).is_err() {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// Fills `buf` from the stream `segs` starting `at` bytes into it.
pub fn read_stream_at(mem: &GuestMemoryMmap, segs: &[Segment], at: usize, buf: &mut [u8]) -> bool {
    read_stream(mem, &skip(segs, at), buf)
}
