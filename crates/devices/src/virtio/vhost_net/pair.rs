//! One queue pair of the device: its tap queue and, while the device is active, the vhost
//! instance that moves its frames; and the control queue's worker, which switches pairs on
//! and off (`VQ_PAIRS_SET`) through the userspace device's own command handling
//! (`net::ctrl`), seeing each pair as a [`NetBackend`] whose only real operation is being
//! attached or detached.
//!
//! The kernel is attached to a pair's rings (`VHOST_NET_SET_BACKEND` with the tap) exactly
//! while the guest uses the pair and the device is not paused; otherwise the backend is
//! `-1` and the kernel does not touch the rings or guest memory.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use super::kern::Instance;
use super::VhostNetError;
use crate::virtio::net::ctrl;
use crate::virtio::net::{FrameBufs, NetBackend, Recv, Shared, Tap};
use crate::virtio::worker::{QueueHandler, WorkerCtx};

#[derive(Debug, Default)]
struct LinkState {
    /// The kernel's instance for this pair, while the device is active.
    vhost: Option<Instance>,
    /// The guest uses this pair (pair 0 always, others after `VQ_PAIRS_SET`).
    enabled: bool,
    /// The device is paused: no backend whatever the guest wants.
    paused: bool,
    /// The tap is the kernel's backend now.
    attached: bool,
}

/// A queue pair's tap queue and kernel instance.
#[derive(Debug)]
pub struct PairLink {
    index: usize,
    tap: Tap,
    /// A second descriptor of the tap queue (the same open file) for
    /// `VHOST_NET_SET_BACKEND`, which the crate takes as a `File`.
    tap_file: File,
    state: Mutex<LinkState>,
}

impl PairLink {
    /// Pair `index` over `tap`.
    pub fn new(index: usize, tap: Tap) -> io::Result<PairLink> {
        let tap_file = File::from(NetBackend::fd(&tap).try_clone_to_owned()?);
        Ok(PairLink {
            index,
            tap,
            tap_file,
            state: Mutex::new(LinkState::default()),
        })
    }

    /// The tap queue.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // The state stays consistent at every step; a panic elsewhere does not spoil it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the backend to what the state asks for.
    fn apply(&self, st: &mut LinkState) -> Result<(), VhostNetError> {
        let Some(vhost) = &st.vhost else {
            st.attached = false;
            return Ok(());
        };
        let want = st.enabled && !st.paused;
        if want == st.attached {
            return Ok(());
        }
        match vhost.set_backend(want.then_some(&self.tap_file)) {
            Ok(()) => {
                st.attached = want;
                Ok(())
            }
            Err(e) => {
                if want {
                    // Half attached (one ring): take both back.
                    let _ = vhost.set_backend(None);
                }
                Err(e)
            }
        }
    }

    /// Hands the pair to `vhost` (set up, no backend yet), the kernel running it at once
    /// if the guest uses it (`enabled`).
    pub fn start(&self, vhost: Instance, enabled: bool) -> Result<(), VhostNetError> {
        let mut st = self.lock();
        *st = LinkState {
            vhost: Some(vhost),
            enabled,
            paused: false,
            attached: false,
        };
        self.apply(&mut st)
    }

    /// The guest starts or stops using the pair: the tap queue is attached before the
    /// kernel may use it and detached after it stopped (a multi-queue tap steers frames
    /// only to attached queues).
    pub fn set_enabled(&self, on: bool) -> Result<(), VhostNetError> {
        let tap_err = |source| VhostNetError::Tap {
            name: self.tap.name().into(),
            op: if on {
                "TUNSETQUEUE(IFF_ATTACH_QUEUE)"
            } else {
                "TUNSETQUEUE(IFF_DETACH_QUEUE)"
            },
            source,
        };
        let mut st = self.lock();
        if on {
            self.tap.set_queue_enabled(true).map_err(tap_err)?;
        }
        st.enabled = on;
        self.apply(&mut st)?;
        if !on {
            self.tap.set_queue_enabled(false).map_err(tap_err)?;
        }
        Ok(())
    }

    /// Pausing (`true`): the kernel stops touching the rings and guest memory before this
    /// returns. Resuming (`false`): it continues where it was (kicks and frames that arrived
    /// meanwhile are waiting in the eventfd and the tap).
    pub fn set_paused(&self, paused: bool) -> Result<(), VhostNetError> {
        let mut st = self.lock();
        st.paused = paused;
        self.apply(&mut st)
    }

    /// Stops the kernel and closes its instance (device reset).
    pub fn stop(&self) {
        let mut st = self.lock();
        if let Some(vhost) = st.vhost.take() {
            if st.attached {
                if let Err(e) = vhost.set_backend(None) {
                    // Closing the descriptor below stops the kernel all the same.
                    tracing::warn!("queue pair {}: {e}", self.index);
                }
            }
        }
        *st = LinkState::default();
    }

    /// Whether the tap is the kernel's backend now.
    pub fn is_attached(&self) -> bool {
        self.lock().attached
    }

    /// The kernel's next available index of `vring` (`None`: no instance).
    pub fn vring_base(&self, vring: usize) -> Result<Option<u16>, VhostNetError> {
        let st = self.lock();
        st.vhost.as_ref().map(|v| v.vring_base(vring)).transpose()
    }
}

/// A pair as the control queue's command handling sees it.
pub struct PairBackend(pub Arc<PairLink>);

fn kernel_moves_frames() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "the kernel's vhost-net moves this queue pair's frames",
    )
}

impl NetBackend for PairBackend {
    fn fd(&self) -> BorrowedFd<'_> {
        NetBackend::fd(&self.0.tap)
    }

    fn has_vnet_hdr(&self) -> bool {
        true
    }

    fn recv(&mut self, _frame: &mut FrameBufs<'_>) -> io::Result<Recv> {
        Err(kernel_moves_frames())
    }

    fn send(&mut self, _frame: &mut FrameBufs<'_>) -> io::Result<()> {
        Err(kernel_moves_frames())
    }

    fn set_offload(&self, tun_flags: u32) -> io::Result<()> {
        self.0.tap.set_offload(tun_flags)
    }

    fn set_queue_enabled(&self, enabled: bool) -> io::Result<()> {
        self.0.set_enabled(enabled).map_err(io::Error::other)
    }

    fn name(&self) -> &str {
        self.0.tap.name()
    }
}

impl std::fmt::Debug for PairBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PairBackend({}, fd {})",
            self.0.index,
            self.0.tap.as_raw_fd()
        )
    }
}

/// The control queue's worker (its only queue is index 0).
pub struct CtrlHandler {
    pub shared: Arc<Shared>,
    pub mq: bool,
}

impl QueueHandler for CtrlHandler {
    fn thread_kind(&self) -> seccomp::ThreadKind {
        seccomp::ThreadKind::VhostNet
    }

    fn queue_notified(&mut self, index: usize, ctx: &mut WorkerCtx) {
        if index != 0 {
            return;
        }
        let shared = self.shared.clone();
        let mq = self.mq;
        ctx.drain_queue(0, |mem, chain| Some(ctrl::handle(mem, chain, &shared, mq)));
    }
}
