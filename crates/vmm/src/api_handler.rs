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
        | ApiRequest::PutNetworkInterface(_)
        | ApiRequest::PutVsock(_)
        | ApiRequest::PutBalloon(_)
        | ApiRequest::PutLogger(_)
        | ApiRequest::PutMetrics(_)
        | ApiRequest::SnapshotLoad(_)
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
        ApiRequest::PutNetworkInterface(n) => result(resources::put_net(&mut vmm.config, n)),
        ApiRequest::PutVsock(v) => result(crate::vsock_balloon::put_vsock(&mut vmm.config, v)),
        ApiRequest::PutBalloon(b) => result(crate::vsock_balloon::put_balloon(&mut vmm.config, b)),
        ApiRequest::GetBalloon
        | ApiRequest::PatchBalloon(_)
        | ApiRequest::GetBalloonStats
        | ApiRequest::PatchBalloonStats(_) => crate::vsock_balloon::handle_balloon(vmm, req),
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
        ApiRequest::SnapshotLoad(l) => result(load_snapshot(vmm, l)),
        ApiRequest::Action(ActionType::InstanceStart) => match vmm.boot() {
            Ok(()) => ApiResponse::Empty,
            Err(e) => {
                tracing::error!("InstanceStart failed: {e}");
                ApiResponse::bad_request(format!("Start microvm error: {e}"))
            }
        },
        // Runtime control.
        ApiRequest::PatchDrive(_)
        | ApiRequest::SnapshotCreate(_)
        | ApiRequest::PatchNetworkInterface(_)
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
        ApiRequest::SnapshotCreate(c) => {
            let req = crate::snapshot::CreateRequest {
                state_path: c.snapshot_path.clone().into(),
                mem_path: c.mem_file_path.clone().into(),
                diff: c.snapshot_type == Some(models::SnapshotType::Diff),
            };
            match vmm.snapshot(&req) {
                Ok(_) => ApiResponse::Empty,
                Err(e) => ApiResponse::bad_request(format!("Create snapshot error: {e}")),
            }
        }
        ApiRequest::PatchNetworkInterface(n) => result(patch_net(vmm, n)),
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

/// `PUT /snapshot/load`: rebuilds a snapshot's VM in this fresh process.
fn load_snapshot(vmm: &mut Vmm, l: &models::SnapshotLoad) -> Result<(), String> {
    let err = |e: String| format!("Load snapshot error: {e}");
    if vmm.configured() {
        return Err(err(
            "Loading a microVM snapshot not allowed after configuring boot-specific resources."
                .into(),
        ));
    }
    let mem_path = match (&l.mem_backend, &l.mem_file_path) {
        (Some(_), Some(_)) => {
            return Err(err(
                "give mem_backend or the deprecated mem_file_path, not both".into(),
            ))
        }
        (Some(b), None) => match b.backend_type {
            models::MemoryBackendType::File => b.backend_path.clone(),
            models::MemoryBackendType::Uffd => {
                return Err(err(
                    "the Uffd memory backend is not supported by ferrovm; use File".into(),
                ))
            }
        },
        (None, Some(p)) => p.clone(),
        (None, None) => return Err(err("mem_backend is required".into())),
    };
    if l.vsock_override.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(err("vsock_override is not supported by ferrovm yet".into()));
    }
    if l.clock_realtime == Some(true) {
        return Err(err("clock_realtime is not supported by ferrovm".into()));
    }
    if !matches!(
        l.huge_pages.as_deref(),
        None | Some("Snapshot") | Some("None")
    ) {
        return Err(err(
            "huge_pages other than Snapshot or None are not supported".into(),
        ));
    }
    let req = crate::snapshot::RestoreRequest {
        state_path: l.snapshot_path.clone().into(),
        mem_path: mem_path.into(),
        kvm_path: Some(vmm.config.kvm_path.clone()),
        tap_overrides: l
            .network_overrides
            .iter()
            .map(|o| (o.iface_id.clone(), o.host_dev_name.clone()))
            .collect(),
        track_dirty_pages: l
            .track_dirty_pages
            .or(l.enable_diff_snapshots)
            .unwrap_or(false),
    };
    vmm.restore(&req, l.resume_vm.unwrap_or(false))
        .map_err(|e| err(e.to_string()))
}

/// `PATCH /network-interfaces/{id}`: new rate limiters for an interface of the running
/// VM, in effect at once.
fn patch_net(vmm: &mut Vmm, n: &models::PartialNetworkInterface) -> Result<(), String> {
    let err = |e: String| format!("Network interface config error: {e}");
    let Some(index) = vmm
        .config
        .nets
        .iter()
        .enumerate()
        .position(|(i, c)| c.name(i) == n.iface_id)
    else {
        return Err(err(format!(
            "there is no network interface {:?}",
            n.iface_id
        )));
    };
    let Some(vm) = vmm.vm.as_ref() else {
        return Err(err("the microVM has stopped".into()));
    };
    let rx = n
        .rx_rate_limiter
        .as_ref()
        .map(crate::limits::changes_from_model);
    let tx = n
        .tx_rate_limiter
        .as_ref()
        .map(crate::limits::changes_from_model);
    vm.devices()
        .update_net_limits(&n.iface_id, rx, tx)
        .map_err(err)?;
    let cfg = &mut vmm.config.nets[index];
    if let Some(rx) = rx {
        cfg.rx = crate::limits::apply(cfg.rx, rx);
    }
    if let Some(tx) = tx {
        cfg.tx = crate::limits::apply(cfg.tx, tx);
    }
    Ok(())
}

/// `PATCH /drives/{id}`: a new image for a drive of the running VM; the guest is told its
/// (new) size.
fn patch_drive(vmm: &mut Vmm, d: &models::PartialDrive) -> Result<(), String> {
    let err = |e: String| {
        format!("Drive config error: Unable to patch the block device: {e} Please verify the request arguments.")
    };
    let Some(vm) = vmm.vm.as_ref() else {
        return Err(err("the microVM has stopped.".into()));
    };
    let Some(entry) = vm.devices().block(&d.drive_id) else {
        return Err(err(format!("there is no drive {:?}.", d.drive_id)));
    };
    let index = entry.index;
    if let Some(r) = &d.rate_limiter {
        let changes = crate::limits::changes_from_model(r);
        let t = entry.transport.lock().unwrap_or_else(|p| p.into_inner());
        let Some(l) = t.device().limiter() else {
            return Err(err("this drive has no rate limiter.".into()));
        };
        l.lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(changes.0, changes.1);
        drop(t);
        let cfg = &mut vmm.config.drives[index];
        cfg.limits = crate::limits::apply(cfg.limits, changes);
    }
    let Some(path) = &d.path_on_host else {
        // Nothing more to change.
        return Ok(());
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VmConfig;
    use crate::vmm::RunOptions;

    fn kvm_available() -> bool {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            Ok(_) => true,
            Err(e) if std::env::var("FERROVM_SKIP_KVM").as_deref() == Ok("1") => {
                eprintln!("*** SKIPPED api_handler tests: /dev/kvm unusable ({e}) ***");
                false
            }
            Err(e) => panic!("/dev/kvm is not usable ({e}); set FERROVM_SKIP_KVM=1 to skip"),
        }
    }

    fn vmm() -> Vmm {
        let config = VmConfig {
            console_input: false,
            ..VmConfig::empty()
        };
        Vmm::new(RunOptions {
            boot: false,
            ..RunOptions::boot(config)
        })
        .unwrap()
    }

    fn body<T: serde::de::DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).unwrap()
    }

    fn message(r: ApiResponse) -> String {
        match r {
            ApiResponse::Error {
                status: 400,
                message,
            } => message,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    fn tmp(name: &str, bytes: &[u8]) -> String {
        let dir = std::env::temp_dir().join(format!("ferrovm-handler-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    }

    const RUNTIME: [&str; 5] = [
        r#"{"PatchVm":"Paused"}"#,
        r#"{"PatchDrive":{"drive_id":"a"}}"#,
        r#""GetExits""#,
        r#"{"Action":"SendCtrlAltDel"}"#,
        r#"{"Action":"FlushMetrics"}"#,
    ];

    fn runtime_requests() -> Vec<ApiRequest> {
        vec![
            ApiRequest::PatchVm(VmState::Paused),
            ApiRequest::PatchDrive(body(r#"{"drive_id":"a"}"#)),
            ApiRequest::GetExits,
            ApiRequest::Action(ActionType::SendCtrlAltDel),
            ApiRequest::Action(ActionType::FlushMetrics),
        ]
    }

    fn config_requests(image: &str) -> Vec<ApiRequest> {
        vec![
            ApiRequest::PutMachineConfig(body(r#"{"vcpu_count":1,"mem_size_mib":16}"#)),
            ApiRequest::PatchMachineConfig(body(r#"{"vcpu_count":1}"#)),
            ApiRequest::PutBootSource(body(&format!(
                r#"{{"kernel_image_path":"{image}","raw":{{"mode":"Real"}}}}"#
            ))),
            ApiRequest::PutDrive(body(&format!(
                r#"{{"drive_id":"d","path_on_host":"{image}","is_root_device":false}}"#
            ))),
            ApiRequest::PutEntropy(models::Entropy::default()),
            ApiRequest::PutLogger(models::Logger::default()),
            ApiRequest::PutMetrics(body(r#"{"metrics_path":"/tmp/x"}"#)),
            ApiRequest::Action(ActionType::InstanceStart),
        ]
    }

    #[test]
    fn before_the_boot_configuration_works_and_control_is_refused() {
        if !kvm_available() {
            return;
        }
        assert_eq!(RUNTIME.len(), runtime_requests().len());
        let mut v = vmm();
        let ApiResponse::Json(info) = handle(&mut v, &ApiRequest::GetInstanceInfo) else {
            panic!()
        };
        assert_eq!(info["state"], "Not started");
        assert!(matches!(
            handle(&mut v, &ApiRequest::GetVersion),
            ApiResponse::Json(_)
        ));
        let ApiResponse::Json(m) = handle(&mut v, &ApiRequest::GetMachineConfig) else {
            panic!()
        };
        assert_eq!(
            (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
            (Some(1), Some(128))
        );
        for req in runtime_requests() {
            assert_eq!(message(handle(&mut v, &req)), NOT_BEFORE_BOOT, "{req:?}");
        }
        // Each configuration request: success and a refusal.
        let r = handle(
            &mut v,
            &ApiRequest::PutMachineConfig(body(r#"{"vcpu_count":2,"mem_size_mib":32}"#)),
        );
        assert_eq!(r, ApiResponse::Empty);
        let e = message(handle(
            &mut v,
            &ApiRequest::PutMachineConfig(body(r#"{"vcpu_count":0,"mem_size_mib":32}"#)),
        ));
        assert!(e.starts_with("Machine config error"), "{e}");
        let r = handle(
            &mut v,
            &ApiRequest::PatchMachineConfig(body(r#"{"vcpu_count":1}"#)),
        );
        assert_eq!(r, ApiResponse::Empty);
        let e = message(handle(
            &mut v,
            &ApiRequest::PatchMachineConfig(body(r#"{"smt":true}"#)),
        ));
        assert!(e.contains("SMT"), "{e}");
        assert_eq!((v.config.cpus, v.config.mem_size), (1, 32 << 20));
        let e = message(handle(
            &mut v,
            &ApiRequest::Action(ActionType::InstanceStart),
        ));
        assert!(
            e.starts_with("Start microvm error") && e.contains("no boot source"),
            "{e}"
        );
        let e = message(handle(
            &mut v,
            &ApiRequest::PutBootSource(body(r#"{"kernel_image_path":"/nonexistent"}"#)),
        ));
        assert!(e.starts_with("Boot source error"), "{e}");
        let image = tmp("loop.bin", &[0xe6, 0x80, 0xeb, 0xfc]);
        let boot = format!(r#"{{"kernel_image_path":"{image}","raw":{{"mode":"Real"}}}}"#);
        assert_eq!(
            handle(&mut v, &ApiRequest::PutBootSource(body(&boot))),
            ApiResponse::Empty
        );
        let e = message(handle(
            &mut v,
            &ApiRequest::PutDrive(body(r#"{"drive_id":"d","is_root_device":false}"#)),
        ));
        assert!(e.contains("path_on_host is required"), "{e}");
        let e = message(handle(
            &mut v,
            &ApiRequest::PutLogger(models::Logger::default()),
        ));
        assert!(e.starts_with("Logger error"), "{e}");
        let metrics = tmp("metrics.json", b"");
        let m: models::Metrics = body(&format!(r#"{{"metrics_path":"{metrics}"}}"#));
        assert_eq!(
            handle(&mut v, &ApiRequest::PutMetrics(m.clone())),
            ApiResponse::Empty
        );
        let e = message(handle(&mut v, &ApiRequest::PutMetrics(m)));
        assert!(e.contains("Reinitialization"), "{e}");
        let ApiResponse::Json(full) = handle(&mut v, &ApiRequest::GetVmConfig) else {
            panic!()
        };
        assert_eq!(full["boot-source"]["kernel_image_path"], image.as_str());
        assert_eq!(full["metrics"]["metrics_path"], metrics.as_str());
        // A raw guest cannot have virtio devices: the start fails, saying so, and the VMM
        // can still be configured and started.
        assert_eq!(
            handle(&mut v, &ApiRequest::PutEntropy(models::Entropy::default())),
            ApiResponse::Empty
        );
        let e = message(handle(
            &mut v,
            &ApiRequest::Action(ActionType::InstanceStart),
        ));
        assert!(e.contains("need a Linux boot"), "{e}");
        v.config.rng = false;
        assert_eq!(
            handle(&mut v, &ApiRequest::Action(ActionType::InstanceStart)),
            ApiResponse::Empty
        );
        assert!(v.started());
    }

    #[test]
    fn after_the_boot_control_works_and_configuration_is_refused() {
        if !kvm_available() {
            return;
        }
        let mut v = vmm();
        let image = tmp("loop2.bin", &[0xe6, 0x80, 0xeb, 0xfc]);
        let boot = format!(r#"{{"kernel_image_path":"{image}","raw":{{"mode":"Real"}}}}"#);
        assert_eq!(
            handle(
                &mut v,
                &ApiRequest::PutMachineConfig(body(r#"{"vcpu_count":2,"mem_size_mib":16}"#))
            ),
            ApiResponse::Empty
        );
        assert_eq!(
            handle(&mut v, &ApiRequest::PutBootSource(body(&boot))),
            ApiResponse::Empty
        );
        assert_eq!(
            handle(&mut v, &ApiRequest::Action(ActionType::InstanceStart)),
            ApiResponse::Empty
        );
        for req in config_requests(&image) {
            assert_eq!(message(handle(&mut v, &req)), NOT_AFTER_BOOT, "{req:?}");
        }
        let state = |v: &mut Vmm| match handle(v, &ApiRequest::GetInstanceInfo) {
            ApiResponse::Json(i) => i["state"].as_str().unwrap().to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(state(&mut v), "Running");
        assert_eq!(
            handle(&mut v, &ApiRequest::PatchVm(VmState::Paused)),
            ApiResponse::Empty
        );
        assert_eq!(state(&mut v), "Paused");
        let ApiResponse::Json(exits) = handle(&mut v, &ApiRequest::GetExits) else {
            panic!()
        };
        assert_eq!(exits["vcpus"].as_array().unwrap().len(), 2);
        assert!(exits["devices"].as_array().unwrap().is_empty());
        assert_eq!(
            handle(&mut v, &ApiRequest::PatchVm(VmState::Resumed)),
            ApiResponse::Empty
        );
        assert_eq!(state(&mut v), "Running");
        assert_eq!(
            handle(&mut v, &ApiRequest::Action(ActionType::FlushMetrics)),
            ApiResponse::Empty
        );
        // The raw guest never enabled its keyboard.
        let e = message(handle(
            &mut v,
            &ApiRequest::Action(ActionType::SendCtrlAltDel),
        ));
        assert!(e.starts_with("Cannot send Ctrl+Alt+Del"), "{e}");
        let e = message(handle(
            &mut v,
            &ApiRequest::PatchDrive(body(r#"{"drive_id":"nope","path_on_host":"/x"}"#)),
        ));
        assert!(e.contains("there is no drive \"nope\""), "{e}");
        let e = message(handle(
            &mut v,
            &ApiRequest::PatchDrive(body(
                r#"{"drive_id":"nope","rate_limiter":{"ops":{"size":1,"refill_time":1}}}"#,
            )),
        ));
        assert!(e.contains("there is no drive \"nope\""), "{e}");
        let ApiResponse::Json(m) = handle(&mut v, &ApiRequest::GetMachineConfig) else {
            panic!()
        };
        assert_eq!(m["vcpu_count"], 2);
    }

    #[test]
    fn balloon_and_vsock_are_configured_before_the_boot() {
        if !kvm_available() {
            return;
        }
        let mut v = vmm();
        let e = message(handle(&mut v, &ApiRequest::GetBalloon));
        assert!(e.contains("not configured"), "{e}");
        let put: models::Balloon = serde_json::from_str(
            r#"{"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 2}"#,
        )
        .unwrap();
        assert_eq!(
            handle(&mut v, &ApiRequest::PutBalloon(put)),
            ApiResponse::Empty
        );
        let ApiResponse::Json(b) = handle(&mut v, &ApiRequest::GetBalloon) else {
            panic!()
        };
        assert_eq!(
            (
                b["amount_mib"].as_u64(),
                b["stats_polling_interval_s"].as_u64()
            ),
            (Some(16), Some(2))
        );
        let patch = ApiRequest::PatchBalloon(models::BalloonUpdate { amount_mib: 32 });
        assert_eq!(handle(&mut v, &patch), ApiResponse::Empty);
        assert_eq!(v.config.balloon.unwrap().amount_mib, 32);
        let too_big = ApiRequest::PatchBalloon(models::BalloonUpdate {
            amount_mib: 1 << 20,
        });
        assert!(message(handle(&mut v, &too_big)).contains("more than the guest's"));
        let e = message(handle(&mut v, &ApiRequest::GetBalloonStats));
        assert!(e.contains("once the guest runs"), "{e}");
        let off = ApiRequest::PatchBalloonStats(models::BalloonStatsUpdate {
            stats_polling_interval_s: 0,
        });
        assert!(message(handle(&mut v, &off)).contains("only by PUT /balloon"));
        let vsock: models::Vsock =
            serde_json::from_str(r#"{"guest_cid": 3, "uds_path": "/tmp/fv-test.vsock"}"#).unwrap();
        assert_eq!(
            handle(&mut v, &ApiRequest::PutVsock(vsock)),
            ApiResponse::Empty
        );
        let ApiResponse::Json(c) = handle(&mut v, &ApiRequest::GetVmConfig) else {
            panic!()
        };
        assert_eq!(c["vsock"]["guest_cid"], 3);
        assert_eq!(c["balloon"]["amount_mib"], 32);
    }
}
