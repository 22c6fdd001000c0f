//! QEMU's stream-socket network protocol, as passt speaks it, as a [`NetBackend`]: Ethernet
//! frames over a connected Unix stream socket, each prefixed by its length as a 32-bit
//! big-endian integer, with no vnet header (so the guest is offered no offloads and every
//! frame is complete).
//!
//! The socket is non-blocking, so frames arrive and leave in pieces. Received frames are
//! read straight into the guest's buffers, a piece at a time ([`Recv::Partial`] until the
//! last byte is in); a frame the socket cannot take whole is kept (the unsent rest, copied
//! once) and written before anything else, so frames are never lost or interleaved.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::backend::{FrameBufs, NetBackend, Recv};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Why a stream backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot connect to the network socket {}: {source} (is passt running and listening there, e.g. `passt --socket {}`?)", path.display(), path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make the network socket non-blocking: {0}")]
    Setup(#[source] io::Error),
}

/// Where the reading of the current frame stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxState {
    /// Reading the length prefix (`got` bytes of it so far).
    Len { buf: [u8; LEN_PREFIX], got: usize },
    /// Reading a frame of `len` bytes into the guest's buffers, `done` so far.
    Body { len: usize, done: usize },
    /// Throwing away `left` more bytes of a frame that does not fit.
    Discard { left: usize },
}

const START: RxState = RxState::Len {
    buf: [0; LEN_PREFIX],
    got: 0,
};

/// A length-prefixed frame stream over a connected Unix socket.
#[derive(Debug)]
pub struct Stream {
    sock: UnixStream,
    name: String,
    rx: RxState,
    /// The unsent rest of the last frame taken, from `tail_pos`.
    tail: Vec<u8>,
    tail_pos: usize,
    scratch: Vec<u8>,
}

impl Stream {
    /// Connects to the socket at `path` (passt's `--socket`).
    pub fn connect(path: &Path) -> Result<Stream, StreamError> {
        let sock = UnixStream::connect(path).map_err(|source| StreamError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let mut s = Stream::new(sock)?;
        s.name = path.display().to_string();
        Ok(s)
    }

    /// A backend over an already connected socket (made non-blocking here).
    pub fn new(sock: UnixStream) -> Result<Stream, StreamError> {
        sock.set_nonblocking(true).map_err(StreamError::Setup)?;
        Ok(Stream {
            sock,
            name: "stream".into(),
            rx: START,
            tail: Vec::new(),
            tail_pos: 0,
            scratch: Vec::new(),
        })
    }

    /// Whether part of a taken frame is still waiting to be written.
    pub fn has_pending_output(&self) -> bool {
        self.tail_pos < self.tail.len()
    }

    fn send_raw(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `data` is a live slice; the kernel reads at most its length.
            let r = unsafe {
                libc::send(
                    self.sock.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl NetBackend for Stream {
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn has_vnet_hdr(&self) -> bool {
        false
    }

    fn recv(&mut self, frame: &mut FrameBufs<'_>) -> io::Result<Recv> {
        loop {
            match self.rx {
                RxState::Len { mut buf, got } => {
                    let n = match (&self.sock).read(&mut buf[got..]) {
                        Ok(0) => return Ok(Recv::Closed),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    let got = got + n;
                    if got < LEN_PREFIX {
                        self.rx = RxState::Len { buf, got };
                        continue;
                    }
                    let len = u32::from_be_bytes(buf) as usize;
                    if len == 0 {
                        self.rx = START;
                        return Ok(Recv::Dropped);
                    }
                    self.rx = if len > frame.len() {
                        RxState::Discard { left: len }
                    } else {
                        RxState::Body { len, done: 0 }
                    };
                }
                RxState::Body { len, done } => {
                    if len > frame.len() {
                        // Not the buffers the frame was started in: it cannot be finished.
                        self.rx = RxState::Discard { left: len - done };
                        continue;
                    }
                    match frame.read_from(self.sock.as_fd(), done, len - done) {
                        Ok(0) => return Ok(Recv::Closed),
                        Ok(n) => {
                            let done = done + n;
                            if done >= len {
                                self.rx = START;
                                return Ok(Recv::Frame(len));
                            }
                            self.rx = RxState::Body { len, done };
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock && done > 0 => {
                            return Ok(Recv::Partial)
                        }
                        Err(e) => return Err(e),
                    }
                }
                RxState::Discard { left } => {
                    if self.scratch.is_empty() {
                        self.scratch = vec![0; 16 << 10];
                    }
                    let want = left.min(self.scratch.len());
                    match (&self.sock).read(&mut self.scratch[..want]) {
                        Ok(0) => return Ok(Recv::Closed),
                        Ok(n) if n == left => {
                            self.rx = START;
                            return Ok(Recv::Dropped);
                        }
                        Ok(n) => self.rx = RxState::Discard { left: left - n },
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    fn send(&mut self, frame: &mut FrameBufs<'_>) -> io::Result<()> {
        self.flush()?;
        let len = u32::try_from(frame.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {} bytes is too long", frame.len()),
            )
        })?;
        let prefix = len.to_be_bytes();
        let total = LEN_PREFIX + frame.len();
        let n = frame.send_to(self.sock.as_fd(), &prefix, 0, libc::MSG_DONTWAIT)?;
        if n < total {
            // Taken: keep the rest and write it before anything else.
            self.tail.clear();
            self.tail_pos = 0;
            if n < LEN_PREFIX {
                self.tail.extend_from_slice(&prefix[n..]);
            }
            let from = n.saturating_sub(LEN_PREFIX);
            let at = self.tail.len();
            if !frame.copy_to_vec(from, &mut self.tail) {
                // Keep the framing: the peer gets a frame of zeroes rather than a stream
                // it cannot parse.
                self.tail.resize(at + (frame.len() - from), 0);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.tail_pos < self.tail.len() {
            let n = self.send_raw(&self.tail[self.tail_pos..])?;
            self.tail_pos += n;
        }
        self.tail.clear();
        self.tail_pos = 0;
        Ok(())
    }

    fn abandon_partial(&mut self) {
        if let RxState::Body { len, done } = self.rx {
            self.rx = RxState::Discard { left: len - done };
        }
    }

    fn set_offload(&self, _tun_flags: u32) -> io::Result<()> {
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}
