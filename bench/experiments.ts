// `npm run experiments`: the evidence of the training issue. On three tasks (associative recall,
// long-range copy, the default corpus) it trains eight variants of DualRouteLM at equal parameter
// count (the feed-forward width is set per variant to match) and equal steps: local-only,
// global-only, dual 'sum', dual 'gated', dual 'routed' (capacity 0.25), segment routing,
// NSA-style, and dual 'gated' with an MoE feed-forward block. Each run is its own child process
// (so its peak resident memory is its own); the table gives the final validation loss and
// accuracy, the median train step time, tokens/s and peak memory, and a plot shows the
// validation curves. Outputs: bench/results/experiments.{json,md,svg,png} (--out to change).
//
//   npm run experiments                    # everything (about 15 minutes on two cores)
//   npm run experiments -- --steps 50 --tasks recall --variants local-only,dual-gated
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command } from 'commander';
import * as dr from '../lib';
import { defaultCorpus } from '../lib/cli/presets';

type LayerConfig = dr.LayerConfig;

interface TaskSpec {
  name: string;
  title: string;
  seq: number;
  batch: number;
  window: number;
  segment: number;
  /** vocabulary and the batch sources (train, validation) */
  make(seed: number): { vocab: number; train: () => dr.LMBatch; val: () => dr.LMBatch[]; chance: number | null };
}

const TASKS: TaskSpec[] = [
  {
    name: 'recall', title: 'associative recall (24 pairs)', seq: 50, batch: 32, window: 8, segment: 8,
    make(seed) {
      const t = dr.associativeRecall({ vocab: 64, pairs: 24, seqLen: 50, seed });
      const v = dr.associativeRecall({ vocab: 64, pairs: 24, seqLen: 50, seed: seed + 7919 });
      const val = Array.from({ length: 8 }, () => v.nextArrays(64));
      return { vocab: t.vocabSize, chance: t.chance, train: () => t.next(32), val: () => val.map((r) => ({ ids: dr.tensor(r.ids, [64, 50]), targets: dr.tensor(r.targets, [64, 50]) })) };
    },
  },
  {
    name: 'copy', title: 'long-range copy (24 tokens)', seq: 48, batch: 32, window: 8, segment: 8,
    make(seed) {
      const t = dr.longRangeCopy({ vocab: 32, length: 24, seqLen: 48, seed });
      const v = dr.longRangeCopy({ vocab: 32, length: 24, seqLen: 48, seed: seed + 7919 });
      const val = Array.from({ length: 8 }, () => v.nextArrays(64));
      return { vocab: t.vocabSize, chance: t.chance, train: () => t.next(32), val: () => val.map((r) => ({ ids: dr.tensor(r.ids, [64, 48]), targets: dr.tensor(r.targets, [64, 48]) })) };
    },
  },
  {
    name: 'corpus', title: 'default corpus (bytes)', seq: 128, batch: 16, window: 16, segment: 16,
    make(seed) {
      const tok = new dr.ByteTokenizer();
      const tokens = dr.tokenizeCorpus(dr.readTextCorpus(defaultCorpus(2 << 20)), tok);
      const { train, val } = dr.splitTrainVal(tokens, 0.05, { seqLen: 128 });
      const b = new dr.LMBatcher(train, { seqLen: 128, batchSize: 16, seed });
      const vb = new dr.LMBatcher(val, { seqLen: 128, batchSize: 16, padId: tok.padId ?? 0 });
      return { vocab: tok.vocabSize, chance: null, train: () => b.next(), val: () => Array.from(vb.evalBatches()).slice(0, 12) };
    },
  },
];

interface VariantSpec {
  name: string;
  layer(t: TaskSpec): LayerConfig;
  moe?: boolean;
}

const VARIANTS: VariantSpec[] = [
  { name: 'local-only', layer: (t) => ({ local: 'window', window: t.window, global: 'none' }) },
  { name: 'global-only', layer: () => ({ local: 'none', global: 'full' }) },
  { name: 'dual-sum', layer: (t) => ({ local: 'window', window: t.window, global: 'full', fusion: 'sum' }) },
  { name: 'dual-gated', layer: (t) => ({ local: 'window', window: t.window, global: 'full', fusion: 'gated' }) },
  { name: 'dual-routed', layer: (t) => ({ local: 'window', window: t.window, global: 'routed', capacity: 0.25, fusion: 'gated' }) },
  { name: 'segment', layer: (t) => ({ local: 'window', window: t.window, global: 'segment', segment: t.segment, topK: 2, fusion: 'gated' }) },
  { name: 'nsa', layer: (t) => ({ local: 'none', global: 'nsa', segment: t.segment, topK: 2, window: t.window }) },
  { name: 'dual-gated-moe', layer: (t) => ({ local: 'window', window: t.window, global: 'full', fusion: 'gated' }), moe: true },
];

const D_MODEL = 64, HEADS = 4, LAYERS = 2;

function config(t: TaskSpec, v: VariantSpec, vocab: number, ffnHidden?: number): dr.DualRouteLMConfig {
  return {
    vocabSize: vocab, dModel: D_MODEL, nHeads: HEADS, nLayers: LAYERS, maxSeq: t.seq, seed: 0, layer: v.layer(t),
    ...(v.moe ? { ffn: 'moe' as const, moe: { experts: 4, topK: 2 } } : {}), ...(ffnHidden ? { ffnHidden } : {}),
  };
}

function params(c: dr.DualRouteLMConfig): number {
  const m = new dr.DualRouteLM(c);
  const n = m.numParameters();
  m.dispose();
  return n;
}

// the feed-forward width that brings the variant closest to `target` parameters
function matched(t: TaskSpec, v: VariantSpec, vocab: number, target: number): dr.DualRouteLMConfig {
  const h0 = dr.models.resolveConfig(config(t, v, vocab)).ffnHidden;
  const a = params(config(t, v, vocab, h0)), per = params(config(t, v, vocab, h0 + 1)) - a;
  const h = Math.max(1, h0 + Math.round((target - a) / per));
  return config(t, v, vocab, h);
}

interface RunResult {
  task: string;
  variant: string;
  params: number;
  steps: number;
  valLoss: number;
  valAccuracy: number;
  chance: number | null;
  stepMs: number;
  stepMsSpread: [number, number];
  tokensPerSecond: number;
  peakRssMiB: number;
  curve: Array<{ step: number; loss: number; accuracy: number }>;
}

const median = (x: number[]) => {
  const s = [...x].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
};

// one run, in this (child) process
async function child(taskName: string, variantName: string, steps: number, evalEvery: number, seed: number): Promise<RunResult> {
  dr.setDefaultDevice(dr.cudaAvailable() ? 'cuda' : 'cpu');
  const t = TASKS.find((x) => x.name === taskName)!;
  const v = VARIANTS.find((x) => x.name === variantName)!;
  const src = t.make(seed);
  const target = params(config(t, VARIANTS.find((x) => x.name === 'dual-gated')!, src.vocab));
  const cfg = matched(t, v, src.vocab, target);
  const model = new dr.DualRouteLM(cfg);
  const times: number[] = [];
  const curve: RunResult['curve'] = [];
  let last = performance.now();
  const r = await new dr.Trainer({
    model, train: { next: src.train }, val: src.val, steps, lr: 3e-3, evalEvery, seed, progress: false, handleSignals: false,
    callbacks: {
      onStep: (i) => {
        const now = performance.now();
        if (i.step > 5) times.push(now - last);  // the first steps warm the caches
        last = now;
      },
      onEval: (m, step) => {
        curve.push({ step, loss: m.loss, accuracy: m.accuracy });
        last = performance.now();
      },
    },
  }).fit();
  const stepMs = median(times);
  const sorted = [...times].sort((a, b) => a - b);
  const res: RunResult = {
    task: t.name, variant: v.name, params: model.numParameters(), steps: r.steps, valLoss: r.lastEval!.loss, valAccuracy: r.lastEval!.accuracy, chance: src.chance,
    stepMs, stepMsSpread: [sorted[Math.floor(sorted.length * 0.1)], sorted[Math.floor(sorted.length * 0.9)]],
    tokensPerSecond: (t.batch * t.seq * 1000) / stepMs, peakRssMiB: process.resourceUsage().maxRSS / 1024, curve,
  };
  model.dispose();
  return res;
}

function table(results: RunResult[]): string {
  const lines: string[] = [];
  for (const t of TASKS) {
    const rows = results.filter((r) => r.task === t.name);
    if (!rows.length) continue;
    const chance = rows[0].chance;
    lines.push(`**${t.title}** (seq ${t.seq}, batch ${t.batch}, local window ${t.window}${chance !== null ? `; chance accuracy ${(chance * 100).toFixed(1)}%` : ''})`, '');
    lines.push('| variant | parameters | val loss | val accuracy | step (ms, median; p10..p90) | tokens/s | peak RSS (MiB) |');
    lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const r of rows) {
      lines.push(`| ${r.variant} | ${r.params} | ${r.valLoss.toFixed(3)} | ${(r.valAccuracy * 100).toFixed(1)}% | ${r.stepMs.toFixed(1)} (${r.stepMsSpread[0].toFixed(1)}..${r.stepMsSpread[1].toFixed(1)}) | ${Math.round(r.tokensPerSecond)} | ${Math.round(r.peakRssMiB)} |`);
    }
    lines.push('');
  }
  return lines.join('\n');
}

function curvesSpec(results: RunResult[]): object {
  const values = results.flatMap((r) => r.curve.map((p) => ({ task: TASKS.find((t) => t.name === r.task)!.title, variant: r.variant, step: p.step, loss: p.loss })));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: 'Validation loss by variant (equal parameters and steps)',
    data: { values },
    facet: { column: { field: 'task', type: 'nominal', title: null } },
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: 260, height: 200,
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'step', type: 'quantitative', title: 'step' },
        y: { field: 'loss', type: 'quantitative', title: 'validation loss', scale: { zero: false } },
        color: { field: 'variant', type: 'nominal', title: 'variant' },
      },
    },
  };
}

async function main(): Promise<void> {
  const o = new Command('npm run experiments')
    .option('--steps <n>', 'training steps per run', (v) => parseInt(v, 10), 400)
    .option('--eval-every <n>', 'steps between evaluations', (v) => parseInt(v, 10), 50)
    .option('--tasks <list>', 'comma-separated: recall,copy,corpus', 'recall,copy,corpus')
    .option('--variants <list>', `comma-separated: ${VARIANTS.map((v) => v.name).join(',')}`, VARIANTS.map((v) => v.name).join(','))
    .option('--seed <n>', 'seed', (v) => parseInt(v, 10), 0)
    .option('--out <dir>', 'output folder', path.join('bench', 'results'))
    .option('--child <task:variant>', '(internal) run one experiment and print its JSON')
    .parse()
    .opts<{ steps: number; evalEvery: number; tasks: string; variants: string; seed: number; out: string; child?: string }>();
  if (o.child) {
    const [task, variant] = o.child.split(':');
    process.stdout.write(JSON.stringify(await child(task, variant, o.steps, o.evalEvery, o.seed)) + '\n');
    return;
  }
  const tasks = o.tasks.split(',');
  const variants = o.variants.split(',');
  for (const t of tasks) if (!TASKS.some((x) => x.name === t)) throw new dr.ValueError(`--tasks: unknown task '${t}' (known: ${TASKS.map((x) => x.name).join(', ')})`);
  for (const v of variants) if (!VARIANTS.some((x) => x.name === v)) throw new dr.ValueError(`--variants: unknown variant '${v}' (known: ${VARIANTS.map((x) => x.name).join(', ')})`);
  const results: RunResult[] = [];
  const t0 = Date.now();
  for (const t of tasks) {
    for (const v of variants) {
      const r = spawnSync(process.execPath, [__filename, '--child', `${t}:${v}`, '--steps', String(o.steps), '--eval-every', String(o.evalEvery), '--seed', String(o.seed)], { encoding: 'utf8', maxBuffer: 1 << 24 });
      if (r.status !== 0) throw new Error(`experiment ${t}:${v} failed:\n${r.stderr}`);
      const res = JSON.parse(r.stdout.trim().split('\n').pop()!) as RunResult;
      results.push(res);
      console.log(`${t.padEnd(7)} ${v.padEnd(15)} params ${res.params}  val loss ${res.valLoss.toFixed(3)}  acc ${(res.valAccuracy * 100).toFixed(1)}%  step ${res.stepMs.toFixed(1)} ms  ${Math.round(res.tokensPerSecond)} tok/s  peak ${Math.round(res.peakRssMiB)} MiB`);
    }
  }
  fs.mkdirSync(o.out, { recursive: true });
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const header = `Measured ${new Date().toISOString().slice(0, 10)} on ${cpu} (${dr.numThreads()} threads), ${dr.cudaAvailable() ? 'CUDA' : 'CPU'}; DualRouteLM dModel ${D_MODEL}, ${LAYERS} layers, ${HEADS} heads, ${o.steps} steps, AdamW lr 3e-3 with warmup and cosine decay, seed ${o.seed}. Command: \`npm run experiments\`.\n`;
  const md = `${header}\n${table(results)}`;
  fs.writeFileSync(path.join(o.out, 'experiments.json'), JSON.stringify({ date: new Date().toISOString(), cpu, steps: o.steps, results }, null, 2));
  fs.writeFileSync(path.join(o.out, 'experiments.md'), md);
  const plot = await dr.writePlots(o.out, 'experiments', curvesSpec(results));
  console.log(`\n${md}\nwritten: ${path.join(o.out, 'experiments.md')}, experiments.json, ${plot.png} (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
