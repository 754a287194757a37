//! Generates the CSI gRPC code from the official `csi.proto`.
//!
//! The definition is not copied into this repository: it comes from the
//! CSI spec's Go module (github.com/container-storage-interface/spec), which
//! `go mod download` fetches through the Go module proxy and verifies
//! against the checksum database. `TESSERA_CSI_PROTO` may name a csi.proto
//! instead (for builders without Go, e.g. from the spec's release tarball).

use std::path::PathBuf;
use std::process::Command;

/// The CSI spec version the driver implements.
const SPEC: &str = "github.com/container-storage-interface/spec@v1.12.0";

fn csi_proto() -> Result<PathBuf, Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=TESSERA_CSI_PROTO");
    if let Ok(p) = std::env::var("TESSERA_CSI_PROTO") {
        return Ok(p.into());
    }
    let out = Command::new("go").args(["mod", "download", "-json", SPEC]).env("GOFLAGS", "-mod=mod").output().map_err(
        |e| format!("running `go mod download {SPEC}` for csi.proto: {e} (install Go, or set TESSERA_CSI_PROTO)"),
    )?;
    if !out.status.success() {
        return Err(format!(
            "`go mod download {SPEC}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let dir = info["Dir"].as_str().ok_or("`go mod download -json` gave no Dir")?;
    Ok(PathBuf::from(dir).join("csi.proto"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = csi_proto()?;
    let dir = proto.parent().ok_or("csi.proto has no directory")?.to_path_buf();
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().build_client(true).build_server(true).compile_with_config(
        config,
        std::slice::from_ref(&proto),
        &[dir, protoc_bin_vendored::include_path()?],
    )?;
    println!("cargo:rerun-if-changed={}", proto.display());
    Ok(())
}
