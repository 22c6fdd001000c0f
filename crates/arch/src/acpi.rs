//! ACPI tables (acpi_tables crate): RSDP, XSDT, FADT (hardware-reduced, with sleep and
//! reset registers), MADT (one local APIC per vCPU, the IOAPIC, the ISA timer override)
//! and a DSDT declaring the S5 soft-off state, COM1, the i8042 keyboard controller and the
//! virtio-mmio devices. They let the guest find every vCPU and its devices, and power off or
//! reset.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};

use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, HIGH_MEMORY_START, IOAPIC_START, LAPIC_START, RSDP_START,
};

const OEM_ID: [u8; 6] = *b"FERROV";
const OEM_TABLE_ID: [u8; 8] = *b"FERROVM ";
const OEM_REVISION: u32 = 1;

/// IAPC_BOOT_ARCH: VGA not present.
const IAPC_NO_VGA: u16 = 1 << 2;
/// IAPC_BOOT_ARCH: CMOS RTC not present.
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

/// MADT flag: the machine also has dual 8259 PICs (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;

/// Errors building the tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// More vCPUs than 8-bit APIC ids allow.
    #[error("ACPI MADT: {0} vCPUs do not fit 8-bit local APIC ids (at most 255)")]
    TooManyCpus(u32),
    /// The tables outgrew the BIOS area.
    #[error("ACPI tables ({0} bytes) do not fit below 1 MiB")]
    TooLarge(u64),
}

fn align8(x: u64) -> u64 {
    (x + 7) & !7
}

/// COM1's I/O base, length and IRQ (declared in the DSDT).
const COM1_BASE: u16 = 0x3f8;
const COM1_LEN: u8 = 8;
const COM1_GSI: u32 = 4;

/// The i8042 keyboard controller's data and command/status ports (one byte each) and its
/// keyboard IRQ (declared in the DSDT).
const I8042_DATA_PORT: u16 = 0x60;
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_GSI: u32 = 1;

/// AML already encoded (a list of objects built one by one).
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// A virtio-mmio device as the DSDT declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmio {
    /// Base of its register window.
    pub base: u64,
    /// Size of the window.
    pub len: u64,
    /// Its interrupt (an IOAPIC pin, edge-triggered, active high).
    pub gsi: u32,
}

/// A virtio-mmio device is `LNRO0005` (the id Linux's virtio_mmio driver matches in ACPI)
/// with its window and interrupt; `_UID` is its index.
fn virtio_device(index: usize, dev: &VirtioMmio, out: &mut Vec<u8>) {
    let name = format!("V{index:03X}");
    let mem = aml::Memory32Fixed::new(true, dev.base as u32, dev.len as u32);
    let irq = aml::Interrupt::new(true, true, false, false, dev.gsi);
    let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid_value = index as u32;
    let uid = aml::Name::new("_UID".into(), &uid_value);
    let crs = aml::Name::new("_CRS".into(), &crs);
    aml::Device::new(name.as_str().into(), vec![&hid, &uid, &crs]).to_aml_bytes(out);
}

/// COM1: a PNP0501 device with its I/O range and interrupt.
///
/// COM1 must be described: with a hardware-reduced FADT Linux assumes no legacy PIC, so
/// ISA IRQs are not pre-mapped, and ttyS0's `request_irq(4)` fails unless ACPI declares
/// the interrupt (then opening the console fails and init has no stdin/stdout).
fn com1_device(out: &mut Vec<u8>) {
    let hid = aml::EISAName::new("PNP0501");
    let io = aml::IO::new(COM1_BASE, COM1_BASE, 1, COM1_LEN);
    let irq = aml::Interrupt::new(true, true, false, false, COM1_GSI);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let hid_name = aml::Name::new("_HID".into(), &hid);
    let uid_name = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    aml::Device::new("COM1".into(), vec![&hid_name, &uid_name, &crs_name]).to_aml_bytes(out);
}

/// The i8042 keyboard controller: a PNP0303 (IBM enhanced keyboard) device with its data
/// port, its command port and the keyboard interrupt, in that order.
///
/// The FADT's IAPC_BOOT_ARCH has no 8042 bit, so Linux marks the i8042 "firmware absent"
/// and its driver only probes the ports when ACPI PNP enumerates a keyboard device
/// (`i8042_pnp_init`). `i8042_pnp_kbd_probe` takes the first I/O resource of length 1 as
/// the data port, the second as the command port, and the first interrupt as the keyboard
/// IRQ; pnpacpi parses an Extended Interrupt descriptor like COM1's (GSI 1, edge, active
/// high). There is no PS/2 mouse device (PNP0F13), so the driver skips the AUX port ("AUX
/// port disabled").
fn i8042_device(out: &mut Vec<u8>) {
    let hid = aml::EISAName::new("PNP0303");
    let data = aml::IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1);
    let command = aml::IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1);
    let irq = aml::Interrupt::new(true, true, false, false, I8042_GSI);
    let crs = aml::ResourceTemplate::new(vec![&data, &command, &irq]);
    let hid_name = aml::Name::new("_HID".into(), &hid);
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    aml::Device::new("KBD_".into(), vec![&hid_name, &crs_name]).to_aml_bytes(out);
}

/// The DSDT: the S5 state (`Name (_S5_, Package () { 5, 5, 0, 0 })`) and, in `\_SB_`, COM1
/// ([`com1_device`]), the i8042 keyboard controller ([`i8042_device`]) and the `virtio`
/// devices.
pub fn dsdt_with(virtio: &[VirtioMmio]) -> Vec<u8> {
    let mut aml_bytes = Vec::new();
    let s5 = aml::Package::new(vec![&ACPI_S5_SLP_TYP, &ACPI_S5_SLP_TYP, &0u8, &0u8]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut aml_bytes);
    let mut devices = Vec::new();
    com1_device(&mut devices);
    i8042_device(&mut devices);
    for (i, dev) in virtio.iter().enumerate() {
        virtio_device(i, dev, &mut devices);
    }
    let devices = RawAml(devices);
    aml::Scope::new("_SB_".into(), vec![&devices]).to_aml_bytes(&mut aml_bytes);
    let mut t = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.append_slice(&aml_bytes);
    t.as_slice().to_vec()
}

/// The MADT for `cpus` vCPUs.
pub fn madt(cpus: u32) -> Result<Vec<u8>, AcpiError> {
    if cpus > 255 {
        return Err(AcpiError::TooManyCpus(cpus));
    }
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.write_u32(36, LAPIC_START as u32);
    t.write_u32(40, MADT_PCAT_COMPAT);
    for i in 0..cpus as u8 {
        // Processor Local APIC: type 0, length 8, uid, APIC id, flags (enabled).
        t.append_slice(&[0, 8, i, i, 1, 0, 0, 0]);
    }
    // I/O APIC: type 1, length 12, id 0, reserved, address, GSI base 0.
    let mut ioapic = vec![1, 12, 0, 0];
    ioapic.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    t.append_slice(&ioapic);
    // Interrupt source override: ISA IRQ 0 (the PIT) arrives on GSI 2.
    let mut iso = vec![2, 10, 0, 0];
    iso.extend_from_slice(&2u32.to_le_bytes());
    iso.extend_from_slice(&0u16.to_le_bytes());
    t.append_slice(&iso);
    // Local APIC NMI: all processors (0xff), default flags, LINT1.
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    Ok(t.as_slice().to_vec())
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

/// The FADT pointing at `dsdt_addr`.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.reset_reg = io_register(ACPI_RESET_PORT);
    b.reset_value = ACPI_RESET_VALUE;
    b.sleep_control_reg = io_register(ACPI_SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_register(ACPI_SLEEP_STATUS_PORT);
    b.iapc_boot_arch = (IAPC_NO_VGA | IAPC_NO_CMOS_RTC).into();
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"FERROVM\0").into();
    let mut out = Vec::new();
    b.finalize().to_aml_bytes(&mut out);
    out
}

/// The DSDT without virtio devices.
pub fn dsdt() -> Vec<u8> {
    dsdt_with(&[])
}

/// All tables as `(guest address, bytes)`, RSDP first at [`RSDP_START`], declaring
/// `virtio` devices.
pub fn tables(cpus: u32, virtio: &[VirtioMmio]) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let rsdp_len = Rsdp::len() as u64;
    let dsdt_addr = align8(RSDP_START + rsdp_len);
    let dsdt = dsdt_with(virtio);
    let fadt_addr = align8(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align8(fadt_addr + fadt.len() as u64);
    let madt = madt(cpus)?;
    let xsdt_addr = align8(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let end = xsdt_addr + xsdt_bytes.len() as u64;
    if end > HIGH_MEMORY_START {
        return Err(AcpiError::TooLarge(end - RSDP_START));
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    Ok(vec![
        (RSDP_START, rsdp),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (xsdt_addr, xsdt_bytes),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn u32_at(t: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(t[off..off + 4].try_into().unwrap())
    }

    fn u64_at(t: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(t[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_checksums_and_links() {
        let t = tables(4, &[]).unwrap();
        let find = |sig: &[u8]| t.iter().find(|(_, b)| b.starts_with(sig)).unwrap().clone();
        let (_, rsdp) = find(b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        let (xsdt_addr, xsdt) = find(b"XSDT");
        assert_eq!(u64_at(&rsdp, 24), xsdt_addr);
        assert!(checksum_ok(&xsdt));
        assert_eq!(u32_at(&xsdt, 4) as usize, xsdt.len());
        let (fadt_addr, fadt) = find(b"FACP");
        let (madt_addr, madt) = find(b"APIC");
        assert_eq!(u64_at(&xsdt, 36), fadt_addr);
        assert_eq!(u64_at(&xsdt, 44), madt_addr);
        assert!(checksum_ok(&fadt) && checksum_ok(&madt));
        let (dsdt_addr, dsdt) = find(b"DSDT");
        assert!(checksum_ok(&dsdt));
        assert_eq!(u64_at(&fadt, 140), dsdt_addr, "X_DSDT");
        // Tables do not overlap and stay in the BIOS area.
        let mut spans: Vec<(u64, u64)> = t.iter().map(|(a, b)| (*a, a + b.len() as u64)).collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0);
        }
        assert!(spans.last().unwrap().1 <= HIGH_MEMORY_START);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let f = fadt(0x1234);
        let flags = u32_at(&f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // RESET_REG GAS at 116: space I/O, 8 bits, address.
        assert_eq!(f[116], 1);
        assert_eq!(u64_at(&f, 120), u64::from(ACPI_RESET_PORT));
        assert_eq!(f[128], ACPI_RESET_VALUE);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(u64_at(&f, 248), u64::from(ACPI_SLEEP_CONTROL_PORT));
        assert_eq!(u64_at(&f, 260), u64::from(ACPI_SLEEP_STATUS_PORT));
        // IAPC_BOOT_ARCH at 109: no VGA, no CMOS, and no 8042 bit.
        let iapc = u16::from_le_bytes([f[109], f[110]]);
        assert_eq!(iapc, IAPC_NO_VGA | IAPC_NO_CMOS_RTC);
    }

    fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
        hay.windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn dsdt_declares_each_virtio_device_with_window_and_interrupt() {
        let devs: Vec<VirtioMmio> = (0..crate::layout::VIRTIO_MAX_DEVICES)
            .map(|i| {
                let (base, gsi) = crate::layout::virtio_mmio_slot(i).unwrap();
                VirtioMmio {
                    base,
                    len: crate::layout::VIRTIO_MMIO_WINDOW,
                    gsi,
                }
            })
            .collect();
        let d = dsdt_with(&devs[..2]);
        assert!(checksum_ok(&d));
        assert_eq!(find_all(&d, b"LNRO0005\0").len(), 2);
        for dev in &devs[..2] {
            // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
            let mut m = vec![0x86, 9, 0, 1];
            m.extend_from_slice(&(dev.base as u32).to_le_bytes());
            m.extend_from_slice(&(dev.len as u32).to_le_bytes());
            assert_eq!(find_all(&d, &m).len(), 1, "window {:#x}", dev.base);
            // Extended interrupt: tag 0x89, length 6, consumer + edge (flags 0b011), 1 GSI.
            let mut i = vec![0x89, 6, 0, 0b0000_0011, 1];
            i.extend_from_slice(&dev.gsi.to_le_bytes());
            assert_eq!(find_all(&d, &i).len(), 1, "gsi {}", dev.gsi);
        }
        assert!(find_all(&d, b"V000").len() == 1 && find_all(&d, b"V001").len() == 1);
        // The most devices the layout allows still fit below 1 MiB.
        assert!(tables(255, &devs).is_ok());
        assert_eq!(
            crate::layout::virtio_mmio_slot(crate::layout::VIRTIO_MAX_DEVICES),
            None
        );
        assert_eq!(devs.last().unwrap().gsi, crate::layout::IOAPIC_PINS - 1);
    }

    #[test]
    fn madt_lists_each_cpu_ioapic_and_override() {
        let m = madt(3).unwrap();
        assert_eq!(u32_at(&m, 36), LAPIC_START as u32);
        let mut off = 44;
        let mut lapics = Vec::new();
        let mut kinds = Vec::new();
        while off < m.len() {
            let (kind, len) = (m[off], m[off + 1] as usize);
            kinds.push(kind);
            if kind == 0 {
                lapics.push((m[off + 2], m[off + 3], m[off + 4]));
            }
            if kind == 2 {
                assert_eq!((m[off + 3], u32_at(&m, off + 4)), (0, 2), "IRQ0 -> GSI2");
            }
            off += len;
        }
        assert_eq!(off, m.len());
        assert_eq!(lapics, vec![(0, 0, 1), (1, 1, 1), (2, 2, 1)]);
        assert_eq!(kinds, vec![0, 0, 0, 1, 2, 4]);
        assert_eq!(madt(256), Err(AcpiError::TooManyCpus(256)));
    }

    #[test]
    fn dsdt_declares_s5_and_com1() {
        let d = dsdt();
        assert!(d.windows(4).any(|w| w == b"_S5_"));
        assert!(d.windows(4).any(|w| w == b"COM1"));
        assert!(d.windows(4).any(|w| w == b"_CRS"));
        // EISA id PNP0501 compressed: 0x41d00501 byte-swapped.
        assert!(d.windows(4).any(|w| w == [0x41, 0xd0, 0x05, 0x01]));
        assert_eq!(u32_at(&d, 4) as usize, d.len());
    }

    #[test]
    fn dsdt_declares_the_i8042_keyboard() {
        let d = dsdt_with(&[]);
        assert!(checksum_ok(&d));
        assert_eq!(find_all(&d, b"KBD_").len(), 1);
        // EISA id PNP0303 compressed: 0x41d00303 byte-swapped.
        let hid = find_all(&d, &[0x41, 0xd0, 0x03, 0x03]);
        assert_eq!(hid.len(), 1);
        // The _CRS buffer: IO (decode16, min = max = port, align 1, length 1) for 0x60 then
        // 0x64, the extended interrupt (consumer, edge, active high, GSI 1), the end tag.
        let io = |port: u8| [0x47, 1, port, 0, port, 0, 1, 1];
        let irq = [0x89, 6, 0, 0b0000_0011, 1, 1, 0, 0, 0];
        let crs = [&io(0x60)[..], &io(0x64), &irq, &[0x79]].concat();
        let at = find_all(&d, &crs);
        assert_eq!(at.len(), 1);
        assert!(hid[0] < at[0], "_HID before _CRS, in the same device");
        // Inside \_SB_, after COM1 and before the virtio devices.
        let sb = find_all(&d, b"_SB_")[0];
        let com1 = find_all(&d, b"COM1")[0];
        assert!(sb < com1 && com1 < at[0]);
        let v = dsdt_with(&[VirtioMmio {
            base: 0xd000_0000,
            len: 0x1000,
            gsi: 5,
        }]);
        assert!(find_all(&v, b"KBD_")[0] < find_all(&v, b"V000")[0]);
    }
}
