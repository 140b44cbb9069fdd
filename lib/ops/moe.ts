// Mixture of experts: tokens grouped by expert (moeDispatch), the expert FFN over the grouped
// layout (moeExpertFFN: a grouped GEMM over experts holding different numbers of tokens), and
// the weighted return to the token layout (moeCombine), all differentiable.
//
// The grouped buffer, from the router's (routerGate) indices [T, K], positions [T, K] and counts [E]:
//   'dropless'  [T*K, D]: expert e owns rows [offsets[e], offsets[e+1]), offsets = [0, cumsum(counts)]
//               (int32 [E+1], computed on the device: the shape is static, nothing is read back);
//               rows past offsets[E] (entries dropped by a capacity) stay zero.
//   'capacity'  [E, C, D]: expert e's slots; empty slots zero, entries past capacity dropped.
// Entry (t, k) goes to row offsets[e] + positions[t, k] (dropless) or slot positions[t, k] of
// expert e = indices[t, k] (capacity); position -1 (dropped) goes nowhere.
//
// moePlan turns indices and positions into the row of every entry (rows [T, K]) and its inverse
// (sources [N]), checking every value on the device (a bad expert or position, offsets that do not
// increase, two entries on one row: an OutOfRangeError when read). Every other kernel is a gather
// over the plan: dispatch copies x[t] into its rows (the only copy of the tokens), combine sums
// w[t, k] y[row] per token (no atomics: deterministic), and their gradients are the same two
// gathers the other way round. moeDispatch returns its plan so that moeCombine reuses it.
//
// The expert FFN: capacity layout, a batched matmul per expert ([E, C, D] @ [E, D, F]) composed
// with the activation; dropless, groupedMatmul (native/cpu/moe.cpp: the blocked CPU matmul per
// expert on its row range, no copies; native/cuda/moe.cu: one grouped GEMM launch reading the
// offsets on the device). The activation is the existing swiglu / gelu op (one pass over the
// hidden layer, not fused into the GEMM).
import { DTypeError, OutOfRangeError, ShapeError, ValueError, describe } from '../errors';
import { DType, isFloat } from '../dtype';
import { op } from '../native';
import { Tensor, tidy } from '../tensor';
import { record } from '../tape';
import { arange, zeros } from './creation';
import { gelu, mul } from './elementwise';
import { matmul } from './linalg';
import { swiglu } from './nn';
import { cast, concat, reshape } from './shape';
import { cumsum } from './sort';
import { checkOptions, checkTensor, empty, sameDevice } from './util';

export type MoeLayout = 'dropless' | 'capacity';

/** The row of every (token, choice) in the grouped buffer, checked; from moePlan or moeDispatch. */
export interface MoePlan {
  layout: MoeLayout;
  experts: number;
  /** Slots per expert (capacity layout; 0 for dropless). */
  capacity: number;
  tokens: number;
  topK: number;
  /** int32 [T, K]: the buffer row of entry (t, k), -1 when dropped. */
  rows: Tensor;
  /** int32 [N]: the entry t * K + k of each buffer row, -1 for an empty row. */
  sources: Tensor;
  /** int32 [E + 1]: expert e owns rows [offsets[e], offsets[e+1]) (capacity layout: e * C). */
  offsets: Tensor;
}

export interface MoeLayoutOptions {
  /** Default: 'capacity' when `capacity` is given, else 'dropless'. */
  layout?: MoeLayout;
  /** int32 [E]: entries kept per expert (routerGate's counts); dropless offsets are their exclusive cumsum. */
  counts?: Tensor;
  /** int32 [E + 1] instead of counts (dropless). */
  offsets?: Tensor;
  /** Experts (capacity layout, when counts is not given). */
  experts?: number;
  /** Slots per expert (capacity layout): routerGate's ceil(capacityFactor * T * topK / E). */
  capacity?: number;
  /** A plan from moePlan / moeDispatch for the same indices and positions: reused, nothing recomputed. */
  plan?: MoePlan;
}

const INT32_MAX = 2 ** 31 - 1;
const statsDType = (d: DType): DType => (d === 'float64' ? 'float64' : 'float32');

function intArg(name: string, arg: string, v: unknown, lo: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > INT32_MAX) {
    throw new OutOfRangeError(`${name}: Expected an integer ${arg} in [${lo}, ${INT32_MAX}] but received ${describe(v)}`);
  }
  return v;
}

function checkInt32Tensor(name: string, arg: string, t: unknown, shape: number[] | null, ndim: number): Tensor {
  const x = checkTensor(t, name, arg);
  if (x.dtype !== 'int32') throw new DTypeError(`${name}: Expected an int32 tensor for ${arg} but received ${describe(x)}`);
  if (x.ndim !== ndim || (shape && shape.some((d, i) => d !== x.shape[i]))) {
    const want = shape ? `[${shape.join(', ')}]` : `${ndim} dimension(s)`;
    throw new ShapeError(`${name}: Expected ${arg} of shape ${want} but received ${describe(x)}`);
  }
  return x;
}

function checkPlan(name: string, p: unknown, T: number, K: number): MoePlan {
  const plan = p as MoePlan;
  if (plan === null || typeof plan !== 'object' || !(plan.rows instanceof Tensor) || !(plan.sources instanceof Tensor) || !(plan.offsets instanceof Tensor)) {
    throw new ValueError(`${name}: Expected a plan from moePlan or moeDispatch for plan but received ${describe(p)}`);
  }
  checkTensor(plan.rows, name, 'plan.rows');
  checkTensor(plan.sources, name, 'plan.sources');
  if (plan.tokens !== T || plan.topK !== K) {
    throw new ShapeError(`${name}: the plan is for ${plan.tokens} tokens x ${plan.topK} choices, the indices are [${T}, ${K}]`);
  }
  return plan;
}

/**
 * The dispatch plan of indices / positions [T, K] (int32, routerGate's) in the chosen layout:
 * each entry's buffer row and each row's entry, checked on the device (an OutOfRangeError when
 * read for an expert outside [0, E), a position outside its expert's rows, or a shared row).
 */
export function moePlan(indices: Tensor, positions: Tensor, options: MoeLayoutOptions = {}): MoePlan {
  return makePlan('moePlan', indices, positions, checkOptions(options, 'moePlan'));
}

// moePlan for `name` (the op whose options these are: errors name it)
function makePlan(name: string, indices: Tensor, positions: Tensor, options: MoeLayoutOptions,
  before?: (layout: MoeLayout, E: number, C: number, N: number) => void): MoePlan {
  // every check first (including the caller's, `before`), then the work: a call that throws
  // leaves nothing queued (an unread failure of a queued plan would surface at a later synchronize)
  checkInt32Tensor(name, 'indices', indices, null, 2);
  const [T, K] = indices.shape;
  checkInt32Tensor(name, 'positions', positions, [T, K], 2);
  sameDevice(name, indices, positions);
  if (T * K > INT32_MAX) throw new ShapeError(`${name}: ${T} tokens x ${K} choices is more entries than int32 rows`);
  const layout = options.layout ?? (options.capacity !== undefined ? 'capacity' : 'dropless');
  if (layout !== 'dropless' && layout !== 'capacity') throw new ValueError(`${name}: Expected 'dropless' or 'capacity' for layout but received ${describe(layout)}`);
  const device = indices.device;
  let E: number;
  let C = 0;
  if (options.counts !== undefined) {
    checkInt32Tensor(name, 'counts', options.counts, null, 1);
    sameDevice(name, indices, options.counts);
  }
  if (layout === 'dropless') {
    if (options.capacity !== undefined) throw new ValueError(`${name}: capacity is for the 'capacity' layout, the layout is 'dropless'`);
    if ((options.counts === undefined) === (options.offsets === undefined)) {
      throw new ValueError(`${name}: the dropless layout needs exactly one of counts (int32 [E]) and offsets (int32 [E + 1])`);
    }
    if (options.counts !== undefined) {
      E = options.counts.shape[0];
      if (E < 1) throw new ShapeError(`${name}: Expected counts of at least one expert but received ${describe(options.counts)}`);
    } else {
      const o = checkInt32Tensor(name, 'offsets', options.offsets, null, 1);
      sameDevice(name, indices, o);
      E = o.shape[0] - 1;
      if (E < 1) throw new ShapeError(`${name}: Expected offsets of shape [E + 1] with E >= 1 but received ${describe(o)}`);
    }
    if (options.experts !== undefined && options.experts !== E) {
      throw new ShapeError(`${name}: experts = ${describe(options.experts)} but the ${options.counts ? 'counts' : 'offsets'} give ${E}`);
    }
  } else {
    if (options.offsets !== undefined) throw new ValueError(`${name}: offsets are for the 'dropless' layout, the layout is 'capacity'`);
    C = intArg(name, 'capacity', options.capacity, 0);
    if (options.experts !== undefined) E = intArg(name, 'experts', options.experts, 1);
    else if (options.counts !== undefined) E = options.counts.shape[0];
    else throw new ValueError(`${name}: the capacity layout needs experts (a number) or counts (int32 [E])`);
    if (E < 1) throw new ShapeError(`${name}: Expected at least one expert but received counts ${describe(options.counts)}`);
    if (options.counts !== undefined && options.counts.shape[0] !== E) {
      throw new ShapeError(`${name}: experts = ${E} but counts has shape [${options.counts.shape[0]}]`);
    }
    if (E * C > INT32_MAX) throw new OutOfRangeError(`${name}: experts x capacity = ${E * C} rows do not fit int32`);
  }
  const N = layout === 'dropless' ? T * K : E * C;
  before?.(layout, E, C, N);
  const counts = options.counts;
  const offsets = layout === 'capacity' ? tidy(() => mul(arange(0, E + 1, 1, { dtype: 'int32', device }), C))
    : counts !== undefined ? tidy(() => concat([zeros([1], { dtype: 'int32', device }), cumsum(counts, 0)]))
      : options.offsets!.clone();
  const rows = empty([T, K], 'int32', device);
  const sources = empty([N], 'int32', device);
  try {
    op.moePlan({ rows, sources, indices, positions, offsets: layout === 'dropless' ? offsets : null, experts: E, capacity: C });
  } catch (e) {
    [rows, sources, offsets].forEach((t) => t.dispose());
    throw e;
  }
  return { layout, experts: E, capacity: C, tokens: T, topK: K, rows, sources, offsets };
}

export interface MoeDispatchResult {
  /** [T*K, D] (dropless) or [E, C, D] (capacity), x's dtype; rows without an entry are zero. */
  buffer: Tensor;
  /** int32 [E + 1]: expert e's rows [offsets[e], offsets[e+1]) (for moeExpertFFN's dropless layout). */
  offsets: Tensor;
  /** For moeCombine({ plan }). */
  plan: MoePlan;
}

/**
 * Groups the tokens x [T, D] by expert: row (or slot) of entry (t, k) = x[t]. Gradient: dx[t] =
 * the sum of its entries' rows of the buffer's gradient.
 */
export function moeDispatch(x: Tensor, indices: Tensor, positions: Tensor, options: MoeLayoutOptions = {}): MoeDispatchResult {
  const name = 'moeDispatch';
  options = checkOptions(options, name);
  checkTensor(x, name, 'x');
  if (!isFloat(x.dtype)) throw new DTypeError(`${name}: Expected a float x but received ${describe(x)}`);
  if (x.ndim !== 2) throw new ShapeError(`${name}: Expected x of shape [tokens, D] but received ${describe(x)}`);
  checkInt32Tensor(name, 'indices', indices, null, 2);
  const [T, K] = indices.shape;
  if (x.shape[0] !== T) throw new ShapeError(`${name}: x has ${x.shape[0]} tokens, indices ${T} (${describe(x)}, ${describe(indices)})`);
  checkInt32Tensor(name, 'positions', positions, [T, K], 2);
  sameDevice(name, x, indices, positions);
  const plan = options.plan !== undefined ? checkPlan(name, options.plan, T, K) : makePlan(name, indices, positions, options);
  const D = x.shape[1];
  const N = plan.sources.shape[0];
  const out = empty([N, D], x.dtype, x.device);
  op.moeGather({ out, x, sources: plan.sources, weights: null, k: K });
  record(out, name, [x], [plan.rows], { tokens: T });
  const buffer = plan.layout === 'capacity' ? reshape(out, [plan.experts, plan.capacity, D]) : out;
  if (buffer !== out) out.dispose();
  return { buffer, offsets: plan.offsets, plan };
}

/**
 * The weighted return to the token layout: out[t] = sum over kept k of weights[t, k] * y[row of
 * (t, k)], [T, D] in y's dtype (sums in float32, float64 for float64). y is the grouped buffer
 * ([T*K, D] dropless, [E, C, D] capacity); weights [T, K] (routerGate's, float32; cast to
 * float32 / float64 otherwise). Gradients to y (dy[row] = w dout[t], empty rows 0) and weights
 * (dw[t, k] = dot(y[row], dout[t]), 0 when dropped).
 */
export function moeCombine(y: Tensor, indices: Tensor, positions: Tensor, weights: Tensor, options: MoeLayoutOptions = {}): Tensor {
  const name = 'moeCombine';
  options = checkOptions(options, name);
  checkTensor(y, name, 'y');
  if (!isFloat(y.dtype)) throw new DTypeError(`${name}: Expected a float y but received ${describe(y)}`);
  checkInt32Tensor(name, 'indices', indices, null, 2);
  const [T, K] = indices.shape;
  checkInt32Tensor(name, 'positions', positions, [T, K], 2);
  checkTensor(weights, name, 'weights');
  if (!isFloat(weights.dtype)) throw new DTypeError(`${name}: Expected float weights but received ${describe(weights)}`);
  if (weights.ndim !== 2 || weights.shape[0] !== T || weights.shape[1] !== K) {
    throw new ShapeError(`${name}: Expected weights of shape [${T}, ${K}] but received ${describe(weights)}`);
  }
  sameDevice(name, y, indices, positions, weights);
  let opts = options;
  if (options.plan === undefined && y.ndim === 3) {
    // capacity layout: experts and capacity from y's shape unless given
    opts = { ...options, layout: options.layout ?? 'capacity', experts: options.experts ?? (options.counts ? undefined : y.shape[0]), capacity: options.capacity ?? y.shape[1] };
  }
  // y must hold the layout's rows: checked before the plan is queued
  const checkY = (layout: MoeLayout, E: number, C: number, N: number) => {
    const want = layout === 'capacity' ? [E, C, -1] : [N, -1];
    if (y.ndim !== want.length || want.some((d, i) => d >= 0 && d !== y.shape[i])) {
      throw new ShapeError(`${name}: Expected y of shape [${want.map((d) => (d < 0 ? 'D' : d)).join(', ')}] (the ${layout} layout) but received ${describe(y)}`);
    }
  };
  const ownPlan = options.plan === undefined;
  let plan: MoePlan;
  if (ownPlan) {
    plan = makePlan(name, indices, positions, opts, checkY);
  } else {
    plan = checkPlan(name, options.plan, T, K);
    checkY(plan.layout, plan.experts, plan.capacity, plan.sources.shape[0]);
  }
  try {
    const D = y.shape[y.ndim - 1];
    const y2 = y.ndim === 3 ? reshape(y, [plan.sources.shape[0], D]) : y;
    const sd = statsDType(y.dtype);
    const w = weights.dtype === sd ? weights : cast(weights, sd);
    const out = empty([T, D], y.dtype, y.device);
    op.moeCombine({ out, y: y2, rows: plan.rows, weights: w });
    record(out, name, [y2, w], [y2, w, plan.rows, plan.sources], {});
    if (y2 !== y) y2.dispose();
    if (w !== weights) w.dispose();
    return out;
  } finally {
    if (ownPlan) [plan.rows, plan.sources, plan.offsets].forEach((t) => t.dispose());
  }
}

export interface GroupedMatmulOptions {
  /** b is [E, n, k] and multiplies transposed (default false: [E, k, n]). */
  transB?: boolean;
}

/**
 * The grouped GEMM: out [N, n], rows [offsets[e], offsets[e+1]) = a's rows @ op(b[e]) (a [N, k],
 * b [E, k, n], offsets int32 [E + 1]); rows outside every expert's range are 0. Offsets that do
 * not increase inside [0, N] are clamped, the same on every backend: expert 0 starts at
 * offsets[0] (in [0, N]), expert e at the end of e - 1, and ends at offsets[e+1] kept inside
 * [its start, N]. moeDispatch's offsets are valid and pass as they are.
 */
export function groupedMatmul(a: Tensor, b: Tensor, offsets: Tensor, options: GroupedMatmulOptions = {}): Tensor {
  const name = 'groupedMatmul';
  options = checkOptions(options, name);
  checkTensor(a, name, 'a');
  checkTensor(b, name, 'b');
  if (!isFloat(a.dtype)) throw new DTypeError(`${name}: Expected a float a but received ${describe(a)}`);
  if (b.dtype !== a.dtype) throw new DTypeError(`${name}: Expected b of a's dtype ${a.dtype} but received ${describe(b)}`);
  const transB = options.transB ?? false;
  if (typeof transB !== 'boolean') throw new ValueError(`${name}: Expected a boolean for transB but received ${describe(transB)}`);
  if (a.ndim !== 2) throw new ShapeError(`${name}: Expected a of shape [rows, k] but received ${describe(a)}`);
  if (b.ndim !== 3) throw new ShapeError(`${name}: Expected b of shape [experts, ${transB ? 'n, k' : 'k, n'}] but received ${describe(b)}`);
  const [N, k] = a.shape;
  const [E] = b.shape;
  const bk = transB ? b.shape[2] : b.shape[1];
  const n = transB ? b.shape[1] : b.shape[2];
  if (bk !== k) throw new ShapeError(`${name}: Expected b with k = ${k} (a's columns) but received ${describe(b)}${transB ? ' (transB)' : ''}`);
  checkInt32Tensor(name, 'offsets', offsets, [E + 1], 1);
  sameDevice(name, a, b, offsets);
  if (N > INT32_MAX) throw new ShapeError(`${name}: ${N} rows do not fit int32 offsets`);
  const out = empty([N, n], a.dtype, a.device);
  op.groupedMatmul({ out, a, b, offsets, transB });
  return record(out, name, [a, b], [a, b, offsets], { transB });
}

/** out [E, k, n]: out[e] = a[rows of e]^T @ g[rows of e] (the grouped GEMM's weight gradient; not recorded). */
export function groupedMatmulWeightGrad(a: Tensor, g: Tensor, offsets: Tensor): Tensor {
  const E = offsets.shape[0] - 1;
  const out = empty([E, a.shape[1], g.shape[1]], a.dtype, a.device);
  op.groupedMatmulWeightGrad({ out, a, g, offsets });
  return out;
}

export interface MoeExpertFFNOptions {
  /** 'swiglu' (w1 [E, D, 2F]: [gate | up], silu(gate) * up) or 'gelu' (exact, w1 [E, D, F]). Default 'swiglu'. */
  activation?: 'swiglu' | 'gelu';
  /** int32 [E + 1] (moeDispatch's): required for the dropless buffer [N, D]. */
  offsets?: Tensor;
}

/**
 * The experts' FFN over the grouped buffer: per expert e, y = act(x_e @ w1[e]) @ w2[e] with
 * w1 [E, D, 2F] (swiglu) or [E, D, F] (gelu) and w2 [E, F, D] of the buffer's dtype. The buffer
 * is [E, C, D] (capacity layout: a batched matmul per expert) or [N, D] with offsets (dropless:
 * groupedMatmul); the output has the buffer's shape (empty rows stay 0). Differentiable in the
 * buffer and both weights.
 */
export function moeExpertFFN(buffer: Tensor, w1: Tensor, w2: Tensor, options: MoeExpertFFNOptions = {}): Tensor {
  const name = 'moeExpertFFN';
  options = checkOptions(options, name);
  checkTensor(buffer, name, 'buffer');
  checkTensor(w1, name, 'w1');
  checkTensor(w2, name, 'w2');
  if (!isFloat(buffer.dtype)) throw new DTypeError(`${name}: Expected a float buffer but received ${describe(buffer)}`);
  for (const [w, arg] of [[w1, 'w1'], [w2, 'w2']] as const) {
    if (w.dtype !== buffer.dtype) throw new DTypeError(`${name}: Expected ${arg} of the buffer's dtype ${buffer.dtype} but received ${describe(w)}`);
    if (w.ndim !== 3) throw new ShapeError(`${name}: Expected ${arg} of shape [experts, ${arg === 'w1' ? 'D, F' : 'F, D'}] but received ${describe(w)}`);
  }
  const activation = options.activation ?? 'swiglu';
  if (activation !== 'swiglu' && activation !== 'gelu') throw new ValueError(`${name}: Expected 'swiglu' or 'gelu' for activation but received ${describe(activation)}`);
  if (buffer.ndim !== 2 && buffer.ndim !== 3) throw new ShapeError(`${name}: Expected a buffer of shape [rows, D] (dropless) or [experts, capacity, D] but received ${describe(buffer)}`);
  const D = buffer.shape[buffer.ndim - 1];
  const [E, D1, F1] = w1.shape;
  const F = activation === 'swiglu' ? F1 / 2 : F1;
  if (D1 !== D) throw new ShapeError(`${name}: Expected w1 of shape [E, ${D}, F] (D = the buffer's last dimension) but received ${describe(w1)}`);
  if (activation === 'swiglu' && F1 % 2 !== 0) throw new ShapeError(`${name}: swiglu needs w1 of shape [E, D, 2F] (an even last dimension) but received ${describe(w1)}`);
  if (w2.shape[0] !== E || w2.shape[1] !== F || w2.shape[2] !== D) {
    throw new ShapeError(`${name}: Expected w2 of shape [${E}, ${F}, ${D}] but received ${describe(w2)}`);
  }
  sameDevice(name, buffer, w1, w2);
  const act = (h: Tensor) => (activation === 'swiglu' ? swiglu(h) : gelu(h));
  if (buffer.ndim === 3) {
    if (buffer.shape[0] !== E) throw new ShapeError(`${name}: the buffer holds ${buffer.shape[0]} experts, w1 ${E} (${describe(buffer)}, ${describe(w1)})`);
    if (options.offsets !== undefined) throw new ValueError(`${name}: offsets are for the dropless buffer [N, D], the buffer is ${describe(buffer)}`);
    return tidy(() => matmul(act(matmul(buffer, w1)), w2));
  }
  if (options.offsets === undefined) throw new ValueError(`${name}: the dropless buffer [N, D] needs offsets (int32 [E + 1], from moeDispatch)`);
  const offsets = checkInt32Tensor(name, 'offsets', options.offsets, [E + 1], 1);
  sameDevice(name, buffer, offsets);
  return tidy(() => groupedMatmul(act(groupedMatmul(buffer, w1, offsets)), w2, offsets));
}

// ---- kernels of the backward rules (lib/autograd/rules/moe.ts) ----

/** out [N, D]: row r = w[s] g[s / K] for s = sources[r] (0 for -1); w [T*K] or null. */
export function moeGatherRows(g: Tensor, sources: Tensor, weights: Tensor | null, K: number): Tensor {
  const out = empty([sources.shape[0], g.shape[1]], g.dtype, g.device);
  op.moeGather({ out, x: g, sources, weights, k: K });
  return out;
}

/** out [T, D] = sum_k (w[t, k] or 1) y[rows[t, k]]. */
export function moeCombineRows(y: Tensor, rows: Tensor, weights: Tensor | null): Tensor {
  const out = empty([rows.shape[0], y.shape[1]], y.dtype, y.device);
  op.moeCombine({ out, y, rows, weights });
  return out;
}

/** dw [T, K] = dot(y[rows[t, k]], dout[t]). */
export function moeCombineWeightGrad(y: Tensor, rows: Tensor, dout: Tensor): Tensor {
  const dweights = empty(rows.shape.slice(), statsDType(y.dtype), y.device);
  op.moeCombineWeightGrad({ dweights, y, rows, dout });
  return dweights;
}
