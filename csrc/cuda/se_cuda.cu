// CUDA kernels of the SE op, registered for senet_kernels::se_forward_ext / se_backward_ext.
//
// A straightforward fallback (the Triton kernels are the fast path): every launch is simple
// enough to check by reading, every reduction is deterministic (no float atomics).
//
// Forward, three launches:
//   channel_sum_{nchw,nhwc}_kernel   pooled = sum_hw x / HW                   (reads x)
//   excite_forward_kernel            hidden, scale from pooled, one block per sample
//   elementwise_kernel<ScaleForward> out = relu?(x * scale + residual?)       (reads x, res)
// Backward, three launches and two small GEMMs:
//   channel_sum_{nchw,nhwc}_kernel   gs = sum_hw gy * x                       (reads g, x, out)
//   excite_backward_kernel           gz, act(hidden), gh, gp, one block per sample
//   elementwise_kernel<ScaleBackward> grad_x = gy * s + gp, grad_residual = gy
//   write_weight_grads               (cuBLAS, se_common.cpp)
//
// Tensors are indexed as dense NCHW (flat = (n*C + c)*HW + hw) or dense NHWC
// (flat = (n*HW + hw)*C + c), see layout.py. The [N, C] vectors are dense, row n*C + c.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../se.h"
#include "../se_math.h"

namespace senet_kernels {
namespace {

constexpr int kWarp = 32;
// Block size of the reduction, excitation and elementwise kernels. The excitation helpers
// below assume exactly this many threads (kWarps warps) per block.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;
// NHWC channel sums: a block is kNhwcChannels channels (threadIdx.x, one warp: coalesced
// loads along C) by kNhwcSplit HW lanes (threadIdx.y), reduced in shared memory.
constexpr int kNhwcChannels = kWarp;
constexpr int kNhwcSplit = kThreads / kNhwcChannels;
// NCHW channel sums: a warp per (n, c) row, or a whole block per row once rows are this long
// (fewer, longer rows: more threads per row keep enough loads in flight).
constexpr int64_t kBlockPerRowMinHW = 1024;
// Grid-stride elementwise kernels: enough blocks to fill any current GPU several times over.
constexpr int64_t kMaxElementwiseBlocks = 1 << 15;

// ---------------------------------------------------------------------------------------
// Reductions

// Sum over the 32 lanes of a warp; every lane gets the total. All lanes must call it.
// The butterfly order is fixed, so the result is deterministic.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum over a 1-D block of kThreads threads; the total is valid in thread 0. All threads must
// call it (it synchronizes). Called at most once per kernel, so `partial` needs no reset.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T partial[kWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? partial[lane] : T(0);
    v = warp_sum(v);
  }
  return v;
}

// What the channel sums add up at flat element i, all in the compute dtype:
//   kSumX               x                (forward squeeze)
//   kSumGradX           g * x            (backward gs, no ReLU tail)
//   kSumMaskedGradX     g * (out > 0) * x (backward gs behind the ReLU tail)
enum SumMode : int { kSumX = 0, kSumGradX = 1, kSumMaskedGradX = 2 };

template <typename scalar_t, typename acc_t, int MODE>
struct SumTerm {
  const scalar_t* x;
  const scalar_t* grad;  // MODE >= kSumGradX
  const scalar_t* out;   // MODE == kSumMaskedGradX

  __device__ __forceinline__ acc_t operator()(int64_t i) const {
    const acc_t xv = static_cast<acc_t>(x[i]);
    if constexpr (MODE == kSumX) {
      return xv;
    } else {
      acc_t gy = static_cast<acc_t>(grad[i]);
      // relu'(y) seen from its output: 1 where out > 0, so 0 for out = 0 and for NaN, as in
      // PyTorch's threshold_backward.
      if constexpr (MODE == kSumMaskedGradX) {
        if (!(static_cast<acc_t>(out[i]) > acc_t(0))) gy = acc_t(0);
      }
      return gy * xv;
    }
  }
};

// Dense NCHW: row = n*C + c holds HW contiguous elements. blockDim = (ROW_THREADS, kThreads /
// ROW_THREADS): ROW_THREADS == 32 puts a warp on each row (lanes stride the row, coalesced),
// ROW_THREADS == kThreads a whole block on one row. sums[row] = (sum of the row) / divisor.
template <typename scalar_t, typename acc_t, int MODE, int ROW_THREADS>
__global__ void __launch_bounds__(kThreads)
channel_sum_nchw_kernel(SumTerm<scalar_t, acc_t, MODE> term, acc_t* __restrict__ sums,
                        int64_t rows, int64_t hw, acc_t divisor) {
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
  if (threadIdx.x == 0 && row < rows) sums[row] = acc / divisor;
}

// Dense NHWC: channel c of sample n is strided by C. grid = (N, ceil(C / kNhwcChannels)),
// blockDim = (kNhwcChannels, kNhwcSplit): thread (tx, ty) sums hw = ty, ty + kNhwcSplit, ...
// of channel c; a warp reads kNhwcChannels consecutive channels of one pixel (coalesced).
// The kNhwcSplit partials are added in a fixed order in shared memory.
template <typename scalar_t, typename acc_t, int MODE>
__global__ void __launch_bounds__(kThreads)
channel_sum_nhwc_kernel(SumTerm<scalar_t, acc_t, MODE> term, acc_t* __restrict__ sums,
                        int64_t channels, int64_t hw, acc_t divisor) {
  __shared__ acc_t partial[kNhwcSplit][kNhwcChannels];
  const int64_t n = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kNhwcChannels + threadIdx.x;
  acc_t acc = acc_t(0);
  if (c < channels) {
    const int64_t base = n * hw * channels + c;
#pragma unroll 4
    for (int64_t p = threadIdx.y; p < hw; p += kNhwcSplit) acc += term(base + p * channels);
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    acc_t total = acc_t(0);
#pragma unroll
    for (int k = 0; k < kNhwcSplit; ++k) total += partial[k][threadIdx.x];
    sums[n * channels + c] = total / divisor;
  }
}

// ---------------------------------------------------------------------------------------
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

// hidden = W1 pooled + b1; act_hidden = act(hidden); scale = gate(W2 act_hidden + b2).
// grid = N, block = kThreads.
template <typename acc_t, typename w_t>
__global__ void __launch_bounds__(kThreads)
excite_forward_kernel(const acc_t* pooled, const w_t* __restrict__ w1,
                      const w_t* __restrict__ b1, const w_t* __restrict__ w2,
                      const w_t* __restrict__ b2, acc_t* hidden, acc_t* act_hidden,
                      acc_t* scale, int64_t channels, int64_t reduced, int act, int gate) {
  const int64_t n = blockIdx.x;
  const acc_t* p = pooled + n * channels;
  acc_t* h = hidden + n * reduced;
  acc_t* a = act_hidden + n * reduced;
  acc_t* s = scale + n * channels;

  block_row_dots(w1, reduced, channels, p, [&](int64_t r, acc_t dot) {
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

// From gs = sum_hw gy * x: gz = gs * gate'(s); act_hidden = act(hidden);
// gh = (gz W2) * act'(hidden); gp = (gh W1) / HW. grid = N, block = kThreads.
template <typename acc_t, typename w_t>
__global__ void __launch_bounds__(kThreads)
excite_backward_kernel(const acc_t* gs, const acc_t* scale, const acc_t* hidden,
                       const w_t* __restrict__ w1, const w_t* __restrict__ w2, acc_t* gz,
                       acc_t* act_hidden, acc_t* gh, acc_t* gp, int64_t channels,
                       int64_t reduced, acc_t hw, int act, int gate) {
  const int64_t n = blockIdx.x;
  const acc_t* gs_n = gs + n * channels;
  const acc_t* s_n = scale + n * channels;
  const acc_t* h_n = hidden + n * reduced;
  acc_t* gz_n = gz + n * channels;
  acc_t* a_n = act_hidden + n * reduced;
  acc_t* gh_n = gh + n * reduced;
  acc_t* gp_n = gp + n * channels;

  for (int64_t c = threadIdx.x; c < channels; c += kThreads) {
    gz_n[c] = gs_n[c] * gate_grad_from_scale(s_n[c], gate);
  }
  for (int64_t r = threadIdx.x; r < reduced; r += kThreads) a_n[r] = activate(h_n[r], act);
  __syncthreads();  // gz complete
  // ga = gz^T W2 (W2 is [C, Cr]), gh = ga * act'(hidden)
  block_column_dots(w2, channels, reduced, static_cast<const acc_t*>(gz_n),
                    [&](int64_t r, acc_t ga) { gh_n[r] = ga * activate_grad(h_n[r], act); });
  __syncthreads();  // gh complete (block_column_dots ends with one too; kept for clarity)
  // gp = gh^T W1 / HW (W1 is [Cr, C]): the gradient reaching each pixel through the mean
  block_column_dots(w1, reduced, channels, static_cast<const acc_t*>(gh_n),
                    [&](int64_t c, acc_t g) { gp_n[c] = g / hw; });
}

// ---------------------------------------------------------------------------------------
// Elementwise passes over x-shaped tensors.

// VEC consecutive elements, aligned for one vector load / store (16 bytes for VEC > 1).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <int VEC, typename T>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <int VEC, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, VEC>& pack) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = pack;
}

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

// gy = grad * (out > 0) behind the ReLU tail, else grad; grad_x = gy * scale + gp, in the
// compute dtype, rounded once; grad_residual = gy (exact: gy is grad or 0) when requested.
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

  template <int VEC>
  __device__ __forceinline__ void apply(index_t i) const {
    VectorRow<index_t> rows(i, channels, hw, channels_last);
    Pack<scalar_t, VEC> gv = load_pack<VEC>(grad + i);
    if (out != nullptr) {
      const Pack<scalar_t, VEC> ov = load_pack<VEC>(out + i);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        if (!(static_cast<acc_t>(ov.v[k]) > acc_t(0))) gv.v[k] = static_cast<scalar_t>(acc_t(0));
      }
    }
    if (grad_residual != nullptr) store_pack<VEC>(grad_residual + i, gv);
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

// ---------------------------------------------------------------------------------------
// Host side

void check_cuda(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.is_cuda(), "se (CUDA): ", name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == device, "se (CUDA): ", name, " is on ", t.device(),
              " but x is on ", device);
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<w_t>{}) with w_t the parameters' dtype: scalar_t or float.
template <typename scalar_t, typename Fn>
void dispatch_param_type(at::ScalarType param_dtype, const Fn& fn) {
  if (param_dtype == c10::CppTypeToScalarType<scalar_t>::value) {
    fn(TypeTag<scalar_t>{});
  } else {
    TORCH_CHECK(param_dtype == at::kFloat, "se (CUDA): the SE parameters have dtype ",
                param_dtype, " but x has ", c10::CppTypeToScalarType<scalar_t>::value,
                ": parameters must be x's dtype or float32");
    fn(TypeTag<float>{});
  }
}

void check_params(const at::Tensor& w1, const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                  const std::optional<at::Tensor>& b2, int64_t channels) {
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == channels, "se (CUDA): w1 must be [Cr, ", channels,
              "], got ", w1.sizes());
  const int64_t reduced = w1.size(0);
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == channels && w2.size(1) == reduced,
              "se (CUDA): w2 must be [", channels, ", ", reduced, "], got ", w2.sizes());
  TORCH_CHECK(w2.scalar_type() == w1.scalar_type(), "se (CUDA): w2 has dtype ",
              w2.scalar_type(), " but w1 has ", w1.scalar_type());
  if (b1.has_value()) {
    TORCH_CHECK(b1->dim() == 1 && b1->size(0) == reduced, "se (CUDA): b1 must be [", reduced,
                "], got ", b1->sizes());
    TORCH_CHECK(b1->scalar_type() == w1.scalar_type(), "se (CUDA): b1 has dtype ",
                b1->scalar_type(), " but w1 has ", w1.scalar_type());
  }
  if (b2.has_value()) {
    TORCH_CHECK(b2->dim() == 1 && b2->size(0) == channels, "se (CUDA): b2 must be [", channels,
                "], got ", b2->sizes());
    TORCH_CHECK(b2->scalar_type() == w1.scalar_type(), "se (CUDA): b2 has dtype ",
                b2->scalar_type(), " but w1 has ", w1.scalar_type());
  }
}

// A compute-dtype [N, k] vector from the forward, as a dense tensor.
at::Tensor saved_vector(const at::Tensor& t, const char* name, int64_t n, int64_t k,
                        at::ScalarType acc, const at::Device& device) {
  check_cuda(t, name, device);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == k, "se (CUDA): ", name,
              " must be [", n, ", ", k, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == acc, "se (CUDA): ", name, " must have dtype ", acc, ", got ",
              t.scalar_type());
  return t.contiguous();
}

template <typename T>
const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// Per-channel sums over HW of term(i) into sums [N, C] (divided by `divisor`).
template <typename scalar_t, typename acc_t, int MODE>
void launch_channel_sums(const SumTerm<scalar_t, acc_t, MODE>& term, acc_t* sums, int64_t n,
                         int64_t channels, int64_t hw, bool channels_last, acc_t divisor,
                         cudaStream_t stream) {
  if (n == 0 || channels == 0) return;
  if (channels_last) {
    const int64_t channel_blocks = (channels + kNhwcChannels - 1) / kNhwcChannels;
    TORCH_CHECK(n <= std::numeric_limits<int32_t>::max() && channel_blocks <= 65535,
                "se (CUDA): too many samples or channels for one launch");
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(channel_blocks));
    channel_sum_nhwc_kernel<scalar_t, acc_t, MODE>
        <<<grid, dim3(kNhwcChannels, kNhwcSplit), 0, stream>>>(term, sums, channels, hw, divisor);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const int64_t rows = n * channels;
    if (hw >= kBlockPerRowMinHW) {
      TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(),
                  "se (CUDA): too many (n, c) rows for one launch");
      channel_sum_nchw_kernel<scalar_t, acc_t, MODE, kThreads>
          <<<static_cast<unsigned>(rows), dim3(kThreads, 1), 0, stream>>>(term, sums, rows, hw,
                                                                          divisor);
    } else {
      constexpr int rows_per_block = kThreads / kWarp;
      const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
      TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
                  "se (CUDA): too many (n, c) rows for one launch");
      channel_sum_nchw_kernel<scalar_t, acc_t, MODE, kWarp>
          <<<static_cast<unsigned>(blocks), dim3(kWarp, rows_per_block), 0, stream>>>(
              term, sums, rows, hw, divisor);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

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

}  // namespace

ForwardOutputs se_forward_cuda(const at::Tensor& x, const at::Tensor& w1,
                               const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                               const std::optional<at::Tensor>& b2,
                               const std::optional<at::Tensor>& residual,
                               c10::string_view activation, c10::string_view gate,
                               bool post_relu) {
  const int act = parse_activation(activation);
  const int gate_code = parse_gate(gate);
  TORCH_CHECK(x.is_cuda(), "se (CUDA): x must be a CUDA tensor, got one on ", x.device());
  const at::Device device = x.device();
  check_cuda(w1, "w1", device);
  check_cuda(w2, "w2", device);
  if (b1.has_value()) check_cuda(*b1, "b1", device);
  if (b2.has_value()) check_cuda(*b2, "b2", device);
  if (residual.has_value()) check_cuda(*residual, "residual", device);
  TORCH_CHECK(x.dim() == 4, "se (CUDA): x must be [N, C, H, W], got ", x.sizes());
  const int64_t n = x.size(0), channels = x.size(1), hw = x.size(2) * x.size(3);
  check_params(w1, b1, w2, b2, channels);
  const int64_t reduced = w1.size(0);
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == x.sizes(), "se (CUDA): residual must have x's shape ",
                x.sizes(), ", got ", residual->sizes());
    TORCH_CHECK(residual->scalar_type() == x.scalar_type(), "se (CUDA): residual has dtype ",
                residual->scalar_type(), " but x has ", x.scalar_type());
  }

  c10::cuda::CUDAGuard guard(device);
  const bool cl = is_channels_last(x);
  const at::Tensor xd = to_layout(x, cl);
  std::optional<at::Tensor> res;
  if (residual.has_value()) res = to_layout(*residual, cl);
  const at::Tensor w1c = w1.contiguous(), w2c = w2.contiguous();
  std::optional<at::Tensor> b1c, b2c;
  if (b1.has_value()) b1c = b1->contiguous();
  if (b2.has_value()) b2c = b2->contiguous();

  ForwardOutputs outputs = allocate_forward_outputs(x, w1);
  at::Tensor& out = std::get<0>(outputs);
  at::Tensor& pooled = std::get<1>(outputs);
  at::Tensor& hidden = std::get<2>(outputs);
  at::Tensor& scale = std::get<3>(outputs);
  TORCH_INTERNAL_ASSERT(out.is_contiguous(cl ? at::MemoryFormat::ChannelsLast
                                             : at::MemoryFormat::Contiguous));
  if (n == 0) return outputs;  // nothing to launch; all outputs are empty
  // Only a temporary: the backward recomputes act(hidden) from hidden.
  at::Tensor act_hidden = at::empty({n, reduced}, pooled.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_INTERNAL_ASSERT(pooled.scalar_type() == c10::CppTypeToScalarType<acc_t>::value);

    // (1) squeeze: pooled = mean over HW
    const SumTerm<scalar_t, acc_t, kSumX> term{xd.data_ptr<scalar_t>(), nullptr, nullptr};
    launch_channel_sums(term, pooled.data_ptr<acc_t>(), n, channels, hw, cl,
                        static_cast<acc_t>(hw), stream);

    // (2) excitation: hidden, scale, one block per sample
    dispatch_param_type<scalar_t>(w1.scalar_type(), [&](auto w_tag) {
      using w_t = typename decltype(w_tag)::type;
      excite_forward_kernel<acc_t, w_t><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
          pooled.data_ptr<acc_t>(), w1c.data_ptr<w_t>(), optional_ptr<w_t>(b1c),
          w2c.data_ptr<w_t>(), optional_ptr<w_t>(b2c), hidden.data_ptr<acc_t>(),
          act_hidden.data_ptr<acc_t>(), scale.data_ptr<acc_t>(), channels, reduced, act,
          gate_code);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });

    // (3) scale (+ residual) (+ ReLU)
    const scalar_t* x_ptr = xd.data_ptr<scalar_t>();
    const scalar_t* res_ptr = optional_ptr<scalar_t>(res);
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    const bool aligned =
        aligned16(x_ptr) && aligned16(out_ptr) && (res_ptr == nullptr || aligned16(res_ptr));
    launch_elementwise<scalar_t>(
        [&](auto index_tag) {
          using index_t = typename decltype(index_tag)::type;
          return ScaleForward<scalar_t, acc_t, index_t>{
              x_ptr, res_ptr, scale.data_ptr<acc_t>(), out_ptr, static_cast<index_t>(channels),
              static_cast<index_t>(hw), cl, post_relu};
        },
        xd.numel(), aligned, stream);
  });
  return outputs;
}

BackwardOutputs se_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                 const std::optional<at::Tensor>& out, const at::Tensor& w1,
                                 const at::Tensor& w2, const at::Tensor& pooled,
                                 const at::Tensor& hidden, const at::Tensor& scale,
                                 bool has_residual, c10::string_view activation,
                                 c10::string_view gate) {
  const int act = parse_activation(activation);
  const int gate_code = parse_gate(gate);
  TORCH_CHECK(x.is_cuda(), "se (CUDA): x must be a CUDA tensor, got one on ", x.device());
  const at::Device device = x.device();
  check_cuda(grad_out, "grad_out", device);
  if (out.has_value()) check_cuda(*out, "out", device);
  check_cuda(w1, "w1", device);
  check_cuda(w2, "w2", device);
  TORCH_CHECK(x.dim() == 4, "se (CUDA): x must be [N, C, H, W], got ", x.sizes());
  const int64_t n = x.size(0), channels = x.size(1), hw = x.size(2) * x.size(3);
  check_params(w1, std::nullopt, w2, std::nullopt, channels);
  const int64_t reduced = w1.size(0);
  TORCH_CHECK(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(),
              "se (CUDA): grad_out must match x (", x.sizes(), ", ", x.scalar_type(), "), got ",
              grad_out.sizes(), ", ", grad_out.scalar_type());
  if (out.has_value()) {
    TORCH_CHECK(out->sizes() == x.sizes() && out->scalar_type() == x.scalar_type(),
                "se (CUDA): out must match x (", x.sizes(), ", ", x.scalar_type(), "), got ",
                out->sizes(), ", ", out->scalar_type());
  }
  const bool post_relu = out.has_value();
  const at::ScalarType acc = compute_dtype(x.scalar_type());

  c10::cuda::CUDAGuard guard(device);
  const at::Tensor pooled_c = saved_vector(pooled, "pooled", n, channels, acc, device);
  const at::Tensor hidden_c = saved_vector(hidden, "hidden", n, reduced, acc, device);
  const at::Tensor scale_c = saved_vector(scale, "scale", n, channels, acc, device);
  const bool cl = is_channels_last(x);
  const at::Tensor xd = to_layout(x, cl);
  const at::Tensor gd = to_layout(grad_out, cl);
  std::optional<at::Tensor> od;
  if (out.has_value()) od = to_layout(*out, cl);
  const at::Tensor w1c = w1.contiguous(), w2c = w2.contiguous();

  BackwardOutputs grads = allocate_backward_outputs(x, w1, w2, post_relu, has_residual);
  at::Tensor& grad_x = std::get<0>(grads);
  at::Tensor& grad_res = std::get<5>(grads);
  const bool write_grad_res = post_relu && has_residual;
  TORCH_INTERNAL_ASSERT(grad_x.is_contiguous(cl ? at::MemoryFormat::ChannelsLast
                                                : at::MemoryFormat::Contiguous));

  const auto vec_options = x.options().dtype(acc);
  const at::Tensor gs = at::empty({n, channels}, vec_options);
  const at::Tensor gz = at::empty({n, channels}, vec_options);
  const at::Tensor gp = at::empty({n, channels}, vec_options);
  const at::Tensor gh = at::empty({n, reduced}, vec_options);
  const at::Tensor act_hidden = at::empty({n, reduced}, vec_options);

  if (n > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      TORCH_INTERNAL_ASSERT(acc == c10::CppTypeToScalarType<acc_t>::value);
      const scalar_t* x_ptr = xd.data_ptr<scalar_t>();
      const scalar_t* g_ptr = gd.data_ptr<scalar_t>();
      const scalar_t* out_ptr = od.has_value() ? od->data_ptr<scalar_t>() : nullptr;

      // (1) gs = sum_hw gy * x
      if (post_relu) {
        const SumTerm<scalar_t, acc_t, kSumMaskedGradX> term{x_ptr, g_ptr, out_ptr};
        launch_channel_sums(term, gs.data_ptr<acc_t>(), n, channels, hw, cl, acc_t(1), stream);
      } else {
        const SumTerm<scalar_t, acc_t, kSumGradX> term{x_ptr, g_ptr, nullptr};
        launch_channel_sums(term, gs.data_ptr<acc_t>(), n, channels, hw, cl, acc_t(1), stream);
      }

      // (2) excitation backward, one block per sample
      dispatch_param_type<scalar_t>(w1.scalar_type(), [&](auto w_tag) {
        using w_t = typename decltype(w_tag)::type;
        excite_backward_kernel<acc_t, w_t><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
            gs.data_ptr<acc_t>(), scale_c.data_ptr<acc_t>(), hidden_c.data_ptr<acc_t>(),
            w1c.data_ptr<w_t>(), w2c.data_ptr<w_t>(), gz.data_ptr<acc_t>(),
            act_hidden.data_ptr<acc_t>(), gh.data_ptr<acc_t>(), gp.data_ptr<acc_t>(), channels,
            reduced, static_cast<acc_t>(hw), act, gate_code);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });

      // (3) grad_x = gy * s + gp (+ grad_residual = gy)
      scalar_t* gx_ptr = grad_x.data_ptr<scalar_t>();
      scalar_t* gres_ptr = write_grad_res ? grad_res.data_ptr<scalar_t>() : nullptr;
      const bool aligned = aligned16(g_ptr) && aligned16(gx_ptr) &&
                           (out_ptr == nullptr || aligned16(out_ptr)) &&
                           (gres_ptr == nullptr || aligned16(gres_ptr));
      launch_elementwise<scalar_t>(
          [&](auto index_tag) {
            using index_t = typename decltype(index_tag)::type;
            return ScaleBackward<scalar_t, acc_t, index_t>{
                g_ptr, out_ptr, scale_c.data_ptr<acc_t>(), gp.data_ptr<acc_t>(), gx_ptr,
                gres_ptr, static_cast<index_t>(channels), static_cast<index_t>(hw), cl};
          },
          xd.numel(), aligned, stream);
    });
  }

  // Weight and bias gradients: small GEMMs over the batch (zeros for N == 0).
  write_weight_grads(gz, act_hidden, gh, pooled_c, grads);
  return grads;
}

}  // namespace senet_kernels

TORCH_LIBRARY_IMPL(senet_kernels, CUDA, m) {
  m.impl("se_forward_ext", &senet_kernels::se_forward_cuda);
  m.impl("se_backward_ext", &senet_kernels::se_backward_cuda);
}
