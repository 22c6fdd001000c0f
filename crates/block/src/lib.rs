//! Disk images behind one trait: [`BlockDev`], with [`raw::Raw`] and [`qcow2::Qcow2`]
//! implementations, backing chains, and the engine under `ferrovm img`.
//!
//! # Concurrency model
//!
//! Every method takes `&self`; implementations are `Send + Sync` and serialize requests with
//! an internal mutex (qcow2 holds its metadata lock for the duration of one request). A
//! virtio-blk worker thread can therefore own an `Arc<dyn BlockDev>` and call it directly.
//!
//! # Durability model
//!
//! Like a disk with a volatile write cache: a completed `write_at` is visible to later reads,
//! but is only guaranteed to survive a crash after `flush` returned. Metadata is written in
//! an order that keeps the image consistent at every instant (a crash can leak clusters,
//! never corrupt the image).

pub mod qcow2;
pub mod raw;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use qcow2::Qcow2;
pub use raw::Raw;

/// Maximum depth of a backing chain (protects against pathological chains).
pub const MAX_BACKING_DEPTH: usize = 64;

/// Errors of the block layer. Every message names the file and, where it applies, the offset.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O system call failed.
    #[error("{}: {op} at offset {offset:#x} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// Opening or creating a file failed.
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The image metadata is inconsistent or hostile.
    #[error("{}: corrupt image (offset {offset:#x}): {msg}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        msg: String,
    },
    /// The image uses a feature this implementation does not support.
    #[error("{}: unsupported: {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },
    /// A request lies outside the virtual disk.
    #[error("{}: request of {len} bytes at offset {offset:#x} exceeds the virtual size {size}", path.display())]
    OutOfRange {
        path: PathBuf,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// A write to an image opened read-only.
    #[error("{}: image is opened read-only", path.display())]
    ReadOnly { path: PathBuf },
    /// Invalid parameters (create options, sizes...).
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    /// A problem with the backing chain (loop, too deep, missing file).
    #[error("{}: backing chain: {msg}", path.display())]
    Backing { path: PathBuf, msg: String },
}

/// Result type of the block layer.
pub type Result<T> = std::result::Result<T, Error>;

/// Image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    /// The name used on the command line and in headers ("raw", "qcow2").
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Parses a format name.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }
}

/// Allocation status of a range in one layer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Data stored in this layer.
    Data,
    /// Reads as zeroes, decided by this layer.
    Zero,
    /// Not allocated in this layer: reads come from the backing file (or zeroes).
    Unallocated,
}

/// One run of equal allocation status, as reported by [`BlockDev::block_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length of the run in bytes (> 0).
    pub len: u64,
    pub status: Status,
    /// Host offset of the start of the run when the data is stored uncompressed, contiguous.
    pub host_offset: Option<u64>,
    /// Data is stored compressed.
    pub compressed: bool,
}

/// Format-specific facts for `img info`.
#[derive(Debug, Clone, Default)]
pub struct Qcow2Info {
    pub version: u32,
    pub compression_type: &'static str,
    pub lazy_refcounts: bool,
    pub refcount_bits: u32,
    pub corrupt: bool,
    pub dirty: bool,
    pub extended_l2: bool,
}

/// What `img info` prints about an image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub format: Format,
    pub virtual_size: u64,
    pub cluster_size: Option<u64>,
    /// Backing file name as stored in the image.
    pub backing_file: Option<String>,
    /// Backing file path resolved against the image's directory.
    pub full_backing_file: Option<PathBuf>,
    pub backing_format: Option<String>,
    pub qcow2: Option<Qcow2Info>,
}

/// A disk image. See the crate documentation for the concurrency and durability models.
pub trait BlockDev: Send + Sync {
    /// Path of the image file.
    fn path(&self) -> &Path;
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset`; the range must lie inside the virtual disk.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes `buf` at `offset`; the range must lie inside the virtual disk.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Hints that the range is no longer needed. Afterwards it reads as zeroes or keeps its
    /// old contents (the device decides per cluster); never exposes backing data that was
    /// overwritten.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
    /// Makes the range read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;
    /// Allocation status of the run starting at `offset` (at most `len` bytes), in this layer
    /// only. Use [`map_chain`] to follow the backing chain.
    fn block_status(&self, offset: u64, len: u64) -> Result<Extent>;
    /// The backing image, if any.
    fn backing(&self) -> Option<&dyn BlockDev>;
    /// Facts for `img info`.
    fn info(&self) -> ImageInfo;
    /// Changes the virtual size.
    fn resize(&self, new_size: u64) -> Result<()>;
}

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Open read-write (the backing chain is always read-only).
    pub writable: bool,
    /// Format; probed from the file's first bytes when `None`.
    pub format: Option<Format>,
    /// QEMU's `cache=unsafe`: `flush` writes metadata back in the usual order but skips
    /// fdatasync (for `img convert`, whose output is worthless after a crash anyway).
    pub unsafe_cache: bool,
}

/// Opens an image file for reading, and for writing if `writable`.
pub(crate) fn open_file(path: &Path, writable: bool) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })
}

/// Guesses the format of a file from its magic bytes.
pub fn probe(path: &Path) -> Result<Format> {
    let file = open_file(path, false)?;
    let mut magic = [0u8; 4];
    let n = read_full(&file, &mut magic, 0).map_err(|source| Error::Io {
        path: path.to_owned(),
        op: "read",
        offset: 0,
        source,
    })?;
    Ok(if n == 4 && magic == qcow2::MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// Opens an image (and its backing chain).
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Box<dyn BlockDev>> {
    open_in_chain(path, opts, &mut Vec::new())
}

/// A file's (device, inode): the same file however it is named (links, `..` paths,
/// `/proc/self/fd/N` of a deleted file). Backing-chain loops and one image attached twice
/// are recognised by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
}

impl FileIdentity {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The [`FileIdentity`] of the file at `path` (symbolic links followed).
pub fn file_identity(path: &Path) -> io::Result<FileIdentity> {
    std::fs::metadata(path).map(|m| FileIdentity::of(&m))
}

/// [`file_identity`] for a backing chain, as a block error.
pub(crate) fn chain_key(path: &Path) -> Result<FileIdentity> {
    file_identity(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })
}

/// Opens one member of a chain; `chain` holds the files above it (loop detection).
pub(crate) fn open_in_chain(
    path: &Path,
    opts: &OpenOptions,
    chain: &mut Vec<FileIdentity>,
) -> Result<Box<dyn BlockDev>> {
    let key = chain_key(path)?;
    if chain.contains(&key) {
        return Err(Error::Backing {
            path: path.to_owned(),
            msg: format!("loop: {} is its own backing file", path.display()),
        });
    }
    if chain.len() >= MAX_BACKING_DEPTH {
        return Err(Error::Backing {
            path: path.to_owned(),
            msg: format!("chain deeper than {MAX_BACKING_DEPTH} images"),
        });
    }
    let format = match opts.format {
        Some(f) => f,
        None => probe(path)?,
    };
    chain.push(key);
    let dev: Box<dyn BlockDev> = match format {
        Format::Raw => {
            Box::new(Raw::open(path, opts.writable)?.with_unsafe_cache(opts.unsafe_cache))
        }
        Format::Qcow2 => Box::new(Qcow2::open_chain(
            path,
            opts.writable,
            opts.unsafe_cache,
            chain,
        )?),
    };
    chain.pop();
    Ok(dev)
}

/// One entry of an allocation map following the backing chain (as `qemu-img map`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    /// Index in the chain of the layer that decided the contents (0 = top).
    pub depth: u32,
    /// Some layer of the chain allocated the range (data or zero).
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    /// Host offset in `file` when the data is stored uncompressed.
    pub offset: Option<u64>,
    /// File holding the data.
    pub file: PathBuf,
}

/// Status of the run at `offset` (at most `len` bytes), following the backing chain.
pub fn map_chain(dev: &dyn BlockDev, offset: u64, len: u64) -> Result<MapEntry> {
    let mut layer = dev;
    let mut depth = 0u32;
    let mut len = len;
    loop {
        let ext = layer.block_status(offset, len)?;
        len = len.min(ext.len);
        match ext.status {
            Status::Data | Status::Zero => {
                let data = ext.status == Status::Data;
                return Ok(MapEntry {
                    start: offset,
                    length: len,
                    depth,
                    present: true,
                    zero: !data,
                    data,
                    compressed: ext.compressed,
                    offset: if data { ext.host_offset } else { None },
                    file: layer.path().to_owned(),
                });
            }
            Status::Unallocated => {
                let next = layer.backing().filter(|b| offset < b.size());
                match next {
                    Some(b) => {
                        len = len.min(b.size() - offset);
                        layer = b;
                        depth += 1;
                    }
                    None => {
                        return Ok(MapEntry {
                            start: offset,
                            length: len,
                            depth,
                            present: false,
                            zero: true,
                            data: false,
                            compressed: false,
                            offset: None,
                            file: layer.path().to_owned(),
                        })
                    }
                }
            }
        }
    }
}

/// Whole-image allocation map following the chain, with adjacent equal entries merged.
pub fn map_all(dev: &dyn BlockDev) -> Result<Vec<MapEntry>> {
    let mut out: Vec<MapEntry> = Vec::new();
    let size = dev.size();
    let mut pos = 0;
    while pos < size {
        let e = map_chain(dev, pos, size - pos)?;
        pos += e.length;
        if let Some(last) = out.last_mut() {
            let contiguous = match (last.offset, e.offset) {
                (Some(a), Some(b)) => a + last.length == b,
                (None, None) => true,
                _ => false,
            };
            if last.depth == e.depth
                && last.present == e.present
                && last.zero == e.zero
                && last.data == e.data
                && last.compressed == e.compressed
                && last.file == e.file
                && contiguous
            {
                last.length += e.length;
                continue;
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// Reads up to `buf.len()` bytes at `offset`, stopping early only at end of file. Returns the
/// number of bytes read.
pub(crate) fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// True if every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    let chunks = buf.chunks_exact(16);
    let rem = chunks.remainder();
    rem.iter().all(|&b| b == 0)
        && chunks
            .into_iter()
            .all(|c| <[u8; 16]>::try_from(c).is_ok_and(|a| u128::from_ne_bytes(a) == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_detects_nonzero_anywhere() {
        let mut v = vec![0u8; 100];
        assert!(is_zero(&v));
        for i in 0..100 {
            v[i] = 1;
            assert!(!is_zero(&v), "byte {i}");
            v[i] = 0;
        }
        assert!(is_zero(&[]));
    }
}
