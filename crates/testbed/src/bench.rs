//! L2 boot benchmark: in ONE L1 run, boot the same L2 kernel and initramfs N times
//! with each VMM (interleaved), and time from VMM start to the L2 marker line.
//!
//! Timing is taken inside L1 by busybox `ts '%.s'`, which prefixes every output line
//! with the wall clock in microseconds as it reads it. Only ratios between VMMs in the
//! same run mean anything (TCG timings are inflated and noisy).

use std::fmt::Write as _;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::guest::{
    default_l2_init, qemu_files, qemu_l2_command, L2_INITRD, L2_KERNEL, L2_MARKER, L2_MEM_MIB,
};
use crate::job::{Job, JobFile, JobOutput};
use crate::Testbed;

const T0_TAG: &str = "@@BENCH-T0";
const RC_TAG: &str = "@@BENCH-RC";

/// A VMM under test: a shell command run in L1 (with the files it needs) that boots
/// [`L2_KERNEL`] + [`L2_INITRD`] (or [`crate::L2_BZIMAGE`]) and prints L2's console to stdout.
#[derive(Debug, Clone)]
pub struct BenchVmm {
    /// Short name without spaces, e.g. "qemu" or "ferrovm".
    pub name: String,
    /// Shell command line run in L1.
    pub command: String,
    /// Files the command needs in L1 (binary, libraries, firmware ...).
    pub files: Vec<JobFile>,
}

impl BenchVmm {
    /// QEMU microvm with KVM in L1 (the baseline).
    pub fn qemu_microvm(tb: &Testbed) -> Result<Self> {
        Ok(BenchVmm {
            name: "qemu-microvm".into(),
            command: qemu_l2_command(L2_KERNEL, L2_INITRD, L2_MEM_MIB),
            files: qemu_files(tb.host())?,
        })
    }
}

/// The benchmark description.
#[derive(Debug, Clone)]
pub struct BootBench {
    pub vmms: Vec<BenchVmm>,
    /// Boots per VMM.
    pub iterations: u32,
    /// L2 `/init` body; it must print `marker` (default: [`default_l2_init`]).
    pub l2_init: String,
    /// The line that counts as "L2 booted".
    pub marker: String,
    /// Limit for one boot (killed with SIGKILL in L1 when passed).
    pub boot_timeout: Duration,
    /// Also put the bzImage at [`crate::L2_BZIMAGE`].
    pub with_bzimage: bool,
}

impl BootBench {
    /// `iterations` boots of each VMM with the default L2 `/init`.
    pub fn new(vmms: Vec<BenchVmm>, iterations: u32) -> Self {
        BootBench {
            vmms,
            iterations,
            l2_init: default_l2_init(),
            marker: L2_MARKER.into(),
            boot_timeout: Duration::from_secs(90),
            with_bzimage: false,
        }
    }
}

/// One boot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// VMM start to the marker line; `None` when the marker never came.
    pub to_marker: Option<Duration>,
    /// VMM start to VMM exit.
    pub to_exit: Duration,
    /// The VMM's exit code (137 when killed by the boot timeout).
    pub exit_code: i32,
}

/// All boots of one VMM.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub name: String,
    pub samples: Vec<Sample>,
}

impl BenchResult {
    /// Median time to marker over successful boots.
    pub fn median_to_marker(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = self.samples.iter().filter_map(|s| s.to_marker).collect();
        v.sort();
        v.get(v.len() / 2).copied()
    }

    /// Boots where the marker did not appear.
    pub fn failures(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| s.to_marker.is_none())
            .count()
    }
}

/// The benchmark's outcome.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// In the order of [`BootBench::vmms`]; the first is the baseline of the ratios.
    pub results: Vec<BenchResult>,
    /// The whole L1 run (console for debugging).
    pub output: JobOutput,
}

impl BenchReport {
    /// A table: per VMM the median, min and max time to marker, failures, and the
    /// median's ratio to the first VMM's.
    pub fn summary(&self) -> String {
        let base = self.results.first().and_then(BenchResult::median_to_marker);
        let mut s = format!(
            "{:<24} {:>10} {:>8} {:>8} {:>5}  ratio\n",
            "vmm", "median_ms", "min_ms", "max_ms", "fail"
        );
        for r in &self.results {
            let ok: Vec<f64> = r
                .samples
                .iter()
                .filter_map(|x| x.to_marker)
                .map(|d| d.as_secs_f64() * 1e3)
                .collect();
            let min = ok.iter().copied().fold(f64::INFINITY, f64::min);
            let max = ok.iter().copied().fold(0.0, f64::max);
            let med = r.median_to_marker().map(|d| d.as_secs_f64() * 1e3);
            let ratio = match (med, base) {
                (Some(m), Some(b)) if b > Duration::ZERO => {
                    format!("{:.2}", m / (b.as_secs_f64() * 1e3))
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "{:<24} {:>10} {:>8.0} {:>8.0} {:>5}  {ratio}",
                r.name,
                med.map_or("-".into(), |m| format!("{m:.0}")),
                if ok.is_empty() { f64::NAN } else { min },
                if ok.is_empty() { f64::NAN } else { max },
                r.failures(),
            );
        }
        s
    }
}

/// Runs the benchmark in one L1 boot.
pub fn run_boot_bench(tb: &Testbed, bench: &BootBench) -> Result<BenchReport> {
    if bench.vmms.is_empty() || bench.iterations == 0 {
        return Err(Error::BadJob(
            "benchmark needs at least one VMM and one iteration".into(),
        ));
    }
    for v in &bench.vmms {
        if v.name.is_empty() || v.name.contains(char::is_whitespace) {
            return Err(Error::BadJob(format!(
                "VMM name {:?} must be non-empty without spaces",
                v.name
            )));
        }
    }
    let mut files = tb.l2_guest_files(&bench.l2_init, bench.with_bzimage)?;
    let mut script = String::from("set -u\n");
    for (i, v) in bench.vmms.iter().enumerate() {
        files.extend(v.files.iter().cloned());
        files.push(JobFile::bytes(
            format!("{}\n", v.command),
            format!("/bench/{i}.sh"),
            0o755,
        ));
    }
    let secs = bench.boot_timeout.as_secs().max(1);
    let n = bench.vmms.len();
    for it in 0..bench.iterations {
        for k in 0..n {
            // Rotate the order each iteration so no VMM always runs first.
            let i = (k + it as usize) % n;
            let name = &bench.vmms[i].name;
            let _ = writeln!(
                script,
                "{{ echo \"{T0_TAG} {name} {it}\"; timeout -s KILL {secs} sh /bench/{i}.sh 2>&1; echo \"{RC_TAG} {name} {it} $?\"; }} | ts '%.s'"
            );
        }
    }
    let per_boot = bench.boot_timeout.as_secs_f64() * f64::from(bench.iterations) * n as f64;
    let job = Job::new(script)
        .files(files)
        .timeout(Duration::from_secs_f64(per_boot + 180.0));
    let output = tb.run(&job)?;
    let results = parse_bench(&output.console, bench)?;
    Ok(BenchReport { results, output })
}

fn parse_bench(console: &str, bench: &BootBench) -> Result<Vec<BenchResult>> {
    let mut results: Vec<BenchResult> = bench
        .vmms
        .iter()
        .map(|v| BenchResult {
            name: v.name.clone(),
            samples: Vec::new(),
        })
        .collect();
    // State of the boot in progress: (vmm index, iteration, t0, first marker time).
    let mut cur: Option<(usize, u32, f64, Option<f64>)> = None;
    for line in console.lines() {
        let Some((ts, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(t) = ts.parse::<f64>() else { continue };
        if let Some(tail) = rest.strip_prefix(T0_TAG) {
            let mut w = tail.split_whitespace();
            let idx = w
                .next()
                .and_then(|name| bench.vmms.iter().position(|v| v.name == name));
            let it = w.next().and_then(|x| x.parse().ok());
            if let (Some(idx), Some(it)) = (idx, it) {
                cur = Some((idx, it, t, None));
            }
        } else if let Some(tail) = rest.strip_prefix(RC_TAG) {
            let Some((idx, it, t0, marker)) = cur.take() else {
                continue;
            };
            let code = tail
                .split_whitespace()
                .nth(2)
                .and_then(|c| c.parse().ok())
                .unwrap_or(-1);
            let secs = |x: f64| Duration::from_secs_f64((x - t0).max(0.0));
            if let Some(r) = results.get_mut(idx) {
                r.samples.push(Sample {
                    to_marker: marker.map(secs),
                    to_exit: secs(t),
                    exit_code: code,
                });
            }
            tracing::debug!(vmm = idx, iteration = it, "boot measured");
        } else if rest.contains(&bench.marker) {
            if let Some((_, _, _, m @ None)) = cur.as_mut() {
                *m = Some(t);
            }
        }
    }
    for r in &results {
        if r.samples.len() != bench.iterations as usize {
            return Err(Error::Bench {
                vmm: r.name.clone(),
                iteration: r.samples.len() as u32,
                cause: format!(
                    "only {} of {} boots were recorded",
                    r.samples.len(),
                    bench.iterations
                ),
            });
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timestamped_console() {
        let bench = BootBench::new(
            vec![
                BenchVmm {
                    name: "a".into(),
                    command: String::new(),
                    files: vec![],
                },
                BenchVmm {
                    name: "b".into(),
                    command: String::new(),
                    files: vec![],
                },
            ],
            1,
        );
        let console = format!(
            "noise\n100.000000 {T0_TAG} a 0\n100.500000 booting\n101.250000 {L2_MARKER} 6.1\n101.500000 {RC_TAG} a 0 0\n\
             200.000000 {T0_TAG} b 0\n203.000000 {RC_TAG} b 0 137\n"
        );
        let r = parse_bench(&console, &bench).unwrap();
        assert_eq!(r[0].samples[0].to_marker, Some(Duration::from_millis(1250)));
        assert_eq!(r[0].samples[0].to_exit, Duration::from_millis(1500));
        assert_eq!(r[1].samples[0].to_marker, None);
        assert_eq!(r[1].samples[0].exit_code, 137);
        assert_eq!(r[1].failures(), 1);
        assert!(parse_bench("nothing", &bench).is_err());
    }
}
