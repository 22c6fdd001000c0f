//! The VM's devices: the legacy PC devices on the port-I/O bus and the virtio devices
//! behind their virtio-mmio windows, each wired into KVM (irqfd for interrupts, an
//! ioeventfd per virtio queue) and kept here by type, so the VMM can reach them while the
//! guest runs: the UART for the console, the i8042 for Ctrl+Alt+Del, every virtio device to
//! pause and resume its worker and read its counters, and the disks by drive id to swap
//! their images.
//!
//! Virtio device `i` gets window `VIRTIO_MMIO_START + i * 4 KiB` and GSI `5 + i`
//! ([`arch::layout::virtio_mmio_slot`]), declared in the ACPI DSDT as `LNRO0005` devices
//! (which Linux's virtio_mmio driver binds to). Disks come first, in drive order, so the
//! first drive is `/dev/vda`; the network interfaces follow (the first is `eth0`), then
//! the vsock, the balloon and the entropy device.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arch::acpi::VirtioMmio;
use arch::layout;
use devices::bus::SharedDevice;
use devices::legacy::{ports, AcpiPm, DebugExit, PanicWatch, PostCode, Serial, I8042};
use devices::virtio::balloon::{Balloon, BalloonControl};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::mmio::{regs, DeviceCounts, MmioTransport, VirtioTransport};
use devices::virtio::net::{Net, NetCounts};
use devices::virtio::rng::Rng;
use devices::virtio::vhost_net::VhostNet;
use devices::virtio::vsock::Vsock;
use devices::virtio::VirtioDevice;
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::VmConfig;
use crate::console_out::ConsoleOut;
use crate::drive::{DriveConfig, DriveError, PreparedDrive};
use crate::error::{host, ioctl, ConfigError, VmError};
use crate::limits::{BucketChange, SharedLimiter};
use crate::memory::GuestMem;
use crate::net_device::{NetDevice, NetKind};
use crate::passt::Passt;
use crate::vcpu::exit::Buses;

/// An extra MMIO device a caller attaches (tests use one): name, base, length, device.
pub type ExtraDevice = (String, u64, u64, SharedDevice);

/// The virtio devices of one boot, built (images opened) before the VM exists.
#[derive(Debug, Default)]
pub struct VirtioSet {
    /// Disks in drive order, with their drive ids.
    pub blocks: Vec<(String, Block)>,
    /// Network interfaces, in order.
    pub nets: Vec<NetDevice>,
    /// The vsock device.
    pub vsock: Option<Vsock>,
    /// The balloon.
    pub balloon: Option<Balloon>,
    /// The entropy device.
    pub rng: Option<Rng>,
}

impl VirtioSet {
    /// Opens every drive (as `prepared`), opens the network interfaces' backends and
    /// builds the entropy device if asked.
    pub fn build(config: &VmConfig, prepared: &[PreparedDrive]) -> Result<VirtioSet, VmError> {
        let mut blocks = Vec::new();
        for (i, (d, p)) in config.drives.iter().zip(prepared).enumerate() {
            blocks.push((d.name(i), block_device(i, d, p)?));
        }
        let mut nets = Vec::new();
        for (i, n) in config.nets.iter().enumerate() {
            nets.push(crate::net_device::build(i, n, None)?);
        }
        let vsock = match &config.vsock {
            None => None,
            Some(v) => Some(
                Vsock::new("vsock", u64::from(v.cid), v.uds.clone())
                    .map_err(|e| VmError::DeviceSetup(format!("vsock: {e}")))?,
            ),
        };
        let balloon = match config.balloon {
            None => None,
            Some(b) => Some(
                Balloon::new("balloon", b)
                    .map_err(|e| VmError::DeviceSetup(format!("balloon: {e}")))?,
            ),
        };
        Ok(VirtioSet {
            blocks,
            nets,
            vsock,
            balloon,
            rng: config.rng.then(Rng::new),
        })
    }

    /// How many devices there are.
    pub fn len(&self) -> usize {
        self.blocks.len()
            + self.nets.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.balloon.is_some())
            + usize::from(self.rng.is_some())
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The device configuration of drive `index` (opened from `p`).
pub fn block_config(index: usize, d: &DriveConfig, p: &PreparedDrive) -> BlockConfig {
    BlockConfig {
        path: p.path.clone(),
        format: p.format,
        read_only: p.read_only,
        cache: d.cache,
        id: d.serial(index),
        engine: d.aio,
        flush: d.flush,
        limiter: None,
    }
}

/// Opens drive `index` as a virtio-blk device, with a rate limiter (limiting nothing
/// unless asked) that `PATCH /drives` can change while the guest runs.
pub fn block_device(index: usize, d: &DriveConfig, p: &PreparedDrive) -> Result<Block, VmError> {
    let mut cfg = block_config(index, d, p);
    cfg.limiter = Some(crate::limits::shared(d.limits).map_err(|e| {
        VmError::DeviceSetup(format!(
            "drive {index}: cannot create its rate limiter's timer: {e}"
        ))
    })?);
    Block::open(&format!("blk{index}"), &cfg)
        .map_err(|source| DriveError::Device { index, source }.into())
}

/// A virtio device in the VM.
pub struct VirtioEntry {
    /// Its name ("blk0", "rng").
    pub name: String,
    /// Base of its MMIO window.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
    /// The device behind its transport.
    pub transport: Arc<Mutex<dyn VirtioTransport>>,
}

/// A disk in the VM.
pub struct BlockEntry {
    /// Its drive id.
    pub drive_id: String,
    /// Its index among the drives.
    pub index: usize,
    /// The device behind its transport.
    pub transport: Arc<Mutex<MmioTransport<Block>>>,
}

/// A network interface in the VM.
pub struct NetEntry {
    /// Its id (`eth0`, the API's `iface_id`).
    pub id: String,
    /// Its device name (`net0`).
    pub device: String,
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// Receive limiter.
    pub rx: SharedLimiter,
    /// Transmit limiter.
    pub tx: SharedLimiter,
    /// The device behind its transport.
    pub transport: NetTransport,
}

/// A network interface's device, by data path.
pub enum NetTransport {
    /// ferrovm's own virtio-net.
    Userspace(Arc<Mutex<MmioTransport<Net>>>),
    /// vhost-net.
    Vhost(Arc<Mutex<MmioTransport<VhostNet>>>),
}

/// Counters of one virtio device, by name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NamedCounts {
    /// The device ("blk0", "net0", "rng").
    pub device: String,
    /// Its counters.
    #[serde(flatten)]
    pub counts: DeviceCounts,
    /// A network interface's traffic (per queue pair, with the link state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net: Option<NetCounts>,
    /// The vsock device's connections and traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<devices::virtio::vsock::VsockCounts>,
    /// The balloon's pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon: Option<devices::virtio::balloon::BalloonCounts>,
}

/// The legacy devices' saved state (a snapshot restore).
#[derive(Debug, Clone, Copy)]
pub struct LegacyState<'a> {
    /// COM1.
    pub serial: &'a devices::legacy::serial::SerialSnapshot,
    /// The i8042.
    pub i8042: &'a devices::legacy::i8042::I8042State,
}

/// Every device of a VM.
pub struct DeviceManager {
    buses: Arc<Buses>,
    serial: Arc<Mutex<Serial>>,
    serial_drained: Arc<EventFd>,
    console_out: ConsoleOut,
    i8042: Arc<Mutex<I8042>>,
    panicked: Arc<AtomicBool>,
    virtio: Vec<VirtioEntry>,
    blocks: Vec<BlockEntry>,
    nets: Vec<NetEntry>,
    vsock: Option<Arc<Mutex<MmioTransport<Vsock>>>>,
    balloon: Option<BalloonControl>,
    /// The passt processes of user networking (stopped with the VM).
    passts: Vec<Passt>,
    acpi: Vec<VirtioMmio>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DeviceManager {
    /// Builds the legacy devices and attaches `virtio` and `extra` for a VM on `vm`. With
    /// `irqchip` (a Linux guest) the UART and the i8042 interrupt through irqfds and the
    /// virtio devices are wired into KVM; without, there must be no virtio devices.
    pub fn new(
        kvm: &Kvm,
        vm: &VmFd,
        mem: &GuestMem,
        irqchip: bool,
        virtio: VirtioSet,
        extra: &[ExtraDevice],
        legacy: Option<LegacyState<'_>>,
    ) -> Result<DeviceManager, VmError> {
        let mut buses = Buses::default();
        let panicked = Arc::new(AtomicBool::new(false));
        let serial_drained = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(host("eventfd"))?);
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(host("eventfd"))?;
        let (console_out, serial_writer) = ConsoleOut::new().map_err(host("eventfd"))?;
        let serial_out = Box::new(PanicWatch::new(serial_writer, panicked.clone()));
        let kbd_irq = EventFd::new(EFD_NONBLOCK).map_err(host("eventfd"))?;
        let (serial, i8042) = match legacy {
            None => (
                Serial::new(serial_irq, serial_drained.clone(), serial_out),
                I8042::new(kbd_irq),
            ),
            Some(l) => (
                Serial::from_state(l.serial, serial_irq, serial_drained.clone(), serial_out)
                    .map_err(host("restoring the serial port"))?,
                I8042::from_state(kbd_irq, l.i8042).map_err(|e| {
                    host("restoring the i8042")(std::io::Error::other(e.to_string()))
                })?,
            ),
        };
        let serial = Arc::new(Mutex::new(serial));
        let i8042 = Arc::new(Mutex::new(i8042));
        buses.pio.insert(
            "com1",
            ports::COM1.into(),
            ports::COM_LEN.into(),
            serial.clone(),
        )?;
        let i8042_len = u64::from(ports::I8042_COMMAND - ports::I8042_DATA) + 1;
        buses
            .pio
            .insert("i8042", ports::I8042_DATA.into(), i8042_len, i8042.clone())?;
        buses.pio.insert(
            "post",
            ports::POST.into(),
            1,
            Arc::new(Mutex::new(PostCode::default())),
        )?;
        buses.pio.insert(
            "debug-exit",
            ports::DEBUG_EXIT.into(),
            1,
            Arc::new(Mutex::new(DebugExit)),
        )?;
        buses.pio.insert(
            "acpi-pm",
            layout::ACPI_SLEEP_CONTROL_PORT.into(),
            layout::ACPI_PM_PORTS.into(),
            Arc::new(Mutex::new(AcpiPm::new(
                layout::ACPI_S5_SLP_TYP,
                layout::ACPI_RESET_VALUE,
            ))),
        )?;
        for (name, base, len, dev) in extra {
            buses.mmio.insert(name, *base, *len, dev.clone())?;
        }
        if irqchip {
            vm.register_irqfd(lock(&serial).irq_evt(), ports::COM1_IRQ)
                .map_err(ioctl("KVM_IRQFD (COM1)"))?;
            vm.register_irqfd(lock(&i8042).irq_evt(), ports::I8042_IRQ)
                .map_err(ioctl("KVM_IRQFD (i8042)"))?;
        } else if !virtio.is_empty() {
            return Err(ConfigError::VirtioNeedsLinux.into());
        }
        let mut dm = DeviceManager {
            buses: Arc::new(Buses::default()),
            serial,
            serial_drained,
            console_out,
            i8042,
            panicked,
            virtio: Vec::new(),
            blocks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            balloon: None,
            passts: Vec::new(),
            acpi: Vec::new(),
        };
        let mut wiring = Wiring {
            vm,
            mem,
            buses: &mut buses,
            ioeventfd: kvm.check_extension(Cap::Ioeventfd),
        };
        if !wiring.ioeventfd && !virtio.is_empty() {
            tracing::warn!(
                "KVM has no ioeventfd: virtio notifications will exit to user space (slower)"
            );
        }
        for (index, (drive_id, blk)) in virtio.blocks.into_iter().enumerate() {
            let t = dm.attach(&mut wiring, blk)?;
            dm.blocks.push(BlockEntry {
                drive_id,
                index,
                transport: t,
            });
        }
        for n in virtio.nets {
            let device = n.device.name().to_string();
            let t = match n.device {
                NetKind::Userspace(d) => NetTransport::Userspace(dm.attach(&mut wiring, d)?),
                NetKind::Vhost(d) => NetTransport::Vhost(dm.attach(&mut wiring, d)?),
            };
            dm.nets.push(NetEntry {
                id: n.id,
                device,
                mac: n.mac,
                rx: n.rx,
                tx: n.tx,
                transport: t,
            });
            dm.passts.extend(n.passt);
        }
        if let Some(v) = virtio.vsock {
            dm.vsock = Some(dm.attach(&mut wiring, v)?);
        }
        if let Some(b) = virtio.balloon {
            dm.balloon = Some(b.control());
            dm.attach(&mut wiring, b)?;
        }
        if let Some(rng) = virtio.rng {
            dm.attach(&mut wiring, rng)?;
        }
        dm.buses = Arc::new(buses);
        Ok(dm)
    }

    /// Puts `dev` behind the next virtio-mmio window and wires it into KVM.
    fn attach<D: VirtioDevice + 'static>(
        &mut self,
        w: &mut Wiring<'_>,
        dev: D,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>, VmError> {
        let i = self.virtio.len() as u32;
        let (base, gsi) = layout::virtio_mmio_slot(i).ok_or(ConfigError::TooManyDevices {
            max: layout::VIRTIO_MAX_DEVICES,
        })?;
        let name = dev.name().to_string();
        let irq = EventFd::new(EFD_NONBLOCK).map_err(host("eventfd"))?;
        let transport =
            MmioTransport::new(dev, w.mem.clone(), irq).map_err(host("virtio transport"))?;
        w.vm.register_irqfd(transport.irq_evt(), gsi)
            .map_err(ioctl("KVM_IRQFD (virtio)"))?;
        if w.ioeventfd {
            for (q, evt) in transport.notify_evts().iter().enumerate() {
                w.vm.register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + regs::QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(ioctl("KVM_IOEVENTFD (virtio)"))?;
            }
        }
        tracing::info!("virtio {name} at {base:#x}, GSI {gsi}");
        let transport = Arc::new(Mutex::new(transport));
        w.buses.mmio.insert(
            &format!("virtio-{name}"),
            base,
            layout::VIRTIO_MMIO_WINDOW,
            transport.clone(),
        )?;
        self.virtio.push(VirtioEntry {
            name,
            base,
            gsi,
            transport: transport.clone(),
        });
        self.acpi.push(VirtioMmio {
            base,
            len: layout::VIRTIO_MMIO_WINDOW,
            gsi,
        });
        Ok(transport)
    }

    /// The buses the vCPUs dispatch to.
    pub fn buses(&self) -> Arc<Buses> {
        self.buses.clone()
    }

    /// What the DSDT declares.
    pub fn acpi_devices(&self) -> &[VirtioMmio] {
        &self.acpi
    }

    /// The UART.
    pub fn serial(&self) -> &Arc<Mutex<Serial>> {
        &self.serial
    }

    /// Signalled when the guest drained the UART's input FIFO.
    pub fn serial_drained(&self) -> &EventFd {
        &self.serial_drained
    }

    /// The guest's console output, waiting for the main thread.
    pub fn console_out(&self) -> &ConsoleOut {
        &self.console_out
    }

    /// Whether the guest's console showed a kernel panic.
    pub fn guest_panicked(&self) -> bool {
        self.panicked.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The legacy devices' state for a snapshot.
    pub fn legacy_state(
        &self,
    ) -> (
        devices::legacy::serial::SerialSnapshot,
        devices::legacy::i8042::I8042State,
    ) {
        (lock(&self.serial).state(), lock(&self.i8042).state())
    }

    /// Presses Ctrl+Alt+Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) -> Result<(), devices::legacy::i8042::I8042Error> {
        lock(&self.i8042).send_ctrl_alt_del()
    }

    /// Every virtio device.
    pub fn virtio(&self) -> &[VirtioEntry] {
        &self.virtio
    }

    /// The disk with drive id `id`.
    pub fn block(&self, id: &str) -> Option<&BlockEntry> {
        self.blocks.iter().find(|b| b.drive_id == id)
    }

    /// The balloon's handle.
    pub fn balloon(&self) -> Option<&BalloonControl> {
        self.balloon.as_ref()
    }

    /// The vsock device.
    pub fn vsock(&self) -> Option<&Arc<Mutex<MmioTransport<Vsock>>>> {
        self.vsock.as_ref()
    }

    /// The MAC of every network interface, in order.
    pub fn net_macs(&self) -> Vec<[u8; 6]> {
        self.nets.iter().map(|n| n.mac).collect()
    }

    /// Whether an interface moves its packets through vhost-net (the kernel then writes
    /// guest memory unseen by the dirty tracking).
    pub fn has_vhost(&self) -> bool {
        self.nets
            .iter()
            .any(|n| matches!(n.transport, NetTransport::Vhost(_)))
    }

    /// The network interface with id `id`.
    pub fn net(&self, id: &str) -> Option<&NetEntry> {
        self.nets.iter().find(|n| n.id == id)
    }

    /// Changes the rate limits of network interface `id` (`None`: that direction is left
    /// as it is); in effect at once.
    pub fn update_net_limits(
        &self,
        id: &str,
        rx: Option<(BucketChange, BucketChange)>,
        tx: Option<(BucketChange, BucketChange)>,
    ) -> Result<(), String> {
        let n = self
            .net(id)
            .ok_or_else(|| format!("there is no network interface {id:?} in this VM"))?;
        if matches!(n.transport, NetTransport::Vhost(_)) && (rx.is_some() || tx.is_some()) {
            return Err(format!(
                "{id} moves its packets through vhost-net, which cannot be rate limited"
            ));
        }
        for (l, c) in [(&n.rx, rx), (&n.tx, tx)] {
            if let Some((bw, ops)) = c {
                lock(l).update(bw, ops);
            }
        }
        Ok(())
    }

    /// Pauses every virtio device's worker (in-flight requests complete first). On
    /// failure the devices already paused are resumed.
    pub fn pause(&self) -> Result<(), VmError> {
        for (i, v) in self.virtio.iter().enumerate() {
            if let Err(e) = lock(&v.transport).pause() {
                for done in &self.virtio[..i] {
                    lock(&done.transport).resume();
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Resumes every virtio device's worker.
    pub fn resume(&self) {
        for v in &self.virtio {
            lock(&v.transport).resume();
        }
    }

    /// The counters of every virtio device.
    pub fn counts(&self) -> Vec<NamedCounts> {
        self.virtio
            .iter()
            .map(|v| {
                let counts = lock(&v.transport).counts();
                let net = self.nets.iter().find(|n| n.device == v.name).and_then(|n| {
                    match &n.transport {
                        NetTransport::Userspace(t) => Some(lock(t).device().net_counts()),
                        // The kernel moves the packets and counts nothing for us.
                        NetTransport::Vhost(_) => None,
                    }
                });
                let vsock = match &self.vsock {
                    Some(t) if v.name == "vsock" => Some(lock(t).device().counts()),
                    _ => None,
                };
                let balloon = match &self.balloon {
                    Some(b) if v.name == "balloon" => Some(b.counts()),
                    _ => None,
                };
                NamedCounts {
                    device: v.name.clone(),
                    counts,
                    net,
                    vsock,
                    balloon,
                }
            })
            .collect()
    }
}

/// What attaching a virtio device needs.
struct Wiring<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMem,
    buses: &'a mut Buses,
    ioeventfd: bool,
}
