//! Header and header-extension parsing of arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // The claimed file length varies with the input too.
    let file_len = data.len() as u64 * 3;
    let _ = block::qcow2::Header::parse(Path::new("fuzz.qcow2"), data, file_len);
});
