//! The crate's one error type. Kernels validate lengths up front and return these instead of
//! panicking on an out-of-range index, so a shape bug upstream surfaces as a message naming the
//! kernel and the argument.

/// Errors from CPU kernels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    /// A slice does not have the length its shape implies.
    #[error("{kernel}: `{arg}` has {got} elements, expected {expected}")]
    Len {
        /// Kernel name, e.g. `conv2d_fwd`.
        kernel: &'static str,
        /// Argument name, e.g. `x`.
        arg: &'static str,
        /// Length implied by the shapes.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// Shapes or params are inconsistent (e.g. channels not divisible by groups, empty output).
    #[error("{kernel}: {reason}")]
    Shape {
        /// Kernel name.
        kernel: &'static str,
        /// What is wrong, in words.
        reason: String,
    },
}

/// Checks that `arg` has exactly `expected` elements.
pub fn check_len<T>(
    kernel: &'static str,
    arg: &'static str,
    s: &[T],
    expected: usize,
) -> Result<(), KernelError> {
    if s.len() == expected {
        Ok(())
    } else {
        Err(KernelError::Len {
            kernel,
            arg,
            expected,
            got: s.len(),
        })
    }
}
