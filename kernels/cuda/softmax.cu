// Softmax over the class axis of an [N,K,H,W] map, forward and backward, and sharpening: the
// CUDA twins of softmax_fwd, softmax_bwd and sharpen_fwd in kernels/src/softmax.rs.
// Launchers: kernels/src/cuda/softmax.rs.
//
// One thread per pixel (n, y, x) loops over the K classes, which are H·W apart, so a warp reads
// each class plane coalesced. Per-pixel sums over K run in f32 in class order, as on the CPU:
// * softmax_fwd: m = max (strict >, from class 0), e_k = exp(x_k − m), s = Σ e_k, y_k = e_k·(1/s);
// * softmax_bwd: d = Σ y_k·dy_k, dx_k = y_k·(dy_k − d) — the CPU's exact operations.
// softmax_bwd is bit-identical to the CPU (--fmad=false, IEEE division); the others call
// CUDA's expf/powf (≤ 2 ulp), not the CPU's libm, so they agree to a few f32 ulp.
//
// Block size: any (the launcher uses 256). Not here: softmax fused with cross entropy
// (loss.cu), other axes, temperature, masking.

// y = softmax over K at every pixel.
extern "C" __global__ void softmax_fwd(const float* __restrict__ x,  // [N,K,H,W]
                                       unsigned long long pixels,    // N·H·W
                                       unsigned k,                   // K ≥ 1
                                       unsigned long long plane,     // H·W
                                       float* __restrict__ y) {      // [N,K,H,W]
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         p < pixels; p += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long n = p / plane, q = p - n * plane;
        const float* xp = x + n * k * plane + q;
        float* yp = y + n * k * plane + q;
        float m = xp[0];
        for (unsigned c = 1; c < k; ++c) {
            float v = xp[c * plane];
            if (v > m) m = v;
        }
        float s = 0.0f;
        for (unsigned c = 0; c < k; ++c) {
            float e = expf(xp[c * plane] - m);
            yp[c * plane] = e;
            s += e;
        }
        float r = 1.0f / s;
        for (unsigned c = 0; c < k; ++c) yp[c * plane] *= r;
    }
}

// dx = y·(dy − Σ_k y·dy) from the softmax output y.
extern "C" __global__ void softmax_bwd(const float* __restrict__ y,   // [N,K,H,W]
                                       const float* __restrict__ dy,  // [N,K,H,W]
                                       unsigned long long pixels,     // N·H·W
                                       unsigned k,                    // K
                                       unsigned long long plane,      // H·W
                                       float* __restrict__ dx) {      // [N,K,H,W]
    for (unsigned long long p = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         p < pixels; p += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long n = p / plane, q = p - n * plane, base = n * k * plane + q;
        float d = 0.0f;
        for (unsigned c = 0; c < k; ++c) d += y[base + c * plane] * dy[base + c * plane];
        for (unsigned c = 0; c < k; ++c) {
            unsigned long long i = base + c * plane;
            dx[i] = y[i] * (dy[i] - d);
        }
    }
}

// sharpen_fwd: y_k = (p_k/m)^(1/T) / Σ_j (p_j/m)^(1/T), m = max_j p_j, negative p as 0, a pixel
// with m ≤ 0 all 0 (kernels/src/softmax.rs sharpen_fwd). One thread per pixel; powf is CUDA's,
// so the result agrees with the CPU's libm to a few ulp.
extern "C" __global__ void sharpen_fwd(const float* __restrict__ p,  // [N,K,H,W]
                                       unsigned long long pixels,    // N·H·W
                                       unsigned k,                   // K ≥ 1
                                       unsigned long long plane,     // H·W
                                       float power,                  // 1/T
                                       float* __restrict__ y) {      // [N,K,H,W]
    for (unsigned long long q = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         q < pixels; q += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long n = q / plane, r = q - n * plane;
        const float* pp = p + n * k * plane + r;
        float* yp = y + n * k * plane + r;
        float m = pp[0];
        for (unsigned c = 1; c < k; ++c) {
            float v = pp[c * plane];
            if (v > m) m = v;
        }
        float s = 0.0f;
        for (unsigned c = 0; c < k; ++c) {
            float v = pp[c * plane];
            float o = (m > 0.0f && v > 0.0f) ? powf(v / m, power) : 0.0f;
            yp[c * plane] = o;
            s += o;
        }
        if (s > 0.0f)
            for (unsigned c = 0; c < k; ++c) yp[c * plane] /= s;
    }
}
