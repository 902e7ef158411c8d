// Philox4x32-10 and its conversions: the CUDA twin of kernels/src/philox.rs, bit-identical to it.
// Launchers: kernels/src/cuda/philox.rs.
//
// Keying as on the CPU: key = seed (low word, high word); counter = [block_lo, block_hi,
// stream_lo, stream_hi] with block = element / 4, and element i takes word i % 4 of its block.
// Output element j of a fill is element `offset + j` of the stream, exactly like
// `Philox::fill_uniform` / `fill_normal`.
//
// Bit-identity: this module is compiled with --fmad=false so no a*b+c is contracted; every
// `mul_add` of philox.rs is an explicit fmaf here (both are the correctly rounded fused op);
// sqrtf and '/' are IEEE-exact (NVRTC's default -prec-sqrt=true -prec-div=true); no libm.
//
// Not here: bernoulli masks (a `uniform < p` compare in the kernel that needs them), dropout
// (dropout.cu, which nvrtc.rs compiles together with this file).

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// philox4x32_10: one block of 4 words.
__device__ __forceinline__ uint4 philox4x32_10(uint4 c, unsigned k0, unsigned k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        unsigned hi0 = __umulhi(PHILOX_M0, c.x), lo0 = PHILOX_M0 * c.x;
        unsigned hi1 = __umulhi(PHILOX_M1, c.z), lo1 = PHILOX_M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
    }
    return c;
}

// Philox::block: the 4 words of block `block` of stream `stream` of generator `seed`.
__device__ __forceinline__ uint4 philox_block(unsigned long long seed, unsigned long long stream,
                                              unsigned long long block) {
    uint4 c = make_uint4((unsigned)block, (unsigned)(block >> 32), (unsigned)stream,
                         (unsigned)(stream >> 32));
    return philox4x32_10(c, (unsigned)seed, (unsigned)(seed >> 32));
}

__device__ __forceinline__ unsigned word_of(uint4 b, unsigned w) {
    return w == 0 ? b.x : w == 1 ? b.y : w == 2 ? b.z : b.w;
}

// u32_to_uniform: ((x >> 9) + 0.5) * 2^-23, in (0, 1), every step exact.
__device__ __forceinline__ float u32_to_uniform(unsigned x) {
    return ((float)(x >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// ln_portable: ln x for finite x > 0 from exactly-rounded operations only.
__device__ __forceinline__ float ln_portable(float x) {
    unsigned bits = __float_as_uint(x);
    int e = (int)((bits >> 23) & 0xffu) - 127;
    float m = __uint_as_float((bits & 0x007fffffu) | 0x3f800000u);
    if (m > 1.41421356237309504880f) {
        m *= 0.5f;
        e += 1;
    }
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float p = 1.0f / 11.0f;
    p = fmaf(p, s2, 1.0f / 9.0f);
    p = fmaf(p, s2, 1.0f / 7.0f);
    p = fmaf(p, s2, 1.0f / 5.0f);
    p = fmaf(p, s2, 1.0f / 3.0f);
    p = fmaf(p, s2, 1.0f);
    float ln_m = 2.0f * s * p;
    return fmaf((float)e, 0.693147180559945309417f, ln_m);
}

// sincos_2pi_portable: (sin 2πu, cos 2πu) for u in [0, 1).
__device__ __forceinline__ void sincos_2pi_portable(float u, float* sin_out, float* cos_out) {
    float t = u * 4.0f;
    float q = floorf(t);
    float phi = (t - q) * 1.57079632679489661923f;
    float p2 = phi * phi;
    float s = 1.0f / 6227020800.0f;
    s = fmaf(s, p2, -1.0f / 39916800.0f);
    s = fmaf(s, p2, 1.0f / 362880.0f);
    s = fmaf(s, p2, -1.0f / 5040.0f);
    s = fmaf(s, p2, 1.0f / 120.0f);
    s = fmaf(s, p2, -1.0f / 6.0f);
    s = fmaf(s, p2, 1.0f);
    float sin_phi = phi * s;
    float c = 1.0f / 479001600.0f;
    c = fmaf(c, p2, -1.0f / 3628800.0f);
    c = fmaf(c, p2, 1.0f / 40320.0f);
    c = fmaf(c, p2, -1.0f / 720.0f);
    c = fmaf(c, p2, 1.0f / 24.0f);
    c = fmaf(c, p2, -0.5f);
    c = fmaf(c, p2, 1.0f);
    float cos_phi = c;
    switch ((unsigned)q & 3u) {
        case 0: *sin_out = sin_phi; *cos_out = cos_phi; break;
        case 1: *sin_out = cos_phi; *cos_out = -sin_phi; break;
        case 2: *sin_out = -sin_phi; *cos_out = -cos_phi; break;
        default: *sin_out = -cos_phi; *cos_out = sin_phi; break;
    }
}

// Philox::u32_at(offset + j) for j in [0, n).
extern "C" __global__ void philox_u32(unsigned long long seed,
                                      unsigned long long stream,
                                      unsigned long long offset,
                                      unsigned long long n,
                                      unsigned* __restrict__ out) {  // [n]
    GRID_STRIDE(j, n) {
        unsigned long long i = offset + j;
        out[j] = word_of(philox_block(seed, stream, i >> 2), (unsigned)(i & 3));
    }
}

// Philox::fill_uniform: out[j] = uniform_at(offset + j).
extern "C" __global__ void philox_uniform(unsigned long long seed,
                                          unsigned long long stream,
                                          unsigned long long offset,
                                          unsigned long long n,
                                          float* __restrict__ out) {  // [n]
    GRID_STRIDE(j, n) {
        unsigned long long i = offset + j;
        out[j] = u32_to_uniform(word_of(philox_block(seed, stream, i >> 2), (unsigned)(i & 3)));
    }
}

// Philox::fill_normal: out[j] = fma(std, normal_at(offset + j), mean); elements 2k and 2k+1 are
// the cosine and sine halves of one Box–Muller pair from words 2k, 2k+1 of the same block.
extern "C" __global__ void philox_normal(unsigned long long seed,
                                         unsigned long long stream,
                                         unsigned long long offset,
                                         unsigned long long n,
                                         float mean,
                                         float std,
                                         float* __restrict__ out) {  // [n]
    GRID_STRIDE(j, n) {
        unsigned long long i = offset + j;
        uint4 b = philox_block(seed, stream, i >> 2);
        unsigned pair = (unsigned)((i & 3) >> 1) * 2;
        float u1 = u32_to_uniform(word_of(b, pair));
        float u2 = u32_to_uniform(word_of(b, pair + 1));
        float r = sqrtf(-2.0f * ln_portable(u1));
        float sn, cs;
        sincos_2pi_portable(u2, &sn, &cs);
        float z = (i & 1) ? r * sn : r * cs;
        out[j] = fmaf(std, z, mean);
    }
}
