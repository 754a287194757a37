//! `tessera bench soak`: kills, freezes and corrupts at random on a local
//! cluster while puts and gets run, and checks what a user is promised:
//! every listed version reads back exact, and the cluster returns to full
//! redundancy once the faults are healed.
//!
//! Faults come in episodes. An episode starts up to m impairments at random
//! moments (a chunkserver killed, a chunkserver frozen with SIGSTOP, one
//! stripe of a published item flipped on disk), or takes a whole zone down;
//! they last until the episode ends, so at most m are in force at once:
//! what RS(k, m) with at most m stripes per zone promises to survive (an
//! item written degraded during the episode misses only stripes of servers
//! already impaired, so it too loses at most m). Then everything is healed,
//! and the next episode starts only once the master reports full
//! redundancy again, the time to which is measured. Any read that is not exact, any version
//! listed that was never written, and any put that fails for another reason
//! than too few servers ends the soak with an error.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tessera_core::read_plan::ReadMode;
use tessera_proto::ms;

use super::files::Bench;

/// Kill, freeze and corrupt at random during puts and gets; check every listed version.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// How long to inject faults (fractions allowed: 0.5 is 30 s).
    #[arg(long, default_value_t = 5.0)]
    pub minutes: f64,
    /// Seed of the random choices (faults, victims, trees), for a rerun.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Chunkserver processes, in three zones (at least 9 for RS(6,3)).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u64).range(9..))]
    pub servers: u64,
    /// Where generated trees and copies go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    pub scratch: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a soak did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakReport {
    pub seed: u64,
    pub seconds: f64,
    pub episodes: u64,
    /// Faults injected, by kind: kill, freeze, corrupt, zone.
    pub faults: BTreeMap<&'static str, u64>,
    pub puts: u64,
    /// Puts refused with a clear error because too few servers were up
    /// (a whole zone down leaves fewer than min_write_stripes placeable).
    pub puts_refused: u64,
    /// Versions read back whole and compared with what was written.
    pub gets_verified: u64,
    /// Versions listed at the end, every one read back exact.
    pub versions_verified_at_end: u64,
    /// Reads at the end that found an item unreadable while the master had given up
    /// on servers it could not hear from (a stalled machine), and read it
    /// exact once every server was live again. A second failure fails the
    /// soak.
    pub reads_retried: u64,
    /// After each episode's faults were healed: seconds until the master
    /// reported every item at full redundancy.
    pub full_redundancy_seconds_max: f64,
    pub full_redundancy_seconds_mean: f64,
    pub corrupt_stripes_found: u64,
    pub corrupt_stripes_rebuilt: u64,
    /// Quarantined and not rebuilt at the end (must be 0).
    pub corrupt_stripes_pending: u64,
    pub degraded_writes: u64,
}

const FILESETS: [&str; 3] = ["soak-a", "soak-b", "soak-c"];
const M: usize = 3;

/// An impairment in force.
enum Impairment {
    Killed(usize),
    Frozen(usize),
    /// A stripe of this item (hex).
    Corrupted(String),
    Zone(Vec<usize>),
}

pub async fn run(a: &SoakArgs) -> anyhow::Result<SoakReport> {
    let seed = a.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let servers = a.servers as usize;
    let master_args = vec!["--heartbeat-timeout=2s".to_string(), "--repair-grace=10s".to_string()];
    // A scrubber that keeps up, so corruption nobody reads is found within
    // the episode's healing.
    let cs_args = vec!["--scrub-bandwidth=64MiB/s".to_string(), "--scrub-period=2s".to_string()];
    let mut b = Bench::start(servers, 3, None, &a.scratch, master_args, cs_args).await?;
    for f in FILESETS {
        let spec = ms::FilesetSpec {
            name: f.into(),
            layout: Some(ms::Layout { k: 6, m: M as u32, stripe_unit: 256 << 10, block_size: 64 << 10 }),
            keep_versions: 3,
            ..Default::default()
        };
        b.client.create_fileset(spec, false).await?;
    }
    let mut report = SoakReport { seed, ..Default::default() };
    // The tree of each version written, by its seed.
    let mut written: HashMap<(String, u64), u64> = HashMap::new();
    let mut healing = Vec::new();
    let mut active: Vec<Impairment> = Vec::new();
    let mut corrupted: Vec<String> = Vec::new();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(a.minutes.max(0.0) * 60.0);
    // One version of each before the first fault, so gets have something.
    for f in FILESETS {
        put(&b, f, rng.random(), &mut written, &mut report).await?;
    }
    while Instant::now() < until {
        report.episodes += 1;
        let episode_end = Instant::now() + Duration::from_millis(rng.random_range(4000..12000));
        let zone_episode = rng.random_bool(0.2);
        while Instant::now() < episode_end {
            let load: usize = active.iter().map(weight).sum();
            match rng.random_range(0..10) {
                0..=3 => {
                    let f = FILESETS[rng.random_range(0..FILESETS.len())];
                    put(&b, f, rng.random(), &mut written, &mut report).await?;
                }
                4..=6 => verify_one(&b, &mut rng, &written, &a.scratch, &mut report).await?,
                _ if zone_episode && active.is_empty() => {
                    let zone = format!("z{}", rng.random_range(0..3));
                    let ids = b.cluster.zone(&zone);
                    for &i in &ids {
                        b.cluster.servers[i].kill().await?;
                    }
                    *report.faults.entry("zone").or_default() += 1;
                    active.push(Impairment::Zone(ids));
                }
                _ if !zone_episode && load < M => {
                    if let Some(i) = impair(&mut b, &mut rng, &active, &mut report).await? {
                        active.push(i);
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        // Heal everything; the next episode waits for full redundancy.
        corrupted.extend(active.iter().filter_map(|i| match i {
            Impairment::Corrupted(item) => Some(item.clone()),
            _ => None,
        }));
        heal(&mut b, &mut active).await?;
        let healed = Instant::now();
        // Every corruption of an item still published must have been found
        // (by a read or the scrubber) and rebuilt; retention may have
        // deleted the others first.
        let published = published_items(&b).await?;
        let injected = corrupted.iter().filter(|i| published.contains(i)).count() as u64;
        let back = b
            .until("full redundancy after the episode", Duration::from_secs(180), |st| {
                !st.relearning
                    && st.servers.iter().all(|s| s.live && !s.down)
                    && st
                        .filesets
                        .iter()
                        .all(|f| f.degraded == 0 && f.unrecoverable == 0 && f.corrupt_stripes_pending == 0)
                    && st.corrupt_stripes_found >= injected
            })
            .await;
        if let Err(e) = back {
            let st = b.status().await?;
            bail!(
                "episode {} (seed {seed}): {e}; {} corrupt stripes injected; {}",
                report.episodes,
                injected,
                summary(&st)
            );
        }
        healing.push(healed.elapsed().as_secs_f64());
    }
    report.seconds = started.elapsed().as_secs_f64();
    // Every version listed now is one we wrote, and reads back exact.
    for f in FILESETS {
        let versions = b.client.master().list_versions(ms::ListVersionsRequest { fileset: f.into() }).await?;
        for v in versions.into_inner().versions {
            let tree = *written
                .get(&(f.to_string(), v.id))
                .with_context(|| format!("{f}@{} is listed but was never written", v.id))?;
            verify_retrying(&b, f, v.id, tree, &a.scratch, &mut report).await?;
            report.versions_verified_at_end += 1;
        }
    }
    let st = b.status().await?;
    report.corrupt_stripes_found = st.corrupt_stripes_found;
    report.corrupt_stripes_rebuilt = st.corrupt_stripes_rebuilt;
    report.degraded_writes = st.filesets.iter().map(|f| f.degraded_writes).sum();
    report.corrupt_stripes_pending = st.filesets.iter().map(|f| f.corrupt_stripes_pending).sum();
    report.full_redundancy_seconds_max = healing.iter().copied().fold(0.0, f64::max);
    report.full_redundancy_seconds_mean =
        if healing.is_empty() { 0.0 } else { healing.iter().sum::<f64>() / healing.len() as f64 };
    Ok(report)
}

/// What is not at full redundancy, for an error.
fn summary(st: &ms::StatusResponse) -> String {
    let servers: Vec<String> = st
        .servers
        .iter()
        .filter(|s| !s.live || s.down)
        .map(|s| format!("{} live={} down={}", s.server_id, s.live, s.down))
        .collect();
    let filesets: Vec<String> = st
        .filesets
        .iter()
        .map(|f| {
            format!(
                "{}: degraded {} unrecoverable {} repairing {} by redundancy {:?}",
                f.name, f.degraded, f.unrecoverable, f.repairing, f.items_by_redundancy
            )
        })
        .collect();
    format!(
        "servers out: [{}]; {}; corrupt found {} rebuilt {}; relearning {}",
        servers.join(", "),
        filesets.join("; "),
        st.corrupt_stripes_found,
        st.corrupt_stripes_rebuilt,
        st.relearning
    )
}

/// Servers (or stripes) an impairment takes from an item at most.
fn weight(i: &Impairment) -> usize {
    match i {
        Impairment::Zone(ids) => ids.len(),
        _ => 1,
    }
}

/// Starts one impairment of a kind chosen at random, on a server not
/// impaired already.
async fn impair(
    b: &mut Bench,
    rng: &mut StdRng,
    active: &[Impairment],
    report: &mut SoakReport,
) -> anyhow::Result<Option<Impairment>> {
    let busy: Vec<usize> = active
        .iter()
        .filter_map(|i| match i {
            Impairment::Killed(s) | Impairment::Frozen(s) => Some(*s),
            _ => None,
        })
        .collect();
    let free: Vec<usize> = (0..b.cluster.servers.len()).filter(|s| !busy.contains(s)).collect();
    let victim = free[rng.random_range(0..free.len())];
    Ok(Some(match rng.random_range(0..3) {
        0 => {
            b.cluster.servers[victim].kill().await?;
            *report.faults.entry("kill").or_default() += 1;
            Impairment::Killed(victim)
        }
        1 => {
            signal(b.cluster.servers[victim].pid(), rustix::process::Signal::STOP)?;
            *report.faults.entry("freeze").or_default() += 1;
            Impairment::Frozen(victim)
        }
        _ => {
            // A stripe of a published item, on a server that is up.
            let published = published_items(b).await?;
            let files: Vec<PathBuf> = free
                .iter()
                .flat_map(|&s| stripe_files(&b.cluster.servers[s].data_dir))
                .filter(|p| file_item(p).is_some_and(|i| published.contains(&i)))
                .collect();
            if files.is_empty() {
                return Ok(None);
            }
            let file = &files[rng.random_range(0..files.len())];
            flip_a_byte(file, rng)?;
            *report.faults.entry("corrupt").or_default() += 1;
            Impairment::Corrupted(file_item(file).expect("filtered above"))
        }
    }))
}

/// Ends every impairment in force.
async fn heal(b: &mut Bench, active: &mut Vec<Impairment>) -> anyhow::Result<()> {
    for i in active.drain(..) {
        match i {
            Impairment::Killed(s) => b.cluster.restart(s).await?,
            Impairment::Frozen(s) => signal(b.cluster.servers[s].pid(), rustix::process::Signal::CONT)?,
            Impairment::Zone(ids) => {
                for s in ids {
                    b.cluster.restart(s).await?;
                }
            }
            // Healed by the cluster itself: quarantine and rebuild.
            Impairment::Corrupted(_) => {}
        }
    }
    Ok(())
}

fn signal(pid: Option<u32>, sig: rustix::process::Signal) -> anyhow::Result<()> {
    let pid = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)).context("the server is not running")?;
    rustix::process::kill_process(pid, sig).with_context(|| format!("signalling {pid:?}"))?;
    Ok(())
}

/// Items of every listed version, as the hex their stripe files are named by.
async fn published_items(b: &Bench) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for f in FILESETS {
        let vs = b.client.master().list_versions(ms::ListVersionsRequest { fileset: f.into() }).await?;
        for v in vs.into_inner().versions {
            let manifest = v.manifest.map(|m| m.items).unwrap_or_default();
            out.extend(v.items.iter().chain(&manifest).map(|i| hex_of(&i.item)));
        }
    }
    Ok(out)
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn stripe_files(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(shards) = std::fs::read_dir(data_dir.join("stripes")) else { return Vec::new() };
    shards
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten().map(|e| e.path()))
        .collect()
}

fn file_item(p: &Path) -> Option<String> {
    Some(p.file_name()?.to_str()?.split_once('.')?.0.to_string())
}

/// Flips one byte in the last 4 KiB of a stripe file: its data, past the
/// header (bit rot).
fn flip_a_byte(p: &Path, rng: &mut StdRng) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(p).with_context(|| p.display().to_string())?;
    let len = f.metadata()?.len();
    let at = len - 1 - rng.random_range(0..len.saturating_sub(4096).clamp(1, 4096));
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at)?;
    f.write_all_at(&[byte[0] ^ 0x5a], at)?;
    Ok(())
}

/// Puts the tree of `tree` as a new version; a refusal for want of servers
/// is counted, any other failure ends the soak.
async fn put(
    b: &Bench,
    fileset: &str,
    tree: u64,
    written: &mut HashMap<(String, u64), u64>,
    report: &mut SoakReport,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in(b.scratch.path())?;
    make_tree(dir.path(), tree)?;
    match b.client.put(fileset, dir.path(), &Default::default(), &|_| {}).await {
        Ok(v) => {
            written.insert((fileset.to_string(), v.id), tree);
            report.puts += 1;
            Ok(())
        }
        Err(e) if e.to_string().contains("cannot place") || e.to_string().contains("stripes stored") => {
            report.puts_refused += 1;
            Ok(())
        }
        Err(e) => bail!("put of {fileset} failed with more than m servers lost at no time: {e}"),
    }
}

/// Reads a random listed version back and compares it with what was written.
async fn verify_one(
    b: &Bench,
    rng: &mut StdRng,
    written: &HashMap<(String, u64), u64>,
    scratch: &Path,
    report: &mut SoakReport,
) -> anyhow::Result<()> {
    let f = FILESETS[rng.random_range(0..FILESETS.len())];
    let versions = b.client.master().list_versions(ms::ListVersionsRequest { fileset: f.into() }).await?;
    let versions = versions.into_inner().versions;
    if versions.is_empty() {
        return Ok(());
    }
    let v = &versions[rng.random_range(0..versions.len())];
    let tree = *written.get(&(f.to_string(), v.id)).with_context(|| format!("{f}@{} was never written", v.id))?;
    // Mid-episode some servers are down on purpose: no retry here.
    match verify(b, f, v.id, tree, scratch).await {
        Ok(()) => {
            report.gets_verified += 1;
            Ok(())
        }
        // Retention may delete it between the listing and the read.
        Err(e) if e.to_string().contains("has no version") => Ok(()),
        Err(e) => Err(e),
    }
}

/// As [`verify`], for the end of the run, when every fault is healed; a
/// version that is unreadable (too few stripes located on live servers,
/// never wrong bytes) is read once more after every server is live again: on a machine this loaded the master sometimes misses
/// heartbeats for longer than its timeout and gives up on servers that
/// are fine.
async fn verify_retrying(
    b: &Bench,
    fileset: &str,
    version: u64,
    tree: u64,
    scratch: &Path,
    report: &mut SoakReport,
) -> anyhow::Result<()> {
    match verify(b, fileset, version, tree, scratch).await {
        Err(e) if format!("{e:#}").contains("is unreadable") => {
            tracing::warn!(
                fileset,
                version,
                error = format!("{e:#}"),
                "a version was unreadable; reading it again once every server is live"
            );
            let live = b
                .until("every server live again", Duration::from_secs(60), |st| {
                    !st.relearning && st.servers.iter().all(|s| s.live && !s.down)
                })
                .await;
            if live.is_err() {
                return Err(e);
            }
            report.reads_retried += 1;
            verify(b, fileset, version, tree, scratch).await
        }
        other => other,
    }
}

/// Copies `fileset@version` out and compares every file with the tree.
async fn verify(b: &Bench, fileset: &str, version: u64, tree: u64, scratch: &Path) -> anyhow::Result<()> {
    let dst = tempfile::tempdir_in(scratch)?;
    let copy = dst.path().join("v");
    let v = b.client.open(fileset, version).await?;
    v.get(b.client.stripes(), &copy, ReadMode::Hedged, &|_| {})
        .await
        .with_context(|| format!("reading {fileset}@{version} back"))?;
    let want = tempfile::tempdir_in(scratch)?;
    make_tree(want.path(), tree)?;
    for (name, bytes) in files_of(want.path())? {
        let got = std::fs::read(copy.join(&name)).with_context(|| format!("{fileset}@{version}: {name} missing"))?;
        anyhow::ensure!(got == bytes, "{fileset}@{version}: {name} differs from what was written");
    }
    anyhow::ensure!(
        files_of(&copy)?.len() == files_of(want.path())?.len(),
        "{fileset}@{version} holds files that were never written"
    );
    Ok(())
}

fn files_of(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        out.push((p.file_name().unwrap_or_default().to_string_lossy().into_owned(), std::fs::read(&p)?));
    }
    Ok(out)
}

/// The tree of seed `tree`: a few to thirty small files, and now and then
/// one that spans several items.
fn make_tree(dir: &Path, tree: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(tree);
    let files = rng.random_range(3..30);
    for i in 0..files {
        let len = if i == 0 && rng.random_bool(0.3) {
            rng.random_range(2 << 20..4 << 20)
        } else {
            rng.random_range(0..200_000)
        };
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        std::fs::write(dir.join(format!("f{i:02}")), data)?;
    }
    Ok(())
}

pub fn print(r: &SoakReport, json: bool) -> anyhow::Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let faults: Vec<String> = r.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
    crate::outln!("soak (seed {}): {:.0} s, {} episodes; faults: {}", r.seed, r.seconds, r.episodes, faults.join(", "));
    crate::outln!(
        "  puts {} (refused for want of servers {}), versions read back exact {}, at the end {}; reads retried once every server was live {}",
        r.puts,
        r.puts_refused,
        r.gets_verified,
        r.versions_verified_at_end,
        r.reads_retried
    );
    crate::outln!(
        "  corrupt stripes found {}, rebuilt {} (of versions since deleted: {}); items written degraded {}",
        r.corrupt_stripes_found,
        r.corrupt_stripes_rebuilt,
        r.corrupt_stripes_found.saturating_sub(r.corrupt_stripes_rebuilt + r.corrupt_stripes_pending),
        r.degraded_writes
    );
    crate::outln!(
        "  back to full redundancy after each episode: mean {:.1} s, max {:.1} s",
        r.full_redundancy_seconds_mean,
        r.full_redundancy_seconds_max
    );
    Ok(())
}
