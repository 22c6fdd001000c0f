//! Watches the guest's console output for a Linux kernel panic, so that the reset which
//! follows `panic=-1` (or `panic=N`) is reported as a crash rather than a reboot.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What Linux prints when it panics.
pub const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// A writer that passes everything through and raises a flag once the output contains
/// [`PANIC_MARKER`] (also when it is split across writes).
pub struct PanicWatch<W: Write> {
    inner: W,
    matched: usize,
    flag: Arc<AtomicBool>,
}

impl<W: Write> PanicWatch<W> {
    /// Wraps `inner`; `flag` becomes true when a panic is seen.
    pub fn new(inner: W, flag: Arc<AtomicBool>) -> Self {
        PanicWatch {
            inner,
            matched: 0,
            flag,
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            // The marker has no repeated prefix, so a mismatch restarts the match at this
            // byte (which may itself start the marker).
            if b == PANIC_MARKER[self.matched] {
                self.matched += 1;
            } else {
                self.matched = usize::from(b == PANIC_MARKER[0]);
            }
            if self.matched == PANIC_MARKER.len() {
                self.flag.store(true, Ordering::SeqCst);
                self.matched = 0;
            }
        }
    }
}

impl<W: Write> Write for PanicWatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.scan(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_panic_split_across_writes() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut w = PanicWatch::new(Vec::new(), flag.clone());
        for b in b"[ 1.0] Kernel pan" {
            w.write_all(&[*b]).unwrap();
        }
        assert!(!flag.load(Ordering::SeqCst));
        w.write_all(b"ic - not syncing: VFS: Unable to mount root fs\n")
            .unwrap();
        assert!(flag.load(Ordering::SeqCst));
        assert!(w.inner.starts_with(b"[ 1.0] Kernel panic"));
    }

    #[test]
    fn near_misses_do_not_count() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut w = PanicWatch::new(Vec::new(), flag.clone());
        w.write_all(b"Kernel Kernel panic - not syncin\nKernel panic - syncing")
            .unwrap();
        assert!(!flag.load(Ordering::SeqCst));
        w.write_all(b"KKernel panic - not syncing").unwrap();
        assert!(flag.load(Ordering::SeqCst));
    }
}
