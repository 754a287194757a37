//! Where every byte lives: the arithmetic from a version's packed bytes to
//! items, from an item's bytes to stripes, and from stripe bytes to blocks.
//!
//! A version's files are packed into one logical byte stream (small files side
//! by side, large files end to end); the stream is cut into items of k x stripe
//! unit bytes. Item i's data stripe d holds bytes `[d * s, (d + 1) * s)` of the
//! item, where s is the item's stripe length: the stripe unit for full items,
//! less for a short last item (rounded up to 64 bytes, the codec's alignment;
//! the bytes past the item's end are zeros). Blocks are the checksum unit inside
//! a stripe. Nothing here allocates or performs I/O.

use std::ops::Range;

/// Stripe lengths are multiples of this so SIMD kernels never need a ragged tail.
pub const STRIPE_ALIGN: usize = 64;
/// Default bytes per stripe per item.
pub const DEFAULT_STRIPE_UNIT: usize = 1 << 20;
/// Default checksum block.
pub const DEFAULT_BLOCK_SIZE: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("k must be at least 1")]
    ZeroDataStripes,
    #[error("m must be at least 1")]
    ZeroParityStripes,
    #[error("k + m = {0} exceeds the codec's limit of {max}", max = crate::codec::MAX_STRIPES)]
    TooManyStripes(usize),
    #[error("stripe unit {0} is not a positive multiple of {STRIPE_ALIGN} bytes")]
    StripeUnit(usize),
    #[error("block size {0} is not a positive multiple of {STRIPE_ALIGN} bytes")]
    BlockSize(usize),
    #[error("item length {len} exceeds the item capacity {capacity}")]
    ItemTooLong { len: u64, capacity: u64 },
    #[error("range {start}..{end} is outside the item's {len} bytes")]
    RangeOutOfItem { start: u64, end: u64, len: u64 },
}

/// The erasure layout of a version: code shape, stripe unit and block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    k: usize,
    m: usize,
    stripe_unit: usize,
    block_size: usize,
}

/// A run of bytes of one data stripe, and where they sit in the item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataExtent {
    pub stripe: usize,
    /// Offsets inside the stripe.
    pub stripe_range: Range<usize>,
    /// Offset of `stripe_range.start` inside the item.
    pub item_offset: u64,
}

impl Layout {
    pub fn new(k: usize, m: usize, stripe_unit: usize, block_size: usize) -> Result<Self, LayoutError> {
        if k == 0 {
            return Err(LayoutError::ZeroDataStripes);
        }
        if m == 0 {
            return Err(LayoutError::ZeroParityStripes);
        }
        if k + m > crate::codec::MAX_STRIPES {
            return Err(LayoutError::TooManyStripes(k + m));
        }
        if stripe_unit == 0 || !stripe_unit.is_multiple_of(STRIPE_ALIGN) {
            return Err(LayoutError::StripeUnit(stripe_unit));
        }
        if block_size == 0 || !block_size.is_multiple_of(STRIPE_ALIGN) {
            return Err(LayoutError::BlockSize(block_size));
        }
        Ok(Self { k, m, stripe_unit, block_size })
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn m(&self) -> usize {
        self.m
    }
    pub fn n(&self) -> usize {
        self.k + self.m
    }
    pub fn stripe_unit(&self) -> usize {
        self.stripe_unit
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Bytes of packed data one full item holds.
    pub fn item_capacity(&self) -> u64 {
        (self.k * self.stripe_unit) as u64
    }

    /// Number of items a packed stream of `total` bytes needs.
    pub fn item_count(&self, total: u64) -> u64 {
        total.div_ceil(self.item_capacity())
    }

    /// Length of item `index` of a packed stream of `total` bytes (the last
    /// item may be short). Zero past the end.
    pub fn item_len(&self, total: u64, index: u64) -> u64 {
        let start = index.saturating_mul(self.item_capacity());
        total.saturating_sub(start).min(self.item_capacity())
    }

    /// Which item holds packed offset `offset`, and where in it.
    pub fn locate(&self, offset: u64) -> (u64, u64) {
        (offset / self.item_capacity(), offset % self.item_capacity())
    }

    /// The items a packed range touches, each with the range inside it.
    pub fn items_of(&self, range: Range<u64>) -> impl Iterator<Item = (u64, Range<u64>)> + '_ {
        let cap = self.item_capacity();
        let first = range.start / cap;
        let last = if range.end > range.start { (range.end - 1) / cap } else { first.wrapping_sub(1) };
        (first..=last).filter(move |_| range.end > range.start).map(move |i| {
            let base = i * cap;
            let s = range.start.max(base) - base;
            let e = range.end.min(base + cap) - base;
            (i, s..e)
        })
    }

    /// Bytes per stripe of an item of `item_len` bytes.
    pub fn stripe_len(&self, item_len: u64) -> Result<usize, LayoutError> {
        if item_len > self.item_capacity() {
            return Err(LayoutError::ItemTooLong { len: item_len, capacity: self.item_capacity() });
        }
        let per = (item_len as usize).div_ceil(self.k);
        Ok(per.div_ceil(STRIPE_ALIGN) * STRIPE_ALIGN)
    }

    /// The data stripes holding `range` of an item of `item_len` bytes, in item order.
    pub fn data_extents(&self, item_len: u64, range: Range<u64>) -> Result<Vec<DataExtent>, LayoutError> {
        if range.start > range.end || range.end > item_len {
            return Err(LayoutError::RangeOutOfItem { start: range.start, end: range.end, len: item_len });
        }
        let s = self.stripe_len(item_len)? as u64;
        let mut out = Vec::new();
        let mut pos = range.start;
        while pos < range.end {
            let stripe = (pos / s) as usize;
            let within = pos % s;
            let take = (s - within).min(range.end - pos);
            out.push(DataExtent { stripe, stripe_range: within as usize..(within + take) as usize, item_offset: pos });
            pos += take;
        }
        Ok(out)
    }

    /// Number of checksum blocks in a stripe of `stripe_len` bytes.
    pub fn block_count(&self, stripe_len: usize) -> usize {
        stripe_len.div_ceil(self.block_size)
    }

    /// `range` widened to whole blocks, clipped to the stripe's length: the
    /// smallest range a reader can verify.
    pub fn block_aligned(&self, range: Range<usize>, stripe_len: usize) -> Range<usize> {
        align_to_blocks(range, self.block_size, stripe_len)
    }
}

/// `range` widened to whole blocks of `block_size`, clipped to `stripe_len`.
pub fn align_to_blocks(range: Range<usize>, block_size: usize, stripe_len: usize) -> Range<usize> {
    if range.is_empty() {
        return range.start..range.start;
    }
    let start = range.start / block_size * block_size;
    let end = range.end.div_ceil(block_size) * block_size;
    start..end.min(stripe_len)
}

/// The blocks `range` (block-aligned at the start) covers.
pub fn blocks_of(range: &Range<usize>, block_size: usize) -> Range<usize> {
    range.start / block_size..range.end.div_ceil(block_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rs63() -> Layout {
        Layout::new(6, 3, 1 << 20, 64 << 10).unwrap()
    }

    #[test]
    fn bad_layouts_name_the_parameter() {
        assert_eq!(Layout::new(0, 3, 64, 64), Err(LayoutError::ZeroDataStripes));
        assert_eq!(Layout::new(6, 0, 64, 64), Err(LayoutError::ZeroParityStripes));
        assert_eq!(Layout::new(6, 3, 100, 64), Err(LayoutError::StripeUnit(100)));
        assert_eq!(Layout::new(6, 3, 64, 0), Err(LayoutError::BlockSize(0)));
        assert_eq!(Layout::new(250, 7, 64, 64), Err(LayoutError::TooManyStripes(257)));
    }

    #[test]
    fn full_item_maps_to_whole_stripes() {
        let l = rs63();
        assert_eq!(l.stripe_len(6 << 20).unwrap(), 1 << 20);
        let ext = l.data_extents(6 << 20, 0..6 << 20).unwrap();
        assert_eq!(ext.len(), 6);
        assert!(ext.iter().enumerate().all(|(i, e)| e.stripe == i && e.stripe_range == (0..1 << 20)));
    }

    #[test]
    fn short_last_item_uses_short_stripes() {
        let l = rs63();
        // 1000 bytes over 6 stripes: 167 per stripe, rounded up to 192.
        assert_eq!(l.stripe_len(1000).unwrap(), 192);
        let total = (6 << 20) * 2 + 1000;
        assert_eq!(l.item_count(total), 3);
        assert_eq!(l.item_len(total, 2), 1000);
        assert_eq!(l.item_len(total, 3), 0);
        assert!(matches!(l.stripe_len((6 << 20) + 1), Err(LayoutError::ItemTooLong { .. })));
    }

    #[test]
    fn ranges_outside_the_item_are_rejected() {
        let l = rs63();
        assert!(matches!(l.data_extents(100, 50..101), Err(LayoutError::RangeOutOfItem { .. })));
    }

    #[test]
    fn block_alignment_widens_and_clips() {
        assert_eq!(align_to_blocks(10..70_000, 65536, 100_000), 0..100_000);
        assert_eq!(align_to_blocks(65536..65537, 65536, 1 << 20), 65536..131072);
        assert_eq!(blocks_of(&(65536..131072), 65536), 1..2);
        assert_eq!(blocks_of(&(0..100), 65536), 0..1);
    }

    proptest! {
        /// Extents tile the requested range exactly, in order, each inside one
        /// stripe, and the item's bytes are where the layout says.
        #[test]
        fn extents_tile_the_range(k in 1usize..12, unit_blocks in 1usize..8, len in 1u64..20_000, a in 0u64..20_000, b in 0u64..20_000) {
            let l = Layout::new(k, 2, unit_blocks * 64, 64).unwrap();
            let len = len.min(l.item_capacity());
            let (s, e) = (a.min(b) % (len + 1), a.max(b) % (len + 1));
            let (s, e) = (s.min(e), s.max(e));
            let ext = l.data_extents(len, s..e).unwrap();
            let sl = l.stripe_len(len).unwrap();
            prop_assert!(sl * k >= len as usize && sl <= l.stripe_unit());
            let mut pos = s;
            for x in &ext {
                prop_assert_eq!(x.item_offset, pos);
                prop_assert!(x.stripe < k && x.stripe_range.end <= sl && !x.stripe_range.is_empty());
                prop_assert_eq!(x.item_offset, (x.stripe * sl + x.stripe_range.start) as u64);
                pos += x.stripe_range.len() as u64;
            }
            prop_assert_eq!(pos, e);
        }

        #[test]
        fn items_of_covers_packed_ranges(cap_units in 1usize..4, start in 0u64..5000, len in 0u64..5000) {
            let l = Layout::new(3, 1, cap_units * 64, 64).unwrap();
            let cap = l.item_capacity();
            let parts: Vec<_> = l.items_of(start..start + len).collect();
            let sum: u64 = parts.iter().map(|(_, r)| r.end - r.start).sum();
            prop_assert_eq!(sum, len);
            for (i, r) in &parts {
                prop_assert!(r.end <= cap && r.start < r.end);
                prop_assert_eq!(l.locate(i * cap + r.start), (*i, r.start));
            }
        }
    }
}
