//! The benchmark guest: real-mode code doing `n` port writes in a loop, then a debug-exit.

/// Port the loop writes (POST port: claimed by ferrovm's POST-code latch).
pub const LOOP_PORT: u8 = 0x80;
/// ferrovm's debug-exit port.
pub const DEBUG_EXIT_PORT: u8 = 0xf4;

/// Machine code, loaded at any 16-byte aligned address with CS base there and IP = 0:
///
/// ```text
/// 66 b9 nn nn nn nn   mov ecx, n
/// e6 80         loop: out 0x80, al
/// 66 49               dec ecx
/// 75 fb               jnz loop
/// b0 00               mov al, 0
/// e6 f4               out 0xf4, al
/// f4                  hlt
/// ```
pub fn port_loop(n: u32) -> Vec<u8> {
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&n.to_le_bytes());
    // jnz back over `out` (2) + `dec ecx` (2) + `jnz` (2): rel8 = -6 = 0xfa
    code.extend_from_slice(&[0xe6, LOOP_PORT, 0x66, 0x49, 0x75, 0xfa]);
    code.extend_from_slice(&[0xb0, 0x00, 0xe6, DEBUG_EXIT_PORT, 0xf4]);
    code
}
