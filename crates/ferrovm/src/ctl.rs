//! `ferrovm ctl`: the command-line client of the API socket (what people use instead of
//! curl), with a live view of the VM-exit profile (`exits --watch`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use api::client::{Client, Reply};
use clap::{Args, Subcommand};
use serde_json::Value;

pub const CTL_AFTER_HELP: &str = "\
Examples:
  ferrovm ctl --api-sock /tmp/fv.sock info
  ferrovm ctl --api-sock /tmp/fv.sock pause
  ferrovm ctl --api-sock /tmp/fv.sock exits --watch
  ferrovm ctl --api-sock /tmp/fv.sock snapshot vm.snap vm.mem
  ferrovm ctl --api-sock /tmp/fv.sock request PUT /machine-config '{\"vcpu_count\":2,\"mem_size_mib\":256}'

Exit status: 0 on success; 1 when the API refuses the request (its fault_message is
printed) or cannot be reached.";

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The API socket of the ferrovm to control (ferrovm run --api-sock PATH).
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// Print the API's JSON answer instead of a human-readable one.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for an answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Instance id, state and version (GET /).
    Info,
    /// The whole VM configuration (GET /vm/config).
    Config,
    /// Pause every vCPU and device (PATCH /vm Paused).
    Pause,
    /// Resume a paused VM (PATCH /vm Resumed).
    Resume,
    /// Press Ctrl+Alt+Del on the guest's keyboard (PUT /actions SendCtrlAltDel).
    CtrlAltDel,
    /// Boot a VM configured over the API (PUT /actions InstanceStart).
    Start,
    /// Write a metrics line now (PUT /actions FlushMetrics).
    FlushMetrics,
    /// VM exits by reason, port, MMIO region and vCPU, with handling times, and the
    /// virtio devices' notifications and interrupts (GET /vm/exits).
    Exits {
        /// Refresh the table every --interval seconds with rates, like top (Ctrl-C ends).
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes.
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (with --watch).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Save the paused VM (PUT /snapshot/create).
    Snapshot {
        /// The state file to write.
        state: PathBuf,
        /// The memory file to write.
        mem: PathBuf,
        /// Only the pages written since the last snapshot (needs track_dirty_pages).
        #[arg(long)]
        diff: bool,
    },
    /// Load a snapshot into a ferrovm started with only --api-sock (PUT /snapshot/load).
    Restore {
        /// The state file.
        state: PathBuf,
        /// The memory file.
        mem: PathBuf,
        /// Run the guest at once (else it stays paused).
        #[arg(long)]
        resume: bool,
        /// Track dirty pages from now on (for diff snapshots).
        #[arg(long)]
        track_dirty_pages: bool,
    },
    /// Change a network interface's rate limits while the guest runs
    /// (PATCH /network-interfaces/IFACE); a limit of 0 removes it, one left out is kept.
    NetLimit {
        /// The interface id (eth0, or the API's iface_id).
        iface: String,
        /// Bytes per second the guest may receive (K, M, G suffixes).
        #[arg(long, value_name = "SIZE", value_parser = rate_arg)]
        rx_bw: Option<u64>,
        /// Bytes per second the guest may send.
        #[arg(long, value_name = "SIZE", value_parser = rate_arg)]
        tx_bw: Option<u64>,
        /// Packets per second the guest may receive.
        #[arg(long, value_name = "N", value_parser = rate_arg)]
        rx_ops: Option<u64>,
        /// Packets per second the guest may send.
        #[arg(long, value_name = "N", value_parser = rate_arg)]
        tx_ops: Option<u64>,
    },
    /// Change a drive's rate limits while the guest runs (PATCH /drives/ID); a limit of 0
    /// removes it, one left out is kept.
    DriveLimit {
        /// The drive id (drive0, or the API's drive_id).
        drive: String,
        /// Bytes per second (K, M, G suffixes).
        #[arg(long, value_name = "SIZE", value_parser = rate_arg)]
        bw: Option<u64>,
        /// Requests per second.
        #[arg(long, value_name = "N", value_parser = rate_arg)]
        iops: Option<u64>,
    },
    /// Set the balloon's target (PATCH /balloon): the guest hands the host back MIB MiB.
    Balloon {
        /// The target in MiB (0 deflates it).
        mib: u32,
    },
    /// The balloon's size and the guest's memory statistics (GET /balloon/statistics).
    BalloonStats,
    /// Any request: METHOD PATH [JSON-BODY].
    Request {
        /// GET, PUT or PATCH.
        method: String,
        /// The path, e.g. /machine-config.
        path: String,
        /// The JSON body.
        body: Option<String>,
    },
}

fn rate_arg(s: &str) -> std::result::Result<u64, String> {
    vmm::options::parse_size(s).map_err(|e| e.to_string())
}

/// A rate limiter body with per-second buckets (`Some(0)`: remove that bucket).
fn limiter_body(bw: Option<u64>, ops: Option<u64>) -> Option<Value> {
    let bucket = |r: u64| serde_json::json!({ "size": r, "refill_time": 1000 });
    if bw.is_none() && ops.is_none() {
        return None;
    }
    let mut m = serde_json::Map::new();
    if let Some(b) = bw {
        m.insert("bandwidth".into(), bucket(b));
    }
    if let Some(o) = ops {
        m.insert("ops".into(), bucket(o));
    }
    Some(Value::Object(m))
}

/// `p` made absolute against this process's directory (the VMM's may differ).
fn absolute(p: &std::path::Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

fn check(reply: Reply) -> Result<Reply> {
    if reply.is_success() {
        Ok(reply)
    } else {
        bail!("API error {}: {}", reply.status, reply.message())
    }
}

fn print_json(v: &Value) {
    crate::cli::print_stdout(&serde_json::to_string_pretty(v).unwrap_or_default()).ok();
}

/// `ferrovm ctl`.
pub fn run(args: CtlArgs) -> Result<u8> {
    let client = Client::new(&args.api_sock, Duration::from_secs(args.timeout.max(1)))?;
    let json = args.json;
    let simple = |method: &str, path: &str, body: Option<&str>, done: &str| -> Result<u8> {
        let reply = check(client.request(method, path, body)?)?;
        if json {
            print_json(&reply.json());
        } else {
            crate::cli::print_stdout(done)?;
        }
        Ok(0)
    };
    match args.command {
        CtlCommand::Info => {
            let v = check(client.request("GET", "/", None)?)?.json();
            if json {
                print_json(&v);
            } else {
                crate::cli::print_stdout(&format!(
                    "id:      {}\nstate:   {}\nversion: {} {}",
                    v["id"].as_str().unwrap_or("?"),
                    v["state"].as_str().unwrap_or("?"),
                    v["app_name"].as_str().unwrap_or("?"),
                    v["vmm_version"].as_str().unwrap_or("?")
                ))?;
            }
            Ok(0)
        }
        CtlCommand::Config => {
            print_json(&check(client.request("GET", "/vm/config", None)?)?.json());
            Ok(0)
        }
        CtlCommand::Pause => simple("PATCH", "/vm", Some(r#"{"state":"Paused"}"#), "paused"),
        CtlCommand::Resume => simple("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#), "resumed"),
        CtlCommand::CtrlAltDel => simple(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"SendCtrlAltDel"}"#),
            "Ctrl+Alt+Del sent",
        ),
        CtlCommand::Start => simple(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#),
            "started",
        ),
        CtlCommand::FlushMetrics => simple(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"FlushMetrics"}"#),
            "metrics flushed",
        ),
        CtlCommand::Snapshot { state, mem, diff } => {
            let body = serde_json::json!({
                "snapshot_type": if diff { "Diff" } else { "Full" },
                "snapshot_path": absolute(&state),
                "mem_file_path": absolute(&mem),
            })
            .to_string();
            simple("PUT", "/snapshot/create", Some(&body), "snapshot saved")
        }
        CtlCommand::NetLimit {
            iface,
            rx_bw,
            tx_bw,
            rx_ops,
            tx_ops,
        } => {
            let mut body = serde_json::json!({ "iface_id": iface });
            if let Some(rx) = limiter_body(rx_bw, rx_ops) {
                body["rx_rate_limiter"] = rx;
            }
            if let Some(tx) = limiter_body(tx_bw, tx_ops) {
                body["tx_rate_limiter"] = tx;
            }
            simple(
                "PATCH",
                &format!("/network-interfaces/{iface}"),
                Some(&body.to_string()),
                "rate limits changed",
            )
        }
        CtlCommand::DriveLimit { drive, bw, iops } => {
            let mut body = serde_json::json!({ "drive_id": drive });
            if let Some(l) = limiter_body(bw, iops) {
                body["rate_limiter"] = l;
            }
            simple(
                "PATCH",
                &format!("/drives/{drive}"),
                Some(&body.to_string()),
                "rate limits changed",
            )
        }
        CtlCommand::Balloon { mib } => simple(
            "PATCH",
            "/balloon",
            Some(&serde_json::json!({ "amount_mib": mib }).to_string()),
            &format!("balloon target set to {mib} MiB"),
        ),
        CtlCommand::BalloonStats => {
            let reply = check(client.request("GET", "/balloon/statistics", None)?)?;
            print_json(&reply.json());
            Ok(0)
        }
        CtlCommand::Restore {
            state,
            mem,
            resume,
            track_dirty_pages,
        } => {
            let body = serde_json::json!({
                "snapshot_path": absolute(&state),
                "mem_backend": { "backend_type": "File", "backend_path": absolute(&mem) },
                "resume_vm": resume,
                "track_dirty_pages": track_dirty_pages,
            })
            .to_string();
            simple(
                "PUT",
                "/snapshot/load",
                Some(&body),
                if resume {
                    "restored and running"
                } else {
                    "restored, paused"
                },
            )
        }
        CtlCommand::Request { method, path, body } => {
            let reply = client.request(&method.to_ascii_uppercase(), &path, body.as_deref())?;
            let ok = reply.is_success();
            if json || !reply.body.is_empty() {
                match reply.json() {
                    Value::Null => crate::cli::print_stdout(&reply.body)?,
                    v => print_json(&v),
                }
            } else {
                crate::cli::print_stdout(&format!("{}", reply.status))?;
            }
            Ok(if ok { 0 } else { 1 })
        }
        CtlCommand::Exits {
            watch,
            interval,
            count,
        } => exits(&client, json, watch, interval, count),
    }
}

fn exits(
    client: &Client,
    json: bool,
    watch: bool,
    interval: f64,
    count: Option<u64>,
) -> Result<u8> {
    let fetch =
        || -> Result<Value> { Ok(check(client.request("GET", "/vm/exits", None)?)?.json()) };
    if !watch {
        let v = fetch()?;
        if json {
            print_json(&v);
        } else {
            crate::cli::print_stdout(&table(&v, None))?;
        }
        return Ok(0);
    }
    let interval = Duration::from_secs_f64(interval.clamp(0.1, 3600.0));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut prev: Option<(Value, Instant)> = None;
    let mut shown = 0u64;
    loop {
        let v = fetch()?;
        let now = Instant::now();
        if json {
            crate::cli::print_stdout(&v.to_string())?;
        } else {
            let rates = prev
                .as_ref()
                .map(|(p, t)| (p, now.duration_since(*t).as_secs_f64()));
            let text = table(&v, rates);
            if tty {
                // Clear the screen and go home, as top does.
                crate::cli::print_stdout(&format!("\x1b[2J\x1b[H{text}"))?;
            } else {
                crate::cli::print_stdout(&format!("{text}\n"))?;
            }
        }
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return Ok(0);
        }
        prev = Some((v, now));
        std::thread::sleep(interval);
    }
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or(0)
}

/// The histogram bucket bound at or below which `q` of the counts fall.
fn quantile_ns(counter: &Value, q: f64) -> Option<u64> {
    let buckets = counter["histogram"].as_array()?;
    let total: u64 = buckets
        .iter()
        .map(|b| b["count"].as_u64().unwrap_or(0))
        .sum();
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for b in buckets {
        seen += b["count"].as_u64().unwrap_or(0);
        if seen >= want {
            return Some(b["lt_ns"].as_u64().unwrap_or(u64::MAX));
        }
    }
    None
}

fn fmt_ns(ns: Option<u64>) -> String {
    match ns {
        None => "-".into(),
        Some(u64::MAX) => ">1s".into(),
        Some(n) if n >= 1_000_000 => format!("{}ms", n / 1_000_000),
        Some(n) if n >= 1_000 => format!("{}µs", n / 1_000),
        Some(n) => format!("{n}ns"),
    }
}

/// The exits table; with `prev` (the previous sample and the seconds since), rates too.
pub fn table(v: &Value, prev: Option<(&Value, f64)>) -> String {
    use std::fmt::Write as _;
    let rate = |now: u64, path: &[&str]| -> String {
        match prev {
            Some((p, dt)) if dt > 0.0 => {
                format!("{:.1}", now.saturating_sub(num(p, path)) as f64 / dt)
            }
            _ => "-".into(),
        }
    };
    let mut s = String::new();
    let total = &v["total"];
    let vcpus = v["vcpus"].as_array().map_or(0, |a| a.len());
    let _ = writeln!(
        s,
        "VM exits: {} on {vcpus} vCPU(s) over {:.1} s ({}/s); handling {:.3} s",
        num(total, &["exits"]),
        num(v, &["wall_ns"]) as f64 / 1e9,
        rate(num(total, &["exits"]), &["total", "exits"]),
        num(total, &["handle_ns"]) as f64 / 1e9
    );
    let _ = writeln!(
        s,
        "{:<16} {:>12} {:>10} {:>9} {:>8} {:>8}",
        "reason", "count", "/s", "avg µs", "p50 <", "p99 <"
    );
    if let Some(reasons) = total["reasons"].as_object() {
        for (name, c) in reasons {
            let n = c["count"].as_u64().unwrap_or(0);
            let avg = c["handle_ns"].as_u64().unwrap_or(0) as f64 / n.max(1) as f64 / 1000.0;
            let _ = writeln!(
                s,
                "{name:<16} {n:>12} {:>10} {avg:>9.3} {:>8} {:>8}",
                rate(n, &["total", "reasons", name, "count"]),
                fmt_ns(quantile_ns(c, 0.5)),
                fmt_ns(quantile_ns(c, 0.99))
            );
        }
    }
    for (key, title) in [("ports", "port"), ("mmio", "mmio region")] {
        let Some(map) = total[key].as_object().filter(|m| !m.is_empty()) else {
            continue;
        };
        let _ = writeln!(
            s,
            "{title:<28} {:>10} {:>10} {:>10} {:>9}",
            "reads", "writes", "/s", "avg µs"
        );
        for (name, a) in map {
            let (r, w) = (num(a, &["reads", "count"]), num(a, &["writes", "count"]));
            let ns = num(a, &["reads", "handle_ns"]) + num(a, &["writes", "handle_ns"]);
            let per_s = match prev {
                Some((p, dt)) if dt > 0.0 => {
                    let before = num(p, &["total", key, name, "reads", "count"])
                        + num(p, &["total", key, name, "writes", "count"]);
                    format!("{:.1}", (r + w).saturating_sub(before) as f64 / dt)
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "{name:<28} {r:>10} {w:>10} {per_s:>10} {:>9.3}",
                ns as f64 / (r + w).max(1) as f64 / 1000.0
            );
        }
    }
    if let Some(devs) = v["devices"].as_array().filter(|d| !d.is_empty()) {
        let _ = writeln!(
            s,
            "{:<16} {:>14} {:>12} {:>12} {:>14}",
            "device", "notifications", "requests", "interrupts", "notify exits"
        );
        for (i, d) in devs.iter().enumerate() {
            let _ = writeln!(
                s,
                "{:<16} {:>14} {:>12} {:>12} {:>14}",
                d["device"].as_str().unwrap_or("?"),
                num(d, &["notifications"]),
                num(d, &["requests"]),
                format!(
                    "{} ({}/s)",
                    num(d, &["interrupts"]),
                    rate(
                        num(d, &["interrupts"]),
                        &["devices", &i.to_string(), "interrupts"]
                    )
                ),
                num(d, &["notify_exits"])
            );
        }
    }
    if vcpus > 1 {
        let _ = writeln!(s, "{:<16} {:>12} {:>10}", "vcpu", "exits", "/s");
        for (i, c) in v["vcpus"].as_array().into_iter().flatten().enumerate() {
            let n = num(c, &["exits"]);
            let r = match prev {
                Some((p, dt)) if dt > 0.0 => {
                    let before = p["vcpus"][i]["exits"].as_u64().unwrap_or(0);
                    format!("{:.1}", n.saturating_sub(before) as f64 / dt)
                }
                _ => "-".into(),
            };
            let _ = writeln!(s, "{:<16} {n:>12} {r:>10}", format!("vcpu{i}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(exits: u64, io_out: u64) -> Value {
        serde_json::json!({
            "wall_ns": 2_000_000_000u64,
            "total": {
                "exits": exits, "handle_ns": 1000, "run_ns": 0,
                "reasons": { "io_out": { "count": io_out, "handle_ns": io_out * 3000,
                    "histogram": [{"lt_ns": 2048, "count": io_out / 2}, {"lt_ns": 4096, "count": io_out - io_out / 2}] } },
                "ports": { "0x03f8": { "reads": {"count": 0, "handle_ns": 0, "histogram": []},
                    "writes": {"count": io_out, "handle_ns": io_out * 3000, "histogram": []}, "claimed": true } },
                "mmio": {}
            },
            "vcpus": [{"exits": exits / 2}, {"exits": exits - exits / 2}],
            "devices": [{"device": "blk0", "notifications": 5, "requests": 7, "interrupts": 3, "notify_exits": 0}]
        })
    }

    #[test]
    fn table_shows_counts_rates_and_quantiles() {
        let a = sample(100, 40);
        let b = sample(300, 240);
        let t = table(&b, Some((&a, 2.0)));
        assert!(t.contains("VM exits: 300 on 2 vCPU(s)"), "{t}");
        assert!(t.contains("(100.0/s)"), "{t}");
        let io = t.lines().find(|l| l.starts_with("io_out")).unwrap();
        assert!(
            io.contains("240") && io.contains("100.0") && io.contains("3.000"),
            "{io}"
        );
        assert!(
            io.contains("2µs") && io.contains("4µs"),
            "p50 and p99 bounds: {io}"
        );
        assert!(t.contains("0x03f8"), "{t}");
        assert!(t.contains("blk0"), "{t}");
        assert!(t.contains("vcpu1"), "{t}");
        let first = table(&a, None);
        assert!(
            first
                .lines()
                .find(|l| l.starts_with("io_out"))
                .unwrap()
                .contains(" - "),
            "{first}"
        );
    }
}
