// Routing: the router gate (token -> experts or paths), expert-choice routing, and the
// auxiliary-loss-free bias update. The gate is one fused kernel per backend (scores, biased and
// group-limited top-k, weights, capacity positions); the load-balancing and z losses are
// differentiable compositions over the same logits.
import { DTypeError, OutOfRangeError, ShapeError, ValueError, describe } from '../errors';
import { isFloat } from '../dtype';
import { op } from '../native';
import { Generator } from '../random';
import { Tensor, tidy, untracked } from '../tensor';
import { noGrad, record } from '../tape';
import { rand } from './creation';
import { log, mul, neg, sigmoid, sign, sub } from './elementwise';
import { add_ } from './inplace';
import { mean } from './reduce';
import { softmax } from './nn';
import { cast, contiguous, narrow, reshape, transpose } from './shape';
import { topk } from './sort';
import { checkOptions, checkTensor, empty, sameDevice } from './util';

export interface RouterGateOptions {
  /** Experts per token (default 1). */
  topK?: number;
  /** 'softmax' (softmax over the experts, then top-k: Switch, megablocks) or 'sigmoid' (DeepSeek-V3). Default 'softmax'. */
  score?: 'softmax' | 'sigmoid';
  /** Divide the chosen weights by their sum (default: true for 'sigmoid', false for 'softmax'). */
  normalize?: boolean;
  /** Multiplies the weights (DeepSeek-V3's routed scaling factor; default 1). */
  routeScale?: number;
  /** float [E], added to the scores for the selection only (auxiliary-loss-free balancing; see updateRouterBias). */
  bias?: Tensor;
  /** Group-limited selection: the experts form `groups` equal groups... */
  groups?: number;
  /** ...and only the best `topGroups` of them (a group scored by the sum of its two best values) are eligible. */
  topGroups?: number;
  /** Slots per expert = ceil(capacityFactor * T * topK / E); entries past them get position -1. 0 (default): dropless. */
  capacityFactor?: number;
  /** 'jitter': logits times U(1 - noiseEps, 1 + noiseEps); 'gumbel': Gumbel noise on the selection (sampling the top-k). */
  noise?: 'jitter' | 'gumbel';
  /** Jitter amplitude (default 0.01). */
  noiseEps?: number;
  generator?: Generator;
}

export interface RouterGateResult {
  /** int32 [T, topK]: the chosen experts of each token, best first. */
  indices: Tensor;
  /** [T, topK] float32 (float64 for float64 logits): the gate weights (differentiable). */
  weights: Tensor;
  /** int32 [T, topK]: each entry's slot in its expert (first choices first, tokens in order); -1 when dropped. */
  positions: Tensor;
  /** int32 [E]: entries kept per expert. */
  counts: Tensor;
  /** The load-balancing loss E * sum_e f_e P_e (f: share of first choices, P: mean score), a scalar. */
  auxLoss: Tensor;
  /** mean over tokens of logsumexp(logits)^2, a scalar. */
  zLoss: Tensor;
}

const statsDType = (x: Tensor) => (x.dtype === 'float64' ? 'float64' : 'float32');

function intOption(op: string, name: string, v: unknown, dflt: number, lo: number, hi: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
    throw new OutOfRangeError(`${op}: Expected an integer ${name} in [${lo}, ${hi}] but received ${describe(v)}`);
  }
  return v;
}

function numOption(op: string, name: string, v: unknown, dflt: number, lo: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < lo) throw new ValueError(`${op}: Expected a finite number >= ${lo} for ${name} but received ${describe(v)}`);
  return v;
}

/**
 * The router gate over logits [T, E] (any float dtype; computed in float32, float64 for float64):
 * per token the top-k experts and their weights, the capacity slots, the per-expert counts, and
 * the load-balancing and z losses. Gradients reach the logits through weights, auxLoss and zLoss.
 */
export function routerGate(logits: Tensor, options: RouterGateOptions = {}): RouterGateResult {
  const name = 'routerGate';
  options = checkOptions(options, name);
  checkTensor(logits, name, 'logits');
  if (!isFloat(logits.dtype)) throw new DTypeError(`${name}: Expected float logits but received ${describe(logits)}`);
  if (logits.ndim !== 2) throw new ShapeError(`${name}: Expected logits of shape [tokens, experts] but received ${describe(logits)}`);
  const [T, E] = logits.shape;
  if (E < 1) throw new ShapeError(`${name}: Expected at least one expert but received ${describe(logits)}`);
  const k = intOption(name, 'topK', options.topK, 1, 1, E);
  const score = options.score ?? 'softmax';
  if (score !== 'softmax' && score !== 'sigmoid') throw new ValueError(`${name}: Expected 'softmax' or 'sigmoid' for score but received ${describe(score)}`);
  const normalize = options.normalize ?? score === 'sigmoid';
  if (typeof normalize !== 'boolean') throw new ValueError(`${name}: Expected a boolean for normalize but received ${describe(normalize)}`);
  const routeScale = numOption(name, 'routeScale', options.routeScale, 1, 0);
  const groups = intOption(name, 'groups', options.groups, 1, 1, E);
  if (E % groups !== 0) throw new ValueError(`${name}: groups (${groups}) must divide the experts (${E})`);
  const topGroups = intOption(name, 'topGroups', options.topGroups, groups, 1, groups);
  if (topGroups * (E / groups) < k) throw new ValueError(`${name}: the best ${topGroups} groups hold ${topGroups * (E / groups)} experts, fewer than topK = ${k}`);
  const cf = numOption(name, 'capacityFactor', options.capacityFactor, 0, 0);
  const capacity = cf > 0 ? Math.ceil((cf * T * k) / E) : 0;
  if (capacity > 2 ** 31 - 1) throw new OutOfRangeError(`${name}: capacity ${capacity} does not fit int32`);
  const sd = statsDType(logits);
  if (options.bias !== undefined) {
    checkTensor(options.bias, name, 'bias');
    if (options.bias.ndim !== 1 || options.bias.shape[0] !== E || options.bias.dtype !== sd) {
      throw new ShapeError(`${name}: Expected a ${sd} bias of shape [${E}] but received ${describe(options.bias)}`);
    }
    sameDevice(name, logits, options.bias);
  }
  const noise = options.noise;
  if (noise !== undefined && noise !== 'jitter' && noise !== 'gumbel') throw new ValueError(`${name}: Expected 'jitter' or 'gumbel' for noise but received ${describe(noise)}`);
  const eps = numOption(name, 'noiseEps', options.noiseEps, 0.01, 0);
  if (options.generator !== undefined && !(options.generator instanceof Generator)) {
    throw new ValueError(`${name}: Expected a Generator for generator but received ${describe(options.generator)}`);
  }

  const device = logits.device;
  // jitter scales the logits themselves (the weights and losses see it); gumbel perturbs the selection only
  const jittered = noise === 'jitter' ? mul(logits, rand([T, E], { device, generator: options.generator, low: 1 - eps, high: 1 + eps, dtype: logits.dtype })) : logits;
  let selNoise: Tensor | null = null;
  if (noise === 'gumbel') {
    selNoise = untracked(() => tidy(() => {
      const u = rand([T, E], { device, generator: options.generator, low: 2 ** -24, high: 1, dtype: sd });
      return neg(log(neg(log(u))));
    }));
  }
  const indices = empty([T, k], 'int32', device);
  const weights = empty([T, k], sd, device);
  const positions = empty([T, k], 'int32', device);
  const counts = empty([E], 'int32', device);
  const scores = empty([T, E], sd, device);
  try {
    op.routerGate({ indices, weights, positions, counts, scores, logits: jittered, bias: options.bias ?? null, noise: selNoise,
      score, k, normalize, routeScale, groups, topGroups, capacity });
  } catch (e) {
    [indices, weights, positions, counts, scores].forEach((t) => t.dispose());
    throw e;
  } finally {
    selNoise?.dispose();
  }
  record(weights, name, [jittered], [scores, indices], { score, normalize, routeScale });
  // losses, differentiable through the logits: one fused op (routerLosses) for both
  const lg = jittered.dtype === sd ? jittered : cast(jittered, sd);
  const firstCol = contiguous(narrow(indices, 1, 0, 1));
  const first = reshape(firstCol, [T]);
  const auxLoss = empty([], sd, device), zLoss = empty([], sd, device);
  const lse = empty([T], sd, device), f = empty([E], sd, device);
  try {
    op.routerLosses({ aux: auxLoss, zloss: zLoss, lse, fraction: f, logits: lg, first, score });
  } finally {
    first.dispose();
    firstCol.dispose();
  }
  record(auxLoss, 'routerAuxLoss', [lg], [lg, lse, f], { score });
  record(zLoss, 'routerZLoss', [lg], [lg, lse, f], { score });
  lse.dispose();
  f.dispose();
  if (lg !== jittered) lg.dispose();
  if (jittered !== logits) jittered.dispose();
  scores.dispose();
  return { indices, weights, positions, counts, auxLoss, zLoss };
}

export interface ExpertChoiceOptions {
  /** Tokens per expert = ceil(capacityFactor * T / E) (default 1), or `capacity` directly. */
  capacityFactor?: number;
  capacity?: number;
  score?: 'softmax' | 'sigmoid';
}

/**
 * Expert-choice routing: each expert takes the `capacity` tokens that score it highest
 * (softmax over experts, or sigmoid). int32 tokens [E, C], their weights [E, C] (differentiable).
 */
export function expertChoice(logits: Tensor, options: ExpertChoiceOptions = {}): { tokens: Tensor; weights: Tensor } {
  const name = 'expertChoice';
  options = checkOptions(options, name);
  checkTensor(logits, name, 'logits');
  if (!isFloat(logits.dtype)) throw new DTypeError(`${name}: Expected float logits but received ${describe(logits)}`);
  if (logits.ndim !== 2) throw new ShapeError(`${name}: Expected logits of shape [tokens, experts] but received ${describe(logits)}`);
  const [T, E] = logits.shape;
  const score = options.score ?? 'softmax';
  if (score !== 'softmax' && score !== 'sigmoid') throw new ValueError(`${name}: Expected 'softmax' or 'sigmoid' for score but received ${describe(score)}`);
  const cf = numOption(name, 'capacityFactor', options.capacityFactor, 1, 0);
  const C = intOption(name, 'capacity', options.capacity, Math.ceil((cf * T) / Math.max(E, 1)), 0, T);
  return tidy(() => {
    const s = score === 'softmax' ? softmax(cast(logits, statsDType(logits)), -1) : sigmoid(cast(logits, statsDType(logits)));
    const r = topk(transpose(s, 0, 1), C);
    return { tokens: r.indices, weights: r.values };
  });
}

/**
 * Auxiliary-loss-free balancing (DeepSeek-V3): after a step, bias[e] += rate * sign(mean load -
 * load[e]) in place, from the gate's counts. Not recorded by autograd.
 */
export function updateRouterBias(bias: Tensor, counts: Tensor, rate: number): Tensor {
  const name = 'updateRouterBias';
  checkTensor(bias, name, 'bias');
  checkTensor(counts, name, 'counts');
  if (bias.ndim !== 1 || counts.ndim !== 1 || bias.shape[0] !== counts.shape[0]) {
    throw new ShapeError(`${name}: Expected bias and counts of the same shape [E] but received ${describe(bias)} and ${describe(counts)}`);
  }
  if (!isFloat(bias.dtype)) throw new DTypeError(`${name}: Expected a float bias but received ${describe(bias)}`);
  if (typeof rate !== 'number' || !Number.isFinite(rate) || rate < 0) throw new ValueError(`${name}: Expected a finite rate >= 0 but received ${describe(rate)}`);
  sameDevice(name, bias, counts);
  noGrad(() => tidy(() => {
    const load = cast(counts, bias.dtype);
    add_(bias, mul(sign(sub(mean(load), load)), rate));
  }));
  return bias;
}
