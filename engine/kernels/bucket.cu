// DDP gradient bucket: scatter many gradients into one flat buffer (pack) and back out, optionally scaled
// by 1/world_size (unpack), in one launch each.  Both are the same multi-tensor copy:
// list 0 = sources, list 1 = destinations (slices of the flat buffer are just addresses inside it).
#include "multi_tensor.cuh"

template <typename T>
__device__ __forceinline__ void dpt_copy_scale(const dpt_i64* table, dpt_i64 nt, dpt_i64 nc, dpt_i64 chunk,
                                               double scale_, int apply_scale) {
    const DptMtTable tab(table, 2, nt, nc, chunk);
    const T scale = (T)scale_;
    for (dpt_i64 b = blockIdx.x; b < nc; b += gridDim.x) {
        const dpt_i64 t = tab.chunk_tensor[b];
        const T* src = tab.ptr<T>(0, t);
        T* dst = tab.ptr<T>(1, t);
        const dpt_i64 end = tab.chunk_end(b);
        for (dpt_i64 i = tab.chunk_begin[b] + threadIdx.x; i < end; i += blockDim.x)
            dst[i] = apply_scale ? src[i] * scale : src[i];
    }
}

#define DPT_BUCKET_KERNELS(T, SFX)                                                                          \
    extern "C" __global__ void mt_copy_scale_##SFX(const dpt_i64* table, dpt_i64 nt, dpt_i64 nc,           \
                                                   dpt_i64 chunk, double scale, int apply_scale) {          \
        dpt_copy_scale<T>(table, nt, nc, chunk, scale, apply_scale);                                        \
    }

DPT_BUCKET_KERNELS(float, f32)
DPT_BUCKET_KERNELS(double, f64)
