//! Each thread kind, under its filter, makes a call outside its list: the process must
//! end with status 159 and the message naming the thread and the call. Each case runs in
//! a child process (this test binary again, with one test selected and an environment
//! variable saying it is the child), since a filter cannot be taken off.

use std::process::Command;

use seccomp::{Mode, Placement, ThreadKind};

const CHILD_ENV: &str = "FERROVM_SECCOMP_TEST_CHILD";

/// A call no list allows.
fn forbidden_call() {
    // SAFETY: ptrace with a request that does not exist takes no pointers and fails with
    // EIO when allowed (log mode); the filter stops it first otherwise.
    unsafe { libc::syscall(libc::SYS_ptrace, 0x7fff_ffff_i64, 0, 0, 0) };
}

/// What the child does: filters a thread of `kind` and makes `call` on it.
fn child(kind: ThreadKind, mode: Mode, call: fn()) {
    seccomp::configure(mode, Placement::NONE).unwrap();
    if kind == ThreadKind::Main {
        seccomp::apply(ThreadKind::Main).unwrap();
        call();
    } else {
        seccomp::spawn("victim".into(), kind, move || {
            // Something the list allows goes through first.
            eprintln!("child thread runs");
            call();
        })
        .unwrap()
        .join()
        .unwrap();
    }
    eprintln!("child survived");
}

/// Runs test `test` as a child and returns (exit status, stderr).
fn run_child(test: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dies(test: &str, kind: ThreadKind, thread: &str, nr: i64, name: &str, call: fn()) {
    if std::env::var_os(CHILD_ENV).is_some() {
        child(kind, Mode::On, call);
        return;
    }
    let (code, stderr) = run_child(test);
    let want = format!("ferrovm: seccomp: thread {thread} made forbidden syscall {nr} ({name})");
    assert!(
        stderr.contains(&want),
        "{kind:?}: no `{want}` in:\n{stderr}"
    );
    assert_eq!(
        code,
        Some(seccomp::SIGSYS_EXIT_STATUS),
        "{kind:?}:\n{stderr}"
    );
    assert!(!stderr.contains("child survived"), "{stderr}");
    if kind != ThreadKind::Main {
        assert!(stderr.contains("child thread runs"), "{stderr}");
    }
}

macro_rules! forbidden {
    ($test:ident, $kind:expr) => {
        #[test]
        fn $test() {
            dies(
                stringify!($test),
                $kind,
                if $kind == ThreadKind::Main {
                    stringify!($test)
                } else {
                    "victim"
                },
                libc::SYS_ptrace,
                "ptrace",
                forbidden_call,
            );
        }
    };
}

// The main thread of a test is named after the test.
forbidden!(main, ThreadKind::Main);
forbidden!(vcpu, ThreadKind::Vcpu(0));
forbidden!(api, ThreadKind::Api);
forbidden!(stdin, ThreadKind::Stdin);
forbidden!(passt_log, ThreadKind::PasstLog);
forbidden!(block, ThreadKind::Block);
forbidden!(block_uring, ThreadKind::BlockUring);
forbidden!(net, ThreadKind::Net);
forbidden!(vhost_net, ThreadKind::VhostNet);
forbidden!(vsock, ThreadKind::Vsock);
forbidden!(balloon, ThreadKind::Balloon);
forbidden!(rng, ThreadKind::Rng);
forbidden!(any_worker, ThreadKind::AnyWorker);

/// An ioctl outside a kind's requests: a vCPU creating a VM.
fn create_vm_ioctl() {
    // SAFETY: ioctl on fd -1 with an integer argument; the filter stops it first.
    unsafe { libc::ioctl(-1, seccomp::rules::ioctls::KVM_CREATE_VM as _, 0) };
}

/// A call another kind may make: a block worker opening a socket.
fn socket_call() {
    // SAFETY: socket() takes no pointers; the filter stops it first.
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
}

#[test]
fn vcpu_ioctl_outside_its_requests() {
    dies(
        "vcpu_ioctl_outside_its_requests",
        ThreadKind::Vcpu(0),
        "victim",
        libc::SYS_ioctl,
        "ioctl",
        create_vm_ioctl,
    );
}

#[test]
fn block_worker_socket() {
    dies(
        "block_worker_socket",
        ThreadKind::Block,
        "victim",
        libc::SYS_socket,
        "socket",
        socket_call,
    );
}

/// A thread started by a filtered thread gets its own list, not the starter's on top:
/// a block worker started from a vCPU thread may still fsync... and a vCPU started from
/// a block worker may not call what neither allows.
#[test]
fn threads_started_by_filtered_threads_get_their_own_list() {
    if std::env::var_os(CHILD_ENV).is_some() {
        seccomp::configure(Mode::On, Placement::NONE).unwrap();
        seccomp::spawn("outer".into(), ThreadKind::Rng, || {
            // An rng worker may not fsync; a block worker it starts may.
            seccomp::spawn("inner".into(), ThreadKind::Block, || {
                // SAFETY: fsync of stderr; any result will do.
                let r = unsafe { libc::fsync(2) };
                eprintln!("inner fsync returned {r}");
                forbidden_call();
            })
            .unwrap()
            .join()
            .unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
        return;
    }
    let (code, stderr) = run_child("threads_started_by_filtered_threads_get_their_own_list");
    assert!(stderr.contains("inner fsync returned"), "{stderr}");
    assert!(
        stderr.contains("ferrovm: seccomp: thread inner made forbidden syscall 101 (ptrace)"),
        "{stderr}"
    );
    assert_eq!(code, Some(seccomp::SIGSYS_EXIT_STATUS), "{stderr}");
}

/// In log mode the call goes through and the process lives on.
#[test]
fn log_mode_lets_the_call_through() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child(ThreadKind::Rng, Mode::Log, forbidden_call);
        return;
    }
    let (code, stderr) = run_child("log_mode_lets_the_call_through");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("child survived"), "{stderr}");
    assert!(!stderr.contains("forbidden syscall"), "{stderr}");
}
