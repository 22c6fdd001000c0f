//! The nested KVM testbed.
//!
//! The project's machines expose a PVM-backed `/dev/kvm` that cannot boot a stock Linux
//! kernel (see shared/TESTBED.md). The testbed boots a throwaway "L1" Linux (the host's
//! Debian kernel) under QEMU TCG with SVM, loads `kvm_amd` there, and runs a job script
//! in L1 with a real (emulated-hardware) `/dev/kvm`. A VMM under test runs in L1 and
//! boots an "L2" guest; the verdict comes back on L1's serial console.
//!
//! ```no_run
//! use testbed::{Job, Testbed};
//! let tb = Testbed::new()?;                                 // cached L1 kernel + base initramfs
//! let job = Job::new("test -c /dev/kvm && echo has-kvm")
//!     .files(tb.qemu_files()?);                             // QEMU + libs + firmware in L1
//! let out = tb.run(&job)?;
//! assert!(out.success() && out.job_console().contains("has-kvm"));
//! # Ok::<(), testbed::Error>(())
//! ```
//!
//! On hosts with real `vmx`/`svm` ([`host_has_hw_virt`]), tests may use `/dev/kvm`
//! directly instead.

pub mod artifacts;
pub mod bench;
pub mod cpio;
mod error;
pub mod guest;
mod job;
pub mod libs;
pub mod records;
mod run;
pub mod runner;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use artifacts::{cache_root, HostArtifacts, L1Base};
pub use bench::{run_boot_bench, BenchReport, BenchResult, BenchVmm, BootBench, Sample};
pub use error::{tail as console_tail, Error, Result};
pub use guest::{
    default_l2_init, l2_initramfs, qemu_l2_command, virtio_insmod, virtio_modules, L1_QEMU,
    L2_BZIMAGE, L2_CMDLINE, L2_INITRD, L2_KERNEL, L2_MARKER, L2_MEM_MIB,
};
pub use job::{
    binary_with_libs, FileSource, Job, JobFile, JobOutput, DEFAULT_CPUS, DEFAULT_MEM_MIB,
    DEFAULT_TIMEOUT,
};
pub use run::{l1_qemu_args, L1_CMDLINE};

/// Environment variable that turns "testbed unavailable" test failures into skips.
pub const SKIP_ENV: &str = "FERROVM_SKIP_KVM";

/// A ready testbed: host artifacts located and the L1 base image cached.
#[derive(Debug, Clone)]
pub struct Testbed {
    host: HostArtifacts,
    base: L1Base,
    cache_root: PathBuf,
    prepare_time: Duration,
}

impl Testbed {
    /// Locates the host artifacts and prepares (or reuses) the cached L1 base under
    /// [`cache_root`]. Errors name the missing Debian package.
    pub fn new() -> Result<Self> {
        Self::with_cache_root(&cache_root())
    }

    /// Like [`Testbed::new`] with an explicit cache directory.
    pub fn with_cache_root(root: &Path) -> Result<Self> {
        let t = Instant::now();
        let host = HostArtifacts::locate()?;
        let base = artifacts::prepare_base(&host, root)?;
        artifacts::remove_stale_jobs(root);
        let prepare_time = t.elapsed();
        tracing::info!(kernel = %host.kernel_version, cache_hit = base.cache_hit, ?prepare_time, "testbed ready");
        Ok(Testbed {
            host,
            base,
            cache_root: root.to_path_buf(),
            prepare_time,
        })
    }

    /// The host files in use.
    pub fn host(&self) -> &HostArtifacts {
        &self.host
    }

    /// The cached L1 kernel and base initramfs.
    pub fn base(&self) -> &L1Base {
        &self.base
    }

    /// Time [`Testbed::new`] took (small on a cache hit).
    pub fn prepare_time(&self) -> Duration {
        self.prepare_time
    }

    /// Boots L1, runs `job`, powers off; returns the console and the job's status.
    /// A job that exits non-zero is still `Ok` (check [`JobOutput::status`]); a
    /// timeout or an L1 that dies without a status is an `Err`.
    ///
    /// QEMU's TCG emulation of SVM occasionally stalls (seen about twice in 40 runs here:
    /// L1 idles and never finishes). A run that times out or ends without a job status is
    /// therefore tried once more, with a loud message on stderr; a second failure is
    /// returned.
    pub fn run(&self, job: &Job) -> Result<JobOutput> {
        let out = match run::run_job(&self.host, &self.base, &self.cache_root, job) {
            Err(e @ (Error::Timeout { .. } | Error::NoVerdict { .. })) => {
                eprintln!(
                    "*** testbed: L1 run failed ({}); retrying once ***",
                    e.to_string().lines().next().unwrap_or_default()
                );
                run::run_job(&self.host, &self.base, &self.cache_root, job)?
            }
            other => other?,
        };
        tracing::info!(status = out.status, l1_kvm = out.l1_kvm, l1_boot = ?out.l1_boot, wall = ?out.wall, "L1 job done");
        Ok(out)
    }

    /// QEMU with its libraries and microvm firmware, for running QEMU inside L1.
    pub fn qemu_files(&self) -> Result<Vec<JobFile>> {
        guest::qemu_files(&self.host)
    }

    /// L2 kernel ([`L2_KERNEL`], optionally the bzImage at [`L2_BZIMAGE`]) and an L2
    /// busybox initramfs ([`L2_INITRD`]) whose `/init` runs `init_body` then powers off.
    pub fn l2_guest_files(&self, init_body: &str, with_bzimage: bool) -> Result<Vec<JobFile>> {
        guest::l2_guest_files(&self.host, &self.base, init_body, with_bzimage)
    }

    /// An L2 initramfs (bytes) with the given `/init` body and extra files.
    pub fn l2_initramfs(&self, init_body: &str, extra: &[JobFile]) -> Result<Vec<u8>> {
        guest::l2_initramfs(&self.host.busybox, init_body, extra)
    }
}

/// Whether the host CPU advertises hardware virtualization (`vmx` or `svm` in
/// /proc/cpuinfo), i.e. `/dev/kvm` can boot stock kernels without the nested testbed.
pub fn host_has_hw_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| cpuinfo_has_hw_virt(&c))
}

fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Whether `FERROVM_SKIP_KVM=1`: tests that cannot run should skip (loudly) instead of
/// failing.
pub fn skip_requested() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| v == "1")
}

/// In a test: `let tb = testbed::testbed_or_skip!();` gives a [`Testbed`], or, when it
/// cannot be prepared, panics with the reason, unless `FERROVM_SKIP_KVM=1`, in which
/// case it prints a loud SKIPPED line and returns from the test.
#[macro_export]
macro_rules! testbed_or_skip {
    () => {
        match $crate::Testbed::new() {
            Ok(tb) => tb,
            Err(e) if $crate::skip_requested() => {
                eprintln!(
                    "\n*** SKIPPED {}: nested testbed unavailable: {e} ({}=1) ***\n",
                    module_path!(),
                    $crate::SKIP_ENV
                );
                return;
            }
            Err(e) => panic!(
                "nested testbed unavailable: {e}\n(set {}=1 to skip tests that need it)",
                $crate::SKIP_ENV
            ),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_flags() {
        assert!(cpuinfo_has_hw_virt(
            "processor\t: 0\nflags\t\t: fpu vme svm lm\n"
        ));
        assert!(cpuinfo_has_hw_virt("flags\t\t: fpu vmx\n"));
        assert!(!cpuinfo_has_hw_virt("flags\t\t: fpu vmxx lm\nvmx\n"));
    }
}
