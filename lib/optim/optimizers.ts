// Optimizers: SGD (momentum, Nesterov, weight decay) and AdamW (decoupled weight decay) with
// fused native update kernels, gradient clipping by global norm, and mixed precision: a
// bfloat16 parameter is updated through a float32 master copy kept by the optimizer.
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { Tensor, untracked } from '../tensor';
import { noGrad } from '../tape';
import { zeros } from '../ops/creation';
import { adamwStep, sgdStep } from '../ops/grad_kernels';
import { add, minimum, reciprocal, sqrt, square } from '../ops/elementwise';
import { sum } from '../ops/reduce';
import { cast, to } from '../ops/shape';
import { add_, copy_, mul_ } from '../ops/inplace';
import { checkOptions } from '../ops/util';

function checkParams(op: string, params: Tensor[]): Tensor[] {
  if (!Array.isArray(params) || params.length === 0) throw new ValueError(`${op}: Expected a non-empty array of parameters but received ${describe(params)}`);
  params.forEach((p, i) => {
    if (!(p instanceof Tensor)) throw new ValueError(`${op}: params[${i}] is ${describe(p)}, not a Tensor`);
    if (!p.requiresGrad) throw new ValueError(`${op}: params[${i}] does not require grad`);
  });
  return params;
}

function positive(op: string, name: string, v: number, allowZero = true): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (!allowZero && v === 0)) {
    throw new ValueError(`${op}: Expected a finite number ${allowZero ? '>= 0' : '> 0'} for ${name} but received ${describe(v)}`);
  }
  return v;
}

export interface OptimizerState {
  step: number;
  lr: number;
  /** Per-parameter state tensors, by parameter index and slot name. */
  slots: Record<string, Tensor>;
}

export abstract class Optimizer {
  readonly params: Tensor[];
  lr: number;
  /** Steps taken. */
  stepCount = 0;
  /** float32 master copies of bfloat16 parameters (mixed precision). */
  protected masters = new Map<number, Tensor>();

  constructor(op: string, params: Tensor[], lr: number) {
    if (typeof op !== 'string') throw new ValueError(`Optimizer: Expected a string for op but received ${describe(op)}`);
    this.params = checkParams(op, params);
    this.lr = positive(op, 'lr', lr);
  }

  /** Clears the gradients of every parameter. */
  zeroGrad(): void {
    for (const p of this.params) {
      if (p.grad) {
        p.grad.dispose();
        p.grad = null;
      }
    }
  }

  /** Applies one update from the current gradients (parameters without a gradient are skipped). */
  step(options: { gradScale?: number } = {}): void {
    options = checkOptions(options, `${this.constructor.name}.step`);
    const scale = options.gradScale ?? 1;
    noGrad(() =>
      untracked(() => {
        this.stepCount += 1;
        this.params.forEach((p, i) => {
          if (!p.grad) return;
          if (!(p.grad instanceof Tensor) || p.grad.isDisposed) throw new ValueError(`step: params[${i}].grad is ${describe(p.grad)}, not a live Tensor`);
          if (p.grad.shape.length !== p.shape.length || p.grad.shape.some((d, k) => d !== p.shape[k])) {
            throw new ShapeError(`step: params[${i}] has shape [${p.shape.join(', ')}] but its grad [${p.grad.shape.join(', ')}]`);
          }
          const target = this.master(i);
          this.update(i, target, p.grad, scale);
          if (target !== p) copy_(p, target); // master -> bfloat16
        });
      }),
    );
  }

  // The tensor the update is applied to: the parameter, or its float32 master copy when the
  // parameter is bfloat16. A parameter moved or cast since (Module.to keeps its identity) takes
  // its master along, or drops it when it is no longer bfloat16.
  protected master(i: number): Tensor {
    const p = this.params[i];
    let m = this.masters.get(i);
    if (p.dtype !== 'bfloat16') {
      if (m) {
        m.dispose();
        this.masters.delete(i);
      }
      return p;
    }
    if (m && m.device !== p.device) {
      const moved = to(m, p.device);
      m.dispose();
      this.masters.set(i, (m = moved));
    }
    if (!m) {
      m = to(p, 'float32');
      this.masters.set(i, m);
    }
    return m;
  }

  // Per-parameter state of the update target's shape, dtype and device (state made before the
  // parameter was moved or cast follows it).
  protected slot(name: string, i: number, like: Tensor, store: Map<number, Tensor>): Tensor {
    let t = store.get(i);
    if (t && (t.device !== like.device || t.dtype !== like.dtype)) {
      const moved = untracked(() => to(t!, { device: like.device, dtype: like.dtype }));
      t.dispose();
      store.set(i, (t = moved));
    }
    if (!t) {
      t = untracked(() => zeros(like.shape.slice(), { dtype: like.dtype, device: like.device }));
      store.set(i, t);
    }
    return t;
  }

  protected abstract update(i: number, param: Tensor, grad: Tensor, gradScale: number): void;
  protected abstract slotStores(): Record<string, Map<number, Tensor>>;

  /** Step count, lr and every state tensor (aliases), for checkpoints. */
  stateDict(): OptimizerState {
    const slots: Record<string, Tensor> = {};
    const stores = { ...this.slotStores(), master: this.masters };
    for (const [name, store] of Object.entries(stores)) {
      for (const [i, t] of store) slots[`${i}.${name}`] = untracked(() => t.alias());
    }
    return { step: this.stepCount, lr: this.lr, slots };
  }

  /** Restores a stateDict() (values are copied into fresh tensors). */
  loadStateDict(state: OptimizerState): void {
    if (!state || typeof state !== 'object') throw new ValueError(`loadStateDict: Expected an optimizer state {step, lr, slots} but received ${describe(state)}`);
    if (!Number.isInteger(state.step) || state.step < 0) throw new ValueError(`loadStateDict: Expected an integer step >= 0 but received ${describe(state.step)}`);
    positive('loadStateDict', 'lr', state.lr);
    if (!state.slots || typeof state.slots !== 'object') throw new ValueError(`loadStateDict: Expected an object of state tensors for slots but received ${describe(state.slots)}`);
    for (const [key, t] of Object.entries(state.slots)) {
      if (!(t instanceof Tensor) || t.isDisposed) throw new ValueError(`loadStateDict: Expected a live Tensor for slot ${key} but received ${describe(t)}`);
    }
    this.stepCount = state.step;
    this.lr = state.lr;
    const stores = { ...this.slotStores(), master: this.masters };
    for (const store of Object.values(stores)) {
      for (const t of store.values()) t.dispose();
      store.clear();
    }
    for (const [key, t] of Object.entries(state.slots)) {
      const dot = key.indexOf('.');
      const i = Number(key.slice(0, dot));
      const name = key.slice(dot + 1);
      const store = (stores as Record<string, Map<number, Tensor>>)[name];
      if (!store || !Number.isInteger(i) || i < 0 || i >= this.params.length) throw new ValueError(`loadStateDict: unexpected optimizer state key ${key}`);
      const p = this.params[i];
      if (t.shape.length !== p.shape.length || t.shape.some((d, k) => d !== p.shape[k])) {
        throw new ValueError(`loadStateDict: state ${key} has shape [${t.shape.join(', ')}], parameter ${i} [${p.shape.join(', ')}]`);
      }
      store.set(i, untracked(() => t.to({ device: p.device }).contiguous()));
    }
  }

  /** Frees the optimizer's state tensors. */
  dispose(): void {
    for (const store of Object.values({ ...this.slotStores(), master: this.masters })) {
      for (const t of store.values()) t.dispose();
      store.clear();
    }
  }
}

export interface SGDOptions {
  lr: number;
  momentum?: number;
  dampening?: number;
  weightDecay?: number;
  nesterov?: boolean;
}

/** SGD as in PyTorch: g += wd p; buf = momentum buf + (1 - dampening) g; p -= lr (nesterov ? g + momentum buf : buf). */
export class SGD extends Optimizer {
  momentum: number;
  dampening: number;
  weightDecay: number;
  nesterov: boolean;
  private bufs = new Map<number, Tensor>();
  constructor(params: Tensor[], options: SGDOptions) {
    super('SGD', params, checkOptions<SGDOptions>(options, 'SGD').lr);
    this.momentum = positive('SGD', 'momentum', options.momentum ?? 0);
    this.dampening = positive('SGD', 'dampening', options.dampening ?? 0);
    this.weightDecay = positive('SGD', 'weightDecay', options.weightDecay ?? 0);
    this.nesterov = !!options.nesterov;
    if (this.nesterov && (this.momentum === 0 || this.dampening !== 0)) throw new ValueError('SGD: nesterov needs momentum > 0 and dampening 0');
  }
  protected slotStores() {
    return { momentum: this.bufs };
  }
  protected update(i: number, p: Tensor, g: Tensor, gradScale: number): void {
    const first = !this.bufs.has(i);
    const buf = this.momentum ? this.slot('momentum', i, p, this.bufs) : null;
    sgdStep(p, g, buf, { lr: this.lr, momentum: this.momentum, dampening: this.dampening, weightDecay: this.weightDecay, nesterov: this.nesterov, gradScale, firstStep: first });
  }
}

export interface AdamWOptions {
  lr: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

/** AdamW (Loshchilov & Hutter): decoupled weight decay, bias-corrected moments, one fused kernel per parameter. */
export class AdamW extends Optimizer {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  private m = new Map<number, Tensor>();
  private v = new Map<number, Tensor>();
  constructor(params: Tensor[], options: AdamWOptions) {
    super('AdamW', params, checkOptions<AdamWOptions>(options, 'AdamW').lr);
    const [b1, b2] = options.betas ?? [0.9, 0.999];
    if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1)) throw new ValueError(`AdamW: Expected betas in [0, 1) but received ${describe(options.betas)}`);
    this.beta1 = b1;
    this.beta2 = b2;
    this.eps = positive('AdamW', 'eps', options.eps ?? 1e-8, false);
    this.weightDecay = positive('AdamW', 'weightDecay', options.weightDecay ?? 0.01);
    for (const p of this.params) {
      if (p.dtype !== 'float32' && p.dtype !== 'float64' && p.dtype !== 'bfloat16') throw new DTypeError(`AdamW: parameters must be float, got ${p.dtype}`);
    }
  }
  protected slotStores() {
    return { expAvg: this.m, expAvgSq: this.v };
  }
  protected update(i: number, p: Tensor, g: Tensor, gradScale: number): void {
    const m = this.slot('expAvg', i, p, this.m);
    const v = this.slot('expAvgSq', i, p, this.v);
    adamwStep(p, g, m, v, { lr: this.lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, weightDecay: this.weightDecay, step: this.stepCount, gradScale });
  }
}

/**
 * Scales the gradients in place so their global L2 norm is at most maxNorm, and returns the
 * norm before clipping as a scalar tensor (float32; float64 when a gradient is), as PyTorch's
 * clip_grad_norm_ does. Everything stays on the device: nothing waits for the computation (read
 * the norm with `await norm.item()` ... or `dataSync()` when you need it). Parameters without
 * gradients are skipped.
 */
export function clipGradNorm(params: Tensor[], maxNorm: number): Tensor {
  if (!Array.isArray(params) || params.some((p) => !(p instanceof Tensor))) throw new ValueError(`clipGradNorm: Expected an array of tensors for params but received ${describe(params)}`);
  positive('clipGradNorm', 'maxNorm', maxNorm);
  return noGrad(() => {
    const grads = params.map((p) => p.grad).filter((g): g is Tensor => !!g);
    const acc = grads.some((g) => g.dtype === 'float64') ? 'float64' : 'float32';
    const device = grads.length ? grads[0].device : undefined;
    const total = zeros([], { dtype: acc, device });
    for (const g of grads) {
      const g32 = g.dtype === acc ? g : cast(g, acc);
      const sq = square(g32);
      const s = sum(sq);
      add_(total, s);
      [sq, s].forEach((t) => t.dispose());
      if (g32 !== g) g32.dispose();
    }
    const norm = sqrt(total);
    total.dispose();
    // coef = min(maxNorm / (norm + 1e-6), 1): multiplying by it is a no-op below the limit
    const denom = add(norm, 1e-6);
    const ratio = reciprocal(denom);
    const coef = minimum(mul_(ratio, maxNorm), 1);
    for (const g of grads) mul_(g, coef);
    [denom, ratio, coef].forEach((t) => t.dispose());
    return norm;
  });
}
