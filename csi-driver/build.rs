//! Generates gRPC code from two official protocol definitions: the CSI
//! spec's `csi.proto`, and the kubelet's plugin-registration `api.proto`
//! (how a node plugin announces itself to the kubelet).
//!
//! Neither is copied into this repository: each comes from its Go module
//! (github.com/container-storage-interface/spec, k8s.io/kubelet), which
//! `go mod download` fetches through the Go module proxy and verifies
//! against the checksum database. `TESSERA_CSI_PROTO` and
//! `TESSERA_PLUGINREGISTRATION_PROTO` may name the files instead (for
//! builders without Go).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The CSI spec version the driver implements.
const CSI_SPEC: &str = "github.com/container-storage-interface/spec@v1.12.0";
/// The kubelet release whose plugin-registration API (v1) is used.
const KUBELET: &str = "k8s.io/kubelet@v0.35.4";

/// `file` inside Go module `module@version`, or the file `env` names.
fn proto(env: &str, module: &str, file: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed={env}");
    if let Ok(p) = std::env::var(env) {
        return Ok(p.into());
    }
    let out = Command::new("go")
        .args(["mod", "download", "-json", module])
        .env("GOFLAGS", "-mod=mod")
        .output()
        .map_err(|e| format!("running `go mod download {module}` for {file}: {e} (install Go, or set {env})"))?;
    if !out.status.success() {
        return Err(format!(
            "`go mod download {module}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let dir = info["Dir"].as_str().ok_or("`go mod download -json` gave no Dir")?;
    Ok(PathBuf::from(dir).join(file))
}

fn compile(proto: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let dir = proto.parent().ok_or("a proto file has no directory")?.to_path_buf();
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().build_client(true).build_server(true).compile_with_config(
        config,
        std::slice::from_ref(&proto.to_path_buf()),
        &[dir, protoc_bin_vendored::include_path()?],
    )?;
    println!("cargo:rerun-if-changed={}", proto.display());
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile(&proto("TESSERA_CSI_PROTO", CSI_SPEC, "csi.proto")?)?;
    compile(&proto("TESSERA_PLUGINREGISTRATION_PROTO", KUBELET, "pkg/apis/pluginregistration/v1/api.proto")?)?;
    Ok(())
}
