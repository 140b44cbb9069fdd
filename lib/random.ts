// Seedable random streams. Draws are Philox4x32-10 (native/core/philox.h) of (seed, counter),
// so the same seed gives the same numbers on the CPU and on CUDA, and a draw of n numbers
// advances the stream's counter by n (2n for normal draws) rounded up to a multiple of 4.
import { ValueError, describe } from './errors';

export class Generator {
  private _seed: number;
  private _offset = 0;

  constructor(seed: number) {
    this._seed = checkSeed(seed);
  }

  get seed(): number {
    return this._seed;
  }
  /** Counter position: the stream index the next draw starts at. */
  get offset(): number {
    return this._offset;
  }

  manualSeed(seed: number): this {
    this._seed = checkSeed(seed);
    this._offset = 0;
    return this;
  }

  /** The state, to save in a checkpoint. */
  getState(): { seed: number; offset: number } {
    return { seed: this._seed, offset: this._offset };
  }
  setState(s: { seed: number; offset: number }): void {
    this._seed = checkSeed(s.seed);
    if (!Number.isSafeInteger(s.offset) || s.offset < 0)
      throw new ValueError(`Expected a non-negative integer for offset but received ${describe(s.offset)}`);
    this._offset = s.offset;
  }

  /**
   * One uniform draw in [0, 1) computed on the host (no op, no device): the same number, and the
   * same advance of the stream, as rand([1], {generator}) on any device.
   */
  uniform(): number {
    return (philoxU32(this._seed, this.take(1)) >>> 8) / 16777216;
  }

  /** @internal Reserves `count` stream positions; returns where they start. */
  take(count: number): number {
    const start = this._offset;
    this._offset += Math.ceil(count / 4) * 4;
    return start;
  }
}

function checkSeed(seed: number): number {
  if (!Number.isSafeInteger(seed) || seed < 0)
    throw new ValueError(`Expected a non-negative safe integer for seed but received ${describe(seed)}`);
  return seed;
}

/** The default generator used when none is given. DUALROUTE_SEED sets its seed (default 0). */
export const defaultGenerator = new Generator(Number(process.env.DUALROUTE_SEED ?? 0) || 0);

/** Re-seeds the default generator. */
export function manualSeed(seed: number): void {
  defaultGenerator.manualSeed(seed);
}

// (hi, lo) 32-bit halves of a * b for 32-bit unsigned a, b
function mulhilo(a: number, b: number): [number, number] {
  const lo = Math.imul(a, b) >>> 0;
  const a0 = a & 0xffff, a1 = a >>> 16, b0 = b & 0xffff, b1 = b >>> 16;
  const mid = a1 * b0 + ((a0 * b0) >>> 16);  // < 2^32 + 2^16: exact in a double
  const mid2 = (mid & 0xffff) + a0 * b1;
  const hi = (a1 * b1 + Math.floor(mid / 65536) + Math.floor(mid2 / 65536)) >>> 0;
  return [hi, lo];
}

/** Element `index` of the Philox4x32-10 stream of `seed` (native/core/philox.h's philox_u32), on the host. */
export function philoxU32(seed: number, index: number): number {
  let k0 = seed % 4294967296 >>> 0, k1 = Math.floor(seed / 4294967296) >>> 0;
  const counter = Math.floor(index / 4);
  let c0 = counter % 4294967296 >>> 0, c1 = Math.floor(counter / 4294967296) >>> 0, c2 = 0, c3 = 0;
  for (let r = 0; r < 10; ++r) {
    const [hi0, lo0] = mulhilo(0xd2511f53, c0);
    const [hi1, lo1] = mulhilo(0xcd9e8d57, c2);
    const n0 = (hi1 ^ c1 ^ k0) >>> 0, n2 = (hi0 ^ c3 ^ k1) >>> 0;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 = (k0 + 0x9e3779b9) >>> 0;
    k1 = (k1 + 0xbb67ae85) >>> 0;
  }
  return [c0, c1, c2, c3][index % 4];
}
