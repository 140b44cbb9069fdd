// dtypes: names, native codes, sizes and the typed arrays that hold them in JS.
import { DTypeError, describe } from './errors';

export type DType = 'float32' | 'float64' | 'bfloat16' | 'int32' | 'bool';
export const DTYPES: readonly DType[] = ['float32', 'float64', 'bfloat16', 'int32', 'bool'];

/** Codes shared with native/core/dtype.h. */
export const DTYPE_CODE: Record<DType, number> = { float32: 0, float64: 1, bfloat16: 2, int32: 3, bool: 4 };
export const DTYPE_SIZE: Record<DType, number> = { float32: 4, float64: 8, bfloat16: 2, int32: 4, bool: 1 };

/** What data()/dataSync() return: bfloat16 widens to Float32Array, bool is Uint8Array of 0/1. */
export type DataFor<D extends DType> = D extends 'float64'
  ? Float64Array
  : D extends 'int32'
    ? Int32Array
    : D extends 'bool'
      ? Uint8Array
      : Float32Array;
export type TypedArray = Float32Array | Float64Array | Int32Array | Uint8Array | Uint16Array;

export function isFloat(d: DType): boolean {
  return d === 'float32' || d === 'float64' || d === 'bfloat16';
}

export function checkDType(d: unknown, arg = 'dtype'): DType {
  if (typeof d === 'string' && (DTYPES as readonly string[]).includes(d)) return d as DType;
  throw new DTypeError(`Expected one of ${DTYPES.join(', ')} for ${arg} but received ${describe(d)}`);
}

/** Promotion order for mixed operands: bool < int32 < bfloat16 < float32 < float64. */
const RANK: Record<DType, number> = { bool: 0, int32: 1, bfloat16: 2, float32: 3, float64: 4 };
export function promote(a: DType, b: DType): DType {
  return RANK[a] >= RANK[b] ? a : b;
}

// bfloat16 <-> float32 in JS, round to nearest even (as native/core/dtype.h).
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
export function floatToBf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
export function bf16BitsToFloat(b: number): number {
  u32[0] = b << 16;
  return f32[0];
}

/** Bytes of `values` in the stored layout of `dtype`. */
export function encode(values: ArrayLike<number> | ArrayLike<boolean>, dtype: DType): Uint8Array {
  const n = values.length;
  switch (dtype) {
    case 'float32':
      return u8(values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>, Number));
    case 'float64':
      return u8(values instanceof Float64Array ? values : Float64Array.from(values as ArrayLike<number>, Number));
    case 'int32': {
      if (values instanceof Int32Array) return u8(values);
      const r = new Int32Array(n);
      for (let i = 0; i < n; ++i) {
        const v = Number(values[i]);
        r[i] = Number.isNaN(v) ? 0 : Math.trunc(Math.max(-2147483648, Math.min(2147483647, v)));
      }
      return u8(r);
    }
    case 'bool': {
      const r = new Uint8Array(n);
      for (let i = 0; i < n; ++i) r[i] = values[i] ? 1 : 0;
      return r;
    }
    case 'bfloat16': {
      if (values instanceof Uint16Array) return u8(values);  // raw bits
      const r = new Uint16Array(n);
      for (let i = 0; i < n; ++i) r[i] = floatToBf16Bits(Number(values[i]));
      return u8(r);
    }
  }
}

function u8(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** The JS view of native bytes: bfloat16 is widened to float32. */
export function decode(buf: ArrayBuffer, dtype: DType): TypedArray {
  switch (dtype) {
    case 'float32':
      return new Float32Array(buf);
    case 'float64':
      return new Float64Array(buf);
    case 'int32':
      return new Int32Array(buf);
    case 'bool':
      return new Uint8Array(buf);
    case 'bfloat16': {
      const bits = new Uint16Array(buf);
      const r = new Float32Array(bits.length);
      const ru = new Uint32Array(r.buffer);
      for (let i = 0; i < bits.length; ++i) ru[i] = bits[i] << 16;
      return r;
    }
  }
}
