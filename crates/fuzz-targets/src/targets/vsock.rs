//! `vsock`: the virtio-vsock packet parsers (tx chains into a header and payload, rx
//! chains into buffers the device writes packets into) on chains virtio-queue walks from
//! a fuzzed queue, and the whole device (its connection muxer) over fuzzed guest memory,
//! with host processes that connect to the device's socket, send `CONNECT` lines and
//! bytes, and a host listener that takes the guest's connections to port 1234.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use devices::virtio::vsock::packet::{self, Header, RxBuf, HDR_SIZE, MAX_PKT_LEN};
use devices::virtio::vsock::Vsock;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::driver::{
    self, desc_bytes, fold, guest_memory, Driver, Ring, DATA_BASE, DATA_LEN, MEM_SIZE,
};
use crate::Input;

/// The guest port a host listener serves.
const HOST_PORT: u32 = 1234;

fn parse_packets(inp: &mut Input<'_>) {
    let mem = guest_memory(MEM_SIZE);
    let n = usize::from(inp.u16() % 4096);
    let blob = inp.bytes(n);
    let at = DATA_BASE + u64::from(inp.u16()) % (DATA_LEN - 4096);
    let _ = mem.write_slice(blob, GuestAddress(at));
    let size_exp = inp.u8();
    let size = 1u16 << (size_exp % 9);
    let ring = Ring::at(0, size);
    let n = usize::from(inp.u8() % 32) + 1;
    for i in 0..n {
        let (addr, len, flags, next) = (inp.u64(), inp.u32(), inp.u16(), inp.u16());
        let (addr, len, flags) = fold(addr, len, flags);
        let at = ring.desc + 16 * (i as u64 % u64::from(size));
        let _ = mem.write_slice(&desc_bytes(addr, len, flags, next), GuestAddress(at));
    }
    let heads = usize::from(inp.u8() % 8) + 1;
    for h in 0..heads {
        let slot = ring.avail + 4 + 2 * (h as u64 % u64::from(size));
        let _ = mem.write_obj(inp.u16(), GuestAddress(slot));
    }
    let _ = mem.write_obj(heads as u16, GuestAddress(ring.avail + 2));
    let mut q = Queue::new(size).expect("queue");
    let _ = q.try_set_size(size);
    let _ = q.try_set_desc_table_address(GuestAddress(ring.desc));
    let _ = q.try_set_avail_ring_address(GuestAddress(ring.avail));
    let _ = q.try_set_used_ring_address(GuestAddress(ring.used));
    q.set_ready(true);
    let mut payload = Vec::new();
    let hdr_raw: [u8; HDR_SIZE] = {
        let mut h = [0u8; HDR_SIZE];
        let b = inp.bytes(HDR_SIZE);
        h[..b.len()].copy_from_slice(b);
        h
    };
    let n = usize::from(inp.u16() % 2048);
    let reply = inp.bytes(n).to_vec();
    let (min, max) = (usize::from(inp.u8()), usize::from(inp.u16()) + 1);
    let Ok(iter) = q.iter(&mem) else { return };
    for (k, chain) in iter.enumerate() {
        if (size_exp >> 4) & (1 << (k % 4)) == 0 {
            match packet::read_tx(&mem, chain, &mut payload) {
                Ok(h) => {
                    if h.op == packet::op::RW && h.len > 0 {
                        assert_eq!(payload.len(), h.len as usize, "payload of the wrong size");
                        assert!(payload.len() <= MAX_PKT_LEN);
                    }
                    assert_eq!(Header::from_bytes(&h.to_bytes()), h);
                }
                Err(e) => {
                    let _ = e.header();
                    let _ = e.to_string();
                }
            }
        } else {
            match RxBuf::from_chain(&mem, chain, min, max) {
                Ok(buf) => {
                    assert!(buf.capacity() <= max && buf.capacity() >= min);
                    let hdr = Header::from_bytes(&hdr_raw);
                    let take = reply.len().min(buf.room());
                    if let Ok(n) = buf.write_packet(&mem, &hdr, &reply[..take]) {
                        assert!(n as usize <= buf.capacity());
                    }
                }
                Err((_, e)) => {
                    let _ = e.to_string();
                }
            }
        }
    }
}

fn socket_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ferrovm-fuzz-{}-vsock-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn device(inp: &mut Input<'_>) {
    let (mask, size_exp) = driver::header(inp);
    let dir = socket_dir();
    let uds = dir.join("v.sock");
    let listener =
        UnixListener::bind(dir.join(format!("v.sock_{HOST_PORT}"))).expect("host listener");
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let dev = Vsock::new("vsock-fuzz", 3, uds.clone()).expect("vsock device");
    let mut d = Driver::new(dev, guest_memory(MEM_SIZE));
    d.feature_mask = mask;
    d.bring_up(size_exp);
    let mut streams: Vec<UnixStream> = Vec::new();
    driver::run_script(
        &mut d,
        inp,
        size_exp,
        |op, inp, d| {
            match op {
                0 => {
                    if streams.len() < 8 {
                        if let Ok(s) = UnixStream::connect(&uds) {
                            let _ = s.set_nonblocking(true);
                            let line = match inp.u8() % 4 {
                                0 => format!("CONNECT {}\n", inp.u32()),
                                1 => format!("CONNECT {}\n", inp.u8()),
                                _ => String::from_utf8_lossy(inp.short_bytes()).into_owned(),
                            };
                            let _ = (&s).write(line.as_bytes());
                            streams.push(s);
                        }
                    }
                }
                1 => {
                    if let Ok((s, _)) = listener.accept() {
                        let _ = s.set_nonblocking(true);
                        streams.push(s);
                    }
                }
                2 => {
                    let i = usize::from(inp.u8());
                    let b = inp.short_bytes();
                    if !streams.is_empty() {
                        let n = streams.len();
                        let _ = (&streams[i % n]).write(b);
                    }
                }
                3 => {
                    let mut buf = [0u8; 4096];
                    for s in &streams {
                        for _ in 0..64 {
                            if !matches!((&*s).read(&mut buf), Ok(n) if n > 0) {
                                break;
                            }
                        }
                    }
                }
                4 => {
                    let i = usize::from(inp.u8());
                    if !streams.is_empty() {
                        let n = streams.len();
                        let how = if inp.u8() & 1 != 0 {
                            std::net::Shutdown::Write
                        } else {
                            std::net::Shutdown::Both
                        };
                        let _ = streams[i % n].shutdown(how);
                        if how == std::net::Shutdown::Both {
                            streams.remove(i % n);
                        }
                    }
                }
                _ => {
                    let _ = d.t.device().send_transport_reset();
                }
            }
            d.settle();
        },
        6,
    );
    d.shutdown();
    drop(d);
    drop(streams);
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `vsock` target: the packet parsers or the whole device, by the first byte.
pub fn fuzz_vsock(data: &[u8]) {
    let mut inp = Input::new(data);
    if inp.u8() & 1 == 0 {
        parse_packets(&mut inp);
    } else {
        device(&mut inp);
    }
}
