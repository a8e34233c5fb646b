//! The VIP addresses on the announce interface, changed through rtnetlink (the crate the
//! agent already uses for link events): list the addresses the agent assigned (marked with
//! `IFA_PROTO` [`ADDRESS_PROTO`]), add one, remove one. The routing daemon sees them as
//! connected routes (BIRD `protocol direct`, FRR `redistribute connected`).
//!
//! The mark is what makes a restart safe: a new agent finds the previous agent's
//! addresses, keeps those still announceable and removes the others; it never touches
//! an address it did not assign (an operator's, or the kernel's `127.0.0.1`).

use std::net::IpAddr;

use anyhow::{anyhow, Context as _, Result};
use futures_util::TryStreamExt as _;
use lb_model::announce::ADDRESS_PROTO;
use rtnetlink::{
    packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressProtocol},
    Handle,
};

/// Where the VIP addresses live: the real interface (netlink) or, in tests, a set.
pub trait Addresses {
    /// The interface's index, 0 if it does not exist.
    fn ifindex(&self, name: &str) -> u32;
    /// The addresses on `ifindex` that carry the agent's mark.
    fn list(
        &mut self,
        ifindex: u32,
    ) -> impl std::future::Future<Output = Result<Vec<IpAddr>>> + Send;
    fn add(
        &mut self,
        ifindex: u32,
        ip: IpAddr,
    ) -> impl std::future::Future<Output = Result<()>> + Send;
    fn del(
        &mut self,
        ifindex: u32,
        ip: IpAddr,
    ) -> impl std::future::Future<Output = Result<()>> + Send;
}

/// Host prefix length of an address.
fn host_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// The kernel's addresses, through a netlink socket in the agent's network namespace.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket; must be called inside the tokio runtime.
    pub fn open() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .context("opening a netlink socket for the VIP addresses")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }
}

fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the address itself on point-to-point links; IFA_ADDRESS otherwise.
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => addr = Some(*ip),
            _ => {}
        }
    }
    addr
}

impl Addresses for Netlink {
    fn ifindex(&self, name: &str) -> u32 {
        crate::agent::attach::ifindex(name)
    }

    async fn list(&mut self, ifindex: u32) -> Result<Vec<IpAddr>> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect()
            .await
            .map_err(|e| anyhow!("listing the addresses of interface {ifindex}: {e}"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == ifindex)
            .filter(|m| {
                m.attributes.iter().any(
                    |a| matches!(a, AddressAttribute::Protocol(p) if u8::from(*p) == ADDRESS_PROTO),
                )
            })
            .filter(|m| address_of(m).is_some_and(|ip| m.header.prefix_len == host_len(ip)))
            .filter_map(address_of)
            .collect())
    }

    async fn add(&mut self, ifindex: u32, ip: IpAddr) -> Result<()> {
        let mut req = self
            .handle
            .address()
            .add(ifindex, ip, host_len(ip))
            .replace();
        let m = req.message_mut();
        m.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                ADDRESS_PROTO,
            )));
        if ip.is_ipv6() {
            // No duplicate address detection: the VIP is meant to be on every node.
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| anyhow!("adding {ip}/{} on interface {ifindex}: {e}", host_len(ip)))
    }

    async fn del(&mut self, ifindex: u32, ip: IpAddr) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.index = ifindex;
        m.header.prefix_len = host_len(ip);
        m.header.family = if ip.is_ipv4() {
            rtnetlink::packet_route::AddressFamily::Inet
        } else {
            rtnetlink::packet_route::AddressFamily::Inet6
        };
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        self.handle.address().del(m).execute().await.map_err(|e| {
            anyhow!(
                "removing {ip}/{} from interface {ifindex}: {e}",
                host_len(ip)
            )
        })
    }
}
