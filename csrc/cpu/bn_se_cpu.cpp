// CPU kernels of the fused BatchNorm + SE op, out = relu?(s * BN(y) + residual?): the plan of
// docs/design.md, "BatchNorm absorbed into the SE op", whose executable spec is
// senet_kernels/bn_reference.py (bn_squeeze_excite_two_pass and its backward).
//
// Forward: pass 1 reads y once for the per-(n, c) mean and M2 (tiles of kHwTile values merged
// with Chan's formula; the mean alone with running statistics), the channel statistics merge
// those rows in sample order, the excitation runs on the pooled means mapped affinely
// (the batched excitation of se_cpu.cpp), pass 2 reads y (and the residual) and writes out.
// Backward: pass 1 reads grad_out (and out, y) for G = sum gy and Q = sum gy (y - mean)
// (writing gy as grad_residual with the ReLU tail and a residual), the vector math on
// [N, C] runs in ATen ops, pass 2 writes grad_y = K1 gy + K2 (y - mean) + K3.
// NCHW: (n, c) rows in parallel. NHWC: blocks of channels of a sample in parallel for the
// reductions (their sums stay in L1), ranges of pixels for the streaming passes.
// Accumulation in float (double for double); half / bfloat16 are rounded once on store.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "../se.h"
#include "cpu_helpers.h"
#include "excitation_cpu.h"

namespace senet_kernels {

using BnForwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                    at::Tensor, at::Tensor, at::Tensor>;
using BnBackwardOutputs = BnForwardOutputs;

namespace {

using at::vec::Vectorized;
using namespace cpu;

constexpr const char* kBnOp = "senet_kernels bn_se op: ";
// Width of the statistics tiles along H*W (bn_reference.HW_TILE): exact two-pass sums
// within a tile, Chan's merge between tiles.
constexpr int64_t kHwTile = 1024;
// Elements handed to one thread at a time by the streaming passes.
constexpr int64_t kGrainElements = 32768;
// NHWC statistics: bytes of y per tile of pixels (kept in L2 for the tile's second read).
constexpr int64_t kTileBytes = 65536;

struct Shape {
  int64_t N, C, P;  // P = H * W
  bool channels_last;
};

// NHWC reductions: the channels of one work item, walked down a sample's pixels with their
// row sums in L1. Whole pixel rows when the samples keep every thread busy: the item then
// reads its slab front to back, which the hardware prefetchers follow (a block of a row
// starts a new stream at every pixel; measured on 2 cores, 512-channel blocks of 1024 made
// the channels_last backward 1.7x slower). Else blocks of channels, so that a few samples
// still spread over the threads.
int64_t channel_block(const Shape& s) {
  const int64_t threads = at::get_num_threads();
  const int64_t blocks = std::max<int64_t>(1, (2 * threads + s.N - 1) / s.N);
  return std::min(s.C, std::max<int64_t>(64, (s.C + blocks - 1) / blocks));
}

// The merged mean mean + delta * f_b (delta = mean_b - mean, f_b = count_b / total). Where one
// mean is infinite, delta is too and that is Inf - Inf = NaN: the weighted average instead
// keeps the infinite mean (and NaN for +Inf with -Inf), as F.batch_norm's sum / count does
// (bn_reference.chan_merge).
template <typename A>
inline A merged_mean(A mean, A mean_b, A delta, A f_b) {
  return std::isfinite(delta) ? mean + delta * f_b : mean * (A(1) - f_b) + mean_b * f_b;
}

// Chan et al.'s merge of (count, mean, M2) with another group's (bn_reference.chan_merge).
template <typename A>
void chan_merge(int64_t& count, A& mean, A& m2, int64_t count_b, A mean_b, A m2_b) {
  if (count == 0) {
    count = count_b, mean = mean_b, m2 = m2_b;
    return;
  }
  const int64_t total = count + count_b;
  const A delta = mean_b - mean;
  mean = merged_mean(mean, mean_b, delta, static_cast<A>(static_cast<double>(count_b) / total));
  m2 += m2_b + delta * delta * static_cast<A>(static_cast<double>(count) * count_b / total);
  count = total;
}

// ---- Forward pass 1: per-(n, c) mean and M2 ------------------------------------------------

// sum of x[0:len), or of (x - center)^2 with kSquares; four independent chains.
template <typename T, typename A, bool kSquares>
A run_sum(const T* x, int64_t len, A center) {
  using Vec = Vectorized<A>;
  using IO = VecIO<T, A>;
  constexpr int64_t V = Vec::size();
  const Vec vc(center);
  auto term = [&](int64_t i) {
    Vec v = IO::load(x + i);
    if constexpr (kSquares) {
      v = v - vc;
      return v * v;
    } else {
      return v;
    }
  };
  Vec acc0(A(0)), acc1(A(0)), acc2(A(0)), acc3(A(0));
  int64_t i = 0;
  for (; i + 4 * V <= len; i += 4 * V) {
    acc0 = acc0 + term(i);
    acc1 = acc1 + term(i + V);
    acc2 = acc2 + term(i + 2 * V);
    acc3 = acc3 + term(i + 3 * V);
  }
  for (; i + V <= len; i += V) acc0 = acc0 + term(i);
  A sum = vec_sum((acc0 + acc1) + (acc2 + acc3));
  for (; i < len; ++i) {
    A v = static_cast<A>(x[i]);
    if constexpr (kSquares) v = (v - center) * (v - center);
    sum += v;
  }
  return sum;
}

// One contiguous (n, c) row of P values (NCHW).
template <typename T, typename A, bool kM2>
void row_statistics(const T* row, int64_t P, A* mean_out, A* m2_out) {
  int64_t count = 0;
  A mean(0), m2(0);
  for (int64_t start = 0; start < P; start += kHwTile) {
    const int64_t len = std::min(kHwTile, P - start);
    const A tile_mean = run_sum<T, A, false>(row + start, len, A(0)) / A(len);
    const A tile_m2 = kM2 ? run_sum<T, A, true>(row + start, len, tile_mean) : A(0);
    chan_merge(count, mean, m2, len, tile_mean, tile_m2);
  }
  *mean_out = mean;
  if constexpr (kM2) *m2_out = m2;
}

// The channels [c0, c1) of one sample's [P, C] slab (NHWC): tiles of pixels, each summed
// into rows that stay in L1, then re-read for its M2 while still in cache.
template <typename T, typename A, bool kM2>
void block_statistics(const T* slab, int64_t C, int64_t P, int64_t c0, int64_t c1, A* mean_out,
                      A* m2_out) {
  using Vec = Vectorized<A>;
  using IO = VecIO<T, A>;
  constexpr int64_t V = Vec::size();
  const int64_t width = c1 - c0;
  const int64_t tile = std::clamp<int64_t>(kTileBytes / (width * int64_t(sizeof(T))), 1, kHwTile);
  std::vector<A> buffer(4 * width, A(0));
  A* tsum = buffer.data();
  A* tm2 = tsum + width;
  A* mean = tm2 + width;
  A* m2 = mean + width;
  int64_t count = 0;
  for (int64_t start = 0; start < P; start += tile) {
    const int64_t len = std::min(tile, P - start);
    std::fill(tsum, tsum + 2 * width, A(0));
    for (int64_t p = start; p < start + len; ++p) {
      const T* px = slab + p * C + c0;
      int64_t j = 0;
      for (; j + V <= width; j += V) (Vec::loadu(tsum + j) + IO::load(px + j)).store(tsum + j);
      for (; j < width; ++j) tsum[j] += static_cast<A>(px[j]);
    }
    for (int64_t j = 0; j < width; ++j) tsum[j] /= A(len);  // now the tile's means
    if constexpr (kM2) {
      for (int64_t p = start; p < start + len; ++p) {
        const T* px = slab + p * C + c0;
        int64_t j = 0;
        for (; j + V <= width; j += V) {
          const Vec d = IO::load(px + j) - Vec::loadu(tsum + j);
          at::vec::fmadd(d, d, Vec::loadu(tm2 + j)).store(tm2 + j);
        }
        for (; j < width; ++j) {
          const A d = static_cast<A>(px[j]) - tsum[j];
          tm2[j] += d * d;
        }
      }
    }
    // chan_merge of every channel with the tile's, its count factors shared (vectorizable)
    const int64_t total = count + len;
    const A f_mean = static_cast<A>(static_cast<double>(len) / total);
    const A f_m2 = static_cast<A>(static_cast<double>(count) * len / total);
    for (int64_t j = 0; j < width; ++j) {
      const A delta = tsum[j] - mean[j];
      mean[j] = merged_mean(mean[j], tsum[j], delta, f_mean);
      m2[j] += tm2[j] + delta * delta * f_m2;
    }
    count = total;
  }
  std::copy(mean, mean + width, mean_out + c0);
  if constexpr (kM2) std::copy(m2, m2 + width, m2_out + c0);
}

// sample_mean [N, C] (and m2 [N, C] with kM2) of y.
template <typename T, typename A, bool kM2>
void sample_statistics(const T* y, const Shape& s, A* sample_mean, A* m2) {
  if (!s.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / s.P);
    at::parallel_for(0, s.N * s.C, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        row_statistics<T, A, kM2>(y + r * s.P, s.P, sample_mean + r, kM2 ? m2 + r : nullptr);
      }
    });
    return;
  }
  const int64_t width = channel_block(s), blocks = (s.C + width - 1) / width;
  at::parallel_for(0, s.N * blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t item = b; item < e; ++item) {
      const int64_t n = item / blocks, c0 = (item % blocks) * width;
      const int64_t c1 = std::min(s.C, c0 + width);
      block_statistics<T, A, kM2>(y + n * s.C * s.P, s.C, s.P, c0, c1, sample_mean + n * s.C,
                                  kM2 ? m2 + n * s.C : nullptr);
    }
  });
}

// ---- Backward pass 1: G = sum gy, Q = sum gy (y - mean) per (n, c) -------------------------
//
// gy = g, masked by out (ReLU tail) when kMask, written to gy_out when kWriteGy.

template <typename T, typename A, bool kMask, bool kWriteGy>
struct GradTerm {
  const T* g; const T* out; const T* y; T* gy_out;
  using IO = VecIO<T, A>;
  using Vec = Vectorized<A>;
  // Returns gy; d = y - mean.
  Vec vec(int64_t i, const Vec& mean, Vec& d) const {
    Vec gv = IO::load(g + i);
    if constexpr (kMask) gv = relu_mask(gv, IO::load(out + i));
    if constexpr (kWriteGy) IO::store(gy_out + i, gv);
    d = IO::load(y + i) - mean;
    return gv;
  }
  A scalar(int64_t i, A mean, A& d) const {
    A gv = static_cast<A>(g[i]);
    if constexpr (kMask) gv = relu_mask(gv, static_cast<A>(out[i]));
    if constexpr (kWriteGy) gy_out[i] = static_cast<T>(gv);
    d = static_cast<A>(y[i]) - mean;
    return gv;
  }
};

// (Each thread copies `term_in` / `op_in`: a local the stores cannot alias keeps its pointers
// in registers.)
template <typename A, typename Term>
void grad_sums(const Term& term_in, const Shape& s, const A* mean, A* G, A* Q) {
  using Vec = Vectorized<A>;
  constexpr int64_t V = Vec::size();
  if (!s.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / s.P);
    at::parallel_for(0, s.N * s.C, grain, [&](int64_t b, int64_t e) {
      const Term term = term_in;
      for (int64_t r = b; r < e; ++r) {
        const int64_t base = r * s.P, c = r % s.C;
        const Vec vm(mean[c]);
        Vec g0(A(0)), g1(A(0)), q0(A(0)), q1(A(0));
        int64_t i = 0;
        for (; i + 2 * V <= s.P; i += 2 * V) {
          Vec d0, d1;
          const Vec gy0 = term.vec(base + i, vm, d0);
          const Vec gy1 = term.vec(base + i + V, vm, d1);
          g0 = g0 + gy0;
          g1 = g1 + gy1;
          q0 = at::vec::fmadd(gy0, d0, q0);
          q1 = at::vec::fmadd(gy1, d1, q1);
        }
        for (; i + V <= s.P; i += V) {
          Vec d;
          const Vec gy = term.vec(base + i, vm, d);
          g0 = g0 + gy;
          q0 = at::vec::fmadd(gy, d, q0);
        }
        A gsum = vec_sum(g0 + g1), qsum = vec_sum(q0 + q1);
        for (; i < s.P; ++i) {
          A d;
          const A gy = term.scalar(base + i, mean[c], d);
          gsum += gy;
          qsum += gy * d;
        }
        G[r] = gsum;
        Q[r] = qsum;
      }
    });
    return;
  }
  const int64_t block = channel_block(s), blocks = (s.C + block - 1) / block;
  at::parallel_for(0, s.N * blocks, 1, [&](int64_t b, int64_t e) {
    const Term term = term_in;
    std::vector<A> rows(2 * block);
    for (int64_t item = b; item < e; ++item) {
      const int64_t n = item / blocks, c0 = (item % blocks) * block;
      const int64_t c1 = std::min(s.C, c0 + block), width = c1 - c0;
      A* gacc = rows.data();
      A* qacc = gacc + width;
      std::fill(gacc, gacc + 2 * width, A(0));
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t base = (n * s.P + p) * s.C + c0;
        int64_t j = 0;
        for (; j + V <= width; j += V) {
          Vec d;
          const Vec gy = term.vec(base + j, Vec::loadu(mean + c0 + j), d);
          (Vec::loadu(gacc + j) + gy).store(gacc + j);
          at::vec::fmadd(gy, d, Vec::loadu(qacc + j)).store(qacc + j);
        }
        for (; j < width; ++j) {
          A d;
          const A gy = term.scalar(base + j, mean[c0 + j], d);
          gacc[j] += gy;
          qacc[j] += gy * d;
        }
      }
      std::copy(gacc, gacc + width, G + n * s.C + c0);
      std::copy(qacc, qacc + width, Q + n * s.C + c0);
    }
  });
}

// ---- Streaming passes ----------------------------------------------------------------------
//
// dst = f(element; per-(n, c) coefficients, per-channel vectors). NCHW: (n, c) rows in
// parallel, the coefficients broadcast; NHWC: ranges of pixels, the coefficients contiguous.

template <typename A>
Vectorized<A> at_channel(const A* f, int64_t k, bool contiguous) {
  return contiguous ? Vectorized<A>::loadu(f + k) : Vectorized<A>(f[k]);
}

template <typename A, typename Op>
void streaming_pass(const Shape& s, const Op& op_in) {
  constexpr int64_t V = Vectorized<A>::size();
  if (!s.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kGrainElements / s.P);
    at::parallel_for(0, s.N * s.C, grain, [&](int64_t b, int64_t e) {
      const Op op = op_in;
      for (int64_t r = b; r < e; ++r) {
        const int64_t base = r * s.P, c = r % s.C;
        int64_t i = 0;
        for (; i + V <= s.P; i += V) op.vec(base + i, r, c, false);
        for (; i < s.P; ++i) op.scalar(base + i, r, c);
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kGrainElements / s.C);
  at::parallel_for(0, s.N * s.P, grain, [&](int64_t b, int64_t e) {
    const Op op = op_in;
    for (int64_t q = b; q < e; ++q) {
      const int64_t base = q * s.C, nc = (q / s.P) * s.C;
      int64_t c = 0;
      for (; c + V <= s.C; c += V) op.vec(base + c, nc + c, c, true);
      for (; c < s.C; ++c) op.scalar(base + c, nc + c, c);
    }
  });
}

template <typename T, typename A, bool kResidual, bool kRelu>
struct NormalizeScale {  // out = relu?(coef (y - mean) + shift + res?)
  const T* y; const T* res; const A* coef; const A* shift; const A* mean; T* out;
  void vec(int64_t i, int64_t nc, int64_t c, bool cc) const {
    using IO = VecIO<T, A>;
    auto v = at::vec::fmadd(at_channel(coef, nc, cc), IO::load(y + i) - at_channel(mean, c, cc),
                            at_channel(shift, nc, cc));
    if constexpr (kResidual) v = v + IO::load(res + i);
    if constexpr (kRelu) v = at::vec::maximum(v, Vectorized<A>(A(0)));  // NaN stays NaN
    IO::store(out + i, v);
  }
  void scalar(int64_t i, int64_t nc, int64_t c) const {
    A v = coef[nc] * (static_cast<A>(y[i]) - mean[c]) + shift[nc];
    if constexpr (kResidual) v += static_cast<A>(res[i]);
    if constexpr (kRelu) v = v < A(0) ? A(0) : v;  // NaN stays NaN, as in torch.relu
    out[i] = static_cast<T>(v);
  }
};

// grad_y = k1 gy + k2 (y - mean) + k3; gy = g masked by out when kMask; kCentered false (running
// statistics): no k2 term, y is not read.
template <typename T, typename A, bool kMask, bool kCentered>
struct InputGrad {
  const T* g; const T* out; const T* y; const A* k1; const A* k2; const A* k3; const A* mean;
  T* grad_y;
  void vec(int64_t i, int64_t nc, int64_t c, bool cc) const {
    using IO = VecIO<T, A>;
    auto gy = IO::load(g + i);
    if constexpr (kMask) gy = relu_mask(gy, IO::load(out + i));
    auto v = at::vec::fmadd(at_channel(k1, nc, cc), gy, at_channel(k3, nc, cc));
    if constexpr (kCentered) {
      v = at::vec::fmadd(at_channel(k2, c, cc), IO::load(y + i) - at_channel(mean, c, cc), v);
    }
    IO::store(grad_y + i, v);
  }
  void scalar(int64_t i, int64_t nc, int64_t c) const {
    A gy = static_cast<A>(g[i]);
    if constexpr (kMask) gy = relu_mask(gy, static_cast<A>(out[i]));
    A v = k1[nc] * gy + k3[nc];
    if constexpr (kCentered) v += k2[c] * (static_cast<A>(y[i]) - mean[c]);
    grad_y[i] = static_cast<T>(v);
  }
};

// ---- Checks --------------------------------------------------------------------------------

// A BatchNorm vector: [C], float16/bfloat16/float32/float64 of y's dtype or float32, on y's
// device.
void check_bn_vector(const std::optional<at::Tensor>& v, const char* name, const at::Tensor& y) {
  if (!v.has_value()) return;
  TORCH_CHECK(v->device() == y.device(), kBnOp, name, " is on ", v->device(), " but y is on ",
              y.device());
  TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == y.size(1), kBnOp, name, " must be [",
                    y.size(1), "], got shape ", v->sizes());
  TORCH_CHECK_TYPE(v->scalar_type() == y.scalar_type() || v->scalar_type() == at::kFloat, kBnOp,
                   name, " has dtype ", v->scalar_type(), " but y has ", y.scalar_type(),
                   ": it must be y's dtype or float32");
}

void check_acc_vector(const at::Tensor& v, const char* name, at::IntArrayRef shape,
                      const at::Tensor& y) {
  TORCH_CHECK(v.device() == y.device(), kBnOp, name, " is on ", v.device(), " but y is on ",
              y.device());
  TORCH_CHECK_VALUE(v.sizes() == shape, kBnOp, name, " must have shape ", shape, ", got ",
                    v.sizes());
  const auto acc = compute_dtype(y.scalar_type());
  TORCH_CHECK_TYPE(v.scalar_type() == acc, kBnOp, name, " must have dtype ", acc, ", got ",
                   v.scalar_type());
}

at::Tensor acc_vector(const std::optional<at::Tensor>& v, at::ScalarType acc, int64_t c,
                      double fill, const at::Tensor& like) {
  if (!v.has_value()) return at::full({c}, fill, like.options().dtype(acc));
  return v->to(acc).contiguous();
}

}  // namespace

BnForwardOutputs bn_se_forward_cpu(const at::Tensor& y_in,
                                   const std::optional<at::Tensor>& bn_weight,
                                   const std::optional<at::Tensor>& bn_bias,
                                   const std::optional<at::Tensor>& running_mean,
                                   const std::optional<at::Tensor>& running_var,
                                   const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                                   const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                                   const std::optional<at::Tensor>& residual_in,
                                   bool batch_stats, double eps, c10::string_view activation,
                                   c10::string_view gate_name, bool post_relu) {
  const Activation act = parse_activation(activation);
  const Gate gate = parse_gate(gate_name);
  check_forward_args(y_in, w1, b1, w2, b2, residual_in, at::kCPU);
  check_bn_vector(bn_weight, "bn_weight", y_in);
  check_bn_vector(bn_bias, "bn_bias", y_in);
  check_bn_vector(running_mean, "running_mean", y_in);
  check_bn_vector(running_var, "running_var", y_in);
  TORCH_CHECK_VALUE(running_mean.has_value() == running_var.has_value(), kBnOp,
                    "running_mean and running_var must both be given or both be absent");
  TORCH_CHECK_VALUE(batch_stats || running_mean.has_value(), kBnOp,
                    "normalizing with running statistics needs running_mean and running_var");
  const int64_t N = y_in.size(0), C = y_in.size(1), P = y_in.size(2) * y_in.size(3);
  TORCH_CHECK_VALUE(N >= 1, kBnOp, "y must have N >= 1, got shape ", y_in.sizes());
  TORCH_CHECK_VALUE(!batch_stats || N * P > 1, kBnOp,
                    "Expected more than 1 value per channel when training, got input size ",
                    y_in.sizes());
  TORCH_CHECK_VALUE(batch_stats ? eps > 0 : eps >= 0, kBnOp, "eps must be ",
                    batch_stats ? "positive with batch statistics" : "non-negative", ", got ", eps);

  const bool cl = is_channels_last(y_in);
  const at::Tensor y = to_layout(y_in, cl);
  std::optional<at::Tensor> residual;
  if (residual_in.has_value()) residual = to_layout(*residual_in, cl);
  const auto acc = compute_dtype(y.scalar_type());
  const auto vec_opts = y.options().dtype(acc);
  const int64_t Cr = w1.size(0);
  BnForwardOutputs outputs{
      at::empty_like(y_in, cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous),
      at::empty({N, C}, vec_opts), at::empty({N, C}, vec_opts), at::empty({N, Cr}, vec_opts),
      at::empty({N, C}, vec_opts), at::empty({C}, vec_opts), at::empty({C}, vec_opts),
      at::empty({C}, vec_opts)};
  auto& [out, sample_mean, pooled, hidden, scale, mean, rstd, var] = outputs;
  const Shape shape{N, C, P, cl};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_se_forward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* yp = y.data_ptr<scalar_t>();
    A* smp = sample_mean.data_ptr<A>();
    if (batch_stats) {
      at::Tensor m2 = at::empty({N, C}, vec_opts);
      sample_statistics<scalar_t, A, true>(yp, shape, smp, m2.data_ptr<A>());
      // The channel statistics: the rows merged in sample order, whoever computed them.
      const A* m2p = m2.data_ptr<A>();
      A* mp = mean.data_ptr<A>();
      A* vp = var.data_ptr<A>();
      for (int64_t c = 0; c < C; ++c) {
        int64_t count = 0;
        A m(0), s2(0);
        for (int64_t n = 0; n < N; ++n) chan_merge(count, m, s2, P, smp[n * C + c], m2p[n * C + c]);
        mp[c] = m;
        vp[c] = s2 / static_cast<A>(N * P);
      }
    } else {
      sample_statistics<scalar_t, A, false>(yp, shape, smp, nullptr);
      mean.copy_(*running_mean);
      var.copy_(*running_var);
    }
  });
  at::rsqrt_out(rstd, var + eps);
  const at::Tensor gamma = acc_vector(bn_weight, acc, C, 1.0, y);
  const at::Tensor beta = acc_vector(bn_bias, acc, C, 0.0, y);
  const at::Tensor a = gamma * rstd;
  // pooled = mean_hw BN(y), the squeeze, from the per-(n, c) means.
  at::mul_out(pooled, sample_mean - mean, a).add_(beta);
  const at::Tensor w1a = w1.to(acc).contiguous(), w2a = w2.to(acc).contiguous();
  std::optional<at::Tensor> b1a, b2a;
  if (b1.has_value()) b1a = b1->to(acc).contiguous();
  if (b2.has_value()) b2a = b2->to(acc).contiguous();
  at::Tensor act_hidden = at::empty_like(hidden);
  excite_batch_cpu(pooled, w1a, b1a, w2a, b2a, act, gate, hidden, act_hidden, scale);
  const at::Tensor coef = scale * a, shift = scale * beta;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_se_forward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* rp = data_or_null_t<scalar_t>(residual);
    with_flag(rp != nullptr, [&](auto has_res) {
      with_flag(post_relu, [&](auto relu) {
        streaming_pass<A>(shape, NormalizeScale<scalar_t, A, has_res.value, relu.value>{
                                     y.data_ptr<scalar_t>(), rp, coef.data_ptr<A>(),
                                     shift.data_ptr<A>(), mean.data_ptr<A>(),
                                     out.data_ptr<scalar_t>()});
      });
    });
  });
  return outputs;
}

BnBackwardOutputs bn_se_backward_cpu(const at::Tensor& grad_in, const at::Tensor& y_in,
                                     const std::optional<at::Tensor>& out_in,
                                     const std::optional<at::Tensor>& bn_weight,
                                     const std::optional<at::Tensor>& bn_bias,
                                     const at::Tensor& w1, const at::Tensor& w2,
                                     const at::Tensor& sample_mean, const at::Tensor& pooled,
                                     const at::Tensor& hidden, const at::Tensor& scale,
                                     const at::Tensor& mean, const at::Tensor& rstd,
                                     bool batch_stats, bool has_residual,
                                     c10::string_view activation, c10::string_view gate_name) {
  const Activation act = parse_activation(activation);
  const Gate gate = parse_gate(gate_name);
  check_backward_args(grad_in, y_in, out_in, w1, w2, pooled, hidden, scale, at::kCPU);
  check_bn_vector(bn_weight, "bn_weight", y_in);
  check_bn_vector(bn_bias, "bn_bias", y_in);
  const int64_t N = y_in.size(0), C = y_in.size(1), P = y_in.size(2) * y_in.size(3);
  const int64_t Cr = w1.size(0);
  check_acc_vector(sample_mean, "sample_mean", {N, C}, y_in);
  check_acc_vector(mean, "mean", {C}, y_in);
  check_acc_vector(rstd, "rstd", {C}, y_in);
  TORCH_CHECK_VALUE(N >= 1, kBnOp, "y must have N >= 1, got shape ", y_in.sizes());

  const bool post_relu = out_in.has_value();
  const bool write_gy = post_relu && has_residual;
  const bool cl = is_channels_last(y_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor y = to_layout(y_in, cl), g = to_layout(grad_in, cl);
  std::optional<at::Tensor> out;
  if (post_relu) out = to_layout(*out_in, cl);
  const auto acc = compute_dtype(y.scalar_type());
  const auto vec_opts = y.options().dtype(acc);
  const auto bn_opts = bn_weight.has_value() ? bn_weight->options() : vec_opts;
  const auto bias_opts = bn_bias.has_value() ? bn_bias->options() : vec_opts;
  BnBackwardOutputs grads{at::empty_like(y_in, fmt),
                          at::empty({C}, bn_opts),
                          at::empty({C}, bias_opts),
                          at::empty_like(w1, at::MemoryFormat::Contiguous),
                          at::empty({Cr}, w1.options()),
                          at::empty_like(w2, at::MemoryFormat::Contiguous),
                          at::empty({C}, w2.options()),
                          write_gy ? at::empty_like(y_in, fmt) : at::empty({0}, y.options())};
  auto& [grad_y, grad_gamma_out, grad_beta_out, grad_w1, grad_b1, grad_w2, grad_b2, grad_res] = grads;
  const Shape shape{N, C, P, cl};
  const at::Tensor mean_c = mean.contiguous();
  at::Tensor G = at::empty({N, C}, vec_opts), Q = at::empty({N, C}, vec_opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_se_backward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* op = data_or_null_t<scalar_t>(out);
    scalar_t* grp = write_gy ? grad_res.data_ptr<scalar_t>() : nullptr;
    with_flag(post_relu, [&](auto mask) {
      with_flag(write_gy, [&](auto write) {
        grad_sums<A>(GradTerm<scalar_t, A, mask.value, write.value>{g.data_ptr<scalar_t>(), op,
                                                                     y.data_ptr<scalar_t>(), grp},
                     shape, mean_c.data_ptr<A>(), G.data_ptr<A>(), Q.data_ptr<A>());
      });
    });
  });

  // The SE backward on [N, C] vectors; x = a (y - mean) + beta is the SE op's input.
  const at::Tensor gamma = acc_vector(bn_weight, acc, C, 1.0, y);
  const at::Tensor beta = acc_vector(bn_bias, acc, C, 0.0, y);
  const at::Tensor a = gamma * rstd;
  const at::Tensor s = scale.contiguous();
  const at::Tensor gs = (a * Q + beta * G).contiguous();
  at::Tensor gz = at::empty({N, C}, vec_opts), gh = at::empty({N, Cr}, vec_opts);
  at::Tensor act_hidden = at::empty({N, Cr}, vec_opts), gp = at::empty({N, C}, vec_opts);
  excite_backward_batch_cpu(gs, s, hidden.contiguous(), w1.to(acc).contiguous(),
                            w2.to(acc).contiguous(), P, act, gate, gz, act_hidden, gh, gp);
  BackwardOutputs weight_grads{grad_y, grad_w1, grad_b1, grad_w2, grad_b2, grad_res};
  write_weight_grads(gz, act_hidden, gh, pooled, weight_grads);

  // BN's sums: S1 = sum_hw dx = s G + P gp, S2 = sum_hw dx xhat = rstd (s Q + P gp (m - mean)).
  const at::Tensor p_gp = gp * static_cast<double>(P);
  const at::Tensor grad_beta = (s * G + p_gp).sum(0);
  const at::Tensor grad_gamma = (rstd * (s * Q + p_gp * (sample_mean - mean))).sum(0);
  grad_gamma_out.copy_(grad_gamma);
  grad_beta_out.copy_(grad_beta);

  // grad_y = k1 gy + k2 (y - mean) + k3 (batch statistics); k1 gy + a gp (running ones).
  const at::Tensor k1 = (a * s).contiguous();
  const double count = static_cast<double>(N * P);
  const at::Tensor k2 = batch_stats ? (-a * rstd * grad_gamma / count).contiguous() : a;
  const at::Tensor k3 =
      (batch_stats ? a * (gp - grad_beta / count) : a * gp).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_se_backward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    // With the gradient past the ReLU tail already written (grad_residual), read it unmasked.
    const scalar_t* gsrc = write_gy ? grad_res.data_ptr<scalar_t>() : g.data_ptr<scalar_t>();
    const scalar_t* op = write_gy ? nullptr : data_or_null_t<scalar_t>(out);
    with_flag(op != nullptr, [&](auto mask) {
      with_flag(batch_stats, [&](auto centered) {
        streaming_pass<A>(shape, InputGrad<scalar_t, A, mask.value, centered.value>{
                                     gsrc, op, y.data_ptr<scalar_t>(), k1.data_ptr<A>(),
                                     k2.data_ptr<A>(), k3.data_ptr<A>(), mean_c.data_ptr<A>(),
                                     grad_y.data_ptr<scalar_t>()});
      });
    });
  });
  return grads;
}

}  // namespace senet_kernels

TORCH_LIBRARY_IMPL(senet_kernels, CPU, m) {
  m.impl("bn_se_forward_ext", &senet_kernels::bn_se_forward_cpu);
  m.impl("bn_se_backward_ext", &senet_kernels::bn_se_backward_cpu);
}
