//! Neighbour priming. The data path forwards with `bpf_fib_lookup`, which needs the
//! next hop's MAC in the kernel's neighbour table. In DSR mode a packet cannot be handed
//! to the kernel to resolve it (it would be routed by the VIP), so we make the kernel
//! resolve each backend up front by sending it one empty UDP datagram (discard port 9).

use std::net::{IpAddr, SocketAddr, UdpSocket};

/// Triggers ARP / neighbour discovery for each address. Best effort: errors (no route,
/// unreachable) are returned per address for logging, never fatal.
pub fn prime(addrs: &[IpAddr]) -> Vec<(IpAddr, std::io::Error)> {
    let mut errors = Vec::new();
    for &ip in addrs {
        let bind: SocketAddr = if ip.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let r =
            UdpSocket::bind(bind).and_then(|s| s.send_to(&[], SocketAddr::new(ip, 9)).map(|_| ()));
        if let Err(e) = r {
            errors.push((ip, e));
        }
    }
    errors
}
