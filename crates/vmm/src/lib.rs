//! vmm crate.
