// DualRouteLM: config validation (every option, invalid ones included), every path and fusion
// kind against the layer equation built from its parts, float64 gradchecks of a layer, routing
// exposure, tied embeddings, and a short training run whose loss falls.
import * as dr from '../../lib';
import { models } from '../../lib';
import { expectClose } from '../helpers';
import { randArray } from '../reference';

const base = { vocabSize: 23, dModel: 8, nHeads: 2, nLayers: 2, maxSeq: 16 };
const ids = (B: number, S: number, seed: number) =>
  dr.tensor(new Int32Array(Array.from(randArray(B * S, seed, 0, 23), Math.floor)), [B, S]);

describe('DualRouteLM config', () => {
  test('defaults are filled in and patterns repeat', () => {
    const c = models.resolveConfig({ ...base, nLayers: 6, pattern: [{ global: 'none' }, { global: 'none' }, { global: 'none' }, { global: 'none' }, { global: 'none' }, { local: 'none' }] });
    expect(c.layers.map((l) => `${l.local}/${l.global}`)).toEqual(['window/none', 'window/none', 'window/none', 'window/none', 'window/none', 'none/full']);
    expect(c.nKvHeads).toBe(2);
    expect(c.ffn).toBe('swiglu');
    expect(c.ffnHidden).toBe(21);
    expect(c.tieEmbeddings).toBe(true);
    expect(c.layers[0].fusion).toBe('gated');
    const d = models.resolveConfig({ ...base, layer: { window: 5, fusion: 'sum' }, layers: [{}, { window: 3 }] });
    expect(d.layers.map((l) => [l.window, l.fusion])).toEqual([[5, 'sum'], [3, 'sum']]);
  });

  const bad: Array<[string, object, RegExp]> = [
    ['not an object', null as unknown as object, /config: Expected an object/],
    ['unknown key', { ...base, nlayers: 2 }, /unknown key 'nlayers'/],
    ['vocabSize', { ...base, vocabSize: 0 }, /vocabSize: Expected an integer >= 1 but received number 0/],
    ['dModel multiple', { ...base, dModel: 9 }, /dModel: Expected a multiple of nHeads \(2\)/],
    ['nKvHeads', { ...base, nKvHeads: 3 }, /nKvHeads: Expected a divisor of nHeads/],
    ['odd head width with rope', { ...base, dModel: 6, nHeads: 2 }, /even \(rope\)/],
    ['ffn', { ...base, ffn: 'relu' }, /ffn: Expected one of 'swiglu', 'gelu', 'moe'/],
    ['moe missing', { ...base, ffn: 'moe' }, /ffn 'moe' needs moe/],
    ['moe without ffn', { ...base, moe: { experts: 2 } }, /set ffn: 'moe'/],
    ['moe topK', { ...base, ffn: 'moe', moe: { experts: 2, topK: 3 } }, /moe.topK: Expected at most moe.experts/],
    ['moe key', { ...base, ffn: 'moe', moe: { experts: 2, topk: 1 } }, /moe: unknown key 'topk'/],
    ['layers length', { ...base, layers: [{}] }, /layers: Expected an array of nLayers \(2\)/],
    ['layers and pattern', { ...base, layers: [{}, {}], pattern: [{}] }, /not both/],
    ['local', { ...base, layers: [{}, { local: 'lstm2' }] }, /layers\[1\].local: Expected one of 'window', 'conv', 'lstm', 'none'/],
    ['global', { ...base, pattern: [{ global: 'dense' }] }, /pattern\[0\].global: Expected one of/],
    ['both none', { ...base, layer: { local: 'none', global: 'none' } }, /both 'none'/],
    ['fusion', { ...base, layer: { fusion: 'max' } }, /layer.fusion: Expected one of/],
    ['window', { ...base, layer: { window: 0 } }, /layer.window: Expected an integer >= 1/],
    ['rule table', { ...base, layer: { fusion: 'rule' } }, /a non-empty rule table/],
    ['random probs', { ...base, layer: { fusion: 'random', randomProbs: [0.5, 0.6] } }, /two probabilities that sum to 1/],
    ['dropout', { ...base, dropout: 1 }, /dropout: Expected a probability in \[0, 1\)/],
    ['layer key', { ...base, layer: { windw: 3 } }, /layer: unknown key 'windw'/],
    ['maxSeq', { ...base, maxSeq: 1.5 }, /maxSeq: Expected an integer/],
  ];
  for (const [name, cfg, re] of bad) {
    test(`refused: ${name}`, () => {
      expect(() => models.resolveConfig(cfg)).toThrow(dr.ValueError);
      expect(() => models.resolveConfig(cfg)).toThrow(re);
    });
  }
});

describe('DualRouteLayer against its equation', () => {
  const locals = ['window', 'conv', 'lstm', 'none'] as const;
  const globals = ['full', 'segment', 'routed', 'nsa', 'none'] as const;
  const fusions = ['sum', 'gated', 'softmax', 'attention', 'concat', 'rule', 'random'] as const;
  const combos: Array<{ local: typeof locals[number]; global: typeof globals[number]; fusion: typeof fusions[number] }> = [];
  for (const local of locals) for (const global of globals) if (local !== 'none' || global !== 'none') combos.push({ local, global, fusion: 'gated' });
  for (const fusion of fusions) combos.push({ local: 'window', global: 'full', fusion });
  combos.push({ local: 'conv', global: 'segment', fusion: 'softmax' });
  for (const c of combos) {
    test(`${c.local} + ${c.global}, ${c.fusion}`, () => {
      dr.tidy(() => {
        const layer = { ...c, window: 3, segment: 2, topK: 2, convKernel: 3, rules: [{ range: [0, 11] as [number, number], route: 1 }], randomProbs: [0.7, 0.3] as [number, number] };
        const m = new dr.DualRouteLM({ ...base, nLayers: 1, layers: [layer], seed: 5 });
        m.eval();  // random routing takes its expectation
        m.to('float64');
        const L = m.layers[0];
        const t = ids(2, 7, 3);
        const x = dr.tensor(randArray(2 * 7 * 8, 4, -1, 1), [2, 7, 8], { dtype: 'float64' });
        const a = L.input_layernorm.forward(x);
        const l = L.local?.forward(a), g = L.global?.forward(a);
        let mixed: dr.Tensor;
        if (!l || !g) mixed = (l ?? g)!;
        else if (c.fusion === 'sum') mixed = dr.add(l, g);
        else if (c.fusion === 'concat') mixed = (L.gate as dr.nn.Linear).forward(dr.concat([l, g], -1));
        else {
          let gates: dr.Tensor;
          if (c.fusion === 'gated' || c.fusion === 'softmax') gates = (L.gate as dr.nn.SigmoidGates).forward(a);
          else if (c.fusion === 'attention') {
            const lin = L.gate as dr.nn.Linear;
            gates = dr.softmax(dr.concat([lin.forward(l), lin.forward(g)], -1), -1);
          } else if (c.fusion === 'rule') {
            // ids < 11 take the global path, the rest the local one
            const v = t.dataSync();
            gates = dr.tensor(Float64Array.from(Array.from(v).flatMap((id) => (id < 11 ? [0, 1] : [1, 0]))), [2, 7, 2], { dtype: 'float64' });
          } else gates = dr.tensor(Float64Array.from({ length: 28 }, (_, i) => (i % 2 ? 0.3 : 0.7)), [2, 7, 2], { dtype: 'float64' });
          const gv = gates.dataSync(), lv = l.dataSync(), gl = g.dataSync();
          const out = new Float64Array(lv.length);
          for (let i = 0; i < lv.length; ++i) {
            const tok = Math.floor(i / 8);
            out[i] = gv[tok * 2] * lv[i] + gv[tok * 2 + 1] * gl[i];
          }
          mixed = dr.tensor(out, [2, 7, 8], { dtype: 'float64' });
        }
        const h = dr.add(x, mixed);
        const want = dr.add(h, (L.mlp as dr.nn.MLP).forward(L.post_attention_layernorm.forward(h)));
        expectClose(L.forward(x, t), want.dataSync(), 'float64');
        const r = L.routing();
        if (l && g && c.fusion !== 'concat') expect(r.gates).not.toBeNull();
        if (c.fusion === 'random') expectClose(r.gates!, [0.7, 0.3], 'float64');
        if (c.global === 'routed') expect(r.routed!.routed).toBeGreaterThanOrEqual(0);
        if (c.global === 'nsa') expect(r.nsaGates!.every((v) => v > 0 && v < 1)).toBe(true);
        m.dispose();
      });
    });
  }

  test('gradcheck of a layer through its input (window + full, gated; conv + segment, softmax per channel)', () => {
    dr.tidy(() => {
      for (const layer of [{ local: 'window' as const, global: 'full' as const, fusion: 'gated' as const, window: 2 }, { local: 'lstm' as const, global: 'none' as const }, { local: 'conv' as const, global: 'segment' as const, fusion: 'softmax' as const, segment: 2, topK: 1, gateUnits: 'channel' as const }]) {
        const m = new dr.DualRouteLM({ ...base, nLayers: 1, layers: [layer], seed: 2 });
        m.to('float64');
        const t = ids(1, 5, 6);
        const x = dr.tensor(randArray(5 * 8, 7, -1, 1), [1, 5, 8], { dtype: 'float64' }).requiresGrad_();
        expect(dr.gradcheck((xx) => m.layers[0].forward(xx, t), [x]).ok).toBe(true);
        m.dispose();
      }
    });
  });
});

describe('DualRouteLM', () => {
  test('tied and untied output projections; parameter names', () => {
    dr.tidy(() => {
      const tied = new dr.DualRouteLM({ ...base, seed: 1 });
      expect(tied.lm_head).toBeNull();
      const names = tied.namedParameters().map(([n]) => n);
      expect(names[0]).toBe('embed_tokens.weight');
      expect(names).toContain('layers.0.local.q_proj.weight');
      expect(names).toContain('layers.1.global.o_proj.weight');
      expect(names).toContain('layers.0.gate.proj.0.weight');
      expect(names[names.length - 1]).toBe('norm.weight');
      const t = ids(2, 6, 1);
      const logits = tied.forward(t);
      expect(logits.shape).toEqual([2, 6, 23]);
      const untied = new dr.DualRouteLM({ ...base, tieEmbeddings: false, seed: 1 });
      expect(untied.namedParameters().map(([n]) => n)).toContain('lm_head.weight');
      expect(untied.forward(t).shape).toEqual([2, 6, 23]);
      expect(() => tied.forward(dr.zeros([2, 6]))).toThrow(dr.DTypeError);
      expect(() => tied.forward(ids(1, 17, 2))).toThrow(/at most maxSeq \(16\)/);
      tied.dispose();
      untied.dispose();
    });
  });

  test('MoE feed-forward: expert load exposed, auxiliary losses in the total', () => {
    dr.tidy(() => {
      const m = new dr.DualRouteLM({ ...base, ffn: 'moe', moe: { experts: 3, topK: 2 }, seed: 3 });
      const t = ids(2, 5, 4);
      const { loss, lmLoss } = m.loss(t, t);
      expect(loss.item()).toBeGreaterThan(lmLoss.item());
      for (const r of m.routing()) expect(r.expertLoad!.reduce((a, b) => a + b, 0)).toBe(2 * 5 * 2);
      m.dispose();
    });
  });

  test('a short training run lowers the loss, every parameter gets a gradient', () => {
    const m = new dr.DualRouteLM({ ...base, nLayers: 3, pattern: [{ local: 'conv', global: 'none' }, { local: 'window', window: 4, global: 'full' }, { global: 'routed', capacity: 0.5 }], seed: 9 });
    const opt = new dr.optim.AdamW(m.parameters(), { lr: 0.02, weightDecay: 0 });
    // a repeating sequence: next token = (token + 1) % 23
    const seq = Int32Array.from({ length: 2 * 13 }, (_, i) => (i + Math.floor(i / 13) * 5) % 23);
    const x = dr.tensor(seq.filter((_, i) => i % 13 < 12), [2, 12]);
    const y = dr.tensor(seq.filter((_, i) => i % 13 > 0), [2, 12]);
    const losses: number[] = [];
    for (let step = 0; step < 40; ++step) {
      opt.zeroGrad();
      const l = dr.tidy(() => {
        const { loss } = m.loss(x, y);
        dr.backward(loss);
        return loss.item();
      });
      if (step === 0) for (const [n, p] of m.namedParameters()) expect([n, p.grad !== null]).toEqual([n, true]);
      opt.step();
      losses.push(l);
    }
    expect(losses[39]).toBeLessThan(losses[0] * 0.3);
    const routed = m.routing()[2].routed!;
    expect(routed.routed).toBeCloseTo(0.5, 6);
    expect(routed.agreement).toBeGreaterThan(0.5);
    [x, y].forEach((t) => t.dispose());
    m.dispose();
  });
});
