//! ferrovm's control plane: a Firecracker-compatible REST API (HTTP/1.1 and JSON) on a Unix
//! socket.
//!
//! - [`models`]: the request and response bodies of Firecracker's OpenAPI file;
//! - [`router`]: `(method, path, body)` -> a typed [`ApiRequest`], or the 400 Firecracker
//!   answers for that input;
//! - [`server`]: the HTTP server (hyper on a single-threaded tokio runtime, one thread),
//!   which hands every routed request to the VMM thread over a [`RequestQueue`] and waits,
//!   without blocking other connections, for its [`ApiResponse`];
//! - [`client`]: a small blocking client (`ferrovm ctl`).
//!
//! The API thread never touches the VM: it only parses, forwards and answers.

pub mod client;
pub mod models;
pub mod router;
pub mod server;

use std::sync::mpsc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use router::{route, Method, RouteError};
pub use server::{ApiServer, ServerOptions, DEFAULT_MAX_PAYLOAD};

/// A routed request for the VMM.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(models::MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(models::MachineConfigUpdate),
    /// `PUT /boot-source`.
    PutBootSource(models::BootSource),
    /// `PUT /drives/{id}`.
    PutDrive(models::Drive),
    /// `PATCH /drives/{id}`.
    PatchDrive(models::PartialDrive),
    /// `PUT /entropy`.
    PutEntropy(models::Entropy),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(models::NetworkInterface),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(models::PartialNetworkInterface),
    /// `PUT /vsock`.
    PutVsock(models::Vsock),
    /// `PUT /balloon`.
    PutBalloon(models::Balloon),
    /// `PATCH /balloon`.
    PatchBalloon(models::BalloonUpdate),
    /// `GET /balloon`.
    GetBalloon,
    /// `GET /balloon/statistics`.
    GetBalloonStats,
    /// `PATCH /balloon/statistics`.
    PatchBalloonStats(models::BalloonStatsUpdate),
    /// `PUT /actions`.
    Action(models::ActionType),
    /// `PATCH /vm`.
    PatchVm(models::VmState),
    /// `GET /vm/config`.
    GetVmConfig,
    /// `GET /vm/exits` (ferrovm: the live VM-exit profile).
    GetExits,
    /// `PUT /snapshot/create`.
    SnapshotCreate(models::SnapshotCreate),
    /// `PUT /snapshot/load`.
    SnapshotLoad(models::SnapshotLoad),
    /// `PUT /logger`.
    PutLogger(models::Logger),
    /// `PUT /metrics`.
    PutMetrics(models::Metrics),
}

impl ApiRequest {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ApiRequest::GetInstanceInfo => "GET /",
            ApiRequest::GetVersion => "GET /version",
            ApiRequest::GetMachineConfig => "GET /machine-config",
            ApiRequest::PutMachineConfig(_) => "PUT /machine-config",
            ApiRequest::PatchMachineConfig(_) => "PATCH /machine-config",
            ApiRequest::PutBootSource(_) => "PUT /boot-source",
            ApiRequest::PutDrive(_) => "PUT /drives",
            ApiRequest::PatchDrive(_) => "PATCH /drives",
            ApiRequest::PutEntropy(_) => "PUT /entropy",
            ApiRequest::PutNetworkInterface(_) => "PUT /network-interfaces",
            ApiRequest::PatchNetworkInterface(_) => "PATCH /network-interfaces",
            ApiRequest::PutVsock(_) => "PUT /vsock",
            ApiRequest::PutBalloon(_) => "PUT /balloon",
            ApiRequest::PatchBalloon(_) => "PATCH /balloon",
            ApiRequest::GetBalloon => "GET /balloon",
            ApiRequest::GetBalloonStats => "GET /balloon/statistics",
            ApiRequest::PatchBalloonStats(_) => "PATCH /balloon/statistics",
            ApiRequest::Action(_) => "PUT /actions",
            ApiRequest::PatchVm(_) => "PATCH /vm",
            ApiRequest::GetVmConfig => "GET /vm/config",
            ApiRequest::GetExits => "GET /vm/exits",
            ApiRequest::SnapshotCreate(_) => "PUT /snapshot/create",
            ApiRequest::SnapshotLoad(_) => "PUT /snapshot/load",
            ApiRequest::PutLogger(_) => "PUT /logger",
            ApiRequest::PutMetrics(_) => "PUT /metrics",
        }
    }
}

/// What the VMM answers.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiResponse {
    /// 204 No Content.
    Empty,
    /// 200 OK with a JSON body.
    Json(serde_json::Value),
    /// An error: its status (400 for bad input) and `fault_message`.
    Error {
        /// HTTP status.
        status: u16,
        /// The message.
        message: String,
    },
}

impl ApiResponse {
    /// 400 Bad Request with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiResponse::Error {
            status: 400,
            message: message.into(),
        }
    }

    /// 200 with `value` serialized.
    pub fn json<T: serde::Serialize>(value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => ApiResponse::Json(v),
            Err(e) => ApiResponse::Error {
                status: 500,
                message: format!("cannot serialize the response: {e}"),
            },
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        match self {
            ApiResponse::Empty => 204,
            ApiResponse::Json(_) => 200,
            ApiResponse::Error { status, .. } => *status,
        }
    }

    /// The body bytes (empty for 204).
    pub fn body(&self) -> Vec<u8> {
        match self {
            ApiResponse::Empty => Vec::new(),
            ApiResponse::Json(v) => v.to_string().into_bytes(),
            ApiResponse::Error { message, .. } => fault_body(message).into_bytes(),
        }
    }
}

/// Firecracker's error body: `{"fault_message": "..."}`.
pub fn fault_body(message: &str) -> String {
    serde_json::json!({ "fault_message": message }).to_string()
}

/// One request waiting for the VMM, with the way back to its connection.
#[derive(Debug)]
pub struct PendingRequest {
    /// The request.
    pub request: ApiRequest,
    reply: tokio::sync::oneshot::Sender<ApiResponse>,
}

impl PendingRequest {
    /// Answers the request (a client that went away is not an error).
    pub fn respond(self, response: ApiResponse) {
        let _ = self.reply.send(response);
    }
}

/// The VMM's side of the API: requests arrive on [`RequestQueue::receiver`] and the
/// eventfd ([`RequestQueue::evt`]) becomes readable; the VMM's event loop watches it.
pub struct RequestQueue {
    rx: mpsc::Receiver<PendingRequest>,
    evt: EventFd,
}

/// The API server's side: where it puts requests.
#[derive(Clone)]
pub struct RequestSender {
    tx: mpsc::Sender<PendingRequest>,
    evt: std::sync::Arc<EventFd>,
}

/// A request queue between the API thread and the VMM thread.
pub fn request_queue() -> std::io::Result<(RequestSender, RequestQueue)> {
    let evt = EventFd::new(EFD_NONBLOCK)?;
    let (tx, rx) = mpsc::channel();
    Ok((
        RequestSender {
            tx,
            evt: std::sync::Arc::new(evt.try_clone()?),
        },
        RequestQueue { rx, evt },
    ))
}

impl RequestQueue {
    /// The eventfd signalled for every request queued.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }

    /// Takes the next waiting request, if any. Call [`RequestQueue::clear`] before
    /// draining, so that a request queued meanwhile signals the eventfd again.
    pub fn try_next(&self) -> Option<PendingRequest> {
        self.rx.try_recv().ok()
    }

    /// Clears the eventfd; call before draining with [`RequestQueue::try_next`].
    pub fn clear(&self) {
        let _ = self.evt.read();
    }
}

impl RequestSender {
    /// Queues `request`; the returned receiver yields the VMM's answer. `None` when the VMM
    /// is gone.
    pub fn submit(
        &self,
        request: ApiRequest,
    ) -> Option<tokio::sync::oneshot::Receiver<ApiResponse>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx.send(PendingRequest { request, reply }).ok()?;
        if let Err(e) = self.evt.write(1) {
            tracing::error!("cannot wake the VMM thread: {e}");
        }
        Some(rx)
    }
}
