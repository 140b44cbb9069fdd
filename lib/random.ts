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
