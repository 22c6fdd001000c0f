//! libFuzzer wrapper of `mmio_transport` (the body: `fuzz_targets::targets::mmio::fuzz_mmio_transport`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::mmio::fuzz_mmio_transport(data));
