// Layers. Initialisation follows PyTorch's defaults and draws from a Generator (the default
// one unless options.generator is given), so a seed fixes the whole model.
import { DType } from '../dtype';
import { Device } from '../device';
import { ValueError, ShapeError, describe } from '../errors';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import { rand, randn, zeros, ones } from '../ops/creation';
import { add, gelu, lt, mul, where } from '../ops/elementwise';
import { matmul } from '../ops/linalg';
import { layerNorm, rmsNorm, swiglu } from '../ops/nn';
import { addRmsNorm, biasAct } from '../ops/fused';
import { isFloat } from '../dtype';
import { embedding } from '../ops/indexing';
import { contiguous, reshape, view } from '../ops/shape';
import { needsGrad } from '../tape';
import { Module } from './module';
import { checkOptions, checkTensor } from '../ops/util';

export interface InitOptions {
  dtype?: DType;
  device?: Device;
  generator?: Generator;
}

// x unchanged as a new tensor that stays on the autograd tape (alias() would detach it: an
// identity Dropout in eval, or p = 0, must still pass gradients through).
function identity(x: Tensor): Tensor {
  return x.isContiguous ? view(x, x.shape.slice()) : contiguous(x);
}

function checkDim(name: string, v: unknown): number {
  if (!Number.isInteger(v) || (v as number) <= 0) throw new ValueError(`Expected a positive integer for ${name} but received ${describe(v)}`);
  return v as number;
}

/** y = x W^T + b with W [outFeatures, inFeatures]; W and b ~ U(-1/sqrt(in), 1/sqrt(in)). */
export class Linear extends Module {
  weight: Tensor;
  bias: Tensor | null;
  constructor(readonly inFeatures: number, readonly outFeatures: number, options: InitOptions & { bias?: boolean } = {}) {
    super();
    options = checkOptions(options, 'Linear');
    checkDim('inFeatures', inFeatures);
    checkDim('outFeatures', outFeatures);
    const k = 1 / Math.sqrt(inFeatures);
    const o = { dtype: options.dtype, device: options.device, generator: options.generator, low: -k, high: k };
    this.weight = this.param(() => rand([outFeatures, inFeatures], o));
    this.bias = options.bias === false ? null : this.param(() => rand([outFeatures], o));
  }
  forward(x: Tensor): Tensor {
    checkTensor(x, `Linear(${this.inFeatures}, ${this.outFeatures})`, 'x');
    if (x.shape[x.ndim - 1] !== this.inFeatures) {
      throw new ShapeError(`Linear(${this.inFeatures}, ${this.outFeatures}): Expected input with last dimension ${this.inFeatures} but received ${describe(x)}`);
    }
    return linear(x, this.weight, this.bias);
  }
}

/**
 * x W^T (+ b) for x [..., in] and W [out, in]. When W's gradient is recorded, a contiguous x of
 * three or more dimensions goes through as the 2-D [rows, in] it is in memory (a view), so that
 * the backward computes W's gradient as one [out, rows] x [rows, in] product instead of a product
 * per leading index and a sum over them (matmul's rule for a broadcast operand).
 */
export function linear(x: Tensor, w: Tensor, b: Tensor | null = null): Tensor {
  const flat = x.ndim > 2 && x.isContiguous && needsGrad(w, b);
  const x2 = flat ? reshape(x, [-1, x.shape[x.ndim - 1]]) : x;
  let y = matmul(x2, w, { transB: true });
  if (flat) x2.dispose();
  if (b) {
    const yb = add(y, b);
    y.dispose();
    y = yb;
  }
  if (!flat) return y;
  try {
    return reshape(y, [...x.shape.slice(0, -1), w.shape[0]]);
  } finally {
    y.dispose();
  }
}

/** A lookup table [numEmbeddings, dim] ~ N(0, 1). */
export class Embedding extends Module {
  weight: Tensor;
  constructor(readonly numEmbeddings: number, readonly dim: number, options: InitOptions = {}) {
    super();
    options = checkOptions(options, 'Embedding');
    checkDim('numEmbeddings', numEmbeddings);
    checkDim('dim', dim);
    this.weight = this.param(() => randn([numEmbeddings, dim], options));
  }
  forward(ids: Tensor): Tensor {
    return embedding(ids, this.weight);
  }
}

export class RMSNorm extends Module {
  weight: Tensor;
  constructor(readonly dim: number, readonly eps = 1e-6, options: InitOptions = {}) {
    super();
    options = checkOptions(options, 'RMSNorm');
    checkDim('dim', dim);
    this.weight = this.param(() => ones([dim], options));
  }
  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/**
 * The residual add and the RMSNorm that follows it: h = x + residual (the new residual stream)
 * and y = norm(h), in one pass (addRmsNorm with norm's weight and eps) when x, residual and the
 * norm's weight share dtype and device and x and residual one shape; otherwise add then norm.
 * Both ways give the same values (to float rounding) and gradients.
 */
export function addAndNorm(x: Tensor, residual: Tensor, norm: RMSNorm): { h: Tensor; y: Tensor } {
  checkTensor(x, 'addAndNorm', 'x');
  checkTensor(residual, 'addAndNorm', 'residual');
  if (!(norm instanceof RMSNorm)) throw new ValueError(`addAndNorm: Expected an RMSNorm for norm but received ${describe(norm)}`);
  const w = norm.weight;
  if (isFloat(x.dtype) && x.ndim > 0 && x.dtype === residual.dtype && x.dtype === w.dtype && x.device === residual.device &&
      x.device === w.device && sameShape(x.shape, residual.shape) && x.shape[x.ndim - 1] === norm.dim) {
    return addRmsNorm(x, residual, w, norm.eps);
  }
  const h = add(x, residual);
  try {
    return { h, y: norm.forward(h) };
  } catch (e) {
    h.dispose();
    throw e;
  }
}

/**
 * A block's output with its last residual add not yet done (DualRouteLayer.forwardPending,
 * TransformerBlock.forwardPending): the output is h + r, which the next norm computes in its own
 * pass (addAndNormPending, pendingNorm) instead of an add, then a norm reading the sum.
 */
export interface PendingResidual {
  /** The residual stream before the block's last branch. */
  h: Tensor;
  /** The last branch (after dropout and the like), still to be added to h. */
  r: Tensor;
}

// x as a pending input: a tensor or { h, r } (two tensors), and norm an RMSNorm; else a typed error
function checkPending(x: unknown, norm: unknown, name: string): Tensor | PendingResidual {
  if (!(norm instanceof RMSNorm)) throw new ValueError(`${name}: Expected an RMSNorm for norm but received ${describe(norm)}`);
  if (x instanceof Tensor) return x;
  if (x !== null && typeof x === 'object' && (x as PendingResidual).h instanceof Tensor && (x as PendingResidual).r instanceof Tensor) return x as PendingResidual;
  throw new ValueError(`${name}: Expected a tensor or a pending residual { h, r } (two tensors) but received ${describe(x)}`);
}

/**
 * A block's input: the residual stream h and its normalisation y. Of a tensor x: h = x itself
 * and y = norm(x); of a pending { h, r }: addAndNorm(h, r, norm), the sum and its norm in one pass.
 */
export function addAndNormPending(x: Tensor | PendingResidual, norm: RMSNorm, name = 'addAndNormPending'): { h: Tensor; y: Tensor } {
  const input = checkPending(x, norm, typeof name === 'string' ? name : 'addAndNormPending');
  return input instanceof Tensor ? { h: input, y: norm.forward(input) } : addAndNorm(input.h, input.r, norm);
}

/**
 * norm(h + r) of a pending residual (norm(x) of a tensor) in one pass: a model's final norm
 * after its last block's forwardPending. The sum itself is not returned (freed at once).
 */
export function pendingNorm(x: Tensor | PendingResidual, norm: RMSNorm): Tensor {
  const input = checkPending(x, norm, 'pendingNorm');
  if (input instanceof Tensor) return norm.forward(input);
  const { h, y } = addAndNorm(input.h, input.r, norm);
  h.dispose();  // the stream ends here; the tape keeps what y's backward needs
  return y;
}

export class LayerNorm extends Module {
  weight: Tensor;
  bias: Tensor;
  constructor(readonly dim: number, readonly eps = 1e-5, options: InitOptions = {}) {
    super();
    options = checkOptions(options, 'LayerNorm');
    checkDim('dim', dim);
    this.weight = this.param(() => ones([dim], options));
    this.bias = this.param(() => zeros([dim], options));
  }
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}

/** Zeroes elements with probability p in training (scaling the rest by 1/(1-p)); identity in eval. */
export class Dropout extends Module {
  constructor(readonly p = 0.5, readonly generator?: Generator) {
    super();
    if (typeof p !== 'number' || !(p >= 0 && p < 1)) throw new ValueError(`Dropout: Expected p in [0, 1) but received ${describe(p)}`);
  }
  forward(x: Tensor): Tensor {
    checkTensor(x, 'Dropout', 'x');
    if (!this.training || this.p === 0) return identity(x);
    const u = rand(x.shape.slice(), { device: x.device, generator: this.generator });
    const keep = lt(u, 1 - this.p);
    u.dispose();
    try {
      const scaled = mul(x, 1 / (1 - this.p));
      try {
        return where(keep, scaled, 0);
      } finally {
        scaled.dispose();
      }
    } finally {
      keep.dispose();
    }
  }
}

/** Runs modules in order. */
export class Sequential extends Module {
  layers: Module[];
  constructor(...layers: Module[]) {
    super();
    this.layers = layers;
  }
  forward(x: Tensor): Tensor {
    let cur = x;
    for (const m of this.layers) {
      const next = m.forward(cur) as Tensor;
      if (cur !== x) cur.dispose();
      cur = next;
    }
    return cur === x ? identity(x) : cur;
  }
}

/**
 * A feed-forward block: activation 'gelu' gives down(gelu(up(x))); 'swiglu' gives
 * down(silu(gate(x)) * up(x)) with gate and up fused in one [2 hidden, dim] projection.
 */
export class MLP extends Module {
  up: Linear;
  down: Linear;
  constructor(readonly dim: number, readonly hidden: number, readonly activation: 'gelu' | 'swiglu' = 'gelu', options: InitOptions & { bias?: boolean } = {}) {
    super();
    options = checkOptions(options, 'MLP');
    if (activation !== 'gelu' && activation !== 'swiglu') throw new ValueError(`MLP: Expected 'gelu' or 'swiglu' for activation but received ${describe(activation)}`);
    this.up = new Linear(dim, activation === 'swiglu' ? 2 * hidden : hidden, options);
    this.down = new Linear(hidden, dim, options);
  }
  forward(x: Tensor): Tensor {
    const a = this.activation === 'gelu' && this.up.bias ? mlpUpGelu(this.up, x) : mlpUpAct(this.up, this.activation, x);
    try {
      return this.down.forward(a);
    } finally {
      a.dispose();
    }
  }
}

function mlpUpAct(up: Linear, activation: 'gelu' | 'swiglu', x: Tensor): Tensor {
  const h = up.forward(x);
  try {
    return activation === 'swiglu' ? swiglu(h) : gelu(h);
  } finally {
    h.dispose();
  }
}

// gelu(x W^T + b) of a Linear with a bias: the product without the bias, then the bias and the
// activation in one pass (biasAct); add then gelu where the bias's dtype or device differ.
function mlpUpGelu(up: Linear, x: Tensor): Tensor {
  const name = `Linear(${up.inFeatures}, ${up.outFeatures})`;
  checkTensor(x, name, 'x');
  if (x.shape[x.ndim - 1] !== up.inFeatures) {
    throw new ShapeError(`${name}: Expected input with last dimension ${up.inFeatures} but received ${describe(x)}`);
  }
  const b = up.bias!;
  const z = linear(x, up.weight, null);
  try {
    if (z.dtype === b.dtype && z.device === b.device && z.ndim > 0) return biasAct(z, b, 'gelu');
    const zb = add(z, b);
    try {
      return gelu(zb);
    } finally {
      zb.dispose();
    }
  } finally {
    z.dispose();
  }
}

