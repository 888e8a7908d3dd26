// Building blocks shared by the CUDA kernels of the SE op: block shape, warp / block sums,
// vector loads. Included by se_cuda.cu only (one translation unit).
#pragma once

#include <cstdint>

namespace senet_kernels {
namespace cuda {

constexpr int kWarp = 32;
// Block size of the reduction, excitation and elementwise kernels. The excitation helpers
// assume exactly this many threads (kWarps warps) per block.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;

template <typename T>
struct TypeTag {
  using type = T;
};

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Sum over the 32 lanes of a warp; every lane gets the total. All lanes must call it.
// The butterfly order is fixed, so the result is deterministic.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum over a 1-D block of kThreads threads; the total is valid in thread 0. All threads must
// call it (it synchronizes). Called at most once per kernel, so `partial` needs no reset.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T partial[kWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? partial[lane] : T(0);
    v = warp_sum(v);
  }
  return v;
}

// VEC consecutive elements, aligned for one vector load / store (16 bytes for VEC > 1).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <int VEC, typename T>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <int VEC, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, VEC>& pack) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = pack;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace cuda
}  // namespace senet_kernels
