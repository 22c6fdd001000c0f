//! A hostile virtio driver for the device targets: it brings a device up through its real
//! MMIO transport over small guest memory, then plays a fuzz-chosen script of descriptor
//! writes, available-ring updates, raw memory scribbles, notifications, config-space
//! accesses, resets and snapshots ([`run_script`]).
//!
//! Every queue lives at a fixed place (queue *i*: descriptor table at `i * QUEUE_STRIDE`,
//! available ring 4 KiB above, used ring 8 KiB above); buffers go in the data area above
//! [`DATA_BASE`]. Descriptor addresses and lengths are used raw unless the script asks for
//! them to be folded into the data area (the high flag bits, see [`FOLD_ADDR`]), so that
//! both wild and plausible chains are a few mutations away.
//!
//! A notification is followed by a wait for the device's worker to take it (bounded: a
//! worker that never does is a hang, and the target panics) and a pause/resume round trip,
//! which returns only once the handler finished, so that a script is close to
//! deterministic.

use std::time::{Duration, Instant};

use devices::virtio::mmio::{regs, status, MmioTransport, VirtioTransport};
use devices::virtio::{GuestMemoryMmap, VirtioDevice};
use devices::BusDevice;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::Input;

/// Guest memory of a device target.
pub const MEM_SIZE: usize = 0x4_0000;
/// Distance between two queues' layouts.
pub const QUEUE_STRIDE: u64 = 0x3000;
/// Start of the buffer area.
pub const DATA_BASE: u64 = 0x1_0000;
/// Size of the buffer area.
pub const DATA_LEN: u64 = MEM_SIZE as u64 - DATA_BASE;
/// Largest queue a script sets up (the devices offer 256; smaller keeps chains short).
pub const MAX_QUEUE: u16 = 256;
/// Descriptor flag bit (not a virtio flag, stripped before writing) asking for the address
/// to be folded into the data area.
pub const FOLD_ADDR: u16 = 0x8000;
/// Same, for the length: folded below 8 KiB.
pub const FOLD_LEN: u16 = 0x4000;
/// How long [`Driver::kick`] waits for a device's worker to pick up a notification.
pub const KICK_WAIT: Duration = Duration::from_millis(5);

/// virtio descriptor flags.
pub const NEXT: u16 = 1;
/// The device writes the buffer.
pub const WRITE: u16 = 2;
/// An indirect table.
pub const INDIRECT: u16 = 4;

/// Guest memory of `size` bytes at 0.
pub fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory")
}

/// A 16-byte split-ring descriptor.
pub fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..].copy_from_slice(&next.to_le_bytes());
    raw
}

/// Applies the script's folding bits to a descriptor's address and length and strips them.
pub fn fold(addr: u64, len: u32, flags: u16) -> (u64, u32, u16) {
    let addr = if flags & FOLD_ADDR != 0 {
        DATA_BASE + addr % DATA_LEN
    } else {
        addr
    };
    let len = if flags & FOLD_LEN != 0 {
        len % 0x2000
    } else {
        len
    };
    (addr, len, flags & !(FOLD_ADDR | FOLD_LEN))
}

/// The driver's view of one split queue.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    /// Entries.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// The driver's next available index.
    pub next_avail: u16,
}

impl Ring {
    /// Queue `index`'s fixed layout with `size` entries.
    pub fn at(index: usize, size: u16) -> Ring {
        let base = index as u64 * QUEUE_STRIDE;
        Ring {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_avail: 0,
        }
    }
}

/// A device behind its transport, and the driver's state.
pub struct Driver<D: VirtioDevice> {
    /// The transport (the device inside).
    pub t: MmioTransport<D>,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// One per queue the device has.
    pub rings: Vec<Ring>,
    /// Features the script lets the driver accept (of those offered).
    pub feature_mask: u64,
    /// Whether the last bring-up reached DRIVER_OK without NEEDS_RESET.
    pub live: bool,
    /// Where the next [`Op::Chain`] buffer goes (an offset in the data area).
    bump: u64,
}

impl<D: VirtioDevice> Driver<D> {
    /// `device` behind a transport over `mem`; queue sizes are `size_for(max)` per queue.
    pub fn new(device: D, mem: GuestMemoryMmap) -> Self {
        let irq = EventFd::new(EFD_NONBLOCK).expect("irq eventfd");
        let t = MmioTransport::new(device, mem.clone(), irq).expect("transport");
        Driver {
            t,
            mem,
            rings: Vec::new(),
            feature_mask: u64::MAX,
            live: false,
            bump: 0,
        }
    }

    /// Writes register `reg`.
    pub fn wr(&mut self, reg: u64, v: u32) {
        self.t.write(reg, &v.to_le_bytes());
    }

    /// Reads register `reg`.
    pub fn rd(&mut self, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(reg, &mut b);
        u32::from_le_bytes(b)
    }

    /// Resets the device and sets it up as a driver would: features (offered & mask, with
    /// VERSION_1), every queue with `size_exp` (log2, capped at the queue's maximum) entries
    /// at its fixed layout, DRIVER_OK. Returns whether the device runs.
    pub fn bring_up(&mut self, size_exp: u8) -> bool {
        self.wr(regs::STATUS, 0);
        self.wr(regs::STATUS, status::ACKNOWLEDGE);
        self.wr(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.wr(regs::DEVICE_FEATURES_SEL, 0);
        let lo = self.rd(regs::DEVICE_FEATURES);
        self.wr(regs::DEVICE_FEATURES_SEL, 1);
        let hi = self.rd(regs::DEVICE_FEATURES);
        let offered = u64::from(lo) | (u64::from(hi) << 32);
        let ack = offered & (self.feature_mask | devices::virtio::features::VERSION_1);
        self.wr(regs::DRIVER_FEATURES_SEL, 0);
        self.wr(regs::DRIVER_FEATURES, ack as u32);
        self.wr(regs::DRIVER_FEATURES_SEL, 1);
        self.wr(regs::DRIVER_FEATURES, (ack >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.wr(regs::STATUS, s);
        if self.rd(regs::STATUS) & status::FEATURES_OK == 0 {
            self.live = false;
            return false;
        }
        let n = self.t.device().queue_max_sizes().len();
        self.rings.clear();
        for i in 0..n {
            self.wr(regs::QUEUE_SEL, i as u32);
            let max = self.rd(regs::QUEUE_NUM_MAX) as u16;
            let size = (1u16 << (size_exp % 9)).min(max).min(MAX_QUEUE);
            let ring = Ring::at(i, size);
            // Fresh rings: zeroed tables and indices.
            let zero = vec![0u8; QUEUE_STRIDE as usize];
            let _ = self.mem.write_slice(&zero, GuestAddress(ring.desc));
            self.wr(regs::QUEUE_NUM, u32::from(size));
            for (reg, addr) in [
                (regs::QUEUE_DESC_LOW, ring.desc),
                (regs::QUEUE_AVAIL_LOW, ring.avail),
                (regs::QUEUE_USED_LOW, ring.used),
            ] {
                self.wr(reg, addr as u32);
                self.wr(reg + 4, (addr >> 32) as u32);
            }
            self.wr(regs::QUEUE_READY, 1);
            self.rings.push(ring);
        }
        self.wr(regs::STATUS, s | status::DRIVER_OK);
        let st = self.rd(regs::STATUS);
        self.live = st & status::DRIVER_OK != 0 && st & status::DEVICE_NEEDS_RESET == 0;
        self.live
    }

    fn ring(&self, q: u8) -> Option<Ring> {
        if self.rings.is_empty() {
            None
        } else {
            Some(self.rings[usize::from(q) % self.rings.len()])
        }
    }

    /// Writes descriptor `idx` of queue `q`'s table.
    pub fn set_desc(&mut self, q: u8, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let Some(r) = self.ring(q) else { return };
        let (addr, len, flags) = fold(addr, len, flags);
        let at = r.desc + 16 * u64::from(idx % r.size.max(1));
        let _ = self
            .mem
            .write_slice(&desc_bytes(addr, len, flags, next), GuestAddress(at));
    }

    /// Makes chain `head` of queue `q` available.
    pub fn publish(&mut self, q: u8, head: u16) {
        let Some(r) = self.ring(q) else { return };
        let i = usize::from(q) % self.rings.len();
        let slot = r.avail + 4 + 2 * u64::from(r.next_avail % r.size.max(1));
        let _ = self.mem.write_obj(head, GuestAddress(slot));
        let next = r.next_avail.wrapping_add(1);
        self.rings[i].next_avail = next;
        let _ = self.mem.write_obj(next, GuestAddress(r.avail + 2));
    }

    /// Sets queue `q`'s available index to anything.
    pub fn set_avail_idx(&mut self, q: u8, idx: u16) {
        let Some(r) = self.ring(q) else { return };
        let i = usize::from(q) % self.rings.len();
        self.rings[i].next_avail = idx;
        let _ = self.mem.write_obj(idx, GuestAddress(r.avail + 2));
    }

    /// Writes `bytes` at `addr`, clipped to guest memory.
    pub fn poke(&self, addr: u64, bytes: &[u8]) {
        let end = (addr + bytes.len() as u64).min(MEM_SIZE as u64);
        if addr < end {
            let _ = self
                .mem
                .write_slice(&bytes[..(end - addr) as usize], GuestAddress(addr));
        }
    }

    /// Builds a well-formed chain of buffers in the data area, heads it at descriptor
    /// `first` of queue `q`, and returns the head.
    pub fn chain(&mut self, q: u8, first: u16, inp: &mut Input<'_>) -> u16 {
        let Some(r) = self.ring(q) else { return 0 };
        let n = 1 + inp.u8() % 8;
        for k in 0..n {
            let len = u32::from(inp.u16() % 0x2001);
            let kind = inp.u8();
            let content = inp.short_bytes();
            let len = len.max(content.len() as u32);
            if self.bump + u64::from(len) > DATA_LEN {
                self.bump = 0;
            }
            let addr = DATA_BASE + self.bump;
            self.bump = (self.bump + u64::from(len) + 15) & !15;
            self.poke(addr, content);
            let idx = first.wrapping_add(u16::from(k)) % r.size.max(1);
            let mut flags = if kind & 1 != 0 { WRITE } else { 0 };
            if k + 1 < n {
                flags |= NEXT;
            }
            let next = first.wrapping_add(u16::from(k) + 1) % r.size.max(1);
            self.set_desc(q, idx, addr, len, flags, next);
        }
        first % r.size.max(1)
    }

    /// Notifies queue `q` and waits until the device's worker has handled it.
    pub fn kick(&mut self, q: u8) {
        let n = self.rings.len().max(1) as u32;
        let q = u32::from(q) % n;
        let before = self.t.counts().worker.notifications;
        self.wr(regs::QUEUE_NOTIFY, q);
        if !self.live {
            return;
        }
        // A queue no worker watches (an idle queue pair, a queue the features left out)
        // is never taken: wait a little only, then make sure whatever the worker does
        // finishes. A worker that hangs is caught by the pause (bounded) and by the
        // fuzzer's per-input timeout.
        let deadline = Instant::now() + KICK_WAIT;
        while self.t.counts().worker.notifications == before
            && self.rd(regs::STATUS) & status::DEVICE_NEEDS_RESET == 0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_micros(20));
        }
        self.settle();
    }

    /// Waits until the device's worker finished what it was doing (a pause/resume round
    /// trip). A worker that does not pause is hung.
    pub fn settle(&mut self) {
        if !self.live {
            return;
        }
        if let Err(e) = VirtioTransport::pause(&mut self.t) {
            panic!("hang: {}: {e}", self.t.name());
        }
        VirtioTransport::resume(&mut self.t);
    }

    /// Reads or writes the device's configuration space.
    pub fn config(&mut self, inp: &mut Input<'_>) {
        let off = regs::CONFIG + u64::from(inp.u8());
        let len = [1usize, 2, 4, 8][usize::from(inp.u8() % 4)];
        if inp.u8() & 1 != 0 {
            let v = inp.u64().to_le_bytes();
            self.t.write(off, &v[..len]);
        } else {
            let mut b = [0u8; 8];
            self.t.read(off, &mut b[..len]);
        }
    }

    /// A snapshot of the running device: pause, save the transport's state, resume.
    pub fn snapshot(&mut self) {
        if self.live {
            if let Err(e) = VirtioTransport::pause(&mut self.t) {
                panic!("hang: {}: {e}", self.t.name());
            }
        }
        let _ = self.t.save_state();
        if self.live {
            VirtioTransport::resume(&mut self.t);
        }
    }

    /// Resets the device (stopping its worker).
    pub fn shutdown(&mut self) {
        self.wr(regs::STATUS, 0);
        self.live = false;
    }
}

/// How many script operations one input may run (bounds a target's time per input).
pub const MAX_OPS: usize = 64;

/// Plays the rest of `inp` as a driver script on `d`; `extra(op, inp, d)` handles the
/// device-specific operations (numbered from 0), if any.
pub fn run_script<D: VirtioDevice>(
    d: &mut Driver<D>,
    inp: &mut Input<'_>,
    size_exp: u8,
    mut extra: impl FnMut(u8, &mut Input<'_>, &mut Driver<D>),
    extra_ops: u8,
) {
    const BASE_OPS: u8 = 11;
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8() % (BASE_OPS + extra_ops);
        match op {
            0 => {
                let (q, idx) = (inp.u8(), inp.u16());
                let (addr, len, flags, next) = (inp.u64(), inp.u32(), inp.u16(), inp.u16());
                d.set_desc(q, idx, addr, len, flags, next);
            }
            1 => {
                let (q, first) = (inp.u8(), inp.u16());
                let head = d.chain(q, first, inp);
                d.publish(q, head);
            }
            2 => {
                let (q, head) = (inp.u8(), inp.u16());
                d.publish(q, head);
            }
            3 => {
                let (q, idx) = (inp.u8(), inp.u16());
                d.set_avail_idx(q, idx);
            }
            4 => {
                let off = u64::from(inp.u32()) % DATA_LEN;
                let b = inp.short_bytes();
                d.poke(DATA_BASE + off, b);
            }
            5 => {
                let off = u64::from(inp.u32()) % MEM_SIZE as u64;
                let b = inp.short_bytes();
                d.poke(off, b);
            }
            6 => {
                // An entry of an indirect table in the data area.
                let slot = u64::from(inp.u16()) * 16 % DATA_LEN;
                let (addr, len, flags, next) = (inp.u64(), inp.u32(), inp.u16(), inp.u16());
                let (addr, len, flags) = fold(addr, len, flags);
                d.poke(DATA_BASE + slot, &desc_bytes(addr, len, flags, next));
            }
            7 => {
                let q = inp.u8();
                d.kick(q);
            }
            8 => d.config(inp),
            9 => {
                d.bring_up(size_exp);
            }
            10 => d.snapshot(),
            n => extra(n - BASE_OPS, inp, d),
        }
    }
}

/// The common start of a device script: a byte of feature mask bits (each bit lets the
/// driver accept one group of 8 feature bits) and the queue size exponent.
pub fn header(inp: &mut Input<'_>) -> (u64, u8) {
    let m = inp.u8();
    let mut mask = 0u64;
    for bit in 0..8 {
        if m & (1 << bit) != 0 {
            mask |= 0xff << (8 * bit);
        }
    }
    // Bit 0 of the mask byte inverted: most seeds accept everything.
    (!mask, inp.u8())
}
