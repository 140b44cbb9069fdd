// Software prefetch of one unrolled step (two vectors from element i) of a row, shared by the
// row kernels (norm.cpp, softmax.cpp, backward.cpp): while a pass works from cache, the next
// row's lines are fetched (one prefetch per 64 bytes), for reading or for writing.
#pragma once
#include <cstdint>

#include "simd.h"

namespace dualroute {
namespace cpu {
namespace DR_ISA {

template <typename T>
inline void prefetch_r(const T* p, int64_t i) {
  constexpr int kBytes = 2 * kVecF * static_cast<int>(sizeof(T));  // one step of two vectors
  for (int b = 0; b < kBytes; b += 64) __builtin_prefetch(reinterpret_cast<const char*>(p + i) + b, 0, 3);
}
template <typename T>
inline void prefetch_w(T* p, int64_t i) {
  constexpr int kBytes = 2 * kVecF * static_cast<int>(sizeof(T));
  for (int b = 0; b < kBytes; b += 64) __builtin_prefetch(reinterpret_cast<char*>(p + i) + b, 1, 3);
}

// The same into L2 only (prefetcht1): for a row kernel that streams several arrays and does
// enough arithmetic a vector that a prefetch into L1 is evicted, or holds up its fill buffers,
// before the row reaches it (SwiGLU forward: 78-84 GB/s over 96 MiB against 66-81 into L1,
// the two forms alternated call by call in one process, 4 runs).
template <typename T>
inline void prefetch_r4_l2(const T* p, int64_t i) {
  constexpr int kBytes = 4 * kVecF * static_cast<int>(sizeof(T));
  for (int b = 0; b < kBytes; b += 64) __builtin_prefetch(reinterpret_cast<const char*>(p + i) + b, 0, 2);
}
template <typename T>
inline void prefetch_w4_l2(T* p, int64_t i) {
  constexpr int kBytes = 4 * kVecF * static_cast<int>(sizeof(T));
  for (int b = 0; b < kBytes; b += 64) __builtin_prefetch(reinterpret_cast<char*>(p + i) + b, 1, 2);
}

// The same for a step of four vectors from element i (two calls of the above).
template <typename T>
inline void prefetch_r4(const T* p, int64_t i) {
  prefetch_r(p, i);
  prefetch_r(p, i + 2 * kVecF);
}
template <typename T>
inline void prefetch_w4(T* p, int64_t i) {
  prefetch_w(p, i);
  prefetch_w(p, i + 2 * kVecF);
}

}  // namespace DR_ISA
}  // namespace cpu
}  // namespace dualroute
