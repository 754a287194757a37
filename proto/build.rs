// Generates the gRPC code. protoc comes from the protoc-bin-vendored crate so a
// fresh machine builds without a system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().bytes(".").compile_with_config(
        config,
        &["proto/tessera/chunkserver/v1/chunkserver.proto", "proto/tessera/master/v1/master.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
