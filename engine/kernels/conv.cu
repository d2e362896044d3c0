// im2col / col2im for NCHW convolution and pooling (column layout (N, C, kh, kw, out_h, out_w), as in Chainer).
//
// im2col: one thread per column element, reads its input pixel or the padding value.
// col2im: one thread per *image* pixel, gathering every column entry that maps onto it in a fixed order:
//         no atomics, so the result is bitwise deterministic run to run.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void dpt_im2col(const T* __restrict__ img, T* __restrict__ col,
                                           dpt_i64 total, dpt_i64 h, dpt_i64 w, dpt_i64 out_h, dpt_i64 out_w,
                                           dpt_i64 kh, dpt_i64 kw, dpt_i64 sy, dpt_i64 sx, dpt_i64 ph, dpt_i64 pw,
                                           dpt_i64 dy, dpt_i64 dx, double pval) {
    const T pad = (T)pval;
    DPT_GRID_STRIDE(i, total) {
        dpt_i64 r = i;
        const dpt_i64 ox = r % out_w; r /= out_w;
        const dpt_i64 oy = r % out_h; r /= out_h;
        const dpt_i64 kx = r % kw;    r /= kw;
        const dpt_i64 ky = r % kh;    r /= kh;          // r is now n * C + c
        const dpt_i64 iy = ky * dy + oy * sy - ph;
        const dpt_i64 ix = kx * dx + ox * sx - pw;
        col[i] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? img[(r * h + iy) * w + ix] : pad;
    }
}

template <typename T>
__device__ __forceinline__ void dpt_col2im(const T* __restrict__ col, T* __restrict__ img,
                                           dpt_i64 total, dpt_i64 h, dpt_i64 w, dpt_i64 out_h, dpt_i64 out_w,
                                           dpt_i64 kh, dpt_i64 kw, dpt_i64 sy, dpt_i64 sx, dpt_i64 ph, dpt_i64 pw,
                                           dpt_i64 dy, dpt_i64 dx) {
    DPT_GRID_STRIDE(i, total) {
        const dpt_i64 x = i % w;
        const dpt_i64 y = (i / w) % h;
        const dpt_i64 nc = i / (w * h);
        const T* base = col + nc * kh * kw * out_h * out_w;
        T acc = (T)0;
        for (dpt_i64 ky = 0; ky < kh; ++ky) {
            const dpt_i64 ty = y + ph - ky * dy;          // = oy * sy for a contributing output row
            if (ty < 0) break;                             // ky only grows: no later ky can contribute
            if (ty % sy != 0) continue;
            const dpt_i64 oy = ty / sy;
            if (oy >= out_h) continue;
            for (dpt_i64 kx = 0; kx < kw; ++kx) {
                const dpt_i64 tx = x + pw - kx * dx;
                if (tx < 0) break;
                if (tx % sx != 0) continue;
                const dpt_i64 ox = tx / sx;
                if (ox >= out_w) continue;
                acc += base[((ky * kw + kx) * out_h + oy) * out_w + ox];
            }
        }
        img[i] = acc;
    }
}

#define DPT_CONV_KERNELS(T, SFX)                                                                            \
    extern "C" __global__ void im2col_##SFX(const T* __restrict__ img, T* __restrict__ col, dpt_i64 total,  \
                                            dpt_i64 h, dpt_i64 w, dpt_i64 out_h, dpt_i64 out_w, dpt_i64 kh,  \
                                            dpt_i64 kw, dpt_i64 sy, dpt_i64 sx, dpt_i64 ph, dpt_i64 pw,      \
                                            dpt_i64 dy, dpt_i64 dx, double pval) {                           \
        dpt_im2col<T>(img, col, total, h, w, out_h, out_w, kh, kw, sy, sx, ph, pw, dy, dx, pval);           \
    }                                                                                                       \
    extern "C" __global__ void col2im_##SFX(const T* __restrict__ col, T* __restrict__ img, dpt_i64 total,  \
                                            dpt_i64 h, dpt_i64 w, dpt_i64 out_h, dpt_i64 out_w, dpt_i64 kh,  \
                                            dpt_i64 kw, dpt_i64 sy, dpt_i64 sx, dpt_i64 ph, dpt_i64 pw,      \
                                            dpt_i64 dy, dpt_i64 dx) {                                        \
        dpt_col2im<T>(col, img, total, h, w, out_h, out_w, kh, kw, sy, sx, ph, pw, dy, dx);                 \
    }

DPT_CONV_KERNELS(float, f32)
DPT_CONV_KERNELS(double, f64)
