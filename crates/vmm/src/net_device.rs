//! The network interfaces of one boot, built before the VM exists so that a missing tap,
//! `/dev/net/tun` or passt is reported before the guest starts: each `--net` (or
//! `PUT /network-interfaces`) becomes a virtio-net device over its backends (the tap's
//! queues, or a connection to the passt that ferrovm starts), with a receive and a
//! transmit rate limiter the API can change while the guest runs.

use devices::virtio::net::{self as dnet, Net, NetBackend, Stream, Tap};
use devices::virtio::vhost_net::VhostNet;

use crate::limits::{self, SharedLimiter};
use crate::net::{NetBackendConfig, NetConfig};
use crate::passt::Passt;

/// Why an interface cannot be built (one line: what, and what to do).
#[derive(Debug, thiserror::Error)]
#[error("network interface {id}: {why}")]
pub struct NetSetupError {
    /// The interface (`eth0`, or the API's `iface_id`).
    pub id: String,
    /// What went wrong.
    pub why: String,
}

/// A built interface, ready to be attached.
pub struct NetDevice {
    /// Its id.
    pub id: String,
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// The device.
    pub device: NetKind,
    /// Receive limiter (shared with the device).
    pub rx: SharedLimiter,
    /// Transmit limiter.
    pub tx: SharedLimiter,
    /// passt, for user networking (stopped when dropped).
    pub passt: Option<Passt>,
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("id", &self.id)
            .field("mac", &dnet::format_mac(&self.mac))
            .field("passt", &self.passt)
            .finish()
    }
}

/// Which data path an interface has.
pub enum NetKind {
    /// Packets move through ferrovm's device threads.
    Userspace(Net),
    /// The kernel's vhost-net moves them.
    Vhost(VhostNet),
}

impl NetKind {
    /// The device's name (`net0`).
    pub fn name(&self) -> &str {
        use devices::virtio::VirtioDevice;
        match self {
            NetKind::Userspace(n) => n.name(),
            NetKind::Vhost(v) => v.name(),
        }
    }
}

/// The MAC of interface `index` when none is given: stable for the same tap (or the same
/// user-networking slot), different for different taps, so that VMs on one bridge do not
/// collide.
pub fn default_mac(index: usize, cfg: &NetConfig) -> [u8; 6] {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let key = match &cfg.backend {
        NetBackendConfig::Tap { name } => format!("tap:{name}"),
        NetBackendConfig::User { .. } => format!("user:{index}"),
    };
    dnet::default_mac(CRC.checksum(key.as_bytes()))
}

/// The MAC interface `index` gets.
pub fn mac_of(index: usize, cfg: &NetConfig) -> [u8; 6] {
    cfg.mac.unwrap_or_else(|| default_mac(index, cfg))
}

/// Whether network interface `name` exists on the host.
fn host_has_interface(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Opens the backends of interface `index` and builds its device (`macs` overrides the
/// MAC: a restore keeps the one the guest had).
pub fn build(
    index: usize,
    cfg: &NetConfig,
    mac: Option<[u8; 6]>,
) -> Result<NetDevice, NetSetupError> {
    let id = cfg.name(index);
    let fail = |why: String| NetSetupError {
        id: id.clone(),
        why,
    };
    let mac = mac.unwrap_or_else(|| mac_of(index, cfg));
    if cfg.vhost && !(cfg.rx.is_empty() && cfg.tx.is_empty()) {
        return Err(fail(
            "rate limits need the userspace data path: drop vhost=on or the limits".into(),
        ));
    }
    let mut passt = None;
    let name = format!("net{index}");
    let backends: Vec<Box<dyn NetBackend>> = match &cfg.backend {
        NetBackendConfig::Tap { name: tap } => {
            let existed = host_has_interface(tap);
            let taps =
                Tap::open_queues(tap, usize::from(cfg.queues)).map_err(|e| fail(e.to_string()))?;
            if !existed {
                tracing::info!(
                    "{id}: created tap {tap}, which goes away with the VM; give it an address and bring it up (ip addr add ... dev {tap}; ip link set {tap} up)"
                );
            }
            let taps = if cfg.vhost {
                let mut vcfg = dnet::NetConfig::new(mac);
                vcfg.mtu = cfg.mtu;
                match VhostNet::new(&name, vcfg, taps) {
                    Ok(v) => {
                        tracing::info!("{id}: vhost-net moves the packets");
                        let rx = limits::shared(cfg.rx).map_err(|e| fail(e.to_string()))?;
                        let tx = limits::shared(cfg.tx).map_err(|e| fail(e.to_string()))?;
                        return Ok(NetDevice {
                            id: id.clone(),
                            mac,
                            device: NetKind::Vhost(v),
                            rx,
                            tx,
                            passt,
                        });
                    }
                    Err(e) if e.is_unavailable() => {
                        tracing::warn!("{id}: {e}; packets take the userspace path instead");
                        e.into_taps()
                    }
                    Err(e) => return Err(fail(e.to_string())),
                }
            } else {
                taps
            };
            taps.into_iter()
                .map(|t| Box::new(t) as Box<dyn NetBackend>)
                .collect()
        }
        NetBackendConfig::User { hostfwd } => {
            let (p, sock) =
                Passt::start(index, hostfwd, cfg.mtu).map_err(|e| fail(e.to_string()))?;
            passt = Some(p);
            let stream = Stream::new(sock).map_err(|e| fail(e.to_string()))?;
            vec![Box::new(stream)]
        }
    };
    let limiter =
        |l| limits::shared(l).map_err(|e| fail(format!("cannot create a rate limiter timer: {e}")));
    let rx = limiter(cfg.rx)?;
    let tx = limiter(cfg.tx)?;
    let mut dcfg = dnet::NetConfig::new(mac);
    dcfg.mtu = cfg.mtu;
    dcfg.rx_limiter = Some(Box::new(rx.clone()));
    dcfg.tx_limiter = Some(Box::new(tx.clone()));
    let device = Net::new(&name, dcfg, backends).map_err(|e| fail(e.to_string()))?;
    Ok(NetDevice {
        id,
        mac,
        device: NetKind::Userspace(device),
        rx,
        tx,
        passt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::parse_net;

    #[test]
    fn default_macs_are_stable_local_unicast_and_differ_by_tap() {
        let a = parse_net("tap=tap0").unwrap();
        let b = parse_net("tap=tap1").unwrap();
        let m = default_mac(0, &a);
        assert_eq!(m, default_mac(3, &a), "same tap, same MAC");
        assert_ne!(m, default_mac(0, &b));
        assert_eq!(m[0] & 3, 2, "locally administered unicast");
        let u = parse_net("user").unwrap();
        assert_ne!(default_mac(0, &u), default_mac(1, &u));
        let given = parse_net("tap=t,mac=02:00:00:00:00:07").unwrap();
        assert_eq!(mac_of(0, &given), [2, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn vhost_with_limits_is_refused_before_anything_opens() {
        let cfg = parse_net("tap=nosuchtap0,vhost=on,tx_bw=1M").unwrap();
        let e = build(0, &cfg, None).unwrap_err().to_string();
        assert!(e.contains("eth0") && e.contains("vhost=on"), "{e}");
    }
}
