// Scalar math of the excitation, for host (CPU kernels) and device (CUDA kernels) alike:
// the same formulas as senet_kernels/triton/common.py.
//
// NaN and Inf propagate exactly as in the PyTorch ops the reference is written with
// (senet_kernels/reference.py), forward and backward:
//   relu(h)        torch.relu: NaN stays NaN (h <= 0 is false for NaN), so no max(h, 0) that
//                  drops it.
//   relu backward  threshold_backward on relu's result: the gradient passes unless the result
//                  is <= 0, i.e. it also passes where h is NaN.
//   hardsigmoid    min(max(z + 3, 0), 6) / 6 with NaN kept; its backward is a select, never a
//                  product: where it is clamped (or z is NaN) the gradient is 0 even when the
//                  incoming gradient is Inf or NaN (PyTorch: z > -3 && z < 3 ? g / 6 : 0).
//                  Written from s = gate(z): -3 < z < 3 exactly where 0 < s < 1.
//   sigmoid, silu  the formulas PyTorch uses, so sigmoid(+-Inf) = 1 / 0, silu(-Inf) = NaN and
//                  their gradients at +-Inf are NaN or 0 as in PyTorch.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

#include "se.h"

namespace senet_kernels {

// An activation / gate code no case handles: parse_activation / parse_gate only return
// known codes, so this is a bug; fail loudly rather than compute something else.
template <typename T>
C10_HOST_DEVICE inline T unknown_code(int code) {
#if defined(__CUDA_ARCH__)
  (void)code;
  __trap();
  return T(0);
#else
  TORCH_CHECK(false, "senet_kernels: unknown activation / gate code ", code);
  return T(0);
#endif
}

template <typename T>
C10_HOST_DEVICE inline T sigmoid(T v) {
  return T(1) / (T(1) + ::exp(-v));
}

template <typename T>
C10_HOST_DEVICE inline T relu(T h) {
  return h <= T(0) ? T(0) : h;  // NaN stays NaN
}

template <typename T>
C10_HOST_DEVICE inline T activate(T h, Activation act) {
  switch (act) {
    case kRelu:
      return relu(h);
    case kSilu:
      return h * sigmoid(h);
  }
  return unknown_code<T>(act);
}

// ga * d act / dh, the gradient reaching h from ga = d loss / d act(h).
template <typename T>
C10_HOST_DEVICE inline T activate_backward(T ga, T h, Activation act) {
  switch (act) {
    case kRelu:
      return h <= T(0) ? T(0) : ga;  // relu'(0) = 0; NaN h lets ga through, as PyTorch
    case kSilu: {
      const T s = sigmoid(h);
      return ga * s * (T(1) + h * (T(1) - s));  // PyTorch's silu_backward, same order
    }
  }
  return unknown_code<T>(act);
}

template <typename T>
C10_HOST_DEVICE inline T apply_gate(T z, Gate gate) {
  switch (gate) {
    case kSigmoid:
      return sigmoid(z);
    case kHardSigmoid: {
      // relu6(z + 3) / 6; comparisons are false for NaN, so NaN stays NaN.
      T v = z + T(3);
      v = v <= T(0) ? T(0) : v;
      v = v >= T(6) ? T(6) : v;
      return v / T(6);
    }
  }
  return unknown_code<T>(gate);
}

// gs * d gate / dz, from s = gate(z) (the backward keeps no z).
template <typename T>
C10_HOST_DEVICE inline T gate_backward(T gs, T s, Gate gate) {
  switch (gate) {
    case kSigmoid:
      return gs * (T(1) - s) * s;  // PyTorch's sigmoid_backward, same order
    case kHardSigmoid:
      // a select: 0 where clamped or NaN, whatever gs is (0 * Inf would be NaN)
      return (s > T(0) && s < T(1)) ? gs * (T(1) / T(6)) : T(0);
  }
  return unknown_code<T>(gate);
}

}  // namespace senet_kernels
