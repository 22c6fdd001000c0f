//! virtio-balloon, the traditional memory balloon (virtio 1.2, section 5.5): the host asks
//! the guest for memory (`num_pages`), the guest hands pages over on the inflate queue and
//! the device gives their host memory back (`madvise(MADV_DONTNEED)`); pages taken back on
//! the deflate queue simply fault in again. Optionally the guest reports memory statistics
//! on the stats queue (polled every `stats_interval_s`) and the pages it frees on the free
//! page reporting queue, which are given back like inflated ones.
//!
//! - `handler` is the worker's [`QueueHandler`](super::worker::QueueHandler): every queue,
//!   and the statistics timer;
//! - `memory` is the only place that touches the host mapping of guest RAM;
//! - `stats` parses the guest's statistics;
//! - [`BalloonControl`] is what the VMM keeps to act on the device while the guest runs.
//!
//! Queue layout: inflateq, deflateq, then statsq if STATS_VQ, free_page_vq if
//! FREE_PAGE_HINT (never offered here) and reporting_vq if PAGE_REPORTING. A queue whose
//! feature is absent takes no index (this is how Linux, QEMU and Firecracker number them),
//! so the indices of the later queues depend on the features: see [`QueueLayout`].

mod handler;
mod memory;
mod stats;
mod timer;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::worker::WorkerSlot;
use super::{
    device_type, features, ActivateError, ActiveQueue, GuestMemoryMmap, Interrupt, VirtioDevice,
};
use handler::BalloonHandler;
use stats::GuestStats;
use timer::StatsTimer;

pub use memory::{PAGE_SHIFT, PAGE_SIZE};
pub use stats::{BalloonStats, MAX_STATS_ENTRIES, STAT_SIZE};

/// The size of every queue.
pub const QUEUE_SIZE: u16 = 256;

/// 4 KiB balloon pages per MiB.
pub const PAGES_PER_MIB: u32 = 256;

/// The most page frame numbers read from one inflate or deflate chain (Linux sends at most
/// 256 per chain); the rest of a longer chain is dropped, so that one chain cannot keep the
/// worker busy for long.
pub const MAX_PFNS_PER_CHAIN: usize = 1 << 16;

/// virtio-balloon feature bits (virtio 1.2, section 5.5.3).
pub mod balloon_features {
    /// The host must be told before the guest reuses deflated pages (not offered).
    pub const MUST_TELL_HOST: u64 = 1 << 0;
    /// A statistics queue is present.
    pub const STATS_VQ: u64 = 1 << 1;
    /// The guest may deflate the balloon when it runs out of memory.
    pub const DEFLATE_ON_OOM: u64 = 1 << 2;
    /// Free page hinting, with its queue (not offered).
    pub const FREE_PAGE_HINT: u64 = 1 << 3;
    /// The guest writes `poison_val` into freed pages (not offered).
    pub const PAGE_POISON: u64 = 1 << 4;
    /// Free page reporting, with its queue.
    pub const PAGE_REPORTING: u64 = 1 << 5;
}

/// Offsets in the configuration space (`struct virtio_balloon_config`, all `le32`).
pub mod config_offset {
    /// The number of pages the host wants in the balloon (written by the device).
    pub const NUM_PAGES: usize = 0;
    /// The number of pages in the balloon (written by the driver).
    pub const ACTUAL: usize = 4;
    /// Free page hinting command (read-only for the driver; always STOP here).
    pub const FREE_PAGE_HINT_CMD_ID: usize = 8;
    /// Page poison value (only meaningful with PAGE_POISON, which is not offered).
    pub const POISON_VAL: usize = 12;
    /// The size of the configuration space.
    pub const SIZE: usize = 16;
}

/// `free_page_hint_cmd_id` value: no hinting run (virtio 1.2, 5.5.6.5).
pub const FREE_PAGE_HINT_CMD_ID_STOP: u32 = 0;

/// How the balloon is set up (the Firecracker `Balloon` API object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonConfig {
    /// The target size of the balloon, in MiB.
    pub amount_mib: u32,
    /// Offer DEFLATE_ON_OOM: the guest may take pages back when it runs short.
    pub deflate_on_oom: bool,
    /// Seconds between statistics updates; 0 disables statistics (no stats queue).
    pub stats_interval_s: u16,
    /// Offer free page reporting (a reporting queue).
    pub free_page_reporting: bool,
}

/// What went wrong with the balloon.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The target does not fit the 32-bit page count.
    #[error("balloon target {mib} MiB does not fit the 32-bit count of 4 KiB pages (at most {max} MiB)", max = u32::MAX / PAGES_PER_MIB)]
    TargetTooLarge {
        /// The requested target.
        mib: u32,
    },
    /// The target is more than the guest has.
    #[error("balloon target {mib} MiB is more than the guest's {guest_mib} MiB of memory")]
    TargetAboveMemory {
        /// The requested target.
        mib: u32,
        /// The guest's memory.
        guest_mib: u64,
    },
    /// Statistics were not enabled when the device was created.
    #[error("balloon statistics were not enabled when the device was created (stats interval 0): the stats queue cannot be added to a running device")]
    StatsNotEnabled,
    /// The interval cannot go to 0 once statistics are on.
    #[error("the balloon statistics interval cannot be set to 0: the stats queue exists for the device's lifetime")]
    StatsCannotBeDisabled,
    /// The statistics timer.
    #[error("balloon statistics timer: {0}")]
    Timer(#[source] std::io::Error),
}

/// What the device did (across resets).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BalloonCounts {
    /// Pages of guest RAM the guest put in the balloon (duplicates within one request counted
    /// once).
    pub inflated_pages: u64,
    /// Pages of guest RAM the guest took back out of the balloon.
    pub deflated_pages: u64,
    /// Bytes of free guest memory the guest reported and the host took back.
    pub reported_bytes: u64,
    /// Statistics buffers the guest posted.
    pub stats_updates: u64,
    /// Entries skipped: page frame numbers outside guest RAM, malformed descriptors
    /// (writable where they must be readable or the reverse, misaligned, outside guest
    /// memory), statistics entries past [`MAX_STATS_ENTRIES`] or cut short.
    pub dropped_entries: u64,
    /// `madvise` calls that failed (memory stays with the guest's process).
    pub discard_failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    inflated_pages: AtomicU64,
    deflated_pages: AtomicU64,
    reported_bytes: AtomicU64,
    stats_updates: AtomicU64,
    dropped_entries: AtomicU64,
    discard_failures: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> BalloonCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BalloonCounts {
            inflated_pages: get(&self.inflated_pages),
            deflated_pages: get(&self.deflated_pages),
            reported_bytes: get(&self.reported_bytes),
            stats_updates: get(&self.stats_updates),
            dropped_entries: get(&self.dropped_entries),
            discard_failures: get(&self.discard_failures),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Where each queue is, for one set of features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// The statistics queue, if STATS_VQ.
    pub stats: Option<usize>,
    /// The free page hinting queue, if FREE_PAGE_HINT (never offered by this device: it
    /// only takes an index).
    pub hint: Option<usize>,
    /// The free page reporting queue, if PAGE_REPORTING.
    pub reporting: Option<usize>,
    /// How many queues there are.
    pub count: usize,
}

/// What a queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    /// Pages going into the balloon.
    Inflate,
    /// Pages coming out of it.
    Deflate,
    /// Memory statistics.
    Stats,
    /// Free page hints (not served).
    Hint,
    /// Freed guest pages.
    Reporting,
}

impl QueueLayout {
    /// The inflate queue's index.
    pub const INFLATE: usize = 0;
    /// The deflate queue's index.
    pub const DEFLATE: usize = 1;

    /// The queues present with `features`, numbered consecutively in the spec's order.
    pub fn for_features(features: u64) -> Self {
        let mut next = 2;
        let mut take = |bit: u64| {
            (features & bit != 0).then(|| {
                next += 1;
                next - 1
            })
        };
        let stats = take(balloon_features::STATS_VQ);
        let hint = take(balloon_features::FREE_PAGE_HINT);
        let reporting = take(balloon_features::PAGE_REPORTING);
        QueueLayout {
            stats,
            hint,
            reporting,
            count: next,
        }
    }

    /// What queue `index` is for (`None`: no such queue).
    pub fn role(&self, index: usize) -> Option<QueueRole> {
        match index {
            Self::INFLATE => Some(QueueRole::Inflate),
            Self::DEFLATE => Some(QueueRole::Deflate),
            i if Some(i) == self.stats => Some(QueueRole::Stats),
            i if Some(i) == self.hint => Some(QueueRole::Hint),
            i if Some(i) == self.reporting => Some(QueueRole::Reporting),
            _ => None,
        }
    }
}

/// The device while the driver runs it.
#[derive(Debug, Clone)]
struct Active {
    interrupt: Arc<Interrupt>,
    mem_bytes: u64,
}

/// State shared by the device (vCPU thread, through the transport), its worker and the
/// VMM's [`BalloonControl`].
#[derive(Debug)]
struct Shared {
    name: String,
    num_pages: AtomicU32,
    actual_pages: AtomicU32,
    poison_val: AtomicU32,
    stats_interval_s: AtomicU16,
    /// The features offered (fixed at creation).
    avail_features: u64,
    active: Mutex<Option<Active>>,
    guest_stats: Mutex<Option<GuestStats>>,
    /// The statistics timer (present iff statistics are offered).
    timer: Option<StatsTimer>,
    counters: Counters,
}

/// Locks `m`; a poisoned lock (a panic while holding it) still holds consistent plain data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn mib_to_pages(mib: u32) -> Result<u32, BalloonError> {
    mib.checked_mul(PAGES_PER_MIB)
        .ok_or(BalloonError::TargetTooLarge { mib })
}

/// The memory balloon.
#[derive(Debug)]
pub struct Balloon {
    queue_sizes: Vec<u16>,
    shared: Arc<Shared>,
    worker: WorkerSlot,
}

impl Balloon {
    /// A new, inactive balloon called `name` (logs, the worker thread's name).
    pub fn new(name: &str, cfg: BalloonConfig) -> Result<Balloon, BalloonError> {
        let num_pages = mib_to_pages(cfg.amount_mib)?;
        let mut avail_features = features::VERSION_1;
        if cfg.deflate_on_oom {
            avail_features |= balloon_features::DEFLATE_ON_OOM;
        }
        let stats_offered = cfg.stats_interval_s > 0;
        if stats_offered {
            avail_features |= balloon_features::STATS_VQ;
        }
        if cfg.free_page_reporting {
            avail_features |= balloon_features::PAGE_REPORTING;
        }
        let timer = if stats_offered {
            Some(StatsTimer::new().map_err(BalloonError::Timer)?)
        } else {
            None
        };
        let layout = QueueLayout::for_features(avail_features);
        Ok(Balloon {
            queue_sizes: vec![QUEUE_SIZE; layout.count],
            shared: Arc::new(Shared {
                name: name.to_string(),
                num_pages: AtomicU32::new(num_pages),
                actual_pages: AtomicU32::new(0),
                poison_val: AtomicU32::new(0),
                stats_interval_s: AtomicU16::new(cfg.stats_interval_s),
                avail_features,
                active: Mutex::new(None),
                guest_stats: Mutex::new(None),
                timer,
                counters: Counters::default(),
            }),
            worker: WorkerSlot::default(),
        })
    }

    /// The handle the VMM keeps to steer the balloon while the guest runs.
    pub fn control(&self) -> BalloonControl {
        BalloonControl {
            shared: self.shared.clone(),
        }
    }

    /// The queues with the features this device offers (all of them when the driver accepts
    /// every offered feature, as Linux does).
    pub fn layout(&self) -> QueueLayout {
        QueueLayout::for_features(self.shared.avail_features)
    }

    fn config_bytes(&self) -> [u8; config_offset::SIZE] {
        let s = &self.shared;
        let mut b = [0u8; config_offset::SIZE];
        let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(config_offset::NUM_PAGES, s.num_pages.load(Ordering::SeqCst));
        put(config_offset::ACTUAL, s.actual_pages.load(Ordering::SeqCst));
        put(
            config_offset::FREE_PAGE_HINT_CMD_ID,
            FREE_PAGE_HINT_CMD_ID_STOP,
        );
        put(
            config_offset::POISON_VAL,
            s.poison_val.load(Ordering::SeqCst),
        );
        b
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.shared.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_window(&self.config_bytes(), offset, data);
    }

    /// The driver writes `actual` (and, with PAGE_POISON, which is not offered, `poison_val`);
    /// `num_pages` and `free_page_hint_cmd_id` are read-only for it. A write covering only
    /// part of a field replaces those bytes.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut actual = self
            .shared
            .actual_pages
            .load(Ordering::SeqCst)
            .to_le_bytes();
        let mut poison = self.shared.poison_val.load(Ordering::SeqCst).to_le_bytes();
        let (mut wrote_actual, mut wrote_poison, mut ignored) = (false, false, false);
        for (i, &byte) in data.iter().enumerate() {
            let at = offset.saturating_add(i as u64);
            match at {
                4..=7 => {
                    actual[(at - 4) as usize] = byte;
                    wrote_actual = true;
                }
                12..=15 => {
                    poison[(at - 12) as usize] = byte;
                    wrote_poison = true;
                }
                _ => ignored = true,
            }
        }
        if wrote_actual {
            let pages = u32::from_le_bytes(actual);
            let old = self.shared.actual_pages.swap(pages, Ordering::SeqCst);
            if old != pages {
                tracing::debug!(
                    "{}: the guest's balloon holds {pages} pages ({} MiB; target {} pages)",
                    self.name(),
                    pages / PAGES_PER_MIB,
                    self.shared.num_pages.load(Ordering::SeqCst)
                );
            }
        }
        if wrote_poison {
            self.shared
                .poison_val
                .store(u32::from_le_bytes(poison), Ordering::SeqCst);
        }
        if ignored {
            tracing::debug!(
                "{}: {}-byte config write at {offset:#x} touches read-only or absent fields; those bytes are ignored",
                self.name(),
                data.len()
            );
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        // The guest numbers the queues after the features it accepted: a driver that
        // declines STATS_VQ puts the reporting queue at index 2.
        let layout = QueueLayout::for_features(acked_features & self.shared.avail_features);
        if layout.count > queues.len() {
            return Err(ActivateError::QueueNotReady(queues.len()));
        }
        if let Some(t) = &self.shared.timer {
            t.disarm().map_err(ActivateError::Worker)?;
        }
        let mem_bytes = mem.iter().map(|r| r.len()).sum();
        *lock(&self.shared.active) = Some(Active {
            interrupt: interrupt.clone(),
            mem_bytes,
        });
        let handler = BalloonHandler::new(self.shared.clone(), layout);
        let name = self.shared.name.clone();
        if let Err(e) = self.worker.start(&name, handler, mem, interrupt, queues) {
            *lock(&self.shared.active) = None;
            return Err(e.into());
        }
        tracing::debug!(
            "{name}: active with features {acked_features:#x}, queues {layout:?}, target {} pages",
            self.shared.num_pages.load(Ordering::SeqCst)
        );
        Ok(())
    }

    /// The worker stops; the new driver starts with an empty balloon (`actual` 0) and no
    /// statistics. The target stays: it is the host's wish.
    fn reset(&mut self) {
        self.worker.retire();
        *lock(&self.shared.active) = None;
        *lock(&self.shared.guest_stats) = None;
        self.shared.actual_pages.store(0, Ordering::SeqCst);
        self.shared.poison_val.store(0, Ordering::SeqCst);
        if let Some(t) = &self.shared.timer {
            if let Err(e) = t.disarm() {
                tracing::warn!("{}: cannot disarm the statistics timer: {e}", self.name());
            }
        }
    }

    fn worker_slot(&self) -> Option<&WorkerSlot> {
        Some(&self.worker)
    }

    fn device_state(&self) -> Vec<u8> {
        // What the driver wrote: `actual` and `poison_val` (the target is the VMM's, in its
        // configuration).
        let s = &self.shared;
        let mut b = s.actual_pages.load(Ordering::SeqCst).to_le_bytes().to_vec();
        b.extend_from_slice(&s.poison_val.load(Ordering::SeqCst).to_le_bytes());
        b
    }

    fn restore_device_state(&mut self, state: &[u8]) -> Result<(), String> {
        let [a0, a1, a2, a3, p0, p1, p2, p3] = state else {
            return Err(format!(
                "{}: a saved balloon state of {} bytes (8 expected)",
                self.name(),
                state.len()
            ));
        };
        self.shared
            .actual_pages
            .store(u32::from_le_bytes([*a0, *a1, *a2, *a3]), Ordering::SeqCst);
        self.shared
            .poison_val
            .store(u32::from_le_bytes([*p0, *p1, *p2, *p3]), Ordering::SeqCst);
        Ok(())
    }
}

/// The VMM's handle on a [`Balloon`] (cheap to clone; usable from any thread, before and
/// after activation).
#[derive(Debug, Clone)]
pub struct BalloonControl {
    shared: Arc<Shared>,
}

impl BalloonControl {
    /// Sets the balloon's target and, if the driver is running, tells it (a
    /// configuration-change interrupt). Once the device is active the target may not exceed
    /// the guest's memory.
    ///
    /// The transport's `ConfigGeneration` does not change: `num_pages` is one 32-bit field,
    /// which the driver reads in one access.
    pub fn set_target_mib(&self, mib: u32) -> Result<(), BalloonError> {
        let pages = mib_to_pages(mib)?;
        let active = lock(&self.shared.active).clone();
        if let Some(a) = &active {
            let guest_mib = a.mem_bytes >> 20;
            if u64::from(mib) > guest_mib {
                return Err(BalloonError::TargetAboveMemory { mib, guest_mib });
            }
        }
        self.shared.num_pages.store(pages, Ordering::SeqCst);
        tracing::info!("{}: balloon target {mib} MiB", self.shared.name);
        if let Some(a) = active {
            a.interrupt.signal_config_change();
        }
        Ok(())
    }

    /// The target, in MiB.
    pub fn target_mib(&self) -> u32 {
        self.target_pages() / PAGES_PER_MIB
    }

    /// The target, in 4 KiB pages (`num_pages`).
    pub fn target_pages(&self) -> u32 {
        self.shared.num_pages.load(Ordering::SeqCst)
    }

    /// What the guest says the balloon holds, in MiB (rounded down).
    pub fn actual_mib(&self) -> u32 {
        self.actual_pages() / PAGES_PER_MIB
    }

    /// What the guest says the balloon holds, in 4 KiB pages (`actual`).
    pub fn actual_pages(&self) -> u32 {
        self.shared.actual_pages.load(Ordering::SeqCst)
    }

    /// Changes how often the guest is asked for statistics. Statistics cannot be turned on
    /// or off after creation (the stats queue exists or not); a change takes effect at once:
    /// the buffer the device holds goes back to the guest now, asking for fresh statistics,
    /// and the next request follows after the new interval.
    pub fn set_stats_interval(&self, secs: u16) -> Result<(), BalloonError> {
        let s = &self.shared;
        let Some(timer) = &s.timer else {
            return if secs == 0 {
                Ok(())
            } else {
                Err(BalloonError::StatsNotEnabled)
            };
        };
        if secs == 0 {
            return Err(BalloonError::StatsCannotBeDisabled);
        }
        if s.stats_interval_s.swap(secs, Ordering::SeqCst) == secs {
            return Ok(());
        }
        // Armed means the worker holds a buffer and waits to return it.
        if timer.is_armed().map_err(BalloonError::Timer)? {
            timer
                .arm(Duration::from_nanos(1))
                .map_err(BalloonError::Timer)?;
        }
        tracing::info!("{}: balloon statistics every {secs} s", s.name);
        Ok(())
    }

    /// The statistics interval in seconds (0: statistics are off).
    pub fn stats_interval_s(&self) -> u16 {
        self.shared.stats_interval_s.load(Ordering::SeqCst)
    }

    /// The latest statistics the guest reported, with the target and actual sizes now.
    /// `None` if statistics are off or the guest has not reported any since its driver
    /// started.
    pub fn stats(&self) -> Option<BalloonStats> {
        let guest = (*lock(&self.shared.guest_stats))?;
        Some(BalloonStats::new(
            self.target_pages(),
            self.actual_pages(),
            &guest,
        ))
    }

    /// The configuration as it is now (current target and interval).
    pub fn config(&self) -> BalloonConfig {
        let offered = |bit| self.shared.avail_features & bit != 0;
        BalloonConfig {
            amount_mib: self.target_mib(),
            deflate_on_oom: offered(balloon_features::DEFLATE_ON_OOM),
            stats_interval_s: self.stats_interval_s(),
            free_page_reporting: offered(balloon_features::PAGE_REPORTING),
        }
    }

    /// What the device did.
    pub fn counts(&self) -> BalloonCounts {
        self.shared.counters.snapshot()
    }
}
