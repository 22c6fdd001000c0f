//! `kernel_image`: the kernel image parsers: `kernel::KernelImage::parse` (ELF vmlinux or
//! bzImage setup header), the payload decompressors a bzImage declares (every one, on a
//! fuzzed stream), the ELF check of the result, and `arch::linux::prepare` + `load` into
//! small guest memory (both decompression placements), as `ferrovm run --kernel` does.
//!
//! Allocation: decompression is bounded by `kernel::MAX_DECOMPRESSED_SIZE` (1 GiB) by
//! design; the target's input is small, so anything near that bound is a finding.

use arch::linux::{self, Decompress, KernelBytes};
use kernel::{Compression, KernelImage};

use crate::driver::guest_memory;
use crate::Input;

/// Guest memory the target loads kernels into.
const MEM: usize = 4 << 20;

/// The `kernel_image` target: the first byte picks the path.
pub fn fuzz_kernel_image(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let image = inp.rest();
    match mode % 4 {
        0 => {
            // A bare compressed stream of one of the formats.
            let c = Compression::ALL[usize::from(mode >> 2) % Compression::ALL.len()];
            if let Ok(out) = kernel::decompress_stream(c, image, Some(image.len() as u64 * 4)) {
                assert!(out.len() as u64 <= kernel::MAX_DECOMPRESSED_SIZE);
            }
            let _ = kernel::decompress_payload(c, image);
            let _ = Compression::detect(image);
        }
        1 => {
            if let Ok(k) = KernelImage::parse(image) {
                if let KernelImage::BzImage(bz) = &k {
                    let _ = (bz.header.protocol(), bz.header.setup_size());
                    let _ = bz.payload_bytes(image);
                    let _ = bz.setup_bytes(image);
                    let _ = bz.protected_mode_bytes(image);
                }
                if let Ok((elf, info)) = k.to_vmlinux(image) {
                    for s in &info.segments {
                        assert!(
                            s.offset
                                .checked_add(s.filesz)
                                .is_some_and(|end| end <= elf.len() as u64),
                            "a segment's file bytes lie outside the ELF: {s:?}"
                        );
                    }
                    let _ = (info.lowest_paddr(), info.highest_paddr_end());
                }
            }
        }
        _ => {
            let how = if mode & 1 != 0 {
                Decompress::Host
            } else {
                Decompress::Guest
            };
            if let Ok(p) = linux::prepare(KernelBytes::Owned(image.to_vec()), how) {
                let mem = guest_memory(MEM);
                let _ = p.load(&mem, MEM as u64);
                let _ = p.decompressed_elf();
            }
        }
    }
}
