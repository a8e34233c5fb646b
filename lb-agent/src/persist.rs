//! Runtime changes survive restarts: the agent saves its effective configuration (config
//! file plus control-command changes) atomically after every change, with a fingerprint
//! of the config file it started from. On start, if the file is unchanged since, the
//! saved state wins; if the file changed on disk, the file wins. Either way the agent
//! logs which one it used.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// Metadata saved next to the runtime configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub config_path: String,
    /// FNV-1a 64 of the config file's bytes when the agent loaded it.
    pub config_fingerprint: String,
    pub saved_unix_ms: u64,
    /// Control-command changes applied on top of the file since it was loaded.
    pub changes: u64,
}

/// FNV-1a 64 over bytes, as hex.
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The state files of one instance.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
    fn config_path(&self) -> PathBuf {
        self.dir.join("runtime.toml")
    }
    fn meta_path(&self) -> PathBuf {
        self.dir.join("runtime.json")
    }

    /// Saves the runtime configuration and its metadata atomically (write, fsync, rename).
    pub fn save(&self, config_toml: &str, meta: &Meta) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating state directory {}", self.dir.display()))?;
        write_atomic(&self.config_path(), config_toml.as_bytes())?;
        write_atomic(
            &self.meta_path(),
            serde_json::to_string_pretty(meta)?.as_bytes(),
        )?;
        Ok(())
    }

    /// The saved runtime configuration, if any.
    pub fn load(&self) -> Option<(String, Meta)> {
        let text = fs::read_to_string(self.config_path()).ok()?;
        let meta = serde_json::from_str(&fs::read_to_string(self.meta_path()).ok()?).ok()?;
        Some((text, meta))
    }

    /// Removes the saved state.
    pub fn clear(&self) {
        let _ = fs::remove_file(self.config_path());
        let _ = fs::remove_file(self.meta_path());
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("slb-persist-{}", std::process::id()));
        let sd = StateDir::new(dir.clone());
        assert!(sd.load().is_none());
        let meta = Meta {
            config_path: "/etc/x.toml".into(),
            config_fingerprint: fingerprint(b"abc"),
            saved_unix_ms: 1,
            changes: 2,
        };
        sd.save("[[service]]\n", &meta).unwrap();
        assert_eq!(sd.load(), Some(("[[service]]\n".to_string(), meta)));
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
        sd.clear();
        assert!(sd.load().is_none());
        let _ = fs::remove_dir_all(dir);
    }
}
