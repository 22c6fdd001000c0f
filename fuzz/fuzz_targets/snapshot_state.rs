//! libFuzzer wrapper of `snapshot_state` (the body: `fuzz_targets::targets::snapshot::fuzz_snapshot_state`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::snapshot::fuzz_snapshot_state(data));
