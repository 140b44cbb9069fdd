// The dual-routing designs a user arrives with, each a config or a few lines, trained for a few
// hundred steps on a small synthetic task (the loss printed first and last):
//   1 lstm-attention  an LSTM low path and a multi-head attention high path over the same
//                     embeddings, independent sigmoid gates, h = p_l h_l + p_h h_h, a vocabulary
//                     projection (also: concat fusion, and rule routing by token class)
//   2 block-global    global attention plus blocked local attention, summed, own projections each
//   3 seq2seq         the routed encoder-decoder on a reverse task
//   4 segments        a long input cut into segments, one shared model over each, a learned weight
//                     per segment, then a classifier
//   5 random          two paths chosen at random per token with probability 0.7 / 0.3 in training
//
//   node dist/examples/designs.js [--design 1..5 | all] [--steps 300]
import * as dr from '../lib';
import { nn, optim } from '../lib';

const V = 32;

// Sequences whose next token repeats the one `period` back (a random block per row): the local
// path alone cannot see far enough once period > its window, attention can.
function periodic(B: number, S: number, period: number, g: dr.Generator): { x: dr.Tensor; y: dr.Tensor } {
  const r = dr.randint(0, V, [B, period], { dtype: 'int32', generator: g }).dataSync();
  const ids = new Int32Array(B * (S + 1));
  for (let b = 0; b < B; ++b) for (let t = 0; t <= S; ++t) ids[b * (S + 1) + t] = r[b * period + (t % period)];
  const all = dr.tensor(ids, [B, S + 1]);
  const x = dr.narrow(all, 1, 0, S).contiguous(), y = dr.narrow(all, 1, 1, S).contiguous();
  all.dispose();
  return { x, y };
}

// A training loop over fresh batches: returns the losses.
function fit(params: dr.Tensor[], steps: number, lossOf: (g: dr.Generator) => dr.Tensor, lr = 3e-3): number[] {
  const opt = new optim.AdamW(params, { lr, weightDecay: 0 });
  const g = new dr.Generator(1);
  const losses: number[] = [];
  for (let s = 0; s < steps; ++s) {
    opt.zeroGrad();
    losses.push(dr.tidy(() => {
      const l = lossOf(g);
      dr.backward(l);
      return l.item();
    }));
    optim.clipGradNorm(params, 1).dispose();
    opt.step();
  }
  return losses;
}

const lmLoss = (m: dr.DualRouteLM) => (g: dr.Generator) => {
  const { x, y } = periodic(8, 24, 9, g);
  return m.loss(x, y).loss;
};

const small = { vocabSize: V, dModel: 32, nHeads: 4, nLayers: 2, maxSeq: 64, seed: 3 };

export const designs: Record<string, (steps: number) => number[]> = {
  // the classic low/high dual routing: LSTM + attention, sigmoid gates from Dense layers
  'lstm-attention': (steps) => {
    const m = new dr.DualRouteLM({ ...small, layer: { local: 'lstm', global: 'full', fusion: 'gated' } });
    try {
      return fit(m.parameters(), steps, lmLoss(m));
    } finally {
      m.dispose();
    }
  },
  'lstm-attention-concat': (steps) => {
    const m = new dr.DualRouteLM({ ...small, layer: { local: 'lstm', global: 'full', fusion: 'concat' } });
    try {
      return fit(m.parameters(), steps, lmLoss(m));
    } finally {
      m.dispose();
    }
  },
  // rule routing by token class: ids below V/2 take the high path, the others the low one
  'lstm-attention-rule': (steps) => {
    const m = new dr.DualRouteLM({ ...small, layer: { local: 'lstm', global: 'full', fusion: 'rule', rules: [{ range: [0, V / 2], route: 1 }], ruleDefault: 0 } });
    try {
      return fit(m.parameters(), steps, lmLoss(m));
    } finally {
      m.dispose();
    }
  },
  'block-global': (steps) => {
    const m = new dr.DualRouteLM({ ...small, layer: { local: 'window', windowMode: 'block', window: 4, global: 'full', fusion: 'sum' } });
    try {
      return fit(m.parameters(), steps, lmLoss(m));
    } finally {
      m.dispose();
    }
  },
  // reverse a sequence with the routed encoder-decoder (the decoder reads the kept half of the states)
  seq2seq: (steps) => {
    const m = new dr.DualRouteSeq2Seq({ vocabSize: V + 1, dModel: 32, nHeads: 4, encoderLayers: 2, decoderLayers: 2, maxSource: 16, maxTarget: 16, keep: 0.75, seed: 3 });
    const BOS = V;
    try {
      return fit(m.parameters(), steps, (g) => {
        const B = 8, S = 8;
        const src = dr.randint(0, V, [B, S], { dtype: 'int32', generator: g });
        const sv = src.dataSync();
        const rev = Int32Array.from({ length: B * S }, (_, i) => sv[Math.floor(i / S) * S + (S - 1 - (i % S))]);
        const tin = Int32Array.from({ length: B * S }, (_, i) => (i % S === 0 ? BOS : rev[i - 1]));
        return m.loss(src, dr.tensor(tin, [B, S]), dr.tensor(rev, [B, S]));
      });
    } finally {
      m.dispose();
    }
  },
  // a long input in segments: one shared backbone per segment, a learned weight per segment
  segments: (steps) => {
    const backbone = new dr.DualRouteLM({ ...small, maxSeq: 16, layer: { local: 'conv', global: 'full', fusion: 'gated' } });
    const score = new nn.Linear(32, 1, { generator: new dr.Generator(4) });
    const head = new nn.Linear(32, 2, { generator: new dr.Generator(5) });
    const nseg = 4, L = 16;
    try {
      return fit([...backbone.parameters(), ...score.parameters(), ...head.parameters()], steps, (g) => {
        const B = 8;
        const ids = dr.randint(0, V, [B, nseg * L], { dtype: 'int32', generator: g });
        const v = ids.dataSync();
        // the label lives in the third segment: are most of its tokens in the lower half?
        const label = dr.tensor(Int32Array.from({ length: B }, (_, b) => {
          let low = 0;
          for (let t = 0; t < L; ++t) low += v[b * nseg * L + 2 * L + t] < V / 2 ? 1 : 0;
          return low * 2 > L ? 1 : 0;
        }), [B]);
        const segs = dr.reshape(ids, [B * nseg, L]);
        const h = dr.reshape(dr.mean(backbone.hidden(segs), 1), [B, nseg, 32]);  // a vector per segment
        const w = dr.softmax(score.forward(h), 1);                                    // a weight per segment
        const pooled = dr.sum(dr.mul(h, w), 1);
        return dr.crossEntropy(head.forward(pooled), label);
      }, 3e-3);
    } finally {
      [backbone, score, head].forEach((x) => x.dispose());
    }
  },
  // two paths chosen at random per token in training (0.7 local, 0.3 global); their expectation in eval
  random: (steps) => {
    const m = new dr.DualRouteLM({ ...small, layer: { local: 'window', window: 4, global: 'full', fusion: 'random', randomProbs: [0.7, 0.3] } });
    try {
      return fit(m.parameters(), steps, lmLoss(m));
    } finally {
      m.dispose();
    }
  },
};

function main(): void {
  const args = process.argv.slice(2);
  let which = 'all', steps = 300;
  for (let i = 0; i < args.length; ++i) {
    if (args[i] === '--design' && i + 1 < args.length) which = args[++i];
    else if (args[i] === '--steps' && i + 1 < args.length) steps = Number(args[++i]);
    else {
      console.error(`usage: node dist/examples/designs.js [--design ${Object.keys(designs).join(' | ')} | all] [--steps N]`);
      process.exit(2);
    }
  }
  if (!(Number.isInteger(steps) && steps >= 1)) {
    console.error('--steps must be a positive integer');
    process.exit(2);
  }
  const names = which === 'all' ? Object.keys(designs) : [which];
  for (const n of names) {
    if (!designs[n]) {
      console.error(`unknown design '${n}' (known: ${Object.keys(designs).join(', ')})`);
      process.exit(2);
    }
    const t0 = Date.now();
    const l = designs[n](steps);
    const avg = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const k = Math.max(1, Math.floor(steps / 10));
    console.log(`${n.padEnd(22)} loss ${avg(l.slice(0, k)).toFixed(3)} -> ${avg(l.slice(-k)).toFixed(3)} in ${steps} steps (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  }
}

if (require.main === module) main();
