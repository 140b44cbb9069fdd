// Host emulation of the CUDA device features used by the bf16 tensor-core attention kernels
// (native/cuda/attention.cu, native/cuda/attention_bwd.cu), enough to run them unchanged on a
// CPU: every thread of a block is a fiber on its own stack; a scheduler resumes fibers until
// each one waits at a warp collective (ldmatrix, mma, shfl, ballot), a block barrier or exit,
// then completes the collectives and barriers.
//
// Checked (a violation prints "emu: ..." with the block, thread and source line, and exits 2):
//  - warp collectives: all 32 lanes at the same operation from the same source line, full
//    mask; no lane exited or waiting at a barrier (that is a divergence deadlock);
//  - block barriers: every thread at a barrier of the same kind and source line; none exited;
//  - ldmatrix / cp.async: 16-byte alignment, inside the dynamic shared memory (cp.async sources
//    inside a registered global buffer);
//  - cp.async ordering (16-byte granularity): no read of bytes whose copy is in flight; no read
//    by another thread of landed bytes before a barrier; no copy to bytes another thread read,
//    or another thread's copy landed in, since the last barrier; no thread exits with copies
//    not waited for;
//  - deadlock (no thread can proceed).
// Shared memory starts filled with 0xff (a bf16 NaN) so reads of unwritten data show.
//
// Not modelled: timing, the memory model beyond "plain shared / global accesses are visible at
// once" (races on plain loads / stores show only through the scheduling orders), blocks run one
// after another. The PTX semantics (fragment layouts, wait_group) are our reading of the ISA.
#pragma once
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <source_location>
#include <type_traits>
#include <vector>

// ---- language surface -------------------------------------------------------------------------
// CUDA's math library names at global scope, as device code calls them
using std::isfinite;
using std::isnan;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 800
#endif

struct alignas(8) uint2 { uint32_t x, y; };
struct alignas(16) uint4 { uint32_t x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline int2 make_int2(int a, int b) { return {a, b}; }
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

// bfloat16: bits only; conversions round to nearest even like the cuda_bf16.h *_rn functions.
struct __nv_bfloat16 { uint16_t x; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
inline uint16_t f2bf(float f) {
  if (std::isnan(f)) return 0x7fc0;
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf2f(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {f2bf(f)}; }
inline unsigned __float_as_uint(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  return u;
}
inline float __bfloat162float(__nv_bfloat16 v) { return bf2f(v.x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {{f2bf(a)}, {f2bf(b)}}; }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {bf2f(v.x.x), bf2f(v.y.x)}; }

// Device min / max overloads (the kernels call them unqualified).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

// ---- emulator core ----------------------------------------------------------------------------
namespace emu {

struct Dim3 { unsigned x = 0, y = 0, z = 0; };

// What a thread waits for (Ready: runnable).
enum class Op : uint8_t { Ready, Ldm, LdmT, Mma, Shfl, Ballot, SyncWarp, Bar, BarOr, Done };

struct Copy {
  uint32_t dst;
  const void* src;
  bool pred;
};

struct Thread {
  void* sp = nullptr;  // saved stack pointer while switched out
  Op op = Op::Ready;
  unsigned line = 0, col = 0;  // call site of the thread's latest emulated call (its wait, when parked)
  const char* file = "";
  int id = 0;
  Dim3 tidx;
  // collective operands and results
  uint32_t addr = 0, a[4] = {}, b[2] = {}, val = 0;
  float c[4] = {};
  int arg = 0, pred = 0;
  uint32_t r[4] = {};
  float d[4] = {};
  size_t static_off = 0;  // bump offset of the thread's __shared__ declarations
  std::vector<Copy> open;                  // issued, not committed
  std::vector<std::vector<Copy>> groups;   // committed groups, oldest first
};

enum class Sched : uint8_t {
  RoundRobin,  // threads in order, each to its next wait; warps stay in near lockstep
  WarpGreedy,  // warps in random order, each run as far as it goes before the next
  Shuffle,     // threads in a fresh random order every pass
};
enum class CpTiming : uint8_t {
  Eager,  // a cp.async writes shared memory when issued
  Late,   // ... when the wait_group that retires its group runs
};
const char* sched_name(Sched s);
const char* cp_name(CpTiming c);

struct LaunchCfg {
  const char* kernel = "kernel";
  unsigned grid = 1, block = 32;
  size_t dyn_smem = 0;
  Sched sched = Sched::RoundRobin;
  CpTiming cp = CpTiming::Eager;
  uint64_t seed = 1;  // random orders (and the block order, shuffled unless RoundRobin)
};

extern Thread* g_cur;
extern Dim3 g_block_idx, g_grid_dim, g_block_dim;
extern CpTiming g_cp;

[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Notes the call site of an emulated operation (for messages).
inline void at(const std::source_location& w) {
  g_cur->line = w.line();
  g_cur->col = w.column();
  g_cur->file = w.file_name();
}
// Switch from the current thread to the scheduler until its wait is completed.
void park(Op op, const std::source_location& w);
// Runs every block of the grid; body() is the kernel call made by each thread.
void launch_raw(const LaunchCfg& cfg, void (*body)(void*), void* ctx);
template <class F>
void launch(const LaunchCfg& cfg, F&& body) {
  using Fn = std::remove_reference_t<F>;
  launch_raw(cfg, [](void* f) { (*static_cast<Fn*>(f))(); }, const_cast<void*>(static_cast<const void*>(&body)));
}

// Global buffers that cp.async may read (empty: not checked).
void register_global(const void* p, size_t bytes, const char* name);
void clear_globals();

// Shared memory of the running block: dynamic area, and the static __shared__ arrays.
unsigned char* dyn_smem();
void* static_smem(size_t bytes, size_t align);
template <class T>
T* static_smem(size_t count) {
  return static_cast<T*>(static_smem(count * sizeof(T), alignof(T)));
}
uint32_t smem_offset(const void* p);

void cp_issue(uint32_t dst, const void* src, bool pred);
void cp_commit();
void cp_wait(int n);

// record_bad positions seen since the last clear.
extern std::vector<long long> g_bad;

}  // namespace emu

#define threadIdx (::emu::g_cur->tidx)
#define blockIdx (::emu::g_block_idx)
#define gridDim (::emu::g_grid_dim)
#define blockDim (::emu::g_block_dim)

// ---- intrinsics ---------------------------------------------------------------------------------
// Block barriers and warp collectives take the caller's source location (a default argument) so
// that lanes / threads meeting at different call sites are reported.
using emu_loc = std::source_location;

inline void __syncthreads(const emu_loc& w = emu_loc::current()) {
  emu::g_cur->pred = 0;
  emu::park(emu::Op::Bar, w);
}
inline int __syncthreads_or(int p, const emu_loc& w = emu_loc::current()) {
  emu::g_cur->pred = p != 0;
  emu::park(emu::Op::BarOr, w);
  return static_cast<int>(emu::g_cur->r[0]);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const emu_loc& w = emu_loc::current()) {
  if (mask != 0xffffffffu) emu::fail("__syncwarp: only the full mask is emulated");
  emu::park(emu::Op::SyncWarp, w);
}
inline unsigned __ballot_sync(unsigned mask, int p, const emu_loc& w = emu_loc::current()) {
  if (mask != 0xffffffffu) emu::fail("__ballot_sync: only the full mask is emulated");
  emu::g_cur->pred = p != 0;
  emu::park(emu::Op::Ballot, w);
  return emu::g_cur->r[0];
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const emu_loc& w = emu_loc::current()) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "emu: 32- and 64-bit shuffles only");
  if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync: only the full mask is emulated");
  if (width != 32) emu::fail("__shfl_xor_sync: only width 32 is emulated");
  // a 64-bit shuffle is two 32-bit ones, as the hardware does it
  uint32_t words[2] = {0, 0};
  memcpy(words, &v, sizeof(T));
  for (size_t i = 0; i < sizeof(T) / 4; ++i) {
    memcpy(&emu::g_cur->val, &words[i], 4);
    emu::g_cur->arg = lane_mask;
    emu::park(emu::Op::Shfl, w);
    memcpy(&words[i], &emu::g_cur->r[0], 4);
  }
  T out;
  memcpy(&out, words, sizeof(T));
  return out;
}

// Atomics: a fiber is never switched out inside one, so plain read-modify-write is atomic.
// (float2 atomicAdd: sm_90; the backward takes it when built with __CUDA_ARCH__ >= 900.)
inline int atomicMin(int* p, int v) { const int o = *p; if (v < o) *p = v; return o; }
inline int atomicMax(int* p, int v) { const int o = *p; if (v > o) *p = v; return o; }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  const unsigned long long o = *p;
  if (v < o) *p = v;
  return o;
}
inline int atomicAdd(int* p, int v) { const int o = *p; *p = o + v; return o; }
inline float atomicAdd(float* p, float v) { const float o = *p; *p = o + v; return o; }
inline float2 atomicAdd(float2* p, float2 v) {
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0) emu::fail("atomicAdd(float2*) on an address that is not 8-byte aligned");
  const float2 o = *p;
  p->x = o.x + v.x;
  p->y = o.y + v.y;
  return o;
}

// ---- native/cuda/mma.cuh and device.cuh, as far as the kernels use them ---------------------------
namespace dualroute {
namespace cuda {
using bf16_t = __nv_bfloat16;

inline uint32_t smem_addr(const void* p) { return emu::smem_offset(p); }
inline void cp_async16(uint32_t dst, const void* src, bool pred, const emu_loc& w = emu_loc::current()) {
  emu::at(w);
  emu::cp_issue(dst, src, pred);
}
inline void cp_async_commit(const emu_loc& w = emu_loc::current()) {
  emu::at(w);
  emu::cp_commit();
}
template <int N>
inline void cp_async_wait(const emu_loc& w = emu_loc::current()) {
  static_assert(N >= 0, "cp.async.wait_group takes N >= 0");
  emu::at(w);
  emu::cp_wait(N);
}

inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, const emu_loc& w = emu_loc::current()) {
  emu::g_cur->addr = addr;
  emu::park(emu::Op::Ldm, w);
  for (int i = 0; i < 4; ++i) r[i] = emu::g_cur->r[i];
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr, const emu_loc& w = emu_loc::current()) {
  emu::g_cur->addr = addr;
  emu::park(emu::Op::LdmT, w);
  for (int i = 0; i < 4; ++i) r[i] = emu::g_cur->r[i];
}
// d += a (16x16, row) * b (16x8, col), bf16 in, f32 accumulate.
inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                     const emu_loc& w = emu_loc::current()) {
  emu::Thread* t = emu::g_cur;
  for (int i = 0; i < 4; ++i) {
    t->a[i] = a[i];
    t->c[i] = d[i];
  }
  t->b[0] = b0;
  t->b[1] = b1;
  emu::park(emu::Op::Mma, w);
  for (int i = 0; i < 4; ++i) d[i] = emu::g_cur->d[i];
}

// device.cuh's record_bad: atomicMin into the slot; the emulator also logs every call.
inline void record_bad(unsigned long long* slot, int64_t pos) {
  atomicMin(slot, static_cast<unsigned long long>(pos));
  emu::g_bad.push_back(pos);
}

}  // namespace cuda
}  // namespace dualroute
