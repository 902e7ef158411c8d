// Element-wise arithmetic and data movement: the CUDA twins of add_fwd, add_relu_fwd, mul_fwd, mul_bwd,
// scale_fwd, affine_fwd, mul_broadcast_fwd, threshold_fwd and the concat and slice kernels (concat_channels_fwd / _bwd,
// concat_batch_fwd / _bwd, slice_channels_fwd / _bwd, slice_batch_fwd / _bwd) in
// kernels/src/elementwise.rs (launchers in kernels/src/cuda/elementwise.rs).
//
// Every kernel is a grid-stride loop over a flat length (any shape, flattened). Arithmetic is
// the CPU's single IEEE operation per element (threshold: one compare; the module is compiled
// with --fmad=false) and the copies move 32-bit words untouched, so every result equals the
// CPU's bit for bit (NaN payloads included).
//
// Every concat and slice is one of two gathers over "rows" (an image, or the whole tensor):
// `copy_rows` copies a window of each source row into a window of each destination row (concat
// forwards and backwards, slice forwards; one launch per part), and `slice_bwd` writes a whole
// destination row from a window of the source, zero outside it (the slice backwards). The copies
// take 32-bit words, so f32 and i32 label maps share them like the CPU's `T: Copy` kernels.
//
// Block size: grid-stride, any; the launchers use 256. Not here: relu and leaky relu
// (activation.cu), reductions (reduce.cu), broadcasting, strided views, 8- or 16-bit element
// types.

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// y = a + b.
extern "C" __global__ void add_fwd(const float* __restrict__ a,  // [n]
                                   const float* __restrict__ b,  // [n]
                                   unsigned long long n,
                                   float* __restrict__ y) {      // [n]
    GRID_STRIDE(i, n) { y[i] = a[i] + b[i]; }
}

// y = max(a + b, 0), with the CPU's comparison (NaN → 0).
extern "C" __global__ void add_relu_fwd(const float* __restrict__ a,  // [n]
                                        const float* __restrict__ b,  // [n]
                                        unsigned long long n,
                                        float* __restrict__ y) {      // [n]
    GRID_STRIDE(i, n) {
        float t = a[i] + b[i];
        y[i] = t > 0.0f ? t : 0.0f;
    }
}

// y = a * b.
extern "C" __global__ void mul_fwd(const float* __restrict__ a,  // [n]
                                   const float* __restrict__ b,  // [n]
                                   unsigned long long n,
                                   float* __restrict__ y) {      // [n]
    GRID_STRIDE(i, n) { y[i] = a[i] * b[i]; }
}

// da = dy * b, db = dy * a.
extern "C" __global__ void mul_bwd(const float* __restrict__ a,   // [n]
                                   const float* __restrict__ b,   // [n]
                                   const float* __restrict__ dy,  // [n]
                                   unsigned long long n,
                                   float* __restrict__ da,        // [n]
                                   float* __restrict__ db) {      // [n]
    GRID_STRIDE(i, n) {
        float g = dy[i];
        da[i] = g * b[i];
        db[i] = g * a[i];
    }
}

// y = alpha * x (also the backward of scale, with the same alpha).
extern "C" __global__ void scale_fwd(const float* __restrict__ x,  // [n]
                                     unsigned long long n,
                                     float alpha,
                                     float* __restrict__ y) {      // [n]
    GRID_STRIDE(i, n) { y[i] = alpha * x[i]; }
}

// affine_fwd: y = alpha * x + beta, two roundings (no contraction under --fmad=false).
extern "C" __global__ void affine_fwd(const float* __restrict__ x,  // [n]
                                      unsigned long long n,
                                      float alpha,
                                      float beta,
                                      float* __restrict__ y) {      // [n]
    GRID_STRIDE(i, n) { y[i] = alpha * x[i] + beta; }
}

// mul_broadcast_fwd: y = x * m with m shared over the batch (over_channels = 0: m [C, H, W],
// index i mod C·H·W) or over the channels (over_channels = 1: m [N, H, W], index
// (i / (C·H·W))·H·W + i mod H·W).
extern "C" __global__ void mul_broadcast_fwd(const float* __restrict__ x,  // [N, C, H, W]
                                             const float* __restrict__ m,  // see above
                                             unsigned long long len,       // N·C·H·W
                                             unsigned long long image,     // C·H·W ≥ 1
                                             unsigned long long plane,     // H·W ≥ 1
                                             int over_channels,
                                             float* __restrict__ y) {      // [N, C, H, W]
    GRID_STRIDE(i, len) {
        unsigned long long j = over_channels ? (i / image) * plane + i % plane : i % image;
        y[i] = x[i] * m[j];
    }
}

// threshold_fwd: y = 1 where x ≥ at (below: x < at), else 0; NaN gives 0 either way.
extern "C" __global__ void threshold_fwd(const float* __restrict__ x,  // [n]
                                         unsigned long long n,
                                         float at,
                                         int below,                    // 0 or 1
                                         float* __restrict__ y) {      // [n]
    GRID_STRIDE(i, n) {
        float v = x[i];
        bool pass = below ? v < at : v >= at;
        y[i] = pass ? 1.0f : 0.0f;
    }
}

// dst[r·dst_stride + dst_off + j] = src[r·src_stride + src_off + j] for r < rows, j < row_len.
// concat_channels_fwd part i: rows N, row_len Ci·H·W, src (stride, off) = (Ci·H·W, 0),
// dst = (C·H·W, C_before·H·W); the backward swaps source and destination. The batch concat and
// slice are one row (stride irrelevant).
extern "C" __global__ void copy_rows(const unsigned* __restrict__ src,  // 32-bit words
                                     unsigned long long rows,
                                     unsigned long long row_len,
                                     unsigned long long src_stride,
                                     unsigned long long src_off,
                                     unsigned long long dst_stride,
                                     unsigned long long dst_off,
                                     unsigned* __restrict__ dst) {     // 32-bit words
    GRID_STRIDE(i, rows * row_len) {
        unsigned long long r = i / row_len, j = i - r * row_len;
        dst[r * dst_stride + dst_off + j] = src[r * src_stride + src_off + j];
    }
}

// dx[r·row_len + j] = dy[r·(hi − lo) + j − lo] for lo ≤ j < hi, 0 otherwise, for r < rows.
// slice_channels_bwd: rows N, row_len C·H·W, [lo, hi) = [c_start·H·W, c_end·H·W);
// slice_batch_bwd: one row of N·C·H·W, [lo, hi) = [n_start·C·H·W, n_end·C·H·W).
extern "C" __global__ void slice_bwd(const float* __restrict__ dy,  // [rows, hi − lo]
                                     unsigned long long rows,
                                     unsigned long long row_len,
                                     unsigned long long lo,
                                     unsigned long long hi,
                                     float* __restrict__ dx) {      // [rows, row_len]
    unsigned long long width = hi - lo;
    GRID_STRIDE(i, rows * row_len) {
        unsigned long long r = i / row_len, j = i - r * row_len;
        dx[i] = (j >= lo && j < hi) ? dy[r * width + (j - lo)] : 0.0f;
    }
}
