//! i8042 PS/2 controller with an AT keyboard and no AUX (mouse) port: enough for Linux's
//! `i8042` and `atkbd` drivers to find a keyboard, so the VMM can press Ctrl+Alt+Del in the
//! guest ([`I8042::send_ctrl_alt_del`], Firecracker's `SendCtrlAltDel`), and the CPU reset
//! line (command 0xFE, how Linux and many boot loaders reboot).
//!
//! What the controller emulates:
//! - Port 0x60 (offset 0) reads the output buffer; writes go to the keyboard, or are the data
//!   byte of the previous controller command. Port 0x64 (offset 4) reads the status register
//!   and takes controller commands. Wider accesses are split into byte accesses, as an 8-bit
//!   ISA device sees them; offsets 1..=3 (ports 0x61..=0x63) read 0 and ignore writes.
//! - Controller commands: read/write of its 32 bytes of RAM (0x20..=0x3f, 0x60..=0x7f; byte 0
//!   is the configuration byte, CTR), self test (0xaa -> 0x55), keyboard interface test
//!   (0xab -> 0x00), keyboard interface disable/enable (0xad/0xae), output port read/write
//!   (0xd0/0xd1; writing bit 0 low resets the CPU), write keyboard/AUX output buffer
//!   (0xd2/0xd3), write to the AUX device (0xd4, discarded), and the output-line pulses
//!   0xf0..=0xff (bit 0 low, e.g. 0xfe, resets the CPU). Unknown commands are ignored.
//! - No AUX port: 0xa8 (enable AUX) leaves the CTR's AUX-disable bit set and 0xa9 (AUX
//!   interface test) answers 0x02 ("clock line stuck high"), so Linux's `i8042_check_aux`
//!   concludes there is no AUX port (its loop-back test 0xd3 still echoes, flagged as AUX data,
//!   like the real chip). Bytes flagged as AUX data never interrupt: there is no IRQ 12.
//! - The keyboard answers what `atkbd`/`libps2` send: GETID 0xf2 (ACK, 0xab 0x83), reset 0xff
//!   (ACK, 0xaa), set LEDs 0xed, scan code set 0xf0 (only set 2 is implemented: set queries
//!   answer 2, requests for another set are acknowledged and ignored, which `atkbd` handles),
//!   typematic 0xf3, enable 0xf4, default-disable 0xf5, set defaults 0xf6, echo 0xee, resend
//!   0xfe; every other byte is acknowledged. A command byte arriving where an argument is
//!   expected aborts the pending command and runs, as on real keyboards.
//!
//! Output: one bounded FIFO of [`OUTPUT_FIFO_LEN`] bytes stands for the controller's output
//! buffer and the keyboard's own buffer. The status register's OBF bit shows whether it holds
//! a byte; a data-port read pops one. Replies to controller commands go to the front (the
//! guest polls for them right after the command, under a lock that keeps its interrupt handler
//! out) and replace an unread earlier reply, as the one-byte output register would; keyboard
//! bytes go to the back and are dropped, and counted, when the FIFO is full. Linux's
//! `i8042_flush` reads at most 16 bytes before it calls the controller broken, and 16 is what
//! a hostile guest can make the VMM hold.
//!
//! Interrupts: Linux's `i8042_interrupt` reads one byte per interrupt, and the irqfd on GSI 1
//! is edge-triggered, so the keyboard interrupt is raised once per byte: when a byte reaches an
//! empty output buffer, again after a read that leaves another byte in front, and when the
//! guest turns the CTR's keyboard-interrupt bit on while a byte waits. Never for AUX data, and
//! never while that CTR bit is clear (the guest polls then).
//!
//! Scan codes: the keyboard speaks set 2 (`atkbd_select_set` asks for nothing else by
//! default: it returns 2 at once on a translated port and, on a raw one, unless `atkbd.set=3`
//! is given). Like real hardware, the controller translates set 2 into set 1 while the CTR's
//! translate bit (6) is set. The power-on CTR has that bit set, as PC firmware leaves it, so
//! Linux's `i8042_controller_init` keeps translation (it goes "direct" only when the firmware
//! left the bit clear, or with `i8042.direct=1`), registers the keyboard port as
//! `SERIO_8042_XL`, and `atkbd` decodes set 1 through its `atkbd_unxlate_table`: Ctrl+Alt+Del
//! arrives as 0x1d 0x38 0xe0 0x53, then 0xe0 0xd3 0xb8 0x9d. With `i8042.direct=1` the driver
//! clears the bit and receives the set 2 codes 0x14 0x11 0xe0 0x71, then 0xe0 0xf0 0x71 0xf0
//! 0x11 0xf0 0x14. Either way it decodes Left Ctrl, Left Alt and Delete pressed, then
//! released. Translating only when the bit is set (rather than always) keeps both driver modes
//! right; injecting set 1 unconditionally would be wrong for a direct-mode guest.

use std::collections::VecDeque;
use std::io;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, DeviceAction, StopReason};

/// Offset of the data port (0x60).
pub const DATA_OFFSET: u64 = 0;
/// Offset of the command/status port relative to the data port (0x64 - 0x60).
pub const COMMAND_OFFSET: u64 = 4;
/// "Pulse output line 0" with bit 0 low: CPU reset.
pub const CMD_RESET_CPU: u8 = 0xfe;
/// Bytes the output FIFO holds (controller replies and keyboard bytes together).
pub const OUTPUT_FIFO_LEN: usize = 16;

/// Status register bits (port 0x64 reads).
mod status {
    /// Output buffer full: port 0x60 has a byte.
    pub const OBF: u8 = 1 << 0;
    /// System flag: mirrors the CTR's system flag; set at power-on (POST passed).
    pub const SYS: u8 = 1 << 2;
    /// The last write went to the command port (so the next data byte is its parameter).
    pub const CMD: u8 = 1 << 3;
    /// Keyboard not inhibited by the key lock. Linux warns "Keylock active" when clear.
    pub const UNLOCKED: u8 = 1 << 4;
    /// The byte in the output buffer came from the AUX port.
    pub const AUX_OBF: u8 = 1 << 5;
}

/// Controller configuration byte (CTR, RAM byte 0) bits.
mod ctr {
    /// Interrupt (IRQ 1) when keyboard data reaches the output buffer.
    pub const KBD_INT: u8 = 1 << 0;
    /// System flag.
    pub const SYS: u8 = 1 << 2;
    /// Keyboard interface disabled (clock inhibited).
    pub const KBD_DIS: u8 = 1 << 4;
    /// AUX interface disabled.
    pub const AUX_DIS: u8 = 1 << 5;
    /// Translate keyboard set 2 scan codes into set 1.
    pub const XLATE: u8 = 1 << 6;
}

/// CTR at power-on: translation on (as PC firmware leaves it), system flag set (POST passed),
/// AUX disabled (there is none), keyboard interrupt off until the guest's driver enables it.
const CTR_POWER_ON: u8 = ctr::XLATE | ctr::SYS | ctr::AUX_DIS;

/// Output port bits.
const OUTP_RESET_HIGH: u8 = 1 << 0; // reset line not asserted (active low)
const OUTP_A20: u8 = 1 << 1;

/// Controller commands (port 0x64 writes).
const CMD_READ_RAM_FIRST: u8 = 0x20;
const CMD_READ_RAM_LAST: u8 = 0x3f;
const CMD_WRITE_RAM_FIRST: u8 = 0x60;
const CMD_WRITE_RAM_LAST: u8 = 0x7f;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
/// 0xf0..=0xff pulse the output lines whose bit (0..=3) is clear; line 0 is the CPU reset.
const CMD_PULSE_FIRST: u8 = 0xf0;

/// Controller replies.
const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_TEST_OK: u8 = 0x00;
/// AUX interface test result "clock line stuck high": nothing drives the AUX lines.
const AUX_TEST_CLOCK_STUCK_HIGH: u8 = 0x02;

/// Keyboard commands (port 0x60 writes).
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DEFAULT_DISABLE: u8 = 0xf5;
const KBD_SET_DEFAULTS: u8 = 0xf6;
const KBD_RESEND: u8 = 0xfe;
const KBD_RESET: u8 = 0xff;
/// Bytes from here up are commands; below are arguments (LED bits, set number, rate).
const KBD_FIRST_COMMAND: u8 = KBD_SET_LEDS;

/// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_ID: [u8; 2] = [0xab, 0x83]; // MF2 keyboard
/// The only scan code set this keyboard sends.
const KBD_SCANCODE_SET_2: u8 = 2;
/// Typematic byte after reset: 10.9 characters/s, 500 ms delay.
const KBD_TYPEMATIC_DEFAULT: u8 = 0x2b;

/// Set 2 prefixes.
const SET2_EXTENDED: u8 = 0xe0;
const SET2_BREAK: u8 = 0xf0;

/// Set 2 codes of Ctrl+Alt+Del: Left Ctrl, Left Alt, Delete (extended) pressed, then released
/// in reverse order.
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, // Left Ctrl
    0x11, // Left Alt
    SET2_EXTENDED,
    0x71, // Delete
    SET2_EXTENDED,
    SET2_BREAK,
    0x71,
    SET2_BREAK,
    0x11,
    SET2_BREAK,
    0x14,
];

/// The 8042's set 2 -> set 1 translation of the codes 0x00..=0x7f (the inverse of Linux's
/// `atkbd_unxlate_table`); 0x00, the set 2 overrun code, becomes the set 1 overrun 0xff.
#[rustfmt::skip]
const SET2_TO_SET1: [u8; 128] = [
    0xff, 0x43, 0x41, 0x3f, 0x3d, 0x3b, 0x3c, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3e, 0x0f, 0x29, 0x59,
    0x65, 0x38, 0x2a, 0x70, 0x1d, 0x10, 0x02, 0x5a, 0x66, 0x71, 0x2c, 0x1f, 0x1e, 0x11, 0x03, 0x5b,
    0x67, 0x2e, 0x2d, 0x20, 0x12, 0x05, 0x04, 0x5c, 0x68, 0x39, 0x2f, 0x21, 0x14, 0x13, 0x06, 0x5d,
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5e, 0x6a, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5f,
    0x6b, 0x33, 0x25, 0x17, 0x18, 0x0b, 0x0a, 0x60, 0x6c, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0c, 0x61,
    0x6d, 0x73, 0x28, 0x74, 0x1a, 0x0d, 0x62, 0x6e, 0x3a, 0x36, 0x1c, 0x1b, 0x75, 0x2b, 0x63, 0x76,
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7a, 0x0e, 0x7b, 0x7c, 0x4f, 0x7d, 0x4b, 0x47, 0x7e, 0x7f, 0x6f,
    0x52, 0x53, 0x50, 0x4c, 0x4d, 0x48, 0x01, 0x45, 0x57, 0x4e, 0x51, 0x4a, 0x37, 0x49, 0x46, 0x54,
];

/// Translates one set 2 byte (no break prefix) into set 1. Above 0x7f the chip passes bytes
/// through (prefixes, ACK, BAT, IDs) except the two keys coded there: F7 and Alt+SysRq.
fn set2_to_set1(code: u8) -> u8 {
    match code {
        0x83 => 0x41, // F7 (also turns the keyboard ID 0xab 0x83 into 0xab 0x41)
        0x84 => 0x54, // Alt+SysRq
        _ => SET2_TO_SET1.get(usize::from(code)).copied().unwrap_or(code),
    }
}

/// Errors injecting keys.
#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    /// The CTR's keyboard-interrupt bit is clear: no driver listens (yet).
    #[error("i8042: the guest has not enabled the keyboard interrupt (CTR {ctr:#04x})")]
    KeyboardInterruptDisabled {
        /// The controller configuration byte.
        ctr: u8,
    },
    /// The CTR's keyboard-interface-disable bit is set.
    #[error("i8042: the guest has disabled the keyboard interface (CTR {ctr:#04x})")]
    KeyboardInterfaceDisabled {
        /// The controller configuration byte.
        ctr: u8,
    },
    /// The guest has stopped the keyboard from scanning (command 0xf5) and not restarted it.
    #[error("i8042: the guest has not enabled keyboard scanning (command 0xf4)")]
    KeyboardScanningDisabled,
    /// The output FIFO cannot take the whole key sequence; nothing was queued.
    #[error("i8042: output FIFO has room for {free} bytes, the key sequence needs {needed}")]
    FifoFull {
        /// Bytes the sequence needs.
        needed: usize,
        /// Bytes free in the FIFO.
        free: usize,
    },
    /// A snapshot state that this controller cannot have been in.
    #[error("i8042: the saved state is invalid: {0}")]
    BadState(&'static str),
    /// Writing the keyboard interrupt eventfd failed (the bytes stay queued).
    #[error("i8042: raising the keyboard interrupt failed: {0}")]
    Interrupt(#[source] io::Error),
}

/// A byte waiting in the output FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutByte {
    value: u8,
    /// From the AUX port (status AUX_OBF, no keyboard interrupt).
    aux: bool,
    /// A reply to a controller command (a newer reply replaces it while unread).
    reply: bool,
}

/// Up to three bytes a keyboard sends in answer to one received byte.
#[derive(Debug, Default)]
struct Reply {
    bytes: [u8; 3],
    len: usize,
}

impl Reply {
    fn of(bytes: &[u8]) -> Self {
        let mut r = Reply::default();
        for &b in bytes {
            if let Some(slot) = r.bytes.get_mut(r.len) {
                *slot = b;
                r.len += 1;
            }
        }
        r
    }

    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

/// An MF2 keyboard speaking scan code set 2.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Keyboard {
    /// Scanning (sending key events); cleared by 0xf5, set by 0xf4, 0xf6, 0xff.
    scanning: bool,
    /// A command waiting for its argument byte.
    pending: Option<u8>,
    leds: u8,
    typematic: u8,
    /// The last byte sent, for the resend command.
    last_sent: u8,
}

impl Keyboard {
    fn new() -> Self {
        Keyboard {
            scanning: true,
            pending: None,
            leds: 0,
            typematic: KBD_TYPEMATIC_DEFAULT,
            last_sent: KBD_ACK,
        }
    }

    fn set_defaults(&mut self) {
        self.pending = None;
        self.leds = 0;
        self.typematic = KBD_TYPEMATIC_DEFAULT;
    }

    /// The keyboard's answer to a byte the guest sent it.
    fn receive(&mut self, byte: u8) -> Reply {
        let reply = match self.pending.take() {
            Some(cmd) if byte < KBD_FIRST_COMMAND => self.argument(cmd, byte),
            // No command pending, or a command instead of the argument: run it.
            _ => self.command(byte),
        };
        if let Some(&last) = reply.as_slice().last() {
            self.last_sent = last;
        }
        reply
    }

    fn argument(&mut self, cmd: u8, arg: u8) -> Reply {
        match cmd {
            KBD_SET_LEDS => {
                self.leds = arg & 0x07;
                Reply::of(&[KBD_ACK])
            }
            KBD_SCANCODE_SET => match arg {
                0 => Reply::of(&[KBD_ACK, KBD_SCANCODE_SET_2]),
                // Set 1 and 3 requests are acknowledged but the keyboard stays in set 2;
                // atkbd reads the set back and settles for 2.
                1..=3 => Reply::of(&[KBD_ACK]),
                _ => Reply::of(&[KBD_RESEND]),
            },
            KBD_SET_TYPEMATIC => {
                self.typematic = arg;
                Reply::of(&[KBD_ACK])
            }
            _ => Reply::of(&[KBD_ACK]),
        }
    }

    fn command(&mut self, cmd: u8) -> Reply {
        match cmd {
            KBD_SET_LEDS | KBD_SCANCODE_SET | KBD_SET_TYPEMATIC => {
                self.pending = Some(cmd);
                Reply::of(&[KBD_ACK])
            }
            KBD_ECHO => Reply::of(&[KBD_ECHO]),
            KBD_GET_ID => Reply::of(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            KBD_ENABLE => {
                self.scanning = true;
                Reply::of(&[KBD_ACK])
            }
            KBD_DEFAULT_DISABLE => {
                self.set_defaults();
                self.scanning = false;
                Reply::of(&[KBD_ACK])
            }
            KBD_SET_DEFAULTS => {
                self.set_defaults();
                self.scanning = true;
                Reply::of(&[KBD_ACK])
            }
            KBD_RESEND => Reply::of(&[self.last_sent]),
            KBD_RESET => {
                self.set_defaults();
                self.scanning = true;
                Reply::of(&[KBD_ACK, KBD_BAT_OK])
            }
            // Everything else (set 3 key types, vendor extensions, stray argument bytes).
            _ => Reply::of(&[KBD_ACK]),
        }
    }
}

/// The i8042 controller spanning ports 0x60..=0x64, with its keyboard.
#[derive(Debug)]
pub struct I8042 {
    irq: EventFd,
    /// Controller RAM; byte 0 is the CTR.
    ram: [u8; 32],
    /// Status system flag.
    sys_flag: bool,
    /// The last write went to the command port.
    last_write_command: bool,
    /// A controller command waiting for its data byte on port 0x60.
    pending: Option<u8>,
    output_port: u8,
    out: VecDeque<OutByte>,
    /// The last byte read from port 0x60 (what it reads again while the buffer is empty).
    last_read: u8,
    /// Translation saw a set 2 break prefix (0xf0): set bit 7 of the next byte.
    xlate_break: bool,
    kbd: Keyboard,
    dropped: u64,
}

/// The controller's state, for snapshots: everything but its interrupt line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    ram: Vec<u8>,
    sys_flag: bool,
    last_write_command: bool,
    pending: Option<u8>,
    output_port: u8,
    out: Vec<OutByte>,
    last_read: u8,
    xlate_break: bool,
    kbd: Keyboard,
    dropped: u64,
}

impl I8042 {
    /// The controller's state.
    pub fn state(&self) -> I8042State {
        I8042State {
            ram: self.ram.to_vec(),
            sys_flag: self.sys_flag,
            last_write_command: self.last_write_command,
            pending: self.pending,
            output_port: self.output_port,
            out: self.out.iter().copied().collect(),
            last_read: self.last_read,
            xlate_break: self.xlate_break,
            kbd: self.kbd.clone(),
            dropped: self.dropped,
        }
    }

    /// A controller in `state`, raising its interrupt through `kbd_irq` (raised now if a
    /// byte waits with the interrupt enabled, as before the snapshot). A state that could
    /// not come from this controller (a RAM or queue of the wrong size) is refused.
    pub fn from_state(kbd_irq: EventFd, state: &I8042State) -> Result<Self, I8042Error> {
        let ram: [u8; 32] = state
            .ram
            .as_slice()
            .try_into()
            .map_err(|_| I8042Error::BadState("controller RAM is not 32 bytes"))?;
        if state.out.len() > OUTPUT_FIFO_LEN {
            return Err(I8042Error::BadState(
                "output FIFO longer than the controller's",
            ));
        }
        let d = I8042 {
            irq: kbd_irq,
            ram,
            sys_flag: state.sys_flag,
            last_write_command: state.last_write_command,
            pending: state.pending,
            output_port: state.output_port,
            out: state.out.iter().copied().collect(),
            last_read: state.last_read,
            xlate_break: state.xlate_break,
            kbd: state.kbd.clone(),
            dropped: state.dropped,
        };
        if !d.out.is_empty() && d.ram[0] & ctr::KBD_INT != 0 {
            let _ = d.irq.write(1);
        }
        Ok(d)
    }

    /// A controller raising the keyboard interrupt through `kbd_irq`.
    pub fn new(kbd_irq: EventFd) -> Self {
        let mut ram = [0; 32];
        ram[0] = CTR_POWER_ON;
        I8042 {
            irq: kbd_irq,
            ram,
            sys_flag: CTR_POWER_ON & ctr::SYS != 0,
            last_write_command: false,
            pending: None,
            output_port: OUTP_RESET_HIGH | OUTP_A20,
            out: VecDeque::with_capacity(OUTPUT_FIFO_LEN),
            last_read: 0,
            xlate_break: false,
            kbd: Keyboard::new(),
            dropped: 0,
        }
    }

    /// The keyboard interrupt eventfd (to register as an irqfd on GSI 1).
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq
    }

    /// Keyboard bytes dropped because the output FIFO was full.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    /// Queues the scancodes of Ctrl+Alt+Del (press, then release) and interrupts the guest.
    ///
    /// Refuses, queueing nothing, while the guest is not ready to receive keys: the CTR's
    /// keyboard interrupt is off (no driver yet: the power-on state, and Linux's probe until
    /// `i8042_enable_kbd_port`), the keyboard interface is disabled, or the keyboard has been
    /// told to stop scanning (atkbd does so during its probe until it sends 0xf4). Keys sent
    /// then would be flushed or ignored by the driver. Also refuses when the FIFO lacks room
    /// for the whole sequence (8 bytes translated, 11 raw): a guest that does not read
    /// its keyboard cannot make the VMM queue without bound. An eventfd failure is reported
    /// after queueing.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        self.send_keys(&CTRL_ALT_DEL_SET2)
    }

    fn send_keys(&mut self, set2: &[u8]) -> Result<(), I8042Error> {
        let ctr = self.ctr();
        if ctr & ctr::KBD_INT == 0 {
            return Err(I8042Error::KeyboardInterruptDisabled { ctr });
        }
        if ctr & ctr::KBD_DIS != 0 {
            return Err(I8042Error::KeyboardInterfaceDisabled { ctr });
        }
        if !self.kbd.scanning {
            return Err(I8042Error::KeyboardScanningDisabled);
        }
        let translating = ctr & ctr::XLATE != 0;
        let needed = set2
            .iter()
            .filter(|&&b| !(translating && b == SET2_BREAK))
            .count();
        let free = OUTPUT_FIFO_LEN.saturating_sub(self.out.len());
        if needed > free {
            return Err(I8042Error::FifoFull { needed, free });
        }
        if let Some(&last) = set2.last() {
            self.kbd.last_sent = last;
        }
        if self.queue_keyboard(set2) {
            self.interrupt().map_err(I8042Error::Interrupt)?;
        }
        Ok(())
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn status(&self) -> u8 {
        let mut s = status::UNLOCKED;
        if let Some(front) = self.out.front() {
            s |= status::OBF;
            if front.aux {
                s |= status::AUX_OBF;
            }
        }
        if self.sys_flag {
            s |= status::SYS;
        }
        if self.last_write_command {
            s |= status::CMD;
        }
        s
    }

    /// Raises the keyboard interrupt if the byte in the output buffer calls for one.
    fn interrupt(&self) -> io::Result<()> {
        match self.out.front() {
            Some(front) if !front.aux && self.ctr() & ctr::KBD_INT != 0 => self.irq.write(1),
            _ => Ok(()),
        }
    }

    /// [`Self::interrupt`] from a guest access, where a failure can only be logged.
    fn interrupt_from_guest(&self) {
        if let Err(e) = self.interrupt() {
            tracing::warn!("i8042: raising the keyboard interrupt failed: {e}");
        }
    }

    /// Puts a controller reply in front of the output FIFO. Returns whether the output
    /// buffer was empty (so the reply needs an interrupt).
    fn queue_reply(&mut self, value: u8, aux: bool) -> bool {
        let byte = OutByte {
            value,
            aux,
            reply: true,
        };
        let was_empty = self.out.is_empty();
        match self.out.front_mut() {
            Some(front) if front.reply => *front = byte,
            _ => {
                if self.out.len() >= OUTPUT_FIFO_LEN && self.out.pop_back().is_some() {
                    self.dropped += 1;
                }
                self.out.push_front(byte);
            }
        }
        was_empty
    }

    fn reply(&mut self, value: u8, aux: bool) {
        if self.queue_reply(value, aux) {
            self.interrupt_from_guest();
        }
    }

    /// Translates one byte from the keyboard as the controller passes it on; `None` when it
    /// absorbs a break prefix.
    fn translate(&mut self, byte: u8) -> Option<u8> {
        if self.ctr() & ctr::XLATE == 0 {
            self.xlate_break = false;
            return Some(byte);
        }
        if byte == SET2_BREAK {
            self.xlate_break = true;
            return None;
        }
        let code = set2_to_set1(byte);
        Some(if std::mem::take(&mut self.xlate_break) {
            code | 0x80
        } else {
            code
        })
    }

    /// Queues bytes the keyboard sends, translated if the CTR says so, dropping what does not
    /// fit. Returns whether the output buffer went from empty to full.
    fn queue_keyboard(&mut self, bytes: &[u8]) -> bool {
        let was_empty = self.out.is_empty();
        for &b in bytes {
            let Some(value) = self.translate(b) else {
                continue;
            };
            if self.out.len() >= OUTPUT_FIFO_LEN {
                self.dropped += 1;
                continue;
            }
            self.out.push_back(OutByte {
                value,
                aux: false,
                reply: false,
            });
        }
        was_empty && !self.out.is_empty()
    }

    fn read_data(&mut self) -> u8 {
        if let Some(byte) = self.out.pop_front() {
            self.last_read = byte.value;
            // The next byte moves into the output buffer: one interrupt per byte.
            self.interrupt_from_guest();
        }
        self.last_read
    }

    fn write_data(&mut self, byte: u8) -> DeviceAction {
        self.last_write_command = false;
        if let Some(cmd) = self.pending.take() {
            return self.command_data(cmd, byte);
        }
        let reply = self.kbd.receive(byte);
        if self.queue_keyboard(reply.as_slice()) {
            self.interrupt_from_guest();
        }
        DeviceAction::None
    }

    fn write_command(&mut self, cmd: u8) -> DeviceAction {
        self.last_write_command = true;
        // A new command abandons one still waiting for its data byte.
        self.pending = None;
        match cmd {
            CMD_READ_RAM_FIRST..=CMD_READ_RAM_LAST => {
                let value = self.ram[usize::from(cmd & 0x1f)];
                self.reply(value, false);
            }
            CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_OUTPUT
            | CMD_WRITE_AUX_OUTPUT
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.ram[0] |= ctr::AUX_DIS,
            // No AUX port to enable: the disable bit stays set, which is how Linux's
            // i8042_toggle_aux tells that there is none.
            CMD_AUX_ENABLE => {}
            CMD_AUX_TEST => self.reply(AUX_TEST_CLOCK_STUCK_HIGH, false),
            CMD_SELF_TEST => {
                self.sys_flag = true;
                self.reply(SELF_TEST_OK, false);
            }
            CMD_KBD_TEST => self.reply(INTERFACE_TEST_OK, false),
            CMD_KBD_DISABLE => self.ram[0] |= ctr::KBD_DIS,
            CMD_KBD_ENABLE => self.ram[0] &= !ctr::KBD_DIS,
            CMD_READ_OUTPUT_PORT => self.reply(self.output_port, false),
            CMD_PULSE_FIRST..=u8::MAX => {
                if cmd & OUTP_RESET_HIGH == 0 {
                    return DeviceAction::Stop(StopReason::Reset);
                }
            }
            _ => tracing::debug!("i8042: ignoring controller command {cmd:#04x}"),
        }
        DeviceAction::None
    }

    fn command_data(&mut self, cmd: u8, byte: u8) -> DeviceAction {
        match cmd {
            CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST => {
                let index = usize::from(cmd & 0x1f);
                let old = self.ram[index];
                self.ram[index] = byte;
                if index == 0 {
                    self.ctr_written(old);
                }
            }
            CMD_WRITE_OUTPUT_PORT => {
                self.output_port = byte;
                if byte & OUTP_RESET_HIGH == 0 {
                    return DeviceAction::Stop(StopReason::Reset);
                }
            }
            CMD_WRITE_KBD_OUTPUT => self.reply(byte, false),
            CMD_WRITE_AUX_OUTPUT => self.reply(byte, true),
            CMD_WRITE_AUX => tracing::debug!("i8042: no AUX device for byte {byte:#04x}"),
            _ => {}
        }
        DeviceAction::None
    }

    fn ctr_written(&mut self, old: u8) {
        let new = self.ctr();
        self.sys_flag = new & ctr::SYS != 0;
        if (old ^ new) & ctr::XLATE != 0 {
            self.xlate_break = false;
        }
        // Turning the interrupt on while a byte waits is a rising edge on IRQ 1.
        if old & ctr::KBD_INT == 0 && new & ctr::KBD_INT != 0 {
            self.interrupt_from_guest();
        }
    }

    fn read_byte(&mut self, offset: u64) -> u8 {
        match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.status(),
            _ => 0,
        }
    }

    fn write_byte(&mut self, offset: u64, byte: u8) -> DeviceAction {
        match offset {
            DATA_OFFSET => self.write_data(byte),
            COMMAND_OFFSET => self.write_command(byte),
            _ => DeviceAction::None,
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // A wide access reaches an 8-bit device as consecutive byte accesses.
        for (port, byte) in (offset..).zip(data.iter_mut()) {
            *byte = self.read_byte(port);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let mut action = DeviceAction::None;
        for (port, &byte) in (offset..).zip(data) {
            let a = self.write_byte(port, byte);
            if action == DeviceAction::None {
                action = a;
            }
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> I8042 {
        I8042::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    /// Interrupts raised since the last call.
    fn irqs(d: &I8042) -> u64 {
        d.irq_evt().read().unwrap_or(0)
    }

    fn status(d: &mut I8042) -> u8 {
        let mut s = [0];
        d.read(COMMAND_OFFSET, &mut s);
        s[0]
    }

    fn command(d: &mut I8042, cmd: u8) -> DeviceAction {
        d.write(COMMAND_OFFSET, &[cmd])
    }

    fn data(d: &mut I8042, byte: u8) -> DeviceAction {
        d.write(DATA_OFFSET, &[byte])
    }

    /// Reads one byte the way i8042_wait_read + i8042_read_data do.
    fn read(d: &mut I8042) -> Option<u8> {
        if status(d) & status::OBF == 0 {
            return None;
        }
        let mut b = [0];
        d.read(DATA_OFFSET, &mut b);
        Some(b[0])
    }

    fn read_all(d: &mut I8042) -> Vec<u8> {
        std::iter::from_fn(|| read(d)).collect()
    }

    /// i8042_command: command, parameters, then `replies` bytes read back.
    fn controller(d: &mut I8042, cmd: u8, params: &[u8], replies: usize) -> Vec<u8> {
        assert_eq!(status(d) & 0x02, 0, "IBF never set");
        assert_eq!(command(d, cmd), DeviceAction::None);
        for &p in params {
            assert_eq!(data(d, p), DeviceAction::None);
        }
        (0..replies).map_while(|_| read(d)).collect()
    }

    /// A libps2 command sent with interrupts on: each received byte must come with one
    /// interrupt, and the interrupt handler reads it.
    fn kbd_command(d: &mut I8042, bytes: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        for &b in bytes {
            data(d, b);
            while status(d) & status::OBF != 0 {
                assert_eq!(irqs(d), 1, "one interrupt per byte");
                got.extend(read(d));
            }
        }
        assert_eq!(irqs(d), 0);
        got
    }

    /// What Linux does at boot up to a working keyboard (i8042 with PNP: no AUX probe;
    /// the AUX probe of i8042.nopnp is tested on its own).
    fn linux_probe(d: &mut I8042) {
        // i8042_controller_check: flush finds nothing.
        assert_eq!(read_all(d), Vec::<u8>::new());
        // i8042_platform_init: A20 through the output port, then the null command.
        assert!(controller(d, CMD_WRITE_OUTPUT_PORT, &[0xdf], 0).is_empty());
        assert_eq!(command(d, 0xff), DeviceAction::None);
        // i8042_controller_init: a stable CTR read, keylock check, CTR write, flush.
        let ctr0 = controller(d, 0x20, &[], 1);
        let ctr1 = controller(d, 0x20, &[], 1);
        assert_eq!(ctr0, ctr1);
        let ctr = ctr0[0];
        assert_eq!(ctr, CTR_POWER_ON);
        assert_ne!(ctr & ctr::XLATE, 0, "translated: Linux keeps SERIO_8042_XL");
        assert_ne!(status(d) & status::UNLOCKED, 0, "no keylock warning");
        let ctr = (ctr | ctr::KBD_DIS) & !ctr::KBD_INT;
        controller(d, 0x60, &[ctr], 0);
        assert_eq!(read_all(d), Vec::<u8>::new());
        // i8042_reset=1 would self-test.
        assert_eq!(controller(d, CMD_SELF_TEST, &[], 1), vec![SELF_TEST_OK]);
        // i8042_setup_kbd -> i8042_enable_kbd_port.
        let ctr = (ctr & !ctr::KBD_DIS) | ctr::KBD_INT;
        controller(d, 0x60, &[ctr], 0);
        assert_eq!(irqs(d), 0, "nothing to read, no interrupt");
        // atkbd_probe: GETID (translated: 0xab 0x83 reads 0xab 0x41), deactivate.
        assert_eq!(kbd_command(d, &[KBD_GET_ID]), vec![KBD_ACK, 0xab, 0x41]);
        assert_eq!(kbd_command(d, &[KBD_DEFAULT_DISABLE]), vec![KBD_ACK]);
        // atkbd_select_set returns 2 at once; atkbd_reset_state: LEDs off, fastest repeat.
        assert_eq!(kbd_command(d, &[KBD_SET_LEDS, 0]), vec![KBD_ACK, KBD_ACK]);
        assert_eq!(
            kbd_command(d, &[KBD_SET_TYPEMATIC, 0]),
            vec![KBD_ACK, KBD_ACK]
        );
        // atkbd_activate.
        assert_eq!(kbd_command(d, &[KBD_ENABLE]), vec![KBD_ACK]);
    }

    #[test]
    fn power_on_status_and_ctr() {
        let mut d = device();
        assert_eq!(status(&mut d), status::UNLOCKED | status::SYS);
        assert_eq!(controller(&mut d, 0x20, &[], 1), vec![CTR_POWER_ON]);
        assert_ne!(status(&mut d) & status::CMD, 0, "last write was a command");
        assert_eq!(controller(&mut d, CMD_KBD_TEST, &[], 1), vec![0x00]);
        assert_eq!(irqs(&d), 0, "keyboard interrupt off at power-on");
    }

    #[test]
    fn linux_probe_sequence_finds_the_keyboard() {
        let mut d = device();
        linux_probe(&mut d);
        assert_eq!(d.kbd.leds, 0);
        assert!(d.kbd.scanning);
        d.send_ctrl_alt_del().unwrap();
    }

    #[test]
    fn aux_probe_concludes_there_is_no_aux_port() {
        // i8042_check_aux, as run with i8042.nopnp.
        let mut d = device();
        // Loop-back: the byte comes back flagged as AUX data, without an interrupt.
        command(&mut d, 0x60);
        data(&mut d, CTR_POWER_ON | ctr::KBD_INT);
        command(&mut d, CMD_WRITE_AUX_OUTPUT);
        data(&mut d, 0x5a);
        assert_ne!(status(&mut d) & status::AUX_OBF, 0);
        assert_eq!(read(&mut d), Some(0x5a));
        assert_eq!(irqs(&d), 0, "no IRQ 12 line, no IRQ 1 for AUX data");
        assert_eq!(status(&mut d) & (status::OBF | status::AUX_OBF), 0);
        // Had the loop failed, the interface test: nonzero, not 0xfa/0xff: no AUX.
        let t = controller(&mut d, CMD_AUX_TEST, &[], 1)[0];
        assert!(t != 0 && t != 0xfa && t != 0xff);
        // i8042_toggle_aux(false) succeeds, i8042_toggle_aux(true) cannot clear AUXDIS.
        controller(&mut d, CMD_AUX_DISABLE, &[], 0);
        assert_ne!(controller(&mut d, 0x20, &[], 1)[0] & ctr::AUX_DIS, 0);
        controller(&mut d, CMD_AUX_ENABLE, &[], 0);
        for _ in 0..100 {
            assert_ne!(controller(&mut d, 0x20, &[], 1)[0] & ctr::AUX_DIS, 0);
        }
        // Writes to the absent device vanish; the keyboard still works.
        controller(&mut d, CMD_WRITE_AUX, &[0xf2], 0);
        assert_eq!(read(&mut d), None);
        irqs(&d);
        assert_eq!(kbd_command(&mut d, &[KBD_ECHO]), vec![KBD_ECHO]);
    }

    #[test]
    fn keyboard_answers_like_an_at_keyboard() {
        let mut d = device();
        controller(&mut d, 0x60, &[ctr::SYS], 0); // raw set 2, interrupts off
        let kbd = |d: &mut I8042, bytes: &[u8]| {
            for &b in bytes {
                data(d, b);
            }
            read_all(d)
        };
        assert_eq!(kbd(&mut d, &[KBD_GET_ID]), vec![KBD_ACK, 0xab, 0x83]);
        assert_eq!(kbd(&mut d, &[KBD_RESET]), vec![KBD_ACK, KBD_BAT_OK]);
        assert_eq!(kbd(&mut d, &[KBD_RESEND]), vec![KBD_BAT_OK]);
        assert_eq!(
            kbd(&mut d, &[KBD_SCANCODE_SET, 0]),
            vec![KBD_ACK, KBD_ACK, 2]
        );
        assert_eq!(kbd(&mut d, &[KBD_SCANCODE_SET, 3]), vec![KBD_ACK, KBD_ACK]);
        assert_eq!(
            kbd(&mut d, &[KBD_SCANCODE_SET, 0]),
            vec![KBD_ACK, KBD_ACK, 2],
            "stays in set 2"
        );
        assert_eq!(
            kbd(&mut d, &[KBD_SCANCODE_SET, 9]),
            vec![KBD_ACK, KBD_RESEND]
        );
        assert_eq!(kbd(&mut d, &[KBD_SET_LEDS, 0x07]), vec![KBD_ACK, KBD_ACK]);
        // A command where the argument was due runs as a command.
        assert_eq!(
            kbd(&mut d, &[KBD_SET_LEDS, KBD_GET_ID]),
            vec![KBD_ACK, KBD_ACK, 0xab, 0x83]
        );
        assert_eq!(kbd(&mut d, &[KBD_ECHO]), vec![KBD_ECHO]);
        assert_eq!(
            kbd(&mut d, &[0xe8, 0x12]),
            vec![KBD_ACK, KBD_ACK],
            "unknown: ACK"
        );
        assert_eq!(kbd(&mut d, &[KBD_DEFAULT_DISABLE]), vec![KBD_ACK]);
        assert!(!d.kbd.scanning);
        assert_eq!(d.kbd.leds, 0, "defaults restored");
        assert_eq!(kbd(&mut d, &[KBD_SET_DEFAULTS]), vec![KBD_ACK]);
        assert!(d.kbd.scanning);
    }

    #[test]
    fn interrupts_raised_per_byte_only_when_enabled() {
        let mut d = device();
        // Interrupt off: the guest polls, nothing is raised.
        data(&mut d, KBD_GET_ID);
        assert_eq!(irqs(&d), 0);
        assert_eq!(read_all(&mut d), vec![KBD_ACK, 0xab, 0x41]);
        assert_eq!(irqs(&d), 0);
        // Turning the interrupt on with a byte waiting raises it once.
        data(&mut d, KBD_ECHO);
        controller(&mut d, 0x60, &[CTR_POWER_ON | ctr::KBD_INT], 0);
        assert_eq!(irqs(&d), 1);
        // Writing the CTR again with the bit already on is no new edge.
        controller(&mut d, 0x60, &[CTR_POWER_ON | ctr::KBD_INT], 0);
        assert_eq!(irqs(&d), 0);
        assert_eq!(read(&mut d), Some(KBD_ECHO));
        assert_eq!(irqs(&d), 0, "nothing left, no interrupt");
        // Three bytes: one interrupt now, one after each read that leaves a byte.
        data(&mut d, KBD_GET_ID);
        assert_eq!(irqs(&d), 1);
        assert_eq!(read(&mut d), Some(KBD_ACK));
        assert_eq!(irqs(&d), 1);
        assert_eq!(read(&mut d), Some(0xab));
        assert_eq!(irqs(&d), 1);
        assert_eq!(read(&mut d), Some(0x41));
        assert_eq!(irqs(&d), 0);
        // A reply to a controller command counts as keyboard-side data.
        controller(&mut d, 0x20, &[], 0);
        assert_eq!(irqs(&d), 1);
        assert_eq!(read(&mut d), Some(CTR_POWER_ON | ctr::KBD_INT));
        // Reading an empty buffer raises nothing and repeats the last byte.
        let mut b = [0];
        d.read(DATA_OFFSET, &mut b);
        assert_eq!((b[0], irqs(&d)), (CTR_POWER_ON | ctr::KBD_INT, 0));
    }

    #[test]
    fn controller_reply_overtakes_queued_keyboard_bytes() {
        let mut d = device();
        data(&mut d, KBD_GET_ID);
        assert_eq!(controller(&mut d, 0x20, &[], 1), vec![CTR_POWER_ON]);
        // Two replies without a read: the second replaces the first.
        command(&mut d, CMD_SELF_TEST);
        command(&mut d, CMD_KBD_TEST);
        assert_eq!(read_all(&mut d), vec![0x00, KBD_ACK, 0xab, 0x41]);
    }

    #[test]
    fn ctrl_alt_del_translated_one_interrupt_per_byte() {
        let mut d = device();
        linux_probe(&mut d);
        d.send_ctrl_alt_del().unwrap();
        let mut got = Vec::new();
        loop {
            let pending = irqs(&d);
            let Some(b) = read(&mut d) else {
                assert_eq!(pending, 0);
                break;
            };
            assert_eq!(pending, 1, "byte {} came with one interrupt", got.len());
            got.push(b);
        }
        // Set 1: Ctrl, Alt, E0 Delete pressed; E0 Delete, Alt, Ctrl released.
        assert_eq!(got, vec![0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
    }

    #[test]
    fn ctrl_alt_del_raw_set_2_with_i8042_direct() {
        let mut d = device();
        // i8042.direct=1: the driver clears XLATE and enables the keyboard interrupt.
        let ctr = (CTR_POWER_ON & !ctr::XLATE) | ctr::KBD_INT;
        controller(&mut d, 0x60, &[ctr], 0);
        assert_eq!(
            kbd_command(&mut d, &[KBD_GET_ID]),
            vec![KBD_ACK, 0xab, 0x83]
        );
        d.send_ctrl_alt_del().unwrap();
        let mut got = Vec::new();
        while let Some(b) = read(&mut d) {
            got.push(b);
        }
        assert_eq!(got, CTRL_ALT_DEL_SET2.to_vec());
        assert_eq!(
            got,
            vec![0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]
        );
    }

    #[test]
    fn ctrl_alt_del_refused_until_the_guest_is_ready() {
        let mut d = device();
        assert!(matches!(
            d.send_ctrl_alt_del(),
            Err(I8042Error::KeyboardInterruptDisabled { ctr: CTR_POWER_ON })
        ));
        controller(
            &mut d,
            0x60,
            &[CTR_POWER_ON | ctr::KBD_INT | ctr::KBD_DIS],
            0,
        );
        assert!(matches!(
            d.send_ctrl_alt_del(),
            Err(I8042Error::KeyboardInterfaceDisabled { .. })
        ));
        controller(&mut d, CMD_KBD_ENABLE, &[], 0);
        kbd_command(&mut d, &[KBD_DEFAULT_DISABLE]);
        let e = d.send_ctrl_alt_del().unwrap_err();
        assert!(matches!(e, I8042Error::KeyboardScanningDisabled));
        assert!(e.to_string().contains("0xf4"));
        kbd_command(&mut d, &[KBD_ENABLE]);
        assert_eq!(read(&mut d), None, "nothing queued by the refusals");
        // Two sequences fit (8 bytes each); a third finds the FIFO full and queues nothing.
        d.send_ctrl_alt_del().unwrap();
        d.send_ctrl_alt_del().unwrap();
        let e = d.send_ctrl_alt_del().unwrap_err();
        assert!(
            matches!(e, I8042Error::FifoFull { needed: 8, free: 0 }),
            "{e}"
        );
        assert_eq!(read_all(&mut d).len(), 16);
        assert_eq!(d.dropped_bytes(), 0);
    }

    #[test]
    fn hostile_guest_cannot_grow_the_fifo() {
        let mut d = device();
        controller(&mut d, 0x60, &[CTR_POWER_ON | ctr::KBD_INT], 0);
        for _ in 0..10_000 {
            data(&mut d, KBD_GET_ID);
            command(&mut d, 0x20);
            data(&mut d, KBD_RESET);
            command(&mut d, CMD_WRITE_AUX_OUTPUT);
            data(&mut d, 0x00);
            assert!(d.out.len() <= OUTPUT_FIFO_LEN);
        }
        assert!(d.dropped_bytes() > 10_000);
        // Only the first byte reaching the empty buffer interrupted.
        assert_eq!(irqs(&d), 1);
        // The controller still answers first, and the FIFO drains in 16 reads.
        assert_eq!(
            controller(&mut d, 0x20, &[], 1),
            vec![CTR_POWER_ON | ctr::KBD_INT]
        );
        assert!(read_all(&mut d).len() <= OUTPUT_FIFO_LEN);
        assert!(d.send_ctrl_alt_del().is_ok());
    }

    #[test]
    fn random_bytes_of_any_width_never_panic_or_grow() {
        let mut d = device();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50_000 {
            let r = next();
            let offset = r % 6;
            let len = ((r >> 8) % 5) as usize;
            let bytes = (r >> 16).to_le_bytes();
            let slice = &bytes[..len];
            if (r >> 60) & 1 == 0 {
                let mut buf = [0u8; 4];
                d.read(offset, &mut buf[..len]);
            } else {
                let _ = d.write(offset, slice);
            }
            assert!(d.out.len() <= OUTPUT_FIFO_LEN);
        }
    }

    #[test]
    fn reset_command_still_stops_the_vm() {
        let mut d = device();
        assert_eq!(
            d.write(COMMAND_OFFSET, &[CMD_RESET_CPU]),
            DeviceAction::Stop(StopReason::Reset)
        );
        // Any pulse with line 0 low resets; 0xff pulses nothing.
        assert_eq!(command(&mut d, 0xf0), DeviceAction::Stop(StopReason::Reset));
        assert_eq!(command(&mut d, 0xff), DeviceAction::None);
        assert_eq!(command(&mut d, 0xfd), DeviceAction::None);
        // 0xfe on the data port is the keyboard's resend, not a reset.
        assert_eq!(d.write(DATA_OFFSET, &[0xfe]), DeviceAction::None);
        // The output port's reset line: Linux's A20 write 0xdf keeps running; bit 0 low resets.
        assert_eq!(
            d.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]),
            DeviceAction::None
        );
        assert_eq!(d.write(DATA_OFFSET, &[0xdf]), DeviceAction::None);
        assert_eq!(controller(&mut d, CMD_READ_OUTPUT_PORT, &[], 1), vec![0xdf]);
        assert_eq!(command(&mut d, CMD_WRITE_OUTPUT_PORT), DeviceAction::None);
        assert_eq!(data(&mut d, 0xde), DeviceAction::Stop(StopReason::Reset));
        // A wide write whose low byte is the reset command resets too.
        assert_eq!(
            d.write(COMMAND_OFFSET - 1, &[0, CMD_RESET_CPU]),
            DeviceAction::Stop(StopReason::Reset)
        );
    }

    #[test]
    fn odd_widths_and_offsets() {
        let mut d = device();
        for offset in 1..COMMAND_OFFSET {
            let mut b = [0xff];
            d.read(offset, &mut b);
            assert_eq!(b[0], 0);
            assert_eq!(d.write(offset, &[0xfe]), DeviceAction::None);
        }
        d.read(0, &mut []);
        assert_eq!(d.write(COMMAND_OFFSET, &[]), DeviceAction::None);
        assert_eq!(d.write(COMMAND_OFFSET + 100, &[0xfe]), DeviceAction::None);
        // A 16-bit read at 0x63 is 0x63 (0) then the status register.
        let mut w = [0xff; 2];
        d.read(COMMAND_OFFSET - 1, &mut w);
        assert_eq!(w, [0, status::UNLOCKED | status::SYS]);
        // A 32-bit write at 0x60: the low byte goes to the keyboard.
        assert_eq!(
            d.write(DATA_OFFSET, &[KBD_ECHO, 1, 2, 3]),
            DeviceAction::None
        );
        assert_eq!(read_all(&mut d), vec![KBD_ECHO]);
    }

    #[test]
    fn translation_matches_set_1() {
        // (set 2, set 1): Esc, A, Left Ctrl, Left Alt, keypad ., Z, F7, F12, Enter.
        for (s2, s1) in [
            (0x76, 0x01),
            (0x1c, 0x1e),
            (0x14, 0x1d),
            (0x11, 0x38),
            (0x71, 0x53),
            (0x1a, 0x2c),
            (0x83, 0x41),
            (0x07, 0x58),
            (0x5a, 0x1c),
        ] {
            assert_eq!(set2_to_set1(s2), s1, "{s2:#04x}");
        }
        // Prefixes and protocol bytes pass through.
        for b in [0xe0, 0xe1, KBD_ACK, KBD_BAT_OK, KBD_ECHO, 0xab, KBD_RESEND] {
            assert_eq!(set2_to_set1(b), b);
        }
        // Distinct keys stay distinct.
        let mut seen = [false; 256];
        for code in 0..0x80u8 {
            let s1 = usize::from(set2_to_set1(code));
            assert!(!seen[s1], "{code:#04x}");
            seen[s1] = true;
        }
    }
}
