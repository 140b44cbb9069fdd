import * as dr from '../../lib';
import { native, UNARY_OPS } from '../../lib/native';
import { expectClose, input } from '../helpers';
import { binaryRef, unaryRef } from '../reference';

const positive = new Set(['log', 'sqrt', 'rsqrt', 'reciprocal']);

describe('unary ops', () => {
  const shapes = [[37, 5], [1], [3, 1, 7], [1030]];
  for (const name of Object.keys(unaryRef)) {
    for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
      test(`${name} ${dtype}`, () => {
        dr.tidy(() => {
          shapes.forEach((shape, i) => {
            const [lo, hi] = positive.has(name) ? [0.1, 4] : name === 'log1p' ? [-0.9, 3] : [-4, 4];
            const { t, data } = input(shape, 100 + i, dtype, lo, hi);
            const got = dr.unary(name as never, t);
            expect(got.shape).toEqual(shape);
            expect(got.dtype).toBe(dtype);
            const want = Array.from(data, unaryRef[name]);
            // bf16 outputs round to 8 bits of mantissa; float32 exp-based ops use a vector exp (~2 ulp)
            expectClose(got, bf16Round(want, dtype), dtype, name === 'exp' || name === 'expm1' ? 4 : 1);
          });
        });
      });
    }
  }

  test('float32 exp, sigmoid, silu, tanh, gelu, erf over their whole range and at the edges', () => {
    // the vector exp's clamps (-87.34, 88.72), its n = 128 step, overflow, NaN and infinities,
    // on a length that leaves a tail past the last full vector
    const xs: number[] = [NaN, Infinity, -Infinity, 0, -0, 88.72283935546875, 88.7228, 88.72, 88.7, 88.38, 88.37,
      -87.33654022216797, -87.3365, -87.3, -87.4, -103, -200, 1e-30, -1e-30, 0.39, 0.41, 0.49, 0.51];
    for (let v = -100; v <= 100; v += 0.37) xs.push(v);
    const f32 = Float32Array.from(xs);
    const x = dr.tensor(f32);
    const FLT_MIN = 1.1754943508222875e-38;
    const check = (name: string, got: Float32Array, ref: (v: number) => number, rtol: number, atol: number) => {
      f32.forEach((v, i) => {
        const want = ref(v), g = got[i];
        const where = `${name}(${v}) = ${g}, want ${want}`;
        if (Number.isNaN(want)) return expect([where, Number.isNaN(g)]).toEqual([where, true]);
        if (!Number.isFinite(want) || Math.abs(want) > 3.4028234663852886e38) return expect([where, g]).toEqual([where, want > 0 ? Infinity : -Infinity]);
        if (Math.abs(want) < FLT_MIN) return expect([where, Math.abs(g) <= FLT_MIN]).toEqual([where, true]);
        expect([where, Math.abs(g - want) <= atol + rtol * Math.abs(want)]).toEqual([where, true]);
      });
    };
    dr.tidy(() => {
      check('exp', x.exp().dataSync() as Float32Array, Math.exp, 5e-7, 0);
      // (below about -88 both are tiny: x / (1 + inf) is -0 in float32, as in PyTorch)
      check('sigmoid', x.sigmoid().dataSync() as Float32Array, (v) => 1 / (1 + Math.exp(-v)), 1e-6, 1e-36);
      check('silu', x.silu().dataSync() as Float32Array, (v) => (v === -Infinity ? NaN : v / (1 + Math.exp(-v))), 1e-6, 1e-36);
      check('tanh', x.tanh().dataSync() as Float32Array, Math.tanh, 1e-6, 1e-37);
      check('erf', x.erf().dataSync() as Float32Array, (v) => unaryRef.erf(v), 1e-6, 2e-7);
      check('gelu', dr.gelu(x).dataSync() as Float32Array, (v) => (v === -Infinity ? NaN : unaryRef.gelu(v)), 1e-6, 2e-7);
    });
  });

  test('float32 gelu and biasAct gelu on a dense grid over the fast form (every piece of the AVX-512 table)', () => {
    // 40,001 points over [-5, 5] (the fast form's range): every 1/4000, so each of the 32 pieces
    // of width 5/32 on either side holds hundreds; relative error against the float64 formula
    // (the exp2 form of the other builds reaches 1.95e-6 near -5, scripts/fit-gelu.py, inside the
    // absolute part of the whole-range test's tolerance: here only the AVX-512 build is held to 1e-6)
    const avx512 = native.devices().cpu.simd === 'avx512';
    const n = 40001;
    const xs = new Float32Array(n);
    for (let i = 0; i < n; ++i) xs[i] = -5 + (10 * i) / (n - 1);
    dr.tidy(() => {
      const x = dr.tensor(xs);
      const viaBias = dr.biasAct(x.reshape([n, 1]), dr.zeros([1]), 'gelu').reshape([n]);
      for (const [name, got] of [['gelu', dr.gelu(x).dataSync()], ['biasAct gelu', viaBias.dataSync()]] as const) {
        let worst = 0, at = 0;
        xs.forEach((v, i) => {
          const want = unaryRef.gelu(v);
          const err = want === 0 ? Math.abs(got[i]) : Math.abs(got[i] - want) / Math.abs(want);
          if (err > worst) [worst, at] = [err, v];
        });
        expect([name, at, worst < (avx512 ? 1e-6 : 3e-6)]).toEqual([name, at, true]);
      }
    });
  });

  // The vector forms take a fast path when every lane of a vector is in range (one test per
  // vector) and fall to the full fix-ups otherwise. A lane's result must not depend on its
  // neighbours: a value that sends its vector down the slow path (NaN, +-inf, huge, tiny, past
  // the fast ranges) is put at every position of a row of ordinary values, over a length that
  // covers the first and last lane of every vector (8 or 16 lanes) and the tail past the last
  // full vector; the other lanes must keep their bits, and the odd lane must match a float64
  // reference written from the formula.
  describe('vector fast paths: one odd lane in every position', () => {
    const k = Math.sqrt(2 / Math.PI);
    const geluTanhExact = (v: number) => {
      if (v === -Infinity) return NaN;
      const u = 2 * k * (v + 0.044715 * v * v * v);
      return v / (1 + Math.exp(-u));  // = 0.5 v (1 + tanh(u / 2)) without the cancellation
    };
    const forward: Array<[string, (x: dr.Tensor) => dr.Tensor, (v: number) => number, number, number]> = [
      ['exp', (x) => x.exp(), Math.exp, 5e-7, 0],
      ['sigmoid', (x) => x.sigmoid(), (v) => 1 / (1 + Math.exp(-v)), 1e-6, 1e-36],
      ['silu', (x) => x.silu(), (v) => (v === -Infinity ? NaN : v / (1 + Math.exp(-v))), 1e-6, 1e-36],
      ['tanh', (x) => x.tanh(), Math.tanh, 1e-6, 1e-37],
      ['erf', (x) => x.erf(), (v) => unaryRef.erf(v), 1e-6, 2e-7],
      ['gelu', (x) => dr.gelu(x), (v) => (v === -Infinity ? NaN : unaryRef.gelu(v)), 1e-6, 2e-7],
      ['gelu tanh', (x) => dr.gelu(x, { approximate: 'tanh' }), geluTanhExact, 2e-6, 1e-36],
    ];
    // (+-5.5 and +-5.00001: past GELU's fast form, whose range ends at |x| = 5)
    const odd = [NaN, Infinity, -Infinity, 3e38, -3e38, 1e30, -1e30, 200, -200, 100, -100, 89, 88.5, -88, -87.5, 87.2,
      -87.2, 20, -20, 13.5, -13.5, 5.5, -5.5, 5.00001, -5.00001, 1e-30, -1e-30, 1e-45, -1e-45, 0, -0];
    // blocks of 4 vectors, then single vectors, then a tail: with 8 lanes 2 blocks of 32, one
    // vector and a tail of 5; with 16 lanes one block of 64, no single vector and a tail of 13
    const n = 77;
    const base = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 1.7) * 3);
    const FLT_MIN = 1.1754943508222875e-38;
    const near = (g: number, want: number, rtol: number, atol: number) => {
      if (Number.isNaN(want)) return Number.isNaN(g);
      if (!Number.isFinite(want) || Math.abs(want) > 3.4028234663852886e38) return g === (want > 0 ? Infinity : -Infinity);
      if (Math.abs(want) < FLT_MIN) return Math.abs(g) <= FLT_MIN;
      return Math.abs(g - want) <= atol + rtol * Math.abs(want);
    };
    for (const [name, f, ref, rtol, atol] of forward) {
      test(name, () => {
        dr.tidy(() => {
          const want0 = f(dr.tensor(base)).dataSync() as Float32Array;
          base.forEach((v, i) => expect([name, v, near(want0[i], ref(v), rtol, atol)]).toEqual([name, v, true]));
          const bad: string[] = [];
          for (const o of odd) {
            const alone = f(dr.tensor([o])).dataSync()[0];
            for (let p = 0; p < n; ++p) {
              const x = base.slice();
              x[p] = o;
              const got = f(dr.tensor(x)).dataSync() as Float32Array;
              const xo = x[p];
              if (!near(got[p], ref(xo), rtol, atol)) bad.push(`${name}(${xo}) at ${p} = ${got[p]}, want ${ref(xo)}`);
              if (!Object.is(got[p], alone)) bad.push(`${name}(${xo}) at ${p} = ${got[p]}, alone ${alone}`);
              for (let i = 0; i < n; ++i) {
                if (i !== p && !Object.is(got[i], want0[i])) bad.push(`${name}: lane ${i} changed by ${xo} at ${p}: ${got[i]} vs ${want0[i]}`);
              }
            }
          }
          expect(bad.slice(0, 5)).toEqual([]);
        });
      });
    }

    test('gelu keeps its relative accuracy down to x = -13, in float32 (relative only)', () => {
      const xs = Float32Array.from({ length: 1301 }, (_, i) => -13 + i * 0.01);
      dr.tidy(() => {
        const got = dr.gelu(dr.tensor(xs)).dataSync() as Float32Array;
        const bad: string[] = [];
        xs.forEach((v, i) => {
          const want = unaryRef.gelu(v);
          // the exp's argument -x^2/2 + P carries one rounding: about 1e-7 * x^2 relative
          const tol = 4e-7 + 1.5e-7 * v * v;
          if (!(Math.abs(got[i] - want) <= tol * Math.abs(want))) bad.push(`gelu(${v}) = ${got[i]}, want ${want}`);
        });
        expect(bad.slice(0, 5)).toEqual([]);
      });
    });

    test('tanh stays in [-1, 1] and is +-1 from |x| = 9.1 up', () => {
      const xs = Float32Array.from({ length: 2001 }, (_, i) => i * 0.01);
      dr.tidy(() => {
        const t = dr.tensor(xs).tanh().dataSync() as Float32Array;
        const tn = dr.tensor(xs).neg().tanh().dataSync() as Float32Array;
        xs.forEach((v, i) => {
          expect([v, t[i] <= 1 && t[i] >= 0 && tn[i] === -t[i]]).toEqual([v, true]);
          if (v >= 9.1) expect([v, t[i]]).toEqual([v, 1]);
        });
      });
    });
  });

  test('strided input (a transposed view)', () => {
    dr.tidy(() => {
      const { t, data } = input([5, 7], 3);
      const got = t.T.exp();
      const want: number[] = [];
      for (let j = 0; j < 7; ++j) for (let i = 0; i < 5; ++i) want.push(Math.exp(data[i * 7 + j]));
      expectClose(got, want);
    });
  });

  test('int32: neg/abs/sign/square stay int32, float ops promote', () => {
    dr.tidy(() => {
      const x = dr.tensor(new Int32Array([-3, 0, 5]));
      expect(Array.from(x.neg().dataSync())).toEqual([3, 0, -5]);
      expect(x.abs().dtype).toBe('int32');
      expect(Array.from(x.sign().dataSync())).toEqual([-1, 0, 1]);
      const e = x.exp();
      expect(e.dtype).toBe('float32');
      expectClose(e, [Math.exp(-3), 1, Math.exp(5)]);
    });
  });

  test('relu keeps NaN, sign keeps NaN', () => {
    dr.tidy(() => {
      const x = dr.tensor([NaN, -1, 2]);
      const r = x.relu().dataSync();
      expect(Number.isNaN(r[0])).toBe(true);
      expect(Array.from(r.slice(1))).toEqual([0, 2]);
      expect(Number.isNaN(x.sign().dataSync()[0])).toBe(true);
    });
  });
});

function bf16Round(v: number[], dtype: string): number[] {
  if (dtype !== 'bfloat16') return v;
  const { floatToBf16Bits, bf16BitsToFloat } = require('../../lib/dtype');
  return v.map((x) => bf16BitsToFloat(floatToBf16Bits(x)));
}

describe('binary ops with broadcasting', () => {
  const cases: Array<[number[], number[]]> = [
    [[3, 1, 5], [4, 5]],
    [[1], [7]],
    [[2, 3], [2, 3]],
    [[129], [1]],
    [[], [3]],
    [[6, 1], [1, 33]],
    [[2, 1, 3, 1], [1, 4, 1, 5]],
  ];
  const fns: Record<string, (a: number, b: number) => number> = {
    add: (a, b) => a + b,
    sub: (a, b) => a - b,
    mul: (a, b) => a * b,
    div: (a, b) => a / b,
    maximum: Math.max,
    minimum: Math.min,
  };
  for (const [name, f] of Object.entries(fns)) {
    for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
      test(`${name} ${dtype}`, () => {
        dr.tidy(() => {
          cases.forEach(([as, bs], i) => {
            const a = input(as, 7 + i, dtype);
            const b = input(bs, 70 + i, dtype, 0.5, 3);
            const got = dr.binary(name as never, a.t, b.t);
            const want = binaryRef(f, a.data, as, b.data, bs);
            expect(got.shape).toEqual(want.shape);
            expectClose(got, bf16Round(Array.from(want.data), dtype), dtype);
          });
        });
      });
    }
  }

  test('pow', () => {
    dr.tidy(() => {
      const a = input([4, 5], 1, 'float32', 0.1, 3);
      const b = input([5], 2, 'float32', -2, 2);
      expectClose(a.t.pow(b.t), binaryRef(Math.pow, a.data, [4, 5], b.data, [5]).data);
    });
  });

  test('strided operands: a transposed view plus a broadcast row', () => {
    dr.tidy(() => {
      const a = input([9, 4], 5);
      const b = input([9], 6);
      const got = a.t.T.add(b.t);
      const want: number[] = [];
      for (let i = 0; i < 4; ++i) for (let j = 0; j < 9; ++j) want.push(a.data[j * 4 + i] + b.data[j]);
      expectClose(got, want);
    });
  });

  test('scalars on either side', () => {
    dr.tidy(() => {
      const a = input([3, 7], 9);
      expectClose(a.t.mul(2.5), Array.from(a.data, (v) => v * 2.5));
      expectClose(dr.sub(1, a.t), Array.from(a.data, (v) => 1 - v));
      expectClose(dr.div(2, a.t), Array.from(a.data, (v) => 2 / v), 'float32', 10);
      expectClose(dr.pow(a.t.abs(), 0.5), Array.from(a.data, (v) => Math.sqrt(Math.abs(v))));
    });
  });

  test('comparisons give bool; where selects', () => {
    dr.tidy(() => {
      const a = dr.tensor([[1, 5, 3], [4, 2, 6]]);
      const b = dr.tensor([3, 3, 3]);
      const gt = a.gt(b);
      expect(gt.dtype).toBe('bool');
      expect(gt.arraySync()).toEqual([[false, true, false], [true, false, true]]);
      expect(a.eq(3).arraySync()).toEqual([[false, false, true], [false, false, false]]);
      expect(a.le(b).logicalNot().arraySync()).toEqual(gt.arraySync());
      expect(gt.logicalAnd(a.lt(6)).arraySync()).toEqual([[false, true, false], [true, false, false]]);
      const w = dr.where(gt, a, b.neg());
      expect(w.arraySync()).toEqual([[-3, 5, -3], [4, -3, 6]]);
      expect(dr.where(gt, 1, 0).arraySync()).toEqual([[0, 1, 0], [1, 0, 1]]);
    });
  });

  test('int32 arithmetic stays int32; div promotes to float32', () => {
    dr.tidy(() => {
      const a = dr.tensor(new Int32Array([7, -7, 9]));
      const b = dr.tensor(new Int32Array([2, 2, 3]));
      const s = a.add(b);
      expect(s.dtype).toBe('int32');
      expect(Array.from(s.dataSync())).toEqual([9, -5, 12]);
      const d = a.div(b);
      expect(d.dtype).toBe('float32');
      expect(Array.from(d.dataSync())).toEqual([3.5, -3.5, 3]);
      expect(a.mul(0.5).dtype).toBe('float32');
    });
  });

  test('mixed dtypes promote (bfloat16 + float32 = float32)', () => {
    dr.tidy(() => {
      const a = dr.tensor([1.5, 2.5], undefined, { dtype: 'bfloat16' });
      const b = dr.tensor([0.25, 0.5]);
      const c = a.add(b);
      expect(c.dtype).toBe('float32');
      expect(Array.from(c.dataSync())).toEqual([1.75, 3]);
    });
  });

  test('maximum/minimum propagate NaN; clamp', () => {
    dr.tidy(() => {
      const a = dr.tensor([NaN, 1, 5]);
      const m = a.maximum(dr.tensor([0, 2, 3])).dataSync();
      expect(Number.isNaN(m[0])).toBe(true);
      expect(Array.from(m.slice(1))).toEqual([2, 5]);
      expect(Array.from(dr.tensor([-2, 0.5, 3]).clamp(0, 1).dataSync())).toEqual([0, 0.5, 1]);
    });
  });
});
