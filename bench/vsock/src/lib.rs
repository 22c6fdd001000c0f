//! What the vsock benchmark's two programs share: the result lines (`@@VSB fig=NAME
//! key=value ...`) that `vsock-bench-tool` prints in L1 (and in L2 for what its servers
//! received), the figures made from them, how L1's console splits into VMM runs, and the
//! statistics over rounds.

use std::collections::BTreeMap;
use std::fmt;

/// Prefix of a result line.
pub const RECORD_TAG: &str = "@@VSB";
/// L1 line before a VMM run: `@@VSB-BEGIN <vmm> <round>`.
pub const BEGIN_TAG: &str = "@@VSB-BEGIN";
/// L1 line after a VMM run: `@@VSB-END <vmm> <round> <exit code>`.
pub const END_TAG: &str = "@@VSB-END";
/// The line the guest prints once its servers listen.
pub const READY_TAG: &str = "@@VSB-READY";

/// Record `fig` of a host -> guest stream into the tool's sink (`bytes`, `secs`).
pub const FIG_H2G: &str = "h2g";
/// Record `fig` of a guest -> host stream from the tool's source.
pub const FIG_G2H: &str = "g2h";
/// The same streams with socat as the guest's end.
pub const FIG_H2G_SOCAT: &str = "h2g_socat";
pub const FIG_G2H_SOCAT: &str = "g2h_socat";
/// Record `fig` of host-initiated connects (`median_us` ...).
pub const FIG_CONNECT: &str = "connect";
/// Record `fig` of 1-byte round trips on one connection (`median_us` ...).
pub const FIG_PING: &str = "ping";
/// Record `fig` a guest server prints per connection: what it received (`bytes`).
pub const FIG_SINK: &str = "sink";
/// Record `fig` of a failure (`what=`).
pub const FIG_ERROR: &str = "error";

/// One `@@VSB fig=NAME key=value ...` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub fig: String,
    pub fields: BTreeMap<String, String>,
}

impl Record {
    /// A record with the given fields.
    pub fn new(fig: &str, fields: &[(&str, String)]) -> Self {
        Record {
            fig: fig.to_string(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
        }
    }

    /// The record in `line`, which may carry a prefix (a console's).
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

    /// A finite number field.
    pub fn num(&self, key: &str) -> Option<f64> {
        self.fields
            .get(key)?
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite())
    }

    /// Whether the measurement succeeded (`status=0`).
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

/// A benchmark figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Figure {
    /// Host -> guest, MB/s (10^6 bytes/s), the tool at both ends.
    H2g,
    /// Guest -> host, MB/s, the tool at both ends.
    G2h,
    /// Host -> guest, MB/s, socat in the guest.
    H2gSocat,
    /// Guest -> host, MB/s, socat in the guest.
    G2hSocat,
    /// Host-initiated connect (UDS connect, `CONNECT`, `OK` read), median µs.
    Connect,
    /// 1-byte request and answer on an open connection, median µs.
    Ping,
}

impl Figure {
    /// Every figure, in report order.
    pub const ALL: [Figure; 6] = [
        Figure::H2g,
        Figure::G2h,
        Figure::H2gSocat,
        Figure::G2hSocat,
        Figure::Connect,
        Figure::Ping,
    ];

    /// Whether a higher value is better (throughput) or a lower one (latency).
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Figure::Connect | Figure::Ping)
    }

    /// The figure a successful record measures, and its value.
    pub fn from_record(r: &Record) -> Option<(Figure, f64)> {
        if !r.ok() {
            return None;
        }
        let rate = |fig| {
            let secs = r.num("secs").filter(|&s| s > 0.0)?;
            Some((fig, r.num("bytes")? / secs / 1e6))
        };
        match r.fig.as_str() {
            FIG_H2G => rate(Figure::H2g),
            FIG_G2H => rate(Figure::G2h),
            FIG_H2G_SOCAT => rate(Figure::H2gSocat),
            FIG_G2H_SOCAT => rate(Figure::G2hSocat),
            FIG_CONNECT => Some((Figure::Connect, r.num("median_us")?)),
            FIG_PING => Some((Figure::Ping, r.num("median_us")?)),
            _ => None,
        }
    }

    /// ferrovm's value over the baseline's, oriented so that > 1 means ferrovm is better.
    pub fn ratio(self, ferrovm: f64, baseline: f64) -> Option<f64> {
        let (num, den) = if self.higher_is_better() {
            (ferrovm, baseline)
        } else {
            (baseline, ferrovm)
        };
        (den > 0.0 && num.is_finite()).then(|| num / den)
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Figure::H2g => "h2g_MBps",
            Figure::G2h => "g2h_MBps",
            Figure::H2gSocat => "h2g_socat_MBps",
            Figure::G2hSocat => "g2h_socat_MBps",
            Figure::Connect => "connect_us",
            Figure::Ping => "ping_rtt_us",
        })
    }
}

/// One VMM run (one L2 boot) as seen on L1's console.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub vmm: String,
    pub round: u32,
    /// The run script's exit code; `None` without an end line (L1 died).
    pub exit_code: Option<i32>,
    pub figures: BTreeMap<Figure, f64>,
    /// What the guest's sinks received, per connection, in order (`guest:` lines).
    pub sink_bytes: Vec<u64>,
    /// Failed measurements.
    pub problems: Vec<String>,
    /// The run's last [`LOG_LINES`] other lines.
    pub log: Vec<String>,
}

/// How many other console lines a [`Run`] keeps.
pub const LOG_LINES: usize = 15;

/// Splits L1's console into VMM runs.
pub fn parse_console(console: &str) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut open = false;
    for line in console.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(rest) = after(line, BEGIN_TAG) {
            let mut w = rest.split_whitespace();
            let (Some(vmm), Some(round)) = (w.next(), w.next().and_then(|r| r.parse().ok())) else {
                continue;
            };
            runs.push(Run {
                vmm: vmm.to_string(),
                round,
                exit_code: None,
                figures: BTreeMap::new(),
                sink_bytes: Vec::new(),
                problems: Vec::new(),
                log: Vec::new(),
            });
            open = true;
        } else if let Some(rest) = after(line, END_TAG) {
            if let (true, Some(run)) = (open, runs.last_mut()) {
                run.exit_code = rest.split_whitespace().nth(2).and_then(|c| c.parse().ok());
            }
            open = false;
        } else if let (true, Some(run)) = (open, runs.last_mut()) {
            match Record::parse(line) {
                Some(rec) if rec.fig == FIG_SINK => {
                    if let Some(b) = rec.num("bytes") {
                        run.sink_bytes.push(b as u64);
                    }
                }
                Some(rec) => match Figure::from_record(&rec) {
                    Some((fig, v)) => {
                        run.figures.insert(fig, v);
                    }
                    None => run.problems.push(rec.to_string()),
                },
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

pub use testbed::records::{after, Stats};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record::new(
            FIG_H2G,
            &[
                ("bytes", "1000000".into()),
                ("secs", "0.5".into()),
                ("status", "0".into()),
            ],
        );
        let back = Record::parse(&format!("[  1.0] {r}")).unwrap();
        assert_eq!(back, r);
        assert_eq!(Figure::from_record(&back), Some((Figure::H2g, 2.0)));
        assert_eq!(Record::parse("@@VSBX fig=a"), None);
        assert_eq!(Record::parse("@@VSB nofig=1"), None);
        let bad = Record::parse("@@VSB fig=g2h bytes=5 secs=1 status=1").unwrap();
        assert_eq!(Figure::from_record(&bad), None);
        let lat = Record::parse("@@VSB fig=connect n=10 median_us=250.5 status=0").unwrap();
        assert_eq!(Figure::from_record(&lat), Some((Figure::Connect, 250.5)));
    }

    #[test]
    fn ratios_are_oriented() {
        assert_eq!(Figure::H2g.ratio(200.0, 100.0), Some(2.0));
        assert_eq!(Figure::Connect.ratio(200.0, 100.0), Some(0.5));
        assert_eq!(Figure::Ping.ratio(0.0, 100.0), None);
        assert_eq!(Figure::G2h.ratio(1.0, 0.0), None);
    }

    #[test]
    fn console_splits_into_runs() {
        let console = "\
@@VSB fig=h2g bytes=1 secs=1 status=0
@@VSB-BEGIN firecracker 0
@@VSB fig=connect n=5 median_us=100 status=0
@@VSB fig=h2g bytes=268435456 secs=2 status=0
guest: @@VSB fig=sink bytes=268435456 secs=1.9 status=0
@@VSB fig=error what=no-ready
some log line
@@VSB-END firecracker 0 0
@@VSB-BEGIN ferrovm 0
@@VSB fig=g2h bytes=2000000 secs=1 status=0
";
        let runs = parse_console(console);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].vmm, "firecracker");
        assert_eq!(runs[0].exit_code, Some(0));
        assert_eq!(runs[0].figures[&Figure::Connect], 100.0);
        assert_eq!(runs[0].figures[&Figure::H2g], 268435456.0 / 2.0 / 1e6);
        assert_eq!(runs[0].sink_bytes, [268435456]);
        assert_eq!(runs[0].problems, ["@@VSB fig=error what=no-ready"]);
        assert_eq!(runs[0].log, ["some log line"]);
        assert_eq!(runs[1].exit_code, None);
        assert_eq!(runs[1].figures[&Figure::G2h], 2.0);
    }

    #[test]
    fn stats_and_quantiles() {
        assert_eq!(Stats::of(&[]), None);
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        let v: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(Stats::quantile(&v, 0.1), Some(2.0));
        assert_eq!(Stats::quantile(&v, 0.9), Some(10.0));
        assert_eq!(Stats::quantile(&[], 0.5), None);
    }
}
