//! `ferrovm snapshot`: what a snapshot holds, and merging a diff snapshot's memory file
//! onto a full one (Firecracker calls it rebase).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vmm::snapshot::{memfile, read_state};

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Print what a snapshot's state file holds (checked: format, version, checksum).
    Info {
        /// The state file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy the pages of a diff snapshot's memory file onto the full memory file taken
    /// before it; the full file then goes with the diff's state file.
    Merge {
        /// The full memory file (changed in place).
        base: PathBuf,
        /// The diff memory file.
        diff: PathBuf,
    },
}

fn mib(b: u64) -> String {
    vmm::options::human_size(b)
}

/// `ferrovm snapshot`.
pub fn run(args: SnapshotArgs) -> Result<u8> {
    match args.command {
        SnapshotCommand::Info { file, json } => {
            let s = read_state(&file)?;
            let c = &s.config;
            if json {
                let v = serde_json::json!({
                    "ferrovm_version": s.info.ferrovm_version,
                    "created_unix_ms": s.info.created_unix_ms,
                    "instance_id": s.info.instance_id,
                    "snapshot_type": if s.info.diff { "Diff" } else { "Full" },
                    "vcpus": c.cpus,
                    "mem_size": c.mem_size,
                    "memory_regions": s.memory,
                    "linux": c.linux,
                    "track_dirty_pages": c.track_dirty_pages,
                    "drives": c.drives.iter().map(|d| d.path.display().to_string()).collect::<Vec<_>>(),
                    "network_interfaces": c.nets.len(),
                    "entropy": c.rng,
                    "virtio_devices": s.virtio.iter().map(|v| v.name.clone()).collect::<Vec<_>>(),
                });
                crate::cli::print_stdout(&serde_json::to_string_pretty(&v)?)?;
                return Ok(0);
            }
            let mut out = vec![
                format!("snapshot:     {}", file.display()),
                format!(
                    "type:         {} (ferrovm {}, instance {})",
                    if s.info.diff { "diff" } else { "full" },
                    s.info.ferrovm_version,
                    s.info.instance_id
                ),
                format!(
                    "created:      {} ms after the Unix epoch",
                    s.info.created_unix_ms
                ),
                format!(
                    "guest:        {} vCPU(s), {} of memory in {} region(s), {}",
                    c.cpus,
                    mib(c.mem_size),
                    s.memory.len(),
                    if c.linux {
                        "Linux (irqchip, PIT)"
                    } else {
                        "raw image"
                    }
                ),
            ];
            for (i, v) in s.vcpus.iter().enumerate() {
                out.push(format!(
                    "vcpu{i}:        rip {:#x}, {} MSRs, TSC {} kHz",
                    v.regs.rip,
                    v.msrs.len(),
                    v.tsc_khz.map_or("?".into(), |k| k.to_string())
                ));
            }
            for d in &c.drives {
                out.push(format!(
                    "drive:        {} ({}{})",
                    d.path.display(),
                    if d.qcow2 { "qcow2" } else { "raw" },
                    if d.read_only { ", read-only" } else { "" }
                ));
            }
            for n in &c.nets {
                out.push(format!(
                    "interface:    {} ({})",
                    n.id.as_deref().unwrap_or("-"),
                    n.tap.as_deref().unwrap_or("user networking")
                ));
            }
            for v in &s.virtio {
                out.push(format!(
                    "virtio:       {} (status {:#x}{})",
                    v.name,
                    v.transport.status,
                    if v.transport.activated {
                        ", active"
                    } else {
                        ""
                    }
                ));
            }
            crate::cli::print_stdout(&out.join("\n"))?;
            Ok(0)
        }
        SnapshotCommand::Merge { base, diff } => {
            let copied = memfile::merge(&base, &diff)
                .with_context(|| format!("merging {} onto {}", diff.display(), base.display()))?;
            crate::cli::print_stdout(&format!(
                "merged {} of {} onto {}",
                mib(copied),
                diff.display(),
                base.display()
            ))?;
            Ok(0)
        }
    }
}
