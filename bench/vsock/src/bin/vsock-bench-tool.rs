//! `vsock-bench-tool`: the measurements of the vsock benchmark, one binary for both ends.
//!
//! In the L2 guest:
//!
//! - `serve SINK SOURCE ECHO BYTES`: `AF_VSOCK` listeners on three ports, a thread per
//!   connection. SINK reads until end of stream and prints
//!   `@@VSB fig=sink bytes=N secs=T status=0` (nothing for an empty connection); SOURCE
//!   writes BYTES zero bytes and closes; ECHO sends back what it reads.
//!
//! In L1, on the VMM's Unix socket (Firecracker's host side: `CONNECT <port>\n`, then the
//! VMM answers `OK <host port>\n`):
//!
//! - `h2g UDS PORT BYTES [FIG]`: writes BYTES, shuts its side down and waits for the
//!   guest's end of stream; `fig=FIG` (default `h2g`) `bytes= secs=`;
//! - `g2h UDS PORT BYTES [FIG]`: reads until end of stream, expecting BYTES;
//! - `connect UDS PORT COUNT`: COUNT connections one after the other, each timed from the
//!   Unix socket's `connect` to the `OK` line; `fig=connect median_us= p10_us= p90_us=`;
//! - `ping UDS PORT COUNT`: on one connection, COUNT 1-byte writes each answered by the
//!   guest's echo; `fig=ping median_us= ...`.
//!
//! Times are the wall clock of the process measuring (L1 for every figure). Exit status 0
//! on success, 1 when the measurement failed (an `@@VSB fig=error` line says why), 2 on
//! usage errors.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vsock_bench::{Record, Stats, FIG_CONNECT, FIG_ERROR, FIG_PING, FIG_SINK};

/// Read and write chunk.
const CHUNK: usize = 256 << 10;
/// The longest answer to a `CONNECT` line.
const MAX_LINE: usize = 64;
/// Ping round trips not counted at the start of a ping run.
const PING_WARMUP: u32 = 10;
/// How long a host-side read may block before the measurement is given up.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// The guest listeners' backlog (the kernel caps it at `net.core.somaxconn`, 4096 on
/// 6.1). The guest kernel answers a REQUEST before the listener accepts it, so the
/// `connect` figure's back-to-back connections can run far ahead of a guest user space
/// that is slow to get the CPU; past the backlog the guest answers RST. (With 128, one
/// ferrovm run had 30 of 200 connects closed without `OK`; this is the likely cause, not
/// a proven one.)
const LISTEN_BACKLOG: libc::c_int = 4096;

const USAGE: &str = "usage: vsock-bench-tool serve SINK_PORT SOURCE_PORT ECHO_PORT BYTES
       vsock-bench-tool h2g|g2h UDS PORT BYTES [FIG]
       vsock-bench-tool connect|ping UDS PORT COUNT";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = parse(&args);
    let result = match parsed {
        Ok(Cmd::Serve {
            sink,
            source,
            echo,
            bytes,
        }) => serve(sink, source, echo, bytes),
        Ok(Cmd::H2g {
            uds,
            port,
            bytes,
            fig,
        }) => h2g(&uds, port, bytes, &fig),
        Ok(Cmd::G2h {
            uds,
            port,
            bytes,
            fig,
        }) => g2h(&uds, port, bytes, &fig),
        Ok(Cmd::Connect { uds, port, count }) => connect_many(&uds, port, count),
        Ok(Cmd::Ping { uds, port, count }) => ping(&uds, port, count),
        Err(msg) => {
            eprintln!("vsock-bench-tool: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(what) => {
            let what = what.replace(char::is_whitespace, "_");
            println!("{}", Record::new(FIG_ERROR, &[("what", what)]));
            ExitCode::from(1)
        }
    }
}

enum Cmd {
    Serve {
        sink: u32,
        source: u32,
        echo: u32,
        bytes: u64,
    },
    H2g {
        uds: String,
        port: u32,
        bytes: u64,
        fig: String,
    },
    G2h {
        uds: String,
        port: u32,
        bytes: u64,
        fig: String,
    },
    Connect {
        uds: String,
        port: u32,
        count: u32,
    },
    Ping {
        uds: String,
        port: u32,
        count: u32,
    },
}

fn parse(args: &[String]) -> Result<Cmd, String> {
    fn n<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
        s.parse().map_err(|_| format!("bad {what} {s:?}"))
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["serve", sink, source, echo, bytes] => Ok(Cmd::Serve {
            sink: n(sink, "port")?,
            source: n(source, "port")?,
            echo: n(echo, "port")?,
            bytes: n(bytes, "byte count")?,
        }),
        [dir @ ("h2g" | "g2h"), uds, port, bytes, rest @ ..] if rest.len() <= 1 => {
            let (uds, port, bytes) = (uds.to_string(), n(port, "port")?, n(bytes, "byte count")?);
            let fig = rest.first().map_or(*dir, |f| *f).to_string();
            Ok(if *dir == "h2g" {
                Cmd::H2g {
                    uds,
                    port,
                    bytes,
                    fig,
                }
            } else {
                Cmd::G2h {
                    uds,
                    port,
                    bytes,
                    fig,
                }
            })
        }
        [what @ ("connect" | "ping"), uds, port, count] => {
            let (uds, port, count) = (uds.to_string(), n(port, "port")?, n(count, "count")?);
            if count == 0 {
                return Err("COUNT must be at least 1".into());
            }
            Ok(if *what == "connect" {
                Cmd::Connect { uds, port, count }
            } else {
                Cmd::Ping { uds, port, count }
            })
        }
        _ => Err("bad arguments".into()),
    }
}

// ---- guest side --------------------------------------------------------------------------

/// A listening `AF_VSOCK` stream socket on `port`, any CID.
fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: addr is a valid sockaddr_vm of the length given; fd is a socket.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a bound socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The next connection on `listener`, as a file.
fn vsock_accept(listener: &OwnedFd) -> io::Result<File> {
    loop {
        // SAFETY: accept4(2) on a listening socket we own; no address is asked for.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a fresh descriptor nobody else owns.
            return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn serve(sink: u32, source: u32, echo: u32, bytes: u64) -> Result<(), String> {
    let listen = |p: u32| vsock_listen(p).map_err(|e| format!("vsock listen on port {p}: {e}"));
    let (ls, lo, le) = (listen(sink)?, listen(source)?, listen(echo)?);
    let spawn = |l: OwnedFd, serve_one: fn(File, u64)| {
        std::thread::spawn(move || loop {
            match vsock_accept(&l) {
                Ok(c) => {
                    std::thread::spawn(move || serve_one(c, bytes));
                }
                Err(e) => {
                    eprintln!("vsock-bench-tool: accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };
    let threads = [
        spawn(ls, sink_one),
        spawn(lo, source_one),
        spawn(le, echo_one),
    ];
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn sink_one(mut c: File, _: u64) {
    let mut buf = vec![0u8; CHUNK];
    let t0 = Instant::now();
    let mut n = 0u64;
    let status = loop {
        match c.read(&mut buf) {
            Ok(0) => break 0,
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break 1,
        }
    };
    if n > 0 {
        println!(
            "{}",
            Record::new(
                FIG_SINK,
                &[
                    ("bytes", n.to_string()),
                    ("secs", format!("{:.6}", t0.elapsed().as_secs_f64())),
                    ("status", status.to_string()),
                ],
            )
        );
    }
}

fn source_one(mut c: File, bytes: u64) {
    let buf = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        if c.write_all(&buf[..k]).is_err() {
            return;
        }
        left -= k as u64;
    }
}

fn echo_one(mut c: File, _: u64) {
    let mut buf = vec![0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(k) => {
                if c.write_all(&buf[..k]).is_err() {
                    return;
                }
            }
        }
    }
}

// ---- host side ---------------------------------------------------------------------------

/// Connects to the VMM's socket and opens a connection to guest `port`; returns the stream
/// and the host port of the `OK` line.
fn open(uds: &str, port: u32) -> Result<(UnixStream, u32), String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {uds}: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| format!("set a read timeout: {e}"))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("write CONNECT {port}: {e}"))?;
    // Byte by byte: what follows the line is the guest's stream.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < MAX_LINE {
        match s.read(&mut b) {
            Ok(0) => {
                return Err(format!(
                    "CONNECT {port}: the VMM closed the socket after {:?}",
                    String::from_utf8_lossy(&line)
                ))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("CONNECT {port}: reading the answer: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&line);
    let host_port = text
        .strip_prefix("OK ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| format!("CONNECT {port}: answer {text:?} is not `OK <port>`"))?;
    Ok((s, host_port))
}

/// Reads until end of stream (a reset counts as the end); the bytes read.
fn drain(s: &mut UnixStream) -> Result<u64, String> {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(n),
            Err(e) => return Err(format!("read after {n} bytes: {e}")),
        }
    }
}

fn rate_record(fig: &str, bytes: u64, secs: f64, host_port: u32) -> Record {
    Record::new(
        fig,
        &[
            ("bytes", bytes.to_string()),
            ("secs", format!("{secs:.6}")),
            ("host_port", host_port.to_string()),
            ("status", "0".to_string()),
        ],
    )
}

fn h2g(uds: &str, port: u32, bytes: u64, fig: &str) -> Result<(), String> {
    let buf = vec![0x5au8; CHUNK];
    let t0 = Instant::now();
    let (mut s, host_port) = open(uds, port)?;
    let mut left = bytes;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..k])
            .map_err(|e| format!("write after {} bytes: {e}", bytes - left))?;
        left -= k as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    // The guest closes once it has read everything.
    let back = drain(&mut s)?;
    let secs = t0.elapsed().as_secs_f64();
    if back != 0 {
        return Err(format!("the sink sent {back} bytes back"));
    }
    println!("{}", rate_record(fig, bytes, secs, host_port));
    Ok(())
}

fn g2h(uds: &str, port: u32, bytes: u64, fig: &str) -> Result<(), String> {
    let t0 = Instant::now();
    let (mut s, host_port) = open(uds, port)?;
    let got = drain(&mut s)?;
    let secs = t0.elapsed().as_secs_f64();
    if got != bytes {
        return Err(format!("received {got} of {bytes} bytes"));
    }
    println!("{}", rate_record(fig, bytes, secs, host_port));
    Ok(())
}

fn latency_record(fig: &str, samples_us: &[f64], failures: u32) -> Result<Record, String> {
    let q = |x| Stats::quantile(samples_us, x).map(|v| format!("{v:.1}"));
    let median = q(0.5).ok_or("no successful sample")?;
    Ok(Record::new(
        fig,
        &[
            ("n", samples_us.len().to_string()),
            ("failures", failures.to_string()),
            ("median_us", median),
            ("p10_us", q(0.1).unwrap_or_default()),
            ("p90_us", q(0.9).unwrap_or_default()),
            ("min_us", q(0.0).unwrap_or_default()),
            ("max_us", q(1.0).unwrap_or_default()),
            ("status", u8::from(failures > 0).to_string()),
        ],
    ))
}

fn connect_many(uds: &str, port: u32, count: u32) -> Result<(), String> {
    let mut samples = Vec::with_capacity(count as usize);
    let mut failures = 0u32;
    let mut first_error = None;
    for _ in 0..count {
        let t0 = Instant::now();
        match open(uds, port) {
            Ok((s, _)) => {
                samples.push(t0.elapsed().as_secs_f64() * 1e6);
                drop(s);
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = &first_error {
        eprintln!("vsock-bench-tool: {failures} of {count} connects failed; first: {e}");
    }
    println!("{}", latency_record(FIG_CONNECT, &samples, failures)?);
    if failures > 0 {
        return Err(first_error.unwrap_or_default());
    }
    Ok(())
}

fn ping(uds: &str, port: u32, count: u32) -> Result<(), String> {
    let (mut s, _) = open(uds, port)?;
    let mut samples = Vec::with_capacity(count as usize);
    let mut b = [0u8; 1];
    for i in 0..count + PING_WARMUP {
        let t0 = Instant::now();
        s.write_all(&[i as u8])
            .map_err(|e| format!("ping {i}: write: {e}"))?;
        s.read_exact(&mut b)
            .map_err(|e| format!("ping {i}: read: {e}"))?;
        if b[0] != i as u8 {
            return Err(format!("ping {i}: got {} back", b[0]));
        }
        if i >= PING_WARMUP {
            samples.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    println!("{}", latency_record(FIG_PING, &samples, 0)?);
    Ok(())
}
