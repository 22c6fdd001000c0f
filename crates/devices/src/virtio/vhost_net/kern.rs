//! One in-kernel vhost-net instance (`/dev/vhost-net`, `include/uapi/linux/vhost.h`): the
//! rx and tx vrings of one queue pair, set up through the rust-vmm `vhost` crate.
//!
//! The ring addresses the kernel is given are host virtual addresses that it reads and
//! writes directly (`copy_{from,to}_user`), not through its memory table: a ring that
//! crossed from one guest memory region into whatever the VMM has mapped behind it would
//! let the guest make the kernel touch VMM memory. [`vring_host`] therefore refuses any
//! ring that does not lie whole inside one region, before the crate (which only checks
//! that each ring's first and last bytes are guest memory) is called. Buffers the
//! descriptors point at are translated by the kernel through the memory table, which
//! refuses addresses outside guest memory itself.

use std::fs::File;
use std::io;
use std::sync::Arc;

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as KernNet;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueState;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::VhostNetError;
use crate::virtio::GuestMemoryMmap;

/// The vhost-net character device.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

/// The receive vring of an instance (`VHOST_NET_VQ_RX`).
pub const VRING_RX: usize = 0;
/// The transmit vring of an instance (`VHOST_NET_VQ_TX`).
pub const VRING_TX: usize = 1;

/// The most memory regions handed to the kernel (the crate's limit; the kernel's
/// `vhost.max_mem_regions` defaults to 64 and refuses more with `E2BIG`).
pub const MAX_MEMORY_REGIONS: usize = vhost::VHOST_MAX_MEMORY_REGIONS;

/// Alignment of a split ring's parts (virtio 1.2, 2.7): descriptor table, available
/// ring, used ring.
pub const DESC_ALIGN: u64 = 16;
pub const AVAIL_ALIGN: u64 = 2;
pub const USED_ALIGN: u64 = 4;

/// Offset of `idx` in the used ring (after `flags`).
pub const USED_IDX_OFFSET: u64 = 2;

/// Why a vring cannot be handed to the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("its size {size} is not a power of two from 1 to {max}")]
    BadSize { size: u16, max: u16 },
    #[error("its {ring} at {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        ring: &'static str,
        addr: u64,
        align: u64,
    },
    #[error("its {ring} at {addr:#x} ({len} bytes) is not inside one guest memory region")]
    OutsideMemory {
        ring: &'static str,
        addr: u64,
        len: u64,
    },
}

/// Host virtual addresses of a vring's three parts, each checked to lie, whole, inside
/// one guest memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringHost {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// Bytes of a split ring's descriptor table, available ring and used ring with `size`
/// entries, the event-index words included (virtio 1.2, 2.7).
pub fn ring_sizes(size: u16) -> (u64, u64, u64) {
    let n = u64::from(size);
    (16 * n, 6 + 2 * n, 6 + 8 * n)
}

/// The host address of `len` bytes of guest memory at `addr`, if they are all in one
/// region.
pub fn host_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Option<u64> {
    let (region, offset) = mem.to_region_addr(GuestAddress(addr))?;
    let end = offset.raw_value().checked_add(len)?;
    if end > region.len() {
        return None;
    }
    region.get_host_address(offset).ok().map(|p| p as u64)
}

/// Checks the vring of `q` (size, alignment, each part inside one region) and translates
/// it to host addresses.
pub fn vring_host(mem: &GuestMemoryMmap, q: &QueueState) -> Result<VringHost, RingError> {
    if q.size == 0 || !q.size.is_power_of_two() || q.size > q.max_size {
        return Err(RingError::BadSize {
            size: q.size,
            max: q.max_size,
        });
    }
    let (desc_len, avail_len, used_len) = ring_sizes(q.size);
    let part = |ring: &'static str, addr: u64, len: u64, align: u64| {
        if !addr.is_multiple_of(align) {
            return Err(RingError::Misaligned { ring, addr, align });
        }
        host_range(mem, addr, len).ok_or(RingError::OutsideMemory { ring, addr, len })
    };
    Ok(VringHost {
        desc: part("descriptor table", q.desc_table, desc_len, DESC_ALIGN)?,
        avail: part("available ring", q.avail_ring, avail_len, AVAIL_ALIGN)?,
        used: part("used ring", q.used_ring, used_len, USED_ALIGN)?,
    })
}

/// The memory table for `VHOST_SET_MEM_TABLE`: every region of guest memory with its
/// host mapping.
pub fn memory_regions(mem: &GuestMemoryMmap) -> Vec<VhostUserMemoryRegionInfo> {
    mem.iter()
        .filter_map(|r| {
            let host = r.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()?;
            Some(VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().raw_value(),
                memory_size: r.len(),
                userspace_addr: host as u64,
                // Anonymous memory: no file for the kernel to map (vhost-user needs one).
                mmap_handle: -1,
                ..Default::default()
            })
        })
        .collect()
}

/// The `io::Error` inside a `vhost` crate error (or one describing it).
pub fn io_error(e: vhost::Error) -> io::Error {
    match e {
        vhost::Error::IoctlError(e) | vhost::Error::VhostOpen(e) | vhost::Error::IOError(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
    }
}

/// `/dev/vhost-net` could not be opened: which error says what to do.
pub fn open_error(source: io::Error) -> VhostNetError {
    match source.raw_os_error() {
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => VhostNetError::Unavailable {
            source,
            taps: Vec::new(),
        },
        Some(libc::EACCES | libc::EPERM) => VhostNetError::Permission {
            source,
            taps: Vec::new(),
        },
        _ => VhostNetError::Open { source },
    }
}

fn open_kern(mem: Arc<GuestMemoryMmap>) -> Result<KernNet<Arc<GuestMemoryMmap>>, VhostNetError> {
    KernNet::new(mem).map_err(|e| open_error(io_error(e)))
}

/// The features the kernel's vhost-net offers (`VHOST_GET_FEATURES` on a fresh instance,
/// which needs no owner and no memory).
pub fn probe_features() -> Result<u64, VhostNetError> {
    let net = open_kern(Arc::new(GuestMemoryMmap::default()))?;
    net.get_features().map_err(|e| VhostNetError::Ioctl {
        name: VHOST_NET_PATH.into(),
        op: "VHOST_GET_FEATURES",
        pair: None,
        source: io_error(e),
    })
}

/// One vring as the device hands it to [`Instance::set_up`].
pub struct Vring<'a> {
    /// `VRING_RX` or `VRING_TX`.
    pub index: usize,
    /// The queue as the driver set it up (size, addresses, next available index).
    pub state: &'a QueueState,
    /// Written when the driver notifies the queue (KVM's ioeventfd).
    pub kick: &'a EventFd,
}

/// One `/dev/vhost-net` descriptor, owned by this process: the rings of one queue pair.
/// Dropping it closes the descriptor, which stops the kernel's work on the rings.
pub struct Instance {
    net: KernNet<Arc<GuestMemoryMmap>>,
    name: String,
    pair: usize,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.name)
            .field("pair", &self.pair)
            .finish()
    }
}

impl Instance {
    /// Opens a new instance for queue pair `pair` of device `name` over `mem`.
    pub fn open(name: &str, pair: usize, mem: Arc<GuestMemoryMmap>) -> Result<Self, VhostNetError> {
        Ok(Instance {
            net: open_kern(mem)?,
            name: name.into(),
            pair,
        })
    }

    fn ioctl<T>(&self, op: &'static str, r: vhost::Result<T>) -> Result<T, VhostNetError> {
        r.map_err(|e| VhostNetError::Ioctl {
            name: self.name.clone(),
            op,
            pair: Some(self.pair),
            source: io_error(e),
        })
    }

    /// Takes ownership (`VHOST_SET_OWNER`: the kernel starts its worker for this process),
    /// sets the negotiated ring features, the memory table and both vrings; `call` is
    /// written by the kernel when it wants the guest interrupted. The backend is not set:
    /// the kernel does nothing until [`Instance::set_backend`].
    pub fn set_up(
        &self,
        mem: &GuestMemoryMmap,
        features: u64,
        regions: &[VhostUserMemoryRegionInfo],
        vrings: &[Vring<'_>],
        call: &EventFd,
    ) -> Result<(), VhostNetError> {
        // Check every ring before the kernel is told anything.
        for v in vrings {
            vring_host(mem, v.state).map_err(|why| VhostNetError::Ring {
                name: self.name.clone(),
                queue: 2 * self.pair + v.index,
                why,
            })?;
        }
        if regions.is_empty() || regions.len() > MAX_MEMORY_REGIONS {
            return Err(VhostNetError::MemoryRegions {
                name: self.name.clone(),
                count: regions.len(),
            });
        }
        self.ioctl("VHOST_SET_OWNER", self.net.set_owner())?;
        self.ioctl("VHOST_SET_FEATURES", self.net.set_features(features))?;
        self.ioctl("VHOST_SET_MEM_TABLE", self.net.set_mem_table(regions))?;
        for v in vrings {
            let q = v.state;
            self.ioctl(
                "VHOST_SET_VRING_NUM",
                self.net.set_vring_num(v.index, q.size),
            )?;
            let config = VringConfigData {
                queue_max_size: q.max_size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: q.desc_table,
                used_ring_addr: q.used_ring,
                avail_ring_addr: q.avail_ring,
                log_addr: None,
            };
            // The crate translates the guest addresses through the same regions, to the
            // host addresses `vring_host` checked above.
            self.ioctl(
                "VHOST_SET_VRING_ADDR",
                self.net.set_vring_addr(v.index, &config),
            )?;
            self.ioctl(
                "VHOST_SET_VRING_BASE",
                self.net.set_vring_base(v.index, q.next_avail),
            )?;
            self.ioctl(
                "VHOST_SET_VRING_KICK",
                self.net.set_vring_kick(v.index, v.kick),
            )?;
            self.ioctl(
                "VHOST_SET_VRING_CALL",
                self.net.set_vring_call(v.index, call),
            )?;
        }
        Ok(())
    }

    /// Points both vrings at the tap queue `tap` (the kernel starts moving frames), or at
    /// none (`None`: the kernel finishes what it was doing and stops touching the rings and
    /// guest memory before this returns).
    pub fn set_backend(&self, tap: Option<&File>) -> Result<(), VhostNetError> {
        let rx = self.ioctl("VHOST_NET_SET_BACKEND", self.net.set_backend(VRING_RX, tap));
        let tx = self.ioctl("VHOST_NET_SET_BACKEND", self.net.set_backend(VRING_TX, tap));
        rx.and(tx)
    }

    /// The next available index the kernel would take from `vring`
    /// (`VHOST_GET_VRING_BASE`); meaningful while no backend is set.
    pub fn vring_base(&self, vring: usize) -> Result<u16, VhostNetError> {
        let base = self.ioctl("VHOST_GET_VRING_BASE", self.net.get_vring_base(vring))?;
        // A split ring's index is 16 bits; the kernel keeps it in the low half.
        Ok(base as u16)
    }
}
