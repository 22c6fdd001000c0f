//! Decompresses the installed Debian kernel (`linux-image-amd64`, a setup package) and
//! checks the resulting ELF. Fails loudly when no `/boot/vmlinuz-*` exists.

use kernel::{Compression, KernelImage};

fn newest_vmlinuz() -> std::path::PathBuf {
    let mut found: Vec<_> = std::fs::read_dir("/boot")
        .expect("read /boot")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no /boot/vmlinuz-* found: install linux-image-amd64 (scripts/setup.sh does)")
    })
}

#[test]
fn decompresses_installed_debian_kernel() {
    let path = newest_vmlinuz();
    let image = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let parsed = KernelImage::parse(&image).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let KernelImage::BzImage(bz) = &parsed else {
        panic!("{} is not a bzImage", path.display());
    };
    assert!(bz.header.is_64bit());
    assert!(bz.header.is_relocatable());
    assert!(
        bz.header.version >= 0x020c,
        "protocol {:#x}",
        bz.header.version
    );
    assert_eq!(bz.compression, Compression::Xz, "Debian compresses with xz");
    let (vmlinux, info) = parsed.to_vmlinux(&image).expect("decompress");
    assert!(
        vmlinux.len() > 20 << 20,
        "vmlinux only {} bytes",
        vmlinux.len()
    );
    assert!(!info.segments.is_empty());
    // The kernel links at 16 MiB physical (CONFIG_PHYSICAL_START); e_entry is the
    // physical address of startup_64 (ENTRY(phys_startup_64)); it has the PVH note.
    assert_eq!(info.lowest_paddr(), 0x100_0000);
    assert_eq!(info.entry, info.lowest_paddr(), "entry {:#x}", info.entry);
    let pvh = info.pvh_entry.expect("Debian kernel has a PVH note");
    assert!(
        pvh >= info.lowest_paddr() && pvh < info.highest_paddr_end(),
        "pvh {pvh:#x}"
    );
    assert!(u64::from(bz.header.init_size) >= info.highest_paddr_end() - info.lowest_paddr());
}
