//! `snapshot_state`: the snapshot file decoder (`vmm::snapshot::format::decode` into a
//! `MicrovmState`), on raw bytes (the envelope checks) and on fuzzed payloads sealed in a
//! valid envelope (so that postcard's decoding of every state field is reached), then
//! what restore does with a decoded state before it touches KVM: the memory layout, the
//! configuration it rebuilds, the saved transports restored into fresh ones.
//!
//! `snapshot_memfile`: the memory file reader: a fuzzed layout of (guest address, size)
//! regions mapped from a fuzzed sparse file (`vmm::memory::map_file`, as a restore does)
//! and read back, and a diff file merged onto a full one (`memfile::merge`).

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm::snapshot::format::{self, ARCH_X86_64, CRC_LEN, HEADER_LEN, MAGIC, VERSION};
use vmm::snapshot::memfile;
use vmm::snapshot::state::MicrovmState;

use crate::Input;

/// `payload` in a valid snapshot envelope (header, CRC-64/XZ).
pub fn seal(payload: &[u8]) -> Vec<u8> {
    const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&ARCH_X86_64.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = CRC.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn consume(state: &MicrovmState) {
    // restore: the layout must cover the configured memory (checked without overflow
    // here; see the report for restore's own sum).
    let want = state
        .memory
        .iter()
        .try_fold(0u64, |a, &(_, s)| a.checked_add(s));
    let _ = want == Some(state.config.mem_size);
    let _ = state
        .config
        .to_config(None, &[("eth0".into(), "tap9".into())]);
    for v in &state.virtio {
        let _ = v.name.len();
        let _ = v.transport.queues.len();
    }
}

/// The `snapshot_state` target.
pub fn fuzz_snapshot_state(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let rest = inp.rest();
    let file = if mode & 1 == 0 {
        seal(rest)
    } else {
        rest.to_vec()
    };
    match format::decode::<MicrovmState>(&file) {
        Ok(state) => consume(&state),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if mode & 2 != 0 {
        // The transport state alone, as the devices' restore takes it.
        let _ = format::decode::<devices::virtio::mmio::TransportState>(&file);
    }
}

fn tmp(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "ferrovm-fuzz-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Largest memory file the target makes.
const MAX_FILE: u64 = 1 << 20;

/// Writes a sparse file of `size` bytes with fuzzed data extents.
fn sparse_file(path: &PathBuf, size: u64, inp: &mut Input<'_>) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("temporary memory file");
    f.set_len(size).expect("file size");
    for _ in 0..usize::from(inp.u8() % 8) {
        let off = u64::from(inp.u32()) % size.max(1);
        let b = inp.short_bytes();
        let n = (b.len() as u64).min(size - off) as usize;
        let _ = f.write_all_at(&b[..n], off);
    }
    f
}

/// The `snapshot_memfile` target.
pub fn fuzz_snapshot_memfile(data: &[u8]) {
    let mut inp = Input::new(data);
    let n = usize::from(inp.u8() % 6);
    let mut layout = Vec::with_capacity(n);
    for _ in 0..n {
        let b = inp.u8();
        let start = if b & 1 != 0 {
            inp.u64()
        } else {
            u64::from(inp.u16()) << 12
        };
        let size = if b & 2 != 0 {
            inp.u64()
        } else {
            u64::from(inp.u8()) << 12
        };
        layout.push((start, size));
    }
    // restore refuses a file whose size is not the layout's total.
    let total = layout
        .iter()
        .try_fold(0u64, |a: u64, &(_, s)| a.checked_add(s));
    let mem_path = tmp("mem");
    if let Some(total) = total.filter(|&t| t <= MAX_FILE) {
        let f = sparse_file(&mem_path, total, &mut inp);
        if let Ok(mem) = vmm::memory::map_file(&f, &layout) {
            let mut buf = vec![0u8; 4096];
            for r in mem.iter() {
                let (start, len) = (r.start_addr(), r.len());
                let mut off = 0;
                while off < len {
                    let k = (len - off).min(buf.len() as u64) as usize;
                    mem.read_slice(&mut buf[..k], start.unchecked_add(off))
                        .expect("a mapped region reads");
                    off += k as u64;
                }
            }
            // A write to the private mapping must not reach the file.
            if let Some(r) = mem.iter().next() {
                let _ = mem.write_slice(&[0xee; 16], r.start_addr());
            }
            let _ = mem.read_slice(&mut buf[..1], GuestAddress(u64::MAX));
        }
        let _ = std::fs::remove_file(&mem_path);
    }
    // A diff onto a base (sizes equal or not).
    let (bs, ds) = (
        u64::from(inp.u16()) % (MAX_FILE / 16),
        u64::from(inp.u16()) % (MAX_FILE / 16),
    );
    let ds = if inp.u8() & 1 != 0 { bs } else { ds };
    let (base, diff) = (tmp("base"), tmp("diff"));
    let _b = sparse_file(&base, bs, &mut inp);
    let _d = sparse_file(&diff, ds, &mut inp);
    let _ = memfile::merge(&base, &diff);
    let _ = std::fs::remove_file(&base);
    let _ = std::fs::remove_file(&diff);
}
