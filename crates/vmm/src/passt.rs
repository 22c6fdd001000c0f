//! User networking through passt (Debian package `passt`): ferrovm starts one passt per
//! `--net user` interface, in the foreground and for one client, on a socket of its own,
//! and connects to it; frames then travel as QEMU's stream protocol (each prefixed by its
//! length). passt answers the guest's DHCP, DNS and ARP, and forwards the host ports asked
//! for into the guest. It ends when ferrovm closes the connection (`--one-off`), and is
//! killed if it has not.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::{HostFwd, Protocol};

/// Where passt is looked for (besides `$PATH`).
pub const PASST_PATHS: [&str; 2] = ["/usr/bin/passt", "/usr/local/bin/passt"];

/// How long passt has to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why user networking cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    /// Not installed.
    #[error("user networking needs passt, which is not installed: apt-get install passt (or use --net tap=NAME)")]
    NotInstalled,
    /// It could not be started.
    #[error("cannot start passt ({}): {source}", program.display())]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It exited at once.
    #[error("passt exited before it was ready ({status}): {output}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said.
        output: String,
    },
    /// Its socket did not appear.
    #[error("passt did not create its socket {} within {START_TIMEOUT:?}", socket.display())]
    NoSocket {
        /// The socket path.
        socket: PathBuf,
    },
    /// Its socket cannot be reached.
    #[error("cannot connect to passt's socket {}: {source}", socket.display())]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The passt binary: `$FERROVM_PASST`, else the first `passt` on `$PATH` or in
/// [`PASST_PATHS`].
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERROVM_PASST").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("passt"))
        .chain(PASST_PATHS.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// passt's `-t`/`-u` arguments for `fwd`: `[ADDR/]HOSTPORT:GUESTPORT`.
pub fn forward_args(fwd: &[HostFwd]) -> Vec<String> {
    let mut args = Vec::new();
    for f in fwd {
        args.push(
            match f.protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
            }
            .to_string(),
        );
        let addr = f.host_addr.map(|a| format!("{a}/")).unwrap_or_default();
        args.push(format!("{addr}{}:{}", f.host_port, f.guest_port));
    }
    args
}

/// A running passt.
pub struct Passt {
    child: Child,
    socket: PathBuf,
}

impl std::fmt::Debug for Passt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passt")
            .field("pid", &self.child.id())
            .field("socket", &self.socket)
            .finish()
    }
}

impl Passt {
    /// Starts passt for interface `index` with `fwd` and connects to it.
    pub fn start(
        index: usize,
        fwd: &[HostFwd],
        mtu: Option<u16>,
    ) -> Result<(Passt, UnixStream), PasstError> {
        let program = find().ok_or(PasstError::NotInstalled)?;
        let socket =
            std::env::temp_dir().join(format!("ferrovm-passt-{}-{index}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&program);
        cmd.args([
            "--foreground",
            "--one-off",
            "--quiet",
            "--stderr",
            "--socket",
        ])
        .arg(&socket)
        .args(forward_args(fwd));
        if let Some(m) = mtu {
            cmd.args(["--mtu", &m.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| PasstError::Spawn {
                program: program.clone(),
                source,
            })?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut output = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut output);
                }
                let output = output
                    .lines()
                    .filter(|l| !l.starts_with("Failed to send"))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(PasstError::Exited { status, output });
            }
            if socket.exists() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PasstError::NoSocket { socket });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // passt keeps writing to stderr (dropping to "nobody", its addresses): drain it
        // to the log so it never blocks on a full pipe.
        if let Some(stderr) = child.stderr.take() {
            let _ = seccomp::thread(format!("passt{index}-log"), seccomp::ThreadKind::PasstLog)
                .spawn(move || log_lines(index, stderr));
        }
        // The socket file appears at bind(), a moment before passt listens on it: until
        // then a connection is refused.
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline
                        && matches!(child.try_wait(), Ok(None)) =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(PasstError::Connect {
                        socket: socket.clone(),
                        source,
                    });
                }
            }
        };
        tracing::info!(
            "net{index}: user networking through passt (pid {}, {})",
            child.id(),
            socket.display()
        );
        Ok((Passt { child, socket }, stream))
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

fn log_lines(index: usize, stderr: std::process::ChildStderr) {
    use std::io::BufRead;
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        if !line.starts_with("Failed to send") && !line.trim().is_empty() {
            tracing::info!("passt (net{index}): {line}");
        }
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        // With --one-off it leaves when our connection closes; do not wait on that.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_forwards_become_passt_arguments() {
        let fwd =
            crate::net::parse_net("user,hostfwd=tcp::8080-:80,hostfwd=udp:127.0.0.1:53-:5353")
                .unwrap();
        let crate::net::NetBackendConfig::User { hostfwd } = fwd.backend else {
            panic!()
        };
        assert_eq!(
            forward_args(&hostfwd),
            vec!["-t", "8080:80", "-u", "127.0.0.1/53:5353"]
        );
    }
}
