// Batched excitation and weight gradients on the GPU: the small matrix products of the SE op
// as tiled GEMMs on CUDA cores, in the compute dtype (float32 multiply-adds for half and
// float inputs, double for double; never TF32, whatever torch.backends.cuda.matmul says),
// each output summed in a fixed order (deterministic).
//
// One kernel, tiled_gemm_kernel, with the operands read through loader functors (so the
// excitation's prologues, e.g. "sum the split partials, divide by HW", run while a tile is
// loaded) and the results written through epilogue functors:
//
//   forward, weight-heavy shapes (the same plan as the Triton backend's batched path):
//     c_to_r  A = pooled (from the channel sums' partials; stored), B = W1^T -> split-K partials
//     r_to_c  A = act(hidden) (hidden = sum of those partials + b1; stored), B = W2^T
//             -> scale = gate(. + b2)
//   backward, weight-heavy shapes:
//     c_to_r  A = gz = gs * gate'(s) (stored), B = W2 -> split-K partials
//     r_to_c  A = gh = (sum of the partials) * act'(hidden) (stored), B = W1 -> gp = . / HW
//   weight gradients, every shape: gW2 = gz^T act(hidden), gW1 = gh^T pooled, and the bias
//   gradients as row sums of A.
//
// The [N, C] -> [N, Cr] product reduces over C (2048 in SE-ResNet-50's last stage), so it is
// split over K (blockIdx.z) into partial sums, added by the r_to_c loader: enough blocks to
// fill the GPU without float atomics.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <limits>

#include "../se_math.h"
#include "channel_sums.cuh"
#include "common.cuh"

namespace senet_kernels {
namespace cuda {

constexpr int kTileM = 32;
constexpr int kTileN = 32;
constexpr int kTileK = 32;
// Each of the kThreads threads computes kColsPerThread outputs of the 32 x 32 tile: row
// tid / kThreadsPerRow, columns tid % kThreadsPerRow + j * kThreadsPerRow.
constexpr int kColsPerThread = kTileM * kTileN / kThreads;
constexpr int kThreadsPerRow = kTileN / kColsPerThread;
// Blocks the split-K product aims for per SM.
constexpr int64_t kGemmBlocksPerSM = 2;

// out(m, n) = epilogue(m, n, sum over this block's K range of a(m, k) * b(k, n)).
// grid = (cdiv(M, kTileM), cdiv(N, kTileN), K splits of k_per_split (a multiple of kTileK)).
// Loaders declare kContiguousK: whether consecutive k are adjacent in memory, which decides
// the order threads load a tile in (coalesced either way).
template <typename acc_t, typename LoadA, typename LoadB, typename Epilogue>
__global__ void __launch_bounds__(kThreads)
tiled_gemm_kernel(LoadA load_a, LoadB load_b, Epilogue epilogue, int64_t M, int64_t N,
                  int64_t K, int64_t k_per_split) {
  __shared__ acc_t a_tile[kTileK][kTileM + 1];
  __shared__ acc_t b_tile[kTileK][kTileN + 1];
  const int tid = threadIdx.x;
  const int row = tid / kThreadsPerRow, col = tid % kThreadsPerRow;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * k_per_split;
  const int64_t k_end = k_begin + k_per_split < K ? k_begin + k_per_split : K;
  acc_t acc[kColsPerThread];
#pragma unroll
  for (int j = 0; j < kColsPerThread; ++j) acc[j] = acc_t(0);
  acc_t a_row_sum = acc_t(0);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTileK) {
    for (int i = tid; i < kTileK * kTileM; i += kThreads) {
      const int kk = LoadA::kContiguousK ? i % kTileK : i / kTileM;
      const int mm = LoadA::kContiguousK ? i / kTileK : i % kTileM;
      const int64_t m = m0 + mm, k = k0 + kk;
      a_tile[kk][mm] = (m < M && k < k_end) ? load_a(m, k) : acc_t(0);
    }
    for (int i = tid; i < kTileK * kTileN; i += kThreads) {
      const int kk = LoadB::kContiguousK ? i % kTileK : i / kTileN;
      const int nn = LoadB::kContiguousK ? i / kTileK : i % kTileN;
      const int64_t n = n0 + nn, k = k0 + kk;
      b_tile[kk][nn] = (n < N && k < k_end) ? load_b(k, n) : acc_t(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kTileK; ++kk) {
      const acc_t a = a_tile[kk][row];
      a_row_sum += a;
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) acc[j] += a * b_tile[kk][col + j * kThreadsPerRow];
    }
    __syncthreads();  // the tiles are reloaded next step
  }
  const int64_t m = m0 + row;
  if (m >= M) return;
#pragma unroll
  for (int j = 0; j < kColsPerThread; ++j) {
    const int64_t n = n0 + col + j * kThreadsPerRow;
    if (n < N) epilogue(m, n, acc[j]);
  }
  if (col == 0 && blockIdx.y == 0) epilogue.row_sum(m, a_row_sum);
}

// ---------------------------------------------------------------------------------------
// Loaders of A [M, K]

// Forward c_to_r: A(n, c) = pooled = (sum of the channel sums' splits) / HW, stored to pooled
// by the blocks of the first column tile (each (n, c) is loaded by exactly one of them).
template <typename acc_t>
struct PooledLoader {
  static constexpr bool kContiguousK = true;
  const acc_t* partials;
  int64_t splits, channels;
  acc_t hw;
  acc_t* pooled;
  __device__ __forceinline__ acc_t operator()(int64_t n, int64_t c) const {
    const acc_t p = sum_splits(partials, n, c, channels, splits) / hw;
    if (blockIdx.y == 0) pooled[n * channels + c] = p;
    return p;
  }
};

// Backward c_to_r: A(n, c) = gz = gs * gate'(s), gs from the channel sums' splits; stored.
template <typename acc_t>
struct GradGateLoader {
  static constexpr bool kContiguousK = true;
  const acc_t* partials;
  int64_t splits, channels;
  const acc_t* scale;
  Gate gate;
  acc_t* gz;
  __device__ __forceinline__ acc_t operator()(int64_t n, int64_t c) const {
    const int64_t i = n * channels + c;
    const acc_t g = gate_backward(sum_splits(partials, n, c, channels, splits), scale[i], gate);
    if (blockIdx.y == 0) gz[i] = g;
    return g;
  }
};

// r_to_c: A(n, r) from the c_to_r product's K-split partials [Z, N, Cr]:
//   forward:  hidden = sum + b1 (stored), A = act(hidden)
//   backward: gh = sum * act'(hidden) (stored), A = gh
template <typename acc_t, typename w_t, bool BACKWARD>
struct HiddenLoader {
  static constexpr bool kContiguousK = true;
  const acc_t* k_partials;
  int64_t k_splits, n_samples, reduced;
  const w_t* b1;         // forward, nullable
  const acc_t* hidden;   // backward: the forward's hidden
  acc_t* store;          // forward: hidden; backward: gh
  Activation act;
  __device__ __forceinline__ acc_t operator()(int64_t n, int64_t r) const {
    acc_t v = acc_t(0);
    for (int64_t z = 0; z < k_splits; ++z) v += k_partials[(z * n_samples + n) * reduced + r];
    const int64_t i = n * reduced + r;
    if constexpr (BACKWARD) {
      v = activate_backward(v, hidden[i], act);
      if (blockIdx.y == 0) store[i] = v;
      return v;
    } else {
      if (b1 != nullptr) v += static_cast<acc_t>(b1[r]);
      if (blockIdx.y == 0) store[i] = v;
      return activate(v, act);
    }
  }
};

// Weight gradients: A(m, n) = u[n, m], a [batch, M] vector read transposed.
template <typename acc_t>
struct TransposedLoader {
  static constexpr bool kContiguousK = false;
  const acc_t* u;
  int64_t rows;  // M
  __device__ __forceinline__ acc_t operator()(int64_t m, int64_t n) const { return u[n * rows + m]; }
};

// ---------------------------------------------------------------------------------------
// Loaders of B [K, N]

// B(k, n) = w[k * stride_k + n * stride_n], a weight matrix read directly or transposed.
template <typename acc_t, typename w_t, bool CONTIGUOUS_K>
struct WeightLoader {
  static constexpr bool kContiguousK = CONTIGUOUS_K;
  const w_t* w;
  int64_t stride_k, stride_n;
  __device__ __forceinline__ acc_t operator()(int64_t k, int64_t n) const {
    return static_cast<acc_t>(w[k * stride_k + n * stride_n]);
  }
};

// Weight gradients: B(n, j) = v[n, j], or act(v[n, j]) for the forward's hidden.
template <typename acc_t>
struct RowsLoader {
  static constexpr bool kContiguousK = false;
  const acc_t* v;
  int64_t cols;
  bool apply_act;
  Activation act;  // when apply_act
  __device__ __forceinline__ acc_t operator()(int64_t n, int64_t j) const {
    const acc_t x = v[n * cols + j];
    return apply_act ? activate(x, act) : x;
  }
};

// ---------------------------------------------------------------------------------------
// Epilogues

// c_to_r: the K split's partial product, partials[blockIdx.z, m, n].
template <typename acc_t>
struct SplitPartialStore {
  acc_t* partials;
  int64_t rows, cols;
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, acc_t v) const {
    partials[(static_cast<int64_t>(blockIdx.z) * rows + m) * cols + n] = v;
  }
  __device__ __forceinline__ void row_sum(int64_t, acc_t) const {}
};

// Forward r_to_c: scale = gate(v + b2).
template <typename acc_t, typename w_t>
struct ScaleStore {
  acc_t* scale;
  const w_t* b2;  // nullable
  int64_t channels;
  Gate gate;
  __device__ __forceinline__ void operator()(int64_t n, int64_t c, acc_t v) const {
    if (b2 != nullptr) v += static_cast<acc_t>(b2[c]);
    scale[n * channels + c] = apply_gate(v, gate);
  }
  __device__ __forceinline__ void row_sum(int64_t, acc_t) const {}
};

// Single FC (w2 absent), forward: hidden = v + b1 (the gate's input), scale = gate(hidden).
template <typename acc_t, typename w_t>
struct HiddenGateStore {
  acc_t* hidden;
  acc_t* scale;
  const w_t* b1;  // nullable
  int64_t channels;
  Gate gate;
  __device__ __forceinline__ void operator()(int64_t n, int64_t c, acc_t v) const {
    if (b1 != nullptr) v += static_cast<acc_t>(b1[c]);
    hidden[n * channels + c] = v;
    scale[n * channels + c] = apply_gate(v, gate);
  }
  __device__ __forceinline__ void row_sum(int64_t, acc_t) const {}
};

// Backward r_to_c: gp = v / HW, the gradient reaching each pixel through the mean.
template <typename acc_t>
struct GradPooledStore {
  acc_t* gp;
  int64_t channels;
  acc_t hw;
  __device__ __forceinline__ void operator()(int64_t n, int64_t c, acc_t v) const {
    gp[n * channels + c] = v / hw;
  }
  __device__ __forceinline__ void row_sum(int64_t, acc_t) const {}
};

// Weight gradients: g[m, n] (the weights' dtype) and the bias gradient gb[m] = sum_k A(m, k).
template <typename acc_t, typename w_t>
struct WeightGradStore {
  w_t* g;
  w_t* gb;
  int64_t cols;
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, acc_t v) const {
    g[m * cols + n] = static_cast<w_t>(v);
  }
  __device__ __forceinline__ void row_sum(int64_t m, acc_t v) const { gb[m] = static_cast<w_t>(v); }
};

// ---------------------------------------------------------------------------------------
// Host side

// K splits of a product reducing over K with an M x N output: enough blocks for
// kGemmBlocksPerSM per SM, each split at least two K tiles.
struct KSplit {
  int64_t per_split;  // a multiple of kTileK
  int64_t splits;     // cdiv(K, per_split): grid.z, and the partial products' first dimension
};

inline KSplit gemm_k_split(int64_t M, int64_t N, int64_t K, int64_t num_sms) {
  const int64_t blocks = cdiv(M, kTileM) * cdiv(N, kTileN);
  const int64_t wanted = std::max<int64_t>(
      1, std::min(cdiv(kGemmBlocksPerSM * num_sms, blocks), cdiv(K, 2 * kTileK)));
  const int64_t per_split = cdiv(cdiv(K, wanted), kTileK) * kTileK;
  return {per_split, cdiv(K, per_split)};
}

inline KSplit no_k_split(int64_t K) { return {cdiv(K, kTileK) * kTileK, 1}; }

template <typename acc_t, typename LoadA, typename LoadB, typename Epilogue>
void launch_gemm(const LoadA& a, const LoadB& b, const Epilogue& epilogue, int64_t M, int64_t N,
                 int64_t K, KSplit split, cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  TORCH_CHECK(cdiv(M, kTileM) <= std::numeric_limits<int32_t>::max() &&
                  cdiv(N, kTileN) <= 65535 && split.splits <= 65535,
              "se (CUDA): excitation GEMM too large for one launch");
  const dim3 grid(static_cast<unsigned>(cdiv(M, kTileM)), static_cast<unsigned>(cdiv(N, kTileN)),
                  static_cast<unsigned>(split.splits));
  tiled_gemm_kernel<acc_t><<<grid, kThreads, 0, stream>>>(a, b, epilogue, M, N, K,
                                                          split.per_split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace senet_kernels
