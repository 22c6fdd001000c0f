//! What the network benchmark reads back from L1's console: the result lines the L1 job
//! script prints per VMM run (`@@NET fig=... key=value ...`), the figures computed from
//! them, and statistics over rounds.
//!
//! The L1 script brackets each VMM run with [`BEGIN_TAG`] / [`END_TAG`] lines and, in
//! between, prints one record per measurement: [`FIG_PING`] (the round-trip times of
//! `ping` from L1 to the guest), [`FIG_TCP_RX`] / [`FIG_TCP_TX`] (an iperf3 run from L1:
//! bytes and seconds the receiver counted, and the CPU time the VMM process and the
//! in-kernel vhost threads used meanwhile), and [`FIG_INFO`] (what the guest saw).

use std::collections::BTreeMap;
use std::fmt;

/// Prefix of a result line.
pub const RECORD_TAG: &str = "@@NET";
/// L1 line before a VMM run: `@@NET-BEGIN <vmm> <round>`.
pub const BEGIN_TAG: &str = "@@NET-BEGIN";
/// L1 line after a VMM run: `@@NET-END <vmm> <round> <exit code>`.
pub const END_TAG: &str = "@@NET-END";

/// Record of `ping` from L1 to the guest: `rtts_ms=a,b,...` (one per reply).
pub const FIG_PING: &str = "ping";
/// Record of iperf3 from L1 to the guest (the guest receives).
pub const FIG_TCP_RX: &str = "tcp_rx";
/// Record of iperf3 `-R` (the guest sends to L1).
pub const FIG_TCP_TX: &str = "tcp_tx";
/// Record the guest prints once its link is up: MAC, queues, negotiated features.
pub const FIG_INFO: &str = "info";
/// Record of a step that could not be done (`what=`).
pub const FIG_ERROR: &str = "error";

/// Clock ticks per second of `/proc/PID/stat`'s utime and stime (USER_HZ on x86).
pub const TICKS_PER_SEC: f64 = 100.0;

use testbed::records::after;
/// One `@@NET fig=NAME key=value ...` line (found with [`Record::parse`]`(RECORD_TAG, line)`).
pub use testbed::records::{Record, Stats};

/// Direction of a TCP stream, seen from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// L1 -> guest.
    Rx,
    /// Guest -> L1.
    Tx,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Rx => "rx",
            Dir::Tx => "tx",
        }
    }
}

/// A benchmark figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Figure {
    /// TCP throughput, Mbit/s (10^6 bits per second); higher is better.
    Tcp(Dir),
    /// Median ping round trip of a run, milliseconds; lower is better.
    PingMs,
    /// CPU seconds the VMM (with its vhost threads) used per GB (10^9 bytes) moved;
    /// lower is better.
    CpuPerGb(Dir),
}

impl Figure {
    /// Every figure, in report order.
    pub const ALL: [Figure; 5] = [
        Figure::Tcp(Dir::Tx),
        Figure::Tcp(Dir::Rx),
        Figure::PingMs,
        Figure::CpuPerGb(Dir::Tx),
        Figure::CpuPerGb(Dir::Rx),
    ];

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Figure::Tcp(_))
    }

    /// The figures a successful record gives.
    pub fn from_record(r: &Record) -> Vec<(Figure, f64)> {
        if !r.ok() {
            return Vec::new();
        }
        match r.fig.as_str() {
            FIG_PING => {
                let rtts: Vec<f64> = r
                    .fields
                    .get("rtts_ms")
                    .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
                    .unwrap_or_default();
                Stats::of(&rtts)
                    .map(|s| vec![(Figure::PingMs, s.median)])
                    .unwrap_or_default()
            }
            FIG_TCP_RX | FIG_TCP_TX => {
                let dir = if r.fig == FIG_TCP_RX {
                    Dir::Rx
                } else {
                    Dir::Tx
                };
                let (Some(bytes), Some(secs)) = (r.num("bytes"), r.num("secs")) else {
                    return Vec::new();
                };
                if bytes <= 0.0 || secs <= 0.0 {
                    return Vec::new();
                }
                let mut v = vec![(Figure::Tcp(dir), bytes * 8.0 / secs / 1e6)];
                if let (Some(vmm), Some(vhost)) = (r.num("vmm_ticks"), r.num("vhost_ticks")) {
                    let cpu = (vmm + vhost) / TICKS_PER_SEC;
                    v.push((Figure::CpuPerGb(dir), cpu / (bytes / 1e9)));
                }
                v
            }
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Figure::Tcp(d) => write!(f, "tcp_{}_Mbps", d.name()),
            Figure::PingMs => f.write_str("ping_rtt_ms"),
            Figure::CpuPerGb(d) => write!(f, "cpu_s_per_GB_{}", d.name()),
        }
    }
}

/// One VMM run (one L2 boot) as seen on L1's console.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub vmm: String,
    pub round: u32,
    /// The run's exit code in L1 (137: killed by the run timeout); `None` when the end
    /// line is missing (L1 died).
    pub exit_code: Option<i32>,
    pub figures: BTreeMap<Figure, f64>,
    /// Records that carried no figure (failed measurements, errors).
    pub problems: Vec<String>,
    /// The guest's [`FIG_INFO`] record, if any.
    pub info: Option<Record>,
    /// The run's last [`LOG_LINES`] other console lines.
    pub log: Vec<String>,
}

/// How many non-record console lines a [`Run`] keeps.
pub const LOG_LINES: usize = 15;

/// Splits L1's console into VMM runs and their figures.
pub fn parse_console(console: &str) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut open = false;
    for line in console.lines() {
        if let Some(rest) = after(line, BEGIN_TAG) {
            let mut w = rest.split_whitespace();
            let (Some(vmm), Some(round)) = (w.next(), w.next().and_then(|r| r.parse().ok())) else {
                continue;
            };
            runs.push(Run {
                vmm: vmm.into(),
                round,
                exit_code: None,
                figures: BTreeMap::new(),
                problems: Vec::new(),
                info: None,
                log: Vec::new(),
            });
            open = true;
        } else if let Some(rest) = after(line, END_TAG) {
            if let (true, Some(run)) = (open, runs.last_mut()) {
                run.exit_code = rest.split_whitespace().nth(2).and_then(|c| c.parse().ok());
            }
            open = false;
        } else if let (true, Some(run)) = (open, runs.last_mut()) {
            match Record::parse(RECORD_TAG, line) {
                Some(rec) if rec.fig == FIG_INFO => run.info = Some(rec),
                Some(rec) => {
                    let figs = Figure::from_record(&rec);
                    if figs.is_empty() {
                        run.problems.push(rec.line(RECORD_TAG));
                    }
                    run.figures.extend(figs);
                }
                None if !line.trim().is_empty() => {
                    if run.log.len() == LOG_LINES {
                        run.log.remove(0);
                    }
                    run.log.push(line.to_string());
                }
                None => {}
            }
        }
    }
    runs
}

/// Names of the virtio-net and transport feature bits in a sysfs `features` string
/// (`'0'`/`'1'` per bit, bit 0 first); bits without a name here are given as numbers.
pub fn virtio_net_features(bits: &str) -> Vec<String> {
    const NAMES: [(usize, &str); 21] = [
        (0, "CSUM"),
        (1, "GUEST_CSUM"),
        (2, "CTRL_GUEST_OFFLOADS"),
        (3, "MTU"),
        (5, "MAC"),
        (7, "GUEST_TSO4"),
        (8, "GUEST_TSO6"),
        (9, "GUEST_ECN"),
        (10, "GUEST_UFO"),
        (11, "HOST_TSO4"),
        (12, "HOST_TSO6"),
        (13, "HOST_ECN"),
        (14, "HOST_UFO"),
        (15, "MRG_RXBUF"),
        (16, "STATUS"),
        (17, "CTRL_VQ"),
        (22, "MQ"),
        (28, "INDIRECT_DESC"),
        (29, "EVENT_IDX"),
        (32, "VERSION_1"),
        (33, "ACCESS_PLATFORM"),
    ];
    bits.chars()
        .enumerate()
        .filter(|&(_, c)| c == '1')
        .map(|(i, _)| {
            NAMES
                .iter()
                .find(|&&(bit, _)| bit == i)
                .map_or_else(|| i.to_string(), |&(_, name)| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_give_figures() {
        let r = Record::parse(
            RECORD_TAG,
            "x @@NET fig=tcp_rx bytes=125000000 secs=10 vmm_ticks=150 vhost_ticks=50 status=0",
        )
        .unwrap();
        let f: BTreeMap<Figure, f64> = Figure::from_record(&r).into_iter().collect();
        assert_eq!(f[&Figure::Tcp(Dir::Rx)], 100.0);
        // 2 CPU seconds for 0.125 GB.
        assert_eq!(f[&Figure::CpuPerGb(Dir::Rx)], 16.0);
        let p = Record::parse(
            RECORD_TAG,
            "@@NET fig=ping rtts_ms=0.9,0.5,0.7,3.0 status=0",
        )
        .unwrap();
        assert_eq!(Figure::from_record(&p), vec![(Figure::PingMs, 0.8)]);
        let bad = Record::parse(RECORD_TAG, "@@NET fig=tcp_tx bytes=0 secs=10 status=0").unwrap();
        assert!(Figure::from_record(&bad).is_empty());
        let failed =
            Record::parse(RECORD_TAG, "@@NET fig=tcp_tx bytes=10 secs=10 status=1").unwrap();
        assert!(Figure::from_record(&failed).is_empty());
        assert_eq!(Record::parse(RECORD_TAG, "@@NETX fig=a"), None);
    }

    #[test]
    fn console_splits_into_runs() {
        let console = "\
@@NET fig=ping rtts_ms=1 status=0
@@NET-BEGIN qemu-tap 0
booting
@@NET fig=info mac=02:00:00:00:09:02 queues=rx-0,tx-0
@@NET fig=ping rtts_ms=1,2,3 status=0
@@NET fig=tcp_tx bytes=1000000 secs=1 status=0
@@NET fig=error what=no-link
@@NET-END qemu-tap 0 0
@@NET-BEGIN firecracker 0
";
        let runs = parse_console(console);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].vmm, "qemu-tap");
        assert_eq!(runs[0].exit_code, Some(0));
        assert_eq!(runs[0].figures[&Figure::PingMs], 2.0);
        assert_eq!(runs[0].figures[&Figure::Tcp(Dir::Tx)], 8.0);
        assert!(!runs[0].figures.contains_key(&Figure::CpuPerGb(Dir::Tx)));
        assert_eq!(runs[0].problems, ["@@NET fig=error what=no-link"]);
        assert_eq!(runs[0].log, ["booting"]);
        assert_eq!(
            runs[0].info.as_ref().unwrap().fields["mac"],
            "02:00:00:00:09:02"
        );
        assert_eq!(runs[1].exit_code, None);
    }

    #[test]
    fn stats_and_names() {
        assert_eq!(Figure::Tcp(Dir::Tx).to_string(), "tcp_tx_Mbps");
        assert_eq!(Figure::CpuPerGb(Dir::Rx).to_string(), "cpu_s_per_GB_rx");
        assert!(Figure::Tcp(Dir::Rx).higher_is_better() && !Figure::PingMs.higher_is_better());
        let mut bits = "0".repeat(40);
        for i in [0, 5, 15, 32, 39] {
            bits.replace_range(i..=i, "1");
        }
        assert_eq!(
            virtio_net_features(&bits),
            ["CSUM", "MAC", "MRG_RXBUF", "VERSION_1", "39"]
        );
    }
}
