//! Seed inputs for every target, written by `cargo run -p fuzz-targets --bin fuzz-seeds`
//! into `fuzz/corpus/<target>/` (checked in). Each seed is a small, well-formed input
//! that reaches deep into its target: a device brought up with valid requests, a valid
//! API request, a sealed snapshot state, a minimal ELF and bzImage.

/// (target, seed name, bytes) for every seed.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |t: &'static str, name: &str, b: Vec<u8>| out.push((t, name.to_string(), b));
    for (name, b) in mmio() {
        add("mmio_transport", &name, b);
    }
    for (name, b) in blk_request() {
        add("blk_request", &name, b);
    }
    for (name, b) in blk_device() {
        add("blk_device", &name, b);
    }
    for (name, b) in generic_device() {
        add("rng_device", &name, b.clone());
        add("balloon_device", &name, b);
    }
    for (name, b) in net() {
        add("net_device", &name, b);
    }
    for (name, b) in vsock() {
        add("vsock", &name, b);
    }
    for (name, b) in api() {
        add("api_route", &name, b);
    }
    for (name, b) in snapshot_state() {
        add("snapshot_state", &name, b);
    }
    for (name, b) in memfile() {
        add("snapshot_memfile", &name, b);
    }
    for (name, b) in kernel() {
        add("kernel_image", &name, b);
    }
    out
}

/// A little writer for the scripts.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn short(&mut self, b: &[u8]) -> &mut Self {
        self.0.push(b.len() as u8);
        self.0.extend_from_slice(b);
        self
    }
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// Script op numbers (see `driver::run_script`).
mod op {
    pub const CHAIN: u8 = 1;
    pub const KICK: u8 = 7;
    pub const CONFIG: u8 = 8;
    pub const RESET: u8 = 9;
    pub const SNAPSHOT: u8 = 10;
    pub const EXTRA: u8 = 11;
}

/// A chain op: queue, first descriptor, then (len, writable, content) per buffer.
fn chain(w: &mut W, q: u8, first: u16, bufs: &[(u16, bool, &[u8])]) {
    w.u8(op::CHAIN).u8(q).u16(first).u8((bufs.len() - 1) as u8);
    for &(len, writable, content) in bufs {
        w.u16(len).u8(u8::from(writable)).short(content);
    }
}

fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn mmio() -> Vec<(String, Vec<u8>)> {
    use devices::virtio::mmio::{regs, status};
    let mut w = W::default();
    // A checking device with two queues of 16 and 8, set up properly.
    w.u8(0).u8(1).u8(4).u8(3).u8(0);
    let wr = |w: &mut W, reg: u64, v: u32| {
        // Pick the register by its index in the target's list... simpler: any offset.
        w.u8(0).u8(0xe0).u16(reg as u16).u8(3).u32(v).u8(0);
    };
    wr(&mut w, regs::STATUS, status::ACKNOWLEDGE);
    wr(&mut w, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut w, regs::DRIVER_FEATURES_SEL, 1);
    wr(&mut w, regs::DRIVER_FEATURES, 1);
    wr(&mut w, regs::DRIVER_FEATURES_SEL, 0);
    wr(&mut w, regs::DRIVER_FEATURES, 1 << 29);
    wr(
        &mut w,
        regs::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for (q, base) in [(0u32, 0x1000u32), (1, 0x8000)] {
        wr(&mut w, regs::QUEUE_SEL, q);
        wr(&mut w, regs::QUEUE_NUM, 8);
        wr(&mut w, regs::QUEUE_DESC_LOW, base);
        wr(&mut w, regs::QUEUE_AVAIL_LOW, base + 0x1000);
        wr(&mut w, regs::QUEUE_USED_LOW, base + 0x2000);
        wr(&mut w, regs::QUEUE_READY, 1);
    }
    wr(
        &mut w,
        regs::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    wr(&mut w, regs::QUEUE_NOTIFY, 0);
    w.u8(7); // save and restore
    wr(&mut w, regs::STATUS, 0);
    let checker = w.take();
    let mut rng = checker.clone();
    rng[0] = 0x80;
    vec![
        ("checker-bring-up".into(), checker),
        ("rng-bring-up".into(), rng),
    ]
}

fn blk_request() -> Vec<(String, Vec<u8>)> {
    use crate::driver::{DATA_BASE, FOLD_ADDR, NEXT, WRITE};
    let mut out = Vec::new();
    for (name, kind, data_flags) in [
        ("read", 0u32, WRITE),
        ("write", 1, 0),
        ("flush", 4, WRITE),
        ("get-id", 8, WRITE),
        ("discard", 11, 0),
        ("write-zeroes", 13, 0),
    ] {
        let mut w = W::default();
        w.u8(0); // descriptors as given
        w.u8(0x30).u8(8).u8(0).u8(4).u8(4); // limits: discard, write zeroes, 2048 sectors
        let mut blob = blk_header(kind, 8);
        if kind == 11 || kind == 13 {
            blob.resize(16 * 3, 0); // one segment at the data buffer
        }
        w.u16(blob.len() as u16);
        w.0.extend_from_slice(&blob);
        w.u16(0); // at DATA_BASE
        w.u8(2); // three descriptors
        let data_len = if kind == 11 || kind == 13 { 16 } else { 512 };
        let data_addr = if kind == 11 || kind == 13 { 16 } else { 0x1000 };
        let mut seg = Vec::new();
        if kind == 11 || kind == 13 {
            seg = 8u64.to_le_bytes().to_vec();
            seg.extend_from_slice(&8u32.to_le_bytes());
            seg.extend_from_slice(&0u32.to_le_bytes());
        }
        let _ = seg;
        w.u64(0).u32(16).u16(NEXT | FOLD_ADDR).u16(1);
        w.u64(data_addr)
            .u32(data_len)
            .u16(NEXT | data_flags | FOLD_ADDR)
            .u16(2);
        w.u64(0x2000).u32(1).u16(WRITE | FOLD_ADDR).u16(0);
        let _ = DATA_BASE;
        out.push((name.to_string(), w.take()));
    }
    // The same read through a real queue of 8.
    let mut q = out[0].1.clone();
    q[0] = 3 << 1 | 1;
    q.extend_from_slice(&[0, 0, 0]); // one head: descriptor 0
    out.push(("read-queue".into(), q));
    out
}

fn bring_up_header(w: &mut W) {
    w.u8(0).u8(4); // accept every feature; queues of 16
}

fn blk_device() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, cfg) in [("thread", 4u8), ("uring", 6), ("readonly", 5)] {
        let mut w = W::default();
        bring_up_header(&mut w);
        w.u8(cfg);
        chain(
            &mut w,
            0,
            0,
            &[
                (16, false, &blk_header(1, 0)),
                (1024, false, b"data"),
                (1, true, &[]),
            ],
        );
        chain(
            &mut w,
            0,
            3,
            &[
                (16, false, &blk_header(0, 0)),
                (1024, true, &[]),
                (1, true, &[]),
            ],
        );
        chain(
            &mut w,
            0,
            6,
            &[
                (16, false, &blk_header(8, 0)),
                (20, true, &[]),
                (1, true, &[]),
            ],
        );
        w.u8(op::KICK).u8(0);
        chain(
            &mut w,
            0,
            9,
            &[(16, false, &blk_header(4, 0)), (1, true, &[])],
        );
        w.u8(op::KICK).u8(0);
        w.u8(op::CONFIG).u8(0).u8(3).u8(0);
        w.u8(op::SNAPSHOT);
        w.u8(op::EXTRA); // disk swap
        w.u8(op::KICK).u8(0);
        out.push((name.to_string(), w.take()));
    }
    out
}

fn generic_device() -> Vec<(String, Vec<u8>)> {
    let mut w = W::default();
    bring_up_header(&mut w);
    w.u8(0x2); // balloon: stats on
               // A writable buffer on every queue (entropy), a PFN array on the balloon's.
    for q in 0..3u8 {
        chain(
            &mut w,
            q,
            0,
            &[(64, q != 0 && q != 1, &[1, 0, 0, 0, 2, 0, 0, 0])],
        );
        chain(&mut w, q, 1, &[(64, true, &[])]);
        w.u8(op::KICK).u8(q);
    }
    w.u8(op::RESET);
    chain(&mut w, 0, 0, &[(4096, true, &[])]);
    w.u8(op::KICK).u8(0);
    vec![("bring-up".into(), w.take())]
}

fn net() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bits) in [("tap", 0u8), ("tap-mq", 1), ("stream", 2)] {
        let mut w = W::default();
        bring_up_header(&mut w);
        w.u8(bits);
        // Receive buffers, then a frame from the host.
        chain(&mut w, 0, 0, &[(2048, true, &[])]);
        chain(&mut w, 0, 1, &[(12, true, &[]), (2048, true, &[])]);
        w.u8(op::KICK).u8(0);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        frame.extend_from_slice(&[0x45; 40]);
        if bits & 2 != 0 {
            let mut s = (frame.len() as u32 - 12).to_be_bytes().to_vec();
            s.extend_from_slice(&frame[12..]);
            frame = s;
        }
        w.u8(op::EXTRA).u8(0).u8(0).short(&frame);
        // A frame from the guest.
        let mut tx = vec![0u8; 12];
        tx.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0x42, 0x08, 0x00]);
        tx.extend_from_slice(&[0x45; 46]);
        chain(&mut w, 1, 0, &[(tx.len() as u16, false, &tx)]);
        w.u8(op::KICK).u8(1);
        w.u8(op::EXTRA + 1).u8(0);
        if bits & 1 != 0 {
            // VIRTIO_NET_CTRL_MQ / VQ_PAIRS_SET 2 on the control queue (index 4).
            chain(&mut w, 4, 0, &[(4, false, &[4, 0, 2, 0]), (1, true, &[])]);
            w.u8(op::KICK).u8(4);
        }
        out.push((name.to_string(), w.take()));
    }
    out
}

fn vsock_hdr(op_: u16, src_port: u32, dst_port: u32, len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&3u64.to_le_bytes());
    h.extend_from_slice(&2u64.to_le_bytes());
    h.extend_from_slice(&src_port.to_le_bytes());
    h.extend_from_slice(&dst_port.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&op_.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&(64u32 << 10).to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

fn vsock() -> Vec<(String, Vec<u8>)> {
    use crate::driver::{FOLD_ADDR, NEXT, WRITE};
    let mut out = Vec::new();
    // Packet parsing: a tx REQUEST and an RW with payload, an rx buffer.
    let mut w = W::default();
    w.u8(0);
    let mut blob = vsock_hdr(1, 5000, 1234, 0);
    blob.extend_from_slice(&vsock_hdr(5, 5000, 1234, 4));
    blob.extend_from_slice(b"ping");
    w.u16(blob.len() as u16);
    w.0.extend_from_slice(&blob);
    w.u16(0);
    w.u8(0x10 | 3); // queue of 8, chains 0 and 1 tx, 4 rx
    w.u8(3);
    w.u64(0).u32(44).u16(FOLD_ADDR).u16(0);
    w.u64(44).u32(44).u16(FOLD_ADDR | NEXT).u16(2);
    w.u64(88).u32(4).u16(FOLD_ADDR).u16(0);
    w.u64(0x1000).u32(256).u16(FOLD_ADDR | WRITE).u16(0);
    w.u8(2).u16(0).u16(1).u16(3);
    w.0.extend_from_slice(&vsock_hdr(5, 1234, 5000, 4));
    w.u16(4);
    w.0.extend_from_slice(b"pong");
    w.u8(44).u16(1024);
    out.push(("packets".into(), w.take()));
    // The device: rx buffers, a guest connection to the host listener, data, shutdown.
    let mut w = W::default();
    w.u8(1);
    bring_up_header(&mut w);
    for i in 0..4u16 {
        chain(&mut w, 0, i, &[(44 + 512, true, &[])]);
    }
    w.u8(op::KICK).u8(0);
    chain(&mut w, 1, 0, &[(44, false, &vsock_hdr(1, 5000, 1234, 0))]);
    w.u8(op::KICK).u8(1);
    w.u8(op::EXTRA + 1); // accept
    let mut rw = vsock_hdr(5, 5000, 1234, 5);
    rw.extend_from_slice(b"hello");
    chain(&mut w, 1, 1, &[(rw.len() as u16, false, &rw)]);
    w.u8(op::KICK).u8(1);
    w.u8(op::EXTRA + 3); // host reads
    w.u8(op::EXTRA + 2).u8(0).short(b"world");
    w.u8(op::KICK).u8(0);
    w.u8(op::EXTRA).u8(0).u32(4000); // a host connection to guest port 4000
    w.u8(op::KICK).u8(0);
    chain(&mut w, 1, 2, &[(44, false, &vsock_hdr(4, 5000, 1234, 0))]);
    w.u8(op::KICK).u8(1);
    w.u8(op::EXTRA + 5); // transport reset
    w.u8(op::SNAPSHOT);
    out.push(("device".into(), w.take()));
    out
}

fn api() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let reqs: [(u8, u8, &str); 10] = [
        (0, 0, ""),
        (
            1,
            2,
            r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#,
        ),
        (2, 2, r#"{"vcpu_count": 4}"#),
        (
            1,
            3,
            r#"{"kernel_image_path": "/boot/vmlinuz", "boot_args": "console=ttyS0"}"#,
        ),
        (
            1,
            4,
            r#"{"drive_id": "rootfs", "path_on_host": "/tmp/x.img", "is_root_device": true, "is_read_only": false, "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#,
        ),
        (
            1,
            7,
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01"}"#,
        ),
        (1, 11, r#"{"action_type": "InstanceStart"}"#),
        (2, 12, r#"{"state": "Paused"}"#),
        (
            1,
            16,
            r#"{"snapshot_path": "/tmp/s", "mem_backend": {"backend_type": "File", "backend_path": "/tmp/m"}, "resume_vm": true}"#,
        ),
        (
            1,
            9,
            r#"{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
        ),
    ];
    for (i, (m, p, body)) in reqs.iter().enumerate() {
        let mut w = W::default();
        w.u8(if body.is_empty() { m | 0x40 } else { *m }).u8(*p);
        w.0.extend_from_slice(body.as_bytes());
        out.push((format!("request-{i}"), w.take()));
    }
    out
}

fn snapshot_state() -> Vec<(String, Vec<u8>)> {
    use devices::virtio::mmio::{QueueSnapshot, TransportState};
    // A transport state sealed (mode 2: also decoded as a transport).
    let t = TransportState {
        device_type: 2,
        device_features_sel: 0,
        driver_features_sel: 1,
        driver_features: 1 << 32,
        queue_sel: 0,
        status: 15,
        config_generation: 0,
        activated: true,
        interrupt_status: 1,
        needs_reset: false,
        queues: vec![QueueSnapshot {
            max_size: 256,
            next_avail: 3,
            next_used: 3,
            event_idx: true,
            size: 256,
            ready: true,
            desc_table: 0x1000,
            avail_ring: 0x2000,
            used_ring: 0x3000,
        }],
        bad_setup: vec![false],
        device: vec![1, 2],
    };
    let mut a = vec![2u8];
    a.extend(postcard::to_allocvec(&t).expect("encode"));
    let mut b = vec![3u8];
    b.extend(crate::targets::snapshot::seal(
        &postcard::to_allocvec(&t).expect("encode"),
    ));
    vec![("transport".into(), a), ("transport-sealed".into(), b)]
}

fn memfile() -> Vec<(String, Vec<u8>)> {
    let mut w = W::default();
    w.u8(2);
    w.u8(0).u16(0).u8(16); // 64 KiB at 0
    w.u8(0).u16(0x100).u8(4); // 16 KiB at 1 MiB
    w.u8(2)
        .u32(0x1000)
        .short(&[1; 32])
        .u32(0x12000)
        .short(&[2; 16]);
    w.u16(0x4000).u16(0x4000).u8(1);
    w.u8(1).u32(0).short(&[3; 8]);
    w.u8(2)
        .u32(0x1000)
        .short(&[4; 8])
        .u32(0x3000)
        .short(&[5; 8]);
    vec![("layout".into(), w.take())]
}

/// A minimal ELF64 x86_64 executable with one PT_LOAD of `code` at 1 MiB.
pub fn tiny_elf(code: &[u8]) -> Vec<u8> {
    let mut e = vec![0u8; 64 + 56];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little endian
    e[6] = 1;
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = 64;
    e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
    e[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // offset
    e[ph + 16..ph + 24].copy_from_slice(&0x10_0000u64.to_le_bytes());
    e[ph + 24..ph + 32].copy_from_slice(&0x10_0000u64.to_le_bytes());
    e[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    e[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64 + 0x1000).to_le_bytes());
    e[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    e.extend_from_slice(code);
    e
}

/// A bzImage (boot protocol 2.15, 64-bit, relocatable) whose payload is `payload`.
pub fn tiny_bzimage(payload: &[u8]) -> Vec<u8> {
    let setup_sects = 1u8;
    let mut img = vec![0u8; 512 * (1 + usize::from(setup_sects))];
    img[0x1f1] = setup_sects;
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 1; // LOADED_HIGH
    img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    img[0x234] = 1; // relocatable
    img[0x236..0x238].copy_from_slice(&3u16.to_le_bytes()); // XLF_KERNEL_64 | CAN_BE_LOADED_ABOVE_4G
    img[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes()); // payload_offset (from the PM code)
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
    img[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size
    img.extend_from_slice(payload);
    img
}

fn kernel() -> Vec<(String, Vec<u8>)> {
    let elf = tiny_elf(&[0xf4; 64]);
    // A gzip "payload" of the ELF with its size trailer (flate2 is a dependency of the
    // kernel crate; here the stored-block format is written by hand to avoid one).
    let gz = gzip_stored(&elf);
    let bz = tiny_bzimage(&gz);
    let mut out = Vec::new();
    let mut e = vec![1u8];
    e.extend_from_slice(&elf);
    out.push(("elf".into(), e));
    let mut b = vec![1u8];
    b.extend_from_slice(&bz);
    out.push(("bzimage-gzip".into(), b));
    let mut h = vec![3u8];
    h.extend_from_slice(&bz);
    out.push(("bzimage-host-load".into(), h));
    let mut g = vec![2u8];
    g.extend_from_slice(&bz);
    out.push(("bzimage-guest-load".into(), g));
    let mut s = vec![0u8];
    s.extend_from_slice(&gz);
    out.push(("gzip-stream".into(), s));
    out
}

/// `data` as a gzip member of stored deflate blocks, followed by the kernel's 4-byte
/// uncompressed-size trailer.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let chunks: Vec<&[u8]> = data.chunks(0xffff).collect();
    for (i, c) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        let n = c.len() as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&CRC32.checksum(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    // size_append: the kernel build's trailer (same value as gzip's ISIZE).
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}
