//! virtio-net (virtio 1.2, section 5.1): queue pairs (receiveq, transmitq) over host
//! [`NetBackend`]s ([`Tap`] queues, or a [`Stream`] socket to passt), one worker thread per
//! pair, and a control queue (served by pair 0's worker) when there are several pairs.
//!
//! - `backend`: the [`NetBackend`] trait and [`FrameBufs`], the guest buffers of one frame
//!   as the kernel sees them (the only place host pointers into guest memory are made);
//! - `tap`, `stream`: the two backends;
//! - `handler`: the worker of one pair (receive, transmit, flow control);
//! - `ctrl`: control queue commands.
//!
//! Frames move with one copy, by the kernel: transmit is a `writev` of the guest's buffers
//! to the backend, receive a `readv` from the backend into the guest's buffers (with
//! `VIRTIO_NET_F_MRG_RXBUF` across as many receive chains as the largest frame needs).

mod backend;
pub(crate) mod ctrl;
mod handler;
mod stream;
mod tap;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_net as vn;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::{WorkerCounts, WorkerError, WorkerSlot};
use super::{
    device_type, features, ActivateError, ActiveQueue, GuestMemoryMmap, Interrupt, VirtioDevice,
};

pub use backend::{FrameBufs, NetBackend, Recv, MAX_IOVECS};
pub use stream::{Stream, StreamError};
pub use tap::{Tap, TapError};

/// The size of every queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most queue pairs a device has (each is a worker thread and a backend).
pub const MAX_QUEUE_PAIRS: usize = 64;
/// Bytes of `struct virtio_net_hdr_v1`, in front of every frame (virtio 1.x).
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Ethernet header bytes.
pub const ETH_HLEN: usize = 14;
/// An 802.1Q tag.
pub const VLAN_HLEN: usize = 4;
/// The MTU when none is configured.
pub const DEFAULT_MTU: u16 = 1500;
/// The smallest MTU the configuration space may show (virtio 1.2, 5.1.4.1).
pub const MIN_MTU: u16 = 68;
/// The largest frame (without vnet header) with segmentation offload: an Ethernet header
/// and 64 KiB.
pub const MAX_FRAME_TSO: usize = ETH_HLEN + 65536;
/// The largest transmit chain accepted: header and [`MAX_FRAME_TSO`].
pub const MAX_TX_LEN: usize = VNET_HDR_LEN + MAX_FRAME_TSO;

/// virtio-net feature bits (virtio 1.2, section 5.1.3).
pub mod net_features {
    use virtio_bindings::virtio_net as vn;
    pub const CSUM: u64 = 1 << vn::VIRTIO_NET_F_CSUM;
    pub const GUEST_CSUM: u64 = 1 << vn::VIRTIO_NET_F_GUEST_CSUM;
    pub const MTU: u64 = 1 << vn::VIRTIO_NET_F_MTU;
    pub const MAC: u64 = 1 << vn::VIRTIO_NET_F_MAC;
    pub const GUEST_TSO4: u64 = 1 << vn::VIRTIO_NET_F_GUEST_TSO4;
    pub const GUEST_TSO6: u64 = 1 << vn::VIRTIO_NET_F_GUEST_TSO6;
    pub const GUEST_ECN: u64 = 1 << vn::VIRTIO_NET_F_GUEST_ECN;
    pub const GUEST_UFO: u64 = 1 << vn::VIRTIO_NET_F_GUEST_UFO;
    pub const HOST_TSO4: u64 = 1 << vn::VIRTIO_NET_F_HOST_TSO4;
    pub const HOST_TSO6: u64 = 1 << vn::VIRTIO_NET_F_HOST_TSO6;
    pub const HOST_ECN: u64 = 1 << vn::VIRTIO_NET_F_HOST_ECN;
    pub const MRG_RXBUF: u64 = 1 << vn::VIRTIO_NET_F_MRG_RXBUF;
    pub const STATUS: u64 = 1 << vn::VIRTIO_NET_F_STATUS;
    pub const CTRL_VQ: u64 = 1 << vn::VIRTIO_NET_F_CTRL_VQ;
    pub const CTRL_RX: u64 = 1 << vn::VIRTIO_NET_F_CTRL_RX;
    pub const MQ: u64 = 1 << vn::VIRTIO_NET_F_MQ;
    pub const CTRL_MAC_ADDR: u64 = 1 << vn::VIRTIO_NET_F_CTRL_MAC_ADDR;
    /// Every offload bit offered with a vnet-header backend.
    pub const OFFLOADS: u64 =
        CSUM | GUEST_CSUM | HOST_TSO4 | HOST_TSO6 | HOST_ECN | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN;
}

/// `status` bits in the configuration space.
pub const STATUS_LINK_UP: u16 = vn::VIRTIO_NET_S_LINK_UP as u16;

/// Offsets in the configuration space (`struct virtio_net_config`).
pub mod config_offset {
    pub const MAC: usize = 0;
    pub const STATUS: usize = 6;
    pub const MAX_VIRTQUEUE_PAIRS: usize = 8;
    pub const MTU: usize = 10;
    /// Bytes of the configuration space we fill (up to `mtu`).
    pub const SIZE: usize = 12;
}

/// A rate limiter for one direction, asked about every frame. The VMM plugs in a token
/// bucket; the device stops moving frames in that direction while it is blocked.
pub trait Limiter: Send + 'static {
    /// Accounts `bytes` of a frame that just moved (the device cannot know a received
    /// frame's size before reading it, so it accounts after). False: the budget is spent;
    /// the device moves nothing more in this direction until [`Limiter::blocked_fd`] is
    /// readable and it has called [`Limiter::replenished`].
    fn consume(&mut self, bytes: u64) -> bool;

    /// A descriptor (a timerfd, say) that becomes readable when the budget is back. It must
    /// not change. A limiter without one cannot block the device (its `false` is ignored).
    fn blocked_fd(&self) -> Option<RawFd>;

    /// [`Limiter::blocked_fd`] was readable: read it, refill; true when the device may
    /// move frames again (false: wait for the descriptor again). May be called when it no
    /// longer is readable (queue pairs share a limiter), so it must not block.
    fn replenished(&mut self) -> bool;
}

/// The VMM's token-bucket limiter, shared with the VMM (which changes its limits while the
/// guest runs) and by the queue pairs.
impl Limiter for std::sync::Arc<Mutex<crate::rate_limiter::RateLimiter>> {
    fn consume(&mut self, bytes: u64) -> bool {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .consume(bytes)
    }
    fn blocked_fd(&self) -> Option<RawFd> {
        Some(self.lock().unwrap_or_else(|p| p.into_inner()).fd())
    }
    fn replenished(&mut self) -> bool {
        self.lock().unwrap_or_else(|p| p.into_inner()).replenished()
    }
}

/// What the device is made with.
pub struct NetConfig {
    /// The MAC address the guest is told (see [`default_mac`]).
    pub mac: [u8; 6],
    /// The MTU the guest is told (VIRTIO_NET_F_MTU); also bounds received frames without
    /// segmentation offload. With passt, give the MTU passt uses (65520 unless told).
    pub mtu: Option<u16>,
    /// Limits what the guest receives (shared by all queue pairs).
    pub rx_limiter: Option<Box<dyn Limiter>>,
    /// Limits what the guest sends (shared by all queue pairs).
    pub tx_limiter: Option<Box<dyn Limiter>>,
}

impl NetConfig {
    /// A configuration with MAC `mac`, no MTU and no limits.
    pub fn new(mac: [u8; 6]) -> NetConfig {
        NetConfig {
            mac,
            mtu: None,
            rx_limiter: None,
            tx_limiter: None,
        }
    }
}

impl std::fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetConfig")
            .field("mac", &format_mac(&self.mac))
            .field("mtu", &self.mtu)
            .field("rx_limiter", &self.rx_limiter.is_some())
            .field("tx_limiter", &self.tx_limiter.is_some())
            .finish()
    }
}

/// A stable MAC address for device number `seed` (its index, say): locally administered
/// (bit 1 of the first byte set), unicast (bit 0 clear), `02:46:` then the seed's four
/// bytes, big-endian.
pub fn default_mac(seed: u32) -> [u8; 6] {
    let s = seed.to_be_bytes();
    [0x02, 0x46, s[0], s[1], s[2], s[3]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why a device cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{name}: no backend (a network device needs one per queue pair)")]
    NoBackends { name: String },
    #[error("{name}: {count} queue pairs; at most {MAX_QUEUE_PAIRS} are supported")]
    TooManyPairs { name: String, count: usize },
    #[error("{name}: the backends of one device must all have a vnet header or all have none")]
    MixedBackends { name: String },
    #[error("{name}: MTU {mtu} is below the minimum of {MIN_MTU}")]
    MtuTooSmall { name: String, mtu: u16 },
    #[error("{name}: MAC address {} is a multicast address", format_mac(mac))]
    MulticastMac { name: String, mac: [u8; 6] },
    #[error("{name}: cannot create an eventfd: {source}")]
    EventFd {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Counters of one queue pair (atomics, read at any time).
#[derive(Debug, Default)]
pub(crate) struct PairStats {
    pub(crate) rx_packets: AtomicU64,
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) rx_dropped: AtomicU64,
    pub(crate) rx_no_buffers: AtomicU64,
    pub(crate) tx_packets: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
    pub(crate) tx_dropped: AtomicU64,
    pub(crate) bad_chains: AtomicU64,
    pub(crate) backend_events: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A copy of one queue pair's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PairCounts {
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Their bytes (without the vnet header).
    pub rx_bytes: u64,
    /// Frames from the backend that were not delivered (too big for the buffers, runts).
    pub rx_dropped: u64,
    /// Times receiving stopped because the guest had given too few buffers.
    pub rx_no_buffers: u64,
    /// Frames sent to the backend.
    pub tx_packets: u64,
    /// Their bytes (without the vnet header).
    pub tx_bytes: u64,
    /// Transmit chains not sent (malformed, too long, the backend refused or is gone).
    pub tx_dropped: u64,
    /// Receive or control chains returned unused because they were malformed.
    pub bad_chains: u64,
    /// Times the worker woke up for the backend's descriptor.
    pub backend_events: u64,
}

impl std::ops::AddAssign for PairCounts {
    fn add_assign(&mut self, o: PairCounts) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.rx_dropped += o.rx_dropped;
        self.rx_no_buffers += o.rx_no_buffers;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.tx_dropped += o.tx_dropped;
        self.bad_chains += o.bad_chains;
        self.backend_events += o.backend_events;
    }
}

impl PairStats {
    fn snapshot(&self) -> PairCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PairCounts {
            rx_packets: l(&self.rx_packets),
            rx_bytes: l(&self.rx_bytes),
            rx_dropped: l(&self.rx_dropped),
            rx_no_buffers: l(&self.rx_no_buffers),
            tx_packets: l(&self.tx_packets),
            tx_bytes: l(&self.tx_bytes),
            tx_dropped: l(&self.tx_dropped),
            bad_chains: l(&self.bad_chains),
            backend_events: l(&self.backend_events),
        }
    }
}

/// The device's counters, for the VMM's metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NetCounts {
    /// The link status the guest sees.
    pub link_up: bool,
    /// Queue pairs in use (VQ_PAIRS_SET).
    pub active_pairs: u16,
    /// Per queue pair.
    pub pairs: Vec<PairCounts>,
}

impl NetCounts {
    /// All pairs together.
    pub fn total(&self) -> PairCounts {
        let mut t = PairCounts::default();
        for p in &self.pairs {
            t += *p;
        }
        t
    }
}

/// One queue pair's backend and counters, shared by the device and its workers.
pub(crate) struct Pair {
    pub(crate) backend: Mutex<Box<dyn NetBackend>>,
    /// The backend's descriptor (it never changes).
    pub(crate) backend_fd: RawFd,
    pub(crate) backend_name: String,
    /// The backend hung up or failed; it is not used again.
    pub(crate) dead: AtomicBool,
    pub(crate) stats: PairStats,
    /// Wakes the pair's worker: the active pairs changed, or it has more to do.
    pub(crate) kick: EventFd,
}

impl Pair {
    pub(crate) fn backend(&self) -> MutexGuard<'_, Box<dyn NetBackend>> {
        // A worker that panicked holding the lock left the backend as it was; it is usable.
        self.backend.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the device and its workers share.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) mac: [u8; 6],
    pub(crate) mtu: Option<u16>,
    pub(crate) status: AtomicU16,
    pub(crate) active_pairs: AtomicU16,
    pub(crate) pairs: Vec<Pair>,
    pub(crate) rx_limiter: Option<Mutex<Box<dyn Limiter>>>,
    pub(crate) tx_limiter: Option<Mutex<Box<dyn Limiter>>>,
}

pub(crate) fn lock_limiter(l: &Mutex<Box<dyn Limiter>>) -> MutexGuard<'_, Box<dyn Limiter>> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Uses `n` queue pairs from now on (1..=pairs, checked by the caller). A pair is
    /// attached before workers may use it and detached after they stop.
    pub(crate) fn set_active_pairs(&self, n: u16) {
        let old = self.active_pairs.load(Ordering::SeqCst);
        let set = |i: usize, on: bool| {
            if let Err(e) = self.pairs[i].backend().set_queue_enabled(on) {
                tracing::warn!(
                    "{}: cannot {} queue pair {i} ({}): {e}",
                    self.name,
                    if on { "attach" } else { "detach" },
                    self.pairs[i].backend_name
                );
            }
        };
        for i in usize::from(old)..usize::from(n) {
            set(i, true);
        }
        self.active_pairs.store(n, Ordering::SeqCst);
        for i in usize::from(n)..usize::from(old) {
            set(i, false);
        }
        let (lo, hi) = (old.min(n), old.max(n));
        for p in &self.pairs[usize::from(lo)..usize::from(hi)] {
            let _ = p.kick.write(1);
        }
        if old != n {
            tracing::info!("{}: {n} queue pairs in use", self.name);
        }
    }
}

/// The virtio-net device.
pub struct Net {
    name: String,
    avail_features: u64,
    queue_sizes: Vec<u16>,
    vnet_hdr: bool,
    shared: Arc<Shared>,
    workers: Vec<WorkerSlot>,
    /// Where the active queues are: per queue index, the worker and its position there
    /// (`None`: a queue the driver set up but the device does not use, kept as it was).
    layout: Vec<QueueHome>,
}

/// Where an activated device keeps queue `i` ([`Net::layout`]).
#[derive(Debug, Clone, Copy)]
enum QueueHome {
    /// Position `pos` of worker `worker`.
    Worker { worker: usize, pos: usize },
    /// Unused, as it was at activation.
    Idle(virtio_queue::QueueState),
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("name", &self.name)
            .field("mac", &format_mac(&self.shared.mac))
            .field("pairs", &self.shared.pairs.len())
            .field("vnet_hdr", &self.vnet_hdr)
            .finish()
    }
}

/// The `TUN_F_*` offloads the guest can receive, from what it negotiated (none without
/// GUEST_CSUM, on which the others depend).
pub fn tun_offload_flags(acked: u64) -> u32 {
    use net_features as nf;
    if acked & nf::GUEST_CSUM == 0 {
        return 0;
    }
    let mut f = libc::TUN_F_CSUM;
    if acked & nf::GUEST_TSO4 != 0 {
        f |= libc::TUN_F_TSO4;
    }
    if acked & nf::GUEST_TSO6 != 0 {
        f |= libc::TUN_F_TSO6;
    }
    if acked & nf::GUEST_ECN != 0 && acked & (nf::GUEST_TSO4 | nf::GUEST_TSO6) != 0 {
        f |= libc::TUN_F_TSO_ECN;
    }
    f
}

/// The largest frame (without header) the backend may deliver, which receive buffers
/// are gathered for: 64 KiB and an Ethernet header with segmentation offload, else the MTU
/// and an Ethernet header with a VLAN tag. A stream backend without a configured MTU may
/// send frames as large as passt's MTU (65520 by default).
fn rx_frame_max(tun_flags: u32, mtu: Option<u16>, vnet_hdr: bool) -> usize {
    if tun_flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        return MAX_FRAME_TSO;
    }
    match mtu {
        Some(m) => usize::from(m) + ETH_HLEN + VLAN_HLEN,
        None if vnet_hdr => usize::from(DEFAULT_MTU) + ETH_HLEN + VLAN_HLEN,
        None => MAX_FRAME_TSO,
    }
}

impl Net {
    /// A device `name` ("net0": logs, thread names) with one queue pair per backend.
    /// The backends must all have a vnet header (taps) or all have none (streams).
    pub fn new(
        name: &str,
        cfg: NetConfig,
        backends: Vec<Box<dyn NetBackend>>,
    ) -> Result<Net, NetError> {
        let name_s = name.to_string();
        if backends.is_empty() {
            return Err(NetError::NoBackends { name: name_s });
        }
        if backends.len() > MAX_QUEUE_PAIRS {
            return Err(NetError::TooManyPairs {
                name: name_s,
                count: backends.len(),
            });
        }
        let vnet_hdr = backends[0].has_vnet_hdr();
        if backends.iter().any(|b| b.has_vnet_hdr() != vnet_hdr) {
            return Err(NetError::MixedBackends { name: name_s });
        }
        if let Some(mtu) = cfg.mtu.filter(|&m| m < MIN_MTU) {
            return Err(NetError::MtuTooSmall { name: name_s, mtu });
        }
        if cfg.mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac {
                name: name_s,
                mac: cfg.mac,
            });
        }
        let n = backends.len();
        let mut pairs = Vec::with_capacity(n);
        for b in backends {
            let kick = EventFd::new(EFD_NONBLOCK).map_err(|source| NetError::EventFd {
                name: name_s.clone(),
                source,
            })?;
            pairs.push(Pair {
                backend_fd: b.fd().as_raw_fd(),
                backend_name: b.name().to_string(),
                backend: Mutex::new(b),
                dead: AtomicBool::new(false),
                stats: PairStats::default(),
                kick,
            });
        }
        use net_features as nf;
        let mut avail_features = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | nf::MAC
            | nf::STATUS
            | nf::MRG_RXBUF;
        if cfg.mtu.is_some() {
            avail_features |= nf::MTU;
        }
        if vnet_hdr {
            avail_features |= nf::OFFLOADS;
        }
        let mut queues = 2 * n;
        if n > 1 {
            avail_features |= nf::MQ | nf::CTRL_VQ;
            queues += 1;
        }
        let shared = Arc::new(Shared {
            name: name_s.clone(),
            mac: cfg.mac,
            mtu: cfg.mtu,
            status: AtomicU16::new(STATUS_LINK_UP),
            active_pairs: AtomicU16::new(1),
            pairs,
            rx_limiter: cfg.rx_limiter.map(Mutex::new),
            tx_limiter: cfg.tx_limiter.map(Mutex::new),
        });
        Ok(Net {
            name: name_s,
            avail_features,
            queue_sizes: vec![QUEUE_SIZE; queues],
            vnet_hdr,
            shared,
            workers: (0..n).map(|_| WorkerSlot::default()).collect(),
            layout: Vec::new(),
        })
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.shared.mac
    }

    /// Queue pairs (backends).
    pub fn queue_pairs(&self) -> usize {
        self.shared.pairs.len()
    }

    /// Whether the guest sees the link up (false once a backend hung up or failed).
    pub fn link_up(&self) -> bool {
        self.shared.status.load(Ordering::SeqCst) & STATUS_LINK_UP != 0
    }

    /// The counters, per queue pair.
    pub fn net_counts(&self) -> NetCounts {
        NetCounts {
            link_up: self.link_up(),
            active_pairs: self.shared.active_pairs.load(Ordering::SeqCst),
            pairs: self
                .shared
                .pairs
                .iter()
                .map(|p| p.stats.snapshot())
                .collect(),
        }
    }

    fn config_space(&self) -> [u8; config_offset::SIZE] {
        use config_offset as o;
        let mut c = [0u8; o::SIZE];
        c[o::MAC..o::MAC + 6].copy_from_slice(&self.shared.mac);
        let status = self.shared.status.load(Ordering::SeqCst);
        c[o::STATUS..o::STATUS + 2].copy_from_slice(&status.to_le_bytes());
        let pairs = self.shared.pairs.len() as u16;
        c[o::MAX_VIRTQUEUE_PAIRS..o::MAX_VIRTQUEUE_PAIRS + 2].copy_from_slice(&pairs.to_le_bytes());
        let mtu = self.shared.mtu.unwrap_or(0);
        c[o::MTU..o::MTU + 2].copy_from_slice(&mtu.to_le_bytes());
        c
    }

    fn set_offloads(&self, flags: u32) {
        if !self.vnet_hdr {
            return;
        }
        for (i, p) in self.shared.pairs.iter().enumerate() {
            let b = p.backend();
            if let Err(e) = b.set_offload(flags) {
                tracing::warn!(
                    "{}: cannot set offloads {flags:#x} on {} (pair {i}): {e}; the guest gets plain frames",
                    self.name,
                    p.backend_name
                );
                let _ = b.set_offload(0);
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_window(&self.config_space(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        use net_features as nf;
        self.reset();
        let n = self.shared.pairs.len();
        let mq = n > 1 && acked_features & nf::MQ != 0;
        let ctrl = acked_features & nf::CTRL_VQ != 0;
        let pairs = if mq { n } else { 1 };
        // The control queue follows the pairs in use (virtio 1.2, 5.1.2).
        let ctrl_index = 2 * pairs;
        let needed = if ctrl { ctrl_index + 1 } else { 2 * pairs };
        if queues.len() < needed {
            return Err(ActivateError::QueueNotReady(queues.len()));
        }
        let mut queues: Vec<Option<ActiveQueue>> = queues.into_iter().map(Some).collect();
        let mut layout: Vec<QueueHome> = queues
            .iter()
            .map(|q| QueueHome::Idle(q.as_ref().map(|q| q.queue.state()).unwrap_or_default()))
            .collect();
        for (i, home) in layout.iter_mut().enumerate().take(2 * pairs) {
            *home = QueueHome::Worker {
                worker: i / 2,
                pos: i % 2,
            };
        }
        if ctrl {
            layout[ctrl_index] = QueueHome::Worker { worker: 0, pos: 2 };
        }
        let tun_flags = if self.vnet_hdr {
            tun_offload_flags(acked_features)
        } else {
            0
        };
        self.set_offloads(tun_flags);
        let rx_max = VNET_HDR_LEN + rx_frame_max(tun_flags, self.shared.mtu, self.vnet_hdr);
        // Pair 0 only until the driver asks for more (VQ_PAIRS_SET).
        self.shared.active_pairs.store(1, Ordering::SeqCst);
        for (i, p) in self.shared.pairs.iter().enumerate() {
            let _ = p.kick.read();
            if let Err(e) = p.backend().set_queue_enabled(i == 0) {
                tracing::warn!("{}: cannot set up queue pair {i}: {e}", self.name);
            }
        }
        let link_up = self.shared.pairs[..pairs]
            .iter()
            .all(|p| !p.dead.load(Ordering::SeqCst));
        self.shared
            .status
            .store(if link_up { STATUS_LINK_UP } else { 0 }, Ordering::SeqCst);
        tracing::debug!(
            "{}: activating with features {acked_features:#x}, {pairs} queue pair(s), offloads {tun_flags:#x}",
            self.name
        );
        for i in 0..pairs {
            let (Some(rx), Some(tx)) = (queues[2 * i].take(), queues[2 * i + 1].take()) else {
                self.reset();
                return Err(ActivateError::QueueNotReady(2 * i));
            };
            let mut qs = vec![rx, tx];
            let has_ctrl = i == 0 && ctrl;
            if has_ctrl {
                match queues[ctrl_index].take() {
                    Some(q) => qs.push(q),
                    None => {
                        self.reset();
                        return Err(ActivateError::QueueNotReady(ctrl_index));
                    }
                }
            }
            let h = handler::PairHandler::new(handler::Setup {
                pair: i,
                shared: self.shared.clone(),
                has_ctrl,
                mq,
                mrg_rxbuf: acked_features & nf::MRG_RXBUF != 0,
                hdr_skip: if self.vnet_hdr { 0 } else { VNET_HDR_LEN },
                rx_max,
            });
            let thread = format!("{}-q{i}", self.name);
            if let Err(e) = self.workers[i].start(&thread, h, mem.clone(), interrupt.clone(), qs) {
                self.reset();
                return Err(e.into());
            }
        }
        self.layout = layout;
        Ok(())
    }

    fn reset(&mut self) {
        for w in &mut self.workers {
            w.retire();
        }
        // Until a driver negotiates them again, the guest can take no offloaded frames.
        self.set_offloads(0);
        self.shared.active_pairs.store(1, Ordering::SeqCst);
        self.layout.clear();
    }

    fn pause(&mut self) -> Result<(), WorkerError> {
        let mut result = Ok(());
        for w in &self.workers {
            if let Err(e) = w.pause() {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    fn resume(&mut self) {
        for w in &self.workers {
            w.resume();
        }
    }

    fn queue_states(&self) -> Result<Vec<virtio_queue::QueueState>, String> {
        if self.layout.is_empty() {
            return Err(format!("{} is not active", self.name));
        }
        let mut live: Vec<Option<Vec<virtio_queue::QueueState>>> = vec![None; self.workers.len()];
        let mut out = Vec::with_capacity(self.layout.len());
        for home in &self.layout {
            out.push(match *home {
                QueueHome::Idle(s) => s,
                QueueHome::Worker { worker, pos } => {
                    if live[worker].is_none() {
                        live[worker] = Some(
                            self.workers[worker]
                                .queue_states()
                                .map_err(|e| e.to_string())?,
                        );
                    }
                    *live[worker]
                        .as_ref()
                        .and_then(|l| l.get(pos))
                        .ok_or_else(|| {
                            format!("{}: worker {worker} has no queue {pos}", self.name)
                        })?
                }
            });
        }
        Ok(out)
    }

    fn device_state(&self) -> Vec<u8> {
        // The queue pairs the driver asked for (VQ_PAIRS_SET).
        self.shared
            .active_pairs
            .load(Ordering::SeqCst)
            .to_le_bytes()
            .to_vec()
    }

    fn restore_device_state(&mut self, state: &[u8]) -> Result<(), String> {
        let n = match state {
            [a, b] => u16::from_le_bytes([*a, *b]),
            _ => {
                return Err(format!(
                    "{}: a saved state of {} bytes",
                    self.name,
                    state.len()
                ))
            }
        };
        let workers = self
            .layout
            .iter()
            .filter_map(|h| match h {
                QueueHome::Worker { worker, .. } => Some(*worker + 1),
                QueueHome::Idle(_) => None,
            })
            .max()
            .unwrap_or(0);
        if n == 0 || usize::from(n) > workers {
            return Err(format!(
                "{}: {n} queue pairs in use, but {workers} are active",
                self.name
            ));
        }
        self.shared.set_active_pairs(n);
        Ok(())
    }

    fn worker_stats(&self) -> WorkerCounts {
        let mut t = WorkerCounts::default();
        for w in &self.workers {
            let c = w.counts();
            t.notifications += c.notifications;
            t.requests += c.requests;
            t.interrupts += c.interrupts;
        }
        t
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.stop();
        }
    }
}

#[cfg(test)]
mod tests;
