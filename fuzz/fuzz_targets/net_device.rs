//! libFuzzer wrapper of `net_device` (the body: `fuzz_targets::targets::net::fuzz_net_device`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::net::fuzz_net_device(data));
