// The confusion matrix for mIoU and the label agreement counts: the CUDA twins of confusion_add
// and label_agreement_fwd in kernels/src/metrics.rs. Counts are integers, so the results are
// exact whatever the order of the atomics.
// Launchers: kernels/src/cuda/metrics.rs.
//
// Each block first counts into a private K·K histogram of u32 in shared memory (when
// `use_shared`: the launcher sets it when K·K·4 bytes fit), then adds its non-zero cells to the
// global u64 matrix, so the hot cells (the diagonal) see one global atomic per block instead of
// one per pixel. A block counts at most gridDim-stride·blockDim pixels, far below 2^32.
//
// Invalid pixels (label not ignore_index, and label or prediction outside [0, K)) cannot raise an
// error from the device: they are counted in `bad[0]`, and the launcher's caller checks it
// (the CPU kernel returns an error naming the first such pixel).
//
// Not here: IoU / mIoU / accuracy from the matrix (host side, metrics::scores).

// confusion[t·K + p] += 1 for every pixel with label t ≠ ignore_index, prediction p.
extern "C" __global__ void confusion_add(const int* __restrict__ pred,    // [N,H,W]
                                         const int* __restrict__ label,   // [N,H,W]
                                         unsigned long long pixels,       // N·H·W
                                         int k,                           // K classes
                                         int ignore_index,
                                         int use_shared,                  // K·K u32 in dynamic smem
                                         unsigned long long* __restrict__ confusion,  // [K,K] +=
                                         unsigned* __restrict__ bad) {    // [1] +=
    extern __shared__ unsigned hist[];
    unsigned cells = (unsigned)(k * k);
    if (use_shared) {
        for (unsigned c = threadIdx.x; c < cells; c += blockDim.x) hist[c] = 0;
        __syncthreads();
    }
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < pixels; i += (unsigned long long)blockDim.x * gridDim.x) {
        int t = label[i];
        if (t == ignore_index) continue;
        int p = pred[i];
        if (t < 0 || t >= k || p < 0 || p >= k) {
            atomicAdd(bad, 1u);
            continue;
        }
        unsigned cell = (unsigned)(t * k + p);
        if (use_shared)
            atomicAdd(&hist[cell], 1u);
        else
            atomicAdd(&confusion[cell], 1ull);
    }
    if (use_shared) {
        __syncthreads();
        for (unsigned c = threadIdx.x; c < cells; c += blockDim.x) {
            unsigned v = hist[c];
            if (v) atomicAdd(&confusion[c], (unsigned long long)v);
        }
    }
}

// counts[0] += agreeing pixels, counts[1] += counted pixels: the CUDA twin of
// label_agreement_fwd. A pixel counts when label ≠ ignore_index, label ≠ skip (when
// has_skip) and (no mask, or mask > 0);
// it agrees when pred == label. Each thread counts privately, the block sums in shared memory,
// one pair of u64 atomics per block: integer counts, exact in any order. has_mask = 0 ignores
// `mask` (which may then be null).
extern "C" __global__ void label_agreement(const int* __restrict__ pred,    // [N,H,W]
                                           const int* __restrict__ label,   // [N,H,W]
                                           const float* __restrict__ mask,  // [N,H,W] or null
                                           int has_mask,
                                           unsigned long long pixels,       // N·H·W
                                           int ignore_index,
                                           int has_skip,
                                           int skip,
                                           unsigned long long* __restrict__ counts) {  // [2] +=
    __shared__ unsigned long long sums[2][256];
    unsigned long long agree = 0, counted = 0;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < pixels; i += (unsigned long long)blockDim.x * gridDim.x) {
        int t = label[i];
        if (t == ignore_index || (has_skip && t == skip)) continue;
        if (has_mask && !(mask[i] > 0.0f)) continue;
        counted += 1;
        agree += (pred[i] == t);
    }
    sums[0][threadIdx.x] = agree;
    sums[1][threadIdx.x] = counted;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            sums[0][threadIdx.x] += sums[0][threadIdx.x + s];
            sums[1][threadIdx.x] += sums[1][threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        if (sums[0][0]) atomicAdd(&counts[0], sums[0][0]);
        if (sums[1][0]) atomicAdd(&counts[1], sums[1][0]);
    }
}

// image_labels_fwd: y[n, c] = 1 when a pixel of image n carries the c-th foreground class (ids
// other than `background`, in order), else 0 (kernels/src/metrics.rs image_labels_fwd). One
// thread per (n, c) scans the image. Unlike the CPU, an id outside the classes (not ignored)
// cannot be reported: it matches no column.
extern "C" __global__ void image_labels_fwd(const int* __restrict__ label,  // [N,H,W]
                                            unsigned long long n,           // N
                                            unsigned long long plane,       // H·W
                                            unsigned foreground,            // C
                                            int background,                 // in [0, C]
                                            int ignore_index,               // skipped label
                                            float* __restrict__ y) {        // [N,C]
    unsigned long long total = n * foreground;
    for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         e < total; e += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long img = e / foreground;
        int c = (int)(e - img * foreground);
        int id = c < background ? c : c + 1;
        const int* lp = label + img * plane;
        float present = 0.0f;
        // A column whose id is the ignore index never occurs (the CPU skips those pixels).
        for (unsigned long long i = 0; id != ignore_index && i < plane; ++i)
            if (lp[i] == id) {
                present = 1.0f;
                break;
            }
        y[e] = present;
    }
}
