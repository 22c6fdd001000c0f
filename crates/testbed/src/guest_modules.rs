//! Kernel modules an L2 guest loads for virtio-mmio devices.
//!
//! The Debian kernel builds `virtio`, `virtio_ring`, `virtio_mmio`, `virtio_blk` and
//! `virtio-rng` as modules, and without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`: the
//! virtio-mmio transports must be announced by ACPI (DSDT devices with `_HID`
//! "LNRO0005"), and the L2 `/init` must `insmod` the drivers before `/dev/vda` or
//! `/dev/hwrng` exist. [`virtio_modules`] gives the `.ko` files for the L2 initramfs and
//! the `/init` lines that load them in dependency order and make the device nodes.
//!
//! ```no_run
//! use testbed::{Testbed, VirtioDriver};
//! let tb = Testbed::new()?;
//! let m = tb.virtio_modules(&[VirtioDriver::Blk])?;
//! let init = format!("{}\ndd if=/dev/vda of=/dev/null bs=1M count=1", m.init);
//! let initrd = tb.l2_initramfs(&init, &m.files)?;
//! # Ok::<(), testbed::Error>(())
//! ```

use std::fmt::Write as _;

use crate::artifacts::HostArtifacts;
use crate::error::{Error, Result};
use crate::job::JobFile;

/// Directory in the L2 initramfs that holds the modules.
pub const L2_MODULES_DIR: &str = "/lib/modules/virtio";

/// The transport every virtio-mmio driver needs, in load order (relative to
/// `/lib/modules/<version>/`): `virtio` needs `virtio_ring`, `virtio_mmio` needs both.
const TRANSPORT: [&str; 3] = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_mmio.ko",
];

/// How long the `/init` lines wait for a device to appear after `insmod`, in 0.1 s steps.
const WAIT_STEPS: u32 = 50;

/// A virtio device driver the L2 guest should load (on top of the virtio-mmio transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioDriver {
    /// virtio-blk: disks `/dev/vda`, `/dev/vdb` ... (and their partitions).
    Blk,
    /// virtio-rng: `/dev/hwrng`.
    Rng,
}

impl VirtioDriver {
    /// The module, relative to `/lib/modules/<version>/`.
    pub fn module(self) -> &'static str {
        match self {
            VirtioDriver::Blk => "kernel/drivers/block/virtio_blk.ko",
            VirtioDriver::Rng => "kernel/drivers/char/hw_random/virtio-rng.ko",
        }
    }

    /// `/init` lines run after the module is loaded: wait for the device, create
    /// missing `/dev` nodes from sysfs (in case devtmpfs is absent), complain if none.
    fn init_lines(self) -> String {
        match self {
            VirtioDriver::Blk => format!(
                r#"i=0; while [ ! -e /sys/block/vda ] && [ $i -lt {WAIT_STEPS} ]; do sleep 0.1; i=$((i+1)); done
for b in /sys/block/vd* /sys/block/vd*/vd*; do
    [ -e "$b/dev" ] || continue
    n=/dev/${{b##*/}}; [ -b "$n" ] || mknod "$n" b $(tr : ' ' < "$b/dev")
done
[ -b /dev/vda ] || echo "l2: virtio_blk loaded but there is no /dev/vda""#
            ),
            VirtioDriver::Rng => format!(
                r#"i=0; while [ ! -e /sys/class/misc/hw_random/dev ] && [ $i -lt {WAIT_STEPS} ]; do sleep 0.1; i=$((i+1)); done
[ -c /dev/hwrng ] || [ ! -e /sys/class/misc/hw_random/dev ] || mknod /dev/hwrng c $(tr : ' ' < /sys/class/misc/hw_random/dev)
[ -c /dev/hwrng ] || echo "l2: virtio-rng loaded but there is no /dev/hwrng""#
            ),
        }
    }
}

/// Modules for an L2 initramfs and the `/init` lines that load them.
#[derive(Debug, Clone)]
pub struct GuestModules {
    /// The `.ko` files, under [`L2_MODULES_DIR`]; pass them as `extra` to
    /// [`crate::guest::l2_initramfs`] (or [`crate::Testbed::l2_initramfs`]).
    pub files: Vec<JobFile>,
    /// Shell lines for the L2 `/init` body (busybox sh, after the standard prologue
    /// that mounts proc, sysfs and devtmpfs): `insmod` in dependency order, then wait
    /// (up to 5 s) for each driver's device and make its `/dev` node if missing. A
    /// failure prints a line starting with `l2: ` and goes on.
    pub init: String,
}

/// The virtio-mmio transport plus `drivers`, from the host kernel's module tree.
/// Errors name the Debian package when a module file is missing.
pub fn virtio_modules(host: &HostArtifacts, drivers: &[VirtioDriver]) -> Result<GuestModules> {
    let mut rel: Vec<&str> = TRANSPORT.to_vec();
    for d in drivers {
        if !rel.contains(&d.module()) {
            rel.push(d.module());
        }
    }
    let mut files = Vec::new();
    let mut init = String::new();
    for (i, m) in rel.iter().enumerate() {
        let src = host.modules_dir.join(m);
        if !src.is_file() {
            return Err(Error::MissingArtifact {
                what: "virtio kernel module",
                path: src,
                package: "linux-image-amd64",
            });
        }
        let name = m.rsplit('/').next().unwrap_or(m);
        let dst = format!("{L2_MODULES_DIR}/{i}-{name}");
        let _ = writeln!(init, "insmod {dst} || echo \"l2: insmod {dst} failed\"");
        files.push(JobFile::host(src, dst, 0o644));
    }
    let mut seen = Vec::new();
    for &d in drivers {
        if !seen.contains(&d) {
            seen.push(d);
            init.push_str(&d.init_lines());
            init.push('\n');
        }
    }
    Ok(GuestModules { files, init })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fake_host(modules_dir: &Path) -> HostArtifacts {
        HostArtifacts {
            kernel_version: "test".into(),
            vmlinuz: PathBuf::new(),
            modules_dir: modules_dir.to_path_buf(),
            busybox: PathBuf::new(),
            qemu: PathBuf::new(),
            qemu_datadir: PathBuf::new(),
            tsc_khz: None,
            kernel_hz: None,
        }
    }

    fn fake_tree(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("testbed-modules-{tag}-{}", std::process::id()));
        for m in TRANSPORT
            .iter()
            .chain(&[VirtioDriver::Blk.module(), VirtioDriver::Rng.module()])
        {
            let p = dir.join(m);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"ko").unwrap();
        }
        dir
    }

    #[test]
    fn loads_in_dependency_order_once() {
        let dir = fake_tree("order");
        let host = fake_host(&dir);
        let m = virtio_modules(
            &host,
            &[VirtioDriver::Blk, VirtioDriver::Rng, VirtioDriver::Blk],
        )
        .unwrap();
        let paths: Vec<&str> = m.files.iter().map(|f| f.l1_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/lib/modules/virtio/0-virtio_ring.ko",
                "/lib/modules/virtio/1-virtio.ko",
                "/lib/modules/virtio/2-virtio_mmio.ko",
                "/lib/modules/virtio/3-virtio_blk.ko",
                "/lib/modules/virtio/4-virtio-rng.ko",
            ]
        );
        let pos = |s: &str| m.init.find(s).unwrap();
        assert!(pos("insmod /lib/modules/virtio/0-") < pos("insmod /lib/modules/virtio/1-"));
        assert!(pos("insmod /lib/modules/virtio/3-") < pos("/sys/block/vda"));
        assert_eq!(m.init.matches("/sys/block/vda ]").count(), 1);
        assert!(m.init.contains("/dev/hwrng"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn transport_only_and_missing_module() {
        let dir = fake_tree("transport");
        let m = virtio_modules(&fake_host(&dir), &[]).unwrap();
        assert_eq!(m.files.len(), 3);
        assert!(!m.init.contains("/sys/block"));
        let err = virtio_modules(&fake_host(Path::new("/nonexistent")), &[]).unwrap_err();
        assert!(err.to_string().contains("linux-image-amd64"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
