// The inner product and the channel reductions of kernels/src/reduce.rs: the CUDA twins of
// dot_fwd, sum_channels_fwd / _bwd and mean_channels_fwd / _bwd.
//
// dot: Σ a·b with each product and the sum in f64, like the CPU, in two launches so the result
// is deterministic: `dot_partials` writes one f64 partial per block (a fixed-order tree sum), and
// reduce.cu's `reduce_sum_finalize` (one block; the Rust side launches it from that module) adds
// them in a fixed order and rounds once. The order differs from the CPU's sequential sum, so the
// result agrees to f32 rounding, not always bit for bit.
//
// Channels: one thread per output pixel sums the C planes in f64 in channel order and rounds
// (acc·scale) once — the CPU's exact operations, so bit-identical; the backward broadcasts dy (a
// copy, or one f32 multiply by the host-rounded 1/C), also bit-identical.
//
// Block size: DOT_THREADS for dot_partials (the tree sum assumes it), which the launcher uses;
// the others are grid-stride. Not here: sums over all elements (reduce.cu), spatial means
// (pool.cu's global_avg_pool).

#define DOT_THREADS 256

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// partials[b] = Σ (double)a[i]·(double)b[i] over the elements block b visits (grid-stride).
extern "C" __global__ void dot_partials(const float* __restrict__ a,  // [n]
                                        const float* __restrict__ b,  // [n]
                                        unsigned long long n,
                                        double* __restrict__ partials) {  // [gridDim.x]
    __shared__ double sh[DOT_THREADS];
    double acc = 0.0;
    GRID_STRIDE(i, n) acc += (double)a[i] * (double)b[i];
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = DOT_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x] = sh[0];
}

// y[n, 0, h, w] = (float)(scale·Σ_c x[n, c, h, w]), the sum in f64 in channel order: scale 1 for
// sum_channels_fwd, 1/C for mean_channels_fwd.
extern "C" __global__ void channels_fwd(const float* __restrict__ x,  // [N, C, H, W]
                                        unsigned long long pixels,    // N·H·W
                                        unsigned c,                   // C
                                        unsigned long long plane,     // H·W ≥ 1
                                        double scale,
                                        float* __restrict__ y) {      // [N, 1, H, W]
    GRID_STRIDE(p, pixels) {
        unsigned long long n = p / plane;
        const float* xp = x + n * c * plane + (p - n * plane);
        double acc = 0.0;
        for (unsigned ch = 0; ch < c; ++ch) acc += (double)xp[ch * plane];
        y[p] = (float)(acc * scale);
    }
}

// dx[n, c, h, w] = dy[n, 0, h, w] (use_scale = 0: sum_channels_bwd) or dy[n, 0, h, w]·scale
// (mean_channels_bwd, scale = (float)(1/C)).
extern "C" __global__ void channels_bwd(const float* __restrict__ dy,  // [N, 1, H, W]
                                        unsigned long long len,        // N·C·H·W
                                        unsigned c,                    // C ≥ 1
                                        unsigned long long plane,      // H·W ≥ 1
                                        int use_scale,
                                        float scale,
                                        float* __restrict__ dx) {      // [N, C, H, W]
    unsigned long long image = (unsigned long long)c * plane;
    GRID_STRIDE(i, len) {
        unsigned long long n = i / image;
        float g = dy[n * plane + (i - (i / plane) * plane)];
        dx[i] = use_scale ? g * scale : g;
    }
}
