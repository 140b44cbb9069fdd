// Shared by the emulator tests: the case registry and command line, scheduling modes, guarded
// global buffers, random bf16 data, the contract's visibility rule and the comparisons.
//
// A test binary lists its cases (--list: index, in-quick flag, cost estimate, name), runs one
// (--run I: exit 0 if it passes, else 1 with one line on stdout; an emulator error exits 2 with
// its message on stderr), or runs them all in-process (--all [--quick] [--filter S], for
// debugging; an emulator error ends the run).
#pragma once
#include <algorithm>
#include <cstdarg>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "emu.h"

namespace harness {

struct Mode {
  emu::Sched sched;
  emu::CpTiming cp;
};
// The orders every shape runs under: lockstep with copies at issue; warps one after another
// with copies at the wait; random thread order with copies at the wait.
inline const Mode kModes[] = {
    {emu::Sched::RoundRobin, emu::CpTiming::Eager},
    {emu::Sched::WarpGreedy, emu::CpTiming::Late},
    {emu::Sched::Shuffle, emu::CpTiming::Late},
};
inline std::string mode_name(const Mode& m) { return std::string(emu::sched_name(m.sched)) + "/" + emu::cp_name(m.cp); }

// A launch under mode m: the kernel's name, its grid (at least 1) and block, and a seed mixed
// with the mode (dynamic shared memory none: kernels that take some set c.smem).
inline emu::LaunchCfg cfg_of(const char* name, long long grid, int block, const Mode& m, uint32_t seed) {
  emu::LaunchCfg c;
  c.kernel = name;
  c.grid = static_cast<unsigned>(std::max(1LL, grid));
  c.block = static_cast<unsigned>(block);
  c.sched = m.sched;
  c.cp = m.cp;
  c.seed = seed * 31 + static_cast<uint32_t>(m.sched) * 7 + static_cast<uint32_t>(m.cp);
  return c;
}

struct Case {
  std::string name;
  bool quick;
  double cost;                       // relative run time, for scheduling
  std::function<std::string()> run;  // "" on success, else a one-line failure summary
};

inline std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
inline std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

inline int main(int argc, char** argv, const std::vector<Case>& cases) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "--list") {
    for (size_t i = 0; i < cases.size(); ++i)
      printf("%zu\t%d\t%.0f\t%s\n", i, cases[i].quick ? 1 : 0, cases[i].cost, cases[i].name.c_str());
    return 0;
  }
  if (cmd == "--run" && argc > 2) {
    const size_t i = strtoull(argv[2], nullptr, 10);
    if (i >= cases.size()) {
      fprintf(stderr, "no case %zu\n", i);
      return 2;
    }
    const std::string r = cases[i].run();
    if (!r.empty()) printf("%s\n", r.c_str());
    return r.empty() ? 0 : 1;
  }
  if (cmd == "--all") {
    bool quick = false;
    std::string filter;
    for (int a = 2; a < argc; ++a) {
      if (std::string(argv[a]) == "--quick") quick = true;
      if (std::string(argv[a]) == "--filter" && a + 1 < argc) filter = argv[++a];
    }
    int n = 0, failed = 0;
    for (const Case& c : cases) {
      if ((quick && !c.quick) || c.name.find(filter) == std::string::npos) continue;
      ++n;
      const std::string r = c.run();
      if (!r.empty()) {
        ++failed;
        printf("FAIL %s: %s\n", c.name.c_str(), r.c_str());
        fflush(stdout);
      }
    }
    printf("%d cases, %d failed\n", n, failed);
    return failed ? 1 : 0;
  }
  fprintf(stderr, "usage: %s --list | --run I | --all [--quick] [--filter S]\n", argv[0]);
  return 2;
}

// ---- global memory -----------------------------------------------------------------------------
// n elements, 256-byte aligned like cudaMalloc, between guard zones that must stay untouched;
// registered as a buffer cp.async may read.
template <class T>
class Buf {
 public:
  Buf(const char* name, size_t n, T fill) : name_(name), n_(n), raw_(n * sizeof(T) + 3 * kGuard, kPattern) {
    const uintptr_t a = (reinterpret_cast<uintptr_t>(raw_.data()) + kGuard + 255) & ~uintptr_t(255);
    p_ = reinterpret_cast<T*>(a);
    std::fill_n(p_, n, fill);
    emu::register_global(p_, n * sizeof(T), name);
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }
  // "" if both guard zones are intact.
  std::string guards() const {
    const unsigned char* lo = reinterpret_cast<const unsigned char*>(p_);
    const unsigned char* hi = lo + n_ * sizeof(T);
    for (const unsigned char* c = raw_.data(); c < raw_.data() + raw_.size(); ++c)
      if ((c < lo || c >= hi) && *c != kPattern)
        return c < lo ? fmt("%s: byte %td before the buffer was written", name_, lo - c)
                      : fmt("%s: byte %td past the end of the buffer was written", name_, c - hi + 1);
    return "";
  }

 private:
  static constexpr size_t kGuard = 512;
  static constexpr unsigned char kPattern = 0xa5;
  const char* name_;
  size_t n_;
  std::vector<unsigned char> raw_;
  T* p_;
};

inline void random_bf16(Buf<uint16_t>& b, std::mt19937& r, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  for (size_t i = 0; i < b.size(); ++i) b[i] = f2bf(u(r));
}

// ---- the contract (native/core/attention.h) ------------------------------------------------
// Key j is visible to a query at position p (mask: 0 Global, 1 Sliding, 2 Block).
inline bool visible(int mask, bool causal, long long window, long long p, long long j) {
  if (mask == 0) return !causal || j <= p;
  if (mask == 1) return causal ? (p - window < j && j <= p) : (p - j < window && j - p < window);
  return j / window == p / window && (!causal || j <= p);
}

// ---- comparisons ---------------------------------------------------------------------------
// Output buffers start filled with a NaN of their own payload (bf16 0x7fa1, float 0x7fa10000),
// which no kernel computes (a computed NaN is 0x7fc0 / the default NaN): an element still
// holding it was never written.
constexpr uint16_t kUnwrittenBf16 = 0x7fa1;
inline float unwritten_float() {
  const uint32_t u = 0x7fa10000u;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline bool unwritten(float g) {
  uint32_t u;
  memcpy(&u, &g, 4);
  return u == 0x7fa10000u;
}
// got against ref where either is not finite: NaN exactly where ref is NaN, equal infinities.
// Returns 1 when they agree, 0 when both are finite (compare the values), -1 on a mismatch.
inline int nonfinite_agree(double g, double w) {
  if (std::isnan(w) || std::isnan(g)) return std::isnan(w) && std::isnan(g) ? 1 : -1;
  if (std::isinf(w) || std::isinf(g)) return g == w ? 1 : -1;
  return 0;
}

// rows x cols values (got(i) as float) against ref: every element written, NaN and infinities
// exactly where ref has them (non-finite inputs propagate as the materialised softmax does),
// exact zeros on rows marked empty (no visible key), and max |got - ref| <= tol * max |ref|
// over the finite elements.
template <class Get>
std::string compare(const char* what, size_t rows, size_t cols, Get got, const std::vector<double>& ref,
                    const std::vector<char>& empty, double tol) {
  double mx = 0, err = 0;
  size_t at = 0;
  for (size_t i = 0; i < rows * cols; ++i) {
    const float g = got(i);
    if (unwritten(g)) return fmt("%s: unwritten at row %zu col %zu", what, i / cols, i % cols);
    const int nf = nonfinite_agree(g, ref[i]);
    if (nf < 0) return fmt("%s: row %zu col %zu got %g want %g", what, i / cols, i % cols, g, ref[i]);
    if (nf > 0) continue;
    if (empty[i / cols] && g != 0.f)
      return fmt("%s: row %zu has no visible key but col %zu = %g (want 0)", what, i / cols, i % cols, g);
    mx = std::max(mx, std::fabs(ref[i]));
    const double e = std::fabs(g - ref[i]);
    if (e > err) {
      err = e;
      at = i;
    }
  }
  if (err > tol * mx)
    return fmt("%s: max error %.3g (%.3g of max |ref| %.3g) at row %zu col %zu: got %.6g want %.6g", what, err,
               err / mx, mx, at / cols, at % cols, got(at), ref[at]);
  return "";
}

// Float accumulators the kernel adds into (each started at base), rows x cols, against ref: NaN
// and infinities exactly where ref has them, exactly base on the rows nothing reaches
// (touched[row] == 0), and
// max |got - base - ref| <= tol * max(max |ref|, floor). floor covers sums that cancel to ~0
// (a query seeing one key has dS = 0 exactly; the kernel leaves float rounding there).
inline std::string compare_acc(const char* what, const float* got, float base, const std::vector<double>& ref,
                               const std::vector<char>& touched, size_t cols, double tol, double floor) {
  double mx = 0, err = 0;
  size_t at = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const int nf = nonfinite_agree(got[i], ref[i]);
    if (nf < 0) return fmt("%s: row %zu col %zu got %g want %g", what, i / cols, i % cols, got[i], ref[i]);
    if (nf > 0) continue;
    if (!touched[i / cols] && got[i] != base)
      return fmt("%s: row %zu col %zu changed by %g, but no visible key / query reaches it", what, i / cols, i % cols,
                 got[i] - base);
    mx = std::max(mx, std::fabs(ref[i]));
    const double e = std::fabs(double(got[i]) - base - ref[i]);
    if (e > err) {
      err = e;
      at = i;
    }
  }
  if (err > tol * std::max(mx, floor))
    return fmt("%s: max error %.3g (%.3g of max |ref| %.3g, floor %.3g) at row %zu col %zu: got %.6g want %.6g", what,
               err, err / mx, mx, floor, at / cols, at % cols, double(got[at]) - base, ref[at]);
  return "";
}

// Log-sum-exp values: -inf and NaN exactly where ref has them, else |got - ref| <= tol (1 + |ref|).
inline std::string compare_lse(const char* what, const float* got, const std::vector<double>& ref, double tol) {
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i];
    if (unwritten(got[i])) return fmt("%s: unwritten at row %zu", what, i);
    const int nf = nonfinite_agree(g, ref[i]);
    if (nf < 0) {
      return fmt("%s: row %zu got %g want %g", what, i, g, ref[i]);
    } else if (nf == 0 && std::fabs(g - ref[i]) > tol * (1 + std::fabs(ref[i]))) {
      return fmt("%s: row %zu got %.7g want %.7g", what, i, g, ref[i]);
    }
  }
  return "";
}

// ---- checks shared by the tests ----------------------------------------------------------------
// FwdParams output fields as attention_forward / dual_attention_forward fill them (dual: out_l
// the local path, out the gated mix; lse pointers null for s.nolse); pr: the tests' Problem.
template <class Params, class Ref, class O>
void set_fwd_outputs(Params& P, const Ref& pr, bool dual, Buf<O>& out, Buf<O>& out_l, Buf<O>& out_g, Buf<float>& lse,
                     Buf<float>& lse_g) {
  const auto& s = pr.s;
  if (dual) {
    P.out = out_l.data();
    P.lse = s.nolse ? nullptr : lse.data();
    P.out_mix = out.data();
    P.out_g = out_g.data();
    P.lse_g = s.nolse ? nullptr : lse_g.data();
    P.gates = pr.gates.data();
    P.gates_per_head = s.dual == 2;
    P.global_rows = s.grows ? pr.grows.data() : nullptr;
  } else {
    P.out = out.data();
    P.lse = s.nolse ? nullptr : lse.data();
  }
}

// Forward outputs against a reference (pr: out, lse, out_g, lse_g, mix, empty, empty_g, empty_mix,
// bad, as the tests' Problem): the compares (dual: out_local, out_global, the gated out, both lse),
// unwritten lse when its pointer is null, and record_bad / the bad-index slot (bad_slot, the
// kernel's g_attn_bad): called for exactly the out-of-range query_index positions, the slot
// keeps the smallest. out / out_l / out_g: element i as float.
template <class Ref, class Get>
std::string check_fwd(const Ref& pr, bool dual, bool nolse, size_t rows, size_t D, Get out, Get out_l, Get out_g,
                      const float* lse, const float* lse_g, double tol, double ltol, unsigned long long bad_slot) {
  std::string e;
  if (dual) {
    e = compare("out_local", rows, D, out_l, pr.out, pr.empty, tol);
    if (e.empty()) e = compare("out_global", rows, D, out_g, pr.out_g, pr.empty_g, tol);
    if (e.empty()) e = compare("out", rows, D, out, pr.mix, pr.empty_mix, tol);
    if (e.empty() && !nolse) e = compare_lse("lse_local", lse, pr.lse, ltol);
    if (e.empty() && !nolse) e = compare_lse("lse_global", lse_g, pr.lse_g, ltol);
  } else {
    e = compare("out", rows, D, out, pr.out, pr.empty, tol);
    if (e.empty() && !nolse) e = compare_lse("lse", lse, pr.lse, ltol);
  }
  if (!e.empty()) return e;
  if (nolse)
    for (size_t i = 0; i < rows; ++i)
      if (!unwritten(lse[i])) return fmt("lse is null but lse[%zu] was written", i);

  std::vector<long long> got = emu::g_bad;
  std::sort(got.begin(), got.end());
  got.erase(std::unique(got.begin(), got.end()), got.end());
  if (got != pr.bad)
    return fmt("record_bad: %zu positions recorded (first %lld), %zu bad query_index entries (first %lld)", got.size(),
               got.empty() ? -1LL : got[0], pr.bad.size(), pr.bad.empty() ? -1LL : pr.bad[0]);
  const unsigned long long want = pr.bad.empty() ? ~0ull : static_cast<unsigned long long>(pr.bad[0]);
  if (bad_slot != want) return fmt("bad-index slot holds %llu, want %llu", bad_slot, want);
  return "";
}

// dq, dk, dv (accumulators started at base) against the backward reference: compare_acc with
// floor 1e-2 mag[i] (mag: largest sum of |terms| of an element of dq, dk, dv).
inline std::string check_grads(const float* dq, const float* dk, const float* dv, float base,
                               const std::vector<double>& rdq, const std::vector<double>& rdk,
                               const std::vector<double>& rdv, const std::vector<char>& tq,
                               const std::vector<char>& tkv, size_t D, double tol, const double mag[3]) {
  std::string e = compare_acc("dq", dq, base, rdq, tq, D, tol, 1e-2 * mag[0]);
  if (e.empty()) e = compare_acc("dk", dk, base, rdk, tkv, D, tol, 1e-2 * mag[1]);
  if (e.empty()) e = compare_acc("dv", dv, base, rdv, tkv, D, tol, 1e-2 * mag[2]);
  return e;
}

// ---- case enumeration --------------------------------------------------------------------------
// Every shape x head dims {32, 64, 128} x the three modes, named "<prefix>/d<D>/<tag>/<mode>";
// seed = seed0 + step * (shape index) + D; --quick: one mode per (shape, D), rotating.
// cost(s, D) and run(s, D, mode, seed) as in Case.
template <class Shapes, class Cost, class Run>
void add_cases(std::vector<Case>& out, const Shapes& shapes, const std::string& prefix, uint32_t seed0, uint32_t step,
               Cost cost, Run run) {
  const int Ds[] = {32, 64, 128};
  int si = 0;
  for (const auto& s : shapes) {
    for (int di = 0; di < 3; ++di) {
      const int D = Ds[di];
      const uint32_t seed = seed0 + step * static_cast<uint32_t>(si) + static_cast<uint32_t>(D);
      const double c = cost(s, D);
      for (int mi = 0; mi < 3; ++mi) {
        const Mode m = kModes[mi];
        out.push_back({fmt("%s/d%d/%s/%s", prefix.c_str(), D, s.tag, mode_name(m).c_str()), mi == (si + di) % 3, c,
                       [run, s, D, m, seed] { return run(s, D, m, seed); }});
      }
    }
    ++si;
  }
}

}  // namespace harness
