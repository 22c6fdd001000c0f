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
/// L2 kernel command line, with [`NESTED_GUEST_ARGS`].
pub const L2_CMDLINE: &str = "console=ttyS0 panic=-1 quiet mitigations=off";
/// Kernel options every guest in the testbed needs (append them to a command line of your
/// own; the scripts under tests/linux do): `mitigations=off`. QEMU TCG's emulated SVM now
/// and then mis-runs the kernel's speculation-mitigation return thunks under heavy
/// interrupt load: the guest dies of an invalid opcode at `srso_return_thunk+0x5` (an oops
/// under QEMU in L1) or of a triple fault (under ferrovm), seen in one run of two with two
/// queue pairs of UDP echo traffic, with both VMMs; `spec_rstack_overflow=off` alone left
/// the triple faults. The guest runs on an emulated CPU: the mitigations protect nothing.
pub const NESTED_GUEST_ARGS: &str = "mitigations=off";
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

/// The Debian kernel's virtio-net driver and what it depends on (`modinfo -F depends`:
/// virtio_net needs net_failover, which needs failover), in load order, after
/// [`VIRTIO_MODULES`] (virtio_net also needs virtio_ring and virtio).
pub const VIRTIO_NET_MODULES: [&str; 3] = [
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
];

/// L2 `/init` lines loading [`virtio_net_modules`]; they go after [`virtio_insmod`]'s.
/// eth0 appears once the driver binds to the device.
pub fn virtio_net_insmod() -> String {
    insmod_lines(L2_MODULE_DIR, &VIRTIO_NET_MODULES)
}

/// The host's virtio-net modules as extra L2 initramfs files (next to
/// [`virtio_modules`]'); load them with [`virtio_net_insmod`].
pub fn virtio_net_modules(host: &HostArtifacts) -> Result<Vec<JobFile>> {
    module_files(host, &VIRTIO_NET_MODULES, |_, file| {
        format!("{L2_MODULE_DIR}/{file}")
    })
}

/// The L1 modules a VMM's networking needs there, in load order: tun (`/dev/net/tun`),
/// vhost-net (`/dev/vhost-net`: vhost_iotlb, vhost, tap, vhost_net; `modinfo -F depends
/// vhost_net` = vhost,tap,tun) and dummy (which makes `dummy0` at load, an interface
/// passt can take as the host's routable one).
pub const L1_NET_MODULES: [&str; 6] = [
    "drivers/net/tun.ko",
    "drivers/vhost/vhost_iotlb.ko",
    "drivers/vhost/vhost.ko",
    "drivers/net/tap.ko",
    "drivers/vhost/vhost_net.ko",
    "drivers/net/dummy.ko",
];

/// Where [`l1_net_files`] puts the L1 modules (numbered in load order).
pub const L1_NET_MODULE_DIR: &str = "/net/modules";

/// L1 path of iproute2's `ip` from [`l1_net_files`]. Call it by this path: busybox `sh`
/// runs its own (smaller) `ip` applet for a bare `ip`, whatever `$PATH` says.
pub const L1_IP: &str = "/usr/local/bin/ip";

/// Address of L1's `dummy0` after [`l1_net_setup`] (with a default route through
/// [`L1_DUMMY_GATEWAY`]); passt hands it to its guest by DHCP.
pub const L1_DUMMY_ADDR: &str = "192.168.200.1/24";
/// The default gateway [`l1_net_setup`] routes through `dummy0` (nothing answers there;
/// L1 has no way out).
pub const L1_DUMMY_GATEWAY: &str = "192.168.200.254";

/// Files an L1 job needs for networking: the modules of [`L1_NET_MODULES`] under
/// [`L1_NET_MODULE_DIR`], iproute2's `ip` at [`L1_IP`] (for `ip tuntap` and `ip -s link`,
/// which busybox lacks), and an `/etc/passwd` with `nobody` (passt, started as root,
/// changes to that user and refuses to run without it). Load and configure with
/// [`l1_net_setup`].
pub fn l1_net_files(host: &HostArtifacts) -> Result<Vec<JobFile>> {
    let mut files = module_files(host, &L1_NET_MODULES, |i, file| {
        format!("{L1_NET_MODULE_DIR}/{i}-{file}")
    })?;
    let ip = Path::new(IPROUTE2_IP);
    if !ip.is_file() {
        return Err(Error::MissingArtifact {
            what: "iproute2's ip",
            path: ip.to_path_buf(),
            package: "iproute2",
        });
    }
    files.extend(binary_with_libs(ip, L1_IP)?);
    files.push(JobFile::bytes(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "/etc/passwd",
        0o644,
    ));
    files.push(JobFile::bytes(
        "root:x:0:\nnogroup:x:65534:\n",
        "/etc/group",
        0o644,
    ));
    Ok(files)
}

/// iproute2's `ip` on the host.
const IPROUTE2_IP: &str = "/usr/sbin/ip";

/// L1 job script lines (busybox sh) for networking, given [`l1_net_files`]: load the
/// modules, bring `lo` up, give `dummy0` [`L1_DUMMY_ADDR`] and a default route (this
/// passt, Debian bookworm's, will not start without a routable interface), and make
/// `/tmp` world-writable and sticky as on a real system (passt, started as root, turns
/// into `nobody` before it binds its socket there; with the initramfs's 0755 `/tmp` the
/// bind fails with EACCES and this passt exits with status 0 after saying it was bound).
pub fn l1_net_setup() -> String {
    format!(
        "for m in {L1_NET_MODULE_DIR}/*.ko; do insmod \"$m\" || echo \"testbed: insmod $m failed\"; done\n\
         chmod 1777 /tmp\n\
         {L1_IP} link set lo up\n\
         {L1_IP} addr add {L1_DUMMY_ADDR} dev dummy0 && {L1_IP} link set dummy0 up && \
         {L1_IP} route add default via {L1_DUMMY_GATEWAY} dev dummy0 || echo \"testbed: dummy0 setup failed\"\n"
    )
}

fn insmod_lines(dir: &str, modules: &[&str]) -> String {
    modules
        .iter()
        .map(|m| {
            let file = m.rsplit('/').next().unwrap_or(m);
            format!("insmod /{dir}/{file}\n")
        })
        .collect()
}

/// `modules` (paths under the host's `/lib/modules/<release>/kernel/`) as job or
/// initramfs files at `dest(index, file name)`.
fn module_files(
    host: &HostArtifacts,
    modules: &[&str],
    dest: impl Fn(usize, &str) -> String,
) -> Result<Vec<JobFile>> {
    modules
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let src = host.modules_dir.join("kernel").join(m);
            if !src.is_file() {
                return Err(Error::MissingArtifact {
                    what: "a kernel module",
                    path: src,
                    package: "linux-image-amd64",
                });
            }
            let file = m.rsplit('/').next().unwrap_or(m);
            Ok(JobFile::host(&src, dest(i, file), 0o644))
        })
        .collect()
}

/// The Debian kernel's virtio-vsock driver (`AF_VSOCK` over virtio) and what it depends on
/// (`modinfo -F depends`: vmw_vsock_virtio_transport_common needs vsock;
/// vmw_vsock_virtio_transport needs both, virtio and virtio_ring), in load order, after
/// [`VIRTIO_MODULES`].
pub const VIRTIO_VSOCK_MODULES: [&str; 3] = [
    "net/vmw_vsock/vsock.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
];

/// L2 `/init` lines loading [`virtio_vsock_modules`]; they go after [`virtio_insmod`]'s.
pub fn virtio_vsock_insmod() -> String {
    insmod_lines(L2_MODULE_DIR, &VIRTIO_VSOCK_MODULES)
}

/// The host's virtio-vsock modules as extra L2 initramfs files (next to
/// [`virtio_modules`]'); load them with [`virtio_vsock_insmod`].
pub fn virtio_vsock_modules(host: &HostArtifacts) -> Result<Vec<JobFile>> {
    module_files(host, &VIRTIO_VSOCK_MODULES, |_, file| {
        format!("{L2_MODULE_DIR}/{file}")
    })
}

/// The Debian kernel's virtio-balloon driver (`modinfo -F depends`: virtio, virtio_ring),
/// loaded after [`VIRTIO_MODULES`].
pub const VIRTIO_BALLOON_MODULES: [&str; 1] = ["drivers/virtio/virtio_balloon.ko"];

/// L2 `/init` lines loading [`virtio_balloon_modules`]; they go after [`virtio_insmod`]'s.
pub fn virtio_balloon_insmod() -> String {
    insmod_lines(L2_MODULE_DIR, &VIRTIO_BALLOON_MODULES)
}

/// The host's virtio-balloon module as an extra L2 initramfs file; load it with
/// [`virtio_balloon_insmod`].
pub fn virtio_balloon_modules(host: &HostArtifacts) -> Result<Vec<JobFile>> {
    module_files(host, &VIRTIO_BALLOON_MODULES, |_, file| {
        format!("{L2_MODULE_DIR}/{file}")
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_modules_load_after_their_dependencies() {
        let l2 = virtio_net_insmod();
        let at = |s: &str, m: &str| s.find(m).unwrap_or_else(|| panic!("{m} in {s}"));
        assert!(at(&l2, "/failover.ko") < at(&l2, "/net_failover.ko"));
        assert!(at(&l2, "/net_failover.ko") < at(&l2, "/virtio_net.ko"));
        let l1: Vec<&str> = L1_NET_MODULES
            .iter()
            .map(|m| m.rsplit('/').next().unwrap())
            .collect();
        let i = |m: &str| l1.iter().position(|x| *x == m).unwrap();
        assert!(i("vhost_iotlb.ko") < i("vhost.ko"));
        for dep in ["vhost.ko", "tap.ko", "tun.ko"] {
            assert!(i(dep) < i("vhost_net.ko"), "{dep}");
        }
        // The numeric prefixes keep that order under the script's glob.
        assert!(L1_NET_MODULES.len() <= 10);
        let setup = l1_net_setup();
        assert!(setup.contains(&format!("{L1_NET_MODULE_DIR}/*.ko")));
        assert!(setup.contains("dev dummy0") && setup.contains("route add default"));
        assert!(setup.contains("chmod 1777 /tmp"));
    }

    #[test]
    fn vsock_and_balloon_modules_load_in_order() {
        let l2 = virtio_vsock_insmod();
        let at = |s: &str, m: &str| s.find(m).unwrap_or_else(|| panic!("{m} in {s}"));
        assert!(at(&l2, "/vsock.ko") < at(&l2, "/vmw_vsock_virtio_transport_common.ko"));
        assert!(
            at(&l2, "/vmw_vsock_virtio_transport_common.ko")
                < at(&l2, "/vmw_vsock_virtio_transport.ko")
        );
        assert!(virtio_balloon_insmod().contains(&format!("/{L2_MODULE_DIR}/virtio_balloon.ko")));
        let Ok(host) = HostArtifacts::locate() else {
            return; // no Debian kernel here: nothing more to check
        };
        let v = virtio_vsock_modules(&host).unwrap();
        assert_eq!(
            v[2].l1_path,
            format!("{L2_MODULE_DIR}/vmw_vsock_virtio_transport.ko")
        );
        assert_eq!(virtio_balloon_modules(&host).unwrap().len(), 1);
    }

    #[test]
    fn net_files_from_this_host() {
        let Ok(host) = HostArtifacts::locate() else {
            return; // no Debian kernel here: nothing to check
        };
        let l2 = virtio_net_modules(&host).unwrap();
        assert_eq!(l2[2].l1_path, format!("{L2_MODULE_DIR}/virtio_net.ko"));
        let Ok(l1) = l1_net_files(&host) else {
            return; // no iproute2
        };
        assert_eq!(l1[0].l1_path, format!("{L1_NET_MODULE_DIR}/0-tun.ko"));
        assert!(l1.iter().any(|f| f.l1_path == L1_IP));
        assert!(l1.iter().any(|f| f.l1_path == "/etc/passwd"));
    }
}
