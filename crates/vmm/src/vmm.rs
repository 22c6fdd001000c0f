//! The VMM of one `ferrovm run`: the configuration, the VM once booted (rebuilt after a
//! guest reset with `--on-reboot restart`), the host console, the API's requests and the
//! metrics, all driven by one event loop on the main thread.
//!
//! The event loop is rust-vmm's `event-manager`; [`Vmm`] is its subscriber and keeps its
//! registrations in step with what exists: the fixed sources (termination signals, stdin,
//! the API's request queue) and each VM's own (its stop requests, the UART's drained
//! input FIFO, buffered console output, the metrics timer), registered when a VM starts and
//! removed before it is dropped.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::StopReason;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{OnReboot, VmConfig};
use crate::console::Console;
use crate::control::VmStop;
use crate::device_manager::{ExtraDevice, VirtioSet};
use crate::drive::{self, PreparedDrive};
use crate::error::{host, VmError};
use crate::logger::LoggerControl;
use crate::metrics::Metrics;
use crate::payload::{self, BootPayload};
use crate::stats::StatsReport;
use crate::vm::{Phase, Vm};

/// How a VM run ended.
#[derive(Debug)]
pub struct VmOutcome {
    /// Why it stopped.
    pub stop: VmStop,
    /// Exit statistics (of the last boot).
    pub stats: StatsReport,
    /// How many times the guest booted (more than 1 with `--on-reboot restart`).
    pub boots: u32,
    /// The virtio devices' counters at the end (of the last boot).
    pub devices: Vec<crate::device_manager::NamedCounts>,
}

/// The API side of a run.
pub struct ApiOptions {
    /// Where the API socket is.
    pub socket: std::path::PathBuf,
    /// Largest request body.
    pub max_payload: usize,
}

/// Everything `ferrovm run` hands the VMM.
pub struct RunOptions {
    /// The VM (its payload is `None` when it is to be configured over the API).
    pub config: VmConfig,
    /// Boot at once (the command line or `--config-file` gave a payload); otherwise wait
    /// for `InstanceStart`.
    pub boot: bool,
    /// Serve the API.
    pub api: Option<ApiOptions>,
    /// The instance id (`GET /`, metrics).
    pub instance_id: String,
    /// Extra MMIO devices (tests).
    pub extra_mmio: Vec<ExtraDevice>,
    /// The logger `PUT /logger` reconfigures.
    pub logger: Option<Arc<dyn LoggerControl>>,
    /// The metrics destination from `--config-file`.
    pub metrics: Option<api::models::Metrics>,
    /// Restore this snapshot at once (`--restore`).
    pub restore: Option<RestoreOptions>,
}

/// `ferrovm run --restore SNAPSHOT --mem-file FILE [--resume]`.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The state file.
    pub state_path: std::path::PathBuf,
    /// The memory file.
    pub mem_path: std::path::PathBuf,
    /// Run the guest at once (else it stays paused, for the API to resume).
    pub resume: bool,
}

impl RunOptions {
    /// Options that boot `config` at once, without the API.
    pub fn boot(config: VmConfig) -> RunOptions {
        RunOptions {
            config,
            boot: true,
            api: None,
            instance_id: DEFAULT_INSTANCE_ID.into(),
            extra_mmio: Vec::new(),
            logger: None,
            metrics: None,
            restore: None,
        }
    }
}

/// Firecracker's default instance id.
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

/// Builds the VM described by `config`, runs it to the end and returns why it ended.
pub fn run(config: &VmConfig) -> Result<VmOutcome, VmError> {
    run_vmm(RunOptions::boot(config.clone()))
}

/// [`run`] with extra MMIO devices (tests use it for a test device).
pub fn run_with(config: &VmConfig, extra_mmio: Vec<ExtraDevice>) -> Result<VmOutcome, VmError> {
    run_vmm(RunOptions {
        extra_mmio,
        ..RunOptions::boot(config.clone())
    })
}

/// Runs the VMM described by `opts` until its VM ends (or, with the API and no VM yet,
/// until a termination signal).
pub fn run_vmm(opts: RunOptions) -> Result<VmOutcome, VmError> {
    let restore = opts.restore.clone();
    let mut vmm = Vmm::new(opts)?;
    if let Some(r) = restore {
        vmm.restore(
            &crate::snapshot::RestoreRequest {
                state_path: r.state_path,
                mem_path: r.mem_path,
                kvm_path: Some(vmm.config.kvm_path.clone()),
                tap_overrides: Vec::new(),
                track_dirty_pages: false,
            },
            r.resume,
        )
        .map_err(|e| VmError::Snapshot(Box::new(e)))?;
    } else if vmm.boot_now {
        vmm.boot()?;
    }
    vmm.seal()?;
    let vmm = Arc::new(Mutex::new(vmm));
    let mut em = EventManager::<Arc<Mutex<Vmm>>>::new()
        .map_err(|e| host("event loop")(std::io::Error::other(e.to_string())))?;
    em.add_subscriber(vmm.clone());
    loop {
        if let Some(outcome) = lock(&vmm).outcome.take() {
            return outcome;
        }
        if let Err(e) = em.run() {
            return Err(host("event loop")(std::io::Error::other(e.to_string())));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the event loop's tokens stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
enum Token {
    Terminate = 1,
    Stdin = 2,
    Api = 3,
    VmControl = 4,
    SerialDrained = 5,
    ConsoleOut = 6,
    MetricsTimer = 7,
}

impl Token {
    const ALL: [Token; 7] = [
        Token::Terminate,
        Token::Stdin,
        Token::Api,
        Token::VmControl,
        Token::SerialDrained,
        Token::ConsoleOut,
        Token::MetricsTimer,
    ];

    fn from_u32(v: u32) -> Option<Token> {
        Token::ALL.into_iter().find(|t| *t as u32 == v)
    }
}

/// A run's drives, prepared once and used by every boot. The payload is not kept: the
/// kernel (a decompressed bzImage is tens of MiB) is read again for a reboot, through the
/// cache, so no copy of it outlives the load.
struct Prepared {
    drives: Vec<PreparedDrive>,
}

/// The VMM of one run.
pub struct Vmm {
    pub(crate) config: VmConfig,
    pub(crate) kvm: Kvm,
    pub(crate) vm: Option<Vm>,
    prepared: Option<Prepared>,
    first_devices: Option<VirtioSet>,
    extra_mmio: Vec<ExtraDevice>,
    boot_now: bool,
    pub(crate) boots: u32,
    console: Console,
    term_evt: &'static EventFd,
    api: Option<(api::RequestQueue, api::ApiServer)>,
    pub(crate) instance_id: String,
    pub(crate) logger: Option<Arc<dyn LoggerControl>>,
    pub(crate) metrics: Metrics,
    registered: BTreeMap<Token, RawFd>,
    outcome: Option<Result<VmOutcome, VmError>>,
    /// The MSRs a snapshot saves (asked of KVM once).
    msrs: Option<Arc<Vec<u32>>>,
    /// Guest memory is mapped from a snapshot's memory file (not anonymous).
    memory_from_file: bool,
    /// A VM was started and the main thread is not sealed yet (see [`Vmm::seal`]).
    unsealed: bool,
}

impl Vmm {
    pub(crate) fn new(opts: RunOptions) -> Result<Vmm, VmError> {
        let started_at = Instant::now();
        let config = opts.config;
        if opts.boot {
            // Everything the user gave us is checked before KVM is touched.
            config.check()?;
            drive::check_drives(&config.drives, config.drive_slots(), config.snapshot)?;
        }
        crate::sandbox::configure(&config)?;
        let kvm = crate::kvm::open(&config.kvm_path)?;
        let term_evt = crate::signals::install().map_err(host("installing signal handlers"))?;
        let api = match &opts.api {
            None => None,
            Some(a) => {
                let (sender, queue) = api::request_queue().map_err(host("API queue"))?;
                let server = api::ApiServer::start(
                    &a.socket,
                    sender,
                    api::ServerOptions {
                        max_payload: a.max_payload,
                        ..Default::default()
                    },
                )
                .map_err(|e| host("API socket")(std::io::Error::other(e.to_string())))?;
                Some((queue, server))
            }
        };
        let console =
            Console::new(config.console_input).map_err(host("starting the stdin reader"))?;
        let mut metrics = Metrics::new(started_at);
        if let Some(m) = &opts.metrics {
            metrics
                .configure(m, &opts.instance_id)
                .map_err(|e| host("metrics")(std::io::Error::other(e)))?;
        }
        Ok(Vmm {
            config,
            kvm,
            vm: None,
            prepared: None,
            first_devices: None,
            extra_mmio: opts.extra_mmio,
            boot_now: opts.boot,
            boots: 0,
            console,
            term_evt,
            api,
            instance_id: opts.instance_id,
            logger: opts.logger,
            metrics,
            registered: BTreeMap::new(),
            outcome: None,
            msrs: None,
            memory_from_file: false,
            unsealed: false,
        })
    }

    /// Puts a drive's new preparation in place (after its image was swapped), so a guest
    /// reboot keeps the new image.
    pub(crate) fn replace_prepared_drive(&mut self, index: usize, p: PreparedDrive) {
        if let Some(slot) = self
            .prepared
            .as_mut()
            .and_then(|pr| pr.drives.get_mut(index))
        {
            *slot = p;
        }
    }

    /// Saves the paused VM (`PUT /snapshot/create`).
    pub(crate) fn snapshot(
        &mut self,
        req: &crate::snapshot::CreateRequest,
    ) -> Result<crate::snapshot::CreateReport, crate::snapshot::SnapshotError> {
        let msrs = match &self.msrs {
            Some(m) => m.clone(),
            None => {
                let m = Arc::new(
                    crate::vcpu::state::saveable_msrs(&self.kvm)
                        .map_err(crate::error::ioctl("KVM_GET_MSR_INDEX_LIST"))?,
                );
                self.msrs = Some(m.clone());
                m
            }
        };
        let Some(vm) = &mut self.vm else {
            return Err(VmError::NotPaused.into());
        };
        vm.quiesce_devices()?;
        let formats = self
            .prepared
            .as_ref()
            .map(|p| p.drives.iter().map(|d| d.format).collect())
            .unwrap_or_default();
        let ctx = crate::snapshot::SnapshotContext {
            config: &self.config,
            formats,
            macs: vm.devices().net_macs(),
            msrs,
            instance_id: &self.instance_id,
            anonymous_memory: !self.memory_from_file,
        };
        let report = crate::snapshot::create(vm, &ctx, req)?;
        tracing::info!(
            "snapshot {} + {}: {} bytes of state, {} of {} bytes of memory written, in {} µs",
            req.state_path.display(),
            req.mem_path.display(),
            report.state_bytes,
            report.memory.written,
            report.memory.total,
            report.took_us
        );
        Ok(report)
    }

    /// Rebuilds the VM of a snapshot and starts it (paused unless `resume`); the run
    /// then goes on as if it had booted it.
    pub(crate) fn restore(
        &mut self,
        req: &crate::snapshot::RestoreRequest,
        resume: bool,
    ) -> Result<(), crate::snapshot::SnapshotError> {
        let r = crate::snapshot::restore(&self.kvm, req, &self.extra_mmio)?;
        let mut vm = r.vm;
        self.config = crate::config::VmConfig {
            console_input: self.config.console_input,
            stats: self.config.stats,
            stats_json: self.config.stats_json.clone(),
            on_reboot: self.config.on_reboot,
            kernel_cache: self.config.kernel_cache,
            seccomp: self.config.seccomp,
            placement: self.config.placement.clone(),
            ..r.config
        };
        self.prepared = Some(Prepared { drives: r.drives });
        self.memory_from_file = true;
        self.boots += 1;
        let started = if resume {
            vm.start()
        } else {
            vm.start_paused()
        };
        self.vm = Some(vm);
        started?;
        self.unsealed = true;
        tracing::info!(
            "restored {} (ferrovm {}, taken {} ms after the epoch) in {:?}",
            req.state_path.display(),
            r.info.ferrovm_version,
            r.info.created_unix_ms,
            r.took
        );
        Ok(())
    }

    /// Whether the VM is configured in any way a snapshot load would override.
    pub(crate) fn configured(&self) -> bool {
        self.config.payload.is_some()
            || !self.config.drives.is_empty()
            || !self.config.nets.is_empty()
    }

    /// Whether a VM has been booted (the API's "post-boot").
    pub(crate) fn started(&self) -> bool {
        self.boots > 0
    }

    /// Checks, prepares and boots the configured VM.
    pub(crate) fn boot(&mut self) -> Result<(), VmError> {
        self.config.check()?;
        drive::check_drives(
            &self.config.drives,
            self.config.drive_slots(),
            self.config.snapshot,
        )?;
        // Formats and snapshot overlays, once for the whole run; the devices of the first
        // boot are built now, so that a drive they cannot use (size, format, O_DIRECT) is
        // reported before the kernel is decompressed. A reboot builds them afresh.
        let drives = self
            .config
            .drives
            .iter()
            .enumerate()
            .map(|(i, d)| drive::prepare(i, d, self.config.snapshot))
            .collect::<Result<Vec<_>, _>>()?;
        self.first_devices = Some(VirtioSet::build(&self.config, &drives)?);
        let payload = payload::prepare(&self.config)?;
        self.prepared = Some(Prepared { drives });
        self.start_vm(Some(payload))
    }

    /// Builds, loads and starts a VM from the prepared drives and `payload` (read again
    /// when `None`: a reboot). The payload is dropped once it is in guest memory.
    fn start_vm(&mut self, payload: Option<BootPayload>) -> Result<(), VmError> {
        let Some(prepared) = &self.prepared else {
            return Ok(());
        };
        let virtio = match self.first_devices.take() {
            Some(v) => v,
            None => VirtioSet::build(&self.config, &prepared.drives)?,
        };
        let payload = match payload {
            Some(p) => p,
            None => payload::prepare(&self.config)?,
        };
        let mut vm = crate::builder::build(&self.kvm, &self.config, virtio, &self.extra_mmio)?;
        vm.load(&payload, &self.config.root_args().unwrap_or_default())?;
        drop(payload);
        self.boots += 1;
        let started = vm.start();
        self.vm = Some(vm);
        started?;
        self.unsealed = true;
        Ok(())
    }

    /// Seals the main thread once a VM runs: start-up code released, seccomp filter on
    /// (`sandbox::seal_main`). A VM started by an API request (InstanceStart, a snapshot
    /// load) is sealed right after its answer went out, so the client does not wait for
    /// it; the main thread handles nothing else in between. Every other start seals at once.
    fn seal(&mut self) -> Result<(), VmError> {
        if std::mem::take(&mut self.unsealed) {
            crate::sandbox::seal_main(&self.config)?;
        }
        Ok(())
    }

    /// The VM ended (one of its parts asked): collect its outcome, and boot again after
    /// a guest reset if asked to.
    fn vm_stopped(&mut self, ops: &mut EventOps) {
        let Some(vm) = self.vm.as_mut() else {
            return;
        };
        let stats = vm.stop();
        let devices = vm.devices().counts();
        let stop = vm
            .stop_reason()
            .unwrap_or_else(|| VmStop::Error("the VM stopped without a reason".into()));
        self.unregister_vm(ops);
        self.vm = None;
        if stop == VmStop::Device(StopReason::Reset) && self.config.on_reboot == OnReboot::Restart {
            tracing::info!("guest reset; restarting (boot {})", self.boots + 1);
            match self.start_vm(None).and_then(|()| self.seal()) {
                Ok(()) => {
                    self.register_vm(ops);
                    return;
                }
                Err(e) => {
                    self.outcome = Some(Err(e));
                    return;
                }
            }
        }
        self.metrics.vm_ended(&stats);
        self.flush_metrics();
        self.outcome = Some(Ok(VmOutcome {
            stop,
            stats,
            boots: self.boots,
            devices,
        }));
    }

    /// Ends the run for `why` (a signal, Ctrl-A x): the VM is stopped with that reason.
    fn end(&mut self, why: VmStop, ops: &mut EventOps) {
        match &self.vm {
            Some(vm) => {
                vm.control().request_stop(why);
                self.vm_stopped(ops);
            }
            None => {
                self.outcome = Some(Ok(VmOutcome {
                    stop: why,
                    stats: StatsReport::default(),
                    boots: self.boots,
                    devices: Vec::new(),
                }))
            }
        }
    }

    /// Writes a metrics line (if a destination is configured).
    pub(crate) fn flush_metrics(&mut self) {
        let api = self.api.as_ref().map(|(_, s)| s.stats());
        let (stats, devices) = match &self.vm {
            Some(vm) => (Some(vm.stats()), vm.devices().counts()),
            None => (None, Vec::new()),
        };
        self.metrics.flush(stats.as_ref(), &devices, api.as_deref());
    }

    fn wanted(&self) -> Vec<(Token, RawFd)> {
        let mut w = vec![
            (Token::Terminate, self.term_evt.as_raw_fd()),
            (Token::Stdin, self.console.reader.evt.as_raw_fd()),
        ];
        if let Some((queue, _)) = &self.api {
            w.push((Token::Api, queue.evt().as_raw_fd()));
        }
        if let Some(vm) = &self.vm {
            w.push((Token::VmControl, vm.control().wake.as_raw_fd()));
            w.push((
                Token::SerialDrained,
                vm.devices().serial_drained().as_raw_fd(),
            ));
            w.push((
                Token::ConsoleOut,
                vm.devices().console_out().evt().as_raw_fd(),
            ));
        }
        if let Some(fd) = self.metrics.timer_fd() {
            w.push((Token::MetricsTimer, fd));
        }
        w
    }

    /// Brings the event loop's registrations in line with [`Vmm::wanted`].
    fn sync(&mut self, ops: &mut EventOps) {
        let wanted: BTreeMap<Token, RawFd> = self.wanted().into_iter().collect();
        let stale: Vec<(Token, RawFd)> = self
            .registered
            .iter()
            .filter(|(t, fd)| wanted.get(t) != Some(fd))
            .map(|(t, fd)| (*t, *fd))
            .collect();
        for (t, fd) in stale {
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                tracing::debug!("event loop: removing {t:?}: {e:?}");
            }
            self.registered.remove(&t);
        }
        for (t, fd) in wanted {
            if self.registered.contains_key(&t) {
                continue;
            }
            match ops.add(Events::with_data_raw(fd, t as u32, EventSet::IN)) {
                Ok(()) => {
                    self.registered.insert(t, fd);
                }
                Err(e) => tracing::error!("event loop: cannot watch {t:?}: {e:?}"),
            }
        }
    }

    /// Removes the current VM's sources before it is dropped (a closed fd would vanish
    /// from epoll by itself, and its number could be reused by the next VM).
    fn unregister_vm(&mut self, ops: &mut EventOps) {
        for t in [Token::VmControl, Token::SerialDrained, Token::ConsoleOut] {
            if let Some(fd) = self.registered.remove(&t) {
                let _ = ops.remove(Events::empty_raw(fd));
            }
        }
    }

    fn register_vm(&mut self, ops: &mut EventOps) {
        self.sync(ops);
    }

    fn serve_api(&mut self, ops: &mut EventOps) {
        let Some((queue, _)) = &self.api else {
            return;
        };
        queue.clear();
        let mut pending = Vec::new();
        while let Some(p) = queue.try_next() {
            pending.push(p);
        }
        for p in pending {
            let response = self.handle_request(&p.request, ops);
            p.respond(response);
            if let Err(e) = self.seal() {
                tracing::error!("cannot seal the main thread: {e}");
                self.end(VmStop::Error(format!("sealing the main thread: {e}")), ops);
            }
        }
    }

    fn handle_request(&mut self, req: &api::ApiRequest, ops: &mut EventOps) -> api::ApiResponse {
        let had_vm = self.vm.is_some();
        let response = crate::api_handler::handle(self, req);
        self.metrics.api_request(req, &response);
        if !had_vm && self.vm.is_some() {
            self.register_vm(ops);
        }
        if let Some(vm) = &self.vm {
            // A VM that failed to start, or was asked to end, is collected now.
            if vm.phase() == Phase::Running && vm.control().stopping() {
                self.vm_stopped(ops);
            }
        }
        self.sync(ops);
        response
    }
}

impl MutEventSubscriber for Vmm {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match Token::from_u32(events.data()) {
            Some(Token::Terminate) => {
                let _ = self.term_evt.read();
                self.end(VmStop::Signal(crate::signals::last_signal()), ops);
            }
            Some(Token::Stdin) | Some(Token::SerialDrained) => {
                if let Some(vm) = &self.vm {
                    let _ = vm.devices().serial_drained().read();
                }
                let serial = self.vm.as_ref().map(|vm| vm.devices().serial().clone());
                if self.console.pump(serial.as_deref()) {
                    self.end(VmStop::UserQuit, ops);
                }
            }
            Some(Token::Api) => self.serve_api(ops),
            Some(Token::VmControl) => {
                if let Some(vm) = &self.vm {
                    let _ = vm.control().wake.read();
                    if vm.control().stopping() {
                        self.vm_stopped(ops);
                    }
                }
            }
            Some(Token::ConsoleOut) => {
                if let Some(vm) = &self.vm {
                    vm.devices().console_out().drain();
                }
            }
            Some(Token::MetricsTimer) => {
                self.metrics.timer_expired();
                self.flush_metrics();
            }
            None => {}
        }
        self.sync(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.sync(ops);
        // Input that arrived before the loop started.
        let _ = self.console.reader.evt.write(1);
        // A VM that already ended (a boot that failed at once) is collected now.
        if self.vm.as_ref().is_some_and(|vm| vm.control().stopping()) {
            self.vm_stopped(ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_round_trips() {
        for t in Token::ALL {
            assert_eq!(Token::from_u32(t as u32), Some(t));
        }
        assert_eq!(Token::from_u32(0), None);
        assert_eq!(Token::ALL.len(), Token::MetricsTimer as usize);
    }
}
