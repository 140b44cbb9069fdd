// Attention layers: MultiheadAttention (projections, grouped-query heads, RoPE, global or local
// masks, self or cross attention), the pre-norm TransformerBlock, and positional embeddings.
// Parameter names follow Hugging Face's Llama where there is a counterpart (q_proj, k_proj,
// v_proj, o_proj; input_layernorm, post_attention_layernorm, mlp), so that weights map over
// by name (docs/weights.md).
import { ShapeError, ValueError, DTypeError, describe } from '../errors';
import { Tensor, tidy } from '../tensor';
import { arange } from '../ops/creation';
import { add, cos, exp, mul, sin } from '../ops/elementwise';
import { cast, concat, reshape, transpose, unsqueeze } from '../ops/shape';
import { globalAttention, localAttention, rope } from '../ops/attention';
import { segmentAttention, selectSegments } from '../ops/segment';
import { noGrad } from '../tape';
import { checkOptions, checkTensor } from '../ops/util';
import { Module } from './module';
import { Dropout, InitOptions, Linear, MLP, PendingResidual, RMSNorm, addAndNorm, addAndNormPending } from './layers';

function positiveInt(owner: string, name: string, v: unknown): number {
  if (!Number.isInteger(v) || (v as number) < 1) throw new ValueError(`${owner}: Expected a positive integer for ${name} but received ${describe(v)}`);
  return v as number;
}

export interface MultiheadAttentionOptions extends InitOptions {
  /** Key/value heads (grouped-query attention); divides nHeads. Default nHeads. */
  nKvHeads?: number;
  /** Width of each head. Default dModel / nHeads. */
  headDim?: number;
  /**
   * 'global' (every key, or every earlier key when causal), 'local' (a window) or 'segment'
   * (each query reads the keys of its topK best segments of `segment` keys: segmentAttention).
   * Default 'global'.
   */
  kind?: 'global' | 'local' | 'segment';
  /** kind 'segment': keys per segment and segments kept per query (its own included). */
  segment?: number;
  topK?: number;
  /** kind 'segment': the query heads of a kv head share one selection (as NSA). Default false. */
  groupHeads?: boolean;
  /** Keys after the query are invisible. Default true for self-attention, false for cross-attention. */
  causal?: boolean;
  /** Local attention: keys per query (sliding) or block length (block). */
  window?: number;
  mode?: 'sliding' | 'block';
  /** Rotary position embedding of queries and keys (self-attention only). Default true. */
  rope?: boolean;
  ropeBase?: number;
  /** Bias in the four projections. Default false (as Llama). */
  bias?: boolean;
  /** Cross-attention: keys and values come from a context of this width. */
  dContext?: number;
  /** Dropout on the output projection's result in training. Default 0. */
  dropout?: number;
}

export interface AttentionForwardOptions {
  /** Cross-attention: the states attended to, [batch, Sc, dContext]. */
  context?: Tensor;
  /** int32 [S] or [batch, S]: positions for RoPE. Default 0 .. S-1. */
  positions?: Tensor;
  /** bool [batch, Sk]: true marks a key as padding. */
  keyPaddingMask?: Tensor;
  /**
   * kind 'global': int32 [batch, n]: compute only these query rows (a router's choice), in this
   * order, against every (visible) key: the output is [batch, n, dModel].
   */
  queryIndex?: Tensor;
  /** int32 [batch], with queryIndex: the real rows of each batch row; the rest give 0. */
  queryCount?: Tensor;
}

/**
 * Multi-head attention: q, k, v projections, optional RoPE, the fused global or local attention
 * kernel, and the output projection. x [batch, S, dModel] -> [batch, S, dModel].
 */
export class MultiheadAttention extends Module {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  dropout: Dropout;
  readonly nKvHeads: number;
  readonly headDim: number;
  readonly kind: 'global' | 'local' | 'segment';
  readonly causal: boolean;
  readonly segment: number;
  readonly topK: number;
  readonly groupHeads: boolean;
  readonly window: number;
  readonly mode: 'sliding' | 'block';
  readonly useRope: boolean;
  readonly ropeBase: number;
  readonly cross: boolean;

  constructor(readonly dModel: number, readonly nHeads: number, options: MultiheadAttentionOptions = {}) {
    super();
    const name = 'MultiheadAttention';
    const o = checkOptions<MultiheadAttentionOptions>(options, name);
    positiveInt(name, 'dModel', dModel);
    positiveInt(name, 'nHeads', nHeads);
    this.nKvHeads = positiveInt(name, 'nKvHeads', o.nKvHeads ?? nHeads);
    if (nHeads % this.nKvHeads !== 0) throw new ValueError(`${name}: Expected nKvHeads dividing nHeads (${nHeads}) but received ${describe(o.nKvHeads)}`);
    if (o.headDim === undefined && dModel % nHeads !== 0) throw new ValueError(`${name}: dModel (${dModel}) is not a multiple of nHeads (${nHeads}); give headDim`);
    this.headDim = positiveInt(name, 'headDim', o.headDim ?? dModel / nHeads);
    this.kind = o.kind ?? 'global';
    if (this.kind !== 'global' && this.kind !== 'local' && this.kind !== 'segment') throw new ValueError(`${name}: Expected 'global', 'local' or 'segment' for kind but received ${describe(o.kind)}`);
    this.cross = o.dContext !== undefined;
    const dContext = this.cross ? positiveInt(name, 'dContext', o.dContext) : dModel;
    this.causal = o.causal ?? !this.cross;
    if (typeof this.causal !== 'boolean') throw new ValueError(`${name}: Expected a boolean for causal but received ${describe(o.causal)}`);
    this.mode = o.mode ?? 'sliding';
    if (this.mode !== 'sliding' && this.mode !== 'block') throw new ValueError(`${name}: Expected 'sliding' or 'block' for mode but received ${describe(o.mode)}`);
    this.window = this.kind === 'local' ? positiveInt(name, 'window', o.window) : 0;
    if (this.kind !== 'local' && o.window !== undefined) throw new ValueError(`${name}: window applies to kind 'local' only (kind is '${this.kind}')`);
    this.segment = this.kind === 'segment' ? positiveInt(name, 'segment', o.segment) : 0;
    this.topK = this.kind === 'segment' ? positiveInt(name, 'topK', o.topK) : 0;
    if (this.kind !== 'segment' && (o.segment !== undefined || o.topK !== undefined)) throw new ValueError(`${name}: segment and topK apply to kind 'segment' only (kind is '${this.kind}')`);
    this.groupHeads = o.groupHeads ?? false;
    if (typeof this.groupHeads !== 'boolean') throw new ValueError(`${name}: Expected a boolean for groupHeads but received ${describe(o.groupHeads)}`);
    if (this.kind === 'segment' && this.cross) throw new ValueError(`${name}: kind 'segment' is self-attention (dContext is set)`);
    this.useRope = o.rope ?? !this.cross;
    if (typeof this.useRope !== 'boolean') throw new ValueError(`${name}: Expected a boolean for rope but received ${describe(o.rope)}`);
    if (this.useRope && this.cross) throw new ValueError(`${name}: rope applies to self-attention only (dContext is set)`);
    if (this.useRope && this.headDim % 2 !== 0) throw new ValueError(`${name}: rope needs an even headDim but it is ${this.headDim}`);
    this.ropeBase = o.ropeBase ?? 10000;
    if (typeof this.ropeBase !== 'number' || !(this.ropeBase > 0) || !Number.isFinite(this.ropeBase)) throw new ValueError(`${name}: Expected a finite ropeBase > 0 but received ${describe(o.ropeBase)}`);
    const p = o.dropout ?? 0;
    const init = { dtype: o.dtype, device: o.device, generator: o.generator, bias: o.bias ?? false };
    this.q_proj = new Linear(dModel, nHeads * this.headDim, init);
    this.k_proj = new Linear(dContext, this.nKvHeads * this.headDim, init);
    this.v_proj = new Linear(dContext, this.nKvHeads * this.headDim, init);
    this.o_proj = new Linear(nHeads * this.headDim, dModel, init);
    this.dropout = new Dropout(p, o.generator);
  }

  // [B, S, H * hd] -> [B, H, S, hd]
  private heads(t: Tensor, H: number): Tensor {
    const [B, S] = t.shape;
    return transpose(reshape(t, [B, S, H, this.headDim]), 1, 2);
  }

  // the query heads of x and key heads of src, rotated at positions (default 0 .. S-1) when rope
  // is on (self-attention: the keys sit at the queries' positions)
  private projectQK(x: Tensor, src: Tensor, positions?: Tensor): { q: Tensor; k: Tensor } {
    let q = this.heads(this.q_proj.forward(x), this.nHeads);
    let k = this.heads(this.k_proj.forward(src), this.nKvHeads);
    if (this.useRope) {
      const pos = positions ?? arange(0, x.shape[1], 1, { dtype: 'int32', device: x.device });
      q = rope(q, pos, { base: this.ropeBase });
      k = rope(k, pos, { base: this.ropeBase });
    }
    return { q, k };
  }

  forward(x: Tensor, options: AttentionForwardOptions = {}): Tensor {
    const name = 'MultiheadAttention';
    const o = checkOptions<AttentionForwardOptions>(options, name);
    checkTensor(x, name, 'x');
    if (x.ndim !== 3 || x.shape[2] !== this.dModel) throw new ShapeError(`${name}: Expected x of shape [batch, seq, ${this.dModel}] but received ${describe(x)}`);
    const [B, S] = x.shape;
    let src = x;
    if (this.cross) {
      if (o.context === undefined) throw new ValueError(`${name}: cross-attention needs options.context [batch, Sc, ${this.k_proj.inFeatures}]`);
      const c = checkTensor(o.context, name, 'context');
      if (c.ndim !== 3 || c.shape[0] !== B || c.shape[2] !== this.k_proj.inFeatures) {
        throw new ShapeError(`${name}: Expected context of shape [${B}, Sc, ${this.k_proj.inFeatures}] but received ${describe(c)}`);
      }
      src = c;
    } else if (o.context !== undefined) {
      throw new ValueError(`${name}: context is for cross-attention (construct with dContext)`);
    }
    if ((o.queryIndex !== undefined || o.queryCount !== undefined) && this.kind !== 'global') {
      throw new ValueError(`${name}: queryIndex applies to kind 'global' only (kind is '${this.kind}')`);
    }
    return tidy(() => {
      if (o.positions !== undefined) checkTensor(o.positions, name, 'positions');
      const { q, k } = this.projectQK(x, src, o.positions);
      const v = this.heads(this.v_proj.forward(src), this.nKvHeads);
      const common = { causal: this.causal, keyPaddingMask: o.keyPaddingMask };
      let a: Tensor;
      if (this.kind === 'segment') {
        if (o.keyPaddingMask !== undefined) throw new ValueError(`${name}: kind 'segment' takes no keyPaddingMask`);
        a = segmentAttention(q, k, v, { segment: this.segment, topK: this.topK, causal: this.causal, groupHeads: this.groupHeads });
      } else if (this.kind === 'local') {
        a = localAttention(q, k, v, { ...common, window: this.window, mode: this.mode });
      } else {
        a = globalAttention(q, k, v, { ...common, queryIndex: o.queryIndex, queryCount: o.queryCount });
      }
      const merged = reshape(transpose(a, 1, 2), [B, a.shape[2], this.nHeads * this.headDim]);
      return this.dropout.forward(this.o_proj.forward(merged));
    });
  }

  /**
   * kind 'segment': the segments each query row of x [batch, S, dModel] reads, as forward selects
   * them (self-attention, positions 0 .. S-1): int32 [batch, nHeads, S, topK], the own segment
   * first, then by score, -1 padding. Not differentiable (a choice); for inspection and plots.
   */
  selectedSegments(x: Tensor): Tensor {
    const name = 'MultiheadAttention.selectedSegments';
    if (this.kind !== 'segment') throw new ValueError(`${name}: Expected a kind 'segment' attention but this one is kind '${this.kind}'`);
    checkTensor(x, name, 'x');
    if (x.ndim !== 3 || x.shape[2] !== this.dModel) throw new ShapeError(`${name}: Expected x of shape [batch, seq, ${this.dModel}] but received ${describe(x)}`);
    const S = x.shape[1];
    return noGrad(() => tidy(() => {
      const { q, k } = this.projectQK(x, x);
      const G = this.nHeads / this.nKvHeads;
      return selectSegments(q, k, { Sk: S, scale: 1 / Math.sqrt(this.headDim) }, { segment: this.segment, topK: this.topK, group: this.groupHeads ? G : 1, causal: this.causal, op: name });
    }));
  }
}

export interface TransformerBlockOptions extends MultiheadAttentionOptions {
  /** Hidden width of the feed-forward block. Default 4 dModel (gelu) or 8/3 dModel rounded (swiglu). */
  ffnHidden?: number;
  ffn?: 'swiglu' | 'gelu';
  normEps?: number;
}

/**
 * A pre-norm transformer block (as Llama): h = x + attn(norm(x)); out = h + mlp(norm(h)), with
 * RMSNorm, the attention of MultiheadAttention and a SwiGLU or GELU feed-forward block.
 */
export class TransformerBlock extends Module {
  input_layernorm: RMSNorm;
  self_attn: MultiheadAttention;
  post_attention_layernorm: RMSNorm;
  mlp: MLP;
  dropout: Dropout;

  constructor(readonly dModel: number, readonly nHeads: number, options: TransformerBlockOptions = {}) {
    super();
    const name = 'TransformerBlock';
    const o = checkOptions<TransformerBlockOptions>(options, name);
    const { ffnHidden, ffn, normEps, ...attn } = o;
    const kind = ffn ?? 'swiglu';
    if (kind !== 'swiglu' && kind !== 'gelu') throw new ValueError(`${name}: Expected 'swiglu' or 'gelu' for ffn but received ${describe(ffn)}`);
    positiveInt(name, 'dModel', dModel);
    const hidden = ffnHidden ?? (kind === 'gelu' ? 4 * dModel : Math.max(1, Math.round((8 * dModel) / 3)));
    positiveInt(name, 'ffnHidden', hidden);
    const eps = normEps ?? 1e-6;
    if (typeof eps !== 'number' || !(eps > 0)) throw new ValueError(`${name}: Expected normEps > 0 but received ${describe(normEps)}`);
    const init = { dtype: o.dtype, device: o.device, generator: o.generator };
    this.input_layernorm = new RMSNorm(dModel, eps, { dtype: o.dtype, device: o.device });
    this.self_attn = new MultiheadAttention(dModel, nHeads, attn);
    this.post_attention_layernorm = new RMSNorm(dModel, eps, { dtype: o.dtype, device: o.device });
    this.mlp = new MLP(dModel, hidden, kind, { ...init, bias: o.bias ?? false });
    this.dropout = new Dropout(o.dropout ?? 0, o.generator);
  }

  forward(x: Tensor, options: AttentionForwardOptions = {}): Tensor {
    return tidy(() => {
      const { h, r } = this.forwardPending(x, options);
      return add(h, r);
    });
  }

  /**
   * forward with the last residual add left pending: { h, r } with h + r = forward's output. To
   * chain blocks, pass it to the next block's forwardPending (or forward's x of a tensor), and the
   * last one's to pendingNorm for a final norm: the add then runs in the next norm's pass
   * (addAndNorm) instead of a pass of its own.
   */
  forwardPending(x: Tensor | PendingResidual, options: AttentionForwardOptions = {}): PendingResidual {
    return tidy(() => {
      const start = addAndNormPending(x, this.input_layernorm, 'TransformerBlock.forwardPending');
      const { h, y } = addAndNorm(start.h, this.self_attn.forward(start.y, options), this.post_attention_layernorm);
      return { h, r: this.dropout.forward(this.mlp.forward(y)) };
    });
  }
}

/**
 * The fixed sinusoidal position table of "Attention Is All You Need": pe[p, 2i] = sin(p w_i),
 * pe[p, 2i+1] = cos(p w_i), w_i = base^(-2i / dim). forward(positions int32 [...]) -> [..., dim]
 * (float32 unless dtype says otherwise); no parameters.
 */
export class SinusoidalPositionalEmbedding extends Module {
  constructor(readonly dim: number, readonly base = 10000, readonly dtype: 'float32' | 'float64' = 'float32') {
    super();
    positiveInt('SinusoidalPositionalEmbedding', 'dim', dim);
    if (dim % 2 !== 0) throw new ValueError(`SinusoidalPositionalEmbedding: Expected an even dim but received ${describe(dim)}`);
    if (typeof base !== 'number' || !(base > 0)) throw new ValueError(`SinusoidalPositionalEmbedding: Expected base > 0 but received ${describe(base)}`);
  }
  forward(positions: Tensor): Tensor {
    checkTensor(positions, 'SinusoidalPositionalEmbedding', 'positions');
    if (positions.dtype !== 'int32') throw new DTypeError(`SinusoidalPositionalEmbedding: Expected int32 positions but received ${describe(positions)}`);
    return tidy(() => {
      const half = this.dim / 2;
      const i = arange(0, half, 1, { dtype: this.dtype, device: positions.device });
      const w = exp(mul(i, (-2 * Math.log(this.base)) / this.dim));
      const p = unsqueeze(cast(positions, this.dtype), -1);
      const ang = mul(p, w);  // [..., half]
      const pair = concat([unsqueeze(sin(ang), -1), unsqueeze(cos(ang), -1)], -1);  // [..., half, 2]
      return reshape(pair, [...positions.shape, this.dim]);
    });
  }
}
