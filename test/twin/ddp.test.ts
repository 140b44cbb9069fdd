// The twin's data-parallel training: torchrun with two CPU processes (gloo) trains a DualRouteLM,
// the replicas end identical, the run equals one process on the same global batches, the loss
// falls, and the checkpoint loads back into dualroute, which then serves it (generation) with the
// logits PyTorch computes for it.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as dr from '../../lib';
import { maxErrRatio } from '../reference';
import { spawnSync } from 'child_process';
import { REPO, describeWithTorch, runPython } from './python';

const config = {
  vocabSize: 256, dModel: 32, nHeads: 4, nKvHeads: 2, nLayers: 2, maxSeq: 48, seed: 1,
  pattern: [{ local: 'window', window: 8, global: 'full', fusion: 'gated' }, { local: 'conv', global: 'routed', capacity: 0.5 }],
};

// a small corpus with structure to learn (words from a short list, in a seeded order)
function corpus(): string {
  const words = ['local', 'global', 'router', 'gate', 'segment', 'expert', 'token', 'window', 'cache', 'layer'];
  let x = 12345;
  const out: string[] = [];
  for (let i = 0; i < 3000; ++i) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out.push(words[(x >>> 16) % words.length]);
  }
  return out.join(' ');
}

// every file under a folder
const walk = (d: string): string[] => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]));

const lastJson = (stdout: string): Record<string, unknown> => {
  const lines = stdout.split('\n').map((l) => l.replace(/^\[default\d+\]:/, '').trim()).filter((l) => l.startsWith('{"done"'));
  if (!lines.length) throw new Error(`no summary line in:\n${stdout.slice(-2000)}`);
  return JSON.parse(lines[lines.length - 1]);
};

describeWithTorch('PyTorch twin: torchrun data-parallel training', (py) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-ddp-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cfg = path.join(dir, 'config.json');
  const data = path.join(dir, 'corpus.txt');
  const common = ['--config', cfg, '--data', data, '--steps', '12', '--batch', '8', '--seq', '32', '--lr', '3e-3', '--log-every', '0'];
  let ddp: Record<string, unknown>;
  let single: Record<string, unknown>;

  beforeAll(() => {
    fs.writeFileSync(cfg, JSON.stringify(config));
    fs.writeFileSync(data, corpus());
    // torchrun is torch.distributed.run; torch 1.13 on Python 3.11 cannot parse the default
    // --redirects 0 (an IntFlag change), so its output is redirected and teed explicitly
    // --log_dir keeps every rank's output: a failure shows what each rank did
    const logs = path.join(dir, 'torchrun-logs');
    try {
      ddp = lastJson(runPython(py, ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '--redirects', '1', '--tee', '1', '--log_dir', logs,
        'python/train_ddp.py', ...common, '--threads', '1', '--out', path.join(dir, 'ddp.safetensors')], { timeoutMs: 240_000 }));
    } catch (e) {
      const ranks = fs.existsSync(logs) ? walk(logs).map((f) => `--- ${path.relative(logs, f)}\n${fs.readFileSync(f, 'utf8').slice(-3000)}`).join('\n') : '(no torchrun logs)';
      throw new Error(`${(e as Error).message}\n${ranks}`);
    }
    single = lastJson(runPython(py, ['python/train_ddp.py', ...common, '--threads', '2', '--out', path.join(dir, 'single.safetensors')]));
  }, 600_000);

  test('two gloo processes, identical replicas, a falling loss', () => {
    expect(ddp).toMatchObject({ processes: 2, backend: 'gloo', steps: 12, replicaMaxDiff: 0 });
    expect(ddp.lastLoss as number).toBeLessThan((ddp.firstLoss as number) - 0.5);
  });

  test('data-parallel training equals one process on the same global batches', () => {
    expect(single).toMatchObject({ processes: 1 });
    const a = dr.loadSafetensorsSync(path.join(dir, 'ddp.safetensors')).tensors;
    const b = dr.loadSafetensorsSync(path.join(dir, 'single.safetensors')).tensors;
    expect(Object.keys(a).sort()).toEqual(Object.keys(b).sort());
    for (const k of Object.keys(a)) {
      const { ratio, at } = maxErrRatio(a[k].dataSync(), Float64Array.from(b[k].dataSync()), 1e-4, 1e-3);
      if (!(ratio <= 1)) throw new Error(`${k}: data-parallel ${a[k].dataSync()[at]} vs one process ${b[k].dataSync()[at]}`);
    }
    Object.values(a).concat(Object.values(b)).forEach((t) => t.dispose());
  });

  test('the checkpoint loads back into dualroute, which serves it with PyTorch\'s logits', async () => {
    const file = path.join(dir, 'ddp.safetensors');
    const m = (await dr.loadModel(file)) as dr.DualRouteLM;
    expect(m).toBeInstanceOf(dr.DualRouteLM);
    expect(m.source).toEqual(config);
    m.eval();
    const prompt = Array.from(Buffer.from('local global router '));
    const ids = dr.tensor(Int32Array.from(prompt), [1, prompt.length]);
    await dr.saveSafetensors(path.join(dir, 'in.safetensors'), { ids, targets: ids });
    fs.writeFileSync(path.join(dir, 'job.json'), JSON.stringify([{ model: file, inputs: path.join(dir, 'in.safetensors'), out: path.join(dir, 'out.safetensors'), dtype: 'float32', mode: 'eval' }]));
    runPython(py, ['python/parity.py', path.join(dir, 'job.json')]);
    const want = dr.loadSafetensorsSync(path.join(dir, 'out.safetensors')).tensors.logits;
    const got = m.forward(ids);
    const { ratio } = maxErrRatio(got.dataSync(), Float64Array.from(want.dataSync()), 1e-4, 1e-4);
    expect(ratio).toBeLessThanOrEqual(1);
    const text = await m.generateTokens(prompt, { maxTokens: 12, temperature: 0 });
    expect(text[0].length).toBe(12);
    expect(text[0].every((t) => Number.isInteger(t) && t >= 0 && t < 256)).toBe(true);
    [got, want, ids].forEach((t) => t.dispose());
    m.dispose();
  });

  test('bad flags and files are clear errors (exit 2), not tracebacks', () => {
    const bad: Array<[string[], RegExp]> = [
      [['--config', cfg, '--data', path.join(dir, 'missing.txt'), '--out', path.join(dir, 'x.safetensors')], /--data .*missing.txt: no such file/],
      [['--config', cfg, '--data', data, '--seq', '500', '--out', path.join(dir, 'x.safetensors')], /--seq 500 is longer than the model's maxSeq \(48\)/],
    ];
    for (const [args, re] of bad) {
      const r = spawnSync(py, ['python/train_ddp.py', ...args], { cwd: REPO, encoding: 'utf8' });
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(re);
      expect(r.stderr).not.toMatch(/Traceback/);
    }
    expect(fs.existsSync(path.join(dir, 'x.safetensors'))).toBe(false);
  });
});
