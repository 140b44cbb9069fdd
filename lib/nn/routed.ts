// RoutedAttention: the Mixture-of-Depths global path. A router scores every token; in training
// the top ceil(capacity * S) tokens of each sequence go through causal attention (against every
// earlier token's key), scaled by sigmoid(score) so that the router learns from the loss; the
// other tokens get 0 from this path (their local path carries them).
//
// Top-k over a sequence is not causal (a token's selection depends on later tokens), so it
// cannot decide at decode time. A small predictor beside the router, trained on the detached
// input to tell whether the router would pick a token (binary cross-entropy, predictorLoss()),
// decides in eval: a token is routed when its logit is > 0, whatever comes after it. The same
// rule serves a whole sequence in eval and one token at a time in a decode, so the two agree;
// routing() reports how often predictor and router agree in training.
import { ValueError, ShapeError, describe } from '../errors';
import { Tensor, tidy, keep } from '../tensor';
import { zeros } from '../ops/creation';
import { abs, add, exp, gt, log1p, logicalNot, mul, neg, relu, sigmoid, sub, eq } from '../ops/elementwise';
import { cast, expand, narrow, reshape, unsqueeze } from '../ops/shape';
import { mean, sum, max } from '../ops/reduce';
import { gather, scatterAdd } from '../ops/indexing';
import { sort, topk, argsort } from '../ops/sort';
import { noGrad } from '../tape';
import { checkTensor } from '../ops/util';
import { Module } from './module';
import { InitOptions, Linear } from './layers';
import { MultiheadAttention, MultiheadAttentionOptions } from './attention';

export interface RoutedAttentionOptions extends Omit<MultiheadAttentionOptions, 'kind' | 'window' | 'mode' | 'segment' | 'topK' | 'groupHeads' | 'dContext'> {
  /** Fraction of each sequence's tokens routed through attention in training, in (0, 1]. */
  capacity: number;
}

/** What the last forward routed. */
export interface RoutedStats {
  /** Fraction of tokens routed. */
  routed: number;
  /** Training: fraction of tokens where the predictor's choice (logit > 0) equals the router's top-k. */
  agreement: number | null;
}

export class RoutedAttention extends Module {
  router: Linear;
  predictor: Linear;
  attn: MultiheadAttention;
  readonly capacity: number;
  private last: { routed: Tensor; agreement: Tensor | null; predLoss: Tensor | null } | null = null;

  constructor(readonly dModel: number, readonly nHeads: number, options: RoutedAttentionOptions) {
    super();
    const name = 'RoutedAttention';
    if (options === null || typeof options !== 'object') throw new ValueError(`${name}: Expected an options object with capacity but received ${describe(options)}`);
    const { capacity, ...attn } = options;
    if (typeof capacity !== 'number' || !(capacity > 0 && capacity <= 1)) throw new ValueError(`${name}: Expected capacity in (0, 1] but received ${describe(capacity)}`);
    this.capacity = capacity;
    const init: InitOptions = { dtype: attn.dtype, device: attn.device, generator: attn.generator };
    this.router = new Linear(dModel, 1, init);
    this.predictor = new Linear(dModel, 1, init);
    this.attn = new MultiheadAttention(dModel, nHeads, { ...attn, kind: 'global', causal: true });
  }

  /** x [batch, S, dModel] -> [batch, S, dModel] (0 for tokens not routed). */
  forward(x: Tensor): Tensor {
    const name = 'RoutedAttention';
    checkTensor(x, name, 'x');
    if (x.ndim !== 3 || x.shape[2] !== this.dModel) throw new ShapeError(`${name}: Expected x of shape [batch, seq, ${this.dModel}] but received ${describe(x)}`);
    const [B, S, d] = x.shape;
    this.releaseRouting();
    const out = tidy(() => {
      const score = reshape(this.router.forward(x), [B, S]);
      const predLogit = reshape(this.predictor.forward(x.detach()), [B, S]);
      let qi: Tensor;
      let qc: Tensor | undefined;
      let member: Tensor;  // bool [B, S]: routed tokens
      if (this.training) {
        const n = Math.max(1, Math.ceil(this.capacity * S));
        // the chosen tokens in position order (the attention writes rows in this order)
        qi = noGrad(() => sort(topk(score, n, { axis: 1 }).indices, { axis: 1 }).values);
        member = noGrad(() => gt(scatterAdd(zeros([B, S], { dtype: 'int32', device: x.device }), 1, qi, zerosLikeInt(qi, 1)), 0));
        // binary cross-entropy of the predictor against the router's choice (stable form)
        const y = cast(member, predLogit.dtype);
        const bce = mean(add(sub(relu(predLogit), mul(predLogit, y)), log1p(exp(neg(abs(predLogit))))));
        const agree = mean(cast(eq(gt(predLogit, 0), member), 'float32'));
        this.last = { routed: keep(mean(cast(member, 'float32'))), agreement: keep(agree), predLoss: keep(bce) };
      } else {
        member = noGrad(() => gt(predLogit, 0));
        const counts = noGrad(() => sum(cast(member, 'int32'), 1));
        const widest = Math.max(1, noGrad(() => max(counts).item()));
        // a stable argsort of "not routed" lists each row's routed positions first, in order
        qi = noGrad(() => narrow(argsort(cast(logicalNot(member), 'int32'), { axis: 1 }), 1, 0, widest));
        qc = counts;
        this.last = { routed: keep(mean(cast(member, 'float32'))), agreement: null, predLoss: null };
      }
      const rows = this.attn.forward(x, { queryIndex: qi, queryCount: qc });  // [B, n, d]
      const w = sigmoid(gather(score, 1, qi));  // [B, n]
      // padding rows (r >= count, eval) point at a real position but their attention rows are 0
      const scaled = mul(rows, unsqueeze(w, -1));
      const idx = expand(unsqueeze(qi, -1), [B, qi.shape[1], d]);
      return scatterAdd(zeros([B, S, d], { dtype: x.dtype, device: x.device }), 1, idx, scaled);
    });
    return out;
  }

  /**
   * Which tokens of x [batch, S, dModel] forward routes through attention in the current mode:
   * bool [batch, S] (eval: the predictor's logit > 0; training: the router's top ceil(capacity * S)
   * of each row). Not differentiable (a choice); for inspection and plots.
   */
  routedMask(x: Tensor): Tensor {
    const name = 'RoutedAttention.routedMask';
    checkTensor(x, name, 'x');
    if (x.ndim !== 3 || x.shape[2] !== this.dModel) throw new ShapeError(`${name}: Expected x of shape [batch, seq, ${this.dModel}] but received ${describe(x)}`);
    const [B, S] = x.shape;
    return noGrad(() => tidy(() => {
      if (!this.training) return gt(reshape(this.predictor.forward(x), [B, S]), 0);
      const n = Math.max(1, Math.ceil(this.capacity * S));
      const qi = topk(reshape(this.router.forward(x), [B, S]), n, { axis: 1 }).indices;
      return gt(scatterAdd(zeros([B, S], { dtype: 'int32', device: x.device }), 1, qi, zerosLikeInt(qi, 1)), 0);
    }));
  }

  /**
   * The predictor's binary cross-entropy of the last training forward, to add to the loss (owned
   * by the module: freed at the next forward; null in eval).
   */
  predictorLoss(): Tensor | null {
    return this.last?.predLoss ?? null;
  }

  routing(): RoutedStats | null {
    if (!this.last) return null;
    return { routed: this.last.routed.item(), agreement: this.last.agreement ? this.last.agreement.item() : null };
  }

  releaseRouting(): void {
    if (!this.last) return;
    [this.last.routed, this.last.agreement, this.last.predLoss].forEach((t) => t?.dispose());
    this.last = null;
  }

  dispose(): void {
    this.releaseRouting();
    super.dispose();
  }
}

function zerosLikeInt(t: Tensor, v: number): Tensor {
  return add(zeros(t.shape.slice(), { dtype: 'int32', device: t.device }), v);
}
