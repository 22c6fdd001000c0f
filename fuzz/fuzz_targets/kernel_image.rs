//! libFuzzer wrapper of `kernel_image` (the body: `fuzz_targets::targets::kernel::fuzz_kernel_image`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::kernel::fuzz_kernel_image(data));
