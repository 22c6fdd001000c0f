//! What runs in L1: files to copy in, a shell script, limits; and what comes back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::libs::shared_libraries;

/// L1 console marker printed once `/dev/kvm` is checked, before the job starts.
pub const L1_READY_MARKER: &str = "@@TESTBED-L1-READY";
/// L1 console marker carrying the job's exit status: `@@TESTBED-STATUS=<n>@@`.
pub const STATUS_MARKER: &str = "@@TESTBED-STATUS=";

/// Default L1 memory.
pub const DEFAULT_MEM_MIB: u32 = 2048;
/// Default L1 vCPUs: one. With two (multi-threaded TCG) on this 2-core host, shared
/// with other work, L1 locked up (both CPUs in soft lockup, stuck for minutes) during an
/// 8-boot benchmark; with one, L2 boots were as fast (~9 s) and L1 uses one host core.
pub const DEFAULT_CPUS: u32 = 1;
/// Default job timeout (L1 boot included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a job file's bytes come from.
#[derive(Debug, Clone)]
pub enum FileSource {
    /// A host file (symlinks followed).
    Host(PathBuf),
    /// Bytes held in memory.
    Bytes(Vec<u8>),
}

/// One file copied into L1's root file system.
#[derive(Debug, Clone)]
pub struct JobFile {
    pub source: FileSource,
    /// Absolute path inside L1.
    pub l1_path: String,
    /// Permission bits (e.g. 0o755).
    pub mode: u32,
}

impl JobFile {
    /// A host file placed at `l1_path`.
    pub fn host(host: impl Into<PathBuf>, l1_path: impl Into<String>, mode: u32) -> Self {
        JobFile {
            source: FileSource::Host(host.into()),
            l1_path: l1_path.into(),
            mode,
        }
    }

    /// In-memory bytes placed at `l1_path`.
    pub fn bytes(data: impl Into<Vec<u8>>, l1_path: impl Into<String>, mode: u32) -> Self {
        JobFile {
            source: FileSource::Bytes(data.into()),
            l1_path: l1_path.into(),
            mode,
        }
    }
}

/// A host binary at `l1_path` plus every shared library it needs (found with `ldd`) at
/// the same absolute paths as on the host, so it runs unchanged in L1.
pub fn binary_with_libs(host: &Path, l1_path: &str) -> Result<Vec<JobFile>> {
    let mut files = vec![JobFile::host(host, l1_path, 0o755)];
    for lib in shared_libraries(host)? {
        let p = lib.to_string_lossy().into_owned();
        files.push(JobFile::host(lib, p, 0o755));
    }
    Ok(files)
}

/// A job for L1: a `sh` script (run as `/job.sh` from `/tmp`, stdin `/dev/null`) and the
/// files it needs. Its exit status comes back as [`JobOutput::status`].
#[derive(Debug, Clone)]
pub struct Job {
    pub files: Vec<JobFile>,
    pub script: String,
    /// Wall-clock limit for the whole L1 run; QEMU is killed when it passes.
    pub timeout: Duration,
    pub mem_mib: u32,
    pub cpus: u32,
}

impl Job {
    /// A job running `script` with default limits and no extra files.
    pub fn new(script: impl Into<String>) -> Self {
        Job {
            files: Vec::new(),
            script: script.into(),
            timeout: DEFAULT_TIMEOUT,
            mem_mib: DEFAULT_MEM_MIB,
            cpus: DEFAULT_CPUS,
        }
    }

    /// Adds a file.
    pub fn file(mut self, f: JobFile) -> Self {
        self.files.push(f);
        self
    }

    /// Adds files.
    pub fn files(mut self, f: impl IntoIterator<Item = JobFile>) -> Self {
        self.files.extend(f);
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sets L1 memory in MiB.
    pub fn mem_mib(mut self, m: u32) -> Self {
        self.mem_mib = m;
        self
    }

    /// Sets the L1 vCPU count.
    pub fn cpus(mut self, c: u32) -> Self {
        self.cpus = c;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        for f in &self.files {
            if !f.l1_path.starts_with('/') || f.l1_path.split('/').any(|p| p == "..") {
                return Err(Error::BadJob(format!(
                    "L1 path {:?} must be absolute without \"..\"",
                    f.l1_path
                )));
            }
            if f.l1_path == "/init" || f.l1_path == "/job.sh" || f.l1_path.starts_with("/testbed/")
            {
                return Err(Error::BadJob(format!(
                    "L1 path {:?} is reserved by the testbed",
                    f.l1_path
                )));
            }
        }
        if self.mem_mib < 256 || self.cpus == 0 {
            return Err(Error::BadJob(format!(
                "{} MiB / {} vCPUs is too small for L1",
                self.mem_mib, self.cpus
            )));
        }
        Ok(())
    }
}

/// What an L1 run gave back.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// L1's serial console (UTF-8, lossy; `\r` removed).
    pub console: String,
    /// The job script's exit status.
    pub status: i32,
    /// Whether `/dev/kvm` existed in L1 once the modules were loaded.
    pub l1_kvm: bool,
    /// Host wall time from QEMU start to L1's ready marker (L1 boot + module loading).
    pub l1_boot: Option<Duration>,
    /// Host wall time from QEMU start to QEMU exit.
    pub wall: Duration,
}

impl JobOutput {
    /// Whether the job exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// The console lines the job printed (between L1's ready and status markers).
    pub fn job_console(&self) -> &str {
        let start = self
            .console
            .find(L1_READY_MARKER)
            .and_then(|i| self.console[i..].find('\n').map(|j| i + j + 1))
            .unwrap_or(0);
        let end = self.console[start..]
            .rfind(STATUS_MARKER)
            .map_or(self.console.len(), |i| start + i);
        &self.console[start..end]
    }
}
