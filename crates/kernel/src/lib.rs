//! Linux kernel image formats, as pure functions over byte slices (no KVM, no I/O).
//!
//! - [`SetupHeader`]: the x86 boot protocol setup header of a bzImage
//!   (Documentation/arch/x86/boot.rst, protocol 2.x).
//! - [`Compression`]: detection of the bzImage payload compression by its magic, and
//!   host-side decompression into the ELF `vmlinux` ([`decompress_payload`]).
//! - [`ElfInfo`]: validation of a 64-bit x86_64 ELF `vmlinux`: entry point, `PT_LOAD`
//!   segments and the PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`).
//! - [`KernelImage::parse`]: tells an ELF from a bzImage and gives the parts of either.
//!
//! Every parser is bounds-checked and returns an [`Error`]; no input makes it panic.

pub mod bzimage;
pub mod compression;
pub mod elf;
mod error;
mod lzo;

pub use bzimage::{BzImage, SetupHeader};
pub use compression::{decompress_payload, decompress_stream, Compression, MAX_DECOMPRESSED_SIZE};
pub use elf::{ElfInfo, LoadSegment, ELF_MAGIC, XEN_ELFNOTE_PHYS32_ENTRY};
pub use error::{Error, Result};

/// A kernel image as handed to a VMM: either an uncompressed ELF `vmlinux` or a bzImage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelImage {
    /// An ELF `vmlinux` (64-bit x86_64).
    Elf(ElfInfo),
    /// A bzImage (boot protocol 2.08 or later, 64-bit capable).
    BzImage(BzImage),
}

impl KernelImage {
    /// Parses `image`: an ELF is recognised by its magic, a bzImage by `boot_flag` 0xAA55
    /// and the "HdrS" magic; anything else is [`Error::NotAKernel`].
    pub fn parse(image: &[u8]) -> Result<Self> {
        if image.starts_with(&ELF_MAGIC) {
            return ElfInfo::parse(image).map(KernelImage::Elf);
        }
        BzImage::parse(image).map(KernelImage::BzImage)
    }

    /// Returns the uncompressed ELF `vmlinux` for `image` (the bytes [`KernelImage::parse`]
    /// was given): a copy of an ELF, or the decompressed payload of a bzImage (validated
    /// as an ELF), together with its parsed [`ElfInfo`].
    pub fn to_vmlinux(&self, image: &[u8]) -> Result<(Vec<u8>, ElfInfo)> {
        match self {
            KernelImage::Elf(info) => Ok((image.to_vec(), info.clone())),
            KernelImage::BzImage(bz) => {
                let vmlinux = bz.decompress(image)?;
                let info = ElfInfo::parse(&vmlinux)?;
                Ok((vmlinux, info))
            }
        }
    }
}

/// Reads and, if needed, decompresses a kernel file's bytes into an ELF `vmlinux`.
pub fn vmlinux_from_image(image: &[u8]) -> Result<(Vec<u8>, ElfInfo)> {
    KernelImage::parse(image)?.to_vmlinux(image)
}

/// Little-endian readers with bounds checks, shared by the parsers.
pub(crate) mod bytes {
    use crate::{Error, Result};

    pub fn slice<'a>(
        data: &'a [u8],
        off: usize,
        len: usize,
        what: &'static str,
    ) -> Result<&'a [u8]> {
        let end = off.checked_add(len).ok_or(Error::Truncated {
            what,
            need: u64::MAX,
            have: data.len() as u64,
        })?;
        data.get(off..end).ok_or(Error::Truncated {
            what,
            need: end as u64,
            have: data.len() as u64,
        })
    }

    pub fn u8_at(data: &[u8], off: usize, what: &'static str) -> Result<u8> {
        Ok(slice(data, off, 1, what)?[0])
    }

    pub fn u16_at(data: &[u8], off: usize, what: &'static str) -> Result<u16> {
        let s = slice(data, off, 2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    pub fn u32_at(data: &[u8], off: usize, what: &'static str) -> Result<u32> {
        let s = slice(data, off, 4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub fn u64_at(data: &[u8], off: usize, what: &'static str) -> Result<u64> {
        let s = slice(data, off, 8, what)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Rng(seed | 1)
        }
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::new(0x5eed);
        for i in 0..3000 {
            let len = (rng.next() % 4096) as usize;
            let mut data = rng.bytes(len);
            // Steer some inputs into the interesting parsers.
            match i % 4 {
                0 if data.len() >= 4 => data[..4].copy_from_slice(&ELF_MAGIC),
                1 if data.len() >= 0x270 => {
                    data[0x1fe] = 0x55;
                    data[0x1ff] = 0xAA;
                    data[0x202..0x206].copy_from_slice(b"HdrS");
                }
                _ => {}
            }
            let _ = KernelImage::parse(&data);
            let _ = vmlinux_from_image(&data);
            let _ = ElfInfo::parse(&data);
            let _ = SetupHeader::parse(&data);
        }
    }

    #[test]
    fn not_a_kernel() {
        assert!(matches!(
            KernelImage::parse(b"hello world"),
            Err(Error::NotAKernel(_)) | Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            KernelImage::parse(&[0u8; 4096]),
            Err(Error::NotAKernel(_))
        ));
    }
}
