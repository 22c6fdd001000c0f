//! `blk-io-guest`: the benchmark's helper inside the L2 guest. Busybox has no random-read
//! load generator and its `dd` prints no timing, so:
//!
//! - `blk-io-guest randread DEV [--seconds S] [--depth D] [--bs B]`: random `B`-byte
//!   (default 4096) reads at `B`-aligned offsets of `DEV`, opened with `O_DIRECT` into
//!   aligned buffers, for `S` seconds (default 5) from `D` threads (default 1), so `D`
//!   requests are in flight; prints `@@BLK fig=randread depth=D bs=B ops=N secs=T status=0`.
//! - `blk-io-guest time FIG BYTES -- CMD [ARGS...]`: runs `CMD` and prints
//!   `@@BLK fig=FIG bytes=BYTES secs=T status=EXIT`, `T` being its wall time on the
//!   guest's monotonic clock.
//!
//! Exit status: 0 on success, 1 when the measurement failed, 2 on usage errors.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use blk_io::{Record, FIG_RANDREAD};

/// Buffer alignment for `O_DIRECT` (at least the logical block size; a page is enough
/// for every disk).
const ALIGN: usize = 4096;

const USAGE: &str = "usage: blk-io-guest randread DEV [--seconds S] [--depth D] [--bs B]\n       blk-io-guest time FIG BYTES -- CMD [ARGS...]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("randread") => randread_cmd(&args[1..]),
        Some("time") => time_cmd(&args[1..]),
        _ => Err(Failure::Usage(String::new())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            if !msg.is_empty() {
                eprintln!("blk-io-guest: {msg}");
            }
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Measure(msg)) => {
            eprintln!("blk-io-guest: {msg}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Usage(String),
    Measure(String),
}

struct RandRead {
    dev: String,
    seconds: f64,
    depth: u32,
    bs: usize,
}

fn parse_randread(args: &[String]) -> Result<RandRead, Failure> {
    let mut it = args.iter();
    let dev = it
        .next()
        .ok_or_else(|| Failure::Usage("randread needs a device".into()))?
        .clone();
    let mut r = RandRead {
        dev,
        seconds: 5.0,
        depth: 1,
        bs: 4096,
    };
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| Failure::Usage(format!("{flag} needs a value")))?;
        let bad = || Failure::Usage(format!("bad value {value:?} for {flag}"));
        match flag.as_str() {
            "--seconds" => r.seconds = value.parse().map_err(|_| bad())?,
            "--depth" => r.depth = value.parse().map_err(|_| bad())?,
            "--bs" => r.bs = value.parse().map_err(|_| bad())?,
            _ => return Err(Failure::Usage(format!("unknown option {flag}"))),
        }
    }
    if !r.seconds.is_finite()
        || r.seconds <= 0.0
        || r.depth == 0
        || r.depth > 1024
        || r.bs == 0
        || !r.bs.is_multiple_of(512)
    {
        return Err(Failure::Usage(
            "need finite seconds > 0, 1 <= depth <= 1024, bs a multiple of 512".into(),
        ));
    }
    Ok(r)
}

/// A zeroed heap buffer aligned for `O_DIRECT`.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len, ALIGN).ok()?;
        if layout.size() == 0 {
            return None;
        }
        // SAFETY: the layout has a non-zero size (checked above).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(AlignedBuf { ptr, layout })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to layout.size() initialized (zeroed) bytes owned by self,
        // and the &mut self borrow makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated by alloc_zeroed with this layout and not freed.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

/// xorshift64*: cheap, good enough to spread offsets over the disk.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn randread_cmd(args: &[String]) -> Result<(), Failure> {
    let p = parse_randread(args)?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p.dev)
        .map_err(|e| Failure::Measure(format!("open {} with O_DIRECT: {e}", p.dev)))?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| Failure::Measure(format!("size of {}: {e}", p.dev)))?;
    let blocks = size / p.bs as u64;
    if blocks == 0 {
        return Err(Failure::Measure(format!(
            "{} ({size} bytes) is smaller than one {}-byte block",
            p.dev, p.bs
        )));
    }
    let ops = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let start = Barrier::new(p.depth as usize + 1);
    let duration = Duration::from_secs_f64(p.seconds);
    let file = &file;
    // The scope joins every reader before it returns the start time.
    let t0 = std::thread::scope(|s| {
        for t in 0..p.depth {
            let (ops, errors, start) = (&ops, &errors, &start);
            s.spawn(move || {
                let mut buf = AlignedBuf::new(p.bs);
                let mut rng =
                    Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(t) + 1).wrapping_mul(0x1234_5677));
                start.wait();
                let Some(buf) = buf.as_mut() else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let deadline = Instant::now() + duration;
                let (mut n, mut bad) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let off = (rng.next() % blocks) * p.bs as u64;
                    match read_block(file, buf.as_mut_slice(), off) {
                        Ok(()) => n += 1,
                        Err(e) => {
                            if bad == 0 {
                                eprintln!("blk-io-guest: read at {off}: {e}");
                            }
                            bad += 1;
                            if bad > 100 {
                                break;
                            }
                        }
                    }
                }
                ops.fetch_add(n, Ordering::Relaxed);
                errors.fetch_add(bad, Ordering::Relaxed);
            });
        }
        start.wait();
        Instant::now()
    });
    let elapsed = t0.elapsed();
    let (ops, errors) = (ops.into_inner(), errors.into_inner());
    let status = u8::from(errors > 0);
    println!(
        "{}",
        Record::new(
            FIG_RANDREAD,
            &[
                ("depth", p.depth.to_string()),
                ("bs", p.bs.to_string()),
                ("ops", ops.to_string()),
                ("errors", errors.to_string()),
                ("secs", format!("{:.6}", elapsed.as_secs_f64())),
                ("status", status.to_string()),
            ],
        )
    );
    if errors > 0 {
        return Err(Failure::Measure(format!("{errors} reads failed")));
    }
    Ok(())
}

fn read_block(file: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let n = file.read_at(buf, off)?;
    if n == buf.len() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "short read: {n} of {} bytes",
            buf.len()
        )))
    }
}

fn time_cmd(args: &[String]) -> Result<(), Failure> {
    let (fig, bytes, cmd) = match args {
        [fig, bytes, sep, cmd @ ..] if sep == "--" && !cmd.is_empty() => (fig, bytes, cmd),
        _ => return Err(Failure::Usage("time needs FIG BYTES -- CMD".into())),
    };
    let bytes: u64 = bytes
        .parse()
        .map_err(|_| Failure::Usage(format!("bad byte count {bytes:?}")))?;
    let t0 = Instant::now();
    let status = Command::new(&cmd[0]).args(&cmd[1..]).status();
    let secs = t0.elapsed().as_secs_f64();
    let code = match &status {
        Ok(s) => s.code().unwrap_or(128),
        Err(_) => 127,
    };
    println!(
        "{}",
        Record::new(
            fig,
            &[
                ("bytes", bytes.to_string()),
                ("secs", format!("{secs:.6}")),
                ("status", code.to_string()),
            ],
        )
    );
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(Failure::Measure(format!("{} exited with {s}", cmd[0]))),
        Err(e) => Err(Failure::Measure(format!("cannot run {}: {e}", cmd[0]))),
    }
}
