// The batched excitation of the CPU kernels (se_cpu.cpp), for the fused BatchNorm + SE op
// (bn_se_cpu.cpp), whose excitation always runs over the whole batch (batch statistics need
// every sample before any scale is known).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "../se.h"

namespace senet_kernels {

// hidden = pooled W1^T + b1, act_hidden = act(hidden), scale = gate(act_hidden W2^T + b2).
// pooled [N, C], w1 [Cr, C], w2 [C, Cr], biases and outputs in the compute dtype, contiguous.
void excite_batch_cpu(const at::Tensor& pooled, const at::Tensor& w1,
                      const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                      const std::optional<at::Tensor>& b2, Activation act, Gate gate,
                      at::Tensor& hidden, at::Tensor& act_hidden, at::Tensor& scale);

// gz = gs * gate'(s); gh = (gz W2) * act'(hidden); gp = (gh W1) / hw; act_hidden = act(hidden).
// All [N, *] tensors contiguous, in the compute dtype.
void excite_backward_batch_cpu(const at::Tensor& gs, const at::Tensor& scale,
                               const at::Tensor& hidden, const at::Tensor& w1,
                               const at::Tensor& w2, int64_t hw, Activation act, Gate gate,
                               at::Tensor& gz, at::Tensor& act_hidden, at::Tensor& gh,
                               at::Tensor& gp);

}  // namespace senet_kernels
