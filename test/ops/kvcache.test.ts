// kvCacheAppend / kvCacheAttention against a float64 reference written from the contract
// (native/core/kvcache.h): every sequence's whole history is kept here in plain arrays, and each
// query's visible keys are listed from the formula (ring bound, mask, selected segments).
import * as dr from '../../lib';
import { expectClose, expectReadFails } from '../helpers';
import { prng } from '../reference';

type Mask = 'global' | 'sliding' | 'block';

interface Case {
  name: string;
  dtype: dr.DType;
  Hq: number;
  Hkv: number;
  D: number;
  slots: number;
  capacity: number;
  mask: Mask;
  window?: number;
  segment?: number;
  topK?: number;
  group?: number;
  /** steps: [slot, new positions][] per step (a prefill then decode steps, sequences joining and leaving) */
  steps: Array<Array<[number, number]>>;
}

// history[slot] = per position: k [Hkv][D], v [Hkv][D]
type Hist = Array<{ k: number[][]; v: number[][] }>;

function visibleRef(c: Case, hist: Hist, p: number, len: number, qh: (h: number) => number[], h: number): number[] {
  const lo = Math.max(0, len - c.capacity);
  const keys: number[] = [];
  if (c.segment) {
    const seg = c.segment, G = c.Hq / c.Hkv, group = c.group ?? 1, g0 = Math.floor(h / group) * group, hk = Math.floor(h / G);
    const own = Math.floor(p / seg);
    const qs = new Array(c.D).fill(0);
    for (let u = 0; u < group; ++u) qh(g0 + u).forEach((x, d) => (qs[d] += x));
    const scale = 1 / Math.sqrt(c.D);
    const scores: Array<[number, number]> = [];
    for (let s = 0; s < own; ++s) {
      let x = 0;
      for (let d = 0; d < c.D; ++d) {
        let m = 0;
        for (let j = s * seg; j < (s + 1) * seg; ++j) m += hist[j].k[hk][d];
        x += qs[d] * scale * (m / seg);
      }
      scores.push([x, s]);
    }
    scores.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    const chosen = [own, ...scores.slice(0, (c.topK ?? 1) - 1).map((e) => e[1])];
    for (let j = lo; j <= p; ++j) if (chosen.includes(Math.floor(j / seg))) keys.push(j);
    return keys;
  }
  for (let j = lo; j <= p; ++j) {
    if (c.mask === 'sliding' && j <= p - c.window!) continue;
    if (c.mask === 'block' && Math.floor(j / c.window!) !== Math.floor(p / c.window!)) continue;
    keys.push(j);
  }
  return keys;
}

function runCase(c: Case, seed: number): void {
  const rnd = prng(seed);
  const { Hq, Hkv, D, slots: S, capacity: C } = c;
  const kc = dr.zeros([S, Hkv, C, D], { dtype: c.dtype }), vc = dr.zeros([S, Hkv, C, D], { dtype: c.dtype });
  const statsDt = c.dtype === 'float64' ? 'float64' : 'float32';
  const means = c.segment ? dr.zeros([S, Hkv, Math.ceil(C / c.segment), D], { dtype: statsDt }) : undefined;
  const hist: Hist[] = Array.from({ length: S }, () => []);
  // values rounded to the dtype, as the tensor will hold them
  const rounded = (n: number) => Array.from(dr.tidy(() => dr.tensor(Float64Array.from({ length: n }, () => rnd() * 4 - 2), [n], { dtype: c.dtype }).to('float64').dataSync()));
  for (const step of c.steps) {
    const N = step.length, Sq = step[0][1];
    expect(step.every(([, n]) => n === Sq)).toBe(true);
    const kData = rounded(N * Hkv * Sq * D), vData = rounded(N * Hkv * Sq * D), qData = rounded(N * Hq * Sq * D);
    const at = (a: number[], n: number, h: number, H: number, i: number) => a.slice(((n * H + h) * Sq + i) * D, ((n * H + h) * Sq + i + 1) * D);
    const slots = step.map(([s]) => s);
    const before = slots.map((s) => hist[s].length);
    dr.tidy(() => {
      const k = dr.tensor(Float64Array.from(kData), [N, Hkv, Sq, D], { dtype: c.dtype });
      const v = dr.tensor(Float64Array.from(vData), [N, Hkv, Sq, D], { dtype: c.dtype });
      dr.kvCacheAppend(kc, vc, k, v, { lengths: before, slots, means, segment: c.segment });
    });
    step.forEach(([s], n) => {
      for (let i = 0; i < Sq; ++i) {
        hist[s].push({ k: Array.from({ length: Hkv }, (_, h) => at(kData, n, h, Hkv, i)), v: Array.from({ length: Hkv }, (_, h) => at(vData, n, h, Hkv, i)) });
      }
    });
    const lengths = slots.map((s) => hist[s].length);
    const want = new Float64Array(N * Hq * Sq * D);
    const G = Hq / Hkv, scale = 1 / Math.sqrt(D);
    for (let n = 0; n < N; ++n) {
      const H = hist[slots[n]], len = lengths[n];
      for (let h = 0; h < Hq; ++h) {
        for (let i = 0; i < Sq; ++i) {
          const p = len - Sq + i, q = at(qData, n, h, Hq, i), hk = Math.floor(h / G);
          const keys = visibleRef(c, H, p, len, (hh) => at(qData, n, hh, Hq, i), h);
          const sc = keys.map((j) => scale * H[j].k[hk].reduce((a, x, d) => a + x * q[d], 0));
          const mx = Math.max(...sc);
          const w = sc.map((x) => Math.exp(x - mx));
          const z = w.reduce((a, b) => a + b, 0);
          for (let d = 0; d < D; ++d) want[((n * Hq + h) * Sq + i) * D + d] = keys.length ? keys.reduce((a, j, u) => a + (w[u] / z) * H[j].v[hk][d], 0) : 0;
        }
      }
    }
    dr.tidy(() => {
      const q = dr.tensor(Float64Array.from(qData), [N, Hq, Sq, D], { dtype: c.dtype });
      const got = dr.kvCacheAttention(q, kc, vc, { lengths, slots, mask: c.mask, window: c.window, means, segment: c.segment, topK: c.topK, group: c.group });
      expectClose(got.to('float64'), want, c.dtype, 4);
    });
  }
  if (means) {
    // the kept means equal the means of every slot's keys so far
    const m = means.dataSync(), M = means.shape[2];
    for (let s = 0; s < S; ++s) {
      for (let h = 0; h < Hkv; ++h) {
        for (let g = 0; g * c.segment! < hist[s].length; ++g) {
          const j1 = Math.min(hist[s].length, (g + 1) * c.segment!);
          for (let d = 0; d < D; ++d) {
            let x = 0;
            for (let j = g * c.segment!; j < j1; ++j) x += hist[s][j].k[h][d];
            const want = x / (j1 - g * c.segment!), got = m[((s * Hkv + h) * M + g) * D + d];
            expect(Math.abs(got - want)).toBeLessThanOrEqual(c.dtype === 'float64' ? 1e-12 : 1e-5 * (1 + Math.abs(want)));
          }
        }
      }
    }
    means.dispose();
  }
  kc.dispose();
  vc.dispose();
}

// a prefill of sequences at different lengths, then decode steps with sequences joining (a later
// prefill into a free slot) and leaving (absent from later steps)
function schedule(prefill: number[], decodeSteps: number, join?: { slot: number; at: number; len: number }, chunk = 1): Array<Array<[number, number]>> {
  const steps: Array<Array<[number, number]>> = prefill.map((n, s) => [[s, n]]);
  for (let t = 0; t < decodeSteps; ++t) {
    const live: Array<[number, number]> = prefill.map((_, s) => [s, chunk] as [number, number]).filter(([s]) => !(s === 0 && t >= decodeSteps - 2));  // slot 0 leaves early
    if (join && t === join.at) steps.push([[join.slot, join.len]]);
    if (join && t >= join.at) live.push([join.slot, chunk]);
    if (live.length) steps.push(live);
  }
  return steps;
}

const CASES: Case[] = [
  { name: 'global, float64, GQA 6/2, D 37', dtype: 'float64', Hq: 6, Hkv: 2, D: 37, slots: 4, capacity: 40, mask: 'global', steps: schedule([5, 1, 13], 6, { slot: 3, at: 2, len: 9 }) },
  { name: 'global, float32, one head, D 1, one sequence', dtype: 'float32', Hq: 1, Hkv: 1, D: 1, slots: 1, capacity: 20, mask: 'global', steps: schedule([3], 5) },
  { name: 'sliding ring (C = window), float32, D 64, longer than the ring', dtype: 'float32', Hq: 4, Hkv: 2, D: 64, slots: 3, capacity: 7, mask: 'sliding', window: 7, steps: schedule([11, 2, 7], 9) },
  { name: 'sliding ring with chunks (C = window + Sq - 1), float64', dtype: 'float64', Hq: 2, Hkv: 1, D: 24, slots: 3, capacity: 8, mask: 'sliding', window: 5, steps: schedule([9, 4], 4, { slot: 2, at: 1, len: 12 }, 4) },
  { name: 'sliding over a full buffer, bfloat16', dtype: 'bfloat16', Hq: 4, Hkv: 4, D: 32, slots: 2, capacity: 32, mask: 'sliding', window: 6, steps: schedule([10, 3], 5) },
  { name: 'block, float32, chunks of 3', dtype: 'float32', Hq: 3, Hkv: 1, D: 17, slots: 3, capacity: 30, mask: 'block', window: 4, steps: schedule([6, 1, 8], 4, undefined, 3) },
  { name: 'segment top-1, float64', dtype: 'float64', Hq: 2, Hkv: 2, D: 16, slots: 3, capacity: 36, mask: 'global', segment: 4, topK: 1, steps: schedule([9, 5, 14], 6) },
  { name: 'segment top-3, GQA 4/2 group 2, segment 7, float64', dtype: 'float64', Hq: 4, Hkv: 2, D: 20, slots: 4, capacity: 50, mask: 'global', segment: 7, topK: 3, group: 2, steps: schedule([16, 1, 29], 7, { slot: 3, at: 3, len: 22 }) },
  { name: 'segment top-2, chunks, float32', dtype: 'float32', Hq: 2, Hkv: 1, D: 33, slots: 2, capacity: 60, mask: 'global', segment: 5, topK: 2, steps: schedule([12, 23], 5, undefined, 3) },
];

describe('kvCacheAppend / kvCacheAttention', () => {
  CASES.forEach((c, i) => {
    test(c.name, () => runCase(c, 100 + i));
  });

  test('an append longer than the ring keeps its last C positions', () => {
    dr.tidy(() => {
      const kc = dr.zeros([2, 1, 3, 2]), vc = dr.zeros([2, 1, 3, 2]);
      const k = dr.arange(0, 14, 1, { dtype: 'float32' }).reshape([1, 1, 7, 2]);
      dr.kvCacheAppend(kc, vc, k, k, { lengths: [1], slots: [1] });
      // positions 1..7 written; the last three (5, 6, 7 = rows 4, 5, 6 of k) at rows 2, 0, 1
      expect(kc.arraySync()).toEqual([[[[0, 0], [0, 0], [0, 0]]], [[[10, 11], [12, 13], [8, 9]]]]);
    });
  });

  test('bad arguments: typed errors naming the argument', () => {
    dr.tidy(() => {
      const kc = dr.zeros([2, 2, 8, 4]), vc = dr.zeros([2, 2, 8, 4]);
      const k = dr.zeros([2, 2, 1, 4]), q = dr.zeros([2, 4, 1, 4]);
      expect(() => dr.kvCacheAppend(kc, vc, k, k, { lengths: [0, 0], slots: [1, 1] })).toThrow(/distinct slots/);
      expect(() => dr.kvCacheAppend(kc, vc, k, k, { lengths: [0, 0], slots: [0, 2] })).toThrow(/slots in \[0, 2\)/);
      expect(() => dr.kvCacheAppend(kc, vc, k, k, { lengths: [0], slots: [0, 1] })).toThrow(dr.ValueError);
      expect(() => dr.kvCacheAppend(kc, vc, dr.zeros([2, 3, 1, 4]), dr.zeros([2, 3, 1, 4]), { lengths: [0, 0], slots: [0, 1] })).toThrow(/3 key\/value heads/);
      expect(() => dr.kvCacheAppend(kc, vc, k.to('float64'), k.to('float64'), { lengths: [0, 0], slots: [0, 1] })).toThrow(dr.DTypeError);
      expect(() => dr.kvCacheAttention(q, kc, vc, { lengths: [0, 1], slots: [0, 1] })).toThrow(/length/);
      expect(() => dr.kvCacheAttention(q, kc, vc, { lengths: [1, 1], slots: [0, 1], mask: 'sliding' })).toThrow(/window/);
      expect(() => dr.kvCacheAttention(q, kc, vc, { lengths: [1, 1], slots: [0, 1], mask: 'ring' as never })).toThrow(/mask/);
      const means = dr.zeros([2, 2, 2, 4]);
      expect(() => dr.kvCacheAttention(q, kc, vc, { lengths: [1, 1], slots: [0, 1], means, segment: 4, group: 3 })).toThrow(/group/);
      expect(() => dr.kvCacheAttention(q, kc, vc, { lengths: [1, 1], slots: [0, 1], means, segment: 3 })).toThrow(/means of shape/);
      expect(() => dr.kvCacheAttention(q, kc, vc, { lengths: [1, 1], slots: [0, 1], means, segment: 4, mask: 'sliding', window: 2 })).toThrow(/global mask/);
      expect(() => dr.kvCacheAttention(dr.zeros([2, 3, 1, 4]), kc, vc, { lengths: [1, 1], slots: [0, 1] })).toThrow(/multiple/);
    });
  });

  test('slots and lengths given as tensors are checked when the op runs', async () => {
    const kc = dr.zeros([2, 1, 4, 2]), vc = dr.zeros([2, 1, 4, 2]);
    const q = dr.zeros([1, 1, 1, 2]);
    const out = dr.kvCacheAttention(q, kc, vc, { lengths: dr.tensor([1], [1], { dtype: 'int32' }), slots: dr.tensor([5], [1], { dtype: 'int32' }) });
    await expectReadFails(out, dr.OutOfRangeError, 'kvCacheAttention', /slot 5 of sequence 0 is outside \[0, 2\)/);
    const means = dr.zeros([2, 1, 2, 2]);
    dr.kvCacheAppend(kc, vc, dr.zeros([1, 1, 3, 2]), dr.zeros([1, 1, 3, 2]), { lengths: dr.tensor([2], [1], { dtype: 'int32' }), slots: [0], means, segment: 2 });
    await expectReadFails(kc, dr.OutOfRangeError, 'kvCacheAppend', /would hold 5 positions/);
    [kc, vc, q, out, means].forEach((t) => t.dispose());
  });
});
