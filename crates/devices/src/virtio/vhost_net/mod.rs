//! virtio-net with the kernel's data path (vhost-net): the same guest-visible device as
//! [`crate::virtio::net::Net`] (type 1, MAC / STATUS / MTU configuration space, MQ and a
//! control queue for several queue pairs), but frames move between the guest's rings and
//! the tap inside the kernel, without a VMM thread or a copy through user space.
//!
//! - `kern`: one `/dev/vhost-net` instance per queue pair (ioctls through the rust-vmm
//!   `vhost` crate) and the checks that come before the kernel is handed ring addresses;
//! - `pair`: a pair's tap queue and instance (attach, detach, pause), and the control
//!   queue's worker, which reuses the userspace device's command handling (`net::ctrl`).
//!
//! # Activation
//!
//! For each queue pair in use: open `/dev/vhost-net`, `VHOST_SET_OWNER`,
//! `VHOST_SET_FEATURES` (the ring features the guest accepted, see [`kernel_features`]),
//! `VHOST_SET_MEM_TABLE` (every guest memory region: guest address, size, host address),
//! then per vring `SET_VRING_NUM`, `SET_VRING_ADDR` (host addresses, checked by
//! `kern::vring_host`), `SET_VRING_BASE` (the queue's next available index),
//! `SET_VRING_KICK` (the queue's notify eventfd, KVM's ioeventfd: the guest's kick goes
//! from KVM straight to the kernel's worker), `SET_VRING_CALL` (the interrupt's irqfd, see
//! below), and last `VHOST_NET_SET_BACKEND` with the pair's tap queue.
//!
//! # Interrupts
//!
//! The call eventfd *is* the KVM irqfd of the device's interrupt: the kernel interrupts the
//! guest without a VMM thread in between. A virtio-mmio driver reads `InterruptStatus`
//! first and looks at its used rings only when USED_RING is set, and nothing sets that bit
//! when the kernel writes the irqfd, so while the kernel runs the rings the device's
//! [`Interrupt`] shows USED_RING always ([`Interrupt::set_sticky_used_ring`]). That is
//! correct because the bit only tells the driver where to look: on every interrupt of the
//! device (used buffers, or a configuration change) the driver then scans its used rings,
//! and a scan that finds nothing new is what a driver already handles (an interrupt that
//! raced with its own polling). The cost is one scan per configuration-change interrupt;
//! the gain is no VMM wake-up and no extra latency per interrupt (a worker thread that
//! waited on separate call eventfds to set the bit and then write the irqfd would add a
//! thread wake-up to every interrupt).
//!
//! # The vnet header
//!
//! Frames carry a 12-byte `virtio_net_hdr_v1` (virtio 1.x, or MRG_RXBUF: see
//! [`vnet_hdr_len`]). The *tap* reads and writes it (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ` 12,
//! set again at activation), and the kernel's vhost passes it through untouched: the
//! device never acks `VHOST_NET_F_VIRTIO_NET_HDR` (bit 27), with which vhost would add and
//! strip headers itself and the tap would see bare frames. Letting the tap see the header
//! is what makes checksum and segmentation offloads work (the tap interprets `gso_type`
//! and `csum_*`; [`tun_offload_flags`] tells it what the guest can take).
//!
//! # Pause, snapshots, dirty pages
//!
//! Pausing sets every pair's backend to `-1`: the kernel finishes the frame in hand and
//! stops touching the rings and guest memory before the ioctl returns. Then
//! `VHOST_GET_VRING_BASE` gives each ring's next available index, and the used index is in
//! guest memory, for [`VirtioDevice::queue_states`]; resuming sets the backends again. The
//! memory of a VM paused that way is consistent, so a full snapshot works; what does not is
//! anything that copies memory while the guest runs (live migration, incremental snapshots):
//! that needs the kernel to log the pages it writes (`VHOST_F_LOG_ALL` with
//! `VHOST_SET_LOG_BASE`), which this device does not do yet.
//!
//! Not available with vhost-net: rate limits (the kernel moves frames without asking) and
//! the per-frame counters of the userspace device.

mod kern;
mod pair;

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::QueueState;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::net::{
    config_offset, net_features as nf, tun_offload_flags, NetBackend, NetConfig, NetError, Pair,
    PairStats, Shared, Tap, MAX_QUEUE_PAIRS, MIN_MTU, QUEUE_SIZE, STATUS_LINK_UP, VNET_HDR_LEN,
};
use super::worker::{WorkerCounts, WorkerError, WorkerSlot};
use super::{
    device_type, features, ActivateError, ActiveQueue, GuestMemoryMmap, Interrupt, VirtioDevice,
};

use kern::{Instance, Vring, VRING_RX, VRING_TX};
pub use kern::{RingError, VHOST_NET_PATH};
use pair::{CtrlHandler, PairBackend, PairLink};

/// `VHOST_F_LOG_ALL`: the kernel logs the pages it writes (not used yet).
pub const VHOST_F_LOG_ALL: u64 = 1 << vhost::vhost_kern::vhost_binding::VHOST_F_LOG_ALL;
/// `VHOST_NET_F_VIRTIO_NET_HDR`: vhost adds and strips the vnet header (never acked here:
/// the tap does it).
pub const VHOST_NET_F_VIRTIO_NET_HDR: u64 =
    1 << vhost::vhost_kern::vhost_binding::VHOST_NET_F_VIRTIO_NET_HDR;

/// The features the kernel's data path implements (ring layout, notification suppression,
/// receive-buffer merging): offered only when `VHOST_GET_FEATURES` has them, and handed to
/// the kernel (`VHOST_SET_FEATURES`) as the guest accepted them.
pub const KERNEL_FEATURES: u64 =
    features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC | nf::MRG_RXBUF;

/// The features this device provides itself, which vhost-net neither reports nor needs to
/// know: the configuration space (MAC, STATUS), and the offloads, which are between the
/// guest and the tap (the kernel passes the vnet header through). MTU, MQ and CTRL_VQ are
/// added when configured ([`offered_features`]).
pub const DEVICE_FEATURES: u64 = nf::MAC | nf::STATUS | nf::OFFLOADS;

/// The features offered to the guest, given what vhost-net reports: the kernel's part of
/// [`KERNEL_FEATURES`] and this device's own, with MTU when one is configured and MQ with a
/// control queue for more than one pair. The same set as the userspace device with tap
/// backends when the kernel has every ring feature.
pub fn offered_features(vhost_features: u64, pairs: usize, mtu: Option<u16>) -> u64 {
    let mut f = (vhost_features & KERNEL_FEATURES) | DEVICE_FEATURES;
    if mtu.is_some() {
        f |= nf::MTU;
    }
    if pairs > 1 {
        f |= nf::MQ | nf::CTRL_VQ;
    }
    f
}

/// What `VHOST_SET_FEATURES` is given: the ring features the guest accepted, never the
/// device-class bits (the kernel refuses bits it does not know), never
/// `VHOST_NET_F_VIRTIO_NET_HDR` (the tap handles the header) nor `VHOST_F_LOG_ALL`.
pub fn kernel_features(acked: u64, vhost_features: u64) -> u64 {
    acked & KERNEL_FEATURES & vhost_features
}

/// The vnet header length both sides use (`vhost_net_set_features`: the 12-byte
/// `virtio_net_hdr_mrg_rxbuf` with VERSION_1 or MRG_RXBUF, else the 10-byte legacy one).
pub fn vnet_hdr_len(acked: u64) -> usize {
    if acked & (features::VERSION_1 | nf::MRG_RXBUF) != 0 {
        VNET_HDR_LEN
    } else {
        VNET_HDR_LEN - 2
    }
}

/// Which queues are what for the features the guest accepted (virtio 1.2, 5.1.2): `pairs`
/// receive/transmit pairs at 2i and 2i + 1, then the control queue if negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Queue pairs the driver set up (all with MQ, else one).
    pub pairs: usize,
    /// The control queue's index.
    pub ctrl: Option<usize>,
}

impl Layout {
    /// The layout of a device with `pairs` pairs after the driver accepted `acked`.
    pub fn new(pairs: usize, acked: u64) -> Layout {
        let pairs = if pairs > 1 && acked & nf::MQ != 0 {
            pairs
        } else {
            1
        };
        Layout {
            pairs,
            ctrl: (acked & nf::CTRL_VQ != 0).then_some(2 * pairs),
        }
    }

    /// How many queues the driver must have set up.
    pub fn queues(&self) -> usize {
        2 * self.pairs + usize::from(self.ctrl.is_some())
    }
}

/// Why the device cannot be made, or started. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum VhostNetError {
    /// No vhost-net in this kernel: the VMM may fall back to the userspace device
    /// ([`VhostNetError::into_taps`] gives the taps back).
    #[error("{VHOST_NET_PATH} is not available ({source}); load the vhost_net module: modprobe vhost_net")]
    Unavailable {
        #[source]
        source: std::io::Error,
        /// The taps [`VhostNet::new`] was given.
        taps: Vec<Tap>,
    },
    #[error("cannot open {VHOST_NET_PATH} ({source}); give your user read/write access to it (it is usually root's only: a udev rule or `chmod`/`chgrp`), or run as root")]
    Permission {
        #[source]
        source: std::io::Error,
        /// The taps [`VhostNet::new`] was given.
        taps: Vec<Tap>,
    },
    #[error("cannot open {VHOST_NET_PATH}: {source}")]
    Open {
        #[source]
        source: std::io::Error,
    },
    #[error("{VHOST_NET_PATH} does not offer VIRTIO_F_VERSION_1 (features {features:#x}): this kernel's vhost-net is too old; use the userspace network device")]
    NoVersion1 { features: u64 },
    #[error("{name}: vhost-net moves frames in the kernel and cannot apply rate limits; remove the limits or use the userspace network device")]
    RateLimits { name: String },
    #[error(transparent)]
    Config(#[from] NetError),
    #[error("{name}: {op}{} failed: {source}", pair_suffix(*.pair))]
    Ioctl {
        name: String,
        op: &'static str,
        pair: Option<usize>,
        #[source]
        source: std::io::Error,
    },
    #[error("tap {name}: {op} failed: {source}")]
    Tap {
        name: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: queue {queue} cannot be given to vhost-net: {why}")]
    Ring {
        name: String,
        queue: usize,
        #[source]
        why: RingError,
    },
    #[error(
        "{name}: guest memory has {count} regions; vhost-net takes 1 to {}",
        kern::MAX_MEMORY_REGIONS
    )]
    MemoryRegions { name: String, count: usize },
}

fn pair_suffix(pair: Option<usize>) -> String {
    pair.map(|p| format!(" (queue pair {p})"))
        .unwrap_or_default()
}

impl VhostNetError {
    /// Whether vhost-net cannot be used on this host at all (missing or not permitted),
    /// so that the VMM may fall back to the userspace device.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            VhostNetError::Unavailable { .. } | VhostNetError::Permission { .. }
        )
    }

    /// The taps handed to [`VhostNet::new`] when it failed for want of vhost-net (empty
    /// for other errors), for the userspace device to use instead.
    pub fn into_taps(self) -> Vec<Tap> {
        match self {
            VhostNetError::Unavailable { taps, .. } | VhostNetError::Permission { taps, .. } => {
                taps
            }
            _ => Vec::new(),
        }
    }

    fn with_taps(self, given: Vec<Tap>) -> VhostNetError {
        match self {
            VhostNetError::Unavailable { source, .. } => VhostNetError::Unavailable {
                source,
                taps: given,
            },
            VhostNetError::Permission { source, .. } => VhostNetError::Permission {
                source,
                taps: given,
            },
            e => e,
        }
    }
}

/// What the device was activated with.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    /// Every queue as handed over; the kernel moves the indices of those it has.
    queues: Vec<QueueState>,
    layout: Layout,
    paused: bool,
}

/// The virtio-net device with the kernel's data path.
pub struct VhostNet {
    name: String,
    vhost_features: u64,
    avail_features: u64,
    queue_sizes: Vec<u16>,
    /// What the control queue's command handling works on (the userspace device's).
    shared: Arc<Shared>,
    links: Vec<Arc<PairLink>>,
    ctrl: WorkerSlot,
    active: Option<Active>,
}

impl std::fmt::Debug for VhostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNet")
            .field("name", &self.name)
            .field("mac", &super::net::format_mac(&self.shared.mac))
            .field("pairs", &self.links.len())
            .field(
                "vhost_features",
                &format_args!("{:#x}", self.vhost_features),
            )
            .field("active", &self.active.is_some())
            .finish()
    }
}

/// The configuration checks the userspace device makes too (and no rate limits).
fn check_config(name: &str, cfg: &NetConfig, taps: usize) -> Result<(), VhostNetError> {
    let name_s = name.to_string();
    if taps == 0 {
        return Err(NetError::NoBackends { name: name_s }.into());
    }
    if taps > MAX_QUEUE_PAIRS {
        return Err(NetError::TooManyPairs {
            name: name_s,
            count: taps,
        }
        .into());
    }
    if let Some(mtu) = cfg.mtu.filter(|&m| m < MIN_MTU) {
        return Err(NetError::MtuTooSmall { name: name_s, mtu }.into());
    }
    if cfg.mac[0] & 1 != 0 {
        return Err(NetError::MulticastMac {
            name: name_s,
            mac: cfg.mac,
        }
        .into());
    }
    if cfg.rx_limiter.is_some() || cfg.tx_limiter.is_some() {
        return Err(VhostNetError::RateLimits { name: name_s });
    }
    Ok(())
}

impl VhostNet {
    /// The features the kernel's vhost-net offers, or why it cannot be used
    /// ([`VhostNetError::is_unavailable`]: missing or not permitted).
    pub fn probe() -> Result<u64, VhostNetError> {
        kern::probe_features()
    }

    /// A device `name` ("net0") with one queue pair per tap queue ([`Tap::open_queues`]).
    /// Opens `/dev/vhost-net` once now, so that a host without it fails here, before the
    /// guest starts; the taps then come back with the error ([`VhostNetError::into_taps`]).
    pub fn new(name: &str, cfg: NetConfig, taps: Vec<Tap>) -> Result<VhostNet, VhostNetError> {
        check_config(name, &cfg, taps.len())?;
        let vhost_features = match kern::probe_features() {
            Ok(f) => f,
            Err(e) => return Err(e.with_taps(taps)),
        };
        VhostNet::with_vhost_features(name, cfg, taps, vhost_features)
    }

    /// [`VhostNet::new`] with the features vhost-net reported, without asking it.
    pub(crate) fn with_vhost_features(
        name: &str,
        cfg: NetConfig,
        taps: Vec<Tap>,
        vhost_features: u64,
    ) -> Result<VhostNet, VhostNetError> {
        check_config(name, &cfg, taps.len())?;
        if vhost_features & features::VERSION_1 == 0 {
            return Err(VhostNetError::NoVersion1 {
                features: vhost_features,
            });
        }
        let n = taps.len();
        let mut links = Vec::with_capacity(n);
        let mut pairs = Vec::with_capacity(n);
        for (i, tap) in taps.into_iter().enumerate() {
            let tap_name = tap.name().to_string();
            let link = PairLink::new(i, tap).map_err(|source| VhostNetError::Tap {
                name: tap_name.clone(),
                op: "dup",
                source,
            })?;
            let link = Arc::new(link);
            let kick = EventFd::new(EFD_NONBLOCK).map_err(|source| NetError::EventFd {
                name: name.into(),
                source,
            })?;
            pairs.push(Pair {
                backend_fd: std::os::fd::AsRawFd::as_raw_fd(link.tap()),
                backend_name: tap_name,
                backend: Mutex::new(Box::new(PairBackend(link.clone())) as Box<dyn NetBackend>),
                dead: AtomicBool::new(false),
                stats: PairStats::default(),
                kick,
            });
            links.push(link);
        }
        let mut queues = 2 * n;
        if n > 1 {
            queues += 1;
        }
        let shared = Arc::new(Shared {
            name: name.into(),
            mac: cfg.mac,
            mtu: cfg.mtu,
            status: AtomicU16::new(STATUS_LINK_UP),
            active_pairs: AtomicU16::new(1),
            pairs,
            rx_limiter: None,
            tx_limiter: None,
        });
        Ok(VhostNet {
            name: name.into(),
            vhost_features,
            avail_features: offered_features(vhost_features, n, cfg.mtu),
            queue_sizes: vec![QUEUE_SIZE; queues],
            shared,
            links,
            ctrl: WorkerSlot::default(),
            active: None,
        })
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.shared.mac
    }

    /// Queue pairs (tap queues).
    pub fn queue_pairs(&self) -> usize {
        self.links.len()
    }

    /// Queue pairs the guest uses (VQ_PAIRS_SET).
    pub fn active_pairs(&self) -> u16 {
        self.shared.active_pairs.load(Ordering::SeqCst)
    }

    /// What `VHOST_GET_FEATURES` reported.
    pub fn vhost_features(&self) -> u64 {
        self.vhost_features
    }

    /// Whether the kernel is attached to queue pair `pair` now (the guest uses it and the
    /// device runs, not paused).
    pub fn pair_attached(&self, pair: usize) -> bool {
        self.links.get(pair).is_some_and(|l| l.is_attached())
    }

    fn config_space(&self) -> [u8; config_offset::SIZE] {
        use config_offset as o;
        let mut c = [0u8; o::SIZE];
        c[o::MAC..o::MAC + 6].copy_from_slice(&self.shared.mac);
        let status = self.shared.status.load(Ordering::SeqCst);
        c[o::STATUS..o::STATUS + 2].copy_from_slice(&status.to_le_bytes());
        let pairs = self.links.len() as u16;
        c[o::MAX_VIRTQUEUE_PAIRS..o::MAX_VIRTQUEUE_PAIRS + 2].copy_from_slice(&pairs.to_le_bytes());
        let mtu = self.shared.mtu.unwrap_or(0);
        c[o::MTU..o::MTU + 2].copy_from_slice(&mtu.to_le_bytes());
        c
    }

    /// The taps' side: header size, offloads, which queues receive (pair 0 only).
    fn set_up_taps(&self, acked: u64) -> Result<u32, VhostNetError> {
        let hdr_len = vnet_hdr_len(acked) as libc::c_int;
        let tun_flags = tun_offload_flags(acked);
        for (i, l) in self.links.iter().enumerate() {
            let tap = l.tap();
            // SAFETY: TUNSETVNETHDRSZ reads one int; `hdr_len` is a live int.
            let r = unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(tap),
                    libc::TUNSETVNETHDRSZ,
                    &hdr_len,
                )
            };
            if r < 0 {
                return Err(VhostNetError::Tap {
                    name: tap.name().into(),
                    op: "TUNSETVNETHDRSZ",
                    source: std::io::Error::last_os_error(),
                });
            }
            if let Err(e) = tap.set_offload(tun_flags) {
                tracing::warn!(
                    "{}: cannot set offloads {tun_flags:#x} on {} (pair {i}): {e}; the guest gets plain frames",
                    self.name,
                    tap.name()
                );
                let _ = tap.set_offload(0);
            }
            if let Err(e) = tap.set_queue_enabled(i == 0) {
                tracing::warn!("{}: cannot set up queue pair {i}: {e}", self.name);
            }
        }
        Ok(tun_flags)
    }

    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        interrupt: &Arc<Interrupt>,
        queues: &[ActiveQueue],
        acked: u64,
        layout: Layout,
    ) -> Result<(), VhostNetError> {
        // Every ring the kernel would get is checked before anything is set up.
        for (k, q) in queues.iter().enumerate().take(2 * layout.pairs) {
            kern::vring_host(mem, &q.queue.state()).map_err(|why| VhostNetError::Ring {
                name: self.name.clone(),
                queue: k,
                why,
            })?;
        }
        let tun_flags = self.set_up_taps(acked)?;
        let regions = kern::memory_regions(mem);
        let kernel = kernel_features(acked, self.vhost_features);
        let shared_mem = Arc::new(mem.clone());
        // Before the kernel can interrupt: the driver must look at its rings.
        interrupt.set_sticky_used_ring(true);
        for i in 0..layout.pairs {
            let (rx, tx) = (&queues[2 * i], &queues[2 * i + 1]);
            let (rx_state, tx_state) = (rx.queue.state(), tx.queue.state());
            let vhost = Instance::open(&self.name, i, shared_mem.clone())?;
            vhost.set_up(
                mem,
                kernel,
                &regions,
                &[
                    Vring {
                        index: VRING_RX,
                        state: &rx_state,
                        kick: &rx.notify,
                    },
                    Vring {
                        index: VRING_TX,
                        state: &tx_state,
                        kick: &tx.notify,
                    },
                ],
                interrupt.evt(),
            )?;
            self.links[i].start(vhost, i == 0)?;
        }
        tracing::info!(
            "{}: vhost-net running {} queue pair(s), features {acked:#x} (kernel {kernel:#x}), offloads {tun_flags:#x}",
            self.name,
            layout.pairs
        );
        Ok(())
    }

    fn stop_links(&self) {
        for l in &self.links {
            l.stop();
        }
    }
}

impl VirtioDevice for VhostNet {
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
        self.reset();
        let layout = Layout::new(self.links.len(), acked_features);
        if queues.len() < layout.queues() {
            return Err(ActivateError::QueueNotReady(queues.len()));
        }
        let states: Vec<QueueState> = queues.iter().map(|q| q.queue.state()).collect();
        self.shared.active_pairs.store(1, Ordering::SeqCst);
        if let Err(e) = self.start(&mem, &interrupt, &queues, acked_features, layout) {
            self.stop_links();
            interrupt.set_sticky_used_ring(false);
            return Err(ActivateError::Worker(std::io::Error::other(e.to_string())));
        }
        if let Some(c) = layout.ctrl {
            let Some(q) = queues.into_iter().nth(c) else {
                self.reset();
                return Err(ActivateError::QueueNotReady(c));
            };
            let h = CtrlHandler {
                shared: self.shared.clone(),
                mq: layout.pairs > 1,
            };
            let thread = format!("{}-ctrl", self.name);
            if let Err(e) = self
                .ctrl
                .start(&thread, h, mem.clone(), interrupt.clone(), vec![q])
            {
                self.stop_links();
                interrupt.set_sticky_used_ring(false);
                return Err(e.into());
            }
        }
        self.active = Some(Active {
            mem,
            interrupt,
            queues: states,
            layout,
            paused: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.ctrl.retire();
        self.stop_links();
        for l in &self.links {
            // Until a driver negotiates them again, the guest can take no offloaded frames.
            let _ = l.tap().set_offload(0);
        }
        self.shared.active_pairs.store(1, Ordering::SeqCst);
        if let Some(a) = self.active.take() {
            a.interrupt.set_sticky_used_ring(false);
        }
    }

    fn pause(&mut self) -> Result<(), WorkerError> {
        let Some(active) = &mut self.active else {
            return Ok(());
        };
        // The control queue first: it attaches and detaches pairs.
        let mut result = self.ctrl.pause();
        for (i, l) in self.links.iter().enumerate() {
            if let Err(e) = l.set_paused(true) {
                tracing::error!("{}: cannot pause queue pair {i}: {e}", self.name);
                if result.is_ok() {
                    result = Err(WorkerError::Gone(format!("{} (vhost-net: {e})", self.name)));
                }
            }
        }
        active.paused = true;
        result
    }

    fn resume(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        for (i, l) in self.links.iter().enumerate() {
            if let Err(e) = l.set_paused(false) {
                tracing::error!(
                    "{}: cannot resume queue pair {i}: {e}; the device needs a reset",
                    self.name
                );
                active.interrupt.set_needs_reset();
            }
        }
        active.paused = false;
        self.ctrl.resume();
    }

    fn worker_stats(&self) -> WorkerCounts {
        self.ctrl.counts()
    }

    fn device_state(&self) -> Vec<u8> {
        // The queue pairs the driver asked for (VQ_PAIRS_SET), as the userspace device
        // keeps them: a snapshot restores with either device.
        self.active_pairs().to_le_bytes().to_vec()
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
        let running = self.active.as_ref().map_or(0, |a| a.layout.pairs);
        if n == 0 || usize::from(n) > running {
            return Err(format!(
                "{}: {n} queue pairs in use, but {running} are set up",
                self.name
            ));
        }
        self.shared.set_active_pairs(n);
        Ok(())
    }

    fn queue_states(&self) -> Result<Vec<QueueState>, String> {
        let Some(a) = &self.active else {
            return Err(format!("{} is not active", self.name));
        };
        if !a.paused {
            return Err(format!(
                "{}: the kernel moves its rings while the device runs; pause it first",
                self.name
            ));
        }
        let mut states = a.queues.clone();
        for (i, l) in self.links.iter().enumerate().take(a.layout.pairs) {
            for (vring, q) in [(VRING_RX, 2 * i), (VRING_TX, 2 * i + 1)] {
                let Some(next_avail) = l.vring_base(vring).map_err(|e| e.to_string())? else {
                    return Err(format!("{}: queue pair {i} is not running", self.name));
                };
                let s = &mut states[q];
                let mut idx = [0u8; 2];
                a.mem
                    .read_slice(
                        &mut idx,
                        GuestAddress(s.used_ring).unchecked_add(kern::USED_IDX_OFFSET),
                    )
                    .map_err(|e| format!("{}: queue {q}: used ring: {e}", self.name))?;
                s.next_avail = next_avail;
                s.next_used = u16::from_le_bytes(idx);
            }
        }
        if let Some(c) = a.layout.ctrl {
            let ctrl = self
                .ctrl
                .queue_states()
                .map_err(|e| format!("{}: control queue: {e}", self.name))?;
            match ctrl.into_iter().next() {
                Some(s) => states[c] = s,
                None => return Err(format!("{}: the control queue is gone", self.name)),
            }
        }
        Ok(states)
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests;
