// Thin, validated wrappers over the native backward kernels and fused optimizer steps, plus
// the forward ops that also return their saved statistics. Autograd rules (nn.ts,
// elementwise.ts) and the optimizers call these; nothing here records on the tape.
//
// Statistics (rstd, mean, lse) are float32, or float64 for float64 inputs (so float64
// gradient checks are exact). An upstream gradient of another dtype than the kernel wants is
// converted first (the conversion is a temporary, disposed here).
import { DType, isFloat } from '../dtype';
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { UNARY_OPS, UnaryName, op as nop } from '../native';
import { Tensor } from '../tensor';
import { checkTensor, empty, normAxis, sameDevice } from './util';


/** The dtype of saved statistics and of per-row losses for an input dtype. */
export function statsDType(d: DType): DType {
  return d === 'float64' ? 'float64' : 'float32';
}

function floatArg(op: string, x: unknown, arg: string): Tensor {
  const t = checkTensor(x, op, arg);
  if (!isFloat(t.dtype)) throw new DTypeError(`${op}: Expected a float tensor for ${arg} but received ${describe(t)}`);
  return t;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function shapeOf(op: string, t: Tensor, arg: string, want: readonly number[], wantName: string): void {
  if (!sameShape(t.shape, want)) {
    throw new ShapeError(`${op}: Expected ${arg} of shape [${want.join(', ')}] (${wantName}) but received ${describe(t)}`);
  }
}

function numelOf(op: string, t: Tensor, arg: string, n: number): void {
  if (t.size !== n) throw new ShapeError(`${op}: Expected ${arg} with ${n} elements but received ${describe(t)}`);
}

function finite(op: string, arg: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ValueError(`${op}: Expected a finite number for ${arg} but received ${describe(v)}`);
  return v;
}

/** Runs fn with t converted to dtype (t itself when it already has it); the copy is disposed after. */
function withDType<R>(t: Tensor, dtype: DType, fn: (c: Tensor) => R): R {
  if (t.dtype === dtype) return fn(t);
  const c = empty(t.shape, dtype, t.device);
  try {
    nop.copy({ out: c, x: t });
    return fn(c);
  } finally {
    c.dispose();
  }
}

function rowsOf(x: Tensor): number {
  const cols = x.ndim ? x.shape[x.ndim - 1] : 1;
  return cols ? x.size / cols : 0;
}

// ---- backward kernels ------------------------------------------------------------------------

/** Gradient of softmax (or log-softmax, y its output) along axis: dx from the output y and dy. */
export function softmaxBackward(y: Tensor, dy: Tensor, axis: number, log: boolean): Tensor {
  const op = log ? 'logSoftmaxBackward' : 'softmaxBackward';
  floatArg(op, y, 'y');
  checkTensor(dy, op, 'dy');
  sameDevice(op, y, dy);
  shapeOf(op, dy, 'dy', y.shape, 'the shape of y');
  const a = normAxis(axis, y.ndim, op);
  const dx = empty(y.shape, y.dtype, y.device);
  try {
    withDType(dy, y.dtype, (g) => nop.softmaxBackward({ dx, y, dy: g, axis: a, log: !!log }));
  } catch (e) {
    dx.dispose();
    throw e;
  }
  return dx;
}

function checkNormArgs(op: string, x: Tensor, weight: Tensor | null, stats: Array<[Tensor, string]>, dy: Tensor): void {
  floatArg(op, x, 'x');
  if (x.ndim === 0) throw new ShapeError(`${op}: x must have at least one dimension`);
  checkTensor(dy, op, 'dy');
  sameDevice(op, x, dy);
  shapeOf(op, dy, 'dy', x.shape, 'the shape of x');
  const cols = x.shape[x.ndim - 1];
  if (weight !== null && weight !== undefined) {
    checkTensor(weight, op, 'weight');
    sameDevice(op, x, weight);
    numelOf(op, weight, 'weight', cols);
    if (weight.dtype !== x.dtype) throw new DTypeError(`${op}: Expected ${x.dtype} for weight but received ${describe(weight)}`);
  }
  const rows = rowsOf(x);
  for (const [s, name] of stats) {
    checkTensor(s, op, name);
    sameDevice(op, x, s);
    numelOf(op, s, name, rows);
    if (s.dtype !== statsDType(x.dtype)) throw new DTypeError(`${op}: Expected ${statsDType(x.dtype)} for ${name} but received ${describe(s)}`);
  }
}

function disposeAll(ts: Array<Tensor | null>): void {
  for (const t of ts) if (t) t.dispose();
}

/** RMSNorm backward: dx, and dweight (sum over rows of dy * xhat) when asked and a weight exists. */
export function rmsNormBackward(x: Tensor, weight: Tensor | null, rstd: Tensor, dy: Tensor, needWeightGrad: boolean): { dx: Tensor; dweight: Tensor | null } {
  const op = 'rmsNormBackward';
  checkNormArgs(op, x, weight, [[rstd, 'rstd']], dy);
  const cols = x.shape[x.ndim - 1];
  const dx = empty(x.shape, x.dtype, x.device);
  const dweight = weight && needWeightGrad ? empty([cols], x.dtype, x.device) : null;
  try {
    withDType(dy, x.dtype, (g) =>
      nop.rmsNormBackward({ dx, dweight, x, weight, rstd, dy: g }));
  } catch (e) {
    disposeAll([dx, dweight]);
    throw e;
  }
  return { dx, dweight };
}

/** LayerNorm backward: dx, dweight (sum dy * xhat, when a weight exists) and dbias (sum dy) when asked. */
export function layerNormBackward(x: Tensor, weight: Tensor | null, mean: Tensor, rstd: Tensor, dy: Tensor, needWeightGrad: boolean,
                                  needBiasGrad: boolean): { dx: Tensor; dweight: Tensor | null; dbias: Tensor | null } {
  const op = 'layerNormBackward';
  checkNormArgs(op, x, weight, [[mean, 'mean'], [rstd, 'rstd']], dy);
  const cols = x.shape[x.ndim - 1];
  const dx = empty(x.shape, x.dtype, x.device);
  const dweight = weight && needWeightGrad ? empty([cols], x.dtype, x.device) : null;
  const dbias = needBiasGrad ? empty([cols], x.dtype, x.device) : null;
  try {
    withDType(dy, x.dtype, (g) =>
      nop.layerNormBackward({ dx, dweight, dbias, x, weight, mean, rstd, dy: g }));
  } catch (e) {
    disposeAll([dx, dweight, dbias]);
    throw e;
  }
  return { dx, dweight, dbias };
}

function checkCE(op: string, logits2d: Tensor, targets1d: Tensor, ignoreIndex: number, smoothing: number): void {
  floatArg(op, logits2d, 'logits');
  if (logits2d.ndim !== 2) throw new ShapeError(`${op}: Expected logits of shape [rows, classes] but received ${describe(logits2d)}`);
  checkTensor(targets1d, op, 'targets');
  if (targets1d.dtype !== 'int32') throw new DTypeError(`${op}: Expected int32 targets but received ${describe(targets1d)}`);
  sameDevice(op, logits2d, targets1d);
  numelOf(op, targets1d, 'targets', logits2d.shape[0]);
  if (!Number.isInteger(ignoreIndex)) throw new ValueError(`${op}: Expected an integer for ignoreIndex but received ${describe(ignoreIndex)}`);
  if (!(typeof smoothing === 'number' && smoothing >= 0 && smoothing < 1)) throw new ValueError(`${op}: Expected smoothing in [0, 1) but received ${describe(smoothing)}`);
}

/**
 * Cross-entropy backward per row: dloss[r] * (softmax(x_r) - (1 - s) onehot(t_r) - s / C), zero
 * for ignored rows. dloss [rows] is the upstream gradient of each row's loss.
 */
export function crossEntropyBackward(logits2d: Tensor, targets1d: Tensor, lse: Tensor, dloss: Tensor, ignoreIndex: number, smoothing: number): Tensor {
  const op = 'crossEntropyBackward';
  checkCE(op, logits2d, targets1d, ignoreIndex, smoothing);
  const rows = logits2d.shape[0];
  const sd = statsDType(logits2d.dtype);
  checkTensor(lse, op, 'lse');
  checkTensor(dloss, op, 'dloss');
  sameDevice(op, logits2d, lse, dloss);
  numelOf(op, lse, 'lse', rows);
  numelOf(op, dloss, 'dloss', rows);
  if (lse.dtype !== sd) throw new DTypeError(`${op}: Expected ${sd} for lse but received ${describe(lse)}`);
  if (!isFloat(dloss.dtype)) throw new DTypeError(`${op}: Expected a float tensor for dloss but received ${describe(dloss)}`);
  const dx = empty(logits2d.shape, logits2d.dtype, logits2d.device);
  try {
    withDType(dloss, sd, (g) =>
      nop.crossEntropyBackward({ dlogits: dx, logits: logits2d, targets: targets1d, lse, dloss: g, ignoreIndex, smoothing }));
  } catch (e) {
    dx.dispose();
    throw e;
  }
  return dx;
}

/** dy * f'(x) for a unary op (logicalNot has no gradient). */
export function unaryBackward(op: UnaryName, x: Tensor, dy: Tensor): Tensor {
  const name = 'unaryBackward';
  if (!(UNARY_OPS as readonly string[]).includes(op)) throw new ValueError(`${name}: unknown op ${describe(op)}`);
  if (op === 'logicalNot') throw new ValueError(`${name}: logicalNot has no gradient`);
  floatArg(name, x, 'x');
  checkTensor(dy, name, 'dy');
  sameDevice(name, x, dy);
  shapeOf(name, dy, 'dy', x.shape, 'the shape of x');
  const dx = empty(x.shape, x.dtype, x.device);
  try {
    withDType(dy, x.dtype, (g) => nop.unaryBackward({ op, dx, x, dy: g }));
  } catch (e) {
    dx.dispose();
    throw e;
  }
  return dx;
}

/** SwiGLU backward: x [..., 2h] = [a | b], dy [..., h] -> dx [..., 2h]. */
export function swigluBackward(x: Tensor, dy: Tensor): Tensor {
  const op = 'swigluBackward';
  floatArg(op, x, 'x');
  checkTensor(dy, op, 'dy');
  sameDevice(op, x, dy);
  const d = x.ndim ? x.shape[x.ndim - 1] : 0;
  if (x.ndim === 0 || d % 2 !== 0) throw new ShapeError(`${op}: the last axis of x must have even size, received ${describe(x)}`);
  shapeOf(op, dy, 'dy', [...x.shape.slice(0, -1), d / 2], 'x with the last axis halved');
  const dx = empty(x.shape, x.dtype, x.device);
  try {
    withDType(dy, x.dtype, (g) => nop.swigluBackward({ dx, x, dy: g }));
  } catch (e) {
    dx.dispose();
    throw e;
  }
  return dx;
}

// ---- optimizer steps ---------------------------------------------------------------------------

function checkParamGrad(op: string, param: Tensor, grad: Tensor): void {
  checkTensor(param, op, 'param');
  checkTensor(grad, op, 'grad');
  if (param.dtype !== 'float32' && param.dtype !== 'float64') {
    throw new DTypeError(`${op}: Expected a float32 (master weights) or float64 param but received ${describe(param)}`);
  }
  if (grad.dtype !== param.dtype && grad.dtype !== 'bfloat16') {
    throw new DTypeError(`${op}: Expected a ${param.dtype} or bfloat16 grad but received ${describe(grad)}`);
  }
  if (!param.isContiguous) throw new ValueError(`${op}: param must be contiguous (it is updated in place)`);
  sameDevice(op, param, grad);
  numelOf(op, grad, 'grad', param.size);
}

function checkState(op: string, s: Tensor, arg: string, param: Tensor): void {
  checkTensor(s, op, arg);
  sameDevice(op, param, s);
  numelOf(op, s, arg, param.size);
  if (s.dtype !== param.dtype) throw new DTypeError(`${op}: Expected ${param.dtype} for ${arg} but received ${describe(s)}`);
  if (!s.isContiguous) throw new ValueError(`${op}: ${arg} must be contiguous (it is updated in place)`);
}

/**
 * One fused AdamW update in place (PyTorch semantics, decoupled weight decay, bias correction
 * with `step` counted from 1). The gradient is multiplied by gradScale first (default 1), which
 * lets the caller fold gradient clipping in.
 */
export function adamwStep(param: Tensor, grad: Tensor, expAvg: Tensor, expAvgSq: Tensor,
                          o: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; step: number; gradScale?: number }): void {
  const op = 'adamwStep';
  checkParamGrad(op, param, grad);
  checkState(op, expAvg, 'expAvg', param);
  checkState(op, expAvgSq, 'expAvgSq', param);
  const lr = finite(op, 'lr', o.lr);
  const b1 = finite(op, 'beta1', o.beta1);
  const b2 = finite(op, 'beta2', o.beta2);
  if (!(b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1)) throw new ValueError(`${op}: Expected beta1 and beta2 in [0, 1) but received ${b1}, ${b2}`);
  const eps = finite(op, 'eps', o.eps);
  const wd = finite(op, 'weightDecay', o.weightDecay);
  if (!Number.isInteger(o.step) || o.step < 1) throw new ValueError(`${op}: Expected an integer step >= 1 but received ${describe(o.step)}`);
  const scale = finite(op, 'gradScale', o.gradScale ?? 1);
  nop.adamwStep({ param, grad, expAvg, expAvgSq, lr, beta1: b1, beta2: b2, eps, weightDecay: wd, step: o.step, gradScale: scale });
}

/**
 * One fused SGD update in place (PyTorch semantics: weight decay added to the gradient,
 * momentum buffer set to the gradient on the first step, optional dampening and nesterov).
 * momentumBuf may be null only when momentum is 0.
 */
export function sgdStep(param: Tensor, grad: Tensor, momentumBuf: Tensor | null,
                        o: { lr: number; momentum: number; dampening: number; weightDecay: number; nesterov: boolean; gradScale?: number; firstStep: boolean }): void {
  const op = 'sgdStep';
  checkParamGrad(op, param, grad);
  const lr = finite(op, 'lr', o.lr);
  const momentum = finite(op, 'momentum', o.momentum);
  const dampening = finite(op, 'dampening', o.dampening);
  const wd = finite(op, 'weightDecay', o.weightDecay);
  const scale = finite(op, 'gradScale', o.gradScale ?? 1);
  if (momentumBuf !== null && momentumBuf !== undefined) checkState(op, momentumBuf, 'momentumBuf', param);
  else if (momentum !== 0) throw new ValueError(`${op}: momentum ${momentum} needs a momentum buffer`);
  nop.sgdStep({ param, grad, momentumBuf, lr, momentum, dampening, weightDecay: wd, nesterov: !!o.nesterov, firstStep: !!o.firstStep, gradScale: scale });
}

// ---- forward ops with their saved statistics -----------------------------------------------------

function checkNormForward(op: string, x: Tensor, params: Array<[Tensor | null, string]>, eps: number): void {
  floatArg(op, x, 'x');
  if (x.ndim === 0) throw new ShapeError(`${op}: x must have at least one dimension`);
  const cols = x.shape[x.ndim - 1];
  for (const [p, name] of params) {
    if (p === null || p === undefined) continue;
    checkTensor(p, op, name);
    sameDevice(op, x, p);
    if (p.ndim !== 1 || p.shape[0] !== cols) throw new ShapeError(`${op}: Expected shape [${cols}] for ${name} but received ${describe(p)}`);
    if (p.dtype !== x.dtype) throw new DTypeError(`${op}: Expected ${x.dtype} for ${name} but received ${describe(p)}`);
  }
  if (typeof eps !== 'number' || !(eps >= 0) || !Number.isFinite(eps)) throw new ValueError(`${op}: Expected a finite number >= 0 for eps but received ${describe(eps)}`);
}

/** rmsNorm over the last axis, also returning rstd (shape x.shape[:-1]) for the backward pass. */
export function rmsNormWithStats(x: Tensor, weight: Tensor | null, eps: number): { y: Tensor; rstd: Tensor } {
  checkNormForward('rmsNorm', x, [[weight, 'weight']], eps);
  const y = empty(x.shape, x.dtype, x.device);
  const rstd = empty(x.shape.slice(0, -1), statsDType(x.dtype), x.device);
  try {
    nop.rmsNorm({ out: y, x, weight, eps, rstd });
  } catch (e) {
    disposeAll([y, rstd]);
    throw e;
  }
  return { y, rstd };
}

/** layerNorm over the last axis, also returning mean and rstd (shape x.shape[:-1]). */
export function layerNormWithStats(x: Tensor, weight: Tensor | null, bias: Tensor | null, eps: number): { y: Tensor; mean: Tensor; rstd: Tensor } {
  checkNormForward('layerNorm', x, [[weight, 'weight'], [bias, 'bias']], eps);
  const y = empty(x.shape, x.dtype, x.device);
  const sd = statsDType(x.dtype);
  const mean = empty(x.shape.slice(0, -1), sd, x.device);
  const rstd = empty(x.shape.slice(0, -1), sd, x.device);
  try {
    nop.layerNorm({ out: y, x, weight, bias, eps, mean, rstd });
  } catch (e) {
    disposeAll([y, mean, rstd]);
    throw e;
  }
  return { y, mean, rstd };
}

/** Per-row cross-entropy losses [rows] (0 where ignored) and log-sum-exp [rows] of logits [rows, C]. */
export function crossEntropyWithLse(logits2d: Tensor, targets1d: Tensor, ignoreIndex: number, smoothing: number): { loss: Tensor; lse: Tensor } {
  checkCE('crossEntropy', logits2d, targets1d, ignoreIndex, smoothing);
  const rows = logits2d.shape[0];
  const sd = statsDType(logits2d.dtype);
  const loss = empty([rows], sd, logits2d.device);
  const lse = empty([rows], sd, logits2d.device);
  try {
    nop.crossEntropy({ loss, logits: logits2d, targets: targets1d, ignoreIndex, smoothing, lse });
  } catch (e) {
    disposeAll([loss, lse]);
    throw e;
  }
  return { loss, lse };
}
