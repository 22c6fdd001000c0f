//! virtio-net under ferrovm with a Linux guest, where KVM has hardware virtualization:
//! inside the nested testbed's L1 (shared/TESTBED.md) on hosts without vmx/svm, directly
//! otherwise (as root, with iproute2, socat, iperf3, curl and passt installed). One L1
//! boot and one guest (two vCPUs) for every scenario, each on a NIC of its own
//! (linux/net-scenarios.sh plays L1's part, linux/net-l2-init.sh the guest's); each test
//! below checks one of them:
//!
//! - tap: L1 makes the tap; ping both ways, 64 MiB each way over TCP with the sha256 of
//!   both ends compared, the guest's MAC as given, and ferrovm's own counters for that
//!   device (`GET /vm/exits`) showing the bytes went through its userspace path;
//! - vhost: the same with `vhost=on` (and the VMM really holding /dev/vhost-net);
//! - mq: `queues=2` on a tap ferrovm creates: the guest sees rx-0 rx-1 tx-0 tx-1, TCP
//!   flows each way complete, and ferrovm's per-queue-pair counters show a UDP flow sent
//!   from each CPU, and its echo, on its own pair;
//! - user: passt's DHCP gives the guest its address; a TCP server in the guest answers a
//!   request line L1 sends to the forwarded host port;
//! - rate: `tx_bw` and `rx_bw` of 2 MB/s, measured within 10% by iperf3 in the guest;
//! - flood: the guest downs its link while L1 floods the tap; ferrovm's CPU time stays as
//!   low as when idle, and the link works again once up.
//!
//! `FERROVM_NET_TEST_VMM=qemu` runs the same scenarios under QEMU microvm instead, to
//! check the harness itself (QEMU has no rate limits and no counters over an API, so
//! those checks fail for it). `FERROVM_NET_SCENARIOS="tap mq"` runs only those (the
//! other tests then fail for want of a result). `FERROVM_NET_VMM_ARGS="..."` adds
//! ferrovm run options. `FERROVM_NET_PASST_DEBUG=1` runs passt with `--debug` (its lines
//! in ferrovm's log), under strace when the host has it; `=strace` only under strace (the
//! tail of its trace lands in the user scenario's output). `FERROVM_NET_KVM_TRACE=1` records
//! L1's KVM trace events while the VMM runs and prints their last 400 lines after it (what
//! the guest did last when it died). `FERROVM_TEST_VERBOSE=1` streams L1's console (with
//! `--nocapture`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use testbed::guest::{
    l1_net_files, l1_net_setup, virtio_net_insmod, virtio_net_modules, L1_DUMMY_ADDR,
    L1_DUMMY_GATEWAY, L1_IP,
};
use testbed::{
    binary_with_libs, l2_initramfs, virtio_insmod, virtio_modules, Job, JobFile, Testbed,
};

const SCENARIOS: &str = include_str!("linux/net-scenarios.sh");
const L2_INIT: &str = include_str!("linux/net-l2-init.sh");
/// Debian packages' binaries copied into L1 (and socat and iperf3 into L2).
const CURL: &str = "/usr/bin/curl";
const SOCAT: &str = "/usr/bin/socat";
const IPERF3: &str = "/usr/bin/iperf3";
const PASST: &str = "/usr/bin/passt";
const PASST_AVX2: &str = "/usr/bin/passt.avx2";
/// Where passt runs under, with `FERROVM_NET_PASST_DEBUG=1`, when the host has it.
const STRACE: &str = "/usr/bin/strace";
/// The 64 MiB each way of the transfer scenarios.
const XFER_BYTES: u64 = 64 << 20;
/// Bytes per flow of the multi-queue scenario (net-scenarios.sh's MQ_BYTES).
const MQ_BYTES: u64 = 4 << 20;
/// The rate limit of the rate scenario, bytes per second (net-scenarios.sh's RATE).
const RATE: f64 = 2_000_000.0;
/// L1's dummy0 subnet, which passt copies to its guest.
const DUMMY_SUBNET: &str = "192.168.200.";

/// One scenario: the VMM's exit status and its text (VMM output, then L1's lines).
#[derive(Debug, Clone)]
struct Scenario {
    status: i32,
    text: String,
}

impl Scenario {
    /// The value of `KEY=` on its first line starting with `key` (e.g. "G:RX_SUM=").
    fn field(&self, key: &str) -> Option<&str> {
        field(&self.text, key)
    }

    /// Like [`Scenario::field`], panicking with the scenario's text when absent.
    fn need(&self, key: &str) -> &str {
        self.field(key)
            .unwrap_or_else(|| panic!("no {key} line:\n{}", self.text))
    }
}

/// The value after `key` on the first line of `text` that starts with it (a serial
/// console may prefix a line with nothing but may end it with `\r`).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .map(str::trim)
}

/// Scenarios by name from the console: BEGIN/END blocks and RESULT lines.
fn parse(console: &str) -> HashMap<String, Scenario> {
    let mut out = HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("BEGIN ") {
            current = Some((name.trim().to_string(), String::new()));
        } else if line.starts_with("END ") && current.is_some() {
            if let Some((name, text)) = current.take() {
                out.insert(
                    name,
                    Scenario {
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
                    .or_insert(Scenario {
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

/// The whole console of the shared run (`None`: skipped).
fn console() -> Option<&'static str> {
    static RESULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    RESULT.get_or_init(run_scenarios).as_deref()
}

/// A scenario of the shared run, or a panic with the console when it is missing.
fn scenario(name: &str) -> Option<Scenario> {
    let console = console()?;
    assert!(
        console.contains("NET-SCENARIOS-DONE"),
        "the networking scenarios did not finish:\n{console}"
    );
    let mut all = parse(console);
    let vm = all.remove("vm").map(|s| s.text).unwrap_or_default();
    let mut s = all
        .remove(name)
        .unwrap_or_else(|| panic!("no result for scenario {name}:\n{console}"));
    // The whole VMM output of the shared run follows the guest's section and L1's notes,
    // for the failure messages; prefixed, so that no check reads another scenario's line.
    s.text
        .push_str("--- the VMM's output (all scenarios) ---\n");
    for line in vm.lines() {
        s.text.push_str("vm| ");
        s.text.push_str(line);
        s.text.push('\n');
    }
    Some(s)
}

/// The counters ferrovm reports over `GET /vm/exits` for the scenario's NIC (its
/// `L1:NET_DEVICE=`), with the whole JSON for messages.
fn device_counters(name: &str, s: &Scenario) -> (serde_json::Value, String) {
    let json = s.need("L1:EXITS_JSON=").to_string();
    let v: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{name}: GET /vm/exits is not JSON ({e}):\n{}", s.text));
    let dev = s.need("L1:NET_DEVICE=");
    let d = v["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["device"] == dev))
        .unwrap_or_else(|| panic!("{name}: GET /vm/exits has no device {dev}:\n{json}"))
        .clone();
    (d, json)
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
                "*** SKIPPED linux_net: testbed unavailable ({e}) and {}=1 ***",
                testbed::SKIP_ENV
            );
            return None;
        }
        Err(e) => panic!(
            "linux_net: the nested testbed is unavailable: {e}\n(set {}=1 to skip explicitly)",
            testbed::SKIP_ENV
        ),
    };
    let vmm = match std::env::var("FERROVM_NET_TEST_VMM").as_deref() {
        Ok("qemu") => "qemu",
        Ok("ferrovm") | Err(_) => "ferrovm",
        Ok(other) => panic!("FERROVM_NET_TEST_VMM={other}: expected ferrovm or qemu"),
    };
    let init = L2_INIT
        .replace("@VIRTIO_INSMOD@", &virtio_insmod())
        .replace("@NET_INSMOD@", &virtio_net_insmod());
    let mut l2_extra = virtio_modules(tb.host()).expect("virtio modules");
    l2_extra.extend(virtio_net_modules(tb.host()).expect("virtio-net modules"));
    // The L2 /init's PATH is /bin.
    l2_extra.extend(host_binary(SOCAT, "socat", "/bin/socat"));
    l2_extra.extend(host_binary(IPERF3, "iperf3", "/bin/iperf3"));
    let initrd = l2_initramfs(&tb.host().busybox, &init, &l2_extra).expect("L2 initramfs");
    let ferrovm = env!("CARGO_BIN_EXE_ferrovm");

    // FERROVM_NET_SCENARIOS="tap mq" runs only those (while debugging one; the other
    // tests then fail for want of a result).
    let only = std::env::var("FERROVM_NET_SCENARIOS").ok();
    if testbed::host_has_hw_virt() {
        // Real VT-x/AMD-V: the scenarios run right here (root, the tools installed), in a
        // network namespace of their own with a dummy0 standing in for L1's (the host's
        // own interfaces and addresses stay out of it).
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("linux-net");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("net-initrd.cpio"), &initrd).unwrap();
        std::fs::copy(&tb.base().vmlinux, dir.join("vmlinux")).unwrap();
        let ip = "/usr/sbin/ip";
        let setup = format!(
            "{ip} link set lo up && {ip} link add dummy0 type dummy && \
             {ip} addr add {L1_DUMMY_ADDR} dev dummy0 && {ip} link set dummy0 up && \
             {ip} route add default via {L1_DUMMY_GATEWAY} dev dummy0 || exit 99\n"
        );
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--net", "sh", "-c"])
            .arg(format!("{setup}{SCENARIOS}"))
            .env("FERROVM", ferrovm)
            .env("L2", &dir)
            .env("IP", ip)
            .env("CURL", CURL)
            .env("NET_VMM", vmm);
        if let Some(list) = &only {
            cmd.env("NET_SCENARIOS", list);
        }
        let out = cmd
            .output()
            .expect("run the networking scenarios (unshare --net)");
        return Some(String::from_utf8_lossy(&out.stdout).into_owned());
    }

    let mut only = only
        .map(|s| format!(" NET_SCENARIOS=\"{s}\""))
        .unwrap_or_default();
    // 1: --debug (and strace); strace: only strace (passt 2023.02's --debug can crash
    // formatting its TCP flag names: a SIGSEGV right after a forwarded connection).
    let passt_debug = std::env::var("FERROVM_NET_PASST_DEBUG").ok();
    if let Some(mode) = &passt_debug {
        only.push_str(&format!(" NET_PASST_DEBUG={mode}"));
    }
    let passt_debug = passt_debug.is_some();
    if std::env::var("FERROVM_NET_KVM_TRACE").as_deref() == Ok("1") {
        only.push_str(" NET_KVM_TRACE=1");
    }
    if let Ok(args) = std::env::var("FERROVM_NET_VMM_ARGS") {
        only.push_str(&format!(" NET_VMM_ARGS=\"{args}\""));
    }
    let script = format!(
        "export FERROVM=/ferrovm L2=/l2 IP={L1_IP} CURL={CURL} NET_VMM={vmm}{only}\n{}{SCENARIOS}",
        l1_net_setup()
    );
    let mut job = Job::new(script)
        .files(binary_with_libs(Path::new(ferrovm), "/ferrovm").expect("ferrovm libs"))
        .files(host_binary(CURL, "curl", CURL))
        .files(host_binary(SOCAT, "socat", SOCAT))
        .files(host_binary(IPERF3, "iperf3", IPERF3))
        .files(host_binary(PASST, "passt", PASST))
        // passt re-executes itself as this build where the CPU has AVX2 (as L1's does).
        .files(host_binary(PASST_AVX2, "passt", PASST_AVX2))
        .files(l1_net_files(tb.host()).expect("L1 networking files"))
        .file(JobFile::host(&tb.base().vmlinux, "/l2/vmlinux", 0o644))
        .file(JobFile::bytes(initrd, "/l2/net-initrd.cpio", 0o644))
        // Two L1 vCPUs for the guest's two (and the VMM's and vhost's threads beside them).
        .cpus(2)
        // About 3 minutes with ferrovm (QEMU boots slower); an L1 that stalls (QEMU
        // TCG's emulated SVM, rarely) is retried once by the testbed after this.
        .timeout(Duration::from_secs(if vmm == "qemu" { 900 } else { 660 }));
    if vmm == "qemu" {
        job = job.files(tb.qemu_files().expect("QEMU files"));
    }
    if passt_debug && Path::new(STRACE).is_file() {
        job = job.files(host_binary(STRACE, "strace", STRACE));
    }
    let out = tb.run(&job).expect("testbed run");
    assert!(
        out.l1_kvm,
        "L1 has no /dev/kvm:\n{}",
        testbed::console_tail(&out.console)
    );
    eprintln!(
        "linux_net: {vmm} scenarios took {:.0} s in L1 ({:.0} s with L1's boot)",
        out.wall.as_secs_f64() - out.l1_boot.map_or(0.0, |d| d.as_secs_f64()),
        out.wall.as_secs_f64()
    );
    Some(out.job_console().to_string())
}

/// The checks both transfer scenarios share: ping both ways, the MAC, 64 MiB each way with
/// equal checksums on both ends.
fn check_transfer(name: &str, s: &Scenario, mac: &str) {
    let console = console().unwrap_or_default();
    let text = &s.text;
    assert_eq!(
        s.status, 0,
        "{name}: the VMM must exit 0 after poweroff:\n{text}"
    );
    assert_eq!(
        s.need("G:MAC="),
        mac,
        "{name}: the guest's MAC is mac=:\n{text}"
    );
    assert_eq!(s.need("G:OPERSTATE="), "up", "{name}: carrier:\n{text}");
    assert_eq!(
        s.need("L1:PING_RC="),
        "0",
        "{name}: L1 pings the guest:\n{text}"
    );
    assert_eq!(
        s.need("G:PING_RC="),
        "0",
        "{name}: the guest pings L1:\n{text}"
    );
    let blob_sum = field(console, "L1:BLOB_SUM=").expect("L1's blob checksum");
    assert_eq!(blob_sum.len(), 64, "{console}");
    // L1 -> guest.
    assert!(
        s.need("G:RX_RC=").starts_with("0 "),
        "{name}: receive from L1 failed:\n{text}"
    );
    assert_eq!(
        s.need("G:RX_BYTES=").parse::<u64>().ok(),
        Some(XFER_BYTES),
        "{name}: bytes received by the guest:\n{text}"
    );
    assert_eq!(
        s.need("G:RX_SUM="),
        blob_sum,
        "{name}: L1 -> guest: the guest's sha256 differs from L1's:\n{text}"
    );
    // Guest -> L1 (the guest sends back what it received, whose sum it printed).
    assert!(
        s.need("G:TX_RC=").starts_with("0 "),
        "{name}: send to L1 failed:\n{text}"
    );
    assert_eq!(
        s.need("L1:UP_BYTES=").parse::<u64>().ok(),
        Some(XFER_BYTES),
        "{name}: bytes L1 received:\n{text}"
    );
    assert_eq!(
        s.need("L1:UP_SUM="),
        s.need("G:RX_SUM="),
        "{name}: guest -> L1: L1's sha256 differs from the guest's:\n{text}"
    );
}

#[test]
fn tap_ping_and_64mib_each_way() {
    let Some(s) = scenario("tap") else { return };
    check_transfer("tap", &s, "02:00:00:00:01:02");
    // vhost=off (the default): the bytes went through ferrovm's own rings and tap, read
    // after all of them had arrived in L1.
    let (dev, json) = device_counters("tap", &s);
    let pairs = dev["net"]["pairs"]
        .as_array()
        .unwrap_or_else(|| panic!("tap: no per-pair counters:\n{json}"));
    let sum = |k: &str| {
        pairs
            .iter()
            .map(|p| p[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert!(
        sum("rx_bytes") >= XFER_BYTES && sum("tx_bytes") >= XFER_BYTES,
        "tap: ferrovm's device moved {} bytes to the guest and {} from it; 64 MiB each way \
         expected:\n{json}",
        sum("rx_bytes"),
        sum("tx_bytes")
    );
}

#[test]
fn vhost_net_moves_64mib_each_way() {
    let Some(s) = scenario("vhost") else { return };
    assert_eq!(
        field(console().unwrap_or_default(), "L1:DEVICES "),
        Some("tun=1 vhost-net=1"),
        "L1 needs /dev/net/tun and /dev/vhost-net"
    );
    check_transfer("vhost", &s, "02:00:00:00:02:02");
    let fds: u32 = s.need("L1:VHOST_NET_FDS=").parse().unwrap_or(0);
    let threads: u32 = s.need("L1:VHOST_THREADS=").parse().unwrap_or(0);
    assert!(
        fds >= 1 && threads >= 1,
        "vhost: vhost=on must move the packets in the kernel (the VMM holds {fds} \
         /dev/vhost-net descriptors, L1 runs {threads} vhost threads):\n{}",
        s.text
    );
}

#[test]
fn two_queue_pairs_both_carry_traffic() {
    let Some(s) = scenario("mq") else { return };
    let text = &s.text;
    assert_eq!(s.status, 0, "mq:\n{text}");
    assert_eq!(
        s.need("L1:TAP_CREATED="),
        "1",
        "mq: the VMM creates the tap:\n{text}"
    );
    assert_eq!(s.need("G:NPROC="), "2", "mq:\n{text}");
    assert_eq!(
        s.need("G:QUEUES="),
        "rx-0 rx-1 tx-0 tx-1",
        "mq: the guest must see 2 rx and 2 tx queues:\n{text}"
    );
    let both = format!("{MQ_BYTES} {MQ_BYTES}");
    assert_eq!(
        s.need("L1:MQ_UP_BYTES="),
        both,
        "mq: guest -> L1 flows:\n{text}"
    );
    assert_eq!(
        s.need("G:MQ_RX_BYTES="),
        both,
        "mq: L1 -> guest flows:\n{text}"
    );
    assert_eq!(
        s.need("L1:TAP_REMOVED="),
        "1",
        "mq: the tap ferrovm created must go away with it:\n{text}"
    );
    // ferrovm's per-queue-pair counters, read over the API while the guest waited.
    let (dev, json) = device_counters("mq", &s);
    let net = &dev["net"];
    assert_eq!(
        net["active_pairs"], 2,
        "mq: the driver enables both pairs:\n{json}"
    );
    let pairs = net["pairs"]
        .as_array()
        .unwrap_or_else(|| panic!("mq: no `pairs` array:\n{json}"));
    assert_eq!(pairs.len(), 2, "mq:\n{json}");
    for (i, p) in pairs.iter().enumerate() {
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        // Each pair carries the UDP flow sent from its CPU (the guest's XPS maps CPU i
        // to transmit queue i; TCP's queue drifts to the interrupted CPU's) ...
        assert!(
            n("tx_bytes") >= MQ_BYTES / 2,
            "mq: pair {i} transmitted {} bytes; it should carry the {MQ_BYTES}-byte UDP \
             flow sent from CPU {i}:\n{json}\n{text}",
            n("tx_bytes")
        );
        // ... and the echoes of that flow (tun sends a flow to the queue it came from).
        assert!(
            n("rx_packets") >= 50,
            "mq: pair {i} received {} packets; L1's echoes of its flow come back on it:\n{json}\n{text}",
            n("rx_packets")
        );
    }
}

#[test]
fn user_networking_dhcp_and_hostfwd() {
    let Some(s) = scenario("user") else { return };
    let text = &s.text;
    assert_eq!(s.status, 0, "user:\n{text}");
    assert_eq!(
        s.need("G:DHCP_RC="),
        "0",
        "user: udhcpc got no lease from passt:\n{text}"
    );
    let lease = s.need("G:DHCP_LEASE=");
    assert!(
        lease.starts_with(DUMMY_SUBNET),
        "user: passt hands out L1's own address ({DUMMY_SUBNET}x): {lease}\n{text}"
    );
    assert!(
        s.need("G:ADDR=").starts_with(DUMMY_SUBNET),
        "user: the lease is on eth0:\n{text}"
    );
    assert_eq!(
        s.need("L1:USER_REPLY="),
        "L2-SERVER-REPLY-42",
        "user: the guest's server must answer on the forwarded host port:\n{text}"
    );
}

#[test]
fn rate_limits_hold_within_ten_percent() {
    let Some(s) = scenario("rate") else { return };
    let text = &s.text;
    assert_eq!(s.status, 0, "rate:\n{text}");
    for dir in ["TX", "RX"] {
        assert_eq!(
            s.need(&format!("G:RATE_{dir}_RC=")),
            "0",
            "rate: iperf3 {dir}:\n{text}"
        );
        let bps: f64 = s
            .need(&format!("G:RATE_{dir}_BPS="))
            .parse()
            .unwrap_or_else(|_| panic!("rate: no {dir} rate:\n{text}"));
        let ratio = bps / 8.0 / RATE;
        assert!(
            (0.9..=1.1).contains(&ratio),
            "rate: {dir} moved {:.0} bytes/s with a limit of {RATE} ({ratio:.2}x; 0.9-1.1 expected):\n{text}",
            bps / 8.0
        );
    }
}

#[test]
fn flooded_tap_with_the_link_down_costs_no_cpu() {
    let Some(s) = scenario("flood") else { return };
    let text = &s.text;
    assert_eq!(s.status, 0, "flood:\n{text}");
    assert_eq!(s.need("G:PING_RC="), "0", "flood: ping before:\n{text}");
    let ticks = s.need("L1:FLOOD_TICKS ");
    let get = |line: &str, key: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("flood: no {key} in {line:?}:\n{text}"))
    };
    let idle = get(ticks, "idle4s=") / 4.0;
    let flood = get(ticks, "flood5s=") / 5.0;
    let tap = s.need("L1:FLOOD_TAP ");
    let offered = get(tap, "dropped=") + get(tap, "delivered=");
    assert!(
        offered >= 1000.0,
        "flood: L1 must really flood the tap ({offered} frames in 5 s):\n{text}"
    );
    // Clock ticks are 1/100 s: 10 more a second is 10% of a CPU.
    assert!(
        flood <= idle + 10.0,
        "flood: the VMM used {flood:.1} ticks/s while the guest's link was down and L1 \
         flooded the tap, against {idle:.1} ticks/s idle (it must stop reading a tap \
         it has no receive buffers for):\n{text}"
    );
    assert_eq!(
        s.need("G:PING_AFTER_RC="),
        "0",
        "flood: the link works again once up:\n{text}"
    );
}

#[test]
fn parse_splits_scenarios() {
    let c =
        "L1:BLOB_SUM=ab\nBEGIN tap\nG:MAC=02:00\r\nL1:PING_RC=0\nEND tap\nRESULT tap status=0\n\
             RETRY mq (killed)\nBEGIN mq\nEND mq\nRESULT mq status=137\nNET-SCENARIOS-DONE\n";
    let r = parse(c);
    assert_eq!(r["tap"].status, 0);
    assert_eq!(r["tap"].field("G:MAC="), Some("02:00"));
    assert_eq!(r["tap"].field("L1:PING_RC="), Some("0"));
    assert_eq!(r["mq"].status, 137);
    assert_eq!(field(c, "L1:BLOB_SUM="), Some("ab"));
}
