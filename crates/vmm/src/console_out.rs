//! Guest console output decoupled from the host terminal: the UART (on a vCPU thread)
//! appends to a shared buffer and wakes the main thread, which writes to stdout. A slow or
//! blocked terminal therefore never stalls a vCPU, until the buffer holds
//! [`MAX_BUFFERED`] bytes: then the vCPU writes through itself (backpressure, no loss).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Output kept in memory before the vCPU writes it through itself.
pub const MAX_BUFFERED: usize = 1 << 20;

struct Shared {
    buf: Mutex<Vec<u8>>,
    evt: EventFd,
}

/// The main thread's end: drains buffered output to a sink.
#[derive(Clone)]
pub struct ConsoleOut {
    shared: Arc<Shared>,
}

/// The UART's end: a writer that buffers.
pub struct ConsoleWriter {
    shared: Arc<Shared>,
    sink: fn(&[u8]),
}

fn write_stdout(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    // A closed or failing stdout must not stop the guest: its output is dropped.
    let _ = out.write_all(bytes).and_then(|_| out.flush());
}

impl ConsoleOut {
    /// A buffer whose output goes to stdout.
    pub fn new() -> io::Result<(ConsoleOut, ConsoleWriter)> {
        Self::with_sink(write_stdout)
    }

    /// A buffer whose output goes to `sink` (tests).
    pub fn with_sink(sink: fn(&[u8])) -> io::Result<(ConsoleOut, ConsoleWriter)> {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(4096)),
            evt: EventFd::new(EFD_NONBLOCK)?,
        });
        Ok((
            ConsoleOut {
                shared: shared.clone(),
            },
            ConsoleWriter { shared, sink },
        ))
    }

    /// The eventfd signalled when output is waiting.
    pub fn evt(&self) -> &EventFd {
        &self.shared.evt
    }

    /// Takes what is buffered.
    pub fn take(&self) -> Vec<u8> {
        let _ = self.shared.evt.read();
        let mut b = self.shared.buf.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *b)
    }

    /// Writes everything buffered to stdout.
    pub fn drain(&self) {
        let bytes = self.take();
        if !bytes.is_empty() {
            write_stdout(&bytes);
        }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut b = self.shared.buf.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() + data.len() > MAX_BUFFERED {
            // The reader is far behind: write through, in order, holding the lock.
            (self.sink)(&b);
            b.clear();
            (self.sink)(data);
            return Ok(data.len());
        }
        let was_empty = b.is_empty();
        b.extend_from_slice(data);
        drop(b);
        if was_empty {
            let _ = self.shared.evt.write(1);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static SUNK: AtomicUsize = AtomicUsize::new(0);
    fn count_sink(b: &[u8]) {
        SUNK.fetch_add(b.len(), Ordering::SeqCst);
    }

    #[test]
    fn buffers_and_signals_once_per_batch() {
        let (out, mut w) = ConsoleOut::with_sink(count_sink).unwrap();
        w.write_all(b"abc").unwrap();
        w.write_all(b"def").unwrap();
        assert_eq!(out.evt().read().unwrap(), 1, "one wake-up for a batch");
        assert_eq!(out.take(), b"abcdef");
        w.write_all(b"g").unwrap();
        assert_eq!(out.take(), b"g");
        assert!(out.take().is_empty());
    }

    #[test]
    fn writes_through_when_the_reader_falls_behind() {
        let (out, mut w) = ConsoleOut::with_sink(count_sink).unwrap();
        let before = SUNK.load(Ordering::SeqCst);
        w.write_all(&vec![b'x'; MAX_BUFFERED - 1]).unwrap();
        w.write_all(b"yy").unwrap();
        assert_eq!(SUNK.load(Ordering::SeqCst) - before, MAX_BUFFERED + 1);
        assert!(out.take().is_empty());
    }
}
