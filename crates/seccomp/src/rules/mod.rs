//! The allow-lists, one per [`ThreadKind`]: [`threads`] for the VMM's own threads,
//! [`workers`] for the device workers, [`ioctls`] for the `ioctl` requests they may
//! issue. A list is a set of calls, each allowed with any arguments or only when one
//! argument equals one of some values (the `ioctl` request, the `prctl` option...).

pub mod ioctls;
mod threads;
mod workers;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::{Error, Mode, ThreadKind};

/// A call allowed with any arguments, or only with argument `.0` in the values `.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Args {
    Any,
    OneOf(u8, Vec<u64>),
}

/// An allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List {
    calls: BTreeMap<i64, Args>,
}

impl List {
    /// Allows `calls` with any arguments.
    pub fn allow(&mut self, calls: &[libc::c_long]) -> &mut List {
        for &c in calls {
            self.calls.insert(c, Args::Any);
        }
        self
    }

    /// Allows `call` when argument `arg` is one of `values` (added to any values
    /// allowed before).
    pub fn allow_arg(&mut self, call: libc::c_long, arg: u8, values: &[u64]) -> &mut List {
        match self.calls.entry(call) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(Args::OneOf(arg, values.to_vec()));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => match o.get_mut() {
                Args::Any => {}
                Args::OneOf(a, vs) if *a == arg => {
                    vs.extend_from_slice(values);
                    vs.sort_unstable();
                    vs.dedup();
                }
                // Conditions on two different arguments: keep the list simple.
                Args::OneOf(..) => panic!("call {call}: conditions on two arguments"),
            },
        }
        self
    }

    /// Allows `ioctl` with the requests `requests`.
    pub fn ioctls(&mut self, requests: &[u64]) -> &mut List {
        self.allow_arg(libc::SYS_ioctl, 1, requests)
    }

    /// Adds everything `other` allows.
    pub fn union(&mut self, other: &List) -> &mut List {
        for (&call, args) in &other.calls {
            match args {
                Args::Any => {
                    self.calls.insert(call, Args::Any);
                }
                Args::OneOf(a, vs) => {
                    self.allow_arg(call, *a, vs);
                }
            }
        }
        self
    }

    /// Whether `call` is allowed with argument values `args` (for tests).
    pub fn allows(&self, call: libc::c_long, args: &[u64]) -> bool {
        match self.calls.get(&call) {
            None => false,
            Some(Args::Any) => true,
            Some(Args::OneOf(a, vs)) => args
                .get(usize::from(*a))
                .is_some_and(|v| vs.contains(&(v & 0xffff_ffff))),
        }
    }

    fn compile(&self, kind: ThreadKind, mode: Mode) -> Result<BpfProgram, Error> {
        let build = |source| Error::Build { kind, source };
        let mut rules = BTreeMap::new();
        for (&call, args) in &self.calls {
            let r = match args {
                Args::Any => Vec::new(),
                Args::OneOf(a, vs) => vs
                    .iter()
                    .map(|&v| {
                        // ioctl's request is an int in the kernel: compare 32 bits.
                        let c = SeccompCondition::new(
                            *a,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Eq,
                            v & 0xffff_ffff,
                        )
                        .map_err(|e| build(seccompiler::Error::Backend(e)))?;
                        SeccompRule::new(vec![c]).map_err(|e| build(seccompiler::Error::Backend(e)))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            rules.insert(call, r);
        }
        let mismatch = match mode {
            Mode::Log => SeccompAction::Log,
            _ => SeccompAction::Trap,
        };
        let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
            .map_err(|e| build(seccompiler::Error::Backend(e)))?;
        filter
            .try_into()
            .map_err(|e| build(seccompiler::Error::Backend(e)))
    }
}

/// What every thread may do: memory, futexes, signals' return, time, its own exit, and
/// what the SIGSYS report and the log need (write).
fn base() -> List {
    let mut l = List::default();
    l.allow(&[
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_futex,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_gettimeofday,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_getrandom,
        libc::SYS_sched_getaffinity,
        libc::SYS_restart_syscall,
    ]);
    l
}

/// The list of `kind`.
pub fn list(kind: ThreadKind) -> List {
    let mut l = base();
    match kind {
        ThreadKind::Main => l.union(&threads::main()),
        ThreadKind::Vcpu(_) => l.union(&threads::vcpu()),
        ThreadKind::Api => l.union(&threads::api()),
        ThreadKind::Stdin => l.union(&threads::stdin()),
        ThreadKind::PasstLog => l.union(&threads::passt_log()),
        ThreadKind::Block => l.union(&workers::block()),
        ThreadKind::BlockUring => l.union(&workers::block_uring()),
        ThreadKind::Net => l.union(&workers::net()),
        ThreadKind::VhostNet => l.union(&workers::vhost_net()),
        ThreadKind::Vsock => l.union(&workers::vsock()),
        ThreadKind::Balloon => l.union(&workers::balloon()),
        ThreadKind::Rng => l.union(&workers::rng()),
        ThreadKind::AnyWorker => l.union(&workers::any()),
        ThreadKind::Spawner => {
            // The union of what it starts, and starting them.
            for k in ThreadKind::ALL {
                if k != ThreadKind::Spawner && k != ThreadKind::Main {
                    l.union(&list(k));
                }
            }
            l.union(&threads::spawning())
        }
    };
    l
}

/// The compiled filter of `kind` in `mode`.
pub(crate) fn program(kind: ThreadKind, mode: Mode) -> Result<BpfProgram, Error> {
    list(kind).compile(kind, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_both_modes() {
        for kind in ThreadKind::ALL {
            for mode in [Mode::On, Mode::Log] {
                let p = program(kind, mode).unwrap();
                assert!(!p.is_empty() && p.len() < 4096, "{kind:?}: {}", p.len());
            }
        }
    }

    #[test]
    fn ioctls_are_allowed_per_kind() {
        use ioctls::*;
        let vcpu = list(ThreadKind::Vcpu(0));
        assert!(vcpu.allows(libc::SYS_ioctl, &[3, KVM_RUN]));
        assert!(!vcpu.allows(libc::SYS_ioctl, &[3, KVM_CREATE_VM]));
        assert!(!vcpu.allows(libc::SYS_ioctl, &[3, KVM_SET_USER_MEMORY_REGION]));
        let main = list(ThreadKind::Main);
        assert!(main.allows(libc::SYS_ioctl, &[3, KVM_CREATE_VM]));
        assert!(!main.allows(libc::SYS_ioctl, &[3, KVM_RUN]));
        let blk = list(ThreadKind::Block);
        assert!(!blk.allows(libc::SYS_ioctl, &[3, KVM_RUN]));
        assert!(blk.allows(libc::SYS_pwritev, &[]));
        assert!(!list(ThreadKind::Rng).allows(libc::SYS_pwritev, &[]));
        assert!(list(ThreadKind::Net).allows(libc::SYS_ioctl, &[3, TUNSETOFFLOAD]));
        assert!(!list(ThreadKind::Api).allows(libc::SYS_ioctl, &[3, TUNSETOFFLOAD]));
        // Nobody but the spawner starts threads or execs.
        for k in ThreadKind::ALL {
            assert!(!list(k).allows(libc::SYS_execve, &[]), "{k:?}");
            let clones = list(k).allows(libc::SYS_clone3, &[]);
            assert_eq!(clones, k == ThreadKind::Spawner, "{k:?}");
        }
    }

    #[test]
    fn the_spawner_allows_what_it_hands_out() {
        let spawner = list(ThreadKind::Spawner);
        for k in ThreadKind::ALL {
            if k == ThreadKind::Main || k == ThreadKind::Spawner {
                continue;
            }
            let mut u = spawner.clone();
            u.union(&list(k));
            assert_eq!(u, spawner, "{k:?}");
        }
    }
}
