//! `mmio_transport`: register reads and writes in any order, at any offset and width,
//! against the virtio-mmio transport with a checking fake device behind it (or the real
//! entropy device, whose worker starts and stops as the guest pleases), plus snapshot
//! states (postcard bytes) restored into it.
//!
//! The fake device checks what the transport promises a device: it is activated only
//! when not already active, with every queue ready, inside guest memory and of a valid
//! size, with features it offered (VERSION_1 among them).

use std::sync::Arc;

use devices::virtio::mmio::{regs, status, MmioTransport, TransportState};
use devices::virtio::rng::Rng;
use devices::virtio::{
    features, ActivateError, ActiveQueue, GuestMemoryMmap, Interrupt, VirtioDevice,
};
use devices::BusDevice;
use virtio_queue::{QueueState, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::driver::guest_memory;
use crate::Input;

const MEM: usize = 0x2_0000;
const OFFERED: u64 = features::VERSION_1 | features::RING_EVENT_IDX | (1 << 5) | (1 << 40);

/// A device that checks how the transport treats it.
struct Checker {
    sizes: Vec<u16>,
    mem: GuestMemoryMmap,
    active: bool,
    fail_activation: bool,
    live: Vec<QueueState>,
    config: [u8; 16],
}

impl VirtioDevice for Checker {
    fn device_type(&self) -> u32 {
        42
    }
    fn name(&self) -> &str {
        "checker"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn avail_features(&self) -> u64 {
        OFFERED
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get_mut(o))
            {
                *slot = *b;
            }
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
        acked: u64,
    ) -> Result<(), ActivateError> {
        assert!(!self.active, "activated twice without a reset");
        assert_eq!(
            queues.len(),
            self.sizes.len(),
            "activated with a queue missing"
        );
        assert_eq!(
            acked & !OFFERED,
            0,
            "acked features {acked:#x} never offered"
        );
        assert_ne!(
            acked & features::VERSION_1,
            0,
            "activated without VERSION_1"
        );
        for (i, q) in queues.iter().enumerate() {
            let q = &q.queue;
            assert!(q.ready(), "queue {i} handed over not ready");
            assert!(q.is_valid(&self.mem), "queue {i} handed over invalid");
            assert!(
                q.size().is_power_of_two() && q.size() <= self.sizes[i],
                "queue {i} of size {} (max {})",
                q.size(),
                self.sizes[i]
            );
            assert_eq!(
                q.event_idx_enabled(),
                acked & features::RING_EVENT_IDX != 0,
                "queue {i}: event idx does not follow the features"
            );
        }
        if self.fail_activation {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.live = queues.iter().map(|q| q.queue.state()).collect();
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.active = false;
    }
    fn queue_states(&self) -> Result<Vec<QueueState>, String> {
        assert!(self.active, "queue states asked of an inactive device");
        Ok(self.live.clone())
    }
    fn device_state(&self) -> Vec<u8> {
        self.config[..4].to_vec()
    }
    fn restore_device_state(&mut self, state: &[u8]) -> Result<(), String> {
        if state.len() > 4 {
            return Err("too long".into());
        }
        self.config[..state.len()].copy_from_slice(state);
        Ok(())
    }
}

fn checker(inp: &mut Input<'_>, mem: &GuestMemoryMmap) -> Checker {
    let n = 1 + usize::from(inp.u8() % 4);
    let sizes = (0..n).map(|_| 1u16 << (inp.u8() % 16)).collect();
    Checker {
        sizes,
        mem: mem.clone(),
        active: false,
        fail_activation: inp.u8() == 0xfa,
        live: Vec::new(),
        config: [0; 16],
    }
}

/// Offsets the script names: one of the registers (most of the time) or any offset.
fn offset(inp: &mut Input<'_>) -> u64 {
    const REGS: [u64; 28] = [
        regs::MAGIC_VALUE,
        regs::VERSION,
        regs::DEVICE_ID,
        regs::VENDOR_ID,
        regs::DEVICE_FEATURES,
        regs::DEVICE_FEATURES_SEL,
        regs::DRIVER_FEATURES,
        regs::DRIVER_FEATURES_SEL,
        regs::QUEUE_SEL,
        regs::QUEUE_NUM_MAX,
        regs::QUEUE_NUM,
        regs::QUEUE_READY,
        regs::QUEUE_NOTIFY,
        regs::INTERRUPT_STATUS,
        regs::INTERRUPT_ACK,
        regs::STATUS,
        regs::QUEUE_DESC_LOW,
        regs::QUEUE_DESC_HIGH,
        regs::QUEUE_AVAIL_LOW,
        regs::QUEUE_AVAIL_HIGH,
        regs::QUEUE_USED_LOW,
        regs::QUEUE_USED_HIGH,
        regs::SHM_SEL,
        regs::SHM_LEN_LOW,
        regs::SHM_BASE_HIGH,
        regs::CONFIG_GENERATION,
        regs::CONFIG,
        regs::CONFIG + 8,
    ];
    let b = inp.u8();
    if b < 0xe0 {
        REGS[usize::from(b) % REGS.len()]
    } else {
        u64::from(inp.u16()) % 0x1000
    }
}

/// A value for a register: small and interesting values, ring addresses inside guest
/// memory, or anything.
fn value(inp: &mut Input<'_>) -> u32 {
    match inp.u8() % 4 {
        0 => u32::from(inp.u8()),
        1 => (u32::from(inp.u16()) << 4) % MEM as u32,
        _ => inp.u32(),
    }
}

fn play<D: VirtioDevice>(t: &mut MmioTransport<D>, inp: &mut Input<'_>) {
    for _ in 0..256 {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 8 {
            0..=3 => {
                let off = offset(inp);
                let v = value(inp).to_le_bytes();
                let w = if inp.u8() < 0xf0 {
                    4
                } else {
                    [1, 2, 3, 8][usize::from(inp.u8() % 4)]
                };
                let mut buf = [0u8; 8];
                buf[..4].copy_from_slice(&v);
                t.write(off, &buf[..w]);
            }
            4 | 5 => {
                let off = offset(inp);
                let w = if inp.u8() < 0xf0 {
                    4
                } else {
                    [1, 2, 3, 8][usize::from(inp.u8() % 4)]
                };
                let mut buf = [0u8; 8];
                t.read(off, &mut buf[..w]);
            }
            6 => {
                // A saved transport state from a file.
                let n = usize::from(inp.u16() % 512);
                let b = inp.bytes(n);
                if let Ok(s) = postcard::from_bytes::<TransportState>(b) {
                    let _ = t.restore_state(&s);
                }
            }
            _ => {
                // Save and put back what was saved (a snapshot round trip).
                if let Ok(s) = t.save_state() {
                    let _ = t.restore_state(&s);
                }
            }
        }
        // What the transport must never show.
        let mut b = [0u8; 4];
        t.read(regs::STATUS, &mut b);
        let st = u32::from_le_bytes(b);
        if st & status::DRIVER_OK != 0 {
            assert_ne!(
                st & status::FEATURES_OK,
                0,
                "DRIVER_OK without FEATURES_OK: {st:#x}"
            );
        }
        t.read(regs::MAGIC_VALUE, &mut b);
        assert_eq!(u32::from_le_bytes(b), devices::virtio::mmio::MAGIC);
    }
}

/// The `mmio_transport` target.
pub fn fuzz_mmio_transport(data: &[u8]) {
    let mut inp = Input::new(data);
    let mem = guest_memory(MEM);
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    if inp.u8() & 0x80 != 0 {
        let mut t = MmioTransport::new(Rng::new(), mem, irq).expect("transport");
        play(&mut t, &mut inp);
    } else {
        let dev = checker(&mut inp, &mem);
        let mut t = MmioTransport::new(dev, mem, irq).expect("transport");
        play(&mut t, &mut inp);
    }
}
