//! Snapshots on /dev/kvm directly: a raw guest counting in memory and on the serial port is
//! paused, snapshotted over the API and killed; a new ferrovm restores it and the count
//! continues where it stopped. Bad snapshot files are refused before anything runs.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Real mode: `mov dx, 0x3f8; l: inc dword [c]; mov al, [c]; out dx, al; jmp l; c: dd 0`.
const COUNTER: [u8; 18] = [
    0xba, 0xf8, 0x03, 0x66, 0xff, 0x06, 0x0e, 0x00, 0xa0, 0x0e, 0x00, 0xee, 0xeb, 0xf5, 0, 0, 0, 0,
];

fn curl(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let out = Command::new("/usr/bin/curl")
        .args(["-s", "--max-time", "20", "--unix-socket"])
        .arg(sock)
        .args(["-X", method, "-w", "\n%{http_code}", "-d", body])
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("curl (Debian package curl, installed by scripts/setup.sh)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (b, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), b.to_string())
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn raw_guest_counts_on_after_snapshot_kill_and_restore() {
    if !kvm_available("raw_guest_counts_on_after_snapshot_kill_and_restore") {
        return;
    }
    let image = write_image("snap-counter", &COUNTER);
    let dir = tmp_path("snap-raw");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let out1 = dir.join("out1");
    let mut vm = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--mem", "16M", "--raw"])
        .arg(&image)
        .arg("--api-sock")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out1).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&sock);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&out1).unwrap().len() < 1000 {
        assert!(Instant::now() < deadline, "the guest prints nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Only a paused VM can be snapshotted.
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        mem.display()
    );
    let (code, text) = curl(&sock, "PUT", "/snapshot/create", &body);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("paused"), "{text}");
    assert_eq!(curl(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    // Console output already emitted reaches the file; then nothing more comes.
    std::thread::sleep(Duration::from_millis(300));
    let (code, text) = curl(&sock, "PUT", "/snapshot/create", &body);
    assert_eq!(code, 204, "{text}");
    vm.kill().unwrap();
    vm.wait().unwrap();
    let printed = std::fs::read(&out1).unwrap();
    let last = *printed.last().unwrap();
    // The memory file is sparse: a 16 MiB guest that touched a few pages.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&mem).unwrap();
    assert_eq!(m.len(), 16 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} bytes allocated",
        m.blocks() * 512
    );
    // ferrovm snapshot info reads it back.
    let info = ferrovm(
        &["snapshot", "info", state.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(info.status.code(), Some(0), "{}", stderr(&info));
    assert!(
        stdout(&info).contains("1 vCPU(s), 16 MiB"),
        "{}",
        stdout(&info)
    );

    // A new process restores it and the count goes on from the next value.
    let mut restored = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .arg("run")
        .arg("--restore")
        .arg(&state)
        .arg("--mem-file")
        .arg(&mem)
        .arg("--resume")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    restored
        .stdout
        .take()
        .unwrap()
        .read_exact(&mut first)
        .expect("the restored guest prints");
    restored.kill().unwrap();
    let out = restored.wait_with_output().unwrap();
    assert_eq!(
        first[0],
        last.wrapping_add(1),
        "the count continues after restore (last before {last}, then {first:?}); stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in first.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1), "{first:?}");
    }
}

fn snap_files() -> (PathBuf, PathBuf) {
    // One good snapshot to damage in every way.
    let dir = tmp_path("snap-bad");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = write_image("snap-bad-loop", &[0xeb, 0xfe]);
    let sock = dir.join("api.sock");
    let mut vm = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--mem", "8M", "--raw"])
        .arg(&image)
        .arg("--api-sock")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sock);
    let (state, mem) = (dir.join("good.snap"), dir.join("good.mem"));
    assert_eq!(curl(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        mem.display()
    );
    assert_eq!(curl(&sock, "PUT", "/snapshot/create", &body).0, 204);
    vm.kill().unwrap();
    vm.wait().unwrap();
    (state, mem)
}

#[test]
fn damaged_snapshots_are_refused_before_anything_runs() {
    if !kvm_available("damaged_snapshots_are_refused_before_anything_runs") {
        return;
    }
    let (state, mem) = snap_files();
    let good = std::fs::read(&state).unwrap();
    let dir = state.parent().unwrap().to_path_buf();
    let restore = |s: &Path, m: &Path| {
        ferrovm(
            &[
                "run",
                "--restore",
                s.to_str().unwrap(),
                "--mem-file",
                m.to_str().unwrap(),
                "--resume",
            ],
            Duration::from_secs(10),
        )
    };
    let bad = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut flipped = good.clone();
    let mid = good.len() / 2;
    flipped[mid] ^= 1;
    let mut version = good.clone();
    version[8] = 99;
    let mut arch = good.clone();
    arch[12] = 0x42;
    for (file, want) in [
        (bad("truncated.snap", &good[..good.len() - 9]), "truncated"),
        (bad("header.snap", &good[..10]), "truncated"),
        (bad("flipped.snap", &flipped), "corrupted"),
        (bad("version.snap", &version), "format version 99"),
        (bad("arch.snap", &arch), "another architecture"),
        (
            bad("garbage.snap", b"hello, world, this is not a snapshot"),
            "not a ferrovm snapshot",
        ),
    ] {
        let out = restore(&file, &mem);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", file.display());
        assert!(
            err.contains(want),
            "{}: expected {want:?} in {err}",
            file.display()
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // A memory file of the wrong size.
    let short = dir.join("short.mem");
    std::fs::write(&short, vec![0u8; 4096]).unwrap();
    let out = restore(&state, &short);
    assert!(
        stderr(&out).contains("the snapshot's guest has"),
        "{}",
        stderr(&out)
    );
    let out = restore(&state, &dir.join("missing.mem"));
    assert!(stderr(&out).contains("missing.mem"), "{}", stderr(&out));
    // The good pair still restores (the guest loops; it is stopped by the time limit).
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--restore"])
        .arg(&state)
        .arg("--mem-file")
        .arg(&mem)
        .arg("--resume")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the restored guest runs"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
