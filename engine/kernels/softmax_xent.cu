// Fused softmax cross-entropy with label smoothing and ignore_index.
//
// Forward: one warp per row, single pass over the logits with an online log-sum-exp (running max m and
// running sum s of exp(z - m)), plus the running sum of z needed by label smoothing; lanes are combined
// with warp shuffles (no shared memory, no atomics).  Per row it writes
//   lse  = log(sum_j exp(z_j))
//   loss = lse - (1 - eps) * z_y - eps * mean_j(z_j)      (0 for ignored rows, NaN for a label out of range)
// which is (1 - eps) * NLL + eps * (-mean_j log p_j), PyTorch's definition.
// Backward: one thread per logit, dz = (softmax - target) * g_row with target = (1-eps)*onehot + eps/C;
// g_row is the upstream gradient already divided by the mean denominator (g_stride 0 = one scalar).
#include "common.cuh"

// Merge two (max, sum-of-exp) partials. A partial with s == 0 is empty (its m may be -inf).
template <typename T>
__device__ __forceinline__ void dpt_lse_merge(T& m, T& s, T m2, T s2) {
    if (s2 == (T)0) return;
    if (s == (T)0) { m = m2; s = s2; return; }
    if (m2 > m) { s = s * dpt_exp(m - m2) + s2; m = m2; }
    else        { s = s + s2 * dpt_exp(m2 - m); }
}

template <typename T>
__device__ __forceinline__ void dpt_xent_forward(const T* __restrict__ z, const dpt_i64* __restrict__ y,
                                                 T* __restrict__ loss, T* __restrict__ lse_out, dpt_i64 n,
                                                 dpt_i64 c, double smoothing, dpt_i64 ignore_index) {
    const dpt_i64 tid = (dpt_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = (int)(tid % DPT_WARP);
    const dpt_i64 nwarps = ((dpt_i64)gridDim.x * blockDim.x) / DPT_WARP;
    const T eps = (T)smoothing;
    // blockDim is a multiple of DPT_WARP, so all lanes of a warp see the same row: shuffles are convergent
    for (dpt_i64 row = tid / DPT_WARP; row < n; row += nwarps) {
        const T* zr = z + row * c;
        T m = (T)0, s = (T)0, sz = (T)0;
        for (dpt_i64 j = lane; j < c; j += DPT_WARP) {
            const T v = zr[j];
            dpt_lse_merge(m, s, v, (T)1);
            sz += v;
        }
        for (int off = DPT_WARP / 2; off > 0; off /= 2) {
            const T m2 = __shfl_xor_sync(0xffffffffu, m, off);
            const T s2 = __shfl_xor_sync(0xffffffffu, s, off);
            const T sz2 = __shfl_xor_sync(0xffffffffu, sz, off);
            dpt_lse_merge(m, s, m2, s2);
            sz += sz2;
        }
        if (lane == 0) {
            const T lse = m + dpt_log(s);
            const dpt_i64 label = y[row];
            T l;
            if (label == ignore_index) l = (T)0;
            else if (label < 0 || label >= c) l = dpt_nan((T)0);
            else l = lse - ((T)1 - eps) * zr[label] - eps * sz / (T)c;
            loss[row] = l;
            lse_out[row] = lse;
        }
    }
}

template <typename T>
__device__ __forceinline__ void dpt_xent_backward(const T* __restrict__ z, const dpt_i64* __restrict__ y,
                                                  const T* __restrict__ lse, const T* __restrict__ g,
                                                  dpt_i64 g_stride, T* __restrict__ dz, dpt_i64 n, dpt_i64 c,
                                                  double smoothing, dpt_i64 ignore_index) {
    const T eps = (T)smoothing;
    const T off_target = eps / (T)c;
    DPT_GRID_STRIDE(i, n * c) {
        const dpt_i64 row = i / c;
        const dpt_i64 j = i - row * c;
        const dpt_i64 label = y[row];
        if (label == ignore_index) { dz[i] = (T)0; continue; }
        const T p = dpt_exp(z[i] - lse[row]);
        const T target = off_target + (j == label ? (T)1 - eps : (T)0);
        dz[i] = (p - target) * g[row * g_stride];
    }
}

#define DPT_XENT_KERNELS(T, SFX)                                                                            \
    extern "C" __global__ void xent_forward_##SFX(const T* __restrict__ z, const dpt_i64* __restrict__ y,   \
                                                  T* __restrict__ loss, T* __restrict__ lse, dpt_i64 n,     \
                                                  dpt_i64 c, double smoothing, dpt_i64 ignore_index) {      \
        dpt_xent_forward<T>(z, y, loss, lse, n, c, smoothing, ignore_index);                               \
    }                                                                                                       \
    extern "C" __global__ void xent_backward_##SFX(const T* __restrict__ z, const dpt_i64* __restrict__ y,  \
                                                   const T* __restrict__ lse, const T* __restrict__ g,      \
                                                   dpt_i64 g_stride, T* __restrict__ dz, dpt_i64 n,         \
                                                   dpt_i64 c, double smoothing, dpt_i64 ignore_index) {     \
        dpt_xent_backward<T>(z, y, lse, g, g_stride, dz, n, c, smoothing, ignore_index);                   \
    }

DPT_XENT_KERNELS(float, f32)
DPT_XENT_KERNELS(double, f64)
