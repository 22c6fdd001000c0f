//! What each API request does, before the VM boots (configuration) and after (control),
//! with Firecracker's refusals of requests made in the wrong phase.

use api::models::{self, ActionType, InstanceInfo, InstanceState, VmState};
use api::{ApiRequest, ApiResponse};

use crate::device_manager::block_config;
use crate::drive;
use crate::resources;
use crate::vm::Phase;
use crate::vmm::Vmm;

/// Firecracker's refusal of a pre-boot request after the boot.
pub const NOT_AFTER_BOOT: &str =
    "The requested operation is not supported after starting the microVM.";
/// Firecracker's refusal of a runtime request before the boot.
pub const NOT_BEFORE_BOOT: &str =
    "The requested operation is not supported before starting the microVM.";

fn result(r: Result<(), String>) -> ApiResponse {
    match r {
        Ok(()) => ApiResponse::Empty,
        Err(e) => ApiResponse::bad_request(e),
    }
}

/// Handles one request.
pub fn handle(vmm: &mut Vmm, req: &ApiRequest) -> ApiResponse {
    let started = vmm.started();
    match req {
        ApiRequest::GetInstanceInfo => ApiResponse::json(&instance_info(vmm)),
        ApiRequest::GetVersion => ApiResponse::json(&models::VersionInfo {
            firecracker_version: env!("CARGO_PKG_VERSION").into(),
        }),
        ApiRequest::GetMachineConfig => ApiResponse::json(&resources::machine(&vmm.config)),
        ApiRequest::GetVmConfig => ApiResponse::json(&resources::full_config(
            &vmm.config,
            vmm.logger.as_ref().and_then(|l| l.current()),
            vmm.metrics.config(),
        )),
        // Pre-boot configuration.
        ApiRequest::PutMachineConfig(_)
        | ApiRequest::PatchMachineConfig(_)
        | ApiRequest::PutBootSource(_)
        | ApiRequest::PutDrive(_)
        | ApiRequest::PutEntropy(_)
        | ApiRequest::PutLogger(_)
        | ApiRequest::PutMetrics(_)
        | ApiRequest::Action(ActionType::InstanceStart)
            if started =>
        {
            ApiResponse::bad_request(NOT_AFTER_BOOT)
        }
        ApiRequest::PutMachineConfig(m) => result(resources::set_machine(&mut vmm.config, m)),
        ApiRequest::PatchMachineConfig(u) => {
            let m = u.apply(&resources::machine(&vmm.config));
            result(resources::set_machine(&mut vmm.config, &m))
        }
        ApiRequest::PutBootSource(b) => result(resources::set_boot_source(&mut vmm.config, b)),
        ApiRequest::PutDrive(d) => result(resources::put_drive(&mut vmm.config, d)),
        ApiRequest::PutEntropy(e) => result(resources::set_entropy(&mut vmm.config, e)),
        ApiRequest::PutLogger(l) => result(match &vmm.logger {
            Some(logger) => logger
                .configure(l)
                .map_err(|e| format!("Logger error: {e}")),
            None => Err("Logger error: this ferrovm has no configurable logger".into()),
        }),
        ApiRequest::PutMetrics(m) => {
            let id = vmm.instance_id.clone();
            result(vmm.metrics.configure(m, &id).map_err(|e| {
                format!("Metrics error: Cannot initialize the metrics system due to bad user input: {e}")
            }))
        }
        ApiRequest::Action(ActionType::InstanceStart) => match vmm.boot() {
            Ok(()) => ApiResponse::Empty,
            Err(e) => {
                tracing::error!("InstanceStart failed: {e}");
                ApiResponse::bad_request(format!("Start microvm error: {e}"))
            }
        },
        // Runtime control.
        ApiRequest::PatchDrive(_)
        | ApiRequest::PatchVm(_)
        | ApiRequest::GetExits
        | ApiRequest::Action(ActionType::SendCtrlAltDel)
        | ApiRequest::Action(ActionType::FlushMetrics)
            if !started =>
        {
            ApiResponse::bad_request(NOT_BEFORE_BOOT)
        }
        ApiRequest::Action(ActionType::FlushMetrics) => {
            vmm.flush_metrics();
            ApiResponse::Empty
        }
        ApiRequest::Action(ActionType::SendCtrlAltDel) => match &vmm.vm {
            Some(vm) => match vm.devices().send_ctrl_alt_del() {
                Ok(()) => ApiResponse::Empty,
                Err(e) => ApiResponse::bad_request(format!("Cannot send Ctrl+Alt+Del: {e}")),
            },
            None => gone(),
        },
        ApiRequest::PatchVm(state) => patch_vm(vmm, *state),
        ApiRequest::PatchDrive(d) => result(patch_drive(vmm, d)),
        ApiRequest::GetExits => match &vmm.vm {
            Some(vm) => ApiResponse::json(&crate::stats::LiveReport::new(
                vm.stats(),
                vm.devices().counts(),
            )),
            None => gone(),
        },
    }
}

fn gone() -> ApiResponse {
    ApiResponse::bad_request("The microVM has stopped.")
}

fn instance_info(vmm: &Vmm) -> InstanceInfo {
    let state = match vmm.vm.as_ref().map(|vm| vm.phase()) {
        Some(Phase::Paused) => InstanceState::Paused,
        Some(Phase::Running) | Some(Phase::Stopped) => InstanceState::Running,
        _ if vmm.started() => InstanceState::Running,
        _ => InstanceState::NotStarted,
    };
    InstanceInfo {
        app_name: "ferrovm".into(),
        id: vmm.instance_id.clone(),
        state,
        vmm_version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn patch_vm(vmm: &mut Vmm, state: VmState) -> ApiResponse {
    let Some(vm) = vmm.vm.as_mut() else {
        return gone();
    };
    let r = match state {
        VmState::Paused => vm.pause(),
        VmState::Resumed => vm.resume(),
    };
    match r {
        Ok(took) => {
            vmm.metrics.vm_state_changed(state, took);
            ApiResponse::Empty
        }
        Err(e) => ApiResponse::bad_request(format!("Internal VMM error: {e}")),
    }
}

/// `PATCH /drives/{id}`: a new image for a drive of the running VM; the guest is told its
/// (new) size.
fn patch_drive(vmm: &mut Vmm, d: &models::PartialDrive) -> Result<(), String> {
    let err = |e: String| {
        format!("Drive config error: Unable to patch the block device: {e} Please verify the request arguments.")
    };
    if d.rate_limiter
        .as_ref()
        .is_some_and(|r| r.bandwidth.is_some() || r.ops.is_some())
    {
        return Err(err("rate limiters are not supported by ferrovm yet.".into()));
    }
    let Some(vm) = vmm.vm.as_ref() else {
        return Err(err("the microVM has stopped.".into()));
    };
    let Some(entry) = vm.devices().block(&d.drive_id) else {
        return Err(err(format!("there is no drive {:?}.", d.drive_id)));
    };
    let Some(path) = &d.path_on_host else {
        // Nothing to change.
        return Ok(());
    };
    let index = entry.index;
    let mut cfg = vmm.config.drives[index].clone();
    cfg.path = path.into();
    drive::check_drives(std::slice::from_ref(&cfg), 1, false).map_err(|e| err(format!("{e}.")))?;
    let prepared =
        drive::prepare(index, &cfg, vmm.config.snapshot).map_err(|e| err(format!("{e}.")))?;
    let bcfg = block_config(index, &cfg, &prepared);
    {
        let mut t = entry.transport.lock().unwrap_or_else(|p| p.into_inner());
        t.device_mut()
            .replace_disk(&bcfg)
            .map_err(|e| err(format!("{e}.")))?;
        t.config_changed();
    }
    vmm.metrics.drive_updated();
    vmm.config.drives[index] = cfg;
    vmm.replace_prepared_drive(index, prepared);
    Ok(())
}
