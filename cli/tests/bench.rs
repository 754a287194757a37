//! `tessera bench read-tail` end to end: real chunkserver processes, the
//! JSON it prints, and its refusal of a bad flag.

use std::process::Command;

fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

#[test]
fn read_tail_reports_how_many_stripes_accelerated_reads_asked_for() {
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
    let out = tessera().args(["bench", "read-tail", "--accelerated-extra", "0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--accelerated-extra"), "{err}");
}
