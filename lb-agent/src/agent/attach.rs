//! Attaching the data path to interfaces, in the one place it is done: the XDP mode (one
//! enum for the CLI, the agent and the tests), driver detection for `auto`, attaching with
//! a pinned link or adopting a previous agent's (the XDP program and, beside it, the tc
//! program of the neighbour queue), detaching, and the interfaces' indexes that tell a
//! deleted interface from a new one.
//!
//! `--xdp-mode auto`: native where it works as-is, skb otherwise. A veth takes skb, because
//! native XDP on veth needs `tx off` on the senders and `gro on` on the peers
//! (docs/OPERATIONS.md); `--xdp-mode native` forces it.

use std::{collections::BTreeMap, ffi::CString, fs, path::Path};

use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{
        links::FdLink, links::PinnedLink, tc::SchedClassifierLink, tc::SchedClassifierLinkId,
        xdp::XdpLink, xdp::XdpLinkId, TcAttachType,
    },
    Ebpf,
};

use crate::{
    loader,
    pins::{PinLayout, PINNED_MAPS},
};

lb_model::named! {
    /// How the program is attached to an interface.
    pub enum XdpMode {
        /// Native where it works as-is, else skb (veth: skb).
        Auto = "auto",
        /// Driver (native) mode.
        Native = "native",
        /// Generic (skb) mode.
        Skb = "skb",
    }
}

impl clap::ValueEnum for XdpMode {
    fn value_variants<'a>() -> &'a [Self] {
        Self::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            XdpMode::Auto => "native where it works as-is, skb otherwise (veth: skb)",
            XdpMode::Native => "driver mode",
            XdpMode::Skb => "generic mode",
        };
        Some(clap::builder::PossibleValue::new(self.name()).help(help))
    }
}

impl XdpMode {
    /// The modes to try on `iface`, in order: `auto` is native, then skb if native fails
    /// (skb only on a veth).
    fn candidates(self, iface: &str) -> &'static [XdpMode] {
        match self {
            XdpMode::Native => &[XdpMode::Native],
            XdpMode::Skb => &[XdpMode::Skb],
            XdpMode::Auto if iface_driver(iface).as_deref() == Some("veth") => {
                log::info!("{iface} is a veth: using skb mode (native XDP on veth needs `tx off` on senders and `gro on` on peers; --xdp-mode native forces it)");
                &[XdpMode::Skb]
            }
            XdpMode::Auto => &[XdpMode::Native, XdpMode::Skb],
        }
    }

    /// The aya attach mode of a concrete mode.
    fn aya(self) -> aya::programs::XdpMode {
        match self {
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Skb | XdpMode::Auto => aya::programs::XdpMode::Skb,
        }
    }
}

/// Attaches the loaded program to `iface` in `mode` (`auto`: the first that works);
/// returns the mode used and the link.
fn attach_in(ebpf: &mut Ebpf, iface: &str, mode: XdpMode) -> Result<(XdpMode, XdpLinkId)> {
    let name = CString::new(iface).with_context(|| format!("bad interface name {iface:?}"))?;
    let candidates = mode.candidates(iface);
    let mut last = None;
    for (i, &m) in candidates.iter().enumerate() {
        let prog = loader::program(ebpf)?;
        match prog.attach(name.as_c_str(), m.aya()) {
            Ok(id) => return Ok((m, id)),
            Err(e) if i + 1 < candidates.len() => {
                log::warn!(
                    "{iface}: {m} XDP failed ({e}); falling back to {} mode",
                    candidates[i + 1]
                );
                last = Some(e);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("attaching XDP ({m} mode) to {iface}"))
            }
        }
    }
    Err(anyhow::anyhow!("attaching XDP to {iface}: {last:?}"))
}

/// Attaches the loaded program to `iface` (resolved in the calling thread's network
/// namespace), without a pin: the attachment lives as long as the `Ebpf` object.
pub fn attach(ebpf: &mut Ebpf, iface: &str, mode: XdpMode) -> Result<XdpLinkId> {
    attach_in(ebpf, iface, mode).map(|(_, id)| id)
}

/// The network driver of an interface (ethtool GDRVINFO), if it can be read.
pub fn iface_driver(iface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if iface.len() >= 16 {
        return None;
    }
    let mut info = DrvInfo {
        cmd: 3,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: SIOCETHTOOL with a valid ifreq pointing at a drvinfo buffer.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, 0x8946, &mut req);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The index of an interface in the agent's network namespace; 0 when there is none.
pub fn ifindex(name: &str) -> u32 {
    match std::ffi::CString::new(name) {
        // SAFETY: if_nametoindex with a valid C string.
        Ok(c) => unsafe { libc::if_nametoindex(c.as_ptr()) },
        Err(_) => 0,
    }
}

/// Attaches to (or adopts the pinned attachment of) one interface; returns how.
pub fn attach_one(
    ebpf: &mut Ebpf,
    layout: &PinLayout,
    mode: XdpMode,
    iface: &str,
) -> Result<String> {
    let how = attach_pinned(ebpf, layout, iface, mode)?;
    if let Err(e) = attach_queue_pinned(ebpf, layout, iface) {
        log::warn!("{iface}: {e:#}: packets whose next hop is not resolved yet are dropped there instead of queued");
    }
    Ok(match how {
        Attachment::Adopted => "adopted".to_string(),
        Attachment::Attached(m) => m.name().to_string(),
    })
}

/// How each interface ended up attached (`native`, `skb`, `adopted`, `gone`), and each
/// interface's index when it was attached (0: gone).
pub type Attached = (Vec<(String, String)>, BTreeMap<String, u32>);

/// Attaches to every interface (see [`attach_pinned`]); an interface that is gone but
/// was attached before is skipped, one that never existed is refused.
pub fn attach_all(
    ebpf: &mut Ebpf,
    layout: &PinLayout,
    ifaces: &[String],
    mode: XdpMode,
) -> Result<Attached> {
    let mut out = Vec::new();
    let mut indexes = BTreeMap::new();
    for iface in ifaces {
        let index = ifindex(iface);
        indexes.insert(iface.clone(), index);
        if index == 0 {
            if layout.link(iface).exists() {
                // Attached by a previous agent, deleted since: not a typo. Start without
                // it (the other interfaces need their health checks and control plane);
                // it is attached when it comes back.
                log::warn!("interface {iface} is gone (it was attached before; deleted since): starting without it; it is attached again if {iface} comes back");
                out.push((iface.clone(), "gone".to_string()));
                continue;
            }
            let here: Vec<String> = std::fs::read_dir("/sys/class/net")
                .map(|d| {
                    let mut v: Vec<String> = d
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    v.sort();
                    v
                })
                .unwrap_or_default();
            bail!(
                "interface {iface:?} does not exist in the agent's network namespace: check --iface (interfaces here: {})",
                here.join(", ")
            );
        }
        let desc = attach_one(ebpf, layout, mode, iface)?;
        log::info!("{iface}: XDP {desc}");
        out.push((iface.clone(), desc));
    }
    Ok((out, indexes))
}

/// How an interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// An attachment pinned by a previous agent was switched to this program atomically.
    Adopted,
    /// Freshly attached in this mode.
    Attached(XdpMode),
}

/// Attaches to `iface`, adopting a pinned attachment when there is one (atomic program
/// replacement, traffic never stops), and pins the new link otherwise.
pub fn attach_pinned(
    ebpf: &mut Ebpf,
    layout: &PinLayout,
    iface: &str,
    mode: XdpMode,
) -> Result<Attachment> {
    let pin = layout.link(iface);
    if pin.exists() {
        match adopt(ebpf, &pin) {
            Ok(()) => return Ok(Attachment::Adopted),
            Err(e) => {
                log::warn!("{iface}: cannot adopt pinned attachment ({e:#}); attaching afresh");
                let _ = fs::remove_file(&pin);
            }
        }
    }
    let (mode, id) = attach_in(ebpf, iface, mode)?;
    let prog = loader::program(ebpf)?;
    let link = prog.take_link(id)?;
    let fd = FdLink::try_from(link)
        .context("the kernel attached through netlink; a pinnable bpf_link is needed")?;
    fs::create_dir_all(layout.links_dir())?;
    let pinned = fd
        .pin(&pin)
        .with_context(|| format!("pinning the link of {iface} at {}", pin.display()))?;
    // Keep the link alive through its pin only; the fd can go.
    drop(pinned);
    Ok(Attachment::Attached(mode))
}

fn adopt(ebpf: &mut Ebpf, pin: &Path) -> Result<()> {
    let pinned = PinnedLink::from_pin(pin)?;
    let fd: FdLink = pinned.into();
    let link = XdpLink::try_from(fd)?;
    let prog = loader::program(ebpf)?;
    let id = prog.attach_to_link(link)?;
    // The link object stays pinned; drop our handle without detaching.
    let link = prog.take_link(id)?;
    let fd = FdLink::try_from(link)?;
    drop(fd);
    Ok(())
}

/// Attaches the tc ingress program that sends packets with an unresolved next hop
/// through the kernel's neighbour queue (a TCX link on kernel 6.6+, which
/// [`attach_queue_pinned`] pins; a netlink filter before). Without it, such packets are
/// lost instead of delayed (a NAT reply then reaches the kernel's stack, which drops it
/// when the VIP is local).
pub fn attach_queue(ebpf: &mut Ebpf, iface: &str) -> Result<SchedClassifierLinkId> {
    let name = CString::new(iface).with_context(|| format!("bad interface name {iface:?}"))?;
    // The netlink backend (kernels before 6.6) needs the clsact qdisc; it may exist.
    let _ = aya::programs::tc::qdisc_add_clsact(name.as_c_str());
    loader::queue_program(ebpf)?
        .attach(name.as_c_str(), TcAttachType::Ingress)
        .with_context(|| {
            format!(
                "attaching the tc program {} to {iface}",
                lb_common::PROGRAM_QUEUE
            )
        })
}

/// Attaches the tc program of the neighbour queue to `iface`, adopting a pinned
/// attachment (atomic program replacement) when there is one, and pins a new TCX link so
/// that it outlives the agent like the XDP program does (a netlink-attached filter, on
/// kernels before 6.6, stays by itself).
pub fn attach_queue_pinned(ebpf: &mut Ebpf, layout: &PinLayout, iface: &str) -> Result<()> {
    let pin = layout.queue_link(iface);
    if pin.exists() {
        let adopted = (|| -> Result<()> {
            let fd: FdLink = PinnedLink::from_pin(&pin)?.into();
            let link = SchedClassifierLink::try_from(fd)?;
            let prog = loader::queue_program(ebpf)?;
            let id = prog.attach_to_link(link)?;
            drop(FdLink::try_from(prog.take_link(id)?)?);
            Ok(())
        })();
        match adopted {
            Ok(()) => return Ok(()),
            Err(e) => {
                log::warn!("{iface}: cannot adopt the pinned tc program ({e:#}); attaching afresh");
                let _ = fs::remove_file(&pin);
            }
        }
    }
    let id = attach_queue(ebpf, iface)?;
    let link = loader::queue_program(ebpf)?.take_link(id)?;
    if let Ok(fd) = FdLink::try_from(link) {
        fs::create_dir_all(layout.queue_dir())?;
        drop(
            fd.pin(&pin)
                .with_context(|| format!("pinning the tc link of {iface} at {}", pin.display()))?,
        );
    }
    Ok(())
}

fn unpin_link(pin: &Path) -> Result<bool> {
    if !pin.exists() {
        return Ok(false);
    }
    match PinnedLink::from_pin(pin) {
        Ok(link) => drop(link.unpin()?),
        Err(_) => fs::remove_file(pin)?,
    }
    Ok(true)
}

/// Removes the attachment of one interface (if pinned): its XDP link and its tc link.
pub fn detach_link(layout: &PinLayout, iface: &str) -> Result<bool> {
    let _ = unpin_link(&layout.queue_link(iface));
    let pin = layout.link(iface);
    if !pin.exists() {
        return Ok(false);
    }
    match PinnedLink::from_pin(&pin) {
        Ok(link) => {
            let fd = link.unpin()?;
            drop(fd); // last reference: the kernel detaches the program
        }
        Err(_) => fs::remove_file(&pin)?,
    }
    Ok(true)
}

/// Removes every attachment and every pinned map of the instance.
pub fn detach_all(layout: &PinLayout) -> Result<Vec<String>> {
    let ifaces = layout.pinned_links();
    for iface in &ifaces {
        detach_link(layout, iface)?;
    }
    if layout.root.exists() {
        for name in PINNED_MAPS {
            let p = layout.map(name);
            if p.exists() {
                fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        if let Ok(dir) = fs::read_dir(layout.queue_dir()) {
            for e in dir.filter_map(|e| e.ok()) {
                let _ = unpin_link(&e.path());
            }
        }
        for d in [
            layout.maps_dir(),
            layout.links_dir(),
            layout.queue_dir(),
            layout.root.clone(),
        ] {
            let _ = fs::remove_dir(&d);
        }
        if let Some(parent) = layout.root.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
    Ok(ifaces)
}
