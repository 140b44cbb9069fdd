// Element-wise ops: unary math, binary arithmetic and comparisons with broadcasting, where,
// clamp. dtypes promote as in PyTorch: bool < int32 < bfloat16 < float32 < float64; division
// and pow of integers give float32; comparisons give bool.
import { DType, isFloat, promote } from '../dtype';
import { BINARY_OPS, BinaryName, UNARY_OPS, UnaryName, op } from '../native';
import { DTypeError, ValueError, describe } from '../errors';
import { Tensor } from '../tensor';
import { cast } from './shape';
import { needsGrad, record } from '../tape';
import { alloc, allocLike, broadcastShapes, broadcastShapesOf, checkInt32, checkOptions, checkTensor, empty, sameDevice } from './util';

// (switches, not Sets: a Set lookup costs more than the rest of the dispatch of a tiny op)
const INT_UNARY = { has: (n: UnaryName) => n === 'neg' || n === 'abs' || n === 'square' || n === 'sign' };
const COMPARE = {
  has(n: BinaryName): boolean {
    switch (n) {
      case 'eq': case 'ne': case 'lt': case 'le': case 'gt': case 'ge': case 'logicalAnd': case 'logicalOr':
        return true;
      default:
        return false;
    }
  },
};
// the names a binary op with a number records under
const SCALAR_NAME = Object.fromEntries(BINARY_OPS.map((n) => [n, `${n}Scalar`])) as Record<BinaryName, string>;

// What each binary op's backward rule (lib/autograd/rules/elementwise.ts) reads besides the
// gradient: only those tensors are saved (each saved tensor is a handle that lives until the
// tape node is released, and an in-place update of it after the op makes backward refuse).
function binarySaves(name: BinaryName, a: Tensor, b: Tensor, out: Tensor): Tensor[] {
  switch (name) {
    case 'mul':
    case 'maximum':
    case 'minimum':
    case 'remainder':
      return [a, b];
    case 'div':
      return [b, out];
    case 'pow':
      return [a, b, out];
    default:
      return [];  // add, sub: the gradient alone (and the shapes); floorDiv: none
  }
}
function scalarSaves(name: BinaryName, x: Tensor, out: Tensor, scalarFirst: boolean): Tensor[] {
  switch (name) {
    case 'div':
      return scalarFirst ? [x, out] : [];
    case 'pow':
      return scalarFirst ? [out] : [x];
    case 'maximum':
    case 'minimum':
      return [x];
    case 'remainder':
      return scalarFirst ? [x] : [];
    default:
      return [];  // add, sub, mul: the gradient and the scalar alone
  }
}

export type TensorOrScalar = Tensor | number;

/** Applies a unary op; integer inputs of float-only ops are promoted to float32. */
export function unary(name: UnaryName, x: Tensor): Tensor {
  if (!(UNARY_OPS as readonly unknown[]).includes(name)) throw new ValueError(`unary: Expected one of ${UNARY_OPS.join(', ')} for name but received ${describe(name)}`);
  checkTensor(x, name, 'x');
  if (name === 'logicalNot') {
    const out = allocLike(x, 'bool');
    op.unary({ op: name, out, x });
    return out;
  }
  let src = x;
  if (x.dtype === 'bool' || (x.dtype === 'int32' && !INT_UNARY.has(name))) src = cast(x, x.dtype === 'bool' && INT_UNARY.has(name) ? 'int32' : 'float32');
  try {
    const out = allocLike(src);
    op.unary({ op: name, out, x: src });
    return record(out, name, [src], [src]);
  } finally {
    if (src !== x) src.dispose();
  }
}

function arithDType(name: BinaryName, d: DType): DType {
  if (COMPARE.has(name)) return d;
  if ((name === 'div' || name === 'pow') && !isFloat(d)) return 'float32';
  if (d === 'bool') return 'int32';
  return d;
}

/** Applies a binary op with broadcasting and dtype promotion. Either side may be a number. */
export function binary(name: BinaryName, a: TensorOrScalar, b: TensorOrScalar): Tensor {
  if (!(BINARY_OPS as readonly unknown[]).includes(name)) throw new ValueError(`binary: Expected one of ${BINARY_OPS.join(', ')} for name but received ${describe(name)}`);
  if (typeof a === 'number' && typeof b === 'number') {
    throw new ValueError(`${name}: Expected at least one Tensor but received two numbers`);
  }
  if (typeof a !== 'number') checkTensor(a, name, 'a');
  if (typeof b !== 'number') checkTensor(b, name, 'b');
  if (typeof a === 'number' || typeof b === 'number') {
    const t = (typeof a === 'number' ? b : a) as Tensor;
    const s = (typeof a === 'number' ? a : b) as number;
    if (typeof s !== 'number') throw new ValueError(`${name}: Expected a Tensor or number but received ${describe(s)}`);
    let d = t.dtype;
    if (!isFloat(d) && !Number.isInteger(s)) d = 'float32';
    d = arithDType(name, d);
    // an integer scalar meets an int32 tensor as an int32 (comparisons too): it must fit
    if (d === 'int32' || (COMPARE.has(name) && t.dtype === 'int32' && Number.isInteger(s))) checkInt32(name, 'the scalar', s);
    const src = d === t.dtype ? t : cast(t, d);
    try {
      const compare = COMPARE.has(name);
      const out = allocLike(src, compare ? 'bool' : d);
      const scalarFirst = typeof a === 'number';
      op.binaryScalar({ op: name, out, a: src, scalar: s, scalarFirst });
      if (compare || !needsGrad(src)) return out;
      return record(out, SCALAR_NAME[name], [src], scalarSaves(name, src, out, scalarFirst), { scalar: s, scalarFirst });
    } finally {
      if (src !== t) src.dispose();
    }
  }
  const device = sameDevice(name, a, b);
  const shape = broadcastShapesOf(name, a.shape, b.shape);
  const d = arithDType(name, promote(a.dtype, b.dtype));
  const ca = a.dtype === d ? a : cast(a, d);
  const cb = b.dtype === d ? b : cast(b, d);
  try {
    const od = COMPARE.has(name) ? 'bool' : d;
    const out = shape === ca.shape ? allocLike(ca, od) : shape === cb.shape ? allocLike(cb, od) : alloc(shape, od, device);
    op.binary({ op: name, out, a: ca, b: cb });
    if (COMPARE.has(name) || !needsGrad(ca, cb)) return out;
    return record(out, name, [ca, cb], binarySaves(name, ca, cb, out), { aShape: ca.shape, bShape: cb.shape });
  } finally {
    if (ca !== a) ca.dispose();
    if (cb !== b) cb.dispose();
  }
}

export const add = (a: TensorOrScalar, b: TensorOrScalar) => binary('add', a, b);
export const sub = (a: TensorOrScalar, b: TensorOrScalar) => binary('sub', a, b);
export const mul = (a: TensorOrScalar, b: TensorOrScalar) => binary('mul', a, b);
export const div = (a: TensorOrScalar, b: TensorOrScalar) => binary('div', a, b);
export const pow = (a: TensorOrScalar, b: TensorOrScalar) => binary('pow', a, b);
export const maximum = (a: TensorOrScalar, b: TensorOrScalar) => binary('maximum', a, b);
export const minimum = (a: TensorOrScalar, b: TensorOrScalar) => binary('minimum', a, b);
/** floor(a / b), as torch.floor_divide and Python's //; int32 stays int32 (x // 0 is 0, as int32 div). No gradient. */
export const floorDiv = (a: TensorOrScalar, b: TensorOrScalar) => binary('floorDiv', a, b);
/** a - b floor(a / b): the sign of b, as torch.remainder and Python's %; int32 x % 0 is 0. */
export const remainder = (a: TensorOrScalar, b: TensorOrScalar) => binary('remainder', a, b);
export const eq = (a: TensorOrScalar, b: TensorOrScalar) => binary('eq', a, b);
export const ne = (a: TensorOrScalar, b: TensorOrScalar) => binary('ne', a, b);
export const lt = (a: TensorOrScalar, b: TensorOrScalar) => binary('lt', a, b);
export const le = (a: TensorOrScalar, b: TensorOrScalar) => binary('le', a, b);
export const gt = (a: TensorOrScalar, b: TensorOrScalar) => binary('gt', a, b);
export const ge = (a: TensorOrScalar, b: TensorOrScalar) => binary('ge', a, b);
export const logicalAnd = (a: TensorOrScalar, b: TensorOrScalar) => binary('logicalAnd', a, b);
export const logicalOr = (a: TensorOrScalar, b: TensorOrScalar) => binary('logicalOr', a, b);

export const neg = (x: Tensor) => unary('neg', x);
export const abs = (x: Tensor) => unary('abs', x);
export const exp = (x: Tensor) => unary('exp', x);
export const log = (x: Tensor) => unary('log', x);
export const sqrt = (x: Tensor) => unary('sqrt', x);
export const rsqrt = (x: Tensor) => unary('rsqrt', x);
export const sin = (x: Tensor) => unary('sin', x);
export const cos = (x: Tensor) => unary('cos', x);
export const tanh = (x: Tensor) => unary('tanh', x);
export const sigmoid = (x: Tensor) => unary('sigmoid', x);
export const relu = (x: Tensor) => unary('relu', x);
export const silu = (x: Tensor) => unary('silu', x);
export const square = (x: Tensor) => unary('square', x);
export const reciprocal = (x: Tensor) => unary('reciprocal', x);
export const floor = (x: Tensor) => unary('floor', x);
export const ceil = (x: Tensor) => unary('ceil', x);
export const round = (x: Tensor) => unary('round', x);
export const sign = (x: Tensor) => unary('sign', x);
export const erf = (x: Tensor) => unary('erf', x);
export const log1p = (x: Tensor) => unary('log1p', x);
export const expm1 = (x: Tensor) => unary('expm1', x);
export const logicalNot = (x: Tensor) => unary('logicalNot', x);

/** GELU: exact (erf) by default, or the tanh approximation with {approximate: 'tanh'}. */
export function gelu(x: Tensor, options?: { approximate?: 'none' | 'tanh' }): Tensor {
  const a = checkOptions<{ approximate?: 'none' | 'tanh' }>(options, 'gelu').approximate ?? 'none';
  if (a !== 'none' && a !== 'tanh') throw new ValueError(`gelu: Expected 'none' or 'tanh' for approximate but received ${describe(a)}`);
  return unary(a === 'tanh' ? 'geluTanh' : 'gelu', x);
}

/** cond ? a : b, element-wise with broadcasting; cond is a bool tensor. */
export function where(cond: Tensor, a: TensorOrScalar, b: TensorOrScalar): Tensor {
  checkTensor(cond, 'where', 'cond');
  if (cond.dtype !== 'bool') throw new DTypeError(`where: Expected a bool tensor for cond but received ${describe(cond)}`);
  if (typeof a !== 'number') checkTensor(a, 'where', 'a');
  if (typeof b !== 'number') checkTensor(b, 'where', 'b');
  const like = (typeof a === 'number' ? b : a) as Tensor | number;
  const dev = cond.device;
  const tmp: Tensor[] = [];
  const asT = (v: TensorOrScalar, d: DType): Tensor => {
    if (typeof v === 'number') {
      if (d === 'int32') checkInt32('where', 'the scalar', v);
      const t = empty([], d, dev);
      op.fill({ out: t, value: v });
      tmp.push(t);
      return t;
    }
    if (v.dtype === d) return v;
    const c = cast(v, d);
    tmp.push(c);
    return c;
  };
  try {
    let d: DType;
    if (typeof a !== 'number' && typeof b !== 'number') d = promote(a.dtype, b.dtype);
    else if (typeof like !== 'number') d = like.dtype;
    else d = Number.isInteger(a) && Number.isInteger(b) ? 'float32' : 'float32';
    if (typeof a !== 'number') checkTensor(a, 'where', 'a');
    if (typeof b !== 'number') checkTensor(b, 'where', 'b');
    const ta = asT(a, d);
    const tb = asT(b, d);
    sameDevice('where', cond, ta, tb);
    const shape = broadcastShapes('where', broadcastShapes('where', cond.shape, ta.shape, 'cond', 'a'), tb.shape, 'cond/a', 'b');
    const out = empty(shape, d, dev);
    op.where({ out, cond, a: ta, b: tb });
    return record(out, 'where', [null, ta, tb], [cond, ta, tb]);
  } finally {
    tmp.forEach((t) => t.dispose());
  }
}

/** Limits values to [min, max] (either may be omitted). */
export function clamp(x: Tensor, min?: number, max?: number): Tensor {
  checkTensor(x, 'clamp', 'x');
  if (min === undefined && max === undefined) throw new ValueError('clamp: give min, max or both');
  if (min !== undefined && max !== undefined) {
    const lo = maximum(x, min);
    try {
      return minimum(lo, max);
    } finally {
      lo.dispose();
    }
  }
  return min !== undefined ? maximum(x, min) : minimum(x, max!);
}
