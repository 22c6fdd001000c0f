//! How ferrovm's threads start: each one gets the seccomp allow-list of its kind
//! ([`ThreadKind`]) before it touches anything a guest controls, and its host CPUs when
//! the VM pins threads ([`Placement`]).
//!
//! The filters are built with rust-vmm's `seccompiler`, one per thread kind
//! ([`rules`]); `ioctl` is allowed only with the requests the kind issues. A call outside
//! the list traps (`SECCOMP_RET_TRAP`) into a `SIGSYS` handler that writes
//! `ferrovm: seccomp: thread <name> made forbidden syscall <nr> (<name>)` on stderr with
//! `write(2)` alone and ends the process with status [`SIGSYS_EXIT_STATUS`]; in
//! [`Mode::Log`] such calls are allowed and logged by the kernel (`SECCOMP_RET_LOG`).
//!
//! A seccomp filter is inherited by the threads its thread creates, and filters stack:
//! a device worker started by a vCPU thread would be bound by the vCPU's list as well as
//! its own. So every filtered thread is started through [`spawn`], which hands the
//! creation to a *spawner* thread (started by [`configure`] on a still unfiltered
//! thread, filtered with the union of the lists it hands out): the new thread inherits
//! that union and narrows it to its own kind at once.

mod names;
mod placement;
pub mod rules;
mod sigsys;

use std::collections::HashMap;
use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;

use seccompiler::BpfProgram;

pub use placement::{online_cpus, parse_cpu_list, Placement, PlacementError};
pub use sigsys::SIGSYS_EXIT_STATUS;

/// What the filters do with a call outside a thread's allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The process ends with a message naming the thread and the call.
    #[default]
    On,
    /// The call goes through and the kernel logs it (`SECCOMP_RET_LOG`, in the audit
    /// log / `dmesg`): for finding what a list lacks.
    Log,
    /// No filters.
    Off,
}

impl Mode {
    /// The word the command line uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::On => "on",
            Mode::Log => "log",
            Mode::Off => "off",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "on" => Ok(Mode::On),
            "log" => Ok(Mode::Log),
            "off" => Ok(Mode::Off),
            _ => Err(format!("seccomp mode `{s}`: expected on, log or off")),
        }
    }
}

/// The kinds of ferrovm threads, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread once the VM runs: the event loop, API requests, reboots,
    /// snapshots.
    Main,
    /// A vCPU thread (its index, for placement): `KVM_RUN` and the exits' device
    /// emulation, including device activation.
    Vcpu(u32),
    /// The API server (HTTP over the Unix socket).
    Api,
    /// The stdin reader of the serial console.
    Stdin,
    /// The thread that copies passt's stderr to the log.
    PasstLog,
    /// A virtio-blk worker with the thread engine (preadv/pwritev, fsync, fallocate).
    Block,
    /// A virtio-blk worker with the io_uring engine.
    BlockUring,
    /// A virtio-net worker (tap or passt's stream socket).
    Net,
    /// A vhost-net device's control-queue worker (the data path is in the kernel).
    VhostNet,
    /// The virtio-vsock worker (its host Unix sockets).
    Vsock,
    /// The virtio-balloon worker (madvise on guest memory, its statistics timer).
    Balloon,
    /// The virtio-rng worker.
    Rng,
    /// A device worker of no particular kind: the union of the worker lists.
    AnyWorker,
    /// The thread that starts the others (see the crate's documentation).
    Spawner,
}

impl ThreadKind {
    /// Every kind with its own list ([`ThreadKind::Vcpu`] once).
    pub const ALL: [ThreadKind; 14] = [
        ThreadKind::Main,
        ThreadKind::Vcpu(0),
        ThreadKind::Api,
        ThreadKind::Stdin,
        ThreadKind::PasstLog,
        ThreadKind::Block,
        ThreadKind::BlockUring,
        ThreadKind::Net,
        ThreadKind::VhostNet,
        ThreadKind::Vsock,
        ThreadKind::Balloon,
        ThreadKind::Rng,
        ThreadKind::AnyWorker,
        ThreadKind::Spawner,
    ];

    /// The kind with any vCPU index set to 0 (the key of its filter).
    fn key(self) -> ThreadKind {
        match self {
            ThreadKind::Vcpu(_) => ThreadKind::Vcpu(0),
            k => k,
        }
    }

    /// Whether this is a device worker (placed with the device threads).
    pub fn is_device(self) -> bool {
        !matches!(self, ThreadKind::Vcpu(_) | ThreadKind::Spawner)
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filter did not compile (a bug in a list).
    #[error("seccomp filter for {kind:?}: {source}")]
    Build {
        /// The thread kind.
        kind: ThreadKind,
        /// What seccompiler said.
        source: seccompiler::Error,
    },
    /// The kernel refused a filter.
    #[error("cannot install the seccomp filter of thread {thread}: {source}")]
    Install {
        /// The thread.
        thread: String,
        /// What seccompiler said.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(io::Error),
    /// The spawner thread could not start.
    #[error("cannot start the spawner thread: {0}")]
    Spawner(io::Error),
    /// A thread could not be placed on its CPUs.
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

/// The filters, compiled once per mode.
struct Filters {
    mode: Mode,
    programs: HashMap<ThreadKind, BpfProgram>,
}

type Job = Box<dyn FnOnce() + Send>;

static SETTINGS: RwLock<Settings> = RwLock::new(Settings {
    mode: Mode::Off,
    placement: Placement::NONE,
});
static FILTERS: OnceLock<Mutex<Vec<&'static Filters>>> = OnceLock::new();
static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

#[derive(Clone)]
struct Settings {
    mode: Mode,
    placement: Placement,
}

std::thread_local! {
    /// Whether this thread runs under a filter (then it must not create threads itself).
    static FILTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn settings() -> Settings {
    SETTINGS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The compiled filters of `mode` (compiled at the first use, then kept).
fn filters(mode: Mode) -> Result<&'static Filters, Error> {
    let all = FILTERS.get_or_init(|| Mutex::new(Vec::new()));
    let mut all = all.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = all.iter().find(|f| f.mode == mode) {
        return Ok(f);
    }
    let mut programs = HashMap::new();
    for kind in ThreadKind::ALL {
        programs.insert(kind, rules::program(kind, mode)?);
    }
    let f: &'static Filters = Box::leak(Box::new(Filters { mode, programs }));
    all.push(f);
    Ok(f)
}

/// Sets how threads started from now on are filtered and placed. With a mode other than
/// [`Mode::Off`] this compiles the filters, installs the `SIGSYS` handler and starts the
/// spawner thread, so call it from a thread without a filter (the main thread, early).
pub fn configure(mode: Mode, placement: Placement) -> Result<(), Error> {
    placement.check()?;
    if mode != Mode::Off {
        filters(mode)?;
        sigsys::install().map_err(Error::Handler)?;
    }
    *SETTINGS.write().unwrap_or_else(|e| e.into_inner()) = Settings { mode, placement };
    if mode != Mode::Off {
        start_spawner()?;
    }
    Ok(())
}

/// The mode [`configure`] set.
pub fn mode() -> Mode {
    settings().mode
}

/// The placement [`configure`] set.
pub fn placement() -> Placement {
    settings().placement
}

fn start_spawner() -> Result<(), Error> {
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || {
            // The spawner's own list is the union of the lists of what it starts; it
            // reads the mode when it starts, so a later `configure` to Off still works.
            thread_start(ThreadKind::Spawner);
            for job in rx {
                job();
            }
        })
        .map_err(Error::Spawner)?;
    let _ = SPAWNER.set(Mutex::new(tx));
    Ok(())
}

/// Places and filters the calling thread as `kind`; ends the process if it cannot (a
/// thread must never run unfiltered when filters are asked for).
fn thread_start(kind: ThreadKind) {
    if let Err(e) = start_as(kind) {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}

fn start_as(kind: ThreadKind) -> Result<(), Error> {
    let s = settings();
    s.placement.apply(kind)?;
    if s.mode != Mode::Off {
        apply_mode(kind, s.mode)?;
    }
    Ok(())
}

/// Installs the filter of `kind` on the calling thread (for threads not started by
/// [`spawn`]: the main thread once the VM runs). Does nothing with [`Mode::Off`].
pub fn apply(kind: ThreadKind) -> Result<(), Error> {
    let mode = mode();
    if mode == Mode::Off {
        return Ok(());
    }
    apply_mode(kind, mode)
}

fn apply_mode(kind: ThreadKind, mode: Mode) -> Result<(), Error> {
    let program = filters(mode)?
        .programs
        .get(&kind.key())
        .expect("every kind has a program");
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string();
    sigsys::set_thread_name(&name);
    seccompiler::apply_filter(program).map_err(|source| Error::Install {
        thread: name.clone(),
        source,
    })?;
    FILTERED.with(|f| f.set(true));
    tracing::debug!("thread {name}: seccomp filter {kind:?} ({mode})");
    Ok(())
}

/// Starts thread `name` of kind `kind` running `f`, placed and filtered as
/// [`configure`] said before `f` runs.
pub fn spawn<F, T>(name: String, kind: ThreadKind, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let s = settings();
    if s.mode == Mode::Off && s.placement.is_none() {
        return std::thread::Builder::new().name(name).spawn(f);
    }
    let body = move || {
        thread_start(kind);
        f()
    };
    let spawner = SPAWNER.get().filter(|_| FILTERED.with(|f| f.get()));
    let Some(spawner) = spawner else {
        return std::thread::Builder::new().name(name).spawn(body);
    };
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(std::thread::Builder::new().name(name).spawn(body));
    });
    let sent = spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .is_ok();
    if !sent {
        return Err(io::Error::other("the spawner thread has stopped"));
    }
    rx.recv()
        .map_err(|_| io::Error::other("the spawner thread has stopped"))?
}

/// The name of system call `nr` on x86_64 (empty when there is none).
pub fn syscall_name(nr: i64) -> &'static str {
    usize::try_from(nr)
        .ok()
        .and_then(|i| names::NAMES.get(i))
        .copied()
        .unwrap_or("")
}

/// A thread to start with [`spawn`], in the shape of `std::thread::Builder`.
#[derive(Debug, Clone)]
pub struct Thread {
    name: String,
    kind: ThreadKind,
}

/// Names a thread of kind `kind`; [`Thread::spawn`] starts it.
pub fn thread(name: impl Into<String>, kind: ThreadKind) -> Thread {
    Thread {
        name: name.into(),
        kind,
    }
}

impl Thread {
    /// [`spawn`]s the thread.
    pub fn spawn<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        spawn(self.name, self.kind, f)
    }
}

/// Whether the calling thread runs under one of these filters.
pub fn is_filtered() -> bool {
    FILTERED.with(|f| f.get())
}
