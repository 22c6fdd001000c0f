//! L2 guests (run inside L1 by a VMM): a busybox initramfs with a given `/init`, the
//! L2 kernel, and QEMU itself as a VMM inside L1.

use std::path::Path;

use crate::artifacts::{HostArtifacts, L1Base};
use crate::cpio::{add_busybox, add_host_file, CpioWriter};
use crate::error::{io_err, Error, Result};
use crate::job::{binary_with_libs, JobFile};

/// L1 path of the L2 kernel (the host kernel's ELF vmlinux, PVH-bootable).
pub const L2_KERNEL: &str = "/l2/vmlinux";
/// L1 path of the L2 bzImage (the host's `/boot/vmlinuz-*`), for VMMs that load bzImages.
pub const L2_BZIMAGE: &str = "/l2/bzImage";
/// L1 path of the L2 initramfs.
pub const L2_INITRD: &str = "/l2/initrd.cpio";
/// L2 kernel command line.
pub const L2_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";
/// The line a default L2 `/init` prints first in user space.
pub const L2_MARKER: &str = "@@L2-USERSPACE-UP@@";
/// L1 path of QEMU.
pub const L1_QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// L2 guest memory for QEMU in L1.
pub const L2_MEM_MIB: u32 = 256;
/// Firmware QEMU's microvm machine may load (bios-microvm.bin is a link to qboot.rom).
const QEMU_FIRMWARE: [&str; 6] = [
    "bios-microvm.bin",
    "qboot.rom",
    "linuxboot_dma.bin",
    "linuxboot.bin",
    "pvh.bin",
    "kvmvapic.bin",
];

/// Builds an L2 initramfs (cpio newc, uncompressed): busybox with applet links,
/// `/dev/console`, and `/init` = a short prologue (PATH, proc/sys/devtmpfs mounts)
/// + `init_body` + `poweroff -f`. `extra` files are added as they are.
pub fn l2_initramfs(busybox: &Path, init_body: &str, extra: &[JobFile]) -> Result<Vec<u8>> {
    let init = format!(
        "#!/bin/sh\nexport PATH=/bin\nmount -t proc proc /proc\nmount -t sysfs sysfs /sys\nmount -t devtmpfs devtmpfs /dev 2>/dev/null\n{init_body}\npoweroff -f\n"
    );
    let ctx = io_err("build L2 initramfs with", busybox);
    let mut c = CpioWriter::new(Vec::new());
    for d in ["proc", "sys", "dev", "tmp", "root", "etc"] {
        c.dir(d, 0o755)
            .map_err(io_err("build L2 initramfs with", busybox))?;
    }
    c.char_device("dev/console", 0o600, 5, 1)
        .map_err(io_err("build L2 initramfs with", busybox))?;
    add_busybox(&mut c, busybox)?;
    c.file("init", 0o755, init.as_bytes())
        .map_err(io_err("build L2 initramfs with", busybox))?;
    for f in extra {
        let r = match &f.source {
            crate::job::FileSource::Host(p) => add_host_file(&mut c, p, &f.l1_path, f.mode),
            crate::job::FileSource::Bytes(b) => c.file(&f.l1_path, f.mode, b),
        };
        r.map_err(io_err("add extra L2 file from", busybox))?;
    }
    c.finish().map_err(ctx)
}

/// The Debian kernel's virtio modules an L2 guest needs for virtio-mmio disks and the
/// entropy device (paths under `/lib/modules/<release>/kernel/`), in load order.
pub const VIRTIO_MODULES: [&str; 5] = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/char/hw_random/virtio-rng.ko",
];

/// Where [`virtio_modules`] puts the modules in the L2 initramfs.
pub const L2_MODULE_DIR: &str = "lib/virtio";

/// L2 `/init` lines loading [`virtio_modules`] (the devices appear once virtio_mmio binds
/// to the ACPI-declared windows).
pub fn virtio_insmod() -> String {
    VIRTIO_MODULES
        .iter()
        .map(|m| {
            let file = m.rsplit('/').next().unwrap_or(m);
            format!("insmod /{L2_MODULE_DIR}/{file}\n")
        })
        .collect()
}

/// The host's virtio modules as extra L2 initramfs files (for [`l2_initramfs`]); load them
/// with [`virtio_insmod`]. The kernel has them as modules and no virtio_mmio command-line
/// devices, so an L2 init must load them itself.
pub fn virtio_modules(host: &HostArtifacts) -> Result<Vec<JobFile>> {
    VIRTIO_MODULES
        .iter()
        .map(|m| {
            let src = host.modules_dir.join("kernel").join(m);
            if !src.is_file() {
                return Err(Error::MissingArtifact {
                    what: "a virtio kernel module",
                    path: src,
                    package: "linux-image-amd64",
                });
            }
            let file = m.rsplit('/').next().unwrap_or(m);
            Ok(JobFile::host(
                &src,
                format!("{L2_MODULE_DIR}/{file}"),
                0o644,
            ))
        })
        .collect()
}

/// The default L2 `/init` body: print [`L2_MARKER`] and the kernel release.
pub fn default_l2_init() -> String {
    format!("echo \"{L2_MARKER} $(uname -r)\"")
}

/// Files for an L2 guest: the kernel at [`L2_KERNEL`] (ELF, from the testbed cache),
/// the bzImage at [`L2_BZIMAGE`] when `with_bzimage`, and an initramfs at [`L2_INITRD`]
/// whose `/init` runs `init_body`.
pub fn l2_guest_files(
    host: &HostArtifacts,
    base: &L1Base,
    init_body: &str,
    with_bzimage: bool,
) -> Result<Vec<JobFile>> {
    let mut files = vec![
        JobFile::host(&base.vmlinux, L2_KERNEL, 0o644),
        JobFile::bytes(
            l2_initramfs(&host.busybox, init_body, &[])?,
            L2_INITRD,
            0o644,
        ),
    ];
    if with_bzimage {
        files.push(JobFile::host(&host.vmlinuz, L2_BZIMAGE, 0o644));
    }
    Ok(files)
}

/// QEMU (binary, shared libraries, microvm firmware) for use inside L1 at [`L1_QEMU`].
pub fn qemu_files(host: &HostArtifacts) -> Result<Vec<JobFile>> {
    let mut files = binary_with_libs(&host.qemu, L1_QEMU)?;
    for fw in QEMU_FIRMWARE {
        let p = host.qemu_datadir.join(fw);
        if p.exists() {
            files.push(JobFile::host(&p, format!("/usr/share/qemu/{fw}"), 0o644));
        }
    }
    Ok(files)
}

/// Shell command (for an L1 job script) booting an L2 kernel and initramfs with QEMU
/// microvm on L1's KVM; L2's serial console goes to stdout.
pub fn qemu_l2_command(kernel: &str, initrd: &str, mem_mib: u32) -> String {
    format!(
        "{L1_QEMU} -M microvm -accel kvm -cpu host -m {mem_mib} -smp 1 -nodefaults -nographic -no-reboot \
         -serial stdio -kernel {kernel} -initrd {initrd} -append \"{L2_CMDLINE}\" </dev/null"
    )
}
