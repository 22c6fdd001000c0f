//! ferrovm's VMM: turns a [`config::VmConfig`] into a running KVM virtual machine.
//!
//! The path data takes: [`vm::run`] opens KVM ([`kvm`]), creates guest memory
//! ([`memory`]), attaches devices to the buses, loads the guest, configures and spawns one
//! thread per vCPU ([`vcpu`]), and runs the event loop on the calling thread until
//! [`control::Control`] says the VM ends. Each exit goes through the pure handler
//! [`vcpu::exit::handle`] and is counted in [`stats`].

pub mod config;
pub mod console;
pub mod console_out;
pub mod control;
pub mod drive;
pub mod kernel_cache;
pub mod kvm;
pub mod memory;
pub mod signals;
pub mod stats;
pub mod vcpu;
pub mod virtio_devices;
pub mod vm;

pub use config::{parse_size, Payload, VmConfig};
pub use control::VmStop;
pub use vm::{run, run_with, VmError, VmOutcome};
