// Output allocation, layout rule and argument parsing shared by the CPU and CUDA kernels.
#include "se.h"

#include <torch/extension.h>

#include <atomic>

namespace senet_kernels {

Activation parse_activation(c10::string_view name) {
  if (name == "relu") return kRelu;
  if (name == "silu") return kSilu;
  TORCH_CHECK_VALUE(false, "activation must be 'relu' or 'silu', got '", std::string(name), "'");
}

Gate parse_gate(c10::string_view name) {
  if (name == "sigmoid") return kSigmoid;
  if (name == "hardsigmoid") return kHardSigmoid;
  TORCH_CHECK_VALUE(false, "gate must be 'sigmoid' or 'hardsigmoid', got '", std::string(name), "'");
}

bool is_channels_last(const at::Tensor& x) {
  if (x.is_contiguous()) return false;
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return true;
  return x.stride(1) == 1;
}

at::Tensor to_layout(const at::Tensor& t, bool channels_last) {
  return t.contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

at::ScalarType compute_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

static at::MemoryFormat format_of(const at::Tensor& x) {
  return is_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

ForwardOutputs allocate_forward_outputs(const at::Tensor& x, const at::Tensor& w1) {
  const int64_t n = x.size(0), c = x.size(1);
  auto vec = x.options().dtype(compute_dtype(x.scalar_type()));
  return {at::empty_like(x, format_of(x)), at::empty({n, c}, vec), at::empty({n, w1.size(0)}, vec),
          at::empty({n, c}, vec)};
}

BackwardOutputs allocate_backward_outputs(const at::Tensor& x, const at::Tensor& w1,
                                          const at::Tensor& w2, bool post_relu,
                                          bool has_residual) {
  auto grad_res = post_relu && has_residual ? at::empty_like(x, format_of(x))
                                            : at::empty({0}, x.options());
  return {at::empty_like(x, format_of(x)),
          at::empty_like(w1, at::MemoryFormat::Contiguous),
          at::empty({w1.size(0)}, w1.options()),
          at::empty_like(w2, at::MemoryFormat::Contiguous),
          at::empty({w2.size(0)}, w2.options()),
          grad_res};
}

namespace {
std::atomic<double> weight_traffic_limit{0.1};
}  // namespace

void set_weight_traffic_limit(double limit) {
  TORCH_CHECK_VALUE(limit > 0, "the weight traffic limit must be positive, got ", limit);
  weight_traffic_limit = limit;
}

bool use_batched_excitation(int64_t n, int64_t channels, int64_t reduced, int64_t hw,
                            int64_t x_element_size, int64_t param_element_size) {
  // per-sample weight bytes read > limit * activation bytes, as in configs.py
  const double weights = 2.0 * channels * reduced * param_element_size * n;
  const double activations = static_cast<double>(n) * channels * hw * x_element_size;
  return weights > weight_traffic_limit.load() * activations;
}

void write_weight_grads(const at::Tensor& gz, const at::Tensor& act_hidden, const at::Tensor& gh,
                        const at::Tensor& pooled, BackwardOutputs& grads) {
  std::get<1>(grads).copy_(gh.t().mm(pooled));
  std::get<2>(grads).copy_(gh.sum(0));
  std::get<3>(grads).copy_(gz.t().mm(act_hidden));
  std::get<4>(grads).copy_(gz.sum(0));
}

}  // namespace senet_kernels

// Importable as senet_kernels._C; the kernels register themselves with the dispatcher.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("compiled_with_cuda", []() {
#ifdef SENET_KERNELS_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether this build of senet_kernels._C contains the CUDA kernels.");
  m.def("set_weight_traffic_limit", &senet_kernels::set_weight_traffic_limit,
        "Set the traffic model's limit (configs.WEIGHT_TRAFFIC_LIMIT; done at import).");
  m.def("use_batched_excitation", &senet_kernels::use_batched_excitation,
        "The CUDA kernels' choice: batched (GEMM) excitation for this shape?");
}
