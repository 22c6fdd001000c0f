//! Network interfaces: `--net` specifications, QEMU style:
//!
//! - `tap=NAME[,mac=MAC][,mtu=N][,queues=N][,vhost=on|off][,id=ID]`: a tap device (an
//!   existing one, or one ferrovm creates and that disappears with it);
//! - `user[,hostfwd=tcp::HOSTPORT-:GUESTPORT]...[,mac=MAC][,mtu=N][,id=ID]`: networking
//!   without privileges through passt (its DHCP and DNS answer the guest; host ports are
//!   forwarded into it);
//!
//! plus `rx_bw=SIZE`, `tx_bw=SIZE` (bytes per second) and `rx_ops=N`, `tx_ops=N` (packets
//! per second) rate limits, and the same interfaces in Firecracker's API terms.

use std::net::IpAddr;

use crate::limits::parse_rate;
pub use crate::limits::{Bucket, Limits};
use crate::options::{on_off, split_options};

/// What an interface's packets go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// A tap device by name.
    Tap {
        /// The interface name on the host.
        name: String,
    },
    /// passt, with these host ports forwarded.
    User {
        /// Port forwards.
        hostfwd: Vec<HostFwd>,
    },
}

/// Transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A host port forwarded to a guest port (QEMU's
/// `hostfwd=[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`; passt forwards to the
/// guest's address, so a guest address is accepted but must be empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFwd {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host address to bind (all when `None`).
    pub host_addr: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The guest port.
    pub guest_port: u16,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Its id (the API's `iface_id`); `None`: `eth<N>`.
    pub id: Option<String>,
    /// The backend.
    pub backend: NetBackendConfig,
    /// The guest's MAC; `None`: a stable locally administered default.
    pub mac: Option<[u8; 6]>,
    /// The MTU the guest is told.
    pub mtu: Option<u16>,
    /// Queue pairs.
    pub queues: u16,
    /// Packets move in the kernel (vhost-net).
    pub vhost: bool,
    /// Receive rate limits.
    pub rx: Limits,
    /// Transmit rate limits.
    pub tx: Limits,
}

impl NetConfig {
    /// A tap interface with the defaults.
    pub fn tap(name: impl Into<String>) -> Self {
        NetConfig {
            id: None,
            backend: NetBackendConfig::Tap { name: name.into() },
            mac: None,
            mtu: None,
            queues: 1,
            vhost: false,
            rx: Limits::default(),
            tx: Limits::default(),
        }
    }

    /// The interface's id when it is interface `index`.
    pub fn name(&self, index: usize) -> String {
        self.id.clone().unwrap_or_else(|| format!("eth{index}"))
    }
}

/// Most queue pairs an interface can have (one interrupt line serves them all).
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// The keys `--net` accepts.
pub const NET_KEYS: &str =
    "tap, user, mac, mtu, queues, vhost, hostfwd, id, rx_bw, tx_bw, rx_ops, tx_ops";

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("mac={s:?}: expected six hex bytes like 02:00:00:12:34:56");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "mac={s:?} is a multicast address; a NIC needs a unicast one"
        ));
    }
    Ok(mac)
}

/// Formats a MAC address.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses one `hostfwd=` value.
pub fn parse_hostfwd(s: &str) -> Result<HostFwd, String> {
    let bad = |why: &str| {
        format!("hostfwd={s:?}: {why} (expected [tcp|udp]:[HOSTADDR]:HOSTPORT-:GUESTPORT, e.g. tcp::8080-:80)")
    };
    let (host, guest) = s.split_once('-').ok_or_else(|| bad("no '-'"))?;
    let mut h = host.splitn(3, ':');
    let (proto, addr, port) = match (h.next(), h.next(), h.next()) {
        (Some(p), Some(a), Some(port)) => (p, a, port),
        _ => return Err(bad("the host side is not PROTO:ADDR:PORT")),
    };
    let protocol = match proto {
        "" | "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(bad("the protocol is tcp or udp")),
    };
    let host_addr = if addr.is_empty() {
        None
    } else {
        Some(
            addr.parse()
                .map_err(|_| bad("the host address is not an IP address"))?,
        )
    };
    let parse_port = |p: &str| -> Result<u16, String> {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| bad("a port is 1-65535"))
    };
    let (gaddr, gport) = guest
        .rsplit_once(':')
        .ok_or_else(|| bad("the guest side is ADDR:PORT"))?;
    if !gaddr.is_empty() {
        return Err(bad(
            "passt forwards to the guest's own address: leave the guest address empty",
        ));
    }
    Ok(HostFwd {
        protocol,
        host_addr,
        host_port: parse_port(port)?,
        guest_port: parse_port(gport)?,
    })
}

/// Formats a port forward as `hostfwd=` takes it.
pub fn format_hostfwd(f: &HostFwd) -> String {
    let proto = match f.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let addr = f.host_addr.map(|a| a.to_string()).unwrap_or_default();
    format!("{proto}:{addr}:{}-:{}", f.host_port, f.guest_port)
}

/// Parses one `--net` value.
pub fn parse_net(spec: &str) -> Result<NetConfig, String> {
    let mut tap: Option<String> = None;
    let mut user = false;
    let mut hostfwd = Vec::new();
    let mut n = NetConfig::tap(String::new());
    for (i, opt) in split_options(spec).into_iter().enumerate() {
        if opt.is_empty() {
            continue;
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, v),
            None if opt == "user" => ("user", ""),
            None if i == 0 => ("tap", opt.as_str()),
            None => return Err(format!("{opt:?} is not key=value (keys: {NET_KEYS})")),
        };
        let rate = |v: &str| parse_rate(key, v);
        match key {
            "tap" => {
                if value.is_empty() || value.len() >= libc::IFNAMSIZ {
                    return Err(format!(
                        "tap={value:?}: a tap name is 1 to {} characters",
                        libc::IFNAMSIZ - 1
                    ));
                }
                tap = Some(value.to_string());
            }
            "user" => user = true,
            "hostfwd" => hostfwd.push(parse_hostfwd(value)?),
            "mac" => n.mac = Some(parse_mac(value)?),
            "mtu" => {
                n.mtu = Some(
                    value
                        .parse::<u16>()
                        .ok()
                        .filter(|&m| m >= 68)
                        .ok_or_else(|| format!("mtu={value:?}: expected 68 to 65535"))?,
                )
            }
            "queues" => {
                n.queues = value
                    .parse::<u16>()
                    .ok()
                    .filter(|&q| (1..=MAX_QUEUE_PAIRS).contains(&q))
                    .ok_or_else(|| format!("queues={value:?}: expected 1 to {MAX_QUEUE_PAIRS}"))?
            }
            "vhost" => n.vhost = on_off(key, value)?,
            "id" => {
                if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(format!(
                        "id={value:?}: ids are letters, digits and underscores"
                    ));
                }
                n.id = Some(value.to_string());
            }
            "rx_bw" => n.rx.bandwidth = Some(rate(value)?),
            "tx_bw" => n.tx.bandwidth = Some(rate(value)?),
            "rx_ops" => n.rx.ops = Some(rate(value)?),
            "tx_ops" => n.tx.ops = Some(rate(value)?),
            _ => return Err(format!("unknown net option {key:?} (keys: {NET_KEYS})")),
        }
    }
    n.backend = match (tap, user) {
        (Some(_), true) => return Err("a --net is either tap=NAME or user, not both".into()),
        (Some(name), false) => {
            if !hostfwd.is_empty() {
                return Err("hostfwd= is for user networking (--net user,hostfwd=...)".into());
            }
            NetBackendConfig::Tap { name }
        }
        (None, true) => {
            if n.vhost {
                return Err(
                    "vhost=on needs a tap (tap=NAME); user networking runs through passt".into(),
                );
            }
            if n.queues > 1 {
                return Err("queues= needs a tap (tap=NAME)".into());
            }
            NetBackendConfig::User { hostfwd }
        }
        (None, false) => {
            return Err(format!(
                "--net {spec:?} names no backend: give tap=NAME or user"
            ))
        }
    };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_specs() {
        let n =
            parse_net("tap=tap0,mac=02:00:00:00:00:2a,mtu=9000,queues=2,vhost=on,id=net0").unwrap();
        assert_eq!(
            n.backend,
            NetBackendConfig::Tap {
                name: "tap0".into()
            }
        );
        assert_eq!(n.mac, Some([2, 0, 0, 0, 0, 0x2a]));
        assert_eq!((n.mtu, n.queues, n.vhost), (Some(9000), 2, true));
        assert_eq!(n.name(3), "net0");
        let n = parse_net("tap1").unwrap();
        assert_eq!(
            n.backend,
            NetBackendConfig::Tap {
                name: "tap1".into()
            }
        );
        assert_eq!((n.queues, n.vhost, n.name(1)), (1, false, "eth1".into()));
        let n = parse_net("tap=t,rx_bw=10M,tx_ops=1000").unwrap();
        assert_eq!(n.rx.bandwidth, Some(Bucket::per_second(10 << 20)));
        assert_eq!(n.tx.ops, Some(Bucket::per_second(1000)));
        assert!(n.rx.ops.is_none() && n.tx.bandwidth.is_none());
    }

    #[test]
    fn user_specs_and_port_forwards() {
        let n = parse_net("user,hostfwd=tcp::8080-:80,hostfwd=udp:127.0.0.1:5353-:53").unwrap();
        let NetBackendConfig::User { hostfwd } = n.backend else {
            panic!()
        };
        assert_eq!(
            hostfwd,
            vec![
                HostFwd {
                    protocol: Protocol::Tcp,
                    host_addr: None,
                    host_port: 8080,
                    guest_port: 80
                },
                HostFwd {
                    protocol: Protocol::Udp,
                    host_addr: Some("127.0.0.1".parse().unwrap()),
                    host_port: 5353,
                    guest_port: 53
                },
            ]
        );
        assert!(matches!(
            parse_net("user").unwrap().backend,
            NetBackendConfig::User { .. }
        ));
        for h in &hostfwd_of("user,hostfwd=tcp::8080-:80,hostfwd=udp:127.0.0.1:5353-:53") {
            assert_eq!(parse_hostfwd(&format_hostfwd(h)).unwrap(), *h);
        }
    }

    fn hostfwd_of(spec: &str) -> Vec<HostFwd> {
        match parse_net(spec).unwrap().backend {
            NetBackendConfig::User { hostfwd } => hostfwd,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, want) in [
            ("", "names no backend"),
            ("mac=02:00:00:00:00:01", "names no backend"),
            ("tap=", "1 to 15 characters"),
            ("tap=averyveryverylongname", "1 to 15 characters"),
            ("tap=t,user", "not both"),
            ("tap=t,mac=01:00:00:00:00:01", "multicast"),
            ("tap=t,mac=zz:00:00:00:00:01", "six hex bytes"),
            ("tap=t,mac=02:00:00", "six hex bytes"),
            ("tap=t,mtu=20", "68 to 65535"),
            ("tap=t,queues=0", "1 to 16"),
            ("tap=t,queues=99", "1 to 16"),
            ("tap=t,vhost=maybe", "expected on or off"),
            ("tap=t,speed=fast", "unknown net option"),
            ("tap=t,hostfwd=tcp::1-:2", "for user networking"),
            ("user,vhost=on", "needs a tap"),
            ("user,queues=2", "needs a tap"),
            ("user,hostfwd=tcp::8080", "no '-'"),
            ("user,hostfwd=sctp::1-:2", "tcp or udp"),
            ("user,hostfwd=tcp::0-:2", "1-65535"),
            ("user,hostfwd=tcp::70000-:2", "1-65535"),
            ("user,hostfwd=tcp:nothost:1-:2", "not an IP address"),
            (
                "user,hostfwd=tcp::1-10.0.0.2:2",
                "leave the guest address empty",
            ),
            ("tap=t,rx_bw=0", "above 0"),
            ("tap=t,rx_bw=fast", "invalid size"),
            ("tap=t,id=a-b", "letters, digits"),
            ("tap=t,x", "not key=value"),
        ] {
            let e = parse_net(spec).unwrap_err();
            assert!(e.contains(want), "{spec:?}: {e}");
        }
    }

    #[test]
    fn macs_round_trip() {
        let mac = parse_mac("02:ab:cd:ef:01:23").unwrap();
        assert_eq!(format_mac(&mac), "02:ab:cd:ef:01:23");
    }
}
