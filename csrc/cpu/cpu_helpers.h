// Small building blocks shared by the CPU kernels (se_cpu.cpp, bn_se_cpu.cpp): vectorized
// loads and stores with conversion to the compute type, a horizontal sum, the ReLU tail's
// gradient mask, the split of samples over threads and compile-time flags.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <optional>
#include <type_traits>

namespace senet_kernels {
namespace cpu {

using at::vec::Vectorized;

// Loads / stores of Vectorized<A>::size() elements of T, converting T <-> A (A = compute type).
template <typename T, typename A>
struct VecIO {
  using Vec = Vectorized<A>;
  static constexpr int64_t kSize = Vec::size();
  static Vec load(const T* p) {
    if constexpr (std::is_same_v<T, A>) {
      return Vec::loadu(p);
    } else {
      Vec v;
      at::vec::load_to_float<T>(p, v);
      return v;
    }
  }
  static void store(T* p, const Vec& v) {
    if constexpr (std::is_same_v<T, A>) {
      v.store(p);
    } else {
      at::vec::convert_from_float<T>(v, v).store(p, kSize);
    }
  }
};

template <typename A>
A vec_sum(const Vectorized<A>& v) {
  return at::vec::vec_reduce_all<A>([](Vectorized<A>& a, Vectorized<A>& b) { return a + b; }, v);
}

// Where a gradient passes the ReLU tail: threshold_backward on relu's output, i.e. 0 where
// out <= 0, g elsewhere, NaN outputs included (not "g where out > 0", which drops them).
template <typename A>
Vectorized<A> relu_mask(const Vectorized<A>& g, const Vectorized<A>& out) {
  const Vectorized<A> zero(A(0));
  return Vectorized<A>::blendv(g, zero, out <= zero);
}

template <typename A>
A relu_mask(A g, A out) {
  return out <= A(0) ? A(0) : g;
}

// Runs per_sample(n) for every sample: samples in parallel when there are enough of them to
// keep every thread busy, else one after another, each splitting its channels over the
// threads. (Measured on 2 cores: splitting large slabs over threads even when N >= threads,
// to keep a thread's half slab in L2, was slower with NHWC and no faster with NCHW.)
template <typename F>
void for_each_sample(int64_t n, const F& per_sample) {
  if (n >= at::get_num_threads()) {
    at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) per_sample(i);
    });
  } else {
    for (int64_t i = 0; i < n; ++i) per_sample(i);
  }
}

// Calls fn(std::integral_constant<bool, flag>{}) so a runtime flag becomes a template one.
template <typename F>
void with_flag(bool flag, const F& fn) {
  if (flag) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

template <typename A>
const A* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<A>() : nullptr;
}

template <typename T>
const T* data_or_null_t(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

}  // namespace cpu
}  // namespace senet_kernels
