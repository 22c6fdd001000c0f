//! The guest side of the muxer's output: rx buffers, what goes into them and in what order,
//! reading host sockets, and the event queue.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::{add, bump, set_interest, End, Muxer, Rst, MAX_DATA_ROUNDS, TOKEN_DATA};
use crate::virtio::vsock::packet::{op, Header, RxBuf, HDR_SIZE, HOST_CID, MAX_PKT_LEN};
use crate::virtio::vsock::{sock, EVENT_QUEUE, EVENT_TRANSPORT_RESET, RX_QUEUE};
use crate::virtio::worker::WorkerCtx;

impl Muxer {
    // ---- packets to the guest (rx queue) ----

    /// Makes sure an rx buffer is held; false if the queue is empty (the guest is then
    /// asked to notify) or unusable.
    pub(super) fn ensure_rx(&mut self, ctx: &mut WorkerCtx) -> bool {
        if self.held.is_some() {
            return true;
        }
        if self.rx_starved || self.broken {
            return false;
        }
        loop {
            let Some(q) = ctx.queues.get_mut(RX_QUEUE) else {
                return false;
            };
            let chain = match q.iter(&ctx.mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    self.queue_broken(ctx, RX_QUEUE, &e.to_string());
                    return false;
                }
            };
            if let Some(chain) = chain {
                match RxBuf::from_chain(&ctx.mem, chain, HDR_SIZE + 1, HDR_SIZE + MAX_PKT_LEN) {
                    Ok(b) => {
                        self.held = Some(b);
                        return true;
                    }
                    Err((head, e)) => {
                        tracing::debug!("{}: unusable rx buffer: {e}", self.name);
                        bump(&self.stats.dropped_packets);
                        ctx.complete(RX_QUEUE, head, 0);
                        self.rx_used = true;
                        continue;
                    }
                }
            }
            match q.enable_notification(&ctx.mem) {
                Ok(true) => continue,
                Ok(false) => {
                    self.rx_starved = true;
                    return false;
                }
                Err(e) => {
                    self.queue_broken(ctx, RX_QUEUE, &e.to_string());
                    return false;
                }
            }
        }
    }

    /// Puts packet `hdr` + `payload` in the held rx buffer (which [`Muxer::ensure_rx`] got).
    pub(super) fn put_rx(&mut self, ctx: &mut WorkerCtx, hdr: &Header, payload: &[u8]) {
        let Some(buf) = self.held.take() else {
            return;
        };
        match buf.write_packet(&ctx.mem, hdr, payload) {
            Ok(n) => {
                ctx.complete(RX_QUEUE, buf.head, n);
                bump(&self.stats.rx_packets);
                add(&self.stats.rx_bytes, payload.len());
            }
            Err(e) => {
                tracing::debug!("{}: {e}", self.name);
                ctx.complete(RX_QUEUE, buf.head, 0);
                bump(&self.stats.dropped_packets);
            }
        }
        self.rx_used = true;
    }

    pub(super) fn rst_header(&self, r: Rst) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: r.key.local_port,
            dst_port: r.key.peer_port,
            len: 0,
            type_: r.type_,
            op: op::RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// Sends the guest what is owed and what the host sockets have, while rx buffers last.
    pub(super) fn process_rx(&mut self, ctx: &mut WorkerCtx) {
        let mut rounds = 0;
        while !self.broken {
            if let Some(&r) = self.rsts.front() {
                if !self.ensure_rx(ctx) {
                    break;
                }
                self.rsts.pop_front();
                let hdr = self.rst_header(r);
                self.put_rx(ctx, &hdr, &[]);
                continue;
            }
            if let Some(&id) = self.owed.front() {
                let Some(e) = self.conns.get_mut(&id) else {
                    self.owed.pop_front();
                    continue;
                };
                if !e.conn.has_owed() {
                    e.queued = false;
                    self.owed.pop_front();
                    continue;
                }
                if !self.ensure_rx(ctx) {
                    break;
                }
                self.owed.pop_front();
                let Some(e) = self.conns.get_mut(&id) else {
                    continue;
                };
                let Some((op_, flags)) = e.conn.next_control() else {
                    continue;
                };
                let hdr = e.conn.header(self.cid, op_, flags, 0);
                e.queued = false;
                self.put_rx(ctx, &hdr, &[]);
                self.sync(id);
                continue;
            }
            let Some(id) = self.ready.pop_front() else {
                if rounds >= MAX_DATA_ROUNDS || !self.ensure_rx(ctx) {
                    break;
                }
                rounds += 1;
                if self.poll_data() == 0 {
                    break;
                }
                continue;
            };
            if !self.conns.get(&id).is_some_and(|e| e.conn.wants_read()) {
                continue;
            }
            if !self.ensure_rx(ctx) {
                self.ready.push_front(id);
                break;
            }
            self.read_step(ctx, id);
        }
        if self.rx_used {
            self.rx_used = false;
            ctx.notify_guest(RX_QUEUE);
        }
        self.attach_data(!self.rx_starved && !self.broken);
    }

    /// Takes the data epoll's ready sockets into `ready`; returns how many.
    pub(super) fn poll_data(&mut self) -> usize {
        let n = match self.data.wait(0, &mut self.events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!("{}: data epoll failed: {e}", self.name);
                }
                0
            }
        };
        for ev in &self.events[..n] {
            self.ready.push_back(ev.data());
        }
        n
    }

    /// Reads one packet's worth from connection `id`'s socket into the held rx buffer.
    pub(super) fn read_step(&mut self, ctx: &mut WorkerCtx, id: u64) {
        let room = self.held.as_ref().map_or(0, RxBuf::room);
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        let room = room
            .min(e.conn.credit.peer_free() as usize)
            .min(MAX_PKT_LEN);
        if room == 0 {
            return;
        }
        let mut bounce = std::mem::take(&mut self.bounce);
        match (&e.stream).read(&mut bounce[..room]) {
            Ok(0) => {
                let hung_up = sock::hung_up(&e.stream);
                e.conn
                    .on_host_eof(hung_up, Instant::now() + self.limits.close_timeout);
                self.sync(id);
            }
            Ok(n) => {
                let hdr = e.conn.header(self.cid, op::RW, 0, n as u32);
                // More may wait: the (level-triggered) data epoll says so in the next
                // round, after every other ready socket had its turn.
                self.put_rx(ctx, &hdr, &bounce[..n]);
                self.sync(id);
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => {
                tracing::debug!(
                    "{}: host socket of port {} failed ({err}); resetting",
                    self.name,
                    e.conn.key.local_port
                );
                self.end(id, End::Reset);
            }
        }
        self.bounce = bounce;
    }

    pub(super) fn attach_data(&mut self, want: bool) {
        if want == self.data_attached {
            return;
        }
        match set_interest(
            &self.ctl,
            self.data.as_raw_fd(),
            want,
            EventSet::IN,
            TOKEN_DATA,
        ) {
            Ok(()) => self.data_attached = want,
            Err(e) => tracing::warn!("{}: cannot (un)watch the data epoll: {e}", self.name),
        }
    }

    // ---- transport reset (event queue) ----

    pub(super) fn on_kick(&mut self) {
        let _ = self.shared.kick.read();
        if !self.shared.reset_requested.swap(false, Ordering::SeqCst) {
            return;
        }
        tracing::info!(
            "{}: transport reset: dropping {} connections",
            self.name,
            self.conns.len()
        );
        self.drop_all();
        self.event_owed = true;
    }

    /// Ends every connection and greeting without a word to the guest.
    pub(super) fn drop_all(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.end(id, End::Dropped);
        }
        let ids: Vec<u64> = self.greetings.keys().copied().collect();
        for id in ids {
            self.drop_greeting(id, "transport reset");
        }
        self.rsts.clear();
        self.owed.clear();
        self.ready.clear();
    }

    pub(super) fn send_event(&mut self, ctx: &mut WorkerCtx) {
        if !self.event_owed || self.broken {
            return;
        }
        let mut tries = 0;
        loop {
            let Some(q) = ctx.queues.get_mut(EVENT_QUEUE) else {
                return;
            };
            let chain = match q.iter(&ctx.mem) {
                Ok(mut it) => it.next(),
                Err(e) => return self.queue_broken(ctx, EVENT_QUEUE, &e.to_string()),
            };
            let Some(chain) = chain else {
                match q.enable_notification(&ctx.mem) {
                    Ok(true) if tries < 2 => {
                        tries += 1;
                        continue;
                    }
                    Ok(_) => return,
                    Err(e) => return self.queue_broken(ctx, EVENT_QUEUE, &e.to_string()),
                }
            };
            match RxBuf::from_chain(&ctx.mem, chain, 4, 4) {
                Ok(buf) => {
                    let id = EVENT_TRANSPORT_RESET.to_le_bytes();
                    let n = buf.write(&ctx.mem, &[&id]).unwrap_or(0);
                    ctx.complete(EVENT_QUEUE, buf.head, n as u32);
                    ctx.notify_guest(EVENT_QUEUE);
                    self.event_owed = false;
                    return;
                }
                Err((head, e)) => {
                    tracing::debug!("{}: unusable event buffer: {e}", self.name);
                    ctx.complete(EVENT_QUEUE, head, 0);
                    ctx.notify_guest(EVENT_QUEUE);
                }
            }
        }
    }
}
