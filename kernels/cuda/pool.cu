// 2-d pooling over each (n, c) plane of an [N,C,H,W] tensor: the CUDA twins of max_pool2d_fwd,
// max_pool2d_bwd, global_avg_pool_fwd and global_avg_pool_bwd in kernels/src/pool.rs (see its
// header for the window geometry and PyTorch semantics).
// Launchers: kernels/src/cuda/pool.rs.
//
// Max forward: one thread per output, visiting its window in the CPU's row-major order (strict
// `>` keeps the first of ties, a NaN wins), so it is bit-identical to the CPU.
//
// Max backward is a gather, not a scatter: one thread per input cell walks the outputs whose
// window holds it in row-major output order and adds dy where argmax equals this cell, in f32
// from 0 — the order in which the CPU's scatter loop adds into that cell — so it is deterministic
// and bit-identical (an argmax from max_pool2d_fwd always lies in its window).
//
// Global average: one block per plane, f64 tree sum (order differs from the CPU's sequential
// f64 sum: agrees to f32 rounding); its backward is a fill.
//
// Block size: POOL_THREADS, which the launcher must use. Not here: windowed average pooling,
// ceil_mode, dilation, adaptive pooling to sizes other than 1×1.

#define POOL_THREADS 256

// Window geometry of one axis: real input cells [lo, hi) of output o. Mirrors pool.rs's `span`.
struct PoolSpan {
    unsigned lo, hi;
};

__device__ __forceinline__ PoolSpan pool_span(unsigned o, unsigned k, unsigned s, unsigned p,
                                              unsigned len) {
    unsigned start = o * s;
    unsigned end = min(start + k, len + 2 * p);
    PoolSpan r;
    r.lo = start > p ? start - p : 0;
    r.hi = min(end - p, len);
    return r;
}

// Outputs [first, last] along an axis whose window holds input cell i (empty when first > last).
__device__ __forceinline__ void pool_covering(unsigned i, unsigned k, unsigned s, unsigned p,
                                              unsigned out, int* first, int* last) {
    // Window o covers padded cells [o·s, o·s + k): holds i + p iff o·s ≤ i + p < o·s + k.
    int ip = (int)(i + p);
    int lo = ip - (int)k + 1;
    *first = lo <= 0 ? 0 : (lo + (int)s - 1) / (int)s;
    *last = min(ip / (int)s, (int)out - 1);
}

// Geometry of one launch, passed by value (fits the parameter space easily).
struct PoolGeom {
    unsigned h, w, ho, wo;      // input and output plane extents
    unsigned kh, kw, sh, sw;    // window and stride
    unsigned ph, pw;            // padding
};

// y = max of each window, argmax = its flat iy·W + ix. One thread per output.
extern "C" __global__ void max_pool2d_fwd(const float* __restrict__ x,       // [N,C,H,W]
                                          unsigned long long outputs,        // N·C·Ho·Wo
                                          PoolGeom g,
                                          float* __restrict__ y,             // [N,C,Ho,Wo]
                                          unsigned* __restrict__ argmax) {   // [N,C,Ho,Wo]
    for (unsigned long long o = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         o < outputs; o += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long plane = o / ((unsigned long long)g.ho * g.wo);
        unsigned q = (unsigned)(o - plane * g.ho * g.wo);
        unsigned oy = q / g.wo, ox = q - oy * g.wo;
        PoolSpan r = pool_span(oy, g.kh, g.sh, g.ph, g.h);
        PoolSpan c = pool_span(ox, g.kw, g.sw, g.pw, g.w);
        const float* xp = x + plane * g.h * g.w;
        float best = __int_as_float(0xff800000);  // −∞
        unsigned at = r.lo * g.w + c.lo;
        for (unsigned iy = r.lo; iy < r.hi; ++iy)
            for (unsigned ix = c.lo; ix < c.hi; ++ix) {
                float v = xp[iy * g.w + ix];
                if (v > best || v != v) {
                    best = v;
                    at = iy * g.w + ix;
                }
            }
        y[o] = best;
        argmax[o] = at;
    }
}

// dx[i] = Σ dy[o] over outputs o (row-major) whose window holds i and argmax[o] = i. One thread
// per input cell.
extern "C" __global__ void max_pool2d_bwd(const float* __restrict__ dy,         // [N,C,Ho,Wo]
                                          const unsigned* __restrict__ argmax,  // [N,C,Ho,Wo]
                                          unsigned long long inputs,            // N·C·H·W
                                          PoolGeom g,
                                          float* __restrict__ dx) {             // [N,C,H,W]
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < inputs; i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long plane = i / ((unsigned long long)g.h * g.w);
        unsigned q = (unsigned)(i - plane * g.h * g.w);
        unsigned iy = q / g.w, ix = q - iy * g.w;
        int y0, y1, x0, x1;
        pool_covering(iy, g.kh, g.sh, g.ph, g.ho, &y0, &y1);
        pool_covering(ix, g.kw, g.sw, g.pw, g.wo, &x0, &x1);
        unsigned long long base = plane * g.ho * g.wo;
        float acc = 0.0f;
        for (int oy = y0; oy <= y1; ++oy)
            for (int ox = x0; ox <= x1; ++ox) {
                unsigned long long o = base + (unsigned)oy * g.wo + (unsigned)ox;
                if (argmax[o] == q) acc += dy[o];
            }
        dx[i] = acc;
    }
}

// y[p] = (Σ plane p in f64) / area. One block per plane (grid-stride over planes).
extern "C" __global__ void global_avg_pool_fwd(const float* __restrict__ x,  // [N,C,H,W]
                                               unsigned long long planes,    // N·C
                                               unsigned long long area,      // H·W ≥ 1
                                               float* __restrict__ y) {      // [N,C]
    __shared__ double shared[POOL_THREADS];
    for (unsigned long long p = blockIdx.x; p < planes; p += gridDim.x) {
        const float* xp = x + p * area;
        double acc = 0.0;
        for (unsigned long long j = threadIdx.x; j < area; j += blockDim.x) acc += (double)xp[j];
        shared[threadIdx.x] = acc;
        __syncthreads();
        for (unsigned s = POOL_THREADS / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
            __syncthreads();
        }
        if (threadIdx.x == 0) y[p] = (float)(shared[0] / (double)area);
        __syncthreads();
    }
}

// dx[p, ·] = (float)(dy[p] / area) (grid-stride over elements).
extern "C" __global__ void global_avg_pool_bwd(const float* __restrict__ dy,  // [N,C]
                                               unsigned long long len,        // N·C·H·W
                                               unsigned long long area,       // H·W ≥ 1
                                               float* __restrict__ dx) {      // [N,C,H,W]
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < len; i += (unsigned long long)blockDim.x * gridDim.x)
        dx[i] = (float)((double)dy[i / area] / (double)area);
}
