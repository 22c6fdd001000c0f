//! `ferrovm run --jail DIR --uid N --gid N [--cgroup K=V,...] [--netns PATH]`:
//! Firecracker's jailer built in. From the VM's configuration this works out what the
//! jail must hold (the files the VM reads or writes, the directories its sockets and
//! outputs go to, the device nodes) and enters it with the `jail` crate.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use jail::{absolute, Bind, CgroupLimit, Device, Entered, JailConfig, NetNs};
use vmm::config::{Payload, VmConfig};
use vmm::net::NetBackendConfig;

/// The jail's flags of `ferrovm run`.
#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Jail (root only; Firecracker's jailer built in)")]
pub struct JailArgs {
    /// Run the VM jailed in DIR: new mount, PID and IPC namespaces, pivot_root into DIR
    /// holding only the files the VM needs (bound at the paths given, read-only unless
    /// written), a /dev with only kvm (and net/tun, vhost-net when used), every
    /// capability dropped, then --uid/--gid. The API socket, metrics, statistics and
    /// vsock sockets land inside DIR at their paths; paths given later over the API are
    /// paths inside DIR.
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,
    /// The user the jailed VMM runs as (required with --jail; not 0).
    #[arg(long, value_name = "UID", requires = "jail")]
    pub uid: Option<u32>,
    /// The group the jailed VMM runs as (required with --jail).
    #[arg(long, value_name = "GID", requires = "jail")]
    pub gid: Option<u32>,
    /// cgroup v2 limits of the jailed VMM, e.g. `memory.max=512M,cpu.max=50000 100000`,
    /// in /sys/fs/cgroup/ferrovm/<--id> (removed at exit). Needs cgroup v2.
    #[arg(
        long,
        value_name = "KEY=VALUE[,...]",
        requires = "jail",
        value_delimiter = ','
    )]
    pub cgroup: Vec<CgroupLimit>,
    /// Join this network namespace, e.g. /var/run/netns/NAME (`ip netns add NAME`).
    #[arg(long, value_name = "PATH", requires = "jail")]
    pub netns: Option<PathBuf>,
}

/// What else the jail must hold besides the VM's configuration.
pub struct Extra<'a> {
    pub api_sock: Option<&'a Path>,
    pub metrics_path: Option<&'a str>,
    pub restore: Option<(&'a Path, &'a Path)>,
    pub id: &'a str,
}

/// Enters the jail when `--jail` is given. `Ok(None)`: run the VM (jailed or not);
/// `Ok(Some(code))`: this is the parent outside the jail and the VM has ended.
pub fn enter(args: &JailArgs, config: &VmConfig, extra: &Extra<'_>) -> Result<Option<u8>> {
    let Some(dir) = &args.jail else {
        return Ok(None);
    };
    let cfg = jail_config(dir, args, config, extra)?;
    match jail::enter(&cfg)? {
        Entered::Jailed => Ok(None),
        Entered::Exited(code) => Ok(Some(code)),
    }
}

fn abs(p: &Path) -> Result<PathBuf> {
    absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
}

/// The jail of this VM.
fn jail_config(
    dir: &Path,
    args: &JailArgs,
    config: &VmConfig,
    extra: &Extra<'_>,
) -> Result<JailConfig> {
    let (Some(uid), Some(gid)) = (args.uid, args.gid) else {
        bail!("--jail needs --uid and --gid: the unprivileged user and group the VMM runs as");
    };
    if uid == 0 {
        bail!("--uid 0 would leave the jailed VMM root; give an unprivileged uid");
    }
    let mut binds = Vec::new();
    let mut dirs = Vec::new();
    let mut bind = |p: &Path, writable: bool| -> Result<()> {
        binds.push(Bind {
            path: abs(p)?,
            writable,
        });
        Ok(())
    };
    match &config.payload {
        Some(Payload::Raw { path, .. }) => bind(path, false)?,
        Some(Payload::Kernel { path, initrd, .. }) => {
            bind(path, false)?;
            if let Some(i) = initrd {
                bind(i, false)?;
            }
        }
        None => {}
    }
    for d in &config.drives {
        bind(&d.path, !d.read_only && !config.snapshot)?;
    }
    if let Some((state, mem)) = extra.restore {
        bind(state, false)?;
        bind(mem, false)?;
        // The snapshot names the drives the restored VM reopens.
        if let Ok(s) = vmm::snapshot::read_state(state) {
            for d in &s.config.drives {
                bind(&d.path, !d.read_only)?;
            }
        }
    }
    if config.kernel_cache {
        if let Some(c) = vmm::kernel_cache::cache_dir().filter(|c| c.is_dir()) {
            // Read-only: a cached kernel is reused; a new one is not stored from inside.
            bind(&c, false)?;
        }
    }
    let mut parent_dir = |p: &Path| -> Result<()> {
        if let Some(parent) = abs(p)?.parent() {
            dirs.push(parent.to_path_buf());
        }
        Ok(())
    };
    for p in [
        extra.api_sock,
        config.stats_json.as_deref(),
        extra.metrics_path.map(Path::new),
        config.vsock.as_ref().map(|v| v.uds.as_path()),
    ]
    .into_iter()
    .flatten()
    {
        parent_dir(p)?;
    }
    let mut devices = vec![Device::Null, Device::Zero, Device::Urandom];
    if config.kvm_path == Path::new(Device::Kvm.path()) {
        devices.push(Device::Kvm);
    } else {
        bind(&config.kvm_path, true)?;
    }
    for n in &config.nets {
        match n.backend {
            NetBackendConfig::Tap { .. } => {
                if !devices.contains(&Device::Tun) {
                    devices.push(Device::Tun);
                }
                if n.vhost && !devices.contains(&Device::VhostNet) {
                    devices.push(Device::VhostNet);
                }
            }
            NetBackendConfig::User { .. } => bail!(
                "--net user cannot run inside --jail (passt is a program of the host); give the jailed VM a tap the --uid owns: ip tuntap add NAME mode tap user UID vnet_hdr"
            ),
        }
    }
    Ok(JailConfig {
        dir: dir.to_path_buf(),
        uid,
        gid,
        cgroup: args.cgroup.clone(),
        id: extra.id.to_string(),
        netns: args.netns.clone().map_or(NetNs::Inherit, NetNs::Join),
        binds,
        dirs,
        devices,
    })
}
