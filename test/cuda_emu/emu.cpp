// The emulator's scheduler, warp collectives, barriers and cp.async model (see emu.h).
#include "emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <random>
#include <string>

#if !defined(__x86_64__) || defined(EMU_UCONTEXT)
#include <ucontext.h>
#endif

namespace emu {

Thread* g_cur = nullptr;
Dim3 g_block_idx, g_grid_dim, g_block_dim;
CpTiming g_cp = CpTiming::Eager;
std::vector<long long> g_bad;

namespace {

constexpr size_t kStack = 256 * 1024;   // per fiber, below a guard page
constexpr size_t kStaticSmem = 48 * 1024;  // room for the static __shared__ arrays (the CUDA limit)
constexpr size_t kSmemGuard = 1024;     // bytes after the dynamic shared memory that must stay intact
constexpr unsigned char kGuardByte = 0xa5;

const char* g_kernel = "";
std::vector<Thread> g_threads;
bool g_in_fiber = false;
void (*g_body)(void*) = nullptr;
void* g_ctx = nullptr;

// Shared memory of the running block.
std::vector<unsigned char> g_smem_buf;
unsigned char* g_dyn = nullptr;
size_t g_dyn_size = 0;
alignas(16) unsigned char g_static[kStaticSmem];

// cp.async bookkeeping per 16-byte chunk of dynamic shared memory; epoch counts barriers.
struct Chunk {
  int pend = -1;        // thread whose copy to the chunk is in flight
  int land_tid = -1;    // thread whose wait retired the last copy ...
  uint32_t land_ep = 0; // ... in this epoch
  int rd_tid = -1;      // thread that read the chunk (-2: several) ...
  uint32_t rd_ep = 0;   // ... in this epoch
};
std::vector<Chunk> g_chunks;
uint32_t g_epoch = 1;

struct Range {
  uintptr_t lo, hi;
  const char* name;
};
std::vector<Range> g_globals;

// Two waits at the same call site (line, column and file of the intrinsic's caller).
bool same_site(const Thread& a, const Thread& b) {
  return a.line == b.line && a.col == b.col && (a.file == b.file || strcmp(a.file, b.file) == 0);
}

const char* op_name(Op o) {
  switch (o) {
    case Op::Ready: return "running";
    case Op::Ldm: return "ldmatrix";
    case Op::LdmT: return "ldmatrix.trans";
    case Op::Mma: return "mma";
    case Op::Shfl: return "shfl.xor";
    case Op::Ballot: return "ballot";
    case Op::SyncWarp: return "syncwarp";
    case Op::Bar: return "__syncthreads";
    case Op::BarOr: return "__syncthreads_or";
    case Op::Done: return "exited";
  }
  return "?";
}
bool is_warp_op(Op o) { return o >= Op::Ldm && o <= Op::SyncWarp; }
bool is_bar(Op o) { return o == Op::Bar || o == Op::BarOr; }
const char* base_name(const char* f) {
  const char* s = strrchr(f, '/');
  return s ? s + 1 : f;
}

// ---- fibers ------------------------------------------------------------------------------------
std::vector<unsigned char*> g_stacks;

unsigned char* stack_top(int i) {
  while (static_cast<int>(g_stacks.size()) <= i) {
    const long page = sysconf(_SC_PAGESIZE);
    void* m = mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      fprintf(stderr, "emu: mmap of a fiber stack failed\n");
      _exit(2);
    }
    mprotect(m, page, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    g_stacks.push_back(static_cast<unsigned char*>(m) + page + kStack);
  }
  return g_stacks[i];
}

void fiber_main();

#if defined(__x86_64__) && !defined(EMU_UCONTEXT)
// emu_switch(save, load): push the callee-saved registers, store rsp to *save, load rsp, pop,
// return into the other fiber. No signal mask, so no system call; MXCSR / x87 control words are
// not switched (nothing here changes them).
extern "C" void emu_switch(void** save, void* load);
asm(R"(
  .text
  .p2align 4
  .globl emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
void* g_sched_sp = nullptr;

void fiber_init(int i) {
  // A frame emu_switch can "return" into: six zero registers, then fiber_main's address; rsp
  // at fiber_main's entry is 8 mod 16, as after a call.
  void** s = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(stack_top(i)) & ~uintptr_t(15));
  s[-1] = nullptr;
  s[-2] = reinterpret_cast<void*>(&fiber_main);
  for (int k = 3; k <= 8; ++k) s[-k] = nullptr;
  g_threads[i].sp = &s[-8];
}
inline void to_fiber(Thread& t) { emu_switch(&g_sched_sp, t.sp); }
inline void to_sched(Thread& t) { emu_switch(&t.sp, g_sched_sp); }
#else
// Portable fallback (slow: swapcontext saves the signal mask with a system call).
ucontext_t g_sched_uc;
std::vector<ucontext_t> g_ucs;
void fiber_init(int i) {
  if (g_ucs.size() < g_threads.size()) g_ucs.resize(g_threads.size());
  ucontext_t& uc = g_ucs[i];
  getcontext(&uc);
  uc.uc_stack.ss_sp = stack_top(i) - kStack;
  uc.uc_stack.ss_size = kStack;
  uc.uc_link = nullptr;
  makecontext(&uc, fiber_main, 0);
}
inline void to_fiber(Thread& t) { swapcontext(&g_sched_uc, &g_ucs[t.id]); }
inline void to_sched(Thread& t) { swapcontext(&g_ucs[t.id], &g_sched_uc); }
#endif

void fiber_main() {
  g_body(g_ctx);
  Thread& t = *g_cur;
  if (!t.open.empty() || !t.groups.empty())
    fail("thread exits with cp.async copies not waited for (%zu uncommitted, %zu groups)", t.open.size(),
         t.groups.size());
  t.op = Op::Done;
  to_sched(t);
  abort();  // never resumed
}

void resume(Thread& t) {
  g_cur = &t;
  g_in_fiber = true;
  to_fiber(t);
  g_in_fiber = false;
}

// ---- shared memory -----------------------------------------------------------------------------
uint16_t sm16(uint32_t a) {
  uint16_t v;
  memcpy(&v, g_dyn + a, 2);
  return v;
}

void do_copy(const Copy& c) {
  if (c.pred)
    memcpy(g_dyn + c.dst, c.src, 16);
  else
    memset(g_dyn + c.dst, 0, 16);
}

// Lane `tid` of an ldmatrix reads the 16 bytes at `a`.
void check_read(int tid, uint32_t a, const Thread& w) {
  if (a % 16 != 0 || a + 16 > g_dyn_size) {
    g_cur = &g_threads[tid];
    g_in_fiber = true;
    fail("%s row address %u is %s (dynamic shared memory: %zu bytes)", op_name(w.op), a,
         a % 16 ? "not 16-byte aligned" : "out of range", g_dyn_size);
  }
  Chunk& c = g_chunks[a / 16];
  if (c.pend >= 0 || (c.land_ep == g_epoch && c.land_tid != tid)) {
    g_cur = &g_threads[tid];
    g_in_fiber = true;
    if (c.pend >= 0)
      fail("%s reads shared bytes [%u, %u) while thread %d's cp.async to them is in flight (wait_group missing?)",
           op_name(w.op), a, a + 16, c.pend);
    fail("%s reads shared bytes [%u, %u) that thread %d's cp.async wait landed with no barrier since", op_name(w.op),
         a, a + 16, c.land_tid);
  }
  if (c.rd_ep == g_epoch && c.rd_tid != tid) {
    c.rd_tid = -2;
  } else {
    c.rd_ep = g_epoch;
    c.rd_tid = tid;
  }
}

// ---- warp collectives --------------------------------------------------------------------------
// All 32 lanes of L wait at a collective: check they meet at one, then complete it.
void warp_op(Thread* L) {
  const Op op = L[0].op;
  for (int l = 1; l < 32; ++l)
    if (L[l].op != op || !same_site(L[l], L[0])) {
      g_cur = &L[l];
      g_in_fiber = true;
      fail("warp divergence: lane %d at %s (%s:%u), lane 0 at %s (%s:%u)", l, op_name(L[l].op), base_name(L[l].file),
           L[l].line, op_name(op), base_name(L[0].file), L[0].line);
    }
  switch (op) {
    case Op::Ldm:
    case Op::LdmT:
      // Lanes 8m..8m+7 address the 8 rows of matrix m. Plain: lane (g, t) gets row g, cols 2t,
      // 2t+1 of each matrix; .trans: rows 2t, 2t+1 of column g (the stored matrix transposed).
      for (int l = 0; l < 32; ++l) check_read(L[l].id, L[l].addr, L[l]);
      for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        for (int m = 0; m < 4; ++m) {
          uint16_t lo, hi;
          if (op == Op::Ldm) {
            const uint32_t row = L[m * 8 + g].addr;
            lo = sm16(row + 4 * t);
            hi = sm16(row + 4 * t + 2);
          } else {
            lo = sm16(L[m * 8 + 2 * t].addr + 2 * g);
            hi = sm16(L[m * 8 + 2 * t + 1].addr + 2 * g);
          }
          L[l].r[m] = lo | static_cast<uint32_t>(hi) << 16;
        }
      }
      break;
    case Op::Mma: {
      // m16n8k16 row.col: A a0..a3 = (g, 2t..) (g+8, 2t..) (g, 8+2t..) (g+8, 8+2t..); B b0 b1 =
      // (k 2t.., n g) (k 8+2t.., n g); C / D c0 c1 = (g, 2t..), c2 c3 = (g+8, 2t..); the low
      // half of a register is the lower column / k. Products are exact; the sum is rounded once.
      float A[16][16], B[16][8];
      double C[16][8];
      auto lo = [](uint32_t v) { return bf2f(static_cast<uint16_t>(v & 0xffff)); };
      auto hi = [](uint32_t v) { return bf2f(static_cast<uint16_t>(v >> 16)); };
      for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        const Thread& T = L[l];
        A[g][2 * t] = lo(T.a[0]);
        A[g][2 * t + 1] = hi(T.a[0]);
        A[g + 8][2 * t] = lo(T.a[1]);
        A[g + 8][2 * t + 1] = hi(T.a[1]);
        A[g][8 + 2 * t] = lo(T.a[2]);
        A[g][9 + 2 * t] = hi(T.a[2]);
        A[g + 8][8 + 2 * t] = lo(T.a[3]);
        A[g + 8][9 + 2 * t] = hi(T.a[3]);
        B[2 * t][g] = lo(T.b[0]);
        B[2 * t + 1][g] = hi(T.b[0]);
        B[8 + 2 * t][g] = lo(T.b[1]);
        B[9 + 2 * t][g] = hi(T.b[1]);
        C[g][2 * t] = T.c[0];
        C[g][2 * t + 1] = T.c[1];
        C[g + 8][2 * t] = T.c[2];
        C[g + 8][2 * t + 1] = T.c[3];
      }
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 8; ++j) {
          double s = C[i][j];
          for (int k = 0; k < 16; ++k) s += static_cast<double>(A[i][k] * B[k][j]);
          C[i][j] = s;
        }
      for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        L[l].d[0] = static_cast<float>(C[g][2 * t]);
        L[l].d[1] = static_cast<float>(C[g][2 * t + 1]);
        L[l].d[2] = static_cast<float>(C[g + 8][2 * t]);
        L[l].d[3] = static_cast<float>(C[g + 8][2 * t + 1]);
      }
      break;
    }
    case Op::Shfl: {
      uint32_t v[32];
      for (int l = 0; l < 32; ++l) v[l] = L[l].val;
      for (int l = 0; l < 32; ++l) L[l].r[0] = v[(l ^ L[l].arg) & 31];
      break;
    }
    case Op::Ballot: {
      uint32_t m = 0;
      for (int l = 0; l < 32; ++l)
        if (L[l].pred) m |= 1u << l;
      for (int l = 0; l < 32; ++l) L[l].r[0] = m;
      break;
    }
    case Op::SyncWarp:
      break;
    default:
      abort();
  }
  for (int l = 0; l < 32; ++l) L[l].op = Op::Ready;
}

// Completes warp w's collective if all its lanes wait at one.
bool try_warp(int w) {
  Thread* L = &g_threads[w * 32];
  for (int l = 0; l < 32; ++l)
    if (!is_warp_op(L[l].op)) return false;
  warp_op(L);
  return true;
}

// No thread can run: name the first stuck warp collective, else the barrier state.
[[noreturn]] void deadlock() {
  const int n = static_cast<int>(g_threads.size());
  for (int w = 0; w * 32 < n; ++w) {
    Thread* L = &g_threads[w * 32];
    int c = -1, o = -1;
    for (int l = 0; l < 32; ++l) (is_warp_op(L[l].op) ? c : o) = l;
    if (c >= 0 && o >= 0) {
      g_cur = &L[c];
      g_in_fiber = true;
      fail("warp divergence: lane %d waits at %s (%s:%u) while lane %d is %s%s%s", c, op_name(L[c].op),
           base_name(L[c].file), L[c].line, o, op_name(L[o].op), L[o].op == Op::Done ? "" : " at ",
           L[o].op == Op::Done ? "" : base_name(L[o].file));
    }
  }
  fail("deadlock: no thread can proceed");
}

}  // namespace

const char* sched_name(Sched s) {
  return s == Sched::RoundRobin ? "rr" : s == Sched::WarpGreedy ? "warp" : "shuffle";
}
const char* cp_name(CpTiming c) { return c == CpTiming::Eager ? "eager" : "late"; }

void fail(const char* fmt, ...) {
  fflush(stdout);
  if (g_in_fiber && g_cur) {
    const Thread& t = *g_cur;
    fprintf(stderr, "emu: %s block %u thread %d (warp %d lane %d)", g_kernel, g_block_idx.x, t.id, t.id / 32,
            t.id % 32);
    if (t.line) fprintf(stderr, " at %s:%u", base_name(t.file), t.line);
  } else {
    fprintf(stderr, "emu: %s block %u", g_kernel, g_block_idx.x);
  }
  fprintf(stderr, ": ");
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  fflush(stderr);
  _exit(2);
}

void park(Op op, const std::source_location& w) {
  Thread& t = *g_cur;
  t.op = op;
  t.line = w.line();
  t.col = w.column();
  t.file = w.file_name();
  to_sched(t);
}

void register_global(const void* p, size_t bytes, const char* name) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  g_globals.push_back({a, a + bytes, name});
}
void clear_globals() { g_globals.clear(); }

unsigned char* dyn_smem() { return g_dyn; }

void* static_smem(size_t bytes, size_t align) {
  Thread& t = *g_cur;
  const size_t off = (t.static_off + align - 1) / align * align;
  if (off + bytes > kStaticSmem) fail("static __shared__ arrays exceed the emulator's %zu bytes", kStaticSmem);
  t.static_off = off + bytes;
  return g_static + off;
}

uint32_t smem_offset(const void* p) {
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (c < g_dyn || c > g_dyn + g_dyn_size)
    fail("smem_addr of a pointer outside the dynamic shared memory (static __shared__ is not emulated there)");
  return static_cast<uint32_t>(c - g_dyn);
}

void cp_issue(uint32_t dst, const void* src, bool pred) {
  Thread& t = *g_cur;
  if (dst % 16 != 0 || dst + 16 > g_dyn_size)
    fail("cp.async destination %u is %s (dynamic shared memory: %zu bytes)", dst,
         dst % 16 ? "not 16-byte aligned" : "out of range", g_dyn_size);
  if (pred) {
    const uintptr_t s = reinterpret_cast<uintptr_t>(src);
    if (s % 16 != 0) fail("cp.async source %p is not 16-byte aligned", src);
    if (!g_globals.empty()) {
      bool in = false;
      for (const Range& r : g_globals) in |= s >= r.lo && s + 16 <= r.hi;
      if (!in) fail("cp.async reads 16 bytes at %p, outside every global buffer", src);
    }
  }
  Chunk& c = g_chunks[dst / 16];
  if (c.pend >= 0)
    fail("cp.async to shared bytes [%u, %u) while thread %d's copy to them is in flight", dst, dst + 16, c.pend);
  if (c.rd_ep == g_epoch && c.rd_tid != t.id)
    fail("cp.async overwrites shared bytes [%u, %u) that %s read since the last barrier", dst, dst + 16,
         c.rd_tid == -2 ? "several threads" : ("thread " + std::to_string(c.rd_tid)).c_str());
  if (c.land_ep == g_epoch && c.land_tid != t.id)
    fail("cp.async to shared bytes [%u, %u) that thread %d's copy landed in since the last barrier", dst, dst + 16,
         c.land_tid);
  c.pend = t.id;
  const Copy cp{dst, src, pred};
  if (g_cp == CpTiming::Eager) do_copy(cp);
  t.open.push_back(cp);
}

void cp_commit() {
  Thread& t = *g_cur;
  t.groups.push_back(std::move(t.open));  // an empty group is legal
  t.open.clear();
}

// cp.async.wait_group n: every committed group but the n most recent is complete.
void cp_wait(int n) {
  Thread& t = *g_cur;
  const size_t keep = static_cast<size_t>(n);
  size_t k = 0;
  for (; k + keep < t.groups.size(); ++k)
    for (const Copy& cp : t.groups[k]) {
      if (g_cp == CpTiming::Late) do_copy(cp);
      Chunk& c = g_chunks[cp.dst / 16];
      c.pend = -1;
      c.land_tid = t.id;
      c.land_ep = g_epoch;
    }
  t.groups.erase(t.groups.begin(), t.groups.begin() + static_cast<long>(k));
}

void launch_raw(const LaunchCfg& cfg, void (*body)(void*), void* ctx) {
  const int n = static_cast<int>(cfg.block);
  if (n <= 0 || n % 32 != 0 || n > 1024) {
    fprintf(stderr, "emu: %s: block of %d threads (a multiple of 32 up to 1024 is emulated)\n", cfg.kernel, n);
    _exit(2);
  }
  g_kernel = cfg.kernel;
  g_body = body;
  g_ctx = ctx;
  g_cp = cfg.cp;
  g_threads.assign(static_cast<size_t>(n), Thread{});
  g_smem_buf.assign(cfg.dyn_smem + kSmemGuard + 128, 0);
  g_dyn = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(g_smem_buf.data()) + 127) & ~uintptr_t(127));
  g_dyn_size = cfg.dyn_smem;
  g_grid_dim = {cfg.grid, 1, 1};
  g_block_dim = {cfg.block, 1, 1};
  std::mt19937_64 rng(cfg.seed);
  std::vector<unsigned> blocks(cfg.grid);
  for (unsigned i = 0; i < cfg.grid; ++i) blocks[i] = i;
  if (cfg.sched != Sched::RoundRobin) std::shuffle(blocks.begin(), blocks.end(), rng);
  std::vector<int> order(static_cast<size_t>(n));
  const int nw = n / 32;
  std::vector<int> warps(static_cast<size_t>(nw));

  for (unsigned bi : blocks) {
    g_block_idx = {bi, 0, 0};
    memset(g_dyn, 0xff, g_dyn_size);
    memset(g_dyn + g_dyn_size, kGuardByte, kSmemGuard);
    memset(g_static, 0xff, sizeof g_static);
    g_chunks.assign(g_dyn_size / 16 + 1, Chunk{});
    g_epoch = 1;
    for (int i = 0; i < n; ++i) {
      Thread& t = g_threads[i];
      t.op = Op::Ready;
      t.id = i;
      t.tidx = {static_cast<unsigned>(i), 0, 0};
      t.static_off = 0;
      t.line = t.col = 0;
      t.file = "";
      t.open.clear();
      t.groups.clear();
      fiber_init(i);
    }
    for (;;) {
      bool progress = false;
      if (cfg.sched == Sched::WarpGreedy) {
        for (int w = 0; w < nw; ++w) warps[w] = w;
        std::shuffle(warps.begin(), warps.end(), rng);
        for (int w : warps)
          for (;;) {  // run warp w until its lanes wait at a barrier or exit
            bool p = false;
            for (int l = 0; l < 32; ++l) {
              Thread& t = g_threads[w * 32 + l];
              if (t.op == Op::Ready) {
                resume(t);
                p = true;
              }
            }
            p |= try_warp(w);
            progress |= p;
            if (!p) break;
          }
      } else {
        for (int i = 0; i < n; ++i) order[i] = i;
        if (cfg.sched == Sched::Shuffle) std::shuffle(order.begin(), order.end(), rng);
        for (int i : order) {
          Thread& t = g_threads[i];
          if (t.op == Op::Ready) {
            resume(t);
            progress = true;
          }
        }
        for (int w = 0; w < nw; ++w) progress |= try_warp(w);
      }
      int done = 0, bar = 0, bar_or = 0;
      for (const Thread& t : g_threads) {
        done += t.op == Op::Done;
        bar += t.op == Op::Bar;
        bar_or += t.op == Op::BarOr;
      }
      if (done == n) break;
      if (bar + bar_or + done == n) {
        const Thread* first = nullptr;
        for (Thread& t : g_threads) {
          if (!is_bar(t.op)) continue;
          if (!first) {
            first = &t;
          } else if (t.op != first->op || !same_site(t, *first)) {
            g_cur = &t;
            g_in_fiber = true;
            fail("barrier mismatch: thread %d at %s (%s:%u), thread %d at %s (%s:%u)", t.id, op_name(t.op),
                 base_name(t.file), t.line, first->id, op_name(first->op), base_name(first->file), first->line);
          }
        }
        if (done) {
          g_cur = const_cast<Thread*>(first);
          g_in_fiber = true;
          fail("%s reached while %d threads of the block have exited", op_name(first->op), done);
        }
        uint32_t any = 0;
        for (const Thread& t : g_threads) any |= t.pred != 0;
        for (Thread& t : g_threads) {
          t.r[0] = any;
          t.op = Op::Ready;
        }
        ++g_epoch;
        progress = true;
      }
      if (!progress) deadlock();
    }
    // Plain stores past the shared arrays (ldmatrix and cp.async are checked as they run).
    for (size_t i = 0; i < kSmemGuard; ++i)
      if (g_dyn[g_dyn_size + i] != kGuardByte)
        fail("a store wrote byte %zu past the end of the %zu bytes of dynamic shared memory", i, g_dyn_size);
    size_t used = 0;
    for (const Thread& t : g_threads) used = std::max(used, t.static_off);
    for (size_t i = used; i < kStaticSmem; ++i)
      if (g_static[i] != 0xff) fail("a store wrote byte %zu past the %zu bytes of static __shared__ arrays", i - used, used);
  }
  g_cur = nullptr;
}

}  // namespace emu
