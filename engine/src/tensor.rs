//! Tensors as the engine sees them: a [`TensorSpec`] (dtype + static shape, known at plan time)
//! and, at run time, a [`Tensor`] holding contiguous host data. Shapes are static: batch, crop
//! and class counts come from the graph; data-dependent selection is values, never shapes.
//!
//! Not here: devices, arenas and views (plan/exec), strided layouts (every kernel takes contiguous
//! NCHW).

use flowseg_kernels::Nchw;
use std::fmt;

/// Element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: activations, parameters, losses.
    F32,
    /// 32-bit signed integer: label maps, indices.
    I32,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
        })
    }
}

/// Static type of a tensor: dtype and shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorSpec {
    /// Element type.
    pub dtype: DType,
    /// Extents, outermost first (NCHW for images; `[]` for a scalar).
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// An f32 tensor of this shape.
    pub fn f32(shape: &[usize]) -> Self {
        TensorSpec {
            dtype: DType::F32,
            shape: shape.to_vec(),
        }
    }
    /// An i32 tensor of this shape.
    pub fn i32(shape: &[usize]) -> Self {
        TensorSpec {
            dtype: DType::I32,
            shape: shape.to_vec(),
        }
    }
    /// An f32 scalar (a loss).
    pub fn scalar() -> Self {
        TensorSpec::f32(&[])
    }
    /// An f32 tensor of an NCHW shape.
    pub fn nchw(s: Nchw) -> Self {
        TensorSpec::f32(&[s.n, s.c, s.h, s.w])
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True when it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The shape as NCHW, if it has rank 4.
    pub fn as_nchw(&self) -> Option<Nchw> {
        match self.shape[..] {
            [n, c, h, w] => Some(Nchw::new(n, c, h, w)),
            _ => None,
        }
    }
}

impl fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Contiguous host data.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// f32 elements.
    F32(Vec<f32>),
    /// i32 elements.
    I32(Vec<i32>),
}

/// A tensor on the host: its spec and its data (lengths always agree).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    spec: TensorSpec,
    data: Data,
}

impl Tensor {
    /// Zeros of this spec.
    pub fn zeros(spec: &TensorSpec) -> Self {
        let data = match spec.dtype {
            DType::F32 => Data::F32(vec![0.0; spec.len()]),
            DType::I32 => Data::I32(vec![0; spec.len()]),
        };
        Tensor {
            spec: spec.clone(),
            data,
        }
    }

    /// An f32 tensor from data; `None` when the length does not match the shape.
    pub fn from_f32(shape: &[usize], v: Vec<f32>) -> Option<Self> {
        let spec = TensorSpec::f32(shape);
        (spec.len() == v.len()).then_some(Tensor {
            spec,
            data: Data::F32(v),
        })
    }

    /// An i32 tensor from data; `None` when the length does not match the shape.
    pub fn from_i32(shape: &[usize], v: Vec<i32>) -> Option<Self> {
        let spec = TensorSpec::i32(shape);
        (spec.len() == v.len()).then_some(Tensor {
            spec,
            data: Data::I32(v),
        })
    }

    /// Its spec.
    pub fn spec(&self) -> &TensorSpec {
        &self.spec
    }

    /// The f32 elements, if it is f32.
    pub fn f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            Data::I32(_) => None,
        }
    }

    /// The f32 elements, mutably, if it is f32.
    pub fn f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            Data::F32(v) => Some(v),
            Data::I32(_) => None,
        }
    }

    /// The i32 elements, if it is i32.
    pub fn i32(&self) -> Option<&[i32]> {
        match &self.data {
            Data::I32(v) => Some(v),
            Data::F32(_) => None,
        }
    }

    /// The i32 elements, mutably, if it is i32.
    pub fn i32_mut(&mut self) -> Option<&mut [i32]> {
        match &mut self.data {
            Data::I32(v) => Some(v),
            Data::F32(_) => None,
        }
    }
}
