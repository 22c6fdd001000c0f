//! Crash safety: a child process does random writes and flushes and is SIGKILLed at a random
//! moment. Afterwards `qemu-img check` must report no corruption (leaks are allowed) and
//! every write acknowledged by a completed flush must be readable.

mod common;

use block::qcow2::{self, CreateOptions};
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "FERROVM_CRASH_CHILD_IMAGE";
const SEED_ENV: &str = "FERROVM_CRASH_CHILD_SEED";

/// Write number `i` of a run: (offset, data).
fn op(seed: u64, i: u64, size: u64, cs: u64) -> (u64, Vec<u8>) {
    let mut rng = Rng(seed ^ (i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
    let off = match rng.below(3) {
        0 => rng.below(size / cs) * cs, // cluster aligned
        _ => rng.below(size),
    };
    let len = (rng.below(3 * cs) + 1).min(size - off).min(256 * 1024);
    let data = (0..len)
        .map(|j| (i as u8).wrapping_mul(97).wrapping_add((j % 251) as u8) | 1)
        .collect();
    (off, data)
}

/// The child: writes forever, announcing each write before it starts ("B i") and each
/// completed flush ("F i" = writes 0..=i are durable).
#[test]
#[ignore = "helper process of crash_kill_stress"]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let img = block::open(Path::new(&path), &writable()).expect("child open");
    let size = img.size();
    let cs = img.info().cluster_size.unwrap_or(65536);
    let mut out = std::io::stdout().lock();
    for i in 0..1_000_000u64 {
        let (off, data) = op(seed, i, size, cs);
        writeln!(out, "B {i}")
            .and_then(|_| out.flush())
            .expect("pipe");
        img.write_at(&data, off).expect("child write");
        if i % 7 == 6 {
            img.flush().expect("child flush");
            writeln!(out, "F {i}")
                .and_then(|_| out.flush())
                .expect("pipe");
        }
    }
}

fn run_once(
    dir: &TempDir,
    cs: u64,
    refbits: u32,
    with_backing: bool,
    seed: u64,
    kill_after: Duration,
) {
    let size = 4u64 << 20;
    let img = dir.path(&format!("crash-{cs}-{refbits}-{seed}.qcow2"));
    let mut initial = vec![0u8; size as usize];
    let backing = if with_backing {
        let b = dir.path(&format!("base-{seed}.raw"));
        let mut rng = Rng(seed + 5);
        initial.iter_mut().for_each(|x| *x = rng.next() as u8);
        std::fs::write(&b, &initial).expect("write base");
        Some(
            b.file_name()
                .and_then(|n| n.to_str())
                .expect("name")
                .to_string(),
        )
    } else {
        None
    };
    let o = CreateOptions {
        size,
        cluster_size: cs,
        refcount_bits: refbits,
        backing_format: backing.as_ref().map(|_| "raw".to_string()),
        backing_file: backing,
        ..Default::default()
    };
    qcow2::create(&img, &o).expect("create");

    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &img)
        .env(SEED_ENV, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let reader = std::thread::spawn(move || {
        let (mut started, mut flushed): (Option<u64>, Option<u64>) = (None, None);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut it = line.split_whitespace();
            match (it.next(), it.next().and_then(|n| n.parse::<u64>().ok())) {
                (Some("B"), Some(n)) => started = Some(n),
                (Some("F"), Some(n)) => flushed = Some(n),
                _ => {}
            }
        }
        (started, flushed)
    });
    let t0 = Instant::now();
    while t0.elapsed() < kill_after {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("child exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL child");
    let _ = child.wait();
    let (started, flushed) = reader.join().expect("reader thread");
    let started = started.expect("child never started writing");
    assert!(
        flushed.is_some(),
        "child made no flush before the kill (started {started})"
    );
    eprintln!("cluster {cs}: killed after {started} writes, last flush after write {flushed:?}");

    let (code, text) = qemu_check(&img);
    assert!(
        code == 0 || code == 3,
        "cluster {cs} refbits {refbits} seed {seed}: corruption after kill:\n{text}"
    );

    // Expected contents: writes up to the last flush; ranges of later writes are unknown.
    let mut model = initial;
    let mut known = vec![true; size as usize];
    let last_flushed = flushed.map_or(0, |f| f + 1);
    for i in 0..=started {
        let (off, data) = op(seed, i, size, cs);
        let r = off as usize..off as usize + data.len();
        if i < last_flushed {
            model[r.clone()].copy_from_slice(&data);
            known[r].fill(true);
        } else {
            known[r].fill(false);
        }
    }
    let check = |view: &[u8], who: &str| {
        for (i, ((&a, &b), &k)) in view.iter().zip(&model).zip(&known).enumerate() {
            assert!(
                !k || a == b,
                "{who}: byte {i:#x} lost after kill (cs {cs}, seed {seed}, flushed {flushed:?})"
            );
        }
    };
    check(&qemu_raw(&img, dir), "qemu view");
    check(&our_view(&img), "our view");

    // Leaks are repairable, and the image stays writable.
    let r = qcow2::check::check(&img, qcow2::check::Repair::Leaks).expect("repair");
    assert_eq!((r.corruptions, r.leaks), (0, 0), "{:?}", r.messages);
    {
        let q = block::open(&img, &writable()).expect("reopen");
        q.write_at(&[0x5c; 3000], 12345).expect("write after crash");
        q.flush().expect("flush");
    }
    let (code, text) = qemu_check(&img);
    assert_eq!(code, 0, "after repair and rewrite:\n{text}");
}

#[test]
fn crash_kill_stress() {
    // Fail loudly up front if qemu-img is missing.
    qemu_img(&["--version"]);
    let dir = TempDir::new("crash");
    let mut rng = Rng(0xc0ffee);
    let configs = [
        (512u64, 16u32, false),
        (4096, 1, true),
        (65536, 16, false),
        (65536, 64, true),
        (1024, 8, false),
        (2048, 16, true),
    ];
    for (n, &(cs, rb, backing)) in configs.iter().enumerate() {
        let ms = 80 + rng.below(400);
        run_once(
            &dir,
            cs,
            rb,
            backing,
            n as u64 + 1,
            Duration::from_millis(ms),
        );
    }
}
