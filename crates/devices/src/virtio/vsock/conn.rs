//! One connection's protocol state (virtio 1.2, section 5.10.6): its phase, the shutdown
//! promises of both sides, credit accounting both ways, the control packets the device
//! owes the guest, and the guest's bytes waiting for the host socket.
//!
//! No I/O and no clock here: the muxer tells a [`Conn`] what happened (a guest packet, an
//! end of file on the host socket, bytes written to it) and does what the answer says. The
//! state is plain data, to be saved in a snapshot later.
//!
//! Credit (5.10.6.3): each side advertises `buf_alloc`, the buffer it has for the
//! connection, and `fwd_cnt`, how many bytes it has consumed from it. A sender may have at
//! most `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes in flight. The device keeps to
//! the guest's limit when it sends, and holds the guest to its own: the guest's bytes the
//! host has not read yet never exceed the device's `buf_alloc`; a guest that sends more is
//! reset.

use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::time::Instant;

use super::packet::{op, shutdown, Header, HOST_CID, MAX_PKT_LEN, TYPE_STREAM};

/// A connection's ports: the host side's (`local_port`) and the guest's (`peer_port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

/// Who opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A host process, through the listener and a `CONNECT <port>` line.
    Host,
    /// A guest REQUEST, forwarded to `<uds_path>_<port>`.
    Guest,
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Host-initiated: the device owes the guest, or has sent it, a REQUEST and waits for
    /// its RESPONSE.
    Connecting,
    /// Data may flow (as far as the shutdown flags allow).
    Established,
}

/// Control packets the device owes the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owed {
    pub request: bool,
    pub response: bool,
    pub shutdown: bool,
    pub credit_update: bool,
}

/// Credit accounting for both directions. Counters wrap, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// The buffer the device advertises for the guest's bytes (its `buf_alloc`).
    pub buf_alloc: u32,
    /// Bytes received from the guest.
    pub rx_cnt: Wrapping<u32>,
    /// Bytes of those the host socket took (the device's `fwd_cnt`).
    pub fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last heard.
    pub fwd_cnt_sent: Wrapping<u32>,
    /// The guest's buffer for the device's bytes, from its latest packet.
    pub peer_buf_alloc: u32,
    /// The guest's `fwd_cnt`, from its latest packet.
    pub peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    pub tx_cnt: Wrapping<u32>,
}

impl Credit {
    /// Fresh counters; the device advertises `buf_alloc`.
    pub fn new(buf_alloc: u32) -> Credit {
        Credit {
            buf_alloc,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
        }
    }

    /// Takes the guest's credit information from one of its packets.
    pub fn note_peer(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// How many bytes the device may send the guest now. A guest claiming to have consumed
    /// more than it was sent gets nothing (its in-flight count wraps past its buffer).
    pub fn peer_free(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The device sent the guest `n` bytes.
    pub fn sent(&mut self, n: u32) {
        self.tx_cnt += n;
    }

    /// Guest bytes the host socket has not taken yet.
    pub fn buffered(&self) -> u32 {
        (self.rx_cnt - self.fwd_cnt).0
    }

    /// Accounts `len` bytes arriving from the guest; false (nothing changed) if they do not
    /// fit the buffer the device advertised.
    pub fn take_from_guest(&mut self, len: u32) -> bool {
        if len > self.buf_alloc.saturating_sub(self.buffered()) {
            return false;
        }
        self.rx_cnt += len;
        true
    }

    /// The host socket took `n` of the guest's bytes.
    pub fn forwarded(&mut self, n: u32) {
        self.fwd_cnt += n;
    }

    /// The guest has heard the current `fwd_cnt` (every packet carries it).
    pub fn reported(&mut self) {
        self.fwd_cnt_sent = self.fwd_cnt;
    }

    /// Whether the guest should hear about consumed bytes now rather than with the next
    /// packet: a good share of the buffer was consumed unreported, or the guest believes it
    /// has less room than one packet needs while some was consumed. A guest blocked on
    /// credit therefore always gets an update once the host has read what it had sent.
    pub fn update_due(&self) -> bool {
        let unreported = (self.fwd_cnt - self.fwd_cnt_sent).0;
        if unreported == 0 {
            return false;
        }
        let threshold = (self.buf_alloc / 2).max(1);
        let guest_view_free = self
            .buf_alloc
            .saturating_sub((self.rx_cnt - self.fwd_cnt_sent).0);
        unreported >= threshold || (guest_view_free as usize) < MAX_PKT_LEN
    }
}

/// Why the device resets a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// A packet that makes no sense in this state (the operation is given).
    Protocol(u16),
    /// The guest sent more than the credit it had.
    CreditExceeded { len: u32, room: u32 },
    /// The guest sent data after promising not to.
    DataAfterShutdown,
}

/// What the muxer does after a guest packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing beyond re-reading the connection's wishes ([`Conn::wants_read`] ...).
    Continue,
    /// An RW packet whose payload the credit allows: hand it to [`Conn::send_to_host`].
    Data,
    /// The guest accepted a host-initiated connection; the `OK` line is queued for the host.
    Accepted,
    /// The guest reset the connection: close the host socket, answer nothing. `orderly`:
    /// the RST closed a connection that both sides had shut down (or were shutting down).
    Forget { orderly: bool },
    /// Answer RST, close the host socket.
    Reset(ResetReason),
}

/// One connection.
#[derive(Debug, Clone)]
pub struct Conn {
    pub key: ConnKey,
    pub origin: Origin,
    pub phase: Phase,
    /// What the guest promised ([`shutdown`] flags).
    pub peer_shut: u32,
    /// What the device promised the guest.
    pub local_shut: u32,
    pub owed: Owed,
    pub credit: Credit,
    /// The guest's bytes (and the device's `OK` line) waiting for the host socket.
    to_host: VecDeque<u8>,
    /// Leading bytes of `to_host` that are the device's own (the `OK` line), not credit.
    own_bytes: usize,
    /// The host socket's write side was shut down (the guest promised to send no more).
    host_write_closed: bool,
    /// When the connection is given up unless something happens first.
    pub deadline: Option<Instant>,
}

impl Conn {
    fn new(key: ConnKey, origin: Origin, phase: Phase, buf_alloc: u32) -> Conn {
        Conn {
            key,
            origin,
            phase,
            peer_shut: 0,
            local_shut: 0,
            owed: Owed::default(),
            credit: Credit::new(buf_alloc),
            to_host: VecDeque::new(),
            own_bytes: 0,
            host_write_closed: false,
            deadline: None,
        }
    }

    /// A host process asked for guest port `key.peer_port`: the device owes the guest a
    /// REQUEST, answered by `deadline`.
    pub fn host_initiated(key: ConnKey, buf_alloc: u32, deadline: Instant) -> Conn {
        let mut c = Conn::new(key, Origin::Host, Phase::Connecting, buf_alloc);
        c.owed.request = true;
        c.deadline = Some(deadline);
        c
    }

    /// The guest's REQUEST `req` reached a host listener: the device owes a RESPONSE.
    pub fn guest_initiated(key: ConnKey, buf_alloc: u32, req: &Header) -> Conn {
        let mut c = Conn::new(key, Origin::Guest, Phase::Established, buf_alloc);
        c.credit.note_peer(req.buf_alloc, req.fwd_cnt);
        c.owed.response = true;
        c
    }

    /// Takes a packet the guest sent on this connection. `close_by` is when a connection
    /// that starts closing now is given up.
    pub fn on_packet(&mut self, hdr: &Header, close_by: Instant) -> Verdict {
        if hdr.op == op::RST {
            let orderly = self.peer_shut == shutdown::BOTH || self.local_shut == shutdown::BOTH;
            return Verdict::Forget { orderly };
        }
        self.credit.note_peer(hdr.buf_alloc, hdr.fwd_cnt);
        match (self.phase, hdr.op) {
            (Phase::Connecting, op::RESPONSE) => {
                self.phase = Phase::Established;
                self.deadline = None;
                let line = format!("OK {}\n", self.key.local_port);
                self.own_bytes = line.len();
                self.to_host.extend(line.as_bytes());
                Verdict::Accepted
            }
            (Phase::Connecting, o) => Verdict::Reset(ResetReason::Protocol(o)),
            (Phase::Established, op::RW) => {
                if self.peer_shut & shutdown::SEND != 0 {
                    return Verdict::Reset(ResetReason::DataAfterShutdown);
                }
                if hdr.len == 0 {
                    return Verdict::Continue;
                }
                let room = self.credit.buf_alloc.saturating_sub(self.credit.buffered());
                if !self.credit.take_from_guest(hdr.len) {
                    return Verdict::Reset(ResetReason::CreditExceeded { len: hdr.len, room });
                }
                Verdict::Data
            }
            (Phase::Established, op::CREDIT_UPDATE) => Verdict::Continue,
            (Phase::Established, op::CREDIT_REQUEST) => {
                self.owed.credit_update = true;
                Verdict::Continue
            }
            (Phase::Established, op::SHUTDOWN) => {
                let before = self.peer_shut;
                self.peer_shut |= hdr.flags & shutdown::BOTH;
                if self.peer_shut == shutdown::BOTH && before != shutdown::BOTH {
                    self.deadline = Some(close_by);
                }
                Verdict::Continue
            }
            (Phase::Established, o) => Verdict::Reset(ResetReason::Protocol(o)),
        }
    }

    /// Hands `data`, the payload of an RW packet [`Conn::on_packet`] accepted, to the host:
    /// written at once through `write` when nothing is waiting, else (and for what `write`
    /// did not take) queued. A host that closed its socket altogether gets nothing (the
    /// bytes count as consumed). `write` errors other than `WouldBlock` are returned.
    pub fn send_to_host(
        &mut self,
        data: &[u8],
        mut write: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        if self.local_shut & shutdown::RCV != 0 {
            self.forwarded(data.len());
            return Ok(());
        }
        let mut done = 0;
        if self.to_host.is_empty() {
            while done < data.len() {
                match write(&data[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n.min(data.len() - done),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            self.forwarded(done);
        }
        self.to_host.extend(&data[done..]);
        Ok(())
    }

    /// Writes what waits for the host through `write` until it is all written or `write`
    /// would block.
    pub fn flush_to_host(
        &mut self,
        mut write: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            let n = match write(front) {
                Ok(0) => break,
                Ok(n) => n.min(front.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.to_host.drain(..n);
            let own = n.min(self.own_bytes);
            self.own_bytes -= own;
            self.forwarded(n - own);
        }
        if self.to_host.is_empty() {
            // Give the memory back: a connection that was busy once may idle for long.
            self.to_host = VecDeque::new();
        }
        Ok(())
    }

    fn forwarded(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.credit.forwarded(n as u32);
        if self.credit.update_due() {
            self.owed.credit_update = true;
        }
    }

    /// Bytes waiting for the host socket.
    #[cfg(test)]
    pub fn pending_to_host(&self) -> usize {
        self.to_host.len()
    }

    /// The host side reached end of file: it will send nothing more. `hung_up`: it closed
    /// its socket altogether (nothing it is sent will be read). The guest is told (a
    /// SHUTDOWN); a connection closed both ways is given up at `close_by` unless the guest
    /// answers first.
    pub fn on_host_eof(&mut self, hung_up: bool, close_by: Instant) {
        let before = self.local_shut;
        self.local_shut |= shutdown::SEND;
        if hung_up {
            self.local_shut |= shutdown::RCV;
            let discarded = self.to_host.len() - self.own_bytes;
            self.to_host.clear();
            self.own_bytes = 0;
            self.forwarded(discarded);
        }
        if self.local_shut != before {
            self.owed.shutdown = true;
        }
        if self.local_shut == shutdown::BOTH && before != shutdown::BOTH {
            self.deadline = Some(close_by);
        }
    }

    /// Whether the device should read the host socket now: established, RESPONSE sent,
    /// neither side closed that direction, and the guest has room.
    pub fn wants_read(&self) -> bool {
        self.phase == Phase::Established
            && !self.owed.response
            && self.local_shut & shutdown::SEND == 0
            && self.peer_shut & shutdown::RCV == 0
            && self.credit.peer_free() > 0
    }

    /// Whether bytes wait for the host socket.
    pub fn wants_write(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// True once, when the guest promised to send nothing more and everything it sent was
    /// written: time to shut the host socket's write side.
    pub fn take_host_write_shutdown(&mut self) -> bool {
        if self.peer_shut & shutdown::SEND != 0
            && self.to_host.is_empty()
            && !self.host_write_closed
        {
            self.host_write_closed = true;
            return true;
        }
        false
    }

    /// The guest closed both directions and everything it sent was written: close the host
    /// socket and answer RST.
    pub fn close_due(&self) -> bool {
        self.peer_shut == shutdown::BOTH && self.to_host.is_empty()
    }

    /// Whether the deadline has passed at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// Whether a control packet is owed.
    pub fn has_owed(&self) -> bool {
        let o = self.owed;
        o.request || o.response || o.shutdown || o.credit_update
    }

    /// The next control packet owed (operation, flags), now counted as sent.
    pub fn next_control(&mut self) -> Option<(u16, u32)> {
        let o = &mut self.owed;
        if o.request {
            o.request = false;
            return Some((op::REQUEST, 0));
        }
        if o.response {
            o.response = false;
            return Some((op::RESPONSE, 0));
        }
        if o.shutdown {
            o.shutdown = false;
            return Some((op::SHUTDOWN, self.local_shut));
        }
        if o.credit_update {
            o.credit_update = false;
            return Some((op::CREDIT_UPDATE, 0));
        }
        None
    }

    /// The header of a packet to the guest at `guest_cid`, with the device's credit
    /// information (which the guest has then heard: no separate update is owed). For an RW
    /// packet of `len` bytes the bytes count as sent.
    pub fn header(&mut self, guest_cid: u64, op_: u16, flags: u32, len: u32) -> Header {
        self.credit.reported();
        self.owed.credit_update = false;
        if op_ == op::RW {
            self.credit.sent(len);
        }
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op: op_,
            flags,
            buf_alloc: self.credit.buf_alloc,
            fwd_cnt: self.credit.fwd_cnt.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const BUF: u32 = 128 << 10;

    fn key() -> ConnKey {
        ConnKey {
            local_port: 1 << 30,
            peer_port: 1234,
        }
    }

    fn pkt(op_: u16, len: u32, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: key().peer_port,
            dst_port: key().local_port,
            len,
            type_: TYPE_STREAM,
            op: op_,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    fn established() -> Conn {
        let req = pkt(op::REQUEST, 0, 0, 4096, 0);
        let mut c = Conn::guest_initiated(key(), BUF, &req);
        assert_eq!(c.next_control(), Some((op::RESPONSE, 0)));
        c
    }

    /// A writer taking at most `cap` bytes per call into `out`, or would-block when `cap` is 0.
    fn writer(out: &mut Vec<u8>, cap: usize) -> impl FnMut(&[u8]) -> io::Result<usize> + '_ {
        move |b| {
            if cap == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(cap);
            out.extend_from_slice(&b[..n]);
            Ok(n)
        }
    }

    #[test]
    fn the_device_never_sends_more_than_the_guest_has_room_for() {
        let mut c = Credit::new(BUF);
        c.note_peer(1000, 0);
        assert_eq!(c.peer_free(), 1000);
        c.sent(600);
        assert_eq!(c.peer_free(), 400);
        c.sent(400);
        assert_eq!(c.peer_free(), 0);
        c.note_peer(1000, 500); // the guest consumed 500
        assert_eq!(c.peer_free(), 500);
        c.note_peer(200, 500); // the guest shrank its buffer below what is in flight
        assert_eq!(c.peer_free(), 0);
        c.note_peer(1000, 2000); // claims to have consumed more than it was sent
        assert_eq!(c.peer_free(), 0);
        // Counters wrap.
        let mut w = Credit::new(BUF);
        w.tx_cnt = Wrapping(u32::MAX - 10);
        w.note_peer(100, u32::MAX - 10);
        w.sent(50);
        assert_eq!(w.tx_cnt.0, 39);
        assert_eq!(w.peer_free(), 50);
    }

    #[test]
    fn a_guest_that_ignores_the_devices_credit_is_reset() {
        let mut c = established();
        let mut sink = Vec::new();
        let half = BUF / 2;
        assert_eq!(
            c.on_packet(&pkt(op::RW, half, 0, 4096, 0), later()),
            Verdict::Data
        );
        // The host reads nothing: everything stays buffered.
        c.send_to_host(&vec![1; half as usize], writer(&mut sink, 0))
            .unwrap();
        assert_eq!(c.credit.buffered(), half);
        assert_eq!(
            c.on_packet(&pkt(op::RW, half, 0, 4096, 0), later()),
            Verdict::Data
        );
        c.send_to_host(&vec![2; half as usize], writer(&mut sink, 0))
            .unwrap();
        assert_eq!(c.pending_to_host(), BUF as usize);
        assert_eq!(
            c.on_packet(&pkt(op::RW, 1, 0, 4096, 0), later()),
            Verdict::Reset(ResetReason::CreditExceeded { len: 1, room: 0 })
        );
        // Once the host read some, that much fits again.
        c.flush_to_host(writer(&mut sink, 1000)).unwrap();
        assert_eq!(sink.len(), BUF as usize);
        assert_eq!(c.credit.buffered(), 0);
        assert_eq!(
            c.on_packet(&pkt(op::RW, BUF, 0, 4096, 0), later()),
            Verdict::Data
        );
        assert_eq!(
            c.on_packet(&pkt(op::RW, u32::MAX, 0, 4096, 0), later()),
            Verdict::Reset(ResetReason::CreditExceeded {
                len: u32::MAX,
                room: 0
            })
        );
    }

    #[test]
    fn credit_updates_are_owed_once_the_host_consumed_enough() {
        let mut c = established();
        let mut sink = Vec::new();
        // 1 KiB forwarded at once: the guest still sees nearly the whole buffer free.
        assert_eq!(
            c.on_packet(&pkt(op::RW, 1024, 0, 4096, 0), later()),
            Verdict::Data
        );
        c.send_to_host(&[0; 1024], writer(&mut sink, usize::MAX))
            .unwrap();
        assert_eq!(c.credit.fwd_cnt.0, 1024);
        assert!(!c.owed.credit_update);
        // Half the buffer consumed unreported: an update is owed.
        let rest = BUF / 2 - 1024;
        assert_eq!(
            c.on_packet(&pkt(op::RW, rest, 0, 4096, 0), later()),
            Verdict::Data
        );
        c.send_to_host(&vec![0; rest as usize], writer(&mut sink, usize::MAX))
            .unwrap();
        assert!(c.owed.credit_update);
        assert_eq!(c.next_control(), Some((op::CREDIT_UPDATE, 0)));
        let h = c.header(3, op::CREDIT_UPDATE, 0, 0);
        assert_eq!((h.buf_alloc, h.fwd_cnt), (BUF, BUF / 2));
        assert!(!c.credit.update_due());
        // A data packet carries the credit too: it settles an owed update.
        c.credit.forwarded(BUF / 2);
        c.owed.credit_update = true;
        let h = c.header(3, op::RW, 0, 10);
        assert_eq!(h.fwd_cnt, BUF);
        assert!(!c.has_owed());
        // A credit request is answered.
        assert_eq!(
            c.on_packet(&pkt(op::CREDIT_REQUEST, 0, 0, 4096, 0), later()),
            Verdict::Continue
        );
        assert_eq!(c.next_control(), Some((op::CREDIT_UPDATE, 0)));
    }

    #[test]
    fn a_guest_blocked_on_a_small_buffer_gets_an_update() {
        // buf_alloc smaller than a packet: any consumption is reported.
        let mut c = Conn::guest_initiated(key(), 4096, &pkt(op::REQUEST, 0, 0, 4096, 0));
        c.next_control();
        let mut sink = Vec::new();
        assert_eq!(
            c.on_packet(&pkt(op::RW, 4096, 0, 4096, 0), later()),
            Verdict::Data
        );
        c.send_to_host(&[0; 4096], writer(&mut sink, 0)).unwrap();
        assert!(!c.owed.credit_update, "nothing consumed yet");
        c.flush_to_host(writer(&mut sink, 10)).unwrap();
        assert!(c.owed.credit_update);
    }

    #[test]
    fn host_initiated_handshake() {
        let deadline = Instant::now();
        let mut c = Conn::host_initiated(key(), BUF, deadline);
        assert_eq!(c.phase, Phase::Connecting);
        assert!(c.expired(deadline));
        assert_eq!(c.next_control(), Some((op::REQUEST, 0)));
        let h = c.header(3, op::REQUEST, 0, 0);
        assert_eq!(
            (h.src_cid, h.dst_cid, h.src_port, h.dst_port, h.op),
            (2, 3, 1 << 30, 1234, op::REQUEST)
        );
        assert!(!c.wants_read(), "no data before the RESPONSE");
        assert_eq!(
            c.on_packet(&pkt(op::RESPONSE, 0, 0, 8192, 0), later()),
            Verdict::Accepted
        );
        assert_eq!(c.deadline, None);
        assert!(c.wants_read());
        assert_eq!(c.credit.peer_free(), 8192);
        // The OK line goes to the host first and is not guest credit.
        let mut sink = Vec::new();
        c.flush_to_host(writer(&mut sink, 3)).unwrap();
        assert_eq!(sink, format!("OK {}\n", 1 << 30).as_bytes());
        assert_eq!(c.credit.fwd_cnt.0, 0);
    }

    #[test]
    fn a_host_initiated_connection_the_guest_refuses_or_confuses() {
        let mut c = Conn::host_initiated(key(), BUF, later());
        c.next_control();
        assert_eq!(
            c.on_packet(&pkt(op::RST, 0, 0, 0, 0), later()),
            Verdict::Forget { orderly: false }
        );
        let mut c = Conn::host_initiated(key(), BUF, later());
        assert_eq!(
            c.on_packet(&pkt(op::RW, 10, 0, 0, 0), later()),
            Verdict::Reset(ResetReason::Protocol(op::RW))
        );
    }

    #[test]
    fn unexpected_operations_reset_an_established_connection() {
        for o in [op::REQUEST, op::RESPONSE, 0, 99] {
            let mut c = established();
            assert_eq!(
                c.on_packet(&pkt(o, 0, 0, 0, 0), later()),
                Verdict::Reset(ResetReason::Protocol(o))
            );
        }
    }

    #[test]
    fn guest_shutdown_flushes_then_closes() {
        let mut c = established();
        let mut sink = Vec::new();
        assert_eq!(
            c.on_packet(&pkt(op::RW, 5, 0, 4096, 0), later()),
            Verdict::Data
        );
        c.send_to_host(b"hello", writer(&mut sink, 0)).unwrap();
        // SEND only: the host's write side closes after the flush.
        assert_eq!(
            c.on_packet(&pkt(op::SHUTDOWN, 0, shutdown::SEND, 4096, 0), later()),
            Verdict::Continue
        );
        assert!(c.wants_read(), "the guest still receives");
        assert!(!c.take_host_write_shutdown(), "data still waits");
        assert_eq!(
            c.on_packet(&pkt(op::RW, 1, 0, 4096, 0), later()),
            Verdict::Reset(ResetReason::DataAfterShutdown)
        );
        c.flush_to_host(writer(&mut sink, 2)).unwrap();
        assert_eq!(sink, b"hello");
        assert!(c.take_host_write_shutdown());
        assert!(!c.take_host_write_shutdown(), "once");
        assert!(!c.close_due());
        // RCV too: closed both ways, with a deadline.
        let by = later();
        c.on_packet(&pkt(op::SHUTDOWN, 0, shutdown::RCV, 4096, 0), by);
        assert!(!c.wants_read());
        assert!(c.close_due());
        assert_eq!(c.deadline, Some(by));
    }

    #[test]
    fn host_eof_is_a_shutdown_to_the_guest() {
        let mut c = established();
        // Half close: SEND.
        c.on_host_eof(false, later());
        assert!(!c.wants_read());
        assert_eq!(c.next_control(), Some((op::SHUTDOWN, shutdown::SEND)));
        assert_eq!(c.deadline, None);
        // Then the socket hangs up: RCV too; the guest's pending bytes are dropped.
        let mut sink = Vec::new();
        c.on_packet(&pkt(op::RW, 3, 0, 4096, 0), later());
        c.send_to_host(b"abc", writer(&mut sink, 0)).unwrap();
        let by = later();
        c.on_host_eof(true, by);
        assert_eq!(c.next_control(), Some((op::SHUTDOWN, shutdown::BOTH)));
        assert_eq!(c.pending_to_host(), 0);
        assert_eq!(c.credit.buffered(), 0);
        assert_eq!(c.deadline, Some(by));
        // Later data is swallowed, not written.
        c.on_packet(&pkt(op::RW, 3, 0, 4096, 0), later());
        c.send_to_host(b"xyz", writer(&mut sink, usize::MAX))
            .unwrap();
        assert!(sink.is_empty());
        // The guest's RST ends it in order.
        assert_eq!(
            c.on_packet(&pkt(op::RST, 0, 0, 0, 0), later()),
            Verdict::Forget { orderly: true }
        );
    }

    #[test]
    fn reading_waits_for_guest_credit() {
        let mut c = Conn::guest_initiated(key(), BUF, &pkt(op::REQUEST, 0, 0, 100, 0));
        assert!(!c.wants_read(), "RESPONSE first");
        c.next_control();
        assert!(c.wants_read());
        c.header(3, op::RW, 0, 100);
        assert!(!c.wants_read(), "no credit left");
        c.on_packet(&pkt(op::CREDIT_UPDATE, 0, 0, 100, 40), later());
        assert!(c.wants_read());
        assert_eq!(c.credit.peer_free(), 40);
        c.on_packet(&pkt(op::SHUTDOWN, 0, shutdown::RCV, 100, 40), later());
        assert!(!c.wants_read(), "the guest receives no more");
    }

    #[test]
    fn a_failing_host_write_is_reported() {
        let mut c = established();
        c.on_packet(&pkt(op::RW, 3, 0, 4096, 0), later());
        let e = c
            .send_to_host(b"abc", |_| Err(io::ErrorKind::BrokenPipe.into()))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
