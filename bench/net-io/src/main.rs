//! Network benchmark: virtio-net TCP throughput each way, ping round trips and CPU time
//! per GB moved, ferrovm vs QEMU microvm (`-netdev tap` + `-device virtio-net-device`,
//! vhost off and on) and Firecracker, the same L2 kernel and initramfs, all inside ONE L1
//! of the nested testbed; VMM runs interleaved, order rotated each round.
//!
//! Every VMM gets the same tap made by L1 (`tapb0`, 10.0.9.1/24; the guest is 10.0.9.2),
//! 512 MiB and one vCPU, and no other virtio device. Per run, from L1:
//!
//! - `ping_rtt_ms`: the median of `--pings` pings (0.2 s apart) L1 -> guest;
//! - `tcp_rx_Mbps`: `iperf3 -c guest -t S` (L1 sends, the guest receives);
//! - `tcp_tx_Mbps`: `iperf3 -c guest -t S -R` (the guest sends);
//! - `cpu_s_per_GB_rx|tx`: CPU seconds (utime + stime from /proc) of the VMM process
//!   plus L1's `vhost-*` kernel threads during that iperf3 run, per 10^9 bytes received.
//!
//! It prints per VMM and figure the median (min, max) over the rounds, then the ratios
//! ferrovm-tap/qemu-tap, ferrovm-vhost/qemu-vhost and ferrovm-tap/firecracker
//! (throughput: higher is better; round trip and CPU: lower is better).
//!
//! Usage: cargo build --release --workspace && [FIRECRACKER_BIN=/path/to/firecracker] \
//! target/x86_64-unknown-linux-gnu/release/net-io [ROUNDS (default 3)] [-v] [--vmm NAME]... [--seconds S]
//! (about 50 s of host time per VMM run: 5 VMMs x 3 rounds take about 13 minutes).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use net_io::{
    parse_console, virtio_net_features, Figure, Run, Stats, BEGIN_TAG, END_TAG, FIG_ERROR,
    FIG_INFO, FIG_PING, FIG_TCP_RX, FIG_TCP_TX,
};
use testbed::guest::{l1_net_files, l1_net_setup, virtio_net_insmod, virtio_net_modules, L1_IP};
use testbed::{
    binary_with_libs, console_tail, virtio_insmod, virtio_modules, Job, JobFile, Testbed, L1_QEMU,
    L2_INITRD, L2_KERNEL,
};

/// L2 guest RAM, for every VMM.
const L2_MEM_MIB: u32 = 512;
/// L1 memory for the testbed run.
const L1_MEM_MIB: u32 = 2048;
/// The tap every VMM uses, made by L1.
const TAP: &str = "tapb0";
/// L1's address on the tap.
const L1_ADDR: &str = "10.0.9.1";
/// The guest's address.
const GUEST_ADDR: &str = "10.0.9.2";
/// The guest's MAC.
const GUEST_MAC: &str = "02:00:00:00:09:02";
/// The guest's kernel command line (Firecracker wants reboot=k and pci=off).
/// With testbed::guest::NESTED_GUEST_ARGS (every VMM compared gets the same line).
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet mitigations=off";
/// L1 paths.
const FERROVM: &str = "/ferrovm";
const FIRECRACKER: &str = "/firecracker";
const FIRECRACKER_CONFIG: &str = "/bench/firecracker.json";
const IPERF3: &str = "/usr/bin/iperf3";
const SOCAT: &str = "/usr/bin/socat";

#[derive(Parser)]
#[command(
    about = "virtio-net benchmark: ferrovm vs QEMU microvm and Firecracker inside one L1 of the nested testbed"
)]
struct Cli {
    /// Runs per VMM (interleaved; the median is reported).
    #[arg(default_value_t = 3)]
    rounds: u32,
    /// Stream the L1 console (L1 and L2 output) on stderr.
    #[arg(short, long)]
    verbose: bool,
    /// VMMs to run (repeatable) [default: all; firecracker only with FIRECRACKER_BIN].
    #[arg(long = "vmm", value_enum)]
    vmms: Vec<Vmm>,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Pings per run.
    #[arg(long, default_value_t = 20)]
    pings: u32,
    /// Limit for one VMM run (boot + all measurements), in seconds.
    #[arg(long, default_value_t = 180)]
    run_timeout: u64,
    /// More `ferrovm run` options for the ferrovm runs (e.g. "--seccomp off").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    ferrovm_args: String,
}

/// A VMM configuration under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Vmm {
    /// QEMU microvm, userspace virtio-net (vhost=off).
    #[value(name = "qemu-tap")]
    QemuTap,
    /// QEMU microvm with vhost-net.
    #[value(name = "qemu-vhost")]
    QemuVhost,
    /// ferrovm, userspace virtio-net.
    #[value(name = "ferrovm-tap")]
    FerrovmTap,
    /// ferrovm with vhost-net.
    #[value(name = "ferrovm-vhost")]
    FerrovmVhost,
    /// Firecracker (FIRECRACKER_BIN), its userspace virtio-net.
    #[value(name = "firecracker")]
    Firecracker,
}

impl Vmm {
    const ALL: [Vmm; 5] = [
        Vmm::QemuTap,
        Vmm::QemuVhost,
        Vmm::FerrovmTap,
        Vmm::FerrovmVhost,
        Vmm::Firecracker,
    ];

    fn name(self) -> &'static str {
        match self {
            Vmm::QemuTap => "qemu-tap",
            Vmm::QemuVhost => "qemu-vhost",
            Vmm::FerrovmTap => "ferrovm-tap",
            Vmm::FerrovmVhost => "ferrovm-vhost",
            Vmm::Firecracker => "firecracker",
        }
    }

    fn is_ferrovm(self) -> bool {
        matches!(self, Vmm::FerrovmTap | Vmm::FerrovmVhost)
    }

    fn is_qemu(self) -> bool {
        matches!(self, Vmm::QemuTap | Vmm::QemuVhost)
    }

    /// The L1 shell command booting L2 with the tap as its only virtio device. It
    /// `exec`s the VMM, so the L1 script's process is the VMM's.
    fn command(self, ferrovm_args: &str) -> String {
        let vhost = if matches!(self, Vmm::QemuVhost | Vmm::FerrovmVhost) {
            "on"
        } else {
            "off"
        };
        match self {
            Vmm::FerrovmTap | Vmm::FerrovmVhost => format!(
                "exec {FERROVM} run --kernel {L2_KERNEL} --initrd {L2_INITRD} --mem {L2_MEM_MIB}M --cpus 1 \
                 --cmdline \"{CMDLINE}\" --no-rng --net tap={TAP},mac={GUEST_MAC},vhost={vhost} {ferrovm_args} </dev/null"
            ),
            // virtio-mmio made modern (QEMU's default is the legacy version 1 transport), as
            // ferrovm's and Firecracker's are.
            Vmm::QemuTap | Vmm::QemuVhost => format!(
                "exec {L1_QEMU} -M microvm,acpi=on -accel kvm -cpu host -m {L2_MEM_MIB} -smp 1 -nodefaults \
                 -no-user-config -nographic -no-reboot -serial stdio -kernel {L2_KERNEL} -initrd {L2_INITRD} \
                 -append \"{CMDLINE}\" -global virtio-mmio.force-legacy=false \
                 -netdev tap,id=n0,ifname={TAP},script=no,downscript=no,vhost={vhost} \
                 -device virtio-net-device,netdev=n0,mac={GUEST_MAC} </dev/null"
            ),
            Vmm::Firecracker => format!(
                "exec {FIRECRACKER} --no-api --config-file {FIRECRACKER_CONFIG} --level Error </dev/null"
            ),
        }
    }
}

/// Firecracker's configuration: the same kernel, initramfs and tap; the guest reboots
/// at the end (Firecracker has no power-off device; a reboot ends it).
fn firecracker_config() -> String {
    format!(
        r#"{{
  "boot-source": {{ "kernel_image_path": "{L2_KERNEL}", "initrd_path": "{L2_INITRD}",
                   "boot_args": "{CMDLINE} net.end=reboot" }},
  "drives": [],
  "machine-config": {{ "vcpu_count": 1, "mem_size_mib": {L2_MEM_MIB} }},
  "network-interfaces": [{{ "iface_id": "eth0", "guest_mac": "{GUEST_MAC}", "host_dev_name": "{TAP}" }}]
}}
"#
    )
}

/// Ratios reported: (ferrovm configuration, baseline).
const COMPARISONS: [(Vmm, Vmm); 3] = [
    (Vmm::FerrovmTap, Vmm::QemuTap),
    (Vmm::FerrovmVhost, Vmm::QemuVhost),
    (Vmm::FerrovmTap, Vmm::Firecracker),
];

/// The L2 `/init` body after the module lines: bring eth0 up, start an iperf3 server,
/// say so, and wait for L1 to finish (it connects to port 7000).
fn l2_body() -> String {
    format!(
        "n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done\n\
         if [ -e /sys/class/net/eth0 ]; then\n\
         \x20 ip link set lo up\n\
         \x20 ip addr add {GUEST_ADDR}/24 dev eth0\n\
         \x20 ip link set eth0 up\n\
         \x20 n=0; while [ \"$(cat /sys/class/net/eth0/operstate)\" != up ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done\n\
         \x20 iperf3 -s -D\n\
         \x20 echo \"@@NET fig={FIG_INFO} mac=$(cat /sys/class/net/eth0/address) operstate=$(cat /sys/class/net/eth0/operstate) \
         queues=$(ls /sys/class/net/eth0/queues | tr '\\n' ',') features=$(cat /sys/class/net/eth0/device/features) \
         mtu=$(cat /sys/class/net/eth0/mtu)\"\n\
         \x20 timeout 900 socat -u TCP-LISTEN:7000,reuseaddr - >/dev/null\n\
         else\n\
         \x20 echo \"@@NET fig={FIG_ERROR} what=no-eth0\"\n\
         \x20 dmesg | grep -iE 'virtio|net|mmio' | tail -n 20\n\
         fi\n\
         grep -q net.end=reboot /proc/cmdline && reboot -f"
    )
}

/// The L1 job script: the tap, an iperf3-capable L1, then every (round, VMM) run with
/// the order rotated.
fn l1_script(vmms: &[Vmm], rounds: u32, seconds: u32, pings: u32, run_timeout: u64) -> String {
    let mut s = format!(
        "set -u\n\
         {setup}\
         {L1_IP} tuntap add {TAP} mode tap || echo \"net-io: cannot create {TAP}\"\n\
         {L1_IP} addr add {L1_ADDR}/24 dev {TAP}\n\
         {L1_IP} link set {TAP} up\n\
         echo \"net-io: L1 /dev/vhost-net: $([ -c /dev/vhost-net ] && echo yes || echo no)\"\n\
         # utime + stime (ticks) of process $1, and of all vhost kernel threads.\n\
         ticks() {{ awk '{{ print $14 + $15 }}' /proc/$1/stat 2>/dev/null || echo 0; }}\n\
         vhost_ticks() {{ cat /proc/[0-9]*/stat 2>/dev/null | awk '$2 ~ /^\\(vhost-/ {{ s += $14 + $15 }} END {{ print s + 0 }}'; }}\n\
         # bytes and seconds the receiver counted, from iperf3 -J output in $1.\n\
         received() {{ awk '/\"sum_received\"/ {{ f = 1 }} f && /\"seconds\"/ {{ gsub(/[^0-9.e+]/, \"\", $2); s = $2 }} \
         f && /\"bytes\"/ {{ gsub(/[^0-9]/, \"\", $2); b = $2 }} f && /\"bits_per_second\"/ {{ print \"bytes=\" b \" secs=\" s; exit }}' \"$1\"; }}\n\
         # iperf FIG ARGS...: one iperf3 run from L1 with the CPU it cost the VMM.\n\
         iperf() {{\n\
         \x20 fig=$1; shift\n\
         \x20 c0=$(ticks $pid); v0=$(vhost_ticks)\n\
         \x20 timeout {iperf_timeout} iperf3 -c {GUEST_ADDR} -t {seconds} -J \"$@\" >/tmp/iperf.json 2>&1\n\
         \x20 rc=$?\n\
         \x20 c1=$(ticks $pid); v1=$(vhost_ticks)\n\
         \x20 r=$(received /tmp/iperf.json)\n\
         \x20 [ -n \"$r\" ] || {{ r=\"bytes=0 secs=0\"; [ $rc -eq 0 ] && rc=1; grep '\"error\"' /tmp/iperf.json; }}\n\
         \x20 echo \"@@NET fig=$fig $r vmm_ticks=$((c1 - c0)) vhost_ticks=$((v1 - v0)) status=$rc\"\n\
         }}\n\
         run() {{ # NAME ROUND\n\
         \x20 echo \"{BEGIN_TAG} $1 $2\"\n\
         \x20 rm -f /tmp/vm.pid\n\
         \x20 timeout -s KILL {run_timeout} sh -c 'echo $$ >/tmp/vm.pid; exec sh \"$0\"' /bench/$1.sh >/tmp/vm.out 2>&1 &\n\
         \x20 tpid=$!\n\
         \x20 n=0; while [ ! -s /tmp/vm.pid ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done\n\
         \x20 pid=$(cat /tmp/vm.pid)\n\
         \x20 n=0; while ! grep -q 'fig={FIG_INFO}' /tmp/vm.out && kill -0 $tpid 2>/dev/null && [ $n -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done\n\
         \x20 if grep -q 'fig={FIG_INFO}' /tmp/vm.out; then\n\
         \x20   ping -c 2 -W 5 {GUEST_ADDR} >/dev/null 2>&1\n\
         \x20   ping -c {pings} -i 0.2 -W 5 {GUEST_ADDR} >/tmp/ping.out 2>&1\n\
         \x20   rc=$?\n\
         \x20   echo \"@@NET fig={FIG_PING} rtts_ms=$(awk '/time=/ {{ sub(/.*time=/, \"\"); sub(/ .*/, \"\"); printf \"%s%s\", sep, $0; sep = \",\" }}' /tmp/ping.out) status=$rc\"\n\
         \x20   iperf {FIG_TCP_RX}\n\
         \x20   iperf {FIG_TCP_TX} -R\n\
         \x20   echo done | timeout 30 socat -u - TCP:{GUEST_ADDR}:7000,retry=20,interval=0.5\n\
         \x20 else\n\
         \x20   echo \"@@NET fig={FIG_ERROR} what=guest-link-never-up\"\n\
         \x20 fi\n\
         \x20 wait $tpid\n\
         \x20 rc=$?\n\
         \x20 grep -v '^@@NET fig=[a-z_]* ' /tmp/vm.out | tail -n 12\n\
         \x20 grep '^@@NET fig={FIG_INFO}' /tmp/vm.out\n\
         \x20 echo \"{END_TAG} $1 $2 $rc\"\n\
         }}\n\
         iperf3 -s -D >/dev/null 2>&1\n",
        setup = l1_net_setup(),
        iperf_timeout = seconds + 30,
    );
    let n = vmms.len();
    for round in 0..rounds {
        for k in 0..n {
            let v = vmms[(k + round as usize) % n];
            let _ = writeln!(s, "run {} {round}", v.name());
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
            eprintln!("net-io: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Prepares and runs the benchmark; `Err` means it could not run at all.
fn run(cli: &Cli) -> Result<ExitCode, String> {
    let firecracker = std::env::var_os("FIRECRACKER_BIN").map(PathBuf::from);
    let mut vmms = if cli.vmms.is_empty() {
        let all: Vec<Vmm> = Vmm::ALL.to_vec();
        if firecracker.is_none() {
            println!("net-io: FIRECRACKER_BIN is not set: Firecracker is left out");
            all.into_iter().filter(|v| *v != Vmm::Firecracker).collect()
        } else {
            all
        }
    } else {
        cli.vmms.clone()
    };
    let mut seen = Vec::new();
    vmms.retain(|v| {
        let new = !seen.contains(v);
        seen.push(*v);
        new
    });
    if cli.rounds == 0 || cli.seconds == 0 || cli.pings == 0 {
        return Err("need ROUNDS >= 1, --seconds >= 1 and --pings >= 1".into());
    }
    let ferrovm = testbed::runner::sibling("ferrovm");
    if vmms.iter().any(|v| v.is_ferrovm()) {
        if !ferrovm.exists() {
            return Err(format!(
                "{} not found; run cargo build --release --workspace",
                ferrovm.display()
            ));
        }
        if !testbed::runner::ferrovm_run_has(&ferrovm, "--net") {
            return Err(format!(
                "{} has no `run --net` option yet; measure the others alone with \
                 --vmm qemu-tap --vmm qemu-vhost [--vmm firecracker]",
                ferrovm.display()
            ));
        }
    }
    let tb = Testbed::new().map_err(|e| format!("testbed unavailable: {e}"))?;
    let e = |e: testbed::Error| e.to_string();

    // L2: kernel + initramfs with the virtio(-net) modules, iperf3 and socat.
    let mut l2_extra = virtio_modules(tb.host()).map_err(e)?;
    l2_extra.extend(virtio_net_modules(tb.host()).map_err(e)?);
    l2_extra.extend(binary_with_libs(Path::new(IPERF3), "/bin/iperf3").map_err(e)?);
    l2_extra.extend(binary_with_libs(Path::new(SOCAT), "/bin/socat").map_err(e)?);
    let init = format!("{}{}{}", virtio_insmod(), virtio_net_insmod(), l2_body());
    let initrd = tb.l2_initramfs(&init, &l2_extra).map_err(e)?;
    let mut files = vec![
        JobFile::host(&tb.base().vmlinux, L2_KERNEL, 0o644),
        JobFile::bytes(initrd, L2_INITRD, 0o644),
    ];
    files.extend(l1_net_files(tb.host()).map_err(e)?);
    files.extend(binary_with_libs(Path::new(IPERF3), IPERF3).map_err(e)?);
    files.extend(binary_with_libs(Path::new(SOCAT), SOCAT).map_err(e)?);
    if vmms.iter().any(|v| v.is_qemu()) {
        files.extend(tb.qemu_files().map_err(e)?);
    }
    if vmms.iter().any(|v| v.is_ferrovm()) {
        files.extend(binary_with_libs(&ferrovm, FERROVM).map_err(e)?);
    }
    if vmms.contains(&Vmm::Firecracker) {
        let fc = firecracker
            .as_deref()
            .ok_or("--vmm firecracker needs FIRECRACKER_BIN=/path/to/firecracker")?;
        files.extend(binary_with_libs(fc, FIRECRACKER).map_err(e)?);
        files.push(JobFile::bytes(
            firecracker_config(),
            FIRECRACKER_CONFIG,
            0o644,
        ));
    }
    for v in &vmms {
        files.push(JobFile::bytes(
            format!("{}\n", v.command(&cli.ferrovm_args)),
            format!("/bench/{}.sh", v.name()),
            0o755,
        ));
    }
    let runs = u64::from(cli.rounds) * vmms.len() as u64;
    let job = Job::new(l1_script(
        &vmms,
        cli.rounds,
        cli.seconds,
        cli.pings,
        cli.run_timeout,
    ))
    .files(files)
    .mem_mib(L1_MEM_MIB)
    .timeout(Duration::from_secs(runs * cli.run_timeout + 300));

    let names: Vec<&str> = vmms.iter().map(|v| v.name()).collect();
    println!(
        "net-io: {} rounds of [{}] in one L1; tap {TAP} {L1_ADDR} <-> guest {GUEST_ADDR}; \
         L2 {L2_MEM_MIB} MiB, 1 vCPU; iperf3 {} s each way, {} pings",
        cli.rounds,
        names.join(" "),
        cli.seconds,
        cli.pings
    );
    if !cli.verbose {
        println!("net-io: this takes about a minute per VMM run; -v streams the L1 console");
    }
    let output = tb.run(&job).map_err(e)?;
    if output.status != 0 {
        eprintln!(
            "net-io: the L1 job exited with {}; console tail:\n{}",
            output.status,
            console_tail(&output.console)
        );
        return Ok(ExitCode::from(1));
    }
    let runs = parse_console(&output.console);
    if runs.is_empty() {
        eprintln!(
            "net-io: no VMM run on the L1 console; console tail:\n{}",
            console_tail(&output.console)
        );
        return Ok(ExitCode::from(1));
    }
    for l in output.console.lines().filter(|l| l.starts_with("net-io: ")) {
        println!("{l}");
    }
    if !report(&vmms, cli.rounds, &runs) {
        eprintln!("net-io: some runs failed (see the `problem` lines; -v shows the whole console)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the per-run problems, what the guests negotiated, the table of medians and the
/// ratios. Returns whether every run measured every figure.
fn report(vmms: &[Vmm], rounds: u32, runs: &[Run]) -> bool {
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
        if r.exit_code != Some(0) || !missing.is_empty() || !r.problems.is_empty() {
            complete = false;
            println!(
                "problem {} round {}: exit {:?}, missing [{}] {}",
                r.vmm,
                r.round,
                r.exit_code,
                missing.join(" "),
                r.problems.join(" | ")
            );
            for l in &r.log {
                println!("problem {} round {}: | {l}", r.vmm, r.round);
            }
        }
    }
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
                "features" => format!("{k}={}", virtio_net_features(x).join(",")),
                _ => format!("{k}={x}"),
            })
            .collect();
        println!("nic {:<14} {}", v.name(), fields.join(" "));
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
        "{:<18} {:<14} {:>10} {:>10} {:>10} {:>7}",
        "figure", "vmm", "median", "min", "max", "rounds"
    );
    for f in Figure::ALL {
        for &v in vmms {
            let (med, min, max, n) = match stats(v, f) {
                Some(s) => (
                    format!("{:.2}", s.median),
                    format!("{:.2}", s.min),
                    format!("{:.2}", s.max),
                    s.n,
                ),
                None => ("-".into(), "-".into(), "-".into(), 0),
            };
            println!(
                "{:<18} {:<14} {med:>10} {min:>10} {max:>10} {:>7}",
                f.to_string(),
                v.name(),
                format!("{n}/{rounds}")
            );
        }
    }
    for f in Figure::ALL {
        for (a, b) in COMPARISONS {
            if !vmms.contains(&a) || !vmms.contains(&b) {
                continue;
            }
            let pair = format!("{}/{}", a.name(), b.name());
            let better = if f.higher_is_better() {
                "higher is better"
            } else {
                "lower is better"
            };
            match (stats(a, f), stats(b, f)) {
                (Some(x), Some(y)) if y.median > 0.0 => println!(
                    "ratio {:<18} {pair:<28} {:>6.2}  ({better})",
                    f.to_string(),
                    x.median / y.median
                ),
                _ => println!("ratio {:<18} {pair:<28}      -", f.to_string()),
            }
        }
    }
    complete
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vmm_uses_the_same_tap_mac_and_guest() {
        for v in Vmm::ALL {
            let c = v.command("");
            assert!(c.starts_with("exec "), "{c}");
            if v == Vmm::Firecracker {
                let cfg = firecracker_config();
                assert!(cfg.contains(TAP) && cfg.contains(GUEST_MAC), "{cfg}");
                assert!(cfg.contains(L2_KERNEL) && cfg.contains(L2_INITRD), "{cfg}");
            } else {
                assert!(c.contains(TAP) && c.contains(GUEST_MAC), "{c}");
                assert!(c.contains(L2_KERNEL) && c.contains(L2_INITRD), "{c}");
            }
        }
        assert!(Vmm::QemuVhost.command("").contains("vhost=on"));
        assert!(Vmm::QemuTap.command("").contains("vhost=off"));
        assert!(Vmm::FerrovmVhost.command("").contains("vhost=on"));
        assert!(Vmm::FerrovmTap.command("").contains("vhost=off"));
        assert!(Vmm::FerrovmTap
            .command("--seccomp off")
            .contains("vhost=off --seccomp off"));
    }

    #[test]
    fn script_rotates_order_and_brackets_runs() {
        let s = l1_script(&[Vmm::QemuTap, Vmm::FerrovmTap], 2, 10, 20, 60);
        let runs: Vec<&str> = s.lines().filter_map(|l| l.strip_prefix("run ")).collect();
        assert_eq!(
            runs,
            ["qemu-tap 0", "ferrovm-tap 0", "ferrovm-tap 1", "qemu-tap 1"]
        );
        assert!(s.contains("timeout -s KILL 60 sh -c"));
        assert!(s.contains("-t 10 -J"));
        assert!(s.contains("ping -c 20 -i 0.2"));
    }
}
