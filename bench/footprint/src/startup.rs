//! Start-up and shut-down of a VMM process on this host's `/dev/kvm`, timed from outside:
//! `exec` (the spawn) to the first byte the guest writes on the serial port (its first
//! instruction, plus one port exit), and from that byte to the process's exit (the
//! guest's power-off is its next instruction). Runs of ferrovm and of the bare
//! `bare-kvm-start` baseline alternate, for each guest memory size.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::guest::FIRST_BYTE;

/// One timed run, ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Spawn to the guest's first byte.
    pub to_first: f64,
    /// First byte to process exit.
    pub to_exit: f64,
}

/// Runs `cmd` once: its stdout must start with the guest's byte and it must exit 0.
pub fn time_once(cmd: &mut Command) -> Result<Timing, String> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut b = [0u8; 1];
    let first = stdout.read(&mut b);
    let t1 = Instant::now();
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for {cmd:?}: {e}"))?;
    let t2 = Instant::now();
    match first {
        Ok(1) if b[0] == FIRST_BYTE => {}
        r => {
            return Err(format!(
                "{cmd:?}: expected the guest's {:?} first, read {r:?} {:?}; stderr: {}",
                FIRST_BYTE as char,
                b[0] as char,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} ended with {}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    Ok(Timing {
        to_first: ms(t1 - t0),
        to_exit: ms(t2 - t1),
    })
}

/// The ferrovm command for a `mib` MiB guest running `image`.
pub fn ferrovm_cmd(ferrovm: &Path, image: &Path, mib: u64) -> Command {
    let mut c = Command::new(ferrovm);
    c.args(["run", "--mem", &format!("{mib}M"), "--raw"])
        .arg(image);
    c
}

/// The baseline's command for a `mib` MiB guest.
pub fn bare_cmd(bare: &Path, mib: u64) -> Command {
    let mut c = Command::new(bare);
    c.arg(mib.to_string());
    c
}

/// Samples of one program at one memory size.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Spawn to first byte, ms.
    pub to_first: Vec<f64>,
    /// First byte to exit, ms.
    pub to_exit: Vec<f64>,
}

impl Samples {
    /// Adds one run.
    pub fn push(&mut self, t: Timing) {
        self.to_first.push(t.to_first);
        self.to_exit.push(t.to_exit);
    }
}
