//! A cache of host-decompressed kernels, so the same bzImage is decompressed once, not on
//! every boot (the Debian kernel's xz payload takes ~0.8 s to decompress).
//!
//! Location: `$FERROVM_CACHE_DIR`, else `$XDG_CACHE_HOME/ferrovm`, else
//! `$HOME/.cache/ferrovm`; entries live in `kernels/`. The key covers the kernel file's
//! identity (canonical path, device, inode, size, modification time) and ferrovm's
//! version. Entries are written atomically (temporary file + rename) and validated as ELF
//! when read; any cache failure falls back to decompressing, with a debug log.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The cache directory, if one can be determined.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("FERROVM_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("ferrovm")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("ferrovm")))
}

/// The cache key of the kernel file at `path`.
pub fn key(path: &Path) -> std::io::Result<String> {
    let canonical = std::fs::canonicalize(path)?;
    let m = std::fs::metadata(&canonical)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        canonical,
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        env!("CARGO_PKG_VERSION"),
    )
        .hash(&mut h);
    Ok(format!("{:016x}", h.finish()))
}

fn entry(dir: &Path, key: &str) -> PathBuf {
    dir.join("kernels").join(format!("{key}.vmlinux"))
}

/// Maps `path` read-only.
pub fn map_file(path: &Path) -> std::io::Result<arch::linux::KernelBytes> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(arch::linux::KernelBytes::Owned(Vec::new()));
    }
    // SAFETY: a private read-only mapping; ferrovm never writes through it. Like any
    // reader of a file, it assumes the file is not truncated while the VM is being built.
    let map = unsafe { memmap2::Mmap::map(&file) }?;
    Ok(arch::linux::KernelBytes::Mapped(map))
}

/// The cached uncompressed kernel for `key`, if present and a valid ELF.
pub fn lookup(dir: &Path, key: &str) -> Option<arch::linux::KernelBytes> {
    let p = entry(dir, key);
    let bytes = map_file(&p).ok()?;
    match kernel::ElfInfo::parse(&bytes) {
        Ok(_) => Some(bytes),
        Err(e) => {
            tracing::debug!(
                "kernel cache entry {} is invalid ({e}); ignoring it",
                p.display()
            );
            None
        }
    }
}

/// Stores `elf` under `key`; failures are logged and otherwise ignored.
pub fn store(dir: &Path, key: &str, elf: &[u8]) {
    let p = entry(dir, key);
    let result = (|| -> std::io::Result<()> {
        let parent = p.parent().ok_or(std::io::ErrorKind::NotFound)?;
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(".{key}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, elf)?;
        std::fs::rename(&tmp, &p).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    })();
    if let Err(e) = result {
        tracing::debug!("cannot store kernel cache entry {}: {e}", p.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_the_file() {
        let dir = std::env::temp_dir().join(format!("ferrovm-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k");
        std::fs::write(&f, b"one").unwrap();
        let k1 = key(&f).unwrap();
        assert_eq!(k1, key(&f).unwrap());
        std::fs::write(&f, b"three").unwrap();
        assert_ne!(k1, key(&f).unwrap());
        assert!(key(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn store_then_lookup_validates() {
        let dir = std::env::temp_dir().join(format!("ferrovm-kc2-{}", std::process::id()));
        store(&dir, "bad", b"not an elf");
        assert!(lookup(&dir, "bad").is_none(), "invalid entries are ignored");
        assert!(lookup(&dir, "absent").is_none());
        // Storing into an unwritable place is not an error.
        store(Path::new("/proc/ferrovm-cannot-write"), "x", b"y");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
