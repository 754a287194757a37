//! ReadStripe responses on the wire without copying the stripe bytes.
//!
//! tonic encodes every message into its own buffer and decodes every response
//! from one, so each byte of a stripe read would be copied once more on each
//! side. For the one bulk RPC, ReadStripe, both ends frame the messages
//! themselves: the server sends the protobuf fields around the data as small
//! buffers and the data as the buffer it read from disk; the client parses the
//! response from the HTTP/2 frames as they arrive and keeps the data as slices
//! of them. The bytes on the wire are plain gRPC, so any gRPC client or server
//! interoperates: field order and packing follow the protobuf rules.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len};

/// The gRPC method path of ReadStripe.
pub const READ_STRIPE_PATH: &str = "/tessera.chunkserver.v1.Chunkserver/ReadStripe";

const OFFSET: u32 = 1;
const DATA: u32 = 2;
const BLOCK_CRCS: u32 = 3;
const BLOCK_SIZE: u32 = 4;
const STRIPE_LENGTH: u32 = 5;

/// One ReadStripeResponse with its data as slices of the frames it came in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadChunk {
    pub offset: u64,
    pub data: Vec<Bytes>,
    pub block_crcs: Vec<u32>,
    pub block_size: u32,
    pub stripe_length: u64,
}

impl ReadChunk {
    pub fn data_len(&self) -> usize {
        self.data.iter().map(|b| b.len()).sum()
    }
}

/// A ReadStripeResponse as three buffers: the gRPC message header and the
/// fields before the data, the data itself (not copied), and the fields after.
pub fn encode_response(
    offset: u64,
    data: Bytes,
    block_crcs: &[u32],
    block_size: u32,
    stripe_length: u64,
) -> [Bytes; 3] {
    let mut tail = BytesMut::with_capacity(16 + 4 * block_crcs.len());
    if !block_crcs.is_empty() {
        encode_key(BLOCK_CRCS, WireType::LengthDelimited, &mut tail);
        encode_varint(4 * block_crcs.len() as u64, &mut tail);
        for c in block_crcs {
            tail.put_u32_le(*c);
        }
    }
    if block_size != 0 {
        encode_key(BLOCK_SIZE, WireType::Varint, &mut tail);
        encode_varint(u64::from(block_size), &mut tail);
    }
    if stripe_length != 0 {
        encode_key(STRIPE_LENGTH, WireType::Varint, &mut tail);
        encode_varint(stripe_length, &mut tail);
    }
    let mut fields = 0;
    if offset != 0 {
        fields += key_len(OFFSET) + encoded_len_varint(offset);
    }
    if !data.is_empty() {
        fields += key_len(DATA) + encoded_len_varint(data.len() as u64) + data.len();
    }
    let message = fields + tail.len();
    let mut head = BytesMut::with_capacity(5 + 24);
    head.put_u8(0); // not compressed
    head.put_u32(message as u32);
    if offset != 0 {
        encode_key(OFFSET, WireType::Varint, &mut head);
        encode_varint(offset, &mut head);
    }
    if !data.is_empty() {
        encode_key(DATA, WireType::LengthDelimited, &mut head);
        encode_varint(data.len() as u64, &mut head);
    }
    [head.freeze(), data, tail.freeze()]
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("compressed messages are not supported")]
    Compressed,
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed ReadStripeResponse: {0}")]
    Malformed(&'static str),
}

/// Bytes received so far, as the frames they arrived in.
#[derive(Debug, Default)]
struct Rope {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Rope {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push_back(b);
        }
    }

    /// Copies the first `N` bytes without consuming them.
    fn peek<const N: usize>(&self) -> Option<[u8; N]> {
        if self.len < N {
            return None;
        }
        let mut out = [0u8; N];
        let mut at = 0;
        for p in &self.parts {
            let n = (N - at).min(p.len());
            out[at..at + n].copy_from_slice(&p[..n]);
            at += n;
            if at == N {
                break;
            }
        }
        Some(out)
    }

    /// The next `n` bytes, as zero-copy slices.
    fn take(&mut self, mut n: usize) -> Vec<Bytes> {
        debug_assert!(n <= self.len);
        self.len -= n;
        let mut out = Vec::new();
        while n > 0 {
            let front = self.parts.front_mut().expect("length is tracked");
            if front.len() <= n {
                n -= front.len();
                out.push(self.parts.pop_front().expect("front exists"));
            } else {
                out.push(front.split_to(n));
                n = 0;
            }
        }
        out
    }
}

/// A message's bytes being parsed field by field.
struct Fields {
    parts: VecDeque<Bytes>,
}

impl Fields {
    fn remaining(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    fn take(&mut self, n: usize) -> Result<Vec<Bytes>, FrameError> {
        if self.remaining() < n {
            return Err(FrameError::Malformed("field runs past the message"));
        }
        let mut rope = Rope { len: self.remaining(), parts: std::mem::take(&mut self.parts) };
        let out = rope.take(n);
        self.parts = rope.parts;
        Ok(out)
    }

    fn varint(&mut self) -> Result<u64, FrameError> {
        // Varints are at most 10 bytes; gather them contiguously first.
        let mut buf = [0u8; 10];
        let mut have = 0;
        for p in &self.parts {
            let n = (10 - have).min(p.len());
            buf[have..have + n].copy_from_slice(&p[..n]);
            have += n;
            if have == 10 {
                break;
            }
        }
        let mut slice = &buf[..have];
        let before = slice.len();
        let v = decode_varint(&mut slice).map_err(|_| FrameError::Malformed("bad varint"))?;
        let used = before - slice.remaining();
        self.take(used)?;
        Ok(v)
    }

    fn small(&mut self, n: usize) -> Result<Vec<u8>, FrameError> {
        Ok(self.take(n)?.iter().flat_map(|b| b.iter().copied()).collect())
    }
}

/// Parses ReadStripeResponse messages out of response body frames.
#[derive(Debug)]
pub struct ResponseDecoder {
    rope: Rope,
    max_message: usize,
}

impl ResponseDecoder {
    pub fn new(max_message: usize) -> Self {
        Self { rope: Rope::default(), max_message }
    }

    /// Adds a body frame.
    pub fn push(&mut self, frame: Bytes) {
        self.rope.push(frame);
    }

    /// Bytes received but not yet parsed into a message.
    pub fn buffered(&self) -> usize {
        self.rope.len
    }

    /// The next complete message, if all of it has arrived.
    pub fn next_chunk(&mut self) -> Result<Option<ReadChunk>, FrameError> {
        let Some(head) = self.rope.peek::<5>() else { return Ok(None) };
        if head[0] != 0 {
            return Err(FrameError::Compressed);
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > self.max_message {
            return Err(FrameError::TooLarge(len));
        }
        if self.rope.len < 5 + len {
            return Ok(None);
        }
        self.rope.take(5);
        let mut f = Fields { parts: self.rope.take(len).into() };
        let mut chunk = ReadChunk::default();
        while f.remaining() > 0 {
            let key = f.varint()?;
            let (tag, wire) = ((key >> 3) as u32, key & 7);
            match (tag, wire) {
                (OFFSET, 0) => chunk.offset = f.varint()?,
                (DATA, 2) => {
                    let n = f.varint()? as usize;
                    chunk.data.extend(f.take(n)?);
                }
                (BLOCK_CRCS, 2) => {
                    let n = f.varint()? as usize;
                    if !n.is_multiple_of(4) {
                        return Err(FrameError::Malformed("packed fixed32 length is not a multiple of 4"));
                    }
                    let raw = f.small(n)?;
                    chunk
                        .block_crcs
                        .extend(raw.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))));
                }
                (BLOCK_CRCS, 5) => {
                    let raw = f.small(4)?;
                    chunk.block_crcs.push(u32::from_le_bytes(raw.try_into().expect("4 bytes")));
                }
                (BLOCK_SIZE, 0) => chunk.block_size = f.varint()? as u32,
                (STRIPE_LENGTH, 0) => chunk.stripe_length = f.varint()?,
                // Unknown fields, from a newer server, are skipped.
                (_, 0) => {
                    f.varint()?;
                }
                (_, 1) => {
                    f.take(8)?;
                }
                (_, 2) => {
                    let n = f.varint()? as usize;
                    f.take(n)?;
                }
                (_, 5) => {
                    f.take(4)?;
                }
                _ => return Err(FrameError::Malformed("unsupported wire type")),
            }
        }
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cs::ReadStripeResponse;
    use prost::Message;

    fn concat(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn hand_framed_responses_are_plain_protobuf() {
        for (offset, len, crcs, bs, sl) in
            [(0u64, 0usize, vec![], 0u32, 0u64), (65536, 70_000, vec![1, 2], 65536, 1 << 20), (5, 1, vec![7], 64, 5)]
        {
            let data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
            let frames = encode_response(offset, data.clone(), &crcs, bs, sl);
            let wire = concat(&frames);
            assert_eq!(wire[0], 0);
            let n = u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
            assert_eq!(n, wire.len() - 5);
            let msg = ReadStripeResponse::decode(&wire[5..]).unwrap();
            let want = ReadStripeResponse { offset, data, block_crcs: crcs, block_size: bs, stripe_length: sl };
            assert_eq!(msg, want);
        }
    }

    #[test]
    fn the_decoder_reads_prost_encoded_messages_split_anywhere() {
        let msgs: Vec<ReadStripeResponse> = (0..3u32)
            .map(|i| ReadStripeResponse {
                offset: u64::from(i) * 4096,
                data: Bytes::from(vec![i as u8; 4096 + i as usize]),
                block_crcs: vec![i, i + 1],
                block_size: 4096,
                stripe_length: 1 << 20,
            })
            .collect();
        let mut wire = Vec::new();
        for m in &msgs {
            wire.push(0u8);
            wire.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
            m.encode(&mut wire).unwrap();
        }
        for split in [1usize, 3, 5, 7, 100, 4099, wire.len()] {
            let mut d = ResponseDecoder::new(1 << 20);
            let mut got = Vec::new();
            for piece in wire.chunks(split) {
                d.push(Bytes::copy_from_slice(piece));
                while let Some(c) = d.next_chunk().unwrap() {
                    got.push(c);
                }
            }
            assert_eq!(d.buffered(), 0);
            assert_eq!(got.len(), 3, "split {split}");
            for (c, m) in got.iter().zip(&msgs) {
                assert_eq!(c.offset, m.offset);
                assert_eq!(concat(&c.data), m.data.to_vec());
                assert_eq!(c.block_crcs, m.block_crcs);
                assert_eq!((c.block_size, c.stripe_length), (m.block_size, m.stripe_length));
            }
        }
    }

    #[test]
    fn oversized_and_compressed_messages_are_refused() {
        let mut d = ResponseDecoder::new(10);
        d.push(Bytes::from_static(&[0, 0, 0, 0, 11]));
        assert_eq!(d.next_chunk(), Err(FrameError::TooLarge(11)));
        let mut d = ResponseDecoder::new(10);
        d.push(Bytes::from_static(&[1, 0, 0, 0, 1, 0]));
        assert_eq!(d.next_chunk(), Err(FrameError::Compressed));
    }
}
