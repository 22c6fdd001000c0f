//! libFuzzer wrapper of `blk_device` (the body: `fuzz_targets::targets::blk::fuzz_blk_device`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::blk::fuzz_blk_device(data));
