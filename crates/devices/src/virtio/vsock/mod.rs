//! virtio-vsock (virtio 1.2, section 5.10): stream sockets between the guest and host
//! processes, over host Unix sockets the way Firecracker does it (`docs/vsock.md`):
//!
//! - host-initiated: a host process connects to the listener at `uds_path` and writes
//!   `CONNECT <port>\n`; the device sends the guest a REQUEST to `port` and, once the guest
//!   answers RESPONSE, writes `OK <local_port>\n` back (the host-side port the device
//!   picked), after which the socket carries the stream;
//! - guest-initiated: a guest connection to CID 2 port `P` makes the device connect to the
//!   Unix socket `<uds_path>_<P>`; RESPONSE if a listener accepts, RST otherwise.
//!
//! Three queues: rx (device to guest), tx (guest to device), event (transport resets).
//! One worker thread serves everything; see `muxer` for how it waits without polling.
//!
//! - `packet`: the header and the guest buffers (every guest-controlled value is checked there);
//! - `conn`: one connection's state machine and credit accounting, without I/O;
//! - `sock`: the Unix sockets;
//! - `muxer`: the worker's handler (connections, epoll, timers).

mod conn;
mod muxer;
pub mod packet;
mod sock;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::WorkerSlot;
use super::{
    device_type, features, ActivateError, ActiveQueue, GuestMemoryMmap, Interrupt, VirtioDevice,
};

/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;

/// Bytes of the configuration space (`le64 guest_cid`).
pub const CONFIG_SIZE: usize = 8;

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the event id the device posts when every
/// connection was lost (after a snapshot restore, say); the driver resets its sockets and
/// reads `guest_cid` again.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// The first host-side port the device hands host-initiated connections (Firecracker's too).
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// The longest timeout [`VsockLimits`] may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest per-connection buffer [`VsockLimits::buf_alloc`] may set.
pub const MAX_BUF_ALLOC: u32 = 16 << 20;

/// Limits of one device. [`VsockLimits::default`] is what [`Vsock::new`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsockLimits {
    /// Connections at once (host sockets still sending their `CONNECT` line included);
    /// more are refused (RST to the guest, the socket closed for a host process).
    pub max_connections: usize,
    /// The buffer, per connection, for guest bytes the host process has not read yet: the
    /// `buf_alloc` the device advertises. A guest sending beyond it is reset.
    pub buf_alloc: u32,
    /// How long a host process has to send its `CONNECT` line.
    pub connect_line_timeout: Duration,
    /// How long the guest has to answer a host-initiated REQUEST.
    pub request_timeout: Duration,
    /// How long a connection closed one way has to finish (the guest's RST after the
    /// device's SHUTDOWN, or the host reading what the guest sent before its SHUTDOWN).
    pub close_timeout: Duration,
}

impl VsockLimits {
    fn check(&self) -> Result<(), VsockError> {
        if self.max_connections == 0 {
            return Err(VsockError::Limits("max_connections must not be 0".into()));
        }
        if self.buf_alloc == 0 || self.buf_alloc > MAX_BUF_ALLOC {
            return Err(VsockError::Limits(format!(
                "buf_alloc {} is not in 1..={MAX_BUF_ALLOC}",
                self.buf_alloc
            )));
        }
        for (what, t) in [
            ("connect_line_timeout", self.connect_line_timeout),
            ("request_timeout", self.request_timeout),
            ("close_timeout", self.close_timeout),
        ] {
            if t.is_zero() || t > MAX_TIMEOUT {
                return Err(VsockError::Limits(format!(
                    "{what} {t:?} is not in (0, {MAX_TIMEOUT:?}]"
                )));
            }
        }
        Ok(())
    }
}

impl Default for VsockLimits {
    fn default() -> Self {
        VsockLimits {
            max_connections: 1024,
            buf_alloc: 128 << 10,
            connect_line_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a vsock device cannot be created or asked something. Every message names the socket
/// path or the CID.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved: a guest CID is at least 3 and below {max}", max = u32::MAX)]
    ReservedCid(u64),
    #[error("{}: another process is listening on this vsock socket", path.display())]
    InUse { path: PathBuf },
    #[error("{}: exists and is not a socket; not replacing it", path.display())]
    NotASocket { path: PathBuf },
    #[error("{}: cannot remove the stale vsock socket: {source}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot listen on the vsock socket: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock limits: {0}")]
    Limits(String),
    #[error("vsock device {0} is not active (the guest driver has not set it up)")]
    NotActive(String),
    #[error("cannot wake the worker of vsock device {name}: {source}")]
    Wake {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create an eventfd for vsock device {name}: {source}")]
    EventFd {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the device did, counted by its worker and read by anyone.
///
/// rx and tx are from the guest's point of view, as for virtio-net: rx packets went to the
/// guest (data and control), tx packets came from it (valid ones; the rest are `dropped`).
#[derive(Debug, Default)]
pub struct VsockStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Connections set up (a host `CONNECT` line parsed, or a guest REQUEST a host
    /// listener accepted).
    pub connections_opened: AtomicU64,
    /// Connections ended, however.
    pub connections_closed: AtomicU64,
    /// Connections of those that ended abortively (an RST either way, not answering an
    /// orderly shutdown; a timeout; a host socket error).
    pub connections_reset: AtomicU64,
    /// Connection attempts refused before becoming connections: guest REQUESTs nobody
    /// accepted, host sockets with a bad or late `CONNECT` line, either beyond the limit.
    pub connections_refused: AtomicU64,
    /// Connections open now.
    pub connections_active: AtomicU64,
    /// Guest packets dropped: malformed, wrong CIDs, unsupported type, unknown connection,
    /// and replies the device could not queue.
    pub dropped_packets: AtomicU64,
    /// Times the worker woke up for its sockets or timers (queue notifications are in
    /// [`VirtioDevice::worker_stats`]).
    pub socket_wakeups: AtomicU64,
}

/// A copy of [`VsockStats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VsockCounts {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub connections_reset: u64,
    pub connections_refused: u64,
    pub connections_active: u64,
    pub dropped_packets: u64,
    pub socket_wakeups: u64,
}

impl VsockStats {
    /// The counts now.
    pub fn snapshot(&self) -> VsockCounts {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VsockCounts {
            rx_packets: g(&self.rx_packets),
            rx_bytes: g(&self.rx_bytes),
            tx_packets: g(&self.tx_packets),
            tx_bytes: g(&self.tx_bytes),
            connections_opened: g(&self.connections_opened),
            connections_closed: g(&self.connections_closed),
            connections_reset: g(&self.connections_reset),
            connections_refused: g(&self.connections_refused),
            connections_active: g(&self.connections_active),
            dropped_packets: g(&self.dropped_packets),
            socket_wakeups: g(&self.socket_wakeups),
        }
    }
}

/// What the device and its worker share: the transport-reset request.
#[derive(Debug)]
struct Shared {
    /// Written to wake the worker.
    kick: EventFd,
    /// A transport reset was asked for.
    reset_requested: AtomicBool,
}

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    name: String,
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// The socket file as bound, removed on drop if it is still that file.
    socket_file: sock::FileId,
    limits: VsockLimits,
    stats: Arc<VsockStats>,
    shared: Arc<Shared>,
    worker: WorkerSlot,
    active: bool,
}

impl Vsock {
    /// A device `name` ("vsock0": logs, thread name) giving the guest CID `guest_cid`,
    /// listening for host processes at `uds_path` (which must not be in use by a live
    /// listener; a stale socket file is replaced). Default [`VsockLimits`].
    pub fn new(name: &str, guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, VsockError> {
        Vsock::with_limits(name, guest_cid, uds_path, VsockLimits::default())
    }

    /// [`Vsock::new`] with other limits.
    pub fn with_limits(
        name: &str,
        guest_cid: u64,
        uds_path: PathBuf,
        limits: VsockLimits,
    ) -> Result<Vsock, VsockError> {
        if guest_cid <= packet::HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::ReservedCid(guest_cid));
        }
        limits.check()?;
        let (listener, socket_file) = sock::bind_listener(&uds_path)?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|source| VsockError::EventFd {
            name: name.to_owned(),
            source,
        })?;
        tracing::info!(
            "{name}: guest CID {guest_cid}, host socket {}",
            uds_path.display()
        );
        Ok(Vsock {
            name: name.to_owned(),
            guest_cid,
            uds_path,
            listener,
            socket_file,
            limits,
            stats: Arc::new(VsockStats::default()),
            shared: Arc::new(Shared {
                kick,
                reset_requested: AtomicBool::new(false),
            }),
            worker: WorkerSlot::default(),
            active: false,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Where host processes connect.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The device's counters.
    pub fn counts(&self) -> VsockCounts {
        self.stats.snapshot()
    }

    /// Drops every connection (host sockets closed, no RST to the guest) and posts
    /// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on the event queue (as soon as the driver has a
    /// buffer there): what the device does after a snapshot restore, when the host sockets
    /// the guest's connections used are gone.
    pub fn send_transport_reset(&self) -> Result<(), VsockError> {
        if !self.active {
            return Err(VsockError::NotActive(self.name.clone()));
        }
        self.shared.reset_requested.store(true, Ordering::SeqCst);
        self.shared
            .kick
            .write(1)
            .map_err(|source| VsockError::Wake {
                name: self.name.clone(),
                source,
            })
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.worker.stop();
        if sock::FileId::of(&self.uds_path) == Some(self.socket_file) {
            if let Err(e) = std::fs::remove_file(&self.uds_path) {
                tracing::debug!(
                    "{}: cannot remove {}: {e}",
                    self.name,
                    self.uds_path.display()
                );
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        // Stream sockets only: without F_SEQPACKET and F_NO_IMPLIED_STREAM, stream is implied.
        features::VERSION_1 | features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_window(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        self.reset();
        if queues.len() < 3 {
            return Err(ActivateError::QueueNotReady(queues.len()));
        }
        let listener = self.listener.try_clone()?;
        // A request made while inactive was refused; one left over from the last worker is moot.
        self.shared.reset_requested.store(false, Ordering::SeqCst);
        let _ = self.shared.kick.read();
        let handler = muxer::Muxer::new(muxer::Setup {
            name: self.name.clone(),
            guest_cid: self.guest_cid,
            uds_path: self.uds_path.clone(),
            limits: self.limits,
            listener,
            stats: self.stats.clone(),
            shared: self.shared.clone(),
        })?;
        tracing::debug!(
            "{}: activated (listener fd {})",
            self.name,
            self.listener.as_raw_fd()
        );
        self.worker
            .start(&self.name, handler, mem, interrupt, queues)?;
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.worker.retire();
        self.active = false;
        self.stats.connections_active.store(0, Ordering::Relaxed);
    }

    fn worker_slot(&self) -> Option<&WorkerSlot> {
        Some(&self.worker)
    }

    /// The queues where they are; the connections are not saved: after a restore the VMM
    /// sends a transport reset ([`Vsock::send_transport_reset`]) and the guest's sockets
    /// see their peers gone, as with Firecracker.
    /// A restored device tells the guest that its connections are gone.
    fn restore_device_state(&mut self, state: &[u8]) -> Result<(), String> {
        if !state.is_empty() {
            return Err(format!(
                "{}: the snapshot holds {} bytes of vsock state; this device keeps none",
                self.name,
                state.len()
            ));
        }
        self.send_transport_reset().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests;
