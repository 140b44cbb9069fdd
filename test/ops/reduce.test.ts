import * as dr from '../../lib';
import { expectClose, input } from '../helpers';
import { reduceRef } from '../reference';

describe('reductions', () => {
  const cases: Array<[number[], number[] | undefined]> = [
    [[37, 5], [1]],
    [[37, 5], [0]],
    [[4, 3, 129], [0, 2]],
    [[1], [0]],
    [[3, 1, 7], undefined],
    [[2, 5, 3, 4], [1, 3]],
    [[1000, 3], [0]],
    [[3, 3000], [1]],
  ];
  for (const kind of ['sum', 'mean', 'max', 'min'] as const) {
    for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
      test(`${kind} ${dtype}`, () => {
        dr.tidy(() => {
          cases.forEach(([shape, axes], i) => {
            const { t, data } = input(shape, 30 + i, dtype);
            const ax = axes ?? shape.map((_, k) => k);
            const got = dr[kind](t, axes);
            const want = reduceRef(data, shape, ax, kind);
            expect(got.shape).toEqual(want.shape);
            const n = ax.reduce((a, k) => a * shape[k], 1);
            // sums accumulate rounding: the budget grows with the count
            const scale = kind === 'sum' ? Math.sqrt(n) * (dtype === 'bfloat16' ? 4 : 1) : 1;
            expectClose(got, Array.from(want.data), dtype, scale);
            const kd = dr[kind](t, axes, { keepDims: true });
            expect(kd.shape).toEqual(shape.map((d, k) => (ax.includes(k) ? 1 : d)));
          });
        });
      });
    }
  }

  test('a strided input (transposed) reduces like its contiguous copy', () => {
    dr.tidy(() => {
      const { t, data } = input([6, 11], 3);
      const got = t.T.sum(1);
      expectClose(got, reduceRef(data, [6, 11], [0], 'sum').data);
    });
  });

  test('int32 sum and max stay int32; mean of int32 is float32', () => {
    dr.tidy(() => {
      const x = dr.tensor(new Int32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
      const s = x.sum(1);
      expect(s.dtype).toBe('int32');
      expect(Array.from(s.dataSync())).toEqual([6, 15]);
      expect(Array.from(x.max(0).dataSync())).toEqual([4, 5, 6]);
      const m = x.mean();
      expect(m.dtype).toBe('float32');
      expect(m.item()).toBe(3.5);
    });
  });

  test('max propagates NaN; sum of an empty axis is 0', () => {
    dr.tidy(() => {
      expect(Number.isNaN(dr.tensor([1, NaN, 3]).max().item())).toBe(true);
      expect(Number.isNaN(dr.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, NaN, 2]).max().item())).toBe(true);
      expect(Array.from(dr.zeros([3, 0]).sum(1).dataSync())).toEqual([0, 0, 0]);
      expect(() => dr.zeros([3, 0]).max(1)).toThrow(dr.ShapeError);
    });
  });

  test('argmax / argmin: first index wins ties, NaN counts as the extreme', () => {
    dr.tidy(() => {
      const x = dr.tensor([[1, 5, 5, 2], [7, 0, 0, 7], [1, NaN, 9, NaN]]);
      expect(Array.from(x.argmax(1).dataSync())).toEqual([1, 0, 1]);
      expect(Array.from(x.argmin(1).dataSync())).toEqual([0, 1, 1]);
      expect(x.argmax(1, { keepDims: true }).shape).toEqual([3, 1]);
      expect(Array.from(dr.tensor([[3, 1], [2, 4]]).argmax(0).dataSync())).toEqual([0, 1]);
      expect(dr.tensor([[3, 1], [2, 4]]).argmax().item()).toBe(3);
    });
  });

  test('argmax against a reference on random data', () => {
    dr.tidy(() => {
      const { t, data } = input([13, 257], 77);
      const got = t.argmax(1).dataSync();
      for (let r = 0; r < 13; ++r) {
        let best = 0;
        for (let j = 1; j < 257; ++j) if (data[r * 257 + j] > data[r * 257 + best]) best = j;
        expect(got[r]).toBe(best);
      }
    });
  });
});
