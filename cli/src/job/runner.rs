//! A job run on this machine: the scheduler of `tessera_core::jobs` (the
//! controller logic the Job controller runs too) driven by real attempts.
//! Each attempt reads its group's files through the client's read path
//! with a read mode of its own (normal, or accelerated from the start when
//! the scheduler says so; a switch to accelerated cuts short the read in
//! flight and reads it again so, decision 0024), counts what it processed
//! and received, and leaves its result in a directory of its own; the
//! scheduler's commands start, switch, stop and discard attempts.
//!
//! Which servers are slow comes from the chunkservers' device bandwidth in
//! the master's status and the client's own view of each server (the same
//! figures reads and repairs use). Nodes are the chunkservers' nodes; a
//! local cluster's link loads are not measured, so they are reported as
//! idle.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tessera_client::StripeClient;
use tessera_client::fileset::OpenVersion;
use tessera_core::jobs::commit::Attempt;
use tessera_core::jobs::plan::GroupPlan;
use tessera_core::jobs::scheduler::{Command, Counts, GroupSpec, Outcome, Scheduler};
use tessera_core::jobs::straggler::{self, Policy, Priority, TaskId};
use tessera_core::manifest::EntryKind;
use tessera_core::read_plan::ReadMode;
use tessera_proto::ms;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span};

/// A server whose devices read at under this fraction of the median
/// server's is slow.
const SLOW_DEVICE: f64 = 0.5;
/// Readings in a row (status polls that answered, at least a second apart,
/// each the master's device figures with the client's own latency view) a
/// server must be slow in before it counts as slow.
const SLOW_READINGS: u32 = 2;
/// How often the master's view of the servers is asked for (its figures
/// change with heartbeats, every second).
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// What each attempt does with its group's files.
#[derive(Debug, Clone)]
pub enum Work {
    /// Hash every file (`sha256sum`'s lines, in `sha256sums`) at most
    /// `rate` bytes per second, or `node_rate`'s on the nodes it names:
    /// the benchmark's task, its rate standing for a task's compute.
    Hash { rate: Option<f64>, node_rate: BTreeMap<String, f64> },
    /// Stage the group's files under the attempt's `input/` (the files
    /// only, at their paths), then run `argv` with `env` and the job's
    /// variables.
    Command { argv: Vec<String>, env: Vec<(String, String)> },
}

/// How to run a job.
#[derive(Debug, Clone)]
pub struct Setup {
    pub policy: Policy,
    pub backoff_limit: u32,
    /// Task slots per node.
    pub slots: BTreeMap<String, usize>,
    /// The node of each chunkserver (by address).
    pub node_of: BTreeMap<String, String>,
    /// Time between two evaluations.
    pub every: Duration,
    pub work: Work,
    /// Where attempts keep their files (`<group>/attempt-<n>/`).
    pub scratch: PathBuf,
    /// Groups that run at critical priority.
    pub critical: BTreeSet<String>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub counts: Counts,
    pub makespan: Duration,
    /// Bytes of the groups' files: one read of each.
    pub bytes: u64,
    /// Bytes the attempts received from chunkservers, discarded ones' too.
    pub fetched: u64,
    /// Seconds every attempt ran, and those of attempts whose result was
    /// discarded (lost, stopped, failed).
    pub task_seconds: f64,
    pub wasted_task_seconds: f64,
    /// Each group's winning attempt and its output directory.
    pub results: BTreeMap<String, (Attempt, PathBuf)>,
    pub outcome: Option<Outcome>,
    pub end_game_at: Option<Duration>,
}

/// What attempts share: the version, the client and the work.
struct Ctx {
    version: OpenVersion,
    client: Arc<StripeClient>,
    work: Work,
}

/// An attempt's counters, shared with the runner.
struct Meters {
    /// Whether it reads accelerated; a switch also cuts short the read in
    /// flight, which starts again accelerated (the seed's "all its remaining
    /// data": a stripe a slow server holds back is not waited for).
    accelerated: tokio::sync::watch::Sender<bool>,
    processed: AtomicU64,
    fetched: AtomicU64,
    /// Every file is read: what remains (the task's command) reads nothing,
    /// so its rate says nothing about stragglers any more.
    read_all: AtomicBool,
}

impl Meters {
    fn new(accelerated: bool) -> Self {
        Self {
            accelerated: tokio::sync::watch::Sender::new(accelerated),
            processed: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            read_all: AtomicBool::new(false),
        }
    }
}

struct Live {
    node: String,
    dir: PathBuf,
    started: Instant,
    meters: Arc<Meters>,
    /// (when, bytes processed), over the last rate window.
    samples: VecDeque<(Instant, u64)>,
    /// The rate last reported.
    rate: f64,
    handle: tokio::task::JoinHandle<()>,
}

/// An attempt dropped with the runner (an error returned early) is stopped,
/// not left running detached.
impl Drop for Live {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Live {
    /// Bytes per second over the window (since the start for a young one);
    /// once every file is read, the rate it had while reading.
    fn rate(&mut self, now: Instant, window: Duration) -> f64 {
        if self.meters.read_all.load(Ordering::Relaxed) {
            return self.rate;
        }
        self.rate = self.window_rate(now, window);
        self.rate
    }

    fn window_rate(&mut self, now: Instant, window: Duration) -> f64 {
        let done = self.meters.processed.load(Ordering::Relaxed);
        self.samples.push_back((now, done));
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= window {
            self.samples.pop_front();
        }
        let (t0, d0) = self.samples.front().copied().unwrap_or((self.started, 0));
        let (t0, d0) = if now.duration_since(t0) < window / 4 { (self.started, 0) } else { (t0, d0) };
        let span = now.duration_since(t0).as_secs_f64();
        if span <= 0.0 { 0.0 } else { (done - d0) as f64 / span }
    }
}

/// Runs `groups` of `version` to the end: every group committed (the
/// report's results hold each one's output) or the job failed (its outcome
/// says which group and why). `changed` is called with the counts after
/// every step.
pub async fn run(
    version: OpenVersion,
    client: Arc<StripeClient>,
    groups: Vec<GroupPlan>,
    setup: Setup,
    mut changed: impl FnMut(&Counts),
) -> anyhow::Result<RunReport> {
    let specs = groups.iter().map(|g| spec_of(g, &setup)).collect();
    let mut sched = Scheduler::new(setup.policy.clone(), specs, setup.slots.clone(), setup.backoff_limit);
    let plans: BTreeMap<String, Arc<GroupPlan>> = groups.into_iter().map(|g| (g.name.clone(), Arc::new(g))).collect();
    let mut report = RunReport { bytes: plans.values().map(|g| g.bytes).sum(), ..Default::default() };
    let mut master = version.master();
    let fileset = version.version.fileset.clone();
    let ctx = Arc::new(Ctx { version, client, work: setup.work.clone() });
    let (tx, mut rx) = mpsc::unbounded_channel::<(TaskId, Result<PathBuf, String>)>();
    let start = Instant::now();
    let window = (setup.every * 4).max(Duration::from_secs(1));
    let mut live: BTreeMap<TaskId, Live> = BTreeMap::new();
    // Attempts that finished, until the scheduler says whether they count.
    let mut finished: BTreeMap<TaskId, (PathBuf, f64, u64)> = BTreeMap::new();
    let mut tick = tokio::time::interval(setup.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slow = BTreeSet::new();
    let mut streaks = straggler::SlowStreaks::new(SLOW_READINGS);
    let mut status_at: Option<Instant> = None;
    loop {
        let cmds = tokio::select! {
            Some((task, result)) = rx.recv() => {
                // Stopped meanwhile: its answer crossed the cancel.
                let Some(l) = live.remove(&task) else { continue };
                let seconds = l.started.elapsed().as_secs_f64();
                let fetched = l.meters.fetched.load(Ordering::Relaxed);
                report.task_seconds += seconds;
                report.fetched += fetched;
                match result {
                    Ok(out) => {
                        finished.insert(task.clone(), (out, seconds, fetched));
                        sched.finished(&task)?
                    }
                    Err(reason) => {
                        // Its directory stays, logs and all, for the user
                        // to see why.
                        info!(group = %task.group, attempt = task.attempt, dir = %l.dir.display(), %reason, "attempt failed");
                        report.wasted_task_seconds += seconds;
                        sched.failed(&task, &reason)?
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for (t, l) in &mut live {
                    let rate = l.rate(now, window);
                    sched.report(t, rate, 0.0);
                }
                if status_at.is_none_or(|at| now.duration_since(at) >= STATUS_EVERY) {
                    status_at = Some(now);
                    if let Some(s) = slow_servers(&mut master, &fileset, &ctx.client).await {
                        let s = streaks.observe(&s);
                        if s != slow {
                            info!(slow = ?s, "slow servers");
                        }
                        slow = s;
                    }
                }
                sched.tick(start.elapsed(), &slow)
            }
        };
        for c in cmds {
            match c {
                Command::Launch { task, node, accelerated, backup } => {
                    let dir = setup.scratch.join(&task.group).join(format!("attempt-{}", task.attempt));
                    let meters = Arc::new(Meters::new(accelerated));
                    let span = info_span!("attempt", group = %task.group, attempt = task.attempt, %node, backup);
                    let (ctx, plan, m, tx, t, d, n) = (
                        ctx.clone(),
                        plans[&task.group].clone(),
                        meters.clone(),
                        tx.clone(),
                        task.clone(),
                        dir.clone(),
                        node.clone(),
                    );
                    let handle = tokio::spawn(tracing::Instrument::instrument(
                        async move {
                            let r = attempt(&ctx, &plan, &d, &n, &m).await.map_err(|e| format!("{e:#}"));
                            let _ = tx.send((t, r));
                        },
                        span,
                    ));
                    debug!(group = %task.group, attempt = task.attempt, %node, accelerated, backup, "launched");
                    live.insert(
                        task,
                        Live {
                            node,
                            dir,
                            started: Instant::now(),
                            meters,
                            samples: VecDeque::new(),
                            rate: 0.0,
                            handle,
                        },
                    );
                }
                Command::Accelerate { task, reason } => {
                    if let Some(l) = live.get(&task) {
                        info!(group = %task.group, attempt = task.attempt, node = %l.node, ?reason, "accelerated");
                        l.meters.accelerated.send_replace(true);
                    }
                }
                Command::Committed { task } => {
                    if let Some((out, _, _)) = finished.remove(&task) {
                        report.results.insert(task.group.clone(), (task.attempt, out));
                    }
                }
                Command::Cancel { task, .. } => {
                    if let Some(mut l) = live.remove(&task) {
                        l.handle.abort();
                        let _ = (&mut l.handle).await;
                        report.task_seconds += l.started.elapsed().as_secs_f64();
                        report.wasted_task_seconds += l.started.elapsed().as_secs_f64();
                        report.fetched += l.meters.fetched.load(Ordering::Relaxed);
                        remove_dir(&l.dir).await;
                    } else if let Some((out, seconds, _)) = finished.remove(&task) {
                        report.wasted_task_seconds += seconds;
                        remove_dir(out.parent().unwrap_or(&out)).await;
                    }
                }
                Command::EndGame => {
                    info!(at_s = start.elapsed().as_secs_f64(), "end game");
                    report.end_game_at = Some(start.elapsed());
                }
                Command::Publish { .. } | Command::Fail { .. } => {}
            }
        }
        changed(&sched.counts());
        if sched.outcome().is_some() && live.is_empty() {
            break;
        }
    }
    report.makespan = start.elapsed();
    report.counts = sched.counts();
    report.outcome = sched.outcome().cloned();
    Ok(report)
}

fn spec_of(g: &GroupPlan, setup: &Setup) -> GroupSpec {
    let mut by_node = BTreeMap::new();
    for (server, bytes) in &g.by_server {
        let node = setup.node_of.get(server).cloned().unwrap_or_else(|| server.clone());
        *by_node.entry(node).or_default() += bytes;
    }
    GroupSpec {
        name: g.name.clone(),
        bytes: g.bytes,
        by_node,
        servers: g.by_server.keys().cloned().collect(),
        priority: if setup.critical.contains(&g.name) { Priority::Critical } else { Priority::Normal },
    }
}

/// The servers now slow: by their devices' bandwidth in the master's
/// status, or by this client's latency to them. `None` when the master
/// does not answer (the last view stands).
async fn slow_servers(
    master: &mut ms::master_client::MasterClient<tonic::transport::Channel>,
    fileset: &str,
    client: &StripeClient,
) -> Option<BTreeSet<String>> {
    let req = ms::StatusRequest { fileset: fileset.to_string() };
    let status = tokio::time::timeout(STATUS_EVERY, master.status(req)).await.ok()?.ok()?.into_inner();
    let bandwidth: BTreeMap<String, f64> = status
        .servers
        .iter()
        .filter(|s| s.live && s.device_bytes_per_sec > 0.0)
        .map(|s| (s.address.clone(), s.device_bytes_per_sec))
        .collect();
    let mut slow = straggler::slow_servers(&bandwidth, SLOW_DEVICE);
    slow.extend(client.stats().servers.into_iter().filter(|s| s.slow).map(|s| s.addr));
    Some(slow)
}

async fn remove_dir(dir: &Path) {
    let d = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(d)).await;
}

/// One attempt: read the group's files, each checked against its digest,
/// and do the work. Returns the attempt's output directory.
async fn attempt(ctx: &Ctx, plan: &GroupPlan, dir: &Path, node: &str, m: &Meters) -> anyhow::Result<PathBuf> {
    let out = dir.join("output");
    let input = dir.join("input");
    tokio::fs::create_dir_all(&out).await.with_context(|| format!("creating {}", out.display()))?;
    let (rate, stage) = match &ctx.work {
        Work::Hash { rate, node_rate } => (node_rate.get(node).copied().or(*rate), false),
        Work::Command { .. } => (None, true),
    };
    let corrupt = ctx.version.corrupt_reports();
    let started = tokio::time::Instant::now();
    let mut processed = 0u64;
    let mut sums = String::new();
    for f in &plan.files {
        let e = ctx.version.entry(&f.path)?;
        let (EntryKind::File { sha256, .. }, Some(extent)) = (&e.kind, e.extent()) else {
            anyhow::bail!("{}: not a file", f.path);
        };
        let mut file = if stage {
            let p = input.join(&f.path);
            if let Some(parent) = p.parent() {
                tokio::fs::create_dir_all(parent).await.with_context(|| format!("creating {}", parent.display()))?;
            }
            Some(tokio::fs::File::create(&p).await.with_context(|| format!("creating {}", p.display()))?)
        } else {
            None
        };
        let mut h = Sha256::new();
        for (i, range) in ctx.version.layout.items_of(extent) {
            let loc = ctx.version.items().get(i as usize).with_context(|| format!("no item {i} in the version"))?;
            let mut switched = m.accelerated.subscribe();
            let (data, r) = if *switched.borrow_and_update() {
                ctx.client.read(loc, range, ReadMode::Accelerated).await?
            } else {
                tokio::select! {
                    // A read that is done counts, even if the switch came
                    // at the same moment.
                    biased;
                    r = ctx.client.read(loc, range.clone(), ReadMode::Normal) => r?,
                    // `wait_for`'s guard is not `Send`; dropped inside the
                    // block, it keeps the attempt's future `Send`.
                    _ = async { drop(switched.wait_for(|a| *a).await) } => {
                        // What the dropped read fetched is not known here:
                        // counted as the bytes it asked for (an estimate).
                        m.fetched.fetch_add(range.end - range.start, Ordering::Relaxed);
                        ctx.client.read(loc, range, ReadMode::Accelerated).await?
                    }
                }
            };
            m.fetched.fetch_add(r.bytes_fetched, Ordering::Relaxed);
            corrupt.send(&r).await;
            for part in data.parts() {
                h.update(part);
                if let Some(file) = &mut file {
                    tokio::io::AsyncWriteExt::write_all(file, part).await?;
                }
                processed += part.len() as u64;
                m.processed.store(processed, Ordering::Relaxed);
                if let Some(rate) = rate {
                    // The task's compute, at its node's rate.
                    tokio::time::sleep_until(started + Duration::from_secs_f64(processed as f64 / rate)).await;
                }
            }
        }
        let got: [u8; 32] = h.finalize().into();
        anyhow::ensure!(&got == sha256, "{}: read back with another sha256 than the manifest's", f.path);
        sums.push_str(&format!("{}  {}\n", hex::encode(got), f.path));
    }
    m.read_all.store(true, Ordering::Relaxed);
    match &ctx.work {
        Work::Hash { .. } => {
            tokio::fs::write(out.join("sha256sums"), sums).await?;
        }
        Work::Command { argv, env } => run_command(argv, env, plan, dir, &input, &out).await?,
    }
    Ok(out)
}

/// Runs the task's command over the staged input; its output and errors go
/// to the attempt's `stdout.log` and `stderr.log`, the last line of the
/// latter into the failure's reason.
async fn run_command(
    argv: &[String],
    env: &[(String, String)],
    plan: &GroupPlan,
    dir: &Path,
    input: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let (program, args) = argv.split_first().context("the task has no command")?;
    let list = dir.join("files.txt");
    let names: String = plan.files.iter().map(|f| format!("{}\n", f.path)).collect();
    tokio::fs::create_dir_all(input).await?;
    tokio::fs::write(&list, names).await?;
    let stdout = std::fs::File::create(dir.join("stdout.log"))?;
    let stderr_path = dir.join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path)?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("TESSERA_GROUP", &plan.name)
        .env("TESSERA_GROUP_FILES", &list)
        .env("TESSERA_INPUT", input)
        .env("TESSERA_OUTPUT", out)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // A stopped attempt takes its process with it.
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        let errors = tokio::fs::read_to_string(&stderr_path).await.unwrap_or_default();
        let last = errors.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        anyhow::bail!("{program} {status}: {last}");
    }
    Ok(())
}
