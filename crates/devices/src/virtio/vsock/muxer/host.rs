//! The host side of the muxer: the listener, host sockets sending their `CONNECT` line,
//! connection sockets becoming writable, and the deadlines (timerfd).

use std::cmp::Reverse;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::{
    bump, set_interest, End, Entry, Greeting, Muxer, LISTENER_BACKOFF, LISTENER_RETRY,
    TOKEN_LISTENER,
};
use crate::virtio::vsock::conn::{Conn, ConnKey};
use crate::virtio::vsock::{sock, FIRST_LOCAL_PORT};

impl Muxer {
    // ---- host sockets ----

    pub(super) fn accept_host(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.greet_new(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of descriptors, say: the connection stays in the backlog and the
                    // listener readable. Rest instead of spinning.
                    tracing::warn!(
                        "{}: cannot accept on {}: {e}; retrying in {LISTENER_BACKOFF:?}",
                        self.name,
                        self.uds_path.display()
                    );
                    let fd = self.listener.as_raw_fd();
                    if set_interest(&self.ctl, fd, false, EventSet::IN, TOKEN_LISTENER).is_ok() {
                        self.listener_armed = false;
                    }
                    self.push_deadline(Instant::now() + LISTENER_BACKOFF, LISTENER_RETRY);
                    break;
                }
            }
        }
    }

    pub(super) fn greet_new(&mut self, stream: UnixStream) {
        if self.occupancy() >= self.limits.max_connections {
            tracing::debug!(
                "{}: refusing a host connection: {} connections already",
                self.name,
                self.limits.max_connections
            );
            bump(&self.stats.connections_refused);
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::debug!("{}: cannot make a host socket non-blocking: {e}", self.name);
            return;
        }
        let id = self.new_id();
        if let Err(e) = set_interest(&self.ctl, stream.as_raw_fd(), true, EventSet::IN, id) {
            tracing::warn!("{}: cannot watch a host socket: {e}", self.name);
            return;
        }
        let deadline = Instant::now() + self.limits.connect_line_timeout;
        self.greetings.insert(
            id,
            Greeting {
                stream,
                line: Vec::with_capacity(16),
                deadline,
            },
        );
        self.push_deadline(deadline, id);
    }

    pub(super) fn drop_greeting(&mut self, id: u64, why: &str) {
        if let Some(g) = self.greetings.remove(&id) {
            let _ = set_interest(&self.ctl, g.stream.as_raw_fd(), false, EventSet::IN, id);
            bump(&self.stats.connections_refused);
            tracing::debug!("{}: closing a host connection: {why}", self.name);
        }
    }

    /// Reads what a greeting host socket sent, a byte at a time (what follows the line is
    /// the stream, not ours to take early).
    pub(super) fn on_greeting_readable(&mut self, id: u64) {
        let Some(g) = self.greetings.get_mut(&id) else {
            return;
        };
        let line = loop {
            if g.line.len() >= sock::MAX_CONNECT_LINE {
                return self.drop_greeting(id, "CONNECT line too long");
            }
            let mut b = [0u8; 1];
            match (&g.stream).read(&mut b) {
                Ok(0) => return self.drop_greeting(id, "closed before its CONNECT line"),
                Ok(_) if b[0] == b'\n' => break std::mem::take(&mut g.line),
                Ok(_) => g.line.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.drop_greeting(id, &format!("read failed: {e}")),
            }
        };
        let Some(port) = sock::parse_connect_line(&line) else {
            let shown = String::from_utf8_lossy(&line).into_owned();
            return self.drop_greeting(id, &format!("bad CONNECT line {shown:?}"));
        };
        let Some(g) = self.greetings.remove(&id) else {
            return;
        };
        let _ = set_interest(&self.ctl, g.stream.as_raw_fd(), false, EventSet::IN, id);
        let local_port = self.allocate_port(port);
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let deadline = Instant::now() + self.limits.request_timeout;
        let conn = Conn::host_initiated(key, self.limits.buf_alloc, deadline);
        tracing::debug!(
            "{}: host connection to guest port {port} as host port {local_port}",
            self.name
        );
        let id = self.insert(conn, g.stream);
        self.sync(id);
    }

    /// A host-side port for a host-initiated connection to guest port `peer`: the next free
    /// one from [`FIRST_LOCAL_PORT`] up, wrapping.
    pub(super) fn allocate_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = if p >= u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            let key = ConnKey {
                local_port: p,
                peer_port: peer,
            };
            // At most `max_connections` ports are taken: this ends.
            if !self.ports_in_use.contains(&p) && !self.by_key.contains_key(&key) {
                return p;
            }
        }
    }

    /// Connection `id`'s socket is writable (or failed).
    pub(super) fn on_writable(&mut self, id: u64) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        let Entry { conn, stream, .. } = e;
        if let Err(err) = conn.flush_to_host(|b| sock::send_nosignal(stream, b)) {
            tracing::debug!(
                "{}: host socket of port {} failed ({err}); resetting",
                self.name,
                conn.key.local_port
            );
            return self.end(id, End::Reset);
        }
        self.sync(id);
    }

    // ---- deadlines ----

    pub(super) fn push_deadline(&mut self, at: Instant, id: u64) {
        self.deadlines.push(Reverse((at, id)));
        // Superseded entries are dropped lazily; keep their number bounded.
        if self.deadlines.len() > 4 * self.limits.max_connections + 64 {
            let live: Vec<_> = self
                .conns
                .iter()
                .filter_map(|(&id, e)| e.conn.deadline.map(|d| Reverse((d, id))))
                .chain(
                    self.greetings
                        .iter()
                        .map(|(&id, g)| Reverse((g.deadline, id))),
                )
                .chain(
                    self.deadlines
                        .iter()
                        .filter(|r| r.0 .1 == LISTENER_RETRY)
                        .copied(),
                )
                .collect();
            self.deadlines = live.into();
        }
    }

    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if id == LISTENER_RETRY {
                if !self.listener_armed {
                    let fd = self.listener.as_raw_fd();
                    if set_interest(&self.ctl, fd, true, EventSet::IN, TOKEN_LISTENER).is_ok() {
                        self.listener_armed = true;
                    }
                }
                continue;
            }
            if self.greetings.get(&id).is_some_and(|g| g.deadline <= now) {
                self.drop_greeting(id, "no CONNECT line in time");
                continue;
            }
            if self.conns.get(&id).is_some_and(|e| e.conn.expired(now)) {
                tracing::debug!("{}: connection {id} timed out", self.name);
                self.end(id, End::Reset);
            }
        }
    }

    pub(super) fn arm_timer(&mut self) {
        let next = self.deadlines.peek().map(|r| r.0 .0);
        if next == self.timer_at {
            return;
        }
        let r = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                self.timer.reset(wait.max(Duration::from_millis(1)), None)
            }
            None => self.timer.clear(),
        };
        match r {
            Ok(()) => self.timer_at = next,
            Err(e) => tracing::warn!("{}: cannot set the timer: {e}", self.name),
        }
    }
}
