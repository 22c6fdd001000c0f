//! block crate.
