//! Host artifacts (Debian kernel, its KVM modules, busybox, QEMU) and the cached L1 base
//! image built from them: the ELF `vmlinux` and the base initramfs.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::cpio::CpioWriter;
use crate::cpio::{add_busybox, add_host_file};
use crate::error::{io_err, Error, Result};
use crate::libs::shared_libraries;

/// Where the Debian kernel images live.
pub const BOOT_DIR: &str = "/boot";
/// Where kernel modules live.
pub const MODULES_ROOT: &str = "/lib/modules";
/// busybox-static's binary.
pub const BUSYBOX: &str = "/bin/busybox";
/// qemu-system-x86's binary.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// QEMU's firmware directory.
pub const QEMU_DATADIR: &str = "/usr/share/qemu";

/// KVM modules L1 loads, in dependency order, relative to `/lib/modules/<ver>/`.
pub const L1_MODULES: [&str; 4] = [
    "kernel/virt/lib/irqbypass.ko",
    "kernel/drivers/crypto/ccp/ccp.ko",
    "kernel/arch/x86/kvm/kvm.ko",
    "kernel/arch/x86/kvm/kvm-amd.ko",
];

/// L1's `/init`. The job script is `/job.sh`, added by a second cpio archive.
const L1_INIT: &str = r#"#!/bin/busybox sh
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
for m in /testbed/modules/*.ko; do
    insmod "$m" || echo "testbed: insmod $m failed"
done
kvm=0
[ -c /dev/kvm ] && kvm=1
[ "$kvm" = 1 ] || echo "testbed: /dev/kvm missing in L1 (kvm_amd did not load?)"
echo "@@TESTBED-L1-READY kvm=$kvm uptime=$(cut -d' ' -f1 /proc/uptime)@@"
if [ -f /job.sh ]; then
    cd /tmp
    sh /job.sh </dev/null
    status=$?
else
    echo "testbed: no /job.sh"
    status=127
fi
echo "@@TESTBED-STATUS=$status@@"
sync
poweroff -f
"#;

/// Bumped whenever the base image layout changes, to invalidate caches.
const BASE_FORMAT_VERSION: u32 = 1;

/// The host files the testbed is built from.
#[derive(Debug, Clone)]
pub struct HostArtifacts {
    /// Kernel release, e.g. "6.1.0-56-amd64".
    pub kernel_version: String,
    /// `/boot/vmlinuz-<version>` (a bzImage).
    pub vmlinuz: PathBuf,
    /// `/lib/modules/<version>`.
    pub modules_dir: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// QEMU firmware directory.
    pub qemu_datadir: PathBuf,
    /// Host TSC rate in kHz (from /proc/cpuinfo "cpu MHz"); TCG's TSC runs at it.
    pub tsc_khz: Option<u64>,
    /// The kernel's CONFIG_HZ (from /boot/config-<version>).
    pub kernel_hz: Option<u64>,
}

impl HostArtifacts {
    /// Finds the newest installed Debian kernel and the other packages' files.
    pub fn locate() -> Result<Self> {
        let (kernel_version, vmlinuz) = newest_kernel(Path::new(BOOT_DIR))?;
        let modules_dir = Path::new(MODULES_ROOT).join(&kernel_version);
        for m in L1_MODULES {
            require(
                &modules_dir.join(m),
                "KVM kernel module",
                "linux-image-amd64",
            )?;
        }
        let busybox = require(Path::new(BUSYBOX), "busybox", "busybox-static")?;
        if !shared_libraries(&busybox)?.is_empty() {
            return Err(Error::MissingArtifact {
                what: "a statically linked busybox (the installed one is dynamic)",
                path: busybox,
                package: "busybox-static",
            });
        }
        let qemu = require(Path::new(QEMU), "qemu-system-x86_64", "qemu-system-x86")?;
        let qemu_datadir = require(
            &Path::new(QEMU_DATADIR).join("qboot.rom"),
            "QEMU firmware",
            "qemu-system-x86",
        )?
        .parent()
        .map_or_else(|| PathBuf::from(QEMU_DATADIR), Path::to_path_buf);
        let tsc_khz = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| cpu_khz(&c));
        let kernel_hz =
            fs::read_to_string(Path::new(BOOT_DIR).join(format!("config-{kernel_version}")))
                .ok()
                .and_then(|c| config_hz(&c));
        Ok(HostArtifacts {
            tsc_khz,
            kernel_hz,
            kernel_version,
            vmlinuz,
            modules_dir,
            busybox,
            qemu,
            qemu_datadir,
        })
    }

    /// Kernel parameters that make L1's early boot deterministic under TCG: the TSC
    /// rate (`tsc_early_khz`) and loops-per-jiffy (`lpj`). Without them the kernel
    /// calibrates the TSC against the emulated PIT, which fails on a loaded host and
    /// then hangs early boot (seen here in 4 of 6 boots at load average 3).
    pub fn l1_timing_params(&self) -> String {
        let Some(khz) = self.tsc_khz else {
            return String::new();
        };
        let mut p = format!("tsc_early_khz={khz} tsc=reliable");
        if let Some(hz) = self.kernel_hz.filter(|&h| h > 0) {
            p.push_str(&format!(" lpj={}", khz * 1000 / hz));
        }
        p
    }

    /// A key that changes when any input of the base image changes.
    fn cache_key(&self) -> Result<u64> {
        let mut h = Fnv::new();
        h.write(&BASE_FORMAT_VERSION.to_le_bytes());
        h.write(L1_INIT.as_bytes());
        let mut inputs = vec![self.vmlinuz.clone(), self.busybox.clone()];
        inputs.extend(L1_MODULES.iter().map(|m| self.modules_dir.join(m)));
        for p in inputs {
            let md = fs::metadata(&p).map_err(io_err("stat", &p))?;
            let mtime = md
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            h.write(p.as_os_str().as_encoded_bytes());
            h.write(&md.len().to_le_bytes());
            h.write(&mtime.to_le_bytes());
        }
        Ok(h.finish())
    }
}

/// The cached L1 base: paths of the ELF kernel and the base initramfs.
#[derive(Debug, Clone)]
pub struct L1Base {
    /// Uncompressed ELF of the host kernel (booted via its PVH note).
    pub vmlinux: PathBuf,
    /// Base initramfs: busybox, `/init`, KVM modules.
    pub base_cpio: PathBuf,
    /// Whether both came from the cache (nothing was rebuilt).
    pub cache_hit: bool,
}

/// The cache root: `$FERROVM_TESTBED_CACHE`, else `$CARGO_TARGET_DIR/testbed-cache`,
/// else `<workspace>/target/testbed-cache`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("FERROVM_TESTBED_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(p).join("testbed-cache");
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    workspace
        .canonicalize()
        .unwrap_or(workspace)
        .join("target/testbed-cache")
}

/// Removes job directories (`<root>/jobs/<pid>-<n>`) left by processes that died.
pub fn remove_stale_jobs(root: &Path) {
    let Ok(entries) = fs::read_dir(root.join("jobs")) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            if let Err(err) = fs::remove_dir_all(e.path()) {
                tracing::warn!(dir = %e.path().display(), error = %err, "could not remove stale job directory");
            }
        }
    }
}

/// Returns the cached L1 base for `host`, building what is missing.
pub fn prepare_base(host: &HostArtifacts, root: &Path) -> Result<L1Base> {
    let dir = root.join(format!(
        "l1-{}-{:016x}",
        host.kernel_version,
        host.cache_key()?
    ));
    fs::create_dir_all(&dir).map_err(io_err("create cache directory", &dir))?;
    let vmlinux = dir.join("vmlinux");
    let base_cpio = dir.join("base.cpio");
    let mut cache_hit = true;
    if !vmlinux.is_file() {
        cache_hit = false;
        let t = std::time::Instant::now();
        extract_vmlinux(&host.vmlinuz, &vmlinux)?;
        tracing::info!(path = %vmlinux.display(), elapsed = ?t.elapsed(), "extracted L1 vmlinux");
    }
    if !base_cpio.is_file() {
        cache_hit = false;
        build_base_cpio(host, &base_cpio)?;
        tracing::info!(path = %base_cpio.display(), "built L1 base initramfs");
    }
    Ok(L1Base {
        vmlinux,
        base_cpio,
        cache_hit,
    })
}

/// Decompresses a bzImage (or copies an ELF) into `out`, atomically.
pub fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let image = fs::read(vmlinuz).map_err(io_err("read kernel", vmlinuz))?;
    let (elf, info) = kernel::vmlinux_from_image(&image).map_err(|source| Error::Kernel {
        path: vmlinuz.to_path_buf(),
        source,
    })?;
    if info.pvh_entry.is_none() {
        tracing::warn!(path = %vmlinuz.display(), "kernel has no PVH note; QEMU cannot boot its ELF directly");
    }
    write_atomic(out, &elf)
}

fn build_base_cpio(host: &HostArtifacts, out: &Path) -> Result<()> {
    write_atomic_with(out, |w| {
        let mut c = CpioWriter::new(w);
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "root", "etc",
        ] {
            c.dir(d, 0o755)?;
        }
        c.char_device("dev/console", 0o600, 5, 1)?;
        c.char_device("dev/null", 0o666, 1, 3)?;
        add_busybox(&mut c, &host.busybox).map_err(|e| std::io::Error::other(e.to_string()))?;
        c.file("init", 0o755, L1_INIT.as_bytes())?;
        for (i, m) in L1_MODULES.iter().enumerate() {
            let name = Path::new(m)
                .file_name()
                .map_or_else(|| format!("m{i}.ko"), |n| n.to_string_lossy().into_owned());
            add_host_file(
                &mut c,
                &host.modules_dir.join(m),
                &format!("testbed/modules/{i}-{name}"),
                0o644,
            )?;
        }
        c.finish()?;
        Ok(())
    })
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(data))
}

/// Writes through `f` into a temporary sibling, then renames it over `path`, so a
/// concurrent reader never sees a half-written cache file.
pub(crate) fn write_atomic_with(
    path: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let mut w = BufWriter::new(file);
    f(&mut w)
        .and_then(|()| w.flush())
        .map_err(io_err("write", &tmp))?;
    drop(w);
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))
}

fn require(path: &Path, what: &'static str, package: &'static str) -> Result<PathBuf> {
    if path.exists() {
        Ok(path.to_path_buf())
    } else {
        Err(Error::MissingArtifact {
            what,
            path: path.to_path_buf(),
            package,
        })
    }
}

/// The `/boot/vmlinuz-<version>` with the highest version, compared numerically.
fn newest_kernel(boot: &Path) -> Result<(String, PathBuf)> {
    let missing = || Error::MissingArtifact {
        what: "Debian kernel image (vmlinuz-*)",
        path: boot.to_path_buf(),
        package: "linux-image-amd64",
    };
    let entries = fs::read_dir(boot).map_err(|_| missing())?;
    let mut found: Vec<(Vec<u64>, String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = name.strip_prefix("vmlinuz-")?.to_string();
            Some((version_key(&ver), ver, e.path()))
        })
        .collect();
    found.sort();
    let (_, ver, path) = found.pop().ok_or_else(missing)?;
    Ok((ver, path))
}

/// "cpu MHz : 3799.998" of the first CPU, in kHz.
fn cpu_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// `CONFIG_HZ=250` from a kernel config.
fn config_hz(config: &str) -> Option<u64> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect()
}

/// FNV-1a, stable across Rust releases (unlike `DefaultHasher`).
struct Fnv(u64);
impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v =
            ["6.1.0-9-amd64", "6.1.0-56-amd64", "5.10.0-30-amd64"].map(|s| (version_key(s), s));
        v.sort();
        assert_eq!(v[2].1, "6.1.0-56-amd64");
    }

    #[test]
    fn timing_params_from_host_files() {
        assert_eq!(
            cpu_khz("processor\t: 0\ncpu MHz\t\t: 3799.998\n"),
            Some(3_799_998)
        );
        assert_eq!(cpu_khz("nothing"), None);
        assert_eq!(config_hz("CONFIG_HZ_250=y\nCONFIG_HZ=250\n"), Some(250));
    }

    #[test]
    fn init_loads_modules_in_order() {
        // The glob in /init relies on the numeric prefixes keeping L1_MODULES' order.
        assert!(L1_INIT.contains("/testbed/modules/*.ko"));
        assert!(L1_MODULES.len() < 10);
    }
}
