// Saving and loading whole models: one safetensors checkpoint holding the weights (names as in
// docs/weights.md) and, in its metadata, the model's kind and JSON config, so that loadModel can
// rebuild the model before filling it. Writes are atomic (saveCheckpoint writes a temporary file
// and renames it): a crash never leaves a half-written checkpoint in place of a good one.
import { FormatError, ValueError, describe } from '../errors';
import { loadCheckpoint, saveCheckpoint } from '../train/checkpoint';
import { readSafetensorsHeader } from '../train/safetensors';
import { DualRouteLM } from './dual_route_lm';
import { DualRouteSeq2Seq } from './seq2seq';

type Model = DualRouteLM | DualRouteSeq2Seq;

interface Saved {
  model: 'DualRouteLM' | 'DualRouteSeq2Seq';
  config: unknown;
}

/** Writes model's weights and config to path (a .safetensors file). */
export async function saveModel(path: string, model: Model): Promise<void> {
  if (!(model instanceof DualRouteLM) && !(model instanceof DualRouteSeq2Seq)) {
    throw new ValueError(`saveModel: Expected a DualRouteLM or DualRouteSeq2Seq but received ${describe(model)}`);
  }
  const saved: Saved = { model: model instanceof DualRouteLM ? 'DualRouteLM' : 'DualRouteSeq2Seq', config: model.source };
  await saveCheckpoint(path, { model, config: saved, generators: {} });
}

/** Reads a model saved by saveModel (or a training checkpoint whose config is a saved model's). */
export async function loadModel(path: string): Promise<Model> {
  if (typeof path !== 'string' || path === '') throw new ValueError(`loadModel: Expected a file path but received ${describe(path)}`);
  const header = await readSafetensorsHeader(path);
  let meta: { config?: Saved };
  try {
    meta = JSON.parse(header.metadata.dualroute ?? '{}');
  } catch {
    throw new FormatError(`loadModel: ${path}: the checkpoint's dualroute metadata is not JSON`);
  }
  const s = meta.config;
  if (!s || (s.model !== 'DualRouteLM' && s.model !== 'DualRouteSeq2Seq')) {
    throw new FormatError(`loadModel: ${path}: Expected a checkpoint written by saveModel (metadata naming DualRouteLM or DualRouteSeq2Seq) but found ${describe(s?.model)}`);
  }
  const model = s.model === 'DualRouteLM' ? new DualRouteLM(s.config as never) : new DualRouteSeq2Seq(s.config as never);
  try {
    await loadCheckpoint(path, { model, generators: {} });
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}
