import * as dr from '../../lib';
import { expectClose, expectReadFails, input } from '../helpers';
import { coords, prng, size, stridesOf } from '../reference';

describe('embedding', () => {
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
    test(dtype, () => {
      dr.tidy(() => {
        const V = 37, D = 19;
        const table = input([V, D], 3, dtype);
        const r = prng(4);
        const ids = Array.from({ length: 2 * 5 }, () => Math.floor(r() * V));
        const got = dr.embedding(dr.tensor(new Int32Array(ids), [2, 5]), table.t);
        expect(got.shape).toEqual([2, 5, D]);
        const want: number[] = [];
        for (const id of ids) for (let j = 0; j < D; ++j) want.push(table.data[id * D + j]);
        expectClose(got, want, dtype);
      });
    });
  }
  test('out-of-range ids are reported, not read', async () => {
    const table = dr.zeros([10, 4]);
    const [a, b] = dr.tidy(() => {
      expect(() => dr.embedding(dr.tensor([1.0]), table)).toThrow(dr.DTypeError);
      return [dr.embedding(dr.tensor(new Int32Array([1, 10])), table), dr.embedding(dr.tensor(new Int32Array([-1])), table)];
    });
    await expectReadFails(a, dr.OutOfRangeError, 'embedding', /token id 10 at position 1 is outside \[0, 10\)/);
    await expectReadFails(b, dr.OutOfRangeError, 'embedding', /token id -1 at position 0/);
    // what is computed from a failed op fails too, naming the op that failed
    const c = dr.tidy(() => a.mul(2).sum());
    await expectReadFails(c, dr.OutOfRangeError, 'embedding');
    dr.dispose([table, a, b, c]);
  });
});

function gatherRef(x: Float64Array, xs: number[], idx: number[], is: number[], axis: number): number[] {
  const xst = stridesOf(xs);
  return idx.map((v, p) => {
    const c = coords(p, is);
    c[axis] = v;
    return x[c.reduce((a, ci, d) => a + ci * xst[d], 0)];
  });
}

describe('gather / scatterAdd', () => {
  const cases: Array<[number[], number[], number]> = [
    [[4, 5], [4, 3], 1],
    [[4, 5], [7, 5], 0],
    [[3, 6, 2], [2, 9, 1], 1],
    [[1], [5], 0],
    [[2, 3, 130], [2, 3, 4], 2],
  ];
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
    test(`gather ${dtype}`, () => {
      dr.tidy(() => {
        cases.forEach(([xs, is, axis], i) => {
          const x = input(xs, 20 + i, dtype);
          const r = prng(i);
          const idx = Array.from({ length: size(is) }, () => Math.floor(r() * xs[axis]));
          const got = dr.gather(x.t, axis, dr.tensor(new Int32Array(idx), is));
          expect(got.shape).toEqual(is);
          expectClose(got, gatherRef(x.data, xs, idx, is, axis), dtype);
        });
      });
    });
    test(`scatterAdd ${dtype} (repeated indices accumulate)`, () => {
      dr.tidy(() => {
        cases.forEach(([xs, is, axis], i) => {
          const x = input(xs, 40 + i, dtype);
          const src = input(is, 41 + i, dtype);
          const r = prng(100 + i);
          const idx = Array.from({ length: size(is) }, () => Math.floor(r() * xs[axis]));
          const got = dr.scatterAdd(x.t, axis, dr.tensor(new Int32Array(idx), is), src.t);
          const want = Array.from(x.data);
          const xst = stridesOf(xs);
          idx.forEach((v, p) => {
            const c = coords(p, is);
            c[axis] = v;
            want[c.reduce((a, ci, d) => a + ci * xst[d], 0)] += src.data[p];
          });
          expectClose(got, want, dtype, dtype === 'bfloat16' ? 4 : 1);
          // x itself is unchanged
          expectClose(x.t, x.data, dtype);
        });
      });
    });
  }
  test('index errors', async () => {
    const x = dr.zeros([3, 4]);
    const [g, s] = dr.tidy(() => {
      expect(() => dr.gather(x, 1, dr.tensor(new Int32Array([0]), [1]))).toThrow(dr.ShapeError);
      expect(() => dr.gather(x, 2, dr.tensor(new Int32Array([0]), [1, 1]))).toThrow(dr.OutOfRangeError);
      expect(() => dr.scatterAdd(x, 0, dr.tensor(new Int32Array([1]), [1, 1]), dr.ones([1, 2]))).toThrow(dr.ShapeError);
      // index values are data: checked while the op runs, raised at the read
      return [dr.gather(x, 1, dr.tensor(new Int32Array([0, 4]), [1, 2])), dr.scatterAdd(x, 0, dr.tensor(new Int32Array([3]), [1, 1]), dr.ones([1, 1]))];
    });
    await expectReadFails(g, dr.OutOfRangeError, 'gather', /index 4 at flat position 1 is outside \[0, 4\)/);
    await expectReadFails(s, dr.OutOfRangeError, 'scatterAdd', /index 3 .*outside \[0, 3\)/);
    dr.dispose([x, g, s]);
  });
});
