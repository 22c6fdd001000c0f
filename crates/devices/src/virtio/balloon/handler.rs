//! The balloon's worker: what each queue's chains mean, and the statistics timer.
//!
//! Everything here reads what the guest wrote and trusts none of it: descriptors of the
//! wrong direction or length are skipped, page frame numbers outside guest RAM are skipped,
//! every chain but the held statistics buffer goes back to the guest at once, and the
//! amount of work one chain can cause is bounded ([`MAX_PFNS_PER_CHAIN`],
//! [`MAX_STATS_ENTRIES`], the queue size for descriptors).

use std::fmt;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::memory::{coalesce, discard, PAGE_SHIFT, PAGE_SIZE};
use super::stats::{MAX_STATS_ENTRIES, STAT_SIZE};
use super::{add, lock, QueueLayout, QueueRole, Shared, MAX_PFNS_PER_CHAIN};
use crate::virtio::worker::{Chain, QueueHandler, WorkerCtx};
use crate::virtio::GuestMemoryMmap;

/// Page frame numbers read from guest memory at a time (and coalesced together).
const PFN_BATCH: usize = 1024;

/// At most one warning per this interval; the others are counted and the count is logged
/// with the next one.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Warnings about what the guest did, at a bounded rate (a guest must not be able to flood
/// the VMM's log).
#[derive(Debug, Default)]
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn warn(&mut self, args: fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            tracing::warn!("{args} ({} similar messages suppressed)", self.suppressed);
        } else {
            tracing::warn!("{args}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// What reading the page frame numbers of a chain skipped.
#[derive(Debug, Default)]
struct PfnRead {
    /// Descriptors that are device-writable or not a whole number of `u32`s.
    bad_descriptors: u64,
    /// Entries past [`MAX_PFNS_PER_CHAIN`].
    cut: u64,
    /// Entries whose array lies (partly) outside guest memory.
    unreadable: u64,
}

impl PfnRead {
    fn dropped(&self) -> u64 {
        self.bad_descriptors + self.cut + self.unreadable
    }
}

/// Reads the `le32` page frame number arrays in the device-readable descriptors of `chain`
/// and hands them to `batch` [`PFN_BATCH`] at a time (in `pfns`, which it may reorder).
fn read_pfns(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    pfns: &mut Vec<u32>,
    mut batch: impl FnMut(&mut Vec<u32>),
) -> PfnRead {
    let mut r = PfnRead::default();
    let mut raw = [0u8; PFN_BATCH * 4];
    let mut total = 0usize;
    pfns.clear();
    for desc in chain {
        let len = desc.len() as usize;
        if desc.is_write_only() || !len.is_multiple_of(4) {
            r.bad_descriptors += 1;
            continue;
        }
        let entries = len / 4;
        let take = entries.min(MAX_PFNS_PER_CHAIN - total);
        r.cut += (entries - take) as u64;
        let mut done = 0;
        while done < take {
            let n = (take - done).min(PFN_BATCH);
            let bytes = &mut raw[..n * 4];
            let ok = desc
                .addr()
                .checked_add(done as u64 * 4)
                .is_some_and(|at| mem.read_slice(bytes, at).is_ok());
            if !ok {
                r.unreadable += (take - done) as u64;
                break;
            }
            pfns.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            if pfns.len() >= PFN_BATCH {
                batch(pfns);
                pfns.clear();
            }
            done += n;
        }
        total += take;
    }
    if !pfns.is_empty() {
        batch(pfns);
        pfns.clear();
    }
    r
}

/// The per-chain work, apart from the queue bookkeeping.
struct Work {
    shared: Arc<Shared>,
    pfns: Vec<u32>,
    runs: Vec<(u64, u64)>,
    stats_buf: Vec<u8>,
    log: RateLimited,
}

impl Work {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn log_pfn_read(&mut self, queue: &str, r: &PfnRead) {
        if r.dropped() == 0 {
            return;
        }
        let name = self.shared.name.clone();
        add(&self.shared.counters.dropped_entries, r.dropped());
        self.log.warn(format_args!(
            "{name}: malformed {queue} request: {} descriptors writable or not a multiple of 4 bytes, {} entries past the {MAX_PFNS_PER_CHAIN}-entry limit, {} entries outside guest memory; skipped",
            r.bad_descriptors, r.cut, r.unreadable
        ));
    }

    /// An inflate request: the pages go back to the host.
    fn inflate(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) {
        let Work {
            shared,
            pfns,
            runs,
            log,
            ..
        } = self;
        let c = &shared.counters;
        let name = &shared.name;
        let r = read_pfns(mem, chain, pfns, |batch| {
            runs.clear();
            coalesce(batch, runs);
            for &(gpa, len) in runs.iter() {
                let d = discard(mem, gpa, len, |e| {
                    add(&c.discard_failures, 1);
                    log.warn(format_args!("{name}: cannot give inflated pages back: {e}"));
                });
                add(&c.inflated_pages, d.in_ram >> PAGE_SHIFT);
                let outside = (len - d.in_ram) >> PAGE_SHIFT;
                if outside > 0 {
                    add(&c.dropped_entries, outside);
                    log.warn(format_args!(
                        "{name}: {outside} inflated pages from {gpa:#x} lie outside guest RAM; skipped"
                    ));
                }
            }
        });
        self.log_pfn_read("inflate", &r);
    }

    /// A deflate request: the pages fault back in when the guest touches them; only counted.
    fn deflate(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) {
        let c = &self.shared.counters;
        let mut outside = 0u64;
        let r = read_pfns(mem, chain, &mut self.pfns, |batch| {
            for &pfn in batch.iter() {
                if mem.address_in_range(GuestAddress(u64::from(pfn) << PAGE_SHIFT)) {
                    add(&c.deflated_pages, 1);
                } else {
                    outside += 1;
                }
            }
        });
        if outside > 0 {
            add(&c.dropped_entries, outside);
            let name = self.shared.name.clone();
            self.log.warn(format_args!(
                "{name}: {outside} deflated pages lie outside guest RAM; skipped"
            ));
        }
        self.log_pfn_read("deflate", &r);
    }

    /// A statistics buffer: parsed and kept as the latest statistics.
    fn stats(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) {
        const MAX_BYTES: usize = MAX_STATS_ENTRIES * STAT_SIZE;
        let buf = &mut self.stats_buf;
        buf.clear();
        let (mut offered, mut bad) = (0u64, 0u64);
        for desc in chain {
            if desc.is_write_only() {
                bad += 1;
                continue;
            }
            offered += u64::from(desc.len());
            let want = (desc.len() as usize).min(MAX_BYTES - buf.len());
            if want == 0 {
                continue;
            }
            let start = buf.len();
            buf.resize(start + want, 0);
            if mem.read_slice(&mut buf[start..], desc.addr()).is_err() {
                buf.truncate(start);
                bad += 1;
            }
        }
        let cut = offered
            .saturating_sub(MAX_BYTES as u64)
            .div_ceil(STAT_SIZE as u64);
        let parsed = {
            let mut latest = lock(&self.shared.guest_stats);
            let mut s = latest.unwrap_or_default();
            let p = s.apply(buf);
            *latest = Some(s);
            p
        };
        let c = &self.shared.counters;
        add(&c.stats_updates, 1);
        let dropped = bad + cut + parsed.partial;
        if dropped > 0 {
            add(&c.dropped_entries, dropped);
            let name = self.shared.name.clone();
            self.log.warn(format_args!(
                "{name}: malformed statistics buffer ({bad} descriptors writable or outside guest memory, {cut} entries past the {MAX_STATS_ENTRIES}-entry limit, {} bytes of a partial entry); the rest was used",
                buf.len() % STAT_SIZE
            ));
        }
        if parsed.unknown > 0 {
            tracing::debug!(
                "{}: {} statistics with unknown tags ignored",
                self.name(),
                parsed.unknown
            );
        }
    }

    /// A free page report: each device-writable, page-aligned descriptor is a range of
    /// free guest memory, given back to the host.
    fn report(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) {
        let Work { shared, log, .. } = self;
        let c = &shared.counters;
        let name = &shared.name;
        for desc in chain {
            let (gpa, len) = (desc.addr().raw_value(), u64::from(desc.len()));
            if !desc.is_write_only()
                || len == 0
                || !gpa.is_multiple_of(PAGE_SIZE)
                || !len.is_multiple_of(PAGE_SIZE)
            {
                add(&c.dropped_entries, 1);
                log.warn(format_args!(
                    "{name}: free page report of {len:#x} bytes at {gpa:#x} is not a writable, 4 KiB-aligned range; skipped"
                ));
                continue;
            }
            let d = discard(mem, gpa, len, |e| {
                add(&c.discard_failures, 1);
                log.warn(format_args!("{name}: cannot give reported pages back: {e}"));
            });
            add(&c.reported_bytes, d.released);
            if d.in_ram < len {
                add(&c.dropped_entries, 1);
                log.warn(format_args!(
                    "{name}: {:#x} bytes of the free page report at {gpa:#x} lie outside guest RAM; skipped",
                    len - d.in_ram
                ));
            }
        }
    }
}

/// The balloon's [`QueueHandler`].
pub(super) struct BalloonHandler {
    work: Work,
    layout: QueueLayout,
    /// The statistics buffer the device holds: returning it asks the guest for new
    /// statistics.
    held_stats: Option<u16>,
}

impl BalloonHandler {
    pub(super) fn new(shared: Arc<Shared>, layout: QueueLayout) -> Self {
        BalloonHandler {
            work: Work {
                shared,
                pfns: Vec::with_capacity(PFN_BATCH),
                runs: Vec::new(),
                stats_buf: Vec::new(),
                log: RateLimited::default(),
            },
            layout,
            held_stats: None,
        }
    }

    fn stats_notified(&mut self, index: usize, ctx: &mut WorkerCtx) {
        let mut returned = Vec::new();
        let mut received = false;
        let (work, held) = (&mut self.work, &mut self.held_stats);
        ctx.drain_queue(index, |mem, chain| {
            // The driver keeps one buffer in the queue; a second one means it did not wait
            // for the first to come back: return the older one.
            if let Some(old) = held.replace(chain.head_index()) {
                returned.push(old);
            }
            received = true;
            work.stats(mem, chain);
            None
        });
        if !returned.is_empty() {
            let name = self.work.name().to_string();
            self.work.log.warn(format_args!(
                "{name}: the driver posted {} statistics buffers while the device held one; returned the older ones",
                returned.len()
            ));
            for head in returned {
                ctx.complete(index, head, 0);
            }
            ctx.notify_guest(index);
        }
        if received {
            self.arm_timer();
        }
    }

    /// Starts the wait before the held buffer goes back.
    fn arm_timer(&mut self) {
        let Some(timer) = &self.work.shared.timer else {
            return;
        };
        let interval = &self.work.shared.stats_interval_s;
        loop {
            let secs = interval.load(Ordering::SeqCst);
            if let Err(e) = timer.arm(Duration::from_secs(u64::from(secs.max(1)))) {
                tracing::error!(
                    "{}: cannot arm the statistics timer ({e}); statistics stop updating",
                    self.work.name()
                );
                return;
            }
            // The VMM changed the interval meanwhile and may have seen the timer unarmed:
            // arm it again with the new one.
            if interval.load(Ordering::SeqCst) == secs {
                return;
            }
        }
    }

    /// Gives the held statistics buffer back (asking for new statistics).
    fn return_stats(&mut self, ctx: &mut WorkerCtx) {
        if let (Some(head), Some(index)) = (self.held_stats.take(), self.layout.stats) {
            ctx.complete(index, head, 0);
            ctx.notify_guest(index);
        }
    }
}

impl QueueHandler for BalloonHandler {
    fn thread_kind(&self) -> seccomp::ThreadKind {
        seccomp::ThreadKind::Balloon
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        match (&self.work.shared.timer, self.layout.stats) {
            (Some(t), Some(_)) => vec![t.raw_fd()],
            _ => Vec::new(),
        }
    }

    fn queue_notified(&mut self, index: usize, ctx: &mut WorkerCtx) {
        let work = &mut self.work;
        match self.layout.role(index) {
            Some(QueueRole::Inflate) => ctx.drain_queue(index, |mem, chain| {
                work.inflate(mem, chain);
                Some(0)
            }),
            Some(QueueRole::Deflate) => ctx.drain_queue(index, |mem, chain| {
                work.deflate(mem, chain);
                Some(0)
            }),
            Some(QueueRole::Reporting) => ctx.drain_queue(index, |mem, chain| {
                work.report(mem, chain);
                Some(0)
            }),
            Some(QueueRole::Stats) => self.stats_notified(index, ctx),
            Some(QueueRole::Hint) | None => {
                let name = work.name().to_string();
                work.log.warn(format_args!(
                    "{name}: notification of queue {index}, which the negotiated features do not use; ignored"
                ));
            }
        }
    }

    fn extra_ready(&mut self, which: usize, ctx: &mut WorkerCtx) {
        let Some(timer) = self.work.shared.timer.as_ref().filter(|_| which == 0) else {
            return;
        };
        match timer.consume() {
            Ok(true) => self.return_stats(ctx),
            // Re-armed between the wake-up and the read: it fires again later.
            Ok(false) => {}
            Err(e) => {
                // Stop a descriptor that stays readable from spinning the worker.
                tracing::error!("{}: statistics timer: {e}", self.work.name());
                let _ = timer.disarm();
            }
        }
    }

    /// Nothing is in flight but the statistics buffer: it goes back to the guest, so that
    /// the queues hold no device state while paused (or snapshotted); the guest posts a
    /// new one when it runs again.
    fn quiesce(&mut self, ctx: &mut WorkerCtx) {
        self.return_stats(ctx);
        if let Some(t) = &self.work.shared.timer {
            let _ = t.disarm();
        }
    }
}
