//! Validation of an ELF `vmlinux`: 64-bit little-endian x86_64, `PT_LOAD` segments,
//! entry point, and the PVH entry note.

use crate::bytes::{slice, u16_at, u32_at, u64_at};
use crate::{Error, Result};

/// `\x7fELF`.
pub const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// Xen ELF note type giving the 32-bit PVH entry point (physical address).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const ELF64_EHDR_SIZE: usize = 64;
const ELF64_PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// Bound on program headers, far above any kernel's (usually 5).
const MAX_PHDRS: usize = 256;
const XEN_NOTE_NAME: &[u8] = b"Xen\0";

/// One `PT_LOAD` program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// Physical load address (`p_paddr`).
    pub paddr: u64,
    /// Virtual address (`p_vaddr`).
    pub vaddr: u64,
    /// Offset of the file bytes (`p_offset`).
    pub offset: u64,
    /// Bytes taken from the file (`p_filesz`).
    pub filesz: u64,
    /// Bytes in memory; the part past `filesz` is zeroed (`p_memsz`).
    pub memsz: u64,
    /// `p_flags` (PF_X = 1, PF_W = 2, PF_R = 4).
    pub flags: u32,
}

/// What a VMM needs from an ELF `vmlinux`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_entry` (for Linux vmlinux: the physical address of `startup_64`).
    pub entry: u64,
    /// `PT_LOAD` segments in program-header order; file ranges checked.
    pub segments: Vec<LoadSegment>,
    /// PVH 32-bit entry point (physical) from the `XEN_ELFNOTE_PHYS32_ENTRY` note.
    pub pvh_entry: Option<u64>,
}

impl ElfInfo {
    /// Parses and validates an ELF64 x86_64 executable; data past the ELF (the
    /// relocations a bzImage payload carries) is ignored.
    pub fn parse(elf: &[u8]) -> Result<Self> {
        const W: &str = "ELF header";
        let ident = slice(elf, 0, 16, W)?;
        if ident[..4] != ELF_MAGIC {
            return Err(Error::NotAKernel("no ELF magic"));
        }
        match ident[EI_CLASS] {
            ELFCLASS64 => {}
            ELFCLASS32 => return Err(Error::Not64Bit("ELF class is ELFCLASS32")),
            other => return Err(Error::BadElf(format!("unknown ELF class {other}"))),
        }
        if ident[EI_DATA] != ELFDATA2LSB {
            return Err(Error::BadElf(format!(
                "ELF data encoding {} is not little-endian",
                ident[EI_DATA]
            )));
        }
        slice(elf, 0, ELF64_EHDR_SIZE, W)?;
        let machine = u16_at(elf, 18, W)?;
        if machine != EM_X86_64 {
            return Err(Error::BadElf(format!(
                "e_machine {machine} is not x86_64 (62)"
            )));
        }
        let entry = u64_at(elf, 24, W)?;
        let phoff = u64_at(elf, 32, W)?;
        let phentsize = usize::from(u16_at(elf, 54, W)?);
        let phnum = usize::from(u16_at(elf, 56, W)?);
        if phentsize < ELF64_PHDR_SIZE {
            return Err(Error::BadElf(format!(
                "e_phentsize {phentsize} < {ELF64_PHDR_SIZE}"
            )));
        }
        if phnum == 0 || phnum > MAX_PHDRS {
            return Err(Error::BadElf(format!(
                "e_phnum {phnum} out of range 1..={MAX_PHDRS}"
            )));
        }
        let phoff = usize::try_from(phoff)
            .map_err(|_| Error::BadElf(format!("e_phoff {phoff:#x} too large")))?;
        let table = slice(elf, phoff, phentsize * phnum, "ELF program headers")?;

        let mut segments = Vec::new();
        let mut pvh_entry = None;
        for ph in table.chunks_exact(phentsize) {
            const P: &str = "ELF program header";
            let p_type = u32_at(ph, 0, P)?;
            let flags = u32_at(ph, 4, P)?;
            let offset = u64_at(ph, 8, P)?;
            let vaddr = u64_at(ph, 16, P)?;
            let paddr = u64_at(ph, 24, P)?;
            let filesz = u64_at(ph, 32, P)?;
            let memsz = u64_at(ph, 40, P)?;
            match p_type {
                PT_LOAD => {
                    if filesz > memsz {
                        return Err(Error::BadElf(format!(
                            "PT_LOAD at paddr {paddr:#x}: p_filesz {filesz:#x} > p_memsz {memsz:#x}"
                        )));
                    }
                    file_range(elf, offset, filesz, "PT_LOAD segment")?;
                    segments.push(LoadSegment {
                        paddr,
                        vaddr,
                        offset,
                        filesz,
                        memsz,
                        flags,
                    });
                }
                PT_NOTE => {
                    let notes = file_range(elf, offset, filesz, "PT_NOTE segment")?;
                    if let Some(e) = find_pvh_note(notes) {
                        pvh_entry = Some(e);
                    }
                }
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err(Error::BadElf("no PT_LOAD segment".into()));
        }
        Ok(ElfInfo {
            entry,
            segments,
            pvh_entry,
        })
    }

    /// Lowest physical address of any `PT_LOAD` segment.
    pub fn lowest_paddr(&self) -> u64 {
        self.segments.iter().map(|s| s.paddr).min().unwrap_or(0)
    }

    /// One past the highest physical address covered by a `PT_LOAD` segment's memory.
    pub fn highest_paddr_end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.paddr.saturating_add(s.memsz))
            .max()
            .unwrap_or(0)
    }
}

fn file_range<'a>(elf: &'a [u8], offset: u64, len: u64, what: &'static str) -> Result<&'a [u8]> {
    let (Ok(off), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
        return Err(Error::BadElf(format!(
            "{what}: offset {offset:#x} + {len:#x} too large"
        )));
    };
    slice(elf, off, len, what)
}

/// Walks ELF notes (`namesz`, `descsz`, `type`, name, desc; 4-byte aligned) for
/// Xen's PHYS32_ENTRY. The descriptor is 4 or 8 bytes (Linux emits a pointer).
fn find_pvh_note(mut notes: &[u8]) -> Option<u64> {
    const N: &str = "ELF note";
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0, N).ok()? as usize;
        let descsz = u32_at(notes, 4, N).ok()? as usize;
        let n_type = u32_at(notes, 8, N).ok()?;
        let name_end = 12usize.checked_add(align4(namesz)?)?;
        let desc_end = name_end.checked_add(align4(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end.checked_add(descsz)?)?;
        if name == XEN_NOTE_NAME && n_type == XEN_ELFNOTE_PHYS32_ENTRY {
            return match desc.len() {
                4 => u32_at(desc, 0, N).ok().map(u64::from),
                8 => u64_at(desc, 0, N).ok(),
                _ => None,
            };
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&n_type.to_le_bytes());
        v.extend_from_slice(name);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend_from_slice(desc);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    /// A minimal ELF64 x86_64 with one PT_LOAD (0x100 bytes at paddr 0x100_0000) and a
    /// PT_NOTE holding a GNU note and the Xen PVH note.
    pub(crate) fn synthetic_elf(pvh: Option<u64>) -> Vec<u8> {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6, 7, 8]);
        if let Some(e) = pvh {
            notes.extend(note(
                XEN_NOTE_NAME,
                XEN_ELFNOTE_PHYS32_ENTRY,
                &e.to_le_bytes(),
            ));
        }
        let phoff = 64usize;
        let phnum = 2usize;
        let notes_off = phoff + phnum * ELF64_PHDR_SIZE;
        let load_off = (notes_off + notes.len()).next_multiple_of(16);
        let mut f = vec![0u8; load_off + 0x100];
        f[..4].copy_from_slice(&ELF_MAGIC);
        f[EI_CLASS] = ELFCLASS64;
        f[EI_DATA] = ELFDATA2LSB;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[24..32].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        f[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&(ELF64_PHDR_SIZE as u16).to_le_bytes());
        f[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let mut ph = |i: usize,
                      t: u32,
                      flags: u32,
                      off: usize,
                      vaddr: u64,
                      paddr: u64,
                      filesz: usize,
                      memsz: usize| {
            let b = phoff + i * ELF64_PHDR_SIZE;
            f[b..b + 4].copy_from_slice(&t.to_le_bytes());
            f[b + 4..b + 8].copy_from_slice(&flags.to_le_bytes());
            f[b + 8..b + 16].copy_from_slice(&(off as u64).to_le_bytes());
            f[b + 16..b + 24].copy_from_slice(&vaddr.to_le_bytes());
            f[b + 24..b + 32].copy_from_slice(&paddr.to_le_bytes());
            f[b + 32..b + 40].copy_from_slice(&(filesz as u64).to_le_bytes());
            f[b + 40..b + 48].copy_from_slice(&(memsz as u64).to_le_bytes());
        };
        ph(
            0,
            PT_LOAD,
            5,
            load_off,
            0xffff_ffff_8100_0000,
            0x100_0000,
            0x100,
            0x1000,
        );
        ph(1, PT_NOTE, 4, notes_off, 0, 0, notes.len(), notes.len());
        f[notes_off..notes_off + notes.len()].copy_from_slice(&notes);
        f
    }

    #[test]
    fn parses_synthetic_elf_with_pvh_note() {
        let f = synthetic_elf(Some(0x100_0abc));
        let info = ElfInfo::parse(&f).unwrap();
        assert_eq!(info.entry, 0xffff_ffff_8100_0000);
        assert_eq!(info.pvh_entry, Some(0x100_0abc));
        assert_eq!(info.segments.len(), 1);
        let s = info.segments[0];
        assert_eq!(
            (s.paddr, s.filesz, s.memsz, s.flags),
            (0x100_0000, 0x100, 0x1000, 5)
        );
        assert_eq!(info.lowest_paddr(), 0x100_0000);
        assert_eq!(info.highest_paddr_end(), 0x100_1000);
        // Trailing data (relocs) is fine.
        let mut with_tail = f.clone();
        with_tail.extend_from_slice(&[0xab; 100]);
        assert_eq!(ElfInfo::parse(&with_tail).unwrap(), info);
    }

    #[test]
    fn no_pvh_note_is_none() {
        let info = ElfInfo::parse(&synthetic_elf(None)).unwrap();
        assert_eq!(info.pvh_entry, None);
    }

    #[test]
    fn rejects_bad_elves() {
        let good = synthetic_elf(Some(1));
        let mut c32 = good.clone();
        c32[EI_CLASS] = ELFCLASS32;
        assert!(matches!(ElfInfo::parse(&c32), Err(Error::Not64Bit(_))));
        let mut be = good.clone();
        be[EI_DATA] = 2;
        assert!(matches!(ElfInfo::parse(&be), Err(Error::BadElf(_))));
        let mut arm = good.clone();
        arm[18] = 183;
        assert!(matches!(ElfInfo::parse(&arm), Err(Error::BadElf(_))));
        assert!(matches!(
            ElfInfo::parse(&good[..40]),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            ElfInfo::parse(&good[..good.len() - 1]),
            Err(Error::Truncated { .. })
        ));
        let mut bigfile = good.clone();
        // PT_LOAD p_filesz > p_memsz
        bigfile[64 + 32..64 + 40].copy_from_slice(&0x2000u64.to_le_bytes());
        assert!(matches!(ElfInfo::parse(&bigfile), Err(Error::BadElf(_))));
    }

    #[test]
    fn mutated_elves_never_panic() {
        let good = synthetic_elf(Some(0x1234));
        let mut rng = crate::tests::Rng::new(99);
        for _ in 0..5000 {
            let mut f = good.clone();
            for _ in 0..(rng.next() % 6 + 1) {
                let i = (rng.next() as usize) % f.len();
                f[i] = rng.next() as u8;
            }
            let _ = ElfInfo::parse(&f);
        }
    }
}
