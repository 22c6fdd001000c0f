//! libFuzzer wrapper of `snapshot_memfile` (the body: `fuzz_targets::targets::snapshot::fuzz_snapshot_memfile`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_targets::targets::snapshot::fuzz_snapshot_memfile(data));
