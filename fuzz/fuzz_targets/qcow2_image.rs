//! libFuzzer wrapper of `qcow2_image` (the body: `fuzz_targets::targets::qcow2::fuzz_qcow2_image`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::qcow2::fuzz_qcow2_image(data));
