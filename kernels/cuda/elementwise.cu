// Element-wise arithmetic and activations: CUDA twins of kernels/src/elementwise.rs (add_fwd,
// mul_fwd, mul_bwd, scale_fwd) and kernels/src/activation.rs (relu_fwd, relu_bwd).
//
// Every kernel is a grid-stride loop over a flat length `n` (any shape, flattened); each
// element is computed with the same single IEEE operation as the CPU reference, and the module
// is compiled with --fmad=false, so results are bit-identical to the CPU.
//
// Not here: broadcasting, strided views, concat/slice copies, leaky_relu, threshold.

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// y = a + b.
extern "C" __global__ void add_fwd(const float* __restrict__ a,  // [n]
                                   const float* __restrict__ b,  // [n]
                                   unsigned long long n,
                                   float* __restrict__ y) {      // [n]
    GRID_STRIDE(i, n) { y[i] = a[i] + b[i]; }
}

// y = a * b.
extern "C" __global__ void mul_fwd(const float* __restrict__ a,  // [n]
                                   const float* __restrict__ b,  // [n]
                                   unsigned long long n,
                                   float* __restrict__ y) {      // [n]
    GRID_STRIDE(i, n) { y[i] = a[i] * b[i]; }
}

// da = dy * b, db = dy * a.
extern "C" __global__ void mul_bwd(const float* __restrict__ a,   // [n]
                                   const float* __restrict__ b,   // [n]
                                   const float* __restrict__ dy,  // [n]
                                   unsigned long long n,
                                   float* __restrict__ da,        // [n]
                                   float* __restrict__ db) {      // [n]
    GRID_STRIDE(i, n) {
        float g = dy[i];
        da[i] = g * b[i];
        db[i] = g * a[i];
    }
}

// y = alpha * x (also the backward of scale, with the same alpha).
extern "C" __global__ void scale_fwd(const float* __restrict__ x,  // [n]
                                     unsigned long long n,
                                     float alpha,
                                     float* __restrict__ y) {      // [n]
    GRID_STRIDE(i, n) { y[i] = alpha * x[i]; }
}

// y = max(x, 0); NaN maps to 0 as on the CPU (`x > 0` is false for NaN).
extern "C" __global__ void relu_fwd(const float* __restrict__ x,  // [n]
                                    unsigned long long n,
                                    float* __restrict__ y) {      // [n]
    GRID_STRIDE(i, n) {
        float v = x[i];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}

// dx = dy * [x > 0].
extern "C" __global__ void relu_bwd(const float* __restrict__ x,   // [n] forward input
                                    const float* __restrict__ dy,  // [n]
                                    unsigned long long n,
                                    float* __restrict__ dx) {      // [n]
    GRID_STRIDE(i, n) { dx[i] = x[i] > 0.0f ? dy[i] : 0.0f; }
}
