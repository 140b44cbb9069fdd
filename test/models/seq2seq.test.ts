// DualRouteSeq2Seq: config checks; the router keeps the top fraction of encoder states (checked
// against a plain top-k of the router's scores) and the decoder cross-attends to those only
// (fewer keys than queries); the encoder is bidirectional, the decoder causal; the router gets
// gradients; a copy task trains. The classification heads pool as documented.
import * as dr from '../../lib';
import { models } from '../../lib';
import { expectClose } from '../helpers';
import { randArray } from '../reference';

const cfg = { vocabSize: 13, dModel: 8, nHeads: 2, encoderLayers: 2, decoderLayers: 2, maxSource: 12, maxTarget: 12, seed: 4 };
const ids = (B: number, S: number, seed: number) => dr.tensor(new Int32Array(Array.from(randArray(B * S, seed, 0, 13), Math.floor)), [B, S]);
const arr = (t: dr.Tensor) => Float64Array.from(t.dataSync());

describe('DualRouteSeq2Seq', () => {
  test('config errors name the field', () => {
    const bad: Array<[object, RegExp]> = [
      [{ ...cfg, keep: 0 }, /keep: Expected a fraction in \(0, 1\]/],
      [{ ...cfg, encoder: { global: 'segment' } }, /encoder.global: Expected 'full' or 'none'/],
      [{ ...cfg, encoder: { local: 'conv', convKernel: 4 } }, /encoder.convKernel: Expected an odd kernel/],
      [{ ...cfg, encoderlayers: 2 }, /unknown key 'encoderlayers'/],
      [{ ...cfg, encoder: { local: 'lstm' } }, /encoder.local: Expected 'window', 'conv' or 'none'/],
      [{ ...cfg, dModel: 7 }, /DualRouteSeq2Seq config: dModel: Expected a multiple of nHeads/],
      [{ ...cfg, decoder: { fusion: 'max' } }, /DualRouteSeq2Seq config: layer.fusion/],
    ];
    for (const [c, re] of bad) expect(() => new dr.DualRouteSeq2Seq(c as dr.DualRouteSeq2SeqConfig)).toThrow(re);
  });

  test('forward equals encode, top-k routing by the router, and the decoder over the kept states', () => {
    dr.tidy(() => {
      const m = new dr.DualRouteSeq2Seq({ ...cfg, keep: 0.4, encoder: { window: 2, fusion: 'sum' }, decoder: { local: 'conv', convKernel: 3 } });
      m.to('float64');
      const B = 2, Se = 7, St = 9, d = 8;
      const src = ids(B, Se, 1), tgt = ids(B, St, 2);
      const got = m.forward(src, tgt);
      expect(got.shape).toEqual([B, St, 13]);
      const kept = m.keptPositions()!;
      // the reference: a plain top-3 of the router's scores, in source order, scaled by sigmoid
      const enc = m.encode(src);
      const sc = arr(m.encoder_router.forward(enc)), e = arr(enc);
      const n = Math.ceil(0.4 * Se);
      const ctx = new Float64Array(B * n * d);
      for (let b = 0; b < B; ++b) {
        const row = Array.from(sc.slice(b * Se, (b + 1) * Se));
        const top = row.map((v, i) => [v, i]).sort((p, q) => q[0] - p[0] || p[1] - q[1]).slice(0, n).map((p) => p[1]).sort((x, y) => x - y);
        expect(kept[b]).toEqual(top);
        top.forEach((pos, j) => {
          const w = 1 / (1 + Math.exp(-row[pos]));
          for (let i = 0; i < d; ++i) ctx[(b * n + j) * d + i] = w * e[(b * Se + pos) * d + i];
        });
      }
      const c = dr.tensor(ctx, [B, n, d], { dtype: 'float64' });
      let h = m.embed_tokens.forward(tgt);
      for (const l of m.decoder) h = l.forward(h, tgt, c);
      const want = dr.matmul(m.norm.forward(h), m.embed_tokens.weight, { transB: true });
      expectClose(got, arr(want), 'float64');
      m.dispose();
    });
  });

  test('the encoder is bidirectional and the decoder causal', () => {
    dr.tidy(() => {
      const m = new dr.DualRouteSeq2Seq({ ...cfg, keep: 1 });
      const src = ids(1, 6, 3), tgt = ids(1, 6, 4);
      const src2 = dr.tensor(Int32Array.from(src.dataSync(), (v, i) => (i === 5 ? (v + 1) % 13 : v)), [1, 6]);
      const e1 = arr(m.encode(src)), e2 = arr(m.encode(src2));
      expect(e1.slice(0, 8)).not.toEqual(e2.slice(0, 8));  // position 0 sees position 5
      const tgt2 = dr.tensor(Int32Array.from(tgt.dataSync(), (v, i) => (i === 5 ? (v + 1) % 13 : v)), [1, 6]);
      const y1 = arr(m.forward(src, tgt)), y2 = arr(m.forward(src, tgt2));
      expect(Array.from(y1.slice(0, 5 * 13))).toEqual(Array.from(y2.slice(0, 5 * 13)));
      expect(Array.from(y1.slice(5 * 13))).not.toEqual(Array.from(y2.slice(5 * 13)));
      m.dispose();
    });
  });

  test('a copy task trains; the router gets gradients', () => {
    const m = new dr.DualRouteSeq2Seq({ ...cfg, keep: 0.75, dModel: 16 });
    const opt = new dr.optim.AdamW(m.parameters(), { lr: 0.02, weightDecay: 0 });
    const B = 4, S = 6, BOS = 12;
    const srcv = Int32Array.from(randArray(B * S, 7, 0, 12), Math.floor);
    const src = dr.tensor(srcv, [B, S]);
    const tin = dr.tensor(Int32Array.from({ length: B * S }, (_, i) => (i % S === 0 ? BOS : srcv[i - 1])), [B, S]);
    const losses: number[] = [];
    for (let step = 0; step < 60; ++step) {
      opt.zeroGrad();
      losses.push(dr.tidy(() => {
        const l = m.loss(src, tin, src);
        dr.backward(l);
        return l.item();
      }));
      if (step === 0) expect(m.encoder_router.weight.grad).not.toBeNull();
      opt.step();
    }
    expect(losses[59]).toBeLessThan(losses[0] * 0.5);
    [src, tin].forEach((t) => t.dispose());
    m.dispose();
  });
});

describe('DualRouteClassifier', () => {
  test('mean and last pooling over the hidden states', () => {
    dr.tidy(() => {
      const lm = new dr.DualRouteLM({ vocabSize: 13, dModel: 8, nHeads: 2, nLayers: 1, maxSeq: 8, seed: 3 });
      for (const pooling of ['mean', 'last'] as const) {
        const c = new dr.DualRouteClassifier(lm, 3, pooling);
        const x = ids(2, 5, 9);
        const h = arr(lm.hidden(x));
        const W = arr(c.head.weight), b = arr(c.head.bias!);
        const want = new Float64Array(2 * 3);
        for (let r = 0; r < 2; ++r) {
          const pooled = new Float64Array(8);
          for (let t = 0; t < 5; ++t) for (let i = 0; i < 8; ++i) if (pooling === 'mean') pooled[i] += h[(r * 5 + t) * 8 + i] / 5; else if (t === 4) pooled[i] = h[(r * 5 + t) * 8 + i];
          for (let k = 0; k < 3; ++k) want[r * 3 + k] = b[k] + pooled.reduce((a, v, i) => a + v * W[k * 8 + i], 0);
        }
        expectClose(c.forward(x), want, 'float32', 4);
        expect(c.namedParameters().map(([n]) => n)).toContain('head.weight');
      }
      const s2s = new dr.DualRouteSeq2Seq(cfg);
      expect(new dr.DualRouteClassifier(s2s, 2).forward(ids(1, 4, 1)).shape).toEqual([1, 2]);
      expect(() => new dr.DualRouteClassifier(lm, 0)).toThrow(/positive integer for numClasses/);
      expect(() => new dr.DualRouteClassifier(lm, 2, 'max' as never)).toThrow(/'mean' or 'last'/);
      lm.dispose();
      s2s.dispose();
    });
  });
});
