//! vsock benchmark: virtio-vsock stream throughput each way and connect latency, ferrovm
//! (`--vsock cid=3,uds=PATH`) vs Firecracker (`"vsock": {"guest_cid": 3, "uds_path":
//! PATH}`), the same L2 kernel (ELF vmlinux) and initramfs, 256 MiB and one vCPU, no other
//! virtio device, all inside ONE L1 of the nested testbed; VMM runs interleaved, the order
//! rotated each round.
//!
//! Both VMMs speak Firecracker's host protocol: a process in L1 connects to the Unix socket
//! at PATH and writes `CONNECT <port>\n`; the VMM answers `OK <host port>\n`. Per run, from
//! L1, with `vsock-bench-tool` (this package) at both ends unless said otherwise:
//!
//! - `connect_us`: median of `--connects` host-initiated connections, each timed from the
//!   Unix socket's `connect` to the `OK` line (the guest kernel answers the request, its
//!   listener need not run);
//! - `ping_rtt_us`: median of `--pings` 1-byte writes on one connection, each answered by
//!   the guest's echo;
//! - `h2g_MBps` / `g2h_MBps`: `--mib` MiB host -> guest (L1 writes, shuts its side down,
//!   and the clock stops when the guest's end of stream arrives) and guest -> host;
//! - `h2g_socat_MBps` / `g2h_socat_MBps`: the same streams with socat in the guest instead
//!   of the tool (`socat -u -b 262144 VSOCK-LISTEN:P OPEN:/dev/null`, and `OPEN:/dev/zero`
//!   the other way), to see whether socat is the bottleneck.
//!
//! It prints per VMM and figure the median (min, max) over the rounds, then
//! ferrovm/Firecracker ratios oriented so that > 1 means ferrovm is better (throughput:
//! ferrovm / Firecracker; latency: Firecracker / ferrovm); the target is >= 1.0.
//!
//! Usage: cargo build --release --workspace && [FIRECRACKER_BIN=/path/to/firecracker] \
//! flock /tmp/testbed.lock target/x86_64-unknown-linux-gnu/release/vsock-bench [ROUNDS (default 3)] [-v] [--vmm NAME]...
//! [--mib N] [--connects N] [--pings N] [--ferrovm-log FILTER] (with the defaults about
//! 40 s of host time per VMM run, streams at 10-30 MB/s in the testbed: 2 VMMs x 3 rounds
//! take about 4-5 minutes).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use testbed::guest::{virtio_vsock_insmod, virtio_vsock_modules};
use testbed::{
    binary_with_libs, console_tail, virtio_insmod, virtio_modules, Job, JobFile, Testbed,
    L2_INITRD, L2_KERNEL,
};
use vsock_bench::{parse_console, Figure, Run, Stats, BEGIN_TAG, END_TAG, READY_TAG};

/// Target for every figure: ferrovm at least as good as Firecracker.
const TARGET_RATIO: f64 = 1.0;
/// L2 guest RAM, for both VMMs.
const L2_MEM_MIB: u32 = 256;
/// L1 memory for the testbed run.
const L1_MEM_MIB: u32 = 2048;
/// The guest's command line (Firecracker wants reboot=k and pci=off).
/// With testbed::guest::NESTED_GUEST_ARGS (every VMM compared gets the same line).
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet mitigations=off";
/// The guest's CID.
const GUEST_CID: u32 = 3;
/// L1 paths.
const FERROVM: &str = "/ferrovm";
const FIRECRACKER: &str = "/firecracker";
const FIRECRACKER_CONFIG: &str = "/bench/firecracker.json";
const RUN_SCRIPT: &str = "/bench/run.sh";
const TOOL: &str = "/vsock-bench-tool";
const SOCAT: &str = "/usr/bin/socat";
/// The VMM's vsock socket in L1.
const UDS: &str = "/tmp/vsb.sock";
/// Guest ports: the tool's sink, source and echo; socat's sink and source.
const PORT_SINK: u32 = 5000;
const PORT_SOURCE: u32 = 5001;
const PORT_ECHO: u32 = 5002;
const PORT_SOCAT_SINK: u32 = 5100;
const PORT_SOCAT_SOURCE: u32 = 5101;
/// socat's buffer size in the guest.
const SOCAT_BUF: u32 = 256 << 10;

#[derive(Parser)]
#[command(
    about = "virtio-vsock benchmark: ferrovm vs Firecracker inside one L1 of the nested testbed"
)]
struct Cli {
    /// Runs per VMM (interleaved; the median is reported).
    #[arg(default_value_t = 3)]
    rounds: u32,
    /// Stream the L1 console (L1 and L2 output) on stderr.
    #[arg(short, long)]
    verbose: bool,
    /// VMMs to run (repeatable) [default: ferrovm, and firecracker with FIRECRACKER_BIN].
    #[arg(long = "vmm", value_enum)]
    vmms: Vec<Vmm>,
    /// MiB per stream.
    #[arg(long, default_value_t = 64)]
    mib: u32,
    /// Host-initiated connections timed per run.
    #[arg(long, default_value_t = 200)]
    connects: u32,
    /// 1-byte round trips timed per run.
    #[arg(long, default_value_t = 1000)]
    pings: u32,
    /// Limit for one VMM run (boot + all measurements), in seconds.
    #[arg(long, default_value_t = 300)]
    run_timeout: u64,
    /// ferrovm's log filter (`FERROVM_LOG`, e.g. `devices::virtio::vsock=trace`) for its
    /// runs; their vsock log lines are printed on the console (`vmmlog:`), to debug.
    #[arg(long, value_name = "FILTER")]
    ferrovm_log: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Vmm {
    /// ferrovm, `--vsock cid=3,uds=PATH`.
    Ferrovm,
    /// Firecracker (FIRECRACKER_BIN), a `vsock` section in its configuration file.
    Firecracker,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Ferrovm => "ferrovm",
            Vmm::Firecracker => "firecracker",
        }
    }

    /// The L1 command starting the VMM in the background (its output in `$LOG`).
    fn command(self) -> String {
        match self {
            Vmm::Ferrovm => format!(
                "{FERROVM} run --kernel {L2_KERNEL} --initrd {L2_INITRD} --mem {L2_MEM_MIB}M --cpus 1 \
                 --no-rng --vsock cid={GUEST_CID},uds={UDS} --cmdline \"{CMDLINE}\" </dev/null >\"$LOG\" 2>&1 &"
            ),
            Vmm::Firecracker => format!(
                "{FIRECRACKER} --no-api --config-file {FIRECRACKER_CONFIG} --level Error </dev/null >\"$LOG\" 2>&1 &"
            ),
        }
    }
}

/// Firecracker's configuration: the same kernel, initramfs, memory and vsock as ferrovm's
/// command line.
fn firecracker_config() -> String {
    format!(
        r#"{{
  "boot-source": {{ "kernel_image_path": "{L2_KERNEL}", "initrd_path": "{L2_INITRD}", "boot_args": "{CMDLINE}" }},
  "machine-config": {{ "vcpu_count": 1, "mem_size_mib": {L2_MEM_MIB} }},
  "drives": [],
  "vsock": {{ "guest_cid": {GUEST_CID}, "uds_path": "{UDS}" }}
}}
"#
    )
}

/// The L2 `/init` body: the modules (Firecracker names its virtio-mmio devices on the
/// command line, which busybox insmod does not read: they are passed on), the servers,
/// the ready line, then idle until the VMM is killed.
fn l2_init(bytes: u64) -> String {
    let insmod = virtio_insmod().replace("virtio_mmio.ko\n", "virtio_mmio.ko $MMIO_ARGS\n");
    format!(
        "MMIO_ARGS=$(tr ' ' '\\n' </proc/cmdline | sed -n 's/^virtio_mmio\\.\\(device=.*\\)/\\1/p' | tr '\\n' ' ')\n\
         {insmod}{vsock}\
         n=0; while [ ! -e /dev/vsock ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done\n\
         {TOOL} serve {PORT_SINK} {PORT_SOURCE} {PORT_ECHO} {bytes} &\n\
         socat -u -b {SOCAT_BUF} VSOCK-LISTEN:{PORT_SOCAT_SINK} OPEN:/dev/null &\n\
         socat -u -b {SOCAT_BUF} OPEN:/dev/zero,readbytes={bytes} VSOCK-LISTEN:{PORT_SOCAT_SOURCE} &\n\
         sleep 0.5\n\
         echo \"{READY_TAG} vsock=$([ -e /dev/vsock ] && echo 1 || echo 0)\"\n\
         while :; do sleep 10; done",
        vsock = virtio_vsock_insmod(),
    )
}

/// The script running one VMM (`$1`): boot, wait for the guest's servers, measure, kill.
fn run_script(bytes: u64, connects: u32, pings: u32) -> String {
    let mut s = format!(
        "set -u\n\
         vmm=$1\n\
         LOG=/tmp/vsb-$vmm.log\n\
         rm -f {UDS}\n\
         case $vmm in\n\
         ferrovm) {} ;;\n\
         firecracker) {} ;;\n\
         esac\n\
         pid=$!\n\
         n=0\n\
         while ! grep -q {READY_TAG} \"$LOG\" && kill -0 $pid 2>/dev/null && [ $n -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done\n\
         if ! grep -q '{READY_TAG} vsock=1' \"$LOG\"; then\n\
         \x20 echo \"@@VSB fig=error what=the-guest-servers-did-not-come-up\"\n\
         \x20 tail -n 25 \"$LOG\"\n\
         \x20 kill -9 $pid 2>/dev/null\n\
         \x20 exit 1\n\
         fi\n\
         rc=0\n",
        Vmm::Ferrovm.command(),
        Vmm::Firecracker.command(),
    );
    for cmd in [
        format!("connect {UDS} {PORT_SINK} {connects}"),
        format!("ping {UDS} {PORT_ECHO} {pings}"),
        format!("h2g {UDS} {PORT_SINK} {bytes}"),
        format!("g2h {UDS} {PORT_SOURCE} {bytes}"),
        format!("h2g {UDS} {PORT_SOCAT_SINK} {bytes} h2g_socat"),
        format!("g2h {UDS} {PORT_SOCAT_SOURCE} {bytes} g2h_socat"),
    ] {
        let _ = writeln!(s, "{TOOL} {cmd} || rc=1");
    }
    s.push_str(
        "sleep 1\n\
         kill -9 $pid 2>/dev/null\n\
         wait $pid 2>/dev/null\n\
         grep '@@VSB fig=sink' \"$LOG\" | sed 's/^/guest: /'\n\
         [ -z \"${FERROVM_LOG:-}\" ] || grep -a 'vsock::' \"$LOG\" | head -n 2000 | sed 's/^/vmmlog: /'\n\
         [ $rc -eq 0 ] || tail -n 15 \"$LOG\" | sed 's/^/vmm: /'\n\
         exit $rc\n",
    );
    s
}

/// The L1 job script: every (round, VMM) run, the order rotated each round.
fn l1_script(vmms: &[Vmm], rounds: u32, run_timeout: u64, ferrovm_log: Option<&str>) -> String {
    let mut s = String::from("set -u\n");
    if let Some(f) = ferrovm_log {
        // Firecracker ignores it.
        let _ = writeln!(s, "export FERROVM_LOG='{}'", f.replace('\'', ""));
    }
    let n = vmms.len();
    for round in 0..rounds {
        for k in 0..n {
            let name = vmms[(k + round as usize) % n].name();
            let _ = writeln!(
                s,
                "echo \"{BEGIN_TAG} {name} {round}\"; timeout -s KILL {run_timeout} sh {RUN_SCRIPT} {name} 2>&1; echo \"{END_TAG} {name} {round} $?\""
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
            eprintln!("vsock-bench: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Prepares and runs the benchmark; `Err` means it could not run at all.
fn run(cli: &Cli) -> Result<ExitCode, String> {
    let firecracker = std::env::var_os("FIRECRACKER_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let mut vmms = if cli.vmms.is_empty() {
        let mut all = vec![Vmm::Ferrovm];
        if firecracker.is_some() {
            all.push(Vmm::Firecracker);
        } else {
            println!(
                "\n*** FIRECRACKER_BIN is not set: the Firecracker column is SKIPPED; ferrovm runs alone ***\n"
            );
        }
        all
    } else {
        cli.vmms.clone()
    };
    let mut seen = Vec::new();
    vmms.retain(|v| {
        let new = !seen.contains(v);
        seen.push(*v);
        new
    });
    if cli.rounds == 0 || cli.mib == 0 || cli.connects == 0 || cli.pings == 0 {
        return Err("ROUNDS, --mib, --connects and --pings must be at least 1".into());
    }
    let bytes = u64::from(cli.mib) << 20;
    let tool = testbed::runner::sibling("vsock-bench-tool");
    if !tool.exists() {
        return Err(format!(
            "{} not found; run cargo build --release --workspace",
            tool.display()
        ));
    }
    let ferrovm = testbed::runner::sibling("ferrovm");
    if vmms.contains(&Vmm::Ferrovm) {
        if !ferrovm.exists() {
            return Err(format!(
                "{} not found; run cargo build --release --workspace",
                ferrovm.display()
            ));
        }
        if !testbed::runner::ferrovm_run_has(&ferrovm, "--vsock") {
            return Err(format!(
                "{} has no `run --vsock` option yet; measure Firecracker alone with --vmm firecracker",
                ferrovm.display()
            ));
        }
    }
    let tb = Testbed::new().map_err(|e| format!("testbed unavailable: {e}"))?;
    let e = |e: testbed::Error| e.to_string();

    // L2: kernel + initramfs with the virtio and vsock modules, the tool and socat.
    let mut l2_extra = virtio_modules(tb.host()).map_err(e)?;
    l2_extra.extend(virtio_vsock_modules(tb.host()).map_err(e)?);
    l2_extra.extend(binary_with_libs(&tool, TOOL).map_err(e)?);
    // The L2 /init's PATH is /bin.
    l2_extra.extend(
        binary_with_libs(Path::new(SOCAT), "/bin/socat").map_err(|err| {
            format!("{SOCAT} (Debian package socat, in scripts/apt-packages.txt): {err}")
        })?,
    );
    let initrd = tb.l2_initramfs(&l2_init(bytes), &l2_extra).map_err(e)?;
    let mut files = vec![
        JobFile::host(&tb.base().vmlinux, L2_KERNEL, 0o644),
        JobFile::bytes(initrd, L2_INITRD, 0o644),
        JobFile::bytes(
            run_script(bytes, cli.connects, cli.pings),
            RUN_SCRIPT,
            0o755,
        ),
    ];
    files.extend(binary_with_libs(&tool, TOOL).map_err(e)?);
    if vmms.contains(&Vmm::Ferrovm) {
        files.extend(binary_with_libs(&ferrovm, FERROVM).map_err(e)?);
    }
    if vmms.contains(&Vmm::Firecracker) {
        let fc = firecracker
            .as_ref()
            .ok_or("--vmm firecracker needs FIRECRACKER_BIN=/path/to/firecracker")?;
        files.extend(binary_with_libs(fc, FIRECRACKER).map_err(e)?);
        files.push(JobFile::bytes(
            firecracker_config(),
            FIRECRACKER_CONFIG,
            0o644,
        ));
        println!(
            "vsock-bench: Firecracker is {} (FIRECRACKER_BIN)",
            fc.display()
        );
    }
    let runs = u64::from(cli.rounds) * vmms.len() as u64;
    let job = Job::new(l1_script(
        &vmms,
        cli.rounds,
        cli.run_timeout,
        cli.ferrovm_log.as_deref(),
    ))
    .files(files)
    .mem_mib(L1_MEM_MIB)
    .timeout(Duration::from_secs(runs * cli.run_timeout + 300));

    let names: Vec<&str> = vmms.iter().map(|v| v.name()).collect();
    println!(
        "vsock-bench: {} rounds of [{}] in one L1; L2 {L2_MEM_MIB} MiB, 1 vCPU; {} MiB per \
         stream, {} connects, {} pings per run",
        cli.rounds,
        names.join(" "),
        cli.mib,
        cli.connects,
        cli.pings
    );
    if !cli.verbose {
        println!("vsock-bench: this takes about 40 s per VMM run; -v streams the L1 console");
    }
    let output = tb.run(&job).map_err(|e| e.to_string())?;
    if output.status != 0 {
        eprintln!(
            "vsock-bench: the L1 job exited with {}; console tail:\n{}",
            output.status,
            console_tail(&output.console)
        );
        return Ok(ExitCode::from(1));
    }
    let runs = parse_console(&output.console);
    if runs.is_empty() {
        eprintln!(
            "vsock-bench: no VMM run on the L1 console; console tail:\n{}",
            console_tail(&output.console)
        );
        return Ok(ExitCode::from(1));
    }
    println!(
        "vsock-bench: L1 ran {:.0} s ({:.0} s L1 boot)",
        output.wall.as_secs_f64(),
        output.l1_boot.map_or(0.0, |d| d.as_secs_f64())
    );
    if !report(&vmms, cli.rounds, bytes, &runs) {
        eprintln!(
            "vsock-bench: some runs failed (see the `problem` lines; -v shows the whole console)"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the problems, the table of medians and the ratios. Returns whether every run
/// measured every figure.
fn report(vmms: &[Vmm], rounds: u32, bytes: u64, runs: &[Run]) -> bool {
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
        let missing: Vec<String> = Figure::ALL
            .iter()
            .filter(|f| !r.figures.contains_key(f))
            .map(ToString::to_string)
            .collect();
        // The tool's sink prints what it received: the h2g stream must be whole.
        let sink_ok = r.sink_bytes.contains(&bytes);
        if r.exit_code != Some(0) || !missing.is_empty() || !r.problems.is_empty() || !sink_ok {
            complete = false;
            println!(
                "problem {} round {}: exit {}, missing [{}] {}{}",
                r.vmm,
                r.round,
                r.exit_code
                    .map_or("none (no end line)".into(), |c| c.to_string()),
                missing.join(" "),
                r.problems.join(" | "),
                if sink_ok {
                    String::new()
                } else {
                    format!(" | guest sink got {:?} bytes, not {bytes}", r.sink_bytes)
                }
            );
            for l in &r.log {
                println!("problem {} round {}: | {l}", r.vmm, r.round);
            }
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
        "{:<18} {:<12} {:>10} {:>10} {:>10} {:>7}",
        "figure", "vmm", "median", "min", "max", "rounds"
    );
    for f in Figure::ALL {
        for &v in vmms {
            match stats(v, f) {
                Some(s) => println!(
                    "{:<18} {:<12} {:>10.1} {:>10.1} {:>10.1} {:>7}",
                    f.to_string(),
                    v.name(),
                    s.median,
                    s.min,
                    s.max,
                    format!("{}/{rounds}", s.n)
                ),
                None => println!(
                    "{:<18} {:<12} {:>10} {:>10} {:>10} {:>7}",
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
    // socat against the tool, per VMM: is socat the bottleneck?
    for &v in vmms {
        for (tool, socat) in [
            (Figure::H2g, Figure::H2gSocat),
            (Figure::G2h, Figure::G2hSocat),
        ] {
            if let (Some(t), Some(s)) = (stats(v, tool), stats(v, socat)) {
                println!(
                    "socat {:<12} {socat} / {tool} = {:.2}",
                    v.name(),
                    s.median / t.median
                );
            }
        }
    }
    if vmms.contains(&Vmm::Ferrovm) && vmms.contains(&Vmm::Firecracker) {
        println!("ratios ferrovm vs Firecracker (> 1: ferrovm better; throughput ferrovm/fc, latency fc/ferrovm):");
        for f in Figure::ALL {
            match (stats(Vmm::Ferrovm, f), stats(Vmm::Firecracker, f)) {
                (Some(x), Some(y)) => match f.ratio(x.median, y.median) {
                    Some(r) => {
                        let verdict = if r >= TARGET_RATIO { "met" } else { "NOT met" };
                        println!(
                            "ratio {:<18} {r:>6.2}  (target >= {TARGET_RATIO:.2}: {verdict})",
                            f.to_string()
                        );
                    }
                    None => println!("ratio {:<18}      -", f.to_string()),
                },
                _ => println!("ratio {:<18}      -", f.to_string()),
            }
        }
    }
    complete
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_vmms_get_the_same_guest() {
        let fc = firecracker_config();
        let fe = Vmm::Ferrovm.command();
        for s in [&fc, &fe] {
            assert!(s.contains(L2_KERNEL) && s.contains(L2_INITRD), "{s}");
            assert!(s.contains(CMDLINE), "{s}");
            assert!(s.contains(UDS), "{s}");
        }
        assert!(fe.contains(&format!("--mem {L2_MEM_MIB}M --cpus 1 --no-rng")));
        assert!(fe.contains(&format!("--vsock cid={GUEST_CID},uds={UDS}")));
        assert!(fc.contains(&format!("\"mem_size_mib\": {L2_MEM_MIB}")));
        assert!(fc.contains(&format!("\"guest_cid\": {GUEST_CID}")));
    }

    #[test]
    fn script_rotates_order_and_measures_everything() {
        let s = l1_script(&[Vmm::Firecracker, Vmm::Ferrovm], 2, 60, None);
        assert!(!s.contains("FERROVM_LOG"));
        let logged = l1_script(&[Vmm::Ferrovm], 1, 60, Some("devices=trace"));
        assert!(logged.contains("export FERROVM_LOG='devices=trace'\n"));
        let begins: Vec<&str> = s
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("echo \"{BEGIN_TAG} ")))
            .map(|l| l.split('"').next().unwrap())
            .collect();
        assert_eq!(
            begins,
            ["firecracker 0", "ferrovm 0", "ferrovm 1", "firecracker 1"]
        );
        let r = run_script(1 << 20, 7, 9);
        assert!(r.contains(&format!("{TOOL} connect {UDS} {PORT_SINK} 7")));
        assert!(r.contains(&format!("{TOOL} ping {UDS} {PORT_ECHO} 9")));
        assert!(r.contains("h2g_socat") && r.contains("g2h_socat"));
        let init = l2_init(1 << 20);
        assert!(init.contains("virtio_mmio.ko $MMIO_ARGS\n"), "{init}");
        assert!(init.contains("readbytes=1048576"));
        assert!(init.contains(&format!(
            "{TOOL} serve {PORT_SINK} {PORT_SOURCE} {PORT_ECHO} 1048576"
        )));
    }
}
