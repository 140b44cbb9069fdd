// randomRoute, hashRoute, ruleRoute and layerDrop against references written from their
// definitions: an independent Philox4x32-10 in BigInt arithmetic (checked against Random123's
// known answers), plain-loop table lookups; frequencies of the draws with chi-square bounds at a
// small false-alarm rate (and a check that a wrong distribution is rejected, so the bound can
// fail); gradients; typed errors. CPU-vs-CUDA agreement: test/backends.ts and, when a GPU is
// present, the last describe block here.
import * as dr from '../../lib';
import { expectClose, expectReadFails, input } from '../helpers';

// ---- reference Philox4x32-10 (Salmon et al., SC'11), 4-word counter, 2-word key -------------
const M32 = 0xffffffffn;
function philoxBlock(ctr: [number, number, number, number], key: [number, number]): number[] {
  let [c0, c1, c2, c3] = ctr.map(BigInt);
  let [k0, k1] = key.map(BigInt);
  for (let r = 0; r < 10; ++r) {
    const p0 = 0xd2511f53n * c0, p1 = 0xcd9e8d57n * c2;
    const hi0 = p0 >> 32n, lo0 = p0 & M32, hi1 = p1 >> 32n, lo1 = p1 & M32;
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) & M32, lo1, (hi0 ^ c3 ^ k1) & M32, lo0];
    k0 = (k0 + 0x9e3779b9n) & M32;
    k1 = (k1 + 0xbb67ae85n) & M32;
  }
  return [c0, c1, c2, c3].map(Number);
}
/** The library's layout: counter = (index / 4) as a 64-bit number, key = seed; lane index % 4. */
const block = (seed: number, counter: number) =>
  philoxBlock([counter % 2 ** 32, Math.floor(counter / 2 ** 32), 0, 0], [seed % 2 ** 32, Math.floor(seed / 2 ** 32)]);
const philoxU32 = (seed: number, index: number) => block(seed, Math.floor(index / 4))[index % 4];

// ---- chi-square: statistic and survival function (regularised upper incomplete gamma) ----------
function chi2Stat(counts: number[], probs: number[], n: number): { stat: number; df: number } {
  let stat = 0, df = -1;
  counts.forEach((o, i) => {
    if (probs[i] === 0) {
      if (o !== 0) stat = Infinity; // a path of probability 0 was drawn
      return;
    }
    stat += (o - n * probs[i]) ** 2 / (n * probs[i]);
    ++df;
  });
  return { stat, df };
}
function lnGammaHalf(a: number): number { // a a positive multiple of 1/2
  let v = Number.isInteger(a) ? 0 : 0.5 * Math.log(Math.PI);
  for (let x = Number.isInteger(a) ? 1 : 0.5; x < a; x += 1) v += Math.log(x);
  return v;
}
/** P(chi2_df > x): 1 - P(df/2, x/2), the lower series (converges for any x; used for x up to ~100s). */
function chi2Sf(x: number, df: number): number {
  if (!Number.isFinite(x)) return 0;
  const a = df / 2, z = x / 2;
  let term = 1 / a, sum = term;
  for (let n = 1; n < 10000 && term > sum * 1e-17; ++n) {
    term *= z / (a + n);
    sum += term;
  }
  return Math.max(0, 1 - Math.exp(a * Math.log(z) - z - lnGammaHalf(a) + Math.log(sum)));
}
// Per-test false-alarm rate: the tests below make ~40 such checks, so a correct kernel fails one
// with probability < 40 * 1e-6.
const ALPHA = 1e-6;

// ---- reference thresholds and draws ---------------------------------------------------------
function refRoutes(probs: number[], seed: number, offset: number, T: number): number[] {
  const total = probs.reduce((a, b) => a + b, 0);
  const ends: number[] = []; // path p covers u in [ends[p-1], ends[p]) of [0, 2^31)
  let cum = 0;
  probs.forEach((p, i) => {
    cum += p;
    ends.push(i === probs.length - 1 ? 2 ** 31 : Math.round((cum / total) * 2 ** 31));
  });
  const out: number[] = [];
  for (let t = 0; t < T; ++t) {
    const u = Math.floor(philoxU32(seed, offset + t) / 2);
    let p = 0;
    while (u >= ends[p]) ++p;
    out.push(p);
  }
  return out;
}
const countsOf = (route: ArrayLike<number>, P: number) => {
  const c = new Array(P).fill(0);
  for (const r of Array.from(route)) c[r]++;
  return c;
};

describe('reference Philox', () => {
  test('matches Random123 known answers', () => {
    expect(philoxBlock([0, 0, 0, 0], [0, 0])).toEqual([0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    expect(philoxBlock([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]))
      .toEqual([0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]);
  });
  test('matches the library\'s rand() (same layout: element i is stream index offset + i)', () => {
    dr.tidy(() => {
      const g = new dr.Generator(77);
      g.take(8);
      const u = dr.rand([9], { generator: g, dtype: 'float64' }).dataSync();
      expect(Array.from(u)).toEqual(Array.from({ length: 9 }, (_, i) => Math.floor(philoxU32(77, 8 + i) / 256) / 2 ** 24));
    });
  });
});

describe('randomRoute', () => {
  test('draws match the reference bit for bit (seeds, generator offsets, awkward T, zero-probability paths)', () => {
    dr.tidy(() => {
      const dists = [[0.7, 0.3], [1], [0.1, 0.25, 0, 0.4, 0.25], [0, 0, 1, 0], [0.5, 0.5, 0], Array.from({ length: 37 }, (_, i) => (i + 1) / 703)];
      for (const probs of dists)
        for (const T of [0, 1, 7, 1031]) {
          const r = dr.randomRoute(T, probs, { seed: 12345 });
          expect(r.route.dtype).toBe('int32');
          expect(r.route.shape).toEqual([T]);
          expect(Array.from(r.route.dataSync())).toEqual(refRoutes(probs, 12345, 0, T));
          const g = new dr.Generator(2 ** 40 + 3);
          g.take(13); // offset 16
          const r2 = dr.randomRoute(T, probs, { generator: g });
          expect(Array.from(r2.route.dataSync())).toEqual(refRoutes(probs, 2 ** 40 + 3, 16, T));
          expect(g.offset).toBe(16 + Math.ceil(T / 4) * 4); // advances as rand([T]) does
        }
    });
  });

  test('weights: one-hot rows of the drawn route (float32, or the dtype asked for)', () => {
    dr.tidy(() => {
      const probs = [0.2, 0.3, 0.5];
      for (const dtype of ['float32', 'float64', 'bfloat16'] as dr.DType[]) {
        const r = dr.randomRoute(33, probs, { seed: 9, dtype });
        expect(r.weights.dtype).toBe(dtype);
        expect(r.weights.shape).toEqual([33, 3]);
        const route = Array.from(r.route.dataSync()), w = Array.from(r.weights.dataSync());
        expect(w).toEqual(route.flatMap((p) => [0, 1, 2].map((q) => (q === p ? 1 : 0))));
      }
    });
  });

  test('a fixed seed draws the same routes every call; a generator draws new ones; the default generator is used otherwise', () => {
    dr.tidy(() => {
      const a = dr.randomRoute(200, [0.5, 0.5], { seed: 4 }).route.dataSync();
      const b = dr.randomRoute(200, [0.5, 0.5], { seed: 4 }).route.dataSync();
      expect(Array.from(a)).toEqual(Array.from(b));
      const g = new dr.Generator(4);
      const c = dr.randomRoute(200, [0.5, 0.5], { generator: g }).route.dataSync();
      const d = dr.randomRoute(200, [0.5, 0.5], { generator: g }).route.dataSync();
      expect(Array.from(c)).toEqual(Array.from(a)); // offset 0 of seed 4
      expect(Array.from(d)).not.toEqual(Array.from(c));
      const before = dr.defaultGenerator.offset;
      dr.randomRoute(5, [0.5, 0.5]);
      expect(dr.defaultGenerator.offset).toBe(before + 8);
    });
  });

  test('eval: the expectation (weights = probs, route = the most probable path) or a fixed-seed draw', () => {
    dr.tidy(() => {
      const probs = [0.3, 0.45, 0.25];
      const g = new dr.Generator(1);
      const e = dr.randomRoute(5, probs, { training: false, generator: g });
      expect(Array.from(e.route.dataSync())).toEqual([1, 1, 1, 1, 1]);
      expectClose(e.weights, Array.from({ length: 5 }, () => probs).flat(), 'float32');
      expect(dr.randomRoute(2, [0.5, 0.5], { training: false }).route.dataSync()[0]).toBe(0); // ties: the lower path
      const f = dr.randomRoute(300, probs, { training: false, evalMode: 'fixed', evalSeed: 21, generator: g });
      expect(Array.from(f.route.dataSync())).toEqual(refRoutes(probs, 21, 0, 300));
      const f2 = dr.randomRoute(300, probs, { training: false, evalMode: 'fixed', seed: 21 });
      expect(Array.from(f2.route.dataSync())).toEqual(refRoutes(probs, 21, 0, 300));
      expect(g.offset).toBe(0); // eval never advances the generator
      expect(Array.from(dr.randomRoute(3, probs, { training: false, evalMode: 'fixed' }).route.dataSync())).toEqual(refRoutes(probs, 0, 0, 3));
    });
  });

  test('frequencies match the probabilities (chi-square at false-alarm rate 1e-6, several seeds)', () => {
    dr.tidy(() => {
      const T = 20000;
      for (const probs of [[0.7, 0.3], [0.1, 0.25, 0, 0.4, 0.25], Array.from({ length: 16 }, () => 1 / 16)])
        for (const seed of [0, 1, 2, 77, 2 ** 33 + 5]) {
          const counts = countsOf(dr.randomRoute(T, probs, { seed }).route.dataSync(), probs.length);
          const { stat, df } = chi2Stat(counts, probs, T);
          expect(chi2Sf(stat, df)).toBeGreaterThan(ALPHA);
        }
      // and with a generator: consecutive draws are fresh samples of the same distribution
      const g = new dr.Generator(3);
      for (let k = 0; k < 3; ++k) {
        const counts = countsOf(dr.randomRoute(T, [0.7, 0.3], { generator: g }).route.dataSync(), 2);
        expect(chi2Sf(chi2Stat(counts, [0.7, 0.3], T).stat, 1)).toBeGreaterThan(ALPHA);
      }
    });
  });

  test('the chi-square check rejects a wrong distribution (so the frequency tests can fail)', () => {
    dr.tidy(() => {
      const T = 20000;
      for (const seed of [0, 1, 2]) {
        const counts = countsOf(dr.randomRoute(T, [0.7, 0.3], { seed }).route.dataSync(), 2);
        expect(chi2Sf(chi2Stat(counts, [0.65, 0.35], T).stat, 1)).toBeLessThan(ALPHA);
        expect(chi2Sf(chi2Stat(counts, [0.3, 0.7], T).stat, 1)).toBeLessThan(ALPHA); // paths swapped
        // a path of probability 0 that shows up is rejected outright
        expect(chi2Stat([counts[0], counts[1], 1], [0.7, 0.3, 0], T).stat).toBe(Infinity);
      }
      // the survival function itself: known quantiles
      expect(chi2Sf(3.841458820694124, 1)).toBeCloseTo(0.05, 10);
      expect(chi2Sf(23.512742, 4)).toBeCloseTo(1e-4, 8);
      expect(chi2Sf(30.577914, 15)).toBeCloseTo(0.01, 7);
    });
  });

  test('bad options are typed errors naming the argument, the expected and the received value', () => {
    expect(() => dr.randomRoute(4, [0.5, 0.4])).toThrow(/randomRoute: Expected probs to sum to 1 .* but they sum to 0.9/);
    expect(() => dr.randomRoute(4, [1.2, -0.2])).toThrow(dr.ValueError);
    expect(() => dr.randomRoute(4, [1.2, -0.2])).toThrow(/probs\[1\] but received number -0.2/);
    expect(() => dr.randomRoute(4, [NaN, 1])).toThrow(/probs\[0\]/);
    expect(() => dr.randomRoute(4, [])).toThrow(dr.OutOfRangeError);
    expect(() => dr.randomRoute(4, [])).toThrow(/between 1 and 65536 probabilities .* received 0/);
    expect(() => dr.randomRoute(4, 'x' as unknown as number[])).toThrow(dr.ValueError);
    expect(() => dr.randomRoute(-1, [1])).toThrow(/integer T in \[0, 2147483647\] but received number -1/);
    expect(() => dr.randomRoute(1.5, [1])).toThrow(dr.OutOfRangeError);
    expect(() => dr.randomRoute(4, [1], { seed: -1 })).toThrow(/non-negative safe integer for seed but received number -1/);
    expect(() => dr.randomRoute(4, [1], { seed: 1, generator: new dr.Generator(1) })).toThrow(/either seed or generator/);
    expect(() => dr.randomRoute(4, [1], { generator: {} as dr.Generator })).toThrow(/Generator for generator/);
    expect(() => dr.randomRoute(4, [1], { training: 1 as unknown as boolean })).toThrow(/boolean for training/);
    expect(() => dr.randomRoute(4, [1], { training: false, evalMode: 'mean' as 'fixed' })).toThrow(/'expectation' or 'fixed' for evalMode but received/);
    expect(() => dr.randomRoute(4, [1], { dtype: 'int32' })).toThrow(dr.DTypeError);
    expect(() => dr.randomRoute(4, [1], null as unknown as dr.RandomRouteOptions)).toThrow(dr.ValueError);
  });
});

describe('hashRoute', () => {
  const refHash = (id: number, E: number, seed: number) => Number((BigInt(block(seed, id)[0]) * BigInt(E)) >> 32n);

  test('matches (philox(seed, id).v[0] * E) >> 32 for every id, any shape, views', () => {
    dr.tidy(() => {
      const ids = [0, 1, 2, 3, 4, 5, 1000, 65535, 2 ** 31 - 1, 123456789, 17, 17, 0];
      for (const E of [1, 2, 7, 64, 1000, 2 ** 31 - 1])
        for (const seed of [0, 5, 2 ** 40 + 1]) {
          const r = dr.hashRoute(dr.tensor(Int32Array.from(ids)), E, { seed });
          expect(Array.from(r.dataSync())).toEqual(ids.map((id) => refHash(id, E, seed)));
        }
      const rnd = input([3, 5, 7], 3, 'float64', 0, 50000).data;
      const t = dr.tensor(Int32Array.from(rnd, Math.floor), [3, 5, 7]);
      const r = dr.hashRoute(t.transpose(0, 2), 9, { seed: 2 });
      expect(r.shape).toEqual([7, 5, 3]);
      const tv = t.transpose(0, 2).contiguous().dataSync();
      expect(Array.from(r.dataSync())).toEqual(Array.from(tv).map((id) => refHash(id, 9, 2)));
      expect(dr.hashRoute(dr.tensor(new Int32Array(0)), 4).shape).toEqual([0]);
      // default seed 0; another seed is another assignment
      const a = Array.from(dr.hashRoute(dr.arange(0, 64, 1, { dtype: 'int32' }), 8).dataSync());
      expect(a).toEqual(Array.from({ length: 64 }, (_, i) => refHash(i, 8, 0)));
      expect(Array.from(dr.hashRoute(dr.arange(0, 64, 1, { dtype: 'int32' }), 8, { seed: 1 }).dataSync())).not.toEqual(a);
    });
  });

  test('consecutive ids spread evenly over the buckets (chi-square, several seeds)', () => {
    dr.tidy(() => {
      const N = 30000;
      for (const E of [2, 5, 64])
        for (const seed of [0, 1, 99]) {
          const counts = countsOf(dr.hashRoute(dr.arange(0, N, 1, { dtype: 'int32' }), E, { seed }).dataSync(), E);
          const { stat, df } = chi2Stat(counts, new Array(E).fill(1 / E), N);
          expect(chi2Sf(stat, df)).toBeGreaterThan(ALPHA);
          // and a skewed hypothesis is rejected
          const f = E === 2 ? 1.2 : 3; // bucket 0 f times as likely
          const skew = Array.from({ length: E }, (_, e) => (e === 0 ? f : 1 - (f - 1) / (E - 1)) / E);
          expect(chi2Sf(chi2Stat(counts, skew, N).stat, df)).toBeLessThan(ALPHA);
        }
    });
  });

  test('negative ids, ids >= vocabSize and bad E are typed errors', async () => {
    await expectReadFails(dr.hashRoute(dr.tensor(new Int32Array([3, 4, -2, -7])), 4), dr.OutOfRangeError, 'hashRoute', /token id -2 at position 2 is negative/);
    await expectReadFails(dr.hashRoute(dr.tensor(new Int32Array([3, 9, 4])), 4, { vocabSize: 5 }), dr.OutOfRangeError, 'hashRoute', /token id 9 at position 1 is outside \[0, 5\)/);
    expect(Array.from(dr.hashRoute(dr.tensor(new Int32Array([4])), 4, { vocabSize: 5 }).dataSync())).toHaveLength(1);
    const ids = dr.tensor(new Int32Array([1, 2]));
    expect(() => dr.hashRoute(ids, 0)).toThrow(dr.OutOfRangeError);
    expect(() => dr.hashRoute(ids, 0)).toThrow(/integer E \(the number of routes\) in \[1, 2147483647\] but received number 0/);
    expect(() => dr.hashRoute(ids, 2.5)).toThrow(/received number 2.5/);
    expect(() => dr.hashRoute(dr.tensor([1, 2]), 4)).toThrow(dr.DTypeError);
    expect(() => dr.hashRoute(ids, 4, { seed: -3 })).toThrow(/seed but received number -3/);
    expect(() => dr.hashRoute(ids, 4, { vocabSize: 0 })).toThrow(/vocabSize in \[1, 2147483648\] but received number 0/);
    expect(() => dr.hashRoute([1, 2] as unknown as dr.Tensor, 4)).toThrow(/Tensor for tokenIds/);
  });
});

describe('ruleRoute', () => {
  // the plain-loop reference: the first rule (in table order) that names the id, else the default
  const refRule = (ids: number[], table: dr.RouteRule[], dflt: number) => ids.map((id) => {
    for (const r of table) {
      if ('ids' in r ? r.ids.includes(id) : id >= r.range[0] && id < r.range[1]) return r.route;
    }
    return dflt;
  });

  const table: dr.RouteRule[] = [
    { range: [100, 200], route: 1 },
    { ids: [5, 7, 9, 99], route: 2 },
    { ids: [200], route: 1 }, // touches the range, same route (merged)
    { range: [201, 205], route: 3 }, // touches the merged run, another route
    { range: [1000, 1001], route: 0 },
    { ids: [2 ** 31 - 1], route: 4 },
    { range: [70000, 2 ** 31 - 1], route: 5 }, // ends just below the largest id
  ];

  test('sets, ranges and the default against a plain loop: dense, search and auto, odd shapes, views', () => {
    dr.tidy(() => {
      const probe = [0, 4, 5, 6, 7, 8, 9, 99, 100, 101, 199, 200, 201, 204, 205, 999, 1000, 1001, 69999, 70000, 123456789, 2 ** 31 - 2, 2 ** 31 - 1, 65535, 65536];
      for (const lookup of ['auto', 'dense', 'search'] as const) {
        const t = lookup === 'dense' ? table.slice(0, 5) : table; // dense: a moderate largest id
        const ids = lookup === 'dense' ? probe.filter((i) => i < 5000) : probe;
        for (const dflt of [0, 6]) {
          const got = dr.ruleRoute(dr.tensor(Int32Array.from(ids)), t, { default: dflt, lookup });
          expect(Array.from(got.dataSync())).toEqual(refRule(ids, t, dflt));
        }
      }
      // random ids in [0, 3000) over a random table of sets and ranges, shape [3, 7, 11] through a transpose
      const rnd = input([11, 7, 3], 5, 'float64', 0, 3000).data;
      const ids = dr.tensor(Int32Array.from(rnd, Math.floor), [11, 7, 3]).transpose(0, 2);
      const flat = Array.from(ids.contiguous().dataSync());
      const rt: dr.RouteRule[] = [];
      for (let lo = 0; lo < 3000; lo += 97) rt.push(lo % 2 ? { range: [lo, lo + 50], route: (lo / 97) % 5 } : { ids: [lo + 3, lo + 60, lo + 61], route: 7 });
      for (const lookup of ['dense', 'search', 'auto'] as const) {
        const got = dr.ruleRoute(ids, rt, { default: 9, lookup });
        expect(got.shape).toEqual([3, 7, 11]);
        expect(Array.from(got.dataSync())).toEqual(refRule(flat, rt, 9));
      }
      // an empty table: everything takes the default; no ids: an empty result
      expect(Array.from(dr.ruleRoute(dr.tensor(new Int32Array([0, 5, 2 ** 31 - 1])), [], { default: 3 }).dataSync())).toEqual([3, 3, 3]);
      expect(dr.ruleRoute(dr.tensor(new Int32Array(0)), table).shape).toEqual([0]);
      // a range up to 2^31 (hi exclusive) holds the largest id
      expect(Array.from(dr.ruleRoute(dr.tensor(new Int32Array([9, 2 ** 31 - 1])), [{ range: [10, 2 ** 31], route: 1 }], { lookup: 'search' }).dataSync())).toEqual([0, 1]);
    });
  });

  test('a compiled table: merged intervals, the dense choice, reuse', () => {
    dr.tidy(() => {
      const c = dr.compileRuleTable(table.slice(0, 4), { default: 8 });
      expect(Array.from(c.rules)).toEqual([5, 5, 2, 7, 7, 2, 9, 9, 2, 99, 99, 2, 100, 200, 1, 201, 204, 3]);
      expect(c.lut).not.toBeNull();
      expect(c.lut!.length).toBe(205);
      expect(dr.compileRuleTable(table, {}).lut).toBeNull(); // the largest id is 2^31 - 1: search
      const ids = dr.tensor(Int32Array.from([5, 6, 150, 204, 300]));
      expect(Array.from(dr.ruleRoute(ids, c).dataSync())).toEqual([2, 8, 1, 3, 8]);
    });
  });

  test('negative ids and ids >= vocabSize fail the op (OutOfRangeError at the read)', async () => {
    await expectReadFails(dr.ruleRoute(dr.tensor(new Int32Array([1, -5, 3])), table), dr.OutOfRangeError, 'ruleRoute', /token id -5 at position 1 is negative/);
    await expectReadFails(dr.ruleRoute(dr.tensor(new Int32Array([1, 5, 300])), table.slice(0, 2), { vocabSize: 256, lookup: 'dense' }), dr.OutOfRangeError, 'ruleRoute', /token id 300 at position 2 is outside \[0, 256\)/);
  });

  test('overlapping or malformed tables and bad options are typed errors naming the entry', () => {
    const ids = dr.tensor(new Int32Array([1]));
    const bad = (t: unknown, o: dr.RuleRouteOptions = {}) => () => dr.ruleRoute(ids, t as dr.RouteRule[], o);
    expect(bad([{ range: [0, 10], route: 1 }, { ids: [3], route: 2 }])).toThrow(/the rules overlap: table\[1\].ids\[0\] = 3 and table\[0\].range = \[0, 10\) both hold id 3/);
    expect(bad([{ range: [0, 10], route: 1 }, { range: [9, 12], route: 1 }])).toThrow(dr.ValueError);
    expect(bad([{ ids: [4, 4], route: 1 }])).toThrow(/overlap/);
    expect(bad([{ ids: [4], route: 1 }, { ids: [4], route: 1 }])).toThrow(/table\[1\].ids\[0\] = 4 and table\[0\].ids\[0\] = 4|table\[0\].ids\[0\] = 4 and table\[1\].ids\[0\] = 4/);
    expect(bad([{ range: [5, 5], route: 1 }])).toThrow(/lo < hi in table\[0\].range .* received \[5, 5\]/);
    expect(bad([{ range: [5], route: 1 }])).toThrow(/\[lo, hi\] for table\[0\].range/);
    expect(bad([{ range: [-1, 5], route: 1 }])).toThrow(/table\[0\].range\[0\] \(lo\) in \[0, 2147483647\] but received number -1/);
    expect(bad([{ ids: [-2], route: 1 }])).toThrow(/token id table\[0\].ids\[0\] in \[0, 2147483647\] but received number -2/);
    expect(bad([{ ids: [1.5], route: 1 }])).toThrow(dr.OutOfRangeError);
    expect(bad([{ ids: [], route: 1 }])).toThrow(/at least one id in table\[0\].ids/);
    expect(bad([{ ids: [1], range: [2, 3], route: 1 }])).toThrow(/exactly one of ids and range in table\[0\] but received both/);
    expect(bad([{ route: 1 }])).toThrow(/received neither/);
    expect(bad([{ ids: [1] }])).toThrow(/table\[0\].route in \[0, 2147483647\] but received undefined/);
    expect(bad([{ ids: [1], route: -1 }])).toThrow(dr.OutOfRangeError);
    expect(bad([{ ids: [1], route: 4 }], { numRoutes: 4 })).toThrow(/table\[0\].route in \[0, 3\] but received number 4/);
    expect(bad([{ ids: [1], route: 1, extra: 2 }])).toThrow(/in table\[0\] but received the key 'extra'/);
    expect(bad([null])).toThrow(/rule object .* for table\[0\]/);
    expect(bad('x')).toThrow(/array of rules|rule array/);
    expect(bad([{ ids: [300], route: 1 }], { vocabSize: 256 })).toThrow(/table\[0\].ids\[0\] in \[0, 255\] but received number 300/);
    expect(bad([], { default: -1 })).toThrow(/integer default in \[0, 2147483647\] but received number -1/);
    expect(bad([], { default: 2, numRoutes: 2 })).toThrow(/default in \[0, 1\] but received number 2/);
    expect(bad([], { numRoutes: 0 })).toThrow(/numRoutes/);
    expect(bad([], { lookup: 'hash' as 'dense' })).toThrow(/'auto', 'dense' or 'search' for lookup/);
    expect(bad([{ range: [0, 2 ** 31], route: 1 }], { lookup: 'dense' })).toThrow(/use lookup 'search'/);
    expect(() => dr.ruleRoute(dr.tensor([1]), [])).toThrow(dr.DTypeError);
  });
});

describe('layerDrop', () => {
  // keep sample b iff rand()'s element b < 1 - p (reference uniform from the reference Philox)
  const refKeep = (seed: number, offset: number, B: number, p: number) =>
    Array.from({ length: B }, (_, b) => Math.floor(philoxU32(seed, offset + b) / 256) / 2 ** 24 < 1 - p);

  test('drops whole samples with probability p and scales the kept ones by 1 / (1 - p); eval is the identity', () => {
    dr.tidy(() => {
      for (const shape of [[1], [7, 3], [33, 2, 5], [300, 1]]) {
        const B = shape[0], n = shape.reduce((a, b) => a * b, 1) / B;
        const { t, data } = input(shape, 11, 'float64');
        const g = new dr.Generator(8);
        g.take(4);
        const y = dr.layerDrop(t, 0.3, { generator: g });
        const keep = refKeep(8, 4, B, 0.3);
        expectClose(y, Array.from(data, (v, i) => (keep[Math.floor(i / n)] ? v / 0.7 : 0)), 'float64');
        expect(y.shape).toEqual(shape);
      }
      const { t } = input([6, 4], 2, 'float32');
      const ev = dr.layerDrop(t, 0.5, { training: false });
      expect(Array.from(ev.dataSync())).toEqual(Array.from(t.dataSync()));
      ev.dispose();
      expect(t.isDisposed).toBe(false); // a view: disposing it leaves x
      expect(Array.from(dr.layerDrop(t, 0).dataSync())).toEqual(Array.from(t.dataSync()));
      const bf = dr.layerDrop(dr.ones([5, 3], { dtype: 'bfloat16' }), 0.5, { generator: new dr.Generator(1) });
      expect(bf.dtype).toBe('bfloat16');
      expect(Array.from(bf.dataSync()).every((v) => v === 0 || v === 2)).toBe(true);
    });
  });

  test('kept fraction matches 1 - p (chi-square, several seeds; a wrong p is rejected)', () => {
    dr.tidy(() => {
      const B = 20000;
      for (const p of [0.1, 0.5, 0.9])
        for (const seed of [0, 3, 1234]) {
          const y = dr.layerDrop(dr.ones([B, 1]), p, { generator: new dr.Generator(seed) }).dataSync();
          const kept = Array.from(y).filter((v) => v !== 0).length;
          const { stat } = chi2Stat([B - kept, kept], [p, 1 - p], B);
          expect(chi2Sf(stat, 1)).toBeGreaterThan(ALPHA);
          expect(chi2Sf(chi2Stat([B - kept, kept], [p + 0.03, 1 - p - 0.03], B).stat, 1)).toBeLessThan(ALPHA);
        }
    });
  });

  test('gradients flow through the kept samples with the same scale (gradcheck and the exact gradient)', () => {
    dr.tidy(() => {
      const x = input([9, 4], 3, 'float64').t.requiresGrad_();
      const w = input([9, 4], 4, 'float64').t;
      // a fresh generator per call: the same mask on every evaluation of the function
      expect(dr.gradcheck((a) => dr.layerDrop(a, 0.4, { generator: new dr.Generator(6) }).mul(w), [x]).ok).toBe(true);
      const y = dr.layerDrop(x, 0.4, { generator: new dr.Generator(6) });
      dr.sum(y.mul(w)).backward();
      const keep = refKeep(6, 0, 9, 0.4);
      expect(keep.some((k) => k) && keep.some((k) => !k)).toBe(true);
      const wd = w.dataSync();
      expectClose(x.grad!, Array.from(wd, (v, i) => (keep[Math.floor(i / 4)] ? v / 0.6 : 0)), 'float64');
      // eval: the identity's gradient
      const x2 = input([3, 2], 5, 'float64').t.requiresGrad_();
      expect(dr.gradcheck((a) => dr.layerDrop(a, 0.4, { training: false }).mul(2), [x2]).ok).toBe(true);
    });
  });

  test('bad arguments are typed errors', () => {
    const x = dr.ones([4, 2]);
    expect(() => dr.layerDrop(x, 1)).toThrow(dr.OutOfRangeError);
    expect(() => dr.layerDrop(x, 1)).toThrow(/layerDrop: Expected p in \[0, 1\) but received number 1/);
    expect(() => dr.layerDrop(x, -0.1)).toThrow(/received number -0.1/);
    expect(() => dr.layerDrop(x, NaN)).toThrow(dr.OutOfRangeError);
    expect(() => dr.layerDrop(dr.ones([4], { dtype: 'int32' }), 0.5)).toThrow(dr.DTypeError);
    expect(() => dr.layerDrop(dr.tensor(1), 0.5)).toThrow(dr.ShapeError);
    expect(() => dr.layerDrop(x, 0.5, { training: 'yes' as unknown as boolean })).toThrow(/boolean for training/);
    expect(() => dr.layerDrop(x, 0.5, { generator: 3 as unknown as dr.Generator })).toThrow(/Generator for generator/);
  });
});

// CPU vs CUDA: the same seed draws the same routes (integer arithmetic on both sides). Runs only
// where a GPU is present (the agreement harness, test/backends.ts, covers the same ground).
const cuda = (() => {
  try {
    return dr.cudaAvailable();
  } catch {
    return false;
  }
})();
(cuda ? describe : describe.skip)('on cuda: identical to the cpu', () => {
  test('randomRoute, hashRoute, ruleRoute, layerDrop', () => {
    dr.tidy(() => {
      const probs = [0.1, 0.25, 0, 0.4, 0.25];
      const g1 = new dr.Generator(5), g2 = new dr.Generator(5);
      g1.take(7);
      g2.take(7);
      const a = dr.randomRoute(5001, probs, { generator: g1 }).route.dataSync();
      const b = dr.randomRoute(5001, probs, { generator: g2, device: 'cuda' }).route.dataSync();
      expect(Array.from(b)).toEqual(Array.from(a));
      const ids = dr.tensor(Int32Array.from({ length: 3001 }, (_, i) => (i * 7919) % 100000));
      const idsC = ids.to('cuda');
      expect(Array.from(dr.hashRoute(idsC, 13, { seed: 3 }).dataSync())).toEqual(Array.from(dr.hashRoute(ids, 13, { seed: 3 }).dataSync()));
      const rt: dr.RouteRule[] = [{ range: [100, 5000], route: 1 }, { ids: [7, 70000], route: 2 }];
      for (const lookup of ['dense', 'search'] as const)
        expect(Array.from(dr.ruleRoute(idsC, rt, { default: 3, lookup }).dataSync())).toEqual(Array.from(dr.ruleRoute(ids, rt, { default: 3, lookup }).dataSync()));
      const x = dr.ones([257, 3]);
      expect(Array.from(dr.layerDrop(x.to('cuda'), 0.3, { generator: new dr.Generator(2) }).dataSync()))
        .toEqual(Array.from(dr.layerDrop(x, 0.3, { generator: new dr.Generator(2) }).dataSync()));
    });
  });
});
