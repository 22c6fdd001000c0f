//! Boots the Debian kernel with a busybox initramfs under ferrovm, where KVM has hardware
//! virtualization: inside the nested testbed's L1 (shared/TESTBED.md) on hosts without
//! vmx/svm, directly otherwise. All scenarios share one L1 boot (see linux/scenarios.sh).

use std::collections::HashMap;
use std::time::Duration;

use testbed::{binary_with_libs, l2_initramfs, Job, JobFile, Testbed};

const SCENARIOS: &str = include_str!("linux/scenarios.sh");
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
    let initrd = l2_initramfs(&tb.host().busybox, L2_INIT, &[]).expect("L2 initramfs");
    let ferrovm = env!("CARGO_BIN_EXE_ferrovm");
    if testbed::host_has_hw_virt() {
        // Real VT-x/AMD-V: run the scenarios right here.
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("linux-boot");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("initrd.cpio"), &initrd).unwrap();
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
        .file(JobFile::host(&tb.base().vmlinux, "/l2/vmlinux", 0o644))
        .file(JobFile::host(&tb.host().vmlinuz, "/l2/bzImage", 0o644))
        .file(JobFile::bytes(initrd, "/l2/initrd.cpio", 0o644))
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
    let Some(console) = run_scenarios() else {
        return;
    };
    assert!(
        console.contains("SCENARIOS-DONE"),
        "scenarios did not finish:\n{console}"
    );
    let r = parse(&console);
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
