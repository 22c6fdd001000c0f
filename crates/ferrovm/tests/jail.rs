//! `ferrovm run --jail` on /dev/kvm directly with a raw guest: the jailed VMM serves its
//! API from inside the jail, runs as the unprivileged uid with no capability, in PID,
//! mount and IPC namespaces of its own, with a root that holds only what the VM needs;
//! its outputs land inside the jail; the parent relays SIGTERM and the exit code. And the
//! refusals: no --uid, --uid 0, not root, --cgroup without cgroup v2.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A real-mode guest that writes port 0x80 forever: `out 0x80, al; jmp $-2`.
const PORT_LOOP: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfc];
const NOBODY: &str = "65534";

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the jail tests may run: they need root (and /dev/kvm). Not root fails loudly
/// unless `FERROVM_SKIP_ROOT=1` says to skip.
fn can_jail(test: &str) -> bool {
    if !kvm_available(test) {
        return false;
    }
    if is_root() {
        return true;
    }
    if std::env::var("FERROVM_SKIP_ROOT").as_deref() == Ok("1") {
        eprintln!("*** SKIPPED {test}: not root and FERROVM_SKIP_ROOT=1 ***");
        return false;
    }
    panic!("{test}: --jail needs root; run the tests as root or set FERROVM_SKIP_ROOT=1 to skip them explicitly");
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrovm")
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn child_of(pid: u32) -> u32 {
    let mut found = 0;
    wait_for("the jailed child", || {
        let list =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        found = list
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        found != 0
    });
    found
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn finish(mut child: Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (st.code(), String::from_utf8_lossy(&out.stderr).into_owned());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferrovm did not end");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn jailed_raw_guest_serves_its_api_from_inside_unprivileged_and_alone() {
    if !can_jail("jailed_raw_guest_serves_its_api_from_inside_unprivileged_and_alone") {
        return;
    }
    let image = write_image("jail-loop", &PORT_LOOP);
    let dir = tmp_path("jail-root");
    let _ = std::fs::remove_dir_all(&dir);
    let vm = spawn(&[
        "run",
        "--jail",
        dir.to_str().unwrap(),
        "--uid",
        NOBODY,
        "--gid",
        NOBODY,
        "--id",
        "jail-test",
        "--api-sock",
        "/run/vm.sock",
        "--stats-json",
        "/out/stats.json",
        "--raw",
        image.to_str().unwrap(),
    ]);
    let sock = dir.join("run/vm.sock");
    wait_for("the API socket inside the jail", || sock.exists());
    let jailed = child_of(vm.id());

    // The API answers on the socket inside the jail.
    let out = Command::new("/usr/bin/curl")
        .args(["-s", "--max-time", "10", "--unix-socket"])
        .arg(&sock)
        .arg("http://localhost/")
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(r#""state":"Running""#), "{text}");

    // Unprivileged: the uid and gid asked for, no capability left, no way back.
    assert_eq!(status_field(jailed, "Uid:"), "65534 65534 65534 65534");
    assert_eq!(status_field(jailed, "Gid:"), "65534 65534 65534 65534");
    assert_eq!(status_field(jailed, "Groups:"), "65534");
    for caps in ["CapPrm:", "CapEff:", "CapBnd:", "CapAmb:", "CapInh:"] {
        assert_eq!(status_field(jailed, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(jailed, "NoNewPrivs:"), "1");

    // Namespaces of its own; PID 1 of its PID namespace, which holds nothing else.
    for ns in ["pid", "mnt", "ipc"] {
        let theirs = std::fs::read_link(format!("/proc/{jailed}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace");
    }
    let root = PathBuf::from(format!("/proc/{jailed}/root"));
    let pids: Vec<String> = names(&root.join("proc"))
        .into_iter()
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(pids, ["1"], "the jail's /proc shows only the VMM");
    assert_eq!(
        std::fs::read_to_string(root.join("proc/1/comm"))
            .unwrap()
            .trim(),
        "ferrovm"
    );

    // Its root holds only what the VM needs: no host files, a /dev with four nodes.
    let top = names(&root);
    for host_only in ["etc", "usr", "home", "bin", "root", "sys", "var"] {
        assert!(
            !top.contains(&host_only.to_string()),
            "{host_only} in {top:?}"
        );
    }
    assert_eq!(names(&root.join("dev")), ["kvm", "null", "urandom", "zero"]);
    assert!(root.join(image.strip_prefix("/").unwrap()).is_file());
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join(image.strip_prefix("/").unwrap()));
    assert!(written.is_err(), "the image is read-only in the jail");

    // SIGTERM to the parent reaches the VM, which ends cleanly; its statistics landed
    // inside the jail.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(vm.id() as i32, libc::SIGTERM) };
    let (code, err) = finish(vm);
    assert_eq!(code, Some(128 + libc::SIGTERM), "{err}");
    assert!(err.contains("terminated by signal 15"), "{err}");
    let stats = std::fs::read_to_string(dir.join("out/stats.json")).expect("stats inside the jail");
    assert!(stats.contains("\"total\""), "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn jail_refusals_are_clear() {
    if !can_jail("jail_refusals_are_clear") {
        return;
    }
    let image = write_image("jail-refuse", &PORT_LOOP);
    let dir = tmp_path("jail-refused");
    let img = image.to_str().unwrap();
    let d = dir.to_str().unwrap();
    let refused = |args: &[&str], says: &str| {
        let out = ferrovm(args, Duration::from_secs(20));
        assert!(!out.status.success(), "{args:?} ran");
        let err = stderr(&out);
        assert!(err.contains(says), "{args:?}: {err}");
    };
    refused(
        &["run", "--jail", d, "--raw", img],
        "--jail needs --uid and --gid",
    );
    refused(
        &["run", "--jail", d, "--uid", "0", "--gid", "0", "--raw", img],
        "--uid 0 would leave the jailed VMM root",
    );
    refused(&["run", "--uid", NOBODY, "--raw", img], "--jail");
    refused(
        &[
            "run",
            "--jail",
            d,
            "--uid",
            NOBODY,
            "--gid",
            NOBODY,
            "--cgroup",
            "memory.max",
            "--raw",
            img,
        ],
        "expected KEY=VALUE",
    );
    // Not root: refused before anything is made.
    let out = Command::new("/usr/bin/setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ferrovm"))
        .args([
            "run",
            "--jail",
            "/tmp/ferrovm-jail-not-root",
            "--uid",
            NOBODY,
            "--gid",
            NOBODY,
            "--raw",
            img,
        ])
        .output()
        .expect("run setpriv (util-linux)");
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("--jail needs root"),
        "{err}"
    );
    // cgroup limits: refused clearly without cgroup v2, applied with it.
    let cgroup2 = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| {
            l.split_whitespace().nth(1) == Some("/sys/fs/cgroup")
                && l.split_whitespace().nth(2) == Some("cgroup2")
        });
    let limited = [
        "run",
        "--jail",
        d,
        "--uid",
        NOBODY,
        "--gid",
        NOBODY,
        "--id",
        "jail-cg",
        "--cgroup",
        "memory.max=64M,pids.max=64",
        "--raw",
        img,
    ];
    if !cgroup2 {
        refused(&limited, "cgroup v2 is not mounted at /sys/fs/cgroup");
    } else {
        let vm = spawn(&limited);
        let jailed = child_of(vm.id());
        let cg = Path::new("/sys/fs/cgroup/ferrovm/jail-cg");
        wait_for("the jailed child in its cgroup", || {
            std::fs::read_to_string(format!("/proc/{jailed}/cgroup"))
                .is_ok_and(|c| c.contains("/ferrovm/jail-cg"))
        });
        assert_eq!(
            std::fs::read_to_string(cg.join("memory.max"))
                .unwrap()
                .trim(),
            "67108864"
        );
        assert_eq!(
            std::fs::read_to_string(cg.join("pids.max")).unwrap().trim(),
            "64"
        );
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(vm.id() as i32, libc::SIGTERM) };
        let (code, err) = finish(vm);
        assert_eq!(code, Some(128 + libc::SIGTERM), "{err}");
        assert!(!cg.exists(), "the cgroup is removed at exit");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
