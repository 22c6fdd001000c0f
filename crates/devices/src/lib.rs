//! devices crate.
