//! The API on /dev/kvm directly, driven with the client people use (`curl --unix-socket`)
//! and with `ferrovm ctl`: a raw guest configured and booted over the socket, paused (no
//! progress), resumed (progress), its exit profile compared with `--stats-json` at the end;
//! `--config-file`; the errors of a socket path in use and of a VM that cannot start.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A real-mode guest that writes port 0x80 forever: `out 0x80, al; jmp $-2`.
const PORT_LOOP: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfc];
const CURL: &str = "/usr/bin/curl";

fn have_curl() {
    assert!(
        Path::new(CURL).exists(),
        "{CURL} is missing: install Debian's curl (bash scripts/setup.sh does)"
    );
}

/// A ferrovm process serving an API socket; killed when dropped.
struct Served {
    child: Child,
    sock: PathBuf,
}

impl Served {
    fn start(name: &str, extra: &[&str]) -> Served {
        let sock = tmp_path(&format!("{name}.sock"));
        let _ = std::fs::remove_file(&sock);
        let mut args = vec!["run", "--api-sock", sock.to_str().unwrap()];
        args.extend_from_slice(extra);
        let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferrovm");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Served { child, sock }
    }

    /// `curl -X METHOD http://localhost/PATH [-d BODY]`: (status, body).
    fn curl(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new(CURL);
        cmd.args(["-s", "--max-time", "10", "--unix-socket"])
            .arg(&self.sock)
            .args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", b]);
        }
        cmd.arg(format!("http://localhost{path}"));
        let out = cmd.output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            code.trim()
                .parse()
                .unwrap_or_else(|_| panic!("curl {method} {path}: {text}")),
            body.to_string(),
        )
    }

    fn ok(&self, method: &str, path: &str, body: Option<&str>) -> String {
        let (code, text) = self.curl(method, path, body);
        assert!(
            (200..300).contains(&code),
            "{method} {path} {body:?}: {code} {text}"
        );
        text
    }

    fn exits(&self) -> Value {
        serde_json::from_str(&self.ok("GET", "/vm/exits", None)).unwrap()
    }

    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
            .args(["ctl", "--api-sock", self.sock.to_str().unwrap()])
            .args(args)
            .output()
            .expect("run ferrovm ctl");
        (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
    }

    /// Ends the process with SIGTERM and returns its exit code and stderr.
    fn terminate(mut self) -> (Option<i32>, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (st.code(), err);
            }
            assert!(
                Instant::now() < deadline,
                "ferrovm did not end after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_writes(exits: &Value) -> u64 {
    exits["total"]["ports"]["0x0080"]["writes"]["count"]
        .as_u64()
        .unwrap_or(0)
}

fn raw_boot_source(image: &Path) -> String {
    format!(
        r#"{{"kernel_image_path": "{}", "raw": {{"mode": "Real", "load_addr": 65536}}}}"#,
        image.display()
    )
}

#[test]
fn raw_guest_configured_paused_resumed_over_curl() {
    if !kvm_available("raw_guest_configured_paused_resumed_over_curl") {
        return;
    }
    have_curl();
    let image = write_image("api-loop", &PORT_LOOP);
    let stats = tmp_path("api-stats.json");
    let vm = Served::start("api-raw", &["--stats-json", stats.to_str().unwrap()]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&vm.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket is private");

    let info: Value = serde_json::from_str(&vm.ok("GET", "/", None)).unwrap();
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "ferrovm");
    // Runtime requests are refused before the boot, with Firecracker's wording.
    let (code, text) = vm.curl("PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(code, 400);
    assert!(
        text.contains("not supported before starting the microVM"),
        "{text}"
    );
    // A start without a boot source says what is missing, and the VMM keeps serving.
    let (code, text) = vm.curl(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(code, 400);
    assert!(
        text.contains("Start microvm error") && text.contains("no boot source"),
        "{text}"
    );

    vm.ok(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 16}"#),
    );
    let mc: Value = serde_json::from_str(&vm.ok("GET", "/machine-config", None)).unwrap();
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(1), Some(16))
    );
    vm.ok("PUT", "/boot-source", Some(&raw_boot_source(&image)));
    vm.ok(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    let (code, text) = vm.curl("PUT", "/boot-source", Some(&raw_boot_source(&image)));
    assert_eq!(code, 400);
    assert!(
        text.contains("not supported after starting the microVM"),
        "{text}"
    );

    // Running: the guest makes progress.
    let deadline = Instant::now() + Duration::from_secs(20);
    while port_writes(&vm.exits()) < 100 {
        assert!(Instant::now() < deadline, "the guest makes no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Paused: none.
    vm.ok("PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    let info: Value = serde_json::from_str(&vm.ok("GET", "/", None)).unwrap();
    assert_eq!(info["state"], "Paused");
    let a = port_writes(&vm.exits());
    std::thread::sleep(Duration::from_millis(300));
    let b = port_writes(&vm.exits());
    assert_eq!(a, b, "exits while paused");
    // Pausing twice is harmless.
    vm.ok("PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    // Resumed: progress again.
    vm.ok("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
    let deadline = Instant::now() + Duration::from_secs(20);
    while port_writes(&vm.exits()) <= b {
        assert!(Instant::now() < deadline, "no progress after resume");
        std::thread::sleep(Duration::from_millis(20));
    }

    // ferrovm ctl, human and JSON.
    let (code, out, err) = vm.ctl(&["info"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state:   Running"), "{out}");
    let (code, out, err) = vm.ctl(&["pause"]);
    assert_eq!((code, out.trim()), (0, "paused"), "{err}");
    let (code, out, _) = vm.ctl(&["--json", "info"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["state"],
        "Paused"
    );
    let (code, out, _) = vm.ctl(&["exits"]);
    assert_eq!(code, 0);
    assert!(out.contains("io_out") && out.contains("0x0080"), "{out}");
    let (code, out, _) = vm.ctl(&["exits", "--watch", "--interval", "0.1", "--count", "2"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("VM exits:").count(), 2, "{out}");
    let (code, out, _) = vm.ctl(&["config"]);
    assert_eq!(code, 0);
    let config: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(config["machine-config"]["mem_size_mib"], 16);
    let (code, _, err) = vm.ctl(&["request", "PUT", "/machine-config", "{\"vcpu_count\": 2}"]);
    assert_eq!(code, 1);
    let _ = err;
    let (code, _, err) = vm.ctl(&["start"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not supported after starting the microVM"),
        "{err}"
    );

    // The profile taken while paused is what --stats reports at the end.
    let last = vm.exits();
    let (status, err) = vm.terminate();
    assert_eq!(status, Some(128 + libc::SIGTERM), "{err}");
    let end: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(
        end["total"]["exits"], last["total"]["exits"],
        "GET /vm/exits while paused == --stats-json at the end"
    );
    assert_eq!(port_writes(&end), port_writes(&last));
    assert_eq!(end["total"]["reasons"], last["total"]["reasons"]);
}

#[test]
fn config_file_boots_a_raw_guest_and_the_socket_still_serves() {
    if !kvm_available("config_file_boots_a_raw_guest_and_the_socket_still_serves") {
        return;
    }
    have_curl();
    let image = write_image("api-cfg-loop", &PORT_LOOP);
    let cfg = tmp_path("vm-config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {}, "machine-config": {{"vcpu_count": 2, "mem_size_mib": 32}}}}"#,
            raw_boot_source(&image)
        ),
    )
    .unwrap();
    let vm = Served::start("api-cfg", &["--config-file", cfg.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, text) = vm.curl("GET", "/vm/exits", None);
        if code == 200 {
            let v: Value = serde_json::from_str(&text).unwrap();
            if port_writes(&v) > 10 {
                assert_eq!(v["vcpus"].as_array().unwrap().len(), 2);
                break;
            }
        }
        assert!(Instant::now() < deadline, "no progress: {code} {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let info: Value = serde_json::from_str(&vm.ok("GET", "/", None)).unwrap();
    assert_eq!(info["state"], "Running");
    // Another ferrovm on the same socket is refused, naming it.
    let out = ferrovm(
        &["run", "--api-sock", vm.sock.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains(vm.sock.to_str().unwrap()) && err.contains("already in use"),
        "{err}"
    );
    let (status, err) = vm.terminate();
    assert_eq!(status, Some(128 + libc::SIGTERM), "{err}");
}

#[test]
fn bad_config_files_are_clear_errors() {
    let dir = tmp_path("bad-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("{", "configuration file"),
        (r#"{"boot_source": {}}"#, "unknown field `boot_source`"),
        (
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#,
            "boot-source is missing",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}"#,
            "The kernel file cannot be opened",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "/dev/null"}, "mmds-config": {"network_interfaces": ["eth0"]}}"#,
            "mmds-config is not supported",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "/dev/null"}, "vsock": {"guest_cid": 2, "uds_path": "/tmp/v.sock"}}"#,
            "guest CID 2 is reserved",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = dir.join(format!("c{i}.json"));
        std::fs::write(&f, text).unwrap();
        let out = ferrovm(
            &["run", "--config-file", f.to_str().unwrap()],
            Duration::from_secs(10),
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{text}: {err}");
        assert!(err.contains(want), "{text}: expected {want:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = ferrovm(
        &["run", "--config-file", "/nonexistent.json"],
        Duration::from_secs(10),
    );
    assert!(stderr(&out).contains("cannot read the configuration file /nonexistent.json"));
    let out = ferrovm(
        &["run", "--config-file", "x.json", "--kernel", "k"],
        Duration::from_secs(10),
    );
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
    let out = ferrovm(&["run"], Duration::from_secs(10));
    assert!(stderr(&out).contains("nothing to run"), "{}", stderr(&out));
}
