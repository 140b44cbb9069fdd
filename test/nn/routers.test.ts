// The router and MoE modules (lib/nn/routers.ts) against plain-JavaScript references written
// from the formulas (loops over tokens, paths and experts) with the modules' own weights read
// back, in float64: awkward shapes (B = 1, odd S, one expert, topK = experts, an expert without
// tokens, capacity overflow, tokens no expert takes); float64 gradchecks in the input and every
// parameter; RandomRouter frequencies; typed errors naming the option; no tensor leaks.
import * as dr from '../../lib';
import { nn } from '../../lib';
import { expectClose, input } from '../helpers';
import { erf, prng } from '../reference';

const f64 = 'float64' as const;
const read = (t: dr.Tensor) => Array.from(t.dataSync(), Number);
const sigm = (v: number) => 1 / (1 + Math.exp(-v));
const silu = (v: number) => v * sigm(v);
const geluRef = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));

function softmaxRef(row: number[]): number[] {
  const m = Math.max(...row);
  const ex = row.map((v) => Math.exp(v - m));
  const z = ex.reduce((a, b) => a + b, 0);
  return ex.map((v) => v / z);
}

// x [T, D] @ W^T (W [O, D]) + b
function linearRef(x: ArrayLike<number>, T: number, D: number, W: number[], O: number, b: number[] | null): number[] {
  const out: number[] = [];
  for (let t = 0; t < T; ++t)
    for (let o = 0; o < O; ++o) {
      let s = b ? b[o] : 0;
      for (let j = 0; j < D; ++j) s += x[t * D + j] * W[o * D + j];
      out.push(s);
    }
  return out;
}

// Sets module fields by parameter name ("proj.0.weight") for the duration of fn: gradcheck
// passes fresh leaves, which the module must use in place of its parameters.
function withParams<T>(m: nn.Module, names: string[], values: dr.Tensor[], fn: () => T): T {
  const slots = names.map((n) => {
    const parts = n.split('.');
    let o: Record<string, unknown> = m as unknown as Record<string, unknown>;
    for (const p of parts.slice(0, -1)) o = o[p] as Record<string, unknown>;
    return { o, k: parts[parts.length - 1], old: o[parts[parts.length - 1]] };
  });
  slots.forEach((s, i) => (s.o[s.k] = values[i]));
  try {
    return fn();
  } finally {
    slots.forEach((s) => (s.o[s.k] = s.old));
  }
}

const params = (m: nn.Module) => m.namedParameters();

describe('SigmoidGates', () => {
  const cases = [
    { B: 1, S: 5, D: 3, P: 1, units: 1, bias: true },
    { B: 2, S: 3, D: 4, P: 3, units: 1, bias: false },
    { B: 1, S: 7, D: 3, P: 2, units: 3, bias: true },
  ];
  test('gates and mix against the reference (per token and per channel)', () => {
    dr.tidy(() => {
      cases.forEach((c, ci) => {
        const m = new nn.SigmoidGates(c.D, c.P, { units: c.units, bias: c.bias, dtype: f64, generator: new dr.Generator(ci) });
        expect(params(m).map(([k, p]) => `${k}:${p.shape.join('x')}`)).toEqual(
          Array.from({ length: c.P }, (_, p) => [`proj.${p}.weight:${c.units}x${c.D}`, ...(c.bias ? [`proj.${p}.bias:${c.units}`] : [])]).flat());
        const T = c.B * c.S;
        const { t: x, data } = input([c.B, c.S, c.D], 100 + ci, f64);
        const g = m.forward(x);
        expect(g.shape).toEqual(c.units === 1 ? [c.B, c.S, c.P] : [c.B, c.S, c.P, c.D]);
        // want[t][p][u]
        const want: number[] = [];
        const per = m.proj.map((l) => linearRef(data, T, c.D, read(l.weight), c.units, l.bias ? read(l.bias) : null));
        for (let t = 0; t < T; ++t) for (let p = 0; p < c.P; ++p) for (let u = 0; u < c.units; ++u) want.push(sigm(per[p][t * c.units + u]));
        expectClose(g, want, f64);
        const paths = Array.from({ length: c.P }, (_, p) => input([c.B, c.S, c.D], 200 + 10 * ci + p, f64));
        const mixed = m.mix(paths.map((q) => q.t), g);
        const mw: number[] = [];
        for (let t = 0; t < T; ++t)
          for (let j = 0; j < c.D; ++j) {
            let s = 0;
            for (let p = 0; p < c.P; ++p) s += want[(t * c.P + p) * c.units + (c.units === 1 ? 0 : j)] * paths[p].data[t * c.D + j];
            mw.push(s);
          }
        expectClose(mixed, mw, f64);
        m.dispose();
      });
    });
  });

  test('gradcheck in float64: x and every parameter, gates and mix', () => {
    dr.tidy(() => {
      for (const units of [1, 3]) {
        const m = new nn.SigmoidGates(3, 2, { units, dtype: f64, generator: new dr.Generator(5) });
        const names = params(m).map(([k]) => k);
        const x = input([1, 3, 3], 7, f64).t.requiresGrad_();
        const a = input([1, 3, 3], 8, f64).t.requiresGrad_();
        const b = input([1, 3, 3], 9, f64).t.requiresGrad_();
        const ps = params(m).map(([, p]) => p.clone().requiresGrad_());
        expect(dr.gradcheck((xx, ...w) => withParams(m, names, w, () => m.forward(xx)), [x, ...ps]).ok).toBe(true);
        expect(dr.gradcheck((xx, aa, bb, ...w) => withParams(m, names, w, () => m.mix([aa, bb], m.forward(xx))), [x, a, b, ...ps]).ok).toBe(true);
        m.dispose();
      }
    });
  });
});

describe('SoftmaxGates', () => {
  test('gates and mix against the reference, temperature, per channel', () => {
    dr.tidy(() => {
      const cases = [
        { B: 1, S: 5, D: 3, P: 1, units: 1, temp: 1 },
        { B: 2, S: 3, D: 4, P: 3, units: 1, temp: 0.5 },
        { B: 1, S: 7, D: 3, P: 2, units: 3, temp: 2 },
      ];
      cases.forEach((c, ci) => {
        const m = new nn.SoftmaxGates(c.D, c.P, { units: c.units, temperature: c.temp, dtype: f64, generator: new dr.Generator(ci + 20) });
        expect(params(m).map(([k, p]) => `${k}:${p.shape.join('x')}`)).toEqual([`proj.weight:${c.P * c.units}x${c.D}`, `proj.bias:${c.P * c.units}`]);
        const T = c.B * c.S;
        const { t: x, data } = input([c.B, c.S, c.D], 300 + ci, f64);
        const g = m.forward(x);
        expect(g.shape).toEqual(c.units === 1 ? [c.B, c.S, c.P] : [c.B, c.S, c.P, c.D]);
        const z = linearRef(data, T, c.D, read(m.proj.weight), c.P * c.units, read(m.proj.bias!));
        const want = new Array(T * c.P * c.units);
        for (let t = 0; t < T; ++t)
          for (let u = 0; u < c.units; ++u) {
            const s = softmaxRef(Array.from({ length: c.P }, (_, p) => z[t * c.P * c.units + p * c.units + u] / c.temp));
            s.forEach((v, p) => (want[(t * c.P + p) * c.units + u] = v));
          }
        expectClose(g, want, f64);
        const paths = Array.from({ length: c.P }, (_, p) => input([c.B, c.S, c.D], 400 + 10 * ci + p, f64));
        const mixed = m.mix(paths.map((q) => q.t), g);
        const mw: number[] = [];
        for (let t = 0; t < T; ++t)
          for (let j = 0; j < c.D; ++j) {
            let s = 0;
            for (let p = 0; p < c.P; ++p) s += want[(t * c.P + p) * c.units + (c.units === 1 ? 0 : j)] * paths[p].data[t * c.D + j];
            mw.push(s);
          }
        expectClose(mixed, mw, f64);
        m.dispose();
      });
    });
  });

  test('gradcheck in float64: x and the projection', () => {
    dr.tidy(() => {
      for (const units of [1, 3]) {
        const m = new nn.SoftmaxGates(3, 3, { units, temperature: 0.7, dtype: f64, generator: new dr.Generator(6) });
        const names = params(m).map(([k]) => k);
        const x = input([2, 3, 3], 11, f64).t.requiresGrad_();
        const ps = params(m).map(([, p]) => p.clone().requiresGrad_());
        expect(dr.gradcheck((xx, ...w) => withParams(m, names, w, () => m.forward(xx)), [x, ...ps]).ok).toBe(true);
        m.dispose();
      }
    });
  });
});

describe('RuleRouter', () => {
  test('one-hot gates of the rule table, default for unnamed ids', () => {
    dr.tidy(() => {
      const table = [{ ids: [1, 5, 7], route: 2 }, { range: [10, 20] as [number, number], route: 1 }, { ids: [30], route: 0 }];
      const routeOf = (id: number) => ([1, 5, 7].includes(id) ? 2 : id >= 10 && id < 20 ? 1 : id === 30 ? 0 : 3);
      for (const lookup of ['dense', 'search'] as const) {
        const m = new nn.RuleRouter(table, 4, { default: 3, lookup, dtype: f64 });
        expect(m.numParameters()).toBe(0);
        const r = prng(3);
        const ids = Array.from({ length: 3 * 7 }, () => Math.floor(r() * 35));
        const g = m.forward(dr.tensor(Int32Array.from(ids), [3, 7]));
        expect(g.shape).toEqual([3, 7, 4]);
        expect(g.dtype).toBe(f64);
        expect(read(g)).toEqual(ids.flatMap((id) => [0, 1, 2, 3].map((p) => (p === routeOf(id) ? 1 : 0))));
        expect(read(m.route(dr.tensor(Int32Array.from(ids), [3, 7])))).toEqual(ids.map(routeOf));
      }
      // one path: every token takes it
      const one = new nn.RuleRouter([], 1);
      expect(read(one.forward(dr.tensor(Int32Array.from([4, 0, 9]), [1, 3])))).toEqual([1, 1, 1]);
    });
  });
});

describe('RandomRouter', () => {
  test('training draws match probs; a seed reproduces; eval expectation is exact, eval sample fixed', () => {
    dr.tidy(() => {
      const probs = [0.2, 0, 0.5, 0.3];
      const m = new nn.RandomRouter(probs, { seed: 7, eval: 'expectation' });
      const x = dr.zeros([4, 2501, 2], { dtype: f64 });
      const g = m.forward(x);
      expect(g.shape).toEqual([4, 2501, 4]);
      expect(g.dtype).toBe(f64);
      const v = read(g);
      const T = 4 * 2501;
      const freq = [0, 0, 0, 0];
      for (let t = 0; t < T; ++t) {
        const row = v.slice(4 * t, 4 * t + 4);
        expect(row.reduce((a, b) => a + b, 0)).toBe(1);
        expect(row.every((w) => w === 0 || w === 1)).toBe(true);
        row.forEach((w, p) => (freq[p] += w / T));
      }
      // 4 standard deviations of a binomial share at T = 10004
      probs.forEach((p, i) => expect(Math.abs(freq[i] - p)).toBeLessThanOrEqual(4 * Math.sqrt((p * (1 - p)) / T) + 1e-12));
      expect(freq[1]).toBe(0);
      // the router's own stream: the next draw differs, another router of the same seed repeats the first
      const again = read(m.forward(x));
      expect(again).not.toEqual(v);
      const twin = new nn.RandomRouter(probs, { seed: 7 });
      expect(read(twin.forward(x))).toEqual(v);
      // sampled routes and gates agree
      const s = twin.sample(dr.zeros([2, 3], { dtype: 'int32' }));
      expect(s.route.shape).toEqual([2, 3]);
      expect(s.gates.dtype).toBe('float32');
      const rr = read(s.route), gg = read(s.gates);
      rr.forEach((p, t) => expect(gg.slice(4 * t, 4 * t + 4)).toEqual([0, 1, 2, 3].map((q) => (q === p ? 1 : 0))));

      m.eval();
      const e = read(m.forward(dr.zeros([1, 5, 3], { dtype: f64 })));
      expect(e).toEqual(Array.from({ length: 5 }, () => probs).flat());
      const e32 = read(m.forward(dr.zeros([1, 3], { dtype: 'int32' })));
      expect(e32).toEqual(Array.from({ length: 3 }, () => probs.map(Math.fround)).flat());

      const fixed = new nn.RandomRouter(probs, { eval: 'sample', evalSeed: 3 }).eval();
      const a = read(fixed.forward(x));
      expect(read(fixed.forward(x))).toEqual(a);
      const ff = [0, 0, 0, 0];
      for (let t = 0; t < T; ++t) for (let p = 0; p < 4; ++p) ff[p] += a[4 * t + p] / T;
      probs.forEach((p, i) => expect(Math.abs(ff[i] - p)).toBeLessThanOrEqual(4 * Math.sqrt((p * (1 - p)) / T) + 1e-12));
      // with a generator: the generator advances
      const gen = new dr.Generator(11);
      const withGen = new nn.RandomRouter([0.5, 0.5], { generator: gen });
      withGen.forward(dr.zeros([2, 5]));
      expect(gen.getState().offset).toBeGreaterThan(0);
    });
  });
});

// ---- MoE references ----

interface MoECase {
  B: number; S: number; D: number; H: number; E: number; K: number;
  cf: number; score: 'softmax' | 'sigmoid'; activation: 'swiglu' | 'gelu';
  normalize?: boolean;
}

// NaN-free strict order: higher value first, then the lower index
const pickTop = (vals: number[], ids: number[], k: number) => ids.slice().sort((i, j) => (vals[i] !== vals[j] ? vals[j] - vals[i] : i - j)).slice(0, k);

function ffnRef(x: ArrayLike<number>, t: number, e: number, D: number, H: number, w1: number[], w2: number[], act: 'swiglu' | 'gelu'): number[] {
  const F1 = act === 'swiglu' ? 2 * H : H;
  const h1: number[] = [];
  for (let f = 0; f < F1; ++f) {
    let s = 0;
    for (let j = 0; j < D; ++j) s += x[t * D + j] * w1[(e * D + j) * F1 + f];
    h1.push(s);
  }
  const a = act === 'swiglu' ? Array.from({ length: H }, (_, f) => silu(h1[f]) * h1[H + f]) : h1.map(geluRef);
  const out: number[] = [];
  for (let j = 0; j < D; ++j) {
    let s = 0;
    for (let f = 0; f < H; ++f) s += a[f] * w2[(e * H + f) * D + j];
    out.push(s);
  }
  return out;
}

function tokenChoiceRef(x: ArrayLike<number>, c: MoECase, wr: number[], w1: number[], w2: number[], bias: number[] | null) {
  const T = c.B * c.S, { D, H, E, K } = c;
  const logits = linearRef(x, T, D, wr, E, null);
  const normalize = c.normalize ?? c.score === 'sigmoid';
  const capacity = c.cf > 0 ? Math.ceil((c.cf * T * K) / E) : 0;
  const indices: number[] = [], weights: number[] = [], scores: number[][] = [];
  for (let t = 0; t < T; ++t) {
    const row = logits.slice(t * E, t * E + E);
    const s = c.score === 'softmax' ? softmaxRef(row) : row.map(sigm);
    scores.push(s);
    const sel = s.map((v, e) => v + (bias ? bias[e] : 0));
    const chosen = pickTop(sel, Array.from({ length: E }, (_, e) => e), K);
    const tot = chosen.reduce((a, e) => a + s[e], 0);
    for (const e of chosen) {
      indices.push(e);
      weights.push(s[e] / (normalize ? tot : 1));
    }
  }
  // slots: every first choice before any second one, tokens in order; past the capacity dropped
  const positions = new Array(T * K).fill(0);
  const run = new Array(E).fill(0);
  for (let k = 0; k < K; ++k)
    for (let t = 0; t < T; ++t) {
      const p = run[indices[t * K + k]]++;
      positions[t * K + k] = capacity > 0 && p >= capacity ? -1 : p;
    }
  const counts = run.map((n) => (capacity > 0 ? Math.min(n, capacity) : n));
  const y = new Array(T * D).fill(0);
  for (let t = 0; t < T; ++t)
    for (let k = 0; k < K; ++k) {
      if (positions[t * K + k] < 0) continue;
      const o = ffnRef(x, t, indices[t * K + k], D, H, w1, w2, c.activation);
      for (let j = 0; j < D; ++j) y[t * D + j] += weights[t * K + k] * o[j];
    }
  const f = new Array(E).fill(0), P = new Array(E).fill(0);
  for (let t = 0; t < T; ++t) {
    f[indices[t * K]] += 1 / T;
    const z = c.score === 'softmax' ? 1 : scores[t].reduce((a, b) => a + b, 0);
    scores[t].forEach((v, e) => (P[e] += v / z / T));
  }
  const aux = E * f.reduce((a, fe, e) => a + fe * P[e], 0);
  let zl = 0;
  for (let t = 0; t < T; ++t) {
    const row = logits.slice(t * E, t * E + E);
    const m = Math.max(...row);
    const lse = m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0));
    zl += (lse * lse) / T;
  }
  const dropped = positions.filter((p) => p < 0).length / (T * K);
  return { y, counts, aux, zl, dropped };
}

function expertChoiceRef(x: ArrayLike<number>, c: MoECase, wr: number[], w1: number[], w2: number[]) {
  const T = c.B * c.S, { D, H, E } = c;
  const logits = linearRef(x, T, D, wr, E, null);
  const s: number[][] = [];
  for (let t = 0; t < T; ++t) {
    const row = logits.slice(t * E, t * E + E);
    s.push(c.score === 'softmax' ? softmaxRef(row) : row.map(sigm));
  }
  const C = Math.min(T, Math.ceil((c.cf * T) / E));
  const y = new Array(T * D).fill(0);
  const taken = new Array(T).fill(0);
  for (let e = 0; e < E; ++e) {
    const col = s.map((r) => r[e]);
    for (const t of pickTop(col, Array.from({ length: T }, (_, i) => i), C)) {
      taken[t]++;
      const o = ffnRef(x, t, e, D, H, w1, w2, c.activation);
      for (let j = 0; j < D; ++j) y[t * D + j] += col[t] * o[j];
    }
  }
  return { y, taken, C };
}

describe('TokenChoiceMoE', () => {
  const cases: MoECase[] = [
    { B: 1, S: 7, D: 4, H: 3, E: 4, K: 2, cf: 0, score: 'softmax', activation: 'swiglu' },
    { B: 2, S: 5, D: 3, H: 2, E: 3, K: 3, cf: 0.5, score: 'sigmoid', activation: 'gelu' },
    { B: 1, S: 3, D: 2, H: 4, E: 1, K: 1, cf: 0, score: 'softmax', activation: 'gelu' },
    { B: 3, S: 3, D: 4, H: 3, E: 5, K: 1, cf: 1, score: 'softmax', activation: 'swiglu', normalize: true },
    { B: 2, S: 9, D: 3, H: 2, E: 4, K: 2, cf: 0.75, score: 'sigmoid', activation: 'swiglu' },
  ];
  test('output, counts, dropped share and losses against the reference', () => {
    dr.tidy(() => {
      cases.forEach((c, ci) => {
        const m = new nn.TokenChoiceMoE(c.D, c.H, { experts: c.E, topK: c.K, capacityFactor: c.cf, score: c.score, activation: c.activation,
          normalize: c.normalize, auxLossWeight: 0.1, zLossWeight: 0.01, dtype: f64, generator: new dr.Generator(30 + ci) });
        expect(params(m).map(([k, p]) => `${k}:${p.shape.join('x')}`)).toEqual([
          `w1:${c.E}x${c.D}x${c.activation === 'swiglu' ? 2 * c.H : c.H}`, `w2:${c.E}x${c.H}x${c.D}`, `router.weight:${c.E}x${c.D}`]);
        expect(m.lastRouting).toBeNull();
        const { t: x, data } = input([c.B, c.S, c.D], 500 + ci, f64);
        const y = m.forward(x);
        expect(y.shape).toEqual([c.B, c.S, c.D]);
        const want = tokenChoiceRef(data, c, read(m.router.weight), read(m.w1), read(m.w2), null);
        expectClose(y, want.y, f64);
        const r = m.lastRouting!;
        expect(r.counts).toEqual(want.counts);
        expect(r.dropped).toBeCloseTo(want.dropped, 12);
        expect(r.auxLoss).toBeCloseTo(want.aux, 10);
        expect(r.zLoss).toBeCloseTo(want.zl, 10);
        expectClose(m.auxLoss(), [0.1 * want.aux + 0.01 * want.zl], f64);
        if (c.cf === 0.5 || c.cf === 0.75) expect(want.dropped).toBeGreaterThan(0); // the overflow cases overflow
        m.dispose();
      });
    });
  });

  test('an expert no token chooses', () => {
    dr.tidy(() => {
      const c: MoECase = { B: 1, S: 6, D: 3, H: 2, E: 4, K: 1, cf: 0, score: 'softmax', activation: 'swiglu' };
      const m = new nn.TokenChoiceMoE(c.D, c.H, { experts: c.E, dtype: f64, generator: new dr.Generator(9) });
      // positive inputs and a negative row for expert 2: its logit is always the lowest
      const wr = read(m.router.weight).map((v, i) => (Math.floor(i / c.D) === 2 ? -5 : v));
      m.loadStateDict({ 'router.weight': dr.tensor(wr, [c.E, c.D], { dtype: f64 }) }, { strict: false });
      const { t: x, data } = input([1, 6, 3], 77, f64, 0.5, 1.5);
      const y = m.forward(x);
      const want = tokenChoiceRef(data, c, read(m.router.weight), read(m.w1), read(m.w2), null);
      expect(want.counts[2]).toBe(0);
      expect(m.lastRouting!.counts).toEqual(want.counts);
      expectClose(y, want.y, f64);
      m.dispose();
    });
  });

  test('bias balancing: updateBias moves the selection bias by the last counts', () => {
    dr.tidy(() => {
      const c: MoECase = { B: 2, S: 5, D: 3, H: 2, E: 4, K: 2, cf: 0, score: 'sigmoid', activation: 'swiglu' };
      const m = new nn.TokenChoiceMoE(c.D, c.H, { experts: c.E, topK: c.K, score: 'sigmoid', biasBalancing: 0.3, dtype: f64, generator: new dr.Generator(4) });
      expect(m.routerBias!.dtype).toBe(f64);
      expect(params(m).map(([k]) => k)).toEqual(['w1', 'w2', 'router.weight']); // the bias is state, not a parameter
      const { t: x, data } = input([2, 5, 3], 88, f64);
      m.forward(x);
      const counts = m.lastRouting!.counts;
      const mean = counts.reduce((a, b) => a + b, 0) / c.E;
      m.updateBias();
      const bias = counts.map((n) => 0.3 * Math.sign(mean - n));
      expect(read(m.routerBias!)).toEqual(bias);
      // the next forward selects with the bias (the weights stay the unbiased scores)
      const y = m.forward(x);
      const want = tokenChoiceRef(data, c, read(m.router.weight), read(m.w1), read(m.w2), bias);
      expect(m.lastRouting!.counts).toEqual(want.counts);
      expectClose(y, want.y, f64);
      // Module.to casts the bias with the parameters
      m.to('float32');
      expect(m.routerBias!.dtype).toBe('float32');
      expect(m.forward(dr.cast(x, 'float32')).dtype).toBe('float32');
      m.dispose();
      const plain = new nn.TokenChoiceMoE(3, 2, { experts: 2 });
      plain.forward(dr.zeros([1, 2, 3]));
      expect(() => plain.updateBias()).toThrow(dr.ValueError);
      expect(() => plain.updateBias()).toThrow(/biasBalancing/);
      plain.dispose();
    });
  });

  test('gradcheck in float64: x, the router and both expert weights, through y and auxLoss', () => {
    dr.tidy(() => {
      const variants: Array<Partial<MoECase>> = [
        { E: 3, K: 2, cf: 0, score: 'softmax', activation: 'swiglu' },
        { E: 3, K: 3, cf: 0.6, score: 'sigmoid', activation: 'gelu' },
      ];
      variants.forEach((v, vi) => {
        const m = new nn.TokenChoiceMoE(3, 2, { experts: v.E, topK: v.K, capacityFactor: v.cf, score: v.score, activation: v.activation,
          auxLossWeight: 0.5, zLossWeight: 0.2, dtype: f64, generator: new dr.Generator(40 + vi) });
        const names = params(m).map(([k]) => k);
        const x = input([1, 5, 3], 60 + vi, f64).t.requiresGrad_();
        const ps = params(m).map(([, p]) => p.clone().requiresGrad_());
        const fn = (xx: dr.Tensor, ...w: dr.Tensor[]) => withParams(m, names, w, () => {
          const y = m.forward(xx);
          return dr.concat([dr.reshape(y, [y.size]), dr.reshape(m.auxLoss(), [1])]);
        });
        expect(dr.gradcheck(fn, [x, ...ps]).ok).toBe(true);
        m.dispose();
      });
    });
  });
});

describe('ExpertChoiceMoE', () => {
  const cases: MoECase[] = [
    { B: 1, S: 9, D: 3, H: 2, E: 2, K: 0, cf: 0.5, score: 'softmax', activation: 'swiglu' },
    { B: 2, S: 5, D: 4, H: 3, E: 3, K: 0, cf: 1, score: 'sigmoid', activation: 'gelu' },
    { B: 1, S: 3, D: 2, H: 2, E: 1, K: 0, cf: 1, score: 'softmax', activation: 'gelu' },
    { B: 1, S: 5, D: 3, H: 2, E: 4, K: 0, cf: 8, score: 'softmax', activation: 'swiglu' }, // C clamped to T
  ];
  test('output against the reference; tokens no expert takes get 0', () => {
    dr.tidy(() => {
      cases.forEach((c, ci) => {
        const m = new nn.ExpertChoiceMoE(c.D, c.H, { experts: c.E, capacityFactor: c.cf, score: c.score, activation: c.activation, dtype: f64, generator: new dr.Generator(50 + ci) });
        expect(params(m).map(([k]) => k)).toEqual(['w1', 'w2', 'router.weight']);
        const { t: x, data } = input([c.B, c.S, c.D], 600 + ci, f64);
        const y = m.forward(x);
        expect(y.shape).toEqual([c.B, c.S, c.D]);
        const want = expertChoiceRef(data, c, read(m.router.weight), read(m.w1), read(m.w2));
        expect(m.capacity(c.B * c.S)).toBe(want.C);
        expectClose(y, want.y, f64);
        if (ci === 0) {
          const got = read(y);
          const idle = want.taken.map((n, t) => (n === 0 ? t : -1)).filter((t) => t >= 0);
          expect(idle.length).toBeGreaterThan(0);
          for (const t of idle) expect(got.slice(t * c.D, t * c.D + c.D)).toEqual(new Array(c.D).fill(0));
        }
        m.dispose();
      });
    });
  });

  test('gradcheck in float64: x and every parameter', () => {
    dr.tidy(() => {
      const m = new nn.ExpertChoiceMoE(3, 2, { experts: 2, capacityFactor: 0.8, dtype: f64, generator: new dr.Generator(70) });
      const names = params(m).map(([k]) => k);
      const x = input([1, 5, 3], 71, f64).t.requiresGrad_();
      const ps = params(m).map(([, p]) => p.clone().requiresGrad_());
      expect(dr.gradcheck((xx, ...w) => withParams(m, names, w, () => m.forward(xx)), [x, ...ps]).ok).toBe(true);
      m.dispose();
    });
  });
});

describe('bad options and inputs', () => {
  const throwsNaming = (fn: () => unknown, cls: new (...a: never[]) => Error, what: RegExp) => {
    let err: unknown = null;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(cls);
    expect((err as Error).message).toMatch(what);
  };
  test('typed errors naming the option and what was received', () => {
    dr.tidy(() => {
      throwsNaming(() => new nn.SigmoidGates(4, 2, { units: 2 }), dr.ValueError, /units but received number 2/);
      throwsNaming(() => new nn.SigmoidGates(0, 2), dr.ValueError, /dModel but received number 0/);
      throwsNaming(() => new nn.SigmoidGates(4, 1.5), dr.ValueError, /nPaths but received number 1.5/);
      throwsNaming(() => new nn.SigmoidGates(4, 2, { bias: 1 as never }), dr.ValueError, /bias but received number 1/);
      throwsNaming(() => new nn.SoftmaxGates(4, 2, { temperature: 0 }), dr.ValueError, /temperature but received number 0/);
      throwsNaming(() => new nn.SoftmaxGates(4, 2, { temprature: 2 } as never), dr.ValueError, /unknown option 'temprature'/);
      throwsNaming(() => new nn.RuleRouter([{ ids: [1], route: 3 }], 3), dr.OutOfRangeError, /table\[0\]\.route/);
      throwsNaming(() => new nn.RuleRouter([], 3, { default: 3 }), dr.OutOfRangeError, /default in \[0, 2\] but received number 3/);
      throwsNaming(() => new nn.RuleRouter([], 3, { dtype: 'int32' }), dr.DTypeError, /dtype but received the string "int32"/);
      throwsNaming(() => new nn.RandomRouter([0.5, 0.4]), dr.ValueError, /probs to sum to 1/);
      throwsNaming(() => new nn.RandomRouter([1.5, -0.5]), dr.ValueError, /probs\[1\] but received number -0.5/);
      throwsNaming(() => new nn.RandomRouter([1], { seed: 1, generator: new dr.Generator(1) }), dr.ValueError, /either seed or generator/);
      throwsNaming(() => new nn.RandomRouter([1], { eval: 'mean' as never }), dr.ValueError, /eval but received the string "mean"/);
      throwsNaming(() => new nn.RandomRouter([1], { seed: -1 }), dr.ValueError, /seed but received number -1/);
      throwsNaming(() => new nn.TokenChoiceMoE(4, 8, {}), dr.ValueError, /experts but received undefined/);
      throwsNaming(() => new nn.TokenChoiceMoE(4, 8, { experts: 4, topK: 5 }), dr.ValueError, /topK in \[1, 4\] \(experts\) but received number 5/);
      throwsNaming(() => new nn.TokenChoiceMoE(4, 8, { experts: 4, topk: 2 } as never), dr.ValueError, /unknown option 'topk'/);
      throwsNaming(() => new nn.TokenChoiceMoE(4, 8, { experts: 4, capacityFactor: -1 }), dr.ValueError, /capacityFactor but received number -1/);
      throwsNaming(() => new nn.TokenChoiceMoE(4, 8, { experts: 4, score: 'relu' as never }), dr.ValueError, /score but received the string "relu"/);
      throwsNaming(() => new nn.TokenChoiceMoE(4, 8, { experts: 4, activation: 'relu' as never }), dr.ValueError, /activation but received the string "relu"/);
      throwsNaming(() => new nn.TokenChoiceMoE(4, 8, { experts: 4, auxLossWeight: NaN }), dr.ValueError, /auxLossWeight but received number NaN/);
      throwsNaming(() => new nn.TokenChoiceMoE(4, 8, { experts: 4, biasBalancing: -0.1 }), dr.ValueError, /biasBalancing but received number -0.1/);
      throwsNaming(() => new nn.ExpertChoiceMoE(4, 8, { experts: 2, capacityFactor: 0 }), dr.ValueError, /capacityFactor but received number 0/);
      throwsNaming(() => new nn.ExpertChoiceMoE(4, 0, { experts: 2 }), dr.ValueError, /hidden but received number 0/);

      const g = new nn.SigmoidGates(4, 2);
      throwsNaming(() => g.forward(dr.zeros([2, 3])), dr.ShapeError, /x of shape \[\.\.\., 4\].*\[2, 3\]/);
      throwsNaming(() => g.forward(dr.zeros([2, 4], { dtype: 'int32' })), dr.DTypeError, /float x/);
      const gates = g.forward(dr.zeros([2, 4]));
      throwsNaming(() => g.mix([dr.zeros([2, 4])], gates), dr.ValueError, /Expected 2 paths but received an array of length 1/);
      throwsNaming(() => g.mix([dr.zeros([2, 4]), dr.zeros([2, 5])], gates), dr.ShapeError, /paths\[1\]/);
      throwsNaming(() => g.mix([dr.zeros([3, 4]), dr.zeros([3, 4])], gates), dr.ShapeError, /gates of shape \[3, 2\] or \[3, 2, 4\]/);
      throwsNaming(() => new nn.RuleRouter([], 2).forward(dr.zeros([2, 3])), dr.DTypeError, /int32 tokenIds but received a float32 tensor/);
      throwsNaming(() => new nn.RandomRouter([1]).forward(dr.zeros([3])), dr.ShapeError, /x of shape \[B, S, \.\.\.\]/);
      const moe = new nn.TokenChoiceMoE(4, 8, { experts: 2 });
      throwsNaming(() => moe.forward(dr.zeros([1, 2, 4], { dtype: f64 })), dr.DTypeError, /parameters' dtype float32 but received a float64 tensor/);
      throwsNaming(() => moe.auxLoss(), dr.ValueError, /no forward has run yet/);
      g.dispose();
      moe.dispose();
    });
  });
});

describe('no tensor leaks', () => {
  test('forward, auxLoss and backward of every module, then dispose: live tensors back to the start', () => {
    dr.synchronize();
    const start = dr.memory().tensors;
    const gen = new dr.Generator(90);
    const mods = {
      sig: new nn.SigmoidGates(4, 2, { units: 4, generator: gen }),
      soft: new nn.SoftmaxGates(4, 2, { generator: gen }),
      rule: new nn.RuleRouter([{ ids: [1], route: 1 }], 2),
      rand: new nn.RandomRouter([0.5, 0.5], { seed: 1 }),
      tc: new nn.TokenChoiceMoE(4, 3, { experts: 3, topK: 2, capacityFactor: 0.8, biasBalancing: 0.01, generator: gen }),
      tcd: new nn.TokenChoiceMoE(4, 3, { experts: 3, topK: 2, generator: gen }),
      ec: new nn.ExpertChoiceMoE(4, 3, { experts: 3, generator: gen }),
    };
    const x = dr.randn([2, 5, 4], { generator: gen }).requiresGrad_();
    const ids = dr.tensor(Int32Array.from([0, 1, 2, 1, 0, 1, 1, 0, 2, 3]), [2, 5]);
    const afterSetup = dr.memory().tensors;
    for (let step = 0; step < 2; ++step) {
      const loss = dr.tidy(() => {
        const a = mods.sig.mix([x, x], mods.sig.forward(x));
        const b = mods.soft.mix([x, dr.mul(x, 2)], mods.soft.forward(x));
        const c = dr.mul(mods.rule.forward(ids), 1);
        const r = mods.rand.forward(x);
        const y = dr.add(mods.tc.forward(x), mods.tcd.forward(x));
        const z = mods.ec.forward(x);
        return dr.add(dr.add(dr.add(dr.sum(a), dr.sum(b)), dr.add(dr.sum(c), dr.sum(r))),
          dr.add(dr.add(dr.sum(y), dr.sum(z)), dr.add(mods.tc.auxLoss(), mods.tcd.auxLoss())));
      });
      dr.backward(loss);
      loss.dispose();
      mods.tc.updateBias();
      expect(mods.tc.lastRouting!.counts.length).toBe(3);
      for (const m of Object.values(mods)) m.zeroGrad();
      x.grad?.dispose();
      x.grad = null;
      dr.synchronize();
      // what the MoE modules keep for auxLoss() and lastRouting: three tensors each, not more per step
      expect(dr.memory().tensors).toBe(afterSetup + 6);
    }
    for (const m of Object.values(mods)) m.dispose();
    x.dispose();
    ids.dispose();
    dr.synchronize();
    expect(dr.memory().tensors).toBe(start);
  });
});
