//! Tiny guest programs (real and long mode) run through the ferrovm binary on /dev/kvm.
//!
//! On hosts whose KVM has no VT-x/AMD-V (see shared/TESTBED.md) every guest instruction is
//! emulated (~0.6 µs each), so the programs are kept to a few hundred instructions.

mod common;

use common::*;
use iced_x86::code_asm::*;

const COM1: u16 = 0x3f8;
const DEBUG_EXIT: u16 = 0xf4;

/// Real-mode: print `msg` byte by byte with `out dx, al`, then exit with `code`.
fn real_hello(msg: &[u8], code: u8) -> Vec<u8> {
    // Two passes: the text follows the code, and `mov si, imm16` has a fixed size, so the
    // first pass tells the offset of the text (DS = CS: offsets are load-relative).
    let build = |text_offset: u32| {
        let mut a = CodeAssembler::new(16).unwrap();
        let mut next = a.create_label();
        a.mov(si, text_offset).unwrap();
        a.mov(cx, msg.len() as u32).unwrap();
        a.mov(dx, COM1 as u32).unwrap();
        a.set_label(&mut next).unwrap();
        a.lodsb().unwrap();
        a.out(dx, al).unwrap();
        a.dec(cx).unwrap();
        a.jnz(next).unwrap();
        a.mov(al, code as u32).unwrap();
        a.out(DEBUG_EXIT as u32, al).unwrap();
        a.hlt().unwrap();
        a.assemble(0).unwrap()
    };
    let len = build(0).len() as u32;
    let mut image = build(len);
    assert_eq!(image.len() as u32, len);
    image.extend_from_slice(msg);
    image
}

#[test]
fn real_mode_hello_over_serial() {
    if !kvm_available("real_mode_hello_over_serial") {
        return;
    }
    let out = run_raw("hello-real", &real_hello(b"Hello from real mode\n", 0), &[]);
    assert_eq!(
        stdout(&out),
        "Hello from real mode\n",
        "stderr: {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn long_mode_rep_outsb_hello() {
    if !kvm_available("long_mode_rep_outsb_hello") {
        return;
    }
    let msg = b"Hello from long mode via rep outsb\n";
    let mut a = CodeAssembler::new(64).unwrap();
    let mut text = a.create_label();
    a.lea(rsi, ptr(text)).unwrap();
    a.mov(ecx, msg.len() as u32).unwrap();
    a.mov(dx, COM1 as u32).unwrap();
    a.rep().outsb().unwrap();
    a.mov(al, 0u32).unwrap();
    a.out(DEBUG_EXIT as u32, al).unwrap();
    a.set_label(&mut text).unwrap();
    a.db(msg).unwrap();
    let load = 0x20_0000u64;
    let code = a.assemble(load).unwrap();
    let json = tmp_path("outsb-stats.json");
    let out = run_raw(
        "hello-long",
        &code,
        &[
            "--mode",
            "long",
            "--load-addr",
            "0x200000",
            "--stats-json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(stdout(&out).as_bytes(), msg, "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0));
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // Hardware-assisted KVM hands a whole string over in one exit; KVM's instruction
    // emulator (PVM hosts) exits once per element. Either way each byte arrives once.
    let com1_writes = stats["total"]["ports"]["0x03f8"]["writes"]["count"]
        .as_u64()
        .unwrap();
    assert!(
        com1_writes >= 1 && com1_writes <= msg.len() as u64,
        "{com1_writes} exits"
    );
}

#[test]
fn debug_exit_value_is_the_exit_status() {
    if !kvm_available("debug_exit_value_is_the_exit_status") {
        return;
    }
    for code in [42u8, 255] {
        let mut a = CodeAssembler::new(16).unwrap();
        a.mov(al, code as u32).unwrap();
        a.out(DEBUG_EXIT as u32, al).unwrap();
        let out = run_raw(&format!("exit{code}"), &a.assemble(0).unwrap(), &[]);
        assert_eq!(
            out.status.code(),
            Some(i32::from(code)),
            "stderr: {}",
            stderr(&out)
        );
    }
}

#[test]
fn four_vcpus_each_report_their_id() {
    if !kvm_available("four_vcpus_each_report_their_id") {
        return;
    }
    // Every vCPU starts here with DI = its index; it prints '0' + index and halts.
    // When all four have halted the VM ends with status 0.
    let mut a = CodeAssembler::new(16).unwrap();
    a.mov(ax, di).unwrap();
    a.add(al, b'0' as u32).unwrap();
    a.mov(dx, COM1 as u32).unwrap();
    a.out(dx, al).unwrap();
    a.hlt().unwrap();
    let json = tmp_path("smp-stats.json");
    let out = run_raw(
        "smp",
        &a.assemble(0).unwrap(),
        &["--cpus", "4", "--stats-json", json.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let mut ids: Vec<char> = stdout(&out).chars().collect();
    ids.sort();
    assert_eq!(ids, vec!['0', '1', '2', '3']);
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let vcpus = stats["vcpus"].as_array().unwrap();
    assert_eq!(vcpus.len(), 4);
    for v in vcpus {
        assert_eq!(v["reasons"]["hlt"]["count"], 1, "{v}");
        assert_eq!(v["reasons"]["io_out"]["count"], 1, "{v}");
    }
}

#[test]
fn long_mode_triple_fault_is_an_error() {
    if !kvm_available("long_mode_triple_fault_is_an_error") {
        return;
    }
    // No IDT: #UD cannot be delivered -> #DF -> triple fault.
    let mut a = CodeAssembler::new(64).unwrap();
    a.ud2().unwrap();
    let out = run_raw("triple", &a.assemble(0x10000).unwrap(), &["--mode", "long"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("triple fault"), "{err}");
    assert!(err.contains("rip"), "register dump expected: {err}");
    assert!(err.contains("code at"), "code bytes expected: {err}");
}

#[test]
fn unclaimed_port_reads_all_ones_and_is_counted() {
    if !kvm_available("unclaimed_port_reads_all_ones_and_is_counted") {
        return;
    }
    let mut a = CodeAssembler::new(16).unwrap();
    a.in_(al, 0x99u32).unwrap(); // nobody claims port 0x99
    a.out(0x99u32, al).unwrap(); // dropped
    a.out(DEBUG_EXIT as u32, al).unwrap(); // exit status = what was read
    let json = tmp_path("unclaimed.json");
    let out = run_raw(
        "unclaimed",
        &a.assemble(0).unwrap(),
        &["--stats", "--stats-json", json.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0xff), "stderr: {}", stderr(&out));
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(stats["total"]["unclaimed_port_reads"], 1);
    assert_eq!(stats["total"]["unclaimed_port_writes"], 1);
    assert_eq!(stats["total"]["ports"]["0x0099"]["claimed"], false);
    assert!(
        stderr(&out).contains("unclaimed"),
        "--stats table on stderr: {}",
        stderr(&out)
    );
}

#[test]
fn i8042_reset_ends_the_vm() {
    if !kvm_available("i8042_reset_ends_the_vm") {
        return;
    }
    let mut a = CodeAssembler::new(16).unwrap();
    a.mov(al, 0xfeu32).unwrap();
    a.out(0x64u32, al).unwrap();
    a.hlt().unwrap();
    let out = run_raw("reset", &a.assemble(0).unwrap(), &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("reset"), "{}", stderr(&out));
}

#[test]
fn memory_above_three_gib_boots() {
    if !kvm_available("memory_above_three_gib_boots") {
        return;
    }
    // 5 GiB: two memory slots around the 32-bit hole (lazy mmap, nothing is touched).
    let out = run_raw("bigmem", &real_hello(b"ok\n", 3), &["--mem", "5G"]);
    assert_eq!(stdout(&out), "ok\n", "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn readme_hello_guest_runs() {
    if !kvm_available("readme_hello_guest_runs") {
        return;
    }
    let image = concat!(env!("CARGO_MANIFEST_DIR"), "/../../guests/hello.bin");
    let out = ferrovm(&["run", "--raw", image], std::time::Duration::from_secs(60));
    assert_eq!(
        stdout(&out),
        "Hello from a ferrovm guest!\n",
        "stderr: {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(0));
}

/// Real-mode echo: polls the UART's line status, echoes every received byte, and exits
/// with status 5 on 'q'.
fn echo_guest() -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    let mut wait = a.create_label();
    let mut quit = a.create_label();
    a.set_label(&mut wait).unwrap();
    a.mov(dx, (COM1 + 5) as u32).unwrap(); // LSR
    a.in_(al, dx).unwrap();
    a.test(al, 1u32).unwrap(); // data ready?
    a.jz(wait).unwrap();
    a.mov(dx, COM1 as u32).unwrap();
    a.in_(al, dx).unwrap();
    a.cmp(al, b'q' as u32).unwrap();
    a.je(quit).unwrap();
    a.out(dx, al).unwrap();
    a.jmp(wait).unwrap();
    a.set_label(&mut quit).unwrap();
    a.mov(al, 5u32).unwrap();
    a.out(DEBUG_EXIT as u32, al).unwrap();
    a.assemble(0).unwrap()
}

#[test]
fn piped_stdin_reaches_the_guest() {
    if !kvm_available("piped_stdin_reaches_the_guest") {
        return;
    }
    use std::io::Write;
    use std::process::{Command, Stdio};
    let img = write_image("echo-pipe", &echo_guest());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
        .args(["run", "--raw", img.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // More than the UART FIFO holds, so host-side buffering and the drain event are used.
    let text: String = (0..40).map(|i| format!("line {i}\n")).collect();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    stdin.write_all(b"q").unwrap();
    drop(stdin); // EOF afterwards must not disturb the VM
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), text, "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn closed_stdin_does_not_stop_the_guest() {
    if !kvm_available("closed_stdin_does_not_stop_the_guest") {
        return;
    }
    // stdin is /dev/null (EOF at once); the guest still runs to its own end.
    let out = run_raw("eof", &real_hello(b"still here\n", 9), &[]);
    assert_eq!(stdout(&out), "still here\n");
    assert_eq!(out.status.code(), Some(9));
}

#[test]
fn terminal_raw_mode_ctrl_a_x_and_restore() {
    if !kvm_available("terminal_raw_mode_ctrl_a_x_and_restore") {
        return;
    }
    let img = write_image("echo-tty", &echo_guest());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pty_session.py");
    let out = std::process::Command::new("python3")
        .args([script, env!("CARGO_BIN_EXE_ferrovm"), img.to_str().unwrap()])
        .output()
        .expect("python3 is needed for the terminal test (Debian package python3)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pty session failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("echo: ok"), "{report}");
    assert!(report.contains("raw mode during run: yes"), "{report}");
    assert!(report.contains("exit status: 0"), "{report}");
    assert!(report.contains("terminal restored: yes"), "{report}");
}

#[test]
fn failing_vcpu_stops_spinning_siblings() {
    if !kvm_available("failing_vcpu_stops_spinning_siblings") {
        return;
    }
    // vCPU 0 triple-faults; vCPUs 1..3 spin forever. The VM must end with the error.
    let mut a = CodeAssembler::new(64).unwrap();
    let mut spin = a.create_label();
    a.test(rdi, rdi).unwrap();
    a.jnz(spin).unwrap();
    a.ud2().unwrap();
    a.set_label(&mut spin).unwrap();
    a.pause().unwrap();
    a.jmp(spin).unwrap();
    let out = run_raw(
        "spin-fault",
        &a.assemble(0x10000).unwrap(),
        &["--mode", "long", "--cpus", "4"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("vcpu0: guest triple fault"),
        "{}",
        stderr(&out)
    );
}
