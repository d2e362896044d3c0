// Shared device helpers for every dptrain kernel.
//
// Written so the same text compiles three ways: by NVRTC inside cupy (RawModule / ElementwiseKernel
// preamble, no host headers available), by nvcc in the compile test, and by g++ in the host emulation
// test (engine/kernels/_emulate.py supplies a shim for the CUDA keywords).  Hence: no #include of
// system headers, typed overloads instead of relying on <cmath> templates, and names prefixed dpt_.
#ifndef DPT_COMMON_CUH
#define DPT_COMMON_CUH

#ifndef DPT_WARP
#define DPT_WARP 32   // lanes that cooperate on one softmax row (a full warp)
#endif

typedef long long dpt_i64;

// Grid-stride loop over [0, n): every kernel is launched with a capped grid and covers the rest by striding.
#define DPT_GRID_STRIDE(i, n)                                                        \
    for (dpt_i64 i = (dpt_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n);        \
         i += (dpt_i64)blockDim.x * gridDim.x)

// Typed math so float kernels call the single-precision intrinsics and double kernels the double ones.
__device__ __forceinline__ float dpt_exp(float x) { return expf(x); }
__device__ __forceinline__ double dpt_exp(double x) { return exp(x); }
__device__ __forceinline__ float dpt_log(float x) { return logf(x); }
__device__ __forceinline__ double dpt_log(double x) { return log(x); }
__device__ __forceinline__ float dpt_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dpt_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dpt_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dpt_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float dpt_erf(float x) { return erff(x); }
__device__ __forceinline__ double dpt_erf(double x) { return erf(x); }

// -inf / NaN without <math.h> macros (NVRTC has no INFINITY).
__device__ __forceinline__ float dpt_neg_inf(float) { return __int_as_float((int)0xff800000u); }
__device__ __forceinline__ double dpt_neg_inf(double) { return __longlong_as_double(0xfff0000000000000LL); }
__device__ __forceinline__ float dpt_nan(float) { return __int_as_float((int)0x7fc00000u); }
__device__ __forceinline__ double dpt_nan(double) { return __longlong_as_double(0x7ff8000000000000LL); }

template <typename T>
__device__ __forceinline__ T dpt_max(T a, T b) { return a > b ? a : b; }

#endif  // DPT_COMMON_CUH
