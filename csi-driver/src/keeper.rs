//! The keeper: a small process that holds every FUSE connection's
//! `/dev/fuse` file so mounts outlive the node plugin.
//!
//! The kernel keeps a FUSE connection (and so every mount and bind mount of
//! it, and every open file on it) alive while any process holds its
//! `/dev/fuse` file. The node plugin deposits each new connection here with
//! what a successor needs to serve it (which version, the INIT it
//! negotiated). When the plugin is killed, applications wait; the next
//! plugin lists what the keeper holds, takes the files back, asks the
//! kernel to resend what was in flight, and serves on.
//!
//! The keeper runs as its own DaemonSet (updated only on delete) so a
//! rollout of the plugin never takes it down. Its code is kept small and
//! its protocol stable: one JSON message per SOCK_SEQPACKET packet, with
//! the file passed as SCM_RIGHTS. It never reads or writes the files.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketType,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Largest message (metadata is small; this bounds a bad client).
const MAX_MESSAGE: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("keeper socket {path}: {errno}")]
    Socket { path: String, errno: Errno },
    #[error("talking to the keeper: {0}")]
    Io(#[from] Errno),
    #[error("the keeper sent a bad message: {0}")]
    Protocol(String),
    #[error("the keeper refused: {0}")]
    Refused(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    /// Hold the attached file under `id`, replacing any held before.
    Deposit { id: String, meta: serde_json::Value },
    /// Close the file held under `id` (its filesystem was unmounted).
    Withdraw { id: String },
    /// Send back every held file, one message each, then `end`.
    List,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
enum Response {
    Ok,
    Error {
        message: String,
    },
    /// One held file (attached).
    Held {
        id: String,
        meta: serde_json::Value,
    },
    End,
}

/// A connection file the keeper holds.
#[derive(Debug)]
pub struct Held {
    pub id: String,
    pub meta: serde_json::Value,
    pub fd: OwnedFd,
}

fn send(sock: impl AsFd, msg: &impl Serialize, fd: Option<&OwnedFd>) -> Result<(), KeeperError> {
    let body = serde_json::to_vec(msg).map_err(|e| KeeperError::Protocol(e.to_string()))?;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(sock, &[IoSlice::new(&body)], &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// One message and the file attached to it, if any. `None` at end of stream.
fn recv<T: for<'de> Deserialize<'de>>(sock: impl AsFd) -> Result<Option<(T, Option<OwnedFd>)>, KeeperError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = rustix::net::recvmsg(sock, &mut [IoSliceMut::new(&mut buf)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fd = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            // One file per message; any extra are closed as they drop.
            fd = fds.into_iter().next();
        }
    }
    if r.bytes == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..r.bytes]).map_err(|e| KeeperError::Protocol(e.to_string()))?;
    Ok(Some((msg, fd)))
}

/// Serves the keeper on `socket` until the process ends.
pub fn run(socket: &Path) -> Result<(), KeeperError> {
    let path = socket.display().to_string();
    let err = |errno| KeeperError::Socket { path: path.clone(), errno };
    if let Some(dir) = socket.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(socket);
    let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).map_err(err)?;
    rustix::net::bind(&listener, &SocketAddrUnix::new(socket).map_err(err)?).map_err(err)?;
    // Only root may hand over (or take) mounts.
    let _ = rustix::fs::chmod(socket, rustix::fs::Mode::from_raw_mode(0o600));
    rustix::net::listen(&listener, 16).map_err(err)?;
    info!(socket = %path, "keeper ready");
    let held: Arc<Mutex<BTreeMap<String, (serde_json::Value, OwnedFd)>>> = Arc::default();
    loop {
        let conn = match rustix::net::accept(&listener) {
            Ok(c) => c,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(err(e)),
        };
        let held = held.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve_client(&conn, &held) {
                warn!(error = %e, "keeper client");
            }
        });
    }
}

fn serve_client(
    conn: &OwnedFd,
    held: &Mutex<BTreeMap<String, (serde_json::Value, OwnedFd)>>,
) -> Result<(), KeeperError> {
    while let Some((req, fd)) = recv::<Request>(conn)? {
        match req {
            Request::Deposit { id, meta } => {
                let Some(fd) = fd else {
                    send(conn, &Response::Error { message: "deposit without a file".into() }, None)?;
                    continue;
                };
                info!(%id, "holding a fuse connection");
                held.lock().unwrap().insert(id, (meta, fd));
                send(conn, &Response::Ok, None)?;
            }
            Request::Withdraw { id } => {
                if held.lock().unwrap().remove(&id).is_some() {
                    info!(%id, "released a fuse connection");
                }
                send(conn, &Response::Ok, None)?;
            }
            Request::List => {
                let list: Vec<(String, serde_json::Value, OwnedFd)> = {
                    let h = held.lock().unwrap();
                    h.iter()
                        .filter_map(|(id, (meta, fd))| Some((id.clone(), meta.clone(), fd.try_clone().ok()?)))
                        .collect()
                };
                for (id, meta, fd) in list {
                    send(conn, &Response::Held { id, meta }, Some(&fd))?;
                }
                send(conn, &Response::End, None)?;
            }
        }
    }
    Ok(())
}

/// The node plugin's side.
#[derive(Debug, Clone)]
pub struct KeeperClient {
    socket: std::path::PathBuf,
}

impl KeeperClient {
    pub fn new(socket: &Path) -> Self {
        Self { socket: socket.to_path_buf() }
    }

    fn connect(&self) -> Result<OwnedFd, KeeperError> {
        let path = self.socket.display().to_string();
        let err = |errno| KeeperError::Socket { path: path.clone(), errno };
        let sock = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).map_err(err)?;
        rustix::net::connect(&sock, &SocketAddrUnix::new(&self.socket).map_err(err)?).map_err(err)?;
        Ok(sock)
    }

    fn call(&self, req: &Request, fd: Option<&OwnedFd>) -> Result<(), KeeperError> {
        let sock = self.connect()?;
        send(&sock, req, fd)?;
        match recv::<Response>(&sock)? {
            Some((Response::Ok, _)) => Ok(()),
            Some((Response::Error { message }, _)) => Err(KeeperError::Refused(message)),
            other => Err(KeeperError::Protocol(format!("unexpected answer {:?}", other.map(|o| o.0)))),
        }
    }

    /// Hands the keeper a copy of `fd` to hold under `id`. Returns once it
    /// holds it.
    pub fn deposit(&self, id: &str, meta: &impl Serialize, fd: &impl AsFd) -> Result<(), KeeperError> {
        let meta = serde_json::to_value(meta).map_err(|e| KeeperError::Protocol(e.to_string()))?;
        let copy = fd.as_fd().try_clone_to_owned().map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        self.call(&Request::Deposit { id: id.to_string(), meta }, Some(&copy))
    }

    pub fn withdraw(&self, id: &str) -> Result<(), KeeperError> {
        self.call(&Request::Withdraw { id: id.to_string() }, None)
    }

    /// Every file the keeper holds.
    pub fn list(&self) -> Result<Vec<Held>, KeeperError> {
        let sock = self.connect()?;
        send(&sock, &Request::List, None)?;
        let mut out = Vec::new();
        loop {
            match recv::<Response>(&sock)? {
                Some((Response::Held { id, meta }, Some(fd))) => out.push(Held { id, meta, fd }),
                Some((Response::End, _)) => return Ok(out),
                other => return Err(KeeperError::Protocol(format!("unexpected answer {:?}", other.map(|o| o.0)))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn files_deposited_come_back_as_the_same_open_file() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("keeper.sock");
        let s = socket.clone();
        std::thread::spawn(move || run(&s));
        let client = KeeperClient::new(&socket);
        let connected = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            client.list().is_ok()
        });
        assert!(connected, "the keeper never answered");

        // A file stands in for /dev/fuse: what matters is that the keeper's
        // copy is the same open file (same offset), not a reopen.
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"hello keeper").unwrap();
        f.seek(std::io::SeekFrom::Start(6)).unwrap();
        client.deposit("models@3", &serde_json::json!({"fileset": "models", "version": 3}), &f).unwrap();
        drop(f);
        let held = client.list().unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].id.as_str(), &held[0].meta["version"]), ("models@3", &serde_json::json!(3)));
        let mut back = std::fs::File::from(held.into_iter().next().unwrap().fd);
        let mut rest = String::new();
        back.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "keeper", "the same open file description, offset and all");

        client.withdraw("models@3").unwrap();
        assert!(client.list().unwrap().is_empty());
        client.withdraw("never-held").unwrap();
    }
}
