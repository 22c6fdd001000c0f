//! Shared helpers for tests that run guest programs on /dev/kvm.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether KVM tests may run. Without a usable /dev/kvm the test fails loudly, unless
/// `FERROVM_SKIP_KVM=1`, in which case it says it is skipped and returns false.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("FERROVM_SKIP_KVM").as_deref() == Ok("1") {
                eprintln!("*** SKIPPED {test}: /dev/kvm unusable ({e}) and FERROVM_SKIP_KVM=1 ***");
                false
            } else {
                panic!("{test}: /dev/kvm is not usable ({e}); set FERROVM_SKIP_KVM=1 to skip KVM tests explicitly");
            }
        }
    }
}

/// Writes `bytes` to a fresh file under the test's temporary directory.
pub fn write_image(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest-images");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.bin", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A temporary output path.
pub fn tmp_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest-out");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}-{}", std::process::id()))
}

/// Runs `ferrovm ARGS` with stdin closed, killing it after `timeout`.
pub fn ferrovm(args: &[&str], timeout: Duration) -> Output {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernel-cache");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(args)
        .env("FERROVM_CACHE_DIR", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrovm");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ferrovm {args:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a raw guest image with extra arguments.
pub fn run_raw(name: &str, code: &[u8], extra: &[&str]) -> Output {
    let img = write_image(name, code);
    let mut args = vec!["run", "--raw", img.to_str().unwrap()];
    args.extend_from_slice(extra);
    ferrovm(&args, Duration::from_secs(60))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
