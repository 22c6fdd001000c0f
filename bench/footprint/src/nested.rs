//! The testbed parts, all in ONE L1: the memory overhead of each VMM (RSS outside guest
//! RAM, read from `/proc/PID/smaps` by `footprint-probe` one second after L2 printed its
//! userspace marker and again [`LATER_S`] seconds later), boots interleaved with the order
//! rotated every round; then the density run: [`DENSITY_VMS`] VMs of
//! [`DENSITY_MEM_MIB`] MiB started at once per VMM, the time until the last one printed
//! its marker, and their summed overhead.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use testbed::{binary_with_libs, default_l2_init, Job, JobFile, Testbed, L2_MARKER};

use crate::smaps::Breakdown;

/// Boot arguments of every VMM (Firecracker's recommended ones, `quiet`).
/// With testbed::guest::NESTED_GUEST_ARGS (every VMM compared gets the same line).
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet mitigations=off";
/// Guest memory of the memory part, MiB.
pub const MEM_MIB: u32 = 256;
/// VMs of the density run.
pub const DENSITY_VMS: u32 = 20;
/// Guest memory of each density VM, MiB.
pub const DENSITY_MEM_MIB: u32 = 128;
/// Seconds between the first and the second probe of a VMM (growth with uptime).
pub const LATER_S: u32 = 10;
/// L1 memory: 20 guests that each touch a few tens of MiB, their VMMs, and L1 itself.
pub const L1_MEM_MIB: u32 = 4096;
/// L1 vCPUs.
pub const L1_CPUS: u32 = 2;
/// Limit for one boot to the marker, s.
const BOOT_LIMIT_S: u32 = 90;
/// Limit for all density VMs to be up, s.
const DENSITY_LIMIT_S: u32 = 600;

/// The VMMs this part knows, as named on probe lines.
pub const FERROVM_BZIMAGE: &str = "ferrovm-bzimage";
/// ferrovm booting the ELF vmlinux.
pub const FERROVM_VMLINUX: &str = "ferrovm-vmlinux";
/// ferrovm booting the ELF vmlinux without its default virtio-rng (Firecracker's guest
/// has no devices here either).
pub const FERROVM_NORNG: &str = "ferrovm-norng";
/// Firecracker (ELF vmlinux, `--no-api --config-file`).
pub const FIRECRACKER: &str = "firecracker";
/// QEMU microvm (ELF vmlinux through its PVH entry).
pub const QEMU: &str = "qemu-microvm";

/// What the L1 job runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// VMMs of the memory part, in rotation order.
    pub vmms: Vec<String>,
    /// Rounds of the memory part.
    pub rounds: u32,
    /// VMMs of the density run (empty: none).
    pub density: Vec<String>,
    /// Rounds of the density run.
    pub density_rounds: u32,
    /// Diagnostic: after the memory rounds, one more round of each VMM with L1's
    /// `fault_around_bytes` (debugfs) set to this (reset to the default, 64 KiB, before
    /// the density run); its probes are named with [`fault_around_suffix`]. With 4096, a
    /// page fault on a file maps only that page, not its cached neighbours, so text RSS
    /// shows the pages really touched.
    pub fault_around: Option<u32>,
}

/// The L2 `/init` body: the marker, then stay up.
pub fn l2_init() -> String {
    format!("{}\nwhile :; do sleep 1; done", default_l2_init())
}

/// The name suffix of the memory probes taken with `fault_around_bytes` = `b`.
pub fn fault_around_suffix(b: u32) -> String {
    format!("@fault-around-{b}")
}

/// The L1 script.
pub fn script(o: &Options) -> String {
    let mut s = format!(
        r#"set -u
BOOT_ARGS='{BOOT_ARGS}'
mkdir -p /tmp/ferrovm-cache
now() {{ read up _ < /proc/uptime; echo $up; }}
# start NAME MEM_MIB LOG: starts the VMM in the background; its pid in $pid
start() {{
    case $1 in
    {FERROVM_BZIMAGE}) FERROVM_CACHE_DIR=/tmp/ferrovm-cache /ferrovm run --kernel /l2/bzImage --initrd /l2/initrd.cpio --mem ${{2}}M --cpus 1 --cmdline "$BOOT_ARGS" </dev/null >"$3" 2>&1 & ;;
    {FERROVM_VMLINUX}) /ferrovm run --kernel /l2/vmlinux --initrd /l2/initrd.cpio --mem ${{2}}M --cpus 1 --cmdline "$BOOT_ARGS" </dev/null >"$3" 2>&1 & ;;
    {FERROVM_NORNG}) /ferrovm run --kernel /l2/vmlinux --initrd /l2/initrd.cpio --mem ${{2}}M --cpus 1 --no-rng --cmdline "$BOOT_ARGS" </dev/null >"$3" 2>&1 & ;;
    {FIRECRACKER})
        echo "{{\"boot-source\": {{\"kernel_image_path\": \"/l2/vmlinux\", \"initrd_path\": \"/l2/initrd.cpio\", \"boot_args\": \"$BOOT_ARGS\"}}, \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": $2, \"smt\": false}}, \"drives\": []}}" >/tmp/fc-$2.json
        /firecracker --no-api --config-file /tmp/fc-$2.json --level Error </dev/null >"$3" 2>&1 & ;;
    {QEMU}) /usr/bin/qemu-system-x86_64 -M microvm -accel kvm -cpu host -m $2 -smp 1 -nodefaults -nographic -no-reboot -serial stdio -kernel /l2/vmlinux -initrd /l2/initrd.cpio -append "$BOOT_ARGS" </dev/null >"$3" 2>&1 & ;;
    esac
    pid=$!
}}
# up PID LOG: 0 once LOG holds the marker, 1 if the VMM died or {BOOT_LIMIT_S} s passed
up() {{
    i=0
    while ! grep -q '{L2_MARKER}' "$2"; do
        kill -0 $1 2>/dev/null || return 1
        i=$((i + 1)); [ $i -gt {polls} ] && return 1
        sleep 0.25
    done
}}
# mem NAME ROUND DETAIL [TAG_SUFFIX]
mem() {{
    t=$1${{4:-}}
    log=/tmp/mem-$1-$2.log
    start $1 {MEM_MIB} $log
    p=$pid
    if up $p $log; then
        sleep 1
        /footprint-probe mem:$t:$2:up $p {MEM_MIB} ${{3:-}}
        sleep {LATER_S}
        /footprint-probe mem:$t:$2:later $p {MEM_MIB}
    else
        echo "@@FP-FAIL mem:$t:$2 $(tail -n 5 $log | tr '\n' ' ')"
    fi
    kill -9 $p 2>/dev/null; wait $p 2>/dev/null
    rm -f $log
}}
# dens NAME ROUND: {DENSITY_VMS} VMs at once
dens() {{
    pids=
    t0=$(now)
    k=1
    while [ $k -le {DENSITY_VMS} ]; do
        start $1 {DENSITY_MEM_MIB} /tmp/dens-$1-$k.log
        pids="$pids $pid"
        k=$((k + 1))
    done
    t1=
    while :; do
        n=0
        k=1
        while [ $k -le {DENSITY_VMS} ]; do
            grep -q '{L2_MARKER}' /tmp/dens-$1-$k.log && n=$((n + 1))
            k=$((k + 1))
        done
        [ $n = {DENSITY_VMS} ] && {{ t1=$(now); break; }}
        el=$(awk "BEGIN {{ print int($(now) - $t0) }}")
        [ $el -gt {DENSITY_LIMIT_S} ] && break
        sleep 0.2
    done
    echo "@@FP-UP dens:$1:$2 $t0 ${{t1:-none}} $n"
    k=1
    for p in $pids; do
        if kill -0 $p 2>/dev/null; then
            /footprint-probe dens:$1:$2:$k $p {DENSITY_MEM_MIB}
        else
            wait $p; st=$?
            echo "@@FP-FAIL dens:$1:$2:$k exited with $st after $(grep -c '{L2_MARKER}' /tmp/dens-$1-$k.log) marker(s): $(tail -n 8 /tmp/dens-$1-$k.log | tr '\n' ' ')"
        fi
        k=$((k + 1))
    done
    kill -9 $pids 2>/dev/null
    for p in $pids; do wait $p 2>/dev/null; done
    rm -f /tmp/dens-$1-*.log
}}
"#,
        polls = BOOT_LIMIT_S * 4,
    );
    let n = o.vmms.len();
    for r in 0..o.rounds {
        for k in 0..n {
            let v = &o.vmms[(k + r as usize) % n];
            let detail = if r == 0 { "--detail" } else { "" };
            let _ = writeln!(s, "mem {v} {r} {detail}");
        }
    }
    if let Some(b) = o.fault_around {
        let _ = writeln!(
            s,
            "mount -t debugfs none /sys/kernel/debug 2>/dev/null; echo {b} >/sys/kernel/debug/fault_around_bytes && echo \"@@FP-FAULT-AROUND $(cat /sys/kernel/debug/fault_around_bytes)\""
        );
        for v in &o.vmms {
            let _ = writeln!(s, "mem {v} 0 '' {}", fault_around_suffix(b));
        }
        let _ = writeln!(s, "echo 65536 >/sys/kernel/debug/fault_around_bytes");
    }
    let n = o.density.len();
    for r in 0..o.density_rounds {
        for k in 0..n {
            let _ = writeln!(s, "dens {} {r}", o.density[(k + r as usize) % n]);
        }
    }
    s.push_str("exit 0\n");
    s
}

/// Files for L1: the probe, the VMMs, the L2 kernels and initramfs, each path once.
pub fn files(
    tb: &Testbed,
    o: &Options,
    ferrovm: &Path,
    probe: &Path,
    firecracker: Option<&Path>,
) -> testbed::Result<Vec<JobFile>> {
    let mut files = tb.l2_guest_files(&l2_init(), true)?;
    files.extend(binary_with_libs(probe, "/footprint-probe")?);
    let all: Vec<&String> = o.vmms.iter().chain(&o.density).collect();
    if all.iter().any(|v| v.starts_with("ferrovm")) {
        files.extend(binary_with_libs(ferrovm, "/ferrovm")?);
    }
    if let Some(fc) = firecracker.filter(|_| all.iter().any(|v| *v == FIRECRACKER)) {
        files.extend(binary_with_libs(fc, "/firecracker")?);
    }
    if all.iter().any(|v| *v == QEMU) {
        files.extend(tb.qemu_files()?);
    }
    let mut seen = HashSet::new();
    files.retain(|f| seen.insert(f.l1_path.clone()));
    Ok(files)
}

/// The L1 job.
pub fn job(o: &Options, files: Vec<JobFile>) -> Job {
    let boots = o.rounds * o.vmms.len() as u32;
    let dens = o.density_rounds * o.density.len() as u32;
    let secs = 180 + boots * (BOOT_LIMIT_S + LATER_S + 10) + dens * (DENSITY_LIMIT_S + 60);
    let mut job = Job::new(script(o))
        .files(files)
        .timeout(Duration::from_secs(u64::from(secs)));
    job.mem_mib = L1_MEM_MIB;
    job.cpus = L1_CPUS;
    job
}

/// One density round: seconds to the last marker, VMs up, one breakdown per VM.
pub type DensityRound = (Option<f64>, u32, Vec<Breakdown>);

/// What came back from L1.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// (vmm, phase "up"/"later") -> one breakdown per round.
    pub mem: BTreeMap<(String, String), Vec<Breakdown>>,
    /// vmm -> per round: (seconds to the last marker, VMs up, breakdown per VM).
    pub density: BTreeMap<String, Vec<DensityRound>>,
    /// Mapping lines of the first round, per VMM.
    pub detail: BTreeMap<String, Vec<String>>,
    /// Failed runs and probes.
    pub failures: Vec<String>,
}

/// Reads the job's console.
pub fn parse(console: &str) -> Results {
    let mut r = Results::default();
    for line in console.lines() {
        let mut w = line.splitn(3, ' ');
        let (tag, key, rest) = (
            w.next().unwrap_or(""),
            w.next().unwrap_or(""),
            w.next().unwrap_or(""),
        );
        let parts: Vec<&str> = key.split(':').collect();
        match (tag, parts.as_slice()) {
            ("@@FP-PROBE", ["mem", vmm, _round, phase]) => match Breakdown::from_words(rest) {
                Some(b) => r
                    .mem
                    .entry((vmm.to_string(), phase.to_string()))
                    .or_default()
                    .push(b),
                None => r.failures.push(line.to_string()),
            },
            ("@@FP-PROBE", ["dens", vmm, round, _k]) => {
                let round: usize = round.parse().unwrap_or(0);
                let runs = r.density.entry(vmm.to_string()).or_default();
                match (Breakdown::from_words(rest), runs.get_mut(round)) {
                    (Some(b), Some(run)) => run.2.push(b),
                    _ => r.failures.push(line.to_string()),
                }
            }
            ("@@FP-UP", ["dens", vmm, _round]) => {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let t0 = f.first().and_then(|v| v.parse::<f64>().ok());
                let t1 = f.get(1).and_then(|v| v.parse::<f64>().ok());
                let n = f.get(2).and_then(|v| v.parse().ok()).unwrap_or(0);
                let secs = t0.zip(t1).map(|(a, b)| b - a);
                r.density
                    .entry(vmm.to_string())
                    .or_default()
                    .push((secs, n, Vec::new()));
            }
            ("@@FP-MAP", [_part, vmm, ..]) => {
                r.detail
                    .entry(vmm.to_string())
                    .or_default()
                    .push(rest.to_string());
            }
            ("@@FP-FAIL", _) => r.failures.push(line.to_string()),
            _ => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_rotates_and_parses_back() {
        let o = Options {
            vmms: vec![FERROVM_BZIMAGE.into(), FIRECRACKER.into()],
            rounds: 2,
            density: vec![FERROVM_VMLINUX.into()],
            density_rounds: 1,
            fault_around: None,
        };
        let s = script(&o);
        let a = s.find("mem ferrovm-bzimage 0 --detail").unwrap();
        let b = s.find("mem firecracker 0 --detail").unwrap();
        let c = s.find("mem firecracker 1 \n").unwrap();
        let d = s.find("mem ferrovm-bzimage 1 \n").unwrap();
        assert!(a < b && b < c && c < d);
        assert!(s.contains("dens ferrovm-vmlinux 0"));
        let console = "\
@@FP-PROBE mem:ferrovm-bzimage:0:up overhead=3000 pss=2000 private=1000 threads=3 guest_ram=40000 heap=100
@@FP-MAP mem:ferrovm-bzimage:0:up heap rss=100
@@FP-UP dens:ferrovm-vmlinux:0 10.50 40.25 20
@@FP-PROBE dens:ferrovm-vmlinux:0:1 overhead=2500 pss=900 private=800 threads=3
@@FP-FAIL mem:firecracker:1 no marker
";
        let r = parse(console);
        let up = &r.mem[&(FERROVM_BZIMAGE.to_string(), "up".to_string())];
        assert_eq!(up[0].overhead(), 100);
        assert_eq!(up[0].pss_overhead, 2000);
        let d = &r.density[FERROVM_VMLINUX];
        assert_eq!(d[0].0, Some(29.75));
        assert_eq!(d[0].1, 20);
        assert_eq!(d[0].2.len(), 1);
        assert_eq!(r.detail[FERROVM_BZIMAGE], vec!["heap rss=100".to_string()]);
        assert_eq!(r.failures.len(), 1);
    }
}
