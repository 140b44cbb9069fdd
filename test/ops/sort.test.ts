// cumsum, topk, sort, argsort against float64 plain-loop references written from the definitions,
// on awkward shapes (1, odd, past a vector or a row block, empty), every dtype, NaN and ties;
// float64 gradient checks; typed errors.
import * as dr from '../../lib';
import { expectClose, input } from '../helpers';

const numel = (s: number[]) => s.reduce((a, b) => a * b, 1);

/** Index of the flat position with coordinate `axis` replaced (x contiguous of `shape`). */
function lines(shape: number[], axis: number): number[][] {
  const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const dim = shape[axis];
  const outer = numel(shape) / Math.max(dim * inner, 1);
  const out: number[][] = [];
  for (let o = 0; o < outer; ++o)
    for (let i = 0; i < inner; ++i) out.push(Array.from({ length: dim }, (_, d) => (o * dim + d) * inner + i));
  return out;
}

function cumsumRef(x: ArrayLike<number>, shape: number[], axis: number, reverse: boolean, exclusive: boolean): Float64Array {
  const out = new Float64Array(x.length);
  for (const line of lines(shape, axis)) {
    const order = reverse ? line.slice().reverse() : line;
    let acc = 0;
    for (const p of order) {
      if (exclusive) {
        out[p] = acc;
        acc += x[p];
      } else {
        acc += x[p];
        out[p] = acc;
      }
    }
  }
  return out;
}

// value order with NaN largest; ties by position
const before = (a: number, b: number) => (Number.isNaN(a) ? false : Number.isNaN(b) ? true : a < b);
function order(vals: number[], descending: boolean): number[] {
  const idx = vals.map((_, i) => i);
  return idx.sort((i, j) => {
    const [a, b] = [vals[i], vals[j]];
    if (descending ? before(b, a) : before(a, b)) return -1;
    if (descending ? before(a, b) : before(b, a)) return 1;
    return i - j;
  });
}

/** values and indices of the first `count` of each line along axis, in x's layout with that axis cut to count. */
function sortRef(x: ArrayLike<number>, shape: number[], axis: number, count: number, descending: boolean) {
  const oshape = shape.slice();
  oshape[axis] = count;
  const values = new Float64Array(numel(oshape));
  const indices = new Float64Array(numel(oshape));
  const ol = lines(oshape, axis);
  lines(shape, axis).forEach((line, li) => {
    const vals = line.map((p) => x[p]);
    const ord = order(vals, descending).slice(0, count);
    ord.forEach((j, t) => {
      values[ol[li][t]] = vals[j];
      indices[ol[li][t]] = j;
    });
  });
  return { values, indices, shape: oshape };
}

const shapes: Array<[number[], number]> = [
  [[1], 0], [[7], 0], [[3, 1], 1], [[3, 1], 0], [[5, 1031], 1], [[1031, 5], 0], [[2, 33, 9], 1], [[2, 3, 4097], 2], [[4, 0], 0],
];

describe('cumsum', () => {
  for (const dtype of ['float32', 'float64', 'bfloat16', 'int32'] as dr.DType[])
    test(`${dtype}: against the running sum, every direction`, () => {
      dr.tidy(() => {
        shapes.forEach(([shape, axis], i) => {
          const { t, data } = dtype === 'int32' ? ints(shape, 40 + i) : input(shape, 40 + i, dtype);
          for (const reverse of [false, true])
            for (const exclusive of [false, true]) {
              const got = dr.cumsum(t, axis, { reverse, exclusive });
              expect(got.shape).toEqual(shape);
              expect(got.dtype).toBe(dtype);
              const want = cumsumRef(data, shape, axis, reverse, exclusive);
              if (dtype === 'int32') expect(Array.from(got.dataSync())).toEqual(Array.from(want));
              else expectClose(got, want, dtype, Math.sqrt(shape[axis] || 1) * (dtype === 'bfloat16' ? 4 : 1));
            }
        });
      });
    });

  test('a strided input, a negative axis, bool counts, and NaN carried forward', () => {
    dr.tidy(() => {
      const { t, data } = input([9, 13], 5);
      const tt = t.T;
      const want = cumsumRef(Array.from(dr.contiguous(tt).dataSync()), [13, 9], 1, false, false);
      expectClose(dr.cumsum(tt, -1), want);
      expect(Array.from(dr.cumsum(dr.tensor([true, false, true, true]), 0).dataSync())).toEqual([1, 1, 2, 3]);
      expect(dr.cumsum(dr.tensor([true]), 0).dtype).toBe('int32');
      const n = Array.from(dr.cumsum(dr.tensor([1, NaN, 2]), 0).dataSync());
      expect(n[0]).toBe(1);
      expect(n.slice(1).every(Number.isNaN)).toBe(true);
      void data;
    });
  });

  test('an int32 sum that leaves int32 is an OutOfRangeError naming the position; the exclusive sum may reach it last', () => {
    dr.tidy(() => {
      const big = dr.tensor(new Int32Array([2147483647, 1, 5]), [3]);
      expect(() => dr.cumsum(big, 0).dataSync()).toThrow(/cumsum.*flat position 1 leaves int32/);
      // exclusive: the sums written are 0, 2^31 - 1, 2^31: position 2 overflows
      expect(() => dr.cumsum(big, 0, { exclusive: true }).dataSync()).toThrow(/flat position 2/);
      const ok = dr.tensor(new Int32Array([2147483647, 1]), [2]);
      expect(Array.from(dr.cumsum(ok, 0, { exclusive: true }).dataSync())).toEqual([0, 2147483647]);
    });
  });

  test('gradient (float64 gradcheck), every direction and axis', () => {
    dr.tidy(() => {
      for (const reverse of [false, true])
        for (const exclusive of [false, true])
          for (const axis of [0, 1, 2]) {
            const x = input([3, 4, 5], 7, 'float64').t.requiresGrad_();
            expect(dr.gradcheck((a) => dr.cumsum(a, axis, { reverse, exclusive }).mul(dr.arange(0, 60, 1, { dtype: 'float64' }).reshape([3, 4, 5])), [x]).ok).toBe(true);
          }
    });
  });

  test('bad arguments are typed errors naming them', () => {
    const x = dr.zeros([3]);
    expect(() => dr.cumsum(x, 1)).toThrow(dr.OutOfRangeError);
    expect(() => dr.cumsum(x, 0, { reverse: 1 as unknown as boolean })).toThrow(/Expected a boolean for reverse/);
    expect(() => dr.cumsum(x, 0, null as unknown as dr.CumsumOptions)).toThrow(dr.ValueError);
    expect(() => dr.cumsum(3 as unknown as dr.Tensor, 0)).toThrow(dr.ValueError);
  });
});

function ints(shape: number[], seed: number) {
  const raw = Array.from(input(shape, seed, 'float64').data, (v) => Math.round(v * 20));
  const t = dr.tensor(Int32Array.from(raw), shape.length ? shape : undefined);
  return { t: shape.length ? t : t, data: Float64Array.from(raw) };
}

// values on a grid of exact bfloat16 numbers, so ties are common and every dtype holds them exactly
function gridInput(shape: number[], seed: number, dtype: dr.DType, nan = false) {
  const raw = Array.from(input(shape, seed, 'float64').data, (v) => Math.round(v * 4) / 2);
  if (nan && raw.length > 2) {
    raw[1] = NaN;
    raw[raw.length - 1] = NaN;
  }
  const t = dtype === 'int32' ? dr.tensor(Int32Array.from(raw.map((v) => (Number.isNaN(v) ? 7 : v * 2))), shape) : dr.tensor(raw, shape, { dtype });
  return { t, data: Float64Array.from(t.dataSync()) };
}

describe('topk and sort', () => {
  const sortShapes: Array<[number[], number]> = [
    [[1], 0], [[7], 0], [[3, 1], 1], [[5, 1031], 1], [[1031, 5], 0], [[2, 33, 9], 1], [[2, 4097], 1], [[4, 0], 0],
  ];
  for (const dtype of ['float32', 'float64', 'bfloat16', 'int32'] as dr.DType[]) {
    test(`${dtype}: sort and argsort are stable in both directions, NaN last (first when descending)`, () => {
      dr.tidy(() => {
        sortShapes.forEach(([shape, axis], i) => {
          const { t, data } = gridInput(shape, 60 + i, dtype, dtype !== 'int32');
          for (const descending of [false, true]) {
            const got = dr.sort(t, { axis, descending });
            const want = sortRef(data, shape, axis, shape[axis], descending);
            expect(got.values.shape).toEqual(shape);
            expect(got.indices.dtype).toBe('int32');
            expect(Array.from(got.indices.dataSync())).toEqual(Array.from(want.indices));
            expect(Array.from(got.values.dataSync())).toEqual(Array.from(want.values));
            expect(Array.from(dr.argsort(t, { axis, descending }).dataSync())).toEqual(Array.from(want.indices));
          }
        });
      });
    });

    test(`${dtype}: topk, largest and smallest, ties to the lower index, k from 0 to n`, () => {
      dr.tidy(() => {
        sortShapes.forEach(([shape, axis], i) => {
          const { t, data } = gridInput(shape, 80 + i, dtype, dtype !== 'int32');
          const n = shape[axis];
          for (const k of [...new Set([0, 1, Math.min(3, n), n])].filter((v) => v <= n))
            for (const largest of [true, false]) {
              const got = dr.topk(t, k, { axis, largest });
              const want = sortRef(data, shape, axis, k, largest);
              expect(got.values.shape).toEqual(want.shape);
              expect(Array.from(got.indices.dataSync())).toEqual(Array.from(want.indices));
              expect(Array.from(got.values.dataSync())).toEqual(Array.from(want.values));
            }
        });
      });
    });
  }

  test('gradients reach the picked elements (float64 gradcheck) and pick the values', () => {
    dr.tidy(() => {
      const x = input([4, 9], 3, 'float64').t.requiresGrad_();
      const w = input([4, 3], 4, 'float64').t;
      expect(dr.gradcheck((a) => dr.topk(a, 3).values.mul(w), [x]).ok).toBe(true);
      expect(dr.gradcheck((a) => dr.topk(a, 2, { axis: 0, largest: false }).values.mul(input([2, 9], 5, 'float64').t), [x]).ok).toBe(true);
      expect(dr.gradcheck((a) => dr.sort(a, { descending: true }).values.mul(input([4, 9], 6, 'float64').t), [x]).ok).toBe(true);
      expect(dr.gradcheck((a) => dr.sort(a, { axis: 0 }).values.mul(input([4, 9], 7, 'float64').t), [x]).ok).toBe(true);
      const { values, indices } = dr.topk(x, 2);
      expect(Array.from(values.dataSync())).toEqual(Array.from(dr.gather(x, 1, indices).dataSync()));
    });
  });

  test('methods and bad arguments', () => {
    dr.tidy(() => {
      const x = dr.tensor([[3, 1, 2]]);
      expect(Array.from(x.topk(1).indices.dataSync())).toEqual([0]);
      expect(Array.from(x.argsort().dataSync())).toEqual([1, 2, 0]);
      expect(Array.from(x.cumsum(1).dataSync())).toEqual([3, 4, 6]);
      expect(() => dr.topk(x, 4)).toThrow(/Expected an integer k in \[0, 3\]/);
      expect(() => dr.topk(x, 1.5)).toThrow(dr.OutOfRangeError);
      expect(() => dr.topk(x, 1, { axis: 2 })).toThrow(dr.OutOfRangeError);
      expect(() => dr.sort(dr.tensor([true, false]))).toThrow(dr.DTypeError);
      expect(() => dr.sort(dr.scalar(1))).toThrow(/at least one dimension/);
      expect(() => dr.sort(x, { descending: 'yes' as unknown as boolean })).toThrow(/Expected a boolean for descending/);
      expect(() => dr.topk(x, 1, { largest: 0 as unknown as boolean })).toThrow(/Expected a boolean for largest/);
    });
  });
});
