//! Letting go of the start-up code once the first VM runs.
//!
//! Parsing the command line, loading and decompressing the kernel, building ACPI tables
//! and compiling the seccomp filters run once, but the pages of machine code they
//! touched (with the neighbours the kernel maps around each fault) stay in the
//! process's page tables and count in its RSS for the VM's whole life: about 3 MiB of
//! ferrovm's own text, and the libraries' likewise. Once the first VM runs, every
//! executable segment of the loaded objects gets `MADV_DONTNEED`: their pages leave
//! this process's page tables but stay in the page cache (file-backed, shared with
//! every other process mapping them), and what the running VM still executes (the
//! vCPU loop, the devices' emulation) comes back on first use through a minor fault.
//!
//! Only executable segments are touched: they are never written (no text
//! relocations), so dropping a page loses nothing. Read-only data segments are left
//! alone: RELRO pages there were written by the dynamic loader before it protected
//! them, and dropping those would bring back the unrelocated file contents.

use std::sync::atomic::{AtomicBool, Ordering};

static RELEASED: AtomicBool = AtomicBool::new(false);

/// A page-aligned address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: usize,
    len: usize,
}

/// The whole pages inside `[start, start + len)` (a segment may share its first and
/// last page with its neighbours in memory), or `None` when it holds none.
fn whole_pages(start: usize, len: usize, page: usize) -> Option<Range> {
    let end = start.checked_add(len)?;
    let first = start.checked_add(page - 1)? & !(page - 1);
    let last = end & !(page - 1);
    (last > first).then(|| Range {
        start: first,
        len: last - first,
    })
}

/// Whether `a` and `b` share a byte.
fn overlaps(a: Range, b: Range) -> bool {
    a.start < b.start.saturating_add(b.len) && b.start < a.start.saturating_add(a.len)
}

/// The read-only `PT_LOAD` segments (code and constant data) of one loaded object at
/// `base`, whole pages only, leaving out any segment that shares a page with the
/// object's `PT_GNU_RELRO` range (data the loader relocated, then protected).
fn read_only_segments(base: usize, headers: &[libc::Elf64_Phdr], page: usize) -> Vec<Range> {
    let span = |h: &libc::Elf64_Phdr| {
        let start = base.wrapping_add(h.p_vaddr as usize);
        Range {
            start: start & !(page - 1),
            len: (h.p_memsz as usize).saturating_add(start & (page - 1)),
        }
    };
    let relro: Vec<Range> = headers
        .iter()
        .filter(|h| h.p_type == libc::PT_GNU_RELRO)
        .map(span)
        .collect();
    headers
        .iter()
        .filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0)
        .filter(|h| !relro.iter().any(|r| overlaps(*r, span(h))))
        .filter_map(|h| {
            whole_pages(
                base.wrapping_add(h.p_vaddr as usize),
                h.p_memsz as usize,
                page,
            )
        })
        .collect()
}

/// The read-only segments of every object the dynamic loader (or, for a static
/// binary, the C runtime) has mapped: this binary, libc and the rest, not the vDSO
/// (the kernel's own mapping). `visit` runs inside the iteration, while the loader
/// holds its lock: no object can be unmapped under it.
fn for_each_read_only_segment(page: usize, visit: &mut dyn FnMut(Range)) {
    struct Walk<'a> {
        page: usize,
        visit: &'a mut dyn FnMut(Range),
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `dl_iterate_phdr` calls back with a valid `info` for the duration of
        // the call, and `data` is the `&mut Walk` passed below, not aliased while the
        // iteration runs.
        let (info, walk) = unsafe { (&*info, &mut *(data as *mut Walk)) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        if !info.dlpi_name.is_null() {
            // SAFETY: the loader's NUL-terminated name of the object.
            let name = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) };
            if name.to_bytes().starts_with(b"linux-vdso") {
                return 0;
            }
        }
        // SAFETY: the loader's program header table of this object: `dlpi_phnum`
        // entries at `dlpi_phdr`, mapped for the object's lifetime.
        let headers =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        for r in read_only_segments(info.dlpi_addr as usize, headers, walk.page) {
            (walk.visit)(r);
        }
        0
    }
    let mut walk = Walk { page, visit };
    // SAFETY: `each` matches the callback type and only reads what the loader hands
    // it; `walk` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut walk as *mut Walk).cast()) };
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

/// Drops the pages of code and constant data start-up used from this process's page
/// tables; the first call does it, later ones (a reboot's new VM) do nothing. Returns
/// the bytes advised. Failures are logged, never fatal: the pages simply stay.
pub fn release_startup_code() -> usize {
    if RELEASED.swap(true, Ordering::AcqRel) {
        return 0;
    }
    release_now()
}

/// [`release_startup_code`] without the once-only guard.
fn release_now() -> usize {
    let mut advised = 0;
    for_each_read_only_segment(page_size(), &mut |r| {
        // SAFETY: `r` is a range of whole pages inside a non-writable segment the
        // loader mapped from a file, outside its relocated (RELRO) data, and the
        // loader's lock keeps it mapped during this call. MADV_DONTNEED on such a
        // private file mapping only drops page-table entries: the next access faults
        // the same file contents back, so code running in any thread is unaffected.
        if unsafe { libc::madvise(r.start as *mut libc::c_void, r.len, libc::MADV_DONTNEED) } == 0 {
            advised += r.len;
        } else {
            tracing::debug!(
                "madvise(MADV_DONTNEED) at {:#x}: {}",
                r.start,
                std::io::Error::last_os_error()
            );
        }
    });
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    tracing::debug!("released {} KiB of start-up code and data", advised / 1024);
    advised
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_pages_rounds_inward() {
        let p = 4096;
        assert_eq!(
            whole_pages(0x1000, 0x3000, p),
            Some(Range {
                start: 0x1000,
                len: 0x3000
            })
        );
        assert_eq!(
            whole_pages(0x1010, 0x3000, p),
            Some(Range {
                start: 0x2000,
                len: 0x2000
            })
        );
        assert_eq!(whole_pages(0x1010, 0x100, p), None);
        assert_eq!(whole_pages(usize::MAX - 10, 100, p), None);
    }

    fn header(p_type: u32, p_flags: u32, vaddr: u64, memsz: u64) -> libc::Elf64_Phdr {
        libc::Elf64_Phdr {
            p_type,
            p_flags,
            p_offset: 0,
            p_vaddr: vaddr,
            p_paddr: vaddr,
            p_filesz: memsz,
            p_memsz: memsz,
            p_align: 0x1000,
        }
    }

    #[test]
    fn read_only_segments_skip_writable_and_relro() {
        let (r, x, w) = (libc::PF_R, libc::PF_R | libc::PF_X, libc::PF_R | libc::PF_W);
        let headers = [
            header(libc::PT_PHDR, r, 0x40, 0x200),
            header(libc::PT_LOAD, r, 0, 0x17ddfc),
            header(libc::PT_LOAD, x, 0x17ee00, 0x53d0d0),
            header(libc::PT_LOAD, w, 0x6bced0, 0x2c130),
            header(libc::PT_GNU_RELRO, r, 0x6bced0, 0x2c130),
            // A read-only segment sharing a page with the RELRO range: left alone.
            header(libc::PT_LOAD, r, 0x6e8800, 0x2000),
        ];
        let base = 0x5555_0000_0000;
        let got = read_only_segments(base, &headers, 0x1000);
        assert_eq!(
            got,
            vec![
                Range {
                    start: base,
                    len: 0x17d000
                },
                Range {
                    start: base + 0x17f000,
                    len: 0x6bb000 - 0x17f000
                },
            ]
        );
    }

    #[test]
    fn finds_this_binary_code() {
        let here = finds_this_binary_code as fn() as usize;
        let mut segs = Vec::new();
        for_each_read_only_segment(page_size(), &mut |r| segs.push(r));
        assert!(
            segs.iter()
                .any(|r| r.start <= here && here < r.start + r.len),
            "no executable segment holds {here:#x}: {segs:x?}"
        );
    }

    #[test]
    fn code_still_runs_after_release() {
        // The test binary's own code is dropped from the page tables and must fault
        // back: the rest of this test (and the harness) keeps running. (Other tests'
        // VMs call the guarded `release_startup_code` in this process too.)
        let advised = release_now();
        assert!(advised > 0);
        let v: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert_eq!(v.iter().sum::<u64>(), 332_833_500);
    }
}
