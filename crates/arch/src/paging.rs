//! Identity page tables for entering long mode: the first 4 GiB mapped with 2 MiB pages.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{PAGE_SIZE, PDPT_START, PD_COUNT, PD_START, PML4_START};
use crate::{Error, Result};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const ENTRIES: u64 = 512;
const HUGE_PAGE: u64 = 2 << 20;

/// The page-table bytes `(guest address, contents)` that identity-map the first 4 GiB.
pub fn identity_tables() -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pml4 = vec![0u8; PAGE_SIZE as usize];
    pml4[..8].copy_from_slice(&(PDPT_START | PRESENT | WRITABLE).to_le_bytes());
    out.push((PML4_START, pml4));
    let mut pdpt = vec![0u8; PAGE_SIZE as usize];
    for i in 0..PD_COUNT {
        let e = (PD_START + i * PAGE_SIZE) | PRESENT | WRITABLE;
        pdpt[i as usize * 8..][..8].copy_from_slice(&e.to_le_bytes());
    }
    out.push((PDPT_START, pdpt));
    for d in 0..PD_COUNT {
        let mut pd = vec![0u8; PAGE_SIZE as usize];
        for i in 0..ENTRIES {
            let phys = (d * ENTRIES + i) * HUGE_PAGE;
            let e = phys | PRESENT | WRITABLE | HUGE;
            pd[i as usize * 8..][..8].copy_from_slice(&e.to_le_bytes());
        }
        out.push((PD_START + d * PAGE_SIZE, pd));
    }
    out
}

/// Writes the identity tables into guest memory; returns the CR3 value.
pub fn write_identity_tables<M: GuestMemory>(mem: &M) -> Result<u64> {
    for (addr, bytes) in identity_tables() {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| Error::GuestWrite {
                what: "page table",
                addr,
                source,
            })?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tables: &[(u64, Vec<u8>)], table: u64, idx: u64) -> u64 {
        let t = &tables.iter().find(|(a, _)| *a == table).unwrap().1;
        u64::from_le_bytes(t[idx as usize * 8..][..8].try_into().unwrap())
    }

    /// Walks the tables like the MMU would for a 2 MiB mapping.
    fn translate(tables: &[(u64, Vec<u8>)], va: u64) -> Option<u64> {
        let l4 = entry(tables, PML4_START, (va >> 39) & 511);
        if l4 & PRESENT == 0 {
            return None;
        }
        let l3 = entry(tables, l4 & !0xfff, (va >> 30) & 511);
        if l3 & PRESENT == 0 {
            return None;
        }
        let l2 = entry(tables, l3 & !0xfff, (va >> 21) & 511);
        assert_ne!(l2 & HUGE, 0);
        Some((l2 & !0x1f_ffff & !(1 << 63)) | (va & 0x1f_ffff))
    }

    #[test]
    fn first_four_gib_is_identity_mapped() {
        let t = identity_tables();
        for va in [0, 0x1234, 0x10_0000, 0xbfff_ffff, 0xc000_0000, 0xffff_ffff] {
            assert_eq!(translate(&t, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&t, 0x1_0000_0000), None);
    }
}
