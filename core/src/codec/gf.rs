//! Arithmetic in GF(2^8) with the primitive polynomial x^8 + x^4 + x^3 + x^2 + 1
//! (0x11D), the field most Reed-Solomon storage codes use (ISA-L, Jerasure,
//! Backblaze). Tables are built at compile time; nothing here allocates.

/// The reduction polynomial without its x^8 term.
const POLY: u16 = 0x11D;

const fn build_exp_log() -> ([u8; 512], [u8; 256]) {
    let mut exp = [0u8; 512];
    let mut log = [0u8; 256];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        log[x as usize] = i as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= POLY;
        }
        i += 1;
    }
    // Doubling the table lets `mul` skip a modulo.
    while i < 512 {
        exp[i] = exp[i - 255];
        i += 1;
    }
    (exp, log)
}

const EXP_LOG: ([u8; 512], [u8; 256]) = build_exp_log();
const EXP: [u8; 512] = EXP_LOG.0;
const LOG: [u8; 256] = EXP_LOG.1;

/// Product of two field elements.
#[inline]
pub const fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
}

/// Multiplicative inverse; `None` for zero, which has none.
#[inline]
pub const fn inv(a: u8) -> Option<u8> {
    if a == 0 {
        return None;
    }
    Some(EXP[255 - LOG[a as usize] as usize])
}

/// `a` raised to the power `n`.
pub const fn pow(a: u8, n: u32) -> u8 {
    if n == 0 {
        return 1;
    }
    if a == 0 {
        return 0;
    }
    EXP[((LOG[a as usize] as u32 * n) % 255) as usize]
}

const fn build_mul_table() -> [[u8; 256]; 256] {
    let mut t = [[0u8; 256]; 256];
    let mut a = 0;
    while a < 256 {
        let mut b = 0;
        while b < 256 {
            t[a][b] = mul(a as u8, b as u8);
            b += 1;
        }
        a += 1;
    }
    t
}

/// Full multiplication table: `MUL_TABLE[c][x] = c * x`. 64 KiB, used by the
/// portable kernel, where one lookup per byte beats log/exp arithmetic.
pub static MUL_TABLE: [[u8; 256]; 256] = build_mul_table();

/// The two 16-entry tables of products of `c` with every low nibble and every
/// high nibble: `c * x == lo[x & 15] ^ hi[x >> 4]`, because multiplication by
/// a constant is linear over GF(2). The SIMD kernels look these up with one
/// byte shuffle per nibble.
pub fn nibble_tables(c: u8) -> ([u8; 16], [u8; 16]) {
    let mut lo = [0u8; 16];
    let mut hi = [0u8; 16];
    for n in 0..16u8 {
        lo[n as usize] = mul(c, n);
        hi[n as usize] = mul(c, n << 4);
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Carry-less multiply then reduce: an independent definition of the product.
    fn slow_mul(a: u8, b: u8) -> u8 {
        let mut acc: u16 = 0;
        for bit in 0..8 {
            if b & (1 << bit) != 0 {
                acc ^= (a as u16) << bit;
            }
        }
        for bit in (8..16).rev() {
            if acc & (1 << bit) != 0 {
                acc ^= POLY << (bit - 8);
            }
        }
        acc as u8
    }

    #[test]
    fn table_product_matches_polynomial_product() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), slow_mul(a, b), "{a} * {b}");
                assert_eq!(MUL_TABLE[a as usize][b as usize], slow_mul(a, b));
            }
        }
    }

    #[test]
    fn every_nonzero_element_has_an_inverse() {
        assert_eq!(inv(0), None);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a).unwrap()), 1, "a = {a}");
        }
    }

    #[test]
    fn nibble_tables_compose_the_product() {
        for c in 0..=255u8 {
            let (lo, hi) = nibble_tables(c);
            for x in 0..=255u8 {
                assert_eq!(lo[(x & 15) as usize] ^ hi[(x >> 4) as usize], mul(c, x));
            }
        }
    }

    #[test]
    fn pow_agrees_with_repeated_multiplication() {
        for a in [0u8, 1, 2, 3, 0x53, 0xff] {
            let mut acc = 1u8;
            for n in 0..300 {
                assert_eq!(pow(a, n), acc, "{a}^{n}");
                acc = mul(acc, a);
            }
        }
    }
}
