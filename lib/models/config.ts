// DualRouteLM's JSON config: types, defaults and validation. Every field is checked with an error
// that names its path (layers[3].global), the expected and the received value; unknown keys are
// refused (a typo in a JSON config must not silently fall back to a default).
import { ValueError, describe } from '../errors';
import type { RouteRule } from '../ops/route_rules';

export type LocalKind = 'window' | 'conv' | 'lstm' | 'none';
export type GlobalKind = 'full' | 'segment' | 'routed' | 'nsa' | 'none';
export type FusionKind = 'sum' | 'gated' | 'softmax' | 'attention' | 'concat' | 'rule' | 'random';

/** One layer's paths and how they are mixed. */
export interface LayerConfig {
  /**
   * The cheap path: 'window' (local attention), 'conv' (causal depthwise conv + projection),
   * 'lstm' (a one-layer LSTM of width dModel: the low path of the classic dual-routing design) or 'none'.
   */
  local?: LocalKind;
  /** 'window': keys per query (sliding) or block length (block). Default 64. */
  window?: number;
  windowMode?: 'sliding' | 'block';
  /** 'conv': kernel size. Default 4. */
  convKernel?: number;
  /**
   * The expensive path: 'full' (causal attention), 'segment' (each query reads its topK segments),
   * 'routed' (Mixture-of-Depths: only the top `capacity` fraction of tokens per sequence goes
   * through attention; a causal predictor beside the router decides in eval and decode), 'nsa'
   * (compressed + selected segments + a sliding window of `window`, three sigmoid gates) or 'none'.
   */
  global?: GlobalKind;
  /** 'segment': keys per segment and segments per query. Defaults 64 and 8. */
  segment?: number;
  topK?: number;
  /** 'routed': fraction of tokens sent through the global path, in (0, 1]. Default 0.25. */
  capacity?: number;
  /** How the two paths' outputs are mixed (ignored when one path is 'none'). Default 'gated'. */
  fusion?: FusionKind;
  /** 'gated' / 'softmax': one gate per token (default) or per channel. */
  gateUnits?: 'token' | 'channel';
  /** 'rule': token ids (or id ranges) to paths 0 (local) or 1 (global); others take `ruleDefault`. */
  rules?: RouteRule[];
  ruleDefault?: number;
  /** 'random': the probability of each path in training (its expectation in eval). Default [0.5, 0.5]. */
  randomProbs?: [number, number];
}

export interface MoEConfig {
  experts: number;
  topK?: number;
  capacityFactor?: number;
  score?: 'softmax' | 'sigmoid';
  auxLossWeight?: number;
  zLossWeight?: number;
}

export interface DualRouteLMConfig {
  vocabSize: number;
  dModel: number;
  nHeads: number;
  /** Key/value heads (grouped-query attention). Default nHeads. */
  nKvHeads?: number;
  nLayers: number;
  /** Longest sequence the model is trained and run on. */
  maxSeq: number;
  /** Rotary positions in every attention (default true). */
  rope?: boolean;
  ropeBase?: number;
  normEps?: number;
  /** The output projection shares the embedding's weights (default true). */
  tieEmbeddings?: boolean;
  dropout?: number;
  /** Stochastic depth: each layer is dropped per sample with this probability in training (default 0). */
  layerDrop?: number;
  ffn?: 'swiglu' | 'gelu' | 'moe';
  ffnHidden?: number;
  moe?: MoEConfig;
  /** Defaults for every layer, under `layers` / `pattern` entries. */
  layer?: LayerConfig;
  /** One entry per layer (nLayers of them). */
  layers?: LayerConfig[];
  /** Repeated to nLayers layers (five local layers then one global, as Gemma 3 interleaves them). */
  pattern?: LayerConfig[];
  seed?: number;
}

/** A layer's config with every default filled in. */
export type ResolvedLayer = Required<Omit<LayerConfig, 'rules'>> & { rules: RouteRule[] };
export type ResolvedConfig = Required<Omit<DualRouteLMConfig, 'layer' | 'layers' | 'pattern' | 'moe'>> & {
  moe: Required<MoEConfig> | null;
  layers: ResolvedLayer[];
};

const LAYER_KEYS = ['local', 'window', 'windowMode', 'convKernel', 'global', 'segment', 'topK', 'capacity', 'fusion', 'gateUnits', 'rules', 'ruleDefault', 'randomProbs'];
const TOP_KEYS = ['vocabSize', 'dModel', 'nHeads', 'nKvHeads', 'nLayers', 'maxSeq', 'rope', 'ropeBase', 'normEps', 'tieEmbeddings', 'dropout', 'layerDrop', 'ffn', 'ffnHidden', 'moe', 'layer', 'layers', 'pattern', 'seed'];
const MOE_KEYS = ['experts', 'topK', 'capacityFactor', 'score', 'auxLossWeight', 'zLossWeight'];

const fail = (path: string, want: string, got: unknown): never => {
  throw new ValueError(`DualRouteLM config: ${path}: Expected ${want} but received ${describe(got)}`);
};

function object(path: string, v: unknown, keys: string[]): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) fail(path, 'an object', v);
  for (const k of Object.keys(v as object)) {
    if (!keys.includes(k)) throw new ValueError(`DualRouteLM config: ${path}: unknown key '${k}' (known: ${keys.join(', ')})`);
  }
  return v as Record<string, unknown>;
}
function int(path: string, v: unknown, min: number): number {
  if (!Number.isInteger(v) || (v as number) < min) fail(path, `an integer >= ${min}`, v);
  return v as number;
}
function num(path: string, v: unknown, ok: (x: number) => boolean, want: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) fail(path, want, v);
  return v as number;
}
function oneOf<T extends string>(path: string, v: unknown, allowed: readonly T[]): T {
  if (!allowed.includes(v as T)) fail(path, `one of ${allowed.map((a) => `'${a}'`).join(', ')}`, v);
  return v as T;
}
function bool(path: string, v: unknown): boolean {
  if (typeof v !== 'boolean') fail(path, 'a boolean', v);
  return v as boolean;
}

function resolveLayer(path: string, base: LayerConfig, own: unknown): ResolvedLayer {
  const d = object(path, own, LAYER_KEYS);
  const b = base as Record<string, unknown>;
  const get = (k: string) => (d[k] !== undefined ? d[k] : b[k]);
  const at = (k: string) => `${d[k] !== undefined ? path : 'layer'}.${k}`;
  const local = oneOf(at('local'), get('local') ?? 'window', ['window', 'conv', 'lstm', 'none'] as const);
  const global = oneOf(at('global'), get('global') ?? 'full', ['full', 'segment', 'routed', 'nsa', 'none'] as const);
  if (local === 'none' && global === 'none') throw new ValueError(`DualRouteLM config: ${path}: local and global are both 'none'; a layer needs at least one path`);
  const fusion = oneOf(at('fusion'), get('fusion') ?? 'gated', ['sum', 'gated', 'softmax', 'attention', 'concat', 'rule', 'random'] as const);
  const rules = (get('rules') ?? []) as RouteRule[];
  if (!Array.isArray(rules)) fail(at('rules'), 'an array of rules', rules);
  if (fusion === 'rule' && rules.length === 0) fail(at('rules'), "a non-empty rule table for fusion 'rule'", get('rules'));
  const probs = (get('randomProbs') ?? [0.5, 0.5]) as [number, number];
  if (!Array.isArray(probs) || probs.length !== 2 || probs.some((p) => typeof p !== 'number' || !(p >= 0 && p <= 1)) || Math.abs(probs[0] + probs[1] - 1) > 1e-6) {
    fail(at('randomProbs'), 'two probabilities that sum to 1', probs);
  }
  return {
    local,
    window: int(at('window'), get('window') ?? 64, 1),
    windowMode: oneOf(at('windowMode'), get('windowMode') ?? 'sliding', ['sliding', 'block'] as const),
    convKernel: int(at('convKernel'), get('convKernel') ?? 4, 1),
    global,
    segment: int(at('segment'), get('segment') ?? 64, 1),
    topK: int(at('topK'), get('topK') ?? 8, 1),
    capacity: num(at('capacity'), get('capacity') ?? 0.25, (x) => x > 0 && x <= 1, 'a fraction in (0, 1]'),
    fusion,
    gateUnits: oneOf(at('gateUnits'), get('gateUnits') ?? 'token', ['token', 'channel'] as const),
    rules,
    ruleDefault: int(at('ruleDefault'), get('ruleDefault') ?? 0, 0),
    randomProbs: [probs[0], probs[1]],
  };
}

/** Checks a config (from JSON or code) and fills in the defaults. */
export function resolveConfig(config: unknown): ResolvedConfig {
  const c = object('config', config, TOP_KEYS);
  const dModel = int('dModel', c.dModel, 1);
  const nHeads = int('nHeads', c.nHeads, 1);
  const nKvHeads = int('nKvHeads', c.nKvHeads ?? nHeads, 1);
  if (dModel % nHeads !== 0) fail('dModel', `a multiple of nHeads (${nHeads})`, dModel);
  if (nHeads % nKvHeads !== 0) fail('nKvHeads', `a divisor of nHeads (${nHeads})`, nKvHeads);
  const nLayers = int('nLayers', c.nLayers, 1);
  const maxSeq = int('maxSeq', c.maxSeq, 1);
  const rope = bool('rope', c.rope ?? true);
  if (rope && (dModel / nHeads) % 2 !== 0) fail('nHeads', `a head width dModel / nHeads that is even (rope)`, nHeads);
  const ffn = oneOf('ffn', c.ffn ?? 'swiglu', ['swiglu', 'gelu', 'moe'] as const);
  let moe: Required<MoEConfig> | null = null;
  if (ffn === 'moe') {
    if (c.moe === undefined) throw new ValueError("DualRouteLM config: moe: ffn 'moe' needs moe: { experts, topK?, capacityFactor?, score? }");
    const m = object('moe', c.moe, MOE_KEYS);
    const experts = int('moe.experts', m.experts, 1);
    moe = {
      experts,
      topK: int('moe.topK', m.topK ?? Math.min(2, experts), 1),
      capacityFactor: num('moe.capacityFactor', m.capacityFactor ?? 0, (x) => x >= 0, 'a number >= 0 (0: dropless)'),
      score: oneOf('moe.score', m.score ?? 'softmax', ['softmax', 'sigmoid'] as const),
      auxLossWeight: num('moe.auxLossWeight', m.auxLossWeight ?? 0.01, (x) => x >= 0, 'a number >= 0'),
      zLossWeight: num('moe.zLossWeight', m.zLossWeight ?? 0.001, (x) => x >= 0, 'a number >= 0'),
    };
    if (moe.topK > experts) fail('moe.topK', `at most moe.experts (${experts})`, moe.topK);
  } else if (c.moe !== undefined) {
    throw new ValueError(`DualRouteLM config: moe: given but ffn is '${ffn}' (set ffn: 'moe')`);
  }
  const base = c.layer === undefined ? {} : (object('layer', c.layer, LAYER_KEYS) as LayerConfig);
  if (c.layers !== undefined && c.pattern !== undefined) throw new ValueError('DualRouteLM config: give layers (one per layer) or pattern (repeated), not both');
  let specs: unknown[];
  let names: string[];
  if (c.layers !== undefined) {
    if (!Array.isArray(c.layers) || c.layers.length !== nLayers) fail('layers', `an array of nLayers (${nLayers}) layer configs`, c.layers);
    specs = c.layers as unknown[];
    names = specs.map((_, i) => `layers[${i}]`);
  } else if (c.pattern !== undefined) {
    if (!Array.isArray(c.pattern) || c.pattern.length === 0) fail('pattern', 'a non-empty array of layer configs', c.pattern);
    const p = c.pattern as unknown[];
    specs = Array.from({ length: nLayers }, (_, i) => p[i % p.length]);
    names = specs.map((_, i) => `pattern[${i % p.length}]`);
  } else {
    specs = Array.from({ length: nLayers }, () => ({}));
    names = specs.map(() => 'layer');
  }
  const layers = specs.map((s, i) => resolveLayer(names[i], base, s));
  const dropout = num('dropout', c.dropout ?? 0, (x) => x >= 0 && x < 1, 'a probability in [0, 1)');
  const layerDrop = num('layerDrop', c.layerDrop ?? 0, (x) => x >= 0 && x < 1, 'a probability in [0, 1)');
  return {
    vocabSize: int('vocabSize', c.vocabSize, 1),
    dModel, nHeads, nKvHeads, nLayers, maxSeq, rope,
    ropeBase: num('ropeBase', c.ropeBase ?? 10000, (x) => x > 0, 'a number > 0'),
    normEps: num('normEps', c.normEps ?? 1e-6, (x) => x > 0, 'a number > 0'),
    tieEmbeddings: bool('tieEmbeddings', c.tieEmbeddings ?? true),
    dropout, layerDrop, ffn,
    ffnHidden: int('ffnHidden', c.ffnHidden ?? (ffn === 'gelu' ? 4 * dModel : Math.max(1, Math.round((8 * dModel) / 3))), 1),
    moe, layers,
    seed: int('seed', c.seed ?? 0, 0),
  };
}
