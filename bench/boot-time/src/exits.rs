//! `boot-time --exits`: where the boot time goes, ferrovm against Firecracker in ONE L1.
//! Each VMM boots the same kernel and initramfs once with `printk.time=1 initcall_debug`
//! added to the command line (`quiet` keeps the debug lines off the serial console; the
//! L2 `/init` prints the kernel log once it is up). One second after the userspace marker
//! the VM's KVM counters are read from L1's debugfs (`/sys/kernel/debug/kvm/PID-FD/`,
//! the vCPU counters summed over the VM) and the VMM is killed. Printed: the counters side
//! by side, the kernel's own timestamp of `/init`'s start, and the initcalls whose
//! duration differs most.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use testbed::{default_l2_init, BenchVmm, Job, JobFile, Testbed, L2_MARKER};

/// Added to the benchmark's command line.
pub const EXTRA_CMDLINE: &str = "printk.time=1 initcall_debug";
/// Limit for one boot, s.
const BOOT_LIMIT_S: u32 = 120;

/// The L2 `/init` body: the marker, the kernel log, then stay up.
pub fn l2_init() -> String {
    format!(
        "{}\necho @@EX-DMESG-BEGIN; dmesg; echo @@EX-DMESG-END\nwhile :; do sleep 1; done",
        default_l2_init()
    )
}

/// The L1 script: each VMM in turn, its console to a file, counters after the marker.
pub fn script(vmms: &[BenchVmm]) -> String {
    let mut s = format!(
        r#"set -u
mount -t debugfs none /sys/kernel/debug 2>/dev/null
one() {{
    name=$1; cmd=$2; log=/tmp/ex-$name.log
    sh -c "$cmd" >$log 2>&1 &
    p=$!
    i=0
    while ! grep -q '@@EX-DMESG-END' $log; do
        kill -0 $p 2>/dev/null || break
        i=$((i + 1)); [ $i -gt {polls} ] && break
        sleep 0.25
    done
    sleep 1
    # One VM runs at a time: every VM directory is this VMM's.
    for d in /sys/kernel/debug/kvm/*-*; do
        [ -d "$d" ] || continue
        for f in "$d"/*; do
            [ -f "$f" ] && echo "@@EX-STAT $name $(basename $f) $(cat $f 2>/dev/null | head -n 1)"
        done
    done
    kill -9 $p 2>/dev/null; wait $p 2>/dev/null
    grep -q '{L2_MARKER}' $log && echo "@@EX-UP $name" || echo "@@EX-FAIL $name"
    echo "@@EX-LOG-BEGIN $name"; cat $log; echo "@@EX-LOG-END $name"
}}
"#,
        polls = BOOT_LIMIT_S * 4
    );
    for v in vmms {
        let _ = writeln!(s, "one {} '{}'", v.name, v.command.replace('\'', "'\\''"));
    }
    s.push_str("exit 0\n");
    s
}

/// What one VMM's boot left.
#[derive(Debug, Clone, Default)]
pub struct Boot {
    /// KVM counters of the VM.
    pub stats: BTreeMap<String, u64>,
    /// Initcall -> µs.
    pub initcalls: BTreeMap<String, u64>,
    /// The kernel's timestamp of "Run /init as init process", s.
    pub init_at: Option<f64>,
    /// Whether the marker came.
    pub up: bool,
}

/// `[    1.234567] initcall foo+0x0/0x10 returned 0 after 123 usecs` -> ("foo", 123).
fn initcall(line: &str) -> Option<(String, u64)> {
    let rest = line.split_once("] initcall ")?.1;
    let (name, rest) = rest.split_once(' ')?;
    let us = rest
        .split_once(" after ")?
        .1
        .strip_suffix(" usecs")?
        .trim()
        .parse()
        .ok()?;
    Some((name.split('+').next()?.to_string(), us))
}

/// `[    1.234567] ...` -> 1.234567.
fn stamp(line: &str) -> Option<f64> {
    let inner = line.trim_start().strip_prefix('[')?.split_once(']')?.0;
    inner.trim().parse().ok()
}

/// Reads the console of the job.
pub fn parse(console: &str) -> BTreeMap<String, Boot> {
    let mut out: BTreeMap<String, Boot> = BTreeMap::new();
    let mut in_log: Option<String> = None;
    for line in console.lines() {
        if let Some(name) = &in_log {
            if line.starts_with("@@EX-LOG-END") {
                in_log = None;
                continue;
            }
            let b = out.entry(name.clone()).or_default();
            if let Some((f, us)) = initcall(line) {
                *b.initcalls.entry(f).or_default() += us;
            }
            if line.contains("Run /init as init process") {
                b.init_at = stamp(line);
            }
            continue;
        }
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("@@EX-STAT"), Some(name)) => {
                if let (Some(k), Some(Ok(v))) = (w.next(), w.next().map(str::parse::<u64>)) {
                    out.entry(name.into())
                        .or_default()
                        .stats
                        .insert(k.into(), v);
                }
            }
            (Some("@@EX-UP"), Some(name)) => out.entry(name.into()).or_default().up = true,
            (Some("@@EX-LOG-BEGIN"), Some(name)) => in_log = Some(name.into()),
            _ => {}
        }
    }
    out
}

/// Runs the comparison; the first and last VMM are compared initcall by initcall.
pub fn run(tb: &Testbed, vmms: &[BenchVmm], files: Vec<JobFile>) -> Result<String, String> {
    let mut files = files;
    files.extend(
        tb.l2_guest_files(&l2_init(), true)
            .map_err(|e| e.to_string())?,
    );
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.l1_path.clone()));
    let secs = 180 + vmms.len() as u64 * u64::from(BOOT_LIMIT_S + 30);
    let mut job = Job::new(script(vmms))
        .files(files)
        .timeout(std::time::Duration::from_secs(secs));
    job.cpus = 2;
    let out = tb.run(&job).map_err(|e| e.to_string())?;
    if out.status != 0 {
        return Err(format!(
            "the L1 job ended with status {}\n{}",
            out.status,
            testbed::console_tail(&out.console)
        ));
    }
    Ok(report(&parse(out.job_console()), vmms))
}

/// The table of counters and the initcall differences.
pub fn report(boots: &BTreeMap<String, Boot>, vmms: &[BenchVmm]) -> String {
    let names: Vec<&str> = vmms.iter().map(|v| v.name.as_str()).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<28} {}",
        "KVM counter",
        names.iter().map(|n| format!("{n:>24}")).collect::<String>()
    );
    let mut keys: Vec<&String> = boots.values().flat_map(|b| b.stats.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let vals: Vec<u64> = names
            .iter()
            .map(|n| {
                boots
                    .get(*n)
                    .and_then(|b| b.stats.get(k))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        if vals.iter().all(|v| *v == 0) {
            continue;
        }
        let _ = writeln!(
            s,
            "{k:<28} {}",
            vals.iter().map(|v| format!("{v:>24}")).collect::<String>()
        );
    }
    let _ = writeln!(
        s,
        "{:<28} {}",
        "kernel: /init starts at (s)",
        names
            .iter()
            .map(|n| format!(
                "{:>24}",
                boots
                    .get(*n)
                    .and_then(|b| b.init_at)
                    .map_or("-".into(), |t| format!("{t:.3}"))
            ))
            .collect::<String>()
    );
    let _ = writeln!(
        s,
        "{:<28} {}",
        "initcalls, total ms",
        names
            .iter()
            .map(|n| format!(
                "{:>24}",
                boots.get(*n).map_or("-".into(), |b| format!(
                    "{:.1}",
                    b.initcalls.values().sum::<u64>() as f64 / 1e3
                ))
            ))
            .collect::<String>()
    );
    if let (Some(a), Some(b)) = (
        names.first().and_then(|n| boots.get(*n)),
        names.last().and_then(|n| boots.get(*n)),
    ) {
        let keys: std::collections::BTreeSet<&String> =
            a.initcalls.keys().chain(b.initcalls.keys()).collect();
        let mut diff: Vec<(i64, &String, u64, u64)> = keys
            .into_iter()
            .map(|k| {
                let x = a.initcalls.get(k).copied().unwrap_or(0);
                let y = b.initcalls.get(k).copied().unwrap_or(0);
                (x as i64 - y as i64, k, x, y)
            })
            .collect();
        diff.sort_by_key(|d| std::cmp::Reverse(d.0.abs()));
        let _ = writeln!(
            s,
            "initcalls differing most, µs ({} vs {}):",
            names[0],
            names[names.len() - 1]
        );
        for (d, k, x, y) in diff.iter().take(20) {
            let _ = writeln!(s, "  {k:<40} {x:>10} {y:>10} {d:>+10}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_and_initcalls() {
        let console = "\
@@EX-STAT ferrovm exits 1234
@@EX-STAT ferrovm io_exits 99
@@EX-UP ferrovm
@@EX-LOG-BEGIN ferrovm
[    0.500000] initcall pci_init+0x0/0x20 returned 0 after 1500 usecs
[    0.600000] initcall pci_init+0x0/0x20 returned 0 after 100 usecs
[    1.250000] Run /init as init process
@@EX-LOG-END ferrovm
@@EX-STAT firecracker exits 1000
";
        let b = parse(console);
        let f = &b["ferrovm"];
        assert_eq!(f.stats["exits"], 1234);
        assert_eq!(f.initcalls["pci_init"], 1600);
        assert_eq!(f.init_at, Some(1.25));
        assert!(f.up);
        assert!(!b["firecracker"].up);
        let vmms = vec![
            BenchVmm {
                name: "ferrovm".into(),
                command: String::new(),
                files: vec![],
            },
            BenchVmm {
                name: "firecracker".into(),
                command: String::new(),
                files: vec![],
            },
        ];
        let r = report(&b, &vmms);
        assert!(r.contains("exits") && r.contains("pci_init"), "{r}");
        assert!(script(&vmms).contains("one firecracker ''"));
    }
}
