// Device helpers of the fused recurrent-step kernels (engine/kernels/rnn_step.py): one launch per time step
// does all of a step's elementwise work, so a T-step sequence costs T launches (+ T matmuls), not ~10 T.
#ifndef DPT_RNN_STEP_CUH
#define DPT_RNN_STEP_CUH
#include "common.cuh"
#include "act.cuh"

// Gate sigmoid as 0.5 * tanh(z / 2) + 0.5: halving is exact, there is no exp to overflow, and it is the
// formula the numpy path uses (there with the 1/2 folded into the weights), so both agree to rounding.
template <typename T>
__device__ __forceinline__ T dpt_gate_sigmoid(T z) {
    return (T)0.5 * dpt_tanh((T)0.5 * z) + (T)0.5;
}

// Derivative of a sigmoid / tanh gate from its stored output.
template <typename T>
__device__ __forceinline__ T dpt_dsigmoid(T s) { return s * ((T)1 - s); }

template <typename T>
__device__ __forceinline__ T dpt_dtanh(T t) { return (T)1 - t * t; }

#endif  // DPT_RNN_STEP_CUH
