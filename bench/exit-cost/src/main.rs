//! Exit-cost benchmark: µs per port-I/O exit for ferrovm vs a bare `KVM_RUN` loop.
//!
//! Both run the same real-mode guest (`N` writes to port 0x80 in a loop). Each is timed as
//! a whole process at two loop lengths; the cost per exit is the slope
//! `(T(N2) - T(N1)) / (N2 - N1)`, so process start-up and VM creation cancel out. Runs
//! alternate between the two programs; medians are reported with their ratio.
//!
//! With `--seccomp`, ferrovm also runs with `--seccomp off` in every round, and the cost of
//! the seccomp filters (on vs off, same run) is reported against its target
//! ([`SECCOMP_TARGET`]).
//!
//! Usage: cargo build --release && cargo run --release -p exit-cost [-- [--seccomp] ROUNDS N1 N2]

mod guest;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Target: ferrovm's cost per exit at most this multiple of the bare loop's.
const TARGET_RATIO: f64 = 1.10;
/// Target: the seccomp filters cost under 2% per exit.
const SECCOMP_TARGET: f64 = 1.02;

fn sibling(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    me.parent().expect("exe dir").join(name)
}

fn time_run(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let st = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let t = start.elapsed().as_secs_f64();
    assert!(st.success(), "{cmd:?} failed: {st}");
    t
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let seccomp = std::env::args().any(|a| a == "--seccomp");
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = *args.first().unwrap_or(&5) as usize;
    let n1 = *args.get(1).unwrap_or(&20_000) as u32;
    let n2 = *args.get(2).unwrap_or(&120_000) as u32;
    let ferrovm = sibling("ferrovm");
    let bare = sibling("bare-kvm-loop");
    for p in [&ferrovm, &bare] {
        if !p.exists() {
            eprintln!(
                "exit-cost: {} not found; build first: cargo build --release --workspace",
                p.display()
            );
            std::process::exit(2);
        }
    }
    let dir = std::env::temp_dir().join(format!("ferrovm-exit-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let image = |n: u32| -> PathBuf {
        let p = dir.join(format!("loop-{n}.bin"));
        std::fs::write(&p, guest::port_loop(n)).expect("write guest");
        p
    };
    let (img1, img2) = (image(n1), image(n2));
    let run_ferrovm_with = |img: &Path, mode: &str| {
        time_run(
            Command::new(&ferrovm)
                .args(["run", "--mem", "16M", "--seccomp", mode, "--raw"])
                .arg(img),
        )
    };
    let run_ferrovm = |img: &Path| run_ferrovm_with(img, "on");
    let run_bare = |n: u32| time_run(Command::new(&bare).arg(n.to_string()));

    println!("exit-cost: {rounds} rounds, N1 = {n1}, N2 = {n2} port writes");
    let (mut f, mut b, mut off) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let bare_us = (run_bare(n2) - run_bare(n1)) * 1e6 / f64::from(n2 - n1);
        let ferro_us = (run_ferrovm(&img2) - run_ferrovm(&img1)) * 1e6 / f64::from(n2 - n1);
        println!("  round {r}: bare {bare_us:.3} µs/exit, ferrovm {ferro_us:.3} µs/exit");
        b.push(bare_us);
        f.push(ferro_us);
        if seccomp {
            let off_us = (run_ferrovm_with(&img2, "off") - run_ferrovm_with(&img1, "off")) * 1e6
                / f64::from(n2 - n1);
            println!("           ferrovm --seccomp off {off_us:.3} µs/exit");
            off.push(off_us);
        }
    }
    let (mb, mf) = (median(&mut b), median(&mut f));
    let ratio = mf / mb;
    println!("bare KVM_RUN loop: {mb:.3} µs/exit (median)");
    println!("ferrovm:           {mf:.3} µs/exit (median)");
    println!(
        "ratio ferrovm/bare: {ratio:.3} (target <= {TARGET_RATIO:.2}: {})",
        if ratio <= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        }
    );
    if seccomp {
        let moff = median(&mut off);
        let cost = mf / moff;
        println!("ferrovm --seccomp off: {moff:.3} µs/exit (median)");
        println!(
            "ratio seccomp on/off: {cost:.4} (target < {SECCOMP_TARGET:.2}: {})",
            if cost < SECCOMP_TARGET {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
