// Helpers shared by the op modules: output allocation, argument checks, broadcasting.
import { DType, DTYPE_CODE, checkDType } from '../dtype';
import { DEVICE_CODE, Device, checkDevice, defaultDevice } from '../device';
import { DeviceError, OutOfRangeError, ShapeError, ValueError, describe, toTypedError } from '../errors';
import { native } from '../native';
import { Tensor, contiguousStrides } from '../tensor';
import { checkElements } from '../limits';

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
  checkShape(shape, 'empty');
  checkDType(dtype, 'dtype');
  if (device !== undefined) checkDevice(device);
  const dev = device ?? defaultDevice();
  const h = nat(() => native.empty(shape as number[], DTYPE_CODE[dtype], DEVICE_CODE[dev]));
  return new Tensor(h, shape, contiguousStrides(shape), 0, dtype, dev);
}

/** A tensor on the same storage with another shape/strides/offset. */
export function viewOf(t: Tensor, shape: readonly number[], strides: readonly number[], offset: number): Tensor {
  t.checkLive();
  checkElements('view', shape);
  const h = nat(() => native.view(t.handle, shape as number[], strides as number[], offset));
  return new Tensor(h, shape, strides, offset, t.dtype, t.device, t.storage);
}

export function checkTensor(x: unknown, op: string, arg: string): Tensor {
  if (!(x instanceof Tensor)) throw new ValueError(`${op}: Expected a Tensor for ${arg} but received ${describe(x)}`);
  x.checkLive(`${op}: ${arg}`);
  return x;
}

export function checkShape(shape: unknown, op: string, arg = 'shape'): number[] {
  if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) {
    const shown = Array.isArray(shape) ? ` [${shape.map((d) => (typeof d === 'number' ? String(d) : describe(d))).join(', ')}]` : '';
    throw new ShapeError(`${op}: Expected an array of non-negative integers for ${arg} but received ${describe(shape)}${shown}`);
  }
  if (shape.length > 8) throw new ShapeError(`${op}: tensors have at most 8 dimensions, ${arg} has ${shape.length}`);
  checkElements(op, shape);
  return shape.slice();
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
