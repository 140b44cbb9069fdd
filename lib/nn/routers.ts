// Routers and mixtures of experts: modules that decide, per token, how much of each path (or
// expert) to use. Gate modules return the gates and mix paths with them; the MoE modules run the
// whole routed feed-forward block (router, dispatch, expert FFN, combine).
//
// Parameter names (stable, for stateDict and checkpoints):
//   SigmoidGates     proj.{p}.weight [units, dModel], proj.{p}.bias [units] (one Linear per path)
//   SoftmaxGates     proj.weight [nPaths * units, dModel] (row p * units + c), proj.bias
//   TokenChoiceMoE   router.weight [experts, dModel], w1 [experts, dModel, 2 hidden | hidden], w2 [experts, hidden, dModel]
//   ExpertChoiceMoE  the same
//   RuleRouter, RandomRouter: none.
import { DType, isFloat } from '../dtype';
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { Generator } from '../random';
import { Tensor, keep, tidy, untracked } from '../tensor';
import { arange, rand, zeros } from '../ops/creation';
import { add, eq, mul, sigmoid, sub } from '../ops/elementwise';
import { softmax } from '../ops/nn';
import { cast, concat, contiguous, expand, narrow, reshape, squeeze, transpose, unsqueeze } from '../ops/shape';
import { scatterAdd } from '../ops/indexing';
import { routerGate, expertChoice, updateRouterBias } from '../ops/routing';
import { randomRoute, compileRuleTable, ruleRoute, PROB_SUM_TOLERANCE, CompiledRuleTable, RouteRule } from '../ops/route_rules';
import { moeDispatch, moeCombine, moeExpertFFN } from '../ops/moe';
import { checkOptions, checkTensor } from '../ops/util';
import { noGrad } from '../tape';
import { Module, asParameter } from './module';
import { InitOptions, Linear, linear } from './layers';

// ---- option checks (errors name the module, the option and what was received) ----

// a misspelt option (topk for topK) would otherwise be ignored silently
function checkKeys(name: string, options: object, allowed: readonly string[]): void {
  for (const k of Object.keys(options)) {
    if (!allowed.includes(k)) throw new ValueError(`${name}: unknown option '${k}' (expected one of ${allowed.join(', ')})`);
  }
}

function posInt(name: string, arg: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new ValueError(`${name}: Expected a positive integer for ${arg} but received ${describe(v)}`);
  return v;
}

function nonNeg(name: string, arg: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ValueError(`${name}: Expected a finite number >= 0 for ${arg} but received ${describe(v)}`);
  return v;
}

function oneOf<T extends string>(name: string, arg: string, v: unknown, values: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (!values.includes(v as T)) throw new ValueError(`${name}: Expected ${values.map((s) => `'${s}'`).join(' or ')} for ${arg} but received ${describe(v)}`);
  return v as T;
}

function floatDType(name: string, arg: string, v: unknown, dflt: DType): DType {
  if (v === undefined) return dflt;
  if (typeof v !== 'string' || !isFloat(v as DType)) throw new DTypeError(`${name}: Expected a float dtype for ${arg} but received ${describe(v)}`);
  return v as DType;
}

// the router's statistics (routerGate's weights, the balancing bias) are float32, float64 for float64
const statsDType = (d: DType | undefined): DType => (d === 'float64' ? 'float64' : 'float32');

function units(name: string, v: unknown, dModel: number): number {
  if (v === undefined) return 1;
  if (v !== 1 && v !== dModel) throw new ValueError(`${name}: Expected 1 (a gate per token) or dModel = ${dModel} (a gate per channel) for units but received ${describe(v)}`);
  return v;
}

function checkInput(name: string, x: unknown, dModel: number): Tensor {
  const t = checkTensor(x, name, 'x');
  if (!isFloat(t.dtype)) throw new DTypeError(`${name}: Expected a float x but received ${describe(t)}`);
  if (t.ndim < 1 || t.shape[t.ndim - 1] !== dModel) throw new ShapeError(`${name}: Expected x of shape [..., ${dModel}] (last dimension dModel) but received ${describe(t)}`);
  return t;
}

/**
 * sum_p gates_p * paths[p]: paths are P tensors of one shape [..., D]; gates are [..., P] (a gate
 * per token, broadcast over D) or [..., P, D] (a gate per channel). Differentiable in both.
 */
export function mixPaths(paths: Tensor[], gates: Tensor, name = 'mixPaths'): Tensor {
  if (typeof name !== 'string') name = 'mixPaths';  // the op name of errors: a caller's label, never trusted
  if (!Array.isArray(paths) || paths.length === 0) throw new ValueError(`${name}: Expected a non-empty array of tensors for paths but received ${describe(paths)}`);
  paths.forEach((p, i) => checkTensor(p, name, `paths[${i}]`));
  checkTensor(gates, name, 'gates');
  const P = paths.length;
  const shape = paths[0].shape;
  paths.forEach((p, i) => {
    if (p.ndim !== shape.length || p.shape.some((d, j) => d !== shape[j])) {
      throw new ShapeError(`${name}: Expected paths[${i}] of the shape of paths[0] [${shape.join(', ')}] but received ${describe(p)}`);
    }
    if (p.dtype !== gates.dtype) throw new DTypeError(`${name}: Expected paths[${i}] of the gates' dtype ${gates.dtype} but received ${describe(p)}`);
  });
  const lead = shape.slice(0, -1);
  const perToken = [...lead, P];
  const perChannel = [...lead, P, shape[shape.length - 1]];
  const is = (want: number[]) => gates.ndim === want.length && want.every((d, j) => d === gates.shape[j]);
  const channel = shape.length >= 1 && is(perChannel);
  if (shape.length < 1 || (!channel && !is(perToken))) {
    throw new ShapeError(`${name}: Expected gates of shape [${perToken.join(', ')}] or [${perChannel.join(', ')}] for ${P} paths of shape [${shape.join(', ')}] but received ${describe(gates)}`);
  }
  // a product per path, summed as it goes: each path is read once where it lies (no stacked copy
  // of the paths, no reduction across a strided paths axis); a gate is a strided view of gates
  return tidy(() => {
    let out: Tensor | null = null;
    for (let p = 0; p < P; ++p) {
      const g = channel ? squeeze(narrow(gates, -2, p, 1), -2) : narrow(gates, -1, p, 1);
      const term = mul(paths[p], g);
      out = out ? add(out, term) : term;
    }
    return out!;
  });
}

// ---- gates ---------------------------------------------------------------------------------

export interface GateOptions extends InitOptions {
  /** 1 (default): one gate per token and path; dModel: one per channel. */
  units?: number;
  /** Bias in the gate projections (default true). */
  bias?: boolean;
}

const INIT_KEYS = ['dtype', 'device', 'generator'] as const;
// a gate module makes a projection per path: a bound that no design reaches, so that a mistaken
// count (2^31) is an error at once, not hours of module construction
const MAX_PATHS = 4096;

/**
 * Independent sigmoid gates, one per path, each from its own Linear(dModel -> units): gates in
 * (0, 1) that need not sum to 1 (a path can be switched off or on regardless of the others).
 * forward(x [..., dModel]) -> [..., nPaths] (units 1) or [..., nPaths, dModel] (units dModel).
 */
export class SigmoidGates extends Module {
  proj: Linear[];
  readonly units: number;
  constructor(readonly dModel: number, readonly nPaths: number, options: GateOptions = {}) {
    super();
    const name = 'SigmoidGates';
    options = checkOptions(options, name);
    checkKeys(name, options, [...INIT_KEYS, 'units', 'bias']);
    posInt(name, 'dModel', dModel);
    posInt(name, 'nPaths', nPaths);
    if (nPaths > MAX_PATHS) throw new ValueError(`${name}: Expected at most ${MAX_PATHS} paths but received ${describe(nPaths)}`);
    this.units = units(name, options.units, dModel);
    if (options.bias !== undefined && typeof options.bias !== 'boolean') throw new ValueError(`${name}: Expected a boolean for bias but received ${describe(options.bias)}`);
    const o = { dtype: options.dtype, device: options.device, generator: options.generator, bias: options.bias };
    this.proj = Array.from({ length: nPaths }, () => new Linear(dModel, this.units, o));
  }
  /**
   * The paths' projections as the rows of one matrix: weight [nPaths units, dModel] and bias
   * [nPaths units] (null without biases), concatenated copies of the parameters (differentiable).
   */
  stacked(): { weight: Tensor; bias: Tensor | null } {
    return {
      weight: concat(this.proj.map((l) => l.weight), 0),
      bias: this.proj[0].bias ? concat(this.proj.map((l) => l.bias!), 0) : null,
    };
  }
  /**
   * The gates of x. `stacked`: the parameters as stacked() returns them, when the caller keeps
   * them (a decode step reuses them while the weights stay as they are); by default stacked anew.
   */
  forward(x: Tensor, stacked?: { weight: Tensor; bias: Tensor | null }): Tensor {
    checkInput('SigmoidGates', x, this.dModel);
    const lead = x.shape.slice(0, -1);
    // the paths' projections are independent rows of one matrix: a single matmul for all of them
    return tidy(() => {
      const { weight, bias } = stacked ?? this.stacked();
      const g = sigmoid(linear(x, weight, bias));
      return this.units === 1 ? g : reshape(g, [...lead, this.nPaths, this.units]);
    });
  }
  /** sum_p gates_p * paths[p] (gates from forward; paths: nPaths tensors [..., dModel]). */
  mix(paths: Tensor[], gates: Tensor): Tensor {
    if (Array.isArray(paths) && paths.length !== this.nPaths) throw new ValueError(`SigmoidGates.mix: Expected ${this.nPaths} paths but received ${describe(paths)}`);
    return mixPaths(paths, gates, 'SigmoidGates.mix');
  }
}

export interface SoftmaxGateOptions extends GateOptions {
  /** Logits are divided by it before the softmax (default 1; lower is sharper). */
  temperature?: number;
}

/**
 * Competing gates: one Linear(dModel -> nPaths * units) to logits, softmax over the paths (the
 * gates of a token, or of a channel, sum to 1). Outputs and mix as SigmoidGates.
 */
export class SoftmaxGates extends Module {
  proj: Linear;
  readonly units: number;
  readonly temperature: number;
  constructor(readonly dModel: number, readonly nPaths: number, options: SoftmaxGateOptions = {}) {
    super();
    const name = 'SoftmaxGates';
    options = checkOptions(options, name);
    checkKeys(name, options, [...INIT_KEYS, 'units', 'bias', 'temperature']);
    posInt(name, 'dModel', dModel);
    posInt(name, 'nPaths', nPaths);
    if (nPaths > MAX_PATHS) throw new ValueError(`${name}: Expected at most ${MAX_PATHS} paths but received ${describe(nPaths)}`);
    this.units = units(name, options.units, dModel);
    const t = options.temperature ?? 1;
    if (typeof t !== 'number' || !Number.isFinite(t) || t <= 0) throw new ValueError(`${name}: Expected a finite number > 0 for temperature but received ${describe(t)}`);
    this.temperature = t;
    if (options.bias !== undefined && typeof options.bias !== 'boolean') throw new ValueError(`${name}: Expected a boolean for bias but received ${describe(options.bias)}`);
    this.proj = new Linear(dModel, nPaths * this.units, { dtype: options.dtype, device: options.device, generator: options.generator, bias: options.bias });
  }
  forward(x: Tensor): Tensor {
    checkInput('SoftmaxGates', x, this.dModel);
    const lead = x.shape.slice(0, -1);
    return tidy(() => {
      let z = this.proj.forward(x);
      if (this.temperature !== 1) z = mul(z, 1 / this.temperature);
      if (this.units === 1) return softmax(z, -1);
      return softmax(reshape(z, [...lead, this.nPaths, this.units]), -2);
    });
  }
  mix(paths: Tensor[], gates: Tensor): Tensor {
    if (Array.isArray(paths) && paths.length !== this.nPaths) throw new ValueError(`SoftmaxGates.mix: Expected ${this.nPaths} paths but received ${describe(paths)}`);
    return mixPaths(paths, gates, 'SoftmaxGates.mix');
  }
}

// one-hot float gates [..., P] of an int32 route
function oneHot(route: Tensor, P: number, dtype: DType): Tensor {
  return tidy(() => cast(eq(unsqueeze(route, -1), arange(0, P, 1, { dtype: 'int32', device: route.device })), dtype));
}

// ---- fixed routers -------------------------------------------------------------------------

export interface RuleRouterOptions {
  /** The path of ids no rule names (default 0). */
  default?: number;
  /** When given, rules may not name ids >= vocabSize, and such token ids fail the op. */
  vocabSize?: number;
  /** ruleRoute's lookup ('auto', 'dense', 'search'). */
  lookup?: 'auto' | 'dense' | 'search';
  /** The gates' dtype (default float32). */
  dtype?: DType;
}

/**
 * Routing by token id (ruleRoute): each id takes the path of the table rule naming it, or the
 * default. The table is checked and compiled once, here. forward(tokenIds int32 [B, S]) -> one-hot
 * gates [B, S, nPaths]; route(tokenIds) -> the int32 path numbers. No parameters.
 */
export class RuleRouter extends Module {
  readonly table: CompiledRuleTable;
  readonly dtype: DType;
  private readonly vocabSize: number | undefined;
  constructor(table: readonly RouteRule[], readonly nPaths: number, options: RuleRouterOptions = {}) {
    super();
    const name = 'RuleRouter';
    options = checkOptions(options, name);
    checkKeys(name, options, ['default', 'vocabSize', 'lookup', 'dtype']);
    posInt(name, 'nPaths', nPaths);
    if (nPaths > MAX_PATHS) throw new ValueError(`${name}: Expected at most ${MAX_PATHS} paths but received ${describe(nPaths)}`);
    this.dtype = floatDType(name, 'dtype', options.dtype, 'float32');
    this.vocabSize = options.vocabSize;
    // numRoutes: a rule (or the default) naming a path >= nPaths is refused now, not at the first batch
    this.table = compileRuleTable(table, { default: options.default, numRoutes: nPaths, vocabSize: options.vocabSize, lookup: options.lookup });
  }
  route(tokenIds: Tensor): Tensor {
    checkTensor(tokenIds, 'RuleRouter', 'tokenIds');
    if (tokenIds.dtype !== 'int32') throw new DTypeError(`RuleRouter: Expected int32 tokenIds but received ${describe(tokenIds)}`);
    return ruleRoute(tokenIds, this.table, this.vocabSize === undefined ? {} : { vocabSize: this.vocabSize });
  }
  forward(tokenIds: Tensor): Tensor {
    const r = this.route(tokenIds);
    try {
      return oneHot(r, this.nPaths, this.dtype);
    } finally {
      r.dispose();
    }
  }
}

export interface RandomRouterOptions {
  /** Seeds the router's own generator: training draws differ per call, the sequence is reproducible. Not with generator. */
  seed?: number;
  /** Draw from this generator (default: the default generator). */
  generator?: Generator;
  /** In eval: 'expectation' (default, gates = probs for every token) or 'sample' (a fixed draw from evalSeed, the same every call). */
  eval?: 'expectation' | 'sample';
  /** The seed of eval 'sample' (default: seed, else 0). */
  evalSeed?: number;
  /** The gates' dtype (default: x's when x is float, else float32). */
  dtype?: DType;
}

/**
 * A path per token drawn from the fixed distribution probs (randomRoute). forward(x [B, S, ...])
 * -> gates [B, S, P]: one-hot in training; in eval the expectation (probs for every token) or a
 * fixed-seed draw. x gives the tokens (its first two dimensions) and the device; token ids or
 * activations both do. No parameters.
 */
export class RandomRouter extends Module {
  readonly probs: number[];
  readonly evalMode: 'expectation' | 'sample';
  readonly evalSeed: number;
  readonly generator: Generator | undefined;
  private readonly dtype: DType | undefined;
  constructor(probs: readonly number[] | Float64Array | Float32Array, options: RandomRouterOptions = {}) {
    super();
    const name = 'RandomRouter';
    options = checkOptions(options, name);
    checkKeys(name, options, ['seed', 'generator', 'eval', 'evalSeed', 'dtype']);
    if (!(Array.isArray(probs) || probs instanceof Float64Array || probs instanceof Float32Array) || probs.length === 0) {
      throw new ValueError(`${name}: Expected a non-empty array of probabilities for probs but received ${describe(probs)}`);
    }
    const p = Array.from(probs as ArrayLike<number>);
    p.forEach((v, i) => {
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ValueError(`${name}: Expected a finite probability >= 0 for probs[${i}] but received ${describe(v)}`);
    });
    const s = p.reduce((a, b) => a + b, 0);
    if (!(Math.abs(s - 1) <= PROB_SUM_TOLERANCE)) throw new ValueError(`${name}: Expected probs to sum to 1 (within ${PROB_SUM_TOLERANCE}) but they sum to ${s}`);
    this.probs = p;
    const seedOk = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
    if (options.seed !== undefined && !seedOk(options.seed)) throw new ValueError(`${name}: Expected a non-negative safe integer for seed but received ${describe(options.seed)}`);
    if (options.evalSeed !== undefined && !seedOk(options.evalSeed)) throw new ValueError(`${name}: Expected a non-negative safe integer for evalSeed but received ${describe(options.evalSeed)}`);
    if (options.generator !== undefined) {
      if (!(options.generator instanceof Generator)) throw new ValueError(`${name}: Expected a Generator for generator but received ${describe(options.generator)}`);
      if (options.seed !== undefined) throw new ValueError(`${name}: Expected either seed or generator but received both (seed ${options.seed})`);
    }
    // a seed gives the router its own stream, not randomRoute's seed (which would repeat one draw every step)
    this.generator = options.generator ?? (options.seed !== undefined ? new Generator(options.seed) : undefined);
    this.evalMode = oneOf(name, 'eval', options.eval, ['expectation', 'sample'] as const, 'expectation');
    this.evalSeed = options.evalSeed ?? options.seed ?? 0;
    this.dtype = options.dtype === undefined ? undefined : floatDType(name, 'dtype', options.dtype, 'float32');
  }
  /** The drawn paths (int32 [B, S]) and the gates [B, S, P]. */
  sample(x: Tensor): { route: Tensor; gates: Tensor } {
    checkTensor(x, 'RandomRouter', 'x');
    if (x.ndim < 2) throw new ShapeError(`RandomRouter: Expected x of shape [B, S, ...] but received ${describe(x)}`);
    const [B, S] = x.shape;
    const P = this.probs.length;
    const dtype = this.dtype ?? (isFloat(x.dtype) ? x.dtype : 'float32');
    return tidy(() => {
      const r = randomRoute(B * S, this.probs, {
        generator: this.generator, training: this.training, evalMode: this.evalMode === 'sample' ? 'fixed' : 'expectation',
        evalSeed: this.evalSeed, device: x.device, dtype,
      });
      return { route: reshape(r.route, [B, S]), gates: reshape(r.weights, [B, S, P]) };
    });
  }
  forward(x: Tensor): Tensor {
    const { route, gates } = this.sample(x);
    route.dispose();
    return gates;
  }
}

// ---- mixtures of experts -------------------------------------------------------------------

/** What the last forward of a TokenChoiceMoE routed (read from the device when first asked for). */
export interface MoERouting {
  /** Entries (token, choice) kept per expert. */
  counts: number[];
  /** Share of the T * topK entries dropped by the capacity (0 when dropless). */
  dropped: number;
  /** The unweighted load-balancing loss E * sum_e f_e P_e. */
  auxLoss: number;
  /** The unweighted z loss, mean logsumexp(logits)^2. */
  zLoss: number;
}

export interface TokenChoiceMoEOptions extends InitOptions {
  /** Number of experts (required). */
  experts?: number;
  /** Experts per token (default 1, at most experts). */
  topK?: number;
  /** Slots per expert = ceil(capacityFactor * T * topK / experts), entries past them dropped; 0 (default): dropless. */
  capacityFactor?: number;
  /** 'softmax' (default) or 'sigmoid' (DeepSeek-V3) router scores. */
  score?: 'softmax' | 'sigmoid';
  /** Divide the chosen weights by their sum (routerGate's default: true for sigmoid, false for softmax). */
  normalize?: boolean;
  /** 'swiglu' (default) or 'gelu' expert FFN. */
  activation?: 'swiglu' | 'gelu';
  /** Weight of the load-balancing loss in auxLoss() (default 0.01, Switch Transformer). */
  auxLossWeight?: number;
  /** Weight of the router z loss in auxLoss() (default 0.001, ST-MoE). */
  zLossWeight?: number;
  /** When given, the rate of auxiliary-loss-free balancing: a selection bias per expert, moved by updateBias(). */
  biasBalancing?: number;
}

interface LastRouting {
  counts: Tensor;
  aux: Tensor;
  z: Tensor;
  entries: number;
  read: MoERouting | null;
}

// the expert weights w1, w2 of both MoE modules, with PyTorch's Linear bounds U(-1/sqrt(fan in), 1/sqrt(fan in))
function expertWeights(E: number, D: number, H: number, activation: 'swiglu' | 'gelu', o: InitOptions): [Tensor, Tensor] {
  const mk = (shape: number[], fanIn: number) => {
    const k = 1 / Math.sqrt(fanIn);
    return asParameter(untracked(() => rand(shape, { dtype: o.dtype, device: o.device, generator: o.generator, low: -k, high: k })));
  };
  return [mk([E, D, activation === 'swiglu' ? 2 * H : H], D), mk([E, H, D], H)];
}

function checkMoEInput(name: string, x: unknown, dModel: number, w: Tensor): Tensor {
  const t = checkInput(name, x, dModel);
  if (t.dtype !== w.dtype) throw new DTypeError(`${name}: Expected x of the parameters' dtype ${w.dtype} but received ${describe(t)}`);
  return t;
}

/**
 * Token-choice mixture of experts: a router Linear(dModel -> experts, no bias) scores each token,
 * routerGate picks its topK experts (and the capacity slots), moeDispatch groups the tokens by
 * expert, moeExpertFFN runs every expert's FFN, moeCombine sums the weighted outputs back per
 * token. forward(x [..., dModel]) -> y of x's shape; tokens dropped by the capacity get 0 from
 * the block (add the residual around it). After a forward, auxLoss() is the weighted router loss
 * to add to the training loss, lastRouting what was routed.
 */
export class TokenChoiceMoE extends Module {
  router: Linear;
  w1: Tensor;
  w2: Tensor;
  /** The selection bias of auxiliary-loss-free balancing (float [experts], not trained by gradients; null without biasBalancing). */
  routerBias: Tensor | null;
  readonly experts: number;
  readonly topK: number;
  readonly capacityFactor: number;
  readonly score: 'softmax' | 'sigmoid';
  readonly normalize: boolean | undefined;
  readonly activation: 'swiglu' | 'gelu';
  readonly auxLossWeight: number;
  readonly zLossWeight: number;
  readonly biasBalancing: number | null;
  private last: LastRouting | null = null;

  constructor(readonly dModel: number, readonly hidden: number, options: TokenChoiceMoEOptions = {}) {
    super();
    const name = 'TokenChoiceMoE';
    options = checkOptions(options, name);
    checkKeys(name, options, [...INIT_KEYS, 'experts', 'topK', 'capacityFactor', 'score', 'normalize', 'activation', 'auxLossWeight', 'zLossWeight', 'biasBalancing']);
    posInt(name, 'dModel', dModel);
    posInt(name, 'hidden', hidden);
    const E = posInt(name, 'experts', options.experts);
    const k = options.topK ?? 1;
    if (typeof k !== 'number' || !Number.isInteger(k) || k < 1 || k > E) throw new ValueError(`${name}: Expected an integer topK in [1, ${E}] (experts) but received ${describe(k)}`);
    this.experts = E;
    this.topK = k;
    this.capacityFactor = nonNeg(name, 'capacityFactor', options.capacityFactor, 0);
    this.score = oneOf(name, 'score', options.score, ['softmax', 'sigmoid'] as const, 'softmax');
    if (options.normalize !== undefined && typeof options.normalize !== 'boolean') throw new ValueError(`${name}: Expected a boolean for normalize but received ${describe(options.normalize)}`);
    this.normalize = options.normalize;
    this.activation = oneOf(name, 'activation', options.activation, ['swiglu', 'gelu'] as const, 'swiglu');
    this.auxLossWeight = nonNeg(name, 'auxLossWeight', options.auxLossWeight, 0.01);
    this.zLossWeight = nonNeg(name, 'zLossWeight', options.zLossWeight, 0.001);
    this.biasBalancing = options.biasBalancing === undefined ? null : nonNeg(name, 'biasBalancing', options.biasBalancing, 0);
    const init = { dtype: options.dtype, device: options.device, generator: options.generator };
    this.router = new Linear(dModel, E, { ...init, bias: false });
    [this.w1, this.w2] = expertWeights(E, dModel, hidden, this.activation, init);
    // routerGate wants the bias in its statistics dtype; made outside any tidy: it lives with the module
    // a buffer: saved in stateDict (a resumed run keeps its balance), not trained
    this.routerBias = this.biasBalancing === null ? null : this.buffer(() => zeros([E], { dtype: statsDType(options.dtype), device: options.device }));
  }

  forward(x: Tensor): Tensor {
    const name = 'TokenChoiceMoE';
    checkMoEInput(name, x, this.dModel, this.w1);
    const D = this.dModel, E = this.experts, K = this.topK;
    const T = x.size / D;
    const capacity = this.capacityFactor > 0 ? Math.ceil((this.capacityFactor * T * K) / E) : 0;
    const r = tidy(() => {
      const xf = reshape(x, [T, D]);
      const g = routerGate(this.router.forward(xf), {
        topK: K, score: this.score, normalize: this.normalize, capacityFactor: this.capacityFactor, bias: this.routerBias ?? undefined,
      });
      // the capacity layout when slots are bounded (a batched matmul per expert), else dropless
      const layout = capacity > 0 ? { layout: 'capacity' as const, experts: E, capacity } : { counts: g.counts };
      const d = moeDispatch(xf, g.indices, g.positions, layout);
      const h = moeExpertFFN(d.buffer, this.w1, this.w2, capacity > 0 ? { activation: this.activation } : { activation: this.activation, offsets: d.offsets });
      const y = moeCombine(h, g.indices, g.positions, g.weights, { plan: d.plan });
      return { y: reshape(y, x.shape.slice()), counts: g.counts, aux: g.auxLoss, z: g.zLoss };
    });
    // the losses stay (with their graph) until the next forward, for auxLoss(); kept: an
    // enclosing tidy must not free them
    this.releaseRouting();
    this.last = { counts: keep(r.counts), aux: keep(r.aux), z: keep(r.z), entries: T * K, read: null };
    return r.y;
  }

  /**
   * The router's choice for x [..., dModel], as forward makes it (the same gate, bias and
   * capacity over all of x's tokens): int32 indices [T, topK] (each token's experts, best first)
   * and positions [T, topK] (slot in the expert, -1 when the capacity dropped the entry), T the
   * tokens of x in order. Not differentiable; runs no expert. For inspection and plots.
   */
  route(x: Tensor): { indices: Tensor; positions: Tensor } {
    const name = 'TokenChoiceMoE.route';
    checkMoEInput(name, x, this.dModel, this.w1);
    const T = x.size / this.dModel;
    return noGrad(() => tidy(() => {
      const g = routerGate(this.router.forward(reshape(x, [T, this.dModel])), {
        topK: this.topK, score: this.score, normalize: this.normalize, capacityFactor: this.capacityFactor, bias: this.routerBias ?? undefined,
      });
      return { indices: g.indices, positions: g.positions };
    }));
  }

  /** The routing of the last forward (null before the first); reading it waits for the router. */
  get lastRouting(): MoERouting | null {
    const l = this.last;
    if (!l) return null;
    if (!l.read) {
      const counts = Array.from(l.counts.dataSync(), Number);
      const kept = counts.reduce((a, b) => a + b, 0);
      l.read = { counts, dropped: l.entries > 0 ? 1 - kept / l.entries : 0, auxLoss: l.aux.item(), zLoss: l.z.item() };
    }
    return l.read;
  }

  /** auxLossWeight * auxLoss + zLossWeight * zLoss of the last forward: a scalar to add to the training loss (differentiable). */
  auxLoss(): Tensor {
    const l = this.last;
    if (!l) throw new ValueError('TokenChoiceMoE.auxLoss: no forward has run yet');
    return tidy(() => add(mul(l.aux, this.auxLossWeight), mul(l.z, this.zLossWeight)));
  }

  /** Auxiliary-loss-free balancing: moves routerBias by the last forward's counts (updateRouterBias). Call after the optimizer step. */
  updateBias(): void {
    if (this.biasBalancing === null || !this.routerBias) throw new ValueError('TokenChoiceMoE.updateBias: Expected the biasBalancing option (a rate) but it was not given');
    if (!this.last) throw new ValueError('TokenChoiceMoE.updateBias: no forward has run yet');
    updateRouterBias(this.routerBias, this.last.counts, this.biasBalancing);
  }

  /** Frees what the last forward kept for auxLoss() and lastRouting. */
  releaseRouting(): void {
    if (!this.last) return;
    [this.last.counts, this.last.aux, this.last.z].forEach((t) => t.dispose());
    this.last = null;
  }

  dispose(): void {
    this.releaseRouting();
    super.dispose();
  }
}

export interface ExpertChoiceMoEOptions extends InitOptions {
  /** Number of experts (required). */
  experts?: number;
  /** Tokens per expert C = min(T, ceil(capacityFactor * T / experts)) (default 1). */
  capacityFactor?: number;
  /** 'softmax' (default: over the experts of a token) or 'sigmoid' scores. */
  score?: 'softmax' | 'sigmoid';
  /** 'swiglu' (default) or 'gelu' expert FFN. */
  activation?: 'swiglu' | 'gelu';
}

/**
 * Expert-choice mixture of experts (Zhou et al. 2022): each expert takes the C tokens that score
 * it highest (expertChoice), so the load is balanced by construction; a token may be taken by
 * several experts or by none (it then gets 0 from the block). The same router, expert FFN and
 * combine as TokenChoiceMoE. forward(x [..., dModel]) -> y of x's shape.
 */
export class ExpertChoiceMoE extends Module {
  router: Linear;
  w1: Tensor;
  w2: Tensor;
  readonly experts: number;
  readonly capacityFactor: number;
  readonly score: 'softmax' | 'sigmoid';
  readonly activation: 'swiglu' | 'gelu';
  constructor(readonly dModel: number, readonly hidden: number, options: ExpertChoiceMoEOptions = {}) {
    super();
    const name = 'ExpertChoiceMoE';
    options = checkOptions(options, name);
    checkKeys(name, options, [...INIT_KEYS, 'experts', 'capacityFactor', 'score', 'activation']);
    posInt(name, 'dModel', dModel);
    posInt(name, 'hidden', hidden);
    const E = posInt(name, 'experts', options.experts);
    const cf = options.capacityFactor ?? 1;
    if (typeof cf !== 'number' || !Number.isFinite(cf) || cf <= 0) throw new ValueError(`${name}: Expected a finite number > 0 for capacityFactor but received ${describe(cf)}`);
    this.experts = E;
    this.capacityFactor = cf;
    this.score = oneOf(name, 'score', options.score, ['softmax', 'sigmoid'] as const, 'softmax');
    this.activation = oneOf(name, 'activation', options.activation, ['swiglu', 'gelu'] as const, 'swiglu');
    const init = { dtype: options.dtype, device: options.device, generator: options.generator };
    this.router = new Linear(dModel, E, { ...init, bias: false });
    [this.w1, this.w2] = expertWeights(E, dModel, hidden, this.activation, init);
  }

  /** Tokens each expert takes for T tokens. */
  capacity(T: number): number {
    return Math.min(T, Math.ceil((this.capacityFactor * T) / this.experts));
  }

  forward(x: Tensor): Tensor {
    const name = 'ExpertChoiceMoE';
    checkMoEInput(name, x, this.dModel, this.w1);
    const D = this.dModel, E = this.experts;
    const T = x.size / D;
    const C = this.capacity(T);
    const device = x.device;
    return tidy(() => {
      const xf = reshape(x, [T, D]);
      const ec = expertChoice(this.router.forward(xf), { capacity: C, score: this.score });
      // in the token-choice layout of moeDispatch with K = E: entry (t, e) is expert e, at the
      // slot where e took t (-1 when it did not), weighted by e's score of t (0 when not taken)
      const slots = contiguous(expand(arange(1, C + 1, 1, { dtype: 'int32', device }), [E, C]));
      const positions = contiguous(transpose(sub(scatterAdd(zeros([E, T], { dtype: 'int32', device }), 1, ec.tokens, slots), 1), 0, 1));
      const indices = contiguous(expand(arange(0, E, 1, { dtype: 'int32', device }), [T, E]));
      const weights = contiguous(transpose(scatterAdd(zeros([E, T], { dtype: ec.weights.dtype, device }), 1, ec.tokens, ec.weights), 0, 1));
      const d = moeDispatch(xf, indices, positions, { layout: 'capacity', experts: E, capacity: C });
      const h = moeExpertFFN(d.buffer, this.w1, this.w2, { activation: this.activation });
      return reshape(moeCombine(h, indices, positions, weights, { plan: d.plan }), x.shape.slice());
    });
  }
}
