// Batch normalisation over the N·H·W values of each channel of an [N,C,H,W] tensor: the CUDA
// twins of batch_norm_train_fwd, batch_norm_eval_fwd, batch_norm_train_bwd and
// batch_norm_eval_bwd in kernels/src/batch_norm.rs.
// Launchers: kernels/src/cuda/batch_norm.rs.
//
// Statistics accumulate in f64, as on the CPU (two passes: Σx, then Σ(x − mean)²; the backward's
// Σdy and Σdy·(x − mean)·invstd). Deterministic, no atomics: a [B, C] grid writes one f64
// partial per (channel, block) — block b of channel c visits the channel's values j = b·256 + t,
// step B·256, in a fixed tree — then one block per channel adds its B partials in a fixed order
// (`bn_*_finalize`). B depends on the shape only, so a shape always gives the same bits. The
// summation order differs from the CPU's sequential f64 sum, so statistics agree to f32
// rounding, not always bit for bit; the per-element affine steps are the CPU's exact f32
// operations (with --fmad=false), so given equal coefficients they are bit-identical.
//
// Launch sequences (the launchers in kernels/src/cuda/batch_norm.rs):
//   train fwd: bn_stat_partials(mean = null) → bn_mean_finalize → bn_stat_partials(mean) →
//              bn_train_finalize → bn_affine
//   eval fwd:  bn_eval_coef → bn_affine
//   bwd:       bn_bwd_stats → bn_dy_partials → bn_bwd_finalize → bn_bwd_dx
//
// Fused ReLU (the planner's batch_norm → relu fusion): bn_affine's `relu` clamps at zero with
// the CPU's comparison; the backward's `relu_y` (null: none) zeroes dy where relu_y ≤ 0, as
// relu_bwd does, before every use.
//
// Block size: BN_THREADS, which the launcher must use. Not here: f64 tensors, sync-BN across
// devices.

#define BN_THREADS 256

// Tree sum of `v` over the block; the result is valid in thread 0.
__device__ __forceinline__ double bn_block_sum(double v, double* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = BN_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    double r = shared[0];
    __syncthreads();  // `shared` may be reused right after
    return r;
}

// Index of the j-th value (j < N·plane) of channel c.
__device__ __forceinline__ unsigned long long bn_at(unsigned long long j, unsigned c, unsigned ch,
                                                    unsigned long long plane) {
    unsigned long long n = j / plane, q = j - n * plane;
    return (n * ch + c) * plane + q;
}

// partials[c·B + b] = Σ x (mean == null) or Σ (x − mean[c])² over block b's share of channel c.
// Grid (B, C).
extern "C" __global__ void bn_stat_partials(const float* __restrict__ x,      // [N,C,H,W]
                                            unsigned long long count,         // N·H·W
                                            unsigned ch,                      // C
                                            unsigned long long plane,         // H·W
                                            const double* __restrict__ mean,  // [C] or null
                                            double* __restrict__ partials) {  // [C, B]
    __shared__ double shared[BN_THREADS];
    unsigned c = blockIdx.y;
    double m = mean ? mean[c] : 0.0;
    double acc = 0.0;
    for (unsigned long long j = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         j < count; j += (unsigned long long)blockDim.x * gridDim.x) {
        double v = (double)x[bn_at(j, c, ch, plane)];
        if (mean) {
            double d = v - m;
            acc += d * d;
        } else {
            acc += v;
        }
    }
    double total = bn_block_sum(acc, shared);
    if (threadIdx.x == 0) partials[(unsigned long long)c * gridDim.x + blockIdx.x] = total;
}

// mean[c] = Σ_b partials[c, b] / count. One block per channel.
extern "C" __global__ void bn_mean_finalize(const double* __restrict__ partials,  // [C, B]
                                            unsigned nblocks,                     // B
                                            double count,                         // N·H·W
                                            double* __restrict__ mean) {          // [C]
    __shared__ double shared[BN_THREADS];
    unsigned c = blockIdx.x;
    double acc = 0.0;
    for (unsigned i = threadIdx.x; i < nblocks; i += blockDim.x)
        acc += partials[(unsigned long long)c * nblocks + i];
    double total = bn_block_sum(acc, shared);
    if (threadIdx.x == 0) mean[c] = total / count;
}

// From the Σ(x − mean)² partials: var, invstd = 1/√(var + eps), save_mean, save_invstd, the
// running-stat update with the unbiased variance (in f64, rounded once, as the CPU), and the
// affine coefficients coef[c] = (mean, invstd·γ, β) in f32. One block per channel.
extern "C" __global__ void bn_train_finalize(const double* __restrict__ partials,  // [C, B]
                                             unsigned nblocks,                     // B
                                             double count,                         // N·H·W ≥ 2
                                             const double* __restrict__ mean,      // [C]
                                             const float* __restrict__ gamma,      // [C]
                                             const float* __restrict__ beta,       // [C]
                                             double eps, double momentum,
                                             float* __restrict__ running_mean,     // [C]
                                             float* __restrict__ running_var,      // [C]
                                             float* __restrict__ save_mean,        // [C]
                                             float* __restrict__ save_invstd,      // [C]
                                             float* __restrict__ coef) {           // [C, 3]
    __shared__ double shared[BN_THREADS];
    unsigned c = blockIdx.x;
    double acc = 0.0;
    for (unsigned i = threadIdx.x; i < nblocks; i += blockDim.x)
        acc += partials[(unsigned long long)c * nblocks + i];
    double total = bn_block_sum(acc, shared);
    if (threadIdx.x == 0) {
        double m = mean[c];
        double var = total / count;
        double invstd = 1.0 / sqrt(var + eps);
        save_mean[c] = (float)m;
        save_invstd[c] = (float)invstd;
        double unbiased = var * count / (count - 1.0);
        running_mean[c] = (float)((1.0 - momentum) * (double)running_mean[c] + momentum * m);
        running_var[c] = (float)((1.0 - momentum) * (double)running_var[c] + momentum * unbiased);
        coef[3 * c] = (float)m;
        coef[3 * c + 1] = (float)(invstd * (double)gamma[c]);
        coef[3 * c + 2] = beta[c];
    }
}

// Eval coefficients coef[c] = (running_mean, (1/√(running_var + eps))·γ, β). One thread each.
extern "C" __global__ void bn_eval_coef(const float* __restrict__ gamma,         // [C]
                                        const float* __restrict__ beta,          // [C]
                                        const float* __restrict__ running_mean,  // [C]
                                        const float* __restrict__ running_var,   // [C]
                                        unsigned ch,                             // C
                                        double eps,
                                        float* __restrict__ coef) {              // [C, 3]
    unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= ch) return;
    double invstd = 1.0 / sqrt((double)running_var[c] + eps);
    coef[3 * c] = running_mean[c];
    coef[3 * c + 1] = (float)(invstd * (double)gamma[c]);
    coef[3 * c + 2] = beta[c];
}

// y = (x − mean)·scale + shift with (mean, scale, shift) = coef[c], in f32 (grid-stride);
// with `relu`, y = y > 0 ? y : 0.
extern "C" __global__ void bn_affine(const float* __restrict__ x,     // [N,C,H,W]
                                     const float* __restrict__ coef,  // [C, 3]
                                     unsigned long long len,          // N·C·H·W
                                     unsigned ch,                     // C
                                     unsigned long long plane,        // H·W
                                     int relu,                        // 0 or 1
                                     float* __restrict__ y) {         // [N,C,H,W]
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < len; i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned c = (unsigned)((i / plane) % ch);
        float t = (x[i] - coef[3 * c]) * coef[3 * c + 1] + coef[3 * c + 2];
        y[i] = relu ? (t > 0.0f ? t : 0.0f) : t;
    }
}

// The gradient reaching batch norm: dy, or behind a fused ReLU dy where relu_y > 0, else 0.
__device__ __forceinline__ float bn_dy_at(const float* __restrict__ dy,
                                          const float* __restrict__ relu_y,
                                          unsigned long long i) {
    return (relu_y == nullptr || relu_y[i] > 0.0f) ? dy[i] : 0.0f;
}

// The backward's (mean, invstd) in f64: train reads save_mean/save_invstd (var_or_invstd is
// save_invstd), eval running_mean and 1/√(running_var + eps).
extern "C" __global__ void bn_bwd_stats(const float* __restrict__ mean,           // [C]
                                        const float* __restrict__ var_or_invstd,  // [C]
                                        unsigned ch,                              // C
                                        int eval, double eps,
                                        double* __restrict__ stats) {             // [C, 2]
    unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= ch) return;
    stats[2 * c] = (double)mean[c];
    stats[2 * c + 1] = eval ? 1.0 / sqrt((double)var_or_invstd[c] + eps)
                            : (double)var_or_invstd[c];
}

// partials[(c·B + b)·2 + {0, 1}] = (Σ dy, Σ dy·(x − mean)·invstd) over block b's share of
// channel c. Grid (B, C).
extern "C" __global__ void bn_dy_partials(const float* __restrict__ x,       // [N,C,H,W]
                                          const float* __restrict__ dy,      // [N,C,H,W]
                                          const float* __restrict__ relu_y,  // [N,C,H,W] or null
                                          unsigned long long count,          // N·H·W
                                          unsigned ch,                       // C
                                          unsigned long long plane,          // H·W
                                          const double* __restrict__ stats,  // [C, 2]
                                          double* __restrict__ partials) {   // [C, B, 2]
    __shared__ double shared[BN_THREADS];
    unsigned c = blockIdx.y;
    double m = stats[2 * c], k = stats[2 * c + 1];
    double sd = 0.0, sdx = 0.0;
    for (unsigned long long j = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         j < count; j += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long i = bn_at(j, c, ch, plane);
        double g = (double)bn_dy_at(dy, relu_y, i);
        sd += g;
        sdx += g * ((double)x[i] - m) * k;
    }
    double a = bn_block_sum(sd, shared);
    double b = bn_block_sum(sdx, shared);
    if (threadIdx.x == 0) {
        unsigned long long o = 2 * ((unsigned long long)c * gridDim.x + blockIdx.x);
        partials[o] = a;
        partials[o + 1] = b;
    }
}

// dgamma = Σ dy·x̂, dbeta = Σ dy, and the dx coefficients coef[c] = (mean, invstd, γ·invstd,
// Σdy/count, Σdy·x̂/count) (the last two unused in eval). One block per channel.
extern "C" __global__ void bn_bwd_finalize(const double* __restrict__ partials,  // [C, B, 2]
                                           unsigned nblocks,                     // B
                                           double count,                         // N·H·W
                                           const float* __restrict__ gamma,      // [C]
                                           const double* __restrict__ stats,     // [C, 2]
                                           const float* __restrict__ mean_f,     // [C]
                                           const float* __restrict__ invstd_f,   // [C] or null
                                           float* __restrict__ dgamma,           // [C]
                                           float* __restrict__ dbeta,            // [C]
                                           float* __restrict__ coef) {           // [C, 5]
    __shared__ double shared[BN_THREADS];
    unsigned c = blockIdx.x;
    double sd = 0.0, sdx = 0.0;
    for (unsigned i = threadIdx.x; i < nblocks; i += blockDim.x) {
        unsigned long long o = 2 * ((unsigned long long)c * nblocks + i);
        sd += partials[o];
        sdx += partials[o + 1];
    }
    double a = bn_block_sum(sd, shared);
    double b = bn_block_sum(sdx, shared);
    if (threadIdx.x == 0) {
        dgamma[c] = (float)b;
        dbeta[c] = (float)a;
        coef[5 * c] = mean_f[c];
        coef[5 * c + 1] = invstd_f ? invstd_f[c] : 0.0f;
        coef[5 * c + 2] = (float)((double)gamma[c] * stats[2 * c + 1]);
        coef[5 * c + 3] = (float)(a / count);
        coef[5 * c + 4] = (float)(b / count);
    }
}

// train: dx = k·(dy − a − (x − mean)·invstd·b); eval: dx = dy·k; (mean, invstd, k, a, b) =
// coef[c], in f32 in the CPU's operation order (grid-stride).
extern "C" __global__ void bn_bwd_dx(const float* __restrict__ x,       // [N,C,H,W]
                                     const float* __restrict__ dy,      // [N,C,H,W]
                                     const float* __restrict__ relu_y,  // [N,C,H,W] or null
                                     const float* __restrict__ coef,  // [C, 5]
                                     unsigned long long len,          // N·C·H·W
                                     unsigned ch,                     // C
                                     unsigned long long plane,        // H·W
                                     int eval,
                                     float* __restrict__ dx) {        // [N,C,H,W]
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < len; i += (unsigned long long)blockDim.x * gridDim.x) {
        const float* k5 = coef + 5 * ((i / plane) % ch);
        float g = bn_dy_at(dy, relu_y, i);
        dx[i] = eval ? g * k5[2] : k5[2] * (g - k5[3] - (x[i] - k5[0]) * k5[1] * k5[4]);
    }
}

// batch_norm_eval_stats_fwd: save_mean = running_mean, save_invstd = 1/√(running_var + eps) in
// f64, rounded once (IEEE double '/' and sqrt: the CPU's bits).
extern "C" __global__ void bn_eval_stats(const float* __restrict__ running_mean,  // [C]
                                         const float* __restrict__ running_var,   // [C]
                                         unsigned long long c,
                                         double eps,
                                         float* __restrict__ save_mean,      // [C]
                                         float* __restrict__ save_invstd) {  // [C]
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < c;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        save_mean[i] = running_mean[i];
        save_invstd[i] = (float)(1.0 / sqrt((double)running_var[i] + eps));
    }
}
