//! The harness the CLI's end-to-end tests share: `tessera local up` as a
//! child process and the `tessera` command run against it, as a user would.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tessera_testkit::{Proc, Signal};

pub const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

/// Clusters are heavy (a dozen processes): one test at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// `tessera local up`, stopped with SIGTERM when dropped (the supervisor
/// stops its processes before it exits); its output in `local-up.log` in
/// its home.
pub struct LocalUp {
    pub proc: Proc,
    pub home: tempfile::TempDir,
}

impl LocalUp {
    pub fn start(servers: usize, master_args: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), servers, master_args)
    }

    pub fn start_in(home: tempfile::TempDir, servers: usize, master_args: &[&str]) -> Self {
        Self::start_with(home, servers, master_args, &[])
    }

    /// With extra arguments for the master and for every chunkserver.
    pub fn start_with(home: tempfile::TempDir, servers: usize, master_args: &[&str], cs_args: &[&str]) -> Self {
        Self::start_logging(home, servers, master_args, cs_args, None)
    }

    /// As [`LocalUp::start_with`], the processes `local up` starts logging
    /// by `filter` (`TESSERA_CHUNKSERVER_LOG`).
    pub fn start_logging(
        home: tempfile::TempDir,
        servers: usize,
        master_args: &[&str],
        cs_args: &[&str],
        filter: Option<&str>,
    ) -> Self {
        let mut args: Vec<String> =
            ["local", "up", "--servers", &servers.to_string(), "--zones", "3"].map(String::from).to_vec();
        args.extend(master_args.iter().map(|a| format!("--master-arg={a}")));
        args.extend(cs_args.iter().map(|a| format!("--chunkserver-arg={a}")));
        let mut env = vec![("TESSERA_HOME", home.path())];
        if let Some(f) = filter {
            env.push(("TESSERA_CHUNKSERVER_LOG", Path::new(f)));
        }
        let log = home.path().join("local-up.log");
        let proc =
            Proc::spawn_logged("local up", Path::new(TESSERA), &args, &env, &log).unwrap().stopped_by(Signal::TERM);
        let mut up = Self { proc, home };
        // Ready when local.json is written and the master answers; a
        // supervisor that exits instead fails the test with its log.
        let state = up.home.path().join("local/local.json");
        let t = Instant::now();
        while !(state.exists() && up.run(&["ls"]).status.success()) {
            up.proc.check().unwrap();
            assert!(t.elapsed() < Duration::from_secs(60), "timed out waiting for the local cluster to start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Every chunkserver registered.
        wait_for("every chunkserver to register", Duration::from_secs(30), || {
            up.status()["servers"].as_array().is_some_and(|s| s.len() == servers)
        });
        up
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(TESSERA);
        c.env("TESSERA_HOME", self.home.path()).env("RUST_BACKTRACE", "0").args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "tessera {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must succeed; returns its stdout as bytes.
    pub fn ok_bytes(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        assert!(out.status.success(), "tessera {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "tessera {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    pub fn fileset_status(&self, name: &str) -> serde_json::Value {
        self.status()["filesets"]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["name"] == name).cloned())
            .unwrap_or_default()
    }

    pub fn stripes(&self) -> u64 {
        self.status()["servers"]
            .as_array()
            .map(|s| s.iter().map(|v| v["stripes"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0)
    }

    /// Stops the cluster as Ctrl-C does (SIGINT) and hands back its home.
    pub fn stop(mut self) -> tempfile::TempDir {
        let exit = self.proc.stop(Signal::INT).unwrap();
        assert!(exit.success(), "local up stopped with {exit}:\n{}", self.proc.log_tail());
        std::mem::replace(&mut self.home, tempfile::tempdir().unwrap())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join("local")
    }

    /// What `local up` wrote to local.json.
    pub fn local_state(&self) -> serde_json::Value {
        std::fs::read(self.data_dir().join("local.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The process id of a chunkserver (`cs3`) or of the master.
    pub fn pid(&self, name: &str) -> u32 {
        let st = self.local_state();
        let pid = if name == "master" {
            st["master_pid"].as_u64()
        } else {
            st["servers"].as_array().and_then(|s| s.iter().find(|s| s["id"] == name)).and_then(|s| s["pid"].as_u64())
        };
        pid.filter(|p| *p != 0).unwrap_or_else(|| panic!("no pid of {name} in {st}")) as u32
    }

    /// Every stored stripe file, as (server, item, index, path).
    pub fn stripe_files(&self) -> Vec<(String, String, u16, PathBuf)> {
        let mut out = Vec::new();
        for cs in std::fs::read_dir(self.data_dir()).unwrap() {
            let cs = cs.unwrap().path();
            let stripes = cs.join("stripes");
            let Ok(shards) = std::fs::read_dir(&stripes) else { continue };
            let server = cs.file_name().unwrap().to_string_lossy().into_owned();
            for shard in shards {
                for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                    let p = f.unwrap().path();
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    let (item, idx) = name.rsplit_once('.').unwrap();
                    out.push((server.clone(), item.to_string(), idx.parse().unwrap(), p));
                }
            }
        }
        out
    }
}

/// Sends `signal` (STOP, CONT, KILL, ...) to a process.
pub fn signal(pid: u32, signal: &str) {
    let st = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(st.success(), "kill -{signal} {pid}");
}

/// Polls `cond` until it holds (an event in another process) or the time is up.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tree of mixed content: thousands of small files, a few large ones,
/// empty files and directories, nested directories and symlinks.
pub fn mixed_tree(root: &Path, small: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..small {
        let dir = root.join(format!("d{}/e{}", i % 17, i % 5));
        std::fs::create_dir_all(&dir).unwrap();
        let len = rng.random_range(0..4096);
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        let p = dir.join(format!("small-{i}.bin"));
        std::fs::write(&p, &data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(if i % 7 == 0 { 0o755 } else { 0o640 })).unwrap();
    }
    std::fs::create_dir_all(root.join("large")).unwrap();
    for (i, len) in [(0, 13 << 20), (1, (7 << 20) + 12345), (2, 1)] {
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        std::fs::write(root.join(format!("large/blob-{i}")), data).unwrap();
    }
    std::fs::create_dir_all(root.join("empty/dir")).unwrap();
    std::fs::write(root.join("empty/file"), b"").unwrap();
    std::os::unix::fs::symlink("../large/blob-2", root.join("d0/link-up")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
}

/// Everything a copy must preserve, per path.
pub fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let desc = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                walk(root, &p, out);
                format!("dir {:o}", m.mode() & 0o7777)
            } else {
                let data = std::fs::read(&p).unwrap();
                format!("file {:o} {} {:x} mtime {}", m.mode() & 0o7777, data.len(), crc(&data), m.mtime())
            };
            out.insert(rel, desc);
        }
    }
    walk(root, root, &mut out);
    out
}

pub fn crc(d: &[u8]) -> u32 {
    tessera_core::checksum::crc32c(d)
}
