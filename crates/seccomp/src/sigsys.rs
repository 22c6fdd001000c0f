//! The `SIGSYS` report: a filtered thread made a call outside its list
//! (`SECCOMP_RET_TRAP`). The handler runs under that same filter, so it only formats into
//! a stack buffer, `write(2)`s the line and `_exit(2)`s, calls every list allows.

use std::cell::Cell;
use std::io;

/// The exit status of a process a filter stopped (128 + `SIGSYS`, as a shell shows a
/// death by the signal).
pub const SIGSYS_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

const NAME_LEN: usize = 16;

std::thread_local! {
    /// The thread's name for the report, set when its filter is installed (a constant
    /// initializer with no destructor: reading it in a signal handler allocates nothing
    /// and makes no call).
    static THREAD_NAME: Cell<[u8; NAME_LEN]> = const { Cell::new([0; NAME_LEN]) };
}

/// Records the calling thread's name for the report (cut to 16 bytes).
pub(crate) fn set_thread_name(name: &str) {
    let mut buf = [0u8; NAME_LEN];
    let n = name.len().min(NAME_LEN);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD_NAME.with(|c| c.set(buf));
}

/// Offset of `si_syscall` in the x86_64 `siginfo_t` of a `SIGSYS` (`si_signo`,
/// `si_errno`, `si_code`, padding, then the union's `_sigsys`: `_call_addr` (8 bytes),
/// `_syscall`, `_arch`).
const SI_SYSCALL_OFFSET: usize = 24;

/// A fixed buffer the handler formats into.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_num(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut v = n.unsigned_abs();
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The report line for call `nr` on thread `name`.
fn report(name: &[u8], nr: i64) -> Line {
    let mut line = Line {
        buf: [0; 160],
        len: 0,
    };
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    line.push(b"ferrovm: seccomp: thread ");
    line.push(if end == 0 { b"?" } else { &name[..end] });
    line.push(b" made forbidden syscall ");
    line.push_num(nr);
    line.push(b" (");
    let sys = crate::syscall_name(nr);
    line.push(if sys.is_empty() {
        b"unknown"
    } else {
        sys.as_bytes()
    });
    line.push(b")\n");
    line
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo_t; for a seccomp
    // SIGSYS the int at SI_SYSCALL_OFFSET is the call's number (inside the 128-byte
    // siginfo_t).
    let nr = unsafe {
        std::ptr::read_unaligned((info as *const u8).add(SI_SYSCALL_OFFSET).cast::<i32>())
    };
    let name = THREAD_NAME.with(Cell::get);
    let line = report(&name, i64::from(nr));
    // SAFETY: write(2) on stderr from a valid buffer of `len` bytes, then _exit: both
    // async-signal-safe and allowed by every list.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(SIGSYS_EXIT_STATUS);
    }
}

/// Installs the process-wide `SIGSYS` handler.
pub(crate) fn install() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn of the
    // SA_SIGINFO signature, and sigaction only reads the struct.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_thread_and_the_call() {
        let mut name = [0u8; NAME_LEN];
        name[..5].copy_from_slice(b"vcpu1");
        let l = report(&name, 57);
        assert_eq!(
            std::str::from_utf8(&l.buf[..l.len]).unwrap(),
            "ferrovm: seccomp: thread vcpu1 made forbidden syscall 57 (fork)\n"
        );
        let l = report(&[0; NAME_LEN], 9999);
        assert_eq!(
            std::str::from_utf8(&l.buf[..l.len]).unwrap(),
            "ferrovm: seccomp: thread ? made forbidden syscall 9999 (unknown)\n"
        );
    }
}
