//! Signals: the vCPU kick signal (SIGRTMIN: its handler sets the vCPU's `immediate_exit`,
//! so `KVM_RUN` returns at once) and termination signals
//! (SIGINT, SIGTERM, SIGHUP), which end the VM cleanly so the terminal is restored.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

static TERM_EVT_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
static TERM_EVT: OnceLock<EventFd> = OnceLock::new();

/// The signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    crate::vcpu::on_kick();
}

extern "C" fn on_term(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(num, Ordering::SeqCst);
    let fd = TERM_EVT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; fd is a live eventfd owned by TERM_EVT,
        // which is never dropped; the buffer is 8 valid bytes.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Installs the handlers (idempotent) and returns the eventfd signalled on termination.
pub fn install() -> std::io::Result<&'static EventFd> {
    if let Some(e) = TERM_EVT.get() {
        return Ok(e);
    }
    let evt = EventFd::new(EFD_NONBLOCK)?;
    let evt = TERM_EVT.get_or_init(|| evt);
    use std::os::fd::AsRawFd;
    TERM_EVT_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
    register_signal_handler(kick_signal(), on_kick).map_err(std::io::Error::from)?;
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        register_signal_handler(s, on_term).map_err(std::io::Error::from)?;
    }
    Ok(evt)
}

/// The last termination signal received (0 if none).
pub fn last_signal() -> i32 {
    LAST_SIGNAL.load(Ordering::SeqCst)
}
