//! `blk_request`: the virtio-blk request parser on descriptor chains, given directly or
//! walked by virtio-queue from a fuzzed descriptor table (indirect tables and loops
//! included), against fuzzed limits; every request it accepts is checked against what it
//! promises the engines (buffers inside guest memory, whole sectors inside the disk,
//! directions and sizes as negotiated).
//!
//! `blk_device`: a whole virtio-blk device (thread or io_uring engine, read-only or not)
//! over a temporary 1 MiB raw image, driven by a [`crate::driver`] script.

use std::path::PathBuf;
use std::sync::OnceLock;

use devices::virtio::block::request::{self, Limits, Op, Parsed, Segment};
use devices::virtio::block::{Block, BlockConfig, CacheMode, Engine};
use devices::virtio::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::driver::{self, fold, guest_memory, Driver, Ring, DATA_BASE, DATA_LEN, MEM_SIZE};
use crate::Input;

fn limits(inp: &mut Input<'_>) -> Limits {
    let b = inp.u8();
    Limits {
        capacity: match b & 3 {
            0 => u64::MAX,
            1 => u64::from(inp.u32()),
            _ => 2048,
        },
        max_descriptors: usize::from(inp.u8()) + 1,
        max_data_bytes: if b & 4 != 0 {
            u64::from(inp.u32())
        } else {
            devices::virtio::block::MAX_DATA_BYTES
        },
        read_only: b & 8 != 0,
        discard: b & 16 != 0,
        write_zeroes: b & 32 != 0,
        max_discard_sectors: if b & 64 != 0 { inp.u32() } else { 1 << 23 },
        max_discard_seg: u32::from(inp.u8()),
        max_write_zeroes_sectors: if b & 128 != 0 { inp.u32() } else { 1 << 21 },
        max_write_zeroes_seg: u32::from(inp.u8()),
    }
}

fn seg_ok(mem: &GuestMemoryMmap, segs: &[Segment]) -> u64 {
    let mut total = 0u64;
    for s in segs {
        assert!(
            mem.check_range(s.addr, s.len),
            "accepted a buffer outside guest memory: {s:?}"
        );
        total += s.len as u64;
    }
    total
}

/// What an accepted request must be.
fn check(mem: &GuestMemoryMmap, parsed: &Parsed, lim: &Limits) {
    let in_disk = |sector: u64, sectors: u64| {
        assert!(
            sector
                .checked_add(sectors)
                .is_some_and(|end| end <= lim.capacity),
            "accepted sectors {sector}+{sectors} on a disk of {}",
            lim.capacity
        )
    };
    match parsed {
        Parsed::Ok(req) => {
            assert!(mem.check_range(req.status, 1), "status byte outside memory");
            match &req.op {
                Op::Read { sector, data, len } | Op::Write { sector, data, len } => {
                    assert_eq!(seg_ok(mem, data), *len, "segments do not add up");
                    assert_eq!(len % 512, 0, "not whole sectors");
                    assert!(*len <= lim.max_data_bytes, "larger than allowed");
                    in_disk(*sector, len / 512);
                    if matches!(req.op, Op::Write { .. }) {
                        assert!(!lim.read_only, "a write accepted on a read-only disk");
                    }
                    // What the engines do with the data, bounded here.
                    if *len <= 1 << 20 {
                        let mut buf = vec![0u8; *len as usize];
                        assert!(request::read_stream(mem, data, &mut buf));
                        assert!(request::write_stream(mem, data, 0, &buf));
                        let half = (*len / 2) as usize;
                        assert!(request::read_stream_at(mem, data, half, &mut buf[half..]));
                    }
                }
                Op::GetId { data, len } => {
                    assert_eq!(seg_ok(mem, data), *len);
                    let id = [0x41u8; devices::virtio::block::ID_BYTES];
                    let n = (*len as usize).min(id.len());
                    assert!(request::write_stream(mem, data, 0, &id[..n]));
                }
                Op::Flush => {}
                Op::Discard(ranges) | Op::WriteZeroes(ranges) => {
                    assert!(!lim.read_only);
                    let discard = matches!(req.op, Op::Discard(_));
                    let (seg, max) = if discard {
                        assert!(lim.discard);
                        (lim.max_discard_seg, lim.max_discard_sectors)
                    } else {
                        assert!(lim.write_zeroes);
                        (lim.max_write_zeroes_seg, lim.max_write_zeroes_sectors)
                    };
                    assert!(ranges.len() as u64 <= u64::from(seg));
                    for r in ranges {
                        assert!(r.sectors <= max);
                        assert!(!(discard && r.unmap));
                        in_disk(r.sector, u64::from(r.sectors));
                    }
                }
            }
        }
        Parsed::Reject { status, .. } => {
            assert!(mem.check_range(*status, 1), "status byte outside memory")
        }
        Parsed::Drop { .. } => {}
    }
    let _ = parsed.data_bytes();
}

/// The `blk_request` target.
pub fn fuzz_blk_request(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let lim = limits(&mut inp);
    let mem = guest_memory(MEM_SIZE);
    // Buffer contents (headers, discard segments) in the data area.
    let n = usize::from(inp.u16() % 2048);
    let blob = inp.bytes(n);
    let at = DATA_BASE + u64::from(inp.u16()) % (DATA_LEN - 2048);
    let _ = vm_memory::Bytes::write_slice(&mem, blob, GuestAddress(at));
    let n = usize::from(inp.u8() % 64) + 1;
    let mut descs = Vec::with_capacity(n);
    for _ in 0..n {
        let (addr, len, flags, next) = (inp.u64(), inp.u32(), inp.u16(), inp.u16());
        let (addr, len, flags) = fold(addr, len, flags);
        descs.push((addr, len, flags, next));
    }
    if mode & 1 == 0 {
        // The chain as given, in order.
        let chain = descs
            .iter()
            .map(|&(a, l, f, nx)| Descriptor::new(a, l, f, nx));
        let parsed = request::parse(&mem, chain, &lim);
        check(&mem, &parsed, &lim);
        return;
    }
    // A real queue: the descriptors form its table, virtio-queue walks the chains.
    let size = (1u16 << ((mode >> 1) % 9)).max(1);
    let ring = Ring::at(0, size);
    for (i, &(a, l, f, nx)) in descs.iter().enumerate() {
        let at = ring.desc + 16 * (i as u64 % u64::from(size));
        let _ =
            vm_memory::Bytes::write_slice(&mem, &driver::desc_bytes(a, l, f, nx), GuestAddress(at));
    }
    let heads = usize::from(inp.u8() % 8) + 1;
    for h in 0..heads {
        let head = inp.u16();
        let slot = ring.avail + 4 + 2 * (h as u64 % u64::from(size));
        let _ = vm_memory::Bytes::write_obj(&mem, head, GuestAddress(slot));
    }
    let _ = vm_memory::Bytes::write_obj(&mem, heads as u16, GuestAddress(ring.avail + 2));
    let mut q = Queue::new(size).expect("queue");
    let _ = q.try_set_size(size);
    let _ = q.try_set_desc_table_address(GuestAddress(ring.desc));
    let _ = q.try_set_avail_ring_address(GuestAddress(ring.avail));
    let _ = q.try_set_used_ring_address(GuestAddress(ring.used));
    q.set_ready(true);
    let Ok(iter) = q.iter(&mem) else { return };
    for chain in iter {
        let parsed = request::parse(&mem, chain, &lim);
        check(&mem, &parsed, &lim);
    }
}

/// The raw image the device targets use: 1 MiB, created once per process.
fn image() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("ferrovm-fuzz-{}-blk.raw", std::process::id()));
        let f = std::fs::File::create(&p).expect("temporary image");
        f.set_len(1 << 20).expect("image size");
        p
    })
    .clone()
}

/// The `blk_device` target.
pub fn fuzz_blk_device(data: &[u8]) {
    let mut inp = Input::new(data);
    let (mask, size_exp) = driver::header(&mut inp);
    let cfg_bits = inp.u8();
    let cfg = BlockConfig {
        path: image(),
        format: block::Format::Raw,
        read_only: cfg_bits & 1 != 0,
        cache: CacheMode::Writeback,
        id: "fuzz".into(),
        engine: if cfg_bits & 2 != 0 {
            Engine::IoUring
        } else {
            Engine::Thread
        },
        flush: cfg_bits & 4 != 0,
        limiter: None,
    };
    let dev = Block::open("blk-fuzz", &cfg).expect("open the image");
    let mut d = Driver::new(dev, guest_memory(MEM_SIZE));
    d.feature_mask = mask;
    d.bring_up(size_exp);
    driver::run_script(
        &mut d,
        &mut inp,
        size_exp,
        |op, _inp, d| {
            if op == 0 {
                // A disk swap while the guest runs.
                let _ = d.t.device_mut().replace_disk(&cfg);
                d.t.config_changed();
            }
        },
        1,
    );
    d.shutdown();
}
