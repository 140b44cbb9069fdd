// The element functions of the binary ops that issue 13 added to native/cuda/elementwise.cu
// (floorDiv and remainder, float and int32, Python's signs) against float64 / exact references,
// run by a warp in the emulator over grids of values with every sign combination, zeros, exact
// multiples, infinities, NaN and the int32 edges (INT_MIN / -1, division by 0 gives 0).
// The map kernels that apply them to tensors are unchanged and not part of this test.
#include <climits>
#include <cmath>

#include "ewconv_kernel.inc"
#include "ewbinary_kernel.inc"
#include "harness.h"

using namespace dualroute::cuda;
using dualroute::BinaryOp;
using harness::Buf;
using harness::cfg_of;
using harness::fmt;

namespace {

double py_mod(double a, double b) {
  double r = std::fmod(a, b);
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}
int64_t int_floordiv(int64_t a, int64_t b) {
  if (b == 0) return 0;
  if (a == INT_MIN && b == -1) return INT_MIN;  // wraps, as the CPU kernel
  int64_t q = a / b;
  if (a % b != 0 && ((a < 0) != (b < 0))) --q;
  return q;
}
int64_t int_mod(int64_t a, int64_t b) {
  if (b == 0 || b == -1) return 0;
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

std::string run_float(const harness::Mode& mode) {
  emu::clear_globals();
  const float vals[] = {7.f, -7.f, 2.f, -2.f, 0.5f, -0.5f, 6.f, -6.f, 0.f, -0.f, 3.25f, 1e30f, INFINITY, -INFINITY, NAN, 1.f};
  const int n = sizeof(vals) / sizeof(vals[0]);
  Buf<float> a("a", n * n, 0.f), b("b", n * n, 0.f), q("q", n * n, harness::unwritten_float()),
      r("r", n * n, harness::unwritten_float());
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      a[i * n + j] = vals[i];
      b[i * n + j] = vals[j];
    }
  emu::launch(cfg_of("binary_f<floorDiv, remainder>", 1, 32, mode, 7), [&] {
    for (int e = threadIdx.x; e < n * n; e += 32) {
      q[e] = binary_f<BinaryOp::FloorDiv>(a[e], b[e]);
      r[e] = binary_f<BinaryOp::Remainder>(a[e], b[e]);
    }
  });
  for (int e = 0; e < n * n; ++e) {
    // floor of the float quotient (as the CPU kernel; Python's floor(a / b) on the rounded quotient)
    const double gq = std::floor(double(a[e] / b[e]));
    const double wr = py_mod(a[e], b[e]);
    const int nq = harness::nonfinite_agree(q[e], gq), nr = harness::nonfinite_agree(r[e], wr);
    if (nq < 0 || (nq == 0 && q[e] != gq)) return fmt("floorDiv(%g, %g) = %g, want %g", a[e], b[e], q[e], gq);
    if (nr < 0 || (nr == 0 && std::fabs(r[e] - wr) > 1e-6 * std::fabs(wr)))
      return fmt("remainder(%g, %g) = %g, want %g", a[e], b[e], r[e], wr);
    if (nr == 0 && r[e] != 0 && ((r[e] < 0) != (b[e] < 0))) return fmt("remainder(%g, %g) = %g has not the divisor's sign", a[e], b[e], r[e]);
  }
  return "";
}

std::string run_int(const harness::Mode& mode) {
  emu::clear_globals();
  const int32_t vals[] = {7, -7, 2, -2, 3, -3, 6, -6, 0, 1, -1, INT_MAX, INT_MIN, INT_MIN + 1, 1000000007, -13};
  const int n = sizeof(vals) / sizeof(vals[0]);
  Buf<int32_t> a("a", n * n, 0), b("b", n * n, 0), q("q", n * n, -99), r("r", n * n, -99);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      a[i * n + j] = vals[i];
      b[i * n + j] = vals[j];
    }
  emu::launch(cfg_of("BinaryInt<floorDiv, remainder>", 1, 32, mode, 11), [&] {
    for (int e = threadIdx.x; e < n * n; e += 32) {
      q[e] = BinaryInt<BinaryOp::FloorDiv>{}(a[e], b[e]);
      r[e] = BinaryInt<BinaryOp::Remainder>{}(a[e], b[e]);
    }
  });
  for (int e = 0; e < n * n; ++e) {
    const int64_t wq = int_floordiv(a[e], b[e]), wr = int_mod(a[e], b[e]);
    if (q[e] != wq) return fmt("floorDiv(%d, %d) = %d, want %lld", a[e], b[e], q[e], (long long)wq);
    if (r[e] != wr) return fmt("remainder(%d, %d) = %d, want %lld", a[e], b[e], r[e], (long long)wr);
    // Python's identity a = b * (a // b) + a % b wherever the quotient fits
    if (b[e] != 0 && !(a[e] == INT_MIN && b[e] == -1) && int64_t(b[e]) * q[e] + r[e] != a[e])
      return fmt("%d != %d * %d + %d", a[e], b[e], q[e], r[e]);
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<harness::Case> cases;
  for (int mi = 0; mi < 3; ++mi) {
    const harness::Mode m = harness::kModes[mi];
    cases.push_back({fmt("binary/float/%s", harness::mode_name(m).c_str()), mi == 0, 1, [m] { return run_float(m); }});
    cases.push_back({fmt("binary/int32/%s", harness::mode_name(m).c_str()), mi == 0, 1, [m] { return run_int(m); }});
  }
  return harness::main(argc, argv, cases);
}
