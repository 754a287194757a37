//! `tessera job …`: a Job manifest (the `tessera.dev/v1alpha1` Job kind)
//! against a cluster. `plan` shows how its input version splits into groups
//! and where each group's task would run: next to the chunkserver holding
//! the most of its data-stripe bytes. Running jobs is still to come
//! (issue 14).

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
    let how = job.spec.grouping.grouping().map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let input = &job.spec.input;
    let fc = client(r)?;
    let v = fc.open(&input.fileset, input.version.unwrap_or(0)).await?;
    let holder = |item: u64, stripe: usize| v.items().get(item as usize)?.servers.get(stripe)?.clone();
    let groups = plan::plan(&v.manifest, &v.layout, holder, &how).map_err(|e| match e {
        // The job's grouping does not fit the version's files.
        plan::PlanError::Grouping(e) => anyhow::anyhow!("{}: {e}", a.file.display()),
        e @ plan::PlanError::Layout(_) => anyhow::anyhow!("{}@{}: {e}", input.fileset, v.id()),
    })?;
    Ok(Planned { fileset: input.fileset.clone(), version: v.id(), groups })
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
