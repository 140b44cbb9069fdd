// Dispatch overhead and event-loop responsiveness: what it costs to issue an op, and what the
// JavaScript thread can do while ops compute. With --baseline another build of dualroute (an
// older commit's dist/lib, say) runs in the same process, interleaved round by round with this
// one, so both see the same machine at the same moments; the table gives each side's median
// with the spread (min..max over rounds) and the ratio this/baseline.
//
// The rows marked [torch] are also measured through PyTorch's Python front end (python3 with
// torch, 2 threads): one long-lived python/bench_overhead.py process runs the same calls when
// asked, row by row, between ours (which side goes first alternates by round), so both see the
// same machine at the same moments; the table adds torch's median and spread and this/torch.
// Without torch (or with --no-torch) those columns stay empty.
//
//   node dist/bench/overhead.js [--baseline path/to/other/dist/lib] [--rounds N] [--quick]
//                               [--json path] [--python path/to/python3] [--no-torch] [--only torch]
//
// --only torch runs only the [torch] rows (a short run for the per-op figures).
//
// Rows:
//   tiny op round trip      add(x, 1) on 16 floats, then dataSync(): issue, run, read back (us per op)
//   tiny op issue           add(x, 1) on 16 floats, time on the JavaScript thread only (us per op)
//   chain 1000 x 1K|64K|1M  1000 dependent element-wise ops (mul, add alternating) on 1K, 64K or 1M floats
//                           (the first two run at once on the calling thread while the stream is idle,
//                           the last one is queued: see `inline` in native/optable.js),
//                           issued and read once at the end (ms per chain; GB/s of the bytes the
//                           ops must move: read one input, write one output, 8 bytes per element)
//   event loop worst gap    the longest interval between ticks of a 10 ms setInterval while
//                           ~2 s of 2048^3 matmuls and a causal attention at S4096 compute (ms);
//                           also the issue time of that work and its total
//   [torch] rows, us per call (each call's result disposed at once, as Python's refcount frees it):
//   add 16, no grad         add(x, 1) on 16 floats, issued and run (a tiny op runs at once when
//                           its stream is idle), the output disposed
//   add 16, autograd        the same with x.requiresGrad: the op is recorded on the tape
//   fwd+bwd (x*2+1).sum()   one tidy() step: y = sum(add(mul(x, 2), 1)); backward(y) on 16
//                           floats requiring grad (3 recorded ops, 3 backward rules, the leaf's
//                           gradient accumulated); us per step
//   matmul [1,128]x[128,128], softmax [1,128], rmsNorm [1,128] (with a weight; torch 1.13 has no
//                           fused RMSNorm, so its side is the five-call form models write),
//                           layerNorm [1,128] (weight and bias), narrow [1,128] -> [1,64] and
//                           reshape [1,128] -> [128] (views): what a decode step's ops pay
//                           (the matmul's 16,640 elements pass the matmul family's inline limit,
//                           so it is queued: its row measures the stream's throughput)
// --json writes {machine, rounds, quick, baseline, torch, command, date, rows: [{row, unit,
// this, baseline?, ratio?, torch?, ratioTorch?, bytes?}]}, each side {median, min, max, values}.
// Plain node only, like bench/run.ts.
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import * as readline from 'readline';
import * as dr from '../lib';

type Lib = typeof dr;

interface Args {
  baseline: string | null;
  rounds: number;
  quick: boolean;
  json: string | null;
  python: string;
  torch: boolean;
  onlyTorch: boolean;
}

function parseArgs(argv: string[]): Args {
  const defaultPython = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
  const a: Args = { baseline: null, rounds: 7, quick: false, json: null, python: defaultPython, torch: true, onlyTorch: false };
  for (let i = 0; i < argv.length; ++i) {
    const k = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${k} needs a value`);
      return argv[++i];
    };
    if (k === '--baseline') a.baseline = path.resolve(val());
    else if (k === '--rounds') a.rounds = Number(val());
    else if (k === '--quick') a.quick = true;
    else if (k === '--json') a.json = val();
    else if (k === '--python') a.python = val();
    else if (k === '--no-torch') a.torch = false;
    else if (k === '--only') {
      const v = val();
      if (v !== 'torch') throw new Error(`--only takes 'torch', received ${v}`);
      a.onlyTorch = true;
    } else throw new Error(`unknown argument ${k} (see the header of bench/overhead.ts)`);
  }
  if (!Number.isInteger(a.rounds) || a.rounds < 1) throw new Error('--rounds must be a positive integer');
  if (a.quick) a.rounds = Math.min(a.rounds, 3);
  return a;
}

const now = () => performance.now();
const sync = (L: Lib) => (typeof L.synchronize === 'function' ? L.synchronize() : undefined);

// us per op of add + dataSync on a tiny tensor
function tinyRoundTrip(L: Lib, n: number): number {
  const x = L.ones([16]);
  sync(L);
  const t0 = now();
  for (let i = 0; i < n; ++i) {
    const y = L.add(x, 1);
    y.dataSync();
    y.dispose();
  }
  const us = ((now() - t0) * 1000) / n;
  x.dispose();
  return us;
}

// us per op of issuing add on a tiny tensor (the JavaScript thread's part)
function tinyIssue(L: Lib, n: number): number {
  const x = L.ones([16]);
  sync(L);
  const outs: dr.Tensor[] = [];
  const t0 = now();
  for (let i = 0; i < n; ++i) outs.push(L.add(x, 1));
  const us = ((now() - t0) * 1000) / n;
  sync(L);
  outs.forEach((t) => t.dispose());
  x.dispose();
  return us;
}

// ms for a chain of 1000 dependent element-wise ops, read once at the end
function chain(L: Lib, size: number): number {
  const x = L.ones([size]);
  sync(L);
  const t0 = now();
  let cur = L.mul(x, 1);
  for (let i = 1; i < 1000; ++i) {
    const next = i % 2 ? L.mul(cur, 0.999) : L.add(cur, 0.001);
    cur.dispose();
    cur = next;
  }
  cur.dataSync();
  const ms = now() - t0;
  cur.dispose();
  x.dispose();
  return ms;
}

interface Gap {
  worst: number;
  issued: number;
  total: number;
}

async function eventLoopGap(L: Lib, quick: boolean): Promise<Gap> {
  const n = quick ? 512 : 2048;
  const a = L.randn([n, n], { generator: new L.Generator(1) });
  const q = L.randn([1, 4, quick ? 1024 : 4096, 64], { generator: new L.Generator(2) });
  L.matmul(a, a).dataSync();
  const gaps: number[] = [];
  let last = now();
  const timer = setInterval(() => {
    const t = now();
    gaps.push(t - last);
    last = t;
  }, 10);
  await new Promise((r) => setTimeout(r, 25));
  const t0 = now();
  let acc = L.globalAttention(q, q, q, { causal: true }).sum();
  const count = quick ? 4 : 14;
  for (let i = 0; i < count; ++i) {
    const p = L.matmul(a, a);
    const s = L.add(acc, L.sum(p));
    p.dispose();
    acc.dispose();
    acc = s;
  }
  const issued = now() - t0;
  await acc.data();
  const total = now() - t0;
  await new Promise((r) => setTimeout(r, 25));
  clearInterval(timer);
  [a, q, acc].forEach((t) => t.dispose());
  return { worst: Math.max(...gaps), issued, total };
}

// ---- the rows measured beside PyTorch ---------------------------------------------------------

interface TorchRow {
  name: string;
  unit: string;
  /** The row's name in python/bench_overhead.py. */
  torch: string;
  /** Calls per measurement (full run; --quick takes a tenth). */
  n: number;
  /** Seconds for n calls on side L. */
  run: (L: Lib, n: number) => number;
}

// Times n calls of fn (each result disposed), then waits for the stream: issue + run.
function timed(L: Lib, n: number, fn: () => dr.Tensor): number {
  sync(L);
  const t0 = now();
  for (let i = 0; i < n; ++i) fn().dispose();
  sync(L);
  return (now() - t0) / 1000;
}

// Inputs made once per side (outside every timing).
interface Inputs {
  x16: dr.Tensor;
  g16: dr.Tensor;
  v: dr.Tensor;
  w: dr.Tensor;
  gw: dr.Tensor;
  gb: dr.Tensor;
}
const inputsOf = new Map<Lib, Inputs>();
function inputs(L: Lib): Inputs {
  let i = inputsOf.get(L);
  if (!i) {
    const gen = new L.Generator(3);
    i = {
      x16: L.ones([16]),
      g16: L.ones([16]),
      v: L.randn([1, 128], { generator: gen }),
      w: L.randn([128, 128], { generator: gen }),
      gw: L.ones([128]),
      gb: L.zeros([128]),
    };
    i.g16.requiresGrad = true;
    inputsOf.set(L, i);
  }
  return i;
}

const TORCH_ROWS: TorchRow[] = [
  { name: 'add 16, no grad', unit: 'us/op', torch: 'add', n: 20000, run: (L, n) => { const { x16 } = inputs(L); return timed(L, n, () => L.add(x16, 1)); } },
  { name: 'add 16, autograd', unit: 'us/op', torch: 'add_grad', n: 20000, run: (L, n) => { const { g16 } = inputs(L); return timed(L, n, () => L.add(g16, 1)); } },
  {
    name: 'fwd+bwd (x*2+1).sum()', unit: 'us/step', torch: 'fwd_bwd', n: 4000,
    run: (L, n) => {
      const { g16: x } = inputs(L);
      sync(L);
      const t0 = now();
      for (let i = 0; i < n; ++i) {
        L.tidy(() => {
          L.backward(L.sum(L.add(L.mul(x, 2), 1)));
        });
      }
      sync(L);
      const s = (now() - t0) / 1000;
      x.grad?.dispose();
      x.grad = null;
      return s;
    },
  },
  { name: 'matmul [1,128]x[128,128]', unit: 'us/op', torch: 'matmul', n: 10000, run: (L, n) => { const { v, w } = inputs(L); return timed(L, n, () => L.matmul(v, w)); } },
  { name: 'softmax [1,128]', unit: 'us/op', torch: 'softmax', n: 10000, run: (L, n) => { const { v } = inputs(L); return timed(L, n, () => L.softmax(v, -1)); } },
  { name: 'rmsNorm [1,128]', unit: 'us/op', torch: 'rms_norm', n: 10000, run: (L, n) => { const { v, gw } = inputs(L); return timed(L, n, () => L.rmsNorm(v, gw, 1e-6)); } },
  { name: 'layerNorm [1,128]', unit: 'us/op', torch: 'layer_norm', n: 10000, run: (L, n) => { const { v, gw, gb } = inputs(L); return timed(L, n, () => L.layerNorm(v, gw, gb, 1e-5)); } },
  { name: 'narrow [1,128]->[1,64]', unit: 'us/op', torch: 'narrow', n: 20000, run: (L, n) => { const { v } = inputs(L); return timed(L, n, () => L.narrow(v, 1, 0, 64)); } },
  { name: 'reshape [1,128]->[128]', unit: 'us/op', torch: 'reshape', n: 20000, run: (L, n) => { const { v } = inputs(L); return timed(L, n, () => L.reshape(v, [128])); } },
];

// The long-lived python/bench_overhead.py process: one request at a time, answered in order.
class TorchSide {
  private waiting: Array<{ line: (l: string) => void; fail: (e: Error) => void }> = [];
  private constructor(private proc: ChildProcess, lines: readline.Interface, readonly version: string) {
    lines.on('line', (l) => this.waiting.shift()?.line(l));
    // a python that dies mid-run fails the row it was asked for, not a silent hang
    proc.stdin!.on('error', () => {});  // (EPIPE after an exit: reported by the exit handler)
    proc.on('exit', (code, signal) => {
      for (const w of this.waiting.splice(0)) w.fail(new Error(`python/bench_overhead.py exited (${signal ?? code})`));
    });
  }

  static async start(python: string): Promise<TorchSide | string> {
    const script = path.resolve(__dirname, '..', '..', 'python', 'bench_overhead.py');
    if (!fs.existsSync(script)) return `${script} not found`;
    const proc = spawn(python, [script], { stdio: ['pipe', 'pipe', 'inherit'] });
    const lines = readline.createInterface({ input: proc.stdout! });
    const first = await new Promise<string>((resolve) => {
      proc.once('error', (e) => resolve(JSON.stringify({ ready: false, error: String(e) })));
      proc.once('exit', (code) => resolve(JSON.stringify({ ready: false, error: `${python} exited with ${code}` })));
      lines.once('line', resolve);
    });
    const hello = JSON.parse(first) as { ready: boolean; torch?: string; threads?: number; error?: string };
    if (!hello.ready) {
      proc.kill();
      return hello.error ?? 'no torch';
    }
    proc.removeAllListeners('exit');
    return new TorchSide(proc, lines, `${hello.torch} (${hello.threads} threads, ${python})`);
  }

  /** us per call of the row, n calls timed by python itself. */
  run(row: string, n: number): Promise<number> {
    return new Promise((resolve, reject) => {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        reject(new Error('python/bench_overhead.py is not running'));
        return;
      }
      this.waiting.push({
        line: (line) => {
          const r = JSON.parse(line) as { us?: number; error?: string };
          if (typeof r.us === 'number') resolve(r.us);
          else reject(new Error(`torch row ${row}: ${r.error}`));
        },
        fail: reject,
      });
      this.proc.stdin!.write(JSON.stringify({ row, n }) + '\n');
    });
  }

  close(): void {
    this.proc.stdin!.end();
  }
}

interface Row {
  name: string;
  unit: string;
  /** Per side: every round's value. */
  values: Record<string, number[]>;
  /** Bytes the row's ops must move per unit (for GB/s), when it is memory-bound work. */
  bytes?: number;
}

const median = (v: number[]) => {
  const s = [...v].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const sides: Array<[string, Lib]> = [['this', dr]];
  if (args.baseline) sides.push(['baseline', require(args.baseline) as Lib]);
  const info = dr.devices();
  console.log(`dualroute dispatch overhead on cpu (${info.cpu.name}, ${info.cpu.threads} threads, ${info.cpu.simd}); ${args.rounds} rounds, interleaved`);
  if (args.baseline) console.log(`baseline: ${args.baseline}`);
  let torch: TorchSide | null = null;
  let torchNote = 'not run (--no-torch)';
  if (args.torch) {
    const t = await TorchSide.start(args.python);
    if (typeof t === 'string') torchNote = `unavailable: ${t}`;
    else {
      torch = t;
      torchNote = `torch ${t.version}`;
    }
  }
  console.log(`torch: ${torchNote}`);
  const rows: Row[] = [];
  const addRow = (name: string, unit: string, bytes?: number) => {
    rows.push({ name, unit, values: {}, bytes });
    return rows.length - 1;
  };
  const put = (row: number, side: string, v: number) => (rows[row].values[side] ??= []).push(v);
  const nTiny = args.quick ? 2000 : 20000;
  const torchRows = TORCH_ROWS.map((r) => ({ r, i: addRow(r.name, r.unit), n: args.quick ? Math.ceil(r.n / 10) : r.n }));
  const plain = args.onlyTorch ? null : {
    roundTrip: addRow('tiny op round trip', 'us/op'),
    issue: addRow('tiny op issue', 'us/op'),
    c1k: addRow('chain 1000 x 1K', 'ms', 1000 * 1024 * 8),
    c64k: addRow('chain 1000 x 64K', 'ms', 1000 * 65536 * 8),
    c1m: addRow('chain 1000 x 1M', 'ms', 1000 * 1048576 * 8),
    gap: addRow('event loop worst gap', 'ms'),
    issued: addRow('event loop: issue time', 'ms'),
    total: addRow('event loop: total time', 'ms'),
  };
  // warm-up (JIT, caches) on every side, not recorded
  for (const [, L] of sides) {
    for (const { r, n } of torchRows) r.run(L, Math.ceil(n / 10));
    if (plain) {
      tinyRoundTrip(L, 2000);
      tinyIssue(L, 2000);
      chain(L, 1024);
    }
  }
  for (let r = 0; r < args.rounds; ++r) {
    // alternate which side goes first, so neither always runs on a warmer or cooler machine
    const order = r % 2 ? [...sides].reverse() : sides;
    // the rows beside torch: row by row, torch first on odd rounds
    for (const { r: row, i, n } of torchRows) {
      if (torch && r % 2) put(i, 'torch', await torch.run(row.torch, n));
      for (const [name, L] of order) {
        row.run(L, Math.ceil(n / 20));  // warm this row again after the other side ran
        put(i, name, (row.run(L, n) / n) * 1e6);
      }
      if (torch && r % 2 === 0) put(i, 'torch', await torch.run(row.torch, n));
    }
    if (!plain) continue;
    for (const [name, L] of order) {
      put(plain.roundTrip, name, tinyRoundTrip(L, nTiny));
      put(plain.issue, name, tinyIssue(L, nTiny));
      put(plain.c1k, name, chain(L, 1024));
      put(plain.c64k, name, chain(L, 65536));
      put(plain.c1m, name, chain(L, 1048576));
      const g = await eventLoopGap(L, args.quick);
      put(plain.gap, name, g.worst);
      put(plain.issued, name, g.issued);
      put(plain.total, name, g.total);
    }
  }
  torch?.close();
  const cols: Array<[string, string]> = [['this', 'this']];
  if (args.baseline) cols.push(['baseline', 'baseline']);
  if (torch) cols.push(['torch', 'torch']);
  const header =
    `${'row'.padEnd(26)} ${'unit'.padEnd(7)} ` +
    cols.map(([, label]) => `${label} (median, min..max)`.padEnd(30)).join(' ') +
    (args.baseline ? ' this/baseline' : '') + (torch ? ' this/torch' : '');
  console.log(header);
  console.log('-'.repeat(header.length));
  const out: Array<Record<string, unknown>> = [];
  for (const row of rows) {
    const cell = (v: number[] | undefined) => {
      if (!v) return '-';
      const m = median(v);
      const rate = row.bytes ? `, ${((row.bytes / (m / 1000)) / 1e9).toFixed(1)} GB/s` : '';
      return `${fmt(m)} (${fmt(Math.min(...v))}..${fmt(Math.max(...v))})${rate}`;
    };
    const summary = (v: number[]) => ({ median: median(v), min: Math.min(...v), max: Math.max(...v), values: v });
    const mine = row.values.this;
    let line = `${row.name.padEnd(26)} ${row.unit.padEnd(7)} ` + cols.map(([k]) => cell(row.values[k]).padEnd(30)).join(' ');
    const rec: Record<string, unknown> = { row: row.name, unit: row.unit, this: summary(mine) };
    if (args.baseline) {
      const base = row.values.baseline;
      line += ` ${(median(mine) / median(base)).toFixed(2).padEnd(13)}`;
      rec.baseline = summary(base);
      rec.ratio = median(mine) / median(base);
    }
    if (torch) {
      const t = row.values.torch;
      line += t ? ` ${(median(mine) / median(t)).toFixed(2)}` : ' -';
      if (t) {
        rec.torch = summary(t);
        rec.ratioTorch = median(mine) / median(t);
      }
    }
    if (row.bytes) rec.bytes = row.bytes;
    console.log(line.trimEnd());
    out.push(rec);
  }
  if (args.json) {
    const doc = {
      machine: info.cpu, rounds: args.rounds, quick: args.quick, baseline: args.baseline, torch: torchNote,
      command: `node dist/bench/overhead.js ${process.argv.slice(2).join(' ')}`, date: new Date().toISOString(), rows: out,
    };
    const tmp = `${args.json}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(doc, null, 2));
    fs.renameSync(tmp, args.json);
    console.log(`wrote ${args.json}`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
