//! virtio-vsock and virtio-balloon under ferrovm with a Linux guest, where KVM has hardware
//! virtualization: inside the nested testbed's L1 (shared/TESTBED.md) on hosts without
//! vmx/svm, directly otherwise (as root, with socat and curl installed). All scenarios
//! share one L1 boot (linux/vb-scenarios.sh; the guest's side is linux/vb-l2-init.sh, a
//! command shell on the serial console) and three L2 boots:
//!
//! - vsock (`--vsock cid=3,uds=PATH`, Firecracker's host side: `CONNECT <port>` on the
//!   socket at PATH, `OK <host port>` back; a guest connection to CID 2 port P reaches the
//!   listener at `PATH_P`): a host process sends 32 MiB to a guest listener and gets their
//!   checksum back; guest processes connect to host listeners (a greeting, 4 MiB
//!   checksummed on both ends); 50 connections at once each way; a port nobody listens
//!   on; a guest listener killed in mid-stream, whose host side must see the close;
//! - balloon (`--balloon size=0,stats=1`, 512 MiB): the guest touches its memory, the
//!   balloon inflates to 256 MiB (`PATCH /balloon`) and the VMM's RSS (VmRSS in L1) must
//!   drop by at least 80% of that; `GET /balloon/statistics` reports the guest's memory
//!   before and after; deflating gives the guest its memory back;
//! - fpr (configured over the API: `PUT /balloon` with `free_page_reporting`, `PUT
//!   /vsock`): a greeting over vsock; 256 MiB the guest writes to a tmpfs file and deletes
//!   must come back to the host (RSS).
//!
//! `FERROVM_VB_TEST_VMM=firecracker` (with `FIRECRACKER_BIN`) runs the same scenarios
//! under Firecracker, to check the harness itself. `FERROVM_TEST_VERBOSE=1` streams L1's
//! console.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use testbed::guest::{
    virtio_balloon_insmod, virtio_balloon_modules, virtio_vsock_insmod, virtio_vsock_modules,
};
use testbed::{
    binary_with_libs, l2_initramfs, virtio_insmod, virtio_modules, Job, JobFile, Testbed,
};

const SCENARIOS: &str = include_str!("linux/vb-scenarios.sh");
const L2_INIT: &str = include_str!("linux/vb-l2-init.sh");
/// Debian packages' binaries copied into L1 (and socat into L2).
const CURL: &str = "/usr/bin/curl";
const SOCAT: &str = "/usr/bin/socat";
/// The host -> guest transfer (vb-scenarios.sh's /tmp/blob).
const XFER_BYTES: u64 = 32 << 20;
/// The guest -> host transfer (vb-l2-init.sh's /tmp/up).
const UP_BYTES: u64 = 4 << 20;
/// Connections at once, each way.
const AT_ONCE: u32 = 50;
/// The balloon's target and the free page reporting scenario's file, KiB.
const BALLOON_KIB: u64 = 256 << 10;
/// Firecracker's (and ferrovm's) first host-side port of host-initiated connections.
const FIRST_LOCAL_PORT: u64 = 1 << 30;

/// One VM of the shared run: the VMM's exit status and its text (VMM output, L1's lines).
#[derive(Debug, Clone)]
struct Vm {
    name: String,
    status: i32,
    text: String,
}

impl Vm {
    /// The value of the first line starting with `key` (e.g. "G:HELLO_REPLY=").
    fn field(&self, key: &str) -> Option<&str> {
        field(&self.text, key)
    }

    /// Like [`Vm::field`], panicking with the VM's text when absent.
    fn need(&self, key: &str) -> &str {
        self.field(key).unwrap_or_else(|| {
            panic!(
                "{}: no {key} line (did ferrovm accept the VM's options?):\n{}",
                self.name, self.text
            )
        })
    }

    /// A `KEY=<number> ...` value.
    fn num(&self, key: &str) -> u64 {
        let v = self.need(key);
        v.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: {key}{v} is not a number:\n{}", self.name, self.text))
    }

    /// The JSON body an `api KEY ...` call noted (`L1:KEY_JSON=`), after checking that
    /// its status was `code`.
    fn api(&self, key: &str, code: &str) -> serde_json::Value {
        let got = self.need(&format!("L1:{key}_CODE="));
        let body = self.field(&format!("L1:{key}_JSON=")).unwrap_or_default();
        assert_eq!(
            got, code,
            "{}: the API answered {key} with HTTP {got} (body {body:?}), expected {code}:\n{}",
            self.name, self.text
        );
        if body.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_str(body).unwrap_or_else(|e| {
            panic!(
                "{}: {key}: the answer is not JSON ({e}): {body}\n{}",
                self.name, self.text
            )
        })
    }

    /// Whether ferrovm rejected its command line (an option it does not have yet).
    fn rejected_options(&self) -> Option<&str> {
        self.text
            .lines()
            .find(|l| l.contains("unexpected argument") || l.contains("error: invalid value"))
    }

    /// Panics (with ferrovm's complaint) when the VM never came up.
    fn assert_up(&self) {
        if let Some(l) = self.rejected_options() {
            panic!(
                "{}: ferrovm rejected its options: {l}\n(the feature this VM tests is not wired \
                 into `ferrovm run` yet)\n{}",
                self.name, self.text
            );
        }
        assert!(
            self.field("L1:NO_SHELL=").is_none() && self.text.contains("G:SHELL-READY"),
            "{}: the guest never reached its command shell:\n{}",
            self.name,
            self.text
        );
    }
}

/// The value after `key` on the first line of `text` that starts with it.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .map(str::trim)
}

/// VMs by name from the console: BEGIN/END blocks and RESULT lines.
fn parse(console: &str) -> HashMap<String, Vm> {
    let mut out = HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("BEGIN ") {
            current = Some((name.trim().to_string(), String::new()));
        } else if line.starts_with("END ") && current.is_some() {
            if let Some((name, text)) = current.take() {
                out.insert(
                    name.clone(),
                    Vm {
                        name,
                        status: i32::MIN,
                        text,
                    },
                );
            }
        } else if let Some(rest) = line.strip_prefix("RESULT ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(status)) = (it.next(), it.next()) {
                let code = status
                    .strip_prefix("status=")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(i32::MIN);
                out.entry(name.to_string())
                    .or_insert(Vm {
                        name: name.to_string(),
                        status: code,
                        text: String::new(),
                    })
                    .status = code;
            }
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

/// Which VMM runs the scenarios.
fn vmm() -> &'static str {
    match std::env::var("FERROVM_VB_TEST_VMM").as_deref() {
        Ok("firecracker") => "firecracker",
        Ok("ferrovm") | Err(_) => "ferrovm",
        Ok(other) => panic!("FERROVM_VB_TEST_VMM={other}: expected ferrovm or firecracker"),
    }
}

/// The whole console of the shared run (`None`: skipped).
fn console() -> Option<&'static str> {
    static RESULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    RESULT.get_or_init(run_scenarios).as_deref()
}

/// A VM of the shared run, or a panic with the console when it is missing.
fn vm(name: &str) -> Option<Vm> {
    let console = console()?;
    assert!(
        console.contains("VB-SCENARIOS-DONE"),
        "the vsock/balloon scenarios did not finish:\n{console}"
    );
    Some(
        parse(console)
            .remove(name)
            .unwrap_or_else(|| panic!("no result for VM {name}:\n{console}")),
    )
}

fn host_binary(path: &str, package: &str, l1_path: &str) -> Vec<JobFile> {
    binary_with_libs(Path::new(path), l1_path).unwrap_or_else(|e| {
        panic!("{path} (Debian package {package}, in scripts/apt-packages.txt): {e}")
    })
}

fn run_scenarios() -> Option<String> {
    if std::env::var("FERROVM_TEST_VERBOSE").as_deref() == Ok("1") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("testbed=info"))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let skip = std::env::var(testbed::SKIP_ENV).as_deref() == Ok("1");
    let tb = match Testbed::new() {
        Ok(tb) => tb,
        Err(e) if skip => {
            eprintln!(
                "*** SKIPPED linux_vsock_balloon: testbed unavailable ({e}) and {}=1 ***",
                testbed::SKIP_ENV
            );
            return None;
        }
        Err(e) => panic!(
            "linux_vsock_balloon: the nested testbed is unavailable: {e}\n(set {}=1 to skip \
             explicitly)",
            testbed::SKIP_ENV
        ),
    };
    let vmm = vmm();
    let firecracker = (vmm == "firecracker").then(|| {
        std::env::var_os("FIRECRACKER_BIN")
            .filter(|p| !p.is_empty())
            .expect("FERROVM_VB_TEST_VMM=firecracker needs FIRECRACKER_BIN=/path/to/firecracker")
    });
    // Firecracker names its virtio-mmio devices on the kernel command line; the init
    // passes them to virtio_mmio (ferrovm's are in ACPI: $MMIO_ARGS is empty).
    let insmod = virtio_insmod().replace("virtio_mmio.ko\n", "virtio_mmio.ko $MMIO_ARGS\n");
    assert!(insmod.contains("$MMIO_ARGS"), "{insmod}");
    let init = L2_INIT
        .replace("@VIRTIO_INSMOD@", &insmod)
        .replace("@VSOCK_INSMOD@", &virtio_vsock_insmod())
        .replace("@BALLOON_INSMOD@", &virtio_balloon_insmod());
    let mut l2_extra = virtio_modules(tb.host()).expect("virtio modules");
    l2_extra.extend(virtio_vsock_modules(tb.host()).expect("virtio-vsock modules"));
    l2_extra.extend(virtio_balloon_modules(tb.host()).expect("virtio-balloon module"));
    // The L2 /init's PATH is /bin.
    l2_extra.extend(host_binary(SOCAT, "socat", "/bin/socat"));
    let initrd = l2_initramfs(&tb.host().busybox, &init, &l2_extra).expect("L2 initramfs");
    let ferrovm = env!("CARGO_BIN_EXE_ferrovm");

    if testbed::host_has_hw_virt() {
        // Real VT-x/AMD-V: the scenarios run right here (root, socat and curl installed).
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("linux-vb");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vb-initrd.cpio"), &initrd).unwrap();
        std::fs::copy(&tb.base().vmlinux, dir.join("vmlinux")).unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(SCENARIOS)
            .env("FERROVM", ferrovm)
            .env("L2", &dir)
            .env("CURL", CURL)
            .env("VB_VMM", vmm);
        if let Some(fc) = &firecracker {
            cmd.env("FIRECRACKER", fc);
        }
        let out = cmd.output().expect("run the vsock/balloon scenarios");
        return Some(String::from_utf8_lossy(&out.stdout).into_owned());
    }

    let script = format!(
        "export FERROVM=/ferrovm L2=/l2 CURL={CURL} VB_VMM={vmm} FIRECRACKER=/firecracker\n{SCENARIOS}"
    );
    let mut job = Job::new(script)
        .files(binary_with_libs(Path::new(ferrovm), "/ferrovm").expect("ferrovm libs"))
        .files(host_binary(CURL, "curl", CURL))
        .files(host_binary(SOCAT, "socat", SOCAT))
        .file(JobFile::host(&tb.base().vmlinux, "/l2/vmlinux", 0o644))
        .file(JobFile::bytes(initrd, "/l2/vb-initrd.cpio", 0o644))
        .timeout(Duration::from_secs(600));
    if let Some(fc) = &firecracker {
        job = job.files(
            binary_with_libs(Path::new(fc), "/firecracker").expect("Firecracker and its libraries"),
        );
    }
    let out = tb.run(&job).expect("testbed run");
    assert!(
        out.l1_kvm,
        "L1 has no /dev/kvm:\n{}",
        testbed::console_tail(&out.console)
    );
    eprintln!(
        "linux_vsock_balloon: {vmm} scenarios took {:.0} s in L1 ({:.0} s with L1's boot)",
        out.wall.as_secs_f64() - out.l1_boot.map_or(0.0, |d| d.as_secs_f64()),
        out.wall.as_secs_f64()
    );
    Some(out.job_console().to_string())
}

/// An `L1:KEY=RC secs=A-B` value: the exit status.
fn rc(v: &str) -> i32 {
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(i32::MIN)
}

fn vsock_vm() -> Option<Vm> {
    let v = vm("vsock")?;
    v.assert_up();
    assert_eq!(
        v.need("G:VSOCK_DEV="),
        "1",
        "vsock: the guest has no /dev/vsock (no virtio-vsock device found):\n{}",
        v.text
    );
    Some(v)
}

#[test]
fn vsock_host_sends_32mib_to_a_guest_listener_and_gets_the_checksum() {
    let Some(v) = vsock_vm() else { return };
    let text = &v.text;
    assert_eq!(
        v.need("L1:VSOCK_SOCKET="),
        "1",
        "vsock: no socket at uds=:\n{text}"
    );
    let ok = v.need("L1:XFER_OK=");
    let port: Option<u64> = ok.strip_prefix("OK ").and_then(|p| p.parse().ok());
    assert!(
        port.is_some_and(|p| p >= FIRST_LOCAL_PORT),
        "vsock: the answer to CONNECT 5000 must be `OK <host port>`, got {ok:?}:\n{text}"
    );
    assert_eq!(
        rc(v.need("L1:XFER_RC=")),
        0,
        "vsock: the 32 MiB transfer failed:\n{text}"
    );
    let blob = v.need("L1:BLOB_SUM=");
    assert_eq!(blob.len(), 64, "{text}");
    assert_eq!(
        v.need("L1:XFER_SUM="),
        blob,
        "vsock: the guest's sha256 of the {XFER_BYTES} bytes differs from the host's:\n{text}"
    );
}

#[test]
fn vsock_guest_connects_to_host_listeners() {
    let Some(v) = vsock_vm() else { return };
    let text = &v.text;
    assert_eq!(v.need("G:HELLO_RC="), "0", "vsock:\n{text}");
    assert_eq!(
        v.need("L1:HOST_HELLO_SAID="),
        "GUEST-HELLO-42",
        "vsock: the host listener at <uds>_5001 did not get the guest's line:\n{text}"
    );
    assert_eq!(
        v.need("G:HELLO_REPLY="),
        "HOST-HELLO-42",
        "vsock: the guest did not get the host's answer:\n{text}"
    );
    assert_eq!(
        rc(v.need("G:UP_RC=")),
        0,
        "vsock: guest -> host send failed:\n{text}"
    );
    assert_eq!(
        v.need("L1:UP_LISTENER_DONE="),
        "1",
        "vsock: the host listener never saw the end of the guest's stream (the guest's \
         shutdown must reach the host socket):\n{text}"
    );
    assert_eq!(
        v.num("L1:UP_BYTES="),
        UP_BYTES,
        "vsock: bytes the host received:\n{text}"
    );
    assert_eq!(
        v.need("L1:UP_SUM="),
        v.need("G:UP_SUM="),
        "vsock: guest -> host: the host's sha256 differs from the guest's:\n{text}"
    );
}

#[test]
fn vsock_50_connections_at_once_each_way() {
    let Some(v) = vsock_vm() else { return };
    let text = &v.text;
    // Guest -> host: each host handler answers once all 50 have arrived.
    assert_eq!(
        v.num("L1:HOST50_SEEN="),
        u64::from(AT_ONCE),
        "vsock: connections the host listener got:\n{text}"
    );
    assert_eq!(
        v.num("G:GUEST50_OK="),
        u64::from(AT_ONCE),
        "vsock: guest-initiated connections answered while all {AT_ONCE} were open:\n{text}"
    );
    // Host -> guest, each sending its line right behind `CONNECT`.
    assert_eq!(
        v.num("L1:HOST50_OK="),
        u64::from(AT_ONCE),
        "vsock: host-initiated connections answered while all {AT_ONCE} were open:\n{text}"
    );
    assert_eq!(
        v.num("L1:HOST50_PORTS="),
        u64::from(AT_ONCE),
        "vsock: the {AT_ONCE} connections must get distinct `OK <port>` lines:\n{text}"
    );
}

#[test]
fn vsock_closes_the_host_side_of_a_refused_or_killed_connection() {
    let Some(v) = vsock_vm() else { return };
    let text = &v.text;
    // Nobody listens on 5999: the socket is closed without an OK line.
    let refused = rc(v.need("L1:REFUSED_RC="));
    assert!(
        ![124, 137, 143].contains(&refused),
        "vsock: CONNECT to a port nobody listens on left the host socket open:\n{text}"
    );
    assert_eq!(
        v.need("L1:REFUSED_GOT="),
        "got=",
        "vsock: CONNECT to a port nobody listens on must not be answered OK:\n{text}"
    );
    // The guest kills its listener after 4 MiB.
    let killed = v.need("G:KILLED size=");
    assert!(
        killed.parse::<u64>().is_ok_and(|n| n >= 4 << 20),
        "vsock: the stream never reached the guest listener (it had {killed} bytes):\n{text}"
    );
    assert!(
        v.need("L1:KILL_HOST_OK=").starts_with("OK "),
        "vsock: {text}"
    );
    let secs: f64 = v.need("L1:KILL_CLOSE_SECS=").parse().unwrap_or(f64::MAX);
    assert!(
        secs < 20.0,
        "vsock: the host writer must see its socket close once the guest listener is \
         killed (it did not within {secs} s):\n{text}"
    );
    assert_eq!(
        v.need("L1:ALIVE_AFTER_KILL="),
        "1",
        "vsock: the guest must stay healthy:\n{text}"
    );
    if vmm() == "ferrovm" {
        assert_eq!(
            v.status, 0,
            "vsock: ferrovm must exit 0 after poweroff:\n{text}"
        );
        // No connection outlives its sockets (when the counters are there to tell).
        if let Some(c) = v.field("L1:VSOCK_COUNTERS=") {
            assert!(
                c.contains(r#""connections_active":0"#),
                "vsock: connections left open after every scenario ended: {c}"
            );
        }
    }
}

/// The balloon VM, checked to have its device.
fn balloon_vm(name: &str) -> Option<Vm> {
    let v = vm(name)?;
    v.assert_up();
    assert_eq!(
        v.need("G:BALLOON_DRIVER="),
        "1",
        "{name}: virtio_balloon did not bind to a device:\n{}",
        v.text
    );
    Some(v)
}

/// A `L1:KEY=<kB> ...` RSS value.
fn kib(v: &Vm, key: &str) -> u64 {
    v.num(key)
}

#[test]
fn balloon_inflation_gives_256mib_back_to_the_host() {
    let Some(v) = balloon_vm("balloon") else {
        return;
    };
    let text = &v.text;
    assert!(
        v.need("G:TOUCHED mib=").ends_with("rc=0"),
        "balloon: the guest could not touch its memory:\n{text}"
    );
    v.api("INFLATE", "204");
    let before = kib(&v, "L1:RSS_BEFORE_KB=");
    let after = kib(&v, "L1:RSS_AFTER_KB=");
    let drop = before.saturating_sub(after);
    eprintln!("balloon: RSS {before} -> {after} kB ({drop} kB back of {BALLOON_KIB})");
    assert!(
        drop * 10 >= BALLOON_KIB * 8,
        "balloon: inflating 256 MiB must drop the VMM's RSS by at least 80% of it: \
         {before} -> {after} kB is {drop} kB:\n{text}"
    );
    let got = v.api("GET_BALLOON_AFTER", "200");
    assert_eq!(got["amount_mib"], 256, "balloon: GET /balloon: {got}");
    assert_eq!(
        got["stats_polling_interval_s"], 1,
        "balloon: GET /balloon: {got}"
    );
    // Deflating (`ferrovm ctl balloon 0`; PATCH /balloon for Firecracker) gives the guest
    // its memory back.
    if vmm() == "ferrovm" {
        assert!(
            v.need("L1:CTL_DEFLATE_RC=").starts_with("0"),
            "balloon: `ferrovm ctl balloon 0` failed:\n{text}"
        );
    } else {
        v.api("DEFLATE", "204");
    }
    let totals = v.need("L1:DEFLATED_TOTAL=");
    let (t0, t1) = totals.split_once("->").expect("DEFLATED_TOTAL=A->B");
    assert_eq!(
        t0, t1,
        "balloon: after deflating, the guest's MemTotal must be back:\n{text}"
    );
}

#[test]
fn balloon_statistics_are_reported() {
    let Some(v) = balloon_vm("balloon") else {
        return;
    };
    let text = &v.text;
    let before = v.api("STATS_BEFORE", "200");
    let after = v.api("STATS_AFTER", "200");
    let guest_total_kib: u64 = v
        .need("G:MEM total=")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("G:MEM total=");
    for (when, s) in [("before", &before), ("after", &after)] {
        let n = |k: &str| {
            s[k].as_u64().unwrap_or_else(|| {
                panic!("balloon: statistics {when} the inflation have no {k}: {s}\n{text}")
            })
        };
        // Before the inflation the balloon is empty: the guest's MemTotal, in bytes.
        let total = n("total_memory");
        let free = n("free_memory");
        let avail = n("available_memory");
        assert!(
            free <= total && avail <= total && free > 0,
            "balloon: implausible statistics {when}: {s}"
        );
        if when == "before" {
            let diff = total.abs_diff(guest_total_kib * 1024);
            assert!(
                diff <= 4 << 20,
                "balloon: total_memory {total} is not the guest's MemTotal \
                 ({guest_total_kib} kB): {s}"
            );
        }
    }
    assert_eq!(after["target_mib"], 256, "balloon: {after}");
    assert_eq!(
        after["actual_mib"], 256,
        "balloon: the statistics must show the inflated balloon: {after}"
    );
    let free_before = before["free_memory"].as_u64().unwrap_or(0);
    let free_after = after["free_memory"].as_u64().unwrap_or(u64::MAX);
    assert!(
        free_before.saturating_sub(free_after) >= 200 << 20,
        "balloon: the statistics must be refreshed: free_memory {free_before} -> \
         {free_after} across a 256 MiB inflation:\n{text}"
    );
    v.api("STATS_INTERVAL", "204");
    if vmm() == "ferrovm" {
        assert_eq!(
            v.need("L1:CTL_STATS_RC="),
            "0",
            "balloon: `ferrovm ctl balloon-stats` failed:\n{text}"
        );
        let json = v.need("L1:CTL_STATS_JSON=");
        let ctl: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| {
            panic!("balloon: `ferrovm ctl --json balloon-stats` is not JSON ({e}): {json}")
        });
        assert!(
            ctl["total_memory"].as_u64().is_some() && ctl["actual_mib"] == 256,
            "balloon: `ferrovm ctl --json balloon-stats`: {ctl}"
        );
    }
}

#[test]
fn api_configures_vsock_and_free_page_reporting() {
    let Some(v) = vm("fpr") else { return };
    let text = &v.text;
    for key in [
        "PUT_MACHINE",
        "PUT_BOOT",
        "PUT_BALLOON",
        "PUT_VSOCK",
        "START",
    ] {
        v.api(key, "204");
    }
    let got = v.api("GET_BALLOON", "200");
    assert_eq!(
        got["free_page_reporting"], true,
        "fpr: GET /balloon: {got}\n{text}"
    );
    assert_eq!(got["amount_mib"], 0, "fpr: GET /balloon: {got}");
    v.assert_up();
    let hello = v.need("L1:API_VSOCK_HELLO=");
    assert!(
        hello.starts_with("OK ") && hello.ends_with("/ API-VSOCK-HELLO-42"),
        "fpr: the vsock device made by PUT /vsock must carry a connection: {hello:?}\n{text}"
    );
}

#[test]
fn free_page_reporting_gives_freed_memory_back() {
    let Some(v) = balloon_vm("fpr") else { return };
    let text = &v.text;
    assert!(
        v.need("G:FILLED mib=").ends_with("rc=0"),
        "fpr: the guest could not fill its tmpfs:\n{text}"
    );
    let idle = kib(&v, "L1:RSS_IDLE_KB=");
    let filled = kib(&v, "L1:RSS_FILLED_KB=");
    let freed = kib(&v, "L1:RSS_FREED_KB=");
    eprintln!("fpr: RSS idle {idle}, filled {filled}, freed {freed} kB");
    assert!(
        filled.saturating_sub(idle) >= BALLOON_KIB * 3 / 4,
        "fpr: writing 256 MiB in the guest should have grown the VMM's RSS \
         ({idle} -> {filled} kB):\n{text}"
    );
    let back = filled.saturating_sub(freed);
    assert!(
        back * 10 >= BALLOON_KIB * 8,
        "fpr: free page reporting must give at least 80% of the 256 MiB the guest freed \
         back to the host: RSS {filled} -> {freed} kB is {back} kB:\n{text}"
    );
    if vmm() == "ferrovm" {
        assert_eq!(
            v.status, 0,
            "fpr: ferrovm must exit 0 after poweroff:\n{text}"
        );
    }
}
