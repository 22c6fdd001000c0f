//! What the block I/O benchmark's two programs share: the result lines the guest tool
//! prints on the L2 console (`@@BLK fig=... key=value ...`), the figures computed from
//! them, and the statistics over rounds.
//!
//! The guest tool (`blk-io-guest`, run in L2) prints one record per measurement; the
//! L1 job script brackets each VMM run with [`BEGIN_TAG`] / [`END_TAG`] lines; the
//! benchmark (`blk-io`, on the host) reads L1's console back with [`parse_console`].

use std::collections::BTreeMap;
use std::fmt;

use testbed::records::after;

/// Prefix of a guest result line.
pub const RECORD_TAG: &str = "@@BLK";
/// L1 line before a VMM run: `@@BLK-BEGIN <vmm> <round>`.
pub const BEGIN_TAG: &str = "@@BLK-BEGIN";
/// L1 line after a VMM run: `@@BLK-END <vmm> <round> <exit code>`.
pub const END_TAG: &str = "@@BLK-END";

/// Record `fig` of a timed `dd` reading the whole disk.
pub const FIG_SEQ_READ: &str = "seq_read";
/// Record `fig` of a timed `dd` writing the whole disk.
pub const FIG_SEQ_WRITE: &str = "seq_write";
/// Record `fig` of a random-read run.
pub const FIG_RANDREAD: &str = "randread";
/// Record `fig` the guest prints when it could not measure (with `what=`).
pub const FIG_ERROR: &str = "error";
/// Record `fig` describing the disk as the guest driver set it up (queues, limits,
/// negotiated virtio features): not a figure, but explains differences between VMMs.
pub const FIG_INFO: &str = "info";

/// One `@@BLK fig=NAME key=value ...` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub fig: String,
    pub fields: BTreeMap<String, String>,
}

impl Record {
    /// A record with the given fields (printed sorted by key).
    pub fn new(fig: &str, fields: &[(&str, String)]) -> Self {
        Record {
            fig: fig.into(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
        }
    }

    /// Finds a record anywhere in `line` (console lines may carry a prefix).
    pub fn parse(line: &str) -> Option<Record> {
        let at = line.find(RECORD_TAG)?;
        let rest = line[at + RECORD_TAG.len()..].strip_prefix(' ')?;
        let mut fig = None;
        let mut fields = BTreeMap::new();
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            if k == "fig" {
                fig = Some(v.to_string());
            } else {
                fields.insert(k.to_string(), v.to_string());
            }
        }
        Some(Record { fig: fig?, fields })
    }

    /// A numeric field.
    pub fn num(&self, key: &str) -> Option<f64> {
        self.fields
            .get(key)?
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite())
    }

    /// Whether the record says its measurement succeeded (`status=0`).
    pub fn ok(&self) -> bool {
        self.fields.get("status").is_some_and(|s| s == "0")
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{RECORD_TAG} fig={}", self.fig)?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// A benchmark figure (higher is better for all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Figure {
    /// Sequential read, MB/s (10^6 bytes per second), `dd bs=1M iflag=direct`.
    SeqRead,
    /// Sequential write, MB/s, `dd bs=1M oflag=direct`.
    SeqWrite,
    /// 4 KiB random reads per second with `depth` requests in flight.
    RandRead { depth: u32 },
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Figure::SeqRead => f.write_str("seq_read_MBps"),
            Figure::SeqWrite => f.write_str("seq_write_MBps"),
            Figure::RandRead { depth } => write!(f, "randread4k_qd{depth}_iops"),
        }
    }
}

impl Figure {
    /// The figure a successful record measures, and its value.
    pub fn from_record(r: &Record) -> Option<(Figure, f64)> {
        if !r.ok() {
            return None;
        }
        let secs = r.num("secs").filter(|&s| s > 0.0)?;
        match r.fig.as_str() {
            FIG_SEQ_READ => Some((Figure::SeqRead, r.num("bytes")? / secs / 1e6)),
            FIG_SEQ_WRITE => Some((Figure::SeqWrite, r.num("bytes")? / secs / 1e6)),
            FIG_RANDREAD => {
                let depth = r.fields.get("depth")?.parse().ok()?;
                Some((Figure::RandRead { depth }, r.num("ops")? / secs))
            }
            _ => None,
        }
    }
}

/// One VMM run (one L2 boot) as seen on L1's console.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub vmm: String,
    pub round: u32,
    /// The VMM command's exit code in L1 (137: killed by the run timeout); `None` when
    /// the end line is missing (L1 died).
    pub exit_code: Option<i32>,
    pub figures: BTreeMap<Figure, f64>,
    /// Records that carried no figure (failed measurements, guest errors).
    pub problems: Vec<String>,
    /// The guest's [`FIG_INFO`] record, if any.
    pub info: Option<Record>,
    /// The run's last [`LOG_LINES`] other console lines (VMM and guest messages).
    pub log: Vec<String>,
}

/// How many non-record console lines a [`Run`] keeps.
pub const LOG_LINES: usize = 12;

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
            match Record::parse(line).map(|rec| (Figure::from_record(&rec), rec)) {
                Some((Some((fig, v)), _)) => {
                    run.figures.insert(fig, v);
                }
                Some((None, rec)) if rec.fig == FIG_INFO => run.info = Some(rec),
                Some((None, rec)) => run.problems.push(rec.to_string()),
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

/// Names of the virtio-blk and transport feature bits in a sysfs `features` string
/// (`'0'`/`'1'` per bit, bit 0 first); bits without a name here are given as numbers.
pub fn virtio_blk_features(bits: &str) -> Vec<String> {
    const NAMES: [(usize, &str); 16] = [
        (0, "BARRIER"),
        (1, "SIZE_MAX"),
        (2, "SEG_MAX"),
        (4, "GEOMETRY"),
        (5, "RO"),
        (6, "BLK_SIZE"),
        (9, "FLUSH"),
        (10, "TOPOLOGY"),
        (11, "CONFIG_WCE"),
        (12, "MQ"),
        (13, "DISCARD"),
        (14, "WRITE_ZEROES"),
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

/// Median, minimum and maximum of some samples (shared with the other benchmarks).
pub use testbed::records::Stats;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_prefix() {
        let r = Record::new(
            FIG_RANDREAD,
            &[
                ("depth", "16".into()),
                ("ops", "5000".into()),
                ("secs", "2.5".into()),
                ("status", "0".into()),
            ],
        );
        let line = format!("[   12.3] {r}");
        let back = Record::parse(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            Figure::from_record(&back),
            Some((Figure::RandRead { depth: 16 }, 2000.0))
        );
        assert_eq!(Record::parse("@@BLKX fig=a"), None);
        assert_eq!(Record::parse("@@BLK nofig=1"), None);
        assert_eq!(Record::parse("@@BLK fig=a junk"), None);
    }

    #[test]
    fn failed_or_incomplete_records_give_no_figure() {
        let r = Record::parse("@@BLK fig=seq_read bytes=1000000 secs=0.5 status=1").unwrap();
        assert_eq!(Figure::from_record(&r), None);
        let r = Record::parse("@@BLK fig=seq_read bytes=1000000 secs=0 status=0").unwrap();
        assert_eq!(Figure::from_record(&r), None);
        let r = Record::parse("@@BLK fig=seq_write bytes=1000000 secs=0.5 status=0").unwrap();
        assert_eq!(Figure::from_record(&r), Some((Figure::SeqWrite, 2.0)));
    }

    #[test]
    fn console_splits_into_runs() {
        let console = "\
noise @@BLK fig=seq_read bytes=1 secs=1 status=0
@@BLK-BEGIN qemu 0
@@BLK fig=seq_read bytes=268435456 secs=2 status=0
256+0 records in
@@BLK fig=randread depth=1 bs=4096 ops=1000 secs=4 status=0
@@BLK fig=error what=no-vda
@@BLK fig=info queues=1
@@BLK-END qemu 0 0
@@BLK-BEGIN ferrovm 0
@@BLK fig=seq_write bytes=2000000 secs=1 status=0
";
        let many: String = (0..20).map(|i| format!("line {i}\n")).collect();
        let runs_many = parse_console(&format!("{BEGIN_TAG} a 0\n{many}{END_TAG} a 0 1\n"));
        assert_eq!(runs_many[0].log.len(), LOG_LINES);
        assert_eq!(runs_many[0].log.last().map(String::as_str), Some("line 19"));
        let runs = parse_console(console);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].vmm, "qemu");
        assert_eq!(runs[0].exit_code, Some(0));
        assert_eq!(runs[0].figures[&Figure::SeqRead], 268435456.0 / 2.0 / 1e6);
        assert_eq!(runs[0].figures[&Figure::RandRead { depth: 1 }], 250.0);
        assert_eq!(runs[0].problems, ["@@BLK fig=error what=no-vda"]);
        assert_eq!(runs[0].log, ["256+0 records in"]);
        assert_eq!(runs[0].info.as_ref().unwrap().fields["queues"], "1");
        assert_eq!(runs[1].exit_code, None);
        assert_eq!(runs[1].figures[&Figure::SeqWrite], 2.0);
    }

    #[test]
    fn feature_bits() {
        let mut bits = "0".repeat(64);
        for i in [2, 29, 32, 40] {
            bits.replace_range(i..=i, "1");
        }
        assert_eq!(
            virtio_blk_features(&bits),
            ["SEG_MAX", "EVENT_IDX", "VERSION_1", "40"]
        );
    }

    #[test]
    fn stats() {
        assert_eq!(Stats::of(&[]), None);
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
    }

    #[test]
    fn figure_names() {
        assert_eq!(Figure::SeqRead.to_string(), "seq_read_MBps");
        assert_eq!(
            Figure::RandRead { depth: 16 }.to_string(),
            "randread4k_qd16_iops"
        );
        assert!(Figure::SeqWrite < Figure::RandRead { depth: 1 });
    }
}
