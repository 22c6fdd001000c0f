//! The x86 Linux boot protocol setup header of a bzImage (protocol 2.x).
//!
//! Offsets are those of the header inside the image file, as listed in
//! Documentation/arch/x86/boot.rst ("THE REAL-MODE KERNEL HEADER").

use std::ops::Range;

use crate::bytes::{slice, u16_at, u32_at, u64_at, u8_at};
use crate::{decompress_payload, Compression, Error, Result};

/// Offset of `setup_sects`, the first field of the setup header.
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// End of the last field this crate reads (`kernel_info_offset`, protocol 2.15).
pub const SETUP_HEADER_END: usize = 0x26c;
/// `boot_flag` value.
pub const BOOT_FLAG: u16 = 0xAA55;
/// `header` value: "HdrS" read little-endian.
pub const HDRS_MAGIC: u32 = u32::from_le_bytes(*b"HdrS");
/// Sector size of the real-mode setup code.
pub const SECTOR_SIZE: usize = 512;
/// `setup_sects` value 0 means 4 (historical).
pub const DEFAULT_SETUP_SECTS: u8 = 4;
/// Oldest protocol with `payload_offset`/`payload_length` (2.08).
pub const MIN_PROTOCOL_FOR_PAYLOAD: u16 = 0x0208;

/// `loadflags` bit: the protected-mode code is loaded at 0x100000.
pub const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags` bit: KASLR was enabled by the kernel (set by the kernel itself).
pub const KASLR_FLAG: u8 = 1 << 1;
/// `loadflags` bit: suppress early messages.
pub const QUIET_FLAG: u8 = 1 << 5;
/// `loadflags` bit: do not reload segment registers (obsolete).
pub const KEEP_SEGMENTS: u8 = 1 << 6;
/// `loadflags` bit: `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 1 << 7;

/// `xloadflags` bit: the kernel has the legacy 64-bit entry point at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit: kernel, boot_params, cmdline and ramdisk may live above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// `xloadflags` bit: 32-bit EFI handover entry at `handover_offset`.
pub const XLF_EFI_HANDOVER_32: u16 = 1 << 2;
/// `xloadflags` bit: 64-bit EFI handover entry at `handover_offset + 0x200`.
pub const XLF_EFI_HANDOVER_64: u16 = 1 << 3;
/// `xloadflags` bit: EFI kexec supported.
pub const XLF_EFI_KEXEC: u16 = 1 << 4;

/// The setup header fields of boot protocol 2.x, read little-endian from the image.
///
/// Fields newer than the image's `version` hold whatever bytes the image has there; check
/// [`SetupHeader::version`] before relying on them (boot.rst lists the version per field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetupHeader {
    pub setup_sects: u8,
    pub root_flags: u16,
    pub syssize: u32,
    pub ram_size: u16,
    pub vid_mode: u16,
    pub root_dev: u16,
    pub boot_flag: u16,
    pub jump: u16,
    pub header: u32,
    pub version: u16,
    pub realmode_swtch: u32,
    pub start_sys_seg: u16,
    pub kernel_version: u16,
    pub type_of_loader: u8,
    pub loadflags: u8,
    pub setup_move_size: u16,
    pub code32_start: u32,
    pub ramdisk_image: u32,
    pub ramdisk_size: u32,
    pub bootsect_kludge: u32,
    pub heap_end_ptr: u16,
    pub ext_loader_ver: u8,
    pub ext_loader_type: u8,
    pub cmd_line_ptr: u32,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable_kernel: u8,
    pub min_alignment: u8,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub hardware_subarch: u32,
    pub hardware_subarch_data: u64,
    pub payload_offset: u32,
    pub payload_length: u32,
    pub setup_data: u64,
    pub pref_address: u64,
    pub init_size: u32,
    pub handover_offset: u32,
    pub kernel_info_offset: u32,
}

impl SetupHeader {
    /// Reads the setup header from the start of a bzImage and checks `boot_flag` and
    /// the "HdrS" magic (so the protocol is 2.00 or later).
    pub fn parse(image: &[u8]) -> Result<Self> {
        const W: &str = "setup header";
        slice(image, 0, SETUP_HEADER_END, W)?;
        let h = SetupHeader {
            setup_sects: u8_at(image, 0x1f1, W)?,
            root_flags: u16_at(image, 0x1f2, W)?,
            syssize: u32_at(image, 0x1f4, W)?,
            ram_size: u16_at(image, 0x1f8, W)?,
            vid_mode: u16_at(image, 0x1fa, W)?,
            root_dev: u16_at(image, 0x1fc, W)?,
            boot_flag: u16_at(image, 0x1fe, W)?,
            jump: u16_at(image, 0x200, W)?,
            header: u32_at(image, 0x202, W)?,
            version: u16_at(image, 0x206, W)?,
            realmode_swtch: u32_at(image, 0x208, W)?,
            start_sys_seg: u16_at(image, 0x20c, W)?,
            kernel_version: u16_at(image, 0x20e, W)?,
            type_of_loader: u8_at(image, 0x210, W)?,
            loadflags: u8_at(image, 0x211, W)?,
            setup_move_size: u16_at(image, 0x212, W)?,
            code32_start: u32_at(image, 0x214, W)?,
            ramdisk_image: u32_at(image, 0x218, W)?,
            ramdisk_size: u32_at(image, 0x21c, W)?,
            bootsect_kludge: u32_at(image, 0x220, W)?,
            heap_end_ptr: u16_at(image, 0x224, W)?,
            ext_loader_ver: u8_at(image, 0x226, W)?,
            ext_loader_type: u8_at(image, 0x227, W)?,
            cmd_line_ptr: u32_at(image, 0x228, W)?,
            initrd_addr_max: u32_at(image, 0x22c, W)?,
            kernel_alignment: u32_at(image, 0x230, W)?,
            relocatable_kernel: u8_at(image, 0x234, W)?,
            min_alignment: u8_at(image, 0x235, W)?,
            xloadflags: u16_at(image, 0x236, W)?,
            cmdline_size: u32_at(image, 0x238, W)?,
            hardware_subarch: u32_at(image, 0x23c, W)?,
            hardware_subarch_data: u64_at(image, 0x240, W)?,
            payload_offset: u32_at(image, 0x248, W)?,
            payload_length: u32_at(image, 0x24c, W)?,
            setup_data: u64_at(image, 0x250, W)?,
            pref_address: u64_at(image, 0x258, W)?,
            init_size: u32_at(image, 0x260, W)?,
            handover_offset: u32_at(image, 0x264, W)?,
            kernel_info_offset: u32_at(image, 0x268, W)?,
        };
        if h.boot_flag != BOOT_FLAG {
            return Err(Error::NotAKernel("boot_flag at 0x1fe is not 0xAA55"));
        }
        if h.header != HDRS_MAGIC {
            return Err(Error::NotAKernel(
                "no \"HdrS\" magic at 0x202 (boot protocol < 2.00)",
            ));
        }
        Ok(h)
    }

    /// Boot protocol version as (major, minor), e.g. (2, 15).
    pub fn protocol(&self) -> (u8, u8) {
        ((self.version >> 8) as u8, self.version as u8)
    }

    /// Number of 512-byte setup sectors (0 means 4).
    pub fn effective_setup_sects(&self) -> u8 {
        if self.setup_sects == 0 {
            DEFAULT_SETUP_SECTS
        } else {
            self.setup_sects
        }
    }

    /// Size in bytes of the real-mode part (boot sector plus setup sectors); the
    /// protected-mode kernel starts at this file offset.
    pub fn setup_size(&self) -> usize {
        (usize::from(self.effective_setup_sects()) + 1) * SECTOR_SIZE
    }

    /// Whether the kernel has the 64-bit entry point (`XLF_KERNEL_64`).
    pub fn is_64bit(&self) -> bool {
        self.xloadflags & XLF_KERNEL_64 != 0
    }

    /// Whether the kernel may be loaded at any `kernel_alignment`-aligned address.
    pub fn is_relocatable(&self) -> bool {
        self.relocatable_kernel != 0
    }

    /// Whether the protected-mode code loads at 0x100000 (bzImage).
    pub fn loaded_high(&self) -> bool {
        self.loadflags & LOADED_HIGH != 0
    }
}

/// A parsed bzImage: its header and the ranges of its parts inside the image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BzImage {
    pub header: SetupHeader,
    /// Boot sector and real-mode setup code: `0..setup_size`.
    pub setup: Range<usize>,
    /// Protected-mode kernel (decompressor plus payload): `setup_size..len`.
    pub protected_mode: Range<usize>,
    /// Compression of the payload, detected by magic.
    pub compression: Compression,
    /// The payload (compressed `vmlinux` plus its 4-byte size trailer) in the file.
    pub payload: Range<usize>,
}

impl BzImage {
    /// Parses a bzImage: protocol >= 2.08 with a 64-bit entry (`XLF_KERNEL_64`), and a
    /// payload inside the protected-mode part whose compression is recognised.
    pub fn parse(image: &[u8]) -> Result<Self> {
        let header = SetupHeader::parse(image)?;
        let (major, minor) = header.protocol();
        if header.version < MIN_PROTOCOL_FOR_PAYLOAD {
            return Err(Error::ProtocolTooOld {
                major,
                minor,
                needed: "2.08 (payload_offset)",
            });
        }
        if !header.is_64bit() {
            return Err(Error::Not64Bit(
                "bzImage xloadflags lacks XLF_KERNEL_64 (32-bit only kernel)",
            ));
        }
        let setup_size = header.setup_size();
        if setup_size > image.len() {
            return Err(Error::Truncated {
                what: "real-mode setup sectors",
                need: setup_size as u64,
                have: image.len() as u64,
            });
        }
        let start = setup_size
            .checked_add(header.payload_offset as usize)
            .ok_or(Error::NotAKernel("payload_offset overflows"))?;
        let end = start
            .checked_add(header.payload_length as usize)
            .ok_or(Error::NotAKernel("payload_length overflows"))?;
        let payload = slice(
            image,
            start,
            header.payload_length as usize,
            "bzImage payload",
        )?;
        let compression = Compression::detect(payload)?;
        Ok(BzImage {
            header,
            setup: 0..setup_size,
            protected_mode: setup_size..image.len(),
            compression,
            payload: start..end,
        })
    }

    /// The payload bytes of `image` (the same bytes given to [`BzImage::parse`]).
    pub fn payload_bytes<'a>(&self, image: &'a [u8]) -> Result<&'a [u8]> {
        image.get(self.payload.clone()).ok_or(Error::Truncated {
            what: "bzImage payload",
            need: self.payload.end as u64,
            have: image.len() as u64,
        })
    }

    /// The real-mode part (boot sector + setup sectors) of `image`.
    pub fn setup_bytes<'a>(&self, image: &'a [u8]) -> Result<&'a [u8]> {
        image.get(self.setup.clone()).ok_or(Error::Truncated {
            what: "real-mode setup sectors",
            need: self.setup.end as u64,
            have: image.len() as u64,
        })
    }

    /// The protected-mode part of `image` (what a boot loader puts at `code32_start`).
    pub fn protected_mode_bytes<'a>(&self, image: &'a [u8]) -> Result<&'a [u8]> {
        image
            .get(self.protected_mode.clone())
            .ok_or(Error::Truncated {
                what: "protected-mode kernel",
                need: self.protected_mode.end as u64,
                have: image.len() as u64,
            })
    }

    /// Decompresses the payload into the ELF `vmlinux` (not yet validated as ELF).
    pub fn decompress(&self, image: &[u8]) -> Result<Vec<u8>> {
        decompress_payload(self.compression, self.payload_bytes(image)?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a synthetic bzImage: `setup_sects` setup sectors, a 64-byte stand-in for
    /// the decompressor, then `payload`, then 16 bytes of tail.
    pub(crate) fn synthetic_bzimage(payload: &[u8], version: u16, xloadflags: u16) -> Vec<u8> {
        let setup_sects = 3u8;
        let setup_size = (usize::from(setup_sects) + 1) * SECTOR_SIZE;
        let decompressor = 64usize;
        let mut img = vec![0u8; setup_size + decompressor];
        img[0x1f1] = setup_sects;
        img[0x1fe..0x200].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x211] = LOADED_HIGH | CAN_USE_HEAP;
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        img[0x234] = 1;
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&(decompressor as u32).to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&0x200_0000u32.to_le_bytes());
        img[0x264..0x268].copy_from_slice(&0x190u32.to_le_bytes());
        img.extend_from_slice(payload);
        img.extend_from_slice(&[0xcc; 16]);
        img
    }

    fn gzip_payload() -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b"abc").unwrap();
        let mut p = e.finish().unwrap();
        p.extend_from_slice(&3u32.to_le_bytes());
        p
    }

    #[test]
    fn parses_synthetic_header() {
        let img = synthetic_bzimage(
            &gzip_payload(),
            0x020f,
            XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
        );
        let h = SetupHeader::parse(&img).unwrap();
        assert_eq!(h.protocol(), (2, 15));
        assert_eq!(h.setup_sects, 3);
        assert_eq!(h.setup_size(), 2048);
        assert_eq!(h.boot_flag, BOOT_FLAG);
        assert_eq!(h.code32_start, 0x10_0000);
        assert_eq!(h.initrd_addr_max, 0x7fff_ffff);
        assert_eq!(h.kernel_alignment, 0x20_0000);
        assert!(h.is_relocatable());
        assert!(h.is_64bit());
        assert!(h.loaded_high());
        assert_eq!(h.cmdline_size, 2047);
        assert_eq!(h.payload_offset, 64);
        assert_eq!(h.pref_address, 0x100_0000);
        assert_eq!(h.init_size, 0x200_0000);
        assert_eq!(h.handover_offset, 0x190);

        let bz = BzImage::parse(&img).unwrap();
        assert_eq!(bz.setup, 0..2048);
        assert_eq!(bz.protected_mode, 2048..img.len());
        assert_eq!(bz.payload.start, 2048 + 64);
        assert_eq!(bz.compression, Compression::Gzip);
        assert_eq!(bz.decompress(&img).unwrap(), b"abc");
        assert_eq!(bz.setup_bytes(&img).unwrap().len(), 2048);
        assert_eq!(
            bz.protected_mode_bytes(&img).unwrap().len(),
            img.len() - 2048
        );
        assert!(bz.setup_bytes(&img[..100]).is_err());
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let h = SetupHeader {
            setup_sects: 0,
            ..Default::default()
        };
        assert_eq!(h.setup_size(), 5 * 512);
    }

    #[test]
    fn rejects_bad_magic_and_old_protocol_and_32bit() {
        let good = synthetic_bzimage(&gzip_payload(), 0x020f, XLF_KERNEL_64);

        let mut no_flag = good.clone();
        no_flag[0x1fe] = 0;
        assert!(matches!(
            SetupHeader::parse(&no_flag),
            Err(Error::NotAKernel(_))
        ));

        let mut no_hdrs = good.clone();
        no_hdrs[0x202] = b'X';
        assert!(matches!(
            SetupHeader::parse(&no_hdrs),
            Err(Error::NotAKernel(_))
        ));

        let old = synthetic_bzimage(&gzip_payload(), 0x0206, XLF_KERNEL_64);
        assert!(matches!(
            BzImage::parse(&old),
            Err(Error::ProtocolTooOld { .. })
        ));

        let i386 = synthetic_bzimage(&gzip_payload(), 0x020f, 0);
        assert!(matches!(BzImage::parse(&i386), Err(Error::Not64Bit(_))));
    }

    #[test]
    fn rejects_truncated() {
        let good = synthetic_bzimage(&gzip_payload(), 0x020f, XLF_KERNEL_64);
        assert!(matches!(
            SetupHeader::parse(&good[..0x250]),
            Err(Error::Truncated { .. })
        ));
        // Payload cut short.
        let cut = &good[..good.len() - 20];
        assert!(matches!(BzImage::parse(cut), Err(Error::Truncated { .. })));
        // Payload length pointing far out.
        let mut far = good.clone();
        far[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(BzImage::parse(&far), Err(Error::Truncated { .. })));
    }

    #[test]
    fn mutated_images_never_panic() {
        let good = synthetic_bzimage(&gzip_payload(), 0x020f, XLF_KERNEL_64);
        let mut rng = crate::tests::Rng::new(42);
        for _ in 0..5000 {
            let mut img = good.clone();
            for _ in 0..(rng.next() % 8 + 1) {
                let i = (rng.next() as usize) % img.len();
                img[i] = rng.next() as u8;
            }
            let cut = (rng.next() as usize) % (img.len() + 1);
            let img = &img[..cut.max(img.len() / 2)];
            if let Ok(bz) = BzImage::parse(img) {
                let _ = bz.decompress(img);
            }
        }
    }
}
