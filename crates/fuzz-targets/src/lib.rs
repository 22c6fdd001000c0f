//! The bodies of ferrovm's fuzz targets: one plain function `fuzz_<name>(data: &[u8])`
//! per target, for everything a guest or an API client controls.
//!
//! `fuzz/` (cargo-fuzz, nightly, not a workspace member) wraps each one in a libFuzzer
//! `fuzz_target!`; `tests/fuzz_smoke.rs` runs every one with the stable toolchain on the
//! checked-in seed corpus (`fuzz/corpus/<name>/`) and on generated inputs, under a time
//! and an allocation bound. A target panics only when it found a bug: either the code
//! under test panicked (a device worker's panic is caught by the worker, so the panic
//! hook of the runner is what sees it), or an invariant the target checks broke (a
//! request that passed validation points outside guest memory, say).
//!
//! Every target reads its input with [`Input`], which never fails: past the end it reads
//! zeroes, so that every byte string is a valid input and libFuzzer's mutations stay
//! meaningful.

pub mod driver;
pub mod seeds;
pub mod targets;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target: its name (the cargo-fuzz target and corpus directory) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("mmio_transport", targets::mmio::fuzz_mmio_transport),
    ("blk_request", targets::blk::fuzz_blk_request),
    ("blk_device", targets::blk::fuzz_blk_device),
    ("rng_device", targets::rng::fuzz_rng_device),
    ("net_device", targets::net::fuzz_net_device),
    ("vsock", targets::vsock::fuzz_vsock),
    ("balloon_device", targets::balloon::fuzz_balloon_device),
    ("api_route", targets::api::fuzz_api_route),
    ("snapshot_state", targets::snapshot::fuzz_snapshot_state),
    ("snapshot_memfile", targets::snapshot::fuzz_snapshot_memfile),
    ("kernel_image", targets::kernel::fuzz_kernel_image),
    ("qcow2_header", targets::qcow2::fuzz_qcow2_header),
    ("qcow2_image", targets::qcow2::fuzz_qcow2_image),
];

/// A reader over fuzz input that never fails: past the end every read is zero.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `data` from the start.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes left.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// A byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A length-prefixed (one byte) byte string.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.bytes(n)
    }
}

/// A small deterministic generator (SplitMix64) for the in-suite runs and for targets that
/// need arbitrary but reproducible filler.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Mutates `input` in place the way a fuzzer would, a few times: flip, set interesting
/// values, insert, erase, duplicate a block, splice from `other`.
pub fn mutate(rng: &mut SplitMix, input: &mut Vec<u8>, other: &[u8], max_len: usize) {
    const INTERESTING: [u64; 10] = [
        0,
        1,
        0x7f,
        0x80,
        0xff,
        0xffff,
        0x1_0000,
        0x7fff_ffff,
        0xffff_ffff,
        u64::MAX,
    ];
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        let len = input.len() as u64;
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len) as usize;
                input[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len) as usize;
                input[at] = rng.next_u64() as u8;
            }
            2 => {
                let v = INTERESTING[rng.below(INTERESTING.len() as u64) as usize].to_le_bytes();
                let w = [1usize, 2, 4, 8][rng.below(4) as usize];
                let at = rng.below(len + 1) as usize;
                for (i, b) in v[..w].iter().enumerate() {
                    if let Some(slot) = input.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            3 => {
                let at = rng.below(len + 1) as usize;
                let n = 1 + rng.below(16) as usize;
                let ins = rng.bytes(n);
                input.splice(at..at, ins);
            }
            4 if len > 0 => {
                let at = rng.below(len) as usize;
                let n = (1 + rng.below(16) as usize).min(input.len() - at);
                input.drain(at..at + n);
            }
            5 if len > 0 => {
                let at = rng.below(len) as usize;
                let n = (1 + rng.below(64) as usize).min(input.len() - at);
                let block = input[at..at + n].to_vec();
                let to = rng.below(len + 1) as usize;
                input.splice(to..to, block);
            }
            6 if !other.is_empty() => {
                let from = rng.below(other.len() as u64) as usize;
                let n = (1 + rng.below(256) as usize).min(other.len() - from);
                let to = rng.below(len + 1) as usize;
                input.splice(to..to, other[from..from + n].iter().copied());
            }
            _ => input.push(rng.next_u64() as u8),
        }
    }
    input.truncate(max_len);
}
