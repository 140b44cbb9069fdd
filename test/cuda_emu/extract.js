#!/usr/bin/env node
// Extracts the device code of the attention kernels (tensor-core and SIMT) from the real sources into
// includes the emulator tests compile, so they always run the code as it is in the repository.
//
//   node test/cuda_emu/extract.js [--fwd-src FILE] [--bwd-src FILE] [--out DIR]
//
// --fwd-src replaces native/cuda/attention.cu (regions fwd and simt), --bwd-src
// native/cuda/attention_bwd.cu (a mutated copy, say); headers always come from the repository.
// Output (default build/cuda_emu/gen): attn_fwd_kernel.inc (which also carries device.cuh's
// device helpers, for the forward's exact path and the SIMT kernels after it),
// attn_simt_kernel.inc (always included after attn_fwd_kernel.inc), attn_bwd_kernel.inc. A file is rewritten only when its
// text changes.
//
// Per source: the lines between "// emu:begin <tag>" and "// emu:end <tag>" (inside the file's
// anonymous namespace), wrapped in the same namespaces, with a #line directive so that compiler
// messages and the emulator's reports name the real file and line. One-line substitutions:
//   extern __shared__ ... TYPE NAME[];   ->  TYPE* NAME = reinterpret_cast<TYPE*>(::emu::dyn_smem());
//   __shared__ TYPE A[N], B[M][K];       ->  TYPE* A = ::emu::static_smem<TYPE>(N);
//                                            TYPE (*B)[K] = ::emu::static_smem<TYPE[K]>(M);
// The file's <system> includes are kept; "device.cuh" and "mma.cuh" are replaced by emu.h; any
// other quoted include is an error. The host code the tests mirror (launch geometry, parameter
// set-up) is checked for the exact statements they assume. Anything missing: exit 1.
'use strict';
const fs = require('fs');
const path = require('path');

const ROOT = path.resolve(__dirname, '..', '..');
const CUDA = path.join(ROOT, 'native', 'cuda');

class ExtractError extends Error {}
const norm = (s) => s.replace(/\s+/g, ' ').trim();

// Host statements whose values the tests reproduce (whitespace-insensitive). If one changes, the
// test's launch code must be revisited.
const HOST_FWD = [
  'P.tiles = (P.n + kBM - 1) / kBM;',
  'const int64_t blocks = BH * P.tiles;',
  'constexpr int smem = mma_smem_bytes<D>();',
  'attn_fwd_mma<D, DUAL><<<static_cast<unsigned>(blocks), kMmaThreads, smem, stream()>>>(P);',
  'P.G = static_cast<int>(a.Hq / a.Hkv);',
  'P.n = static_cast<int>(a.query_index ? a.n : a.Sq);',
  'P.window = a.mask == static_cast<int32_t>(AttnMask::Global) ? 1 : std::min<long long>(a.window, 1LL << 40);',
  'P.scale2 = static_cast<float>(a->scale * kLog2e);',
  'P.scale2 = static_cast<float>(a.scale * kLog2e);',
  'const int64_t BH = a->B * a->Hq;',
  'P.out = out_local;',
  'P.lse = static_cast<float*>(lse_local);',
  'P.out_mix = out;',
  'P.out_g = out_global;',
  'P.lse_g = static_cast<float*>(lse_global);',
  'P.gates_per_head = d->gates_per_head ? 1 : 0;',
  'P.global_rows = d->global_rows;',
  'P.scale = static_cast<float>(a->scale);', // backward parameters are filled here too
];
const HOST_BWD = [
  'P.KT = kBN;',
  'P.tiles = (P.Sk + kBN - 1) / kBN;',
  'const int64_t blocks = BKV * P.tiles;',
  'const long long rows = static_cast<long long>(BKV) * P.G * P.n;',
  'constexpr int rows_per_block = (kDotThreads / 32) * (32 / (D / 8));',
  'const long long dot_blocks = (rows + rows_per_block - 1) / rows_per_block;',
  'constexpr int smem = bwd_smem_bytes<D, DUAL>();',
  'DR_CUDA_TRY(scratch_alloc(&scratch, static_cast<size_t>(rows) * (DUAL ? 2 : 1) * sizeof(float) + static_cast<size_t>(blocks + 1) * sizeof(int)));',
  'float* dr_g = DUAL ? dr + rows : nullptr;',
  'attn_bwd_dot<D, DUAL><<<static_cast<unsigned>(dot_blocks), kDotThreads, 0, stream()>>>(',
  'static_cast<const bf16_t*>(P.out), static_cast<const bf16_t*>(P.dout), dr, rows, static_cast<const bf16_t*>(P.out_g), static_cast<const bf16_t*>(P.gates), dr_g, P.gates_per_head, P.Hq, P.Sq);',
  'attn_bwd_mma<D, DUAL><<<static_cast<unsigned>(blocks), kBwdThreads, smem, stream()>>>(P, dr, dr_g);',
  'P.redo = reinterpret_cast<int*>(dr + rows * (DUAL ? 2 : 1));',
  'if (status == 0) status = check(cudaMemsetAsync(P.redo, 0, sizeof(int), stream()), name);',
  'Pr.KT = kRedoKeys;',
  'const int rsmem = 4 * kRedoKeys * D * static_cast<int>(sizeof(float)) + kRedoKeys;',
  'for (int path = DUAL ? 1 : 0; status == 0 && path <= (DUAL ? 2 : 0); ++path) {',
  'attn_bwd_redo<D / 32><<<redo_grid, kRedoThreads, rsmem, stream()>>>(Pr, path);',
  'if (P.D == 32) return launch_t<32, false>(P, BKV, name);',
  'if (P.D == 32) return launch_t<32, true>(P, BKV, name);',
];

// The SIMT kernels' launches (launch_warp*, launch_split*, launch_bwd*, rope).
const HOST_SIMT = [
  'P.tiles = (P.n + kWarpRows - 1) / kWarpRows;',
  'attn_fwd_warp<T, DPL, DUAL><<<static_cast<unsigned>(blocks), kWarpRows * 32, 0, stream()>>>(P);',
  'if (P.D <= 32) return launch_warp<T, 1, DUAL>(P, BH, name);',
  'if (P.D <= 64) return launch_warp<T, 2, DUAL>(P, BH, name);',
  'if (P.D <= 128) return launch_warp<T, 4, DUAL>(P, BH, name);',
  'if (P.D <= 256) return launch_warp<T, 8, DUAL>(P, BH, name);',
  'return launch_warp<T, 16, DUAL>(P, BH, name);',
  'if (P.D <= 256) return launch_split_t<T, 8>(P, BH, S, name);',
  'if (P.D <= 256) return launch_bwd_t<T, 8>(P, BKV, name);',
  'const long long blocks = rows * S;',
  'DR_CUDA_TRY(scratch_alloc(&scratch, static_cast<size_t>(blocks) * (2 + static_cast<size_t>(P.D)) * sizeof(float)));',
  'attn_fwd_split<T, DPL><<<static_cast<unsigned>(blocks), kSplitWarps * 32, 0, stream()>>>(P, part, S);',
  'const long long mblocks = (rows + kWarpRows - 1) / kWarpRows;',
  'attn_split_merge<T><<<static_cast<unsigned>(mblocks), kWarpRows * 32, 0, stream()>>>(P, part, S, rows);',
  'P.KT = P.D <= 256 ? 32 : 16;',
  'P.tiles = (P.Sk + P.KT - 1) / P.KT;',
  'const int64_t blocks = BKV * P.tiles;',
  'const size_t smem = static_cast<size_t>(4) * P.KT * P.D * sizeof(float) + P.KT;',
  'attn_bwd_warp<T, DPL><<<static_cast<unsigned>(blocks), kBwdThreads, smem, stream()>>>(P);',
  'const int64_t rows = B * H * S;',
  'const int blocks = grid_for(total);',
  'rope_kernel<float><<<blocks, kThreads, 0, stream()>>>(static_cast<float*>(out->data), static_cast<const float*>(x->data), pos, rows, H, S, D, pos_2d, base, inverse);',
];

// The scan and sort kernels' launches (sort.cu).
const HOST_SORT = [
  'cumsum_rows<T><<<grid_cap(outer), kScanThreads, 0, stream()>>>(out, x, outer, dim, reverse, exclusive);',
  'cumsum_cols<T><<<grid_for(outer * inner), kThreads, 0, stream()>>>(out, x, outer, dim, inner, reverse, exclusive);',
  'if (P <= kSmemSort) {',
  'const int smem = static_cast<int>(P * sizeof(unsigned long long));',
  'sort_rows_smem<T><<<grid_cap(rows), kSortThreads, smem, stream()>>>(values, indices, x, rows, static_cast<int>(n), static_cast<int>(P), static_cast<int>(count), desc);',
  'sort_keys_init<T><<<grid, kThreads, 0, stream()>>>(keys, x, rows, n, P, desc);',
  'for (int64_t k = 2; status == 0 && k <= P; k <<= 1)',
  'for (int64_t j = k >> 1; status == 0 && j > 0; j >>= 1) {',
  'sort_keys_stage<<<grid, kThreads, 0, stream()>>>(keys, rows, P, k, j);',
  'sort_keys_emit<T><<<grid_for(rows * count), kThreads, 0, stream()>>>(values, indices, keys, x, rows, n, P, count);',
  'return launch_sorted<T>(static_cast<T*>(values->data), static_cast<int32_t*>(indices->data), static_cast<const T*>(x->data), rows, n, k, largest, "topk");',
  'return launch_sorted<T>(static_cast<T*>(values->data), static_cast<int32_t*>(indices->data), static_cast<const T*>(x->data), rows, n, n, descending, "sort");',
];

// The router gate's launches (routing.cu).
const HOST_ROUTING = [
  'const unsigned gblocks = static_cast<unsigned>((T + kGateWarps - 1) / kGateWarps);',
  'router_select<float><<<gblocks, kGateWarps * 32, 0, stream()>>>(',
  'const int nblocks = static_cast<int>((T + kPosTokens - 1) / kPosTokens);',
  'router_block_counts<<<nblocks, kThreads, 0, stream()>>>(cnt, pi, T, e, k, nblocks);',
  'router_scan<<<static_cast<unsigned>((E + kThreads - 1) / kThreads), kThreads, 0, stream()>>>(cnt, pc, e, k, nblocks, capacity);',
  'router_positions<<<nblocks, 32, 0, stream()>>>(static_cast<int32_t*>(positions->data), cnt, pi, T, e, k, nblocks, capacity);',
  'router_gate_bwd<<<static_cast<unsigned>((T + kGateWarps - 1) / kGateWarps), kGateWarps * 32, 0, stream()>>>(',
  'segment_select_kernel<<<static_cast<unsigned>((rows + kGateWarps - 1) / kGateWarps), kGateWarps * 32, 0, stream()>>>(',
  'const long long rows = B * (H / group) * Sq;',
  'const long long kSmem = 48 * 1024 / sizeof(float);',
  'const int cache = D + nseg <= kSmem ? 1 : 0;',
  'const long long per_warp = std::max<long long>(1, D + (cache ? nseg : 0));',
  'const int warps = static_cast<int>(std::min<long long>(kGateWarps, kSmem / per_warp));',
  'const size_t smem = static_cast<size_t>(warps * per_warp) * sizeof(float);',
  'const unsigned blocks = static_cast<unsigned>((rows + warps - 1) / warps);',
  'segment_topk_kernel<float><<<blocks, warps * 32, smem, stream()>>>(',
  'router_loss_tokens<<<grid_for(T), kThreads, 0, stream()>>>(plse, ssum, pl, T, e, score);',
  'router_loss_part<<<grid_for(nb * (E + 1)), kThreads, 0, stream()>>>(part, pl, plse, ssum, T, e, score, nb);',
  'router_loss_final<<<1, kThreads, 0, stream()>>>(static_cast<float*>(aux->data), static_cast<float*>(z->data),',
  'router_loss_bwd<<<grid_for(T), kThreads, 0, stream()>>>(',
];

// The segment kernels' launches (segment.cu).
const HOST_SEGMENT = [
  'const long long blocks = (P.rows + kSegWarps - 1) / kSegWarps;',
  'seg_bwd_warp<T, N><<<g, kSegWarps * 32, 0, stream()>>>(P);',
  'seg_fwd_warp<T, N><<<g, kSegWarps * 32, 0, stream()>>>(P);',
  'P.kv_stride = a.kv_head_stride ? a.kv_head_stride : a.Sk * a.D;',
  'P.nseg = static_cast<int>((a.Sk + segment - 1) / segment);',
  'P.scale = static_cast<float>(a.scale);',
  'seg_mean_kernel<float><<<grid_for(total), kThreads, 0, stream()>>>(',
  'seg_mean_bwd_kernel<float><<<grid_for(total), kThreads, 0, stream()>>>(',
  'const long long n = KIND == 2 && !DP.gates_per_head ? DP.P.rows / DP.P.Hq : DP.P.rows;',
  'dual_seg_fwd_warp<T, N><<<g, kSegWarps * 32, 0, stream()>>>(DP);',
  'dual_seg_bwd_warp<T, N><<<g, kSegWarps * 32, 0, stream()>>>(DP);',
  'dual_gate_grad_warp<T, N><<<g, kSegWarps * 32, 0, stream()>>>(DP);',
  'DP.window = std::min<long long>(a.window, 1LL << 40);',
];

// Random / hash / rule routing's launches (route_rules.cu): grid_for(n) blocks of kThreads.
const HOST_ROUTE_RULES = [
  'route_random_kernel<<<grid_for(n), kThreads, 0, stream()>>>(static_cast<int32_t*>(route->data), static_cast<const int32_t*>(thresholds->data), static_cast<int>(P), n, seed, offset);',
  'route_hash_kernel<<<grid_for(n), kThreads, 0, stream()>>>(static_cast<int32_t*>(route->data), pid, n, buckets, seed, limit);',
  'route_rules_kernel<<<grid_for(n), kThreads, 0, stream()>>>(static_cast<int32_t*>(route->data), pid, n, static_cast<const int32_t*>(rules->data), static_cast<int>(nrules), pl, L, fallback, limit);',
  'g_route_mutex, g_route_bad, name, ids,',
];
// The MoE kernels' launches (moe.cu).
const HOST_MOE = [
  'moe_plan_rows<<<grid_for(std::max<int64_t>(n, experts)), kThreads, 0, stream()>>>(pr, pi, pp, po, n, experts, capacity, N, bad);',
  'if (N > 0) DR_CUDA_TRY(check(cudaMemsetAsync(ps, 0xff, static_cast<size_t>(N) * sizeof(int32_t), stream()), name));',
  'moe_plan_sources<<<grid_for(n), kThreads, 0, stream()>>>(ps, pr, n);',
  'moe_plan_verify<<<grid_for(n), kThreads, 0, stream()>>>(ps, pr, n, bad);',
  'moe_gather_rows<float><<<blocks, kRowWarps * 32, 0, stream()>>>(static_cast<float*>(out->data), static_cast<const float*>(x->data), ps, pw, N, D, k, T * k);',
  'moe_combine_rows<float><<<blocks, kRowWarps * 32, 0, stream()>>>(static_cast<float*>(out->data), static_cast<const float*>(y->data), pr, pw, T, K, D, N);',
  'moe_weight_grad<float><<<blocks, kRowWarps * 32, 0, stream()>>>(pw, static_cast<const float*>(y->data), pr, static_cast<const float*>(dout->data), n, K, D, N);',
  'const int64_t row_tiles = (N + kGB - 1) / kGB + E + 2;',
  'const int64_t blocks = row_tiles * ((n + kGB - 1) / kGB);',
  '#define DR_GG(T, TB) grouped_gemm<T, TB><<<grid, kGThreads, 0, stream()>>>(static_cast<T*>(out->data), static_cast<const T*>(a->data), static_cast<const T*>(b->data), po, e, N, kk, nn)',
  'const int64_t blocks = E * ((K + kGB - 1) / kGB) * ((n + kGB - 1) / kGB);',
  'grouped_gemm_wgrad<float><<<grid, kGThreads, 0, stream()>>>(static_cast<float*>(out->data), static_cast<const float*>(a->data), static_cast<const float*>(g->data), po, e, N, kk, nn);',
];

// The norm kernels' launches (norm.cu).
const HOST_NORM = [
  'norm_warp<T, K, true, LAYER><<<blocks, 256, 0, stream()>>>(o, x, w, b, eps, mean, rstd, rows, cols);',
  'norm_warp<T, K, false, LAYER><<<blocks, 256, 0, stream()>>>(o, x, w, b, eps, mean, rstd, rows, cols);',
  'const int blocks = grid_cap((rows + 7) / 8);',
  'norm_block<T, LAYER><<<grid_cap(rows), 512, 0, stream()>>>(o, px, w, b, eps, mean, rstd, rows, cols);',
  'const bool vec = cols % V == 0 && reinterpret_cast<uintptr_t>(o) % 16 == 0 && reinterpret_cast<uintptr_t>(px) % 16 == 0;',
];

// The fused kernels' launches (fused.cu).
const HOST_FUSED = [
  'add_rms_fwd<T, 32><<<grid_cap((rows + 7) / 8), 256, 0, stream()>>>(ph, po, px, pr, pw, eps, rstd, rows, cols);',
  'add_rms_fwd<T, 512><<<grid_cap(rows), 512, 0, stream()>>>(ph, po, px, pr, pw, eps, rstd, rows, cols);',
  'add_rms_bw_dx<T, 32><<<grid_cap((rows + 7) / 8), 256, 0, stream()>>>(pdx, ph, pg, pd, pw, rstd, rows, cols);',
  'add_rms_bw_dx<T, 512><<<grid_cap(rows), 512, 0, stream()>>>(pdx, ph, pg, pd, pw, rstd, rows, cols);',
  'if (cols <= 1024) {',
  'const int64_t blocks = (cols + 31) / 32 * nchunks;',
  'add_rms_bw_partial<T><<<blocks, 256, 0, stream()>>>(part, ph, pg, rstd, rows, cols, chunk_rows);',
  'bias_act_bw_partial<T, F><<<blocks, 256, 0, stream()>>>(static_cast<T*>(dx.data), part, static_cast<const T*>(x.data), static_cast<const T*>(b.data), static_cast<const T*>(dy.data), rows, cols, chunk_rows);',
  'bias_act_fwd<T, F><<<grid_for(n), kThreads, 0, stream()>>>(static_cast<T*>(out.data), static_cast<const T*>(x.data), static_cast<const T*>(b.data), n, cols);',
  'fused_colsum_final<T><<<grid_cap((cols + 255) / 256), 256, 0, stream()>>>(out, part, nchunks, cols);',
];

// The decode-cache kernels' launches and parameters (kvcache.cu).
const HOST_KVCACHE = [
  'kv_check<<<grid_for(N), kThreads, 0, stream()>>>(P.len, P.slot, P.bad, P.N, static_cast<int>(S), P.C, P.Sq, 1, has_means ? 1 : 0);',
  'kv_check<<<grid_for(N), kThreads, 0, stream()>>>(P.len, P.slot, P.bad, static_cast<int>(N), static_cast<int>(S), P.C, P.Sq, 0, has_means ? 1 : 0);',
  'const long long rows = static_cast<long long>(P.N) * P.Hkv * std::min(P.Sq, P.C) * P.D;',
  'kv_append_rows<T><<<grid_for(rows), kThreads, 0, stream()>>>(P);',
  'const int nt = has_means && Sq > 0 ? static_cast<int>(std::min<int64_t>((Sq - 1) / segment + 2, M)) : 0;',
  'const long long mtotal = static_cast<long long>(P.N) * P.Hkv * nt * P.D;',
  'kv_append_means<T><<<grid_for(mtotal), kThreads, 0, stream()>>>(P, nt);',
  'P.segment = has_means ? static_cast<int>(segment) : 1;',
  'const long long blocks = (P.rows + kKvWarps - 1) / kKvWarps;',
  'if (dpl <= 1) kv_attn_warp<T, 1><<<g, kKvWarps * 32, 0, stream()>>>(P);',
  'else kv_attn_warp<T, 8><<<g, kKvWarps * 32, 0, stream()>>>(P);',
  'P.rows = N * Hq * Sq;',
  'P.window = std::min<long long>(window, 1LL << 40);',
  'P.group = has_means ? group : 1;',
  'P.scale = static_cast<float>(scale);',
];

// The LSTM kernels' launches (rnn.cu).
const HOST_RNN = [
  'DR_CUDA_TRY(lstm_smem(lstm_fwd<T>, 5 * H, smem, name));',
  'lstm_fwd<T><<<static_cast<unsigned>(B), kLstmThreads, smem, stream()>>>(',
  'status = lstm_smem(lstm_bwd<T>, 6 * H, smem, name);',
  'lstm_bwd<T><<<static_cast<unsigned>(B), kLstmThreads, smem, stream()>>>(',
  'lstm_bwd_w<T><<<grid_for(4 * H * H), kThreads, 0, stream()>>>(',
];

// The unary map kernels' launches (elementwise.cu's run_map1, unary_float), SwiGLU's, and the
// unary / SwiGLU backward's (backward.cu): unary_test.cpp mirrors them.
const HOST_EWMAP = [
  'const Layout<2> L = collapse<2>(out, strs);',
  'const int64_t* strs[2] = {out.strides, x.strides};',
  'if (is_flat(L)) {',
  'const int sa = static_cast<int>(L.str[1][0]);',
  'constexpr int V = 16 / (sizeof(TO) > sizeof(TA) ? sizeof(TO) : sizeof(TA));',
  'const bool vec = n >= V && aligned(o, sizeof(TO) * V) && (sa == 0 || aligned(a, sizeof(TA) * V));',
  'if (vec) map1_flat<V><<<grid_for(n / V), kThreads, 0, stream()>>>(o, a, sa, n, f);',
  'else map1_flat<1><<<grid_for(n), kThreads, 0, stream()>>>(o, a, sa, n, f);',
  'map1_strided<<<grid_for(n), kThreads, 0, stream()>>>(L, o, a, n, f);',
  'return run_map1<T, T>("unary " str, out, x, UnaryFloat<T, UnaryOp::name>{});',
  'case UnaryOp::Neg: return run_map1<int32_t, int32_t>("unary neg", *out, *x, UnaryInt<UnaryOp::Neg>{});',
  'case UnaryOp::Abs: return run_map1<int32_t, int32_t>("unary abs", *out, *x, UnaryInt<UnaryOp::Abs>{});',
  'case UnaryOp::Square: return run_map1<int32_t, int32_t>("unary square", *out, *x, UnaryInt<UnaryOp::Square>{});',
  'case UnaryOp::Sign: return run_map1<int32_t, int32_t>("unary sign", *out, *x, UnaryInt<UnaryOp::Sign>{});',
  'return run_map1<uint8_t, T>("logicalNot", *out, *x, LogicalNot<T>{});',
];
const HOST_EWMAP2 = [
  'const int64_t* strs[3] = {out.strides, av ? av->strides : kZeroStrides, bv ? bv->strides : kZeroStrides};',
  'const Layout<3> L = collapse<3>(out, strs);',
  'Arg<T> a{av ? static_cast<const T*>(av->data) : nullptr, aval};',
  'Arg<T> b{bv ? static_cast<const T*>(bv->data) : nullptr, bval};',
  'const int sa = static_cast<int>(L.str[1][0]), sb = static_cast<int>(L.str[2][0]);',
  'constexpr int V = 16 / (sizeof(TO) > sizeof(T) ? sizeof(TO) : sizeof(T));',
  'const bool vec = n >= V && aligned(o, sizeof(TO) * V) && (sa == 0 || aligned(a.p, sizeof(T) * V)) && (sb == 0 || aligned(b.p, sizeof(T) * V));',
  'if (vec) map2_flat<V><<<grid_for(n / V), kThreads, 0, stream()>>>(o, a, sa, b, sb, n, f);',
  'else map2_flat<1><<<grid_for(n), kThreads, 0, stream()>>>(o, a, sa, b, sb, n, f);',
  'map2_strided<<<grid_for(n), kThreads, 0, stream()>>>(L, o, a, b, n, f);',
  'case BinaryOp::OPNAME: return run_map2<T, T>(name, out, av, aval, bv, bval, BinaryInt<BinaryOp::OPNAME>{});',
  'case BinaryOp::OPNAME: return run_map2<T, T>(name, out, av, aval, bv, bval, BinaryFloat<T, BinaryOp::OPNAME>{});',
  'case BinaryOp::Eq: return run_map2<uint8_t, T>(name, out, av, aval, bv, bval, Compare<T, BinaryOp::Eq>{});',
  'return run_map2<uint8_t, T>(name, out, av, aval, bv, bval, Compare<T, BinaryOp::LogicalOr>{});',
  'return set_error(std::string(name) + ": arithmetic on bool tensors is not supported (cast first)");',
  'const T sv = host_from_d<T>(s);',
  'if (scalar_first) return binary_typed<T>("binary_scalar", op, *out, nullptr, sv, a, T{});',
  'return binary_typed<T>("binary_scalar", op, *out, a, T{}, nullptr, sv);',
  'inline bf16_t host_from_d<bf16_t>(double v) { __nv_bfloat16_raw r; r.x = float_to_bf16(static_cast<float>(v)).bits; return bf16_t(r); }',
];
const HOST_EWWHERE = [
  'const int64_t* strs[4] = {out.strides, cond.strides, a.strides, b.strides};',
  'const Layout<4> L = collapse<4>(out, strs);',
  'where_flat<U><<<grid_for(n), kThreads, 0, stream()>>>(o, c, static_cast<int>(L.str[1][0]), pa, static_cast<int>(L.str[2][0]), pb, static_cast<int>(L.str[3][0]), n);',
  'where_strided<U><<<grid_for(n), kThreads, 0, stream()>>>(L, o, c, pa, pb, n);',
  'case DType::I32: return where_bits<uint32_t>(*out, *cond, *a, *b);',
  'case DType::BF16: return where_bits<uint16_t>(*out, *cond, *a, *b);',
  'case DType::Bool: return where_bits<uint8_t>(*out, *cond, *a, *b);',
];
const HOST_EWCONVERT = [
  'if (out->dtype == in->dtype && view_contiguous(*out) && view_contiguous(*in)) {',
  'return run_map1<O, I>("copy", *out, *in, Convert<O, I>{});',
];
const HOST_EWSWIGLU = [
  'const int64_t h = out->ndim ? out->shape[out->ndim - 1] : 1;',
  'swiglu_kernel<float><<<grid_for(n), kThreads, 0, stream()>>>(static_cast<float*>(out->data), static_cast<const float*>(x->data), n, h);',
  'swiglu_kernel<bf16_t><<<grid_for(n), kThreads, 0, stream()>>>(static_cast<bf16_t*>(out->data), static_cast<const bf16_t*>(x->data), n, h);',
];
const HOST_BWUNARY = [
  'const int blocks = grid_cap((n + 255) / 256);',
  'unary_bw_kernel<T, static_cast<int>(UnaryOp::name)><<<blocks, 256, 0, stream()>>>(o, px, pg, n);',
  'if (op == static_cast<int32_t>(UnaryOp::LogicalNot)) return set_error("unary_backward: logicalNot has no gradient");',
];
const HOST_BWSWIGLU = [
  'const int64_t rows = h ? view_numel(*dy) / h : 0;',
  'const int blocks = grid_cap((rows * h + 255) / 256);',
  'swiglu_bw<float><<<blocks, 256, 0, stream()>>>(static_cast<float*>(dx->data), static_cast<const float*>(x->data), static_cast<const float*>(dy->data), rows, h);',
  'swiglu_bw<bf16_t><<<blocks, 256, 0, stream()>>>(static_cast<bf16_t*>(dx->data), static_cast<const bf16_t*>(x->data), static_cast<const bf16_t*>(dy->data), rows, h);',
];

const KERNELS = [
  {
    tag: 'fwd',
    src: 'fwd',
    def: path.join(CUDA, 'attention.cu'),
    out: 'attn_fwd_kernel.inc',
    host: HOST_FWD,
    needs: [/template <int D, bool DUAL>\s*__global__ void __launch_bounds__\(kMmaThreads\) attn_fwd_mma\(FwdParams P\)/, /struct FwdParams \{/],
    shared: { dynamic: 1, static: 1 },
    helpers: true,
  },
  {
    tag: 'simt',
    src: 'fwd',
    def: path.join(CUDA, 'attention.cu'),
    out: 'attn_simt_kernel.inc',
    host: HOST_SIMT,
    needs: [/template <typename T, int DPL, bool DUAL>\s*__global__ void __launch_bounds__\(kWarpRows \* 32\) attn_fwd_warp\(FwdParams P\)/,
      /template <typename T, int DPL>\s*__global__ void __launch_bounds__\(kSplitWarps \* 32\) attn_fwd_split\(FwdParams P, float\* part, int S\)/,
      /template <typename T>\s*__global__ void __launch_bounds__\(kWarpRows \* 32\) attn_split_merge\(FwdParams P, const float\* part, int S,\s*long long rows\)/,
      /template <typename T, int DPL>\s*__global__ void __launch_bounds__\(kBwdThreads\) attn_bwd_warp\(BwdParams P\)/,
      /template <typename T>\s*__global__ void rope_kernel\(T\* __restrict__ out, const T\* x, const int32_t\* __restrict__ pos, int64_t rows,\s*int64_t H, int64_t S, int64_t D, int pos_2d, double base, int inverse\)/],
    shared: { dynamic: 1, static: 3 },
  },
  {
    tag: 'bwd',
    src: 'bwd',
    def: path.join(CUDA, 'attention_bwd.cu'),
    out: 'attn_bwd_kernel.inc',
    host: HOST_BWD,
    needs: [/template <int D, bool DUAL>\s*__global__ void __launch_bounds__\(kBwdThreads\) attn_bwd_mma\(BwdParams P, const float\* __restrict__ Dr,\s*const float\* __restrict__ Dr_g\)/,
      /template <int D, bool DUAL>\s*__global__ void __launch_bounds__\(kDotThreads\) attn_bwd_dot\(/,
      /template <int DPL>\s*__global__ void __launch_bounds__\(kRedoThreads\) attn_bwd_redo\(BwdParams P, int path\)/],
    shared: { dynamic: 2, static: 1 },
    helpers: true,
  },
  {
    tag: 'sort',
    src: 'sort',
    def: path.join(CUDA, 'sort.cu'),
    out: 'sort_kernel.inc',
    host: HOST_SORT,
    needs: [/template <typename T>\s*__global__ void cumsum_cols\(/, /template <typename T>\s*__global__ void __launch_bounds__\(kScanThreads\) cumsum_rows\(/,
      /template <typename T>\s*__global__ void __launch_bounds__\(kSortThreads\) sort_rows_smem\(/,
      /__global__ void sort_keys_stage\(/, /template <typename T>\s*__global__ void sort_keys_init\(/, /template <typename T>\s*__global__ void sort_keys_emit\(/],
    shared: { dynamic: 1, static: 1 },
    helpers: true,
  },
  {
    tag: 'routing',
    src: 'routing',
    def: path.join(CUDA, 'routing.cu'),
    out: 'routing_kernel.inc',
    host: HOST_ROUTING,
    needs: [/template <typename T>\s*__global__ void __launch_bounds__\(kGateWarps \* 32\) router_select\(/, /__global__ void router_block_counts\(/,
      /__global__ void router_scan\(/, /__global__ void router_positions\(/, /__global__ void __launch_bounds__\(kGateWarps \* 32\) router_gate_bwd\(/,
      /__global__ void __launch_bounds__\(kGateWarps \* 32\) segment_select_kernel\(/,
      /template <typename T>\s*__global__ void __launch_bounds__\(kGateWarps \* 32\) segment_topk_kernel\(/, /__global__ void router_loss_tokens\(/, /__global__ void router_loss_part\(/,
      /__global__ void __launch_bounds__\(kThreads\) router_loss_final\(/, /__global__ void router_loss_bwd\(/],
    shared: { dynamic: 1, static: 2 },
    helpers: true,
  },
  {
    tag: 'segment',
    src: 'segment',
    def: path.join(CUDA, 'segment.cu'),
    out: 'segment_kernel.inc',
    host: HOST_SEGMENT,
    needs: [/template <typename T, int DPL>\s*__global__ void __launch_bounds__\(kSegWarps \* 32\) seg_fwd_warp\(SegParams P\)/,
      /template <typename T, int DPL>\s*__global__ void __launch_bounds__\(kSegWarps \* 32\) seg_bwd_warp\(SegParams P\)/,
      /template <typename T>\s*__global__ void seg_mean_kernel\(/, /template <typename T>\s*__global__ void seg_mean_bwd_kernel\(/,
      /template <typename T, int DPL>\s*__global__ void __launch_bounds__\(kSegWarps \* 32\) dual_seg_fwd_warp\(DualSegParams DP\)/,
      /template <typename T, int DPL>\s*__global__ void __launch_bounds__\(kSegWarps \* 32\) dual_seg_bwd_warp\(DualSegParams DP\)/,
      /template <typename T, int DPL>\s*__global__ void __launch_bounds__\(kSegWarps \* 32\) dual_gate_grad_warp\(DualSegParams DP\)/],
    shared: { dynamic: 0, static: 0 },
    helpers: true,
  },
  {
    tag: 'kvcache',
    src: 'kvcache',
    def: path.join(CUDA, 'kvcache.cu'),
    out: 'kvcache_kernel.inc',
    host: HOST_KVCACHE,
    needs: [/__global__ void kv_check\(/, /template <typename T>\s*__global__ void kv_append_rows\(KvAppendParams P\)/,
      /template <typename T>\s*__global__ void kv_append_means\(KvAppendParams P, int nt\)/,
      /template <typename T, int DPL>\s*__global__ void __launch_bounds__\(kKvWarps \* 32\) kv_attn_warp\(KvAttnParams P\)/,
      /constexpr int kKvBadSlot = 0;/, /constexpr int kKvBadLength = 1;/, /constexpr int kKvBadCapacity = 2;/, /constexpr int kKvBadRepeat = 3;/],
    shared: { dynamic: 0, static: 2 },
    helpers: true,
  },
  {
    tag: 'route_rules',
    src: 'routeRules',
    def: path.join(CUDA, 'route_rules.cu'),
    out: 'route_rules_kernel.inc',
    host: HOST_ROUTE_RULES,
    needs: [/__global__ void route_random_kernel\(/, /__global__ void route_hash_kernel\(/, /__global__ void route_rules_kernel\(/,
      /__device__ unsigned long long g_route_bad;/],
    shared: { dynamic: 0, static: 0 },
    helpers: true,
    // quoted includes the region may use, included before it (philox.h is plain host/device C++)
    includes: ['../core/philox.h'],
  },
  {
    tag: 'moe',
    src: 'moe',
    def: path.join(CUDA, 'moe.cu'),
    out: 'moe_kernel.inc',
    host: HOST_MOE,
    needs: [/__global__ void moe_plan_rows\(/, /__global__ void moe_plan_sources\(/, /__global__ void moe_plan_verify\(/,
      /template <typename T>\s*__global__ void __launch_bounds__\(kRowWarps \* 32\) moe_gather_rows\(/,
      /template <typename T>\s*__global__ void __launch_bounds__\(kRowWarps \* 32\) moe_combine_rows\(/,
      /template <typename T>\s*__global__ void __launch_bounds__\(kRowWarps \* 32\) moe_weight_grad\(/,
      /template <typename T, bool TB>\s*__global__ void __launch_bounds__\(kGThreads\) grouped_gemm\(/,
      /template <typename T>\s*__global__ void __launch_bounds__\(kGThreads\) grouped_gemm_wgrad\(/],
    shared: { dynamic: 0, static: 6 },
    helpers: true,
  },
  {
    tag: 'ewconv',
    src: 'elementwise',
    def: path.join(CUDA, 'elementwise.cu'),
    out: 'ewconv_kernel.inc',
    host: [],
    needs: [/__device__ __forceinline__ T from_d\(double v\);/],
    shared: { dynamic: 0, static: 0 },
    helpers: true,
    includes: ['../core/philox.h'],
  },
  {
    tag: 'ewbinary',
    src: 'elementwise',
    def: path.join(CUDA, 'elementwise.cu'),
    out: 'ewbinary_kernel.inc',
    host: ['DR_BIN_INT(Minimum) DR_BIN_INT(FloorDiv) DR_BIN_INT(Remainder)', 'DR_BIN_FLOAT(Maximum) DR_BIN_FLOAT(Minimum) DR_BIN_FLOAT(FloorDiv) DR_BIN_FLOAT(Remainder)'],
    needs: [/__device__ __forceinline__ float binary_f\(float a, float b\)/, /struct BinaryInt \{/],
    shared: { dynamic: 0, static: 0 },
    includes: ['../core/philox.h'],
  },
  {
    tag: 'ewmap',
    src: 'elementwise',
    def: path.join(CUDA, 'elementwise.cu'),
    out: 'ewmap_kernel.inc',
    host: HOST_EWMAP,
    needs: [/template <int N>\s*struct Layout \{/, /template <int N>\s*Layout<N> collapse\(const View& shape_of, const int64_t\* const \(&strides\)\[N\]\)/,
      /template <int N>\s*bool is_flat\(const Layout<N>& L\)/,
      /template <int V, typename TO, typename TA, typename F>\s*__global__ void map1_flat\(TO\* __restrict__ o, const TA\* __restrict__ a, int sa, int64_t n, F f\)/,
      /template <typename TO, typename TA, typename F>\s*__global__ void map1_strided\(Layout<2> L, TO\* __restrict__ o, const TA\* __restrict__ a, int64_t n, F f\)/],
    shared: { dynamic: 0, static: 0 },
    includes: ['../core/philox.h', '../core/view.h'],
  },
  {
    tag: 'ewmap2',
    src: 'elementwise',
    def: path.join(CUDA, 'elementwise.cu'),
    out: 'ewmap2_kernel.inc',
    host: HOST_EWMAP2,
    needs: [/template <int V, typename TO, typename T, typename F>\s*__global__ void map2_flat\(TO\* __restrict__ o, Arg<T> a, int sa, Arg<T> b, int sb, int64_t n, F f\)/,
      /template <typename TO, typename T, typename F>\s*__global__ void map2_strided\(Layout<3> L, TO\* __restrict__ o, Arg<T> a, Arg<T> b, int64_t n, F f\)/],
    shared: { dynamic: 0, static: 0 },
    includes: ['../core/philox.h'],
  },
  {
    tag: 'ewconvert',
    src: 'elementwise',
    def: path.join(CUDA, 'elementwise.cu'),
    out: 'ewconvert_kernel.inc',
    host: HOST_EWCONVERT,
    needs: [/template <typename O, typename I>\s*struct Convert \{/],
    shared: { dynamic: 0, static: 0 },
    includes: ['../core/philox.h'],
  },
  {
    tag: 'ewcompare',
    src: 'elementwise',
    def: path.join(CUDA, 'elementwise.cu'),
    out: 'ewcompare_kernel.inc',
    host: [],
    needs: [/template <typename T, BinaryOp OP>\s*struct Compare \{/],
    shared: { dynamic: 0, static: 0 },
    includes: ['../core/philox.h'],
  },
  {
    tag: 'ewwhere',
    src: 'elementwise',
    def: path.join(CUDA, 'elementwise.cu'),
    out: 'ewwhere_kernel.inc',
    host: HOST_EWWHERE,
    needs: [/template <typename U>\s*__global__ void where_flat\(U\* __restrict__ o, const uint8_t\* __restrict__ c, int sc, const U\* __restrict__ a, int sa,\s*const U\* __restrict__ b, int sb, int64_t n\)/,
      /template <typename U>\s*__global__ void where_strided\(Layout<4> L, U\* __restrict__ o, const uint8_t\* __restrict__ c, const U\* __restrict__ a,\s*const U\* __restrict__ b, int64_t n\)/],
    shared: { dynamic: 0, static: 0 },
    includes: ['../core/philox.h'],
  },
  {
    tag: 'ewunary',
    src: 'elementwise',
    def: path.join(CUDA, 'elementwise.cu'),
    out: 'ewunary_kernel.inc',
    host: [],
    needs: [/template <UnaryOp OP>\s*__device__ __forceinline__ float unary_f\(float x\)/, /template <typename T, UnaryOp OP>\s*struct UnaryFloat \{/,
      /template <UnaryOp OP>\s*struct UnaryInt \{/, /template <typename T>\s*struct LogicalNot \{/],
    shared: { dynamic: 0, static: 0 },
    includes: ['../core/philox.h'],
  },
  {
    tag: 'ewswiglu',
    src: 'elementwise',
    def: path.join(CUDA, 'elementwise.cu'),
    out: 'ewswiglu_kernel.inc',
    host: HOST_EWSWIGLU,
    needs: [/template <typename T>\s*__global__ void swiglu_kernel\(T\* __restrict__ o, const T\* __restrict__ x, int64_t n, int64_t h\)/],
    shared: { dynamic: 0, static: 0 },
    includes: ['../core/philox.h'],
  },
  {
    tag: 'bwunary',
    src: 'backward',
    def: path.join(CUDA, 'backward.cu'),
    out: 'bwunary_kernel.inc',
    host: HOST_BWUNARY,
    needs: [/template <int OP>\s*__device__ __forceinline__ float unary_grad\(float v, float g\)/,
      /template <typename T, int OP>\s*__global__ void unary_bw_kernel\(T\* __restrict__ dx, const T\* __restrict__ x, const T\* __restrict__ dy, int64_t n\)/],
    shared: { dynamic: 0, static: 0 },
  },
  {
    tag: 'bwswiglu',
    src: 'backward',
    def: path.join(CUDA, 'backward.cu'),
    out: 'bwswiglu_kernel.inc',
    host: HOST_BWSWIGLU,
    needs: [/template <typename T>\s*__global__ void swiglu_bw\(T\* __restrict__ dx, const T\* __restrict__ x, const T\* __restrict__ dy, int64_t rows,\s*int64_t h\)/],
    shared: { dynamic: 0, static: 0 },
  },
  {
    tag: 'norm',
    src: 'norm',
    def: path.join(CUDA, 'norm.cu'),
    out: 'norm_kernel.inc',
    host: HOST_NORM,
    needs: [/template <typename T, int K, bool VEC, bool LAYER>\s*__global__ void norm_warp\(/, /template <typename T, bool LAYER>\s*__global__ void norm_block\(/],
    shared: { dynamic: 0, static: 2 },
    helpers: true,
  },
  {
    tag: 'fused',
    src: 'fused',
    def: path.join(CUDA, 'fused.cu'),
    out: 'fused_kernel.inc',
    host: HOST_FUSED,
    needs: [/template <typename T, int G>\s*__global__ void add_rms_fwd\(/, /template <typename T, int G>\s*__global__ void add_rms_bw_dx\(/,
      /template <typename T>\s*__global__ void add_rms_bw_partial\(/, /template <typename T, FAct F>\s*__global__ void bias_act_fwd\(/,
      /template <typename T, FAct F>\s*__global__ void bias_act_bw_partial\(/, /template <typename T>\s*__global__ void fused_colsum_final\(/],
    shared: { dynamic: 0, static: 5 },
    helpers: true,
  },
  {
    tag: 'rnn',
    src: 'rnn',
    def: path.join(CUDA, 'rnn.cu'),
    out: 'rnn_kernel.inc',
    host: HOST_RNN,
    needs: [/constexpr int kLstmThreads = 256;/, /template <typename T>\s*__global__ void __launch_bounds__\(kLstmThreads\)\s*lstm_fwd\(/,
      /template <typename T>\s*__global__ void __launch_bounds__\(kLstmThreads\)\s*lstm_bwd\(/, /template <typename T>\s*__global__ void lstm_bwd_w\(/],
    shared: { dynamic: 2, static: 0 },
    helpers: true,
  },
];

function extractOne(k, src) {
  const file = path.resolve(src);
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ExtractError(`${k.tag}: cannot read ${file}: ${e.message}`);
  }
  const lines = text.split('\n');
  const find = (marker) => {
    const at = [];
    lines.forEach((l, i) => {
      if (l.trim().startsWith(marker) && (l.trim() === marker || /\s/.test(l.trim()[marker.length]))) at.push(i);
    });
    if (at.length !== 1) throw new ExtractError(`${file}: expected one "${marker}" line, found ${at.length}`);
    return at[0];
  };
  const b = find(`// emu:begin ${k.tag}`);
  const e = find(`// emu:end ${k.tag}`);
  if (e <= b) throw new ExtractError(`${file}: "emu:end ${k.tag}" comes before "emu:begin ${k.tag}"`);

  // The region must sit directly in dualroute::cuda's anonymous namespace.
  const opens = lines.slice(0, b).filter((l) => /^\s*namespace\b[^;]*\{/.test(l)).map((l) => l.trim());
  if (norm(opens.join(' ')) !== 'namespace dualroute { namespace cuda { namespace {')
    throw new ExtractError(`${file}: "emu:begin ${k.tag}" is not inside dualroute::cuda's anonymous namespace (opened: ${opens.join(' | ')})`);

  // Includes of the whole file.
  const sys = [];
  for (const l of lines) {
    const m = /^\s*#\s*include\s*([<"])([^>"]+)[>"]/.exec(l);
    if (!m) continue;
    if (m[1] === '<') sys.push(`#include <${m[2]}>`);
    else if (!['../core/attention.h', 'attention.cuh', 'attention_generic.cuh', 'device.cuh', 'mma.cuh', ...(k.includes || [])].includes(m[2]))
      throw new ExtractError(`${file}: include "${m[2]}" is not known to the emulator (extend emu.h / extract.js)`);
  }

  let region = lines.slice(b + 1, e);
  let dyn = 0;
  let stat = 0;
  region = region.map((l) => {
    let m = /^(\s*)extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+(?:\s+[\w:]+)*?)\s+(\w+)\s*\[\s*\]\s*;(.*)$/.exec(l);
    if (m) {
      ++dyn;
      return `${m[1]}${m[2]}* ${m[3]} = reinterpret_cast<${m[2]}*>(::emu::dyn_smem());${m[4]}`;
    }
    // __shared__ T a[N], b[M][K];  ->  one pointer per declarator (to rows for 2-D arrays)
    m = /^(\s*)__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+(?:\s+[\w:]+)*?)\s+(\w+\s*(?:\[[^\]]+\]\s*)+(?:,\s*\w+\s*(?:\[[^\]]+\]\s*)+)*);(.*)$/.exec(l);
    if (m) {
      const decls = m[3].split(/,(?![^\[]*\])/).map((d) => {
        ++stat;
        const dm = /^\s*(\w+)\s*((?:\[[^\]]+\]\s*)+)$/.exec(d);
        const dims = [...dm[2].matchAll(/\[([^\]]+)\]/g)].map((x) => x[1].trim());
        if (dims.length > 2) throw new ExtractError(`${file}: __shared__ ${dm[1]} has more than 2 dimensions`);
        return dims.length === 1
          ? `${m[2]}* ${dm[1]} = ::emu::static_smem<${m[2]}>(${dims[0]});`
          : `${m[2]} (*${dm[1]})[${dims[1]}] = ::emu::static_smem<${m[2]}[${dims[1]}]>(${dims[0]});`;
      });
      return `${m[1]}${decls.join(' ')}${m[4]}`;
    }
    return l;
  });
  const body = region.join('\n');
  if (dyn !== k.shared.dynamic || stat !== k.shared.static)
    throw new ExtractError(`${file}: expected ${k.shared.dynamic} extern __shared__ and ${k.shared.static} static __shared__ declarations in the region, found ${dyn} and ${stat} (update extract.js)`);
  const left = body.replace(/__syncthreads\w*/g, '');
  if (/__shared__/.test(left)) throw new ExtractError(`${file}: a __shared__ declaration extract.js cannot rewrite is left in the region`);
  if (/\basm\b/.test(left)) throw new ExtractError(`${file}: inline asm in the region (the emulator needs a C++ equivalent in emu.h)`);
  for (const re of k.needs)
    if (!re.test(body)) throw new ExtractError(`${file}: the region lacks ${re} (renamed? update the tests)`);

  const flat = norm(text);
  return { file, text, flat, begin: b + 2, end: e, sys, body };
}

function checkHost(k, all) {
  for (const stmt of k.host) {
    const want = norm(stmt);
    if (!all.some((g) => g.flat.includes(want)))
      throw new ExtractError(`${k.tag}: host statement not found in ${all.map((g) => path.basename(g.file)).join(' / ')}: "${stmt}" (the test mirrors it; update both)`);
  }
}

// device.cuh's device helpers (gtid, ld, st, warp_sum, warp_max, block_sum, ...): the lines from
// its "// ---- device: indexing" section to its "// ---- bad-index slot" section (record_bad is
// emu.h's), for the forward's exact path (fwd_row) and the SIMT kernels. The activations.cuh that
// device.cuh includes (act_sigmoid, act_gelu, ...: plain device code) is #included before them.
function deviceHelpers() {
  const file = path.join(CUDA, 'device.cuh');
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const at = (p) => {
    const i = lines.findIndex((l) => l.startsWith(p));
    if (i < 0) throw new ExtractError(`${file}: no line starting "${p}" (update extract.js)`);
    return i;
  };
  const b = at('// ---- device: indexing');
  const e = at('// ---- bad-index slot');
  const body = lines.slice(b, e).join('\n');
  for (const f of ['warp_sum', 'warp_max', 'gtid', 'gstride', 'ld', 'st'])
    if (!new RegExp(`\\b${f}\\(`).test(body)) throw new ExtractError(`${file}: ${f}() is not between the device markers`);
  if (/\basm\b/.test(body)) throw new ExtractError(`${file}: inline asm in the device helpers`);
  if (!lines.some((l) => l.trim() === 'constexpr int kThreads = 256;'))  // rope's block size, mirrored by the test
    throw new ExtractError(`${file}: "constexpr int kThreads = 256;" not found (update attn_simt_test.cpp)`);
  return ['namespace dualroute {', 'namespace cuda {', `#line ${b + 1} "${file}"`, body, '}  // namespace cuda',
    '}  // namespace dualroute'];
}

function render(k, g) {
  const inc = (p) => `#include "${p}"`;
  return [
    `// Generated by test/cuda_emu/extract.js from ${g.file} lines ${g.begin}-${g.end}; do not edit.`,
    ...g.sys,
    '#include "emu.h"',
    inc(path.join(ROOT, 'native', 'core', 'attention.h')),
    inc(path.join(CUDA, 'attention.cuh')),
    ...(k.helpers ? [inc(path.join(CUDA, 'activations.cuh')), ...deviceHelpers()] : []),
    ...(k.helpers ? [inc(path.join(CUDA, 'attention_generic.cuh'))] : []),
    ...(k.includes || []).map((f) => inc(path.join(CUDA, f))),
    'namespace dualroute {',
    'namespace cuda {',
    'namespace {',
    `#line ${g.begin} "${g.file}"`,
    g.body,
    '}  // namespace',
    '}  // namespace cuda',
    '}  // namespace dualroute',
    '',
  ].join('\n');
}

// Returns { tag: path } for every kernel region; throws ExtractError.
function extract(opts = {}) {
  const outDir = path.resolve(opts.outDir || path.join(ROOT, 'build', 'cuda_emu', 'gen'));
  const srcs = { fwd: opts.fwdSrc, bwd: opts.bwdSrc, sort: opts.sortSrc, routing: opts.routingSrc, segment: opts.segmentSrc, kvcache: opts.kvcacheSrc, routeRules: opts.routeRulesSrc, moe: opts.moeSrc, norm: opts.normSrc, fused: opts.fusedSrc, elementwise: opts.elementwiseSrc, backward: opts.backwardSrc, rnn: opts.rnnSrc };
  const got = KERNELS.map((k) => extractOne(k, srcs[k.src] || k.def));
  for (const k of KERNELS) checkHost(k, got);
  fs.mkdirSync(outDir, { recursive: true });
  const res = {};
  KERNELS.forEach((k, i) => {
    const out = path.join(outDir, k.out);
    const text = render(k, got[i]);
    let old = null;
    try {
      old = fs.readFileSync(out, 'utf8');
    } catch {
      /* first run */
    }
    if (old !== text) fs.writeFileSync(out, text);
    res[k.tag] = out;
  });
  return res;
}

module.exports = { extract, ExtractError, ROOT };

if (require.main === module) {
  const args = process.argv.slice(2);
  const opts = {};
  for (let i = 0; i < args.length; ++i) {
    const a = args[i];
    const val = () => {
      if (i + 1 >= args.length) {
        console.error(`extract.js: ${a} needs a value`);
        process.exit(2);
      }
      return args[++i];
    };
    if (a === '--fwd-src') opts.fwdSrc = val();
    else if (a === '--bwd-src') opts.bwdSrc = val();
    else if (a === '--sort-src') opts.sortSrc = val();
    else if (a === '--routing-src') opts.routingSrc = val();
    else if (a === '--segment-src') opts.segmentSrc = val();
    else if (a === '--kvcache-src') opts.kvcacheSrc = val();
    else if (a === '--route-rules-src') opts.routeRulesSrc = val();
    else if (a === '--moe-src') opts.moeSrc = val();
    else if (a === '--norm-src') opts.normSrc = val();
    else if (a === '--fused-src') opts.fusedSrc = val();
    else if (a === '--rnn-src') opts.rnnSrc = val();
    else if (a === '--elementwise-src') opts.elementwiseSrc = val();
    else if (a === '--backward-src') opts.backwardSrc = val();
    else if (a === '--out') opts.outDir = val();
    else {
      console.error(`extract.js: unknown argument ${a}\nusage: node test/cuda_emu/extract.js [--fwd-src FILE] [--bwd-src FILE] [--sort-src FILE] [--routing-src FILE] [--segment-src FILE] [--kvcache-src FILE] [--route-rules-src FILE] [--moe-src FILE] [--norm-src FILE] [--fused-src FILE] [--elementwise-src FILE] [--backward-src FILE] [--rnn-src FILE] [--out DIR]`);
      process.exit(2);
    }
  }
  try {
    const r = extract(opts);
    console.log(`extract.js: wrote ${Object.values(r).join(', ')}`);
  } catch (e) {
    if (!(e instanceof ExtractError)) throw e;
    console.error(`extract.js: ${e.message}`);
    process.exit(1);
  }
}
