// routerGate, expertChoice and updateRouterBias against float64 references written from the
// definitions (scores, biased and group-limited top-k, weights, capacity positions, losses),
// on awkward shapes and options; gradient checks; noise frequencies.
import * as dr from '../../lib';
import { expectClose, input } from '../helpers';

interface RefOpts { k: number; score: 'softmax' | 'sigmoid'; normalize: boolean; routeScale: number; bias?: number[]; groups: number; topGroups: number; capacity: number; noise?: number[] }

// NaN largest, then the lower index
const before = (a: number, ia: number, b: number, ib: number) => {
  if (Number.isNaN(a) !== Number.isNaN(b)) return Number.isNaN(a);
  if (!Number.isNaN(a) && a !== b) return a > b;
  return ia < ib;
};
const order = (vals: number[], ids: number[]) => ids.slice().sort((i, j) => (before(vals[i], i, vals[j], j) ? -1 : 1));

function gateRef(l: ArrayLike<number>, T: number, E: number, o: RefOpts) {
  const indices: number[] = [], weights: number[] = [], scores: number[] = [];
  for (let t = 0; t < T; ++t) {
    const row = Array.from({ length: E }, (_, e) => l[t * E + e]);
    let s: number[];
    if (o.score === 'softmax') {
      const m = Math.max(...row);
      const ex = row.map((v) => Math.exp(v - m));
      const z = ex.reduce((a, b) => a + b, 0);
      s = ex.map((v) => v / z);
    } else {
      s = row.map((v) => 1 / (1 + Math.exp(-v)));
    }
    scores.push(...s);
    const sel = s.map((v, e) => v + (o.bias ? o.bias[e] : 0) + (o.noise ? o.noise[t * E + e] : 0));
    let allowed = Array.from({ length: E }, (_, e) => e);
    if (o.groups > 1) {
      const gsize = E / o.groups;
      const gscore = Array.from({ length: o.groups }, (_, g) => {
        const best = order(sel, Array.from({ length: gsize }, (_, i) => g * gsize + i));
        return sel[best[0]] + (gsize > 1 ? sel[best[1]] : 0);
      });
      const keep = order(gscore, gscore.map((_, g) => g)).slice(0, o.topGroups);
      allowed = allowed.filter((e) => keep.includes(Math.floor(e / gsize)));
    }
    const chosen = order(sel, allowed).slice(0, o.k);
    const tot = chosen.reduce((a, e) => a + s[e], 0);
    for (const e of chosen) {
      indices.push(e);
      weights.push((o.routeScale * s[e]) / (o.normalize ? tot : 1));
    }
  }
  const positions = new Array(T * o.k).fill(0);
  const run = new Array(E).fill(0);
  for (let j = 0; j < o.k; ++j)
    for (let t = 0; t < T; ++t) {
      const e = indices[t * o.k + j];
      const p = run[e]++;
      positions[t * o.k + j] = o.capacity > 0 && p >= o.capacity ? -1 : p;
    }
  const counts = run.map((c) => (o.capacity > 0 ? Math.min(c, o.capacity) : c));
  // losses
  const f = new Array(E).fill(0);
  for (let t = 0; t < T; ++t) f[indices[t * o.k]] += 1 / T;
  const P = new Array(E).fill(0);
  for (let t = 0; t < T; ++t) {
    const row = scores.slice(t * E, t * E + E);
    const z = o.score === 'softmax' ? 1 : row.reduce((a, b) => a + b, 0);
    row.forEach((v, e) => (P[e] += v / z / T));
  }
  const aux = E * f.reduce((a, fe, e) => a + fe * P[e], 0);
  let zl = 0;
  for (let t = 0; t < T; ++t) {
    const row = Array.from({ length: E }, (_, e) => l[t * E + e]);
    const m = Math.max(...row);
    const lse = m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0));
    zl += (lse * lse) / T;
  }
  return { indices, weights, positions, counts, aux, zl };
}

// well separated logits (a permutation of a grid per row): no near-ties between dtypes
function logitsOf(T: number, E: number, seed: number, dtype: dr.DType) {
  const r = input([T, E], seed, 'float64').data;
  const raw: number[] = [];
  for (let t = 0; t < T; ++t) {
    const perm = Array.from({ length: E }, (_, e) => e).sort((a, b) => r[t * E + a] - r[t * E + b]);
    const row = new Array(E);
    perm.forEach((e, rank) => (row[e] = (rank - E / 2) * (4 / Math.max(E, 1)) + 0.03 * (t % 3)));
    raw.push(...row);
  }
  const t = dr.tensor(raw, [T, E], { dtype });
  return { t, data: Float64Array.from(t.dataSync()) };
}

describe('routerGate', () => {
  const cases: Array<{ T: number; E: number } & Partial<RefOpts> & { cf?: number }> = [
    { T: 1, E: 1, k: 1 },
    { T: 37, E: 8, k: 2 },
    { T: 37, E: 8, k: 2, cf: 0.5 },
    { T: 1031, E: 8, k: 2, cf: 1.25, score: 'sigmoid' },
    { T: 64, E: 64, k: 6, groups: 8, topGroups: 3, score: 'sigmoid', routeScale: 2.5 },
    { T: 33, E: 3, k: 3, normalize: true },
    { T: 50, E: 16, k: 4, groups: 4, topGroups: 1, cf: 1 },
    { T: 7, E: 5, k: 1, normalize: true, routeScale: 0.5 },
  ];
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[])
    test(`${dtype}: indices, weights, positions, counts and losses against the reference`, () => {
      dr.tidy(() => {
        cases.forEach((c, ci) => {
          const { t, data } = logitsOf(c.T, c.E, 10 + ci, dtype);
          const score = c.score ?? 'softmax';
          const k = c.k ?? 1;
          const o: RefOpts = { k, score, normalize: c.normalize ?? score === 'sigmoid', routeScale: c.routeScale ?? 1,
            groups: c.groups ?? 1, topGroups: c.topGroups ?? c.groups ?? 1, capacity: c.cf ? Math.ceil((c.cf * c.T * k) / c.E) : 0 };
          const bias = ci % 2 ? Array.from({ length: c.E }, (_, e) => ((e * 7) % 5) * 0.01) : undefined;
          o.bias = bias;
          const got = dr.routerGate(t, { topK: k, score, normalize: c.normalize, routeScale: c.routeScale, groups: c.groups, topGroups: c.topGroups,
            capacityFactor: c.cf, bias: bias ? dr.tensor(bias, [c.E], { dtype: dtype === 'float64' ? 'float64' : 'float32' }) : undefined });
          const want = gateRef(data, c.T, c.E, o);
          expect(Array.from(got.indices.dataSync())).toEqual(want.indices);
          expectClose(got.weights, want.weights, dtype === 'float64' ? 'float64' : 'float32');
          expect(Array.from(got.positions.dataSync())).toEqual(want.positions);
          expect(Array.from(got.counts.dataSync())).toEqual(want.counts);
          expectClose(got.auxLoss, [want.aux], dtype === 'float64' ? 'float64' : 'float32', 4);
          expectClose(got.zLoss, [want.zl], dtype === 'float64' ? 'float64' : 'float32', 4);
        });
      });
    });

  test('gradients reach the logits through the weights (normalised or not), auxLoss and zLoss', () => {
    dr.tidy(() => {
      for (const score of ['softmax', 'sigmoid'] as const)
        for (const normalize of [false, true]) {
          const x = logitsOf(6, 7, 3, 'float64').t.requiresGrad_();
          const w = input([6, 3], 4, 'float64').t;
          expect(dr.gradcheck((a) => dr.routerGate(a, { topK: 3, score, normalize, routeScale: 1.7 }).weights.mul(w), [x]).ok).toBe(true);
          expect(dr.gradcheck((a) => dr.routerGate(a, { topK: 2, score }).auxLoss, [x]).ok).toBe(true);
          expect(dr.gradcheck((a) => dr.routerGate(a, { topK: 2, score }).zLoss, [x]).ok).toBe(true);
        }
    });
  });

  test('gumbel noise samples the top-k (frequencies of equal logits are uniform); jitter moves the weights within eps', () => {
    dr.tidy(() => {
      const T = 4000, E = 4;
      const r = dr.routerGate(dr.zeros([T, E]), { topK: 1, noise: 'gumbel', generator: new dr.Generator(5) });
      const counts = Array.from(r.counts.dataSync());
      const chi2 = counts.reduce((s, o) => s + (o - T / E) ** 2 / (T / E), 0);
      expect(chi2).toBeLessThan(21.1); // df 3, P < 1e-4
      const again = dr.routerGate(dr.zeros([T, E]), { topK: 1, noise: 'gumbel', generator: new dr.Generator(5) });
      expect(Array.from(again.indices.dataSync())).toEqual(Array.from(r.indices.dataSync()));
      const { t } = logitsOf(9, 6, 2, 'float32');
      const plain = dr.routerGate(t, { topK: 2 }).weights.dataSync();
      const jit = dr.routerGate(t, { topK: 2, noise: 'jitter', noiseEps: 0.01, generator: new dr.Generator(1) }).weights.dataSync();
      expect(Array.from(jit).every((v, i) => Math.abs(v - plain[i]) < 0.05)).toBe(true);
    });
  });

  test('bad options are typed errors naming them', () => {
    const l = dr.zeros([4, 6]);
    expect(() => dr.routerGate(l, { topK: 7 })).toThrow(/topK in \[1, 6\]/);
    expect(() => dr.routerGate(l, { groups: 4 })).toThrow(/must divide the experts/);
    expect(() => dr.routerGate(l, { groups: 3, topGroups: 1, topK: 3 })).toThrow(/fewer than topK/);
    expect(() => dr.routerGate(l, { capacityFactor: -1 })).toThrow(dr.ValueError);
    expect(() => dr.routerGate(l, { score: 'relu' as 'softmax' })).toThrow(dr.ValueError);
    expect(() => dr.routerGate(l, { bias: dr.zeros([5]) })).toThrow(dr.ShapeError);
    expect(() => dr.routerGate(l, { noise: 'x' as 'gumbel' })).toThrow(dr.ValueError);
    expect(() => dr.routerGate(dr.zeros([4]), {})).toThrow(dr.ShapeError);
    expect(() => dr.routerGate(dr.zeros([4, 6], { dtype: 'int32' }))).toThrow(dr.DTypeError);
  });
});

describe('expertChoice and updateRouterBias', () => {
  test('each expert takes its top tokens; the weights are the scores, with their gradient', () => {
    dr.tidy(() => {
      // random logits: the grid ones tie across tokens (equal rows up to order), whose float sums differ in the last bit
      const { t, data } = input([20, 4], 8, 'float64');
      const { tokens, weights } = dr.expertChoice(t, { capacityFactor: 1 });
      expect(tokens.shape).toEqual([4, 5]);
      const s: number[] = [];
      for (let i = 0; i < 20; ++i) {
        const row = Array.from(data.slice(i * 4, i * 4 + 4));
        const m = Math.max(...row);
        const z = row.reduce((a, v) => a + Math.exp(v - m), 0);
        s.push(...row.map((v) => Math.exp(v - m) / z));
      }
      for (let e = 0; e < 4; ++e) {
        const col = Array.from({ length: 20 }, (_, i) => s[i * 4 + e]);
        const want = order(col, col.map((_, i) => i)).slice(0, 5);
        expect(Array.from(tokens.narrow(0, e, 1).dataSync())).toEqual(want);
        expectClose(weights.narrow(0, e, 1).contiguous(), want.map((i) => col[i]), 'float64');
      }
      const x = t.clone().requiresGrad_();
      expect(dr.gradcheck((a) => dr.expertChoice(a, { capacity: 3, score: 'sigmoid' }).weights.mul(input([4, 3], 9, 'float64').t), [x]).ok).toBe(true);
    });
  });

  test('the bias moves toward even load, in place, by rate * sign', () => {
    dr.tidy(() => {
      const bias = dr.zeros([4]);
      const out = dr.updateRouterBias(bias, dr.tensor(new Int32Array([10, 2, 4, 4])), 0.1);
      expect(out).toBe(bias);
      expect(Array.from(bias.dataSync()).map((v) => Math.round(v * 100) / 100)).toEqual([-0.1, 0.1, 0.1, 0.1]);
      expect(() => dr.updateRouterBias(bias, dr.tensor(new Int32Array([1, 2])), 0.1)).toThrow(dr.ShapeError);
      expect(() => dr.updateRouterBias(bias, dr.tensor(new Int32Array([1, 2, 3, 4])), -1)).toThrow(dr.ValueError);
    });
  });
});
