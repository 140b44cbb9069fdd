// Neural-network ops: softmax, log-softmax, RMSNorm, LayerNorm, SwiGLU and fused
// cross-entropy. Each is one native kernel (no chains of small ops).
import { isFloat } from '../dtype';
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { op } from '../native';
import { Tensor } from '../tensor';
import { reshape } from './shape';
import { needsGrad, record } from '../tape';
import { div as divOp, square as squareOp, sub as subOp } from './elementwise';
import { mean as meanOp, sum as sumOp } from './reduce';
import { crossEntropyWithLse, layerNormWithStats, rmsNormWithStats } from './grad_kernels';
import { allocLike, checkOptions, checkTensor, empty, normAxis, sameDevice } from './util';

function floatInput(op: string, x: Tensor, arg = 'x'): void {
  checkTensor(x, op, arg);
  if (!isFloat(x.dtype)) throw new DTypeError(`${op}: Expected a float tensor for ${arg} but received ${describe(x)}`);
}

/** softmax along axis (default the last). */
export function softmax(x: Tensor, axis = -1): Tensor {
  floatInput('softmax', x);
  const a = normAxis(axis, x.ndim, 'softmax');
  const out = allocLike(x);
  op.softmax({ out, x, axis: a, log: false });
  return record(out, 'softmax', [x], [out], { axis: a });
}

/** log(softmax(x)) along axis, computed stably in one pass. */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  floatInput('logSoftmax', x);
  const a = normAxis(axis, x.ndim, 'logSoftmax');
  const out = allocLike(x);
  op.softmax({ out, x, axis: a, log: true });
  return record(out, 'logSoftmax', [x], [out], { axis: a });
}

function checkVec(op: string, arg: string, v: Tensor | undefined | null, x: Tensor): void {
  if (v === undefined || v === null) return;
  checkTensor(v, op, arg);
  const d = x.shape[x.ndim - 1];
  if (v.ndim !== 1 || v.shape[0] !== d) throw new ShapeError(`${op}: Expected shape [${d}] for ${arg} but received ${describe(v)}`);
  if (v.dtype !== x.dtype) throw new DTypeError(`${op}: Expected ${x.dtype} for ${arg} but received ${describe(v)}`);
  sameDevice(op, x, v);
}

function checkEps(op: string, eps: number): void {
  if (typeof eps !== 'number' || !(eps >= 0) || !Number.isFinite(eps)) throw new ValueError(`${op}: Expected a finite number >= 0 for eps but received ${describe(eps)}`);
}

/** RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight. */
export function rmsNorm(x: Tensor, weight?: Tensor | null, eps = 1e-6): Tensor {
  floatInput('rmsNorm', x);
  if (x.ndim === 0) throw new ShapeError('rmsNorm: x must have at least one dimension');
  checkVec('rmsNorm', 'weight', weight, x);
  checkEps('rmsNorm', eps);
  if (needsGrad(x, weight)) {
    const { y, rstd } = rmsNormWithStats(x, weight ?? null, eps);
    const w = weight ?? null;
    const rec = record(y, 'rmsNorm', [x, w], w ? [x, rstd, w] : [x, rstd]);
    rstd.dispose();
    return rec;
  }
  const out = allocLike(x);
  op.rmsNorm({ out, x, weight, eps });
  return out;
}

/** LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias (biased variance). */
export function layerNorm(x: Tensor, weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5): Tensor {
  floatInput('layerNorm', x);
  if (x.ndim === 0) throw new ShapeError('layerNorm: x must have at least one dimension');
  checkVec('layerNorm', 'weight', weight, x);
  checkVec('layerNorm', 'bias', bias, x);
  checkEps('layerNorm', eps);
  if (needsGrad(x, weight, bias)) {
    const w = weight ?? null;
    const b = bias ?? null;
    const { y, mean, rstd } = layerNormWithStats(x, w, b, eps);
    const rec = record(y, 'layerNorm', [x, w, b], w ? [x, mean, rstd, w] : [x, mean, rstd]);
    mean.dispose();
    rstd.dispose();
    return rec;
  }
  const out = allocLike(x);
  op.layerNorm({ out, x, weight, bias, eps });
  return out;
}

/** SwiGLU on the last axis split in halves [gate, up]: silu(gate) * up. [..., 2h] -> [..., h]. */
export function swiglu(x: Tensor): Tensor {
  floatInput('swiglu', x);
  const d = x.ndim ? x.shape[x.ndim - 1] : 0;
  if (x.ndim === 0 || d % 2 !== 0) throw new ShapeError(`swiglu: the last axis must have even size, received ${describe(x)}`);
  const out = empty([...x.shape.slice(0, -1), d / 2], x.dtype, x.device);
  op.swiglu({ out, x });
  return record(out, 'swiglu', [x], [x]);
}

export interface CrossEntropyOptions {
  /** Targets equal to this are skipped (loss 0, excluded from the mean). Default -100. */
  ignoreIndex?: number;
  /** Label smoothing in [0, 1). */
  labelSmoothing?: number;
  /** 'mean' (over non-ignored rows, default), 'sum' or 'none' (per-row losses). */
  reduction?: 'mean' | 'sum' | 'none';
}

/**
 * Cross-entropy of logits [..., C] against int32 class targets [...], fused (log-softmax and
 * the pick in one kernel). An out-of-range target fails the op: its read raises OutOfRangeError.
 */
export function crossEntropy(logits: Tensor, targets: Tensor, options: CrossEntropyOptions = {}): Tensor {
  options = checkOptions(options, 'crossEntropy');
  floatInput('crossEntropy', logits, 'logits');
  checkTensor(targets, 'crossEntropy', 'targets');
  if (targets.dtype !== 'int32') throw new DTypeError(`crossEntropy: Expected int32 targets but received ${describe(targets)}`);
  sameDevice('crossEntropy', logits, targets);
  if (logits.ndim < 1) throw new ShapeError('crossEntropy: logits need a class axis');
  const C = logits.shape[logits.ndim - 1];
  const lead = logits.shape.slice(0, -1);
  if (targets.shape.length !== lead.length || targets.shape.some((d, i) => d !== lead[i])) {
    throw new ShapeError(`crossEntropy: Expected targets of shape [${lead.join(', ')}] for logits [${logits.shape.join(', ')}] but received [${targets.shape.join(', ')}]`);
  }
  const ignoreIndex = options.ignoreIndex ?? -100;
  const smoothing = options.labelSmoothing ?? 0;
  const reduction = options.reduction ?? 'mean';
  if (!Number.isInteger(ignoreIndex)) throw new ValueError(`crossEntropy: Expected an integer for ignoreIndex but received ${describe(ignoreIndex)}`);
  if (!(smoothing >= 0 && smoothing < 1)) throw new ValueError(`crossEntropy: Expected labelSmoothing in [0, 1) but received ${describe(smoothing)}`);
  if (!['mean', 'sum', 'none'].includes(reduction)) throw new ValueError(`crossEntropy: Expected 'mean', 'sum' or 'none' for reduction but received ${describe(reduction)}`);
  const rows = lead.reduce((a, b) => a * b, 1);
  if (needsGrad(logits)) return crossEntropyGrad(logits, targets, rows, C, lead, ignoreIndex, smoothing, reduction);
  const x2 = reshape(logits, [rows, C]);
  const t1 = reshape(targets, [rows]);
  const lossDType = logits.dtype === 'float64' ? 'float64' : 'float32';
  const loss = empty([rows], lossDType, logits.device);
  try {
    op.crossEntropy({ loss, logits: x2, targets: t1, ignoreIndex, smoothing });
  } finally {
    x2.dispose();
    t1.dispose();
  }
  if (reduction === 'none') {
    try {
      return reshape(loss, lead);
    } finally {
      loss.dispose();
    }
  }
  const total = empty([], lossDType, logits.device);
  op.reduce({ op: 'sum', out: total, x: loss, axes: [0] });
  loss.dispose();
  if (reduction === 'sum') return total;
  // mean over the rows that are not ignored (NaN when every row is, as in PyTorch)
  const counted = countNotIgnored(targets, ignoreIndex, lossDType);
  const out = empty([], lossDType, logits.device);
  op.binary({ op: 'div', out, a: total, b: counted });
  total.dispose();
  counted.dispose();
  return out;
}

// The number of targets that are not ignoreIndex, as a scalar tensor of the loss dtype: it
// stays on the device, so the mean needs no read (nothing waits for the computation).
function countNotIgnored(targets: Tensor, ignoreIndex: number, dtype: 'float32' | 'float64'): Tensor {
  const mask = empty(targets.shape, 'bool', targets.device);
  op.binaryScalar({ op: 'ne', out: mask, a: targets, scalar: ignoreIndex, scalarFirst: false });
  const asFloat = empty(targets.shape, dtype, targets.device);
  op.copy({ out: asFloat, x: mask });
  mask.dispose();
  const c = empty([], dtype, targets.device);
  op.reduce({ op: 'sum', out: c, x: asFloat, axes: targets.shape.map((_, i) => i) });
  asFloat.dispose();
  return c;
}

// crossEntropy with autograd: the fused per-row kernel records its own backward (which reuses
// the saved log-sum-exp), and the reduction is made of recorded ops.
function crossEntropyGrad(logits: Tensor, targets: Tensor, rows: number, C: number, lead: number[], ignoreIndex: number,
                          smoothing: number, reduction: 'mean' | 'sum' | 'none'): Tensor {
  const x2 = reshape(logits, [rows, C]);
  const t1 = reshape(targets, [rows]);
  const { loss, lse } = crossEntropyWithLse(x2, t1, ignoreIndex, smoothing);
  record(loss, 'crossEntropy', [x2], [x2, t1, lse], { ignoreIndex, smoothing });
  x2.dispose();
  t1.dispose();
  lse.dispose();
  try {
    if (reduction === 'none') return reshape(loss, lead);
    const total = sumOp(loss);
    if (reduction === 'sum') return total;
    const counted = countNotIgnored(targets, ignoreIndex, loss.dtype === 'float64' ? 'float64' : 'float32');
    try {
      return divOp(total, counted);
    } finally {
      total.dispose();
      counted.dispose();
    }
  } finally {
    loss.dispose();
  }
}

/**
 * Mean squared error: mean((input - target)^2) ('mean', default), the sum ('sum') or the
 * per-element squares ('none'). Shapes must match (no silent broadcasting of a target).
 */
export function mseLoss(input: Tensor, target: Tensor, options: { reduction?: 'mean' | 'sum' | 'none' } = {}): Tensor {
  options = checkOptions(options, 'mseLoss');
  floatInput('mseLoss', input, 'input');
  floatInput('mseLoss', target, 'target');
  sameDevice('mseLoss', input, target);
  if (input.dtype !== target.dtype) throw new DTypeError(`mseLoss: Expected target of dtype ${input.dtype} but received ${describe(target)}`);
  if (input.ndim !== target.ndim || input.shape.some((d, i) => d !== target.shape[i])) {
    throw new ShapeError(`mseLoss: Expected target of shape [${input.shape.join(', ')}] but received ${describe(target)}`);
  }
  const reduction = options.reduction ?? 'mean';
  if (!['mean', 'sum', 'none'].includes(reduction)) throw new ValueError(`mseLoss: Expected 'mean', 'sum' or 'none' for reduction but received ${describe(reduction)}`);
  const d = subOp(input, target);
  const sq = squareOp(d);
  d.dispose();
  if (reduction === 'none') return sq;
  const r = reduction === 'sum' ? sumOp(sq) : meanOp(sq);
  sq.dispose();
  return r;
}
