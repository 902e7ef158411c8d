// The reductions of kernels/src/reduce.rs: the CUDA twins of mean_fwd, mean_bwd, dot_fwd,
// mean_channels_fwd, l2_normalize_fwd and cam_normalize_fwd (launchers in
// kernels/src/cuda/reduce.rs).
//
// Mean over all elements and dot: like the CPU, accumulated in f64 (dot forms each product in
// f64 too) and rounded to f32 once. They run in two launches so the result is deterministic (no
// float atomics): `reduce_sum_partials` / `dot_partials` write one f64 partial per block (a
// fixed-order tree sum), and `reduce_sum_finalize` (one block) adds them in a fixed tree order
// and divides (by 1 for dot, by len for a mean). The order of additions differs from the
// CPU's sequential f64 sum, so results agree to f32 rounding (the f64 sums differ by far less
// than an f32 ulp), not always bit for bit. The mean's backward fills dx with dy[0] / len.
//
// Channel mean: one thread per output pixel sums the C planes in f64 in channel order and rounds
// (acc·(1/C)) once — the CPU's exact operations, so bit-identical.
//
// Block size: REDUCE_THREADS for the tree sums (reduce_sum_partials, reduce_sum_finalize,
// dot_partials), which the launchers use; the others are grid-stride. Not here: max over classes
// (argmax.cu), spatial means (pool.cu's global_avg_pool), the losses' sums (loss.cu).

#define REDUCE_THREADS 256

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// Tree sum of `v` over the block; the result is valid in thread 0.
__device__ __forceinline__ double block_sum(double v, double* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = REDUCE_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    return shared[0];
}

// partials[b] = Σ of the elements block b visits (grid-stride), in f64.
extern "C" __global__ void reduce_sum_partials(const float* __restrict__ x,  // [n]
                                               unsigned long long n,
                                               double* __restrict__ partials) {  // [gridDim.x]
    __shared__ double shared[REDUCE_THREADS];
    double acc = 0.0;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x)
        acc += (double)x[i];
    double total = block_sum(acc, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// out[0] = (float)(Σ partials / divisor): divisor 1 for dot_fwd, len for mean_fwd. One block.
extern "C" __global__ void reduce_sum_finalize(const double* __restrict__ partials,  // [count]
                                               unsigned count,
                                               double divisor,
                                               float* __restrict__ out) {           // [1]
    __shared__ double shared[REDUCE_THREADS];
    double acc = 0.0;
    for (unsigned i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    double total = block_sum(acc, shared);
    if (threadIdx.x == 0) out[0] = (float)(total / divisor);
}

// dx[i] = (float)(dy[0] / divisor): mean_bwd (divisor len).
extern "C" __global__ void reduce_fill_bwd(const float* __restrict__ dy,  // [1]
                                           unsigned long long n,
                                           double divisor,
                                           float* __restrict__ dx) {      // [n]
    float g = (float)((double)dy[0] / divisor);
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x)
        dx[i] = g;
}

// partials[b] = Σ (double)a[i]·(double)b[i] over the elements block b visits (grid-stride).
extern "C" __global__ void dot_partials(const float* __restrict__ a,  // [n]
                                        const float* __restrict__ b,  // [n]
                                        unsigned long long n,
                                        double* __restrict__ partials) {  // [gridDim.x]
    __shared__ double shared[REDUCE_THREADS];
    double acc = 0.0;
    GRID_STRIDE(i, n) acc += (double)a[i] * (double)b[i];
    double total = block_sum(acc, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// y[n, 0, h, w] = (float)(scale·Σ_c x[n, c, h, w]), the sum in f64 in channel order: scale 1/C
// for mean_channels_fwd.
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

// l2_normalize_fwd: one block per row; the block sums x² in f64 (a fixed-order tree), then every
// thread writes (float)((double)x·factor) with factor = scale / (‖x‖ + eps), 0 when that
// denominator is 0. The sum's order differs from the CPU's sequential one, so results agree to
// f32 rounding, not always bit for bit.
extern "C" __global__ void l2_normalize_rows(const float* __restrict__ x,  // [rows, per]
                                             unsigned long long per,       // ≥ 1
                                             double scale,
                                             double eps,
                                             float* __restrict__ y) {      // [rows, per]
    __shared__ double shared[REDUCE_THREADS];
    const float* xr = x + (unsigned long long)blockIdx.x * per;
    float* yr = y + (unsigned long long)blockIdx.x * per;
    double acc = 0.0;
    for (unsigned long long i = threadIdx.x; i < per; i += blockDim.x)
        acc += (double)xr[i] * (double)xr[i];
    double total = block_sum(acc, shared);
    __shared__ double factor;
    if (threadIdx.x == 0) {
        double d = sqrt(total) + eps;
        factor = d == 0.0 ? 0.0 : scale / d;
    }
    __syncthreads();
    for (unsigned long long i = threadIdx.x; i < per; i += blockDim.x)
        yr[i] = (float)((double)xr[i] * factor);
}

// cam_normalize_fwd: per (n, c) plane, x = max(scores, 0)·label[n, c], y = x·(1/max(m, 1e-5))
// where m = max x > 0, else 0 (kernels/src/reduce.rs cam_normalize_fwd). One thread per plane
// (planes are small feature maps); the CPU's exact operations, bit-identical.
extern "C" __global__ void cam_normalize_fwd(const float* __restrict__ scores,  // [N,C,H,W]
                                             const float* __restrict__ labels,  // [N,C]
                                             unsigned long long planes,         // N·C
                                             unsigned long long plane,          // H·W
                                             float* __restrict__ y) {           // [N,C,H,W]
    GRID_STRIDE(pl, planes) {
        const float* sp = scores + pl * plane;
        float* yp = y + pl * plane;
        float l = labels[pl], m = 0.0f;
        for (unsigned long long i = 0; i < plane; ++i) {
            float o = fmaxf(sp[i], 0.0f) * l;
            yp[i] = o;
            if (o > m) m = o;
        }
        if (m > 0.0f) {
            float inv = 1.0f / fmaxf(m, 1e-5f);
            for (unsigned long long i = 0; i < plane; ++i) yp[i] *= inv;
        } else {
            for (unsigned long long i = 0; i < plane; ++i) yp[i] = 0.0f;
        }
    }
}
