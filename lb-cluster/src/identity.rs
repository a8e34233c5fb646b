//! Identity across nodes: what names a service, a backend and a client the same way on
//! every node. Node-local ids (a service id, a backend slot) never leave the node: two
//! nodes with the same configuration may number things differently, and HAProxy users
//! hit exactly that (servers matched by id until `srvkey addr`, haproxy issue 814).
//!
//! - A service is its definition: VIP, port (0 = every port) and protocol.
//! - A backend is its address and port (0 = the client's destination port).
//! - A client is an address with a prefix length: a host (/32, /128) today; issue 16's
//!   stickiness by prefix (`stick_on = "src/24"`) sends the masked network with its
//!   length, and nothing on the wire changes.
//!
//! The derived orders are the stable orders the conflict rule breaks ties with
//! ([`BackendKey`]'s `Ord`): every node compares the same values the same way.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// IP protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number (6, 17).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// From an IP protocol number; `None` for anything but TCP and UDP.
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A service by its definition: (VIP, port, protocol). Port 0 = every port of the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vip {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.proto),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.proto),
        }
    }
}

/// A backend by address and port (0 = keep the client's destination port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// A client: an address and a prefix length. A host is /32 (IPv4) or /128 (IPv6); a
/// shorter prefix names a network whose bits past the prefix are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientKey {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl ClientKey {
    /// One host.
    pub fn host(addr: IpAddr) -> ClientKey {
        ClientKey {
            addr,
            prefix: width(addr),
        }
    }

    /// The network of `addr` masked to `prefix` bits; `None` when `prefix` is longer
    /// than the address.
    pub fn network(addr: IpAddr, prefix: u8) -> Option<ClientKey> {
        if prefix > width(addr) {
            return None;
        }
        Some(ClientKey {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether the prefix fits the family and no bit past it is set (what a peer must
    /// send; anything else is refused as malformed).
    pub fn is_valid(&self) -> bool {
        self.prefix <= width(self.addr) && mask(self.addr, self.prefix) == self.addr
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == width(self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Address width in bits (32 or 128).
pub fn width(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys() {
        let h = ClientKey::host("10.1.2.3".parse().unwrap());
        assert_eq!(h.prefix, 32);
        assert!(h.is_valid());
        assert_eq!(h.to_string(), "10.1.2.3");
        let n = ClientKey::network("10.1.2.3".parse().unwrap(), 24).unwrap();
        assert_eq!(n.to_string(), "10.1.2.0/24");
        assert!(n.is_valid());
        let bad = ClientKey {
            addr: "10.1.2.3".parse().unwrap(),
            prefix: 24,
        };
        assert!(!bad.is_valid(), "host bits past the prefix");
        assert!(ClientKey::network("10.1.2.3".parse().unwrap(), 33).is_none());
        let v6 = ClientKey::network("2001:db8::1".parse().unwrap(), 64).unwrap();
        assert_eq!(v6.to_string(), "2001:db8::/64");
        assert!(ClientKey::network("2001:db8::1".parse().unwrap(), 0)
            .unwrap()
            .is_valid());
        assert!(!ClientKey {
            addr: "::1".parse().unwrap(),
            prefix: 129
        }
        .is_valid());
    }

    #[test]
    fn display_and_order() {
        let s = ServiceKey {
            vip: "2001:db8::100".parse().unwrap(),
            port: 443,
            proto: Proto::Tcp,
        };
        assert_eq!(s.to_string(), "[2001:db8::100]:443/tcp");
        let a = BackendKey {
            addr: "10.0.0.2".parse().unwrap(),
            port: 80,
        };
        let b = BackendKey {
            addr: "10.0.0.10".parse().unwrap(),
            port: 80,
        };
        assert!(a < b, "addresses compare numerically");
        assert_eq!(Proto::from_number(17), Some(Proto::Udp));
        assert_eq!(Proto::from_number(1), None);
    }
}
