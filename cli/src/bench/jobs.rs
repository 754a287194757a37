//! `tessera bench jobs`: a job over a fileset of many groups on a local
//! cluster (a master and chunkserver processes on loopback), run by the
//! same scheduler as `tessera job run` and the Job controller, once per
//! straggler policy, healthy, with one chunkserver's devices slowed (fault
//! injection caps its read bandwidth), and with one task node slowed (its
//! tasks compute slower). Each task reads its group in the job request
//! class, checks every file's digest, and hashes it at a fixed rate that
//! stands for its compute. Makespans are medians over rounds, each
//! policy's beside "none" measured in the same run; policies take turns
//! first within a round, so drift spreads over all of them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use tessera_client::{ClientConfig, RequestClass, StripeClient};
use tessera_core::jobs::grouping::Grouping;
use tessera_core::jobs::plan::{self, GroupPlan};
use tessera_core::jobs::scheduler::Outcome;
use tessera_core::jobs::straggler::{Policy, PolicyKind};
use tessera_proto::cs;

use super::files::Bench;
use crate::job::runner::{self, RunReport, Setup, Work};
use crate::units::ByteSize;

/// Job makespans under each straggler policy: healthy, one chunkserver
/// slowed, one task node slowed.
#[derive(Debug, Clone, Args)]
pub struct JobsArgs {
    /// Chunkserver processes; each stands for a node that also runs tasks.
    #[arg(long, default_value_t = 12)]
    pub servers: usize,
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    /// Groups in the job (a directory each, one file).
    #[arg(long, default_value_t = 96)]
    pub groups: usize,
    /// Bytes per group.
    #[arg(long, default_value = "12MiB")]
    pub group_size: ByteSize,
    /// Stripe unit of the fileset (RS(6,3)).
    #[arg(long, default_value = "1MiB")]
    pub unit: ByteSize,
    /// Tasks a node runs at once.
    #[arg(long, default_value_t = 2)]
    pub slots: usize,
    /// The rate at which a task processes what it read (its compute).
    #[arg(long, default_value = "8MiB/s", value_parser = tessera_core::units::parse_rate)]
    pub task_rate: u64,
    /// The read bandwidth the slowed chunkserver's devices are capped at.
    #[arg(long, default_value = "4MiB/s", value_parser = tessera_core::units::parse_rate)]
    pub slow_server_rate: u64,
    /// How many times slower the slowed node's tasks compute.
    #[arg(long, default_value_t = 5.0)]
    pub slow_node_factor: f64,
    /// Scenarios, among healthy, slow-server and slow-node.
    #[arg(long, value_delimiter = ',', default_value = "healthy,slow-server,slow-node")]
    pub scenarios: Vec<String>,
    /// Policies, among none, accelerate, backup and default.
    #[arg(long, value_delimiter = ',', default_value = "none,accelerate,backup,default")]
    pub policies: Vec<String>,
    /// Runs of every (scenario, policy); the median makespan is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Time between two evaluations of the straggler policy.
    #[arg(long, default_value = "250ms", value_parser = tessera_core::units::parse_positive_duration)]
    pub every: Duration,
    /// A task is judged only after it ran this long.
    #[arg(long, default_value = "1s", value_parser = tessera_core::units::parse_duration)]
    pub warmup: Duration,
    /// The default policy's escalation period.
    #[arg(long, default_value = "2s", value_parser = tessera_core::units::parse_positive_duration)]
    pub period: Duration,
    /// Where chunkservers keep their stripes (default: a temporary dir).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Where the tree is generated and attempts keep their results.
    #[arg(long, default_value = "/dev/shm")]
    pub scratch: PathBuf,
    /// One JSON object per (scenario, policy), one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    Healthy,
    SlowServer,
    SlowNode,
}

impl Scenario {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "healthy" => Self::Healthy,
            "slow-server" => Self::SlowServer,
            "slow-node" => Self::SlowNode,
            other => bail!("--scenarios: unknown scenario {other:?} (healthy, slow-server, slow-node)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::SlowServer => "slow-server",
            Self::SlowNode => "slow-node",
        }
    }
}

fn kind_of(name: &str) -> anyhow::Result<PolicyKind> {
    Ok(match name {
        "none" => PolicyKind::None,
        "accelerate" => PolicyKind::Accelerate,
        "backup" => PolicyKind::Backup,
        "default" => PolicyKind::Progressive,
        other => bail!("--policies: unknown policy {other:?} (none, accelerate, backup, default)"),
    })
}

/// One (scenario, policy) over every round.
#[derive(Debug, Clone, Serialize)]
pub struct JobsRow {
    pub scenario: &'static str,
    pub policy: String,
    /// Median over the rounds.
    pub makespan_s: f64,
    /// Over "none"'s median in the same scenario and rounds.
    pub ratio: Option<f64>,
    pub makespans_s: Vec<f64>,
    /// Bytes received beyond one read of every group, in the median run.
    pub extra_bytes: i64,
    /// Task-seconds of attempts whose result was discarded (lost, stopped
    /// or failed), in the median run.
    pub extra_task_s: f64,
    pub task_s: f64,
    pub attempts: usize,
    pub accelerated: usize,
    pub backups: usize,
    pub groups: usize,
    pub group_bytes: u64,
}

pub async fn run(a: &JobsArgs, mut out: impl FnMut(&JobsRow)) -> anyhow::Result<Vec<JobsRow>> {
    let scenarios: Vec<Scenario> = a.scenarios.iter().map(|s| Scenario::parse(s)).collect::<Result<_, _>>()?;
    let policies: Vec<(String, PolicyKind)> =
        a.policies.iter().map(|p| Ok((p.clone(), kind_of(p)?))).collect::<anyhow::Result<_>>()?;
    if a.servers < 9 || a.groups == 0 || a.slots == 0 || a.rounds == 0 || a.task_rate == 0 || a.slow_server_rate == 0 {
        bail!("--servers must be at least 9 (RS(6,3)), --groups, --slots, --rounds and the rates at least 1");
    }
    if a.slow_node_factor < 1.0 {
        bail!("--slow-node-factor {} must be at least 1", a.slow_node_factor);
    }
    let b = Bench::start(a.servers, a.zones, a.data_root.as_deref(), &a.scratch, vec![], vec![]).await?;
    // Scrubbing would read beside the tasks: it waits.
    super::read_tail::set_scrub_rate(&b.cluster, 0).await?;
    let tree = b.scratch.path().join("tree");
    let (groups, size) = (a.groups, a.group_size.0 as usize);
    tokio::task::spawn_blocking({
        let tree = tree.clone();
        move || -> anyhow::Result<()> {
            for g in 0..groups {
                let dir = tree.join(format!("g{g:04}"));
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("data"), super::read_tail::pattern(size, g as u64 + 1))?;
            }
            Ok(())
        }
    })
    .await??;
    b.fileset("bench-jobs", a.unit, "low").await?;
    let (v, _) = b.put("bench-jobs", &tree, 4).await?;
    std::fs::remove_dir_all(&tree).ok();
    let version = b.client.open("bench-jobs", v.id).await?;
    let holder = |item: u64, stripe: usize| version.items().get(item as usize)?.servers.get(stripe)?.clone();
    let plan = plan::plan(&version.manifest, &version.layout, holder, &Grouping::Directory { depth: 1 })?;
    let status = b.status().await?;
    let node_of: BTreeMap<String, String> =
        status.servers.iter().map(|s| (s.address.clone(), s.server_id.clone())).collect();
    let slots: BTreeMap<String, usize> = node_of.values().map(|n| (n.clone(), a.slots)).collect();
    // The slowed server: the first; the slowed node: another one.
    let slow_server = &b.cluster.servers[0];
    let slow_node = b.cluster.servers[1].node_id.clone();

    let mut runs: BTreeMap<(Scenario, String), Vec<RunReport>> = BTreeMap::new();
    // The slowed server's figure outlives its run (the master keeps a
    // server's last figure for a minute): its scenario runs last.
    let mut order = scenarios.clone();
    order.sort_by_key(|s| *s == Scenario::SlowServer);
    for &scenario in &order {
        for round in 0..a.rounds {
            for i in 0..policies.len() {
                let (name, kind) = &policies[(i + round) % policies.len()];
                if scenario == Scenario::SlowServer {
                    slow_server
                        .set_faults(cs::Faults { bandwidth_bytes_per_sec: a.slow_server_rate, ..Default::default() })
                        .await?;
                }
                let mut node_rate = BTreeMap::new();
                if scenario == Scenario::SlowNode {
                    node_rate.insert(slow_node.clone(), a.task_rate as f64 / a.slow_node_factor);
                }
                let scratch = tempfile::Builder::new().prefix("attempts-").tempdir_in(b.scratch.path())?;
                let setup = Setup {
                    policy: Policy { kind: *kind, warmup: a.warmup, period: a.period, ..Policy::default() },
                    backoff_limit: 3,
                    slots: slots.clone(),
                    node_of: node_of.clone(),
                    every: a.every,
                    work: Work::Hash { rate: Some(a.task_rate as f64), node_rate },
                    scratch: scratch.path().to_path_buf(),
                    critical: BTreeSet::new(),
                };
                let client = StripeClient::new(ClientConfig { class: RequestClass::Job, ..Default::default() });
                let r = runner::run(version.clone(), client, plan.clone(), setup, |_| {}).await;
                slow_server.clear_faults().await?;
                let r = r?;
                match &r.outcome {
                    Some(Outcome::Succeeded) if r.results.len() == plan.len() => {}
                    other => bail!("{} under {name}: the job did not succeed: {other:?}", scenario.name()),
                }
                check_results(&r, &plan, &version).with_context(|| format!("{} under {name}", scenario.name()))?;
                runs.entry((scenario, name.clone())).or_default().push(r);
            }
        }
    }
    let mut rows = Vec::new();
    for &scenario in &scenarios {
        let none = runs.get(&(scenario, "none".to_string())).map(|r| median(r).0);
        for (name, _) in &policies {
            let rs = &runs[&(scenario, name.clone())];
            let (makespan, m) = median(rs);
            let row = JobsRow {
                scenario: scenario.name(),
                policy: name.clone(),
                makespan_s: makespan,
                ratio: none.map(|n| makespan / n),
                makespans_s: rs.iter().map(|r| r.makespan.as_secs_f64()).collect(),
                extra_bytes: m.fetched as i64 - m.bytes as i64,
                extra_task_s: m.wasted_task_seconds,
                task_s: m.task_seconds,
                attempts: m.counts.attempts,
                accelerated: m.counts.accelerated,
                backups: m.counts.backups,
                groups: plan.len(),
                group_bytes: a.group_size.0,
            };
            out(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The median makespan and the run that had it.
fn median(rs: &[RunReport]) -> (f64, &RunReport) {
    let mut by: Vec<&RunReport> = rs.iter().collect();
    by.sort_by_key(|r| r.makespan);
    let m = by[by.len() / 2];
    (m.makespan.as_secs_f64(), m)
}

/// Every group's result lists each of its files, and only those, with the
/// manifest's digest.
fn check_results(r: &RunReport, plan: &[GroupPlan], v: &tessera_client::fileset::OpenVersion) -> anyhow::Result<()> {
    for g in plan {
        let (_, out) = r.results.get(&g.name).with_context(|| format!("group {} has no result", g.name))?;
        let group = &g.name;
        let sums = std::fs::read_to_string(out.join("sha256sums")).with_context(|| format!("group {group}"))?;
        let listed: Vec<&str> = sums.lines().filter_map(|l| l.split_once("  ").map(|(_, p)| p)).collect();
        let planned: Vec<&str> = g.files.iter().map(|f| f.path.as_str()).collect();
        anyhow::ensure!(listed == planned, "group {group} lists {listed:?}, planned {planned:?}");
        for line in sums.lines() {
            let (hex, path) = line.split_once("  ").context("a sha256sums line")?;
            let e = v.entry(path)?;
            let tessera_core::manifest::EntryKind::File { sha256, .. } = &e.kind else { bail!("{path}: not a file") };
            anyhow::ensure!(hex == hex::encode(sha256), "group {group}: {path} has another digest");
            anyhow::ensure!(path.starts_with(&format!("{group}/")), "group {group} holds {path}");
        }
    }
    Ok(())
}

pub fn print_header() {
    crate::outln!(
        "{:<12} {:<11} {:>10} {:>7} {:>12} {:>9} {:>9} {:>7} {:>8}",
        "SCENARIO",
        "POLICY",
        "MAKESPAN",
        "RATIO",
        "EXTRA READ",
        "EXTRA T-S",
        "ATTEMPTS",
        "ACCEL",
        "BACKUPS"
    );
}

pub fn print_row(r: &JobsRow, json: bool) {
    if json {
        crate::outln!("{}", serde_json::to_string(r).expect("rows serialize"));
        return;
    }
    let ratio = r.ratio.map_or("-".to_string(), |x| format!("{x:.2}x"));
    let extra = if r.extra_bytes >= 0 {
        crate::units::human(r.extra_bytes as u64)
    } else {
        format!("-{}", crate::units::human(r.extra_bytes.unsigned_abs()))
    };
    crate::outln!(
        "{:<12} {:<11} {:>9.2}s {:>7} {:>12} {:>9.1} {:>9} {:>7} {:>8}",
        r.scenario,
        r.policy,
        r.makespan_s,
        ratio,
        extra,
        r.extra_task_s,
        r.attempts,
        r.accelerated,
        r.backups
    );
}
