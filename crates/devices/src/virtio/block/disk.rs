//! The disk behind a virtio-blk device: any image through [`BlockDev`] (qcow2, or anything
//! the VMM hands in), and for raw images also the image file itself, so that reads and
//! writes go straight between the file and guest memory (`preadv`/`pwritev`, io_uring)
//! instead of through a bounce buffer.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use block::{BlockDev, Format, OpenOptions, Raw};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::request::{self, Segment, ID_BYTES, SECTOR_SHIFT, SECTOR_SIZE};
use super::{BlockConfig, BlockError, CacheMode, FileIdentity, GuestMemoryMmap};

/// Bytes moved per step when data goes through a bounce buffer (generic images, and
/// O_DIRECT requests whose guest buffers are not aligned).
pub const BOUNCE_SIZE: usize = 1 << 20;
/// Alignment of bounce buffers (enough for O_DIRECT on every filesystem we know).
const BOUNCE_ALIGN: usize = 4096;
/// The most iovecs one `preadv`/`pwritev` call takes (Linux's UIO_MAXIOV).
pub const IOV_MAX: usize = 1024;

/// O_DIRECT alignment requirements of an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectAlign {
    /// Alignment of buffer addresses.
    pub mem: usize,
    /// Alignment of file offsets and lengths.
    pub offset: usize,
}

/// Why a request's I/O failed (logged; the guest sees VIRTIO_BLK_S_IOERR).
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A system call on the image, or the image format, failed.
    #[error(transparent)]
    Block(#[from] block::Error),
    #[error("guest buffer became inaccessible")]
    GuestMemory,
}

/// An image opened for a virtio-blk device.
pub struct Disk {
    path: PathBuf,
    dev: Arc<dyn BlockDev>,
    /// Raw images: the file, for I/O straight to and from guest memory.
    raw: Option<Arc<Raw>>,
    direct: Option<DirectAlign>,
    capacity: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    identity: FileIdentity,
    /// Failed requests so far (for rate-limited logging).
    failures: AtomicU64,
}

/// Failed requests logged as warnings before the log goes quiet (then one in
/// [`FAILURE_LOG_EVERY`]): a guest can make requests fail at will (misaligned O_DIRECT
/// offsets), and must not flood the host log.
const FAILURE_LOG_FIRST: u64 = 10;
const FAILURE_LOG_EVERY: u64 = 10_000;

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("path", &self.path)
            .field("raw", &self.raw.is_some())
            .field("direct", &self.direct)
            .field("capacity", &self.capacity)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// The serial as GET_ID returns it: at most 20 bytes, zero padded.
pub fn serial(path: &Path, id: &str) -> Result<[u8; ID_BYTES], BlockError> {
    let bytes = id.as_bytes();
    if bytes.len() > ID_BYTES {
        return Err(BlockError::IdTooLong {
            path: path.to_owned(),
            id: id.to_owned(),
        });
    }
    let mut out = [0u8; ID_BYTES];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

impl Disk {
    /// Opens the image `cfg` describes, checking everything that can be checked before the
    /// guest runs.
    pub fn open(cfg: &BlockConfig) -> Result<Disk, BlockError> {
        let path = cfg.path.as_path();
        let open_err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        if meta.is_dir() {
            return Err(BlockError::IsDirectory {
                path: path.to_owned(),
            });
        }
        if !meta.is_file() {
            return Err(BlockError::NotAFile {
                path: path.to_owned(),
            });
        }
        let id = serial(path, &cfg.id)?;
        let writable = !cfg.read_only;
        match cfg.format {
            Format::Raw => {
                let raw = Raw::open(path, writable)?;
                let meta = raw.file().metadata().map_err(open_err)?;
                let size = meta.len();
                if size % SECTOR_SIZE != 0 {
                    return Err(BlockError::UnalignedSize {
                        path: path.to_owned(),
                        size,
                    });
                }
                let direct = match cfg.cache {
                    CacheMode::Writeback => None,
                    CacheMode::None => Some(enable_direct(raw.file(), path)?),
                };
                let raw = Arc::new(raw);
                Ok(Disk {
                    path: path.to_owned(),
                    dev: raw.clone(),
                    raw: Some(raw),
                    direct,
                    capacity: size >> SECTOR_SHIFT,
                    read_only: cfg.read_only,
                    id,
                    identity: FileIdentity::of(&meta),
                    failures: AtomicU64::new(0),
                })
            }
            Format::Qcow2 => {
                if cfg.cache == CacheMode::None {
                    return Err(BlockError::CacheNoneNeedsRaw {
                        path: path.to_owned(),
                    });
                }
                let dev = block::open(
                    path,
                    &OpenOptions {
                        writable,
                        format: Some(Format::Qcow2),
                        unsafe_cache: false,
                    },
                )?;
                Disk::from_dev(Arc::from(dev), cfg.read_only, id)
            }
        }
    }

    /// A disk over any block device (I/O through bounce buffers).
    pub fn from_dev(
        dev: Arc<dyn BlockDev>,
        read_only: bool,
        id: [u8; ID_BYTES],
    ) -> Result<Disk, BlockError> {
        let path = dev.path().to_owned();
        let identity = block::file_identity(&path).map_err(|source| BlockError::Open {
            path: path.clone(),
            source,
        })?;
        let size = dev.size();
        if !size.is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(
                "{}: virtual size {size} is not a multiple of 512; the last {} bytes are not visible to the guest",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        Ok(Disk {
            path,
            dev,
            raw: None,
            direct: None,
            capacity: size >> SECTOR_SHIFT,
            read_only,
            id,
            identity,
            failures: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn identity(&self) -> FileIdentity {
        self.identity
    }

    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// The image file descriptor, for raw images (io_uring works on it).
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.raw.as_ref().map(|r| r.file().as_raw_fd())
    }

    /// The image file, for raw images.
    pub fn raw_file(&self) -> Option<&File> {
        self.raw.as_ref().map(|r| r.file())
    }

    /// The logical block size the guest should use (the O_DIRECT offset alignment).
    pub fn blk_size(&self) -> u32 {
        self.direct.map_or(SECTOR_SIZE as u32, |d| {
            d.offset.max(SECTOR_SIZE as usize) as u32
        })
    }

    /// Logs a failed request (the guest sees VIRTIO_BLK_S_IOERR), rate-limited.
    pub fn log_failure(&self, what: &dyn std::fmt::Display) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= FAILURE_LOG_FIRST || n.is_multiple_of(FAILURE_LOG_EVERY) {
            tracing::warn!(
                "{}: request failed ({n} so far): {what}",
                self.path.display()
            );
        } else {
            tracing::debug!("{}: request failed: {what}", self.path.display());
        }
    }

    fn io_err(&self, op: &'static str, offset: u64) -> impl FnOnce(io::Error) -> IoError + '_ {
        move |source| {
            IoError::Block(block::Error::Io {
                path: self.path.clone(),
                op,
                offset,
                source,
            })
        }
    }

    /// The host iovecs for `data` if they can go to the file directly (always without
    /// O_DIRECT; with it, when every buffer is suitably aligned).
    pub fn direct_iovecs(
        &self,
        mem: &GuestMemoryMmap,
        data: &[Segment],
        into_guest: bool,
    ) -> Option<IoVecs> {
        self.raw.as_ref()?;
        let iovs = IoVecs::new(mem, data, into_guest)?;
        match self.direct {
            Some(a) if !iovs.aligned(a) => None,
            _ => Some(iovs),
        }
    }

    /// Reads `len` bytes at `sector` into the guest buffers `data`.
    pub fn read(
        &self,
        mem: &GuestMemoryMmap,
        sector: u64,
        data: &[Segment],
        len: u64,
        bounce: &mut Bounce,
    ) -> Result<(), IoError> {
        let offset = sector << SECTOR_SHIFT;
        if let (Some(raw), Some(mut iovs)) = (&self.raw, self.direct_iovecs(mem, data, true)) {
            return iovs
                .rw_all(raw.file().as_fd(), offset, false)
                .map_err(self.io_err("read", offset));
        }
        let buf = bounce.get();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(BOUNCE_SIZE as u64) as usize;
            let pos = offset + done;
            match &self.raw {
                Some(raw) => {
                    pread_all(raw.file(), &mut buf[..n], pos).map_err(self.io_err("read", pos))?
                }
                None => self.dev.read_at(&mut buf[..n], pos)?,
            }
            if !request::write_stream(mem, data, done as usize, &buf[..n]) {
                return Err(IoError::GuestMemory);
            }
            done += n as u64;
        }
        Ok(())
    }

    /// Writes the `len` bytes of the guest buffers `data` at `sector`.
    pub fn write(
        &self,
        mem: &GuestMemoryMmap,
        sector: u64,
        data: &[Segment],
        len: u64,
        bounce: &mut Bounce,
    ) -> Result<(), IoError> {
        let offset = sector << SECTOR_SHIFT;
        if let (Some(raw), Some(mut iovs)) = (&self.raw, self.direct_iovecs(mem, data, false)) {
            return iovs
                .rw_all(raw.file().as_fd(), offset, true)
                .map_err(self.io_err("write", offset));
        }
        let buf = bounce.get();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(BOUNCE_SIZE as u64) as usize;
            let pos = offset + done;
            if !request::read_stream_at(mem, data, done as usize, &mut buf[..n]) {
                return Err(IoError::GuestMemory);
            }
            // Raw images too: `Raw::write_at` is `pwrite` of the whole buffer.
            self.dev.write_at(&buf[..n], pos)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Makes completed writes durable (fdatasync for raw images).
    pub fn flush(&self) -> Result<(), IoError> {
        Ok(self.dev.flush()?)
    }

    /// Discards `sectors` at `sector` (punches a hole in raw images).
    pub fn discard(&self, sector: u64, sectors: u32) -> Result<(), IoError> {
        Ok(self
            .dev
            .discard(sector << SECTOR_SHIFT, u64::from(sectors) << SECTOR_SHIFT)?)
    }

    /// Zeroes `sectors` at `sector`. Raw images: with `unmap` the range is deallocated (a
    /// hole), without it stays allocated (FALLOC_FL_ZERO_RANGE); when the filesystem can do
    /// neither, zeroes are written.
    pub fn write_zeroes(
        &self,
        sector: u64,
        sectors: u32,
        unmap: bool,
        bounce: &mut Bounce,
    ) -> Result<(), IoError> {
        let offset = sector << SECTOR_SHIFT;
        let len = u64::from(sectors) << SECTOR_SHIFT;
        let Some(raw) = &self.raw else {
            return Ok(self.dev.write_zeroes(offset, len)?);
        };
        if len == 0 {
            return Ok(());
        }
        // FALLOC_FL_KEEP_SIZE (`true`) in both: the image never grows.
        let punched =
            unmap && fallocate(raw.file(), FallocateMode::PunchHole, true, offset, len).is_ok();
        if punched || fallocate(raw.file(), FallocateMode::ZeroRange, true, offset, len).is_ok() {
            return Ok(());
        }
        let buf = bounce.get();
        buf.fill(0);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(BOUNCE_SIZE as u64) as usize;
            let pos = offset + done;
            raw.file()
                .write_all_at(&buf[..n], pos)
                .map_err(self.io_err("write zeroes", pos))?;
            done += n as u64;
        }
        Ok(())
    }
}

fn pread_all(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// Host iovecs over guest buffers, the only way host pointers into guest memory reach the
/// kernel from a virtio-blk device. Sealed: made only by [`IoVecs::new`] from buffers
/// vm-memory resolved inside guest memory, never handed out as iovecs; the kernel gets
/// them from [`IoVecs::rw_all`] (preadv/pwritev) or, through the raw pointer of
/// [`IoVecs::as_ptr`], from the io_uring engine, whose use of it is `unsafe`. It holds a
/// reference on guest memory's regions, so the mappings the iovecs point into live at
/// least as long as it does.
pub struct IoVecs {
    iovs: Vec<libc::iovec>,
    /// Entries before `start` are done (a short transfer resumed past them).
    start: usize,
    /// Keeps the regions the iovecs point into mapped.
    _mem: GuestMemoryMmap,
}

impl std::fmt::Debug for IoVecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoVecs")
            .field("iovecs", &self.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

// SAFETY: the iovecs point into guest memory, which `_mem` keeps mapped wherever the value
// goes and which is shared between threads anyway (the guest writes it concurrently);
// holding the pointers on another thread adds no aliasing the kernel and the guest do not
// already have.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// The host addresses of `segs` (already checked to lie in guest memory); `None` if a
    /// segment cannot be resolved. With `into_guest` (a read: the kernel will write guest
    /// memory behind vm-memory's back) the pages are marked dirty in its bitmap, for diff
    /// snapshots.
    pub fn new(mem: &GuestMemoryMmap, segs: &[Segment], into_guest: bool) -> Option<IoVecs> {
        let mut v = Vec::with_capacity(segs.len());
        for s in segs {
            for slice in mem.get_slices(s.addr, s.len) {
                let slice = slice.ok()?;
                if into_guest {
                    vm_memory::bitmap::Bitmap::mark_dirty(slice.bitmap(), 0, slice.len());
                }
                v.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        Some(IoVecs {
            iovs: v,
            start: 0,
            _mem: mem.clone(),
        })
    }

    fn rest(&self) -> &[libc::iovec] {
        &self.iovs[self.start..]
    }

    /// How many iovecs are left.
    pub fn len(&self) -> usize {
        self.iovs.len() - self.start
    }

    /// Whether no iovec is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes left.
    pub fn bytes(&self) -> usize {
        self.rest().iter().map(|v| v.iov_len).sum()
    }

    /// Whether O_DIRECT accepts these buffers.
    pub fn aligned(&self, a: DirectAlign) -> bool {
        self.rest()
            .iter()
            .all(|v| (v.iov_base as usize).is_multiple_of(a.mem) && v.iov_len % a.offset == 0)
    }

    /// The array of the iovecs left, for an io_uring `readv`/`writev` entry. Using it is
    /// the caller's `unsafe`: it stays valid while `self` lives and is not changed (moving
    /// `self` keeps the array where it is), and the kernel must be done with it before
    /// `self` is dropped.
    pub(crate) fn as_ptr(&self) -> *const libc::iovec {
        self.rest().as_ptr()
    }

    /// Drops the first `n` bytes (the part of a transfer that is done).
    pub fn advance(&mut self, mut n: usize) {
        while self.start < self.iovs.len() {
            let v = &mut self.iovs[self.start];
            if n < v.iov_len {
                // In bounds: `n < iov_len`, so the new base stays inside the same buffer.
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
                v.iov_len -= n;
                return;
            }
            n -= v.iov_len;
            self.start += 1;
        }
    }

    /// `preadv` (`write` false: the kernel fills the buffers) or `pwritev` at `offset` of
    /// `fd` until every byte left is done (short transfers resume where they stopped; end
    /// of file is an error).
    pub fn rw_all(&mut self, fd: BorrowedFd<'_>, offset: u64, write: bool) -> io::Result<()> {
        let mut offset = offset;
        while !self.is_empty() {
            let rest = self.rest();
            let batch = &rest[..rest.len().min(IOV_MAX)];
            let off = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
            // SAFETY: every iovec describes guest memory that vm-memory resolved and
            // bounds-checked in `IoVecs::new` (or an advanced tail of such a buffer), kept
            // mapped by `self._mem`; the count is the slice length; the kernel only reads or
            // writes those bytes.
            let r = unsafe {
                if write {
                    libc::pwritev(
                        fd.as_raw_fd(),
                        batch.as_ptr(),
                        batch.len() as libc::c_int,
                        off,
                    )
                } else {
                    libc::preadv(
                        fd.as_raw_fd(),
                        batch.as_ptr(),
                        batch.len() as libc::c_int,
                        off,
                    )
                }
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.advance(r as usize);
            offset += r as u64;
        }
        Ok(())
    }
}

/// A lazily allocated, aligned buffer of [`BOUNCE_SIZE`] bytes.
#[derive(Debug, Default)]
pub struct Bounce {
    buf: Vec<u8>,
}

impl Bounce {
    /// The buffer (aligned to 4 KiB, so O_DIRECT accepts it).
    pub fn get(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0u8; BOUNCE_SIZE + BOUNCE_ALIGN];
        }
        let off = self.buf.as_ptr().align_offset(BOUNCE_ALIGN);
        &mut self.buf[off..off + BOUNCE_SIZE]
    }
}

/// Turns on O_DIRECT for `file` and finds its alignment requirements.
fn enable_direct(file: &File, path: &Path) -> Result<DirectAlign, BlockError> {
    let fd = file.as_raw_fd();
    let unsupported = |source| BlockError::NoDirectIo {
        path: path.to_owned(),
        source,
    };
    // SAFETY: F_GETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(unsupported(io::Error::last_os_error()));
    }
    // SAFETY: F_SETFL on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) } < 0 {
        return Err(unsupported(io::Error::last_os_error()));
    }
    if let Some(a) = statx_dio_align(fd) {
        if a.offset == 0 || a.mem == 0 {
            return Err(unsupported(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        return Ok(a);
    }
    // Kernels before 6.1: the logical block size; find it by trying aligned reads.
    let mut bounce = Bounce::default();
    let buf = bounce.get();
    for align in [512usize, 1024, 2048, 4096] {
        // SAFETY: `buf` is a live buffer of at least `align` bytes that we own mutably.
        let r = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), align, 0) };
        if r >= 0 {
            return Ok(DirectAlign {
                mem: align,
                offset: align,
            });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(unsupported(e));
        }
    }
    Err(unsupported(io::Error::from_raw_os_error(libc::EINVAL)))
}

/// O_DIRECT alignment as statx(STATX_DIOALIGN) reports it (Linux 6.1+).
fn statx_dio_align(fd: RawFd) -> Option<DirectAlign> {
    // SAFETY: statx is plain old data (integers); all zeroes is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid empty C string (AT_EMPTY_PATH: stat `fd` itself) and
    // `stx` is a live, writable statx buffer.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some(DirectAlign {
        mem: stx.stx_dio_mem_align as usize,
        offset: stx.stx_dio_offset_align as usize,
    })
}
