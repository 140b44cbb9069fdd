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

void matmul(const T& out, const T& a_in, const T& b_in, bool trans_a, bool trans_b, float alpha, float beta) {
  same_device("matmul", {&out, &a_in, &b_in});
  DR_CHECK(a_in.dtype == b_in.dtype && out.dtype == a_in.dtype, DType, "matmul: dtypes differ (",
           dtype_name(a_in.dtype), ", ", dtype_name(b_in.dtype), ", out ", dtype_name(out.dtype), ")");
  DR_CHECK(dtype_is_float(a_in.dtype), DType, "matmul: expected a float dtype, got ", dtype_name(a_in.dtype));
  DR_CHECK(a_in.ndim >= 2 && b_in.ndim >= 2 && out.ndim >= 2 && out.contiguous(), Shape,
           "matmul: operands need at least 2 dimensions");
  const int on = out.ndim;
  const int64_t m = out.shape[on - 2], n = out.shape[on - 1];
  // logical shapes: op(a) is [.., m, k] where a stored [.., m, k] or [.., k, m] when trans_a
  const int64_t k = trans_a ? a_in.shape[a_in.ndim - 2] : a_in.shape[a_in.ndim - 1];
  const int64_t am = trans_a ? a_in.shape[a_in.ndim - 1] : a_in.shape[a_in.ndim - 2];
  const int64_t bk = trans_b ? b_in.shape[b_in.ndim - 1] : b_in.shape[b_in.ndim - 2];
  const int64_t bn = trans_b ? b_in.shape[b_in.ndim - 2] : b_in.shape[b_in.ndim - 1];
  DR_CHECK(am == m && bn == n && bk == k, Shape, "matmul: shapes ", a_in.shape_string(), " and ",
           b_in.shape_string(), " do not give ", out.shape_string());

  // Operands whose matrix part is neither row- nor column-contiguous are copied.
  std::shared_ptr<const T> a_keep, b_keep;
  const T* a = &a_in;
  const T* b = &b_in;
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
      DR_CHECK(a->shape[da] == bshape[d] || a->shape[da] == 1, Shape, "matmul: batch dims of a ",
               a->shape_string(), " do not broadcast to ", out.shape_string());
      sa[d] = a->shape[da] == 1 ? 0 : va.strides[da];
    }
    if (db >= 0) {
      DR_CHECK(b->shape[db] == bshape[d] || b->shape[db] == 1, Shape, "matmul: batch dims of b ",
               b->shape_string(), " do not broadcast to ", out.shape_string());
      sb[d] = b->shape[db] == 1 ? 0 : vb.strides[db];
    }
  }
  DR_CHECK(a->ndim - 2 <= nb && b->ndim - 2 <= nb, Shape, "matmul: operands have more batch dims than the output");
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
