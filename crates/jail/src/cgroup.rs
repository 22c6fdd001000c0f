//! The jail's cgroup v2: `/sys/fs/cgroup/ferrovm/<id>` with the limits asked for.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::JailError;

const ROOT: &str = "/sys/fs/cgroup";

/// One `--cgroup KEY=VALUE` limit: KEY is a cgroup v2 interface file (`memory.max`,
/// `cpu.max`, `pids.max` ...), VALUE what is written to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimit {
    pub key: String,
    pub value: String,
}

impl CgroupLimit {
    /// The controller the file belongs to (`memory` for `memory.max`).
    pub fn controller(&self) -> &str {
        self.key.split('.').next().unwrap_or(&self.key)
    }
}

impl FromStr for CgroupLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected KEY=VALUE, e.g. memory.max=512M"))?;
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        let mut parts = key.split('.');
        let well_formed =
            parts.clone().count() == 2 && parts.all(|p| !p.is_empty() && p.chars().all(valid));
        if !well_formed {
            return Err(format!(
                "{key:?} is not a cgroup v2 interface file (CONTROLLER.FILE, e.g. memory.max, cpu.max, pids.max)"
            ));
        }
        if key.starts_with("cgroup.") {
            return Err(format!(
                "{key}: the cgroup.* files are the jail's to manage"
            ));
        }
        if value.is_empty() || value.contains('\n') {
            return Err(format!("{key}: the value must be one non-empty line"));
        }
        Ok(CgroupLimit {
            key: key.into(),
            value: value.into(),
        })
    }
}

/// A cgroup made for one jail, removed by the parent once the VM ended.
#[derive(Debug)]
pub(crate) struct Cgroup {
    path: PathBuf,
}

fn cgroup_err(msg: String) -> JailError {
    JailError::Cgroup(msg)
}

/// The file system type mounted at `/sys/fs/cgroup`, from `/proc/self/mounts`.
fn root_fs_type() -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().rev().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, ty) = (f.next()?, f.next()?, f.next()?);
        (at == ROOT).then(|| ty.to_string())
    })
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

impl Cgroup {
    /// Checks for cgroup v2 and its controllers, and makes the cgroup with `limits` set.
    pub(crate) fn create(id: &str, limits: &[CgroupLimit]) -> Result<Cgroup, JailError> {
        match root_fs_type() {
            Some(t) if t == "cgroup2" => {}
            found => {
                return Err(cgroup_err(format!(
                    "cgroup v2 is not mounted at {ROOT} (found {}); the limits need the unified hierarchy: boot the host with systemd.unified_cgroup_hierarchy=1, or mount -t cgroup2 none {ROOT}",
                    found.map_or("nothing".to_string(), |t| format!("a {t}"))
                )))
            }
        }
        let root = Path::new(ROOT);
        let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let mut needed: Vec<&str> = limits.iter().map(CgroupLimit::controller).collect();
        needed.sort_unstable();
        needed.dedup();
        for c in &needed {
            if !available.split_whitespace().any(|a| a == *c) {
                return Err(cgroup_err(format!(
                    "the {c} controller is not available in {ROOT} (available: {})",
                    if available.trim().is_empty() {
                        "none"
                    } else {
                        available.trim()
                    }
                )));
            }
        }
        if id.is_empty()
            || id.starts_with('.')
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(cgroup_err(format!(
                "the instance id {id:?} cannot name a cgroup (use letters, digits, '-', '_' and '.')"
            )));
        }
        let base = root.join("ferrovm");
        let enable: String = needed.iter().map(|c| format!("+{c} ")).collect();
        let enable = enable.trim_end();
        write(&root.join("cgroup.subtree_control"), enable).map_err(cgroup_err)?;
        fs::create_dir_all(&base).map_err(crate::io_err("cannot create the cgroup", &base))?;
        write(&base.join("cgroup.subtree_control"), enable).map_err(cgroup_err)?;
        let path = base.join(id);
        // A cgroup left by a VM that died: empty, so it can go.
        if path.exists() && fs::remove_dir(&path).is_err() {
            return Err(cgroup_err(format!(
                "{} exists and is in use: is another ferrovm running with --id {id}?",
                path.display()
            )));
        }
        fs::create_dir(&path).map_err(crate::io_err("cannot create the cgroup", &path))?;
        let cg = Cgroup { path };
        for l in limits {
            write(&cg.path.join(&l.key), &l.value).map_err(cgroup_err)?;
        }
        Ok(cg)
    }

    /// The file a process writes `0` to in order to join.
    pub(crate) fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Removes the cgroup (its processes have ended; the kernel may take a moment to
    /// notice).
    pub(crate) fn remove(self) {
        let path = self.path.clone();
        std::mem::forget(self);
        for _ in 0..100 {
            if fs::remove_dir(&path).is_ok() || !path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!("ferrovm: jail: cannot remove the cgroup {}", path.display());
    }
}

impl Drop for Cgroup {
    /// A cgroup whose jail failed before the fork goes away at once.
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_refuse_clearly() {
        let l: CgroupLimit = "memory.max=256M".parse().unwrap();
        assert_eq!(
            (l.key.as_str(), l.value.as_str(), l.controller()),
            ("memory.max", "256M", "memory")
        );
        let l: CgroupLimit = "cpu.max=50000 100000".parse().unwrap();
        assert_eq!(l.value, "50000 100000");
        for (bad, says) in [
            ("memory.max", "KEY=VALUE"),
            ("../x.max=1", "not a cgroup v2 interface file"),
            ("memory=1", "not a cgroup v2 interface file"),
            ("cgroup.procs=1", "the jail's to manage"),
            ("memory.max=", "non-empty"),
        ] {
            let e = bad.parse::<CgroupLimit>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
