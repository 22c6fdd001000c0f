//! How vCPU threads, devices and the main thread agree that the VM ends, and why.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use devices::StopReason;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vcpu::exit::VcpuFault;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStop {
    /// A device ended it (debug-exit, reset, power off).
    Device(StopReason),
    /// The guest reported a crash.
    Crash,
    /// The guest kernel panicked (seen on its console) and then reset or stopped.
    GuestPanic,
    /// Every vCPU executed HLT with interrupts impossible.
    AllHalted,
    /// The user typed Ctrl-A x.
    UserQuit,
    /// ferrovm received a termination signal.
    Signal(i32),
    /// A vCPU hit a fatal exit.
    Fault {
        /// vCPU index.
        vcpu: u32,
        /// What happened.
        fault: VcpuFault,
        /// Register dump and code bytes.
        dump: String,
    },
    /// A VMM-side error (an ioctl failed, a thread panicked).
    Error(String),
}

/// Shared stop state.
pub struct Control {
    reason: Mutex<Option<VmStop>>,
    stopping: AtomicBool,
    halted: AtomicU32,
    vcpus: u32,
    irqchip: bool,
    /// Wakes the main thread when something changed.
    pub wake: EventFd,
}

impl Control {
    /// Control for a VM with `vcpus` vCPUs.
    pub fn new(vcpus: u32) -> std::io::Result<Self> {
        Self::with_irqchip(vcpus, false)
    }

    /// Control for a VM with `vcpus` vCPUs and, if `irqchip`, an in-kernel irqchip (then a
    /// halted vCPU can be woken, so HLT never ends the VM).
    pub fn with_irqchip(vcpus: u32, irqchip: bool) -> std::io::Result<Self> {
        Ok(Control {
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            halted: AtomicU32::new(0),
            vcpus,
            irqchip,
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Asks the VM to stop; the first reason given wins.
    pub fn request_stop(&self, why: VmStop) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(why);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    /// A vCPU halted for good; when all have, the VM stops.
    pub fn vcpu_halted(&self) {
        if self.halted.fetch_add(1, Ordering::SeqCst) + 1 == self.vcpus {
            self.request_stop(VmStop::AllHalted);
        }
    }

    /// Whether the VM has an in-kernel irqchip.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// True once the VM is stopping; vCPU loops check it before every entry.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The stop reason, once there is one.
    pub fn reason(&self) -> Option<VmStop> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes() {
        let c = Control::new(2).unwrap();
        assert!(!c.stopping());
        c.request_stop(VmStop::UserQuit);
        c.request_stop(VmStop::Crash);
        assert!(c.stopping());
        assert_eq!(c.reason(), Some(VmStop::UserQuit));
        assert!(c.wake.read().unwrap() >= 1);
    }

    #[test]
    fn all_halted_only_after_last_vcpu() {
        let c = Control::new(2).unwrap();
        c.vcpu_halted();
        assert_eq!(c.reason(), None);
        c.vcpu_halted();
        assert_eq!(c.reason(), Some(VmStop::AllHalted));
    }
}
