//! A VM with a lifecycle: built (configured), filled with a payload, started, paused and
//! resumed, stopped. It owns the VM fd, guest memory, the vCPUs and the devices.
//!
//! ```text
//! builder::build ──> Configured ──load()──> Configured ──start()──> Running
//!                                                          pause() │  ▲ resume()
//!                                                                  ▼  │
//!                                          Stopped <──stop()──  Paused
//! ```
//!
//! Building is separate from loading so that a VM can be filled with saved state instead
//! of a kernel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::StopReason;
use kvm_ioctls::{VcpuFd, VmFd};

use crate::control::{Control, VmStop};
use crate::device_manager::DeviceManager;
use crate::error::VmError;
use crate::memory::GuestMem;
use crate::payload::BootPayload;
use crate::stats::StatsReport;
use crate::vcpu::{self, VcpuCommand, VcpuContext, VcpuHandle, VcpuResponse, COMMAND_TIMEOUT};

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Built (and perhaps loaded), vCPUs not started.
    Configured,
    /// vCPUs running.
    Running,
    /// vCPUs and device workers stopped; the guest makes no progress.
    Paused,
    /// Ended; only its statistics remain.
    Stopped,
}

/// A VM.
pub struct Vm {
    pub(crate) fd: VmFd,
    pub(crate) memory: GuestMem,
    pub(crate) vcpu_fds: Vec<VcpuFd>,
    pub(crate) vcpus: Vec<VcpuHandle>,
    pub(crate) devices: DeviceManager,
    pub(crate) control: Arc<Control>,
    pub(crate) phase: Phase,
    pub(crate) mem_size: u64,
    pub(crate) started: Option<Instant>,
    pub(crate) final_stats: Option<StatsReport>,
    /// The device workers are paused too (for a snapshot, or a VM restored paused), not
    /// only the vCPUs.
    pub(crate) devices_paused: bool,
    /// kvmclock when the vCPUs last stopped (while paused): what a snapshot saves.
    pub(crate) paused_clock: Option<kvm_bindings::kvm_clock_data>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("phase", &self.phase)
            .field("vcpus", &self.vcpu_fds.len().max(self.vcpus.len()))
            .field("mem_size", &self.mem_size)
            .finish()
    }
}

impl Vm {
    /// Where the VM is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The VM's stop state (vCPUs and devices ask for the VM to end through it).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The devices.
    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMem {
        &self.memory
    }

    /// Writes `payload` into guest memory and sets every vCPU's entry registers.
    pub fn load(&mut self, payload: &BootPayload, cmdline_extra: &str) -> Result<(), VmError> {
        let entry = match payload {
            BootPayload::Raw(image) => {
                arch::boot::load_raw(&self.memory, &image.bytes, image.load_addr, image.mode)?
            }
            BootPayload::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                let cmdline = if cmdline_extra.is_empty() {
                    cmdline.clone()
                } else {
                    format!("{cmdline} {cmdline_extra}")
                };
                arch::boot::load_linux(
                    &self.memory,
                    &arch::boot::LinuxBoot {
                        kernel,
                        initrd: initrd.as_deref(),
                        cmdline: &cmdline,
                        mem_size: self.mem_size,
                        cpus: self.vcpu_fds.len() as u32,
                        virtio: self.devices.acpi_devices(),
                    },
                )?
            }
        };
        let count = self.vcpu_fds.len() as u32;
        for (i, fd) in self.vcpu_fds.iter().enumerate() {
            vcpu::setup::configure(fd, i as u32, count, entry)?;
        }
        Ok(())
    }

    /// Starts every vCPU thread. A vCPU that cannot be started ends the VM.
    pub fn start(&mut self) -> Result<(), VmError> {
        self.spawn_vcpus(true)
    }

    /// Starts every vCPU thread parked and pauses the device workers: the VM is Paused
    /// until [`Vm::resume`] (a snapshot restored without `resume_vm`).
    pub fn start_paused(&mut self) -> Result<(), VmError> {
        self.spawn_vcpus(false)?;
        self.devices.pause()?;
        self.devices_paused = true;
        self.phase = Phase::Paused;
        self.note_paused_clock();
        Ok(())
    }

    /// Reads kvmclock now that the vCPUs stopped (VMs with an in-kernel irqchip).
    fn note_paused_clock(&mut self) {
        self.paused_clock = if self.control.has_irqchip() {
            crate::snapshot::kvm_state::clock_now(&self.fd).ok()
        } else {
            None
        };
    }

    /// kvmclock (with the host TSC) as the paused vCPUs stopped.
    pub fn paused_clock(&self) -> Option<kvm_bindings::kvm_clock_data> {
        self.paused_clock
    }

    fn spawn_vcpus(&mut self, running: bool) -> Result<(), VmError> {
        if self.phase != Phase::Configured {
            return Ok(());
        }
        let buses = self.devices.buses();
        self.started = Some(Instant::now());
        for (i, fd) in std::mem::take(&mut self.vcpu_fds).into_iter().enumerate() {
            let ctx = VcpuContext {
                buses: buses.clone(),
                control: self.control.clone(),
                mem: self.memory.clone(),
                start_running: running,
            };
            match vcpu::spawn(i as u32, fd, ctx) {
                Ok(h) => self.vcpus.push(h),
                Err(e) => {
                    self.control.request_stop(VmStop::Error(e.to_string()));
                    self.phase = Phase::Running;
                    return Err(e.into());
                }
            }
        }
        self.phase = Phase::Running;
        Ok(())
    }

    /// Stops every vCPU (each tells the guest's kvmclock). Returns how long it took. The
    /// device workers go on finishing what the guest had queued (with no vCPU running,
    /// nothing new reaches them), as Firecracker's do; [`Vm::quiesce_devices`] stops them
    /// too when their state must hold still.
    pub fn pause(&mut self) -> Result<Duration, VmError> {
        let t = Instant::now();
        if self.phase != Phase::Running {
            return Ok(t.elapsed());
        }
        for v in &self.vcpus {
            v.send(VcpuCommand::Pause)?;
        }
        let mut failed = None;
        for v in &self.vcpus {
            if let Err(e) = v.expect(VcpuResponse::Paused, COMMAND_TIMEOUT) {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            self.resume_vcpus();
            return Err(e.into());
        }
        self.phase = Phase::Paused;
        self.note_paused_clock();
        Ok(t.elapsed())
    }

    /// Pauses every device worker of a paused VM (after their in-flight requests), so
    /// that the queues and guest memory hold still for a snapshot. They continue on
    /// [`Vm::resume`].
    pub fn quiesce_devices(&mut self) -> Result<(), VmError> {
        if self.phase != Phase::Paused {
            return Err(VmError::NotPaused);
        }
        if !self.devices_paused {
            self.devices.pause()?;
            self.devices_paused = true;
        }
        Ok(())
    }

    fn resume_vcpus(&self) {
        for v in &self.vcpus {
            if v.send(VcpuCommand::Resume).is_ok() {
                let _ = v.expect(VcpuResponse::Resumed, COMMAND_TIMEOUT);
            }
        }
    }

    /// Continues after [`Vm::pause`]: device workers first (if they were paused), then the
    /// vCPUs. Returns how long it took.
    pub fn resume(&mut self) -> Result<Duration, VmError> {
        let t = Instant::now();
        if self.phase != Phase::Paused {
            return Ok(t.elapsed());
        }
        if std::mem::take(&mut self.devices_paused) {
            self.devices.resume();
        }
        for v in &self.vcpus {
            v.send(VcpuCommand::Resume)?;
        }
        for v in &self.vcpus {
            v.expect(VcpuResponse::Resumed, COMMAND_TIMEOUT)?;
        }
        self.phase = Phase::Running;
        self.paused_clock = None;
        Ok(t.elapsed())
    }

    /// The state of every vCPU of a paused VM (MSRs from `msrs`).
    pub fn vcpu_states(
        &self,
        msrs: &std::sync::Arc<Vec<u32>>,
    ) -> Result<Vec<crate::vcpu::state::VcpuState>, VmError> {
        if self.phase != Phase::Paused {
            return Err(VmError::NotPaused);
        }
        self.vcpus
            .iter()
            .map(|v| v.save_state(msrs.clone()).map_err(VmError::from))
            .collect()
    }

    /// Restores the vCPUs of a VM built but not started.
    pub fn restore_vcpus(
        &self,
        states: &[crate::vcpu::state::VcpuState],
        tsc_offsets: &[Option<u64>],
    ) -> Result<(), VmError> {
        for (i, (fd, s)) in self.vcpu_fds.iter().zip(states).enumerate() {
            crate::vcpu::state::restore(fd, s, tsc_offsets.get(i).copied().flatten())?;
        }
        Ok(())
    }

    /// The guest memory regions: guest address and size, in address order.
    pub fn memory_layout(&self) -> Vec<(u64, u64)> {
        use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
        self.memory
            .iter()
            .map(|r| (r.start_addr().raw_value(), r.len()))
            .collect()
    }

    /// The exit statistics so far (live while running).
    pub fn stats(&self) -> StatsReport {
        if let Some(s) = &self.final_stats {
            return s.clone();
        }
        let per: Vec<_> = self.vcpus.iter().map(VcpuHandle::stats).collect();
        StatsReport::new(&per, self.started.map_or(Duration::ZERO, |t| t.elapsed()))
    }

    /// Ends the VM: every vCPU thread exits and is joined; the devices stop when the VM is
    /// dropped. Returns the final statistics.
    pub fn stop(&mut self) -> StatsReport {
        if let Some(s) = &self.final_stats {
            return s.clone();
        }
        if self.control.reason().is_none() {
            self.control
                .request_stop(VmStop::Error("the VM was stopped".into()));
        }
        for v in &self.vcpus {
            v.begin_exit();
        }
        for v in &mut self.vcpus {
            v.finish_exit(COMMAND_TIMEOUT);
        }
        let stats = self.stats();
        self.devices.console_out().drain();
        self.final_stats = Some(stats.clone());
        self.phase = Phase::Stopped;
        stats
    }

    /// Why the VM ended (or is ending): the first reason given, with a reset, a crash or
    /// a halt after a kernel panic on the console reported as the panic.
    pub fn stop_reason(&self) -> Option<VmStop> {
        let stop = self.control.reason()?;
        if self.devices.guest_panicked()
            && matches!(
                stop,
                VmStop::Device(StopReason::Reset) | VmStop::AllHalted | VmStop::Crash
            )
        {
            return Some(VmStop::GuestPanic);
        }
        Some(stop)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.phase != Phase::Stopped {
            self.stop();
        }
    }
}
