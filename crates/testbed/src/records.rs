//! What benchmarks read back from L1's console: result lines `TAG fig=NAME key=value ...`
//! (each benchmark has its own TAG, e.g. `@@NET`), the text after a tag on a line, and
//! statistics over rounds.

use std::collections::BTreeMap;

/// One `TAG fig=NAME key=value ...` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub fig: String,
    pub fields: BTreeMap<String, String>,
}

impl Record {
    /// Finds a record with `tag` anywhere in `line` (console lines may carry a prefix);
    /// `None` when there is none, or when a word after the tag is not `key=value` or
    /// `fig=` is missing.
    pub fn parse(tag: &str, line: &str) -> Option<Record> {
        let rest = after(line, tag)?;
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

    /// A finite numeric field.
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

    /// The record as a line with `tag` (what [`Record::parse`] reads back).
    pub fn line(&self, tag: &str) -> String {
        let mut s = format!("{tag} fig={}", self.fig);
        for (k, v) in &self.fields {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }
}

/// The text after `tag ` in `line`, if `line` holds `tag` followed by a space.
pub fn after<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    let at = line.find(tag)?;
    line[at + tag.len()..].strip_prefix(' ')
}

/// Median, minimum and maximum of some samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    /// `None` for no (finite) samples. An even count takes the mean of the middle two.
    pub fn of(samples: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// The value at quantile `q` (0..=1) of sorted finite samples, nearest rank.
    pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let i = ((q.clamp(0.0, 1.0) * (v.len() - 1) as f64).round()) as usize;
        Some(v[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_print() {
        let r = Record::parse("@@X", "[ 1.2] @@X fig=a n=3 s=x status=0").unwrap();
        assert_eq!(r.fig, "a");
        assert_eq!(r.num("n"), Some(3.0));
        assert_eq!(r.num("s"), None);
        assert!(r.ok());
        assert_eq!(r.line("@@X"), "@@X fig=a n=3 s=x status=0");
        assert_eq!(Record::parse("@@X", &r.line("@@X")), Some(r));
        assert_eq!(Record::parse("@@X", "@@XY fig=a"), None);
        assert_eq!(Record::parse("@@X", "@@X fig=a junk"), None);
        assert_eq!(Record::parse("@@X", "@@X n=1"), None);
        assert!(!Record::parse("@@X", "@@X fig=a status=1").unwrap().ok());
        assert_eq!(after("ab @@X-END q 1", "@@X-END"), Some("q 1"));
    }

    #[test]
    fn stats() {
        assert_eq!(Stats::of(&[]), None);
        assert_eq!(Stats::of(&[f64::NAN]), None);
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let v = [5.0, 2.0, 10.0, 7.0];
        assert_eq!(Stats::quantile(&v, 0.0), Some(2.0));
        assert_eq!(Stats::quantile(&v, 1.0), Some(10.0));
        assert_eq!(Stats::quantile(&[f64::NAN], 0.5), None);
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
    }
}
