// The continuous-batching engine: every sequence's tokens equal a generation on its own
// (model.generateTokens, whose decode caches are tested against recomputing the prefix), for
// every path kind, with sequences of different lengths joining and leaving between steps and
// prompts fed in chunks; plus logprobs, routing, aborts, memory and the event loop.
import * as dr from '../../lib';
import { BatchEngine, EngineToken } from '../../lib/serve/engine';

type Cfg = Omit<dr.DualRouteLMConfig, 'vocabSize' | 'nLayers' | 'maxSeq'>;

const VOCAB = 61;
const make = (cfg: Cfg, nLayers = 2, maxSeq = 48) => {
  const m = new dr.DualRouteLM({ vocabSize: VOCAB, nLayers, maxSeq, seed: 7, ...cfg } as dr.DualRouteLMConfig);
  m.eval();
  return m;
};

const MODELS: Array<[string, Cfg]> = [
  ['sliding window + full, gated, GQA', { dModel: 32, nHeads: 4, nKvHeads: 2, pattern: [{ local: 'window', window: 5, global: 'full', fusion: 'gated' }] }],
  ['block window + segment (top 2), sum', { dModel: 32, nHeads: 2, pattern: [{ local: 'window', window: 4, windowMode: 'block', global: 'segment', segment: 4, topK: 2, fusion: 'sum' }] }],
  ['conv + routed (MoD), softmax per channel', { dModel: 24, nHeads: 2, pattern: [{ local: 'conv', convKernel: 3, global: 'routed', capacity: 0.5, fusion: 'softmax', gateUnits: 'channel' }] }],
  ['lstm + nsa, attention fusion', { dModel: 32, nHeads: 4, nKvHeads: 2, pattern: [{ local: 'lstm', global: 'nsa', segment: 4, topK: 2, window: 6, fusion: 'attention' }] }],
  ['window only + full only, concat, MoE dropless', { dModel: 32, nHeads: 2, ffn: 'moe', moe: { experts: 4, topK: 2, capacityFactor: 0 }, layers: [{ local: 'window', window: 3, global: 'none' }, { local: 'window', window: 3, global: 'full', fusion: 'concat' }] }],
];

const PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9], [3, 8, 13, 21, 34, 55, 2, 1, 0, 4, 4, 4, 9, 17], [40, 41]];

async function collect(it: AsyncIterable<EngineToken>): Promise<EngineToken[]> {
  const out: EngineToken[] = [];
  for await (const t of it) out.push(t);
  return out;
}

describe('BatchEngine', () => {
  for (const [name, cfg] of MODELS) {
    test(`${name}: batched sequences equal each generated alone (sampling with seeds, chunked prefill, late joiners)`, async () => {
      const model = make(cfg);
      const engine = new BatchEngine(model, { maxBatch: 3, prefillChunk: 4 });
      const opts = (i: number) => ({ maxTokens: 9 + 3 * i, temperature: 1, seed: 11 + i });
      // three at once (one waits for a slot: maxBatch 3), a fourth joins later
      const runs = PROMPTS.slice(0, 3).map((p, i) => collect(engine.submit(p, opts(i))));
      await new Promise((r) => setTimeout(r, 5));
      runs.push(collect(engine.submit(PROMPTS[3], opts(3))));
      const got = await Promise.all(runs);
      for (let i = 0; i < PROMPTS.length; ++i) {
        const want = (await model.generateTokens(PROMPTS[i], opts(i)))[0];
        expect(got[i].map((t) => t.token)).toEqual(want);
      }
      expect(engine.stats.lastBatch).toBeGreaterThanOrEqual(1);
      expect(engine.stats.decodeSteps).toBeLessThan(got.reduce((a, g) => a + g.length, 0));  // steps were shared
      await engine.close();
      model.dispose();
    });
  }

  test('a sequence reaching maxSeq ends there; maxTokens 0 yields nothing', async () => {
    const model = make(MODELS[0][1], 2, 16);
    const engine = new BatchEngine(model, { maxBatch: 2 });
    const [a, b] = await Promise.all([collect(engine.submit([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], { maxTokens: 50 })), collect(engine.submit([5], { maxTokens: 0 }))]);
    expect(a.length).toBe(6);
    expect(b.length).toBe(0);
    await engine.close();
    model.dispose();
  });

  test('logprobs equal the log-softmax of a full forward at each position', async () => {
    const model = make(MODELS[0][1]);
    const engine = new BatchEngine(model, { maxBatch: 2 });
    const prompt = [4, 8, 15, 16, 23];
    const toks = await collect(engine.submit(prompt, { maxTokens: 6, temperature: 0, logprobs: 3 }));
    const seq = [...prompt, ...toks.map((t) => t.token)];
    const lp = dr.tidy(() => dr.logSoftmax(model.forward(dr.tensor(Int32Array.from(seq), [1, seq.length], { dtype: 'int32' })), -1).dataSync());
    toks.forEach((t, i) => {
      const row = lp.subarray((prompt.length - 1 + i) * VOCAB, (prompt.length + i) * VOCAB);
      expect(t.logprob!).toBeCloseTo(row[t.token], 4);
      const best = Array.from(row.keys()).sort((a, b) => row[b] - row[a]).slice(0, 3);
      expect(t.top!.map((x) => x.token)).toEqual(best);
      expect(t.top![0].token).toBe(t.token);  // greedy
      t.top!.forEach((x) => expect(x.logprob).toBeCloseTo(row[x.token], 4));
    });
    await engine.close();
    model.dispose();
  });

  test('per-token routing equals routingTrace of the whole text (gates, routed, expert)', async () => {
    const cfg: Cfg = { dModel: 32, nHeads: 2, ffn: 'moe', moe: { experts: 4, topK: 1, capacityFactor: 0 },
      layers: [{ local: 'window', window: 4, global: 'full', fusion: 'gated' }, { local: 'conv', global: 'routed', capacity: 0.5, fusion: 'softmax' }] };
    const model = make(cfg);
    const engine = new BatchEngine(model, { maxBatch: 2, collectRouting: true });
    const prompt = [2, 7, 1, 8, 2, 8];
    const [toks] = await Promise.all([collect(engine.submit(prompt, { maxTokens: 8, seed: 3, routing: true })), collect(engine.submit([5, 5], { maxTokens: 4 }))]);
    const seq = [...prompt, ...toks.map((t) => t.token)];
    const trace = model.routingTrace(dr.tensor(Int32Array.from(seq), [1, seq.length], { dtype: 'int32' }));
    toks.forEach((t, i) => {
      const p = prompt.length + i;  // token i's own position
      t.routing!.layers.forEach((r, li) => {
        const tr = trace.layers[li];
        expect(r.gates![0]).toBeCloseTo(tr.gates![p][0], 5);
        expect(r.gates![1]).toBeCloseTo(tr.gates![p][1], 5);
        expect(r.routed).toBe(tr.routed ? tr.routed[p] : null);
        expect(r.expert).toBe(tr.expert![p]);
      });
    });
    // the totals for metrics count every position fed while sampling: each sequence's last prompt
    // token, its generated tokens but the last, and the routed sequence's last token once more
    expect(engine.stats.layers[0].tokens).toBe(8 + 4 + 1);
    expect(engine.stats.layers[1].routed).toBeGreaterThanOrEqual(0);
    expect(engine.stats.layers[0].experts!.reduce((a, b) => a + b, 0)).toBe(13);
    await engine.close();
    model.dispose();
  });

  test('an abort or a consumer that stops frees the slot at the next step; others go on', async () => {
    const model = make(MODELS[0][1], 2, 200);
    const engine = new BatchEngine(model, { maxBatch: 2 });
    const ac = new AbortController();
    let n = 0;
    const aborted = (async () => {
      for await (const _ of engine.submit([1, 2], { maxTokens: 150, signal: ac.signal })) if (++n === 5) ac.abort();
    })();
    const stopped = (async () => {
      let m = 0;
      for await (const _ of engine.submit([3], { maxTokens: 150 })) if (++m === 3) break;
      return m;
    })();
    await Promise.all([aborted, stopped]);
    expect(n).toBeLessThan(10);
    expect(await stopped).toBe(3);
    await engine.drained();
    expect(engine.runningCount).toBe(0);
    // both slots are free: two more run at once
    const more = await Promise.all([collect(engine.submit([4], { maxTokens: 3 })), collect(engine.submit([6], { maxTokens: 3 }))]);
    expect(more.map((m) => m.length)).toEqual([3, 3]);
    await engine.close();
    model.dispose();
  });

  test('a sliding-window layer\'s cache stays flat as generations grow; a full layer\'s grows', async () => {
    const model = make(MODELS[0][1], 2, 120);
    const engine = new BatchEngine(model, { maxBatch: 2, prefillChunk: 4 });
    const seen: Array<{ window: number; full: number }> = [];
    for await (const _ of engine.submit([1, 2, 3], { maxTokens: 100 })) {
      const b = engine.cacheBytes();
      seen.push({ window: b.window.used, full: b.full.used });
    }
    const late = seen.slice(20, -1);  // (after the last token the sequence has left)
    expect(new Set(late.map((s) => s.window)).size).toBe(1);  // flat once the ring is full
    expect(late[late.length - 1].full).toBeGreaterThan(late[0].full * 2);
    // a ring row per window + prefillChunk - 1 positions per slot, per layer: 2 layers x 2 slots x 8 rows x (k, v) x 2 heads x 8 dims x 4 bytes
    expect(engine.cacheBytes().window.allocated).toBe(2 * 2 * 8 * 2 * 2 * 8 * 4);
    await engine.close();
    model.dispose();
  });

  test('the event loop stays free while 8 sequences decode', async () => {
    const model = make({ dModel: 64, nHeads: 4, pattern: [{ local: 'window', window: 16, global: 'full', fusion: 'gated' }] }, 4, 256);
    const engine = new BatchEngine(model, { maxBatch: 8 });
    const gaps: number[] = [];
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      gaps.push(now - last);
      last = now;
    }, 5);
    await Promise.all(Array.from({ length: 8 }, (_, i) => collect(engine.submit([i + 1, 2, 3], { maxTokens: 60 }))));
    clearInterval(timer);
    gaps.sort((a, b) => a - b);
    expect(gaps.length).toBeGreaterThan(5);
    expect(gaps[Math.floor(gaps.length / 2)]).toBeLessThan(50);
    await engine.close();
    model.dispose();
  });

  test('bad arguments: typed errors', () => {
    const model = make(MODELS[0][1]);
    expect(() => new BatchEngine(model, { maxBatch: 0 })).toThrow(dr.ValueError);
    expect(() => new BatchEngine(model, { batch: 2 } as never)).toThrow(/unknown option 'batch'/);
    const engine = new BatchEngine(model);
    expect(() => engine.submit([], {})).toThrow(/non-empty/);
    expect(() => engine.submit([VOCAB], {})).toThrow(/token ids in \[0, 61\)/);
    expect(() => engine.submit([1], { temperature: -1 })).toThrow(/temperature/);
    expect(() => engine.submit([1], { logprobs: 21 })).toThrow(/logprobs/);
    expect(() => engine.submit(new Array(48).fill(1), {})).toThrow(/maxSeq/);
    model.dispose();
  });
});
