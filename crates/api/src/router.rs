//! `(method, path, body)` -> [`ApiRequest`], with Firecracker's answers to bad input (every
//! one a 400 with a `fault_message`).

use serde::de::DeserializeOwned;

use crate::models::{self, InstanceAction, VmStateUpdate};
use crate::ApiRequest;

/// HTTP methods as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// Anything else (named in the error).
    Other(&'static str),
}

impl Method {
    /// The method of an HTTP request line.
    pub fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "POST" => Method::Other("POST"),
            "DELETE" => Method::Other("DELETE"),
            "HEAD" => Method::Other("HEAD"),
            "OPTIONS" => Method::Other("OPTIONS"),
            _ => Method::Other("an unsupported method"),
        }
    }

    /// The method's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Other(s) => s,
        }
    }
}

/// Why a request was refused before it reached the VMM (all 400 Bad Request).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// No such endpoint for that method.
    #[error("Invalid request method and/or path: {} {path}.", method.as_str())]
    InvalidPathMethod {
        /// The method.
        method: Method,
        /// The path as requested.
        path: String,
    },
    /// A GET with a body.
    #[error("GET request cannot have a body.")]
    GetWithBody,
    /// A PUT without a body.
    #[error("Empty PUT request.")]
    EmptyPut,
    /// A PATCH without a body.
    #[error("Empty PATCH request.")]
    EmptyPatch,
    /// The resource id in the path is missing.
    #[error("The ID cannot be empty.")]
    EmptyId,
    /// The resource id has other characters.
    #[error("API Resource IDs can only contain alphanumeric characters and underscores.")]
    InvalidId,
    /// Path and body disagree on the id.
    #[error("The id from the path does not match the id from the body!")]
    IdMismatch,
    /// The body is not the JSON the endpoint takes (bad syntax, unknown field, wrong type).
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Json(String),
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, RouteError> {
    serde_json::from_slice(body).map_err(|e| RouteError::Json(e.to_string()))
}

fn checked_id(id: Option<&str>) -> Result<&str, RouteError> {
    let id = id.filter(|s| !s.is_empty()).ok_or(RouteError::EmptyId)?;
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(RouteError::InvalidId);
    }
    Ok(id)
}

/// Routes one request. `body` is `None` when the request has none (or an empty one).
pub fn route(method: Method, path: &str, body: Option<&[u8]>) -> Result<ApiRequest, RouteError> {
    let body = body.filter(|b| !b.is_empty());
    let mut tokens = path.trim_start_matches('/').split_terminator('/');
    let first = tokens.next().unwrap_or("");
    let second = tokens.next();
    let extra = tokens.next().is_some();
    let invalid = || RouteError::InvalidPathMethod {
        method,
        path: path.to_string(),
    };
    if extra {
        return Err(invalid());
    }
    match (method, body) {
        (Method::Get, Some(_)) => return Err(RouteError::GetWithBody),
        (Method::Put, None) if is_endpoint(first) => return Err(RouteError::EmptyPut),
        (Method::Patch, None) if is_endpoint(first) => return Err(RouteError::EmptyPatch),
        _ => {}
    }
    let body = body.unwrap_or_default();
    let req = match (method, first, second) {
        (Method::Get, "", None) => ApiRequest::GetInstanceInfo,
        (Method::Get, "version", None) => ApiRequest::GetVersion,
        (Method::Get, "machine-config", None) => ApiRequest::GetMachineConfig,
        (Method::Get, "vm", Some("config")) => ApiRequest::GetVmConfig,
        (Method::Get, "vm", Some("exits")) => ApiRequest::GetExits,
        (Method::Put, "machine-config", None) => ApiRequest::PutMachineConfig(parse_body(body)?),
        (Method::Patch, "machine-config", None) => {
            ApiRequest::PatchMachineConfig(parse_body(body)?)
        }
        (Method::Put, "boot-source", None) => ApiRequest::PutBootSource(parse_body(body)?),
        (Method::Put, "drives", id) => {
            let id = checked_id(id)?;
            let d: models::Drive = parse_body(body)?;
            if d.drive_id != id {
                return Err(RouteError::IdMismatch);
            }
            ApiRequest::PutDrive(d)
        }
        (Method::Patch, "drives", id) => {
            let id = checked_id(id)?;
            let d: models::PartialDrive = parse_body(body)?;
            if d.drive_id != id {
                return Err(RouteError::IdMismatch);
            }
            ApiRequest::PatchDrive(d)
        }
        (Method::Put, "entropy", None) => ApiRequest::PutEntropy(parse_body(body)?),
        (Method::Put, "network-interfaces", id) => {
            let id = checked_id(id)?;
            let n: models::NetworkInterface = parse_body(body)?;
            if n.iface_id != id {
                return Err(RouteError::IdMismatch);
            }
            ApiRequest::PutNetworkInterface(n)
        }
        (Method::Patch, "network-interfaces", id) => {
            let id = checked_id(id)?;
            let n: models::PartialNetworkInterface = parse_body(body)?;
            if n.iface_id != id {
                return Err(RouteError::IdMismatch);
            }
            ApiRequest::PatchNetworkInterface(n)
        }
        (Method::Put, "vsock", None) => ApiRequest::PutVsock(parse_body(body)?),
        (Method::Put, "balloon", None) => ApiRequest::PutBalloon(parse_body(body)?),
        (Method::Patch, "balloon", None) => ApiRequest::PatchBalloon(parse_body(body)?),
        (Method::Get, "balloon", None) => ApiRequest::GetBalloon,
        (Method::Get, "balloon", Some("statistics")) => ApiRequest::GetBalloonStats,
        (Method::Patch, "balloon", Some("statistics")) => {
            ApiRequest::PatchBalloonStats(parse_body(body)?)
        }
        (Method::Put, "actions", None) => {
            ApiRequest::Action(parse_body::<InstanceAction>(body)?.action_type)
        }
        (Method::Patch, "vm", None) => {
            ApiRequest::PatchVm(parse_body::<VmStateUpdate>(body)?.state)
        }
        (Method::Put, "snapshot", Some("create")) => ApiRequest::SnapshotCreate(parse_body(body)?),
        (Method::Put, "snapshot", Some("load")) => ApiRequest::SnapshotLoad(parse_body(body)?),
        (Method::Put, "logger", None) => ApiRequest::PutLogger(parse_body(body)?),
        (Method::Put, "metrics", None) => ApiRequest::PutMetrics(parse_body(body)?),
        _ => return Err(invalid()),
    };
    Ok(req)
}

/// Paths some method serves with a body (so a bodiless PUT/PATCH there is "empty", not
/// "invalid").
fn is_endpoint(first: &str) -> bool {
    matches!(
        first,
        "machine-config"
            | "boot-source"
            | "drives"
            | "entropy"
            | "network-interfaces"
            | "vsock"
            | "balloon"
            | "snapshot"
            | "actions"
            | "vm"
            | "logger"
            | "metrics"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::*;

    fn ok(method: Method, path: &str, body: &str) -> ApiRequest {
        let b = (!body.is_empty()).then_some(body.as_bytes());
        route(method, path, b).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn err(method: Method, path: &str, body: &str) -> String {
        let b = (!body.is_empty()).then_some(body.as_bytes());
        route(method, path, b).unwrap_err().to_string()
    }

    #[test]
    fn every_endpoint_routes() {
        use Method::*;
        assert_eq!(ok(Get, "/", ""), ApiRequest::GetInstanceInfo);
        assert_eq!(ok(Get, "/version", ""), ApiRequest::GetVersion);
        assert_eq!(ok(Get, "/machine-config", ""), ApiRequest::GetMachineConfig);
        assert_eq!(ok(Get, "/vm/config", ""), ApiRequest::GetVmConfig);
        assert_eq!(ok(Get, "/vm/exits", ""), ApiRequest::GetExits);
        assert!(matches!(
            ok(
                Put,
                "/machine-config",
                r#"{"vcpu_count":2,"mem_size_mib":512}"#
            ),
            ApiRequest::PutMachineConfig(MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 512,
                ..
            })
        ));
        assert_eq!(
            ok(Patch, "/machine-config", r#"{"vcpu_count":4}"#),
            ApiRequest::PatchMachineConfig(MachineConfigUpdate {
                vcpu_count: Some(4),
                ..Default::default()
            })
        );
        assert!(matches!(
            ok(
                Put,
                "/boot-source",
                r#"{"kernel_image_path":"/k","boot_args":"quiet"}"#
            ),
            ApiRequest::PutBootSource(BootSource {
                boot_args: Some(_),
                initrd_path: None,
                ..
            })
        ));
        assert!(matches!(
            ok(
                Put,
                "/boot-source",
                r#"{"kernel_image_path":"/g.bin","raw":{"mode":"Long","load_addr":2097152}}"#
            ),
            ApiRequest::PutBootSource(BootSource {
                raw: Some(RawImage {
                    mode: RawMode::Long,
                    load_addr: 0x20_0000
                }),
                ..
            })
        ));
        assert!(matches!(
            ok(
                Put,
                "/drives/rootfs",
                r#"{"drive_id":"rootfs","path_on_host":"/r.img","is_root_device":true,"is_read_only":false}"#
            ),
            ApiRequest::PutDrive(Drive {
                is_root_device: true,
                ..
            })
        ));
        assert!(matches!(
            ok(
                Patch,
                "/drives/rootfs",
                r#"{"drive_id":"rootfs","path_on_host":"/s.img"}"#
            ),
            ApiRequest::PatchDrive(PartialDrive {
                path_on_host: Some(_),
                ..
            })
        ));
        assert_eq!(
            ok(Put, "/entropy", "{}"),
            ApiRequest::PutEntropy(Entropy::default())
        );
        for (a, t) in [
            ("InstanceStart", ActionType::InstanceStart),
            ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
            ("FlushMetrics", ActionType::FlushMetrics),
        ] {
            assert_eq!(
                ok(Put, "/actions", &format!(r#"{{"action_type":"{a}"}}"#)),
                ApiRequest::Action(t)
            );
        }
        assert_eq!(
            ok(Patch, "/vm", r#"{"state":"Paused"}"#),
            ApiRequest::PatchVm(VmState::Paused)
        );
        assert_eq!(
            ok(Patch, "/vm", r#"{"state":"Resumed"}"#),
            ApiRequest::PatchVm(VmState::Resumed)
        );
        assert!(matches!(
            ok(
                Put,
                "/logger",
                r#"{"log_path":"/tmp/l","level":"Debug","show_level":true}"#
            ),
            ApiRequest::PutLogger(Logger {
                level: Some(LogLevel::Debug),
                ..
            })
        ));
        assert!(matches!(
            ok(Put, "/metrics", r#"{"metrics_path":"/tmp/m"}"#),
            ApiRequest::PutMetrics(_)
        ));
        assert!(matches!(
            ok(
                Put,
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"02:00:00:00:00:01"}"#
            ),
            ApiRequest::PutNetworkInterface(NetworkInterface { mtu: None, .. })
        ));
        assert!(matches!(
            ok(
                Patch,
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0","rx_rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}"#
            ),
            ApiRequest::PatchNetworkInterface(PartialNetworkInterface {
                rx_rate_limiter: Some(_),
                ..
            })
        ));
        assert_eq!(
            err(
                Put,
                "/network-interfaces/eth1",
                r#"{"iface_id":"eth0","host_dev_name":"tap0"}"#
            ),
            "The id from the path does not match the id from the body!"
        );
        assert!(matches!(
            ok(
                Put,
                "/snapshot/create",
                r#"{"snapshot_type":"Diff","snapshot_path":"/s","mem_file_path":"/m"}"#
            ),
            ApiRequest::SnapshotCreate(SnapshotCreate {
                snapshot_type: Some(SnapshotType::Diff),
                ..
            })
        ));
        assert!(matches!(
            ok(
                Put,
                "/snapshot/load",
                r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"resume_vm":true}"#
            ),
            ApiRequest::SnapshotLoad(SnapshotLoad {
                resume_vm: Some(true),
                ..
            })
        ));
        assert!(err(Put, "/snapshot/other", "{}").starts_with("Invalid request method"));
        // A trailing slash is the same path.
        assert_eq!(
            ok(Get, "/machine-config/", ""),
            ApiRequest::GetMachineConfig
        );
    }

    #[test]
    fn unknown_paths_and_methods() {
        use Method::*;
        assert_eq!(
            err(Get, "/nope", ""),
            "Invalid request method and/or path: GET /nope."
        );
        assert!(err(Other("DELETE"), "/drives/x", "").contains("DELETE /drives/x"));
        assert!(err(Other("POST"), "/actions", "{}").contains("POST"));
        assert!(err(Put, "/version", "{}").starts_with("Invalid request method"));
        assert!(err(Get, "/vm/config/more", "").starts_with("Invalid request method"));
        assert!(err(Patch, "/boot-source", "{}").starts_with("Invalid request method"));
        assert!(err(Get, "/vm", "").starts_with("Invalid request method"));
    }

    #[test]
    fn body_presence_rules() {
        use Method::*;
        assert_eq!(err(Get, "/", "{}"), "GET request cannot have a body.");
        assert_eq!(err(Put, "/boot-source", ""), "Empty PUT request.");
        assert_eq!(err(Patch, "/vm", ""), "Empty PATCH request.");
    }

    #[test]
    fn ids_are_checked() {
        use Method::*;
        let body = r#"{"drive_id":"a","is_root_device":false}"#;
        assert_eq!(err(Put, "/drives", body), "The ID cannot be empty.");
        assert_eq!(err(Put, "/drives/", body), "The ID cannot be empty.");
        assert!(err(Put, "/drives/a-b", body).contains("alphanumeric characters and underscores"));
        assert_eq!(
            err(Put, "/drives/b", body),
            "The id from the path does not match the id from the body!"
        );
        assert_eq!(
            err(Patch, "/drives/b", r#"{"drive_id":"a"}"#),
            "The id from the path does not match the id from the body!"
        );
    }

    #[test]
    fn bad_json_unknown_fields_and_wrong_types() {
        use Method::*;
        for (path, body, needle) in [
            ("/machine-config", "{", "EOF"),
            (
                "/machine-config",
                r#"{"vcpu_count":1,"mem_size_mib":64,"turbo":true}"#,
                "unknown field `turbo`",
            ),
            (
                "/machine-config",
                r#"{"vcpu_count":"two","mem_size_mib":64}"#,
                "invalid type",
            ),
            (
                "/machine-config",
                r#"{"vcpu_count":-1,"mem_size_mib":64}"#,
                "invalid value",
            ),
            (
                "/actions",
                r#"{"action_type":"Explode"}"#,
                "unknown variant `Explode`",
            ),
            ("/actions", "{}", "missing field `action_type`"),
            ("/vm", r#"{"state":"Sleeping"}"#, "unknown variant"),
            ("/boot-source", r#"{"kernel_image_path":3}"#, "invalid type"),
            (
                "/drives/a",
                r#"{"drive_id":"a","is_root_device":false,"cache_type":"Fast"}"#,
                "unknown variant `Fast`",
            ),
            ("/logger", r#"{"level":"Loud"}"#, "unknown log level"),
            ("/entropy", "\"x\"", "invalid type"),
            ("/boot-source", "\u{0}\u{1}garbage", "expected value"),
        ] {
            let method = if path == "/vm" { Patch } else { Put };
            let e = err(method, path, body);
            assert!(
                e.starts_with("An error occurred when deserializing the json body of a request: ")
                    && e.contains(needle),
                "{path} {body}: {e}"
            );
        }
    }
}
