//! `tessera-image`: the Tessera container image without an engine.
//!
//! Writes the image the Helm chart runs (tessera, tessera-operator,
//! tessera-chunkserver and tessera-csi with the shared libraries they
//! load) as an OCI archive, from binaries already built. Import it into a
//! node's containerd, or copy it into a registry:
//!
//! ```sh
//! cargo build --release --bins
//! cargo run -p tessera-e2e --bin tessera-image -- --bin-dir target/release --out tessera.oci.tar
//! ctr -n k8s.io images import tessera.oci.tar            # on each node
//! skopeo copy oci-archive:tessera.oci.tar docker://registry.example/tessera:0.1.0
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Writes the Tessera container image as an OCI archive, from built binaries.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Where tessera, tessera-operator, tessera-chunkserver and tessera-csi are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The image's name, as the chart's image.repository:image.tag will ask for it.
    #[arg(long, default_value = concat!("localhost/tessera:", env!("CARGO_PKG_VERSION")))]
    reference: String,
    /// The OCI archive to write.
    #[arg(long, default_value = "tessera.oci.tar")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let image = tessera_e2e::image::tessera(&args.reference, &args.bin_dir)?;
    let written = image.write_archive(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{} {} -> {}", written.reference, written.manifest_digest, args.out.display());
    Ok(())
}
