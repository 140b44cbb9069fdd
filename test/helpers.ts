import * as dr from '../lib';
import { maxErrRatio } from './reference';

/** Tolerances per dtype: atol, rtol. */
export const TOL: Record<string, [number, number]> = {
  float64: [1e-12, 1e-10],
  float32: [1e-5, 1e-4],
  bfloat16: [2e-2, 2e-2],
};

/** Expects got (a tensor or array) to match want within the dtype's budget, naming the first bad element. */
export function expectClose(got: dr.Tensor | ArrayLike<number>, want: ArrayLike<number>, dtype = 'float32', scale = 1): void {
  const g = got instanceof dr.Tensor ? got.dataSync() : got;
  expect(g.length).toBe(want.length);
  const [atol, rtol] = TOL[dtype] ?? TOL.float32;
  const { ratio, at } = maxErrRatio(g, want, atol * scale, rtol * scale);
  if (!(ratio <= 1)) {
    throw new Error(`mismatch at flat index ${at}: got ${g[at]}, want ${want[at]} (error ${ratio.toFixed(2)}x the budget atol=${atol * scale}, rtol=${rtol * scale})`);
  }
}

/** A float tensor with values from the test PRNG. */
export function input(shape: number[], seed: number, dtype: dr.DType = 'float32', lo = -2, hi = 2): { t: dr.Tensor; data: Float64Array } {
  const { randArray } = require('./reference');
  const raw: Float64Array = randArray(shape.reduce((a, b) => a * b, 1), seed, lo, hi);
  const t = dr.tensor(raw, shape, { dtype, device: 'cpu' });
  // the reference sees exactly the stored values (rounded to the dtype)
  const data = Float64Array.from(t.dataSync());
  return { t, data };
}

/**
 * Expects every read of t to raise the failure of the queued op it depends on: an error of
 * class `cls` whose message names `op` and matches `pattern` (when given), from dataSync() and
 * from data() alike.
 */
export async function expectReadFails(t: dr.Tensor, cls: new (...a: never[]) => Error, op: string, pattern?: RegExp): Promise<void> {
  const check = (e: unknown) => {
    expect(e).toBeInstanceOf(cls);
    const msg = (e as Error).message;
    expect(msg.startsWith(`${op} failed: `)).toBe(true);
    if (pattern) expect(msg).toMatch(pattern);
  };
  let syncError: unknown = null;
  try {
    t.dataSync();
  } catch (e) {
    syncError = e;
  }
  expect(syncError).not.toBeNull();
  check(syncError);
  let asyncError: unknown = null;
  await t.data().catch((e) => (asyncError = e));
  expect(asyncError).not.toBeNull();
  check(asyncError);
}

/**
 * Sets a variable of the environment that native kernels read with getenv at each call (undefined
 * removes it). Jest gives a test file a copy of process.env whose writes never reach the C
 * library, so such variables go through the addon; the copy is kept in step for readers in JS.
 */
export function setNativeEnv(name: string, value: string | undefined): void {
  const { native } = require('../lib/native');
  native.setEnv(name, value);
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}
