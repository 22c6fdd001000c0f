//! `--drive` specifications: `path=FILE[,format=raw|qcow2][,readonly=on][,cache=writeback|none]
//! [,aio=threads|io_uring][,id=NAME]`, QEMU style (a literal comma in a value is written `,,`).

use std::os::fd::AsRawFd;
use std::path::PathBuf;

pub use block::Format;
pub use devices::virtio::block::{CacheMode, Engine};

/// One `--drive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// The image file.
    pub path: PathBuf,
    /// Its format; `None`: probed from the file (with a warning).
    pub format: Option<Format>,
    /// The guest cannot write.
    pub read_only: bool,
    /// Host cache mode (`cache=none`: O_DIRECT).
    pub cache: CacheMode,
    /// I/O engine (`aio=threads|io_uring`).
    pub aio: Engine,
    /// Serial number the guest reads (`/sys/block/vdX/serial`), at most 20 bytes;
    /// `None`: `drive<N>`.
    pub id: Option<String>,
}

/// The longest serial virtio-blk can report.
pub const MAX_ID_LEN: usize = devices::virtio::block::ID_BYTES;

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
        cache: CacheMode::default(),
        aio: Engine::default(),
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
                d.format = Some(
                    Format::from_name(value)
                        .ok_or_else(|| format!("format={value:?}: expected raw or qcow2"))?,
                )
            }
            "readonly" => d.read_only = on_off(key, value)?,
            "cache" => {
                d.cache = match value {
                    "writeback" => CacheMode::Writeback,
                    "none" => CacheMode::None,
                    _ => return Err(format!("cache={value:?}: expected writeback or none")),
                }
            }
            "aio" => {
                d.aio = match value {
                    "threads" => Engine::Thread,
                    "io_uring" => Engine::IoUring,
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

/// A drive ready for the device to open: the file, its format, and (with `--snapshot`)
/// the temporary overlay, already deleted from its directory and kept open here so every
/// boot of the VM (a guest reboot with `--on-reboot restart`) sees the same overlay.
#[derive(Debug)]
pub struct PreparedDrive {
    /// The file the device opens (the image, or `/proc/self/fd/N` for the overlay).
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The guest cannot write.
    pub read_only: bool,
    _overlay: Option<std::fs::File>,
}

/// Resolves drive `index`'s format (probing, with a warning, when not given) and, with
/// `snapshot`, puts a temporary qcow2 overlay in front of a writable drive.
pub fn prepare(index: usize, d: &DriveConfig, snapshot: bool) -> Result<PreparedDrive, String> {
    let shown = d.path.display();
    let format = match d.format {
        Some(f) => f,
        None => {
            let f = block::probe(&d.path).map_err(|e| format!("drive {index}: {e}"))?;
            tracing::warn!(
                "drive {index}: no format given for {shown}; probing guessed {}. Probing raw \
                 images is dangerous (a guest that writes a qcow2 header into it changes how \
                 it is opened next time); add format={} to the --drive to silence this",
                f.name(),
                f.name()
            );
            f
        }
    };
    if !snapshot || d.read_only {
        return Ok(PreparedDrive {
            path: d.path.clone(),
            format,
            read_only: d.read_only,
            _overlay: None,
        });
    }
    let backing = std::fs::canonicalize(&d.path)
        .map_err(|e| format!("drive {index}: cannot open {shown}: {e}"))?;
    let size = block::open(
        &backing,
        &block::OpenOptions {
            writable: false,
            format: Some(format),
            unsafe_cache: false,
        },
    )
    .map_err(|e| format!("drive {index}: {e}"))?
    .size();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let overlay = std::env::temp_dir().join(format!(
        "ferrovm-snapshot-{}-{index}-{nanos:08x}.qcow2",
        std::process::id()
    ));
    let backing_name = backing
        .to_str()
        .ok_or_else(|| {
            format!("drive {index}: {shown} is not a UTF-8 path (needed in the overlay header)")
        })?
        .to_string();
    block::qcow2::create(
        &overlay,
        &block::qcow2::CreateOptions {
            size,
            backing_file: Some(backing_name),
            backing_format: Some(format.name().to_string()),
            ..Default::default()
        },
    )
    .map_err(|e| format!("drive {index}: cannot create the snapshot overlay: {e}"))?;
    tracing::info!(
        "drive {index}: writes go to the temporary overlay {}",
        overlay.display()
    );
    // Keep it open and delete its name at once: nothing is left behind however ferrovm
    // ends, and the open file is reachable as /proc/self/fd/N for every boot.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&overlay);
    if let Err(e) = std::fs::remove_file(&overlay) {
        tracing::warn!(
            "cannot delete the snapshot overlay {}: {e}",
            overlay.display()
        );
    }
    let file =
        opened.map_err(|e| format!("drive {index}: cannot open the snapshot overlay: {e}"))?;
    Ok(PreparedDrive {
        path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
        format: Format::Qcow2,
        read_only: false,
        _overlay: Some(file),
    })
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
                format: Some(Format::Raw),
                read_only: true,
                cache: CacheMode::None,
                aio: Engine::IoUring,
                id: Some("disk-1".into()),
            }
        );
        let d = parse_drive("disk.qcow2").unwrap();
        assert_eq!(d.path, PathBuf::from("disk.qcow2"));
        assert_eq!(d.format, None);
        assert!(!d.read_only);
        assert_eq!(
            (d.cache, d.aio, d.id),
            (CacheMode::Writeback, Engine::Thread, None)
        );
        assert_eq!(
            parse_drive("file=x,format=qcow2").unwrap().format,
            Some(Format::Qcow2)
        );
        assert!(!parse_drive("x,readonly=off").unwrap().read_only);
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferrovm-drive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn formats_are_probed_when_not_given() {
        let raw = temp("probe.raw");
        std::fs::write(&raw, vec![7u8; 4096]).unwrap();
        let q = temp("probe.qcow2");
        block::qcow2::create(
            &q,
            &block::qcow2::CreateOptions {
                size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        let p = prepare(0, &parse_drive(raw.to_str().unwrap()).unwrap(), false).unwrap();
        assert_eq!((p.format, p.path.clone()), (Format::Raw, raw.clone()));
        let p = prepare(0, &parse_drive(q.to_str().unwrap()).unwrap(), false).unwrap();
        assert_eq!(p.format, Format::Qcow2);
        // A given format is not second-guessed.
        let spec = format!("path={},format=raw", q.display());
        assert_eq!(
            prepare(0, &parse_drive(&spec).unwrap(), false)
                .unwrap()
                .format,
            Format::Raw
        );
        let missing = temp("missing.img");
        let e = prepare(3, &parse_drive(missing.to_str().unwrap()).unwrap(), false).unwrap_err();
        assert!(
            e.starts_with("drive 3:") && e.contains("missing.img"),
            "{e}"
        );
    }

    #[test]
    fn snapshot_puts_a_deleted_overlay_in_front_of_writable_drives() {
        let raw = temp("snap.raw");
        std::fs::write(&raw, vec![0xabu8; 1 << 20]).unwrap();
        let spec = format!("path={},format=raw", raw.display());
        let count_overlays = || {
            std::fs::read_dir(std::env::temp_dir())
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    let name = name.to_string_lossy();
                    name.starts_with(&format!("ferrovm-snapshot-{}-1-", std::process::id()))
                })
                .count()
        };
        let p = prepare(1, &parse_drive(&spec).unwrap(), true).unwrap();
        assert_eq!(p.format, Format::Qcow2);
        assert!(!p.read_only);
        assert!(p.path.starts_with("/proc/self/fd/"), "{}", p.path.display());
        assert_eq!(
            count_overlays(),
            0,
            "the overlay has no name left in $TMPDIR"
        );
        let opts = block::OpenOptions {
            writable: true,
            format: Some(Format::Qcow2),
            unsafe_cache: false,
        };
        // First "boot": write through the overlay.
        let dev = block::open(&p.path, &opts).unwrap();
        assert_eq!(dev.size(), 1 << 20);
        dev.write_at(&[1u8; 512], 0).unwrap();
        dev.flush().unwrap();
        drop(dev);
        // Second "boot" (guest reboot): the same overlay, with the first boot's write.
        let dev = block::open(&p.path, &opts).unwrap();
        let mut b = [0u8; 1024];
        dev.read_at(&mut b, 0).unwrap();
        assert_eq!(
            (b[0], b[511], b[512]),
            (1, 1, 0xab),
            "overlay data over backing data, across reopenings"
        );
        drop(dev);
        drop(p);
        assert_eq!(
            std::fs::read(&raw).unwrap(),
            vec![0xabu8; 1 << 20],
            "the image is untouched"
        );
        // Read-only drives need no overlay.
        let ro = prepare(
            0,
            &parse_drive(&format!("{spec},readonly=on")).unwrap(),
            true,
        )
        .unwrap();
        assert_eq!(ro.path, raw);
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
