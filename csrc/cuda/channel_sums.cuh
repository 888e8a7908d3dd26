// Per-channel sums over H*W (the squeeze, and the backward's gs = sum_hw gy * x), written as
// partial sums partials[n, s, c] over S splits of H*W; the excitation kernels add the splits.
// Every reduction is deterministic (fixed order, no float atomics).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <limits>

#include "common.cuh"

namespace senet_kernels {
namespace cuda {

// NCHW channel sums: a warp per (n, c) row, or a whole block per row once rows are this long
// (fewer, longer rows: more threads per row keep enough loads in flight).
constexpr int64_t kBlockPerRowMinHW = 1024;
// NHWC channel sums: pixel lanes per block (threadIdx.y); threadIdx.x spans channels.
constexpr int kPixelLanes = kThreads / kWarp;
// Blocks per SM the NHWC sums aim for, splitting H*W when N * channel chunks is too few.
constexpr int64_t kSumBlocksPerSM = 4;

// What the channel sums add up at flat element i, all in the compute dtype:
//   kSumX               x                (forward squeeze)
//   kSumGradX           g * x            (backward gs, no ReLU tail)
//   kSumMaskedGradX     (out <= 0 ? 0 : g) * x (backward gs behind the ReLU tail; the masked
//                       gradient may be stored as it goes, see SumTerm::masked)
enum SumMode : int { kSumX = 0, kSumGradX = 1, kSumMaskedGradX = 2 };

template <typename scalar_t, typename acc_t, int MODE>
struct SumTerm {
  const scalar_t* x;
  const scalar_t* grad;  // MODE >= kSumGradX
  const scalar_t* out;   // MODE == kSumMaskedGradX
  // MODE == kSumMaskedGradX, nullable: also store gy (the residual's gradient) here, so that
  // the grad_x pass reads it instead of grad and out (one pass over the activation less).
  scalar_t* masked = nullptr;

  __device__ __forceinline__ acc_t operator()(int64_t i) const {
    acc_t acc[1] = {acc_t(0)};
    accumulate<1>(i, acc);
    return acc[0];
  }

  // acc[k] += term(i + k) for k < VEC; VEC > 1 loads 16 bytes of each tensor at once.
  template <int VEC>
  __device__ __forceinline__ void accumulate(int64_t i, acc_t (&acc)[VEC]) const {
    const Pack<scalar_t, VEC> xv = load_pack<VEC>(x + i);
    if constexpr (MODE == kSumX) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += static_cast<acc_t>(xv.v[k]);
    } else {
      Pack<scalar_t, VEC> gv = load_pack<VEC>(grad + i);
      if constexpr (MODE == kSumMaskedGradX) {
        // relu's backward seen from its output, PyTorch's threshold_backward: 0 where
        // out <= 0, g elsewhere, where out is NaN too.
        const Pack<scalar_t, VEC> ov = load_pack<VEC>(out + i);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          if (static_cast<acc_t>(ov.v[k]) <= acc_t(0)) gv.v[k] = static_cast<scalar_t>(acc_t(0));
        }
        if (masked != nullptr) store_pack<VEC>(masked + i, gv);
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        acc[k] += static_cast<acc_t>(gv.v[k]) * static_cast<acc_t>(xv.v[k]);
      }
    }
  }

  bool aligned() const {
    return aligned16(x) && (grad == nullptr || aligned16(grad)) && (out == nullptr || aligned16(out)) &&
           (masked == nullptr || aligned16(masked));
  }
};

// Dense NCHW: row = n*C + c holds HW contiguous elements. blockDim = (ROW_THREADS, kThreads /
// ROW_THREADS): ROW_THREADS == 32 puts a warp on each row (lanes stride the row, coalesced),
// ROW_THREADS == kThreads a whole block on one row. sums[row] = sum of the row (one split).
template <typename scalar_t, typename acc_t, int MODE, int ROW_THREADS>
__global__ void __launch_bounds__(kThreads)
channel_sum_nchw_kernel(SumTerm<scalar_t, acc_t, MODE> term, acc_t* __restrict__ sums,
                        int64_t rows, int64_t hw) {
  static_assert(ROW_THREADS == kWarp || ROW_THREADS == kThreads, "a warp or a block per row");
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  acc_t acc = acc_t(0);
  if (row < rows) {
    const int64_t base = row * hw;
#pragma unroll 4
    for (int64_t j = threadIdx.x; j < hw; j += ROW_THREADS) acc += term(base + j);
  }
  // No early return above: every lane takes part in the warp/block reduction.
  if constexpr (ROW_THREADS == kWarp) {
    acc = warp_sum(acc);
  } else {
    acc = block_sum(acc);  // blockDim.y == 1: the row is uniform over the block
  }
  if (threadIdx.x == 0 && row < rows) sums[row] = acc;
}

// Dense NHWC: channel c of sample n is strided by C. grid = (N, channel chunks of kWarp * VEC
// channels, S splits of H*W), blockDim = (kWarp, kPixelLanes): thread (tx, ty) sums channels
// [c, c + VEC) with c = chunk * kWarp * VEC + tx * VEC over the pixels ty, ty + kPixelLanes,
// ... of its split; a warp reads kWarp * VEC consecutive channels of one pixel (coalesced;
// 16-byte loads for VEC > 1, which needs C % VEC == 0). The lanes' sums are added in a fixed
// order in shared memory and written to partials[n, split, c].
template <typename scalar_t, typename acc_t, int MODE, int VEC>
__global__ void __launch_bounds__(kThreads)
channel_sum_nhwc_kernel(SumTerm<scalar_t, acc_t, MODE> term, acc_t* __restrict__ partials,
                        int64_t channels, int64_t hw, int64_t hw_per_split) {
  constexpr int kChunk = kWarp * VEC;
  __shared__ acc_t lane_sums[kPixelLanes][kChunk];
  const int64_t n = blockIdx.x, split = blockIdx.z, splits = gridDim.z;
  const int64_t chunk0 = static_cast<int64_t>(blockIdx.y) * kChunk;
  const int64_t c = chunk0 + threadIdx.x * VEC;
  const int64_t split_end = (split + 1) * hw_per_split;
  const int64_t p_end = split_end < hw ? split_end : hw;
  acc_t acc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = acc_t(0);
  if (c < channels) {  // VEC > 1: C % VEC == 0, so the whole vector is in range
    const int64_t base = n * hw * channels + c;
#pragma unroll 4
    for (int64_t p = split * hw_per_split + threadIdx.y; p < p_end; p += kPixelLanes) {
      term.template accumulate<VEC>(base + p * channels, acc);
    }
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) lane_sums[threadIdx.y][threadIdx.x * VEC + k] = acc[k];
  __syncthreads();
  const int tid = threadIdx.y * kWarp + threadIdx.x;
  for (int j = tid; j < kChunk; j += kThreads) {
    if (chunk0 + j >= channels) break;
    acc_t total = acc_t(0);
#pragma unroll
    for (int lane = 0; lane < kPixelLanes; ++lane) total += lane_sums[lane][j];
    partials[(n * splits + split) * channels + chunk0 + j] = total;
  }
}

// Splits of H*W for the channel sums (the partials buffer's middle dimension): NHWC splits so
// the grid reaches kSumBlocksPerSM blocks per SM; NCHW rows are never split.
inline int64_t channel_sum_splits(int64_t n, int64_t channels, int64_t hw, bool channels_last,
                                  int vec, int64_t num_sms) {
  if (!channels_last || n == 0) return 1;
  const int64_t blocks = n * cdiv(channels, static_cast<int64_t>(kWarp) * vec);
  const int64_t wanted = cdiv(kSumBlocksPerSM * num_sms, blocks);
  return std::max<int64_t>(1, std::min(wanted, cdiv(hw, 4 * kPixelLanes)));
}

// The vector width the NHWC sums use: 16 bytes per load when C and the pointers allow.
template <typename scalar_t, typename acc_t, int MODE>
int channel_sum_vec(const SumTerm<scalar_t, acc_t, MODE>& term, int64_t channels) {
  constexpr int vec = 16 / sizeof(scalar_t);
  return (vec > 1 && channels % vec == 0 && term.aligned()) ? vec : 1;
}

// partials [n, splits, channels] (splits from channel_sum_splits with the same vec) of term.
template <typename scalar_t, typename acc_t, int MODE>
void launch_channel_sums(const SumTerm<scalar_t, acc_t, MODE>& term, acc_t* partials,
                         int64_t n, int64_t channels, int64_t hw, bool channels_last, int vec,
                         int64_t splits, cudaStream_t stream) {
  if (n == 0 || channels == 0) return;
  if (channels_last) {
    const int64_t chunks = cdiv(channels, static_cast<int64_t>(kWarp) * vec);
    TORCH_CHECK(n <= std::numeric_limits<int32_t>::max() && chunks <= 65535 && splits <= 65535,
                "se (CUDA): too many samples or channels for one launch");
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(chunks),
                    static_cast<unsigned>(splits));
    const dim3 block(kWarp, kPixelLanes);
    const int64_t per_split = cdiv(hw, splits);
    if (vec == 1) {
      channel_sum_nhwc_kernel<scalar_t, acc_t, MODE, 1>
          <<<grid, block, 0, stream>>>(term, partials, channels, hw, per_split);
    } else {
      constexpr int kVec = 16 / sizeof(scalar_t) > 1 ? 16 / sizeof(scalar_t) : 1;
      TORCH_INTERNAL_ASSERT(vec == kVec);
      channel_sum_nhwc_kernel<scalar_t, acc_t, MODE, kVec>
          <<<grid, block, 0, stream>>>(term, partials, channels, hw, per_split);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  TORCH_INTERNAL_ASSERT(splits == 1);
  const int64_t rows = n * channels;
  if (hw >= kBlockPerRowMinHW) {
    TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(),
                "se (CUDA): too many (n, c) rows for one launch");
    channel_sum_nchw_kernel<scalar_t, acc_t, MODE, kThreads>
        <<<static_cast<unsigned>(rows), dim3(kThreads, 1), 0, stream>>>(term, partials, rows, hw);
  } else {
    constexpr int rows_per_block = kThreads / kWarp;
    const int64_t blocks = cdiv(rows, rows_per_block);
    TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
                "se (CUDA): too many (n, c) rows for one launch");
    channel_sum_nchw_kernel<scalar_t, acc_t, MODE, kWarp>
        <<<static_cast<unsigned>(blocks), dim3(kWarp, rows_per_block), 0, stream>>>(
            term, partials, rows, hw);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// sum_s partials[n, s, c]: what the excitation kernels read.
template <typename acc_t>
__device__ __forceinline__ acc_t sum_splits(const acc_t* partials, int64_t n, int64_t c,
                                            int64_t channels, int64_t splits) {
  acc_t total = acc_t(0);
  for (int64_t s = 0; s < splits; ++s) total += partials[(n * splits + s) * channels + c];
  return total;
}

}  // namespace cuda
}  // namespace senet_kernels
