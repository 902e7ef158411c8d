// Spatial resizing of [N,C,H,W] tensors: the CUDA twins of resize_bilinear_fwd,
// resize_bilinear_bwd and resize_nearest_fwd (i32 label maps) in kernels/src/resize.rs (see its
// header for PyTorch's index and weight formulas, which `resize_tap` and `nearest_src` repeat in
// the same f32 operations).
// Launchers: kernels/src/cuda/resize.rs.
//
// Bilinear forward: one thread per output pixel, the CPU's expression in the CPU's operand
// order (width first, then height); with --fmad=false it is bit-identical.
//
// Bilinear backward as a gather, not a scatter with float atomics (which would make the result
// depend on scheduling): one thread per input pixel finds the output rows and columns whose taps
// can reach it — the source index i0(dst) never decreases as dst grows, so they form one range
// per axis, {dst : i0(dst) ∈ [i − 1, i]}, found by binary search — and sums their
// contributions grouped as resize.rs's transposed backward does: per output column, the
// λʰ-weighted column sum of dy over rows (its first pass, `down`), then those sums times λʷ
// over columns (its second pass), each in ascending order with the taps in the CPU's order.
// The backward is therefore deterministic and bit-identical too.
//
// Block size: any (the launcher uses 256). Not here: scale_factor, antialias, bicubic,
// 'nearest-exact', a nearest backward.

// One output index's two source taps along an axis and their weights (resize.rs's `Tap`).
struct ResizeTap {
    unsigned i0, i1;
    float l0, l1;
};

// ATen's compute_source_index_and_lambda for output index dst, in f32 as resize.rs's
// `linear_taps`.
__device__ __forceinline__ ResizeTap resize_tap(unsigned in, unsigned out, int align_corners,
                                                unsigned dst) {
    ResizeTap t;
    if (in == out) {  // the axis is copied outright
        t.i0 = dst; t.i1 = dst; t.l0 = 1.0f; t.l1 = 0.0f;
        return t;
    }
    float src;
    if (align_corners) {
        float scale = out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f;
        src = scale * (float)dst;
    } else {
        float scale = (float)in / (float)out;
        src = scale * ((float)dst + 0.5f) - 0.5f;
        if (src < 0.0f) src = 0.0f;
    }
    unsigned i0 = min((unsigned)floorf(src), in - 1);
    float l1 = fminf(fmaxf(src - (float)i0, 0.0f), 1.0f);
    t.i0 = i0;
    t.i1 = i0 < in - 1 ? i0 + 1 : i0;
    t.l0 = 1.0f - l1;
    t.l1 = l1;
    return t;
}

// First dst in [0, out) with i0(dst) ≥ target (out when none): i0 is non-decreasing in dst.
__device__ __forceinline__ unsigned resize_first_at_least(unsigned in, unsigned out,
                                                          int align_corners, unsigned target) {
    unsigned lo = 0, hi = out;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (resize_tap(in, out, align_corners, mid).i0 >= target) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

// y[n,c,oy,ox] = (x[i0,j0]·λ0ʷ + x[i0,j1]·λ1ʷ)·λ0ʰ + (x[i1,j0]·λ0ʷ + x[i1,j1]·λ1ʷ)·λ1ʰ.
extern "C" __global__ void resize_bilinear_fwd(const float* __restrict__ x,  // [N,C,H,W]
                                               unsigned long long outputs,   // N·C·Ho·Wo
                                               unsigned h, unsigned w,       // input extents
                                               unsigned ho, unsigned wo,     // output extents
                                               int align_corners,
                                               float* __restrict__ y) {      // [N,C,Ho,Wo]
    for (unsigned long long o = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         o < outputs; o += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long plane = o / ((unsigned long long)ho * wo);
        unsigned q = (unsigned)(o - plane * ho * wo);
        unsigned oy = q / wo, ox = q - oy * wo;
        ResizeTap r = resize_tap(h, ho, align_corners, oy);
        ResizeTap c = resize_tap(w, wo, align_corners, ox);
        const float* x0 = x + plane * h * w + (unsigned long long)r.i0 * w;
        const float* x1 = x + plane * h * w + (unsigned long long)r.i1 * w;
        float top = x0[c.i0] * c.l0 + x0[c.i1] * c.l1;
        float bottom = x1[c.i0] * c.l0 + x1[c.i1] * c.l1;
        y[o] = top * r.l0 + bottom * r.l1;
    }
}

// dx[n,c,iy,ix] = Σ_ox λʷ·(Σ_oy λʰ·dy[oy,ox]) over the taps that land on (iy, ix), grouped and
// ordered as the CPU's two passes. One thread per input pixel.
extern "C" __global__ void resize_bilinear_bwd(const float* __restrict__ dy,  // [N,C,Ho,Wo]
                                               unsigned long long inputs,     // N·C·H·W
                                               unsigned h, unsigned w,        // input extents
                                               unsigned ho, unsigned wo,      // output extents
                                               int align_corners,
                                               float* __restrict__ dx) {      // [N,C,H,W]
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < inputs; i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long plane = i / ((unsigned long long)h * w);
        unsigned q = (unsigned)(i - plane * h * w);
        unsigned iy = q / w, ix = q - iy * w;
        unsigned y0 = resize_first_at_least(h, ho, align_corners, iy > 0 ? iy - 1 : 0);
        unsigned y1 = resize_first_at_least(h, ho, align_corners, iy + 1);
        unsigned x0 = resize_first_at_least(w, wo, align_corners, ix > 0 ? ix - 1 : 0);
        unsigned x1 = resize_first_at_least(w, wo, align_corners, ix + 1);
        const float* gp = dy + plane * ho * wo;
        // The CPU's two passes, in its grouping: down[iy, ox] = Σ_oy (λ0ʰ·dy if i0 = iy, then
        // λ1ʰ·dy if i1 = iy), oy ascending from 0; then dx = Σ_ox (λ0ʷ·down if j0 = ix, then
        // λ1ʷ·down if j1 = ix), ox ascending from 0. (A per-output λʰ·λʷ·dy would round
        // differently from resize.rs's transposed backward.)
        float acc = 0.0f;
        for (unsigned ox = x0; ox < x1; ++ox) {
            ResizeTap c = resize_tap(w, wo, align_corners, ox);
            bool left = c.i0 == ix, right = c.i1 == ix;
            if (!left && !right) continue;
            float down = 0.0f;
            for (unsigned oy = y0; oy < y1; ++oy) {
                ResizeTap r = resize_tap(h, ho, align_corners, oy);
                float g = gp[(unsigned long long)oy * wo + ox];
                if (r.i0 == iy) down += r.l0 * g;
                if (r.i1 == iy) down += r.l1 * g;
            }
            if (left) acc += c.l0 * down;
            if (right) acc += c.l1 * down;
        }
        dx[i] = acc;
    }
}

// ATen's nearest_idx: min(⌊dst·(in/out)⌋, in − 1) with the scale in f32.
__device__ __forceinline__ unsigned nearest_src(unsigned in, unsigned out, unsigned dst) {
    float scale = (float)in / (float)out;
    return min((unsigned)floorf((float)dst * scale), in - 1);
}

// y[n,c,oy,ox] = x[n,c,src(oy),src(ox)] for 32-bit labels (i32). One thread per output.
extern "C" __global__ void resize_nearest_fwd(const int* __restrict__ x,   // [N,C,H,W]
                                              unsigned long long outputs,  // N·C·Ho·Wo
                                              unsigned h, unsigned w,      // input extents
                                              unsigned ho, unsigned wo,    // output extents
                                              int* __restrict__ y) {       // [N,C,Ho,Wo]
    for (unsigned long long o = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         o < outputs; o += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long plane = o / ((unsigned long long)ho * wo);
        unsigned q = (unsigned)(o - plane * ho * wo);
        unsigned oy = q / wo, ox = q - oy * wo;
        y[o] = x[plane * h * w + (unsigned long long)nearest_src(h, ho, oy) * w +
                 nearest_src(w, wo, ox)];
    }
}
