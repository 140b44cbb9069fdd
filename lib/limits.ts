// Size limits, one rule everywhere (creation, views, reads), each refused with a typed error at
// the call instead of a fatal V8 error or minutes of uninterruptible work.
import { MemoryError, ShapeError } from './errors';

/** The most elements a tensor or a view may have, and the largest dimension: 2^36 (68.7 billion). */
export const MAX_ELEMENTS = 2 ** 36;
/** The most bytes one read (data(), dataSync()) returns, after bfloat16 widens to float32: what a Node buffer holds (4 GiB on 64-bit). */
export const MAX_READ_BYTES: number = (require('buffer') as typeof import('buffer')).constants.MAX_LENGTH;
/** The most elements array()/arraySync() turn into nested JavaScript arrays (more would exhaust the heap): 2^25. */
export const MAX_ARRAY_ELEMENTS = 2 ** 25;

/** The number of elements of a shape, or a ShapeError when a dimension or the total passes MAX_ELEMENTS. */
export function checkElements(op: string, shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (d > MAX_ELEMENTS) throw new ShapeError(`${op}: dimension ${d} of shape [${shape.join(', ')}] exceeds the limit of 2^36 elements`);
    n *= d;
  }
  if (n > MAX_ELEMENTS) throw new ShapeError(`${op}: shape [${shape.join(', ')}] has ${n} elements, more than the limit of 2^36`);
  return n;
}

/** A MemoryError saying how to read less when a read would return more than MAX_READ_BYTES (after bfloat16 widens). */
export function checkReadBytes(op: string, decoded: number): void {
  if (decoded > MAX_READ_BYTES) {
    throw new MemoryError(`${op}: the tensor needs ${decoded} bytes, more than one read returns (${MAX_READ_BYTES}); read it in parts (narrow/slice)`);
  }
}
