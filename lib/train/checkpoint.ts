// Training checkpoints: model weights, optimizer state, step, random-generator state and the
// run's config in one safetensors file. Tensors are stored under "model.<name>" and
// "optim.<index>.<slot>"; everything else goes into __metadata__ as JSON under "dualroute".
// Writing is atomic (temp file, fsync, rename), so a crash never leaves half a checkpoint;
// restoring into the same kind of model and optimizer on the same device resumes bit for bit.
import { FormatError, ValueError, describe } from '../errors';
import { Module } from '../nn/module';
import { Optimizer } from '../optim/optimizers';
import { Generator, defaultGenerator } from '../random';
import { Tensor } from '../tensor';
import { loadSafetensors, loadSafetensorsSync, saveSafetensors, saveSafetensorsSync } from './safetensors';

export interface CheckpointContents {
  model: Module;
  optimizer?: Optimizer;
  /** Training step (or any counter the loop wants back). */
  step?: number;
  /** Generators to restore (default: the default generator). */
  generators?: Record<string, Generator>;
  /** Any JSON-serialisable configuration. */
  config?: unknown;
}

interface Meta {
  format: 1;
  step: number;
  optimizer?: { type: string; lr: number; stepCount: number };
  generators: Record<string, { seed: number; offset: number }>;
  config?: unknown;
}

function collect(c: CheckpointContents): { tensors: Record<string, Tensor>; metadata: Record<string, string>; temps: Tensor[] } {
  checkContents('saveCheckpoint', c);
  const tensors: Record<string, Tensor> = {};
  const temps: Tensor[] = [];
  for (const [k, t] of Object.entries(c.model.stateDict())) {
    tensors[`model.${k}`] = t;
    temps.push(t);
  }
  const meta: Meta = { format: 1, step: c.step ?? 0, generators: {} };
  if (c.optimizer) {
    const s = c.optimizer.stateDict();
    for (const [k, t] of Object.entries(s.slots)) {
      tensors[`optim.${k}`] = t;
      temps.push(t);
    }
    meta.optimizer = { type: c.optimizer.constructor.name, lr: s.lr, stepCount: s.step };
  }
  const gens = c.generators ?? { default: defaultGenerator };
  for (const [k, g] of Object.entries(gens)) meta.generators[k] = g.getState();
  if (c.config !== undefined) meta.config = c.config;
  return { tensors, metadata: { dualroute: JSON.stringify(meta) }, temps };
}

/** Writes a training checkpoint (atomically). */
export async function saveCheckpoint(path: string, c: CheckpointContents): Promise<void> {
  const { tensors, metadata, temps } = collect(c);
  try {
    await saveSafetensors(path, tensors, metadata);
  } finally {
    temps.forEach((t) => t.dispose());
  }
}
export function saveCheckpointSync(path: string, c: CheckpointContents): void {
  const { tensors, metadata, temps } = collect(c);
  try {
    saveSafetensorsSync(path, tensors, metadata);
  } finally {
    temps.forEach((t) => t.dispose());
  }
}

function restore(path: string, loaded: { tensors: Record<string, Tensor>; metadata: Record<string, string> }, c: CheckpointContents): { step: number; config?: unknown } {
  const raw = loaded.metadata.dualroute;
  let meta: Meta;
  try {
    meta = JSON.parse(raw);
  } catch {
    throw new FormatError(`${path}: not a dualroute checkpoint (no "dualroute" metadata)`);
  }
  try {
    const model: Record<string, Tensor> = {};
    const optimSlots: Record<string, Tensor> = {};
    for (const [k, t] of Object.entries(loaded.tensors)) {
      if (k.startsWith('model.')) model[k.slice(6)] = t;
      else if (k.startsWith('optim.')) optimSlots[k.slice(6)] = t;
    }
    c.model.loadStateDict(model);
    if (c.optimizer) {
      if (!meta.optimizer) throw new ValueError(`${path}: the checkpoint holds no optimizer state`);
      if (meta.optimizer.type !== c.optimizer.constructor.name) {
        throw new ValueError(`${path}: the checkpoint's optimizer is ${meta.optimizer.type}, not ${c.optimizer.constructor.name}`);
      }
      c.optimizer.loadStateDict({ step: meta.optimizer.stepCount, lr: meta.optimizer.lr, slots: optimSlots });
    }
    const gens = c.generators ?? { default: defaultGenerator };
    for (const [k, g] of Object.entries(gens)) {
      const s = meta.generators?.[k];
      if (s) g.setState(s);
    }
    return { step: meta.step, config: meta.config };
  } finally {
    for (const t of Object.values(loaded.tensors)) t.dispose();
  }
}

/** Restores a checkpoint into model (and optimizer, generators); returns the step and config. */
function checkContents(op: string, c: CheckpointContents): void {
  if (!c || typeof c !== 'object') throw new ValueError(`${op}: Expected {model, optimizer?, generators?} to restore into but received ${describe(c)}`);
  if (!(c.model instanceof Module)) throw new ValueError(`${op}: Expected a Module for model but received ${describe(c.model)}`);
  if (c.optimizer !== undefined && !(c.optimizer instanceof Optimizer)) throw new ValueError(`${op}: Expected an Optimizer for optimizer but received ${describe(c.optimizer)}`);
  if (c.generators !== undefined && (c.generators === null || typeof c.generators !== 'object')) throw new ValueError(`${op}: Expected an object of generators but received ${describe(c.generators)}`);
}

export async function loadCheckpoint(path: string, c: CheckpointContents): Promise<{ step: number; config?: unknown }> {
  checkContents('loadCheckpoint', c);
  const device = c.model.parameters()[0]?.device;
  return restore(path, await loadSafetensors(path, device ? { device } : {}), c);
}
export function loadCheckpointSync(path: string, c: CheckpointContents): { step: number; config?: unknown } {
  checkContents('loadCheckpoint', c);
  const device = c.model.parameters()[0]?.device;
  return restore(path, loadSafetensorsSync(path, device ? { device } : {}), c);
}
