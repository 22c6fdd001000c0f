//! A small blocking client for the API socket (what `ferrovm ctl` and the tests use): one
//! HTTP/1.1 request per call, over a fresh connection, with a time limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A client of one API socket.
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body (empty for 204).
    pub body: String,
}

impl Reply {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `fault_message` of an error body, else the body itself.
    pub fn message(&self) -> String {
        match self.json().get("fault_message").and_then(|m| m.as_str()) {
            Some(m) => m.to_string(),
            None => self.body.clone(),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket cannot be reached.
    #[error("cannot connect to the API socket {}: {source}{}", path.display(), hint(source))]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("API request {what} failed: {message}")]
    Http {
        /// Method and path.
        what: String,
        /// The cause.
        message: String,
    },
    /// No answer in time.
    #[error("API request {what}: no answer within {} s", timeout.as_secs())]
    Timeout {
        /// Method and path.
        what: String,
        /// The limit.
        timeout: Duration,
    },
    /// The runtime could not be created.
    #[error("cannot start the API client: {0}")]
    Runtime(std::io::Error),
}

fn hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => " (is ferrovm running with --api-sock at this path?)",
        std::io::ErrorKind::ConnectionRefused => " (nothing listens there: ferrovm has ended)",
        std::io::ErrorKind::PermissionDenied => " (the socket is mode 0600: run as its owner)",
        _ => "",
    }
}

impl Client {
    /// A client of `socket`; each request must complete within `timeout`.
    pub fn new(socket: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(Client {
            socket: socket.to_path_buf(),
            timeout,
            runtime,
        })
    }

    /// Sends `method path` with an optional JSON `body` and returns the answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let what = format!("{method} {path}");
        let fut = self.exchange(method, path, body, &what);
        self.runtime.block_on(async {
            tokio::time::timeout(self.timeout, fut)
                .await
                .unwrap_or_else(|_| {
                    Err(ClientError::Timeout {
                        what: what.clone(),
                        timeout: self.timeout,
                    })
                })
        })
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        what: &str,
    ) -> Result<Reply, ClientError> {
        let http = |e: &dyn std::fmt::Display| ClientError::Http {
            what: what.to_string(),
            message: e.to_string(),
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("Host", "localhost")
            .header("Accept", "application/json");
        if body.is_some() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
            .map_err(|e| http(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(&e))?
            .to_bytes();
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}
