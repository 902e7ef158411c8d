// The losses of kernels/src/loss.rs, forward and backward: the CUDA twins of cross_entropy_fwd /
// _bwd (hard labels, fused with the softmax), soft_cross_entropy_fwd / _bwd, squared_error_fwd /
// _bwd and binary_cross_entropy_fwd / _bwd (launchers in kernels/src/cuda/loss.rs). One module,
// so every pixel loss finishes with the same `ce_finalize`.
//
// Maps are [N,K,H,W]. One thread per pixel walks the K class planes (H·W apart, so neighbouring
// threads read neighbouring words, and every class plane is read coalesced).
//
// Reductions are deterministic: each `*_partials` block writes one row of four f64 partials
// [Σ w·ℓ, valid count, Σ w, bad count] (a tree sum in a fixed order; the masked losses have no
// bad count), and `ce_finalize` (one block) adds the rows in a fixed order, resolves the
// denominator (DENOM_*: valid pixels, all pixels, weight sum, a constant) and writes loss[0] and
// inv_d[0] = 1/D (0 when D = 0, which gives loss 0 and zero gradients). The order of the f64
// additions differs from the CPU's, so loss values agree to f32 rounding, not always bit for bit.
//
// Hard labels (ce_*), with ignore_index and an optional per-pixel weight: m = max_k x_k,
// s = Σ_k exp(x_k − m) in f32 in class order, ℓ = ln s − (x_t − m) as on the CPU; expf/logf are
// CUDA's (≤ 2 ulp), not the CPU's libm. ce_bwd writes dlogits = (dloss·inv_d·w)·(softmax −
// onehot) at valid pixels and 0 elsewhere, the coefficient formed in f64 and rounded once, like
// the CPU's `coefficients`. A target that is neither ignore_index nor in [0, K) cannot raise an
// error on the device: it is counted as bad, excluded, and makes the loss NaN, so it cannot pass
// silently (the CPU returns an error naming the pixel).
//
// Masked probability-space losses (soft CE, squared error): the optional mask [N,H,W] is
// both validity (≠ 0) and weight. Per pixel, every quantity is formed exactly as on the CPU:
// class sums in f64 in class order, softmax statistics (max, Σ exp) in f32 in class order,
// gradient coefficients dloss·w/D formed in f64 and rounded once. Pixels with mask 0 are skipped
// outright (gradient exactly 0), so NaN or ∞ there cannot leak. squared_error_bwd is the CPU's
// exact f32/f64 arithmetic (--fmad=false) and so bit-identical given the same D; the soft-CE
// kernels use CUDA's expf/log, which differ from the CPU's libm by an ulp or two.
//
// Launch sequences. Hard labels, forward: ce_fwd_partials → ce_finalize (loss[0], inv_d[0]);
// backward: ce_stats_partials → ce_finalize (for inv_d) → ce_bwd. Masked, forward:
// <loss>_fwd_partials → ce_finalize; backward: masked_stats_partials → ce_finalize (for inv_d) →
// <loss>_bwd.
//
// Block size: LOSS_THREADS (the tree sums assume it), which the launchers use. Not here: softmax
// alone (softmax.cu), class weights, label smoothing, gradients with respect to the mask or the
// soft target.

#define LOSS_THREADS 256

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

#define DENOM_VALID_PIXELS 0
#define DENOM_ALL_PIXELS 1
#define DENOM_WEIGHT_SUM 2
#define DENOM_CONSTANT 3

// Tree sum of 4 values over the block; thread 0 writes them to out[0..4].
__device__ __forceinline__ void block_sum4(double a, double b, double c, double d,
                                           double* __restrict__ out) {
    __shared__ double sh[4][LOSS_THREADS];
    unsigned t = threadIdx.x;
    sh[0][t] = a; sh[1][t] = b; sh[2][t] = c; sh[3][t] = d;
    __syncthreads();
    for (unsigned s = LOSS_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) {
            sh[0][t] += sh[0][t + s]; sh[1][t] += sh[1][t + s];
            sh[2][t] += sh[2][t + s]; sh[3][t] += sh[3][t + s];
        }
        __syncthreads();
    }
    if (t == 0) { out[0] = sh[0][0]; out[1] = sh[1][0]; out[2] = sh[2][0]; out[3] = sh[3][0]; }
}

// ---------------------------------------------------------------- hard labels

// Per-block partials of the forward: [loss Σ w·ℓ, valid count, Σ w over valid, bad count].
// pixel_loss (nullable) receives the unweighted ℓ per pixel, 0 at ignored or bad pixels.
extern "C" __global__ void ce_fwd_partials(const float* __restrict__ logits,  // [N,K,H,W]
                                           const int* __restrict__ target,    // [N,H,W]
                                           const float* __restrict__ weight,  // [N,H,W] or null
                                           unsigned long long pixels,         // N·H·W
                                           unsigned k,                        // K ≥ 1
                                           unsigned long long plane,          // H·W
                                           int ignore_index,
                                           float* __restrict__ pixel_loss,    // [N,H,W] or null
                                           double* __restrict__ partials) {   // [gridDim.x, 4]
    double loss = 0.0, valid = 0.0, wsum = 0.0, bad = 0.0;
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         p < pixels; p += (unsigned long long)blockDim.x * gridDim.x) {
        int t = target[p];
        bool ok = t != ignore_index && t >= 0 && (unsigned)t < k;
        if (t != ignore_index && !ok) bad += 1.0;
        if (!ok) {
            if (pixel_loss) pixel_loss[p] = 0.0f;
            continue;
        }
        unsigned long long n = p / plane, q = p - n * plane;
        const float* xp = logits + n * k * plane + q;
        float m = xp[0];
        for (unsigned c = 1; c < k; ++c) {
            float v = xp[c * plane];
            if (v > m) m = v;
        }
        float s = 0.0f;
        for (unsigned c = 0; c < k; ++c) s += expf(xp[c * plane] - m);
        float l = logf(s) - (xp[(unsigned long long)t * plane] - m);
        if (pixel_loss) pixel_loss[p] = l;
        double w = weight ? (double)weight[p] : 1.0;
        valid += 1.0;
        wsum += w;
        if (w != 0.0) loss += w * (double)l;
    }
    block_sum4(loss, valid, wsum, bad, partials + 4 * (unsigned long long)blockIdx.x);
}

// Per-block partials of the statistics alone (backward): [0, valid count, Σ w, bad count].
extern "C" __global__ void ce_stats_partials(const int* __restrict__ target,    // [N,H,W]
                                             const float* __restrict__ weight,  // [N,H,W] or null
                                             unsigned long long pixels,         // N·H·W
                                             unsigned k,                        // K
                                             int ignore_index,
                                             double* __restrict__ partials) {   // [gridDim.x, 4]
    double valid = 0.0, wsum = 0.0, bad = 0.0;
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         p < pixels; p += (unsigned long long)blockDim.x * gridDim.x) {
        int t = target[p];
        if (t == ignore_index) continue;
        if (t < 0 || (unsigned)t >= k) {
            bad += 1.0;
            continue;
        }
        valid += 1.0;
        wsum += weight ? (double)weight[p] : 1.0;
    }
    block_sum4(0.0, valid, wsum, bad, partials + 4 * (unsigned long long)blockIdx.x);
}

// The finish of every loss in this file (hard labels and masked alike). One block: adds the
// partials, resolves D, writes loss[0] = (float)(Σ w·ℓ / D) (NaN when any target was bad, 0 when
// D = 0) and inv_d[0] = 1/D (0 when D = 0).
extern "C" __global__ void ce_finalize(const double* __restrict__ partials,  // [count, 4]
                                       unsigned count,
                                       int denominator,         // DENOM_*
                                       double constant,         // D for DENOM_CONSTANT
                                       unsigned long long pixels,  // N·H·W, D for ALL_PIXELS
                                       float* __restrict__ loss,   // [1]
                                       double* __restrict__ inv_d) {  // [1]
    double a = 0.0, b = 0.0, c = 0.0, d = 0.0;
    for (unsigned i = threadIdx.x; i < count; i += blockDim.x) {
        a += partials[4 * i]; b += partials[4 * i + 1];
        c += partials[4 * i + 2]; d += partials[4 * i + 3];
    }
    __shared__ double total[4];
    block_sum4(a, b, c, d, total);
    __syncthreads();
    if (threadIdx.x == 0) {
        double den = denominator == DENOM_VALID_PIXELS ? total[1]
                   : denominator == DENOM_ALL_PIXELS   ? (double)pixels
                   : denominator == DENOM_WEIGHT_SUM   ? total[2]
                                                       : constant;
        double inv = den == 0.0 ? 0.0 : 1.0 / den;
        inv_d[0] = inv;
        loss[0] = total[3] > 0.0 ? __int_as_float(0x7fffffff) : (float)(total[0] * inv);
    }
}

// dlogits = c·(softmax(x) − onehot(t)) with c = (float)(dloss·inv_d·w) at valid pixels with
// c ≠ 0, exactly 0 elsewhere (so NaN at ignored pixels cannot leak). One thread per pixel.
extern "C" __global__ void ce_bwd(const float* __restrict__ logits,  // [N,K,H,W]
                                  const int* __restrict__ target,    // [N,H,W]
                                  const float* __restrict__ weight,  // [N,H,W] or null
                                  const float* __restrict__ dloss,   // [1]
                                  const double* __restrict__ inv_d,  // [1] from ce_finalize
                                  unsigned long long pixels,         // N·H·W
                                  unsigned k,                        // K ≥ 1
                                  unsigned long long plane,          // H·W
                                  int ignore_index,
                                  float* __restrict__ dlogits) {     // [N,K,H,W]
    double scale = (double)dloss[0] * inv_d[0];
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         p < pixels; p += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long n = p / plane, q = p - n * plane;
        const float* xp = logits + n * k * plane + q;
        float* gp = dlogits + n * k * plane + q;
        int t = target[p];
        double w = weight ? (double)weight[p] : 1.0;
        bool skip = t == ignore_index || t < 0 || (unsigned)t >= k || w == 0.0 || scale == 0.0;
        float coef = skip ? 0.0f : (float)(scale * w);
        if (coef == 0.0f) {
            for (unsigned c = 0; c < k; ++c) gp[c * plane] = 0.0f;
            continue;
        }
        float m = xp[0];
        for (unsigned c = 1; c < k; ++c) {
            float v = xp[c * plane];
            if (v > m) m = v;
        }
        float s = 0.0f;
        for (unsigned c = 0; c < k; ++c) s += expf(xp[c * plane] - m);
        float r = 1.0f / s;
        for (unsigned c = 0; c < k; ++c) {
            float prob = expf(xp[c * plane] - m) * r;
            float hot = (int)c == t ? 1.0f : 0.0f;
            gp[c * plane] = coef * (prob - hot);
        }
    }
}

// ---------------------------------------------------------------- masked losses

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

// binary_cross_entropy_fwd: loss[0] = Σ (max(x, 0) − x·t + log1p(exp(−|x|))) / len, in f64 (the
// CPU's formula and precision; kernels/src/loss.rs binary_cross_entropy_fwd). One block of
// LOSS_THREADS: the inputs are class logits (N·(K−1) elements), and one block sums them in a
// fixed order, so the result is deterministic.
extern "C" __global__ void binary_cross_entropy_fwd(const float* __restrict__ x,  // [len]
                                                    const float* __restrict__ t,  // [len]
                                                    unsigned long long len,
                                                    float* __restrict__ loss) {   // [1]
    __shared__ double shared[LOSS_THREADS];
    double acc = 0.0;
    for (unsigned long long i = threadIdx.x; i < len; i += blockDim.x) {
        double xv = (double)x[i], tv = (double)t[i];
        acc += fmax(xv, 0.0) - xv * tv + log1p(exp(-fabs(xv)));
    }
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = LOSS_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) loss[0] = len == 0 ? 0.0f : (float)(shared[0] / (double)len);
}

// binary_cross_entropy_bwd: dx = (dloss/len)·(σ(x) − t), σ split by sign as on the CPU.
extern "C" __global__ void binary_cross_entropy_bwd(const float* __restrict__ x,      // [len]
                                                    const float* __restrict__ t,      // [len]
                                                    const float* __restrict__ dloss,  // [1]
                                                    unsigned long long len,
                                                    float* __restrict__ dx) {         // [len]
    float coef = dloss[0] / (float)len;
    GRID_STRIDE(i, len) {
        float v = x[i];
        float sigmoid = v < 0.0f ? expf(v) / (1.0f + expf(v)) : 1.0f / (1.0f + expf(-v));
        dx[i] = coef * (sigmoid - t[i]);
    }
}
