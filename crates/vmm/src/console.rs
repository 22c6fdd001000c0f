//! The host terminal side of the serial console: raw mode with guaranteed restore, the
//! `Ctrl-A` escape (`Ctrl-A x` quits, `Ctrl-A Ctrl-A` sends a literal `Ctrl-A`), a stdin
//! reader thread that works for terminals, pipes, files and closed stdin alike, and the
//! pump that moves host input into the guest's UART as far as its FIFO allows.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use devices::legacy::Serial;
use vmm_sys_util::eventfd::EventFd;

/// The escape character (Ctrl-A), as in QEMU.
pub const ESCAPE: u8 = 0x01;

/// Bytes of host input kept waiting for the guest before stdin is throttled.
const MAX_PENDING_INPUT: usize = 64 << 10;

/// Puts a terminal in raw mode and restores the saved settings when dropped.
pub struct RawTerminal {
    fd: i32,
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode on stdin if it is a terminal; `None` otherwise (or if it fails).
    pub fn stdin() -> Option<Self> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; zeroed is a valid bit pattern for it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a terminal, `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only modifies the struct we pass.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so guest "\n" still renders sanely if the guest
        // does not send "\r".
        raw.c_oflag = saved.c_oflag;
        // SAFETY: fd is a terminal, `raw` a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings saved from the same terminal fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Result of filtering input through the escape state machine.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filtered {
    /// Bytes for the guest.
    pub bytes: Vec<u8>,
    /// The user typed `Ctrl-A x`.
    pub quit: bool,
}

/// `Ctrl-A` escape handling.
#[derive(Debug, Default)]
pub struct Escape {
    pending: bool,
}

impl Escape {
    /// Filters `input`; anything after a quit request is dropped.
    pub fn filter(&mut self, input: &[u8]) -> Filtered {
        let mut out = Filtered::default();
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'x' | b'X' => {
                        out.quit = true;
                        return out;
                    }
                    ESCAPE => out.bytes.push(ESCAPE),
                    // Unknown command: swallow it, as QEMU does.
                    _ => {}
                }
            } else if b == ESCAPE {
                self.pending = true;
            } else {
                out.bytes.push(b);
            }
        }
        out
    }
}

/// Chunks read from stdin; an empty chunk means end of input.
pub struct StdinReader {
    /// Receives chunks.
    pub rx: Receiver<Vec<u8>>,
    /// Signalled after each chunk is sent.
    pub evt: Arc<EventFd>,
}

/// Starts the stdin reader thread. The channel is bounded, so a fast producer (a big file
/// on stdin) waits for the guest to consume its input.
/// With `enabled` false no thread is started and the reader never yields anything.
pub fn spawn_stdin_reader(enabled: bool) -> std::io::Result<StdinReader> {
    let evt = Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?);
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    if !enabled {
        return Ok(StdinReader { rx, evt });
    }
    let thread_evt = evt.clone();
    seccomp::thread("stdin", seccomp::ThreadKind::Stdin).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            let eof = n == 0;
            if tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
            let _ = thread_evt.write(1);
            if eof {
                return;
            }
        }
    })?;
    Ok(StdinReader { rx, evt })
}

/// The host console, shared by every boot of a run: where input comes from and what is
/// waiting for the guest.
pub struct Console {
    /// Host input.
    pub reader: StdinReader,
    escape: Escape,
    is_tty: bool,
    open: bool,
    pending: VecDeque<u8>,
    _terminal: Option<RawTerminal>,
}

impl Console {
    /// The console; with `input`, stdin is read (in raw mode when it is a terminal, the
    /// escape sequence then being active).
    pub fn new(input: bool) -> std::io::Result<Console> {
        let terminal = if input { RawTerminal::stdin() } else { None };
        Ok(Console {
            reader: spawn_stdin_reader(input)?,
            escape: Escape::default(),
            is_tty: terminal.is_some(),
            open: input,
            pending: VecDeque::new(),
            _terminal: terminal,
        })
    }

    /// Moves host input into the UART as far as its FIFO allows; returns true when the
    /// user typed the quit escape.
    pub fn pump(&mut self, serial: Option<&Mutex<Serial>>) -> bool {
        let _ = self.reader.evt.read();
        let mut quit = false;
        while self.open && self.pending.len() < MAX_PENDING_INPUT {
            match self.reader.rx.try_recv() {
                Ok(chunk) if chunk.is_empty() => self.open = false,
                Ok(chunk) => {
                    if self.is_tty {
                        let f = self.escape.filter(&chunk);
                        self.pending.extend(f.bytes);
                        quit |= f.quit;
                    } else {
                        self.pending.extend(chunk);
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => self.open = false,
            }
        }
        if let (Some(serial), false) = (serial, self.pending.is_empty()) {
            let mut s = serial.lock().unwrap_or_else(|p| p.into_inner());
            let (a, _) = self.pending.as_slices();
            let mut taken = s.enqueue_input(a);
            if taken == a.len() {
                self.pending.drain(..taken);
                let (b, _) = self.pending.as_slices();
                taken = s.enqueue_input(b);
            }
            self.pending.drain(..taken);
        }
        quit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes_pass_through() {
        let mut e = Escape::default();
        assert_eq!(e.filter(b"ls\r").bytes, b"ls\r");
    }

    #[test]
    fn ctrl_a_x_quits_even_across_chunks() {
        let mut e = Escape::default();
        let f = e.filter(b"ab\x01");
        assert_eq!((f.bytes.as_slice(), f.quit), (&b"ab"[..], false));
        let f = e.filter(b"xzz");
        assert!(f.quit);
        assert!(f.bytes.is_empty());
    }

    #[test]
    fn double_ctrl_a_sends_one_and_unknown_commands_are_swallowed() {
        let mut e = Escape::default();
        let f = e.filter(b"\x01\x01a\x01qb");
        assert_eq!(f.bytes, b"\x01ab");
        assert!(!f.quit);
    }
}
