//! The child's side of the jail: namespaces, the bind mounts, `/dev`, `/proc`, and the
//! `pivot_root`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chown, Gid, Uid};

use crate::{io_err, sys_err, Bind, JailConfig, JailError, NetNs};

const NONE: Option<&str> = None;

/// `path` (absolute) under `dir`.
fn inside(dir: &Path, path: &Path) -> PathBuf {
    dir.join(path.strip_prefix("/").unwrap_or(path))
}

/// Builds the jail in the child and moves into it.
pub(crate) fn build(cfg: &JailConfig, dir: &Path, procs: Option<&Path>) -> Result<(), JailError> {
    if let Some(p) = procs {
        fs::write(p, "0").map_err(io_err("cannot join the cgroup", p))?;
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC)
        .map_err(sys_err("new mount and IPC namespaces"))?;
    if let NetNs::Join(p) = &cfg.netns {
        let f = fs::File::open(p).map_err(io_err("cannot open the network namespace", p))?;
        nix::sched::setns(f, CloneFlags::CLONE_NEWNET)
            .map_err(sys_err("joining the network namespace"))?;
    }
    let uid = Uid::from_raw(cfg.uid);
    let gid = Gid::from_raw(cfg.gid);
    // Nothing mounted from here on propagates back to the host.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(sys_err("making the mounts private"))?;
    mount(
        Some(dir),
        dir,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(sys_err("binding the jail directory onto itself"))?;
    for b in &cfg.binds {
        bind(dir, b)?;
    }
    for d in &cfg.dirs {
        let t = inside(dir, d);
        fs::create_dir_all(&t).map_err(io_err("cannot create", &t))?;
        chown(&t, Some(uid), Some(gid)).map_err(sys_err("chown of a jail directory"))?;
        fs::set_permissions(&t, fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot set the mode of", &t))?;
    }
    make_dev(cfg, dir, uid, gid)?;
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).map_err(io_err("cannot create", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
        .map_err(io_err("cannot set the mode of", &tmp))?;
    let proc = dir.join("proc");
    fs::create_dir_all(&proc).map_err(io_err("cannot create", &proc))?;
    let noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), &proc, Some("proc"), noexec, NONE).map_err(sys_err("mounting /proc"))?;
    let cwd = std::env::current_dir().ok();
    if let Some(c) = &cwd {
        let _ = fs::create_dir_all(inside(dir, c));
    }
    enter_root(dir)?;
    if let Some(c) = &cwd {
        let _ = std::env::set_current_dir(c);
    }
    Ok(())
}

/// Makes `dir` the root: `pivot_root` and the old root detached; where the host's root is
/// the initial ramfs, which cannot be pivoted away from (EINVAL), the jail's mount is
/// moved over `/` and `chroot`ed into, as `switch_root` does (the host's root then lies
/// under it, out of reach of a process without capabilities).
fn enter_root(dir: &Path) -> Result<(), JailError> {
    let old = dir.join(".old-root");
    fs::create_dir_all(&old).map_err(io_err("cannot create", &old))?;
    match nix::unistd::pivot_root(dir, &old) {
        Ok(()) => {
            nix::unistd::chdir("/").map_err(sys_err("chdir /"))?;
            umount2("/.old-root", MntFlags::MNT_DETACH)
                .map_err(sys_err("detaching the host's root"))?;
            fs::remove_dir("/.old-root")
                .map_err(io_err("cannot remove", Path::new("/.old-root")))?;
        }
        Err(nix::Error::EINVAL) => {
            let _ = fs::remove_dir(&old);
            nix::unistd::chdir(dir).map_err(sys_err("chdir into the jail"))?;
            mount(Some("."), "/", NONE, MsFlags::MS_MOVE, NONE).map_err(sys_err(
                "moving the jail over / (the root is the initial ramfs)",
            ))?;
            nix::unistd::chroot(".").map_err(sys_err("chroot into the jail"))?;
            nix::unistd::chdir("/").map_err(sys_err("chdir /"))?;
        }
        Err(e) => return Err(sys_err("pivot_root into the jail")(e)),
    }
    Ok(())
}

/// Binds `b.path` at the same path inside `dir`, read-only unless writable.
fn bind(dir: &Path, b: &Bind) -> Result<(), JailError> {
    let target = inside(dir, &b.path);
    let meta = fs::metadata(&b.path).map_err(io_err("cannot put into the jail", &b.path))?;
    if meta.is_dir() {
        fs::create_dir_all(&target).map_err(io_err("cannot create", &target))?;
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&target)
            .map_err(io_err("cannot create the mount point", &target))?;
    }
    mount(Some(&b.path), &target, NONE, MsFlags::MS_BIND, NONE)
        .map_err(sys_err("binding a file into the jail"))?;
    if !b.writable {
        let ro = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        mount(NONE, &target, NONE, ro, NONE).map_err(sys_err("making a bound file read-only"))?;
    }
    Ok(())
}

/// A `/dev` of its own (a small tmpfs, so the nodes work whatever DIR's file system
/// allows) with only the nodes asked for.
fn make_dev(cfg: &JailConfig, dir: &Path, uid: Uid, gid: Gid) -> Result<(), JailError> {
    let dev = dir.join("dev");
    fs::create_dir_all(&dev).map_err(io_err("cannot create", &dev))?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )
    .map_err(sys_err("mounting the jail's /dev"))?;
    for d in &cfg.devices {
        let path = inside(dir, Path::new(d.path()));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        let (major, minor) = d.numbers();
        let mode = if d.owned() { 0o660 } else { 0o666 };
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .map_err(sys_err("making a device node"))?;
        if d.owned() {
            chown(&path, Some(uid), Some(gid)).map_err(sys_err("chown of a device node"))?;
        }
        // mknod obeys the umask; the mode must be exactly this.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(io_err("cannot set the mode of", &path))?;
    }
    Ok(())
}
