//! Every fuzz target, with the stable toolchain, in the test suite: its checked-in corpus
//! (`fuzz/corpus/<target>/`: the seeds and every input a fuzzing run turned into a
//! regression) and the built-in seeds, then inputs mutated from them, for a bounded time
//! per target (`FERROVM_FUZZ_SECS`, 2 s by default; at most `FERROVM_FUZZ_INPUTS`, 20000 by
//! default). An input fails the test if the target panics, if it runs longer than
//! [`INPUT_TIME_LIMIT`] (a hang: the process aborts naming the target and the input
//! file), or if the Rust heap grows by more than [`ALLOC_LIMIT`] while it runs (what C
//! libraries allocate themselves, liblzma's dictionary say, is bounded under libFuzzer by
//! `-malloc_limit_mb` in `scripts/fuzz.sh`, and by unit tests where fuzzing found it). A failing input
//! is written to `target/fuzz-failures/` to be replayed (`FERROVM_FUZZ_REPLAY=FILE` runs
//! that one input of `FERROVM_FUZZ_TARGET`).
//!
//! `scripts/fuzz.sh` runs the same targets under libFuzzer for longer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuzz_targets::{mutate, SplitMix, Target, TARGETS};

/// The heap a target may grow by while one input runs.
const ALLOC_LIMIT: usize = 256 << 20;
/// How long one input may run before it counts as a hang.
const INPUT_TIME_LIMIT: Duration = Duration::from_secs(20);
/// The longest input generated.
const MAX_LEN: usize = 4096;

/// The system allocator, counting the bytes live and the most live since a reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method hands the request to the system allocator unchanged; the counters
// are only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `layout` are System's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from System with `layout` (every allocation here is System's).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for dealloc; System keeps the block on failure.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The tests of this file measure the whole process's heap: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The checked-in corpus of `target` and the built-in seeds.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let dir = repo().join("fuzz/corpus").join(target);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if let Ok(b) = std::fs::read(&p) {
                out.push((p.display().to_string(), b));
            }
        }
    }
    for (t, name, b) in fuzz_targets::seeds::all() {
        if t == target {
            out.push((format!("seeds::all {name}"), b));
        }
    }
    out
}

/// What the watchdog knows of the input running now.
struct Running {
    what: Mutex<String>,
    since_ms: AtomicU64,
    busy: AtomicBool,
}

/// Aborts the process when an input runs longer than `limit`: a hang must fail the suite,
/// not stall it.
fn watchdog(limit: Duration) -> (Arc<Running>, Arc<AtomicBool>) {
    let r = Arc::new(Running {
        what: Mutex::new(String::new()),
        since_ms: AtomicU64::new(0),
        busy: AtomicBool::new(false),
    });
    let done = Arc::new(AtomicBool::new(false));
    let (wr, wd) = (r.clone(), done.clone());
    let epoch = Instant::now();
    std::thread::spawn(move || {
        while !wd.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if wr.busy.load(Ordering::SeqCst) {
                let since = Duration::from_millis(wr.since_ms.load(Ordering::SeqCst));
                if epoch.elapsed().saturating_sub(since) > limit {
                    let what = wr.what.lock().map(|w| w.clone()).unwrap_or_default();
                    eprintln!("HANG: {what} ran longer than {limit:?}; aborting");
                    std::process::abort();
                }
            }
        }
    });
    (r, done)
}

/// Where an input of `target` is kept while it runs and after it failed.
fn failure_path(target: &str, input: &[u8]) -> PathBuf {
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    for &b in input {
        sum = (sum ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    repo()
        .join("target/fuzz-failures")
        .join(format!("{target}-{sum:016x}"))
}

/// Runs `f` on one input under the bounds. Err: what went wrong.
fn run_one(
    target: &str,
    f: Target,
    input: &[u8],
    label: &str,
    running: &Running,
    epoch: Instant,
) -> Result<(), String> {
    let path = failure_path(target, input);
    *running.what.lock().unwrap() = format!("{target} on {label} (saved as {})", path.display());
    // Written before it runs, so that a hang leaves the input behind; removed if it passes.
    let _ = std::fs::create_dir_all(path.parent().unwrap());
    let _ = std::fs::write(&path, input);
    running
        .since_ms
        .store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
    running.busy.store(true, Ordering::SeqCst);
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let result = std::panic::catch_unwind(|| f(input));
    let peak = PEAK.load(Ordering::SeqCst);
    running.busy.store(false, Ordering::SeqCst);
    let verdict = match result {
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(format!("{target} panicked on {label}: {msg}"))
        }
        Ok(()) if peak.saturating_sub(base) > ALLOC_LIMIT => Err(format!(
            "{target} on {label}: the heap grew by {} MiB (bound {} MiB)",
            (peak - base) >> 20,
            ALLOC_LIMIT >> 20
        )),
        Ok(()) => Ok(()),
    };
    match verdict {
        Ok(()) => {
            let _ = std::fs::remove_file(&path);
            Ok(())
        }
        Err(e) => Err(format!("{e}; input saved as {}", path.display())),
    }
}

/// Runs every target in `targets` over its corpus and mutations for `secs` each; returns
/// the executions per target, or the first failure.
fn campaign(
    targets: &[(&'static str, Target)],
    secs: f64,
    max_inputs: u64,
) -> Result<Vec<(&'static str, u64, usize)>, String> {
    let (running, done) = watchdog(INPUT_TIME_LIMIT);
    let epoch = Instant::now();
    let mut stats = Vec::new();
    let result = (|| {
        for &(name, f) in targets {
            let seeds = corpus(name);
            let started = Instant::now();
            let mut execs = 0u64;
            for (label, input) in &seeds {
                run_one(name, f, input, label, &running, epoch)?;
                execs += 1;
            }
            let mut rng =
                SplitMix(0x5eed ^ name.len() as u64 ^ (u64::from(name.as_bytes()[0]) << 8));
            let budget = Duration::from_secs_f64(secs);
            let mut n = 0u64;
            while started.elapsed() < budget && n < max_inputs {
                let mut input = if seeds.is_empty() || rng.below(8) == 0 {
                    let n = rng.below(MAX_LEN as u64) as usize;
                    rng.bytes(n)
                } else {
                    seeds[rng.below(seeds.len() as u64) as usize].1.clone()
                };
                let other = if seeds.is_empty() {
                    Vec::new()
                } else {
                    seeds[rng.below(seeds.len() as u64) as usize].1.clone()
                };
                mutate(&mut rng, &mut input, &other, MAX_LEN);
                run_one(name, f, &input, &format!("mutation {n}"), &running, epoch)?;
                n += 1;
                execs += 1;
            }
            stats.push((name, execs, seeds.len()));
            eprintln!(
                "fuzz smoke: {name}: {execs} inputs ({} from the corpus) in {:.1} s",
                seeds.len(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    })();
    done.store(true, Ordering::SeqCst);
    result.map(|()| stats)
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if let (Ok(target), Ok(file)) = (
        std::env::var("FERROVM_FUZZ_TARGET"),
        std::env::var("FERROVM_FUZZ_REPLAY"),
    ) {
        let &(name, f) = TARGETS
            .iter()
            .find(|(n, _)| *n == target)
            .unwrap_or_else(|| panic!("no target {target}"));
        let input = std::fs::read(&file).expect("replay input");
        f(&input);
        eprintln!("{name}: {file} replayed without a failure");
        return;
    }
    let secs = env_num("FERROVM_FUZZ_SECS", 2) as f64;
    let max = env_num("FERROVM_FUZZ_INPUTS", 20_000);
    let t0 = Instant::now();
    let stats = campaign(TARGETS, secs, max).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats.len(), TARGETS.len());
    for (name, execs, seeds) in &stats {
        assert!(
            *seeds > 0,
            "{name} has no seed corpus (fuzz/corpus/{name}/)"
        );
        assert!(*execs > *seeds as u64, "{name} ran no generated input");
    }
    eprintln!(
        "fuzz smoke: {} targets in {:.1} s",
        stats.len(),
        t0.elapsed().as_secs_f64()
    );
}

/// The bounds catch what they are for: a panic and an allocation beyond the bound (a
/// harness that cannot fail would make the test above meaningless).
#[test]
fn the_harness_reports_panics_and_allocations_beyond_the_bound() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    fn panics(data: &[u8]) {
        assert!(data.first() != Some(&0x42), "found it");
    }
    fn hogs(data: &[u8]) {
        if data.first() == Some(&0x42) {
            let v = vec![1u8; ALLOC_LIMIT + (1 << 20)];
            std::hint::black_box(&v);
        }
    }
    fn calm(data: &[u8]) {
        std::hint::black_box(data.to_vec());
    }
    let (running, done) = watchdog(INPUT_TIME_LIMIT);
    let epoch = Instant::now();
    let e = run_one("harness-panics", panics, &[0x42], "x", &running, epoch).unwrap_err();
    assert!(e.contains("panicked") && e.contains("found it"), "{e}");
    let e = run_one("harness-hogs", hogs, &[0x42], "x", &running, epoch).unwrap_err();
    assert!(e.contains("heap grew"), "{e}");
    run_one("harness-calm", calm, &[0x42; 100], "x", &running, epoch).unwrap();
    run_one("harness-hogs", hogs, &[0], "x", &running, epoch).unwrap();
    done.store(true, Ordering::SeqCst);
    for t in ["harness-panics", "harness-hogs"] {
        let _ = std::fs::remove_file(failure_path(t, &[0x42]));
    }
}
