//! API benchmark: how fast ferrovm's control plane pauses, resumes and starts a VM, against
//! a baseline measured in the same run. Two parts:
//!
//! 1. **direct /dev/kvm** (PVM on the project's machines: the guest runs in KVM's
//!    emulator; native on hosts with VMX/SVM): `ferrovm run --raw GUEST --api-sock S`
//!    with GUEST the 4-byte real-mode loop `e6 80 eb fc` (`out 0x80, al; jmp` back), and
//!    N pause/resume pairs through `api::client::Client`, timed around each request
//!    (client-observed: connect, HTTP, the VMM's work). Then the same on
//!    `ferrovm run --config-file F` with metrics, `FlushMetrics` after each request, and
//!    the VMM's own `latencies_us.pause_vm` / `resume_vm`. Baseline: `kick-floor` (this
//!    package), a bare vCPU thread kicked out of `KVM_RUN` by a signal +
//!    `immediate_exit` that answers over a channel: the floor of any pause. Target: pause
//!    and resume each under 1 ms (medians, VMM-internal and client).
//! 2. **nested testbed, one L1**: ferrovm and, if `FIRECRACKER_BIN` names a build,
//!    Firecracker, each started with only `--api-sock`, configured with curl (same ELF
//!    kernel, initramfs, boot args, 2 vCPUs, 256 MiB), booted with InstanceStart, timed
//!    from InstanceStart to the L2 userspace marker (busybox `ts` in L1), then M
//!    pause/resume pairs timed by curl's `%{time_total}`. Boots interleaved, order
//!    rotated each round. Target: pause and resume no slower than Firecracker
//!    (ferrovm/Firecracker ratio <= 1.0).
//!
//! Medians over all rounds, with sample counts; a missed target prints "NOT met" and
//! still exits 0. Exit status 1: a measurement failed; 2: cannot run (missing binary,
//! no testbed).
//!
//! Usage: cargo build --release -p ferrovm -p api-bench &&
//!        [FIRECRACKER_BIN=/path/to/firecracker] target/x86_64-unknown-linux-gnu/release/api-bench [ROUNDS]
//!        [--cycles N] [--l1-cycles M] [--skip-kvm] [--skip-testbed]
//!   ROUNDS: rounds of both parts (default 5); N: pairs per direct run (default 200);
//!   M: pairs per L1 boot (default 10). Wrap it in `flock /tmp/testbed.lock` on shared
//!   machines: the testbed needs both CPUs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use api_bench::direct::{self, DirectOptions, DirectReport};
use api_bench::nested::{self, NestedOptions, NestedReport, NestedVmm};
use api_bench::stats::{verdict, Summary};

/// Part 1 target: pause and resume medians under this, µs.
const DIRECT_TARGET_US: f64 = 1000.0;
/// Part 2 target: ferrovm / Firecracker at most this.
const FIRECRACKER_TARGET: f64 = 1.0;
/// How many lines of a failed L2 boot's console to show.
const CONSOLE_TAIL: usize = 30;

struct Args {
    rounds: u32,
    cycles: u32,
    l1_cycles: u32,
    skip_kvm: bool,
    skip_testbed: bool,
}

const USAGE: &str =
    "usage: api-bench [ROUNDS] [--cycles N] [--l1-cycles M] [--skip-kvm] [--skip-testbed]";

/// The arguments; `Ok(None)` for `--help`.
fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        rounds: 5,
        cycles: 200,
        l1_cycles: 10,
        skip_kvm: false,
        skip_testbed: false,
    };
    let mut it = std::env::args().skip(1);
    let number = |what: &str, v: Option<String>| -> Result<u32, String> {
        v.as_deref()
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{what} needs a positive number\n{USAGE}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--skip-kvm" => a.skip_kvm = true,
            "--skip-testbed" => a.skip_testbed = true,
            "--cycles" => a.cycles = number("--cycles", it.next())?,
            "--l1-cycles" => a.l1_cycles = number("--l1-cycles", it.next())?,
            "-h" | "--help" => return Ok(None),
            s => a.rounds = number(&format!("ROUNDS ({s:?})"), Some(s.to_string()))?,
        }
    }
    Ok(Some(a))
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own path: {e}"))?;
    let p = exe.parent().map(|d| d.join(name)).unwrap_or_default();
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found; build it first: cargo build --release -p ferrovm -p api-bench",
            p.display()
        ))
    }
}

fn line(label: &str, samples: &[f64]) {
    match Summary::of(samples) {
        Some(s) => println!("  {label:<52} {s}"),
        None => println!("  {label:<52} no samples"),
    }
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

fn print_direct(r: &DirectReport, rounds: u32) {
    println!("results, µs, pooled over {rounds} rounds:");
    line("client   pause   (--raw)", &r.client_pause);
    line("client   resume  (--raw)", &r.client_resume);
    line(
        "client   pause   (--config-file, metrics)",
        &r.metrics_client_pause,
    );
    line(
        "client   resume  (--config-file, metrics)",
        &r.metrics_client_resume,
    );
    line("VMM      pause   (latencies_us.pause_vm)", &r.vmm_pause);
    line("VMM      resume  (latencies_us.resume_vm)", &r.vmm_resume);
    line(
        "floor    kick    (signal -> out of KVM_RUN -> told)",
        &r.floor_kick,
    );
    line(
        "floor    wake    (channel -> re-entering KVM_RUN)",
        &r.floor_wake,
    );
    let kick = med(&r.floor_kick);
    let wake = med(&r.floor_wake);
    println!("ratios to the raw KVM_RUN baseline measured in the same run (medians):");
    println!(
        "  ferrovm pause (VMM) / kick floor:     {}",
        fmt_ratio(ratio(med(&r.vmm_pause), kick))
    );
    println!(
        "  ferrovm pause (client) / kick floor:  {}",
        fmt_ratio(ratio(med(&r.client_pause), kick))
    );
    println!(
        "  ferrovm resume (VMM) / wake floor:    {}",
        fmt_ratio(ratio(med(&r.vmm_resume), wake))
    );
    println!(
        "  ferrovm resume (client) / wake floor: {}",
        fmt_ratio(ratio(med(&r.client_resume), wake))
    );
    let check = |what: &str, p: Option<f64>, q: Option<f64>| {
        let met =
            p.is_some_and(|p| p < DIRECT_TARGET_US) && q.is_some_and(|q| q < DIRECT_TARGET_US);
        println!(
            "  {what:<13} pause {} µs, resume {} µs: {}",
            p.map_or("-".into(), |p| format!("{p:.1}")),
            q.map_or("-".into(), |q| format!("{q:.1}")),
            verdict(met)
        );
    };
    println!("target \"pause and resume each under 1 ms on a direct /dev/kvm\" (medians):");
    check("VMM-internal:", med(&r.vmm_pause), med(&r.vmm_resume));
    check("client:", med(&r.client_pause), med(&r.client_resume));
}

fn ms(v: &[f64]) -> Vec<f64> {
    v.iter().map(|us| us / 1e3).collect()
}

fn print_nested(r: &NestedReport) -> bool {
    println!(
        "L1: {} vCPU(s), booted to the job in {}, whole L1 run {:.1} s",
        r.l1_cpus,
        r.l1_boot
            .map_or("?".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        r.wall.as_secs_f64()
    );
    println!(
        "{:<12} {:>6}  {:<36} {:<36} {:<36}",
        "vmm", "boots", "InstanceStart->userspace ms", "pause ms (curl)", "resume ms (curl)"
    );
    let cell = |v: &[f64]| {
        Summary::of(v).map_or_else(
            || "-".to_string(),
            |s| {
                format!(
                    "med {:.2} p90 {:.2} max {:.2} n={}",
                    s.median, s.p90, s.max, s.n
                )
            },
        )
    };
    let mut failed = false;
    for res in &r.results {
        let boots = res.boots();
        let bcell = Summary::of(&boots).map_or_else(
            || "-".to_string(),
            |s| format!("med {:.0} min {:.0} max {:.0}", s.median, s.min, s.max),
        );
        println!(
            "{:<12} {:>3}/{:<2}  {:<36} {:<36} {:<36}",
            res.name,
            boots.len(),
            res.runs.len(),
            bcell,
            cell(&ms(&res.pauses())),
            cell(&ms(&res.resumes()))
        );
    }
    for res in &r.results {
        if let Some(s) = Summary::of(&res.start_requests()) {
            println!(
                "{:<12} of which the InstanceStart request (curl): med {:.0} ms, min {:.0}, max {:.0} (n = {})",
                res.name, s.median, s.min, s.max, s.n
            );
        }
    }
    for res in &r.results {
        for run in res.failures() {
            failed = true;
            println!(
                "ERROR: {} round {}: {}",
                res.name,
                run.round,
                run.error.as_deref().unwrap_or("")
            );
            println!("--- its console (last {CONSOLE_TAIL} lines, `ts` timestamps) ---");
            let skip = run.log.len().saturating_sub(CONSOLE_TAIL);
            for l in &run.log[skip..] {
                println!("  | {l}");
            }
            println!("---");
        }
    }
    let by = |name: &str| r.results.iter().find(|x| x.name == name);
    match (by("ferrovm"), by("firecracker")) {
        (Some(f), Some(c)) => {
            let rb = ratio(med(&f.boots()), med(&c.boots()));
            let rp = ratio(med(&f.pauses()), med(&c.pauses()));
            let rr = ratio(med(&f.resumes()), med(&c.resumes()));
            println!("ratios ferrovm / Firecracker (medians, same L1):");
            println!("  InstanceStart -> userspace: {}", fmt_ratio(rb));
            println!("  pause:                      {}", fmt_ratio(rp));
            println!("  resume:                     {}", fmt_ratio(rr));
            let ok = |x: Option<f64>| x.is_some_and(|x| x <= FIRECRACKER_TARGET);
            println!(
                "target \"pause and resume no slower than Firecracker in the same L1\" (ratio <= {FIRECRACKER_TARGET:.1}): pause {}, resume {}: {}",
                verdict(ok(rp)),
                verdict(ok(rr)),
                verdict(ok(rp) && ok(rr))
            );
        }
        _ => println!(
            "target \"pause and resume no slower than Firecracker in the same L1\": not checked (no Firecracker column)"
        ),
    }
    !failed
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (ferrovm, kick_floor) = match (sibling("ferrovm"), sibling("kick-floor")) {
        (Ok(f), Ok(k)) => (f, k),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("api-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let mut ok = true;
    println!(
        "api-bench: {} rounds; ferrovm = {}",
        args.rounds,
        ferrovm.display()
    );

    if args.skip_kvm {
        println!("\n== part 1, direct /dev/kvm: skipped (--skip-kvm) ==");
    } else {
        let hw = testbed::host_has_hw_virt();
        println!(
            "\n== part 1: direct /dev/kvm ({}) ==",
            if hw {
                "hardware virtualization"
            } else {
                "PVM here: emulated"
            }
        );
        println!(
            "guest: real-mode loop e6 80 eb fc (out 0x80,al; jmp), 1 vCPU, {} MiB; {} pause/resume pairs per ferrovm run, {} kicks per kick-floor run; runs rotated each round",
            api_bench::guest::MEM_MIB,
            args.cycles,
            args.cycles
        );
        let o = DirectOptions {
            ferrovm: ferrovm.clone(),
            kick_floor,
            rounds: args.rounds,
            cycles: args.cycles,
        };
        match direct::run(&o, |l| println!("{l}")) {
            Ok(r) => print_direct(&r, args.rounds),
            Err(e) => {
                println!("ERROR: part 1 failed: {e}");
                ok = false;
            }
        }
    }

    if args.skip_testbed {
        println!("\n== part 2, nested testbed: skipped (--skip-testbed) ==");
    } else {
        println!("\n== part 2: nested testbed, one L1 (QEMU TCG + SVM; timings inflated, compare ratios only) ==");
        match run_nested(&args, &ferrovm) {
            Ok(true) => {}
            Ok(false) => ok = false,
            Err((code, e)) => {
                println!("ERROR: part 2 failed: {e}");
                if code == 2 {
                    return ExitCode::from(2);
                }
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Part 2; `Ok(false)` when some boot failed (reported), `Err((exit code, why))`.
fn run_nested(args: &Args, ferrovm: &Path) -> Result<bool, (u8, String)> {
    let mut vmms = vec![NestedVmm::ferrovm(ferrovm).map_err(|e| (2, e.to_string()))?];
    match nested::firecracker_from_env() {
        Some(fc) if !fc.is_file() => {
            return Err((
                2,
                format!("FIRECRACKER_BIN={} is not a file", fc.display()),
            ))
        }
        Some(fc) => {
            println!("Firecracker: {} (FIRECRACKER_BIN)", fc.display());
            vmms.push(NestedVmm::firecracker(&fc).map_err(|e| (2, e.to_string()))?);
        }
        None => println!(
            "\n*** FIRECRACKER_BIN is not set: the Firecracker column is SKIPPED; ferrovm runs alone ***\n"
        ),
    }
    println!(
        "L2: {} (ELF) + {} (busybox, /init prints the marker and stays up), {} vCPUs, {} MiB, boot args \"{}\", the same for every VMM",
        testbed::L2_KERNEL,
        testbed::L2_INITRD,
        nested::L2_VCPUS,
        nested::L2_MEM_MIB,
        nested::BOOT_ARGS
    );
    println!(
        "{} rounds (boots interleaved, order rotated), {} pause/resume pairs per boot timed by curl %{{time_total}}; VMMs: {}",
        args.rounds,
        args.l1_cycles,
        vmms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    let tb = testbed::Testbed::new().map_err(|e| (2, format!("testbed unavailable: {e}")))?;
    let o = NestedOptions {
        vmms,
        rounds: args.rounds,
        cycles: args.l1_cycles,
    };
    let report = nested::run(&tb, &o).map_err(|e| (1, e))?;
    Ok(print_nested(&report))
}
