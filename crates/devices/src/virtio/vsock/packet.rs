//! The virtio-vsock packet (virtio 1.2, section 5.10.6): the 44-byte little-endian
//! `virtio_vsock_hdr` and the guest buffers packets travel in.
//!
//! Everything the guest controls is checked here: a tx chain becomes a [`Header`] and a
//! payload copied out of guest memory, or a [`TxError`]; an rx chain becomes an [`RxBuf`],
//! a list of writable guest ranges already checked to lie inside guest memory.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::virtio::worker::Chain;
use crate::virtio::GuestMemoryMmap;

/// Bytes of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;

/// The largest payload of one packet, both ways (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
/// A guest packet announcing more is refused.
pub const MAX_PKT_LEN: usize = 64 << 10;

/// The host's CID (`VMADDR_CID_HOST`): the only destination the device serves.
pub const HOST_CID: u64 = 2;

/// `type`: stream sockets, the only type this device supports.
pub const TYPE_STREAM: u16 = 1;

/// Operations (`op`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Abortive close, or "no such connection".
    pub const RST: u16 = 3;
    /// Orderly close of one or both directions (`flags`: [`super::shutdown`]).
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Unsolicited credit information.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the peer for a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags.
pub mod shutdown {
    /// The sender will receive no more data.
    pub const RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
    /// Both.
    pub const BOTH: u32 = RCV | SEND;
}

/// `struct virtio_vsock_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Payload bytes following the header.
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    /// The sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the little-endian wire format.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Header {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or([0; 2]));
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the little-endian wire format.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a tx chain is not a packet the device can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("tx descriptor at {addr:#x} is device-writable")]
    WritableDescriptor { addr: u64 },
    #[error("tx descriptor [{addr:#x}, +{len:#x}) is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("tx chain holds {0} bytes, less than a {HDR_SIZE}-byte header")]
    ShortHeader(usize),
    #[error("packet payload of {} bytes exceeds the {MAX_PKT_LEN}-byte limit", hdr.len)]
    TooLong { hdr: Header },
    #[error("packet announces {} payload bytes but its chain holds {avail}", hdr.len)]
    Truncated { hdr: Header, avail: usize },
    #[error("cannot read the tx chain from guest memory: {0}")]
    Memory(String),
}

impl TxError {
    /// The header, when the chain had one (the packet may still name a connection).
    pub fn header(&self) -> Option<&Header> {
        match self {
            TxError::TooLong { hdr } | TxError::Truncated { hdr, .. } => Some(hdr),
            _ => None,
        }
    }
}

/// The readable ranges of a chain, each inside guest memory. Any writable descriptor or
/// any range outside memory makes the whole chain unusable.
fn readable_ranges(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
) -> Result<Vec<(GuestAddress, usize)>, TxError> {
    let mut ranges = Vec::new();
    for desc in chain {
        if desc.is_write_only() {
            return Err(TxError::WritableDescriptor {
                addr: desc.addr().raw_value(),
            });
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        if !mem.check_range(desc.addr(), len) {
            return Err(TxError::OutsideMemory {
                addr: desc.addr().raw_value(),
                len: desc.len(),
            });
        }
        ranges.push((desc.addr(), len));
    }
    Ok(ranges)
}

/// Copies bytes `[offset, offset + out.len())` of the concatenated `ranges` into `out`;
/// returns how many were there.
fn gather(
    mem: &GuestMemoryMmap,
    ranges: &[(GuestAddress, usize)],
    mut offset: usize,
    out: &mut [u8],
) -> Result<usize, TxError> {
    let mut done = 0;
    for &(addr, len) in ranges {
        if done == out.len() {
            break;
        }
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(out.len() - done);
        let at = addr
            .checked_add(offset as u64)
            .ok_or_else(|| TxError::Memory(format!("{:#x} + {offset:#x} overflows", addr.0)))?;
        mem.read_slice(&mut out[done..done + n], at)
            .map_err(|e| TxError::Memory(e.to_string()))?;
        done += n;
        offset = 0;
    }
    Ok(done)
}

/// Reads the packet in tx chain `chain`: its header, and for an RW packet its payload into
/// `payload` (resized to the payload length; other operations carry none, whatever their
/// `len` says).
pub fn read_tx(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    payload: &mut Vec<u8>,
) -> Result<Header, TxError> {
    payload.clear();
    let ranges = readable_ranges(mem, chain)?;
    let mut raw = [0u8; HDR_SIZE];
    let got = gather(mem, &ranges, 0, &mut raw)?;
    if got < HDR_SIZE {
        return Err(TxError::ShortHeader(got));
    }
    let hdr = Header::from_bytes(&raw);
    if hdr.op != op::RW || hdr.len == 0 {
        return Ok(hdr);
    }
    let len = hdr.len as usize;
    if len > MAX_PKT_LEN {
        return Err(TxError::TooLong { hdr });
    }
    payload.resize(len, 0);
    let got = gather(mem, &ranges, HDR_SIZE, payload)?;
    if got < len {
        payload.clear();
        return Err(TxError::Truncated { hdr, avail: got });
    }
    Ok(hdr)
}

/// A device-writable guest buffer (an rx or event chain), popped from its queue and not yet
/// used: the chain's head and its writable ranges, each checked to lie in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxBuf {
    /// The chain's head descriptor index (for the used ring).
    pub head: u16,
    ranges: Vec<(GuestAddress, usize)>,
    cap: usize,
}

/// Why an rx chain cannot hold packets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    #[error("rx descriptor at {addr:#x} is device-readable")]
    ReadableDescriptor { addr: u64 },
    #[error("rx descriptor [{addr:#x}, +{len:#x}) is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("rx chain holds {have} bytes, less than the {need} needed")]
    TooSmall { have: usize, need: usize },
}

impl RxBuf {
    /// Takes the writable ranges of `chain`, counting at most `max` bytes; the chain must
    /// hold at least `min`. On error the caller completes the chain (by `head`) with 0 bytes.
    pub fn from_chain(
        mem: &GuestMemoryMmap,
        chain: Chain<'_>,
        min: usize,
        max: usize,
    ) -> Result<RxBuf, (u16, RxError)> {
        let head = chain.head_index();
        let mut ranges = Vec::new();
        let mut cap = 0usize;
        for desc in chain {
            if !desc.is_write_only() {
                let addr = desc.addr().raw_value();
                return Err((head, RxError::ReadableDescriptor { addr }));
            }
            let len = (desc.len() as usize).min(max - cap);
            if len == 0 {
                continue;
            }
            if !mem.check_range(desc.addr(), desc.len() as usize) {
                let (addr, len) = (desc.addr().raw_value(), desc.len());
                return Err((head, RxError::OutsideMemory { addr, len }));
            }
            ranges.push((desc.addr(), len));
            cap += len;
        }
        if cap < min {
            return Err((
                head,
                RxError::TooSmall {
                    have: cap,
                    need: min,
                },
            ));
        }
        Ok(RxBuf { head, ranges, cap })
    }

    /// The bytes the buffer holds (at most the `max` it was taken with).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The payload bytes a packet in this buffer can carry.
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(HDR_SIZE)
    }

    /// Writes `parts`, one after the other, at the start of the buffer; returns how many
    /// bytes fit.
    pub fn write(&self, mem: &GuestMemoryMmap, parts: &[&[u8]]) -> Result<usize, String> {
        let mut ranges = self.ranges.iter().copied();
        let mut cur: Option<(GuestAddress, usize)> = ranges.next();
        let mut written = 0usize;
        for part in parts {
            let mut part: &[u8] = part;
            while !part.is_empty() {
                let Some((addr, len)) = cur else {
                    return Ok(written);
                };
                if len == 0 {
                    cur = ranges.next();
                    continue;
                }
                let n = len.min(part.len());
                mem.write_slice(&part[..n], addr)
                    .map_err(|e| format!("cannot write an rx buffer at {:#x}: {e}", addr.0))?;
                written += n;
                part = &part[n..];
                // `n` <= `len`, and the range was checked to lie in memory.
                cur = Some((addr.unchecked_add(n as u64), len - n));
            }
        }
        Ok(written)
    }

    /// Writes packet `hdr` with `payload` (which must fit [`RxBuf::room`]); returns the bytes
    /// written, for the used ring.
    pub fn write_packet(
        &self,
        mem: &GuestMemoryMmap,
        hdr: &Header,
        payload: &[u8],
    ) -> Result<u32, String> {
        if payload.len() > self.room() {
            return Err(format!(
                "a {}-byte payload does not fit a {}-byte rx buffer",
                payload.len(),
                self.cap
            ));
        }
        let n = self.write(mem, &[&hdr.to_bytes(), payload])?;
        Ok(n as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_util::{guest_memory, DriverQueue, INDIRECT, NEXT, WRITE};
    use virtio_queue::QueueOwnedT;

    const MEM: usize = 0x10_0000;

    fn hdr() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 5000,
            len: 0,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    /// Publishes chain `bufs` at descriptor 0 and pops it (device side), handing it to `f`.
    fn with_chain<R>(
        mem: &GuestMemoryMmap,
        setup: impl FnOnce(&DriverQueue) -> u16,
        f: impl FnOnce(Chain<'_>) -> R,
    ) -> R {
        let mut dq = DriverQueue::new(16, 0);
        let head = setup(&dq);
        dq.publish(mem, head);
        let mut q = dq.device_queue(false);
        let chain = q.iter(mem).unwrap().next().expect("a chain");
        f(chain)
    }

    #[test]
    fn headers_round_trip_in_little_endian() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            len: 0xAABB_CCDD,
            op: op::CREDIT_REQUEST,
            ..hdr()
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 0x08);
        assert_eq!(&b[24..28], &[0xDD, 0xCC, 0xBB, 0xAA]);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn a_packet_split_anywhere_across_descriptors_is_read_whole() {
        let mem = guest_memory(MEM);
        let mut raw = hdr();
        raw.len = 100;
        let mut bytes = raw.to_bytes().to_vec();
        bytes.extend((0..100u8).collect::<Vec<_>>());
        // Pieces of 10, 40, 94 bytes at scattered addresses.
        let cuts = [
            (0x8000u64, 0usize, 10usize),
            (0x9000, 10, 40),
            (0xA000, 50, 94),
        ];
        for &(addr, from, len) in &cuts {
            mem.write_slice(&bytes[from..from + len], GuestAddress(addr))
                .unwrap();
        }
        let mut payload = Vec::new();
        let got = with_chain(
            &mem,
            |dq| dq.chain(&mem, 0, &cuts.map(|(a, _, l)| (a, l as u32, false))),
            |c| read_tx(&mem, c, &mut payload),
        )
        .unwrap();
        assert_eq!(got, raw);
        assert_eq!(payload, (0..100u8).collect::<Vec<_>>());
    }

    #[test]
    fn bad_tx_chains_are_refused() {
        let mem = guest_memory(MEM);
        let mut buf = Vec::new();
        mem.write_slice(&hdr().to_bytes(), GuestAddress(0x8000))
            .unwrap();
        // Short.
        let e = with_chain(
            &mem,
            |dq| dq.chain(&mem, 0, &[(0x8000, 43, false)]),
            |c| read_tx(&mem, c, &mut buf),
        );
        assert_eq!(e, Err(TxError::ShortHeader(43)));
        // Writable.
        let e = with_chain(
            &mem,
            |dq| dq.chain(&mem, 0, &[(0x8000, 44, true)]),
            |c| read_tx(&mem, c, &mut buf),
        );
        assert!(matches!(e, Err(TxError::WritableDescriptor { .. })));
        // Outside memory.
        let e = with_chain(
            &mem,
            |dq| dq.chain(&mem, 0, &[(MEM as u64 - 20, 44, false)]),
            |c| read_tx(&mem, c, &mut buf),
        );
        assert!(matches!(e, Err(TxError::OutsideMemory { .. })));
        // Too long.
        let mut h = hdr();
        h.len = MAX_PKT_LEN as u32 + 1;
        mem.write_slice(&h.to_bytes(), GuestAddress(0x8000))
            .unwrap();
        let e = with_chain(
            &mem,
            |dq| dq.chain(&mem, 0, &[(0x8000, 44, false)]),
            |c| read_tx(&mem, c, &mut buf),
        );
        assert_eq!(e, Err(TxError::TooLong { hdr: h }));
        // Truncated.
        h.len = 100;
        mem.write_slice(&h.to_bytes(), GuestAddress(0x8000))
            .unwrap();
        let e = with_chain(
            &mem,
            |dq| dq.chain(&mem, 0, &[(0x8000, 44 + 50, false)]),
            |c| read_tx(&mem, c, &mut buf),
        );
        assert_eq!(e, Err(TxError::Truncated { hdr: h, avail: 50 }));
        assert!(buf.is_empty());
        // A non-RW packet's len is ignored.
        h.op = op::SHUTDOWN;
        h.len = u32::MAX;
        mem.write_slice(&h.to_bytes(), GuestAddress(0x8000))
            .unwrap();
        let e = with_chain(
            &mem,
            |dq| dq.chain(&mem, 0, &[(0x8000, 44, false)]),
            |c| read_tx(&mem, c, &mut buf),
        );
        assert_eq!(e, Ok(h));
    }

    #[test]
    fn rx_buffers_are_checked_and_written_across_ranges() {
        let mem = guest_memory(MEM);
        // Through an indirect table: 30 + 100 bytes.
        let buf = with_chain(
            &mem,
            |dq| {
                crate::virtio::test_util::write_desc(&mem, 0x4000, 0, 0x8000, 30, WRITE | NEXT, 1);
                crate::virtio::test_util::write_desc(&mem, 0x4000, 1, 0x9000, 100, WRITE, 0);
                dq.set_desc(&mem, 0, 0x4000, 32, INDIRECT, 0);
                0
            },
            |c| RxBuf::from_chain(&mem, c, HDR_SIZE + 1, HDR_SIZE + MAX_PKT_LEN),
        )
        .unwrap();
        assert_eq!((buf.capacity(), buf.room()), (130, 86));
        let mut h = hdr();
        h.len = 20;
        let payload = [0xABu8; 20];
        assert_eq!(buf.write_packet(&mem, &h, &payload), Ok(64));
        let mut first = [0u8; 30];
        mem.read_slice(&mut first, GuestAddress(0x8000)).unwrap();
        let mut second = [0u8; 34];
        mem.read_slice(&mut second, GuestAddress(0x9000)).unwrap();
        let mut all = first.to_vec();
        all.extend_from_slice(&second);
        assert_eq!(Header::from_bytes(all[..44].try_into().unwrap()), h);
        assert_eq!(&all[44..], &payload);
        assert!(buf.write_packet(&mem, &h, &[0; 87]).is_err(), "too big");

        // Readable, outside memory, too small.
        let e = with_chain(
            &mem,
            |dq| dq.chain(&mem, 0, &[(0x8000, 64, false)]),
            |c| RxBuf::from_chain(&mem, c, 45, 1000),
        );
        assert!(matches!(e, Err((0, RxError::ReadableDescriptor { .. }))));
        let e = with_chain(
            &mem,
            |dq| dq.chain(&mem, 0, &[(MEM as u64 - 8, 64, true)]),
            |c| RxBuf::from_chain(&mem, c, 45, 1000),
        );
        assert!(matches!(e, Err((0, RxError::OutsideMemory { .. }))));
        let e = with_chain(
            &mem,
            |dq| dq.chain(&mem, 0, &[(0x8000, 44, true)]),
            |c| RxBuf::from_chain(&mem, c, 45, 1000),
        );
        assert!(matches!(
            e,
            Err((0, RxError::TooSmall { have: 44, need: 45 }))
        ));
        // Capped at `max`.
        let b = with_chain(
            &mem,
            |dq| dq.chain(&mem, 0, &[(0x8000, 4096, true)]),
            |c| RxBuf::from_chain(&mem, c, 4, 4),
        )
        .unwrap();
        assert_eq!(b.capacity(), 4);
    }
}
