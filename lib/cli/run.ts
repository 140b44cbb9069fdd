// The commands of the `dualroute` CLI as functions (lib/cli/index.ts parses the flags): train,
// eval, sample, inspect. A run folder holds run.json (what the run is: model kind and config,
// tokenizer, task, data, flags), checkpoint.safetensors (the whole training state), best and
// final model.safetensors (saveModel's layout), metrics.jsonl, and the plots (loss, routing).
// Errors a user can fix (missing files, bad configs, a vocabulary too small for the tokenizer)
// are CliErrors with the message to print; the CLI exits 2 on them.
import * as fs from 'fs';
import * as path from 'path';
import { DualRouteLM } from '../models/dual_route_lm';
import { DualRouteClassifier, DualRouteSeq2Seq } from '../models/seq2seq';
import { DualRouteLMConfig, DualRouteSeq2SeqConfig } from '../models';
import { loadModel } from '../models/io';
import { loadCheckpoint } from '../train/checkpoint';
import { readSafetensorsHeader } from '../train/safetensors';
import { Module } from '../nn/module';
import { Tensor, tidy } from '../tensor';
import { setDefaultDevice, cudaAvailable, Device } from '../device';
import { Tokenizer, TokenizerSpec, loadTokenizer } from '../train/tokenizers';
import {
  readTextCorpus, tokenizeCorpus, splitTrainVal, LMBatcher, readJsonl, ClassificationDataset, PairDataset,
  associativeRecall, longRangeCopy, localPattern, SyntheticTask, ClassificationRecord, PairRecord,
} from '../train/data';
import { Trainer, TrainSource, EvalSource, Batch, EvalMetrics, FitResult, Task } from '../train/trainer';
import { plotRun, plotRouting } from '../train/plots';
import { defaultCorpus, PRESETS } from './presets';

/** An error of the user's making: the CLI prints the message and exits 2. */
export class CliError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CliError';
  }
}

export interface RunInfo {
  format: 1;
  kind: 'DualRouteLM' | 'DualRouteSeq2Seq' | 'DualRouteClassifier';
  task: Task;
  /** The model's config (for a classifier, its backbone's). */
  config: DualRouteLMConfig | DualRouteSeq2SeqConfig;
  classifier?: { classes: number; labels: Array<string | number>; pooling: 'mean' | 'last' };
  tokenizer: TokenizerSpec | { kind: 'none'; vocabSize: number };
  data: string[];
  args: Record<string, unknown>;
}

type Out = (line: string) => void;
const stdout: Out = (l) => process.stdout.write(l + '\n');

function readJsonFile(file: string, what: string): unknown {
  if (!fs.existsSync(file)) throw new CliError(`${what} ${file}: no such file`);
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CliError(`${what} ${file}: not valid JSON (${(e as Error).message})`);
  }
}

function writeJsonAtomic(file: string, obj: unknown): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(obj, null, 2) + '\n');
  fs.renameSync(tmp, file);
}

export function useDevice(d: string | undefined): Device {
  const want = d ?? 'auto';
  if (want === 'auto') {
    const dev: Device = cudaAvailable() ? 'cuda' : 'cpu';
    setDefaultDevice(dev);
    return dev;
  }
  if (want !== 'cpu' && want !== 'cuda') throw new CliError(`--device: Expected 'cpu', 'cuda' or 'auto' but received '${want}'`);
  if (want === 'cuda' && !cudaAvailable()) throw new CliError('--device cuda: no CUDA device is available (the addon was built without CUDA or no GPU is visible)');
  setDefaultDevice(want);
  return want;
}

// ---- train -----------------------------------------------------------------------------------

export interface TrainArgs {
  out: string;
  config?: string;
  preset?: string;
  data?: string[];
  task?: Task;
  tokenizer?: string;
  steps: number;
  batch: number;
  seq: number;
  lr?: number;
  warmup?: number;
  accumulate?: number;
  clip?: number;
  precision?: 'float32' | 'bfloat16';
  seed?: number;
  evalEvery?: number;
  evalBatches?: number;
  valFraction?: number;
  checkpointEvery?: number;
  patience?: number;
  resume?: boolean;
  progress?: boolean;
  device?: string;
  pooling?: 'mean' | 'last';
  plots?: boolean;
}

interface Prepared {
  model: Module;
  info: RunInfo;
  train: TrainSource<Batch>;
  val?: EvalSource<Batch>;
  tokenizer: Tokenizer | null;
  /** A validation row for the routing plot (lm). */
  sample?: number[];
}

function synthetic(spec: string, seq: number, seed: number): { task: SyntheticTask; val: SyntheticTask } {
  const name = spec.slice('synthetic:'.length);
  const make = (s: number): SyntheticTask => {
    switch (name) {
      case 'recall': return associativeRecall({ vocab: 64, pairs: Math.max(1, Math.min(16, Math.floor((seq - 2) / 4))), seqLen: seq, seed: s });
      case 'copy': return longRangeCopy({ vocab: 32, length: Math.max(1, Math.floor(seq / 2) - 1), seqLen: seq, seed: s });
      case 'pattern': return localPattern({ vocab: 32, seqLen: seq, seed: s });
      default: throw new CliError(`--data ${spec}: Expected synthetic:recall, synthetic:copy or synthetic:pattern`);
    }
  };
  return { task: make(seed), val: make(seed + 1_000_003) };
}

function modelConfig(a: TrainArgs): Record<string, unknown> {
  if (a.config && a.preset) throw new CliError('give --config or --preset, not both');
  if (a.config) {
    const c = readJsonFile(a.config, '--config');
    if (c === null || typeof c !== 'object' || Array.isArray(c)) throw new CliError(`--config ${a.config}: Expected a JSON object (a model config)`);
    return c as Record<string, unknown>;
  }
  const name = a.preset ?? 'small';
  const p = PRESETS[name];
  if (!p) throw new CliError(`--preset: Expected one of ${Object.keys(PRESETS).join(', ')} but received '${name}'`);
  return JSON.parse(JSON.stringify(p));
}

function prepare(a: TrainArgs): Prepared {
  const task: Task = a.task ?? 'lm';
  if (!['lm', 'classify', 'seq2seq'].includes(task)) throw new CliError(`--task: Expected lm, classify or seq2seq but received '${task}'`);
  const data = a.data && a.data.length ? a.data : task === 'lm' ? defaultCorpus() : [];
  if (!data.length) throw new CliError(`--data: ${task} needs data files (JSONL)`);
  const seed = a.seed ?? 0;
  const cfg = modelConfig(a);
  const valFraction = a.valFraction ?? 0.05;
  const isSynthetic = data.length === 1 && data[0].startsWith('synthetic:');
  let tokenizer: Tokenizer | null = null;
  if (!isSynthetic) {
    try {
      tokenizer = loadTokenizer(a.tokenizer ?? 'byte');
    } catch (e) {
      throw new CliError(`--tokenizer ${a.tokenizer}: ${(e as Error).message}`);
    }
  }
  const vocab = tokenizer ? tokenizer.vocabSize : 0;
  const fillVocab = (c: Record<string, unknown>, need: number) => {
    if (c.vocabSize === undefined) c.vocabSize = need;
    else if (typeof c.vocabSize !== 'number' || c.vocabSize < need) throw new CliError(`--config: vocabSize ${c.vocabSize} is smaller than the data's vocabulary (${need})`);
  };
  const noData = (e: unknown) => new CliError(`--data: ${(e as Error).message}`);
  if (task === 'lm') {
    if (isSynthetic) {
      const { task: t, val } = synthetic(data[0], a.seq, seed);
      fillVocab(cfg, t.vocabSize);
      if (cfg.maxSeq === undefined || (cfg.maxSeq as number) < a.seq) cfg.maxSeq = a.seq;
      const model = new DualRouteLM(cfg as unknown as DualRouteLMConfig);
      const evalRows = Array.from({ length: a.evalBatches ?? 4 }, () => val.nextArrays(a.batch));
      return {
        model, tokenizer,
        info: { format: 1, kind: 'DualRouteLM', task, config: model.source, tokenizer: { kind: 'none', vocabSize: t.vocabSize }, data, args: { ...a } },
        train: { next: () => t.next(a.batch), state: () => t.state(), restore: (s) => t.restore(s as never) },
        val: () => evalRows.map((r) => ({ ids: tensorOf(r.ids, a.batch, a.seq), targets: tensorOf(r.targets, a.batch, a.seq) })),
        sample: Array.from(evalRows[0].ids.subarray(0, a.seq)),
      };
    }
    let tokens: Int32Array;
    try {
      tokens = tokenizeCorpus(readTextCorpus(data), tokenizer!);
    } catch (e) {
      throw noData(e);
    }
    fillVocab(cfg, vocab);
    if (cfg.maxSeq === undefined || (cfg.maxSeq as number) < a.seq) cfg.maxSeq = a.seq;
    let split: { train: Int32Array; val: Int32Array };
    try {
      split = splitTrainVal(tokens, valFraction);
    } catch (e) {
      throw noData(e);
    }
    if (split.val.length < a.seq + 1) throw new CliError(`--data: the validation part (${split.val.length} tokens, --val-fraction ${valFraction}) is shorter than one window of --seq ${a.seq} + 1`);
    const model = new DualRouteLM(cfg as unknown as DualRouteLMConfig);
    const batcher = new LMBatcher(split.train, { seqLen: a.seq, batchSize: a.batch, seed });
    const valB = new LMBatcher(split.val, { seqLen: a.seq, batchSize: a.batch, seed, padId: tokenizer!.padId ?? 0 });
    return {
      model, tokenizer,
      info: { format: 1, kind: 'DualRouteLM', task, config: model.source, tokenizer: tokenizer!.toJSON() as TokenizerSpec, data, args: { ...a } },
      train: { next: () => batcher.next(), state: () => batcher.state(), restore: (s) => batcher.restore(s as never) },
      val: () => valB.evalBatches(),
      sample: Array.from(split.val.subarray(0, Math.min(a.seq, split.val.length))),
    };
  }
  let records: Record<string, unknown>[];
  try {
    records = data.flatMap((f) => readJsonl(f));
  } catch (e) {
    throw noData(e);
  }
  const nVal = Math.max(1, Math.round(records.length * valFraction));
  if (records.length < 2) throw new CliError(`--data: ${records.length} record(s): need at least two (training and validation)`);
  const trainRecs = records.slice(0, records.length - nVal), valRecs = records.slice(records.length - nVal);
  if (task === 'classify') {
    let ds: ClassificationDataset, vs: ClassificationDataset;
    try {
      ds = new ClassificationDataset(trainRecs as unknown as ClassificationRecord[], tokenizer!, { seqLen: a.seq, batchSize: a.batch, seed });
      vs = new ClassificationDataset(valRecs as unknown as ClassificationRecord[], tokenizer!, { seqLen: a.seq, batchSize: a.batch, seed, labels: ds.labels });
    } catch (e) {
      throw noData(e);
    }
    fillVocab(cfg, vocab);
    if (cfg.maxSeq === undefined || (cfg.maxSeq as number) < a.seq) cfg.maxSeq = a.seq;
    const backbone = new DualRouteLM(cfg as unknown as DualRouteLMConfig);
    const pooling = a.pooling ?? 'mean';
    const model = new DualRouteClassifier(backbone, ds.numClasses, pooling);
    return {
      model, tokenizer,
      info: { format: 1, kind: 'DualRouteClassifier', task, config: backbone.source, classifier: { classes: ds.numClasses, labels: [...ds.labels], pooling }, tokenizer: tokenizer!.toJSON() as TokenizerSpec, data, args: { ...a } },
      train: { next: () => stripExtra(ds.next()), state: () => ds.state(), restore: (s) => ds.restore(s as never) },
      val: () => mapIter(vs.evalBatches(), stripExtra),
    };
  }
  let ds: PairDataset, vs: PairDataset;
  try {
    ds = new PairDataset(trainRecs as unknown as PairRecord[], tokenizer!, { sourceLen: a.seq, targetLen: a.seq, batchSize: a.batch, seed });
    vs = new PairDataset(valRecs as unknown as PairRecord[], tokenizer!, { sourceLen: a.seq, targetLen: a.seq, batchSize: a.batch, seed });
  } catch (e) {
    throw noData(e);
  }
  fillVocab(cfg, vocab);
  for (const k of ['maxSource', 'maxTarget']) if (cfg[k] === undefined || (cfg[k] as number) < a.seq) cfg[k] = a.seq;
  const model = new DualRouteSeq2Seq(cfg as unknown as DualRouteSeq2SeqConfig);
  return {
    model, tokenizer,
    info: { format: 1, kind: 'DualRouteSeq2Seq', task, config: model.source, tokenizer: tokenizer!.toJSON() as TokenizerSpec, data, args: { ...a } },
    train: { next: () => stripExtra(ds.next()), state: () => ds.state(), restore: (s) => ds.restore(s as never) },
    val: () => mapIter(vs.evalBatches(), stripExtra),
  };
}

function tensorOf(a: Int32Array, B: number, S: number): Tensor {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { tensor } = require('../ops/creation') as typeof import('../ops/creation');
  return tensor(a.slice(), [B, S]);
}

// batches carry extra tensors (lengths); the Trainer uses and disposes what it knows
function stripExtra<T extends object>(b: T): Batch {
  const keep = ['ids', 'targets', 'labels', 'src', 'tgt'];
  const out: Record<string, Tensor> = {};
  for (const [k, v] of Object.entries(b)) {
    if (!(v instanceof Tensor)) continue;
    if (keep.includes(k)) out[k] = v;
    else v.dispose();
  }
  return out as unknown as Batch;
}

function* mapIter<A, B>(it: Iterable<A>, f: (a: A) => B): Iterable<B> {
  for (const x of it) yield f(x);
}

/** `dualroute train`: trains a model into a run folder; returns the Trainer's result. */
export async function trainCommand(a: TrainArgs, out: Out = stdout): Promise<FitResult> {
  const device = useDevice(a.device);
  const runFile = path.join(a.out, 'run.json');
  if (a.resume && fs.existsSync(runFile)) {
    const prev = readJsonFile(runFile, 'run.json') as RunInfo;
    if (prev.args && prev.args.steps !== undefined && prev.args.steps !== a.steps) out(`resuming with --steps ${a.steps} (the run was started with ${prev.args.steps})`);
  }
  // everything is checked (data, config, tokenizer) before the run folder is made
  const p = prepare(a);
  fs.mkdirSync(a.out, { recursive: true });
  writeJsonAtomic(runFile, p.info);
  const n = p.model.numParameters();
  const dataNote = p.info.data.length > 3 ? `${p.info.data.length} files (${p.info.data.slice(0, 2).join(', ')}, ...)` : p.info.data.join(', ');
  out(`dualroute train: ${p.info.kind} (${(n / 1e6).toFixed(2)} M parameters) on ${device}, task ${p.info.task}, data ${dataNote}`);
  const trainer = new Trainer({
    model: p.model, train: p.train, val: p.val, steps: a.steps, lr: a.lr, warmupSteps: a.warmup, accumulate: a.accumulate, clip: a.clip,
    precision: a.precision, seed: a.seed, evalEvery: a.evalEvery ?? Math.max(1, Math.floor(a.steps / 5)), evalBatches: a.evalBatches,
    checkpointEvery: a.checkpointEvery, resume: a.resume, outDir: a.out, progress: a.progress,
    earlyStopping: a.patience ? { patience: a.patience } : undefined, runConfig: { args: a },
  });
  const r = await trainer.fit();
  if (r.resumedFrom !== undefined) out(`resumed from step ${r.resumedFrom}`);
  const ev = r.lastEval;
  out(`steps ${r.steps}: train loss ${r.trainLoss.toFixed(4)}${ev ? `, validation loss ${ev.loss.toFixed(4)} (perplexity ${ev.perplexity.toFixed(2)}, accuracy ${(ev.accuracy * 100).toFixed(1)}%)` : ''}${r.stoppedEarly ? ' (stopped early)' : ''}${r.interrupted ? ' (interrupted: resume with --resume)' : ''}`);
  if (a.plots !== false && !r.interrupted) {
    const files = await plotRun(a.out);
    out(`plots: ${files.png}`);
    if (p.model instanceof DualRouteLM && p.sample && p.sample.length) {
      const trace = p.model.routingTrace(tensorOf(Int32Array.from(p.sample), 1, p.sample.length));
      const toks = p.tokenizer ? p.sample.map((t) => p.tokenizer!.decode([t], { skipSpecial: false })) : undefined;
      const rf = await plotRouting(a.out, trace, toks);
      out(`routing: ${rf.png}`);
    }
  }
  out(`run folder: ${a.out} (checkpoint.safetensors, metrics.jsonl${r.finalModel ? ', model.safetensors' : ''}${r.bestModel ? ', best.safetensors' : ''})`);
  p.model.dispose();
  return r;
}

// ---- loading a run ---------------------------------------------------------------------------

export interface Loaded {
  model: DualRouteLM | DualRouteSeq2Seq | DualRouteClassifier;
  info: RunInfo | null;
  tokenizer: Tokenizer | null;
  step: number;
}

/** A model from a checkpoint file or a run folder (its model.safetensors, else checkpoint.safetensors). */
export async function loadRun(target: string, tokenizerSpec?: string): Promise<Loaded> {
  if (!fs.existsSync(target)) throw new CliError(`${target}: no such file or folder`);
  let file = target;
  let dir = path.dirname(target);
  if (fs.statSync(target).isDirectory()) {
    dir = target;
    file = ['model.safetensors', 'checkpoint.safetensors'].map((f) => path.join(target, f)).find((f) => fs.existsSync(f)) ?? '';
    if (!file) throw new CliError(`${target}: a folder without model.safetensors or checkpoint.safetensors`);
  }
  const runFile = path.join(dir, 'run.json');
  const info = fs.existsSync(runFile) ? (readJsonFile(runFile, 'run.json') as RunInfo) : null;
  let model: Loaded['model'];
  let step = 0;
  try {
    const header = await readSafetensorsHeader(file);
    const meta = JSON.parse(header.metadata.dualroute ?? '{}');
    step = meta.step ?? 0;
    const saved = meta.config?.model;
    if (saved === 'DualRouteLM' || saved === 'DualRouteSeq2Seq') {
      model = await loadModel(file);
    } else {
      if (!info) throw new CliError(`${file}: a training checkpoint; its run.json (beside it) says what model it holds, and there is none`);
      model = info.kind === 'DualRouteSeq2Seq' ? new DualRouteSeq2Seq(info.config as DualRouteSeq2SeqConfig) : new DualRouteLM(info.config as DualRouteLMConfig);
      if (info.kind === 'DualRouteClassifier') model = new DualRouteClassifier(model as DualRouteLM, info.classifier!.classes, info.classifier!.pooling);
      await loadCheckpoint(file, { model, generators: {} });
    }
  } catch (e) {
    if (e instanceof CliError) throw e;
    throw new CliError(`${file}: ${(e as Error).message}`);
  }
  let tokenizer: Tokenizer | null = null;
  const spec = tokenizerSpec ?? (info && info.tokenizer.kind !== 'none' ? info.tokenizer : undefined) ?? (info ? undefined : 'byte');
  if (spec !== undefined) {
    try {
      tokenizer = loadTokenizer(spec as never);
    } catch (e) {
      throw new CliError(`tokenizer: ${(e as Error).message}`);
    }
  }
  // a run folder: the training step is the checkpoint's (model.safetensors says 0)
  const ckpt = path.join(dir, 'checkpoint.safetensors');
  if (file !== ckpt && fs.existsSync(ckpt)) {
    try {
      step = JSON.parse((await readSafetensorsHeader(ckpt)).metadata.dualroute ?? '{}').step ?? step;
    } catch {
      // an unreadable checkpoint beside the model changes nothing here
    }
  }
  return { model, info, tokenizer, step };
}

// ---- eval ------------------------------------------------------------------------------------

export interface EvalArgs {
  checkpoint: string;
  data?: string[];
  tokenizer?: string;
  batch: number;
  seq: number;
  maxBatches?: number;
  device?: string;
}

/** `dualroute eval`: loss, perplexity and accuracy of a checkpoint on data (default: its run's validation split). */
export async function evalCommand(a: EvalArgs, out: Out = stdout): Promise<EvalMetrics> {
  useDevice(a.device);
  const l = await loadRun(a.checkpoint, a.tokenizer);
  try {
    const info = l.info;
    const args: TrainArgs = {
      out: '', steps: 1, batch: a.batch, seq: a.seq, task: info?.task ?? (l.model instanceof DualRouteSeq2Seq ? 'seq2seq' : l.model instanceof DualRouteClassifier ? 'classify' : 'lm'),
      data: a.data ?? info?.data, tokenizer: a.tokenizer ?? (info?.tokenizer.kind === 'hf' ? (info.tokenizer as { path: string }).path : undefined),
      valFraction: a.data ? 1 - 1e-9 : (info?.args.valFraction as number | undefined), seed: (info?.args.seed as number | undefined) ?? 0, evalBatches: a.maxBatches,
    };
    const p = prepareEvalOnly(args, l);
    const trainer = new Trainer({ model: l.model, train: { next: () => { throw new CliError('eval: no training'); } }, val: p, steps: 1, evalBatches: a.maxBatches, progress: false, handleSignals: false });
    const m = await trainer.evaluate();
    out(JSON.stringify({ checkpoint: a.checkpoint, step: l.step, ...m }));
    return m;
  } finally {
    l.model.dispose();
  }
}

// the validation source of prepare() for an already loaded model
function prepareEvalOnly(a: TrainArgs, l: Loaded): EvalSource<Batch> {
  const data = a.data && a.data.length ? a.data : a.task === 'lm' ? defaultCorpus() : [];
  if (!data.length) throw new CliError('--data: give the data to evaluate on');
  if (data[0].startsWith('synthetic:')) {
    const { val } = synthetic(data[0], a.seq, a.seed ?? 0);
    const rows = Array.from({ length: a.evalBatches ?? 4 }, () => val.nextArrays(a.batch));
    return () => rows.map((r) => ({ ids: tensorOf(r.ids, a.batch, a.seq), targets: tensorOf(r.targets, a.batch, a.seq) }));
  }
  const tok = l.tokenizer ?? loadTokenizer('byte');
  if (a.task === 'lm') {
    let tokens: Int32Array;
    try {
      tokens = tokenizeCorpus(readTextCorpus(data), tok);
    } catch (e) {
      throw new CliError(`--data: ${(e as Error).message}`);
    }
    const frac = a.valFraction ?? 0.05;
    const val = frac >= 1 - 1e-6 ? tokens : splitTrainVal(tokens, frac).val;
    if (val.length < a.seq + 1) throw new CliError(`--data: ${val.length} tokens to evaluate, fewer than one window of --seq ${a.seq} + 1`);
    const b = new LMBatcher(val, { seqLen: a.seq, batchSize: a.batch, padId: tok.padId ?? 0 });
    return () => b.evalBatches();
  }
  const recs = data.flatMap((f) => readJsonl(f));
  if (a.task === 'classify') {
    const labels = l.info?.classifier?.labels;
    const vs = new ClassificationDataset(recs as unknown as ClassificationRecord[], tok, { seqLen: a.seq, batchSize: a.batch, labels });
    return () => mapIter(vs.evalBatches(), stripExtra);
  }
  const vs = new PairDataset(recs as unknown as PairRecord[], tok, { sourceLen: a.seq, targetLen: a.seq, batchSize: a.batch });
  return () => mapIter(vs.evalBatches(), stripExtra);
}

// ---- sample ----------------------------------------------------------------------------------

export interface SampleArgs {
  checkpoint: string;
  prompt: string;
  maxTokens: number;
  temperature: number;
  topK?: number;
  topP?: number;
  seed?: number;
  tokenizer?: string;
  device?: string;
}

/** `dualroute sample`: continues a prompt, streaming the text as it comes; returns it. */
export async function sampleCommand(a: SampleArgs, write: (s: string) => void = (s) => process.stdout.write(s)): Promise<string> {
  useDevice(a.device);
  const l = await loadRun(a.checkpoint, a.tokenizer);
  try {
    if (!(l.model instanceof DualRouteLM)) throw new CliError(`sample: ${a.checkpoint} holds a ${l.model.constructor.name}; sampling needs a DualRouteLM`);
    const tok = l.tokenizer;
    if (!tok) throw new CliError(`sample: ${a.checkpoint} was trained on synthetic token ids (no tokenizer); nothing to decode`);
    const prompt = tok.encode(a.prompt);
    if (prompt.length === 0) prompt.push(tok.bosId ?? 0);
    const ids: number[] = [];
    let shown = '';
    for await (const t of l.model.generate(prompt, { maxTokens: a.maxTokens, temperature: a.temperature, topK: a.topK, topP: a.topP, seed: a.seed, stop: tok.eosId !== null ? [[tok.eosId]] : undefined })) {
      if (tok.eosId !== null && t.token === tok.eosId) break;
      ids.push(t.token);
      // decode the whole continuation so a character split over tokens prints once complete
      const text = tok.decode(ids);
      const fresh = text.endsWith('\uFFFD') ? text.slice(0, text.lastIndexOf('\uFFFD')) : text;
      if (fresh.length > shown.length && fresh.startsWith(shown)) {
        write(fresh.slice(shown.length));
        shown = fresh;
      }
    }
    const all = tok.decode(ids);
    if (all.length > shown.length && all.startsWith(shown)) write(all.slice(shown.length));
    write('\n');
    return all;
  } finally {
    l.model.dispose();
  }
}

// ---- inspect ---------------------------------------------------------------------------------

/** `dualroute inspect`: a checkpoint's config, sizes and routing statistics on a text. */
export async function inspectCommand(a: { checkpoint: string; text?: string; json?: boolean; device?: string }, out: Out = stdout): Promise<object> {
  useDevice(a.device);
  const l = await loadRun(a.checkpoint);
  try {
    const m = l.model;
    const groups = new Map<string, number>();
    for (const [n, p] of m.namedParameters()) {
      const parts = n.split('.');
      const key = parts[0] === 'layers' || parts[0] === 'encoder' || parts[0] === 'decoder' ? `${parts[0]}.*.${parts[2]}` : parts[0] === 'backbone' && parts[1] === 'layers' ? `backbone.layers.*.${parts[3]}` : parts[0];
      groups.set(key, (groups.get(key) ?? 0) + p.size);
    }
    const file = a.checkpoint;
    const report: Record<string, unknown> = {
      checkpoint: file, kind: m.constructor.name, step: l.step, parameters: m.numParameters(),
      parameterGroups: Object.fromEntries(groups), config: l.info?.config ?? (m as { source?: unknown }).source ?? null,
      tokenizer: l.info?.tokenizer ?? (l.tokenizer ? l.tokenizer.toJSON() : null),
    };
    const lm = m instanceof DualRouteLM ? m : m instanceof DualRouteClassifier && m.backbone instanceof DualRouteLM ? m.backbone : null;
    if (lm) {
      const text = a.text ?? 'Dual-level routing sends each token through a cheap local path and an expensive global one.';
      const ids = l.tokenizer ? l.tokenizer.encode(text).slice(0, lm.config.maxSeq) : Array.from({ length: Math.min(32, lm.config.maxSeq) }, (_, i) => i % lm.config.vocabSize);
      if (ids.length) {
        lm.eval();
        tidy(() => {
          lm.forward(tensorOf(Int32Array.from(ids), 1, ids.length));
        });
        report.routing = lm.routing().map((r, i) => ({ layer: i, ...lm.config.layers[i] && { local: lm.config.layers[i].local, global: lm.config.layers[i].global, fusion: lm.config.layers[i].fusion }, ...r }));
        report.routingText = text;
      }
    }
    if (a.json) out(JSON.stringify(report, null, 2));
    else {
      out(`${report.kind} at step ${report.step}: ${(m.numParameters() / 1e6).toFixed(3)} M parameters (${a.checkpoint})`);
      for (const [k, v] of groups) out(`  ${k.padEnd(40)} ${v}`);
      if (report.routing) {
        out('routing on the text (mean gate local/global, routed fraction, expert load):');
        for (const r of report.routing as Array<Record<string, unknown>>) {
          const g = r.gates as number[] | null;
          const routed = r.routed as { routed: number } | null;
          out(`  layer ${r.layer} ${r.local}/${r.global} ${r.fusion}: gates ${g ? g.map((x) => x.toFixed(3)).join(' / ') : '-'}${routed ? `, routed ${(routed.routed * 100).toFixed(1)}%` : ''}${r.expertLoad ? `, experts ${(r.expertLoad as number[]).join(' ')}` : ''}`);
        }
      }
    }
    return report;
  } finally {
    l.model.dispose();
  }
}

// ---- serve -----------------------------------------------------------------------------------

export interface ServeArgs {
  checkpoint: string;
  host: string;
  port: number;
  modelName: string;
  concurrency: number;
  /** Sequences sharing each decode step (default 16). */
  batch?: number;
  queue: number;
  maxTokens: number;
  tokenizer?: string;
  device?: string;
}

/** `dualroute serve`: serves a language model until SIGINT / SIGTERM (then closes and returns). */
export async function serveCommand(a: ServeArgs, out: Out = stdout): Promise<void> {
  useDevice(a.device);
  const l = await loadRun(a.checkpoint, a.tokenizer);
  if (!(l.model instanceof DualRouteLM)) throw new CliError(`serve: ${a.checkpoint} holds a ${l.model.constructor.name}; serving needs a DualRouteLM`);
  if (!l.tokenizer) throw new CliError(`serve: ${a.checkpoint} has no tokenizer (trained on synthetic ids); give --tokenizer`);
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { serve } = require('../serve/server') as typeof import('../serve/server');
  const s = await serve({ model: l.model, tokenizer: l.tokenizer, host: a.host, port: a.port, modelName: a.modelName,
    limits: { concurrency: a.concurrency, queue: a.queue, maxTokens: a.maxTokens, ...(a.batch !== undefined ? { batch: a.batch } : {}) } });
  out(`dualroute serve: ${a.modelName} from ${a.checkpoint} at ${s.url}/v1 (health ${s.url}/health, metrics ${s.url}/metrics, routing page ${s.url}/)`);
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  out('dualroute serve: closing (finishing the requests in flight)');
  await s.close();
  l.model.dispose();
}
