//! `tessera job …`: a Job manifest (the `tessera.dev/v1alpha1` Job kind)
//! against a cluster. `plan` shows how its input version splits into groups
//! and where each group's task would run: next to the chunkserver holding
//! the most of its data-stripe bytes. `run` runs it on this machine, each
//! task a local process, and publishes the output version.

pub mod runner;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_api::crd::Job;
use tessera_core::jobs::plan::{self, GroupPlan};

use crate::files::{Remote, client};
use crate::units::human;

#[derive(Debug, Clone, Subcommand)]
pub enum JobCommand {
    /// The groups of a Job's input version, each with its files, bytes and
    /// the chunkserver its task would run next to.
    Plan(PlanArgs),
    /// Run a Job on this machine against the cluster (`tessera local up`):
    /// each task a local process next to its group's chunkserver, reading
    /// through Tessera's read path with a read mode of its own; stragglers
    /// accelerated or backed up as the job's policy says; the output
    /// version published once every group has exactly one result.
    Run(RunArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// A YAML file holding one Job (apiVersion tessera.dev/v1alpha1). Its
    /// task's command runs here (the image is not used): its group's files
    /// are staged under $TESSERA_INPUT at their paths and listed in the
    /// file $TESSERA_GROUP_FILES, and its result goes under $TESSERA_OUTPUT.
    pub file: PathBuf,
    /// Tasks each chunkserver's node runs at once.
    #[arg(long, default_value_t = 2)]
    pub slots: usize,
    /// Time between two evaluations of the straggler policy.
    #[arg(long, default_value = "1s", value_parser = tessera_core::units::parse_positive_duration)]
    pub every: std::time::Duration,
    /// Where attempts keep their files (default: a temporary directory,
    /// removed at the end).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// A YAML file holding one Job (apiVersion tessera.dev/v1alpha1).
    pub file: PathBuf,
    /// One JSON object per group, one per line.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(r: &Remote, cmd: &JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Plan(a) => print_plan(&plan_of(r, a).await?, a.json),
        JobCommand::Run(a) => run_job(r, a).await,
    }
}

/// Reads a Job manifest, naming the file and the field that is wrong.
pub fn read_job(path: &std::path::Path) -> anyhow::Result<Job> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{}: not YAML", path.display()))?;
    let (api_version, kind) =
        (value.get("apiVersion").and_then(|v| v.as_str()), value.get("kind").and_then(|v| v.as_str()));
    if (api_version, kind) != (Some(tessera_api::keys::API_VERSION), Some("Job")) {
        bail!(
            "{}: not a Job: apiVersion {api_version:?} and kind {kind:?}, want {:?} and \"Job\"",
            path.display(),
            tessera_api::keys::API_VERSION
        );
    }
    let job: Job = serde_yaml::from_value(value).with_context(|| format!("{}: not a Job", path.display()))?;
    if job.metadata.name.as_deref().unwrap_or_default().is_empty() && job.metadata.generate_name.is_none() {
        bail!("{}: metadata.name is missing", path.display());
    }
    Ok(job)
}

#[derive(Debug, Serialize)]
struct GroupRow<'a> {
    group: &'a str,
    files: usize,
    bytes: u64,
    /// The chunkserver (host:port) the task would run next to.
    server: Option<&'a str>,
    /// The fraction of the group's data-stripe bytes that server holds.
    local_fraction: f64,
}

pub struct Planned {
    pub fileset: String,
    pub version: u64,
    pub groups: Vec<GroupPlan>,
}

async fn plan_of(r: &Remote, a: &PlanArgs) -> anyhow::Result<Planned> {
    let job = read_job(&a.file)?;
    let fc = client(r)?;
    let (v, groups) = open_and_plan(&fc, &job, &a.file).await?;
    Ok(Planned { fileset: job.spec.input.fileset.clone(), version: v.id(), groups })
}

/// The job's input version (the current one unless it names one) and its
/// groups.
async fn open_and_plan(
    fc: &tessera_client::fileset::FilesetClient,
    job: &Job,
    file: &std::path::Path,
) -> anyhow::Result<(tessera_client::fileset::OpenVersion, Vec<GroupPlan>)> {
    let how = job.spec.grouping.grouping().map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let input = &job.spec.input;
    let v = fc.open(&input.fileset, input.version.unwrap_or(0)).await?;
    let holder = |item: u64, stripe: usize| v.items().get(item as usize)?.servers.get(stripe)?.clone();
    let groups = plan::plan(&v.manifest, &v.layout, holder, &how).map_err(|e| match e {
        // The job's grouping does not fit the version's files.
        e @ (plan::PlanError::Grouping(_) | plan::PlanError::Nested { .. }) => {
            anyhow::anyhow!("{}: {e}", file.display())
        }
        e @ plan::PlanError::Layout(_) => anyhow::anyhow!("{}@{}: {e}", input.fileset, v.id()),
    })?;
    Ok((v, groups))
}

fn print_plan(p: &Planned, json: bool) -> anyhow::Result<()> {
    let rows = p.groups.iter().map(|g| {
        let held: u64 = g.by_server.values().sum();
        let local = g.server.as_ref().map_or(0, |s| g.by_server[s]);
        GroupRow {
            group: &g.name,
            files: g.files.len(),
            bytes: g.bytes,
            server: g.server.as_deref(),
            local_fraction: if held == 0 { 0.0 } else { local as f64 / held as f64 },
        }
    });
    if json {
        for row in rows {
            crate::outln!("{}", serde_json::to_string(&row)?);
        }
        return Ok(());
    }
    crate::outln!("{}@{}: {} groups", p.fileset, p.version, p.groups.len());
    crate::outln!("{:<32} {:>8} {:>10} {:<22} {:>6}", "GROUP", "FILES", "BYTES", "NEXT TO", "LOCAL");
    for row in rows {
        crate::outln!(
            "{:<32} {:>8} {:>10} {:<22} {:>5.0}%",
            row.group,
            row.files,
            human(row.bytes),
            row.server.unwrap_or("-"),
            row.local_fraction * 100.0
        );
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct RunSummary {
    job: String,
    input: String,
    output: Option<String>,
    groups: usize,
    attempts: usize,
    accelerated: usize,
    backups: usize,
    failed_attempts: usize,
    discarded: usize,
    makespan_s: f64,
    bytes: u64,
    fetched_bytes: u64,
}

async fn run_job(r: &Remote, a: &RunArgs) -> anyhow::Result<()> {
    let job = read_job(&a.file)?;
    let name = job.metadata.name.clone().unwrap_or_else(|| "job".into());
    let t = &job.spec.task;
    let argv: Vec<String> = t.command.iter().chain(&t.args).cloned().collect();
    if t.command.is_empty() {
        bail!(
            "{}: spec.task.command is empty: here a task runs its command on this machine, and the image's entrypoint is not known",
            a.file.display()
        );
    }
    if a.slots == 0 {
        bail!("--slots must be at least 1");
    }
    let fc = client(r)?;
    let (v, groups) = open_and_plan(&fc, &job, &a.file).await?;
    let input = format!("{}@{}", job.spec.input.fileset, v.id());
    // Fail before anything runs if the output cannot take the results.
    let concat = job.spec.output.concatenate.clone();
    if let Some(c) = &concat {
        check_relative("spec.output.concatenate.to", &c.to)?;
        check_relative("spec.output.concatenate.from", &c.from)?;
        let within = |outer: &str, inner: &str| inner == outer || inner.starts_with(&format!("{outer}/"));
        if let Some(g) = groups.iter().find(|g| within(&g.name, &c.to) || within(&c.to, &g.name)) {
            bail!(
                "{}: spec.output.concatenate.to {:?} and group {:?}'s output would overlap",
                a.file.display(),
                c.to,
                g.name
            );
        }
    }
    let status = fc.master().status(tessera_proto::ms::StatusRequest { fileset: v.version.fileset.clone() }).await?;
    let node_of: std::collections::BTreeMap<String, String> = status
        .into_inner()
        .servers
        .iter()
        .filter(|s| s.live)
        .map(|s| (s.address.clone(), s.server_id.clone()))
        .collect();
    if node_of.is_empty() {
        bail!("no live chunkserver to run tasks next to");
    }
    let slots = node_of.values().map(|n| (n.clone(), a.slots)).collect();
    let seed = job.metadata.uid.as_deref().map_or(0, seed_of);
    let stragglers = &job.spec.stragglers;
    let critical = match &stragglers.critical_groups {
        Some(patterns) => groups
            .iter()
            .filter(|g| patterns.iter().any(|p| tessera_core::jobs::grouping::glob_match(p, &g.name)))
            .map(|g| g.name.clone())
            .collect(),
        None => Default::default(),
    };
    let tmp;
    let scratch = match &a.scratch {
        // An earlier run's attempts would be published with this one's.
        Some(s) if std::fs::read_dir(s).is_ok_and(|mut d| d.next().is_some()) => {
            bail!("--scratch {}: not empty (an earlier run's files would mix with this one's)", s.display())
        }
        Some(s) => s.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("tessera-job-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let setup = runner::Setup {
        policy: stragglers.policy(seed),
        backoff_limit: job.spec.backoff_limit,
        slots,
        node_of,
        every: a.every,
        work: runner::Work::Command { argv, env: t.env.iter().map(|e| (e.name.clone(), e.value.clone())).collect() },
        scratch: scratch.join("attempts"),
        critical,
    };
    let bar = indicatif::ProgressBar::new(groups.len() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} {bar:40} {pos}/{len} groups {msg}") {
        bar.set_style(style);
    }
    bar.set_prefix(name.clone());
    let stripes = tessera_client::StripeClient::new(tessera_client::ClientConfig {
        class: tessera_client::RequestClass::Job,
        ..Default::default()
    });
    let b = bar.clone();
    let report = runner::run(v.clone(), stripes, groups.clone(), setup, move |c| {
        b.set_position(c.committed as u64);
        b.set_message(format!("({} running, {} accelerated, {} backups)", c.running, c.accelerated, c.backups));
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    if let Some(tessera_core::jobs::scheduler::Outcome::Failed { group, attempt, reason }) = &report.outcome {
        bail!(
            "job {name}: group {group:?} failed (attempt {attempt}, past backoffLimit {}): {reason}",
            job.spec.backoff_limit
        );
    }
    let published = publish(&fc, &job, &report, &scratch.join("publish"), concat.as_ref()).await?;
    let c = report.counts;
    let summary = RunSummary {
        job: name,
        input,
        output: Some(format!("{}@{}", published.fileset, published.id)),
        groups: c.groups,
        attempts: c.attempts,
        accelerated: c.accelerated,
        backups: c.backups,
        failed_attempts: c.failed,
        discarded: c.discarded,
        makespan_s: report.makespan.as_secs_f64(),
        bytes: report.bytes,
        fetched_bytes: report.fetched,
    };
    if a.json {
        crate::outln!("{}", serde_json::to_string(&summary)?);
    } else {
        crate::outln!(
            "job {}: {} groups of {} in {:.1} s; {} attempts ({} backups, {} accelerated, {} failed, {} discarded); output {}",
            summary.job,
            summary.groups,
            summary.input,
            summary.makespan_s,
            summary.attempts,
            summary.backups,
            summary.accelerated,
            summary.failed_attempts,
            summary.discarded,
            summary.output.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

fn check_relative(field: &str, path: &str) -> anyhow::Result<()> {
    let bad = path.starts_with('/') || path.split('/').any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        bail!("{field} {path:?} must be a relative path without empty, '.' or '..' components");
    }
    Ok(())
}

/// A stable seed from the job's uid (FNV-1a), so a rerun picks alike.
fn seed_of(uid: &str) -> u64 {
    uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Moves each group's winning output to `<group>/` of a fresh tree, adds
/// the concatenation, and stores the tree as the output fileset's next
/// version (created with default settings if it does not exist): one put,
/// so the version appears whole or not at all.
async fn publish(
    fc: &tessera_client::fileset::FilesetClient,
    job: &Job,
    report: &runner::RunReport,
    tree: &std::path::Path,
    concat: Option<&tessera_api::crd::Concatenate>,
) -> anyhow::Result<tessera_proto::ms::Version> {
    let (dir, results) = (tree.to_path_buf(), report.results.clone());
    let concat = concat.cloned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let tree = dir;
        std::fs::create_dir_all(&tree)?;
        for (group, (_, out)) in &results {
            let to = tree.join(group);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(out, &to).with_context(|| format!("moving {} to {}", out.display(), to.display()))?;
        }
        if let Some(c) = concat {
            let to = tree.join(&c.to);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut all = std::fs::File::create(&to)?;
            for group in results.keys() {
                let from = tree.join(group).join(&c.from);
                let mut part = std::fs::File::open(&from)
                    .with_context(|| format!("spec.output.concatenate.from: group {group:?} left no {:?}", c.from))?;
                std::io::copy(&mut part, &mut all)?;
            }
            all.sync_all()?;
        }
        Ok(())
    })
    .await??;
    let output = &job.spec.output.fileset;
    let spec = tessera_proto::ms::FilesetSpec { name: output.clone(), ..Default::default() };
    match fc.master().get_fileset(tessera_proto::ms::GetFilesetRequest { name: output.clone() }).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => {
            fc.create_fileset(spec, true).await?;
        }
        Err(s) => return Err(s.into()),
    }
    let options = tessera_client::fileset::PutOptions::default();
    Ok(fc.put(output, tree, &options, &|_| {}).await?)
}
