//! Helpers shared by the integration tests: temp dirs, a deterministic RNG, and the QEMU
//! tools (tests that need them fail loudly when they are missing).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("ferrovm-block-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: deterministic pseudo-random numbers.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs a QEMU tool; panics with a clear message if it is not installed or fails.
pub fn tool(name: &str, args: &[&str]) -> Output {
    let out = Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} is required for this test but could not be run ({e}); install qemu-utils (scripts/setup.sh)")
    });
    if !out.status.success() {
        panic!(
            "{name} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a QEMU tool and returns its output whatever the exit status.
pub fn tool_status(name: &str, args: &[&str]) -> Output {
    Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} is required for this test but could not be run ({e}); install qemu-utils (scripts/setup.sh)")
    })
}

pub fn qemu_img(args: &[&str]) -> Output {
    tool("qemu-img", args)
}

pub fn qemu_io(fmt: &str, file: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let f = file.to_str().expect("utf-8 path");
    args.push(f);
    tool("qemu-io", &args);
}

/// `qemu-img convert -O raw` of an image, returned as bytes.
pub fn qemu_raw(file: &Path, dir: &TempDir) -> Vec<u8> {
    let out = dir.path("qemu-view.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        file.to_str().expect("utf-8"),
        out.to_str().expect("utf-8"),
    ]);
    let v = std::fs::read(&out).expect("read converted image");
    let _ = std::fs::remove_file(&out);
    v
}

/// Options to open an image read-write, its format probed.
pub fn writable() -> block::OpenOptions {
    block::OpenOptions {
        writable: true,
        format: None,
        ..Default::default()
    }
}

/// Our view of an image: every byte through the block crate.
pub fn our_view(file: &Path) -> Vec<u8> {
    let img = block::open(file, &block::OpenOptions::default()).expect("open image");
    let mut v = vec![0u8; img.size() as usize];
    // Read in odd-sized chunks to exercise partial clusters.
    let mut pos = 0usize;
    let mut step = 3 * 4096 + 512 + 17;
    while pos < v.len() {
        let n = step.min(v.len() - pos);
        img.read_at(&mut v[pos..pos + n], pos as u64).expect("read");
        pos += n;
        step = step * 2 % (1 << 20) + 1;
    }
    v
}

/// `qemu-img check` exit status (0 clean, 2 corruption, 3 leaks), with its output.
pub fn qemu_check(file: &Path) -> (i32, String) {
    let out = tool_status("qemu-img", &["check", file.to_str().expect("utf-8")]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Compares two views and reports the first difference.
pub fn assert_same(ours: &[u8], theirs: &[u8], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: sizes differ");
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i:#x}: ours {:#x}, qemu {:#x}",
            ours[i], theirs[i]
        );
    }
}
