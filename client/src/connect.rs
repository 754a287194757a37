//! Connections to chunkservers: one HTTP/2 channel per server, tuned for bulk
//! stripe traffic, plus what this client has learned of the server's speed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hyper_util::rt::TokioIo;
use tessera_core::latency::{Sample, ServerLatency};
use tessera_proto::cs::chunkserver_client::ChunkserverClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::stats::ServerStats;
use crate::{ClientConfig, ClientError};

/// Largest message accepted from a chunkserver.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;
/// Flow-control windows and frame size: a 1 MiB read chunk flows without
/// waiting for window updates, in few frames.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
const MAX_FRAME: u32 = 1 << 20;

/// One chunkserver as this client sees it.
#[derive(Debug)]
pub struct ServerHandle {
    pub addr: String,
    channel: Channel,
    client: ChunkserverClient<Channel>,
    latency: Mutex<ServerLatency>,
    fetches: AtomicU64,
    failures: AtomicU64,
    bytes: AtomicU64,
}

impl ServerHandle {
    pub(crate) fn connect(addr: &str, config: &ClientConfig) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::Address { addr: addr.to_string(), reason };
        let channel = if let Some(path) = addr.strip_prefix("unix://") {
            let path = path.to_string();
            // The URI is a placeholder: the connector ignores it and dials the socket.
            endpoint("http://localhost", config).map_err(|e| bad(e.to_string()))?.connect_with_connector_lazy(
                tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                }),
            )
        } else {
            if addr.contains("://") {
                return Err(bad("expected host:port or unix:///path".into()));
            }
            endpoint(&format!("http://{addr}"), config).map_err(|e| bad(e.to_string()))?.connect_lazy()
        };
        let client = ChunkserverClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Self {
            addr: addr.to_string(),
            channel,
            client,
            latency: Mutex::new(ServerLatency::default()),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// A gRPC client over this server's shared channel.
    pub fn client(&self) -> ChunkserverClient<Channel> {
        self.client.clone()
    }

    /// The raw HTTP/2 channel, for the zero-copy ReadStripe.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(crate) fn record_sample(&self, s: Sample) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        self.latency.lock().unwrap().record(s);
    }

    pub(crate) fn record_failure(&self) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_outcome(&self, late: bool) {
        self.latency.lock().unwrap().record_outcome(Instant::now(), late);
    }

    pub(crate) fn with_latency<T>(&self, f: impl FnOnce(&mut ServerLatency) -> T) -> T {
        f(&mut self.latency.lock().unwrap())
    }

    pub fn stats(&self) -> ServerStats {
        let now = Instant::now();
        let mut l = self.latency.lock().unwrap();
        ServerStats {
            addr: self.addr.clone(),
            fetches: self.fetches.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            bytes_fetched: self.bytes.load(Ordering::Relaxed),
            first_byte_p50: l.first_byte(now, 0.5),
            first_byte_p95: l.first_byte(now, 0.95),
            bandwidth_bytes_per_sec: l.bandwidth(now),
            slow: l.is_slow(now),
        }
    }
}

fn endpoint(uri: &str, config: &ClientConfig) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri.to_string())?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME))
}
