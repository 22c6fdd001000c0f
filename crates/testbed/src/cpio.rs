//! A writer for cpio "newc" archives (the initramfs format the Linux kernel unpacks).
//!
//! Format (Documentation/driver-api/early-userspace/buffer-format.rst): each entry is a
//! 110-byte ASCII header ("070701" and 13 eight-digit hex fields), the NUL-terminated
//! name padded to 4 bytes, then the data padded to 4 bytes; the archive ends with an
//! entry named "TRAILER!!!". The kernel accepts several archives concatenated, later
//! entries overriding earlier ones.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::Command;

use crate::error::{io_err, Error, Result};

const NEWC_MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Streams a newc archive into `W`. Parent directories of every entry are emitted
/// automatically (once per archive), so entries may be added in any order.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    dirs: HashSet<String>,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
            dirs: HashSet::new(),
        }
    }

    /// A directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let name = normalize(path)?;
        if name.is_empty() {
            return Ok(());
        }
        self.parents(&name)?;
        if self.dirs.insert(name.clone()) {
            self.header(&name, S_IFDIR | (mode & 0o7777), 2, 0, (0, 0))?;
        }
        Ok(())
    }

    /// A regular file with the given bytes.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.file_from_reader(path, mode, data.len() as u64, data)
    }

    /// A regular file of exactly `size` bytes read from `reader`.
    pub fn file_from_reader(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        reader: impl Read,
    ) -> io::Result<()> {
        let name = normalize(path)?;
        self.parents(&name)?;
        let size32 = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: {size} bytes exceed newc's 4 GiB limit"),
            )
        })?;
        self.header(&name, S_IFREG | (mode & 0o7777), 1, size32, (0, 0))?;
        let copied = io::copy(&mut reader.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: expected {size} bytes, got {copied}"),
            ));
        }
        self.written += copied;
        self.pad()
    }

    /// A symbolic link `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let name = normalize(path)?;
        self.parents(&name)?;
        self.header(&name, S_IFLNK | 0o777, 1, target.len() as u32, (0, 0))?;
        self.raw(target.as_bytes())?;
        self.pad()
    }

    /// A character device node (e.g. `/dev/console`, 5:1).
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let name = normalize(path)?;
        self.parents(&name)?;
        self.header(&name, S_IFCHR | (mode & 0o7777), 1, 0, (major, minor))
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 1, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, name: &str) -> io::Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                let p = prefix.clone();
                self.header(&p, S_IFDIR | 0o755, 2, 0, (0, 0))?;
            }
        }
        Ok(())
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        filesize: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut h = String::with_capacity(110);
        h.push_str(NEWC_MAGIC);
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.raw(h.as_bytes())?;
        self.raw(name.as_bytes())?;
        self.raw(&[0])?;
        self.pad()
    }

    fn raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.raw(&[0u8; 3][..n])
    }
}

/// "/a//b/" -> "a/b"; rejects "..", which the kernel would refuse anyway.
fn normalize(path: &str) -> io::Result<String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpio path {path:?} contains \"..\""),
        ));
    }
    Ok(parts.join("/"))
}

/// Adds a host file (following symlinks) to an archive.
pub(crate) fn add_host_file<W: Write>(
    c: &mut CpioWriter<W>,
    host: &Path,
    path: &str,
    mode: u32,
) -> std::io::Result<()> {
    let f = std::fs::File::open(host)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", host.display())))?;
    let size = f.metadata()?.len();
    c.file_from_reader(path, mode, size, f)
}

/// Adds busybox at `/bin/busybox` with a `/bin/<applet>` symlink for each applet, so
/// no `--install` is needed at boot.
pub(crate) fn add_busybox<W: Write>(c: &mut CpioWriter<W>, busybox: &Path) -> Result<()> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|source| Error::Spawn {
            program: busybox.to_path_buf(),
            source,
        })?;
    let list = String::from_utf8_lossy(&out.stdout);
    let w = io_err("add busybox to initramfs from", busybox);
    add_host_file(c, busybox, "bin/busybox", 0o755).map_err(w)?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
    {
        c.symlink(&format!("bin/{applet}"), "busybox")
            .map_err(io_err("add busybox applet link for", busybox))?;
    }
    if list.lines().count() < 50 {
        return Err(Error::MissingArtifact {
            what: "busybox with an applet list (`busybox --list` printed little)",
            path: busybox.to_path_buf(),
            package: "busybox-static",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal newc reader for the tests: (name, mode, data).
    fn entries(mut a: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let mut pos = 0usize;
        loop {
            assert_eq!(&a[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&a[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            let mode = field(1);
            let size = field(6) as usize;
            let namesize = field(11) as usize;
            let name = String::from_utf8(a[110..110 + namesize - 1].to_vec()).unwrap();
            let data_start = (pos + 110 + namesize).next_multiple_of(4) - pos;
            let data = a[data_start..data_start + size].to_vec();
            let next = (pos + data_start + size).next_multiple_of(4) - pos;
            pos += next;
            a = &a[next..];
            if name == TRAILER {
                assert!(a.is_empty());
                return v;
            }
            v.push((name, mode, data));
        }
    }

    #[test]
    fn writes_parsable_newc_with_parents() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/usr/bin/tool", 0o755, b"hello").unwrap();
        w.dir("/usr", 0o755).unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        let a = w.finish().unwrap();
        assert_eq!(a.len() % 4, 0);
        let e = entries(&a);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "bin",
                "bin/sh",
                "dev",
                "dev/console"
            ]
        );
        assert_eq!(e[2].1, S_IFREG | 0o755);
        assert_eq!(e[2].2, b"hello");
        assert_eq!(e[4].2, b"busybox");
        assert_eq!(e[6].1, S_IFCHR | 0o600);
    }

    #[test]
    fn rejects_dotdot() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/a/../etc/passwd", 0o644, b"").is_err());
    }
}
