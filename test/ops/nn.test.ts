import * as dr from '../../lib';
import { expectClose, expectReadFails, input } from '../helpers';
import { alongAxis, logSoftmaxRow, softmaxRow, unaryRef } from '../reference';

describe('softmax / logSoftmax', () => {
  const cases: Array<[number[], number]> = [[[7, 33], -1], [[1], 0], [[4, 129, 3], 1], [[2, 3, 1000], 2], [[5, 6], 0], [[3, 17], -1]];
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
    test(dtype, () => {
      dr.tidy(() => {
        cases.forEach(([shape, axis], i) => {
          const { t, data } = input(shape, 50 + i, dtype, -6, 6);
          const a = axis < 0 ? axis + shape.length : axis;
          expectClose(dr.softmax(t, axis), alongAxis(data, shape, a, softmaxRow), dtype);
          expectClose(dr.logSoftmax(t, axis), alongAxis(data, shape, a, logSoftmaxRow), dtype);
        });
      });
    });
  }

  test('large logits do not overflow; -inf entries get probability 0', () => {
    dr.tidy(() => {
      const x = dr.tensor([[1000, 1001, 999], [-Infinity, 0, 0]]);
      expectClose(x.softmax(), [...softmaxRow([0, 1, -1]), 0, 0.5, 0.5]);
      const ls = x.logSoftmax().dataSync();
      expect(ls[3]).toBe(-Infinity);
    });
  });

  test('a NaN anywhere in a row, +inf, or a row of -inf only give a row of NaN (float32, bfloat16)', () => {
    // rows of 19: the NaN / inf sits in a full vector (index 3) or in the tail past the last (17);
    // rows of 150: in a block of four vectors (70, read with the previous row's exp pass on the
    // wide path), a single vector after the blocks (140) or the scalar tail (149)
    for (const [cols, spots] of [[19, [3, 17]], [150, [70, 140, 149]]] as Array<[number, number[]]>) {
      const rows: number[][] = [];
      for (const at of spots) {
        for (const special of [NaN, Infinity]) {
          const r = Array.from({ length: cols }, (_, j) => Math.sin(j));
          r[at] = special;
          rows.push(r);
        }
      }
      rows.push(new Array(cols).fill(-Infinity));
      const fine = Array.from({ length: cols }, (_, j) => Math.cos(j) * 3);
      rows.push(fine);
      for (const dtype of ['float32', 'bfloat16'] as dr.DType[]) {
        dr.tidy(() => {
          const x = dr.tensor(rows.flat(), [rows.length, cols], { dtype });
          for (const y of [x.softmax(-1), x.logSoftmax(-1)]) {
            const v = y.dataSync();
            for (let r = 0; r < rows.length - 1; ++r) {
              expect([dtype, r, Array.from(v.slice(r * cols, (r + 1) * cols)).every(Number.isNaN)]).toEqual([dtype, r, true]);
            }
            expect(Array.from(v.slice((rows.length - 1) * cols)).some(Number.isNaN)).toBe(false);
          }
          const fx = Float64Array.from(x.dataSync().slice((rows.length - 1) * cols));
          expectClose(dr.narrow(x.softmax(-1), 0, rows.length - 1, 1), softmaxRow(Array.from(fx)), dtype, dtype === 'bfloat16' ? 3 : 1);
        });
      }
    }
  });

  test('wide rows through the vector paths: terms near float underflow, masked -inf classes, large spreads', () => {
    // log-softmax and cross-entropy sum the exp terms with a cheaper exp than softmax stores:
    // rows of 4-vector blocks (and a tail) whose terms span e^0 .. e^-87 (the edge of float's
    // normal range), blocks with a lane below it (-inf, -200: the fallback), checked tightly
    dr.tidy(() => {
      const C = 157;
      const rows: number[][] = [];
      const rnd = (i: number) => Math.sin(i * 12.9898) * 43758.5453 % 1;
      rows.push(Array.from({ length: C }, (_, j) => -87.5 * Math.abs(rnd(j))));            // all near range
      rows.push(Array.from({ length: C }, (_, j) => 30 - 87.3 * Math.abs(rnd(j + 500))));  // shifted by the max
      rows.push(Array.from({ length: C }, (_, j) => (j % 7 === 2 ? -Infinity : 5 * rnd(j + 900))));
      rows.push(Array.from({ length: C }, (_, j) => (j % 11 === 0 ? -200 : 40 * rnd(j + 1300))));
      rows.push(Array.from({ length: C }, (_, j) => 1000 + 3 * rnd(j + 1700)));
      // one logit 150 above the rest, in each vector of a 4-vector block and in the tail: a row's
      // max (taken during the previous row's exp pass) must see it, or e^(x - max) overflows
      for (const at of [5, 20, 37, 60, 100, 150, 156]) rows.push(Array.from({ length: C }, (_, j) => (j === at ? 150 : 3 * rnd(j + at))));
      const x = dr.tensor(rows.flat(), [rows.length, C]);
      const data = Float64Array.from(x.dataSync());
      const want = alongAxis(data, [rows.length, C], 1, logSoftmaxRow);
      const got = x.logSoftmax(-1).dataSync();
      for (let i = 0; i < got.length; ++i) {
        if (want[i] === -Infinity) {
          expect(got[i]).toBe(-Infinity);
          continue;
        }
        // the lse's error budget: 4 float ulps of the larger of |x| and |lse|
        const lse = data[i] - want[i];
        const budget = 4 * 2 ** -24 * Math.max(1, Math.abs(data[i]), Math.abs(lse));
        if (!(Math.abs(got[i] - want[i]) <= budget)) throw new Error(`logSoftmax at ${i}: got ${got[i]}, want ${want[i]}`);
      }
      const sm = x.softmax(-1).dataSync();
      for (let i = 0; i < sm.length; ++i) {
        const w = Math.exp(want[i]);
        if (!(Math.abs(sm[i] - w) <= 1e-7 + 4e-6 * w)) throw new Error(`softmax at ${i}: got ${sm[i]}, want ${w}`);
      }
      const targets = rows.map((_, r) => (r * 31) % C === 2 ? 3 : (r * 31) % C);
      const loss = dr.crossEntropy(x, dr.tensor(new Int32Array(targets)), { reduction: 'none' }).dataSync();
      rows.forEach((_, r) => {
        const w = -want[r * C + targets[r]];
        const budget = 4 * 2 ** -24 * Math.max(1, Math.abs(data[r * C + targets[r]]), Math.abs(w));
        if (!(Math.abs(loss[r] - w) <= budget)) throw new Error(`crossEntropy row ${r}: got ${loss[r]}, want ${w}`);
      });
      // its gradient: softmax - onehot (the summed loss's dloss = 1)
      const xg = x.clone();
      xg.requiresGrad = true;
      dr.crossEntropy(xg, dr.tensor(new Int32Array(targets)), { reduction: 'sum' }).backward();
      const grad = xg.grad!.dataSync();
      for (let i = 0; i < grad.length; ++i) {
        const r = Math.floor(i / C);
        const wg = Math.exp(want[i]) - (i % C === targets[r] ? 1 : 0);
        // (the saved lse is a float: its rounding, half an ulp of |lse|, shifts every p of the row)
        const lse = want[i] === -Infinity ? 0 : data[i] - want[i];
        if (!(Math.abs(grad[i] - wg) <= 1e-7 + (4e-6 + 2 ** -24 * Math.abs(lse)) * Math.abs(wg))) throw new Error(`crossEntropy gradient at ${i}: got ${grad[i]}, want ${wg}`);
      }
    });
  });

  test('a strided input (transposed view)', () => {
    dr.tidy(() => {
      const { t, data } = input([9, 4], 8);
      const want = alongAxis(data, [9, 4], 0, softmaxRow);
      const got = t.T.softmax(-1).T.contiguous();
      expectClose(got, want);
    });
  });
});

describe('RMSNorm and LayerNorm', () => {
  const shapes = [[5, 64], [1, 1], [3, 7, 129], [2, 1000], [33, 3]];
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
    test(`rmsNorm ${dtype}`, () => {
      dr.tidy(() => {
        shapes.forEach((shape, i) => {
          const d = shape[shape.length - 1];
          const { t, data } = input(shape, 60 + i, dtype);
          const w = input([d], 160 + i, dtype, 0.5, 1.5);
          const eps = 1e-5;
          const want = alongAxis(data, shape, shape.length - 1, (row) => {
            const ms = row.reduce((a, v) => a + v * v, 0) / row.length;
            const r = 1 / Math.sqrt(ms + eps);
            return row.map((v, j) => v * r * w.data[j]);
          });
          expectClose(dr.rmsNorm(t, w.t, eps), want, dtype);
          const noW = alongAxis(data, shape, shape.length - 1, (row) => {
            const ms = row.reduce((a, v) => a + v * v, 0) / row.length;
            return row.map((v) => v / Math.sqrt(ms + eps));
          });
          expectClose(t.rmsNorm(null, eps), noW, dtype);
        });
      });
    });
    test(`layerNorm ${dtype}`, () => {
      dr.tidy(() => {
        shapes.forEach((shape, i) => {
          const d = shape[shape.length - 1];
          const { t, data } = input(shape, 70 + i, dtype, -3, 5);
          const w = input([d], 170 + i, dtype, 0.5, 1.5);
          const b = input([d], 270 + i, dtype);
          const eps = 1e-5;
          const want = alongAxis(data, shape, shape.length - 1, (row) => {
            const mean = row.reduce((a, v) => a + v, 0) / row.length;
            const v = row.reduce((a, x) => a + (x - mean) ** 2, 0) / row.length;
            return row.map((x, j) => ((x - mean) / Math.sqrt(v + eps)) * w.data[j] + b.data[j]);
          });
          expectClose(dr.layerNorm(t, w.t, b.t, eps), want, dtype, d === 1 ? 1e3 : 1);
        });
      });
    });
  }

  test('argument errors', () => {
    dr.tidy(() => {
      expect(() => dr.rmsNorm(dr.zeros([2, 4]), dr.ones([3]))).toThrow(/Expected shape \[4\] for weight/);
      expect(() => dr.layerNorm(dr.zeros([2, 4]), null, null, -1)).toThrow(dr.ValueError);
      expect(() => dr.rmsNorm(dr.tensor(new Int32Array([1, 2])))).toThrow(dr.DTypeError);
    });
  });
});

describe('activations', () => {
  test('gelu (erf and tanh), silu, swiglu', () => {
    dr.tidy(() => {
      const { t, data } = input([7, 10], 5, 'float32', -5, 5);
      expectClose(dr.gelu(t), Array.from(data, unaryRef.gelu));
      expectClose(t.gelu({ approximate: 'tanh' }), Array.from(data, unaryRef.geluTanh));
      expectClose(dr.silu(t), Array.from(data, unaryRef.silu));
      const sw = dr.swiglu(t);
      expect(sw.shape).toEqual([7, 5]);
      const want: number[] = [];
      for (let r = 0; r < 7; ++r) for (let j = 0; j < 5; ++j) want.push(unaryRef.silu(data[r * 10 + j]) * data[r * 10 + 5 + j]);
      expectClose(sw, want);
    });
  });
  test('swiglu, wide rows and float64/bfloat16', () => {
    for (const dtype of ['float64', 'bfloat16', 'float32'] as dr.DType[]) {
      dr.tidy(() => {
        const { t, data } = input([3, 2 * 67], 9, dtype);
        const want: number[] = [];
        for (let r = 0; r < 3; ++r) for (let j = 0; j < 67; ++j) want.push(unaryRef.silu(data[r * 134 + j]) * data[r * 134 + 67 + j]);
        expectClose(t.swiglu(), want, dtype);
      });
    }
    expect(() => dr.swiglu(dr.zeros([2, 3]))).toThrow(/even size/);
  });
});

describe('crossEntropy', () => {
  function ref(logits: Float64Array, rows: number, C: number, t: number[], s: number, ignore: number): number[] {
    const out: number[] = [];
    for (let r = 0; r < rows; ++r) {
      const row = Array.from(logits.slice(r * C, (r + 1) * C));
      if (t[r] === ignore) {
        out.push(0);
        continue;
      }
      const lp = logSoftmaxRow(row);
      out.push(-(1 - s) * lp[t[r]] - (s / C) * lp.reduce((a, v) => a + v, 0));
    }
    return out;
  }
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
    test(`per-row, sum and mean, with smoothing and ignored rows, ${dtype}`, () => {
      dr.tidy(() => {
        for (const [rows, C] of [[9, 5], [1, 1], [4, 1000], [33, 130]]) {
          const { t, data } = input([rows, C], rows + C, dtype, -4, 4);
          const targets = Array.from({ length: rows }, (_, i) => (i % 4 === 3 ? -100 : (i * 7) % C));
          const tt = dr.tensor(new Int32Array(targets));
          for (const s of [0, 0.125]) {
            const want = ref(data, rows, C, targets, s, -100);
            expectClose(dr.crossEntropy(t, tt, { labelSmoothing: s, reduction: 'none' }), want, dtype === 'bfloat16' ? 'float32' : dtype, 10);
            const counted = targets.filter((x) => x !== -100).length;
            const sum = want.reduce((a, v) => a + v, 0);
            expectClose(dr.crossEntropy(t, tt, { labelSmoothing: s, reduction: 'sum' }), [sum], 'float32', 10 * Math.sqrt(rows));
            expectClose(dr.crossEntropy(t, tt, { labelSmoothing: s }), [counted ? sum / counted : NaN], 'float32', 10);
          }
        }
      });
    });
  }
  test('leading dims and out-of-range targets', async () => {
    const [lossBad, logits] = dr.tidy(() => {
      const logits = dr.zeros([2, 3, 4]);
      const t = dr.tensor(new Int32Array([0, 1, 2, 3, 0, 1]), [2, 3]);
      expect(dr.crossEntropy(logits, t, { reduction: 'none' }).shape).toEqual([2, 3]);
      expectClose(dr.crossEntropy(logits, t), [Math.log(4)]);
      expect(() => dr.crossEntropy(logits, dr.zeros([2, 3]))).toThrow(dr.DTypeError);
      // an out-of-range target is data: the op fails while it runs, and every read of what
      // depends on it (the mean loss here) raises that failure
      const bad = dr.tensor(new Int32Array([0, 1, 7, 3, 0, 1]), [2, 3]);
      return [dr.crossEntropy(logits, bad), logits];
    });
    await expectReadFails(lossBad, dr.OutOfRangeError, 'crossEntropy', /target 7 at row 2 is outside \[0, 4\)/);
    dr.dispose([lossBad, logits]);
  });
});

describe('norms at the edges of the float range', () => {
  // the exact result, computed scaled so that the reference itself cannot overflow
  function normRef(row: number[], layer: boolean, eps: number): number[] {
    const m = layer ? row.reduce((a, b) => a + b / row.length, 0) : 0;
    const dev = row.map((v) => v - m);
    const amax = Math.max(...dev.map(Math.abs));
    if (amax === 0) return row.map(() => 0);
    const q = dev.reduce((a, d) => a + (d / amax) ** 2, 0) / row.length;
    return dev.map((d) => (d / amax) / Math.sqrt(q + eps / (amax * amax)));
  }
  const rows: Array<[number[], number]> = [
    [[1e20, -1e20], 1e-5], [[3e38, -3e38, 1e38], 1e-5], [[3e38, 3e38, 1], 1e-5], [[1e-30, -1e-30, 3e-30], 0],
    [[1e-40, -2e-40], 0], [[1e19, 2e19, -3e19, 5e18], 1e-6], [[0, 0, 0], 1e-5],
  ];
  for (const dtype of ['float32', 'bfloat16'] as const) {
    test(`layerNorm and rmsNorm rows whose squares leave ${dtype}'s float range are computed exactly`, () => {
      for (const [row, eps] of rows) {
        if (dtype === 'bfloat16' && Math.max(...row.map(Math.abs)) < 1e-38) continue; // below bf16's normals
        dr.tidy(() => {
          const x = dr.tensor([row], undefined, { dtype });
          const xs = Array.from(x.dataSync());
          const tol = dtype === 'bfloat16' ? 'bfloat16' : 'float32';
          expectClose(dr.layerNorm(x, null, null, eps), normRef(xs, true, eps), tol);
          expectClose(dr.rmsNorm(x, null, eps), normRef(xs, false, eps), tol);
        });
      }
    });
  }
  test('float64 rows past 1e154 (squares overflow a double) too, and NaN still propagates', () => {
    dr.tidy(() => {
      const x = dr.tensor([[1e200, -1e200, 3e199]], undefined, { dtype: 'float64' });
      expectClose(dr.layerNorm(x, null, null, 1e-5), normRef([1e200, -1e200, 3e199], true, 1e-5), 'float64');
      expect(Array.from(dr.layerNorm(dr.tensor([[NaN, 1, 2]])).dataSync()).every(Number.isNaN)).toBe(true);
      expect(Array.from(dr.rmsNorm(dr.tensor([[Infinity, 1]])).dataSync()).some(Number.isNaN)).toBe(true);
    });
  });
});
