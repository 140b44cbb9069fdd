// View: what every kernel sees of a tensor. Plain data, no ownership, shared by the CPU
// kernels, the dispatchers and the CUDA backend (it crosses the C ABI of libdualroute_cuda).
// `data` already points at element [0, ..., 0]; strides count elements, not bytes, and may
// be 0 (broadcast) but never negative.
#pragma once
#include <cstdint>

namespace dualroute {

constexpr int kMaxDims = 8;

struct View {
  void* data;
  int32_t dtype;  // DType
  int32_t ndim;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
};

inline int64_t view_numel(const View& v) {
  int64_t n = 1;
  for (int i = 0; i < v.ndim; ++i) n *= v.shape[i];
  return n;
}

// Row-major contiguous (size-1 dims may carry any stride).
inline bool view_contiguous(const View& v) {
  int64_t expect = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    if (v.shape[i] != 1 && v.strides[i] != expect) return false;
    expect *= v.shape[i];
  }
  return true;
}

}  // namespace dualroute
