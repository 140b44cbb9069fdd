// The native backward kernels and fused optimizer steps (lib/ops/grad_kernels.ts), against
// float64 references written from the formulas with plain loops, and (for softmax, the norms,
// cross-entropy and SwiGLU) against central finite differences of the library's own forward
// in float64.
import * as dr from '../../lib';
import {
  adamwStep, crossEntropyBackward, crossEntropyWithLse, layerNormBackward, layerNormWithStats, rmsNormBackward,
  rmsNormWithStats, sgdStep, softmaxBackward, swigluBackward, unaryBackward,
} from '../../lib/ops/grad_kernels';
import { native, UNARY_OPS, UnaryName } from '../../lib/native';
import { addRmsNormBackward } from '../../lib/ops/fused';
import { expectClose, expectReadFails, input, setNativeEnv } from '../helpers';
import { erf, erfc, prng, unaryRef } from '../reference';

const DTYPES: dr.DType[] = ['float32', 'float64', 'bfloat16'];
// loose budgets for bfloat16 outputs (8 bits of mantissa, and the kernels' float math on
// bf16-rounded inputs): scale on TOL.bfloat16
const BF16_SCALE = 3;
const scaleOf = (dtype: dr.DType) => (dtype === 'bfloat16' ? BF16_SCALE : 1);

const ROW_SHAPES: Array<[number, number]> = [[1, 1], [3, 7], [33, 64], [3, 257], [1, 1031], [33, 7]];

function data(t: dr.Tensor): Float64Array {
  return Float64Array.from(t.dataSync());
}

function f64(values: ArrayLike<number>, shape: number[]): dr.Tensor {
  return dr.tensor(Float64Array.from(values), shape, { dtype: 'float64', device: 'cpu' });
}

/** Indices to probe with finite differences: all of them for small tensors, else a sample. */
function probe(n: number, seed: number, k = 12): number[] {
  if (n <= k) return Array.from({ length: n }, (_, i) => i);
  const r = prng(seed);
  const s = new Set<number>([0, n - 1]);
  while (s.size < k) s.add(Math.floor(r() * n));
  return [...s];
}

/**
 * Central differences of f(x) (a float64 scalar function of a flat array) at the probed
 * indices, compared with grad. eps 1e-6, tolerance 1e-6 (relative to max(1, |grad|)).
 */
function checkFD(name: string, x: Float64Array, grad: ArrayLike<number>, f: (x: Float64Array) => number, seed: number): void {
  const eps = 1e-6;
  for (const i of probe(x.length, seed)) {
    const xp = Float64Array.from(x);
    const xm = Float64Array.from(x);
    xp[i] += eps;
    xm[i] -= eps;
    const num = (f(xp) - f(xm)) / (2 * eps);
    const err = Math.abs(num - grad[i]) / Math.max(1, Math.abs(grad[i]));
    if (!(err <= 1e-6)) throw new Error(`${name}: finite difference at ${i}: numeric ${num}, analytic ${grad[i]} (error ${err})`);
  }
}

/** sum(out * w) for a float64 tensor out, disposing out. */
function dotWith(out: dr.Tensor, w: ArrayLike<number>): number {
  const o = out.dataSync();
  let s = 0;
  for (let i = 0; i < o.length; ++i) s += o[i] * w[i];
  out.dispose();
  return s;
}

// ---- softmax -------------------------------------------------------------------------------

function softmaxBackwardRef(y: Float64Array, dy: Float64Array, shape: number[], axis: number, log: boolean): Float64Array {
  const outer = shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const dim = shape[axis];
  const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const dx = new Float64Array(y.length);
  for (let o = 0; o < outer; ++o) {
    for (let i = 0; i < inner; ++i) {
      const at = (d: number) => (o * dim + d) * inner + i;
      let s = 0;
      for (let d = 0; d < dim; ++d) s += log ? dy[at(d)] : dy[at(d)] * y[at(d)];
      for (let d = 0; d < dim; ++d) dx[at(d)] = log ? dy[at(d)] - Math.exp(y[at(d)]) * s : y[at(d)] * (dy[at(d)] - s);
    }
  }
  return dx;
}

describe('softmaxBackward', () => {
  const cases: Array<[number[], number]> = [
    ...ROW_SHAPES.map(([r, c]): [number[], number] => [[r, c], 1]),
    [[4, 5, 3], 1], [[7, 4], 0], [[2, 1031, 2], 1], [[5], 0],
  ];
  for (const dtype of DTYPES) {
    for (const log of [false, true]) {
      test(`${log ? 'log-' : ''}softmax ${dtype}`, () => {
        dr.tidy(() => {
          cases.forEach(([shape, axis], k) => {
            const { t } = input(shape, 10 + k, dtype, -4, 4);
            const y = log ? dr.logSoftmax(t, axis) : dr.softmax(t, axis);
            const { t: dy, data: dyd } = input(shape, 100 + k, dtype);
            const dx = softmaxBackward(y, dy, axis, log);
            expect(dx.dtype).toBe(dtype);
            expect(dx.shape).toEqual(shape);
            expectClose(dx, softmaxBackwardRef(data(y), dyd, shape, axis, log), dtype, scaleOf(dtype));
          });
        });
      });
    }
  }

  test('matches finite differences of the float64 forward', () => {
    dr.tidy(() => {
      cases.forEach(([shape, axis], k) => {
        for (const log of [false, true]) {
          const { t, data: x } = input(shape, 20 + k, 'float64', -3, 3);
          const { t: dy, data: dyd } = input(shape, 200 + k, 'float64');
          const y = log ? dr.logSoftmax(t, axis) : dr.softmax(t, axis);
          const dx = data(softmaxBackward(y, dy, axis, log));
          checkFD(`softmax ${shape} log=${log}`, x, dx, (xs) => dr.tidy(() => {
            const xt = f64(xs, shape);
            return dotWith(log ? dr.logSoftmax(xt, axis) : dr.softmax(xt, axis), dyd);
          }), k);
        }
      });
    });
  });

  test('a broadcast (stride 0) upstream gradient and a negative axis', () => {
    dr.tidy(() => {
      const { t } = input([3, 9], 5, 'float64');
      const y = dr.softmax(t, -1);
      const ones = dr.tensor([1], [1], { dtype: 'float64' }).expand([3, 9]);
      const dx = softmaxBackward(y, ones, -1, false);
      // d/dx sum(softmax) = 0
      expectClose(dx, new Float64Array(27), 'float64');
    });
  });
});

// ---- RMSNorm / LayerNorm -----------------------------------------------------------------

interface NormRef { dx: Float64Array; dw: Float64Array; db: Float64Array }

function normBackwardRef(layer: boolean, x: Float64Array, w: Float64Array | null, dy: Float64Array, rows: number, cols: number, eps: number): NormRef {
  const dx = new Float64Array(rows * cols), dw = new Float64Array(cols), db = new Float64Array(cols);
  for (let r = 0; r < rows; ++r) {
    const xr = x.subarray(r * cols, (r + 1) * cols);
    const g = dy.subarray(r * cols, (r + 1) * cols);
    let mean = 0;
    if (layer) {
      for (let j = 0; j < cols; ++j) mean += xr[j];
      mean /= cols;
    }
    let ss = 0;
    for (let j = 0; j < cols; ++j) ss += (xr[j] - mean) ** 2;
    const rstd = 1 / Math.sqrt(ss / cols + eps);
    const xhat = Array.from(xr, (v) => (v - mean) * rstd);
    const gw = Array.from(g, (v, j) => v * (w ? w[j] : 1));
    let mg = 0, mgx = 0;
    for (let j = 0; j < cols; ++j) {
      mg += gw[j] / cols;
      mgx += gw[j] * xhat[j] / cols;
    }
    for (let j = 0; j < cols; ++j) {
      dx[r * cols + j] = rstd * (gw[j] - (layer ? mg : 0) - xhat[j] * mgx);
      dw[j] += g[j] * xhat[j];
      db[j] += g[j];
    }
  }
  return { dx, dw, db };
}

describe('rmsNormBackward / layerNormBackward', () => {
  const eps = 1e-5;
  for (const layer of [false, true]) {
    for (const dtype of DTYPES) {
      test(`${layer ? 'layerNorm' : 'rmsNorm'} ${dtype}`, () => {
        dr.tidy(() => {
          ROW_SHAPES.forEach(([rows, cols], k) => {
            for (const withW of [true, false]) {
              const { t: x, data: xd } = input([rows, cols], 30 + k, dtype, -2, 3);
              const w = input([cols], 130 + k, dtype, 0.5, 1.5);
              const b = input([cols], 230 + k, dtype);
              const { t: dy, data: dyd } = input([rows, cols], 330 + k, dtype);
              const weight = withW ? w.t : null;
              const want = normBackwardRef(layer, xd, withW ? w.data : null, dyd, rows, cols, eps);
              // a float64 reduction over up to 33 rows of bf16 products: a looser budget
              const s = scaleOf(dtype);
              if (layer) {
                const { y, mean, rstd } = layerNormWithStats(x, weight, withW ? b.t : null, eps);
                expect(mean.dtype).toBe(dtype === 'float64' ? 'float64' : 'float32');
                expect(y.shape).toEqual([rows, cols]);
                const res = layerNormBackward(x, weight, mean, rstd, dy, true, true);
                expectClose(res.dx, want.dx, dtype, s);
                if (withW) expectClose(res.dweight!, want.dw, dtype, s);
                else expect(res.dweight).toBeNull();
                expectClose(res.dbias!, want.db, dtype, s);
                const noGrads = layerNormBackward(x, weight, mean, rstd, dy, false, false);
                expect(noGrads.dweight).toBeNull();
                expect(noGrads.dbias).toBeNull();
                expectClose(noGrads.dx, want.dx, dtype, s);
              } else {
                const { y, rstd } = rmsNormWithStats(x, weight, eps);
                expect(rstd.dtype).toBe(dtype === 'float64' ? 'float64' : 'float32');
                expect(y.shape).toEqual([rows, cols]);
                const res = rmsNormBackward(x, weight, rstd, dy, true);
                expectClose(res.dx, want.dx, dtype, s);
                if (withW) expectClose(res.dweight!, want.dw, dtype, s);
                else expect(res.dweight).toBeNull();
              }
            }
          });
        });
      });
    }

    test(`${layer ? 'layerNorm' : 'rmsNorm'} matches finite differences (x, weight, bias) in float64`, () => {
      dr.tidy(() => {
        ROW_SHAPES.forEach(([rows, cols], k) => {
          const shape = [rows, cols];
          const { t: x, data: xd } = input(shape, 40 + k, 'float64', -2, 3);
          const { t: w, data: wd } = input([cols], 140 + k, 'float64', 0.5, 1.5);
          const { t: b, data: bd } = input([cols], 240 + k, 'float64');
          const { t: dy, data: dyd } = input(shape, 340 + k, 'float64');
          const fwd = (xs: Float64Array, ws: Float64Array, bs: Float64Array) => dr.tidy(() => {
            const xt = f64(xs, shape), wt = f64(ws, [cols]);
            return dotWith(layer ? dr.layerNorm(xt, wt, f64(bs, [cols]), eps) : dr.rmsNorm(xt, wt, eps), dyd);
          });
          let dx: Float64Array, dw: Float64Array, db: Float64Array | null = null;
          if (layer) {
            const { mean, rstd } = layerNormWithStats(x, w, b, eps);
            const r = layerNormBackward(x, w, mean, rstd, dy, true, true);
            [dx, dw, db] = [data(r.dx), data(r.dweight!), data(r.dbias!)];
          } else {
            const { rstd } = rmsNormWithStats(x, w, eps);
            const r = rmsNormBackward(x, w, rstd, dy, true);
            [dx, dw] = [data(r.dx), data(r.dweight!)];
          }
          checkFD(`norm dx ${shape}`, xd, dx, (xs) => fwd(xs, wd, bd), k);
          checkFD(`norm dweight ${shape}`, wd, dw, (ws) => fwd(xd, ws, bd), k + 1);
          if (db) checkFD(`norm dbias ${shape}`, bd, db, (bs) => fwd(xd, wd, bs), k + 2);
        });
      });
    });
  }

  test('float64 statistics are exact; wrong statistics dtypes are rejected', () => {
    dr.tidy(() => {
      const { t: x, data: xd } = input([3, 7], 1, 'float64');
      const { rstd } = rmsNormWithStats(x, null, 1e-6);
      const r = data(rstd);
      for (let i = 0; i < 3; ++i) {
        let ss = 0;
        for (let j = 0; j < 7; ++j) ss += xd[i * 7 + j] ** 2;
        expect(Math.abs(r[i] - 1 / Math.sqrt(ss / 7 + 1e-6))).toBeLessThan(1e-13);
      }
      const f32stats = dr.ones([3], { dtype: 'float32' });
      expect(() => rmsNormBackward(x, null, f32stats, x, false)).toThrow(dr.DTypeError);
      expect(() => rmsNormBackward(x, null, dr.ones([4], { dtype: 'float64' }), x, false)).toThrow(dr.ShapeError);
      expect(() => rmsNormBackward(x, null, rstd, dr.ones([3, 8], { dtype: 'float64' }), false)).toThrow(dr.ShapeError);
    });
  });
});

// ---- cross-entropy ---------------------------------------------------------------------------

function ceBackwardRef(x: Float64Array, t: number[], dl: Float64Array, rows: number, C: number, ignore: number, s: number): Float64Array {
  const dx = new Float64Array(rows * C);
  for (let r = 0; r < rows; ++r) {
    if (t[r] === ignore) continue;
    const xr = x.subarray(r * C, (r + 1) * C);
    let m = -Infinity;
    for (const v of xr) m = Math.max(m, v);
    let sum = 0;
    for (const v of xr) sum += Math.exp(v - m);
    const lse = m + Math.log(sum);
    for (let j = 0; j < C; ++j) dx[r * C + j] = dl[r] * (Math.exp(xr[j] - lse) - (j === t[r] ? 1 - s : 0) - s / C);
  }
  return dx;
}

describe('crossEntropyBackward', () => {
  const IGNORE = -100;
  const targetsFor = (rows: number, C: number, seed: number) => {
    const r = prng(seed);
    return Array.from({ length: rows }, (_, i) => (rows > 1 && i % 5 === 2 ? IGNORE : Math.floor(r() * C)));
  };
  for (const dtype of DTYPES) {
    test(dtype, () => {
      dr.tidy(() => {
        ROW_SHAPES.forEach(([rows, C], k) => {
          for (const s of [0, 0.25]) {
            const { t: x, data: xd } = input([rows, C], 50 + k, dtype, -5, 5);
            const tg = targetsFor(rows, C, 150 + k);
            const tt = dr.tensor(tg, [rows], { dtype: 'int32' });
            const { loss, lse } = crossEntropyWithLse(x, tt, IGNORE, s);
            const sd = dtype === 'float64' ? 'float64' : 'float32';
            expect(loss.dtype).toBe(sd);
            expect(lse.dtype).toBe(sd);
            const { t: dl, data: dld } = input([rows], 250 + k, sd);
            const dx = crossEntropyBackward(x, tt, lse, dl, IGNORE, s);
            expect(dx.dtype).toBe(dtype);
            expectClose(dx, ceBackwardRef(xd, tg, dld, rows, C, IGNORE, s), dtype, scaleOf(dtype));
          }
        });
      });
    });
  }

  test('matches finite differences of the float64 forward', () => {
    dr.tidy(() => {
      ROW_SHAPES.forEach(([rows, C], k) => {
        for (const s of [0, 0.25]) {
          const { t: x, data: xd } = input([rows, C], 60 + k, 'float64', -5, 5);
          const tg = targetsFor(rows, C, 160 + k);
          const tt = dr.tensor(tg, [rows], { dtype: 'int32' });
          const { lse } = crossEntropyWithLse(x, tt, IGNORE, s);
          const { t: dl, data: dld } = input([rows], 260 + k, 'float64');
          const dx = data(crossEntropyBackward(x, tt, lse, dl, IGNORE, s));
          checkFD(`crossEntropy ${rows}x${C} s=${s}`, xd, dx, (xs) => dr.tidy(() => {
            const r = crossEntropyWithLse(f64(xs, [rows, C]), tt, IGNORE, s);
            return dotWith(r.loss, dld);
          }), k);
        }
      });
    });
  });

  test('a broadcast float32 upstream gradient is accepted for float64 logits; bad targets fail the op', async () => {
    const bad = dr.tensor([0, 6, 1, 1], [4], { dtype: 'int32' });
    const dxBad = dr.tidy(() => {
      const { t: x, data: xd } = input([4, 6], 3, 'float64');
      const tt = dr.tensor([0, 5, IGNORE, 2], [4], { dtype: 'int32' });
      const { lse } = crossEntropyWithLse(x, tt, IGNORE, 0);
      const g = dr.tensor([0.5], [1], { dtype: 'float32' }).expand([4]);
      const dx = crossEntropyBackward(x, tt, lse, g, IGNORE, 0);
      expectClose(dx, ceBackwardRef(xd, [0, 5, IGNORE, 2], new Float64Array(4).fill(0.5), 4, 6, IGNORE, 0), 'float64');
      return crossEntropyBackward(x, bad, lse, g, IGNORE, 0);
    });
    await expectReadFails(dxBad, dr.OutOfRangeError, 'crossEntropyBackward', /target 6 .*outside \[0, 6\)/);
    dr.dispose([bad, dxBad]);
  });
});

// ---- unary ------------------------------------------------------------------------------------

const PHI = (x: number) => Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);
const unaryGradRef: Record<Exclude<UnaryName, 'logicalNot'>, (x: number) => number> = {
  neg: () => -1,
  abs: (x) => Math.sign(x),
  exp: Math.exp,
  log: (x) => 1 / x,
  sqrt: (x) => 0.5 / Math.sqrt(x),
  rsqrt: (x) => -0.5 * x ** -1.5,
  sin: Math.cos,
  cos: (x) => -Math.sin(x),
  tanh: (x) => 1 - Math.tanh(x) ** 2,
  sigmoid: (x) => {
    const s = 1 / (1 + Math.exp(-x));
    return s * (1 - s);
  },
  relu: (x) => (x > 0 ? 1 : 0),
  gelu: (x) => 0.5 * (1 + erf(x / Math.SQRT2)) + x * PHI(x),
  geluTanh: (x) => {
    const k = Math.sqrt(2 / Math.PI), c = 0.044715;
    const t = Math.tanh(k * (x + c * x ** 3));
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x);
  },
  silu: (x) => {
    const s = 1 / (1 + Math.exp(-x));
    return s * (1 + x * (1 - s));
  },
  square: (x) => 2 * x,
  reciprocal: (x) => -1 / (x * x),
  floor: () => 0,
  ceil: () => 0,
  round: () => 0,
  sign: () => 0,
  erf: (x) => (2 / Math.sqrt(Math.PI)) * Math.exp(-x * x),
  log1p: (x) => 1 / (1 + x),
  expm1: Math.exp,
};
const POSITIVE = new Set(['log', 'sqrt', 'rsqrt', 'reciprocal', 'log1p']);
const PIECEWISE = new Set(['floor', 'ceil', 'round', 'sign', 'abs', 'relu']);

describe('unaryBackward', () => {
  test('the reference derivatives match finite differences of the reference functions', () => {
    for (const op of Object.keys(unaryGradRef) as Array<keyof typeof unaryGradRef>) {
      if (PIECEWISE.has(op)) continue;
      for (const x of POSITIVE.has(op) ? [0.3, 1.1, 2.5] : [-2.1, -0.4, 0.7, 1.9]) {
        const h = 1e-6;
        const num = (unaryRef[op](x + h) - unaryRef[op](x - h)) / (2 * h);
        expect(Math.abs(num - unaryGradRef[op](x))).toBeLessThan(1e-6 * Math.max(1, Math.abs(num)));
      }
    }
  });

  for (const dtype of DTYPES) {
    test(dtype, () => {
      dr.tidy(() => {
        (Object.keys(unaryGradRef) as Array<keyof typeof unaryGradRef>).forEach((op, k) => {
          // [5, 8191]: more than one thread's share, cut at offsets that are not whole vectors
          for (const shape of [[1], [3, 7], [33, 257], [5, 8191]]) {
            const [lo, hi] = POSITIVE.has(op) ? [0.25, 3] : [-3, 3];
            const { t: x, data: xd } = input(shape, 70 + k, dtype, lo, hi);
            const { t: dy, data: dyd } = input(shape, 170 + k, dtype);
            const dx = unaryBackward(op, x, dy);
            expect(dx.dtype).toBe(dtype);
            const want = Float64Array.from(xd, (v, i) => dyd[i] * unaryGradRef[op](v));
            try {
              expectClose(dx, want, dtype, scaleOf(dtype));
            } catch (e) {
              throw new Error(`${op} ${shape}: ${(e as Error).message}`);
            }
          }
        });
      });
    });
  }

  // The vector forms (exp, sigmoid, tanh, erfc) take a fast path per vector when every lane
  // is in range. An odd value (NaN, +-inf, huge, tiny, past the fast ranges) at any position
  // of a row must not change its neighbours' bits, and its own result must be the one it gets
  // alone; over a length with the first and last lane of every vector and a tail, in float32
  // and bfloat16 (which computes through the same float lanes).
  for (const dtype of ['float32', 'bfloat16'] as dr.DType[]) {
    test(`${dtype}: an odd lane in every position leaves the other lanes alone`, () => {
      const odd = [NaN, Infinity, -Infinity, 3e38, -3e38, 1e30, -1e30, 200, -200, 100, -100, 89, -88, 20, -20, 5.5, -5.5, 1e-30, 0];
      const n = 77;  // blocks of 4 vectors, single vectors and a tail (see elementwise.test.ts)
      const base = Array.from({ length: n }, (_, i) => Math.sin(i * 1.7) * 3);
      const bits = (t: dr.Tensor) => Array.from(t.dataSync(), (v) => (Number.isNaN(v) ? 'NaN' : Object.is(v, -0) ? '-0' : String(v)));
      dr.tidy(() => {
        const dy = dr.tensor(base.map((_, i) => 1 + 0.25 * Math.cos(i)), [n], { dtype });
        for (const op of ['exp', 'sigmoid', 'silu', 'tanh', 'gelu', 'geluTanh', 'erf'] as const) {
          const want0 = bits(unaryBackward(op, dr.tensor(base, [n], { dtype }), dy));
          const bad: string[] = [];
          for (const o of odd) {
            const alone = bits(unaryBackward(op, dr.tensor([o], [1], { dtype }), dr.tensor([1], [1], { dtype })));
            for (let p = 0; p < n; ++p) {
              const x = base.slice();
              x[p] = o;
              const g = base.map((_, i) => (i === p ? 1 : 1 + 0.25 * Math.cos(i)));
              const got = bits(unaryBackward(op, dr.tensor(x, [n], { dtype }), dr.tensor(g, [n], { dtype })));
              if (got[p] !== alone[0]) bad.push(`${op}'(${o}) at ${p} = ${got[p]}, alone ${alone[0]}`);
              for (let i = 0; i < n; ++i) {
                if (i !== p && got[i] !== want0[i]) bad.push(`${op}: lane ${i} changed by ${o} at ${p}: ${got[i]} vs ${want0[i]}`);
              }
            }
          }
          expect(bad.slice(0, 5)).toEqual([]);
        }
      });
    });
  }

  // GELU's gradient Phi(x) + x phi(x) from its fast form (|x| <= 5) and from the erfc form
  // beyond, against float64 with erfc's tail: relatively accurate down to x = -12 (where the
  // gradient is about -1e-31); near its zero at x = -0.75 the error is absolute.
  test('gelu gradient keeps its relative accuracy over [-12, 12] (float32)', () => {
    const xs = Float32Array.from({ length: 2401 }, (_, i) => -12 + i * 0.01);
    dr.tidy(() => {
      const got = unaryBackward('gelu', dr.tensor(xs), dr.onesLike(dr.tensor(xs))).dataSync() as Float32Array;
      const bad: string[] = [];
      xs.forEach((v, i) => {
        const want = 0.5 * erfc(-v / Math.SQRT2) + v * PHI(v);
        const tol = (4e-7 + 1.5e-7 * v * v) * Math.abs(want) + (Math.abs(v) < 2 ? 1e-7 : 0);
        if (!(Math.abs(got[i] - want) <= tol)) bad.push(`gelu'(${v}) = ${got[i]}, want ${want}`);
      });
      expect(bad.slice(0, 5)).toEqual([]);
    });
  });

  test('every op but logicalNot has a gradient; logicalNot throws', () => {
    expect(UNARY_OPS.filter((o) => !(o in unaryGradRef))).toEqual(['logicalNot']);
    dr.tidy(() => {
      const x = dr.ones([2]);
      expect(() => unaryBackward('logicalNot', x, x)).toThrow(dr.ValueError);
      expect(() => unaryBackward('exp', x, dr.ones([3]))).toThrow(dr.ShapeError);
    });
  });
});

// ---- SwiGLU -----------------------------------------------------------------------------------

function swigluBackwardRef(x: Float64Array, dy: Float64Array, rows: number, h: number): Float64Array {
  const dx = new Float64Array(rows * 2 * h);
  for (let r = 0; r < rows; ++r) {
    for (let j = 0; j < h; ++j) {
      const a = x[r * 2 * h + j], b = x[r * 2 * h + h + j], g = dy[r * h + j];
      const s = 1 / (1 + Math.exp(-a));
      dx[r * 2 * h + j] = g * b * s * (1 + a * (1 - s));
      dx[r * 2 * h + h + j] = g * a * s;
    }
  }
  return dx;
}

describe('swigluBackward', () => {
  const shapes: Array<[number, number]> = [[1, 1], [3, 7], [33, 64], [3, 257], [1, 1031]];
  for (const dtype of DTYPES) {
    test(dtype, () => {
      dr.tidy(() => {
        shapes.forEach(([rows, h], k) => {
          const { t: x, data: xd } = input([rows, 2 * h], 80 + k, dtype, -4, 4);
          const { t: dy, data: dyd } = input([rows, h], 180 + k, dtype);
          const dx = swigluBackward(x, dy);
          expect(dx.shape).toEqual([rows, 2 * h]);
          expectClose(dx, swigluBackwardRef(xd, dyd, rows, h), dtype, scaleOf(dtype));
        });
      });
    });
  }

  test('matches finite differences of the float64 forward', () => {
    dr.tidy(() => {
      shapes.forEach(([rows, h], k) => {
        const { t: x, data: xd } = input([rows, 2 * h], 90 + k, 'float64', -4, 4);
        const { t: dy, data: dyd } = input([rows, h], 190 + k, 'float64');
        const dx = data(swigluBackward(x, dy));
        checkFD(`swiglu ${rows}x${h}`, xd, dx, (xs) => dr.tidy(() => dotWith(dr.swiglu(f64(xs, [rows, 2 * h])), dyd)), k);
      });
    });
  });
});

// ---- optimizers --------------------------------------------------------------------------------

describe('adamwStep', () => {
  const cases: Array<[dr.DType, dr.DType]> = [['float32', 'float32'], ['float32', 'bfloat16'], ['float64', 'float64'], ['float64', 'bfloat16']];
  for (const [pd, gd] of cases) {
    test(`param ${pd}, grad ${gd}`, () => {
      dr.tidy(() => {
        for (const n of [1, 7, 1031, 40961]) {
          const o = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
          const { t: p, data: pd0 } = input([n], 11, pd);
          const m = dr.zeros([n], { dtype: pd });
          const v = dr.zeros([n], { dtype: pd });
          const P = Float64Array.from(pd0), M = new Float64Array(n), V = new Float64Array(n);
          for (let step = 1; step <= 6; ++step) {
            const scale = step % 2 ? 1 : 0.5;
            const { t: g, data: gdat } = input([n], 20 + step, gd, -1, 1);
            adamwStep(p, g, m, v, { ...o, step, gradScale: scale });
            for (let i = 0; i < n; ++i) {
              const gi = gdat[i] * scale;
              P[i] -= o.lr * o.weightDecay * P[i];
              M[i] = o.beta1 * M[i] + (1 - o.beta1) * gi;
              V[i] = o.beta2 * V[i] + (1 - o.beta2) * gi * gi;
              const mh = M[i] / (1 - o.beta1 ** step), vh = V[i] / (1 - o.beta2 ** step);
              P[i] -= o.lr * mh / (Math.sqrt(vh) + o.eps);
            }
          }
          expectClose(p, P, pd);
          expectClose(m, M, pd);
          expectClose(v, V, pd);
        }
      });
    });
  }

  test('rejects mismatched state and bad hyper-parameters', () => {
    dr.tidy(() => {
      const p = dr.zeros([4]);
      const o = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1 };
      expect(() => adamwStep(p, dr.zeros([5]), dr.zeros([4]), dr.zeros([4]), o)).toThrow(dr.ShapeError);
      expect(() => adamwStep(p, dr.zeros([4]), dr.zeros([4], { dtype: 'float64' }), dr.zeros([4]), o)).toThrow(dr.DTypeError);
      expect(() => adamwStep(p, dr.zeros([4]), dr.zeros([4]), dr.zeros([4]), { ...o, step: 0 })).toThrow(dr.ValueError);
      expect(() => adamwStep(p, dr.zeros([4]), dr.zeros([4]), dr.zeros([4]), { ...o, beta1: 1 })).toThrow(dr.ValueError);
      expect(() => adamwStep(dr.zeros([4], { dtype: 'bfloat16' }), dr.zeros([4]), dr.zeros([4]), dr.zeros([4]), o)).toThrow(dr.DTypeError);
    });
  });
});

describe('sgdStep', () => {
  const configs = [
    { momentum: 0, dampening: 0, weightDecay: 0, nesterov: false },
    { momentum: 0.9, dampening: 0, weightDecay: 0.01, nesterov: false },
    { momentum: 0.9, dampening: 0.1, weightDecay: 0, nesterov: false },
    { momentum: 0.8, dampening: 0, weightDecay: 0.05, nesterov: true },
  ];
  for (const [pd, gd] of [['float32', 'float32'], ['float64', 'float64'], ['float32', 'bfloat16']] as Array<[dr.DType, dr.DType]>) {
    test(`param ${pd}, grad ${gd}`, () => {
      dr.tidy(() => {
        configs.forEach((c, k) => {
          for (const n of [1, 33, 1031]) {
            const lr = 0.05;
            const { t: p, data: p0 } = input([n], 40 + k, pd);
            const buf = c.momentum ? dr.zeros([n], { dtype: pd }) : null;
            const P = Float64Array.from(p0), B = new Float64Array(n);
            for (let step = 1; step <= 5; ++step) {
              const scale = step === 3 ? 0.25 : 1;
              const { t: g, data: gdat } = input([n], 60 + step, gd);
              sgdStep(p, g, buf, { lr, ...c, gradScale: scale, firstStep: step === 1 });
              for (let i = 0; i < n; ++i) {
                let gi = gdat[i] * scale + c.weightDecay * P[i];
                if (c.momentum) {
                  B[i] = step === 1 ? gi : c.momentum * B[i] + (1 - c.dampening) * gi;
                  gi = c.nesterov ? gi + c.momentum * B[i] : B[i];
                }
                P[i] -= lr * gi;
              }
            }
            expectClose(p, P, pd);
            if (buf) expectClose(buf, B, pd);
          }
        });
      });
    });
  }

  test('momentum without a buffer is rejected', () => {
    dr.tidy(() => {
      const p = dr.zeros([3]);
      expect(() => sgdStep(p, dr.zeros([3]), null, { lr: 0.1, momentum: 0.9, dampening: 0, weightDecay: 0, nesterov: false, firstStep: true })).toThrow(dr.ValueError);
    });
  });
});

// ---- outputs stored around the caches --------------------------------------------------------

// A float32 output of at least DUALROUTE_CPU_STREAM_BYTES (16 MiB by default, never under 256
// KiB) whose rows start on a vector boundary is written with non-temporal stores (SwiGLU forward
// and backward, the norms' output and dx and addRmsNorm's dx, the unary backward of the cheap ops). Each case runs through the
// cache and then around it: the same bits, the float64 reference, and native.cpuStats() says
// the second call did go around (or did not, where a row is unaligned or the op is a GELU).
describe('large outputs stored around the caches', () => {
  const KEY = 'DUALROUTE_CPU_STREAM_BYTES';
  const saved = process.env[KEY];
  afterEach(() => setNativeEnv(KEY, saved));
  const bypassed = () => native.cpuStats().bypassedOutputs;

  /** run() through the cache and around it; the second's values and how many outputs bypassed. */
  function both(run: () => dr.Tensor): { around: Float32Array; count: number } {
    setNativeEnv(KEY, String(2 ** 50));
    const c0 = bypassed();
    const a = run();
    const through = a.dataSync().slice();
    a.dispose();
    expect(bypassed()).toBe(c0);
    setNativeEnv(KEY, '0');
    const b = run();
    const around = b.dataSync().slice();
    b.dispose();
    expect(Buffer.from(around.buffer).equals(Buffer.from(through.buffer))).toBe(true);
    return { around, count: bypassed() - c0 };
  }

  test('swiglu forward and backward', () => {
    dr.tidy(() => {
      // rows of 512 (vector-aligned, 264 KiB out: around) and of 518 floats (2072 bytes, no whole vector of any width: through)
      for (const [rows, h, goes] of [[129, 512, 1], [127, 518, 0], [3, 8, 0]] as const) {
        const { t: x, data: xd } = input([rows, 2 * h], 400 + h, 'float32', -4, 4);
        const { t: dy, data: dyd } = input([rows, h], 500 + h, 'float32');
        const f = both(() => dr.swiglu(x));
        const want = new Float64Array(rows * h);
        for (let r = 0; r < rows; ++r) {
          for (let j = 0; j < h; ++j) {
            const a = xd[r * 2 * h + j];
            want[r * h + j] = (a / (1 + Math.exp(-a))) * xd[r * 2 * h + h + j];
          }
        }
        expectClose(f.around, want, 'float32');
        expect(f.count).toBe(goes);
        const b = both(() => swigluBackward(x, dy));
        expectClose(b.around, swigluBackwardRef(xd, dyd, rows, h), 'float32');
        expect(b.count).toBe(goes);
      }
    });
  });

  test('rmsNorm and layerNorm backward dx', () => {
    dr.tidy(() => {
      for (const layer of [false, true]) {
        for (const [rows, cols, goes] of [[65, 1024, 1], [67, 1002, 0]] as const) {
          const { t: x, data: xd } = input([rows, cols], 600 + cols, 'float32', -2, 3);
          const w = input([cols], 700 + cols, 'float32', 0.5, 1.5);
          const { t: dy, data: dyd } = input([rows, cols], 800 + cols, 'float32');
          const want = normBackwardRef(layer, xd, w.data, dyd, rows, cols, 1e-5);
          // the statistics first: the forward that gives them may itself write around the caches
          const stats = layer ? layerNormWithStats(x, w.t, null, 1e-5) : { mean: null, rstd: rmsNormWithStats(x, w.t, 1e-5).rstd };
          for (const grads of [true, false]) {
            const r = both(() => layer
              ? layerNormBackward(x, w.t, stats.mean!, stats.rstd, dy, grads, grads).dx
              : rmsNormBackward(x, w.t, stats.rstd, dy, grads).dx);
            expectClose(r.around, want.dx, 'float32');
            expect(r.count).toBe(goes);
          }
        }
      }
    });
  });

  test('rmsNorm and layerNorm forward', () => {
    dr.tidy(() => {
      for (const layer of [false, true]) {
        // rows of 1024 floats (260 KiB and more out: around), of 1002 (not a whole vector: through)
        for (const [rows, cols, goes] of [[65, 1024, 1], [67, 1002, 0], [1, 1024, 0]] as const) {
          const { t: x, data: xd } = input([rows, cols], 620 + cols, 'float32', -2, 3);
          const w = input([cols], 720 + cols, 'float32', 0.5, 1.5);
          const b = input([cols], 820 + cols, 'float32', -1, 1);
          const want = new Float64Array(rows * cols);
          for (let r = 0; r < rows; ++r) {
            const row = xd.subarray(r * cols, (r + 1) * cols);
            const mean = layer ? row.reduce((a, v) => a + v, 0) / cols : 0;
            const ms = row.reduce((a, v) => a + (v - mean) * (v - mean), 0) / cols;
            const rstd = 1 / Math.sqrt(ms + 1e-5);
            for (let j = 0; j < cols; ++j) want[r * cols + j] = (row[j] - mean) * rstd * w.data[j] + (layer ? b.data[j] : 0);
          }
          const r = both(() => layer ? dr.layerNorm(x, w.t, b.t, 1e-5) : dr.rmsNorm(x, w.t, 1e-5));
          expectClose(r.around, want, 'float32');
          expect(r.count).toBe(goes);
        }
      }
    });
  });

  test('addRmsNormBackward dx (the fused residual form)', () => {
    dr.tidy(() => {
      for (const [rows, cols, goes] of [[65, 1024, 1], [67, 1002, 0]] as const) {
        const { t: h, data: hd } = input([rows, cols], 610 + cols, 'float32', -2, 3);
        const w = input([cols], 710 + cols, 'float32', 0.5, 1.5);
        const { t: dy, data: dyd } = input([rows, cols], 810 + cols, 'float32');
        const { t: dh, data: dhd } = input([rows, cols], 910 + cols, 'float32');
        const rstd = rmsNormWithStats(h, w.t, 1e-5).rstd;
        const want = normBackwardRef(false, hd, w.data, dyd, rows, cols, 1e-5).dx.map((v, i) => v + dhd[i]);
        for (const grads of [true, false]) {
          const r = both(() => addRmsNormBackward(h, w.t, rstd, dy, dh, grads).dx);
          expectClose(r.around, want, 'float32');
          expect(r.count).toBe(goes);
        }
      }
    });
  });

  test('bfloat16 outputs stay in the cache (and are not counted)', () => {
    dr.tidy(() => {
      // 129 x 1024 bfloat16: 264 KiB and aligned rows, which float32 would stream
      const { t: x } = input([129, 1024], 990, 'bfloat16', -2, 3);
      const w = input([1024], 991, 'bfloat16', 0.5, 1.5).t;
      const { t: dy } = input([129, 1024], 992, 'bfloat16');
      const rstd = rmsNormWithStats(x, w, 1e-5).rstd;
      expect(both(() => rmsNormBackward(x, w, rstd, dy, true).dx).count).toBe(0);
      expect(both(() => unaryBackward('exp', x, dy)).count).toBe(0);
    });
  });

  test('unary backward, a length that is no whole number of vectors', () => {
    dr.tidy(() => {
      const shape = [3, 22001];  // 258 KiB, tasks cut inside vectors
      (['exp', 'sigmoid', 'silu', 'tanh', 'erf', 'gelu', 'geluTanh'] as const).forEach((op, k) => {
        const { t: x, data: xd } = input(shape, 900 + k, 'float32', -3, 3);
        const { t: dy, data: dyd } = input(shape, 950 + k, 'float32');
        const r = both(() => unaryBackward(op, x, dy));
        expectClose(r.around, Float64Array.from(xd, (v, i) => dyd[i] * unaryGradRef[op](v)), 'float32');
        expect(r.count).toBe(op.startsWith('gelu') ? 0 : 1);
      });
    });
  });
});
