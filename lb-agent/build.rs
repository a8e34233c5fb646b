//! Builds the XDP program (`lb-ebpf`) for the BPF target with aya-build and the pinned
//! toolchain; the object is embedded into the `stickylb` binary.
//!
//! Fuzzing builds (`cargo fuzz`, which passes `--cfg fuzzing`) and builds with
//! `STICKYLB_NO_EBPF` set skip it and embed an empty object instead: the fuzz targets need
//! only the parsers, the sanitizer flags of such builds would leak into the nested eBPF
//! build, and [`loader::load`](src/loader.rs) refuses an empty object at run time.

use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=STICKYLB_NO_EBPF");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some()
        || std::env::var_os("STICKYLB_NO_EBPF").is_some_and(|v| !v.is_empty() && v != "0")
    {
        let out = std::env::var_os("OUT_DIR").context("OUT_DIR is not set")?;
        let path = std::path::Path::new(&out).join("lb-ebpf");
        std::fs::write(&path, b"").with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    // `-Z build-std=core` for the BPF target needs unstable cargo flags on a stable
    // toolchain. Set only for the nested eBPF build, not for this crate's own build.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    println!("cargo::rerun-if-changed=../lb-common/src");
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    // The pinned toolchain: `[workspace.metadata.stickylb] toolchain` of the root manifest.
    println!("cargo::rerun-if-changed=../Cargo.toml");
    let toolchain = metadata.workspace_metadata["stickylb"]["toolchain"]
        .as_str()
        .context("the root Cargo.toml has no [workspace.metadata.stickylb] toolchain")?
        .to_string();
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("package lb-ebpf not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
