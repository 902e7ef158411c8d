// Photometric and cutout augmentations: CUDA twins of kernels/src/augment.rs (color_jitter_fwd,
// grayscale_fwd, gaussian_blur_fwd, cutout_fwd). The per-sample draws stay on the host (the
// `draw_*` functions, O(N) scalars); the launchers upload them as small arrays and these kernels
// apply them per pixel, with the CPU's f32 operations in the CPU's order (--fmad=false), so the
// results are bit-identical to the CPU.
// Launchers: kernels/src/cuda/augment.rs.
//
// Colour jitter runs as four steps (step k applies each sample's k-th adjustment); before a step
// in which some sample adjusts contrast, color_jitter_contrast_mean computes that sample's mean
// luma on the device in the CPU's documented order: one thread sums a row in f64 (x ascending),
// then one thread sums the row totals (y ascending), divides by H*W and rounds to f32 once.
// Gaussian weights are computed on the host (f64 exp) and uploaded; taps sum in ascending order.
//
// Not here: the draws, geometric augmentations, mixing (mix.cu).

#define GRID_STRIDE(i, n)                                                                    \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;  \
         i < (n); i += (unsigned long long)blockDim.x * gridDim.x)

// The jitter op codes of the `ops` array (JitterOp order); SKIP: not applied or identity factor.
#define JITTER_SKIP -1
#define JITTER_BRIGHTNESS 0
#define JITTER_CONTRAST 1
#define JITTER_SATURATION 2
#define JITTER_HUE 3

// v.clamp(0, 1) as Rust writes it: NaN passes through.
float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

// f*v + (1 - f)*m.
float blend(float v, float m, float f) { return f * v + (1.0f - f) * m; }

// ITU-R BT.601 luma, summed left to right.
float luma(float r, float g, float b) { return 0.299f * r + 0.587f * g + 0.114f * b; }

// torchvision's _rgb2hsv then _hsv2rgb with the hue shifted (augment.rs rotate_hue), clamped.
void rotate_hue(float* r, float* g, float* b, float shift) {
    float R = *r, G = *g, B = *b;
    float maxc = fmaxf(fmaxf(R, G), B);
    float minc = fminf(fminf(R, G), B);
    bool grey = maxc == minc;
    float cr = maxc - minc;
    float s = cr / (grey ? 1.0f : maxc);
    float div = grey ? 1.0f : cr;
    float rc = (maxc - R) / div;
    float gc = (maxc - G) / div;
    float bc = (maxc - B) / div;
    float h;
    if (maxc == R) {
        h = bc - gc;
    } else if (maxc == G) {
        h = 2.0f + rc - bc;
    } else {
        h = 4.0f + gc - rc;
    }
    h = fmodf(h / 6.0f + 1.0f, 1.0f);
    float v = maxc;
    // wrap_unit(h + shift)
    float x = fmodf(h + shift, 1.0f);
    h = x < 0.0f ? x + 1.0f : x;
    float i = floorf(h * 6.0f);
    float f = h * 6.0f - i;
    float p = clamp01(v * (1.0f - s));
    float q = clamp01(v * (1.0f - s * f));
    float t = clamp01(v * (1.0f - s * (1.0f - f)));
    long long sector = ((long long)i % 6 + 6) % 6;
    float o0, o1, o2;
    switch (sector) {
        case 0: o0 = v; o1 = t; o2 = p; break;
        case 1: o0 = q; o1 = v; o2 = p; break;
        case 2: o0 = p; o1 = v; o2 = t; break;
        case 3: o0 = p; o1 = q; o2 = v; break;
        case 4: o0 = t; o1 = p; o2 = v; break;
        default: o0 = v; o1 = p; o2 = q; break;
    }
    *r = clamp01(o0);
    *g = clamp01(o1);
    *b = clamp01(o2);
}

// Mean luma of each sample whose adjustment at `step` is contrast (others untouched). One block
// per sample; thread t sums rows t, t + blockDim, ... in f64, thread 0 then sums the rows.
extern "C" __global__ void color_jitter_contrast_mean(
    const float* __restrict__ img,    // [N, 3, H, W] the image as it is before this step
    const int* __restrict__ ops,      // [N, 4] op codes per step
    unsigned long long n,
    unsigned long long h,
    unsigned long long w,
    int step,                         // 0..3
    double* __restrict__ rows,        // [N, H] scratch
    float* __restrict__ mean) {       // [N] written where ops[s, step] is contrast
    for (unsigned long long s = blockIdx.x; s < n; s += gridDim.x) {
        if (ops[s * 4 + step] != JITTER_CONTRAST) continue;
        unsigned long long plane = h * w;
        const float* r = img + s * 3 * plane;
        const float* g = r + plane;
        const float* b = g + plane;
        for (unsigned long long y = threadIdx.x; y < h; y += blockDim.x) {
            double row = 0.0;
            for (unsigned long long x = 0; x < w; x++) {
                unsigned long long p = y * w + x;
                row += (double)luma(r[p], g[p], b[p]);
            }
            rows[s * h + y] = row;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double total = 0.0;
            for (unsigned long long y = 0; y < h; y++) total += rows[s * h + y];
            mean[s] = (float)(total / (double)plane);
        }
        __syncthreads();
    }
}

// One jitter step: each pixel of sample s gets adjustment ops[s, step] (factors[s] = brightness,
// contrast, saturation, hue). src is x at step 0 and y afterwards (in place: no __restrict__);
// a skipped step copies src to y.
extern "C" __global__ void color_jitter_step(
    const float* src,                      // [N, 3, H, W]
    const int* __restrict__ ops,           // [N, 4]
    const float* __restrict__ factors,     // [N, 4]
    const float* __restrict__ mean,        // [N] mean luma (read for contrast only)
    unsigned long long n,
    unsigned long long plane,              // H * W
    int step,
    float* y) {                            // [N, 3, H, W]
    GRID_STRIDE(i, n * plane) {
        unsigned long long s = i / plane, p = i % plane;
        unsigned long long base = s * 3 * plane + p;
        float r = src[base], g = src[base + plane], b = src[base + 2 * plane];
        int op = ops[s * 4 + step];
        if (op == JITTER_BRIGHTNESS) {
            float f = factors[s * 4 + 0];
            r = clamp01(f * r);
            g = clamp01(f * g);
            b = clamp01(f * b);
        } else if (op == JITTER_CONTRAST) {
            float f = factors[s * 4 + 1], m = mean[s];
            r = clamp01(blend(r, m, f));
            g = clamp01(blend(g, m, f));
            b = clamp01(blend(b, m, f));
        } else if (op == JITTER_SATURATION) {
            float f = factors[s * 4 + 2], m = luma(r, g, b);
            r = clamp01(blend(r, m, f));
            g = clamp01(blend(g, m, f));
            b = clamp01(blend(b, m, f));
        } else if (op == JITTER_HUE) {
            rotate_hue(&r, &g, &b, factors[s * 4 + 3]);
        }
        y[base] = r;
        y[base + plane] = g;
        y[base + 2 * plane] = b;
    }
}

// Random grayscale: applied samples get clamp01(luma) in every channel, others are copied.
extern "C" __global__ void grayscale_fwd(const float* __restrict__ x,            // [N, 3, H, W]
                                         const unsigned char* __restrict__ apply,  // [N]
                                         unsigned long long n,
                                         unsigned long long plane,  // H * W
                                         float* __restrict__ y) {   // [N, 3, H, W]
    GRID_STRIDE(i, n * plane) {
        unsigned long long s = i / plane, p = i % plane;
        unsigned long long base = s * 3 * plane + p;
        float r = x[base], g = x[base + plane], b = x[base + 2 * plane];
        if (apply[s]) {
            float l = clamp01(luma(r, g, b));
            r = l;
            g = l;
            b = l;
        }
        y[base] = r;
        y[base + plane] = g;
        y[base + 2 * plane] = b;
    }
}

// augment.rs reflect_index: mirror without repeating the edge, folded for any offset.
long long reflect_index(long long i, long long n) {
    if (n == 1) return 0;
    long long period = 2 * (n - 1);
    long long m = i % period;
    if (m < 0) m += period;
    return m < n ? m : period - m;
}

// Horizontal pass of the blur: tmp = sum_j w[s, j] * x[reflect(x + j - r)], j ascending from an
// f32 0; samples without apply are copied.
extern "C" __global__ void gaussian_blur_h(const float* __restrict__ x,             // [N, C, H, W]
                                           const float* __restrict__ weights,       // [N, K]
                                           const unsigned char* __restrict__ apply,  // [N]
                                           unsigned long long n,
                                           unsigned long long c,
                                           unsigned long long h,
                                           unsigned long long w,
                                           unsigned long long k,  // odd kernel size
                                           float* __restrict__ tmp) {  // [N, C, H, W]
    unsigned long long image = c * h * w;
    GRID_STRIDE(i, n * image) {
        unsigned long long s = i / image;
        if (!apply[s]) {
            tmp[i] = x[i];
            continue;
        }
        unsigned long long col = i % w;
        const float* row = x + (i - col);
        const float* wt = weights + s * k;
        long long r = (long long)(k / 2);
        float acc = 0.0f;
        for (unsigned long long j = 0; j < k; j++) {
            acc += wt[j] * row[reflect_index((long long)col + (long long)j - r, (long long)w)];
        }
        tmp[i] = acc;
    }
}

// Vertical pass, then the clamp to [0, 1]; samples without apply are copied from tmp (which
// holds their input unchanged).
extern "C" __global__ void gaussian_blur_v(const float* __restrict__ tmp,           // [N, C, H, W]
                                           const float* __restrict__ weights,       // [N, K]
                                           const unsigned char* __restrict__ apply,  // [N]
                                           unsigned long long n,
                                           unsigned long long c,
                                           unsigned long long h,
                                           unsigned long long w,
                                           unsigned long long k,
                                           float* __restrict__ y) {  // [N, C, H, W]
    unsigned long long plane = h * w, image = c * plane;
    GRID_STRIDE(i, n * image) {
        unsigned long long s = i / image;
        if (!apply[s]) {
            y[i] = tmp[i];
            continue;
        }
        unsigned long long p = i % plane;
        unsigned long long row = p / w, col = p % w;
        const float* src = tmp + (i - p) + col;
        const float* wt = weights + s * k;
        long long r = (long long)(k / 2);
        float acc = 0.0f;
        for (unsigned long long j = 0; j < k; j++) {
            acc += wt[j] * src[reflect_index((long long)row + (long long)j - r, (long long)h) * w];
        }
        y[i] = clamp01(acc);
    }
}

// Cutout: pixels inside an applied sample's box become fill[c] in the image, ignore_index in
// the label map and 0 in the validity map; the rest is copied (validity from `valid`, or 1 when
// valid is null). label/label_out and valid_out may be null (not written); valid may be null.
extern "C" __global__ void cutout_fwd(const float* __restrict__ image,   // [N, C, H, W]
                                      const int* __restrict__ label,     // [N, H, W] or null
                                      const float* __restrict__ valid,   // [N, H, W] or null
                                      const int* __restrict__ boxes,     // [N, 5] apply, top, bottom, left, right
                                      const float* __restrict__ fill,    // [C]
                                      unsigned long long n,
                                      unsigned long long c,
                                      unsigned long long h,
                                      unsigned long long w,
                                      int ignore_index,
                                      float* __restrict__ image_out,     // [N, C, H, W]
                                      int* __restrict__ label_out,       // [N, H, W] or null
                                      float* __restrict__ valid_out) {   // [N, H, W] or null
    unsigned long long plane = h * w;
    GRID_STRIDE(i, n * plane) {
        unsigned long long s = i / plane, p = i % plane;
        long long row = (long long)(p / w), col = (long long)(p % w);
        const int* bx = boxes + s * 5;
        bool cut = bx[0] != 0 && row >= bx[1] && row < bx[2] && col >= bx[3] && col < bx[4];
        for (unsigned long long ch = 0; ch < c; ch++) {
            unsigned long long e = (s * c + ch) * plane + p;
            image_out[e] = cut ? fill[ch] : image[e];
        }
        if (label_out) label_out[i] = cut ? ignore_index : label[i];
        if (valid_out) valid_out[i] = cut ? 0.0f : (valid ? valid[i] : 1.0f);
    }
}
