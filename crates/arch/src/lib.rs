//! arch crate.
