//! Local chunkservers as real processes on loopback, for the demo, the
//! benchmarks and the integration tests.
//!
//! Each chunkserver is `tessera chunkserver` (or the binary named by
//! `TESSERA_CHUNKSERVER_BIN`) with its own data dir, port 0 and fault
//! injection on. It reports its addresses on its first stdout line and logs
//! to `<node>.log` beside its data dir; the processes are killed when the
//! cluster is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tessera_proto::cs;
use tessera_proto::cs::fault_injection_client::FaultInjectionClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How a chunkserver process is started.
#[derive(Debug, Clone)]
pub struct Launcher {
    program: PathBuf,
    /// Arguments before the chunkserver's own (e.g. the `chunkserver` subcommand).
    prefix: Vec<String>,
}

impl Launcher {
    /// `TESSERA_CHUNKSERVER_BIN` if set, else this executable's `chunkserver`
    /// subcommand.
    pub fn from_env() -> anyhow::Result<Self> {
        if let Ok(p) = std::env::var("TESSERA_CHUNKSERVER_BIN") {
            return Ok(Self { program: p.into(), prefix: vec![] });
        }
        Ok(Self::tessera(std::env::current_exe().context("locating the tessera executable")?))
    }

    /// A `tessera` executable's `chunkserver` subcommand.
    pub fn tessera(program: impl Into<PathBuf>) -> Self {
        Self { program: program.into(), prefix: vec!["chunkserver".into()] }
    }

    /// A `tessera-chunkserver` executable.
    pub fn chunkserver(program: impl Into<PathBuf>) -> Self {
        Self { program: program.into(), prefix: vec![] }
    }
}

#[derive(Debug, Deserialize)]
struct Ready {
    grpc: SocketAddr,
    metrics: Option<SocketAddr>,
}

/// One running chunkserver process.
#[derive(Debug)]
pub struct LocalServer {
    pub node_id: String,
    pub data_dir: PathBuf,
    /// The process's stderr (its log).
    pub log: PathBuf,
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
    child: Option<Child>,
}

impl LocalServer {
    pub fn addr(&self) -> String {
        self.grpc.to_string()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process (SIGKILL: no chance to finish anything).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// Sets this server's injected faults.
    pub async fn set_faults(&self, faults: cs::Faults) -> anyhow::Result<()> {
        let mut c = FaultInjectionClient::connect(format!("http://{}", self.grpc))
            .await
            .with_context(|| format!("connecting to {} for fault injection", self.node_id))?;
        c.set_faults(faults).await?;
        Ok(())
    }

    pub async fn clear_faults(&self) -> anyhow::Result<()> {
        self.set_faults(cs::Faults::default()).await
    }
}

/// A set of local chunkserver processes.
#[derive(Debug)]
pub struct LocalCluster {
    pub servers: Vec<LocalServer>,
    launcher: Launcher,
    _tmp: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// Starts `n` chunkservers under `root` (a temporary dir if `None`).
    pub async fn start(launcher: Launcher, n: usize, root: Option<&Path>) -> anyhow::Result<Self> {
        let (tmp, root) = match root {
            Some(r) => (None, r.to_path_buf()),
            None => {
                let t = tempfile::Builder::new().prefix("tessera-local-").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let mut cluster = Self { servers: Vec::new(), launcher, _tmp: tmp };
        let starts = (0..n).map(|i| {
            let node_id = format!("cs{i}");
            let dir = root.join(&node_id);
            spawn(&cluster.launcher, node_id, dir, None)
        });
        for s in futures::future::join_all(starts).await {
            cluster.servers.push(s?);
        }
        Ok(cluster)
    }

    pub fn addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.addr()).collect()
    }

    /// Restarts server `i` (killing it first if it runs) on its old port
    /// and data dir.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let old = &mut self.servers[i];
        old.kill().await?;
        let fresh = spawn(&self.launcher, old.node_id.clone(), old.data_dir.clone(), Some(old.grpc)).await?;
        self.servers[i] = fresh;
        Ok(())
    }
}

async fn spawn(
    launcher: &Launcher,
    node_id: String,
    dir: PathBuf,
    listen: Option<SocketAddr>,
) -> anyhow::Result<LocalServer> {
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.with_extension("log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let listen_arg = listen.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1:0".into());
    let mut cmd = Command::new(&launcher.program);
    cmd.args(&launcher.prefix)
        .args(["--node-id", &node_id, "--listen", &listen_arg, "--metrics-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&dir)
        .arg("--enable-fault-injection")
        .env("TOKIO_WORKER_THREADS", std::env::var("TESSERA_CHUNKSERVER_THREADS").unwrap_or_else(|_| "2".into()))
        .env("RUST_LOG", std::env::var("TESSERA_CHUNKSERVER_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {}", launcher.program.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .with_context(|| format!("{node_id} did not report ready within 30 s; see {}", log_path.display()))??;
    let Some(line) = line else {
        let status = child.wait().await?;
        bail!("{node_id} exited before it was ready ({status}); see {}", log_path.display());
    };
    let ready: Ready = serde_json::from_str(&line).with_context(|| format!("{node_id} printed {line:?}"))?;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(LocalServer {
        node_id,
        data_dir: dir,
        log: log_path,
        grpc: ready.grpc,
        metrics: ready.metrics,
        child: Some(child),
    })
}
