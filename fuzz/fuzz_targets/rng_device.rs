//! libFuzzer wrapper of `rng_device` (the body: `fuzz_targets::targets::rng::fuzz_rng_device`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::rng::fuzz_rng_device(data));
