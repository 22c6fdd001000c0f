//! virtio-blk tests: a tiny split-ring driver writes descriptor chains into real guest
//! memory; the handlers run on the test thread (the io_uring one is waited on until idle,
//! no timing involved), and end-to-end tests go through `activate` and the eventfds.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::engine_thread::ThreadHandler;
use super::engine_uring::UringHandler;
use super::request::{S_IOERR, S_OK, S_UNSUPP};
use super::*;
use crate::rate_limiter::{BucketChange, BucketConfig, LimiterConfig};
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
        limiter: None,
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
        Rig::limited(dir, path, blk, eng, None)
    }

    /// A rig whose handler charges `limiter` (its timer is not waited on: see
    /// [`Rig::refill`]).
    fn limited(
        dir: TempDir,
        path: PathBuf,
        blk: &Block,
        eng: Eng,
        limiter: Option<Arc<Mutex<RateLimiter>>>,
    ) -> Rig {
        let limits = blk.limits(blk.avail_features());
        let handler = match eng {
            Eng::Thread => {
                Handler::Thread(ThreadHandler::new(blk.disk.clone(), limits, limiter).unwrap())
            }
            Eng::Uring => Handler::Uring(Box::new(
                UringHandler::new(blk.disk.clone(), limits, QSIZE, limiter).expect("io_uring"),
            )),
        };
        let drv = Driver::new();
        let ctx = WorkerCtx {
            mem: drv.mem.clone(),
            queues: vec![drv.queue()],
            interrupt: Arc::new(Interrupt::new(EventFd::new(0).unwrap())),
            stats: Default::default(),
            stopping: Default::default(),
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

/// The pages of guest memory its dirty bitmap has marked since the last call.
fn dirty_pages(mem: &GuestMemoryMmap) -> Vec<u64> {
    use vm_memory::GuestMemoryBackend;
    let region = mem.iter().next().unwrap();
    let mapping: &vm_memory::MmapRegion<_> = region;
    let words = mapping.bitmap().get_and_reset();
    (0..words.len() as u64 * 64)
        .filter(|&i| words[(i / 64) as usize] & (1 << (i % 64)) != 0)
        .collect()
}

#[test]
fn reads_into_guest_memory_mark_its_pages_dirty_and_writes_do_not() {
    for eng in ENGINES {
        let mut rig = Rig::new(eng);
        rig.drv.header(request_type::IN, 5);
        let _ = dirty_pages(&rig.drv.mem);
        // The file goes straight into guest memory (preadv / io_uring), past vm-memory.
        let (status, _) = rig.run(&[hdr(), w(DATA, 8192), w(DATA2 + 0x800, 4096), st()]);
        assert_eq!(status, S_OK, "{eng:?}");
        let d = dirty_pages(&rig.drv.mem);
        for page in [DATA / 4096, DATA / 4096 + 1, DATA2 / 4096, DATA2 / 4096 + 1] {
            assert!(
                d.contains(&page),
                "{eng:?}: page {page:#x} not marked in {d:x?}"
            );
        }
        rig.drv.header(request_type::OUT, 5);
        let _ = dirty_pages(&rig.drv.mem);
        let (status, _) = rig.run(&[hdr(), r(DATA, 8192), st()]);
        assert_eq!(status, S_OK, "{eng:?}");
        let d = dirty_pages(&rig.drv.mem);
        assert!(
            !d.contains(&(DATA / 4096)),
            "{eng:?}: a write only reads guest memory: {d:x?}"
        );
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

/// Set to 1 to let the cache=none test pass (loudly untested) where the target directory's
/// filesystem refuses O_DIRECT.
const ALLOW_NO_ODIRECT: &str = "FERROVM_ALLOW_NO_ODIRECT";

#[test]
fn cache_none_round_trip_with_aligned_and_unaligned_buffers() {
    for eng in ENGINES {
        let dir = TempDir::new();
        let path = raw_image(&dir, DISK_SECTORS);
        let mut c = cfg(&path, false, Engine::Thread);
        c.cache = CacheMode::None;
        let blk = match Block::open("blk0", &c) {
            Ok(b) => b,
            // The image is under the target directory, on a disk filesystem, where
            // O_DIRECT works; a filesystem that cannot do it (tmpfs, some overlays) makes
            // this test fail unless the person running it says so.
            Err(e @ BlockError::NoDirectIo { .. }) => {
                let allowed = std::env::var_os(ALLOW_NO_ODIRECT).is_some_and(|v| v == "1");
                eprintln!(
                    "\n*** SKIPPED: cache=none is NOT tested: {e} (image in {}). \
                     {ALLOW_NO_ODIRECT}=1 {} ***\n",
                    path.parent().unwrap_or(&path).display(),
                    if allowed {
                        "is set: passing without testing"
                    } else {
                        "accepts this on a filesystem that cannot do O_DIRECT; failing"
                    }
                );
                assert!(allowed, "O_DIRECT refused: {e}");
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
    // Two 8-byte guest buffers, the second in another page so they stay two iovecs.
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
    let segs = [
        request::Segment {
            addr: GuestAddress(0x100),
            len: 8,
        },
        request::Segment {
            addr: GuestAddress(0x2000),
            len: 8,
        },
    ];
    let mut iovs = disk::IoVecs::new(&mem, &segs, true).unwrap();
    assert_eq!((iovs.len(), iovs.bytes()), (2, 16));
    iovs.advance(3);
    assert_eq!((iovs.len(), iovs.bytes()), (2, 13));
    iovs.advance(5);
    assert_eq!((iovs.len(), iovs.bytes()), (1, 8));
    iovs.advance(10);
    assert!(iovs.is_empty());

    // rw_all finishes a transfer from any point (here, from a file through two iovecs).
    let dir = TempDir::new();
    let path = dir.path("f");
    std::fs::write(&path, pattern(16, 4)).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let mut iovs = disk::IoVecs::new(&mem, &segs, true).unwrap();
    iovs.advance(5);
    iovs.rw_all(std::os::fd::AsFd::as_fd(&f), 5, false).unwrap();
    assert!(iovs.is_empty());
    let p = pattern(16, 4);
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    mem.read_slice(&mut a, GuestAddress(0x100)).unwrap();
    mem.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
    assert_eq!(a[5..], p[5..8]);
    assert_eq!(b[..], p[8..]);
    assert_eq!(a[..5], [0; 5]);
    // A segment outside guest memory resolves to nothing.
    let outside = [request::Segment {
        addr: GuestAddress(0x3ffc),
        len: 8,
    }];
    assert!(disk::IoVecs::new(&mem, &outside, false).is_none());
}

// ---- rate limiting ----

fn limiter(limits: LimiterConfig) -> Arc<Mutex<RateLimiter>> {
    Arc::new(Mutex::new(RateLimiter::new(limits).unwrap()))
}

/// Waits up to `timeout` for `fd` to be readable.
fn poll_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one live pollfd, count 1.
    unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
}

impl Rig {
    /// Waits for the limiter's timer `fd` and tells the handler, as the worker would.
    fn refill(&mut self, fd: RawFd) {
        assert!(poll_readable(fd, Duration::from_secs(5)), "refill timer");
        match &mut self.handler {
            Handler::Thread(h) => h.extra_ready(0, &mut self.ctx),
            Handler::Uring(h) => {
                h.extra_ready(1, &mut self.ctx);
                h.wait_idle(&mut self.ctx);
            }
        }
    }

    /// The next chain the device will take.
    fn next_avail(&self) -> u16 {
        self.ctx.queues[0].next_avail()
    }
}

/// A rig (handler on the test thread) over a fresh image, charging a limiter with `limits`.
fn limited_rig(eng: Eng, limits: LimiterConfig) -> (Rig, Arc<Mutex<RateLimiter>>) {
    let l = limiter(limits);
    let dir = TempDir::new();
    let path = raw_image(&dir, DISK_SECTORS);
    let blk = Block::open("blk0", &cfg(&path, false, Engine::Thread)).unwrap();
    (Rig::limited(dir, path, &blk, eng, Some(l.clone())), l)
}

/// Queues one request of each kind: flush, GET_ID, discard,
/// write zeroes (none moves data bytes), then a 4 KiB read and two 512-byte ones.
fn queue_each_kind(rig: &mut Rig) {
    let hdr_at = |i: u64| HDR + 0x100 + 16 * i;
    let put = |rig: &mut Rig, i: u64, t: u32| {
        rig.drv.write(hdr_at(i), &t.to_le_bytes());
        rig.drv.write(hdr_at(i) + 4, &[0; 12]);
    };
    rig.drv.segment(0, 0, 8, 0);
    let kinds = [
        request_type::FLUSH,
        request_type::GET_ID,
        request_type::DISCARD,
        request_type::WRITE_ZEROES,
        request_type::IN,
        request_type::IN,
        request_type::IN,
    ];
    for (i, &t) in kinds.iter().enumerate() {
        let i = i as u64;
        put(rig, i, t);
        let h = r(hdr_at(i), 16);
        let s = w(STATUS + i, 1);
        match t {
            request_type::FLUSH => rig.drv.add_chain(&[h, s]),
            request_type::GET_ID => rig.drv.add_chain(&[h, w(DATA, 20), s]),
            request_type::DISCARD | request_type::WRITE_ZEROES => {
                rig.drv.add_chain(&[h, r(SEGS, 16), s])
            }
            _ if i == 4 => rig.drv.add_chain(&[h, w(DATA, 4096), s]),
            _ => rig.drv.add_chain(&[h, w(DATA + 8192, 512), s]),
        };
    }
}

#[test]
fn requests_cost_their_data_bytes_and_one_operation() {
    for eng in ENGINES {
        // 4 KiB (refilled slowly, at 4 bytes a 10 ms tick): what the commands and the
        // 4 KiB read take; the first 512-byte read is served on credit and closes the gate;
        // the last stays in the ring.
        let (mut rig, l) = limited_rig(
            eng,
            LimiterConfig {
                bandwidth: Some(BucketConfig {
                    size: 4096,
                    one_time_burst: 0,
                    refill_time_ms: 10_000,
                }),
                ops: None,
            },
        );
        queue_each_kind(&mut rig);
        rig.kick();
        assert_eq!(
            rig.drv.used_idx(),
            6,
            "{eng:?}: the gate closed after the 6th"
        );
        assert_eq!(rig.next_avail(), 6, "{eng:?}: the 7th is not taken");
        assert_eq!(rig.drv.read(STATUS, 7)[..6], [S_OK; 6]);
        assert!(l.lock().unwrap().is_blocked());
        // A notification while closed takes nothing.
        rig.kick();
        assert_eq!(rig.next_avail(), 6);
        // The timer fires (512 bytes' worth is about 1.25 s) until the debt is paid.
        while rig.drv.used_idx() != 7 {
            let fd = l.lock().unwrap().fd();
            rig.refill(fd);
        }
        assert_eq!(rig.drv.read(STATUS + 6, 1), [S_OK]);

        // Operations: a bucket of 2 lets 3 commands through, the third on credit. The
        // bucket refills at 100 a second (slower rates lose their refill to the limiter's
        // rounding), so a busy machine may let a few more through before the gate closes.
        let (mut rig, l) = limited_rig(
            eng,
            LimiterConfig {
                bandwidth: None,
                ops: Some(BucketConfig {
                    size: 2,
                    one_time_burst: 0,
                    refill_time_ms: 20,
                }),
            },
        );
        rig.drv.header(request_type::GET_ID, 0);
        for _ in 0..20 {
            rig.drv.add_chain(&[hdr(), w(DATA, 20), st()]);
        }
        rig.kick();
        let taken = rig.next_avail();
        assert_eq!(rig.drv.used_idx(), taken, "{eng:?}: taken and answered");
        assert!((3..20).contains(&taken), "{eng:?}: {taken} taken");
        let fd = l.lock().unwrap().fd();
        while rig.drv.used_idx() != 20 {
            rig.refill(fd);
        }
    }
}

/// The engines this kernel runs.
fn usable_engines() -> Vec<Engine> {
    let mut v = vec![Engine::Thread];
    if engine_uring::probe().is_ok() {
        v.push(Engine::IoUring);
    }
    v
}

const MIB: u32 = 1 << 20;
/// 2 MiB: room for 1 MiB reads.
const LIMITED_SECTORS: u64 = 4096;

/// A limited drive behind `activate` (its worker thread named as given), and a driver that
/// reads at sector 0 into the same buffer over and over, kicking the way a Linux driver
/// does: only when the device has not suppressed notifications.
struct LimitedDrive {
    _dir: TempDir,
    path: PathBuf,
    name: String,
    blk: Block,
    drv: Driver,
    notify: EventFd,
    irq: EventFd,
    limiter: Arc<Mutex<RateLimiter>>,
    /// Requests made available (wrapping, as the ring's indices).
    submitted: u16,
}

impl LimitedDrive {
    fn new(name: &str, engine: Engine, limits: LimiterConfig) -> LimitedDrive {
        let dir = TempDir::new();
        let path = raw_image(&dir, LIMITED_SECTORS);
        let limiter = limiter(limits);
        let mut c = cfg(&path, false, engine);
        c.limiter = Some(limiter.clone());
        let mut blk = Block::open(name, &c).unwrap();
        assert_eq!(blk.engine(), engine);
        assert!(Arc::ptr_eq(blk.limiter().unwrap(), &limiter));
        let drv = Driver::new();
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let queue = ActiveQueue {
            queue: drv.queue(),
            notify: notify.try_clone().unwrap(),
        };
        let acked = blk.avail_features() & !features::RING_EVENT_IDX;
        blk.activate(drv.mem.clone(), interrupt, vec![queue], acked)
            .unwrap();
        drv.header(request_type::IN, 0);
        LimitedDrive {
            _dir: dir,
            path,
            name: name.to_owned(),
            blk,
            drv,
            notify,
            irq,
            limiter,
            submitted: 0,
        }
    }

    /// Makes a read of `len` bytes available; kicks unless told not to.
    fn submit(&mut self, len: u32) {
        self.drv.add_chain(&[hdr(), w(DATA2, len), st()]);
        self.submitted = self.submitted.wrapping_add(1);
        // The index store before the flags load (the device fences the other way round).
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.suppressed() {
            self.notify.write(1).unwrap();
        }
    }

    /// Whether the device asked not to be notified (VRING_USED_F_NO_NOTIFY).
    fn suppressed(&self) -> bool {
        let flags: u16 = self
            .drv
            .mem
            .read_obj(GuestAddress(self.drv.q.used))
            .unwrap();
        flags & 1 != 0
    }

    fn done(&self) -> u16 {
        self.drv.used_idx()
    }

    fn outstanding(&self) -> u16 {
        self.submitted.wrapping_sub(self.done())
    }

    /// Waits up to `timeout` for a completion interrupt.
    fn wait_irq(&self, timeout: Duration) {
        if poll_readable(self.irq.as_raw_fd(), timeout) {
            let _ = self.irq.read();
        }
    }

    /// Waits up to `timeout` for every request submitted to be done.
    fn drained(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.outstanding() != 0 {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.wait_irq(left.min(Duration::from_millis(50)));
        }
        true
    }

    /// Keeps `depth` reads of `len` bytes queued until `warm` are done, then for `secs`
    /// more; returns the requests done per second from the `warm`-th completion to the last.
    fn rate(&mut self, len: u32, depth: u16, warm: u16, secs: f64) -> f64 {
        let mut start: Option<(Instant, u16)> = None;
        let mut last = (Instant::now(), 0u16);
        loop {
            while self.outstanding() < depth {
                self.submit(len);
            }
            self.wait_irq(Duration::from_millis(50));
            let done = self.done();
            let now = Instant::now();
            if done != last.1 {
                last = (now, done);
            }
            match start {
                None if done >= warm => start = Some((now, done)),
                Some((t0, _)) if now.duration_since(t0).as_secs_f64() >= secs => break,
                _ => {}
            }
        }
        let (t0, d0) = start.unwrap();
        f64::from(last.1.wrapping_sub(d0)) / last.0.duration_since(t0).as_secs_f64()
    }

    /// The kernel's count for the worker thread: CPU time, and how many times it went to
    /// sleep (voluntary context switches: one per wait that did not find work ready).
    fn worker_usage(&self) -> (Duration, u64) {
        thread_usage(&self.name)
    }
}

impl Drop for LimitedDrive {
    fn drop(&mut self) {
        self.blk.reset();
    }
}

/// [`LimitedDrive::worker_usage`] of this process's thread `name`.
fn thread_usage(name: &str) -> (Duration, u64) {
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = entry.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields from the third (state) on, after the parenthesised name.
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        // utime and stime: fields 14 and 15 of proc_pid_stat(5), in clock ticks.
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf takes a constant and touches no memory of ours.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let sleeps = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        return (Duration::from_millis(ticks * 1000 / hz), sleeps);
    }
    panic!("no thread named {name}");
}

fn engine_tag(e: Engine) -> &'static str {
    match e {
        Engine::Thread => "t",
        Engine::IoUring => "u",
    }
}

#[test]
fn bandwidth_limit_holds_for_back_to_back_1mib_reads() {
    for engine in usable_engines() {
        // 4 MB/s: 400 kB refilled every 100 ms.
        let limits = LimiterConfig {
            bandwidth: Some(BucketConfig {
                size: 400_000,
                one_time_burst: 0,
                refill_time_ms: 100,
            }),
            ops: None,
        };
        let name = format!("rl-bw-{}", engine_tag(engine));
        let mut d = LimitedDrive::new(&name, engine, limits);
        // The first read spends the full bucket; measure from the second on.
        let rate = d.rate(MIB, 2, 2, 1.5) * f64::from(MIB);
        assert!(
            (2.8e6..=4.4e6).contains(&rate),
            "{engine:?}: {rate:.0} B/s against 4 MB/s"
        );
        assert!(d.drained(Duration::from_secs(5)));
        assert_eq!(d.drv.status(), S_OK);
    }
}

#[test]
fn ops_limit_holds() {
    for engine in usable_engines() {
        let limits = LimiterConfig {
            bandwidth: None,
            ops: Some(BucketConfig::per_second(100)),
        };
        let name = format!("rl-ops-{}", engine_tag(engine));
        let mut d = LimitedDrive::new(&name, engine, limits);
        // The bucket's 100 go at once; measure from a few past them.
        let rate = d.rate(512, 8, 110, 1.5);
        assert!(
            (50.0..=110.0).contains(&rate),
            "{engine:?}: {rate:.1} requests/s against 100"
        );
        assert!(d.drained(Duration::from_secs(5)));
    }
}

/// 500 kB/s, refilled by 50 kB: a 1 MiB read owes about 2 s after it is served.
fn slow_bandwidth() -> LimiterConfig {
    LimiterConfig {
        bandwidth: Some(BucketConfig {
            size: 50_000,
            one_time_burst: 0,
            refill_time_ms: 100,
        }),
        ops: None,
    }
}

#[test]
fn blocked_worker_sleeps_until_the_refill_and_an_unblocked_one_not_at_all() {
    for engine in usable_engines() {
        let name = format!("rl-sleep-{}", engine_tag(engine));
        let mut d = LimitedDrive::new(&name, engine, slow_bandwidth());
        d.submit(MIB);
        assert!(d.drained(Duration::from_secs(5)));
        let blocked_at = Instant::now();
        let (cpu0, sleeps0) = d.worker_usage();
        let notes0 = d.blk.worker_stats().notifications;

        // Three more wait in the ring, and the device asks not to be kicked for them.
        for _ in 0..3 {
            d.submit(4096);
        }
        assert!(
            d.suppressed(),
            "{engine:?}: notifications suppressed while blocked"
        );
        // A driver that kicks anyway wakes the worker once per kick, for nothing.
        let kicks = 10;
        for _ in 0..kicks {
            d.notify.write(1).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(400));
        let window = blocked_at.elapsed();
        let (cpu1, sleeps1) = d.worker_usage();
        let notes = d.blk.worker_stats().notifications - notes0;
        assert!(
            window < Duration::from_millis(1800),
            "the test itself was too slow"
        );
        assert_eq!(d.done(), 1, "{engine:?}: nothing served while blocked");
        assert!(d.limiter.lock().unwrap().is_blocked());
        // The worker slept between kicks and the limiter's 10 ms refill ticks; spinning
        // would have burnt the window.
        assert!(
            notes <= kicks,
            "{engine:?}: {notes} notifications for {kicks} kicks"
        );
        let ticks = window.as_millis() as u64 / 10;
        assert!(
            sleeps1 - sleeps0 <= ticks * 3 / 2 + kicks + 10,
            "{engine:?}: {} wake-ups in {window:?}",
            sleeps1 - sleeps0
        );
        assert!(
            cpu1 - cpu0 < Duration::from_millis(150),
            "{engine:?}: {:?} CPU in {window:?}",
            cpu1 - cpu0
        );

        // The limit goes: at the next tick everything is served.
        d.limiter
            .lock()
            .unwrap()
            .update(BucketChange::Remove, BucketChange::Keep);
        assert!(d.drained(Duration::from_secs(5)));
        assert_eq!(d.drv.status(), S_OK);

        // Unblocked and idle, the worker does not wake at all.
        std::thread::sleep(Duration::from_millis(50));
        let (cpu0, sleeps0) = d.worker_usage();
        let notes0 = d.blk.worker_stats().notifications;
        std::thread::sleep(Duration::from_millis(300));
        let (cpu1, sleeps1) = d.worker_usage();
        assert_eq!(d.blk.worker_stats().notifications, notes0);
        assert!(sleeps1 - sleeps0 <= 1, "{engine:?}: idle worker woke up");
        assert!(cpu1 - cpu0 <= Duration::from_millis(10));
    }
}

#[test]
fn removing_the_limit_lets_requests_flow_at_full_speed() {
    for engine in usable_engines() {
        // 4 MB/s, against which 64 MiB would take 16 s.
        let limits = LimiterConfig {
            bandwidth: Some(BucketConfig {
                size: 400_000,
                one_time_burst: 0,
                refill_time_ms: 100,
            }),
            ops: None,
        };
        let name = format!("rl-rm-{}", engine_tag(engine));
        let mut d = LimitedDrive::new(&name, engine, limits);
        for _ in 0..4 {
            d.submit(MIB);
        }
        while d.done() < 2 {
            d.wait_irq(Duration::from_millis(50));
        }
        assert!(d.outstanding() > 0 && d.limiter.lock().unwrap().is_blocked());
        let t = Instant::now();
        d.limiter
            .lock()
            .unwrap()
            .update(BucketChange::Remove, BucketChange::Keep);
        for _ in 0..60 {
            if d.outstanding() >= 8 {
                d.wait_irq(Duration::from_millis(50));
            }
            d.submit(MIB);
        }
        assert!(d.drained(Duration::from_secs(10)));
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(1600),
            "{engine:?}: 64 MiB took {took:?} after the limit was removed"
        );
        assert_eq!(d.limiter.lock().unwrap().config(), LimiterConfig::default());
    }
}

#[test]
fn pausing_while_blocked_holds_the_requests_and_resuming_serves_them() {
    for engine in usable_engines() {
        let name = format!("rl-pause-{}", engine_tag(engine));
        let mut d = LimitedDrive::new(&name, engine, slow_bandwidth());
        d.submit(MIB);
        for _ in 0..8 {
            d.submit(4096);
        }
        while d.done() < 1 {
            d.wait_irq(Duration::from_millis(50));
        }
        d.blk.pause().unwrap();
        let held = d.done();
        // Only the worker pays the debt: it stays while paused.
        assert!(d.limiter.lock().unwrap().is_blocked(), "{engine:?}");
        assert!(held < 9, "{engine:?}: all done before the pause");
        let states = d.blk.queue_states().unwrap();
        assert_eq!(
            states[0].next_avail, held,
            "{engine:?}: the rest are still in the ring"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(d.done(), held, "{engine:?}: nothing moves while paused");
        d.blk.resume();
        assert!(d.drained(Duration::from_secs(10)), "{engine:?}: all served");
        assert_eq!(d.drv.status(), S_OK);
    }
}

#[test]
fn a_worker_restarted_while_blocked_takes_what_was_left_in_the_ring() {
    for engine in usable_engines() {
        let name = format!("rl-swap-{}", engine_tag(engine));
        let mut d = LimitedDrive::new(&name, engine, slow_bandwidth());
        d.submit(MIB);
        for _ in 0..3 {
            d.submit(4096);
        }
        while d.done() < 1 {
            d.wait_irq(Duration::from_millis(50));
        }
        d.blk.pause().unwrap();
        assert!(d.suppressed() && d.outstanding() > 0, "{engine:?}");
        // The debt goes while no worker runs; the driver, told not to, does not kick.
        d.limiter
            .lock()
            .unwrap()
            .update(BucketChange::Remove, BucketChange::Keep);
        let c = cfg(&d.path, false, engine);
        d.blk.replace_disk(&c).unwrap();
        assert!(Arc::ptr_eq(d.blk.limiter().unwrap(), &d.limiter));
        assert!(d.drained(Duration::from_secs(5)), "{engine:?}: served");
        assert_eq!(d.drv.status(), S_OK);
    }
}
