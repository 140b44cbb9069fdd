// The Trainer: a training loop for the models (and any Module with a loss), so that training from
// Node is a few lines. It is a convenience, not a cage: everything it does is public API
// (optimizers, schedules, clipGradNorm, checkpoints), and callbacks see every step.
//
//   for each step: `accumulate` micro-batches (loss / accumulate, backward), clip the gradient
//   norm, optimizer step (AdamW by default; float32 masters of bfloat16 parameters), schedule
//   (linear warmup, then cosine / linear / constant); every `logEvery` steps a line of the JSONL
//   metrics log; every `evalEvery` steps an evaluation (loss, perplexity, accuracy; precision,
//   recall and macro F1 for classification), early stopping on the validation loss, and the best
//   model; every `checkpointEvery` steps a checkpoint with everything an exact resume needs (model,
//   optimizer, step, the default and the model's generators, the data's position, the early-stopping
//   counters). SIGINT / SIGTERM finish the step in flight, write a checkpoint and return.
//
// The loop awaits each step's loss (an asynchronous read): the kernels run off the JavaScript
// thread, so the event loop stays free (signals, servers, progress) while the model computes.
// Same seed, same device, same thread count: the same run, bit for bit, interrupted or not.
import * as fs from 'fs';
import * as path from 'path';
import { ValueError, describe } from '../errors';
import { Generator, defaultGenerator } from '../random';
import { Tensor, tidy } from '../tensor';
import { backward, noGrad } from '../autograd/engine';
import { mul } from '../ops/elementwise';
import { crossEntropy } from '../ops/nn';
import { topk } from '../ops/sort';
import { Module } from '../nn/module';
import { AdamW, Optimizer, clipGradNorm } from '../optim/optimizers';
import { LRScheduler, Schedule } from '../optim/schedules';
import { DualRouteLM } from '../models/dual_route_lm';
import { DualRouteClassifier, DualRouteSeq2Seq } from '../models/seq2seq';
import { saveModel } from '../models/io';
import { loadCheckpoint, saveCheckpoint } from './checkpoint';

import type { LMBatch } from './data';
export type { LMBatch };
/** An encoder-decoder batch: source ids [B, Se], decoder input [B, St], targets [B, St]. */
export interface Seq2SeqBatch { src: Tensor; tgt: Tensor; targets: Tensor }
/** A classification batch: ids [B, S] and labels int32 [B]. */
export interface ClassifyBatch { ids: Tensor; labels: Tensor }
export type Batch = LMBatch | Seq2SeqBatch | ClassifyBatch;

/** Training batches: next() gives a fresh batch (the Trainer disposes it); state()/restore() make resume exact. */
export interface TrainSource<B extends Batch = Batch> {
  next(): B;
  state?(): unknown;
  restore?(state: unknown): void;
}
/** Validation batches: a fresh iterable of batches at every evaluation (the Trainer disposes them). */
export type EvalSource<B extends Batch = Batch> = () => Iterable<B>;

export type Task = 'lm' | 'seq2seq' | 'classify';

export interface EvalMetrics {
  loss: number;
  perplexity: number;
  /** argmax == target over the scored positions (lm, seq2seq) or the examples (classify). */
  accuracy: number;
  /** classify: macro averages over the classes seen in targets or predictions. */
  precision?: number;
  recall?: number;
  f1?: number;
  /** Scored positions (or examples). */
  count: number;
}

export interface StepInfo {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number | null;
  tokens: number;
  tokensPerSecond: number;
  elapsed: number;
}

export interface TrainerCallbacks {
  onStep?(info: StepInfo, trainer: Trainer): void | Promise<void>;
  onEval?(metrics: EvalMetrics, step: number, trainer: Trainer): void | Promise<void>;
  onCheckpoint?(file: string, step: number, trainer: Trainer): void | Promise<void>;
}

export interface TrainerOptions<B extends Batch = Batch> {
  model: Module;
  /** Default: from the model (DualRouteLM 'lm', DualRouteSeq2Seq 'seq2seq', DualRouteClassifier 'classify'). */
  task?: Task;
  train: TrainSource<B>;
  val?: EvalSource<B>;
  /** Optimizer steps. */
  steps: number;
  /** Peak learning rate (default 3e-3), or a schedule of its own (step -> lr). */
  lr?: number | Schedule;
  /** After linear warmup over warmupSteps (default min(100, steps / 10)): 'cosine' (default) to minLr, 'linear' to minLr, 'constant'. */
  schedule?: 'cosine' | 'linear' | 'constant';
  warmupSteps?: number;
  minLr?: number;
  weightDecay?: number;
  betas?: [number, number];
  /** Default: AdamW over model.parameters() with lr, weightDecay and betas. */
  optimizer?: Optimizer;
  /** Micro-batches per optimizer step (default 1). */
  accumulate?: number;
  /** Clip the gradient norm to this (default 1; 0 turns clipping off). */
  clip?: number;
  /** 'bfloat16': parameters and activations in bfloat16, updates through float32 masters. Default 'float32'. */
  precision?: 'float32' | 'bfloat16';
  /** Seeds the default generator before the first step (a fresh run; a resumed run restores it). */
  seed?: number;
  evalEvery?: number;
  /** At most this many validation batches per evaluation (default all). */
  evalBatches?: number;
  /** Stop after `patience` evaluations without the validation loss improving by minDelta. */
  earlyStopping?: { patience: number; minDelta?: number };
  /** Run folder: checkpoint.safetensors, best.safetensors, model.safetensors, metrics.jsonl. */
  outDir?: string;
  checkpointEvery?: number;
  /** Continue from outDir/checkpoint.safetensors when it exists (or from this file). Default false. */
  resume?: boolean | string;
  logEvery?: number;
  /** A progress bar on stderr (loss, tokens/s, ETA). Default: when stderr is a terminal. */
  progress?: boolean;
  /** SIGINT / SIGTERM: finish the step, write a checkpoint, return with interrupted: true. Default true when outDir is set. */
  handleSignals?: boolean;
  callbacks?: TrainerCallbacks;
  /** Anything JSON to keep in the checkpoints beside the Trainer's own state (a CLI's arguments, say). */
  runConfig?: unknown;
}

export interface FitResult {
  /** Optimizer steps done (in all, including those before a resume). */
  steps: number;
  /** Mean loss of the last logged window. */
  trainLoss: number;
  /** The last evaluation, and the best validation loss. */
  lastEval: EvalMetrics | null;
  bestValLoss: number | null;
  stoppedEarly: boolean;
  interrupted: boolean;
  /** Files written (absent without outDir). */
  checkpoint?: string;
  bestModel?: string;
  finalModel?: string;
  metricsLog?: string;
  resumedFrom?: number;
}

interface TrainerState {
  format: 1;
  data: unknown;
  best: number | null;
  badEvals: number;
  runConfig?: unknown;
}

const isInt = (v: unknown, min: number) => Number.isInteger(v) && (v as number) >= min;

function positive(name: string, v: unknown, min = 0, integer = false): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || (integer && !Number.isInteger(v))) {
    throw new ValueError(`Trainer: Expected ${integer ? 'an integer' : 'a number'} >= ${min} for ${name} but received ${describe(v)}`);
  }
  return v;
}

function inferTask(model: Module): Task {
  if (model instanceof DualRouteLM) return 'lm';
  if (model instanceof DualRouteSeq2Seq) return 'seq2seq';
  if (model instanceof DualRouteClassifier) return 'classify';
  throw new ValueError(`Trainer: cannot tell the task of a ${model.constructor.name}; give options.task ('lm', 'seq2seq' or 'classify')`);
}

// the model's own generator (dropout, random routing), saved beside the default one
function modelGenerator(model: Module): Generator | null {
  const m = model instanceof DualRouteClassifier ? model.backbone : model;
  const g = (m as { generator?: unknown }).generator;
  return g instanceof Generator ? g : null;
}

function batchTensors(b: Batch): Tensor[] {
  return Object.values(b).filter((t): t is Tensor => t instanceof Tensor);
}

function appendLine(file: string, obj: object): void {
  fs.appendFileSync(file, JSON.stringify(obj) + '\n');
}

/** The training loop (see the file's head). `new Trainer(options).fit()`, or `fit(options)`. */
export class Trainer<B extends Batch = Batch> {
  readonly model: Module;
  readonly task: Task;
  readonly optimizer: Optimizer;
  readonly scheduler: LRScheduler;
  readonly options: TrainerOptions<B>;
  /** Optimizer steps done. */
  step = 0;
  private stopReason: 'signal' | 'callback' | null = null;
  private best: number | null = null;
  private badEvals = 0;

  constructor(options: TrainerOptions<B>) {
    if (!options || typeof options !== 'object') throw new ValueError(`Trainer: Expected an options object but received ${describe(options)}`);
    const o = options;
    if (!(o.model instanceof Module)) throw new ValueError(`Trainer: Expected a Module for model but received ${describe(o.model)}`);
    if (!o.train || typeof o.train.next !== 'function') throw new ValueError(`Trainer: Expected a train source with next() but received ${describe(o.train)}`);
    if (o.val !== undefined && typeof o.val !== 'function') throw new ValueError(`Trainer: Expected val to be a function returning batches but received ${describe(o.val)}`);
    positive('steps', o.steps, 1, true);
    for (const k of ['accumulate', 'evalEvery', 'evalBatches', 'checkpointEvery', 'logEvery'] as const) {
      if (o[k] !== undefined) positive(k, o[k], 1, true);
    }
    if (o.clip !== undefined) positive('clip', o.clip);
    if (o.warmupSteps !== undefined) positive('warmupSteps', o.warmupSteps, 0, true);
    if (o.minLr !== undefined) positive('minLr', o.minLr);
    if (o.seed !== undefined && !isInt(o.seed, 0)) throw new ValueError(`Trainer: Expected an integer seed >= 0 but received ${describe(o.seed)}`);
    if (o.precision !== undefined && o.precision !== 'float32' && o.precision !== 'bfloat16') throw new ValueError(`Trainer: Expected 'float32' or 'bfloat16' for precision but received ${describe(o.precision)}`);
    if (o.schedule !== undefined && !['cosine', 'linear', 'constant'].includes(o.schedule)) throw new ValueError(`Trainer: Expected 'cosine', 'linear' or 'constant' for schedule but received ${describe(o.schedule)}`);
    if (o.earlyStopping !== undefined) {
      if (!o.earlyStopping || !isInt(o.earlyStopping.patience, 1)) throw new ValueError(`Trainer: Expected earlyStopping.patience, an integer >= 1, but received ${describe(o.earlyStopping?.patience)}`);
      if (!o.val) throw new ValueError('Trainer: earlyStopping needs validation data (options.val)');
    }
    if (o.resume && !o.outDir && typeof o.resume !== 'string') throw new ValueError('Trainer: resume: true needs outDir (where checkpoint.safetensors is)');
    this.options = o;
    this.model = o.model;
    this.task = o.task ?? inferTask(o.model);
    if (!['lm', 'seq2seq', 'classify'].includes(this.task)) throw new ValueError(`Trainer: Expected 'lm', 'seq2seq' or 'classify' for task but received ${describe(o.task)}`);
    if (o.precision === 'bfloat16') this.model.to('bfloat16');
    const peak = typeof o.lr === 'number' ? positive('lr', o.lr) : 3e-3;
    if (o.lr !== undefined && typeof o.lr !== 'number' && typeof o.lr !== 'function') throw new ValueError(`Trainer: Expected a number or a schedule function for lr but received ${describe(o.lr)}`);
    this.optimizer = o.optimizer ?? new AdamW(this.model.parameters(), { lr: peak || 1e-12, weightDecay: o.weightDecay ?? 0.01, betas: o.betas ?? [0.9, 0.95] });
    this.scheduler = new LRScheduler(this.optimizer, typeof o.lr === 'function' ? o.lr : this.defaultSchedule(peak));
  }

  private defaultSchedule(peak: number): Schedule {
    const o = this.options;
    const total = o.steps;
    const warm = o.warmupSteps ?? Math.min(100, Math.floor(total / 10));
    const min = o.minLr ?? peak * 0.1;
    const kind = o.schedule ?? 'cosine';
    return (s: number) => {
      if (s < warm) return (peak * (s + 1)) / warm;
      if (kind === 'constant' || total <= warm) return peak;
      const t = Math.min(1, (s - warm) / Math.max(1, total - warm));
      return kind === 'linear' ? peak + (min - peak) * t : min + 0.5 * (peak - min) * (1 + Math.cos(Math.PI * t));
    };
  }

  /** Asks the loop to stop after the step in flight (a checkpoint is written when outDir is set). */
  requestStop(): void {
    this.stopReason = this.stopReason ?? 'callback';
  }

  private generators(): Record<string, Generator> {
    const g: Record<string, Generator> = { default: defaultGenerator };
    const m = modelGenerator(this.model);
    if (m) g.model = m;
    return g;
  }

  private file(name: string): string | undefined {
    return this.options.outDir ? path.join(this.options.outDir, name) : undefined;
  }

  /** Writes a checkpoint of the whole training state to outDir/checkpoint.safetensors (or `file`). */
  async saveCheckpoint(file = this.file('checkpoint.safetensors')): Promise<string> {
    if (!file) throw new ValueError('Trainer.saveCheckpoint: no outDir and no file given');
    const state: TrainerState = { format: 1, data: this.options.train.state?.() ?? null, best: this.best, badEvals: this.badEvals, runConfig: this.options.runConfig };
    await saveCheckpoint(file, { model: this.model, optimizer: this.optimizer, step: this.step, generators: this.generators(), config: { trainer: state } });
    await this.options.callbacks?.onCheckpoint?.(file, this.step, this);
    return file;
  }

  private async resume(): Promise<number | undefined> {
    const o = this.options;
    const file = typeof o.resume === 'string' ? o.resume : o.resume ? this.file('checkpoint.safetensors') : undefined;
    if (!file) return undefined;
    if (!fs.existsSync(file)) {
      if (typeof o.resume === 'string') throw new ValueError(`Trainer: resume: ${file}: no such checkpoint`);
      return undefined;
    }
    const r = await loadCheckpoint(file, { model: this.model, optimizer: this.optimizer, generators: this.generators() });
    const st = (r.config as { trainer?: TrainerState } | undefined)?.trainer;
    if (!st || st.format !== 1) throw new ValueError(`Trainer: resume: ${file} is not a Trainer checkpoint (no trainer state in its metadata)`);
    if (st.data !== null && st.data !== undefined) {
      if (!o.train.restore) throw new ValueError(`Trainer: resume: ${file} holds the data's position but the train source has no restore()`);
      o.train.restore(st.data);
    }
    this.best = st.best;
    this.badEvals = st.badEvals;
    this.step = r.step;
    this.scheduler.lastStep = r.step;
    return r.step;
  }

  // the training loss of one batch (what backward differentiates) and the tokens it covers
  private trainLoss(b: Batch): { loss: Tensor; tokens: number } {
    const m = this.model;
    if (this.task === 'lm') {
      const { ids, targets } = b as LMBatch;
      const loss = m instanceof DualRouteLM ? m.loss(ids, targets).loss : crossEntropy((m as unknown as { forward(x: Tensor): Tensor }).forward(ids), targets);
      return { loss, tokens: ids.size };
    }
    if (this.task === 'seq2seq') {
      const { src, tgt, targets } = b as Seq2SeqBatch;
      return { loss: crossEntropy((m as DualRouteSeq2Seq).forward(src, tgt), targets), tokens: src.size + tgt.size };
    }
    const { ids, labels } = b as ClassifyBatch;
    return { loss: crossEntropy((m as unknown as { forward(x: Tensor): Tensor }).forward(ids), labels), tokens: ids.size };
  }

  // logits and targets of one evaluation batch
  private evalLogits(b: Batch): { logits: Tensor; targets: Tensor } {
    const m = this.model as unknown as { forward(...x: Tensor[]): Tensor };
    if (this.task === 'seq2seq') {
      const s = b as Seq2SeqBatch;
      return { logits: m.forward(s.src, s.tgt), targets: s.targets };
    }
    if (this.task === 'classify') {
      const c = b as ClassifyBatch;
      return { logits: m.forward(c.ids), targets: c.labels };
    }
    const l = b as LMBatch;
    return { logits: m.forward(l.ids), targets: l.targets };
  }

  /** Loss, perplexity and accuracy over the validation batches (classify: precision, recall, macro F1). */
  async evaluate(source: EvalSource<B> | undefined = this.options.val): Promise<EvalMetrics> {
    if (!source) throw new ValueError('Trainer.evaluate: no validation data (options.val)');
    const wasTraining = this.model.training;
    this.model.eval();
    let lossSum = 0, count = 0, correct = 0, n = 0;
    const pairs: Array<[number, number]> = [];
    try {
      for (const b of source()) {
        if (this.options.evalBatches !== undefined && n >= this.options.evalBatches) {
          batchTensors(b).forEach((t) => t.dispose());
          continue;
        }
        n++;
        try {
          const { loss, pred, tg } = noGrad(() => tidy(() => {
            const { logits, targets } = this.evalLogits(b);
            return { loss: crossEntropy(logits, targets), pred: topk(logits, 1, { axis: -1 }).indices, tg: targets };
          }));
          const [lv, pv, tv] = await Promise.all([loss.data(), pred.data(), tg.data()]);
          loss.dispose();
          pred.dispose();
          let scored = 0;
          for (let i = 0; i < tv.length; ++i) {
            if (tv[i] === -100) continue;
            scored++;
            if (pv[i] === tv[i]) correct++;
            if (this.task === 'classify') pairs.push([Number(tv[i]), Number(pv[i])]);
          }
          lossSum += Number(lv[0]) * scored;
          count += scored;
        } finally {
          batchTensors(b).forEach((t) => t.dispose());
        }
      }
    } finally {
      this.model.train(wasTraining);
    }
    if (count === 0) throw new ValueError('Trainer.evaluate: the validation data holds no scored position');
    const loss = lossSum / count;
    const metrics: EvalMetrics = { loss, perplexity: Math.exp(loss), accuracy: correct / count, count };
    if (this.task === 'classify') Object.assign(metrics, classificationScores(pairs));
    return metrics;
  }

  /** Runs the loop (see the file's head). */
  async fit(): Promise<FitResult> {
    const o = this.options;
    if (o.outDir) fs.mkdirSync(o.outDir, { recursive: true });
    const log = this.file('metrics.jsonl');
    const resumedFrom = await this.resume();
    if (resumedFrom === undefined) {
      if (o.seed !== undefined) defaultGenerator.manualSeed(o.seed);
      if (log && fs.existsSync(log)) fs.rmSync(log);
    }
    const accumulate = o.accumulate ?? 1;
    const logEvery = o.logEvery ?? 10;
    const clip = o.clip ?? 1;
    const params = this.model.parameters();
    const showBar = o.progress ?? !!process.stderr.isTTY;
    const bar = showBar ? makeBar(o.steps, this.step) : null;
    const handle = o.handleSignals ?? !!o.outDir;
    const onSignal = () => {
      this.stopReason = 'signal';
    };
    if (handle) {
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
    }
    this.model.train();
    let windowLoss = 0, windowSteps = 0, lastTrain = NaN, lastEval: EvalMetrics | null = null, stoppedEarly = false;
    let windowTokens = 0, windowStart = Date.now();
    const t0 = Date.now();
    let bestModel: string | undefined;
    try {
      while (this.step < o.steps && !this.stopReason && !stoppedEarly) {
        let stepLoss = 0, tokens = 0;
        for (let a = 0; a < accumulate; ++a) {
          const b = o.train.next();
          try {
            const { loss, t } = tidy(() => {
              const r = this.trainLoss(b);
              tokens += r.tokens;
              return { loss: r.loss, t: accumulate > 1 ? mul(r.loss, 1 / accumulate) : r.loss };
            });
            backward(t);
            stepLoss += Number((await loss.data())[0]) / accumulate;
            if (t !== loss) t.dispose();
            loss.dispose();
          } finally {
            batchTensors(b).forEach((x) => x.dispose());
          }
        }
        let gradNorm: number | null = null;
        if (clip > 0) {
          const nrm = clipGradNorm(params, clip);
          gradNorm = Number((await nrm.data())[0]);
          nrm.dispose();
        }
        const lr = this.optimizer.lr;
        this.optimizer.step();
        this.optimizer.zeroGrad();
        this.step++;
        this.scheduler.lastStep = this.step;
        if (!Number.isFinite(stepLoss)) throw new ValueError(`Trainer: the loss is ${stepLoss} at step ${this.step} (lr ${lr}); lower the learning rate or check the data`);
        windowLoss += stepLoss;
        windowSteps++;
        windowTokens += tokens;
        const now = Date.now();
        const info: StepInfo = { step: this.step, loss: stepLoss, lr, gradNorm, tokens, tokensPerSecond: (windowTokens * 1000) / Math.max(1, now - windowStart), elapsed: (now - t0) / 1000 };
        bar?.update(this.step, { loss: stepLoss.toFixed(4), tps: Math.round(info.tokensPerSecond) });
        if (this.step % logEvery === 0 || this.step === o.steps) {
          lastTrain = windowLoss / windowSteps;
          if (log) appendLine(log, { step: this.step, split: 'train', loss: lastTrain, lr, gradNorm, tokensPerSecond: info.tokensPerSecond, elapsed: info.elapsed });
          windowLoss = 0;
          windowSteps = 0;
          windowTokens = 0;
          windowStart = now;
        }
        await o.callbacks?.onStep?.(info, this);
        if (o.val && o.evalEvery && (this.step % o.evalEvery === 0 || this.step === o.steps)) {
          lastEval = await this.evaluate();
          if (log) appendLine(log, { step: this.step, split: 'val', ...lastEval });
          await o.callbacks?.onEval?.(lastEval, this.step, this);
          const minDelta = o.earlyStopping?.minDelta ?? 0;
          if (this.best === null || lastEval.loss < this.best - minDelta) {
            this.best = lastEval.loss;
            this.badEvals = 0;
            const f = this.file('best.safetensors');
            if (f && isSavable(this.model)) {
              await saveModel(f, this.model);
              bestModel = f;
            }
          } else if (o.earlyStopping && ++this.badEvals >= o.earlyStopping.patience) {
            stoppedEarly = true;
          }
        }
        if (o.outDir && o.checkpointEvery && this.step % o.checkpointEvery === 0) await this.saveCheckpoint();
      }
      if (windowSteps > 0) lastTrain = windowLoss / windowSteps;
    } finally {
      bar?.stop();
      if (handle) {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    }
    const result: FitResult = {
      steps: this.step, trainLoss: lastTrain, lastEval, bestValLoss: this.best, stoppedEarly, interrupted: this.stopReason === 'signal', resumedFrom,
    };
    if (o.outDir) {
      result.checkpoint = await this.saveCheckpoint();
      result.metricsLog = log;
      if (bestModel || fs.existsSync(this.file('best.safetensors')!)) result.bestModel = this.file('best.safetensors');
      if (isSavable(this.model) && this.stopReason !== 'signal') {
        result.finalModel = this.file('model.safetensors');
        await saveModel(result.finalModel!, this.model);
      }
    }
    return result;
  }
}

function isSavable(m: Module): m is DualRouteLM | DualRouteSeq2Seq {
  return m instanceof DualRouteLM || m instanceof DualRouteSeq2Seq;
}

/** Macro precision, recall and F1 over the classes that appear in targets or predictions. */
export function classificationScores(pairs: ReadonlyArray<readonly [number, number]>): { precision: number; recall: number; f1: number } {
  if (!Array.isArray(pairs)) throw new ValueError(`classificationScores: Expected an array of [target, prediction] pairs but received ${describe(pairs)}`);
  pairs.forEach((p, i) => {
    if (!Array.isArray(p) || p.length !== 2 || !Number.isInteger(p[0]) || !Number.isInteger(p[1])) {
      throw new ValueError(`classificationScores: Expected pairs[${i}] to be [target, prediction] (two integers) but received ${describe(p)}`);
    }
  });
  const classes = new Set<number>();
  for (const [t, p] of pairs) {
    classes.add(t);
    classes.add(p);
  }
  let P = 0, R = 0, F = 0;
  for (const c of classes) {
    let tp = 0, fp = 0, fn = 0;
    for (const [t, p] of pairs) {
      if (p === c && t === c) tp++;
      else if (p === c) fp++;
      else if (t === c) fn++;
    }
    const prec = tp + fp ? tp / (tp + fp) : 0, rec = tp + fn ? tp / (tp + fn) : 0;
    P += prec;
    R += rec;
    F += prec + rec ? (2 * prec * rec) / (prec + rec) : 0;
  }
  const k = Math.max(1, classes.size);
  return { precision: P / k, recall: R / k, f1: F / k };
}

function makeBar(total: number, start: number): { update(v: number, payload: object): void; stop(): void } {
  // cli-progress draws on stderr; required lazily (a server never pays for it)
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const cp = require('cli-progress') as typeof import('cli-progress');
  const bar = new cp.SingleBar({
    format: 'train [{bar}] {value}/{total} | loss {loss} | {tps} tok/s | ETA {eta_formatted}',
    stream: process.stderr, hideCursor: true, etaBuffer: 20,
  }, cp.Presets.shades_classic);
  bar.start(total, start, { loss: '-', tps: 0 });
  return bar;
}

/** `new Trainer(options).fit()`. */
export async function fit<B extends Batch>(options: TrainerOptions<B>): Promise<FitResult> {
  return new Trainer(options).fit();
}
