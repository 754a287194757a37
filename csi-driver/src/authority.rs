//! An HTTP/2 relay that gives requests a valid `:authority`.
//!
//! The kubelet's plugin watcher dials a registration socket by its path
//! with grpc-go's passthrough resolver, so each request's `:authority` is
//! the socket's path (`/var/lib/kubelet/plugins_registry/…-reg.sock`).
//! That is not a URI authority, and the HTTP/2 server under tonic (h2)
//! resets such a stream with PROTOCOL_ERROR, so a Rust plugin could never
//! register. The relay sits between the socket and the gRPC server: it
//! passes every frame through unchanged except the client's header blocks,
//! which it decodes, gives `:authority: localhost` (what grpc-go itself
//! sends over unix sockets now), and encodes again.
//!
//! Encoding uses literals without indexing only, so the server's HPACK
//! table never changes and only the client's side needs a decoder with
//! state (one per connection, fed every header block in order).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest maximum frame size a peer may set; header blocks longer
/// than this go out in CONTINUATION frames.
const MAX_FRAME: usize = 16_384;
/// What a header block may grow to across CONTINUATION frames.
const MAX_BLOCK: usize = 1 << 20;
/// The authority requests get.
const LOCALHOST: &[u8] = b"localhost";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relaying HTTP/2: {0}")]
    Io(#[from] io::Error),
    #[error("the client did not open with the HTTP/2 preface")]
    Preface,
    #[error("malformed HTTP/2 frame: {0}")]
    Frame(&'static str),
    #[error("the client's header block does not decode: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
}

/// Relays one connection between `client` and `server` until either side
/// closes it.
pub async fn relay<C, S>(client: C, server: S) -> Result<(), RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut server_rx, mut server_tx) = tokio::io::split(server);
    let upstream = async {
        let result = rewrite_stream(&mut client_rx, &mut server_tx).await;
        let _ = server_tx.shutdown().await;
        result
    };
    let downstream = async {
        let copied = tokio::io::copy(&mut server_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
        copied.map(drop).map_err(RelayError::from)
    };
    // Either direction ending ends the connection (the other side's read
    // then sees the close).
    tokio::select! {
        r = upstream => r,
        r = downstream => r,
    }
}

/// The client-to-server direction: the preface, then frame by frame.
async fn rewrite_stream<R, W>(from: &mut R, to: &mut W) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    from.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(RelayError::Preface);
    }
    to.write_all(&preface).await?;
    let mut decoder = loona_hpack::Decoder::new();
    while let Some(frame) = read_frame(from).await? {
        if frame.kind != HEADERS {
            to.write_all(&frame.encode()).await?;
            continue;
        }
        let mut headers = HeaderFrame::parse(&frame)?;
        while headers.flags & END_HEADERS == 0 {
            let next = read_frame(from).await?.ok_or(RelayError::Frame("header block cut short"))?;
            if next.kind != CONTINUATION || next.stream != frame.stream {
                return Err(RelayError::Frame("a header block interrupted by another frame"));
            }
            if headers.block.len() + next.payload.len() > MAX_BLOCK {
                return Err(RelayError::Frame("a header block over 1 MiB"));
            }
            headers.block.extend_from_slice(&next.payload);
            headers.flags |= next.flags & END_HEADERS;
        }
        let fields = decoder.decode(&headers.block).map_err(RelayError::Hpack)?;
        to.write_all(&headers.encode(&with_local_authority(fields))).await?;
        to.flush().await?;
    }
    Ok(())
}

/// `fields` with `:authority` set to `localhost`.
fn with_local_authority(mut fields: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    for (name, value) in &mut fields {
        if name.as_slice() == b":authority" {
            *value = LOCALHOST.to_vec();
        }
    }
    fields
}

/// One frame as read: its header's fields and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.payload.len());
        let len = self.payload.len() as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.stream.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// The next frame, or none at a clean end of the stream (between frames).
async fn read_frame<R: AsyncRead + Unpin>(from: &mut R) -> Result<Option<Frame>, RelayError> {
    let mut head = [0u8; 9];
    if from.read(&mut head[..1]).await? == 0 {
        return Ok(None);
    }
    match from.read_exact(&mut head[1..]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(RelayError::Frame("a frame header cut short"));
        }
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    // The server never raises SETTINGS_MAX_FRAME_SIZE from its default, so
    // a longer frame is a client error; refused before anything is allocated.
    if len > MAX_FRAME {
        return Err(RelayError::Frame("a frame longer than the server's 16 KiB frame size"));
    }
    let mut payload = vec![0u8; len];
    from.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]),
        payload,
    }))
}

/// A HEADERS frame taken apart: padding dropped, priority kept.
#[derive(Debug)]
struct HeaderFrame {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl HeaderFrame {
    fn parse(frame: &Frame) -> Result<Self, RelayError> {
        let mut rest = frame.payload.as_slice();
        let mut pad = 0usize;
        if frame.flags & PADDED != 0 {
            let (&n, tail) =
                rest.split_first().ok_or(RelayError::Frame("a padded HEADERS frame without its length"))?;
            pad = n as usize;
            rest = tail;
        }
        let mut priority = None;
        if frame.flags & PRIORITY != 0 {
            if rest.len() < 5 {
                return Err(RelayError::Frame("a HEADERS frame too short for its priority"));
            }
            priority = Some(rest[..5].try_into().expect("five bytes"));
            rest = &rest[5..];
        }
        if pad > rest.len() {
            return Err(RelayError::Frame("more padding than payload"));
        }
        Ok(Self {
            stream: frame.stream,
            flags: frame.flags & (END_STREAM | END_HEADERS | PRIORITY),
            priority,
            block: rest[..rest.len() - pad].to_vec(),
        })
    }

    /// The frames carrying `fields`: one HEADERS frame, and CONTINUATION
    /// frames if the block is longer than the smallest frame size.
    fn encode(&self, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            literal_without_indexing(name, value, &mut block);
        }
        let mut first = Vec::new();
        if let Some(p) = self.priority {
            first.extend_from_slice(&p);
        }
        let room = MAX_FRAME - first.len();
        let (head, mut tail) = block.split_at(block.len().min(room));
        first.extend_from_slice(head);
        let flags = (self.flags & (END_STREAM | PRIORITY)) | if tail.is_empty() { END_HEADERS } else { 0 };
        let mut out = Frame { kind: HEADERS, flags, stream: self.stream, payload: first }.encode();
        while !tail.is_empty() {
            let (chunk, rest) = tail.split_at(tail.len().min(MAX_FRAME));
            tail = rest;
            let flags = if tail.is_empty() { END_HEADERS } else { 0 };
            out.extend(Frame { kind: CONTINUATION, flags, stream: self.stream, payload: chunk.to_vec() }.encode());
        }
        out
    }
}

/// A literal header field without indexing, with a literal name (RFC 7541
/// §6.2.2): neither side's dynamic table changes.
fn literal_without_indexing(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    string(name, out);
    string(value, out);
}

/// A string literal without Huffman coding (RFC 7541 §5.2).
fn string(s: &[u8], out: &mut Vec<u8>) {
    integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// An integer with an N-bit prefix (RFC 7541 §5.1); `high` holds the bits
/// above the prefix in the first byte.
fn integer(mut n: usize, prefix: u8, high: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(high | n as u8);
        return;
    }
    out.push(high | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        loona_hpack::Decoder::new().decode(block).unwrap()
    }

    fn field(n: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    /// Splits relayed bytes back into frames.
    fn frames(mut bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            out.push(Frame {
                kind: bytes[3],
                flags: bytes[4],
                stream: u32::from_be_bytes(bytes[5..9].try_into().unwrap()),
                payload: bytes[9..9 + len].to_vec(),
            });
            bytes = &bytes[9 + len..];
        }
        out
    }

    proptest! {
        /// Any header list survives our encoding as the decoder reads it.
        #[test]
        fn literals_decode_to_what_was_encoded(
            fields in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..300), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)
        ) {
            let mut block = Vec::new();
            for (n, v) in &fields {
                literal_without_indexing(n, v, &mut block);
            }
            prop_assert_eq!(decode(&block), fields);
        }
    }

    #[tokio::test]
    async fn the_authority_becomes_localhost_and_everything_else_passes_unchanged() {
        // A client's bytes: the preface, SETTINGS, a padded HEADERS frame
        // with priority whose block continues in a CONTINUATION frame,
        // then DATA. (The kubelet's Huffman-coded blocks are read in
        // e2e/tests/pods.rs.)
        let fields = vec![
            field(":method", "POST"),
            field(":scheme", "http"),
            field(":path", "/pluginregistration.Registration/GetInfo"),
            field(":authority", "/var/lib/kubelet/plugins_registry/csi.example-reg.sock"),
            field("content-type", "application/grpc"),
        ];
        let mut block = Vec::new();
        for (n, v) in &fields {
            literal_without_indexing(n, v, &mut block);
        }
        let (a, b) = block.split_at(20);
        let mut headers = vec![3u8]; // pad length
        headers.extend_from_slice(&[0x80, 0, 0, 1, 15]); // priority
        headers.extend_from_slice(a);
        headers.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        let settings = Frame { kind: 0x4, flags: 0, stream: 0, payload: vec![0, 3, 0, 0, 0, 100] };
        let data = Frame { kind: 0x0, flags: END_STREAM, stream: 1, payload: vec![0, 0, 0, 0, 0] };
        input.extend(settings.encode());
        input.extend(Frame { kind: HEADERS, flags: PADDED | PRIORITY, stream: 1, payload: headers }.encode());
        input.extend(Frame { kind: CONTINUATION, flags: END_HEADERS, stream: 1, payload: b.to_vec() }.encode());
        input.extend(data.encode());

        let mut out = Vec::new();
        rewrite_stream(&mut input.as_slice(), &mut out).await.unwrap();
        assert_eq!(&out[..24], PREFACE);
        let got = frames(&out[24..]);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], settings);
        assert_eq!((got[1].kind, got[1].flags, got[1].stream), (HEADERS, PRIORITY | END_HEADERS, 1));
        assert_eq!(got[1].payload[..5], [0x80, 0, 0, 1, 15]);
        let mut want = fields.clone();
        want[3] = field(":authority", "localhost");
        assert_eq!(decode(&got[1].payload[5..]), want);
        assert_eq!(got[2], data);
    }

    #[tokio::test]
    async fn a_long_header_block_goes_out_in_continuation_frames() {
        let fields = vec![field(":authority", "/x.sock"), (b"big".to_vec(), vec![b'v'; 40_000])];
        let mut block = Vec::new();
        for (n, v) in &fields {
            literal_without_indexing(n, v, &mut block);
        }
        let mut input = PREFACE.to_vec();
        let (a, rest) = block.split_at(MAX_FRAME);
        input.extend(Frame { kind: HEADERS, flags: END_STREAM, stream: 3, payload: a.to_vec() }.encode());
        for (i, chunk) in rest.chunks(MAX_FRAME).enumerate() {
            let last = (i + 1) * MAX_FRAME >= rest.len();
            input.extend(
                Frame {
                    kind: CONTINUATION,
                    flags: if last { END_HEADERS } else { 0 },
                    stream: 3,
                    payload: chunk.to_vec(),
                }
                .encode(),
            );
        }
        let mut out = Vec::new();
        rewrite_stream(&mut input.as_slice(), &mut out).await.unwrap();
        let got = frames(&out[24..]);
        assert!(got.len() >= 3 && got.iter().all(|f| f.payload.len() <= MAX_FRAME && f.stream == 3), "{got:?}");
        assert_eq!(got[0].flags, END_STREAM);
        assert!(got[1..].iter().all(|f| f.kind == CONTINUATION));
        assert_eq!(got.last().unwrap().flags, END_HEADERS);
        let joined: Vec<u8> = got.iter().flat_map(|f| f.payload.clone()).collect();
        assert_eq!(decode(&joined), vec![field(":authority", "localhost"), fields[1].clone()]);
    }

    /// Blocks of an encoder with a dynamic table (incremental indexing, as
    /// grpc-go's), read in order: the second refers to fields the first
    /// added, and both come out whole with the authority replaced.
    #[tokio::test]
    async fn blocks_that_index_into_the_clients_table_decode_in_order() {
        let request = |path: &str| {
            vec![
                field(":method", "POST"),
                field(":path", path),
                field(":authority", "/var/lib/kubelet/plugins_registry/csi.example-reg.sock"),
                field("content-type", "application/grpc"),
                field("user-agent", "grpc-go/1.72.0"),
                // Names outside HPACK's static table: these the encoder
                // adds to its dynamic table, and the next block indexes.
                field("te", "trailers"),
                field("grpc-accept-encoding", "identity,deflate,gzip"),
                field("x-plugin-watcher", "kubelet plugin registration, attempt one"),
            ]
        };
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        let mut sizes = Vec::new();
        for (stream, path) in [
            (1, "/pluginregistration.Registration/GetInfo"),
            (3, "/pluginregistration.Registration/NotifyRegistrationStatus"),
        ] {
            let fields = request(path);
            let block = encoder.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
            sizes.push(block.len());
            input.extend(Frame { kind: HEADERS, flags: END_HEADERS, stream, payload: block }.encode());
        }
        assert!(sizes[1] + 60 < sizes[0], "the second block indexes the first's fields: {sizes:?}");
        let mut out = Vec::new();
        rewrite_stream(&mut input.as_slice(), &mut out).await.unwrap();
        let got = frames(&out[24..]);
        let mut decoder = loona_hpack::Decoder::new();
        for (frame, path) in got.iter().zip([
            "/pluginregistration.Registration/GetInfo",
            "/pluginregistration.Registration/NotifyRegistrationStatus",
        ]) {
            let mut want = request(path);
            want[2] = field(":authority", "localhost");
            assert_eq!(decoder.decode(&frame.payload).unwrap(), want);
        }
    }

    #[tokio::test]
    async fn oversized_or_cut_frames_are_refused() {
        let mut out = Vec::new();
        // A header announcing a 16 MiB frame: refused without reading it.
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0xff, 0xff, 0xff, 0x0, 0, 0, 0, 0, 1]);
        let err = rewrite_stream(&mut input.as_slice(), &mut out).await.unwrap_err();
        assert!(matches!(err, RelayError::Frame(m) if m.contains("16 KiB")), "{err}");
        // A stream ending inside a frame header is not a clean end.
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0, 0, 5, 0x0]);
        let err = rewrite_stream(&mut input.as_slice(), &mut out).await.unwrap_err();
        assert!(matches!(err, RelayError::Frame(m) if m.contains("cut short")), "{err}");
        // Between frames it is.
        let mut input = PREFACE.to_vec();
        input.extend(Frame { kind: 0x0, flags: 0, stream: 1, payload: vec![1, 2] }.encode());
        rewrite_stream(&mut input.as_slice(), &mut out).await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_is_not_http2_or_interrupts_a_header_block_is_refused() {
        let mut out = Vec::new();
        let err = rewrite_stream(&mut &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &mut out).await.unwrap_err();
        assert!(matches!(err, RelayError::Preface), "{err}");

        let mut input = PREFACE.to_vec();
        input.extend(Frame { kind: HEADERS, flags: 0, stream: 1, payload: vec![0x82] }.encode());
        input.extend(Frame { kind: 0x0, flags: 0, stream: 1, payload: vec![] }.encode());
        let err = rewrite_stream(&mut input.as_slice(), &mut out).await.unwrap_err();
        assert!(matches!(err, RelayError::Frame(_)), "{err}");
    }
}
