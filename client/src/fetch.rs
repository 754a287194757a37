//! One stripe fetch: a streamed range read, verified block by block.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use prost::Message;
use tessera_core::ids::StripeId;
use tessera_core::latency::Sample;
use tessera_proto::cs;
use tessera_proto::read_frames::{READ_STRIPE_PATH, ReadChunk, ResponseDecoder};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::connect::{MAX_MESSAGE, ServerHandle};
use crate::{FetchError, RequestClass};

/// The bytes of one stripe range, as the messages that carried them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pieces {
    pub range: Range<usize>,
    /// (stripe offset, bytes), contiguous and in order.
    pub parts: Vec<(usize, Bytes)>,
}

impl Pieces {
    /// The bytes of `[from, to)`, which must lie inside one part.
    pub(crate) fn slice_within(&self, from: usize, to: usize) -> Option<&[u8]> {
        let (off, b) = self.parts.iter().find(|(off, b)| *off <= from && to <= off + b.len())?;
        Some(&b[from - off..to - off])
    }

    /// `[from, to)` as zero-copy slices of the parts.
    pub(crate) fn slices(&self, from: usize, to: usize) -> impl Iterator<Item = Bytes> + '_ {
        self.parts.iter().filter_map(move |(off, b)| {
            let s = from.max(*off);
            let e = to.min(off + b.len());
            (s < e).then(|| b.slice(s - off..e - off))
        })
    }

    pub(crate) fn boundaries(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().map(|(off, _)| *off)
    }
}

/// How one fetch is to be run.
#[derive(Debug, Clone)]
pub(crate) struct FetchSpec {
    pub stripe: StripeId,
    pub range: Range<usize>,
    pub block_size: usize,
    pub class: RequestClass,
    pub timeout: Duration,
    /// For a probe of a server believed slow: the hedge deadline, and whether
    /// the fetch beat it is recorded for the server.
    pub deadline: Option<Instant>,
    /// The read's id, sent to the server (its logs carry it).
    pub request: Arc<str>,
}

/// Runs a fetch with its deadline and timeout. Bytes are added to `fetched`
/// as they arrive, so a cancelled loser's bytes are still counted.
pub(crate) async fn fetch(
    server: Arc<ServerHandle>,
    spec: FetchSpec,
    fetched: Arc<AtomicU64>,
) -> Result<Pieces, FetchError> {
    let started = Instant::now();
    let timeout = spec.timeout;
    let run = tokio::time::timeout(timeout, stream(&server, &spec, &fetched, started));
    tokio::pin!(run);
    let result = match spec.deadline {
        None => run.await,
        Some(deadline) => {
            tokio::select! {
                r = &mut run => {
                    server.record_outcome(Instant::now() >= deadline);
                    r
                }
                _ = tokio::time::sleep_until(deadline) => {
                    server.record_outcome(true);
                    run.await
                }
            }
        }
    };
    let result = result.unwrap_or_else(|_| Err(FetchError::Timeout { server: server.addr.clone(), timeout }));
    match &result {
        Ok((pieces, first_byte)) => server.record_sample(Sample {
            at: std::time::Instant::now(),
            first_byte: *first_byte,
            total: started.elapsed(),
            bytes: pieces.range.len() as u64,
        }),
        Err(_) => server.record_failure(),
    }
    result.map(|(p, _)| p)
}

async fn stream(
    server: &ServerHandle,
    spec: &FetchSpec,
    fetched: &AtomicU64,
    started: Instant,
) -> Result<(Pieces, Duration), FetchError> {
    let status = |s: tonic::Status| FetchError::Status {
        server: server.addr.clone(),
        code: s.code(),
        message: s.message().to_string(),
    };
    let protocol = |detail: String| FetchError::Protocol { server: server.addr.clone(), detail };
    let req = cs::ReadStripeRequest {
        stripe: Some(cs::StripeRef {
            item: spec.stripe.item.as_bytes().to_vec().into(),
            index: spec.stripe.index as u32,
        }),
        offset: spec.range.start as u64,
        length: spec.range.len() as u64,
        class: spec.class as i32,
    };
    let mut body = call_read_stripe(server, &req, &spec.request).await.map_err(status)?;
    let mut decoder = ResponseDecoder::new(MAX_MESSAGE);
    let mut pieces = Pieces { range: spec.range.clone(), parts: Vec::new() };
    let mut next = spec.range.start;
    let mut first_byte = None;
    let mut finished = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(status)?;
        let frame = match frame.into_data() {
            Ok(data) => {
                first_byte.get_or_insert_with(|| started.elapsed());
                fetched.fetch_add(data.len() as u64, Ordering::Relaxed);
                server.record_bytes(data.len() as u64);
                decoder.push(data);
                while let Some(chunk) = decoder.next_chunk().map_err(|e| protocol(e.to_string()))? {
                    accept(server, spec, chunk, &mut next, &mut pieces)?;
                }
                continue;
            }
            Err(f) => f,
        };
        if let Ok(trailers) = frame.into_trailers() {
            if let Some(st) = tonic::Status::from_header_map(&trailers).filter(|s| s.code() != tonic::Code::Ok) {
                return Err(status(st));
            }
            finished = true;
        }
    }
    if !finished || decoder.buffered() > 0 {
        return Err(protocol("the stream ended without its trailers".into()));
    }
    if next != spec.range.end {
        return Err(protocol(format!("stream ended at {next}, expected {}", spec.range.end)));
    }
    Ok((pieces, first_byte.unwrap_or_default()))
}

/// Verifies one response chunk and appends its bytes.
fn accept(
    server: &ServerHandle,
    spec: &FetchSpec,
    chunk: ReadChunk,
    next: &mut usize,
    pieces: &mut Pieces,
) -> Result<(), FetchError> {
    let protocol = |detail: String| FetchError::Protocol { server: server.addr.clone(), detail };
    let n = chunk.data_len();
    if chunk.offset as usize != *next || n == 0 || *next + n > spec.range.end {
        return Err(protocol(format!(
            "got {n} bytes at {}, expected bytes from {next} to {}",
            chunk.offset, spec.range.end
        )));
    }
    if chunk.block_size as usize != spec.block_size {
        return Err(protocol(format!("block size {} differs from the item's {}", chunk.block_size, spec.block_size)));
    }
    // Blocks may straddle the frames the data arrived in: checksum across them.
    let bs = spec.block_size;
    let first = *next / bs;
    let mut block = 0;
    let mut in_block = 0;
    let mut crc = 0u32;
    for part in &chunk.data {
        let mut rest = &part[..];
        while !rest.is_empty() {
            let take = (bs - in_block).min(rest.len());
            crc = crc32c::crc32c_append(crc, &rest[..take]);
            in_block += take;
            rest = &rest[take..];
            if in_block == bs {
                check_block(server, &chunk, first, block, crc)?;
                block += 1;
                in_block = 0;
                crc = 0;
            }
        }
    }
    if in_block > 0 {
        check_block(server, &chunk, first, block, crc)?;
    }
    let mut at = *next;
    for part in chunk.data {
        let len = part.len();
        pieces.parts.push((at, part));
        at += len;
    }
    *next += n;
    Ok(())
}

fn check_block(
    server: &ServerHandle,
    chunk: &ReadChunk,
    first: usize,
    block: usize,
    crc: u32,
) -> Result<(), FetchError> {
    if chunk.block_crcs.get(block) == Some(&crc) {
        Ok(())
    } else {
        Err(FetchError::Checksum { server: server.addr.clone(), block: first + block })
    }
}

/// Sends a ReadStripe request over the server's channel and returns the
/// response body, unparsed: the frames are decoded by [`ResponseDecoder`]
/// without copying the stripe bytes.
async fn call_read_stripe(
    server: &ServerHandle,
    req: &cs::ReadStripeRequest,
    request_id: &str,
) -> Result<tonic::body::Body, tonic::Status> {
    let mut buf = Vec::with_capacity(5 + req.encoded_len());
    buf.push(0);
    buf.extend_from_slice(&(req.encoded_len() as u32).to_be_bytes());
    req.encode(&mut buf).expect("a Vec grows as needed");
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(READ_STRIPE_PATH)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(tessera_proto::REQUEST_ID_HEADER, request_id)
        .body(tonic::body::Body::new(http_body_util::Full::new(Bytes::from(buf))))
        .expect("static request parts are valid");
    let mut channel = server.channel();
    let unavailable = |e: tonic::transport::Error| tonic::Status::unavailable(format!("{e}: {}", source_chain(&e)));
    channel.ready().await.map_err(unavailable)?;
    let response = channel.call(request).await.map_err(unavailable)?;
    if response.status() != http::StatusCode::OK {
        return Err(tonic::Status::unknown(format!("HTTP status {}", response.status())));
    }
    // A response that is only headers carries its gRPC status there.
    if let Some(st) = tonic::Status::from_header_map(response.headers()).filter(|s| s.code() != tonic::Code::Ok) {
        return Err(st);
    }
    Ok(response.into_body())
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
