// In-place ops: x.copy_(src), x.fill_(v), x.zero_(), x.add_(y, {alpha}), x.sub_(y), x.mul_(y),
// x.div_(y). They write into x's storage (so every view of it sees the change), in stream
// order with the ops around them: a read issued before an in-place update returns the values
// from before it. Like PyTorch they return x, and they are not recorded by autograd: on a tensor
// that requires grad they must run under noGrad() (optimizers, initialisation), and a tensor
// saved for a backward pass that is updated in place makes that backward fail with a clear
// error instead of computing with the new values.
import { isFloat } from '../dtype';
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { op } from '../native';
import { Tensor } from '../tensor';
import { isGradEnabled } from '../tape';
import { cast, clone, expand, to } from './shape';
import { broadcastShapes, checkInt32, checkOptions, checkTensor, empty } from './util';

function target(name: string, x: unknown): Tensor {
  const t = checkTensor(x, name, 'x');
  if (isGradEnabled() && t.requiresGrad) {
    throw new ValueError(`${name}: x requires grad, and in-place ops are not recorded by autograd; use the out-of-place op, or update it under noGrad() (as optimizers do)`);
  }
  if (t.strides.some((s, i) => s === 0 && t.shape[i] > 1)) {
    throw new ShapeError(`${name}: x is an expanded view (stride 0), so several of its elements share one memory location; write into a contiguous tensor`);
  }
  return t;
}

/** src as an operand for x: x's dtype and device, broadcast to x's shape (a view where possible). */
function operand(name: string, x: Tensor, src: Tensor, tmp: Tensor[]): Tensor {
  if (isGradEnabled() && src.requiresGrad) {
    throw new ValueError(`${name}: the operand requires grad, and in-place ops are not recorded by autograd; run under noGrad()`);
  }
  let s = src;
  if (s.device !== x.device) tmp.push((s = to(s, x.device)));
  if (s.dtype !== x.dtype) tmp.push((s = cast(s, x.dtype)));
  const shape = broadcastShapes(name, x.shape, s.shape, 'x', 'src');
  if (shape.length !== x.ndim || shape.some((d, i) => d !== x.shape[i])) {
    throw new ShapeError(`${name}: src of shape [${src.shape.join(', ')}] does not broadcast to x's shape [${x.shape.join(', ')}]`);
  }
  // an operand overlapping x (other than x itself) is read before anything is written
  if (s.storage === x.storage && !(s.offset === x.offset && s.strides.every((v, i) => v === x.strides[i]) && s.ndim === x.ndim)) {
    tmp.push((s = clone(s)));
  }
  return s;
}

function bump(x: Tensor): Tensor {
  x.storage.version += 1;
  return x;
}

/** Copies src into x (broadcasting src, converting its dtype and device). Returns x. */
export function copy_(x: Tensor, src: Tensor): Tensor {
  const t = target('copy_', x);
  checkTensor(src, 'copy_', 'src');
  const tmp: Tensor[] = [];
  try {
    let s = src;
    if (isGradEnabled() && s.requiresGrad) throw new ValueError('copy_: src requires grad, and in-place ops are not recorded by autograd; run under noGrad()');
    if (s.device !== t.device) tmp.push((s = to(s, t.device)));
    const shape = broadcastShapes('copy_', t.shape, s.shape, 'x', 'src');
    if (shape.length !== t.ndim || shape.some((d, i) => d !== t.shape[i])) {
      throw new ShapeError(`copy_: src of shape [${src.shape.join(', ')}] does not broadcast to x's shape [${t.shape.join(', ')}]`);
    }
    if (s.shape.length !== t.ndim || s.shape.some((d, i) => d !== t.shape[i])) tmp.push((s = expand(s, t.shape.slice())));
    if (s.storage === t.storage && s !== t) tmp.push((s = clone(s)));
    op.copy({ out: t, x: s });
  } finally {
    tmp.forEach((v) => v.dispose());
  }
  return bump(t);
}

/** Sets every element of x to value. Returns x. */
export function fill_(x: Tensor, value: number | boolean): Tensor {
  const t = target('fill_', x);
  if (typeof value !== 'number' && typeof value !== 'boolean') throw new ValueError(`fill_: Expected a number or boolean for value but received ${describe(value)}`);
  if (t.dtype === 'int32') checkInt32('fill_', 'value', Number(value));
  op.fill({ out: t, value: Number(value) });
  return bump(t);
}

/** Sets every element of x to 0. Returns x. */
export function zero_(x: Tensor): Tensor {
  return fill_(x, 0);
}

type Arith = 'add' | 'sub' | 'mul' | 'div';

function arith_(name: string, kind: Arith, x: Tensor, y: Tensor | number, alpha = 1): Tensor {
  const t = target(name, x);
  if (t.dtype === 'bool') throw new DTypeError(`${name}: x is bool; arithmetic needs a numeric tensor`);
  if (kind === 'div' && !isFloat(t.dtype)) throw new DTypeError(`${name}: x is ${t.dtype}; in-place division needs a float tensor`);
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) throw new ValueError(`${name}: Expected a finite number for alpha but received ${describe(alpha)}`);
  if (typeof y === 'number') {
    if (!isFloat(t.dtype) && !Number.isInteger(y * alpha)) throw new DTypeError(`${name}: ${y} cannot be applied in place to an ${t.dtype} tensor`);
    if (t.dtype === 'int32') checkInt32(name, 'the scalar', kind === 'add' || kind === 'sub' ? y * alpha : y);
    op.binaryScalar({ op: kind, out: t, a: t, scalar: kind === 'add' || kind === 'sub' ? y * alpha : y, scalarFirst: false });
    return bump(t);
  }
  checkTensor(y, name, 'other');
  if (!isFloat(t.dtype) && isFloat(y.dtype)) throw new DTypeError(`${name}: a ${y.dtype} operand cannot be applied in place to an ${t.dtype} tensor`);
  const tmp: Tensor[] = [];
  try {
    let s = operand(name, t, y, tmp);
    if (alpha !== 1) {
      const scaled = empty(s.shape, s.dtype, s.device);
      op.binaryScalar({ op: 'mul', out: scaled, a: s, scalar: alpha, scalarFirst: false });
      tmp.push((s = scaled));
    }
    op.binary({ op: kind, out: t, a: t, b: s });
  } finally {
    tmp.forEach((v) => v.dispose());
  }
  return bump(t);
}

/** x += alpha * y (y a tensor broadcasting to x, or a number). Returns x. */
export function add_(x: Tensor, y: Tensor | number, options: { alpha?: number } = {}): Tensor {
  options = checkOptions(options, 'add_');
  return arith_('add_', 'add', x, y, options.alpha ?? 1);
}
/** x -= alpha * y. Returns x. */
export function sub_(x: Tensor, y: Tensor | number, options: { alpha?: number } = {}): Tensor {
  options = checkOptions(options, 'sub_');
  return arith_('sub_', 'sub', x, y, options.alpha ?? 1);
}
/** x *= y. Returns x. */
export function mul_(x: Tensor, y: Tensor | number): Tensor {
  return arith_('mul_', 'mul', x, y);
}
/** x /= y (float x). Returns x. */
export function div_(x: Tensor, y: Tensor | number): Tensor {
  return arith_('div_', 'div', x, y);
}

