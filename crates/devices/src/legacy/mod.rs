//! Legacy PC devices: 16550A UART, i8042 PS/2 controller with an AT keyboard (the reset line
//! and Ctrl+Alt+Del injection; no mouse), debug-exit port, POST port.
//!
//! Their port numbers live in one place, [`ports`].

pub mod acpi_pm;
pub mod debug_exit;
pub mod i8042;
pub mod panic_watch;
pub mod post;
pub mod serial;

pub use acpi_pm::AcpiPm;
pub use debug_exit::DebugExit;
pub use i8042::{I8042Error, I8042};
pub use panic_watch::PanicWatch;
pub use post::PostCode;
pub use serial::{Serial, SerialOutput};

/// Port-I/O addresses and sizes of the legacy devices.
pub mod ports {
    /// COM1 base port (16550A UART).
    pub const COM1: u16 = 0x3f8;
    /// Number of UART registers.
    pub const COM_LEN: u16 = 8;
    /// Legacy IRQ line of COM1 (GSI 4 on the in-kernel irqchip).
    pub const COM1_IRQ: u32 = 4;
    /// Legacy IRQ line of the i8042 keyboard (GSI 1, edge-triggered).
    pub const I8042_IRQ: u32 = 1;
    /// i8042 data port.
    pub const I8042_DATA: u16 = 0x60;
    /// i8042 command/status port.
    pub const I8042_COMMAND: u16 = 0x64;
    /// POST diagnostic port; Linux also writes it as an I/O delay.
    pub const POST: u16 = 0x80;
    /// Debug-exit port: the value written (low byte) becomes ferrovm's exit status.
    pub const DEBUG_EXIT: u16 = 0xf4;
}
