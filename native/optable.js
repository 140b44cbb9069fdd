// The op table: every native op and every backend kernel is declared here, once.
//
// scripts/gen-ops.js turns it into (all generated at build time, never committed):
//   native/generated/optable.h     OpId, the argument struct of each op (its "baton"), the
//                                  dtype/device support table behind supports(), and the
//                                  declarations of ops::check(args) / ops::run(args), which
//                                  every op's dispatcher defines (a missing one fails the link)
//   native/generated/bindings.inc  the N-API entry of each op: reads the positional arguments
//                                  the TypeScript wrapper passes into the baton, checking each
//   native/generated/kernels.h     the kernel lists: the CPU declarations (per ISA variant),
//                                  the CUDA backend's table (api.h) and its ABI hash
//   lib/generated/native_ops.ts    a TypeScript function per op taking named arguments, the
//                                  enum name lists, and supports(op, dtype, device)
// Adding an op: one entry in `ops` (and in `kernels` if it needs a new kernel), its check()/run()
// in native/ops/<family>.cpp, its kernels in native/cpu/<family>.cpp and native/cuda/<family>.cu,
// its lib/ops function, its backward rule in lib/autograd/rules, its tests.
//
// An op's arguments, in the order the wrapper passes them:
//   Tensor name         read
//   out Tensor name     written whole (outputs)
//   inout Tensor name   read and updated in place (accumulators, optimizer state)
//   Tensor? name        optional (absent: null/undefined on the TypeScript side)
//   bool, int (int32), int64, uint64 (both integers below 2^53), float (float32 in C++),
//   double, int[] (a list of int32), or an enum below
// `dtypeOf` names the tensor whose dtype the support table is about (default: the first
// tensor argument); every tensor argument must be on one device unless `crossDevice`.
// `dtypes` lists the dtypes each backend supports for that tensor; the dispatcher's check()
// adds the finer rules (int32 only for some unary ops, and so on).
// `inline`: on the CPU, an op whose tensors hold at most this many elements in all runs at once
// on the calling thread when its stream is idle (a thread hand-off costs more than the work).
// Default by family: work linear in the elements (element-wise, rows, index, backward, optim)
// 262144; matmul and attention, whose work grows faster than their tensors, 16384.
'use strict';

const FLOAT = ['float32', 'bfloat16', 'float64'];
const FLOAT_GPU = ['float32', 'bfloat16'];
const ALL = ['float32', 'bfloat16', 'float64', 'int32', 'bool'];
const ALL_GPU = ['float32', 'bfloat16', 'int32', 'bool'];
const NUM = ['float32', 'bfloat16', 'float64', 'int32'];
const NUM_GPU = ['float32', 'bfloat16', 'int32'];
const floats = { cpu: FLOAT, cuda: FLOAT_GPU };

// Enums cross the boundary as their index in `values`; TypeScript passes the name.
const enums = {
  UnaryOp: {
    doc: 'element-wise unary ops',
    values: ['neg', 'abs', 'exp', 'log', 'sqrt', 'rsqrt', 'sin', 'cos', 'tanh', 'sigmoid', 'relu', 'gelu', 'geluTanh',
      'silu', 'square', 'reciprocal', 'floor', 'ceil', 'round', 'sign', 'erf', 'log1p', 'expm1', 'logicalNot'],
  },
  BinaryOp: {
    doc: 'element-wise binary ops; eq..logicalOr give bool',
    values: ['add', 'sub', 'mul', 'div', 'pow', 'maximum', 'minimum', 'floorDiv', 'remainder', 'eq', 'ne', 'lt', 'le', 'gt',
      'ge', 'logicalAnd', 'logicalOr'],
  },
  ReduceOp: { doc: 'reductions', values: ['sum', 'mean', 'max', 'min'] },
  ArgReduceOp: { doc: 'index reductions', values: ['argmax', 'argmin'] },
  RandomKind: { doc: 'Philox draws', values: ['uniform', 'normal'] },
  AttnMask: { doc: 'attention masks (core/attention.h)', values: ['global', 'sliding', 'block'] },
  RouterScore: { doc: 'router gate scores', values: ['softmax', 'sigmoid'] },
};

const attnOptions = 'AttnMask mask, bool causal, int64 window, double scale, Tensor? keyPadding';

const ops = [
  // ---- creation and copies ----
  { name: 'fill', family: 'elementwise', args: 'out Tensor out, double value', dtypes: { cpu: ALL, cuda: ALL_GPU },
    doc: 'out = value, any layout' },
  { name: 'arange', family: 'elementwise', args: 'out Tensor out, double start, double step',
    dtypes: { cpu: NUM, cuda: NUM_GPU }, doc: 'out[i] = start + i * step over the flat index; out contiguous' },
  { name: 'random', family: 'elementwise',
    args: 'out Tensor out, RandomKind kind, uint64 seed, uint64 offset, double a, double b',
    dtypes: { cpu: NUM, cuda: NUM_GPU },
    doc: 'Philox draws: uniform in [a, b) (integers floor(a + (b - a) u) for int32) or normal(a, b); element i uses stream index offset + i (2i, 2i+1 for normal); out contiguous' },
  { name: 'copy', family: 'elementwise', args: 'out Tensor out, Tensor x', dtypeOf: 'x',
    dtypes: { cpu: ALL, cuda: ALL_GPU }, doc: 'out = x cast to out\'s dtype, same shape, same device, any layouts' },
  { name: 'transfer', family: 'elementwise', args: 'out Tensor out, Tensor x', dtypeOf: 'x', crossDevice: true,
    dtypes: { cpu: ALL, cuda: ALL_GPU },
    doc: 'out = x on another device (same shape and dtype; out contiguous); ordered after the work queued on both devices' },

  // ---- element-wise ----
  { name: 'unary', family: 'elementwise', args: 'UnaryOp op, out Tensor out, Tensor x', dtypeOf: 'x',
    dtypes: { cpu: ALL, cuda: ALL_GPU },
    doc: 'out = f(x), same shape; float x, or int32 for neg/abs/square/sign, any dtype for logicalNot (bool out)' },
  { name: 'binary', family: 'elementwise', args: 'BinaryOp op, out Tensor out, Tensor a, Tensor b', dtypeOf: 'a',
    dtypes: { cpu: ALL, cuda: ALL_GPU },
    doc: 'out = a op b, a and b of one dtype broadcast to out\'s shape; comparisons write bool' },
  { name: 'binaryScalar', family: 'elementwise',
    args: 'BinaryOp op, out Tensor out, Tensor a, double scalar, bool scalarFirst', dtypeOf: 'a',
    dtypes: { cpu: ALL, cuda: ALL_GPU }, doc: 'out = a op s (or s op a), the scalar taken in a\'s dtype' },
  { name: 'where', family: 'elementwise', args: 'out Tensor out, Tensor cond, Tensor a, Tensor b', dtypeOf: 'a',
    dtypes: { cpu: ALL, cuda: ALL_GPU }, doc: 'out = cond ? a : b, all broadcast to out\'s shape; cond bool' },
  { name: 'swiglu', family: 'elementwise', args: 'out Tensor out, Tensor x', dtypes: floats,
    doc: 'x [..., 2h] = [gate | up], out [..., h] = silu(gate) * up' },

  // ---- reductions ----
  { name: 'reduce', family: 'reduce', args: 'ReduceOp op, out Tensor out, Tensor x, int[] axes', dtypeOf: 'x',
    dtypes: { cpu: NUM, cuda: NUM_GPU },
    doc: 'sum/mean/max/min of x over axes; out contiguous with the kept dims\' element count' },
  { name: 'argReduce', family: 'reduce', args: 'ArgReduceOp op, out Tensor out, Tensor x, int axis', dtypeOf: 'x',
    dtypes: { cpu: NUM, cuda: NUM_GPU }, doc: 'argmax/argmin along axis into int32 out; the first index wins ties' },

  // ---- scans, selection, sorting ----
  { name: 'cumsum', family: 'sort', args: 'out Tensor out, Tensor x, int axis, bool reverse, bool exclusive',
    dtypeOf: 'x', dtypes: { cpu: NUM, cuda: NUM_GPU },
    doc: 'running sum along axis (from the end when reverse; exclusive: each element left out of its own sum); int32 sums must stay in int32 (else a RangeError)' },
  { name: 'topk', family: 'sort', args: 'out Tensor values, out Tensor indices, Tensor x, int k, bool largest',
    dtypeOf: 'x', dtypes: { cpu: NUM, cuda: NUM_GPU }, inline: 16384,
    doc: 'the k largest (smallest) of each row of x [rows, n] along the last axis, best first; indices int32; ties to the lower index; NaN counts as the largest value' },
  { name: 'sort', family: 'sort', args: 'out Tensor values, out Tensor indices, Tensor x, bool descending',
    dtypeOf: 'x', dtypes: { cpu: NUM, cuda: NUM_GPU }, inline: 16384,
    doc: 'stable sort of each row of x [rows, n] along the last axis; indices int32; NaN counts as the largest value' },

  // ---- routing ----
  { name: 'routerGate', family: 'routing',
    args: 'out Tensor indices, out Tensor weights, out Tensor positions, out Tensor counts, out Tensor scores, Tensor logits, Tensor? bias, Tensor? noise, RouterScore score, int k, bool normalize, double routeScale, int groups, int topGroups, int capacity',
    dtypeOf: 'logits', dtypes: floats,
    doc: 'router gate over logits [T, E]: scores (softmax / sigmoid, float32; float64 for float64 logits) [T, E]; the top k of scores + bias + noise (within the best topGroups of groups when groups > 1) as int32 indices [T, k], weights (scores, normalised over the k when normalize, times routeScale) [T, k]; positions [T, k] int32: the entry\'s rank in its expert, first choices of all tokens before second choices, in token order, -1 past capacity (capacity 0: none); counts [E] int32 kept per expert' },
  { name: 'routerGateBackward', family: 'routing',
    args: 'out Tensor dlogits, Tensor scores, Tensor indices, Tensor dweights, RouterScore score, bool normalize, double routeScale',
    dtypeOf: 'scores', dtypes: { cpu: ['float32', 'float64'], cuda: ['float32'] },
    doc: 'dlogits [T, E] of the gate weights: through the normalisation and the softmax / sigmoid' },
  { name: 'routerLosses', family: 'routing',
    args: 'out Tensor aux, out Tensor zloss, out Tensor lse, out Tensor fraction, Tensor logits, Tensor first, RouterScore score',
    dtypeOf: 'logits', dtypes: { cpu: ['float32', 'float64'], cuda: ['float32'] },
    doc: 'routerGate\'s losses: logits [T, E] (stats dtype), first choices int32 [T]; aux, zloss scalars; lse [T] and fraction [E] (first choices per expert / T) kept for the backward' },
  { name: 'routerLossesBackward', family: 'routing',
    args: 'out Tensor dlogits, Tensor logits, Tensor lse, Tensor fraction, Tensor daux, Tensor dz, RouterScore score',
    dtypeOf: 'logits', dtypes: { cpu: ['float32', 'float64'], cuda: ['float32'] },
    doc: 'dlogits [T, E] from the losses\' gradients daux, dz (scalars)' },
  { name: 'segmentSelect', family: 'routing',
    args: 'out Tensor indices, out Tensor weights, Tensor scores, int group, bool causal, bool keepOwn, int64 segment, int64 keyLength',
    dtypeOf: 'scores', dtypes: { cpu: ['float32', 'float64'], cuda: ['float32'] },
    doc: 'scores [B, H, Sq, nseg]; indices int32 and weights (the scores\' dtype) [B, H, Sq, K]: the top K segments per row (core/attention.h\'s segment routing; lib/ops/segment.ts)' },
  { name: 'segmentTopk', family: 'routing',
    args: 'out Tensor indices, Tensor q, Tensor summaries, double scale, int group, bool causal, int64 segment, int64 keyLength',
    dtypeOf: 'q', dtypes: floats,
    doc: 'segmentSelect\'s indices [B, Hq, Sq, K] (int32) from q [B, Hq, Sq, D] and the segment summaries [B, Hkv, nseg, D] (float32; float64 for float64 q) without forming the scores: scale * (q . summary) summed over each `group` query heads, own segment first when causal (keepOwn = causal), segments after the row skipped when causal, -1 pads' },
  // ---- random, hash and rule routing (issue 13 parts 3-4; native/*/route_rules.*) ----
  { name: 'randomRoute', family: 'route_rules', args: 'out Tensor route, Tensor thresholds, uint64 seed, uint64 offset',
    dtypeOf: 'route', dtypes: { cpu: ['int32'], cuda: ['int32'] },
    doc: 'route[t] (int32 [T]) = the first p with (philox_u32(seed, offset + t) >> 1) <= thresholds[p]; thresholds int32 [P], non-decreasing, the last 2^31 - 1' },
  { name: 'hashRoute', family: 'route_rules', args: 'out Tensor route, Tensor ids, int buckets, uint64 seed, int64 limit',
    dtypeOf: 'ids', dtypes: { cpu: ['int32'], cuda: ['int32'] },
    doc: 'route = (philox4x32(seed, id).v[0] * buckets) >> 32 per id (int32, any shape; route contiguous, ids\' shape); an id < 0 or >= limit (limit > 0) is a RangeError' },
  { name: 'ruleRoute', family: 'route_rules', args: 'out Tensor route, Tensor ids, Tensor rules, Tensor? lut, int fallback, int64 limit',
    dtypeOf: 'ids', dtypes: { cpu: ['int32'], cuda: ['int32'] },
    doc: 'route = the route of the rule lo <= id <= last holding id (rules int32 [n, 3] rows lo, last, route, sorted and disjoint; or lut[id] when lut int32 [L] is given and id < L), else fallback; an id < 0 or >= limit (limit > 0) is a RangeError' },

  // ---- mixture of experts (token dispatch to experts, combine, grouped GEMM) ----
  { name: 'moePlan', family: 'moe',
    args: 'out Tensor rows, out Tensor sources, Tensor indices, Tensor positions, Tensor? offsets, int experts, int capacity',
    dtypeOf: 'indices', dtypes: { cpu: ['int32'], cuda: ['int32'] },
    doc: 'the grouped-buffer row of every (token, choice): rows [T, K] int32 = offsets[e] + p (dropless: offsets [E+1] given) or e * capacity + p (capacity layout), -1 where p = positions[t, k] is -1; sources [N] int32 its inverse (t * K + k, -1 for an empty row); a bad expert, position, offset or two entries on one row is a RangeError' },
  { name: 'moeGather', family: 'moe', args: 'out Tensor out, Tensor x, Tensor sources, Tensor? weights, int k',
    dtypeOf: 'x', dtypes: floats,
    doc: 'out [N, D]: row r = weights[s] * x[s / k] for s = sources[r] >= 0 (no weights: 1), 0 where s = -1; x [T, D]; weights [T*k] float32 (float64 for float64 x)' },
  { name: 'moeCombine', family: 'moe', args: 'out Tensor out, Tensor y, Tensor rows, Tensor? weights',
    dtypeOf: 'y', dtypes: floats,
    doc: 'out [T, D] = sum over k with rows[t, k] >= 0 of weights[t, k] * y[rows[t, k]] (no weights: 1); y [N, D]' },
  { name: 'moeCombineWeightGrad', family: 'moe', args: 'out Tensor dweights, Tensor y, Tensor rows, Tensor dout',
    dtypeOf: 'y', dtypes: floats,
    doc: 'dweights [T, K] (float32; float64 for float64 y) = dot(y[rows[t, k]], dout[t]), 0 where rows[t, k] = -1' },
  { name: 'groupedMatmul', family: 'moe', args: 'out Tensor out, Tensor a, Tensor b, Tensor offsets, bool transB',
    dtypeOf: 'a', dtypes: floats, inline: 16384,
    doc: 'per expert e: out[rows of e] = a[rows of e] @ op(b[e]), rows of e = [offsets[e], offsets[e+1]) (clamped to be disjoint, increasing and inside [0, N)); other rows 0; a [N, k], b [E, k, n] (transB: [E, n, k]), out [N, n]' },
  { name: 'groupedMatmulWeightGrad', family: 'moe', args: 'out Tensor out, Tensor a, Tensor g, Tensor offsets',
    dtypeOf: 'a', dtypes: floats, inline: 16384,
    doc: 'out [E, k, n]: out[e] = a[rows of e]^T @ g[rows of e] (0 for an expert without rows); a [N, k], g [N, n]' },

  // ---- matmul ----
  { name: 'matmul', family: 'matmul',
    args: 'out Tensor out, Tensor a, Tensor b, bool transA, bool transB, float alpha, float beta', dtypeOf: 'a',
    dtypes: floats,
    doc: 'out = alpha op(a) @ op(b) + beta out over broadcast batch dims; out contiguous' },

  // ---- row-wise nn ops ----
  { name: 'softmax', family: 'rows', args: 'out Tensor out, Tensor x, int axis, bool log', dtypeOf: 'x',
    dtypes: floats, doc: 'softmax (log-softmax when log) along axis' },
  { name: 'rmsNorm', family: 'rows', args: 'out Tensor out, Tensor x, Tensor? weight, float eps, out Tensor? rstd',
    dtypeOf: 'x', dtypes: floats,
    doc: 'RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight; rstd [rows] float32 (float64 for float64 x)' },
  { name: 'layerNorm', family: 'rows',
    args: 'out Tensor out, Tensor x, Tensor? weight, Tensor? bias, float eps, out Tensor? mean, out Tensor? rstd',
    dtypeOf: 'x', dtypes: floats,
    doc: 'LayerNorm over the last axis (biased variance); mean/rstd [rows] like rmsNorm\'s rstd' },
  { name: 'crossEntropy', family: 'rows',
    args: 'out Tensor loss, Tensor logits, Tensor targets, int ignoreIndex, float smoothing, out Tensor? lse',
    dtypeOf: 'logits', dtypes: floats,
    doc: 'per-row loss = lse - (1-s) x[t] - s/C sum_j x[j] (0 where t == ignoreIndex); logits [rows, C], targets int32 [rows]; a target outside [0, C) is a RangeError' },

  // ---- indexing ----
  { name: 'embedding', family: 'index', args: 'out Tensor out, Tensor ids, Tensor table', dtypeOf: 'table',
    dtypes: floats, doc: 'out[..., :] = table[ids[...], :]; ids int32; an id outside [0, V) is a RangeError' },
  { name: 'gather', family: 'index', args: 'out Tensor out, Tensor x, Tensor index, int axis', dtypeOf: 'x',
    dtypes: { cpu: ALL, cuda: ALL_GPU }, doc: 'torch.gather along axis; index int32 of out\'s shape' },
  { name: 'scatterAdd', family: 'index', args: 'inout Tensor out, Tensor index, Tensor src, int axis',
    dtypeOf: 'out', dtypes: { cpu: NUM, cuda: NUM_GPU },
    doc: 'out[..., index[..., j, ...], ...] += src[..., j, ...] along axis, in place; out contiguous' },

  // ---- backward kernels ----
  { name: 'softmaxBackward', family: 'backward', args: 'out Tensor dx, Tensor y, Tensor dy, int axis, bool log',
    dtypeOf: 'y', dtypes: floats,
    doc: 'softmax: dx = y (dy - sum(dy y)); log-softmax (y its output): dx = dy - exp(y) sum(dy)' },
  { name: 'rmsNormBackward', family: 'backward',
    args: 'out Tensor dx, out Tensor? dweight, Tensor x, Tensor? weight, Tensor rstd, Tensor dy', dtypeOf: 'x',
    dtypes: floats, doc: 'xhat = x r, g = dy w: dx = r (g - xhat mean(g xhat)), dweight = sum_rows dy xhat' },
  { name: 'layerNormBackward', family: 'backward',
    args: 'out Tensor dx, out Tensor? dweight, out Tensor? dbias, Tensor x, Tensor? weight, Tensor mean, Tensor rstd, Tensor dy',
    dtypeOf: 'x', dtypes: floats,
    doc: 'xhat = (x - mean) r: dx = r (g - mean(g) - xhat mean(g xhat)), dbias = sum_rows dy' },
  { name: 'crossEntropyBackward', family: 'backward',
    args: 'out Tensor dlogits, Tensor logits, Tensor targets, Tensor lse, Tensor dloss, int ignoreIndex, float smoothing',
    dtypeOf: 'logits', dtypes: floats, doc: 'dlogits = dloss (softmax - (1-s) onehot(t) - s/C), 0 for ignored rows' },
  { name: 'unaryBackward', family: 'backward', args: 'UnaryOp op, out Tensor dx, Tensor x, Tensor dy', dtypeOf: 'x',
    dtypes: floats, doc: 'dx = dy f\'(x)' },
  { name: 'swigluBackward', family: 'backward', args: 'out Tensor dx, Tensor x, Tensor dy', dtypeOf: 'x',
    dtypes: floats, doc: 'x = [a | b], dy [rows, h]: da = dy b silu\'(a), db = dy silu(a)' },

  // ---- optimizer steps ----
  { name: 'adamwStep', family: 'optim',
    args: 'inout Tensor param, Tensor grad, inout Tensor expAvg, inout Tensor expAvgSq, double lr, double beta1, double beta2, double eps, double weightDecay, int64 step, double gradScale',
    dtypeOf: 'param', dtypes: { cpu: ['float32', 'float64'], cuda: ['float32'] },
    doc: 'PyTorch AdamW in place with g = grad * gradScale; grad of param\'s dtype or bfloat16' },
  { name: 'sgdStep', family: 'optim',
    args: 'inout Tensor param, Tensor grad, inout Tensor? momentumBuf, double lr, double momentum, double dampening, double weightDecay, bool nesterov, bool firstStep, double gradScale',
    dtypeOf: 'param', dtypes: { cpu: ['float32', 'float64'], cuda: ['float32'] },
    doc: 'PyTorch SGD in place; firstStep sets buf = g instead of the momentum update' },

  // ---- attention ----
  { name: 'attentionForward', family: 'attention',
    args: `out Tensor out, out Tensor? lse, Tensor q, Tensor k, Tensor v, ${attnOptions}, Tensor? queryIndex, Tensor? queryCount`,
    dtypeOf: 'q', dtypes: floats, doc: 'fused attention (core/attention.h): out [B,Hq,n,D], lse [B,Hq,n]' },
  { name: 'attentionBackward', family: 'attention',
    args: `inout Tensor dq, inout Tensor dk, inout Tensor dv, Tensor q, Tensor k, Tensor v, Tensor out, Tensor dout, Tensor lse, ${attnOptions}, Tensor? queryIndex, Tensor? queryCount`,
    dtypeOf: 'q', dtypes: floats, doc: 'adds into float32 (float64) accumulators dq, dk, dv' },
  { name: 'dualAttentionForward', family: 'attention',
    args: `out Tensor out, out Tensor outLocal, out Tensor outGlobal, out Tensor lseLocal, out Tensor lseGlobal, Tensor q, Tensor k, Tensor v, Tensor gates, ${attnOptions}, Tensor? globalRows`,
    dtypeOf: 'q', dtypes: floats,
    doc: 'g_local * local + g_global * global in one pass; mask is the local path\'s; globalRows bool [B, Sq]' },
  { name: 'dualAttentionBackward', family: 'attention',
    args: `inout Tensor dq, inout Tensor dk, inout Tensor dv, Tensor q, Tensor k, Tensor v, Tensor outLocal, Tensor outGlobal, Tensor dout, Tensor lseLocal, Tensor lseGlobal, Tensor gates, ${attnOptions}, Tensor? globalRows`,
    dtypeOf: 'q', dtypes: floats, doc: 'the dual forward\'s q/k/v gradient, added into dq, dk, dv' },
  { name: 'segmentAttentionForward', family: 'attention',
    args: 'out Tensor out, out Tensor? lse, Tensor q, Tensor k, Tensor v, Tensor indices, int64 segment, bool causal, double scale',
    dtypeOf: 'q', dtypes: floats,
    doc: 'each query attends over the keys of the segments its row of indices [B,Hq,Sq,K] lists (core/attention.h)' },
  { name: 'segmentAttentionBackward', family: 'attention',
    args: 'inout Tensor dq, inout Tensor dk, inout Tensor dv, Tensor q, Tensor k, Tensor v, Tensor out, Tensor dout, Tensor lse, Tensor indices, int64 segment, bool causal, double scale',
    dtypeOf: 'q', dtypes: floats, doc: 'adds into float32 (float64) accumulators dq, dk, dv' },
  { name: 'dualSegmentAttentionForward', family: 'attention',
    args: 'out Tensor out, out Tensor outLocal, out Tensor outGlobal, out Tensor lseLocal, out Tensor lseGlobal, Tensor q, Tensor k, Tensor v, Tensor gates, Tensor indices, AttnMask mask, bool causal, int64 window, double scale, int64 segment',
    dtypeOf: 'q', dtypes: floats,
    doc: 'g_local * local + g_global * segment attention (indices [B,Hq,Sq,K]) in one pass; mask is the local path\'s' },
  { name: 'dualSegmentAttentionBackward', family: 'attention',
    args: 'inout Tensor dq, inout Tensor dk, inout Tensor dv, out Tensor dgates, Tensor q, Tensor k, Tensor v, Tensor outLocal, Tensor outGlobal, Tensor dout, Tensor lseLocal, Tensor lseGlobal, Tensor gates, Tensor indices, AttnMask mask, bool causal, int64 window, double scale, int64 segment',
    dtypeOf: 'q', dtypes: floats,
    doc: 'the segment dual forward\'s gradient: adds into dq, dk, dv; writes dgates (float32/float64, the gates\' shape)' },
  { name: 'segmentMean', family: 'attention', args: 'out Tensor out, Tensor x, int64 segment, bool backward',
    dtypeOf: 'x', dtypes: floats,
    doc: 'x [outer, S, D] -> out [outer, ceil(S / segment), D], the mean of each segment of rows (the last may be short); backward: x is dout, out is dx [outer, S, D]' },
  { name: 'rope', family: 'attention', args: 'out Tensor out, Tensor x, Tensor positions, double base, bool inverse',
    dtypeOf: 'x', dtypes: floats,
    doc: 'rotary embedding, rotate-half: x [B,H,S,D]; positions int32 [S] or [B,S]; inverse undoes it' },

  // ---- decode caches shared by many sequences (continuous batching; native/*/kvcache.*) ----
  { name: 'kvCacheAppend', family: 'kvcache',
    args: 'inout Tensor kCache, inout Tensor vCache, inout Tensor? means, Tensor k, Tensor v, Tensor lengths, Tensor slots, int64 segment',
    dtypeOf: 'k', dtypes: floats,
    doc: 'writes k, v [N,Hkv,Sq,D] at positions lengths[n] + i of cache slot slots[n] (caches [S,Hkv,C,D], position p at row p % C: a ring when C is short); means [S,Hkv,ceil(C/segment),D] (stats dtype): the touched segments\' mean keys recomputed (core/kvcache.h)' },
  { name: 'kvCacheAttention', family: 'kvcache',
    args: 'out Tensor out, Tensor q, Tensor kCache, Tensor vCache, Tensor lengths, Tensor slots, Tensor? means, AttnMask mask, int64 window, int64 segment, int topK, int group, double scale',
    dtypeOf: 'q', dtypes: floats, inline: 0,
    doc: 'causal attention of q [N,Hq,Sq,D] (the newest Sq positions of each sequence, lengths[n] in all) over cache slot slots[n]; sliding/block masks, or (means given) the top-K segments (core/kvcache.h)' },

  // ---- recurrent layers (native/*/rnn.*) ----
  { name: 'lstmForward', family: 'rnn',
    args: 'out Tensor h, out Tensor hN, out Tensor cN, out Tensor saved, Tensor xw, Tensor whh, Tensor h0, Tensor c0',
    dtypeOf: 'xw', dtypes: floats, inline: 16384,
    doc: 'one LSTM layer over the sequence (gates i, f, g, o as PyTorch): xw [B, S, 4H] = x W_ih^T + b, whh [4H, H], h0, c0 [B, H]; h [B, S, H] every step, hN, cN [B, H] the last state; saved [B, S, 5H] (float32, float64 for float64 xw): the activated gates i, f, g, o and c of every step, for the backward' },
  { name: 'lstmBackward', family: 'rnn',
    args: 'out Tensor dxw, out Tensor dwhh, out Tensor dh0, out Tensor dc0, Tensor? dh, Tensor? dhN, Tensor? dcN, Tensor h, Tensor saved, Tensor whh, Tensor h0, Tensor c0',
    dtypeOf: 'h', dtypes: floats, inline: 16384,
    doc: 'lstmForward\'s backward through time: from dh [B, S, H], dhN, dcN [B, H] (absent: 0) and the forward\'s h, saved, whh, h0, c0: dxw [B, S, 4H], dwhh [4H, H], dh0, dc0 [B, H]' },
];

// Backend kernels: plain functions over Views (core/view.h) and argument structs, no tensors,
// no allocation. Each line gives the CPU declaration `void name(const View& out, ...)` in
// namespace cpu (and its ISA variants) and the CUDA table entry `int (*name)(const View* out,
// ...)` (enums and bools cross the C ABI as int32). Types: View, MatmulArgs, AttnArgs,
// DualArgs (by reference / pointer), ptr (void*), cptr (const void*), the enums above, bool,
// int, int64, uint64, float, double. `cudaExtra` params exist on the CUDA side only.
const kernels = [
  { name: 'fill', params: 'View out, double value', doc: 'out = value (any dtype, any strides)' },
  { name: 'arange', params: 'View out, double start, double step',
    doc: 'out[i] = start + i * step over the flat index (contiguous out)' },
  { name: 'random', params: 'View out, RandomKind kind, uint64 seed, uint64 offset, double a, double b',
    doc: 'Philox draws, element i of the flat index uses stream index offset + i (see philox.h)' },
  { name: 'copy', params: 'View out, View in', doc: 'out = in, same shape, any strides, dtype cast' },
  { name: 'unary', params: 'UnaryOp op, View out, View x', doc: 'out = f(x), same shape; x any strides' },
  { name: 'binary', params: 'BinaryOp op, View out, View a, View b',
    doc: 'out = a op b; a and b already broadcast to out\'s shape (stride 0 where broadcast)' },
  { name: 'binary_scalar', params: 'BinaryOp op, View out, View a, double s, bool scalar_first',
    doc: 'out = a op s (s op a when scalar_first)' },
  { name: 'where', params: 'View out, View cond, View a, View b',
    doc: 'out = cond ? a : b; all broadcast to out\'s shape, cond is Bool' },
  { name: 'reduce', params: 'ReduceOp op, View out, View x, int nreduce',
    doc: 'x has out\'s dims followed by `nreduce` reduced dims; out contiguous' },
  { name: 'arg_reduce', params: 'ArgReduceOp op, View out, View x',
    doc: 'x has out\'s dims followed by one reduced dim; out int32 contiguous; first index wins ties' },
  { name: 'cumsum', params: 'View out, View x, int64 outer, int64 dim, int64 inner, bool reverse, bool exclusive',
    doc: 'x, out contiguous [outer, dim, inner]; running sums over dim; int32: RangeError when a sum leaves int32 (CUDA: recorded on the device, reported after a stream wait)' },
  { name: 'topk', params: 'View values, View indices, View x, int k, bool largest',
    doc: 'x contiguous [rows, n]; values [rows, k] (x\'s dtype), indices int32 [rows, k], contiguous; best first, ties to the lower index, NaN largest' },
  { name: 'sort', params: 'View values, View indices, View x, bool descending',
    doc: 'x contiguous [rows, n]; values, indices (int32) [rows, n] contiguous; stable; NaN largest' },
  { name: 'router_gate',
    params: 'View indices, View weights, View positions, View counts, View scores, View logits, View bias, View noise, RouterScore score, int k, bool normalize, double route_scale, int groups, int top_groups, int capacity',
    doc: 'logits contiguous [T, E]; bias [E] / noise [T, E] (the scores\' dtype) or null; outputs contiguous (see the op)' },
  { name: 'router_gate_backward', params: 'View dlogits, View scores, View indices, View dweights, RouterScore score, bool normalize, double route_scale',
    doc: 'scores, dlogits [T, E]; indices, dweights [T, k]; all contiguous, the scores\' dtype' },
  { name: 'router_losses', params: 'View aux, View z, View lse, View f, View logits, View first, RouterScore score',
    doc: 'logits contiguous [T, E] float32 (float64 on the CPU), first int32 [T]; aux, z [], lse [T], f [E] (see native/cpu/routing.cpp); a first choice outside [0, E): RangeError' },
  { name: 'router_losses_backward', params: 'View dlogits, View logits, View lse, View f, View daux, View dz, RouterScore score',
    doc: 'dlogits, logits [T, E]; lse [T]; f [E]; daux, dz scalars (device memory)' },
  { name: 'segment_select', params: 'View indices, View weights, View scores, int group, bool causal, bool keep_own, int64 segment, int64 key_length',
    doc: 'scores contiguous [B, H, Sq, nseg] (rows of `group` heads summed); indices int32, weights [B, H, Sq, K] contiguous: own segment first (keep_own), then by score, ties to the lower index, NaN largest; causal: segments starting after the row\'s position are no candidates; -inf is no candidate; -1 pads' },
  { name: 'segment_topk', params: 'View indices, View q, View summaries, double scale, int group, bool causal, int64 segment, int64 key_length',
    doc: 'q contiguous [B, H, Sq, D], summaries contiguous [B, Hkv, nseg, D] (float32; float64 for float64 q), indices int32 [B, H, Sq, K] contiguous: segment_select\'s indices (keep_own = causal) of the scores scale * q . summaries (group heads summed), never stored whole' },
  // ---- random, hash and rule routing (native/cpu/route_rules.cpp, native/cuda/route_rules.cu) ----
  { name: 'route_random', params: 'View route, View thresholds, uint64 seed, uint64 offset',
    doc: 'route int32 [T], thresholds int32 [P], contiguous: route[t] = first p with (philox_u32(seed, offset + t) >> 1) <= thresholds[p] (P - 1 if none)' },
  { name: 'route_hash', params: 'View route, View ids, int buckets, uint64 seed, int64 limit',
    doc: 'ids, route int32 contiguous, same numel: route = (philox4x32(seed, id).v[0] * buckets) >> 32; RangeError (first position) for id < 0 or id >= limit > 0 (CUDA: recorded on the device, reported after a stream wait)' },
  { name: 'route_rules', params: 'View route, View ids, View rules, View lut, int fallback, int64 limit',
    doc: 'ids, route int32 contiguous; rules int32 [n, 3] (lo, last inclusive, route) sorted, disjoint; lut int32 [L] or null (then used for id < L); else fallback; RangeError as route_hash' },
  { name: 'moe_plan', params: 'View rows, View sources, View indices, View positions, View offsets, int experts, int capacity',
    doc: 'indices, positions [T, K], rows [T, K], sources [N] int32 contiguous; offsets [E+1] or null (then the capacity layout); RangeError for bad data (CUDA: recorded on the device, reported after a stream wait)' },
  { name: 'moe_gather', params: 'View out, View x, View sources, View weights, int k',
    doc: 'out [N, D], x [T, D], sources [N], weights [T*k] (stats dtype) or null; contiguous; sources already checked (moe_plan)' },
  { name: 'moe_combine', params: 'View out, View y, View rows, View weights',
    doc: 'out [T, D], y [N, D], rows [T, K], weights [T, K] or null; contiguous' },
  { name: 'moe_combine_weight_grad', params: 'View dweights, View y, View rows, View dout',
    doc: 'dweights [T, K] stats dtype, y [N, D], rows [T, K], dout [T, D]; contiguous' },
  { name: 'grouped_matmul', params: 'View out, View a, View b, View offsets, bool trans_b',
    doc: 'out [N, n], a [N, k], b [E, k, n] or [E, n, k] (trans_b), offsets [E+1] int32; contiguous' },
  { name: 'grouped_matmul_weight_grad', params: 'View out, View a, View g, View offsets',
    doc: 'out [E, k, n], a [N, k], g [N, n], offsets [E+1] int32; contiguous' },
  { name: 'matmul', params: 'MatmulArgs args', cudaExtra: 'int algo',
    doc: 'C = alpha op(A) op(B) + beta C per batch (core/ops.h); CUDA algo: 0 fastest known, 1 own kernel, 2 cuBLASLt' },
  { name: 'softmax', params: 'View out, View x, int64 outer, int64 dim, int64 inner, bool log',
    doc: 'x, out contiguous [outer, dim, inner]; softmax (or log-softmax) over dim' },
  { name: 'rms_norm', params: 'View out, View x, View w, float eps, View rstd',
    doc: 'x, out contiguous [rows, cols]; w [cols] or data == nullptr; rstd [rows] float32 (float64 for float64 x) or null' },
  { name: 'layer_norm', params: 'View out, View x, View w, View b, float eps, View mean, View rstd',
    doc: 'as rms_norm plus bias b [cols] or null; mean/rstd [rows] outputs or null' },
  { name: 'swiglu', params: 'View out, View x', doc: 'x contiguous [rows, 2*h], out [rows, h]: out = silu(x[:, :h]) * x[:, h:]' },
  { name: 'embedding', params: 'View out, View ids, View table',
    doc: 'ids int32 contiguous [n], table contiguous [V, D], out contiguous [n, D]; RangeError before reading anything when an id is outside [0, V) (CUDA: recorded on the device, reported after a stream wait)' },
  { name: 'gather', params: 'View out, View x, View index, int axis',
    doc: 'torch.gather along axis: out has index\'s shape; index int32; all contiguous' },
  { name: 'scatter_add', params: 'View out, View index, View src, int axis',
    doc: 'out[..., index[..., j, ...], ...] += src[..., j, ...] along axis, in place' },
  { name: 'cross_entropy', params: 'View loss, View logits, View targets, int ignore_index, float smoothing, View lse',
    doc: 'logits contiguous [rows, C]; targets int32 [rows]; loss [rows] (0 where ignored); lse [rows] or null; RangeError for a target outside [0, C) that is not ignore_index' },
  { name: 'softmax_backward', params: 'View dx, View y, View dy, int64 outer, int64 dim, int64 inner, bool log',
    doc: 'y, dy, dx [outer, dim, inner]; y the forward output (log-softmax output when log)' },
  { name: 'rms_norm_backward', params: 'View dx, View dw, View x, View w, View rstd, View dy',
    doc: 'x, dy, dx [rows, cols]; w [cols] or null; rstd [rows]; dw [cols] or null (overwritten)' },
  { name: 'layer_norm_backward', params: 'View dx, View dw, View db, View x, View w, View mean, View rstd, View dy',
    doc: 'as rms_norm_backward with mean; dw, db optional' },
  { name: 'cross_entropy_backward',
    params: 'View dlogits, View logits, View targets, View lse, View dloss, int ignore_index, float smoothing',
    doc: 'dlogits = dloss (p - (1-s) onehot(t) - s/C), 0 for ignored rows; a bad target: RangeError (CUDA: NaN gradients, the forward has rejected it)' },
  { name: 'unary_backward', params: 'UnaryOp op, View dx, View x, View dy', doc: 'dx = dy * f\'(x)' },
  { name: 'swiglu_backward', params: 'View dx, View x, View dy', doc: 'x, dx [rows, 2h], dy [rows, h]' },
  { name: 'adamw_step',
    params: 'View param, View grad, View exp_avg, View exp_avg_sq, double lr, double beta1, double beta2, double eps, double weight_decay, int64 step, double grad_scale',
    doc: 'in place, PyTorch AdamW with g = grad * grad_scale; all contiguous, same numel' },
  { name: 'sgd_step',
    params: 'View param, View grad, View buf, double lr, double momentum, double dampening, double weight_decay, bool nesterov, bool first_step, double grad_scale',
    doc: 'in place, PyTorch SGD; buf (param\'s dtype) or null when momentum == 0' },
  { name: 'attention_forward', params: 'AttnArgs a, ptr out, ptr lse',
    doc: 'fused attention (core/attention.h): out [B,Hq,n,D], lse [B,Hq,n] or null' },
  { name: 'attention_backward', params: 'AttnArgs a, cptr out, cptr dout, cptr lse, ptr dq, ptr dk, ptr dv',
    doc: 'adds into float32 (float64) accumulators dq [B,Hq,Sq,D], dk, dv [B,Hkv,Sk,D]' },
  { name: 'dual_attention_forward', params: 'DualArgs d, ptr out, ptr out_local, ptr out_global, ptr lse_local, ptr lse_global',
    doc: 'both paths in one pass (core/attention.h)' },
  { name: 'dual_attention_backward',
    params: 'DualArgs d, cptr out_local, cptr out_global, cptr dout, cptr lse_local, cptr lse_global, ptr dq, ptr dk, ptr dv',
    doc: 'the dual forward\'s backward in one pass: adds into dq, dk, dv (gate gradients aside)' },
  { name: 'segment_attention_forward', params: 'AttnArgs a, cptr indices, int topk, int64 segment, ptr out, ptr lse',
    doc: 'segment attention (core/attention.h): out [B,Hq,Sq,D], lse [B,Hq,Sq] or null' },
  { name: 'segment_attention_backward',
    params: 'AttnArgs a, cptr indices, int topk, int64 segment, cptr out, cptr dout, cptr lse, ptr dq, ptr dk, ptr dv',
    doc: 'adds into float32 (float64) accumulators dq [B,Hq,Sq,D], dk, dv [B,Hkv,Sk,D]' },
  { name: 'dual_segment_attention_forward',
    params: 'DualArgs d, cptr indices, int topk, int64 segment, ptr out, ptr out_local, ptr out_global, ptr lse_local, ptr lse_global',
    doc: 'the local path (d.a.mask) and segment attention mixed by the gates in one pass; d.global_rows null' },
  { name: 'dual_segment_attention_backward',
    params: 'DualArgs d, cptr indices, int topk, int64 segment, cptr out_local, cptr out_global, cptr dout, cptr lse_local, cptr lse_global, ptr dq, ptr dk, ptr dv, ptr dgates',
    doc: 'adds into dq, dk, dv; writes dgates [B,Sq,2] or [B,Hq,Sq,2] (float32/float64): sum_d dout * out_path' },
  { name: 'segment_mean', params: 'View out, View x, int64 segment',
    doc: 'x contiguous [outer, S, D], out [outer, nseg, D]: segment means, summed in row order' },
  { name: 'segment_mean_backward', params: 'View dx, View dout, int64 segment',
    doc: 'dout [outer, nseg, D], dx [outer, S, D]: dx[j] = dout[seg(j)] / count(seg(j))' },
  { name: 'rope', params: 'View out, View x, View positions, double base, bool inverse',
    doc: 'rotary embedding, rotate-half: x, out [B,H,S,D]; positions int32 [S] or [B,S]' },
  { name: 'kv_cache_append', params: 'View k_cache, View v_cache, View means, View k, View v, View lengths, View slots, int64 segment',
    doc: 'see core/kvcache.h; means may be a null view' },
  { name: 'kv_cache_attention',
    params: 'View out, View q, View k_cache, View v_cache, View lengths, View slots, View means, AttnMask mask, int64 window, int64 segment, int topk, int group, double scale',
    doc: 'see core/kvcache.h; means null unless segment routing' },
  { name: 'lstm_forward', params: 'View h, View h_n, View c_n, View saved, View xw, View whh, View h0, View c0',
    doc: 'all contiguous: xw [B, S, 4H], whh [4H, H], h0, c0, h_n, c_n [B, H] and h [B, S, H] of one dtype; saved [B, S, 5H] stats dtype (i, f, g, o, c per step); S may be 0 (then h_n = h0, c_n = c0)' },
  { name: 'lstm_backward',
    params: 'View dxw, View dwhh, View dh0, View dc0, View dh, View dh_n, View dc_n, View h, View saved, View whh, View h0, View c0',
    doc: 'contiguous, shapes as lstm_forward (dxw as xw, dwhh as whh); dh, dh_n, dc_n optional (null: 0); sums in the stats dtype' },
];

module.exports = { enums, ops, kernels };
