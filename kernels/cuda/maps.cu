// Per-pixel guidance maps (GCT's flaw-map pipeline): CUDA twins of error_map_fwd,
// separable_blur_fwd, minmax_normalize_fwd and select_by_key_fwd in kernels/src/maps.rs.
// Launchers: kernels/src/cuda/maps.rs.
//
// Bit-identical to the CPU: the same f32 operations in the same order (--fmad=false); the
// blur's taps are computed on the host (scipy_gaussian_taps) and uploaded; min and max are
// exact whatever the reduction order.
//
// Not here: the dilation (pool.cu's max_pool2d), thresholds (elementwise.cu).

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

#define MAPS_THREADS 256

// Reflect padding without repeating the edge (torch's `reflect`), folded for any offset.
long long maps_reflect(long long i, long long n) {
    if (n == 1) return 0;
    long long period = 2 * (n - 1);
    long long m = i % period;
    if (m < 0) m += period;
    return m < n ? m : period - m;
}

// error_map_fwd: y[n,0,p] = mu * sum_k |[label = k, label != ignore] - probs[n,k,p]|, k ascending.
extern "C" __global__ void error_map_fwd(const float* __restrict__ probs,  // [N,K,H,W]
                                         const int* __restrict__ label,    // [N,H,W]
                                         unsigned long long pixels,        // N·H·W
                                         unsigned k,                       // K
                                         unsigned long long plane,         // H·W
                                         float mu,
                                         int ignore_index,
                                         float* __restrict__ y) {          // [N,1,H,W]
    GRID_STRIDE(p, pixels) {
        unsigned long long n = p / plane, q = p - n * plane;
        const float* pp = probs + n * k * plane + q;
        int l = label[p];
        float acc = 0.0f;
        for (unsigned c = 0; c < k; ++c) {
            float hot = (l != ignore_index && l == (int)c) ? 1.0f : 0.0f;
            acc += fabsf(hot - pp[c * plane]);
        }
        y[p] = acc * mu;
    }
}

// Horizontal pass: tmp = sum_j taps[j] * x[reflect(col + j - r)], j ascending from an f32 0.
extern "C" __global__ void separable_blur_h(const float* __restrict__ x,     // [N,C,H,W]
                                            const float* __restrict__ taps,  // [K]
                                            unsigned long long total,        // N·C·H·W
                                            unsigned long long w,
                                            unsigned long long k,            // odd
                                            float* __restrict__ tmp) {
    GRID_STRIDE(i, total) {
        unsigned long long col = i % w;
        const float* row = x + (i - col);
        long long r = (long long)(k / 2);
        float acc = 0.0f;
        for (unsigned long long j = 0; j < k; j++) {
            acc += taps[j] * row[maps_reflect((long long)col + (long long)j - r, (long long)w)];
        }
        tmp[i] = acc;
    }
}

// Vertical pass over tmp into y (no clamp).
extern "C" __global__ void separable_blur_v(const float* __restrict__ tmp,   // [N,C,H,W]
                                            const float* __restrict__ taps,  // [K]
                                            unsigned long long total,
                                            unsigned long long h,
                                            unsigned long long w,
                                            unsigned long long k,
                                            float* __restrict__ y) {
    unsigned long long plane = h * w;
    GRID_STRIDE(i, total) {
        unsigned long long p = i % plane;
        unsigned long long row = p / w, col = p % w;
        const float* src = tmp + (i - p) + col;
        long long r = (long long)(k / 2);
        float acc = 0.0f;
        for (unsigned long long j = 0; j < k; j++) {
            acc += taps[j] * src[maps_reflect((long long)row + (long long)j - r, (long long)h) * w];
        }
        y[i] = acc;
    }
}

// One block per sample: stats[2n] = min, stats[2n+1] = max of its `per` elements, both NaN if
// any element is NaN (as the CPU's min_max).
extern "C" __global__ void minmax_reduce(const float* __restrict__ x,  // [N, per]
                                         unsigned long long per,
                                         float* __restrict__ stats) {  // [N, 2]
    __shared__ float lo_s[MAPS_THREADS];
    __shared__ float hi_s[MAPS_THREADS];
    __shared__ int nan_s[MAPS_THREADS];
    const float* xs = x + (unsigned long long)blockIdx.x * per;
    float lo = __int_as_float(0x7f800000), hi = __int_as_float(0xff800000);
    int has_nan = 0;
    for (unsigned long long i = threadIdx.x; i < per; i += blockDim.x) {
        float v = xs[i];
        if (isnan(v)) {
            has_nan = 1;
        } else {
            lo = fminf(lo, v);
            hi = fmaxf(hi, v);
        }
    }
    lo_s[threadIdx.x] = lo;
    hi_s[threadIdx.x] = hi;
    nan_s[threadIdx.x] = has_nan;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            lo_s[threadIdx.x] = fminf(lo_s[threadIdx.x], lo_s[threadIdx.x + s]);
            hi_s[threadIdx.x] = fmaxf(hi_s[threadIdx.x], hi_s[threadIdx.x + s]);
            nan_s[threadIdx.x] |= nan_s[threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float nan = __int_as_float(0x7fc00000);
        stats[2 * blockIdx.x] = nan_s[0] ? nan : lo_s[0];
        stats[2 * blockIdx.x + 1] = nan_s[0] ? nan : hi_s[0];
    }
}

// y = (x * g - min) / (max - min + eps), g = [max > min_peak] when has_peak, else 1.
extern "C" __global__ void minmax_apply(const float* __restrict__ x,      // [N, per]
                                        const float* __restrict__ stats,  // [N, 2]
                                        unsigned long long total,
                                        unsigned long long per,
                                        int has_peak,
                                        float min_peak,
                                        float eps,
                                        float* __restrict__ y) {
    GRID_STRIDE(i, total) {
        unsigned long long n = i / per;
        float lo = stats[2 * n], hi = stats[2 * n + 1];
        float gate = has_peak ? (hi > min_peak ? 1.0f : 0.0f) : 1.0f;
        float span = hi - lo + eps;
        y[i] = (x[i] * gate - lo) / span;
    }
}

// select_by_key_fwd: m = [key_b >= key_a] per pixel; y = m ? a : b over every channel; the
// channel-0 thread of each pixel writes mask.
extern "C" __global__ void select_by_key_fwd(const float* __restrict__ a,      // [N,C,H,W]
                                             const float* __restrict__ b,      // [N,C,H,W]
                                             const float* __restrict__ key_a,  // [N,1,H,W]
                                             const float* __restrict__ key_b,  // [N,1,H,W]
                                             unsigned long long total,         // N·C·H·W
                                             unsigned long long c,
                                             unsigned long long plane,
                                             float* __restrict__ y,            // [N,C,H,W]
                                             float* __restrict__ mask) {       // [N,H,W]
    GRID_STRIDE(i, total) {
        unsigned long long p = i % plane;
        unsigned long long nc = i / plane;
        unsigned long long n = nc / c;
        unsigned long long px = n * plane + p;
        float m = key_b[px] >= key_a[px] ? 1.0f : 0.0f;
        y[i] = m > 0.0f ? a[i] : b[i];
        if (nc % c == 0) mask[px] = m;
    }
}
