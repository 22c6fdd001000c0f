//! Whole-image metadata handling: open arbitrary bytes as a qcow2 file, read, map, check,
//! and write. Must never panic, hang or access out of bounds.
#![no_main]

use block::OpenOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("ferrovm-fuzz-{}.qcow2", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let opts = OpenOptions { writable: false, format: Some(block::Format::Qcow2), ..Default::default() };
    if let Ok(img) = block::open(&path, &opts) {
        let size = img.size();
        let mut buf = vec![0u8; 128 << 10];
        for off in [0, size / 3, size.saturating_sub(4096)] {
            if off < size {
                let n = (buf.len() as u64).min(size - off) as usize;
                let _ = img.read_at(&mut buf[..n], off);
                let _ = img.block_status(off, size - off);
            }
        }
    }
    let _ = block::qcow2::check::check(&path, block::qcow2::check::Repair::None);
    let opts = OpenOptions { writable: true, format: Some(block::Format::Qcow2), ..Default::default() };
    if let Ok(img) = block::open(&path, &opts) {
        let size = img.size();
        if size > 0 {
            let _ = img.write_at(&[0x42; 3000], size / 2 - (size / 2).min(3000).min(size / 2));
            let _ = img.flush();
        }
    }
    let _ = std::fs::remove_file(&path);
});
