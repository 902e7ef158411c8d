// Optimizer updates in place over flat parameter tensors: the CUDA twins of sgd_step,
// adamw_step and ema_update in kernels/src/optim.rs (update rules in that file's header).
// Launchers: kernels/src/cuda/optim.rs.
//
// The host computes every hyper-parameter-derived scalar exactly as the CPU does (in f64, then
// rounded to f32: lr, momentum, wd, AdamW's step size and √(1−β2ᵗ), EMA's α and 1−α), and each
// element is updated with the same f32 operations in the same order; with --fmad=false,
// IEEE sqrtf and '/', the result is bit-identical to the CPU.
//
// Not here: hyper-parameter validation (the Rust launcher does it, as the CPU kernel does),
// multi-tensor fusion (one launch per parameter tensor), AMSGrad, gradient clipping.

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// sgd_step: g = grad + wd·p (when decay); with momentum buf = μ·buf + g and the step is
// g + μ·buf (nesterov) or buf; p = p − lr·step. `momentum_buf` is untouched when !use_buf.
extern "C" __global__ void sgd_step(const float* __restrict__ grad,  // [n]
                                    unsigned long long n,
                                    float lr,
                                    float momentum,
                                    float weight_decay,
                                    int decay,                       // weight_decay != 0
                                    int use_buf,                     // momentum != 0
                                    int nesterov,
                                    float* __restrict__ param,       // [n] in-out
                                    float* __restrict__ momentum_buf) {  // [n] in-out, or null
    GRID_STRIDE(i, n) {
        float p = param[i];
        float g = decay ? grad[i] + weight_decay * p : grad[i];
        if (use_buf) {
            float b = momentum * momentum_buf[i] + g;
            momentum_buf[i] = b;
            float step = nesterov ? g + momentum * b : b;
            param[i] = p - lr * step;
        } else {
            param[i] = p - lr * g;
        }
    }
}

// adamw_step: p = p·shrink; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g·g;
// p = p − step_size·m / (√v / √bc2 + eps).
extern "C" __global__ void adamw_step(const float* __restrict__ grad,  // [n]
                                      unsigned long long n,
                                      float shrink,       // 1 − lr·wd
                                      float beta1,
                                      float beta2,
                                      float one_minus_beta1,
                                      float one_minus_beta2,
                                      float step_size,    // lr / (1 − β1ᵗ)
                                      float bc2_sqrt,     // √(1 − β2ᵗ)
                                      float eps,
                                      float* __restrict__ param,  // [n] in-out
                                      float* __restrict__ m,      // [n] in-out
                                      float* __restrict__ v) {    // [n] in-out
    GRID_STRIDE(i, n) {
        float g = grad[i];
        float p = param[i] * shrink;
        float mi = beta1 * m[i] + one_minus_beta1 * g;
        float vi = beta2 * v[i] + one_minus_beta2 * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = p - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

// ema_update: target = α·target + (1−α)·source.
extern "C" __global__ void ema_update(const float* __restrict__ source,  // [n]
                                      unsigned long long n,
                                      float alpha,
                                      float one_minus_alpha,
                                      float* __restrict__ target) {      // [n] in-out
    GRID_STRIDE(i, n) { target[i] = alpha * target[i] + one_minus_alpha * source[i]; }
}
