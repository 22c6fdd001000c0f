//! The floor of any pause: kick a vCPU out of `KVM_RUN` and hear back from it.
//!
//! One VM, one vCPU on its own thread running the api-bench guest (`out 0x80, al; jmp`
//! back, real mode) in a bare `KVM_RUN` loop. The main thread, `N` times: sends the vCPU
//! thread a real-time signal (`pthread_kill`) whose handler sets the vCPU's
//! `kvm_run.immediate_exit`, so `KVM_RUN` returns `EINTR` whether the signal lands inside
//! it or just before it; waits on a channel until the thread reports it is out of
//! `KVM_RUN` ("kick"); then tells it to go on and waits for its answer that it is about
//! to re-enter ("wake"). This is what a VMM's pause and resume cannot go below: no API,
//! no HTTP, no devices, no bookkeeping.
//!
//! Usage: kick-floor N [--samples]
//!   prints the medians; with --samples, one "KICK_NS WAKE_NS" line per round trip instead.

use std::process::ExitCode;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use api_bench::guest::{LOAD_ADDR, LOOP_PORT, MEM_MIB, PORT_LOOP};
use api_bench::stats::Summary;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Longest wait for the vCPU thread to answer; far above any real round trip.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the guest runs between two kicks, so each kick finds it running.
const RUN_GAP: Duration = Duration::from_micros(500);

/// The vCPU's `kvm_run.immediate_exit` while its thread runs the loop (null otherwise).
/// There is one vCPU thread, and only it receives the kick signal.
static IMMEDIATE_EXIT: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
/// Port 0x80 exits the guest made (to show that it was running).
static GUEST_EXITS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = IMMEDIATE_EXIT.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: `p` points at `immediate_exit` in the vCPU's kvm_run mapping; the vCPU
        // thread (the only one this signal is sent to, and the one running this handler)
        // publishes it before its loop and clears it before the VcpuFd is dropped. A
        // volatile byte store is async-signal-safe.
        unsafe { ptr::write_volatile(p, 1) };
    }
}

/// vCPU thread -> main thread.
enum Event {
    /// The loop is about to start.
    Ready,
    /// `KVM_RUN` returned because of the kick.
    Left,
    /// Told to go on: about to re-enter `KVM_RUN`.
    Entering,
    /// The loop ended with an error.
    Failed(String),
}

/// Main thread -> vCPU thread, while it waits after a kick.
enum Command {
    Go,
    Stop,
}

/// Clears [`IMMEDIATE_EXIT`] when the loop ends, on every path.
struct ClearOnDrop;

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.store(ptr::null_mut(), Ordering::Release);
    }
}

fn vcpu_loop(mut vcpu: VcpuFd, events: &Sender<Event>, commands: &Receiver<Command>) {
    IMMEDIATE_EXIT.store(
        ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit),
        Ordering::Release,
    );
    let _clear = ClearOnDrop;
    let _ = events.send(Event::Ready);
    loop {
        let failure = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, _)) if port == u16::from(LOOP_PORT) => {
                GUEST_EXITS.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(other) => format!("unexpected exit {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                let _ = events.send(Event::Left);
                match commands.recv() {
                    Ok(Command::Go) => {
                        let _ = events.send(Event::Entering);
                        continue;
                    }
                    Ok(Command::Stop) | Err(_) => return,
                }
            }
            Err(e) => format!("KVM_RUN failed: {e}"),
        };
        let _ = events.send(Event::Failed(failure));
        return;
    }
}

/// A VM with one vCPU in real mode at the guest loop. The memory mapping is leaked (it
/// must outlive the VM, which lives until the process ends).
fn build_vcpu() -> Result<VcpuFd, String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let vm = kvm
        .create_vm()
        .map_err(|e| format!("KVM_CREATE_VM failed: {e}"))?;
    let size = (MEM_MIB << 20) as usize;
    // SAFETY: a fresh anonymous private mapping; the result is checked below and the
    // mapping is never unmapped (the process ends first).
    let mem = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(format!(
            "mmap of {MEM_MIB} MiB failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the mapping is `size` bytes, LOAD_ADDR + 4 is far below that, and nothing
    // else refers to it yet.
    unsafe {
        ptr::copy_nonoverlapping(
            PORT_LOOP.as_ptr(),
            mem.cast::<u8>().add(LOAD_ADDR as usize),
            PORT_LOOP.len(),
        )
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the region is a live mapping of `size` bytes for the life of the process.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION failed: {e}"))?;
    let vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU failed: {e}"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS failed: {e}"))?;
    sregs.cs.base = LOAD_ADDR;
    sregs.cs.selector = (LOAD_ADDR >> 4) as u16;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS failed: {e}"))?;
    let mut regs = vcpu
        .get_regs()
        .map_err(|e| format!("KVM_GET_REGS failed: {e}"))?;
    regs.rip = 0;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS failed: {e}"))?;
    // The VM fd must stay open as long as the vCPU runs; the process ends first.
    std::mem::forget(vm);
    Ok(vcpu)
}

/// Waits for the vCPU thread's next event, which must be `want`.
fn expect(events: &Receiver<Event>, want: &str) -> Result<(), String> {
    match events.recv_timeout(ANSWER_TIMEOUT) {
        Ok(Event::Ready) if want == "ready" => Ok(()),
        Ok(Event::Left) if want == "left" => Ok(()),
        Ok(Event::Entering) if want == "entering" => Ok(()),
        Ok(Event::Failed(why)) => Err(format!("vCPU thread failed: {why}")),
        Ok(_) => Err(format!("vCPU thread answered out of turn (wanted {want})")),
        Err(RecvTimeoutError::Timeout) => Err(format!(
            "vCPU thread did not answer within {ANSWER_TIMEOUT:?} (wanted {want})"
        )),
        Err(RecvTimeoutError::Disconnected) => Err("vCPU thread is gone".into()),
    }
}

/// `n` kick/wake round trips, in nanoseconds.
fn measure(n: u32) -> Result<Vec<(u64, u64)>, String> {
    let signal = SIGRTMIN();
    register_signal_handler(signal, on_kick)
        .map_err(|e| format!("cannot install the kick signal handler: {e}"))?;
    let vcpu = build_vcpu()?;
    let (ev_tx, ev_rx) = mpsc::channel();
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name("vcpu0".into())
        .spawn(move || vcpu_loop(vcpu, &ev_tx, &cmd_rx))
        .map_err(|e| format!("cannot spawn the vCPU thread: {e}"))?;
    expect(&ev_rx, "ready")?;
    let kick = || {
        thread
            .kill(signal)
            .map_err(|e| format!("pthread_kill failed: {e}"))
    };
    let mut samples = Vec::with_capacity(n as usize);
    for _ in 0..n {
        thread::sleep(RUN_GAP);
        let t0 = Instant::now();
        kick()?;
        expect(&ev_rx, "left")?;
        let t1 = Instant::now();
        cmd_tx
            .send(Command::Go)
            .map_err(|_| "vCPU thread is gone".to_string())?;
        expect(&ev_rx, "entering")?;
        let t2 = Instant::now();
        samples.push(((t1 - t0).as_nanos() as u64, (t2 - t1).as_nanos() as u64));
    }
    kick()?;
    expect(&ev_rx, "left")?;
    let _ = cmd_tx.send(Command::Stop);
    thread
        .join()
        .map_err(|_| "the vCPU thread panicked".to_string())?;
    if GUEST_EXITS.load(Ordering::Relaxed) == 0 {
        return Err("the guest never ran (no port 0x80 exits)".into());
    }
    Ok(samples)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = args.iter().find_map(|a| a.parse::<u32>().ok());
    let raw = args.iter().any(|a| a == "--samples");
    let Some(n) = n.filter(|&n| n > 0) else {
        eprintln!("usage: kick-floor N [--samples]");
        return ExitCode::from(2);
    };
    let samples = match measure(n) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kick-floor: {e}");
            return ExitCode::from(1);
        }
    };
    if raw {
        for (k, w) in &samples {
            println!("{k} {w}");
        }
        return ExitCode::SUCCESS;
    }
    let us = |f: fn(&(u64, u64)) -> u64| -> Vec<f64> {
        samples.iter().map(|s| f(s) as f64 / 1e3).collect()
    };
    let (Some(kick), Some(wake)) = (Summary::of(&us(|s| s.0)), Summary::of(&us(|s| s.1))) else {
        eprintln!("kick-floor: no samples");
        return ExitCode::from(1);
    };
    println!(
        "kick-floor: {n} round trips, {} guest exits meanwhile",
        GUEST_EXITS.load(Ordering::Relaxed)
    );
    println!("kick (signal -> out of KVM_RUN -> told), µs: {kick}");
    println!("wake (told to go -> about to re-enter), µs: {wake}");
    ExitCode::SUCCESS
}
