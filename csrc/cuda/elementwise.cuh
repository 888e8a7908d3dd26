// The streaming passes of the SE op on the GPU: out = relu?(x * s + residual?) and its
// backward, grid-stride loops over the flat elements with 16-byte vector loads.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "common.cuh"

namespace senet_kernels {
namespace cuda {

// Grid-stride elementwise kernels: enough blocks to fill any current GPU several times over.
constexpr int64_t kMaxElementwiseBlocks = 1 << 15;

// Walks consecutive flat elements of a dense NCHW / NHWC tensor and yields, for each, its row
// n*C + c in the [N, C] vectors. One division (two for NHWC) at the start; after that, carries.
template <typename index_t>
struct VectorRow {
  index_t row;  // n*C + c
  index_t pos;  // NCHW: hw in [0, HW); NHWC: c in [0, C)
  index_t pix;  // NHWC only: n*HW + hw
  index_t channels, hw;
  bool channels_last;

  __device__ __forceinline__ VectorRow(index_t i, index_t channels_, index_t hw_, bool cl)
      : channels(channels_), hw(hw_), channels_last(cl) {
    if (!cl) {
      row = i / hw;  // (n*C + c)
      pos = i - row * hw;
      pix = 0;
    } else {
      pix = i / channels;
      pos = i - pix * channels;
      row = (pix / hw) * channels + pos;
    }
  }

  __device__ __forceinline__ void next() {
    if (!channels_last) {
      if (++pos == hw) {
        pos = 0;
        ++row;
      }
    } else if (++pos == channels) {  // next pixel, possibly of the next sample
      pos = 0;
      ++pix;
      row = (pix / hw) * channels;
    } else {
      ++row;
    }
  }
};

// out = relu?(x * scale[n, c] + residual?), in the compute dtype, rounded once.
template <typename scalar_t, typename acc_t, typename index_t>
struct ScaleForward {
  const scalar_t* x;
  const scalar_t* residual;  // nullable
  const acc_t* scale;
  scalar_t* out;
  index_t channels, hw;
  bool channels_last, post_relu;

  template <int VEC>
  __device__ __forceinline__ void apply(index_t i) const {
    VectorRow<index_t> rows(i, channels, hw, channels_last);
    const Pack<scalar_t, VEC> xv = load_pack<VEC>(x + i);
    Pack<scalar_t, VEC> rv;
    if (residual != nullptr) rv = load_pack<VEC>(residual + i);
    Pack<scalar_t, VEC> ov;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      acc_t y = static_cast<acc_t>(xv.v[k]) * scale[rows.row];
      if (residual != nullptr) y += static_cast<acc_t>(rv.v[k]);
      if (post_relu && y < acc_t(0)) y = acc_t(0);  // NaN stays NaN, as in torch.relu
      ov.v[k] = static_cast<scalar_t>(y);
      rows.next();
    }
    store_pack<VEC>(out + i, ov);
  }
};

// gy = (out <= 0 ? 0 : grad) behind the ReLU tail (threshold_backward: NaN outputs pass the
// gradient, as in PyTorch), else grad; grad_x = gy * scale + gp, in the
// compute dtype, rounded once; grad_residual = gy (exact: gy is grad or 0) when requested.
// With grad_residual_written, the channel sums already stored gy to grad_residual
// (SumTerm::masked), and it is read from there instead of grad and out.
template <typename scalar_t, typename acc_t, typename index_t>
struct ScaleBackward {
  const scalar_t* grad;
  const scalar_t* out;  // nullable: given iff post_relu
  const acc_t* scale;
  const acc_t* gp;
  scalar_t* grad_x;
  scalar_t* grad_residual;  // nullable
  index_t channels, hw;
  bool channels_last;
  bool grad_residual_written;

  template <int VEC>
  __device__ __forceinline__ void apply(index_t i) const {
    VectorRow<index_t> rows(i, channels, hw, channels_last);
    if (grad_residual_written) {
      scale_gradient<VEC>(load_pack<VEC>(grad_residual + i), rows, i);
      return;
    }
    Pack<scalar_t, VEC> gv = load_pack<VEC>(grad + i);
    if (out != nullptr) {
      const Pack<scalar_t, VEC> ov = load_pack<VEC>(out + i);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        if (static_cast<acc_t>(ov.v[k]) <= acc_t(0)) gv.v[k] = static_cast<scalar_t>(acc_t(0));
      }
    }
    if (grad_residual != nullptr) store_pack<VEC>(grad_residual + i, gv);
    scale_gradient<VEC>(gv, rows, i);
  }

  // grad_x[i + k] = gy[k] * scale + gp of each element's (n, c) row
  template <int VEC>
  __device__ __forceinline__ void scale_gradient(const Pack<scalar_t, VEC>& gv,
                                                 VectorRow<index_t>& rows, index_t i) const {
    Pack<scalar_t, VEC> gx;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const index_t r = rows.row;
      gx.v[k] = static_cast<scalar_t>(static_cast<acc_t>(gv.v[k]) * scale[r] + gp[r]);
      rows.next();
    }
    store_pack<VEC>(grad_x + i, gx);
  }
};

// Grid-stride loop over numel elements, VEC at a time (vector loads when VEC > 1; the caller
// checked 16-byte alignment), then the numel % VEC tail one element at a time.
template <typename Op, typename index_t, int VEC>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(Op op, index_t numel) {
  const index_t tid = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  const index_t vectors = numel / VEC;
  for (index_t v = tid; v < vectors; v += stride) op.template apply<VEC>(v * VEC);
  if constexpr (VEC > 1) {
    const index_t i = vectors * VEC + tid;  // tail: fewer than VEC elements, first threads
    if (i < numel) op.template apply<1>(i);
  }
}

template <typename Op, typename index_t, int VEC>
void launch_elementwise_vec(const Op& op, int64_t numel, cudaStream_t stream) {
  const int64_t work = std::max<int64_t>(numel / VEC, 1);
  const int64_t blocks = std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxElementwiseBlocks);
  elementwise_kernel<Op, index_t, VEC><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      op, static_cast<index_t>(numel));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// make_op(TypeTag<index_t>) builds the functor with index_t fields: 32-bit indexing when every
// flat index (and index + grid stride) fits, 64-bit otherwise. Vector loads when all the
// pointers are 16-byte aligned.
template <typename scalar_t, typename MakeOp>
void launch_elementwise(const MakeOp& make_op, int64_t numel, bool aligned, cudaStream_t stream) {
  if (numel == 0) return;
  constexpr int kVec = 16 / sizeof(scalar_t);
  auto launch = [&](auto index_tag) {
    using index_t = typename decltype(index_tag)::type;
    const auto op = make_op(index_tag);
    using Op = std::decay_t<decltype(op)>;
    if (aligned) {
      launch_elementwise_vec<Op, index_t, kVec>(op, numel, stream);
    } else {
      launch_elementwise_vec<Op, index_t, 1>(op, numel, stream);
    }
  };
  // uint32_t: index + stride < 2^31 + 2^23 never wraps.
  if (numel <= std::numeric_limits<int32_t>::max()) {
    launch(TypeTag<uint32_t>{});
  } else {
    launch(TypeTag<int64_t>{});
  }
}

}  // namespace cuda
}  // namespace senet_kernels
