// Fused optimizer steps over all parameters in one launch (multi-tensor apply, see multi_tensor.cuh).
// Formulas are PyTorch's documented ones (torch.optim.SGD / Adam / AdamW, no amsgrad, no maximize).
// Every hyperparameter is a kernel argument, so the module compiles once per dtype whatever the schedule.
#include "multi_tensor.cuh"

// lists: 0 params (in/out), 1 grads (in), 2 momentum buffers (in/out; unused when momentum == 0)
template <typename T>
__device__ __forceinline__ void dpt_sgd(const dpt_i64* table, dpt_i64 nt, dpt_i64 nc, dpt_i64 chunk, double lr_,
                                        double momentum_, double dampening_, double wd_, int nesterov,
                                        int first_step) {
    const DptMtTable tab(table, 3, nt, nc, chunk);
    const T lr = (T)lr_, mom = (T)momentum_, keep = (T)(1.0 - dampening_), wd = (T)wd_;
    for (dpt_i64 b = blockIdx.x; b < nc; b += gridDim.x) {
        const dpt_i64 t = tab.chunk_tensor[b];
        T* p = tab.ptr<T>(0, t);
        const T* g = tab.ptr<T>(1, t);
        T* buf = tab.ptr<T>(2, t);
        const dpt_i64 end = tab.chunk_end(b);
        for (dpt_i64 i = tab.chunk_begin[b] + threadIdx.x; i < end; i += blockDim.x) {
            const T pi = p[i];
            T d = g[i];
            if (wd_ != 0.0) d = d + wd * pi;
            if (momentum_ != 0.0) {
                const T bi = first_step ? d : mom * buf[i] + keep * d;
                buf[i] = bi;
                d = nesterov ? d + mom * bi : bi;
            }
            p[i] = pi - lr * d;
        }
    }
}

// lists: 0 params, 1 grads, 2 exp_avg, 3 exp_avg_sq.  step_size = lr / (1 - beta1^step) and
// bc2_sqrt = sqrt(1 - beta2^step) come from the host, in double, as PyTorch computes them.
template <typename T>
__device__ __forceinline__ void dpt_adam(const dpt_i64* table, dpt_i64 nt, dpt_i64 nc, dpt_i64 chunk, double lr_,
                                         double beta1_, double beta2_, double eps_, double wd_, int decoupled,
                                         double step_size_, double bc2_sqrt_) {
    const DptMtTable tab(table, 4, nt, nc, chunk);
    const T w1 = (T)(1.0 - beta1_), beta2 = (T)beta2_, w2 = (T)(1.0 - beta2_), eps = (T)eps_, wd = (T)wd_;
    const T decay = (T)(1.0 - lr_ * wd_), step_size = (T)step_size_, bc2_sqrt = (T)bc2_sqrt_;
    const bool lerp_low = (1.0 - beta1_) < 0.5;     // torch.lerp switches formula at weight 0.5
    for (dpt_i64 b = blockIdx.x; b < nc; b += gridDim.x) {
        const dpt_i64 t = tab.chunk_tensor[b];
        T* p = tab.ptr<T>(0, t);
        const T* g = tab.ptr<T>(1, t);
        T* m = tab.ptr<T>(2, t);
        T* v = tab.ptr<T>(3, t);
        const dpt_i64 end = tab.chunk_end(b);
        for (dpt_i64 i = tab.chunk_begin[b] + threadIdx.x; i < end; i += blockDim.x) {
            T pi = p[i];
            T gi = g[i];
            if (wd_ != 0.0) {
                if (decoupled) pi = pi * decay;
                else gi = gi + wd * pi;
            }
            const T mi = m[i];
            const T mn = lerp_low ? mi + w1 * (gi - mi) : gi - (gi - mi) * ((T)1 - w1);
            const T vn = v[i] * beta2 + w2 * gi * gi;
            m[i] = mn;
            v[i] = vn;
            const T denom = dpt_sqrt(vn) / bc2_sqrt + eps;
            p[i] = pi - step_size * (mn / denom);
        }
    }
}

#define DPT_OPTIM_KERNELS(T, SFX)                                                                            \
    extern "C" __global__ void mt_sgd_##SFX(const dpt_i64* table, dpt_i64 nt, dpt_i64 nc, dpt_i64 chunk,     \
                                            double lr, double momentum, double dampening, double wd,         \
                                            int nesterov, int first_step) {                                  \
        dpt_sgd<T>(table, nt, nc, chunk, lr, momentum, dampening, wd, nesterov, first_step);                 \
    }                                                                                                        \
    extern "C" __global__ void mt_adam_##SFX(const dpt_i64* table, dpt_i64 nt, dpt_i64 nc, dpt_i64 chunk,    \
                                             double lr, double beta1, double beta2, double eps, double wd,   \
                                             int decoupled, double step_size, double bc2_sqrt) {             \
        dpt_adam<T>(table, nt, nc, chunk, lr, beta1, beta2, eps, wd, decoupled, step_size, bc2_sqrt);        \
    }

DPT_OPTIM_KERNELS(float, f32)
DPT_OPTIM_KERNELS(double, f64)
