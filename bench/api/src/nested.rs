//! Part 2: inside ONE testbed L1, each VMM (ferrovm, and Firecracker when given) is
//! started with only `--api-sock`, configured with curl (`PUT /machine-config`,
//! `PUT /boot-source`: the same ELF kernel, initramfs, command line, 2 vCPUs and 256 MiB
//! for both) and booted with `PUT /actions InstanceStart`. The VMM's output runs through
//! busybox `ts '%.s'` (as in testbed's boot benchmark); the script writes a T0 line into
//! the same `ts` right before InstanceStart, so "InstanceStart to userspace" is the
//! difference of two timestamps taken by one process. The L2 `/init` prints the marker
//! and keeps running; then `cycles` pause/resume pairs are timed by curl
//! (`%{time_total}`), and the VMM is killed. Runs are interleaved, the order rotated
//! every round.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testbed::{
    binary_with_libs, default_l2_init, Job, JobFile, Testbed, L2_INITRD, L2_KERNEL, L2_MARKER,
};

/// Boot arguments of both VMMs (Firecracker's recommended ones, `quiet`).
/// With testbed::guest::NESTED_GUEST_ARGS (every VMM compared gets the same line).
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet mitigations=off";
/// L2 vCPUs.
pub const L2_VCPUS: u32 = 2;
/// L2 memory.
pub const L2_MEM_MIB: u32 = 256;
/// Where curl is on the host (Debian package `curl`) and in L1.
pub const CURL: &str = "/usr/bin/curl";
/// Limit for the L2 marker after InstanceStart, in seconds.
const MARKER_TIMEOUT_S: u32 = 90;
/// Limit for one curl request, in seconds.
const CURL_TIMEOUT_S: u32 = 10;
/// Guest run time between a resume and the next pause.
const RUN_GAP_S: &str = "0.2";

const T0_TAG: &str = "@@API-T0";
const START_TAG: &str = "@@API-START";
const CYCLE_TAG: &str = "@@API-CYCLE";
const RUN_TAG: &str = "@@API-RUN";
const LOG_BEGIN: &str = "@@API-LOG-BEGIN";
const LOG_END: &str = "@@API-LOG-END";

/// A VMM started in L1 as `COMMAND --api-sock SOCK`.
#[derive(Debug, Clone)]
pub struct NestedVmm {
    /// Short name without spaces.
    pub name: String,
    /// The command line before `--api-sock`.
    pub command: String,
    /// Files it needs in L1.
    pub files: Vec<JobFile>,
}

impl NestedVmm {
    /// ferrovm at `/ferrovm`, waiting to be configured over the API.
    pub fn ferrovm(host: &Path) -> testbed::Result<NestedVmm> {
        Ok(NestedVmm {
            name: "ferrovm".into(),
            command: "/ferrovm run".into(),
            files: binary_with_libs(host, "/ferrovm")?,
        })
    }

    /// Firecracker at `/firecracker`. Its logger (stdout by default, level Info: lines
    /// per API request, and at Warning a line per guest access to an unclaimed port,
    /// dozens in a boot) is set to Error, so its stdout carries the guest console as
    /// ferrovm's does and it pays for no log lines ferrovm does not write.
    pub fn firecracker(host: &Path) -> testbed::Result<NestedVmm> {
        Ok(NestedVmm {
            name: "firecracker".into(),
            command: "/firecracker --level Error".into(),
            files: binary_with_libs(host, "/firecracker")?,
        })
    }
}

/// What part 2 runs.
#[derive(Debug, Clone)]
pub struct NestedOptions {
    /// The VMMs, the first one (ferrovm) is the numerator of the ratios.
    pub vmms: Vec<NestedVmm>,
    /// Boots per VMM.
    pub rounds: u32,
    /// Pause/resume pairs per boot.
    pub cycles: u32,
}

/// One boot of one VMM.
#[derive(Debug, Clone, Default)]
pub struct NestedRun {
    /// Round number.
    pub round: u32,
    /// InstanceStart to the L2 marker, ms.
    pub boot_ms: Option<f64>,
    /// How long the InstanceStart request took (curl), ms.
    pub start_request_ms: Option<f64>,
    /// curl's time for `PATCH /vm` Paused, µs.
    pub pause_us: Vec<f64>,
    /// curl's time for `PATCH /vm` Resumed, µs.
    pub resume_us: Vec<f64>,
    /// Why the run failed (`None`: it went through).
    pub error: Option<String>,
    /// The VMM's timestamped output (guest console).
    pub log: Vec<String>,
}

/// All boots of one VMM.
#[derive(Debug, Clone)]
pub struct NestedResult {
    /// The VMM's name.
    pub name: String,
    /// Its boots, in round order.
    pub runs: Vec<NestedRun>,
}

impl NestedResult {
    /// Boot times of the runs that booted, ms.
    pub fn boots(&self) -> Vec<f64> {
        self.runs.iter().filter_map(|r| r.boot_ms).collect()
    }

    /// InstanceStart request times, ms.
    pub fn start_requests(&self) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| r.start_request_ms)
            .collect()
    }

    /// All pause samples, µs.
    pub fn pauses(&self) -> Vec<f64> {
        self.runs.iter().flat_map(|r| r.pause_us.clone()).collect()
    }

    /// All resume samples, µs.
    pub fn resumes(&self) -> Vec<f64> {
        self.runs.iter().flat_map(|r| r.resume_us.clone()).collect()
    }

    /// The runs that failed.
    pub fn failures(&self) -> impl Iterator<Item = &NestedRun> {
        self.runs.iter().filter(|r| r.error.is_some())
    }
}

/// Part 2's outcome.
#[derive(Debug, Clone)]
pub struct NestedReport {
    /// One per VMM, in the order of [`NestedOptions::vmms`].
    pub results: Vec<NestedResult>,
    /// L1 boot (host wall time to the job), if seen.
    pub l1_boot: Option<Duration>,
    /// The whole L1 run.
    pub wall: Duration,
    /// L1's vCPUs.
    pub l1_cpus: u32,
}

/// The L2 `/init` body: the marker, then stay up for the pause/resume part.
pub fn l2_init() -> String {
    format!("{}\nwhile :; do sleep 1; done", default_l2_init())
}

/// How long a VMM may live in L1 before `timeout -s KILL` ends it.
fn vmm_limit_s(cycles: u32) -> u32 {
    // Start, three configuration requests, the boot, and the cycles (two requests and a
    // gap each), all with room to spare.
    30 + MARKER_TIMEOUT_S + cycles * 3
}

/// The L1 job script.
pub fn script(o: &NestedOptions) -> String {
    let limit = vmm_limit_s(o.cycles);
    let machine =
        format!(r#"{{"vcpu_count": {L2_VCPUS}, "mem_size_mib": {L2_MEM_MIB}, "smt": false}}"#);
    let boot = format!(
        r#"{{"kernel_image_path": "{L2_KERNEL}", "initrd_path": "{L2_INITRD}", "boot_args": "{BOOT_ARGS}"}}"#
    );
    let mut s = format!(
        r#"set -u
M={cycles}
# api SOCK METHOD PATH BODY: prints "HTTP_CODE TIME_TOTAL"; the body of the answer is in /tmp/api.out
api() {{
    curl -sS --max-time {CURL_TIMEOUT_S} -o /tmp/api.out -w '%{{http_code}} %{{time_total}}' \
        --unix-socket "$1" -X "$2" -H 'Content-Type: application/json' -H 'Accept: application/json' \
        "http://localhost$3" -d "$4" 2>/tmp/api.err || echo " curl-failed $(cat /tmp/api.err)"
}}
# ok WHAT REPLY: sets err unless REPLY is a 204
ok() {{
    case "$2" in
    "204 "*) ;;
    *) err="$1 answered: $2 $(cat /tmp/api.out 2>/dev/null)" ;;
    esac
}}
run_one() {{
    name=$1; r=$2; cmd=$3
    sock=/tmp/$name.sock; log=/tmp/$name-$r.log; raw=/tmp/$name-$r.raw; fifo=/tmp/$name-$r.fifo
    rm -f "$sock" "$fifo" "$log" "$raw"
    mkfifo "$fifo"
    # ts stamps each line as it reads it but buffers its output to a file; the unbuffered
    # tee copy is what the marker wait below reads.
    tee "$raw" <"$fifo" | ts '%.s' >"$log" &
    tsp=$!
    exec 3>"$fifo"
    timeout -s KILL {limit} $cmd --api-sock "$sock" </dev/null >&3 2>&1 &
    vp=$!
    err=
    i=0
    while [ ! -S "$sock" ]; do
        kill -0 $vp 2>/dev/null || {{ err="the VMM exited before creating its API socket"; break; }}
        i=$((i + 1)); [ $i -gt 200 ] && {{ err="no API socket after 20 s"; break; }}
        sleep 0.1
    done
    [ -z "$err" ] && ok "PUT /machine-config" "$(api "$sock" PUT /machine-config '{machine}')"
    [ -z "$err" ] && ok "PUT /boot-source" "$(api "$sock" PUT /boot-source '{boot}')"
    if [ -z "$err" ]; then
        echo "{T0_TAG} $name $r" >&3
        st=$(api "$sock" PUT /actions '{{"action_type": "InstanceStart"}}')
        ok "PUT /actions InstanceStart" "$st"
        [ -z "$err" ] && echo "{START_TAG} $name $r $st"
    fi
    i=0
    while [ -z "$err" ] && ! grep -q '{L2_MARKER}' "$raw"; do
        kill -0 $vp 2>/dev/null || {{ err="the VMM exited before L2 printed its marker"; break; }}
        i=$((i + 1)); [ $i -gt {marker_polls} ] && {{ err="no L2 marker within {MARKER_TIMEOUT_S} s of InstanceStart"; break; }}
        sleep 0.25
    done
    c=1
    while [ -z "$err" ] && [ $c -le $M ]; do
        sleep {RUN_GAP_S}
        p=$(api "$sock" PATCH /vm '{{"state": "Paused"}}')
        ok "PATCH /vm Paused (cycle $c)" "$p"
        if [ -z "$err" ] && [ $c = 1 ]; then
            curl -sS --max-time {CURL_TIMEOUT_S} --unix-socket "$sock" http://localhost/ 2>&1 | grep -q '"Paused"' \
                || err="GET / does not report Paused after PATCH /vm Paused"
        fi
        [ -z "$err" ] || break
        q=$(api "$sock" PATCH /vm '{{"state": "Resumed"}}')
        ok "PATCH /vm Resumed (cycle $c)" "$q"
        [ -z "$err" ] || break
        echo "{CYCLE_TAG} $name $r $c $p $q"
        c=$((c + 1))
    done
    kill -9 $vp 2>/dev/null
    wait $vp 2>/dev/null
    exec 3>&-
    # tee and ts end at EOF once the VMM (and busybox timeout's watchdog, within 1 s) are gone.
    i=0
    while kill -0 $tsp 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 $tsp 2>/dev/null
    wait $tsp 2>/dev/null
    echo "{LOG_BEGIN} $name $r"
    cat "$log"
    echo "{LOG_END} $name $r"
    echo "{RUN_TAG} $name $r ${{err:-ok}}"
    rm -f "$sock" "$fifo" "$log" "$raw"
}}
"#,
        cycles = o.cycles,
        marker_polls = MARKER_TIMEOUT_S * 4,
    );
    let n = o.vmms.len();
    for r in 0..o.rounds {
        for k in 0..n {
            let v = &o.vmms[(k + r as usize) % n];
            let _ = writeln!(s, "run_one {} {r} '{}'", v.name, v.command);
        }
    }
    s.push_str("exit 0\n");
    s
}

/// Files for L1: the VMMs, curl, the L2 kernel and initramfs, each path once.
fn job_files(tb: &Testbed, o: &NestedOptions) -> testbed::Result<Vec<JobFile>> {
    let mut files = tb.l2_guest_files(&l2_init(), false)?;
    files.extend(binary_with_libs(Path::new(CURL), CURL)?);
    for v in &o.vmms {
        files.extend(v.files.iter().cloned());
    }
    let mut seen = HashSet::new();
    files.retain(|f| seen.insert(f.l1_path.clone()));
    Ok(files)
}

/// Runs part 2 in one L1.
pub fn run(tb: &Testbed, o: &NestedOptions) -> Result<NestedReport, String> {
    if o.vmms.is_empty() || o.rounds == 0 {
        return Err("part 2 needs a VMM and a round".into());
    }
    let files = job_files(tb, o).map_err(|e| e.to_string())?;
    let runs = o.rounds * o.vmms.len() as u32;
    // L1 boot, plus every run at its limit with a margin for the script around it.
    let timeout =
        Duration::from_secs(120 + u64::from(runs) * u64::from(vmm_limit_s(o.cycles) + 15));
    let job = Job::new(script(o)).files(files).timeout(timeout);
    let l1_cpus = job.cpus;
    let out = tb.run(&job).map_err(|e| e.to_string())?;
    if out.status != 0 {
        return Err(format!(
            "the L1 job ended with status {}\n{}",
            out.status,
            testbed::console_tail(&out.console)
        ));
    }
    let results = parse(out.job_console(), o)?;
    Ok(NestedReport {
        results,
        l1_boot: out.l1_boot,
        wall: out.wall,
        l1_cpus,
    })
}

/// `"204 0.001234"` -> 1234.0 µs.
fn curl_us(code: &str, secs: &str) -> Option<f64> {
    (code == "204").then_some(())?;
    secs.parse::<f64>().ok().map(|s| s * 1e6)
}

/// A `ts '%.s'` line: (seconds, rest).
fn stamped(line: &str) -> Option<(f64, &str)> {
    let (t, rest) = line.split_once(' ')?;
    Some((t.parse().ok()?, rest))
}

/// The results from L1's console.
pub fn parse(console: &str, o: &NestedOptions) -> Result<Vec<NestedResult>, String> {
    let mut results: Vec<NestedResult> = o
        .vmms
        .iter()
        .map(|v| NestedResult {
            name: v.name.clone(),
            runs: Vec::new(),
        })
        .collect();
    let index = |name: &str| o.vmms.iter().position(|v| v.name == name);
    // The run being read: (vmm, round) -> its sample so far.
    let mut cur: Option<(usize, NestedRun)> = None;
    let mut in_log = false;
    for line in console.lines() {
        if in_log {
            if line.starts_with(LOG_END) {
                in_log = false;
            } else if let Some((_, run)) = cur.as_mut() {
                run.log.push(line.to_string());
            }
            continue;
        }
        let mut w = line.split_whitespace();
        let tag = w.next().unwrap_or("");
        let (Some(i), Some(round)) = (
            w.next().and_then(index),
            w.next().and_then(|r| r.parse::<u32>().ok()),
        ) else {
            continue;
        };
        let is_cur = matches!(&cur, Some((ci, run)) if *ci == i && run.round == round);
        if !is_cur && (tag == START_TAG || tag == CYCLE_TAG || tag == LOG_BEGIN) {
            if let Some((ci, run)) = cur.take() {
                results[ci].runs.push(run);
            }
            cur = Some((
                i,
                NestedRun {
                    round,
                    ..NestedRun::default()
                },
            ));
        }
        let Some((_, run)) = cur.as_mut() else {
            continue;
        };
        match tag {
            t if t == START_TAG => {
                let f: Vec<&str> = w.collect();
                run.start_request_ms = f
                    .first()
                    .zip(f.get(1))
                    .and_then(|(c, s)| curl_us(c, s))
                    .map(|us| us / 1e3);
            }
            t if t == CYCLE_TAG => {
                let f: Vec<&str> = w.collect();
                // CYCLE NAME R C PCODE PTIME QCODE QTIME
                match (
                    f.get(1).zip(f.get(2)).and_then(|(c, s)| curl_us(c, s)),
                    f.get(3).zip(f.get(4)).and_then(|(c, s)| curl_us(c, s)),
                ) {
                    (Some(p), Some(q)) => {
                        run.pause_us.push(p);
                        run.resume_us.push(q);
                    }
                    _ => return Err(format!("bad cycle line from L1: {line:?}")),
                }
            }
            t if t == LOG_BEGIN => in_log = true,
            t if t == RUN_TAG => {
                let why: Vec<&str> = w.collect();
                let why = why.join(" ");
                if why != "ok" {
                    run.error = Some(why);
                }
                run.boot_ms = boot_ms(&run.log);
                if run.error.is_none() && run.boot_ms.is_none() {
                    run.error = Some("no T0 or L2 marker line in the VMM's output".into());
                }
                if let Some((ci, run)) = cur.take() {
                    results[ci].runs.push(run);
                }
            }
            _ => {}
        }
    }
    if let Some((ci, run)) = cur.take() {
        results[ci].runs.push(run);
    }
    for r in &results {
        if r.runs.len() != o.rounds as usize {
            return Err(format!(
                "{}: {} of {} runs came back from L1\n{}",
                r.name,
                r.runs.len(),
                o.rounds,
                testbed::console_tail(console)
            ));
        }
    }
    Ok(results)
}

/// InstanceStart (T0 line) to the first marker line, ms.
fn boot_ms(log: &[String]) -> Option<f64> {
    let mut t0 = None;
    for l in log {
        let Some((t, rest)) = stamped(l) else {
            continue;
        };
        if rest.starts_with(T0_TAG) {
            t0 = Some(t);
        } else if rest.contains(L2_MARKER) {
            return t0.map(|t0| (t - t0) * 1e3);
        }
    }
    None
}

/// The Firecracker binary named by `FIRECRACKER_BIN` (unset or empty: none).
pub fn firecracker_from_env() -> Option<PathBuf> {
    std::env::var_os("FIRECRACKER_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> NestedOptions {
        let v = |n: &str| NestedVmm {
            name: n.into(),
            command: format!("/{n}"),
            files: vec![],
        };
        NestedOptions {
            vmms: vec![v("ferrovm"), v("firecracker")],
            rounds: 1,
            cycles: 2,
        }
    }

    #[test]
    fn script_rotates_and_names_every_run() {
        let mut o = opts();
        o.rounds = 2;
        let s = script(&o);
        let runs: Vec<&str> = s.lines().filter(|l| l.starts_with("run_one ")).collect();
        assert_eq!(
            runs,
            [
                "run_one ferrovm 0 '/ferrovm'",
                "run_one firecracker 0 '/firecracker'",
                "run_one firecracker 1 '/firecracker'",
                "run_one ferrovm 1 '/ferrovm'",
            ]
        );
        assert!(s.contains(L2_MARKER) && s.contains(BOOT_ARGS));
    }

    #[test]
    fn parses_runs_from_the_console() {
        let console = format!(
            "{START_TAG} ferrovm 0 204 0.250000\n\
             {CYCLE_TAG} ferrovm 0 1 204 0.001500 204 0.000500\n\
             {CYCLE_TAG} ferrovm 0 2 204 0.002500 204 0.000700\n\
             {LOG_BEGIN} ferrovm 0\n\
             100.000000 {T0_TAG} ferrovm 0\n\
             102.500000 {L2_MARKER} 6.1.0\n\
             {LOG_END} ferrovm 0\n\
             {RUN_TAG} ferrovm 0 ok\n\
             {LOG_BEGIN} firecracker 0\n\
             200.000000 {T0_TAG} firecracker 0\n\
             201.000000 Kernel panic\n\
             {LOG_END} firecracker 0\n\
             {RUN_TAG} firecracker 0 the VMM exited before L2 printed its marker\n"
        );
        let r = parse(&console, &opts()).unwrap();
        let f = &r[0].runs[0];
        assert_eq!(f.boot_ms, Some(2500.0));
        assert_eq!(f.start_request_ms, Some(250.0));
        assert_eq!(f.pause_us, [1500.0, 2500.0]);
        assert_eq!(f.resume_us, [500.0, 700.0]);
        assert!(f.error.is_none());
        let c = &r[1].runs[0];
        assert_eq!(c.boot_ms, None);
        assert_eq!(
            c.error.as_deref(),
            Some("the VMM exited before L2 printed its marker")
        );
        assert_eq!(c.log.len(), 2);
        assert_eq!(r[1].failures().count(), 1);
        assert!(parse("nothing", &opts()).is_err());
    }

    #[test]
    fn bad_cycle_lines_are_errors() {
        let console = format!("{CYCLE_TAG} ferrovm 0 1 400 0.1 204 0.1\n");
        assert!(parse(&console, &opts()).is_err());
    }
}
