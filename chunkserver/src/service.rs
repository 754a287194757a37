//! The gRPC face of a chunkserver: maps requests onto the stripe store through
//! admission and fault hooks, and store errors onto precise status codes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tessera_core::ids::{ItemId, StripeId};
use tessera_proto::cs::{self, chunkserver_server::Chunkserver, fault_injection_server::FaultInjection};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument, debug, debug_span, error, info, warn};

use crate::classes::{Admission, RequestClass};
use crate::faults::{Entry, FaultInjector, Faults};
use crate::metrics::{ClassLabels, DirLabels, FaultLabels, FoundLabels, Metrics, OpLabels, RequestLabels};
use crate::quotas::{QuotaConfig, StripeQueues};
use crate::stats::{BusyClock, DEFAULT_WINDOW_SECS, RateWindow};
use crate::store::{StoreError, StripeHeader, StripeStore, WriteStart};

/// Bytes per read response message (rounded down to whole blocks).
pub const READ_CHUNK: usize = 1 << 20;

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::NotFound(_) => Code::NotFound,
            StoreError::Conflict { .. } => Code::AlreadyExists,
            StoreError::WriteInProgress(_) => Code::Aborted,
            StoreError::InvalidHeader { .. } | StoreError::SizeMismatch { .. } | StoreError::WriteChecksum { .. } => {
                Code::InvalidArgument
            }
            StoreError::BadRange { reason, .. } if reason.is_out_of_range() => Code::OutOfRange,
            StoreError::BadRange { .. } => Code::InvalidArgument,
            StoreError::NoSpace { .. } => Code::ResourceExhausted,
            StoreError::Corrupt { .. } => Code::DataLoss,
            StoreError::Io { .. } => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct Shared {
    pub node_id: String,
    pub store: Arc<StripeStore>,
    pub admission: Admission,
    pub stripe_queues: Arc<StripeQueues>,
    pub faults: FaultInjector,
    pub metrics: Metrics,
    pub origin: Instant,
    pub reads: Vec<RateWindow>,
    /// The time each data dir was busy serving reads: the reads with their
    /// checksums (page cache hits included), and what an injected bandwidth
    /// cap stands for.
    pub read_busy: Vec<BusyClock>,
    pub writes: Vec<RateWindow>,
    /// Metric labels of each data dir, built once rather than per request.
    dir_labels: Vec<DirLabels>,
    /// Woken when a stripe is quarantined, so the registrar tells the master
    /// at once rather than at the next heartbeat.
    pub quarantined: Notify,
    /// The scrubber's rate in bytes per second (0: paused), from
    /// `--scrub-bandwidth`; benchmarks change it through FaultInjection.
    pub scrub_rate: watch::Sender<u64>,
    /// Runs the scrubber's reads at the lowest CPU priority.
    scrub_thread: crate::scrub::LowPriority,
}

/// What a whole-stripe verify found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Every block matched; this many bytes were checked.
    Intact(u64),
    /// A block failed: the stripe is quarantined now.
    Quarantined,
    /// It was deleted or quarantined by someone else meanwhile.
    Gone,
}

/// How long a scrub read waits at most for serving reads to pause.
const SCRUB_YIELD: Duration = Duration::from_millis(20);

/// Bytes per read of a stripe with blocks of `block_size`: whole blocks,
/// about [`READ_CHUNK`].
fn chunk_len(block_size: u32) -> u64 {
    let bs = u64::from(block_size);
    ((READ_CHUNK as u64 / bs).max(1)) * bs
}

/// What found a corrupt stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    Read,
    Scrub,
    Verify,
}

impl FoundBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FoundBy::Read => "read",
            FoundBy::Scrub => "scrub",
            FoundBy::Verify => "verify",
        }
    }
}

impl Shared {
    pub fn new(
        node_id: String,
        store: Arc<StripeStore>,
        admission: Admission,
        quotas: QuotaConfig,
        scrub_rate: u64,
    ) -> Self {
        let origin = Instant::now();
        let n = store.dirs().len();
        Self {
            node_id,
            admission,
            stripe_queues: Arc::new(StripeQueues::new(quotas)),
            faults: FaultInjector::default(),
            metrics: Metrics::default(),
            origin,
            reads: (0..n).map(|_| RateWindow::new(origin)).collect(),
            read_busy: (0..n).map(|_| BusyClock::new(origin)).collect(),
            writes: (0..n).map(|_| RateWindow::new(origin)).collect(),
            dir_labels: store.dirs().iter().map(|d| DirLabels { data_dir: d.path.display().to_string() }).collect(),
            store,
            quarantined: Notify::new(),
            scrub_rate: watch::Sender::new(scrub_rate),
            scrub_thread: crate::scrub::LowPriority::new("scrub"),
        }
    }

    /// Takes a stripe with a block failing its checksum out of service:
    /// counts it, moves the file aside and wakes the registrar to tell the
    /// master, which rebuilds it elsewhere. Returns whether this call did it.
    pub async fn quarantine(&self, stripe: StripeId, dir: usize, found_by: FoundBy, error: &StoreError) -> bool {
        self.metrics.checksum_failures.get_or_create(self.dir_label(dir)).inc();
        error!(%stripe, found_by = %found_by.as_str(), %error, "corrupt block on disk; quarantining the stripe");
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.quarantine(&stripe)).await {
            Ok(Ok(true)) => {
                self.metrics.quarantined.get_or_create(&FoundLabels { found_by: found_by.as_str() }).inc();
                self.quarantined.notify_one();
                true
            }
            Ok(Ok(false)) => false,
            Ok(Err(e)) => {
                // Out of the index already, so it is not served and the
                // master hears of it; only the file could not be moved.
                error!(%stripe, error = %e, "could not move a corrupt stripe to quarantine");
                self.quarantined.notify_one();
                true
            }
            Err(e) => {
                error!(%stripe, error = %e, "quarantine task failed");
                false
            }
        }
    }

    fn dir_label(&self, dir: usize) -> &DirLabels {
        &self.dir_labels[dir]
    }

    fn observe(&self, op: &'static str, class: RequestClass, started: Instant, code: Code) {
        self.metrics.requests.get_or_create(&RequestLabels { op, class: class.as_str(), code: code_name(code) }).inc();
        self.metrics.request_seconds.get_or_create(&OpLabels { op }).observe(started.elapsed().as_secs_f64());
    }

    async fn enter(&self) -> Result<(), Status> {
        let f = self.faults.get();
        if f.hang {
            self.metrics.faults_injected.get_or_create(&FaultLabels { kind: "hang" }).inc();
        }
        if !f.latency.is_zero() {
            self.metrics.faults_injected.get_or_create(&FaultLabels { kind: "latency" }).inc();
        }
        match self.faults.on_entry().await {
            Entry::Proceed => Ok(()),
            Entry::Fail => {
                self.metrics.faults_injected.get_or_create(&FaultLabels { kind: "error" }).inc();
                Err(Status::unavailable(format!("injected fault on {}", self.node_id)))
            }
        }
    }

    /// Starts serving a range read: validates it, then streams whole blocks,
    /// each chunk checked against its stored checksums, through a channel the
    /// caller turns into a response body. The producer stops as soon as the
    /// receiver is dropped (the reader cancelled). Unknown stripes and bad
    /// ranges are refused at once, before any stream exists.
    pub fn start_read(
        self: Arc<Self>,
        req: cs::ReadStripeRequest,
        request_id: Option<String>,
    ) -> Result<mpsc::Receiver<Result<cs::ReadStripeResponse, Status>>, Status> {
        let started = Instant::now();
        let stripe = parse_stripe(req.stripe.as_ref(), "stripe")?;
        let class = RequestClass::from_wire(req.class);
        let s = self;
        let (meta, range) = match s.store.resolve(&stripe, req.offset, req.length) {
            Ok(x) => x,
            Err(e) => {
                let st = Status::from(e);
                s.observe("read", class, started, st.code());
                return Err(st);
            }
        };
        let (tx, rx) = mpsc::channel(2);
        let request = request_id.as_deref().unwrap_or("-");
        let span = debug_span!("read_stripe", request = %request, %stripe, offset = range.start, len = range.end - range.start, class = class.as_str());
        tokio::spawn(
            async move {
                let produce = async {
                    let _permit = s.admission.admit(class).await;
                    let turn = s.stripe_queues.enter(stripe, class).await;
                    s.enter().await?;
                    let bs = meta.block_size as u64;
                    let chunk = chunk_len(meta.block_size);
                    let mut off = range.start;
                    while off < range.end {
                        let len = chunk.min(range.end - off);
                        let (shared, dir) = (s.clone(), meta.dir);
                        // Timed and counted in the blocking task, which runs
                        // to its end even when the reader cancels: a device
                        // too slow to ever finish before the reader has
                        // enough elsewhere still shows what it took.
                        let read = tokio::task::spawn_blocking(move || {
                            let busy = shared.read_busy[dir].begin();
                            let read = shared.store.read(&stripe, off, len);
                            match &read {
                                Ok((data, _)) => {
                                    drop(busy);
                                    let (n, now) = (data.len(), Instant::now());
                                    shared.reads[dir].record(now, n as u64);
                                    shared.metrics.read_bytes.get_or_create(shared.dir_label(dir)).inc_by(n as u64);
                                    // An injected cap stands for a device of
                                    // that bandwidth: its time for these bytes
                                    // is counted whole, as a device's read is.
                                    shared.read_busy[dir].add(now, shared.faults.device_time(n));
                                }
                                Err(_) => busy.discard(),
                            }
                            read
                        })
                        .await
                        .map_err(join_error)?;
                        let (data, meta) = match read {
                            Ok(x) => x,
                            Err(e @ StoreError::Corrupt { .. }) => {
                                s.quarantine(stripe, meta.dir, FoundBy::Read, &e).await;
                                return Err(Status::from(e));
                            }
                            Err(e) => return Err(Status::from(e)),
                        };
                        let n = data.len();
                        turn.charge(n as u64);
                        s.faults.pace(n).await;
                        let (data, corrupted) = s.faults.maybe_corrupt(data);
                        if corrupted {
                            s.metrics.faults_injected.get_or_create(&FaultLabels { kind: "corrupt" }).inc();
                        }
                        let first = (off / bs) as usize;
                        let last = ((off + n as u64).div_ceil(bs)) as usize;
                        let msg = cs::ReadStripeResponse {
                            offset: off,
                            data,
                            block_crcs: meta.crcs[first..last].to_vec(),
                            block_size: meta.block_size,
                            stripe_length: meta.length,
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return Err(Status::cancelled("reader went away"));
                        }
                        off += n as u64;
                    }
                    Ok::<(), Status>(())
                };
                let code = tokio::select! {
                    r = produce => match r {
                        Ok(()) => Code::Ok,
                        Err(st) => {
                            let code = st.code();
                            let _ = tx.send(Err(st)).await;
                            code
                        }
                    },
                    // The reader cancelled (a hedge or accelerated read that
                    // finished without us): stop reading at once.
                    _ = tx.closed() => Code::Cancelled,
                };
                s.observe("read", class, started, code);
                debug!(code = ?code, elapsed_us = started.elapsed().as_micros() as u64, "stripe read");
            }
            .instrument(span),
        );
        Ok(rx)
    }

    /// Checks every block of a stripe against its CRC, a chunk at a time in
    /// the repair class (so serving reads go first), each chunk after
    /// `pacer` allows it; a stripe that fails is quarantined. Used by the
    /// scrubber and by VerifyStripe.
    pub(crate) async fn verify_stripe(
        &self,
        stripe: StripeId,
        found_by: FoundBy,
        mut pacer: Option<&mut crate::scrub::Pacer>,
    ) -> Result<Verified, StoreError> {
        let Some(meta) = self.store.get(&stripe) else { return Ok(Verified::Gone) };
        let chunk = chunk_len(meta.block_size);
        let mut off = 0;
        while off < meta.length {
            let len = chunk.min(meta.length - off);
            if let Some(p) = pacer.as_deref_mut() {
                p.take(len).await;
            }
            if found_by == FoundBy::Scrub {
                // Between serving reads, not beside them (a bounded wait:
                // under constant load the scrub still moves).
                self.admission.quiet(RequestClass::Serving, SCRUB_YIELD).await;
            }
            let result = {
                // The repair class's own slots, and no turn in the stripe's
                // queue: a verify reads the device, not what serving reads
                // are after, so it must never make one wait behind it.
                let _permit = self.admission.admit(RequestClass::Repair).await;
                let store = self.store.clone();
                let io_error = |source: std::io::Error| StoreError::Io {
                    op: "verify",
                    path: self.store.dirs()[meta.dir].path.clone(),
                    source,
                };
                if found_by == FoundBy::Scrub {
                    self.scrub_thread.run(move || store.verify(&stripe, off, len)).await.ok_or_else(|| {
                        io_error(std::io::Error::other(
                            "the scrub read did not finish (its thread stopped or it panicked)",
                        ))
                    })?
                } else {
                    tokio::task::spawn_blocking(move || store.verify(&stripe, off, len))
                        .await
                        .map_err(|e| io_error(e.into()))?
                }
            };
            match result {
                Ok(n) if found_by == FoundBy::Scrub => {
                    self.metrics.scrubbed_bytes.inc_by(n);
                }
                Ok(_) => {}
                Err(e @ StoreError::Corrupt { .. }) => {
                    self.quarantine(stripe, meta.dir, found_by, &e).await;
                    return Ok(Verified::Quarantined);
                }
                Err(StoreError::NotFound(_)) => return Ok(Verified::Gone),
                Err(e) => return Err(e),
            }
            off += len;
        }
        Ok(Verified::Intact(meta.length))
    }

    /// Refreshes the gauges before a scrape.
    pub fn refresh_gauges(&self) {
        let now = Instant::now();
        for q in self.admission.queues() {
            let l = ClassLabels { class: q.class.as_str() };
            self.metrics.queued.get_or_create(&l).set(q.queued as i64);
            self.metrics.in_flight.get_or_create(&l).set(q.in_flight as i64);
        }
        for u in self.stripe_queues.usage() {
            let l = ClassLabels { class: u.class.as_str() };
            self.metrics.usage_rate.get_or_create(&l).set(u.bytes_per_sec);
            self.metrics.quota_exceeded.get_or_create(&l).set(u.exceeded as i64);
            self.metrics.quota_bypassed.get_or_create(&l).set(u.bypassed as i64);
        }
        for (class, n) in RequestClass::ALL.iter().zip(self.stripe_queues.waiting_by_class()) {
            self.metrics.stripe_waiting.get_or_create(&ClassLabels { class: class.as_str() }).set(n as i64);
        }
        for (i, (count, bytes)) in self.store.usage().into_iter().enumerate() {
            let l = self.dir_label(i).clone();
            self.metrics.stripes.get_or_create(&l).set(count as i64);
            self.metrics.stored_bytes.get_or_create(&l).set(bytes as i64);
            if let Ok((free, _)) = self.store.dirs()[i].space() {
                self.metrics.free_bytes.get_or_create(&l).set(free as i64);
            }
            self.metrics.read_bandwidth.get_or_create(&l).set(self.reads[i].rate(now, DEFAULT_WINDOW_SECS));
        }
    }
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::InvalidArgument => "invalid_argument",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::ResourceExhausted => "resource_exhausted",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Internal => "internal",
        _ => "other",
    }
}

pub(crate) fn parse_stripe(r: Option<&cs::StripeRef>, field: &str) -> Result<StripeId, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))?;
    let item = ItemId::from_bytes(&r.item).map_err(|e| Status::invalid_argument(format!("{field}.item: {e}")))?;
    let index = u16::try_from(r.index)
        .map_err(|_| Status::invalid_argument(format!("{field}.index {} is out of range", r.index)))?;
    Ok(StripeId::new(item, index))
}

fn join_error(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("storage task failed: {e}"))
}

/// The chunkserver gRPC service.
#[derive(Debug, Clone)]
pub struct ChunkserverService {
    shared: Arc<Shared>,
}

impl ChunkserverService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn write(
        &self,
        mut stream: Streaming<cs::WriteStripeRequest>,
        header: cs::StripeHeader,
    ) -> Result<cs::WriteStripeResponse, Status> {
        let s = &self.shared;
        let stripe = parse_stripe(header.stripe.as_ref(), "header.stripe")?;
        let h = StripeHeader { stripe, length: header.length, block_size: header.block_size, crcs: header.block_crcs };
        let class = RequestClass::from_wire(header.class);
        let _permit = s.admission.admit(class).await;
        let turn = s.stripe_queues.enter(stripe, class).await;
        s.enter().await?;
        let store = s.store.clone();
        let start = tokio::task::spawn_blocking(move || store.begin_write(h)).await.map_err(join_error)??;
        let mut writer = match start {
            WriteStart::AlreadyPresent { dir } => {
                return Ok(cs::WriteStripeResponse {
                    already_present: true,
                    data_dir: s.store.dirs()[dir].path.display().to_string(),
                });
            }
            WriteStart::New(w) => w,
        };
        while let Some(msg) = stream.message().await? {
            match msg.part {
                Some(cs::write_stripe_request::Part::Data(bytes)) => {
                    let n = bytes.len() as u64;
                    writer = tokio::task::spawn_blocking(move || writer.append(&bytes).map(|()| writer))
                        .await
                        .map_err(join_error)??;
                    s.writes[writer.dir()].record(Instant::now(), n);
                    turn.charge(n);
                }
                Some(cs::write_stripe_request::Part::Header(_)) => {
                    return Err(Status::invalid_argument(format!("stripe {stripe}: a second header in one write")));
                }
                None => {
                    return Err(Status::invalid_argument(format!("stripe {stripe}: empty message")));
                }
            }
        }
        let dir = tokio::task::spawn_blocking(move || writer.finish()).await.map_err(join_error)??;
        s.metrics.written_bytes.get_or_create(s.dir_label(dir)).inc_by(header.length);
        Ok(cs::WriteStripeResponse { already_present: false, data_dir: s.store.dirs()[dir].path.display().to_string() })
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<cs::ReadStripeResponse, Status>> + Send>>;
type InventoryStream = Pin<Box<dyn Stream<Item = Result<cs::InventoryBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Chunkserver for ChunkserverService {
    async fn write_stripe(
        &self,
        request: Request<Streaming<cs::WriteStripeRequest>>,
    ) -> Result<Response<cs::WriteStripeResponse>, Status> {
        let started = Instant::now();
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty write stream"))?;
        let Some(cs::write_stripe_request::Part::Header(header)) = first.part else {
            return Err(Status::invalid_argument("the first message of a write must be the header"));
        };
        let class = RequestClass::from_wire(header.class);
        let stripe_text = parse_stripe(header.stripe.as_ref(), "header.stripe")?.to_string();
        let span = debug_span!("write_stripe", stripe = %stripe_text, class = class.as_str());
        let result = self.write(stream, header).instrument(span).await;
        let code = result.as_ref().map(|_| Code::Ok).unwrap_or_else(|e| e.code());
        if let Err(e) = &result {
            warn!(stripe = %stripe_text, code = ?e.code(), error = e.message(), "write failed");
        }
        self.shared.observe("write", class, started, code);
        result.map(Response::new)
    }

    type ReadStripeStream = ReadStream;

    async fn read_stripe(&self, request: Request<cs::ReadStripeRequest>) -> Result<Response<ReadStream>, Status> {
        let id = request.metadata().get(tessera_proto::REQUEST_ID_HEADER).and_then(|v| v.to_str().ok());
        let id = tessera_proto::request_id(id);
        let rx = self.shared.clone().start_read(request.into_inner(), id)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete_stripe(
        &self,
        request: Request<cs::DeleteStripeRequest>,
    ) -> Result<Response<cs::DeleteStripeResponse>, Status> {
        let started = Instant::now();
        let stripe = parse_stripe(request.get_ref().stripe.as_ref(), "stripe")?;
        let store = self.shared.store.clone();
        let result =
            tokio::task::spawn_blocking(move || store.delete(&stripe)).await.map_err(join_error)?.map_err(Status::from);
        self.shared.observe(
            "delete",
            RequestClass::Serving,
            started,
            result.as_ref().map(|_| Code::Ok).unwrap_or_else(|e| e.code()),
        );
        result.map(|existed| Response::new(cs::DeleteStripeResponse { existed }))
    }

    type InventoryStream = InventoryStream;

    async fn inventory(&self, _request: Request<cs::InventoryRequest>) -> Result<Response<InventoryStream>, Status> {
        let s = self.shared.clone();
        let all = s.store.inventory();
        let batches: Vec<Result<cs::InventoryBatch, Status>> = all
            .chunks(1000)
            .map(|chunk| {
                Ok(cs::InventoryBatch {
                    stripes: chunk
                        .iter()
                        .map(|(id, len, dir)| cs::StripeInfo {
                            stripe: Some(cs::StripeRef {
                                item: id.item.as_bytes().to_vec().into(),
                                index: id.index as u32,
                            }),
                            length: *len,
                            data_dir: s.store.dirs()[*dir].path.display().to_string(),
                        })
                        .collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn stats(&self, request: Request<cs::StatsRequest>) -> Result<Response<cs::StatsResponse>, Status> {
        let s = &self.shared;
        let window = match request.get_ref().window_secs {
            0 => DEFAULT_WINDOW_SECS,
            w @ (5 | 10 | 20) => w,
            w => {
                return Err(Status::invalid_argument(format!("window_secs must be 5, 10 or 20, got {w}")));
            }
        };
        let now = Instant::now();
        let usage = s.store.usage();
        let devices = s
            .store
            .dirs()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (free, total) = d.space().unwrap_or((0, 0));
                cs::DeviceStats {
                    data_dir: d.path.display().to_string(),
                    read_bytes_per_sec: s.reads[i].rate(now, window),
                    write_bytes_per_sec: s.writes[i].rate(now, window),
                    free_bytes: free,
                    total_bytes: total,
                    stripes: usage[i].0,
                    stored_bytes: usage[i].1,
                }
            })
            .collect();
        let classes = s
            .admission
            .queues()
            .into_iter()
            .map(|q| cs::ClassStats {
                class: q.class.to_wire() as i32,
                limit: q.limit,
                in_flight: q.in_flight,
                queued: q.queued,
                served: q.served,
            })
            .collect();
        Ok(Response::new(cs::StatsResponse { window_secs: window, devices, classes, node_id: s.node_id.clone() }))
    }

    async fn verify_stripe(
        &self,
        request: Request<cs::VerifyStripeRequest>,
    ) -> Result<Response<cs::VerifyStripeResponse>, Status> {
        let started = Instant::now();
        let stripe = parse_stripe(request.get_ref().stripe.as_ref(), "stripe")?;
        let s = &self.shared;
        if s.store.get(&stripe).is_none() {
            return Err(Status::not_found(format!("stripe {stripe} is not stored on {}", s.node_id)));
        }
        let result = match s
            .verify_stripe(stripe, FoundBy::Verify, None)
            .instrument(debug_span!("verify_stripe", %stripe))
            .await
        {
            Ok(Verified::Intact(_)) => Ok(cs::VerifyStripeResponse { intact: true, quarantined: false }),
            Ok(Verified::Quarantined) => Ok(cs::VerifyStripeResponse { intact: false, quarantined: true }),
            Ok(Verified::Gone) => Ok(cs::VerifyStripeResponse { intact: false, quarantined: false }),
            Err(e) => Err(Status::from(e)),
        };
        let code = result.as_ref().map(|_| Code::Ok).unwrap_or_else(|e| e.code());
        self.shared.observe("verify", RequestClass::Repair, started, code);
        result.map(Response::new)
    }
}

/// The fault-injection control service (only served with --enable-fault-injection).
#[derive(Debug, Clone)]
pub struct FaultService {
    shared: Arc<Shared>,
}

impl FaultService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl FaultInjection for FaultService {
    async fn set_faults(&self, request: Request<cs::Faults>) -> Result<Response<cs::Faults>, Status> {
        let f = Faults::from_wire(request.get_ref()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        info!(node = %self.shared.node_id, faults = ?f, "fault injection changed");
        self.shared.faults.set(f);
        Ok(Response::new(f.to_wire()))
    }

    async fn get_faults(&self, _request: Request<cs::GetFaultsRequest>) -> Result<Response<cs::Faults>, Status> {
        Ok(Response::new(self.shared.faults.get().to_wire()))
    }

    async fn set_scrub_rate(&self, request: Request<cs::ScrubRate>) -> Result<Response<cs::ScrubRate>, Status> {
        let rate = request.get_ref().bytes_per_sec;
        info!(node = %self.shared.node_id, bytes_per_sec = rate, "scrub rate changed");
        self.shared.scrub_rate.send_replace(rate);
        Ok(Response::new(cs::ScrubRate { bytes_per_sec: rate }))
    }
}
