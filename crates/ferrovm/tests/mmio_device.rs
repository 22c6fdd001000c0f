//! MMIO reads and writes from a guest against a test device on the MMIO bus (through the
//! vmm library, which lets a test attach its own device).

mod common;

use std::sync::{Arc, Mutex};

use devices::{BusDevice, DeviceAction};
use iced_x86::code_asm::*;
use vmm::config::{EntryMode, Payload, VmConfig};
use vmm::VmStop;

const TESTDEV_BASE: u64 = 0xd000_0000;

#[derive(Default)]
struct TestDevice {
    writes: Vec<(u64, Vec<u8>)>,
    reads: Vec<(u64, usize)>,
}

impl BusDevice for TestDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        // Register 0 holds 0x2a; others read their offset.
        let v: u64 = if offset == 0 { 0x2a } else { offset };
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        self.writes.push((offset, data.to_vec()));
        DeviceAction::None
    }
}

#[test]
fn guest_reads_and_writes_test_device() {
    if !common::kvm_available("guest_reads_and_writes_test_device") {
        return;
    }
    let mut a = CodeAssembler::new(64).unwrap();
    a.mov(rbx, TESTDEV_BASE).unwrap();
    a.mov(dword_ptr(rbx + 8), 0x1234_5678u32).unwrap(); // 4-byte write at offset 8
    a.mov(rax, 0x1122_3344_5566_7788u64).unwrap();
    a.mov(qword_ptr(rbx + 0x10), rax).unwrap(); // 8-byte write at offset 0x10
    a.mov(byte_ptr(rbx + 0xfff), 0x5au32).unwrap(); // last byte of the region
    a.mov(eax, dword_ptr(rbx)).unwrap(); // 4-byte read of register 0 -> 0x2a
    a.mov(byte_ptr(rbx + 0x1000), 1u32).unwrap(); // just past the device: unclaimed
    a.out(0xf4u32, al).unwrap(); // exit status = value read
    let image = common::write_image("mmio", &a.assemble(0x10000).unwrap());

    let dev = Arc::new(Mutex::new(TestDevice::default()));
    let config = VmConfig {
        mem_size: 16 << 20,
        payload: Some(Payload::Raw {
            path: image,
            load_addr: 0x10000,
            mode: EntryMode::Long,
        }),
        console_input: false,
        kernel_cache: false,
        ..VmConfig::empty()
    };
    let outcome = vmm::run_with(
        &config,
        vec![("testdev".into(), TESTDEV_BASE, 0x1000, dev.clone())],
    )
    .unwrap();
    assert_eq!(
        outcome.stop,
        VmStop::Device(devices::StopReason::DebugExit(0x2a))
    );
    let d = dev.lock().unwrap();
    assert_eq!(
        d.writes,
        vec![
            (8, 0x1234_5678u32.to_le_bytes().to_vec()),
            (0x10, 0x1122_3344_5566_7788u64.to_le_bytes().to_vec()),
            (0xfff, vec![0x5a]),
        ]
    );
    assert_eq!(d.reads, vec![(0, 4)]);
    let t = &outcome.stats.total;
    assert_eq!(t.mmio["testdev@0xd0000000"].writes.count, 3);
    assert_eq!(t.mmio["testdev@0xd0000000"].reads.count, 1);
    assert_eq!(t.unclaimed_mmio_writes, 1);
}
