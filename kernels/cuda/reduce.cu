// Sums and means over all elements, and their backwards: the CUDA twins of sum_fwd, mean_fwd,
// sum_bwd and mean_bwd in kernels/src/reduce.rs.
//
// Like the CPU, the sum accumulates in f64 and rounds to f32 once. It runs in two launches so
// the result is deterministic (no float atomics): `reduce_sum_partials` writes one f64 partial
// per block, `reduce_sum_finalize` (one block) adds them in a fixed tree order. The order of
// additions differs from the CPU's sequential f64 sum, so results agree to f32 rounding (the f64
// sums differ by far less than an f32 ulp), not always bit for bit.
//
// Block size: REDUCE_THREADS, which the launcher must use. Not here: channel sums
// (sum_channels_fwd), dot, max/min reductions.

#define REDUCE_THREADS 256

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

// out[0] = (float)(Σ partials / divisor): divisor 1 for sum_fwd, len for mean_fwd. One block.
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

// dx[i] = (float)(dy[0] / divisor): sum_bwd (divisor 1) and mean_bwd (divisor len).
extern "C" __global__ void reduce_fill_bwd(const float* __restrict__ dy,  // [1]
                                           unsigned long long n,
                                           double divisor,
                                           float* __restrict__ dx) {      // [n]
    float g = (float)((double)dy[0] / divisor);
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x)
        dx[i] = g;
}
