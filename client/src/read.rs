//! Reading a range of an item: split it into sessions of equal stripe ranges,
//! drive each session's plan with real fetches, cancel the losers, decode what
//! did not arrive, and hand back the bytes in item order without copying them.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tessera_core::codec::ErasureCoder;
use tessera_core::latency::{HedgePolicy, hedge_delay};
use tessera_core::read_plan::{Completion, ReadMode, ReadSession, SessionPolicy, Step, StripeSource};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span, warn};

use crate::connect::ServerHandle;
use crate::fetch::{self, FetchSpec, Pieces};
use crate::stats::ReadReport;
use crate::{ClientError, FetchError, ItemLocation, StripeClient};

/// The bytes of a read, in order, as zero-copy slices of what arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemData {
    parts: Vec<Bytes>,
}

impl ItemData {
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// Copies the bytes into `out`, which must be exactly `len()` long.
    pub fn copy_to(&self, out: &mut [u8]) {
        assert_eq!(out.len(), self.len());
        let mut at = 0;
        for p in &self.parts {
            out[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        self.copy_to(&mut v);
        v
    }
}

/// How long past its deadline an abandoned probe may run: enough for the fetch
/// to record that it was late before it is aborted.
const PROBE_GRACE: std::time::Duration = std::time::Duration::from_millis(1);

/// A spawned stripe fetch, aborted when dropped: a read whose future is
/// dropped (its caller gave up on it, say to read the range again another
/// way) stops its fetches with it, so a slow server is not kept busy
/// serving bytes nobody waits for.
struct FetchTask(JoinHandle<()>);

impl Drop for FetchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a read fetches: its mode and hedge policy, and its id.
#[derive(Clone)]
struct How<'a> {
    mode: ReadMode,
    hedge: &'a HedgePolicy,
    request: Arc<str>,
}

/// One session's result: the pieces of every want, arrived or rebuilt.
type Delivered = HashMap<usize, Pieces>;

/// Reads `range` of an item under a new request id, in a span carrying it
/// and the item; the id goes to every chunkserver asked, so their logs and
/// this client's can be joined on it.
pub(crate) async fn read(
    client: &StripeClient,
    loc: &ItemLocation,
    range: Range<u64>,
    mode: ReadMode,
    hedge: &HedgePolicy,
) -> Result<(ItemData, ReadReport), ClientError> {
    let request: Arc<str> = format!("{:016x}", rand::random::<u64>()).into();
    let span = debug_span!("read", request = %request, item = %loc.item);
    let started = Instant::now();
    let (offset, len) = (range.start, range.end - range.start);
    let result = read_item(client, loc, range, mode, hedge, request).instrument(span.clone()).await;
    span.in_scope(|| match &result {
        Ok((_, r)) => debug!(
            offset,
            len,
            mode = %mode,
            fetches = r.fetches,
            hedges = r.hedges,
            elapsed_us = started.elapsed().as_micros() as u64,
            "item read"
        ),
        Err(e) => debug!(offset, len, error = %e, "item read failed"),
    });
    result
}

async fn read_item(
    client: &StripeClient,
    loc: &ItemLocation,
    range: Range<u64>,
    mode: ReadMode,
    hedge: &HedgePolicy,
    request: Arc<str>,
) -> Result<(ItemData, ReadReport), ClientError> {
    let layout = loc.layout;
    if loc.servers.len() != layout.n() {
        return Err(ClientError::Locations { item: loc.item, expected: layout.n(), got: loc.servers.len() });
    }
    if range.start > range.end || range.end > loc.item_len {
        return Err(ClientError::Range { item: loc.item, start: range.start, end: range.end, len: loc.item_len });
    }
    let mut report = ReadReport { mode, ..Default::default() };
    if range.is_empty() {
        return Ok((ItemData::default(), report));
    }
    let stripe_len = layout.stripe_len(loc.item_len)?;
    let extents = layout.data_extents(loc.item_len, range)?;

    // Wants that need the same block-aligned stripe range share a session, so
    // the stripes fetched for a rebuild serve all of them.
    let mut sessions: Vec<(Range<usize>, Vec<usize>)> = Vec::new();
    for e in &extents {
        let aligned = layout.block_aligned(e.stripe_range.clone(), stripe_len);
        match sessions.iter_mut().find(|(r, _)| *r == aligned) {
            Some((_, wants)) => wants.push(e.stripe),
            None => sessions.push((aligned, vec![e.stripe])),
        }
    }

    let handles: Vec<Option<Arc<ServerHandle>>> =
        loc.servers.iter().map(|s| s.as_deref().map(|a| client.server(a)).transpose()).collect::<Result<_, _>>()?;
    let fetched = Arc::new(AtomicU64::new(0));
    // Collected first: a lazy map inside the awaited future would make it
    // lose `Send` (a known limit of the compiler with higher-ranked lifetimes).
    let runs: Vec<_> = sessions
        .iter()
        .map(|(r, wants)| {
            let how = How { mode, hedge, request: request.clone() };
            run_session(client, loc, &handles, r.clone(), wants.clone(), how, fetched.clone())
        })
        .collect();
    let results = futures::future::join_all(runs).await;

    let mut delivered: Vec<(Range<usize>, Delivered)> = Vec::new();
    let mut failure = None;
    for ((r, _), res) in sessions.iter().zip(results) {
        let (d, sr) = res;
        report.absorb(&sr);
        match d {
            Ok(d) => delivered.push((r.clone(), d)),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    report.bytes_fetched = fetched.load(Ordering::Relaxed);
    if let Some(e) = failure {
        client.counters.failed(report.bytes_fetched, report.checksum_failures);
        return Err(e);
    }

    let mut parts = Vec::new();
    for e in &extents {
        let aligned = layout.block_aligned(e.stripe_range.clone(), stripe_len);
        let (_, d) = delivered.iter().find(|(r, _)| *r == aligned).expect("every extent has a session");
        let pieces = &d[&e.stripe];
        parts.extend(pieces.slices(e.stripe_range.start, e.stripe_range.end));
    }
    let data = ItemData { parts };
    report.bytes_returned = data.len() as u64;
    client.counters.add(&report);
    Ok((data, report))
}

/// Drives one [`ReadSession`] with real fetches.
async fn run_session(
    client: &StripeClient,
    loc: &ItemLocation,
    handles: &[Option<Arc<ServerHandle>>],
    range: Range<usize>,
    wants: Vec<usize>,
    how: How<'_>,
    fetched: Arc<AtomicU64>,
) -> (Result<Delivered, ClientError>, ReadReport) {
    let (mode, hedge) = (how.mode, how.hedge);
    let cfg = client.config();
    let layout = loc.layout;
    let k = layout.k();
    let mut report = ReadReport::default();
    let now = Instant::now();
    let std_now = std::time::Instant::now();
    let bytes = range.len() as u64;
    // Which servers are slow and how fast the rest are matters only when the
    // plan may pick among stripes or hedge; a healthy normal read skips it.
    let informed = mode != ReadMode::Normal;
    let sources: Vec<StripeSource> = handles
        .iter()
        .enumerate()
        .map(|(i, h)| match h {
            None => StripeSource { available: false, ..Default::default() },
            Some(_) if !informed => StripeSource { rank: i as u32, ..Default::default() },
            Some(h) => h.with_latency(|l| StripeSource {
                available: true,
                slow: l.is_slow(std_now),
                // Whole milliseconds: servers within a millisecond of each
                // other tie, and ties go to the lower stripe index, so the
                // first (XOR) parity is preferred and a single rebuild is
                // XORs only.
                rank: l.expected(std_now, bytes, 0.5).map(|d| d.as_millis().min(u32::MAX as u128) as u32).unwrap_or(0),
            }),
        })
        .collect();
    let delay = if mode == ReadMode::Hedged {
        hedge_delay(
            handles.iter().flatten().filter_map(|h| h.with_latency(|l| l.expected(std_now, bytes, hedge.quantile))),
            hedge,
        )
    } else {
        cfg.fetch_timeout
    };
    let deadline = now + delay;
    let policy = SessionPolicy {
        mode,
        extra_stripes: hedge.extra_stripes,
        accelerated_stripes: cfg.accelerated_stripes(k, layout.m()),
    };
    let mut session = ReadSession::new(k, range.clone(), wants.clone(), policy, sources.clone());

    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Result<Pieces, FetchError>)>();
    let mut tasks: HashMap<usize, FetchTask> = HashMap::new();
    let mut probes: Vec<usize> = Vec::new();
    let mut arrived: HashMap<usize, Pieces> = HashMap::new();
    let mut errors: Vec<(usize, FetchError)> = Vec::new();
    let mut hedged = false;
    // Whether this session's direct fetches were judged against the deadline.
    let mut judged = false;
    let hedge_timer = tokio::time::sleep_until(deadline);
    tokio::pin!(hedge_timer);

    let mut step = session.start();
    let outcome = loop {
        match step {
            Step::Fetch(fetches) => {
                for f in fetches {
                    let Some(server) = handles[f.stripe].clone() else { continue };
                    let is_want = wants.contains(&f.stripe);
                    if mode == ReadMode::Hedged && !is_want {
                        hedged = true;
                    }
                    let probe = mode == ReadMode::Hedged && is_want && sources[f.stripe].slow;
                    if probe {
                        probes.push(f.stripe);
                    }
                    let spec = FetchSpec {
                        stripe: loc.stripe(f.stripe),
                        range: f.range,
                        block_size: layout.block_size(),
                        class: cfg.class,
                        timeout: cfg.fetch_timeout,
                        deadline: probe.then_some(deadline),
                        request: how.request.clone(),
                    };
                    let tx = tx.clone();
                    let fetched = fetched.clone();
                    let stripe = f.stripe;
                    report.fetches += 1;
                    tasks.insert(
                        stripe,
                        FetchTask(tokio::spawn(async move {
                            let r = fetch::fetch(server, spec, fetched).await;
                            let _ = tx.send((stripe, r));
                        })),
                    );
                }
            }
            Step::Complete(c) => break Ok(c),
            Step::Fail(u) => break Err(u),
            Step::Ignored => unreachable!("a running session does not ignore events"),
        }
        step = tokio::select! {
            Some((stripe, result)) = rx.recv() => match result {
                Ok(p) => {
                    arrived.insert(stripe, p);
                    session.on_arrival(stripe)
                }
                Err(e) => {
                    report.failed_fetches += 1;
                    if let FetchError::Checksum { server, .. } = &e {
                        report.corrupt_in_transit.push((loc.stripe(stripe), server.clone()));
                    }
                    if matches!(e, FetchError::Checksum { .. } | FetchError::Status { code: tonic::Code::DataLoss, .. }) {
                        report.checksum_failures += 1;
                        warn!(stripe = %loc.stripe(stripe), error = %e, "corrupt stripe data; rebuilding from other stripes");
                    } else if !probes.contains(&stripe) {
                        debug!(stripe = %loc.stripe(stripe), error = %e, "stripe fetch failed");
                    }
                    errors.push((stripe, e));
                    session.on_failure(stripe)
                }
            },
            _ = &mut hedge_timer, if session.wants_hedge_timer() => {
                record_outcomes(handles, &wants, &probes, &arrived, true);
                judged = true;
                session.on_hedge_timer()
            }
        };
    };
    if mode == ReadMode::Hedged && !judged {
        record_outcomes(handles, &wants, &probes, &arrived, false);
    }
    // Cancel the losers: dropping a fetch resets its stream, and the
    // chunkserver stops reading. A probe of a server believed slow runs on
    // until just past its deadline, so whether it made it is recorded and the
    // client notices when the server recovers.
    for stripe in session.in_flight() {
        let Some(t) = tasks.remove(&stripe) else { continue };
        if probes.contains(&stripe) && Instant::now() < deadline {
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline + PROBE_GRACE).await;
                drop(t);
            });
        } else {
            drop(t);
        }
    }
    if hedged {
        report.hedges += 1;
    }
    let completion = match outcome {
        Ok(c) => c,
        Err(u) => {
            let mut missing: Vec<_> = errors.into_iter().map(|(s, e)| (loc.stripe(s), e)).collect();
            for s in u.missing {
                if handles[s].is_none() {
                    missing.push((loc.stripe(s), FetchError::NoLocation));
                }
            }
            missing.sort_by_key(|(s, _)| *s);
            let err = ClientError::Unreadable { item: loc.item, needed: u.k, reachable: u.reachable, missing };
            return (Err(err), report);
        }
    };
    let mut delivered: Delivered = HashMap::new();
    match completion {
        Completion::Direct => {
            for w in &wants {
                delivered.insert(*w, arrived.remove(w).expect("a direct completion has every want"));
            }
        }
        Completion::Rebuild { inputs, outputs } => {
            report.rebuilt += 1;
            if hedged {
                report.hedges_won += 1;
            }
            let codec = client.codec(k, layout.m());
            let inputs: Vec<(usize, &Pieces)> = inputs.iter().map(|i| (*i, &arrived[i])).collect();
            let rebuilt = match rebuild(codec.as_ref(), &inputs, &outputs, &range) {
                Ok(r) => r,
                Err(e) => return (Err(e), report),
            };
            for w in &wants {
                let p = match rebuilt.get(w) {
                    Some(p) => p.clone(),
                    None => arrived.get(w).cloned().expect("a want is either arrived or rebuilt"),
                };
                delivered.insert(*w, p);
            }
        }
    }
    (Ok(delivered), report)
}

/// Tells each want's server whether it beat the hedge deadline. At the
/// deadline, a want still outstanding is late only if another want of the
/// same read arrived in time: when all of them are late the whole machine or
/// network stalled, which says nothing about any one server. Before the
/// deadline, everything that arrived was on time. Probes of servers already
/// believed slow judge themselves (see `fetch`).
fn record_outcomes(
    handles: &[Option<Arc<ServerHandle>>],
    wants: &[usize],
    probes: &[usize],
    arrived: &HashMap<usize, Pieces>,
    at_deadline: bool,
) {
    let peers_on_time = wants.iter().any(|w| arrived.contains_key(w));
    for w in wants.iter().filter(|w| !probes.contains(w)) {
        let Some(h) = &handles[*w] else { continue };
        if arrived.contains_key(w) {
            h.record_outcome(false);
        } else if at_deadline && peers_on_time {
            h.record_outcome(true);
        }
    }
}

/// Decodes `outputs` over `range` from the arrived `inputs`. Inputs may have
/// arrived in messages cut at different offsets; decoding runs per segment
/// between any two cuts, so no input is copied into one buffer first.
fn rebuild(
    codec: &dyn ErasureCoder,
    inputs: &[(usize, &Pieces)],
    outputs: &[usize],
    range: &Range<usize>,
) -> Result<HashMap<usize, Pieces>, ClientError> {
    let mut cuts: Vec<usize> = inputs.iter().flat_map(|(_, p)| p.boundaries()).chain([range.end]).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: HashMap<usize, Pieces> =
        outputs.iter().map(|o| (*o, Pieces { range: range.clone(), parts: Vec::new() })).collect();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let present: Vec<(usize, &[u8])> = inputs
            .iter()
            .map(|(i, p)| (*i, p.slice_within(a, b).expect("segments lie inside one part of every input")))
            .collect();
        let mut bufs: Vec<BytesMut> = outputs.iter().map(|_| BytesMut::zeroed(b - a)).collect();
        let mut wanted: Vec<(usize, &mut [u8])> =
            outputs.iter().copied().zip(bufs.iter_mut().map(|b| &mut b[..])).collect();
        codec.reconstruct(&present, &mut wanted)?;
        for (o, buf) in outputs.iter().zip(bufs) {
            out.get_mut(o).expect("an entry per output").parts.push((a, buf.freeze()));
        }
    }
    Ok(out)
}
