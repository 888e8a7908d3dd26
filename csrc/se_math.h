// Scalar math of the excitation, for host (CPU kernels) and device (CUDA kernels) alike:
// the same formulas as senet_kernels/triton/common.py.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace senet_kernels {

template <typename T>
C10_HOST_DEVICE inline T sigmoid(T v) {
  return T(1) / (T(1) + ::exp(-v));
}

// act 0: relu, 1: silu.
template <typename T>
C10_HOST_DEVICE inline T activate(T h, int act) {
  return act == 0 ? (h > T(0) ? h : T(0)) : h * sigmoid(h);
}

// d act / dh; relu'(0) = 0 as in PyTorch.
template <typename T>
C10_HOST_DEVICE inline T activate_grad(T h, int act) {
  if (act == 0) return h > T(0) ? T(1) : T(0);
  T s = sigmoid(h);
  return s * (T(1) + h * (T(1) - s));
}

// gate 0: sigmoid, 1: hardsigmoid = relu6(z + 3) / 6.
template <typename T>
C10_HOST_DEVICE inline T apply_gate(T z, int gate) {
  if (gate == 0) return sigmoid(z);
  T v = z + T(3);
  v = v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
  return v / T(6);
}

// d gate / dz from s = gate(z): hardsigmoid's slope is 1/6 exactly where 0 < s < 1.
template <typename T>
C10_HOST_DEVICE inline T gate_grad_from_scale(T s, int gate) {
  if (gate == 0) return s * (T(1) - s);
  return (s > T(0) && s < T(1)) ? T(1) / T(6) : T(0);
}

}  // namespace senet_kernels
