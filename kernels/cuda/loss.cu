// The masked probability-space losses of kernels/src/loss.rs: soft-target cross entropy,
// squared error and KL divergence, forward and backward — the CUDA twins of
// soft_cross_entropy_fwd / _bwd, squared_error_fwd / _bwd and kl_div_fwd / _bwd.
//
// Maps are [N,K,H,W], the optional mask [N,H,W] is both validity (≠ 0) and weight. One thread per
// pixel walks the K class planes (H·W apart, so neighbouring threads read neighbouring words).
// Per pixel, every quantity is formed exactly as on the CPU: class sums in f64 in class order,
// softmax statistics (max, Σ exp) in f32 in class order, gradient coefficients dloss·w/D formed
// in f64 and rounded once. Pixels with mask 0 are skipped outright (gradient exactly 0), so NaN
// or ∞ there cannot leak.
//
// Reductions are deterministic: each `*_fwd_partials` / `masked_stats_partials` block writes one
// row of f64 partials [Σ w·ℓ, valid count, Σ w, 0] (a tree sum in a fixed order), and
// softmax_ce.cu's `ce_finalize` (one block, launched by the Rust side from that module) adds the
// rows in a fixed order, resolves the denominator and writes loss[0] and inv_d[0] = 1/D (0 when
// D = 0). The order of the f64 additions differs from the CPU's, so the loss agrees to f32
// rounding, not always bit for bit.
//
// Bit-identity: squared_error_bwd is the CPU's exact f32/f64 arithmetic (--fmad=false) and so
// bit-identical given the same D; the soft-CE and KL kernels use CUDA's expf/exp/log, which
// differ from the CPU's libm by an ulp or two.
//
// Launch sequences. Forward: <loss>_fwd_partials → ce_finalize. Backward:
// masked_stats_partials → ce_finalize (for inv_d) → <loss>_bwd.
//
// Block size: LOSS_THREADS (the tree sums assume it), which the launchers use. Not here: hard
// labels (softmax_ce.cu), gradients w.r.t. the mask or the soft target.

#define LOSS_THREADS 256

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// Tree sum of (loss, valid, wsum) over the block; thread 0 writes [loss, valid, wsum, 0] to out.
__device__ __forceinline__ void block_partials(double loss, double valid, double wsum,
                                               double* __restrict__ out) {
    __shared__ double sh[3][LOSS_THREADS];
    unsigned t = threadIdx.x;
    sh[0][t] = loss; sh[1][t] = valid; sh[2][t] = wsum;
    __syncthreads();
    for (unsigned s = LOSS_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) {
            sh[0][t] += sh[0][t + s]; sh[1][t] += sh[1][t + s]; sh[2][t] += sh[2][t + s];
        }
        __syncthreads();
    }
    if (t == 0) { out[0] = sh[0][0]; out[1] = sh[1][0]; out[2] = sh[2][0]; out[3] = 0.0; }
}

// The pixel's weight: its mask value, 1 without a mask.
__device__ __forceinline__ double pixel_weight(const float* __restrict__ mask,
                                               unsigned long long p) {
    return mask ? (double)mask[p] : 1.0;
}

// dloss·w/D rounded once, exactly 0 when w = 0 or scale = dloss/D = 0 (the CPU's coefficient).
__device__ __forceinline__ float coefficient(double w, double scale) {
    return (w == 0.0 || scale == 0.0) ? 0.0f : (float)(scale * w);
}

// Per-block [0, count of mask ≠ 0, Σ mask, 0]: the denominator's statistics (backward).
extern "C" __global__ void masked_stats_partials(const float* __restrict__ mask,  // [N,H,W] or null
                                                 unsigned long long pixels,       // N·H·W
                                                 double* __restrict__ partials) { // [gridDim.x, 4]
    double valid = 0.0, wsum = 0.0;
    GRID_STRIDE(p, pixels) {
        double w = pixel_weight(mask, p);
        valid += w != 0.0 ? 1.0 : 0.0;
        wsum += w;
    }
    block_partials(0.0, valid, wsum, partials + 4 * (unsigned long long)blockIdx.x);
}

// soft_cross_entropy_fwd's partials: ℓ = ln(Σ_k e^(x_k − m))·Σ_k q_k − Σ_k q_k·(x_k − m).
extern "C" __global__ void soft_ce_fwd_partials(const float* __restrict__ logits,  // [N,K,H,W]
                                                const float* __restrict__ q,       // [N,K,H,W]
                                                const float* __restrict__ mask,    // [N,H,W] or null
                                                unsigned long long pixels,         // N·H·W
                                                unsigned k,                        // K ≥ 1
                                                unsigned long long plane,          // H·W
                                                double* __restrict__ partials) {   // [gridDim.x, 4]
    double loss = 0.0, valid = 0.0, wsum = 0.0;
    GRID_STRIDE(p, pixels) {
        double w = pixel_weight(mask, p);
        valid += w != 0.0 ? 1.0 : 0.0;
        wsum += w;
        if (w == 0.0) continue;
        unsigned long long n = p / plane, base = n * k * plane + (p - n * plane);
        const float* xp = logits + base;
        const float* qp = q + base;
        float m = xp[0];
        for (unsigned c = 1; c < k; ++c) {
            float v = xp[c * plane];
            if (v > m) m = v;
        }
        float s = 0.0f;
        for (unsigned c = 0; c < k; ++c) s += expf(xp[c * plane] - m);
        double qsum = 0.0, qx = 0.0;
        for (unsigned c = 0; c < k; ++c) {
            double qv = (double)qp[c * plane];
            qsum += qv;
            qx += qv * (double)(xp[c * plane] - m);
        }
        loss += w * (log((double)s) * qsum - qx);
    }
    block_partials(loss, valid, wsum, partials + 4 * (unsigned long long)blockIdx.x);
}

// squared_error_fwd's partials: ℓ = Σ_k (a_k − b_k)², the difference in f32, squares in f64.
extern "C" __global__ void squared_error_fwd_partials(const float* __restrict__ a,     // [N,K,H,W]
                                                      const float* __restrict__ b,     // [N,K,H,W]
                                                      const float* __restrict__ mask,  // [N,H,W] or null
                                                      unsigned long long pixels,       // N·H·W
                                                      unsigned k,                      // K
                                                      unsigned long long plane,        // H·W
                                                      double* __restrict__ partials) { // [gridDim.x, 4]
    double loss = 0.0, valid = 0.0, wsum = 0.0;
    GRID_STRIDE(p, pixels) {
        double w = pixel_weight(mask, p);
        valid += w != 0.0 ? 1.0 : 0.0;
        wsum += w;
        if (w == 0.0) continue;
        unsigned long long n = p / plane, base = n * k * plane + (p - n * plane);
        double sq = 0.0;
        for (unsigned c = 0; c < k; ++c) {
            double e = (double)(a[base + c * plane] - b[base + c * plane]);
            sq += e * e;
        }
        loss += w * sq;
    }
    block_partials(loss, valid, wsum, partials + 4 * (unsigned long long)blockIdx.x);
}

// kl_div_fwd's partials: ℓ = Σ_k p_k·(log p_k − log q_k), p = exp(log p) in f64, p_k = 0 → 0.
extern "C" __global__ void kl_div_fwd_partials(const float* __restrict__ log_p,  // [N,K,H,W]
                                               const float* __restrict__ log_q,  // [N,K,H,W]
                                               const float* __restrict__ mask,   // [N,H,W] or null
                                               unsigned long long pixels,        // N·H·W
                                               unsigned k,                       // K
                                               unsigned long long plane,         // H·W
                                               double* __restrict__ partials) {  // [gridDim.x, 4]
    double loss = 0.0, valid = 0.0, wsum = 0.0;
    GRID_STRIDE(p, pixels) {
        double w = pixel_weight(mask, p);
        valid += w != 0.0 ? 1.0 : 0.0;
        wsum += w;
        if (w == 0.0) continue;
        unsigned long long n = p / plane, base = n * k * plane + (p - n * plane);
        double kl = 0.0;
        for (unsigned c = 0; c < k; ++c) {
            float lp = log_p[base + c * plane], lq = log_q[base + c * plane];
            double pv = exp((double)lp);
            if (pv != 0.0) kl += pv * (double)(lp - lq);
        }
        loss += w * kl;
    }
    block_partials(loss, valid, wsum, partials + 4 * (unsigned long long)blockIdx.x);
}

// soft_cross_entropy_bwd: dlogits = c·(e^(x − m)·(Σq / Σe^(x − m)) − q), c = dloss·w/D; 0 where
// c = 0. Σq and Σe^(x − m) in f32 in class order, as on the CPU.
extern "C" __global__ void soft_ce_bwd(const float* __restrict__ logits,  // [N,K,H,W]
                                       const float* __restrict__ q,       // [N,K,H,W]
                                       const float* __restrict__ mask,    // [N,H,W] or null
                                       const float* __restrict__ dloss,   // [1]
                                       const double* __restrict__ inv_d,  // [1] from ce_finalize
                                       unsigned long long pixels,         // N·H·W
                                       unsigned k,                        // K ≥ 1
                                       unsigned long long plane,          // H·W
                                       float* __restrict__ dlogits) {     // [N,K,H,W]
    double scale = (double)dloss[0] * inv_d[0];
    GRID_STRIDE(p, pixels) {
        unsigned long long n = p / plane, base = n * k * plane + (p - n * plane);
        const float* xp = logits + base;
        const float* qp = q + base;
        float* gp = dlogits + base;
        float coef = coefficient(pixel_weight(mask, p), scale);
        if (coef == 0.0f) {
            for (unsigned c = 0; c < k; ++c) gp[c * plane] = 0.0f;
            continue;
        }
        float m = xp[0];
        for (unsigned c = 1; c < k; ++c) {
            float v = xp[c * plane];
            if (v > m) m = v;
        }
        float s = 0.0f, qsum = 0.0f;
        for (unsigned c = 0; c < k; ++c) s += expf(xp[c * plane] - m);
        for (unsigned c = 0; c < k; ++c) qsum += qp[c * plane];
        float r = qsum / s;
        for (unsigned c = 0; c < k; ++c)
            gp[c * plane] = coef * (expf(xp[c * plane] - m) * r - qp[c * plane]);
    }
}

// squared_error_bwd, one output: grad = c·(a − b) with c = sign·2·dloss·w/D (sign +1 for da,
// −1 for db), 0 where c = 0. Element-wise over [N,K,H,W].
extern "C" __global__ void squared_error_bwd(const float* __restrict__ a,      // [N,K,H,W]
                                             const float* __restrict__ b,      // [N,K,H,W]
                                             const float* __restrict__ mask,   // [N,H,W] or null
                                             const float* __restrict__ dloss,  // [1]
                                             const double* __restrict__ inv_d, // [1]
                                             double sign,                      // +1 or −1
                                             unsigned long long len,           // N·K·H·W
                                             unsigned k,                       // K ≥ 1
                                             unsigned long long plane,         // H·W
                                             float* __restrict__ grad) {       // [N,K,H,W]
    double scale = sign * (2.0 * (double)dloss[0] * inv_d[0]);
    unsigned long long image = (unsigned long long)k * plane;
    GRID_STRIDE(i, len) {
        unsigned long long n = i / image, q = i - (i / plane) * plane;
        float coef = coefficient(pixel_weight(mask, n * plane + q), scale);
        grad[i] = coef == 0.0f ? 0.0f : coef * (a[i] - b[i]);
    }
}

// kl_div_bwd, one output: wrt_p: dlog_p = c·p·(log p − log q + 1); else dlog_q = −c·p; with
// c = dloss·w/D and p = exp(log p) in f32; 0 where c = 0 or p = 0. Element-wise over [N,K,H,W].
extern "C" __global__ void kl_div_bwd(const float* __restrict__ log_p,   // [N,K,H,W]
                                      const float* __restrict__ log_q,   // [N,K,H,W]
                                      const float* __restrict__ mask,    // [N,H,W] or null
                                      const float* __restrict__ dloss,   // [1]
                                      const double* __restrict__ inv_d,  // [1]
                                      int wrt_p,                         // 1: dlog_p, 0: dlog_q
                                      unsigned long long len,            // N·K·H·W
                                      unsigned k,                        // K ≥ 1
                                      unsigned long long plane,          // H·W
                                      float* __restrict__ grad) {        // [N,K,H,W]
    double scale = (double)dloss[0] * inv_d[0];
    unsigned long long image = (unsigned long long)k * plane;
    GRID_STRIDE(i, len) {
        unsigned long long n = i / image, q = i - (i / plane) * plane;
        float coef = coefficient(pixel_weight(mask, n * plane + q), scale);
        float lp = log_p[i];
        float pv = expf(lp);
        float g;
        if (coef == 0.0f || pv == 0.0f) g = 0.0f;
        else if (wrt_p) g = coef * pv * (lp - log_q[i] + 1.0f);
        else g = -coef * pv;
        grad[i] = g;
    }
}
