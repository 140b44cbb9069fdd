import * as dr from '../../lib';
import { expectClose, input } from '../helpers';
import { matmulRef, transposeLast } from '../reference';

describe('matmul', () => {
  const shapes: Array<[number[], number[]]> = [
    [[1, 1], [1, 1]],
    [[3, 7], [7, 5]],
    [[17, 33], [33, 31]],
    [[65, 127], [127, 129]],
    [[300, 1], [1, 2]],
    [[2, 129, 64], [2, 64, 3]],
    [[3, 5, 9], [9, 4]],          // b broadcast over the batch
    [[9, 4], [2, 3, 4, 6]],       // a broadcast over two batch dims
    [[2, 1, 6, 5], [3, 5, 7]],    // both broadcast
    [[5, 0], [0, 3]],             // k = 0 gives zeros
  ];
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
    test(`shapes and batch broadcasting, ${dtype}`, () => {
      dr.tidy(() => {
        shapes.forEach(([as, bs], i) => {
          const a = input(as, 11 + i, dtype);
          const b = input(bs, 111 + i, dtype);
          const got = dr.matmul(a.t, b.t);
          const want = matmulRef(a.data, as, b.data, bs);
          expect(got.shape).toEqual(want.shape);
          const k = as[as.length - 1];
          expectClose(got, Array.from(want.data), dtype, Math.max(1, Math.sqrt(k)) * (dtype === 'bfloat16' ? 2 : 1));
        });
      });
    });
  }

  test('transposes by flag and by view agree with the reference', () => {
    dr.tidy(() => {
      for (const [m, k, n] of [[7, 13, 5], [64, 65, 33], [1, 9, 1], [130, 70, 90]]) {
        const a = input([k, m], m + k, 'float32');   // stored transposed
        const b = input([n, k], n + k, 'float32');   // stored transposed
        const at = transposeLast(a.data, [k, m]);
        const bt = transposeLast(b.data, [n, k]);
        const want = matmulRef(at.data, [m, k], bt.data, [k, n]).data;
        expectClose(dr.matmul(a.t, b.t, { transA: true, transB: true }), want, 'float32', Math.sqrt(k));
        expectClose(dr.matmul(a.t.T, b.t.T), want, 'float32', Math.sqrt(k));
        expectClose(a.t.T.matmul(b.t, { transB: true }), want, 'float32', Math.sqrt(k));
      }
    });
  });

  test('a non-contiguous operand (a sliced view) is handled', () => {
    dr.tidy(() => {
      const a = input([6, 10], 5);
      const b = input([4, 3], 6);
      const sub = a.t.slice([1, 2], [4, 4]); // rows 1..4, cols 2..5: strided rows
      const want: number[] = [];
      for (let i = 0; i < 4; ++i)
        for (let j = 0; j < 3; ++j) {
          let s = 0;
          for (let p = 0; p < 4; ++p) s += a.data[(1 + i) * 10 + 2 + p] * b.data[p * 3 + j];
          want.push(s);
        }
      expectClose(sub.matmul(b.t), want);
      // every other column: neither rows nor columns contiguous, copied first
      const every = dr.tensor(Array.from({ length: 24 }, (_, i) => i), [4, 6]).reshape([4, 3, 2]).narrow(2, 0, 1).reshape([4, 3]);
      expect(every.matmul(dr.ones([3, 1])).dataSync()).toEqual(new Float32Array([6, 24, 42, 60]));
    });
  });

  test('vectors: 1-d operands as in numpy', () => {
    dr.tidy(() => {
      const v = dr.tensor([1, 2, 3]);
      const m = dr.tensor([[1, 0], [0, 1], [1, 1]]);
      expect(dr.matmul(v, m).arraySync()).toEqual([4, 5]);
      expect(dr.matmul(m.T, v).arraySync()).toEqual([4, 5]);
      expect(dr.matmul(v, v).arraySync()).toEqual(14);
    });
  });

  test('alpha scales the product', () => {
    dr.tidy(() => {
      const a = input([5, 6], 1);
      const b = input([6, 7], 2);
      const want = Array.from(matmulRef(a.data, [5, 6], b.data, [6, 7]).data, (v) => 0.125 * v);
      expectClose(dr.matmul(a.t, b.t, { alpha: 0.125 }), want);
    });
  });

  test('shape and dtype errors name the arguments', () => {
    dr.tidy(() => {
      expect(() => dr.matmul(dr.zeros([2, 3]), dr.zeros([4, 5]))).toThrow(/inner dimensions differ.*\[2, 3\].*\[4, 5\]/);
      expect(() => dr.matmul(dr.zeros([2, 2, 3]), dr.zeros([3, 3, 4]))).toThrow(dr.ShapeError);
      expect(() => dr.matmul(dr.tensor(new Int32Array([1])), dr.tensor(new Int32Array([1])))).toThrow(dr.DTypeError);
    });
  });
});
