//! The boot benchmark helper, one iteration of QEMU microvm (one L1 boot).

use testbed::{run_boot_bench, BenchVmm, BootBench};

#[test]
fn bench_measures_qemu_l2_boot() {
    let tb = testbed::testbed_or_skip!();
    let bench = BootBench::new(vec![BenchVmm::qemu_microvm(&tb).expect("QEMU files")], 1);
    let report = run_boot_bench(&tb, &bench).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", report.summary());
    let r = &report.results[0];
    assert_eq!(r.samples.len(), 1);
    let s = r.samples[0];
    assert_eq!(
        s.exit_code,
        0,
        "{}",
        testbed::console_tail(&report.output.console)
    );
    let to_marker = s.to_marker.expect("marker seen");
    assert!(to_marker <= s.to_exit);
}
