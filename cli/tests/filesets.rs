//! Filesets end to end: `tessera local up` (a master and chunkserver
//! processes) driven by the `tessera` command, as a user would.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

#[test]
fn a_mixed_tree_round_trips_and_reads_with_a_zone_down() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &[]);
    let src = tempfile::tempdir().unwrap();
    mixed_tree(src.path(), 2500, 1);
    let out = up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "mixed", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["files"], 2500 + 3 + 1);

    let dst = tempfile::tempdir().unwrap();
    let copy = dst.path().join("copy");
    up.ok(&["get", "mixed", copy.to_str().unwrap()]);
    assert_eq!(describe(&copy), describe(src.path()));
    assert_eq!(up.ok_bytes(&["cat", "mixed/large/blob-2"]), std::fs::read(src.path().join("large/blob-2")).unwrap());
    let listing = up.ok(&["ls", "mixed/d0"]);
    assert!(listing.contains("link-up -> ../large/blob-2"), "{listing}");
    let st = up.fileset_status("mixed");
    assert_eq!(st["placement_violations"], 0);
    assert!(
        st["stripes_per_domain"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v.as_u64() == st["stripes_per_domain"]["default/z0"].as_u64())
    );

    // A whole zone down: RS(6,3) with at most 3 stripes per zone still reads.
    up.ok(&["fault", "stop", "zone:z1"]);
    let again = dst.path().join("again");
    up.ok(&["get", "mixed", again.to_str().unwrap(), "--mode", "normal"]);
    assert_eq!(describe(&again), describe(src.path()));
    let blob = up.ok_bytes(&["cat", "mixed/d3/e3/small-3.bin"]);
    assert_eq!(blob, std::fs::read(src.path().join("d3/e3/small-3.bin")).unwrap());
}

#[test]
fn a_restarted_master_serves_everything_once_chunkservers_report() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &[]);
    let src = tempfile::tempdir().unwrap();
    mixed_tree(src.path(), 200, 2);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "keep", "--keep", "2"]);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "keep"]);
    up.ok(&["fault", "stop", "master"]);
    assert!(up.fails(&["ls", "keep"]).contains("cannot reach the master"));
    up.ok(&["fault", "start", "master"]);
    let versions = up.ok(&["versions", "keep"]);
    assert_eq!(versions.lines().count(), 3, "two versions and a header: {versions}");
    let dst = tempfile::tempdir().unwrap();
    let copy = dst.path().join("c");
    up.ok(&["get", "keep@1", copy.to_str().unwrap()]);
    assert_eq!(describe(&copy), describe(src.path()));

    // Retention: with --keep 2, a third version retires the first, and its
    // stripes are deleted; `rm` of a version and of the fileset deletes theirs.
    let stripes_before = up.stripes();
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "keep"]);
    let listed = up.ok(&["versions", "keep"]);
    assert!(!listed.lines().any(|l| l.split_whitespace().next() == Some("1")), "version 1 retired: {listed}");
    wait_for("the retired version's stripes to go", Duration::from_secs(30), || up.stripes() == stripes_before);
    up.ok(&["rm", "keep@2"]);
    assert!(up.fails(&["get", "keep@2", dst.path().join("x").to_str().unwrap()]).contains("no version 2"));
    wait_for("the removed version's stripes to go", Duration::from_secs(30), || up.stripes() < stripes_before);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "other"]);
    up.ok(&["rm", "other"]);
    assert!(up.fails(&["versions", "other"]).contains("not found"));

    // The whole cluster stopped cleanly and started again on the same data.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(up.data_dir().join("local.json")).unwrap()).unwrap();
    let mut addrs: Vec<String> =
        state["servers"].as_array().unwrap().iter().map(|s| s["grpc"].as_str().unwrap().to_string()).collect();
    addrs.push(state["master"].as_str().unwrap().to_string());
    assert_eq!(addrs.len(), 10);
    let home = up.stop();
    for a in &addrs {
        assert!(std::net::TcpStream::connect(a).is_err(), "{a} still answers after local up stopped");
    }
    let up = LocalUp::start_in(home, 9, &[]);
    let again = dst.path().join("again");
    up.ok(&["get", "keep@3", again.to_str().unwrap()]);
    assert_eq!(describe(&again), describe(src.path()));
    assert_eq!(up.ok(&["versions", "keep"]).lines().count(), 2, "only version 3 is left");
}

#[test]
fn a_killed_put_leaves_no_version_and_its_stripes_are_collected() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &["--session-lease=3s", "--orphan-grace=2s"]);
    let src = tempfile::tempdir().unwrap();
    mixed_tree(src.path(), 10, 3);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "crash"]);
    let before = up.stripes();
    // A big upload, killed once some of its stripes are stored.
    let big = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 64 << 20];
    rand::rngs::StdRng::seed_from_u64(4).fill(&mut data[..]);
    for i in 0..6 {
        std::fs::write(big.path().join(format!("part-{i}")), &data).unwrap();
    }
    let mut put = up
        .cmd(&["put", big.path().to_str().unwrap(), "--fileset", "crash"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the upload to store stripes", Duration::from_secs(60), || up.stripes() > before + 9);
    put.kill().unwrap();
    put.wait().unwrap();
    let versions = up.ok(&["versions", "crash"]);
    assert_eq!(versions.lines().count(), 2, "only version 1: {versions}");
    // The session lapses, the orphans' grace passes, and they are deleted.
    wait_for("orphan stripes to be collected", Duration::from_secs(60), || up.stripes() == before);
    assert!(up.status()["collected_stripes"].as_u64().unwrap() > 0);
    let tmp_files: usize = (0..9)
        .map(|i| std::fs::read_dir(up.data_dir().join(format!("cs{i}/tmp"))).map(|d| d.count()).unwrap_or(0))
        .sum();
    assert_eq!(tmp_files, 0);
}

#[test]
fn lost_servers_are_repaired_by_availability() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Twelve servers: each zone has spares to rebuild into.
    let up = LocalUp::start(12, &["--heartbeat-timeout=2s", "--repair-grace=20s"]);
    let src = tempfile::tempdir().unwrap();
    mixed_tree(src.path(), 50, 5);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "hot", "--availability", "high", "--unit", "256KiB"]);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "cold", "--unit", "256KiB"]);
    // Lose the server holding the most stripes, for good.
    let status = up.status();
    let victim = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|s| s["stripes"].as_u64())
        .map(|s| s["id"].as_str().unwrap().to_string())
        .unwrap();
    let lost_at = Instant::now();
    up.ok(&["fault", "stop", &victim]);
    wait_for("the loss to be noticed", Duration::from_secs(30), || {
        up.fileset_status("hot")["degraded"].as_u64() > Some(0)
            || up.fileset_status("cold")["degraded"].as_u64() > Some(0)
    });
    wait_for("high availability to be repaired", Duration::from_secs(60), || up.fileset_status("hot")["degraded"] == 0);
    assert!(
        lost_at.elapsed() < Duration::from_secs(20),
        "high availability was not repaired at once, but after the grace"
    );
    let cold = up.fileset_status("cold");
    if lost_at.elapsed() < Duration::from_secs(18) {
        assert!(cold["degraded"].as_u64().unwrap() > 0, "low availability waits for the grace: {cold}");
    }
    wait_for("low availability to be repaired after the grace", Duration::from_secs(90), || {
        up.fileset_status("cold")["degraded"] == 0
    });
    assert!(lost_at.elapsed() >= Duration::from_secs(20), "cold was repaired before its grace");
    for f in ["hot", "cold"] {
        let st = up.fileset_status(f);
        assert_eq!(st["placement_violations"], 0, "{st}");
        let by = st["items_by_redundancy"].as_array().unwrap();
        assert_eq!(
            by.iter().map(|v| v.as_u64().unwrap()).sum::<u64>(),
            by[3].as_u64().unwrap(),
            "all at full redundancy: {st}"
        );
        let dst = tempfile::tempdir().unwrap();
        let copy = dst.path().join("c");
        up.ok(&["get", f, copy.to_str().unwrap(), "--mode", "normal"]);
        assert_eq!(describe(&copy), describe(src.path()));
    }
    assert!(up.status()["repaired_stripes"].as_u64().unwrap() > 0);
}

#[test]
fn bad_input_gets_clear_errors_and_leaves_nothing_behind() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &["--session-lease=3s", "--orphan-grace=2s"]);
    let src = tempfile::tempdir().unwrap();
    mixed_tree(src.path(), 5, 6);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "ok"]);
    assert!(up.fails(&["cat", "ok/../etc/passwd"]).contains("\"..\""));
    assert!(up.fails(&["ls", "nope"]).contains("fileset \"nope\" not found"));
    assert!(up.fails(&["get", "ok@9", "/tmp/never"]).contains("has no version 9"));
    assert!(up.fails(&["cat", "ok/missing"]).contains("no \"missing\" in ok@1"));
    assert!(
        up.fails(&["put", src.path().to_str().unwrap(), "--fileset", "Bad_Name"]).contains("not a valid fileset name")
    );
    assert!(
        up.fails(&["put", src.path().to_str().unwrap(), "--fileset", "x", "--unit", "100"]).contains("stripe unit 100")
    );
    let not_empty = tempfile::tempdir().unwrap();
    std::fs::write(not_empty.path().join("f"), b"x").unwrap();
    assert!(up.fails(&["get", "ok", not_empty.path().to_str().unwrap()]).contains("not empty"));
    // The master named by flag or environment, instead of the local cluster's.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(up.data_dir().join("local.json")).unwrap()).unwrap();
    let master = state["master"].as_str().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(TESSERA)
        .env("TESSERA_HOME", elsewhere.path())
        .env("TESSERA_MASTER", master)
        .args(["ls"])
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"), "{out:?}");
    assert!(up.fails(&["--master", "127.0.0.1:1", "ls"]).contains("cannot reach the master at 127.0.0.1:1"));
    // A tree the scan refuses (a FIFO) leaves no fileset behind.
    let special = tempfile::tempdir().unwrap();
    std::fs::write(special.path().join("a"), b"x").unwrap();
    assert!(Command::new("mkfifo").arg(special.path().join("p")).status().unwrap().success());
    let err = up.fails(&["put", special.path().to_str().unwrap(), "--fileset", "pipey"]);
    assert!(err.contains("not a regular file") && err.contains("/p:"), "{err}");
    assert!(up.fails(&["versions", "pipey"]).contains("not found"), "no fileset left behind");
    // A different layout for an existing fileset is refused, not applied.
    assert!(up.fails(&["put", src.path().to_str().unwrap(), "--fileset", "ok", "--k", "4"]).contains("other settings"));
    assert_eq!(up.ok(&["versions", "ok"]).lines().count(), 2);
}

#[test]
fn every_disk_full_fails_the_put_cleanly() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    let local = home.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"]).arg(&local).status().unwrap();
    assert!(st.success(), "mounting a tmpfs needs root (the test suite runs as root)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(local.clone());
    let up = LocalUp::start_in(home, 9, &["--session-lease=3s", "--orphan-grace=2s"]);
    let big = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 80 << 20];
    rand::rngs::StdRng::seed_from_u64(7).fill(&mut data[..]);
    std::fs::write(big.path().join("too-big"), &data).unwrap();
    let err = up.fails(&["put", big.path().to_str().unwrap(), "--fileset", "full"]);
    assert!(err.contains("no space") || err.contains("full"), "{err}");
    assert_eq!(up.ok(&["versions", "full"]).lines().count(), 1, "no version was published");
    wait_for("the failed upload's stripes to be collected", Duration::from_secs(60), || up.stripes() == 0);
    let tmp_files: usize =
        (0..9).map(|i| std::fs::read_dir(local.join(format!("cs{i}/tmp"))).map(|d| d.count()).unwrap_or(0)).sum();
    assert_eq!(tmp_files, 0, "no half-written stripe is left");
}

#[test]
fn the_fileset_benchmarks_run_and_report_against_cp() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = tempfile::tempdir().unwrap();
    let bench = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = Command::new(TESSERA)
            .args(["bench"])
            .args(args)
            .args(["--json", "--large-files", "1", "--large-size", "8MiB", "--scratch"])
            .arg(scratch.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "bench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    for op in ["put", "get"] {
        let rows = bench(&[op, "--small-files", "200"]);
        assert_eq!(rows.len(), 2, "{rows:?}");
        for (r, (mix, files)) in rows.iter().zip([("small", 200), ("large", 1)]) {
            assert_eq!((r["op"].as_str(), r["mix"].as_str(), r["files"].as_u64()), (Some(op), Some(mix), Some(files)));
            for k in ["mb_per_sec", "files_per_sec", "cp_mb_per_sec", "ratio"] {
                assert!(r[k].as_f64().unwrap() > 0.0, "{k} in {r}");
            }
        }
    }
    let repair = bench(&["repair"]);
    let r = &repair[0];
    assert!(r["repaired_stripes"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["repaired_stripes"], r["lost_stripes"], "every lost stripe rebuilt: {r}");
    assert_eq!(r["placement_violations"], 0, "{r}");
    // Nothing is left in the scratch dir.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn the_demo_tells_the_whole_story() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(TESSERA)
        .args(["demo", "--reads", "20", "--small-files", "100", "--large-size", "4MiB"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for step in
        ["[1/6]", "[3/6] put demo@1: 101 files", "stripes per zone", "[5/6] Slowing cs0", "[6/6] Stopping zone z1"]
    {
        assert!(text.contains(step), "{step:?} missing from the demo:\n{text}");
    }
    assert!(text.contains("101 files") && text.contains("checked against its SHA-256"), "{text}");
    assert!(text.contains("What hedging did"), "{text}");
}

/// Chunkservers tell the master what their devices do while reading (seed
/// 000's "current bandwidth"), so a slow device stands out beside the
/// others in `tessera status`, whatever the load on it.
#[test]
fn a_slowed_device_stands_out_in_the_status() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &[]);
    let src = tempfile::tempdir().unwrap();
    // Two items of RS(6,3) at 1 MiB stripes: every server holds stripes.
    std::fs::write(src.path().join("blob"), tessera_cli::bench::read_tail::pattern(12 << 20, 5)).unwrap();
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "blob"]);
    let servers = up.status()["servers"].as_array().unwrap().clone();
    let slow = servers[0]["address"].as_str().unwrap().to_string();
    up.ok(&["fault", "inject", "--server", &slow, "--bandwidth", "4000000"]);
    let device = |s: &serde_json::Value| s["device_bytes_per_sec"].as_f64();
    let dst = tempfile::tempdir().unwrap();
    let mut figures = Vec::new();
    // Reads (accelerated: every server is asked) until every server has
    // read enough for a figure (heartbeats carry the last ten seconds').
    wait_for("every device's bandwidth", Duration::from_secs(90), || {
        let out = dst.path().join("copy");
        let _ = std::fs::remove_dir_all(&out);
        up.ok(&["get", "blob", out.to_str().unwrap(), "--mode", "accelerated"]);
        figures =
            up.status()["servers"].as_array().unwrap().iter().map(|s| (s["address"].clone(), device(s))).collect();
        figures.iter().all(|(_, d)| d.is_some())
    });
    let slow_bw = figures.iter().find(|(a, _)| a == &slow).unwrap().1.unwrap();
    let others: Vec<f64> = figures.iter().filter(|(a, _)| a != &slow).map(|(_, d)| d.unwrap()).collect();
    // Capped at 4 MB/s: well under half of every healthy device.
    assert!(slow_bw < 8e6, "{figures:?}");
    assert!(others.iter().all(|b| *b > 2.0 * slow_bw), "{figures:?}");
    // The table shows the column.
    assert!(up.ok(&["status"]).contains("DEVICE/S"));
}

/// `tessera job plan`: a Job manifest's input version split into its groups,
/// each next to the chunkserver holding the most of its data.
#[test]
fn a_job_plan_puts_every_file_in_one_group_next_to_its_data() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &[]);
    let src = tempfile::tempdir().unwrap();
    for (dir, files) in [("a", 3), ("b", 5), ("c", 1)] {
        std::fs::create_dir(src.path().join(dir)).unwrap();
        for i in 0..files {
            let data = tessera_cli::bench::read_tail::pattern(300_000 * (i + 1), i as u64);
            std::fs::write(src.path().join(dir).join(format!("f{i}")), data).unwrap();
        }
    }
    std::fs::write(src.path().join("top"), b"at the root").unwrap();
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "corpus"]);
    let job = |grouping: &str| {
        let path = src.path().join("job.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: tessera.dev/v1alpha1\nkind: Job\nmetadata: {{name: hash}}\nspec:\n  input: {{fileset: corpus}}\n  grouping: {grouping}\n  task: {{image: busybox, command: [sha256sum]}}\n  output: {{fileset: sums}}\n"
            ),
        )
        .unwrap();
        path
    };
    let out = up.ok(&["job", "plan", job("{directory: {depth: 1}}").to_str().unwrap(), "--json"]);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary: Vec<(&str, u64)> =
        rows.iter().map(|r| (r["group"].as_str().unwrap(), r["files"].as_u64().unwrap())).collect();
    assert_eq!(summary, [("_root", 1), ("a", 3), ("b", 5), ("c", 1)]);
    let addresses: Vec<String> =
        up.status()["servers"].as_array().unwrap().iter().map(|s| s["address"].as_str().unwrap().to_string()).collect();
    for r in &rows {
        // RS(6,3): the best server of a group holds at least a sixth of it.
        assert!(addresses.iter().any(|a| r["server"] == a.as_str()), "{r}");
        assert!(r["local_fraction"].as_f64().unwrap() >= 1.0 / 6.0 - 1e-9, "{r}");
    }
    let bytes: u64 = rows.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(bytes, 300_000 * (6 + 15 + 1) + 11);
    // By location (a group per server holding most of a file): every file
    // is still in exactly one group.
    let out = up.ok(&["job", "plan", job("{location: {}}").to_str().unwrap(), "--json"]);
    let files: u64 =
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["files"].as_u64().unwrap()).sum();
    assert_eq!(files, 10);
    // Bad manifests are refused naming what is wrong.
    let err = up.fails(&["job", "plan", job("{directory: {}, bytes: 100}").to_str().unwrap()]);
    assert!(err.contains("spec.grouping must set exactly one of"), "{err}");
    let err = up.fails(&["job", "plan", job("{glob: [{group: t, pattern: 'a/**'}]}").to_str().unwrap()]);
    assert!(err.contains("match no pattern of grouping.glob"), "{err}");
    let fileset = std::fs::read_to_string(job("{bytes: 100}")).unwrap().replace("kind: Job", "kind: Fileset");
    std::fs::write(src.path().join("nojob.yaml"), fileset).unwrap();
    let err = up.fails(&["job", "plan", src.path().join("nojob.yaml").to_str().unwrap()]);
    assert!(err.contains("nojob.yaml: not a Job") && err.contains("Fileset"), "{err}");
}

/// `tessera job run`: every group's task a local process over its staged
/// files, the output version holding exactly one result per group and
/// their concatenation; a task that keeps failing fails the job naming its
/// group and attempt, and publishes nothing.
#[test]
fn a_job_run_publishes_one_result_per_group() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &[]);
    let src = tempfile::tempdir().unwrap();
    let mut want = std::collections::BTreeMap::new();
    for (dir, files) in [("a", 3), ("b", 2), ("c", 1)] {
        std::fs::create_dir(src.path().join(dir)).unwrap();
        for i in 0..files {
            let data = tessera_cli::bench::read_tail::pattern(200_000 * (i + 1), i as u64 + 7);
            let path = format!("{dir}/f{i}");
            want.insert(path.clone(), hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)));
            std::fs::write(src.path().join(&path), data).unwrap();
        }
    }
    let tree = tempfile::tempdir().unwrap();
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "corpus"]);
    let job = |name: &str, script: &str, backoff: u32| {
        let path = tree.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: tessera.dev/v1alpha1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  input: {{fileset: corpus}}\n  grouping: {{directory: {{depth: 1}}}}\n  backoffLimit: {backoff}\n  task: {{image: busybox, command: [sh, -c, '{script}']}}\n  output: {{fileset: sums, concatenate: {{from: sums, to: all.sums}}}}\n"
            ),
        )
        .unwrap();
        path
    };
    let script = r#"cd "$TESSERA_INPUT" && sha256sum $(cat "$TESSERA_GROUP_FILES") > "$TESSERA_OUTPUT/sums""#;
    let out = up.ok(&["job", "run", job("hash", script, 1).to_str().unwrap(), "--json"]);
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["groups"], 3, "{summary}");
    assert_eq!(summary["output"], "sums@1", "{summary}");
    assert_eq!(summary["input"], "corpus@1", "{summary}");
    // One result per group, each listing exactly its files, by content.
    for dir in ["a", "b", "c"] {
        let sums = up.ok(&["cat", &format!("sums@1/{dir}/sums")]);
        let got: Vec<(String, String)> = sums
            .lines()
            .map(|l| {
                let (h, p) = l.split_once("  ").unwrap();
                (p.to_string(), h.to_string())
            })
            .collect();
        let expected: Vec<(String, String)> = want
            .iter()
            .filter(|(p, _)| p.starts_with(&format!("{dir}/")))
            .map(|(p, h)| (p.clone(), h.clone()))
            .collect();
        assert_eq!(got, expected, "group {dir}");
    }
    let all = up.ok(&["cat", "sums@1/all.sums"]);
    assert_eq!(all.lines().count(), want.len(), "{all}");
    // A scratch dir holding an earlier run's files is refused before
    // anything runs.
    let used = tree.path().to_str().unwrap();
    let err = up.fails(&["job", "run", job("again", script, 1).to_str().unwrap(), "--scratch", used]);
    assert!(err.contains("--scratch") && err.contains("not empty"), "{err}");
    // A task that always fails: the job fails naming the group and its last
    // attempt, and no version is published.
    let err = up.fails(&["job", "run", job("broken", "echo no luck >&2; exit 3", 1).to_str().unwrap()]);
    assert!(err.contains("failed (attempt 2, past backoffLimit 1)") && err.contains("no luck"), "{err}");
    let err = up.fails(&["cat", "sums@2/all.sums"]);
    assert!(err.contains("has no version 2"), "{err}");
    assert_eq!(up.ok(&["cat", "sums@1/all.sums"]), all);
}
