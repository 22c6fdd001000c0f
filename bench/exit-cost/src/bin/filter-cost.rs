//! What ferrovm's vCPU seccomp filter adds to each `KVM_RUN`: the time of an `ioctl`
//! with the `KVM_RUN` request (on a closed descriptor, so the kernel answers EBADF at
//! once and only the system-call path and the filter are timed) on a thread under the
//! vCPU filter, against the same call on an unfiltered thread, in alternating rounds of
//! the same run. A vCPU makes one `KVM_RUN` per exit, so the difference over the
//! exit cost (`exit-cost` measures it: pass its ferrovm µs/exit) is the filters' share
//! of an exit. Target: under 2 %.
//!
//! Usage: filter-cost [EXIT_US] [ROUNDS] [CALLS]   (defaults 15.0, 11, 200000)

use std::time::Instant;

const KVM_RUN: libc::c_ulong = 0xae80;

/// Nanoseconds per call over `calls` ioctls.
fn time_calls(calls: u32) -> f64 {
    let t = Instant::now();
    for _ in 0..calls {
        // SAFETY: ioctl on descriptor -1 with no argument pointer: the kernel only
        // checks the descriptor (EBADF); nothing is read or written.
        let r = unsafe { libc::ioctl(-1, KVM_RUN, 0) };
        std::hint::black_box(r);
    }
    t.elapsed().as_nanos() as f64 / f64::from(calls)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn on_thread(filtered: bool, calls: u32) -> f64 {
    let f = move || time_calls(calls);
    let h = if filtered {
        seccomp::thread("vcpu0", seccomp::ThreadKind::Vcpu(0)).spawn(f)
    } else {
        std::thread::Builder::new().name("plain".into()).spawn(f)
    };
    h.expect("start a thread").join().expect("timing thread")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let exit_us: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(15.0);
    let rounds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(11);
    let calls: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    if let Err(e) = seccomp::configure(seccomp::Mode::On, seccomp::Placement::default()) {
        eprintln!("filter-cost: cannot set up the filters: {e}");
        std::process::exit(2);
    }
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // Alternate which goes first.
        if r % 2 == 0 {
            on.push(on_thread(true, calls));
            off.push(on_thread(false, calls));
        } else {
            off.push(on_thread(false, calls));
            on.push(on_thread(true, calls));
        }
    }
    let (on, off) = (median(on), median(off));
    let added = (on - off).max(0.0);
    let share = added / (exit_us * 1000.0);
    println!("ioctl(KVM_RUN) under the vCPU filter: {on:.1} ns, unfiltered: {off:.1} ns (medians of {rounds} x {calls})");
    println!("the filter adds {added:.1} ns per KVM_RUN = {:.3} % of a {exit_us} µs exit (target < 2 %: {})",
        share * 100.0,
        if share < 0.02 { "met" } else { "NOT met" });
}
