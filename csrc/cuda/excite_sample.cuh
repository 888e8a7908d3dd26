// Per-sample excitation on the GPU: one block per sample runs the two FC layers (forward) or
// their backward for that sample. Used where the activations outweigh the weights, which
// these kernels read once per sample (excite_gemm.cuh batches the rest).
#pragma once

#include "../se_math.h"
#include "channel_sums.cuh"
#include "common.cuh"

namespace senet_kernels {
namespace cuda {

// Excitation: one block of kThreads threads per sample. The [N, C] / [N, Cr] vectors live in
// global memory (the op's outputs or temporaries), so no size limit applies; a
// __syncthreads() between phases makes one phase's global writes visible to the next
// (the buffers are read through plain, non-__restrict__ pointers: no read-only cache).

// For each row r of the row-major matrix m [rows, cols]: store(r, sum_c m[r, c] * v[c]).
// A warp per row, lanes along the row (coalesced).
template <typename acc_t, typename w_t, typename Store>
__device__ __forceinline__ void block_row_dots(const w_t* m, int64_t rows, int64_t cols,
                                               const acc_t* v, Store store) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int64_t r = warp; r < rows; r += kWarps) {  // warp-uniform: warp_sum is safe
    acc_t acc = acc_t(0);
    for (int64_t c = lane; c < cols; c += kWarp) {
      acc += static_cast<acc_t>(m[r * cols + c]) * v[c];
    }
    acc = warp_sum(acc);
    if (lane == 0) store(r, acc);
  }
}

// For each column j of the row-major matrix m [rows, cols]: store(j, sum_r v[r] * m[r, j]),
// i.e. v^T m. Lanes along a 32-column stripe (coalesced), warps split the rows; the kWarps
// partials are added in a fixed order in shared memory. All threads must call it.
template <typename acc_t, typename w_t, typename Store>
__device__ __forceinline__ void block_column_dots(const w_t* m, int64_t rows, int64_t cols,
                                                  const acc_t* v, Store store) {
  __shared__ acc_t partial[kWarps][kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int64_t col0 = 0; col0 < cols; col0 += kWarp) {  // block-uniform
    const int64_t col = col0 + lane;
    acc_t acc = acc_t(0);
    if (col < cols) {
      for (int64_t r = warp; r < rows; r += kWarps) {
        acc += v[r] * static_cast<acc_t>(m[r * cols + col]);
      }
    }
    partial[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && col < cols) {
      acc_t total = acc_t(0);
#pragma unroll
      for (int w = 0; w < kWarps; ++w) total += partial[w][lane];
      store(col, total);
    }
    __syncthreads();  // `partial` is reused by the next stripe (and the next call)
  }
}

// pooled = (sum of the split partials) / HW; hidden = W1 pooled + b1; act_hidden = act(hidden);
// scale = gate(W2 act_hidden + b2). grid = N, block = kThreads.
template <typename acc_t, typename w_t>
__global__ void __launch_bounds__(kThreads)
excite_forward_kernel(const acc_t* partials, int64_t splits, acc_t* pooled,
                      const w_t* __restrict__ w1, const w_t* __restrict__ b1,
                      const w_t* __restrict__ w2, const w_t* __restrict__ b2, acc_t* hidden,
                      acc_t* act_hidden, acc_t* scale, int64_t channels, int64_t reduced,
                      acc_t hw, Activation act, Gate gate) {
  const int64_t n = blockIdx.x;
  acc_t* p = pooled + n * channels;
  for (int64_t c = threadIdx.x; c < channels; c += kThreads) {
    p[c] = sum_splits(partials, n, c, channels, splits) / hw;
  }
  __syncthreads();  // pooled complete
  acc_t* h = hidden + n * reduced;
  acc_t* a = act_hidden + n * reduced;
  acc_t* s = scale + n * channels;

  block_row_dots(w1, reduced, channels, static_cast<const acc_t*>(p), [&](int64_t r, acc_t dot) {
    const acc_t hv = dot + (b1 != nullptr ? static_cast<acc_t>(b1[r]) : acc_t(0));
    h[r] = hv;
    a[r] = activate(hv, act);
  });
  __syncthreads();  // act_hidden complete before any warp reads it
  block_row_dots(w2, channels, reduced, static_cast<const acc_t*>(a), [&](int64_t c, acc_t dot) {
    const acc_t z = dot + (b2 != nullptr ? static_cast<acc_t>(b2[c]) : acc_t(0));
    s[c] = apply_gate(z, gate);
  });
}

// From gs = sum_hw gy * x (split partials): gz = gs * gate'(s); act_hidden = act(hidden);
// gh = (gz W2) * act'(hidden); gp = (gh W1) / HW. grid = N, block = kThreads.
template <typename acc_t, typename w_t>
__global__ void __launch_bounds__(kThreads)
excite_backward_kernel(const acc_t* gs_partials, int64_t splits, const acc_t* scale,
                       const acc_t* hidden, const w_t* __restrict__ w1,
                       const w_t* __restrict__ w2, acc_t* gz, acc_t* act_hidden, acc_t* gh,
                       acc_t* gp, int64_t channels, int64_t reduced, acc_t hw,
                       Activation act, Gate gate) {
  const int64_t n = blockIdx.x;
  const acc_t* s_n = scale + n * channels;
  const acc_t* h_n = hidden + n * reduced;
  acc_t* gz_n = gz + n * channels;
  acc_t* a_n = act_hidden + n * reduced;
  acc_t* gh_n = gh + n * reduced;
  acc_t* gp_n = gp + n * channels;

  for (int64_t c = threadIdx.x; c < channels; c += kThreads) {
    gz_n[c] = gate_backward(sum_splits(gs_partials, n, c, channels, splits), s_n[c], gate);
  }
  for (int64_t r = threadIdx.x; r < reduced; r += kThreads) a_n[r] = activate(h_n[r], act);
  __syncthreads();  // gz complete
  // ga = gz^T W2 (W2 is [C, Cr]), gh = ga * act'(hidden)
  block_column_dots(w2, channels, reduced, static_cast<const acc_t*>(gz_n),
                    [&](int64_t r, acc_t ga) { gh_n[r] = activate_backward(ga, h_n[r], act); });
  __syncthreads();  // gh complete (block_column_dots ends with one too; kept for clarity)
  // gp = gh^T W1 / HW (W1 is [Cr, C]): the gradient reaching each pixel through the mean
  block_column_dots(w1, reduced, channels, static_cast<const acc_t*>(gh_n),
                    [&](int64_t c, acc_t g) { gp_n[c] = g / hw; });
}

}  // namespace cuda
}  // namespace senet_kernels
