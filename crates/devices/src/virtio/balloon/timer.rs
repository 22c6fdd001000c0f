//! The statistics timer: a non-blocking one-shot `timerfd` the worker waits on (one of its
//! extra descriptors) and the VMM may re-arm from another thread (`timerfd_settime` is
//! safe to call concurrently on one descriptor).
//!
//! Non-blocking matters: a re-arm between the worker's wake-up and its read resets the
//! expiration count, and a blocking read would then stall the worker until the new
//! expiry.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

#[derive(Debug)]
pub(super) struct StatsTimer {
    fd: OwnedFd,
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        // Saturates at about 292 billion years: u16 seconds are far below it.
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 10^9: fits every c_long.
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

impl StatsTimer {
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor we just created and nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(StatsTimer { fd })
    }

    fn settime(&self, value: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: timespec(Duration::ZERO),
            it_value: timespec(value),
        };
        // SAFETY: a valid timerfd, a pointer to a live itimerspec, and a null old value
        // (allowed).
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Fires once after `after` (at least a nanosecond).
    pub(super) fn arm(&self, after: Duration) -> io::Result<()> {
        self.settime(after.max(Duration::from_nanos(1)))
    }

    /// Stops it and forgets any expiry not yet read.
    pub(super) fn disarm(&self) -> io::Result<()> {
        self.settime(Duration::ZERO)
    }

    /// Whether it will fire.
    pub(super) fn is_armed(&self) -> io::Result<bool> {
        let mut cur = libc::itimerspec {
            it_interval: timespec(Duration::ZERO),
            it_value: timespec(Duration::ZERO),
        };
        // SAFETY: a valid timerfd and a pointer to a live itimerspec it fills.
        let rc = unsafe { libc::timerfd_gettime(self.fd.as_raw_fd(), &mut cur) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cur.it_value.tv_sec != 0 || cur.it_value.tv_nsec != 0)
    }

    /// Reads the expirations: true if it fired, false if not (or it was re-armed since).
    pub(super) fn consume(&self) -> io::Result<bool> {
        let mut n = 0u64;
        // SAFETY: reads at most 8 bytes into `n`, which is 8 bytes and ours.
        let rc = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut n as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
                _ => Err(e),
            };
        }
        Ok(n > 0)
    }

    pub(super) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
