//! libFuzzer wrapper of `blk_request` (the body: `fuzz_targets::targets::blk::fuzz_blk_request`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::blk::fuzz_blk_request(data));
