// DecodeCache.lastRouting: how every layer routed the token of the last decode step equals that
// position of model.routingTrace over the same text (gates, routed tokens, MoE experts, segments),
// for gated / per-channel / sum / concat fusion with a routed global path and an MoE, and for
// segment and NSA global paths; batch rows; generate({routing: true}) carries each token's own.
import * as dr from '../../lib';
import type { StepLayerRouting } from '../../lib/models';

const base = { vocabSize: 29, dModel: 16, nHeads: 4, nKvHeads: 2, maxSeq: 48 };
const seq = Array.from({ length: 26 }, (_, i) => (i * 11 + 5) % 29);

// every field of a decode step's routing against the trace's position p
function expectStepEqualsTrace(step: StepLayerRouting[], tr: dr.RoutingTrace, p: number): void {
  expect(step).toHaveLength(tr.layers.length);
  step.forEach((s, i) => {
    const L = tr.layers[i];
    if (L.gates) {
      expect(s.gates).not.toBeNull();
      expect(Math.abs(s.gates![0] - L.gates[p][0])).toBeLessThan(1e-5);
      expect(Math.abs(s.gates![1] - L.gates[p][1])).toBeLessThan(1e-5);
    } else {
      expect(s.gates).toBeNull();
    }
    expect(s.routed).toEqual(L.routed ? L.routed[p] : null);
    expect(s.expert).toEqual(L.expert ? L.expert[p] : null);
    expect(s.segments).toEqual(L.segments ? L.segments[p] : null);
  });
}

function decodeAll(m: dr.DualRouteLM, ids: number[]): StepLayerRouting[][] {
  const cache = m.decodeCache();
  const out = ids.map((t) => {
    cache.step([t]).dispose();
    return cache.lastRouting().layers;
  });
  cache.dispose();
  return out;
}

describe('DecodeCache.lastRouting equals routingTrace', () => {
  test('gated + routed global, per-channel softmax, sum, concat; an MoE feed-forward', () => {
    const m = new dr.DualRouteLM({
      ...base, nLayers: 4, seed: 11, ffn: 'moe', moe: { experts: 4, topK: 2 },
      layers: [
        { local: 'window', window: 4, global: 'routed', capacity: 0.5, fusion: 'gated' },
        { local: 'conv', global: 'full', fusion: 'softmax', gateUnits: 'channel' },
        { local: 'window', window: 5, global: 'full', fusion: 'sum' },
        { local: 'conv', global: 'full', fusion: 'concat' },
      ],
    });
    m.eval();
    const tr = m.routingTrace(dr.tensor(Int32Array.from(seq), [1, seq.length]));
    const steps = decodeAll(m, seq);
    steps.forEach((s, p) => expectStepEqualsTrace(s, tr, p));
    // the cases mean something: gates vary, both routing choices and several experts occur
    const g0 = steps.map((s) => s[0].gates![1]);
    expect(Math.max(...g0) - Math.min(...g0)).toBeGreaterThan(1e-3);
    expect(new Set(steps.map((s) => s[0].routed)).size).toBe(2);
    expect(new Set(steps.map((s) => s[0].expert)).size).toBeGreaterThan(1);
    expect(steps[0][2].gates).toEqual([1, 1]);
    expect({ ...steps[0][3], expert: 0 }).toEqual({ gates: null, routed: null, expert: 0, segments: null });
    m.dispose();
  });

  test('segment and NSA global paths: the segments head 0 read, own first', () => {
    const m = new dr.DualRouteLM({
      ...base, nLayers: 3, seed: 12,
      layers: [
        { local: 'lstm', global: 'segment', segment: 3, topK: 2, fusion: 'gated' },
        { local: 'none', global: 'nsa', segment: 4, topK: 2, window: 6 },
        { local: 'window', window: 3, global: 'segment', segment: 5, topK: 3, fusion: 'attention' },
      ],
    });
    m.eval();
    const tr = m.routingTrace(dr.tensor(Int32Array.from(seq), [1, seq.length]));
    const steps = decodeAll(m, seq);
    steps.forEach((s, p) => expectStepEqualsTrace(s, tr, p));
    steps.forEach((s, p) => {
      expect(s[0].segments![0]).toBe(Math.floor(p / 3));
      expect(s[1].gates).toBeNull();
      expect(s[1].segments!.length).toBeGreaterThan(0);
    });
    // a query past its first topK segments chooses among the earlier ones
    expect(steps[20][0].segments).toHaveLength(2);
    m.dispose();
  });

  test('batch rows: row r of a batched decode is trace row r', () => {
    const m = new dr.DualRouteLM({ ...base, nLayers: 2, seed: 13, ffn: 'moe', moe: { experts: 3, topK: 1 },
      pattern: [{ local: 'conv', global: 'routed', capacity: 0.5 }, { local: 'window', window: 4, global: 'segment', segment: 3, topK: 2 }] });
    m.eval();
    const rows = [seq.slice(0, 12), seq.slice(7, 19)];
    const ids = dr.tensor(Int32Array.from(rows.flat()), [2, 12]);
    const trs = [0, 1].map((row) => m.routingTrace(ids, { row }));
    const cache = m.decodeCache(2);
    for (let p = 0; p < 12; ++p) {
      cache.step([rows[0][p], rows[1][p]]).dispose();
      // either order of reading rows gives the same
      const r1 = cache.lastRouting(1), r0 = cache.lastRouting(0);
      expectStepEqualsTrace(r0.layers, trs[0], p);
      expectStepEqualsTrace(r1.layers, trs[1], p);
    }
    expect(() => cache.lastRouting(2)).toThrow(/row/);
    cache.dispose();
    const fresh = m.decodeCache();
    expect(() => fresh.lastRouting()).toThrow(/no step/);
    fresh.dispose();
    m.dispose();
  });
});

describe('generate({ routing: true })', () => {
  test('each token carries its own position\'s routing; the tokens are those of a plain generate', async () => {
    const m = new dr.DualRouteLM({ ...base, nLayers: 2, seed: 14, ffn: 'moe', moe: { experts: 4, topK: 2 },
      pattern: [{ local: 'window', window: 4, global: 'routed', capacity: 0.5, fusion: 'gated' }, { local: 'lstm', global: 'segment', segment: 3, topK: 2 }] });
    const prompts = [[1, 2, 3], [7, 8]];
    const plain = await m.generateTokens(prompts, { maxTokens: 14, temperature: 0 });
    const got: number[][] = [[], []];
    const routes: StepLayerRouting[][][] = [[], []];
    for await (const t of m.generate(prompts, { maxTokens: 14, temperature: 0, routing: true })) {
      got[t.index].push(t.token);
      routes[t.index].push(t.routing!.layers);
    }
    expect(got).toEqual(plain);
    // a sampled run draws the same tokens too
    const sampledPlain = await m.generateTokens([4, 5], { maxTokens: 10, seed: 3, topP: 0.9 });
    const sampled: number[] = [];
    for await (const t of m.generate([4, 5], { maxTokens: 10, seed: 3, topP: 0.9, routing: true })) sampled.push(t.token);
    expect(sampled).toEqual(sampledPlain[0]);
    m.eval();
    prompts.forEach((p, b) => {
      const text = [...p, ...got[b]];
      const tr = m.routingTrace(dr.tensor(Int32Array.from(text), [1, text.length]));
      routes[b].forEach((r, k) => expectStepEqualsTrace(r, tr, p.length + k));
    });
    // without the option, no routing
    for await (const t of m.generate([1], { maxTokens: 2, temperature: 0 })) expect(t.routing).toBeUndefined();
    await expect(m.generateTokens([1], { routing: true, cache: false })).rejects.toThrow(/routing needs the decode caches/);
    await expect(m.generateTokens([1], { routing: 1 as unknown as boolean })).rejects.toThrow(/boolean for routing/);
    m.dispose();
  });

  test('up to the model\'s maxSeq', async () => {
    const m = new dr.DualRouteLM({ ...base, maxSeq: 10, nLayers: 1, seed: 15, layer: { local: 'conv', global: 'full' } });
    const toks: dr.models.GeneratedToken[] = [];
    for await (const t of m.generate([3, 4, 5], { maxTokens: 50, temperature: 0, routing: true })) toks.push(t);
    expect(toks).toHaveLength(7);
    expect(toks.every((t) => t.routing!.layers[0].gates !== null)).toBe(true);
    m.dispose();
  });
});
