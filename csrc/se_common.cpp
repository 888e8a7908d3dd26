// Shared by the CPU and CUDA kernels: argument parsing and checks, output allocation, layout
// rule, traffic model, the CPU weight-gradient GEMMs; and the Python module senet_kernels._C.
#include "se.h"

#include <torch/extension.h>

#include <atomic>
#include <string>
#include <utility>
#include <vector>

namespace senet_kernels {

namespace {

// Names and codes in one table each: parse_* and the pybind listings read them.
constexpr std::pair<const char*, Activation> kActivationNames[] = {
    {"relu", kRelu}, {"silu", kSilu}, {"gelu", kGelu}, {"gelu_tanh", kGeluTanh},
    {"hardswish", kHardSwish}, {"leaky_relu", kLeakyRelu}};
constexpr std::pair<const char*, Gate> kGateNames[] = {{"sigmoid", kSigmoid},
                                                        {"hardsigmoid", kHardSigmoid}};

template <typename Code, size_t K>
std::string known_names(const std::pair<const char*, Code> (&table)[K]) {
  std::string names;
  for (const auto& entry : table) names += (names.empty() ? "'" : ", '") + std::string(entry.first) + "'";
  return names;
}

template <typename Code, size_t K>
std::vector<std::pair<std::string, int>> code_list(const std::pair<const char*, Code> (&table)[K]) {
  std::vector<std::pair<std::string, int>> codes;
  for (const auto& entry : table) codes.emplace_back(entry.first, static_cast<int>(entry.second));
  return codes;
}

}  // namespace

Activation parse_activation(c10::string_view name) {
  for (const auto& entry : kActivationNames) {
    if (name == entry.first) return entry.second;
  }
  TORCH_CHECK_VALUE(false, "activation must be one of ", known_names(kActivationNames), ", got '",
                    std::string(name), "'");
}

Gate parse_gate(c10::string_view name) {
  for (const auto& entry : kGateNames) {
    if (name == entry.first) return entry.second;
  }
  TORCH_CHECK_VALUE(false, "gate must be one of ", known_names(kGateNames), ", got '",
                    std::string(name), "'");
}

std::vector<std::pair<std::string, int>> activation_codes() { return code_list(kActivationNames); }
std::vector<std::pair<std::string, int>> gate_codes() { return code_list(kGateNames); }

// ---- Checks at the op boundary ------------------------------------------------------------

namespace {

constexpr const char* kOp = "senet_kernels se op: ";

bool is_float_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

void check_device(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), kOp, name, " is on ", t.device(), " but x is on ",
              x.device());
}

// x: a 4-D floating tensor with C, H, W >= 1 on a device of the kernel's type.
void check_x(const at::Tensor& x, at::DeviceType device_type) {
  TORCH_CHECK(x.device().type() == device_type, kOp, "x must be a ", device_type,
              " tensor for this kernel, got one on ", x.device());
  TORCH_CHECK_VALUE(x.dim() == 4, kOp, "x must be 4-D [N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK_TYPE(is_float_dtype(x.scalar_type()), kOp,
                   "x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.size(1) >= 1 && x.size(2) >= 1 && x.size(3) >= 1, kOp,
                    "x must have C, H, W >= 1, got shape ", x.sizes());
}

// w1 [Cr, C], w2 [C, Cr] (Cr >= 1), one dtype, x's or float32, on x's device; w2 absent
// (single FC): w1 [C, C].
void check_weights(const at::Tensor& x, const at::Tensor& w1,
                   const std::optional<at::Tensor>& w2_opt) {
  const int64_t channels = x.size(1);
  check_device(w1, "w1", x);
  TORCH_CHECK_TYPE(w1.scalar_type() == x.scalar_type() || w1.scalar_type() == at::kFloat, kOp,
                   "w1 has dtype ", w1.scalar_type(), " but x has ", x.scalar_type(),
                   ": parameters must be x's dtype or float32");
  if (!w2_opt.has_value()) {
    TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(0) == channels && w1.size(1) == channels, kOp,
                      "w1 must be [", channels, ", ", channels,
                      "] when w2 is absent (single FC), got shape ", w1.sizes());
    return;
  }
  const at::Tensor& w2 = *w2_opt;
  check_device(w2, "w2", x);
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == channels && w1.size(0) >= 1, kOp,
                    "w1 must be [Cr, ", channels, "] with Cr >= 1, got shape ", w1.sizes());
  const int64_t reduced = w1.size(0);
  TORCH_CHECK_VALUE(w2.dim() == 2 && w2.size(0) == channels && w2.size(1) == reduced, kOp,
                    "w2 must be [", channels, ", ", reduced, "], got shape ", w2.sizes());
  TORCH_CHECK_TYPE(w2.scalar_type() == w1.scalar_type(), kOp, "w2 has dtype ",
                   w2.scalar_type(), " but w1 has ", w1.scalar_type());
}

void check_bias(const std::optional<at::Tensor>& b, const char* name, int64_t length,
                const at::Tensor& x, const at::Tensor& w1) {
  if (!b.has_value()) return;
  check_device(*b, name, x);
  TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == length, kOp, name, " must be [", length,
                    "], got shape ", b->sizes());
  TORCH_CHECK_TYPE(b->scalar_type() == w1.scalar_type(), kOp, name, " has dtype ",
                   b->scalar_type(), " but w1 has ", w1.scalar_type());
}

// A tensor that must match x in shape and dtype (residual, grad_out, out).
void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_device(t, name, x);
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), kOp, name, " must have x's shape ", x.sizes(),
                    ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), kOp, name, " has dtype ",
                   t.scalar_type(), " but x has ", x.scalar_type());
}

// A saved [rows, cols] vector of the forward, in the compute dtype.
void check_saved(const at::Tensor& t, const char* name, int64_t rows, int64_t cols,
                 const at::Tensor& x) {
  check_device(t, name, x);
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, kOp, name,
                    " must be [", rows, ", ", cols, "], got shape ", t.sizes());
  const at::ScalarType acc = compute_dtype(x.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == acc, kOp, name, " must have dtype ", acc, ", got ",
                   t.scalar_type());
}

}  // namespace

void check_forward_args(const at::Tensor& x, const at::Tensor& w1,
                        const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& w2,
                        const std::optional<at::Tensor>& b2,
                        const std::optional<at::Tensor>& residual, at::DeviceType device_type) {
  check_x(x, device_type);
  check_weights(x, w1, w2);
  TORCH_CHECK_VALUE(w2.has_value() || !b2.has_value(), kOp,
                    "b2 must be absent when w2 is (single FC)");
  check_bias(b1, "b1", w1.size(0), x, w1);
  check_bias(b2, "b2", x.size(1), x, w1);
  if (residual.has_value()) check_like_x(*residual, "residual", x);
}

void check_backward_args(const at::Tensor& grad_out, const at::Tensor& x,
                         const std::optional<at::Tensor>& out, const at::Tensor& w1,
                         const std::optional<at::Tensor>& w2, const at::Tensor& pooled,
                         const at::Tensor& hidden, const at::Tensor& scale,
                         at::DeviceType device_type) {
  check_x(x, device_type);
  check_weights(x, w1, w2);
  check_like_x(grad_out, "grad_out", x);
  if (out.has_value()) check_like_x(*out, "out", x);
  const int64_t n = x.size(0), channels = x.size(1), reduced = w1.size(0);
  check_saved(pooled, "pooled", n, channels, x);
  check_saved(hidden, "hidden", n, reduced, x);
  check_saved(scale, "scale", n, channels, x);
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
                                          const std::optional<at::Tensor>& w2, bool post_relu,
                                          bool has_residual) {
  auto grad_res = post_relu && has_residual ? at::empty_like(x, format_of(x))
                                            : at::empty({0}, x.options());
  return {at::empty_like(x, format_of(x)),
          at::empty_like(w1, at::MemoryFormat::Contiguous),
          at::empty({w1.size(0)}, w1.options()),
          w2.has_value() ? at::empty_like(*w2, at::MemoryFormat::Contiguous)
                         : at::empty({0}, w1.options()),
          w2.has_value() ? at::empty({w2->size(0)}, w2->options()) : at::empty({0}, w1.options()),
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

void write_single_fc_weight_grads(const at::Tensor& gz, const at::Tensor& pooled,
                                  BackwardOutputs& grads) {
  std::get<1>(grads).copy_(gz.t().mm(pooled));
  std::get<2>(grads).copy_(gz.sum(0));
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
  m.def("activation_codes", &senet_kernels::activation_codes,
        "(name, code) of every activation the kernels know (enum Activation of se.h).");
  m.def("gate_codes", &senet_kernels::gate_codes,
        "(name, code) of every gate the kernels know (enum Gate of se.h).");
  m.def("use_batched_excitation", &senet_kernels::use_batched_excitation,
        "The CUDA kernels' choice: batched (GEMM) excitation for this shape?");
}
