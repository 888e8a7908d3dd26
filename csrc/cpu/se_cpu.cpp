// CPU kernels of the SE op, designed for the cache rather than translated from the GPU.
//
// Work is done one sample at a time: pool the sample's [C, H*W] slab, run the excitation for
// it (two small GEMVs; one for the single-FC form, w2 absent), then rescale the slab while it
// is still in L2/L3. Samples are spread
// over the threads; with fewer samples than threads, each sample's passes are split over
// channels (NCHW) or pixels (NHWC) instead. The backward does the same: one pass for the
// per-channel gradient sums, the excitation backward, one pass writing grad_x. Weight
// gradients are GEMMs over the batch (write_weight_grads). Accumulation is in float (double
// for double); half / bfloat16 are converted on load and rounded once on store.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../se.h"
#include "../se_math.h"
#include "cpu_helpers.h"
#include "excitation_cpu.h"

namespace senet_kernels {
namespace {

using at::vec::Vectorized;
using namespace cpu;

// Elements of a pass handed to one thread at a time when a sample's passes are split.
constexpr int64_t kGrainElements = 32768;

// Four independent accumulators: one FMA chain would be latency-bound.
template <typename A>
A dot(const A* a, const A* b, int64_t n) {
  using Vec = Vectorized<A>;
  constexpr int64_t V = Vec::size();
  Vec acc0(A(0)), acc1(A(0)), acc2(A(0)), acc3(A(0));
  int64_t i = 0;
  for (; i + 4 * V <= n; i += 4 * V) {
    acc0 = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc0);
    acc1 = at::vec::fmadd(Vec::loadu(a + i + V), Vec::loadu(b + i + V), acc1);
    acc2 = at::vec::fmadd(Vec::loadu(a + i + 2 * V), Vec::loadu(b + i + 2 * V), acc2);
    acc3 = at::vec::fmadd(Vec::loadu(a + i + 3 * V), Vec::loadu(b + i + 3 * V), acc3);
  }
  for (; i + V <= n; i += V) acc0 = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc0);
  A sum = vec_sum((acc0 + acc1) + (acc2 + acc3));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y[0:n] += alpha * x[0:n]
template <typename A>
void axpy(A alpha, const A* x, A* y, int64_t n) {
  using Vec = Vectorized<A>;
  const Vec va(alpha);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    at::vec::fmadd(va, Vec::loadu(x + i), Vec::loadu(y + i)).store(y + i);
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// One sample's view of the tensors: [C, HW] (NCHW) or [HW, C] (NHWC) slabs.
struct Geometry {
  int64_t C, HW;
  bool channels_last;
  int64_t numel() const { return C * HW; }
};

// ---- Per-channel sums over H*W: sum x (squeeze) or sum gy * x (backward) -------------------
//
// kGrad false: sums x. kGrad true: sums gy * x with gy = g, masked by out > 0 when kMask,
// and written to gy_out when kWriteGy (grad_residual). Template flags keep the loops tight.

template <typename T, typename A, bool kGrad, bool kMask, bool kWriteGy>
struct SumTerm {
  const T* x; const T* g; const T* out; T* gy_out;
  using IO = VecIO<T, A>;
  using Vec = Vectorized<A>;
  Vec vec(int64_t i) const {
    Vec v = IO::load(x + i);
    if constexpr (!kGrad) {
      return v;
    } else {
      Vec gv = IO::load(g + i);
      if constexpr (kMask) gv = relu_mask(gv, IO::load(out + i));
      if constexpr (kWriteGy) IO::store(gy_out + i, gv);
      return gv * v;
    }
  }
  A scalar(int64_t i) const {
    A v = static_cast<A>(x[i]);
    if constexpr (!kGrad) {
      return v;
    } else {
      A gv = static_cast<A>(g[i]);
      if constexpr (kMask) gv = relu_mask(gv, static_cast<A>(out[i]));
      if constexpr (kWriteGy) gy_out[i] = static_cast<T>(gv);
      return gv * v;
    }
  }
};

template <typename A, typename Term>
void channel_sums(const Term& term, const Geometry& geo, int64_t c0, int64_t c1, A* sums) {
  using Vec = Vectorized<A>;
  constexpr int64_t V = Vec::size();
  if (!geo.channels_last) {
    // NCHW: each channel is a contiguous run of HW elements; four independent chains.
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t base = c * geo.HW;
      Vec acc0(A(0)), acc1(A(0)), acc2(A(0)), acc3(A(0));
      int64_t i = 0;
      for (; i + 4 * V <= geo.HW; i += 4 * V) {
        acc0 = acc0 + term.vec(base + i);
        acc1 = acc1 + term.vec(base + i + V);
        acc2 = acc2 + term.vec(base + i + 2 * V);
        acc3 = acc3 + term.vec(base + i + 3 * V);
      }
      for (; i + V <= geo.HW; i += V) acc0 = acc0 + term.vec(base + i);
      A sum = vec_sum((acc0 + acc1) + (acc2 + acc3));
      for (; i < geo.HW; ++i) sum += term.scalar(base + i);
      sums[c] = sum;
    }
    return;
  }
  // NHWC: a pixel is a contiguous row of C. Walk down the rows once, adding each row's
  // channels [c0, c1) into a row of sums that stays in L1 (one pass over the slab; blocks of
  // channels walked one after another would re-read it from a farther cache each time).
  const int64_t width = c1 - c0;
  if (width > 4 * V) {
    std::vector<A> row_sums(width, A(0));
    A* acc = row_sums.data();
    for (int64_t p = 0; p < geo.HW; ++p) {
      const int64_t base = p * geo.C + c0;
      int64_t j = 0;
      for (; j + V <= width; j += V) (Vec::loadu(acc + j) + term.vec(base + j)).store(acc + j);
      for (; j < width; ++j) acc[j] += term.scalar(base + j);
    }
    std::copy(acc, acc + width, sums + c0);
    return;
  }
  // Few channels: keep them in registers.
  int64_t c = c0;
  for (; c + 4 * V <= c1; c += 4 * V) {
    Vec acc[4] = {Vec(A(0)), Vec(A(0)), Vec(A(0)), Vec(A(0))};
    for (int64_t p = 0; p < geo.HW; ++p) {
      const int64_t base = p * geo.C + c;
      for (int k = 0; k < 4; ++k) acc[k] = acc[k] + term.vec(base + k * V);
    }
    for (int k = 0; k < 4; ++k) acc[k].store(sums + c + k * V);
  }
  for (; c + V <= c1; c += V) {
    Vec acc(A(0));
    for (int64_t p = 0; p < geo.HW; ++p) acc = acc + term.vec(p * geo.C + c);
    acc.store(sums + c);
  }
  for (; c < c1; ++c) {
    A sum = A(0);
    for (int64_t p = 0; p < geo.HW; ++p) sum += term.scalar(p * geo.C + c);
    sums[c] = sum;
  }
}

// ---- Streaming passes: out = relu?(x * s + res?), grad_x = gy * s + gp ---------------------
//
// Both have the form  dst = f(element) with per-channel factors, over the channels [c0, c1)
// of one sample (in both layouts, so that a thread rescales the channels it pooled, which are
// still in its cache); `Op` supplies the per-element part.

template <typename T, typename A, typename Op>
void channel_affine_pass(const Geometry& geo, int64_t c0, int64_t c1, const Op& op) {
  constexpr int64_t V = VecIO<T, A>::kSize;
  if (!geo.channels_last) {
    // NCHW: a channel is a contiguous run; its factor is one broadcast vector.
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t base = c * geo.HW;
      int64_t i = 0;
      for (; i + V <= geo.HW; i += V) op.vec(base + i, c, /*channels_contiguous=*/false);
      for (; i < geo.HW; ++i) op.scalar(base + i, c);
    }
    return;
  }
  // NHWC: the channels [c0, c1) of every pixel; the factors are contiguous values.
  for (int64_t p = 0; p < geo.HW; ++p) {
    const int64_t base = p * geo.C;
    int64_t c = c0;
    for (; c + V <= c1; c += V) op.vec(base + c, c, /*channels_contiguous=*/true);
    for (; c < c1; ++c) op.scalar(base + c, c);
  }
}

template <typename A>
Vectorized<A> factor_at(const A* f, int64_t c, bool channels_contiguous) {
  return channels_contiguous ? Vectorized<A>::loadu(f + c) : Vectorized<A>(f[c]);
}

template <typename T, typename A, bool kResidual, bool kRelu>
struct ScaleForward {  // out = relu?(x * s + res?)
  const T* x; const T* res; const A* s; T* out;
  void vec(int64_t i, int64_t c, bool cc) const {
    using IO = VecIO<T, A>;
    auto y = IO::load(x + i) * factor_at(s, c, cc);
    if constexpr (kResidual) y = y + IO::load(res + i);
    if constexpr (kRelu) y = at::vec::maximum(y, Vectorized<A>(A(0)));
    IO::store(out + i, y);
  }
  void scalar(int64_t i, int64_t c) const {
    A y = static_cast<A>(x[i]) * s[c];
    if constexpr (kResidual) y += static_cast<A>(res[i]);
    if constexpr (kRelu) y = y < A(0) ? A(0) : y;  // NaN stays NaN, as in torch.relu
    out[i] = static_cast<T>(y);
  }
};

template <typename T, typename A, bool kMask>
struct ScaleBackward {  // grad_x = gy * s + gp, gy = g masked by out > 0 for the ReLU tail
  const T* g; const T* out; const A* s; const A* gp; T* grad_x;
  void vec(int64_t i, int64_t c, bool cc) const {
    using IO = VecIO<T, A>;
    auto gy = IO::load(g + i);
    if constexpr (kMask) gy = relu_mask(gy, IO::load(out + i));
    IO::store(grad_x + i, at::vec::fmadd(gy, factor_at(s, c, cc), factor_at(gp, c, cc)));
  }
  void scalar(int64_t i, int64_t c) const {
    A gy = static_cast<A>(g[i]);
    if constexpr (kMask) gy = relu_mask(gy, static_cast<A>(out[i]));
    grad_x[i] = static_cast<T>(gy * s[c] + gp[c]);
  }
};

// ---- Splitting the work over threads ------------------------------------------------------

// Runs fn(c0, c1) over channel ranges of one sample: in parallel when called outside a
// parallel region (samples one after another), inline when the samples are in parallel. The
// partition depends only on C and H*W, so every pass of a sample gives a thread the same
// channels.
template <typename F>
void split_channels(const Geometry& geo, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, geo.HW));
  at::parallel_for(0, geo.C, grain, fn);
}

// Per-channel sums of one sample.
template <typename A, typename Term>
void sample_channel_sums(const Term& term, const Geometry& geo, A* sums) {
  split_channels(geo, [&](int64_t c0, int64_t c1) { channel_sums<A>(term, geo, c0, c1, sums); });
}

// A streaming pass over one sample.
template <typename T, typename A, typename Op>
void sample_pass(const Geometry& geo, const Op& op) {
  split_channels(geo, [&](int64_t c0, int64_t c1) { channel_affine_pass<T, A>(geo, c0, c1, op); });
}

// ---- Excitation of one sample -------------------------------------------------------------

// w2 null: the single-FC form (Cr == C), scale = gate(hidden), no activation.
template <typename A>
void excite(const A* pooled, const A* w1, const A* b1, const A* w2, const A* b2, int64_t C,
            int64_t Cr, Activation act, Gate gate, A* hidden, A* act_hidden, A* scale) {
  if (w2 == nullptr) {
    for (int64_t c = 0; c < C; ++c) {
      hidden[c] = dot(w1 + c * C, pooled, C) + (b1 ? b1[c] : A(0));
      scale[c] = apply_gate(hidden[c], gate);
    }
    return;
  }
  for (int64_t r = 0; r < Cr; ++r) {
    hidden[r] = dot(w1 + r * C, pooled, C) + (b1 ? b1[r] : A(0));
    act_hidden[r] = activate(hidden[r], act);
  }
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = apply_gate(dot(w2 + c * Cr, act_hidden, Cr) + (b2 ? b2[c] : A(0)), gate);
  }
}

// gz = gs * gate'(s); gh = (gz W2) * act'(hidden); gp = (gh W1) / HW (the products by the
// derivatives as se_math.h's gate_backward / activate_backward, with PyTorch's NaN / Inf
// behavior). ga, gp accumulate by rows (axpy) so that W1 [Cr, C] and W2 [C, Cr] are read
// contiguously. w2 null (single FC, Cr == C): gp = (gz W1) / HW, gh and act_hidden unused.
template <typename A>
void excite_backward(const A* gs, const A* s, const A* hidden, const A* w1, const A* w2, int64_t C,
                     int64_t Cr, int64_t HW, Activation act, Gate gate, A* gz, A* act_hidden, A* gh,
                     A* gp) {
  if (w2 == nullptr) {
    std::fill(gp, gp + C, A(0));
    for (int64_t c = 0; c < C; ++c) {
      gz[c] = gate_backward(gs[c], s[c], gate);
      axpy(gz[c] / A(HW), w1 + c * C, gp, C);
    }
    return;
  }
  std::fill(gh, gh + Cr, A(0));
  for (int64_t c = 0; c < C; ++c) {
    gz[c] = gate_backward(gs[c], s[c], gate);
    axpy(gz[c], w2 + c * Cr, gh, Cr);  // gh holds ga = gz W2 for now
  }
  for (int64_t r = 0; r < Cr; ++r) {
    act_hidden[r] = activate(hidden[r], act);
    gh[r] = activate_backward(gh[r], hidden[r], act);
  }
  std::fill(gp, gp + C, A(0));
  for (int64_t r = 0; r < Cr; ++r) axpy(gh[r] / A(HW), w1 + r * C, gp, C);
}

// When the weights outweigh a sample's slab (late stages: C = 2048, Cr = 128, 7x7), reading
// W1 and W2 once per sample costs more than the slab itself: then the excitation runs for the
// whole batch at once, its two products as GEMMs that read the weights once.
// weights_per_channel: 2 Cr (W1 and W2), or C for the single-FC form's [C, C].
bool excite_in_batch(int64_t weights_per_channel, int64_t HW, int64_t x_element_size,
                     int64_t acc_size) {
  return weights_per_channel * acc_size >= HW * x_element_size;
}

// act(h) elementwise with se_math.h's formula; h and out dense, of one dtype.
void activate_each(at::Tensor& out, const at::Tensor& h, Activation act) {
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "senet_kernels_activate", [&] {
    const scalar_t* hp = h.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < h.numel(); ++i) op[i] = activate(hp[i], act);
  });
}

// act(h) and gate(z) on whole tensors: ATen's vectorized pointwise kernels, the ops the
// reference uses (so the same functions as se_math.h, NaN and Inf included), except GELU:
// ATen's vectorized float32 erf makes gelu(+Inf) NaN where the float64 reference (and CUDA)
// give +Inf, so it takes se_math.h's formula (on [N, Cr], a negligible cost). Every code is
// a case and there is no default: -Werror=switch makes a forgotten one a build error.
void activate_out(at::Tensor& out, const at::Tensor& h, Activation act) {
  switch (act) {
    case kRelu:
      at::relu_out(out, h);
      return;
    case kSilu:
      at::silu_out(out, h);
      return;
    case kGelu:
    case kGeluTanh:
      activate_each(out, h, act);
      return;
    case kHardSwish:
      at::hardswish_out(out, h);
      return;
    case kLeakyRelu:
      at::leaky_relu_out(out, h, kLeakyReluSlope);
      return;
  }
  unknown_code<int>(act);
}

void apply_gate_(at::Tensor& z, Gate gate) {
  switch (gate) {
    case kSigmoid:
      z.sigmoid_();
      return;
    case kHardSigmoid:
      at::hardsigmoid_(z);
      return;
  }
  unknown_code<int>(gate);
}

// hidden = pooled W1^T + b1, act_hidden = act(hidden), scale = gate(act_hidden W2^T + b2);
// w2 absent (single FC): scale = gate(hidden), act_hidden unused.
void excite_batch(const at::Tensor& pooled, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                  const std::optional<at::Tensor>& w2, const std::optional<at::Tensor>& b2,
                  Activation act, Gate gate, at::Tensor& hidden, at::Tensor& act_hidden,
                  at::Tensor& scale) {
  at::mm_out(hidden, pooled, w1.t());
  if (b1.has_value()) hidden.add_(*b1);
  if (!w2.has_value()) {
    scale.copy_(hidden);
    apply_gate_(scale, gate);
    return;
  }
  activate_out(act_hidden, hidden, act);
  at::mm_out(scale, act_hidden, w2->t());
  if (b2.has_value()) scale.add_(*b2);
  apply_gate_(scale, gate);
}

// The batch form of excite_backward: gz = gs * gate'(s); gh = (gz W2) * act'(hidden);
// gp = (gh W1) / HW; also act_hidden for the weight gradients. w2 absent (single FC):
// gp = (gz W1) / HW, gh and act_hidden unused.
template <typename A>
void excite_backward_batch(const at::Tensor& gs, const at::Tensor& scale, const at::Tensor& hidden,
                           const at::Tensor& w1, const std::optional<at::Tensor>& w2, int64_t HW,
                           Activation act, Gate gate, at::Tensor& gz, at::Tensor& act_hidden, at::Tensor& gh,
                           at::Tensor& gp) {
  const A* gsp = gs.data_ptr<A>();
  const A* sp = scale.data_ptr<A>();
  A* gzp = gz.data_ptr<A>();
  for (int64_t i = 0; i < gs.numel(); ++i) gzp[i] = gate_backward(gsp[i], sp[i], gate);
  if (!w2.has_value()) {
    at::mm_out(gp, gz, w1);
    gp.div_(static_cast<double>(HW));
    return;
  }
  at::mm_out(gh, gz, *w2);
  const A* hp = hidden.data_ptr<A>();
  A* ghp = gh.data_ptr<A>();
  A* ap = act_hidden.data_ptr<A>();
  for (int64_t i = 0; i < gh.numel(); ++i) {
    ghp[i] = activate_backward(ghp[i], hp[i], act);
    ap[i] = activate(hp[i], act);
  }
  at::mm_out(gp, gh, w1);
  gp.div_(static_cast<double>(HW));
}

}  // namespace

ForwardOutputs se_forward_cpu(const at::Tensor& x_in, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                              const std::optional<at::Tensor>& w2, const std::optional<at::Tensor>& b2,
                              const std::optional<at::Tensor>& residual_in,
                              c10::string_view activation, c10::string_view gate_name,
                              bool post_relu) {
  const Activation act = parse_activation(activation);
  const Gate gate = parse_gate(gate_name);
  check_forward_args(x_in, w1, b1, w2, b2, residual_in, at::kCPU);
  auto outputs = allocate_forward_outputs(x_in, w1);
  // (std::get, not a structured binding: C++17 lambdas cannot capture those)
  at::Tensor& out = std::get<0>(outputs);
  at::Tensor& pooled = std::get<1>(outputs);
  at::Tensor& hidden = std::get<2>(outputs);
  at::Tensor& scale = std::get<3>(outputs);
  const int64_t N = x_in.size(0);
  if (N == 0) return outputs;
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = to_layout(x_in, cl);
  std::optional<at::Tensor> residual;
  if (residual_in.has_value()) residual = to_layout(*residual_in, cl);
  // The excitation runs in the compute dtype: convert the (small) parameters once.
  const auto acc_type = pooled.scalar_type();
  const at::Tensor w1a = w1.to(acc_type).contiguous();
  std::optional<at::Tensor> w2a, b1a, b2a;
  if (w2.has_value()) w2a = w2->to(acc_type).contiguous();
  if (b1.has_value()) b1a = b1->to(acc_type).contiguous();
  if (b2.has_value()) b2a = b2->to(acc_type).contiguous();
  const Geometry geo{x.size(1), x.size(2) * x.size(3), cl};
  const int64_t Cr = w1.size(0);
  at::Tensor act_hidden = at::empty_like(hidden);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_forward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* rp = data_or_null_t<scalar_t>(residual);
    scalar_t* op = out.data_ptr<scalar_t>();
    A* pp = pooled.data_ptr<A>();
    A* hp = hidden.data_ptr<A>();
    A* ap = act_hidden.data_ptr<A>();
    A* sp = scale.data_ptr<A>();
    const A* b1p = data_or_null<A>(b1a);
    const A* b2p = data_or_null<A>(b2a);
    const A* w2p = data_or_null<A>(w2a);
    const bool batched = excite_in_batch(w2p ? 2 * Cr : geo.C, geo.HW, x.element_size(), sizeof(A));
    auto squeeze = [&](int64_t n) {
      A* pn = pp + n * geo.C;
      sample_channel_sums<A>(SumTerm<scalar_t, A, false, false, false>{xp + n * geo.numel(), nullptr,
                                                                        nullptr, nullptr},
                             geo, pn);
      for (int64_t c = 0; c < geo.C; ++c) pn[c] /= A(geo.HW);
    };
    auto rescale = [&](int64_t n) {
      const int64_t off = n * geo.numel();
      with_flag(rp != nullptr, [&](auto has_res) {
        with_flag(post_relu, [&](auto relu) {
          sample_pass<scalar_t, A>(geo, ScaleForward<scalar_t, A, has_res.value, relu.value>{
                                            xp + off, rp ? rp + off : nullptr, sp + n * geo.C, op + off});
        });
      });
    };
    if (batched) {
      for_each_sample(N, squeeze);
      excite_batch(pooled, w1a, b1a, w2a, b2a, act, gate, hidden, act_hidden, scale);
      for_each_sample(N, rescale);
    } else {  // pool, excite and rescale each sample while its slab is in cache
      for_each_sample(N, [&](int64_t n) {
        squeeze(n);
        excite<A>(pp + n * geo.C, w1a.data_ptr<A>(), b1p, w2p, b2p, geo.C, Cr, act,
                  gate, hp + n * Cr, ap + n * Cr, sp + n * geo.C);
        rescale(n);
      });
    }
  });
  return outputs;
}

BackwardOutputs se_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                const std::optional<at::Tensor>& out_in, const at::Tensor& w1,
                                const std::optional<at::Tensor>& w2, const at::Tensor& pooled,
                                const at::Tensor& hidden, const at::Tensor& scale,
                                bool has_residual, c10::string_view activation,
                                c10::string_view gate_name) {
  const Activation act = parse_activation(activation);
  const Gate gate = parse_gate(gate_name);
  check_backward_args(grad_in, x_in, out_in, w1, w2, pooled, hidden, scale, at::kCPU);
  const bool post_relu = out_in.has_value();
  auto grads = allocate_backward_outputs(x_in, w1, w2, post_relu, has_residual);
  const int64_t N = x_in.size(0), C = x_in.size(1), Cr = w1.size(0);
  const auto acc_type = pooled.scalar_type();
  auto vec_opts = pooled.options();
  at::Tensor gz = at::empty({N, C}, vec_opts), gh = at::empty({N, Cr}, vec_opts);
  at::Tensor act_hidden = at::empty({N, Cr}, vec_opts);
  if (N > 0) {
    const bool cl = is_channels_last(x_in);
    const at::Tensor x = to_layout(x_in, cl), g = to_layout(grad_in, cl);
    std::optional<at::Tensor> out;
    if (post_relu) out = to_layout(*out_in, cl);
    const at::Tensor w1a = w1.to(acc_type).contiguous();
    std::optional<at::Tensor> w2a;
    if (w2.has_value()) w2a = w2->to(acc_type).contiguous();
    const at::Tensor s = scale.contiguous(), h = hidden.contiguous();
    const Geometry geo{C, x.size(2) * x.size(3), cl};
    at::Tensor& grad_x = std::get<0>(grads);
    at::Tensor& grad_res = std::get<5>(grads);
    const bool write_grad_res = post_relu && has_residual;
    at::Tensor gs = at::empty({N, C}, vec_opts), gp = at::empty({N, C}, vec_opts);

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_backward_cpu", [&] {
      using A = at::opmath_type<scalar_t>;
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const scalar_t* gptr = g.data_ptr<scalar_t>();
      const scalar_t* optr = data_or_null_t<scalar_t>(out);
      scalar_t* gxp = grad_x.data_ptr<scalar_t>();
      scalar_t* grp = write_grad_res ? grad_res.data_ptr<scalar_t>() : nullptr;
      const A* w2p = data_or_null<A>(w2a);
      const bool batched = excite_in_batch(w2p ? 2 * Cr : C, geo.HW, x.element_size(), sizeof(A));
      auto grad_sums = [&](int64_t n) {
        const int64_t off = n * geo.numel();
        with_flag(post_relu, [&](auto mask) {
          with_flag(write_grad_res, [&](auto write_gy) {
            sample_channel_sums<A>(SumTerm<scalar_t, A, true, mask.value, write_gy.value>{
                                       xp + off, gptr + off, optr ? optr + off : nullptr,
                                       grp ? grp + off : nullptr}, geo, gs.data_ptr<A>() + n * C);
          });
        });
      };
      auto input_grad = [&](int64_t n) {
        const int64_t off = n * geo.numel();
        with_flag(post_relu, [&](auto mask) {
          sample_pass<scalar_t, A>(geo, ScaleBackward<scalar_t, A, mask.value>{
                                            gptr + off, optr ? optr + off : nullptr,
                                            s.data_ptr<A>() + n * C, gp.data_ptr<A>() + n * C, gxp + off});
        });
      };
      if (batched) {
        for_each_sample(N, grad_sums);
        excite_backward_batch<A>(gs, s, h, w1a, w2a, geo.HW, act, gate, gz, act_hidden, gh, gp);
        for_each_sample(N, input_grad);
      } else {  // per sample, while its slabs are in cache
        for_each_sample(N, [&](int64_t n) {
          grad_sums(n);
          excite_backward<A>(gs.data_ptr<A>() + n * C, s.data_ptr<A>() + n * C, h.data_ptr<A>() + n * Cr,
                             w1a.data_ptr<A>(), w2p, C, Cr, geo.HW, act, gate,
                             gz.data_ptr<A>() + n * C, act_hidden.data_ptr<A>() + n * Cr,
                             gh.data_ptr<A>() + n * Cr, gp.data_ptr<A>() + n * C);
          input_grad(n);
        });
      }
    });
  }
  if (w2.has_value()) {
    write_weight_grads(gz, act_hidden, gh, pooled, grads);
  } else {
    write_single_fc_weight_grads(gz, pooled, grads);
  }
  return grads;
}

void excite_batch_cpu(const at::Tensor& pooled, const at::Tensor& w1,
                      const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                      const std::optional<at::Tensor>& b2, Activation act, Gate gate,
                      at::Tensor& hidden, at::Tensor& act_hidden, at::Tensor& scale) {
  excite_batch(pooled, w1, b1, w2, b2, act, gate, hidden, act_hidden, scale);
}

void excite_backward_batch_cpu(const at::Tensor& gs, const at::Tensor& scale,
                               const at::Tensor& hidden, const at::Tensor& w1,
                               const at::Tensor& w2, int64_t hw, Activation act, Gate gate,
                               at::Tensor& gz, at::Tensor& act_hidden, at::Tensor& gh,
                               at::Tensor& gp) {
  AT_DISPATCH_FLOATING_TYPES(gs.scalar_type(), "excite_backward_batch_cpu", [&] {
    excite_backward_batch<scalar_t>(gs, scale, hidden, w1, w2, hw, act, gate, gz, act_hidden,
                                    gh, gp);
  });
}

}  // namespace senet_kernels

TORCH_LIBRARY_IMPL(senet_kernels, CPU, m) {
  m.impl("se_forward_ext", &senet_kernels::se_forward_cpu);
  m.impl("se_backward_ext", &senet_kernels::se_backward_cpu);
}
