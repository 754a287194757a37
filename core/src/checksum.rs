//! Block checksums: CRC32C over every block of a stripe.
//!
//! The writer computes them once, the chunkserver stores them beside the stripe
//! and checks them when it reads from disk, and the reader checks them again on
//! what arrives, so every byte handed to a caller was verified end to end.

/// CRC32C (Castagnoli) of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The checksum of each `block_size` block of `stripe`; the last block may be short.
pub fn block_checksums(stripe: &[u8], block_size: usize) -> Vec<u32> {
    stripe.chunks(block_size).map(crc32c).collect()
}

/// A block whose bytes do not match its stored checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("block {block} checksum mismatch: stored {expected:08x}, computed {actual:08x}")]
pub struct ChecksumMismatch {
    pub block: usize,
    pub expected: u32,
    pub actual: u32,
}

/// Verifies `data`, which starts at block `first_block` and is made of whole
/// blocks (the last may be short), against `expected[i]` for block
/// `first_block + i`.
pub fn verify_blocks(
    data: &[u8],
    first_block: usize,
    block_size: usize,
    expected: &[u32],
) -> Result<(), ChecksumMismatch> {
    for (i, chunk) in data.chunks(block_size).enumerate() {
        let actual = crc32c(chunk);
        let want = expected.get(i).copied();
        if want != Some(actual) {
            return Err(ChecksumMismatch { block: first_block + i, expected: want.unwrap_or(0), actual });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // RFC 3720 (iSCSI) test vector: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn a_flipped_byte_names_its_block() {
        let mut stripe: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let sums = block_checksums(&stripe, 256);
        assert_eq!(sums.len(), 4);
        assert!(verify_blocks(&stripe, 0, 256, &sums).is_ok());
        stripe[600] ^= 1;
        let err = verify_blocks(&stripe, 0, 256, &sums).unwrap_err();
        assert_eq!(err.block, 2);
        // Verifying a sub-range starting at block 2.
        let err = verify_blocks(&stripe[512..], 2, 256, &sums[2..]).unwrap_err();
        assert_eq!(err.block, 2);
        assert!(verify_blocks(&stripe[768..], 3, 256, &sums[3..]).is_ok());
    }

    #[test]
    fn missing_checksums_fail_verification() {
        let data = [1u8; 300];
        assert!(verify_blocks(&data, 0, 256, &block_checksums(&data, 256)[..1]).is_err());
    }
}
