//! Programs under test as processes.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
pub use rustix::process::Signal;
use rustix::process::{Pid, kill_process};

/// How long a process asked to stop may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// A process stopped when dropped (SIGKILL unless [`Proc::stopped_by`] names
/// a gentler signal), with its log for error messages.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    stop_signal: Option<Signal>,
}

impl Proc {
    /// Starts `program` with `args`, its output going to `dir/<name>.log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], dir: &Path) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, program, args, &[], dir)
    }

    /// As [`Proc::spawn`], with environment variables set.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &Path)],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn_logged(name, program, args, env, &dir.join(format!("{name}.log")))
    }

    /// As [`Proc::spawn_with_env`], the output going to `log`.
    pub fn spawn_logged(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &Path)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        Self::start(name, program, args, env, log, Stdio::from(out.try_clone()?), out)
    }

    /// As [`Proc::spawn_logged`], its standard output piped to the caller
    /// (for programs that announce readiness there) and only its standard
    /// error going to `log`.
    pub fn spawn_piped(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &Path)],
        log: &Path,
    ) -> anyhow::Result<(Self, ChildStdout)> {
        let err = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut proc = Self::start(name, program, args, env, log, Stdio::piped(), err)?;
        let out = proc.child.stdout.take().context("piped stdout")?;
        Ok((proc, out))
    }

    fn start(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &Path)],
        log: &Path,
        stdout: Stdio,
        stderr: fs::File,
    ) -> anyhow::Result<Self> {
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self { name: name.to_string(), child, log: log.to_path_buf(), stop_signal: None })
    }

    /// When dropped, it is sent `signal` and given 30 s to exit before
    /// SIGKILL: for supervisors that must stop their own children first.
    pub fn stopped_by(mut self, signal: Signal) -> Self {
        self.stop_signal = Some(signal);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of the log if the process has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}:\n{}", self.name, tail(&self.log));
        }
        Ok(())
    }

    /// Stops it at once (SIGKILL), as a crash or a lost node would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) without waiting for anything.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        // A reaped child's pid may belong to another process by now.
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.child.id() as i32).context("process id")?;
        kill_process(pid, signal).with_context(|| format!("signalling {}", self.name))
    }

    /// Sends `signal` and waits for the process to exit, as a user's Ctrl-C
    /// (SIGINT) or a service manager's SIGTERM would; its exit status. A
    /// process still running after 30 s is killed.
    pub fn stop(&mut self, signal: Signal) -> anyhow::Result<ExitStatus> {
        self.signal(signal)?;
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(signal) = self.stop_signal
            && self.signal(signal).is_ok()
        {
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `f` every 100 ms until it gives a value; panics naming `what`
/// after 90 s. (For states of a cluster that no event announces to the
/// test, such as a status another process writes.)
pub async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
