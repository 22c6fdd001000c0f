//! libFuzzer wrapper of `api_route` (the body: `fuzz_targets::targets::api::fuzz_api_route`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::api::fuzz_api_route(data));
