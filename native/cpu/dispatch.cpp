// Picks the CPU kernel variant once, from cpuid, and forwards every kernel to it.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels.h"

namespace dualroute {
namespace cpu {
namespace {

enum class Isa { Generic, Avx2, Avx512 };

struct Detected {
  Isa isa = Isa::Generic;
  std::string features;
};

const Detected& detected() {
  static const Detected d = [] {
    Detected r;
#if defined(DR_CPU_HAS_X86_VARIANTS)
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    bool bf16 = __builtin_cpu_supports("avx512bf16");
    if (avx512) r.features += "avx512f avx512bw avx512vl avx512dq ";
    if (bf16) r.features += "avx512bf16 ";
    if (avx2) r.features += "avx2 fma ";
    r.isa = avx512 ? Isa::Avx512 : avx2 ? Isa::Avx2 : Isa::Generic;
    if (const char* want = std::getenv("DUALROUTE_CPU_ISA")) {
      if (!std::strcmp(want, "generic")) r.isa = Isa::Generic;
      else if (!std::strcmp(want, "avx2") && avx2) r.isa = Isa::Avx2;
    }
#endif
    if (!r.features.empty()) r.features.pop_back();
    return r;
  }();
  return d;
}

}  // namespace

namespace {
std::atomic<int64_t> g_bypassed{0};
}  // namespace
int64_t bypassed_outputs() { return g_bypassed.load(std::memory_order_relaxed); }
void count_bypassed_output() { g_bypassed.fetch_add(1, std::memory_order_relaxed); }

const char* isa_name() {
  switch (detected().isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "generic";
  }
}

const char* cpu_features() { return detected().features.c_str(); }

#if defined(DR_CPU_HAS_X86_VARIANTS)
#define DR_FORWARD_KERNEL(ret, name, params, args) \
  ret name params {                                \
    switch (detected().isa) {                      \
      case Isa::Avx512: return avx512::name args;  \
      case Isa::Avx2: return avx2::name args;      \
      default: return generic::name args;          \
    }                                              \
  }
#else
#define DR_FORWARD_KERNEL(ret, name, params, args) \
  ret name params { return generic::name args; }
#endif
DR_CPU_KERNELS(DR_FORWARD_KERNEL)
#undef DR_FORWARD_KERNEL

}  // namespace cpu
}  // namespace dualroute
