//! libFuzzer wrapper of `balloon_device` (the body: `fuzz_targets::targets::balloon::fuzz_balloon_device`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::balloon::fuzz_balloon_device(data));
