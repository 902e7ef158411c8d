// Argmax and max over the class axis of an [N,K,H,W] map (the pseudo-label and its confidence,
// max_confidence's kernel): CUDA twins of argmax_fwd, max_fwd and max_bwd in
// kernels/src/argmax.rs, bit-identical (only comparisons and copies).
// Launchers: kernels/src/cuda/argmax.rs.
//
// One thread per pixel walks the K classes, which lie H·W apart; neighbouring threads read
// neighbouring pixels, so every class plane is read coalesced. Ties go to the lowest k; NaN
// beats every number and the first NaN stays, as on the CPU and in torch.
//
// Not here: top-k, thresholding the confidence, argmax over other axes. max_bwd does not
// validate idx (the CPU does): an index outside [0, K) simply matches no class (dx = 0).

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// Best (value, class) of pixel `p` (flat over N·H·W) of x [N,K,H,W].
__device__ __forceinline__ void pixel_max(const float* __restrict__ x, unsigned long long p,
                                          unsigned k, unsigned long long plane, float* best_out,
                                          int* idx_out) {
    unsigned long long n = p / plane, q = p - n * plane;
    const float* xp = x + n * k * plane + q;
    float best = xp[0];
    int idx = 0;
    for (unsigned c = 1; c < k; ++c) {
        float v = xp[c * plane];
        if (v > best || (isnan(v) && !isnan(best))) {
            best = v;
            idx = (int)c;
        }
    }
    *best_out = best;
    *idx_out = idx;
}

// argmax_fwd: idx[n,y,x] = argmax_k x[n,k,y,x].
extern "C" __global__ void argmax_fwd(const float* __restrict__ x,  // [N,K,H,W]
                                      unsigned long long pixels,    // N·H·W
                                      unsigned k,                   // K ≥ 1
                                      unsigned long long plane,     // H·W
                                      int* __restrict__ idx) {      // [N,H,W]
    GRID_STRIDE(p, pixels) {
        float best;
        int i;
        pixel_max(x, p, k, plane, &best, &i);
        idx[p] = i;
    }
}

// max_fwd: values, idx = max over K and its class, in one pass.
extern "C" __global__ void max_fwd(const float* __restrict__ x,  // [N,K,H,W]
                                   unsigned long long pixels,    // N·H·W
                                   unsigned k,                   // K ≥ 1
                                   unsigned long long plane,     // H·W
                                   float* __restrict__ values,   // [N,H,W]
                                   int* __restrict__ idx) {      // [N,H,W]
    GRID_STRIDE(p, pixels) {
        float best;
        int i;
        pixel_max(x, p, k, plane, &best, &i);
        values[p] = best;
        idx[p] = i;
    }
}

// max_bwd: dx[n,k,y,x] = dy[n,y,x] if idx[n,y,x] == k else 0. One thread per element of dx.
extern "C" __global__ void max_bwd(const float* __restrict__ dy,  // [N,H,W]
                                   const int* __restrict__ idx,   // [N,H,W]
                                   unsigned long long len,        // N·K·H·W
                                   unsigned k,                    // K
                                   unsigned long long plane,      // H·W
                                   float* __restrict__ dx) {      // [N,K,H,W]
    GRID_STRIDE(e, len) {
        unsigned long long q = e % plane, nk = e / plane;
        unsigned long long n = nk / k;
        unsigned c = (unsigned)(nk - n * k);
        unsigned long long p = n * plane + q;
        dx[e] = idx[p] == (int)c ? dy[p] : 0.0f;
    }
}
