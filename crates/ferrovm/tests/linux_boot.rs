//! Boots the Debian kernel with a busybox initramfs under ferrovm, where KVM has hardware
//! virtualization: inside the nested testbed's L1 (shared/TESTBED.md) on hosts without
//! vmx/svm, directly otherwise. All scenarios share one L1 boot (see linux/scenarios.sh).

use std::collections::HashMap;
use std::time::Duration;

use testbed::{binary_with_libs, l2_initramfs, Job, JobFile, Testbed};

const SCENARIOS: &str = include_str!("linux/scenarios.sh");
/// The API client the scenarios use (Debian package `curl`).
const CURL: &str = "/usr/bin/curl";
const L2_INIT: &str = include_str!("linux/l2-init.sh");

/// Results per scenario: (exit status, guest output).
fn parse(console: &str) -> HashMap<String, (i32, String)> {
    let mut out = HashMap::new();
    let mut current: Option<(String, String)> = None;
    for line in console.lines() {
        if let Some(name) = line.strip_prefix("BEGIN ") {
            current = Some((name.trim().to_string(), String::new()));
        } else if line.starts_with("END ") {
            if let Some((name, text)) = current.take() {
                out.insert(name, (i32::MIN, text));
            }
        } else if let Some(rest) = line.strip_prefix("RESULT ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(status)) = (it.next(), it.next()) {
                let code = status
                    .strip_prefix("status=")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(i32::MIN);
                out.entry(name.to_string())
                    .or_insert((code, String::new()))
                    .0 = code;
            }
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

/// The pattern image the guest reads through virtio-blk: 8 MiB of pseudo-random bytes.
fn pattern_image() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs every scenario once (one L1 boot) for all tests of this file.
fn scenarios() -> Option<&'static str> {
    static RESULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    RESULT.get_or_init(run_scenarios).as_deref()
}

fn run_scenarios() -> Option<String> {
    if std::env::var("FERROVM_TEST_VERBOSE").as_deref() == Ok("1") {
        // Stream L1's console live on stderr (run with --nocapture).
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
                "*** SKIPPED linux_boot: testbed unavailable ({e}) and {}=1 ***",
                testbed::SKIP_ENV
            );
            return None;
        }
        Err(e) => panic!(
            "linux_boot: the nested testbed is unavailable: {e}\n(set {}=1 to skip explicitly)",
            testbed::SKIP_ENV
        ),
    };
    let init = L2_INIT.replace("@VIRTIO_INSMOD@", &testbed::virtio_insmod());
    let modules = testbed::virtio_modules(tb.host()).expect("virtio modules");
    let initrd = l2_initramfs(&tb.host().busybox, &init, &modules).expect("L2 initramfs");
    let ferrovm = env!("CARGO_BIN_EXE_ferrovm");
    if testbed::host_has_hw_virt() {
        // Real VT-x/AMD-V: run the scenarios right here.
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("linux-boot");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("initrd.cpio"), &initrd).unwrap();
        std::fs::write(dir.join("pattern.img"), pattern_image()).unwrap();
        std::fs::copy(&tb.base().vmlinux, dir.join("vmlinux")).unwrap();
        std::fs::copy(&tb.host().vmlinuz, dir.join("bzImage")).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(SCENARIOS)
            .env("FERROVM", ferrovm)
            .env("L2", &dir)
            .output()
            .expect("run scenarios");
        return Some(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let job = Job::new(format!("export FERROVM=/ferrovm L2=/l2\n{SCENARIOS}"))
        .files(binary_with_libs(std::path::Path::new(ferrovm), "/ferrovm").expect("ferrovm libs"))
        .files(
            binary_with_libs(std::path::Path::new(CURL), "/usr/bin/curl").unwrap_or_else(|e| {
                panic!("{CURL} (Debian package curl, installed by scripts/setup.sh): {e}")
            }),
        )
        .file(JobFile::host(&tb.base().vmlinux, "/l2/vmlinux", 0o644))
        .file(JobFile::host(&tb.host().vmlinuz, "/l2/bzImage", 0o644))
        .file(JobFile::bytes(initrd, "/l2/initrd.cpio", 0o644))
        .file(JobFile::bytes(pattern_image(), "/l2/pattern.img", 0o644))
        .timeout(Duration::from_secs(600));
    let out = tb.run(&job).expect("testbed run");
    assert!(
        out.l1_kvm,
        "L1 has no /dev/kvm:\n{}",
        testbed::console_tail(&out.console)
    );
    Some(out.job_console().to_string())
}

#[test]
fn linux_boot_scenarios() {
    let Some(console) = scenarios() else {
        return;
    };
    assert!(
        console.contains("SCENARIOS-DONE"),
        "scenarios did not finish:\n{console}"
    );
    let r = parse(console);
    let get = |name: &str| {
        r.get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no result for {name}:\n{console}"))
    };
    let marker = "@@L2-USERSPACE-UP@@";

    for name in ["bzimage-host", "bzimage-guest", "vmlinux"] {
        let (status, text) = get(name);
        assert!(
            text.contains(marker),
            "{name}: no userspace marker:\n{text}"
        );
        assert_eq!(
            status, 0,
            "{name}: poweroff must end ferrovm with 0:\n{text}"
        );
    }

    let (status, text) = get("smp");
    assert_eq!(status, 0, "smp:\n{text}");
    assert!(
        text.contains("NPROC=2"),
        "smp: the guest must see 2 CPUs:\n{text}"
    );

    let (status, text) = get("panic");
    assert_ne!(
        status, 0,
        "a kernel panic must give a non-zero status:\n{text}"
    );
    assert!(text.contains("Kernel panic"), "panic:\n{text}");
    assert!(
        text.contains("guest kernel panicked"),
        "panic: ferrovm's message:\n{text}"
    );

    let (status, text) = get("console");
    assert_eq!(status, 0, "console:\n{text}");
    assert!(
        text.contains("typed-42"),
        "console: typed command output missing:\n{text}"
    );

    let (status, text) = get("reboot");
    assert_eq!(status, 0, "reboot:\n{text}");
    assert_eq!(
        text.matches(marker).count(),
        2,
        "reboot with --on-reboot restart must boot twice:\n{text}"
    );
}

/// The value after `key` on the first line of `text` that starts with it.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .map(str::trim)
}

#[test]
fn virtio_rng_gives_bytes() {
    let Some(console) = scenarios() else {
        return;
    };
    let r = parse(console);
    let (status, text) = r
        .get("rng")
        .cloned()
        .unwrap_or_else(|| panic!("no rng result:\n{console}"));
    assert_eq!(status, 0, "rng:\n{text}");
    assert_eq!(
        field(&text, "RNG_CURRENT="),
        Some("virtio_rng.0"),
        "rng:\n{text}"
    );
    let samples: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("RNG_BYTES="))
        .collect();
    assert_eq!(samples.len(), 2, "rng:\n{text}");
    for s in &samples {
        assert_eq!(s.len(), 64, "32 bytes from /dev/hwrng:\n{text}");
    }
    assert_ne!(
        samples[0], samples[1],
        "two reads gave the same bytes:\n{text}"
    );
}

#[test]
fn virtio_blk_reads_writes_discards_and_honours_readonly() {
    let Some(console) = scenarios() else {
        return;
    };
    let r = parse(console);
    let host_sum = field(console, "HOST_SUM_PATTERN=").expect("pattern checksum");
    assert_eq!(host_sum.len(), 64, "{console}");
    for aio in ["threads", "io_uring"] {
        let name = format!("blk-{aio}");
        let (status, text) = r
            .get(&name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} result:\n{console}"));
        assert_eq!(status, 0, "{name}:\n{text}");
        assert_eq!(
            field(&text, "DEV vda "),
            Some("size=16384 ro=1 serial=pattern"),
            "{name}: the read-only pattern disk:\n{text}"
        );
        assert_eq!(
            field(&text, "DEV vdb "),
            Some(format!("size=8192 ro=0 serial=scratch-{aio}").as_str()),
            "{name}: the scratch disk:\n{text}"
        );
        assert_eq!(
            field(&text, "SUM_VDA="),
            Some(host_sum),
            "{name}: /dev/vda checksum:\n{text}"
        );
        assert_ne!(
            field(&text, "RO_WRITE_RC="),
            Some("0"),
            "{name}: a write to the read-only disk succeeded:\n{text}"
        );
        assert_eq!(field(&text, "RW_WRITE_RC="), Some("0"), "{name}:\n{text}");
        assert_eq!(
            field(&text, "READBACK="),
            Some("ferrovm-wrote-this-42"),
            "{name}:\n{text}"
        );
        assert_eq!(field(&text, "DISCARD_RC="), Some("0"), "{name}:\n{text}");
        // On the host side, after the VM ended.
        let host = |key: &str| {
            field(console, &format!("{key} {aio} "))
                .unwrap_or_else(|| panic!("no {key} {aio}:\n{console}"))
        };
        assert_eq!(
            host("HOST_MARKER"),
            "ferrovm-wrote-this-42",
            "{name}: the write reached the image file"
        );
        assert_eq!(
            host("HOST_HEAD"),
            "0",
            "{name}: the discarded first MiB reads as zeros in the file"
        );
        let before: u64 = host("BLOCKS_BEFORE").parse().unwrap();
        let after: u64 = host("BLOCKS_AFTER").parse().unwrap();
        assert!(
            after + 1024 <= before,
            "{name}: discard must punch a hole: {before} -> {after} blocks"
        );
    }
}

#[test]
fn qcow2_drives_and_snapshot_overlays() {
    let Some(console) = scenarios() else {
        return;
    };
    let r = parse(console);
    let host_sum = field(console, "HOST_SUM_PATTERN=").expect("pattern checksum");
    let get = |name: &str| {
        r.get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} result:\n{console}"))
    };

    // A qcow2 image, format probed: the guest reads the pattern and its write lands in
    // the image, which stays consistent.
    let (status, text) = get("blk-qcow2");
    assert_eq!(status, 0, "blk-qcow2:\n{text}");
    assert!(
        text.contains("probing guessed qcow2"),
        "blk-qcow2: the probe warning:\n{text}"
    );
    assert_eq!(
        field(&text, "SUM_VDA="),
        Some(host_sum),
        "blk-qcow2:\n{text}"
    );
    assert_eq!(
        field(&text, "READBACK="),
        Some("ferrovm-wrote-this-42"),
        "blk-qcow2:\n{text}"
    );
    // Queue notifications go through KVM's ioeventfd, not to user space: after 300
    // direct reads (and everything else) none reached the VMM.
    assert_eq!(
        field(&text, "DIRECT_READS_RC="),
        Some("0"),
        "blk-qcow2:\n{text}"
    );
    let exits: u64 = text
        .lines()
        .find_map(|l| l.split("virtio blk0: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("blk-qcow2: no notification count for blk0:\n{text}"));
    assert_eq!(
        exits, 0,
        "blk-qcow2: queue notifications exited to the VMM instead of KVM's ioeventfd"
    );
    assert_eq!(
        field(console, "QCOW2_CHECK_RC="),
        Some("0"),
        "img check after the guest wrote"
    );
    assert_eq!(
        field(console, "QCOW2_MARKER "),
        Some("ferrovm-wrote-this-42"),
        "the write is in the qcow2 image"
    );

    // --snapshot: the guest's write is visible to the guest, never reaches the image, and
    // no overlay is left behind.
    let (status, text) = get("blk-snapshot");
    assert_eq!(status, 0, "blk-snapshot:\n{text}");
    assert_eq!(
        field(&text, "SUM_VDA="),
        Some(host_sum),
        "blk-snapshot:\n{text}"
    );
    assert!(
        text.contains("writes go to the temporary overlay /tmp/snaptmp/ferrovm-snapshot-"),
        "blk-snapshot: the overlay belongs in $TMPDIR:\n{text}"
    );
    assert_eq!(
        field(&text, "READBACK="),
        Some("ferrovm-wrote-this-42"),
        "blk-snapshot:\n{text}"
    );
    assert_eq!(
        field(console, "SNAP_SUM="),
        Some(host_sum),
        "--snapshot must leave the image untouched"
    );
    assert_eq!(
        field(console, "SNAP_LEFTOVERS="),
        Some("0"),
        "--snapshot left its overlay behind"
    );
}

#[test]
fn api_configures_boots_pauses_and_ends_a_linux_guest() {
    let Some(console) = scenarios() else {
        return;
    };
    let api = console
        .split("BEGIN api\n")
        .nth(1)
        .and_then(|rest| rest.split("END api").next())
        .unwrap_or_else(|| panic!("no api scenario:\n{console}"));
    let line = |key: &str| {
        field(api, key).unwrap_or_else(|| panic!("no {key} line in the api scenario:\n{api}"))
    };
    assert_eq!(line("API_SOCK_MODE="), "600", "the socket is private");
    let info = line("API_INFO_BEFORE ");
    assert!(
        info.contains(r#""state":"Not started""#) && info.ends_with("HTTP=200"),
        "{info}"
    );
    for key in [
        "API_PUT_MACHINE ",
        "API_PUT_BOOT ",
        "API_PUT_DRIVE ",
        "API_START ",
    ] {
        assert_eq!(line(key), "HTTP=204", "{key}:\n{api}");
    }
    let early = line("API_PAUSE_EARLY ");
    assert!(
        early.contains("not supported before starting the microVM") && early.ends_with("HTTP=400"),
        "{early}"
    );
    let late = line("API_PUT_MACHINE_AFTER ");
    assert!(
        late.contains("not supported after starting the microVM") && late.ends_with("HTTP=400"),
        "{late}"
    );
    assert!(api.contains("API-READY"), "the guest booted:\n{api}");
    assert_eq!(
        field(api, "KBD="),
        Some("1"),
        "the guest found the i8042 keyboard:\n{api}"
    );
    assert_eq!(line("API_PAUSE "), "HTTP=204");
    assert!(
        line("API_INFO_PAUSED ").contains(r#""state":"Paused""#),
        "{api}"
    );
    let paused: Vec<u64> = line("PAUSED_TICKS ")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(paused[0] >= 3, "ticks before the pause: {paused:?}");
    assert_eq!(
        paused[0], paused[1],
        "the guest made progress while paused:\n{api}"
    );
    assert_eq!(line("API_RESUME "), "HTTP=204");
    let resumed: u64 = line("RESUMED_TICKS ").parse().unwrap();
    assert!(
        resumed > paused[1],
        "the guest continues after resume:\n{api}"
    );
    for bad in [
        "soft lockup",
        "rcu_sched detected stall",
        "rcu: INFO",
        "clocksource",
    ] {
        assert!(!api.contains(bad), "{bad:?} after a 5 s pause:\n{api}");
    }
    assert_eq!(
        line("API_1000 "),
        "1000 200;",
        "1000 requests while the guest runs"
    );
    let after: Vec<u64> = line("AFTER_1000_TICKS ")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        after[1] > after[0],
        "the guest stays healthy after 1000 requests:\n{api}"
    );
    assert_eq!(line("API_PATCH_DRIVE "), "HTTP=204");
    assert!(api.contains("size=2048"), "the first image (1 MiB):\n{api}");
    assert!(
        api.contains("size=6144"),
        "the guest sees the new image's size (3 MiB):\n{api}"
    );
    let config = line("API_CONFIG ");
    assert!(
        config.contains(r#""vcpu_count":2"#) && config.contains("/tmp/api-big.img"),
        "{config}"
    );
    let exit_counters: u64 = line("API_EXITS_KEYS ").parse().unwrap();
    assert!(exit_counters > 3, "GET /vm/exits has counters:\n{api}");
    assert_eq!(line("API_CAD "), "HTTP=204");
    assert!(
        api.contains("CTRL-ALT-DEL received"),
        "the guest saw Ctrl+Alt+Del:\n{api}"
    );
    assert_eq!(
        line("API_STATUS="),
        "0",
        "Ctrl+Alt+Del ends it cleanly:\n{api}"
    );
}

#[test]
fn config_file_boots_at_once() {
    let Some(console) = scenarios() else {
        return;
    };
    let r = parse(console);
    let (status, text) = r
        .get("config-file")
        .cloned()
        .unwrap_or_else(|| panic!("no config-file result:\n{console}"));
    assert_eq!(status, 0, "config-file:\n{text}");
    assert!(text.contains("@@L2-USERSPACE-UP@@"), "config-file:\n{text}");
}

#[test]
fn jailed_linux_guest_boots_and_its_cgroup_memory_limit_holds() {
    let Some(console) = scenarios() else {
        return;
    };
    let r = parse(console);
    assert_eq!(
        field(console, "CGROUP2="),
        Some("1"),
        "L1 must have cgroup v2 for this test:\n{console}"
    );
    let (_, jail) = r
        .get("jail")
        .cloned()
        .unwrap_or_else(|| panic!("no jail scenario:\n{console}"));
    assert!(
        jail.contains("@@L2-USERSPACE-UP@@"),
        "jail: no boot:\n{jail}"
    );
    let api = field(&jail, "JAIL_API").unwrap_or_default();
    assert!(
        api.contains(r#""state":"Running""#),
        "jail: the API inside the jail:\n{jail}"
    );
    assert_eq!(field(&jail, "JAIL_MEMORY_MAX"), Some("419430400"), "{jail}");
    assert_eq!(field(&jail, "JAIL_PIDS_MAX"), Some("64"), "{jail}");
    let uids: Vec<&str> = jail
        .lines()
        .filter_map(|l| l.strip_prefix("JAIL_PROC_UID "))
        .map(str::trim)
        .collect();
    assert!(
        uids.contains(&"Uid: 65534 65534 65534 65534"),
        "jail: the jailed VMM runs as nobody: {uids:?}\n{jail}"
    );
    assert_eq!(
        field(&jail, "JAIL_STATUS="),
        Some("0"),
        "jail: Ctrl+Alt+Del ends it:\n{jail}"
    );
    assert_eq!(
        field(&jail, "JAIL_CGROUP_LEFT="),
        Some("0"),
        "jail: cgroup removed:\n{jail}"
    );

    let (_, oom) = r
        .get("jail-oom")
        .cloned()
        .unwrap_or_else(|| panic!("no jail-oom scenario:\n{console}"));
    assert!(
        oom.contains("@@L2-USERSPACE-UP@@"),
        "jail-oom: no boot:\n{oom}"
    );
    assert!(
        !oom.contains("FILLED rc=0"),
        "jail-oom: the guest touched 200 MiB under a 96 MiB limit:\n{oom}"
    );
    assert_eq!(
        field(&oom, "JAIL_OOM_STATUS="),
        Some("137"),
        "jail-oom: the VMM must be OOM-killed in its cgroup:\n{oom}"
    );
    assert!(
        oom.contains("killed by SIGKILL"),
        "jail-oom: the parent says so:\n{oom}"
    );
}
