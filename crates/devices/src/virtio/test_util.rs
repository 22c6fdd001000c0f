//! The driver side of a split virtqueue, for tests: builds descriptor chains in guest
//! memory by hand (including malformed ones) and reads the used ring back.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::GuestMemoryMmap;

/// Descriptor flag: the chain continues at `next`.
pub const NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const INDIRECT: u16 = 4;

/// The largest queue [`DriverQueue`]'s layout holds (every device here uses at most 256).
pub const MAX_SIZE: u16 = 256;

/// Writes descriptor `index` of the table at `table` (the queue's or an indirect one).
pub fn write_desc(
    mem: &GuestMemoryMmap,
    table: u64,
    index: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let at = GuestAddress(table + 16 * u64::from(index));
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&raw, at).unwrap();
}

/// Blocks until `evt` is readable, then reads it. A generous bound makes a broken device
/// fail the test instead of hanging it; nothing depends on how long the device takes.
pub fn wait_readable(evt: &vmm_sys_util::eventfd::EventFd) {
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(evt),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, count 1.
    let n = unsafe { libc::poll(&mut pfd, 1, 120_000) };
    assert_eq!(n, 1, "no interrupt from the device");
    evt.read().unwrap();
}

/// A split queue in guest memory at fixed addresses.
pub struct DriverQueue {
    /// Number of entries.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    next_avail: u16,
}

impl DriverQueue {
    /// A queue of `size` (at most [`MAX_SIZE`]) entries: the descriptor table at `base`,
    /// the available ring at `base + 4 KiB`, the used ring at `base + 8 KiB` (12 KiB in all).
    pub fn new(size: u16, base: u64) -> Self {
        assert!(
            size <= MAX_SIZE,
            "queue size {size} does not fit the layout"
        );
        DriverQueue {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_avail: 0,
        }
    }

    /// The device-side queue, as the transport would hand it over.
    pub fn device_queue(&self, event_idx: bool) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_size(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index`.
    pub fn set_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        write_desc(mem, self.desc, index, addr, len, flags, next);
    }

    /// Writes a chain of `(addr, len, writable)` buffers into descriptors `first..`,
    /// linked in order, and returns the head index.
    pub fn chain(&self, mem: &GuestMemoryMmap, first: u16, bufs: &[(u64, u32, bool)]) -> u16 {
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = first + i as u16;
            let mut flags = if writable { WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= NEXT;
            }
            self.set_desc(mem, idx, addr, len, flags, idx + 1);
        }
        first
    }

    /// Makes chain `head` available to the device.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        mem.write_obj(self.next_avail, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Overwrites the available index (to simulate a hostile driver).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.next_avail = idx;
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `n`: (descriptor head, bytes written).
    pub fn used_elem(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(n % self.size);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}

/// Guest memory of `size` bytes at 0.
pub fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}
