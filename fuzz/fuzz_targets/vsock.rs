//! libFuzzer wrapper of `vsock` (the body: `fuzz_targets::targets::vsock::fuzz_vsock`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::vsock::fuzz_vsock(data));
