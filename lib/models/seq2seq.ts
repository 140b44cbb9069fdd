// DualRouteSeq2Seq: a bidirectional dual-routing encoder, a router that scores the encoder states
// and keeps the top `keep` fraction of each source, and a causal dual-routing decoder whose layers
// cross-attend only to the kept states (fewer keys than queries: the compute goes where the router
// says). The kept states are scaled by sigmoid(score), so the router learns through the weights
// it puts on them.
//
//   e = encoder(src);  s = router(e);  K = top ceil(keep * Se) positions of s (in source order)
//   ctx = e[K] * sigmoid(s[K]);  logits = decoder(tgt, ctx)
//
// Also the classification heads of both models (mean or last-token pooling).
import { ShapeError, DTypeError, ValueError, describe } from '../errors';
import { Generator } from '../random';
import { Tensor, tidy, keep } from '../tensor';
import { mul, sigmoid } from '../ops/elementwise';
import { expand, narrow, reshape, unsqueeze } from '../ops/shape';
import { mean } from '../ops/reduce';
import { crossEntropy } from '../ops/nn';
import { gather } from '../ops/indexing';
import { sort, topk } from '../ops/sort';
import { noGrad } from '../tape';
import { checkTensor } from '../ops/util';
import { Module } from '../nn/module';
import { Embedding, Linear, PendingResidual, RMSNorm, linear, pendingNorm } from '../nn/layers';
import { DualRouteLayer, DualRouteLM } from './dual_route_lm';
import { LayerConfig, ResolvedConfig, resolveConfig } from './config';

export interface DualRouteSeq2SeqConfig {
  vocabSize: number;
  dModel: number;
  nHeads: number;
  nKvHeads?: number;
  encoderLayers: number;
  decoderLayers: number;
  /** Longest source and target sequences. */
  maxSource: number;
  maxTarget: number;
  /** Fraction of each source's encoder states the decoder cross-attends to, in (0, 1]. Default 0.5. */
  keep?: number;
  /** Layer config of every encoder layer (bidirectional: local 'window' | 'conv' (odd kernel) | 'none', global 'full' | 'none'). */
  encoder?: LayerConfig;
  /** Layer config of every decoder layer (causal: any kind DualRouteLM takes). */
  decoder?: LayerConfig;
  rope?: boolean;
  ropeBase?: number;
  normEps?: number;
  dropout?: number;
  ffn?: 'swiglu' | 'gelu';
  ffnHidden?: number;
  seed?: number;
}

const KEYS = ['vocabSize', 'dModel', 'nHeads', 'nKvHeads', 'encoderLayers', 'decoderLayers', 'maxSource', 'maxTarget', 'keep', 'encoder', 'decoder', 'rope', 'ropeBase', 'normEps', 'dropout', 'ffn', 'ffnHidden', 'seed'];

function resolve(config: unknown): { enc: ResolvedConfig; dec: ResolvedConfig; keep: number } {
  if (config === null || typeof config !== 'object' || Array.isArray(config)) throw new ValueError(`DualRouteSeq2Seq config: Expected an object but received ${describe(config)}`);
  const c = config as Record<string, unknown>;
  for (const k of Object.keys(c)) if (!KEYS.includes(k)) throw new ValueError(`DualRouteSeq2Seq config: unknown key '${k}' (known: ${KEYS.join(', ')})`);
  const shared = { vocabSize: c.vocabSize, dModel: c.dModel, nHeads: c.nHeads, nKvHeads: c.nKvHeads, rope: c.rope, ropeBase: c.ropeBase, normEps: c.normEps, dropout: c.dropout, ffn: c.ffn, ffnHidden: c.ffnHidden, seed: c.seed };
  const strip = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
  // the shared checks name the field as DualRouteLM's do (encoder.* / decoder.* for the layers)
  const withPrefix = <T>(prefix: string, f: () => T): T => {
    try {
      return f();
    } catch (e) {
      if (e instanceof ValueError) throw new ValueError(e.message.replace('DualRouteLM config: ', `DualRouteSeq2Seq config: ${prefix}`));
      throw e;
    }
  };
  const enc = withPrefix('', () => resolveConfig(strip({ ...shared, nLayers: c.encoderLayers, maxSeq: c.maxSource, layer: c.encoder })));
  const dec = withPrefix('', () => resolveConfig(strip({ ...shared, nLayers: c.decoderLayers, maxSeq: c.maxTarget, layer: c.decoder })));
  for (const l of enc.layers) {
    if (l.global !== 'full' && l.global !== 'none') throw new ValueError(`DualRouteSeq2Seq config: encoder.global: Expected 'full' or 'none' (the encoder is bidirectional) but received '${l.global}'`);
    if (l.local === 'lstm') throw new ValueError(`DualRouteSeq2Seq config: encoder.local: Expected 'window', 'conv' or 'none' (an LSTM reads one way; the encoder is bidirectional) but received 'lstm'`);
    if (l.local === 'conv' && l.convKernel % 2 === 0) throw new ValueError(`DualRouteSeq2Seq config: encoder.convKernel: Expected an odd kernel (a centred convolution) but received ${l.convKernel}`);
  }
  const keepFrac = c.keep ?? 0.5;
  if (typeof keepFrac !== 'number' || !(keepFrac > 0 && keepFrac <= 1)) throw new ValueError(`DualRouteSeq2Seq config: keep: Expected a fraction in (0, 1] but received ${describe(c.keep)}`);
  return { enc, dec, keep: keepFrac };
}

function checkIds(name: string, ids: Tensor, max: number, what: string): void {
  checkTensor(ids, name, what);
  if (ids.dtype !== 'int32') throw new DTypeError(`${name}: Expected int32 ${what} but received ${describe(ids)}`);
  if (ids.ndim !== 2) throw new ShapeError(`${name}: Expected ${what} of shape [batch, seq] but received ${describe(ids)}`);
  if (ids.shape[1] > max) throw new ShapeError(`${name}: Expected at most ${max} positions in ${what} but received ${describe(ids)}`);
}

export class DualRouteSeq2Seq extends Module {
  readonly encoderConfig: ResolvedConfig;
  readonly decoderConfig: ResolvedConfig;
  readonly keep: number;
  /** The generator of the model's own draws (dropout, random routing). */
  readonly generator: Generator;
  /** The config as given (JSON), saved with the weights by saveModel. */
  readonly source: DualRouteSeq2SeqConfig;
  embed_tokens: Embedding;
  encoder: DualRouteLayer[];
  encoder_norm: RMSNorm;
  encoder_router: Linear;
  decoder: DualRouteLayer[];
  norm: RMSNorm;
  private lastKept: Tensor | null = null;

  constructor(config: DualRouteSeq2SeqConfig) {
    super();
    const r = resolve(config);
    this.source = JSON.parse(JSON.stringify(config));
    this.encoderConfig = r.enc;
    this.decoderConfig = r.dec;
    this.keep = r.keep;
    const c = r.enc;
    const g = (this.generator = new Generator(c.seed));
    const table = new Embedding(c.vocabSize, c.dModel, { generator: g });
    // shared by source, target and output: scaled as a projection
    this.embed_tokens = table;
    const w = table.weight;
    table.weight = this.param(() => noGrad(() => mul(w, 1 / Math.sqrt(c.dModel))));
    w.dispose();
    this.encoder = r.enc.layers.map((spec) => new DualRouteLayer(r.enc, spec, g, { causal: false }));
    this.encoder_norm = new RMSNorm(c.dModel, c.normEps);
    this.encoder_router = new Linear(c.dModel, 1, { generator: g });
    this.decoder = r.dec.layers.map((spec) => new DualRouteLayer(r.dec, spec, g, { cross: true }));
    this.norm = new RMSNorm(c.dModel, c.normEps);
  }

  /** Encoder states [batch, Se, dModel] of source ids [batch, Se]. */
  encode(src: Tensor): Tensor {
    checkIds('DualRouteSeq2Seq', src, this.encoderConfig.maxSeq, 'src');
    return tidy(() => {
      // layer boundaries in one pass each (DualRouteLayer.forwardPending), the last with the norm
      let h: Tensor | PendingResidual = this.embed_tokens.forward(src);
      for (const l of this.encoder) h = l.forwardPending(h, src);
      return pendingNorm(h, this.encoder_norm);
    });
  }

  /**
   * The router's choice: the kept states scaled by sigmoid(score), [batch, n, dModel], n =
   * ceil(keep * Se), in source order; their positions are kept for routing().
   */
  route(enc: Tensor): Tensor {
    const [B, Se, d] = enc.shape;
    this.lastKept?.dispose();
    let kept!: Tensor;
    const ctx = tidy(() => {
      const score = reshape(this.encoder_router.forward(enc), [B, Se]);
      const n = Math.max(1, Math.ceil(this.keep * Se));
      kept = keep(noGrad(() => sort(topk(score, n, { axis: 1 }).indices, { axis: 1 }).values));
      const w = sigmoid(gather(score, 1, kept));
      const rows = gather(enc, 1, expand(unsqueeze(kept, -1), [B, n, d]));
      return mul(rows, unsqueeze(w, -1));
    });
    this.lastKept = kept;
    return ctx;
  }

  /** Logits [batch, St, vocabSize] of target ids [batch, St] given source ids [batch, Se]. */
  forward(src: Tensor, tgt: Tensor): Tensor {
    checkIds('DualRouteSeq2Seq', tgt, this.decoderConfig.maxSeq, 'tgt');
    return tidy(() => {
      const ctx = this.route(this.encode(src));
      if (tgt.shape[0] !== src.shape[0]) throw new ShapeError(`DualRouteSeq2Seq: src and tgt must share the batch size (${src.shape[0]} vs ${tgt.shape[0]})`);
      let h: Tensor | PendingResidual = this.embed_tokens.forward(tgt);
      for (const l of this.decoder) h = l.forwardPending(h, tgt, ctx);
      return linear(pendingNorm(h, this.norm), this.embed_tokens.weight);
    });
  }

  /** Mean cross-entropy of the decoder's predictions of targets [batch, St] (ignoreIndex -100). */
  loss(src: Tensor, tgt: Tensor, targets: Tensor): Tensor {
    return tidy(() => crossEntropy(this.forward(src, tgt), targets));
  }

  /** The encoder positions the router kept in the last forward, per batch row. */
  keptPositions(): number[][] | null {
    if (!this.lastKept) return null;
    const [B, n] = this.lastKept.shape;
    const v = this.lastKept.dataSync();
    return Array.from({ length: B }, (_, b) => Array.from(v.slice(b * n, (b + 1) * n), Number));
  }

  dispose(): void {
    this.lastKept?.dispose();
    this.lastKept = null;
    super.dispose();
  }
}

/**
 * A classification head over a backbone's hidden states: mean pooling (over all positions) or
 * the last token's state, then a Linear to the classes. forward(ids) -> logits [batch, classes].
 */
export class DualRouteClassifier extends Module {
  head: Linear;
  constructor(readonly backbone: DualRouteLM | DualRouteSeq2Seq, readonly numClasses: number, readonly pooling: 'mean' | 'last' = 'mean') {
    super();
    if (!(backbone instanceof DualRouteLM) && !(backbone instanceof DualRouteSeq2Seq)) throw new ValueError(`DualRouteClassifier: Expected a DualRouteLM or DualRouteSeq2Seq backbone but received ${describe(backbone)}`);
    if (!Number.isInteger(numClasses) || numClasses < 1) throw new ValueError(`DualRouteClassifier: Expected a positive integer for numClasses but received ${describe(numClasses)}`);
    if (pooling !== 'mean' && pooling !== 'last') throw new ValueError(`DualRouteClassifier: Expected 'mean' or 'last' for pooling but received ${describe(pooling)}`);
    const d = backbone instanceof DualRouteLM ? backbone.config.dModel : backbone.encoderConfig.dModel;
    this.head = new Linear(d, numClasses, { generator: new Generator((backbone instanceof DualRouteLM ? backbone.config.seed : backbone.encoderConfig.seed) + 1) });
  }
  forward(ids: Tensor): Tensor {
    return tidy(() => {
      const h = this.backbone instanceof DualRouteLM ? this.backbone.hidden(ids) : this.backbone.encode(ids);
      const S = h.shape[1];
      const pooled = this.pooling === 'mean' ? mean(h, 1) : reshape(narrow(h, 1, S - 1, 1), [h.shape[0], h.shape[2]]);
      return this.head.forward(pooled);
    });
  }
}
