//! `--drive` specifications: `path=FILE[,format=raw|qcow2][,readonly=on][,cache=writeback|none]
//! [,aio=threads|io_uring][,id=NAME]`, QEMU style (a literal comma in a value is written `,,`).

use std::path::PathBuf;

/// Image format of a drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveFormat {
    /// A raw image: the file is the disk.
    Raw,
    /// A qcow2 image.
    Qcow2,
}

/// Host page-cache use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriveCache {
    /// Through the host page cache; a guest flush becomes fdatasync.
    #[default]
    Writeback,
    /// O_DIRECT: bypass the host page cache.
    None,
}

/// How requests are executed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriveAio {
    /// Synchronous system calls on the device's I/O thread.
    #[default]
    Threads,
    /// io_uring (raw images only).
    IoUring,
}

/// One `--drive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// The image file.
    pub path: PathBuf,
    /// Its format; `None`: probed from the file (with a warning).
    pub format: Option<DriveFormat>,
    /// The guest cannot write.
    pub read_only: bool,
    /// Host cache mode.
    pub cache: DriveCache,
    /// I/O engine.
    pub aio: DriveAio,
    /// Serial number the guest reads (`/sys/block/vdX/serial`), at most 20 bytes;
    /// `None`: `drive<N>`.
    pub id: Option<String>,
}

/// The longest serial virtio-blk can report.
pub const MAX_ID_LEN: usize = 20;

/// The keys `--drive` accepts.
pub const DRIVE_KEYS: &str = "path, format, readonly, cache, aio, id";

/// Splits `s` at single commas; `,,` stands for a literal comma.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' && chars.peek() == Some(&',') {
            chars.next();
            cur.push(',');
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}={v:?}: expected on or off")),
    }
}

/// Parses one `--drive` value.
pub fn parse_drive(spec: &str) -> Result<DriveConfig, String> {
    let mut path = None;
    let mut d = DriveConfig {
        path: PathBuf::new(),
        format: None,
        read_only: false,
        cache: DriveCache::default(),
        aio: DriveAio::default(),
        id: None,
    };
    for (i, opt) in split_options(spec).into_iter().enumerate() {
        if opt.is_empty() {
            continue;
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, v),
            // A bare first word is the path, as in `--drive disk.img,readonly=on`.
            None if i == 0 => ("path", opt.as_str()),
            None => return Err(format!("{opt:?} is not key=value (keys: {DRIVE_KEYS})")),
        };
        match key {
            "path" | "file" => {
                if value.is_empty() {
                    return Err("path= is empty".into());
                }
                path = Some(PathBuf::from(value));
            }
            "format" => {
                d.format = Some(match value {
                    "raw" => DriveFormat::Raw,
                    "qcow2" => DriveFormat::Qcow2,
                    _ => return Err(format!("format={value:?}: expected raw or qcow2")),
                })
            }
            "readonly" => d.read_only = on_off(key, value)?,
            "cache" => {
                d.cache = match value {
                    "writeback" => DriveCache::Writeback,
                    "none" => DriveCache::None,
                    _ => return Err(format!("cache={value:?}: expected writeback or none")),
                }
            }
            "aio" => {
                d.aio = match value {
                    "threads" => DriveAio::Threads,
                    "io_uring" => DriveAio::IoUring,
                    _ => return Err(format!("aio={value:?}: expected threads or io_uring")),
                }
            }
            "id" => {
                if value.len() > MAX_ID_LEN {
                    return Err(format!(
                        "id={value:?} is {} bytes; virtio-blk serials are at most {MAX_ID_LEN}",
                        value.len()
                    ));
                }
                d.id = Some(value.to_string());
            }
            _ => return Err(format!("unknown drive option {key:?} (keys: {DRIVE_KEYS})")),
        }
    }
    d.path = path.ok_or_else(|| format!("no path= in {spec:?}"))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_minimal_specs() {
        let d =
            parse_drive("path=/tmp/a.img,format=raw,readonly=on,cache=none,aio=io_uring,id=disk-1")
                .unwrap();
        assert_eq!(
            d,
            DriveConfig {
                path: "/tmp/a.img".into(),
                format: Some(DriveFormat::Raw),
                read_only: true,
                cache: DriveCache::None,
                aio: DriveAio::IoUring,
                id: Some("disk-1".into()),
            }
        );
        let d = parse_drive("disk.qcow2").unwrap();
        assert_eq!(d.path, PathBuf::from("disk.qcow2"));
        assert_eq!(d.format, None);
        assert!(!d.read_only);
        assert_eq!(
            (d.cache, d.aio, d.id),
            (DriveCache::Writeback, DriveAio::Threads, None)
        );
        assert_eq!(
            parse_drive("file=x,format=qcow2").unwrap().format,
            Some(DriveFormat::Qcow2)
        );
        assert!(!parse_drive("x,readonly=off").unwrap().read_only);
    }

    #[test]
    fn double_commas_are_literal() {
        assert_eq!(
            parse_drive("path=a,,b.img,id=x").unwrap().path,
            PathBuf::from("a,b.img")
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, want) in [
            ("", "no path="),
            ("readonly=on", "no path="),
            ("path=", "path= is empty"),
            ("path=a,format=vmdk", "expected raw or qcow2"),
            ("path=a,readonly=maybe", "expected on or off"),
            ("path=a,cache=unsafe", "expected writeback or none"),
            ("path=a,aio=native", "expected threads or io_uring"),
            ("path=a,size=1G", "unknown drive option \"size\""),
            ("path=a,ro", "not key=value"),
            ("path=a,id=abcdefghijklmnopqrstuvwxyz", "at most 20"),
        ] {
            let e = parse_drive(spec).unwrap_err();
            assert!(e.contains(want), "{spec:?}: {e}");
        }
    }
}
