//! ferrovm's VMM: turns a [`config::VmConfig`] into a running KVM virtual machine and
//! serves its control plane.
//!
//! The path data takes: [`vmm::run_vmm`] opens KVM ([`kvm`]), checks and prepares the
//! payload ([`payload`]) and drives ([`drive`]), [`builder::build`]s a [`vm::Vm`] (memory,
//! devices in a [`device_manager::DeviceManager`], vCPUs), loads it and starts one thread
//! per vCPU ([`vcpu`]); the main thread runs the event loop of [`vmm::Vmm`]: console,
//! signals, the VM's stop requests and the API's requests ([`api_handler`]). Each exit
//! goes through the pure handler [`vcpu::exit::handle`] and is counted in [`stats`].

pub mod api_handler;
pub mod builder;
pub mod config;
pub mod console;
pub mod console_out;
pub mod control;
pub mod device_manager;
pub mod drive;
pub mod error;
pub mod footprint;
pub mod kernel_cache;
pub mod kvm;
pub mod limits;
pub mod logger;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod net_device;
pub mod options;
pub mod passt;
pub mod payload;
pub mod resources;
pub mod sandbox;
pub mod signals;
pub mod snapshot;
pub mod stats;
pub mod vcpu;
pub mod vm;
pub mod vmm;
pub mod vsock_balloon;

pub use config::{Payload, VmConfig};
pub use control::VmStop;
pub use error::{ConfigError, VmError};
pub use options::parse_size;
pub use vmm::{run, run_vmm, run_with, RunOptions, VmOutcome};
