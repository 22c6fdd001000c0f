//! `ferrovm img`: the disk-image tool (the qemu-img role). Options and output follow
//! `qemu-img` closely; the work is done by the `block` crate.

mod convert;

use anyhow::{anyhow, bail, Context};
use block::qcow2::{self, check::Repair, Compression, CreateOptions};
use block::{BlockDev, Format, OpenOptions};
use clap::{Args, Subcommand, ValueEnum};
use convert::{convert, ConvertArgs};
use std::path::{Path, PathBuf};

/// Arguments of `ferrovm img`.
#[derive(Debug, Args)]
pub struct ImgArgs {
    #[command(subcommand)]
    pub command: ImgCommand,
}

/// Output formats of `info`, `check` and `map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

/// Repair modes of `check -r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RepairArg {
    Leaks,
    All,
}

/// `ferrovm img` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImgCommand {
    /// Create an image: create [-f FMT] [-b BACKING -F FMT] [-o OPTIONS] FILE [SIZE]
    Create {
        /// Image format (raw or qcow2).
        #[arg(short = 'f', default_value = "raw")]
        format: String,
        /// Backing file (qcow2 only).
        #[arg(short = 'b')]
        backing: Option<String>,
        /// Format of the backing file (probed when omitted).
        #[arg(short = 'F')]
        backing_format: Option<String>,
        /// Options: cluster_size, compat (0.10|1.1), refcount_bits, compression_type
        /// (zlib|zstd), lazy_refcounts (on|off), backing_file, backing_fmt.
        #[arg(short = 'o')]
        options: Vec<String>,
        /// Quiet.
        #[arg(short = 'q')]
        quiet: bool,
        /// Image file.
        file: PathBuf,
        /// Virtual size (e.g. 1G, 512M, 10K); defaults to the backing file's size.
        size: Option<String>,
    },
    /// Show information about an image.
    Info {
        #[arg(short = 'f')]
        format: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Image file.
        file: PathBuf,
    },
    /// Check an image for consistency (exit 0 ok, 2 corruption, 3 leaks).
    Check {
        #[arg(short = 'f')]
        format: Option<String>,
        /// Repair leaks, or everything.
        #[arg(short = 'r', value_enum)]
        repair: Option<RepairArg>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        #[arg(short = 'q')]
        quiet: bool,
        /// Image file.
        file: PathBuf,
    },
    /// Convert an image to another format.
    Convert {
        /// Source format (probed when omitted).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Output format.
        #[arg(short = 'O', default_value = "raw")]
        out_format: String,
        /// Write compressed clusters (qcow2 output).
        #[arg(short = 'c')]
        compress: bool,
        /// Show progress.
        #[arg(short = 'p')]
        progress: bool,
        /// Output options (as for create).
        #[arg(short = 'o')]
        options: Vec<String>,
        /// Cache mode of the output, as qemu-img: "unsafe" (the default, like qemu-img's)
        /// skips fdatasync; writeback, writethrough, none and directsync flush at the end.
        #[arg(short = 't', default_value = "unsafe")]
        cache: String,
        #[arg(short = 'q')]
        quiet: bool,
        /// Source image.
        src: PathBuf,
        /// Output image.
        dst: PathBuf,
    },
    /// Change the virtual size: resize [--shrink] FILE [+|-]SIZE
    Resize {
        #[arg(short = 'f')]
        format: Option<String>,
        /// Allow shrinking.
        #[arg(long)]
        shrink: bool,
        #[arg(short = 'q')]
        quiet: bool,
        /// Image file.
        file: PathBuf,
        /// New size, or +SIZE / -SIZE relative to the current one.
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// Print the allocation map of an image (following its backing chain).
    Map {
        #[arg(short = 'f')]
        format: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: Output,
        /// Image file.
        file: PathBuf,
    },
}

/// Runs an `img` subcommand; returns the process exit status.
pub fn run(args: ImgArgs) -> anyhow::Result<u8> {
    match args.command {
        ImgCommand::Create {
            format,
            backing,
            backing_format,
            options,
            quiet,
            file,
            size,
        } => create(
            &format,
            backing,
            backing_format,
            &options,
            quiet,
            &file,
            size.as_deref(),
        ),
        ImgCommand::Info {
            format,
            output,
            file,
        } => info(format.as_deref(), output, &file),
        ImgCommand::Check {
            format,
            repair,
            output,
            quiet,
            file,
        } => check(format.as_deref(), repair, output, quiet, &file),
        ImgCommand::Convert {
            format,
            out_format,
            compress,
            progress,
            options,
            cache,
            quiet,
            src,
            dst,
        } => {
            let unsafe_cache = match cache.as_str() {
                "unsafe" => true,
                "writeback" | "writethrough" | "none" | "directsync" => false,
                _ => bail!("invalid cache mode '{cache}'"),
            };
            convert(&ConvertArgs {
                format,
                out_format,
                compress,
                progress: progress && !quiet,
                options,
                unsafe_cache,
                src,
                dst,
            })
        }
        ImgCommand::Resize {
            format,
            shrink,
            quiet,
            file,
            size,
        } => resize(format.as_deref(), shrink, quiet, &file, &size),
        ImgCommand::Map {
            format,
            output,
            file,
        } => map(format.as_deref(), output, &file),
    }
}

/// Parses sizes like `1G`, `512M`, `10K`, `1.5G`, `4096` (binary units): the grammar
/// `ferrovm run` uses too ([`vmm::options::parse_size`]).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    Ok(vmm::options::parse_size(s)?)
}

/// Human-readable size as qemu-img prints it ("1 GiB", "324 KiB", "1.5 MiB").
pub fn human_size(v: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut i = 0;
    // Switch unit once the value reaches 1000 of the current one (as qemu does).
    while i + 1 < UNITS.len() && (v as f64) >= 1000.0 * 1024f64.powi(i as i32) {
        i += 1;
    }
    let x = v as f64 / 1024f64.powi(i as i32);
    format!("{} {}", fmt_g3(x), UNITS[i])
}

/// `%0.3g`: three significant digits, no trailing zeros.
fn fmt_g3(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let digits = x.abs().log10().floor() as i32 + 1;
    let decimals = (3 - digits).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn parse_format(name: &str) -> anyhow::Result<Format> {
    Format::from_name(name)
        .ok_or_else(|| anyhow!("unknown or unsupported format '{name}' (raw, qcow2)"))
}

fn open_image(
    file: &Path,
    format: Option<&str>,
    writable: bool,
) -> anyhow::Result<Box<dyn BlockDev>> {
    let format = format.map(parse_format).transpose()?;
    Ok(block::open(
        file,
        &OpenOptions {
            writable,
            format,
            ..Default::default()
        },
    )?)
}

/// `-o` option groups as key/value pairs (QEMU's grammar, shared with `--drive`: `,,` is a
/// literal comma).
fn split_options(options: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for group in options {
        for kv in vmm::options::split_options(group) {
            if kv.is_empty() {
                continue;
            }
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow!("invalid option '{kv}' (expected key=value)"))?;
            out.push((k.to_string(), v.to_string()));
        }
    }
    Ok(out)
}

fn on_off(key: &str, v: &str) -> anyhow::Result<bool> {
    vmm::options::on_off(key, v).map_err(anyhow::Error::msg)
}

/// qcow2 creation options from `-o` plus the backing arguments.
fn qcow2_options(
    opts: &[(String, String)],
    size: u64,
    backing: Option<String>,
    backing_format: Option<String>,
) -> anyhow::Result<CreateOptions> {
    let mut o = CreateOptions {
        size,
        backing_file: backing,
        backing_format,
        ..Default::default()
    };
    for (k, v) in opts {
        match k.as_str() {
            "cluster_size" => o.cluster_size = parse_size(v)?,
            "compat" => {
                o.version = match v.as_str() {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    _ => bail!("invalid compat level '{v}' (0.10 or 1.1)"),
                }
            }
            "refcount_bits" => {
                o.refcount_bits = v
                    .parse()
                    .with_context(|| format!("invalid refcount_bits '{v}'"))?
            }
            "compression_type" => {
                o.compression = match v.as_str() {
                    "zlib" => Compression::Zlib,
                    "zstd" => Compression::Zstd,
                    _ => bail!("invalid compression_type '{v}' (zlib or zstd)"),
                }
            }
            "lazy_refcounts" => o.lazy_refcounts = on_off(k, v)?,
            "backing_file" => o.backing_file = Some(v.clone()),
            "backing_fmt" => o.backing_format = Some(v.clone()),
            "extended_l2" if !on_off(k, v)? => {}
            "preallocation" if v == "off" => {}
            "size" => o.size = parse_size(v)?,
            _ => bail!("qcow2 option '{k}={v}' is not supported"),
        }
    }
    Ok(o)
}

fn create(
    format: &str,
    backing: Option<String>,
    backing_format: Option<String>,
    options: &[String],
    quiet: bool,
    file: &Path,
    size: Option<&str>,
) -> anyhow::Result<u8> {
    let fmt = parse_format(format)?;
    let opts = split_options(options)?;
    let mut size = size.map(parse_size).transpose()?;
    match fmt {
        Format::Raw => {
            if backing.is_some() || !opts.is_empty() {
                bail!("raw images take no backing file and no options");
            }
            let size = size.ok_or_else(|| anyhow!("image size required"))?;
            if !quiet {
                println!("Formatting '{}', fmt=raw size={size}", file.display());
            }
            block::Raw::create(file, size)?;
        }
        Format::Qcow2 => {
            let mut o = qcow2_options(&opts, size.unwrap_or(0), backing, backing_format)?;
            if let Some(name) = o.backing_file.clone() {
                // Validate the backing file and take its size / format if not given.
                let full = qcow2::resolve_backing(file, &name);
                let bfmt = o.backing_format.as_deref().map(parse_format).transpose()?;
                let b = block::open(
                    &full,
                    &OpenOptions {
                        writable: false,
                        format: bfmt,
                        ..Default::default()
                    },
                )
                .with_context(|| format!("could not open backing file '{name}'"))?;
                if size.is_none() {
                    size = Some(b.size());
                    o.size = b.size();
                }
                if o.backing_format.is_none() {
                    o.backing_format = Some(b.info().format.name().to_string());
                }
            }
            if size.is_none() && !opts.iter().any(|(k, _)| k == "size") {
                bail!("image size required (or a backing file)");
            }
            if !quiet {
                let mut line = format!(
                    "Formatting '{}', fmt=qcow2 cluster_size={} extended_l2=off compression_type={} size={}",
                    file.display(),
                    o.cluster_size,
                    o.compression.name(),
                    o.size
                );
                if let Some(b) = &o.backing_file {
                    line += &format!(" backing_file={b}");
                }
                if let Some(b) = &o.backing_format {
                    line += &format!(" backing_fmt={b}");
                }
                if o.version == 2 {
                    line += " compat=0.10";
                }
                line += &format!(
                    " lazy_refcounts={} refcount_bits={}",
                    if o.lazy_refcounts { "on" } else { "off" },
                    o.refcount_bits
                );
                println!("{line}");
            }
            qcow2::create(file, &o)?;
        }
    }
    Ok(0)
}

fn disk_usage(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| (m.blocks() * 512, m.len()))
        .unwrap_or((0, 0))
}

fn json_pretty(v: &serde_json::Value) -> anyhow::Result<String> {
    use serde::Serialize;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser)?;
    Ok(String::from_utf8(out)?)
}

fn info(format: Option<&str>, output: Output, file: &Path) -> anyhow::Result<u8> {
    let img = open_image(file, format, false)?;
    let i = img.info();
    let (actual, _len) = disk_usage(file);
    match output {
        Output::Json => {
            let mut v = serde_json::json!({
                "virtual-size": i.virtual_size,
                "filename": file.display().to_string(),
                "format": i.format.name(),
                "actual-size": actual,
                "dirty-flag": i.qcow2.as_ref().is_some_and(|q| q.dirty),
            });
            if let Some(cs) = i.cluster_size {
                v["cluster-size"] = cs.into();
            }
            if let Some(q) = &i.qcow2 {
                let data = if q.version == 2 {
                    serde_json::json!({
                        "compat": "0.10",
                        "compression-type": q.compression_type,
                        "refcount-bits": q.refcount_bits,
                    })
                } else {
                    serde_json::json!({
                        "compat": "1.1",
                        "compression-type": q.compression_type,
                        "lazy-refcounts": q.lazy_refcounts,
                        "refcount-bits": q.refcount_bits,
                        "corrupt": q.corrupt,
                        "extended-l2": q.extended_l2,
                    })
                };
                v["format-specific"] = serde_json::json!({ "type": "qcow2", "data": data });
            }
            if let Some(b) = &i.backing_file {
                v["backing-filename"] = b.clone().into();
            }
            if let Some(b) = &i.full_backing_file {
                v["full-backing-filename"] = b.display().to_string().into();
            }
            if let Some(b) = &i.backing_format {
                v["backing-filename-format"] = b.clone().into();
            }
            println!("{}", json_pretty(&v)?);
        }
        Output::Human => {
            println!("image: {}", file.display());
            println!("file format: {}", i.format.name());
            println!(
                "virtual size: {} ({} bytes)",
                human_size(i.virtual_size),
                i.virtual_size
            );
            println!("disk size: {}", human_size(actual));
            if let Some(cs) = i.cluster_size {
                println!("cluster_size: {cs}");
            }
            if let Some(b) = &i.backing_file {
                match &i.full_backing_file {
                    Some(full) if full.as_path() != Path::new(b) => {
                        println!("backing file: {b} (actual path: {})", full.display())
                    }
                    _ => println!("backing file: {b}"),
                }
            }
            if let Some(b) = &i.backing_format {
                println!("backing file format: {b}");
            }
            if let Some(q) = &i.qcow2 {
                println!("Format specific information:");
                println!(
                    "    compat: {}",
                    if q.version == 2 { "0.10" } else { "1.1" }
                );
                println!("    compression type: {}", q.compression_type);
                if q.version >= 3 {
                    println!("    lazy refcounts: {}", q.lazy_refcounts);
                }
                println!("    refcount bits: {}", q.refcount_bits);
                if q.version >= 3 {
                    println!("    corrupt: {}", q.corrupt);
                    println!("    extended l2: {}", q.extended_l2);
                }
            }
        }
    }
    Ok(0)
}

fn check(
    format: Option<&str>,
    repair: Option<RepairArg>,
    output: Output,
    quiet: bool,
    file: &Path,
) -> anyhow::Result<u8> {
    let fmt = match format {
        Some(f) => parse_format(f)?,
        None => block::probe(file)?,
    };
    if fmt != Format::Qcow2 {
        eprintln!("ferrovm img: This image format does not support checks");
        return Ok(63);
    }
    let repair = match repair {
        None => Repair::None,
        Some(RepairArg::Leaks) => Repair::Leaks,
        Some(RepairArg::All) => Repair::All,
    };
    let r = match qcow2::check::check(file, repair) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferrovm img: check failed: {e}");
            return Ok(1);
        }
    };
    for m in &r.messages {
        eprintln!("{m}");
    }
    let pct = |n: u64| {
        if r.total_clusters == 0 {
            0.0
        } else {
            n as f64 * 100.0 / r.total_clusters as f64
        }
    };
    let pct_alloc = |n: u64| {
        if r.allocated_clusters == 0 {
            0.0
        } else {
            n as f64 * 100.0 / r.allocated_clusters as f64
        }
    };
    match output {
        Output::Json => {
            let v = serde_json::json!({
                "image-end-offset": r.image_end_offset,
                "total-clusters": r.total_clusters,
                "allocated-clusters": r.allocated_clusters,
                "fragmented-clusters": r.fragmented_clusters,
                "compressed-clusters": r.compressed_clusters,
                "check-errors": 0,
                "corruptions": r.corruptions,
                "leaks": r.leaks,
                "corruptions-fixed": r.corruptions_fixed,
                "leaks-fixed": r.leaks_fixed,
                "filename": file.display().to_string(),
                "format": "qcow2",
            });
            println!("{}", json_pretty(&v)?);
        }
        Output::Human if !quiet => {
            if r.leaks_fixed + r.corruptions_fixed > 0 {
                println!(
                    "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...",
                    r.leaks_fixed, r.corruptions_fixed
                );
            }
            if r.corruptions == 0 && r.leaks == 0 {
                println!("No errors were found on the image.");
            }
            if r.corruptions > 0 {
                println!(
                    "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
                    r.corruptions
                );
            }
            if r.leaks > 0 {
                println!(
                    "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.",
                    r.leaks
                );
            }
            println!(
                "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
                r.allocated_clusters,
                r.total_clusters,
                pct(r.allocated_clusters),
                pct_alloc(r.fragmented_clusters),
                pct_alloc(r.compressed_clusters)
            );
            println!("Image end offset: {}", r.image_end_offset);
        }
        Output::Human => {}
    }
    Ok(if r.corruptions > 0 {
        2
    } else if r.leaks > 0 {
        3
    } else {
        0
    })
}

fn resize(
    format: Option<&str>,
    shrink: bool,
    quiet: bool,
    file: &Path,
    size: &str,
) -> anyhow::Result<u8> {
    let img = open_image(file, format, true)?;
    let cur = img.size();
    let new = if let Some(d) = size.strip_prefix('+') {
        cur.checked_add(parse_size(d)?)
            .ok_or_else(|| anyhow!("size overflow"))?
    } else if let Some(d) = size.strip_prefix('-') {
        cur.checked_sub(parse_size(d)?)
            .ok_or_else(|| anyhow!("new size would be negative"))?
    } else {
        parse_size(size)?
    };
    if new < cur && !shrink {
        bail!("use the --shrink option to shrink an image (current size {cur}, requested {new})");
    }
    img.resize(new)?;
    img.flush()?;
    if !quiet {
        println!("Image resized.");
    }
    Ok(0)
}

/// `%#x` as C prints it: "0" for zero.
fn c_hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

fn map(format: Option<&str>, output: Output, file: &Path) -> anyhow::Result<u8> {
    let img = open_image(file, format, false)?;
    let entries = block::map_all(img.as_ref())?;
    match output {
        Output::Json => {
            let lines: Vec<String> = entries
                .iter()
                .map(|e| {
                    let mut s = format!(
                        "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
                        e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
                    );
                    if let Some(o) = e.offset {
                        s += &format!(", \"offset\": {o}");
                    }
                    s + "}"
                })
                .collect();
            println!("[{}]", lines.join(",\n"));
        }
        Output::Human => {
            println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
            for e in entries.iter().filter(|e| e.data) {
                if let Some(o) = e.offset {
                    println!(
                        "{:<16}{:<16}{:<16}{}",
                        c_hex(e.start),
                        c_hex(e.length),
                        c_hex(o),
                        e.file.display()
                    );
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_qemu_img() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("10K").unwrap(), 10 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999E").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(331776), "324 KiB");
        assert_eq!(human_size(200704), "196 KiB");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
    }
}
