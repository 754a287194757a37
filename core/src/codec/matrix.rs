//! The generator matrix of the code and the linear algebra that turns any k
//! surviving stripes back into the missing ones.
//!
//! The code is systematic: the first k rows of the n x k generator are the
//! identity, so data stripes are the item's bytes unchanged. Parity row `k + i`
//! is the Cauchy row `1 / ((k + i) xor j)`, with columns scaled so that the
//! first parity row is all ones. Every square submatrix of a Cauchy
//! matrix is invertible, so any k rows of [I; C] are too: the code is MDS and
//! every erasure pattern of up to m stripes can be rebuilt.

use super::gf;

/// A dense row-major matrix over GF(2^8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    cells: Vec<u8>,
}

impl Matrix {
    pub fn zero(rows: usize, cols: usize) -> Self {
        Self { rows, cols, cells: vec![0; rows * cols] }
    }

    pub fn identity(n: usize) -> Self {
        let mut m = Self::zero(n, n);
        for i in 0..n {
            m.set(i, i, 1);
        }
        m
    }

    /// The n x k systematic Cauchy generator. Requires `k + m <= 256`, which the
    /// codec checks before calling.
    pub fn generator(k: usize, m: usize) -> Self {
        let n = k + m;
        debug_assert!(n <= 256);
        let mut g = Self::zero(n, k);
        for i in 0..k {
            g.set(i, i, 1);
        }
        for r in k..n {
            for c in 0..k {
                // r >= k > c, so r ^ c != 0 and the inverse exists.
                let v = gf::inv((r ^ c) as u8).expect("r xor c is nonzero");
                g.set(r, c, v);
            }
        }
        // Scale each column so the first parity row is all ones: that parity
        // is the plain XOR of the data, which the kernels compute without
        // multiplying, and rebuilding one lost data stripe from it is XORs
        // too. Scaling columns by nonzero constants keeps every square
        // submatrix of the parity rows invertible, so the code stays MDS.
        for c in 0..k {
            let s = gf::inv(g.get(k, c)).expect("Cauchy entries are nonzero");
            for r in k..n {
                let v = gf::mul(g.get(r, c), s);
                g.set(r, c, v);
            }
        }
        // Then scale the other parity rows so their first column is one too:
        // eight of RS(6,3)'s eighteen coefficients become plain XORs, the most
        // an MDS code with an all-ones row allows (a second one in a row would
        // make a singular 2x2 with the ones row). Scaling a row by a nonzero
        // constant scales the determinant of every square submatrix through
        // it by that constant, so the code stays MDS.
        for r in k + 1..n {
            let s = gf::inv(g.get(r, 0)).expect("Cauchy entries are nonzero");
            for c in 0..k {
                let v = gf::mul(g.get(r, c), s);
                g.set(r, c, v);
            }
        }
        g
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    #[inline]
    pub fn get(&self, r: usize, c: usize) -> u8 {
        self.cells[r * self.cols + c]
    }

    #[inline]
    pub fn set(&mut self, r: usize, c: usize, v: u8) {
        self.cells[r * self.cols + c] = v;
    }

    pub fn row(&self, r: usize) -> &[u8] {
        &self.cells[r * self.cols..(r + 1) * self.cols]
    }

    /// The matrix made of the given rows of `self`, in that order.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let mut out = Self::zero(rows.len(), self.cols);
        for (i, &r) in rows.iter().enumerate() {
            out.cells[i * self.cols..(i + 1) * self.cols].copy_from_slice(self.row(r));
        }
        out
    }

    /// Row vector `v` times `self`.
    pub fn left_mul_row(&self, v: &[u8]) -> Vec<u8> {
        debug_assert_eq!(v.len(), self.rows);
        let mut out = vec![0u8; self.cols];
        for (r, &coef) in v.iter().enumerate() {
            if coef == 0 {
                continue;
            }
            for (c, o) in out.iter_mut().enumerate() {
                *o ^= gf::mul(coef, self.get(r, c));
            }
        }
        out
    }

    /// Inverse by Gauss-Jordan elimination; `None` if the matrix is singular.
    pub fn inverse(&self) -> Option<Self> {
        assert_eq!(self.rows, self.cols, "only square matrices have inverses");
        let n = self.rows;
        let mut a = self.clone();
        let mut inv = Self::identity(n);
        for col in 0..n {
            let pivot = (col..n).find(|&r| a.get(r, col) != 0)?;
            if pivot != col {
                a.swap_rows(pivot, col);
                inv.swap_rows(pivot, col);
            }
            let scale = gf::inv(a.get(col, col))?;
            a.scale_row(col, scale);
            inv.scale_row(col, scale);
            for r in 0..n {
                let factor = a.get(r, col);
                if r != col && factor != 0 {
                    a.add_scaled_row(r, col, factor);
                    inv.add_scaled_row(r, col, factor);
                }
            }
        }
        Some(inv)
    }

    fn swap_rows(&mut self, a: usize, b: usize) {
        for c in 0..self.cols {
            self.cells.swap(a * self.cols + c, b * self.cols + c);
        }
    }

    fn scale_row(&mut self, r: usize, s: u8) {
        for c in 0..self.cols {
            let v = self.get(r, c);
            self.set(r, c, gf::mul(v, s));
        }
    }

    /// row[dst] += factor * row[src]
    fn add_scaled_row(&mut self, dst: usize, src: usize, factor: u8) {
        for c in 0..self.cols {
            let v = self.get(dst, c) ^ gf::mul(factor, self.get(src, c));
            self.set(dst, c, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(a: &Matrix, b: &Matrix) -> Matrix {
        let mut out = Matrix::zero(a.rows(), b.cols());
        for r in 0..a.rows() {
            let row = b.left_mul_row(a.row(r));
            for (c, v) in row.into_iter().enumerate() {
                out.set(r, c, v);
            }
        }
        out
    }

    #[test]
    fn every_k_rows_of_the_generator_are_invertible() {
        for (k, m) in [(2, 1), (4, 2), (6, 3), (10, 4), (8, 8)] {
            let g = Matrix::generator(k, m);
            let n = k + m;
            // Walk every k-subset of the n rows.
            let mut subset: Vec<usize> = (0..k).collect();
            loop {
                let s = g.select_rows(&subset);
                let inv = s.inverse().unwrap_or_else(|| panic!("rows {subset:?} of RS({k},{m}) are singular"));
                assert_eq!(product(&s, &inv), Matrix::identity(k));
                // Next combination in lexicographic order.
                let mut i = k;
                while i > 0 && subset[i - 1] == n - k + i - 1 {
                    i -= 1;
                }
                if i == 0 {
                    break;
                }
                subset[i - 1] += 1;
                for j in i..k {
                    subset[j] = subset[j - 1] + 1;
                }
            }
        }
    }

    #[test]
    fn the_first_parity_is_the_xor_of_the_data_and_the_first_column_is_ones() {
        for (k, m) in [(6, 3), (10, 4), (1, 1)] {
            let g = Matrix::generator(k, m);
            assert!(g.row(k).iter().all(|&x| x == 1), "RS({k},{m})");
            for r in k..k + m {
                assert_eq!(g.get(r, 0), 1, "RS({k},{m}): parity row {r} starts with a one");
            }
        }
    }

    #[test]
    fn singular_matrix_has_no_inverse() {
        let mut m = Matrix::zero(2, 2);
        m.set(0, 0, 3);
        m.set(0, 1, 5);
        m.set(1, 0, 3);
        m.set(1, 1, 5);
        assert!(m.inverse().is_none());
    }
}
