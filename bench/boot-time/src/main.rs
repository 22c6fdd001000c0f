//! Boot-time benchmark: VMM start to the L2 userspace marker, ferrovm vs QEMU microvm, with
//! the same Debian kernel, busybox initramfs, memory and command line, all inside ONE L1 of
//! the nested testbed (boots interleaved, order rotated each round). Prints the medians
//! and ratios, and checks the targets:
//!
//! - ferrovm (bzImage, host decompression) at most 0.35x QEMU microvm's time;
//! - bzImage with host decompression within 1.1x of the same kernel as vmlinux.
//!
//! QEMU boots the ELF vmlinux through its PVH entry (its fastest path) and, as a second
//! baseline, the bzImage. ferrovm's kernel cache lives in L1's tmpfs, so the first
//! "ferrovm-bzimage" boot of a run is cold and later ones are warm;
//! "ferrovm-bzimage-nocache" decompresses every time.
//!
//! Usage: cargo build --release --workspace && target/release/boot-time [ROUNDS]

use std::path::Path;
use std::process::ExitCode;

use testbed::{
    binary_with_libs, run_boot_bench, BenchVmm, BootBench, Testbed, L1_QEMU, L2_BZIMAGE,
    L2_CMDLINE, L2_INITRD, L2_KERNEL, L2_MEM_MIB,
};

const QEMU_TARGET: f64 = 0.35;
const BZIMAGE_TARGET: f64 = 1.10;

fn ferrovm(name: &str, kernel: &str, extra: &str, files: &[testbed::JobFile]) -> BenchVmm {
    BenchVmm {
        name: name.into(),
        command: format!(
            "FERROVM_CACHE_DIR=/tmp/ferrovm-cache /ferrovm run --kernel {kernel} --initrd {L2_INITRD} \
             --mem {L2_MEM_MIB}M --cmdline \"{L2_CMDLINE}\" {extra} </dev/null"
        ),
        files: files.to_vec(),
    }
}

fn median_ms(r: &testbed::BenchResult) -> Option<f64> {
    r.median_to_marker().map(|d| d.as_secs_f64() * 1e3)
}

fn main() -> ExitCode {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let exe = std::env::current_exe().expect("current exe");
    let ferrovm_bin = exe.parent().expect("exe dir").join("ferrovm");
    if !ferrovm_bin.exists() {
        eprintln!(
            "boot-time: {} not found; run cargo build --release --workspace",
            ferrovm_bin.display()
        );
        return ExitCode::from(2);
    }
    let tb = match Testbed::new() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("boot-time: testbed unavailable: {e}");
            return ExitCode::from(2);
        }
    };
    let ffiles = binary_with_libs(Path::new(&ferrovm_bin), "/ferrovm").expect("ferrovm files");
    let qemu = BenchVmm::qemu_microvm(&tb).expect("qemu");
    let qemu_bz = BenchVmm {
        name: "qemu-microvm-bzimage".into(),
        command: qemu.command.replace(L2_KERNEL, L2_BZIMAGE),
        files: tb.qemu_files().expect("qemu files"),
    };
    let vmms = vec![
        BenchVmm {
            name: "qemu-microvm".into(),
            ..qemu
        },
        qemu_bz,
        ferrovm("ferrovm-bzimage", L2_BZIMAGE, "", &ffiles),
        ferrovm(
            "ferrovm-bzimage-nocache",
            L2_BZIMAGE,
            "--no-kernel-cache",
            &ffiles,
        ),
        ferrovm(
            "ferrovm-bzimage-guest",
            L2_BZIMAGE,
            "--kernel-decompress guest",
            &ffiles,
        ),
        ferrovm("ferrovm-vmlinux", L2_KERNEL, "", &ffiles),
    ];
    let mut bench = BootBench::new(vmms, rounds);
    bench.with_bzimage = true;
    println!("boot-time: {rounds} rounds per VMM in one L1 (QEMU at {L1_QEMU}); time = VMM start to L2 marker");
    let report = match run_boot_bench(&tb, &bench) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("boot-time: {e}");
            return ExitCode::from(1);
        }
    };
    print!("{}", report.summary());
    let by = |n: &str| {
        report
            .results
            .iter()
            .find(|r| r.name == n)
            .and_then(median_ms)
    };
    let (Some(q), Some(f), Some(v)) = (
        by("qemu-microvm"),
        by("ferrovm-bzimage"),
        by("ferrovm-vmlinux"),
    ) else {
        eprintln!("boot-time: some VMM never reached the marker");
        return ExitCode::from(1);
    };
    let r1 = f / q;
    let r2 = f / v;
    let verdict = |r: f64, t: f64| if r <= t { "met" } else { "NOT met" };
    println!(
        "ferrovm bzImage / QEMU microvm (vmlinux): {r1:.2} (target <= {QEMU_TARGET}: {})",
        verdict(r1, QEMU_TARGET)
    );
    if let Some(qb) = by("qemu-microvm-bzimage") {
        println!("ferrovm bzImage / QEMU microvm (bzImage): {:.2}", f / qb);
    }
    println!("ferrovm bzImage (host decompression) / ferrovm vmlinux: {r2:.2} (target <= {BZIMAGE_TARGET}: {})", verdict(r2, BZIMAGE_TARGET));
    if let (Some(g), Some(n)) = (by("ferrovm-bzimage-guest"), by("ferrovm-bzimage-nocache")) {
        println!(
            "ferrovm in-guest decompression / host decompression (no cache): {:.2}",
            g / n
        );
    }
    ExitCode::SUCCESS
}
