//! The host side's Unix sockets: binding the listener at `uds_path`, connecting to
//! `<uds_path>_<port>` without blocking, writing without SIGPIPE, telling a hang-up from a
//! half close, and the `CONNECT <port>` line host processes open connections with.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::VsockError;

/// The longest `CONNECT <port>` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 64;

/// A file's (device, inode): the socket file the device bound, to remove it only if it is
/// still that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of what `path` names now (not following a symbolic link).
    pub fn of(path: &Path) -> Option<FileId> {
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Binds a listening socket at `path`. A socket file nobody listens on any more (left by a
/// process that died) is replaced; a live listener or a file that is not a socket is an
/// error. The listener is non-blocking.
pub fn bind_listener(path: &Path) -> Result<(UnixListener, FileId), VsockError> {
    let bind_err = |source| VsockError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
            if !meta.file_type().is_socket() {
                return Err(VsockError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            match connect_nonblocking(path) {
                // Someone accepts, or would if its backlog were not full.
                Ok(_) => {
                    return Err(VsockError::InUse {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(VsockError::InUse {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!("{}: replacing a stale vsock socket", path.display());
                    std::fs::remove_file(path).map_err(|source| VsockError::RemoveStale {
                        path: path.to_path_buf(),
                        source,
                    })?;
                    UnixListener::bind(path).map_err(bind_err)?
                }
                Err(e) => return Err(bind_err(e)),
            }
        }
        Err(e) => return Err(bind_err(e)),
    };
    listener.set_nonblocking(true).map_err(bind_err)?;
    let id = FileId::of(path).ok_or_else(|| {
        bind_err(io::Error::new(
            io::ErrorKind::NotFound,
            "the socket file vanished right after bind",
        ))
    })?;
    Ok((listener, id))
}

/// `<uds_path>_<port>`: where a guest connection to host port `port` goes.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_os_string();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects a non-blocking stream socket to the listener at `path` without waiting: a
/// listener whose backlog is full is `WouldBlock`, no listener `ConnectionRefused` or
/// `NotFound`.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path of {} bytes (at most {} without NUL bytes)",
                bytes.len(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just created and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a live, initialised sockaddr_un and `len` does not exceed its size
    // (the path is shorter than `sun_path`, checked above, and NUL-terminated by the zeroes).
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        // A Unix stream connect completes or fails at once; "in progress" would mean a
        // listener we cannot wait for.
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        return Err(e);
    }
    Ok(UnixStream::from(fd))
}

/// Writes `buf` without blocking and without SIGPIPE (a closed peer is `BrokenPipe`).
pub fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which outlives the call; send(2) only
    // reads that many bytes from it.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether the peer of `stream` closed its socket altogether (rather than only shutting
/// down its write side): poll(2) reports a hang-up.
///
/// Asked with vmm-sys-util's `PollContext` (an epoll watching no events, which still
/// reports hang-ups and errors) and no waiting; only after a read saw the end of the
/// stream, so the epoll descriptor it costs is rare.
pub fn hung_up(stream: &UnixStream) -> bool {
    use vmm_sys_util::poll::{PollContext, WatchingEvents};
    let Ok(mut ctx) = PollContext::<u32>::new() else {
        return false;
    };
    ctx.set_check_for_hangup(false);
    if ctx
        .add_fd_with_events(stream, WatchingEvents::empty(), 0)
        .is_err()
    {
        return false;
    }
    ctx.wait_timeout(std::time::Duration::ZERO)
        .is_ok_and(|ev| ev.iter().any(|e| e.hungup() || e.has_error()))
}

/// Parses a host's `CONNECT <port>` line (without its newline; case-insensitive keyword,
/// any whitespace around the words, a trailing CR tolerated).
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let mut words = s.split_whitespace();
    let kw = words.next()?;
    if !kw.eq_ignore_ascii_case("connect") {
        return None;
    }
    let port = words.next()?;
    if words.next().is_some() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1234"), Some(1234));
        assert_eq!(parse_connect_line(b"connect 0\r"), Some(0));
        assert_eq!(
            parse_connect_line(b"  Connect\t4294967295 "),
            Some(u32::MAX)
        );
        for bad in [
            &b""[..],
            b"CONNECT",
            b"CONNECT 4294967296",
            b"CONNECT -1",
            b"CONNECT +1",
            b"CONNECT 12 34",
            b"CONNECTX 1",
            b"OPEN 1",
            b"CONNECT 0x10",
            b"CONNECT \xff",
        ] {
            assert_eq!(parse_connect_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn port_paths_append_the_port() {
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 52),
            PathBuf::from("/run/v.sock_52")
        );
    }

    #[test]
    fn connecting_nowhere_fails_at_once() {
        let dir = super::super::tests::TempDir::new();
        let e = connect_nonblocking(&dir.path("nothing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let long = PathBuf::from("/".repeat(200));
        let e = connect_nonblocking(&long).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn binding_refuses_live_listeners_and_files_and_replaces_stale_sockets() {
        let dir = super::super::tests::TempDir::new();
        let p = dir.path("v.sock");
        let (l, id) = bind_listener(&p).unwrap();
        assert_eq!(FileId::of(&p), Some(id));
        let e = bind_listener(&p).unwrap_err();
        assert!(matches!(e, VsockError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("v.sock"), "{e}");
        drop(l); // the file stays: stale
        let (_l, _) = bind_listener(&p).unwrap();
        assert!(connect_nonblocking(&p).is_ok(), "listening again");
        let f = dir.path("file");
        std::fs::write(&f, b"x").unwrap();
        let e = bind_listener(&f).unwrap_err();
        assert!(matches!(e, VsockError::NotASocket { .. }), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), b"x", "left alone");
        let e = bind_listener(&dir.path("no/such/dir")).unwrap_err();
        assert!(matches!(e, VsockError::Bind { .. }), "{e}");
    }

    #[test]
    fn hang_ups_are_told_from_half_closes() {
        let (a, b) = UnixStream::pair().unwrap();
        assert!(!hung_up(&a));
        b.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!hung_up(&a));
        drop(b);
        assert!(hung_up(&a));
        let e = send_nosignal(&a, b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
