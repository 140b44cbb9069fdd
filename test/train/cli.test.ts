// The dualroute CLI, run as users run it (node dist/lib/cli/index.js): train on text, a synthetic
// task, JSONL classification and seq2seq data; resume; eval, sample and inspect; --help of every
// command; clear errors (exit 1 for bad flags, 2 for missing files and bad configs) and nothing
// written by a failed start.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PNG } from 'pngjs';

const ROOT = path.resolve(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'lib', 'cli', 'index.js');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-cli-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function run(args: string[], timeout = 240_000) {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: dir, encoding: 'utf8', timeout });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const text = Array.from({ length: 400 }, (_, i) => `line ${i % 17}: the local path reads nearby tokens, the global path reads far ones.`).join('\n');

beforeAll(() => {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: build with npx tsc -p tsconfig.json`);
  fs.writeFileSync(path.join(dir, 'corpus.txt'), text);
  fs.writeFileSync(path.join(dir, 'tiny.json'), JSON.stringify({ dModel: 32, nHeads: 2, nLayers: 2, maxSeq: 32, layer: { local: 'window', window: 8, global: 'full', fusion: 'gated' } }));
});

describe('dualroute CLI', () => {
  test('--help of the program and of every command', () => {
    const top = run(['--help']);
    expect(top.code).toBe(0);
    for (const c of ['train', 'eval', 'sample', 'inspect']) expect(top.out).toContain(c);
    for (const [c, flag] of [['train', '--resume'], ['eval', '--max-batches'], ['sample', '--temperature'], ['inspect', '--json']]) {
      const r = run([c, '--help']);
      expect([c, r.code]).toEqual([c, 0]);
      expect(r.out).toContain(flag);
    }
  });

  test('train on text, then resume, sample, eval and inspect the run', () => {
    const out = path.join(dir, 'run');
    const a = run(['train', '--out', out, '--config', 'tiny.json', '--data', 'corpus.txt', '--steps', '20', '--batch', '4', '--seq', '32', '--eval-every', '10', '--no-progress', '--seed', '1']);
    expect(a.err).toBe('');
    expect(a.code).toBe(0);
    expect(a.out).toMatch(/steps 20: train loss [\d.]+, validation loss [\d.]+/);
    for (const f of ['run.json', 'checkpoint.safetensors', 'model.safetensors', 'best.safetensors', 'metrics.jsonl', 'loss.svg', 'loss.png', 'routing.svg', 'routing.png']) expect([f, fs.existsSync(path.join(out, f))]).toEqual([f, true]);
    const png = PNG.sync.read(fs.readFileSync(path.join(out, 'loss.png')));
    expect(png.width).toBeGreaterThan(200);
    const b = run(['train', '--out', out, '--config', 'tiny.json', '--data', 'corpus.txt', '--steps', '30', '--batch', '4', '--seq', '32', '--eval-every', '10', '--no-progress', '--seed', '1', '--resume', '--no-plots']);
    expect(b.code).toBe(0);
    expect(b.out).toContain('resumed from step 20');
    expect(b.out).toMatch(/steps 30:/);
    const s = run(['sample', out, '--prompt', 'line 3', '--max-tokens', '12', '--temperature', '0']);
    expect(s.code).toBe(0);
    expect(s.out.length).toBeGreaterThan(0);
    const e = run(['eval', out, '--seq', '32', '--batch', '4']);
    expect(e.code).toBe(0);
    const m = JSON.parse(e.out.trim().split('\n').pop()!);
    expect(m.step).toBe(30);
    expect(m.loss).toBeGreaterThan(0);
    expect(m.perplexity).toBeCloseTo(Math.exp(m.loss), 6);
    const i = run(['inspect', out, '--json']);
    expect(i.code).toBe(0);
    const rep = JSON.parse(i.out);
    expect(rep).toMatchObject({ kind: 'DualRouteLM', step: 30 });
    expect(rep.routing).toHaveLength(2);
    expect(rep.routing[0].gates).toHaveLength(2);
  });

  test('a synthetic task, classification and seq2seq from JSONL', () => {
    const syn = run(['train', '--out', path.join(dir, 'syn'), '--preset', 'tiny', '--data', 'synthetic:copy', '--steps', '5', '--seq', '24', '--batch', '4', '--no-progress', '--no-plots']);
    expect(syn.code).toBe(0);
    const cls = Array.from({ length: 40 }, (_, i) => JSON.stringify({ text: i % 2 ? `good ${i}` : `bad ${i}`, label: i % 2 ? 'pos' : 'neg' })).join('\n');
    fs.writeFileSync(path.join(dir, 'cls.jsonl'), cls);
    const c = run(['train', '--out', path.join(dir, 'cls'), '--task', 'classify', '--config', 'tiny.json', '--data', 'cls.jsonl', '--steps', '8', '--seq', '12', '--batch', '4', '--val-fraction', '0.25', '--no-progress', '--no-plots']);
    expect(c.err).toBe('');
    expect(c.code).toBe(0);
    const ev = run(['eval', path.join(dir, 'cls'), '--data', 'cls.jsonl', '--seq', '12']);
    expect(ev.code).toBe(0);
    expect(JSON.parse(ev.out.trim())).toHaveProperty('f1');
    const pairs = Array.from({ length: 30 }, (_, i) => JSON.stringify({ source: `abc${i}`, target: `${i}cba` })).join('\n');
    fs.writeFileSync(path.join(dir, 'pairs.jsonl'), pairs);
    fs.writeFileSync(path.join(dir, 's2s.json'), JSON.stringify({ dModel: 32, nHeads: 2, encoderLayers: 1, decoderLayers: 1, maxSource: 16, maxTarget: 16 }));
    const p = run(['train', '--out', path.join(dir, 's2s'), '--task', 'seq2seq', '--config', 's2s.json', '--data', 'pairs.jsonl', '--steps', '6', '--seq', '12', '--batch', '4', '--no-progress', '--no-plots']);
    expect(p.err).toBe('');
    expect(p.code).toBe(0);
  });

  test('bad flags exit 1 with commander\'s message; missing files and bad configs exit 2; nothing is written', () => {
    const bad: Array<[string[], number, RegExp]> = [
      [['train', '--out', 'x', '--steps', '0'], 1, /--steps.*Expected an integer >= 1/],
      [['train', '--out', 'x', '--precision', 'fp8'], 1, /Allowed choices are float32, bfloat16/],
      [['train'], 1, /required option '-o, --out <dir>'/],
      [['frobnicate'], 1, /unknown command 'frobnicate'/],
      [['train', '--out', 'x1', '--data', 'missing.txt', '--no-progress'], 2, /missing.txt/],
      [['train', '--out', 'x2', '--config', 'missing.json', '--no-progress'], 2, /--config missing.json: no such file/],
      [['train', '--out', 'x3', '--config', 'corpus.txt', '--no-progress'], 2, /--config corpus.txt: not valid JSON/],
      [['train', '--out', 'x4', '--data', 'synthetic:nothing', '--no-progress'], 2, /synthetic:recall, synthetic:copy or synthetic:pattern/],
      [['sample', 'nowhere'], 2, /nowhere: no such file or folder/],
      [['inspect', 'corpus.txt'], 2, /corpus.txt/],
    ];
    fs.writeFileSync(path.join(dir, 'badcfg.json'), JSON.stringify({ dModel: 30, nHeads: 4, nLayers: 1 }));
    bad.push([['train', '--out', 'x5', '--config', 'badcfg.json', '--data', 'corpus.txt', '--no-progress'], 2, /dModel: Expected a multiple of nHeads \(4\)/]);
    for (const [args, code, re] of bad) {
      const r = run(args);
      expect([args.join(' '), r.code]).toEqual([args.join(' '), code]);
      expect(r.err).toMatch(re);
      expect(r.err).not.toMatch(/\n\s+at /);  // a message, not a stack trace
    }
    for (const d of ['x', 'x1', 'x2', 'x3', 'x4', 'x5']) expect([d, fs.existsSync(path.join(dir, d))]).toEqual([d, false]);
  });
});

describe('dualroute train interrupted by SIGINT', () => {
  test('exits 130 with a checkpoint; --resume then ends bit for bit where an uninterrupted run does', async () => {
    const args = (out: string) => ['train', '--out', out, '--config', 'tiny.json', '--data', 'corpus.txt', '--steps', '300', '--batch', '4', '--seq', '32',
      '--eval-every', '100', '--no-progress', '--no-plots', '--seed', '3'];
    const straight = run(args(path.join(dir, 'straight')));
    expect(straight.code).toBe(0);
    const cut = path.join(dir, 'cut');
    const { spawn } = await import('child_process');
    const child = spawn(process.execPath, [CLI, ...args(cut)], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    // interrupt once training is under way (the first metrics line is written at step 10)
    const metrics = path.join(cut, 'metrics.jsonl');
    const started = Date.now();
    while (!(fs.existsSync(metrics) && fs.readFileSync(metrics, 'utf8').includes('"split":"train"'))) {
      if (Date.now() - started > 60_000) throw new Error('training did not start');
      await new Promise((r) => setTimeout(r, 20));
    }
    child.kill('SIGINT');
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    expect(err).toBe('');
    const header = JSON.parse(fs.readFileSync(path.join(cut, 'checkpoint.safetensors')).subarray(8, 8 + Number(fs.readFileSync(path.join(cut, 'checkpoint.safetensors')).readBigUInt64LE(0))).toString());
    const step = JSON.parse(header.__metadata__.dualroute).step;
    // signalled at step 10 or so of 300: the run stops at the next step boundary
    expect(code).toBe(130);
    expect(step).toBeGreaterThanOrEqual(10);
    expect(step).toBeLessThan(300);
    expect(fs.existsSync(path.join(cut, 'model.safetensors'))).toBe(false);
    const resumed = run([...args(cut), '--resume']);
    expect(resumed.code).toBe(0);
    expect(resumed.out).toContain(`resumed from step ${step}`);
    const a = fs.readFileSync(path.join(dir, 'straight', 'model.safetensors'));
    const b = fs.readFileSync(path.join(cut, 'model.safetensors'));
    expect(b.equals(a)).toBe(true);
  });
});

// `dualroute serve RUN --port 0` in a child process; resolves once it prints its address
async function startServe(runDir: string) {
  const { spawn } = await import('child_process');
  const child = spawn(process.execPath, [CLI, 'serve', runDir, '--port', '0'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '', err = '';
  child.stdout.on('data', (d) => (text += d));
  child.stderr.on('data', (d) => (err += d));
  const started = Date.now();
  while (!/at (http:\/\/[\d.:]+)\/v1/.test(text)) {
    if (Date.now() - started > 30_000 || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`serve did not start in ${Date.now() - started} ms (exit code ${child.exitCode}, signal ${child.signalCode}): stdout ${JSON.stringify(text)}, stderr ${JSON.stringify(err)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { child, url: text.match(/at (http:\/\/[\d.:]+)\/v1/)![1], output: () => text };
}

describe('dualroute serve', () => {
  test('serves a trained run over HTTP and closes on SIGTERM', async () => {
    const out = path.join(dir, 'run');
    expect(fs.existsSync(path.join(out, 'model.safetensors'))).toBe(true);  // trained by the test above
    const { child, url, output } = await startServe(out);
    const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'line 3', max_tokens: 5, temperature: 0 }) });
    expect(r.status).toBe(200);
    const body = await r.json();
    expect(body.usage.completion_tokens).toBeGreaterThan(0);
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
    expect(code).toBe(0);
    expect(output()).toContain('closing');
  });

  test('SIGTERM drains: a stream in flight finishes, new connections are refused, then exit 0', async () => {
    const out = path.join(dir, 'run');
    const { child, url, output } = await startServe(out);
    const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'line', max_tokens: 25, temperature: 1, stream: true }) });
    expect(r.status).toBe(200);
    const reader = r.body!.getReader();
    const first = await reader.read();  // the stream is under way
    expect(first.done).toBe(false);
    child.kill('SIGTERM');
    await new Promise((res) => setTimeout(res, 100));
    // no longer accepting: a new connection is refused, or a request on an open one gets 503
    const h = await fetch(`${url}/health`).then((x) => x.status, () => 'refused');
    expect(['refused', 503]).toContain(h);
    let body = Buffer.from(first.value!).toString();
    for (;;) {
      const c = await reader.read();
      if (c.done) break;
      body += Buffer.from(c.value).toString();
    }
    expect(body.trim().endsWith('data: [DONE]')).toBe(true);  // the request in flight finished
    const code = await new Promise<number | null>((res) => (child.exitCode !== null ? res(child.exitCode) : child.on('exit', (c) => res(c))));
    expect(code).toBe(0);
  });
});
