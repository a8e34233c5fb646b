//! The netlink interface watcher (`lb_agent::agent::interfaces`) in a namespace of its
//! own: deleting an interface and adding it again are each reported as they happen, with
//! the interface's name and index (the new one differs), and events of other namespaces
//! are not seen.

use std::time::Duration;

use anyhow::{Context as _, Result};
use lb_agent::agent::interfaces::{self, LinkEvent};
use stickylb_tests::Netns;
use tokio::sync::mpsc::UnboundedReceiver;

/// The next event about `name`, within `within`.
async fn next_about(
    rx: &mut UnboundedReceiver<LinkEvent>,
    name: &str,
    within: Duration,
) -> Result<LinkEvent> {
    tokio::time::timeout(within, async {
        loop {
            let e = rx.recv().await.context("the watcher stopped")?;
            if e.name == name {
                return Ok(e);
            }
        }
    })
    .await
    .with_context(|| format!("no event about {name} in {within:?}"))?
}

#[test]
fn deleted_and_readded_interfaces_are_reported_as_they_happen() {
    let ns = Netns::new("ifwatch").unwrap();
    let other = Netns::new("ifother").unwrap();
    ns.ip(&["link", "add", "w0", "type", "veth", "peer", "name", "w1"])
        .unwrap();
    let first = ns.ifindex("w0").unwrap();
    ns.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut rx = interfaces::watch()?;
            // Another namespace's interfaces are not ours.
            other.ip(&["link", "add", "w0", "type", "veth", "peer", "name", "w1"])?;
            ns.ip(&["link", "del", "w0"])?;
            let gone = next_about(&mut rx, "w0", Duration::from_secs(10)).await?;
            assert!(gone.gone, "{gone:?}");
            assert_eq!(gone.index, first, "{gone:?}");
            // The peer of a deleted veth goes with it.
            let peer = next_about(&mut rx, "w1", Duration::from_secs(10)).await?;
            assert!(peer.gone, "{peer:?}");
            ns.ip(&["link", "add", "w0", "type", "veth", "peer", "name", "w1"])?;
            let back = next_about(&mut rx, "w0", Duration::from_secs(10)).await?;
            assert!(!back.gone, "{back:?}");
            assert_ne!(back.index, first, "a re-created interface has a new index");
            assert_eq!(back.index, ns.ifindex("w0")?);
            // A change of state is an event too (the agent re-checks, nothing changes).
            ns.ip(&["link", "set", "w0", "up"])?;
            let up = next_about(&mut rx, "w0", Duration::from_secs(10)).await?;
            assert!(!up.gone && up.index == back.index, "{up:?}");
            Ok(())
        })
    })
    .unwrap();
}
