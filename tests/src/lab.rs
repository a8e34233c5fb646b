//! A datapath lab: the stickylb program loaded (not attached) and run on single packets
//! with `BPF_PROG_TEST_RUN`, inside a namespace whose FIB is fixed, so every forwarding
//! decision (egress interface, next-hop MAC) is deterministic.
//!
//! FIB of the lab namespace:
//! - `fx0` 198.18.1.1/24, fd00:1::1/64: backends `.2`, `.3`, `.4` (`::2`…) with permanent
//!   neighbours `02:00:00:00:01:0N`; `.5` / `::5` are on-link without a neighbour entry.
//! - `fx1` 198.18.0.1/24, fd00::1/64: gateway `.254` / `::fe` (`02:00:00:00:00:fe`) to the
//!   clients 198.51.100.0/24 and 2001:db8:c::/64; gateway `.253` / `::fd`, without a
//!   neighbour entry, to the clients 198.51.101.0/24 and 2001:db8:d::/64. Other on-link
//!   addresses of fx1 have no neighbour entry either.
//! - 198.18.9.0/24 and fd00:9::/64 are unreachable routes.

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use aya::{
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use lb_agent::{
    dataplane::Dataplane,
    loader::{self, LoadOptions},
};
use lb_common::{ip_from_addr, BackendStats, NeighMiss, ServiceStats, StickKey, StickValue};
use lb_model::{
    plan::{Ids, Plan},
    spec::ServiceSpec,
};

use crate::netns::Netns;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Backend-side MAC of backend `n` (2..=4) in the lab FIB.
pub fn backend_mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, n]
}

/// MAC of the gateway towards the clients.
pub const CLIENT_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub struct Lab {
    pub ns: Netns,
    pub ebpf: Ebpf,
    pub dp: Dataplane,
    pub ids: Ids,
    /// MAC addresses of the lab's egress interfaces.
    pub fx0_mac: [u8; 6],
    pub fx1_mac: [u8; 6],
    pub fx0_ifindex: u32,
    pub fx1_ifindex: u32,
    /// The data path's next-hop reports (`NEIGH_EVENTS`), read by [`Lab::neigh_events`].
    pub events: aya::maps::RingBuf<aya::maps::MapData>,
}

impl Lab {
    /// A fresh namespace with the lab FIB and a freshly loaded program.
    pub fn new() -> Result<Lab> {
        Self::with_options(&LoadOptions::default())
    }

    pub fn with_options(opts: &LoadOptions) -> Result<Lab> {
        let ns = Netns::new("dp")?;
        ns.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ])?;
        let mut cmds: Vec<String> = [
            "link add fx0 type veth peer name fx0p",
            "link add fx1 type veth peer name fx1p",
            "link set fx0 up",
            "link set fx0p up",
            "link set fx1 up",
            "link set fx1p up",
            "addr add 198.18.1.1/24 dev fx0",
            "addr add fd00:1::1/64 dev fx0 nodad",
            "addr add 198.18.0.1/24 dev fx1",
            "addr add fd00::1/64 dev fx1 nodad",
            "neigh replace 198.18.0.254 lladdr 02:00:00:00:00:fe dev fx1 nud permanent",
            "neigh replace fd00::fe lladdr 02:00:00:00:00:fe dev fx1 nud permanent",
            "route add 198.51.100.0/24 via 198.18.0.254",
            "route add 2001:db8:c::/64 via fd00::fe",
            "route add 198.51.101.0/24 via 198.18.0.253",
            "route add 2001:db8:d::/64 via fd00::fd",
            "route add unreachable 198.18.9.0/24",
            "route add unreachable fd00:9::/64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in 2..=4 {
            cmds.push(format!(
                "neigh replace 198.18.1.{n} lladdr 02:00:00:00:01:0{n} dev fx0 nud permanent"
            ));
            cmds.push(format!(
                "neigh replace fd00:1::{n} lladdr 02:00:00:00:01:0{n} dev fx0 nud permanent"
            ));
        }
        ns.ip_batch(&cmds)?;
        let mut ebpf = loader::load(opts)?;
        let dp = Dataplane::new(&mut ebpf)?;
        let events = aya::maps::RingBuf::try_from(
            ebpf.take_map(lb_common::MAP_NEIGH_EVENTS)
                .context("map NEIGH_EVENTS missing")?,
        )?;
        Ok(Lab {
            events,
            fx0_mac: ns.mac("fx0")?,
            fx1_mac: ns.mac("fx1")?,
            fx0_ifindex: ns.ifindex("fx0")?,
            fx1_ifindex: ns.ifindex("fx1")?,
            ns,
            ebpf,
            dp,
            ids: Ids::default(),
        })
    }

    /// Plans and applies `specs` (the whole configuration).
    pub fn configure(&mut self, specs: &[ServiceSpec]) -> Result<Plan> {
        let plan = self.ids.plan(specs)?;
        self.dp.apply(&plan)?;
        Ok(plan)
    }

    /// Runs the program once on `pkt`; returns the action and the packet as it left.
    pub fn run(&mut self, pkt: &[u8]) -> Result<(u32, Vec<u8>)> {
        let prog: &aya::programs::Xdp = loader::program(&mut self.ebpf)?;
        let mut out = vec![0u8; pkt.len() + 512];
        let res = self.ns.enter(|| {
            prog.test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")
        })?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    pub fn service_stats(&self, service: &str) -> Result<ServiceStats> {
        let id = self.ids.service_id(service).context("unknown service")?;
        self.dp.service_stats(id)
    }

    pub fn backend_stats(&self, service: &str, addr: std::net::SocketAddr) -> Result<BackendStats> {
        let id = self
            .ids
            .backend_id(service, addr)
            .context("unknown backend")?;
        self.dp.backend_stats(id)
    }

    /// The stick entry of a client, if any.
    pub fn stick_entry(&self, service: &str, client: IpAddr) -> Option<StickValue> {
        let id = self.ids.service_id(service)?;
        let (addr, _) = lb_common::addr_from_ip(client);
        self.dp
            .stick
            .get(
                &StickKey {
                    service_id: id,
                    client: addr,
                },
                0,
            )
            .ok()
    }

    /// Overwrites a client's `last_seen` (to simulate time passing).
    pub fn age_entry(&mut self, service: &str, client: IpAddr, by_ns: u64) -> Result<()> {
        let id = self.ids.service_id(service).context("unknown service")?;
        let (addr, _) = lb_common::addr_from_ip(client);
        let key = StickKey {
            service_id: id,
            client: addr,
        };
        let mut v = self.dp.stick.get(&key, 0)?;
        v.last_seen_ns = v.last_seen_ns.saturating_sub(by_ns);
        self.dp.stick.insert(&key, &v, 0)?;
        Ok(())
    }

    /// The next-hop reports emitted since the last call.
    pub fn neigh_events(&mut self) -> Vec<NeighMiss> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            assert!(
                item.len() >= std::mem::size_of::<NeighMiss>(),
                "short record"
            );
            // SAFETY: a NeighMiss record written by the data path; read unaligned.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const NeighMiss) });
        }
        out
    }

    /// Converts a backend id back to its address, for messages.
    pub fn backend_addr(&self, id: u32) -> Option<IpAddr> {
        self.dp
            .applied()
            .backends
            .iter()
            .find(|b| b.id == id)
            .map(|b| ip_from_addr(&b.value.addr, b.value.family))
    }
}

/// Keeps the calling thread (and the threads it starts) on CPU 0, so that per-CPU data-path
/// state (insert budget, route cache) is one state: `BPF_PROG_TEST_RUN` runs the program
/// on the calling CPU.
pub fn pin_to_cpu0() {
    // SAFETY: plain libc calls on a zeroed cpu_set_t for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The calibration the lab's data path reads its clock with (`None`: the coarse clock).
pub fn clock_calibration(lab: &Lab) -> Result<Option<lb_common::clock::Calibration>> {
    lb_agent::loader::clock_calibration(&lab.ebpf)
}
