//! Config -> running VM: one linear recipe ([`run`]) and the main thread's event loop.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arch::layout::{self, BOOT_STRUCTURES_END, REAL_MODE_LIMIT};
use arch::regs::EntryMode;
use devices::legacy::{ports, serial::Stdout, DebugExit, PostCode, Serial, I8042};
use devices::BusError;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::config::{human_size, Payload, VmConfig, MIN_MEM_SIZE};
use crate::console::{self, Escape, RawTerminal};
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
    /// Exit statistics.
    pub stats: StatsReport,
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
    } = &config.payload;
    let (load_addr, mode) = (*load_addr, *mode);
    let meta = std::fs::metadata(path).map_err(|source| VmError::ReadImage {
        path: path.clone(),
        source,
    })?;
    if meta.is_dir() {
        return Err(VmError::Config(format!(
            "raw image {} is a directory",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|source| VmError::ReadImage {
        path: path.clone(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(VmError::Config(format!(
            "raw image {} is empty",
            path.display()
        )));
    }
    let len = bytes.len() as u64;
    let end = load_addr.checked_add(len);
    let ram_ok = arch::layout::ram_ranges(config.mem_size)
        .iter()
        .any(|&(start, size)| load_addr >= start && end.is_some_and(|e| e <= start + size));
    if !ram_ok {
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

/// Devices of the VM that the main thread talks to.
struct Platform {
    buses: Buses,
    serial: Arc<Mutex<Serial>>,
    serial_drained: Arc<EventFd>,
}

fn attach_devices() -> Result<Platform, VmError> {
    let mut buses = Buses::default();
    let serial_drained = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(host("eventfd"))?);
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(host("eventfd"))?;
    let serial = Arc::new(Mutex::new(Serial::new(
        serial_irq,
        serial_drained.clone(),
        Box::new(Stdout),
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
    Ok(Platform {
        buses,
        serial,
        serial_drained,
    })
}

/// Builds the VM described by `config`, runs it to the end and returns why it ended.
///
/// `extra_mmio` devices are attached to the MMIO bus (tests use it for a test device).
pub fn run(config: &VmConfig) -> Result<VmOutcome, VmError> {
    run_with(config, Vec::new())
}

/// An extra MMIO device: name, base, length, device.
pub type ExtraDevice = (String, u64, u64, devices::bus::SharedDevice);

/// [`run`] with extra MMIO devices.
pub fn run_with(config: &VmConfig, extra_mmio: Vec<ExtraDevice>) -> Result<VmOutcome, VmError> {
    // 1. Everything the user gave us, checked before KVM is touched.
    check_config(config)?;
    let image = load_raw(config)?;

    // 2. KVM, the VM and its memory.
    let kvm = kvm::open(&config.kvm_path)?;
    let max = kvm.get_max_vcpus();
    if config.cpus as usize > max {
        return Err(VmError::Config(format!(
            "--cpus {} is above this host's KVM maximum of {max} vCPUs",
            config.cpus
        )));
    }
    let vm = kvm.create_vm().map_err(|source| VmError::Ioctl {
        what: "KVM_CREATE_VM",
        source,
    })?;
    let mem: GuestMem = memory::create(config.mem_size)?;
    memory::register(&vm, &mem)?;

    // 3. Devices.
    let mut platform = attach_devices()?;
    for (name, base, len, dev) in extra_mmio {
        platform.buses.mmio.insert(&name, base, len, dev)?;
    }

    // 4. The guest image and the boot structures.
    mem.write_slice(&image.bytes, GuestAddress(image.load_addr))
        .map_err(|e| VmError::Config(format!("cannot load raw image: {e}")))?;
    let cr3 = match image.mode {
        EntryMode::Long => {
            arch::regs::write_gdt(&mem)?;
            arch::paging::write_identity_tables(&mem)?
        }
        EntryMode::Real => 0,
    };
    let entry = Entry {
        mode: image.mode,
        load_addr: image.load_addr,
        cr3,
    };

    // 5. vCPUs.
    let fds = (0..config.cpus)
        .map(|i| vcpu::create(&kvm, &vm, i, config.cpus, entry))
        .collect::<Result<Vec<_>, _>>()?;

    // 6. Run: vCPU threads, then the event loop on this thread.
    let term_evt = crate::signals::install().map_err(host("installing signal handlers"))?;
    let control = Arc::new(Control::new(config.cpus).map_err(host("eventfd"))?);
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
    let terminal = if config.console_input {
        RawTerminal::stdin()
    } else {
        None
    };
    let loop_result = event_loop(
        &control,
        term_evt,
        &platform.serial,
        &platform.serial_drained,
        config.console_input,
        terminal.is_some(),
    );
    if let Err(e) = loop_result {
        control.request_stop(VmStop::Error(format!("event loop: {e}")));
    }
    let per_vcpu = stop_vcpus(threads);
    drop(terminal);
    let stats = StatsReport::new(&per_vcpu, start.elapsed());
    let stop = control
        .reason()
        .unwrap_or_else(|| VmStop::Error("the VM stopped without a reason".into()));
    Ok(VmOutcome { stop, stats })
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
}

impl Token {
    fn from_u64(v: u64) -> Option<Token> {
        [
            Token::Control,
            Token::Terminate,
            Token::Stdin,
            Token::SerialDrained,
        ]
        .into_iter()
        .find(|t| *t as u64 == v)
    }
}

/// Bytes of host input kept waiting for the guest before stdin is throttled.
const MAX_PENDING_INPUT: usize = 64 << 10;

fn event_loop(
    control: &Control,
    term_evt: &EventFd,
    serial: &Mutex<Serial>,
    serial_drained: &EventFd,
    console_input: bool,
    is_tty: bool,
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
    let stdin = console::spawn_stdin_reader(console_input)?;
    add(stdin.evt.as_raw_fd(), Token::Stdin)?;

    let mut escape = Escape::default();
    let mut pending: VecDeque<u8> = VecDeque::new();
    let mut stdin_open = console_input;
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        if control.stopping() {
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
                Some(Token::Terminate) => {
                    let _ = term_evt.read();
                    control.request_stop(VmStop::Signal(crate::signals::last_signal()));
                }
                Some(Token::Stdin) | Some(Token::SerialDrained) => {
                    let _ = stdin.evt.read();
                    let _ = serial_drained.read();
                    while stdin_open && pending.len() < MAX_PENDING_INPUT {
                        match stdin.rx.try_recv() {
                            Ok(chunk) if chunk.is_empty() => stdin_open = false,
                            Ok(chunk) => {
                                if is_tty {
                                    let f = escape.filter(&chunk);
                                    pending.extend(f.bytes);
                                    if f.quit {
                                        control.request_stop(VmStop::UserQuit);
                                    }
                                } else {
                                    pending.extend(chunk);
                                }
                            }
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => stdin_open = false,
                        }
                    }
                    if !pending.is_empty() {
                        let mut s = serial.lock().unwrap_or_else(|p| p.into_inner());
                        let (a, _) = pending.as_slices();
                        let mut taken = s.enqueue_input(a);
                        if taken == a.len() {
                            pending.drain(..taken);
                            let (b, _) = pending.as_slices();
                            taken = s.enqueue_input(b);
                        }
                        pending.drain(..taken);
                    }
                }
                None => {}
            }
        }
    }
}
