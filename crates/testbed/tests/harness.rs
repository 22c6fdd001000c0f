//! Testbed mechanics that need QEMU but no L2: the cache and the timeout.

use std::time::{Duration, Instant};

use testbed::{Error, Job, Testbed};

#[test]
fn base_image_is_cached() {
    if testbed::skip_requested() && testbed::HostArtifacts::locate().is_err() {
        eprintln!(
            "\n*** SKIPPED base_image_is_cached: host artifacts missing (FERROVM_SKIP_KVM=1) ***\n"
        );
        return;
    }
    let root = std::env::temp_dir().join(format!("testbed-cache-test-{}", std::process::id()));
    let first = Testbed::with_cache_root(&root).unwrap_or_else(|e| panic!("{e}"));
    assert!(!first.base().cache_hit);
    let second = Testbed::with_cache_root(&root).unwrap_or_else(|e| panic!("{e}"));
    assert!(second.base().cache_hit);
    assert_eq!(first.base().vmlinux, second.base().vmlinux);
    let elf = std::fs::read(&second.base().vmlinux).unwrap();
    let info = kernel::ElfInfo::parse(&elf).unwrap();
    assert!(info.pvh_entry.is_some(), "L1 vmlinux needs the PVH note");
    eprintln!(
        "cache miss {:?}, hit {:?}",
        first.prepare_time(),
        second.prepare_time()
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn job_timeout_kills_qemu() {
    let tb = testbed::testbed_or_skip!();
    let t = Instant::now();
    let err = tb
        .run(&Job::new("sleep 600").timeout(Duration::from_secs(2)))
        .expect_err("must time out");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn bad_job_paths_are_rejected() {
    let tb = testbed::testbed_or_skip!();
    let job = Job::new("true").file(testbed::JobFile::bytes(
        b"x".to_vec(),
        "relative/path",
        0o644,
    ));
    assert!(matches!(tb.run(&job), Err(Error::BadJob(_))));
    let job = Job::new("true").file(testbed::JobFile::bytes(b"x".to_vec(), "/init", 0o755));
    assert!(matches!(tb.run(&job), Err(Error::BadJob(_))));
}
