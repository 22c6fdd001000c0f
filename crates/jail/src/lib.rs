//! ferrovm's jail, entered by `ferrovm run --jail DIR` before any thread starts.
//!
//! The calling process (root) checks what it was given, creates the cgroup and a new PID
//! namespace, and forks. The parent stays outside: it relays termination signals, waits
//! for the child, removes the cgroup and returns the child's exit code
//! ([`Entered::Exited`]). The child, PID 1 of the new namespace, joins the cgroup, takes
//! new mount and IPC namespaces (and a network namespace: a new one or one to join),
//! bind-mounts into DIR only the files the VM needs (at the absolute paths it was given,
//! so the configuration stays valid; read-only unless the VM writes them), makes a
//! `/dev` with only the device nodes it needs (owned by the jail's uid) and a `/proc` of
//! its own PID namespace, `pivot_root`s into DIR and detaches the old root, forbids new
//! privileges, drops every capability (the bounding set, then with the change of uid the
//! rest) and becomes the unprivileged uid/gid. It then returns [`Entered::Jailed`] and
//! runs the VM. Paths configured later over the API are paths inside DIR.

mod cgroup;
mod mounts;

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

pub use cgroup::CgroupLimit;

/// What the jail is made of.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The new root (created if missing; must not be `/`).
    pub dir: PathBuf,
    /// The user and group the VMM runs as inside.
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 limits (`memory.max=256M`, `cpu.max=50000 100000`, ...).
    pub cgroup: Vec<CgroupLimit>,
    /// The cgroup's name under `/sys/fs/cgroup/ferrovm/` (the instance id).
    pub id: String,
    /// The network namespace.
    pub netns: NetNs,
    /// Files and directories bound into the jail at the same absolute path.
    pub binds: Vec<Bind>,
    /// Directories made inside the jail, owned by the jail's uid (where sockets, metrics
    /// and logs the VMM creates go).
    pub dirs: Vec<PathBuf>,
    /// The device nodes of the jail's `/dev`.
    pub devices: Vec<Device>,
}

/// The network namespace of the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNs {
    /// The caller's.
    Inherit,
    /// One joined by path (`/var/run/netns/NAME`, as `ip netns add` makes).
    Join(PathBuf),
}

/// A host file or directory visible inside the jail at the same absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The path as the VM's configuration names it (made absolute).
    pub path: PathBuf,
    /// The VM writes it (a writable drive); otherwise it is mounted read-only.
    pub writable: bool,
}

/// A device node the VMM may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Kvm,
    Tun,
    VhostNet,
    Null,
    Zero,
    Urandom,
}

impl Device {
    /// Its path inside the jail.
    pub fn path(self) -> &'static str {
        match self {
            Device::Kvm => "/dev/kvm",
            Device::Tun => "/dev/net/tun",
            Device::VhostNet => "/dev/vhost-net",
            Device::Null => "/dev/null",
            Device::Zero => "/dev/zero",
            Device::Urandom => "/dev/urandom",
        }
    }

    /// Its (major, minor) numbers (Linux's `Documentation/admin-guide/devices.txt`).
    fn numbers(self) -> (u64, u64) {
        match self {
            Device::Kvm => (10, 232),
            Device::Tun => (10, 200),
            Device::VhostNet => (10, 238),
            Device::Null => (1, 3),
            Device::Zero => (1, 5),
            Device::Urandom => (1, 9),
        }
    }

    /// Whether the jail's uid owns it (the VMM opens it read-write); the others are the
    /// world-usable ones.
    fn owned(self) -> bool {
        matches!(self, Device::Kvm | Device::Tun | Device::VhostNet)
    }
}

/// Which side of the fork returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Entered {
    /// The jailed child: run the VM.
    Jailed,
    /// The parent, once the child ended: exit with this code.
    Exited(u8),
}

/// Why the jail could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("--jail needs root (it makes namespaces, device nodes and a cgroup, then becomes --uid/--gid); run ferrovm as root")]
    NotRoot,
    #[error("--jail must be entered before any thread starts (this process has {0} threads)")]
    Threads(usize),
    #[error("--jail {0}: {1}")]
    BadDir(PathBuf, &'static str),
    #[error("--cgroup: {0}")]
    Cgroup(String),
    #[error("jail: {0}")]
    Privileges(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("jail: {what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JailError {
    let path = path.to_path_buf();
    move |source| JailError::Io { what, path, source }
}

pub(crate) fn sys_err(what: &'static str) -> impl FnOnce(nix::Error) -> JailError {
    move |source| JailError::Sys { what, source }
}

/// `path` made absolute against the current directory, with `.` and `..` resolved
/// lexically (the configuration's relative paths name files relative to where ferrovm
/// started; inside the jail the same absolute path holds them).
pub fn absolute(path: &Path) -> io::Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// The child's pid, for the parent's signal relay.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn relay(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes no pointers.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Makes the jail and forks (see the crate's documentation). Call it before any thread
/// starts; both sides return.
pub fn enter(cfg: &JailConfig) -> Result<Entered, JailError> {
    if !Uid::effective().is_root() {
        return Err(JailError::NotRoot);
    }
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(io_err("cannot list", Path::new("/proc/self/task")))?
        .count();
    if threads != 1 {
        return Err(JailError::Threads(threads));
    }
    let dir = absolute(&cfg.dir).map_err(io_err("cannot resolve", &cfg.dir))?;
    if dir == Path::new("/") {
        return Err(JailError::BadDir(dir, "the jail cannot be the host's root"));
    }
    std::fs::create_dir_all(&dir).map_err(io_err("cannot create the jail directory", &dir))?;
    for b in &cfg.binds {
        if !b.path.exists() {
            return Err(JailError::Io {
                what: "cannot put into the jail",
                path: b.path.clone(),
                source: io::ErrorKind::NotFound.into(),
            });
        }
    }
    if let NetNs::Join(p) = &cfg.netns {
        if !p.exists() {
            return Err(JailError::Io {
                what: "no network namespace at",
                path: p.clone(),
                source: io::ErrorKind::NotFound.into(),
            });
        }
    }
    let cgroup = if cfg.cgroup.is_empty() {
        None
    } else {
        Some(cgroup::Cgroup::create(&cfg.id, &cfg.cgroup)?)
    };
    nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(sys_err("new PID namespace"))?;
    // SAFETY: the process is single-threaded (checked above), so the child inherits no
    // lock another thread holds; it only makes system calls and allocates before it
    // returns to run the VM.
    match unsafe { nix::unistd::fork() }.map_err(sys_err("fork"))? {
        ForkResult::Parent { child } => {
            let code = wait_for(child);
            if let Some(c) = cgroup {
                c.remove();
            }
            Ok(Entered::Exited(code))
        }
        ForkResult::Child => {
            let cgroup_procs = cgroup.as_ref().map(|c| c.procs_file());
            // The parent removes the cgroup; the child must not when it drops its copy.
            std::mem::forget(cgroup);
            mounts::build(cfg, &dir, cgroup_procs.as_deref())?;
            drop_privileges(Uid::from_raw(cfg.uid), Gid::from_raw(cfg.gid))?;
            Ok(Entered::Jailed)
        }
    }
}

/// The parent's part: relay SIGINT/SIGTERM/SIGHUP to the child and wait for it.
fn wait_for(child: Pid) -> u8 {
    CHILD.store(child.as_raw(), Ordering::SeqCst);
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: `relay` only loads an atomic and calls kill(2), both async-signal-safe.
        if let Err(e) = unsafe { signal::signal(s, SigHandler::Handler(relay)) } {
            eprintln!("ferrovm: jail: cannot relay {s} to the VM: {e}");
        }
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code as u8,
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                eprintln!("ferrovm: jail: the VM process was killed by {sig}");
                return 128 + sig as u8;
            }
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => {
                eprintln!("ferrovm: jail: cannot wait for the VM process: {e}");
                return 1;
            }
        }
    }
}

/// No new privileges, every capability out of the bounding set, then the uid/gid (which,
/// from root to a non-zero uid, clears the permitted, effective and ambient sets).
fn drop_privileges(uid: Uid, gid: Gid) -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(sys_err("PR_SET_NO_NEW_PRIVS")(nix::Error::last()));
    }
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only; EINVAL past the last capability.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0
            && nix::Error::last() != nix::Error::EINVAL
        {
            return Err(sys_err("PR_CAPBSET_DROP")(nix::Error::last()));
        }
    }
    nix::unistd::setgroups(&[gid]).map_err(sys_err("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(sys_err("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(sys_err("setresuid"))?;
    if !uid.is_root() {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(io_err("cannot read", Path::new("/proc/self/status")))?;
        if let Some(l) = status.lines().find(|l| l.starts_with("CapEff:")) {
            if l.split_whitespace()
                .nth(1)
                .is_some_and(|v| !v.trim_start_matches('0').is_empty())
            {
                return Err(JailError::Privileges(format!(
                    "capabilities survived the change of user ({l})"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_resolves_dots_lexically() {
        assert_eq!(
            absolute(Path::new("/a/./b/../c")).unwrap(),
            PathBuf::from("/a/c")
        );
        assert_eq!(absolute(Path::new("/../x")).unwrap(), PathBuf::from("/x"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(absolute(Path::new("f")).unwrap(), cwd.join("f"));
    }

    #[test]
    fn device_numbers_are_linux_ones() {
        assert_eq!(Device::Kvm.numbers(), (10, 232));
        assert_eq!(Device::Tun.path(), "/dev/net/tun");
        assert!(Device::Kvm.owned() && !Device::Null.owned());
    }
}
