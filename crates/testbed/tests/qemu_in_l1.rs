//! Proof that the nested testbed gives a working KVM: inside L1, QEMU microvm with
//! `-accel kvm` boots the Debian kernel and a busybox initramfs to L2 user space.

use std::time::Duration;

use testbed::{default_l2_init, qemu_l2_command, Job, L2_INITRD, L2_KERNEL, L2_MARKER, L2_MEM_MIB};

#[test]
fn qemu_boots_l2_linux_inside_l1() {
    let tb = testbed::testbed_or_skip!();
    let script = format!(
        "timeout -s KILL 90 {}\nrc=$?\necho \"l2-qemu-exit=$rc\"\nexit $rc\n",
        qemu_l2_command(L2_KERNEL, L2_INITRD, L2_MEM_MIB)
    );
    let job = Job::new(script)
        .files(tb.qemu_files().expect("QEMU files"))
        .files(
            tb.l2_guest_files(&default_l2_init(), false)
                .expect("L2 files"),
        )
        .timeout(Duration::from_secs(150));
    let out = tb.run(&job).unwrap_or_else(|e| panic!("{e}"));
    let console = out.job_console();
    assert!(
        out.l1_kvm,
        "L1 has no /dev/kvm:\n{}",
        testbed::console_tail(&out.console)
    );
    assert!(
        console.contains(L2_MARKER),
        "L2 never reached user space:\n{}",
        testbed::console_tail(&out.console)
    );
    assert!(console.contains("l2-qemu-exit=0"), "{console}");
    assert_eq!(out.status, 0, "{console}");
    eprintln!(
        "L1 ready after {:.1} s; whole L1+L2 run {:.1} s",
        out.l1_boot.unwrap_or_default().as_secs_f64(),
        out.wall.as_secs_f64()
    );
}
