// Helpers shared by the op modules: output allocation, argument checks, broadcasting.
import { DType, DTYPE_CODE, checkDType } from '../dtype';
import { DEVICE_CODE, Device, checkDevice, defaultDevice } from '../device';
import { DeviceError, OutOfRangeError, ShapeError, ValueError, describe, toTypedError } from '../errors';
import { emptyOf, viewFrom } from '../native';
import { Tensor, contiguousStrides, copyOf, frozen, makeTensor, rowMajorStrides } from '../tensor';
import { MAX_ELEMENTS, checkElements } from '../limits';

/** Runs a native call, mapping its errors to typed ones. */
export function nat<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toTypedError(e);
  }
}

/** A new uninitialised contiguous tensor. */
export function empty(shape: readonly number[], dtype: DType = 'float32', device?: Device): Tensor {
  assertShape(shape, 'empty');
  return allocChecked(frozen(shape), shape, dtype, device);
}

/**
 * @internal empty() for the ops: `shape` is a fresh array the caller hands over (it is frozen
 * in place and becomes the tensor's) or a tensor's own (frozen, shared).
 */
export function alloc(shape: readonly number[], dtype: DType = 'float32', device?: Device): Tensor {
  assertShape(shape, 'empty');
  const s = Object.isFrozen(shape) ? shape : Object.freeze(shape as number[]);
  return allocChecked(s, null, dtype, device);
}

// s: the output's frozen shape; given: the array the caller passed when s is a copy of it
function allocChecked(s: readonly number[], given: readonly number[] | null, dtype: DType, device: Device | undefined): Tensor {
  if (dtype !== 'float32') checkDType(dtype, 'dtype');
  const dev = device === undefined ? defaultDevice() : device === 'cpu' ? device : checkDevice(device);
  let h: number;
  try {
    h = emptyOf(s, DTYPE_CODE[dtype], DEVICE_CODE[dev]);
  } catch (e) {
    throw toTypedError(e);
  }
  // a shape another tensor has (frozen, shared) has its strides made once; a new one its own
  const strides = s === given || given === null ? rowMajorStrides(s) : Object.freeze(contiguousStrides(s));
  return makeTensor(h, s, strides, 0, dtype, dev);
}

/** @internal A new contiguous tensor of x's shape (shared) on x's device, of dtype (x's by default). */
export function allocLike(x: Tensor, dtype: DType = x.dtype): Tensor {
  let h: number;
  try {
    h = emptyOf(x.shape, dtype === 'float32' ? 0 : DTYPE_CODE[dtype], x.device === 'cpu' ? 0 : DEVICE_CODE[x.device]);
  } catch (e) {
    throw toTypedError(e);
  }
  return makeTensor(h, x.shape, rowMajorStrides(x.shape), 0, dtype, x.device);
}

/**
 * A tensor on the same storage with another shape/strides/offset. The arrays are the caller's
 * to hand over: fresh ones (frozen in place, they become the view's) or a tensor's own.
 */
export function viewOf(t: Tensor, shape: readonly number[], strides: readonly number[], offset: number): Tensor {
  t.checkLive();
  checkElements('view', shape);
  let h: number;
  try {
    h = viewFrom(t.handle, shape, strides, offset);
  } catch (e) {
    throw toTypedError(e);
  }
  const s = shape === t.shape ? shape : Object.freeze(shape as number[]);
  const st = strides === t.strides ? strides : Object.freeze(strides as number[]);
  return makeTensor(h, s, st, offset, t.dtype, t.device, t.storage);
}

export function checkTensor(x: unknown, op: string, arg: string): Tensor {
  if (!(x instanceof Tensor)) throw new ValueError(`${op}: Expected a Tensor for ${arg} but received ${describe(x)}`);
  if (x.isDisposed) x.checkLive(`${op}: ${arg}`);  // (the message is made only when it throws)
  return x;
}

export function checkShape(shape: unknown, op: string, arg = 'shape'): number[] {
  assertShape(shape, op, arg);
  return copyOf(shape as readonly number[]);
}

/** Throws a ShapeError unless shape is an array of at most 8 non-negative integers within the element limit. */
function assertShape(shape: unknown, op: string, arg = 'shape'): void {
  let ok = Array.isArray(shape);
  if (ok) {
    const a = shape as unknown[];
    for (let i = 0; i < a.length; ++i) {
      const d = a[i];
      if (!(typeof d === 'number' && Number.isInteger(d) && d >= 0)) {
        ok = false;
        break;
      }
    }
  }
  if (!ok) {
    const shown = Array.isArray(shape) ? ` [${shape.map((d) => (typeof d === 'number' ? String(d) : describe(d))).join(', ')}]` : '';
    throw new ShapeError(`${op}: Expected an array of non-negative integers for ${arg} but received ${describe(shape)}${shown}`);
  }
  const s = shape as readonly number[];
  if (s.length > 8) throw new ShapeError(`${op}: tensors have at most 8 dimensions, ${arg} has ${s.length}`);
  let n = 1;
  for (let i = 0; i < s.length; ++i) n *= s[i];
  if (!(n <= MAX_ELEMENTS)) checkElements(op, s);  // (throws its error; a 0 hides a huge dimension, so look then too)
  else if (n === 0) checkElements(op, s);
}

/** Refuses a callback that is not a function. */
export function checkFunction(v: unknown, op: string, arg: string): void {
  if (typeof v !== 'function') throw new ValueError(`${op}: Expected a function for ${arg} but received ${describe(v)}`);
}

/** An options argument: undefined (none) or a plain object. */
export function checkOptions<T extends object>(v: unknown, op: string, arg = 'options'): T {
  if (v === undefined) return {} as T;
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new ValueError(`${op}: Expected an object for ${arg} but received ${describe(v)}`);
  return v as T;
}

/** Normalises an axis (negative counts from the end). */
export function normAxis(axis: number, ndim: number, op: string, arg = 'axis'): number {
  if (!Number.isInteger(axis) || axis < -Math.max(ndim, 1) || axis >= Math.max(ndim, 1)) {
    throw new OutOfRangeError(`${op}: Expected an integer in [${-Math.max(ndim, 1)}, ${Math.max(ndim, 1) - 1}] for ${arg} but received ${describe(axis)}`);
  }
  return axis < 0 ? axis + Math.max(ndim, 1) : axis;
}

export function sameDevice(op: string, ...ts: Tensor[]): Device {
  const d = ts[0].device;
  for (const t of ts) {
    if (t.device !== d) {
      throw new DeviceError(`${op}: expected all tensors on one device but received ${describe(ts[0])} and ${describe(t)}`);
    }
  }
  return d;
}

/** True when two shapes are equal. */
export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; ++i) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * The broadcast of two shapes as broadcastShapes gives it, but a itself or b itself when it
 * equals one of them (a tensor's frozen shape, shared by the output: no copy).
 */
export function broadcastShapesOf(op: string, a: readonly number[], b: readonly number[], an = 'a', bn = 'b'): readonly number[] {
  if (sameShape(a, b)) return a;
  const r = broadcastShapes(op, a, b, an, bn);
  return sameShape(r, a) ? a : sameShape(r, b) ? b : r;
}

/** The broadcast of two shapes (numpy rules), or a ShapeError naming both. */
export function broadcastShapes(op: string, a: readonly number[], b: readonly number[], an = 'a', bn = 'b'): number[] {
  const n = Math.max(a.length, b.length);
  const r = new Array<number>(n);
  for (let i = 0; i < n; ++i) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new ShapeError(`${op}: shapes [${a.join(', ')}] (${an}) and [${b.join(', ')}] (${bn}) do not broadcast (dimension ${i}: ${da} vs ${db})`);
    }
    r[i] = da === 1 ? db : da;
  }
  return r;
}

export const INT32_MIN = -(2 ** 31);
export const INT32_MAX = 2 ** 31 - 1;

/** Refuses a value an int32 tensor cannot hold (it would be clamped or wrapped). */
export function checkInt32(op: string, arg: string, v: number): number {
  if (!(v >= INT32_MIN && v <= INT32_MAX)) {
    throw new OutOfRangeError(`${op}: ${arg} ${describe(v)} does not fit in int32 [${INT32_MIN}, ${INT32_MAX}]`);
  }
  return v;
}

/** checkInt32 over data bound for an int32 tensor (checks the extremes, then reports the first offender). */
export function checkInt32Data(op: string, data: ArrayLike<number> | ArrayLike<boolean>): void {
  if (data instanceof Int32Array || data instanceof Uint8Array || data instanceof Int16Array || data instanceof Int8Array || data instanceof Uint16Array) return;
  for (let i = 0; i < data.length; ++i) {
    const v = Number(data[i]);
    if (!(v >= INT32_MIN && v <= INT32_MAX)) checkInt32(op, `data[${i}]`, v);
  }
}

export function resolveDevice(d: unknown): Device {
  return d === undefined ? defaultDevice() : checkDevice(d);
}
export function resolveDType(d: unknown, fallback: DType = 'float32'): DType {
  return d === undefined ? fallback : checkDType(d);
}
