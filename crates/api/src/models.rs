//! Request and response bodies, as Firecracker's OpenAPI file (`firecracker.yaml`) defines
//! them, plus ferrovm's own additions (marked as such). Unknown fields are refused
//! (`deny_unknown_fields`), as Firecracker does.

use serde::{Deserialize, Serialize};

/// `GET /`: what this instance is and what it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Always "ferrovm".
    pub app_name: String,
    /// The instance id (`--id`).
    pub id: String,
    /// "Not started", "Running" or "Paused".
    pub state: InstanceState,
    /// ferrovm's version.
    pub vmm_version: String,
}

/// The state reported by `GET /`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configured (or being configured), not booted.
    #[serde(rename = "Not started")]
    NotStarted,
    /// The guest runs.
    Running,
    /// The guest is paused.
    Paused,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The name Firecracker's clients read the version from.
    pub firecracker_version: String,
}

/// Huge pages backing guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Regular pages (ferrovm still asks for transparent huge pages where it helps).
    #[default]
    None,
    /// Transparent huge pages (`madvise(MADV_HUGEPAGE)`).
    Transparent,
    /// hugetlbfs 2 MiB pages (not supported by ferrovm).
    #[serde(rename = "2M")]
    Huge2M,
}

/// Firecracker's static CPU templates (only `None` is supported by ferrovm).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    #[default]
    None,
}

/// `PUT /machine-config` and `GET /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (not supported by ferrovm: must be false).
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking (KVM's dirty log on every memory slot).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages.
    #[serde(default)]
    pub huge_pages: HugePages,
    /// CPU template (only `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
}

/// Firecracker's defaults: 1 vCPU, 128 MiB.
impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
            cpu_template: None,
        }
    }
}

/// `PATCH /machine-config`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// Number of vCPUs.
    #[serde(default)]
    pub vcpu_count: Option<u32>,
    /// Guest memory in MiB.
    #[serde(default)]
    pub mem_size_mib: Option<u64>,
    /// SMT.
    #[serde(default)]
    pub smt: Option<bool>,
    /// Dirty page tracking.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    #[serde(default)]
    pub huge_pages: Option<HugePages>,
    /// CPU template.
    #[serde(default)]
    pub cpu_template: Option<CpuTemplate>,
}

impl MachineConfigUpdate {
    /// `config` with these changes applied.
    pub fn apply(&self, config: &MachineConfig) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(config.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(config.mem_size_mib),
            smt: self.smt.unwrap_or(config.smt),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(config.track_dirty_pages),
            huge_pages: self.huge_pages.unwrap_or(config.huge_pages),
            cpu_template: self.cpu_template.or(config.cpu_template),
        }
    }
}

/// ferrovm's addition to the boot source: the image is a flat binary, not a kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    /// Guest physical load address (and entry point).
    #[serde(default = "RawImage::default_load_addr")]
    pub load_addr: u64,
    /// CPU mode at entry.
    #[serde(default)]
    pub mode: RawMode,
}

impl RawImage {
    fn default_load_addr() -> u64 {
        0x1_0000
    }
}

/// CPU mode at entry of a raw image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RawMode {
    /// 16-bit real mode.
    #[default]
    #[serde(alias = "real")]
    Real,
    /// 64-bit long mode, identity-mapped.
    #[serde(alias = "long")]
    Long,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Kernel image (ELF vmlinux or bzImage), or with `raw`, a flat binary.
    pub kernel_image_path: String,
    /// Initial ramdisk.
    #[serde(default)]
    pub initrd_path: Option<String>,
    /// Kernel command line.
    #[serde(default)]
    pub boot_args: Option<String>,
    /// ferrovm: boot a flat binary instead of a kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawImage>,
}

/// Token bucket of a rate limiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Bucket size in tokens.
    pub size: u64,
    /// Initial extra budget.
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill a full bucket.
    pub refill_time: u64,
}

/// A rate limiter (bandwidth and operations token buckets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes.
    #[serde(default)]
    pub bandwidth: Option<TokenBucket>,
    /// Operations.
    #[serde(default)]
    pub ops: Option<TokenBucket>,
}

/// Host cache use of a drive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Guest flushes are not passed to the host (no FLUSH feature offered).
    #[default]
    Unsafe,
    /// Guest flushes become `fdatasync` on the image.
    Writeback,
}

/// How a drive's requests run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Synchronous calls on the device thread.
    #[default]
    Sync,
    /// io_uring.
    Async,
}

/// ferrovm's addition: the image format of a drive (Firecracker treats every image as raw).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveFormat {
    /// The file is the disk.
    #[default]
    Raw,
    /// A qcow2 image (backing chains included).
    Qcow2,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id (also its serial number in the guest, truncated to 20 bytes).
    pub drive_id: String,
    /// Host path of the image.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// This drive is the root file system (`root=/dev/vda` is added to the command line).
    pub is_root_device: bool,
    /// Root partition by PARTUUID instead of `/dev/vda`.
    #[serde(default)]
    pub partuuid: Option<String>,
    /// The guest cannot write.
    #[serde(default)]
    pub is_read_only: Option<bool>,
    /// Host cache use.
    #[serde(default)]
    pub cache_type: CacheType,
    /// Rate limiter (not supported by ferrovm yet).
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
    /// I/O engine.
    #[serde(default)]
    pub io_engine: Option<IoEngine>,
    /// vhost-user-block socket (not supported by ferrovm).
    #[serde(default)]
    pub socket: Option<String>,
    /// ferrovm: image format (default raw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DriveFormat>,
}

/// `PATCH /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// The drive's id.
    pub drive_id: String,
    /// A new image for the drive; the guest sees its size.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// A new rate limiter (not supported by ferrovm yet).
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id.
    pub iface_id: String,
    /// The host's tap device (created by ferrovm if it does not exist and it may).
    pub host_dev_name: String,
    /// The guest's MAC address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default)]
    pub guest_mac: Option<String>,
    /// The MTU the guest is told (VIRTIO_NET_F_MTU).
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Receive rate limiter.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit rate limiter.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
    /// ferrovm: queue pairs (a multi-queue tap; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
    /// ferrovm: move packets in the kernel (vhost-net).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<bool>,
}

/// `PATCH /network-interfaces/{iface_id}`: new rate limiters while the guest runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// The interface's id.
    pub iface_id: String,
    /// Receive rate limiter.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit rate limiter.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// Full or diff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// The pages written since the last snapshot.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// Full (default) or diff.
    #[serde(default)]
    pub snapshot_type: Option<SnapshotType>,
    /// The state file.
    pub snapshot_path: String,
    /// The memory file.
    pub mem_file_path: String,
}

/// Where a restored guest's memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// A memory file.
    File,
    /// A userfaultfd handler (not supported by ferrovm).
    Uffd,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// File (Uffd is refused).
    pub backend_type: MemoryBackendType,
    /// The memory file.
    pub backend_path: String,
}

/// A tap to use instead of the one saved, for one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface.
    pub iface_id: String,
    /// The new tap.
    pub host_dev_name: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoad {
    /// The state file.
    pub snapshot_path: String,
    /// The memory backend.
    #[serde(default)]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated form of `mem_backend` (File).
    #[serde(default)]
    pub mem_file_path: Option<String>,
    /// Track dirty pages from now on.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    /// Resume the VM once loaded (else it stays paused).
    #[serde(default)]
    pub resume_vm: Option<bool>,
    /// Taps to use instead of the saved ones.
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    /// vsock UDS override (not supported yet).
    #[serde(default)]
    pub vsock_override: Option<serde_json::Value>,
    /// Advance kvmclock by the wall time since the snapshot (not supported).
    #[serde(default)]
    pub clock_realtime: Option<bool>,
    /// Huge pages of the restored memory (only "Snapshot"/"None").
    #[serde(default)]
    pub huge_pages: Option<String>,
}

/// `PUT /entropy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    /// Rate limiter (not supported by ferrovm yet).
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAction {
    /// What to do.
    pub action_type: ActionType,
}

/// The actions of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Write the metrics now.
    FlushMetrics,
    /// Boot the configured VM.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's keyboard.
    SendCtrlAltDel,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateUpdate {
    /// The state wanted.
    pub state: VmState,
}

/// Run state asked for by `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop every vCPU and device.
    Paused,
    /// Continue.
    Resumed,
}

/// Log levels of `PUT /logger` (case-insensitive on input).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub enum LogLevel {
    Error,
    Warning,
    #[default]
    Info,
    Debug,
    Trace,
    Off,
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warning" | "warn" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            "off" => LogLevel::Off,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "unknown log level {s:?}: expected Error, Warning, Info, Debug, Trace or Off"
                )))
            }
        })
    }
}

/// `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// File or named pipe for the log.
    #[serde(default)]
    pub log_path: Option<String>,
    /// Level.
    #[serde(default)]
    pub level: Option<LogLevel>,
    /// Print the level on each line.
    #[serde(default)]
    pub show_level: Option<bool>,
    /// Print the file and line of each message.
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    /// Only messages of this module path.
    #[serde(default)]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File or named pipe the metrics lines are written to.
    pub metrics_path: String,
    /// Add the instance id to every line.
    #[serde(default)]
    pub emit_id: Option<bool>,
    /// Operator-defined properties added to every line.
    #[serde(default)]
    pub properties: Option<std::collections::BTreeMap<String, String>>,
}

/// A vsock device (`PUT /vsock`): host-initiated connections go through the Unix socket
/// `uds_path` (`CONNECT <port>\n`), guest-initiated ones to port P reach `uds_path_P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id (3 and up).
    pub guest_cid: u32,
    /// The host side's Unix socket.
    pub uds_path: String,
    /// Deprecated in Firecracker; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// A balloon device (`PUT /balloon`, `GET /balloon`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// Target balloon size, MiB.
    pub amount_mib: u32,
    /// Whether the guest may deflate it under memory pressure.
    pub deflate_on_oom: bool,
    /// Seconds between statistics updates (0: no statistics).
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Free page hinting (not supported: must be false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub free_page_hinting: bool,
    /// Free page reporting: pages the guest frees go back to the host.
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// New target, MiB.
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// New interval, seconds.
    pub stats_polling_interval_s: u16,
}

/// `GET /vm/config` and `--config-file`: the whole configuration, with Firecracker's
/// kebab-case keys. Sections ferrovm does not have yet must be absent, null or empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfig {
    /// Boot source.
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSource>,
    /// Drives.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// Machine configuration.
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    /// Entropy device.
    #[serde(default)]
    pub entropy: Option<Entropy>,
    /// Logger.
    #[serde(default)]
    pub logger: Option<Logger>,
    /// Metrics.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// Network interfaces.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// vsock.
    #[serde(default)]
    pub vsock: Option<Vsock>,
    /// Balloon.
    #[serde(default)]
    pub balloon: Option<Balloon>,
    /// MMDS (not supported: must be null).
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<serde_json::Value>,
    /// CPU configuration (not supported: must be null).
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<serde_json::Value>,
    /// ferrovm's thread placement and seccomp mode (not in Firecracker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// Where ferrovm's threads run and how they are filtered (`--vcpu-affinity`,
/// `--device-affinity`, `--seccomp`), in `GET /vm/config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Host CPU of each vCPU, in order (empty: not pinned).
    #[serde(default)]
    pub vcpu_affinity: Vec<usize>,
    /// Host CPUs of the main, API and device threads (empty: not pinned).
    #[serde(default)]
    pub device_affinity: Vec<usize>,
    /// `on`, `log` or `off`.
    #[serde(default)]
    pub seccomp: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_config_defaults_and_names() {
        let m: MachineConfig =
            serde_json::from_str(r#"{"vcpu_count":2,"mem_size_mib":256}"#).unwrap();
        assert_eq!((m.vcpu_count, m.mem_size_mib, m.smt), (2, 256, false));
        assert_eq!(m.huge_pages, HugePages::None);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["huge_pages"], "None");
        assert!(v.get("cpu_template").is_none());
        let h: HugePages = serde_json::from_str("\"2M\"").unwrap();
        assert_eq!(h, HugePages::Huge2M);
        assert!(serde_json::from_str::<MachineConfig>(r#"{"vcpu_count":1}"#).is_err());
    }

    #[test]
    fn instance_state_strings() {
        assert_eq!(
            serde_json::to_string(&InstanceState::NotStarted).unwrap(),
            "\"Not started\""
        );
        assert_eq!(
            serde_json::to_string(&InstanceState::Paused).unwrap(),
            "\"Paused\""
        );
    }

    #[test]
    fn log_levels_are_case_insensitive() {
        let l: Logger = serde_json::from_str(r#"{"level":"debug"}"#).unwrap();
        assert_eq!(l.level, Some(LogLevel::Debug));
        let l: Logger = serde_json::from_str(r#"{"level":"WARNING"}"#).unwrap();
        assert_eq!(l.level, Some(LogLevel::Warning));
        assert!(serde_json::from_str::<Logger>(r#"{"level":"loud"}"#).is_err());
    }

    #[test]
    fn full_config_uses_kebab_case_keys() {
        let c: FullVmConfig = serde_json::from_str(
            r#"{"boot-source":{"kernel_image_path":"k"},"machine-config":{"vcpu_count":1,"mem_size_mib":64},"drives":[],"network-interfaces":[]}"#,
        )
        .unwrap();
        assert_eq!(c.boot_source.unwrap().kernel_image_path, "k");
        assert!(serde_json::from_str::<FullVmConfig>(r#"{"boot_source":{}}"#).is_err());
    }
}
