//! `tessera bench read-tail` and `tessera bench soak` end to end: real
//! chunkserver processes, the JSON they print, and refusals of bad flags.

use std::process::Command;

/// Each test runs a cluster of its own: one at a time, so that none is
/// starved into missing heartbeats by the others on a small machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

#[test]
fn read_tail_reports_how_many_stripes_accelerated_reads_asked_for() {
    let _one = serial();
    let out = tessera()
        .args(["bench", "read-tail", "--items", "2", "--reads", "5", "--warmup", "1", "--unit", "64KiB"])
        .args(["--block", "16KiB", "--modes", "normal,accelerated", "--accelerated-extra", "1", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert_eq!(rows[0]["mode"], "normal");
    assert!(rows[0].get("accelerated_stripes").is_none(), "{stdout}");
    assert_eq!(rows[1]["mode"], "accelerated");
    assert_eq!(rows[1]["accelerated_stripes"], 7, "k + 1 of RS(6,3)");
    assert_eq!(rows[1]["reads"], 5);
}

#[test]
fn read_tail_refuses_zero_extra_stripes_naming_the_flag() {
    let _one = serial();
    let out = tessera().args(["bench", "read-tail", "--accelerated-extra", "0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--accelerated-extra"), "{err}");
}

#[test]
fn read_tail_measures_reads_while_every_server_scrubs() {
    let _one = serial();
    let out = tessera()
        .args(["bench", "read-tail", "--items", "3", "--reads", "20", "--warmup", "2", "--unit", "64KiB"])
        .args(["--block", "16KiB", "--modes", "hedged", "--scrub-bandwidth", "32MiB/s", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let scenarios: Vec<&str> = rows.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(scenarios, ["healthy", "no-scrub", "scrubbing"], "{stdout}");
    assert!(rows[1].get("scrub_mb_per_s").is_none());
    assert!(rows[2]["scrub_mb_per_s"].as_f64().unwrap() > 0.0, "the scrubbers ran: {stdout}");
    assert_eq!(rows[1]["reads"], rows[2]["reads"], "the same reads either way: {stdout}");
}

/// The soak's short run: kills, freezes, corruption and a zone at random
/// during puts and gets; every listed version exact, redundancy back.
#[test]
fn a_short_soak_verifies_every_version_through_faults() {
    let _one = serial();
    let out = tessera().args(["bench", "soak", "--minutes", "0.75", "--seed", "11", "--json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let faults: u64 = r["faults"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert!(faults >= 3 && r["episodes"].as_u64().unwrap() >= 2, "{r}");
    assert!(r["puts"].as_u64().unwrap() > 0 && r["gets_verified"].as_u64().unwrap() > 0, "{r}");
    assert!(r["versions_verified_at_end"].as_u64().unwrap() >= 3, "{r}");
    assert_eq!(r["corrupt_stripes_pending"], 0, "{r}");
}

/// `tessera bench jobs`, small: one chunkserver slowed, the rows it prints
/// for "none" and the default policy, each job verified by content inside
/// the benchmark (it fails otherwise).
#[test]
fn bench_jobs_reports_makespans_beside_none() {
    let _one = serial();
    let out = tessera()
        .args(["bench", "jobs", "--servers", "9", "--groups", "8", "--group-size", "1MiB", "--unit", "64KiB"])
        .args(["--rounds", "1", "--scenarios", "healthy,slow-server", "--policies", "none,default"])
        .args(["--task-rate", "4MiB/s", "--slow-server-rate", "1MiB/s", "--warmup", "100ms", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let keys: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["scenario"].as_str().unwrap(), r["policy"].as_str().unwrap())).collect();
    assert_eq!(
        keys,
        [("healthy", "none"), ("healthy", "default"), ("slow-server", "none"), ("slow-server", "default")],
        "{stdout}"
    );
    for r in &rows {
        assert!(r["makespan_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["extra_bytes"].is_i64(), "{r}");
        assert_eq!(r["groups"], 8, "{r}");
    }
    assert_eq!(rows[0]["ratio"], 1.0);
    // The policy "none" accelerates nothing and starts no backup.
    assert_eq!(rows[0]["accelerated"], 0, "{stdout}");
    assert_eq!(rows[0]["backups"], 0, "{stdout}");
}

#[test]
fn bench_jobs_refuses_unknown_scenarios_naming_the_flag() {
    let _one = serial();
    let out = tessera().args(["bench", "jobs", "--scenarios", "sunny"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--scenarios") && err.contains("sunny"), "{err}");
}
