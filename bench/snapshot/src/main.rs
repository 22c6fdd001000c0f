//! Snapshot benchmark: how long ferrovm takes to snapshot a Linux guest and to have it
//! running again from the snapshot, for 256 MiB and 2 GiB guests, against Firecracker
//! (`FIRECRACKER_BIN`) in the same testbed L1. See the library (src/lib.rs) for exactly
//! what is timed: `PUT /snapshot/create` (Full) as curl sees it; "to next instruction" =
//! `PUT /snapshot/load` with resume_vm: true as curl sees it (both VMMs answer it once
//! their vCPU threads were set running); "to next console line" = from right before that
//! request to the guest's first console line after it. Both VMMs in fresh processes with
//! only `--api-sock`, the same kernel, initramfs, boot args and vCPUs. Restores are
//! interleaved, order rotated every round.
//!
//! Targets (issue): restore latency (to the next console line, the figure that includes
//! the guest's first page faults) at most 0.5x Firecracker's at each size, and ferrovm's
//! 2 GiB restore within 1.2x of its 256 MiB one. A missed target prints
//! "NOT met" and still exits 0; exit 1: a measurement failed; 2: cannot run.
//!
//! Usage: cargo build --release -p ferrovm -p snapshot-bench &&
//!        [FIRECRACKER_BIN=/path/to/firecracker] flock /tmp/testbed.lock
//!        target/x86_64-unknown-linux-gnu/release/snapshot-bench [ROUNDS (default 5)] [--creates N (default 3)]
//!        [--size MIB]... [-v]
//! With `FERROVM_LOG` set (e.g. `info`), ferrovm in L1 logs at that level too: its
//! "restored ... in" line then shows, time-stamped among the restore's output (-v), how
//! much of the load request the restore itself took.
//! (about 4 minutes of host time with Firecracker and the defaults).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use snapshot_bench::{parse, script, Options, PairResult, Summary, Vmm, BOOT_ARGS, L2_VCPUS};
use testbed::{binary_with_libs, Job, Testbed};

/// Target: ferrovm's restore-to-running / Firecracker's at most this.
const FIRECRACKER_TARGET: f64 = 0.5;
/// Target: ferrovm's restore-to-running at the largest size / at the smallest at most this.
const SIZE_TARGET: f64 = 1.2;
/// L1 memory: a Full Firecracker snapshot of a 2 GiB guest is a 2 GiB file in L1's RAM.
const L1_MEM_MIB: u32 = 6144;
/// Lines of a failed restore's log to show.
const LOG_TAIL: usize = 20;

#[derive(Parser)]
#[command(
    about = "Snapshot create and restore-to-running latency, ferrovm vs Firecracker, in one testbed L1"
)]
struct Cli {
    /// Restores per VMM and size (interleaved; medians are reported).
    #[arg(default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Snapshots taken per VMM and size (one boot each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    creates: u32,
    /// Guest sizes in MiB (repeatable) [default: 256 and 2048].
    #[arg(long = "size")]
    sizes: Vec<u32>,
    /// Stream L1's console on stderr.
    #[arg(short, long)]
    verbose: bool,
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own path: {e}"))?;
    let p = exe.parent().map(|d| d.join(name)).unwrap_or_default();
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found; build it first: cargo build --release -p ferrovm -p snapshot-bench",
            p.display()
        ))
    }
}

fn firecracker_from_env() -> Option<PathBuf> {
    std::env::var_os("FIRECRACKER_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn cell(v: &[f64]) -> String {
    Summary::of(v).map_or_else(
        || "-".into(),
        |s| format!("{:.0} ({:.0}-{:.0}, n={})", s.median, s.min, s.max, s.n),
    )
}

fn med(v: &[f64]) -> Option<f64> {
    Summary::of(v).map(|s| s.median)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}

fn verdict(r: Option<f64>, target: f64) -> &'static str {
    match r {
        Some(r) if r <= target => "met",
        Some(_) => "NOT met",
        None => "not checked",
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / f64::from(1 << 20))
}

/// Prints the tables and ratios; `false` when some measurement failed.
fn print_report(results: &[PairResult], o: &Options) -> bool {
    let mut ok = true;
    println!(
        "{:<12} {:>6}  {:<26} {:<26} {:<26} {:>10} {:>10}",
        "vmm",
        "MiB",
        "create ms",
        "load->next instr. ms",
        "load->console line ms",
        "mem MiB",
        "state KiB"
    );
    for r in results {
        let file = r.creates.last();
        println!(
            "{:<12} {:>6}  {:<26} {:<26} {:<26} {:>10} {:>10}",
            r.vmm,
            r.size_mib,
            cell(&r.create_ms()),
            cell(&r.load_ms()),
            cell(&r.to_running_ms()),
            file.map_or("-".into(), |f| format!(
                "{}/{}",
                mib(f.mem_allocated),
                mib(f.mem_bytes)
            )),
            file.map_or("-".into(), |f| format!(
                "{:.1}",
                f.state_bytes as f64 / 1024.0
            )),
        );
    }
    println!("(medians, then min-max and sample count; mem MiB = allocated/apparent size of the memory file)");
    for r in results {
        if let Some(e) = &r.snap_error {
            ok = false;
            println!(
                "ERROR: {} {} MiB, boot and snapshot: {e}",
                r.vmm, r.size_mib
            );
        }
        for x in r.restores.iter().filter(|x| x.error.is_some()) {
            ok = false;
            println!(
                "ERROR: {} {} MiB, restore round {}: {}",
                r.vmm,
                r.size_mib,
                x.round,
                x.error.as_deref().unwrap_or_default()
            );
            let skip = x.log.len().saturating_sub(LOG_TAIL);
            for l in &x.log[skip..] {
                println!("  | {l}");
            }
        }
    }
    let get = |vmm: &str, size: u32| results.iter().find(|r| r.vmm == vmm && r.size_mib == size);
    let sizes = &o.sizes_mib;
    if o.vmms.iter().any(|v| v.name == "firecracker") {
        println!("ratios ferrovm / Firecracker (medians, same L1):");
        for &size in sizes {
            let (f, c) = (get("ferrovm", size), get("firecracker", size));
            let of =
                |p: Option<&PairResult>, g: fn(&PairResult) -> Vec<f64>| p.and_then(|p| med(&g(p)));
            let rr = ratio(
                of(f, PairResult::to_running_ms),
                of(c, PairResult::to_running_ms),
            );
            println!(
                "  {size:>5} MiB: create {}, load->next instruction {}, load->console line {}  (target <= {FIRECRACKER_TARGET:.1}: {})",
                fmt_ratio(ratio(of(f, PairResult::create_ms), of(c, PairResult::create_ms))),
                fmt_ratio(ratio(of(f, PairResult::load_ms), of(c, PairResult::load_ms))),
                fmt_ratio(rr),
                verdict(rr, FIRECRACKER_TARGET)
            );
        }
    } else {
        println!("target \"restore at most {FIRECRACKER_TARGET}x Firecracker's\": not checked (no Firecracker column)");
    }
    if let (Some(&small), Some(&large)) = (sizes.iter().min(), sizes.iter().max()) {
        if small != large {
            for v in &o.vmms {
                let m = |s| get(&v.name, s).and_then(|p| med(&p.to_running_ms()));
                let r = ratio(m(large), m(small));
                let target = if v.name == "ferrovm" {
                    format!(
                        "  (target <= {SIZE_TARGET:.1}: {})",
                        verdict(r, SIZE_TARGET)
                    )
                } else {
                    String::new()
                };
                println!(
                    "{} load->console line {large} MiB / {small} MiB: {}{target}",
                    v.name,
                    fmt_ratio(r)
                );
            }
        }
    }
    ok
}

fn run(cli: &Cli) -> Result<bool, (u8, String)> {
    let ferrovm = sibling("ferrovm").map_err(|e| (2, e))?;
    let mut first = Vmm::ferrovm(&ferrovm).map_err(|e| (2, e.to_string()))?;
    if let Some(filter) = std::env::var("FERROVM_LOG").ok().filter(|f| {
        !f.is_empty()
            && f.chars()
                .all(|c| c.is_ascii_alphanumeric() || "=,_:".contains(c))
    }) {
        // Diagnostic: ferrovm's own log (e.g. "restored ... in 12ms") joins the
        // time-stamped restore output (shown with -v).
        first.command = format!("env FERROVM_LOG={filter} {}", first.command);
    }
    let mut vmms = vec![first];
    match firecracker_from_env() {
        Some(fc) if !fc.is_file() => {
            return Err((
                2,
                format!("FIRECRACKER_BIN={} is not a file", fc.display()),
            ))
        }
        Some(fc) => {
            println!("Firecracker: {} (FIRECRACKER_BIN)", fc.display());
            vmms.push(Vmm::firecracker(&fc).map_err(|e| (2, e.to_string()))?);
        }
        None => println!(
            "\n*** FIRECRACKER_BIN is not set: the Firecracker column is SKIPPED; ferrovm runs alone ***\n"
        ),
    }
    let sizes_mib = if cli.sizes.is_empty() {
        vec![256, 2048]
    } else {
        cli.sizes.clone()
    };
    let o = Options {
        vmms,
        sizes_mib,
        rounds: cli.rounds,
        creates: cli.creates,
    };
    println!(
        "snapshot-bench: ferrovm = {}; guest {} vCPUs, {:?} MiB, boot args \"{BOOT_ARGS}\", {} (ELF) + {} (busybox; /init prints tick lines without pause)",
        ferrovm.display(),
        L2_VCPUS,
        o.sizes_mib,
        testbed::L2_KERNEL,
        testbed::L2_INITRD
    );
    println!(
        "{} snapshots per VMM and size (one boot each), then {} restore rounds interleaved over every VMM and size, order rotated",
        o.creates, o.rounds
    );
    let tb = Testbed::new().map_err(|e| (2, format!("testbed unavailable: {e}")))?;
    let mut files = tb
        .l2_guest_files(&snapshot_bench::l2_init(), false)
        .map_err(|e| (2, e.to_string()))?;
    files.extend(
        binary_with_libs(Path::new(snapshot_bench::CURL), snapshot_bench::CURL)
            .map_err(|e| (2, e.to_string()))?,
    );
    for v in &o.vmms {
        files.extend(v.files.iter().cloned());
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.l1_path.clone()));
    let job = Job::new(script(&o))
        .files(files)
        .mem_mib(L1_MEM_MIB)
        .timeout(Duration::from_secs(o.job_timeout_s()));
    let out = tb.run(&job).map_err(|e| (1, e.to_string()))?;
    if out.status != 0 {
        return Err((
            1,
            format!(
                "the L1 job ended with status {}\n{}",
                out.status,
                testbed::console_tail(&out.console)
            ),
        ));
    }
    println!(
        "L1: {} vCPU(s), {} MiB, booted to the job in {}, whole L1 run {:.1} s (QEMU TCG + SVM: timings inflated, compare ratios only)",
        job.cpus,
        L1_MEM_MIB,
        out.l1_boot
            .map_or("?".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        out.wall.as_secs_f64()
    );
    let results = parse(out.job_console(), &o).map_err(|e| (1, e))?;
    Ok(print_report(&results, &o))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.verbose {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("testbed=info"))
            .with_writer(std::io::stderr)
            .try_init();
    }
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err((code, e)) => {
            println!("ERROR: {e}");
            ExitCode::from(code)
        }
    }
}
