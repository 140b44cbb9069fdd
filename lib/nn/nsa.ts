// NSAAttention: the three branches of DeepSeek's Native Sparse Attention over shared q, k, v
// projections, mixed per token by three independent sigmoid gates:
//   compressed: attention over the per-segment mean keys and values (whole segments before the query)
//   selected:   token-level attention over the keys of each query's topK segments, one selection
//               per kv head (the group's scores summed), for ANY group size (NSA's kernels want 16)
//   sliding:    a sliding window of the last `window` keys
// out = o_proj(sum_b gate_b * branch_b), gates = sigmoid(Linear(x)) per token.
import { ShapeError, ValueError, describe } from '../errors';
import { Tensor, keep, tidy } from '../tensor';
import { arange } from '../ops/creation';
import { reshape, transpose } from '../ops/shape';
import { localAttention, rope } from '../ops/attention';
import { compressedAttention, segmentAttention, selectSegments } from '../ops/segment';
import { noGrad } from '../tape';
import { checkTensor } from '../ops/util';
import { Module } from './module';
import { InitOptions, Linear } from './layers';
import { SigmoidGates, mixPaths } from './routers';

export interface NSAAttentionOptions extends InitOptions {
  nKvHeads?: number;
  /** Keys per segment (compression block and selection block alike). */
  segment: number;
  /** Segments each query reads in the selected branch (its own included). */
  topK: number;
  /** Keys of the sliding branch. */
  window: number;
  rope?: boolean;
  ropeBase?: number;
}

export class NSAAttention extends Module {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  gate: SigmoidGates;
  readonly nKvHeads: number;
  readonly headDim: number;
  readonly segment: number;
  readonly topK: number;
  readonly window: number;
  readonly useRope: boolean;
  readonly ropeBase: number;
  private lastGates: Tensor | null = null;

  constructor(readonly dModel: number, readonly nHeads: number, options: NSAAttentionOptions) {
    super();
    const name = 'NSAAttention';
    if (options === null || typeof options !== 'object') throw new ValueError(`${name}: Expected an options object {segment, topK, window} but received ${describe(options)}`);
    const int = (n: string, v: unknown): number => {
      if (!Number.isInteger(v) || (v as number) < 1) throw new ValueError(`${name}: Expected a positive integer for ${n} but received ${describe(v)}`);
      return v as number;
    };
    int('dModel', dModel);
    int('nHeads', nHeads);
    this.nKvHeads = int('nKvHeads', options.nKvHeads ?? nHeads);
    if (nHeads % this.nKvHeads !== 0) throw new ValueError(`${name}: Expected nKvHeads dividing nHeads (${nHeads}) but received ${describe(options.nKvHeads)}`);
    if (dModel % nHeads !== 0) throw new ValueError(`${name}: dModel (${dModel}) is not a multiple of nHeads (${nHeads})`);
    this.headDim = dModel / nHeads;
    this.segment = int('segment', options.segment);
    this.topK = int('topK', options.topK);
    this.window = int('window', options.window);
    this.useRope = options.rope ?? true;
    if (this.useRope && this.headDim % 2 !== 0) throw new ValueError(`${name}: rope needs an even head width but it is ${this.headDim}`);
    this.ropeBase = options.ropeBase ?? 10000;
    const init = { dtype: options.dtype, device: options.device, generator: options.generator, bias: false };
    this.q_proj = new Linear(dModel, dModel, init);
    this.k_proj = new Linear(dModel, this.nKvHeads * this.headDim, init);
    this.v_proj = new Linear(dModel, this.nKvHeads * this.headDim, init);
    this.o_proj = new Linear(dModel, dModel, init);
    this.gate = new SigmoidGates(dModel, 3, { dtype: options.dtype, device: options.device, generator: options.generator });
  }

  private heads(t: Tensor, H: number): Tensor {
    const [B, S] = t.shape;
    return transpose(reshape(t, [B, S, H, this.headDim]), 1, 2);
  }

  // the query and key heads of x, rotated at positions 0 .. S-1 when rope is on
  private projectQK(x: Tensor): { q: Tensor; k: Tensor } {
    let q = this.heads(this.q_proj.forward(x), this.nHeads);
    let k = this.heads(this.k_proj.forward(x), this.nKvHeads);
    if (this.useRope) {
      const pos = arange(0, x.shape[1], 1, { dtype: 'int32', device: x.device });
      q = rope(q, pos, { base: this.ropeBase });
      k = rope(k, pos, { base: this.ropeBase });
    }
    return { q, k };
  }

  /** x [batch, S, dModel] -> [batch, S, dModel] (causal). */
  forward(x: Tensor): Tensor {
    const name = 'NSAAttention';
    checkTensor(x, name, 'x');
    if (x.ndim !== 3 || x.shape[2] !== this.dModel) throw new ShapeError(`${name}: Expected x of shape [batch, seq, ${this.dModel}] but received ${describe(x)}`);
    const [B, S] = x.shape;
    this.lastGates?.dispose();
    this.lastGates = null;
    let gates!: Tensor;
    const out = tidy(() => {
      const { q, k } = this.projectQK(x);
      const v = this.heads(this.v_proj.forward(x), this.nKvHeads);
      const merge = (a: Tensor) => reshape(transpose(a, 1, 2), [B, S, this.dModel]);
      const cmp = merge(compressedAttention(q, k, v, { segment: this.segment }));
      const sel = merge(segmentAttention(q, k, v, { segment: this.segment, topK: this.topK, groupHeads: true }));
      const win = merge(localAttention(q, k, v, { window: this.window, causal: true }));
      gates = keep(this.gate.forward(x));
      return this.o_proj.forward(mixPaths([cmp, sel, win], gates));
    });
    this.lastGates = gates;
    return out;
  }

  /**
   * The segments each query row of x [batch, S, dModel] reads in the selected branch, as forward
   * selects them (one selection per kv head, shared by its query heads): int32 [batch, nHeads, S,
   * topK], the own segment first, then by score, -1 padding. Not differentiable (a choice).
   */
  selectedSegments(x: Tensor): Tensor {
    const name = 'NSAAttention.selectedSegments';
    checkTensor(x, name, 'x');
    if (x.ndim !== 3 || x.shape[2] !== this.dModel) throw new ShapeError(`${name}: Expected x of shape [batch, seq, ${this.dModel}] but received ${describe(x)}`);
    const S = x.shape[1];
    return noGrad(() => tidy(() => {
      const { q, k } = this.projectQK(x);
      return selectSegments(q, k, { Sk: S, scale: 1 / Math.sqrt(this.headDim) }, { segment: this.segment, topK: this.topK, group: this.nHeads / this.nKvHeads, causal: true, op: name });
    }));
  }

  /** Mean gate of (compressed, selected, sliding) in the last forward. */
  routing(): [number, number, number] | null {
    if (!this.lastGates) return null;
    const g = this.lastGates.dataSync();
    const m = [0, 0, 0];
    for (let i = 0; i < g.length; ++i) m[i % 3] += g[i] / (g.length / 3);
    return [m[0], m[1], m[2]];
  }

  dispose(): void {
    this.lastGates?.dispose();
    this.lastGates = null;
    super.dispose();
  }
}
