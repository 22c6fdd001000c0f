//! Footprint benchmark (issue 14). Two parts, each printing medians of interleaved rounds
//! and ratios against a baseline measured in the same run:
//!
//! 1. `startup` (direct /dev/kvm): exec to the guest's first instruction and guest
//!    power-off to process exit for a 128 MiB, 1 GiB and 8 GiB raw guest (`ferrovm run
//!    --raw`), against `bare-kvm-start` (open /dev/kvm, one memory slot, one vCPU,
//!    `KVM_RUN`). Targets: each under 5 ms for 128 MiB; 1 GiB and 8 GiB within 1.2x of
//!    128 MiB.
//!
//! 2. `nested` (ONE testbed L1, wrap it in `flock /tmp/testbed.lock`): RSS outside guest
//!    RAM with a Linux guest (Debian kernel, busybox initramfs, 1 vCPU, 256 MiB) in
//!    userspace, for ferrovm (bzImage through the kernel cache, and the ELF vmlinux),
//!    Firecracker (`FIRECRACKER_BIN`, ELF vmlinux) and QEMU microvm, probed one second
//!    after the userspace marker and again 10 s later; then the density run: 20 VMs of
//!    128 MiB started at once per VMM (ferrovm, Firecracker), time until the last one is
//!    up and their summed overhead. Target: ferrovm at most 3 MiB, no growth.
//!    Diagnostic: `FOOTPRINT_FAULT_AROUND=4096` adds a round with L1's
//!    `fault_around_bytes` at 4096, where text RSS counts only the pages a VMM touched,
//!    not the neighbours the kernel maps with them. The density run also has ferrovm
//!    with `--no-rng` (Firecracker's guest has no devices here).
//!
//! Usage: cargo build --release -p ferrovm -p footprint &&
//!        target/x86_64-unknown-linux-gnu/release/footprint startup [ROUNDS]
//!        [FIRECRACKER_BIN=...] target/x86_64-unknown-linux-gnu/release/footprint nested [ROUNDS] [DENSITY_ROUNDS]

use std::path::PathBuf;
use std::process::ExitCode;

use footprint::startup::{bare_cmd, ferrovm_cmd, time_once, Samples};
use footprint::stats::{fmt, median, ratio, verdict};

/// Start-up and shut-down target for a 128 MiB guest, ms.
const STARTUP_TARGET_MS: f64 = 5.0;
/// Larger guests at most this multiple of the 128 MiB time.
const SIZE_TARGET: f64 = 1.2;
/// Guest sizes of the start-up part, MiB.
const SIZES_MIB: [u64; 3] = [128, 1024, 8192];

const USAGE: &str =
    "usage: footprint startup [ROUNDS] | footprint nested [ROUNDS] [DENSITY_ROUNDS]";
/// ferrovm's memory target: RSS outside guest RAM, MiB.
const MEMORY_TARGET_MIB: f64 = 3.0;

fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    me.parent().expect("exe dir").join(name)
}

fn need(p: &std::path::Path) -> Result<(), (u8, String)> {
    if p.exists() {
        Ok(())
    } else {
        Err((
            2,
            format!(
                "{} not found; build first: cargo build --release -p ferrovm -p footprint",
                p.display()
            ),
        ))
    }
}

fn startup(rounds: u32) -> Result<(), (u8, String)> {
    let ferrovm = sibling("ferrovm");
    let bare = sibling("bare-kvm-start");
    need(&ferrovm)?;
    need(&bare)?;
    let image = std::env::temp_dir().join(format!("footprint-startup-{}.bin", std::process::id()));
    std::fs::write(&image, footprint::guest::first_byte_then_exit())
        .map_err(|e| (1, format!("write {}: {e}", image.display())))?;
    println!(
        "startup (direct /dev/kvm): {rounds} interleaved rounds; exec -> first guest byte, first byte (power-off next) -> exit"
    );
    let mut f: Vec<Samples> = vec![Samples::default(); SIZES_MIB.len()];
    let mut b: Vec<Samples> = vec![Samples::default(); SIZES_MIB.len()];
    let result = (|| -> Result<(), String> {
        // One warm-up run each, so the page cache holds both binaries.
        time_once(&mut ferrovm_cmd(&ferrovm, &image, 128))?;
        time_once(&mut bare_cmd(&bare, 128))?;
        for r in 0..rounds {
            for (i, &mib) in SIZES_MIB.iter().enumerate() {
                let (tf, tb) = if r % 2 == 0 {
                    let tb = time_once(&mut bare_cmd(&bare, mib))?;
                    (time_once(&mut ferrovm_cmd(&ferrovm, &image, mib))?, tb)
                } else {
                    let tf = time_once(&mut ferrovm_cmd(&ferrovm, &image, mib))?;
                    (tf, time_once(&mut bare_cmd(&bare, mib))?)
                };
                f[i].push(tf);
                b[i].push(tb);
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&image);
    result.map_err(|e| (1, e))?;
    println!(
        "{:>8} | {:>12} {:>12} {:>6} | {:>12} {:>12} {:>6}",
        "guest", "ferrovm up", "bare up", "ratio", "ferrovm down", "bare down", "ratio"
    );
    let med = |s: &Samples| (median(&s.to_first), median(&s.to_exit));
    for (i, &mib) in SIZES_MIB.iter().enumerate() {
        let (fu, fd) = med(&f[i]);
        let (bu, bd) = med(&b[i]);
        println!(
            "{:>5} MiB | {:>9} ms {:>9} ms {:>6} | {:>9} ms {:>9} ms {:>6}",
            mib,
            fmt(fu, 2),
            fmt(bu, 2),
            fmt(ratio(fu, bu), 2),
            fmt(fd, 2),
            fmt(bd, 2),
            fmt(ratio(fd, bd), 2)
        );
    }
    let (fu0, fd0) = med(&f[0]);
    let ok_ms = |v: Option<f64>| v.is_some_and(|v| v <= STARTUP_TARGET_MS);
    println!(
        "target: 128 MiB exec -> first instruction <= {STARTUP_TARGET_MS} ms: {} ({} ms); power-off -> exit <= {STARTUP_TARGET_MS} ms: {} ({} ms)",
        verdict(ok_ms(fu0)),
        fmt(fu0, 2),
        verdict(ok_ms(fd0)),
        fmt(fd0, 2)
    );
    for (i, &mib) in SIZES_MIB.iter().enumerate().skip(1) {
        let (fu, fd) = med(&f[i]);
        let (ru, rd) = (ratio(fu, fu0), ratio(fd, fd0));
        let ok = |r: Option<f64>| r.is_some_and(|r| r <= SIZE_TARGET);
        println!(
            "target: {mib} MiB within {SIZE_TARGET}x of 128 MiB: start-up {} ({}x), shut-down {} ({}x)",
            verdict(ok(ru)),
            fmt(ru, 2),
            verdict(ok(rd)),
            fmt(rd, 2)
        );
    }
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn nested(rounds: u32, density_rounds: u32) -> Result<(), (u8, String)> {
    use footprint::nested::{self, Options};
    use footprint::smaps::{Breakdown, Class};
    let ferrovm = sibling("ferrovm");
    let probe = sibling("footprint-probe");
    need(&ferrovm)?;
    need(&probe)?;
    let fc = std::env::var_os("FIRECRACKER_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(fc) = &fc {
        if !fc.is_file() {
            return Err((2, format!("FIRECRACKER_BIN={} is not a file", fc.display())));
        }
        println!("Firecracker: {} (FIRECRACKER_BIN)", fc.display());
    } else {
        println!("\n*** FIRECRACKER_BIN is not set: the Firecracker columns are SKIPPED ***\n");
    }
    let mut vmms = vec![
        nested::FERROVM_BZIMAGE.to_string(),
        nested::FERROVM_VMLINUX.to_string(),
    ];
    let mut density = vec![
        nested::FERROVM_VMLINUX.to_string(),
        nested::FERROVM_NORNG.to_string(),
    ];
    if fc.is_some() {
        vmms.push(nested::FIRECRACKER.into());
        density.push(nested::FIRECRACKER.into());
    }
    vmms.push(nested::QEMU.into());
    let fault_around = std::env::var("FOOTPRINT_FAULT_AROUND")
        .ok()
        .and_then(|v| v.parse().ok());
    if let Some(b) = fault_around {
        println!("\n*** diagnostic: L1's fault_around_bytes = {b} (FOOTPRINT_FAULT_AROUND) ***\n");
    }
    let o = Options {
        vmms,
        rounds,
        density,
        density_rounds,
        fault_around,
    };
    let tb = testbed::Testbed::new().map_err(|e| (2, format!("testbed unavailable: {e}")))?;
    let files =
        nested::files(&tb, &o, &ferrovm, &probe, fc.as_deref()).map_err(|e| (2, e.to_string()))?;
    println!(
        "nested (testbed, one L1 with {} vCPUs, {} MiB): memory part {rounds} rounds of {:?}; density {density_rounds} round(s) of {} x {} MiB for {:?}",
        nested::L1_CPUS, nested::L1_MEM_MIB, o.vmms, nested::DENSITY_VMS, nested::DENSITY_MEM_MIB, o.density
    );
    let out = tb
        .run(&nested::job(&o, files))
        .map_err(|e| (1, e.to_string()))?;
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
    let r = nested::parse(out.job_console());
    for f in &r.failures {
        println!("FAILED: {f}");
    }
    for (vmm, lines) in &r.detail {
        println!("\n{vmm}, round 0, resident mappings outside guest RAM (KiB):");
        for l in lines {
            println!("  {l}");
        }
    }
    let med = |v: &[Breakdown], f: &dyn Fn(&Breakdown) -> u64| {
        median(&v.iter().map(|b| mib(f(b))).collect::<Vec<_>>())
    };
    println!("\nmemory: medians over rounds, MiB; overhead = RSS outside guest RAM, anon = the part not backed by the binary or library files");
    println!(
        "{:<32} {:>5} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>9} {:>8}",
        "vmm",
        "runs",
        "overhead",
        "anon",
        "pss",
        "text",
        "heap",
        "stacks",
        "arenas",
        "threads",
        "guest RAM",
        "growth"
    );
    let mut overheads: Vec<(String, Option<f64>)> = Vec::new();
    let mut rows: Vec<String> = o.vmms.clone();
    if let Some(b) = o.fault_around {
        rows.extend(
            o.vmms
                .iter()
                .map(|v| format!("{v}{}", nested::fault_around_suffix(b))),
        );
    }
    for v in &rows {
        let up = r
            .mem
            .get(&(v.clone(), "up".into()))
            .cloned()
            .unwrap_or_default();
        let later = r
            .mem
            .get(&(v.clone(), "later".into()))
            .cloned()
            .unwrap_or_default();
        let growth: Vec<f64> = up
            .iter()
            .zip(&later)
            .map(|(a, b)| mib(b.overhead()) - mib(a.overhead()))
            .collect();
        let ov = med(&up, &|b| b.overhead());
        overheads.push((v.clone(), ov));
        println!(
            "{:<32} {:>5} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>9} {:>8}",
            v,
            up.len(),
            fmt(ov, 2),
            fmt(med(&up, &|b| b.overhead_anon()), 2),
            fmt(med(&up, &|b| b.pss_overhead), 2),
            fmt(
                med(&up, &|b| b.get(Class::Binary) + b.get(Class::Libraries)),
                2
            ),
            fmt(med(&up, &|b| b.get(Class::Heap)), 2),
            fmt(
                med(&up, &|b| b.get(Class::ThreadStacks)
                    + b.get(Class::MainStack)),
                2
            ),
            fmt(med(&up, &|b| b.get(Class::Arenas)), 2),
            fmt(
                median(&up.iter().map(|b| f64::from(b.threads)).collect::<Vec<_>>()),
                0
            ),
            fmt(med(&up, &|b| b.get(Class::GuestRam)), 1),
            fmt(median(&growth), 2),
        );
    }
    let by = |n: &str| overheads.iter().find(|(v, _)| v == n).and_then(|(_, o)| *o);
    for f in [nested::FERROVM_BZIMAGE, nested::FERROVM_VMLINUX] {
        println!(
            "{f}: / Firecracker {}, / QEMU microvm {}; target <= {MEMORY_TARGET_MIB} MiB: {}",
            fmt(ratio(by(f), by(nested::FIRECRACKER)), 2),
            fmt(ratio(by(f), by(nested::QEMU)), 2),
            verdict(by(f).is_some_and(|v| v <= MEMORY_TARGET_MIB))
        );
    }
    if !r.density.is_empty() {
        println!(
            "\ndensity: {} x {} MiB started at once; per round: time to the last marker, summed RSS / PSS outside guest RAM, summed guest RAM",
            nested::DENSITY_VMS,
            nested::DENSITY_MEM_MIB
        );
    }
    let mut last_up: Vec<(String, Option<f64>, Option<f64>)> = Vec::new();
    for v in &o.density {
        let runs = r.density.get(v).cloned().unwrap_or_default();
        let mut ups = Vec::new();
        let mut sums = Vec::new();
        for (i, (secs, n, bs)) in runs.iter().enumerate() {
            let sum = |f: &dyn Fn(&Breakdown) -> u64| mib(bs.iter().map(f).sum());
            println!(
                "  {v:<16} round {i}: {n}/{} up, last up after {} s, overhead {:.1} MiB (RSS) {:.1} MiB (PSS), guest RAM {:.0} MiB",
                nested::DENSITY_VMS,
                fmt(*secs, 2),
                sum(&|b| b.overhead()),
                sum(&|b| b.pss_overhead),
                sum(&|b| b.get(Class::GuestRam)),
            );
            if *n == nested::DENSITY_VMS {
                ups.extend(*secs);
            }
            sums.push(sum(&|b| b.overhead()));
        }
        last_up.push((v.clone(), median(&ups), median(&sums)));
    }
    if let Some((b, tb, sb)) = last_up.iter().find(|(v, _, _)| v == nested::FIRECRACKER) {
        for (a, ta, sa) in last_up.iter().filter(|(v, _, _)| v != b) {
            println!(
                "density {a} / {b}: time to last up {}, summed RSS overhead {}",
                fmt(ratio(*ta, *tb), 2),
                fmt(ratio(*sa, *sb), 2)
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // RUST_LOG=testbed::console=info streams L1's console (to stderr) while it runs.
    testbed::runner::init_logging(false);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = |i: usize| -> Result<u32, (u8, String)> {
        match args.get(i) {
            None => Ok(11),
            Some(s) => s
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| (2, format!("ROUNDS must be a positive number\n{USAGE}"))),
        }
    };
    let result = match args.first().map(String::as_str) {
        Some("startup") => rounds(1).and_then(startup),
        Some("nested") => rounds(1).and_then(|r| {
            let d = match args.get(2) {
                None => 1,
                Some(s) => s.parse().map_err(|_| (2, USAGE.to_string()))?,
            };
            nested(if args.get(1).is_some() { r } else { 3 }, d)
        }),
        _ => Err((2, USAGE.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("footprint: {msg}");
            ExitCode::from(code)
        }
    }
}
