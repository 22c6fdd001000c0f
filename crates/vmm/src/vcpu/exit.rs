//! The exit handler: a pure function of (exit, buses) returning what the vCPU does next.
//!
//! [`VmExit`] is a small hypervisor-neutral view of `KVM_RUN` exits; unit tests drive
//! [`handle`] with synthetic exits.

use std::fmt;

use devices::{Bus, DeviceAction, StopReason};

use crate::stats::{ExitKey, ExitReason, Target};

/// The port-I/O and MMIO buses the handler dispatches to.
#[derive(Debug)]
pub struct Buses {
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
}

impl Default for Buses {
    fn default() -> Self {
        Buses {
            pio: Bus::new("pio"),
            mmio: Bus::new("mmio"),
        }
    }
}

/// KVM system-event types (`kvm_run.system_event.type`).
pub mod system_event {
    /// Guest powered off.
    pub const SHUTDOWN: u32 = 1;
    /// Guest asked for a reset.
    pub const RESET: u32 = 2;
    /// Guest crashed (e.g. pvpanic, PSCI crash).
    pub const CRASH: u32 = 3;
}

/// Why `KVM_RUN` returned.
#[derive(Debug)]
pub enum VmExit<'a> {
    /// Port input of `count = data.len() / size` elements of `size` bytes (string I/O
    /// delivers several elements in one exit).
    IoIn {
        port: u16,
        size: usize,
        data: &'a mut [u8],
    },
    /// Port output, as `IoIn`.
    IoOut {
        port: u16,
        size: usize,
        data: &'a [u8],
    },
    /// MMIO read.
    MmioRead { addr: u64, data: &'a mut [u8] },
    /// MMIO write.
    MmioWrite { addr: u64, data: &'a [u8] },
    /// HLT (only without an in-kernel irqchip).
    Hlt,
    /// Triple fault.
    Shutdown,
    /// Power off, reset, crash ...
    SystemEvent { kind: u32, data: &'a [u64] },
    /// Interrupt window open.
    IrqWindowOpen,
    /// VM entry failed.
    FailEntry { reason: u64, cpu: u32 },
    /// KVM could not handle the exit itself.
    InternalError { suberror: u32, data: Vec<u64> },
    /// Hardware exit reason KVM does not know.
    Unknown { hardware_exit_reason: u64 },
    /// `KVM_RUN` was interrupted by a signal.
    Interrupted,
    /// Any other exit, by name.
    Other(&'static str),
}

/// A reason for a vCPU to stop the VM with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuFault {
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// VM entry failure.
    FailEntry { reason: u64, cpu: u32 },
    /// KVM internal error.
    Internal { suberror: u32, data: Vec<u64> },
    /// Unknown hardware exit.
    Unknown { hardware_exit_reason: u64 },
    /// An exit ferrovm does not handle.
    Unhandled(&'static str),
    /// A system event of a type ferrovm does not handle.
    UnhandledSystemEvent(u32),
}

/// Name of a KVM internal-error suberror.
pub fn internal_suberror_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure (KVM could not emulate an instruction)",
        2 => "exception while delivering an exception (simultaneous exceptions)",
        3 => "error while delivering an event",
        4 => "unexpected exit reason",
        _ => "unknown suberror",
    }
}

impl fmt::Display for VcpuFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VcpuFault::TripleFault => write!(f, "guest triple fault (KVM_EXIT_SHUTDOWN): the CPU reset itself after an unhandled exception"),
            VcpuFault::FailEntry { reason, cpu } => write!(
                f,
                "VM entry failed on host CPU {cpu}: hardware entry failure reason {reason:#x}"
            ),
            VcpuFault::Internal { suberror, data } => {
                write!(
                    f,
                    "KVM internal error, suberror {suberror}: {}",
                    internal_suberror_name(*suberror)
                )?;
                if !data.is_empty() {
                    write!(f, "; data:")?;
                    for d in data {
                        write!(f, " {d:#x}")?;
                    }
                }
                Ok(())
            }
            VcpuFault::Unknown {
                hardware_exit_reason,
            } => write!(
                f,
                "unknown exit (KVM_EXIT_UNKNOWN), hardware exit reason {hardware_exit_reason:#x}"
            ),
            VcpuFault::Unhandled(name) => write!(f, "unhandled exit {name}"),
            VcpuFault::UnhandledSystemEvent(t) => write!(f, "unhandled system event type {t}"),
        }
    }
}

/// How the VM ends, as decided by a vCPU exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStop {
    /// A device asked to stop (debug-exit, reset, power off).
    Device(StopReason),
    /// The guest reported a crash (system event).
    Crash,
    /// The vCPU hit an error.
    Fault(VcpuFault),
}

/// What the vCPU does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// The vCPU halted and nothing can wake it (no irqchip): park it.
    Halt,
    /// Stop the whole VM.
    Stop(ExitStop),
}

/// The outcome of handling one exit: the action and the accounting key.
#[derive(Debug)]
pub struct Handled<'b> {
    /// What to do next.
    pub action: ExitAction,
    /// What to count.
    pub key: ExitKey<'b>,
}

fn from_device(action: DeviceAction) -> Option<ExitAction> {
    match action {
        DeviceAction::None => None,
        DeviceAction::Stop(r) => Some(ExitAction::Stop(ExitStop::Device(r))),
    }
}

fn key(reason: ExitReason, target: Target<'_>) -> ExitKey<'_> {
    ExitKey { reason, target }
}

/// Handles one exit against the buses.
///
/// Port I/O is delivered element by element (`rep outsb` of N bytes is N one-byte writes).
/// Unclaimed reads return all ones; unclaimed writes are dropped; both are counted.
pub fn handle<'b>(exit: VmExit<'_>, buses: &'b Buses) -> Handled<'b> {
    let cont = |key| Handled {
        action: ExitAction::Continue,
        key,
    };
    let stop = |reason, s| Handled {
        action: ExitAction::Stop(s),
        key: key(reason, Target::None),
    };
    match exit {
        VmExit::IoOut { port, size, data } => {
            let size = size.clamp(1, data.len().max(1));
            let mut claimed = true;
            for chunk in data.chunks(size) {
                match buses.pio.write(u64::from(port), chunk) {
                    None => claimed = false,
                    Some((_, action)) => {
                        if let Some(a) = from_device(action) {
                            return Handled {
                                action: a,
                                key: key(ExitReason::IoOut, Target::Port { port, claimed }),
                            };
                        }
                    }
                }
            }
            cont(key(ExitReason::IoOut, Target::Port { port, claimed }))
        }
        VmExit::IoIn { port, size, data } => {
            let size = size.clamp(1, data.len().max(1));
            let mut claimed = true;
            for chunk in data.chunks_mut(size) {
                if buses.pio.read(u64::from(port), chunk).is_none() {
                    chunk.fill(0xff);
                    claimed = false;
                }
            }
            cont(key(ExitReason::IoIn, Target::Port { port, claimed }))
        }
        VmExit::MmioRead { addr, data } => {
            let region = buses.mmio.read(addr, data).map(|r| (r.name, r.base));
            if region.is_none() {
                data.fill(0xff);
            }
            cont(key(ExitReason::MmioRead, Target::Mmio { region, addr }))
        }
        VmExit::MmioWrite { addr, data } => {
            let (region, action) = match buses.mmio.write(addr, data) {
                Some((r, a)) => (Some((r.name, r.base)), from_device(a)),
                None => (None, None),
            };
            let k = key(ExitReason::MmioWrite, Target::Mmio { region, addr });
            match action {
                Some(a) => Handled { action: a, key: k },
                None => cont(k),
            }
        }
        VmExit::Hlt => Handled {
            action: ExitAction::Halt,
            key: key(ExitReason::Hlt, Target::None),
        },
        VmExit::Shutdown => stop(
            ExitReason::Shutdown,
            ExitStop::Fault(VcpuFault::TripleFault),
        ),
        VmExit::SystemEvent { kind, .. } => {
            let s = match kind {
                system_event::SHUTDOWN => ExitStop::Device(StopReason::PowerOff),
                system_event::RESET => ExitStop::Device(StopReason::Reset),
                system_event::CRASH => ExitStop::Crash,
                other => ExitStop::Fault(VcpuFault::UnhandledSystemEvent(other)),
            };
            stop(ExitReason::SystemEvent, s)
        }
        VmExit::IrqWindowOpen => cont(key(ExitReason::IrqWindowOpen, Target::None)),
        VmExit::FailEntry { reason, cpu } => stop(
            ExitReason::FailEntry,
            ExitStop::Fault(VcpuFault::FailEntry { reason, cpu }),
        ),
        VmExit::InternalError { suberror, data } => stop(
            ExitReason::InternalError,
            ExitStop::Fault(VcpuFault::Internal { suberror, data }),
        ),
        VmExit::Unknown {
            hardware_exit_reason,
        } => stop(
            ExitReason::Unknown,
            ExitStop::Fault(VcpuFault::Unknown {
                hardware_exit_reason,
            }),
        ),
        VmExit::Interrupted => cont(key(ExitReason::Interrupted, Target::None)),
        VmExit::Other(name) => stop(
            ExitReason::Other,
            ExitStop::Fault(VcpuFault::Unhandled(name)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::legacy::{ports, DebugExit, I8042};
    use devices::BusDevice;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Log(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Log {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0x10 + offset as u8 + i as u8;
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
            self.0.push((offset, data.to_vec()));
            DeviceAction::None
        }
    }

    fn buses() -> (Buses, Arc<Mutex<Log>>, Arc<Mutex<Log>>) {
        let mut b = Buses::default();
        let pio = Arc::new(Mutex::new(Log::default()));
        let mmio = Arc::new(Mutex::new(Log::default()));
        b.pio.insert("log", 0x3f8, 8, pio.clone()).unwrap();
        b.pio
            .insert(
                "debug-exit",
                ports::DEBUG_EXIT.into(),
                1,
                Arc::new(Mutex::new(DebugExit)),
            )
            .unwrap();
        b.pio
            .insert(
                "i8042",
                ports::I8042_DATA.into(),
                5,
                Arc::new(Mutex::new(I8042::new(
                    vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
                ))),
            )
            .unwrap();
        b.mmio
            .insert("testdev", 0xd000_0000, 0x1000, mmio.clone())
            .unwrap();
        (b, pio, mmio)
    }

    #[test]
    fn port_out_of_each_size_reaches_device() {
        let (b, pio, _) = buses();
        for (size, data) in [(1, vec![1u8]), (2, vec![1, 2]), (4, vec![1, 2, 3, 4])] {
            let h = handle(
                VmExit::IoOut {
                    port: 0x3f9,
                    size,
                    data: &data,
                },
                &b,
            );
            assert_eq!(h.action, ExitAction::Continue);
            assert_eq!(
                h.key.target,
                Target::Port {
                    port: 0x3f9,
                    claimed: true
                }
            );
        }
        let log = &pio.lock().unwrap().0;
        assert_eq!(log.len(), 3);
        assert_eq!(log[2], (1, vec![1, 2, 3, 4]));
    }

    #[test]
    fn string_out_delivers_each_element() {
        let (b, pio, _) = buses();
        let data = b"hello";
        let h = handle(
            VmExit::IoOut {
                port: 0x3f8,
                size: 1,
                data,
            },
            &b,
        );
        assert_eq!(h.action, ExitAction::Continue);
        let bytes: Vec<u8> = pio.lock().unwrap().0.iter().map(|(_, d)| d[0]).collect();
        assert_eq!(bytes, b"hello");
        // rep outsw: 2-byte elements.
        let h = handle(
            VmExit::IoOut {
                port: 0x3f8,
                size: 2,
                data: &[1, 2, 3, 4],
            },
            &b,
        );
        assert_eq!(h.action, ExitAction::Continue);
        assert_eq!(pio.lock().unwrap().0.len(), 7);
    }

    #[test]
    fn string_in_fills_each_element() {
        let (b, _, _) = buses();
        let mut data = [0u8; 6];
        handle(
            VmExit::IoIn {
                port: 0x3fa,
                size: 2,
                data: &mut data,
            },
            &b,
        );
        assert_eq!(data, [0x12, 0x13, 0x12, 0x13, 0x12, 0x13]);
    }

    #[test]
    fn unclaimed_port_and_mmio() {
        let (b, _, _) = buses();
        let mut data = [0u8; 4];
        let h = handle(
            VmExit::IoIn {
                port: 0x1234,
                size: 4,
                data: &mut data,
            },
            &b,
        );
        assert_eq!(data, [0xff; 4]);
        assert_eq!(
            h.key.target,
            Target::Port {
                port: 0x1234,
                claimed: false
            }
        );
        let h = handle(
            VmExit::IoOut {
                port: 0x1234,
                size: 1,
                data: &[0],
            },
            &b,
        );
        assert_eq!(h.action, ExitAction::Continue);
        assert_eq!(
            h.key.target,
            Target::Port {
                port: 0x1234,
                claimed: false
            }
        );
        let mut data = [0u8; 8];
        let h = handle(
            VmExit::MmioRead {
                addr: 0xe000_0000,
                data: &mut data,
            },
            &b,
        );
        assert_eq!(data, [0xff; 8]);
        assert_eq!(
            h.key.target,
            Target::Mmio {
                region: None,
                addr: 0xe000_0000
            }
        );
        let h = handle(
            VmExit::MmioWrite {
                addr: 0xe000_0000,
                data: &[1],
            },
            &b,
        );
        assert_eq!(h.action, ExitAction::Continue);
        assert_eq!(h.key.reason, ExitReason::MmioWrite);
    }

    #[test]
    fn mmio_read_write_reach_region() {
        let (b, _, mmio) = buses();
        let mut data = [0u8; 4];
        let h = handle(
            VmExit::MmioRead {
                addr: 0xd000_0008,
                data: &mut data,
            },
            &b,
        );
        assert_eq!(data, [0x18, 0x19, 0x1a, 0x1b]);
        assert_eq!(
            h.key.target,
            Target::Mmio {
                region: Some(("testdev", 0xd000_0000)),
                addr: 0xd000_0008
            }
        );
        handle(
            VmExit::MmioWrite {
                addr: 0xd000_0ffc,
                data: &[9, 9, 9, 9],
            },
            &b,
        );
        assert_eq!(mmio.lock().unwrap().0, vec![(0xffc, vec![9, 9, 9, 9])]);
    }

    #[test]
    fn debug_exit_and_reset_stop_the_vm() {
        let (b, _, _) = buses();
        let h = handle(
            VmExit::IoOut {
                port: ports::DEBUG_EXIT,
                size: 1,
                data: &[7],
            },
            &b,
        );
        assert_eq!(
            h.action,
            ExitAction::Stop(ExitStop::Device(StopReason::DebugExit(7)))
        );
        let h = handle(
            VmExit::IoOut {
                port: ports::I8042_COMMAND,
                size: 1,
                data: &[0xfe],
            },
            &b,
        );
        assert_eq!(
            h.action,
            ExitAction::Stop(ExitStop::Device(StopReason::Reset))
        );
        // A string write stops at the element that stopped the VM.
        let h = handle(
            VmExit::IoOut {
                port: ports::DEBUG_EXIT,
                size: 1,
                data: &[3, 4],
            },
            &b,
        );
        assert_eq!(
            h.action,
            ExitAction::Stop(ExitStop::Device(StopReason::DebugExit(3)))
        );
    }

    #[test]
    fn other_exit_reasons() {
        let b = Buses::default();
        assert_eq!(handle(VmExit::Hlt, &b).action, ExitAction::Halt);
        assert_eq!(
            handle(VmExit::Shutdown, &b).action,
            ExitAction::Stop(ExitStop::Fault(VcpuFault::TripleFault))
        );
        let ev = |kind| handle(VmExit::SystemEvent { kind, data: &[] }, &b).action;
        assert_eq!(
            ev(1),
            ExitAction::Stop(ExitStop::Device(StopReason::PowerOff))
        );
        assert_eq!(ev(2), ExitAction::Stop(ExitStop::Device(StopReason::Reset)));
        assert_eq!(ev(3), ExitAction::Stop(ExitStop::Crash));
        assert_eq!(
            ev(9),
            ExitAction::Stop(ExitStop::Fault(VcpuFault::UnhandledSystemEvent(9)))
        );
        assert_eq!(
            handle(VmExit::IrqWindowOpen, &b).action,
            ExitAction::Continue
        );
        assert_eq!(handle(VmExit::Interrupted, &b).action, ExitAction::Continue);
        let h = handle(
            VmExit::FailEntry {
                reason: 0x21,
                cpu: 1,
            },
            &b,
        );
        assert_eq!(h.key.reason, ExitReason::FailEntry);
        let fault = |h: Handled<'_>| match h.action {
            ExitAction::Stop(ExitStop::Fault(f)) => f.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(fault(h).contains("0x21"));
        let msg = fault(handle(
            VmExit::InternalError {
                suberror: 1,
                data: vec![0x4, 0x10],
            },
            &b,
        ));
        assert!(
            msg.contains("suberror 1") && msg.contains("emulation failure") && msg.contains("0x10"),
            "{msg}"
        );
        let msg = fault(handle(
            VmExit::Unknown {
                hardware_exit_reason: 0x7b,
            },
            &b,
        ));
        assert!(msg.contains("0x7b"), "{msg}");
        let msg = fault(handle(VmExit::Other("KVM_EXIT_DEBUG"), &b));
        assert!(msg.contains("KVM_EXIT_DEBUG"), "{msg}");
    }

    #[test]
    fn zero_size_or_empty_io_does_not_panic() {
        let b = Buses::default();
        handle(
            VmExit::IoOut {
                port: 0,
                size: 0,
                data: &[],
            },
            &b,
        );
        handle(
            VmExit::IoIn {
                port: 0,
                size: 0,
                data: &mut [],
            },
            &b,
        );
        handle(
            VmExit::IoOut {
                port: 0,
                size: 8,
                data: &[1, 2],
            },
            &b,
        );
    }
}
