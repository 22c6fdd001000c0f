//! Part 1: ferrovm on this host's `/dev/kvm` with the tiny raw guest ([`crate::guest`]).
//!
//! Each round runs, in rotated order:
//!
//! - `ferrovm run --raw GUEST --api-sock S`: `cycles` pause/resume pairs through
//!   [`api::client::Client`], timed around each request (what a client sees);
//! - `ferrovm run --config-file F --api-sock S` with metrics configured: the same pairs,
//!   each request followed by `FlushMetrics`, and the VMM's own `latencies_us.pause_vm` /
//!   `resume_vm` read from the metrics file's last line (what the VMM reports);
//! - `kick-floor cycles --samples`: the floor of any pause (signal + `immediate_exit`,
//!   answer over a channel) and of any resume (a channel round trip).

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use api::client::Client;

use crate::guest::{LOAD_ADDR, MEM_MIB, PORT_LOOP};

/// Limit for one API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long ferrovm may take to serve its API with the guest running.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for a whole kick-floor run.
const FLOOR_TIMEOUT: Duration = Duration::from_secs(120);
/// Guest run time between a resume and the next pause, so each pause finds the vCPU in
/// the guest.
const RUN_GAP: Duration = Duration::from_micros(500);

const PAUSE: &str = r#"{"state": "Paused"}"#;
const RESUME: &str = r#"{"state": "Resumed"}"#;
const FLUSH: &str = r#"{"action_type": "FlushMetrics"}"#;

/// What part 1 needs.
#[derive(Debug, Clone)]
pub struct DirectOptions {
    /// The ferrovm binary.
    pub ferrovm: PathBuf,
    /// The kick-floor binary.
    pub kick_floor: PathBuf,
    /// Interleaved rounds.
    pub rounds: u32,
    /// Pause/resume pairs (and kicks) per run.
    pub cycles: u32,
}

/// Samples of part 1, all in microseconds, pooled over the rounds.
#[derive(Debug, Clone, Default)]
pub struct DirectReport {
    /// Client-observed `PATCH /vm` Paused, `--raw` runs.
    pub client_pause: Vec<f64>,
    /// Client-observed `PATCH /vm` Resumed, `--raw` runs.
    pub client_resume: Vec<f64>,
    /// Client-observed pause in the `--config-file` (metrics) runs.
    pub metrics_client_pause: Vec<f64>,
    /// Client-observed resume in the `--config-file` (metrics) runs.
    pub metrics_client_resume: Vec<f64>,
    /// ferrovm's `latencies_us.pause_vm`.
    pub vmm_pause: Vec<f64>,
    /// ferrovm's `latencies_us.resume_vm`.
    pub vmm_resume: Vec<f64>,
    /// kick-floor: signal to "out of KVM_RUN" reported.
    pub floor_kick: Vec<f64>,
    /// kick-floor: "go" to "about to re-enter" reported.
    pub floor_wake: Vec<f64>,
}

/// A ferrovm process serving its API, killed (SIGKILL) when dropped.
struct Ferrovm {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
}

impl Ferrovm {
    /// Starts `ferrovm run ARGS --api-sock SOCK` (output to LOG) and waits until `GET /`
    /// says the VM is running.
    fn start(ferrovm: &Path, args: &[&str], dir: &Path, tag: &str) -> Result<Ferrovm, String> {
        let sock = dir.join(format!("{tag}.sock"));
        let log = dir.join(format!("{tag}.log"));
        let _ = fs::remove_file(&sock);
        let out =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot dup {}: {e}", log.display()))?;
        let child = Command::new(ferrovm)
            .arg("run")
            .args(args)
            .arg("--api-sock")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", ferrovm.display()))?;
        let mut vm = Ferrovm { child, sock, log };
        vm.wait_running()?;
        Ok(vm)
    }

    fn wait_running(&mut self) -> Result<(), String> {
        let t = Instant::now();
        let client = self.client()?;
        let mut last = String::from("no socket yet");
        while t.elapsed() < READY_TIMEOUT {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(self.failure(&format!("ferrovm exited ({st}) before serving its API")));
            }
            if self.sock.exists() {
                match client.request("GET", "/", None) {
                    Ok(r) if r.is_success() && r.json()["state"] == "Running" => return Ok(()),
                    Ok(r) => last = format!("GET / answered {}: {}", r.status, r.body),
                    Err(e) => last = e.to_string(),
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        Err(self.failure(&format!(
            "ferrovm did not report a running VM within {READY_TIMEOUT:?} ({last})"
        )))
    }

    fn client(&self) -> Result<Client, String> {
        Client::new(&self.sock, REQUEST_TIMEOUT).map_err(|e| e.to_string())
    }

    /// `what`, plus the tail of ferrovm's output.
    fn failure(&self, what: &str) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{what}\n--- ferrovm output ({}) ---\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }
}

impl Drop for Ferrovm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.sock);
    }
}

/// Sends one request that must answer 204; returns how long it took, in µs.
fn timed(client: &Client, method: &str, path: &str, body: &str) -> Result<f64, String> {
    let t = Instant::now();
    let reply = client
        .request(method, path, Some(body))
        .map_err(|e| e.to_string())?;
    let us = t.elapsed().as_secs_f64() * 1e6;
    if reply.status != 204 {
        return Err(format!(
            "{method} {path} {body} answered HTTP {}: {}",
            reply.status,
            reply.message()
        ));
    }
    Ok(us)
}

/// Checks (untimed) that `GET /` reports `state`.
fn check_state(client: &Client, state: &str) -> Result<(), String> {
    let r = client
        .request("GET", "/", None)
        .map_err(|e| e.to_string())?;
    if r.json()["state"] != state {
        return Err(format!("GET / says {:?}, expected state {state}", r.body));
    }
    Ok(())
}

/// The metrics file's line count and `latencies_us.KEY` of its last line.
fn read_latency(metrics: &Path, key: &str) -> Result<(usize, f64), String> {
    let f = File::open(metrics).map_err(|e| format!("cannot open {}: {e}", metrics.display()))?;
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    let last = lines
        .last()
        .ok_or_else(|| format!("{} is empty after FlushMetrics", metrics.display()))?;
    let v: serde_json::Value = serde_json::from_str(last)
        .map_err(|e| format!("bad metrics line in {}: {e}: {last}", metrics.display()))?;
    let us = v["latencies_us"][key].as_u64().ok_or_else(|| {
        format!(
            "metrics line in {} has no latencies_us.{key}: {last}",
            metrics.display()
        )
    })?;
    Ok((lines.len(), us as f64))
}

/// `cycles` pause/resume pairs on a `--raw` ferrovm; client latencies in µs.
fn raw_run(
    o: &DirectOptions,
    dir: &Path,
    guest: &Path,
    round: u32,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let guest = guest.to_string_lossy();
    let vm = Ferrovm::start(
        &o.ferrovm,
        &["--raw", &guest, "--mem", &format!("{MEM_MIB}M")],
        dir,
        &format!("raw-{round}"),
    )?;
    let client = vm.client()?;
    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    for c in 0..o.cycles {
        thread::sleep(RUN_GAP);
        pause.push(timed(&client, "PATCH", "/vm", PAUSE).map_err(|e| vm.failure(&e))?);
        if c == 0 {
            check_state(&client, "Paused").map_err(|e| vm.failure(&e))?;
        }
        resume.push(timed(&client, "PATCH", "/vm", RESUME).map_err(|e| vm.failure(&e))?);
    }
    check_state(&client, "Running").map_err(|e| vm.failure(&e))?;
    Ok((pause, resume))
}

/// Samples of one `--config-file` run, in µs.
struct MetricsRun {
    client_pause: Vec<f64>,
    client_resume: Vec<f64>,
    vmm_pause: Vec<f64>,
    vmm_resume: Vec<f64>,
}

/// `cycles` pause/resume pairs on a ferrovm configured with metrics, each followed by
/// `FlushMetrics` and a read of the VMM's latency.
fn metrics_run(
    o: &DirectOptions,
    dir: &Path,
    guest: &Path,
    round: u32,
) -> Result<MetricsRun, String> {
    let metrics = dir.join(format!("metrics-{round}.json"));
    let config = dir.join(format!("vm-{round}.json"));
    let _ = fs::remove_file(&metrics);
    let json = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest.to_string_lossy(),
            "raw": { "mode": "Real", "load_addr": LOAD_ADDR },
        },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": MEM_MIB },
        "metrics": { "metrics_path": metrics.to_string_lossy() },
    });
    fs::write(&config, json.to_string())
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let cfg = config.to_string_lossy();
    let vm = Ferrovm::start(
        &o.ferrovm,
        &["--config-file", &cfg],
        dir,
        &format!("metrics-{round}"),
    )?;
    let client = vm.client()?;
    let mut r = MetricsRun {
        client_pause: Vec::new(),
        client_resume: Vec::new(),
        vmm_pause: Vec::new(),
        vmm_resume: Vec::new(),
    };
    let mut lines = 0;
    let mut flush_and_read = |key: &str| -> Result<f64, String> {
        timed(&client, "PUT", "/actions", FLUSH)?;
        let (n, us) = read_latency(&metrics, key)?;
        if n <= lines {
            return Err(format!(
                "FlushMetrics added no line to {} (still {n})",
                metrics.display()
            ));
        }
        lines = n;
        Ok(us)
    };
    for _ in 0..o.cycles {
        thread::sleep(RUN_GAP);
        let p = timed(&client, "PATCH", "/vm", PAUSE).map_err(|e| vm.failure(&e))?;
        r.client_pause.push(p);
        r.vmm_pause
            .push(flush_and_read("pause_vm").map_err(|e| vm.failure(&e))?);
        let q = timed(&client, "PATCH", "/vm", RESUME).map_err(|e| vm.failure(&e))?;
        r.client_resume.push(q);
        r.vmm_resume
            .push(flush_and_read("resume_vm").map_err(|e| vm.failure(&e))?);
    }
    Ok(r)
}

/// One kick-floor run: (kick, wake) round trips in µs.
fn floor_run(o: &DirectOptions) -> Result<(Vec<f64>, Vec<f64>), String> {
    let mut child = Command::new(&o.kick_floor)
        .arg(o.cycles.to_string())
        .arg("--samples")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", o.kick_floor.display()))?;
    // Bounded: kill it if it outlives FLOOR_TIMEOUT (it should take well under a second).
    let t = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if t.elapsed() > FLOOR_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "kick-floor did not finish within {FLOOR_TIMEOUT:?}"
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for kick-floor: {e}")),
        }
    };
    let out = child
        .wait_with_output()
        .map_err(|e| format!("kick-floor output: {e}"))?;
    if !status.success() {
        return Err(format!(
            "kick-floor failed ({status}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (mut kick, mut wake) = (Vec::new(), Vec::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut w = line.split_whitespace().map(str::parse::<u64>);
        match (w.next(), w.next()) {
            (Some(Ok(k)), Some(Ok(v))) => {
                kick.push(k as f64 / 1e3);
                wake.push(v as f64 / 1e3);
            }
            _ => return Err(format!("kick-floor printed an unexpected line: {line:?}")),
        }
    }
    if kick.len() != o.cycles as usize {
        return Err(format!(
            "kick-floor gave {} samples, expected {}",
            kick.len(),
            o.cycles
        ));
    }
    Ok((kick, wake))
}

/// Runs part 1; `progress` gets one line per finished run.
pub fn run(o: &DirectOptions, mut progress: impl FnMut(&str)) -> Result<DirectReport, String> {
    let dir = std::env::temp_dir().join(format!("api-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = run_in(o, &dir, &mut progress);
    if result.is_ok() {
        let _ = fs::remove_dir_all(&dir);
    }
    result
}

fn median(v: &[f64]) -> f64 {
    crate::stats::Summary::of(v).map_or(f64::NAN, |s| s.median)
}

fn run_in(
    o: &DirectOptions,
    dir: &Path,
    progress: &mut impl FnMut(&str),
) -> Result<DirectReport, String> {
    let guest = dir.join("port-loop.bin");
    fs::write(&guest, PORT_LOOP).map_err(|e| format!("cannot write {}: {e}", guest.display()))?;
    let mut rep = DirectReport::default();
    for round in 0..o.rounds {
        for k in 0..3 {
            match (k + round as usize) % 3 {
                0 => {
                    let (p, q) = raw_run(o, dir, &guest, round)?;
                    progress(&format!(
                        "  round {round}: ferrovm --raw:         pause {:8.1} µs, resume {:8.1} µs (client, median of {})",
                        median(&p),
                        median(&q),
                        p.len()
                    ));
                    rep.client_pause.extend(p);
                    rep.client_resume.extend(q);
                }
                1 => {
                    let m = metrics_run(o, dir, &guest, round)?;
                    progress(&format!(
                        "  round {round}: ferrovm --config-file: pause {:8.1} µs, resume {:8.1} µs (VMM metrics; client {:.1} / {:.1})",
                        median(&m.vmm_pause),
                        median(&m.vmm_resume),
                        median(&m.client_pause),
                        median(&m.client_resume)
                    ));
                    rep.metrics_client_pause.extend(m.client_pause);
                    rep.metrics_client_resume.extend(m.client_resume);
                    rep.vmm_pause.extend(m.vmm_pause);
                    rep.vmm_resume.extend(m.vmm_resume);
                }
                _ => {
                    let (kick, wake) = floor_run(o)?;
                    progress(&format!(
                        "  round {round}: kick-floor:            kick  {:8.1} µs, wake   {:8.1} µs (median of {})",
                        median(&kick),
                        median(&wake),
                        kick.len()
                    ));
                    rep.floor_kick.extend(kick);
                    rep.floor_wake.extend(wake);
                }
            }
        }
    }
    Ok(rep)
}
