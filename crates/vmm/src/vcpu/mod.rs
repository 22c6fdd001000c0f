//! vCPU threads.
//!
//! Each vCPU runs on its own thread as a small state machine: *running* (entering
//! `KVM_RUN` and handling exits) or *parked* (paused, or stopped after the VM ended and
//! waiting to exit). The main thread drives it through a [`VcpuHandle`]: commands go in
//! over a channel ([`VcpuCommand`]), answers come back over another ([`VcpuResponse`]),
//! and a command reaches a vCPU inside `KVM_RUN` with one kick: a signal whose handler
//! sets the vCPU's `immediate_exit`, so `KVM_RUN` returns at once even if the signal
//! arrived just before the vCPU entered it.

pub mod dump;
pub mod exit;
pub mod setup;
pub mod state;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::Killable;

use crate::control::{Control, VmStop};
use crate::memory::GuestMem;
use crate::stats::VcpuStats;
pub use dump::dump;
use exit::{Buses, ExitAction, ExitStop, VmExit};

/// vCPU errors.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vcpu{index}: {what} failed: {source}")]
    Ioctl {
        /// The vCPU.
        index: u32,
        /// The ioctl.
        what: &'static str,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// Building a vCPU set-up structure failed.
    #[error("vcpu{index}: cannot build the {what}")]
    Setup {
        /// The vCPU.
        index: u32,
        /// The structure.
        what: &'static str,
    },
    /// The thread could not be spawned.
    #[error("vcpu{index}: cannot spawn thread: {source}")]
    Spawn {
        /// The vCPU.
        index: u32,
        /// The cause.
        source: std::io::Error,
    },
    /// The thread did not answer a command in time.
    #[error("vcpu{index} did not answer {what} within {timeout:?}")]
    Timeout {
        /// The vCPU.
        index: u32,
        /// The command.
        what: &'static str,
        /// How long it was given.
        timeout: Duration,
    },
    /// Its state could not be read.
    #[error("vcpu{index}: cannot save its state: {message}")]
    SaveState {
        /// The vCPU.
        index: u32,
        /// Why.
        message: String,
    },
    /// The thread is gone.
    #[error("vcpu{index} has exited")]
    Gone {
        /// The vCPU.
        index: u32,
    },
}

/// What the main thread asks of a vCPU thread.
#[derive(Debug)]
pub enum VcpuCommand {
    /// Leave `KVM_RUN`, tell the guest's kvmclock that it is stopped, and park.
    Pause,
    /// Run again after `Pause`.
    Resume,
    /// Report the vCPU's state (only while paused); the MSRs to read are given.
    SaveState(Arc<Vec<u32>>),
    /// End the thread.
    Exit,
}

/// What a vCPU thread answers.
#[derive(Debug)]
pub enum VcpuResponse {
    /// Parked after `Pause`.
    Paused,
    /// Running after `Resume` (or parked for good if the VM is stopping).
    Resumed,
    /// The thread ends.
    Exited,
    /// The answer to `SaveState`.
    State(Result<Box<state::VcpuState>, String>),
}

impl VcpuResponse {
    fn same_kind(&self, other: &VcpuResponse) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// How long the main thread waits for a vCPU to answer (a failure bound: an answer takes
/// microseconds on real hardware, milliseconds in the nested testbed).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The main thread's handle on one vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    index: u32,
    commands: Sender<VcpuCommand>,
    /// Set before a command is sent, so the running vCPU checks its channel only then.
    pending: Arc<AtomicBool>,
    responses: Receiver<VcpuResponse>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<VcpuStats>>,
}

impl VcpuHandle {
    /// The vCPU's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The vCPU's exit statistics (live: the thread updates them at every exit).
    pub fn stats(&self) -> VcpuStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Interrupts `KVM_RUN` on the thread (no-op if it is not running the guest).
    pub fn kick(&self) {
        if let Some(t) = &self.thread {
            if let Err(e) = t.kill(crate::signals::kick_signal()) {
                tracing::debug!("cannot kick vcpu{}: {e}", self.index);
            }
        }
    }

    /// Sends `cmd` and kicks the thread so it sees it.
    pub fn send(&self, cmd: VcpuCommand) -> Result<(), VcpuError> {
        self.commands
            .send(cmd)
            .map_err(|_| VcpuError::Gone { index: self.index })?;
        self.pending.store(true, Ordering::Release);
        self.kick();
        Ok(())
    }

    /// Waits for the answer `want` to a command sent with [`VcpuHandle::send`].
    pub fn expect(&self, want: VcpuResponse, timeout: Duration) -> Result<(), VcpuError> {
        self.expect_answer(want, timeout).map(|_| ())
    }

    fn expect_answer(
        &self,
        want: VcpuResponse,
        timeout: Duration,
    ) -> Result<VcpuResponse, VcpuError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.responses.recv_timeout(left) {
                Ok(r) if r.same_kind(&want) => return Ok(r),
                // A stale answer (to an earlier command that timed out): skip it.
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(VcpuError::Timeout {
                        index: self.index,
                        what: match want {
                            VcpuResponse::Paused => "pause",
                            VcpuResponse::Resumed => "resume",
                            VcpuResponse::Exited => "exit",
                            VcpuResponse::State(_) => "save state",
                        },
                        timeout,
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(VcpuError::Gone { index: self.index })
                }
            }
        }
    }

    /// The state of a paused vCPU (MSRs from `msrs`).
    pub fn save_state(&self, msrs: Arc<Vec<u32>>) -> Result<state::VcpuState, VcpuError> {
        self.send(VcpuCommand::SaveState(msrs))?;
        match self.expect_answer(VcpuResponse::State(Err(String::new())), COMMAND_TIMEOUT)? {
            VcpuResponse::State(Ok(s)) => Ok(*s),
            VcpuResponse::State(Err(e)) => Err(VcpuError::SaveState {
                index: self.index,
                message: e,
            }),
            _ => Err(VcpuError::Gone { index: self.index }),
        }
    }

    /// Tells the thread to exit and joins it (gives up after `timeout`, leaving it
    /// behind, with an error log). The thread is kicked until it answers, and then left
    /// alone to finish (signals would only slow its teardown down).
    pub fn exit(&mut self, timeout: Duration) {
        self.begin_exit();
        self.finish_exit(timeout);
    }

    /// Tells the thread to exit (and kicks it), without waiting: stopping a VM tells
    /// every vCPU first, so none keeps running the guest while another is joined.
    pub fn begin_exit(&self) {
        let _ = self.send(VcpuCommand::Exit);
    }

    /// Waits for a thread told to exit by [`VcpuHandle::begin_exit`]; see
    /// [`VcpuHandle::exit`].
    pub fn finish_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let Some(t) = self.thread.take() else {
            return;
        };
        let mut answered = false;
        while !t.is_finished() && Instant::now() < deadline {
            if answered {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            match self.responses.recv_timeout(Duration::from_millis(5)) {
                Ok(VcpuResponse::Exited) | Err(RecvTimeoutError::Disconnected) => answered = true,
                Ok(_) => {}
                // A vCPU blocked in a device handler gets kicked until it notices.
                Err(RecvTimeoutError::Timeout) => {
                    let _ = t.kill(crate::signals::kick_signal());
                }
            }
        }
        if t.is_finished() {
            if t.join().is_err() {
                tracing::error!("vcpu{} thread panicked", self.index);
            }
        } else {
            tracing::error!(
                "vcpu{} did not stop within {timeout:?} (answered: {answered}); abandoning it",
                self.index
            );
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.exit(COMMAND_TIMEOUT);
    }
}

thread_local! {
    /// The running vCPU's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal's handler: makes the vCPU of this thread leave (or not enter)
/// `KVM_RUN`. Async-signal-safe: one thread-local read and one byte write.
pub(crate) fn on_kick() {
    IMMEDIATE_EXIT.with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: the pointer is this thread's vCPU's kvm_run mapping, set by
            // `run_thread` while the VcpuFd (which owns the mapping) is alive on this thread
            // and cleared before it is dropped; a signal handler runs on this thread, so
            // the mapping is valid here. A volatile write because KVM reads the byte.
            unsafe { p.write_volatile(1) };
        }
    });
}

/// Converts a kvm-ioctls exit into a [`VmExit`], reading the fields kvm-ioctls does not
/// expose from the vCPU's `kvm_run` page.
///
/// # Safety
/// `run` must point at the `kvm_run` mapping of the vCPU that produced `exit`, and
/// `KVM_RUN` must have returned (the kernel does not touch the page meanwhile).
unsafe fn convert<'a>(exit: VcpuExit<'a>, run: *const kvm_run) -> VmExit<'a> {
    match exit {
        VcpuExit::IoOut(port, data) => VmExit::IoOut {
            port,
            // SAFETY: the caller guarantees `run` is valid; `io` is the active union member
            // for KVM_EXIT_IO and `size` does not overlap the data slice.
            size: unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read() } as usize,
            data,
        },
        VcpuExit::IoIn(port, data) => VmExit::IoIn {
            port,
            // SAFETY: as for IoOut.
            size: unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read() } as usize,
            data,
        },
        VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
        VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
        VcpuExit::Hlt => VmExit::Hlt,
        VcpuExit::Shutdown => VmExit::Shutdown,
        VcpuExit::SystemEvent(kind, data) => VmExit::SystemEvent { kind, data },
        VcpuExit::IrqWindowOpen => VmExit::IrqWindowOpen,
        VcpuExit::FailEntry(reason, cpu) => VmExit::FailEntry { reason, cpu },
        VcpuExit::InternalError => {
            // SAFETY: `internal` is the active union member for KVM_EXIT_INTERNAL_ERROR.
            let internal = unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.internal).read() };
            let n = (internal.ndata as usize).min(internal.data.len());
            VmExit::InternalError {
                suberror: internal.suberror,
                data: internal.data[..n].to_vec(),
            }
        }
        VcpuExit::Unknown => VmExit::Unknown {
            // SAFETY: `hw` is the active union member for KVM_EXIT_UNKNOWN.
            hardware_exit_reason: unsafe {
                std::ptr::addr_of!((*run).__bindgen_anon_1.hw.hardware_exit_reason).read()
            },
        },
        VcpuExit::Intr => VmExit::Interrupted,
        VcpuExit::Exception => VmExit::Other("KVM_EXIT_EXCEPTION"),
        VcpuExit::Hypercall(_) => VmExit::Other("KVM_EXIT_HYPERCALL"),
        VcpuExit::Debug(_) => VmExit::Other("KVM_EXIT_DEBUG"),
        VcpuExit::MemoryFault { .. } => VmExit::Other("KVM_EXIT_MEMORY_FAULT"),
        VcpuExit::X86Rdmsr(_) => VmExit::Other("KVM_EXIT_X86_RDMSR"),
        VcpuExit::X86Wrmsr(_) => VmExit::Other("KVM_EXIT_X86_WRMSR"),
        VcpuExit::IoapicEoi(_) => VmExit::Other("KVM_EXIT_IOAPIC_EOI"),
        VcpuExit::Nmi => VmExit::Other("KVM_EXIT_NMI"),
        _ => VmExit::Other("an exit reason ferrovm does not know"),
    }
}

/// What a vCPU thread needs.
pub struct VcpuContext {
    /// The buses the exit handler dispatches to.
    pub buses: Arc<Buses>,
    /// The VM's stop state.
    pub control: Arc<Control>,
    /// Guest memory (for the register dump).
    pub mem: GuestMem,
    /// Run the guest at once; otherwise start parked, as after a pause.
    pub start_running: bool,
}

/// Starts the thread `vcpu{index}` running `fd` (already configured); it runs the guest at
/// once, or waits parked for `Resume` (`ctx.start_running`).
pub fn spawn(index: u32, fd: VcpuFd, ctx: VcpuContext) -> Result<VcpuHandle, VcpuError> {
    let (commands, command_rx) = mpsc::channel();
    let (response_tx, responses) = mpsc::channel();
    let stats = Arc::new(Mutex::new(VcpuStats::default()));
    let thread_stats = stats.clone();
    let pending = Arc::new(AtomicBool::new(false));
    let thread_pending = pending.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            let control = ctx.control.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_thread(
                    index,
                    fd,
                    &ctx,
                    &Commands {
                        rx: &command_rx,
                        pending: &thread_pending,
                    },
                    &response_tx,
                    &thread_stats,
                )
            }));
            if let Err(p) = result {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                control.request_stop(VmStop::Error(format!("vcpu{index} panicked: {msg}")));
                let _ = response_tx.send(VcpuResponse::Exited);
            }
        })
        .map_err(|source| VcpuError::Spawn { index, source })?;
    Ok(VcpuHandle {
        index,
        commands,
        pending,
        responses,
        thread: Some(thread),
        stats,
    })
}

/// Clears the thread-local `immediate_exit` pointer when the thread leaves its loop, on
/// every path, before the `VcpuFd` it points into is dropped.
struct ImmediateExitGuard;

impl Drop for ImmediateExitGuard {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    }
}

/// A vCPU thread's command channel: the running loop looks at the channel only when the
/// flag says something was sent (one load per exit instead of a channel poll).
struct Commands<'a> {
    rx: &'a Receiver<VcpuCommand>,
    pending: &'a AtomicBool,
}

impl Commands<'_> {
    fn try_next(&self) -> Result<VcpuCommand, TryRecvError> {
        if !self.pending.load(Ordering::Acquire) {
            return Err(TryRecvError::Empty);
        }
        match self.rx.try_recv() {
            Err(TryRecvError::Empty) => {
                // Drained: clear the flag, then look again for a command sent in between.
                self.pending.store(false, Ordering::Release);
                self.rx.try_recv()
            }
            other => other,
        }
    }

    fn next(&self) -> Result<VcpuCommand, mpsc::RecvError> {
        self.rx.recv()
    }
}

fn run_thread(
    index: u32,
    mut fd: VcpuFd,
    ctx: &VcpuContext,
    commands: &Commands<'_>,
    responses: &Sender<VcpuResponse>,
    stats: &Mutex<VcpuStats>,
) {
    let immediate_exit = std::ptr::addr_of_mut!(fd.get_kvm_run().immediate_exit);
    IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
    let _guard = ImmediateExitGuard;
    let mut running = ctx.start_running;
    let mut t0 = Instant::now();
    loop {
        // Commands first; a parked vCPU blocks here.
        loop {
            let cmd = if running {
                match commands.try_next() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                match commands.next() {
                    Ok(c) => c,
                    Err(_) => return,
                }
            };
            match cmd {
                VcpuCommand::Pause => {
                    if running {
                        pause_clock(index, &fd);
                    }
                    running = false;
                    let _ = responses.send(VcpuResponse::Paused);
                }
                VcpuCommand::Resume => {
                    running = !ctx.control.stopping();
                    // A kick that arrived while parked must not end the next entry.
                    fd.set_kvm_immediate_exit(0);
                    t0 = Instant::now();
                    let _ = responses.send(VcpuResponse::Resumed);
                }
                VcpuCommand::SaveState(msrs) => {
                    let answer = if running {
                        Err("the vCPU is running; pause it first".to_string())
                    } else {
                        state::save(&fd, index, &msrs, ctx.control.has_irqchip())
                            .map(Box::new)
                            .map_err(|e| e.to_string())
                    };
                    let _ = responses.send(VcpuResponse::State(answer));
                }
                VcpuCommand::Exit => {
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        tracing::debug!("vcpu{index} stopped at:\n{}", dump(&fd, &ctx.mem));
                    }
                    let _ = responses.send(VcpuResponse::Exited);
                    return;
                }
            }
        }
        if ctx.control.stopping() {
            // The VM is ending: park until told to exit.
            running = false;
            continue;
        }
        let run_ptr: *const kvm_run = fd.get_kvm_run();
        let result = fd.run();
        let t1 = Instant::now();
        let exit = match result {
            // SAFETY: `run_ptr` is this vCPU's kvm_run mapping and KVM_RUN has returned.
            Ok(e) => unsafe { convert(e, run_ptr) },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
                VmExit::Interrupted
            }
            Err(e) => {
                ctx.control
                    .request_stop(VmStop::Error(format!("vcpu{index}: KVM_RUN failed: {e}")));
                running = false;
                continue;
            }
        };
        let handled = exit::handle(exit, &ctx.buses);
        let t2 = Instant::now();
        stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(&handled.key, t1 - t0, t2 - t1);
        t0 = t2;
        match handled.action {
            ExitAction::Continue => {}
            // With an in-kernel irqchip KVM handles HLT itself; a HLT exit here is
            // spurious: go back in.
            ExitAction::Halt if ctx.control.has_irqchip() => {}
            ExitAction::Halt => {
                ctx.control.vcpu_halted();
                running = false;
            }
            ExitAction::Stop(stop) => {
                let why = match stop {
                    ExitStop::Fault(fault) => VmStop::Fault {
                        vcpu: index,
                        fault,
                        dump: dump(&fd, &ctx.mem),
                    },
                    ExitStop::Crash => VmStop::Crash,
                    ExitStop::Device(reason) => VmStop::Device(reason),
                };
                ctx.control.request_stop(why);
                running = false;
            }
        }
    }
}

/// Tells the guest's kvmclock that the vCPU is stopped (`KVM_KVMCLOCK_CTRL`), so its
/// watchdogs do not take the pause for a lockup. EINVAL means the guest does not use
/// kvmclock.
fn pause_clock(index: u32, fd: &VcpuFd) {
    if let Err(e) = fd.kvmclock_ctrl() {
        if e.errno() != libc::EINVAL {
            tracing::debug!("vcpu{index}: KVM_KVMCLOCK_CTRL failed: {e}");
        }
    }
}
