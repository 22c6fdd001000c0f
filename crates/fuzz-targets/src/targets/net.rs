//! `net_device`: virtio-net over fuzzed guest memory, with in-process backends: a
//! `SOCK_SEQPACKET` socket pair standing in for a tap (one datagram per frame, with its
//! 12-byte vnet header) or a `SOCK_STREAM` pair speaking passt's length-prefixed stream
//! protocol, one or two queue pairs (two bring the control queue). Besides the driver
//! script, the host side sends fuzzed frames (or raw stream bytes) and drains what the
//! guest sent.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use devices::virtio::net::{FrameBufs, Net, NetBackend, NetConfig, Recv, Stream};

use crate::driver::{self, guest_memory, Driver, MEM_SIZE};
use crate::Input;

/// A tap stand-in: one datagram per frame, header included.
struct SeqPacket {
    fd: OwnedFd,
}

impl NetBackend for SeqPacket {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
    fn has_vnet_hdr(&self) -> bool {
        true
    }
    fn recv(&mut self, frame: &mut FrameBufs<'_>) -> io::Result<Recv> {
        match frame.recv_from(self.fd.as_fd(), libc::MSG_TRUNC | libc::MSG_DONTWAIT)? {
            0 => Ok(Recv::Closed),
            n => Ok(Recv::Frame(n)),
        }
    }
    fn send(&mut self, frame: &mut FrameBufs<'_>) -> io::Result<()> {
        frame.send_to(self.fd.as_fd(), &[], 0, libc::MSG_DONTWAIT)?;
        Ok(())
    }
    fn set_offload(&self, _tun_flags: u32) -> io::Result<()> {
        Ok(())
    }
    fn name(&self) -> &str {
        "fuzz-seqpacket"
    }
}

fn socketpair(kind: libc::c_int) -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into the live two-element array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned here only.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn send(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: `data` is a live slice; the kernel reads at most its length.
    let _ = unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

fn drain(fd: &OwnedFd) {
    let mut buf = vec![0u8; 70 << 10];
    for _ in 0..512 {
        // SAFETY: `buf` is a live, writable buffer of the length given.
        let r = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r <= 0 {
            break;
        }
    }
}

/// The `net_device` target.
pub fn fuzz_net_device(data: &[u8]) {
    let mut inp = Input::new(data);
    let (mask, size_exp) = driver::header(&mut inp);
    let bits = inp.u8();
    let pairs = if bits & 1 != 0 { 2 } else { 1 };
    let stream = bits & 2 != 0;
    let mut peers = Vec::new();
    let mut backends: Vec<Box<dyn NetBackend>> = Vec::new();
    for _ in 0..pairs {
        if stream {
            let (dev, peer) = socketpair(libc::SOCK_STREAM);
            let dev = UnixStream::from(dev);
            backends.push(Box::new(Stream::new(dev).expect("stream backend")));
            peers.push(peer);
        } else {
            let (dev, peer) = socketpair(libc::SOCK_SEQPACKET);
            backends.push(Box::new(SeqPacket { fd: dev }));
            peers.push(peer);
        }
    }
    let mut cfg = NetConfig::new([0x02, 0, 0, 0, 0, 0x42]);
    if bits & 4 != 0 {
        cfg.mtu = Some(68 + inp.u16() % 9000);
    }
    let dev = Net::new("net-fuzz", cfg, backends).expect("net device");
    let mut d = Driver::new(dev, guest_memory(MEM_SIZE));
    d.feature_mask = mask;
    d.bring_up(size_exp);
    driver::run_script(
        &mut d,
        &mut inp,
        size_exp,
        |op, inp, d| {
            let peer = &peers[usize::from(inp.u8()) % peers.len()];
            match op {
                0 => {
                    // A frame from the host: a short one from the script, or a large one.
                    let b = inp.u8();
                    let frame: Vec<u8> = if b & 0x80 != 0 {
                        let len = usize::from(inp.u16());
                        let mut f = inp.short_bytes().to_vec();
                        f.resize(len, 0x5a);
                        f
                    } else {
                        inp.short_bytes().to_vec()
                    };
                    send(peer, &frame);
                    d.settle();
                }
                _ => {
                    drain(peer);
                    d.settle();
                }
            }
        },
        2,
    );
    d.shutdown();
    for p in &peers {
        drain(p);
    }
}
