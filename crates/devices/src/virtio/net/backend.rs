//! What a virtio-net device sends frames to and receives them from, and the guest buffers
//! one frame occupies.
//!
//! [`FrameBufs`] is the only place where host pointers into guest memory are made: from
//! slices that vm-memory resolved and bounds-checked, never handed out, only passed to the
//! kernel by its own safe methods (`readv`, `writev`, `recvmsg`, `sendmsg`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::virtio::GuestMemoryMmap;

/// The most host buffers one frame may occupy (Linux's `UIO_MAXIOV`).
pub const MAX_IOVECS: usize = 1024;

/// A host-contiguous piece of a guest buffer, checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) addr: GuestAddress,
    pub(crate) len: usize,
}

/// What [`NetBackend::recv`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// One whole frame of this many bytes is at the start of the buffers. A datagram
    /// backend may report more bytes than the buffers hold (the kernel truncated the frame
    /// to fit): the device drops such a frame.
    Frame(usize),
    /// Part of a frame is in the buffers; the rest has not arrived. Call again, when the
    /// descriptor is readable, with the *same* buffers (a stream backend continues where it
    /// stopped).
    Partial,
    /// A frame arrived that did not fit the buffers and was discarded.
    Dropped,
    /// The peer is gone (end of file); nothing more will arrive.
    Closed,
}

/// A host network endpoint for one queue pair: a tap queue, a stream socket to passt, or
/// a test double. The device calls it from its worker thread only.
///
/// Descriptors are non-blocking: "nothing to read" and "cannot take a frame now" are
/// `Err` of kind [`io::ErrorKind::WouldBlock`], after which the device waits (epoll) on
/// [`NetBackend::fd`].
pub trait NetBackend: Send + 'static {
    /// The descriptor to wait on: readable when a frame can be received, writable when a
    /// send that would have blocked can be retried.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Whether frames carry a 12-byte `virtio_net_hdr_v1` in front (a tap opened with
    /// `IFF_VNET_HDR`). Without one the device writes a zeroed header on receive and drops
    /// the guest's on transmit, and offers the guest no offloads.
    fn has_vnet_hdr(&self) -> bool;

    /// Receives one frame into `frame` (header included when [`NetBackend::has_vnet_hdr`]),
    /// or `Err(WouldBlock)` when none is waiting.
    fn recv(&mut self, frame: &mut FrameBufs<'_>) -> io::Result<Recv>;

    /// Sends the frame in `frame` (header included when [`NetBackend::has_vnet_hdr`]). It
    /// is taken whole or not at all: `Err(WouldBlock)` means nothing was taken and the
    /// device retries the same frame when [`NetBackend::fd`] is writable. A backend that
    /// took a frame it could only partly write keeps the rest and writes it first.
    fn send(&mut self, frame: &mut FrameBufs<'_>) -> io::Result<()>;

    /// Writes out what an earlier [`NetBackend::send`] kept; `Err(WouldBlock)` while some
    /// is left (the device waits for writability and calls again).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The buffers of a [`Recv::Partial`] frame were taken away (device reset): the rest
    /// of that frame must be discarded when it arrives.
    fn abandon_partial(&mut self) {}

    /// Tells the host side which offloads (`TUN_F_*`) the guest can receive. A no-op for
    /// backends without a vnet header.
    fn set_offload(&self, tun_flags: u32) -> io::Result<()>;

    /// The guest uses (`true`) or stops using this queue pair (multi-queue taps detach the
    /// queue, so the kernel stops steering frames to it).
    fn set_queue_enabled(&self, enabled: bool) -> io::Result<()> {
        let _ = enabled;
        Ok(())
    }

    /// A name for logs ("tap0", "passt").
    fn name(&self) -> &str {
        "net backend"
    }
}

/// The guest buffers of one frame, in order, as host memory the kernel can read or write.
/// Made by the device from descriptor chains whose every byte vm-memory resolved inside
/// guest memory; a backend only passes it to its descriptor.
pub struct FrameBufs<'a> {
    mem: &'a GuestMemoryMmap,
    segs: Vec<Segment>,
    iovs: Vec<libc::iovec>,
    len: usize,
}

impl std::fmt::Debug for FrameBufs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameBufs")
            .field("segments", &self.segs.len())
            .field("len", &self.len)
            .finish()
    }
}

/// Why guest buffers cannot become a [`FrameBufs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BufsError {
    #[error("a buffer at {0:#x} is not in guest memory")]
    NotInMemory(u64),
    #[error("more than {MAX_IOVECS} host buffers")]
    TooMany,
}

fn cvt(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

impl<'a> FrameBufs<'a> {
    /// The buffers `segs` (each host-contiguous, checked against `mem`) without their
    /// first `skip` bytes. With `into_guest` (receive buffers: the kernel will write them
    /// behind vm-memory's back) their pages are marked dirty in vm-memory's bitmap, for
    /// diff snapshots.
    pub(crate) fn new(
        mem: &'a GuestMemoryMmap,
        segs: &[Segment],
        mut skip: usize,
        into_guest: bool,
    ) -> Result<FrameBufs<'a>, BufsError> {
        if segs.len() > MAX_IOVECS {
            return Err(BufsError::TooMany);
        }
        let mut out = FrameBufs {
            mem,
            segs: Vec::with_capacity(segs.len()),
            iovs: Vec::with_capacity(segs.len()),
            len: 0,
        };
        for s in segs {
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            let (addr, len) = (s.addr.unchecked_add(skip as u64), s.len - skip);
            skip = 0;
            let slice = mem
                .get_slice(addr, len)
                .map_err(|_| BufsError::NotInMemory(addr.raw_value()))?;
            if into_guest {
                vm_memory::bitmap::Bitmap::mark_dirty(slice.bitmap(), 0, slice.len());
            }
            out.iovs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
            out.segs.push(Segment { addr, len });
            out.len += len;
        }
        Ok(out)
    }

    /// Bytes the buffers hold.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether they hold none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs `f` on the iovecs of bytes `start..start + max` (clamped to the buffers).
    fn window<R>(&self, start: usize, max: usize, f: impl FnOnce(&[libc::iovec]) -> R) -> R {
        let end = start.saturating_add(max).min(self.len);
        if start == 0 && end == self.len {
            return f(&self.iovs);
        }
        let mut v = Vec::new();
        let mut pos = 0usize;
        for iov in &self.iovs {
            let (a, b) = (pos, pos + iov.iov_len);
            pos = b;
            let (from, to) = (a.max(start), b.min(end));
            if from >= to {
                continue;
            }
            v.push(libc::iovec {
                // In bounds: `from - a < to - a <= iov_len`.
                iov_base: iov.iov_base.cast::<u8>().wrapping_add(from - a).cast(),
                iov_len: to - from,
            });
        }
        f(&v)
    }

    /// `readv` from `fd` into bytes `start..start + max` of the buffers.
    pub fn read_from(&mut self, fd: BorrowedFd<'_>, start: usize, max: usize) -> io::Result<usize> {
        loop {
            let r = self.window(start, max, |iovs| {
                // SAFETY: every iovec lies inside a guest memory slice that vm-memory resolved
                // and that stays mapped while `self.mem` is borrowed; the count is the slice
                // length; the kernel writes at most those bytes.
                unsafe { libc::readv(fd.as_raw_fd(), iovs.as_ptr(), iovs.len() as libc::c_int) }
            });
            match cvt(r) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// `recvmsg` from `fd` into all the buffers with `flags` (e.g. `MSG_TRUNC`, which makes
    /// a datagram socket return the datagram's real length).
    pub fn recv_from(&mut self, fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<usize> {
        loop {
            // SAFETY: msghdr is plain data; all zeroes (no name, no control data) is valid.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = self.iovs.as_ptr().cast_mut();
            msg.msg_iovlen = self.iovs.len() as _;
            // SAFETY: the iovecs lie inside guest memory slices resolved by vm-memory and
            // mapped while `self.mem` is borrowed; `msg` names no other buffers.
            let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
            match cvt(r) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// `writev` of bytes `start..` of the buffers to `fd`.
    pub fn write_to(&self, fd: BorrowedFd<'_>, start: usize) -> io::Result<usize> {
        loop {
            let r = self.window(start, usize::MAX, |iovs| {
                // SAFETY: as in `read_from`; the kernel only reads the buffers.
                unsafe { libc::writev(fd.as_raw_fd(), iovs.as_ptr(), iovs.len() as libc::c_int) }
            });
            match cvt(r) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// `sendmsg` of `prefix` followed by bytes `start..` of the buffers to `fd`, with
    /// `flags` (`MSG_NOSIGNAL` is always added: a gone peer is an error, not a signal).
    pub fn send_to(
        &self,
        fd: BorrowedFd<'_>,
        prefix: &[u8],
        start: usize,
        flags: libc::c_int,
    ) -> io::Result<usize> {
        loop {
            let r = self.window(start, usize::MAX, |iovs| {
                let mut all = Vec::with_capacity(iovs.len() + 1);
                if !prefix.is_empty() {
                    all.push(libc::iovec {
                        iov_base: prefix.as_ptr().cast_mut().cast(),
                        iov_len: prefix.len(),
                    });
                }
                all.extend_from_slice(iovs);
                // SAFETY: msghdr is plain data; all zeroes is valid.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = all.as_mut_ptr();
                msg.msg_iovlen = all.len() as _;
                // SAFETY: the first iovec (if any) is `prefix`, borrowed for the call; the
                // others lie inside guest memory slices resolved by vm-memory; the kernel
                // only reads them.
                unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags | libc::MSG_NOSIGNAL) }
            });
            match cvt(r) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Appends bytes `start..` of the buffers to `out` (what a stream backend keeps of a
    /// frame it could only partly write). False if guest memory could not be read.
    pub fn copy_to_vec(&self, start: usize, out: &mut Vec<u8>) -> bool {
        let mut pos = 0usize;
        for s in &self.segs {
            let (a, b) = (pos, pos + s.len);
            pos = b;
            if b <= start {
                continue;
            }
            let from = start.max(a);
            let n = b - from;
            let at = out.len();
            out.resize(at + n, 0);
            let addr = s.addr.unchecked_add((from - a) as u64);
            if self.mem.read_slice(&mut out[at..], addr).is_err() {
                out.truncate(at);
                return false;
            }
        }
        true
    }
}

/// Writes `data` at byte `offset` of the buffers `segs`; false if they are too short or
/// not in guest memory.
pub(crate) fn write_at(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    offset: usize,
    data: &[u8],
) -> bool {
    let mut pos = 0usize;
    let mut done = 0usize;
    for s in segs {
        if done == data.len() {
            break;
        }
        let (a, b) = (pos, pos + s.len);
        pos = b;
        let at = offset + done;
        if b <= at {
            continue;
        }
        let n = (b - at).min(data.len() - done);
        let addr = s.addr.unchecked_add((at - a) as u64);
        if mem.write_slice(&data[done..done + n], addr).is_err() {
            return false;
        }
        done += n;
    }
    done == data.len()
}

/// Splits the guest buffer `addr..addr + len` into host-contiguous [`Segment`]s appended
/// to `out`; false if any byte is outside guest memory.
pub(crate) fn push_segments(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
    out: &mut Vec<Segment>,
) -> bool {
    if !mem.check_range(addr, len) {
        return false;
    }
    let mut at = addr;
    for slice in mem.get_slices(addr, len) {
        let Ok(slice) = slice else {
            return false;
        };
        out.push(Segment {
            addr: at,
            len: slice.len(),
        });
        at = at.unchecked_add(slice.len() as u64);
    }
    true
}
