// Decode caches shared by many sequences: the kernels behind continuous batching
// (lib/serve/engine.ts). Every sequence owns one slot of a cache tensor; a step of N sequences
// reads and writes N slots at N different lengths in one call per layer, the way
// FlashAttention's flash_attn_with_kvcache takes cache_seqlens and cache_batch_idx.
//
// Shapes (all contiguous row-major; checked by native/ops/kvcache.cpp):
//   k_cache, v_cache  [S, Hkv, C, D]   S slots of capacity C; dtype T (float32, bfloat16, float64)
//   means             [S, Hkv, M, D]   M = ceil(C / segment): the mean key of each segment of a
//                                      slot (float32; float64 for float64 caches); optional
//   k, v              [N, Hkv, Sq, D]  new keys/values of N sequences, Sq each (already rotated)
//   q, out            [N, Hq, Sq, D]   Hq = G * Hkv; query head h reads kv head h / G
//   lengths           int32 [N]        kv_cache_append: positions already in the slot before
//                                      the append; kv_cache_attention: positions in the slot
//                                      after it (the queries are the newest Sq of them)
//   slots             int32 [N]        the slot of each sequence, in [0, S), distinct in an append
//
// Position p of a slot lives at row p % C: with C >= every length the slot is a plain buffer;
// with C shorter it is a ring holding the last C positions (a sliding-window layer's cache stays
// C rows however long the text grows).
//
// kv_cache_append: for n < N, i < Sq, position p = lengths[n] + i: k_cache[slots[n], :, p % C] =
// k[n, :, i] (v likewise). An append longer than C keeps only its last C positions. With means
// (segment routing; then every p < C, no ring): for each segment s touched by the append
// (lengths[n] / segment <= s <= (lengths[n] + Sq - 1) / segment), means[slots[n], h, s] = the
// mean over positions j in [s * segment, min(L, (s + 1) * segment)), L = lengths[n] + Sq, of
// k_cache[slots[n], h, j], summed in position order in the stats dtype (as segment_mean over
// the first L keys).
//
// kv_cache_attention: query row i of sequence n sits at position p = lengths[n] - Sq + i (so
// lengths[n] >= Sq). It sees key positions j with lo <= j <= p (always causal), where
// lo = max(0, lengths[n] - C) (what a ring still holds) and
//   Global   no further bound
//   Sliding  j > p - window
//   Block    j / window == p / window
// and, with means (mask Global only), only keys of the selected segments: the query's own
// segment p / segment, then the topk - 1 best of the segments s < p / segment by score
// scale * sum over the `group` query heads g of its group (heads [h / group * group, +group)) of
// q[n, g, i] . means[slot, g / G, s] (ties to the lower segment; the scores computed in the stats
// dtype). out[n, h, i] = sum_j softmax(scale * q . k_j)_j v_j over the visible keys; a row that
// sees no key gets 0. Scores and the softmax in float32 (float64 for float64).
//
// Errors (raised by the op when it runs): a slot outside [0, S); lengths[n] < 0 (append) or
// lengths[n] < Sq or > the positions the slot can address (attention); an append with means
// past C; repeated slots in one append.
#pragma once
#include <cstdint>

namespace dualroute {

// The row of position p in a slot of capacity c.
inline int64_t kv_row(int64_t p, int64_t c) { return p % c; }

}  // namespace dualroute
