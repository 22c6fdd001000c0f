//! `qcow2_header`: the qcow2 header and header-extension parser on arbitrary bytes (with a
//! claimed file length that varies with the input).
//!
//! `qcow2_image`: whole-image metadata handling: arbitrary bytes opened as a qcow2 file,
//! read, mapped, checked and written.

use std::path::Path;

use block::OpenOptions;

/// The `qcow2_header` target.
pub fn fuzz_qcow2_header(data: &[u8]) {
    let file_len = data.len() as u64 * 3;
    let _ = block::qcow2::Header::parse(Path::new("fuzz.qcow2"), data, file_len);
}

/// The `qcow2_image` target.
pub fn fuzz_qcow2_image(data: &[u8]) {
    let path = std::env::temp_dir().join(format!(
        "ferrovm-fuzz-{}-{:?}.qcow2",
        std::process::id(),
        std::thread::current().id()
    ));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let opts = OpenOptions {
        writable: false,
        format: Some(block::Format::Qcow2),
        ..Default::default()
    };
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
    let opts = OpenOptions {
        writable: true,
        format: Some(block::Format::Qcow2),
        ..Default::default()
    };
    if let Ok(img) = block::open(&path, &opts) {
        let size = img.size();
        if size > 0 {
            let _ = img.write_at(&[0x42; 3000], size / 2 - (size / 2).min(3000));
            let _ = img.flush();
        }
    }
    let _ = std::fs::remove_file(&path);
}
