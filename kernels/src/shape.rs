//! `Nchw`: the 4-d shape of an activation tensor. Kernels take it by value; it knows its element
//! count and flat index and nothing else.

/// Shape of a contiguous NCHW tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Nchw {
    /// Batch.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Nchw {
    /// Builds a shape.
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Nchw { n, c, h, w }
    }
    /// Total number of elements, N·C·H·W.
    pub const fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    /// True when any extent is zero.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Elements in one spatial plane, H·W.
    pub const fn plane(&self) -> usize {
        self.h * self.w
    }
    /// Elements in one image, C·H·W.
    pub const fn image(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Flat index of (n, c, y, x).
    #[inline(always)]
    pub const fn at(&self, n: usize, c: usize, y: usize, x: usize) -> usize {
        ((n * self.c + c) * self.h + y) * self.w + x
    }
}
