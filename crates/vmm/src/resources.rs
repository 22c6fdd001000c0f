//! The VM configuration in the API's terms: Firecracker's request bodies applied to a
//! [`VmConfig`] (with Firecracker's checks and wording), and a `VmConfig` described back as
//! Firecracker's `GET /vm/config` body. `--config-file` goes through the same functions.

use std::path::PathBuf;

use api::models::{self, FullVmConfig};

use crate::config::{Decompress, EntryMode, Payload, VmConfig, DEFAULT_CMDLINE};
use crate::drive::{CacheMode, DriveConfig, Engine, Format};
use crate::net;

/// Most vCPUs the API accepts (8-bit APIC ids in the MADT).
pub const MAX_VCPUS: u32 = 255;

/// `PUT /machine-config` (and the result of a `PATCH`).
pub fn set_machine(config: &mut VmConfig, m: &models::MachineConfig) -> Result<(), String> {
    let err = |e: &str| format!("Machine config error: {e}");
    if m.vcpu_count == 0 || m.vcpu_count > MAX_VCPUS {
        return Err(err(&format!(
            "The number of vCPUs must be greater than 0, less than {} and must be 1 or an even number if SMT is enabled.",
            MAX_VCPUS + 1
        )));
    }
    if m.smt {
        return Err(err("SMT is not supported by ferrovm; set smt to false."));
    }
    if m.mem_size_mib == 0 || m.mem_size_mib > (1 << 24) {
        return Err(err(
            "The memory size (MiB) is either 0, or not a multiple of the configured page size.",
        ));
    }
    if !matches!(m.cpu_template, None | Some(models::CpuTemplate::None)) {
        return Err(err("CPU templates are not supported by ferrovm."));
    }
    if m.huge_pages == models::HugePages::Huge2M {
        return Err(err(
            "hugetlbfs pages (2M) are not supported by ferrovm; use None or Transparent.",
        ));
    }
    config.cpus = m.vcpu_count;
    config.mem_size = m.mem_size_mib << 20;
    config.track_dirty_pages = m.track_dirty_pages;
    Ok(())
}

/// `GET /machine-config`.
pub fn machine(config: &VmConfig) -> models::MachineConfig {
    models::MachineConfig {
        vcpu_count: config.cpus,
        mem_size_mib: config.mem_size >> 20,
        smt: false,
        track_dirty_pages: config.track_dirty_pages,
        huge_pages: models::HugePages::None,
        cpu_template: None,
    }
}

fn openable(path: &str) -> std::io::Result<()> {
    let m = std::fs::metadata(path)?;
    if m.is_dir() {
        return Err(std::io::Error::other("is a directory"));
    }
    std::fs::File::open(path).map(|_| ())
}

/// `PUT /boot-source`.
pub fn set_boot_source(config: &mut VmConfig, b: &models::BootSource) -> Result<(), String> {
    let err = |e: String| format!("Boot source error: {e}");
    openable(&b.kernel_image_path).map_err(|e| {
        err(format!(
            "The kernel file cannot be opened: {e} ({})",
            b.kernel_image_path
        ))
    })?;
    if let Some(initrd) = &b.initrd_path {
        openable(initrd).map_err(|e| {
            err(format!(
                "The initrd file cannot be opened due to invalid path or invalid permissions. {e} ({initrd})"
            ))
        })?;
    }
    if let Some(args) = &b.boot_args {
        if args.contains('\0') {
            return Err(err(
                "The kernel command line is invalid: it contains a NUL byte".into(),
            ));
        }
    }
    let path = PathBuf::from(&b.kernel_image_path);
    config.payload = Some(match &b.raw {
        Some(raw) => {
            if b.initrd_path.is_some() || b.boot_args.is_some() {
                return Err(err(
                    "a raw image (raw) takes no initrd_path or boot_args".into()
                ));
            }
            Payload::Raw {
                path,
                load_addr: raw.load_addr,
                mode: match raw.mode {
                    models::RawMode::Real => EntryMode::Real,
                    models::RawMode::Long => EntryMode::Long,
                },
            }
        }
        None => Payload::Kernel {
            path,
            initrd: b.initrd_path.as_ref().map(PathBuf::from),
            cmdline: b
                .boot_args
                .clone()
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            decompress: Decompress::Host,
        },
    });
    Ok(())
}

/// The boot source of `config`, as `GET /vm/config` shows it.
pub fn boot_source(config: &VmConfig) -> Option<models::BootSource> {
    let path = |p: &std::path::Path| p.display().to_string();
    Some(match config.payload.as_ref()? {
        Payload::Kernel {
            path: k,
            initrd,
            cmdline,
            ..
        } => models::BootSource {
            kernel_image_path: path(k),
            initrd_path: initrd.as_deref().map(path),
            boot_args: Some(cmdline.clone()),
            raw: None,
        },
        Payload::Raw {
            path: p,
            load_addr,
            mode,
        } => models::BootSource {
            kernel_image_path: path(p),
            initrd_path: None,
            boot_args: None,
            raw: Some(models::RawImage {
                load_addr: *load_addr,
                mode: match mode {
                    EntryMode::Real => models::RawMode::Real,
                    EntryMode::Long => models::RawMode::Long,
                },
            }),
        },
    })
}

fn no_rate_limiter(r: &Option<models::RateLimiter>, what: &str) -> Result<(), String> {
    match r {
        None => Ok(()),
        Some(l) if l.bandwidth.is_none() && l.ops.is_none() => Ok(()),
        Some(_) => Err(format!(
            "{what}: a rate limiter on the entropy device is not supported by ferrovm"
        )),
    }
}

/// `PUT /drives/{id}`: adds the drive, or replaces the one with the same id. A root drive
/// goes first (it is `/dev/vda`).
pub fn put_drive(config: &mut VmConfig, d: &models::Drive) -> Result<(), String> {
    let err = |e: String| format!("Drive config error: {e}");
    if d.socket.is_some() {
        return Err(err(
            "vhost-user-block (socket) is not supported by ferrovm".into()
        ));
    }
    let Some(path) = &d.path_on_host else {
        return Err(err("path_on_host is required".into()));
    };
    openable(path).map_err(|e| {
        err(format!(
            "Unable to create the virtio block device: cannot open {path}: {e}"
        ))
    })?;
    if d.is_root_device
        && config
            .drives
            .iter()
            .any(|o| o.root && o.id.as_deref() != Some(&d.drive_id))
    {
        return Err(err("A root block device already exists!".into()));
    }
    let existing = config
        .drives
        .iter()
        .position(|o| o.id.as_deref() == Some(&d.drive_id));
    if existing.is_none() && config.drives.len() >= config.drive_slots() {
        return Err(err(format!(
            "at most {} drives fit (one interrupt line each)",
            config.drive_slots()
        )));
    }
    let drive = DriveConfig {
        format: Some(match d.format.unwrap_or_default() {
            models::DriveFormat::Raw => Format::Raw,
            models::DriveFormat::Qcow2 => Format::Qcow2,
        }),
        read_only: d.is_read_only.unwrap_or(false),
        cache: CacheMode::Writeback,
        aio: match d.io_engine.unwrap_or_default() {
            models::IoEngine::Sync => Engine::Thread,
            models::IoEngine::Async => Engine::IoUring,
        },
        id: Some(d.drive_id.clone()),
        flush: d.cache_type == models::CacheType::Writeback,
        root: d.is_root_device,
        partuuid: d.partuuid.clone().filter(|_| d.is_root_device),
        limits: crate::limits::from_model(&d.rate_limiter),
        ..DriveConfig::new(path)
    };
    match existing {
        Some(i) => config.drives[i] = drive,
        None => config.drives.push(drive),
    }
    // The root drive is the first one.
    if let Some(i) = config.drives.iter().position(|o| o.root) {
        let root = config.drives.remove(i);
        config.drives.insert(0, root);
    }
    Ok(())
}

/// Drive `index` of `config`, as `GET /vm/config` shows it.
pub fn drive(config: &VmConfig, index: usize) -> models::Drive {
    let d = &config.drives[index];
    models::Drive {
        drive_id: d.name(index),
        path_on_host: Some(d.path.display().to_string()),
        is_root_device: d.root,
        partuuid: d.partuuid.clone(),
        is_read_only: Some(d.read_only),
        cache_type: if d.flush {
            models::CacheType::Writeback
        } else {
            models::CacheType::Unsafe
        },
        rate_limiter: crate::limits::to_model(&d.limits),
        io_engine: Some(match d.aio {
            Engine::Thread => models::IoEngine::Sync,
            Engine::IoUring => models::IoEngine::Async,
        }),
        socket: None,
        format: d.format.map(|f| match f {
            Format::Raw => models::DriveFormat::Raw,
            Format::Qcow2 => models::DriveFormat::Qcow2,
        }),
    }
}

/// `PUT /network-interfaces/{id}`: adds the interface, or replaces the one with the
/// same id.
pub fn put_net(config: &mut VmConfig, n: &models::NetworkInterface) -> Result<(), String> {
    let err = |e: String| format!("Network interface config error: {e}");
    if n.host_dev_name.is_empty() || n.host_dev_name.len() >= libc::IFNAMSIZ {
        return Err(err(format!(
            "host_dev_name {:?}: a tap name is 1 to {} characters",
            n.host_dev_name,
            libc::IFNAMSIZ - 1
        )));
    }
    let mac = n
        .guest_mac
        .as_deref()
        .map(net::parse_mac)
        .transpose()
        .map_err(err)?;
    if n.mtu.is_some_and(|m| m < 68) {
        return Err(err("mtu must be 68 to 65535".into()));
    }
    let queues = n.queues.unwrap_or(1);
    if !(1..=net::MAX_QUEUE_PAIRS).contains(&queues) {
        return Err(err(format!("queues must be 1 to {}", net::MAX_QUEUE_PAIRS)));
    }
    let existing = config
        .nets
        .iter()
        .position(|o| o.id.as_deref() == Some(&n.iface_id));
    if let Some(mac) = mac {
        if config
            .nets
            .iter()
            .any(|o| o.mac == Some(mac) && o.id.as_deref() != Some(&n.iface_id))
        {
            return Err(err(format!(
                "The MAC address {} is already in use",
                net::format_mac(&mac)
            )));
        }
    }
    if config.nets.iter().any(|o| {
        o.id.as_deref() != Some(&n.iface_id)
            && matches!(&o.backend, net::NetBackendConfig::Tap { name } if *name == n.host_dev_name)
    }) {
        return Err(err(format!(
            "The host device {} is already in use by another interface",
            n.host_dev_name
        )));
    }
    if existing.is_none() && config.drive_slots() <= config.drives.len() {
        return Err(err("no virtio slot left for another interface".into()));
    }
    let cfg = net::NetConfig {
        id: Some(n.iface_id.clone()),
        backend: net::NetBackendConfig::Tap {
            name: n.host_dev_name.clone(),
        },
        mac,
        mtu: n.mtu,
        queues,
        vhost: n.vhost.unwrap_or(false),
        rx: crate::limits::from_model(&n.rx_rate_limiter),
        tx: crate::limits::from_model(&n.tx_rate_limiter),
    };
    match existing {
        Some(i) => config.nets[i] = cfg,
        None => config.nets.push(cfg),
    }
    Ok(())
}

/// Interface `index` of `config`, as `GET /vm/config` shows it.
pub fn net_interface(config: &VmConfig, index: usize) -> models::NetworkInterface {
    let n = &config.nets[index];
    models::NetworkInterface {
        iface_id: n.name(index),
        host_dev_name: match &n.backend {
            net::NetBackendConfig::Tap { name } => name.clone(),
            net::NetBackendConfig::User { .. } => "user".into(),
        },
        guest_mac: n.mac.as_ref().map(net::format_mac),
        mtu: n.mtu,
        rx_rate_limiter: crate::limits::to_model(&n.rx),
        tx_rate_limiter: crate::limits::to_model(&n.tx),
        queues: (n.queues > 1).then_some(n.queues),
        vhost: n.vhost.then_some(true),
    }
}

/// `PUT /entropy`.
pub fn set_entropy(config: &mut VmConfig, e: &models::Entropy) -> Result<(), String> {
    no_rate_limiter(&e.rate_limiter, "Entropy config error")?;
    config.rng = true;
    Ok(())
}

/// `GET /vm/config`.
pub fn full_config(
    config: &VmConfig,
    logger: Option<models::Logger>,
    metrics: Option<models::Metrics>,
) -> FullVmConfig {
    FullVmConfig {
        boot_source: boot_source(config),
        drives: (0..config.drives.len()).map(|i| drive(config, i)).collect(),
        machine_config: Some(machine(config)),
        entropy: config.rng.then(models::Entropy::default),
        network_interfaces: (0..config.nets.len())
            .map(|i| net_interface(config, i))
            .collect(),
        vsock: crate::vsock_balloon::vsock_model(config),
        balloon: config
            .balloon
            .as_ref()
            .map(crate::vsock_balloon::balloon_model),
        logger,
        metrics,
        placement: Some(models::Placement {
            vcpu_affinity: config.placement.vcpus.clone(),
            device_affinity: config.placement.devices.clone(),
            seccomp: config.seccomp.to_string(),
        }),
        ..Default::default()
    }
}

fn unsupported_section(present: bool, name: &str) -> Result<(), String> {
    if present {
        Err(format!(
            "{name} is not supported by ferrovm yet; remove it from the configuration"
        ))
    } else {
        Ok(())
    }
}

/// Applies a `--config-file` (Firecracker's JSON configuration) to `config`.
pub fn apply_full_config(config: &mut VmConfig, f: &FullVmConfig) -> Result<(), String> {
    unsupported_section(
        f.mmds_config.as_ref().is_some_and(|v| !v.is_null()),
        "mmds-config",
    )?;
    unsupported_section(
        f.cpu_config.as_ref().is_some_and(|v| !v.is_null()),
        "cpu-config",
    )?;
    if let Some(m) = &f.machine_config {
        set_machine(config, m)?;
    }
    if let Some(p) = &f.placement {
        config.placement = seccomp::Placement {
            vcpus: p.vcpu_affinity.clone(),
            devices: p.device_affinity.clone(),
        };
        if !p.seccomp.is_empty() {
            config.seccomp = p.seccomp.parse()?;
        }
    }
    let Some(b) = &f.boot_source else {
        return Err("boot-source is missing: the configuration must say what to boot".into());
    };
    set_boot_source(config, b)?;
    for d in &f.drives {
        put_drive(config, d)?;
    }
    for n in &f.network_interfaces {
        put_net(config, n)?;
    }
    if let Some(e) = &f.entropy {
        set_entropy(config, e)?;
    }
    if let Some(v) = &f.vsock {
        crate::vsock_balloon::put_vsock(config, v)?;
    }
    if let Some(b) = &f.balloon {
        crate::vsock_balloon::put_balloon(config, b)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfile(name: &str) -> String {
        let dir = std::env::temp_dir().join(format!("ferrovm-res-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        p.display().to_string()
    }

    fn drive_body(id: &str, path: &str, root: bool) -> models::Drive {
        serde_json::from_value(serde_json::json!({
            "drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": false
        }))
        .unwrap()
    }

    #[test]
    fn machine_config_is_checked_and_applied() {
        let mut c = VmConfig::empty();
        let mut m = machine(&c);
        assert_eq!((m.vcpu_count, m.mem_size_mib), (1, 128));
        m.vcpu_count = 2;
        m.mem_size_mib = 512;
        set_machine(&mut c, &m).unwrap();
        assert_eq!((c.cpus, c.mem_size), (2, 512 << 20));
        for bad in [
            models::MachineConfig {
                vcpu_count: 0,
                ..m.clone()
            },
            models::MachineConfig {
                vcpu_count: 256,
                ..m.clone()
            },
            models::MachineConfig {
                mem_size_mib: 0,
                ..m.clone()
            },
            models::MachineConfig {
                smt: true,
                ..m.clone()
            },
            models::MachineConfig {
                huge_pages: models::HugePages::Huge2M,
                ..m.clone()
            },
            models::MachineConfig {
                cpu_template: Some(models::CpuTemplate::T2),
                ..m.clone()
            },
        ] {
            let e = set_machine(&mut c, &bad).unwrap_err();
            assert!(e.starts_with("Machine config error: "), "{e}");
        }
        assert_eq!(
            (c.cpus, c.mem_size),
            (2, 512 << 20),
            "a refused update changes nothing"
        );
    }

    #[test]
    fn boot_source_files_must_exist() {
        let mut c = VmConfig::empty();
        let k = tmpfile("kernel");
        let b = models::BootSource {
            kernel_image_path: k.clone(),
            initrd_path: None,
            boot_args: Some("console=ttyS0".into()),
            raw: None,
        };
        set_boot_source(&mut c, &b).unwrap();
        assert!(c.is_linux());
        assert_eq!(boot_source(&c), Some(b.clone()));
        let missing = models::BootSource {
            kernel_image_path: "/nonexistent/k".into(),
            ..b.clone()
        };
        let e = set_boot_source(&mut c, &missing).unwrap_err();
        assert!(
            e.contains("The kernel file cannot be opened") && e.contains("/nonexistent/k"),
            "{e}"
        );
        let bad_initrd = models::BootSource {
            initrd_path: Some("/nonexistent/i".into()),
            ..b.clone()
        };
        assert!(set_boot_source(&mut c, &bad_initrd)
            .unwrap_err()
            .contains("initrd file cannot be opened"));
        let raw = models::BootSource {
            boot_args: None,
            raw: Some(models::RawImage {
                load_addr: 0x1_0000,
                mode: models::RawMode::Real,
            }),
            ..b
        };
        set_boot_source(&mut c, &raw).unwrap();
        assert!(matches!(
            c.payload,
            Some(Payload::Raw {
                load_addr: 0x1_0000,
                ..
            })
        ));
    }

    #[test]
    fn drives_replace_by_id_and_root_goes_first() {
        let mut c = VmConfig::empty();
        let (a, b) = (tmpfile("a.img"), tmpfile("b.img"));
        put_drive(&mut c, &drive_body("data", &a, false)).unwrap();
        put_drive(&mut c, &drive_body("rootfs", &b, true)).unwrap();
        assert_eq!(c.drives[0].id.as_deref(), Some("rootfs"));
        assert_eq!(c.root_args().as_deref(), Some("root=/dev/vda rw"));
        put_drive(&mut c, &drive_body("data", &b, false)).unwrap();
        assert_eq!(c.drives.len(), 2);
        assert_eq!(c.drives[1].path, PathBuf::from(&b));
        let e = put_drive(&mut c, &drive_body("other", &a, true)).unwrap_err();
        assert!(e.contains("A root block device already exists!"), "{e}");
        let e = put_drive(&mut c, &drive_body("x", "/nonexistent/x.img", false)).unwrap_err();
        assert!(e.contains("/nonexistent/x.img"), "{e}");
        let mut limited = drive_body("y", &a, false);
        limited.rate_limiter = Some(models::RateLimiter {
            bandwidth: Some(models::TokenBucket {
                size: 1,
                one_time_burst: None,
                refill_time: 1,
            }),
            ops: None,
        });
        put_drive(&mut c, &limited).unwrap();
        let y = c
            .drives
            .iter()
            .position(|d| d.id.as_deref() == Some("y"))
            .unwrap();
        assert_eq!(
            drive(&c, y).rate_limiter,
            limited.rate_limiter,
            "GET /vm/config shows it"
        );
        c.drives.remove(y);
        let shown = drive(&c, 0);
        assert_eq!(shown.drive_id, "rootfs");
        assert_eq!(shown.cache_type, models::CacheType::Unsafe);
        assert!(!c.drives[0].flush, "Unsafe: no FLUSH offered");
    }

    #[test]
    fn full_config_round_trips_through_the_file_format() {
        let mut c = VmConfig::empty();
        let k = tmpfile("vmlinux");
        let d = tmpfile("disk.img");
        let file: FullVmConfig = serde_json::from_value(serde_json::json!({
            "boot-source": { "kernel_image_path": k, "boot_args": "console=ttyS0" },
            "drives": [{ "drive_id": "rootfs", "path_on_host": d, "is_root_device": true, "is_read_only": true }],
            "machine-config": { "vcpu_count": 2, "mem_size_mib": 256 },
            "entropy": {},
            "network-interfaces": []
        }))
        .unwrap();
        apply_full_config(&mut c, &file).unwrap();
        assert_eq!((c.cpus, c.mem_size, c.rng), (2, 256 << 20, true));
        let back = full_config(&c, None, None);
        assert_eq!(back.drives.len(), 1);
        assert_eq!(back.machine_config.unwrap().vcpu_count, 2);
        let v = serde_json::to_value(full_config(&c, None, None)).unwrap();
        assert!(
            v.get("boot-source").is_some() && v.get("machine-config").is_some(),
            "{v}"
        );
        let with_net: FullVmConfig = serde_json::from_value(serde_json::json!({
            "boot-source": { "kernel_image_path": k },
            "network-interfaces": [{ "iface_id": "eth0", "host_dev_name": "tap0",
                                     "guest_mac": "02:00:00:00:00:01" }]
        }))
        .unwrap();
        let mut c = VmConfig::empty();
        apply_full_config(&mut c, &with_net).unwrap();
        assert_eq!(c.nets.len(), 1);
        assert_eq!(c.nets[0].mac, Some([2, 0, 0, 0, 0, 1]));
        let vsock: FullVmConfig = serde_json::from_value(serde_json::json!({
            "boot-source": { "kernel_image_path": k },
            "vsock": { "guest_cid": 3, "uds_path": "/tmp/v.sock" }
        }))
        .unwrap();
        let mut c = VmConfig::empty();
        apply_full_config(&mut c, &vsock).unwrap();
        assert_eq!(c.vsock.as_ref().map(|v| v.cid), Some(3));
        assert_eq!(
            full_config(&c, None, None).vsock.unwrap().uds_path,
            "/tmp/v.sock"
        );
        let no_boot: FullVmConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(apply_full_config(&mut VmConfig::empty(), &no_boot)
            .unwrap_err()
            .contains("boot-source"));
    }
}

#[cfg(test)]
mod net_tests {
    use super::*;

    fn iface(id: &str, tap: &str, mac: Option<&str>) -> models::NetworkInterface {
        models::NetworkInterface {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: mac.map(str::to_string),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            queues: None,
            vhost: None,
        }
    }

    #[test]
    fn interfaces_are_checked_and_replaced_by_id() {
        let mut c = VmConfig::empty();
        put_net(&mut c, &iface("eth0", "tap0", Some("02:00:00:00:00:01"))).unwrap();
        put_net(&mut c, &iface("eth1", "tap1", None)).unwrap();
        put_net(&mut c, &iface("eth0", "tap5", Some("02:00:00:00:00:01"))).unwrap();
        assert_eq!(c.nets.len(), 2);
        assert_eq!(net_interface(&c, 0).host_dev_name, "tap5");
        for (bad, want) in [
            (
                iface("eth2", "tap1", None),
                "already in use by another interface",
            ),
            (
                iface("eth2", "tap2", Some("02:00:00:00:00:01")),
                "already in use",
            ),
            (
                iface("eth2", "tap2", Some("01:00:00:00:00:01")),
                "multicast",
            ),
            (iface("eth2", "", None), "1 to 15 characters"),
            (
                iface("eth2", "averyveryverylongname", None),
                "1 to 15 characters",
            ),
        ] {
            let e = put_net(&mut c, &bad).unwrap_err();
            assert!(
                e.starts_with("Network interface config error") && e.contains(want),
                "{e}"
            );
        }
        let mut q = iface("eth3", "tap3", None);
        q.queues = Some(0);
        assert!(put_net(&mut c, &q).unwrap_err().contains("queues"));
        let mut limited = iface("eth3", "tap3", None);
        limited.rx_rate_limiter = Some(models::RateLimiter {
            bandwidth: Some(models::TokenBucket {
                size: 1 << 20,
                one_time_burst: None,
                refill_time: 1000,
            }),
            ops: None,
        });
        put_net(&mut c, &limited).unwrap();
        let shown = net_interface(&c, 2);
        assert_eq!(shown.rx_rate_limiter, limited.rx_rate_limiter);
        assert_eq!(full_config(&c, None, None).network_interfaces.len(), 3);
    }
}
