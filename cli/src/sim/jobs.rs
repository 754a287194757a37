//! `tessera sim jobs`: a job of many tasks on many nodes, some with slow
//! disks and some slow themselves, run in simulated time once per straggler
//! policy, with the decisions taken by `tessera_core::jobs::straggler`, the
//! code the Job controller is to run (issue 14).
//!
//! The model: every node is a chunkserver and runs `slots` tasks at once.
//! A task's group is one item set striped RS(k, m) over n distinct random
//! nodes; the task runs on the first of its data nodes with a free slot
//! (else anywhere free). It processes its bytes at the lower of its node's
//! CPU rate and its read rate; a normal read fetches the k data stripes in
//! lockstep, so it goes k times the slowest data server's stream rate; an
//! accelerated one asks all n stripes and goes k times the k-th fastest.
//! Slow disks stream `disk_slowdown` times slower, slow nodes compute
//! `node_slowdown` times slower; every node's CPU and every group's size
//! vary by ±10% so a healthy run is not uniform. The network is not
//! modelled (link loads are reported as light), nor contention on a disk.
//! Attempts start in normal mode here: the scheduler's start-accelerated
//! rule for groups on a server known slow (decision 0024) is not modelled,
//! so the accelerating policies' figures are conservative.
//! The same arguments give the same figures.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tessera_core::jobs::straggler::{self, Action, Policy, PolicyKind, Priority, Progress, TaskId, TaskReport};

#[derive(Debug, Clone, Args)]
pub struct SimJobsArgs {
    /// Tasks (groups) in the job.
    #[arg(long, default_value_t = 10_000)]
    pub tasks: usize,
    /// Nodes, each a chunkserver that also runs tasks.
    #[arg(long, default_value_t = 1_000)]
    pub nodes: usize,
    /// Tasks a node runs at once.
    #[arg(long, default_value_t = 4)]
    pub slots: usize,
    /// Fraction of the nodes whose disk is slow.
    #[arg(long, default_value_t = 0.02)]
    pub slow_disks: f64,
    /// Fraction of the nodes that compute slowly.
    #[arg(long, default_value_t = 0.01)]
    pub slow_nodes: f64,
    /// How many times slower a slow disk streams.
    #[arg(long, default_value_t = 10.0)]
    pub disk_slowdown: f64,
    /// How many times slower a slow node computes.
    #[arg(long, default_value_t = 5.0)]
    pub node_slowdown: f64,
    /// Megabytes each task processes (±10%).
    #[arg(long, default_value_t = 8_000.0)]
    pub task_mb: f64,
    /// Data stripes per item (k).
    #[arg(long, default_value_t = 6)]
    pub k: usize,
    /// Parity stripes per item (m).
    #[arg(long, default_value_t = 3)]
    pub m: usize,
    /// Parity stripes an accelerated read asks for beside the k data
    /// stripes (by default all m, as the client's accelerated mode).
    #[arg(long)]
    pub extra_stripes: Option<usize>,
    /// Seconds between two straggler evaluations.
    #[arg(long, default_value_t = 5.0)]
    pub every: f64,
    /// The policies to run, among none, accelerate, backup and default (the
    /// progressive policy, also accepted as "progressive"). The simulated
    /// tasks have no priorities, so the priority policy is not offered.
    #[arg(long, value_delimiter = ',', default_value = "none,accelerate,backup,default")]
    pub policies: Vec<String>,
    /// Seed of the cluster's and the job's randomness.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// One JSON object per policy, one per line.
    #[arg(long)]
    pub json: bool,
}

/// A healthy disk streams one stripe at this rate (MB/s), a healthy node
/// computes at this one.
const DISK_MB_S: f64 = 100.0;
const CPU_MB_S: f64 = 400.0;
/// The simulation's time step (s).
const STEP: f64 = 0.25;

#[derive(Debug, Clone, Serialize)]
pub struct SimJobsReport {
    pub policy: String,
    pub tasks: usize,
    pub nodes: usize,
    pub slow_disks: usize,
    pub slow_nodes: usize,
    pub makespan_s: f64,
    /// Makespan over the "none" policy's in the same run (when run).
    pub ratio: Option<f64>,
    /// Bytes read beyond one read of every group's data.
    pub extra_bytes: u64,
    /// Attempts that read accelerated (switched, at the end game too, or
    /// started so).
    pub accelerated: usize,
    pub backups: usize,
    /// Slot-seconds of every attempt, and of the attempts whose result was
    /// discarded (lost or cancelled).
    pub task_s: f64,
    pub wasted_task_s: f64,
}

fn policy_of(name: &str) -> anyhow::Result<(String, Policy)> {
    let kind = match name {
        "none" => PolicyKind::None,
        "accelerate" => PolicyKind::Accelerate,
        "backup" => PolicyKind::Backup,
        "default" | "progressive" => PolicyKind::Progressive,
        other => bail!("--policies: unknown policy {other:?} (none, accelerate, backup, default)"),
    };
    let label = if kind == PolicyKind::Progressive { "default" } else { name };
    Ok((label.to_string(), Policy { kind, ..Policy::default() }))
}

/// The cluster and the job, drawn once from the seed and shared by every
/// policy's run.
struct World {
    cpu: Vec<f64>,
    disk: Vec<f64>,
    /// Per group: its n servers (the first k hold data) and its size (MB).
    groups: Vec<(Vec<usize>, f64)>,
    slow: Vec<bool>,
    slow_disks: usize,
    slow_nodes: usize,
}

impl World {
    fn new(a: &SimJobsArgs) -> anyhow::Result<Self> {
        let n = a.k + a.m;
        if a.k == 0 || a.m == 0 {
            bail!("--k and --m must be at least 1");
        }
        if a.nodes < n {
            bail!("--nodes {} cannot hold {n} stripes on distinct nodes", a.nodes);
        }
        if let Some(e) = a.extra_stripes.filter(|e| *e == 0 || *e > a.m) {
            bail!("--extra-stripes {e} must be between 1 and m = {} (an accelerated read asks for more than k)", a.m);
        }
        if a.slots == 0 || a.tasks == 0 {
            bail!("--slots and --tasks must be at least 1");
        }
        for (flag, f) in [("--slow-disks", a.slow_disks), ("--slow-nodes", a.slow_nodes)] {
            if !(0.0..=1.0).contains(&f) {
                bail!("{flag} {f} is not a fraction between 0 and 1");
            }
        }
        if a.disk_slowdown < 1.0 || a.node_slowdown < 1.0 || a.task_mb <= 0.0 || a.every <= 0.0 {
            bail!("--disk-slowdown and --node-slowdown must be at least 1, --task-mb and --every positive");
        }
        let mut rng = StdRng::seed_from_u64(a.seed);
        let slow_disks = (a.nodes as f64 * a.slow_disks).round() as usize;
        let slow_nodes = (a.nodes as f64 * a.slow_nodes).round() as usize;
        let mut disk = vec![DISK_MB_S; a.nodes];
        for i in sample(&mut rng, a.nodes, slow_disks) {
            disk[i] /= a.disk_slowdown;
        }
        let mut cpu: Vec<f64> = (0..a.nodes).map(|_| CPU_MB_S * rng.random_range(0.9..1.1)).collect();
        for i in sample(&mut rng, a.nodes, slow_nodes) {
            cpu[i] /= a.node_slowdown;
        }
        let groups = (0..a.tasks)
            .map(|_| (sample(&mut rng, a.nodes, n).into_vec(), a.task_mb * rng.random_range(0.9..1.1)))
            .collect();
        // The servers a reader would call slow, as the controller judges them.
        let bandwidth: BTreeMap<String, f64> = disk.iter().enumerate().map(|(i, b)| (node_name(i), *b)).collect();
        let slow_set = straggler::slow_servers(&bandwidth, 0.5);
        let slow = (0..a.nodes).map(|i| slow_set.contains(&node_name(i))).collect();
        Ok(Self { cpu, disk, groups, slow, slow_disks, slow_nodes })
    }
}

fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node-")?.parse().ok()
}

struct AttemptState {
    group: usize,
    number: u32,
    node: usize,
    started: f64,
    done_mb: f64,
    accelerated_since: Option<f64>,
    backup: bool,
    alive: bool,
}

/// One policy's run of the job.
fn simulate(a: &SimJobsArgs, w: &World, label: &str, policy: &Policy) -> SimJobsReport {
    // An accelerated read asks for `n` stripes: the k data ones and the
    // first `extra` parity ones.
    let k = a.k;
    let n = k + a.extra_stripes.unwrap_or(a.m);
    let mut free = vec![a.slots; a.nodes];
    let mut cursor = 0usize;
    let mut committed = vec![false; a.tasks];
    let mut running: Vec<Vec<usize>> = vec![Vec::new(); a.tasks];
    let mut attempts: Vec<AttemptState> = Vec::new();
    let mut pending: VecDeque<usize> = (0..a.tasks).collect();
    // Backups asked for: group, the node to avoid, whether accelerated.
    let mut pending_backups: VecDeque<(usize, usize, bool)> = VecDeque::new();
    let (mut done, mut now, mut next_eval) = (0usize, 0.0f64, a.every);
    let (mut read_mb, mut task_s, mut wasted_s) = (0.0f64, 0.0f64, 0.0f64);
    // Attempts switched to accelerated reads, and backups started so.
    let (mut accelerated_runs, mut backups) = (0usize, 0usize);

    // A free node for a group: one of its data servers if any has a slot,
    // else the next free node round the cluster; never `avoid`.
    let mut place = |free: &mut Vec<usize>, group: usize, avoid: Option<usize>| -> Option<usize> {
        let servers = &w.groups[group].0[..k];
        let node = servers
            .iter()
            .copied()
            .find(|&s| free[s] > 0 && Some(s) != avoid)
            .or_else(|| (0..a.nodes).map(|i| (cursor + i) % a.nodes).find(|&i| free[i] > 0 && Some(i) != avoid))?;
        cursor = (node + 1) % a.nodes;
        free[node] -= 1;
        Some(node)
    };
    let rate = |at: &AttemptState| -> f64 {
        let servers = &w.groups[at.group].0;
        let read = if at.accelerated_since.is_some() {
            let mut bw: Vec<f64> = servers[..n].iter().map(|&s| w.disk[s]).collect();
            bw.sort_by(|x, y| y.total_cmp(x));
            bw[k - 1]
        } else {
            servers[..k].iter().map(|&s| w.disk[s]).fold(f64::INFINITY, f64::min)
        };
        (k as f64 * read).min(w.cpu[at.node])
    };

    while done < a.tasks {
        // Start what fits: first attempts before backups.
        let launch =
            |attempts: &mut Vec<AttemptState>, running: &mut [Vec<usize>], g: usize, node: usize, accelerated: bool| {
                let number = running[g].iter().map(|&i| attempts[i].number).max().unwrap_or(0) + 1;
                running[g].push(attempts.len());
                attempts.push(AttemptState {
                    group: g,
                    number,
                    node,
                    started: now,
                    done_mb: 0.0,
                    accelerated_since: accelerated.then_some(now),
                    backup: number > 1,
                    alive: true,
                });
            };
        while let Some(&g) = pending.front() {
            let Some(node) = place(&mut free, g, None) else { break };
            pending.pop_front();
            launch(&mut attempts, &mut running, g, node, false);
        }
        while pending.is_empty() {
            let Some(&(g, avoid, accelerated)) = pending_backups.front() else { break };
            if committed[g] {
                pending_backups.pop_front();
                continue;
            }
            let Some(node) = place(&mut free, g, Some(avoid)) else { break };
            pending_backups.pop_front();
            backups += 1;
            accelerated_runs += usize::from(accelerated);
            launch(&mut attempts, &mut running, g, node, accelerated);
        }

        if now >= next_eval {
            next_eval += a.every;
            let reports: Vec<TaskReport> = attempts
                .iter()
                .filter(|at| at.alive)
                .map(|at| {
                    let servers = &w.groups[at.group].0;
                    let reads = if at.accelerated_since.is_some() { &servers[..n] } else { &servers[..k] };
                    TaskReport {
                        task: TaskId { group: at.group.to_string(), attempt: at.number },
                        node: node_name(at.node),
                        rate: rate(at) * 1e6,
                        slow_server: reads.iter().any(|&s| w.slow[s]),
                        net_load: 0.1,
                        priority: Priority::Normal,
                        started: Duration::from_secs_f64(at.started),
                        accelerated_since: at.accelerated_since.map(Duration::from_secs_f64),
                        backup: at.backup,
                    }
                })
                .collect();
            let progress = Progress {
                now: Duration::from_secs_f64(now),
                groups: a.tasks,
                committed: done,
                pending_backups: pending_backups.iter().filter(|b| !committed[b.0]).map(|b| b.0.to_string()).collect(),
            };
            for action in straggler::decide(policy, &progress, &reports).actions {
                match action {
                    Action::Accelerate { task, .. } => {
                        let g: usize = task.group.parse().expect("the simulator names groups by index");
                        if let Some(&i) = running[g].iter().find(|&&i| attempts[i].number == task.attempt) {
                            attempts[i].accelerated_since = Some(now);
                            accelerated_runs += 1;
                        }
                    }
                    Action::Backup { group, avoid, accelerated, .. } => {
                        let g: usize = group.parse().expect("the simulator names groups by index");
                        let avoid = node_index(&avoid).expect("the simulator names nodes by index");
                        pending_backups.push_back((g, avoid, accelerated));
                    }
                }
            }
        }

        now += STEP;
        for i in 0..attempts.len() {
            if !attempts[i].alive {
                continue;
            }
            let r = rate(&attempts[i]);
            let at = &mut attempts[i];
            let step_mb = (r * STEP).min(w.groups[at.group].1 - at.done_mb);
            at.done_mb += step_mb;
            read_mb += if at.accelerated_since.is_some() { step_mb * n as f64 / k as f64 } else { step_mb };
            if at.done_mb < w.groups[at.group].1 {
                continue;
            }
            // Finished: the first attempt of its group to finish commits,
            // and the group's other attempts are cancelled.
            let g = at.group;
            if !committed[g] {
                committed[g] = true;
                done += 1;
            }
            for j in std::mem::take(&mut running[g]) {
                let other = &mut attempts[j];
                other.alive = false;
                free[other.node] += 1;
                task_s += now - other.started;
                if j != i {
                    wasted_s += now - other.started;
                }
            }
        }
    }
    let data_mb: f64 = w.groups.iter().map(|g| g.1).sum();
    SimJobsReport {
        policy: label.to_string(),
        tasks: a.tasks,
        nodes: a.nodes,
        slow_disks: w.slow_disks,
        slow_nodes: w.slow_nodes,
        makespan_s: now,
        ratio: None,
        extra_bytes: ((read_mb - data_mb).max(0.0) * 1e6) as u64,
        accelerated: accelerated_runs,
        backups,
        task_s,
        wasted_task_s: wasted_s,
    }
}

pub fn run(a: &SimJobsArgs) -> anyhow::Result<Vec<SimJobsReport>> {
    let policies: Vec<(String, Policy)> = a.policies.iter().map(|p| policy_of(p)).collect::<Result<_, _>>()?;
    let world = World::new(a).context("sim jobs")?;
    let mut reports: Vec<SimJobsReport> = policies.iter().map(|(l, p)| simulate(a, &world, l, p)).collect();
    if let Some(none) = reports.iter().find(|r| r.policy == "none").map(|r| r.makespan_s) {
        for r in &mut reports {
            r.ratio = Some(r.makespan_s / none);
        }
    }
    Ok(reports)
}

pub fn print(a: &SimJobsArgs, reports: &[SimJobsReport]) -> anyhow::Result<()> {
    if a.json {
        for r in reports {
            crate::outln!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    if let Some(r) = reports.first() {
        crate::outln!(
            "{} tasks on {} nodes ({} slots each), {} slow disks ({}x), {} slow nodes ({}x), RS({},{})",
            r.tasks,
            r.nodes,
            a.slots,
            r.slow_disks,
            a.disk_slowdown,
            r.slow_nodes,
            a.node_slowdown,
            a.k,
            a.m
        );
    }
    crate::outln!(
        "{:<12} {:>10} {:>8} {:>12} {:>11} {:>8} {:>10} {:>10}",
        "policy",
        "makespan",
        "vs none",
        "extra read",
        "accelerated",
        "backups",
        "task-s",
        "wasted"
    );
    for r in reports {
        crate::outln!(
            "{:<12} {:>9.1}s {:>8} {:>12} {:>11} {:>8} {:>10.0} {:>10.0}",
            r.policy,
            r.makespan_s,
            r.ratio.map_or("-".to_string(), |x| format!("{x:.2}x")),
            crate::units::human(r.extra_bytes),
            r.accelerated,
            r.backups,
            r.task_s,
            r.wasted_task_s
        );
    }
    crate::outln!("published: MapReduce backup tasks 0.69x (sort, 891 s vs 1283 s), Mantri 0.68x (-32%)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: SimJobsArgs,
    }

    fn args(extra: &[&str]) -> SimJobsArgs {
        let base = ["sim", "--tasks", "400", "--nodes", "60", "--slots", "2"];
        Cli::parse_from(base.iter().chain(extra)).a
    }

    #[test]
    fn a_healthy_cluster_needs_no_help_and_slow_disks_are_cured_by_acceleration() {
        let healthy = run(&args(&["--slow-disks", "0", "--slow-nodes", "0"])).unwrap();
        for r in &healthy {
            // Only the end game accelerates: at most the last 1% of tasks.
            assert_eq!((r.backups, r.wasted_task_s), (0, 0.0), "{r:?}");
            assert!(r.accelerated <= r.tasks / 100, "{r:?}");
            assert!(r.ratio.unwrap() <= 1.0 + 1e-9, "{r:?}");
        }
        let slow = run(&args(&["--slow-disks", "0.05", "--slow-nodes", "0"])).unwrap();
        let by = |p: &str| slow.iter().find(|r| r.policy == p).unwrap();
        assert!(by("accelerate").accelerated > 0 && by("accelerate").extra_bytes > 0);
        assert!(by("accelerate").ratio.unwrap() < 0.8, "{slow:?}");
        assert!(by("default").ratio.unwrap() < 0.8, "{slow:?}");
        assert_eq!(by("none").extra_bytes, 0);
    }

    #[test]
    fn slow_nodes_are_cured_by_backups_not_acceleration() {
        let r = run(&args(&["--slow-disks", "0", "--slow-nodes", "0.05"])).unwrap();
        let by = |p: &str| r.iter().find(|x| x.policy == p).unwrap();
        // Acceleration cannot cure a slow node.
        assert_eq!(by("accelerate").backups, 0);
        assert!(by("accelerate").ratio.unwrap() > 0.99, "{r:?}");
        assert!(by("backup").backups > 0 && by("default").backups > 0, "{r:?}");
        assert!(by("default").ratio.unwrap() < 1.0 && by("backup").ratio.unwrap() < 1.0, "{r:?}");
        assert!(by("default").wasted_task_s > 0.0);
    }

    #[test]
    fn the_same_arguments_give_the_same_figures() {
        let a = args(&["--slow-disks", "0.05", "--slow-nodes", "0.05"]);
        let one = serde_json::to_string(&run(&a).unwrap()).unwrap();
        assert_eq!(one, serde_json::to_string(&run(&a).unwrap()).unwrap());
    }

    #[test]
    fn bad_arguments_name_their_flag() {
        let e = run(&args(&["--policies", "none,fast"])).unwrap_err();
        assert!(e.to_string().contains("--policies"), "{e}");
        let e = run(&args(&["--extra-stripes", "4"])).unwrap_err();
        assert!(format!("{e:#}").contains("--extra-stripes"), "{e:#}");
        let e = run(&args(&["--slow-disks", "2"])).unwrap_err();
        assert!(format!("{e:#}").contains("--slow-disks"), "{e:#}");
    }
}
