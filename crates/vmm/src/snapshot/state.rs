//! What a snapshot file holds: the configuration needed to rebuild the VM, the layout of
//! its memory file, the KVM VM state, every vCPU, and every device.

use std::path::PathBuf;

use devices::legacy::i8042::I8042State;
use devices::legacy::serial::SerialSnapshot;
use devices::virtio::mmio::TransportState;
use serde::{Deserialize, Serialize};

use super::kvm_state::KvmVmState;
use crate::config::{VmConfig, DEFAULT_KVM_PATH};
use crate::drive::{CacheMode, DriveConfig, Engine, Format};
use crate::net::{Bucket, Limits, NetBackendConfig, NetConfig};
use crate::vcpu::state::VcpuState;

/// Who made the snapshot, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// ferrovm's version.
    pub ferrovm_version: String,
    /// Milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The instance id.
    pub instance_id: String,
    /// Full or diff.
    pub diff: bool,
}

/// A drive as saved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedDrive {
    /// The image.
    pub path: PathBuf,
    /// Its format (resolved: never probed on restore).
    pub qcow2: bool,
    /// The guest cannot write.
    pub read_only: bool,
    /// O_DIRECT.
    pub cache_none: bool,
    /// io_uring.
    pub io_uring: bool,
    /// The drive's id.
    pub id: Option<String>,
    /// FLUSH offered.
    pub flush: bool,
    /// The root file system.
    pub root: bool,
    /// Its PARTUUID.
    pub partuuid: Option<String>,
    /// Rate limits.
    pub limits: SavedLimits,
}

/// A token bucket as saved.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedBucket {
    /// Size.
    pub size: u64,
    /// One-time burst.
    pub one_time_burst: u64,
    /// Refill time.
    pub refill_time_ms: u64,
}

/// Rate limits as saved.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedLimits {
    /// Bytes.
    pub bandwidth: Option<SavedBucket>,
    /// Operations.
    pub ops: Option<SavedBucket>,
}

/// A network interface as saved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedNet {
    /// Its id.
    pub id: Option<String>,
    /// The tap (None: user networking, whose forwards are listed).
    pub tap: Option<String>,
    /// User networking forwards, as given (`tcp::8080-:80`).
    pub hostfwd: Vec<String>,
    /// The guest MAC the interface had (a default one too: the guest keeps it).
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: Option<u16>,
    /// Queue pairs.
    pub queues: u16,
    /// vhost-net.
    pub vhost: bool,
    /// Receive limits.
    pub rx: SavedLimits,
    /// Transmit limits.
    pub tx: SavedLimits,
}

/// The configuration a restore rebuilds the VM from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedConfig {
    /// Guest RAM.
    pub mem_size: u64,
    /// vCPUs.
    pub cpus: u32,
    /// A Linux guest (in-kernel irqchip, PIT, ACPI).
    pub linux: bool,
    /// Dirty page tracking.
    pub track_dirty_pages: bool,
    /// Drives.
    pub drives: Vec<SavedDrive>,
    /// The entropy device.
    pub rng: bool,
    /// Network interfaces.
    pub nets: Vec<SavedNet>,
    /// The vsock device: guest CID and the host socket.
    pub vsock: Option<(u32, PathBuf)>,
    /// The balloon (its current target).
    pub balloon: Option<SavedBalloon>,
}

/// The balloon as saved.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedBalloon {
    /// Target, MiB.
    pub amount_mib: u32,
    /// DEFLATE_ON_OOM offered.
    pub deflate_on_oom: bool,
    /// Statistics interval (0: none).
    pub stats_interval_s: u16,
    /// Free page reporting offered.
    pub free_page_reporting: bool,
}

/// One virtio device as saved: its name (for messages and checks) and its transport.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedVirtio {
    /// "blk0", "rng", "net0" ...
    pub name: String,
    /// The transport with its queues.
    pub transport: TransportState,
}

/// A whole snapshot.
#[derive(Serialize, Deserialize)]
pub struct MicrovmState {
    /// Who and when.
    pub info: SnapshotInfo,
    /// How to rebuild the VM.
    pub config: SavedConfig,
    /// The memory file's layout: guest address and size of each region, in file order.
    pub memory: Vec<(u64, u64)>,
    /// The in-kernel devices (`None` without an irqchip: a raw guest).
    pub kvm: Option<KvmVmState>,
    /// Every vCPU.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialSnapshot,
    /// The i8042.
    pub i8042: I8042State,
    /// Every virtio device, in slot order.
    pub virtio: Vec<SavedVirtio>,
}

fn saved_limits(l: &Limits) -> SavedLimits {
    let b = |b: &Option<Bucket>| {
        b.map(|b| SavedBucket {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time_ms: b.refill_time_ms,
        })
    };
    SavedLimits {
        bandwidth: b(&l.bandwidth),
        ops: b(&l.ops),
    }
}

fn limits(l: &SavedLimits) -> Limits {
    let b = |b: &Option<SavedBucket>| {
        b.map(|b| Bucket {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time_ms: b.refill_time_ms,
        })
    };
    Limits {
        bandwidth: b(&l.bandwidth),
        ops: b(&l.ops),
    }
}

impl SavedConfig {
    /// What `config` rebuilds from; `formats` are the drives' resolved formats and
    /// `macs` the interfaces' MACs (defaults included).
    pub fn of(config: &VmConfig, formats: &[Format], macs: &[[u8; 6]]) -> SavedConfig {
        SavedConfig {
            mem_size: config.mem_size,
            cpus: config.cpus,
            linux: config.is_linux(),
            track_dirty_pages: config.track_dirty_pages,
            drives: config
                .drives
                .iter()
                .zip(formats)
                .map(|(d, f)| SavedDrive {
                    path: d.path.clone(),
                    qcow2: *f == Format::Qcow2,
                    read_only: d.read_only,
                    cache_none: d.cache == CacheMode::None,
                    io_uring: d.aio == Engine::IoUring,
                    id: d.id.clone(),
                    flush: d.flush,
                    root: d.root,
                    partuuid: d.partuuid.clone(),
                    limits: saved_limits(&d.limits),
                })
                .collect(),
            rng: config.rng,
            nets: config
                .nets
                .iter()
                .zip(macs)
                .map(|(n, mac)| SavedNet {
                    id: n.id.clone(),
                    tap: match &n.backend {
                        NetBackendConfig::Tap { name } => Some(name.clone()),
                        NetBackendConfig::User { .. } => None,
                    },
                    hostfwd: match &n.backend {
                        NetBackendConfig::User { hostfwd } => {
                            hostfwd.iter().map(crate::net::format_hostfwd).collect()
                        }
                        NetBackendConfig::Tap { .. } => Vec::new(),
                    },
                    mac: *mac,
                    mtu: n.mtu,
                    queues: n.queues,
                    vhost: n.vhost,
                    rx: saved_limits(&n.rx),
                    tx: saved_limits(&n.tx),
                })
                .collect(),
            vsock: config.vsock.as_ref().map(|v| (v.cid, v.uds.clone())),
            balloon: config.balloon.map(|b| SavedBalloon {
                amount_mib: b.amount_mib,
                deflate_on_oom: b.deflate_on_oom,
                stats_interval_s: b.stats_interval_s,
                free_page_reporting: b.free_page_reporting,
            }),
        }
    }

    /// The configuration to rebuild with (no payload: the memory holds the guest), on
    /// `kvm_path`, with `tap_overrides` (interface id -> tap name) applied.
    pub fn to_config(
        &self,
        kvm_path: Option<PathBuf>,
        tap_overrides: &[(String, String)],
    ) -> Result<VmConfig, String> {
        let mut nets = Vec::new();
        for (i, n) in self.nets.iter().enumerate() {
            let id = n.id.clone().unwrap_or_else(|| format!("eth{i}"));
            let tap = tap_overrides
                .iter()
                .find(|(o, _)| *o == id)
                .map(|(_, t)| t.clone())
                .or_else(|| n.tap.clone());
            let backend = match tap {
                Some(name) => NetBackendConfig::Tap { name },
                None => NetBackendConfig::User {
                    hostfwd: n
                        .hostfwd
                        .iter()
                        .map(|h| crate::net::parse_hostfwd(h))
                        .collect::<Result<_, _>>()?,
                },
            };
            nets.push(NetConfig {
                id: n.id.clone(),
                backend,
                mac: Some(n.mac),
                mtu: n.mtu,
                queues: n.queues,
                vhost: n.vhost,
                rx: limits(&n.rx),
                tx: limits(&n.tx),
            });
        }
        for (id, _) in tap_overrides {
            if !self
                .nets
                .iter()
                .enumerate()
                .any(|(i, n)| n.id.clone().unwrap_or_else(|| format!("eth{i}")) == *id)
            {
                return Err(format!(
                    "network_overrides names {id:?}, which the snapshot does not have"
                ));
            }
        }
        Ok(VmConfig {
            kvm_path: kvm_path.unwrap_or_else(|| DEFAULT_KVM_PATH.into()),
            mem_size: self.mem_size,
            cpus: self.cpus,
            payload: None,
            track_dirty_pages: self.track_dirty_pages,
            drives: self
                .drives
                .iter()
                .map(|d| DriveConfig {
                    format: Some(if d.qcow2 { Format::Qcow2 } else { Format::Raw }),
                    read_only: d.read_only,
                    cache: if d.cache_none {
                        CacheMode::None
                    } else {
                        CacheMode::Writeback
                    },
                    aio: if d.io_uring {
                        Engine::IoUring
                    } else {
                        Engine::Thread
                    },
                    id: d.id.clone(),
                    flush: d.flush,
                    root: d.root,
                    partuuid: d.partuuid.clone(),
                    limits: limits(&d.limits),
                    ..DriveConfig::new(&d.path)
                })
                .collect(),
            rng: self.rng,
            nets,
            vsock: self
                .vsock
                .as_ref()
                .map(|(cid, uds)| crate::vsock_balloon::VsockConfig {
                    cid: *cid,
                    uds: uds.clone(),
                }),
            balloon: self.balloon.map(|b| crate::vsock_balloon::BalloonConfig {
                amount_mib: b.amount_mib,
                deflate_on_oom: b.deflate_on_oom,
                stats_interval_s: b.stats_interval_s,
                free_page_reporting: b.free_page_reporting,
            }),
            ..VmConfig::empty()
        })
    }
}
