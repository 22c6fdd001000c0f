//! The run's thread policy (crate `seccomp`): every thread gets the seccomp allow-list
//! of its kind and, when asked, its host CPUs. Threads started through
//! `seccomp::spawn` (vCPUs, device workers, the API server, the stdin reader) filter
//! themselves; the main thread takes its own list once its first VM runs, since before
//! that it opens whatever the configuration names.

use crate::config::{OnReboot, VmConfig};
use crate::error::VmError;
use crate::net::NetBackendConfig;
use seccomp::{Mode, ThreadKind};

/// Sets the run's filters and placement (before any thread starts) and places the main
/// thread with the device threads.
pub fn configure(config: &VmConfig) -> Result<(), VmError> {
    seccomp::configure(config.seccomp, config.placement.clone())?;
    config
        .placement
        .apply(ThreadKind::Main)
        .map_err(seccomp::Error::from)?;
    if config.seccomp != Mode::Off {
        tracing::info!("seccomp filters: {}", config.seccomp);
    }
    Ok(())
}

/// Whether a reboot of `config` starts programs (passt for user networking): then the
/// main thread cannot take its list, which a new program would inherit.
fn reboot_starts_programs(config: &VmConfig) -> bool {
    config.on_reboot == OnReboot::Restart
        && config
            .nets
            .iter()
            .any(|n| matches!(n.backend, NetBackendConfig::User { .. }))
}

/// Once a VM runs: lets go of the start-up code's pages (`crate::footprint`), then puts
/// the main thread under its list (both no-ops after the first time).
pub fn seal_main(config: &VmConfig) -> Result<(), VmError> {
    crate::footprint::release_startup_code();
    if seccomp::mode() == Mode::Off || seccomp::is_filtered() {
        return Ok(());
    }
    if reboot_starts_programs(config) {
        tracing::warn!(
            "seccomp: the main thread stays unfiltered: a reboot restarts passt, which \
             would inherit its filter (other threads are filtered)"
        );
        return Ok(());
    }
    seccomp::apply(ThreadKind::Main)?;
    Ok(())
}
