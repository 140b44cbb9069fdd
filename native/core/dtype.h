// Element types. The numeric values are shared with lib/dtype.ts and the CUDA backend.
#pragma once
#include <cstdint>
#include <cstring>

namespace dualroute {

enum class DType : int32_t { F32 = 0, F64 = 1, BF16 = 2, I32 = 3, Bool = 4 };
constexpr int kNumDTypes = 5;

inline int dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::Bool: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::BF16: return "bfloat16";
    case DType::I32: return "int32";
    case DType::Bool: return "bool";
  }
  return "?";
}

inline bool dtype_is_float(DType t) { return t == DType::F32 || t == DType::F64 || t == DType::BF16; }

// bfloat16: the top 16 bits of an IEEE float32. Conversion from float rounds to nearest
// even (NaN stays NaN), as PyTorch and the CUDA intrinsics do, so both backends agree bit for bit.
struct bf16 {
  uint16_t bits;
};

inline float bf16_to_float(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

}  // namespace dualroute
