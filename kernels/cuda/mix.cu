// Mixing two images by a binary mask: CUDA twins of kernels/src/mix.rs (box_mask_fwd,
// class_mask_fwd, mix_fwd, mix_labels_fwd, mix_bwd). The draws (boxes, class choices, partners)
// stay on the host and are uploaded by the launchers; these kernels rasterise and apply them
// with the CPU's f32 operations in the CPU's order (--fmad=false), so every result is
// bit-identical to the CPU.
// Launchers: kernels/src/cuda/mix.rs.
//
// mix_bwd is a gather: one thread per element of da/db sums the shares of every sample whose
// partner it is, n ascending — the CPU's order — so no atomics and a deterministic result.
//
// Not here: the draws (Philox on the host), CowMix / soft masks.

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// m[s] = 1 inside sample s's boxes (union) or where an odd number overlap (xor), else 0; boxes
// apply in order, as on the CPU.
extern "C" __global__ void box_mask_fwd(const int* __restrict__ boxes,  // [N, B, 4] y0, x0, h, w
                                        unsigned long long n,
                                        unsigned long long h,
                                        unsigned long long w,
                                        unsigned long long per_sample,  // B
                                        int xor_combine,                // 0 union, 1 xor
                                        float* __restrict__ mask) {     // [N, H, W]
    unsigned long long plane = h * w;
    GRID_STRIDE(i, n * plane) {
        unsigned long long s = i / plane, p = i % plane;
        long long row = (long long)(p / w), col = (long long)(p % w);
        float v = 0.0f;
        for (unsigned long long b = 0; b < per_sample; b++) {
            const int* bx = boxes + (s * per_sample + b) * 4;
            if (row >= bx[0] && row < bx[0] + bx[2] && col >= bx[1] && col < bx[1] + bx[3]) {
                v = xor_combine ? 1.0f - v : 1.0f;
            }
        }
        mask[i] = v;
    }
}

// ClassMix: m[s, p] = 1 where label[partner[s], p] is one of sample s's chosen classes.
extern "C" __global__ void class_mask_fwd(const int* __restrict__ label,    // [N, H, W]
                                          const int* __restrict__ partner,  // [N] in [0, N)
                                          const int* __restrict__ classes,  // [total chosen]
                                          const int* __restrict__ starts,   // [N + 1]
                                          unsigned long long n,
                                          unsigned long long plane,  // H * W
                                          float* __restrict__ mask) {  // [N, H, W]
    GRID_STRIDE(i, n * plane) {
        unsigned long long s = i / plane, p = i % plane;
        int l = label[(unsigned long long)partner[s] * plane + p];
        float v = 0.0f;
        for (int j = starts[s]; j < starts[s + 1]; j++) {
            if (classes[j] == l) {
                v = 1.0f;
                break;
            }
        }
        mask[i] = v;
    }
}

// out[s, c] = (1 - m[s]) * a[s, c] + m[s] * src[partner[s], c]; src may be a itself.
extern "C" __global__ void mix_fwd(const float* __restrict__ a,      // [N, C, H, W]
                                   const float* __restrict__ src,    // [N, C, H, W]
                                   const float* __restrict__ mask,   // [N, H, W]
                                   const int* __restrict__ partner,  // [N]
                                   unsigned long long n,
                                   unsigned long long c,
                                   unsigned long long plane,  // H * W
                                   float* __restrict__ out) {  // [N, C, H, W]
    unsigned long long image = c * plane;
    GRID_STRIDE(i, n * image) {
        unsigned long long s = i / image, within = i % image, p = within % plane;
        float m = mask[s * plane + p];
        float sv = src[(unsigned long long)partner[s] * image + within];
        out[i] = (1.0f - m) * a[i] + m * sv;
    }
}

// Label maps: out[s] = src[partner[s]] where m[s] >= 0.5, else a[s].
extern "C" __global__ void mix_labels_fwd(const int* __restrict__ a,        // [N, C, H, W]
                                          const int* __restrict__ src,      // [N, C, H, W]
                                          const float* __restrict__ mask,   // [N, H, W]
                                          const int* __restrict__ partner,  // [N]
                                          unsigned long long n,
                                          unsigned long long c,
                                          unsigned long long plane,
                                          int* __restrict__ out) {  // [N, C, H, W]
    unsigned long long image = c * plane;
    GRID_STRIDE(i, n * image) {
        unsigned long long s = i / image, within = i % image, p = within % plane;
        out[i] = mask[s * plane + p] >= 0.5f ? src[(unsigned long long)partner[s] * image + within]
                                             : a[i];
    }
}

// Backward of mix_fwd. da[k] = (1 - m[k]) * dout[k], then, when the partner's pixels came from
// a (source_b = 0), + m[s] * dout[s] for every s with partner[s] = k, s ascending. db[k] (source
// b) = 0 + the same sum. da or db may be null (not written).
extern "C" __global__ void mix_bwd(const float* __restrict__ dout,     // [N, C, H, W]
                                   const float* __restrict__ mask,     // [N, H, W]
                                   const int* __restrict__ partner,    // [N]
                                   unsigned long long n,
                                   unsigned long long c,
                                   unsigned long long plane,
                                   int source_b,                       // 0: src = a, 1: src = b
                                   float* __restrict__ da,             // [N, C, H, W] or null
                                   float* __restrict__ db) {           // [N, C, H, W] or null
    unsigned long long image = c * plane;
    GRID_STRIDE(i, n * image) {
        unsigned long long k = i / image, within = i % image, p = within % plane;
        if (da) {
            float v = (1.0f - mask[k * plane + p]) * dout[i];
            if (!source_b) {
                for (unsigned long long s = 0; s < n; s++) {
                    if ((unsigned long long)partner[s] == k) {
                        v += mask[s * plane + p] * dout[s * image + within];
                    }
                }
            }
            da[i] = v;
        }
        if (db && source_b) {
            float v = 0.0f;
            for (unsigned long long s = 0; s < n; s++) {
                if ((unsigned long long)partner[s] == k) {
                    v += mask[s * plane + p] * dout[s * image + within];
                }
            }
            db[i] = v;
        }
    }
}
