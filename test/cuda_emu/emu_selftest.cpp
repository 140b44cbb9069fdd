// Tests of the emulator itself: tiny kernels that must trip each check (run in a forked child
// that has to exit with the expected "emu: ..." message), and the ldmatrix / mma / shfl / ballot /
// cp.async semantics against direct computations.
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

using namespace dualroute::cuda;
using harness::fmt;

namespace {

emu::LaunchCfg cfg(unsigned block, size_t smem, emu::Sched s = emu::Sched::RoundRobin,
                   emu::CpTiming cp = emu::CpTiming::Eager) {
  emu::LaunchCfg c;
  c.kernel = "selftest";
  c.block = block;
  c.dyn_smem = smem;
  c.sched = s;
  c.cp = cp;
  return c;
}

// Runs f in a child process; "" if it ends with exit code 2 and `want` in its stderr.
template <class F>
std::string expect_error(const char* want, F&& f) {
  int fd[2];
  if (pipe(fd) != 0) return "pipe failed";
  fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fd[0]);
    dup2(fd[1], 2);
    f();
    _exit(0);
  }
  close(fd[1]);
  std::string err;
  char buf[512];
  for (ssize_t k; (k = read(fd[0], buf, sizeof buf)) > 0;) err.append(buf, static_cast<size_t>(k));
  close(fd[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 2) return fmt("no emulator error (status %d), want \"%s\"", st, want);
  if (err.find(want) == std::string::npos) return fmt("wrong error, want \"%s\": %s", want, err.c_str());
  return "";
}

uint32_t lane() { return threadIdx.x & 31; }

std::vector<harness::Case> cases() {
  std::vector<harness::Case> c;
  auto add = [&](const char* name, std::function<std::string()> f) { c.push_back({std::string("emu/") + name, true, 1, f}); };

  // ---- checks that must fire ----
  add("divergent-ldmatrix", [] {
    return expect_error("warp divergence", [] {
      emu::launch(cfg(32, 1024), [] {
        uint32_t r[4];
        if (lane() < 16)
          ldmatrix_x4(r, lane() * 16);
        else
          ldmatrix_x4(r, lane() * 16);
      });
    });
  });
  add("divergent-mma-vs-ldmatrix", [] {
    return expect_error("warp divergence", [] {
      emu::launch(cfg(32, 1024), [] {
        uint32_t r[4] = {};
        float d[4] = {};
        if (lane() == 3) mma_bf16(d, r, 0, 0); else ldmatrix_x4(r, lane() * 16);
      });
    });
  });
  add("shfl-with-exited-lane", [] {
    return expect_error("while lane 0 is exited", [] {
      emu::launch(cfg(32, 0), [] {
        if (lane() == 0) return;
        (void)__shfl_xor_sync(0xffffffffu, 1.f, 1);
      });
    });
  });
  add("ballot-vs-barrier", [] {
    return expect_error("warp divergence", [] {
      emu::launch(cfg(64, 0), [] {
        if (lane() < 16) __syncthreads(); else (void)__ballot_sync(0xffffffffu, 1);
      });
    });
  });
  add("barrier-different-sites", [] {
    return expect_error("barrier mismatch", [] {
      emu::launch(cfg(64, 0), [] {
        if (threadIdx.x < 32) __syncthreads(); else __syncthreads();
      });
    });
  });
  add("barrier-mixed-kinds", [] {
    return expect_error("barrier mismatch", [] {
      emu::launch(cfg(64, 0), [] {
        if (threadIdx.x < 32) __syncthreads(); else (void)__syncthreads_or(1);
      });
    });
  });
  add("barrier-with-exited-threads", [] {
    return expect_error("have exited", [] {
      emu::launch(cfg(64, 0), [] {
        if (threadIdx.x >= 32) return;
        __syncthreads();
      });
    });
  });
  add("ldmatrix-misaligned", [] {
    return expect_error("not 16-byte aligned", [] {
      emu::launch(cfg(32, 1024), [] { uint32_t r[4]; ldmatrix_x4(r, lane() * 16 + 8); });
    });
  });
  add("ldmatrix-out-of-range", [] {
    return expect_error("out of range", [] {
      emu::launch(cfg(32, 256), [] { uint32_t r[4]; ldmatrix_x4(r, lane() * 16); });
    });
  });
  add("cp-async-misaligned-source", [] {
    alignas(16) static uint16_t g[64];
    return expect_error("source", [] {
      emu::launch(cfg(32, 1024), [] {
        cp_async16(lane() * 16, reinterpret_cast<const char*>(g) + 2, true);
        cp_async_commit();
        cp_async_wait<0>();
      });
    });
  });
  add("cp-async-outside-buffers", [] {
    return expect_error("outside every global buffer", [] {
      alignas(16) static uint16_t g[64];
      emu::clear_globals();
      emu::register_global(g, 64, "g");  // 64 of 128 bytes
      emu::launch(cfg(32, 1024), [] {
        if (lane() < 8) cp_async16(lane() * 16, g + lane() * 8, true);
        cp_async_commit();
        cp_async_wait<0>();
      });
    });
  });
  add("read-while-copy-in-flight", [] {
    return expect_error("in flight", [] {
      alignas(16) static uint16_t g[32 * 8];
      emu::launch(cfg(32, 1024), [] {
        cp_async16(lane() * 16, g + lane() * 8, true);
        cp_async_commit();
        __syncthreads();  // no wait_group
        uint32_t r[4];
        ldmatrix_x4(r, lane() * 16);
      });
    });
  });
  add("wait1-leaves-newest-group", [] {
    return expect_error("in flight", [] {
      alignas(16) static uint16_t g[64 * 8];
      emu::launch(cfg(32, 1024), [] {
        cp_async16(lane() * 16, g + lane() * 8, true);  // group 1: bytes [0, 512)
        cp_async_commit();
        cp_async16(512 + lane() * 16, g + 256 + lane() * 8, true);  // group 2: [512, 1024)
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        uint32_t r[4];
        ldmatrix_x4(r, lane() * 16);        // group 1: landed
        ldmatrix_x4(r, 512 + lane() * 16);  // group 2: still in flight
      });
    });
  });
  add("uncommitted-copies-not-waited", [] {
    return expect_error("in flight", [] {
      alignas(16) static uint16_t g[32 * 8];
      emu::launch(cfg(32, 1024), [] {
        cp_async_commit();
        cp_async16(lane() * 16, g + lane() * 8, true);  // after the last commit: no group
        cp_async_wait<0>();
        __syncthreads();
        uint32_t r[4];
        ldmatrix_x4(r, lane() * 16);
      });
    });
  });
  add("read-landed-without-barrier", [] {
    return expect_error("no barrier since", [] {
      alignas(16) static uint16_t g[32 * 8];
      emu::launch(cfg(32, 1024), [] {
        cp_async16(lane() * 16, g + lane() * 8, true);
        cp_async_commit();
        cp_async_wait<0>();
        uint32_t r[4];
        ldmatrix_x4(r, ((lane() + 1) % 32) * 16);  // another lane's copy, no barrier
      });
    });
  });
  add("copy-over-bytes-read-by-others", [] {
    return expect_error("read since the last barrier", [] {
      alignas(16) static uint16_t g[32 * 8];
      emu::launch(cfg(64, 1024), [] {
        uint32_t r[4];
        if (threadIdx.x < 32) ldmatrix_x4(r, lane() * 16);
        if (threadIdx.x >= 32) {
          (void)__shfl_xor_sync(0xffffffffu, 0, 1);  // completes after warp 0's ldmatrix
          cp_async16(lane() * 16, g + lane() * 8, true);  // no barrier since that read
        }
        cp_async_commit();
        cp_async_wait<0>();
      });
    });
  });
  add("exit-with-copies-pending", [] {
    return expect_error("not waited for", [] {
      alignas(16) static uint16_t g[32 * 8];
      emu::launch(cfg(32, 1024), [] {
        cp_async16(lane() * 16, g + lane() * 8, true);
        cp_async_commit();
      });
    });
  });
  add("store-past-dynamic-smem", [] {
    return expect_error("past the end", [] {
      emu::launch(cfg(32, 256), [] {
        unsigned char* s = emu::dyn_smem();
        if (threadIdx.x == 0) s[256 + 3] = 1;
      });
    });
  });

  // ---- semantics ----
  add("garbage-shared-memory", [] {
    bool ok = true;
    emu::launch(cfg(32, 256), [&] {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(emu::dyn_smem());
      ok &= s[threadIdx.x] == 0xffff && std::isnan(bf2f(s[threadIdx.x]));
    });
    return ok ? "" : "dynamic shared memory does not start as 0xff bytes";
  });
  add("shfl-ballot-syncthreads-or", [] {
    std::string e;
    emu::launch(cfg(64, 0), [&] {
      const int l = static_cast<int>(lane());
      const int x = __shfl_xor_sync(0xffffffffu, l * 10, 5);
      const unsigned b = __ballot_sync(0xffffffffu, l % 3 == 0);
      const int any = __syncthreads_or(threadIdx.x == 37);
      const int none = __syncthreads_or(0);
      if (x != (l ^ 5) * 10 || b != 0x49249249u || any != 1 || none != 0) e = fmt("lane %d: %d %08x %d %d", l, x, b, any, none);
    });
    return e;
  });
  // D = A B + C with A 16x16 [row][k] and B^T 8x16 [n][k] loaded as attention.cu does (plain
  // ldmatrix for both), and again with B 16x8 [k][n] through ldmatrix.trans.
  for (int trans = 0; trans < 2; ++trans)
    add(trans ? "mma-ldmatrix-trans" : "mma-ldmatrix", [trans] {
      std::mt19937 r(7 + trans);
      std::uniform_real_distribution<float> u(-2, 2);
      uint16_t A[16][16], B[16][16];  // B[k][n] (n < 16: two n-blocks)
      float C[16][16], got[16][16];
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
          A[i][j] = f2bf(u(r));
          B[i][j] = f2bf(u(r));
          C[i][j] = u(r);
        }
      constexpr int P = 24;  // pitch (bf16), rows 16-byte aligned
      for (auto sched : {emu::Sched::RoundRobin, emu::Sched::Shuffle})
        emu::launch(cfg(32, 2 * 16 * P * 2, sched), [&] {
          bf16_t* sA = reinterpret_cast<bf16_t*>(emu::dyn_smem());
          bf16_t* sB = sA + 16 * P;
          const int l = static_cast<int>(lane()), g = l >> 2, t = l & 3, mat = l >> 3, r8 = l & 7;
          for (int i = 0; i < 16; ++i) {  // each lane stores a slice
            if (i % 2 != l % 2) continue;
            for (int j = l / 2; j < 16; j += 16) {
              sA[i * P + j].x = A[i][j];
              sB[(trans ? i * P + j : j * P + i)].x = B[i][j];  // trans: [k][n]; else [n][k]
            }
          }
          __syncthreads();
          uint32_t a[4], b[4];
          ldmatrix_x4(a, static_cast<uint32_t>(((l & 15) * P + (l >> 4) * 8) * 2));
          const uint32_t base = 16 * P * 2;
          if (trans)
            ldmatrix_x4_trans(b, base + static_cast<uint32_t>(((r8 + (mat & 1) * 8) * P + (mat >> 1) * 8) * 2));
          else
            ldmatrix_x4(b, base + static_cast<uint32_t>(((r8 + (mat >> 1) * 8) * P + (mat & 1) * 8) * 2));
          for (int nb = 0; nb < 2; ++nb) {
            float d[4] = {C[g][nb * 8 + 2 * t], C[g][nb * 8 + 2 * t + 1], C[g + 8][nb * 8 + 2 * t], C[g + 8][nb * 8 + 2 * t + 1]};
            mma_bf16(d, a, b[2 * nb], b[2 * nb + 1]);
            got[g][nb * 8 + 2 * t] = d[0];
            got[g][nb * 8 + 2 * t + 1] = d[1];
            got[g + 8][nb * 8 + 2 * t] = d[2];
            got[g + 8][nb * 8 + 2 * t + 1] = d[3];
          }
        });
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
          double s = C[i][j];
          for (int k = 0; k < 16; ++k) s += double(bf2f(A[i][k])) * bf2f(B[k][j]);
          if (std::fabs(got[i][j] - s) > 1e-5 * (1 + std::fabs(s))) return fmt("D[%d][%d] = %g, want %g", i, j, got[i][j], s);
        }
      return std::string();
    });
  // wait_group: data lands by the retiring wait (late mode), pred false zero-fills.
  add("cp-async-groups-late", [] {
    alignas(16) static uint16_t g[64 * 8];
    for (int i = 0; i < 64 * 8; ++i) g[i] = static_cast<uint16_t>(i + 1);
    std::string e;
    emu::launch(cfg(32, 1024, emu::Sched::Shuffle, emu::CpTiming::Late), [&] {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(emu::dyn_smem());
      const int l = static_cast<int>(lane());
      cp_async16(l * 16, g + l * 8, l != 5);
      cp_async_commit();
      cp_async16(512 + l * 16, g + 256 + l * 8, true);
      cp_async_commit();
      if (s[l * 8] != 0xffff) e = "a copy landed before its wait (late mode)";
      cp_async_wait<1>();
      if (s[l * 8] != (l == 5 ? 0 : l * 8 + 1)) e = fmt("lane %d: group 1 holds %u after wait<1>", l, s[l * 8]);
      if (s[256 + l * 8] != 0xffff) e = "wait<1> completed the newest group";
      cp_async_wait<0>();
      if (s[256 + l * 8] != 256 + l * 8 + 1) e = "wait<0> left a group";
      __syncthreads();
    });
    return e;
  });
  return c;
}

}  // namespace

int main(int argc, char** argv) { return harness::main(argc, argv, cases()); }
