//! Thread placement and seccomp on a running raw guest (direct /dev/kvm): with
//! `--vcpu-affinity` and `--device-affinity` each vCPU thread runs on its own host CPU and
//! the other threads on the device CPUs (read back from /proc/PID/task/*/status), every
//! ferrovm thread is under a seccomp filter by default and none with `--seccomp off`,
//! `GET /vm/config` shows it all, and CPUs the host does not have are refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Real mode: `l: pause; jmp l` (no exits, never halts).
const SPIN: [u8; 4] = [0xf3, 0x90, 0xeb, 0xfc];

/// Threads of `pid` by name: (Cpus_allowed_list, Seccomp).
fn threads(pid: u32) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let Ok(status) = std::fs::read_to_string(t.join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.insert(
            field("Name:"),
            (field("Cpus_allowed_list:"), field("Seccomp:")),
        );
    }
    out
}

fn start(name: &str, extra: &[&str]) -> (Child, std::path::PathBuf) {
    let image = write_image(name, &SPIN);
    let sock = tmp_path(&format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--mem", "16M", "--cpus", "2", "--raw"])
        .arg(&image)
        .arg("--api-sock")
        .arg(&sock)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, sock)
}

/// Waits until the socket exists and both vCPU threads run.
fn wait_running(child: &mut Child, sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut e = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut e).unwrap();
            panic!("ferrovm exited ({status}): {e}");
        }
        let t = threads(child.id());
        if sock.exists() && t.contains_key("vcpu0") && t.contains_key("vcpu1") {
            return;
        }
        assert!(Instant::now() < deadline, "the VM never ran: {t:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get_config(sock: &Path) -> serde_json::Value {
    let out = Command::new("/usr/bin/curl")
        .args(["-s", "--max-time", "20", "--unix-socket"])
        .arg(sock)
        .arg("http://localhost/vm/config")
        .output()
        .expect("curl (Debian package curl, installed by scripts/setup.sh)");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn online_cpus() -> Vec<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    seccomp::parse_cpu_list(text.trim()).unwrap()
}

#[test]
fn vcpus_and_device_threads_run_where_asked_and_all_are_filtered() {
    if !kvm_available("vcpus_and_device_threads_run_where_asked_and_all_are_filtered") {
        return;
    }
    let cpus = online_cpus();
    let (a, b) = (cpus[0], *cpus.last().unwrap());
    let vcpu_list = format!("{b},{a}");
    let dev = a.to_string();
    let (mut child, sock) = start(
        "placement-pinned",
        &["--vcpu-affinity", &vcpu_list, "--device-affinity", &dev],
    );
    wait_running(&mut child, &sock);
    // The main thread takes its filter right after the vCPUs start: give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let t = threads(child.id());
    let config = get_config(&sock);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(t["vcpu0"].0, b.to_string(), "{t:?}");
    assert_eq!(t["vcpu1"].0, a.to_string(), "{t:?}");
    assert_eq!(t["api"].0, dev, "{t:?}");
    assert_eq!(t["ferrovm"].0, dev, "{t:?}");
    // Seccomp: 2 is filter mode.
    for name in ["ferrovm", "vcpu0", "vcpu1", "api", "spawner"] {
        assert_eq!(t[name].1, "2", "{name} is not filtered: {t:?}");
    }
    let p = &config["placement"];
    assert_eq!(p["vcpu_affinity"], serde_json::json!([b, a]), "{config}");
    assert_eq!(p["device_affinity"], serde_json::json!([a]), "{config}");
    assert_eq!(p["seccomp"], "on", "{config}");
}

#[test]
fn seccomp_off_leaves_threads_unfiltered() {
    if !kvm_available("seccomp_off_leaves_threads_unfiltered") {
        return;
    }
    let (mut child, sock) = start("placement-off", &["--seccomp", "off"]);
    wait_running(&mut child, &sock);
    std::thread::sleep(Duration::from_millis(300));
    let t = threads(child.id());
    let config = get_config(&sock);
    child.kill().unwrap();
    child.wait().unwrap();
    for name in ["ferrovm", "vcpu0", "vcpu1", "api"] {
        assert_eq!(t[name].1, "0", "{name}: {t:?}");
    }
    assert_eq!(config["placement"]["seccomp"], "off", "{config}");
    assert_eq!(config["placement"]["vcpu_affinity"], serde_json::json!([]));
}

#[test]
fn cpus_that_do_not_exist_are_refused() {
    let missing = online_cpus().iter().max().unwrap() + 1;
    let image = write_image("placement-bad", &SPIN);
    let img = image.to_str().unwrap();
    let m = missing.to_string();
    let o = ferrovm(
        &["run", "--raw", img, "--vcpu-affinity", &m],
        Duration::from_secs(20),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("host CPU {missing} does not exist")),
        "{}",
        stderr(&o)
    );
    let o = ferrovm(
        &["run", "--raw", img, "--cpus", "2", "--vcpu-affinity", "0"],
        Duration::from_secs(20),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--vcpu-affinity gives 1 host CPUs for 2 vCPUs"),
        "{}",
        stderr(&o)
    );
    let o = ferrovm(
        &["run", "--raw", img, "--device-affinity", "1-0"],
        Duration::from_secs(20),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("runs backwards"), "{}", stderr(&o));
}
