// CUDA kernels of the SE op, registered for senet_kernels::se_forward_ext / se_backward_ext:
// the host side. The kernels live in the headers beside this file (one translation unit):
//
//   channel_sums.cuh    per-channel sums over H*W, as partial sums over splits of H*W
//   excite_sample.cuh   the excitation per sample, one block each (activations outweigh weights)
//   excite_gemm.cuh     the excitation as tiled GEMMs over the batch (weight-heavy shapes), and
//                       the weight gradients (never TF32)
//   elementwise.cuh     out = relu?(x * s + residual?) and its backward
//
// The same plan as the Triton backend (senet_kernels/triton/se_op.py), chosen by the same
// traffic model (use_batched_excitation, se_common.cpp):
//   forward   channel sums; per-sample excitation, or GEMMs c_to_r + r_to_c; scale pass
//   backward  channel sums of gy * x; per-sample excitation backward, or GEMMs c_to_r +
//             r_to_c; grad_x pass; weight-gradient GEMMs
// The single-FC form (w2 absent, Effective SE: scale = gate(W1 pooled + b1), W1 [C, C]) always
// takes one GEMM: forward pooled -> (hidden, scale), backward gz -> gp, then gW1 = gz^T pooled
// (the per-sample kernels have no single-FC variant; its C x C weight is what the batched
// path is for anyway at any but the smallest C).
// Every reduction is deterministic (fixed order, no float atomics).
//
// Tensors are indexed as dense NCHW (flat = (n*C + c)*HW + hw) or dense NHWC
// (flat = (n*HW + hw)*C + c), see layout.py. The [N, C] vectors are dense, row n*C + c.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "../se.h"
#include "../se_math.h"
#include "channel_sums.cuh"
#include "common.cuh"
#include "elementwise.cuh"
#include "excite_gemm.cuh"
#include "excite_sample.cuh"

namespace senet_kernels {
namespace {

using namespace cuda;

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

template <typename T>
const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// Multiprocessors of a device, asked once per device.
int64_t num_sms(int device) {
  static std::mutex mutex;
  static std::vector<int> counts;
  std::lock_guard<std::mutex> lock(mutex);
  if (device >= static_cast<int>(counts.size())) counts.resize(device + 1, 0);
  if (counts[device] == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device));
  }
  return counts[device];
}

// Channel sums of term into a fresh partials [n, splits, channels] tensor.
template <typename scalar_t, typename acc_t, int MODE>
std::pair<at::Tensor, int64_t> channel_sums(const SumTerm<scalar_t, acc_t, MODE>& term,
                                            const at::TensorOptions& acc_options, int64_t n,
                                            int64_t channels, int64_t hw, bool cl, int64_t sms,
                                            cudaStream_t stream) {
  const int vec = channel_sum_vec(term, channels);
  const int64_t splits = channel_sum_splits(n, channels, hw, cl, vec, sms);
  at::Tensor partials = at::empty({n, splits, channels}, acc_options);
  launch_channel_sums(term, partials.data_ptr<acc_t>(), n, channels, hw, cl, vec, splits, stream);
  return {partials, splits};
}

// grad_w2 = gz^T act(hidden), grad_b2 = sum_n gz, grad_w1 = gh^T pooled, grad_b1 = sum_n gh.
template <typename acc_t, typename w_t>
void weight_grads(const at::Tensor& gz, const at::Tensor& hidden, const at::Tensor& gh,
                  const at::Tensor& pooled, Activation act, BackwardOutputs& grads,
                  cudaStream_t stream) {
  const int64_t n = gz.size(0), channels = gz.size(1), reduced = gh.size(1);
  launch_gemm<acc_t>(TransposedLoader<acc_t>{gz.data_ptr<acc_t>(), channels},
                     RowsLoader<acc_t>{hidden.data_ptr<acc_t>(), reduced, true, act},
                     WeightGradStore<acc_t, w_t>{std::get<3>(grads).data_ptr<w_t>(),
                                                 std::get<4>(grads).data_ptr<w_t>(), reduced},
                     channels, reduced, n, no_k_split(n), stream);
  launch_gemm<acc_t>(TransposedLoader<acc_t>{gh.data_ptr<acc_t>(), reduced},
                     RowsLoader<acc_t>{pooled.data_ptr<acc_t>(), channels, false, act},
                     WeightGradStore<acc_t, w_t>{std::get<1>(grads).data_ptr<w_t>(),
                                                 std::get<2>(grads).data_ptr<w_t>(), channels},
                     reduced, channels, n, no_k_split(n), stream);
}

}  // namespace

ForwardOutputs se_forward_cuda(const at::Tensor& x, const at::Tensor& w1,
                               const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& w2,
                               const std::optional<at::Tensor>& b2,
                               const std::optional<at::Tensor>& residual,
                               c10::string_view activation, c10::string_view gate,
                               bool post_relu) {
  const Activation act = parse_activation(activation);
  const Gate gate_code = parse_gate(gate);
  check_forward_args(x, w1, b1, w2, b2, residual, at::kCUDA);
  const at::Device device = x.device();
  const int64_t n = x.size(0), channels = x.size(1), hw = x.size(2) * x.size(3);
  const int64_t reduced = w1.size(0);

  c10::cuda::CUDAGuard guard(device);
  const bool cl = is_channels_last(x);
  const at::Tensor xd = to_layout(x, cl);
  std::optional<at::Tensor> res;
  if (residual.has_value()) res = to_layout(*residual, cl);
  const bool single_fc = !w2.has_value();
  const at::Tensor w1c = w1.contiguous();
  const at::Tensor w2c = single_fc ? w1c : w2->contiguous();  // single FC: never read
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
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t sms = num_sms(device.index());
  const bool batched = single_fc || use_batched_excitation(n, channels, reduced, hw,
                                                           x.element_size(), w1.element_size());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_INTERNAL_ASSERT(pooled.scalar_type() == c10::CppTypeToScalarType<acc_t>::value);
    const acc_t hw_acc = static_cast<acc_t>(hw);

    // (1) squeeze: partial sums of x over splits of HW
    const SumTerm<scalar_t, acc_t, kSumX> term{xd.data_ptr<scalar_t>(), nullptr, nullptr};
    at::Tensor partials;
    int64_t splits = 1;
    std::tie(partials, splits) = channel_sums(term, pooled.options(), n, channels, hw, cl, sms,
                                              stream);

    // (2) excitation: pooled, hidden, scale
    dispatch_param_type<scalar_t>(w1.scalar_type(), [&](auto w_tag) {
      using w_t = typename decltype(w_tag)::type;
      const w_t* b1_ptr = optional_ptr<w_t>(b1c);
      const w_t* b2_ptr = optional_ptr<w_t>(b2c);
      if (!batched) {
        // act(hidden) is only a temporary of the per-sample kernel here
        at::Tensor act_hidden = at::empty({n, reduced}, pooled.options());
        excite_forward_kernel<acc_t, w_t><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
            partials.data_ptr<acc_t>(), splits, pooled.data_ptr<acc_t>(), w1c.data_ptr<w_t>(),
            b1_ptr, w2c.data_ptr<w_t>(), b2_ptr, hidden.data_ptr<acc_t>(),
            act_hidden.data_ptr<acc_t>(), scale.data_ptr<acc_t>(), channels, reduced, hw_acc,
            act, gate_code);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      if (single_fc) {  // hidden = pooled W1^T + b1, scale = gate(hidden)
        launch_gemm<acc_t>(
            PooledLoader<acc_t>{partials.data_ptr<acc_t>(), splits, channels, hw_acc,
                                pooled.data_ptr<acc_t>()},
            WeightLoader<acc_t, w_t, true>{w1c.data_ptr<w_t>(), 1, channels},  // W1^T
            HiddenGateStore<acc_t, w_t>{hidden.data_ptr<acc_t>(), scale.data_ptr<acc_t>(),
                                        b1_ptr, channels, gate_code},
            n, channels, channels, no_k_split(channels), stream);
        return;
      }
      // hidden = pooled W1^T + b1 over the batch, split over C; then scale
      const KSplit k_split = gemm_k_split(n, reduced, channels, sms);
      at::Tensor k_partials = at::empty({k_split.splits, n, reduced}, pooled.options());
      launch_gemm<acc_t>(
          PooledLoader<acc_t>{partials.data_ptr<acc_t>(), splits, channels, hw_acc,
                              pooled.data_ptr<acc_t>()},
          WeightLoader<acc_t, w_t, true>{w1c.data_ptr<w_t>(), 1, channels},  // W1^T
          SplitPartialStore<acc_t>{k_partials.data_ptr<acc_t>(), n, reduced}, n, reduced,
          channels, k_split, stream);
      launch_gemm<acc_t>(
          HiddenLoader<acc_t, w_t, false>{k_partials.data_ptr<acc_t>(), k_split.splits, n,
                                          reduced, b1_ptr, nullptr, hidden.data_ptr<acc_t>(), act},
          WeightLoader<acc_t, w_t, true>{w2c.data_ptr<w_t>(), 1, reduced},  // W2^T
          ScaleStore<acc_t, w_t>{scale.data_ptr<acc_t>(), b2_ptr, channels, gate_code}, n,
          channels, reduced, no_k_split(reduced), stream);
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
                                 const std::optional<at::Tensor>& w2, const at::Tensor& pooled,
                                 const at::Tensor& hidden, const at::Tensor& scale,
                                 bool has_residual, c10::string_view activation,
                                 c10::string_view gate) {
  const Activation act = parse_activation(activation);
  const Gate gate_code = parse_gate(gate);
  check_backward_args(grad_out, x, out, w1, w2, pooled, hidden, scale, at::kCUDA);
  const at::Device device = x.device();
  const int64_t n = x.size(0), channels = x.size(1), hw = x.size(2) * x.size(3);
  const int64_t reduced = w1.size(0);
  const bool post_relu = out.has_value();
  const at::ScalarType acc = compute_dtype(x.scalar_type());

  c10::cuda::CUDAGuard guard(device);
  const at::Tensor pooled_c = pooled.contiguous();
  const at::Tensor hidden_c = hidden.contiguous();
  const at::Tensor scale_c = scale.contiguous();
  const bool cl = is_channels_last(x);
  const at::Tensor xd = to_layout(x, cl);
  const at::Tensor gd = to_layout(grad_out, cl);
  std::optional<at::Tensor> od;
  if (out.has_value()) od = to_layout(*out, cl);
  const bool single_fc = !w2.has_value();
  const at::Tensor w1c = w1.contiguous();
  const at::Tensor w2c = single_fc ? w1c : w2->contiguous();  // single FC: never read

  BackwardOutputs grads = allocate_backward_outputs(x, w1, w2, post_relu, has_residual);
  at::Tensor& grad_x = std::get<0>(grads);
  at::Tensor& grad_res = std::get<5>(grads);
  const bool write_grad_res = post_relu && has_residual;
  TORCH_INTERNAL_ASSERT(grad_x.is_contiguous(cl ? at::MemoryFormat::ChannelsLast
                                                : at::MemoryFormat::Contiguous));

  const auto vec_options = x.options().dtype(acc);
  const at::Tensor gz = at::empty({n, channels}, vec_options);
  const at::Tensor gp = at::empty({n, channels}, vec_options);
  const at::Tensor gh = at::empty({n, reduced}, vec_options);
  if (n == 0) {  // empty batch: zero weight and bias gradients, nothing to launch
    for (at::Tensor* g : {&std::get<1>(grads), &std::get<2>(grads), &std::get<3>(grads),
                          &std::get<4>(grads)}) {
      g->zero_();
    }
    return grads;
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t sms = num_sms(device.index());
  const bool batched = single_fc || use_batched_excitation(n, channels, reduced, hw,
                                                           x.element_size(), w1.element_size());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_INTERNAL_ASSERT(acc == c10::CppTypeToScalarType<acc_t>::value);
    const acc_t hw_acc = static_cast<acc_t>(hw);
    const scalar_t* x_ptr = xd.data_ptr<scalar_t>();
    const scalar_t* g_ptr = gd.data_ptr<scalar_t>();
    const scalar_t* out_ptr = od.has_value() ? od->data_ptr<scalar_t>() : nullptr;

    // (1) gs = sum_hw gy * x, as partial sums over splits of HW
    at::Tensor partials;
    int64_t splits = 1;
    // With a residual behind the ReLU tail, the sums also store gy = grad_residual, which the
    // grad_x pass (3) then reads instead of grad and out: 6 passes over the activation, not 7.
    scalar_t* gres_ptr = write_grad_res ? grad_res.data_ptr<scalar_t>() : nullptr;
    if (post_relu) {
      const SumTerm<scalar_t, acc_t, kSumMaskedGradX> term{x_ptr, g_ptr, out_ptr, gres_ptr};
      std::tie(partials, splits) = channel_sums(term, vec_options, n, channels, hw, cl, sms, stream);
    } else {
      const SumTerm<scalar_t, acc_t, kSumGradX> term{x_ptr, g_ptr, nullptr};
      std::tie(partials, splits) = channel_sums(term, vec_options, n, channels, hw, cl, sms, stream);
    }

    dispatch_param_type<scalar_t>(w1.scalar_type(), [&](auto w_tag) {
      using w_t = typename decltype(w_tag)::type;
      // (2) excitation backward: gz, gh, gp
      if (single_fc) {  // gz = gs * gate'(s), gp = gz W1 / HW
        launch_gemm<acc_t>(
            GradGateLoader<acc_t>{partials.data_ptr<acc_t>(), splits, channels,
                                  scale_c.data_ptr<acc_t>(), gate_code, gz.data_ptr<acc_t>()},
            WeightLoader<acc_t, w_t, false>{w1c.data_ptr<w_t>(), channels, 1},  // W1
            GradPooledStore<acc_t>{gp.data_ptr<acc_t>(), channels, hw_acc}, n, channels,
            channels, no_k_split(channels), stream);
      } else if (!batched) {
        const at::Tensor act_hidden = at::empty({n, reduced}, vec_options);
        excite_backward_kernel<acc_t, w_t><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
            partials.data_ptr<acc_t>(), splits, scale_c.data_ptr<acc_t>(),
            hidden_c.data_ptr<acc_t>(), w1c.data_ptr<w_t>(), w2c.data_ptr<w_t>(),
            gz.data_ptr<acc_t>(), act_hidden.data_ptr<acc_t>(), gh.data_ptr<acc_t>(),
            gp.data_ptr<acc_t>(), channels, reduced, hw_acc, act, gate_code);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        // ga = gz W2 over the batch, split over C; then gh = ga * act'(hidden), gp = gh W1 / HW
        const KSplit k_split = gemm_k_split(n, reduced, channels, sms);
        at::Tensor k_partials = at::empty({k_split.splits, n, reduced}, vec_options);
        launch_gemm<acc_t>(
            GradGateLoader<acc_t>{partials.data_ptr<acc_t>(), splits, channels,
                                  scale_c.data_ptr<acc_t>(), gate_code, gz.data_ptr<acc_t>()},
            WeightLoader<acc_t, w_t, false>{w2c.data_ptr<w_t>(), reduced, 1},  // W2
            SplitPartialStore<acc_t>{k_partials.data_ptr<acc_t>(), n, reduced}, n, reduced,
            channels, k_split, stream);
        launch_gemm<acc_t>(
            HiddenLoader<acc_t, w_t, true>{k_partials.data_ptr<acc_t>(), k_split.splits, n,
                                           reduced, nullptr, hidden_c.data_ptr<acc_t>(),
                                           gh.data_ptr<acc_t>(), act},
            WeightLoader<acc_t, w_t, false>{w1c.data_ptr<w_t>(), channels, 1},  // W1
            GradPooledStore<acc_t>{gp.data_ptr<acc_t>(), channels, hw_acc}, n, channels,
            reduced, no_k_split(reduced), stream);
      }
      // (4) weight and bias gradients (below, after the grad_x pass is queued, same stream)
    });

    // (3) grad_x = gy * s + gp (gy from grad_residual where (1) stored it)
    scalar_t* gx_ptr = grad_x.data_ptr<scalar_t>();
    const bool aligned = aligned16(g_ptr) && aligned16(gx_ptr) &&
                         (out_ptr == nullptr || aligned16(out_ptr)) &&
                         (gres_ptr == nullptr || aligned16(gres_ptr));
    launch_elementwise<scalar_t>(
        [&](auto index_tag) {
          using index_t = typename decltype(index_tag)::type;
          return ScaleBackward<scalar_t, acc_t, index_t>{
              g_ptr, out_ptr, scale_c.data_ptr<acc_t>(), gp.data_ptr<acc_t>(), gx_ptr,
              gres_ptr, static_cast<index_t>(channels), static_cast<index_t>(hw), cl,
              /*grad_residual_written=*/write_grad_res};
        },
        xd.numel(), aligned, stream);

    // (4) weight and bias gradients: GEMMs over the batch, float32 (never TF32)
    dispatch_param_type<scalar_t>(w1.scalar_type(), [&](auto w_tag) {
      using w_t = typename decltype(w_tag)::type;
      if (single_fc) {  // grad_w1 = gz^T pooled, grad_b1 = sum_n gz
        launch_gemm<acc_t>(TransposedLoader<acc_t>{gz.data_ptr<acc_t>(), channels},
                           RowsLoader<acc_t>{pooled_c.data_ptr<acc_t>(), channels, false, act},
                           WeightGradStore<acc_t, w_t>{std::get<1>(grads).data_ptr<w_t>(),
                                                       std::get<2>(grads).data_ptr<w_t>(),
                                                       channels},
                           channels, channels, n, no_k_split(n), stream);
      } else {
        weight_grads<acc_t, w_t>(gz, hidden_c, gh, pooled_c, act, grads, stream);
      }
    });
  });
  return grads;
}

}  // namespace senet_kernels

TORCH_LIBRARY_IMPL(senet_kernels, CUDA, m) {
  m.impl("se_forward_ext", &senet_kernels::se_forward_cuda);
  m.impl("se_backward_ext", &senet_kernels::se_backward_cuda);
}
