//! Builds the XDP programs (`lb-ebpf`, and `lb-decap` for the backends) for the BPF target with aya-build and the pinned
//! toolchain; the objects are embedded into the `stickylb` binary.
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
        for name in ["lb-ebpf", "lb-decap"] {
            let path = std::path::Path::new(&out).join(name);
            std::fs::write(&path, b"").with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    // `-Z build-std=core` for the BPF target needs unstable cargo flags on a stable
    // toolchain. Set only for the nested eBPF build, not for this crate's own build.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    println!("cargo::rerun-if-changed=../lb-common/src");
    println!("cargo::rerun-if-changed=../lb-packet/src");
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
    // The balancer and the backends' decapsulation program: two objects, so that a
    // backend loads none of the balancer's maps.
    let mut roots = Vec::new();
    for name in ["lb-ebpf", "lb-decap"] {
        let pkg = metadata
            .packages
            .iter()
            .find(|p| p.name.as_str() == name)
            .ok_or_else(|| anyhow!("package {name} not found in the workspace"))?;
        let root = pkg
            .manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {}", pkg.manifest_path))?;
        roots.push((name, root.to_string()));
    }
    aya_build::build_ebpf(
        roots.iter().map(|(name, root)| aya_build::Package {
            name,
            root_dir: root.as_str(),
            ..Default::default()
        }),
        Toolchain::Custom(&toolchain),
    )
}
