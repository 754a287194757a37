//! ReadStripe without a copy of the stripe bytes in the gRPC layer.
//!
//! [`FastReads`] wraps the generated Chunkserver service. ReadStripe requests
//! are answered here: the request is decoded as usual, and each response
//! message goes out as three HTTP/2 data frames (fields, the bytes read from
//! disk, more fields) built by [`tessera_proto::read_frames`], so the data
//! buffer reaches the socket untouched. Every other method, and the
//! generated ReadStripe handler for anyone mounting the plain service, goes
//! through tonic unchanged. On the wire it is ordinary gRPC.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use tessera_proto::cs;
use tessera_proto::read_frames::{READ_STRIPE_PATH, encode_response};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::service::Shared;

/// Largest ReadStripe request accepted (it is a few dozen bytes).
const MAX_REQUEST: usize = 64 << 10;

/// The Chunkserver service with the zero-copy ReadStripe in front.
#[derive(Debug, Clone)]
pub struct FastReads<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> FastReads<S> {
    pub fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S: NamedService> NamedService for FastReads<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for FastReads<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> BoxFuture {
        if req.uri().path() == READ_STRIPE_PATH {
            let shared = self.shared.clone();
            Box::pin(async move { Ok(read(shared, req).await) })
        } else {
            Box::pin(self.inner.call(req))
        }
    }
}

async fn read(shared: Arc<Shared>, req: http::Request<Body>) -> http::Response<Body> {
    let id = req.headers().get(tessera_proto::REQUEST_ID_HEADER).and_then(|v| v.to_str().ok());
    let id = tessera_proto::request_id(id);
    let request = match decode_request(req).await {
        Ok(r) => r,
        Err(st) => return st.into_http(),
    };
    let rx = match shared.start_read(request, id) {
        Ok(rx) => rx,
        Err(st) => return st.into_http(),
    };
    // Data frames for each message, then the trailers: grpc-status 0, or the
    // error that ended the stream.
    let frames = ReceiverStream::new(rx)
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .scan(false, |failed, item| {
            let out: Vec<Result<Frame<Bytes>, Status>> = match item {
                _ if *failed => vec![],
                Some(Ok(m)) => encode_response(m.offset, m.data, &m.block_crcs, m.block_size, m.stripe_length)
                    .into_iter()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b)))
                    .collect(),
                Some(Err(st)) => {
                    *failed = true;
                    vec![Ok(Frame::trailers(trailers(&st)))]
                }
                None => vec![Ok(Frame::trailers(trailers(&Status::ok(""))))],
            };
            futures::future::ready(Some(futures::stream::iter(out)))
        })
        .flatten();
    http::Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Body::new(StreamBody::new(frames)))
        .expect("static response parts are valid")
}

fn trailers(st: &Status) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    if st.add_header(&mut h).is_err() {
        h.insert("grpc-status", http::HeaderValue::from_static("13"));
    }
    h
}

async fn decode_request(req: http::Request<Body>) -> Result<cs::ReadStripeRequest, Status> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("reading the request: {e}")))?
        .to_bytes();
    if body.len() < 5 {
        return Err(Status::invalid_argument("the request is not a gRPC message"));
    }
    if body[0] != 0 {
        return Err(Status::unimplemented("compressed requests are not supported"));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(Status::invalid_argument("the request length does not match its frame"));
    }
    cs::ReadStripeRequest::decode(&body[5..])
        .map_err(|e| Status::invalid_argument(format!("decoding the request: {e}")))
}
