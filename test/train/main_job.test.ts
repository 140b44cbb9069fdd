// `npm start` (examples/main.ts) and `npm run experiments` (bench/experiments.ts), shortened: each
// runs to the end on the built-in data and writes what it says it writes. (The full-length runs
// are timed by hand: the stop notes give the commands and times.)
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PNG } from 'pngjs';

const ROOT = path.resolve(__dirname, '..', '..');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-main-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

test('npm start (20 steps): both models train, samples, validation losses, routing, files', () => {
  const out = path.join(dir, 'run');
  const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'examples', 'main.js'), '--steps', '20', '--quiet', '--out', out], { cwd: ROOT, encoding: 'utf8', timeout: 300_000 });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(r.stdout).toMatch(/dual \(local window \+ gated global\)\s+loss [\d.]+/);
  expect(r.stdout).toMatch(/local-only baseline\s+loss [\d.]+/);
  expect(r.stdout.match(/^ {2}> /gm)).toHaveLength(3);
  expect(r.stdout).toMatch(/layer 1: local [\d.]+ {2}global [\d.]+/);
  for (const f of ['dual/model.safetensors', 'dual/metrics.jsonl', 'dual/loss.png', 'dual/routing.png', 'local/model.safetensors', 'local/loss.png']) {
    expect([f, fs.existsSync(path.join(out, f))]).toEqual([f, true]);
  }
  // the two models have the same size (the baseline's feed-forward block widened to match)
  const sizes = [...r.stdout.matchAll(/\(([\d.]+) M parameters, \d+ s\)/g)].map((m) => Number(m[1]));
  expect(sizes).toHaveLength(2);
  expect(Math.abs(sizes[0] - sizes[1])).toBeLessThanOrEqual(0.01);
});

test('npm run experiments (shortened): the table, its JSON and the curves plot', () => {
  const out = path.join(dir, 'exp');
  const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'bench', 'experiments.js'), '--steps', '8', '--eval-every', '4', '--tasks', 'recall,copy', '--variants', 'local-only,dual-gated,dual-routed', '--out', out], { cwd: ROOT, encoding: 'utf8', timeout: 300_000 });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  const md = fs.readFileSync(path.join(out, 'experiments.md'), 'utf8');
  expect(md).toMatch(/Command: `npm run experiments`/);
  expect(md.match(/^\| (local-only|dual-gated|dual-routed) \|/gm)).toHaveLength(6);
  const json = JSON.parse(fs.readFileSync(path.join(out, 'experiments.json'), 'utf8'));
  expect(json.results).toHaveLength(6);
  for (const x of json.results) {
    expect(x.curve.map((c: { step: number }) => c.step)).toEqual([4, 8]);
    expect(Number.isFinite(x.valLoss)).toBe(true);
  }
  // equal parameter counts within a task (to the width of one feed-forward unit)
  for (const t of ['recall', 'copy']) {
    const p = json.results.filter((x: { task: string }) => x.task === t).map((x: { params: number }) => x.params);
    expect(Math.max(...p) - Math.min(...p)).toBeLessThan(0.01 * Math.max(...p));
  }
  const png = PNG.sync.read(fs.readFileSync(path.join(out, 'experiments.png')));
  expect(png.width).toBeGreaterThan(300);
});
