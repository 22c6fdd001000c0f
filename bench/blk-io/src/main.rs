//! Block I/O benchmark: virtio-blk throughput and IOPS, ferrovm vs QEMU microvm
//! (`-device virtio-blk-device`), the same L2 kernel, initramfs and disk image, all
//! inside ONE L1 of the nested testbed; VMM runs interleaved, order rotated each round.
//!
//! Each run boots L2 with a raw image (default 256 MiB, in an L1 tmpfs, host side
//! `cache=writeback`) as /dev/vda and measures, with the guest's clock:
//!
//! - `seq_read_MBps`: `dd if=/dev/vda of=/dev/null bs=1M iflag=direct` over the disk;
//! - `seq_write_MBps`: `dd if=/dev/zero of=/dev/vda bs=1M count=<disk> oflag=direct`;
//! - `randread4k_qd<D>_iops`: 4 KiB `O_DIRECT` random preads for `--seconds` from `D`
//!   threads (`blk-io-guest randread`), for each `--depth` (default 1 and 16).
//!
//! It prints per VMM and figure the median (and min, max) over the rounds, then each
//! ferrovm engine's ratio to QEMU with the same `aio=` engine and to QEMU's default
//! (`aio=threads`); higher is better, the target is >= 1.0 on every figure.
//!
//! Usage: cargo build --release --workspace && target/x86_64-unknown-linux-gnu/release/blk-io [ROUNDS (default 5)] [-v]
//! The seccomp filters' cost: `--vmm ferrovm-threads --vmm ferrovm-threads-seccomp-off --vmm
//! ferrovm-io_uring --vmm ferrovm-io_uring-seccomp-off` (target: on/off >= 0.98).
//! (about 20 s of host time per VMM run: 4 VMMs x 5 rounds take about 7 minutes).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use blk_io::{
    parse_console, virtio_blk_features, Figure, Run, Stats, BEGIN_TAG, END_TAG, FIG_ERROR, FIG_INFO,
};
use clap::{Parser, ValueEnum};
use testbed::{
    binary_with_libs, console_tail, virtio_insmod, virtio_modules, Job, JobFile, Testbed, L1_QEMU,
    L2_CMDLINE, L2_INITRD, L2_KERNEL,
};

/// Target for every figure: ferrovm / QEMU at least this (higher is better).
const TARGET_RATIO: f64 = 1.0;
/// Target for ferrovm with its seccomp filters vs without (`--vmm ferrovm-*-seccomp-off`
/// in the same run): the filters cost under 2%.
const SECCOMP_TARGET_RATIO: f64 = 0.98;
/// L2 guest RAM, for both VMMs.
const L2_MEM_MIB: u32 = 512;
/// L1 directory (its own tmpfs) holding the disk image.
const IMG_DIR: &str = "/img";
/// The disk image in L1.
const IMG: &str = "/img/disk.img";
/// L1 path of the guest tool in the L2 initramfs.
const GUEST_TOOL: &str = "/blk-io-guest";
/// L1 path of ferrovm.
const FERROVM: &str = "/ferrovm";
/// L1 (and L2) memory for the testbed run.
const L1_MEM_MIB: u32 = 2048;

#[derive(Parser)]
#[command(
    about = "virtio-blk benchmark: ferrovm vs QEMU microvm inside one L1 of the nested testbed"
)]
struct Cli {
    /// Runs per VMM (interleaved; the median is reported).
    #[arg(default_value_t = 5)]
    rounds: u32,
    /// Stream the L1 console (L1 and L2 output) on stderr.
    #[arg(short, long)]
    verbose: bool,
    /// VMMs to run (repeatable) [default: all].
    #[arg(long = "vmm", value_enum)]
    vmms: Vec<Vmm>,
    /// Disk image size in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u32,
    /// Seconds per random-read measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Random-read queue depths (threads in the guest), repeatable [default: 1 and 16].
    #[arg(long = "depth")]
    depths: Vec<u32>,
    /// Limit for one VMM run (boot + all measurements), in seconds.
    #[arg(long, default_value_t = 300)]
    run_timeout: u64,
}

/// A VMM configuration under test. Both VMMs use a raw image with `cache=writeback`
/// (L1's tmpfs has no `O_DIRECT`); the `aio=` engine is the variable. QEMU's
/// virtio-mmio is made modern (`force-legacy=false`; its default is the legacy version 1
/// transport), so both offer VIRTIO_F_VERSION_1 over virtio-mmio version 2. The disk is
/// the only virtio device (ferrovm runs with `--no-rng`, QEMU has no entropy device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Vmm {
    /// QEMU microvm, aio=threads (QEMU's default; the main baseline).
    #[value(name = "qemu-threads")]
    QemuThreads,
    /// QEMU microvm, aio=io_uring.
    #[value(name = "qemu-io_uring")]
    QemuIoUring,
    /// ferrovm, aio=threads.
    #[value(name = "ferrovm-threads")]
    FerrovmThreads,
    /// ferrovm, aio=io_uring.
    #[value(name = "ferrovm-io_uring")]
    FerrovmIoUring,
    /// ferrovm, aio=threads, `--seccomp off` (the filters' cost; not run by default).
    #[value(name = "ferrovm-threads-seccomp-off")]
    FerrovmThreadsSeccompOff,
    /// ferrovm, aio=io_uring, `--seccomp off`.
    #[value(name = "ferrovm-io_uring-seccomp-off")]
    FerrovmIoUringSeccompOff,
}

impl Vmm {
    const ALL: [Vmm; 4] = [
        Vmm::QemuThreads,
        Vmm::QemuIoUring,
        Vmm::FerrovmThreads,
        Vmm::FerrovmIoUring,
    ];

    fn name(self) -> &'static str {
        match self {
            Vmm::QemuThreads => "qemu-threads",
            Vmm::QemuIoUring => "qemu-io_uring",
            Vmm::FerrovmThreads => "ferrovm-threads",
            Vmm::FerrovmIoUring => "ferrovm-io_uring",
            Vmm::FerrovmThreadsSeccompOff => "ferrovm-threads-seccomp-off",
            Vmm::FerrovmIoUringSeccompOff => "ferrovm-io_uring-seccomp-off",
        }
    }

    fn aio(self) -> &'static str {
        match self {
            Vmm::QemuThreads | Vmm::FerrovmThreads | Vmm::FerrovmThreadsSeccompOff => "threads",
            Vmm::QemuIoUring | Vmm::FerrovmIoUring | Vmm::FerrovmIoUringSeccompOff => "io_uring",
        }
    }

    fn is_ferrovm(self) -> bool {
        matches!(
            self,
            Vmm::FerrovmThreads
                | Vmm::FerrovmIoUring
                | Vmm::FerrovmThreadsSeccompOff
                | Vmm::FerrovmIoUringSeccompOff
        )
    }

    fn seccomp(self) -> &'static str {
        match self {
            Vmm::FerrovmThreadsSeccompOff | Vmm::FerrovmIoUringSeccompOff => "off",
            _ => "on",
        }
    }

    /// The QEMU configurations a ferrovm one is compared with: same engine, then QEMU's
    /// default engine.
    fn baselines(self) -> &'static [Vmm] {
        match self {
            Vmm::FerrovmThreads => &[Vmm::QemuThreads, Vmm::FerrovmThreadsSeccompOff],
            Vmm::FerrovmIoUring => &[
                Vmm::QemuIoUring,
                Vmm::QemuThreads,
                Vmm::FerrovmIoUringSeccompOff,
            ],
            Vmm::QemuThreads
            | Vmm::QemuIoUring
            | Vmm::FerrovmThreadsSeccompOff
            | Vmm::FerrovmIoUringSeccompOff => &[],
        }
    }

    /// The L1 shell command booting L2 with the image as its first virtio-blk disk.
    fn command(self) -> String {
        let aio = self.aio();
        if self.is_ferrovm() {
            let seccomp = self.seccomp();
            format!(
                "FERROVM_LOG=info {FERROVM} run --seccomp {seccomp} --kernel {L2_KERNEL} --initrd {L2_INITRD} --mem {L2_MEM_MIB}M --cpus 1 \
                 --cmdline \"{L2_CMDLINE}\" --no-rng --drive path={IMG},format=raw,cache=writeback,aio={aio} </dev/null"
            )
        } else {
            format!(
                "{L1_QEMU} -M microvm,acpi=on -accel kvm -cpu host -m {L2_MEM_MIB} -smp 1 -nodefaults \
                 -no-user-config -nographic -no-reboot -serial stdio -kernel {L2_KERNEL} -initrd {L2_INITRD} \
                 -append \"{L2_CMDLINE}\" -drive id=d0,file={IMG},format=raw,if=none,cache=writeback,aio={aio} \
                 -global virtio-mmio.force-legacy=false -device virtio-blk-device,drive=d0 </dev/null"
            )
        }
    }
}

/// The L2 `/init` body after the virtio module lines: the measurements.
fn l2_measurements(seconds: f64, depths: &[u32]) -> String {
    let mut s = format!(
        "i=0; while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n\
         if [ -b /dev/vda ]; then\n\
         \x20   q=/sys/block/vda/queue\n\
         \x20   echo \"@@BLK fig={FIG_INFO} queues=$(ls /sys/block/vda/mq | wc -l) nr_requests=$(cat $q/nr_requests) \
         max_segments=$(cat $q/max_segments) max_hw_sectors_kb=$(cat $q/max_hw_sectors_kb) \
         features=$(cat /sys/block/vda/device/features)\"\n\
         \x20   size=$(( $(cat /sys/block/vda/size) * 512 ))\n\
         \x20   mib=$(( size / 1048576 ))\n\
         \x20   {GUEST_TOOL} time seq_read $size -- dd if=/dev/vda of=/dev/null bs=1M iflag=direct\n\
         \x20   {GUEST_TOOL} time seq_write $(( mib * 1048576 )) -- dd if=/dev/zero of=/dev/vda bs=1M count=$mib oflag=direct\n"
    );
    for d in depths {
        let _ = writeln!(
            s,
            "    {GUEST_TOOL} randread /dev/vda --seconds {seconds} --depth {d}"
        );
    }
    let _ = write!(
        s,
        "else\n\
         \x20   echo \"@@BLK fig={FIG_ERROR} what=no-/dev/vda\"\n\
         \x20   dmesg | grep -iE 'virtio|vda|LNRO|mmio' | tail -n 20\n\
         fi"
    );
    s
}

/// The L1 job script: make the image, then every (round, VMM) run, order rotated.
fn l1_script(vmms: &[Vmm], rounds: u32, size_mib: u32, run_timeout: u64) -> String {
    let mut s = format!(
        "set -u\n\
         mkdir -p {IMG_DIR}\n\
         mount -t tmpfs -o size={}m blkimg {IMG_DIR} || echo \"blk-io: no tmpfs at {IMG_DIR}; image on the root fs\"\n\
         dd if=/dev/zero of={IMG} bs=1M count={size_mib} 2>/dev/null || {{ echo \"blk-io: cannot create {IMG}\"; exit 1; }}\n",
        size_mib + 64
    );
    let n = vmms.len();
    for round in 0..rounds {
        for k in 0..n {
            let v = vmms[(k + round as usize) % n];
            let name = v.name();
            let _ = writeln!(
                s,
                "echo \"{BEGIN_TAG} {name} {round}\"; timeout -s KILL {run_timeout} sh /bench/{name}.sh 2>&1; echo \"{END_TAG} {name} {round} $?\""
            );
        }
    }
    s
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    testbed::runner::init_logging(cli.verbose);
    match run(&cli) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("blk-io: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Prepares and runs the benchmark; `Err` means it could not run at all.
fn run(cli: &Cli) -> Result<ExitCode, String> {
    let mut vmms = if cli.vmms.is_empty() {
        Vmm::ALL.to_vec()
    } else {
        cli.vmms.clone()
    };
    let mut seen = Vec::new();
    vmms.retain(|v| {
        let new = !seen.contains(v);
        seen.push(*v);
        new
    });
    let mut depths = if cli.depths.is_empty() {
        vec![1, 16]
    } else {
        cli.depths.clone()
    };
    depths.sort_unstable();
    depths.dedup();
    if cli.rounds == 0
        || cli.size_mib == 0
        || !cli.seconds.is_finite()
        || cli.seconds <= 0.0
        || depths.iter().any(|&d| d == 0 || d > 1024)
    {
        return Err(
            "need ROUNDS >= 1, --size-mib >= 1, --seconds > 0, 1 <= --depth <= 1024".into(),
        );
    }

    let guest_tool = testbed::runner::sibling("blk-io-guest");
    if !guest_tool.exists() {
        return Err(format!(
            "{} not found; run cargo build --release --workspace",
            guest_tool.display()
        ));
    }
    let ferrovm = testbed::runner::sibling("ferrovm");
    if vmms.iter().any(|v| v.is_ferrovm()) {
        if !ferrovm.exists() {
            return Err(format!(
                "{} not found; run cargo build --release --workspace",
                ferrovm.display()
            ));
        }
        if !testbed::runner::ferrovm_run_has(&ferrovm, "--drive") {
            return Err(format!(
                "{} has no `run --drive` option yet; measure QEMU alone with \
                 --vmm qemu-threads --vmm qemu-io_uring",
                ferrovm.display()
            ));
        }
    }
    let tb = Testbed::new().map_err(|e| format!("testbed unavailable: {e}"))?;

    // L2: kernel + initramfs with the virtio modules and the guest tool.
    let mut l2_extra = virtio_modules(tb.host()).map_err(|e| e.to_string())?;
    l2_extra.extend(binary_with_libs(&guest_tool, GUEST_TOOL).map_err(|e| e.to_string())?);
    let init = format!(
        "{}{}",
        virtio_insmod(),
        l2_measurements(cli.seconds, &depths)
    );
    let initrd = tb
        .l2_initramfs(&init, &l2_extra)
        .map_err(|e| e.to_string())?;
    let mut files = vec![
        JobFile::host(&tb.base().vmlinux, L2_KERNEL, 0o644),
        JobFile::bytes(initrd, L2_INITRD, 0o644),
    ];
    if vmms.iter().any(|v| !v.is_ferrovm()) {
        files.extend(tb.qemu_files().map_err(|e| e.to_string())?);
    }
    if vmms.iter().any(|v| v.is_ferrovm()) {
        files.extend(binary_with_libs(&ferrovm, FERROVM).map_err(|e| e.to_string())?);
    }
    for v in &vmms {
        files.push(JobFile::bytes(
            format!("{}\n", v.command()),
            format!("/bench/{}.sh", v.name()),
            0o755,
        ));
    }
    let runs = u64::from(cli.rounds) * vmms.len() as u64;
    let job = Job::new(l1_script(&vmms, cli.rounds, cli.size_mib, cli.run_timeout))
        .files(files)
        .mem_mib(L1_MEM_MIB)
        .timeout(Duration::from_secs(runs * cli.run_timeout + 300));

    let names: Vec<&str> = vmms.iter().map(|v| v.name()).collect();
    println!(
        "blk-io: {} rounds of [{}] in one L1; {} MiB raw image on L1 tmpfs, cache=writeback; \
         L2 {L2_MEM_MIB} MiB, 1 vCPU, O_DIRECT; random reads {}s at depth {:?}",
        cli.rounds,
        names.join(" "),
        cli.size_mib,
        cli.seconds,
        depths
    );
    if !cli.verbose {
        println!("blk-io: this takes a few minutes per round; -v streams the L1 console");
    }
    let output = tb.run(&job).map_err(|e| e.to_string())?;
    if output.status != 0 {
        eprintln!(
            "blk-io: the L1 job exited with {}; console tail:\n{}",
            output.status,
            console_tail(&output.console)
        );
        return Ok(ExitCode::from(1));
    }
    let runs = parse_console(&output.console);
    if runs.is_empty() {
        eprintln!(
            "blk-io: no VMM run on the L1 console; console tail:\n{}",
            console_tail(&output.console)
        );
        return Ok(ExitCode::from(1));
    }
    if !report(&vmms, &depths, cli.rounds, &runs) {
        eprintln!("blk-io: some runs failed (see the `problem` lines; -v shows the whole console)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the per-run problems, the table of medians and the ratios. Returns whether
/// every run measured every figure.
fn report(vmms: &[Vmm], depths: &[u32], rounds: u32, runs: &[Run]) -> bool {
    let mut figures = vec![Figure::SeqRead, Figure::SeqWrite];
    figures.extend(depths.iter().map(|&depth| Figure::RandRead { depth }));
    let mut complete = true;
    for v in vmms {
        let n = runs.iter().filter(|r| r.vmm == v.name()).count();
        if n != rounds as usize {
            println!(
                "problem {}: {n} of {rounds} runs started (L1 died?)",
                v.name()
            );
            complete = false;
        }
    }
    for r in runs {
        let missing: Vec<String> = figures
            .iter()
            .filter(|f| !r.figures.contains_key(f))
            .map(ToString::to_string)
            .collect();
        if r.exit_code != Some(0) || !missing.is_empty() || !r.problems.is_empty() {
            complete = false;
            println!(
                "problem {} round {}: exit {}, missing [{}] {}",
                r.vmm,
                r.round,
                r.exit_code
                    .map_or("none (no end line)".into(), |c| c.to_string()),
                missing.join(" "),
                r.problems.join(" | ")
            );
            for l in &r.log {
                println!("problem {} round {}: | {l}", r.vmm, r.round);
            }
        }
    }

    // What the guest driver saw (feature bits as names).
    for &v in vmms {
        let Some(info) = runs
            .iter()
            .filter(|r| r.vmm == v.name())
            .find_map(|r| r.info.as_ref())
        else {
            continue;
        };
        let fields: Vec<String> = info
            .fields
            .iter()
            .map(|(k, x)| match k.as_str() {
                "features" => format!("{k}={}", virtio_blk_features(x).join(",")),
                _ => format!("{k}={x}"),
            })
            .collect();
        println!("disk {:<18} {}", v.name(), fields.join(" "));
    }
    // ferrovm's device worker reports, at VM end, how well requests batched.
    for r in runs.iter() {
        if let Some(line) = r.log.iter().rev().find(|l| l.contains(" requests, ")) {
            let text = line.split("blk0: ").nth(1).unwrap_or(line).trim();
            println!("worker {:<16} round {}: {text}", r.vmm, r.round);
        }
    }
    let stats = |v: Vmm, f: Figure| {
        let samples: Vec<f64> = runs
            .iter()
            .filter(|r| r.vmm == v.name())
            .filter_map(|r| r.figures.get(&f).copied())
            .collect();
        Stats::of(&samples)
    };
    println!(
        "{:<22} {:<18} {:>10} {:>10} {:>10} {:>7}",
        "figure", "vmm", "median", "min", "max", "rounds"
    );
    for &f in &figures {
        for &v in vmms {
            match stats(v, f) {
                Some(s) => println!(
                    "{:<22} {:<18} {:>10.1} {:>10.1} {:>10.1} {:>7}",
                    f.to_string(),
                    v.name(),
                    s.median,
                    s.min,
                    s.max,
                    format!("{}/{rounds}", s.n)
                ),
                None => println!(
                    "{:<22} {:<18} {:>10} {:>10} {:>10} {:>7}",
                    f.to_string(),
                    v.name(),
                    "-",
                    "-",
                    "-",
                    format!("0/{rounds}")
                ),
            }
        }
    }
    for &f in &figures {
        for &v in vmms.iter().filter(|v| v.is_ferrovm()) {
            for &b in v.baselines().iter().filter(|b| vmms.contains(b)) {
                let pair = format!("{}/{}", v.name(), b.name());
                match (stats(v, f), stats(b, f)) {
                    (Some(x), Some(y)) if y.median > 0.0 => {
                        let r = x.median / y.median;
                        let target = if b.seccomp() == "off" {
                            SECCOMP_TARGET_RATIO
                        } else {
                            TARGET_RATIO
                        };
                        let verdict = if r >= target { "met" } else { "NOT met" };
                        println!(
                            "ratio {:<22} {pair:<32} {r:>6.3}  (target >= {target:.2}: {verdict})",
                            f.to_string()
                        );
                    }
                    _ => println!("ratio {:<22} {pair:<32}      -", f.to_string()),
                }
            }
        }
    }
    complete
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_use_the_same_disk_settings() {
        for v in Vmm::ALL {
            let c = v.command();
            assert!(c.contains(IMG), "{c}");
            assert!(
                c.contains("format=raw") && c.contains("cache=writeback"),
                "{c}"
            );
            assert!(c.contains(&format!("aio={}", v.aio())), "{c}");
            assert!(c.contains(L2_KERNEL) && c.contains(L2_INITRD), "{c}");
        }
        assert!(Vmm::QemuThreads
            .command()
            .contains("-device virtio-blk-device,drive=d0"));
    }

    #[test]
    fn script_rotates_order_and_brackets_runs() {
        let s = l1_script(&[Vmm::QemuThreads, Vmm::FerrovmThreads], 2, 16, 60);
        let begins: Vec<&str> = s
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("echo \"{BEGIN_TAG} ")))
            .map(|l| l.split('"').next().unwrap())
            .collect();
        assert_eq!(
            begins,
            [
                "qemu-threads 0",
                "ferrovm-threads 0",
                "ferrovm-threads 1",
                "qemu-threads 1"
            ]
        );
        assert!(s.contains("count=16"));
        assert!(s.contains("timeout -s KILL 60 sh /bench/qemu-threads.sh"));
    }

    #[test]
    fn guest_measures_every_depth() {
        let s = l2_measurements(2.5, &[1, 8]);
        assert!(s.contains("iflag=direct") && s.contains("oflag=direct"));
        assert!(s.contains("--seconds 2.5 --depth 1\n"));
        assert!(s.contains("--seconds 2.5 --depth 8\n"));
    }
}
