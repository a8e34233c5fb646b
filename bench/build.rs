//! Builds the benchmark's XDP programs (`lb-bench-ebpf`) for the BPF target with aya-build
//! and the pinned toolchain, as `lb-agent/build.rs` does for the data path.

use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    // `-Z build-std=core` for the BPF target needs unstable cargo flags on a stable
    // toolchain; set only for the nested eBPF build.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
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
        .find(|p| p.name.as_str() == "lb-bench-ebpf")
        .ok_or_else(|| anyhow!("package lb-bench-ebpf not found in the workspace"))?;
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
