//! Local clusters as real processes on loopback: chunkservers, and optionally
//! a master they register with. Used by `tessera local up`, the demo, the
//! benchmarks and the integration tests.
//!
//! Every process is this `tessera` executable (`tessera chunkserver`,
//! `tessera master`) unless `TESSERA_CHUNKSERVER_BIN` names another
//! chunkserver binary. Each reports its addresses on its first stdout line
//! and logs to `<name>.log` beside its data dir. Processes are killed when the
//! cluster is dropped; a stopped one restarts on its old port and data dir.

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

pub use tessera_chunkserver::cli::{PARENT_ENV, exit_with_parent};

/// How processes are started.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `tessera` executable (for `tessera master`).
    tessera: PathBuf,
    /// The chunkserver program and the arguments before its own.
    chunkserver: PathBuf,
    prefix: Vec<String>,
}

impl Launcher {
    /// This executable, or `TESSERA_CHUNKSERVER_BIN` for chunkservers.
    pub fn from_env() -> anyhow::Result<Self> {
        let me = std::env::current_exe().context("locating the tessera executable")?;
        let mut l = Self::tessera(me);
        if let Ok(p) = std::env::var("TESSERA_CHUNKSERVER_BIN") {
            l.chunkserver = p.into();
            l.prefix.clear();
        }
        Ok(l)
    }

    /// A `tessera` executable for everything.
    pub fn tessera(program: impl Into<PathBuf>) -> Self {
        let p = program.into();
        Self { tessera: p.clone(), chunkserver: p, prefix: vec!["chunkserver".into()] }
    }
}

#[derive(Debug, Deserialize)]
struct Ready {
    grpc: SocketAddr,
    metrics: Option<SocketAddr>,
}

/// A process and how to start it again.
#[derive(Debug)]
struct Proc {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    async fn spawn(program: &Path, args: Vec<String>, log: PathBuf, name: &str) -> anyhow::Result<(Self, Ready)> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = Command::new(program);
        // The child asks the kernel to stop it when this process dies, so a
        // killed `tessera local up` leaves nothing running (see
        // `exit_with_parent`).
        cmd.env(PARENT_ENV, std::process::id().to_string());
        cmd.args(&args)
            .env("TOKIO_WORKER_THREADS", std::env::var("TESSERA_CHUNKSERVER_THREADS").unwrap_or_else(|_| "2".into()))
            .env("RUST_LOG", std::env::var("TESSERA_CHUNKSERVER_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(out))
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", program.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .with_context(|| format!("{name} did not report ready within 30 s; see {}", log.display()))??;
        let Some(line) = line else {
            let status = child.wait().await?;
            bail!("{name} exited before it was ready ({status}); see {}", log.display());
        };
        let ready: Ready = serde_json::from_str(&line).with_context(|| format!("{name} printed {line:?}"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((Self { program: program.to_path_buf(), args, log, child: Some(child) }, ready))
    }

    async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Whether the process still runs; one that exited (killed from
    /// outside, crashed) is reaped and forgotten, with how it ended.
    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    async fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        let Some(mut c) = self.child.take() else { return Ok(()) };
        if let Some(pid) = c.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            if tokio::time::timeout(grace, c.wait()).await.is_ok() {
                return Ok(());
            }
        }
        c.kill().await?;
        Ok(())
    }

    /// Starts the process again with `listen` pinned to its old address.
    async fn restart(&mut self, listen: SocketAddr, name: &str) -> anyhow::Result<Ready> {
        self.kill().await?;
        let mut args = self.args.clone();
        if let Some(i) = args.iter().position(|a| a == "--listen") {
            args[i + 1] = listen.to_string();
        }
        let (fresh, ready) = Proc::spawn(&self.program, args, self.log.clone(), name).await?;
        *self = fresh;
        Ok(ready)
    }
}

/// One chunkserver process.
#[derive(Debug)]
pub struct LocalServer {
    pub node_id: String,
    pub zone: String,
    pub data_dir: PathBuf,
    /// The process's stderr (its log).
    pub log: PathBuf,
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
    proc: Proc,
}

impl LocalServer {
    pub fn addr(&self) -> String {
        self.grpc.to_string()
    }

    pub fn is_running(&self) -> bool {
        self.proc.child.is_some()
    }

    /// Notices whether the process exited on its own (or was killed from
    /// outside): returns how, once.
    pub fn reap(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.reap()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Kills the process (SIGKILL: no chance to finish anything).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.proc.kill().await
    }

    /// Asks the process to stop (SIGTERM) and waits; SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        self.proc.stop(grace).await
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

/// The master process of a local cluster.
#[derive(Debug)]
pub struct LocalMaster {
    pub addr: SocketAddr,
    /// Its /metrics and /healthz endpoint.
    pub metrics: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    proc: Proc,
}

impl LocalMaster {
    pub fn is_running(&self) -> bool {
        self.proc.child.is_some()
    }

    /// As [`LocalServer::reap`].
    pub fn reap(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.reap()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.proc.kill().await
    }

    /// Asks the master to stop (SIGTERM) and waits; SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        self.proc.stop(grace).await
    }

    /// Starts it again on the same address and data dir.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let ready = self.proc.restart(self.addr, "master").await?;
        self.metrics = ready.metrics;
        Ok(())
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub servers: usize,
    /// Chunkserver i goes to zone `z{i % zones}`.
    pub zones: usize,
    /// Start a master and register the chunkservers with it.
    pub master: bool,
    /// Extra arguments for `tessera master` (timeouts, graces).
    pub master_args: Vec<String>,
    /// Extra arguments for every chunkserver (scrub rate, limits).
    pub chunkserver_args: Vec<String>,
}

/// A set of local processes.
#[derive(Debug)]
pub struct LocalCluster {
    pub servers: Vec<LocalServer>,
    pub master: Option<LocalMaster>,
    pub root: PathBuf,
    launcher: Launcher,
    _tmp: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// Starts `n` chunkservers without a master under `root` (a temporary
    /// dir if `None`).
    pub async fn start(launcher: Launcher, n: usize, root: Option<&Path>) -> anyhow::Result<Self> {
        let spec = ClusterSpec { servers: n, zones: 1, master: false, master_args: vec![], chunkserver_args: vec![] };
        Self::start_spec(launcher, &spec, root).await
    }

    pub async fn start_spec(launcher: Launcher, spec: &ClusterSpec, root: Option<&Path>) -> anyhow::Result<Self> {
        let (tmp, root) = match root {
            Some(r) => (None, r.to_path_buf()),
            None => {
                let t = tempfile::Builder::new().prefix("tessera-local-").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        std::fs::create_dir_all(&root)?;
        let mut master = None;
        if spec.master {
            let dir = root.join("master");
            std::fs::create_dir_all(&dir)?;
            let mut args: Vec<String> = vec![
                "master".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--metrics-listen".into(),
                "127.0.0.1:0".into(),
                "--data-dir".into(),
            ];
            args.push(dir.display().to_string());
            args.extend(spec.master_args.iter().cloned());
            let log = root.join("master.log");
            let (proc, ready) = Proc::spawn(&launcher.tessera, args, log.clone(), "master").await?;
            master = Some(LocalMaster { addr: ready.grpc, metrics: ready.metrics, data_dir: dir, log, proc });
        }
        let master_addr = master.as_ref().map(|m| m.addr.to_string());
        let zones = spec.zones.max(1);
        let starts: Vec<_> = (0..spec.servers)
            .map(|i| {
                let node_id = format!("cs{i}");
                let zone = format!("z{}", i % zones);
                let dir = root.join(&node_id);
                let mut args = launcher.prefix.clone();
                args.extend(
                    ["--node-id", &node_id, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
                        .map(String::from),
                );
                args.extend(["--data-dir".to_string(), dir.display().to_string(), "--enable-fault-injection".into()]);
                if let Some(m) = &master_addr {
                    args.extend(["--master".to_string(), m.clone(), "--zone".into(), zone.clone()]);
                    args.extend(["--rack".to_string(), format!("rack{i}")]);
                }
                args.extend(spec.chunkserver_args.iter().cloned());
                let program = launcher.chunkserver.clone();
                async move {
                    std::fs::create_dir_all(&dir)?;
                    let log = dir.with_extension("log");
                    let (proc, ready) = Proc::spawn(&program, args, log.clone(), &node_id).await?;
                    anyhow::Ok(LocalServer {
                        node_id,
                        zone,
                        data_dir: dir,
                        log,
                        grpc: ready.grpc,
                        metrics: ready.metrics,
                        proc,
                    })
                }
            })
            .collect();
        let mut servers = Vec::new();
        for s in futures::future::join_all(starts).await {
            servers.push(s?);
        }
        Ok(Self { servers, master, root, launcher, _tmp: tmp })
    }

    pub fn addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.addr()).collect()
    }

    pub fn master_addr(&self) -> Option<String> {
        self.master.as_ref().map(|m| m.addr.to_string())
    }

    /// Restarts server `i` (killing it first if it runs) on its old port
    /// and data dir.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let s = &mut self.servers[i];
        let ready = s.proc.restart(s.grpc, &s.node_id).await?;
        s.metrics = ready.metrics;
        Ok(())
    }

    /// The servers of a zone.
    pub fn zone(&self, zone: &str) -> Vec<usize> {
        (0..self.servers.len()).filter(|i| self.servers[*i].zone == zone).collect()
    }

    pub fn launcher(&self) -> &Launcher {
        &self.launcher
    }
}
