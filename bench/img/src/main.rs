//! `ferrovm img` / block crate vs `qemu-img` / `qemu-io`, same machine, same run.
//!
//! Usage: `cargo build --release -p ferrovm -p img-bench && target/x86_64-unknown-linux-gnu/release/img-bench [DIR]`
//! (env: `IMG_BENCH_SIZE_MB` (default 1024), `IMG_BENCH_OPS` (default 20000),
//! `IMG_BENCH_REPS` (default 5)). The two tools alternate run by run so that they share the
//! machine's noise; each figure is the best of REPS runs, both in wall time and in CPU time
//! (user + system). Ratios are qemu / ferrovm: > 1.0 means ferrovm is faster.

use block::OpenOptions;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Wall time and CPU time of one measurement.
#[derive(Clone, Copy, Default)]
struct M {
    wall: Duration,
    cpu: Duration,
}

impl M {
    fn minus(self, o: M) -> M {
        M {
            wall: self.wall.saturating_sub(o.wall),
            cpu: self.cpu.saturating_sub(o.cpu),
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time of this process (`RUSAGE_SELF`) or of its waited-for children.
fn cpu(who: libc::c_int) -> Duration {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we pass and keeps no reference to it.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Writes back all dirty page-cache data so that one run's writeback does not bill the next.
fn settle() {
    let _ = Command::new("sync").status();
}

/// Removes a previous output (outside the timing: truncating a big file costs the file
/// system a lot of time) and settles the page cache.
fn fresh(path: &str) {
    let _ = std::fs::remove_file(path);
    settle();
}

fn run(prog: &Path, args: &[&str]) -> M {
    settle();
    let c0 = cpu(libc::RUSAGE_CHILDREN);
    let t = Instant::now();
    let out = Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let wall = t.elapsed();
    match out {
        Ok(o) if o.status.success() => M {
            wall,
            cpu: cpu(libc::RUSAGE_CHILDREN) - c0,
        },
        Ok(o) => panic!(
            "{} {args:?} failed: {}",
            prog.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run {}: {e}", prog.display()),
    }
}

/// Runs `f` in this process and measures it.
fn in_process<F: FnOnce()>(f: F) -> M {
    let c0 = cpu(libc::RUSAGE_SELF);
    let t = Instant::now();
    f();
    M {
        wall: t.elapsed(),
        cpu: cpu(libc::RUSAGE_SELF) - c0,
    }
}

/// Best of `reps` alternating runs of `ours` and `theirs`.
fn duel(reps: u64, mut ours: impl FnMut() -> M, mut theirs: impl FnMut() -> M) -> (M, M) {
    let best = |acc: &mut Option<M>, m: M| {
        let a = acc.get_or_insert(m);
        a.wall = a.wall.min(m.wall);
        a.cpu = a.cpu.min(m.cpu);
    };
    let (mut o, mut t) = (None, None);
    for _ in 0..reps {
        best(&mut t, theirs());
        best(&mut o, ours());
    }
    (o.unwrap_or_default(), t.unwrap_or_default())
}

/// 1 MiB of random data every other MiB; the rest is a hole.
fn make_source(path: &Path, size: u64) {
    let f = File::create(path).expect("create source");
    f.set_len(size).expect("set_len");
    let mut rng = Rng(0x1234_5678);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        for c in buf.chunks_exact_mut(8) {
            c.copy_from_slice(&rng.next().to_le_bytes());
        }
        let n = (size - off).min(buf.len() as u64) as usize;
        f.write_all_at(&buf[..n], off).expect("write source");
        off += 2 << 20;
    }
    f.sync_all().expect("sync");
}

fn same(a: &Path, b: &Path) -> bool {
    let (fa, fb) = (
        File::open(a).expect("open a"),
        File::open(b).expect("open b"),
    );
    let len = fa.metadata().expect("stat").len();
    if len != fb.metadata().expect("stat").len() {
        return false;
    }
    let (mut x, mut y) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(x.len() as u64) as usize;
        fa.read_exact_at(&mut x[..n], off).expect("read a");
        fb.read_exact_at(&mut y[..n], off).expect("read b");
        if x[..n] != y[..n] {
            return false;
        }
        off += n as u64;
    }
    true
}

fn offsets(n: u64, size: u64, seed: u64) -> Vec<u64> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.next() % (size / 4096) * 4096).collect()
}

/// qemu-io with `cmds` (process start and image open included; see [`qemu_io_base`]).
fn qemu_io(img: &Path, cmds: &[String]) -> M {
    let bin = Path::new("qemu-io");
    let img_s = img.to_str().expect("utf-8");
    let mut args: Vec<&str> = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img_s);
    run(bin, &args)
}

/// Best-of-`reps` cost of starting qemu-io, opening the image and doing one 4 KiB read:
/// subtracted from the qemu-io figures so that both sides count only the I/O.
fn qemu_io_base(img: &Path, reps: u64) -> M {
    let bin = Path::new("qemu-io");
    let img_s = img.to_str().expect("utf-8");
    let mut best: Option<M> = None;
    for _ in 0..reps.max(3) {
        let m = run(bin, &["-f", "qcow2", "-c", "read -q 0 4k", img_s]);
        let b = best.get_or_insert(m);
        b.wall = b.wall.min(m.wall);
        b.cpu = b.cpu.min(m.cpu);
    }
    best.unwrap_or_default()
}

/// Requests in flight per qemu-io aio batch.
const AIO_DEPTH: usize = 16;

/// qemu-io asynchronous commands in batches of [`AIO_DEPTH`], each batch drained by
/// `aio_flush` (thousands of requests in flight at once make qemu-io quadratic).
fn aio_batches(offs: &[u64], cmd: &str) -> Vec<String> {
    let mut v = Vec::new();
    for chunk in offs.chunks(AIO_DEPTH) {
        v.extend(chunk.iter().map(|o| format!("{cmd} {o} 4k")));
        v.push("aio_flush".into());
    }
    v
}

fn copy(src: &Path, dst: &Path) {
    let ok = Command::new("cp")
        .args(["--sparse=always"])
        .arg(src)
        .arg(dst)
        .status()
        .map(|s| s.success());
    assert!(
        matches!(ok, Ok(true)),
        "cp {} {}",
        src.display(),
        dst.display()
    );
    settle();
}

struct Row {
    name: &'static str,
    baseline: &'static str,
    ours: M,
    theirs: M,
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/ferrovm-img-bench".into()),
    );
    std::fs::create_dir_all(&dir).expect("bench dir");
    let size = env_u64("IMG_BENCH_SIZE_MB", 1024) << 20;
    let ops = env_u64("IMG_BENCH_OPS", 20000);
    let reps = env_u64("IMG_BENCH_REPS", 5);
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let ferrovm = exe_dir.join("ferrovm");
    assert!(
        ferrovm.exists(),
        "{} missing: cargo build --release -p ferrovm",
        ferrovm.display()
    );
    let qemu_img = PathBuf::from("qemu-img");
    let version = Command::new(&qemu_img)
        .arg("--version")
        .output()
        .expect("qemu-img is required");
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();

    let p = |n: &str| dir.join(n);
    let s = |p: &Path| p.to_str().expect("utf-8").to_string();
    println!(
        "img-bench: dir {}, {} MiB image (half data), {ops} random 4 KiB ops, best of {reps}; {version}",
        dir.display(),
        size >> 20
    );
    make_source(&p("src.raw"), size);
    let mut rows = Vec::new();
    let (src, fq, qq, fr, qr) = (
        s(&p("src.raw")),
        s(&p("f.qcow2")),
        s(&p("q.qcow2")),
        s(&p("f.raw")),
        s(&p("q.raw")),
    );

    for cache in ["unsafe", "writeback"] {
        let (ours, theirs) = duel(
            reps,
            || {
                fresh(&fq);
                run(
                    &ferrovm,
                    &[
                        "img", "convert", "-t", cache, "-f", "raw", "-O", "qcow2", &src, &fq,
                    ],
                )
            },
            || {
                fresh(&qq);
                run(
                    &qemu_img,
                    &[
                        "convert", "-t", cache, "-f", "raw", "-O", "qcow2", &src, &qq,
                    ],
                )
            },
        );
        let name = if cache == "unsafe" {
            "convert raw -> qcow2"
        } else {
            "convert raw -> qcow2, -t writeback"
        };
        rows.push(Row {
            name,
            baseline: "qemu-img convert",
            ours,
            theirs,
        });
        // Both read the qemu-made image.
        let (ours, theirs) = duel(
            reps,
            || {
                fresh(&fr);
                run(
                    &ferrovm,
                    &[
                        "img", "convert", "-t", cache, "-f", "qcow2", "-O", "raw", &qq, &fr,
                    ],
                )
            },
            || {
                fresh(&qr);
                run(
                    &qemu_img,
                    &["convert", "-t", cache, "-f", "qcow2", "-O", "raw", &qq, &qr],
                )
            },
        );
        let name = if cache == "unsafe" {
            "convert qcow2 -> raw"
        } else {
            "convert qcow2 -> raw, -t writeback"
        };
        rows.push(Row {
            name,
            baseline: "qemu-img convert",
            ours,
            theirs,
        });
    }
    assert!(
        same(&p("f.raw"), &p("src.raw")) && same(&p("q.raw"), &p("src.raw")),
        "converted images differ"
    );
    run(&qemu_img, &["convert", "-O", "raw", &fq, &qr]);
    assert!(
        same(&p("q.raw"), &p("src.raw")),
        "ferrovm's qcow2 differs from the source"
    );

    let base = qemu_io_base(&p("q.qcow2"), reps);
    // Random 4 KiB reads on the qcow2 image.
    let read_offs = offsets(ops, size, 42);
    let read_ours = || {
        settle();
        let img = block::open(&p("q.qcow2"), &OpenOptions::default()).expect("open");
        let mut buf = vec![0u8; 4096];
        in_process(|| {
            for &o in &read_offs {
                img.read_at(&mut buf, o).expect("read");
            }
        })
    };
    let cmds: Vec<String> = read_offs
        .iter()
        .map(|o| format!("read -q {o} 4k"))
        .collect();
    let (ours, theirs) = duel(reps, read_ours, || qemu_io(&p("q.qcow2"), &cmds));
    rows.push(Row {
        name: "random 4K reads",
        baseline: "qemu-io read",
        ours,
        theirs: theirs.minus(base),
    });
    let acmds = aio_batches(&read_offs, "aio_read -q");
    let (ours, theirs) = duel(reps, read_ours, || qemu_io(&p("q.qcow2"), &acmds));
    rows.push(Row {
        name: "random 4K reads",
        baseline: "qemu-io aio_read, 16 in flight",
        ours,
        theirs: theirs.minus(base),
    });

    // Random 4 KiB writes (about half into allocated clusters, half allocating), then flush.
    let write_offs = offsets(ops, size, 43);
    let write_ours = || {
        copy(&p("q.qcow2"), &p("w.qcow2"));
        let img = block::open(
            &p("w.qcow2"),
            &OpenOptions {
                writable: true,
                ..Default::default()
            },
        )
        .expect("open");
        let buf = vec![0x5au8; 4096];
        in_process(|| {
            for &o in &write_offs {
                img.write_at(&buf, o).expect("write");
            }
            img.flush().expect("flush");
        })
    };
    let mut cmds: Vec<String> = write_offs
        .iter()
        .map(|o| format!("write -q -P 0x5a {o} 4k"))
        .collect();
    cmds.push("flush".into());
    let (ours, theirs) = duel(reps, write_ours, || {
        copy(&p("q.qcow2"), &p("w.qcow2"));
        qemu_io(&p("w.qcow2"), &cmds)
    });
    rows.push(Row {
        name: "random 4K writes + flush",
        baseline: "qemu-io write",
        ours,
        theirs: theirs.minus(base),
    });
    let mut acmds = aio_batches(&write_offs, "aio_write -q -P 0x5a");
    acmds.push("flush".into());
    let (ours, theirs) = duel(reps, write_ours, || {
        copy(&p("q.qcow2"), &p("w.qcow2"));
        qemu_io(&p("w.qcow2"), &acmds)
    });
    rows.push(Row {
        name: "random 4K writes + flush",
        baseline: "qemu-io aio_write, 16 in flight",
        ours,
        theirs: theirs.minus(base),
    });
    // The block crate's result is a valid image with the same contents as qemu's.
    write_ours();
    let check = Command::new(&qemu_img)
        .args(["check", &s(&p("w.qcow2"))])
        .output()
        .expect("qemu-img check");
    assert!(
        check.status.success(),
        "ferrovm-written image fails qemu-img check"
    );

    println!();
    println!(
        "qemu-io start + open + one read (subtracted from the qemu-io figures): {:.3} s wall, {:.3} s CPU",
        base.wall.as_secs_f64(),
        base.cpu.as_secs_f64()
    );
    println!("| benchmark | baseline | ferrovm wall | baseline wall | wall ratio | ferrovm CPU | baseline CPU | CPU ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-6);
    for r in &rows {
        println!(
            "| {} | {} | {:.3} s | {:.3} s | {:.2}x | {:.3} s | {:.3} s | {:.2}x |",
            r.name,
            r.baseline,
            r.ours.wall.as_secs_f64(),
            r.theirs.wall.as_secs_f64(),
            ratio(r.theirs.wall, r.ours.wall),
            r.ours.cpu.as_secs_f64(),
            r.theirs.cpu.as_secs_f64(),
            ratio(r.theirs.cpu, r.ours.cpu),
        );
    }
    for f in ["src.raw", "f.qcow2", "q.qcow2", "f.raw", "q.raw", "w.qcow2"] {
        let _ = std::fs::remove_file(p(f));
    }
}
