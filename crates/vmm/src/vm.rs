//! Config -> running VM: one linear recipe ([`run`]) and the main thread's event loop.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arch::layout::{self, BOOT_STRUCTURES_END, REAL_MODE_LIMIT};
use arch::regs::EntryMode;
use devices::legacy::{ports, AcpiPm, DebugExit, PanicWatch, PostCode, Serial, I8042};
use devices::{BusError, StopReason};
use kvm_ioctls::Cap;
use vm_memory::ByteValued;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::config::{human_size, OnReboot, Payload, VmConfig, MIN_MEM_SIZE};
use crate::console::{self, Escape, RawTerminal};
use crate::console_out::ConsoleOut;
use crate::control::{Control, VmStop};
use crate::kvm::{self, KvmError};
use crate::memory::{self, GuestMem, MemoryError};
use crate::stats::{StatsReport, VcpuStats};
use crate::vcpu::{self, exit::Buses, Entry, VcpuError};

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Configuration rejected before anything was created.
    #[error("{0}")]
    Config(String),
    /// Reading the guest image failed.
    #[error("cannot read {}: {source}", path.display())]
    ReadImage {
        path: PathBuf,
        source: std::io::Error,
    },
    /// KVM could not be opened or lacks something.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A VM-level ioctl failed.
    #[error("{what} failed: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Writing boot structures.
    #[error(transparent)]
    Arch(#[from] arch::Error),
    /// Registering a device.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A vCPU could not be created.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Host resources (eventfd, epoll, threads, files).
    #[error("{what}: {source}")]
    Host {
        what: &'static str,
        source: std::io::Error,
    },
}

fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Host { what, source }
}

/// How a VM run ended.
#[derive(Debug)]
pub struct VmOutcome {
    /// Why it stopped.
    pub stop: VmStop,
    /// Exit statistics (of the last boot).
    pub stats: StatsReport,
    /// How many times the guest booted (more than 1 with `--on-reboot restart`).
    pub boots: u32,
}

/// A raw image loaded and checked against the configuration, before KVM is touched.
struct RawImage {
    bytes: Vec<u8>,
    load_addr: u64,
    mode: EntryMode,
}

fn check_config(config: &VmConfig) -> Result<(), VmError> {
    if config.cpus == 0 {
        return Err(VmError::Config("--cpus must be at least 1".into()));
    }
    if config.mem_size < MIN_MEM_SIZE {
        return Err(VmError::Config(format!(
            "--mem {} is too small: at least {} is needed",
            human_size(config.mem_size),
            human_size(MIN_MEM_SIZE)
        )));
    }
    if config.mem_size % layout::PAGE_SIZE != 0 {
        return Err(VmError::Config(format!(
            "--mem {} is not a multiple of 4 KiB",
            config.mem_size
        )));
    }
    Ok(())
}

fn load_raw(config: &VmConfig) -> Result<RawImage, VmError> {
    let Payload::Raw {
        path,
        load_addr,
        mode,
    } = &config.payload
    else {
        return Err(VmError::Config("not a raw image".into()));
    };
    let (load_addr, mode) = (*load_addr, *mode);
    let bytes = read_file(path, "raw image")?;
    if bytes.is_empty() {
        return Err(VmError::Config(format!(
            "raw image {} is empty",
            path.display()
        )));
    }
    let len = bytes.len() as u64;
    if !arch::layout::range_in_ram(config.mem_size, load_addr, len) {
        return Err(VmError::Config(format!(
            "raw image {} ({len} bytes) does not fit in guest RAM at load address {load_addr:#x} ({} of RAM: {})",
            path.display(),
            human_size(config.mem_size),
            arch::layout::ram_ranges(config.mem_size)
                .iter()
                .map(|(s, l)| format!("[{s:#x}, {:#x})", s + l))
                .collect::<Vec<_>>()
                .join(" ")
        )));
    }
    match mode {
        EntryMode::Real => {
            if load_addr % 16 != 0 || load_addr + len > REAL_MODE_LIMIT {
                return Err(VmError::Config(format!(
                    "--mode real needs a 16-byte aligned load address with the image below 1 MiB; \
                     {} ({len} bytes) at {load_addr:#x} is not",
                    path.display()
                )));
            }
        }
        EntryMode::Long => {
            if load_addr < BOOT_STRUCTURES_END && load_addr + len > layout::BOOT_GDT_START {
                return Err(VmError::Config(format!(
                    "--mode long: image at {load_addr:#x} ({len} bytes) overlaps the GDT and page tables \
                     at [{:#x}, {BOOT_STRUCTURES_END:#x}); load it at or above {BOOT_STRUCTURES_END:#x}",
                    layout::BOOT_GDT_START
                )));
            }
            if load_addr + len > layout::MMIO_HOLE_START + layout::MMIO_HOLE_SIZE {
                return Err(VmError::Config(format!(
                    "--mode long: the identity map covers the first 4 GiB; load address {load_addr:#x} is beyond it"
                )));
            }
        }
    }
    Ok(RawImage {
        bytes,
        load_addr,
        mode,
    })
}

/// What the guest boots, read and checked once, before KVM is touched.
enum BootPayload {
    Raw(RawImage),
    Kernel {
        kernel: arch::linux::PreparedKernel,
        initrd: Option<Vec<u8>>,
        cmdline: String,
    },
}

/// Opens an input file (`what` names it in errors) through `open`, rejecting directories.
fn input_file<T>(
    path: &Path,
    what: &str,
    open: impl FnOnce(&Path) -> std::io::Result<T>,
) -> Result<T, VmError> {
    let read_err = |source| VmError::ReadImage {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::metadata(path).map_err(read_err)?.is_dir() {
        return Err(VmError::Config(format!(
            "{what} {} is a directory",
            path.display()
        )));
    }
    open(path).map_err(read_err)
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, VmError> {
    input_file(path, what, |p| std::fs::read(p))
}

fn prepare_payload(config: &VmConfig) -> Result<BootPayload, VmError> {
    match &config.payload {
        Payload::Raw { .. } => Ok(BootPayload::Raw(load_raw(config)?)),
        Payload::Kernel {
            path,
            initrd,
            cmdline,
            decompress,
        } => {
            let bytes = input_file(path, "kernel", crate::kernel_cache::map_file)?;
            let start = Instant::now();
            let kernel = prepare_kernel(config, path, bytes, *decompress)?;
            tracing::info!(format = ?kernel.format, elapsed = ?start.elapsed(), "kernel prepared");
            let initrd = match initrd {
                Some(p) => {
                    let b = read_file(p, "initrd")?;
                    if b.is_empty() {
                        return Err(VmError::Config(format!("initrd {} is empty", p.display())));
                    }
                    Some(b)
                }
                None => None,
            };
            Ok(BootPayload::Kernel {
                kernel,
                initrd,
                cmdline: cmdline.clone(),
            })
        }
    }
}

/// Checks the kernel and decompresses a bzImage on the host, through the cache.
fn prepare_kernel(
    config: &VmConfig,
    path: &Path,
    bytes: arch::linux::KernelBytes,
    decompress: arch::linux::Decompress,
) -> Result<arch::linux::PreparedKernel, VmError> {
    let err =
        |e: &dyn std::fmt::Display| VmError::Config(format!("kernel {}: {e}", path.display()));
    let is_bzimage = matches!(
        kernel::KernelImage::parse(&bytes),
        Ok(kernel::KernelImage::BzImage(_))
    );
    let cache = (config.kernel_cache && is_bzimage && decompress == arch::linux::Decompress::Host)
        .then(|| {
            Some((
                crate::kernel_cache::cache_dir()?,
                crate::kernel_cache::key(path).ok()?,
            ))
        })
        .flatten();
    if let Some((dir, key)) = &cache {
        if let Some(elf) = crate::kernel_cache::lookup(dir, key) {
            tracing::info!("kernel cache hit {key}");
            return arch::linux::prepare_decompressed(&bytes, elf).map_err(|e| err(&e));
        }
    }
    let prepared = arch::linux::prepare(bytes, decompress).map_err(|e| err(&e))?;
    if let (Some((dir, key)), Some(elf)) = (&cache, prepared.decompressed_elf()) {
        crate::kernel_cache::store(dir, key, elf);
    }
    Ok(prepared)
}

/// Devices of the VM that the main thread talks to.
struct Platform {
    buses: Buses,
    serial: Arc<Mutex<Serial>>,
    serial_drained: Arc<EventFd>,
    serial_out: ConsoleOut,
}

fn attach_devices(panicked: Arc<AtomicBool>) -> Result<Platform, VmError> {
    let mut buses = Buses::default();
    let serial_drained = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(host("eventfd"))?);
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(host("eventfd"))?;
    let (serial_out, serial_writer) = ConsoleOut::new().map_err(host("eventfd"))?;
    let serial = Arc::new(Mutex::new(Serial::new(
        serial_irq,
        serial_drained.clone(),
        Box::new(PanicWatch::new(serial_writer, panicked)),
    )));
    buses.pio.insert(
        "com1",
        ports::COM1.into(),
        ports::COM_LEN.into(),
        serial.clone(),
    )?;
    let i8042_len = u64::from(ports::I8042_COMMAND - ports::I8042_DATA) + 1;
    buses.pio.insert(
        "i8042",
        ports::I8042_DATA.into(),
        i8042_len,
        Arc::new(Mutex::new(I8042)),
    )?;
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
    Ok(Platform {
        buses,
        serial,
        serial_drained,
        serial_out,
    })
}

/// Builds the VM described by `config`, runs it to the end and returns why it ended.
pub fn run(config: &VmConfig) -> Result<VmOutcome, VmError> {
    run_with(config, Vec::new())
}

/// An extra MMIO device: name, base, length, device.
pub type ExtraDevice = (String, u64, u64, devices::bus::SharedDevice);

/// [`run`] with extra MMIO devices (tests use it for a test device).
pub fn run_with(config: &VmConfig, extra_mmio: Vec<ExtraDevice>) -> Result<VmOutcome, VmError> {
    // 1. Everything the user gave us, checked before KVM is touched.
    check_config(config)?;
    if matches!(config.payload, Payload::Raw { .. }) && (!config.drives.is_empty() || config.rng) {
        return Err(VmError::Config(
            "virtio devices (--drive, rng) need a Linux boot (--kernel)".into(),
        ));
    }
    crate::virtio_devices::check_drives(config)?;
    // Formats and snapshot overlays, once for the whole run; the devices of the first boot
    // are built now, so that a drive they cannot use (size, format, O_DIRECT) is reported
    // before anything else. A reboot builds them afresh.
    let drives = crate::virtio_devices::prepare_drives(config)?;
    let mut first_devices = Some(crate::virtio_devices::build(config, &drives)?);
    let payload = prepare_payload(config)?;

    // 2. KVM.
    let kvm = kvm::open(&config.kvm_path)?;
    let max = kvm.get_max_vcpus();
    if config.cpus as usize > max {
        return Err(VmError::Config(format!(
            "--cpus {} is above this host's KVM maximum of {max} vCPUs",
            config.cpus
        )));
    }
    if matches!(payload, BootPayload::Kernel { .. }) {
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::Kvm(KvmError::MissingCap {
                    path: config.kvm_path.clone(),
                    cap: name,
                }));
            }
        }
    }

    // 3. The host side of the console lives across guest reboots.
    let term_evt = crate::signals::install().map_err(host("installing signal handlers"))?;
    let terminal = if config.console_input {
        RawTerminal::stdin()
    } else {
        None
    };
    let mut console = Console {
        reader: console::spawn_stdin_reader(config.console_input)
            .map_err(host("starting the stdin reader"))?,
        escape: Escape::default(),
        is_tty: terminal.is_some(),
        open: config.console_input,
        pending: VecDeque::new(),
    };

    // 4. Boot, and boot again after a reset if asked to.
    let mut boots = 0u32;
    let result = loop {
        boots += 1;
        let outcome = match first_devices
            .take()
            .map_or_else(|| crate::virtio_devices::build(config, &drives), Ok)
        {
            Ok(devices) => boot_once(
                &kvm,
                config,
                &payload,
                devices,
                &extra_mmio,
                term_evt,
                &mut console,
            ),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(o)
                if o.stop == VmStop::Device(StopReason::Reset)
                    && config.on_reboot == OnReboot::Restart =>
            {
                tracing::info!("guest reset; restarting (boot {})", boots + 1);
            }
            other => break other,
        }
    };
    drop(terminal);
    result.map(|mut o| {
        o.boots = boots;
        o
    })
}

/// Host console state shared by successive boots.
struct Console {
    reader: console::StdinReader,
    escape: Escape,
    is_tty: bool,
    open: bool,
    pending: VecDeque<u8>,
}

fn boot_once(
    kvm: &kvm_ioctls::Kvm,
    config: &VmConfig,
    payload: &BootPayload,
    virtio_devices: Vec<Box<dyn devices::virtio::VirtioDevice>>,
    extra_mmio: &[ExtraDevice],
    term_evt: &EventFd,
    console: &mut Console,
) -> Result<VmOutcome, VmError> {
    let ioctl = |what| move |source| VmError::Ioctl { what, source };
    let linux = matches!(payload, BootPayload::Kernel { .. });

    // The VM, its in-kernel interrupt controllers, and memory.
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    if linux {
        if kvm.check_extension(Cap::SetIdentityMapAddr) {
            vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
                .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        }
        if kvm.check_extension(Cap::SetTssAddr) {
            vm.set_tss_address(layout::KVM_TSS_START as usize)
                .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        }
        vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    }
    let mem: GuestMem = memory::create(config.mem_size)?;
    memory::register(&vm, &mem)?;
    let low_ram_end = layout::ram_ranges(config.mem_size)[0].1;

    // Devices.
    let panicked = Arc::new(AtomicBool::new(false));
    let mut platform = attach_devices(panicked.clone())?;
    for (name, base, len, dev) in extra_mmio {
        platform.buses.mmio.insert(name, *base, *len, dev.clone())?;
    }
    let mut virtio = Vec::new();
    if linux {
        let serial = platform.serial.lock().unwrap_or_else(|p| p.into_inner());
        vm.register_irqfd(serial.irq_evt(), ports::COM1_IRQ)
            .map_err(ioctl("KVM_IRQFD (COM1)"))?;
        drop(serial);
        virtio =
            crate::virtio_devices::attach(kvm, &vm, &mem, &mut platform.buses, virtio_devices)?;
    }

    // The guest and its boot structures.
    let entry = match payload {
        BootPayload::Raw(image) => {
            mem.write_slice(&image.bytes, GuestAddress(image.load_addr))
                .map_err(|e| VmError::Config(format!("cannot load raw image: {e}")))?;
            let cr3 = match image.mode {
                EntryMode::Long => {
                    arch::regs::write_gdt(&mem)?;
                    arch::paging::write_identity_tables(&mem)?
                }
                EntryMode::Real => 0,
            };
            Entry::Raw {
                mode: image.mode,
                load_addr: image.load_addr,
                cr3,
            }
        }
        BootPayload::Kernel {
            kernel,
            initrd,
            cmdline,
        } => load_linux(
            &mem,
            config,
            kernel,
            initrd.as_deref(),
            cmdline,
            low_ram_end,
            &virtio,
        )?,
    };

    // vCPUs.
    let fds = (0..config.cpus)
        .map(|i| vcpu::create(kvm, &vm, i, config.cpus, entry))
        .collect::<Result<Vec<_>, _>>()?;

    // Run: vCPU threads, then the event loop on this thread.
    let control = Arc::new(Control::with_irqchip(config.cpus, linux).map_err(host("eventfd"))?);
    let buses = Arc::new(platform.buses);
    let start = Instant::now();
    let mut threads = Vec::new();
    for (i, fd) in fds.into_iter().enumerate() {
        match vcpu::spawn(i as u32, fd, buses.clone(), control.clone(), mem.clone()) {
            Ok(t) => threads.push(t),
            Err(e) => {
                control.request_stop(VmStop::Error(e.to_string()));
                break;
            }
        }
    }
    if let Err(e) = event_loop(
        &control,
        term_evt,
        &platform.serial,
        &platform.serial_drained,
        &platform.serial_out,
        console,
    ) {
        control.request_stop(VmStop::Error(format!("event loop: {e}")));
    }
    let per_vcpu = stop_vcpus(threads);
    platform.serial_out.drain();
    let stats = StatsReport::new(&per_vcpu, start.elapsed());
    let mut stop = control
        .reason()
        .unwrap_or_else(|| VmStop::Error("the VM stopped without a reason".into()));
    if panicked.load(Ordering::SeqCst)
        && matches!(
            stop,
            VmStop::Device(StopReason::Reset) | VmStop::AllHalted | VmStop::Crash
        )
    {
        stop = VmStop::GuestPanic;
    }
    Ok(VmOutcome {
        stop,
        stats,
        boots: 1,
    })
}

/// Writes kernel, command line, initrd, ACPI tables, zero page, GDT and page tables.
fn load_linux(
    mem: &GuestMem,
    config: &VmConfig,
    kernel: &arch::linux::PreparedKernel,
    initrd: Option<&[u8]>,
    cmdline: &str,
    low_ram_end: u64,
    virtio: &[arch::acpi::VirtioMmio],
) -> Result<Entry, VmError> {
    use arch::bootparams;
    let cfg = |e: &dyn std::fmt::Display| VmError::Config(e.to_string());
    let write = |what: &str, addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| VmError::Config(format!("cannot write {what} at {addr:#x}: {e}")))
    };
    let loaded = kernel.load(mem, low_ram_end).map_err(|e| cfg(&e))?;
    let header = loaded.header.unwrap_or_default();
    let cmdline_bytes = bootparams::cmdline_bytes(cmdline, &header).map_err(|e| cfg(&e))?;
    write("the command line", layout::CMDLINE_START, &cmdline_bytes)?;
    let initrd_at = match initrd {
        Some(bytes) => {
            let size = bytes.len() as u64;
            let addr = bootparams::initrd_address(config.mem_size, &header, loaded.end, size)
                .map_err(|e| cfg(&e))?;
            write("the initrd", addr, bytes)?;
            Some((addr, size))
        }
        None => None,
    };
    for (addr, bytes) in arch::acpi::tables(config.cpus, virtio).map_err(|e| cfg(&e))? {
        write("ACPI tables", addr, &bytes)?;
    }
    let zero_page = bootparams::build(&bootparams::ZeroPage {
        header: loaded.header,
        cmdline_addr: layout::CMDLINE_START,
        cmdline_len: cmdline_bytes.len() - 1,
        initrd: initrd_at,
        mem_size: config.mem_size,
        rsdp_addr: layout::RSDP_START,
    });
    write(
        "the zero page",
        layout::ZERO_PAGE_START,
        zero_page.as_slice(),
    )?;
    write(
        "the reset stub",
        layout::RESET_VECTOR,
        &arch::firmware::reset_stub(),
    )?;
    arch::regs::write_gdt(mem)?;
    let cr3 = arch::paging::write_identity_tables(mem)?;
    tracing::info!(
        format = ?loaded.format,
        entry = format_args!("{:#x}", loaded.entry),
        initrd = ?initrd_at,
        "kernel loaded"
    );
    Ok(Entry::Linux {
        entry: loaded.entry,
        zero_page: layout::ZERO_PAGE_START,
        cr3,
    })
}

/// Kicks every vCPU thread out of `KVM_RUN` until it has finished, and collects the stats.
fn stop_vcpus(threads: Vec<JoinHandle<VcpuStats>>) -> Vec<VcpuStats> {
    const KICK_INTERVAL: Duration = Duration::from_millis(2);
    const GIVE_UP: Duration = Duration::from_secs(5);
    let deadline = Instant::now() + GIVE_UP;
    let mut out = Vec::new();
    for (i, t) in threads.into_iter().enumerate() {
        while !t.is_finished() && Instant::now() < deadline {
            let _ = t.kill(crate::signals::kick_signal());
            std::thread::sleep(KICK_INTERVAL);
        }
        if t.is_finished() {
            out.push(t.join().unwrap_or_default());
        } else {
            tracing::error!("vcpu{i} did not stop within {GIVE_UP:?}; abandoning it");
            out.push(VcpuStats::default());
        }
    }
    out
}

/// Epoll tokens of the main loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Token {
    Control = 1,
    Terminate = 2,
    Stdin = 3,
    SerialDrained = 4,
    ConsoleOut = 5,
}

impl Token {
    const ALL: [Token; 5] = [
        Token::Control,
        Token::Terminate,
        Token::Stdin,
        Token::SerialDrained,
        Token::ConsoleOut,
    ];

    fn from_u64(v: u64) -> Option<Token> {
        Token::ALL.into_iter().find(|t| *t as u64 == v)
    }
}

/// Bytes of host input kept waiting for the guest before stdin is throttled.
const MAX_PENDING_INPUT: usize = 64 << 10;

fn event_loop(
    control: &Control,
    term_evt: &EventFd,
    serial: &Mutex<Serial>,
    serial_drained: &EventFd,
    serial_out: &ConsoleOut,
    console: &mut Console,
) -> std::io::Result<()> {
    let epoll = Epoll::new()?;
    let add = |fd: i32, t: Token| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, t as u64),
        )
    };
    add(control.wake.as_raw_fd(), Token::Control)?;
    add(term_evt.as_raw_fd(), Token::Terminate)?;
    add(serial_drained.as_raw_fd(), Token::SerialDrained)?;
    add(console.reader.evt.as_raw_fd(), Token::Stdin)?;
    add(serial_out.evt().as_raw_fd(), Token::ConsoleOut)?;
    // Input that arrived before this boot's loop started (or during a restart).
    let _ = console.reader.evt.write(1);

    let mut events = vec![EpollEvent::default(); 8];
    loop {
        if control.stopping() {
            serial_out.drain();
            return Ok(());
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            match Token::from_u64(ev.data()) {
                Some(Token::Control) => {
                    let _ = control.wake.read();
                }
                Some(Token::ConsoleOut) => serial_out.drain(),
                Some(Token::Terminate) => {
                    let _ = term_evt.read();
                    control.request_stop(VmStop::Signal(crate::signals::last_signal()));
                }
                Some(Token::Stdin) | Some(Token::SerialDrained) => {
                    let _ = console.reader.evt.read();
                    let _ = serial_drained.read();
                    pump_input(control, serial, console);
                }
                None => {}
            }
        }
    }
}

/// Moves host input into the UART as far as its FIFO allows.
fn pump_input(control: &Control, serial: &Mutex<Serial>, console: &mut Console) {
    while console.open && console.pending.len() < MAX_PENDING_INPUT {
        match console.reader.rx.try_recv() {
            Ok(chunk) if chunk.is_empty() => console.open = false,
            Ok(chunk) => {
                if console.is_tty {
                    let f = console.escape.filter(&chunk);
                    console.pending.extend(f.bytes);
                    if f.quit {
                        control.request_stop(VmStop::UserQuit);
                    }
                } else {
                    console.pending.extend(chunk);
                }
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => break,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => console.open = false,
        }
    }
    if !console.pending.is_empty() {
        let mut s = serial.lock().unwrap_or_else(|p| p.into_inner());
        let (a, _) = console.pending.as_slices();
        let mut taken = s.enqueue_input(a);
        if taken == a.len() {
            console.pending.drain(..taken);
            let (b, _) = console.pending.as_slices();
            taken = s.enqueue_input(b);
        }
        console.pending.drain(..taken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_round_trips() {
        // `match` forces this list to follow the enum; ALL must contain each variant.
        for t in Token::ALL {
            match t {
                Token::Control
                | Token::Terminate
                | Token::Stdin
                | Token::SerialDrained
                | Token::ConsoleOut => assert_eq!(Token::from_u64(t as u64), Some(t)),
            }
        }
        assert_eq!(Token::ALL.len(), Token::ConsoleOut as usize);
        assert_eq!(Token::from_u64(0), None);
    }
}
