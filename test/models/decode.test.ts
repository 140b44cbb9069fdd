// Cached decoding equals the full forward (eval) at every position, for every path kind and
// fusion; cached and recomputed generation give the same tokens; the window ring keeps memory flat.
import * as dr from '../../lib';
import { models } from '../../lib';
import { expectClose } from '../helpers';

const base = { vocabSize: 29, dModel: 16, nHeads: 4, nKvHeads: 2, nLayers: 2, maxSeq: 40 };
const seq = Array.from({ length: 23 }, (_, i) => (i * 11 + 5) % 29);

function compare(cfg: dr.DualRouteLMConfig): void {
  dr.tidy(() => {
    const m = new dr.DualRouteLM(cfg);
    m.eval();
    m.to('float64');
    const full = m.forward(dr.tensor(Int32Array.from(seq), [1, seq.length])).dataSync();
    const cache = m.decodeCache();
    seq.forEach((t, p) => {
      const step = cache.step([t]);
      expectClose(step, Float64Array.from(full.slice(p * 29, (p + 1) * 29)), 'float64', 1000);
    });
    cache.dispose();
    m.dispose();
  });
}

describe('DecodeCache equals the full forward', () => {
  const layers: Array<[string, dr.LayerConfig]> = [
    ['window (ring)', { local: 'window', window: 5, global: 'none' }],
    ['window block', { local: 'window', window: 4, windowMode: 'block', global: 'none' }],
    ['conv', { local: 'conv', convKernel: 3, global: 'none' }],
    ['lstm', { local: 'lstm', global: 'none' }],
    ['full', { local: 'none', global: 'full' }],
    ['segment', { local: 'none', global: 'segment', segment: 4, topK: 2 }],
    ['routed', { local: 'none', global: 'routed', capacity: 0.5 }],
    ['nsa', { local: 'none', global: 'nsa', segment: 4, topK: 2, window: 6 }],
  ];
  for (const [name, layer] of layers) test(name, () => compare({ ...base, layer, seed: 3 }));
  for (const fusion of ['sum', 'gated', 'softmax', 'attention', 'concat', 'rule', 'random'] as const) {
    test(`window + full, fusion ${fusion}`, () => compare({ ...base, layer: { window: 3, global: 'full', fusion, rules: [{ range: [0, 14], route: 1 }] }, seed: 4 }));
  }
  test('a mixed stack with a dropless MoE', () => compare({ ...base, nLayers: 3, pattern: [{ local: 'conv' }, { global: 'routed', capacity: 0.3 }, { local: 'lstm', global: 'segment', segment: 3, topK: 2 }], ffn: 'moe', moe: { experts: 3, topK: 2 }, seed: 5 }));
});

describe('generation with caches', () => {
  test('cached and recomputed generation give the same tokens', async () => {
    const m = new dr.DualRouteLM({ ...base, pattern: [{ local: 'conv', global: 'none' }, { window: 4, global: 'routed', capacity: 0.5 }], seed: 6 });
    const a = await m.generateTokens([[1, 2, 3], [7]], { maxTokens: 12, temperature: 0 });
    const b = await m.generateTokens([[1, 2, 3], [7]], { maxTokens: 12, temperature: 0, cache: false });
    expect(a).toEqual(b);
    const s1 = await m.generateTokens([4, 5], { maxTokens: 10, seed: 3, topP: 0.9 });
    const s2 = await m.generateTokens([4, 5], { maxTokens: 10, seed: 3, topP: 0.9, cache: false });
    expect(s1).toEqual(s2);
    m.dispose();
  });

  test('the window ring keeps decode memory flat as the text grows', () => {
    const m = new dr.DualRouteLM({ ...base, maxSeq: 400, layer: { local: 'window', window: 8, global: 'none' }, seed: 7 });
    m.eval();
    const cache = m.decodeCache();
    const stepN = (n: number) => { for (let i = 0; i < n; ++i) cache.step([i % 29]).dispose(); };
    // read after synchronize: queued ops hold their buffers until they run
    stepN(20);
    dr.synchronize();
    const early = dr.memory().bytes;
    stepN(300);
    dr.synchronize();
    expect(dr.memory().bytes).toBe(early);
    cache.dispose();
    m.dispose();
  });

  test('bad steps are typed errors', () => {
    const m = new dr.DualRouteLM({ ...base, maxSeq: 2, seed: 1 });
    const c = m.decodeCache(2);
    expect(() => c.step([1])).toThrow(/Expected 2 token ids/);
    c.step([1, 2]).dispose();
    c.step([1, 2]).dispose();
    expect(() => c.step([1, 2])).toThrow(/maxSeq \(2\) positions are used up/);
    expect(() => new models.DecodeCache(m, 0)).toThrow(/positive integer batch/);
    c.dispose();
    m.dispose();
  });
});
