//! What the side-by-side benchmark programs (bench/net-io, bench/blk-io, bench/vsock)
//! share outside L1: finding their sibling binaries, checking what the ferrovm they found
//! can do, and their log set-up.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `name` in the directory of the running program (cargo puts the workspace's binaries
/// side by side in target/x86_64-unknown-linux-gnu/release).
pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(name));
    exe.parent().unwrap_or(Path::new(".")).join(name)
}

/// Whether `ferrovm run --help` of this binary lists `option` (e.g. "--net"): a stale
/// build without the feature under test is told apart from a failing one.
pub fn ferrovm_run_has(bin: &Path, option: &str) -> bool {
    Command::new(bin)
        .args(["run", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(option))
}

/// Logs to stderr: warnings, and with `verbose` L1's console as it arrives;
/// `RUST_LOG` overrides.
pub fn init_logging(verbose: bool) {
    let filter = if verbose {
        "warn,testbed::console=info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_is_beside_this_program_and_a_missing_ferrovm_has_nothing() {
        let me = std::env::current_exe().unwrap();
        assert_eq!(sibling("ferrovm").parent(), me.parent());
        assert!(!ferrovm_run_has(Path::new("/nonexistent/ferrovm"), "--net"));
    }
}
