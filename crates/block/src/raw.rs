//! Raw images: the file is the disk.

use crate::{read_full, BlockDev, Error, Extent, Format, ImageInfo, Result, Status};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};
use vmm_sys_util::seek_hole::SeekHole;

/// A raw image file.
#[derive(Debug)]
pub struct Raw {
    file: File,
    path: PathBuf,
    size: AtomicU64,
    writable: bool,
    unsafe_cache: bool,
}

impl Raw {
    /// Opens a raw image.
    pub fn open(path: &Path, writable: bool) -> Result<Raw> {
        let file = crate::open_file(path, writable)?;
        let size = file
            .metadata()
            .map_err(|source| Error::Io {
                path: path.to_owned(),
                op: "stat",
                offset: 0,
                source,
            })?
            .len();
        Ok(Raw {
            file,
            path: path.to_owned(),
            size: AtomicU64::new(size),
            writable,
            unsafe_cache: false,
        })
    }

    /// The open image file, for callers that do their own I/O on it (a virtio-blk device
    /// reading straight into guest memory, io_uring). Requests must stay inside
    /// [`BlockDev::size`] and, unless the image is writable, be reads.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// QEMU's `cache=unsafe`: `flush` does nothing.
    pub fn with_unsafe_cache(mut self, unsafe_cache: bool) -> Raw {
        self.unsafe_cache = unsafe_cache;
        self
    }

    /// Creates (truncates) a raw image of `size` bytes (sparse).
    pub fn create(path: &Path, size: u64) -> Result<()> {
        let file = File::create(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        file.set_len(size).map_err(|source| Error::Io {
            path: path.to_owned(),
            op: "truncate",
            offset: size,
            source,
        })
    }

    fn io_err(&self, op: &'static str, offset: u64) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: self.path.clone(),
            op,
            offset,
            source,
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange {
                path: self.path.clone(),
                offset,
                len,
                size,
            });
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly {
                path: self.path.clone(),
            })
        }
    }

    /// vmm-sys-util's `SEEK_DATA` (`hole`: `SEEK_HOLE`) from `offset`; `None` when there
    /// is none after it (ENXIO), the call is not supported or fails. The seek moves the
    /// file offset, which nothing here uses (all I/O is positioned), on a duplicate
    /// descriptor because the trait wants a `&mut File`.
    fn seek(&self, offset: u64, hole: bool) -> Option<u64> {
        let mut f = self.file.try_clone().ok()?;
        let r = if hole {
            f.seek_hole(offset)
        } else {
            f.seek_data(offset)
        };
        r.ok().flatten()
    }

    /// Punches a hole (the size stays) with vmm-sys-util's `fallocate`; false when the
    /// call failed (e.g. unsupported by the filesystem).
    fn punch_hole(&self, offset: u64, len: u64) -> bool {
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len).is_ok()
    }
}

impl BlockDev for Raw {
    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let n = read_full(&self.file, buf, offset).map_err(self.io_err("read", offset))?;
        // The file may have shrunk under us: read the missing tail as zeroes.
        buf[n..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(self.io_err("write", offset))
    }

    fn flush(&self) -> Result<()> {
        if !self.writable || self.unsafe_cache {
            return Ok(());
        }
        self.file.sync_data().map_err(self.io_err("fsync", 0))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        // Advisory: punching a hole reads back as zeroes; failure is not an error.
        self.punch_hole(offset, len);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 || self.punch_hole(offset, len) {
            return Ok(());
        }
        let chunk = vec![0u8; len.min(1 << 20) as usize];
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(chunk.len() as u64) as usize;
            self.write_at(&chunk[..n], offset + pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Extent> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Extent {
                len: 0,
                status: Status::Zero,
                host_offset: None,
                compressed: false,
            });
        }
        let data = |len| Extent {
            len,
            status: Status::Data,
            host_offset: Some(offset),
            compressed: false,
        };
        let Some(next_data) = self.seek(offset, false) else {
            // ENXIO: no data after offset (or no SEEK_DATA support: report data).
            let end = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            if offset >= end || self.seek(0, true).is_some() {
                return Ok(Extent {
                    len,
                    status: Status::Zero,
                    host_offset: None,
                    compressed: false,
                });
            }
            return Ok(data(len));
        };
        if next_data > offset {
            let n = (next_data - offset).min(len);
            return Ok(Extent {
                len: n,
                status: Status::Zero,
                host_offset: None,
                compressed: false,
            });
        }
        let hole = self.seek(offset, true).unwrap_or(offset + len);
        Ok(data((hole.saturating_sub(offset)).clamp(1, len)))
    }

    fn backing(&self) -> Option<&dyn BlockDev> {
        None
    }

    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: Format::Raw,
            virtual_size: self.size(),
            cluster_size: None,
            backing_file: None,
            full_backing_file: None,
            backing_format: None,
            qcow2: None,
        }
    }

    fn resize(&self, new_size: u64) -> Result<()> {
        self.check_writable()?;
        self.file
            .set_len(new_size)
            .map_err(self.io_err("truncate", new_size))?;
        self.size.store(new_size, Ordering::Relaxed);
        Ok(())
    }
}
