//! Footprint behaviour on /dev/kvm (issue 14), no timings:
//!
//! - guest RAM is not touched before the guest runs: a 1 GiB guest that has started holds
//!   only the pages it (and the loader) wrote;
//! - the kernel and initrd are released once loaded: the running VMM maps neither file,
//!   and keeps no anonymous copy of either.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{kvm_available, write_image};

/// `out 0x80, al; jmp $-2`: runs for ever in real or long mode, touching nothing.
const PORT_LOOP: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfc];

/// A ferrovm process killed when dropped.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Vmm {
    Vmm(Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrovm"))
}

/// Waits until the process has a `vcpu0` thread (the guest is running), then a little
/// longer so the loop has gone round many times.
fn wait_running(v: &mut Vmm) {
    let pid = v.0.id();
    let start = Instant::now();
    loop {
        if let Some(st) = v.0.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = v.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("ferrovm exited early ({st}): {err}");
        }
        let vcpu = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "vcpu0")
            });
        if vcpu {
            std::thread::sleep(Duration::from_millis(300));
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no vcpu0 thread within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `/proc/PID/smaps` mapping: (size KiB, RSS KiB, Anonymous KiB, header line).
fn smaps(pid: u32) -> Vec<(u64, u64, u64, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let mut out: Vec<(u64, u64, u64, String)> = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let first = w.next().unwrap_or("");
        if let Some((s, e)) = first.split_once('-') {
            if let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) {
                out.push(((e - s) / 1024, 0, 0, line.to_string()));
                continue;
            }
        }
        let mut kib = || w.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if let Some(last) = out.last_mut() {
            match first {
                "Rss:" => last.1 = kib(),
                "Anonymous:" => last.2 = kib(),
                _ => {}
            }
        }
    }
    out
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn guest_ram_is_not_touched_before_the_guest_runs() {
    if !kvm_available("guest_ram_is_not_touched_before_the_guest_runs") {
        return;
    }
    let img = write_image("fp-loop", &PORT_LOOP);
    let mut v = spawn(&["run", "--mem", "1G", "--raw", img.to_str().unwrap()]);
    wait_running(&mut v);
    let maps = smaps(v.0.id());
    let ram: Vec<_> = maps.iter().filter(|m| m.0 >= 768 << 10).collect();
    assert!(
        !ram.is_empty(),
        "no mapping of at least 768 MiB (guest RAM) in smaps"
    );
    let ram_rss: u64 = ram.iter().map(|m| m.1).sum();
    let total: u64 = maps.iter().map(|m| m.1).sum();
    // The guest wrote one page and the loader four bytes: with transparent huge pages that
    // is one 2 MiB page. Touching RAM ahead (zeroing, pre-faulting) would show hundreds.
    assert!(
        ram_rss <= 4 << 10,
        "guest RAM of a 1 GiB guest that touched one page has {:.1} MiB resident",
        mib(ram_rss)
    );
    assert!(
        total <= 64 << 10,
        "the whole process has {:.1} MiB resident",
        mib(total)
    );
}

/// An ELF "vmlinux": one PT_LOAD segment at physical 16 MiB holding [`PORT_LOOP`] at the
/// entry point followed by `pad` bytes that no other part of the file repeats.
fn loop_kernel(pad: usize) -> Vec<u8> {
    const PADDR: u64 = 0x100_0000;
    const HDR: usize = 0x78;
    let mut code = PORT_LOOP.to_vec();
    let mut x: u32 = 0x1234_5678;
    code.extend((0..pad).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    let mut e = vec![0u8; HDR];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // ELFCLASS64
    e[5] = 1; // little endian
    e[6] = 1; // EV_CURRENT
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&PADDR.to_le_bytes()); // e_entry
    e[32..40].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
    e[52..54].copy_from_slice(&0x40u16.to_le_bytes()); // e_ehsize
    e[54..56].copy_from_slice(&0x38u16.to_le_bytes()); // e_phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 0x40;
    e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    e[ph + 8..ph + 16].copy_from_slice(&(HDR as u64).to_le_bytes()); // p_offset
    e[ph + 16..ph + 24].copy_from_slice(&PADDR.to_le_bytes()); // p_vaddr
    e[ph + 24..ph + 32].copy_from_slice(&PADDR.to_le_bytes()); // p_paddr
    e[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    e[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    e.extend_from_slice(&code);
    e
}

#[test]
fn kernel_and_initrd_are_released_once_loaded() {
    if !kvm_available("kernel_and_initrd_are_released_once_loaded") {
        return;
    }
    const PAD: usize = 8 << 20;
    let kernel = write_image("fp-vmlinux", &loop_kernel(PAD));
    let initrd = write_image("fp-initrd", &loop_kernel(PAD)[0x78..]);
    let mut v = spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--mem",
        "256M",
        "--no-rng",
    ]);
    wait_running(&mut v);
    let pid = v.0.id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let named = |p: &Path| {
        let p = p.to_str().unwrap();
        maps.lines().filter(|l| l.ends_with(p)).count()
    };
    assert_eq!(
        named(&kernel),
        0,
        "the kernel file is still mapped after boot:\n{maps}"
    );
    assert_eq!(
        named(&initrd),
        0,
        "the initrd file is still mapped after boot:\n{maps}"
    );
    // Neither is kept as an anonymous copy: all anonymous memory outside guest RAM (heap,
    // stacks, arenas) is well below the size of one of them.
    let anon_outside: u64 = smaps(pid)
        .iter()
        .filter(|m| m.0 < 192 << 10)
        .map(|m| m.2)
        .sum();
    assert!(
        anon_outside < (PAD as u64 >> 10) / 2,
        "{:.1} MiB of anonymous memory outside guest RAM with an {} MiB kernel and initrd loaded: a copy outlives the load",
        mib(anon_outside),
        PAD >> 20
    );
}
