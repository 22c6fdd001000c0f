//! Where a VMM's resident memory is: `/proc/PID/smaps` read and every mapping put in one
//! class (guest RAM, text and data of the binary and its libraries, heap, main and thread
//! stacks, glibc malloc arenas, other anonymous memory, kernel objects such as the KVM
//! vCPU run areas). Only std, so the probe that runs in L1 stays small.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One mapping of `/proc/PID/smaps`, sizes in KiB.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mapping {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// `rwxp` permissions as printed.
    pub perms: String,
    /// The path or pseudo-name (`[heap]`, `anon_inode:kvm-vcpu:0` ...); empty when anonymous.
    pub name: String,
    /// `Rss:`.
    pub rss: u64,
    /// `Pss:`.
    pub pss: u64,
    /// `Private_Clean:` + `Private_Dirty:`.
    pub private: u64,
    /// `Anonymous:`.
    pub anonymous: u64,
    /// `AnonHugePages:`.
    pub anon_huge: u64,
}

impl Mapping {
    /// Size of the mapping in KiB.
    pub fn size_kib(&self) -> u64 {
        (self.end - self.start) / 1024
    }

    fn is_file(&self) -> bool {
        self.name.starts_with('/') && !self.name.starts_with("/memfd:")
            || self.name.starts_with("/memfd:") && !self.perms.starts_with("rw")
    }

    fn is_anonymous_like(&self) -> bool {
        self.name.is_empty() || self.name.starts_with("/memfd:") || self.name == "/dev/zero"
    }
}

/// Parses the text of `/proc/PID/smaps`.
pub fn parse(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(m) = parse_header(line) {
            out.push(m);
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kib = || {
            value
                .trim()
                .strip_suffix("kB")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        match key {
            "Rss" => cur.rss = kib(),
            "Pss" => cur.pss = kib(),
            "Private_Clean" | "Private_Dirty" => cur.private += kib(),
            "Anonymous" => cur.anonymous = kib(),
            "AnonHugePages" => cur.anon_huge = kib(),
            _ => {}
        }
    }
    out
}

/// `start-end perms offset dev inode [name]`, or `None` for a field line.
fn parse_header(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let (s, e) = range.split_once('-')?;
    let start = u64::from_str_radix(s, 16).ok()?;
    let end = u64::from_str_radix(e, 16).ok()?;
    let perms = it.next()?;
    if perms.len() != 4 {
        return None;
    }
    let _offset = it.next()?;
    let dev = it.next()?;
    if !dev.contains(':') {
        return None;
    }
    let _inode = it.next()?;
    let name = it.next().unwrap_or("").trim().to_string();
    Some(Mapping {
        start,
        end,
        perms: perms.to_string(),
        name,
        ..Mapping::default()
    })
}

/// What a mapping is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Guest RAM (the large anonymous or memfd mappings the guest's memory lives in).
    GuestRam,
    /// The VMM's own executable (text, read-only data, relocated data, .data/.bss).
    Binary,
    /// Shared libraries and the dynamic loader.
    Libraries,
    /// Other file mappings (a kernel image, an initrd, a disk image ...).
    OtherFiles,
    /// `[heap]` (brk: the main malloc arena).
    Heap,
    /// The main thread's `[stack]`.
    MainStack,
    /// Other threads' stacks.
    ThreadStacks,
    /// glibc malloc arenas of other threads (64 MiB-aligned reservations).
    Arenas,
    /// Other anonymous memory (large allocations served by mmap, sigaltstacks, TLS ...).
    Anonymous,
    /// Kernel objects mapped in: KVM vCPU run areas, io_uring rings, vDSO.
    Kernel,
}

impl Class {
    /// Every class, in report order.
    pub const ALL: [Class; 10] = [
        Class::GuestRam,
        Class::Binary,
        Class::Libraries,
        Class::OtherFiles,
        Class::Heap,
        Class::MainStack,
        Class::ThreadStacks,
        Class::Arenas,
        Class::Anonymous,
        Class::Kernel,
    ];

    /// Short name used on probe lines and in reports.
    pub fn key(self) -> &'static str {
        match self {
            Class::GuestRam => "guest_ram",
            Class::Binary => "binary",
            Class::Libraries => "libs",
            Class::OtherFiles => "files",
            Class::Heap => "heap",
            Class::MainStack => "stack",
            Class::ThreadStacks => "thread_stacks",
            Class::Arenas => "arenas",
            Class::Anonymous => "anon",
            Class::Kernel => "kernel",
        }
    }

    /// The class of a probe-line key.
    pub fn from_key(k: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.key() == k)
    }
}

/// glibc reserves every non-main arena as a 64 MiB-aligned, 64 MiB mapping.
const ARENA_ALIGN: u64 = 64 << 20;

/// What the classifier needs to know besides the mappings.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Guest RAM in bytes (0: nothing is guest RAM).
    pub guest_mem: u64,
    /// The executable's path (`/proc/PID/exe`).
    pub exe: String,
    /// Stack pointers of the threads other than the main one (`/proc/PID/task/*/syscall`).
    pub thread_sps: Vec<u64>,
}

/// Classifies `maps` (in address order, as smaps lists them).
pub fn classify(maps: &[Mapping], ctx: &Context) -> Vec<Class> {
    // Guest RAM: anonymous-like mappings of at least 3/4 of guest memory (guest RAM
    // above 3 GiB comes in two regions, each still larger than any other mapping);
    // smaller guests have one region of their full size.
    let big = |m: &Mapping| {
        ctx.guest_mem > 0
            && m.is_anonymous_like()
            && (m.size_kib() * 1024 >= ctx.guest_mem * 3 / 4
                || ctx.guest_mem > (3 << 30) && m.size_kib() * 1024 >= 512 << 20)
    };
    let stack_of = |m: &Mapping| ctx.thread_sps.iter().any(|&sp| sp >= m.start && sp < m.end);
    maps.iter()
        .enumerate()
        .map(|(i, m)| {
            let prev = i.checked_sub(1).and_then(|j| maps.get(j));
            let next = maps.get(i + 1);
            if big(m) {
                Class::GuestRam
            } else if m.name == "[heap]" {
                Class::Heap
            } else if m.name == "[stack]" {
                Class::MainStack
            } else if m.name.starts_with("anon_inode:")
                || m.name == "[vdso]"
                || m.name == "[vvar]"
                || m.name == "[vsyscall]"
                || m.name.starts_with("[vvar")
            {
                Class::Kernel
            } else if m.is_file() {
                if !ctx.exe.is_empty() && m.name == ctx.exe {
                    Class::Binary
                } else if m.name.contains(".so") {
                    Class::Libraries
                } else {
                    Class::OtherFiles
                }
            } else if m.is_anonymous_like() && stack_of(m) {
                Class::ThreadStacks
            } else if m.is_anonymous_like()
                && m.start % ARENA_ALIGN == 0
                && (m.size_kib() * 1024 == ARENA_ALIGN
                    || next.is_some_and(|n| {
                        n.start == m.end && n.perms.starts_with("---") && n.name.is_empty()
                    }))
            {
                Class::Arenas
            } else if m.is_anonymous_like()
                && m.perms.starts_with("rw")
                && prev.is_some_and(|p| {
                    p.end == m.start
                        && p.perms.starts_with("---")
                        && p.size_kib() <= 64
                        && m.size_kib() >= 64
                })
            {
                // A thread whose stack pointer is unknown (running, not in a system
                // call): an rw mapping right above a small guard page.
                Class::ThreadStacks
            } else {
                Class::Anonymous
            }
        })
        .collect()
}

/// Resident memory of one process by class, KiB.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Breakdown {
    /// `Rss` per class.
    pub rss: BTreeMap<Class, u64>,
    /// `Pss` outside guest RAM.
    pub pss_overhead: u64,
    /// Private pages outside guest RAM.
    pub private_overhead: u64,
    /// Threads of the process.
    pub threads: u32,
}

impl Breakdown {
    /// Sums `maps` classified as `classes`.
    pub fn of(maps: &[Mapping], classes: &[Class], threads: u32) -> Breakdown {
        let mut b = Breakdown {
            rss: Class::ALL.iter().map(|c| (*c, 0)).collect(),
            threads,
            ..Breakdown::default()
        };
        for (m, c) in maps.iter().zip(classes) {
            *b.rss.entry(*c).or_default() += m.rss;
            if *c != Class::GuestRam {
                b.pss_overhead += m.pss;
                b.private_overhead += m.private;
            }
        }
        b
    }

    /// RSS of one class.
    pub fn get(&self, c: Class) -> u64 {
        self.rss.get(&c).copied().unwrap_or(0)
    }

    /// RSS outside guest RAM: the VMM's memory overhead.
    pub fn overhead(&self) -> u64 {
        self.rss
            .iter()
            .filter(|(c, _)| **c != Class::GuestRam)
            .map(|(_, v)| v)
            .sum()
    }

    /// RSS outside guest RAM that is not file-backed text/data of the binary and its
    /// libraries (heap, stacks, arenas, anonymous, kernel objects).
    pub fn overhead_anon(&self) -> u64 {
        self.overhead()
            - self.get(Class::Binary)
            - self.get(Class::Libraries)
            - self.get(Class::OtherFiles)
    }

    /// `key=value` words: `overhead=K pss=K private=K threads=N guest_ram=K binary=K ...`.
    pub fn to_words(&self) -> String {
        let mut s = format!(
            "overhead={} pss={} private={} threads={}",
            self.overhead(),
            self.pss_overhead,
            self.private_overhead,
            self.threads
        );
        for c in Class::ALL {
            let _ = write!(s, " {}={}", c.key(), self.get(c));
        }
        s
    }

    /// Reads what [`Breakdown::to_words`] wrote (unknown words are ignored).
    pub fn from_words(words: &str) -> Option<Breakdown> {
        let mut b = Breakdown::default();
        let mut seen_overhead = false;
        for w in words.split_whitespace() {
            let Some((k, v)) = w.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<u64>() else { continue };
            match k {
                "overhead" => seen_overhead = true,
                "pss" => b.pss_overhead = v,
                "private" => b.private_overhead = v,
                "threads" => b.threads = u32::try_from(v).unwrap_or(u32::MAX),
                _ => {
                    if let Some(c) = Class::from_key(k) {
                        b.rss.insert(c, v);
                    }
                }
            }
        }
        seen_overhead.then_some(b)
    }
}

/// The stack pointer in `/proc/PID/task/TID/syscall` (`NR a1..a6 SP PC` while the
/// thread is in a system call; `running` or `-1 SP PC` otherwise).
pub fn syscall_sp(text: &str) -> Option<u64> {
    let w: Vec<&str> = text.split_whitespace().collect();
    if w.len() < 3 {
        return None;
    }
    let sp = w[w.len() - 2].strip_prefix("0x")?;
    u64::from_str_radix(sp, 16).ok()
}

/// Reads and classifies process `pid` (`guest_mem` bytes of guest RAM).
pub fn probe(pid: u32, guest_mem: u64) -> std::io::Result<(Vec<Mapping>, Vec<Class>, Breakdown)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let maps = parse(&text);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut thread_sps = Vec::new();
    let mut threads = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            threads += 1;
            if e.file_name().to_string_lossy() == pid.to_string() {
                continue;
            }
            if let Some(sp) = std::fs::read_to_string(e.path().join("syscall"))
                .ok()
                .and_then(|t| syscall_sp(&t))
            {
                thread_sps.push(sp);
            }
        }
    }
    let ctx = Context {
        guest_mem,
        exe,
        thread_sps,
    };
    let classes = classify(&maps, &ctx);
    let b = Breakdown::of(&maps, &classes, threads);
    Ok((maps, classes, b))
}

/// One line per resident mapping outside guest RAM: class, RSS, size, perms, name.
pub fn detail(maps: &[Mapping], classes: &[Class]) -> String {
    let mut s = String::new();
    for (m, c) in maps.iter().zip(classes) {
        if m.rss == 0 || *c == Class::GuestRam {
            continue;
        }
        let _ = writeln!(
            s,
            "{:<13} rss={:>6} anon={:>6} size={:>8} {:x} {} {}",
            c.key(),
            m.rss,
            m.anonymous,
            m.size_kib(),
            m.start,
            m.perms,
            m.name
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fe:00 123 /usr/bin/vmm
Rss:                 600 kB
Pss:                 600 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d0c1000000-55d0c1040000 rw-p 00000000 00:00 0                          [heap]
Rss:                 200 kB
Pss:                 200 kB
Private_Dirty:       200 kB
Anonymous:           200 kB
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
Rss:                  40 kB
Pss:                  40 kB
Private_Dirty:        40 kB
7f0000021000-7f0004000000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f0010000000-7f0020000000 rw-p 00000000 00:00 0 
Rss:                2048 kB
Pss:                2048 kB
AnonHugePages:      2048 kB
7f0030000000-7f0030001000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f0030001000-7f0030201000 rw-p 00000000 00:00 0 
Rss:                  16 kB
Pss:                  16 kB
Private_Dirty:        16 kB
7f0030201000-7f0030202000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f0030202000-7f0030402000 rw-p 00000000 00:00 0 
Rss:                   8 kB
Pss:                   8 kB
7f0040000000-7f00401d0000 r-xp 00026000 fe:00 77 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1000 kB
Pss:                  50 kB
Shared_Clean:       1000 kB
7f0050000000-7f0050003000 rw-s 00000000 00:0e 9 anon_inode:kvm-vcpu:0
Rss:                  12 kB
Pss:                  12 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  60 kB
Pss:                  60 kB
VmFlags: rd wr mr mw me gd ac
";

    fn ctx(sps: Vec<u64>) -> Context {
        Context {
            guest_mem: 256 << 20,
            exe: "/usr/bin/vmm".into(),
            thread_sps: sps,
        }
    }

    #[test]
    fn parses_fields() {
        let m = parse(SMAPS);
        assert_eq!(m.len(), 12);
        assert_eq!(m[0].name, "/usr/bin/vmm");
        assert_eq!(m[0].rss, 600);
        assert_eq!(m[1].private, 200);
        assert_eq!(m[4].anon_huge, 2048);
        assert_eq!(m[4].size_kib(), 256 << 10);
        assert_eq!(m[3].name, "");
    }

    #[test]
    fn classes_with_stack_pointers() {
        let m = parse(SMAPS);
        let c = classify(&m, &ctx(vec![0x7f0030100000]));
        assert_eq!(
            c,
            vec![
                Class::Binary,
                Class::Heap,
                Class::Arenas,
                Class::Anonymous,
                Class::GuestRam,
                Class::Anonymous,
                Class::ThreadStacks,
                Class::Anonymous,
                Class::ThreadStacks,
                Class::Libraries,
                Class::Kernel,
                Class::MainStack,
            ]
        );
        let b = Breakdown::of(&m, &c, 3);
        assert_eq!(b.get(Class::GuestRam), 2048);
        assert_eq!(b.overhead(), 600 + 200 + 40 + 16 + 8 + 1000 + 12 + 60);
        assert_eq!(b.overhead_anon(), 200 + 40 + 16 + 8 + 12 + 60);
        assert_eq!(b.get(Class::ThreadStacks), 16 + 8);
        assert_eq!(b.pss_overhead, 600 + 200 + 40 + 16 + 8 + 50 + 12 + 60);
        let back = Breakdown::from_words(&b.to_words()).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn guard_heuristic_without_stack_pointers() {
        let m = parse(SMAPS);
        let c = classify(&m, &ctx(Vec::new()));
        assert_eq!(c[6], Class::ThreadStacks);
        assert_eq!(c[8], Class::ThreadStacks);
    }

    #[test]
    fn syscall_file() {
        assert_eq!(
            syscall_sp("16 0xd 0xae80 0x0 0x0 0x0 0x0 0x7f1234560000 0x7f99"),
            Some(0x7f1234560000)
        );
        assert_eq!(syscall_sp("-1 0x7ffd1000 0x55d0"), Some(0x7ffd1000));
        assert_eq!(syscall_sp("running"), None);
    }

    #[test]
    fn no_guest_ram_without_a_size() {
        let m = parse(SMAPS);
        let c = classify(
            &m,
            &Context {
                guest_mem: 0,
                ..ctx(Vec::new())
            },
        );
        assert!(!c.contains(&Class::GuestRam));
    }
}
