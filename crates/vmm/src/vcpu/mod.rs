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
mod kick;
pub mod setup;
pub mod state;

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
pub(crate) use kick::on_kick;

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
        // The thread's end of the response channel is dropped when its function returns:
        // after that, joining waits only for the thread's exit itself.
        let mut returned = false;
        while !t.is_finished() && Instant::now() < deadline {
            if answered {
                // Waits for the thread to return instead of polling (a 1 ms sleep here
                // was most of ferrovm's power-off-to-exit time).
                match self
                    .responses
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    Ok(_) => continue,
                    Err(RecvTimeoutError::Disconnected) => returned = true,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                break;
            }
            match self.responses.recv_timeout(Duration::from_millis(5)) {
                Ok(VcpuResponse::Exited) => answered = true,
                Err(RecvTimeoutError::Disconnected) => {
                    answered = true;
                    returned = true;
                    break;
                }
                Ok(_) => {}
                // A vCPU blocked in a device handler gets kicked until it notices.
                Err(RecvTimeoutError::Timeout) => {
                    let _ = t.kill(crate::signals::kick_signal());
                }
            }
        }
        if returned || t.is_finished() {
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

/// Converts a kvm-ioctls exit into a [`VmExit`], for the exits whose details kvm-ioctls
/// hands over; `None` for those it leaves in `kvm_run` (port output, internal errors,
/// unknown exits), which [`Deferred`] decodes once the exit's borrow of the vCPU ended.
///
/// Port input: kvm-ioctls gives the data slice (`count * size` bytes) but not `size`,
/// and the slice must be filled while it is borrowed, so the element size is inferred: an
/// `in` instruction (count 1) moves 1, 2 or 4 bytes, the whole slice; string input (`rep
/// ins`, which no device here serves) of other lengths is read byte by byte.
fn convert(exit: VcpuExit<'_>) -> Result<VmExit<'_>, Deferred> {
    Ok(match exit {
        VcpuExit::IoOut(port, data) => return Err(Deferred::IoOut(port, OutData::copy(data))),
        VcpuExit::IoIn(port, data) => VmExit::IoIn {
            port,
            size: if matches!(data.len(), 1 | 2 | 4) {
                data.len()
            } else {
                1
            },
            data,
        },
        VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
        VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
        VcpuExit::Hlt => VmExit::Hlt,
        VcpuExit::Shutdown => VmExit::Shutdown,
        VcpuExit::SystemEvent(kind, data) => VmExit::SystemEvent { kind, data },
        VcpuExit::IrqWindowOpen => VmExit::IrqWindowOpen,
        VcpuExit::FailEntry(reason, cpu) => VmExit::FailEntry { reason, cpu },
        VcpuExit::InternalError => return Err(Deferred::InternalError),
        VcpuExit::Unknown => return Err(Deferred::Unknown),
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
    })
}

/// Port output data, copied out of `kvm_run` so that the exit's borrow of the vCPU can end
/// before `kvm_run.io.size` is read. An `out` moves at most 4 bytes (no allocation);
/// string output (`rep outs`) up to a page.
enum OutData {
    Inline([u8; 8], usize),
    Heap(Vec<u8>),
}

impl OutData {
    fn copy(data: &[u8]) -> OutData {
        if data.len() <= 8 {
            let mut b = [0u8; 8];
            b[..data.len()].copy_from_slice(data);
            OutData::Inline(b, data.len())
        } else {
            OutData::Heap(data.to_vec())
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            OutData::Inline(b, n) => &b[..*n],
            OutData::Heap(v) => v,
        }
    }
}

/// An exit whose details are read from `kvm_run` after the exit's borrow ended.
enum Deferred {
    IoOut(u16, OutData),
    InternalError,
    Unknown,
    /// `KVM_RUN` failed with EINTR or EAGAIN (a kick): `immediate_exit` is cleared first.
    Interrupted,
}

impl Deferred {
    /// Reads what the exit left in `run` (the vCPU's `kvm_run`, after `KVM_RUN` returned
    /// this exit) and builds the [`VmExit`].
    fn decode<'d>(&'d self, run: &kvm_run) -> VmExit<'d> {
        match self {
            Deferred::IoOut(port, data) => VmExit::IoOut {
                port: *port,
                // SAFETY: a union read of plain integers (any bit pattern is valid);
                // `io` is the member KVM filled for this KVM_EXIT_IO.
                size: usize::from(unsafe { run.__bindgen_anon_1.io.size }),
                data: data.bytes(),
            },
            Deferred::InternalError => {
                // SAFETY: as above; `internal` is the member for KVM_EXIT_INTERNAL_ERROR.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                VmExit::InternalError {
                    suberror: internal.suberror,
                    data: internal.data[..n].to_vec(),
                }
            }
            Deferred::Unknown => VmExit::Unknown {
                // SAFETY: as above; `hw` is the member for KVM_EXIT_UNKNOWN.
                hardware_exit_reason: unsafe { run.__bindgen_anon_1.hw.hardware_exit_reason },
            },
            Deferred::Interrupted => VmExit::Interrupted,
        }
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
    let thread = seccomp::thread(format!("vcpu{index}"), seccomp::ThreadKind::Vcpu(index))
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
    // Unmapped (the kick disarmed) when the thread leaves its loop, on every path, before
    // the VcpuFd is dropped.
    let _kick = match kick::KickTarget::install(&fd) {
        Ok(k) => k,
        Err(e) => {
            ctx.control.request_stop(VmStop::Error(format!(
                "vcpu{index}: cannot map kvm_run for kicks: {e}"
            )));
            return;
        }
    };
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
        // The exit borrows `fd` (its data slices point into kvm_run) until it is handled;
        // what kvm-ioctls does not hand over is read through `get_kvm_run()` only after.
        let result = fd.run();
        let t1 = Instant::now();
        let deferred = match result {
            Ok(e) => convert(e).map(|exit| exit::handle(exit, &ctx.buses)),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Err(Deferred::Interrupted)
            }
            Err(e) => {
                ctx.control
                    .request_stop(VmStop::Error(format!("vcpu{index}: KVM_RUN failed: {e}")));
                running = false;
                continue;
            }
        };
        let handled = match deferred {
            Ok(h) => h,
            Err(Deferred::Interrupted) => {
                fd.set_kvm_immediate_exit(0);
                exit::handle(VmExit::Interrupted, &ctx.buses)
            }
            Err(d) => exit::handle(d.decode(fd.get_kvm_run()), &ctx.buses),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_output_is_copied_and_its_size_read_after_the_exit() {
        let mut data = [1u8, 2, 3, 4];
        let Err(d) = convert(VcpuExit::IoOut(0x3f8, &data)) else {
            panic!("port output is decoded after the exit's borrow");
        };
        data.fill(0);
        let mut run = kvm_run::default();
        // A `rep outsw` of two words: the element size comes from kvm_run.
        run.__bindgen_anon_1.io.size = 2;
        match d.decode(&run) {
            VmExit::IoOut { port, size, data } => {
                assert_eq!((port, size, data), (0x3f8, 2, &[1u8, 2, 3, 4][..]));
            }
            other => panic!("{other:?}"),
        }
        // String output longer than the inline buffer.
        let long: Vec<u8> = (0..100).collect();
        let Err(d) = convert(VcpuExit::IoOut(0x80, &long)) else {
            panic!("deferred");
        };
        run.__bindgen_anon_1.io.size = 1;
        assert!(matches!(d.decode(&run), VmExit::IoOut { size: 1, data, .. } if data == &long[..]));
    }

    #[test]
    fn port_input_sizes_follow_the_slice() {
        for (len, size) in [(1, 1), (2, 2), (4, 4), (3, 1), (6, 1), (4096, 1)] {
            let mut buf = vec![0u8; len];
            match convert(VcpuExit::IoIn(0x60, &mut buf)) {
                Ok(VmExit::IoIn { size: s, data, .. }) => {
                    assert_eq!((s, data.len()), (size, len));
                }
                _ => panic!("port input is decoded with its slice"),
            }
        }
    }

    #[test]
    fn internal_errors_and_unknown_exits_are_read_from_kvm_run() {
        let mut run = kvm_run::default();
        run.__bindgen_anon_1.internal.suberror = 1;
        // An ndata beyond the array is clamped.
        run.__bindgen_anon_1.internal.ndata = 99;
        let Err(d) = convert(VcpuExit::InternalError) else {
            panic!("deferred");
        };
        match d.decode(&run) {
            VmExit::InternalError { suberror, data } => {
                assert_eq!(suberror, 1);
                // SAFETY: reading back the plain-integer union member written above.
                assert_eq!(data.len(), unsafe {
                    run.__bindgen_anon_1.internal.data.len()
                });
            }
            other => panic!("{other:?}"),
        }
        let mut run = kvm_run::default();
        run.__bindgen_anon_1.hw.hardware_exit_reason = 0x7b;
        let Err(d) = convert(VcpuExit::Unknown) else {
            panic!("deferred");
        };
        assert!(matches!(
            d.decode(&run),
            VmExit::Unknown {
                hardware_exit_reason: 0x7b
            }
        ));
        assert!(matches!(convert(VcpuExit::Hlt), Ok(VmExit::Hlt)));
    }
}
