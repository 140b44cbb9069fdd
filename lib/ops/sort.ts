// Scans, selection and sorting along an axis: cumsum, topk, sort, argsort (torch semantics).
// Orders treat NaN as the largest value (numpy's and PyTorch's order); equal values keep their
// index order (topk's ties go to the lower index, sort is stable in both directions).
import { DTypeError, OutOfRangeError, ValueError, describe } from '../errors';
import { op } from '../native';
import { Tensor } from '../tensor';
import { record } from '../tape';
import { cast, contiguous, transpose } from './shape';
import { checkOptions, checkTensor, empty, normAxis } from './util';

export interface CumsumOptions {
  /** Sum from the end of the axis. */
  reverse?: boolean;
  /** Leave each element out of its own sum (the first sum is 0). */
  exclusive?: boolean;
}

function flag(op: string, name: string, v: unknown): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new ValueError(`${op}: Expected a boolean for ${name} but received ${describe(v)}`);
  return v;
}

/**
 * Running sums along axis: out[i] = x[0] + ... + x[i] (reverse: x[i] + ... + x[n-1]; exclusive:
 * without x[i]). int32 sums stay int32 (a sum that leaves int32 is an OutOfRangeError when read);
 * bool counts as int32.
 */
export function cumsum(x: Tensor, axis: number, options: CumsumOptions = {}): Tensor {
  options = checkOptions(options, 'cumsum');
  checkTensor(x, 'cumsum', 'x');
  const reverse = flag('cumsum', 'reverse', options.reverse);
  const exclusive = flag('cumsum', 'exclusive', options.exclusive);
  const a = normAxis(axis, x.ndim, 'cumsum');
  const src = x.dtype === 'bool' ? cast(x, 'int32') : x;
  try {
    const out = empty(x.shape.slice(), src.dtype, x.device);
    op.cumsum({ out, x: src, axis: a, reverse, exclusive });
    return record(out, 'cumsum', [src], [], { axis: a, reverse, exclusive });
  } finally {
    if (src !== x) src.dispose();
  }
}

export interface TopkOptions {
  /** The axis to select along (default: the last). */
  axis?: number;
  /** The largest values (default) or the smallest. */
  largest?: boolean;
}

export interface SortResult {
  values: Tensor;
  /** int32 positions along the axis: values = gather(x, axis, indices). */
  indices: Tensor;
}

// Runs kernel(xLast) on x with `axis` moved last (contiguous), and moves the results back.
function alongLast(name: string, x: Tensor, axis: number, count: number, kernel: (values: Tensor, indices: Tensor, xl: Tensor) => void): SortResult {
  const last = x.ndim - 1;
  const moved = axis !== last;
  const xl = moved ? contiguous(transpose(x, axis, last)) : x;
  try {
    const shape = xl.shape.slice(0, -1).concat([count]);
    const values = empty(shape, x.dtype, x.device);
    const indices = empty(shape, 'int32', x.device);
    kernel(values, indices, xl);
    if (!moved) return { values, indices };
    const back = (t: Tensor) => {
      const v = contiguous(transpose(t, axis, last));
      t.dispose();
      return v;
    };
    return { values: back(values), indices: back(indices) };
  } finally {
    if (xl !== x) xl.dispose();
  }
}

function sortable(name: string, x: Tensor): void {
  checkTensor(x, name, 'x');
  if (x.dtype === 'bool') throw new DTypeError(`${name}: bool tensors are not supported; cast to int32 first`);
  if (x.ndim === 0) throw new ValueError(`${name}: Expected a tensor with at least one dimension but received ${describe(x)}`);
}

/** The k largest (or smallest) values along axis, best first, and their int32 indices. */
export function topk(x: Tensor, k: number, options: TopkOptions = {}): SortResult {
  options = checkOptions(options, 'topk');
  sortable('topk', x);
  const axis = normAxis(options.axis ?? -1, x.ndim, 'topk');
  const largest = options.largest === undefined ? true : flag('topk', 'largest', options.largest);
  const n = x.shape[axis];
  if (typeof k !== 'number' || !Number.isInteger(k) || k < 0 || k > n) {
    throw new OutOfRangeError(`topk: Expected an integer k in [0, ${n}] (the size of axis ${axis}) but received ${describe(k)}`);
  }
  const r = alongLast('topk', x, axis, k, (values, indices, xl) => op.topk({ values, indices, x: xl, k, largest }));
  record(r.values, 'topk', [x], [r.indices], { axis, shape: x.shape.slice() });
  return r;
}

export interface SortOptions {
  /** The axis to sort along (default: the last). */
  axis?: number;
  /** Largest first (default: smallest first). Equal values keep their order either way. */
  descending?: boolean;
}

/** The values along axis in order (stable) and their int32 positions in x. */
export function sort(x: Tensor, options: SortOptions = {}): SortResult {
  options = checkOptions(options, 'sort');
  sortable('sort', x);
  const axis = normAxis(options.axis ?? -1, x.ndim, 'sort');
  const descending = flag('sort', 'descending', options.descending);
  const r = alongLast('sort', x, axis, x.shape[axis], (values, indices, xl) => op.sort({ values, indices, x: xl, descending }));
  record(r.values, 'sort', [x], [r.indices], { axis, shape: x.shape.slice() });
  return r;
}

/** The int32 positions that sort x along axis (stable). */
export function argsort(x: Tensor, options: SortOptions = {}): Tensor {
  const { values, indices } = sort(x, options);
  values.dispose();
  return indices;
}
