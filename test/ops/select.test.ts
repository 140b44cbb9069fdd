// floorDiv / remainder, maskedFill, bincount, nonzero, multinomial against references written
// from their definitions; gradients; frequencies of the random draws (chi-square bounds).
import * as dr from '../../lib';
import { expectClose, input } from '../helpers';

const pyFloorDiv = (a: number, b: number) => Math.floor(a / b);
const pyMod = (a: number, b: number) => {
  const r = a % b;
  return r !== 0 && r < 0 !== b < 0 ? r + b : r + 0; // + 0: no -0
};

describe('floorDiv and remainder (Python semantics)', () => {
  test('float: every sign combination, scalars both ways, broadcasting', () => {
    dr.tidy(() => {
      const a = [7, -7, 7, -7, 0.75, -0.75, 5.5, -5.5, 0];
      const b = [2, 2, -2, -2, 0.5, 0.5, -1.5, 1.5, 3];
      for (const dtype of ['float32', 'float64'] as dr.DType[]) {
        const ta = dr.tensor(a, [9], { dtype }), tb = dr.tensor(b, [9], { dtype });
        expect(Array.from(dr.floorDiv(ta, tb).dataSync())).toEqual(a.map((x, i) => pyFloorDiv(x, b[i])));
        expectClose(dr.remainder(ta, tb), a.map((x, i) => pyMod(x, b[i])), dtype);
        expect(Array.from(dr.remainder(ta, 4).dataSync())).toEqual(a.map((x) => pyMod(x, 4)));
        expect(Array.from(dr.floorDiv(10, tb).dataSync())).toEqual(b.map((x) => pyFloorDiv(10, x)));
      }
      const z = Array.from(dr.remainder(dr.tensor([1, -1]), 0).dataSync());
      expect(z.every(Number.isNaN)).toBe(true);
      expect(dr.floorDiv(dr.tensor([[1], [2]]), dr.tensor([2, 3])).shape).toEqual([2, 2]);
    });
  });

  test('int32 stays int32; division by 0 gives 0, as div does', () => {
    dr.tidy(() => {
      const a = new Int32Array([7, -7, 7, -7, 5, -2147483648, 9]);
      const b = new Int32Array([2, 2, -2, -2, 0, -1, 3]);
      const q = dr.floorDiv(dr.tensor(a), dr.tensor(b));
      expect(q.dtype).toBe('int32');
      expect(Array.from(q.dataSync())).toEqual([3, -4, -4, 3, 0, -2147483648, 3]);
      expect(Array.from(dr.remainder(dr.tensor(a), dr.tensor(b)).dataSync())).toEqual([1, 1, -1, -1, 0, 0, 0]);
      const r = dr.remainder(dr.arange(-6, 7, 1, { dtype: 'int32' }), 4);
      expect(Array.from(r.dataSync())).toEqual(Array.from({ length: 13 }, (_, i) => pyMod(i - 6, 4)));
    });
  });

  test('remainder has the gradient of a - b floor(a / b); floorDiv has none', () => {
    dr.tidy(() => {
      // away from the jumps of floor
      const a = dr.tensor([0.3, 1.7, -2.2, 5.1], [4], { dtype: 'float64' }).requiresGrad_();
      const b = dr.tensor([0.7, -0.9, 1.3, 2.4], [4], { dtype: 'float64' }).requiresGrad_();
      expect(dr.gradcheck((x, y) => dr.remainder(x, y), [a, b]).ok).toBe(true);
      expect(dr.gradcheck((x) => dr.remainder(x, 0.9), [a]).ok).toBe(true);
      expect(dr.gradcheck((y) => dr.remainder(3.3, y), [b]).ok).toBe(true);
      const x = dr.tensor([1.5, 2.5]).requiresGrad_();
      dr.floorDiv(x, 2).sum().backward();
      expect(x.grad === null || Array.from(x.grad.dataSync()).every((v) => v === 0)).toBe(true);
    });
  });
});

describe('maskedFill', () => {
  test('fills where the mask (broadcast) is true, and the gradient skips the filled places', () => {
    dr.tidy(() => {
      const { t, data } = input([3, 5], 11, 'float64');
      const mask = dr.tensor([true, false, true, false, false]);
      const got = dr.maskedFill(t, mask, -1e9);
      expect(Array.from(got.dataSync())).toEqual(Array.from(data, (v, i) => ([0, 2].includes(i % 5) ? -1e9 : v)));
      const x = t.clone().requiresGrad_();
      dr.maskedFill(x, mask, 0).mul(2).sum().backward();
      expect(Array.from(x.grad!.dataSync())).toEqual(Array.from(data, (_, i) => ([0, 2].includes(i % 5) ? 0 : 2)));
      expect(() => dr.maskedFill(t, dr.tensor([1, 0]), 0)).toThrow(dr.DTypeError);
      expect(() => dr.maskedFill(t, dr.zeros([2, 3, 5], { dtype: 'bool' }), 0)).toThrow(dr.ShapeError);
      expect(() => dr.maskedFill(t, mask, 'x' as unknown as number)).toThrow(dr.ValueError);
    });
  });
});

describe('bincount', () => {
  test('counts, weighted sums with their gradient, empty input, values out of range', () => {
    dr.tidy(() => {
      const vals = Int32Array.from({ length: 1000 }, (_, i) => (i * 7919) % 13);
      const want = new Array(16).fill(0);
      vals.forEach((v) => (want[v] += 1));
      const got = dr.bincount(dr.tensor(vals, [10, 100]), { length: 16 });
      expect(got.dtype).toBe('int32');
      expect(Array.from(got.dataSync())).toEqual(want);
      const w = input([1000], 3, 'float64').t.requiresGrad_();
      const ws = Array.from(w.dataSync());
      const wsum = new Array(13).fill(0);
      vals.forEach((v, i) => (wsum[v] += ws[i]));
      expectClose(dr.bincount(dr.tensor(vals), { length: 13, weights: w }), wsum, 'float64');
      expect(dr.gradcheck((x) => dr.bincount(dr.tensor(vals), { length: 13, weights: x }).mul(dr.arange(0, 13, 1, { dtype: 'float64' })), [w]).ok).toBe(true);
      expect(Array.from(dr.bincount(dr.zeros([0], { dtype: 'int32' }), { length: 3 }).dataSync())).toEqual([0, 0, 0]);
      expect(() => dr.bincount(dr.tensor(new Int32Array([1, 5])), { length: 5 }).dataSync()).toThrow(dr.OutOfRangeError);
      expect(() => dr.bincount(dr.tensor([1, 2]), { length: 3 })).toThrow(dr.DTypeError);
      expect(() => dr.bincount(dr.tensor(new Int32Array([1])), {} as dr.BincountOptions)).toThrow(/Expected a non-negative integer length/);
      expect(() => dr.bincount(dr.tensor(new Int32Array([1])), { length: 2, weights: dr.ones([2]) })).toThrow(dr.ShapeError);
    });
  });
});

describe('nonzero', () => {
  test('coordinates in row-major order, async and sync, for every rank and the empty case', async () => {
    for (const shape of [[7], [3, 4], [2, 3, 5], [1], [4, 0]]) {
      const n = shape.reduce((a, b) => a * b, 1);
      const data = Array.from({ length: n }, (_, i) => ((i * 37) % 5 === 0 ? 0 : i % 3));
      const x = dr.tensor(data, shape);
      const want: number[][] = [];
      data.forEach((v, flat) => {
        if (v === 0) return;
        const c: number[] = [];
        let rem = flat;
        for (let d = shape.length - 1; d >= 0; --d) {
          c.unshift(rem % shape[d]);
          rem = Math.floor(rem / shape[d]);
        }
        want.push(c);
      });
      const a = await dr.nonzero(x);
      const s = dr.nonzeroSync(x);
      for (const got of [a, s]) {
        expect(got.dtype).toBe('int32');
        expect(got.shape).toEqual([want.length, shape.length]);
        expect(got.arraySync()).toEqual(want);
      }
      dr.dispose([x, a, s]);
    }
    const b = dr.nonzeroSync(dr.tensor([false, true, true]));
    expect(b.arraySync()).toEqual([[1], [2]]);
    expect(dr.nonzeroSync(dr.scalar(3)).shape).toEqual([1, 0]);
  });
});

describe('multinomial', () => {
  const chi2 = (counts: number[], probs: number[], n: number) => counts.reduce((s, o, i) => s + (o - n * probs[i]) ** 2 / (n * probs[i]), 0);

  test('with replacement: frequencies match the normalised weights (chi-square, df 4)', () => {
    dr.tidy(() => {
      const w = [1, 2, 3, 4, 10];
      const p = w.map((v) => v / 20);
      const s = dr.multinomial(dr.tensor(w), 40000, { replacement: true, generator: new dr.Generator(7) });
      expect(s.shape).toEqual([40000]);
      const counts = Array.from(dr.bincount(s, { length: 5 }).dataSync());
      expect(chi2(counts, p, 40000)).toBeLessThan(23.5); // P(chi2_4 > 23.5) < 1e-4
    });
  });

  test('without replacement: distinct picks, the first pick distributed as the weights, zero weights never picked', () => {
    dr.tidy(() => {
      const rows = 20000;
      const w = dr.tensor([0.1, 0.2, 0.3, 0.4, 0]).reshape([1, 5]).expand([rows, 5]).contiguous();
      const s = dr.multinomial(w, 3, { generator: new dr.Generator(11) });
      expect(s.shape).toEqual([rows, 3]);
      const a = s.arraySync() as number[][];
      expect(a.every((r) => new Set(r).size === 3 && !r.includes(4))).toBe(true);
      const first = Array.from(dr.bincount(s.narrow(1, 0, 1).contiguous(), { length: 5 }).dataSync()).slice(0, 4);
      expect(chi2(first, [0.1, 0.2, 0.3, 0.4], rows)).toBeLessThan(21.1); // df 3
      // the same generator state draws the same picks
      const again = dr.multinomial(w, 3, { generator: new dr.Generator(11) });
      expect(again.arraySync()).toEqual(a);
    });
  });

  test('bad arguments', () => {
    const p = dr.tensor([0.5, 0.5]);
    expect(() => dr.multinomial(p, 3)).toThrow(/numSamples in \[1, 2\]/);
    expect(() => dr.multinomial(p, 0, { replacement: true })).toThrow(dr.OutOfRangeError);
    expect(() => dr.multinomial(dr.tensor(new Int32Array([1, 2])), 1)).toThrow(dr.DTypeError);
    expect(() => dr.multinomial(dr.zeros([2, 2, 2]), 1)).toThrow(dr.ShapeError);
    expect(() => dr.multinomial(p, 1, { replacement: 'no' as unknown as boolean })).toThrow(dr.ValueError);
  });
});
