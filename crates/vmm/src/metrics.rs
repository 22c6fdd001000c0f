//! Metrics as Firecracker writes them (`PUT /metrics`): one JSON object per line, to a file
//! or named pipe, every 60 s and on `FlushMetrics`. Firecracker's layout where ferrovm has
//! the counter: counters are the increase since the previous line, latencies and start-up
//! times the last value.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use api::models::{self, VmState};
use api::{ApiRequest, ApiResponse};
use vmm_sys_util::timerfd::TimerFd;

use crate::device_manager::NamedCounts;
use crate::stats::{ExitReason, StatsReport};

/// Firecracker's period between metrics lines.
pub const PERIOD: Duration = Duration::from_secs(60);

struct Destination {
    file: File,
    config: models::Metrics,
    instance_id: String,
    timer: TimerFd,
}

/// A run's metrics.
pub struct Metrics {
    dest: Option<Destination>,
    /// Counters by (group, name), since the run started.
    totals: BTreeMap<(&'static str, &'static str), u64>,
    /// What the previous line reported.
    flushed: BTreeMap<(&'static str, &'static str), u64>,
    /// Last values by (group, name).
    stored: BTreeMap<(&'static str, &'static str), u64>,
    /// Exit counts of the VMs of this run that have ended (a guest reboot).
    ended_vms: BTreeMap<&'static str, u64>,
}

fn counter_names(req: &ApiRequest) -> Option<(&'static str, &'static str, &'static str)> {
    use ApiRequest::*;
    Some(match req {
        GetInstanceInfo => ("get_api_requests", "instance_info_count", ""),
        GetMachineConfig => ("get_api_requests", "machine_cfg_count", ""),
        GetVersion => ("get_api_requests", "vmm_version_count", ""),
        Action(_) => ("put_api_requests", "actions_count", "actions_fails"),
        PutBootSource(_) => ("put_api_requests", "boot_source_count", "boot_source_fails"),
        PutDrive(_) => ("put_api_requests", "drive_count", "drive_fails"),
        PutLogger(_) => ("put_api_requests", "logger_count", "logger_fails"),
        PutMachineConfig(_) => ("put_api_requests", "machine_cfg_count", "machine_cfg_fails"),
        PutMetrics(_) => ("put_api_requests", "metrics_count", "metrics_fails"),
        PatchDrive(_) => ("patch_api_requests", "drive_count", "drive_fails"),
        PatchMachineConfig(_) => (
            "patch_api_requests",
            "machine_cfg_count",
            "machine_cfg_fails",
        ),
        _ => return None,
    })
}

/// vCPU exit counters of Firecracker's `vcpu` group.
const VCPU_EXITS: [(ExitReason, &str); 4] = [
    (ExitReason::IoIn, "exit_io_in"),
    (ExitReason::IoOut, "exit_io_out"),
    (ExitReason::MmioRead, "exit_mmio_read"),
    (ExitReason::MmioWrite, "exit_mmio_write"),
];

/// Exit reasons that mean a vCPU failed.
const VCPU_FAILURES: [ExitReason; 5] = [
    ExitReason::Shutdown,
    ExitReason::FailEntry,
    ExitReason::InternalError,
    ExitReason::Unknown,
    ExitReason::Other,
];

fn exit_counts(stats: &StatsReport) -> BTreeMap<&'static str, u64> {
    let count = |r: ExitReason| stats.total.reasons.get(r.name()).map_or(0, |c| c.count);
    let mut m: BTreeMap<&'static str, u64> = VCPU_EXITS
        .iter()
        .map(|(r, name)| (*name, count(*r)))
        .collect();
    m.insert("failures", VCPU_FAILURES.iter().map(|r| count(*r)).sum());
    m
}

impl Metrics {
    /// Metrics of a run that started at `started` (the process start-up time is the time
    /// until now).
    pub fn new(started: Instant) -> Metrics {
        let mut stored = BTreeMap::new();
        stored.insert(
            ("api_server", "process_startup_time_us"),
            started.elapsed().as_micros() as u64,
        );
        Metrics {
            dest: None,
            totals: BTreeMap::new(),
            flushed: BTreeMap::new(),
            stored,
            ended_vms: BTreeMap::new(),
        }
    }

    /// Sends the metrics to `m.metrics_path` (created if missing; a named pipe works too)
    /// from now on, every [`PERIOD`] and on [`Metrics::flush`].
    pub fn configure(&mut self, m: &models::Metrics, instance_id: &str) -> Result<(), String> {
        if self.dest.is_some() {
            return Err("Reinitialization of metrics not allowed.".into());
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&m.metrics_path)
            .map_err(|e| format!("cannot open {}: {e}", m.metrics_path))?;
        let mut timer = TimerFd::new().map_err(|e| format!("timerfd: {e}"))?;
        timer
            .reset(PERIOD, Some(PERIOD))
            .map_err(|e| format!("timerfd: {e}"))?;
        self.dest = Some(Destination {
            file,
            config: m.clone(),
            instance_id: instance_id.to_string(),
            timer,
        });
        Ok(())
    }

    /// The configuration given, for `GET /vm/config`.
    pub fn config(&self) -> Option<models::Metrics> {
        self.dest.as_ref().map(|d| d.config.clone())
    }

    /// The periodic timer, once configured.
    pub fn timer_fd(&self) -> Option<RawFd> {
        self.dest.as_ref().map(|d| d.timer.as_raw_fd())
    }

    /// Acknowledges the timer.
    pub fn timer_expired(&mut self) {
        if let Some(d) = &mut self.dest {
            let _ = d.timer.wait();
        }
    }

    fn add(&mut self, group: &'static str, name: &'static str, n: u64) {
        *self.totals.entry((group, name)).or_default() += n;
    }

    /// Counts an API request and whether it failed.
    pub fn api_request(&mut self, req: &ApiRequest, resp: &ApiResponse) {
        if let Some((group, count, fails)) = counter_names(req) {
            self.add(group, count, 1);
            if !fails.is_empty() && resp.status() >= 400 {
                self.add(group, fails, 1);
            }
        }
    }

    /// Records a pause or resume and how long it took.
    pub fn vm_state_changed(&mut self, state: VmState, took: Duration) {
        let name = match state {
            VmState::Paused => "pause_vm",
            VmState::Resumed => "resume_vm",
        };
        self.stored
            .insert(("latencies_us", name), took.as_micros() as u64);
    }

    /// Counts a drive whose image was replaced.
    pub fn drive_updated(&mut self) {
        self.add("block", "update_count", 1);
    }

    /// Keeps the exit counts of a VM that ended (the run goes on after a guest reboot).
    pub fn vm_ended(&mut self, stats: &StatsReport) {
        for (k, v) in exit_counts(stats) {
            *self.ended_vms.entry(k).or_default() += v;
        }
    }

    /// One metrics line, and what it reports as flushed.
    fn line(
        &self,
        stats: Option<&StatsReport>,
        devices: &[NamedCounts],
        api: Option<&api::server::ServerStats>,
    ) -> (
        serde_json::Value,
        BTreeMap<(&'static str, &'static str), u64>,
    ) {
        let mut totals = self.totals.clone();
        let mut exits = self.ended_vms.clone();
        if let Some(s) = stats {
            for (k, v) in exit_counts(s) {
                *exits.entry(k).or_default() += v;
            }
        }
        for (k, v) in exits {
            totals.insert(("vcpu", k), v);
        }
        let mut blk = 0;
        let mut rng = 0;
        for d in devices {
            if d.device.starts_with("blk") {
                blk += d.counts.worker.notifications;
            } else if d.device == "rng" {
                rng += d.counts.worker.notifications;
            }
        }
        *totals.entry(("block", "queue_event_count")).or_default() += blk;
        // Firecracker's `net` group: every interface together.
        for n in devices.iter().filter_map(|d| d.net.as_ref()) {
            let t = n.total();
            for (name, v) in [
                ("rx_bytes_count", t.rx_bytes),
                ("rx_packets_count", t.rx_packets),
                ("rx_fails", t.rx_dropped),
                ("no_rx_avail_buffer", t.rx_no_buffers),
                ("rx_tap_event_count", t.backend_events),
                ("tx_bytes_count", t.tx_bytes),
                ("tx_packets_count", t.tx_packets),
                ("tx_fails", t.tx_dropped),
                ("tx_malformed_frames", t.bad_chains),
            ] {
                *totals.entry(("net", name)).or_default() += v;
            }
        }
        *totals
            .entry(("entropy", "entropy_event_count"))
            .or_default() += rng;
        if let Some(a) = api {
            let bad = a.bad_requests.load(std::sync::atomic::Ordering::Relaxed);
            totals.insert(("api_server", "sync_response_fails"), bad);
        }
        let mut out = serde_json::Map::new();
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        out.insert("utc_timestamp_ms".into(), ms.into());
        let mut put = |group: &str, name: &str, v: u64| {
            out.entry(group.to_string())
                .or_insert_with(|| serde_json::json!({}))
                .as_object_mut()
                .map(|g| g.insert(name.to_string(), v.into()));
        };
        for ((group, name), v) in &totals {
            let before = self.flushed.get(&(*group, *name)).copied().unwrap_or(0);
            put(group, name, v.saturating_sub(before));
        }
        for ((group, name), v) in &self.stored {
            put(group, name, *v);
        }
        if let Some(d) = &self.dest {
            if d.config.emit_id == Some(true) {
                out.insert("id".into(), d.instance_id.clone().into());
            }
            if let Some(p) = &d.config.properties {
                out.insert("properties".into(), serde_json::json!(p));
            }
        }
        (serde_json::Value::Object(out), totals)
    }

    /// Writes one line now, if a destination is configured. A full pipe loses the line
    /// (counted in `logger.missed_metrics_count`), it never blocks the VMM.
    pub fn flush(
        &mut self,
        stats: Option<&StatsReport>,
        devices: &[NamedCounts],
        api: Option<&api::server::ServerStats>,
    ) {
        if self.dest.is_none() {
            return;
        }
        let (line, totals) = self.line(stats, devices, api);
        let mut text = line.to_string();
        text.push('\n');
        let Some(d) = &mut self.dest else {
            return;
        };
        match d.file.write(text.as_bytes()) {
            Ok(n) if n == text.len() => self.flushed = totals,
            Ok(_) | Err(_) => {
                tracing::warn!("metrics: a line could not be written whole; dropped");
                self.add("logger", "missed_metrics_count", 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_increases_since_the_last_line() {
        let dir = std::env::temp_dir().join(format!("ferrovm-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.json");
        let _ = std::fs::remove_file(&path);
        let mut m = Metrics::new(Instant::now());
        let cfg = models::Metrics {
            metrics_path: path.display().to_string(),
            emit_id: Some(true),
            properties: None,
        };
        m.configure(&cfg, "vm-7").unwrap();
        assert!(m
            .configure(&cfg, "vm-7")
            .unwrap_err()
            .contains("Reinitialization"));
        m.api_request(&ApiRequest::GetInstanceInfo, &ApiResponse::Empty);
        m.api_request(
            &ApiRequest::PutDrive(
                serde_json::from_str(r#"{"drive_id":"a","is_root_device":false}"#).unwrap(),
            ),
            &ApiResponse::bad_request("no"),
        );
        m.vm_state_changed(VmState::Paused, Duration::from_micros(42));
        let net = |rx_bytes: u64| {
            let pair = devices::virtio::net::PairCounts {
                rx_bytes,
                tx_packets: 3,
                ..Default::default()
            };
            NamedCounts {
                device: "net0".into(),
                counts: Default::default(),
                net: Some(devices::virtio::net::NetCounts {
                    link_up: true,
                    active_pairs: 2,
                    pairs: vec![pair, pair],
                }),
                vsock: None,
                balloon: None,
            }
        };
        m.flush(None, &[net(100)], None);
        m.api_request(&ApiRequest::GetInstanceInfo, &ApiResponse::Empty);
        m.flush(None, &[net(250)], None);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["get_api_requests"]["instance_info_count"], 1);
        assert_eq!(lines[0]["put_api_requests"]["drive_count"], 1);
        assert_eq!(lines[0]["put_api_requests"]["drive_fails"], 1);
        assert_eq!(lines[0]["latencies_us"]["pause_vm"], 42);
        assert_eq!(lines[0]["id"], "vm-7");
        assert!(lines[0]["utc_timestamp_ms"].as_u64().unwrap() > 0);
        assert_eq!(lines[1]["get_api_requests"]["instance_info_count"], 1);
        assert_eq!(lines[1]["put_api_requests"]["drive_count"], 0);
        assert_eq!(lines[1]["latencies_us"]["pause_vm"], 42);
        // Both queue pairs together; the second line has the increase.
        assert_eq!(lines[0]["net"]["rx_bytes_count"], 200);
        assert_eq!(lines[0]["net"]["tx_packets_count"], 6);
        assert_eq!(lines[1]["net"]["rx_bytes_count"], 300);
        assert_eq!(lines[1]["net"]["tx_packets_count"], 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
