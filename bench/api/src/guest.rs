//! The direct-KVM guest: a real-mode loop writing port 0x80 forever, so the vCPU keeps
//! running (and exiting to user space) until it is paused or killed.

/// `out 0x80, al` (e6 80); `jmp $-2` back to the `out` (eb fc).
pub const PORT_LOOP: [u8; 4] = [0xe6, LOOP_PORT, 0xeb, 0xfc];
/// The port the loop writes (ferrovm's POST-code latch claims it).
pub const LOOP_PORT: u8 = 0x80;
/// Where the loop is loaded and entered (CS base; IP = 0), as ferrovm's `--raw` default.
pub const LOAD_ADDR: u64 = 0x1_0000;
/// Guest RAM for the direct runs, in MiB.
pub const MEM_MIB: u64 = 16;
