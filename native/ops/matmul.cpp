// matmul: out[..., m, n] = alpha * op(a)[..., m, k] @ op(b)[..., k, n] + beta * out, batch
// dims broadcast. A matrix operand whose rows or columns are contiguous is passed as it is
// (a transposed view becomes a trans flag, not a copy); others are copied contiguous first.
// Batch dims that do not collapse to one stride are looped over.
#include <functional>

#include "common.h"

namespace dualroute {
namespace ops {
namespace {

struct Mat {
  const char* data;
  int64_t ld;
  bool trans;  // stored transposed relative to the logical op(X)
};

// Fits the last two dims of v (rows x cols, logical) to a BLAS layout, if possible.
bool as_matrix(const View& v, int64_t rows, int64_t cols, bool logical_trans, Mat* m) {
  const int64_t sr = v.strides[v.ndim - 2], sc = v.strides[v.ndim - 1];
  // row-major: element (i, j) at i*ld + j
  if ((sc == 1 || cols == 1) && (sr >= std::max<int64_t>(cols, 1) || rows == 1)) {
    m->ld = rows == 1 ? std::max<int64_t>(cols, 1) : sr;
    m->trans = logical_trans;
    return true;
  }
  if ((sr == 1 || rows == 1) && (sc >= std::max<int64_t>(rows, 1) || cols == 1)) {
    m->ld = cols == 1 ? std::max<int64_t>(rows, 1) : sc;
    m->trans = !logical_trans;
    return true;
  }
  return false;
}

}  // namespace

void check(const Matmul& p) {
  const T &out = p.out, &a = p.a, &b = p.b;
  DR_CHECK(b.dtype == a.dtype && out.dtype == a.dtype, DType, "matmul: Expected one dtype for a, b and out but received ",
           dtype_name(a.dtype), ", ", dtype_name(b.dtype), ", ", dtype_name(out.dtype));
  DR_CHECK(a.ndim >= 2 && b.ndim >= 2 && out.ndim >= 2, Shape, "matmul: operands need at least 2 dimensions, received ",
           a.shape_string(), ", ", b.shape_string(), " and out ", out.shape_string());
  require_contiguous("matmul", "out", out);
  const int on = out.ndim;
  const int64_t m = out.shape[on - 2], n = out.shape[on - 1];
  const int64_t k = p.transA ? a.shape[a.ndim - 2] : a.shape[a.ndim - 1];
  const int64_t am = p.transA ? a.shape[a.ndim - 1] : a.shape[a.ndim - 2];
  const int64_t bk = p.transB ? b.shape[b.ndim - 1] : b.shape[b.ndim - 2];
  const int64_t bn = p.transB ? b.shape[b.ndim - 2] : b.shape[b.ndim - 1];
  DR_CHECK(am == m && bn == n && bk == k, Shape, "matmul: shapes ", a.shape_string(), " and ", b.shape_string(),
           " do not give ", out.shape_string());
  const int nb = on - 2;
  DR_CHECK(a.ndim - 2 <= nb && b.ndim - 2 <= nb, Shape, "matmul: operands have more batch dims than the output");
  for (int d = 0; d < nb; ++d) {
    const int da = d - (nb - (a.ndim - 2)), db = d - (nb - (b.ndim - 2));
    DR_CHECK(da < 0 || a.shape[da] == out.shape[d] || a.shape[da] == 1, Shape, "matmul: batch dims of a ",
             a.shape_string(), " do not broadcast to ", out.shape_string());
    DR_CHECK(db < 0 || b.shape[db] == out.shape[d] || b.shape[db] == 1, Shape, "matmul: batch dims of b ",
             b.shape_string(), " do not broadcast to ", out.shape_string());
  }
}

void run(const Matmul& p) {
  const T& out = p.out;
  const bool trans_a = p.transA, trans_b = p.transB;
  const float alpha = p.alpha, beta = p.beta;
  const int on = out.ndim;
  const int64_t m = out.shape[on - 2], n = out.shape[on - 1];
  const int64_t k = trans_a ? p.a.shape[p.a.ndim - 2] : p.a.shape[p.a.ndim - 1];

  // Operands whose matrix part is neither row- nor column-contiguous are copied.
  std::shared_ptr<const T> a_keep, b_keep;
  const T* a = &p.a;
  const T* b = &p.b;
  Mat ma{}, mb{};
  View va = a->view(), vb = b->view();
  // stored dims: rows x cols of the stored matrix
  auto stored = [](const T& t) { return std::make_pair(t.shape[t.ndim - 2], t.shape[t.ndim - 1]); };
  auto [ar, ac] = stored(*a);
  if (!as_matrix(va, ar, ac, trans_a, &ma)) {
    a_keep = std::shared_ptr<const T>(contiguous_copy(*a).release());
    a = a_keep.get();
    va = a->view();
    as_matrix(va, ar, ac, trans_a, &ma);
  }
  auto [br, bc] = stored(*b);
  if (!as_matrix(vb, br, bc, trans_b, &mb)) {
    b_keep = std::shared_ptr<const T>(contiguous_copy(*b).release());
    b = b_keep.get();
    vb = b->view();
    as_matrix(vb, br, bc, trans_b, &mb);
  }
  ma.data = static_cast<const char*>(va.data);
  mb.data = static_cast<const char*>(vb.data);

  // Batch: broadcast a's and b's batch dims against out's.
  const int nb = on - 2;
  View bo = out.view();
  std::vector<int64_t> bshape(nb), sa(nb, 0), sb(nb, 0), so(nb);
  for (int d = 0; d < nb; ++d) {
    bshape[d] = out.shape[d];
    so[d] = bo.strides[d];
    int da = d - (nb - (a->ndim - 2)), db = d - (nb - (b->ndim - 2));
    if (da >= 0) {
      sa[d] = a->shape[da] == 1 ? 0 : va.strides[da];
    }
    if (db >= 0) {
      sb[d] = b->shape[db] == 1 ? 0 : vb.strides[db];
    }
  }
  // Collapse batch dims from the inside while every operand stays a single stride.
  int inner = nb;  // dims [inner, nb) collapse into one batch of `count` with strides s*
  int64_t count = 1, csa = 0, csb = 0, cso = 0;
  while (inner > 0) {
    int d = inner - 1;
    if (bshape[d] == 1) {
      --inner;
      continue;
    }
    if (count == 1) {
      csa = sa[d];
      csb = sb[d];
      cso = so[d];
      count = bshape[d];
      --inner;
      continue;
    }
    if (sa[d] == csa * count && sb[d] == csb * count && so[d] == cso * count) {
      count *= bshape[d];
      --inner;
      continue;
    }
    break;
  }
  const int es = dtype_size(a->dtype);
  std::vector<int64_t> idx(inner, 0);
  int64_t outer = 1;
  for (int d = 0; d < inner; ++d) outer *= bshape[d];
  for (int64_t o = 0; o < outer; ++o) {
    int64_t oa = 0, ob = 0, oo = 0;
    for (int d = 0; d < inner; ++d) {
      oa += idx[d] * sa[d];
      ob += idx[d] * sb[d];
      oo += idx[d] * so[d];
    }
    MatmulArgs args{};
    args.batch = count;
    args.m = m;
    args.n = n;
    args.k = k;
    args.a = ma.data + oa * es;
    args.lda = ma.ld;
    args.batch_stride_a = csa;
    args.trans_a = ma.trans;
    args.b = mb.data + ob * es;
    args.ldb = mb.ld;
    args.batch_stride_b = csb;
    args.trans_b = mb.trans;
    args.c = static_cast<char*>(bo.data) + oo * es;
    args.ldc = n;
    args.batch_stride_c = cso;
    args.dtype = static_cast<int32_t>(a->dtype);
    args.alpha = alpha;
    args.beta = beta;
    DR_RUN(out, cpu::matmul(args), matmul, &args, 0);
    for (int d = inner - 1; d >= 0; --d) {
      if (++idx[d] < bshape[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace ops
}  // namespace dualroute
