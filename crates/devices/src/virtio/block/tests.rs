//! virtio-blk tests: a tiny split-ring driver writes descriptor chains into real guest
//! memory; the handlers run on the test thread (the io_uring one is waited on until idle,
//! no timing involved), and end-to-end tests go through `activate` and the eventfds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::engine_thread::ThreadHandler;
use super::engine_uring::UringHandler;
use super::request::{S_IOERR, S_OK, S_UNSUPP};
use super::*;
use crate::virtio::test_util::{
    wait_readable, write_desc, DriverQueue, INDIRECT as F_INDIRECT, NEXT as F_NEXT,
    WRITE as F_WRITE,
};
use crate::virtio::worker::{QueueHandler, WorkerCtx};

const MEM_SIZE: usize = 16 << 20;
const QSIZE: u16 = QUEUE_SIZE;
/// The queue's descriptor table (its rings follow: [`DriverQueue`]'s layout).
const DESC_TABLE: u64 = 0x0;
const INDIRECT: u64 = 0x4000;
/// Request headers, discard segments, status bytes, data: all inside [AREA, AREA_END).
const AREA: u64 = 0x10000;
const AREA_END: u64 = 0x20_0000;
const HDR: u64 = 0x10000;
const SEGS: u64 = 0x10100;
const STATUS: u64 = 0x1F000;
const DATA: u64 = 0x20000;
const DATA2: u64 = 0x100000;
/// The value the status byte holds before the device answers.
const STATUS_UNSET: u8 = 0xEE;

const DISK_SECTORS: u64 = 256;

fn r(addr: u64, len: u32) -> (u64, u32, u16) {
    (addr, len, 0)
}

fn w(addr: u64, len: u32) -> (u64, u32, u16) {
    (addr, len, F_WRITE)
}

fn hdr() -> (u64, u32, u16) {
    r(HDR, 16)
}

fn st() -> (u64, u32, u16) {
    w(STATUS, 1)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        // Under the target directory rather than /tmp: /tmp may be a tmpfs, and the
        // cache=none tests want a disk filesystem.
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tmp");
        let p = base.join(format!("virtio-blk-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The driver side of one split queue.
struct Driver {
    mem: GuestMemoryMmap,
    q: DriverQueue,
    next_desc: u16,
    used_seen: u16,
}

impl Driver {
    fn new() -> Driver {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        Driver {
            mem,
            q: DriverQueue::new(QSIZE, DESC_TABLE),
            next_desc: 0,
            used_seen: 0,
        }
    }

    fn queue(&self) -> Queue {
        self.q.device_queue(false)
    }

    fn write_desc(&self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        write_desc(&self.mem, table, index, addr, len, flags, next);
    }

    /// Writes `descs` as one chain in consecutive table entries and makes it available.
    fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % QSIZE;
            let last = i == descs.len() - 1;
            let flags = if last { flags } else { flags | F_NEXT };
            self.write_desc(DESC_TABLE, idx, addr, len, flags, (idx + 1) % QSIZE);
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % QSIZE;
        self.push(head);
        head
    }

    /// Writes `descs` as an indirect table and makes a chain of one indirect descriptor.
    fn add_indirect(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i == descs.len() - 1;
            let flags = if last { flags } else { flags | F_NEXT };
            self.write_desc(INDIRECT, i as u16, addr, len, flags, i as u16 + 1);
        }
        let head = self.next_desc;
        let len = 16 * descs.len() as u32;
        self.write_desc(DESC_TABLE, head, INDIRECT, len, F_INDIRECT, 0);
        self.next_desc = (self.next_desc + 1) % QSIZE;
        self.push(head);
        head
    }

    fn push(&mut self, head: u16) {
        self.q.publish(&self.mem, head);
    }

    fn used_idx(&self) -> u16 {
        self.q.used_idx(&self.mem)
    }

    /// The next used element (id, len).
    fn pop_used(&mut self) -> (u32, u32) {
        assert_ne!(self.used_idx(), self.used_seen, "no used element");
        let e = self.q.used_elem(&self.mem, self.used_seen);
        self.used_seen = self.used_seen.wrapping_add(1);
        e
    }

    fn header(&self, req_type: u32, sector: u64) {
        self.mem
            .write_obj(req_type.to_le(), GuestAddress(HDR))
            .unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
    }

    fn segment(&self, i: u64, sector: u64, sectors: u32, flags: u32) {
        let a = SEGS + 16 * i;
        self.mem.write_obj(sector.to_le(), GuestAddress(a)).unwrap();
        self.mem
            .write_obj(sectors.to_le(), GuestAddress(a + 8))
            .unwrap();
        self.mem
            .write_obj(flags.to_le(), GuestAddress(a + 12))
            .unwrap();
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eng {
    Thread,
    Uring,
}

const ENGINES: [Eng; 2] = [Eng::Thread, Eng::Uring];

enum Handler {
    Thread(ThreadHandler),
    Uring(Box<UringHandler>),
}

/// A device's handler, its disk file and a driver, on the test thread.
struct Rig {
    _dir: TempDir,
    path: PathBuf,
    drv: Driver,
    ctx: WorkerCtx,
    handler: Handler,
    /// io_uring: requests in flight after the last notification was handled.
    uring_in_flight: usize,
}

fn raw_image(dir: &TempDir, sectors: u64) -> PathBuf {
    let path = dir.path("disk.raw");
    std::fs::write(&path, pattern((sectors * 512) as usize, 1)).unwrap();
    path
}

fn cfg(path: &Path, read_only: bool, engine: Engine) -> BlockConfig {
    BlockConfig {
        path: path.to_owned(),
        format: block::Format::Raw,
        read_only,
        cache: CacheMode::Writeback,
        id: "ferrovm-disk-0".into(),
        engine,
        flush: true,
    }
}

impl Rig {
    fn new(eng: Eng) -> Rig {
        Rig::with(eng, false, CacheMode::Writeback)
    }

    fn with(eng: Eng, read_only: bool, cache: CacheMode) -> Rig {
        let dir = TempDir::new();
        let path = raw_image(&dir, DISK_SECTORS);
        let mut c = cfg(&path, read_only, Engine::Thread);
        c.cache = cache;
        let blk = Block::open("blk0", &c).unwrap();
        Rig::from_block(dir, path, &blk, eng)
    }

    fn from_block(dir: TempDir, path: PathBuf, blk: &Block, eng: Eng) -> Rig {
        let limits = blk.limits(blk.avail_features());
        let handler = match eng {
            Eng::Thread => Handler::Thread(ThreadHandler::new(blk.disk.clone(), limits)),
            Eng::Uring => Handler::Uring(Box::new(
                UringHandler::new(blk.disk.clone(), limits, QSIZE).expect("io_uring"),
            )),
        };
        let drv = Driver::new();
        let ctx = WorkerCtx {
            mem: drv.mem.clone(),
            queues: vec![drv.queue()],
            interrupt: Arc::new(Interrupt::new(EventFd::new(0).unwrap())),
            stats: Default::default(),
        };
        // Canary everywhere requests may point.
        drv.write(AREA, &vec![0x5A; (AREA_END - AREA) as usize]);
        Rig {
            _dir: dir,
            path,
            drv,
            ctx,
            handler,
            uring_in_flight: 0,
        }
    }

    /// Lets the device process everything available and waits until it is done.
    fn kick(&mut self) {
        match &mut self.handler {
            Handler::Thread(h) => h.queue_notified(0, &mut self.ctx),
            Handler::Uring(h) => {
                h.queue_notified(0, &mut self.ctx);
                self.uring_in_flight = h.in_flight();
                h.wait_idle(&mut self.ctx);
            }
        }
    }

    /// Runs one chain; returns (status byte, used length).
    fn run(&mut self, descs: &[(u64, u32, u16)]) -> (u8, u32) {
        self.drv.write(STATUS, &[STATUS_UNSET]);
        let head = self.drv.add_chain(descs);
        self.kick();
        let (id, len) = self.drv.pop_used();
        assert_eq!(id, u32::from(head));
        (self.drv.status(), len)
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    fn area(&self) -> Vec<u8> {
        self.drv.read(AREA, (AREA_END - AREA) as usize)
    }
}

/// Runs a chain expected to be refused: checks the status byte, the used length, and that
/// neither the disk nor guest memory (apart from the status byte) changed.
fn expect_refused(rig: &mut Rig, descs: &[(u64, u32, u16)], want: Option<u8>) {
    rig.drv.write(STATUS, &[STATUS_UNSET]);
    let file = rig.file();
    let mut area = rig.area();
    let (status, used) = rig.run(descs);
    match want {
        Some(code) => {
            assert_eq!(status, code, "status byte");
            assert_eq!(used, 1, "used length");
            area[(STATUS - AREA) as usize] = code;
        }
        None => {
            assert_eq!(status, STATUS_UNSET, "status byte must be untouched");
            assert_eq!(used, 0, "used length");
        }
    }
    assert!(rig.file() == file, "disk file changed");
    assert!(rig.area() == area, "guest memory changed");
    // The device still works.
    rig.drv.header(request_type::IN, 0);
    let (status, used) = rig.run(&[hdr(), w(DATA, 512), st()]);
    assert_eq!((status, used), (S_OK, 513));
    assert_eq!(rig.drv.read(DATA, 512), rig.file()[..512]);
}

// ---- round trips ----

#[test]
fn read_returns_file_contents() {
    for eng in ENGINES {
        let mut rig = Rig::new(eng);
        rig.drv.header(request_type::IN, 5);
        let (status, used) = rig.run(&[hdr(), w(DATA, 1024), w(DATA2, 2048), st()]);
        assert_eq!((status, used), (S_OK, 3 * 1024 + 1), "{eng:?}");
        let file = rig.file();
        assert_eq!(rig.drv.read(DATA, 1024), file[5 * 512..7 * 512]);
        assert_eq!(rig.drv.read(DATA2, 2048), file[7 * 512..11 * 512]);
    }
}

#[test]
fn write_then_read_round_trip() {
    for eng in ENGINES {
        let mut rig = Rig::new(eng);
        let before = rig.file();
        let data = pattern(4096, 77);
        rig.drv.write(DATA, &data[..1536]);
        rig.drv.write(DATA2, &data[1536..]);
        rig.drv.header(request_type::OUT, 9);
        let (status, used) = rig.run(&[hdr(), r(DATA, 1536), r(DATA2, 2560), st()]);
        assert_eq!((status, used), (S_OK, 1), "{eng:?}");
        if eng == Eng::Uring {
            assert_eq!(rig.uring_in_flight, 1, "the write went through io_uring");
        }
        let file = rig.file();
        assert_eq!(file[9 * 512..9 * 512 + 4096], data[..]);
        assert_eq!(file[..9 * 512], before[..9 * 512]);
        assert_eq!(file[9 * 512 + 4096..], before[9 * 512 + 4096..]);

        rig.drv.write(DATA2, &[0u8; 4096]);
        rig.drv.header(request_type::IN, 9);
        let (status, used) = rig.run(&[hdr(), w(DATA2, 4096), st()]);
        assert_eq!((status, used), (S_OK, 4097));
        if eng == Eng::Uring {
            assert_eq!(rig.uring_in_flight, 1, "the read went through io_uring");
        }
        assert_eq!(rig.drv.read(DATA2, 4096), data);
    }
}

#[test]
fn any_layout_header_split_and_status_shared_with_data() {
    for eng in ENGINES {
        let mut rig = Rig::new(eng);
        rig.drv.header(request_type::IN, 2);
        // Header in two pieces; the last descriptor holds data and the status byte.
        let (status, used) = rig.run(&[r(HDR, 8), r(HDR + 8, 8), w(STATUS - 512, 513)]);
        assert_eq!((status, used), (S_OK, 513), "{eng:?}");
        assert_eq!(rig.drv.read(STATUS - 512, 512), rig.file()[1024..1536]);
    }
}

#[test]
fn flush_succeeds() {
    for eng in ENGINES {
        let mut rig = Rig::new(eng);
        rig.drv.header(request_type::FLUSH, 0);
        assert_eq!(rig.run(&[hdr(), st()]), (S_OK, 1), "{eng:?}");
    }
}

#[test]
fn get_id_returns_zero_padded_serial() {
    for eng in ENGINES {
        let mut rig = Rig::new(eng);
        rig.drv.header(request_type::GET_ID, 0);
        let (status, used) = rig.run(&[hdr(), w(DATA, 64), st()]);
        assert_eq!((status, used), (S_OK, 21), "{eng:?}");
        let mut want = b"ferrovm-disk-0".to_vec();
        want.resize(20, 0);
        assert_eq!(rig.drv.read(DATA, 20), want);
        assert_eq!(rig.drv.read(DATA + 20, 44), vec![0x5A; 44], "past 20 bytes");
    }
}

#[test]
fn discard_and_write_zeroes_zero_the_range_only() {
    for eng in ENGINES {
        let mut rig = Rig::new(eng);
        let before = rig.file();
        rig.drv.segment(0, 8, 8, 0);
        rig.drv.segment(1, 32, 16, 0);
        rig.drv.header(request_type::DISCARD, 0);
        assert_eq!(rig.run(&[hdr(), r(SEGS, 32), st()]), (S_OK, 1));
        let unmap = virtio_bindings::virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
        rig.drv.segment(0, 64, 3, unmap);
        rig.drv.header(request_type::WRITE_ZEROES, 0);
        assert_eq!(rig.run(&[hdr(), r(SEGS, 16), st()]), (S_OK, 1));
        rig.drv.segment(0, 100, 5, 0);
        assert_eq!(rig.run(&[hdr(), r(SEGS, 16), st()]), (S_OK, 1));

        let file = rig.file();
        assert_eq!(file.len(), before.len(), "size kept");
        let zeroed = |s: usize| (8..16).contains(&s) || (32..48).contains(&s);
        let zeroed = |s: usize| zeroed(s) || (64..67).contains(&s) || (100..105).contains(&s);
        for s in 0..DISK_SECTORS as usize {
            let range = s * 512..(s + 1) * 512;
            if zeroed(s) {
                assert!(file[range].iter().all(|&b| b == 0), "{eng:?} sector {s}");
            } else {
                assert_eq!(file[range.clone()], before[range], "{eng:?} sector {s}");
            }
        }
    }
}

#[test]
fn discard_flags_are_unsupported() {
    let mut rig = Rig::new(Eng::Thread);
    let before = rig.file();
    rig.drv.header(request_type::DISCARD, 0);
    rig.drv.segment(0, 0, 8, 1); // UNMAP is not valid on discard
    assert_eq!(rig.run(&[hdr(), r(SEGS, 16), st()]), (S_UNSUPP, 1));
    rig.drv.header(request_type::WRITE_ZEROES, 0);
    rig.drv.segment(0, 0, 8, 2); // unknown flag
    assert_eq!(rig.run(&[hdr(), r(SEGS, 16), st()]), (S_UNSUPP, 1));
    assert!(rig.file() == before);
}

#[test]
fn unknown_request_type_is_unsupported() {
    for eng in ENGINES {
        let mut rig = Rig::new(eng);
        rig.drv.header(99, 0);
        expect_refused(&mut rig, &[hdr(), w(DATA, 512), st()], Some(S_UNSUPP));
    }
}

#[test]
fn read_only_disk_refuses_writes() {
    for eng in ENGINES {
        let mut rig = Rig::with(eng, true, CacheMode::Writeback);
        rig.drv.header(request_type::OUT, 0);
        expect_refused(&mut rig, &[hdr(), r(DATA, 512), st()], Some(S_IOERR));
        rig.drv.segment(0, 0, 8, 0);
        rig.drv.header(request_type::DISCARD, 0);
        expect_refused(&mut rig, &[hdr(), r(SEGS, 16), st()], Some(S_IOERR));
        rig.drv.header(request_type::WRITE_ZEROES, 0);
        expect_refused(&mut rig, &[hdr(), r(SEGS, 16), st()], Some(S_IOERR));
        rig.drv.header(request_type::FLUSH, 0);
        assert_eq!(rig.run(&[hdr(), st()]), (S_OK, 1));
    }
}

#[test]
fn read_only_features() {
    let dir = TempDir::new();
    let path = raw_image(&dir, 8);
    let ro = Block::open("blk0", &cfg(&path, true, Engine::Thread)).unwrap();
    let f = ro.avail_features();
    assert_ne!(f & blk_features::RO, 0);
    assert_eq!(f & (blk_features::DISCARD | blk_features::WRITE_ZEROES), 0);
    let rw = Block::open("blk1", &cfg(&path, false, Engine::Thread)).unwrap();
    let f = rw.avail_features();
    assert_eq!(f & blk_features::RO, 0);
    for bit in [
        features::VERSION_1,
        features::RING_EVENT_IDX,
        features::RING_INDIRECT_DESC,
        blk_features::FLUSH,
        blk_features::SEG_MAX,
        blk_features::SIZE_MAX,
        blk_features::BLK_SIZE,
        blk_features::DISCARD,
        blk_features::WRITE_ZEROES,
    ] {
        assert_ne!(f & bit, 0, "feature {bit:#x}");
    }
    assert_eq!(rw.device_type(), 2);
    assert_eq!(rw.queue_max_sizes(), &[QUEUE_SIZE]);
}

#[test]
fn config_space_layout_and_values() {
    use config_offset as o;
    use std::mem::offset_of;
    use virtio_bindings::virtio_blk::virtio_blk_config as C;
    assert_eq!(offset_of!(C, capacity), o::CAPACITY);
    assert_eq!(offset_of!(C, size_max), o::SIZE_MAX);
    assert_eq!(offset_of!(C, seg_max), o::SEG_MAX);
    assert_eq!(offset_of!(C, blk_size), o::BLK_SIZE);
    assert_eq!(offset_of!(C, max_discard_sectors), o::MAX_DISCARD_SECTORS);
    assert_eq!(offset_of!(C, max_discard_seg), o::MAX_DISCARD_SEG);
    assert_eq!(
        offset_of!(C, discard_sector_alignment),
        o::DISCARD_SECTOR_ALIGNMENT
    );
    assert_eq!(
        offset_of!(C, max_write_zeroes_sectors),
        o::MAX_WRITE_ZEROES_SECTORS
    );
    assert_eq!(offset_of!(C, max_write_zeroes_seg), o::MAX_WRITE_ZEROES_SEG);
    assert_eq!(
        offset_of!(C, write_zeroes_may_unmap),
        o::WRITE_ZEROES_MAY_UNMAP
    );

    let dir = TempDir::new();
    let path = raw_image(&dir, 2049);
    let blk = Block::open("blk0", &cfg(&path, false, Engine::Thread)).unwrap();
    let mut all = [0xFFu8; 64];
    blk.read_config(0, &mut all);
    let u32_at = |off: usize| u32::from_le_bytes(all[off..off + 4].try_into().unwrap());
    assert_eq!(u64::from_le_bytes(all[0..8].try_into().unwrap()), 2049);
    assert_eq!(u32_at(o::SIZE_MAX), SIZE_MAX);
    assert_eq!(u32_at(o::SEG_MAX), SEG_MAX);
    assert_eq!(u32_at(o::BLK_SIZE), 512);
    assert_eq!(u32_at(o::MAX_DISCARD_SECTORS), MAX_DISCARD_SECTORS);
    assert_eq!(u32_at(o::MAX_DISCARD_SEG), MAX_DISCARD_SEG);
    assert_eq!(u32_at(o::DISCARD_SECTOR_ALIGNMENT), 8);
    assert_eq!(
        u32_at(o::MAX_WRITE_ZEROES_SECTORS),
        MAX_WRITE_ZEROES_SECTORS
    );
    assert_eq!(u32_at(o::MAX_WRITE_ZEROES_SEG), MAX_WRITE_ZEROES_SEG);
    assert_eq!(all[o::WRITE_ZEROES_MAY_UNMAP], 1);
    assert_eq!(all[o::SIZE..], [0u8; 4], "past the fields: zeroes");
    // Any offset, any width.
    for off in 0..64 {
        for width in [1, 2, 3, 4, 8] {
            let mut b = vec![0xFFu8; width];
            blk.read_config(off as u64, &mut b);
            let want: Vec<u8> = (off..off + width)
                .map(|i| all.get(i).copied().unwrap_or(0))
                .collect();
            assert_eq!(b, want, "offset {off} width {width}");
        }
    }
    let mut b = [0xFFu8; 4];
    blk.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);
}

// ---- malformed chains (each for both engines) ----

fn each_engine(f: impl Fn(&mut Rig)) {
    for eng in ENGINES {
        let mut rig = Rig::new(eng);
        f(&mut rig);
    }
}

#[test]
fn looping_chain_is_bounded() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, 0);
        // Entries 200 -> 201 -> 200 -> ...: virtio-queue stops after a table's worth.
        rig.drv.write_desc(DESC_TABLE, 200, HDR, 16, F_NEXT, 201);
        rig.drv
            .write_desc(DESC_TABLE, 201, STATUS, 1, F_NEXT | F_WRITE, 200);
        rig.drv.write(STATUS, &[STATUS_UNSET]);
        let area = rig.area();
        rig.drv.push(200);
        rig.kick();
        let (id, _) = rig.drv.pop_used();
        assert_eq!(id, 200);
        let mut area = area;
        area[(STATUS - AREA) as usize] = rig.drv.status();
        assert!(rig.area() == area, "guest memory changed");
        assert_eq!(rig.drv.status(), S_IOERR);
    });
}

#[test]
fn looping_indirect_table_is_bounded() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, 0);
        rig.drv.write_desc(INDIRECT, 0, HDR, 16, F_NEXT, 1);
        rig.drv
            .write_desc(INDIRECT, 1, STATUS, 1, F_NEXT | F_WRITE, 0);
        rig.drv
            .write_desc(DESC_TABLE, 0, INDIRECT, 32, F_INDIRECT, 0);
        rig.drv.write(STATUS, &[STATUS_UNSET]);
        rig.drv.push(0);
        rig.kick();
        assert_eq!(rig.drv.pop_used().0, 0);
        // The walk stops after the table's two entries, on a descriptor that still says
        // NEXT: the chain never ended.
        assert_eq!(rig.drv.status(), S_IOERR);
    });
}

#[test]
fn buffer_outside_guest_memory() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, 0);
        let end = MEM_SIZE as u64;
        expect_refused(rig, &[hdr(), w(end - 256, 512), st()], Some(S_IOERR));
        expect_refused(rig, &[hdr(), w(u64::MAX - 100, 512), st()], Some(S_IOERR));
        rig.drv.header(request_type::OUT, 0);
        expect_refused(rig, &[hdr(), r(end + 4096, 512), st()], Some(S_IOERR));
        expect_refused(rig, &[r(end, 16), r(DATA, 512), st()], Some(S_IOERR));
    });
}

#[test]
fn status_outside_guest_memory() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, 0);
        let end = MEM_SIZE as u64;
        expect_refused(rig, &[hdr(), w(DATA, 512), w(end, 1)], None);
        expect_refused(rig, &[hdr(), w(DATA, 512), w(u64::MAX, 1)], None);
    });
}

#[test]
fn too_many_descriptors() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, 0);
        let mut descs = vec![hdr()];
        descs.extend((0..SEG_MAX as u64 + 1).map(|i| w(DATA + 512 * i, 512)));
        descs.push(st());
        rig.drv.write(STATUS, &[STATUS_UNSET]);
        let area = rig.area();
        let head = rig.drv.add_indirect(&descs);
        rig.kick();
        assert_eq!(rig.drv.pop_used(), (u32::from(head), 1));
        assert_eq!(rig.drv.status(), S_IOERR);
        let mut area = area;
        area[(STATUS - AREA) as usize] = S_IOERR;
        assert!(rig.area() == area, "guest memory changed");

        // Exactly seg_max data descriptors is fine.
        descs.remove(1);
        let head = rig.drv.add_indirect(&descs);
        rig.kick();
        let len = SEG_MAX * 512 + 1;
        assert_eq!(rig.drv.pop_used(), (u32::from(head), len));
        assert_eq!(rig.drv.status(), S_OK);
    });
}

#[test]
fn too_many_bytes() {
    each_engine(|rig| {
        // Overlapping buffers: 17 x 15 MiB > seg_max * size_max.
        rig.drv.header(request_type::IN, 0);
        let mut descs = vec![hdr()];
        descs.extend((0..17).map(|_| w(DATA, 15 << 20)));
        descs.push(st());
        expect_refused(rig, &descs, Some(S_IOERR));
    });
}

#[test]
fn header_device_writable() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, 0);
        expect_refused(rig, &[w(HDR, 16), w(DATA, 512), st()], Some(S_IOERR));
    });
}

#[test]
fn header_too_short() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, 0);
        expect_refused(rig, &[r(HDR, 8), w(DATA, 512), st()], Some(S_IOERR));
        expect_refused(rig, &[st()], Some(S_IOERR));
    });
}

#[test]
fn read_into_device_readable_data() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, 0);
        expect_refused(rig, &[hdr(), r(DATA, 512), st()], Some(S_IOERR));
    });
}

#[test]
fn write_from_device_writable_data() {
    each_engine(|rig| {
        rig.drv.header(request_type::OUT, 0);
        expect_refused(rig, &[hdr(), w(DATA, 512), st()], Some(S_IOERR));
    });
}

#[test]
fn readable_after_writable() {
    each_engine(|rig| {
        rig.drv.header(request_type::OUT, 0);
        expect_refused(
            rig,
            &[hdr(), w(DATA, 512), r(DATA2, 512), st()],
            Some(S_IOERR),
        );
    });
}

#[test]
fn status_descriptor_read_only() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, 0);
        expect_refused(rig, &[hdr(), w(DATA, 512), r(STATUS, 1)], None);
        rig.drv.header(request_type::OUT, 0);
        expect_refused(rig, &[hdr(), r(DATA, 512), r(STATUS, 1)], None);
    });
}

#[test]
fn status_descriptor_empty() {
    each_engine(|rig| {
        rig.drv.header(request_type::OUT, 0);
        expect_refused(rig, &[hdr(), r(DATA, 512), w(STATUS, 0)], None);
        rig.drv.header(request_type::FLUSH, 0);
        expect_refused(rig, &[hdr(), w(STATUS, 0)], None);
    });
}

#[test]
fn data_not_whole_sectors() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, 0);
        expect_refused(rig, &[hdr(), w(DATA, 500), st()], Some(S_IOERR));
        rig.drv.header(request_type::OUT, 0);
        expect_refused(rig, &[hdr(), r(DATA, 700), st()], Some(S_IOERR));
        rig.drv.header(request_type::DISCARD, 0);
        rig.drv.segment(0, 0, 1, 0);
        expect_refused(rig, &[hdr(), r(SEGS, 15), st()], Some(S_IOERR));
    });
}

#[test]
fn sector_range_beyond_the_disk() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, DISK_SECTORS - 1);
        expect_refused(rig, &[hdr(), w(DATA, 1024), st()], Some(S_IOERR));
        rig.drv.header(request_type::OUT, DISK_SECTORS);
        expect_refused(rig, &[hdr(), r(DATA, 512), st()], Some(S_IOERR));
        rig.drv.header(request_type::DISCARD, 0);
        rig.drv.segment(0, DISK_SECTORS - 4, 8, 0);
        expect_refused(rig, &[hdr(), r(SEGS, 16), st()], Some(S_IOERR));
        rig.drv.header(request_type::WRITE_ZEROES, 0);
        rig.drv.segment(0, 0, MAX_WRITE_ZEROES_SECTORS + 1, 0);
        expect_refused(rig, &[hdr(), r(SEGS, 16), st()], Some(S_IOERR));
    });
}

#[test]
fn sector_range_overflowing_u64() {
    each_engine(|rig| {
        rig.drv.header(request_type::IN, u64::MAX);
        expect_refused(rig, &[hdr(), w(DATA, 512), st()], Some(S_IOERR));
        rig.drv.header(request_type::OUT, u64::MAX >> 9);
        expect_refused(rig, &[hdr(), r(DATA, 1024), st()], Some(S_IOERR));
        rig.drv.header(request_type::DISCARD, 0);
        rig.drv.segment(0, u64::MAX - 2, 8, 0);
        expect_refused(rig, &[hdr(), r(SEGS, 16), st()], Some(S_IOERR));
    });
}

#[test]
fn too_many_discard_segments() {
    each_engine(|rig| {
        rig.drv.header(request_type::DISCARD, 0);
        for i in 0..=u64::from(MAX_DISCARD_SEG) {
            rig.drv.segment(i, i, 1, 0);
        }
        let len = 16 * (MAX_DISCARD_SEG + 1);
        expect_refused(rig, &[hdr(), r(SEGS, len), st()], Some(S_IOERR));
    });
}

// ---- open errors ----

fn open_err(c: &BlockConfig) -> String {
    Block::open("blk0", c).unwrap_err().to_string()
}

#[test]
fn open_errors_name_the_file() {
    let dir = TempDir::new();
    let missing = dir.path("missing.raw");
    let e = open_err(&cfg(&missing, false, Engine::Thread));
    assert!(
        e.contains(missing.to_str().unwrap()) && e.contains("No such file"),
        "{e}"
    );

    let e = open_err(&cfg(&dir.0, false, Engine::Thread));
    assert!(
        e.contains(dir.0.to_str().unwrap()) && e.contains("directory"),
        "{e}"
    );

    let odd = dir.path("odd.raw");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let e = open_err(&cfg(&odd, false, Engine::Thread));
    assert!(
        e.contains("odd.raw") && e.contains("multiple of 512"),
        "{e}"
    );

    let good = raw_image(&dir, 4);
    let mut c = cfg(&good, false, Engine::Thread);
    c.id = "x".repeat(21);
    let e = open_err(&c);
    assert!(
        e.contains("disk.raw") && e.contains("longer than 20"),
        "{e}"
    );
    c.id = "y".repeat(20);
    Block::open("blk0", &c).unwrap();

    let e = open_err(&cfg(Path::new("/dev/null"), false, Engine::Thread));
    assert!(
        e.contains("/dev/null") && e.contains("not a regular file"),
        "{e}"
    );
}

#[test]
fn unreadable_file_is_an_open_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let path = raw_image(&dir, 4);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&path).is_ok() {
        // Running as root: permissions do not apply.
        return;
    }
    let e = open_err(&cfg(&path, true, Engine::Thread));
    assert!(
        e.contains("disk.raw") && e.contains("ermission denied"),
        "{e}"
    );
}

#[test]
fn same_file_has_same_identity() {
    let dir = TempDir::new();
    let path = raw_image(&dir, 4);
    let a = Block::open("blk0", &cfg(&path, false, Engine::Thread)).unwrap();
    let b = Block::open("blk1", &cfg(&path, true, Engine::Thread)).unwrap();
    assert_eq!(a.file_identity(), b.file_identity());
    assert_eq!(file_identity(&path).unwrap(), a.file_identity());
    let other = dir.path("other.raw");
    std::fs::write(&other, [0u8; 512]).unwrap();
    assert_ne!(file_identity(&other).unwrap(), a.file_identity());
}

// ---- cache=none and generic images ----

#[test]
fn cache_none_round_trip_with_aligned_and_unaligned_buffers() {
    for eng in ENGINES {
        let dir = TempDir::new();
        let path = raw_image(&dir, DISK_SECTORS);
        let mut c = cfg(&path, false, Engine::Thread);
        c.cache = CacheMode::None;
        let blk = match Block::open("blk0", &c) {
            Ok(b) => b,
            Err(e @ BlockError::NoDirectIo { .. }) => {
                eprintln!("skipping: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let bs = blk.disk.blk_size() as usize;
        let mut rig = Rig::from_block(dir, path, &blk, eng);
        let data = pattern(4 * bs, 9);
        // Page-aligned buffers (direct), then buffers at an odd address (bounced).
        for (addr, sector) in [(DATA, 0u64), (DATA2 + 1, 8 * bs as u64 / 512)] {
            rig.drv.write(addr, &data);
            rig.drv.header(request_type::OUT, sector);
            let n = data.len() as u32;
            assert_eq!(rig.run(&[hdr(), r(addr, n), st()]), (S_OK, 1), "{eng:?}");
            let off = sector as usize * 512;
            assert_eq!(rig.file()[off..off + data.len()], data[..]);
            rig.drv.write(addr, &vec![0; data.len()]);
            rig.drv.header(request_type::IN, sector);
            assert_eq!(rig.run(&[hdr(), w(addr, n), st()]), (S_OK, n + 1));
            assert_eq!(rig.drv.read(addr, data.len()), data);
            rig.drv.header(request_type::FLUSH, 0);
            assert_eq!(rig.run(&[hdr(), st()]), (S_OK, 1));
        }
    }
}

#[test]
fn qcow2_through_block_dev() {
    let dir = TempDir::new();
    let path = dir.path("disk.qcow2");
    block::qcow2::create(
        &path,
        &block::qcow2::CreateOptions {
            size: QCOW2_SECTORS * 512,
            ..Default::default()
        },
    )
    .unwrap();
    let mut c = cfg(&path, false, Engine::IoUring);
    c.format = block::Format::Qcow2;
    let blk = Block::open("blk0", &c).unwrap();
    assert_eq!(
        blk.engine(),
        Engine::Thread,
        "io_uring serves raw images only"
    );
    assert_eq!(blk.capacity(), QCOW2_SECTORS);
    let mut c2 = c.clone();
    c2.cache = CacheMode::None;
    assert!(open_err(&c2).contains("raw images only"));

    let mut rig = Rig::from_block(dir, path, &blk, Eng::Thread);
    let data = pattern(3 * 512 + BOUNCE_TEST_EXTRA, 3);
    rig.drv.write(DATA, &data);
    rig.drv.header(request_type::OUT, 7);
    let n = data.len() as u32;
    assert_eq!(
        rig.run(&[hdr(), r(DATA, 1000), r(DATA + 1000, n - 1000), st()]),
        (S_OK, 1)
    );
    rig.drv.header(request_type::IN, 7);
    assert_eq!(rig.run(&[hdr(), w(DATA2, n), st()]), (S_OK, n + 1));
    assert_eq!(rig.drv.read(DATA2, data.len()), data);
    rig.drv.header(request_type::WRITE_ZEROES, 0);
    rig.drv.segment(0, 8, 1, 0);
    assert_eq!(rig.run(&[hdr(), r(SEGS, 16), st()]), (S_OK, 1));
    rig.drv.header(request_type::IN, 8);
    assert_eq!(rig.run(&[hdr(), w(DATA2, 512), st()]), (S_OK, 513));
    assert_eq!(rig.drv.read(DATA2, 512), vec![0; 512]);
    rig.drv.header(request_type::FLUSH, 0);
    assert_eq!(rig.run(&[hdr(), st()]), (S_OK, 1));
}

const QCOW2_SECTORS: u64 = 16384;

/// Makes the qcow2 transfer cross a bounce-buffer boundary.
const BOUNCE_TEST_EXTRA: usize = disk::BOUNCE_SIZE;

// ---- end to end: activate, notify eventfd, interrupt eventfd ----

#[test]
fn end_to_end_through_activate() {
    for engine in [Engine::Thread, Engine::IoUring] {
        let dir = TempDir::new();
        let path = raw_image(&dir, DISK_SECTORS);
        let mut blk = Block::open("blk0", &cfg(&path, false, engine)).unwrap();
        assert_eq!(blk.engine(), engine);
        let mut drv = Driver::new();
        let notify = EventFd::new(0).unwrap();
        let irq = EventFd::new(0).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let queue = ActiveQueue {
            queue: drv.queue(),
            notify: notify.try_clone().unwrap(),
        };
        let acked = blk.avail_features() & !features::RING_EVENT_IDX;
        blk.activate(drv.mem.clone(), interrupt.clone(), vec![queue], acked)
            .unwrap();

        // A write and a read in one notification.
        let data = pattern(8192, 42);
        drv.write(DATA, &data);
        drv.header(request_type::OUT, 16);
        drv.mem
            .write_obj(STATUS_UNSET, GuestAddress(STATUS))
            .unwrap();
        drv.mem
            .write_obj(STATUS_UNSET, GuestAddress(STATUS + 1))
            .unwrap();
        let h1 = drv.add_chain(&[hdr(), r(DATA, 8192), st()]);
        notify.write(1).unwrap();
        wait_readable(&irq);
        while drv.used_idx() != 1 {
            wait_readable(&irq);
        }
        assert_eq!(drv.pop_used(), (u32::from(h1), 1), "{engine:?}");
        assert_eq!(drv.status(), S_OK);
        assert_ne!(
            interrupt.status() & crate::virtio::interrupt_status::USED_RING,
            0
        );

        drv.write(HDR + 0x100, &request_type::IN.to_le_bytes());
        drv.write(HDR + 0x104, &[0; 4]);
        drv.write(HDR + 0x108, &16u64.to_le_bytes());
        let h2 = drv.add_chain(&[r(HDR + 0x100, 16), w(DATA2, 8192), w(STATUS + 1, 1)]);
        notify.write(1).unwrap();
        while drv.used_idx() != 2 {
            wait_readable(&irq);
        }
        assert_eq!(drv.pop_used(), (u32::from(h2), 8193));
        assert_eq!(drv.read(STATUS + 1, 1), [S_OK]);
        assert_eq!(drv.read(DATA2, 8192), data);
        blk.reset();
        assert_eq!(
            std::fs::read(&path).unwrap()[16 * 512..16 * 512 + 8192],
            data[..]
        );
    }
}

#[test]
fn replacing_the_disk_keeps_the_queue_and_serves_the_new_image() {
    for engine in [Engine::Thread, Engine::IoUring] {
        let dir = TempDir::new();
        let first = raw_image(&dir, DISK_SECTORS);
        let second = dir.path("second.img");
        std::fs::write(&second, pattern(2 * DISK_SECTORS as usize * 512, 7)).unwrap();
        let mut blk = Block::open("blk0", &cfg(&first, false, engine)).unwrap();
        let mut drv = Driver::new();
        let notify = EventFd::new(0).unwrap();
        let irq = EventFd::new(0).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let queue = ActiveQueue {
            queue: drv.queue(),
            notify: notify.try_clone().unwrap(),
        };
        let acked = blk.avail_features() & !features::RING_EVENT_IDX;
        blk.activate(drv.mem.clone(), interrupt.clone(), vec![queue], acked)
            .unwrap();
        let read_sector_0 = |drv: &mut Driver, want: u16| {
            drv.header(request_type::IN, 0);
            drv.add_chain(&[hdr(), w(DATA, 512), st()]);
            notify.write(1).unwrap();
            while drv.used_idx() != want {
                wait_readable(&irq);
            }
            drv.pop_used();
            assert_eq!(drv.status(), S_OK);
            drv.read(DATA, 512)
        };
        let before = read_sector_0(&mut drv, 1);
        assert_eq!(before, std::fs::read(&first).unwrap()[..512]);
        let mut config = [0u8; 8];
        blk.read_config(0, &mut config);
        assert_eq!(u64::from_le_bytes(config), DISK_SECTORS);

        blk.replace_disk(&cfg(&second, false, engine)).unwrap();
        blk.read_config(0, &mut config);
        assert_eq!(
            u64::from_le_bytes(config),
            2 * DISK_SECTORS,
            "{engine:?}: new capacity"
        );
        let after = read_sector_0(&mut drv, 2);
        assert_eq!(after, pattern(512, 7), "{engine:?}: the new image answers");
        // A missing image is refused and the old one stays.
        assert!(blk
            .replace_disk(&cfg(&dir.path("missing"), false, engine))
            .is_err());
        assert_eq!(read_sector_0(&mut drv, 3), pattern(512, 7));
        blk.reset();
    }
}

#[test]
fn end_to_end_with_event_idx_and_many_requests() {
    for engine in [Engine::Thread, Engine::IoUring] {
        let dir = TempDir::new();
        let path = raw_image(&dir, DISK_SECTORS);
        let mut blk = Block::open("blk0", &cfg(&path, false, engine)).unwrap();
        let mut drv = Driver::new();
        let notify = EventFd::new(0).unwrap();
        let irq = EventFd::new(0).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let mut q = drv.queue();
        q.set_event_idx(true);
        let queue = ActiveQueue {
            queue: q,
            notify: notify.try_clone().unwrap(),
        };
        blk.activate(
            drv.mem.clone(),
            interrupt,
            vec![queue],
            blk.avail_features(),
        )
        .unwrap();
        // used_event = 63: interrupt once all 64 are used (or earlier; we loop).
        let used_event = drv.q.avail + 4 + 2 * u64::from(QSIZE);
        drv.mem.write_obj(63u16, GuestAddress(used_event)).unwrap();
        for i in 0..64u64 {
            let h = HDR + 0x100 + 16 * i;
            drv.write(h, &request_type::IN.to_le_bytes());
            drv.write(h + 4, &[0; 4]);
            drv.write(h + 8, &i.to_le_bytes());
            drv.add_chain(&[r(h, 16), w(DATA + 512 * i, 512), w(STATUS + i, 1)]);
        }
        notify.write(1).unwrap();
        while drv.used_idx() != 64 {
            wait_readable(&irq);
        }
        let file = std::fs::read(&path).unwrap();
        assert_eq!(drv.read(DATA, 64 * 512), file[..64 * 512]);
        assert_eq!(drv.read(STATUS, 64), vec![S_OK; 64]);
        let mut used: Vec<u32> = (0..64).map(|_| drv.pop_used().1).collect();
        used.dedup();
        assert_eq!(used, [513]);
        blk.reset();
    }
}

/// A disk whose every I/O fails, as a dying host disk would.
struct FailingDev(PathBuf);

impl block::BlockDev for FailingDev {
    fn path(&self) -> &Path {
        &self.0
    }
    fn size(&self) -> u64 {
        DISK_SECTORS * 512
    }
    fn read_at(&self, _: &mut [u8], offset: u64) -> block::Result<()> {
        Err(self.eio("read", offset))
    }
    fn write_at(&self, _: &[u8], offset: u64) -> block::Result<()> {
        Err(self.eio("write", offset))
    }
    fn flush(&self) -> block::Result<()> {
        Err(self.eio("fsync", 0))
    }
    fn discard(&self, offset: u64, _: u64) -> block::Result<()> {
        Err(self.eio("discard", offset))
    }
    fn write_zeroes(&self, offset: u64, _: u64) -> block::Result<()> {
        Err(self.eio("write zeroes", offset))
    }
    fn block_status(&self, offset: u64, _: u64) -> block::Result<block::Extent> {
        Err(self.eio("block status", offset))
    }
    fn backing(&self) -> Option<&dyn block::BlockDev> {
        None
    }
    fn info(&self) -> block::ImageInfo {
        unreachable!("not used by the device")
    }
    fn resize(&self, _: u64) -> block::Result<()> {
        Err(self.eio("resize", 0))
    }
}

impl FailingDev {
    fn eio(&self, op: &'static str, offset: u64) -> block::Error {
        block::Error::Io {
            path: self.0.clone(),
            op,
            offset,
            source: std::io::Error::from_raw_os_error(libc::EIO),
        }
    }
}

#[test]
fn host_io_errors_become_ioerr() {
    let dir = TempDir::new();
    let path = raw_image(&dir, DISK_SECTORS);
    let blk = Block::from_dev("blk0", Arc::new(FailingDev(path.clone())), false, "x").unwrap();
    let mut rig = Rig::from_block(dir, path, &blk, Eng::Thread);
    let area = rig.area();
    rig.drv.header(request_type::IN, 0);
    assert_eq!(rig.run(&[hdr(), w(DATA, 4096), st()]), (S_IOERR, 1));
    rig.drv.header(request_type::OUT, 0);
    assert_eq!(rig.run(&[hdr(), r(DATA, 4096), st()]), (S_IOERR, 1));
    rig.drv.header(request_type::FLUSH, 0);
    assert_eq!(rig.run(&[hdr(), st()]), (S_IOERR, 1));
    rig.drv.segment(0, 0, 8, 0);
    rig.drv.header(request_type::DISCARD, 0);
    assert_eq!(rig.run(&[hdr(), r(SEGS, 16), st()]), (S_IOERR, 1));
    rig.drv.header(request_type::GET_ID, 0);
    assert_eq!(rig.run(&[hdr(), w(DATA, 20), st()]), (S_OK, 21));
    assert_eq!(
        rig.drv.read(DATA, 20),
        b"x\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
    );
    assert_eq!(rig.drv.read(DATA + 20, 4076), area[0x10014..0x11000]);
}

/// Batches of writes and reads at pseudo-random places (disjoint within a batch, so their
/// completion order does not matter), checked against a model of the disk.
#[test]
fn random_batches_match_a_model() {
    for eng in ENGINES {
        let mut rig = Rig::new(eng);
        let mut model = rig.file();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..40u64 {
            let write = round % 2 == 0;
            // Up to 16 requests, each in its own 16-sector slot of the disk and its own
            // 8 KiB of guest memory (header and status too).
            let count = 1 + rand(16);
            let mut expect = Vec::new();
            for i in 0..count {
                let sector = i * 16 + rand(8);
                let sectors = 1 + rand(8);
                let len = sectors * 512;
                let buf = DATA + i * 0x2000;
                let h = HDR + 0x100 + 16 * i;
                let t = if write {
                    request_type::OUT
                } else {
                    request_type::IN
                };
                rig.drv.write(h, &t.to_le_bytes());
                rig.drv.write(h + 4, &[0; 4]);
                rig.drv.write(h + 8, &sector.to_le_bytes());
                rig.drv.write(STATUS + i, &[STATUS_UNSET]);
                let flag = if write { 0 } else { F_WRITE };
                // Split the data in two descriptors at a 512-byte boundary when possible.
                let first = 512 * (1 + rand(sectors)).min(sectors);
                let mut descs = vec![r(h, 16), (buf, first as u32, flag)];
                if first < len {
                    descs.push((buf + first, (len - first) as u32, flag));
                }
                descs.push(w(STATUS + i, 1));
                if write {
                    let data = pattern(len as usize, (round * 16 + i) as u8);
                    rig.drv.write(buf, &data);
                    let off = (sector * 512) as usize;
                    model[off..off + len as usize].copy_from_slice(&data);
                }
                let head = rig.drv.add_chain(&descs);
                expect.push((head, sector, len, buf, i));
            }
            rig.kick();
            let mut used = std::collections::HashMap::new();
            for _ in 0..count {
                let (id, len) = rig.drv.pop_used();
                used.insert(id, len);
            }
            for (head, sector, len, buf, i) in expect {
                let want = if write { 1 } else { len as u32 + 1 };
                assert_eq!(
                    used.get(&u32::from(head)),
                    Some(&want),
                    "{eng:?} round {round}"
                );
                assert_eq!(rig.drv.read(STATUS + i, 1), [S_OK]);
                if !write {
                    let off = (sector * 512) as usize;
                    assert!(rig.drv.read(buf, len as usize) == model[off..off + len as usize]);
                }
            }
        }
        assert!(rig.file() == model, "{eng:?}");
    }
}

#[test]
fn advance_resumes_a_short_transfer_mid_iovec() {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    let mut iovs = [
        libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: 8,
        },
        libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: 8,
        },
    ];
    let mut start = 0;
    disk::advance(&mut iovs, &mut start, 3);
    assert_eq!((start, iovs[0].iov_len), (0, 5));
    assert_eq!(iovs[0].iov_base as usize, a.as_ptr() as usize + 3);
    disk::advance(&mut iovs, &mut start, 5);
    assert_eq!((start, iovs[1].iov_len), (1, 8));
    disk::advance(&mut iovs, &mut start, 10);
    assert_eq!(start, 2);

    // rw_all finishes a transfer from any point (here, from a file through two iovecs).
    let dir = TempDir::new();
    let path = dir.path("f");
    std::fs::write(&path, pattern(16, 4)).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let mut iovs = [
        libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: 8,
        },
        libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: 8,
        },
    ];
    let mut start = 0;
    disk::advance(&mut iovs, &mut start, 5);
    disk::rw_all(
        std::os::fd::AsRawFd::as_raw_fd(&f),
        &mut iovs[start..],
        5,
        false,
    )
    .unwrap();
    let p = pattern(16, 4);
    assert_eq!(a[5..], p[5..8]);
    assert_eq!(b[..], p[8..]);
    assert_eq!(a[..5], [0; 5]);
}
