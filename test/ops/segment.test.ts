// Segment routing (segmentMean, segmentScores, segmentSelect, segmentAttention,
// compressedAttention, SegmentCache) against float64 references written from the definitions in
// lib/ops/segment.ts and core/attention.h, on awkward shapes (odd lengths, a short last segment,
// segment 1 and segment >= S, topK >= the segments, GQA groups of 1, 3 and 8, queries shorter
// than keys); gradient checks; the exact oracle (all segments kept = causal global attention);
// bad options.
import * as dr from '../../lib';
import { expectClose, input } from '../helpers';
import { randArray } from '../reference';

type Arr = Float64Array;

interface Dims { B: number; Hq: number; Hkv: number; Sq: number; Sk: number; D: number }

function meanRef(x: Arr, outer: number, S: number, D: number, seg: number): Arr {
  const ns = Math.ceil(S / seg);
  const o = new Float64Array(outer * ns * D);
  for (let b = 0; b < outer; ++b)
    for (let s = 0; s < ns; ++s) {
      const j0 = s * seg, j1 = Math.min(S, j0 + seg);
      for (let d = 0; d < D; ++d) {
        let a = 0;
        for (let j = j0; j < j1; ++j) a += x[(b * S + j) * D + d];
        o[(b * ns + s) * D + d] = a / (j1 - j0);
      }
    }
  return o;
}

function scoresRef(q: Arr, k: Arr, d: Dims, seg: number, causal: boolean, scale: number): Arr {
  const ns = Math.ceil(d.Sk / seg), G = d.Hq / d.Hkv;
  const kbar = meanRef(k, d.B * d.Hkv, d.Sk, d.D, seg);
  const o = new Float64Array(d.B * d.Hq * d.Sq * ns);
  for (let b = 0; b < d.B; ++b)
    for (let h = 0; h < d.Hq; ++h)
      for (let i = 0; i < d.Sq; ++i) {
        const p = i + d.Sk - d.Sq;
        for (let s = 0; s < ns; ++s) {
          let a = 0;
          for (let x = 0; x < d.D; ++x) a += q[((b * d.Hq + h) * d.Sq + i) * d.D + x] * kbar[((b * d.Hkv + Math.floor(h / G)) * ns + s) * d.D + x];
          o[((b * d.Hq + h) * d.Sq + i) * ns + s] = causal && s * seg > p ? -Infinity : scale * a;
        }
      }
  return o;
}

// own segment first, then by score (ties to the lower index), -1 for -inf and padding
function selectRef(sc: Arr, d: Dims, ns: number, topK: number, g: number, seg: number, keepOwn: boolean): { idx: number[]; w: number[] } {
  const idx: number[] = [], w: number[] = [];
  for (let b = 0; b < d.B; ++b)
    for (let h = 0; h < d.Hq; ++h)
      for (let i = 0; i < d.Sq; ++i) {
        const row = new Array(ns).fill(0);
        const h0 = Math.floor(h / g) * g;
        for (let hh = h0; hh < h0 + g; ++hh) for (let s = 0; s < ns; ++s) row[s] += sc[((b * d.Hq + hh) * d.Sq + i) * ns + s];
        const own = Math.floor((i + d.Sk - d.Sq) / seg);
        const key = (s: number) => (keepOwn && s === own ? Infinity : row[s]);
        // NaN largest, then larger first, then the lower index
        const cmp = (a: number, c: number) => {
          if (keepOwn && (a === own || c === own)) return a === own ? -1 : 1;  // the own segment first, always
          const ka = key(a), kc = key(c), na = Number.isNaN(ka), nc = Number.isNaN(kc);
          if (na !== nc) return na ? -1 : 1;
          if (!na && ka !== kc) return ka > kc ? -1 : 1;
          return a - c;
        };
        const order = Array.from({ length: ns }, (_, s) => s).sort(cmp);
        const kept = order.slice(0, topK).filter((s) => key(s) !== -Infinity);
        const m = Math.max(...kept.map((s) => row[s]));
        const z = kept.reduce((a, s) => a + Math.exp(row[s] - m), 0);
        for (let x = 0; x < topK; ++x) {
          idx.push(x < kept.length ? kept[x] : -1);
          w.push(x < kept.length ? Math.exp(row[kept[x]] - m) / z : 0);
        }
      }
  return { idx, w };
}

// token attention over the listed segments' keys (-1 and repeats ignored), cut at p when causal
function attnRef(q: Arr, k: Arr, v: Arr, d: Dims, idx: ArrayLike<number>, K: number, seg: number, causal: boolean, scale: number): { out: Arr; lse: Arr } {
  const G = d.Hq / d.Hkv;
  const out = new Float64Array(d.B * d.Hq * d.Sq * d.D), lse = new Float64Array(d.B * d.Hq * d.Sq);
  for (let b = 0; b < d.B; ++b)
    for (let h = 0; h < d.Hq; ++h)
      for (let i = 0; i < d.Sq; ++i) {
        const r = (b * d.Hq + h) * d.Sq + i, p = i + d.Sk - d.Sq, kv = b * d.Hkv + Math.floor(h / G);
        const segs = new Set<number>();
        for (let x = 0; x < K; ++x) if (idx[r * K + x] >= 0) segs.add(idx[r * K + x]);
        const keys: number[] = [];
        for (const s of segs) for (let j = s * seg; j < Math.min(d.Sk, (s + 1) * seg); ++j) if (!causal || j <= p) keys.push(j);
        if (keys.length === 0) {
          lse[r] = -Infinity;
          continue;
        }
        const sc = keys.map((j) => {
          let a = 0;
          for (let x = 0; x < d.D; ++x) a += q[r * d.D + x] * k[(kv * d.Sk + j) * d.D + x];
          return scale * a;
        });
        const m = Math.max(...sc);
        const e = sc.map((s) => Math.exp(s - m));
        const z = e.reduce((a, c) => a + c, 0);
        lse[r] = m + Math.log(z);
        keys.forEach((j, n) => {
          for (let x = 0; x < d.D; ++x) out[r * d.D + x] += (e[n] / z) * v[(kv * d.Sk + j) * d.D + x];
        });
      }
  return { out, lse };
}

function qkv(d: Dims, seed: number, dtype: dr.DType) {
  const q = input([d.B, d.Hq, d.Sq, d.D], seed, dtype);
  const k = input([d.B, d.Hkv, d.Sk, d.D], seed + 1, dtype);
  const v = input([d.B, d.Hkv, d.Sk, d.D], seed + 2, dtype);
  return { q, k, v };
}

// random selections with -1, repeats and (when causal) segments after the query
function randomIndices(d: Dims, ns: number, K: number, seed: number): Int32Array {
  let s = seed * 7919 + 13;
  const rnd = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  const a = new Int32Array(d.B * d.Hq * d.Sq * K);
  for (let e = 0; e < a.length; ++e) a[e] = Math.floor(rnd() * (ns + 1)) - 1;
  return a;
}

const tolScale = (dtype: dr.DType) => (dtype === 'bfloat16' ? 4 : 1);

describe('segmentMean', () => {
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[])
    for (const [S, seg] of [[13, 4], [8, 8], [5, 9], [1, 1], [70, 1]])
      test(`${dtype} S ${S} segment ${seg}`, () => dr.tidy(() => {
        const x = input([2, 3, S, 5], 3, dtype);
        expectClose(dr.segmentMean(x.t, seg), meanRef(x.data, 6, S, 5, seg), dtype);
      }));
  test('gradient (float64)', () => dr.tidy(() => {
    const x = input([2, 11, 3], 4, 'float64');
    const w = input([2, 3, 3], 5, 'float64').t;
    expect(dr.gradcheck((a) => dr.segmentMean(a, 4).mul(w), [x.t.requiresGrad_()]).ok).toBe(true);
  }));
});

describe('segmentScores and segmentSelect', () => {
  const shapes: [Dims, number][] = [
    [{ B: 2, Hq: 3, Hkv: 1, Sq: 13, Sk: 13, D: 5 }, 4],
    [{ B: 1, Hq: 8, Hkv: 1, Sq: 9, Sk: 20, D: 4 }, 3],
    [{ B: 1, Hq: 2, Hkv: 2, Sq: 7, Sk: 7, D: 3 }, 10],
  ];
  for (const [d, seg] of shapes)
    for (const causal of [true, false])
      test(`scores B${d.B} H${d.Hq}/${d.Hkv} Sq${d.Sq} Sk${d.Sk} seg ${seg} causal ${causal}`, () => dr.tidy(() => {
        const { q, k } = qkv(d, 11, 'float64');
        const sc = dr.segmentScores(q.t, k.t, { segment: seg, causal });
        expect(sc.dtype).toBe('float64');
        expectClose(sc, scoresRef(q.data, k.data, d, seg, causal, 1 / Math.sqrt(d.D)), 'float64');
        const f = dr.segmentScores(dr.cast(q.t, 'bfloat16'), dr.cast(k.t, 'bfloat16'), { segment: seg, causal });
        expect(f.dtype).toBe('float32');
      }));
  for (const [d, seg] of shapes)
    for (const [topK, g] of [[1, 1], [2, 1], [3, d.Hq / d.Hkv], [50, 1]])
      test(`select B${d.B} H${d.Hq} Sq${d.Sq} Sk${d.Sk} seg ${seg} topK ${topK} groupHeads ${g}`, () => dr.tidy(() => {
        const { q, k } = qkv(d, 21, 'float64');
        const sc = dr.segmentScores(q.t, k.t, { segment: seg });
        const ns = Math.ceil(d.Sk / seg);
        const sel = dr.segmentSelect(sc, { topK, groupHeads: g, segment: seg, keyLength: d.Sk });
        const ref = selectRef(sc.dataSync() as Float64Array, d, ns, topK, g, seg, true);
        expect(Array.from(sel.indices.dataSync())).toEqual(ref.idx);
        expectClose(sel.weights, ref.w, 'float32');
      }));
  for (const [topK, g, quant] of [[1, 1, false], [4, 1, true], [8, 2, false], [9, 1, true], [12, 1, false]] as [number, number, boolean][])
    test(`select over 100 segments (the threshold path), topK ${topK} groupHeads ${g}${quant ? ', ties' : ''}, a NaN row, -inf scores`, () => dr.tidy(() => {
      const d = { B: 1, Hq: 2, Hkv: 1, Sq: 200, Sk: 200, D: 4 };
      const ns = 100;
      const raw = input([1, 2, 200, ns], 61, 'float64').data.map((x, i) => (i % 97 === 5 ? -Infinity : quant ? Math.round(x * 2) / 2 : x));
      for (let x = 0; x < ns; x += 7) raw[(150 * ns) + x] = NaN;  // head 0, row 150
      // causal, as segmentScores gives them: segments starting after the row are -inf
      for (let e = 0; e < raw.length; ++e) if ((e % ns) * 2 > Math.floor(e / ns) % 200) raw[e] = -Infinity;
      const sc = dr.tensor(raw, [1, 2, 200, ns], { dtype: 'float32' });
      const sel = dr.segmentSelect(sc, { topK, groupHeads: g, segment: 2, keyLength: 200 });
      const ref = selectRef(Float64Array.from(sc.dataSync()), d, ns, topK, g, 2, true);
      expect(Array.from(sel.indices.dataSync())).toEqual(ref.idx);
      expectClose(sel.weights, ref.w, 'float32');
    }));
  test('ties go to the lower segment', () => dr.tidy(() => {
    const sc = dr.zeros([1, 1, 1, 6], { dtype: 'float32' });
    const sel = dr.segmentSelect(sc, { topK: 3, keepOwn: false });
    expect(Array.from(sel.indices.dataSync())).toEqual([0, 1, 2]);
  }));
  test('gradient of the scores (float64)', () => dr.tidy(() => {
    const d = { B: 1, Hq: 2, Hkv: 1, Sq: 5, Sk: 7, D: 3 };
    const { q, k } = qkv(d, 31, 'float64');
    const w = input([1, 2, 5, 3], 32, 'float64').t;
    expect(dr.gradcheck((a, b) => dr.segmentScores(a, b, { segment: 3, causal: false }).mul(w), [q.t.requiresGrad_(), k.t.requiresGrad_()]).ok).toBe(true);
  }));
});

// The fused selection (selectSegments: segmentTopk) against a plain float64 reference: per row
// the scores scale * q_h . mean(k of s) summed over the group's heads, ranked as segmentSelect
// ranks them (own segment first when causal, then by score, ties to the lower index, NaN
// largest; segments after the query skipped when causal; -1 pads). The kernel scores in float
// (double for float64) and sums differently, so two scores within rounding of each other may
// come in either order: an entry that differs from the reference must then be a new, visible
// segment whose reference score is within `tol` of the wanted one.
function topkRef(q: Arr, kbar: Arr, d: Dims, seg: number, topK: number, g: number, causal: boolean, scale: number): { idx: number[]; sc: number[][] } {
  const ns = Math.ceil(d.Sk / seg), G = d.Hq / d.Hkv;
  const idx: number[] = [], sc: number[][] = [];
  for (let b = 0; b < d.B; ++b)
    for (let h = 0; h < d.Hq; ++h)
      for (let i = 0; i < d.Sq; ++i) {
        const p = i + d.Sk - d.Sq, own = Math.floor(p / seg), last = causal ? Math.min(ns - 1, own) : ns - 1;
        const h0 = Math.floor(h / g) * g;
        const row = new Array(ns).fill(0);
        for (let hh = h0; hh < h0 + g; ++hh)
          for (let s = 0; s <= last; ++s) {
            let a = 0;
            for (let x = 0; x < d.D; ++x) a += q[((b * d.Hq + hh) * d.Sq + i) * d.D + x] * kbar[((b * d.Hkv + Math.floor(hh / G)) * ns + s) * d.D + x];
            row[s] += scale * a;
          }
        const cand: number[] = [];
        for (let s = 0; s <= last; ++s) if (!(causal && s === own) && row[s] !== -Infinity) cand.push(s);
        cand.sort((a, c) => {
          const na = Number.isNaN(row[a]), nc = Number.isNaN(row[c]);
          if (na !== nc) return na ? -1 : 1;
          if (!na && row[a] !== row[c]) return row[a] > row[c] ? -1 : 1;
          return a - c;
        });
        const kept = (causal ? [own] : []).concat(cand).slice(0, topK);
        for (let x = 0; x < topK; ++x) idx.push(x < kept.length ? kept[x] : -1);
        sc.push(row.map((v, s) => (s <= last ? v : NaN)));
      }
  return { idx, sc };
}

function expectSelection(got: ArrayLike<number>, ref: { idx: number[]; sc: number[][] }, topK: number, tol: number): void {
  let nearTies = 0;
  for (let r = 0; r < ref.sc.length; ++r) {
    const row = ref.sc[r], seen = new Set<number>();
    const rmax = Math.max(1, ...row.filter(Number.isFinite).map(Math.abs));
    for (let x = 0; x < topK; ++x) {
      const g = got[r * topK + x], w = ref.idx[r * topK + x];
      if (g !== w) {
        const same = (a: number, c: number) => (Number.isNaN(a) && Number.isNaN(c)) || Math.abs(a - c) <= tol * rmax;
        const ok = w >= 0 && g >= 0 && g < row.length && !seen.has(g) && (!Number.isNaN(row[g]) || Number.isNaN(row[w])) && same(row[g], row[w]);
        if (!ok) throw new Error(`row ${r} entry ${x}: got ${g} (score ${row[g]}), want ${w} (score ${row[w]}); row ${Array.from(got).slice(r * topK, (r + 1) * topK)} vs ${ref.idx.slice(r * topK, (r + 1) * topK)}`);
        ++nearTies;
      }
      seen.add(g);
    }
  }
  // near-ties are the exception: the rest agrees index for index
  expect(nearTies).toBeLessThanOrEqual(Math.max(2, ref.idx.length / 50));
}

describe('selectSegments (the fused segmentTopk kernel)', () => {
  const cases: [string, Dims, number, number][] = [
    ['Sq 1 decode', { B: 2, Hq: 4, Hkv: 2, Sq: 1, Sk: 33, D: 8 }, 8, 3],
    ['odd', { B: 2, Hq: 2, Hkv: 2, Sq: 37, Sk: 37, D: 5 }, 7, 3],
    ['G3 Sq<Sk', { B: 1, Hq: 3, Hkv: 1, Sq: 19, Sk: 45, D: 8 }, 6, 4],
    ['segment >= S', { B: 1, Hq: 2, Hkv: 1, Sq: 11, Sk: 11, D: 4 }, 32, 2],
    ['topK >= nseg', { B: 1, Hq: 2, Hkv: 2, Sq: 9, Sk: 9, D: 3 }, 2, 10],
    ['G8 D64', { B: 1, Hq: 8, Hkv: 1, Sq: 70, Sk: 70, D: 64 }, 16, 2],
    ['100 segments', { B: 1, Hq: 2, Hkv: 1, Sq: 200, Sk: 203, D: 16 }, 2, 5],
  ];
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[])
    for (const [tag, d, seg, K] of cases)
      for (const causal of [true, false]) {
        const G = d.Hq / d.Hkv;
        for (const g of Array.from(new Set([1, G, G === 8 ? 2 : 1])))
          test(`${dtype} ${tag} causal ${causal} group ${g}`, () => dr.tidy(() => {
            const { q, k } = qkv(d, 101 + d.Sq, dtype);
            const scale = 1 / Math.sqrt(d.D);
            // bfloat16: the means are bfloat16 too (segmentMean rounds them); read them back
            const kbar = dtype === 'bfloat16' ? Float64Array.from(dr.segmentMean(k.t, seg).dataSync()) : meanRef(k.data, d.B * d.Hkv, d.Sk, d.D, seg);
            const got = dr.selectSegments(q.t, k.t, { Sk: d.Sk, scale }, { segment: seg, topK: K, group: g, causal });
            expect(got.dtype).toBe('int32');
            expect(got.shape).toEqual([d.B, d.Hq, d.Sq, K]);
            expectSelection(got.dataSync(), topkRef(q.data, kbar, d, seg, K, g, causal, scale), K, dtype === 'float64' ? 1e-12 : 1e-5);
          }));
      }

  for (const [sdt, qdt] of [['float32', 'float32'], ['float64', 'bfloat16'], ['bfloat16', 'float64']] as [dr.DType, dr.DType][])
    test(`given ${sdt} summaries with ${qdt} q (GQA 4, group 2, Sq < Sk): the caller's means are used, k is not read`, () => dr.tidy(() => {
      const d = { B: 2, Hq: 4, Hkv: 1, Sq: 13, Sk: 40, D: 6 };
      const seg = 5, K = 3, scale = 0.7;
      const q = input([d.B, d.Hq, d.Sq, d.D], 111, qdt);
      const sum = input([d.B, d.Hkv, 8, d.D], 112, sdt);
      const k = dr.full([d.B, d.Hkv, d.Sk, d.D], NaN, { dtype: qdt });  // NaN keys: never read
      // the kernel reads the summaries in the stats dtype
      const kbar = Float64Array.from(dr.cast(sum.t, qdt === 'float64' ? 'float64' : 'float32').dataSync());
      const got = dr.selectSegments(q.t, k, { Sk: d.Sk, scale }, { segment: seg, topK: K, group: 2, causal: true, summaries: sum.t });
      expectSelection(got.dataSync(), topkRef(q.data, kbar, d, seg, K, 2, true, scale), K, qdt === 'float64' ? 1e-12 : 1e-5);
      // segmentAttention passes them through
      const r = dr.segmentAttention(q.t, dr.zeros([d.B, d.Hkv, d.Sk, d.D], { dtype: qdt }), dr.zeros([d.B, d.Hkv, d.Sk, d.D], { dtype: qdt }), { segment: seg, topK: K, groupHeads: 2, summaries: sum.t, scale, returnIndices: true });
      expect(Array.from(r.indices.dataSync())).toEqual(Array.from(got.dataSync()));
    }));

  test('NaN: a NaN query row ranks every segment NaN (own first, then in index order); a NaN summary ranks first', () => dr.tidy(() => {
    const d = { B: 1, Hq: 2, Hkv: 1, Sq: 9, Sk: 9, D: 3 };
    const qa = input([1, 2, 9, 3], 121, 'float32').data;
    qa[4 * 3 + 1] = NaN;  // head 0, row 4
    const ka = input([1, 1, 9, 3], 122, 'float32').data;
    const q = dr.tensor(qa, [1, 2, 9, 3], { dtype: 'float32' });
    const k = dr.tensor(ka, [1, 1, 9, 3], { dtype: 'float32' });
    const sum = dr.segmentMean(k, 2);
    const sa = Float64Array.from(sum.dataSync());
    sa[1 * 3 + 2] = NaN;  // segment 1
    const summaries = dr.tensor(sa, [1, 1, 5, 3], { dtype: 'float32' });
    for (const causal of [true, false]) {
      const got = dr.selectSegments(q, k, { Sk: 9, scale: 0.5 }, { segment: 2, topK: 4, group: 1, causal, summaries });
      const ref = topkRef(Float64Array.from(q.dataSync()), sa, d, 2, 4, 1, causal, 0.5);
      expect(Array.from(got.dataSync())).toEqual(ref.idx);
      expect(Array.from(got.dataSync()).slice(16, 20)).toEqual(causal ? [2, 0, 1, -1] : [0, 1, 2, 3]);
    }
  }));

  test('the whole selection equals segmentSelect over segmentScores on exact inputs (ties included)', () => dr.tidy(() => {
    // quarters and eighths, scale 1/2: every score is exact in float32, ties are true ties
    const d = { B: 2, Hq: 6, Hkv: 2, Sq: 50, Sk: 64, D: 12 };
    const quant = (x: Arr, den: number) => x.map((v) => Math.round(v * 2) / den);
    const q = dr.tensor(quant(input([2, 6, 50, 12], 131).data, 4), [2, 6, 50, 12], { dtype: 'float32' });
    const sum = dr.tensor(quant(input([2, 2, 16, 12], 132).data, 8), [2, 2, 16, 12], { dtype: 'float32' });
    const k = dr.zeros([2, 2, 64, 12]);
    for (const causal of [true, false])
      for (const g of [1, 3]) {
        const got = dr.selectSegments(q, k, { Sk: 64, scale: 0.5 }, { segment: 4, topK: 5, group: g, causal, summaries: sum });
        const sc = dr.segmentScores(q, k, { segment: 4, causal, scale: 0.5, summaries: sum });
        const want = causal ? dr.segmentSelect(sc, { topK: 5, groupHeads: g, segment: 4, keyLength: 64 }) : dr.segmentSelect(sc, { topK: 5, groupHeads: g, keepOwn: false });
        expect(Array.from(got.dataSync())).toEqual(Array.from(want.indices.dataSync()));
      }
  }));

  test('bad summaries get typed errors naming the argument', () => dr.tidy(() => {
    const d = { B: 1, Hq: 2, Hkv: 1, Sq: 8, Sk: 8, D: 4 };
    const { q, k, v } = qkv(d, 141, 'float32');
    expect(() => dr.segmentAttention(q.t, k.t, v.t, { segment: 3, topK: 2, summaries: dr.zeros([1, 1, 2, 4]) })).toThrow(dr.ShapeError);
    expect(() => dr.segmentAttention(q.t, k.t, v.t, { segment: 3, topK: 2, summaries: dr.zeros([1, 1, 3, 4]) })).not.toThrow();
    expect(() => dr.segmentAttention(q.t, k.t, v.t, { segment: 3, topK: 2, summaries: dr.zeros([1, 1, 3, 5]) })).toThrow(/segmentAttention: Expected summaries of shape \[1, 1, 3, 4\]/);
    expect(() => dr.segmentAttention(q.t, k.t, v.t, { segment: 3, topK: 2, summaries: dr.zeros([1, 1, 3, 4], { dtype: 'int32' }) })).toThrow(dr.DTypeError);
    expect(() => dr.selectSegments(q.t, k.t, { Sk: 8, scale: 1 }, { segment: 3, topK: 2, group: 1, causal: true, summaries: dr.zeros([1, 1, 3, 4], { dtype: 'bool' }), op: 'dualAttention' })).toThrow(/dualAttention: Expected float summaries/);
    // selectSegments checks its own arguments (it is exported)
    expect(() => dr.selectSegments(q.t, k.t, { Sk: 7, scale: 1 }, { segment: 3, topK: 2, group: 1, causal: true })).toThrow(/selectSegments: Expected Sk = 8/);
    expect(() => dr.selectSegments(q.t, k.t, { Sk: 8, scale: 1 }, { segment: 3, topK: 0, group: 1, causal: true })).toThrow(dr.ValueError);
    expect(() => dr.selectSegments(q.t, k.t, { Sk: 8, scale: 1 }, { segment: 3, topK: 2, group: 3, causal: true })).toThrow(/selectSegments: Expected group/);
    expect(() => dr.selectSegments(q.t, dr.cast(k.t, 'float64'), { Sk: 8, scale: 1 }, { segment: 3, topK: 2, group: 1, causal: true })).toThrow(dr.DTypeError);
    // the op checks the summaries' dtype and shape itself
    const { op } = require('../../lib/native');
    const idx = dr.empty([1, 2, 8, 2], 'int32');
    expect(() => op.segmentTopk({ indices: idx, q: q.t, summaries: dr.zeros([1, 1, 3, 4], { dtype: 'float64' }), scale: 1, group: 1, causal: true, segment: 3, keyLength: 8 })).toThrow(/segmentTopk.*summaries/);
    expect(() => op.segmentTopk({ indices: idx, q: q.t, summaries: dr.zeros([1, 1, 4, 4]), scale: 1, group: 1, causal: true, segment: 3, keyLength: 8 })).toThrow(/segmentTopk.*summaries has 4/);
    expect(() => op.segmentTopk({ indices: idx, q: q.t, summaries: dr.zeros([1, 1, 3, 4]), scale: 1, group: 3, causal: true, segment: 3, keyLength: 8 })).toThrow(/segmentTopk: group/);
    expect(() => op.segmentTopk({ indices: dr.empty([1, 2, 8, 2]), q: q.t, summaries: dr.zeros([1, 1, 3, 4]), scale: 1, group: 1, causal: true, segment: 3, keyLength: 8 })).toThrow(/segmentTopk.*indices/);
  }));
});

describe('segmentAttention', () => {
  const cases: [string, Dims, number, number][] = [
    ['G1 odd', { B: 2, Hq: 2, Hkv: 2, Sq: 37, Sk: 37, D: 5 }, 7, 3],
    ['G3 Sq<Sk', { B: 1, Hq: 3, Hkv: 1, Sq: 19, Sk: 45, D: 8 }, 6, 4],
    ['G8 D64', { B: 1, Hq: 8, Hkv: 1, Sq: 70, Sk: 70, D: 64 }, 16, 2],
    ['segment 1', { B: 1, Hq: 1, Hkv: 1, Sq: 9, Sk: 9, D: 3 }, 1, 5],
    ['segment >= S', { B: 1, Hq: 2, Hkv: 1, Sq: 11, Sk: 11, D: 4 }, 32, 2],
    ['Sq 1 decode', { B: 2, Hq: 4, Hkv: 2, Sq: 1, Sk: 33, D: 32 }, 8, 3],
    ['large tile', { B: 1, Hq: 2, Hkv: 1, Sq: 150, Sk: 150, D: 16 }, 70, 2],
  ];
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[])
    for (const [tag, d, seg, K] of cases)
      for (const causal of [true, false])
        test(`${dtype} ${tag} causal ${causal}: caller's indices (with -1, repeats, future segments)`, () => dr.tidy(() => {
          const { q, k, v } = qkv(d, 41, dtype);
          const ns = Math.ceil(d.Sk / seg);
          const ia = randomIndices(d, ns, K, 5);
          const indices = dr.tensor(ia, [d.B, d.Hq, d.Sq, K], { dtype: 'int32' });
          const r = dr.segmentAttention(q.t, k.t, v.t, { segment: seg, causal, indices, returnIndices: true });
          const ref = attnRef(q.data, k.data, v.data, d, ia, K, seg, causal, 1 / Math.sqrt(d.D));
          expectClose(r.out, ref.out, dtype, tolScale(dtype));
          const lse = r.lse.dataSync();
          ref.lse.forEach((x, i) => {
            if (x === -Infinity) expect(lse[i]).toBe(-Infinity);
            else expect(Math.abs(lse[i] - x)).toBeLessThan(dtype === 'bfloat16' ? 0.05 : 1e-4);
          });
        }));

  for (const [tag, d, seg, K] of cases)
    test(`float64 ${tag}: the whole pipeline (scores, selection, attention)`, () => dr.tidy(() => {
      const { q, k, v } = qkv(d, 51, 'float64');
      const ns = Math.ceil(d.Sk / seg);
      const scale = 1 / Math.sqrt(d.D);
      const r = dr.segmentAttention(q.t, k.t, v.t, { segment: seg, topK: K, returnIndices: true });
      const sel = selectRef(scoresRef(q.data, k.data, d, seg, true, scale), d, ns, K, 1, seg, true);
      expect(Array.from(r.indices.dataSync())).toEqual(sel.idx);
      expectClose(r.out, attnRef(q.data, k.data, v.data, d, sel.idx, K, seg, true, scale).out, 'float64');
      // groupHeads: the heads of a kv head read one set of segments
      const G = d.Hq / d.Hkv;
      const rg = dr.segmentAttention(q.t, k.t, v.t, { segment: seg, topK: K, groupHeads: true, returnIndices: true });
      const selg = selectRef(scoresRef(q.data, k.data, d, seg, true, scale), d, ns, K, G, seg, true);
      expect(Array.from(rg.indices.dataSync())).toEqual(selg.idx);
      expectClose(rg.out, attnRef(q.data, k.data, v.data, d, selg.idx, K, seg, true, scale).out, 'float64');
    }));

  for (const dtype of ['float32', 'bfloat16'] as dr.DType[])
    for (const [S, Sq, seg, Hq, Hkv] of [[45, 45, 7, 3, 1], [64, 20, 16, 2, 2], [9, 9, 20, 1, 1]])
      test(`${dtype} S ${S} Sq ${Sq} segment ${seg}: topK * segment >= Sk equals causal global attention`, () => dr.tidy(() => {
        const d = { B: 2, Hq, Hkv, Sq, Sk: S, D: 16 };
        const { q, k, v } = qkv(d, 61, dtype);
        const topK = Math.ceil(S / seg);
        const got = dr.segmentAttention(q.t, k.t, v.t, { segment: seg, topK });
        const want = dr.globalAttention(q.t, k.t, v.t, { causal: true });
        expectClose(got, Float64Array.from(want.dataSync()), dtype, tolScale(dtype));
      }));

  // the online softmax keeps each row's running max, sum and rescale in vectors of rows (their
  // reductions batched over rows): scores over a wide range whose max grows from segment to
  // segment (later keys scaled up), with many rows per segment (several vectors of rows per
  // tile), overflow or lose rows if a row's max or rescale lands in another row's lane
  for (const dtype of ['float32', 'float64'] as dr.DType[])
    test(`${dtype}: scores over a wide range, the max growing across segments`, () => dr.tidy(() => {
      const d = { B: 1, Hq: 2, Hkv: 1, Sq: 72, Sk: 72, D: 16 }, seg = 8, ns = 9;
      const q0 = input([1, 2, 72, 16], 101, 'float64', -6, 6).data;
      const k0 = input([1, 1, 72, 16], 102, 'float64', -2, 2).data.map((x, e) => x * (1 + 3 * Math.floor(e / 16 / seg)));
      const v0 = input([1, 1, 72, 16], 103, 'float64').data;
      const [q, k, v] = [[q0, [1, 2, 72, 16]], [k0, [1, 1, 72, 16]], [v0, [1, 1, 72, 16]]].map(([x, sh]) => dr.tensor(x as Float64Array, sh as number[], { dtype }));
      const qd = Float64Array.from(q.dataSync()), kd = Float64Array.from(k.dataSync()), vd = Float64Array.from(v.dataSync());
      // every row lists every segment, in a row-dependent order (some twice)
      const K = ns + 2;
      const ia = new Int32Array(2 * 72 * K);
      for (let r = 0; r < 2 * 72; ++r) for (let x = 0; x < K; ++x) ia[r * K + x] = (x * 5 + r) % ns;
      const indices = dr.tensor(ia, [1, 2, 72, K], { dtype: 'int32' });
      for (const causal of [true, false]) {
        const r = dr.segmentAttention(q, k, v, { segment: seg, causal, indices, returnIndices: true });
        const ref = attnRef(qd, kd, vd, d, ia, K, seg, causal, 1 / Math.sqrt(d.D));
        expectClose(r.out, ref.out, dtype, 4);
        const lse = r.lse.dataSync();
        ref.lse.forEach((x, i) => expect(Math.abs(lse[i] - x)).toBeLessThan(1e-4 * Math.max(1, Math.abs(x))));
      }
    }));

  test('gradients to q, k, v (float64, caller\'s indices, GQA 3)', () => dr.tidy(() => {
    const d = { B: 1, Hq: 3, Hkv: 1, Sq: 10, Sk: 13, D: 3 };
    const { q, k, v } = qkv(d, 71, 'float64');
    const indices = dr.tensor(randomIndices(d, 5, 3, 9), [1, 3, 10, 3], { dtype: 'int32' });
    const w = input([1, 3, 10, 3], 72, 'float64').t;
    expect(dr.gradcheck((a, b, c) => dr.segmentAttention(a, b, c, { segment: 3, indices }).mul(w), [q.t.requiresGrad_(), k.t.requiresGrad_(), v.t.requiresGrad_()]).ok).toBe(true);
    expect(dr.gradcheck((a, b, c) => dr.segmentAttention(a, b, c, { segment: 3, indices, causal: false }).mul(w), [q.t, k.t, v.t]).ok).toBe(true);
  }));

  // segment 7: chunks of 7 keys (the packed products); 8 and 96 (64 + 32 keys): whole groups of 4
  // keys, which the direct form (q, dout and dq rows in place) takes, over several tiles of rows
  for (const [D, S, seg, ns, K] of [[16, 40, 7, 6, 3], [16, 80, 8, 10, 3], [64, 200, 96, 3, 2]])
    test(`float32 gradients match the float64 reference gradients: D ${D} S ${S} segment ${seg} top ${K}`, () => dr.tidy(() => {
      const d = { B: 2, Hq: 4, Hkv: 2, Sq: S, Sk: S, D };
      const { q, k, v } = qkv(d, 81, 'float32');
      const indices = dr.tensor(randomIndices(d, ns, K, 4), [2, 4, S, K], { dtype: 'int32' });
      const grads = (dtype: dr.DType) => {
        const [a, b, c] = [q.t, k.t, v.t].map((t) => dr.cast(t, dtype).requiresGrad_());
        dr.segmentAttention(a, b, c, { segment: seg, indices }).square().sum().backward();
        return [a, b, c].map((t) => Float64Array.from(t.grad!.dataSync()));
      };
      const g32 = grads('float32'), g64 = grads('float64');
      g32.forEach((g, i) => expectClose(g, g64[i], 'float32', 10));
    }));

  test('an infinite key: float32 gradients are NaN exactly where float64 ones are, and close elsewhere', () => dr.tidy(() => {
    // segment 96 = chunks of 64 and 32 keys; the infinity (key 150, in the second chunk of
    // segment 1) sends that chunk through the masked products while the tile's other chunks
    // take the direct form
    const d = { B: 1, Hq: 2, Hkv: 1, Sq: 200, Sk: 200, D: 16 };
    const { q, k, v } = qkv(d, 83, 'float64');
    const kd = Float64Array.from(k.t.dataSync());
    for (let e = 0; e < d.D; e += 5) kd[150 * d.D + e] = e % 2 ? -Infinity : Infinity;
    const kinf = dr.tensor(kd, [1, 1, 200, 16], { dtype: 'float64' });
    const indices = dr.tensor(randomIndices(d, 3, 2, 9), [1, 2, 200, 2], { dtype: 'int32' });
    const grads = (dtype: dr.DType) => {
      const [a, b, c] = [q.t, kinf, v.t].map((t) => dr.cast(t, dtype).requiresGrad_());
      dr.segmentAttention(a, b, c, { segment: 96, indices }).sum().backward();
      return [a, b, c].map((t) => Float64Array.from(t.grad!.dataSync()));
    };
    const g32 = grads('float32'), g64 = grads('float64');
    let nan = 0;
    g32.forEach((g, i) => {
      const w = g64[i];
      const finite: number[] = [];
      for (let e = 0; e < w.length; ++e) {
        if (Number.isFinite(w[e])) finite.push(e);
        else if (Number.isNaN(w[e])) { expect(Number.isNaN(g[e])).toBe(true); ++nan; }
        else expect(g[e]).toBe(w[e]);
      }
      expectClose(finite.map((e) => g[e]), finite.map((e) => w[e]), 'float32', 10);
    });
    expect(nan).toBeGreaterThan(0);
  }));

  test('bad options get typed errors naming the argument', () => dr.tidy(() => {
    const d = { B: 1, Hq: 2, Hkv: 1, Sq: 8, Sk: 8, D: 4 };
    const { q, k, v } = qkv(d, 91, 'float32');
    expect(() => dr.segmentAttention(q.t, k.t, v.t, { segment: 0, topK: 2 })).toThrow(/segment >= 1/);
    expect(() => dr.segmentAttention(q.t, k.t, v.t, { segment: 3, topK: 0 })).toThrow(/topK >= 1/);
    expect(() => dr.segmentAttention(q.t, k.t, v.t, { segment: 3, topK: 1, groupHeads: 3 })).toThrow(/groupHeads/);
    expect(() => dr.segmentAttention(q.t, k.t, v.t, { segment: 3, indices: dr.zeros([1, 2, 8], { dtype: 'int32' }) })).toThrow(dr.ShapeError);
    const bad = dr.full([1, 2, 8, 2], 3, { dtype: 'int32' });
    expect(() => dr.segmentAttention(q.t, k.t, v.t, { segment: 3, indices: bad }).dataSync()).toThrow(/indices\[0, 0, 0, 0\] = 3 is outside \[-1, 3\)/);
    expect(() => dr.segmentSelect(dr.zeros([1, 1, 4, 3]), { topK: 1 })).toThrow(/segment/);
    expect(() => dr.segmentMean(dr.zeros([3, 4]), 0)).toThrow(dr.ValueError);
  }));
});

describe('compressedAttention', () => {
  test('causal: a prefix gives the rows of the whole sequence (a short last segment is seen by no query)', () => {
    dr.tidy(() => {
      const [B, H, S, D, seg] = [1, 2, 11, 4, 3];
      const mk = (sd: number) => dr.tensor(randArray(B * H * S * D, sd, -1, 1), [B, H, S, D], { dtype: 'float64' });
      const q = mk(61), k = mk(62), v = mk(63);
      const full = dr.compressedAttention(q, k, v, { segment: seg });
      for (const p of [1, 3, 5, 7, 10]) {
        const cut = (t: dr.Tensor) => dr.narrow(t, 2, 0, p);
        expect(Array.from(dr.compressedAttention(cut(q), cut(k), cut(v), { segment: seg }).dataSync())).toEqual(Array.from(cut(full).contiguous().dataSync()));
      }
    });
  });

  // softmax over the whole segments a query has passed (all of them when not causal)
  function ref(q: Arr, k: Arr, v: Arr, d: Dims, seg: number, causal: boolean): Arr {
    const ns = Math.ceil(d.Sk / seg), G = d.Hq / d.Hkv, scale = 1 / Math.sqrt(d.D);
    const kb = meanRef(k, d.B * d.Hkv, d.Sk, d.D, seg), vb = meanRef(v, d.B * d.Hkv, d.Sk, d.D, seg);
    const out = new Float64Array(d.B * d.Hq * d.Sq * d.D);
    for (let b = 0; b < d.B; ++b)
      for (let h = 0; h < d.Hq; ++h)
        for (let i = 0; i < d.Sq; ++i) {
          const r = (b * d.Hq + h) * d.Sq + i, p = i + d.Sk - d.Sq, kv = b * d.Hkv + Math.floor(h / G);
          const vis = Array.from({ length: ns }, (_, s) => s).filter((s) => !causal || (s + 1) * seg - 1 <= p);
          if (!vis.length) continue;
          const sc = vis.map((s) => {
            let a = 0;
            for (let x = 0; x < d.D; ++x) a += q[r * d.D + x] * kb[(kv * ns + s) * d.D + x];
            return a * scale;
          });
          const m = Math.max(...sc), e = sc.map((x) => Math.exp(x - m)), z = e.reduce((a, c) => a + c, 0);
          vis.forEach((s, n) => {
            for (let x = 0; x < d.D; ++x) out[r * d.D + x] += (e[n] / z) * vb[(kv * ns + s) * d.D + x];
          });
        }
    return out;
  }
  for (const [d, seg] of [[{ B: 2, Hq: 3, Hkv: 1, Sq: 17, Sk: 17, D: 4 }, 5], [{ B: 1, Hq: 2, Hkv: 2, Sq: 6, Sk: 14, D: 3 }, 4], [{ B: 1, Hq: 1, Hkv: 1, Sq: 5, Sk: 5, D: 2 }, 8]] as [Dims, number][])
    for (const causal of [true, false])
      test(`H${d.Hq}/${d.Hkv} Sq${d.Sq} Sk${d.Sk} segment ${seg} causal ${causal}`, () => dr.tidy(() => {
        const { q, k, v } = qkv(d, 101, 'float64');
        expectClose(dr.compressedAttention(q.t, k.t, v.t, { segment: seg, causal }), ref(q.data, k.data, v.data, d, seg, causal), 'float64');
        const w = input([d.B, d.Hq, d.Sq, d.D], 102, 'float64').t;
        expect(dr.gradcheck((a, b, c) => dr.compressedAttention(a, b, c, { segment: seg, causal }).mul(w), [q.t.requiresGrad_(), k.t.requiresGrad_(), v.t.requiresGrad_()]).ok).toBe(true);
      }));
});

describe('SegmentKVCache (decode)', () => {
  for (const dtype of ['float64', 'float32', 'bfloat16'] as dr.DType[])
    for (const [Hq, Hkv, seg, topK, S, chunk] of [[2, 1, 4, 2, 23, 1], [3, 3, 5, 3, 17, 1], [4, 2, 8, 2, 30, 3], [1, 1, 64, 1, 9, 1]])
      test(`${dtype} H${Hq}/${Hkv} segment ${seg} topK ${topK}: token-by-token decode equals the full-sequence call (appends of ${chunk})`, () => dr.tidy(() => {
        const d = { B: 2, Hq, Hkv, Sq: S, Sk: S, D: 8 };
        const { q, k, v } = qkv(d, 111, dtype);
        const full = dr.segmentAttention(q.t, k.t, v.t, { segment: seg, topK, groupHeads: Hq > Hkv });
        const cache = new dr.SegmentKVCache({ batch: 2, heads: Hkv, headDim: 8, segment: seg, capacity: S + 5, dtype });
        const want = full.dataSync();
        const got = new Float64Array(want.length);
        for (let t0 = 0; t0 < S; t0 += chunk) {
          const n = Math.min(chunk, S - t0);
          cache.append(dr.narrow(k.t, 2, t0, n), dr.narrow(v.t, 2, t0, n));
          const o = cache.attend(dr.narrow(q.t, 2, t0, n), { topK, groupHeads: Hq > Hkv }).dataSync();
          for (let b = 0; b < 2; ++b)
            for (let h = 0; h < Hq; ++h)
              for (let i = 0; i < n; ++i)
                for (let x = 0; x < 8; ++x) got[(((b * Hq + h) * S) + t0 + i) * 8 + x] = o[(((b * Hq + h) * n) + i) * 8 + x];
        }
        expect(cache.length).toBe(S);
        if (dtype === 'float64') expect(Array.from(got)).toEqual(Array.from(want));
        else expectClose(got, Float64Array.from(want), dtype);
        expect(() => cache.append(dr.narrow(k.t, 2, 0, 6), dr.narrow(v.t, 2, 0, 6))).toThrow(dr.OutOfRangeError);
        cache.dispose();
      }));
});

describe('dualAttention with a segment-routed global path', () => {
  const d = { B: 2, Hq: 4, Hkv: 2, Sq: 29, Sk: 29, D: 8 };
  test('equals g_local * localAttention + g_global * segmentAttention (float64), per-row and per-head gates', () => dr.tidy(() => {
    const { q, k, v } = qkv(d, 121, 'float64');
    for (const perHead of [false, true]) {
      const g = input(perHead ? [2, 4, 29, 2] : [2, 29, 2], 122, 'float64', 0, 1).t;
      const got = dr.dualAttention(q.t, k.t, v.t, { window: 5, causal: true, gates: g, segment: { segment: 4, topK: 3 } });
      const l = dr.localAttention(q.t, k.t, v.t, { window: 5, causal: true }).dataSync();
      const s = dr.segmentAttention(q.t, k.t, v.t, { segment: 4, topK: 3 }).dataSync();
      const gd = g.dataSync();
      const want = new Float64Array(l.length);
      for (let e = 0; e < want.length; ++e) {
        const x = e % 8, i = Math.floor(e / 8) % 29, h = Math.floor(e / 8 / 29) % 4, b = Math.floor(e / 8 / 29 / 4);
        const gi = perHead ? ((b * 4 + h) * 29 + i) * 2 : (b * 29 + i) * 2;
        void x;
        want[e] = gd[gi] * l[e] + gd[gi + 1] * s[e];
      }
      expectClose(got, want, 'float64');
    }
  }));
  test('with every segment kept it equals the fused dual attention (float32)', () => dr.tidy(() => {
    const { q, k, v } = qkv(d, 131, 'float32');
    const g = input([2, 29, 2], 132, 'float32', 0, 1).t;
    const got = dr.dualAttention(q.t, k.t, v.t, { window: 5, causal: true, gates: g, segment: { segment: 4, topK: 8 } });
    const want = dr.dualAttention(q.t, k.t, v.t, { window: 5, causal: true, gates: g });
    expectClose(got, Float64Array.from(want.dataSync()), 'float32');
  }));
  test('gradients to q, k, v and the gates (float64)', () => dr.tidy(() => {
    const e = { B: 1, Hq: 2, Hkv: 1, Sq: 9, Sk: 9, D: 3 };
    const { q, k, v } = qkv(e, 141, 'float64');
    const g = input([1, 9, 2], 142, 'float64', 0, 1).t;
    const w = input([1, 2, 9, 3], 143, 'float64').t;
    const fn = (a: dr.Tensor, b: dr.Tensor, c: dr.Tensor, gg: dr.Tensor) => dr.dualAttention(a, b, c, { window: 3, causal: true, gates: gg, segment: { segment: 2, topK: 2 } }).mul(w);
    expect(dr.gradcheck(fn, [q.t.requiresGrad_(), k.t.requiresGrad_(), v.t.requiresGrad_(), g.requiresGrad_()]).ok).toBe(true);
  }));

  // The definition, in float64 plain loops: per row, the local window's softmax (sliding:
  // p - w < j <= p causal, |p - j| < w not; block: floor(j / w) == floor(p / w), and j <= p when
  // causal) and the softmax over the keys of the row's kept segments (cut at p when causal),
  // mixed as g_local * local + g_global * global; lse of each path, -inf for a path with no key.
  function dualRef(q: Arr, k: Arr, v: Arr, d: Dims, idx: ArrayLike<number>, K: number, seg: number, causal: boolean,
                   mode: 'sliding' | 'block', w: number, gates: Arr, perHead: boolean): { out: Arr; lse: Arr } {
    const G = d.Hq / d.Hkv, scale = 1 / Math.sqrt(d.D), rows = d.B * d.Hq * d.Sq;
    const out = new Float64Array(rows * d.D), lse = new Float64Array(2 * rows);
    for (let b = 0; b < d.B; ++b)
      for (let h = 0; h < d.Hq; ++h)
        for (let i = 0; i < d.Sq; ++i) {
          const r = (b * d.Hq + h) * d.Sq + i, p = i + d.Sk - d.Sq, kv = b * d.Hkv + Math.floor(h / G);
          const local: number[] = [];
          for (let j = 0; j < d.Sk; ++j) {
            const vis = mode === 'sliding' ? (causal ? p - w < j && j <= p : Math.abs(p - j) < w) : Math.floor(j / w) === Math.floor(p / w) && (!causal || j <= p);
            if (vis) local.push(j);
          }
          const segs = new Set<number>();
          for (let x = 0; x < K; ++x) if (idx[r * K + x] >= 0) segs.add(idx[r * K + x]);
          const glob: number[] = [];
          for (const s of segs) for (let j = s * seg; j < Math.min(d.Sk, (s + 1) * seg); ++j) if (!causal || j <= p) glob.push(j);
          const gi = (perHead ? r : b * d.Sq + i) * 2;
          [local, glob].forEach((keys, path) => {
            if (!keys.length) {
              lse[path * rows + r] = -Infinity;
              return;
            }
            const sc = keys.map((j) => {
              let a = 0;
              for (let x = 0; x < d.D; ++x) a += q[r * d.D + x] * k[(kv * d.Sk + j) * d.D + x];
              return scale * a;
            });
            const m = Math.max(...sc);
            const z = sc.reduce((a, c) => a + Math.exp(c - m), 0);
            lse[path * rows + r] = m + Math.log(z);
            keys.forEach((j, n) => {
              const pj = Math.exp(sc[n] - m) / z;
              for (let x = 0; x < d.D; ++x) out[r * d.D + x] += gates[gi + path] * pj * v[(kv * d.Sk + j) * d.D + x];
            });
          });
        }
    return { out, lse };
  }

  // tag, dims, segment, topK, groupHeads, window, mode, per-head gates
  const cases: [string, Dims, number, number, boolean | number, number, 'sliding' | 'block', boolean][] = [
    ['Sq 1 decode', { B: 2, Hq: 4, Hkv: 2, Sq: 1, Sk: 33, D: 32 }, 8, 3, false, 5, 'sliding', false],
    ['odd G1', { B: 2, Hq: 2, Hkv: 2, Sq: 37, Sk: 37, D: 5 }, 7, 3, false, 4, 'block', true],
    ['G3 Sk > Sq window 1', { B: 1, Hq: 3, Hkv: 1, Sq: 19, Sk: 45, D: 8 }, 6, 4, true, 1, 'sliding', false],
    ['G8 D64', { B: 1, Hq: 8, Hkv: 1, Sq: 70, Sk: 70, D: 64 }, 16, 2, 2, 9, 'block', true],
    ['segment >= S', { B: 1, Hq: 2, Hkv: 1, Sq: 11, Sk: 11, D: 4 }, 32, 2, false, 3, 'sliding', true],
    ['topK >= segments, block window 1', { B: 1, Hq: 2, Hkv: 1, Sq: 13, Sk: 20, D: 6 }, 3, 9, false, 1, 'block', false],
    ['large tile', { B: 1, Hq: 2, Hkv: 1, Sq: 150, Sk: 150, D: 16 }, 70, 2, false, 20, 'sliding', true],
  ];
  for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[])
    for (const [tag, e, seg, K, gh, W, mode, perHead] of cases)
      for (const causal of [true, false])
        test(`${dtype} ${tag} ${mode} causal ${causal}: the one-pass kernel against the float64 definition`, () => dr.tidy(() => {
          const { q, k, v } = qkv(e, 161, dtype);
          const g = input(perHead ? [e.B, e.Hq, e.Sq, 2] : [e.B, e.Sq, 2], 162, dtype, -1.5, 1.5);
          const segment = { segment: seg, topK: K, groupHeads: gh };
          const r = dr.dualAttention(q.t, k.t, v.t, { window: W, mode, causal, gates: g.t, segment, returnLse: true });
          // the selection is segmentAttention's (tested above); the attention is checked here
          const idx = dr.segmentAttention(q.t, k.t, v.t, { segment: seg, topK: K, groupHeads: gh, causal, returnIndices: true }).indices.dataSync();
          const ref = dualRef(q.data, k.data, v.data, e, idx, K, seg, causal, mode, W, g.data, perHead);
          expectClose(r.out, ref.out, dtype, tolScale(dtype));
          expect(r.lse.shape).toEqual([2, e.B, e.Hq, e.Sq]);
          const lse = r.lse.dataSync();
          ref.lse.forEach((x, i) => {
            if (x === -Infinity) expect(lse[i]).toBe(-Infinity);
            else expect(Math.abs(lse[i] - x)).toBeLessThan(dtype === 'bfloat16' ? 0.05 : 1e-4);
          });
        }));

  for (const [mode, causal, perHead, Hkv] of [['sliding', true, false, 1], ['block', false, true, 2], ['block', true, false, 2], ['sliding', false, true, 1]] as const)
    test(`float64 gradcheck of q, k, v and the gates: ${mode} causal ${causal} ${perHead ? 'per-head' : 'shared'} gates, GQA ${4 / Hkv}`, () => dr.tidy(() => {
      const e = { B: 2, Hq: 4, Hkv, Sq: 7, Sk: 10, D: 3 };
      const { q, k, v } = qkv(e, 171, 'float64');
      const g = input(perHead ? [2, 4, 7, 2] : [2, 7, 2], 172, 'float64', -1.5, 1.5).t;
      const w = input([2, 4, 7, 3], 173, 'float64').t;
      const fn = (a: dr.Tensor, b: dr.Tensor, c: dr.Tensor, gg: dr.Tensor) =>
        dr.dualAttention(a, b, c, { window: 3, mode, causal, gates: gg, segment: { segment: 3, topK: 2 } }).mul(w);
      expect(dr.gradcheck(fn, [q.t.requiresGrad_(), k.t.requiresGrad_(), v.t.requiresGrad_(), g.requiresGrad_()]).ok).toBe(true);
    }));

  test('float32 and bfloat16 gradients match the float64 ones (every segment kept: one selection for all dtypes)', () => dr.tidy(() => {
    const e = { B: 2, Hq: 4, Hkv: 2, Sq: 40, Sk: 45, D: 16 };
    const { q, k, v } = qkv(e, 181, 'float64');
    const g = input([2, 40, 2], 182, 'float64', -1.5, 1.5).t;
    const grads = (dtype: dr.DType) => {
      const [a, b, c, gg] = [q.t, k.t, v.t, g].map((t) => dr.cast(t, dtype).requiresGrad_());
      dr.dualAttention(a, b, c, { window: 6, mode: 'sliding', causal: true, gates: gg, segment: { segment: 7, topK: 7 } }).square().sum().backward();
      return [a, b, c, gg].map((t) => Float64Array.from(t.grad!.dataSync()));
    };
    const g64 = grads('float64'), g32 = grads('float32'), g16 = grads('bfloat16');
    g32.forEach((x, i) => expectClose(x, g64[i], 'float32', 10));
    // bfloat16 rounds the inputs: compare relative to each gradient's largest element
    g16.forEach((x, i) => {
      const mx = Math.max(...g64[i].map(Math.abs));
      x.forEach((y, j) => expect(Math.abs(y - g64[i][j])).toBeLessThan(0.08 * mx));
    });
  }));

  test('the backward is deterministic (same bits on a rerun)', () => dr.tidy(() => {
    const e = { B: 1, Hq: 6, Hkv: 2, Sq: 50, Sk: 50, D: 8 };
    const { q, k, v } = qkv(e, 191, 'float32');
    const g = input([1, 50, 2], 192, 'float32').t;
    const run = () => {
      const [a, b, c, gg] = [q.t, k.t, v.t, g].map((t) => dr.cast(t, 'float32').requiresGrad_());
      dr.dualAttention(a, b, c, { window: 5, causal: true, gates: gg, segment: { segment: 8, topK: 3 } }).square().sum().backward();
      return [a, b, c, gg].map((t) => Array.from(t.grad!.dataSync()));
    };
    expect(run()).toEqual(run());
  }));

  test('queryIndex and keyPaddingMask are refused with the segment path', () => dr.tidy(() => {
    const { q, k, v } = qkv(d, 151, 'float32');
    const g = input([2, 29, 2], 152, 'float32', 0, 1).t;
    expect(() => dr.dualAttention(q.t, k.t, v.t, { window: 5, gates: g, segment: { segment: 4, topK: 2 }, queryIndex: dr.zeros([2, 3], { dtype: 'int32' }) })).toThrow(dr.ValueError);
    expect(() => dr.dualAttention(q.t, k.t, v.t, { window: 5, gates: g, segment: { segment: 0, topK: 2 } })).toThrow(/segment >= 1/);
  }));
});
