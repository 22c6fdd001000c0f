//! Bad input from the user: one-line messages naming the thing and the cause, non-zero exit
//! status, never a panic.

mod common;

use common::*;
use std::time::Duration;

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = ferrovm(args, Duration::from_secs(30));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected {n:?} in: {err}");
    }
}

#[test]
fn missing_image() {
    fails_with(
        &["run", "--raw", "/nonexistent/guest.bin"],
        &["/nonexistent/guest.bin", "No such file"],
    );
}

#[test]
fn directory_as_image() {
    fails_with(&["run", "--raw", "/tmp"], &["/tmp", "directory"]);
}

#[test]
fn empty_image() {
    let img = write_image("empty", b"");
    fails_with(&["run", "--raw", img.to_str().unwrap()], &["empty"]);
}

#[test]
fn image_larger_than_memory() {
    let img = write_image("big", &vec![0x90u8; 3 << 20]);
    fails_with(
        &[
            "run",
            "--raw",
            img.to_str().unwrap(),
            "--mem",
            "2M",
            "--mode",
            "long",
        ],
        &["does not fit", "2 MiB"],
    );
}

#[test]
fn real_mode_image_beyond_first_megabyte() {
    let img = write_image("hi", &[0xf4]);
    fails_with(
        &[
            "run",
            "--raw",
            img.to_str().unwrap(),
            "--load-addr",
            "0x200000",
        ],
        &["--mode real", "1 MiB"],
    );
}

#[test]
fn long_mode_image_over_page_tables() {
    let img = write_image("pt", &[0xf4]);
    fails_with(
        &[
            "run",
            "--raw",
            img.to_str().unwrap(),
            "--mode",
            "long",
            "--load-addr",
            "0x9000",
        ],
        &["overlaps", "page tables"],
    );
}

#[test]
fn bad_sizes_and_counts() {
    let img = write_image("x", &[0xf4]);
    let p = img.to_str().unwrap();
    fails_with(
        &["run", "--raw", p, "--mem", "12Q"],
        &["invalid size", "12Q"],
    );
    fails_with(&["run", "--raw", p, "--mem", "100K"], &["too small"]);
    fails_with(
        &["run", "--raw", p, "--cpus", "0"],
        &["--cpus must be at least 1"],
    );
}

#[test]
fn missing_kvm_device() {
    let img = write_image("k", &[0xf4]);
    fails_with(
        &[
            "run",
            "--raw",
            img.to_str().unwrap(),
            "--kvm-device",
            "/nonexistent/kvm",
        ],
        &["cannot open /nonexistent/kvm", "No such file"],
    );
    fails_with(
        &["kvm-info", "--kvm-device", "/nonexistent/kvm"],
        &["/nonexistent/kvm"],
    );
    fails_with(
        &["kvm-info", "--kvm-device", "/dev/null"],
        &["not a KVM device"],
    );
}

#[test]
fn cpus_above_kvm_maximum() {
    if !kvm_available("cpus_above_kvm_maximum") {
        return;
    }
    let img = write_image("c", &[0xf4]);
    fails_with(
        &["run", "--raw", img.to_str().unwrap(), "--cpus", "100000"],
        &["KVM maximum"],
    );
}

#[test]
fn kvm_info_reports_capabilities() {
    if !kvm_available("kvm_info_reports_capabilities") {
        return;
    }
    let out = ferrovm(&["kvm-info", "--json"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["api_version"], 12);
    assert!(v["max_vcpus"].as_u64().unwrap() >= 1);
    for k in [
        "irqchip",
        "ioeventfd",
        "irqfd",
        "user_memory",
        "memory_slots",
        "hardware_virtualization",
    ] {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
    let text = ferrovm(&["kvm-info"], Duration::from_secs(10));
    assert!(stdout(&text).contains("hardware virtualization"));
}

#[test]
fn bad_kernels_are_clear_errors() {
    let text = write_image("not-a-kernel", b"hello, I am not a kernel\n");
    fails_with(
        &["run", "--kernel", text.to_str().unwrap()],
        &["kernel", text.to_str().unwrap()],
    );
    // A bzImage header cut short after the boot sector.
    let mut truncated = vec![0u8; 0x250];
    truncated[0x1fe] = 0x55;
    truncated[0x1ff] = 0xaa;
    truncated[0x202..0x206].copy_from_slice(b"HdrS");
    let t = write_image("truncated-bz", &truncated);
    fails_with(&["run", "--kernel", t.to_str().unwrap()], &["kernel"]);
    fails_with(
        &["run", "--kernel", "/nonexistent/vmlinuz"],
        &["/nonexistent/vmlinuz"],
    );
    fails_with(&["run", "--kernel", "/tmp"], &["directory"]);
}

#[test]
fn empty_initrd_and_bad_cmdline() {
    let Some(kernel) = std::fs::read_dir("/boot").ok().and_then(|d| {
        d.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
    }) else {
        panic!("no /boot/vmlinuz-*: the linux-image-amd64 package is part of the set-up");
    };
    let empty = write_image("empty-initrd", b"");
    fails_with(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            empty.to_str().unwrap(),
        ],
        &["initrd", "empty"],
    );
    fails_with(
        &["run", "--raw", "x", "--initrd", "y"],
        &["--initrd needs --kernel"],
    );
}

/// `ferrovm run --kernel <any file> ARGS`: drive errors come before the kernel is used.
fn drive_fails_with(drive_args: &[&str], needles: &[&str]) {
    let kernel = write_image("drive-kernel", b"not a kernel");
    let mut args = vec!["run", "--kernel", kernel.to_str().unwrap()];
    args.extend_from_slice(drive_args);
    fails_with(&args, needles);
}

#[test]
fn drive_errors_come_before_the_guest_starts() {
    let odd = write_image("odd-size.img", &[0u8; 1000]);
    let ok = write_image("drive-ok.img", &[0u8; 4096]);
    let (odd, ok) = (odd.to_str().unwrap(), ok.to_str().unwrap());
    drive_fails_with(
        &["--drive", "path=/nonexistent/disk.img"],
        &["drive 0", "/nonexistent/disk.img", "No such file"],
    );
    drive_fails_with(&["--drive", "path=/tmp"], &["drive 0", "/tmp", "directory"]);
    drive_fails_with(
        &[
            "--drive",
            &format!("path={ok},format=raw"),
            "--drive",
            &format!("path={odd},format=raw"),
        ],
        &["drive 1", "odd-size.img", "not a multiple of 512"],
    );
    drive_fails_with(
        &[
            "--drive",
            &format!("{ok},format=raw"),
            "--drive",
            &format!("{ok},format=raw,readonly=on"),
        ],
        &["same file", "not both readonly=on"],
    );
    drive_fails_with(
        &["--drive", &format!("{ok},format=qcow2")],
        &["drive 0", "drive-ok.img", "not a qcow2 image"],
    );
    drive_fails_with(
        &["--drive", &format!("{ok},cache=maybe")],
        &["--drive", "expected writeback or none"],
    );
    drive_fails_with(
        &["--drive", &format!("{ok},size=1G")],
        &["unknown drive option \"size\""],
    );
}

#[test]
fn drive_needs_a_kernel() {
    let img = write_image("drive-raw-guest", &[0xf4]);
    let ok = write_image("drive-ok2.img", &[0u8; 4096]);
    fails_with(
        &[
            "run",
            "--raw",
            img.to_str().unwrap(),
            "--drive",
            ok.to_str().unwrap(),
        ],
        &["--drive needs --kernel"],
    );
}

#[test]
fn bad_device_specs_are_one_line_each() {
    let img = write_image("dev", &[0xf4]);
    let p = img.to_str().unwrap();
    fails_with(
        &["run", "--kernel", p, "--net", "tap="],
        &["1 to 15 characters"],
    );
    fails_with(
        &["run", "--kernel", p, "--net", "tap=t0,speed=1"],
        &["unknown net option"],
    );
    fails_with(
        &["run", "--kernel", p, "--net", "user,vhost=on"],
        &["needs a tap"],
    );
    fails_with(
        &["run", "--kernel", p, "--vsock", "cid=2,uds=/tmp/x"],
        &["reserved"],
    );
    fails_with(&["run", "--kernel", p, "--vsock", "cid=3"], &["needs uds"]);
    fails_with(
        &["run", "--kernel", p, "--balloon", "size=lots"],
        &["in MiB"],
    );
    fails_with(&["run", "--kernel", p, "--drive", "x,bw=0"], &["above 0"]);
    // Before the guest starts (and before the kernel is even read): passt is missing, or
    // vhost-net is asked to do what only the userspace path can.
    std::env::set_var("FERROVM_PASST", "/nonexistent/passt");
    fails_with(
        &["run", "--kernel", p, "--net", "user"],
        &[
            "eth0",
            "passt, which is not installed",
            "apt-get install passt",
        ],
    );
    fails_with(
        &["run", "--kernel", p, "--net", "tap=t0,vhost=on,tx_bw=1M"],
        &["eth0", "drop vhost=on or the limits"],
    );
    for flag in [
        ["--net", "tap=t0"],
        ["--vsock", "cid=3,uds=/tmp/x"],
        ["--balloon", "size=1"],
    ] {
        fails_with(&["run", "--raw", p, flag[0], flag[1]], &["needs --kernel"]);
    }
}
