//! `tessera promote`: a leaf volume's files stored as a new version of a
//! fileset. The leaf lives on one node, so the request goes to that node's
//! CSI plugin (its control API), which reads the leaf as its pod sees it and
//! writes the version through the master.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Store a leaf volume as a new version of a fileset.
#[derive(Debug, Clone, Args)]
pub struct PromoteArgs {
    /// The leaf volume's id (`leaf-…`, as in its PersistentVolume's volumeHandle).
    pub volume: String,
    /// The fileset that gets the new version; created with the layout of the
    /// leaf's root if it does not exist.
    #[arg(long)]
    pub fileset: String,
    /// The control address (host:port) of the CSI node plugin on the leaf's node.
    #[arg(long, env = "TESSERA_NODE", default_value = "127.0.0.1:7501")]
    pub node: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

pub async fn run(a: &PromoteArgs) -> anyhow::Result<()> {
    let path = format!("/volumes/{}/promote", a.volume);
    let request = post(&a.node, &path, &a.fileset);
    let (status, body) = tokio::time::timeout(Duration::from_secs(a.timeout), request)
        .await
        .with_context(|| format!("no answer from the node plugin at {} within {} s", a.node, a.timeout))??;
    anyhow::ensure!(status == 200, "the node plugin at {} refused: {} {}", a.node, status, body.trim());
    let v: serde_json::Value = serde_json::from_str(&body).context("the node plugin's answer")?;
    crate::outln!(
        "{}@{}: {} files, {} bytes from {}",
        v["fileset"].as_str().unwrap_or_default(),
        v["version"],
        v["files"],
        v["bytes"],
        a.volume
    );
    Ok(())
}

/// One HTTP/1.1 POST; the status code and the body.
async fn post(addr: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the node plugin at {addr} (--node)"))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let (head, body) = out.split_once("\r\n\r\n").context("a malformed answer from the node plugin")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("a malformed status line from the node plugin")?;
    Ok((status, body.to_string()))
}
