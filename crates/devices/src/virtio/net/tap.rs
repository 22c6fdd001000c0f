//! A Linux tap device as a [`NetBackend`] (`Documentation/networking/tuntap.rst`,
//! `include/uapi/linux/if_tun.h`): opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (and
//! `IFF_MULTI_QUEUE`, one descriptor per queue pair, for more than one pair), a 12-byte
//! vnet header (`struct virtio_net_hdr_v1`, what virtio 1.x uses), non-blocking.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::backend::{FrameBufs, NetBackend, Recv};
use super::VNET_HDR_LEN;

/// The clone device taps are made from.
pub const TUN_PATH: &str = "/dev/net/tun";

/// The longest interface name (`IFNAMSIZ` less the terminating NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// The most queues the kernel gives one tap (`MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// Why a tap could not be opened or set up. Every message names the tap and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {name:?} is invalid: it must be 1 to {MAX_NAME_LEN} characters without '/', ':', whitespace or NUL")]
    BadName { name: String },
    #[error("tap {name}: {count} queues asked for; a tap has 1 to {MAX_QUEUES}")]
    BadQueueCount { name: String, count: usize },
    #[error("tap {name}: {TUN_PATH} does not exist or has no driver ({source}); load the tun module (`modprobe tun`)")]
    TunMissing {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "tap {name}: cannot open {TUN_PATH} ({source}); give your user read/write access to it"
    )]
    TunAccess {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap {name}: not permitted ({source}); creating a tap needs CAP_NET_ADMIN; create it beforehand with `ip tuntap add {name} mode tap{mq} user $USER` and give your user access, or run as root")]
    Permission {
        name: String,
        /// ` multi_queue` when several queues were asked for.
        mq: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("tap {name} cannot be opened with {queues} queues: it exists without multi_queue (recreate it: `ip tuntap del {name} mode tap && ip tuntap add {name} mode tap multi_queue user $USER`), or {name} is not a tap")]
    NotMultiQueue { name: String, queues: usize },
    #[error("tap {name} cannot be opened as a single-queue tap: it was created with multi_queue (use as many queue pairs as you like, or recreate it without multi_queue), or {name} is not a tap (a tun device or another interface)")]
    NotSingleQueue { name: String },
    #[error(
        "tap {name} is in use by another program (a single-queue tap takes one user at a time)"
    )]
    Busy { name: String },
    #[error("tap {name}: {op} failed: {source}")]
    Ioctl {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// One queue of a tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    multi_queue: bool,
    /// Multi-queue: whether the queue is attached (receives frames).
    attached: AtomicBool,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

/// An `ifreq` naming `name` with `flags`.
fn ifreq(name: &str, flags: libc::c_int) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name array and a union of integers, addresses and a
    // pointer); all zeroes is a valid value of every member.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = b as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    ifr
}

impl Tap {
    /// Opens tap `name` with one queue, creating it if it does not exist (which needs
    /// CAP_NET_ADMIN). A name with `%d` lets the kernel pick the number ([`Tap::name`]
    /// tells which).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Tap::open_one(name, false, 1)
    }

    /// Opens `count` queues of tap `name`: one plain queue for 1, `count` descriptors of a
    /// multi-queue tap otherwise (an existing tap must have been created `multi_queue`).
    pub fn open_queues(name: &str, count: usize) -> Result<Vec<Tap>, TapError> {
        if count == 0 || count > MAX_QUEUES {
            return Err(TapError::BadQueueCount {
                name: name.into(),
                count,
            });
        }
        if count == 1 {
            return Ok(vec![Tap::open(name)?]);
        }
        let first = Tap::open_one(name, true, count)?;
        // `%d` names resolve with the first queue; the others join that tap.
        let actual = first.name.clone();
        let mut taps = vec![first];
        for _ in 1..count {
            taps.push(Tap::open_one(&actual, true, count)?);
        }
        Ok(taps)
    }

    fn open_one(name: &str, multi_queue: bool, queues: usize) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName { name: name.into() });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TapError::TunMissing {
                    name: name.into(),
                    source,
                },
                _ => TapError::TunAccess {
                    name: name.into(),
                    source,
                },
            })?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut ifr = ifreq(name, flags);
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `ifr` is a live, writable
        // ifreq owned by this frame.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if r < 0 {
            let source = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => TapError::Permission {
                    name,
                    mq: if multi_queue { " multi_queue" } else { "" },
                    source,
                },
                Some(libc::EINVAL) if multi_queue => TapError::NotMultiQueue { name, queues },
                Some(libc::EINVAL) => TapError::NotSingleQueue { name },
                Some(libc::EBUSY) => TapError::Busy { name },
                _ => TapError::Ioctl {
                    name,
                    op: "TUNSETIFF",
                    source,
                },
            });
        }
        // The kernel wrote back the interface's name (with any `%d` filled in).
        let actual: Vec<u8> = ifr
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let tap = Tap {
            file,
            name: String::from_utf8_lossy(&actual).into_owned(),
            multi_queue,
            attached: AtomicBool::new(true),
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int; `hdr_len` is a live int.
        let r = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if r < 0 {
            return Err(tap.ioctl_err("TUNSETVNETHDRSZ"));
        }
        tap.set_offload(0).map_err(|source| TapError::Ioctl {
            name: tap.name.clone(),
            op: "TUNSETOFFLOAD",
            source,
        })?;
        Ok(tap)
    }

    /// A tap queue from a descriptor opened elsewhere (by a privileged helper, say), which
    /// must already have `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`; the vnet header size and
    /// non-blocking mode are set here.
    pub fn from_fd(fd: OwnedFd, name: &str) -> Result<Tap, TapError> {
        let tap = Tap {
            file: File::from(fd),
            name: name.into(),
            multi_queue: false,
            attached: AtomicBool::new(true),
        };
        let fd = tap.file.as_raw_fd();
        // SAFETY: F_GETFL on a descriptor we own; no memory is passed.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: F_SETFL on a descriptor we own; no memory is passed.
        if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(tap.ioctl_err("fcntl(O_NONBLOCK)"));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int; `hdr_len` is a live int.
        if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(tap.ioctl_err("TUNSETVNETHDRSZ"));
        }
        Ok(tap)
    }

    fn ioctl_err(&self, op: &'static str) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            op,
            source: io::Error::last_os_error(),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a queue of a multi-queue tap.
    pub fn is_multi_queue(&self) -> bool {
        self.multi_queue
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn has_vnet_hdr(&self) -> bool {
        true
    }

    fn recv(&mut self, frame: &mut FrameBufs<'_>) -> io::Result<Recv> {
        // The kernel returns the whole frame's length even when it had to cut it short.
        match frame.read_from(self.file.as_fd(), 0, usize::MAX)? {
            0 => Ok(Recv::Dropped),
            n => Ok(Recv::Frame(n)),
        }
    }

    fn send(&mut self, frame: &mut FrameBufs<'_>) -> io::Result<()> {
        frame.write_to(self.file.as_fd(), 0).map(|_| ())
    }

    fn set_offload(&self, tun_flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(tun_flags),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_queue_enabled(&self, enabled: bool) -> io::Result<()> {
        if !self.multi_queue || self.attached.load(Ordering::Relaxed) == enabled {
            return Ok(());
        }
        let flag = if enabled {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        let mut ifr = ifreq("", flag);
        // SAFETY: TUNSETQUEUE reads one `struct ifreq`; `ifr` is a live ifreq.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETQUEUE, &mut ifr) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.attached.store(enabled, Ordering::Relaxed);
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_opened() {
        for bad in [
            "",
            "a-name-that-is-too-long",
            "a/b",
            "a:b",
            "a b",
            "..",
            "x\0y",
        ] {
            let e = Tap::open(bad).unwrap_err();
            assert!(matches!(e, TapError::BadName { .. }), "{bad:?}: {e}");
        }
        assert!(valid_name("tap0") && valid_name("fvm%d") && valid_name("abcdefghijklmno"));
        let e = Tap::open_queues("tap0", 0).unwrap_err();
        assert!(e.to_string().contains("1 to 256"), "{e}");
    }

    #[test]
    fn error_messages_say_how_to_fix() {
        let e = TapError::Permission {
            name: "tap0".into(),
            mq: " multi_queue",
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        let m = e.to_string();
        assert!(
            m.contains("CAP_NET_ADMIN") && m.contains("ip tuntap add tap0 mode tap multi_queue")
        );
        let e = TapError::TunMissing {
            name: "tap0".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(e.to_string().contains("load the tun module"));
    }

    /// Opens a tap for real where this process may (root, or CAP_NET_ADMIN); skipped
    /// elsewhere.
    fn try_tap(name: &str) -> Option<Tap> {
        match Tap::open(name) {
            Ok(t) => Some(t),
            Err(
                e @ (TapError::Permission { .. }
                | TapError::TunMissing { .. }
                | TapError::TunAccess { .. }),
            ) => {
                eprintln!("skipped: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_created_tap_takes_offloads_and_refuses_a_second_mode() {
        let name = format!("fvt{}", std::process::id() % 100_000);
        let Some(tap) = try_tap(&name) else {
            return;
        };
        assert_eq!(tap.name(), name);
        assert!(tap.has_vnet_hdr() && !tap.is_multi_queue());
        tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
            .unwrap();
        tap.set_offload(0).unwrap();
        // Open and without multi_queue: a second queue cannot join it.
        let e = Tap::open_queues(&name, 2).unwrap_err();
        assert!(
            matches!(e, TapError::NotMultiQueue { queues: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("multi_queue"));
        // A single-queue tap takes one user at a time.
        let e = Tap::open(&name).unwrap_err();
        assert!(matches!(e, TapError::Busy { .. }), "{e}");
    }

    #[test]
    fn a_multi_queue_tap_opens_one_descriptor_per_queue() {
        let name = format!("fvm{}", std::process::id() % 100_000);
        let Some(probe) = try_tap(&format!("fvp{}", std::process::id() % 100_000)) else {
            return;
        };
        drop(probe);
        let taps = Tap::open_queues(&name, 3).unwrap();
        assert_eq!(taps.len(), 3);
        assert!(taps.iter().all(|t| t.is_multi_queue() && t.name() == name));
        taps[2].set_queue_enabled(false).unwrap();
        taps[2].set_queue_enabled(false).unwrap(); // already detached: nothing to do
        taps[2].set_queue_enabled(true).unwrap();
        let e = Tap::open(&name).unwrap_err();
        assert!(matches!(e, TapError::NotSingleQueue { .. }), "{e}");
    }
}
