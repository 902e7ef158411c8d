// Fused softmax + cross-entropy over the class axis of [N,K,H,W] logits against hard labels,
// with ignore_index, an optional per-pixel weight and the loss denominators of
// kernels/src/loss.rs: the CUDA twins of cross_entropy_fwd and cross_entropy_bwd.
//
// Per pixel (one thread; classes are H·W apart, so class planes are read coalesced):
// m = max_k x_k, s = Σ_k exp(x_k − m) in f32 in class order, ℓ = ln s − (x_t − m) as on the
// CPU. expf/logf are CUDA's (≤ 2 ulp), not the CPU's libm, so results agree to f32 rounding,
// not bit for bit. Loss = Σ_valid w·ℓ / D, accumulated in f64, deterministic: per-block f64
// partials (loss sum, valid count, weight sum, bad count), then one block adds them in a fixed
// order (`ce_finalize`).
//
// Launch sequence, forward: ce_fwd_partials → ce_finalize (writes loss[0] and inv_d[0]).
// Backward: ce_stats_partials → ce_finalize (loss is not needed, inv_d is) → ce_bwd, which
// writes dlogits = (dloss·inv_d·w)·(softmax − onehot) at valid pixels and 0 elsewhere; the
// coefficient is formed in f64 and rounded once, like the CPU's `coefficients`.
//
// D = 0 gives loss 0 and zero gradients. A target that is neither ignore_index nor in [0, K)
// cannot raise an error on the device: it is counted as bad, excluded, and makes the loss NaN,
// so it cannot pass silently (the CPU returns an error naming the pixel).
//
// Block size: CE_THREADS, which the launcher must use. Not here: soft targets, class weights,
// label smoothing.

#define CE_THREADS 256
#define DENOM_VALID_PIXELS 0
#define DENOM_ALL_PIXELS 1
#define DENOM_WEIGHT_SUM 2
#define DENOM_CONSTANT 3

// Tree sum of 4 values over the block; thread 0 writes them to out[0..4].
__device__ __forceinline__ void block_sum4(double a, double b, double c, double d,
                                           double* __restrict__ out) {
    __shared__ double sh[4][CE_THREADS];
    unsigned t = threadIdx.x;
    sh[0][t] = a; sh[1][t] = b; sh[2][t] = c; sh[3][t] = d;
    __syncthreads();
    for (unsigned s = CE_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) {
            sh[0][t] += sh[0][t + s]; sh[1][t] += sh[1][t + s];
            sh[2][t] += sh[2][t + s]; sh[3][t] += sh[3][t + s];
        }
        __syncthreads();
    }
    if (t == 0) { out[0] = sh[0][0]; out[1] = sh[1][0]; out[2] = sh[2][0]; out[3] = sh[3][0]; }
}

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

// One block: adds the partials, resolves D, writes loss[0] = (float)(Σ w·ℓ / D) (NaN when any
// target was bad, 0 when D = 0) and inv_d[0] = 1/D (0 when D = 0).
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
