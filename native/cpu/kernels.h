// The CPU kernels. Each is a plain function over Views (see core/view.h): no N-API, no
// allocation of tensors, no ownership. Every kernel source in native/cpu is compiled once per
// instruction-set level (generic x86-64/other, AVX2+FMA, AVX-512 with BF16) into its own
// namespace; dispatch.cpp picks one at run time from what the processor reports.
//
// Preconditions are checked by the dispatchers in native/ops: shapes agree, dtypes are
// supported, and where a kernel says "contiguous" its views are row-major contiguous.
#pragma once
#include <cstdint>

#include "../core/attention.h"
#include "../core/ops.h"
#include "../core/view.h"
#include "../generated/kernels.h"

namespace dualroute {
namespace cpu {

// DR_CPU_KERNELS(X) comes from the op table (native/optable.js, via native/generated/kernels.h):
// X(return type, name, parameter list, argument list), one per kernel, with its contract.
#define DR_DECLARE_KERNEL(ret, name, params, args) ret name params;
DR_CPU_KERNELS(DR_DECLARE_KERNEL)

// The ISA variants; dispatch.cpp forwards the functions above to one of them.
namespace generic { DR_CPU_KERNELS(DR_DECLARE_KERNEL) }
#if defined(__x86_64__) || defined(_M_X64)
#define DR_CPU_HAS_X86_VARIANTS 1
namespace avx2 { DR_CPU_KERNELS(DR_DECLARE_KERNEL) }
namespace avx512 { DR_CPU_KERNELS(DR_DECLARE_KERNEL) }
#endif
#undef DR_DECLARE_KERNEL

// "avx512", "avx2" or "generic": the variant in use (DUALROUTE_CPU_ISA may lower it).
const char* isa_name();
// "avx512bf16 avx512f avx2 fma" and so on: what the processor reports.
const char* cpu_features();

// Kernel calls that wrote their output around the caches (prefetch.h's stream_stores), for the
// tests that mean to cover that path: native.cpuStats().bypassedOutputs.
int64_t bypassed_outputs();
void count_bypassed_output();

}  // namespace cpu
}  // namespace dualroute

// In kernel sources: the namespace of the variant being compiled.
#ifndef DR_ISA
#define DR_ISA generic
#endif
