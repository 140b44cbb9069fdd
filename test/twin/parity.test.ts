// The PyTorch twin (python/dualroute_twin) against dualroute: the same checkpoint and inputs give
// the same logits, losses and gradients of every parameter, for every layer kind, fusion and
// feed-forward kind, the encoder-decoder and the classification heads; in float64 (where any
// difference of definition shows at once) and in float32 (the dtype users train in).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as dr from '../../lib';
import { models } from '../../lib';
import { maxErrRatio } from '../reference';
import { describeWithTorch, runPython } from './python';

type Mode = 'train' | 'eval';
interface Case {
  name: string;
  kind: 'lm' | 'seq2seq' | 'classifier';
  config: object;
  modes: Mode[];
  classifier?: { classes: number; pooling: 'mean' | 'last' };
}

const lmBase = { vocabSize: 37, dModel: 16, nHeads: 4, nLayers: 2, maxSeq: 24, seed: 3 };
const CASES: Case[] = [
  { name: 'sliding window + full (gated per token), block window + full (softmax per channel), GQA', kind: 'lm', modes: ['train', 'eval'],
    config: { ...lmBase, nKvHeads: 2, layers: [{ local: 'window', window: 5, global: 'full', fusion: 'gated' }, { local: 'window', windowMode: 'block', window: 4, global: 'full', fusion: 'softmax', gateUnits: 'channel' }] } },
  { name: 'conv + segment (attention fusion), LSTM + segment (concat), GELU, untied', kind: 'lm', modes: ['train', 'eval'],
    config: { ...lmBase, ffn: 'gelu', tieEmbeddings: false, layers: [{ local: 'conv', convKernel: 3, global: 'segment', segment: 4, topK: 2, fusion: 'attention' }, { local: 'lstm', global: 'segment', segment: 5, topK: 3, fusion: 'concat' }] } },
  { name: 'routed (Mixture-of-Depths) with sum and per-channel gates', kind: 'lm', modes: ['train', 'eval'],
    config: { ...lmBase, nKvHeads: 1, layers: [{ local: 'window', window: 4, global: 'routed', capacity: 0.3, fusion: 'sum' }, { local: 'conv', global: 'routed', capacity: 0.5, fusion: 'gated', gateUnits: 'channel' }] } },
  { name: 'NSA with rule routing, NSA alone, no RoPE', kind: 'lm', modes: ['train', 'eval'],
    config: { ...lmBase, rope: false, nKvHeads: 2, layers: [{ local: 'lstm', global: 'nsa', segment: 4, topK: 2, window: 6, fusion: 'rule', rules: [{ ids: [1, 2, 3], route: 1 }, { range: [10, 20], route: 1 }] }, { local: 'none', global: 'nsa', segment: 3, topK: 3, window: 3 }] } },
  { name: 'random fusion (its expectation in eval)', kind: 'lm', modes: ['eval'],
    config: { ...lmBase, nLayers: 1, layer: { local: 'window', window: 3, global: 'full', fusion: 'random', randomProbs: [0.7, 0.3] } } },
  { name: 'MoE feed-forward, softmax router, top 2, dropless; local-only and global-only layers', kind: 'lm', modes: ['train', 'eval'],
    config: { ...lmBase, ffn: 'moe', moe: { experts: 4, topK: 2 }, layers: [{ local: 'none', global: 'full' }, { local: 'window', window: 6, global: 'none' }] } },
  { name: 'MoE feed-forward, sigmoid router, capacity factor 0.6 (tokens dropped)', kind: 'lm', modes: ['train', 'eval'],
    config: { ...lmBase, nLayers: 1, ffn: 'moe', ffnHidden: 12, moe: { experts: 3, topK: 2, score: 'sigmoid', capacityFactor: 0.6 }, layer: { local: 'conv', global: 'full', fusion: 'sum' } } },
  { name: 'encoder-decoder: window + full encoder, conv + full decoder', kind: 'seq2seq', modes: ['train', 'eval'],
    config: { vocabSize: 29, dModel: 16, nHeads: 2, encoderLayers: 2, decoderLayers: 2, maxSource: 24, maxTarget: 24, keep: 0.4, seed: 5,
      encoder: { local: 'window', window: 3, global: 'full', fusion: 'gated' }, decoder: { local: 'conv', global: 'full', fusion: 'sum' } } },
  { name: 'encoder-decoder: centred conv encoder, LSTM + segment decoder, GELU', kind: 'seq2seq', modes: ['train'],
    config: { vocabSize: 29, dModel: 16, nHeads: 4, nKvHeads: 2, encoderLayers: 1, decoderLayers: 1, maxSource: 24, maxTarget: 24, keep: 0.7, ffn: 'gelu', seed: 6,
      encoder: { local: 'conv', convKernel: 3, global: 'full', fusion: 'softmax' }, decoder: { local: 'lstm', global: 'segment', segment: 4, topK: 2, fusion: 'gated' } } },
  { name: 'classification head, mean pooling', kind: 'classifier', modes: ['train'], classifier: { classes: 3, pooling: 'mean' },
    config: { ...lmBase, layer: { local: 'window', window: 4, global: 'full' } } },
  { name: 'classification head, last-token pooling', kind: 'classifier', modes: ['train'], classifier: { classes: 5, pooling: 'last' },
    config: { ...lmBase, nLayers: 1, layer: { local: 'conv', global: 'segment', segment: 4, topK: 2, fusion: 'gated' } } },
];

const B = 2, S = 19;
// awkward sizes: 19 positions (not a multiple of any window, segment or block), ids across the vocabulary
function ids(seed: number, vocab: number, b = B, s = S): dr.Tensor {
  let x = seed * 2654435761 >>> 0;
  return dr.tensor(Int32Array.from({ length: b * s }, () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return (x >>> 8) % vocab;
  }), [b, s]);
}

type Model = dr.DualRouteLM | dr.DualRouteSeq2Seq | dr.DualRouteClassifier;

function build(c: Case): Model {
  if (c.kind === 'seq2seq') return new dr.DualRouteSeq2Seq(c.config as never);
  const lm = new dr.DualRouteLM(c.config as never);
  return c.kind === 'classifier' ? new dr.DualRouteClassifier(lm, c.classifier!.classes, c.classifier!.pooling) : lm;
}

function inputsOf(c: Case, i: number): Record<string, dr.Tensor> {
  if (c.kind === 'seq2seq') {
    const V = (c.config as { vocabSize: number }).vocabSize;
    return { src: ids(100 + i, V, B, 17), tgt: ids(200 + i, V), targets: ids(300 + i, V) };
  }
  const x = ids(10 + i, 37);
  if (c.kind === 'classifier') return { ids: x, labels: dr.tensor(Int32Array.from([1, c.classifier!.classes - 1]), [B]) };
  return { ids: x, targets: ids(20 + i, 37) };
}

// the Node side of one case: logits, loss and parameter gradients, read back
function runNode(m: Model, inp: Record<string, dr.Tensor>, mode: Mode): { logits: Float64Array; loss: number; grads: Map<string, Float64Array | null>; kept?: number[][] } {
  m.train(mode === 'train');
  m.zeroGrad();
  let logits!: dr.Tensor;
  const loss = dr.tidy(() => {
    if (m instanceof dr.DualRouteLM) {
      logits = dr.keep(m.forward(inp.ids));
      return m.loss(inp.ids, inp.targets).loss;
    }
    if (m instanceof dr.DualRouteSeq2Seq) {
      logits = dr.keep(m.forward(inp.src, inp.tgt));
      return dr.crossEntropy(logits, inp.targets);
    }
    logits = dr.keep(m.forward(inp.ids));
    return dr.crossEntropy(logits, inp.labels);
  });
  loss.backward();
  const grads = new Map<string, Float64Array | null>();
  for (const [n, p] of m.namedParameters()) grads.set(n, p.grad ? Float64Array.from(p.grad.dataSync()) : null);
  const out = { logits: Float64Array.from(logits.dataSync()), loss: loss.item(), grads, kept: m instanceof dr.DualRouteSeq2Seq ? m.keptPositions()! : undefined };
  logits.dispose();
  loss.dispose();
  return out;
}

const TOL = { float64: { atol: 1e-10, rtol: 1e-8 }, float32: { atol: 2e-5, rtol: 2e-4 } };

function close(what: string, got: ArrayLike<number>, want: ArrayLike<number>, dtype: 'float32' | 'float64', scale = 1): void {
  expect([what, got.length]).toEqual([what, want.length]);
  const t = TOL[dtype];
  // gradients of a loss are small numbers of mixed sizes: the budget scales with the largest
  let big = 0;
  for (let i = 0; i < want.length; ++i) big = Math.max(big, Math.abs(want[i]));
  const { ratio, at } = maxErrRatio(got, want, t.atol * scale * Math.max(1, big), t.rtol * scale);
  if (!(ratio <= 1)) throw new Error(`${what}: Node ${got[at]} vs PyTorch ${want[at]} at ${at} (${ratio.toFixed(2)}x the ${dtype} budget)`);
}

describeWithTorch('PyTorch twin parity', (py) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-twin-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  interface Run { c: Case; mode: Mode; dtype: 'float32' | 'float64'; out: string; node: ReturnType<typeof runNode> }
  const runs: Run[] = [];

  beforeAll(async () => {
    const job: object[] = [];
    for (const [i, c] of CASES.entries()) {
      const m = build(c);
      const file = path.join(dir, `case${i}.safetensors`);
      if (m instanceof dr.DualRouteClassifier) {
        await dr.saveCheckpoint(file, { model: m, generators: {}, config: { model: 'DualRouteLM', config: (m.backbone as dr.DualRouteLM).source } });
      } else {
        await models.saveModel(file, m);
      }
      const inp = inputsOf(c, i);
      const inFile = path.join(dir, `case${i}.inputs.safetensors`);
      await dr.saveSafetensors(inFile, inp);
      for (const dtype of ['float64', 'float32'] as const) {
        if (dtype === 'float64') m.to('float64');
        else m.to('float32');
        for (const mode of c.modes) {
          const out = path.join(dir, `case${i}.${dtype}.${mode}.out.safetensors`);
          runs.push({ c, mode, dtype, out, node: runNode(m, inp, mode) });
          job.push({ model: file, inputs: inFile, out, dtype, mode, classifier: c.classifier });
        }
      }
      Object.values(inp).forEach((t) => t.dispose());
      m.dispose();
    }
    fs.writeFileSync(path.join(dir, 'job.json'), JSON.stringify(job));
    runPython(py, ['python/parity.py', path.join(dir, 'job.json')]);
  }, 600_000);

  for (const c of CASES)
    for (const dtype of ['float64', 'float32'] as const)
      for (const mode of c.modes)
        test(`${c.name} (${dtype}, ${mode})`, () => {
          const r = runs.find((x) => x.c === c && x.dtype === dtype && x.mode === mode)!;
          const { tensors } = dr.loadSafetensorsSync(r.out);
          const arr = (n: string) => Float64Array.from(tensors[n].dataSync());
          try {
            if (r.node.kept) expect(r.node.kept.flat()).toEqual(Array.from(tensors.kept.dataSync()));
            close('logits', r.node.logits, arr('logits'), dtype);
            close('loss', [r.node.loss], arr('loss'), dtype);
            let compared = 0;
            for (const [n, g] of r.node.grads) {
              const t = tensors[`grad.${n}`];
              if (!t) {
                // a parameter PyTorch's graph never reached must get no gradient here either
                if (g) expect([n, Math.max(...Array.from(g, Math.abs))]).toEqual([n, 0]);
                continue;
              }
              expect([n, g !== null]).toEqual([n, true]);
              close(`grad of ${n}`, g!, Float64Array.from(t.dataSync()), dtype, 4);
              compared++;
            }
            expect(compared).toBeGreaterThan(r.node.grads.size / 2);
          } finally {
            Object.values(tensors).forEach((t) => t.dispose());
          }
        });
});
