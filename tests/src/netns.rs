//! Named Linux network namespaces as RAII guards.
//!
//! This module owns the lifetime of every namespace the harness creates:
//! [`Netns::new`] runs `ip netns add` with a name that is unique per process
//! and per call (`slb<pid>-<counter>-<tag>`), and dropping the [`Netns`] runs
//! `ip netns del`, also while a test is unwinding from a panic.
//!
//! It also provides the ways to act inside a namespace:
//! * [`Netns::exec`] / [`Netns::ip`] / [`Netns::ip_batch`] run commands inside
//!   it and turn a failure into an error carrying the command line and stderr;
//! * [`Netns::sysctl`] sets a sysctl of that namespace;
//! * [`Netns::enter`] runs a closure on a fresh thread that has joined the
//!   namespace, so that sockets created by the closure belong to it (a socket
//!   keeps its namespace for its whole life, whichever thread uses it later).

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Prefix of every namespace name this harness creates.
pub const NETNS_PREFIX: &str = "slb";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command to completion and fails with its command line, exit status
/// and stderr if it did not exit successfully.
pub fn run(argv: &[&str]) -> Result<Output> {
    run_with_stdin(argv, None)
}

fn run_with_stdin(argv: &[&str], stdin: Option<&str>) -> Result<Output> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| anyhow!("empty command line"))?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", argv.join(" ")))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("cannot write stdin of `{}`", argv.join(" ")))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot wait for `{}`", argv.join(" ")))?;
    if !out.status.success() {
        let input = stdin
            .map(|s| format!("\n--- stdin ---\n{s}"))
            .unwrap_or_default();
        bail!(
            "`{}` failed ({}): {}{input}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
        );
    }
    Ok(out)
}

/// Names of all namespaces currently listed by `ip netns list`.
pub fn list_netns() -> Result<Vec<String>> {
    let out = run(&["ip", "netns", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// A named network namespace, deleted when dropped.
pub struct Netns {
    name: String,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Netns").field(&self.name).finish()
    }
}

impl Netns {
    /// Creates a fresh namespace named `slb<pid>-<counter>-<tag>` and brings
    /// its `lo` up. `tag` is only for readability (e.g. "lb", "be1").
    pub fn new(tag: &str) -> Result<Netns> {
        let pid = std::process::id();
        let mut last_err = None;
        // A name can only be taken if another process (e.g. in another pid
        // namespace) happens to use the same pid; skip forward then.
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("{NETNS_PREFIX}{pid}-{n}-{tag}");
            match run(&["ip", "netns", "add", &name]) {
                Ok(_) => {
                    let ns = Netns { name };
                    ns.ip(&["link", "set", "lo", "up"])?;
                    log::debug!("created netns {}", ns.name);
                    return Ok(ns);
                }
                Err(e) => {
                    if std::path::Path::new("/run/netns").join(&name).exists() {
                        last_err = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("cannot create netns")))
    }

    /// The namespace's name as known to `ip netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace's bind mount (`/run/netns/NAME`).
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `argv` inside the namespace (`ip netns exec NAME argv...`) and
    /// returns its stdout. Fails with the command line and stderr.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        let out = run(&full)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `ip -n NAME args...` (cheaper than `exec(["ip", ...])`) and
    /// returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        let out = run(&full)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs many `ip` commands (one per element, without the leading `ip`)
    /// in a single `ip -n NAME -batch -` process.
    pub fn ip_batch<S: AsRef<str>>(&self, commands: &[S]) -> Result<String> {
        if commands.is_empty() {
            return Ok(String::new());
        }
        let mut script = String::new();
        for c in commands {
            script.push_str(c.as_ref());
            script.push('\n');
        }
        let out = run_with_stdin(&["ip", "-n", &self.name, "-batch", "-"], Some(&script))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sets a sysctl inside the namespace: `sysctl -qw key=value`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Sets several sysctls inside the namespace with one `sysctl` process.
    pub fn sysctls(&self, settings: &[(&str, &str)]) -> Result<()> {
        if settings.is_empty() {
            return Ok(());
        }
        let kv: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut argv = vec!["sysctl", "-qw"];
        argv.extend(kv.iter().map(String::as_str));
        self.exec(&argv)?;
        Ok(())
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        Ok(self.exec(&["sysctl", "-n", key])?.trim().to_owned())
    }

    /// Interface index of `ifname` inside the namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let out = self.ip(&["-o", "link", "show", "dev", ifname])?;
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| anyhow!("cannot parse ifindex of {ifname} in {}: {out}", self.name))
    }

    /// MAC address of `ifname` inside the namespace.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let out = self.ip(&["-o", "link", "show", "dev", ifname])?;
        let text = out
            .split_whitespace()
            .skip_while(|t| *t != "link/ether")
            .nth(1)
            .ok_or_else(|| anyhow!("no link/ether for {ifname} in {}: {out}", self.name))?;
        parse_mac(text).with_context(|| format!("MAC of {ifname} in {}", self.name))
    }

    /// Whether `ifname` has carrier (`LOWER_UP`) inside the namespace.
    pub fn link_is_up(&self, ifname: &str) -> Result<bool> {
        let out = self.ip(&["-o", "link", "show", "dev", ifname])?;
        let flags = out
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(f, _)| f)
            .unwrap_or("");
        Ok(flags.split(',').any(|f| f == "LOWER_UP") && flags.split(',').any(|f| f == "UP"))
    }

    /// Waits until every interface in `ifnames` is up with carrier.
    pub fn wait_links_up(&self, ifnames: &[&str], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for ifname in ifnames {
            loop {
                if self.link_is_up(ifname)? {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("{ifname} in {} not up after {timeout:?}", self.name);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Runs `f` on a new thread that first joins this namespace
    /// (`setns(open("/run/netns/NAME"), CLONE_NEWNET)`), and returns its
    /// result. Sockets created in `f` live in this namespace. A panic in `f`
    /// is propagated to the caller.
    pub fn enter<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send,
        T: Send,
    {
        let path = self.path();
        let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(s, move || -> Result<T> {
                    // SAFETY: plain syscall on a valid, open fd.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("setns({path}, CLONE_NEWNET)"));
                    }
                    drop(file);
                    f()
                })
                .context("cannot spawn netns thread")?;
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match run(&["ip", "netns", "del", &self.name]) {
            Ok(_) => log::debug!("deleted netns {}", self.name),
            Err(e) => {
                // Never panic in drop (we may already be unwinding).
                eprintln!("warning: cannot delete netns {}: {e:#}", self.name);
            }
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(|| anyhow!("short MAC {s:?}"))?;
        *b = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {s:?}"))?;
    }
    if parts.next().is_some() {
        bail!("long MAC {s:?}");
    }
    Ok(mac)
}
