//! Where an agent instance keeps its kernel state so that it outlives the process:
//! bpffs mounting and the pin layout (attaching with pinned links and detaching are
//! `agent::attach`'s).
//!
//! Layout: `<bpffs>/<instance>/v<LAYOUT>/maps/<MAP>`, `.../links/<iface>` (XDP) and
//! `.../queue/<iface>` (the tc program of the neighbour queue, see `agent::attach::attach_queue`).
//! The layout version is part of the path: a build whose map layout changed never opens
//! old pins.
//!
//! Why `/run/stickylb/bpffs` by default: inside `ip netns exec`, `/sys` is remounted and
//! a bpffs mounted from within dies with that mount namespace. A bpffs mounted in the
//! root mount namespace under `/run` is visible inside, so the agent mounts it there
//! (entering PID 1's mount namespace to do so) and pins survive restarts.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use lb_common::{
    MAP_BACKENDS, MAP_BACKEND_STATS, MAP_REVERSE, MAP_RING, MAP_RR_CURSOR, MAP_SERVICES,
    MAP_SERVICE_STATS, MAP_STICK,
};

/// Bumped whenever a map's key/value layout or size semantics change (2: ICMP and
/// fragment counters in `ServiceStats`, maps `FRAGMENTS` and `JUMP`; 3: insert cap and
/// SYN-only flag in `ServiceInfo`, unpinned counters, map `INSERT_BUDGET`; 4: GUE port
/// in `ServiceInfo`, too-big counters, map `ENCAP_SOURCE`; 5: next-hop counters
/// `drop_no_neigh`, `neigh_queued`, `neigh_report_lost` in `ServiceStats`; 6: maps
/// `SERVICE_INDEX`, `SERVICE_INDEX_HEAD` and `REPLY_FILTER`, the hit path's exact
/// service table and the reply filter). Maps only added keep the version, so that an
/// upgraded agent adopts the stick table: the stick-table events' per-CPU rings
/// (`STICK_EVENT_RING`, `STICK_EVENT_POS`, 2026-12-02) replaced the ring buffer
/// `STICK_EVENTS`, whose pin [`RETIRED_PINS`] removes.
pub const LAYOUT_VERSION: u32 = 6;
/// Pins of maps this agent no longer has, removed when it loads (their memory is freed
/// with the last reference).
pub const RETIRED_PINS: [&str; 1] = ["STICK_EVENTS"];
/// Default bpffs mount point (see module docs).
pub const DEFAULT_BPFFS: &str = "/run/stickylb/bpffs";
/// Every map the agent pins.
pub const PINNED_MAPS: [&str; 18] = [
    lb_common::MAP_SERVICE_INDEX,
    lb_common::MAP_SERVICE_INDEX_HEAD,
    lb_common::MAP_REPLY_FILTER,
    lb_common::MAP_JUMP,
    // Events written while no agent reads them wait in the rings for the next one.
    lb_common::MAP_STICK_EVENTS,
    lb_common::MAP_STICK_EVENT_POS,
    lb_common::MAP_STICK_EVENTS_LOST,
    lb_common::MAP_ENCAP_SOURCE,
    lb_common::MAP_INSERT_BUDGET,
    lb_common::MAP_FRAGMENTS,
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_RING,
    MAP_RR_CURSOR,
    MAP_STICK,
    MAP_REVERSE,
    MAP_SERVICE_STATS,
    MAP_BACKEND_STATS,
];

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin paths of one instance.
#[derive(Clone, Debug)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn new(bpffs: &Path, instance: &str) -> Self {
        Self {
            root: bpffs.join(instance).join(format!("v{LAYOUT_VERSION}")),
        }
    }
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn link(&self, iface: &str) -> PathBuf {
        self.links_dir().join(iface)
    }
    pub fn queue_dir(&self) -> PathBuf {
        self.root.join("queue")
    }
    pub fn queue_link(&self, iface: &str) -> PathBuf {
        self.queue_dir().join(iface)
    }
    /// Whether a previous agent left pinned state here.
    pub fn has_state(&self) -> bool {
        self.map(MAP_STICK).exists()
    }
    /// Interfaces with a pinned attachment.
    pub fn pinned_links(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(self.links_dir()) else {
            return Vec::new();
        };
        let mut v: Vec<String> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// Whether `path` is the root of a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct with a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The mount namespace of `/proc/<pid>`, as its `mnt:[inode]` link.
fn mount_ns(pid: &str) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

/// Makes sure a bpffs is mounted at `path` in a mount namespace that outlives the agent.
///
/// Under `ip netns exec` the agent runs in a private mount namespace (a slave of the one
/// `ip` was started from): a bpffs mounted there dies with the agent, taking pins and
/// pinned links with it. So the mount is made in the namespace of PID 1, or failing that
/// (containers, sandboxes) of the process that started us. When mounts do not propagate
/// into our namespace, the bpffs is reached through `/proc/<pid>/root/<path>`, which
/// resolves in that process's mount view; agents started later see the mount directly.
///
/// Returns the path to use for pins.
pub fn ensure_bpffs(path: &Path) -> Result<PathBuf> {
    if is_bpffs(path) {
        return Ok(path.to_path_buf());
    }
    let what_to_do = format!(
        "give --bpffs an absolute directory the agent can create (default {DEFAULT_BPFFS}), or mount a bpffs yourself: mkdir -p DIR && mount -t bpf bpf DIR"
    );
    if !path.is_absolute() {
        bail!("bpffs path {} is relative: {what_to_do}", path.display());
    }
    if path.exists() && !path.is_dir() {
        bail!(
            "bpffs path {} exists and is not a directory: {what_to_do}",
            path.display()
        );
    }
    if let Err(e) = fs::create_dir_all(path) {
        bail!(
            "cannot create the bpffs mount point {} ({e}): {what_to_do}",
            path.display()
        );
    }
    let ours = mount_ns("self");
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() }.to_string();
    let mut shared_with_host = false;
    for pid in ["1", ppid.as_str()] {
        let theirs = mount_ns(pid);
        if theirs.is_none() {
            continue;
        }
        if theirs == ours {
            shared_with_host = true;
            break;
        }
        // Already mounted there (by another agent started after we unshared): use it,
        // never stack a second bpffs over it.
        let via = Path::new("/proc")
            .join(pid)
            .join("root")
            .join(path.strip_prefix("/").unwrap_or(path));
        if is_bpffs(&via) {
            log::info!(
                "using the bpffs at {} of pid {pid}'s mount namespace through {}",
                path.display(),
                via.display()
            );
            return Ok(via);
        }
        let ok = Command::new("nsenter")
            .arg(format!("--mount=/proc/{pid}/ns/mnt"))
            .args(["--", "mount", "-t", "bpf", "bpf"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            if is_bpffs(path) {
                log::info!(
                    "mounted bpffs at {} in the mount namespace of pid {pid}",
                    path.display()
                );
                return Ok(path.to_path_buf());
            }
            let via = Path::new("/proc")
                .join(pid)
                .join("root")
                .join(path.strip_prefix("/").unwrap_or(path));
            if is_bpffs(&via) {
                log::info!(
                    "mounted bpffs at {} in the mount namespace of pid {pid}; pinning through {} (it does not propagate here)",
                    path.display(),
                    via.display()
                );
                return Ok(via);
            }
        }
    }
    let src = CString::new("bpf")?;
    let dst = CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!(
                "mounting bpffs at {} (needs root; or mount it yourself: mount -t bpf bpf {})",
                path.display(),
                path.display()
            )
        });
    }
    if shared_with_host {
        log::info!("mounted bpffs at {}", path.display());
    } else {
        log::warn!(
            "mounted bpffs at {} in the agent's private mount namespace: pinned state will not outlive this process; run `mount -t bpf bpf {}` on the host for restart adoption",
            path.display(),
            path.display()
        );
    }
    Ok(path.to_path_buf())
}

/// Refuses an instance name that would escape the pin directory.
pub fn check_instance_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("instance name {name:?} is not accepted: use 1-64 characters from a-z, A-Z, 0-9, '-', '_'");
    }
    Ok(())
}
