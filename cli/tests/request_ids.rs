//! One request id follows a read across processes: the client's log line
//! for a file read names the fileset, version and item with the read's id,
//! and every chunkserver that served a stripe of it logs the same id.

mod common;

use common::{LocalUp, SERIAL};

#[test]
fn one_request_id_follows_a_read_across_the_client_and_the_chunkservers() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    let up = LocalUp::start_logging(home, 6, &[], &[], Some("warn,tessera_chunkserver=debug"));
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("notes.txt"), vec![b'x'; 300_000]).unwrap();
    up.ok(&["put", src.path().to_str().unwrap(), "--fileset", "docs", "--k", "4", "--m", "2", "--unit", "64KiB"]);

    let out = up.cmd(&["--log", "tessera_client=debug", "cat", "docs/notes.txt"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), 300_000);
    let client = String::from_utf8_lossy(&out.stderr);
    let line = client
        .lines()
        .find(|l| l.contains("item read") && l.contains("fileset=docs") && l.contains("path=\"notes.txt\""))
        .unwrap_or_else(|| panic!("no item read line naming the fileset and path in\n{client}"));
    assert!(line.contains("version=1") && line.contains("item="), "{line}");
    let id = line.split("request=").nth(1).and_then(|r| r.split([' ', '}', ':']).next()).expect("a request id");
    assert_eq!(id.len(), 16, "{line}");

    // The chunkservers' logs: every stripe read of this request names it.
    let needle = format!("request={id}");
    let mut servers = 0;
    for entry in std::fs::read_dir(up.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log")
            && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cs"))
        {
            let log = std::fs::read_to_string(&path).unwrap();
            if log.lines().any(|l| l.contains(&needle) && l.contains("stripe read")) {
                servers += 1;
            }
        }
    }
    assert!(servers >= 4, "k = 4 stripes were read, {servers} chunkservers logged request {id}");
}
