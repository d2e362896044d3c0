// Multi-tensor apply: one launch walks many tensors (all parameters of a model, all gradients of a bucket).
//
// The host (engine/kernels/_multi_tensor.py) builds one int64 table in device memory:
//     [ list 0 pointers (n_tensors) | list 1 pointers | ... | sizes (n_tensors) |
//       chunk -> tensor index (n_chunks) | chunk -> first element (n_chunks) ]
// Each block takes whole chunks (grid-stride over chunks), each thread strides over the chunk's elements,
// so the work is balanced whatever the tensor sizes and the launch count is 1 instead of n_tensors.
#ifndef DPT_MULTI_TENSOR_CUH
#define DPT_MULTI_TENSOR_CUH
#include "common.cuh"

struct DptMtTable {
    const dpt_i64* ptrs;    // n_lists * n_tensors addresses
    const dpt_i64* sizes;
    const dpt_i64* chunk_tensor;
    const dpt_i64* chunk_begin;
    dpt_i64 n_tensors;
    dpt_i64 n_chunks;
    dpt_i64 chunk;

    __device__ __forceinline__ DptMtTable(const dpt_i64* table, int n_lists, dpt_i64 nt, dpt_i64 nc, dpt_i64 ch)
        : ptrs(table), sizes(table + (dpt_i64)n_lists * nt), chunk_tensor(table + ((dpt_i64)n_lists + 1) * nt),
          chunk_begin(table + ((dpt_i64)n_lists + 1) * nt + nc), n_tensors(nt), n_chunks(nc), chunk(ch) {}

    template <typename T>
    __device__ __forceinline__ T* ptr(int list, dpt_i64 tensor) const {
        return (T*)(unsigned long long)ptrs[(dpt_i64)list * n_tensors + tensor];
    }

    __device__ __forceinline__ dpt_i64 chunk_end(dpt_i64 b) const {
        const dpt_i64 e = chunk_begin[b] + chunk, n = sizes[chunk_tensor[b]];
        return e < n ? e : n;
    }
};

#endif  // DPT_MULTI_TENSOR_CUH
