//! The vsock and balloon devices' configuration: `--vsock cid=N,uds=PATH`,
//! `--balloon size=MIB[,deflate_on_oom=on][,stats=SECONDS][,free_page_reporting=on]`, and
//! Firecracker's `PUT /vsock` and `PUT /balloon` bodies.

use std::path::PathBuf;

use api::{models, ApiRequest, ApiResponse};
pub use devices::virtio::balloon::BalloonConfig;
use devices::virtio::balloon::BalloonControl;

use crate::config::VmConfig;
use crate::options::{on_off, split_options};
use crate::vmm::Vmm;

/// The vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 and up).
    pub cid: u32,
    /// The host side's Unix socket: host-initiated connections come in there; a guest
    /// connection to port P goes to `uds_P`.
    pub uds: PathBuf,
}

/// Smallest guest CID (0-2 are reserved: hypervisor, local, host).
pub const MIN_CID: u32 = 3;

fn check_cid(cid: u32) -> Result<(), String> {
    if cid < MIN_CID || cid == u32::MAX {
        return Err(format!(
            "guest CID {cid} is reserved: give 3 to {}",
            u32::MAX - 1
        ));
    }
    Ok(())
}

fn check_uds(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the vsock socket path is empty".into());
    }
    // `sun_path` holds 108 bytes with the NUL; guest connections use `PATH_<port>`.
    if path.len() > 96 {
        return Err(format!(
            "the vsock socket path {path:?} is {} bytes; at most 96 leave room for the _PORT suffix of a Unix socket",
            path.len()
        ));
    }
    Ok(())
}

/// Parses `--vsock cid=N,uds=PATH`.
pub fn parse_vsock(spec: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut uds) = (None, None);
    for opt in split_options(spec) {
        match opt.split_once('=') {
            Some(("cid", v)) => {
                cid = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("cid={v:?}: expected a number (3 and up)"))?,
                )
            }
            Some(("uds", v)) | Some(("path", v)) => uds = Some(v.to_string()),
            _ => return Err(format!("unknown vsock option {opt:?} (keys: cid, uds)")),
        }
    }
    let cid = cid.ok_or("--vsock needs cid=N (the guest's context id, 3 and up)")?;
    let uds = uds.ok_or("--vsock needs uds=PATH (the host side's Unix socket)")?;
    check_cid(cid)?;
    check_uds(&uds)?;
    Ok(VsockConfig {
        cid,
        uds: uds.into(),
    })
}

/// Parses `--balloon size=MIB[,deflate_on_oom=on][,stats=SECONDS][,free_page_reporting=on]`.
pub fn parse_balloon(spec: &str) -> Result<BalloonConfig, String> {
    let mut b = BalloonConfig::default();
    let mut size = None;
    for opt in split_options(spec) {
        if opt.is_empty() {
            continue;
        }
        let (k, v) = opt.split_once('=').ok_or_else(|| {
            format!(
                "{opt:?} is not key=value (keys: size, deflate_on_oom, stats, free_page_reporting)"
            )
        })?;
        match k {
            "size" | "amount_mib" => {
                let t = v.trim_end_matches(['M', 'm']);
                size = Some(t.parse::<u32>().map_err(|_| {
                    format!("size={v:?}: expected the target in MiB (e.g. size=256)")
                })?);
            }
            "deflate_on_oom" => b.deflate_on_oom = on_off(k, v)?,
            "stats" | "stats_polling_interval_s" => {
                b.stats_interval_s = v
                    .parse::<u16>()
                    .map_err(|_| format!("stats={v:?}: expected seconds (0 to 65535)"))?
            }
            "free_page_reporting" => b.free_page_reporting = on_off(k, v)?,
            _ => {
                return Err(format!(
                    "unknown balloon option {k:?} (keys: size, deflate_on_oom, stats, free_page_reporting)"
                ))
            }
        }
    }
    b.amount_mib = size.ok_or("--balloon needs size=MIB (the target; 0 starts deflated)")?;
    Ok(b)
}

/// `PUT /vsock`.
pub fn put_vsock(config: &mut VmConfig, v: &models::Vsock) -> Result<(), String> {
    let err = |e: String| format!("Vsock config error: {e}");
    check_cid(v.guest_cid).map_err(err)?;
    check_uds(&v.uds_path).map_err(err)?;
    config.vsock = Some(VsockConfig {
        cid: v.guest_cid,
        uds: v.uds_path.clone().into(),
    });
    Ok(())
}

/// The vsock device as `GET /vm/config` shows it.
pub fn vsock_model(config: &VmConfig) -> Option<models::Vsock> {
    config.vsock.as_ref().map(|v| models::Vsock {
        guest_cid: v.cid,
        uds_path: v.uds.display().to_string(),
        vsock_id: None,
    })
}

/// `PUT /balloon`.
pub fn put_balloon(config: &mut VmConfig, b: &models::Balloon) -> Result<(), String> {
    let err = |e: &str| format!("Balloon config error: {e}");
    if b.free_page_hinting {
        return Err(err(
            "free_page_hinting is not supported by ferrovm (free_page_reporting is)",
        ));
    }
    if u64::from(b.amount_mib) << 20 > config.mem_size {
        return Err(err(&format!(
            "amount_mib {} is more than the guest's {} MiB",
            b.amount_mib,
            config.mem_size >> 20
        )));
    }
    config.balloon = Some(BalloonConfig {
        amount_mib: b.amount_mib,
        deflate_on_oom: b.deflate_on_oom,
        stats_interval_s: b.stats_polling_interval_s,
        free_page_reporting: b.free_page_reporting,
    });
    Ok(())
}

/// The balloon as `GET /balloon` and `GET /vm/config` show it.
pub fn balloon_model(b: &BalloonConfig) -> models::Balloon {
    models::Balloon {
        amount_mib: b.amount_mib,
        deflate_on_oom: b.deflate_on_oom,
        stats_polling_interval_s: b.stats_interval_s,
        free_page_hinting: false,
        free_page_reporting: b.free_page_reporting,
    }
}

/// `GET|PATCH /balloon` and `GET|PATCH /balloon/statistics`, before and after the boot.
pub(crate) fn handle_balloon(vmm: &mut Vmm, req: &ApiRequest) -> ApiResponse {
    let Some(cfg) = vmm.config.balloon else {
        return ApiResponse::bad_request(
            "The balloon device is not configured (PUT /balloon before the boot).",
        );
    };
    let control: Option<BalloonControl> = vmm
        .vm
        .as_ref()
        .and_then(|vm| vm.devices().balloon().cloned());
    if vmm.started() && control.is_none() {
        return ApiResponse::bad_request("The microVM has stopped.");
    }
    let err = |e: String| ApiResponse::bad_request(format!("Balloon config error: {e}"));
    match req {
        ApiRequest::GetBalloon => {
            ApiResponse::json(&balloon_model(&control.map_or(cfg, |c| c.config())))
        }
        ApiRequest::PatchBalloon(u) => {
            if let Some(c) = &control {
                if let Err(e) = c.set_target_mib(u.amount_mib) {
                    return err(e.to_string());
                }
            } else if u64::from(u.amount_mib) << 20 > vmm.config.mem_size {
                return err(format!(
                    "amount_mib {} is more than the guest's {} MiB",
                    u.amount_mib,
                    vmm.config.mem_size >> 20
                ));
            }
            if let Some(b) = vmm.config.balloon.as_mut() {
                b.amount_mib = u.amount_mib;
            }
            ApiResponse::Empty
        }
        ApiRequest::GetBalloonStats => match control {
            None => ApiResponse::bad_request(
                "The balloon statistics are reported once the guest runs.",
            ),
            Some(c) => match c.stats() {
                Some(s) => ApiResponse::json(&s),
                None if c.stats_interval_s() == 0 => ApiResponse::bad_request(
                    "Balloon statistics are not enabled (stats_polling_interval_s was 0 at PUT /balloon).",
                ),
                None => ApiResponse::bad_request(
                    "The guest has not reported balloon statistics yet (its virtio_balloon driver sends them once loaded).",
                ),
            },
        },
        ApiRequest::PatchBalloonStats(u) => {
            if let Some(c) = &control {
                if let Err(e) = c.set_stats_interval(u.stats_polling_interval_s) {
                    return err(e.to_string());
                }
            } else if cfg.stats_interval_s == 0 || u.stats_polling_interval_s == 0 {
                // Firecracker's rule: statistics are switched on or off only by PUT /balloon.
                return err("statistics are enabled or disabled only by PUT /balloon (stats_polling_interval_s)".into());
            }
            if let Some(b) = vmm.config.balloon.as_mut() {
                b.stats_interval_s = u.stats_polling_interval_s;
            }
            ApiResponse::Empty
        }
        _ => ApiResponse::bad_request("not a balloon request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_specs() {
        assert_eq!(
            parse_vsock("cid=3,uds=/tmp/v.sock").unwrap(),
            VsockConfig {
                cid: 3,
                uds: "/tmp/v.sock".into()
            }
        );
        for (spec, want) in [
            ("uds=/tmp/v", "needs cid"),
            ("cid=3", "needs uds"),
            ("cid=2,uds=/x", "reserved"),
            ("cid=x,uds=/x", "expected a number"),
            ("cid=3,uds=/x,port=1", "unknown vsock option"),
            ("cid=3,uds=", "empty"),
        ] {
            let e = parse_vsock(spec).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
        let long = format!("cid=3,uds=/{}", "a".repeat(100));
        assert!(parse_vsock(&long).unwrap_err().contains("at most 96"));
    }

    #[test]
    fn balloon_specs() {
        let b = parse_balloon("size=64,deflate_on_oom=on,stats=1,free_page_reporting=on").unwrap();
        assert_eq!(
            b,
            BalloonConfig {
                amount_mib: 64,
                deflate_on_oom: true,
                stats_interval_s: 1,
                free_page_reporting: true
            }
        );
        assert_eq!(parse_balloon("size=0").unwrap().amount_mib, 0);
        assert_eq!(parse_balloon("size=16M").unwrap().amount_mib, 16);
        for (spec, want) in [
            ("", "needs size"),
            ("size=lots", "in MiB"),
            ("size=1,stats=-1", "seconds"),
            ("size=1,deflate_on_oom=maybe", "on or off"),
            ("size=1,hinting=on", "unknown balloon option"),
            ("size", "not key=value"),
        ] {
            let e = parse_balloon(spec).unwrap_err();
            assert!(e.contains(want), "{spec:?}: {e}");
        }
    }

    #[test]
    fn api_bodies() {
        let mut c = VmConfig::empty();
        c.mem_size = 128 << 20;
        let v = models::Vsock {
            guest_cid: 1,
            uds_path: "/tmp/v".into(),
            vsock_id: None,
        };
        assert!(put_vsock(&mut c, &v).unwrap_err().contains("reserved"));
        put_vsock(&mut c, &models::Vsock { guest_cid: 7, ..v }).unwrap();
        assert_eq!(vsock_model(&c).unwrap().guest_cid, 7);
        let b = models::Balloon {
            amount_mib: 256,
            deflate_on_oom: false,
            stats_polling_interval_s: 0,
            free_page_hinting: false,
            free_page_reporting: false,
        };
        assert!(put_balloon(&mut c, &b)
            .unwrap_err()
            .contains("more than the guest's 128 MiB"));
        let b = models::Balloon {
            amount_mib: 32,
            ..b
        };
        put_balloon(&mut c, &b).unwrap();
        assert_eq!(balloon_model(&c.balloon.unwrap()), b);
        let hint = models::Balloon {
            free_page_hinting: true,
            ..b
        };
        assert!(put_balloon(&mut c, &hint)
            .unwrap_err()
            .contains("not supported"));
    }
}
