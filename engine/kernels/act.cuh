// Activation functions and their derivatives, shared by the bias_act elementwise kernels (cupy preamble).
// kind codes (engine/kernels/bias_act.py ACT_CODES): 0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh approx),
// 4 tanh, 5 sigmoid.  The kind is a kernel argument, not a template constant, so each kernel compiles once
// per dtype; the branch is uniform across a launch and costs nothing measurable.
#ifndef DPT_ACT_CUH
#define DPT_ACT_CUH
#include "common.cuh"

#define DPT_ACT_NONE 0
#define DPT_ACT_RELU 1
#define DPT_ACT_GELU 2
#define DPT_ACT_GELU_TANH 3
#define DPT_ACT_TANH 4
#define DPT_ACT_SIGMOID 5

template <typename T>
__device__ __forceinline__ T dpt_sigmoid(T z) {
    // exp of a non-positive number only: no overflow for large |z|
    if (z >= (T)0) { const T e = dpt_exp(-z); return (T)1 / ((T)1 + e); }
    const T e = dpt_exp(z);
    return e / ((T)1 + e);
}

template <typename T>
__device__ __forceinline__ T dpt_gelu_tanh_inner(T z) {
    const T k0 = (T)0.7978845608028654;   // sqrt(2/pi)
    const T k1 = (T)0.044715;
    return dpt_tanh(k0 * (z + k1 * z * z * z));
}

template <typename T>
__device__ __forceinline__ T dpt_act_forward(T z, int kind) {
    switch (kind) {
        case DPT_ACT_RELU: return z > (T)0 ? z : (T)0;
        case DPT_ACT_GELU: return (T)0.5 * z * ((T)1 + dpt_erf(z * (T)0.7071067811865476));
        case DPT_ACT_GELU_TANH: return (T)0.5 * z * ((T)1 + dpt_gelu_tanh_inner(z));
        case DPT_ACT_TANH: return dpt_tanh(z);
        case DPT_ACT_SIGMOID: return dpt_sigmoid(z);
        default: return z;
    }
}

// d act / d z evaluated from the pre-activation z (works for every kind).
template <typename T>
__device__ __forceinline__ T dpt_act_grad_from_input(T z, int kind) {
    switch (kind) {
        case DPT_ACT_RELU: return z > (T)0 ? (T)1 : (T)0;
        case DPT_ACT_GELU: {
            const T cdf = (T)0.5 * ((T)1 + dpt_erf(z * (T)0.7071067811865476));
            const T pdf = dpt_exp((T)-0.5 * z * z) * (T)0.3989422804014327;   // 1/sqrt(2 pi)
            return cdf + z * pdf;
        }
        case DPT_ACT_GELU_TANH: {
            const T k0 = (T)0.7978845608028654, k1 = (T)0.044715;
            const T t = dpt_gelu_tanh_inner(z);
            return (T)0.5 * ((T)1 + t) + (T)0.5 * z * ((T)1 - t * t) * k0 * ((T)1 + (T)3 * k1 * z * z);
        }
        case DPT_ACT_TANH: { const T t = dpt_tanh(z); return (T)1 - t * t; }
        case DPT_ACT_SIGMOID: { const T s = dpt_sigmoid(z); return s * ((T)1 - s); }
        default: return (T)1;
    }
}

// d act / d z evaluated from the output y = act(z): relu, tanh, sigmoid, none only (gelu needs z).
template <typename T>
__device__ __forceinline__ T dpt_act_grad_from_output(T y, int kind) {
    switch (kind) {
        case DPT_ACT_RELU: return y > (T)0 ? (T)1 : (T)0;
        case DPT_ACT_TANH: return (T)1 - y * y;
        case DPT_ACT_SIGMOID: return y * ((T)1 - y);
        default: return (T)1;
    }
}

#endif  // DPT_ACT_CUH
