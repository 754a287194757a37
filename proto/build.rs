// Generates the gRPC code. protoc comes from the protoc-bin-vendored crate so a
// fresh machine builds without a system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY (not unsafe code): build scripts are single-threaded; prost-build
    // reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&["proto/tessera/chunkserver/v1/chunkserver.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
