// Attention against a straightforward float64 reference with materialised scores.
import * as dr from '../../lib';
import { expectClose, setNativeEnv } from '../helpers';
import { randArray } from '../reference';

type Mode = 'global' | 'sliding' | 'block';
interface RefOpts { mode: Mode; causal: boolean; window: number; scale: number; pad?: boolean[][]; rows?: number[][] }

function visible(mode: Mode, causal: boolean, w: number, p: number, j: number): boolean {
  if (causal && j > p) return false;
  if (mode === 'sliding') return causal ? j > p - w : Math.abs(p - j) < w;
  if (mode === 'block') return Math.floor(j / w) === Math.floor(p / w);
  return true;
}

/** out [B,Hq,n,D] and lse [B,Hq,n] in float64 from the formula. */
function attnRef(q: Float64Array, k: Float64Array, v: Float64Array, [B, Hq, Sq, D]: number[], Hkv: number, Sk: number, o: RefOpts) {
  const G = Hq / Hkv;
  const n = o.rows ? o.rows[0].length : Sq;
  const out = new Float64Array(B * Hq * n * D);
  const lse = new Float64Array(B * Hq * n);
  for (let b = 0; b < B; ++b)
    for (let h = 0; h < Hq; ++h)
      for (let r = 0; r < n; ++r) {
        const i = o.rows ? o.rows[b][r] : r;
        const p = i + Sk - Sq;
        const kh = Math.floor(h / G);
        const s: number[] = [];
        const idx: number[] = [];
        for (let j = 0; j < Sk; ++j) {
          if (!visible(o.mode, o.causal, o.window, p, j) || (o.pad && o.pad[b][j])) continue;
          let dot = 0;
          for (let d = 0; d < D; ++d) dot += q[((b * Hq + h) * Sq + i) * D + d] * k[((b * Hkv + kh) * Sk + j) * D + d];
          s.push(dot * o.scale);
          idx.push(j);
        }
        const row = (b * Hq + h) * n + r;
        if (!s.length) {
          lse[row] = -Infinity;
          continue;
        }
        const m = Math.max(...s);
        const e = s.map((x) => Math.exp(x - m));
        const z = e.reduce((a, x) => a + x, 0);
        lse[row] = m + Math.log(z);
        for (let t = 0; t < idx.length; ++t)
          for (let d = 0; d < D; ++d) out[row * D + d] += (e[t] / z) * v[((b * Hkv + kh) * Sk + idx[t]) * D + d];
      }
  return { out, lse };
}

function make(shape: number[], seed: number, dtype: dr.DType = 'float32') {
  const raw = randArray(shape.reduce((a, b) => a * b, 1), seed, -1.5, 1.5);
  const t = dr.tensor(raw, shape, { dtype });
  return { t, data: Float64Array.from(t.dataSync()) };
}

const cases: Array<{ B: number; Hq: number; Hkv: number; Sq: number; Sk: number; D: number }> = [
  { B: 1, Hq: 1, Hkv: 1, Sq: 1, Sk: 1, D: 1 },
  { B: 2, Hq: 3, Hkv: 3, Sq: 7, Sk: 7, D: 5 },
  { B: 1, Hq: 6, Hkv: 2, Sq: 33, Sk: 50, D: 32 },
  { B: 1, Hq: 4, Hkv: 1, Sq: 130, Sk: 130, D: 64 },
  { B: 2, Hq: 2, Hkv: 1, Sq: 1, Sk: 257, D: 128 },
];

describe('attention forward against the float64 reference', () => {
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
    for (const c of cases) {
      test(`${dtype} B${c.B} Hq${c.Hq} Hkv${c.Hkv} Sq${c.Sq} Sk${c.Sk} D${c.D}`, () => {
        dr.tidy(() => {
          const q = make([c.B, c.Hq, c.Sq, c.D], 1, dtype);
          const k = make([c.B, c.Hkv, c.Sk, c.D], 2, dtype);
          const v = make([c.B, c.Hkv, c.Sk, c.D], 3, dtype);
          // float32 and bfloat16 kernels round the scale to float32 once; float64 uses it exactly
          const scale = dtype === 'float64' ? 1 / Math.sqrt(c.D) : Math.fround(1 / Math.sqrt(c.D));
          const budget = dtype === 'bfloat16' ? 'bfloat16' : dtype;
          for (const causal of [false, true]) {
            const g = dr.globalAttention(q.t, k.t, v.t, { causal, returnLse: true });
            const want = attnRef(q.data, k.data, v.data, [c.B, c.Hq, c.Sq, c.D], c.Hkv, c.Sk, { mode: 'global', causal, window: 1, scale });
            expectClose(g.out, want.out, budget);
            expectClose(g.lse, want.lse, dtype === 'float64' ? 'float64' : 'float32', dtype === 'bfloat16' ? 100 : 1);
            for (const window of [1, 3, 16, c.Sk + 5]) {
              for (const mode of ['sliding', 'block'] as const) {
                const got = dr.localAttention(q.t, k.t, v.t, { window, causal, mode });
                const ref = attnRef(q.data, k.data, v.data, [c.B, c.Hq, c.Sq, c.D], c.Hkv, c.Sk, { mode, causal, window, scale });
                expectClose(got, ref.out, budget);
              }
            }
          }
        });
      });
    }
  }

  test('fewer keys than queries without causal (cross-attention to a routed subset); causal refuses', () => {
    dr.tidy(() => {
      for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
        for (const [Sq, Sk, D] of [[9, 4, 8], [130, 1, 64], [5, 3, 37]]) {
          const B = 2, Hq = 4, Hkv = 2;
          const q = make([B, Hq, Sq, D], 40, dtype), k = make([B, Hkv, Sk, D], 41, dtype), v = make([B, Hkv, Sk, D], 42, dtype);
          const scale = dtype === 'float64' ? 1 / Math.sqrt(D) : Math.fround(1 / Math.sqrt(D));
          const budget = dtype === 'bfloat16' ? 'bfloat16' : dtype;
          const g = dr.globalAttention(q.t, k.t, v.t, { returnLse: true });
          const want = attnRef(q.data, k.data, v.data, [B, Hq, Sq, D], Hkv, Sk, { mode: 'global', causal: false, window: 1, scale });
          expectClose(g.out, want.out, budget);
          expectClose(g.lse, want.lse, dtype === 'float64' ? 'float64' : 'float32', dtype === 'bfloat16' ? 100 : 1);
          for (const mode of ['sliding', 'block'] as const) {
            const ref = attnRef(q.data, k.data, v.data, [B, Hq, Sq, D], Hkv, Sk, { mode, causal: false, window: 3, scale });
            expectClose(dr.localAttention(q.t, k.t, v.t, { window: 3, mode }), ref.out, budget);
          }
          expect(() => dr.globalAttention(q.t, k.t, v.t, { causal: true })).toThrow(/causal attention needs at least as many keys/);
        }
      }
      const f = (shape: number[], seed: number) => make(shape, seed, 'float64').t.requiresGrad_();
      const ok = dr.gradcheck((a, b, c) => dr.globalAttention(a, b, c), [f([1, 2, 5, 3], 43), f([1, 1, 2, 3], 44), f([1, 1, 2, 3], 45)]).ok;
      expect(ok).toBe(true);
    });
  });

  test('window >= Sk equals global attention exactly', () => {
    dr.tidy(() => {
      const q = make([1, 2, 40, 16], 4).t;
      const k = make([1, 2, 40, 16], 5).t;
      const v = make([1, 2, 40, 16], 6).t;
      for (const causal of [false, true]) {
        expect(dr.localAttention(q, k, v, { window: 40, causal }).dataSync()).toEqual(dr.globalAttention(q, k, v, { causal }).dataSync());
        expect(dr.localAttention(q, k, v, { window: 1000, causal, mode: 'block' }).dataSync()).toEqual(dr.globalAttention(q, k, v, { causal }).dataSync());
      }
    });
  });

  test('key padding masks and fully masked rows (zeros, lse -inf)', () => {
    dr.tidy(() => {
      const B = 2, H = 2, S = 9, D = 8;
      const q = make([B, H, S, D], 7), k = make([B, H, S, D], 8), v = make([B, H, S, D], 9);
      const pad = [[false, true, false, false, true, false, false, false, true], [true, true, true, false, false, false, false, false, false]];
      const mask = dr.tensor(pad.flat(), [B, S]);
      const got = dr.globalAttention(q.t, k.t, v.t, { causal: true, keyPaddingMask: mask, returnLse: true });
      const want = attnRef(q.data, k.data, v.data, [B, H, S, D], H, S, { mode: 'global', causal: true, window: 1, scale: Math.fround(1 / Math.sqrt(D)), pad });
      expectClose(got.out, want.out);
      const lse = got.lse.dataSync();
      // batch 1's first three rows see only padding
      expect(lse[(1 * H + 0) * S + 0]).toBe(-Infinity);
      expect(Array.from(got.out.dataSync().slice(((1 * H) * S) * D, ((1 * H) * S + 1) * D))).toEqual(new Array(D).fill(0));
    });
  });

  test('queryIndex computes only the listed rows, in order, repeats allowed', () => {
    dr.tidy(() => {
      const B = 2, H = 2, S = 20, D = 16;
      const q = make([B, H, S, D], 10), k = make([B, H, S, D], 11), v = make([B, H, S, D], 12);
      const rows = [[19, 3, 3, 0, 7], [5, 5, 18, 1, 2]];
      const got = dr.globalAttention(q.t, k.t, v.t, { causal: true, queryIndex: dr.tensor(new Int32Array(rows.flat()), [B, 5]) });
      expect(got.shape).toEqual([B, H, 5, D]);
      expectClose(got, attnRef(q.data, k.data, v.data, [B, H, S, D], H, S, { mode: 'global', causal: true, window: 1, scale: 0.25, rows }).out);
      // an out-of-range row is data: the op fails while it runs (see the async-failure tests)
      const bad = dr.globalAttention(q.t, k.t, v.t, { queryIndex: dr.tensor(new Int32Array([0, 20]), [1, 2]).expand([2, 2]).contiguous() });
      expect(() => bad.dataSync()).toThrow(dr.OutOfRangeError);
    });
  });

  test('decode with the keys split across threads (few heads, long Sk) matches the reference', () => {
    dr.tidy(() => {
      for (const [mode, causal, window] of [['global', false, 1], ['sliding', true, 700], ['block', false, 600]] as const) {
        const Sk = 2000, D = 64;
        const q = make([1, 1, 1, D], 16), k = make([1, 1, Sk, D], 17), v = make([1, 1, Sk, D], 18);
        const pad = [Array.from({ length: Sk }, (_, j) => j % 7 === 3)];
        const kp = dr.tensor(pad.flat(), [1, Sk]);
        const got = mode === 'global' ? dr.globalAttention(q.t, k.t, v.t, { causal, keyPaddingMask: kp, returnLse: true })
          : dr.localAttention(q.t, k.t, v.t, { window, causal, mode, keyPaddingMask: kp, returnLse: true });
        const want = attnRef(q.data, k.data, v.data, [1, 1, 1, D], 1, Sk, { mode, causal, window, scale: Math.fround(1 / 8), pad });
        expectClose(got.out, want.out);
        expectClose(got.lse, want.lse);
      }
    });
  });

  test('scores over the whole exponent range (large scales): out and lse against float64, the backward against the float64 kernel', () => {
    dr.tidy(() => {
      // scale 12: row maxima ~ 100, so e^(s - max) runs from 1 down past float32's underflow
      // (the kernels' exp flushes below ~-87.7 and clamps -inf); scale 3: a wide but dense spread
      const shape = [1, 2, 45, 16];
      const q = make(shape, 31), k = make(shape, 32), v = make(shape, 33), up = make(shape, 34);
      for (const scale of [12, 3]) {
        for (const [mode, window] of [['global', 1], ['sliding', 9]] as const) {
          const fwd = (qq: dr.Tensor, kk: dr.Tensor, vv: dr.Tensor) => mode === 'global'
            ? dr.globalAttention(qq, kk, vv, { causal: true, scale, returnLse: true })
            : dr.localAttention(qq, kk, vv, { causal: true, window, scale, returnLse: true });
          const got = fwd(q.t, k.t, v.t);
          const want = attnRef(q.data, k.data, v.data, shape, 2, 45, { mode, causal: true, window, scale });
          expectClose(got.out, want.out);
          expectClose(got.lse, want.lse);
          const grads = (dtype: dr.DType) => {
            const xs = [q.t, k.t, v.t].map((t) => t.to(dtype).requiresGrad_());
            fwd(xs[0], xs[1], xs[2]).out.backward(up.t.to(dtype));
            return xs.map((t) => t.grad!.to('float64').dataSync());
          };
          const g32 = grads('float32'), g64 = grads('float64');
          const norm = Math.max(...g64.map((g) => Math.max(...Array.from(g, Math.abs))));
          for (let x = 0; x < 3; ++x) expectClose(g32[x], g64[x], 'float32', Math.max(1, norm));
        }
      }
    });
  });

  test('decode: Sq = 1 against a long key sequence is the last row of the full call', () => {
    dr.tidy(() => {
      const q = make([1, 4, 300, 32], 13), k = make([1, 2, 300, 32], 14), v = make([1, 2, 300, 32], 15);
      const full = dr.localAttention(q.t, k.t, v.t, { window: 64, causal: true });
      const last = dr.localAttention(q.t.narrow(2, 299, 1), k.t, v.t, { window: 64, causal: true });
      expectClose(last, full.narrow(2, 299, 1).contiguous().dataSync());
    });
  });
});

describe('dualAttention', () => {
  for (const perHead of [false, true]) {
    test(`equals g_local * local + g_global * global (${perHead ? 'per-head' : 'shared'} gates), with and without queryIndex`, () => {
      dr.tidy(() => {
        const B = 2, H = 4, Hkv = 2, S = 37, D = 16, W = 8;
        const q = make([B, H, S, D], 20), k = make([B, Hkv, S, D], 21), v = make([B, Hkv, S, D], 22);
        const gshape = perHead ? [B, H, S, 2] : [B, S, 2];
        const gates = make(gshape, 23);
        const scale = 0.25;
        const loc = attnRef(q.data, k.data, v.data, [B, H, S, D], Hkv, S, { mode: 'sliding', causal: true, window: W, scale }).out;
        const glo = attnRef(q.data, k.data, v.data, [B, H, S, D], Hkv, S, { mode: 'global', causal: true, window: 1, scale }).out;
        const sel = [[0, 5, 36, 5], [10, 11, 12, 13]];
        for (const withIndex of [false, true]) {
          const got = dr.dualAttention(q.t, k.t, v.t, {
            window: W, causal: true, gates: gates.t,
            ...(withIndex ? { queryIndex: dr.tensor(new Int32Array(sel.flat()), [B, 4]) } : {}),
          });
          const want = new Float64Array(loc.length);
          for (let b = 0; b < B; ++b)
            for (let h = 0; h < H; ++h)
              for (let i = 0; i < S; ++i) {
                const gi = perHead ? ((b * H + h) * S + i) * 2 : (b * S + i) * 2;
                const onGlobal = !withIndex || sel[b].includes(i);
                for (let d = 0; d < D; ++d) {
                  const o = ((b * H + h) * S + i) * D + d;
                  want[o] = gates.data[gi] * loc[o] + (onGlobal ? gates.data[gi + 1] * glo[o] : 0);
                }
              }
          expectClose(got, want);
        }
        const sumForm = dr.dualAttention(q.t, k.t, v.t, { window: W, causal: true, gates: dr.ones(gshape) });
        expectClose(sumForm, Array.from(loc, (x, i) => x + glo[i]));
      });
    });
  }
});

describe('rope', () => {
  test('rotate-half against the formula; inverse undoes it', () => {
    dr.tidy(() => {
      for (const dtype of ['float32', 'float64'] as dr.DType[]) {
        const B = 2, H = 3, S = 5, D = 8;
        const x = make([B, H, S, D], 30, dtype);
        const pos = [[0, 1, 2, 100, 7], [3, 3, 9, 4000, 0]];
        const got = dr.rope(x.t, dr.tensor(new Int32Array(pos.flat()), [B, S]), { base: 10000 });
        const want = new Float64Array(x.data.length);
        for (let b = 0; b < B; ++b)
          for (let h = 0; h < H; ++h)
            for (let s = 0; s < S; ++s)
              for (let i = 0; i < D / 2; ++i) {
                const th = pos[b][s] * Math.pow(10000, (-2 * i) / D);
                const o = ((b * H + h) * S + s) * D;
                want[o + i] = x.data[o + i] * Math.cos(th) - x.data[o + i + D / 2] * Math.sin(th);
                want[o + i + D / 2] = x.data[o + i + D / 2] * Math.cos(th) + x.data[o + i] * Math.sin(th);
              }
          expectClose(got, want, dtype);
        const shared = dr.rope(x.t, dr.tensor(new Int32Array([0, 1, 2, 3, 4])));
        expect(shared.shape).toEqual([B, H, S, D]);
      }
    });
  });
});

describe('argument checks', () => {
  test('shapes, heads, windows and dtypes are named', () => {
    dr.tidy(() => {
      const q = dr.zeros([1, 4, 8, 16]), k = dr.zeros([1, 3, 8, 16]);
      expect(() => dr.globalAttention(q, k, k)).toThrow(/multiple of the key\/value heads/);
      expect(() => dr.localAttention(q, q, q, { window: 0 })).toThrow(/window >= 1/);
      expect(() => dr.localAttention(q, q, q, { window: 2, mode: 'ring' as never })).toThrow(/'sliding' or 'block'/);
      expect(() => dr.globalAttention(q, dr.zeros([1, 4, 4, 16]), dr.zeros([1, 4, 4, 16]), { causal: true })).toThrow(/Sk 4 >= Sq 8/);
      expect(() => dr.globalAttention(q, q.to('float64'), q)).toThrow(dr.DTypeError);
      expect(() => dr.dualAttention(q, q, q, { window: 2, gates: dr.zeros([1, 8, 3]) })).toThrow(/Expected gates of shape/);
      expect(() => dr.rope(dr.zeros([1, 1, 2, 3]), dr.tensor(new Int32Array([0, 1])))).toThrow(/even headDim/);
    });
  });

  test('memory stays linear in the sequence length (no S x S buffer)', () => {
    dr.tidy(() => {
      const S = 2048, D = 32;
      const q = dr.randn([1, 2, S, D]);
      dr.synchronize(); // outputs are allocated when their op runs
      const before = dr.memory().cpu.bytes;
      const out = dr.localAttention(q, q, q, { window: 64, causal: true });
      dr.synchronize();
      // exactly the output was allocated: q, k, v are contiguous and no scores were stored
      expect(dr.memory().cpu.bytes - before).toBe(out.byteSize);
      const g = dr.globalAttention(q, q, q, { causal: true });
      dr.synchronize();
      expect(dr.memory().cpu.bytes - before).toBe(out.byteSize + g.byteSize);
    });
  });
});

describe('gradients', () => {
  const f64 = (shape: number[], seed: number) => dr.tensor(randArray(shape.reduce((a, b) => a * b, 1), seed, -1, 1), shape, { dtype: 'float64' }).requiresGrad_();
  const check = (name: string, fn: (...xs: dr.Tensor[]) => dr.Tensor, inputs: () => dr.Tensor[]) =>
    test(name, () => dr.tidy(() => expect(dr.gradcheck(fn, inputs()).ok).toBe(true)));
  check('globalAttention causal, GQA', (q, k, v) => dr.globalAttention(q, k, v, { causal: true }), () => [f64([1, 4, 5, 3], 1), f64([1, 2, 7, 3], 2), f64([1, 2, 7, 3], 3)]);
  check('globalAttention with queryIndex and padding', (q, k, v) => dr.globalAttention(q, k, v, {
    queryIndex: dr.tensor(new Int32Array([2, 0, 2]), [1, 3]), keyPaddingMask: dr.tensor([[false, true, false, false]]),
  }), () => [f64([1, 2, 4, 3], 4), f64([1, 2, 4, 3], 5), f64([1, 2, 4, 3], 6)]);
  check('localAttention sliding, window 2', (q, k, v) => dr.localAttention(q, k, v, { window: 2, causal: true }), () => [f64([2, 2, 6, 4], 7), f64([2, 2, 6, 4], 8), f64([2, 2, 6, 4], 9)]);
  check('localAttention block, non-causal', (q, k, v) => dr.localAttention(q, k, v, { window: 3, mode: 'block' }), () => [f64([1, 1, 7, 2], 10), f64([1, 1, 7, 2], 11), f64([1, 1, 7, 2], 12)]);
  check('dualAttention with gates and queryIndex', (q, k, v, g) => dr.dualAttention(q, k, v, {
    window: 2, causal: true, gates: g, queryIndex: dr.tensor(new Int32Array([1, 4]), [1, 2]),
  }), () => [f64([1, 2, 5, 3], 13), f64([1, 1, 5, 3], 14), f64([1, 1, 5, 3], 15), f64([1, 5, 2], 16)]);
  check('dualAttention per-head gates', (q, k, v, g) => dr.dualAttention(q, k, v, { window: 3, gates: g }), () => [f64([1, 2, 4, 2], 17), f64([1, 2, 4, 2], 18), f64([1, 2, 4, 2], 19), f64([1, 2, 4, 2], 20)]);
  check('rope', (x) => dr.rope(x, dr.tensor(new Int32Array([0, 3, 11]))), () => [f64([1, 2, 3, 4], 21)]);
});

/** dq, dk, dv of sum(out * W) in float64 from the formula (P materialised per row). */
function attnGradRef(q: Float64Array, k: Float64Array, v: Float64Array, W: Float64Array, [B, Hq, Sq, D]: number[], Hkv: number, Sk: number, o: RefOpts) {
  const G = Hq / Hkv;
  const n = o.rows ? o.rows[0].length : Sq;
  const dq = new Float64Array(q.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length);
  for (let b = 0; b < B; ++b)
    for (let h = 0; h < Hq; ++h)
      for (let r = 0; r < n; ++r) {
        const i = o.rows ? o.rows[b][r] : r;
        const p = i + Sk - Sq, kh = Math.floor(h / G);
        const qo = ((b * Hq + h) * Sq + i) * D, wo = ((b * Hq + h) * n + r) * D;
        const idx: number[] = [], s: number[] = [];
        for (let j = 0; j < Sk; ++j) {
          if (!visible(o.mode, o.causal, o.window, p, j) || (o.pad && o.pad[b][j])) continue;
          let dot = 0;
          for (let d = 0; d < D; ++d) dot += q[qo + d] * k[((b * Hkv + kh) * Sk + j) * D + d];
          s.push(dot * o.scale);
          idx.push(j);
        }
        if (!idx.length) continue;
        const m = Math.max(...s);
        const e = s.map((x) => Math.exp(x - m));
        const z = e.reduce((a, x) => a + x, 0);
        const P = e.map((x) => x / z);
        const dP = idx.map((j) => {
          let t = 0;
          for (let d = 0; d < D; ++d) t += W[wo + d] * v[((b * Hkv + kh) * Sk + j) * D + d];
          return t;
        });
        const Dr = P.reduce((a, x, t) => a + x * dP[t], 0);
        idx.forEach((j, t) => {
          const ko = ((b * Hkv + kh) * Sk + j) * D;
          const ds = P[t] * (dP[t] - Dr) * o.scale;
          for (let d = 0; d < D; ++d) {
            dq[qo + d] += ds * k[ko + d];
            dk[ko + d] += ds * q[qo + d];
            dv[ko + d] += P[t] * W[wo + d];
          }
        });
      }
  return { dq, dk, dv };
}

describe('attention backward against the float64 reference gradient', () => {
  // Shapes past a key run (256 keys) and several query tiles, so that every backward form
  // (fused per (b, kv head); heads in chunks with partials; split into key runs and query
  // tiles) cuts the work into pieces.
  const shapes = [
    { B: 1, Hq: 4, Hkv: 1, Sq: 301, Sk: 557, D: 64 },
    { B: 2, Hq: 2, Hkv: 2, Sq: 70, Sk: 70, D: 37 },
  ];
  const modes: Array<{ mode: Mode; causal: boolean; window: number; rows?: boolean; pad?: boolean }> = [
    { mode: 'global', causal: true, window: 0, pad: true },
    { mode: 'sliding', causal: true, window: 100 },
    { mode: 'sliding', causal: false, window: 33 },
    { mode: 'block', causal: true, window: 64 },
    { mode: 'global', causal: false, window: 0, rows: true },
  ];
  const saved = process.env.DUALROUTE_ATTN_BWD;
  afterAll(() => {
    setNativeEnv('DUALROUTE_ATTN_BWD', saved);
  });
  for (const s of shapes)
    for (const md of modes)
      test(`B${s.B} H${s.Hq}/${s.Hkv} S${s.Sq}/${s.Sk} D${s.D} ${md.mode} causal=${md.causal} w=${md.window}${md.rows ? ' queryIndex' : ''}${md.pad ? ' padding' : ''}`, () => {
        const scale = Math.fround(1 / Math.sqrt(s.D));
        const q = make([s.B, s.Hq, s.Sq, s.D], 101);
        const k = make([s.B, s.Hkv, s.Sk, s.D], 102);
        const v = make([s.B, s.Hkv, s.Sk, s.D], 103);
        const rows = md.rows ? Array.from({ length: s.B }, (_, b) => [s.Sq - 1, 0, 5 % s.Sq, 5 % s.Sq, ...Array.from({ length: 40 }, (_, r) => (r * 7 + b) % s.Sq)]) : undefined;
        const pad = md.pad ? Array.from({ length: s.B }, (_, b) => Array.from({ length: s.Sk }, (_, j) => (j * 13 + b) % 9 === 0)) : undefined;
        const n = rows ? rows[0].length : s.Sq;
        const Wt = make([s.B, s.Hq, n, s.D], 104);
        const ref = attnGradRef(q.data, k.data, v.data, Wt.data, [s.B, s.Hq, s.Sq, s.D], s.Hkv, s.Sk, { mode: md.mode, causal: md.causal, window: md.window, scale, pad, rows });
        for (const form of ['fused', 'heads', 'split']) {
          setNativeEnv('DUALROUTE_ATTN_BWD', form);
          dr.tidy(() => {
            const [qg, kg, vg] = [q.t, k.t, v.t].map((x) => x.clone().requiresGrad_());
            const opts = {
              causal: md.causal, scale,
              queryIndex: rows ? dr.tensor(Int32Array.from(rows.flat()), [s.B, n]) : undefined,
              keyPaddingMask: pad ? dr.tensor(pad) : undefined,
            };
            const out = md.mode === 'global' ? dr.globalAttention(qg, kg, vg, opts)
              : dr.localAttention(qg, kg, vg, { ...opts, window: md.window, mode: md.mode });
            out.mul(Wt.t).sum().backward();
            expectClose(qg.grad!.dataSync(), ref.dq, 'float32');
            expectClose(kg.grad!.dataSync(), ref.dk, 'float32');
            expectClose(vg.grad!.dataSync(), ref.dv, 'float32');
          });
        }
      });
});

describe('dualAttention backward (one pass on the CPU) against the float64 reference gradient', () => {
  const saved = process.env.DUALROUTE_ATTN_BWD;
  afterAll(() => {
    setNativeEnv('DUALROUTE_ATTN_BWD', saved);
  });
  const shapes = [
    { B: 1, Hq: 4, Hkv: 1, Sq: 301, Sk: 301, D: 64, window: 40, mode: 'sliding' as Mode, perHead: false, rows: true, pad: true },
    { B: 2, Hq: 2, Hkv: 2, Sq: 45, Sk: 70, D: 37, window: 16, mode: 'block' as Mode, perHead: true, rows: false, pad: false },
  ];
  for (const s of shapes)
    test(`B${s.B} H${s.Hq}/${s.Hkv} S${s.Sq}/${s.Sk} D${s.D} ${s.mode} w=${s.window}${s.perHead ? ' per-head gates' : ''}${s.rows ? ' queryIndex' : ''}${s.pad ? ' padding' : ''}`, () => {
      const scale = Math.fround(1 / Math.sqrt(s.D));
      const q = make([s.B, s.Hq, s.Sq, s.D], 201);
      const k = make([s.B, s.Hkv, s.Sk, s.D], 202);
      const v = make([s.B, s.Hkv, s.Sk, s.D], 203);
      const gShape = s.perHead ? [s.B, s.Hq, s.Sq, 2] : [s.B, s.Sq, 2];
      const gates = make(gShape, 204);
      const Wt = make([s.B, s.Hq, s.Sq, s.D], 205);
      const rows = s.rows ? Array.from({ length: s.B }, (_, b) => Array.from({ length: 60 }, (_, r) => (r * 11 + 3 * b) % s.Sq)) : undefined;
      const isGlobal = rows ? rows.map((rs) => { const f = new Array(s.Sq).fill(false); rs.forEach((r) => { f[r] = true; }); return f; }) : undefined;
      const pad = s.pad ? Array.from({ length: s.B }, (_, b) => Array.from({ length: s.Sk }, (_, j) => (j * 7 + b) % 10 === 0)) : undefined;
      // W scaled per row by a gate column: the gradient of g_path * path is the path's gradient under W * g_path
      const gated = (c: number, onlyGlobal: boolean) => {
        const w = Float64Array.from(Wt.data);
        for (let b = 0; b < s.B; ++b)
          for (let h = 0; h < s.Hq; ++h)
            for (let i = 0; i < s.Sq; ++i) {
              let gv = gates.data[(s.perHead ? (b * s.Hq + h) * s.Sq + i : b * s.Sq + i) * 2 + c];
              if (onlyGlobal && isGlobal && !isGlobal[b][i]) gv = 0;
              for (let d = 0; d < s.D; ++d) w[((b * s.Hq + h) * s.Sq + i) * s.D + d] *= gv;
            }
        return w;
      };
      const dims = [s.B, s.Hq, s.Sq, s.D];
      const loc = attnGradRef(q.data, k.data, v.data, gated(0, false), dims, s.Hkv, s.Sk, { mode: s.mode, causal: true, window: s.window, scale, pad });
      const glo = attnGradRef(q.data, k.data, v.data, gated(1, true), dims, s.Hkv, s.Sk, { mode: 'global', causal: true, window: 0, scale, pad });
      const sumOf = (x: Float64Array, y: Float64Array) => x.map((a, i) => a + y[i]);
      for (const form of ['fused', 'heads', 'split']) {
        setNativeEnv('DUALROUTE_ATTN_BWD', form);
        dr.tidy(() => {
          const [qg, kg, vg] = [q.t, k.t, v.t].map((x) => x.clone().requiresGrad_());
          const out = dr.dualAttention(qg, kg, vg, {
            window: s.window, mode: s.mode, causal: true, gates: gates.t, scale,
            queryIndex: rows ? dr.tensor(Int32Array.from(rows.flat()), [s.B, rows[0].length]) : undefined,
            keyPaddingMask: pad ? dr.tensor(pad) : undefined,
          });
          out.mul(Wt.t).sum().backward();
          expectClose(qg.grad!.dataSync(), sumOf(loc.dq, glo.dq), 'float32');
          expectClose(kg.grad!.dataSync(), sumOf(loc.dk, glo.dk), 'float32');
          expectClose(vg.grad!.dataSync(), sumOf(loc.dv, glo.dv), 'float32');
        });
      }
    });
});

describe('non-finite inputs: propagated as the materialised softmax(q k^T * scale) v does, and keys a query cannot see never touch it', () => {
  type Poison = { what: 'q' | 'k' | 'v'; at: number[]; value: number; dim?: number };
  const poisons: Array<[string, Poison[]]> = [
    ['NaN query row', [{ what: 'q', at: [9], value: NaN }]],
    ['NaN in one key', [{ what: 'k', at: [20], value: NaN, dim: 3 }]],
    ['NaN values at the end', [{ what: 'v', at: [-4, -3, -2, -1], value: NaN }]],
    ['+Inf in one key', [{ what: 'k', at: [5], value: Infinity, dim: 1 }]],
    ['-Inf in one query element', [{ what: 'q', at: [-7], value: -Infinity, dim: 2 }]],
  ];
  const masks: Array<{ name: string; mode: Mode; causal: boolean; window: number; padTail?: boolean }> = [
    { name: 'global', mode: 'global', causal: false, window: 0 },
    { name: 'causal', mode: 'global', causal: true, window: 0 },
    { name: 'sliding 16', mode: 'sliding', causal: true, window: 16 },
    { name: 'block 64', mode: 'block', causal: true, window: 64 },
    { name: 'tail padded', mode: 'global', causal: true, window: 0, padTail: true },
  ];
  const shapes = [{ S: 130, D: 64, H: 2, Hkv: 1 }, { S: 37, D: 5, H: 1, Hkv: 1 }];

  function poisoned(shape: number[], seed: number, ps: Poison[], what: 'q' | 'k' | 'v', dtype: dr.DType) {
    const raw = randArray(shape.reduce((a, b) => a * b, 1), seed, -1.5, 1.5);
    const [B, H, S, D] = shape;
    for (const p of ps) {
      if (p.what !== what) continue;
      for (const at of p.at) {
        const row = at < 0 ? S + at : at;
        for (let b = 0; b < B; ++b)
          for (let h = 0; h < H; ++h)
            for (let d = 0; d < D; ++d) if (p.dim === undefined || d === p.dim % D) raw[((b * H + h) * S + row) * D + d] = p.value;
      }
    }
    const t = dr.tensor(raw, shape, { dtype });
    return { t, data: Float64Array.from(t.dataSync()) };
  }

  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[])
    for (const sh of shapes)
      for (const m of masks)
        test(`${dtype} S${sh.S} D${sh.D} ${m.name}: forward and backward`, () => {
          const scale = dtype === 'float64' ? 1 / Math.sqrt(sh.D) : Math.fround(1 / Math.sqrt(sh.D));
          const budget = dtype === 'bfloat16' ? 'bfloat16' : dtype;
          for (const [, ps] of poisons) {
            dr.tidy(() => {
              const q = poisoned([1, sh.H, sh.S, sh.D], 301, ps, 'q', dtype);
              const k = poisoned([1, sh.Hkv, sh.S, sh.D], 302, ps, 'k', dtype);
              const v = poisoned([1, sh.Hkv, sh.S, sh.D], 303, ps, 'v', dtype);
              const pad = m.padTail ? [Array.from({ length: sh.S }, (_, j) => j >= sh.S - 4)] : undefined;
              const ref = { mode: m.mode, causal: m.causal, window: m.window, scale, pad };
              const want = attnRef(q.data, k.data, v.data, [1, sh.H, sh.S, sh.D], sh.Hkv, sh.S, ref);
              const opts = { causal: m.causal, scale, keyPaddingMask: pad ? dr.tensor(pad) : undefined, returnLse: true as const };
              const got = m.mode === 'global' ? dr.globalAttention(q.t, k.t, v.t, opts)
                : dr.localAttention(q.t, k.t, v.t, { ...opts, window: m.window, mode: m.mode });
              expectClose(got.out, want.out, budget);
              expectClose(got.lse, want.lse, dtype === 'float64' ? 'float64' : 'float32', dtype === 'bfloat16' ? 100 : 1);
              if (dtype === 'bfloat16') return; // the gradients' NaN pattern is the same; their values are bf16-rough
              const W = make([1, sh.H, sh.S, sh.D], 304, dtype);
              const g = attnGradRef(q.data, k.data, v.data, W.data, [1, sh.H, sh.S, sh.D], sh.Hkv, sh.S, ref);
              // every backward form: one task per kv head, heads in chunks, keys and queries split
              for (const form of ['fused', 'heads', 'split']) {
                setNativeEnv('DUALROUTE_ATTN_BWD', form);
                const [qf, kf, vf] = [q.t, k.t, v.t].map((x) => x.clone().requiresGrad_());
                const o = m.mode === 'global' ? dr.globalAttention(qf, kf, vf, { ...opts, returnLse: false })
                  : dr.localAttention(qf, kf, vf, { ...opts, returnLse: false, window: m.window, mode: m.mode });
                o.mul(W.t).sum().backward();
                expectClose(qf.grad!.dataSync(), g.dq, dtype, 4);
                expectClose(kf.grad!.dataSync(), g.dk, dtype, 4);
                expectClose(vf.grad!.dataSync(), g.dv, dtype, 4);
              }
              setNativeEnv('DUALROUTE_ATTN_BWD', undefined);
            });
          }
        });
  test('decode with the keys split across threads: NaN in keys or values the query cannot see never reaches it', () => {
    dr.tidy(() => {
      const Sk = 2000, D = 64, scale = Math.fround(1 / 8);
      for (const [mode, causal, window] of [['global', true, 1], ['sliding', true, 700], ['block', false, 600]] as const)
        for (const [what, at] of [['v', 3], ['k', 10], ['v', 1990], ['k', 1500]] as const) {
          const q = make([1, 1, 1, D], 16);
          const rk = Float64Array.from(make([1, 1, Sk, D], 17).data), rv = Float64Array.from(make([1, 1, Sk, D], 18).data);
          (what === 'k' ? rk : rv)[at * D + 5] = NaN;
          const k = dr.tensor(rk, [1, 1, Sk, D], { dtype: 'float32' }), v = dr.tensor(rv, [1, 1, Sk, D], { dtype: 'float32' });
          // a decode query at the last position: the sliding window sees [1300, 2000), the block [1800, 2000)
          const got = mode === 'global' ? dr.globalAttention(q.t, k, v, { causal, scale, returnLse: true })
            : dr.localAttention(q.t, k, v, { window, causal, mode, scale, returnLse: true });
          const want = attnRef(q.data, rk, rv, [1, 1, 1, D], 1, Sk, { mode, causal, window, scale });
          expectClose(got.out, want.out);
          expectClose(got.lse, want.lse);
        }
    });
  });

  test('sliding window over many tiles: a NaN or inf value reaches exactly the rows whose window holds its key, call after call', () => {
    // D 64 takes the vector packing and row stores; S 300 gives tiles whose edge chunks (one
    // vector group of lanes alone) and 64-key blocks straddle the non-finite keys. The values'
    // finiteness is found per 64-key block once per call: a clean call after a NaN one, and a
    // NaN in a block an earlier tile of the same call found clean, must both come out right.
    dr.tidy(() => {
      const S = 300, D = 64, W = 40, scale = 0.125;
      const dims = [1, 2, S, D];
      const q = make(dims, 31), k = make(dims, 32);
      const clean = make(dims, 33, 'float32').data;
      for (const dtype of ['float32', 'bfloat16'] as const)
        for (const bad of [[], [63], [64, 150], [127, 128, 299], [0]]) {
          const rv = Float64Array.from(clean);
          bad.forEach((j, x) => { rv[(1 * S + j) * D + 7] = x % 2 ? Infinity : NaN; rv[j * D + 3] = NaN; });
          const v = dr.tensor(rv, dims, { dtype });
          const got = dr.localAttention(dr.cast(q.t, dtype), dr.cast(k.t, dtype), v, { window: W, causal: true, scale, returnLse: true });
          const qd = Float64Array.from(dr.cast(q.t, dtype).dataSync()), kd = Float64Array.from(dr.cast(k.t, dtype).dataSync());
          const want = attnRef(qd, kd, Float64Array.from(v.dataSync()), dims, 2, S, { mode: 'sliding', causal: true, window: W, scale });
          const out = got.out.dataSync();
          for (let h = 0; h < 2; ++h)
            for (let p = 0; p < S; ++p) {
              const sees = bad.some((j) => j <= p && j > p - W);
              const row = Array.from(out.subarray((h * S + p) * D, (h * S + p + 1) * D));
              expect([h, p, row.some((x) => !Number.isFinite(x))]).toEqual([h, p, sees]);
            }
          expectClose(got.out, want.out, dtype);
          expectClose(got.lse, want.lse, dtype);
        }
    });
  });

  test('repeated backward calls of different lengths give the gradients of a fresh process (kept accumulator rows are zeroed)', () => {
    dr.tidy(() => {
      const D = 16, W = 24, scale = 0.25;
      const grads = (S: number, seed: number) => {
        const dims = [1, 2, S, D];
        const [q, k, v, w] = [make(dims, seed), make(dims, seed + 1), make(dims, seed + 2), make(dims, seed + 3)];
        const t = [q.t, k.t, v.t].map((x) => x.clone().requiresGrad_());
        dr.localAttention(t[0], t[1], t[2], { window: W, causal: true, scale }).mul(w.t).sum().backward();
        const ref = attnGradRef(q.data, k.data, v.data, w.data, dims, 2, S, { mode: 'sliding', causal: true, window: W, scale });
        expectClose(t[0].grad!, ref.dq, 'float32', 4);
        expectClose(t[1].grad!, ref.dk, 'float32', 4);
        expectClose(t[2].grad!, ref.dv, 'float32', 4);
        return t.map((x) => Array.from(x.grad!.dataSync()));
      };
      const first = grads(257, 40);
      grads(90, 50);
      grads(513, 60);
      expect(grads(257, 40)).toEqual(first);
    });
  });

  test('dualAttention: each path propagates what it sees, and NaN beyond the local window stays out of the local path', () => {
    dr.tidy(() => {
      const B = 1, H = 2, Hkv = 1, S = 70, D = 16, W = 8, scale = 0.25;
      const q = make([B, H, S, D], 40);
      const rk = Float64Array.from(make([B, Hkv, S, D], 41).data), rv = Float64Array.from(make([B, Hkv, S, D], 42).data);
      rv[3 * D + 1] = NaN; // key 3: inside every later row's global span, outside local windows past row 10
      rk[50 * D + 2] = NaN;
      const k = dr.tensor(rk, [B, Hkv, S, D], { dtype: 'float32' }), v = dr.tensor(rv, [B, Hkv, S, D], { dtype: 'float32' });
      const gates = make([B, S, 2], 43);
      const loc = attnRef(q.data, rk, rv, [B, H, S, D], Hkv, S, { mode: 'sliding', causal: true, window: W, scale }).out;
      const glo = attnRef(q.data, rk, rv, [B, H, S, D], Hkv, S, { mode: 'global', causal: true, window: 1, scale }).out;
      for (const rows of [undefined, [[0, 2, 20, 69]]]) {
        const got = dr.dualAttention(q.t, k, v, { window: W, causal: true, gates: gates.t, scale, queryIndex: rows ? dr.tensor(Int32Array.from(rows.flat()), [1, 4]) : undefined });
        const want = new Float64Array(loc.length);
        for (let h = 0; h < H; ++h)
          for (let i = 0; i < S; ++i) {
            const onGlobal = !rows || rows[0].includes(i);
            for (let d = 0; d < D; ++d) {
              const o = (h * S + i) * D + d;
              want[o] = gates.data[i * 2] * loc[o] + (onGlobal ? gates.data[i * 2 + 1] * glo[o] : 0);
            }
          }
        expectClose(got, want);
      }
    });
  });
});

describe('ragged queryIndex (queryCount)', () => {
  test('rows past each batch row\'s count are padding: never read, 0 and lse -inf, no gradient', () => {
    dr.tidy(() => {
      const B = 3, H = 2, Hkv = 1, S = 40, D = 16, n = 9;
      const counts = [9, 4, 0];
      const rows = [
        [39, 0, 5, 5, 17, 33, 2, 38, 20],
        [7, 30, 1, 12, -5, 999, 40, -1, 3], // padding holds garbage: never read
        [100, 100, 100, 100, 100, 100, 100, 100, 100],
      ];
      const q = make([B, H, S, D], 501), k = make([B, Hkv, S, D], 502), v = make([B, Hkv, S, D], 503);
      const qi = dr.tensor(Int32Array.from(rows.flat()), [B, n]);
      const qc = dr.tensor(Int32Array.from(counts), [B]);
      const scale = 0.25;
      const got = dr.globalAttention(q.t, k.t, v.t, { causal: true, scale, queryIndex: qi, queryCount: qc, returnLse: true });
      // the reference: the real rows of each batch row, clamped to a valid index for the padding
      const safe = rows.map((r, b) => r.map((x, i) => (i < counts[b] ? x : 0)));
      const want = attnRef(q.data, k.data, v.data, [B, H, S, D], Hkv, S, { mode: 'global', causal: true, window: 1, scale, rows: safe });
      for (let b = 0; b < B; ++b)
        for (let h = 0; h < H; ++h)
          for (let r = counts[b]; r < n; ++r) {
            const row = (b * H + h) * n + r;
            want.lse[row] = -Infinity;
            want.out.fill(0, row * D, row * D + D);
          }
      expectClose(got.out, want.out);
      expectClose(got.lse, want.lse);
      // gradients: those of the real rows alone (dout of the padding rows must not matter)
      const W = make([B, H, n, D], 504);
      const [qg, kg, vg] = [q.t, k.t, v.t].map((x) => x.clone().requiresGrad_());
      dr.globalAttention(qg, kg, vg, { causal: true, scale, queryIndex: qi, queryCount: qc }).mul(W.t).sum().backward();
      const Wm = Float64Array.from(W.data);
      for (let b = 0; b < B; ++b)
        for (let h = 0; h < H; ++h)
          for (let r = counts[b]; r < n; ++r) Wm.fill(0, ((b * H + h) * n + r) * D, ((b * H + h) * n + r + 1) * D);
      const g = attnGradRef(q.data, k.data, v.data, Wm, [B, H, S, D], Hkv, S, { mode: 'global', causal: true, window: 1, scale, rows: safe });
      expectClose(qg.grad!.dataSync(), g.dq, 'float32');
      expectClose(kg.grad!.dataSync(), g.dk, 'float32');
      expectClose(vg.grad!.dataSync(), g.dv, 'float32');
      // dual: padding entries select no row for the global path
      const gates = make([B, S, 2], 505);
      const withCount = dr.dualAttention(q.t, k.t, v.t, { window: 5, causal: true, gates: gates.t, scale, queryIndex: qi, queryCount: qc });
      const loc = attnRef(q.data, k.data, v.data, [B, H, S, D], Hkv, S, { mode: 'sliding', causal: true, window: 5, scale }).out;
      const glo = attnRef(q.data, k.data, v.data, [B, H, S, D], Hkv, S, { mode: 'global', causal: true, window: 1, scale }).out;
      const wantDual = new Float64Array(loc.length);
      for (let b = 0; b < B; ++b)
        for (let h = 0; h < H; ++h)
          for (let i = 0; i < S; ++i) {
            const on = rows[b].slice(0, counts[b]).includes(i);
            for (let d = 0; d < D; ++d) {
              const o = ((b * H + h) * S + i) * D + d;
              wantDual[o] = gates.data[(b * S + i) * 2] * loc[o] + (on ? gates.data[(b * S + i) * 2 + 1] * glo[o] : 0);
            }
          }
      expectClose(withCount, wantDual);
      expect(() => dr.globalAttention(q.t, k.t, v.t, { queryCount: qc })).toThrow(/give a queryIndex too/);
      expect(() => dr.globalAttention(q.t, k.t, v.t, { queryIndex: qi, queryCount: dr.tensor([1, 2, 3]) })).toThrow(dr.ShapeError);
    });
  });
});
