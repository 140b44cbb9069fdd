// Fused ops: one native pass where a model step would otherwise make two or three (the
// residual add with the RMSNorm that follows it, a linear layer's bias with its activation).
// Each equals its unfused composition to float rounding: the intermediate (x + residual,
// x + bias) is rounded to the dtype as the separate op would store it.
import { DType, isFloat } from '../dtype';
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { op as nop } from '../native';
import { Tensor } from '../tensor';
import { needsGrad, record } from '../tape';
import { statsDType } from './grad_kernels';
import { checkTensor, empty, sameDevice } from './util';

/** The activations biasAct fuses: gelu (erf form), geluTanh (tanh approximation), silu, relu. */
export type BiasActivation = 'gelu' | 'geluTanh' | 'silu' | 'relu';
export const BIAS_ACTIVATIONS: readonly BiasActivation[] = Object.freeze(['gelu', 'geluTanh', 'silu', 'relu'] as BiasActivation[]);

function floatTensor(op: string, x: unknown, arg: string): Tensor {
  const t = checkTensor(x, op, arg);
  if (!isFloat(t.dtype)) throw new DTypeError(`${op}: Expected a float tensor for ${arg} but received ${describe(t)}`);
  return t;
}

function rowsTensor(op: string, x: unknown, arg: string): Tensor {
  const t = floatTensor(op, x, arg);
  if (t.ndim === 0) throw new ShapeError(`${op}: Expected ${arg} with at least one dimension but received ${describe(t)}`);
  return t;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

// Another tensor of like's shape, dtype and device.
function checkLike(op: string, t: unknown, arg: string, like: Tensor, likeName: string): Tensor {
  const v = checkTensor(t, op, arg);
  if (!sameShape(v.shape, like.shape)) throw new ShapeError(`${op}: Expected ${arg} of shape [${like.shape.join(', ')}] (the shape of ${likeName}) but received ${describe(v)}`);
  if (v.dtype !== like.dtype) throw new DTypeError(`${op}: Expected ${like.dtype} for ${arg} but received ${describe(v)}`);
  sameDevice(op, like, v);
  return v;
}

// A per-column vector [cols] of x's dtype and device.
function checkColumns(op: string, v: unknown, arg: string, x: Tensor): Tensor {
  const t = checkTensor(v, op, arg);
  const d = x.shape[x.ndim - 1];
  if (t.ndim !== 1 || t.shape[0] !== d) throw new ShapeError(`${op}: Expected shape [${d}] for ${arg} but received ${describe(t)}`);
  if (t.dtype !== x.dtype) throw new DTypeError(`${op}: Expected ${x.dtype} for ${arg} but received ${describe(t)}`);
  sameDevice(op, x, t);
  return t;
}

function checkEps(op: string, eps: unknown): number {
  if (typeof eps !== 'number' || !(eps >= 0) || !Number.isFinite(eps)) throw new ValueError(`${op}: Expected a finite number >= 0 for eps but received ${describe(eps)}`);
  return eps;
}

function checkAct(op: string, act: unknown): BiasActivation {
  if (!(BIAS_ACTIVATIONS as readonly unknown[]).includes(act)) {
    throw new ValueError(`${op}: Expected one of ${BIAS_ACTIVATIONS.map((a) => `'${a}'`).join(', ')} for act but received ${describe(act)}`);
  }
  return act as BiasActivation;
}

// t in dtype (t itself when it has it; else a converted copy the caller disposes).
function inDType(t: Tensor, dtype: DType): Tensor {
  if (t.dtype === dtype) return t;
  const c = empty(t.shape, dtype, t.device);
  try {
    nop.copy({ out: c, x: t });
  } catch (e) {
    c.dispose();
    throw e;
  }
  return c;
}

function disposeAll(ts: Array<Tensor | null>): void {
  for (const t of ts) t?.dispose();
}

/**
 * The residual add and the RMSNorm after it in one pass (vLLM's fused_add_rms_norm):
 * h = x + residual (the new residual stream) and y = h / sqrt(mean(h^2) + eps) * weight over the
 * last axis. x and residual have one shape and dtype (no broadcasting); weight [d] or null.
 * Equals `h = add(x, residual); y = rmsNorm(h, weight, eps)` to float rounding, and so do its
 * gradients: the backward adds the gradient reaching h from its other uses into the norm's
 * gradient in the same pass (one kernel gives the gradient of x and of residual).
 */
export function addRmsNorm(x: Tensor, residual: Tensor, weight?: Tensor | null, eps = 1e-6): { h: Tensor; y: Tensor } {
  const op = 'addRmsNorm';
  rowsTensor(op, x, 'x');
  checkLike(op, residual, 'residual', x, 'x');
  const w = weight === undefined || weight === null ? null : checkColumns(op, weight, 'weight', x);
  checkEps(op, eps);
  const h = empty(x.shape, x.dtype, x.device);
  const y = empty(x.shape, x.dtype, x.device);
  const grad = needsGrad(x, residual, w);
  const rstd = grad ? empty(x.shape.slice(0, -1), statsDType(x.dtype), x.device) : null;
  try {
    nop.addRmsNorm({ h, out: y, x, residual, weight: w, eps, rstd });
  } catch (e) {
    disposeAll([h, y, rstd]);
    throw e;
  }
  if (!grad) return { h, y };
  // h is an add on the tape (its gradient passes to x and residual); y's rule folds the gradient
  // h collected from its other uses into the norm's backward (registerGradient's foldsInto)
  record(h, 'add', [x, residual], [], { aShape: x.shape, bShape: residual.shape });
  record(y, 'addRmsNorm', [h, w], w ? [h, rstd!, w] : [h, rstd!]);
  rstd!.dispose();
  return { h, y };
}

/**
 * The backward kernel of addRmsNorm: dx = dh + rmsNormBackward(h, dy) (the gradient of both x
 * and residual; dh, the gradient reaching h from elsewhere, may be null), and dweight (the sum
 * over rows of dy * h * rstd) when asked and a weight exists. rstd: float32 (float64 for
 * float64 h) with one value per row.
 */
export function addRmsNormBackward(h: Tensor, weight: Tensor | null, rstd: Tensor, dy: Tensor, dh: Tensor | null,
                                   needWeightGrad: boolean): { dx: Tensor; dweight: Tensor | null } {
  const op = 'addRmsNormBackward';
  rowsTensor(op, h, 'h');
  const w = weight === undefined || weight === null ? null : checkColumns(op, weight, 'weight', h);
  const s = checkTensor(rstd, op, 'rstd');
  const cols = h.shape[h.ndim - 1];
  const rows = cols ? h.size / cols : 0;
  if (s.size !== rows) throw new ShapeError(`${op}: Expected rstd with ${rows} elements but received ${describe(s)}`);
  if (s.dtype !== statsDType(h.dtype)) throw new DTypeError(`${op}: Expected ${statsDType(h.dtype)} for rstd but received ${describe(s)}`);
  sameDevice(op, h, s);
  const g = checkTensor(dy, op, 'dy');
  if (!sameShape(g.shape, h.shape)) throw new ShapeError(`${op}: Expected dy of shape [${h.shape.join(', ')}] (the shape of h) but received ${describe(g)}`);
  if (!isFloat(g.dtype)) throw new DTypeError(`${op}: Expected a float tensor for dy but received ${describe(g)}`);
  sameDevice(op, h, g);
  const pend = dh === undefined || dh === null ? null : checkLike(op, dh, 'dh', h, 'h');
  const dx = empty(h.shape, h.dtype, h.device);
  const dweight = w && needWeightGrad ? empty([h.shape[h.ndim - 1]], h.dtype, h.device) : null;
  const gc = inDType(g, h.dtype);
  try {
    nop.addRmsNormBackward({ dx, dweight, h, weight: w, rstd: s, dy: gc, dh: pend });
  } catch (e) {
    disposeAll([dx, dweight]);
    throw e;
  } finally {
    if (gc !== g) gc.dispose();
  }
  return { dx, dweight };
}

/**
 * act(x + bias) in one pass: bias [d] is added to every row of x [..., d] and the activation
 * applied before anything is stored ('gelu' the erf form, 'geluTanh' its tanh approximation,
 * 'silu', 'relu'). Equals `act(add(x, bias))` to float rounding; the backward gives
 * dx = dy act'(x + bias) and dbias (dx summed over the rows, in a fixed order) in one pass, and
 * saves x and bias, not x + bias.
 */
export function biasAct(x: Tensor, bias: Tensor, act: BiasActivation = 'gelu'): Tensor {
  const op = 'biasAct';
  rowsTensor(op, x, 'x');
  checkColumns(op, bias, 'bias', x);
  const a = checkAct(op, act);
  const out = empty(x.shape, x.dtype, x.device);
  try {
    nop.biasAct({ act: a, out, x, bias });
  } catch (e) {
    out.dispose();
    throw e;
  }
  return record(out, 'biasAct', [x, bias], [x, bias], { act: a });
}

/** The backward kernel of biasAct: dx = dy act'(x + bias) and, when asked, dbias = dx summed over the rows. */
export function biasActBackward(act: BiasActivation, x: Tensor, bias: Tensor, dy: Tensor, needBiasGrad: boolean): { dx: Tensor; dbias: Tensor | null } {
  const op = 'biasActBackward';
  const a = checkAct(op, act);
  rowsTensor(op, x, 'x');
  checkColumns(op, bias, 'bias', x);
  const g = checkTensor(dy, op, 'dy');
  if (!sameShape(g.shape, x.shape)) throw new ShapeError(`${op}: Expected dy of shape [${x.shape.join(', ')}] (the shape of x) but received ${describe(g)}`);
  if (!isFloat(g.dtype)) throw new DTypeError(`${op}: Expected a float tensor for dy but received ${describe(g)}`);
  sameDevice(op, x, g);
  const dx = empty(x.shape, x.dtype, x.device);
  const dbias = needBiasGrad ? empty([x.shape[x.ndim - 1]], x.dtype, x.device) : null;
  const gc = inDType(g, x.dtype);
  try {
    nop.biasActBackward({ act: a, dx, dbias, x, bias, dy: gc });
  } catch (e) {
    disposeAll([dx, dbias]);
    throw e;
  } finally {
    if (gc !== g) gc.dispose();
  }
  return { dx, dbias };
}
