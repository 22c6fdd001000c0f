//! Errors of the testbed.

use std::path::PathBuf;
use std::time::Duration;

/// How many console characters an error message quotes (the end of the console).
const CONSOLE_TAIL_CHARS: usize = 4000;

/// Why the testbed could not prepare or run a job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host file the testbed needs is absent.
    #[error("testbed: {what} not found at {path} (install the Debian package `{package}`: scripts/setup.sh does)")]
    MissingArtifact {
        what: &'static str,
        path: PathBuf,
        package: &'static str,
    },
    /// A file operation failed.
    #[error("testbed: {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The host kernel image could not be turned into an ELF vmlinux.
    #[error("testbed: kernel image {path}: {source}")]
    Kernel {
        path: PathBuf,
        #[source]
        source: kernel::Error,
    },
    /// A program could not be started.
    #[error("testbed: cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `ldd` failed or printed something unexpected.
    #[error("testbed: shared libraries of {binary}: {cause}")]
    Ldd { binary: PathBuf, cause: String },
    /// The job description is unusable.
    #[error("testbed: invalid job: {0}")]
    BadJob(String),
    /// L1 did not finish within the job's timeout; QEMU was killed.
    #[error(
        "testbed: L1 job timed out after {after:?}; console tail:\n{}",
        tail(console)
    )]
    Timeout { after: Duration, console: String },
    /// QEMU exited without L1's status marker (L1 crashed or the job killed /init).
    #[error("testbed: L1 ended ({exit}) without a job status; console tail:\n{}\nqemu stderr:\n{stderr}", tail(console))]
    NoVerdict {
        exit: String,
        console: String,
        stderr: String,
    },
    /// A benchmark's output lacked an expected timestamp line.
    #[error("testbed: benchmark {vmm} iteration {iteration}: {cause}")]
    Bench {
        vmm: String,
        iteration: u32,
        cause: String,
    },
}

/// `Result` with the testbed's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The last [`CONSOLE_TAIL_CHARS`] characters of `console`.
pub fn tail(console: &str) -> &str {
    let n = console.chars().count();
    if n <= CONSOLE_TAIL_CHARS {
        return console;
    }
    let skip = console
        .char_indices()
        .nth(n - CONSOLE_TAIL_CHARS)
        .map_or(0, |(i, _)| i);
    &console[skip..]
}

pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
