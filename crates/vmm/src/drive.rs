//! Drives: `--drive` specifications (`path=FILE[,format=raw|qcow2][,readonly=on]
//! [,cache=writeback|none][,aio=threads|io_uring][,id=NAME]`, QEMU style: a literal comma in
//! a value is written `,,`), the checks made before anything is created, and the
//! preparation of each drive for its device (format probing, `--snapshot` overlays).

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use block::FileIdentity;
pub use block::Format;
pub use devices::virtio::block::{CacheMode, Engine};

use crate::options::{on_off, split_options};

/// One drive.
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
    /// The drive's name (the API's `drive_id`); also its serial number, the first 20
    /// bytes of it (`/sys/block/vdX/serial`). `None`: `drive<N>`.
    pub id: Option<String>,
    /// Guest flushes reach the image (`fdatasync`); off for Firecracker's
    /// `cache_type: Unsafe`, where the device offers no FLUSH.
    pub flush: bool,
    /// The root file system: put first (`/dev/vda`) and named on the kernel command line.
    pub root: bool,
    /// With `root`: the root partition's PARTUUID instead of `/dev/vda`.
    pub partuuid: Option<String>,
    /// Rate limits (`bw=`, `iops=`, the API's `rate_limiter`).
    pub limits: crate::limits::Limits,
}

impl DriveConfig {
    /// A writable, format-probed drive on `path` with the defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DriveConfig {
            path: path.into(),
            format: None,
            read_only: false,
            cache: CacheMode::default(),
            aio: Engine::default(),
            id: None,
            flush: true,
            root: false,
            partuuid: None,
            limits: crate::limits::Limits::default(),
        }
    }

    /// The drive's name when it is drive `index`.
    pub fn name(&self, index: usize) -> String {
        self.id.clone().unwrap_or_else(|| format!("drive{index}"))
    }

    /// The serial number the guest reads: the name's first 20 bytes (at a character
    /// boundary).
    pub fn serial(&self, index: usize) -> String {
        let mut name = self.name(index);
        let mut end = name.len().min(MAX_ID_LEN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        name
    }
}

/// The longest serial virtio-blk can report.
pub const MAX_ID_LEN: usize = devices::virtio::block::ID_BYTES;

/// The keys `--drive` accepts.
pub const DRIVE_KEYS: &str = "path, format, readonly, cache, aio, id, bw, iops";

/// Why a drive cannot be used. Every message names the drive and, where there is one,
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The image cannot be opened or inspected.
    #[error("drive {index}: cannot open {}: {source}", path.display())]
    Open {
        /// Drive number.
        index: usize,
        /// The image.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A directory.
    #[error("drive {index}: {} is a directory", path.display())]
    IsDirectory {
        /// Drive number.
        index: usize,
        /// The path.
        path: PathBuf,
    },
    /// One file attached twice with a writer.
    #[error("drives {first} ({}) and {second} ({}) are the same file and not both readonly=on: two writers would corrupt it", first_path.display(), second_path.display())]
    SameFile {
        /// The first drive.
        first: usize,
        /// Its path.
        first_path: PathBuf,
        /// The second drive.
        second: usize,
        /// Its path.
        second_path: PathBuf,
    },
    /// More drives than interrupt lines.
    #[error("{given} drives given; at most {max} fit (one interrupt line each)")]
    TooMany {
        /// Drives asked for.
        given: usize,
        /// The room.
        max: usize,
    },
    /// Two root drives.
    #[error("drives {first} and {second} are both the root device; only one can be")]
    TwoRoots {
        /// The first root.
        first: usize,
        /// The second.
        second: usize,
    },
    /// The image format could not be determined or the image not read.
    #[error("drive {index}: {source}")]
    Image {
        /// Drive number.
        index: usize,
        /// The cause.
        source: block::Error,
    },
    /// A path that cannot go into a qcow2 overlay header.
    #[error("drive {index}: {} is not a UTF-8 path (needed in the overlay header)", path.display())]
    NotUtf8 {
        /// Drive number.
        index: usize,
        /// The path.
        path: PathBuf,
    },
    /// The `--snapshot` overlay could not be made.
    #[error("drive {index}: cannot create the snapshot overlay: {source}")]
    Overlay {
        /// Drive number.
        index: usize,
        /// The cause.
        source: std::io::Error,
    },
    /// The virtio-blk device refused the image.
    #[error("drive {index}: {source}")]
    Device {
        /// Drive number.
        index: usize,
        /// The cause.
        source: devices::virtio::block::BlockError,
    },
}

/// Parses one `--drive` value.
pub fn parse_drive(spec: &str) -> Result<DriveConfig, String> {
    let mut path = None;
    let mut d = DriveConfig::new(PathBuf::new());
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
            "bw" => d.limits.bandwidth = Some(crate::limits::parse_rate(key, value)?),
            "iops" => d.limits.ops = Some(crate::limits::parse_rate(key, value)?),
            _ => return Err(format!("unknown drive option {key:?} (keys: {DRIVE_KEYS})")),
        }
    }
    d.path = path.ok_or_else(|| format!("no path= in {spec:?}"))?;
    Ok(d)
}

/// Checks the drives before anything is created: they fit in `slots` interrupt lines,
/// each exists and is not a directory, at most one is the root, and no file is attached
/// twice unless every attachment is read-only (or `snapshot`: the images are then only
/// read).
pub fn check_drives(
    drives: &[DriveConfig],
    slots: usize,
    snapshot: bool,
) -> Result<(), DriveError> {
    if drives.len() > slots {
        return Err(DriveError::TooMany {
            given: drives.len(),
            max: slots,
        });
    }
    let mut seen: Vec<(FileIdentity, usize)> = Vec::new();
    let mut root = None;
    for (i, d) in drives.iter().enumerate() {
        if d.root {
            if let Some(first) = root {
                return Err(DriveError::TwoRoots { first, second: i });
            }
            root = Some(i);
        }
        let meta = std::fs::metadata(&d.path).map_err(|source| DriveError::Open {
            index: i,
            path: d.path.clone(),
            source,
        })?;
        if meta.is_dir() {
            return Err(DriveError::IsDirectory {
                index: i,
                path: d.path.clone(),
            });
        }
        let identity = FileIdentity::of(&meta);
        if let Some(&(_, j)) = seen.iter().find(|(id, _)| *id == identity) {
            let other = &drives[j];
            if !snapshot && (!d.read_only || !other.read_only) {
                return Err(DriveError::SameFile {
                    first: j,
                    first_path: other.path.clone(),
                    second: i,
                    second_path: d.path.clone(),
                });
            }
        }
        seen.push((identity, i));
    }
    Ok(())
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
pub fn prepare(index: usize, d: &DriveConfig, snapshot: bool) -> Result<PreparedDrive, DriveError> {
    let shown = d.path.display();
    let image = |source| DriveError::Image { index, source };
    let format = match d.format {
        Some(f) => f,
        None => {
            let f = block::probe(&d.path).map_err(image)?;
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
    let backing = std::fs::canonicalize(&d.path).map_err(|source| DriveError::Open {
        index,
        path: d.path.clone(),
        source,
    })?;
    let size = block::open(
        &backing,
        &block::OpenOptions {
            writable: false,
            format: Some(format),
            unsafe_cache: false,
        },
    )
    .map_err(image)?
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
        .ok_or_else(|| DriveError::NotUtf8 {
            index,
            path: d.path.clone(),
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
    .map_err(image)?;
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
    let file = opened.map_err(|source| DriveError::Overlay { index, source })?;
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
                format: Some(Format::Raw),
                read_only: true,
                cache: CacheMode::None,
                aio: Engine::IoUring,
                id: Some("disk-1".into()),
                ..DriveConfig::new("/tmp/a.img")
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
        let l = parse_drive("x,bw=10M,iops=500").unwrap().limits;
        assert_eq!(
            l.bandwidth,
            Some(crate::limits::Bucket::per_second(10 << 20))
        );
        assert_eq!(l.ops, Some(crate::limits::Bucket::per_second(500)));
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
        let e = prepare(3, &parse_drive(missing.to_str().unwrap()).unwrap(), false)
            .unwrap_err()
            .to_string();
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
    fn drive_files_are_checked_before_the_vm_exists() {
        let dir = std::env::temp_dir().join(format!("ferrovm-drives-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.img");
        let b = dir.join("b.img");
        std::fs::write(&a, vec![0u8; 4096]).unwrap();
        std::fs::write(&b, vec![0u8; 4096]).unwrap();
        let link = dir.join("a-link.img");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let (a, b, link, d) = (
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            link.to_str().unwrap(),
            dir.to_str().unwrap(),
        );
        let drives = |specs: &[&str]| -> Vec<DriveConfig> {
            specs.iter().map(|s| parse_drive(s).unwrap()).collect()
        };
        let check = |specs: &[&str], snapshot| check_drives(&drives(specs), 18, snapshot);
        let err = |specs: &[&str]| check(specs, false).unwrap_err().to_string();
        assert!(check(&[a, b], false).is_ok());
        let ro = |p: &str| format!("path={p},readonly=on");
        assert!(check(&[&ro(a), &ro(link)], false).is_ok());
        assert!(err(&[a, link]).contains("are the same file"));
        assert!(err(&[&ro(a), a]).contains("not both readonly=on"));
        assert!(
            check(&[a, link], true).is_ok(),
            "--snapshot only reads the images"
        );
        assert!(err(&[d]).contains("is a directory"));
        let missing = format!("{d}/missing.img");
        let e = err(&[&missing]);
        assert!(
            e.contains("drive 0: cannot open") && e.contains("missing.img"),
            "{e}"
        );
        let many_ro: Vec<String> = std::iter::repeat_n(ro(a), 19).collect();
        let many_ro: Vec<&str> = many_ro.iter().map(|s| s.as_str()).collect();
        assert!(err(&many_ro).contains("at most 18 fit"));
        let mut roots = drives(&[a, b]);
        roots[0].root = true;
        roots[1].root = true;
        let e = check_drives(&roots, 18, false).unwrap_err().to_string();
        assert!(e.contains("both the root device"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn serials_are_the_first_twenty_bytes_of_the_name() {
        let mut d = DriveConfig::new("/x");
        assert_eq!((d.name(3), d.serial(3)), ("drive3".into(), "drive3".into()));
        d.id = Some("a_very_long_drive_identifier".into());
        assert_eq!(d.serial(0), "a_very_long_drive_id");
        d.id = Some("ééééééééééé".into());
        assert_eq!(d.serial(0).len(), 20);
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
            ("path=a,bw=0", "above 0"),
            ("path=a,iops=many", "iops=\"many\""),
        ] {
            let e = parse_drive(spec).unwrap_err();
            assert!(e.contains(want), "{spec:?}: {e}");
        }
    }
}
