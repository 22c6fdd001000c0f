//! Snapshots of a Linux guest with a disk and a NIC under ferrovm, where KVM has hardware
//! virtualization: inside the nested testbed's L1 (shared/TESTBED.md) on hosts without
//! vmx/svm, directly otherwise (as root, with iproute2 and curl). All scenarios share one
//! L1 boot (linux/snap-scenarios.sh; the guest is linux/snap-l2-init.sh, which counts,
//! writes a disk record per count and pings L1); each test below checks one of them:
//!
//! - full: boot, count to 5, pause, snapshot, kill -9, restore in a new process
//!   (`run --restore --resume`): the count goes on from the next value, the disk holds the
//!   records written before and after, and no soft lockup, RCU stall, hung task or
//!   clocksource complaint appears;
//! - network: in the same run, L1 and the guest ping each other before and after;
//! - clones: two restores of that snapshot at once (`ctl restore` and `PUT /snapshot/load`
//!   with network_overrides), each on its own copy of the disk (bind-mounted over the
//!   saved path in a private mount namespace: a load cannot point a drive elsewhere), and
//!   a third restored paused whose drive `PATCH /drives` points at a copy before it runs;
//! - diff: with dirty page tracking, Full at t1, Diff and Full at t2; the diff merged
//!   onto t1's memory file equals t2's full one, and restoring it continues like t2's;
//! - bad files: a truncated state file and a memory file of the wrong size are refused
//!   with clear messages before anything runs (command line and API).
//!
//! `FERROVM_TEST_VERBOSE=1` streams L1's console; `FERROVM_SNAP_SCENARIOS="full clones"`
//! runs only those scenarios (the others' tests then fail for want of results).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use testbed::guest::{l1_net_files, l1_net_setup, virtio_net_insmod, virtio_net_modules, L1_IP};
use testbed::{
    binary_with_libs, l2_initramfs, virtio_insmod, virtio_modules, Job, JobFile, Testbed,
};

const SCENARIOS: &str = include_str!("linux/snap-scenarios.sh");
const L2_INIT: &str = include_str!("linux/snap-l2-init.sh");
const CURL: &str = "/usr/bin/curl";
/// Kernel messages that must not follow a restore.
const BAD_KERNEL_LINES: [&str; 8] = [
    "soft lockup",
    "hung task",
    "blocked for more than",
    "self-detected stall",
    "rcu_sched detected stall",
    "rcu: INFO",
    "clocksource",
    "Call Trace",
];

/// What L1 printed: its facts and every VMM's output.
struct Run {
    facts: HashMap<String, String>,
    /// `<vm>.out` (guest console) and `<vm>.err` (ferrovm's messages).
    vms: HashMap<String, String>,
    /// The end of L1's console, shown when something expected is missing from it.
    tail: String,
}

impl Run {
    fn fact(&self, key: &str) -> &str {
        self.facts.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "no FACT {key} from L1; facts: {:#?}\n{}\nL1's console ends:\n{}",
                self.facts,
                self.errs(),
                self.tail
            )
        })
    }

    fn num(&self, key: &str) -> u64 {
        let v = self.fact(key);
        v.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("FACT {key} is {v:?}, not a number"))
    }

    fn out(&self, vm: &str) -> &str {
        self.vms
            .get(&format!("{vm}.out"))
            .map(String::as_str)
            .unwrap_or_else(|| {
                panic!(
                    "no console of {vm}; VMs: {:?}\nL1's console ends:\n{}",
                    self.vms.keys(),
                    self.tail
                )
            })
    }

    fn err(&self, vm: &str) -> &str {
        self.vms
            .get(&format!("{vm}.err"))
            .map_or("", String::as_str)
    }

    /// Every VMM's stderr, for failure messages.
    fn errs(&self) -> String {
        let mut keys: Vec<&String> = self.vms.keys().filter(|k| k.ends_with(".err")).collect();
        keys.sort();
        keys.iter()
            .map(|k| format!("--- {k} ---\n{}", self.vms[*k]))
            .collect()
    }

    /// A VM's console and stderr, for failure messages.
    fn show(&self, vm: &str) -> String {
        format!(
            "--- {vm} console ---\n{}\n--- {vm} stderr ---\n{}",
            self.vms
                .get(&format!("{vm}.out"))
                .map_or("(none)", String::as_str),
            self.err(vm)
        )
    }
}

fn parse(console: &str) -> Run {
    let mut facts = HashMap::new();
    let mut vms = HashMap::new();
    let mut current: Option<(String, String)> = None;
    // The script never nests dumps and prints facts only between them, so a fact or a
    // new dump ends a dump whose end marker was lost (seen: once a suite run parsed no
    // fact at all); an end marker glued to a last line without a newline still counts.
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("FACT ") {
            if let Some((name, text)) = current.take() {
                vms.insert(name, text);
            }
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            facts.insert(k.to_string(), v.trim().to_string());
        } else if let Some(name) = line.strip_prefix("VM-BEGIN ") {
            if let Some((name, text)) = current.take() {
                vms.insert(name, text);
            }
            current = Some((name.trim().to_string(), String::new()));
        } else if let Some((name, text)) = current.as_mut() {
            let end = format!("VM-END {name}");
            if let Some(before) = line.strip_suffix(end.as_str()) {
                if !before.is_empty() {
                    text.push_str(before);
                    text.push('\n');
                }
                let (name, text) = current.take().unwrap_or_default();
                vms.insert(name, text);
            } else {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    if let Some((name, text)) = current.take() {
        vms.insert(name, text);
    }
    Run {
        facts,
        vms,
        tail: testbed::console_tail(console).to_string(),
    }
}

/// The counter values of the `COUNT n ...` lines of a console, with their lines.
fn counts(text: &str) -> Vec<(u64, &str)> {
    text.lines()
        .filter_map(|l| {
            let n = l.strip_prefix("COUNT ")?.split_whitespace().next()?;
            Some((n.parse().ok()?, l))
        })
        .collect()
}

/// Failed expectations of one test, all reported together (one failure must not hide the
/// next: each names a different ferrovm problem).
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    /// Records `message` unless `ok`.
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) -> bool {
        if !ok {
            self.0.push(message());
        }
        ok
    }

    /// Panics with every failed expectation.
    fn finish(self, test: &str) {
        if !self.0.is_empty() {
            panic!(
                "{test}: {} failed expectation(s):\n\n{}",
                self.0.len(),
                self.0.join("\n\n")
            );
        }
    }

    /// The guest's count, across the console `before` the snapshot and the console `after`
    /// the restore (their concatenation: a line may have been cut by the pause), runs 1, 2,
    /// 3 ... without a gap or a repeat; the restored guest counted past `last` + `more`;
    /// every count after the restore wrote and read its disk. Returns the last value the
    /// restored guest printed.
    fn continues(&mut self, what: &str, before: &str, after: &str, last: u64, more: u64) -> u64 {
        let all = format!("{before}{after}");
        let seq = counts(&all);
        if let Some((i, (n, line))) = seq
            .iter()
            .enumerate()
            .find(|(i, (n, _))| *n != *i as u64 + 1)
        {
            self.0.push(format!(
                "{what}: the count must run on without a gap or a restart: {line:?} where \
                 {} was due (after {n} - 1 lines):\n--- before the snapshot ---\n{before}\n\
                 --- after the restore ---\n{after}",
                i + 1
            ));
            return 0;
        }
        let reached = seq.last().map_or(0, |(n, _)| *n);
        self.check(reached >= last + more, || {
            format!(
                "{what}: the restored guest must count on from {last} to at least {} (it \
                 reached {reached}):\n{after}",
                last + more
            )
        });
        let bad: Vec<&str> = counts(after)
            .into_iter()
            .map(|(_, l)| l)
            .filter(|l| !(l.contains(" w=0 ") && l.contains(" rd=ok ")))
            .collect();
        self.check(bad.is_empty(), || {
            format!(
                "{what}: counts after the restore whose disk write (w=) or read of the \
                 previous record (rd=) failed: {bad:#?}"
            )
        });
        reached
    }

    /// No kernel complaints in a restored guest's console (KMSG lines and console messages).
    fn kernel_quiet(&mut self, what: &str, console: &str) {
        let hits: Vec<&str> = console
            .lines()
            .filter(|l| BAD_KERNEL_LINES.iter().any(|b| l.contains(b)))
            .collect();
        self.check(hits.is_empty(), || {
            format!("{what}: the guest's kernel complains: {hits:#?}")
        });
    }

    /// The disk records (numbers in sector order) are exactly 1..=k with `printed` <= k <=
    /// `printed` + 1: every printed count's record, in its place, nothing else.
    fn records(&mut self, what: &str, records: &str, printed: u64) {
        let got: Vec<u64> = records
            .split_whitespace()
            .map(|r| r.parse().unwrap_or(0))
            .collect();
        let k = got.len() as u64;
        self.check(got.iter().copied().eq(1..=k), || {
            format!("{what}: the disk must hold records 1..{k} in sectors 1..{k}: {got:?}")
        });
        self.check((printed..=printed + 1).contains(&k), || {
            format!("{what}: {k} records on the disk for {printed} printed counts")
        });
    }
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
                "*** SKIPPED linux_snapshot: testbed unavailable ({e}) and {}=1 ***",
                testbed::SKIP_ENV
            );
            return None;
        }
        Err(e) => panic!(
            "linux_snapshot: the nested testbed is unavailable: {e}\n(set {}=1 to skip explicitly)",
            testbed::SKIP_ENV
        ),
    };
    let init = L2_INIT
        .replace("@VIRTIO_INSMOD@", &virtio_insmod())
        .replace("@NET_INSMOD@", &virtio_net_insmod());
    let mut l2_extra = virtio_modules(tb.host()).expect("virtio modules");
    l2_extra.extend(virtio_net_modules(tb.host()).expect("virtio-net modules"));
    let initrd = l2_initramfs(&tb.host().busybox, &init, &l2_extra).expect("L2 initramfs");
    let ferrovm = env!("CARGO_BIN_EXE_ferrovm");
    let only = std::env::var("FERROVM_SNAP_SCENARIOS").unwrap_or_default();

    if testbed::host_has_hw_virt() {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("linux-snapshot");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("snap-initrd.cpio"), &initrd).unwrap();
        std::fs::copy(&tb.base().vmlinux, dir.join("vmlinux")).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(SCENARIOS)
            .env("FERROVM", ferrovm)
            .env("L2", &dir)
            .env("IP", "/usr/sbin/ip")
            .env("CURL", CURL)
            .env("SNAP_SCENARIOS", &only)
            .output()
            .expect("run the snapshot scenarios");
        return Some(String::from_utf8_lossy(&out.stdout).into_owned());
    }

    let script = format!(
        "export FERROVM=/ferrovm L2=/l2 IP={L1_IP} CURL={CURL} SNAP_SCENARIOS=\"{only}\"\n{}{SCENARIOS}",
        l1_net_setup()
    );
    let job = Job::new(script)
        .files(binary_with_libs(Path::new(ferrovm), "/ferrovm").expect("ferrovm libs"))
        .files(binary_with_libs(Path::new(CURL), CURL).unwrap_or_else(|e| {
            panic!("{CURL} (Debian package curl, installed by scripts/setup.sh): {e}")
        }))
        .files(l1_net_files(tb.host()).expect("L1 networking files"))
        .file(JobFile::host(&tb.base().vmlinux, "/l2/vmlinux", 0o644))
        .file(JobFile::bytes(initrd, "/l2/snap-initrd.cpio", 0o644))
        .mem_mib(3072)
        .timeout(Duration::from_secs(600));
    let out = tb.run(&job).expect("testbed run");
    assert!(
        out.l1_kvm,
        "L1 has no /dev/kvm:\n{}",
        testbed::console_tail(&out.console)
    );
    eprintln!(
        "linux_snapshot: the scenarios took {:.0} s in L1 ({:.0} s with L1's boot)",
        out.wall.as_secs_f64() - out.l1_boot.map_or(0.0, |d| d.as_secs_f64()),
        out.wall.as_secs_f64()
    );
    Some(out.job_console().to_string())
}

/// The shared run (`None`: skipped).
fn run() -> Option<&'static Run> {
    static RESULT: std::sync::OnceLock<Option<(String, Run)>> = std::sync::OnceLock::new();
    let r = RESULT.get_or_init(|| {
        run_scenarios().map(|console| {
            let run = parse(&console);
            // The whole console, for when a fact is missing (the panics show its end).
            let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("linux_snapshot-console.txt");
            if std::fs::write(&keep, &console).is_ok() {
                eprintln!("linux_snapshot: L1's console is in {}", keep.display());
            }
            (console, run)
        })
    });
    let (console, run) = r.as_ref()?;
    assert!(
        console.contains("SNAP-SCENARIOS-DONE"),
        "the snapshot scenarios did not finish:\n{}",
        testbed::console_tail(console)
    );
    Some(run)
}

/// Fails with L1's reason when a scenario could not get going.
fn no_error(r: &Run, scenario: &str) {
    if let Some(e) = r.facts.get(&format!("{scenario}.error")) {
        panic!("{scenario}: {e}\n{}", r.errs());
    }
}

#[test]
fn full_snapshot_kill_restore_counts_on_with_its_disk() {
    let Some(r) = run() else { return };
    no_error(r, "full");
    let mut c = Checks::default();
    for key in ["full.pause0", "full.resume0", "full.pause"] {
        let f = r.fact(key);
        c.check(f.contains(" rc=0 "), || format!("ctl {key}: {f}"));
    }
    let snap = r.fact("full.snapshot");
    c.check(snap.starts_with("rc=0"), || {
        format!("ctl snapshot: {snap}\n{}", r.show("main"))
    });
    let last = r.num("full.last_before");
    c.check(last >= 5, || {
        format!("the guest counted to {last} before the snapshot")
    });
    c.check(r.num("full.last_at_kill") == last, || {
        format!("the paused guest went on counting:\n{}", r.show("main"))
    });
    c.check(r.fact("vm.main.rc") == "137", || {
        "the first VMM must run until killed".into()
    });
    // The memory file has the guest's size and is sparse.
    let mem: Vec<u64> = r
        .fact("full.mem_file")
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    c.check(mem.first() == Some(&(256 << 20)), || {
        format!("memory file size and blocks: {mem:?}")
    });
    c.check(mem.get(1).is_some_and(|b| b * 512 < 256 << 20), || {
        format!("the memory file should be sparse: {mem:?} (size, 512-byte blocks)")
    });
    let info = r.fact("full.info");
    c.check(
        info.contains("1 vCPU(s)") && info.contains("disk.img") && info.contains("tapS"),
        || format!("snapshot info: {info}"),
    );
    let before = r.out("main");
    let after = r.out("full-restored");
    c.check(r.fact("vm.full-restored.rc") == "137", || {
        format!(
            "the restored VMM must run until killed:\n{}",
            r.show("full-restored")
        )
    });
    let reached = c.continues("full", before, after, last, 10);
    c.kernel_quiet("full: before the snapshot (a 2 s pause and resume)", before);
    c.kernel_quiet("full: after the restore", after);
    c.records("full", r.fact("full.disk_records"), reached);
    c.finish("full");
}

#[test]
fn network_survives_restore() {
    let Some(r) = run() else { return };
    no_error(r, "full");
    let mut c = Checks::default();
    let before = r.out("main");
    c.check(before.contains("G:MAC=02:00:00:00:09:02"), || {
        format!("the guest's MAC:\n{before}")
    });
    c.check(
        counts(before).iter().any(|(_, l)| l.contains(" net=0 ")),
        || format!("the guest pinged L1 before the snapshot:\n{before}"),
    );
    c.check(r.fact("full.l1_ping_before") == "0", || {
        "L1 pinged the guest before the snapshot".into()
    });
    let after = r.out("full-restored");
    let pings = counts(after);
    let bad: Vec<&str> = pings
        .iter()
        .map(|(_, l)| *l)
        .filter(|l| !l.contains(" net=0 "))
        .collect();
    c.check(!pings.is_empty() && bad.is_empty(), || {
        format!(
            "every ping of L1 by the restored guest must get through; failed: {bad:#?}\n{}",
            r.show("full-restored")
        )
    });
    c.check(r.fact("full.l1_ping_after") == "0", || {
        format!("L1 pings the restored guest:\n{}", r.show("full-restored"))
    });
    c.finish("network");
}

#[test]
fn two_clones_of_one_snapshot_run_at_once() {
    let Some(r) = run() else { return };
    no_error(r, "full");
    no_error(r, "clones");
    let mut c = Checks::default();
    let load1 = r.fact("clones.load1");
    c.check(load1.ends_with("rc=0"), || {
        format!("ctl restore: {load1}\n{}", r.show("clone1"))
    });
    let load2 = r.fact("clones.load2");
    c.check(load2.contains("HTTP=204"), || {
        format!(
            "PUT /snapshot/load with network_overrides: {load2}\n{}",
            r.show("clone2")
        )
    });
    c.check(r.fact("clones.both_alive") == "1 1", || {
        format!(
            "both clones run at the same time:\n{}\n{}",
            r.show("clone1"),
            r.show("clone2")
        )
    });
    let last = r.num("full.last_before");
    let before = r.out("main");
    for (i, vm) in ["clone1", "clone2"].iter().enumerate() {
        let out = r.out(vm);
        let reached = c.continues(vm, before, out, last, 8);
        c.kernel_quiet(vm, out);
        c.records(vm, r.fact(&format!("clones.records{}", i + 1)), reached);
        c.check(r.fact(&format!("clones.l1_ping{}", i + 1)) == "0", || {
            format!(
                "{vm}: L1 pings it (in its network namespace):\n{}",
                r.show(vm)
            )
        });
        let bad: Vec<&str> = counts(out)
            .into_iter()
            .map(|(_, l)| l)
            .filter(|l| !l.contains(" net=0 "))
            .collect();
        c.check(bad.is_empty(), || {
            format!("{vm}: its pings of L1 fail: {bad:#?}")
        });
    }
    // clone3: restored paused, its drive pointed elsewhere with PATCH /drives, resumed.
    for key in ["clones.load3", "clones.resume3"] {
        let f = r.fact(key);
        c.check(f.ends_with("rc=0"), || {
            format!("{key}: {f}\n{}", r.show("clone3"))
        });
    }
    let patch = r.fact("clones.patch3");
    c.check(patch.contains("HTTP=204"), || {
        format!(
            "PATCH /drives on a restored, paused VM: {patch}\n{}",
            r.show("clone3")
        )
    });
    let reached = c.continues("clone3", before, r.out("clone3"), last, 8);
    c.records("clone3", r.fact("clones.records3"), reached);
    c.check(
        r.fact("clones.disk_sum_before") == r.fact("clones.disk_sum_after"),
        || "the clones must not write the original disk image".into(),
    );
    c.finish("clones");
}

#[test]
fn diff_snapshot_merged_onto_full_equals_full_at_the_same_moment() {
    let Some(r) = run() else { return };
    no_error(r, "diff");
    let mut c = Checks::default();
    for key in [
        "diff.machine",
        "diff.boot",
        "diff.drive",
        "diff.start",
        "diff.pause1",
        "diff.create_t1",
        "diff.resume1",
        "diff.pause2",
        "diff.create_t2_diff",
        "diff.create_t2_full",
    ] {
        let f = r.fact(key);
        c.check(f.contains("HTTP=204"), || {
            format!("{key}: {f}\n{}", r.show("diff"))
        });
    }
    let (t1, t2) = (r.num("diff.t1"), r.num("diff.t2"));
    c.check(t2 >= t1 + 8, || {
        format!("the guest counted on after the t1 snapshot: {t1} -> {t2}")
    });
    let info = r.fact("diff.info_t2d");
    c.check(info.contains(r#""snapshot_type":"Diff""#), || {
        format!("snapshot info --json of the diff: {info}")
    });
    let merge = r.fact("diff.merge");
    c.check(merge.ends_with("rc=0"), || {
        format!("ferrovm snapshot merge: {merge}")
    });
    c.check(r.fact("diff.cmp") == "0", || {
        format!(
            "t1's memory file with the t1->t2 diff merged onto it must equal t2's full \
             memory file; 4 KiB pages that differ (count, then the first ones): {}\n(files \
             t1/t2-diff/t2-full, size and 512-byte blocks: {})",
            r.fact("diff.cmp_pages"),
            r.fact("diff.files")
        )
    });
    // The full t2 snapshot and the merged memory file (with t2's full state file) both go
    // on from t2, the same way.
    let before = r.out("diff");
    for name in ["full-t2", "merged"] {
        let out = r.out(name);
        let reached = c.continues(&format!("diff {name}"), before, out, t2, 6);
        c.records(
            &format!("diff {name}"),
            r.fact(&format!("diff.{name}.records")),
            reached,
        );
        c.kernel_quiet(&format!("diff {name}"), out);
    }
    // The diff's own state file goes with the merged memory file: Firecracker's way, and
    // what `ferrovm snapshot merge --help` says ("the full file then goes with the diff's
    // state file").
    let out = r.out("merged-diffstate");
    let reached = c.continues(
        "diff: the diff's state file with the merged memory file",
        before,
        out,
        t2,
        6,
    );
    if reached > 0 {
        c.records(
            "diff: the diff's state file with the merged memory file",
            r.fact("diff.merged-diffstate.records"),
            reached,
        );
    } else {
        c.check(false, || {
            format!(
                "diff: ferrovm's stderr for the diff's state file with the merged memory file:\n{}",
                r.err("merged-diffstate")
            )
        });
    }
    c.finish("diff");
}

#[test]
fn bad_snapshot_files_are_refused_before_anything_runs() {
    let Some(r) = run() else { return };
    no_error(r, "bad");
    let mut c = Checks::default();
    for (case, want) in [
        ("trunc", "truncated"),
        ("short", "the snapshot's guest has"),
    ] {
        let f = r.fact(&format!("bad.{case}"));
        let err = r.err(&format!("bad-{case}"));
        c.check(
            f.starts_with("rc=1 ") && f.ends_with("stdout_bytes=0"),
            || format!("{case}: exit status 1 and no guest output: {f}\n{err}"),
        );
        c.check(err.contains(want) && !err.contains("panicked"), || {
            format!("{case}: expected {want:?} in: {err}")
        });
        c.check(
            err.lines().filter(|l| !l.trim().is_empty()).count() == 1,
            || format!("{case}: one clear message, not a log: {err}"),
        );
    }
    for (case, want) in [
        ("api_trunc", "truncated"),
        ("api_short", "the snapshot's guest has"),
    ] {
        let f = r.fact(&format!("bad.{case}"));
        c.check(f.contains("HTTP=400") && f.contains(want), || {
            format!("{case}: a 400 naming the problem ({want:?}): {f}")
        });
    }
    let info = r.fact("bad.api_info");
    c.check(info.contains("Not started"), || {
        format!("refused loads leave the VMM unstarted: {info}")
    });
    c.check(r.fact("bad.api_stdout_bytes") == "0", || {
        "refused loads run nothing".into()
    });
    let good = r.fact("bad.api_good");
    c.check(good.contains("HTTP=204"), || {
        format!(
            "after refused loads, the good files load: {good}\n{}",
            r.show("bad-api")
        )
    });
    let last = r.num("full.last_before");
    c.continues("bad-api", r.out("main"), r.out("bad-api"), last, 3);
    c.finish("bad files");
}

#[test]
fn parse_survives_a_lost_or_glued_end_marker() {
    let console = "FACT a 1\nVM-BEGIN x.out\nCOUNT 1\nCOUNT 2VM-END x.out\nFACT b 2\n\
                   VM-BEGIN y.out\nlast line, no end\nFACT c 3\nVM-BEGIN z.err\nVM-END z.err\n";
    let r = parse(console);
    assert_eq!((r.num("a"), r.num("b"), r.num("c")), (1, 2, 3));
    assert_eq!(r.out("x"), "COUNT 1\nCOUNT 2\n");
    assert_eq!(r.out("y"), "last line, no end\n");
    assert_eq!(r.err("z"), "");
}

#[test]
fn parse_reads_facts_and_vm_outputs() {
    let console =
        "noise\nFACT full.last_before 7\nVM-BEGIN main.out\nCOUNT 1 w=0 rd=ok net=0 up=1.0\r\n\
                   VM-END main.out\nFACT x.y a b c\nVM-BEGIN main.err\nVM-END main.err\n";
    let r = parse(console);
    assert_eq!(r.num("full.last_before"), 7);
    assert_eq!(r.fact("x.y"), "a b c");
    assert_eq!(r.out("main"), "COUNT 1 w=0 rd=ok net=0 up=1.0\n");
    assert_eq!(r.err("main"), "");
    assert_eq!(
        counts(r.out("main")),
        [(1, "COUNT 1 w=0 rd=ok net=0 up=1.0")]
    );
    let mut c = Checks::default();
    // A line cut by the pause is whole again across the two consoles.
    let n = c.continues(
        "t",
        "COUNT 1 w=0 rd=ok net=0 up=1\nCOUNT 2 w=0 rd",
        "=ok net=0 up=2\nCOUNT 3 w=0 rd=ok net=0 up=3\n",
        2,
        1,
    );
    assert_eq!(n, 3);
    c.records("t", "1 2 3", 3);
    c.records("t", "1 2 3 4", 3);
    c.kernel_quiet(
        "t",
        "COUNT 3 w=0 rd=ok net=0 up=3\nKMSG [1.0] eth0: link up\n",
    );
    assert!(c.0.is_empty(), "{:?}", c.0);
    // A restart from 1, a gap, a missing record, a kernel complaint: each reported.
    c.continues(
        "t",
        "COUNT 1 w=0 rd=ok \nCOUNT 2 w=0 rd=ok \n",
        "COUNT 1 w=0 rd=ok \n",
        2,
        1,
    );
    c.continues("t", "COUNT 1 w=0 rd=ok \n", "COUNT 3 w=0 rd=ok \n", 1, 1);
    c.records("t", "1 3", 3);
    c.kernel_quiet(
        "t",
        "KMSG [2.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!\n",
    );
    assert_eq!(c.0.len(), 5, "{:#?}", c.0);
}
