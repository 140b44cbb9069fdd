// `npm start`: what dualroute is for, in about two minutes on two CPU cores, with nothing to
// download. It trains a small dual-routing language model (sliding-window local attention in
// every layer, a gated global path in every other layer) on a corpus the install already has
// (TypeScript declaration files), beside a local-only baseline of the same size trained on the
// same batches; then prints the two validation losses, a few samples, how the router split the
// work, and where the checkpoints, metrics and plots are.
//
//   npm start                     # defaults
//   npm start -- --steps 100      # shorter (also: --out DIR, --seed N, --quiet)
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import * as dr from '../lib';
import { defaultCorpus } from '../lib/cli/presets';

interface Options {
  steps: number;
  out: string;
  seed: number;
  quiet: boolean;
}

const SEQ = 128;
const BATCH = 8;

function dualConfig(vocabSize: number): dr.DualRouteLMConfig {
  return {
    vocabSize, dModel: 128, nHeads: 4, nLayers: 4, maxSeq: SEQ, seed: 0,
    pattern: [{ local: 'window', window: 16, global: 'none' }, { local: 'window', window: 16, global: 'full', fusion: 'gated' }],
  };
}

// the local-only baseline: the same layers without a global path, its feed-forward widened to the
// dual model's parameter count
function baselineConfig(vocabSize: number, target: number): dr.DualRouteLMConfig {
  const base = { ...dualConfig(vocabSize), pattern: [{ local: 'window' as const, window: 16, global: 'none' as const }] };
  const count = (h: number) => {
    const m = new dr.DualRouteLM({ ...base, ffnHidden: h });
    const n = m.numParameters();
    m.dispose();
    return n;
  };
  const h0 = dr.models.resolveConfig(base).ffnHidden;
  const per = count(h0 + 1) - count(h0);
  return { ...base, ffnHidden: h0 + Math.round((target - count(h0)) / per) };
}

async function main(): Promise<void> {
  const o = new Command('npm start')
    .description('Train a small dual-routing language model beside a local-only baseline on a built-in corpus.')
    .option('--steps <n>', 'training steps of each model', (v) => parseInt(v, 10), 420)
    .option('--out <dir>', 'run folder', path.join('runs', 'main'))
    .option('--seed <n>', 'seed', (v) => parseInt(v, 10), 0)
    .option('--quiet', 'no progress bars', false)
    .parse()
    .opts<Options>();
  if (!Number.isInteger(o.steps) || o.steps < 1) throw new dr.ValueError(`--steps: Expected an integer >= 1 but received ${o.steps}`);
  const t0 = Date.now();
  const device = dr.cudaAvailable() ? 'cuda' : 'cpu';
  dr.setDefaultDevice(device);
  const tok = new dr.ByteTokenizer();
  const files = defaultCorpus(2 << 20);
  const tokens = dr.tokenizeCorpus(dr.readTextCorpus(files), tok);
  const { train, val } = dr.splitTrainVal(tokens, 0.05, { seqLen: SEQ });
  console.log(`dualroute: ${files.length} declaration files as the corpus (${(tokens.length / 1e6).toFixed(2)} M byte tokens; ${val.length} held out), ${device}, ${dr.numThreads()} threads`);

  const dualCfg = dualConfig(tok.vocabSize);
  const dual = new dr.DualRouteLM(dualCfg);
  const local = new dr.DualRouteLM(baselineConfig(tok.vocabSize, dual.numParameters()));
  const runs = [
    { name: 'dual (local window + gated global)', dir: path.join(o.out, 'dual'), model: dual },
    { name: 'local-only baseline', dir: path.join(o.out, 'local'), model: local },
  ];
  const valBatches = () => new dr.LMBatcher(val, { seqLen: SEQ, batchSize: BATCH, padId: tok.padId ?? 0 }).evalBatches();
  const results: Array<{ name: string; params: number; r: dr.FitResult; seconds: number }> = [];
  for (const run of runs) {
    fs.rmSync(run.dir, { recursive: true, force: true });
    // the same batches for both models: the same seed of the batcher
    const batcher = new dr.LMBatcher(train, { seqLen: SEQ, batchSize: BATCH, seed: o.seed });
    console.log(`\ntraining ${run.name}: ${(run.model.numParameters() / 1e6).toFixed(2)} M parameters, ${o.steps} steps of ${BATCH} x ${SEQ} tokens`);
    const t = Date.now();
    const r = await new dr.Trainer({
      model: run.model, train: { next: () => batcher.next(), state: () => batcher.state(), restore: (s) => batcher.restore(s as dr.LMBatcherState) },
      val: valBatches, evalBatches: 6, steps: o.steps, lr: 3e-3, evalEvery: Math.max(1, Math.floor(o.steps / 4)), outDir: run.dir, seed: o.seed,
      progress: !o.quiet, logEvery: 10,
    }).fit();
    results.push({ name: run.name, params: run.model.numParameters(), r, seconds: (Date.now() - t) / 1000 });
    await dr.plotRun(run.dir);
  }

  console.log('\nvalidation (the same held-out windows):');
  for (const x of results) {
    const e = x.r.lastEval!;
    console.log(`  ${x.name.padEnd(36)} loss ${e.loss.toFixed(4)}  perplexity ${e.perplexity.toFixed(2)}  next-byte accuracy ${(e.accuracy * 100).toFixed(1)}%  (${(x.params / 1e6).toFixed(2)} M parameters, ${x.seconds.toFixed(0)} s)`);
  }

  console.log('\nsamples of the dual model (temperature 0.7):');
  dual.eval();
  for (const [i, prompt] of ['export interface ', 'function ', '     * @param '].entries()) {
    const out = await dual.generateTokens(tok.encode(prompt), { maxTokens: 80, temperature: 0.7, topK: 40, seed: o.seed + i });
    const text = (prompt + tok.decode(out[0])).replace(/\s+/g, ' ');
    console.log(`  > ${text}`);
  }

  const sample = Array.from(val.subarray(0, SEQ));
  const ids = dr.tensor(Int32Array.from(sample), [1, sample.length]);
  const trace = dual.routingTrace(ids);
  ids.dispose();
  const plot = await dr.plotRouting(runs[0].dir, trace, sample.map((t) => tok.decode([t], { skipSpecial: false })));
  console.log('\nhow the router split the work on a validation text (mean gate local / global per layer with a global path):');
  trace.layers.forEach((l, i) => {
    if (!l.gates) return;
    const g = l.gates.reduce((a, [x, y]) => [a[0] + x / l.gates!.length, a[1] + y / l.gates!.length], [0, 0]);
    console.log(`  layer ${i}: local ${g[0].toFixed(3)}  global ${g[1].toFixed(3)}`);
  });

  console.log(`\nrun folder ${o.out}:`);
  for (const run of runs) console.log(`  ${run.dir}: model.safetensors, checkpoint.safetensors, metrics.jsonl, loss.png`);
  console.log(`  routing heatmap: ${plot.png}`);
  console.log(`  try: npm run cli -- sample ${runs[0].dir} --prompt "export function "   (npx dualroute ... where dualroute is installed as a package)`);
  console.log(`\ndone in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  dual.dispose();
  local.dispose();
}

main().catch((e) => {
  console.error(e instanceof dr.DualrouteError ? `npm start: ${e.message}` : e);
  process.exit(1);
});
