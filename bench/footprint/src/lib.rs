//! The footprint benchmark's parts, shared by its binaries:
//!
//! - [`startup`]: exec to the guest's first instruction and power-off to exit on this
//!   host's `/dev/kvm`, ferrovm against the `bare-kvm-start` baseline;
//! - [`nested`]: in ONE testbed L1, RSS outside guest RAM of ferrovm, Firecracker and
//!   QEMU microvm with a Linux guest in userspace, and the 20-VM density run;
//! - [`smaps`]: where a process's resident memory is (guest RAM, text, heap, stacks,
//!   arenas ...), read by `footprint-probe` in L1;
//! - [`guest`] and [`stats`]: the guest programs and the medians and ratios printed.

pub mod guest;
pub mod nested;
pub mod smaps;
pub mod startup;
pub mod stats;
