//! Interface events: the kernel's link notifications (`RTNLGRP_LINK`, netlink through
//! `rtnetlink`) tell the agent at once when an interface it attaches to is deleted or
//! created again, instead of a poll. The agent then compares every interface with its
//! index at attach time (`Agent::watch_interfaces`): one that went took its XDP attachment
//! with it and is logged, one that is back (a new index) is attached afresh.
//!
//! The subscription is made in the calling thread's network namespace, the one the agent
//! attaches in. Netlink multicast is lossy under pressure (`ENOBUFS`): an event lost that
//! way is caught up by the next event of any interface, since every event re-checks all.

use anyhow::{Context as _, Result};
use futures_util::StreamExt as _;
use rtnetlink::{
    constants::RTMGRP_LINK,
    packet_core::NetlinkPayload,
    packet_route::{link::LinkAttribute, RouteNetlinkMessage},
    sys::{AsyncSocket as _, SocketAddr},
};
use tokio::sync::mpsc;

/// An interface added (or changed), or deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    pub index: u32,
    pub name: String,
    /// Deleted (`RTM_DELLINK`); otherwise added or changed (`RTM_NEWLINK`).
    pub gone: bool,
}

/// Subscribes to link events in the calling thread's network namespace and hands each
/// one over. Must be called inside a tokio runtime; the events stop when the receiver is
/// dropped.
pub fn watch() -> Result<mpsc::UnboundedReceiver<LinkEvent>> {
    let (mut connection, handle, mut messages) =
        rtnetlink::new_connection().context("opening a netlink socket for link events")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .context("subscribing to netlink link events")?;
    tokio::spawn(connection);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // The connection lives while the handle or the receiver of its messages does.
        let _handle = handle;
        while let Some((message, _)) = messages.next().await {
            let (link, gone) = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => (l, false),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => (l, true),
                _ => continue,
            };
            let name = link
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let event = LinkEvent {
                index: link.header.index,
                name,
                gone,
            };
            if tx.send(event).is_err() {
                return;
            }
        }
        log::warn!("netlink link events ended: deleted interfaces are no longer noticed");
    });
    Ok(rx)
}
