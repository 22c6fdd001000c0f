//! Running L1: assemble the per-job initramfs, start QEMU TCG, collect the console,
//! enforce the timeout.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::artifacts::{write_atomic_with, HostArtifacts, L1Base};
use crate::cpio::{add_host_file, CpioWriter};
use crate::error::{io_err, Error, Result};
use crate::job::{FileSource, Job, JobOutput, L1_READY_MARKER, STATUS_MARKER};

/// L1 kernel command line.
/// `nohz=off`: a periodic tick in L1, so a timer wake-up lost by QEMU TCG's emulation
/// cannot leave L1 idle for good (seen: L1 stalling right after an L2 powered off).
/// `mitigations=off`: see [`crate::guest::NESTED_GUEST_ARGS`].
/// `transparent_hugepage=never`: L1's KVM then never remaps an L2's memory under it when
/// khugepaged collapses pages of a VMM's guest RAM (ferrovm and QEMU ask for huge pages);
/// with THP on, L2 guests died of triple faults in about one run in four under two queue
/// pairs of network traffic (and once in a full suite with mitigations=off), with it off
/// in none of 7 runs (QEMU TCG's emulated nested paging is the suspect; not proven).
pub const L1_CMDLINE: &str =
    "console=ttyS0 panic=-1 quiet nohz=off mitigations=off transparent_hugepage=never";
/// How often the runner checks QEMU and the clock.
const POLL: Duration = Duration::from_millis(20);
/// How long QEMU may take to exit after L1 printed its status.
const POWEROFF_GRACE: Duration = Duration::from_secs(10);

static JOB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The outer QEMU command line for L1 (TCG with SVM and NPT exposed).
pub fn l1_qemu_args(
    base: &L1Base,
    initrd: &Path,
    mem_mib: u32,
    cpus: u32,
    extra_cmdline: &str,
) -> Vec<String> {
    [
        "-M",
        "microvm,x-option-roms=off,rtc=off",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "EPYC,+svm,+npt",
        "-nographic",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        "stdio",
    ]
    .into_iter()
    .map(String::from)
    .chain([
        "-m".into(),
        mem_mib.to_string(),
        "-smp".into(),
        cpus.to_string(),
        "-kernel".into(),
        base.vmlinux.to_string_lossy().into_owned(),
        "-initrd".into(),
        initrd.to_string_lossy().into_owned(),
        "-append".into(),
        format!("{L1_CMDLINE} {extra_cmdline}")
            .trim_end()
            .to_string(),
    ])
    .collect()
}

/// Writes `base + job` as one initrd file into `dir`.
pub fn build_initrd(base: &L1Base, job: &Job, dir: &Path) -> Result<PathBuf> {
    job.validate()?;
    let initrd = dir.join("initrd.cpio");
    write_atomic_with(&initrd, |w| {
        let mut base_file = File::open(&base.base_cpio)?;
        io::copy(&mut base_file, w)?;
        let mut c = CpioWriter::new(w);
        for f in &job.files {
            match &f.source {
                FileSource::Host(p) => add_host_file(&mut c, p, &f.l1_path, f.mode)?,
                FileSource::Bytes(b) => c.file(&f.l1_path, f.mode, b)?,
            }
        }
        c.file("job.sh", 0o755, job.script.as_bytes())?;
        c.finish()?;
        Ok(())
    })?;
    Ok(initrd)
}

/// Runs `job` in a fresh L1 under `qemu` and waits for its verdict.
pub fn run_job(
    host: &HostArtifacts,
    base: &L1Base,
    cache_root: &Path,
    job: &Job,
) -> Result<JobOutput> {
    let n = JOB_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = cache_root
        .join("jobs")
        .join(format!("{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).map_err(io_err("create job directory", &dir))?;
    let result =
        build_initrd(base, job, &dir).and_then(|initrd| run_qemu(host, base, &initrd, job));
    if let Err(e) = fs::remove_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove job directory");
    }
    result
}

fn run_qemu(host: &HostArtifacts, base: &L1Base, initrd: &Path, job: &Job) -> Result<JobOutput> {
    let qemu = host.qemu.as_path();
    let args = l1_qemu_args(
        base,
        initrd,
        job.mem_mib,
        job.cpus,
        &host.l1_timing_params(),
    );
    tracing::debug!(qemu = %qemu.display(), ?args, "starting L1");
    let start = Instant::now();
    let mut cmd = Command::new(qemu);
    cmd.args(&args);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl,
    // which is async-signal-safe; it makes the kernel kill QEMU if our thread dies, so
    // an aborted test leaves no TCG QEMU spinning.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: qemu.to_path_buf(),
            source,
        })?;
    let console = Arc::new(Mutex::new(Console::default()));
    let stdout = child
        .stdout
        .take()
        .map(|s| spawn_reader(s, Arc::clone(&console), start, true));
    let stderr_buf = Arc::new(Mutex::new(Console::default()));
    let stderr = child
        .stderr
        .take()
        .map(|s| spawn_reader(s, Arc::clone(&stderr_buf), start, false));

    let outcome = supervise(&mut child, &console, job.timeout, start);
    // Readers end when QEMU's pipes close (QEMU has exited or was killed).
    for h in [stdout, stderr].into_iter().flatten() {
        let _ = h.join();
    }
    let wall = start.elapsed();
    let (text, ready_at) = {
        let c = lock(&console);
        (c.text(), c.ready_at)
    };
    let stderr_text = lock(&stderr_buf).text();
    let exit = match outcome {
        Outcome::TimedOut => {
            return Err(Error::Timeout {
                after: job.timeout,
                console: text,
            })
        }
        Outcome::Exited(s) => s,
    };
    let Some(status) = parse_status(&text) else {
        return Err(Error::NoVerdict {
            exit,
            console: text,
            stderr: stderr_text,
        });
    };
    let l1_kvm = text
        .lines()
        .find(|l| l.contains(L1_READY_MARKER))
        .is_some_and(|l| l.contains("kvm=1"));
    Ok(JobOutput {
        console: text,
        status,
        l1_kvm,
        l1_boot: ready_at,
        wall,
    })
}

enum Outcome {
    Exited(String),
    TimedOut,
}

fn supervise(
    child: &mut Child,
    console: &Mutex<Console>,
    timeout: Duration,
    start: Instant,
) -> Outcome {
    let mut status_seen_at: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Outcome::Exited(s.to_string()),
            Ok(None) => {}
            Err(e) => return Outcome::Exited(format!("wait failed: {e}")),
        }
        if status_seen_at.is_none() && lock(console).status_seen {
            status_seen_at = Some(Instant::now());
        }
        if let Some(t) = status_seen_at {
            if t.elapsed() > POWEROFF_GRACE {
                tracing::warn!("L1 printed its status but did not power off; killing QEMU");
                kill(child);
                return Outcome::Exited("killed after status (poweroff hung)".into());
            }
        } else if start.elapsed() > timeout {
            kill(child);
            return Outcome::TimedOut;
        }
        thread::sleep(POLL);
    }
}

fn kill(child: &mut Child) {
    if let Err(e) = child.kill() {
        tracing::warn!(error = %e, "killing QEMU failed");
    }
    let _ = child.wait();
}

/// Console bytes plus what the supervisor needs to know early.
#[derive(Default)]
struct Console {
    bytes: Vec<u8>,
    ready_at: Option<Duration>,
    status_seen: bool,
    line: Vec<u8>,
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).replace('\r', "")
    }
}

fn lock(m: &Mutex<Console>) -> std::sync::MutexGuard<'_, Console> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawn_reader(
    mut src: impl Read + Send + 'static,
    sink: Arc<Mutex<Console>>,
    start: Instant,
    is_console: bool,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut c = lock(&sink);
            c.bytes.extend_from_slice(&buf[..n]);
            for &b in &buf[..n] {
                if b != b'\n' {
                    c.line.push(b);
                    continue;
                }
                let line = String::from_utf8_lossy(&c.line)
                    .trim_end_matches('\r')
                    .to_string();
                c.line.clear();
                if is_console {
                    tracing::info!(target: "testbed::console", "{line}");
                    if c.ready_at.is_none() && line.contains(L1_READY_MARKER) {
                        c.ready_at = Some(start.elapsed());
                    }
                    if line.contains(STATUS_MARKER) {
                        c.status_seen = true;
                    }
                } else {
                    tracing::debug!(target: "testbed::qemu_stderr", "{line}");
                }
            }
        }
    })
}

/// The last `@@TESTBED-STATUS=<n>@@` on the console.
pub(crate) fn parse_status(console: &str) -> Option<i32> {
    console.lines().rev().find_map(|l| {
        let rest = &l[l.find(STATUS_MARKER)? + STATUS_MARKER.len()..];
        rest.split("@@").next()?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parsing() {
        assert_eq!(parse_status("x\n@@TESTBED-STATUS=0@@\n"), Some(0));
        assert_eq!(
            parse_status("@@TESTBED-STATUS=1@@\nnoise @@TESTBED-STATUS=42@@\n"),
            Some(42)
        );
        assert_eq!(parse_status("@@TESTBED-STATUS=@@"), None);
        assert_eq!(parse_status("nothing"), None);
    }
}
