// DualRouteLM: a decoder-only language model whose layers each run a cheap local path and an
// expensive global path over the same normalised input and mix them by a router:
//
//   a = norm(x);  l = local(a);  g = global(a);  h = x + fuse(l, g | a, ids)
//   out = h + ffn(norm(h))                              (ffn: SwiGLU, GELU or a token-choice MoE)
//
// Stochastic depth (layerDrop) drops a layer's two residual branches per sample in training.
// Names follow Hugging Face's Llama where a part has a counterpart (embed_tokens, layers.N.
// input_layernorm, ..., norm, lm_head); the paths are layers.N.local.* and layers.N.global.*.
// After each forward every layer keeps its routing (mean gate per path, expert load) for logs,
// plots and the server: model.routing(). model.routingTrace(ids) runs one eval forward and
// reports the routing per layer and position of one row (lib/train/plots.ts draws it).
import { ShapeError, DTypeError, OutOfRangeError, ValueError, describe } from '../errors';
import { Generator } from '../random';
import { Tensor, tidy } from '../tensor';
import { add, mul } from '../ops/elementwise';
import { crossEntropy } from '../ops/nn';
import { Module } from '../nn/module';
import { Embedding, Linear, PendingResidual, RMSNorm, linear, pendingNorm } from '../nn/layers';
import { RoutedAttention } from '../nn/routed';
import { TokenChoiceMoE } from '../nn/routers';
import { DualRouteLMConfig, ResolvedConfig, resolveConfig } from './config';
import { GenerateOptions, GeneratedToken, generate, generateTokens } from './generate';
import { checkTensor } from '../ops/util';
import { noGrad } from '../tape';

import { ConvPath, DualRouteLayer, LSTMPath, LayerRouting, LayerTrace } from './layer';
import { DecodeCache } from './decode';
export { ConvPath, DualRouteLayer, LSTMPath };
export type { LayerRouting, LayerTrace };

/** Per-position routing of one text (DualRouteLM.routingTrace): its token ids and every layer's trace. */
export interface RoutingTrace {
  /** The token ids of the traced row, one per position. */
  tokens: number[];
  /** One entry per layer, in order. */
  layers: LayerTrace[];
}

/** Options of DualRouteLM.routingTrace. */
export interface RoutingTraceOptions {
  /** The batch row to report (default 0). */
  row?: number;
}

export interface LMOutput {
  /** [batch, seq, vocabSize] */
  logits: Tensor;
}

/** The decoder-only dual-routing language model (see the file's head and lib/models/config.ts). */
export class DualRouteLM extends Module {
  readonly config: ResolvedConfig;
  /** The generator of the model's own draws (dropout, random routing): saved with training checkpoints for an exact resume. */
  readonly generator: Generator;
  /** The config as given (JSON), saved with the weights by saveModel. */
  readonly source: DualRouteLMConfig;
  embed_tokens: Embedding;
  layers: DualRouteLayer[];
  norm: RMSNorm;
  lm_head: Linear | null;

  constructor(config: DualRouteLMConfig) {
    super();
    this.config = resolveConfig(config);
    this.source = JSON.parse(JSON.stringify(config));
    const c = this.config;
    const g = (this.generator = new Generator(c.seed));
    this.embed_tokens = new Embedding(c.vocabSize, c.dModel, { generator: g });
    // a tied table is used as the output projection too: scale it as a projection (N(0, 1/d))
    if (c.tieEmbeddings) {
      const w = this.embed_tokens.weight;
      this.embed_tokens.weight = this.param(() => noGrad(() => mul(w, 1 / Math.sqrt(c.dModel))));
      w.dispose();
    }
    this.layers = c.layers.map((spec) => new DualRouteLayer(c, spec, g));
    this.norm = new RMSNorm(c.dModel, c.normEps);
    this.lm_head = c.tieEmbeddings ? null : new Linear(c.dModel, c.vocabSize, { generator: g, bias: false });
  }

  private checkIds(ids: Tensor): void {
    checkTensor(ids, 'DualRouteLM', 'ids');
    if (ids.dtype !== 'int32') throw new DTypeError(`DualRouteLM: Expected int32 token ids but received ${describe(ids)}`);
    if (ids.ndim !== 2) throw new ShapeError(`DualRouteLM: Expected ids of shape [batch, seq] but received ${describe(ids)}`);
    if (ids.shape[1] > this.config.maxSeq) throw new ShapeError(`DualRouteLM: Expected at most maxSeq (${this.config.maxSeq}) positions but received ${describe(ids)}`);
  }

  /** The final normalised hidden states [batch, seq, dModel] (what a classification head pools). */
  hidden(ids: Tensor): Tensor {
    this.checkIds(ids);
    return tidy(() => {
      // each layer leaves its last residual add to the next norm (forwardPending): one pass per boundary
      let h: Tensor | PendingResidual = this.embed_tokens.forward(ids);
      for (const layer of this.layers) h = layer.forwardPending(h, ids);
      return pendingNorm(h, this.norm);
    });
  }

  /** Logits [batch, seq, vocabSize] for token ids int32 [batch, seq]. */
  forward(ids: Tensor): Tensor {
    return tidy(() => {
      const n = this.hidden(ids);
      return this.lm_head ? this.lm_head.forward(n) : linear(n, this.embed_tokens.weight);
    });
  }

  /**
   * Mean next-token cross-entropy of ids [batch, seq] against targets [batch, seq] (ignoreIndex
   * -100 skips a position), plus the MoE layers' auxiliary losses. Returns the total (to
   * differentiate, with the routed paths' predictor losses) and the language-model loss alone.
   */
  loss(ids: Tensor, targets: Tensor): { loss: Tensor; lmLoss: Tensor } {
    return tidy(() => {
      const logits = this.forward(ids);
      const lmLoss = crossEntropy(logits, targets);
      let loss = lmLoss;
      for (const l of this.layers) {
        if (l.mlp instanceof TokenChoiceMoE) loss = add(loss, l.mlp.auxLoss());
        const p = l.global instanceof RoutedAttention ? l.global.predictorLoss() : null;
        if (p) loss = add(loss, p);
      }
      return { loss, lmLoss };
    });
  }

  /** A cache for decoding `batch` rows token by token (lib/models/decode.ts); dispose it after. */
  decodeCache(batch = 1): DecodeCache {
    return new DecodeCache(this, batch);
  }

  /** Tokens one at a time: see generate() in lib/models/generate.ts. */
  generate(prompt: number[] | number[][], options: GenerateOptions = {}): AsyncGenerator<GeneratedToken> {
    return generate(this, prompt, options);
  }

  /** The generated tokens of each prompt, once all are done. */
  generateTokens(prompt: number[] | number[][], options: GenerateOptions = {}): Promise<number[][]> {
    return generateTokens(this, prompt, options);
  }

  /**
   * The routing of every layer at every position of one text: one forward of ids (int32 [1, S]
   * or [batch, S]) in eval mode without recording gradients (each module's training mode is
   * restored after), reported for batch row options.row (default 0): gates per path, routed
   * tokens, experts, NSA gates and chosen segments (see LayerTrace). Like any forward it
   * replaces what routing() reports, with this forward's (eval) routing.
   */
  routingTrace(ids: Tensor, options: RoutingTraceOptions = {}): RoutingTrace {
    const name = 'DualRouteLM.routingTrace';
    if (options === null || typeof options !== 'object') throw new ValueError(`${name}: Expected an options object { row? } but received ${describe(options)}`);
    this.checkIds(ids);
    const row = options.row ?? 0;
    if (!Number.isInteger(row) || row < 0 || row >= ids.shape[0]) throw new OutOfRangeError(`${name}: Expected options.row, an integer in [0, ${ids.shape[0]}) (the batch of ids), but received ${describe(options.row)}`);
    const modes = [...this.modules()].map((m) => [m, m.training] as const);
    this.eval();
    this.layers.forEach((l) => l.setTracing(true));
    try {
      return noGrad(() => {
        tidy(() => {
          this.hidden(ids);
        });
        const tokens = Array.from(ids.dataSync().subarray(row * ids.shape[1], (row + 1) * ids.shape[1]), Number);
        return { tokens, layers: this.layers.map((l) => l.routingTrace(row)) };
      });
    } finally {
      this.layers.forEach((l) => l.setTracing(false));
      for (const [m, t] of modes) m.training = t;
    }
  }

  /** Each layer's routing in the last forward. */
  routing(): LayerRouting[] {
    return this.layers.map((l) => l.routing());
  }
}
