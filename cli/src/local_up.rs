//! `tessera local up`: a master and chunkservers on loopback, in the
//! foreground, as real processes. It writes `local.json` in its data dir so
//! the other commands find the master, and serves a small control API there
//! so `tessera fault stop|start` can stop and start servers, zones or the
//! master. Ctrl-C stops everything; starting again with the same data dir
//! keeps every fileset.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::routing::post;
use clap::Args;
use tokio::sync::Mutex;

use crate::local::{ClusterSpec, Launcher, LocalCluster};
use crate::target::{LocalServerState, LocalState, default_local_dir};

/// Run a local cluster (master and chunkservers) in the foreground.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Where the cluster keeps its data (default ~/.tessera/local, or
    /// $TESSERA_HOME/local). Restarting with the same dir keeps the data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Chunkserver processes.
    #[arg(long, default_value_t = 9)]
    pub servers: usize,
    /// Zones the chunkservers are spread over (round robin).
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    /// Extra master arguments, e.g. --master-arg=--repair-grace=30s.
    #[arg(long = "master-arg", allow_hyphen_values = true)]
    pub master_args: Vec<String>,
    /// Extra arguments for every chunkserver, e.g.
    /// --chunkserver-arg=--scrub-bandwidth=64MiB/s.
    #[arg(long = "chunkserver-arg", allow_hyphen_values = true)]
    pub chunkserver_args: Vec<String>,
}

struct Control {
    cluster: Mutex<LocalCluster>,
    state_path: PathBuf,
    control: SocketAddr,
    /// How each process that exited on its own ended, by name.
    exits: Mutex<std::collections::HashMap<String, String>>,
}

impl Control {
    async fn save(&self) -> anyhow::Result<()> {
        let c = self.cluster.lock().await;
        let exits = self.exits.lock().await;
        let state = LocalState {
            master: c.master_addr().unwrap_or_default(),
            control: self.control.to_string(),
            pid: std::process::id(),
            master_pid: c.master.as_ref().and_then(|m| m.pid()).unwrap_or(0),
            servers: c
                .servers
                .iter()
                .map(|s| LocalServerState {
                    id: s.node_id.clone(),
                    grpc: s.addr(),
                    zone: s.zone.clone(),
                    running: s.is_running(),
                    pid: s.pid().unwrap_or(0),
                    exited: if s.is_running() { None } else { exits.get(&s.node_id).cloned() },
                })
                .collect(),
        };
        let tmp = self.state_path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
        std::fs::rename(&tmp, &self.state_path)?;
        Ok(())
    }

    /// Notices children that exited without being asked to (killed from
    /// outside, crashed) and records it in `local.json`. Returns whether
    /// anything changed.
    async fn reap(&self) -> bool {
        let mut c = self.cluster.lock().await;
        let mut gone = Vec::new();
        if let Some(m) = c.master.as_mut()
            && let Some(status) = m.reap()
        {
            gone.push(("master".to_string(), status));
        }
        for s in c.servers.iter_mut() {
            if let Some(status) = s.reap() {
                gone.push((s.node_id.clone(), status));
            }
        }
        drop(c);
        let mut exits = self.exits.lock().await;
        for (name, status) in &gone {
            eprintln!("{name} exited ({status}); `tessera fault start {name}` starts it again");
            exits.insert(name.clone(), status.to_string());
        }
        !gone.is_empty()
    }

    /// Stops or starts `target`: `master`, a server id, or `zone:NAME`.
    async fn act(&self, target: &str, start: bool) -> anyhow::Result<String> {
        // A child that died behind our back is started again, not skipped.
        self.reap().await;
        let mut c = self.cluster.lock().await;
        let what = if target == "master" {
            let m = c.master.as_mut().context("this cluster has no master")?;
            if start {
                if !m.is_running() {
                    m.restart().await?;
                }
            } else {
                m.kill().await?;
            }
            "master".to_string()
        } else {
            let ids: Vec<usize> = match target.strip_prefix("zone:") {
                Some(z) => c.zone(z),
                None => c.servers.iter().position(|s| s.node_id == target).into_iter().collect(),
            };
            anyhow::ensure!(!ids.is_empty(), "no server or zone {target:?}");
            for &i in &ids {
                if start {
                    if !c.servers[i].is_running() {
                        c.restart(i).await?;
                    }
                } else {
                    c.servers[i].kill().await?;
                }
            }
            ids.iter().map(|&i| c.servers[i].node_id.clone()).collect::<Vec<_>>().join(", ")
        };
        drop(c);
        self.save().await?;
        Ok(format!("{} {what}", if start { "started" } else { "stopped" }))
    }
}

async fn handle(
    State(ctl): State<Arc<Control>>,
    Path((verb, target)): Path<(String, String)>,
) -> (axum::http::StatusCode, String) {
    let start = match verb.as_str() {
        "start" => true,
        "stop" => false,
        _ => return (axum::http::StatusCode::NOT_FOUND, format!("unknown action {verb:?}\n")),
    };
    match ctl.act(&target, start).await {
        Ok(msg) => (axum::http::StatusCode::OK, msg + "\n"),
        Err(e) => (axum::http::StatusCode::BAD_REQUEST, format!("{e:#}\n")),
    }
}

/// Whether process `pid` is alive and its command line mentions `needle`
/// (a pid can be reused by an unrelated process).
fn alive_with(pid: u32, needle: &str) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => String::from_utf8_lossy(&cmd).replace('\0', " ").contains(needle),
        Err(_) => false,
    }
}

/// Cleans up after a `local up` with this data dir that was killed: its
/// children (which should have died with it) are stopped, so their ports
/// and the master's store lock are free. A `local up` still running is an
/// error.
async fn clean_up_after(dir: &std::path::Path) -> anyhow::Result<()> {
    let path = LocalState::path(dir);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let Ok(old) = serde_json::from_str::<LocalState>(&text) else { return Ok(()) };
    if old.pid != std::process::id() && alive_with(old.pid, "local up") {
        anyhow::bail!(
            "a local cluster already runs with data dir {} (tessera local up, pid {}); stop it with Ctrl-C or `kill {}`",
            dir.display(),
            old.pid,
            old.pid
        );
    }
    let needle = dir.display().to_string();
    let pids: Vec<u32> = std::iter::once(old.master_pid).chain(old.servers.iter().map(|s| s.pid)).collect();
    let mut stopped = 0;
    for pid in pids.into_iter().filter(|p| alive_with(*p, &needle)) {
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            stopped += 1;
            // Gone once /proc says so (it is not our child to wait for).
            let t = std::time::Instant::now();
            while alive_with(pid, &needle) && t.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    if stopped > 0 {
        eprintln!("stopped {stopped} processes left by an earlier local cluster with this data dir");
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

pub async fn up(a: &UpArgs) -> anyhow::Result<()> {
    let dir = a.data_dir.clone().unwrap_or_else(default_local_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    clean_up_after(&dir).await?;
    let spec = ClusterSpec {
        servers: a.servers,
        zones: a.zones,
        master: true,
        master_args: a.master_args.clone(),
        chunkserver_args: a.chunkserver_args.clone(),
    };
    let cluster = LocalCluster::start_spec(Launcher::from_env()?, &spec, Some(&dir)).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control = listener.local_addr()?;
    let master = cluster.master_addr().unwrap_or_default();
    let ctl = Arc::new(Control {
        cluster: Mutex::new(cluster),
        state_path: LocalState::path(&dir),
        control,
        exits: Mutex::new(Default::default()),
    });
    ctl.save().await?;
    // Watch the children: a dead one shows in local.json and `status`.
    let watcher = {
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                if ctl.reap().await
                    && let Err(e) = ctl.save().await
                {
                    eprintln!("could not update local.json: {e:#}");
                }
            }
        })
    };
    let app = axum::Router::new().route("/{verb}/{target}", post(handle)).with_state(ctl.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    crate::outln!(
        "tessera local cluster: master {master}, {} chunkservers in {} zones, data in {}",
        a.servers,
        a.zones,
        dir.display()
    );
    if a.data_dir.is_some() {
        crate::outln!("  other commands: export TESSERA_MASTER={master}");
    }
    crate::outln!("  Ctrl-C stops it; starting again with the same data dir keeps everything.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.abort();
    watcher.abort();
    // Chunkservers finish what they are doing (all at once), then the master.
    let mut c = ctl.cluster.lock().await;
    let grace = Duration::from_secs(10);
    futures::future::try_join_all(c.servers.iter_mut().map(|s| s.stop(grace))).await?;
    if let Some(m) = c.master.as_mut() {
        m.stop(grace).await?;
    }
    let _ = std::fs::remove_file(LocalState::path(&dir));
    crate::outln!("stopped");
    Ok(())
}
