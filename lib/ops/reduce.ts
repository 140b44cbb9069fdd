// Reductions: sum, mean, max, min over axes (all by default), argmax/argmin over one axis.
import { ReduceName, op } from '../native';
import { DTypeError, ShapeError, ValueError } from '../errors';
import { Tensor } from '../tensor';
import { cast, reshape } from './shape';
import { record } from '../tape';
import { alloc, checkOptions, checkTensor, empty, normAxis } from './util';

export interface ReduceOptions {
  /** Keep reduced axes as size 1. */
  keepDims?: boolean;
}

function axesOf(op: string, x: Tensor, axis?: number | number[]): number[] {
  if (axis === undefined) return x.shape.map((_, i) => i);
  const list = Array.isArray(axis) ? axis : [axis];
  const r = list.map((a) => normAxis(a, x.ndim, op));
  if (new Set(r).size !== r.length) throw new ValueError(`${op}: axes [${list.join(', ')}] repeat an axis`);
  return x.ndim === 0 ? [] : r;
}

function reduceOp(kind: ReduceName, x: Tensor, axis?: number | number[], options: ReduceOptions = {}): Tensor {
  options = checkOptions(options, kind);
  checkTensor(x, kind, 'x');
  const axes = axesOf(kind, x, axis);
  const shape = options.keepDims
    ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d))
    : x.shape.filter((_, i) => !axes.includes(i));
  if ((kind === 'max' || kind === 'min') && axes.some((a) => x.shape[a] === 0)) {
    throw new ShapeError(`${kind}: cannot reduce over an empty axis of shape [${x.shape.join(', ')}]`);
  }
  let src = x;
  if (x.dtype === 'bool') src = cast(x, kind === 'mean' ? 'float32' : 'int32');
  else if (x.dtype === 'int32' && kind === 'mean') src = cast(x, 'float32');
  try {
    const out = alloc(shape, src.dtype, src.device);
    op.reduce({ op: kind, out, x: src, axes });
    // sum and mean need only x's shape for their gradient; max and min find their positions
    const exact = kind === 'max' || kind === 'min';
    return record(out, kind, [src], exact ? [src, out] : [], { axes, shape: src.shape });
  } finally {
    if (src !== x) src.dispose();
  }
}

export const sum = (x: Tensor, axis?: number | number[], options?: ReduceOptions) => reduceOp('sum', x, axis, options);
export const mean = (x: Tensor, axis?: number | number[], options?: ReduceOptions) => reduceOp('mean', x, axis, options);
export const max = (x: Tensor, axis?: number | number[], options?: ReduceOptions) => reduceOp('max', x, axis, options);
export const min = (x: Tensor, axis?: number | number[], options?: ReduceOptions) => reduceOp('min', x, axis, options);

function argOp(name: 'argmax' | 'argmin', x: Tensor, axis?: number, options: ReduceOptions = {}): Tensor {
  options = checkOptions(options, name);
  checkTensor(x, name, 'x');
  if (x.dtype === 'bool') throw new DTypeError(`${name}: bool tensors are not supported; cast to int32 first`);
  let src = x;
  let a: number;
  if (axis === undefined) {
    src = reshape(x, [-1]);
    a = 0;
  } else {
    a = normAxis(axis, x.ndim, name);
  }
  try {
    if (src.ndim === 0) {
      const z = empty([], 'int32', x.device);
      op.fill({ out: z, value: 0 });
      return z;
    }
    if (src.shape[a] === 0) throw new ShapeError(`${name}: axis ${a} is empty`);
    const shape = options.keepDims && axis !== undefined
      ? src.shape.map((d, i) => (i === a ? 1 : d))
      : src.shape.filter((_, i) => i !== a);
    const out = empty(shape, 'int32', x.device);
    op.argReduce({ op: name, out, x: src, axis: a });
    return out;
  } finally {
    if (src !== x) src.dispose();
  }
}

/** Index of the largest value along axis (of the flattened tensor when omitted); first wins ties, NaN counts as largest. */
export const argmax = (x: Tensor, axis?: number, options?: ReduceOptions) => argOp('argmax', x, axis, options);
export const argmin = (x: Tensor, axis?: number, options?: ReduceOptions) => argOp('argmin', x, axis, options);
