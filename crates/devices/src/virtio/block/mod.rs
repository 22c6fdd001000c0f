//! virtio-blk (virtio 1.2, section 5.2): one request queue served on a worker thread, by
//! synchronous I/O ([`Engine::Thread`]) or io_uring ([`Engine::IoUring`], raw images).
//!
//! - `request` turns a descriptor chain into a validated request (everything the guest
//!   controls is checked there);
//! - `disk` is the image: any [`block::BlockDev`] (qcow2 ...), and for raw images the file
//!   itself, so data moves between the file and guest memory without a bounce copy;
//! - `engine_thread` and `engine_uring` are the two [`QueueHandler`]s;
//! - `limit` is what both do for a drive with a rate limiter ([`BlockConfig::limiter`]).
//!
//! [`QueueHandler`]: super::worker::QueueHandler

mod disk;
mod engine_thread;
mod engine_uring;
mod limit;
#[doc(hidden)]
pub mod request;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk as vb;
use virtio_queue::QueueT;

use super::worker::WorkerSlot;
use super::{
    device_type, features, ActivateError, ActiveQueue, GuestMemoryMmap, Interrupt, VirtioDevice,
};
use crate::rate_limiter::RateLimiter;
use disk::Disk;
use request::Limits;

pub use block::{file_identity, FileIdentity};
pub use request::ID_BYTES;

/// The size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request (`seg_max`): a full queue minus header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most bytes per data segment (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data bytes per read or write: what `seg_max` segments of `size_max` hold.
pub const MAX_DATA_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// `max_discard_sectors` (4 GiB): punching a hole is cheap.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 23;
/// `max_discard_seg`.
pub const MAX_DISCARD_SEG: u32 = 32;
/// `max_write_zeroes_sectors` (1 GiB): bounded, because a filesystem that cannot punch
/// holes gets the zeroes written.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 21;
/// `max_write_zeroes_seg`.
pub const MAX_WRITE_ZEROES_SEG: u32 = 32;
/// `discard_sector_alignment` in sectors (4 KiB, the usual filesystem block).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// virtio-blk feature bits (virtio 1.2, section 5.2.3).
pub mod blk_features {
    use virtio_bindings::virtio_blk as vb;
    pub const SIZE_MAX: u64 = 1 << vb::VIRTIO_BLK_F_SIZE_MAX;
    pub const SEG_MAX: u64 = 1 << vb::VIRTIO_BLK_F_SEG_MAX;
    pub const RO: u64 = 1 << vb::VIRTIO_BLK_F_RO;
    pub const BLK_SIZE: u64 = 1 << vb::VIRTIO_BLK_F_BLK_SIZE;
    pub const FLUSH: u64 = 1 << vb::VIRTIO_BLK_F_FLUSH;
    pub const DISCARD: u64 = 1 << vb::VIRTIO_BLK_F_DISCARD;
    pub const WRITE_ZEROES: u64 = 1 << vb::VIRTIO_BLK_F_WRITE_ZEROES;
}

/// Offsets in the configuration space (`struct virtio_blk_config`).
pub mod config_offset {
    pub const CAPACITY: usize = 0;
    pub const SIZE_MAX: usize = 8;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
    /// Bytes of the configuration space we fill (up to the secure-erase fields).
    pub const SIZE: usize = 60;
}

/// Host page cache use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Through the host page cache; FLUSH is an fdatasync.
    #[default]
    Writeback,
    /// O_DIRECT (raw images only); FLUSH is still an fdatasync (the disk's own cache).
    None,
}

/// How requests are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// Synchronous system calls on the device's worker thread.
    #[default]
    Thread,
    /// io_uring (raw images; other images, or a kernel without io_uring, use `Thread`).
    IoUring,
}

/// What to attach.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub format: block::Format,
    pub read_only: bool,
    pub cache: CacheMode,
    /// The serial GET_ID returns (at most 20 bytes).
    pub id: String,
    pub engine: Engine,
    /// Offer FLUSH (guest flushes become `fdatasync`); without it the guest believes the
    /// disk has no volatile cache (Firecracker's `cache_type: Unsafe`).
    pub flush: bool,
    /// Limits the drive's requests: each costs its data bytes (reads and writes; flush,
    /// discard, write zeroes and GET_ID cost none) and one operation. Shared with the VMM,
    /// which may change the limits while the guest runs ([`RateLimiter::update`]); `None`
    /// limits nothing, at no cost, and cannot be given limits later: a VMM that may set
    /// limits on a running drive gives it a limiter (an empty [`LimiterConfig`]) from the
    /// start. [`Block::replace_disk`] keeps the drive's limiter and ignores this.
    ///
    /// [`LimiterConfig`]: crate::rate_limiter::LimiterConfig
    pub limiter: Option<Arc<Mutex<RateLimiter>>>,
}

/// Why a disk cannot be attached. Every message names the image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{}: cannot open disk image: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: is a directory, not a disk image", path.display())]
    IsDirectory { path: PathBuf },
    #[error("{}: not a regular file (block devices and other special files are not supported)", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: raw image size {size} is not a multiple of 512 bytes", path.display())]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error("{}: cache=none needs O_DIRECT, which this file's filesystem does not support ({source}); use cache=writeback", path.display())]
    NoDirectIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cache=none is supported for raw images only", path.display())]
    CacheNoneNeedsRaw { path: PathBuf },
    #[error("{}: disk id {id:?} is longer than 20 bytes", path.display())]
    IdTooLong { path: PathBuf, id: String },
    #[error("cannot open disk image: {0}")]
    Image(#[from] block::Error),
    #[error("cannot restart the device worker: {source}")]
    Worker {
        #[source]
        source: ActivateError,
    },
}

/// What an activated device was given, kept to restart its worker (a disk swap).
#[derive(Debug)]
struct Activation {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    acked_features: u64,
}

/// The virtio-blk device.
#[derive(Debug)]
pub struct Block {
    name: String,
    disk: Arc<Disk>,
    engine: Engine,
    avail_features: u64,
    config: [u8; config_offset::SIZE],
    worker: WorkerSlot,
    activation: Option<Activation>,
    limiter: Option<Arc<Mutex<RateLimiter>>>,
}

impl Block {
    /// Opens the image `cfg` names for device `name` ("blk0": logs, thread name). Fails,
    /// naming the image, for a missing, unreadable or special file, a raw image whose size
    /// is not whole sectors, cache=none on a filesystem without O_DIRECT, a serial longer
    /// than 20 bytes. An io_uring engine that this kernel cannot run becomes `Thread`, with a
    /// warning.
    pub fn open(name: &str, cfg: &BlockConfig) -> Result<Block, BlockError> {
        let disk = Disk::open(cfg)?;
        let engine = usable_engine(cfg, &disk);
        let mut blk = Block::with_disk(name, disk, engine, cfg.flush);
        blk.limiter = cfg.limiter.clone();
        Ok(blk)
    }

    /// A device over an image opened elsewhere (any format, through [`block::BlockDev`]; data
    /// goes through a bounce buffer), served by the thread engine.
    pub fn from_dev(
        name: &str,
        dev: Arc<dyn block::BlockDev>,
        read_only: bool,
        id: &str,
    ) -> Result<Block, BlockError> {
        let serial = disk::serial(dev.path(), id)?;
        let disk = Disk::from_dev(dev, read_only, serial)?;
        Ok(Block::with_disk(name, disk, Engine::Thread, true))
    }

    fn with_disk(name: &str, disk: Disk, engine: Engine, flush: bool) -> Block {
        let mut avail_features = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | blk_features::SIZE_MAX
            | blk_features::SEG_MAX
            | blk_features::BLK_SIZE;
        if flush {
            avail_features |= blk_features::FLUSH;
        }
        if disk.read_only() {
            avail_features |= blk_features::RO;
        } else {
            avail_features |= blk_features::DISCARD | blk_features::WRITE_ZEROES;
        }
        let config = config_space(&disk);
        Block {
            name: name.to_owned(),
            disk: Arc::new(disk),
            engine,
            avail_features,
            config,
            worker: WorkerSlot::default(),
            activation: None,
            limiter: None,
        }
    }

    /// Serves the image `cfg` names from now on, in place of the current one (the
    /// drive's read-only setting and its rate limiter stay). In-flight requests
    /// complete on the old image first; the queues continue where they were. The caller
    /// tells the driver that the configuration (the capacity) changed.
    pub fn replace_disk(&mut self, cfg: &BlockConfig) -> Result<(), BlockError> {
        let cfg = BlockConfig {
            read_only: self.disk.read_only(),
            ..cfg.clone()
        };
        let disk = Disk::open(&cfg)?;
        let engine = usable_engine(&cfg, &disk);
        let queues = self.worker.stop();
        tracing::info!(
            "{}: now serving {} ({} sectors)",
            self.name,
            cfg.path.display(),
            disk.capacity()
        );
        self.disk = Arc::new(disk);
        self.engine = engine;
        self.config = config_space(&self.disk);
        if let Some(queues) = queues {
            self.start_worker(queues)
                .map_err(|source| BlockError::Worker { source })?;
        }
        Ok(())
    }

    /// Starts the worker of an activated device on `queues`.
    fn start_worker(&mut self, queues: Vec<ActiveQueue>) -> Result<(), ActivateError> {
        let Some(a) = &self.activation else {
            return Ok(());
        };
        let limits = self.limits(a.acked_features);
        let disk = self.disk.clone();
        let (mem, interrupt) = (a.mem.clone(), a.interrupt.clone());
        let limiter = self.limiter.clone();
        if self.engine == Engine::IoUring {
            let entries = queues[0].queue.size().max(1);
            match engine_uring::UringHandler::new(
                disk.clone(),
                limits.clone(),
                entries,
                limiter.clone(),
            ) {
                Ok(h) => {
                    self.worker.start(&self.name, h, mem, interrupt, queues)?;
                    return Ok(());
                }
                Err(e) => tracing::warn!(
                    "{}: cannot set up io_uring ({e}); using the thread engine",
                    disk.path().display()
                ),
            }
        }
        let h = engine_thread::ThreadHandler::new(disk, limits, limiter)?;
        self.worker.start(&self.name, h, mem, interrupt, queues)?;
        Ok(())
    }

    /// The (device, inode) identity of the image, to refuse one file attached twice writable.
    pub fn file_identity(&self) -> FileIdentity {
        self.disk.identity()
    }

    pub fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    /// The engine requests will run on (after any fallback).
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The drive's rate limiter ([`BlockConfig::limiter`]), for the VMM to change its limits
    /// ([`RateLimiter::update`]): the running worker follows at its next request or refill,
    /// without a restart. `None` for a drive opened without one, which stays unlimited
    /// (limits cannot be added to it; give every drive the API may limit a limiter at
    /// boot, an empty one if it starts unlimited).
    pub fn limiter(&self) -> Option<&Arc<Mutex<RateLimiter>>> {
        self.limiter.as_ref()
    }

    fn limits(&self, acked: u64) -> Limits {
        Limits {
            capacity: self.disk.capacity(),
            max_descriptors: SEG_MAX as usize + 2,
            max_data_bytes: MAX_DATA_BYTES,
            read_only: self.disk.read_only(),
            discard: acked & blk_features::DISCARD != 0,
            write_zeroes: acked & blk_features::WRITE_ZEROES != 0,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: MAX_DISCARD_SEG,
            max_write_zeroes_sectors: MAX_WRITE_ZEROES_SECTORS,
            max_write_zeroes_seg: MAX_WRITE_ZEROES_SEG,
        }
    }
}

/// The engine `cfg` asks for, or `Thread` (with a warning) where io_uring cannot serve.
fn usable_engine(cfg: &BlockConfig, disk: &Disk) -> Engine {
    if cfg.engine != Engine::IoUring {
        return cfg.engine;
    }
    if disk.raw_fd().is_none() {
        tracing::warn!(
            "{}: the io_uring engine serves raw images only; using the thread engine",
            cfg.path.display()
        );
        return Engine::Thread;
    }
    if let Err(e) = engine_uring::probe() {
        tracing::warn!(
            "{}: io_uring is not usable here ({e}); using the thread engine",
            cfg.path.display()
        );
        return Engine::Thread;
    }
    Engine::IoUring
}

/// The configuration space (virtio 1.2, section 5.2.4), little-endian.
fn config_space(disk: &Disk) -> [u8; config_offset::SIZE] {
    use config_offset as o;
    let mut c = [0u8; o::SIZE];
    let mut put32 = |off: usize, v: u32| c[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put32(o::SIZE_MAX, SIZE_MAX);
    put32(o::SEG_MAX, SEG_MAX);
    put32(o::BLK_SIZE, disk.blk_size());
    put32(o::MAX_DISCARD_SECTORS, MAX_DISCARD_SECTORS);
    put32(o::MAX_DISCARD_SEG, MAX_DISCARD_SEG);
    put32(
        o::DISCARD_SECTOR_ALIGNMENT,
        DISCARD_SECTOR_ALIGNMENT.max(disk.blk_size() >> request::SECTOR_SHIFT),
    );
    put32(o::MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SECTORS);
    put32(o::MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SEG);
    c[o::CAPACITY..o::CAPACITY + 8].copy_from_slice(&disk.capacity().to_le_bytes());
    c[o::WRITE_ZEROES_MAY_UNMAP] = 1;
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_window(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        self.reset();
        if queues.is_empty() {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.activation = Some(Activation {
            mem,
            interrupt,
            acked_features,
        });
        self.start_worker(queues)
    }

    fn reset(&mut self) {
        self.worker.retire();
        self.activation = None;
    }

    fn worker_slot(&self) -> Option<&WorkerSlot> {
        Some(&self.worker)
    }
}

/// Request type numbers (for tests and logs).
pub mod request_type {
    use super::vb;
    pub const IN: u32 = vb::VIRTIO_BLK_T_IN;
    pub const OUT: u32 = vb::VIRTIO_BLK_T_OUT;
    pub const FLUSH: u32 = vb::VIRTIO_BLK_T_FLUSH;
    pub const GET_ID: u32 = vb::VIRTIO_BLK_T_GET_ID;
    pub const DISCARD: u32 = vb::VIRTIO_BLK_T_DISCARD;
    pub const WRITE_ZEROES: u32 = vb::VIRTIO_BLK_T_WRITE_ZEROES;
}

#[cfg(test)]
mod tests;
