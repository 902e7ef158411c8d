// 2-d convolution on NCHW f32 (stride, zero padding, dilation, groups, optional bias): the CUDA
// twins of conv2d_fwd and conv2d_bwd in kernels/src/conv2d.rs, as implicit GEMMs — no im2col
// buffer is ever written; each tile of the virtual `col` matrix is gathered from x (or dy)
// straight into shared memory.
// Launchers: kernels/src/cuda/conv2d.rs.
//
// The three products, per group g (Cg = Ci/groups, Og = Co/groups, P = Ho·Wo, Q = H·W):
//   forward  y  [Og, N·P]  = W_g [Og, Cg·kh·kw] · col [Cg·kh·kw, N·P]       (conv2d_fwd_m*)
//            split along K into S slices when the output has too few tiles to fill the GPU,
//            finished by conv2d_sum_slices (which adds the bias), as for dW below.
//   dX       dx [Cg, N·Q]  = W_gᵀ [Cg, Og·kh·kw] · dycol [Og·kh·kw, N·Q]   (conv2d_dx_m*)
//            where dycol[(o,ki,kj), (n,iy,ix)] = dy[n, o, oy, ox] for the output pixel whose tap
//            (ki,kj) reads (iy,ix) — oy·sh = iy + ph − ki·dh exactly — and 0 where none does:
//            the transposed convolution as a gather, so every dx element is written once.
//   dW       dw [Og, Cg·kh·kw] = dy_g [Og, N·P] · colᵀ [N·P, Cg·kh·kw]     (conv2d_dw_m*)
//            split along N·P into S slices (grid z); slice s writes its own partial
//            [S, Co, Cg·kh·kw] and conv2d_sum_slices adds the S partials in slice order — no
//            float atomics, so the result is deterministic for a shape (S depends on the shape
//            only). With S = 1 the GEMM writes dw directly.
//   db       one block per channel, f64 tree sum in a fixed order (conv2d_db).
// The batch is folded into the GEMM's column dimension, so one launch covers all images.
//
// GEMM tiling (conv_gemm_tile): a block of CONV_THREADS = 256 threads computes a BM × 128 output
// tile (BM = 128, 64, 32 or 16: the launcher picks the smallest that covers the rows, up to
// 128), streaming K through shared memory 8 at a time, double-buffered (the next tile's global
// loads are in registers while the current one is multiplied, one __syncthreads per K step).
// Thread (tx, ty) = (t % 16, t / 16) owns a (BM/16) × 8 register micro-tile: rows ty·BM/16 + i,
// columns tx·4 + j and 64 + tx·4 + j (two float4 reads per K step, conflict-free). Products use
// explicit fmaf (the module is compiled with --fmad=false, which only stops the compiler from
// contracting a·b + c itself). Accumulation is f32, in K order within a thread.
//
// Loading: the A tile (BM × 8) is read as (row t/8 + 32·j, k t%8); the B tile (8 × 128) as
// (k t/32, column t%32 + 32·j), so a thread decomposes one k per operand per K step and its four
// columns once per kernel (consecutive threads read consecutive columns: coalesced along pixels).
//
// Depthwise (groups = Ci = Co > 1) takes direct kernels instead, in the CPU's operation order:
// conv2d_depthwise_fwd and conv2d_depthwise_dx are bit-identical to the CPU (the same f32 mul
// then add, --fmad=false); conv2d_depthwise_dw is an f64 tree sum per (channel, tap).
//
// Launch bounds ask for 3 resident blocks per SM at BM = 16 / 32 (≤ 80 registers), 2 at BM = 64
// and 1 at BM = 128 (the 8×8 micro-tile needs ~140 registers): left to itself ptxas squeezed
// conv2d_fwd_m32 into 64 registers with a 4-byte spill on sm_90.
//
// Index arithmetic is 32-bit: the launcher rejects tensors of 2^31 elements or more.
// Block size: CONV_THREADS for every kernel here. Not here: transposed convolution as an op,
// NHWC, tensor cores / TF32, fused activation.

#define CONV_THREADS 256
#define CONV_BN 128
#define CONV_BK 8
// An index that fails every bounds check below: marks a column beyond the matrix.
#define CONV_OUTSIDE (-(1 << 30))

struct ConvGeom {
    int n, ci, h, w;         // input [N, Ci, H, W]
    int co, ho, wo;          // output [N, Co, Ho, Wo]
    int kh, kw, sh, sw, ph, pw, dh, dw;
    int groups, cig, cog;    // groups, Ci/groups, Co/groups
};

template <int BM>
struct ConvSmem {
    // +4: the A tile is written along k (stride BM + 4 spreads a warp's 32 writes over all
    // banks) and read as float4 along rows (BM + 4 keeps rows 16-byte aligned).
    float a[2][CONV_BK][BM + 4];
    float b[2][CONV_BK][CONV_BN];
};

// The GEMM core. `op` supplies the operands: a_row(k) / a(row, m) for A[m][k] and b_row(k) /
// b(row, j) for B[k][column j of this thread's four]; it returns 0 outside the matrix. Computes
// this thread's micro-tile acc of C[m0.., n0..] over k in [k_begin, k_end).
template <int BM, class Op>
__device__ __forceinline__ void conv_gemm_tile(const Op& op, int m_rows, int m0, int k_begin,
                                               int k_end, float (&acc)[BM / 16][8]) {
    constexpr int TM = BM / 16;
    constexpr int A_LOADS = BM * CONV_BK >= CONV_THREADS ? BM * CONV_BK / CONV_THREADS : 1;
    __shared__ __align__(16) ConvSmem<BM> sm;
    const int t = threadIdx.x;
    const int tx = t % 16, ty = t / 16;
    const int a_k = t % CONV_BK, a_m = t / CONV_BK;
    const int b_k = t / 32;
    float ra[A_LOADS], rb[4];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = 0.0f;

    auto load = [&](int k0) {
        int ka = k0 + a_k;
        typename Op::ARow arow = op.a_row(ka);
#pragma unroll
        for (int j = 0; j < A_LOADS; j++) {
            int m = a_m + 32 * j;
            ra[j] = (m < BM && m0 + m < m_rows && ka < k_end) ? op.a(arow, m0 + m) : 0.0f;
        }
        int kb = k0 + b_k;
        typename Op::BRow brow = op.b_row(kb);
#pragma unroll
        for (int j = 0; j < 4; j++) rb[j] = kb < k_end ? op.b(brow, j) : 0.0f;
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int j = 0; j < A_LOADS; j++) {
            int m = a_m + 32 * j;
            if (m < BM) sm.a[buf][a_k][m] = ra[j];
        }
#pragma unroll
        for (int j = 0; j < 4; j++) sm.b[buf][b_k][t % 32 + 32 * j] = rb[j];
    };

    if (k_begin >= k_end) return;
    load(k_begin);
    store(0);
    __syncthreads();
    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += CONV_BK) {
        bool more = k0 + CONV_BK < k_end;
        if (more) load(k0 + CONV_BK);
#pragma unroll
        for (int kk = 0; kk < CONV_BK; kk++) {
            float a[TM], b[8];
            const float* as = &sm.a[buf][kk][ty * TM];
            if constexpr (TM >= 4) {
#pragma unroll
                for (int i = 0; i < TM; i += 4) {
                    float4 v = *reinterpret_cast<const float4*>(as + i);
                    a[i] = v.x; a[i + 1] = v.y; a[i + 2] = v.z; a[i + 3] = v.w;
                }
            } else if constexpr (TM == 2) {
                float2 v = *reinterpret_cast<const float2*>(as);
                a[0] = v.x; a[1] = v.y;
            } else {
                a[0] = as[0];
            }
            float4 b0 = *reinterpret_cast<const float4*>(&sm.b[buf][kk][tx * 4]);
            float4 b1 = *reinterpret_cast<const float4*>(&sm.b[buf][kk][CONV_BN / 2 + tx * 4]);
            b[0] = b0.x; b[1] = b0.y; b[2] = b0.z; b[3] = b0.w;
            b[4] = b1.x; b[5] = b1.y; b[6] = b1.z; b[7] = b1.w;
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < 8; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (more) store(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }
}

// Column of the output tile held in this thread's accumulator column j.
__device__ __forceinline__ int conv_col(int n0, int j) {
    int tx = threadIdx.x % 16;
    return n0 + (j < 4 ? tx * 4 + j : CONV_BN / 2 + tx * 4 + (j - 4));
}

// ---------------------------------------------------------------------------------- forward

// A = W_g [Og, Cg·kh·kw]; B = col [Cg·kh·kw, N·P] gathered from x.
struct ConvFwdOp {
    const float* __restrict__ wg;  // weights of group g: [Og, Cg·kh·kw]
    const float* __restrict__ x;   // [N, Ci, H, W]
    int kg, khkw, kw, h, w, dh, dw;
    int xoff[4], iy0[4], ix0[4];   // per column: image + group channel base, top-left tap
    struct ARow { int k; };
    struct BRow { int off, ky, kx; };
    __device__ ConvFwdOp(const ConvGeom& g, const float* wt, const float* xx, int grp, int n0) {
        kg = g.cig * g.kh * g.kw;
        khkw = g.kh * g.kw;
        kw = g.kw; h = g.h; w = g.w; dh = g.dh; dw = g.dw;
        wg = wt + grp * g.cog * kg;
        x = xx;
        int pix = g.ho * g.wo, total = g.n * pix;
        for (int j = 0; j < 4; j++) {
            int p = n0 + threadIdx.x % 32 + 32 * j;
            if (p < total) {
                int img = p / pix, q = p - img * pix;
                int oy = q / g.wo, ox = q - oy * g.wo;
                xoff[j] = (img * g.ci + grp * g.cig) * g.h * g.w;
                iy0[j] = oy * g.sh - g.ph;
                ix0[j] = ox * g.sw - g.pw;
            } else {
                xoff[j] = 0; iy0[j] = CONV_OUTSIDE; ix0[j] = CONV_OUTSIDE;
            }
        }
    }
    __device__ ARow a_row(int k) const { return {k}; }
    __device__ float a(ARow r, int m) const { return wg[m * kg + r.k]; }
    __device__ BRow b_row(int k) const {
        int c = k / khkw, rem = k - c * khkw;
        int ki = rem / kw, kj = rem - ki * kw;
        return {c * h * w, ki * dh, kj * dw};
    }
    __device__ float b(BRow r, int j) const {
        int iy = iy0[j] + r.ky, ix = ix0[j] + r.kx;
        return ((unsigned)iy < (unsigned)h && (unsigned)ix < (unsigned)w)
                   ? x[xoff[j] + r.off + iy * w + ix]
                   : 0.0f;
    }
};

// y[n, g·Og + m, oy, ox] = Σ_k W_g[m, k]·col[k, (n, oy, ox)] + bias. Grid (⌈N·P/128⌉, ⌈Og/BM⌉,
// groups·S). With S = 1 (gridDim.z = groups) the result goes to `out` = y with the bias; with
// S > 1 slice s sums k in [s·chunk, (s+1)·chunk) into out[s] = partial [S, N, Co, Ho, Wo] and
// conv2d_sum_slices adds the slices and the bias (small GEMMs: more blocks than output tiles).
template <int BM>
__device__ __forceinline__ void conv2d_fwd_body(const float* __restrict__ x,     // [N,Ci,H,W]
                                                const float* __restrict__ w,     // [Co,Cg,kh,kw]
                                                const float* __restrict__ bias,  // [Co] or null
                                                ConvGeom g,
                                                int chunk,                       // k per slice
                                                float* __restrict__ out) {       // [S,N,Co,Ho,Wo]
    const int grp = blockIdx.z % g.groups, s = blockIdx.z / g.groups;
    const int n0 = blockIdx.x * CONV_BN, m0 = blockIdx.y * BM;
    ConvFwdOp op(g, w, x, grp, n0);
    float acc[BM / 16][8];
    const int k_begin = s * chunk, k_end = min(op.kg, k_begin + chunk);
    conv_gemm_tile<BM>(op, g.cog, m0, k_begin, k_end, acc);
    const int pix = g.ho * g.wo, total = g.n * pix, ty = threadIdx.x / 16;
    float* y = out + s * total * g.co;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        int p = conv_col(n0, j);
        if (p >= total) continue;
        int img = p / pix, q = p - img * pix;
#pragma unroll
        for (int i = 0; i < BM / 16; i++) {
            int m = m0 + ty * (BM / 16) + i;
            if (m >= g.cog) continue;
            int oc = grp * g.cog + m;
            float v = acc[i][j];
            if (bias) v += bias[oc];
            y[(img * g.co + oc) * pix + q] = v;
        }
    }
}

// Tile heights BM = 128 / 64 / 32 / 16 (the launcher picks one); arguments as conv2d_fwd_body.
extern "C" __launch_bounds__(CONV_THREADS) __global__ void conv2d_fwd_m128(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    ConvGeom g, int chunk, float* __restrict__ out) {
    conv2d_fwd_body<128>(x, w, bias, g, chunk, out);
}
extern "C" __launch_bounds__(CONV_THREADS, 2) __global__ void conv2d_fwd_m64(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    ConvGeom g, int chunk, float* __restrict__ out) {
    conv2d_fwd_body<64>(x, w, bias, g, chunk, out);
}
extern "C" __launch_bounds__(CONV_THREADS, 3) __global__ void conv2d_fwd_m32(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    ConvGeom g, int chunk, float* __restrict__ out) {
    conv2d_fwd_body<32>(x, w, bias, g, chunk, out);
}
extern "C" __launch_bounds__(CONV_THREADS, 3) __global__ void conv2d_fwd_m16(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    ConvGeom g, int chunk, float* __restrict__ out) {
    conv2d_fwd_body<16>(x, w, bias, g, chunk, out);
}

// ---------------------------------------------------------------------------------- dX

// A = W_gᵀ [Cg, Og·kh·kw]; B = dycol [Og·kh·kw, N·Q] gathered from dy.
struct ConvDxOp {
    const float* __restrict__ wg;  // weights of group g: [Og, Cg, kh, kw]
    const float* __restrict__ dy;  // [N, Co, Ho, Wo]
    int cig, khkw, kw, ho, wo, sh, sw, dh, dw;
    int dyoff[4], iyp[4], ixp[4];  // per column: image + group channel base, iy + ph, ix + pw
    struct ARow { int off; };
    struct BRow { int off, ky, kx; };
    __device__ ConvDxOp(const ConvGeom& g, const float* wt, const float* dyy, int grp, int n0) {
        cig = g.cig;
        khkw = g.kh * g.kw;
        kw = g.kw; ho = g.ho; wo = g.wo; sh = g.sh; sw = g.sw; dh = g.dh; dw = g.dw;
        wg = wt + grp * g.cog * g.cig * khkw;
        dy = dyy;
        int q_len = g.h * g.w, total = g.n * q_len;
        for (int j = 0; j < 4; j++) {
            int p = n0 + threadIdx.x % 32 + 32 * j;
            if (p < total) {
                int img = p / q_len, q = p - img * q_len;
                int iy = q / g.w, ix = q - iy * g.w;
                dyoff[j] = (img * g.co + grp * g.cog) * g.ho * g.wo;
                iyp[j] = iy + g.ph;
                ixp[j] = ix + g.pw;
            } else {
                dyoff[j] = 0; iyp[j] = CONV_OUTSIDE; ixp[j] = CONV_OUTSIDE;
            }
        }
    }
    // k = (o, tap): A[c][k] = w[o, c, tap].
    __device__ ARow a_row(int k) const {
        int o = k / khkw, tap = k - o * khkw;
        return {o * cig * khkw + tap};
    }
    __device__ float a(ARow r, int m) const { return wg[r.off + m * khkw]; }
    __device__ BRow b_row(int k) const {
        int o = k / khkw, tap = k - o * khkw;
        int ki = tap / kw, kj = tap - ki * kw;
        return {o * ho * wo, ki * dh, kj * dw};
    }
    __device__ float b(BRow r, int j) const {
        int ty = iyp[j] - r.ky, tx = ixp[j] - r.kx;
        if (ty < 0 || tx < 0) return 0.0f;
        int oy = ty, ox = tx;
        if (sh != 1) {
            oy = ty / sh;
            if (oy * sh != ty) return 0.0f;
        }
        if (sw != 1) {
            ox = tx / sw;
            if (ox * sw != tx) return 0.0f;
        }
        return (oy < ho && ox < wo) ? dy[dyoff[j] + r.off + oy * wo + ox] : 0.0f;
    }
};

// dx[n, g·Cg + m, iy, ix] = Σ_k W_gᵀ[m, k]·dycol[k, (n, iy, ix)], overwritten. Grid (⌈N·Q/128⌉,
// ⌈Cg/BM⌉, groups).
template <int BM>
__device__ __forceinline__ void conv2d_dx_body(const float* __restrict__ w,   // [Co,Cg,kh,kw]
                                               const float* __restrict__ dy,  // [N,Co,Ho,Wo]
                                               ConvGeom g,
                                               float* __restrict__ dx) {      // [N,Ci,H,W]
    const int grp = blockIdx.z, n0 = blockIdx.x * CONV_BN, m0 = blockIdx.y * BM;
    ConvDxOp op(g, w, dy, grp, n0);
    float acc[BM / 16][8];
    conv_gemm_tile<BM>(op, g.cig, m0, 0, g.cog * g.kh * g.kw, acc);
    const int q_len = g.h * g.w, total = g.n * q_len, ty = threadIdx.x / 16;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        int p = conv_col(n0, j);
        if (p >= total) continue;
        int img = p / q_len, q = p - img * q_len;
#pragma unroll
        for (int i = 0; i < BM / 16; i++) {
            int m = m0 + ty * (BM / 16) + i;
            if (m >= g.cig) continue;
            dx[(img * g.ci + grp * g.cig + m) * q_len + q] = acc[i][j];
        }
    }
}

// Tile heights BM = 128 / 64 / 32 / 16; arguments as conv2d_dx_body.
extern "C" __launch_bounds__(CONV_THREADS) __global__ void conv2d_dx_m128(
    const float* __restrict__ w, const float* __restrict__ dy, ConvGeom g,
    float* __restrict__ dx) {
    conv2d_dx_body<128>(w, dy, g, dx);
}
extern "C" __launch_bounds__(CONV_THREADS, 2) __global__ void conv2d_dx_m64(
    const float* __restrict__ w, const float* __restrict__ dy, ConvGeom g,
    float* __restrict__ dx) {
    conv2d_dx_body<64>(w, dy, g, dx);
}
extern "C" __launch_bounds__(CONV_THREADS, 3) __global__ void conv2d_dx_m32(
    const float* __restrict__ w, const float* __restrict__ dy, ConvGeom g,
    float* __restrict__ dx) {
    conv2d_dx_body<32>(w, dy, g, dx);
}
extern "C" __launch_bounds__(CONV_THREADS, 3) __global__ void conv2d_dx_m16(
    const float* __restrict__ w, const float* __restrict__ dy, ConvGeom g,
    float* __restrict__ dx) {
    conv2d_dx_body<16>(w, dy, g, dx);
}

// ---------------------------------------------------------------------------------- dW

// A = dy_g [Og, N·P]; B = colᵀ [N·P, Cg·kh·kw] gathered from x.
struct ConvDwOp {
    const float* __restrict__ dy;  // [N, Co, Ho, Wo]
    const float* __restrict__ x;   // [N, Ci, H, W]
    int pix, co_pix, grp_dy, ci_hw, w, h, sh, sw, wo;
    int xoff[4], ky[4], kx[4];     // per column (c, ki, kj): channel base, ki·dh − ph, kj·dw − pw
    struct ARow { int off; };
    struct BRow { int off, iy0, ix0; };
    __device__ ConvDwOp(const ConvGeom& g, const float* dyy, const float* xx, int grp, int n0) {
        dy = dyy;
        x = xx;
        pix = g.ho * g.wo;
        co_pix = g.co * pix;
        grp_dy = grp * g.cog * pix;
        ci_hw = g.ci * g.h * g.w;
        w = g.w; h = g.h; sh = g.sh; sw = g.sw; wo = g.wo;
        int khkw = g.kh * g.kw, kg = g.cig * khkw;
        for (int j = 0; j < 4; j++) {
            int col = n0 + threadIdx.x % 32 + 32 * j;
            if (col < kg) {
                int c = col / khkw, tap = col - c * khkw;
                int ki = tap / g.kw, kj = tap - ki * g.kw;
                xoff[j] = (grp * g.cig + c) * g.h * g.w;
                ky[j] = ki * g.dh - g.ph;
                kx[j] = kj * g.dw - g.pw;
            } else {
                xoff[j] = 0; ky[j] = CONV_OUTSIDE; kx[j] = CONV_OUTSIDE;
            }
        }
    }
    // k = output pixel p = (n, oy, ox) over the batch.
    __device__ ARow a_row(int p) const {
        int img = p / pix, q = p - img * pix;
        return {img * co_pix + grp_dy + q};
    }
    __device__ float a(ARow r, int m) const { return dy[r.off + m * pix]; }
    __device__ BRow b_row(int p) const {
        int img = p / pix, q = p - img * pix;
        int oy = q / wo, ox = q - oy * wo;
        return {img * ci_hw, oy * sh, ox * sw};
    }
    __device__ float b(BRow r, int j) const {
        int iy = r.iy0 + ky[j], ix = r.ix0 + kx[j];
        return ((unsigned)iy < (unsigned)h && (unsigned)ix < (unsigned)w)
                   ? x[r.off + xoff[j] + iy * w + ix]
                   : 0.0f;
    }
};

// partial[s, g·Og + m, col] = Σ_{p in slice s} dy_g[m, p]·colᵀ[p, col]. Grid (⌈Cg·kh·kw/128⌉,
// ⌈Og/BM⌉, groups·S); slice s covers pixels [s·chunk, min((s+1)·chunk, N·P)), chunk a multiple
// of 8.
template <int BM>
__device__ __forceinline__ void conv2d_dw_body(const float* __restrict__ x,   // [N,Ci,H,W]
                                               const float* __restrict__ dy,  // [N,Co,Ho,Wo]
                                               ConvGeom g,
                                               int chunk,                     // pixels per slice
                                               float* __restrict__ partial) { // [S,Co,Cg,kh,kw]
    const int grp = blockIdx.z % g.groups, s = blockIdx.z / g.groups;
    const int n0 = blockIdx.x * CONV_BN, m0 = blockIdx.y * BM;
    const int total = g.n * g.ho * g.wo, kg = g.cig * g.kh * g.kw;
    const int k_begin = s * chunk, k_end = min(total, k_begin + chunk);
    ConvDwOp op(g, dy, x, grp, n0);
    float acc[BM / 16][8];
    conv_gemm_tile<BM>(op, g.cog, m0, k_begin, k_end, acc);
    const int ty = threadIdx.x / 16;
    float* out = partial + s * g.co * kg;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        int col = conv_col(n0, j);
        if (col >= kg) continue;
#pragma unroll
        for (int i = 0; i < BM / 16; i++) {
            int m = m0 + ty * (BM / 16) + i;
            if (m >= g.cog) continue;
            out[(grp * g.cog + m) * kg + col] = acc[i][j];
        }
    }
}

// Tile heights BM = 128 / 64 / 32 / 16; arguments as conv2d_dw_body.
extern "C" __launch_bounds__(CONV_THREADS) __global__ void conv2d_dw_m128(
    const float* __restrict__ x, const float* __restrict__ dy, ConvGeom g, int chunk,
    float* __restrict__ partial) {
    conv2d_dw_body<128>(x, dy, g, chunk, partial);
}
extern "C" __launch_bounds__(CONV_THREADS, 2) __global__ void conv2d_dw_m64(
    const float* __restrict__ x, const float* __restrict__ dy, ConvGeom g, int chunk,
    float* __restrict__ partial) {
    conv2d_dw_body<64>(x, dy, g, chunk, partial);
}
extern "C" __launch_bounds__(CONV_THREADS, 3) __global__ void conv2d_dw_m32(
    const float* __restrict__ x, const float* __restrict__ dy, ConvGeom g, int chunk,
    float* __restrict__ partial) {
    conv2d_dw_body<32>(x, dy, g, chunk, partial);
}
extern "C" __launch_bounds__(CONV_THREADS, 3) __global__ void conv2d_dw_m16(
    const float* __restrict__ x, const float* __restrict__ dy, ConvGeom g, int chunk,
    float* __restrict__ partial) {
    conv2d_dw_body<16>(x, dy, g, chunk, partial);
}

// out[i] = Σ_s partial[s, i] (s = 0, 1, … in order) + bias[(i / plane) % channels] — the
// split-K finish of the forward (bias [Co], plane Ho·Wo) and of dW (no bias). Grid-stride over i.
extern "C" __global__ void conv2d_sum_slices(const float* __restrict__ partial,  // [S, len]
                                             int slices,                         // S
                                             int len,                            // elements
                                             const float* __restrict__ bias,     // [channels]/null
                                             int plane,                          // Ho·Wo
                                             int channels,                       // Co
                                             float* __restrict__ out) {          // [len]
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += blockDim.x * gridDim.x) {
        float acc = partial[i];
        for (int s = 1; s < slices; s++) acc += partial[s * len + i];
        if (bias) acc += bias[(i / plane) % channels];
        out[i] = acc;
    }
}

// Tree sum of `v` over the block (CONV_THREADS threads); the result is valid in thread 0.
__device__ __forceinline__ double conv_block_sum(double v, double* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = CONV_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    return shared[0];
}

// db[c] = Σ_{n, oy, ox} dy[n, c, oy, ox] in f64, rounded once. One block per channel.
extern "C" __launch_bounds__(CONV_THREADS) __global__ void conv2d_db(
    const float* __restrict__ dy,  // [N, Co, Ho, Wo]
    ConvGeom g,
    float* __restrict__ db) {      // [Co]
    __shared__ double shared[CONV_THREADS];
    const int c = blockIdx.x, pix = g.ho * g.wo, total = g.n * pix;
    double acc = 0.0;
    for (int p = threadIdx.x; p < total; p += CONV_THREADS) {
        int img = p / pix, q = p - img * pix;
        acc += (double)dy[(img * g.co + c) * pix + q];
    }
    double sum = conv_block_sum(acc, shared);
    if (threadIdx.x == 0) db[c] = (float)sum;
}

// ---------------------------------------------------------------------------------- depthwise

// y[n, c, oy, ox] = bias[c] + Σ_{ki, kj} w[c, ki, kj]·x[n, c, iy, ix], taps in (ki, kj) order,
// out-of-image taps skipped (the CPU's depthwise_fwd_image). Grid-stride over N·C·Ho·Wo.
extern "C" __global__ void conv2d_depthwise_fwd(const float* __restrict__ x,     // [N,C,H,W]
                                                const float* __restrict__ w,     // [C,1,kh,kw]
                                                const float* __restrict__ bias,  // [C] or null
                                                ConvGeom g,
                                                float* __restrict__ y) {         // [N,C,Ho,Wo]
    const int pix = g.ho * g.wo, total = g.n * g.co * pix;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        int plane = i / pix, q = i - plane * pix;
        int c = plane % g.co;
        int oy = q / g.wo, ox = q - oy * g.wo;
        const float* xp = x + plane * g.h * g.w;
        const float* wp = w + c * g.kh * g.kw;
        float acc = bias ? bias[c] : 0.0f;
        for (int ki = 0; ki < g.kh; ki++) {
            int iy = oy * g.sh + ki * g.dh - g.ph;
            if ((unsigned)iy >= (unsigned)g.h) continue;
            for (int kj = 0; kj < g.kw; kj++) {
                int ix = ox * g.sw + kj * g.dw - g.pw;
                if ((unsigned)ix >= (unsigned)g.w) continue;
                acc += wp[ki * g.kw + kj] * xp[iy * g.w + ix];
            }
        }
        y[i] = acc;
    }
}

// dx[n, c, iy, ix] = Σ_{ki, kj} w[c, ki, kj]·dy[n, c, oy, ox] over the taps whose output pixel
// exists, in (ki, kj) order — the order in which the CPU's scatter adds into this pixel, so the
// result is bit-identical. Grid-stride over N·C·H·W; overwrites.
extern "C" __global__ void conv2d_depthwise_dx(const float* __restrict__ w,   // [C,1,kh,kw]
                                               const float* __restrict__ dy,  // [N,C,Ho,Wo]
                                               ConvGeom g,
                                               float* __restrict__ dx) {      // [N,C,H,W]
    const int hw = g.h * g.w, total = g.n * g.ci * hw;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        int plane = i / hw, q = i - plane * hw;
        int c = plane % g.ci;
        int iy = q / g.w, ix = q - iy * g.w;
        const float* dyp = dy + plane * g.ho * g.wo;
        const float* wp = w + c * g.kh * g.kw;
        float acc = 0.0f;
        for (int ki = 0; ki < g.kh; ki++) {
            int ty = iy + g.ph - ki * g.dh;
            if (ty < 0) continue;
            int oy = ty / g.sh;
            if (oy * g.sh != ty || oy >= g.ho) continue;
            for (int kj = 0; kj < g.kw; kj++) {
                int tx = ix + g.pw - kj * g.dw;
                if (tx < 0) continue;
                int ox = tx / g.sw;
                if (ox * g.sw != tx || ox >= g.wo) continue;
                acc += wp[ki * g.kw + kj] * dyp[oy * g.wo + ox];
            }
        }
        dx[i] = acc;
    }
}

// dw[c, ki, kj] = Σ_{n, oy, ox} dy[n, c, oy, ox]·x[n, c, iy, ix] (f64 products and tree sum,
// rounded once). One block per (c, tap): grid C·kh·kw.
extern "C" __launch_bounds__(CONV_THREADS) __global__ void conv2d_depthwise_dw(
    const float* __restrict__ x,   // [N, C, H, W]
    const float* __restrict__ dy,  // [N, C, Ho, Wo]
    ConvGeom g,
    float* __restrict__ dw) {      // [C, 1, kh, kw]
    __shared__ double shared[CONV_THREADS];
    const int khkw = g.kh * g.kw, c = blockIdx.x / khkw, tap = blockIdx.x - c * khkw;
    const int ki = tap / g.kw, kj = tap - ki * g.kw;
    const int pix = g.ho * g.wo, total = g.n * pix;
    double acc = 0.0;
    for (int p = threadIdx.x; p < total; p += CONV_THREADS) {
        int img = p / pix, q = p - img * pix;
        int oy = q / g.wo, ox = q - oy * g.wo;
        int iy = oy * g.sh + ki * g.dh - g.ph, ix = ox * g.sw + kj * g.dw - g.pw;
        if ((unsigned)iy >= (unsigned)g.h || (unsigned)ix >= (unsigned)g.w) continue;
        int plane = img * g.ci + c;
        acc += (double)dy[plane * pix + q] * (double)x[(plane * g.h + iy) * g.w + ix];
    }
    double sum = conv_block_sum(acc, shared);
    if (threadIdx.x == 0) dw[blockIdx.x] = (float)sum;
}
