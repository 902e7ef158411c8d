// Inverted dropout, element-wise and channel-wise: the CUDA twins of dropout_fwd and
// dropout2d_fwd / dropout2d_bwd in kernels/src/dropout.rs (dropout_bwd is dy·mask, elementwise.cu's
// mul_fwd).
// Launchers: kernels/src/cuda/dropout.rs.
//
// This file is compiled after philox.cu (nvrtc.rs embeds the two as one module), whose
// philox_block, word_of, u32_to_uniform and GRID_STRIDE it uses, so the draws are the CPU's
// `Philox::bernoulli_at(i, p)` = `uniform_at(i) < p` bit for bit: element-wise, draw i of the
// stream decides element i − offset; channel-wise, draw offset + n·C + c decides plane (n, c).
// The kept multiplier `scale` = 1/(1−p) is rounded on the host exactly as the CPU's `T::of`, and
// y = x·mask is the CPU's single f32 multiply, so masks and outputs are bit-identical.
//
// Block size: grid-stride, any; the launchers use 256. Not here: p validation and the counter
// overflow check (the launcher, with the CPU's errors), alpha dropout.

// Philox::bernoulli_at(i, p) of stream (seed, stream): uniform_at(i) < p.
__device__ __forceinline__ bool dropped(unsigned long long seed, unsigned long long stream,
                                        unsigned long long i, float p) {
    unsigned w = word_of(philox_block(seed, stream, i >> 2), (unsigned)(i & 3));
    return u32_to_uniform(w) < p;
}

// dropout_fwd: mask[j] = 0 if bernoulli_at(offset + j, p) else scale; y[j] = x[j]·mask[j].
extern "C" __global__ void dropout_fwd(const float* __restrict__ x,  // [n]
                                       unsigned long long n,
                                       float p,
                                       float scale,                  // 1/(1−p), unused if p = 1
                                       unsigned long long seed,
                                       unsigned long long stream,
                                       unsigned long long offset,
                                       float* __restrict__ y,        // [n]
                                       float* __restrict__ mask) {   // [n]
    GRID_STRIDE(j, n) {
        float m = dropped(seed, stream, offset + j, p) ? 0.0f : scale;
        mask[j] = m;
        y[j] = x[j] * m;
    }
}

// dropout2d_fwd's draws: mask[j] = 0 if bernoulli_at(offset + j, p) else scale, j < N·C.
extern "C" __global__ void dropout2d_mask(unsigned long long planes,  // N·C
                                          float p,
                                          float scale,
                                          unsigned long long seed,
                                          unsigned long long stream,
                                          unsigned long long offset,
                                          float* __restrict__ mask) {  // [N, C]
    GRID_STRIDE(j, planes) mask[j] = dropped(seed, stream, offset + j, p) ? 0.0f : scale;
}

// y[n, c, :, :] = x[n, c, :, :]·mask[n, c]: dropout2d_fwd's second pass and dropout2d_bwd
// (x = dy, y = dx).
extern "C" __global__ void dropout2d_apply(const float* __restrict__ x,     // [N, C, H, W]
                                           const float* __restrict__ mask,  // [N, C]
                                           unsigned long long len,          // N·C·H·W
                                           unsigned long long plane,        // H·W ≥ 1
                                           float* __restrict__ y) {         // [N, C, H, W]
    GRID_STRIDE(i, len) y[i] = x[i] * mask[i / plane];
}
