//! Corrupt and hostile images: every case must give a clear error, never a panic, an
//! out-of-bounds access or a hang. No QEMU tools needed.

mod common;

use block::qcow2::{self, CreateOptions};
use block::{BlockDev, Error, OpenOptions};
use common::{writable, Rng, TempDir};
use std::path::{Path, PathBuf};

const CS: u64 = 4096;

/// A small valid image with data in a few clusters and one compressed cluster.
/// Layout (4 KiB clusters, 1 MiB): header 0, L1 0x1000, reftable 0x2000, refblock 0x3000.
fn make(dir: &TempDir, name: &str) -> PathBuf {
    let p = dir.path(name);
    qcow2::create(
        &p,
        &CreateOptions {
            size: 1 << 20,
            cluster_size: CS,
            ..Default::default()
        },
    )
    .expect("create");
    let q = qcow2::Qcow2::open(&p, true).expect("open");
    q.write_at(&[0xaa; 8192], 0).expect("write");
    q.write_compressed(&[0x11; CS as usize], 8 * CS)
        .expect("compressed");
    q.flush().expect("flush");
    drop(q);
    p
}

fn patch(p: &Path, off: u64, bytes: &[u8]) {
    let mut v = std::fs::read(p).expect("read");
    v[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(p, v).expect("write");
}

fn open_ro(p: &Path) -> block::Result<Box<dyn BlockDev>> {
    block::open(
        p,
        &OpenOptions {
            writable: false,
            format: Some(block::Format::Qcow2),
            ..Default::default()
        },
    )
}

fn read_all(p: &Path) -> block::Result<()> {
    let img = open_ro(p)?;
    let mut buf = vec![0u8; img.size().min(1 << 20) as usize];
    img.read_at(&mut buf, 0)
}

fn expect_err(r: block::Result<()>, words: &[&str]) -> Error {
    let e = r.expect_err("corrupt image was accepted");
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "error message '{msg}' lacks '{w}'");
    }
    e
}

fn l1_entry(p: &Path) -> u64 {
    let v = std::fs::read(p).expect("read");
    u64::from_be_bytes(v[0x1000..0x1008].try_into().expect("8 bytes"))
}

#[test]
fn valid_image_reads() {
    let dir = TempDir::new("corrupt-ok");
    let p = make(&dir, "ok.qcow2");
    read_all(&p).expect("valid image");
    let r = qcow2::check::check(&p, qcow2::check::Repair::None).expect("check");
    assert_eq!((r.corruptions, r.leaks), (0, 0), "{:?}", r.messages);
}

#[test]
fn header_field_corruptions_are_rejected() {
    let dir = TempDir::new("corrupt-header");
    let cases: &[(&str, u64, Vec<u8>, &[&str])] = &[
        ("magic", 0, b"QFI\x00".to_vec(), &["not a qcow2"]),
        ("version", 4, 4u32.to_be_bytes().to_vec(), &["version 4"]),
        (
            "cluster_bits",
            20,
            30u32.to_be_bytes().to_vec(),
            &["cluster_bits 30"],
        ),
        (
            "cluster_bits low",
            20,
            8u32.to_be_bytes().to_vec(),
            &["cluster_bits 8"],
        ),
        (
            "size",
            24,
            u64::MAX.to_be_bytes().to_vec(),
            &["virtual size"],
        ),
        ("crypt", 32, 1u32.to_be_bytes().to_vec(), &["encryption"]),
        (
            "l1_size huge",
            36,
            u32::MAX.to_be_bytes().to_vec(),
            &["L1 table"],
        ),
        (
            "l1_size small",
            36,
            0u32.to_be_bytes().to_vec(),
            &["too small"],
        ),
        (
            "l1 offset past eof",
            40,
            (1u64 << 40).to_be_bytes().to_vec(),
            &["L1 table", "past the end"],
        ),
        (
            "l1 offset unaligned",
            40,
            0x1200u64.to_be_bytes().to_vec(),
            &["L1 table", "unaligned"],
        ),
        (
            "reftable overlaps l1",
            48,
            0x1000u64.to_be_bytes().to_vec(),
            &["overlaps"],
        ),
        (
            "reftable clusters",
            56,
            0x100_0000u32.to_be_bytes().to_vec(),
            &["refcount table"],
        ),
        (
            "unknown incompat",
            72,
            (1u64 << 10).to_be_bytes().to_vec(),
            &["bit 10"],
        ),
        (
            "external data file",
            72,
            (1u64 << 2).to_be_bytes().to_vec(),
            &["external data file"],
        ),
        (
            "extended l2",
            72,
            (1u64 << 4).to_be_bytes().to_vec(),
            &["extended L2"],
        ),
        (
            "refcount order",
            96,
            7u32.to_be_bytes().to_vec(),
            &["refcount_order 7"],
        ),
        (
            "header length",
            100,
            4097u32.to_be_bytes().to_vec(),
            &["header_length"],
        ),
        ("compression type", 104, vec![9], &["compression type 9"]),
        ("compression bit", 104, vec![1], &["compression type bit"]),
        (
            "backing name",
            8,
            0xff0u64.to_be_bytes().to_vec(),
            &["backing file name"],
        ),
    ];
    for (name, off, bytes, words) in cases {
        let p = make(&dir, &format!("{}.qcow2", name.replace(' ', "_")));
        if *name == "backing name" {
            patch(&p, 16, &100u32.to_be_bytes());
        }
        patch(&p, *off, bytes);
        let e = expect_err(read_all(&p), words);
        assert!(
            e.to_string().contains(p.to_str().expect("utf-8")),
            "{name}: message lacks the file name: {e}"
        );
    }
}

#[test]
fn truncated_headers_are_rejected() {
    let dir = TempDir::new("corrupt-short");
    let full = std::fs::read(make(&dir, "full.qcow2")).expect("read");
    let p = dir.path("short.qcow2");
    // Every length up to past the header (found by the fuzzer: a v3 header cut at 104 bytes).
    for len in 0..200 {
        std::fs::write(&p, &full[..len]).expect("write");
        assert!(read_all(&p).is_err(), "truncated to {len} bytes");
    }
}

#[test]
fn header_extension_overrun_is_rejected() {
    let dir = TempDir::new("corrupt-ext");
    let p = make(&dir, "ext.qcow2");
    // First extension starts at 112 (header length): give it a huge length.
    patch(&p, 112 + 4, &0x7fff_0000u32.to_be_bytes());
    expect_err(read_all(&p), &["extension", "overruns"]);
}

#[test]
fn l1_entry_past_eof_and_unaligned() {
    let dir = TempDir::new("corrupt-l1");
    let p = make(&dir, "l1.qcow2");
    patch(&p, 0x1000, &((1u64 << 63) | (1 << 40)).to_be_bytes());
    expect_err(read_all(&p), &["L2 table", "outside the image", "0x1000"]);
    let p = make(&dir, "l1b.qcow2");
    patch(&p, 0x1000, &((1u64 << 63) | 0x4200).to_be_bytes());
    expect_err(read_all(&p), &["L2 table", "not cluster aligned"]);
    // L2 table pointing at the header cluster.
    let p = make(&dir, "l1c.qcow2");
    patch(&p, 0x1000, &(1u64 << 63).to_be_bytes());
    read_all(&p).expect("L1 entry 0 with only the flag = unallocated");
}

#[test]
fn l2_entries_past_eof_unaligned_and_bad_compressed() {
    let dir = TempDir::new("corrupt-l2");
    let p = make(&dir, "l2.qcow2");
    let l2 = l1_entry(&p) & 0x00ff_ffff_ffff_fe00;
    patch(&p, l2, &((1u64 << 63) | (1 << 44)).to_be_bytes());
    expect_err(read_all(&p), &["data cluster", "past the end"]);

    let p = make(&dir, "l2b.qcow2");
    patch(&p, l2, &((1u64 << 63) | 0x5200).to_be_bytes());
    expect_err(read_all(&p), &["not cluster aligned"]);

    // Compressed entry (index 8) pointing past the end of the file.
    let p = make(&dir, "l2c.qcow2");
    patch(&p, l2 + 8 * 8, &((1u64 << 62) | (1 << 40)).to_be_bytes());
    expect_err(read_all(&p), &["compressed cluster", "past the end"]);

    // Compressed entry pointing at garbage (the refcount block).
    let p = make(&dir, "l2d.qcow2");
    patch(&p, l2 + 8 * 8, &((1u64 << 62) | 0x3000).to_be_bytes());
    expect_err(read_all(&p), &["does not decompress"]);
}

#[test]
fn refcount_table_garbage_is_an_error_on_write() {
    let dir = TempDir::new("corrupt-rt");
    let p = make(&dir, "rt.qcow2");
    patch(&p, 0x2000, &(1u64 << 45).to_be_bytes());
    let img = block::open(&p, &writable()).expect("open");
    let e = img
        .write_at(&[1; 512], 500_000)
        .expect_err("write with a bad refcount table");
    assert!(e.to_string().contains("refcount block"), "{e}");
    drop(img);
    let r = qcow2::check::check(&p, qcow2::check::Repair::None).expect("check runs");
    assert!(r.corruptions > 0);
}

#[test]
fn refcount_blocks_claiming_everything_do_not_hang() {
    let dir = TempDir::new("corrupt-rb");
    let p = make(&dir, "rb.qcow2");
    // Every refcount entry of the block = 0xffff, and every table entry -> the same block.
    let mut v = std::fs::read(&p).expect("read");
    v[0x3000..0x4000].fill(0xff);
    for i in 0..(CS / 8) as usize {
        v[0x2000 + i * 8..0x2000 + i * 8 + 8].copy_from_slice(&0x3000u64.to_be_bytes());
    }
    std::fs::write(&p, v).expect("write");
    let img = block::open(&p, &writable()).expect("open");
    let e = img
        .write_at(&[1; 512], 600_000)
        .expect_err("no free cluster");
    assert!(e.to_string().contains("past the end of the file"), "{e}");
}

#[test]
fn backing_loops_are_detected() {
    let dir = TempDir::new("corrupt-loop");
    let a = dir.path("a.qcow2");
    let b = dir.path("b.qcow2");
    let opts = |name: &str| CreateOptions {
        size: 1 << 20,
        backing_file: Some(name.into()),
        backing_format: Some("qcow2".into()),
        ..Default::default()
    };
    qcow2::create(
        &b,
        &CreateOptions {
            size: 1 << 20,
            ..Default::default()
        },
    )
    .expect("b");
    qcow2::create(&a, &opts("b.qcow2")).expect("a");
    qcow2::create(&b, &opts("a.qcow2")).expect("b -> a");
    expect_err(read_all(&a), &["loop"]);
    let c = dir.path("c.qcow2");
    qcow2::create(&c, &opts("c.qcow2")).expect("self loop");
    expect_err(read_all(&c), &["loop"]);
    let d = dir.path("d.qcow2");
    qcow2::create(&d, &opts("missing.qcow2")).expect("missing backing");
    expect_err(read_all(&d), &["backing", "missing.qcow2"]);
}

#[test]
fn dirty_and_corrupt_bits_are_honoured() {
    let dir = TempDir::new("corrupt-bits");
    for (bit, word) in [(1u64, "dirty"), (2u64, "corrupt")] {
        let p = make(&dir, &format!("{word}.qcow2"));
        patch(&p, 72, &bit.to_be_bytes());
        read_all(&p).expect("read-only open is allowed");
        let e = block::open(&p, &writable()).err().expect("rw refused");
        assert!(e.to_string().contains(word), "{e}");
    }
    // check -r all clears the dirty bit of a consistent image.
    let p = dir.path("dirty.qcow2");
    let r = qcow2::check::check(&p, qcow2::check::Repair::All).expect("repair");
    assert_eq!(r.corruptions, 0);
    block::open(&p, &writable()).expect("clean after repair");
}

#[test]
fn out_of_range_requests_are_errors() {
    let dir = TempDir::new("corrupt-range");
    let p = make(&dir, "r.qcow2");
    let img = block::open(&p, &writable()).expect("open");
    let mut buf = [0u8; 16];
    assert!(matches!(
        img.read_at(&mut buf, (1 << 20) - 8),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        img.write_at(&buf, u64::MAX - 4),
        Err(Error::OutOfRange { .. })
    ));
    let ro = open_ro(&p).expect("ro");
    assert!(matches!(ro.write_at(&buf, 0), Err(Error::ReadOnly { .. })));
}

#[test]
fn random_corruption_never_panics() {
    let dir = TempDir::new("corrupt-random");
    let base = std::fs::read(make(&dir, "base.qcow2")).expect("read");
    let mut rng = Rng(0x5eed);
    let p = dir.path("fuzz.qcow2");
    for round in 0..400 {
        let mut v = base.clone();
        for _ in 0..1 + rng.below(8) {
            // Bias towards metadata: header, L1, reftable, refblock, first L2.
            let off = if rng.below(4) == 0 {
                rng.below(v.len() as u64)
            } else {
                rng.below(6 * CS)
            } as usize;
            v[off] = rng.next() as u8;
        }
        std::fs::write(&p, &v).expect("write");
        if let Ok(img) = open_ro(&p) {
            let size = img.size();
            let mut buf = vec![0u8; 64 << 10];
            for _ in 0..4 {
                let off = rng.below(size.max(1));
                let n = (buf.len() as u64).min(size - off) as usize;
                let _ = img.read_at(&mut buf[..n], off);
                let _ = img.block_status(off, (size - off).min(1 << 20));
            }
        }
        if round % 4 == 0 {
            if let Ok(img) = block::open(
                &p,
                &OpenOptions {
                    writable: true,
                    format: Some(block::Format::Qcow2),
                    ..Default::default()
                },
            ) {
                let size = img.size();
                if size > 0 {
                    let off = rng.below(size);
                    let n = 5000.min(size - off) as usize;
                    let _ = img.write_at(&vec![7u8; n], off);
                    let _ = img.flush();
                }
            }
            let _ = qcow2::check::check(&p, qcow2::check::Repair::None);
        }
    }
}
