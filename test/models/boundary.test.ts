// Layer boundaries in one pass: DualRouteLayer.forwardPending (and TransformerBlock's) leaves a
// layer's last residual add to the next norm, which adds and normalises in one addAndNorm, and
// pendingNorm does it for the final norm. Checked against the unfused chain (forward's sum, then
// the next layer's own norm) for DualRouteLM's logits, loss and every parameter's gradient (with
// dropout, layerDrop, MoE and routed losses in training), DualRouteSeq2Seq's encoder and decoder
// (the context path), chained TransformerBlocks, and float64 gradchecks through two layers.
import * as dr from '../../lib';
import { expectClose } from '../helpers';
import { randArray } from '../reference';

const base = { vocabSize: 23, dModel: 8, nHeads: 2, maxSeq: 16 };
const ids = (B: number, S: number, seed: number, V = 23) =>
  dr.tensor(new Int32Array(Array.from(randArray(B * S, seed, 0, V), Math.floor)), [B, S]);
const arr = (t: dr.Tensor) => Float64Array.from(t.dataSync());

// every norm weight away from 1, so that the norms' weights count in the values and gradients
function jitterNorms(m: dr.nn.Module, seed: number): void {
  dr.noGrad(() => dr.tidy(() => {
    let k = 0;
    for (const [n, p] of m.namedParameters()) {
      if (n.endsWith('norm.weight')) dr.copy_(p, dr.tensor(randArray(p.size, seed + k++, 0.5, 1.5), p.shape.slice(), { dtype: p.dtype }));
    }
  }));
}

// loss() runs, its backward, then the values and every parameter's gradient (the generator reset
// first, so that dropout and layerDrop draw the same masks in both ways)
function lossAndGrads(m: dr.nn.Module & { generator: dr.Generator }, state: { seed: number; offset: number }, loss: () => dr.Tensor[]) {
  m.zeroGrad();
  m.generator.setState(state);
  const values = dr.tidy(() => {
    const out = loss();
    dr.backward(out[0]);
    return out.map(arr);
  });
  const grads = m.namedParameters().map(([n, p]) => [n, p.grad ? arr(p.grad) : null] as const);
  m.zeroGrad();
  return { values, grads };
}

function expectSame(a: ReturnType<typeof lossAndGrads>, b: ReturnType<typeof lossAndGrads>, scale = 1): void {
  a.values.forEach((v, i) => expectClose(v, b.values[i], 'float32', scale));
  expect(a.grads.map(([n, g]) => [n, g !== null])).toEqual(b.grads.map(([n, g]) => [n, g !== null]));
  a.grads.forEach(([n, g], i) => {
    if (!g) return;
    try {
      expectClose(g, b.grads[i][1]!, 'float32', scale);
    } catch (e) {
      throw new Error(`${n}: ${(e as Error).message}`);
    }
  });
}

// DualRouteLM's forward without the pending boundaries: each layer's forward (its sum), the next
// layer's own input norm, the final norm, the output projection; loss as DualRouteLM.loss.
function unfusedLogits(m: dr.DualRouteLM, t: dr.Tensor): dr.Tensor {
  let h = m.embed_tokens.forward(t);
  for (const l of m.layers) h = l.forward(h, t);
  const n = m.norm.forward(h);
  return m.lm_head ? m.lm_head.forward(n) : dr.matmul(n, m.embed_tokens.weight, { transB: true });
}
function unfusedLoss(m: dr.DualRouteLM, t: dr.Tensor, y: dr.Tensor): { loss: dr.Tensor; lmLoss: dr.Tensor } {
  const lmLoss = dr.crossEntropy(unfusedLogits(m, t), y);
  let loss = lmLoss;
  for (const l of m.layers) {
    if (l.mlp instanceof dr.nn.TokenChoiceMoE) loss = dr.add(loss, l.mlp.auxLoss());
    const p = l.global instanceof dr.nn.RoutedAttention ? l.global.predictorLoss() : null;
    if (p) loss = dr.add(loss, p);
  }
  return { loss, lmLoss };
}

describe('fused layer boundaries', () => {
  const configs: Array<[string, dr.DualRouteLMConfig]> = [
    ['3 layers: window + full gated, conv + routed, lstm + segment softmax; MoE; dropout and layerDrop', {
      ...base, nLayers: 3, dropout: 0.1, layerDrop: 0.3, ffn: 'moe', moe: { experts: 3, topK: 2 }, seed: 11,
      layers: [{ local: 'window', window: 3, global: 'full', fusion: 'gated' }, { local: 'conv', global: 'routed', capacity: 0.5 }, { local: 'lstm', global: 'segment', segment: 2, topK: 2, fusion: 'softmax' }],
    }],
    ['2 layers, untied head, swiglu', { ...base, nLayers: 2, tieEmbeddings: false, seed: 12 }],
  ];
  for (const [name, cfg] of configs) {
    test(`DualRouteLM equals the unfused chain: logits, loss, gradients (${name})`, () => {
      const m = new dr.DualRouteLM(cfg);
      jitterNorms(m, 40);
      const t = ids(2, 9, 1), y = ids(2, 9, 2);
      const state = m.generator.getState();
      // eval: the logits, and hidden() is the final norm's output
      m.eval();
      dr.tidy(() => {
        const want = arr(unfusedLogits(m, t));
        expectClose(m.forward(t), want);
        const hid = m.hidden(t);
        let h = m.embed_tokens.forward(t);
        for (const l of m.layers) h = l.forward(h, t);
        expectClose(hid, arr(m.norm.forward(h)));
      });
      // training: the same dropout and layerDrop draws, the auxiliary losses, every gradient
      m.train();
      const fused = lossAndGrads(m, state, () => {
        const r = m.loss(t, y);
        return [r.loss, r.lmLoss];
      });
      const plain = lossAndGrads(m, state, () => {
        const r = unfusedLoss(m, t, y);
        return [r.loss, r.lmLoss];
      });
      expectSame(fused, plain);
      // the draws matter: another generator state gives another loss in training
      if (cfg.dropout) {
        const other = lossAndGrads(m, { ...state, offset: state.offset + 1000 }, () => [m.loss(t, y).loss]);
        expect(other.values[0][0]).not.toBeCloseTo(fused.values[0][0], 6);
      }
      [t, y].forEach((x) => x.dispose());
      m.dispose();
    });
  }

  test('routingTrace is that of the unfused forward', () => {
    const m = new dr.DualRouteLM({ ...base, ...configs[0][1], dropout: 0, layerDrop: 0 });
    jitterNorms(m, 50);
    const t = ids(1, 9, 3);
    const trace = m.routingTrace(t);
    m.eval();
    dr.tidy(() => {
      let h = m.embed_tokens.forward(t);
      m.layers.forEach((l) => l.setTracing(true));
      for (const l of m.layers) h = l.forward(h, t);
      const want = m.layers.map((l) => l.routingTrace(0));
      m.layers.forEach((l) => l.setTracing(false));
      expect(trace.layers.map((l) => [l.routed, l.expert, l.segments])).toEqual(want.map((l) => [l.routed, l.expert, l.segments]));
      trace.layers.forEach((l, i) => expectClose(l.gates!.flat(), want[i].gates!.flat()));
    });
    t.dispose();
    m.dispose();
  });

  test('DualRouteSeq2Seq equals the unfused chain: encoder, router, decoder over the context', () => {
    const m = new dr.DualRouteSeq2Seq({ vocabSize: 13, dModel: 8, nHeads: 2, encoderLayers: 2, decoderLayers: 3, maxSource: 12, maxTarget: 12, keep: 0.6, dropout: 0.1,
      encoder: { window: 2, fusion: 'sum' }, decoder: { local: 'conv', convKernel: 3 }, seed: 8 });
    jitterNorms(m, 60);
    const src = ids(2, 7, 4, 13), tgt = ids(2, 6, 5, 13), y = ids(2, 6, 6, 13);
    const state = m.generator.getState();
    const plainForward = () => {
      let e = m.embed_tokens.forward(src);
      for (const l of m.encoder) e = l.forward(e, src);
      const ctx = m.route(m.encoder_norm.forward(e));
      let h = m.embed_tokens.forward(tgt);
      for (const l of m.decoder) h = l.forward(h, tgt, ctx);
      return dr.matmul(m.norm.forward(h), m.embed_tokens.weight, { transB: true });
    };
    m.eval();
    dr.tidy(() => {
      expectClose(m.forward(src, tgt), arr(plainForward()));
      let e = m.embed_tokens.forward(src);
      for (const l of m.encoder) e = l.forward(e, src);
      expectClose(m.encode(src), arr(m.encoder_norm.forward(e)));
    });
    m.train();
    const fused = lossAndGrads(m, state, () => [m.loss(src, tgt, y)]);
    const kept = m.keptPositions();
    const plain = lossAndGrads(m, state, () => [dr.crossEntropy(plainForward(), y)]);
    expect(m.keptPositions()).toEqual(kept);
    expectSame(fused, plain);
    expect(fused.grads.find(([n]) => n === 'encoder_router.weight')![1]!.some((v) => v !== 0)).toBe(true);
    [src, tgt, y].forEach((x) => x.dispose());
    m.dispose();
  });

  test('chained TransformerBlocks: forwardPending and pendingNorm equal forward, then the norm', () => {
    const g = new dr.Generator(3);
    const blocks = [0, 1, 2].map(() => new dr.nn.TransformerBlock(8, 2, { causal: true, generator: g }));
    const norm = new dr.nn.RMSNorm(8);
    const all = new dr.nn.ModuleList([...blocks, norm]);
    jitterNorms(all, 70);
    const x = dr.tensor(randArray(2 * 5 * 8, 9, -1, 1), [2, 5, 8], { dtype: 'float32' }).requiresGrad_();
    const run = (fused: boolean) => {
      all.zeroGrad();
      x.grad?.dispose();
      x.grad = null;
      return dr.tidy(() => {
        let out: dr.Tensor;
        if (fused) {
          let p: dr.Tensor | dr.nn.PendingResidual = x;
          for (const b of blocks) p = b.forwardPending(p);
          out = dr.nn.pendingNorm(p, norm);
        } else {
          let h = x;
          for (const b of blocks) h = b.forward(h);
          out = norm.forward(h);
        }
        const c = dr.tensor(randArray(out.size, 10, -1, 1), out.shape.slice(), { dtype: 'float32' });
        dr.backward(dr.sum(dr.mul(out, c)));
        return [out, x.grad!, ...all.parameters().map((p) => p.grad!)].map(arr);
      });
    };
    const a = run(true), b = run(false);
    a.forEach((v, i) => expectClose(v, b[i]));
    all.dispose();
    x.dispose();
  });

  test('float64 gradcheck through two layers joined by a pending boundary', () => {
    dr.tidy(() => {
      const m = new dr.DualRouteLM({ ...base, nLayers: 2, layers: [{ local: 'window', window: 2, global: 'full', fusion: 'gated' }, { local: 'conv', global: 'none' }], seed: 13 });
      m.to('float64');
      jitterNorms(m, 80);
      const [L0, L1] = m.layers;
      const t = ids(1, 5, 7);
      const f = (n: number, seed: number) => dr.tensor(randArray(n, seed, -1, 1), [1, 5, 8], { dtype: 'float64' }).requiresGrad_();
      // from a tensor, and from a pending { h, r } (the gradient reaches both)
      expect(dr.gradcheck((x) => dr.nn.pendingNorm(L1.forwardPending(L0.forwardPending(x, t), t), m.norm), [f(40, 8)]).ok).toBe(true);
      expect(dr.gradcheck((h, r) => dr.nn.pendingNorm(L1.forwardPending(L0.forwardPending({ h, r }, t), t), m.norm), [f(40, 9), f(40, 10)]).ok).toBe(true);
      // the residual stream h of a boundary is read by the layer's own residual too: a layer's
      // pending output, used both as the stream and through its norm
      expect(dr.gradcheck((x) => {
        const p = L1.forwardPending(L0.forwardPending(x, t), t);
        return dr.concat([p.h, p.r, dr.nn.pendingNorm(p, m.norm)], -1);
      }, [f(40, 11)]).ok).toBe(true);
      m.dispose();
    });
  });

  test('float64 gradcheck through two decoder layers and their encoder context', () => {
    dr.tidy(() => {
      const m = new dr.DualRouteSeq2Seq({ vocabSize: 13, dModel: 8, nHeads: 2, encoderLayers: 1, decoderLayers: 2, maxSource: 8, maxTarget: 8, decoder: { window: 2 }, seed: 14 });
      m.to('float64');
      jitterNorms(m, 90);
      const t = ids(1, 4, 12, 13);
      const x = dr.tensor(randArray(32, 13, -1, 1), [1, 4, 8], { dtype: 'float64' }).requiresGrad_();
      const ctx = dr.tensor(randArray(24, 14, -1, 1), [1, 3, 8], { dtype: 'float64' }).requiresGrad_();
      const [D0, D1] = m.decoder;
      expect(dr.gradcheck((a, c) => dr.nn.pendingNorm(D1.forwardPending(D0.forwardPending(a, t, c), t, c), m.norm), [x, ctx]).ok).toBe(true);
      m.dispose();
    });
  });

  test('forward is the pending sum; a bad pending input is a typed error', () => {
    dr.tidy(() => {
      const m = new dr.DualRouteLM({ ...base, nLayers: 1, seed: 15 });
      const L = m.layers[0];
      const t = ids(1, 4, 16);
      const x = dr.tensor(randArray(32, 17, -1, 1), [1, 4, 8], { dtype: 'float32' });
      const p = L.forwardPending(x, t);
      expect(Array.from(L.forward(x, t).dataSync())).toEqual(Array.from(dr.add(p.h, p.r).dataSync()));
      expect(() => L.forwardPending({ h: x } as unknown as dr.nn.PendingResidual, t)).toThrow(dr.ValueError);
      expect(() => L.forwardPending({ h: x } as unknown as dr.nn.PendingResidual, t)).toThrow(/DualRouteLayer.forwardPending: Expected a tensor or a pending residual \{ h, r \}/);
      expect(() => dr.nn.pendingNorm(null as unknown as dr.Tensor, m.norm)).toThrow(/pendingNorm: Expected a tensor or a pending residual/);
      expect(() => L.forwardPending({ h: x, r: dr.zeros([1, 4, 7]) }, t)).toThrow(dr.ShapeError);
      m.dispose();
    });
  });
});
