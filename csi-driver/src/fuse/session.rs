//! Serving one FUSE connection: read requests from the `/dev/fuse` file,
//! answer them from a [`Filesystem`], write the replies back.
//!
//! Tessera runs its own request loop rather than a FUSE library's because a
//! successor process must be able to adopt a live connection: the kernel
//! sends INIT once per connection, so an adopted session starts from the
//! [`InitState`] its predecessor negotiated and, on kernels that can,
//! asks the kernel to resend what the predecessor had read but not answered.
//!
//! One blocking thread reads (a read of `/dev/fuse` blocks in the kernel);
//! each request is then answered on the tokio runtime, so slow backend reads
//! never hold up others. Replies go out with one `writev`, which the kernel
//! treats as one message.

use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;
use rustix::io::Errno;
use tracing::{debug, warn};

use super::abi::{self, AbiError, InHeader, InitState, Op};

/// What a request is answered with.
#[derive(Debug)]
pub enum Reply {
    /// A reply with no body (e.g. RELEASE, FLUSH, UNLINK).
    Empty,
    Data(Vec<u8>),
    /// A body made of several buffers (file data), written without copying.
    Parts(Vec<Bytes>),
}

pub type Result<T> = std::result::Result<T, Errno>;

/// A filesystem served over FUSE. Requests arrive concurrently.
pub trait Filesystem: Send + Sync + 'static {
    /// Answers a request (never INIT, FORGET, BATCH_FORGET or INTERRUPT).
    fn handle<'a>(&'a self, header: &'a InHeader, op: Op<'a>) -> impl Future<Output = Result<Reply>> + Send + 'a;

    /// The kernel dropped `nlookup` references to `nodeid`; no reply.
    fn forget(&self, _nodeid: u64, _nlookup: u64) {}

    /// Answers on the reading thread what needs no waiting (metadata, data
    /// already cached); `None` sends the request to [`Filesystem::handle`].
    /// Saves a thread hop per request.
    fn handle_now(&self, _header: &InHeader, _op: &Op<'_>) -> Option<Result<Reply>> {
        None
    }

    /// Told the connection and what it negotiated before the first request
    /// is answered (to register backing files on it, for one).
    fn attach(&self, _dev: &Arc<OwnedFd>, _init: &InitState) {}
}

/// The answer to GETXATTR or LISTXATTR for `value`: its size when asked
/// with size 0, ERANGE when the caller's buffer is too small.
pub fn xattr_reply(value: &[u8], size: u32) -> Result<Reply> {
    if size == 0 {
        return Ok(Reply::Data(abi::xattr_size_out(value.len() as u32)));
    }
    if (size as usize) < value.len() {
        return Err(Errno::RANGE);
    }
    Ok(Reply::Data(value.to_vec()))
}

/// Threads reading requests from one connection: while one waits in the
/// kernel or answers a cached read, the other takes the next request.
const READERS: usize = 2;

/// A connection to serve.
pub struct Connection {
    pub dev: OwnedFd,
    /// What was negotiated at INIT, if a previous server answered it.
    pub init: Option<InitState>,
    /// Taken over from a previous server (which may have died with
    /// requests read but not answered).
    pub adopted: bool,
}

/// The largest write the kernel may send us.
pub const MAX_WRITE: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("reading /dev/fuse: {0}")]
    Read(Errno),
    #[error("the kernel speaks FUSE {major}.{minor}, older than 7.{min}", min = abi::MIN_MINOR)]
    TooOld { major: u32, minor: u32 },
    #[error("the first request was {0}, not INIT")]
    NotInit(&'static str),
    #[error(transparent)]
    Abi(#[from] AbiError),
}

/// Serves `conn` until the filesystem is unmounted (the kernel answers
/// reads with ENODEV). Blocks the calling thread; run it on its own thread.
/// `on_init` is told what is negotiated before the kernel is answered, so
/// it can be kept for a successor; `on_ready` runs once the kernel has
/// taken the answer (its first request has arrived), when settings the
/// kernel derives from INIT (such as readahead) may be changed.
pub fn serve<F: Filesystem>(
    conn: Connection,
    fs: Arc<F>,
    rt: tokio::runtime::Handle,
    on_init: impl FnOnce(&InitState),
    on_ready: impl FnOnce() + Send,
) -> std::result::Result<(), SessionError> {
    let dev = Arc::new(conn.dev);
    if conn.adopted {
        // Requests the previous server had read are lost unless the kernel
        // puts them back on the queue (Linux 6.9+; the resent ones carry
        // the same unique id, so answering them is answering the originals).
        if let Err(e) = rustix::io::write(&*dev, &abi::notify_resend()) {
            warn!(error = %e, "the kernel cannot resend requests; any the previous server had read stay unanswered");
        }
    }
    let init = match conn.init {
        Some(init) => {
            on_init(&init);
            init
        }
        None => handshake(&dev, on_init)?,
    };
    fs.attach(&dev, &init);
    let ready = std::sync::Mutex::new(Some(on_ready));
    std::thread::scope(|scope| {
        let extra: Vec<_> =
            (1..READERS).map(|_| scope.spawn(|| read_loop(&dev, &init, &*fs, &fs, &rt, &ready))).collect();
        let first = read_loop(&dev, &init, &*fs, &fs, &rt, &ready);
        for t in extra {
            let _ = t.join();
        }
        first
    })
}

/// Reads and answers requests until the connection ends.
fn read_loop<F: Filesystem, R: FnOnce() + Send>(
    dev: &Arc<OwnedFd>,
    init: &InitState,
    fs_ref: &F,
    fs: &Arc<F>,
    rt: &tokio::runtime::Handle,
    ready: &std::sync::Mutex<Option<R>>,
) -> std::result::Result<(), SessionError> {
    // Filesystems may start background work from handle_now.
    let _runtime = rt.enter();
    let setxattr_ext = false;
    let mut buf = vec![0u8; init.read_buffer_len()];
    loop {
        let n = match rustix::io::read(&**dev, &mut buf) {
            Ok(n) => n,
            // The request was interrupted before we read it: next.
            Err(Errno::NOENT) | Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            // Unmounted (or the connection was aborted).
            Err(Errno::NODEV) => {
                debug!("fuse connection ended");
                return Ok(());
            }
            Err(e) => return Err(SessionError::Read(e)),
        };
        if let Some(f) = ready.lock().unwrap().take() {
            f();
        }
        let (header, op) = match abi::parse(&buf[..n], setxattr_ext) {
            Ok(parsed) => parsed,
            Err(e) => {
                warn!(error = %e, "malformed fuse request");
                if n >= abi::IN_HEADER_LEN {
                    let unique = u64::from_ne_bytes(buf[8..16].try_into().expect("8 bytes"));
                    reply(&**dev, unique, Err(Errno::INVAL));
                }
                continue;
            }
        };
        match op {
            Op::Forget { nlookup } => fs_ref.forget(header.nodeid, nlookup),
            Op::BatchForget { forgets } => forgets.into_iter().for_each(|(n, c)| fs_ref.forget(n, c)),
            // Requests finish quickly or not at all (a hung chunkserver is
            // hedged around), so interrupts are not tracked.
            Op::Interrupt { .. } => {}
            // Resent after a takeover: the same answer as the first time.
            Op::Init { .. } => reply(&**dev, header.unique, Ok(Reply::Data(init.reply()))),
            Op::Destroy => {
                reply(&**dev, header.unique, Ok(Reply::Empty));
                return Ok(());
            }
            Op::Unknown { .. } => reply(&**dev, header.unique, Err(Errno::NOSYS)),
            op => {
                if let Some(result) = fs_ref.handle_now(&header, &op) {
                    reply(&**dev, header.unique, result);
                    continue;
                }
                drop(op);
                let request = buf[..n].to_vec();
                let (fs, dev) = (fs.clone(), dev.clone());
                rt.spawn(async move {
                    let (header, op) = abi::parse(&request, setxattr_ext).expect("parsed before");
                    let result = fs.handle(&header, op).await;
                    reply(&*dev, header.unique, result);
                });
            }
        }
    }
}

/// Reads the kernel's INIT and answers it.
fn handshake(dev: &OwnedFd, on_init: impl FnOnce(&InitState)) -> std::result::Result<InitState, SessionError> {
    // INIT is small; the buffer must still be as large as any request.
    let mut buf = vec![0u8; (abi::IN_HEADER_LEN + 40 + MAX_WRITE as usize).max(8192) + 4096];
    let n = loop {
        match rustix::io::read(dev, &mut buf) {
            Ok(n) => break n,
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            Err(e) => return Err(SessionError::Read(e)),
        }
    };
    let (header, op) = abi::parse(&buf[..n], false)?;
    let Op::Init { major, minor, max_readahead, flags } = op else {
        return Err(SessionError::NotInit(abi::opcode_name(header.opcode)));
    };
    let Some(init) = InitState::negotiate(major, minor, max_readahead, flags, MAX_WRITE) else {
        reply(dev, header.unique, Err(Errno::PROTO));
        return Err(SessionError::TooOld { major, minor });
    };
    if !InitState::kernel_resends(flags) {
        debug!("this kernel cannot resend requests after a takeover (Linux 6.9+ can)");
    }
    // Kept before the kernel hears it: a successor must never meet a
    // connection whose INIT was answered but not recorded.
    on_init(&init);
    reply(dev, header.unique, Ok(Reply::Data(init.reply())));
    debug!(minor = init.minor, flags = format!("{:#x}", init.flags), "fuse connection initialised");
    Ok(init)
}

/// Writes one reply. A reply the kernel no longer wants (the request was
/// interrupted, or the connection is gone) is dropped.
fn reply(dev: &impl AsFd, unique: u64, result: Result<Reply>) {
    let written = match result {
        Err(e) => rustix::io::write(dev, &abi::out_header(abi::OUT_HEADER_LEN, -e.raw_os_error(), unique)),
        Ok(Reply::Empty) => rustix::io::write(dev, &abi::out_header(abi::OUT_HEADER_LEN, 0, unique)),
        Ok(Reply::Data(body)) => {
            let h = abi::out_header(abi::OUT_HEADER_LEN + body.len(), 0, unique);
            rustix::io::writev(dev, &[IoSlice::new(&h), IoSlice::new(&body)])
        }
        Ok(Reply::Parts(parts)) if parts.len() > 256 => {
            // Beyond what one writev takes (IOV_MAX): one buffer.
            let body: Vec<u8> = parts.concat();
            let h = abi::out_header(abi::OUT_HEADER_LEN + body.len(), 0, unique);
            rustix::io::writev(dev, &[IoSlice::new(&h), IoSlice::new(&body)])
        }
        Ok(Reply::Parts(parts)) => {
            let len: usize = parts.iter().map(|p| p.len()).sum();
            let h = abi::out_header(abi::OUT_HEADER_LEN + len, 0, unique);
            let mut slices = Vec::with_capacity(parts.len() + 1);
            slices.push(IoSlice::new(&h));
            slices.extend(parts.iter().map(|p| IoSlice::new(p)));
            rustix::io::writev(dev, &slices)
        }
    };
    match written {
        Ok(_) | Err(Errno::NOENT) | Err(Errno::NODEV) => {}
        Err(e) => warn!(error = %e, unique, "writing a fuse reply failed"),
    }
}
