import * as dr from '../lib';
import { floatToBf16Bits, bf16BitsToFloat } from '../lib/dtype';

describe('creating tensors', () => {
  test('from nested arrays, typed arrays and scalars', () => {
    dr.tidy(() => {
      const a = dr.tensor([[1, 2, 3], [4, 5, 6]]);
      expect(a.shape).toEqual([2, 3]);
      expect(a.dtype).toBe('float32');
      expect(a.device).toBe('cpu');
      expect(a.arraySync()).toEqual([[1, 2, 3], [4, 5, 6]]);
      expect(dr.tensor(new Int32Array([1, 2])).dtype).toBe('int32');
      expect(dr.tensor(new Float64Array([0.1])).dtype).toBe('float64');
      expect(dr.tensor(new Float64Array([0.1])).dataSync()[0]).toBe(0.1);
      expect(dr.tensor([true, false]).dtype).toBe('bool');
      const s = dr.scalar(3);
      expect(s.shape).toEqual([]);
      expect(s.item()).toBe(3);
      expect(dr.tensor([1, 2, 3, 4, 5, 6], [3, 2]).arraySync()).toEqual([[1, 2], [3, 4], [5, 6]]);
      expect(dr.tensor([1, 2], { dtype: 'int32' } as never).dtype).toBe('int32');
    });
  });

  test('bfloat16 stores rounded values (round to nearest even) and reads back as float32', () => {
    dr.tidy(() => {
      const vals = [1, 1.00390625, 1.01171875, 3.14159, -2.5e-3, 65504, 1e30];
      const t = dr.tensor(vals, [vals.length], { dtype: 'bfloat16' });
      const back = Array.from(t.dataSync());
      expect(back).toEqual(vals.map((v) => bf16BitsToFloat(floatToBf16Bits(v))));
      expect(back[1]).toBe(1); // exactly halfway: rounds to even
      expect(t.to('float32').to('bfloat16').dataSync()).toEqual(t.dataSync());
    });
  });

  test('zeros, ones, full, arange, *Like', () => {
    dr.tidy(() => {
      expect(Array.from(dr.zeros([3]).dataSync())).toEqual([0, 0, 0]);
      expect(dr.ones([2, 2], { dtype: 'int32' }).arraySync()).toEqual([[1, 1], [1, 1]]);
      expect(dr.full([2], 7.5).arraySync()).toEqual([7.5, 7.5]);
      expect(dr.arange(5).arraySync()).toEqual([0, 1, 2, 3, 4]);
      expect(dr.arange(5).dtype).toBe('int32');
      expect(dr.arange(1, 2, 0.25).arraySync()).toEqual([1, 1.25, 1.5, 1.75]);
      expect(dr.arange(5, 0, -2).arraySync()).toEqual([5, 3, 1]);
      const x = dr.ones([2, 3], { dtype: 'float64' });
      expect(dr.zerosLike(x).dtype).toBe('float64');
      expect(dr.fullLike(x, 2).arraySync()).toEqual([[2, 2, 2], [2, 2, 2]]);
    });
  });

  test('bad data is a typed error naming the argument', () => {
    expect(() => dr.tensor([[1, 2], [3]])).toThrow(dr.ShapeError);
    expect(() => dr.tensor([1, 2, 3], [2, 2])).toThrow(/needs 4 values but data has 3/);
    expect(() => dr.tensor('abc' as never)).toThrow(/Expected a number, boolean, array or typed array for data but received the string "abc"/);
    expect(() => dr.zeros([2, -1])).toThrow(dr.ShapeError);
    expect(() => dr.zeros([2], { dtype: 'float16' as never })).toThrow(/Expected one of float32, float64, bfloat16, int32, bool for dtype/);
    expect(() => dr.zeros([2], { device: 'tpu' as never })).toThrow(dr.DeviceError);
    expect(() => dr.arange(0, 1, 0)).toThrow(dr.ValueError);
  });
});

describe('random numbers', () => {
  test('seeded, reproducible, and in range', () => {
    dr.tidy(() => {
      const g1 = new dr.Generator(42);
      const g2 = new dr.Generator(42);
      const a = dr.rand([1000], { generator: g1 }).dataSync();
      const b = dr.rand([1000], { generator: g2 }).dataSync();
      expect(a).toEqual(b);
      expect(Math.min(...a)).toBeGreaterThanOrEqual(0);
      expect(Math.max(...a)).toBeLessThan(1);
      // the stream moves on
      expect(dr.rand([1000], { generator: g1 }).dataSync()).not.toEqual(a);
      const mean = a.reduce((s, v) => s + v, 0) / a.length;
      expect(Math.abs(mean - 0.5)).toBeLessThan(0.05);
    });
  });
  test('randn moments and randint range', () => {
    dr.tidy(() => {
      const x = dr.randn([20000], { generator: new dr.Generator(7), mean: 2, std: 3 }).dataSync();
      const m = x.reduce((s, v) => s + v, 0) / x.length;
      const v = x.reduce((s, y) => s + (y - m) ** 2, 0) / x.length;
      expect(Math.abs(m - 2)).toBeLessThan(0.1);
      expect(Math.abs(Math.sqrt(v) - 3)).toBeLessThan(0.1);
      const r = dr.randint(-3, 4, [5000], { generator: new dr.Generator(1) }).dataSync();
      expect(Math.min(...r)).toBe(-3);
      expect(Math.max(...r)).toBe(3);
    });
  });
  test('the element values do not depend on the thread split (Philox counters)', () => {
    dr.tidy(() => {
      const big = dr.rand([100003], { generator: new dr.Generator(5) }).dataSync();
      const small = dr.rand([10], { generator: new dr.Generator(5) }).dataSync();
      expect(Array.from(big.slice(0, 10))).toEqual(Array.from(small));
    });
  });
  test('generator state round-trips', () => {
    dr.tidy(() => {
      const g = new dr.Generator(9);
      dr.rand([7], { generator: g });
      const s = g.getState();
      const a = dr.randn([5], { generator: g }).dataSync();
      g.setState(s);
      expect(dr.randn([5], { generator: g }).dataSync()).toEqual(a);
      expect(() => new dr.Generator(-1)).toThrow(dr.ValueError);
    });
  });
});

describe('views and layout', () => {
  const base = () => dr.tensor(Array.from({ length: 24 }, (_, i) => i), [2, 3, 4]);
  test('reshape, view, flatten, squeeze, unsqueeze', () => {
    dr.tidy(() => {
      const x = base();
      expect(x.reshape([4, -1]).shape).toEqual([4, 6]);
      expect(x.reshape([6, 4]).arraySync()).toEqual([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22, 23]]);
      expect(x.flatten().shape).toEqual([24]);
      expect(x.flatten(1).shape).toEqual([2, 12]);
      expect(x.unsqueeze(1).shape).toEqual([2, 1, 3, 4]);
      expect(x.unsqueeze(-1).shape).toEqual([2, 3, 4, 1]);
      expect(x.unsqueeze(1).squeeze().shape).toEqual([2, 3, 4]);
      expect(() => x.reshape([5, 5])).toThrow(dr.ShapeError);
      expect(() => x.transpose().view([24])).toThrow(/not contiguous/);
      expect(x.transpose().reshape([24]).dataSync()[1]).toBe(4);
    });
  });
  test('transpose and permute are views that read correctly', () => {
    dr.tidy(() => {
      const x = base();
      const p = x.permute([2, 0, 1]);
      expect(p.shape).toEqual([4, 2, 3]);
      expect(p.isContiguous).toBe(false);
      const d = p.dataSync();
      for (let i = 0; i < 4; ++i) for (let j = 0; j < 2; ++j) for (let k = 0; k < 3; ++k) expect(d[i * 6 + j * 3 + k]).toBe(j * 12 + k * 4 + i);
      expect(x.T.shape).toEqual([2, 4, 3]);
      expect(p.contiguous().isContiguous).toBe(true);
    });
  });
  test('slice, narrow, split, concat, stack, expand', () => {
    dr.tidy(() => {
      const x = base();
      expect(x.slice([1, 1, 2], [1, 2, -1]).arraySync()).toEqual([[[18, 19], [22, 23]]]);
      expect(x.narrow(2, 1, 2).shape).toEqual([2, 3, 2]);
      const [a, b] = x.split([1, 2], 1);
      expect(a.shape).toEqual([2, 1, 4]);
      expect(b.shape).toEqual([2, 2, 4]);
      expect(dr.concat([a, b], 1).dataSync()).toEqual(x.dataSync());
      expect(dr.concat([x, x], -1).shape).toEqual([2, 3, 8]);
      expect(dr.stack([x, x]).shape).toEqual([2, 2, 3, 4]);
      const e = dr.tensor([1, 2, 3]).expand([2, 3]);
      expect(e.strides).toEqual([0, 1]);
      expect(e.arraySync()).toEqual([[1, 2, 3], [1, 2, 3]]);
      expect(() => dr.concat([x, dr.zeros([2, 2, 5])], 1)).toThrow(/does not match/);
      expect(() => x.slice([0, 0, 3], [1, 1, 2])).toThrow(dr.ShapeError);
    });
  });
  test('shape and strides are frozen arrays; the ops share them between tensors, never freeze a caller\'s array', () => {
    const dims = [2, 3];
    const a = dr.empty(dims);
    expect(Object.isFrozen(dims)).toBe(false);
    dims[0] = 7;  // the caller's array stays the caller's
    expect(a.shape).toEqual([2, 3]);
    const target = [3, 2];
    const r = dr.reshape(a, target);
    expect(Object.isFrozen(target)).toBe(false);
    const y = dr.add(a, 1);
    const n = dr.narrow(a, 1, 1, 2);
    for (const t of [a, r, y, n]) {
      expect(Object.isFrozen(t.shape)).toBe(true);
      expect(Object.isFrozen(t.strides)).toBe(true);
      expect(() => (t.shape as number[]).push(1)).toThrow(TypeError);
    }
    expect(() => {
      'use strict';
      (y.shape as number[])[0] = 5;
    }).toThrow(TypeError);
    expect(y.shape).toEqual([2, 3]);
    expect(n.shape).toEqual([2, 2]);
    expect(n.strides).toEqual([3, 1]);
    // a frozen array of the caller's own is taken as it is (it cannot change)
    const fixed = Object.freeze([4]);
    const f = dr.zeros(fixed);
    expect(f.shape).toEqual([4]);
    expect(() => dr.empty(Object.freeze([2, -1]))).toThrow(dr.ShapeError);
    dr.dispose([a, r, y, n, f]);
  });

  test('views share storage with their base', () => {
    dr.tidy(() => {
      const x = dr.zeros([4]);
      const v = x.reshape([2, 2]);
      const before = dr.memory().cpu.buffers;
      const w = v.T;
      expect(dr.memory().cpu.buffers).toBe(before);
      x.dispose();
      // the view keeps the buffer alive
      expect(w.arraySync()).toEqual([[0, 0], [0, 0]]);
    });
  });
  test('to(dtype) casts: float to int truncates and saturates, NaN becomes 0', () => {
    dr.tidy(() => {
      const x = dr.tensor([1.7, -1.7, 3e10, -3e10, NaN]);
      expect(Array.from(x.to('int32').dataSync())).toEqual([1, -1, 2147483647, -2147483648, 0]);
      expect(Array.from(dr.tensor([0, 2, -1]).to('bool').dataSync())).toEqual([0, 1, 1]);
      expect(dr.tensor([true, false]).to('float32').arraySync()).toEqual([1, 0]);
      expect(x.to({ dtype: 'float64' }).dtype).toBe('float64');
    });
  });
  test('toString is readable and elides long dims', () => {
    dr.tidy(() => {
      expect(dr.tensor([[1, 2], [3, 4]]).toString()).toBe('Tensor([[1.0, 2.0],\n        [3.0, 4.0]], shape=[2, 2], dtype=float32, device=cpu)');
      expect(dr.arange(100).toString()).toContain('[0, 1, 2, ..., 97, 98, 99]');
      expect(dr.scalar(true).toString()).toContain('true');
    });
  });
  test('data() resolves without blocking and matches dataSync()', async () => {
    const x = dr.randn([1000], { generator: new dr.Generator(3) });
    const p = x.data();
    x.dispose(); // the read keeps its own reference
    const d = await p;
    expect(d.length).toBe(1000);
    const y = dr.randn([1000], { generator: new dr.Generator(3) });
    expect(d).toEqual(y.dataSync());
    expect(await y.array()).toHaveLength(1000);
    y.dispose();
  });
});

describe('split and chunk follow PyTorch', () => {
  test('split(n) gives pieces of size n; chunk(n) gives n pieces', () => {
    const x = dr.arange(0, 5);
    expect(x.split(2).map((t) => t.arraySync())).toEqual([[0, 1], [2, 3], [4]]);
    expect(x.split([1, 4]).map((t) => t.shape[0])).toEqual([1, 4]);
    expect(x.chunk(2).map((t) => t.arraySync())).toEqual([[0, 1, 2], [3, 4]]);
    expect(dr.arange(0, 4).chunk(3).map((t) => t.shape[0])).toEqual([2, 2]);
    expect(dr.arange(0, 6).reshape([2, 3]).chunk(3, 1).map((t) => t.shape)).toEqual([[2, 1], [2, 1], [2, 1]]);
    expect(() => x.split(0)).toThrow(/to cut into n pieces, use chunk/);
    expect(() => x.split([2, 2])).toThrow(/do not add up to 5/);
  });
});
