// NSAAttention against a float64 reference of its three branches: with topK * segment >= S the
// selected branch is causal attention, with window >= S the sliding one too; the compressed
// branch is written from its definition (segment means, whole segments before the query).
import * as dr from '../../lib';
import { nn } from '../../lib';
import { expectClose } from '../helpers';
import { randArray } from '../reference';
import { arr, lin, ropeRef as rot } from './ref';

// softmax attention of one query over (key, value) lists
function attend(q: number[], ks: number[][], vs: number[][], scale: number): number[] {
  const out = new Array(q.length).fill(0);
  if (!ks.length) return out;
  const s = ks.map((k) => k.reduce((a, kv, i) => a + kv * q[i], 0) * scale);
  const m = Math.max(...s), e = s.map((x) => Math.exp(x - m)), z = e.reduce((a, b) => a + b, 0);
  vs.forEach((v, j) => v.forEach((vv, i) => (out[i] += (e[j] / z) * vv)));
  return out;
}

function nsaRef(m: nn.NSAAttention, x: Float64Array, B: number, S: number): Float64Array {
  const d = m.dModel, H = m.nHeads, Hk = m.nKvHeads, hd = m.headDim, G = H / Hk, seg = m.segment;
  const q = lin(x, B * S, arr(m.q_proj.weight), d, d), k = lin(x, B * S, arr(m.k_proj.weight), d, Hk * hd), v = lin(x, B * S, arr(m.v_proj.weight), d, Hk * hd);
  for (let b = 0; b < B; ++b)
    for (let t = 0; t < S; ++t) {
      for (let h = 0; h < H; ++h) rot(q, (b * S + t) * d + h * hd, hd, t);
      for (let h = 0; h < Hk; ++h) rot(k, (b * S + t) * Hk * hd + h * hd, hd, t);
    }
  const gw = m.gate.proj.map((p) => [arr(p.weight), arr(p.bias!)]);
  const mixed = new Float64Array(B * S * d);
  const row = (a: Float64Array, b: number, t: number, h: number, w: number) => Array.from(a.slice((b * S + t) * w + h * hd, (b * S + t) * w + (h + 1) * hd));
  for (let b = 0; b < B; ++b)
    for (let t = 0; t < S; ++t) {
      const g = gw.map(([W, bb]) => 1 / (1 + Math.exp(-lin(x.slice((b * S + t) * d, (b * S + t + 1) * d), 1, W, d, 1, bb)[0])));
      for (let h = 0; h < H; ++h) {
        const kh = Math.floor(h / G), qr = row(q, b, t, h, d);
        const ks = [], vs = [];
        for (let j = 0; j <= t; ++j) {
          ks.push(row(k, b, j, kh, Hk * hd));
          vs.push(row(v, b, j, kh, Hk * hd));
        }
        const full = attend(qr, ks, vs, 1 / Math.sqrt(hd));
        const mk = [], mv = [];
        for (let s0 = 0; s0 + seg - 1 <= t; s0 += seg) {
          const km = new Array(hd).fill(0), vm = new Array(hd).fill(0);
          for (let j = s0; j < s0 + seg; ++j) for (let i = 0; i < hd; ++i) {
            km[i] += ks[j][i] / seg;
            vm[i] += vs[j][i] / seg;
          }
          mk.push(km);
          mv.push(vm);
        }
        const cmp = attend(qr, mk, mv, 1 / Math.sqrt(hd));
        for (let i = 0; i < hd; ++i) mixed[(b * S + t) * d + h * hd + i] = g[0] * cmp[i] + g[1] * full[i] + g[2] * full[i];
      }
    }
  return lin(mixed, B * S, arr(m.o_proj.weight), d, d);
}

describe('NSAAttention', () => {
  for (const [B, S, H, Hk, seg] of [[1, 1, 2, 1, 2], [2, 7, 2, 2, 2], [1, 9, 4, 1, 3]] as const) {
    test(`B${B} S${S} heads ${H}/${Hk} segment ${seg} against the branches' definitions`, () => {
      dr.tidy(() => {
        const m = new nn.NSAAttention(8, H, { nKvHeads: Hk, segment: seg, topK: Math.ceil(S / seg), window: S, dtype: 'float64', generator: new dr.Generator(S) });
        const x = dr.tensor(randArray(B * S * 8, 3, -1, 1), [B, S, 8], { dtype: 'float64' });
        expectClose(m.forward(x), nsaRef(m, arr(x), B, S), 'float64');
        const r = m.routing()!;
        expect(r.every((g) => g > 0 && g < 1)).toBe(true);
        m.dispose();
      });
    });
  }

  test('gradcheck through the input (a real selection: topK 1, window 2)', () => {
    dr.tidy(() => {
      const m = new nn.NSAAttention(4, 2, { nKvHeads: 1, segment: 2, topK: 1, window: 2, dtype: 'float64', generator: new dr.Generator(1) });
      const x = dr.tensor(randArray(6 * 4, 4, -1, 1), [1, 6, 4], { dtype: 'float64' }).requiresGrad_();
      expect(dr.gradcheck((xx) => m.forward(xx), [x]).ok).toBe(true);
      m.dispose();
    });
  });

  test('bad options', () => {
    expect(() => new nn.NSAAttention(8, 2, { segment: 0, topK: 1, window: 4 })).toThrow(/positive integer for segment/);
    expect(() => new nn.NSAAttention(8, 2, { segment: 4, topK: 1, window: 4, nKvHeads: 3 })).toThrow(/nKvHeads dividing/);
    expect(() => new nn.NSAAttention(8, 2, undefined as never)).toThrow(dr.ValueError);
  });
});
