// moeDispatch, moeCombine, groupedMatmul and moeExpertFFN against float64 references written from
// the formulas with plain loops (routing built here too, independently of routerGate: an expert
// without tokens, capacity overflow, E = 1, topK = E, T divisible by nothing), in both layouts and
// every dtype; float64 gradchecks of every differentiable path; typed errors for bad arguments and
// bad routing data.
import * as dr from '../../lib';
import { expectClose, expectReadFails, input } from '../helpers';
import { erf, prng } from '../reference';

interface Routing {
  T: number; E: number; K: number;
  indices: number[]; positions: number[]; counts: number[];
  capacity: number; // 0: dropless
}

// distinct experts per token (never `skip`), slots in the router's order: every first choice
// before any second one, tokens in order; -1 from `capacity` on (0: none)
function makeRouting(T: number, E: number, K: number, seed: number, capacity = 0, skip = -1): Routing {
  const r = prng(seed);
  const indices: number[] = [];
  const pool = Array.from({ length: E }, (_, e) => e).filter((e) => e !== skip);
  for (let t = 0; t < T; ++t) {
    const p = pool.slice();
    for (let i = p.length - 1; i > 0; --i) {
      const j = Math.floor(r() * (i + 1));
      [p[i], p[j]] = [p[j], p[i]];
    }
    indices.push(...p.slice(0, K));
  }
  const positions = new Array(T * K).fill(0);
  const run = new Array(E).fill(0);
  for (let k = 0; k < K; ++k)
    for (let t = 0; t < T; ++t) {
      const e = indices[t * K + k];
      const q = run[e]++;
      positions[t * K + k] = capacity > 0 && q >= capacity ? -1 : q;
    }
  const counts = run.map((c) => (capacity > 0 ? Math.min(c, capacity) : c));
  return { T, E, K, indices, positions, counts, capacity };
}

const i32 = (a: number[], shape: number[]) => dr.tensor(Int32Array.from(a), shape);

// the buffer row of each entry: dropless offsets[e] + p, capacity e * C + p; -1 when dropped
function refRows(R: Routing, layout: 'dropless' | 'capacity', C: number): { rows: number[]; N: number; offsets: number[] } {
  const offsets = [0];
  for (let e = 0; e < R.E; ++e) offsets.push(layout === 'dropless' ? offsets[e] + R.counts[e] : (e + 1) * C);
  const rows = R.indices.map((e, i) => (R.positions[i] < 0 ? -1 : layout === 'dropless' ? offsets[e] + R.positions[i] : e * C + R.positions[i]));
  return { rows, N: layout === 'dropless' ? R.T * R.K : R.E * C, offsets };
}

function refDispatch(x: ArrayLike<number>, D: number, rows: number[], N: number, K: number): Float64Array {
  const out = new Float64Array(N * D);
  rows.forEach((r, i) => {
    if (r < 0) return;
    const t = Math.floor(i / K);
    for (let j = 0; j < D; ++j) out[r * D + j] = x[t * D + j];
  });
  return out;
}

function refCombine(y: ArrayLike<number>, D: number, rows: number[], w: ArrayLike<number>, T: number, K: number): Float64Array {
  const out = new Float64Array(T * D);
  for (let t = 0; t < T; ++t)
    for (let k = 0; k < K; ++k) {
      const r = rows[t * K + k];
      if (r < 0) continue;
      for (let j = 0; j < D; ++j) out[t * D + j] += w[t * K + k] * y[r * D + j];
    }
  return out;
}

const silu = (v: number) => v / (1 + Math.exp(-v));
const geluRef = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));

// per expert e, the rows [offsets[e], offsets[e+1]): act(x @ w1[e]) @ w2[e]; other rows 0
function refFFN(x: ArrayLike<number>, N: number, D: number, offsets: number[], w1: ArrayLike<number>, F1: number, w2: ArrayLike<number>,
  act: 'swiglu' | 'gelu'): Float64Array {
  const F = act === 'swiglu' ? F1 / 2 : F1;
  const out = new Float64Array(N * D);
  for (let e = 0; e + 1 < offsets.length; ++e)
    for (let r = offsets[e]; r < offsets[e + 1]; ++r) {
      const h = new Float64Array(F1);
      for (let f = 0; f < F1; ++f) {
        let s = 0;
        for (let d = 0; d < D; ++d) s += x[r * D + d] * w1[(e * D + d) * F1 + f];
        h[f] = s;
      }
      const a = new Float64Array(F);
      for (let f = 0; f < F; ++f) a[f] = act === 'swiglu' ? silu(h[f]) * h[F + f] : geluRef(h[f]);
      for (let d = 0; d < D; ++d) {
        let s = 0;
        for (let f = 0; f < F; ++f) s += a[f] * w2[(e * F + f) * D + d];
        out[r * D + d] = s;
      }
    }
  return out;
}

// T, E, K, capacity (0: dropless routing), expert without tokens
const ROUTINGS: Array<[number, number, number, number, number]> = [
  [1, 1, 1, 0, -1],     // one token, one expert
  [37, 8, 2, 0, 3],     // T divisible by nothing, expert 3 gets no token
  [37, 8, 2, 6, -1],    // capacity overflow: entries past 6 per expert dropped
  [13, 5, 5, 0, -1],    // topK = E
  [70, 1, 1, 0, -1],    // E = 1: more rows than a 64-row tile
  [150, 6, 3, 40, 0],   // capacity 40 with drops and an empty expert
];

describe('moeDispatch and moeCombine', () => {
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[])
    test(`${dtype}: buffers (both layouts) and the weighted combine against the reference`, () => {
      dr.tidy(() => {
        ROUTINGS.forEach(([T, E, K, cap, skip], ci) => {
          const R = makeRouting(T, E, K, 50 + ci, cap, skip);
          const D = [1, 7, 33, 64][ci % 4];
          const { t: x, data: xd } = input([T, D], 70 + ci, dtype);
          const { t: w, data: wd } = input([T, K], 90 + ci, dtype === 'float64' ? 'float64' : 'float32', 0, 1);
          const indices = i32(R.indices, [T, K]);
          const positions = i32(R.positions, [T, K]);
          const counts = i32(R.counts, [E]);
          for (const layout of ['dropless', 'capacity'] as const) {
            // the capacity layout of a dropless routing: C = the largest count
            const C = cap || Math.max(...R.counts);
            const opts: dr.MoeLayoutOptions = layout === 'dropless' ? { counts } : { capacity: C, experts: E };
            const { buffer, offsets, plan } = dr.moeDispatch(x, indices, positions, opts);
            const ref = refRows(R, layout, C);
            expect(buffer.shape).toEqual(layout === 'dropless' ? [T * K, D] : [E, C, D]);
            expect(Array.from(offsets.dataSync())).toEqual(ref.offsets);
            expect(Array.from(plan.rows.dataSync())).toEqual(ref.rows);
            // exact: a copy
            expect(Array.from(buffer.dataSync())).toEqual(Array.from(refDispatch(xd, D, ref.rows, ref.N, K)));
            // combine y = the buffer scaled (any grouped tensor): with the plan, and recomputed from the options
            const { t: y, data: yd } = input(buffer.shape.slice(), 110 + ci, dtype);
            const want = refCombine(yd, D, ref.rows, wd, T, K);
            const tol = dtype === 'float64' ? 'float64' : dtype === 'bfloat16' ? 'bfloat16' : 'float32';
            expectClose(dr.moeCombine(y, indices, positions, w, { plan }), want, tol, Math.sqrt(K));
            expectClose(dr.moeCombine(y, indices, positions, w, opts), want, tol, Math.sqrt(K));
          }
        });
      });
    });

  test('dispatch then combine with unit weights gives x times the kept choices; offsets work instead of counts', () => {
    dr.tidy(() => {
      const R = makeRouting(29, 4, 2, 7, 9);
      const { t: x, data: xd } = input([29, 5], 3, 'float64');
      const indices = i32(R.indices, [29, 2]);
      const positions = i32(R.positions, [29, 2]);
      const off = refRows(R, 'dropless', 0).offsets;
      const { buffer } = dr.moeDispatch(x, indices, positions, { offsets: i32(off, [5]) });
      const out = dr.moeCombine(buffer, indices, positions, dr.ones([29, 2], { dtype: 'float64' }), { offsets: i32(off, [5]) });
      const want = new Float64Array(29 * 5);
      for (let t = 0; t < 29; ++t) {
        const kept = [0, 1].filter((k) => R.positions[t * 2 + k] >= 0).length;
        for (let j = 0; j < 5; ++j) want[t * 5 + j] = kept * xd[t * 5 + j];
      }
      expectClose(out, want, 'float64');
    });
  });

  test('gradients: dispatch (x), combine (y and weights), both layouts, through routerGate to the logits', () => {
    dr.tidy(() => {
      const R = makeRouting(11, 4, 2, 5, 4, 1);
      const indices = i32(R.indices, [11, 2]);
      const positions = i32(R.positions, [11, 2]);
      const counts = i32(R.counts, [4]);
      const x = input([11, 3], 1, 'float64').t.requiresGrad_();
      for (const opts of [{ counts }, { capacity: 4, experts: 4 }] as dr.MoeLayoutOptions[]) {
        const up = input(opts.capacity ? [4, 4, 3] : [22, 3], 2, 'float64').t;
        expect(dr.gradcheck((a) => dr.moeDispatch(a, indices, positions, opts).buffer.mul(up), [x]).ok).toBe(true);
        const y = input(opts.capacity ? [4, 4, 3] : [22, 3], 3, 'float64').t.requiresGrad_();
        const w = input([11, 2], 4, 'float64', 0, 1).t.requiresGrad_();
        const up2 = input([11, 3], 5, 'float64').t;
        expect(dr.gradcheck((a, b) => dr.moeCombine(a, indices, positions, b, opts).mul(up2), [y, w]).ok).toBe(true);
      }
      // the whole layer: gate weights -> dispatch -> FFN -> combine, gradient to the logits and the tokens
      const logits = input([9, 4], 6, 'float64').t.requiresGrad_();
      const xs = input([9, 3], 7, 'float64').t.requiresGrad_();
      const w1 = input([4, 3, 4], 8, 'float64', -1, 1).t;
      const w2 = input([4, 2, 3], 9, 'float64', -1, 1).t;
      const up3 = input([9, 3], 10, 'float64').t;
      const layer = (l: dr.Tensor, a: dr.Tensor) => {
        const g = dr.routerGate(l, { topK: 2, capacityFactor: 0.75 });
        const d = dr.moeDispatch(a, g.indices, g.positions, { counts: g.counts });
        const h = dr.moeExpertFFN(d.buffer, w1, w2, { offsets: d.offsets });
        return dr.moeCombine(h, g.indices, g.positions, g.weights, { plan: d.plan }).mul(up3);
      };
      expect(dr.gradcheck(layer, [logits, xs]).ok).toBe(true);
    });
  });
});

describe('groupedMatmul and moeExpertFFN', () => {
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[])
    test(`${dtype}: grouped GEMM (transB too) and the expert FFN in both layouts against the reference`, () => {
      dr.tidy(() => {
        const tol = dtype === 'float64' ? 'float64' : dtype === 'bfloat16' ? 'bfloat16' : 'float32';
        // offsets with an empty expert, a long one (more than a tile), rows left over at the end
        const cases: Array<{ N: number; D: number; F: number; offsets: number[] }> = [
          { N: 1, D: 1, F: 1, offsets: [0, 1] },
          { N: 150, D: 33, F: 17, offsets: [0, 5, 5, 120, 131] },
          { N: 20, D: 8, F: 70, offsets: [2, 9, 9, 9, 18] },
        ];
        cases.forEach(({ N, D, F, offsets }, ci) => {
          const E = offsets.length - 1;
          const { t: a, data: ad } = input([N, D], 200 + ci, dtype);
          const { t: b, data: bd } = input([E, D, F], 210 + ci, dtype, -1, 1);
          const off = i32(offsets, [E + 1]);
          const want = new Float64Array(N * F);
          for (let e = 0; e < E; ++e)
            for (let r = offsets[e]; r < offsets[e + 1]; ++r)
              for (let f = 0; f < F; ++f) {
                let s = 0;
                for (let d = 0; d < D; ++d) s += ad[r * D + d] * bd[(e * D + d) * F + f];
                want[r * F + f] = s;
              }
          expectClose(dr.groupedMatmul(a, b, off), want, tol, Math.sqrt(D));
          expectClose(dr.groupedMatmul(a, b.transpose(1, 2).contiguous(), off, { transB: true }), want, tol, Math.sqrt(D));
          for (const act of ['swiglu', 'gelu'] as const) {
            const F1 = act === 'swiglu' ? 2 * F : F;
            const { t: w1, data: w1d } = input([E, D, F1], 220 + ci, dtype, -0.5, 0.5);
            const { t: w2, data: w2d } = input([E, F, D], 230 + ci, dtype, -0.5, 0.5);
            const ref = refFFN(ad, N, D, offsets, w1d, F1, w2d, act);
            expectClose(dr.moeExpertFFN(a, w1, w2, { activation: act, offsets: off }), ref, tol, 2 * Math.sqrt(D + F));
            // capacity layout: C = N rows per expert, expert e's rows as its slots, the rest zero
            const C = Math.max(...offsets.slice(1).map((o, e) => o - offsets[e]));
            const cap = new Float64Array(E * C * D);
            const capRef = new Float64Array(E * C * D);
            for (let e = 0; e < E; ++e)
              for (let r = offsets[e]; r < offsets[e + 1]; ++r)
                for (let d = 0; d < D; ++d) {
                  cap[(e * C + r - offsets[e]) * D + d] = ad[r * D + d];
                  capRef[(e * C + r - offsets[e]) * D + d] = ref[r * D + d];
                }
            const capT = dr.tensor(cap, [E, C, D], { dtype });
            expectClose(dr.moeExpertFFN(capT, w1, w2, { activation: act }), capRef, tol, 2 * Math.sqrt(D + F));
          }
        });
      });
    });

  test('gradients of groupedMatmul (both forms) and moeExpertFFN (both layouts and activations)', () => {
    dr.tidy(() => {
      const off = i32([0, 3, 3, 7], [4]);  // expert 1 empty, row 7 outside every expert
      const a = input([8, 3], 1, 'float64').t.requiresGrad_();
      const b = input([3, 3, 5], 2, 'float64').t.requiresGrad_();
      const bt = input([3, 5, 3], 3, 'float64').t.requiresGrad_();
      const up = input([8, 5], 4, 'float64').t;
      expect(dr.gradcheck((x, w) => dr.groupedMatmul(x, w, off).mul(up), [a, b]).ok).toBe(true);
      expect(dr.gradcheck((x, w) => dr.groupedMatmul(x, w, off, { transB: true }).mul(up), [a, bt]).ok).toBe(true);
      for (const act of ['swiglu', 'gelu'] as const) {
        const w1 = input([3, 3, act === 'swiglu' ? 4 : 2], 5, 'float64', -1, 1).t.requiresGrad_();
        const w2 = input([3, 2, 3], 6, 'float64', -1, 1).t.requiresGrad_();
        const up2 = input([8, 3], 7, 'float64').t;
        expect(dr.gradcheck((x, p, q) => dr.moeExpertFFN(x, p, q, { activation: act, offsets: off }).mul(up2), [a, w1, w2]).ok).toBe(true);
        const c = input([3, 2, 3], 8, 'float64').t.requiresGrad_();
        const up3 = input([3, 2, 3], 9, 'float64').t;
        expect(dr.gradcheck((x, p, q) => dr.moeExpertFFN(x, p, q, { activation: act }).mul(up3), [c, w1, w2]).ok).toBe(true);
      }
    });
  });
});

describe('MoE errors', () => {
  test('bad options and shapes are typed errors naming the argument, expected and received', () => {
    dr.tidy(() => {
      const R = makeRouting(6, 3, 2, 1);
      const idx = i32(R.indices, [6, 2]);
      const pos = i32(R.positions, [6, 2]);
      const counts = i32(R.counts, [3]);
      const x = dr.zeros([6, 4]);
      expect(() => dr.moeDispatch(x, idx, pos, { capacity: -1, experts: 3 })).toThrow(/moeDispatch: Expected an integer capacity in \[0, \d+\] but received number -1/);
      expect(() => dr.moeDispatch(x, idx, pos, { capacity: -1, experts: 3 })).toThrow(dr.OutOfRangeError);
      expect(() => dr.moeDispatch(x, idx, pos, {})).toThrow(dr.ValueError);
      expect(() => dr.moeDispatch(x, idx, pos, { counts, capacity: 2, layout: 'dropless' })).toThrow(dr.ValueError);
      expect(() => dr.moeDispatch(x, idx, pos, { layout: 'x' as 'dropless', counts })).toThrow(/'dropless' or 'capacity' for layout/);
      expect(() => dr.moeDispatch(dr.zeros([5, 4]), idx, pos, { counts })).toThrow(dr.ShapeError);
      expect(() => dr.moeDispatch(x, idx, i32([0, 0, 0], [3, 1]), { counts })).toThrow(/positions of shape \[6, 2\]/);
      expect(() => dr.moeDispatch(x, dr.zeros([6, 2]), pos, { counts })).toThrow(dr.DTypeError);
      expect(() => dr.moeDispatch(x, idx, pos, { capacity: 2 })).toThrow(/experts .* or counts/);
      expect(() => dr.moeCombine(dr.zeros([12, 4]), idx, pos, dr.zeros([6, 3]), { counts })).toThrow(/weights of shape \[6, 2\]/);
      expect(() => dr.moeCombine(dr.zeros([11, 4]), idx, pos, dr.zeros([6, 2]), { counts })).toThrow(/y of shape \[12, D\]/);
      expect(() => dr.moeCombine(dr.zeros([3, 5, 4]), idx, pos, dr.zeros([6, 2]), { capacity: 4 })).toThrow(/y of shape \[3, 4, D\]/);
      const off = i32([0, 4, 12], [3]);
      expect(() => dr.groupedMatmul(dr.zeros([12, 4]), dr.zeros([2, 5, 3]), off)).toThrow(/k = 4/);
      expect(() => dr.groupedMatmul(dr.zeros([12, 4]), dr.zeros([3, 4, 3]), off)).toThrow(/offsets of shape \[4\]/);
      expect(() => dr.groupedMatmul(dr.zeros([12, 4]), dr.zeros([2, 4, 3], { dtype: 'float64' }), off)).toThrow(dr.DTypeError);
      expect(() => dr.moeExpertFFN(dr.zeros([12, 4]), dr.zeros([2, 4, 6]), dr.zeros([2, 3, 4]))).toThrow(/needs offsets/);
      expect(() => dr.moeExpertFFN(dr.zeros([12, 4]), dr.zeros([2, 4, 5]), dr.zeros([2, 3, 4]), { offsets: off })).toThrow(/even last dimension/);
      expect(() => dr.moeExpertFFN(dr.zeros([12, 4]), dr.zeros([2, 4, 6]), dr.zeros([2, 4, 4]), { offsets: off })).toThrow(/w2 of shape \[2, 3, 4\]/);
      expect(() => dr.moeExpertFFN(dr.zeros([12, 4]), dr.zeros([2, 4, 6]), dr.zeros([2, 3, 4]), { offsets: off, activation: 'relu' as 'gelu' })).toThrow(dr.ValueError);
      expect(() => dr.moeExpertFFN(dr.zeros([3, 2, 4]), dr.zeros([2, 4, 6]), dr.zeros([2, 3, 4]))).toThrow(/holds 3 experts, w1 2/);
    });
    // a call that throws queues nothing: no failure is left for a later synchronize to raise
    expect(() => dr.synchronize()).not.toThrow();
  });

  test('bad routing data fails the plan when read: expert out of range, position past its expert, shared rows, bad offsets', async () => {
    const x = dr.zeros([3, 2]);
    const disp = (ind: number[], pos: number[], opts: Record<string, unknown>) =>
      dr.moeDispatch(x, i32(ind, [3, 1]), i32(pos, [3, 1]), opts as dr.MoeLayoutOptions).buffer;
    await expectReadFails(disp([0, 3, 1], [0, 0, 0], { counts: i32([1, 1, 1], [3]) }), dr.OutOfRangeError, 'moePlan', /indices\[1, 0\] = 3 is outside \[0, 3\)/);
    await expectReadFails(disp([0, 0, 1], [0, 1, 0], { capacity: 1, experts: 2 }), dr.OutOfRangeError, 'moePlan', /positions\[1, 0\] = 1 is outside \[-1, 1\)/);
    await expectReadFails(disp([0, 0, 1], [0, 2, 0], { counts: i32([2, 1], [2]) }), dr.OutOfRangeError, 'moePlan', /positions\[1, 0\] = 2 .*expert 0 holds 2 rows/);
    await expectReadFails(disp([0, 0, 1], [0, -2, 0], { counts: i32([2, 1], [2]) }), dr.OutOfRangeError, 'moePlan', /positions\[1, 0\] = -2/);
    await expectReadFails(disp([0, 0, 1], [1, 1, 0], { counts: i32([2, 1], [2]) }), dr.OutOfRangeError, 'moePlan', /share row 1/);
    await expectReadFails(disp([0, 0, 1], [0, 1, 0], { offsets: i32([0, 2, 4], [3]) }), dr.OutOfRangeError, 'moePlan', /offsets must increase inside \[0, 3\]/);
  });
});
