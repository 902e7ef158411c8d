// Dot-product self-attention over the pixels of a feature map, forward and backward: the CUDA
// twins of attention_fwd and attention_bwd in kernels/src/attention.rs (PseudoSeg's SGC head).
// Launchers: kernels/src/cuda/attention.rs.
//
// Per image, P positions, q, k: [d, P], v, y: [c, P]. The weights A (row i = query i, softmax
// over keys j) live in a [N, P, P] scratch buffer the launcher allocates:
// * attention_weights: one thread per (n, i) writes row i: scores s_ij = scale·Σ_d q·k (−1e9
//   at excluded pairs), then exp(s − max) and the division by their sum, in f32 in j order;
// * attention_apply: one thread per (n, c, i): y = Σ_j A_ij·v_cj;
// * attention_dv: one thread per (n, c, j): dv = Σ_i dy_ci·A_ij;
// * attention_dscores: one thread per (n, i) rewrites row i in place as dS_ij = A_ij·(dA_ij − r),
//   dA_ij = Σ_c dy_ci·v_cj, r = Σ_j dA_ij·A_ij (0 at excluded pairs) — after attention_dv;
// * attention_dq: one thread per (n, d, i): dq = scale·Σ_j dS_ij·k_dj;
// * attention_dk: one thread per (n, d, j): dk = scale·Σ_i dS_ij·q_di.
// The CPU sums through GEMMs in another order and uses its own exp, so results agree to f32
// rounding (a few ulp per term), not bit for bit.
//
// Block size: any (grid-stride; the launchers use 256). Not here: several heads, tiled or
// shared-memory GEMMs (P is a feature map's pixel count: tens to a few thousand).

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// Whether the pair (query i, key j) of image n is excluded (one of them is padding).
__device__ __forceinline__ bool excluded(const float* valid, unsigned long long n,
                                         unsigned long long p, unsigned long long i,
                                         unsigned long long j) {
    return valid != nullptr && valid[n * p + i] * valid[n * p + j] == 0.0f;
}

extern "C" __global__ void attention_weights(const float* __restrict__ q,      // [N,d,P]
                                             const float* __restrict__ k,      // [N,d,P]
                                             const float* __restrict__ valid,  // [N,P] or null
                                             unsigned long long n_img,         // N
                                             unsigned d,                       // d
                                             unsigned long long p,             // P
                                             float scale,
                                             float* __restrict__ a) {          // [N,P,P]
    GRID_STRIDE(row, n_img * p) {
        unsigned long long n = row / p, i = row - n * p;
        const float* qn = q + n * d * p;
        const float* kn = k + n * d * p;
        float* ar = a + row * p;
        float m = __int_as_float(0xff800000);  // −∞
        for (unsigned long long j = 0; j < p; ++j) {
            float s;
            if (excluded(valid, n, p, i, j)) {
                s = -1e9f;
            } else {
                s = 0.0f;
                for (unsigned c = 0; c < d; ++c) s += qn[c * p + i] * kn[c * p + j];
                s *= scale;
            }
            ar[j] = s;
            if (s > m) m = s;
        }
        float sum = 0.0f;
        for (unsigned long long j = 0; j < p; ++j) {
            float e = expf(ar[j] - m);
            ar[j] = e;
            sum += e;
        }
        float inv = 1.0f / sum;
        for (unsigned long long j = 0; j < p; ++j) ar[j] *= inv;
    }
}

extern "C" __global__ void attention_apply(const float* __restrict__ a,  // [N,P,P]
                                           const float* __restrict__ v,  // [N,c,P]
                                           unsigned long long n_img,     // N
                                           unsigned c,                   // c
                                           unsigned long long p,         // P
                                           float* __restrict__ y) {      // [N,c,P]
    GRID_STRIDE(e, n_img * c * p) {
        unsigned long long i = e % p, nc = e / p, n = nc / c;
        const float* ar = a + (n * p + i) * p;
        const float* vr = v + nc * p;
        float acc = 0.0f;
        for (unsigned long long j = 0; j < p; ++j) acc += ar[j] * vr[j];
        y[e] = acc;
    }
}

extern "C" __global__ void attention_dv(const float* __restrict__ a,   // [N,P,P]
                                        const float* __restrict__ dy,  // [N,c,P]
                                        unsigned long long n_img,      // N
                                        unsigned c,                    // c
                                        unsigned long long p,          // P
                                        float* __restrict__ dv) {      // [N,c,P]
    GRID_STRIDE(e, n_img * c * p) {
        unsigned long long j = e % p, nc = e / p, n = nc / c;
        const float* an = a + n * p * p;
        const float* dyr = dy + nc * p;
        float acc = 0.0f;
        for (unsigned long long i = 0; i < p; ++i) acc += dyr[i] * an[i * p + j];
        dv[e] = acc;
    }
}

extern "C" __global__ void attention_dscores(const float* __restrict__ v,      // [N,c,P]
                                             const float* __restrict__ dy,     // [N,c,P]
                                             const float* __restrict__ valid,  // [N,P] or null
                                             unsigned long long n_img,         // N
                                             unsigned c,                       // c
                                             unsigned long long p,             // P
                                             float* __restrict__ a) {  // [N,P,P]: A in, dS out
    GRID_STRIDE(row, n_img * p) {
        unsigned long long n = row / p, i = row - n * p;
        const float* vn = v + n * c * p;
        const float* dyn = dy + n * c * p;
        float* ar = a + row * p;
        float r = 0.0f;
        for (unsigned long long j = 0; j < p; ++j) {
            float da = 0.0f;
            for (unsigned cc = 0; cc < c; ++cc) da += dyn[cc * p + i] * vn[cc * p + j];
            r += da * ar[j];
        }
        for (unsigned long long j = 0; j < p; ++j) {
            float da = 0.0f;
            for (unsigned cc = 0; cc < c; ++cc) da += dyn[cc * p + i] * vn[cc * p + j];
            ar[j] = excluded(valid, n, p, i, j) ? 0.0f : ar[j] * (da - r);
        }
    }
}

extern "C" __global__ void attention_dq(const float* __restrict__ ds,  // [N,P,P]
                                        const float* __restrict__ k,   // [N,d,P]
                                        unsigned long long n_img,      // N
                                        unsigned d,                    // d
                                        unsigned long long p,          // P
                                        float scale,
                                        float* __restrict__ dq) {      // [N,d,P]
    GRID_STRIDE(e, n_img * d * p) {
        unsigned long long i = e % p, nd = e / p, n = nd / d;
        const float* dsr = ds + (n * p + i) * p;
        const float* kr = k + nd * p;
        float acc = 0.0f;
        for (unsigned long long j = 0; j < p; ++j) acc += dsr[j] * kr[j];
        dq[e] = scale * acc;
    }
}

extern "C" __global__ void attention_dk(const float* __restrict__ ds,  // [N,P,P]
                                        const float* __restrict__ q,   // [N,d,P]
                                        unsigned long long n_img,      // N
                                        unsigned d,                    // d
                                        unsigned long long p,          // P
                                        float scale,
                                        float* __restrict__ dk) {      // [N,d,P]
    GRID_STRIDE(e, n_img * d * p) {
        unsigned long long j = e % p, nd = e / p, n = nd / d;
        const float* dsn = ds + n * p * p;
        const float* qr = q + nd * p;
        float acc = 0.0f;
        for (unsigned long long i = 0; i < p; ++i) acc += dsn[i * p + j] * qr[i];
        dk[e] = scale * acc;
    }
}
