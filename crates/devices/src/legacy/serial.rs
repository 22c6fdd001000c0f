//! 16550A UART (vm-superio) bridged to the host terminal.
//!
//! Guest output goes to a [`SerialOutput`] (stdout by default); host input is queued with
//! [`Serial::enqueue_input`]. The interrupt leaves through an [`EventFd`] that is, once the
//! VM has an irqchip, registered as an irqfd for the UART's GSI.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, DeviceAction};

/// The interrupt line of the UART: an eventfd.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Signals the host side when the guest has drained the input FIFO, so queued host input
/// can be delivered.
pub struct InputDrained(pub Arc<EventFd>);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // Best effort: a full eventfd counter still wakes the reader.
        let _ = self.0.write(1);
    }
}

/// Where guest output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// The UART's registers and receive FIFO, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Bytes received, not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

/// A 16550A UART as a bus device.
pub struct Serial {
    inner: vm_superio::Serial<IrqLine, InputDrained, SerialOutput>,
}

impl Serial {
    /// A UART writing to `out`, raising `irq`, and signalling `drained` when its input FIFO
    /// empties.
    pub fn new(irq: EventFd, drained: Arc<EventFd>, out: SerialOutput) -> Self {
        Serial {
            inner: vm_superio::Serial::with_events(IrqLine(irq), InputDrained(drained), out),
        }
    }

    /// The UART's state.
    pub fn state(&self) -> SerialSnapshot {
        let s = self.inner.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// A UART in `state` (see [`Serial::new`] for the other arguments); interrupts pending
    /// in that state are raised again. A receive FIFO longer than the UART's is refused.
    pub fn from_state(
        state: &SerialSnapshot,
        irq: EventFd,
        drained: Arc<EventFd>,
        out: SerialOutput,
    ) -> io::Result<Self> {
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let inner = vm_superio::Serial::from_state(&s, IrqLine(irq), InputDrained(drained), out)
            .map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("serial state: {e:?}"))
            })?;
        Ok(Serial { inner })
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.inner.fifo_capacity() == 0 {
            return 0;
        }
        match self.inner.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("serial input: {e}");
                0
            }
        }
    }

    /// Free space in the input FIFO.
    pub fn input_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }

    /// The interrupt eventfd (to register as an irqfd).
    pub fn irq_evt(&self) -> &EventFd {
        &self.inner.interrupt_evt().0
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // UART registers are 8 bits wide; wider reads see the register in the low byte.
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.inner.write(off, value) {
                tracing::debug!("serial write: {e}");
            }
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn uart() -> (Serial, Shared, Arc<EventFd>) {
        let out = Shared::default();
        let drained = Arc::new(EventFd::new(libc_nonblock()).unwrap());
        let irq = EventFd::new(libc_nonblock()).unwrap();
        (
            Serial::new(irq, drained.clone(), Box::new(out.clone())),
            out,
            drained,
        )
    }

    fn libc_nonblock() -> i32 {
        vmm_sys_util::eventfd::EFD_NONBLOCK
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const SCR: u64 = 7;

    #[test]
    fn transmit_reaches_output() {
        let (mut s, out, _) = uart();
        for b in b"hi\n" {
            s.write(THR, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        let mut lsr = [0u8];
        s.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "THR empty and transmitter idle");
    }

    #[test]
    fn scratch_and_divisor_latch_registers() {
        let (mut s, out, _) = uart();
        s.write(SCR, &[0x5a]);
        let mut v = [0u8; 2];
        s.read(SCR, &mut v);
        assert_eq!(
            v,
            [0x5a, 0],
            "wide reads carry the register in the low byte"
        );
        // DLAB set: offset 0 is the divisor latch, not the transmitter.
        s.write(LCR, &[0x80]);
        s.write(THR, &[0x01]);
        s.write(LCR, &[0x03]);
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn input_is_readable_and_raises_interrupt_and_drain_event() {
        let (mut s, _, drained) = uart();
        s.write(IER, &[0x01]); // received-data interrupt
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert_eq!(s.irq_evt().read().unwrap(), 1);
        let mut lsr = [0u8];
        s.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8];
        s.read(THR, &mut b);
        assert_eq!(b[0], b'a');
        s.read(THR, &mut b);
        assert_eq!(b[0], b'b');
        assert!(
            drained.read().unwrap() >= 1,
            "drain event after the FIFO empties"
        );
    }

    #[test]
    fn state_round_trips() {
        let (mut s, _, _) = uart();
        s.write(SCR, &[0x33]);
        s.write(IER, &[0x01]);
        s.enqueue_input(b"xy");
        let st = s.state();
        let out = Shared::default();
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let drained = Arc::new(EventFd::new(libc_nonblock()).unwrap());
        let mut r = Serial::from_state(&st, irq, drained, Box::new(out)).unwrap();
        assert_eq!(r.state(), st);
        assert!(
            r.irq_evt().read().unwrap() >= 1,
            "pending data raises the interrupt"
        );
        let mut b = [0u8];
        r.read(THR, &mut b);
        assert_eq!(b[0], b'x');
        let mut too_long = st;
        too_long.in_buffer = vec![0; 1000];
        assert!(Serial::from_state(
            &too_long,
            EventFd::new(libc_nonblock()).unwrap(),
            Arc::new(EventFd::new(libc_nonblock()).unwrap()),
            Box::new(Shared::default())
        )
        .is_err());
    }

    #[test]
    fn full_fifo_accepts_what_fits() {
        let (mut s, _, _) = uart();
        let cap = s.input_capacity();
        let big = vec![b'x'; cap + 10];
        assert_eq!(s.enqueue_input(&big), cap);
        assert_eq!(s.enqueue_input(b"y"), 0);
        // Out-of-range offsets are ignored, not a panic.
        s.write(u64::MAX, &[1]);
        let mut v = [0u8];
        s.read(u64::MAX, &mut v);
    }
}
