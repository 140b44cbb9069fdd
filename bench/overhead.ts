// Dispatch overhead and event-loop responsiveness: what it costs to issue an op, and what the
// JavaScript thread can do while ops compute. With --baseline another build of dualroute (an
// older commit's dist/lib, say) runs in the same process, interleaved round by round with this
// one, so both see the same machine at the same moments; the table gives each side's median
// with the spread (min..max over rounds) and the ratio this/baseline.
//
//   node dist/bench/overhead.js [--baseline path/to/other/dist/lib] [--rounds N] [--quick] [--json path]
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
// Plain node only, like bench/run.ts.
import * as fs from 'fs';
import * as path from 'path';
import * as dr from '../lib';

type Lib = typeof dr;

interface Args {
  baseline: string | null;
  rounds: number;
  quick: boolean;
  json: string | null;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { baseline: null, rounds: 7, quick: false, json: null };
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
    else throw new Error(`unknown argument ${k} (see the header of bench/overhead.ts)`);
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
  const rows: Row[] = [
    { name: 'tiny op round trip', unit: 'us/op', values: {} },
    { name: 'tiny op issue', unit: 'us/op', values: {} },
    { name: 'chain 1000 x 1K', unit: 'ms', values: {}, bytes: 1000 * 1024 * 8 },
    { name: 'chain 1000 x 64K', unit: 'ms', values: {}, bytes: 1000 * 65536 * 8 },
    { name: 'chain 1000 x 1M', unit: 'ms', values: {}, bytes: 1000 * 1048576 * 8 },
    { name: 'event loop worst gap', unit: 'ms', values: {} },
    { name: 'event loop: issue time', unit: 'ms', values: {} },
    { name: 'event loop: total time', unit: 'ms', values: {} },
  ];
  const put = (row: number, side: string, v: number) => (rows[row].values[side] ??= []).push(v);
  const nTiny = args.quick ? 2000 : 20000;
  // warm-up (JIT, caches) on every side, not recorded
  for (const [, L] of sides) {
    tinyRoundTrip(L, 2000);
    tinyIssue(L, 2000);
    chain(L, 1024);
  }
  for (let r = 0; r < args.rounds; ++r) {
    // alternate which side goes first, so neither always runs on a warmer or cooler machine
    const order = r % 2 ? [...sides].reverse() : sides;
    for (const [name, L] of order) {
      put(0, name, tinyRoundTrip(L, nTiny));
      put(1, name, tinyIssue(L, nTiny));
      put(2, name, chain(L, 1024));
      put(3, name, chain(L, 65536));
      put(4, name, chain(L, 1048576));
      const g = await eventLoopGap(L, args.quick);
      put(5, name, g.worst);
      put(6, name, g.issued);
      put(7, name, g.total);
    }
  }
  const header = `${'row'.padEnd(24)} ${'unit'.padEnd(6)} ${'this (median, min..max)'.padEnd(28)}${args.baseline ? ` ${'baseline (median, min..max)'.padEnd(30)} this/baseline` : ''}`;
  console.log(header);
  console.log('-'.repeat(header.length));
  const out: Array<Record<string, unknown>> = [];
  for (const row of rows) {
    const cell = (v: number[]) => {
      const m = median(v);
      const rate = row.bytes ? `, ${((row.bytes / (m / 1000)) / 1e9).toFixed(1)} GB/s` : '';
      return `${fmt(m)} (${fmt(Math.min(...v))}..${fmt(Math.max(...v))})${rate}`;
    };
    const mine = row.values.this;
    let line = `${row.name.padEnd(24)} ${row.unit.padEnd(6)} ${cell(mine).padEnd(28)}`;
    const rec: Record<string, unknown> = { row: row.name, unit: row.unit, this: { median: median(mine), min: Math.min(...mine), max: Math.max(...mine), values: mine } };
    if (args.baseline) {
      const base = row.values.baseline;
      line += ` ${cell(base).padEnd(30)} ${(median(mine) / median(base)).toFixed(2)}`;
      rec.baseline = { median: median(base), min: Math.min(...base), max: Math.max(...base), values: base };
      rec.ratio = median(mine) / median(base);
    }
    if (row.bytes) rec.bytes = row.bytes;
    console.log(line);
    out.push(rec);
  }
  if (args.json) {
    const doc = { machine: info.cpu, rounds: args.rounds, quick: args.quick, baseline: args.baseline, date: new Date().toISOString(), rows: out };
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
