//! `ferrovm img` / block crate vs `qemu-img` / `qemu-io`, same machine, same run.
//!
//! Usage: `cargo build --release -p ferrovm -p img-bench && target/release/img-bench [DIR]`
//! (env: `IMG_BENCH_SIZE_MB` (default 1024), `IMG_BENCH_OPS` (default 20000),
//! `IMG_BENCH_REPS` (default 3)). Prints the best of REPS runs for each figure and the
//! ratio qemu time / ferrovm time (> 1.0 means ferrovm is faster).

use block::OpenOptions;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Writes back all dirty page-cache data so that one run's writeback does not bill the next.
fn settle() {
    let _ = Command::new("sync").status();
}

fn run(prog: &Path, args: &[&str]) -> Duration {
    settle();
    let t = Instant::now();
    let out = Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let elapsed = t.elapsed();
    match out {
        Ok(o) if o.status.success() => elapsed,
        Ok(o) => panic!(
            "{} {args:?} failed: {}",
            prog.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run {}: {e}", prog.display()),
    }
}

fn best<F: FnMut() -> Duration>(reps: u64, mut f: F) -> Duration {
    (0..reps).map(|_| f()).min().unwrap_or_default()
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

/// qemu-io with `cmds`, minus the cost of starting qemu-io and opening the image (measured
/// with a single command).
fn qemu_io(qemu_io: &Path, img: &Path, cmds: &[String]) -> Duration {
    let mut args: Vec<&str> = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let img_s = img.to_str().expect("utf-8");
    args.push(img_s);
    let full = run(qemu_io, &args);
    let base = run(qemu_io, &["-f", "qcow2", "-c", "read -q 0 4k", img_s]);
    full.saturating_sub(base)
}

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

/// Requests in flight per qemu-io aio batch.
const AIO_DEPTH: usize = 16;

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
}

struct Row {
    name: String,
    ours: Duration,
    theirs: Duration,
    baseline: &'static str,
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
    let reps = env_u64("IMG_BENCH_REPS", 3);
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
    let qemu_io_bin = PathBuf::from("qemu-io");
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
        "img-bench: {} MiB image (half data), {ops} random 4 KiB ops, best of {reps}; {version}",
        size >> 20
    );
    make_source(&p("src.raw"), size);
    let mut rows = Vec::new();

    // convert raw -> qcow2
    let (src, fq, qq) = (s(&p("src.raw")), s(&p("f.qcow2")), s(&p("q.qcow2")));
    let theirs = best(reps, || {
        run(
            &qemu_img,
            &["convert", "-f", "raw", "-O", "qcow2", &src, &qq],
        )
    });
    let ours = best(reps, || {
        run(
            &ferrovm,
            &["img", "convert", "-f", "raw", "-O", "qcow2", &src, &fq],
        )
    });
    rows.push(Row {
        name: "convert raw -> qcow2".into(),
        ours,
        theirs,
        baseline: "qemu-img convert",
    });

    // The same with the output flushed to disk (-t writeback).
    let theirs = best(reps, || {
        run(
            &qemu_img,
            &[
                "convert",
                "-t",
                "writeback",
                "-f",
                "raw",
                "-O",
                "qcow2",
                &src,
                &qq,
            ],
        )
    });
    let ours = best(reps, || {
        run(
            &ferrovm,
            &[
                "img",
                "convert",
                "-t",
                "writeback",
                "-f",
                "raw",
                "-O",
                "qcow2",
                &src,
                &fq,
            ],
        )
    });
    rows.push(Row {
        name: "convert raw -> qcow2, -t writeback".into(),
        ours,
        theirs,
        baseline: "qemu-img convert",
    });

    // convert qcow2 -> raw (both read the qemu-made image)
    let (fr, qr) = (s(&p("f.raw")), s(&p("q.raw")));
    let theirs = best(reps, || {
        run(
            &qemu_img,
            &["convert", "-f", "qcow2", "-O", "raw", &qq, &qr],
        )
    });
    let ours = best(reps, || {
        run(
            &ferrovm,
            &["img", "convert", "-f", "qcow2", "-O", "raw", &qq, &fr],
        )
    });
    rows.push(Row {
        name: "convert qcow2 -> raw".into(),
        ours,
        theirs,
        baseline: "qemu-img convert",
    });
    assert!(
        same(&p("f.raw"), &p("src.raw")) && same(&p("q.raw"), &p("src.raw")),
        "converted images differ"
    );
    let theirs = best(reps, || {
        run(
            &qemu_img,
            &[
                "convert",
                "-t",
                "writeback",
                "-f",
                "qcow2",
                "-O",
                "raw",
                &qq,
                &qr,
            ],
        )
    });
    let ours = best(reps, || {
        run(
            &ferrovm,
            &[
                "img",
                "convert",
                "-t",
                "writeback",
                "-f",
                "qcow2",
                "-O",
                "raw",
                &qq,
                &fr,
            ],
        )
    });
    rows.push(Row {
        name: "convert qcow2 -> raw, -t writeback".into(),
        ours,
        theirs,
        baseline: "qemu-img convert",
    });
    // ferrovm's qcow2 converts back to the source too.
    run(&qemu_img, &["convert", "-O", "raw", &fq, &qr]);
    assert!(same(&p("q.raw"), &p("src.raw")), "ferrovm qcow2 differs");

    // Random 4 KiB reads on the qcow2 image.
    let read_offs = offsets(ops, size, 42);
    let ours = best(reps, || {
        settle();
        let img = block::open(&p("q.qcow2"), &OpenOptions::default()).expect("open");
        let mut buf = vec![0u8; 4096];
        let t = Instant::now();
        for &o in &read_offs {
            img.read_at(&mut buf, o).expect("read");
        }
        t.elapsed()
    });
    let cmds: Vec<String> = read_offs
        .iter()
        .map(|o| format!("read -q {o} 4k"))
        .collect();
    let theirs = best(reps, || qemu_io(&qemu_io_bin, &p("q.qcow2"), &cmds));
    rows.push(Row {
        name: "random 4K reads (sync)".into(),
        ours,
        theirs,
        baseline: "qemu-io read",
    });
    let acmds = aio_batches(&read_offs, "aio_read -q");
    let theirs = best(reps, || qemu_io(&qemu_io_bin, &p("q.qcow2"), &acmds));
    rows.push(Row {
        name: "random 4K reads".into(),
        ours,
        theirs,
        baseline: "qemu-io aio_read, depth 16",
    });

    // Random 4 KiB writes (half into allocated clusters, half allocating), then flush.
    let write_offs = offsets(ops, size, 43);
    let ours = best(reps, || {
        copy(&p("q.qcow2"), &p("w.qcow2"));
        settle();
        let img = block::open(
            &p("w.qcow2"),
            &OpenOptions {
                writable: true,
                format: None,
                ..Default::default()
            },
        )
        .expect("open");
        let buf = vec![0x5au8; 4096];
        let t = Instant::now();
        for &o in &write_offs {
            img.write_at(&buf, o).expect("write");
        }
        img.flush().expect("flush");
        t.elapsed()
    });
    let check = Command::new(&qemu_img)
        .args(["check", &s(&p("w.qcow2"))])
        .output()
        .expect("qemu-img check");
    assert!(
        check.status.success(),
        "ferrovm-written image fails qemu-img check"
    );
    let mut cmds: Vec<String> = write_offs
        .iter()
        .map(|o| format!("write -q -P 0x5a {o} 4k"))
        .collect();
    cmds.push("flush".into());
    let theirs = best(reps, || {
        copy(&p("q.qcow2"), &p("w.qcow2"));
        settle();
        qemu_io(&qemu_io_bin, &p("w.qcow2"), &cmds)
    });
    rows.push(Row {
        name: "random 4K writes + flush (sync)".into(),
        ours,
        theirs,
        baseline: "qemu-io write",
    });
    let mut acmds = aio_batches(&write_offs, "aio_write -q -P 0x5a");
    acmds.push("flush".into());
    let theirs = best(reps, || {
        copy(&p("q.qcow2"), &p("w.qcow2"));
        settle();
        qemu_io(&qemu_io_bin, &p("w.qcow2"), &acmds)
    });
    rows.push(Row {
        name: "random 4K writes + flush".into(),
        ours,
        theirs,
        baseline: "qemu-io aio_write, depth 16",
    });

    println!();
    println!("| benchmark | ferrovm | baseline | baseline time | ratio (baseline/ferrovm) |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.3} s | {} | {:.3} s | {:.2}x |",
            r.name,
            r.ours.as_secs_f64(),
            r.baseline,
            r.theirs.as_secs_f64(),
            r.theirs.as_secs_f64() / r.ours.as_secs_f64().max(1e-9)
        );
    }
    for f in ["src.raw", "f.qcow2", "q.qcow2", "f.raw", "q.raw", "w.qcow2"] {
        let _ = std::fs::remove_file(p(f));
    }
}
