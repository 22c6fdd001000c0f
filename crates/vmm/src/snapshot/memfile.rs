//! The guest-memory file of a snapshot: every RAM region, in guest-address order, one after
//! the other. It is written sparse (zero pages are holes) and, on restore, mapped
//! `MAP_PRIVATE`, so restoring costs nothing per page until the guest touches it, and many
//! clones of one snapshot share the page cache.
//!
//! A diff file has the size of a full one but holds only the pages written since the last
//! snapshot (zero or not, written out); [`merge`] copies them over a full file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::memory::GuestMem;

/// Pages are 4 KiB.
pub const PAGE: usize = 4096;
/// How much is read from guest memory at a time.
const CHUNK: usize = 2 << 20;

/// What a write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// Bytes of guest memory.
    pub total: u64,
    /// Bytes written into the file (the rest are holes).
    pub written: u64,
}

/// Why the memory file could not be written, read or merged.
#[derive(Debug, thiserror::Error)]
pub enum MemFileError {
    /// A file operation.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The step.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading guest memory.
    #[error("cannot read guest memory at {addr:#x}: {message}")]
    Guest {
        /// Guest address.
        addr: u64,
        /// The cause.
        message: String,
    },
    /// Files of different sizes.
    #[error("{} is {have} bytes but {} is {want}: not the same guest", a.display(), b.display())]
    SizeMismatch {
        /// The first file.
        a: std::path::PathBuf,
        /// Its size.
        have: u64,
        /// The second file.
        b: std::path::PathBuf,
        /// Its size.
        want: u64,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MemFileError + 'a {
    move |source| MemFileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Total bytes of guest memory.
pub fn total_size(mem: &GuestMem) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Pages of `[host, host + len)` the process has never touched (anonymous memory reads as
/// zero there), one flag per 4 KiB page; `None` if the kernel cannot tell.
fn untouched_pages(host: *mut u8, len: usize) -> Option<Vec<bool>> {
    let pages = len.div_ceil(PAGE);
    let mut vec = vec![0u8; pages];
    // SAFETY: mincore only reads the page tables of [host, host + len), a live mapping of
    // guest memory, and writes one byte per page into `vec`, which has that many.
    let r = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
    (r == 0).then(|| vec.iter().map(|b| b & 1 == 0).collect())
}

/// Writes the whole of `mem` into `path`, leaving holes for zero pages. With `anonymous`
/// (memory not mapped from a file), pages never touched are skipped without reading them.
pub fn write_full(
    mem: &GuestMem,
    path: &Path,
    anonymous: bool,
) -> Result<WriteStats, MemFileError> {
    let (file, tmp) = create(path, total_size(mem))?;
    let r = (|| -> Result<WriteStats, MemFileError> {
        let mut stats = WriteStats {
            total: total_size(mem),
            written: 0,
        };
        let mut buf = vec![0u8; CHUNK];
        let mut file_off = 0u64;
        for region in mem.iter() {
            let len = region.len() as usize;
            let untouched = if anonymous {
                region
                    .get_host_address(MemoryRegionAddress(0))
                    .ok()
                    .and_then(|h| untouched_pages(h, len))
            } else {
                None
            };
            let mut off = 0usize;
            while off < len {
                let n = CHUNK.min(len - off);
                let first_page = off / PAGE;
                let skip_all = untouched
                    .as_ref()
                    .is_some_and(|u| u[first_page..(off + n).div_ceil(PAGE)].iter().all(|&x| x));
                if !skip_all {
                    let addr = region.start_addr().unchecked_add(off as u64);
                    mem.read_slice(&mut buf[..n], addr)
                        .map_err(|e| MemFileError::Guest {
                            addr: addr.raw_value(),
                            message: e.to_string(),
                        })?;
                    stats.written +=
                        write_nonzero_pages(&file, &tmp, &buf[..n], file_off + off as u64)?;
                }
                off += n;
            }
            file_off += len as u64;
        }
        Ok(stats)
    })();
    finish(r, file, &tmp, path)
}

/// Writes the runs of non-zero pages of `data` (file offset `at`); returns the bytes
/// written.
fn write_nonzero_pages(
    file: &File,
    path: &Path,
    data: &[u8],
    at: u64,
) -> Result<u64, MemFileError> {
    let mut written = 0;
    let mut run: Option<usize> = None;
    let pages = data.len().div_ceil(PAGE);
    for p in 0..=pages {
        let nonzero = p < pages && {
            let page = &data[p * PAGE..((p + 1) * PAGE).min(data.len())];
            page.iter().any(|&b| b != 0)
        };
        match (nonzero, run) {
            (true, None) => run = Some(p),
            (false, Some(start)) => {
                let bytes = &data[start * PAGE..(p * PAGE).min(data.len())];
                file.write_all_at(bytes, at + (start * PAGE) as u64)
                    .map_err(io("writing", path))?;
                written += bytes.len() as u64;
                run = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// A new file of `size` bytes under a temporary name next to `path`; [`finish`] renames it
/// onto `path`. Never truncated in place: a VM restored from `path` maps that file
/// `MAP_PRIVATE`, and its untouched pages would read zeros (or fault) if it shrank.
fn create(path: &Path, size: u64) -> Result<(File, std::path::PathBuf), MemFileError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    file.set_len(size).map_err(io("sizing", &tmp))?;
    Ok((file, tmp))
}

/// After writing the file [`create`] made (`written`: how that went), syncs it and renames
/// it onto `path`; on any failure it is removed.
fn finish<T>(
    written: Result<T, MemFileError>,
    file: File,
    tmp: &Path,
    path: &Path,
) -> Result<T, MemFileError> {
    let r = written.and_then(|v| {
        file.sync_data().map_err(io("syncing", tmp))?;
        std::fs::rename(tmp, path).map_err(io("renaming into place", path))?;
        Ok(v)
    });
    if r.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    r
}

/// Writes into `path` (a file the size of the guest's memory, holes elsewhere) the pages
/// of `mem` that `dirty` marks: one bitmap per region, bit `i` for page `i` (KVM's dirty
/// log layout). Zero pages that changed are written too, so a merge copies them.
pub fn write_diff(
    mem: &GuestMem,
    path: &Path,
    dirty: &[Vec<u64>],
) -> Result<WriteStats, MemFileError> {
    let (file, tmp) = create(path, total_size(mem))?;
    let r = (|| -> Result<WriteStats, MemFileError> {
        let mut stats = WriteStats {
            total: total_size(mem),
            written: 0,
        };
        let mut page = vec![0u8; PAGE];
        let mut file_off = 0u64;
        for (region, bitmap) in mem.iter().zip(dirty) {
            let pages = region.len() as usize / PAGE;
            for p in 0..pages {
                let set = bitmap.get(p / 64).is_some_and(|w| w >> (p % 64) & 1 == 1);
                if !set {
                    continue;
                }
                let addr = region.start_addr().unchecked_add((p * PAGE) as u64);
                mem.read_slice(&mut page, addr)
                    .map_err(|e| MemFileError::Guest {
                        addr: addr.raw_value(),
                        message: e.to_string(),
                    })?;
                file.write_all_at(&page, file_off + (p * PAGE) as u64)
                    .map_err(io("writing", &tmp))?;
                stats.written += PAGE as u64;
            }
            file_off += region.len();
        }
        Ok(stats)
    })();
    finish(r, file, &tmp, path)
}

/// The data extents of `file` (vmm-sys-util's `SEEK_DATA`/`SEEK_HOLE`, on a duplicate
/// descriptor: the seeks move the file offset, which nothing here relies on).
fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use vmm_sys_util::seek_hole::SeekHole;
    let mut f = file.try_clone()?;
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let Some(start) = f.seek_data(pos)? else {
            break; // no data after pos
        };
        // Past the last data there is always the hole at the end of the file.
        let end = f.seek_hole(start)?.unwrap_or(size).max(start);
        out.push((start, end - start));
        if end == start {
            break;
        }
        pos = end;
    }
    Ok(out)
}

/// Copies the data of the diff file `diff` over the full file `base`, which then restores
/// the state the diff was taken in. Returns the bytes copied.
pub fn merge(base: &Path, diff: &Path) -> Result<u64, MemFileError> {
    let b = OpenOptions::new()
        .read(true)
        .write(true)
        .open(base)
        .map_err(io("opening", base))?;
    let d = File::open(diff).map_err(io("opening", diff))?;
    let (bs, ds) = (
        b.metadata().map_err(io("inspecting", base))?.len(),
        d.metadata().map_err(io("inspecting", diff))?.len(),
    );
    if bs != ds {
        return Err(MemFileError::SizeMismatch {
            a: diff.to_path_buf(),
            have: ds,
            b: base.to_path_buf(),
            want: bs,
        });
    }
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0;
    for (start, len) in data_extents(&d, ds).map_err(io("reading the extents of", diff))? {
        let mut off = 0;
        while off < len {
            let n = (CHUNK as u64).min(len - off) as usize;
            d.read_exact_at(&mut buf[..n], start + off)
                .map_err(io("reading", diff))?;
            b.write_all_at(&buf[..n], start + off)
                .map_err(io("writing", base))?;
            off += n as u64;
            copied += n as u64;
        }
    }
    b.sync_data().map_err(io("syncing", base))?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ferrovm-memfile-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn full_files_are_sparse_and_hold_the_memory() {
        let mem = crate::memory::create(16 << 20).unwrap();
        mem.write_slice(&[7u8; 100], GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[9u8; 4096], GuestAddress(0x80_0000))
            .unwrap();
        for anonymous in [true, false] {
            let p = tmp(&format!("full-{anonymous}.mem"));
            let s = write_full(&mem, &p, anonymous).unwrap();
            assert_eq!(s.total, 16 << 20);
            assert_eq!(s.written, 2 * PAGE as u64, "only the two non-zero pages");
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 16 << 20);
            assert!(
                allocated(&p) <= 64 << 10,
                "sparse: {} bytes allocated",
                allocated(&p)
            );
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(&bytes[0x1000..0x1064], &[7u8; 100][..]);
            assert_eq!(bytes[0x1064], 0);
            assert_eq!(&bytes[0x80_0000..0x80_1000], &[9u8; 4096][..]);
        }
    }

    #[test]
    fn diffs_hold_dirty_pages_and_merge_over_a_full_file() {
        let mem = crate::memory::create(4 << 20).unwrap();
        mem.write_slice(&[1u8; 8192], GuestAddress(0)).unwrap();
        let base = tmp("base.mem");
        write_full(&mem, &base, true).unwrap();
        // Later: page 0 cleared to zero, page 5 written.
        mem.write_slice(&[0u8; 4096], GuestAddress(0)).unwrap();
        mem.write_slice(&[5u8; 4096], GuestAddress(5 * 4096))
            .unwrap();
        let mut bitmap = vec![0u64; (4 << 20) / PAGE / 64];
        bitmap[0] = 1 | 1 << 5;
        let diff = tmp("diff.mem");
        let s = write_diff(&mem, &diff, &[bitmap]).unwrap();
        assert_eq!(s.written, 2 * PAGE as u64);
        let copied = merge(&base, &diff).unwrap();
        assert_eq!(copied, 2 * PAGE as u64);
        let full = tmp("full-now.mem");
        write_full(&mem, &full, true).unwrap();
        assert_eq!(
            std::fs::read(&base).unwrap(),
            std::fs::read(&full).unwrap(),
            "base + diff == a full snapshot taken now"
        );
        // A VM restored from `base` maps it MAP_PRIVATE; a new snapshot written to the same
        // path must not pull the guest's memory away under it.
        let file = File::open(&base).unwrap();
        let restored = crate::memory::map_file(&file, &[(0, 4 << 20)]).unwrap();
        let mut page = [0u8; 4096];
        write_full(&restored, &base, false).unwrap();
        restored
            .read_slice(&mut page, GuestAddress(5 * 4096))
            .unwrap();
        assert_eq!(
            page, [5u8; 4096],
            "the mapped memory survives a rewrite of its file"
        );
        assert_eq!(std::fs::read(&base).unwrap(), std::fs::read(&full).unwrap());
        let small = tmp("small.mem");
        std::fs::write(&small, [0u8; 10]).unwrap();
        assert!(matches!(
            merge(&base, &small),
            Err(MemFileError::SizeMismatch { .. })
        ));
    }
}
