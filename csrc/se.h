// Declarations shared by the CPU and CUDA kernels of the SE op.
//
// The op schemas live in one place, senet_kernels/ops.py (define_backend_ops("ext")); this
// library only registers kernels for senet_kernels::se_forward_ext / se_backward_ext
// (TORCH_LIBRARY_IMPL), under the CPU key (cpu/se_cpu.cpp) and the CUDA key (cuda/se_cuda.cu).
// See ops.py for the meaning of every argument and output.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace senet_kernels {

using ForwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardOutputs =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Activation / gate codes: the same integers as senet_kernels/spec.py (ACTIVATION_CODE /
// GATE_CODE; the extension exposes these enums as _C.activation_codes() / gate_codes() and a
// test checks they agree). Every switch on them names each enumerator and fails on anything
// else (se_math.h); -Werror=switch (setup.py) turns a forgotten case into a build error. To add
// one, follow the checklist in spec.py.
enum Activation : int {
  kRelu = 0,
  kSilu = 1,
  kGelu = 2,
  kGeluTanh = 3,
  kHardSwish = 4,
  kLeakyRelu = 5
};
enum Gate : int { kSigmoid = 0, kHardSigmoid = 1 };
// The code of a name; ValueError (c10::ValueError) for an unknown name.
Activation parse_activation(c10::string_view name);
Gate parse_gate(c10::string_view name);

// Checks at the op boundary, the first thing every kernel (CPU and CUDA) does: the schema
// only says "Tensor", so shapes, dtypes and devices are checked here, with messages naming
// the argument (RuntimeError / TypeError / ValueError through TORCH_CHECK*). `device_type` is
// the dispatch key's device (kCPU or kCUDA); every tensor must be on x's device.
//   forward:  x [N, C, H, W] float16/bfloat16/float32/float64, C, H, W >= 1; w1 [Cr, C] and
//             w2 [C, Cr] with Cr >= 1; b1 [Cr], b2 [C] or absent; parameters share one dtype,
//             x's or float32; residual like x (shape and dtype). w2 absent: the single-FC form
//             (Effective SE), w1 [C, C] and b2 absent.
//   backward: the same for x, w1, w2; grad_out and out (when given) like x; pooled [N, C],
//             hidden [N, Cr], scale [N, C] in the compute dtype.
void check_forward_args(const at::Tensor& x, const at::Tensor& w1,
                        const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& w2,
                        const std::optional<at::Tensor>& b2,
                        const std::optional<at::Tensor>& residual, at::DeviceType device_type);
void check_backward_args(const at::Tensor& grad_out, const at::Tensor& x,
                         const std::optional<at::Tensor>& out, const at::Tensor& w1,
                         const std::optional<at::Tensor>& w2, const at::Tensor& pooled,
                         const at::Tensor& hidden, const at::Tensor& scale,
                         at::DeviceType device_type);

// NHWC processing? The rule of senet_kernels/layout.py: dense NCHW -> false, dense
// channels_last -> true, otherwise whether C is the fastest axis.
bool is_channels_last(const at::Tensor& x);
// t as a dense tensor of the given layout (no copy when it already is one).
at::Tensor to_layout(const at::Tensor& t, bool channels_last);
// float64 for float64 input, float32 otherwise.
at::ScalarType compute_dtype(at::ScalarType dtype);

// Empty outputs with exactly the metadata of the fake kernels in ops.py (grad_w2 and grad_b2
// are empty [0] tensors of w1's dtype when w2 is absent).
ForwardOutputs allocate_forward_outputs(const at::Tensor& x, const at::Tensor& w1);
BackwardOutputs allocate_backward_outputs(const at::Tensor& x, const at::Tensor& w1,
                                          const std::optional<at::Tensor>& w2, bool post_relu,
                                          bool has_residual);

// The traffic model of senet_kernels/triton/configs.py (use_batched_excitation): whether the
// excitation runs as GEMMs over the batch (reading each weight once per tile of samples)
// rather than per sample (reading the weights once per sample). The limit is set from
// Python at import (set_weight_traffic_limit), so configs.py stays its one source.
bool use_batched_excitation(int64_t n, int64_t channels, int64_t reduced, int64_t hw,
                            int64_t x_element_size, int64_t param_element_size);
void set_weight_traffic_limit(double limit);

// Weight and bias gradients from the per-sample vectors of the excitation backward, written
// into grad_w1 / grad_b1 / grad_w2 / grad_b2 of `grads` (the CPU kernels: BLAS GEMMs; the CUDA
// kernels have their own, see cuda/excite_gemm.cuh):
//   grad_w2 = gz^T act(hidden), grad_b2 = sum_n gz, grad_w1 = gh^T pooled, grad_b1 = sum_n gh.
// gz [N, C], act_hidden [N, Cr], gh [N, Cr], pooled [N, C], all in the compute dtype.
void write_weight_grads(const at::Tensor& gz, const at::Tensor& act_hidden, const at::Tensor& gh,
                        const at::Tensor& pooled, BackwardOutputs& grads);
// The single-FC form's: grad_w1 = gz^T pooled, grad_b1 = sum_n gz (grad_w2 / grad_b2 stay
// empty).
void write_single_fc_weight_grads(const at::Tensor& gz, const at::Tensor& pooled,
                                  BackwardOutputs& grads);

// The kernels (signatures of the op schemas).
ForwardOutputs se_forward_cpu(const at::Tensor& x, const at::Tensor& w1,
                              const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& w2,
                              const std::optional<at::Tensor>& b2,
                              const std::optional<at::Tensor>& residual,
                              c10::string_view activation, c10::string_view gate,
                              bool post_relu);
BackwardOutputs se_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                const std::optional<at::Tensor>& out, const at::Tensor& w1,
                                const std::optional<at::Tensor>& w2, const at::Tensor& pooled,
                                const at::Tensor& hidden, const at::Tensor& scale,
                                bool has_residual, c10::string_view activation,
                                c10::string_view gate);

ForwardOutputs se_forward_cuda(const at::Tensor& x, const at::Tensor& w1,
                               const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& w2,
                               const std::optional<at::Tensor>& b2,
                               const std::optional<at::Tensor>& residual,
                               c10::string_view activation, c10::string_view gate,
                               bool post_relu);
BackwardOutputs se_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                 const std::optional<at::Tensor>& out, const at::Tensor& w1,
                                 const std::optional<at::Tensor>& w2, const at::Tensor& pooled,
                                 const at::Tensor& hidden, const at::Tensor& scale,
                                 bool has_residual, c10::string_view activation,
                                 c10::string_view gate);

}  // namespace senet_kernels
