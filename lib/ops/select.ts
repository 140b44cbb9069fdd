// Selection helpers routing code needs: maskedFill, bincount, nonzero, multinomial. Each is a
// composition of kernels (where, scatterAdd, cumsum, topk, argmax, Philox draws), so it runs on
// every device those run on and has their gradients.
import { DTypeError, OutOfRangeError, ShapeError, ValueError, describe } from '../errors';
import { isFloat } from '../dtype';
import { Generator } from '../random';
import { Tensor, tidy } from '../tensor';
import { arange, ones, rand, zeros } from './creation';
import { add, floorDiv, log, neg, ne, remainder, where } from './elementwise';
import { scatterAdd } from './indexing';
import { argmax, sum } from './reduce';
import { cast, expand, reshape, stack, unsqueeze } from './shape';
import { cumsum, topk } from './sort';
import { checkOptions, checkTensor } from './util';

/** x with value wherever mask (bool, broadcast to x's shape) is true: where(mask, value, x). */
export function maskedFill(x: Tensor, mask: Tensor, value: number): Tensor {
  checkTensor(x, 'maskedFill', 'x');
  checkTensor(mask, 'maskedFill', 'mask');
  if (mask.dtype !== 'bool') throw new DTypeError(`maskedFill: Expected a bool mask but received ${describe(mask)}`);
  if (typeof value !== 'number' && typeof value !== 'boolean') throw new ValueError(`maskedFill: Expected a number for value but received ${describe(value)}`);
  if (mask.ndim > x.ndim) throw new ShapeError(`maskedFill: mask ${describe(mask)} has more dimensions than x ${describe(x)}`);
  return where(mask, Number(value), x);
}

export interface BincountOptions {
  /** The number of bins: every value must lie in [0, length) (counting from the data would block). */
  length: number;
  /** Per-value weights (float, x's shape): the bins sum them instead of counting. */
  weights?: Tensor;
}

/**
 * Counts of each value of the int32 tensor x (any shape) in `length` bins: int32, or the sum of
 * the weights (weights' dtype, with its gradient). A value outside [0, length) fails the op (an
 * OutOfRangeError when the result is read).
 */
export function bincount(x: Tensor, options: BincountOptions): Tensor {
  options = checkOptions<BincountOptions>(options, 'bincount');
  checkTensor(x, 'bincount', 'x');
  if (x.dtype !== 'int32') throw new DTypeError(`bincount: Expected int32 values but received ${describe(x)}`);
  const { length, weights } = options;
  if (typeof length !== 'number' || !Number.isInteger(length) || length < 0 || length > 2 ** 31 - 1) {
    throw new OutOfRangeError(`bincount: Expected a non-negative integer length (the number of bins) but received ${describe(length)}`);
  }
  if (weights !== undefined) {
    checkTensor(weights, 'bincount', 'weights');
    if (!isFloat(weights.dtype)) throw new DTypeError(`bincount: Expected float weights but received ${describe(weights)}`);
    if (weights.shape.length !== x.shape.length || weights.shape.some((d, i) => d !== x.shape[i])) {
      throw new ShapeError(`bincount: Expected weights of x's shape [${x.shape.join(', ')}] but received ${describe(weights)}`);
    }
  }
  return tidy(() => {
    const flat = reshape(x, [x.size]);
    const src = weights ? reshape(weights, [x.size]) : ones([x.size], { dtype: 'int32', device: x.device });
    const bins = zeros([length], { dtype: weights ? weights.dtype : 'int32', device: x.device });
    return scatterAdd(bins, 0, flat, src);
  });
}

// The flat positions of the nonzero elements of x, in order, given their count; then their
// coordinates [count, ndim].
function nonzeroOf(x: Tensor, m: Tensor, count: number): Tensor {
  return tidy(() => {
    const n = x.size;
    const flat = reshape(m, [n]);
    const slot = cumsum(flat, 0, { exclusive: true });
    // nonzero elements write their position at their slot; the others add 0 to a spare slot
    const target = where(ne(flat, 0), slot, count);
    const pos = where(ne(flat, 0), arange(0, n, 1, { dtype: 'int32', device: x.device }), 0);
    const picked = scatterAdd(zeros([count + 1], { dtype: 'int32', device: x.device }), 0, target, pos).narrow(0, 0, count);
    if (x.ndim === 0) return zeros([count, 0], { dtype: 'int32', device: x.device });
    let stride = 1;
    const cols: Tensor[] = new Array(x.ndim);
    for (let d = x.ndim - 1; d >= 0; --d) {
      cols[d] = remainder(floorDiv(picked, stride), x.shape[d]);
      stride *= x.shape[d];
    }
    return stack(cols, 1);
  });
}

function nonzeroMask(op: string, x: Tensor): Tensor {
  checkTensor(x, op, 'x');
  if (x.size > 2 ** 31 - 1) throw new ShapeError(`${op}: ${describe(x)} has more elements than int32 positions hold`);
  return tidy(() => cast(ne(x.dtype === 'bool' ? cast(x, 'int32') : x, 0), 'int32'));
}

/**
 * The coordinates of the nonzero elements of x, int32 [count, ndim], in row-major order. The
 * count decides the shape, so it is read first: without blocking here (see nonzeroSync).
 */
export async function nonzero(x: Tensor): Promise<Tensor> {
  const m = nonzeroMask('nonzero', x);
  try {
    const total = sum(m);
    const count = (await total.data())[0];
    total.dispose();
    return nonzeroOf(x, m, count);
  } finally {
    m.dispose();
  }
}

/** nonzero, reading the count synchronously (blocks until the queued work that makes x has run). */
export function nonzeroSync(x: Tensor): Tensor {
  const m = nonzeroMask('nonzeroSync', x);
  try {
    const total = sum(m);
    const count = total.dataSync()[0];
    total.dispose();
    return nonzeroOf(x, m, count);
  } finally {
    m.dispose();
  }
}

export interface MultinomialOptions {
  /** Draw with replacement (default false: each category at most once per row). */
  replacement?: boolean;
  generator?: Generator;
}

/**
 * numSamples category indices (int32) per row of probs ([C] or [rows, C], non-negative weights,
 * normalised per row), as torch.multinomial. Without replacement the draws are the top of
 * log p + Gumbel noise (the same distribution as drawing one at a time); with replacement each
 * draw is the argmax of its own noise. The Philox draws make a seed give the same picks on every
 * device. A row must have at least numSamples positive weights without replacement, one with.
 */
export function multinomial(probs: Tensor, numSamples: number, options: MultinomialOptions = {}): Tensor {
  options = checkOptions(options, 'multinomial');
  checkTensor(probs, 'multinomial', 'probs');
  if (!isFloat(probs.dtype)) throw new DTypeError(`multinomial: Expected float probabilities but received ${describe(probs)}`);
  if (probs.ndim !== 1 && probs.ndim !== 2) throw new ShapeError(`multinomial: Expected probs of shape [C] or [rows, C] but received ${describe(probs)}`);
  const replacement = options.replacement ?? false;
  if (typeof replacement !== 'boolean') throw new ValueError(`multinomial: Expected a boolean for replacement but received ${describe(replacement)}`);
  const C = probs.shape[probs.ndim - 1];
  const max = replacement ? Infinity : C;
  if (typeof numSamples !== 'number' || !Number.isInteger(numSamples) || numSamples < 1 || numSamples > max) {
    throw new OutOfRangeError(`multinomial: Expected an integer numSamples in [1, ${replacement ? 'inf' : C}] but received ${describe(numSamples)}`);
  }
  if (C === 0) throw new ShapeError(`multinomial: Expected at least one category but received ${describe(probs)}`);
  return tidy(() => {
    const p = probs.ndim === 1 ? unsqueeze(probs, 0) : probs;
    const rows = p.shape[0];
    const lp = log(cast(p, 'float32'));
    const gumbel = (shape: number[]) => {
      // -log(-log u), u in (0, 1): a draw of exactly 0 would give -inf, so u starts past it
      const u = rand(shape, { device: probs.device, generator: options.generator, low: 2 ** -24, high: 1 });
      return neg(log(neg(log(u))));
    };
    let out: Tensor;
    if (!replacement) {
      out = topk(add(lp, gumbel([rows, C])), numSamples).indices;
    } else {
      const keys = add(expand(unsqueeze(lp, 1), [rows, numSamples, C]), gumbel([rows, numSamples, C]));
      out = argmax(keys, -1);
    }
    return probs.ndim === 1 ? reshape(out, [numSamples]) : out;
  });
}
