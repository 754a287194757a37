//! No silent loss, end to end on `tessera local up`: corrupt stripes are
//! quarantined and rebuilt (found by a read or by the scrubber), writes go on
//! with a server down, and the master's status tells the truth.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// One file that fills one data item of RS(6,3) at 256 KiB units.
fn one_item_tree(seed: u8) -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..1_200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ seed).collect();
    std::fs::write(src.path().join("weights.bin"), data).unwrap();
    src
}

/// The item with the largest stripes (the data item, not the manifest's).
fn data_item(up: &LocalUp) -> String {
    let files = up.stripe_files();
    files
        .iter()
        .max_by_key(|(_, _, _, p)| std::fs::metadata(p).unwrap().len())
        .map(|(_, item, _, _)| item.clone())
        .unwrap()
}

/// Flips one byte in the data area of a stripe file (bit rot).
fn rot(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x10;
    std::fs::write(path, &bytes).unwrap();
}

/// Whether a process has exited (a zombie nobody reaped counts as exited).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

fn fileset_counts(up: &LocalUp, name: &str) -> (u64, u64, u64) {
    let f = up.fileset_status(name);
    (f["corrupt_stripes_found"].as_u64().unwrap_or(0), f["corrupt_stripes_rebuilt"].as_u64().unwrap_or(0), {
        f["degraded"].as_u64().unwrap_or(u64::MAX)
    })
}

#[test]
fn a_corrupt_stripe_read_once_is_rebuilt_before_m_more_servers_go() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &["--heartbeat-timeout=2s"]);
    let src = one_item_tree(1);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "rot", "--unit", "256KiB"]);
    let item = data_item(&up);
    let holder = |idx: u16| {
        up.stripe_files().into_iter().find(|(_, i, x, _)| *i == item && *x == idx).map(|(s, _, _, p)| (s, p)).unwrap()
    };
    // Bit rot in data stripe 0, which every normal read of the file needs.
    let (victim, path) = holder(0);
    rot(&path);

    // One read: exact (rebuilt from parity), and the corruption is acted on.
    let got = up.ok_bytes(&["cat", "rot/weights.bin", "--mode", "normal"]);
    assert_eq!(got, std::fs::read(src.path().join("weights.bin")).unwrap());
    wait_for("the corrupt stripe to be rebuilt", Duration::from_secs(30), || fileset_counts(&up, "rot") == (1, 1, 0));
    let quarantined = std::fs::read_dir(up.data_dir().join(&victim).join("quarantine")).unwrap().count();
    assert_eq!(quarantined, 1, "the corrupt file is kept for inspection");
    let log = std::fs::read_to_string(up.data_dir().join(format!("{victim}.log"))).unwrap();
    assert!(log.contains("quarantin"), "{log}");

    // Now the other m holders go: RS(6,3) promised to survive that.
    let (rebuilt_on, _) = holder(0);
    let mut others: Vec<String> = up
        .stripe_files()
        .into_iter()
        .filter(|(s, i, _, _)| *i == item && *s != rebuilt_on)
        .map(|(s, _, _, _)| s)
        .collect();
    others.sort();
    others.dedup();
    for s in others.iter().take(3) {
        up.ok(&["fault", "stop", s]);
    }
    let dst = tempfile::tempdir().unwrap();
    let copy = dst.path().join("c");
    up.ok(&["get", "rot", copy.to_str().unwrap(), "--mode", "normal"]);
    assert_eq!(
        std::fs::read(copy.join("weights.bin")).unwrap(),
        std::fs::read(src.path().join("weights.bin")).unwrap()
    );
}

#[test]
fn the_scrubber_finds_corruption_nobody_reads_and_it_is_rebuilt() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start_with(
        tempfile::tempdir().unwrap(),
        9,
        &["--heartbeat-timeout=2s"],
        &["--scrub-bandwidth=64MiB/s", "--scrub-period=1s"],
    );
    let src = one_item_tree(2);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "cold", "--unit", "256KiB"]);
    let item = data_item(&up);
    // A parity stripe: no normal read ever touches it, only the scrubber.
    let (victim, path) =
        up.stripe_files().into_iter().find(|(_, i, x, _)| *i == item && *x == 8).map(|(s, _, _, p)| (s, p)).unwrap();
    rot(&path);
    wait_for("the scrubber to find it and the master to rebuild it", Duration::from_secs(60), || {
        fileset_counts(&up, "cold") == (1, 1, 0)
    });
    let log = std::fs::read_to_string(up.data_dir().join(format!("{victim}.log"))).unwrap();
    let line = log.lines().find(|l| l.contains("quarantining the stripe")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("found_by=scrub"), "{line}");
    let st = up.fileset_status("cold");
    let by = st["items_by_redundancy"].as_array().unwrap();
    assert_eq!(by.iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), by[3].as_u64().unwrap(), "{st}");
    let dst = tempfile::tempdir().unwrap();
    let copy = dst.path().join("c");
    up.ok(&["get", "cold", copy.to_str().unwrap(), "--mode", "normal"]);
    assert_eq!(describe(&copy), describe(src.path()));
}

#[test]
fn a_block_damaged_in_transit_is_reported_verified_and_nothing_is_thrown_away() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &["--heartbeat-timeout=2s"]);
    let src = one_item_tree(3);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "wire", "--unit", "256KiB"]);
    let item = data_item(&up);
    let (server, _) =
        up.stripe_files().into_iter().find(|(_, i, x, _)| *i == item && *x == 0).map(|(s, _, _, p)| (s, p)).unwrap();
    // Every block it sends is flipped after its own disk check passed.
    up.ok(&["fault", "inject", "--server", &server, "--corrupt-rate", "1"]);
    let got = up.ok_bytes(&["cat", "wire/weights.bin", "--mode", "normal"]);
    assert_eq!(got, std::fs::read(src.path().join("weights.bin")).unwrap());
    // The reader told the master, which had the server verify its copy: intact.
    wait_for("the report and the verify", Duration::from_secs(20), || {
        let log = std::fs::read_to_string(up.data_dir().join("master.log")).unwrap_or_default();
        up.status()["corrupt_reports"].as_u64() >= Some(1) && log.contains("verified intact")
    });
    let st = up.status();
    assert_eq!(st["corrupt_stripes_found"], 0, "nothing quarantined on a reader's word: {st}");
    assert_eq!(up.fileset_status("wire")["degraded"], 0, "{st}");
    assert!(up.stripe_files().iter().any(|(s, i, x, _)| *s == server && *i == item && *x == 0));
}

#[test]
fn with_one_of_nine_servers_down_a_put_succeeds_degraded_and_is_repaired() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &["--heartbeat-timeout=2s"]);
    up.ok(&["fault", "stop", "cs4"]);
    wait_for("cs4 to be given up on", Duration::from_secs(20), || {
        up.status()["servers"].as_array().unwrap().iter().any(|s| s["id"] == "cs4" && s["live"] == false)
    });
    let src = tempfile::tempdir().unwrap();
    mixed_tree(src.path(), 40, 9);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "deg", "--unit", "256KiB"]);
    let st = up.fileset_status("deg");
    assert!(st["degraded"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["degraded_writes"], st["items"], "every item was written with eight stripes: {st}");
    assert_eq!(st["unrecoverable"], 0);
    // Readable right away.
    let dst = tempfile::tempdir().unwrap();
    up.ok(&["get", "deg", dst.path().join("a").to_str().unwrap(), "--mode", "normal"]);
    assert_eq!(describe(&dst.path().join("a")), describe(src.path()));

    // The server returns: the missing stripes are rebuilt (z1 has room on it only).
    up.ok(&["fault", "start", "cs4"]);
    wait_for("the degraded items to be repaired", Duration::from_secs(60), || {
        up.fileset_status("deg")["degraded"] == 0
    });
    let st = up.fileset_status("deg");
    assert_eq!(st["placement_violations"], 0, "{st}");
    let cs4 = up.status()["servers"].as_array().unwrap().iter().find(|s| s["id"] == "cs4").cloned().unwrap();
    assert!(cs4["stripes"].as_u64().unwrap() > 0, "{cs4}");
    up.ok(&["fault", "stop", "zone:z0"]);
    up.ok(&["get", "deg", dst.path().join("b").to_str().unwrap()]);
    assert_eq!(describe(&dst.path().join("b")), describe(src.path()));
}

#[test]
fn frozen_processes_meet_deadlines_with_clear_messages() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &["--heartbeat-timeout=2s"]);
    let src = tempfile::tempdir().unwrap();
    mixed_tree(src.path(), 40, 3);

    // A chunkserver frozen mid-life: the put still finishes, degraded,
    // within a few write deadlines (10 s each), not the freeze's length.
    let cs = up.pid("cs2");
    signal(cs, "STOP");
    let t = Instant::now();
    let out = up.run(&["put", src.path().to_str().unwrap(), "--fileset", "frozen", "--unit", "256KiB"]);
    let took = t.elapsed();
    signal(cs, "CONT");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(took < Duration::from_secs(45), "the put took {took:?}");

    // A frozen master: each command ends at its deadline, naming the master.
    let master = up.pid("master");
    signal(master, "STOP");
    for cmd in [
        &["versions", "frozen", "--master-timeout", "2s"][..],
        &["status", "--master-timeout", "2s"],
        &["ls", "--master-timeout", "2s"],
    ] {
        let t = Instant::now();
        let out = up.run(cmd);
        let took = t.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd:?}");
        assert!(took < Duration::from_secs(6), "{cmd:?} took {took:?}");
        assert!(err.contains("the master at 127.0.0.1:") && err.contains("did not answer within 2s"), "{cmd:?}: {err}");
    }
    signal(master, "CONT");
    up.ok(&["versions", "frozen"]);
}

#[test]
fn right_after_a_master_restart_status_says_it_is_relearning() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &["--heartbeat-timeout=3s"]);
    let src = tempfile::tempdir().unwrap();
    mixed_tree(src.path(), 30, 4);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "r", "--unit", "256KiB"]);
    up.ok(&["fault", "stop", "master"]);
    up.ok(&["fault", "start", "master"]);
    let mut saw_relearning = false;
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < Duration::from_secs(30), "the master did not come back and settle");
        let st = up.status();
        if st.is_null() {
            std::thread::sleep(Duration::from_millis(50));
            continue; // the master is still starting
        }
        let relearning = st["relearning"].as_bool().unwrap();
        let f = st["filesets"].as_array().unwrap().iter().find(|f| f["name"] == "r").cloned().unwrap();
        if relearning {
            saw_relearning = true;
            assert!(f["unrecoverable"].is_null() && f["degraded"].is_null(), "not known yet: {f}");
            // The text says the same (unless the window closed in between).
            let text = up.ok(&["status"]);
            assert!(!text.contains("relearning") || !text.contains("unrecoverable"), "{text}");
        } else {
            // Past the window every server has reported: the truth.
            assert_eq!(f["unrecoverable"], 0, "{st}");
            assert_eq!(f["degraded"], 0, "{st}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "still relearning: {st}");
    }
    assert!(saw_relearning, "the first answers after a restart come inside the window");
}

#[test]
fn local_mode_survives_its_own_faults_and_refuses_bad_flags() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = LocalUp::start(9, &["--heartbeat-timeout=2s"]);
    // A chunkserver killed from outside: local.json and status say so, and
    // `fault start` really starts it.
    let pid = up.pid("cs5");
    signal(pid, "KILL");
    wait_for("local up to notice", Duration::from_secs(10), || {
        up.local_state()["servers"].as_array().unwrap().iter().any(|s| s["id"] == "cs5" && s["running"] == false)
    });
    let st = up.local_state();
    let cs5 = st["servers"].as_array().unwrap().iter().find(|s| s["id"] == "cs5").unwrap();
    assert!(cs5["exited"].as_str().unwrap_or_default().contains("signal: 9"), "how it ended: {cs5}");
    let text = up.ok(&["status"]);
    assert!(text.lines().any(|l| l.starts_with("cs5") && l.contains("stopped")), "{text}");
    let said = up.ok(&["fault", "start", "cs5"]);
    assert!(said.contains("started cs5"), "{said}");
    let fresh = up.pid("cs5");
    assert_ne!(fresh, pid);
    wait_for("cs5 to serve again", Duration::from_secs(20), || {
        up.status()["servers"].as_array().unwrap().iter().any(|s| s["id"] == "cs5" && s["live"] == true)
    });

    // A closed stdout is no error and no panic.
    let src = tempfile::tempdir().unwrap();
    mixed_tree(src.path(), 200, 8);
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "many"]);
    let out = std::process::Command::new("bash")
        .args(["-c", &format!("{TESSERA} ls -R many | head -1; echo \"rc=${{PIPESTATUS[0]}}\"")])
        .env("TESSERA_HOME", up.home.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.ends_with("rc=0\n") && stdout.lines().count() == 2, "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");

    // Zero or out-of-range layout flags are refused, naming the flag.
    for (flag, value) in [("--k", "0"), ("--m", "0"), ("--unit", "0"), ("--keep", "0"), ("--k", "300")] {
        let err = up.fails(&["put", src.path().to_str().unwrap(), "--fileset", "bad", flag, value]);
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
    let err = up.fails(&["put", src.path().to_str().unwrap(), "--fileset", "bad", "--min-write-stripes", "2"]);
    assert!(err.contains("min_write_stripes") && err.contains("6..=9"), "{err}");
    // Errors read as sentences, without the raw gRPC status.
    let err = up.fails(&["versions", "nosuch"]);
    assert!(err.contains("fileset \"nosuch\" not found"), "{err}");
    assert!(!err.contains("code:") && !err.contains("Some requested entity"), "{err}");

    // local up killed with SIGKILL: its children go with it, and a new one
    // on the same data dir starts.
    let children: Vec<u32> = (0..9).map(|i| up.pid(&format!("cs{i}"))).chain([up.pid("master")]).collect();
    let home = {
        let mut up = up;
        up.proc.kill();
        wait_for("the children to die with it", Duration::from_secs(10), || children.iter().all(|p| gone(*p)));
        std::mem::replace(&mut up.home, tempfile::tempdir().unwrap())
    };
    // Had a child outlived it (say, a chunkserver binary without the
    // parent-death request), the next local up stops it: a stand-in whose
    // command line names the data dir, recorded as cs0 in local.json.
    let data_dir = home.path().join("local");
    let mut straggler =
        std::process::Command::new("sh").args(["-c", "sleep 300", data_dir.to_str().unwrap()]).spawn().unwrap();
    let path = data_dir.join("local.json");
    let mut st: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    st["servers"][0]["pid"] = straggler.id().into();
    std::fs::write(&path, serde_json::to_vec(&st).unwrap()).unwrap();
    let again = LocalUp::start_in(home, 9, &[]);
    assert!(again.ok(&["ls"]).contains("many"));
    assert!(straggler.try_wait().unwrap().is_some(), "the leftover process was stopped");
}
