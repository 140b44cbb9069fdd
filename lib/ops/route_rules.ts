// Random, hash and rule routing (issue 13, parts 3 and 4): a path or expert number per token that
// no learned router decides.
//
// - randomRoute: a draw per token from a fixed distribution. Token t uses Philox stream index
//   offset + t (the layout of rand()), and the kernel compares the draw's top 31 bits with integer
//   thresholds built here, so the CPU and CUDA draw the same routes by construction (integer
//   arithmetic only). In eval the route is the expectation (weights = probs) or a fixed-seed draw.
// - hashRoute: a keyed hash of each token id (word 0 of the Philox block at counter id under key
//   seed), reduced to [0, E) by multiply-shift. Deterministic across devices and calls.
// - ruleRoute: a user table (id sets and id ranges -> route), compiled here into sorted disjoint
//   intervals (binary search on the device) or, when the ids it names are few enough, a dense
//   lookup table; unmatched ids take the default.
// - layerDrop: stochastic depth, a keep decision per sample (row of dim 0), the kept ones scaled
//   by 1 / (1 - p); identity in eval.
// Kernels: native/cpu/route_rules.cpp, native/cuda/route_rules.cu (ops: native/ops/route_rules.cpp).
import { DType, isFloat } from '../dtype';
import { Device } from '../device';
import { DTypeError, OutOfRangeError, ShapeError, ValueError, describe } from '../errors';
import { op } from '../native';
import { Generator, defaultGenerator } from '../random';
import { Tensor, tidy } from '../tensor';
import { arange, full, rand, tensor } from './creation';
import { eq, lt, mul } from './elementwise';
import { cast, contiguous, expand, reshape, unsqueeze } from './shape';
import { checkOptions, checkTensor, empty, resolveDType, resolveDevice } from './util';

const INT32_MAX = 2 ** 31 - 1;
/** |sum(probs) - 1| allowed (the probabilities are renormalised by their sum after the check). */
export const PROB_SUM_TOLERANCE = 1e-6;

function intArg(opName: string, name: string, v: unknown, lo: number, hi: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
    throw new OutOfRangeError(`${opName}: Expected an integer ${name} in [${lo}, ${hi}] but received ${describe(v)}`);
  }
  return v;
}

function boolArg(opName: string, name: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw new ValueError(`${opName}: Expected a boolean for ${name} but received ${describe(v)}`);
  return v;
}

function seedArg(opName: string, name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new ValueError(`${opName}: Expected a non-negative safe integer for ${name} but received ${describe(v)}`);
  }
  return v;
}

function idsArg(opName: string, ids: unknown): Tensor {
  checkTensor(ids, opName, 'tokenIds');
  const t = ids as Tensor;
  if (t.dtype !== 'int32') throw new DTypeError(`${opName}: Expected int32 tokenIds but received ${describe(t)}`);
  return t;
}

// ---- randomRoute ---------------------------------------------------------------------------

export interface RandomRouteOptions {
  /** Draw from this seed at stream offset 0: the same routes on every call (a fixed random route). Not with generator. */
  seed?: number;
  /** Draw from this generator, advancing it (default: the default generator, when no seed is given). */
  generator?: Generator;
  /** Training (default true): a draw per token. In eval see evalMode. */
  training?: boolean;
  /**
   * Eval behaviour: 'expectation' (default): weights = probs for every token, route = the most
   * probable path (the lowest on ties); 'fixed': a draw from evalSeed at offset 0 (the same routes
   * on every call, the generator untouched).
   */
  evalMode?: 'expectation' | 'fixed';
  /** The seed of evalMode 'fixed' (default: seed, else 0). */
  evalSeed?: number;
  device?: Device;
  /** The weights' dtype (a float dtype, default float32). */
  dtype?: DType;
}

export interface RandomRouteResult {
  /** int32 [T]: the path (or expert) of each token. */
  route: Tensor;
  /**
   * [T, P]: one-hot rows of route (a drawn route), or probs in every row (eval expectation), so
   * that sum_p weights[t, p] * path_p(x_t) is the layer's output either way. No gradient: the
   * probabilities are constants.
   */
  weights: Tensor;
}

function checkProbs(opName: string, probs: unknown): number[] {
  if (!Array.isArray(probs) && !(probs instanceof Float64Array) && !(probs instanceof Float32Array)) {
    throw new ValueError(`${opName}: Expected an array of probabilities for probs but received ${describe(probs)}`);
  }
  const p = Array.from(probs as ArrayLike<number>);
  if (p.length < 1 || p.length > 65536) {
    throw new OutOfRangeError(`${opName}: Expected between 1 and 65536 probabilities (paths or experts) for probs but received ${p.length}`);
  }
  let s = 0;
  p.forEach((v, i) => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
      throw new ValueError(`${opName}: Expected a finite probability >= 0 for probs[${i}] but received ${describe(v)}`);
    }
    s += v;
  });
  if (!(Math.abs(s - 1) <= PROB_SUM_TOLERANCE)) {
    throw new ValueError(`${opName}: Expected probs to sum to 1 (within ${PROB_SUM_TOLERANCE}) but they sum to ${s}`);
  }
  return p;
}

/**
 * The kernel's thresholds: th[p] = round(2^31 * cdf_p) - 1 (cdf_p = (p_0 + ... + p_p) / sum),
 * the last 2^31 - 1. A draw u (31 bits, uniform in [0, 2^31)) picks the first p with u <= th[p],
 * i.e. path p with probability (round(2^31 cdf_p) - round(2^31 cdf_{p-1})) / 2^31: p_p to within
 * 2^-31; a path of probability 0 is never drawn.
 */
function routeThresholds(probs: readonly number[]): Int32Array {
  const P = probs.length;
  const total = probs.reduce((a, b) => a + b, 0);
  const th = new Int32Array(P);
  let cum = 0;
  for (let p = 0; p < P; ++p) {
    cum += probs[p];
    const c = p === P - 1 ? 2 ** 31 : Math.min(2 ** 31, Math.round((cum / total) * 2 ** 31));
    th[p] = c - 1;
  }
  return th;
}

/**
 * A path (or expert) per token drawn from the fixed distribution probs (sum 1, non-negative), for
 * T tokens: { route: int32 [T], weights: [T, P] } (see RandomRouteResult). The draws are Philox
 * (seed, offset + t): a seed (or a generator's state) draws the same routes on the CPU and CUDA.
 */
export function randomRoute(T: number, probs: readonly number[] | Float64Array | Float32Array, options: RandomRouteOptions = {}): RandomRouteResult {
  const name = 'randomRoute';
  options = checkOptions<RandomRouteOptions>(options, name);
  intArg(name, 'T', T, 0, INT32_MAX);
  const p = checkProbs(name, probs);
  const P = p.length;
  const training = boolArg(name, 'training', options.training, true);
  const evalMode = options.evalMode ?? 'expectation';
  if (evalMode !== 'expectation' && evalMode !== 'fixed') {
    throw new ValueError(`${name}: Expected 'expectation' or 'fixed' for evalMode but received ${describe(evalMode)}`);
  }
  if (options.seed !== undefined) seedArg(name, 'seed', options.seed);
  if (options.evalSeed !== undefined) seedArg(name, 'evalSeed', options.evalSeed);
  if (options.generator !== undefined) {
    if (!(options.generator instanceof Generator)) throw new ValueError(`${name}: Expected a Generator for generator but received ${describe(options.generator)}`);
    if (options.seed !== undefined) throw new ValueError(`${name}: Expected either seed or generator but received both (seed ${options.seed})`);
  }
  const device = resolveDevice(options.device);
  const dtype = resolveDType(options.dtype, 'float32');
  if (!isFloat(dtype)) throw new DTypeError(`${name}: Expected a float dtype for the weights but received ${describe(dtype)}`);

  if (!training && evalMode === 'expectation') {
    let best = 0;
    for (let i = 1; i < P; ++i) if (p[i] > p[best]) best = i;
    return tidy(() => {
      const route = full([T], best, { dtype: 'int32', device });
      const pr = tensor(Float64Array.from(p), [1, P], { dtype, device });
      return { route, weights: contiguous(expand(pr, [T, P])) };
    });
  }
  let seed: number, offset: number;
  if (!training) {
    seed = options.evalSeed ?? options.seed ?? 0;
    offset = 0;
  } else if (options.seed !== undefined) {
    seed = options.seed;
    offset = 0;
  } else {
    const gen = options.generator ?? defaultGenerator;
    seed = gen.seed;
    offset = gen.take(T);
  }
  return tidy(() => {
    const thresholds = tensor(routeThresholds(p), [P], { dtype: 'int32', device });
    const route = empty([T], 'int32', device);
    try {
      op.randomRoute({ route, thresholds, seed, offset });
    } catch (e) {
      route.dispose();
      throw e;
    }
    const weights = cast(eq(unsqueeze(route, 1), arange(0, P, 1, { dtype: 'int32', device })), dtype);
    return { route, weights };
  });
}

// ---- hashRoute -----------------------------------------------------------------------------

export interface HashRouteOptions {
  /** The hash key (default 0): another seed is another assignment. */
  seed?: number;
  /** When given, ids >= vocabSize fail the op (an OutOfRangeError when the result is read). */
  vocabSize?: number;
}

/**
 * Hash routing: route = (h * E) >> 32 with h = philox4x32(seed, id).v[0] (the Philox block at
 * counter id under key seed, word 0; a keyed, well-mixed 32-bit hash) for every int32 token id
 * (any shape; the result is int32 of the same shape, each value in [0, E)). The same id always
 * takes the same expert, on every device. Negative ids (or ids >= vocabSize) fail the op.
 */
export function hashRoute(tokenIds: Tensor, E: number, options: HashRouteOptions = {}): Tensor {
  const name = 'hashRoute';
  options = checkOptions<HashRouteOptions>(options, name);
  const ids = idsArg(name, tokenIds);
  intArg(name, 'E (the number of routes)', E, 1, INT32_MAX);
  const seed = options.seed === undefined ? 0 : seedArg(name, 'seed', options.seed);
  const limit = options.vocabSize === undefined ? 0 : intArg(name, 'vocabSize', options.vocabSize, 1, 2 ** 31);
  const route = empty(ids.shape.slice(), 'int32', ids.device);
  try {
    op.hashRoute({ route, ids, buckets: E, seed, limit });
  } catch (e) {
    route.dispose();
    throw e;
  }
  return route;
}

// ---- ruleRoute -----------------------------------------------------------------------------

/** A rule: a set of ids, or the ids lo <= id < hi (hi exclusive), taking route `route`. */
export type RouteRule = { ids: readonly number[]; route: number } | { range: readonly [number, number]; route: number };

export interface RuleRouteOptions {
  /** The route of ids no rule names (default 0). */
  default?: number;
  /** When given, every route (and the default) must lie in [0, numRoutes). */
  numRoutes?: number;
  /** When given, rules may not name ids >= vocabSize, and such token ids fail the op. */
  vocabSize?: number;
  /**
   * 'dense': a lookup table over [0, the largest id a rule names]; 'search': sorted intervals and
   * a binary search per token; 'auto' (default): dense when that table has at most
   * max(65536, 16 x the intervals) entries.
   */
  lookup?: 'auto' | 'dense' | 'search';
}

/** A table compiled for the kernels: sorted disjoint intervals, and the dense table when chosen. */
export interface CompiledRuleTable {
  /** [n * 3]: lo, last (inclusive), route per interval, sorted by lo, disjoint (touching intervals of one route merged). */
  rules: Int32Array;
  /** The dense table (route per id in [0, lut.length)), or null. */
  lut: Int32Array | null;
  fallback: number;
}

const DENSE_MIN = 65536;
const DENSE_MAX = 1 << 24;

/**
 * Checks a rule table and compiles it (see RuleRouteOptions), for reuse across ruleRoute calls.
 * Errors name the entry and the field.
 */
export function compileRuleTable(table: readonly RouteRule[], options: RuleRouteOptions = {}): CompiledRuleTable {
  return compileTable(table, options, 'compileRuleTable');
}

function compileTable(table: readonly RouteRule[], options: RuleRouteOptions, opName: string): CompiledRuleTable {
  options = checkOptions<RuleRouteOptions>(options, opName);
  if (!Array.isArray(table)) throw new ValueError(`${opName}: Expected an array of rules for table but received ${describe(table)}`);
  const maxRoute = options.numRoutes === undefined ? INT32_MAX : intArg(opName, 'numRoutes', options.numRoutes, 1, 2 ** 31) - 1;
  const vocab = options.vocabSize === undefined ? 2 ** 31 : intArg(opName, 'vocabSize', options.vocabSize, 1, 2 ** 31);
  const fallback = options.default === undefined ? 0 : intArg(opName, 'default', options.default, 0, maxRoute);
  const lookup = options.lookup ?? 'auto';
  if (lookup !== 'auto' && lookup !== 'dense' && lookup !== 'search') {
    throw new ValueError(`${opName}: Expected 'auto', 'dense' or 'search' for lookup but received ${describe(lookup)}`);
  }
  // intervals [lo, hi) with their entry, for the overlap check
  const iv: Array<{ lo: number; hi: number; route: number; entry: number; what: string }> = [];
  table.forEach((r, i) => {
    const at = `table[${i}]`;
    if (r === null || typeof r !== 'object' || Array.isArray(r)) throw new ValueError(`${opName}: Expected a rule object ({ids, route} or {range, route}) for ${at} but received ${describe(r)}`);
    const rr = r as Record<string, unknown>;
    const keys = Object.keys(rr);
    const extra = keys.filter((k) => k !== 'ids' && k !== 'range' && k !== 'route');
    if (extra.length) throw new ValueError(`${opName}: Expected only ids or range, and route, in ${at} but received the key '${extra[0]}'`);
    if (('ids' in rr) === ('range' in rr)) throw new ValueError(`${opName}: Expected exactly one of ids and range in ${at} but received ${'ids' in rr ? 'both' : 'neither'}`);
    const route = intArg(opName, `${at}.route`, rr.route, 0, maxRoute);
    if ('ids' in rr) {
      const ids = rr.ids;
      if (!Array.isArray(ids) && !(ids instanceof Int32Array)) throw new ValueError(`${opName}: Expected an array of token ids for ${at}.ids but received ${describe(ids)}`);
      const list = Array.from(ids as ArrayLike<number>);
      if (list.length === 0) throw new ValueError(`${opName}: Expected at least one id in ${at}.ids but received an empty array`);
      list.forEach((id, j) => {
        intArg(opName, `token id ${at}.ids[${j}]`, id, 0, vocab - 1);
        iv.push({ lo: id, hi: id + 1, route, entry: i, what: `${at}.ids[${j}] = ${id}` });
      });
    } else {
      const range = rr.range;
      if (!Array.isArray(range) || range.length !== 2) throw new ValueError(`${opName}: Expected [lo, hi] for ${at}.range but received ${describe(range)}`);
      const lo = intArg(opName, `${at}.range[0] (lo)`, range[0], 0, vocab - 1);
      const hi = intArg(opName, `${at}.range[1] (hi, exclusive)`, range[1], 0, vocab);
      if (hi <= lo) throw new ValueError(`${opName}: Expected lo < hi in ${at}.range (hi exclusive) but received [${lo}, ${hi}]`);
      iv.push({ lo, hi, route, entry: i, what: `${at}.range = [${lo}, ${hi})` });
    }
  });
  iv.sort((a, b) => a.lo - b.lo || a.hi - b.hi);
  for (let k = 1; k < iv.length; ++k) {
    if (iv[k].lo < iv[k - 1].hi) throw new ValueError(`${opName}: the rules overlap: ${iv[k].what} and ${iv[k - 1].what} both hold id ${iv[k].lo}`);
  }
  // kernel rows (lo, last, route), last inclusive (an id range may end at 2^31); touching
  // intervals of one route merged
  const merged: number[] = [];
  for (const v of iv) {
    const n = merged.length;
    if (n && merged[n - 2] + 1 === v.lo && merged[n - 1] === v.route) merged[n - 2] = v.hi - 1;
    else merged.push(v.lo, v.hi - 1, v.route);
  }
  const rules = Int32Array.from(merged);
  const span = iv.reduce((m, v) => Math.max(m, v.hi), 0);
  const dense = lookup === 'dense' || (lookup === 'auto' && span <= Math.max(DENSE_MIN, 16 * (rules.length / 3)));
  let lut: Int32Array | null = null;
  if (dense) {
    if (span > DENSE_MAX) throw new OutOfRangeError(`${opName}: lookup 'dense' needs a table of ${span} entries, more than ${DENSE_MAX}; use lookup 'search'`);
    lut = new Int32Array(span).fill(fallback);
    for (let k = 0; k < merged.length; k += 3) lut.fill(merged[k + 2], merged[k], merged[k + 1] + 1);
  }
  return { rules, lut, fallback };
}

/**
 * Rule routing: each int32 token id (any shape) takes the route of the table rule that names it
 * (an id set or an id range [lo, hi)), or the default; int32, tokenIds' shape. Rules may not
 * overlap; negative token ids (and ids >= vocabSize, when given) fail the op.
 */
export function ruleRoute(tokenIds: Tensor, table: readonly RouteRule[] | CompiledRuleTable, options: RuleRouteOptions = {}): Tensor {
  const name = 'ruleRoute';
  options = checkOptions<RuleRouteOptions>(options, name);
  const ids = idsArg(name, tokenIds);
  if (!Array.isArray(table)) {
    const t = table as CompiledRuleTable | null;
    if (t === null || typeof t !== 'object' || !(t.rules instanceof Int32Array) || t.rules.length % 3 !== 0 ||
        !(t.lut === null || t.lut instanceof Int32Array) || !Number.isInteger(t.fallback)) {
      throw new ValueError(`${name}: Expected a rule array or a compileRuleTable() result for table but received ${describe(table)}`);
    }
  }
  const c = Array.isArray(table) ? compileTable(table as readonly RouteRule[], options, name) : (table as CompiledRuleTable);
  const limit = options.vocabSize === undefined ? 0 : intArg(name, 'vocabSize', options.vocabSize, 1, 2 ** 31);
  const device = ids.device;
  return tidy(() => {
    const rules = tensor(c.rules, [c.rules.length / 3, 3], { dtype: 'int32', device });
    const lut = c.lut ? tensor(c.lut, [c.lut.length], { dtype: 'int32', device }) : null;
    const route = empty(ids.shape.slice(), 'int32', device);
    try {
      op.ruleRoute({ route, ids, rules, lut, fallback: c.fallback, limit });
    } catch (e) {
      route.dispose();
      throw e;
    }
    return route;
  });
}

// ---- layerDrop -----------------------------------------------------------------------------

export interface LayerDropOptions {
  /** Training (default true): drop; eval: identity. */
  training?: boolean;
  generator?: Generator;
}

/**
 * Stochastic depth: each sample (row of dim 0 of x) is kept with probability 1 - p and scaled by
 * 1 / (1 - p), or zeroed; use it on a block's branch, x + layerDrop(block(x), p). The keep draw of
 * sample b is rand()'s element b (Philox, the same on every device). Gradients flow through the
 * kept samples (times the same scale). Eval (or p = 0): the identity (a new view of x).
 */
export function layerDrop(x: Tensor, p: number, options: LayerDropOptions = {}): Tensor {
  const name = 'layerDrop';
  options = checkOptions<LayerDropOptions>(options, name);
  checkTensor(x, name, 'x');
  if (!isFloat(x.dtype)) throw new DTypeError(`${name}: Expected a float x but received ${describe(x)}`);
  if (x.ndim < 1) throw new ShapeError(`${name}: Expected x with a sample dimension (dim 0) but received ${describe(x)}`);
  if (typeof p !== 'number' || !(p >= 0 && p < 1)) throw new OutOfRangeError(`${name}: Expected p in [0, 1) but received ${describe(p)}`);
  const training = boolArg(name, 'training', options.training, true);
  if (options.generator !== undefined && !(options.generator instanceof Generator)) {
    throw new ValueError(`${name}: Expected a Generator for generator but received ${describe(options.generator)}`);
  }
  // identity: a new view of x that autograd records (the gradient passes through unchanged)
  if (!training || p === 0) return expand(x, x.shape.slice());
  const B = x.shape[0];
  const scale = tidy(() => {
    const u = rand([B], { device: x.device, generator: options.generator });
    const keep = cast(lt(u, 1 - p), x.dtype);
    return reshape(mul(keep, 1 / (1 - p)), [B, ...x.shape.slice(1).map(() => 1)]);
  });
  try {
    return mul(x, scale);
  } finally {
    scale.dispose();
  }
}
