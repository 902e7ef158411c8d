//! Element-wise activations: relu and leaky_relu, forward and backward. Any shape (the slices
//! are flat); backward takes the forward *input* so it needs nothing saved but `x`.

use crate::{check_len, KernelError, Real};

/// y = max(x, 0). x, y: same length.
pub fn relu_fwd<T: Real>(x: &[T], y: &mut [T]) -> Result<(), KernelError> {
    check_len("relu_fwd", "y", y, x.len())?;
    for (o, &v) in y.iter_mut().zip(x) {
        *o = if v > T::zero() { v } else { T::zero() };
    }
    Ok(())
}

/// dx = dy · [x > 0]. x, dy, dx: same length.
pub fn relu_bwd<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) -> Result<(), KernelError> {
    check_len("relu_bwd", "dy", dy, x.len())?;
    check_len("relu_bwd", "dx", dx, x.len())?;
    for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        *o = if v > T::zero() { g } else { T::zero() };
    }
    Ok(())
}

/// y = x if x > 0 else slope·x. x, y: same length.
pub fn leaky_relu_fwd<T: Real>(x: &[T], slope: T, y: &mut [T]) -> Result<(), KernelError> {
    check_len("leaky_relu_fwd", "y", y, x.len())?;
    for (o, &v) in y.iter_mut().zip(x) {
        *o = if v > T::zero() { v } else { slope * v };
    }
    Ok(())
}

/// dx = dy if x > 0 else slope·dy. x, dy, dx: same length.
pub fn leaky_relu_bwd<T: Real>(
    x: &[T],
    slope: T,
    dy: &[T],
    dx: &mut [T],
) -> Result<(), KernelError> {
    check_len("leaky_relu_bwd", "dy", dy, x.len())?;
    check_len("leaky_relu_bwd", "dx", dx, x.len())?;
    for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        *o = if v > T::zero() { g } else { slope * g };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gradcheck, rand_vec};

    #[test]
    fn hand_computed() {
        let x = [-2.0f32, -0.5, 0.0, 0.5, 3.0];
        let mut y = [0f32; 5];
        relu_fwd(&x, &mut y).unwrap();
        assert_eq!(y, [0.0, 0.0, 0.0, 0.5, 3.0]);
        leaky_relu_fwd(&x, 0.1, &mut y).unwrap();
        assert_eq!(y, [-0.2, -0.05, 0.0, 0.5, 3.0]);
        let mut dx = [0f32; 5];
        relu_bwd(&x, &[1.0; 5], &mut dx).unwrap();
        assert_eq!(dx, [0.0, 0.0, 0.0, 1.0, 1.0]);
        leaky_relu_bwd(&x, 0.1, &[2.0; 5], &mut dx).unwrap();
        assert_eq!(dx, [0.2, 0.2, 0.2, 2.0, 2.0]);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let mut y = [0f32; 2];
        let e = relu_fwd(&[1.0f32; 3], &mut y).unwrap_err();
        assert!(
            e.to_string()
                .contains("relu_fwd: `y` has 2 elements, expected 3"),
            "{e}"
        );
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Odd length; values kept away from the kink at 0 by construction of the range split.
        let x: Vec<f64> = rand_vec(1, 37, 0.05, 2.0)
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { *v } else { -v })
            .collect();
        gradcheck(
            "relu",
            std::slice::from_ref(&x),
            |i| {
                let mut y = vec![0.0; i[0].len()];
                relu_fwd(&i[0], &mut y).unwrap();
                y
            },
            |i, dy| {
                let mut dx = vec![0.0; i[0].len()];
                relu_bwd(&i[0], dy, &mut dx).unwrap();
                vec![dx]
            },
        );
        gradcheck(
            "leaky_relu",
            &[x],
            |i| {
                let mut y = vec![0.0; i[0].len()];
                leaky_relu_fwd(&i[0], 0.01, &mut y).unwrap();
                y
            },
            |i, dy| {
                let mut dx = vec![0.0; i[0].len()];
                leaky_relu_bwd(&i[0], 0.01, dy, &mut dx).unwrap();
                vec![dx]
            },
        );
    }
}
