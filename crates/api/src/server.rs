//! The HTTP/1.1 server on the API socket: hyper on a single-threaded tokio runtime, on a
//! thread of its own ("api").
//!
//! Every connection is a task, so a client that connects and sends nothing (or half a
//! request, or a body that never ends) only costs its task: headers must arrive within
//! [`ServerOptions::header_timeout`], bodies within [`ServerOptions::body_timeout`] and
//! under [`ServerOptions::max_payload`] bytes, request heads fit hyper's smallest buffer,
//! and past [`ServerOptions::max_connections`] new connections are closed at once. Routed
//! requests go to the VMM thread; waiting for its answer blocks no other connection.

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::{fault_body, route, ApiResponse, Method, RequestSender};

/// Firecracker's default limit on request bodies.
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request body accepted, in bytes.
    pub max_payload: usize,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a client has to send a complete request head.
    pub header_timeout: Duration,
    /// Time a client has to send a complete body once its head arrived.
    pub body_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// Request head buffer: hyper's smallest (a longer request line or header block is refused).
const MAX_HEAD_BYTES: usize = 8192;

/// Why the API socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process serves on it.
    #[error("API socket {}: already in use by a running process (pick another path, or stop that process)", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("API socket {}: the path exists and is not a socket (remove it, or pick another path)", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating or preparing the socket failed.
    #[error("API socket {}: {what}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// Counters of the server (read by the VMM's metrics).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections closed at once because too many were open.
    pub rejected_connections: AtomicU64,
    /// Requests routed to the VMM.
    pub requests: AtomicU64,
    /// Requests refused by the server itself (routing, size, time-outs).
    pub bad_requests: AtomicU64,
}

/// Binds the API socket at `path` with mode 0600. A socket left behind by a process that
/// is gone (nothing accepts on it) is replaced, with a warning; a live one is an error.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, BindError> {
    let io = |what| {
        move |source| BindError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(BindError::InUse {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::warn!(
                    "API socket {}: replacing a stale socket nobody listens on",
                    path.display()
                );
                std::fs::remove_file(path).map_err(io("removing the stale socket"))?;
            }
            Err(e) => return Err(io("probing the existing socket")(e)),
        },
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting the path")(e)),
    }
    // SAFETY: umask only changes this process's file-creation mask; it is restored at once.
    // The socket is created with mode 0600 from the start (no window where others could
    // connect), and chmod below makes sure of it.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("setting mode 0600"))?;
    Ok(listener)
}

/// A running API server. Dropping it stops the server and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<ServerStats>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .finish()
    }
}

struct Ctx {
    sender: RequestSender,
    opts: ServerOptions,
    stats: Arc<ServerStats>,
}

impl ApiServer {
    /// Binds `path` ([`bind`]) and serves on it, handing requests to `sender`.
    pub fn start(
        path: &Path,
        sender: RequestSender,
        opts: ServerOptions,
    ) -> Result<ApiServer, BindError> {
        let listener = bind(path)?;
        Self::serve(path, listener, sender, opts).map_err(|source| BindError::Io {
            path: path.to_path_buf(),
            what: "starting the API thread",
            source,
        })
    }

    /// Serves on an already bound `listener` (whose path is `path`).
    pub fn serve(
        path: &Path,
        listener: std::os::unix::net::UnixListener,
        sender: RequestSender,
        opts: ServerOptions,
    ) -> std::io::Result<ApiServer> {
        listener.set_nonblocking(true)?;
        let stats = Arc::new(ServerStats::default());
        let ctx = Arc::new(Ctx {
            sender,
            opts,
            stats: stats.clone(),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let thread = seccomp::thread("api", seccomp::ThreadKind::Api).spawn(move || {
            runtime.block_on(async move {
                match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => accept_loop(l, ctx, stop_rx).await,
                    Err(e) => tracing::error!("API server cannot use its socket: {e}"),
                }
            });
        })?;
        tracing::info!("API server listening on {}", path.display());
        Ok(ApiServer {
            path: path.to_path_buf(),
            stop: Some(stop_tx),
            thread: Some(thread),
            stats,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Decrements the open-connection count when a connection task ends.
struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    ctx: Arc<Ctx>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("API server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
        if open.fetch_add(1, Ordering::SeqCst) >= ctx.opts.max_connections {
            open.fetch_sub(1, Ordering::SeqCst);
            ctx.stats
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "API server: {} connections open; closing a new one",
                ctx.opts.max_connections
            );
            drop(stream);
            continue;
        }
        let guard = ConnGuard(open.clone());
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let service_ctx = ctx.clone();
            let service = hyper::service::service_fn(move |req| {
                let ctx = service_ctx.clone();
                async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ctx.opts.header_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("API connection ended: {e}");
            }
        });
    }
}

fn response(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(status)
        .header("Server", "ferrovm API");
    if !body.is_empty() {
        b = b.header("Content-Type", "application/json");
    }
    b.body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn refuse(ctx: &Ctx, message: &str) -> Response<Full<Bytes>> {
    ctx.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
    tracing::info!("API request refused: {message}");
    response(400, fault_body(message).into_bytes())
}

async fn handle(req: Request<Incoming>, ctx: &Ctx) -> Response<Full<Bytes>> {
    let method = Method::parse(req.method().as_str());
    let path = req.uri().path().to_string();
    let max = ctx.opts.max_payload;
    let too_large = |size: String| {
        format!(
            "Request payload with size {size} is larger than the limit of {max} allowed by server."
        )
    };
    if let Some(len) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max as u64 {
            return refuse(ctx, &too_large(len.to_string()));
        }
    }
    let collected = tokio::time::timeout(
        ctx.opts.body_timeout,
        Limited::new(req.into_body(), max).collect(),
    )
    .await;
    let body = match collected {
        Err(_) => {
            return refuse(
                ctx,
                &format!(
                    "The request body did not arrive within {} s.",
                    ctx.opts.body_timeout.as_secs_f64()
                ),
            )
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(ctx, &too_large(format!("over {max}")))
        }
        Ok(Err(e)) => return refuse(ctx, &format!("Cannot read the request body: {e}.")),
        Ok(Ok(c)) => c.to_bytes(),
    };
    let request = match route(method, &path, Some(&body)) {
        Ok(r) => r,
        Err(e) => return refuse(ctx, &e.to_string()),
    };
    let name = request.name();
    ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
    let answer = match ctx.sender.submit(request) {
        Some(rx) => rx.await.unwrap_or_else(|_| gone()),
        None => gone(),
    };
    tracing::debug!("API {name}: {}", answer.status());
    response(answer.status(), answer.body())
}

fn gone() -> ApiResponse {
    ApiResponse::Error {
        status: 503,
        message: "The VMM is shutting down.".into(),
    }
}
