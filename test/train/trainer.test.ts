// The Trainer: a 300-step run on a synthetic task reaches a set loss; an interrupted run resumed
// from its checkpoint ends bit for bit where the uninterrupted one does (dropout and random routing
// included); SIGINT writes a checkpoint; gradient accumulation equals the larger batch; bfloat16
// trains; early stopping; the metrics log; classification scores against hand counts; bad options.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as dr from '../../lib';
import { Trainer, classificationScores, LMBatch, TrainSource } from '../../lib';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-trainer-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

// a restorable synthetic source: each row counts up by a per-row step from a random start (mod V),
// so the next token follows from the previous two; draws derive from (seed, batch number) only
function counting(V: number, B: number, S: number, seed: number): TrainSource<LMBatch> & { n: number } {
  const src = {
    n: 0,
    next(): LMBatch {
      let x = (seed * 7919 + this.n++ * 104729) >>> 0;
      const rnd = () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) >>> 8) / 16777216;
      const ids = new Int32Array(B * S), tg = new Int32Array(B * S);
      for (let b = 0; b < B; ++b) {
        const start = Math.floor(rnd() * V), stride = 1 + Math.floor(rnd() * 3);
        for (let s = 0; s <= S; ++s) {
          const v = (start + s * stride) % V;
          if (s < S) ids[b * S + s] = v;
          if (s > 0) tg[b * S + s - 1] = s === 1 ? -100 : v;  // the stride shows from the second token on
        }
      }
      return { ids: dr.tensor(ids, [B, S]), targets: dr.tensor(tg, [B, S]) };
    },
    state() {
      return { n: this.n };
    },
    restore(s: unknown) {
      this.n = (s as { n: number }).n;
    },
  };
  return src;
}

const small = (extra: object = {}) => new dr.DualRouteLM({ vocabSize: 16, dModel: 32, nHeads: 4, nLayers: 2, maxSeq: 32, seed: 1,
  pattern: [{ local: 'window', window: 4, global: 'none' }, { local: 'conv', global: 'full', fusion: 'gated' }], ...extra });

const weights = (m: dr.Module) => m.namedParameters().map(([n, p]) => [n, Array.from(p.dataSync())] as const);

describe('Trainer', () => {
  test('300 steps on a synthetic task reach a set loss, with evaluation and a metrics log', async () => {
    const m = small();
    const out = path.join(dir, 'run300');
    const val = counting(16, 4, 24, 999);
    const r = await new Trainer({ model: m, train: counting(16, 8, 24, 1), val: () => [0, 1].map(() => val.next()), steps: 300, lr: 3e-3, evalEvery: 100, outDir: out, seed: 3, progress: false }).fit();
    expect(r.steps).toBe(300);
    expect(r.trainLoss).toBeLessThan(0.3);  // chance is ln 16 = 2.77
    expect(r.lastEval!.loss).toBeLessThan(0.3);
    expect(r.lastEval!.accuracy).toBeGreaterThan(0.9);
    const lines = fs.readFileSync(r.metricsLog!, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.filter((l) => l.split === 'train')).toHaveLength(30);
    expect(lines.filter((l) => l.split === 'val').map((l) => l.step)).toEqual([100, 200, 300]);
    for (const f of ['checkpoint.safetensors', 'best.safetensors', 'model.safetensors']) expect(fs.existsSync(path.join(out, f))).toBe(true);
    const back = (await dr.loadModel(path.join(out, 'model.safetensors'))) as dr.DualRouteLM;
    expect(weights(back)).toEqual(weights(m));
    back.dispose();
    m.dispose();
  });

  test('an interrupted run resumed from its checkpoint ends bit for bit where the straight run does', async () => {
    // dropout, layer drop and random routing draw from the model's and the default generators
    const cfg = { dropout: 0.1, layerDrop: 0.1, pattern: [{ local: 'window', window: 4, global: 'full', fusion: 'random', randomProbs: [0.7, 0.3] }, { local: 'conv', global: 'full', fusion: 'gated' }] };
    const opts = (model: dr.DualRouteLM, train: TrainSource<LMBatch>, outDir: string) => ({ model, train, steps: 30, lr: 2e-3, outDir, seed: 5, progress: false, logEvery: 5 });
    const a = small(cfg);
    const ra = await new Trainer(opts(a, counting(16, 4, 16, 2), path.join(dir, 'straight'))).fit();
    expect(ra.interrupted).toBe(false);

    const b = small(cfg);
    const stopAt = 13;
    const first = new Trainer({ ...opts(b, counting(16, 4, 16, 2), path.join(dir, 'cut')), callbacks: { onStep: (i, t) => { if (i.step === stopAt) t.requestStop(); } } });
    const rb = await first.fit();
    expect(rb.steps).toBe(stopAt);
    b.dispose();
    // a fresh process would start here: a new model and source (its position at 0) and the default generator elsewhere
    dr.manualSeed(12345);
    const c = small(cfg);
    const rc = await new Trainer({ ...opts(c, counting(16, 4, 16, 2), path.join(dir, 'cut')), resume: true }).fit();
    expect(rc.resumedFrom).toBe(stopAt);
    expect(rc.steps).toBe(30);
    expect(weights(c)).toEqual(weights(a));
    const tail = (f: string) => fs.readFileSync(f, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((l) => l.step > 15).map((l) => l.loss);
    expect(tail(rc.metricsLog!)).toEqual(tail(ra.metricsLog!));
    [a, c].forEach((m) => m.dispose());
  });

  test('SIGINT finishes the step, writes a checkpoint and returns interrupted', async () => {
    const m = small();
    const out = path.join(dir, 'sigint');
    const r = await new Trainer({ model: m, train: counting(16, 2, 8, 3), steps: 50, outDir: out, progress: false,
      callbacks: { onStep: (i) => { if (i.step === 4) process.emit('SIGINT'); } } }).fit();
    expect(r).toMatchObject({ interrupted: true, steps: 4 });
    expect(r.finalModel).toBeUndefined();
    const back = small();
    const { step } = await dr.loadCheckpoint(r.checkpoint!, { model: back, generators: {} });
    expect(step).toBe(4);
    expect(weights(back)).toEqual(weights(m));
    expect(process.listenerCount('SIGINT')).toBe(0);
    [m, back].forEach((x) => x.dispose());
  });

  test('gradient accumulation over two halves equals one step on the whole batch', async () => {
    const whole = counting(16, 8, 12, 4);
    const batch = whole.next();
    const half = (from: number): LMBatch => ({ ids: dr.narrow(batch.ids, 0, from, 4).contiguous(), targets: dr.narrow(batch.targets, 0, from, 4).contiguous() });
    const halves = [half(0), half(4)];
    let k = 0;
    const a = small(), b = small();
    // plain SGD: Adam's first step is lr * sign(g), which would magnify rounding near g = 0
    const sgd = (m: dr.Module) => new dr.optim.SGD(m.parameters(), { lr: 0.1 });
    await new Trainer({ model: a, optimizer: sgd(a), train: { next: () => ({ ids: batch.ids.clone(), targets: batch.targets.clone() }) }, steps: 1, lr: 0.1, warmupSteps: 0, progress: false }).fit();
    await new Trainer({ model: b, optimizer: sgd(b), train: { next: () => { const h = halves[k++]; return { ids: h.ids.clone(), targets: h.targets.clone() }; } }, accumulate: 2, steps: 1, lr: 0.1, warmupSteps: 0, progress: false }).fit();
    const wa = weights(a), wb = weights(b);
    wa.forEach(([n, v], i) => {
      const u = wb[i][1];
      const err = Math.max(...v.map((x, j) => Math.abs(x - u[j])));
      expect([n, err < 2e-6]).toEqual([n, true]);
    });
    [a, b, batch.ids, batch.targets, ...halves.flatMap((h) => [h.ids, h.targets])].forEach((x) => x.dispose());
  });

  test('bfloat16 (float32 masters) trains', async () => {
    const m = small();
    const r = await new Trainer({ model: m, train: counting(16, 8, 16, 6), steps: 60, lr: 3e-3, precision: 'bfloat16', logEvery: 60, progress: false }).fit();
    expect(m.parameters()[0].dtype).toBe('bfloat16');
    expect(r.trainLoss).toBeLessThan(2.0);
    m.dispose();
  });

  test('early stopping after `patience` evaluations without improvement', async () => {
    const m = small();
    const val = counting(16, 2, 8, 8);
    const fixed = val.next();
    const r = await new Trainer({ model: m, train: counting(16, 2, 8, 9), val: () => [{ ids: fixed.ids.clone(), targets: fixed.targets.clone() }], steps: 100, evalEvery: 2,
      lr: () => 0, earlyStopping: { patience: 2 }, progress: false }).fit();
    expect(r.stoppedEarly).toBe(true);
    expect(r.steps).toBe(6);  // evals at 2 (best), 4, 6 (two without improvement)
    [m, fixed.ids, fixed.targets].forEach((x) => x.dispose());
  });

  test('classification scores against hand counts', () => {
    // targets/predictions: class 0: tp 2, fp 1, fn 0; class 1: tp 1, fp 0, fn 1; class 2: tp 0, fp 0, fn 1... and one fp of 2
    const pairs: Array<[number, number]> = [[0, 0], [0, 0], [1, 0], [1, 1], [2, 1], [1, 2]];
    // class 0: tp2 fp1 fn0 -> p 2/3 r 1; class 1: tp1 fp1 fn2 -> p 1/2 r 1/3; class 2: tp0 fp1 fn1 -> 0, 0
    const s = classificationScores(pairs);
    const f = (p: number, r: number) => (p + r ? (2 * p * r) / (p + r) : 0);
    expect(s.precision).toBeCloseTo((2 / 3 + 1 / 2 + 0) / 3, 12);
    expect(s.recall).toBeCloseTo((1 + 1 / 3 + 0) / 3, 12);
    expect(s.f1).toBeCloseTo((f(2 / 3, 1) + f(1 / 2, 1 / 3) + 0) / 3, 12);
  });

  test('bad options are clear errors', () => {
    const m = small();
    const train = counting(16, 2, 8, 1);
    expect(() => new Trainer({ model: m, train, steps: 0 })).toThrow(/steps but received number 0/);
    expect(() => new Trainer({ model: m, train, steps: 5, precision: 'fp16' as never })).toThrow(/'float32' or 'bfloat16' for precision/);
    expect(() => new Trainer({ model: m, train, steps: 5, earlyStopping: { patience: 2 } })).toThrow(/earlyStopping needs validation data/);
    expect(() => new Trainer({ model: m, train, steps: 5, resume: true })).toThrow(/resume: true needs outDir/);
    expect(() => new Trainer({ model: {} as never, train, steps: 5 })).toThrow(/Expected a Module for model/);
    expect(() => new Trainer({ model: m, train: {} as never, steps: 5 })).toThrow(/train source with next/);
    m.dispose();
  });
});
