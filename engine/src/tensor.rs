//! Tensors as the engine sees them: a [`TensorSpec`] (dtype + static shape, known at plan time)
//! and, at run time, a [`Tensor`] holding contiguous host data. Shapes are static: batch, crop
//! and class counts come from the graph; data-dependent selection is values, never shapes.
//!
//! A tensor's storage may be longer than its spec: the plan executor keeps one allocation per
//! plan buffer across steps and re-views it with the spec of each value it holds
//! ([`Tensor::reshape_in_place`]); every accessor sees exactly `spec.len()` elements.
//!
//! With feature `cuda`, [`DeviceTensor`]: the same spec at a device address (the executor owns
//! the memory).
//!
//! Not here: devices, arenas (device.rs, cuda_exec.rs), strided layouts (every kernel takes
//! contiguous NCHW).

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

/// Contiguous host data: the storage, at least as long as the tensor's spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// f32 elements.
    F32(Vec<f32>),
    /// i32 elements.
    I32(Vec<i32>),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I32(v) => v.len(),
        }
    }
}

/// A tensor on the host: its spec and its data (the first `spec.len()` elements of the storage;
/// storage past them belongs to no value).
pub struct Tensor {
    spec: TensorSpec,
    data: Data,
}

impl Clone for Tensor {
    /// Copies the visible elements only (not a workspace buffer's spare storage).
    fn clone(&self) -> Self {
        let n = self.spec.len();
        let data = match &self.data {
            Data::F32(v) => Data::F32(v[..n].to_vec()),
            Data::I32(v) => Data::I32(v[..n].to_vec()),
        };
        Tensor {
            spec: self.spec.clone(),
            data,
        }
    }
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && (self.f32(), self.i32()) == (other.f32(), other.i32())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Tensor");
        d.field("spec", &self.spec);
        match (self.f32(), self.i32()) {
            (Some(v), _) => d.field("f32", &v),
            (_, Some(v)) => d.field("i32", &v),
            _ => &mut d,
        };
        d.finish()
    }
}

impl Tensor {
    /// Zeros of this spec.
    pub fn zeros(spec: &TensorSpec) -> Self {
        Tensor::zeros_in(spec, spec.len())
    }

    /// Zeros of `spec` in storage of `storage` elements (at least `spec.len()`), so the tensor
    /// can later be re-viewed with any spec of its dtype that fits ([`Tensor::reshape_in_place`]).
    pub fn zeros_in(spec: &TensorSpec, storage: usize) -> Self {
        let n = storage.max(spec.len());
        let data = match spec.dtype {
            DType::F32 => Data::F32(vec![0.0; n]),
            DType::I32 => Data::I32(vec![0; n]),
        };
        Tensor {
            spec: spec.clone(),
            data,
        }
    }

    /// Elements the storage holds (≥ `spec().len()`).
    pub fn storage_len(&self) -> usize {
        self.data.len()
    }

    /// Views the same storage as `spec`, without allocating or touching the elements (the new
    /// view starts with whatever the storage held: callers overwrite it). False, and nothing
    /// changes, when the dtype differs or the storage is too short.
    pub fn reshape_in_place(&mut self, spec: &TensorSpec) -> bool {
        let same_dtype = matches!(
            (&self.data, spec.dtype),
            (Data::F32(_), DType::F32) | (Data::I32(_), DType::I32)
        );
        if !same_dtype || spec.len() > self.data.len() {
            return false;
        }
        if self.spec != *spec {
            self.spec.clone_from(spec);
        }
        true
    }

    /// Copies `src`'s elements into this tensor's storage when their specs are equal (no
    /// allocation); false, and nothing changes, otherwise.
    pub fn copy_from(&mut self, src: &Tensor) -> bool {
        if self.spec != src.spec {
            return false;
        }
        match (self.f32_mut(), src.f32()) {
            (Some(d), Some(s)) => d.copy_from_slice(s),
            _ => match (self.i32_mut(), src.i32()) {
                (Some(d), Some(s)) => d.copy_from_slice(s),
                _ => return false,
            },
        }
        true
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
            Data::F32(v) => Some(&v[..self.spec.len()]),
            Data::I32(_) => None,
        }
    }

    /// The f32 elements, mutably, if it is f32.
    pub fn f32_mut(&mut self) -> Option<&mut [f32]> {
        let n = self.spec.len();
        match &mut self.data {
            Data::F32(v) => Some(&mut v[..n]),
            Data::I32(_) => None,
        }
    }

    /// The i32 elements, if it is i32.
    pub fn i32(&self) -> Option<&[i32]> {
        match &self.data {
            Data::I32(v) => Some(&v[..self.spec.len()]),
            Data::F32(_) => None,
        }
    }

    /// The i32 elements, mutably, if it is i32.
    pub fn i32_mut(&mut self) -> Option<&mut [i32]> {
        let n = self.spec.len();
        match &mut self.data {
            Data::I32(v) => Some(&mut v[..n]),
            Data::F32(_) => None,
        }
    }
}

/// A tensor in device memory (feature `cuda`): its spec and its address. The memory belongs to
/// the executor (a region of the plan's arena, a state tensor, an uploaded batch field); an op's
/// [`crate::Op::cuda`] sees its inputs and outputs as these, with the same shapes and dtypes as
/// the [`Tensor`]s its `cpu` gets.
#[cfg(feature = "cuda")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTensor {
    /// Shape and dtype.
    pub spec: TensorSpec,
    /// Device address of element 0.
    pub ptr: u64,
}

#[cfg(feature = "cuda")]
impl DeviceTensor {
    /// The tensor as `f32` device memory for a launcher; `None` for another dtype.
    pub fn f32(&self) -> Option<flowseg_kernels::cuda::RawBuf<f32>> {
        // SAFETY: the executor that made this tensor holds `spec.len()` elements at `ptr` for
        // the length of the launch (`cuda_exec.rs`), and the dtype was checked here.
        (self.spec.dtype == DType::F32)
            .then(|| unsafe { flowseg_kernels::cuda::RawBuf::new(self.ptr, self.spec.len()) })
    }

    /// The tensor as `i32` device memory; `None` for another dtype.
    pub fn i32(&self) -> Option<flowseg_kernels::cuda::RawBuf<i32>> {
        // SAFETY: as for `f32`.
        (self.spec.dtype == DType::I32)
            .then(|| unsafe { flowseg_kernels::cuda::RawBuf::new(self.ptr, self.spec.len()) })
    }
}
