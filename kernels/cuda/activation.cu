// Activations: the CUDA twins of relu_fwd, relu_bwd, leaky_relu_fwd and leaky_relu_bwd in
// kernels/src/activation.rs (launchers in kernels/src/cuda/activation.rs).
//
// Every kernel is a grid-stride loop over a flat length `n` (any shape, flattened) doing the
// CPU's exact f32 operations (one compare, at most one multiply; the module is compiled with
// --fmad=false), so results are bit-identical to the CPU, NaN included (`x > 0` is false for
// NaN, as on the CPU).
//
// Block size: grid-stride, any; the launchers use 256. Not here: threshold (elementwise.cu),
// softmax (softmax.cu), activations fused into other kernels.

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

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

// leaky_relu_fwd: y = x if x > 0 else slope·x.
extern "C" __global__ void leaky_relu_fwd(const float* __restrict__ x,  // [n]
                                          unsigned long long n,
                                          float slope,
                                          float* __restrict__ y) {      // [n]
    GRID_STRIDE(i, n) {
        float v = x[i];
        y[i] = v > 0.0f ? v : slope * v;
    }
}

// leaky_relu_bwd: dx = dy if x > 0 else slope·dy.
extern "C" __global__ void leaky_relu_bwd(const float* __restrict__ x,   // [n]
                                          float slope,
                                          const float* __restrict__ dy,  // [n]
                                          unsigned long long n,
                                          float* __restrict__ dx) {      // [n]
    GRID_STRIDE(i, n) {
        float g = dy[i];
        dx[i] = x[i] > 0.0f ? g : slope * g;
    }
}
