// DualRouteLM.routingTrace: the per-position routing of one text, per path kind (gated window +
// full, per-channel gates, conv + routed, lstm + segment, NSA, MoE feed-forward), checked against
// what the layer's own modules give for the same input and against model.routing(); it runs in
// eval without recording gradients and leaves every module's training mode as it was.
import * as dr from '../../lib';
import * as tape from '../../lib/tape';
import { expectClose } from '../helpers';
import { randArray } from '../reference';

const base = { vocabSize: 23, dModel: 8, nHeads: 2, nLayers: 1, maxSeq: 32 };
const ids = (B: number, S: number, seed: number) =>
  dr.tensor(new Int32Array(Array.from(randArray(B * S, seed, 0, 23), Math.floor)), [B, S]);

// the normalised input of layer 0 (its paths' input) for ids
const layer0Input = (m: dr.DualRouteLM, t: dr.Tensor) => m.layers[0].input_layernorm.forward(m.embed_tokens.forward(t));

describe('routingTrace: shapes and values per path kind', () => {
  test('window + full, gated per token: gates are the gate module\'s for that input', () => {
    dr.tidy(() => {
      const m = new dr.DualRouteLM({ ...base, nLayers: 2, layer: { local: 'window', window: 3, global: 'full', fusion: 'gated' }, seed: 1 });
      const t = ids(1, 9, 2);
      const tr = m.routingTrace(t);
      expect(tr.tokens).toEqual(Array.from(t.dataSync()));
      expect(tr.layers).toHaveLength(2);
      const L = tr.layers[0];
      expect([L.local, L.global, L.fusion]).toEqual(['window', 'full', 'gated']);
      expect(L.gates).toHaveLength(9);
      expect(L.gates!.every((g) => g.length === 2 && g.every((v) => v > 0 && v < 1))).toBe(true);
      expect([L.routed, L.expert, L.expertLoad, L.nsaGates, L.segments]).toEqual([null, null, null, null, null]);
      m.eval();
      const want = (m.layers[0].gate as dr.nn.SigmoidGates).forward(layer0Input(m, t));  // [1, 9, 2]
      expectClose(L.gates!.flat(), want.dataSync());
      // routing() still works and reports this forward: the mean of the trace's gates
      const r = m.routing()[0].gates!;
      expectClose(r, [0, 1].map((p) => L.gates!.reduce((a, g) => a + g[p], 0) / 9));
      m.dispose();
    });
  });

  test('per-channel softmax gates are averaged over channels; sum gives 1, 1; concat and one path give null', () => {
    dr.tidy(() => {
      const m = new dr.DualRouteLM({
        ...base, nLayers: 4,
        layers: [{ global: 'full', fusion: 'softmax', gateUnits: 'channel' }, { global: 'full', fusion: 'sum' }, { global: 'full', fusion: 'concat' }, { local: 'conv', global: 'none' }],
        seed: 2,
      });
      const t = ids(1, 6, 3);
      const tr = m.routingTrace(t);
      m.eval();
      const g = (m.layers[0].gate as dr.nn.SoftmaxGates).forward(layer0Input(m, t));  // [1, 6, 2, 8]
      expectClose(tr.layers[0].gates!.flat(), dr.mean(g, 3).dataSync());
      tr.layers[0].gates!.forEach((p) => expect(p[0] + p[1]).toBeCloseTo(1, 5));
      expect(tr.layers[1].gates).toEqual(Array.from({ length: 6 }, () => [1, 1]));
      expect(tr.layers[2].gates).toBeNull();
      expect(tr.layers[3].gates).toBeNull();
      expect(tr.layers[3].fusion).toBeNull();
      m.dispose();
    });
  });

  test('conv + routed: the routed positions are the predictor\'s, and their share is routing()\'s', () => {
    dr.tidy(() => {
      const m = new dr.DualRouteLM({ ...base, layer: { local: 'conv', global: 'routed', capacity: 0.5 }, seed: 4 });
      const t = ids(2, 12, 5);
      const rows = [0, 1].map((row) => m.routingTrace(t, { row }).layers[0]);
      for (const L of rows) {
        expect(L.routed).toHaveLength(12);
        expect(L.routed!.every((v) => typeof v === 'boolean')).toBe(true);
        expect(L.gates).toHaveLength(12);
      }
      const share = rows.reduce((a, L) => a + L.routed!.filter(Boolean).length, 0) / 24;
      expect(m.routing()[0].routed!.routed).toBeCloseTo(share, 6);
      m.eval();
      const pred = (m.layers[0].global as dr.nn.RoutedAttention).predictor.forward(layer0Input(m, t)).dataSync();
      expect(rows.flatMap((L) => L.routed!)).toEqual(Array.from(pred, (v) => v > 0));
      // in training, routedMask is the router's top ceil(capacity * S) of each row
      const ra = m.layers[0].global as dr.nn.RoutedAttention;
      ra.train();
      const a = layer0Input(m, t);
      const mask = Array.from(ra.routedMask(a).dataSync(), (v) => v !== 0);
      const score = ra.router.forward(a).dataSync();
      for (const r of [0, 1]) {
        const row = mask.slice(r * 12, (r + 1) * 12);
        expect(row.filter(Boolean)).toHaveLength(6);
        // the top 6 scores, ties to the lower position (layer 0's scores repeat with the tokens)
        const sc = Array.from(score.subarray(r * 12, (r + 1) * 12));
        const top = sc.map((v, i) => [v, i]).sort((x, y) => y[0] - x[0] || x[1] - y[1]).slice(0, 6).map(([, i]) => i);
        expect(row).toEqual(sc.map((_, i) => top.includes(i)));
      }
      m.dispose();
    });
  });

  test('lstm + segment: the segments of head 0 are segmentAttention\'s own selection', () => {
    dr.tidy(() => {
      const seg = 3, topK = 2, S = 13;
      const m = new dr.DualRouteLM({ ...base, layer: { local: 'lstm', global: 'segment', segment: seg, topK }, seed: 6 });
      const t = ids(1, S, 7);
      const L = m.routingTrace(t).layers[0];
      expect(L.segments).toHaveLength(S);
      L.segments!.forEach((s, p) => {
        const own = Math.floor(p / seg);
        expect(s[0]).toBe(own);
        expect(s).toHaveLength(Math.min(topK, own + 1));
        expect(s.every((i) => i >= 0 && i <= own)).toBe(true);
      });
      // the same selection by hand: projections, RoPE, segmentAttention's returned indices
      m.eval();
      const g = m.layers[0].global as dr.nn.MultiheadAttention;
      const a = layer0Input(m, t);
      const heads = (x: dr.Tensor, H: number) => dr.transpose(dr.reshape(x, [1, S, H, 4]), 1, 2);
      const pos = dr.arange(0, S, 1, { dtype: 'int32' });
      const q = dr.rope(heads(g.q_proj.forward(a), 2), pos);
      const k = dr.rope(heads(g.k_proj.forward(a), 2), pos);
      const v = heads(g.v_proj.forward(a), 2);
      const r = dr.segmentAttention(q, k, v, { segment: seg, topK, returnIndices: true });
      const idx = r.indices.dataSync();  // [1, 2, S, topK]: head 0 first
      const want = Array.from({ length: S }, (_, p) => Array.from(idx.subarray(p * topK, (p + 1) * topK)).filter((i) => i >= 0));
      expect(L.segments).toEqual(want);
      m.dispose();
    });
  });

  test('nsa: the three branch gates per position are its gate module\'s, and the selected segments are reported', () => {
    dr.tidy(() => {
      const m = new dr.DualRouteLM({ ...base, layer: { local: 'none', global: 'nsa', segment: 4, topK: 2, window: 3 }, seed: 8 });
      const t = ids(1, 10, 9);
      const L = m.routingTrace(t).layers[0];
      expect(L.gates).toBeNull();
      expect(L.nsaGates).toHaveLength(10);
      m.eval();
      const want = (m.layers[0].global as dr.nn.NSAAttention).gate.forward(layer0Input(m, t));
      expectClose(L.nsaGates!.flat(), want.dataSync());
      expectClose(m.routing()[0].nsaGates!, [0, 1, 2].map((b) => L.nsaGates!.reduce((s, g) => s + g[b], 0) / 10));
      expect(L.segments).toHaveLength(10);
      L.segments!.forEach((s, p) => expect(s[0]).toBe(Math.floor(p / 4)));
      m.dispose();
    });
  });

  test('MoE feed-forward: first-choice expert per position and the row\'s load, summing to routing()\'s counts', () => {
    dr.tidy(() => {
      for (const topK of [1, 2]) {
        const m = new dr.DualRouteLM({ ...base, nLayers: 2, ffn: 'moe', moe: { experts: 3, topK }, seed: 10 });
        const t = ids(2, 7, 11);
        const rows = [0, 1].map((row) => m.routingTrace(t, { row }));
        for (let l = 0; l < 2; ++l) {
          const counts = m.routing()[l].expertLoad!;
          const sum = [0, 1, 2].map((e) => rows[0].layers[l].expertLoad![e] + rows[1].layers[l].expertLoad![e]);
          expect(sum).toEqual(counts);
          for (const tr of rows) {
            const L = tr.layers[l];
            expect(L.expert).toHaveLength(7);
            expect(L.expert!.every((e) => Number.isInteger(e) && e >= 0 && e < 3)).toBe(true);
            expect(L.expertLoad!.reduce((a, b) => a + b, 0)).toBe(7 * topK);  // dropless
            if (topK === 1) expect(L.expertLoad).toEqual([0, 1, 2].map((e) => L.expert!.filter((x) => x === e).length));
          }
        }
        m.dispose();
      }
    });
  });
});

describe('routingTrace: rows, modes, gradients and errors', () => {
  test('row picks a batch row: equal to the trace of that row alone', () => {
    dr.tidy(() => {
      const m = new dr.DualRouteLM({ ...base, layer: { local: 'window', window: 4, global: 'full', fusion: 'gated' }, seed: 12 });
      const t = ids(2, 8, 13);
      const tr = m.routingTrace(t, { row: 1 });
      const alone = m.routingTrace(dr.narrow(t, 0, 1, 1));
      expect(tr.tokens).toEqual(alone.tokens);
      expectClose(tr.layers[0].gates!.flat(), alone.layers[0].gates!.flat());
      m.dispose();
    });
  });

  test('training modes are restored (train, eval, and a mixed tree)', () => {
    const m = new dr.DualRouteLM({ ...base, layer: { global: 'routed' }, dropout: 0.1, seed: 14 });
    const t = ids(1, 6, 15);
    const modes = () => [...m.modules()].map((x) => x.training);
    m.train();
    m.routingTrace(t);
    expect(modes().every((x) => x)).toBe(true);
    m.eval();
    m.routingTrace(t);
    expect(modes().every((x) => !x)).toBe(true);
    m.train();
    m.layers[0].dropout.training = false;
    const before = modes();
    m.routingTrace(t);
    expect(modes()).toEqual(before);
    t.dispose();
    m.dispose();
  });

  test('records no gradient, leaks no tensor, and keeps nothing per position after it', () => {
    const m = new dr.DualRouteLM({ ...base, nLayers: 3, pattern: [{ global: 'routed' }, { local: 'conv', global: 'segment', segment: 2, topK: 1 }, { global: 'nsa', segment: 2, topK: 1, window: 2 }], ffn: 'moe', moe: { experts: 2, topK: 1 }, seed: 16 });
    const t = ids(1, 8, 17);
    const original = tape.record;
    const spy = jest.spyOn(tape, 'record');
    let recorded = 0;
    spy.mockImplementation((out, name, inputs, save, attrs) => {
      const r = original(out, name, inputs, save, attrs);
      if (r.gradFn) recorded += 1;
      return r;
    });
    try {
      // control: an ordinary forward records
      dr.tidy(() => m.forward(t));
      expect(recorded).toBeGreaterThan(0);
      recorded = 0;
      m.routingTrace(t);
      const live = dr.memory().tensors;
      m.routingTrace(t);
      expect(recorded).toBe(0);
      expect(dr.memory().tensors).toBe(live);
    } finally {
      spy.mockRestore();
    }
    expect(dr.isGradEnabled()).toBe(true);
    // an ordinary forward after a trace keeps no per-position inputs: the layer has none to read
    dr.tidy(() => m.forward(t));
    expect(() => m.layers[0].routingTrace()).toThrow(/no traced forward/);
    t.dispose();
    m.dispose();
  });

  test('bad arguments are typed errors naming them', () => {
    const m = new dr.DualRouteLM({ ...base, seed: 18 });
    const t = ids(2, 4, 19);
    expect(() => m.routingTrace(t, { row: 2 })).toThrow(dr.OutOfRangeError);
    expect(() => m.routingTrace(t, { row: 2 })).toThrow(/options.row, an integer in \[0, 2\).*number 2/);
    expect(() => m.routingTrace(t, { row: 0.5 })).toThrow(dr.OutOfRangeError);
    expect(() => m.routingTrace(dr.zeros([1, 4]))).toThrow(dr.DTypeError);
    expect(() => m.routingTrace(t, null as unknown as object)).toThrow(dr.ValueError);
    t.dispose();
    m.dispose();
  });
});
