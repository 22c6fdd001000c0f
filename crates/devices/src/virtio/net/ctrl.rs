//! Control queue commands (virtio 1.2, section 5.1.6.5): `struct virtio_net_ctrl { u8
//! class; u8 command; u8 data[]; u8 ack; }`, the class, command and data device-readable,
//! the ack the last device-writable byte.
//!
//! Served: `MQ / VQ_PAIRS_SET` (1 to the device's pairs; the device then uses that many),
//! `RX` mode commands (acknowledged: every frame is delivered anyway, as in promiscuous
//! mode), `MAC / TABLE_SET` (acknowledged when well formed: no filtering). Everything else
//! (features not offered) is answered VIRTIO_NET_ERR.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_net as vn;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::{add, Shared};
use crate::virtio::worker::Chain;
use crate::virtio::GuestMemoryMmap;

/// Acknowledgements.
pub const OK: u8 = vn::VIRTIO_NET_OK as u8;
pub const ERR: u8 = vn::VIRTIO_NET_ERR as u8;

/// The most command bytes read (a MAC table of about 10000 addresses).
pub const MAX_COMMAND: usize = 64 << 10;

const CLASS_RX: u8 = vn::VIRTIO_NET_CTRL_RX as u8;
const CLASS_MAC: u8 = vn::VIRTIO_NET_CTRL_MAC as u8;
const CLASS_MQ: u8 = vn::VIRTIO_NET_CTRL_MQ as u8;
const RX_LAST: u8 = vn::VIRTIO_NET_CTRL_RX_NOBCAST as u8;
const MAC_TABLE_SET: u8 = vn::VIRTIO_NET_CTRL_MAC_TABLE_SET as u8;
const VQ_PAIRS_SET: u8 = vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;

/// Serves one control chain; returns the used length (1: the ack was written; 0: the
/// chain had no usable ack byte and is returned untouched).
pub(crate) fn handle(mem: &GuestMemoryMmap, chain: Chain<'_>, shared: &Shared, mq: bool) -> u32 {
    let mut cmd = Vec::new();
    let mut ack: Option<GuestAddress> = None;
    let mut writable_seen = false;
    let mut malformed = false;
    for d in chain {
        let len = d.len() as usize;
        if d.is_write_only() {
            writable_seen = true;
            // Only the last device-writable byte counts.
            ack = (len > 0 && mem.check_range(d.addr(), len))
                .then(|| d.addr().unchecked_add(u64::from(d.len()) - 1));
            continue;
        }
        if writable_seen || cmd.len() + len > MAX_COMMAND {
            // Readable after writable, or longer than any command.
            malformed = true;
            continue;
        }
        let at = cmd.len();
        cmd.resize(at + len, 0);
        if mem.read_slice(&mut cmd[at..], d.addr()).is_err() {
            malformed = true;
        }
    }
    let Some(ack) = ack else {
        tracing::debug!(
            "{}: control command without an ack byte; ignored",
            shared.name
        );
        add(&shared.pairs[0].stats.bad_chains, 1);
        return 0;
    };
    let status = match (malformed, cmd.as_slice()) {
        (false, [class, command, data @ ..]) => command_status(shared, mq, *class, *command, data),
        _ => ERR,
    };
    if status != OK {
        tracing::debug!(
            "{}: control command {:?} refused",
            shared.name,
            cmd.get(..2.min(cmd.len()))
        );
    }
    match mem.write_obj(status, ack) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

fn command_status(shared: &Shared, mq: bool, class: u8, command: u8, data: &[u8]) -> u8 {
    match (class, command) {
        (CLASS_RX, 0..=RX_LAST) if data.len() == 1 => OK,
        (CLASS_MAC, MAC_TABLE_SET) if mac_tables_well_formed(data) => OK,
        (CLASS_MQ, VQ_PAIRS_SET) if mq => {
            let [lo, hi] = data else {
                return ERR;
            };
            let n = u16::from_le_bytes([*lo, *hi]);
            if n == 0 || usize::from(n) > shared.pairs.len() {
                return ERR;
            }
            if shared.active_pairs.load(Ordering::SeqCst) != n {
                shared.set_active_pairs(n);
            }
            OK
        }
        _ => ERR,
    }
}

/// Two `struct virtio_net_ctrl_mac { le32 entries; u8 macs[entries][6]; }`, back to back,
/// filling `data` exactly.
fn mac_tables_well_formed(data: &[u8]) -> bool {
    let mut rest = data;
    for _ in 0..2 {
        let Some((n, tail)) = rest.split_first_chunk::<4>() else {
            return false;
        };
        let n = u32::from_le_bytes(*n) as usize;
        let Some(bytes) = n.checked_mul(6) else {
            return false;
        };
        if tail.len() < bytes {
            return false;
        }
        rest = &tail[bytes..];
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_tables_must_fill_the_command_exactly() {
        let mut t = Vec::new();
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        t.extend_from_slice(&0u32.to_le_bytes());
        assert!(mac_tables_well_formed(&t));
        assert!(!mac_tables_well_formed(&t[..t.len() - 1]));
        let mut long = t.clone();
        long.push(0);
        assert!(!mac_tables_well_formed(&long));
        assert!(!mac_tables_well_formed(&u32::MAX.to_le_bytes()));
        assert!(!mac_tables_well_formed(&[]));
    }
}
