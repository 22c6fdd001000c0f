//! Which host CPUs a thread may run on: vCPU *i* on the *i*-th CPU of `--vcpu-affinity`,
//! the main, API and device threads on the CPUs of `--device-affinity`.

use std::io;

use crate::ThreadKind;

/// Where threads run. Empty lists leave threads where the kernel puts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Host CPU of vCPU *i*, for every vCPU (empty: not pinned).
    pub vcpus: Vec<usize>,
    /// Host CPUs of the main, API and device threads (empty: not pinned).
    pub devices: Vec<usize>,
}

/// A placement the host cannot give.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// A CPU that is not online here.
    #[error("host CPU {cpu} does not exist or is offline (online: {online})")]
    NoSuchCpu {
        /// The CPU asked for.
        cpu: usize,
        /// The host's online CPUs, as a list.
        online: String,
    },
    /// The online CPUs could not be read.
    #[error("cannot read the host's online CPUs: {0}")]
    Online(io::Error),
    /// vCPU pins were given, but not for this vCPU.
    #[error("vCPU {index} has no host CPU in the vCPU affinity list ({count} given)")]
    NoCpuForVcpu {
        /// The vCPU.
        index: u32,
        /// How many pins there are.
        count: usize,
    },
    /// `sched_setaffinity` failed.
    #[error("cannot pin thread {thread} to host CPUs {cpus:?}: {source}")]
    SetAffinity {
        /// The thread.
        thread: String,
        /// The CPUs.
        cpus: Vec<usize>,
        /// The errno.
        source: io::Error,
    },
}

const SYSFS_ONLINE: &str = "/sys/devices/system/cpu/online";

/// The host's online CPUs (`/sys/devices/system/cpu/online`).
pub fn online_cpus() -> io::Result<Vec<usize>> {
    let text = std::fs::read_to_string(SYSFS_ONLINE)?;
    parse_cpu_list(text.trim()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Parses a CPU list as the kernel and `taskset -c` write it: `0-2,5`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{t}` in CPU list `{s}` is not a CPU number"))
        };
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("CPU range `{item}` in `{s}` runs backwards"));
                }
                out.extend(a..=b);
            }
            None => out.push(num(item)?),
        }
    }
    Ok(out)
}

impl Placement {
    /// No pinning at all.
    pub const NONE: Placement = Placement {
        vcpus: Vec::new(),
        devices: Vec::new(),
    };

    /// Whether nothing is pinned.
    pub fn is_none(&self) -> bool {
        self.vcpus.is_empty() && self.devices.is_empty()
    }

    /// Refuses CPUs the host does not have online.
    pub fn check(&self) -> Result<(), PlacementError> {
        if self.is_none() {
            return Ok(());
        }
        let online = online_cpus().map_err(PlacementError::Online)?;
        for &cpu in self.vcpus.iter().chain(&self.devices) {
            if !online.contains(&cpu) {
                let list = online
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                return Err(PlacementError::NoSuchCpu { cpu, online: list });
            }
        }
        Ok(())
    }

    /// The CPUs a thread of `kind` is pinned to, if any. With device CPUs but no vCPU
    /// pins, vCPUs get every online CPU (they must not inherit the device CPUs of the
    /// thread that started them).
    pub fn cpus_for(&self, kind: ThreadKind) -> Result<Option<Vec<usize>>, PlacementError> {
        match kind {
            ThreadKind::Vcpu(index) if !self.vcpus.is_empty() => self
                .vcpus
                .get(index as usize)
                .map(|&c| Some(vec![c]))
                .ok_or(PlacementError::NoCpuForVcpu {
                    index,
                    count: self.vcpus.len(),
                }),
            ThreadKind::Vcpu(_) | ThreadKind::Spawner if !self.devices.is_empty() => {
                online_cpus().map(Some).map_err(PlacementError::Online)
            }
            k if k.is_device() && !self.devices.is_empty() => Ok(Some(self.devices.clone())),
            _ => Ok(None),
        }
    }

    /// Pins the calling thread as a thread of `kind`.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), PlacementError> {
        let Some(cpus) = self.cpus_for(kind)? else {
            return Ok(());
        };
        set_affinity(&cpus).map_err(|source| PlacementError::SetAffinity {
            thread: std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_string(),
            cpus,
            source,
        })
    }
}

fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain bits; all zeros is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `c` is below CPU_SETSIZE, inside the set.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size given.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("2-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn cpus_that_are_not_online_are_refused() {
        let online = online_cpus().unwrap();
        let missing = online.iter().max().unwrap() + 1;
        let p = Placement {
            vcpus: vec![missing],
            devices: Vec::new(),
        };
        let e = p.check().unwrap_err().to_string();
        assert!(
            e.contains(&format!("host CPU {missing} does not exist")),
            "{e}"
        );
        let ok = Placement {
            vcpus: vec![online[0]],
            devices: vec![online[0]],
        };
        ok.check().unwrap();
    }

    #[test]
    fn vcpus_get_their_own_cpu_and_devices_the_device_set() {
        let p = Placement {
            vcpus: vec![1, 0],
            devices: vec![0],
        };
        assert_eq!(p.cpus_for(ThreadKind::Vcpu(0)).unwrap(), Some(vec![1]));
        assert_eq!(p.cpus_for(ThreadKind::Vcpu(1)).unwrap(), Some(vec![0]));
        assert!(p.cpus_for(ThreadKind::Vcpu(2)).is_err());
        assert_eq!(p.cpus_for(ThreadKind::Block).unwrap(), Some(vec![0]));
        assert_eq!(p.cpus_for(ThreadKind::Main).unwrap(), Some(vec![0]));
        assert_eq!(Placement::NONE.cpus_for(ThreadKind::Api).unwrap(), None);
    }
}
