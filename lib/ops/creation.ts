// Creating tensors: from data, constants, ranges and random draws.
import { DType, DTYPE_CODE, encode, isFloat } from '../dtype';
import { DEVICE_CODE, Device } from '../device';
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { native, op } from '../native';
import { Generator, defaultGenerator } from '../random';
import { NestedArray, Tensor, contiguousStrides, sizeOf } from '../tensor';
import { checkInt32, checkInt32Data, checkOptions, checkShape, checkTensor, empty, nat, resolveDType, resolveDevice } from './util';

export interface CreateOptions {
  dtype?: DType;
  device?: Device;
}
export interface RandomOptions extends CreateOptions {
  generator?: Generator;
}

type Data = number | boolean | NestedArray | Float32Array | Float64Array | Int32Array | Uint8Array | Uint16Array |
  Int8Array | Int16Array | Uint32Array | number[] | boolean[];

function inferShape(data: unknown): number[] {
  const shape: number[] = [];
  let cur: unknown = data;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    cur = cur[0];
  }
  return shape;
}

function flatten(data: unknown, shape: number[], d: number, out: Array<number | boolean>): void {
  if (d === shape.length) {
    if (typeof data !== 'number' && typeof data !== 'boolean') {
      throw new ValueError(`tensor: Expected a number or boolean at depth ${d} but received ${describe(data)}`);
    }
    out.push(data);
    return;
  }
  if (!Array.isArray(data) || data.length !== shape[d]) {
    throw new ShapeError(`tensor: the nested arrays are ragged: expected ${shape[d]} entries at depth ${d} but received ${describe(data)}`);
  }
  for (const x of data) flatten(x, shape, d + 1, out);
}

/**
 * A tensor from data: a number, boolean, (nested) array or typed array.
 *   tensor([[1, 2], [3, 4]])                      // float32 [2, 2]
 *   tensor(new Int32Array([1, 2, 3]), [3])        // int32
 *   tensor(data, [2, 3], { dtype: 'bfloat16', device: 'cuda' })
 */
export function tensor(data: Data, shape?: number[], options: CreateOptions = {}): Tensor {
  options = checkOptions(options, 'tensor');
  if (shape !== undefined && shape !== null && !Array.isArray(shape) && typeof shape === 'object') {
    options = checkOptions(shape, 'tensor');
    shape = undefined;
  }
  let flat: ArrayLike<number> | ArrayLike<boolean>;
  let inferred: number[];
  let natural: DType = 'float32';
  if (ArrayBuffer.isView(data)) {
    flat = data as unknown as ArrayLike<number>;
    inferred = [flat.length];
    if (data instanceof Int32Array) natural = 'int32';
    else if (data instanceof Float64Array) natural = 'float64';
  } else if (typeof data === 'number' || typeof data === 'boolean') {
    flat = [data] as ArrayLike<number>;
    inferred = [];
    if (typeof data === 'boolean') natural = 'bool';
  } else if (Array.isArray(data)) {
    inferred = inferShape(data);
    const out: Array<number | boolean> = [];
    flatten(data, inferred, 0, out);
    flat = out as ArrayLike<number>;
    if (out.length > 0 && typeof out[0] === 'boolean') natural = 'bool';
  } else {
    throw new ValueError(`tensor: Expected a number, boolean, array or typed array for data but received ${describe(data)}`);
  }
  const dtype = resolveDType(options.dtype, natural);
  const device = resolveDevice(options.device);
  const finalShape = shape === undefined ? inferred : checkShape(shape, 'tensor');
  const n = sizeOf(finalShape);
  if (n !== flat.length) {
    throw new ShapeError(`tensor: shape [${finalShape.join(', ')}] needs ${n} values but data has ${flat.length}`);
  }
  if (data instanceof Uint16Array && dtype !== 'bfloat16') {
    // plain numbers
    flat = Array.from(data);
  }
  if (dtype === 'int32') checkInt32Data('tensor', flat);
  const bytes = encode(flat, dtype);
  const h = nat(() => native.fromBytes(bytes, finalShape, DTYPE_CODE[dtype], DEVICE_CODE[device]));
  return new Tensor(h, finalShape, contiguousStrides(finalShape), 0, dtype, device);
}

/** A scalar (0-d) tensor. */
export function scalar(value: number | boolean, options: CreateOptions = {}): Tensor {
  options = checkOptions(options, 'scalar');
  return tensor(value, [], options);
}

export function full(shape: number[], value: number | boolean, options: CreateOptions = {}): Tensor {
  options = checkOptions(options, 'full');
  const s = checkShape(shape, 'full');
  if (typeof value !== 'number' && typeof value !== 'boolean') throw new ValueError(`full: Expected a number or boolean for value but received ${describe(value)}`);
  const dtype = resolveDType(options.dtype, typeof value === 'boolean' ? 'bool' : 'float32');
  if (dtype === 'int32') checkInt32('full', 'value', Number(value));
  const t = empty(s, dtype, resolveDevice(options.device));
  op.fill({ out: t, value: Number(value) });
  return t;
}
export function zeros(shape: number[], options: CreateOptions = {}): Tensor {
  options = checkOptions(options, 'zeros');
  return full(shape, 0, options);
}
export function ones(shape: number[], options: CreateOptions = {}): Tensor {
  options = checkOptions(options, 'ones');
  return full(shape, 1, options);
}
export function zerosLike(t: Tensor, options?: CreateOptions): Tensor {
  return fullLikeOf('zerosLike', t, 0, options);
}
export function onesLike(t: Tensor, options?: CreateOptions): Tensor {
  return fullLikeOf('onesLike', t, 1, options);
}
export function fullLike(t: Tensor, value: number, options?: CreateOptions): Tensor {
  return fullLikeOf('fullLike', t, value, options);
}
function fullLikeOf(op: string, t: Tensor, value: number, options?: CreateOptions): Tensor {
  checkTensor(t, op, 't');
  const o = checkOptions<CreateOptions>(options, op);
  return full(t.shape.slice(), value, { dtype: t.dtype, device: t.device, ...o });
}

/**
 * Values from start (inclusive) to stop (exclusive) by step: arange(5), arange(2, 10, 2).
 * dtype defaults to int32 when all arguments are integers, else float32.
 */
export function arange(start: number, stop?: number, step = 1, options: CreateOptions = {}): Tensor {
  options = checkOptions(options, 'arange');
  if (stop === undefined) {
    stop = start;
    start = 0;
  }
  for (const [v, n] of [[start, 'start'], [stop, 'stop'], [step, 'step']] as const) {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ValueError(`arange: Expected a finite number for ${n} but received ${describe(v)}`);
  }
  if (step === 0) throw new ValueError('arange: step must not be 0');
  const count = Math.max(0, Math.ceil((stop - start) / step));
  const allInt = Number.isInteger(start) && Number.isInteger(stop) && Number.isInteger(step);
  const dtype = resolveDType(options.dtype, allInt ? 'int32' : 'float32');
  if (dtype === 'int32' && count > 0) {
    checkInt32('arange', 'start', start);
    checkInt32('arange', 'the last value', start + (count - 1) * step);
  }
  const t = empty([count], dtype, resolveDevice(options.device));
  op.arange({ out: t, start, step });
  return t;
}

function randomDraw(name: string, shape: number[], kind: 'uniform' | 'normal', a: number, b: number, options: RandomOptions,
                    natural: DType): Tensor {
  const s = checkShape(shape, name);
  const dtype = resolveDType(options.dtype, natural);
  if (kind === 'normal' && !isFloat(dtype)) throw new DTypeError(`${name}: Expected a float dtype but received ${dtype}`);
  if (dtype === 'bool') throw new DTypeError(`${name}: bool is not a random dtype`);
  for (const [v, n] of [[a, kind === 'normal' ? 'mean' : 'low'], [b, kind === 'normal' ? 'std' : 'high']] as const) {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ValueError(`${name}: Expected a finite number for ${n} but received ${describe(v)}`);
  }
  if (kind === 'normal' && b < 0) throw new ValueError(`${name}: Expected std >= 0 but received ${b}`);
  if (kind === 'uniform' && b < a) throw new ValueError(`${name}: Expected low <= high but received ${a} and ${b}`);
  if (dtype === 'int32') {
    checkInt32(name, 'low', a);
    checkInt32(name, 'high - 1', b - 1);
  }
  const gen = options.generator ?? defaultGenerator;
  if (!(gen instanceof Generator)) throw new ValueError(`${name}: Expected a Generator for generator but received ${describe(gen)}`);
  const n = sizeOf(s);
  const offset = gen.take(kind === 'normal' ? 2 * n : n);
  const t = empty(s, dtype, resolveDevice(options.device));
  op.random({ out: t, kind, seed: gen.seed, offset, a, b });
  return t;
}

/** Uniform in [low, high) (default [0, 1)). */
export function rand(shape: number[], options: RandomOptions & { low?: number; high?: number } = {}): Tensor {
  options = checkOptions(options, 'rand');
  return randomDraw('rand', shape, 'uniform', options.low ?? 0, options.high ?? 1, options, 'float32');
}
/** Normal with the given mean and std (default 0, 1). */
export function randn(shape: number[], options: RandomOptions & { mean?: number; std?: number } = {}): Tensor {
  options = checkOptions(options, 'randn');
  return randomDraw('randn', shape, 'normal', options.mean ?? 0, options.std ?? 1, options, 'float32');
}
/** Integers uniform in [low, high), int32 by default. */
export function randint(low: number, high: number, shape: number[], options: RandomOptions = {}): Tensor {
  options = checkOptions(options, 'randint');
  if (!Number.isInteger(low) || !Number.isInteger(high) || high <= low) {
    throw new ValueError(`randint: Expected integers low < high but received ${describe(low)} and ${describe(high)}`);
  }
  return randomDraw('randint', shape, 'uniform', low, high, options, 'int32');
}
