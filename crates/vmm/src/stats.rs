//! VM-exit statistics: counts per exit reason, per port and per MMIO region, and the time
//! spent in `KVM_RUN` and in user-space handling, per vCPU and in total.
//!
//! Each vCPU thread owns its [`VcpuStats`] (no locking on the hot path); they are merged
//! into a [`StatsReport`] when the VM ends.

use std::collections::BTreeMap;

// Exit keys are small integers: FxHash costs a few instructions per exit where SipHash
// cost about fifty.
use rustc_hash::FxHashMap as HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Exit reasons as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitReason {
    /// Port input.
    IoIn,
    /// Port output.
    IoOut,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// HLT with no in-kernel irqchip.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// KVM_EXIT_SYSTEM_EVENT (power off, reset, crash).
    SystemEvent,
    /// Interrupt window open.
    IrqWindowOpen,
    /// VM entry failed.
    FailEntry,
    /// KVM internal error (e.g. emulation failure).
    InternalError,
    /// Unknown hardware exit reason.
    Unknown,
    /// `KVM_RUN` interrupted by a signal (the VMM kicking the vCPU).
    Interrupted,
    /// Any other exit reason.
    Other,
}

impl ExitReason {
    /// All reasons, in table order.
    pub const ALL: [ExitReason; 13] = [
        ExitReason::IoIn,
        ExitReason::IoOut,
        ExitReason::MmioRead,
        ExitReason::MmioWrite,
        ExitReason::Hlt,
        ExitReason::Shutdown,
        ExitReason::SystemEvent,
        ExitReason::IrqWindowOpen,
        ExitReason::FailEntry,
        ExitReason::InternalError,
        ExitReason::Unknown,
        ExitReason::Interrupted,
        ExitReason::Other,
    ];

    /// Stable name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ExitReason::IoIn => "io_in",
            ExitReason::IoOut => "io_out",
            ExitReason::MmioRead => "mmio_read",
            ExitReason::MmioWrite => "mmio_write",
            ExitReason::Hlt => "hlt",
            ExitReason::Shutdown => "shutdown",
            ExitReason::SystemEvent => "system_event",
            ExitReason::IrqWindowOpen => "irq_window_open",
            ExitReason::FailEntry => "fail_entry",
            ExitReason::InternalError => "internal_error",
            ExitReason::Unknown => "unknown",
            ExitReason::Interrupted => "interrupted",
            ExitReason::Other => "other",
        }
    }
}

/// Where an exit's access went, for per-target accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Not an access.
    None,
    /// A port; `claimed` is false when no device owns it.
    Port { port: u16, claimed: bool },
    /// An MMIO region of the bus, or an unclaimed address.
    Mmio {
        region: Option<(&'a str, u64)>,
        addr: u64,
    },
}

/// What one exit was, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitKey<'a> {
    /// The reason.
    pub reason: ExitReason,
    /// The target of an access.
    pub target: Target<'a>,
}

/// Number of latency buckets: bucket 0 holds handling times below 256 ns, bucket `i`
/// those in `[2^(7+i), 2^(8+i))` ns, the last everything from about 1 s up.
pub const HISTOGRAM_BUCKETS: usize = 23;

/// Handling-time histogram with power-of-two buckets (see [`HISTOGRAM_BUCKETS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram(pub [u64; HISTOGRAM_BUCKETS]);

impl Default for Histogram {
    fn default() -> Self {
        Histogram([0; HISTOGRAM_BUCKETS])
    }
}

impl Histogram {
    /// The bucket of a handling time of `ns`.
    pub fn bucket(ns: u64) -> usize {
        let log2 = 63 - (ns | 1).leading_zeros() as usize;
        log2.saturating_sub(7).min(HISTOGRAM_BUCKETS - 1)
    }

    /// The upper bound (exclusive, nanoseconds) of bucket `i`; `None` for the last.
    pub fn upper_ns(i: usize) -> Option<u64> {
        (i + 1 < HISTOGRAM_BUCKETS).then(|| 1u64 << (8 + i))
    }

    fn add(&mut self, ns: u64) {
        self.0[Self::bucket(ns)] += 1;
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }
}

/// One bucket as serialized: handling times below `lt_ns` (none for the last bucket).
#[derive(Serialize)]
struct BucketOut {
    lt_ns: Option<u64>,
    count: u64,
}

impl Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(None)?;
        for (i, &count) in self.0.iter().enumerate() {
            if count > 0 {
                seq.serialize_element(&BucketOut {
                    lt_ns: Histogram::upper_ns(i),
                    count,
                })?;
            }
        }
        seq.end()
    }
}

/// Counter with accumulated handling time and its distribution.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counter {
    /// Number of exits.
    pub count: u64,
    /// Time spent handling them in user space, nanoseconds.
    pub handle_ns: u64,
    /// How the handling times are distributed (non-empty buckets only).
    pub histogram: Histogram,
}

impl Counter {
    fn add(&mut self, ns: u64) {
        self.count += 1;
        self.handle_ns += ns;
        self.histogram.add(ns);
    }
    fn merge(&mut self, o: &Counter) {
        self.count += o.count;
        self.handle_ns += o.handle_ns;
        self.histogram.merge(&o.histogram);
    }
}

/// Accesses to one port or region.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AccessStats {
    /// Reads (port in / MMIO read).
    pub reads: Counter,
    /// Writes (port out / MMIO write).
    pub writes: Counter,
    /// Whether a device claims it.
    pub claimed: bool,
}

impl AccessStats {
    fn merge(&mut self, o: &AccessStats) {
        self.reads.merge(&o.reads);
        self.writes.merge(&o.writes);
        self.claimed |= o.claimed;
    }
}

/// Statistics of one vCPU (owned by its thread).
#[derive(Debug, Clone, Default)]
pub struct VcpuStats {
    reasons: [Counter; ExitReason::ALL.len()],
    ports: HashMap<u16, AccessStats>,
    regions: HashMap<u64, (String, AccessStats)>,
    /// Unclaimed MMIO accesses by page (bounded: at most `MAX_UNCLAIMED_PAGES` pages kept).
    unclaimed_mmio: HashMap<u64, AccessStats>,
    unclaimed_mmio_other: AccessStats,
    /// Time inside `KVM_RUN`, nanoseconds.
    pub run_ns: u64,
}

const MAX_UNCLAIMED_PAGES: usize = 256;

impl VcpuStats {
    /// Records one exit: `run` spent in `KVM_RUN` before it, `handle` spent handling it.
    pub fn record(&mut self, key: &ExitKey<'_>, run: Duration, handle: Duration) {
        let ns = handle.as_nanos() as u64;
        self.run_ns += run.as_nanos() as u64;
        self.reasons[key.reason as usize].add(ns);
        let write = matches!(key.reason, ExitReason::IoOut | ExitReason::MmioWrite);
        let bump = |a: &mut AccessStats| {
            if write {
                a.writes.add(ns)
            } else {
                a.reads.add(ns)
            }
        };
        match key.target {
            Target::None => {}
            Target::Port { port, claimed } => {
                let a = self.ports.entry(port).or_default();
                a.claimed = claimed;
                bump(a);
            }
            Target::Mmio {
                region: Some((name, base)),
                ..
            } => {
                let (_, a) = self
                    .regions
                    .entry(base)
                    .or_insert_with(|| (name.to_string(), AccessStats::default()));
                a.claimed = true;
                bump(a);
            }
            Target::Mmio { region: None, addr } => {
                let page = addr & !0xfff;
                let n = self.unclaimed_mmio.len();
                match self.unclaimed_mmio.get_mut(&page) {
                    Some(a) => bump(a),
                    None if n < MAX_UNCLAIMED_PAGES => {
                        bump(self.unclaimed_mmio.entry(page).or_default())
                    }
                    None => bump(&mut self.unclaimed_mmio_other),
                }
            }
        }
    }

    /// Number of exits with `reason`.
    pub fn count(&self, reason: ExitReason) -> u64 {
        self.reasons[reason as usize].count
    }

    /// Total exits.
    pub fn total(&self) -> u64 {
        self.reasons.iter().map(|c| c.count).sum()
    }
}

/// Summary of one set of statistics (one vCPU or the total).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StatsSummary {
    /// Total exits.
    pub exits: u64,
    /// Time inside `KVM_RUN`, nanoseconds.
    pub run_ns: u64,
    /// Time handling exits in user space, nanoseconds.
    pub handle_ns: u64,
    /// Per exit reason (only reasons seen).
    pub reasons: BTreeMap<&'static str, Counter>,
    /// Per port, keyed `0x3f8` style.
    pub ports: BTreeMap<String, AccessStats>,
    /// Per MMIO region, keyed `name@0xbase`; unclaimed accesses keyed `unclaimed@0xpage`.
    pub mmio: BTreeMap<String, AccessStats>,
    /// Unclaimed port reads (answered with all ones).
    pub unclaimed_port_reads: u64,
    /// Unclaimed port writes (dropped).
    pub unclaimed_port_writes: u64,
    /// Unclaimed MMIO reads (answered with all ones).
    pub unclaimed_mmio_reads: u64,
    /// Unclaimed MMIO writes (dropped).
    pub unclaimed_mmio_writes: u64,
}

impl StatsSummary {
    fn from_vcpu(s: &VcpuStats) -> Self {
        let mut out = StatsSummary {
            exits: s.total(),
            run_ns: s.run_ns,
            handle_ns: s.reasons.iter().map(|c| c.handle_ns).sum(),
            ..Default::default()
        };
        for r in ExitReason::ALL {
            let c = s.reasons[r as usize];
            if c.count > 0 {
                out.reasons.insert(r.name(), c);
            }
        }
        for (port, a) in &s.ports {
            if !a.claimed {
                out.unclaimed_port_reads += a.reads.count;
                out.unclaimed_port_writes += a.writes.count;
            }
            out.ports.insert(format!("{port:#06x}"), a.clone());
        }
        for (base, (name, a)) in &s.regions {
            out.mmio.insert(format!("{name}@{base:#x}"), a.clone());
        }
        let unclaimed = s
            .unclaimed_mmio
            .iter()
            .map(|(p, a)| (format!("unclaimed@{p:#x}"), a))
            .chain(std::iter::once((
                "unclaimed@other".to_string(),
                &s.unclaimed_mmio_other,
            )));
        for (k, a) in unclaimed {
            out.unclaimed_mmio_reads += a.reads.count;
            out.unclaimed_mmio_writes += a.writes.count;
            if a.reads.count + a.writes.count > 0 {
                out.mmio.insert(k, a.clone());
            }
        }
        out
    }

    fn merge(&mut self, o: &StatsSummary) {
        self.exits += o.exits;
        self.run_ns += o.run_ns;
        self.handle_ns += o.handle_ns;
        for (k, c) in &o.reasons {
            self.reasons.entry(k).or_default().merge(c);
        }
        for (k, a) in &o.ports {
            self.ports.entry(k.clone()).or_default().merge(a);
        }
        for (k, a) in &o.mmio {
            self.mmio.entry(k.clone()).or_default().merge(a);
        }
        self.unclaimed_port_reads += o.unclaimed_port_reads;
        self.unclaimed_port_writes += o.unclaimed_port_writes;
        self.unclaimed_mmio_reads += o.unclaimed_mmio_reads;
        self.unclaimed_mmio_writes += o.unclaimed_mmio_writes;
    }
}

/// The statistics of a whole VM run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StatsReport {
    /// Wall-clock time from the first vCPU start to the VM's end, nanoseconds.
    pub wall_ns: u64,
    /// All vCPUs together.
    pub total: StatsSummary,
    /// One entry per vCPU, by index.
    pub vcpus: Vec<StatsSummary>,
}

impl StatsReport {
    /// Builds the report from the per-vCPU statistics.
    pub fn new(per_vcpu: &[VcpuStats], wall: Duration) -> Self {
        let vcpus: Vec<StatsSummary> = per_vcpu.iter().map(StatsSummary::from_vcpu).collect();
        let mut total = StatsSummary::default();
        for v in &vcpus {
            total.merge(v);
        }
        StatsReport {
            wall_ns: wall.as_nanos() as u64,
            total,
            vcpus,
        }
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The report as a human-readable table.
    pub fn to_table(&self) -> String {
        let t = &self.total;
        let mut s = String::new();
        let us = |ns: u64| ns as f64 / 1000.0;
        let avg = |c: &Counter| {
            if c.count == 0 {
                0.0
            } else {
                us(c.handle_ns) / c.count as f64
            }
        };
        let _ = writeln!(
            s,
            "VM exit statistics: {} exits on {} vCPU(s), wall {:.3} s, in KVM_RUN {:.3} s, handling {:.3} s",
            t.exits,
            self.vcpus.len(),
            self.wall_ns as f64 / 1e9,
            t.run_ns as f64 / 1e9,
            t.handle_ns as f64 / 1e9
        );
        let _ = writeln!(
            s,
            "{:<16} {:>12} {:>8} {:>14} {:>10}",
            "reason", "count", "share", "handling µs", "avg µs"
        );
        for (name, c) in &t.reasons {
            let share = 100.0 * c.count as f64 / t.exits.max(1) as f64;
            let _ = writeln!(
                s,
                "{name:<16} {:>12} {share:>7.1}% {:>14.1} {:>10.3}",
                c.count,
                us(c.handle_ns),
                avg(c)
            );
        }
        if !t.ports.is_empty() {
            let _ = writeln!(
                s,
                "{:<16} {:>12} {:>12} {:>10} {:>10}",
                "port", "reads", "writes", "avg µs", "device"
            );
            for (port, a) in &t.ports {
                let mut all = a.reads;
                all.merge(&a.writes);
                let _ = writeln!(
                    s,
                    "{port:<16} {:>12} {:>12} {:>10.3} {:>10}",
                    a.reads.count,
                    a.writes.count,
                    avg(&all),
                    if a.claimed { "yes" } else { "unclaimed" }
                );
            }
        }
        if !t.mmio.is_empty() {
            let _ = writeln!(s, "{:<28} {:>12} {:>12}", "mmio region", "reads", "writes");
            for (k, a) in &t.mmio {
                let _ = writeln!(s, "{k:<28} {:>12} {:>12}", a.reads.count, a.writes.count);
            }
        }
        if self.vcpus.len() > 1 {
            let _ = writeln!(
                s,
                "{:<16} {:>12} {:>14} {:>14}",
                "vcpu", "exits", "KVM_RUN s", "handling s"
            );
            for (i, v) in self.vcpus.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{:<16} {:>12} {:>14.3} {:>14.3}",
                    format!("vcpu{i}"),
                    v.exits,
                    v.run_ns as f64 / 1e9,
                    v.handle_ns as f64 / 1e9
                );
            }
        }
        s
    }
}

/// `GET /vm/exits`: the exit statistics so far and the virtio devices' counters.
#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    /// The exit statistics.
    #[serde(flatten)]
    pub exits: StatsReport,
    /// Queue notifications, requests and interrupts per virtio device.
    pub devices: Vec<crate::device_manager::NamedCounts>,
}

impl LiveReport {
    /// The report of `exits` and `devices`.
    pub fn new(exits: StatsReport, devices: Vec<crate::device_manager::NamedCounts>) -> Self {
        LiveReport { exits, devices }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(reason: ExitReason, port: u16, claimed: bool) -> ExitKey<'static> {
        ExitKey {
            reason,
            target: Target::Port { port, claimed },
        }
    }

    #[test]
    fn counts_per_reason_port_and_region() {
        let mut s = VcpuStats::default();
        let us = Duration::from_micros(1);
        for _ in 0..3 {
            s.record(&port(ExitReason::IoOut, 0x3f8, true), us, us);
        }
        s.record(&port(ExitReason::IoIn, 0x3fd, true), us, us);
        s.record(&port(ExitReason::IoIn, 0x1234, false), us, us);
        s.record(
            &ExitKey {
                reason: ExitReason::MmioWrite,
                target: Target::Mmio {
                    region: Some(("testdev", 0xd000_0000)),
                    addr: 0xd000_0004,
                },
            },
            us,
            us,
        );
        s.record(
            &ExitKey {
                reason: ExitReason::MmioRead,
                target: Target::Mmio {
                    region: None,
                    addr: 0xe000_0010,
                },
            },
            us,
            us,
        );
        s.record(
            &ExitKey {
                reason: ExitReason::Hlt,
                target: Target::None,
            },
            us,
            us,
        );
        assert_eq!(s.total(), 8);
        assert_eq!(s.count(ExitReason::IoOut), 3);
        let r = StatsReport::new(&[s.clone(), s], Duration::from_millis(5));
        assert_eq!(r.total.exits, 16);
        assert_eq!(r.total.reasons["io_out"].count, 6);
        assert_eq!(r.total.reasons["io_out"].handle_ns, 6000);
        // 1 µs handling: bucket [512 ns, 1024 ns).
        assert_eq!(
            r.total.reasons["io_out"].histogram.0[Histogram::bucket(1000)],
            6
        );
        assert_eq!(Histogram::bucket(1000), 2);
        assert_eq!(r.total.ports["0x03f8"].writes.count, 6);
        assert_eq!(r.total.unclaimed_port_reads, 2);
        assert_eq!(r.total.unclaimed_mmio_reads, 2);
        assert_eq!(r.total.mmio["testdev@0xd0000000"].writes.count, 2);
        assert_eq!(r.total.mmio["unclaimed@0xe0000000"].reads.count, 2);
        assert_eq!(r.total.run_ns, 16_000);
        assert_eq!(r.vcpus.len(), 2);
        let table = r.to_table();
        assert!(table.contains("io_out"), "{table}");
        assert!(table.contains("unclaimed"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["total"]["reasons"]["io_out"]["count"], 6);
        assert_eq!(
            json["total"]["reasons"]["io_out"]["histogram"],
            serde_json::json!([{"lt_ns": 1024, "count": 6}])
        );
        assert_eq!(json["vcpus"][1]["exits"], 8);
    }

    #[test]
    fn unclaimed_mmio_pages_are_bounded() {
        let mut s = VcpuStats::default();
        for i in 0..(MAX_UNCLAIMED_PAGES as u64 + 50) {
            s.record(
                &ExitKey {
                    reason: ExitReason::MmioWrite,
                    target: Target::Mmio {
                        region: None,
                        addr: i << 12,
                    },
                },
                Duration::ZERO,
                Duration::ZERO,
            );
        }
        let r = StatsReport::new(&[s], Duration::ZERO);
        assert_eq!(
            r.total.unclaimed_mmio_writes,
            MAX_UNCLAIMED_PAGES as u64 + 50
        );
        assert_eq!(r.total.mmio.len(), MAX_UNCLAIMED_PAGES + 1);
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(Histogram::bucket(0), 0);
        assert_eq!(Histogram::bucket(255), 0);
        assert_eq!(Histogram::bucket(256), 1);
        assert_eq!(Histogram::bucket(511), 1);
        assert_eq!(Histogram::bucket(512), 2);
        assert_eq!(Histogram::bucket(u64::MAX), HISTOGRAM_BUCKETS - 1);
        assert_eq!(Histogram::upper_ns(0), Some(256));
        assert_eq!(Histogram::upper_ns(HISTOGRAM_BUCKETS - 1), None);
        // Every bucket's times fall below its bound.
        for i in 0..HISTOGRAM_BUCKETS - 1 {
            let hi = Histogram::upper_ns(i).unwrap();
            assert_eq!(Histogram::bucket(hi - 1), i);
            assert_eq!(Histogram::bucket(hi), i + 1);
        }
    }
}
