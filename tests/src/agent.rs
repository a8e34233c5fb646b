//! Running the real `stickylb` binary in a test namespace: `ip netns exec <lb> stickylb
//! run …` with its own config file, socket, bpffs pin directory, instance and state
//! directory, all unique per test. The guard kills the agent and detaches it on drop.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::netns::Netns;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// bpffs shared by all test agents (mounted in the root mount namespace by the agent).
pub const TEST_BPFFS: &str = "/run/stickylb-test/bpffs";

/// The `stickylb` binary built next to the running test executable (or `$STICKYLB_BIN`).
pub fn stickylb_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("STICKYLB_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/stickylb
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("test executable has no parent")?;
    let bin = dir.join("stickylb");
    if !bin.exists() {
        bail!("{} not found: build it first (`cargo build -p lb-agent`, or run through cargo xtask test)", bin.display());
    }
    Ok(bin)
}

/// Mounts the shared test bpffs once, in this process's mount namespace, before any
/// agent starts: agents started by `ip netns exec` then find it already there, and
/// parallel tests never race to mount it.
pub fn ensure_test_bpffs() -> Result<()> {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap();
    if *done {
        return Ok(());
    }
    let path = Path::new(TEST_BPFFS);
    if !lb_agent::pins::is_bpffs(path) {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf", TEST_BPFFS])
            .output()?;
        if !out.status.success() {
            bail!(
                "mount -t bpf bpf {TEST_BPFFS}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    *done = true;
    Ok(())
}

/// A running agent.
pub struct Agent {
    pub ns_name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub instance: String,
    pub ifaces: Vec<String>,
    pub extra_args: Vec<String>,
    /// bpffs pin directory passed as `--bpffs` ([`TEST_BPFFS`] unless started with
    /// [`Agent::start_with_bpffs`]).
    pub bpffs: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    /// Writes `config` and starts the agent on `ifaces` of the namespace.
    pub fn start(ns: &Netns, ifaces: &[&str], config: &str, extra_args: &[&str]) -> Result<Agent> {
        Self::start_with_bpffs(ns, ifaces, config, extra_args, Path::new(TEST_BPFFS))
    }

    /// Like [`Agent::start`] with another `--bpffs` directory (the shared test bpffs is
    /// still mounted first; the agent must deal with `bpffs` itself).
    pub fn start_with_bpffs(
        ns: &Netns,
        ifaces: &[&str],
        config: &str,
        extra_args: &[&str],
        bpffs: &Path,
    ) -> Result<Agent> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let instance = format!("t{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("stickylb-{instance}"));
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("stickylb.toml");
        std::fs::write(&cfg, config)?;
        let mut agent = Agent {
            ns_name: ns.name().to_string(),
            socket: dir.join("ctl.sock"),
            config: cfg,
            log: dir.join("agent.log"),
            dir,
            instance,
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            bpffs: bpffs.to_path_buf(),
            child: None,
        };
        agent.spawn()?;
        Ok(agent)
    }

    /// Starts (or restarts) the process and waits until its socket answers.
    pub fn spawn(&mut self) -> Result<()> {
        ensure_test_bpffs()?;
        let bin = stickylb_bin()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns_name])
            .arg(&bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config);
        for i in &self.ifaces {
            cmd.args(["--iface", i]);
        }
        cmd.arg("--socket").arg(&self.socket);
        cmd.arg("--bpffs")
            .arg(&self.bpffs)
            .args(["--instance", &self.instance]);
        if !self.extra_args.iter().any(|a| a == "--metrics") {
            cmd.args(["--metrics", "off"]);
        }
        cmd.arg("--state-dir").arg(self.dir.join("state"));
        cmd.args(&self.extra_args);
        let level = if self.extra_args.iter().any(|a| a == "--debug") {
            "debug"
        } else {
            "info"
        };
        cmd.env("RUST_LOG", level)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        self.child = Some(cmd.spawn().context("spawning stickylb run")?);
        // Generous: a busy CI machine starting a 10 000-backend agent in a debug build.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(v) = self.ctl(&["status"]) {
                if v.0 == 0 {
                    return Ok(());
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "agent exited with {status} before answering; log:\n{}",
                        self.log_text()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "agent did not answer on {} within 90 s; log:\n{}",
                    self.socket.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the agent process is still running (false once it exited or was stopped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until the agent's log contains `needle`; false after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (60 s at most) until every health-checked backend of every service has
    /// passed its last two checks: backends start up (HAProxy's default init-state), so a
    /// first check that times out on a loaded machine would otherwise take one down in the
    /// middle of a test's first round, and the round would measure the checks, not the
    /// thing tested. Backends without checks count as settled.
    pub fn wait_checks_settled(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let list = self.ok(&["backend", "list"])?;
            let rows = list.as_array().context("backend list is not an array")?;
            let settled = rows.iter().all(|b| {
                b["check"].is_null()
                    || (b["health"] == "up" && b["check"]["consecutive_ok"].as_u64() >= Some(2))
            });
            if settled {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("health checks not settled within 60 s: {list}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `stickylb <args> --socket … --json` (in the namespace); returns exit code,
    /// stdout, stderr.
    pub fn ctl(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let out: Output = Command::new(stickylb_bin()?)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .output()
            .context("running stickylb")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs a control command that must succeed; returns its JSON answer.
    pub fn ok(&self, args: &[&str]) -> Result<Value> {
        let (code, out, err) = self.ctl(args)?;
        if code != 0 {
            bail!("stickylb {args:?} exited {code}: {err}{out}");
        }
        serde_json::from_str(&out).with_context(|| format!("stickylb {args:?} printed {out:?}"))
    }

    /// Sends a signal to the agent process (the `ip netns exec` child execs it).
    pub fn signal(&self, sig: i32) -> Result<()> {
        let pid = self.child.as_ref().context("agent not running")?.id() as i32;
        // SAFETY: kill(2) on our child.
        if unsafe { libc::kill(pid, sig) } != 0 {
            bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `sig` and waits for the process to exit.
    pub fn stop(&mut self, sig: i32) -> Result<()> {
        self.signal(sig)?;
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    bail!("agent did not exit after signal {sig}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Rewrites the config file.
    pub fn write_config(&self, text: &str) -> Result<()> {
        let tmp = self.config.with_extension("tmp");
        std::fs::File::create(&tmp)?.write_all(text.as_bytes())?;
        std::fs::rename(tmp, &self.config)?;
        Ok(())
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(bin) = stickylb_bin() {
            let _ = Command::new(bin)
                .arg("detach")
                .arg("--bpffs")
                .arg(&self.bpffs)
                .args(["--instance", &self.instance])
                .arg("--state-dir")
                .arg(self.dir.join("state"))
                .output();
        }
        if std::env::var_os("SLB_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
