// The fused ops (lib/ops/fused.ts): addRmsNorm and biasAct, forward, backward kernels and
// autograd, against float64 references written from the formulas with plain loops (the
// intermediate x + residual / x + bias rounded to the dtype, as the ops document), against the
// unfused composition they replace, and float64 gradient checks.
import * as dr from '../../lib';
import { addRmsNormBackward, biasActBackward, BiasActivation } from '../../lib/ops/fused';
import { expectClose, input } from '../helpers';
import { erf } from '../reference';

const DTYPES: dr.DType[] = ['float32', 'float64', 'bfloat16'];
// bfloat16 outputs computed in float from bf16-rounded inputs, and reductions over many rows
const scaleOf = (dtype: dr.DType) => (dtype === 'bfloat16' ? 3 : 1);
// 1 row, odd widths (1, 3, 17), more than a vector (33, 1023: the CUDA warp path's limit), more
// than a warp's share (1025, 2050: the block path), many rows, a 3-D input
const SHAPES: number[][] = [[1, 1], [1, 3], [5, 17], [3, 33], [2, 1023], [2, 1025], [1, 2050], [67, 5], [2, 3, 9]];
const ACTS: BiasActivation[] = ['gelu', 'geluTanh', 'silu', 'relu'];

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** v rounded to dtype (bfloat16: round to nearest even on float32's upper 16 bits). */
function roundTo(dtype: dr.DType, v: number): number {
  if (dtype === 'float64') return v;
  f32[0] = v;
  if (dtype === 'float32' || Number.isNaN(v)) return f32[0];
  const u = u32[0];
  u32[0] = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16;
  return f32[0];
}

const numel = (s: number[]) => s.reduce((a, b) => a * b, 1);

// ---- references ----------------------------------------------------------------------------

function addRmsRef(dtype: dr.DType, x: Float64Array, r: Float64Array, w: Float64Array | null, cols: number, eps: number) {
  const n = x.length, rows = cols ? n / cols : 0;
  const h = new Float64Array(n), y = new Float64Array(n), rstd = new Float64Array(rows);
  for (let i = 0; i < rows; ++i) {
    let ss = 0;
    for (let j = 0; j < cols; ++j) {
      // the sum as the dtype's add computes and stores it (float32 math for float32 / bfloat16)
      const s = dtype === 'float64' ? x[i * cols + j] + r[i * cols + j] : Math.fround(x[i * cols + j] + r[i * cols + j]);
      h[i * cols + j] = roundTo(dtype, s);
      ss += h[i * cols + j] ** 2;
    }
    rstd[i] = 1 / Math.sqrt(ss / cols + eps);
    for (let j = 0; j < cols; ++j) y[i * cols + j] = h[i * cols + j] * rstd[i] * (w ? w[j] : 1);
  }
  return { h, y, rstd };
}

// dx = dh + r (g - xhat mean(g xhat)), g = dy w, xhat = h r; dw = sum_rows dy xhat
function addRmsBackRef(h: Float64Array, w: Float64Array | null, dy: Float64Array, dh: Float64Array | null, cols: number, eps: number) {
  const n = h.length, rows = cols ? n / cols : 0;
  const dx = new Float64Array(n), dw = new Float64Array(cols);
  for (let i = 0; i < rows; ++i) {
    let ss = 0;
    for (let j = 0; j < cols; ++j) ss += h[i * cols + j] ** 2;
    const r = 1 / Math.sqrt(ss / cols + eps);
    let sgx = 0;
    for (let j = 0; j < cols; ++j) sgx += dy[i * cols + j] * (w ? w[j] : 1) * h[i * cols + j] * r;
    const c2 = sgx / cols;
    for (let j = 0; j < cols; ++j) {
      const k = i * cols + j, xh = h[k] * r;
      dx[k] = r * (dy[k] * (w ? w[j] : 1) - xh * c2) + (dh ? dh[k] : 0);
      dw[j] += dy[k] * xh;
    }
  }
  return { dx, dw };
}

function actRef(act: BiasActivation, z: number): number {
  switch (act) {
    case 'gelu': return 0.5 * z * (1 + erf(z / Math.SQRT2));
    case 'geluTanh': return 0.5 * z * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (z + 0.044715 * z ** 3)));
    case 'silu': return z / (1 + Math.exp(-z));
    default: return z > 0 ? z : 0;
  }
}
function dactRef(act: BiasActivation, z: number): number {
  switch (act) {
    case 'gelu': return 0.5 * (1 + erf(z / Math.SQRT2)) + (z * Math.exp(-0.5 * z * z)) / Math.sqrt(2 * Math.PI);
    case 'geluTanh': {
      const k = Math.sqrt(2 / Math.PI), c = 0.044715, t = Math.tanh(k * (z + c * z ** 3));
      return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * k * (1 + 3 * c * z * z);
    }
    case 'silu': {
      const s = 1 / (1 + Math.exp(-z));
      return s * (1 + z * (1 - s));
    }
    default: return z > 0 ? 1 : 0;
  }
}

function biasZ(dtype: dr.DType, x: Float64Array, b: Float64Array, cols: number): Float64Array {
  return x.map((v, k) => roundTo(dtype, dtype === 'float64' ? v + b[k % cols] : Math.fround(v + b[k % cols])));
}

// ---- addRmsNorm ------------------------------------------------------------------------------

describe('addRmsNorm', () => {
  const eps = 1e-5;
  for (const dtype of DTYPES) {
    test(`forward ${dtype} against the formula`, () => {
      dr.tidy(() => {
        SHAPES.forEach((shape, k) => {
          const cols = shape[shape.length - 1];
          for (const withW of [true, false]) {
            const x = input(shape, 10 + k, dtype, -3, 3);
            const r = input(shape, 20 + k, dtype, -3, 3);
            const w = input([cols], 30 + k, dtype, 0.5, 1.5);
            const want = addRmsRef(dtype, x.data, r.data, withW ? w.data : null, cols, eps);
            const { h, y } = dr.addRmsNorm(x.t, r.t, withW ? w.t : null, eps);
            expect(h.shape).toEqual(shape);
            expect(y.dtype).toBe(dtype);
            expectClose(h, want.h, dtype === 'bfloat16' ? 'float32' : dtype);  // the same rounding: close to float32's budget
            expectClose(y, want.y, dtype, scaleOf(dtype));
          }
        });
      });
    });

    test(`backward kernel ${dtype}: dx = dh + the norm's gradient, dweight`, () => {
      dr.tidy(() => {
        SHAPES.forEach((shape, k) => {
          const cols = shape[shape.length - 1];
          const rows = numel(shape) / cols;
          for (const [withW, withDh] of [[true, true], [false, true], [true, false]]) {
            const h = input(shape, 40 + k, dtype, -3, 3);
            const w = input([cols], 50 + k, dtype, 0.5, 1.5);
            const dy = input(shape, 60 + k, dtype);
            const dh = input(shape, 70 + k, dtype);
            // rstd from the formula, in the stats dtype
            const rs = new Float64Array(rows);
            for (let i = 0; i < rows; ++i) {
              let ss = 0;
              for (let j = 0; j < cols; ++j) ss += h.data[i * cols + j] ** 2;
              rs[i] = 1 / Math.sqrt(ss / cols + eps);
            }
            const rstd = dr.tensor(rs, shape.slice(0, -1), { dtype: dtype === 'float64' ? 'float64' : 'float32' });
            const want = addRmsBackRef(h.data, withW ? w.data : null, dy.data, withDh ? dh.data : null, cols, eps);
            const res = addRmsNormBackward(h.t, withW ? w.t : null, rstd, dy.t, withDh ? dh.t : null, true);
            expectClose(res.dx, want.dx, dtype, scaleOf(dtype));
            if (withW) expectClose(res.dweight!, want.dw, dtype, scaleOf(dtype) * (dtype === 'bfloat16' ? 2 : 1));
            else expect(res.dweight).toBeNull();
          }
        });
      });
    });

    test(`autograd ${dtype}: gradients of x, residual, weight with h used again downstream`, () => {
      dr.tidy(() => {
        SHAPES.forEach((shape, k) => {
          const cols = shape[shape.length - 1];
          const x = input(shape, 80 + k, dtype, -3, 3).t;
          const r = input(shape, 90 + k, dtype, -3, 3).t;
          const w = input([cols], 100 + k, dtype, 0.5, 1.5).t;
          const c1 = input(shape, 110 + k, dtype);
          const c2 = input(shape, 120 + k, dtype);
          for (const t of [x, r, w]) t.requiresGrad = true;
          const { h, y } = dr.addRmsNorm(x, r, w, eps);
          // L = sum(h c1) + sum(y c2): dh arrives at h from its other use (the residual stream)
          dr.backward(dr.add(dr.sum(dr.mul(h, c1.t)), dr.sum(dr.mul(y, c2.t))));
          const hd = Float64Array.from(h.dataSync());
          const want = addRmsBackRef(hd, Float64Array.from(w.dataSync()), c2.data, c1.data, cols, eps);
          expectClose(x.grad!, want.dx, dtype, scaleOf(dtype) * 2);
          expectClose(r.grad!, want.dx, dtype, scaleOf(dtype) * 2);
          expectClose(w.grad!, want.dw, dtype, scaleOf(dtype) * 2);
        });
      });
    });
  }

  test('equals add then rmsNorm (float32), values and gradients, whatever the order of h\'s uses', () => {
    dr.tidy(() => {
      for (const shape of [[4, 17], [2, 1025], [3, 2, 64]]) {
        const cols = shape[shape.length - 1];
        const xs = input(shape, 7, 'float32', -3, 3).t, rs = input(shape, 8, 'float32', -3, 3).t, ws = input([cols], 9, 'float32', 0.5, 1.5).t;
        const c = input(shape, 11, 'float32').t;
        const grads = (fused: boolean, hFirst: boolean) => {
          const [x, r, w] = [xs.clone(), rs.clone(), ws.clone()];
          for (const t of [x, r, w]) t.requiresGrad = true;
          let h: dr.Tensor, y: dr.Tensor;
          if (fused) ({ h, y } = dr.addRmsNorm(x, r, w, 1e-6));
          else {
            h = dr.add(x, r);
            y = dr.rmsNorm(h, w, 1e-6);
          }
          // the consumer of both runs first in the backward (y's rule then gets a pending dh),
          // or h's own consumer comes after y's
          const loss = hFirst ? dr.sum(dr.mul(dr.mul(h, y), c)) : dr.add(dr.sum(dr.mul(y, c)), dr.sum(dr.mul(dr.square(h), 0.25)));
          dr.backward(loss);
          return [h, y, x.grad!, r.grad!, w.grad!].map((t) => Float64Array.from(t.dataSync()));
        };
        for (const hFirst of [true, false]) {
          const a = grads(true, hFirst), b = grads(false, hFirst);
          a.forEach((v, i) => expectClose(v, b[i], 'float32'));
          // the forward values are the same bits: the same float sum, the same row statistics
          expect(Array.from(a[0])).toEqual(Array.from(b[0]));
          expect(Array.from(a[1])).toEqual(Array.from(b[1]));
        }
      }
    });
  });

  test('gradcheck (float64) of x, residual and weight through h and y', () => {
    dr.tidy(() => {
      for (const shape of [[1, 1], [3, 5], [2, 2, 7]]) {
        const cols = shape[shape.length - 1];
        const x = input(shape, 131, 'float64', -2, 2).t, r = input(shape, 132, 'float64', -2, 2).t, w = input([cols], 133, 'float64', 0.5, 1.5).t;
        for (const t of [x, r, w]) t.requiresGrad = true;
        const fn = (a: dr.Tensor, b: dr.Tensor, c: dr.Tensor) => {
          const { h, y } = dr.addRmsNorm(a, b, c, 1e-5);
          return dr.concat([h, y, dr.mul(h, y)], -1);
        };
        expect(dr.gradcheck(fn, [x, r, w]).ok).toBe(true);
        // and without a weight
        expect(dr.gradcheck((a: dr.Tensor, b: dr.Tensor) => dr.addRmsNorm(a, b, null, 1e-5).y, [x, r]).ok).toBe(true);
      }
    });
  });

  test('non-contiguous inputs, and a weight that does not need a gradient', () => {
    dr.tidy(() => {
      const x = input([17, 5], 141, 'float32').t, r = input([5, 17], 142, 'float32').t, w = input([5], 143, 'float32', 0.5, 1.5);
      const xt = dr.transpose(r, 0, 1);
      const want = addRmsRef('float32', Float64Array.from(x.dataSync()), Float64Array.from(dr.contiguous(xt).dataSync()), w.data, 5, 1e-6);
      expectClose(dr.addRmsNorm(x, xt, w.t).y, want.y);
      x.requiresGrad = true;
      const { y } = dr.addRmsNorm(x, xt, w.t);
      dr.backward(dr.sum(y));
      expect(x.grad!.shape).toEqual([17, 5]);
      expect(w.t.grad).toBeNull();
    });
  });

  test('rows whose squares leave float\'s range are computed exactly (float32, bfloat16)', () => {
    dr.tidy(() => {
      for (const dtype of ['float32', 'bfloat16'] as dr.DType[]) {
        const x = dr.tensor([[1e20, -1e20, 3e20], [1e-25, 2e-25, -1e-25]], undefined, { dtype });
        const r = dr.zeros([2, 3], { dtype });
        const xd = Float64Array.from(x.dataSync());
        const want = addRmsRef(dtype, xd, new Float64Array(6), null, 3, 0);
        expectClose(dr.addRmsNorm(x, r, null, 0).y, want.y, dtype);
      }
    });
  });

  test('bad arguments: typed errors naming the argument', () => {
    dr.tidy(() => {
      const x = dr.zeros([2, 4]);
      expect(() => dr.addRmsNorm(x, dr.zeros([2, 3]))).toThrow(dr.ShapeError);
      expect(() => dr.addRmsNorm(x, dr.zeros([2, 3]))).toThrow(/residual/);
      expect(() => dr.addRmsNorm(x, dr.zeros([2, 4], { dtype: 'float64' }))).toThrow(dr.DTypeError);
      expect(() => dr.addRmsNorm(x, x, dr.ones([3]))).toThrow(/Expected shape \[4\] for weight/);
      expect(() => dr.addRmsNorm(x, x, dr.ones([4], { dtype: 'bfloat16' }))).toThrow(dr.DTypeError);
      expect(() => dr.addRmsNorm(dr.zeros([2], { dtype: 'int32' }), dr.zeros([2], { dtype: 'int32' }))).toThrow(dr.DTypeError);
      expect(() => dr.addRmsNorm(dr.tensor(1), dr.tensor(1))).toThrow(dr.ShapeError);
      expect(() => dr.addRmsNorm(x, x, null, -1)).toThrow(/eps/);
      expect(() => dr.addRmsNorm(x, 'r' as unknown as dr.Tensor)).toThrow(/residual/);
      expect(() => dr.addRmsNorm(null as unknown as dr.Tensor, x)).toThrow(dr.ValueError);
      const rstd = dr.zeros([2]);
      expect(() => addRmsNormBackward(x, null, dr.zeros([3]), x, null, false)).toThrow(/rstd/);
      expect(() => addRmsNormBackward(x, null, rstd, dr.zeros([4, 2]), null, false)).toThrow(/dy/);
      expect(() => addRmsNormBackward(x, null, rstd, x, dr.zeros([2, 5]), false)).toThrow(/dh/);
      expect(() => addRmsNormBackward(x, null, dr.zeros([2], { dtype: 'float64' }), x, null, false)).toThrow(dr.DTypeError);
    });
  });
});

// ---- biasAct ----------------------------------------------------------------------------------

describe('biasAct', () => {
  for (const dtype of DTYPES) {
    test(`forward and backward kernel ${dtype} against the formulas`, () => {
      dr.tidy(() => {
        SHAPES.forEach((shape, k) => {
          const cols = shape[shape.length - 1];
          const x = input(shape, 200 + k, dtype, -5, 5);
          const b = input([cols], 210 + k, dtype, -1, 1);
          const dy = input(shape, 220 + k, dtype);
          const z = biasZ(dtype, x.data, b.data, cols);
          for (const act of ACTS) {
            expectClose(dr.biasAct(x.t, b.t, act), z.map((v) => actRef(act, v)), dtype, scaleOf(dtype));
            const dx = z.map((v, i) => dy.data[i] * dactRef(act, v));
            const db = new Float64Array(cols);
            dx.forEach((v, i) => (db[i % cols] += v));
            const res = biasActBackward(act, x.t, b.t, dy.t, true);
            expectClose(res.dx, dx, dtype, scaleOf(dtype));
            expectClose(res.dbias!, db, dtype, scaleOf(dtype) * (dtype === 'bfloat16' ? 2 : 1));
            const noBias = biasActBackward(act, x.t, b.t, dy.t, false);
            expect(noBias.dbias).toBeNull();
            expectClose(noBias.dx, dx, dtype, scaleOf(dtype));
          }
        });
      });
    });

    test(`autograd ${dtype}: gradients of x and bias`, () => {
      dr.tidy(() => {
        SHAPES.forEach((shape, k) => {
          const cols = shape[shape.length - 1];
          const xi = input(shape, 230 + k, dtype, -5, 5), bi = input([cols], 240 + k, dtype, -1, 1), c = input(shape, 250 + k, dtype);
          const z = biasZ(dtype, xi.data, bi.data, cols);
          for (const act of ACTS) {
            const x = xi.t.clone(), b = bi.t.clone();
            x.requiresGrad = true;
            b.requiresGrad = true;
            dr.backward(dr.sum(dr.mul(dr.biasAct(x, b, act), c.t)));
            const dx = z.map((v, i) => c.data[i] * dactRef(act, v));
            const db = new Float64Array(cols);
            dx.forEach((v, i) => (db[i % cols] += v));
            expectClose(x.grad!, dx, dtype, scaleOf(dtype));
            expectClose(b.grad!, db, dtype, scaleOf(dtype) * 2);
          }
        });
      });
    });
  }

  test('equals the activation of add(x, bias) (float32), values and gradients', () => {
    dr.tidy(() => {
      const x0 = input([9, 33], 261, 'float32', -5, 5).t, b0 = input([33], 262, 'float32').t, c = input([9, 33], 263, 'float32').t;
      const unfused: Record<BiasActivation, (t: dr.Tensor) => dr.Tensor> = {
        gelu: (t) => dr.gelu(t), geluTanh: (t) => dr.gelu(t, { approximate: 'tanh' }), silu: dr.silu, relu: dr.relu,
      };
      for (const act of ACTS) {
        const run = (fused: boolean) => {
          const x = x0.clone(), b = b0.clone();
          x.requiresGrad = true;
          b.requiresGrad = true;
          const y = fused ? dr.biasAct(x, b, act) : unfused[act](dr.add(x, b));
          dr.backward(dr.sum(dr.mul(y, c)));
          return [y, x.grad!, b.grad!].map((t) => Float64Array.from(t.dataSync()));
        };
        const a = run(true), u = run(false);
        a.forEach((v, i) => expectClose(v, u[i], 'float32'));
        // forward: the element-wise kernels' vector forms under the same contraction rule
        expect(Array.from(a[0])).toEqual(Array.from(u[0]));
      }
    });
  });

  // bfloat16 too: the sum rounds to bfloat16 in both (the fused kernel rounds x + bias as the add
  // stores it) and the activation is the same vector form (activations.h) in both
  test('equals the activation of add(x, bias) bit for bit in bfloat16 (forward)', () => {
    dr.tidy(() => {
      const x = input([7, 45], 264, 'bfloat16', -6, 6).t, b = input([45], 265, 'bfloat16').t;
      const unfused: Record<BiasActivation, (t: dr.Tensor) => dr.Tensor> = {
        gelu: (t) => dr.gelu(t), geluTanh: (t) => dr.gelu(t, { approximate: 'tanh' }), silu: dr.silu, relu: dr.relu,
      };
      for (const act of ACTS) {
        const f = Array.from(dr.biasAct(x, b, act).dataSync()), u = Array.from(unfused[act](dr.add(x, b)).dataSync());
        expect([act, f]).toEqual([act, u]);
      }
    });
  });

  test('gradcheck (float64) of x and bias, every activation', () => {
    dr.tidy(() => {
      for (const shape of [[1, 1], [4, 3], [2, 3, 5]]) {
        const cols = shape[shape.length - 1];
        // away from relu's kink at 0 (finite differences straddling it would disagree)
        const x = dr.tensor(input(shape, 271, 'float64', 0.2, 3).data.map((v, i) => (i % 2 ? -v : v)), shape, { dtype: 'float64' });
        const b = input([cols], 272, 'float64', -0.1, 0.1).t;
        x.requiresGrad = true;
        b.requiresGrad = true;
        for (const act of ACTS) expect(dr.gradcheck((p: dr.Tensor, q: dr.Tensor) => dr.biasAct(p, q, act), [x, b]).ok).toBe(true);
      }
    });
  });

  test('dbias is the same bit for bit on every run (a fixed-order row sum)', () => {
    dr.tidy(() => {
      const x = input([513, 37], 281, 'float32', -4, 4).t, b = input([37], 282, 'float32').t, dy = input([513, 37], 283, 'float32').t;
      const first = Array.from(biasActBackward('gelu', x, b, dy, true).dbias!.dataSync());
      for (let k = 0; k < 3; ++k) expect(Array.from(biasActBackward('gelu', x, b, dy, true).dbias!.dataSync())).toEqual(first);
    });
  });

  test('NaN stays NaN, relu keeps the sign rules of the unary op', () => {
    dr.tidy(() => {
      const y = dr.biasAct(dr.tensor([[NaN, -1, 2, 0]]), dr.tensor([0, 0, 0, 0]), 'relu').dataSync();
      expect(Number.isNaN(y[0])).toBe(true);
      expect(Array.from(y.slice(1))).toEqual([0, 2, 0]);
    });
  });

  test('bad arguments: typed errors naming the argument', () => {
    dr.tidy(() => {
      const x = dr.zeros([2, 4]);
      expect(() => dr.biasAct(x, dr.zeros([3]))).toThrow(/Expected shape \[4\] for bias/);
      expect(() => dr.biasAct(x, dr.zeros([4], { dtype: 'float64' }))).toThrow(dr.DTypeError);
      expect(() => dr.biasAct(x, dr.zeros([4]), 'tanh' as BiasActivation)).toThrow(/act/);
      expect(() => dr.biasAct(x, dr.zeros([4]), 'tanh' as BiasActivation)).toThrow(dr.ValueError);
      expect(() => dr.biasAct(dr.zeros([4], { dtype: 'int32' }), dr.zeros([4], { dtype: 'int32' }))).toThrow(dr.DTypeError);
      expect(() => dr.biasAct(dr.tensor(1), dr.zeros([1]))).toThrow(dr.ShapeError);
      expect(() => dr.biasAct(x, null as unknown as dr.Tensor)).toThrow(/bias/);
      expect(() => biasActBackward('gelu', x, dr.zeros([4]), dr.zeros([4, 2]), true)).toThrow(/dy/);
      expect(() => biasActBackward('sigmoid' as BiasActivation, x, dr.zeros([4]), x, true)).toThrow(dr.ValueError);
    });
  });
});

// ---- the nn helpers that use them ----------------------------------------------------------------

describe('nn: addAndNorm and MLP use the fused ops', () => {
  test('addAndNorm equals add then the RMSNorm, fused or not (mixed dtypes fall back)', () => {
    dr.tidy(() => {
      const norm = new dr.nn.RMSNorm(17, 1e-6);
      dr.noGrad(() => norm.weight.copy_(input([17], 301, 'float32', 0.5, 1.5).t));
      const x = input([3, 17], 302, 'float32').t, r = input([3, 17], 303, 'float32').t;
      const { h, y } = dr.nn.addAndNorm(x, r, norm);
      const h2 = dr.add(x, r);
      expectClose(h, h2.dataSync());
      expectClose(y, norm.forward(h2).dataSync());
      // a bfloat16 residual: add promotes to float32, then the norm (the unfused path)
      const rb = r.to('bfloat16');
      const mixed = dr.nn.addAndNorm(x, rb, norm);
      const hb = dr.add(x, rb);
      expect(mixed.h.dtype).toBe('float32');
      expectClose(mixed.h, hb.dataSync());
      expectClose(mixed.y, norm.forward(hb).dataSync());
      expect(() => dr.nn.addAndNorm(x, r, {} as dr.nn.RMSNorm)).toThrow(/RMSNorm/);
    });
  });

  test('an MLP with a bias (gelu) equals down(gelu(up(x))) with its gradients', () => {
    dr.tidy(() => {
      const mlp = new dr.nn.MLP(12, 20, 'gelu', { generator: new dr.Generator(5) });
      expect(mlp.up.bias).not.toBeNull();
      const x = input([2, 3, 12], 311, 'float32').t;
      const y = mlp.forward(x);
      const ref = dr.add(dr.matmul(dr.gelu(dr.add(dr.matmul(x, mlp.up.weight, { transB: true }), mlp.up.bias!)), mlp.down.weight, { transB: true }), mlp.down.bias!);
      expectClose(y, ref.dataSync());
      dr.backward(dr.sum(dr.mul(mlp.forward(x), 1.5)));
      const g1 = [mlp.up.weight.grad!, mlp.up.bias!.grad!].map((t) => Float64Array.from(t.dataSync()));
      mlp.zeroGrad();
      const z = dr.add(dr.matmul(x, mlp.up.weight, { transB: true }), mlp.up.bias!);
      dr.backward(dr.sum(dr.mul(dr.add(dr.matmul(dr.gelu(z), mlp.down.weight, { transB: true }), mlp.down.bias!), 1.5)));
      expectClose(g1[0], Float64Array.from(mlp.up.weight.grad!.dataSync()));
      expectClose(g1[1], Float64Array.from(mlp.up.bias!.grad!.dataSync()));
    });
  });
});
