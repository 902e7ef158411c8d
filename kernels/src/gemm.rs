//! The one CPU matrix-product entry point. Every GEMM in flowseg goes through [`gemm`], so the
//! backing library (the `gemm` crate with AVX-512 kernels today; OpenBLAS as an optional
//! feature later) is swapped in one place.
//!
//! Matrices are row-major and contiguous as stored; `Trans::Yes` reads the stored matrix as its
//! transpose through strides (no copy). Not here: batching, broadcasting, integer types.

use crate::{check_len, KernelError, Real};
use gemm::Parallelism;

/// Whether an operand is used as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trans {
    /// Use the matrix as stored.
    No,
    /// Use the transpose of the stored matrix.
    Yes,
}

/// C = op(A)·op(B), or C += op(A)·op(B) when `accumulate`.
///
/// * `a`: op(A) is [m×k]; stored as [m×k] (`Trans::No`) or [k×m] (`Trans::Yes`), row-major.
/// * `b`: op(B) is [k×n]; stored as [k×n] or [n×k].
/// * `c`: [m×n] row-major.
/// * `threads`: 1 runs on the calling thread (the right choice inside a parallel batch loop);
///   more splits the product over the rayon pool.
pub fn gemm<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    ta: Trans,
    b: &[T],
    tb: Trans,
    c: &mut [T],
    accumulate: bool,
    threads: usize,
) -> Result<(), KernelError> {
    check_len("gemm", "a", a, m * k)?;
    check_len("gemm", "b", b, k * n)?;
    check_len("gemm", "c", c, m * n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            c.fill(T::zero());
        }
        return Ok(());
    }
    // (row stride, column stride) of op(X) in elements.
    let (a_rs, a_cs) = match ta {
        Trans::No => (k as isize, 1),
        Trans::Yes => (1, m as isize),
    };
    let (b_rs, b_cs) = match tb {
        Trans::No => (n as isize, 1),
        Trans::Yes => (1, k as isize),
    };
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the lengths were checked above, so every (i, p), (p, j), (i, j) index reached
    // through these strides lies inside `a`, `b` and `c`; `c` is a unique borrow and does not
    // alias `a` or `b`; `T` is f32 or f64 (Real is sealed), which `gemm` supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// The rate of [`gemm`] on square f32 products of side `side` over rayon's pool, in GFLOP/s
/// (2 per multiply-add): the best of `runs` timed products after one warm-up. The benchmarks'
/// yardstick (the "floor" of `peer_step fuse-ab`, the GEMM-peak column of `conv_paths`); not
/// used by any kernel.
pub fn measured_gflops(side: usize, runs: usize) -> f64 {
    let a: Vec<f32> = (0..side * side).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..side * side).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0f32; side * side];
    let threads = rayon::current_num_threads();
    let mut best = f64::INFINITY;
    for i in 0..=runs.max(1) {
        let t = std::time::Instant::now();
        // Square, matching lengths: cannot fail.
        if gemm(
            side,
            side,
            side,
            &a,
            Trans::No,
            &b,
            Trans::No,
            &mut c,
            false,
            threads,
        )
        .is_err()
        {
            return f64::NAN;
        }
        if i > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    2.0 * (side * side * side) as f64 / best / 1e9
}

/// `dst` [cols×rows] = transpose of `src` [rows×cols], both row-major. Blocked so that both
/// sides stream through cache lines; used to hand the GEMM operands in the layout it is fast on
/// (a strided-transposed B runs 3–5× slower in the `gemm` crate on conv weight-gradient shapes).
pub fn transpose<T: Copy>(
    src: &[T],
    rows: usize,
    cols: usize,
    dst: &mut [T],
) -> Result<(), KernelError> {
    check_len("transpose", "src", src, rows * cols)?;
    check_len("transpose", "dst", dst, rows * cols)?;
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        let r1 = (r0 + B).min(rows);
        for c0 in (0..cols).step_by(B) {
            let c1 = (c0 + B).min(cols);
            for r in r0..r1 {
                let row = &src[r * cols..(r + 1) * cols];
                for c in c0..c1 {
                    dst[c * rows + r] = row[c];
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, rand_vec};

    fn naive(m: usize, n: usize, k: usize, a: &[f64], ta: Trans, b: &[f64], tb: Trans) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if ta == Trans::No {
                        a[i * k + p]
                    } else {
                        a[p * m + i]
                    };
                    let bv = if tb == Trans::No {
                        b[p * n + j]
                    } else {
                        b[j * k + p]
                    };
                    c[i * n + j] += av * bv;
                }
            }
        }
        c
    }

    #[test]
    fn hand_computed_2x2() {
        // [1 2; 3 4]·[5 6; 7 8] = [19 22; 43 50]
        let mut c = [0f32; 4];
        gemm(
            2,
            2,
            2,
            &[1., 2., 3., 4.],
            Trans::No,
            &[5., 6., 7., 8.],
            Trans::No,
            &mut c,
            false,
            1,
        )
        .unwrap();
        assert_eq!(c, [19., 22., 43., 50.]);
        // Accumulate adds onto what is there.
        gemm(
            2,
            2,
            2,
            &[1., 0., 0., 1.],
            Trans::No,
            &[1., 1., 1., 1.],
            Trans::No,
            &mut c,
            true,
            1,
        )
        .unwrap();
        assert_eq!(c, [20., 23., 44., 51.]);
    }

    #[test]
    fn all_transposes_match_naive_at_odd_sizes() {
        let (m, n, k) = (7, 13, 5);
        let a = rand_vec(1, m * k, -1.0, 1.0);
        let b = rand_vec(2, k * n, -1.0, 1.0);
        for ta in [Trans::No, Trans::Yes] {
            for tb in [Trans::No, Trans::Yes] {
                for threads in [1, 2] {
                    let mut c = vec![0.0; m * n];
                    gemm(m, n, k, &a, ta, &b, tb, &mut c, false, threads).unwrap();
                    let want = naive(m, n, k, &a, ta, &b, tb);
                    assert_close(&format!("{ta:?}{tb:?}"), &c, &want, 1e-12, 1e-12);
                }
            }
        }
    }

    #[test]
    fn transpose_matches_definition_at_odd_sizes() {
        let (r, c) = (37, 70);
        let src: Vec<u32> = (0..(r * c) as u32).collect();
        let mut dst = vec![0u32; r * c];
        transpose(&src, r, c, &mut dst).unwrap();
        for i in 0..r {
            for j in 0..c {
                assert_eq!(dst[j * r + i], src[i * c + j]);
            }
        }
        assert!(transpose(&src, r, c + 1, &mut dst).is_err());
    }

    #[test]
    fn bad_length_is_an_error() {
        let mut c = [0f32; 4];
        assert!(gemm(
            2,
            2,
            2,
            &[1.0; 3],
            Trans::No,
            &[1.0; 4],
            Trans::No,
            &mut c,
            false,
            1
        )
        .is_err());
    }
}
