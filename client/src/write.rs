//! Writing an item: encode, checksum, and stream the n stripes to their
//! chunkservers in parallel. Done only when every stripe is durable.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tessera_core::checksum::block_checksums;
use tessera_core::codec::ErasureCoder;
use tessera_core::ids::{ItemId, StripeId};
use tessera_core::layout::Layout;
use tessera_proto::cs;
use tracing::debug;

use crate::connect::ServerHandle;
use crate::{ClientError, ItemLocation, RequestClass, StripeClient};

/// Attempts per stripe when the server is momentarily unavailable.
const ATTEMPTS: u32 = 3;

/// Writes an item's stripes to `servers` (one per stripe index; "" where no
/// server was placed). Succeeds when at least `min` stripes are durable; the
/// location then names only the stripes stored.
#[tracing::instrument(level = "debug", skip_all, fields(%item, len = data.len()), err(level = "debug"))]
pub(crate) async fn write_item(
    client: &StripeClient,
    item: ItemId,
    layout: Layout,
    data: Bytes,
    servers: &[String],
    min: usize,
) -> Result<ItemLocation, ClientError> {
    let n = layout.n();
    if servers.len() != n {
        return Err(ClientError::Locations { item, expected: n, got: servers.len() });
    }
    let len = data.len() as u64;
    let stripes = encode(client, item, layout, data)?;
    let targets: Vec<(usize, String)> = servers.iter().cloned().enumerate().filter(|(_, s)| !s.is_empty()).collect();
    let results = write_each(client, item, layout, &stripes, &targets).await;
    let mut stored = vec![None; n];
    let mut failures = Vec::new();
    for ((i, addr), r) in targets.iter().zip(results) {
        match r {
            Ok(()) => stored[*i] = Some(addr.clone()),
            Err(e) => {
                debug!(stripe = %StripeId::new(item, *i as u16), error = %e, "stripe write failed");
                failures.push(e);
            }
        }
    }
    let (count, needed) = (stored.iter().flatten().count(), min.min(n));
    if count < needed {
        // Every stripe was needed (a plain write or a repair): the first
        // failure is the answer, as it always was.
        if needed == n && !failures.is_empty() {
            return Err(failures.remove(0));
        }
        if failures.is_empty() {
            return Err(ClientError::Locations { item, expected: needed, got: targets.len() });
        }
        return Err(ClientError::TooFewStored { item, stored: count, needed, failures });
    }
    debug!(stored = count, "item written");
    Ok(ItemLocation { item, layout, item_len: len, servers: stored })
}

/// Rebuilds the stripes `targets` names (index, server) of an item from the
/// stripes that are left: reads the item (a degraded read if data stripes are
/// missing), encodes it again and writes just those stripes. Repair uses it.
pub(crate) async fn rebuild_stripes(
    client: &StripeClient,
    loc: &ItemLocation,
    targets: &[(usize, String)],
) -> Result<(), ClientError> {
    let (data, _) = client.read(loc, 0..loc.item_len, tessera_core::read_plan::ReadMode::Normal).await?;
    let bytes = match data.parts() {
        [one] => one.clone(),
        _ => Bytes::from(data.to_vec()),
    };
    let stripes = encode(client, loc.item, loc.layout, bytes)?;
    write_stripes(client, loc.item, loc.layout, stripes, targets).await
}

/// All n stripes of an item: the data cut without copying (a short item is
/// zero-padded), then the parity.
fn encode(client: &StripeClient, item: ItemId, layout: Layout, data: Bytes) -> Result<Vec<Bytes>, ClientError> {
    let (k, m) = (layout.k(), layout.m());
    let len = data.len() as u64;
    if len == 0 || len > layout.item_capacity() {
        return Err(ClientError::Range { item, start: 0, end: len, len: layout.item_capacity() });
    }
    let s = layout.stripe_len(len)?;
    let padded = if data.len() == k * s {
        data
    } else {
        let mut b = BytesMut::zeroed(k * s);
        b[..data.len()].copy_from_slice(&data);
        b.freeze()
    };
    let mut stripes: Vec<Bytes> = (0..k).map(|i| padded.slice(i * s..(i + 1) * s)).collect();
    let mut parity: Vec<BytesMut> = (0..m).map(|_| BytesMut::zeroed(s)).collect();
    {
        let refs: Vec<&[u8]> = stripes.iter().map(|b| &b[..]).collect();
        let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(|b| &mut b[..]).collect();
        client.codec(k, m).encode(&refs, &mut outs)?;
    }
    stripes.extend(parity.into_iter().map(BytesMut::freeze));
    Ok(stripes)
}

/// Writes the stripes `targets` names, all of them.
async fn write_stripes(
    client: &StripeClient,
    item: ItemId,
    layout: Layout,
    stripes: Vec<Bytes>,
    targets: &[(usize, String)],
) -> Result<(), ClientError> {
    write_each(client, item, layout, &stripes, targets).await.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}

/// Writes the stripes `targets` names, in parallel, each within the write
/// deadline. Waits for every one even when one fails, so no write is left
/// running on a server after this returns.
async fn write_each(
    client: &StripeClient,
    item: ItemId,
    layout: Layout,
    stripes: &[Bytes],
    targets: &[(usize, String)],
) -> Vec<Result<(), ClientError>> {
    let cfg = client.config();
    let writes: Vec<_> = targets
        .iter()
        .map(|(i, addr)| {
            let id = StripeId::new(item, *i as u16);
            let bytes = stripes[*i].clone();
            async move {
                let h = client.server(addr)?;
                let deadline = cfg.write_timeout;
                match tokio::time::timeout(
                    deadline,
                    write_stripe(&h, id, bytes, layout.block_size(), cfg.class, cfg.write_chunk),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(ClientError::Write {
                        stripe: id,
                        server: addr.clone(),
                        code: tonic::Code::DeadlineExceeded,
                        message: format!("no answer within {deadline:?}"),
                    }),
                }
            }
        })
        .collect();
    futures::future::join_all(writes).await
}

async fn write_stripe(
    server: &ServerHandle,
    id: StripeId,
    bytes: Bytes,
    block_size: usize,
    class: RequestClass,
    chunk: usize,
) -> Result<(), ClientError> {
    let header = cs::StripeHeader {
        stripe: Some(cs::StripeRef { item: id.item.as_bytes().to_vec().into(), index: id.index as u32 }),
        length: bytes.len() as u64,
        block_size: block_size as u32,
        block_crcs: block_checksums(&bytes, block_size),
        class: class as i32,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let first = cs::WriteStripeRequest { part: Some(cs::write_stripe_request::Part::Header(header.clone())) };
        // A plain Vec of messages (the data as zero-copy slices): an iterator
        // adapter here would cost the future its `Send`.
        let mut messages = vec![first];
        messages.extend((0..bytes.len()).step_by(chunk.max(1)).map(|at| cs::WriteStripeRequest {
            part: Some(cs::write_stripe_request::Part::Data(bytes.slice(at..(at + chunk).min(bytes.len())))),
        }));
        let messages = futures::stream::iter(messages);
        match server.client().write_stripe(messages).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::Unavailable && attempt < ATTEMPTS => {
                debug!(stripe = %id, server = %server.addr, attempt, "chunkserver unavailable; retrying the write");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            Err(s) => {
                return Err(ClientError::Write {
                    stripe: id,
                    server: server.addr.clone(),
                    code: s.code(),
                    message: s.message().to_string(),
                });
            }
        }
    }
}
