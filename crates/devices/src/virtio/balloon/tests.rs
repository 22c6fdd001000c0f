//! The balloon driven by hand-built queues over real anonymous guest memory.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::interrupt_status;
use crate::virtio::test_util::{guest_memory, wait_readable, DriverQueue, INDIRECT, NEXT};

const MEM: usize = 0x80_0000; // 8 MiB
const MEM_MIB: u32 = 8;
/// Where the rig puts queue `i`'s rings.
fn ring_base(i: usize) -> u64 {
    0x1_0000 + 0x4000 * i as u64
}
/// Scratch space for PFN arrays and statistics buffers.
const SCRATCH: u64 = 0x8_0000;
/// The data pages tests fill and give back.
const DATA: u64 = 0x20_0000;

fn cfg(stats_interval_s: u16, free_page_reporting: bool) -> BalloonConfig {
    BalloonConfig {
        amount_mib: 4,
        deflate_on_oom: true,
        stats_interval_s,
        free_page_reporting,
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    dev: Balloon,
    ctl: BalloonControl,
    queues: Vec<DriverQueue>,
    notify: Vec<EventFd>,
    irq: EventFd,
    interrupt: Arc<Interrupt>,
}

/// An active balloon, the driver having accepted every offered feature.
fn rig(c: BalloonConfig) -> Rig {
    let dev = Balloon::new("balloon-test", c).unwrap();
    let acked = dev.avail_features();
    rig_acked(dev, acked)
}

fn rig_acked(mut dev: Balloon, acked: u64) -> Rig {
    let mem = guest_memory(MEM);
    let n = dev.queue_max_sizes().len();
    let queues: Vec<DriverQueue> = (0..n).map(|i| DriverQueue::new(16, ring_base(i))).collect();
    let notify: Vec<EventFd> = (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    let active = queues
        .iter()
        .zip(&notify)
        .map(|(q, e)| ActiveQueue {
            queue: q.device_queue(false),
            notify: e.try_clone().unwrap(),
        })
        .collect();
    dev.activate(mem.clone(), interrupt.clone(), active, acked)
        .unwrap();
    let ctl = dev.control();
    Rig {
        mem,
        dev,
        ctl,
        queues,
        notify,
        irq,
        interrupt,
    }
}

fn fill(mem: &GuestMemoryMmap, at: u64, len: usize, byte: u8) {
    mem.write_slice(&vec![byte; len], GuestAddress(at)).unwrap();
}

fn all(mem: &GuestMemoryMmap, at: u64, len: usize, byte: u8) -> bool {
    let mut b = vec![0u8; len];
    mem.read_slice(&mut b, GuestAddress(at)).unwrap();
    b.iter().all(|&x| x == byte)
}

fn pfn_bytes(pfns: &[u32]) -> Vec<u8> {
    pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn stat(tag: u16, val: u64) -> Vec<u8> {
    let mut e = tag.to_le_bytes().to_vec();
    e.extend_from_slice(&val.to_le_bytes());
    e
}

/// Polls `f` until it holds; fails the test after a generous bound.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Rig {
    /// Publishes chain `head` on queue `q` and notifies.
    fn submit(&mut self, q: usize, head: u16) {
        self.queues[q].publish(&self.mem, head);
        self.notify[q].write(1).unwrap();
    }

    /// Writes `bytes` at `at` and submits them as one readable descriptor.
    fn submit_buf(&mut self, q: usize, head: u16, at: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        let h = self.queues[q].chain(&self.mem, head, &[(at, bytes.len() as u32, false)]);
        self.submit(q, h);
    }

    /// Waits until queue `q`'s used index reaches `n`.
    fn wait_used(&self, q: usize, n: u16) {
        while self.queues[q].used_idx(&self.mem) < n {
            wait_readable(&self.irq);
        }
    }

    fn used(&self, q: usize) -> u16 {
        self.queues[q].used_idx(&self.mem)
    }
}

#[test]
fn inflated_pages_go_back_to_the_host_and_read_as_zero() {
    let mut r = rig(cfg(0, false));
    // Pages DATA-1 .. DATA+17 hold data; the 16 in the middle go into the balloon.
    fill(&r.mem, DATA - 0x1000, 18 * 0x1000, 0x5a);
    let first = (DATA >> PAGE_SHIFT) as u32;
    let mut pfns: Vec<u32> = (first..first + 16).rev().collect();
    pfns.extend([first + 3, first + 3, first]); // the same page again is harmless
    r.submit_buf(QueueLayout::INFLATE, 0, SCRATCH, &pfn_bytes(&pfns));
    r.wait_used(QueueLayout::INFLATE, 1);
    assert_eq!(r.queues[0].used_elem(&r.mem, 0), (0, 0));
    assert!(
        all(&r.mem, DATA, 16 * 0x1000, 0),
        "ballooned pages read zero"
    );
    assert!(
        all(&r.mem, DATA - 0x1000, 0x1000, 0x5a),
        "page before intact"
    );
    assert!(
        all(&r.mem, DATA + 0x10000, 0x1000, 0x5a),
        "page after intact"
    );
    let c = r.ctl.counts();
    assert_eq!(
        (c.inflated_pages, c.dropped_entries, c.discard_failures),
        (16, 0, 0)
    );
}

#[test]
fn pfns_outside_ram_are_skipped() {
    let mut r = rig(cfg(0, false));
    let last = (MEM as u64 >> PAGE_SHIFT) as u32 - 1;
    fill(&r.mem, u64::from(last) << PAGE_SHIFT, 0x1000, 0x77);
    // The last page of RAM (coalesced with the first page past it), far outside, the top.
    let pfns = [last, last + 1, 0x10_0000, u32::MAX];
    r.submit_buf(0, 0, SCRATCH, &pfn_bytes(&pfns));
    r.wait_used(0, 1);
    assert!(all(&r.mem, u64::from(last) << PAGE_SHIFT, 0x1000, 0));
    let c = r.ctl.counts();
    assert_eq!((c.inflated_pages, c.dropped_entries), (1, 3));
}

#[test]
fn deflated_pages_are_counted() {
    let mut r = rig(cfg(0, false));
    fill(&r.mem, DATA, 0x1000, 0x33);
    let first = (DATA >> PAGE_SHIFT) as u32;
    r.submit_buf(
        QueueLayout::DEFLATE,
        0,
        SCRATCH,
        &pfn_bytes(&[first, first + 1, first + 2, u32::MAX, 0x10_0000]),
    );
    r.wait_used(QueueLayout::DEFLATE, 1);
    let c = r.ctl.counts();
    assert_eq!(
        (c.deflated_pages, c.dropped_entries, c.inflated_pages),
        (3, 2, 0)
    );
    assert!(
        all(&r.mem, DATA, 0x1000, 0x33),
        "deflating touches no memory"
    );
}

#[test]
fn target_updates_change_num_pages_and_raise_a_config_interrupt() {
    assert!(matches!(
        Balloon::new(
            "b",
            BalloonConfig {
                amount_mib: u32::MAX,
                ..cfg(0, false)
            }
        ),
        Err(BalloonError::TargetTooLarge { .. })
    ));
    // Before activation: the target changes, nobody is interrupted.
    let dev = Balloon::new("b", cfg(0, false)).unwrap();
    let ctl = dev.control();
    let num_pages = |d: &Balloon| {
        let mut b = [0u8; 4];
        d.read_config(0, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(num_pages(&dev), 4 * 256);
    ctl.set_target_mib(6).unwrap();
    assert_eq!((num_pages(&dev), ctl.target_mib()), (6 * 256, 6));

    let acked = dev.avail_features();
    let mut r = rig_acked(dev, acked);
    r.ctl.set_target_mib(2).unwrap();
    wait_readable(&r.irq);
    assert_ne!(r.interrupt.status() & interrupt_status::CONFIG_CHANGE, 0);
    assert_eq!(num_pages(&r.dev), 512);
    assert_eq!(r.ctl.target_pages(), 512);
    // Bounded by the guest's memory once active, and by the 32-bit page count.
    assert!(matches!(
        r.ctl.set_target_mib(MEM_MIB + 1),
        Err(BalloonError::TargetAboveMemory {
            mib: 9,
            guest_mib: 8
        })
    ));
    assert!(matches!(
        r.ctl.set_target_mib(u32::MAX / 256 + 1),
        Err(BalloonError::TargetTooLarge { .. })
    ));
    assert_eq!(r.ctl.target_mib(), 2, "a refused target changes nothing");
    r.ctl.set_target_mib(MEM_MIB).unwrap();
    // The guest reports progress in `actual`.
    r.dev.write_config(4, &(3 * 256u32 + 7).to_le_bytes());
    assert_eq!((r.ctl.actual_mib(), r.ctl.actual_pages()), (3, 3 * 256 + 7));
    assert_eq!(
        r.ctl.config(),
        BalloonConfig {
            amount_mib: MEM_MIB,
            ..cfg(0, false)
        }
    );
    // After a reset the balloon is empty and nobody is interrupted any more.
    r.dev.reset();
    assert_eq!(r.ctl.actual_pages(), 0);
    let _ = r.irq.read();
    r.ctl.set_target_mib(1).unwrap();
    assert!(r.irq.read().is_err(), "no interrupt for a reset device");
}

#[test]
fn config_space_reads_and_writes_at_every_offset_and_width() {
    let mut dev = Balloon::new("b", cfg(0, false)).unwrap();
    let mut model = [0u8; config_offset::SIZE];
    model[..4].copy_from_slice(&1024u32.to_le_bytes());
    let read_all = |d: &Balloon| {
        let mut b = [0u8; config_offset::SIZE];
        d.read_config(0, &mut b);
        b
    };
    let offsets = (0..40u64).chain([u64::MAX - 8, u64::MAX - 3, u64::MAX]);
    for off in offsets {
        for width in 1..=8usize {
            let mut b = vec![0xeeu8; width];
            dev.read_config(off, &mut b);
            for (i, &byte) in b.iter().enumerate() {
                let want = off
                    .checked_add(i as u64)
                    .and_then(|a| model.get(a as usize).copied())
                    .unwrap_or(0);
                assert_eq!(byte, want, "read at {off:#x}+{i}");
            }
            let data: Vec<u8> = (0..width).map(|i| (off as u8) ^ (i as u8 + 1)).collect();
            dev.write_config(off, &data);
            for (i, &byte) in data.iter().enumerate() {
                if let Some(a) = off.checked_add(i as u64) {
                    if (4..8).contains(&a) || (12..16).contains(&a) {
                        model[a as usize] = byte;
                    }
                }
            }
            assert_eq!(read_all(&dev), model, "after a write at {off:#x}/{width}");
        }
    }
    let ctl = dev.control();
    assert_eq!(
        ctl.target_pages(),
        1024,
        "num_pages is read-only for the driver"
    );
    assert_eq!(
        ctl.actual_pages(),
        u32::from_le_bytes([model[4], model[5], model[6], model[7]])
    );
    assert_eq!(&read_all(&dev)[8..12], &[0; 4], "no free page hinting");
}

#[test]
fn queue_layout_follows_the_features() {
    use balloon_features::*;
    let l = QueueLayout::for_features(0);
    assert_eq!((l.stats, l.reporting, l.count), (None, None, 2));
    let l = QueueLayout::for_features(STATS_VQ | PAGE_REPORTING);
    assert_eq!((l.stats, l.reporting, l.count), (Some(2), Some(3), 4));
    let l = QueueLayout::for_features(PAGE_REPORTING);
    assert_eq!((l.stats, l.reporting, l.count), (None, Some(2), 3));
    let l = QueueLayout::for_features(STATS_VQ | FREE_PAGE_HINT | PAGE_REPORTING);
    assert_eq!((l.stats, l.hint, l.reporting), (Some(2), Some(3), Some(4)));
    assert_eq!(l.role(0), Some(QueueRole::Inflate));
    assert_eq!(l.role(4), Some(QueueRole::Reporting));
    assert_eq!(l.role(5), None);

    for (interval, reporting, count) in [(0, false, 2), (5, false, 3), (0, true, 3), (5, true, 4)] {
        let d = Balloon::new("b", cfg(interval, reporting)).unwrap();
        assert_eq!(d.queue_max_sizes(), vec![QUEUE_SIZE; count].as_slice());
        assert_eq!(d.layout().count, count);
        assert_eq!(d.device_type(), 5);
        let f = d.avail_features();
        assert_ne!(f & features::VERSION_1, 0);
        assert_ne!(f & DEFLATE_ON_OOM, 0);
        assert_eq!(f & STATS_VQ != 0, interval > 0);
        assert_eq!(f & PAGE_REPORTING != 0, reporting);
        assert_eq!(f & (MUST_TELL_HOST | FREE_PAGE_HINT | PAGE_POISON), 0);
    }
    let d = Balloon::new("b", BalloonConfig::default()).unwrap();
    assert_eq!(d.avail_features(), features::VERSION_1);
}

#[test]
fn a_driver_declining_stats_finds_reporting_at_index_2() {
    let dev = Balloon::new("b", cfg(5, true)).unwrap();
    let acked = features::VERSION_1 | balloon_features::PAGE_REPORTING;
    let mut r = rig_acked(dev, acked);
    fill(&r.mem, DATA, 0x2000, 0x11);
    let h = r.queues[2].chain(&r.mem, 0, &[(DATA, 0x1000, true)]);
    r.submit(2, h);
    r.wait_used(2, 1);
    assert!(all(&r.mem, DATA, 0x1000, 0));
    assert!(all(&r.mem, DATA + 0x1000, 0x1000, 0x11));
    assert_eq!(r.ctl.counts().reported_bytes, 0x1000);
}

#[test]
fn stats_are_kept_and_the_buffer_returned_after_the_interval() {
    let mut r = rig(cfg(3600, false));
    let sq = r.dev.layout().stats.unwrap();
    assert_eq!(sq, 2);
    assert!(r.ctl.stats().is_none(), "nothing reported yet");
    let buf = [
        stat(stats::tag::MEMFREE, 100 << 20),
        stat(stats::tag::MEMTOT, 512 << 20),
        stat(stats::tag::MAJFLT, 9),
        stat(4242, 1),
    ]
    .concat();
    r.ctl.set_target_mib(1).unwrap();
    r.dev.write_config(4, &128u32.to_le_bytes());
    r.submit_buf(sq, 0, SCRATCH, &buf);
    eventually("statistics", || r.ctl.stats().is_some());
    let s = r.ctl.stats().unwrap();
    assert_eq!(s.free_memory, Some(100 << 20));
    assert_eq!(s.total_memory, Some(512 << 20));
    assert_eq!(s.major_faults, Some(9));
    assert_eq!(s.swap_in, None);
    assert_eq!(
        (s.target_pages, s.target_mib, s.actual_pages, s.actual_mib),
        (256, 1, 128, 0)
    );
    assert_eq!(r.ctl.counts().stats_updates, 1);
    // The device holds the buffer for the interval (an hour here) ...
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.used(sq), 0, "the buffer is held");
    // ... and a new interval returns it at once, asking for fresh statistics.
    assert!(matches!(
        r.ctl.set_stats_interval(0),
        Err(BalloonError::StatsCannotBeDisabled)
    ));
    r.ctl.set_stats_interval(1).unwrap();
    assert_eq!(r.ctl.stats_interval_s(), 1);
    r.wait_used(sq, 1);
    assert_eq!(r.queues[sq].used_elem(&r.mem, 0), (0, 0));
    // The guest answers with new values; one interval (1 s) later the buffer comes back.
    r.submit_buf(sq, 0, SCRATCH, &stat(stats::tag::MEMFREE, 50 << 20));
    r.wait_used(sq, 2);
    let s = r.ctl.stats().unwrap();
    assert_eq!(s.free_memory, Some(50 << 20));
    assert_eq!(s.total_memory, Some(512 << 20), "earlier values stay");
    assert_eq!(r.ctl.counts().stats_updates, 2);
}

#[test]
fn pausing_returns_the_held_stats_buffer() {
    let mut r = rig(cfg(3600, false));
    let sq = 2;
    r.submit_buf(sq, 0, SCRATCH, &stat(stats::tag::AVAIL, 1));
    eventually("statistics", || r.ctl.stats().is_some());
    assert_eq!(r.used(sq), 0);
    r.dev.pause().unwrap();
    assert_eq!(r.used(sq), 1, "nothing in flight while paused");
    r.dev.resume();
    r.submit_buf(sq, 0, SCRATCH, &stat(stats::tag::AVAIL, 2));
    eventually("new statistics", || {
        r.ctl.stats().and_then(|s| s.available_memory) == Some(2)
    });
    r.dev.reset();
    assert!(
        r.ctl.stats().is_none(),
        "a new driver starts without statistics"
    );
}

#[test]
fn stats_cannot_be_enabled_after_creation() {
    let ctl = Balloon::new("b", cfg(0, false)).unwrap().control();
    assert!(matches!(
        ctl.set_stats_interval(5),
        Err(BalloonError::StatsNotEnabled)
    ));
    ctl.set_stats_interval(0).unwrap();
    assert!(ctl.stats().is_none());
    // Before activation the interval of an enabled device may change freely.
    let ctl = Balloon::new("b", cfg(5, false)).unwrap().control();
    ctl.set_stats_interval(7).unwrap();
    assert_eq!(ctl.config().stats_interval_s, 7);
}

#[test]
fn reported_free_pages_go_back_to_the_host_and_the_chain_returns() {
    let mut r = rig(cfg(0, true));
    let rq = r.dev.layout().reporting.unwrap();
    assert_eq!(rq, 2);
    fill(&r.mem, DATA, 0x20_0000, 0x42);
    // Two ranges in one chain, a page between them kept.
    let h = r.queues[rq].chain(
        &r.mem,
        0,
        &[(DATA, 0x10_0000, true), (DATA + 0x10_1000, 0x1000, true)],
    );
    r.submit(rq, h);
    r.wait_used(rq, 1);
    assert_eq!(r.queues[rq].used_elem(&r.mem, 0), (0, 0));
    assert!(all(&r.mem, DATA, 0x10_0000, 0));
    assert!(all(&r.mem, DATA + 0x10_0000, 0x1000, 0x42));
    assert!(all(&r.mem, DATA + 0x10_1000, 0x1000, 0));
    assert!(all(&r.mem, DATA + 0x10_2000, 0x1000, 0x42));
    let c = r.ctl.counts();
    assert_eq!((c.reported_bytes, c.dropped_entries), (0x10_1000, 0));
}

#[test]
fn hostile_inflate_chains_touch_nothing_and_all_come_back() {
    let mut r = rig(cfg(0, false));
    let q = QueueLayout::INFLATE;
    fill(&r.mem, DATA, 0x10_0000, 0x99);
    let pfn = (DATA >> PAGE_SHIFT) as u32;
    let m = r.mem.clone();
    m.write_slice(&pfn_bytes(&[pfn, pfn + 1]), GuestAddress(SCRATCH))
        .unwrap();
    // 0: a device-writable descriptor naming data pages.
    let a = r.queues[q].chain(&m, 0, &[(SCRATCH, 8, true)]);
    // 1: not a whole number of PFNs.
    let b = r.queues[q].chain(&m, 1, &[(SCRATCH, 6, false)]);
    // 2: a huge length over a region of 0xff bytes: PFN 0xffffffff, cut at the limit.
    fill(&m, 0x40_0000, 0x40_0000, 0xff);
    let c = r.queues[q].chain(&m, 2, &[(0x40_0000, 0xffff_fffc, false)]);
    // 3: the array outside guest memory.
    let d = r.queues[q].chain(&m, 3, &[(MEM as u64 - 4, 8, false)]);
    // 4 -> 5 -> 4: a loop, bounded by the queue size (PFNs of the data pages: harmless).
    r.queues[q].set_desc(&m, 4, SCRATCH, 4, NEXT, 5);
    r.queues[q].set_desc(&m, 5, SCRATCH, 4, NEXT, 4);
    // 6: an indirect table whose length is not a whole number of descriptors.
    r.queues[q].set_desc(&m, 6, SCRATCH + 0x1000, 20, INDIRECT, 0);
    // 7: an indirect table that loops on itself.
    crate::virtio::test_util::write_desc(&m, SCRATCH + 0x2000, 0, SCRATCH, 4, NEXT, 0);
    r.queues[q].set_desc(&m, 7, SCRATCH + 0x2000, 16, INDIRECT, 0);
    for h in [a, b, c, d, 4, 6, 7] {
        r.queues[q].publish(&m, h);
    }
    r.notify[q].write(1).unwrap();
    r.wait_used(q, 7);
    for i in 0..7 {
        assert_eq!(r.queues[q].used_elem(&m, i).1, 0);
    }
    // The looping chains name page `pfn` only; the writable descriptor's `pfn + 1` stays.
    assert!(
        all(&m, DATA + 0x1000, 0x10_0000 - 0x1000, 0x99),
        "untouched"
    );
    let counts = r.ctl.counts();
    assert!(counts.dropped_entries > 0);
    assert_eq!(counts.discard_failures, 0);
    // The device still works.
    fill(&m, DATA + 0x8000, 0x1000, 0x99);
    r.submit_buf(q, 8, SCRATCH + 0x3000, &pfn_bytes(&[pfn + 8]));
    r.wait_used(q, 8);
    assert!(all(&m, DATA + 0x8000, 0x1000, 0));
    assert!(!r.interrupt.needs_reset());
}

#[test]
fn hostile_stats_and_report_chains_are_survived() {
    let mut r = rig(cfg(3600, true));
    let (sq, rq) = (2, 3);
    let m = r.mem.clone();
    // Statistics: too small, too large, writable, and each new buffer returns the older.
    r.submit_buf(sq, 0, SCRATCH, &[1, 2, 3, 4]);
    eventually("a first stats buffer", || r.ctl.counts().stats_updates == 1);
    assert_eq!(
        r.ctl.stats(),
        Some(BalloonStats::new(1024, 0, &Default::default()))
    );
    let big = r.queues[sq].chain(&m, 1, &[(0x40_0000, 0x10_0000, false)]);
    r.submit(sq, big);
    r.wait_used(sq, 1);
    let w = r.queues[sq].chain(&m, 2, &[(SCRATCH, 10, true)]);
    r.submit(sq, w);
    r.wait_used(sq, 2);
    eventually("three stats buffers", || r.ctl.counts().stats_updates == 3);
    assert_eq!(r.used(sq), 2, "the last one is held");
    // Reports: readable, misaligned, empty, outside RAM, partly outside RAM.
    fill(&m, DATA, 0x4000, 0x66);
    let last = MEM as u64 - 0x1000;
    fill(&m, last, 0x1000, 0x66);
    let h = r.queues[rq].chain(
        &m,
        0,
        &[
            (DATA, 0x1000, false),
            (DATA + 0x800, 0x1000, true),
            (DATA + 0x1000, 0x800, true),
            (DATA + 0x2000, 0, true),
            (MEM as u64, 0x1000, true),
            (!0xfff, 0x1000, true),
            (last, 0x2000, true),
        ],
    );
    r.submit(rq, h);
    r.wait_used(rq, 1);
    assert!(
        all(&m, DATA, 0x4000, 0x66),
        "no malformed report was applied"
    );
    assert!(
        all(&m, last, 0x1000, 0),
        "the part inside RAM was given back"
    );
    let c = r.ctl.counts();
    assert_eq!(c.reported_bytes, 0x1000);
    assert!(c.dropped_entries >= 6);
    assert!(!r.interrupt.needs_reset());
}

#[test]
fn the_transport_presents_a_balloon() {
    use crate::bus::BusDevice;
    use crate::virtio::mmio::{regs, MmioTransport};
    let dev = Balloon::new("b", cfg(1, true)).unwrap();
    let mut t =
        MmioTransport::new(dev, guest_memory(MEM), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
    let mut rd = |off: u64| {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(rd(regs::DEVICE_ID), device_type::BALLOON);
    assert_eq!(
        u64::from(rd(regs::DEVICE_FEATURES)),
        balloon_features::STATS_VQ
            | balloon_features::DEFLATE_ON_OOM
            | balloon_features::PAGE_REPORTING
    );
    assert_eq!(rd(regs::CONFIG), 1024, "num_pages");
    assert_eq!(rd(regs::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
}
