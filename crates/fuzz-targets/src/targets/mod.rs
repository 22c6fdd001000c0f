//! One module per target (or per group of related targets).

pub mod api;
pub mod balloon;
pub mod blk;
pub mod kernel;
pub mod mmio;
pub mod net;
pub mod qcow2;
pub mod rng;
pub mod snapshot;
pub mod vsock;
