// RoutedAttention (Mixture-of-Depths) against its definition: the attention rows of the chosen
// tokens (full causal attention over every earlier key, from MultiheadAttention with the same
// weights) scaled by sigmoid(router score), zeros elsewhere; training picks the top capacity of
// each sequence, eval the causal predictor; eval is causal (a prefix gives the same rows).
import * as dr from '../../lib';
import { nn } from '../../lib';
import { expectClose } from '../helpers';
import { randArray } from '../reference';

const arr = (t: dr.Tensor) => Float64Array.from(t.dataSync());

function reference(m: nn.RoutedAttention, x: dr.Tensor, chosen: (b: number, scores: number[], pred: number[]) => boolean[]): Float64Array {
  const [B, S, d] = x.shape;
  const full = arr(m.attn.forward(x));  // every row's causal attention, same weights
  const score = arr(m.router.forward(x)), pred = arr(m.predictor.forward(x));
  const out = new Float64Array(B * S * d);
  for (let b = 0; b < B; ++b) {
    const sc = Array.from(score.slice(b * S, (b + 1) * S)), pr = Array.from(pred.slice(b * S, (b + 1) * S));
    const keep = chosen(b, sc, pr);
    for (let t = 0; t < S; ++t) {
      if (!keep[t]) continue;
      const w = 1 / (1 + Math.exp(-sc[t]));
      for (let i = 0; i < d; ++i) out[(b * S + t) * d + i] = w * full[(b * S + t) * d + i];
    }
  }
  return out;
}

const topByScore = (cap: number) => (_b: number, sc: number[]): boolean[] => {
  const n = Math.max(1, Math.ceil(cap * sc.length));
  const order = sc.map((v, i) => [v, i]).sort((p, q) => q[0] - p[0] || p[1] - q[1]).slice(0, n).map((p) => p[1]);
  return sc.map((_, i) => order.includes(i));
};

describe('RoutedAttention', () => {
  for (const [B, S, cap] of [[1, 1, 0.25], [2, 9, 0.25], [1, 16, 0.5], [2, 7, 1]] as const) {
    test(`training: top ${cap} of each sequence (B${B} S${S})`, () => {
      dr.tidy(() => {
        const m = new nn.RoutedAttention(8, 2, { capacity: cap, dtype: 'float64', generator: new dr.Generator(S) });
        const x = dr.tensor(randArray(B * S * 8, S + 1, -1, 1), [B, S, 8], { dtype: 'float64' });
        expectClose(m.forward(x), reference(m, x, topByScore(cap)), 'float64');
        const r = m.routing()!;
        expect(r.routed).toBeCloseTo(Math.max(1, Math.ceil(cap * S)) / S, 6);
        expect(r.agreement).not.toBeNull();
        expect(m.predictorLoss()!.item()).toBeGreaterThan(0);
        m.dispose();
      });
    });
  }

  test('eval: the predictor decides (logit > 0), causally: every prefix gives the same rows', () => {
    dr.tidy(() => {
      const m = new nn.RoutedAttention(8, 2, { capacity: 0.25, dtype: 'float64', generator: new dr.Generator(4) });
      m.eval();
      const B = 2, S = 11;
      const x = dr.tensor(randArray(B * S * 8, 5, -1, 1), [B, S, 8], { dtype: 'float64' });
      const y = m.forward(x);
      const want = reference(m, x, (_b, _sc, pr) => pr.map((p) => p > 0));
      expectClose(y, want, 'float64');
      const routedFrac = want.reduce((a, v, i) => a + (i % 8 === 0 && v !== 0 ? 1 : 0), 0) / (B * S);
      expect(m.routing()!.routed).toBeCloseTo(routedFrac, 6);
      expect(m.routing()!.agreement).toBeNull();
      for (const p of [1, 4, 10]) {
        const pre = m.forward(dr.narrow(x, 1, 0, p));
        expectClose(pre, arr(dr.narrow(y, 1, 0, p)), 'float64');
      }
      m.dispose();
    });
  });

  test('gradcheck in training through the input and the router (selection held fixed)', () => {
    dr.tidy(() => {
      const m = new nn.RoutedAttention(4, 1, { capacity: 0.5, dtype: 'float64', generator: new dr.Generator(8) });
      const x = dr.tensor(randArray(6 * 4, 9, -1, 1), [1, 6, 4], { dtype: 'float64' }).requiresGrad_();
      const w0 = m.router.weight;
      const w = dr.tensor(arr(w0), w0.shape.slice(), { dtype: 'float64' }).requiresGrad_();
      const run = (xx: dr.Tensor, ww: dr.Tensor) => {
        m.router.weight = ww;
        try {
          return m.forward(xx);
        } finally {
          m.router.weight = w0;
        }
      };
      expect(dr.gradcheck(run, [x, w], { eps: 1e-7 }).ok).toBe(true);
      m.dispose();
    });
  });

  test('the predictor learns the router choice', () => {
    const m = new nn.RoutedAttention(8, 2, { capacity: 0.5, generator: new dr.Generator(10) });
    const opt = new dr.optim.AdamW(m.predictor.parameters(), { lr: 0.05, weightDecay: 0 });
    const x = dr.tensor(randArray(4 * 16 * 8, 11, -1, 1), [4, 16, 8]);
    let first = 0, last = 0;
    for (let i = 0; i < 60; ++i) {
      opt.zeroGrad();
      dr.tidy(() => {
        const y = m.forward(x);
        dr.backward(m.predictorLoss()!);
        y.dispose();
      });
      opt.step();
      if (i === 0) first = m.routing()!.agreement!;
      last = m.routing()!.agreement!;
    }
    expect(last).toBeGreaterThan(Math.max(first, 0.85));
    x.dispose();
    m.dispose();
  });

  test('bad options and inputs', () => {
    expect(() => new nn.RoutedAttention(8, 2, { capacity: 0 })).toThrow(/capacity in \(0, 1\]/);
    expect(() => new nn.RoutedAttention(8, 2, undefined as never)).toThrow(dr.ValueError);
    const m = new nn.RoutedAttention(8, 2, { capacity: 0.5 });
    expect(() => m.forward(dr.zeros([1, 3, 7]))).toThrow(dr.ShapeError);
    m.dispose();
  });
});
