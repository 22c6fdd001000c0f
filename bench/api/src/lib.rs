//! The API benchmark's parts, shared by the `api-bench` and `kick-floor` binaries:
//!
//! - [`direct`]: ferrovm on this host's `/dev/kvm` with a tiny raw guest: pause/resume
//!   latency as the client sees it and as the VMM reports it (metrics), against the
//!   floor of any pause measured by `kick-floor` in the same run;
//! - [`nested`]: ferrovm (and Firecracker, when given) inside ONE testbed L1, both
//!   configured and started over the API with curl: InstanceStart to the L2 userspace
//!   marker, and pause/resume as curl sees it;
//! - [`guest`] and [`stats`]: the guest program and the summaries both parts print.

pub mod direct;
pub mod guest;
pub mod nested;
pub mod stats;
