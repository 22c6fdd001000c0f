//! The API server over a real Unix socket, against a fake VMM thread: normal requests (through
//! `api::client::Client` and raw HTTP), the body size limit, hostile clients (garbage, huge
//! heads, bodies and heads that never end, many idle connections, the connection limit), the
//! socket file (mode, live/stale/foreign paths, removal) and a slow or vanished VMM.
//!
//! Every test runs under an overall deadline ([`bounded`]) and every socket read has a time
//! limit, so a hung server fails a test instead of blocking the run.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use api::client::{Client, ClientError};
use api::server::{BindError, ServerStats};
use api::{ApiRequest, ApiResponse, ApiServer, RequestQueue, ServerOptions};
use serde_json::{json, Value};

/// No test may take longer than this (a hung server fails the test).
const TEST_DEADLINE: Duration = Duration::from_secs(20);
/// Limit on waiting for one reply.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// What "answered at once" means.
const QUICK: Duration = Duration::from_secs(1);
/// What "eventually" means for server-side time-outs of about one second.
const EVENTUALLY: Duration = Duration::from_secs(5);

const BAD_KERNEL: &str = "/bad";
const BAD_KERNEL_MESSAGE: &str = "Cannot open the kernel image /bad: No such file (os error 2)";
const DESERIALIZE: &str = "An error occurred when deserializing the json body of a request";
const MACHINE_CONFIG: &str = r#"{"vcpu_count":2,"mem_size_mib":512}"#;

/// Runs `f` on a thread of its own and fails if it takes longer than [`TEST_DEADLINE`].
fn bounded<F: FnOnce() + Send + 'static>(name: &str, f: F) {
    let (done_tx, done_rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            f();
            let _ = done_tx.send(());
        })
        .unwrap();
    match done_rx.recv_timeout(TEST_DEADLINE) {
        Ok(()) => handle.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name}: not finished within {TEST_DEADLINE:?} (is the server hung?)")
        }
    }
}

/// A socket path of this process and test, with nothing at it.
fn sock_path(test: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ferrovm-api-{}-{test}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn instance_info() -> Value {
    json!({
        "id": "fake-vmm",
        "state": "Not started",
        "vmm_version": "0.0.0-test",
        "app_name": "ferrovm",
    })
}

fn version_info() -> Value {
    json!({ "firecracker_version": "1.0.0-test" })
}

/// Holds back the answer to `GET /version`: `started` is signalled when the request arrives,
/// the answer goes out when `release` is signalled (or after 5 s, so nothing hangs).
struct Hold {
    started: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

/// A fake VMM thread: waits on the queue's eventfd, records and answers every request.
struct FakeVmm {
    seen: Arc<Mutex<Vec<ApiRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeVmm {
    fn spawn(queue: RequestQueue, hold: Option<Hold>) -> FakeVmm {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let seen = seen.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("fake-vmm".into())
                .spawn(move || fake_vmm_loop(&queue, &seen, &stop, hold.as_ref()))
                .unwrap()
        };
        FakeVmm {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<ApiRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits up to `timeout` for `fd` to become readable.
fn poll_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is a valid, initialized pollfd that outlives the call, and nfds is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

fn fake_vmm_loop(
    queue: &RequestQueue,
    seen: &Mutex<Vec<ApiRequest>>,
    stop: &AtomicBool,
    hold: Option<&Hold>,
) {
    while !stop.load(Ordering::SeqCst) {
        if !poll_readable(queue.evt().as_raw_fd(), Duration::from_millis(20)) {
            continue;
        }
        queue.clear();
        while let Some(pending) = queue.try_next() {
            seen.lock().unwrap().push(pending.request.clone());
            let answer = match &pending.request {
                ApiRequest::GetInstanceInfo => ApiResponse::Json(instance_info()),
                ApiRequest::GetVersion => {
                    if let Some(h) = hold {
                        let _ = h.started.send(());
                        let _ = h.release.recv_timeout(Duration::from_secs(5));
                    }
                    ApiResponse::Json(version_info())
                }
                ApiRequest::PutBootSource(b) if b.kernel_image_path == BAD_KERNEL => {
                    ApiResponse::bad_request(BAD_KERNEL_MESSAGE)
                }
                _ => ApiResponse::Empty,
            };
            pending.respond(answer);
        }
    }
}

/// A server on its own socket with a fake VMM behind it.
struct Harness {
    // Dropped in this order: the server first, then the VMM.
    server: ApiServer,
    vmm: FakeVmm,
    path: PathBuf,
}

impl Harness {
    fn start(test: &str, opts: ServerOptions) -> Harness {
        Harness::start_with(test, opts, None)
    }

    fn start_with(test: &str, opts: ServerOptions, hold: Option<Hold>) -> Harness {
        let path = sock_path(test);
        let (sender, queue) = api::request_queue().unwrap();
        let server = ApiServer::start(&path, sender, opts).unwrap();
        Harness {
            server,
            vmm: FakeVmm::spawn(queue, hold),
            path,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.path, READ_TIMEOUT).unwrap()
    }

    fn stats(&self) -> Arc<ServerStats> {
        self.server.stats()
    }

    fn seen(&self) -> Vec<ApiRequest> {
        self.vmm.seen()
    }
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::SeqCst)
}

/// Waits (polling) until `cond` holds, failing after `limit`.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP over UnixStream

/// A request as bytes (with Content-Length when there is a body).
fn http(method: &str, uri: &str, body: Option<&str>) -> Vec<u8> {
    let mut req =
        format!("{method} {uri} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    req.into_bytes()
}

/// A request with a chunked body (no Content-Length), in chunks of at most 1000 bytes.
fn http_chunked(method: &str, uri: &str, body: &str) -> Vec<u8> {
    let mut req = format!(
        "{method} {uri} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn message(&self) -> String {
        match self.json().get("fault_message") {
            Some(Value::String(m)) => m.clone(),
            _ => panic!("no fault_message in {:?}", self.json()),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status code of the first response in `bytes`, if it starts with one.
fn status_of(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"HTTP/1.1 ")?;
    std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
}

/// One client connection that reads replies one after another (keep-alive, pipelining).
struct Raw {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let stream = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads more bytes; an error names what was received so far.
    fn fill(&mut self, deadline: Instant) -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no complete reply within {READ_TIMEOUT:?}; got {:?}",
                String::from_utf8_lossy(&self.buf)
            ));
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(format!(
                "connection closed before a complete reply; got {:?}",
                String::from_utf8_lossy(&self.buf)
            )),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(format!(
                "reading the reply: {e}; got {:?}",
                String::from_utf8_lossy(&self.buf)
            )),
        }
    }

    fn try_read_reply(&mut self) -> Result<RawReply, String> {
        let deadline = Instant::now() + READ_TIMEOUT;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill(deadline)?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = status_of(head.as_bytes()).ok_or_else(|| format!("no status: {head:?}"))?;
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len = match headers.iter().find(|(n, _)| n == "content-length") {
            Some((_, v)) => v.parse::<usize>().map_err(|e| format!("{head:?}: {e}"))?,
            None if status == 204 || status == 304 => 0,
            None => return Err(format!("no Content-Length: {head:?}")),
        };
        while self.buf.len() < head_end + len {
            self.fill(deadline)?;
        }
        let rest = self.buf.split_off(head_end + len);
        let message = std::mem::replace(&mut self.buf, rest);
        Ok(RawReply {
            status,
            headers,
            body: message[head_end..].to_vec(),
        })
    }

    fn read_reply(&mut self) -> RawReply {
        self.try_read_reply().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Asserts that nothing arrives within `wait` (the connection stays open and silent).
    fn assert_silent(&mut self, wait: Duration) {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("expected silence, got {other:?} after {:?}", self.buf),
        }
    }
}

/// One request on a fresh connection.
fn raw(path: &Path, method: &str, uri: &str, body: Option<&str>) -> RawReply {
    let mut c = Raw::connect(path);
    c.send(&http(method, uri, body));
    c.read_reply()
}

/// Reads until the server closes `stream` (EOF or a reset), failing if it is still open after
/// `limit`. Returns what arrived.
fn read_until_closed(stream: &mut UnixStream, limit: Duration, what: &str) -> Vec<u8> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        assert!(
            !left.is_zero(),
            "{what}: connection still open after {limit:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "{what}: connection still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            // A reset (the server closed with our bytes unread) is a close too.
            Err(_) => return got,
        }
    }
}

/// What a hostile client may get: nothing (a close) or an error status.
fn assert_error_or_nothing(bytes: &[u8], what: &str) {
    if bytes.is_empty() {
        return;
    }
    match status_of(bytes) {
        Some(s) if (400..600).contains(&s) => {}
        _ => panic!(
            "{what}: expected an error status or a close, got {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        ),
    }
}

/// A normal `GET /` on a fresh connection is answered (200) within [`QUICK`].
fn assert_served_quickly(path: &Path, context: &str) {
    let start = Instant::now();
    let mut c = Raw::connect(path);
    c.send(&http("GET", "/", None));
    let reply = c
        .try_read_reply()
        .unwrap_or_else(|e| panic!("{context}: GET /: {e}"));
    let took = start.elapsed();
    assert_eq!(reply.status, 200, "{context}: {reply:?}");
    assert_eq!(reply.json(), instance_info(), "{context}");
    assert!(took < QUICK, "{context}: GET / took {took:?}");
}

/// `{"kernel_image_path":"/k","boot_args":"xx..."}` of exactly `len` bytes.
fn boot_source_of_len(len: usize) -> String {
    let prefix = r#"{"kernel_image_path":"/k","boot_args":""#;
    let suffix = r#""}"#;
    let body = format!(
        "{prefix}{}{suffix}",
        "x".repeat(len - prefix.len() - suffix.len())
    );
    assert_eq!(body.len(), len);
    body
}

// ---------------------------------------------------------------------------------------
// 1. Normal requests

#[test]
fn get_instance_info_through_client_and_raw_http() {
    bounded("get_instance_info", || {
        let h = Harness::start("get_root", ServerOptions::default());
        let reply = h.client().request("GET", "/", None).unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json(), instance_info());

        let r = raw(&h.path, "GET", "/", None);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json(), instance_info());
        assert_eq!(
            h.seen(),
            [ApiRequest::GetInstanceInfo, ApiRequest::GetInstanceInfo]
        );
        assert_eq!(load(&h.stats().requests), 2);
        assert_eq!(load(&h.stats().bad_requests), 0);
    });
}

#[test]
fn put_machine_config_is_204_without_body() {
    bounded("put_machine_config", || {
        let h = Harness::start("put_mc", ServerOptions::default());
        let reply = h
            .client()
            .request("PUT", "/machine-config", Some(MACHINE_CONFIG))
            .unwrap();
        assert_eq!(reply.status, 204, "{reply:?}");
        assert_eq!(reply.body, "");

        let r = raw(&h.path, "PUT", "/machine-config", Some(MACHINE_CONFIG));
        assert_eq!(r.status, 204, "{r:?}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-type"), None);
        assert!(
            matches!(r.header("content-length"), None | Some("0")),
            "{r:?}"
        );

        let seen = h.seen();
        assert_eq!(seen.len(), 2);
        for req in seen {
            match req {
                ApiRequest::PutMachineConfig(mc) => {
                    assert_eq!((mc.vcpu_count, mc.mem_size_mib), (2, 512));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
}

#[test]
fn vmm_error_becomes_fault_message() {
    bounded("vmm_error", || {
        let h = Harness::start("vmm_error", ServerOptions::default());
        let body = format!(r#"{{"kernel_image_path":"{BAD_KERNEL}"}}"#);
        let reply = h
            .client()
            .request("PUT", "/boot-source", Some(&body))
            .unwrap();
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(reply.json(), json!({ "fault_message": BAD_KERNEL_MESSAGE }));
        assert_eq!(reply.message(), BAD_KERNEL_MESSAGE);

        let r = raw(&h.path, "PUT", "/boot-source", Some(&body));
        assert_eq!(r.status, 400);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json(), json!({ "fault_message": BAD_KERNEL_MESSAGE }));
        // The VMM saw both; the server itself refused nothing.
        assert_eq!(h.seen().len(), 2);
        assert_eq!(load(&h.stats().bad_requests), 0);
    });
}

#[test]
fn unknown_path_and_method_are_400_and_not_routed() {
    bounded("unknown_path", || {
        let h = Harness::start("unknown_path", ServerOptions::default());
        let reply = h.client().request("GET", "/nope", None).unwrap();
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(
            reply.message(),
            "Invalid request method and/or path: GET /nope."
        );

        let r = raw(&h.path, "DELETE", "/drives/rootfs", None);
        assert_eq!(r.status, 400);
        assert!(
            r.message()
                .starts_with("Invalid request method and/or path: DELETE /drives/rootfs"),
            "{}",
            r.message()
        );
        let r = raw(&h.path, "GET", "/vm/config/deeper", None);
        assert_eq!(r.status, 400);
        assert!(r
            .message()
            .starts_with("Invalid request method and/or path"));

        assert!(h.seen().is_empty(), "{:?}", h.seen());
        assert_eq!(load(&h.stats().bad_requests), 3);
        assert_eq!(load(&h.stats().requests), 0);
    });
}

#[test]
fn bad_json_is_400_and_never_reaches_the_vmm() {
    bounded("bad_json", || {
        let h = Harness::start("bad_json", ServerOptions::default());
        for body in [
            "{",
            "not json",
            "\u{0}\u{1}garbage",
            r#"{"vcpu_count":"two"}"#,
        ] {
            let reply = h
                .client()
                .request("PUT", "/machine-config", Some(body))
                .unwrap();
            assert_eq!(reply.status, 400, "{body:?}: {reply:?}");
            assert!(
                reply.message().starts_with(DESERIALIZE),
                "{body:?}: {}",
                reply.message()
            );
        }
        let r = raw(
            &h.path,
            "PUT",
            "/boot-source",
            Some("{\"kernel_image_path\":"),
        );
        assert_eq!(r.status, 400);
        assert!(r.message().starts_with(DESERIALIZE), "{}", r.message());

        assert!(h.seen().is_empty(), "the VMM saw {:?}", h.seen());
        assert_eq!(load(&h.stats().bad_requests), 5);
        assert_eq!(load(&h.stats().requests), 0);

        // A good request afterwards is the first the VMM sees.
        let ok = raw(&h.path, "PUT", "/machine-config", Some(MACHINE_CONFIG));
        assert_eq!(ok.status, 204);
        assert_eq!(h.seen().len(), 1);
    });
}

#[test]
fn unknown_field_is_named() {
    bounded("unknown_field", || {
        let h = Harness::start("unknown_field", ServerOptions::default());
        let reply = h
            .client()
            .request(
                "PUT",
                "/machine-config",
                Some(r#"{"vcpu_count":1,"mem_size_mib":64,"turbo":true}"#),
            )
            .unwrap();
        assert_eq!(reply.status, 400, "{reply:?}");
        let m = reply.message();
        assert!(m.starts_with(DESERIALIZE) && m.contains("turbo"), "{m}");

        let r = raw(
            &h.path,
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path":"/k","kernel_args":"quiet"}"#),
        );
        assert_eq!(r.status, 400);
        assert!(r.message().contains("kernel_args"), "{}", r.message());
        assert!(h.seen().is_empty());
    });
}

#[test]
fn keep_alive_and_pipelined_requests_on_one_connection() {
    bounded("keep_alive", || {
        let h = Harness::start("keep_alive", ServerOptions::default());
        let mut c = Raw::connect(&h.path);
        c.send(&http("GET", "/", None));
        let first = c.read_reply();
        assert_eq!(first.status, 200);
        c.send(&http("PUT", "/machine-config", Some(MACHINE_CONFIG)));
        let second = c.read_reply();
        assert_eq!(second.status, 204);
        // An error answered by the server itself keeps the connection too.
        c.send(&http("PUT", "/machine-config", Some("{")));
        assert_eq!(c.read_reply().status, 400);

        // Two requests in one write: two answers, in order.
        let mut both = http("GET", "/", None);
        both.extend_from_slice(&http("GET", "/nope", None));
        c.send(&both);
        assert_eq!(c.read_reply().status, 200);
        assert_eq!(c.read_reply().status, 400);

        // `Connection: close` is answered, then the server closes.
        c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        assert_eq!(c.read_reply().status, 200);
        let rest = read_until_closed(&mut c.stream, READ_TIMEOUT, "after Connection: close");
        assert!(rest.is_empty(), "{rest:?}");

        assert_eq!(load(&h.stats().connections), 1);
        assert_eq!(h.seen().len(), 4);
    });
}

// ---------------------------------------------------------------------------------------
// 2. Body size limit

#[test]
fn body_of_exactly_the_limit_is_accepted_one_more_is_refused() {
    bounded("body_limit", || {
        let max = api::DEFAULT_MAX_PAYLOAD;
        assert_eq!(max, 51_200);
        let h = Harness::start("body_limit", ServerOptions::default());
        let client = h.client();

        let exact = boot_source_of_len(max);
        let reply = client.request("PUT", "/boot-source", Some(&exact)).unwrap();
        assert_eq!(reply.status, 204, "{reply:?}");
        match h.seen().as_slice() {
            [ApiRequest::PutBootSource(b)] => {
                assert_eq!(b.kernel_image_path, "/k");
                assert_eq!(b.boot_args.as_ref().map(String::len), Some(max - 41));
            }
            other => panic!("the VMM saw {other:?}"),
        }

        let over = boot_source_of_len(max + 1);
        let reply = client.request("PUT", "/boot-source", Some(&over)).unwrap();
        assert_eq!(reply.status, 400, "{reply:?}");
        let m = reply.message();
        assert!(
            m.contains("51201") && m.contains("larger than the limit of 51200"),
            "{m}"
        );

        // Without Content-Length (chunked), the limit holds while reading.
        let mut c = Raw::connect(&h.path);
        c.send(&http_chunked("PUT", "/boot-source", &exact));
        assert_eq!(c.read_reply().status, 204);
        let mut c = Raw::connect(&h.path);
        c.send(&http_chunked("PUT", "/boot-source", &over));
        let r = c.read_reply();
        assert_eq!(r.status, 400, "{r:?}");
        assert!(
            r.message().contains("larger than the limit of 51200"),
            "{}",
            r.message()
        );

        // A Content-Length far over the limit is refused without reading the body.
        let mut c = Raw::connect(&h.path);
        c.send(b"PUT /boot-source HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{");
        let r = c.read_reply();
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.message().contains("larger than the limit of 51200"));

        assert_eq!(h.seen().len(), 2, "only the bodies within the limit arrive");
        assert_eq!(load(&h.stats().bad_requests), 3);
    });
}

#[test]
fn small_custom_limit_is_honoured() {
    bounded("small_limit", || {
        let opts = ServerOptions {
            max_payload: 100,
            ..Default::default()
        };
        let h = Harness::start("small_limit", opts);
        // Valid JSON of exactly 100 bytes: spaces between the members.
        let head = r#"{"vcpu_count":2,"#;
        let tail = r#""mem_size_mib":512}"#;
        let exact = format!("{head}{}{tail}", " ".repeat(100 - head.len() - tail.len()));
        assert_eq!(exact.len(), 100);
        let reply = h
            .client()
            .request("PUT", "/machine-config", Some(&exact))
            .unwrap();
        assert_eq!(reply.status, 204, "{reply:?}");

        let over = format!("{head} {}{tail}", " ".repeat(100 - head.len() - tail.len()));
        assert_eq!(over.len(), 101);
        let reply = h
            .client()
            .request("PUT", "/machine-config", Some(&over))
            .unwrap();
        assert_eq!(reply.status, 400);
        assert!(
            reply.message().contains("larger than the limit of 100 "),
            "{}",
            reply.message()
        );
        let mut c = Raw::connect(&h.path);
        c.send(&http_chunked("PUT", "/machine-config", &over));
        let r = c.read_reply();
        assert_eq!(r.status, 400);
        assert!(r.message().contains("larger than the limit of 100 "));

        assert_eq!(h.seen().len(), 1);
    });
}

// ---------------------------------------------------------------------------------------
// 3. Hostile clients

/// Sends `bytes` (ignoring write errors: the server may close first) and requires an error
/// status or a close, then a prompt answer to a normal client.
fn hostile(path: &Path, bytes: &[u8], what: &str) {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    let _ = s.write_all(bytes);
    let got = read_until_closed(&mut s, READ_TIMEOUT, what);
    assert_error_or_nothing(&got, what);
    assert_served_quickly(path, &format!("after {what}"));
}

#[test]
fn garbage_bytes_get_an_error_or_a_close() {
    bounded("garbage", || {
        let h = Harness::start("garbage", ServerOptions::default());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        let cases: [(&[u8], &str); 8] = [
            (&[0xff; 4096], "4 KiB of 0xff"),
            (&random, "4 KiB of random bytes"),
            (b"NOT HTTP\r\n\r\n", "NOT HTTP"),
            (b"\0\0\0\0\r\n\r\n", "NUL bytes"),
            (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", "an unknown HTTP version"),
            (
                b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                "a bad Content-Length",
            ),
            (
                b"PUT /machine-config HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}",
                "two Content-Lengths",
            ),
            (
                b"PUT /machine-config HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                "a bad chunk size",
            ),
        ];
        for (bytes, what) in cases {
            hostile(&h.path, bytes, what);
        }
        assert!(h.seen().iter().all(|r| *r == ApiRequest::GetInstanceInfo));
    });
}

#[test]
fn huge_request_line_and_headers_are_refused() {
    bounded("huge_head", || {
        let h = Harness::start("huge_head", ServerOptions::default());
        let line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1 << 20));
        let mut headers = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..2000 {
            headers.push_str(&format!("X-Filler-{i}: {}\r\n", "y".repeat(30)));
        }
        headers.push_str("\r\n");
        for (bytes, what) in [
            (line.into_bytes(), "a 1 MiB request line"),
            (headers.into_bytes(), "100 KiB of headers"),
        ] {
            let mut s = UnixStream::connect(&h.path).unwrap();
            s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
            let mut w = s.try_clone().unwrap();
            // Write from another thread: the server stops reading long before 1 MiB.
            let writer = std::thread::spawn(move || {
                let _ = w.write_all(&bytes);
            });
            let got = read_until_closed(&mut s, READ_TIMEOUT, what);
            assert_error_or_nothing(&got, what);
            if let Some(status) = status_of(&got) {
                assert!([400, 414, 431].contains(&status), "{what}: {status}");
            }
            drop(s);
            writer.join().unwrap();
            assert_served_quickly(&h.path, &format!("after {what}"));
        }
        assert_eq!(h.seen().len(), 2, "only the checks' GETs: {:?}", h.seen());
    });
}

/// `PUT /boot-source` announcing 1000 bytes and sending 10.
fn unfinished_body(path: &Path) -> Raw {
    let mut c = Raw::connect(path);
    c.send(b"PUT /boot-source HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"kernel_i");
    c
}

#[test]
fn unfinished_body_does_not_block_other_clients() {
    bounded("unfinished_body_others", || {
        let h = Harness::start("body_others", ServerOptions::default());
        let mut hanging = unfinished_body(&h.path);
        let mut hanging2 = unfinished_body(&h.path);
        for i in 0..3 {
            assert_served_quickly(&h.path, &format!("check {i} while bodies hang"));
        }
        let put = h
            .client()
            .request("PUT", "/machine-config", Some(MACHINE_CONFIG))
            .unwrap();
        assert_eq!(put.status, 204);
        // The hanging clients are still waited for (body_timeout is 10 s here).
        hanging.assert_silent(Duration::from_millis(100));
        hanging2.assert_silent(Duration::from_millis(100));
        assert!(h
            .seen()
            .iter()
            .all(|r| !matches!(r, ApiRequest::PutBootSource(_))));
    });
}

#[test]
fn unfinished_body_times_out() {
    bounded("unfinished_body_timeout", || {
        let opts = ServerOptions {
            body_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let h = Harness::start("body_timeout", opts);
        let start = Instant::now();
        let mut hanging = unfinished_body(&h.path);
        assert_served_quickly(&h.path, "while a body hangs");
        let got = read_until_closed(&mut hanging.stream, EVENTUALLY, "an unfinished body");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(900), "closed after {took:?}");
        assert_eq!(
            status_of(&got),
            Some(400),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("did not arrive within 1 s"), "{text}");
        assert_eq!(load(&h.stats().bad_requests), 1);
        assert!(h.seen().iter().all(|r| *r == ApiRequest::GetInstanceInfo));
        assert_served_quickly(&h.path, "after the body timed out");
    });
}

#[test]
fn sub_second_body_timeout_is_named_in_the_message() {
    bounded("body_timeout_ms", || {
        let opts = ServerOptions {
            body_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let h = Harness::start("body_timeout_ms", opts);
        let mut hanging = unfinished_body(&h.path);
        let got = read_until_closed(&mut hanging.stream, EVENTUALLY, "an unfinished body");
        assert_eq!(status_of(&got), Some(400));
        let text = String::from_utf8_lossy(&got);
        // Not "within 0 s".
        assert!(text.contains("did not arrive within 0.5 s."), "{text}");
    });
}

#[test]
fn silent_and_half_header_clients_are_closed_after_header_timeout() {
    bounded("header_timeout", || {
        let opts = ServerOptions {
            header_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let h = Harness::start("header_timeout", opts);
        let start = Instant::now();
        let mut silent = UnixStream::connect(&h.path).unwrap();
        let mut half = UnixStream::connect(&h.path).unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: local").unwrap();
        // A keep-alive connection that went idle after one request.
        let mut idle = Raw::connect(&h.path);
        idle.send(&http("GET", "/", None));
        assert_eq!(idle.read_reply().status, 200);

        assert_served_quickly(&h.path, "while a client is silent and one sent half a head");

        for (stream, what) in [
            (&mut silent, "a silent client"),
            (&mut half, "half a header"),
            (&mut idle.stream, "an idle keep-alive connection"),
        ] {
            let got = read_until_closed(stream, EVENTUALLY, what);
            assert_error_or_nothing(&got, what);
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(900), "closed after {took:?}");
        assert_served_quickly(&h.path, "after the header time-outs");
    });
}

#[test]
fn slowly_dripped_header_is_cut_off() {
    bounded("slowloris", || {
        let opts = ServerOptions {
            header_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let h = Harness::start("slowloris", opts);
        let mut s = UnixStream::connect(&h.path).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        let head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
            .iter()
            .copied();
        let mut bytes = head.chain(std::iter::repeat(b'z'));
        let start = Instant::now();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        let closed = loop {
            assert!(
                start.elapsed() < EVENTUALLY,
                "a dripping client still connected after {EVENTUALLY:?}"
            );
            if s.write_all(&[bytes.next().unwrap_or(b'z')]).is_err() {
                break true;
            }
            match s.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        assert!(closed);
        assert_error_or_nothing(&got, "a dripping client");
        assert_served_quickly(&h.path, "after the dripping client");
    });
}

#[test]
fn many_idle_connections_do_not_block_service() {
    bounded("many_idle", || {
        let h = Harness::start("many_idle", ServerOptions::default());
        let idle: Vec<UnixStream> = (0..200)
            .map(|_| UnixStream::connect(&h.path).unwrap())
            .collect();
        let mut half: Vec<UnixStream> = Vec::new();
        for i in 0..5 {
            let mut s = UnixStream::connect(&h.path).unwrap();
            s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-N: {i}").as_bytes())
                .unwrap();
            half.push(s);
        }
        let bodies: Vec<Raw> = (0..5).map(|_| unfinished_body(&h.path)).collect();
        assert_served_quickly(&h.path, "with 210 idle or half-sent connections");
        // Connections are accepted in order: all of them were before the check.
        let stats = h.stats();
        assert_eq!(load(&stats.connections), 211);
        assert_eq!(load(&stats.rejected_connections), 0);
        assert_served_quickly(&h.path, "again");
        let client = h.client();
        assert_eq!(
            client
                .request("PUT", "/machine-config", Some(MACHINE_CONFIG))
                .unwrap()
                .status,
            204
        );
        drop((idle, half, bodies));
    });
}

#[test]
fn connections_beyond_the_limit_are_closed_at_once() {
    bounded("max_connections", || {
        let opts = ServerOptions {
            max_connections: 50,
            ..Default::default()
        };
        let h = Harness::start("max_conn", opts);
        let stats = h.stats();
        let mut open: Vec<UnixStream> = (0..50)
            .map(|_| UnixStream::connect(&h.path).unwrap())
            .collect();
        wait_until(READ_TIMEOUT, "50 connections accepted", || {
            load(&stats.connections) == 50
        });
        assert_eq!(load(&stats.rejected_connections), 0);

        for i in 0..10 {
            let start = Instant::now();
            let mut extra = UnixStream::connect(&h.path).unwrap();
            let got = read_until_closed(&mut extra, READ_TIMEOUT, "a connection past the limit");
            let took = start.elapsed();
            assert!(got.is_empty(), "{got:?}");
            assert!(took < QUICK, "extra connection {i} closed after {took:?}");
        }
        assert_eq!(load(&stats.rejected_connections), 10);
        assert_eq!(load(&stats.connections), 60);

        // A request while full: closed without an answer.
        let mut c = UnixStream::connect(&h.path).unwrap();
        let _ = c.write_all(&http("GET", "/", None));
        let got = read_until_closed(&mut c, READ_TIMEOUT, "a request while full");
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        assert_eq!(load(&stats.rejected_connections), 11);

        // Close some: the server answers again (once it has seen them go).
        open.truncate(45);
        let start = Instant::now();
        let reply = loop {
            assert!(start.elapsed() < EVENTUALLY, "no answer after closing 5");
            let mut c = Raw::connect(&h.path);
            let _ = c.stream.write_all(&http("GET", "/", None));
            match c.try_read_reply() {
                Ok(r) => break r,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json(), instance_info());

        let rejected = load(&stats.rejected_connections);
        assert!(rejected >= 11);
        // Accepted = served (50 idle + the answered GET) + rejected.
        assert_eq!(load(&stats.connections), 51 + rejected);
        assert_eq!(load(&stats.requests), 1);
        assert_eq!(load(&stats.bad_requests), 0);

        let r = raw(&h.path, "PUT", "/machine-config", Some("{"));
        assert_eq!(r.status, 400);
        assert_eq!(load(&stats.bad_requests), 1);
        drop(open);
    });
}

// ---------------------------------------------------------------------------------------
// 4. The socket file

#[test]
fn socket_has_mode_0600() {
    bounded("mode", || {
        let h = Harness::start("mode", ServerOptions::default());
        let meta = std::fs::symlink_metadata(&h.path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(h.server.path(), h.path);
    });
}

#[test]
fn live_socket_is_in_use() {
    bounded("in_use", || {
        let h = Harness::start("in_use", ServerOptions::default());
        let (sender, _queue) = api::request_queue().unwrap();
        let err = ApiServer::start(&h.path, sender, ServerOptions::default()).unwrap_err();
        assert!(
            matches!(&err, BindError::InUse { path } if *path == h.path),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&h.path.display().to_string()) && text.contains("in use"),
            "{text}"
        );
        // The first server is untouched and its socket is still there.
        assert!(h.path.exists());
        assert_served_quickly(&h.path, "after a second bind was refused");
    });
}

#[test]
fn stale_socket_is_replaced() {
    bounded("stale", || {
        let path = sock_path("stale");
        drop(UnixListener::bind(&path).unwrap());
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket());
        let e = UnixStream::connect(&path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);

        let (sender, queue) = api::request_queue().unwrap();
        let server = ApiServer::start(&path, sender, ServerOptions::default()).unwrap();
        let _vmm = FakeVmm::spawn(queue, None);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_served_quickly(&path, "on a replaced stale socket");
        drop(server);
        assert!(!path.exists());
    });
}

#[test]
fn regular_file_or_directory_is_not_a_socket() {
    bounded("not_a_socket", || {
        let path = sock_path("not_a_socket");
        std::fs::write(&path, b"precious").unwrap();
        let (sender, _queue) = api::request_queue().unwrap();
        let err = ApiServer::start(&path, sender.clone(), ServerOptions::default()).unwrap_err();
        assert!(
            matches!(&err, BindError::NotASocket { path: p } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious", "left alone");
        std::fs::remove_file(&path).unwrap();

        std::fs::create_dir(&path).unwrap();
        let err = ApiServer::start(&path, sender.clone(), ServerOptions::default()).unwrap_err();
        assert!(matches!(err, BindError::NotASocket { .. }), "{err:?}");
        std::fs::remove_dir(&path).unwrap();

        let nowhere = path.join("no-such-dir").join("api.sock");
        let err = ApiServer::start(&nowhere, sender, ServerOptions::default()).unwrap_err();
        assert!(matches!(err, BindError::Io { .. }), "{err:?}");
    });
}

#[test]
fn dropping_the_server_removes_the_socket() {
    bounded("drop_removes", || {
        let h = Harness::start("drop_removes", ServerOptions::default());
        let path = h.path.clone();
        // An open connection does not keep the server (or its drop) alive.
        let mut open = Raw::connect(&path);
        open.send(&http("GET", "/", None));
        assert_eq!(open.read_reply().status, 200);
        let start = Instant::now();
        drop(h);
        assert!(start.elapsed() < QUICK, "drop took {:?}", start.elapsed());
        assert!(!path.exists());
        assert!(UnixStream::connect(&path).is_err());
        let got = read_until_closed(&mut open.stream, READ_TIMEOUT, "a connection at drop");
        assert!(got.is_empty());
    });
}

// ---------------------------------------------------------------------------------------
// 5. A slow or vanished VMM

#[test]
fn slow_vmm_does_not_block_other_connections() {
    bounded("slow_vmm", || {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let hold = Hold {
            started: started_tx,
            release: release_rx,
        };
        let h = Harness::start_with("slow_vmm", ServerOptions::default(), Some(hold));
        let slow_done = Arc::new(AtomicBool::new(false));
        let slow = {
            let path = h.path.clone();
            let done = slow_done.clone();
            std::thread::spawn(move || {
                let r = Client::new(&path, Duration::from_secs(10))
                    .unwrap()
                    .request("GET", "/version", None);
                done.store(true, Ordering::SeqCst);
                r
            })
        };
        started_rx
            .recv_timeout(READ_TIMEOUT)
            .expect("the VMM got GET /version");

        // Answered by the server itself, at once, while the VMM is busy.
        let start = Instant::now();
        let r = raw(&h.path, "PUT", "/machine-config", Some("{"));
        assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
        assert_eq!(r.status, 400);
        assert!(r.message().starts_with(DESERIALIZE));
        let r = raw(&h.path, "GET", "/nope", None);
        assert_eq!(r.status, 400);
        assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
        assert!(
            !slow_done.load(Ordering::SeqCst),
            "the slow request is still waiting"
        );

        // Another routed request is accepted and queued meanwhile.
        let queued = {
            let path = h.path.clone();
            std::thread::spawn(move || {
                Client::new(&path, Duration::from_secs(10))
                    .unwrap()
                    .request("GET", "/", None)
            })
        };
        let stats = h.stats();
        wait_until(READ_TIMEOUT, "the second request routed", || {
            load(&stats.requests) == 2
        });
        assert!(!slow_done.load(Ordering::SeqCst));

        release_tx.send(()).unwrap();
        let slow = slow.join().unwrap().unwrap();
        assert_eq!(slow.status, 200);
        assert_eq!(slow.json(), version_info());
        let queued = queued.join().unwrap().unwrap();
        assert_eq!(queued.status, 200);
        assert_eq!(queued.json(), instance_info());
        assert_eq!(
            h.seen(),
            [ApiRequest::GetVersion, ApiRequest::GetInstanceInfo]
        );
    });
}

#[test]
fn slow_vmm_with_a_real_delay_still_serves_others() {
    bounded("slow_vmm_sleep", || {
        let (started_tx, started_rx) = mpsc::channel();
        let path = sock_path("slow_sleep");
        let (sender, queue) = api::request_queue().unwrap();
        let server = ApiServer::start(&path, sender, ServerOptions::default()).unwrap();
        // A VMM thread that sleeps 300 ms in the handler of its one request.
        let vmm = std::thread::spawn(move || {
            let deadline = Instant::now() + READ_TIMEOUT;
            while Instant::now() < deadline {
                if !poll_readable(queue.evt().as_raw_fd(), Duration::from_millis(20)) {
                    continue;
                }
                queue.clear();
                if let Some(p) = queue.try_next() {
                    let _ = started_tx.send(());
                    std::thread::sleep(Duration::from_millis(300));
                    p.respond(ApiResponse::Json(version_info()));
                    return;
                }
            }
        });
        let slow = {
            let path = path.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let r = Client::new(&path, Duration::from_secs(5))
                    .unwrap()
                    .request("GET", "/version", None);
                (r, start.elapsed())
            })
        };
        started_rx.recv_timeout(READ_TIMEOUT).unwrap();
        let start = Instant::now();
        let r = raw(&path, "PUT", "/machine-config", Some("{"));
        let quick = start.elapsed();
        assert_eq!(r.status, 400);
        assert!(quick < QUICK, "the server's own answer took {quick:?}");
        let (slow, took) = slow.join().unwrap();
        assert_eq!(slow.unwrap().status, 200);
        assert!(took >= Duration::from_millis(300), "{took:?}");
        vmm.join().unwrap();
        drop(server);
    });
}

#[test]
fn vanished_vmm_gives_503() {
    bounded("vmm_gone", || {
        let path = sock_path("vmm_gone");
        let (sender, queue) = api::request_queue().unwrap();
        let server = ApiServer::start(&path, sender, ServerOptions::default()).unwrap();
        drop(queue);
        let reply = Client::new(&path, READ_TIMEOUT)
            .unwrap()
            .request("GET", "/", None)
            .unwrap();
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.message(), "The VMM is shutting down.");
        let r = raw(&path, "PUT", "/machine-config", Some(MACHINE_CONFIG));
        assert_eq!(r.status, 503);
        assert_eq!(
            r.json(),
            json!({ "fault_message": "The VMM is shutting down." })
        );
        // What the server answers itself is unchanged.
        let r = raw(&path, "PUT", "/machine-config", Some("{"));
        assert_eq!(r.status, 400);
        drop(server);
    });
}

#[test]
fn vmm_vanishing_with_a_request_queued_gives_503() {
    bounded("vmm_gone_pending", || {
        let path = sock_path("vmm_gone_pending");
        let (sender, queue) = api::request_queue().unwrap();
        let server = ApiServer::start(&path, sender, ServerOptions::default()).unwrap();
        let waiting = {
            let path = path.clone();
            std::thread::spawn(move || {
                Client::new(&path, READ_TIMEOUT).unwrap().request(
                    "PUT",
                    "/machine-config",
                    Some(MACHINE_CONFIG),
                )
            })
        };
        assert!(
            poll_readable(queue.evt().as_raw_fd(), READ_TIMEOUT),
            "the request reached the queue"
        );
        // The VMM ends without taking the request.
        drop(queue);
        let reply = waiting.join().unwrap().unwrap();
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.message(), "The VMM is shutting down.");

        // And one it took but dropped unanswered.
        let (sender, queue) = api::request_queue().unwrap();
        drop(server);
        let server = ApiServer::start(&path, sender, ServerOptions::default()).unwrap();
        let waiting = {
            let path = path.clone();
            std::thread::spawn(move || {
                Client::new(&path, READ_TIMEOUT)
                    .unwrap()
                    .request("GET", "/", None)
            })
        };
        assert!(poll_readable(queue.evt().as_raw_fd(), READ_TIMEOUT));
        queue.clear();
        let taken = queue.try_next().expect("a request");
        assert_eq!(taken.request, ApiRequest::GetInstanceInfo);
        drop(taken);
        let reply = waiting.join().unwrap().unwrap();
        assert_eq!(reply.status, 503);
        drop(server);
    });
}

#[test]
fn client_times_out_on_a_vmm_that_never_answers() {
    bounded("client_timeout", || {
        let path = sock_path("client_timeout");
        let (sender, queue) = api::request_queue().unwrap();
        let server = ApiServer::start(&path, sender, ServerOptions::default()).unwrap();
        let start = Instant::now();
        let err = Client::new(&path, Duration::from_millis(500))
            .unwrap()
            .request("GET", "/", None)
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < READ_TIMEOUT, "{:?}", start.elapsed());
        // Answering a client that gave up is harmless.
        queue.clear();
        let p = queue.try_next().expect("the request was queued");
        p.respond(ApiResponse::Empty);
        drop(server);

        let err = Client::new(&path, READ_TIMEOUT)
            .unwrap()
            .request("GET", "/", None)
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    });
}
