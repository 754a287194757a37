//! The fileset commands: put, ls, cat, get, versions, status, rm.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_client::fileset::{FilesetClient, PutOptions, SourceKind, scan};
use tessera_client::{ClientConfig, StripeClient};
use tessera_core::manifest::{Entry, EntryKind};
use tessera_core::read_plan::ReadMode;
use tessera_proto::ms;

use crate::target::{Target, master_addr};
use crate::units::{ByteSize, human};

/// Which master the commands talk to, and how long they wait for it.
#[derive(Debug, Clone)]
pub struct Remote {
    /// host:port; `None` finds the local cluster's.
    pub master: Option<String>,
    /// Deadline of each call to the master.
    pub timeout: Duration,
}

impl Remote {
    fn master(&self) -> Option<&str> {
        self.master.as_deref()
    }
}

pub(crate) fn client(r: &Remote) -> anyhow::Result<FilesetClient> {
    client_with(r, ClientConfig::default())
}

fn client_with(r: &Remote, config: ClientConfig) -> anyhow::Result<FilesetClient> {
    let addr = master_addr(r.master())?;
    Ok(FilesetClient::with_timeout(&addr, StripeClient::new(config), r.timeout)?)
}

/// The sentence a user reads for an error: which master could not be
/// reached or did not answer in time, and the server's own words rather
/// than a raw gRPC status.
pub fn explain(r: &Remote, e: &anyhow::Error) -> String {
    use tessera_client::fileset::FilesetError;
    let addr = || master_addr(r.master()).unwrap_or_else(|_| "(none found)".into());
    let mut parts = Vec::new();
    for cause in e.chain() {
        let status = cause.downcast_ref::<tonic::Status>().or(match cause.downcast_ref::<FilesetError>() {
            Some(FilesetError::Master(s)) => Some(s),
            _ => None,
        });
        let Some(s) = status else {
            parts.push(cause.to_string());
            continue;
        };
        // A status's own sources are transport detail: it ends the chain.
        let timed_out = s.code() == tonic::Code::DeadlineExceeded
            || (s.code() == tonic::Code::Cancelled && s.message().contains("Timeout expired"));
        parts.push(if timed_out {
            format!("the master at {} did not answer within {:?} (--master-timeout)", addr(), r.timeout)
        } else if s.code() == tonic::Code::Unavailable {
            format!("cannot reach the master at {}: is it running? ({})", addr(), s.message())
        } else {
            s.message().to_string()
        });
        break;
    }
    parts.dedup();
    parts.join(": ")
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
    )) {
        b.set_style(style);
    }
    b
}

/// How a new fileset is stored (ignored for an existing one unless it
/// differs, which is an error).
#[derive(Debug, Clone, Args, Default)]
pub struct SpecArgs {
    /// Data stripes per item, 1 to 255 (default 6).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub k: Option<u32>,
    /// Parity stripes per item, at least 1 (default 3).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub m: Option<u32>,
    /// Stripe unit (default 1MiB).
    #[arg(long, value_parser = positive_size)]
    pub unit: Option<ByteSize>,
    /// Checksum block size (default 64KiB).
    #[arg(long, value_parser = positive_size)]
    pub block: Option<ByteSize>,
    /// Failure-domain level the placement rule applies to: region, zone, rack or node (default zone).
    #[arg(long)]
    pub level: Option<String>,
    /// Most stripes of an item per domain (default m).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_domain: Option<u32>,
    /// Repair urgency: high (at once) or low (after the grace period; the default).
    #[arg(long)]
    pub availability: Option<String>,
    /// Versions kept, at least 1 (default 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: Option<u32>,
    /// Stripes of an item that must be stored for a write to succeed when
    /// fewer than k + m servers can take them, k to k + m (default k + 1).
    /// The missing stripes are rebuilt once placement allows; until then
    /// the item survives fewer losses. k + m never writes degraded.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_write_stripes: Option<u32>,
    /// How volumes of this fileset read unless they say otherwise: normal,
    /// hedged or accelerated (default: each reader's own).
    #[arg(long, value_parser = ["normal", "hedged", "accelerated"])]
    pub read_mode: Option<String>,
}

impl SpecArgs {
    fn any(&self) -> bool {
        self.k.is_some()
            || self.m.is_some()
            || self.unit.is_some()
            || self.block.is_some()
            || self.level.is_some()
            || self.max_per_domain.is_some()
            || self.availability.is_some()
            || self.keep.is_some()
            || self.read_mode.is_some()
            || self.min_write_stripes.is_some()
    }

    fn apply(&self, name: &str, base: Option<ms::FilesetSpec>) -> ms::FilesetSpec {
        let mut s = base.unwrap_or(ms::FilesetSpec { name: name.to_string(), ..Default::default() });
        let mut l = s.layout.unwrap_or_default();
        if let Some(k) = self.k {
            l.k = k;
        }
        if let Some(m) = self.m {
            l.m = m;
        }
        if let Some(u) = self.unit {
            l.stripe_unit = u.0;
        }
        if let Some(b) = self.block {
            l.block_size = b.0;
        }
        s.layout = Some(l);
        let mut p = s.placement.clone().unwrap_or_default();
        if let Some(level) = &self.level {
            p.level = level.clone();
        }
        if let Some(max) = self.max_per_domain {
            p.max_per_domain = max;
        }
        s.placement = Some(p);
        if let Some(a) = &self.availability {
            s.availability = a.clone();
        }
        if let Some(k) = self.keep {
            s.keep_versions = k;
        }
        if let Some(m) = &self.read_mode {
            s.read_mode = m.clone();
        }
        if let Some(w) = self.min_write_stripes {
            s.min_write_stripes = w;
        }
        s
    }
}

fn positive_size(s: &str) -> Result<ByteSize, String> {
    let b: ByteSize = s.parse()?;
    if b.0 == 0 {
        return Err("must be larger than zero".into());
    }
    Ok(b)
}

/// Upload a directory (or one file) as a new version of a fileset.
#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    /// The directory or file to upload.
    pub path: PathBuf,
    /// The fileset; created if it does not exist (unless --existing).
    #[arg(long)]
    pub fileset: String,
    /// Fail if the fileset does not exist instead of creating it (ingest
    /// pods use this so a deleted Fileset is not brought back).
    #[arg(long, conflicts_with_all = ["k", "m", "unit", "block", "level", "max_per_domain", "availability", "keep", "read_mode", "min_write_stripes"])]
    pub existing: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Items written at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Print the new version as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn put(r: &Remote, a: &PutArgs) -> anyhow::Result<()> {
    let fc = client(r)?;
    // Bad paths are refused before anything exists on the master.
    let root = a.path.clone();
    let entries = tokio::task::spawn_blocking(move || scan(&root)).await??;
    let mut mc = fc.master();
    match mc.get_fileset(ms::GetFilesetRequest { name: a.fileset.clone() }).await {
        Ok(existing) => {
            if a.spec.any() {
                let wanted = a.spec.apply(&a.fileset, existing.get_ref().spec.clone());
                fc.create_fileset(wanted, true)
                    .await
                    .with_context(|| format!("fileset {:?} exists with other settings", a.fileset))?;
            }
        }
        Err(s) if s.code() == tonic::Code::NotFound && a.existing => {
            anyhow::bail!("fileset {:?} does not exist (--existing)", a.fileset)
        }
        Err(s) if s.code() == tonic::Code::NotFound => {
            fc.create_fileset(a.spec.apply(&a.fileset, None), true).await?;
        }
        Err(s) => return Err(s.into()),
    }
    let total: u64 = entries.iter().filter(|e| e.kind == SourceKind::File).map(|e| e.size).sum();
    let b = bar(total, "put");
    let t = Instant::now();
    let options = PutOptions { parallel_items: a.parallel, ..Default::default() };
    let bb = b.clone();
    let v = fc.put(&a.fileset, &a.path, &options, &move |n| bb.inc(n)).await;
    b.finish_and_clear();
    let v = v?;
    if a.json {
        crate::outln!(
            "{}",
            serde_json::json!({"fileset": v.fileset, "version": v.id, "files": v.files, "bytes": v.bytes, "items": v.items.len(), "seconds": t.elapsed().as_secs_f64()})
        );
    } else {
        crate::outln!(
            "{}@{}: {} files, {} in {} items ({:.1} s)",
            v.fileset,
            v.id,
            v.files,
            human(v.bytes),
            v.items.len(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// List filesets, or the entries of a version.
#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// NAME[@VERSION][/PATH]; without it, every fileset.
    pub target: Option<Target>,
    /// List everything below the path, not just its children.
    #[arg(long, short = 'R')]
    pub recursive: bool,
}

fn mode_string(e: &Entry) -> String {
    let t = match e.kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink { .. } => 'l',
        EntryKind::File { .. } => '-',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (e.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn print_entry(e: &Entry) {
    let when = UNIX_EPOCH + Duration::from_secs(e.mtime_secs.max(0) as u64);
    let age = when.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    let link = match &e.kind {
        EntryKind::Symlink { target } => format!(" -> {target}"),
        _ => String::new(),
    };
    crate::outln!("{} {:>10} {:>8} {}{}", mode_string(e), e.size, format!("{}d ago", age / 86400), e.path, link);
}

pub async fn ls(r: &Remote, a: &LsArgs) -> anyhow::Result<()> {
    let fc = client(r)?;
    let Some(t) = &a.target else {
        let list = fc.master().list_filesets(ms::ListFilesetsRequest {}).await?.into_inner().filesets;
        crate::outln!(
            "{:<24} {:>8} {:>8} {:>12} {:>6} {:>11}",
            "FILESET",
            "LATEST",
            "VERSIONS",
            "LAYOUT",
            "AVAIL",
            "READ MODE"
        );
        for f in list {
            let spec = f.spec.unwrap_or_default();
            let l = spec.layout.unwrap_or_default();
            crate::outln!(
                "{:<24} {:>8} {:>8} {:>12} {:>6} {:>11}",
                spec.name,
                f.latest_version,
                f.versions,
                format!("RS({},{})", l.k, l.m),
                spec.availability,
                if spec.read_mode.is_empty() { "-" } else { &spec.read_mode }
            );
        }
        return Ok(());
    };
    let v = fc.open(&t.fileset, t.version).await?;
    if !t.path.is_empty() {
        let e = v.entry(&t.path)?;
        if !e.is_dir() {
            print_entry(e);
            return Ok(());
        }
    }
    if a.recursive {
        for e in v.manifest.subtree(&t.path).filter(|e| e.path != t.path) {
            print_entry(e);
        }
    } else {
        for e in v.manifest.children(&t.path) {
            print_entry(e);
        }
    }
    Ok(())
}

/// Print a file of a version.
#[derive(Debug, Clone, Args)]
pub struct CatArgs {
    /// NAME[@VERSION]/PATH
    pub target: Target,
    /// Read mode: normal, hedged or accelerated.
    #[arg(long, default_value = "hedged")]
    pub mode: ReadMode,
}

pub async fn cat(r: &Remote, a: &CatArgs) -> anyhow::Result<()> {
    if a.target.path.is_empty() {
        bail!("cat needs a file: NAME[@VERSION]/PATH");
    }
    let fc = client(r)?;
    let v = fc.open(&a.target.fileset, a.target.version).await?;
    let parts = v.read_file(fc.stripes(), &a.target.path, a.mode).await?;
    let mut out = std::io::stdout().lock();
    for p in parts {
        out.write_all(&p).inspect_err(crate::output::exit_if_closed)?;
    }
    out.flush().inspect_err(crate::output::exit_if_closed)?;
    Ok(())
}

/// Copy a whole version into a local directory, checking every file's digest.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// NAME[@VERSION]
    pub target: Target,
    /// A new or empty directory.
    pub dest: PathBuf,
    /// Read mode: normal, hedged or accelerated.
    #[arg(long, default_value = "hedged")]
    pub mode: ReadMode,
    /// With --mode accelerated: stripes beyond k each read asks for at once
    /// (default: all m).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub accelerated_extra: Option<u16>,
    #[arg(long)]
    pub json: bool,
}

pub async fn get(r: &Remote, a: &GetArgs) -> anyhow::Result<()> {
    if !a.target.path.is_empty() {
        bail!("get copies whole versions; use `tessera cat {}` for one file", a.target);
    }
    if a.accelerated_extra.is_some() && a.mode != ReadMode::Accelerated {
        bail!("--accelerated-extra applies to --mode accelerated, not {}", a.mode);
    }
    let fc =
        client_with(r, ClientConfig { accelerated_extra: a.accelerated_extra.map(usize::from), ..Default::default() })?;
    let t = Instant::now();
    let v = fc.open(&a.target.fileset, a.target.version).await?;
    let b = bar(v.manifest.packed_len(), "get");
    let bb = b.clone();
    let stats = v.get(fc.stripes(), &a.dest, a.mode, &move |n| bb.inc(n)).await;
    b.finish_and_clear();
    let stats = stats?;
    if a.json {
        crate::outln!(
            "{}",
            serde_json::json!({"fileset": a.target.fileset, "version": v.id(), "files": stats.files, "dirs": stats.dirs, "symlinks": stats.symlinks, "bytes": stats.bytes, "seconds": t.elapsed().as_secs_f64()})
        );
    } else {
        crate::outln!(
            "{}@{} -> {}: {} files, {} directories, {} symlinks, {} verified ({:.1} s)",
            a.target.fileset,
            v.id(),
            a.dest.display(),
            stats.files,
            stats.dirs,
            stats.symlinks,
            human(stats.bytes),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// List the versions of a fileset.
#[derive(Debug, Clone, Args)]
pub struct VersionsArgs {
    pub fileset: String,
}

pub async fn versions(r: &Remote, a: &VersionsArgs) -> anyhow::Result<()> {
    let fc = client(r)?;
    let list =
        fc.master().list_versions(ms::ListVersionsRequest { fileset: a.fileset.clone() }).await?.into_inner().versions;
    crate::outln!("{:>8} {:>10} {:>10} {:>7} {:>20} PINS", "VERSION", "FILES", "SIZE", "ITEMS", "CREATED");
    for v in list {
        crate::outln!(
            "{:>8} {:>10} {:>10} {:>7} {:>20} {}",
            v.id,
            v.files,
            human(v.bytes),
            v.items.len(),
            format!("{}s ago", UNIX_EPOCH.elapsed().map(|d| d.as_secs()).unwrap_or(0).saturating_sub(v.created_unix)),
            v.pins.join(",")
        );
    }
    Ok(())
}

/// Chunkservers and the redundancy of every fileset.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// One fileset only.
    pub fileset: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn status(r: &Remote, a: &StatusArgs) -> anyhow::Result<()> {
    let fc = client(r)?;
    let s =
        fc.master().status(ms::StatusRequest { fileset: a.fileset.clone().unwrap_or_default() }).await?.into_inner();
    if a.json {
        let fs: Vec<_> = s
            .filesets
            .iter()
            .map(|f| {
                // While relearning, redundancy is not known yet: null, not
                // figures that would say items are lost.
                let known = |v: serde_json::Value| if s.relearning { serde_json::Value::Null } else { v };
                serde_json::json!({
                    "name": f.name, "items": f.items, "items_by_redundancy": known(f.items_by_redundancy.clone().into()),
                    "degraded": known(f.degraded.into()), "unrecoverable": known(f.unrecoverable.into()), "repairing": f.repairing,
                    "level": f.level, "placement_violations": f.placement_violations,
                    "corrupt_stripes_found": f.corrupt_stripes_found, "corrupt_stripes_rebuilt": f.corrupt_stripes_rebuilt,
                    "corrupt_stripes_pending": f.corrupt_stripes_pending,
                    "degraded_writes": f.degraded_writes,
                    "stripes_per_domain": f.stripes_per_domain.iter().map(|d| (d.domain.clone(), d.stripes)).collect::<std::collections::BTreeMap<_, _>>(),
                })
            })
            .collect();
        let servers: Vec<_> = s
            .servers
            .iter()
            .map(|v| serde_json::json!({"id": v.server_id, "address": v.address, "live": v.live, "down": v.down, "stripes": v.stripes, "free_bytes": v.free_bytes, "read_bytes_per_sec": v.read_bytes_per_sec, "device_bytes_per_sec": (v.device_bytes_per_sec > 0.0).then_some(v.device_bytes_per_sec), "zone": v.topology.clone().unwrap_or_default().zone, "failure_count": v.failure_count}))
            .collect();
        crate::outln!(
            "{}",
            serde_json::json!({"servers": servers, "filesets": fs, "repaired_stripes": s.repaired_stripes, "repaired_bytes": s.repaired_bytes, "collected_stripes": s.collected_stripes,
                "relearning": s.relearning, "corrupt_stripes_found": s.corrupt_stripes_found, "corrupt_stripes_rebuilt": s.corrupt_stripes_rebuilt, "corrupt_reports": s.corrupt_reports})
        );
        return Ok(());
    }
    crate::outln!(
        "{:<8} {:<22} {:<8} {:>6} {:>8} {:>10} {:>10} {:>10}",
        "SERVER",
        "ADDRESS",
        "ZONE",
        "STATE",
        "STRIPES",
        "FREE",
        "READ/S",
        "DEVICE/S"
    );
    // A local cluster also says which of its processes are not running.
    let local = if r.master.is_none() { crate::target::LocalState::load().ok() } else { None };
    let stopped =
        |id: &str| local.as_ref().and_then(|l| l.servers.iter().find(|s| s.id == id)).is_some_and(|s| !s.running);
    for v in &s.servers {
        let state = if stopped(&v.server_id) {
            "stopped"
        } else if !v.live {
            "lost"
        } else if v.down {
            "out"
        } else {
            "up"
        };
        // What its devices do while reading ("-" until they have read enough).
        let device = if v.device_bytes_per_sec > 0.0 { human(v.device_bytes_per_sec as u64) } else { "-".into() };
        crate::outln!(
            "{:<8} {:<22} {:<8} {:>6} {:>8} {:>10} {:>10} {:>10}",
            v.server_id,
            v.address,
            v.topology.clone().unwrap_or_default().zone,
            state,
            v.stripes,
            human(v.free_bytes),
            human(v.read_bytes_per_sec as u64),
            device
        );
    }
    if s.relearning {
        crate::outln!(
            "\nThe master started moments ago and is relearning where stripes are from the {} chunkservers that have reported so far;\nredundancy below is incomplete until they all have.",
            s.servers.len()
        );
    }
    for f in &s.filesets {
        if s.relearning {
            crate::outln!("\n{}: {} items; redundancy not known yet (relearning locations)", f.name, f.items);
            continue;
        }
        crate::outln!(
            "\n{}: {} items; by redundancy left (0..m): {:?}; degraded {}, unrecoverable {}, repairing {}, placement violations {}",
            f.name,
            f.items,
            f.items_by_redundancy,
            f.degraded,
            f.unrecoverable,
            f.repairing,
            f.placement_violations
        );
        if f.corrupt_stripes_found > 0 || f.degraded_writes > 0 {
            crate::outln!(
                "  corrupt stripes found {} (quarantined), rebuilt {}; items written degraded {}",
                f.corrupt_stripes_found,
                f.corrupt_stripes_rebuilt,
                f.degraded_writes
            );
        }
        let per: Vec<String> = f.stripes_per_domain.iter().map(|d| format!("{}={}", d.domain, d.stripes)).collect();
        crate::outln!("  stripes per {}: {}", f.level, per.join(" "));
    }
    crate::outln!(
        "\nrepaired {} stripes ({}); collected {} stripes; corrupt stripes found {}, rebuilt {}; readers' corrupt-block reports {}",
        s.repaired_stripes,
        human(s.repaired_bytes),
        s.collected_stripes,
        s.corrupt_stripes_found,
        s.corrupt_stripes_rebuilt,
        s.corrupt_reports
    );
    Ok(())
}

/// Delete a version, or a whole fileset.
#[derive(Debug, Clone, Args)]
pub struct RmArgs {
    /// NAME@VERSION deletes one version; NAME deletes the fileset and all its versions.
    pub target: Target,
}

pub async fn rm(r: &Remote, a: &RmArgs) -> anyhow::Result<()> {
    let fc = client(r)?;
    let mut mc = fc.master();
    if a.target.version != 0 {
        mc.delete_version(ms::DeleteVersionRequest { fileset: a.target.fileset.clone(), version: a.target.version })
            .await?;
        crate::outln!("deleted {}@{}", a.target.fileset, a.target.version);
    } else {
        let r = mc.delete_fileset(ms::DeleteFilesetRequest { name: a.target.fileset.clone() }).await?.into_inner();
        crate::outln!("deleted fileset {} ({} versions)", a.target.fileset, r.versions_deleted);
    }
    Ok(())
}
