// The masks of CCT's feature perturbations: the CUDA twins of salient_drop_mask_fwd and
// foreground_mask_fwd in kernels/src/perturb.rs (launchers in kernels/src/cuda/perturb.rs).
// guided_cutout_boxes is a host draw (connected components of a small label map); its boxes are
// rasterised by mix.cu's box_mask_fwd.
//
// salient_drop_mask: one block per sample finds the maximum (NaN propagates, as the CPU's fold
// and torch.max), then every thread compares its pixels with the f32 product max·gamma — the
// CPU's single rounding, so bit-identical. foreground_mask: one compare per pixel.

#define PERTURB_THREADS 256

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// NaN-propagating maximum, as the CPU fold: a NaN on either side wins.
__device__ __forceinline__ float max_nan(float a, float b) {
    return (a != a || b != b) ? (a != a ? a : b) : (b > a ? b : a);
}

// mask[n, p] = attention[n, p] < max_p(attention[n]) * gamma ? 1 : 0. One block per sample.
extern "C" __global__ void salient_drop_mask_fwd(const float* __restrict__ attention,  // [N, plane]
                                                 unsigned long long plane,            // ≥ 1
                                                 float gamma,
                                                 float* __restrict__ mask) {          // [N, plane]
    __shared__ float shared[PERTURB_THREADS];
    const float* a = attention + (unsigned long long)blockIdx.x * plane;
    float* m = mask + (unsigned long long)blockIdx.x * plane;
    float acc = -__int_as_float(0x7f800000);  // -inf
    for (unsigned long long i = threadIdx.x; i < plane; i += blockDim.x) acc = max_nan(acc, a[i]);
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = PERTURB_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] = max_nan(shared[threadIdx.x], shared[threadIdx.x + s]);
        __syncthreads();
    }
    float threshold = shared[0] * gamma;
    for (unsigned long long i = threadIdx.x; i < plane; i += blockDim.x)
        m[i] = a[i] < threshold ? 1.0f : 0.0f;
}

// mask[i] = ((label[i] != background) == keep_foreground) ? 1 : 0.
extern "C" __global__ void foreground_mask_fwd(const int* __restrict__ label,  // [N, H, W]
                                               unsigned long long n,
                                               int background,
                                               int keep_foreground,             // 0 or 1
                                               float* __restrict__ mask) {      // [N, H, W]
    GRID_STRIDE(i, n) { mask[i] = ((label[i] != background) == (keep_foreground != 0)) ? 1.0f : 0.0f; }
}
