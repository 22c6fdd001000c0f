//! The snapshot benchmark's L1 script and the parsing of what it prints (the binary,
//! `snapshot-bench`, runs it in one testbed L1 and prints the figures).
//!
//! In ONE L1, for each VMM (ferrovm, and Firecracker when given) and guest size:
//!
//! 1. **create**: the VMM is started with only `--api-sock`, configured with curl
//!    (`PUT /machine-config`, `PUT /boot-source`: the same ELF kernel, initramfs, command
//!    line and vCPUs for every VMM), booted with `InstanceStart`; once the guest ticks,
//!    `creates` times: `PATCH /vm Paused`, `PUT /snapshot/create` (Full), timed by curl's
//!    `%{time_total}`, `PATCH /vm Resumed`. The last snapshot is kept, the VMM killed.
//! 2. **restore**, `rounds` times, interleaved over every (VMM, size) with the order
//!    rotated each round: a fresh VMM with only `--api-sock`, its output (the guest
//!    console) through busybox `ts '%.s'`; the script writes a T0 line into the same `ts`
//!    right before `PUT /snapshot/load` with `resume_vm: true` goes out (curl, started a
//!    second earlier, waits for the request body on a FIFO, so its own start-up is not
//!    counted); "to the next console line"
//!    is T0 to the guest's first tick line (the guest prints `T <n>` lines without pause).
//!    "To the next instruction" is the load request's own time (curl's `%{time_total}`):
//!    both VMMs answer a load with `resume_vm` once the vCPU threads were set running
//!    (ferrovm spawns them running; Firecracker's answer its Resume event), so the guest's
//!    next instruction follows within a thread wake-up. (Neither VMM reports the moment of
//!    its first `KVM_RUN`, so this is the closest figure measured the same way for both.)
//!
//! The guest is the testbed's busybox initramfs whose `/init` prints the userspace marker
//! and then ticks for ever. Memory files live in L1's RAM (its root file system), so no
//! disk is involved on either side.

use std::fmt::Write as _;
use std::path::Path;

use testbed::{binary_with_libs, JobFile, L2_INITRD, L2_KERNEL, L2_MARKER};

/// Boot arguments of every VMM (Firecracker's recommended ones, `quiet`).
/// With testbed::guest::NESTED_GUEST_ARGS (every VMM compared gets the same line).
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet mitigations=off";
/// L2 vCPUs.
pub const L2_VCPUS: u32 = 2;
/// Where curl is on the host (Debian package `curl`) and in L1.
pub const CURL: &str = "/usr/bin/curl";
/// The L1 directory holding the snapshots.
pub const SNAP_DIR: &str = "/snap";
/// Limit for the L2 marker after InstanceStart, seconds.
pub const MARKER_TIMEOUT_S: u32 = 120;
/// Limit for the first tick after a load request, seconds.
pub const TICK_TIMEOUT_S: u32 = 60;
/// Limit for one API request, seconds (a 2 GiB Firecracker snapshot writes 2 GiB).
pub const CURL_TIMEOUT_S: u32 = 180;

const CREATE_TAG: &str = "@@SB-CREATE";
const SNAPPED_TAG: &str = "@@SB-SNAPPED";
const RESTORE_TAG: &str = "@@SB-RESTORE";
const T0_TAG: &str = "@@SB-T0";
const LOG_BEGIN: &str = "@@SB-LOG-BEGIN";
const LOG_END: &str = "@@SB-LOG-END";

/// The L2 `/init` body: the marker, then tick lines as fast as the console takes them
/// (shell builtins only: no fork, no timer), so the first line after a restore comes as
/// soon as the vCPU runs the guest again.
pub fn l2_init() -> String {
    format!("echo \"{L2_MARKER}\"\nn=0\nwhile :; do n=$((n + 1)); echo \"T $n\"; done")
}

/// A VMM started in L1 as `COMMAND --api-sock SOCK`.
#[derive(Debug, Clone)]
pub struct Vmm {
    /// Short name without spaces.
    pub name: String,
    /// The command line before `--api-sock`.
    pub command: String,
    /// Files it needs in L1.
    pub files: Vec<JobFile>,
}

impl Vmm {
    /// ferrovm at `/ferrovm` (configured over the API it has no entropy device, like
    /// Firecracker without `PUT /entropy`).
    pub fn ferrovm(host: &Path) -> testbed::Result<Vmm> {
        Ok(Vmm {
            name: "ferrovm".into(),
            command: "/ferrovm run".into(),
            files: binary_with_libs(host, "/ferrovm")?,
        })
    }

    /// Firecracker at `/firecracker`, logging errors only (its stdout is the guest
    /// console, as ferrovm's is).
    pub fn firecracker(host: &Path) -> testbed::Result<Vmm> {
        Ok(Vmm {
            name: "firecracker".into(),
            command: "/firecracker --level Error".into(),
            files: binary_with_libs(host, "/firecracker")?,
        })
    }
}

/// What one L1 run measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// The VMMs; the first (ferrovm) is the numerator of the ratios.
    pub vmms: Vec<Vmm>,
    /// Guest sizes, MiB.
    pub sizes_mib: Vec<u32>,
    /// Restores per (VMM, size).
    pub rounds: u32,
    /// Snapshot creations per (VMM, size).
    pub creates: u32,
}

impl Options {
    /// Every (VMM index, size) pair, in the order of phase 1.
    pub fn pairs(&self) -> Vec<(usize, u32)> {
        self.sizes_mib
            .iter()
            .flat_map(|&s| (0..self.vmms.len()).map(move |v| (v, s)))
            .collect()
    }

    /// Seconds one boot with its snapshots may take at most (the VMM's own limit).
    fn boot_limit_s(&self) -> u32 {
        30 + MARKER_TIMEOUT_S + self.creates * (2 * CURL_TIMEOUT_S / 3 + 5)
    }

    /// A generous limit for the whole L1 job, seconds.
    pub fn job_timeout_s(&self) -> u64 {
        let pairs = self.pairs().len() as u64;
        180 + pairs * u64::from(self.boot_limit_s())
            + pairs * u64::from(self.rounds) * u64::from(TICK_TIMEOUT_S + 40)
    }
}

/// The L1 job script.
pub fn script(o: &Options) -> String {
    let boot_limit = o.boot_limit_s();
    let restore_limit = TICK_TIMEOUT_S + 30;
    let mut s = format!(
        r#"set -u
mkdir -p {SNAP_DIR}
# api SOCK METHOD PATH BODY: prints "HTTP_CODE TIME_TOTAL"; the answer's body is in /tmp/api.out
api() {{
    {CURL} -sS --max-time {CURL_TIMEOUT_S} -o /tmp/api.out -w '%{{http_code}} %{{time_total}}' \
        --unix-socket "$1" -X "$2" -H 'Content-Type: application/json' -H 'Accept: application/json' \
        "http://localhost$3" -d "$4" 2>/tmp/api.err || echo " curl-failed $(cat /tmp/api.err)"
}}
# ok WHAT REPLY: sets err unless REPLY is a 204
ok() {{
    case "$2" in
    "204 "*) ;;
    *) err="$1 answered: $2 $(tr '\n' ' ' </tmp/api.out 2>/dev/null)" ;;
    esac
}}
# wait_sock SOCK PID: until the API socket exists (sets err when the VMM ends or 20 s pass)
wait_sock() {{
    i=0
    while [ ! -S "$1" ]; do
        kill -0 "$2" 2>/dev/null || {{ err="the VMM exited before creating its API socket"; return; }}
        i=$((i + 1)); [ $i -gt 200 ] && {{ err="no API socket after 20 s"; return; }}
        sleep 0.1
    done
}}
# wait_out FILE PATTERN PID SECONDS: until FILE has a line matching PATTERN (sets err)
wait_out() {{
    i=0
    while ! grep -q "$2" "$1"; do
        kill -0 "$3" 2>/dev/null || {{ err="the VMM exited before printing $2"; return; }}
        i=$((i + 1)); [ $i -gt $(($4 * 20)) ] && {{ err="no $2 within $4 s"; return; }}
        sleep 0.05
    done
}}
# snap NAME SIZE_MIB CMD CREATES: boot, then CREATES x (pause, create, resume); the last
# snapshot is kept in {SNAP_DIR}/NAME-SIZE and the VMM killed while paused.
snap() {{
    name=$1; size=$2; cmd=$3; c=$4
    dir={SNAP_DIR}/$name-$size; sock=/tmp/$name.sock; out=/tmp/boot-$name-$size.out
    rm -rf "$dir" "$sock"; mkdir -p "$dir"
    err=
    timeout -s KILL {boot_limit} $cmd --api-sock "$sock" </dev/null >"$out" 2>&1 &
    vp=$!
    wait_sock "$sock" $vp
    [ -z "$err" ] && ok "PUT /machine-config" "$(api "$sock" PUT /machine-config "{{\"vcpu_count\": {L2_VCPUS}, \"mem_size_mib\": $size, \"smt\": false}}")"
    [ -z "$err" ] && ok "PUT /boot-source" "$(api "$sock" PUT /boot-source '{{"kernel_image_path": "{L2_KERNEL}", "initrd_path": "{L2_INITRD}", "boot_args": "{BOOT_ARGS}"}}')"
    [ -z "$err" ] && ok "PUT /actions InstanceStart" "$(api "$sock" PUT /actions '{{"action_type": "InstanceStart"}}')"
    [ -z "$err" ] && wait_out "$out" '^T 1000' $vp {MARKER_TIMEOUT_S}
    i=1
    while [ -z "$err" ] && [ $i -le $c ]; do
        sleep 0.5
        ok "PATCH /vm Paused" "$(api "$sock" PATCH /vm '{{"state": "Paused"}}')"
        [ -z "$err" ] || break
        q=$(api "$sock" PUT /snapshot/create "{{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$dir/vm.snap\", \"mem_file_path\": \"$dir/vm.mem\"}}")
        ok "PUT /snapshot/create" "$q"
        [ -z "$err" ] || break
        echo "{CREATE_TAG} $name $size $i $q $(stat -c '%s %b' "$dir/vm.mem") $(stat -c %s "$dir/vm.snap")"
        [ $i -lt $c ] && ok "PATCH /vm Resumed" "$(api "$sock" PATCH /vm '{{"state": "Resumed"}}')"
        i=$((i + 1))
    done
    kill -9 $vp 2>/dev/null
    wait $vp 2>/dev/null
    if [ -n "$err" ]; then
        rm -rf "$dir"
        echo "--- $name $size: the VMM's output (last 30 lines) ---"
        tail -n 30 "$out"
    fi
    echo "{SNAPPED_TAG} $name $size ${{err:-ok}}"
    rm -f "$out" "$sock"
}}
# restore NAME SIZE_MIB CMD ROUND: a fresh VMM loads the kept snapshot with resume_vm;
# its output goes through ts, with a T0 line written right before the load request.
restore() {{
    name=$1; size=$2; cmd=$3; r=$4
    dir={SNAP_DIR}/$name-$size; sock=/tmp/$name.sock
    log=/tmp/r.log; raw=/tmp/r.raw; fifo=/tmp/r.fifo; body=/tmp/load.fifo
    err=
    st=
    if [ ! -f "$dir/vm.snap" ]; then
        echo "{RESTORE_TAG} $name $size $r - - no snapshot to restore"
        return
    fi
    rm -f "$sock" "$fifo" "$log" "$raw"
    mkfifo "$fifo"
    # ts stamps each line as it reads it but buffers its output; the unbuffered tee copy
    # is what the wait below reads.
    tee "$raw" <"$fifo" | ts '%.s' >"$log" &
    tsp=$!
    exec 3>"$fifo"
    timeout -s KILL {restore_limit} $cmd --api-sock "$sock" </dev/null >&3 2>&1 &
    vp=$!
    wait_sock "$sock" $vp
    if [ -z "$err" ]; then
        # curl is started first and reads the request body from a FIFO, so T0 is the
        # moment the request goes out, not curl's own start-up (a few hundred ms in L1,
        # the same for every VMM).
        rm -f "$body"; mkfifo "$body"
        api "$sock" PUT /snapshot/load "@$body" >/tmp/load.st &
        cp=$!
        sleep 1
        echo "{T0_TAG} $name $size $r" >&3
        echo "{{\"snapshot_path\": \"$dir/vm.snap\", \"mem_backend\": {{\"backend_type\": \"File\", \"backend_path\": \"$dir/vm.mem\"}}, \"resume_vm\": true}}" >"$body"
        wait $cp
        st=$(cat /tmp/load.st)
        ok "PUT /snapshot/load" "$st"
    fi
    [ -z "$err" ] && wait_out "$raw" '^T [0-9]' $vp {TICK_TIMEOUT_S}
    [ -z "$err" ] && sleep 0.3
    kill -9 $vp 2>/dev/null
    wait $vp 2>/dev/null
    exec 3>&-
    i=0
    while kill -0 $tsp 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 $tsp 2>/dev/null
    wait $tsp 2>/dev/null
    echo "{RESTORE_TAG} $name $size $r ${{st:-- -}} ${{err:-ok}}"
    echo "{LOG_BEGIN} $name $size $r"
    grep -m 1 '{T0_TAG}' "$log"
    grep -m 3 '^[0-9.]* T [0-9]' "$log"
    grep -v '^[0-9.]* T [0-9]' "$log" | grep -v '{T0_TAG}' | head -n 20
    echo "{LOG_END} $name $size $r"
    rm -f "$sock" "$fifo" "$log" "$raw" "$body" /tmp/load.st
}}
"#
    );
    for (v, size) in o.pairs() {
        let vmm = &o.vmms[v];
        let _ = writeln!(
            s,
            "snap {} {size} '{}' {}",
            vmm.name, vmm.command, o.creates
        );
    }
    let pairs = o.pairs();
    for r in 0..o.rounds {
        for k in 0..pairs.len() {
            let (v, size) = pairs[(k + r as usize) % pairs.len()];
            let vmm = &o.vmms[v];
            let _ = writeln!(s, "restore {} {size} '{}' {r}", vmm.name, vmm.command);
        }
    }
    let _ = writeln!(s, "rm -rf {SNAP_DIR}\nexit 0");
    s
}

/// One snapshot creation.
#[derive(Debug, Clone, PartialEq)]
pub struct Create {
    /// curl's time for `PUT /snapshot/create`, ms.
    pub ms: f64,
    /// The memory file's size, bytes.
    pub mem_bytes: u64,
    /// What the memory file occupies (512-byte blocks times 512), bytes.
    pub mem_allocated: u64,
    /// The state file's size, bytes.
    pub state_bytes: u64,
}

/// One restore.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restore {
    /// Round.
    pub round: u32,
    /// curl's time for `PUT /snapshot/load` (with resume_vm), ms.
    pub load_ms: Option<f64>,
    /// T0 (right before the load request) to the guest's first tick, ms.
    pub to_running_ms: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The log lines L1 kept (T0, the first ticks, anything else the VMM printed).
    pub log: Vec<String>,
}

/// Everything measured for one (VMM, size).
#[derive(Debug, Clone, Default)]
pub struct PairResult {
    /// The VMM's name.
    pub vmm: String,
    /// Guest size, MiB.
    pub size_mib: u32,
    /// Its snapshot creations.
    pub creates: Vec<Create>,
    /// Why phase 1 failed (`None`: the snapshot was kept).
    pub snap_error: Option<String>,
    /// Its restores.
    pub restores: Vec<Restore>,
}

impl PairResult {
    /// Create times, ms.
    pub fn create_ms(&self) -> Vec<f64> {
        self.creates.iter().map(|c| c.ms).collect()
    }

    /// Load request times of the restores that worked, ms.
    pub fn load_ms(&self) -> Vec<f64> {
        self.restores.iter().filter_map(|r| r.load_ms).collect()
    }

    /// Restore-to-running times of the restores that worked, ms.
    pub fn to_running_ms(&self) -> Vec<f64> {
        self.restores
            .iter()
            .filter_map(|r| r.to_running_ms)
            .collect()
    }
}

/// A `ts '%.s'` line: (seconds, rest).
fn stamped(line: &str) -> Option<(f64, &str)> {
    let (t, rest) = line.split_once(' ')?;
    Some((t.parse().ok()?, rest))
}

/// `"204 0.123456"` fields -> ms.
fn curl_ms(code: &str, secs: &str) -> Option<f64> {
    (code == "204").then_some(())?;
    secs.parse::<f64>().ok().map(|s| s * 1e3)
}

/// T0 to the first tick after it, ms.
fn to_running(log: &[String]) -> Option<f64> {
    let mut t0 = None;
    for l in log {
        let Some((t, rest)) = stamped(l) else {
            continue;
        };
        if rest.starts_with(T0_TAG) {
            t0 = Some(t);
        } else if rest.starts_with("T ") && t0.is_some() {
            return t0.map(|t0| (t - t0) * 1e3);
        }
    }
    None
}

/// The results from L1's console, one per [`Options::pairs`].
pub fn parse(console: &str, o: &Options) -> Result<Vec<PairResult>, String> {
    let pairs = o.pairs();
    let mut results: Vec<PairResult> = pairs
        .iter()
        .map(|&(v, size)| PairResult {
            vmm: o.vmms[v].name.clone(),
            size_mib: size,
            ..PairResult::default()
        })
        .collect();
    let find = |name: &str, size: &str| {
        pairs
            .iter()
            .position(|&(v, s)| o.vmms[v].name == name && s.to_string() == size)
    };
    let mut log: Option<(usize, u32, Vec<String>)> = None;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some((i, round, lines)) = log.as_mut() {
            if line.starts_with(LOG_END) {
                let (i, round, lines) = (*i, *round, std::mem::take(lines));
                log = None;
                if let Some(r) = results[i].restores.iter_mut().find(|r| r.round == round) {
                    r.to_running_ms = to_running(&lines);
                    if r.error.is_none() && r.to_running_ms.is_none() {
                        r.error = Some("no T0 or tick line in the VMM's output".into());
                    }
                    if r.error.is_some() {
                        r.to_running_ms = None;
                    }
                    r.log = lines;
                }
            } else {
                lines.push(line.to_string());
            }
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(&tag), Some(i)) = (
            f.first(),
            f.get(1).zip(f.get(2)).and_then(|(n, s)| find(n, s)),
        ) else {
            continue;
        };
        match tag {
            CREATE_TAG => {
                // CREATE NAME SIZE I CODE SECS MEM_SIZE MEM_BLOCKS STATE_SIZE
                let num = |k: usize| f.get(k).and_then(|x| x.parse::<u64>().ok());
                let ms = f.get(4).zip(f.get(5)).and_then(|(c, s)| curl_ms(c, s));
                match (ms, num(6), num(7), num(8)) {
                    (Some(ms), Some(mem), Some(blocks), Some(state)) => {
                        results[i].creates.push(Create {
                            ms,
                            mem_bytes: mem,
                            mem_allocated: blocks * 512,
                            state_bytes: state,
                        })
                    }
                    _ => return Err(format!("bad create line from L1: {line:?}")),
                }
            }
            SNAPPED_TAG => {
                let why = f[3..].join(" ");
                if why != "ok" {
                    results[i].snap_error = Some(why);
                }
            }
            RESTORE_TAG => {
                // RESTORE NAME SIZE ROUND CODE SECS WHY...
                let round = f.get(3).and_then(|r| r.parse().ok()).unwrap_or(u32::MAX);
                let why = f.get(6..).map(|w| w.join(" ")).unwrap_or_default();
                results[i].restores.push(Restore {
                    round,
                    load_ms: f.get(4).zip(f.get(5)).and_then(|(c, s)| curl_ms(c, s)),
                    error: (why != "ok").then_some(why),
                    ..Restore::default()
                });
            }
            LOG_BEGIN => {
                let round = f.get(3).and_then(|r| r.parse().ok()).unwrap_or(u32::MAX);
                log = Some((i, round, Vec::new()));
            }
            _ => {}
        }
    }
    for r in &results {
        let seen = r.snap_error.is_some() || !r.creates.is_empty();
        if !seen || r.restores.len() != o.rounds as usize {
            return Err(format!(
                "{} {} MiB: {} creates and {} of {} restores came back from L1\n{}",
                r.vmm,
                r.size_mib,
                r.creates.len(),
                r.restores.len(),
                o.rounds,
                testbed::console_tail(console)
            ));
        }
    }
    Ok(results)
}

/// Median and extremes of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// The median (mean of the middle two for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Summary {
    /// `None` without samples.
    pub fn of(v: &[f64]) -> Option<Summary> {
        if v.is_empty() || v.iter().any(|x| x.is_nan()) {
            return None;
        }
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            n,
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        let v = |n: &str| Vmm {
            name: n.into(),
            command: format!("/{n}"),
            files: vec![],
        };
        Options {
            vmms: vec![v("ferrovm"), v("firecracker")],
            sizes_mib: vec![256, 2048],
            rounds: 2,
            creates: 3,
        }
    }

    #[test]
    fn script_boots_each_pair_once_and_rotates_restores() {
        let s = script(&opts());
        let snaps: Vec<&str> = s.lines().filter(|l| l.starts_with("snap ")).collect();
        assert_eq!(
            snaps,
            [
                "snap ferrovm 256 '/ferrovm' 3",
                "snap firecracker 256 '/firecracker' 3",
                "snap ferrovm 2048 '/ferrovm' 3",
                "snap firecracker 2048 '/firecracker' 3",
            ]
        );
        let restores: Vec<&str> = s.lines().filter(|l| l.starts_with("restore ")).collect();
        assert_eq!(restores.len(), 8);
        assert_eq!(restores[0], "restore ferrovm 256 '/ferrovm' 0");
        assert_eq!(restores[4], "restore firecracker 256 '/firecracker' 1");
        assert!(s.contains(r#"\"resume_vm\": true"#) && s.contains(BOOT_ARGS));
    }

    #[test]
    fn parses_creates_and_restores() {
        let mut o = opts();
        o.sizes_mib = vec![256];
        o.rounds = 1;
        let console = format!(
            "{CREATE_TAG} ferrovm 256 1 204 0.500000 268435456 131072 20000\n\
             {CREATE_TAG} ferrovm 256 2 204 0.700000 268435456 131072 20000\n\
             {SNAPPED_TAG} ferrovm 256 ok\n\
             {SNAPPED_TAG} firecracker 256 PUT /snapshot/create answered: 400\n\
             {RESTORE_TAG} ferrovm 256 0 204 0.100000 ok\n\
             {LOG_BEGIN} ferrovm 256 0\n\
             100.000000 {T0_TAG} ferrovm 256 0\n\
             100.250000 T 4711\n\
             100.252000 T 4712\n\
             {LOG_END} ferrovm 256 0\n\
             {RESTORE_TAG} firecracker 256 0 - - no snapshot to restore\n"
        );
        let r = parse(&console, &o).unwrap();
        assert_eq!(r[0].create_ms(), [500.0, 700.0]);
        assert_eq!(r[0].creates[0].mem_allocated, 64 << 20);
        assert_eq!(r[0].load_ms(), [100.0]);
        assert_eq!(r[0].to_running_ms(), [250.0]);
        assert!(r[1].snap_error.as_deref().unwrap().contains("400"));
        assert_eq!(
            r[1].restores[0].error.as_deref(),
            Some("no snapshot to restore")
        );
        assert!(r[1].to_running_ms().is_empty());
        assert!(parse("nothing", &o).is_err());
    }

    #[test]
    fn summary_medians() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (4, 2.5, 1.0, 10.0));
        assert!(Summary::of(&[]).is_none());
    }
}
