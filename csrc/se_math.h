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
//   gelu           their gradients at +-Inf are NaN or 0 as in PyTorch; gelu(+Inf) = +Inf,
//                  gelu(-Inf) = NaN (-Inf * 0), and both forms' gradients at +-Inf are NaN.
//   hardswish      h * relu6(h + 3) / 6 with NaN kept (so hardswish(-Inf) = NaN); its backward
//                  is a select: 0 where h <= -3 (an Inf gradient too), g * (h / 3 + 1/2) where
//                  -3 < h < 3, g elsewhere, where h is NaN too (PyTorch's scalar and CUDA
//                  kernels; see reference.hardswish).
//   leaky_relu     h > 0 ? h : h * 0.01 (nn.LeakyReLU's default slope, spec.LEAKY_RELU_SLOPE;
//                  NaN stays NaN); backward h > 0 ? g : g * 0.01, as leaky_relu_backward.
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

// GELU's constants as PyTorch's kernels spell them: 1/sqrt(2), 1/sqrt(2 pi), sqrt(2/pi) and
// the tanh form's cubic coefficient.
constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluTanhKappa = 0.044715;
// leaky_relu's negative slope (senet_kernels/spec.py LEAKY_RELU_SLOPE), rounded to T as
// PyTorch rounds its negval.
constexpr double kLeakyReluSlope = 0.01;

// sqrt(2/pi) (h + 0.044715 h^3), the argument of tanh in nn.GELU(approximate="tanh").
template <typename T>
C10_HOST_DEVICE inline T gelu_tanh_inner(T h) {
  return T(kSqrt2OverPi) * (h + T(kGeluTanhKappa) * (h * h * h));
}

// 1 + tanh(u) = 2 sigmoid(2u), as triton/common.py writes it (Triton has no tanh): no
// cancellation where tanh(u) is near -1; +-Inf give 2 / 0, NaN stays NaN.
template <typename T>
C10_HOST_DEVICE inline T one_plus_tanh(T u) {
  return T(2) / (T(1) + ::exp(T(-2) * u));
}

template <typename T>
C10_HOST_DEVICE inline T hardswish(T h) {
  // h * relu6(h + 3) / 6, PyTorch's CPU order; comparisons are false for NaN, so NaN stays NaN.
  T v = h + T(3);
  v = v <= T(0) ? T(0) : v;
  v = v >= T(6) ? T(6) : v;
  return h * v / T(6);
}

template <typename T>
C10_HOST_DEVICE inline T activate(T h, Activation act) {
  switch (act) {
    case kRelu:
      return relu(h);
    case kSilu:
      return h * sigmoid(h);
    case kGelu:
      return h * T(0.5) * (T(1) + ::erf(h * T(kSqrt1_2)));
    case kGeluTanh:
      return T(0.5) * h * one_plus_tanh(gelu_tanh_inner(h));
    case kHardSwish:
      return hardswish(h);
    case kLeakyRelu:
      return h > T(0) ? h : h * T(kLeakyReluSlope);
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
    case kGelu: {  // PyTorch's gelu_backward: ga * (cdf + h * pdf)
      const T cdf = T(0.5) * (T(1) + ::erf(h * T(kSqrt1_2)));
      const T pdf = ::exp(T(-0.5) * h * h) * T(kInvSqrt2Pi);
      return ga * (cdf + h * pdf);
    }
    case kGeluTanh: {  // gelu_backward, tanh form, with 1 - tanh^2 = (1 + tanh)(1 - tanh)
      const T inner = gelu_tanh_inner(h);
      const T left = T(0.5) * h;
      const T tanh_derivative = one_plus_tanh(inner) * one_plus_tanh(-inner);
      const T inner_derivative = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluTanhKappa) * (h * h));
      return ga * (T(0.5) * one_plus_tanh(inner) + left * tanh_derivative * inner_derivative);
    }
    case kHardSwish:  // a select: no product with ga where the derivative is 0
      return h <= T(-3) ? T(0) : (h < T(3) ? ga * (h / T(3) + T(0.5)) : ga);
    case kLeakyRelu:
      return h > T(0) ? ga : ga * T(kLeakyReluSlope);
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
