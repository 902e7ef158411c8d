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

// One element of each update, shared by the plain kernels and the guarded ones below, so the
// two can never round differently.
__device__ __forceinline__ void sgd_element(unsigned long long i, const float* grad, float lr,
                                            float momentum, float weight_decay, int decay,
                                            int use_buf, int nesterov, float* param,
                                            float* momentum_buf) {
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

__device__ __forceinline__ void adamw_element(unsigned long long i, const float* grad,
                                              float shrink, float beta1, float beta2,
                                              float one_minus_beta1, float one_minus_beta2,
                                              float step_size, float bc2_sqrt, float eps,
                                              float* param, float* m, float* v) {
    float g = grad[i];
    float p = param[i] * shrink;
    float mi = beta1 * m[i] + one_minus_beta1 * g;
    float vi = beta2 * v[i] + one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = p - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
}

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
        sgd_element(i, grad, lr, momentum, weight_decay, decay, use_buf, nesterov, param,
                    momentum_buf);
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
        adamw_element(i, grad, shrink, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size,
                      bc2_sqrt, eps, param, m, v);
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

// ---- Guarded updates with per-step scalars in device memory (the step's update nodes) --------
// The same per-element operations as above, but the per-step scalars are read from `scalars`
// (f32[S], written by the host before each step: a captured CUDA graph stays valid) at slot
// `at`, and nothing is written when the step's guard `ok` (an f32[] flag, or null: always) is
// 0 — a step with a non-finite loss or gradient changes nothing, decided on the device.
// CPU reference: engine/src/update.rs (`sgd_step`, `adamw_step`, `assign`, `ema_update`,
// `finite_and` ops), which call the CPU kernels of kernels/src/optim.rs.

__device__ __forceinline__ bool guard_allows(const float* ok) { return ok == 0 || *ok != 0.0f; }

// sgd_step with lr = scalars[at].
extern "C" __global__ void sgd_step_guarded(const float* __restrict__ grad,  // [n]
                                            unsigned long long n,
                                            const float* __restrict__ scalars,  // [S]
                                            unsigned long long at,
                                            float momentum,
                                            float weight_decay,
                                            int decay,
                                            int use_buf,
                                            int nesterov,
                                            const float* __restrict__ ok,  // [] or null
                                            float* __restrict__ param,     // [n] in-out
                                            float* __restrict__ momentum_buf) {  // [n] or null
    if (!guard_allows(ok)) return;
    float lr = scalars[at];
    GRID_STRIDE(i, n) {
        sgd_element(i, grad, lr, momentum, weight_decay, decay, use_buf, nesterov, param,
                    momentum_buf);
    }
}

// adamw_step with step_size, shrink, bc2_sqrt = scalars[at], scalars[at + 1], scalars[at + 2].
extern "C" __global__ void adamw_step_guarded(const float* __restrict__ grad,  // [n]
                                              unsigned long long n,
                                              const float* __restrict__ scalars,  // [S]
                                              unsigned long long at,
                                              float beta1,
                                              float beta2,
                                              float one_minus_beta1,
                                              float one_minus_beta2,
                                              float eps,
                                              const float* __restrict__ ok,  // [] or null
                                              float* __restrict__ param,  // [n] in-out
                                              float* __restrict__ m,      // [n] in-out
                                              float* __restrict__ v) {    // [n] in-out
    if (!guard_allows(ok)) return;
    float step_size = scalars[at];
    float shrink = scalars[at + 1];
    float bc2_sqrt = scalars[at + 2];
    GRID_STRIDE(i, n) {
        adamw_element(i, grad, shrink, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size,
                      bc2_sqrt, eps, param, m, v);
    }
}

// ema_update with α, 1 − α = scalars[at], scalars[at + 1].
extern "C" __global__ void ema_update_guarded(const float* __restrict__ source,  // [n]
                                              unsigned long long n,
                                              const float* __restrict__ scalars,  // [S]
                                              unsigned long long at,
                                              const float* __restrict__ ok,  // [] or null
                                              float* __restrict__ target) {  // [n] in-out
    if (!guard_allows(ok)) return;
    float alpha = scalars[at];
    float one_minus_alpha = scalars[at + 1];
    GRID_STRIDE(i, n) { target[i] = alpha * target[i] + one_minus_alpha * source[i]; }
}

// target = value, word for word (f32 or i32 alike), unless the guard is 0.
extern "C" __global__ void assign_guarded(const unsigned int* __restrict__ value,  // [n]
                                          unsigned long long n,
                                          const float* __restrict__ ok,  // [] or null
                                          unsigned int* __restrict__ target) {  // [n]
    if (!guard_allows(ok)) return;
    GRID_STRIDE(i, n) { target[i] = value[i]; }
}

// finite_and, first launch (one thread): ok_out = 1 unless the incoming guard is 0.
extern "C" __global__ void finite_and_init(const float* __restrict__ ok_in,  // [] or null
                                           float* __restrict__ ok_out) {     // []
    if (blockIdx.x == 0 && threadIdx.x == 0) *ok_out = guard_allows(ok_in) ? 1.0f : 0.0f;
}

// finite_and, second launch (after the first, same stream): any non-finite x clears ok_out.
// Racing writers all write 0, so the result does not depend on the order.
extern "C" __global__ void finite_and_scan(const float* __restrict__ x,  // [n]
                                           unsigned long long n,
                                           float* __restrict__ ok_out) {  // []
    GRID_STRIDE(i, n) {
        if (!isfinite(x[i])) *ok_out = 0.0f;
    }
}
