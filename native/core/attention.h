// Arguments of the fused attention kernels (CPU native/cpu/attention.cpp, CUDA
// native/cuda/attention.cu). Shapes, all contiguous row-major:
//   q   [B, Hq,  Sq, D]      k, v [B, Hkv, Sk, D]      Hq = G * Hkv (grouped-query attention:
//                                                      query head h reads kv head h / G)
//   out [B, Hq, n, D]        lse [B, Hq, n] (float32; float64 for float64 inputs)
// n = Sq, or the length of query_index [B, n] when given: row r of the output is query
// query_index[b, r] (repeats allowed). query_count [B] (with query_index) makes the rows ragged:
// rows r >= query_count[b] are padding (their index is never read; out = 0, lse = -inf, no
// gradient), as when a router keeps a different number of tokens in each sequence. Query row i sits at absolute position p = i + (Sk - Sq)
// (bottom-right alignment: a decode step with a KV cache is the same call).
//
// Visible keys j for a query at position p (and never a key whose key_padding byte is set):
//   Global:  causal ? j <= p : all
//   Sliding: causal ? p - window < j <= p : |p - j| < window
//   Block:   j / window == p / window, and causal ? j <= p
// s_j = scale * q . k_j over visible j; out = sum_j softmax(s)_j v_j; lse = log sum_j exp(s_j).
// A row with no visible key gets out = 0 and lse = -inf; the backward skips such rows.
// Kernels skip key blocks that no query of a tile can see: the cost grows with the window, not
// with Sk, and no S x S or S x window buffer is ever allocated.
#pragma once
#include <cstdint>

#include "../generated/enums.h"

namespace dualroute {

struct AttnArgs {
  int32_t dtype;  // DType of q, k, v, out (and dout/dq/dk/dv in the backward)
  int64_t B, Hq, Hkv, Sq, Sk, D;
  const void* q;
  const void* k;
  const void* v;
  double scale;  // kernels computing in float round it once; float64 kernels use it as is
  int32_t causal;
  int32_t mask;    // AttnMask
  int64_t window;  // >= 1; ignored for Global
  const uint8_t* key_padding;  // [B, Sk], nonzero = padding; or nullptr
  const int32_t* query_index;  // [B, n] or nullptr (then n == Sq)
  int64_t n;
  const int32_t* query_count;  // [B] or nullptr: row r of batch b is padding when r >= query_count[b]
  int64_t kv_head_stride;      // segment kernels only: elements between kv heads of k and v (0: Sk * D)
};

// Whether row r of batch b is a real row (not ragged padding).
inline bool attn_row_valid(const AttnArgs& a, int64_t b, int64_t r) {
  return r < a.n && !(a.query_count && r >= a.query_count[b]);
}

// Dual attention: the local path (args.mask = Sliding or Block, args.window) for every query
// row and the global path (Global with args.causal) for the rows where global_rows[b, i] is
// nonzero (all rows when global_rows is null), in one pass over K/V: every key block inside the
// window feeds both accumulators, blocks outside it only the global one.
//   out = g_local * out_local + g_global * out_global
// gates: [B, Sq, 2] (gates_per_head = 0) or [B, Hq, Sq, 2], dtype of q. out_local/out_global
// [B, Hq, Sq, D] and lse_local/lse_global [B, Hq, Sq] are written for the backward; rows off
// the global path get out_global = 0, lse_global = -inf and no global contribution.
// args.query_index must be null here (n == Sq).
struct DualArgs {
  AttnArgs a;
  const void* gates;
  int32_t gates_per_head;
  const uint8_t* global_rows;  // [B, Sq] or nullptr
};

// Segment attention (segment_attention_forward/backward): AttnArgs with mask = Global, no
// key_padding and no query_index (n == Sq), plus int32 indices [B, Hq, Sq, K] and a segment
// length. The keys fall into nseg = ceil(Sk / segment) segments, segment s holding keys
// [s * segment, min(Sk, (s + 1) * segment)). Row i (position p = i + Sk - Sq) of head h sees
// key j when the segment of j is listed in indices[b, h, i, :] and, if causal, j <= p. Entries
// -1 and repeats of an earlier entry of the row are ignored; others outside [0, nseg) are a
// RangeError (CUDA: recorded on the device, reported after a stream wait). k and v may be views
// whose rows are contiguous with a uniform head stride (kv_head_stride: a cache buffer's first Sk
// positions, read in place). A row that sees no
// key gets out = 0 and lse = -inf, as in attention. With every segment up to the query's own
// listed, the result is causal global attention.
//
// Dual attention with a segment-routed global path (dual_segment_attention_forward/backward):
// DualArgs with the local path in d.a (mask Sliding or Block, window, causal; no key_padding,
// query_index or global_rows) and segment attention (indices, segment, the same causal) as the
// global path of every row: out = g_local * out_local + g_global * out_global, with out_local,
// out_global, lse_local, lse_global written as by the dual kernel. The backward adds into dq, dk,
// dv and writes dgates (float32; float64 for float64 inputs; the gates' shape) = (sum_d dout *
// out_local, sum_d dout * out_global), summed over the heads for shared gates.
}  // namespace dualroute
