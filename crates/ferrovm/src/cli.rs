//! Command-line definitions and their translation into VMM calls.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use devices::StopReason;
use vmm::config::{Payload, VmConfig, DEFAULT_KVM_PATH};
use vmm::options::parse_size;
use vmm::VmStop;

/// ferrovm: a virtual machine monitor for Linux/KVM.
#[derive(Debug, Parser)]
#[command(name = "ferrovm", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the KVM accelerator: API version and the capabilities ferrovm uses.
    KvmInfo(KvmInfoArgs),
    /// Run a virtual machine.
    #[command(after_help = RUN_AFTER_HELP)]
    Run(Box<RunArgs>),
    /// Disk-image tool (create, info, check, convert, resize, map).
    Img(crate::img::ImgArgs),
    /// Control a running ferrovm through its API socket (info, pause, resume, exits ...).
    #[command(after_help = crate::ctl::CTL_AFTER_HELP)]
    Ctl(crate::ctl::CtlArgs),
    /// Inspect snapshots and merge diff snapshots (info, merge).
    Snapshot(crate::snapshot_cmd::SnapshotArgs),
}

const RUN_AFTER_HELP: &str = "\
Linux (--kernel):
  An ELF vmlinux or a bzImage; a bzImage's payload (gzip, xz, lzma, bzip2, lz4, zstd) is
  decompressed on the host by default and the guest enters the uncompressed kernel at its
  64-bit entry point. Devices are described to the guest with ACPI (CPUs, interrupt
  controllers, power off). Guest poweroff ends ferrovm with status 0; reboot ends it too
  (or restarts the VM with --on-reboot restart); a kernel panic ends it with status 1.

Raw images (--raw):
  The file is copied to guest RAM at --load-addr and every vCPU starts there, with
  RDI/DI = the vCPU index and RSI/SI = the number of vCPUs.
  real mode: CS = DS = ES = FS = GS = load address / 16, IP = 0, SS:SP = 0:0x8ff0.
  long mode: 64-bit, paging on, the first 4 GiB identity-mapped with 2 MiB pages
             (GDT at 0x500, page tables at 0x9000..0xf000), RIP = load address,
             RSP = 0x8ff0.

Devices:
  COM1 16550A UART at port 0x3f8 (stdin/stdout; Ctrl-A x quits when stdin is a terminal,
  Ctrl-A Ctrl-A sends Ctrl-A), i8042 at 0x60/0x64 (command 0xfe resets), POST port 0x80,
  debug-exit port 0xf4: writing value V ends the VM and ferrovm exits with status V.

API (--api-sock PATH):
  Firecracker's REST API (HTTP/1.1, JSON) on a Unix socket of mode 0600. With a payload
  (--kernel, --raw, --config-file) the VM boots at once and the API controls it; without,
  ferrovm waits to be configured (PUT /machine-config, /boot-source, /drives/{id},
  /entropy) and booted (PUT /actions with action_type InstanceStart). Client:
  ferrovm ctl --api-sock PATH ... or curl --unix-socket PATH http://localhost/...

Exit status:
  the debug-exit value; 0 when the guest powers off, resets, or all vCPUs halt;
  1 on errors (triple fault, KVM internal error, guest crash ...); 128+N on signal N.";

#[derive(Debug, Args)]
pub struct KvmInfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// KVM device node.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_KVM_PATH)]
    pub kvm_device: PathBuf,
}

/// CPU mode at entry of a raw image.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// 16-bit real mode.
    Real,
    /// 64-bit long mode with identity-mapped paging.
    Long,
}

/// Where a bzImage is decompressed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DecompressArg {
    /// On the host before boot: the guest starts in the uncompressed kernel.
    Host,
    /// In the guest, by the kernel's own decompressor (the classic path).
    Guest,
}

/// What a guest reboot does.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnRebootArg {
    /// ferrovm exits with status 0.
    Exit,
    /// The VM is rebuilt and boots again.
    Restart,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Linux kernel to boot: an ELF vmlinux or a bzImage (e.g. /boot/vmlinuz-*).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio, optionally compressed) for --kernel.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for --kernel [default: "console=ttyS0 panic=-1 pci=off quiet"].
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Where a bzImage's payload is decompressed.
    #[arg(long, value_enum, value_name = "WHERE", default_value_t = DecompressArg::Host)]
    pub kernel_decompress: DecompressArg,
    /// What a guest reboot does.
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = OnRebootArg::Exit)]
    pub on_reboot: OnRebootArg,
    /// Decompress the bzImage every time instead of reusing the cached uncompressed kernel
    /// ($FERROVM_CACHE_DIR, else $XDG_CACHE_HOME/ferrovm, else ~/.cache/ferrovm).
    #[arg(long)]
    pub no_kernel_cache: bool,
    /// Attach a disk (virtio-blk); repeat for more (/dev/vda, /dev/vdb ...). SPEC is
    /// `path=FILE[,format=raw|qcow2][,readonly=on][,cache=writeback|none]
    /// [,aio=threads|io_uring][,id=SERIAL]`; a bare first word is the path, `,,` is a literal
    /// comma. cache=none opens the image with O_DIRECT; format is probed when not given.
    /// Needs --kernel.
    #[arg(long, value_name = "SPEC", value_parser = parse_drive_arg)]
    pub drive: Vec<vmm::drive::DriveConfig>,
    /// Attach a network interface (virtio-net); repeat for more (eth0, eth1 ...). SPEC is
    /// `tap=NAME[,mac=MAC][,mtu=N][,queues=N][,vhost=on|off][,id=ID]` (an existing tap, or
    /// one ferrovm creates and removes), or `user[,hostfwd=tcp::HOSTPORT-:GUESTPORT]...`
    /// (no privileges needed: passt answers DHCP and DNS and forwards the host ports), each
    /// optionally with `rx_bw=SIZE,tx_bw=SIZE` (bytes/s) and `rx_ops=N,tx_ops=N`
    /// (packets/s) limits. Needs --kernel.
    #[arg(long, value_name = "SPEC", value_parser = parse_net_arg)]
    pub net: Vec<vmm::net::NetConfig>,
    /// Attach a vsock device: `cid=N,uds=PATH` (guest context id 3 and up). A host process
    /// connects to PATH and writes `CONNECT <port>\n` to reach the guest's listener on
    /// that port; a guest connection to CID 2 port P reaches a host listener on `PATH_P`
    /// (Firecracker's scheme). Needs --kernel.
    #[arg(long, value_name = "SPEC", value_parser = parse_vsock_arg)]
    pub vsock: Option<vmm::vsock_balloon::VsockConfig>,
    /// Attach a memory balloon:
    /// `size=MIB[,deflate_on_oom=on][,stats=SECONDS][,free_page_reporting=on]`. The guest
    /// gives the host back `size` MiB (change it while the guest runs with PATCH /balloon
    /// or `ferrovm ctl balloon MIB`); stats= polls the guest's memory statistics;
    /// free_page_reporting hands back pages the guest frees. Needs --kernel.
    #[arg(long, value_name = "SPEC", value_parser = parse_balloon_arg)]
    pub balloon: Option<vmm::vsock_balloon::BalloonConfig>,
    /// Writes to every drive go to a temporary overlay (in $TMPDIR) that is deleted when
    /// the VM ends; the image files are only read. Like QEMU's -snapshot.
    #[arg(long)]
    pub snapshot: bool,
    /// No virtio entropy device (by default a Linux guest gets one, /dev/hwrng, fed from
    /// the host's getrandom).
    #[arg(long)]
    pub no_rng: bool,
    /// Flat binary to load into guest RAM and run.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    pub raw: Option<PathBuf>,
    /// Guest RAM size (e.g. 128M, 2G; a bare number is MiB, as with QEMU's -m). RAM beyond
    /// 3 GiB is placed above 4 GiB.
    #[arg(long, value_name = "SIZE", default_value = "128M", value_parser = parse_mem_arg)]
    pub mem: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,
    /// Guest physical load address (and entry point) of the raw image.
    #[arg(long, value_name = "GPA", default_value = "0x10000", value_parser = parse_addr_arg)]
    pub load_addr: u64,
    /// CPU mode at entry of the raw image.
    #[arg(long, value_enum, default_value_t = Mode::Real)]
    pub mode: Mode,
    /// Print per-exit-reason, per-port and per-MMIO-region statistics on stderr at the end.
    #[arg(long)]
    pub stats: bool,
    /// Write the exit statistics and the virtio devices' counters as JSON to FILE at the
    /// end.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// KVM device node.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_KVM_PATH)]
    pub kvm_device: PathBuf,
    /// Serve Firecracker's REST API on this Unix socket (mode 0600). Without --kernel,
    /// --raw or --config-file, ferrovm waits to be configured and started over it.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Firecracker's JSON configuration ("boot-source", "drives", "machine-config",
    /// "entropy", "logger", "metrics" ...); the VM boots at once.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "raw", "initrd", "cmdline", "drive", "net", "vsock", "balloon", "mem", "cpus", "no_rng"])]
    pub config_file: Option<PathBuf>,
    /// Instance id (reported by GET / and in metrics).
    #[arg(long, value_name = "ID", default_value = vmm::vmm::DEFAULT_INSTANCE_ID)]
    pub id: String,
    /// Largest API request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = api::DEFAULT_MAX_PAYLOAD)]
    pub http_api_max_payload_size: usize,
    /// Restore the VM of this snapshot (made with PUT /snapshot/create or
    /// `ferrovm ctl snapshot`) instead of booting one; it stays paused unless --resume.
    #[arg(long, value_name = "SNAPSHOT", requires = "mem_file", conflicts_with_all = ["kernel", "raw", "config_file", "initrd", "cmdline", "drive", "net", "vsock", "balloon", "mem", "cpus"])]
    pub restore: Option<PathBuf>,
    /// The snapshot's memory file (with --restore).
    #[arg(long, value_name = "FILE", requires = "restore")]
    pub mem_file: Option<PathBuf>,
    /// Run the restored guest at once (with --restore).
    #[arg(long, requires = "restore")]
    pub resume: bool,
    /// Seccomp filters, one allow-list per thread kind: `on` (a forbidden call ends
    /// ferrovm with a message naming the thread and the call), `log` (allowed, logged by
    /// the kernel: see dmesg), `off`.
    #[arg(long, value_name = "MODE", default_value = "on")]
    pub seccomp: seccomp::Mode,
    /// Pin vCPU i to the i-th host CPU of this list (one per vCPU, e.g. `2,3`).
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus_arg)]
    pub vcpu_affinity: Option<CpuList>,
    /// Pin the main, API and device threads to these host CPUs (e.g. `0-1,4`).
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus_arg)]
    pub device_affinity: Option<CpuList>,
    #[command(flatten)]
    pub jail: crate::jail_cmd::JailArgs,
}

/// A host CPU list (`0-2,5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

fn parse_cpus_arg(s: &str) -> Result<CpuList, String> {
    seccomp::parse_cpu_list(s).map(CpuList)
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// `--mem`: a size, where a bare number is MiB (QEMU's `-m 256`).
fn parse_mem_arg(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .ok()
            .and_then(|m| m.checked_mul(1 << 20))
            .ok_or_else(|| format!("--mem {s}: too large"));
    }
    parse_size_arg(s)
}

fn parse_vsock_arg(s: &str) -> Result<vmm::vsock_balloon::VsockConfig, String> {
    vmm::vsock_balloon::parse_vsock(s)
}

fn parse_balloon_arg(s: &str) -> Result<vmm::vsock_balloon::BalloonConfig, String> {
    vmm::vsock_balloon::parse_balloon(s)
}

fn parse_net_arg(s: &str) -> Result<vmm::net::NetConfig, String> {
    vmm::net::parse_net(s)
}

fn parse_drive_arg(s: &str) -> Result<vmm::drive::DriveConfig, String> {
    vmm::drive::parse_drive(s)
}

fn parse_addr_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

impl RunArgs {
    /// Checks combinations clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.kernel.is_none()
            && self.raw.is_none()
            && self.config_file.is_none()
            && self.restore.is_none()
            && self.api_sock.is_none()
        {
            return Err("nothing to run: give --kernel FILE or --raw FILE (or --config-file FILE, --restore SNAPSHOT --mem-file FILE, or --api-sock PATH to configure the VM over the API)".into());
        }
        if self.kernel.is_some() && self.raw.is_some() {
            return Err("--kernel and --raw cannot be used together".into());
        }
        if self.kernel.is_none() {
            if self.initrd.is_some() {
                return Err("--initrd needs --kernel".into());
            }
            if self.cmdline.is_some() {
                return Err("--cmdline needs --kernel".into());
            }
            if !self.drive.is_empty() {
                return Err("--drive needs --kernel (virtio devices need the in-kernel interrupt controller a Linux boot sets up)".into());
            }
            for (given, flag) in [
                (!self.net.is_empty(), "--net"),
                (self.vsock.is_some(), "--vsock"),
                (self.balloon.is_some(), "--balloon"),
            ] {
                if given {
                    return Err(format!("{flag} needs --kernel (virtio devices need the in-kernel interrupt controller a Linux boot sets up)"));
                }
            }
        }
        Ok(())
    }
}

impl From<&RunArgs> for VmConfig {
    fn from(a: &RunArgs) -> Self {
        let payload = match (&a.kernel, &a.raw) {
            (Some(kernel), _) => Some(Payload::Kernel {
                path: kernel.clone(),
                initrd: a.initrd.clone(),
                cmdline: a
                    .cmdline
                    .clone()
                    .unwrap_or_else(|| vmm::config::DEFAULT_CMDLINE.to_string()),
                decompress: match a.kernel_decompress {
                    DecompressArg::Host => vmm::config::Decompress::Host,
                    DecompressArg::Guest => vmm::config::Decompress::Guest,
                },
            }),
            (None, Some(raw)) => Some(Payload::Raw {
                path: raw.clone(),
                load_addr: a.load_addr,
                mode: match a.mode {
                    Mode::Real => vmm::config::EntryMode::Real,
                    Mode::Long => vmm::config::EntryMode::Long,
                },
            }),
            (None, None) => None,
        };
        VmConfig {
            kvm_path: a.kvm_device.clone(),
            mem_size: a.mem,
            cpus: a.cpus,
            payload,
            stats: a.stats,
            stats_json: a.stats_json.clone(),
            console_input: true,
            kernel_cache: !a.no_kernel_cache,
            drives: a.drive.clone(),
            nets: a.net.clone(),
            vsock: a.vsock.clone(),
            balloon: a.balloon,
            rng: a.kernel.is_some() && !a.no_rng,
            snapshot: a.snapshot,
            track_dirty_pages: false,
            seccomp: a.seccomp,
            placement: seccomp::Placement {
                vcpus: a.vcpu_affinity.clone().map(|c| c.0).unwrap_or_default(),
                devices: a.device_affinity.clone().map(|c| c.0).unwrap_or_default(),
            },
            on_reboot: match a.on_reboot {
                OnRebootArg::Exit => vmm::config::OnReboot::Exit,
                OnRebootArg::Restart => vmm::config::OnReboot::Restart,
            },
        }
    }
}

/// `ferrovm kvm-info`.
pub fn kvm_info(args: KvmInfoArgs) -> Result<u8> {
    let info = vmm::kvm::info(&args.kvm_device)?;
    let text = if args.json {
        serde_json::to_string_pretty(&info)?
    } else {
        info.to_string()
    };
    print_stdout(&text)?;
    Ok(0)
}

/// Prints a line on stdout; a closed pipe (`| head`) is not an error.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The exit status and message for how the VM ended.
pub fn exit_status(stop: &VmStop) -> (u8, Option<String>) {
    match stop {
        VmStop::Device(StopReason::DebugExit(code)) => (*code, None),
        VmStop::Device(StopReason::PowerOff) => (0, None),
        VmStop::Device(StopReason::Reset) => {
            (0, Some("guest requested a reset; VM stopped".into()))
        }
        VmStop::AllHalted => (0, None),
        VmStop::UserQuit => (0, Some("terminated by Ctrl-A x".into())),
        VmStop::Signal(n) => (
            128u8.saturating_add(*n as u8),
            Some(format!("terminated by signal {n}")),
        ),
        VmStop::Crash => (1, Some("guest crashed (KVM system event: crash)".into())),
        VmStop::GuestPanic => (
            1,
            Some("guest kernel panicked (see its console output above)".into()),
        ),
        VmStop::Fault { vcpu, fault, dump } => (1, Some(format!("vcpu{vcpu}: {fault}\n{dump}"))),
        VmStop::Error(e) => (1, Some(e.clone())),
    }
}

/// `ferrovm run`.
pub fn run(args: RunArgs, logger: std::sync::Arc<vmm::logger::Logger>) -> Result<u8> {
    use vmm::logger::LoggerControl;
    args.validate().map_err(anyhow::Error::msg)?;
    let mut config = VmConfig::from(&args);
    let mut metrics = None;
    if let Some(path) = &args.config_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        let file: api::models::FullVmConfig = serde_json::from_str(&text)
            .with_context(|| format!("configuration file {}", path.display()))?;
        vmm::resources::apply_full_config(&mut config, &file)
            .map_err(|e| anyhow::anyhow!("configuration file {}: {e}", path.display()))?;
        if let Some(l) = &file.logger {
            logger.configure(l).map_err(|e| {
                anyhow::anyhow!("configuration file {}: logger: {e}", path.display())
            })?;
        }
        metrics = file.metrics.clone();
    }
    let jailed = crate::jail_cmd::Extra {
        api_sock: args.api_sock.as_deref(),
        metrics_path: metrics.as_ref().map(|m| m.metrics_path.as_str()),
        restore: args.restore.as_deref().zip(args.mem_file.as_deref()),
        id: &args.id,
    };
    if let Some(code) = crate::jail_cmd::enter(&args.jail, &config, &jailed)? {
        return Ok(code);
    }
    let stats = config.stats;
    let stats_json = config.stats_json.clone();
    let boot = config.payload.is_some();
    let outcome = vmm::run_vmm(vmm::RunOptions {
        config,
        boot,
        api: args.api_sock.clone().map(|socket| vmm::vmm::ApiOptions {
            socket,
            max_payload: args.http_api_max_payload_size,
        }),
        instance_id: args.id.clone(),
        extra_mmio: Vec::new(),
        logger: Some(logger),
        metrics,
        restore: args
            .restore
            .clone()
            .map(|state_path| vmm::vmm::RestoreOptions {
                state_path,
                // clap requires --mem-file with --restore.
                mem_path: args.mem_file.clone().unwrap_or_default(),
                resume: args.resume,
            }),
    })?;
    if stats {
        eprint!("{}", outcome.stats.to_table());
    }
    if let Some(path) = &stats_json {
        let report = vmm::stats::LiveReport::new(outcome.stats.clone(), outcome.devices.clone());
        let json = serde_json::to_string_pretty(&report).context("cannot format statistics")?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write statistics to {}", path.display()))?;
    }
    let (code, message) = exit_status(&outcome.stop);
    if let Some(m) = message {
        eprintln!("ferrovm: {m}");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ferrovm").chain(args.iter().copied()))
    }

    #[test]
    fn run_defaults() {
        let Command::Run(r) = parse(&["run", "--raw", "x.bin"]).unwrap().command else {
            panic!()
        };
        assert_eq!((r.mem, r.cpus, r.load_addr), (128 << 20, 1, 0x10000));
        assert!(matches!(r.mode, Mode::Real));
        let c = VmConfig::from(&*r);
        assert!(matches!(c.payload, Some(Payload::Raw { .. })));
    }

    #[test]
    fn run_sizes_and_modes() {
        let Command::Run(r) = parse(&[
            "run",
            "--raw",
            "x",
            "--mem",
            "2G",
            "--cpus",
            "4",
            "--load-addr",
            "0x100000",
            "--mode",
            "long",
            "--stats-json",
            "s.json",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!((r.mem, r.cpus, r.load_addr), (2 << 30, 4, 0x100000));
        assert!(matches!(r.mode, Mode::Long));
        assert_eq!(
            r.stats_json.as_deref(),
            Some(std::path::Path::new("s.json"))
        );
    }

    #[test]
    fn kernel_arguments() {
        let Command::Run(r) = parse(&[
            "run",
            "--kernel",
            "bz",
            "--initrd",
            "i.cpio",
            "--kernel-decompress",
            "guest",
            "--on-reboot",
            "restart",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        let c = VmConfig::from(&*r);
        let Some(Payload::Kernel {
            path,
            initrd,
            cmdline,
            decompress,
        }) = c.payload
        else {
            panic!()
        };
        assert_eq!(path, std::path::PathBuf::from("bz"));
        assert_eq!(initrd, Some("i.cpio".into()));
        assert!(cmdline.contains("console=ttyS0"));
        assert_eq!(decompress, vmm::config::Decompress::Guest);
        assert_eq!(c.on_reboot, vmm::config::OnReboot::Restart);
    }

    #[test]
    fn bad_arguments_are_rejected() {
        let invalid = |args: &[&str]| match parse(args) {
            Err(_) => true,
            Ok(Cli {
                command: Command::Run(r),
            }) => r.validate().is_err(),
            Ok(_) => false,
        };
        for args in [
            &["run", "--raw", "x", "--mem", "12Q"][..],
            &["run", "--raw", "x", "--mem", "lots"],
            &["run", "--raw", "x", "--cpus", "-1"],
            &["run", "--raw", "x", "--mode", "protected"],
            &["run"],
            &["run", "--raw", "x", "--kernel", "k"],
            &["run", "--raw", "x", "--initrd", "i"],
            &["run", "--kernel", "k", "--kernel-decompress", "cloud"],
            &["run", "--raw", "x", "--cmdline", "quiet"],
        ] {
            assert!(invalid(args), "{args:?}");
        }
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(
            exit_status(&VmStop::Device(StopReason::DebugExit(42))).0,
            42
        );
        assert_eq!(exit_status(&VmStop::Device(StopReason::PowerOff)).0, 0);
        assert_eq!(exit_status(&VmStop::AllHalted).0, 0);
        assert_eq!(exit_status(&VmStop::Signal(15)).0, 143);
        assert_eq!(exit_status(&VmStop::Crash).0, 1);
    }
}
