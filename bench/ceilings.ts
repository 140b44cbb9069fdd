// The compute ceiling of each element-wise row of bench/elementwise.ts: the kernel on one thread
// over rows x 1024 float32 small enough to stay in the core's L2 (default 32 rows: 128 KiB an
// array), called back to back, less the cost of the same call on one row of 16 (queueing, the
// output's allocation, waking the stream). What is left is the kernel's arithmetic and its L1/L2
// traffic: its bytes (as elementwise.ts counts them) over that time, per core, and that times the
// pool's threads, the most the kernel could move from memory if memory were free. A row whose
// ceiling is near the memory rate cannot reach it from memory (the work and the traffic would
// have to overlap perfectly); elementwise.ts's "in cache" column is not this figure (its arrays
// of 1 and 4 MiB live in the shared last-level cache, whose bandwidth bounds it too).
//
//   node dist/bench/ceilings.js [--rows 32] [--rounds 7] [--filter crossentropy,gelu] [--json path]
//
// Per row: the median over rounds of (time of `calls` big calls - time of `calls` tiny calls) /
// calls, the two alternated in every round; the spread is the fastest and slowest round.
import * as fs from 'fs';
import * as os from 'os';
import { parseArgs as parseArgsNode } from 'util';
import * as dr from '../lib';
import { memoryBenches } from './elementwise';
import { stats } from './rounds';

interface Args { rows: number; rounds: number; filter: string[]; json: string | null }

function parseArgs(argv: string[]): Args {
  const { values } = parseArgsNode({
    args: argv,
    options: { rows: { type: 'string' }, rounds: { type: 'string' }, filter: { type: 'string' }, json: { type: 'string' } },
  });
  const a: Args = {
    rows: Number(values.rows ?? 32),
    rounds: Number(values.rounds ?? 7),
    filter: (values.filter ?? '').toLowerCase().split(',').filter(Boolean),
    json: values.json ?? null,
  };
  if (!Number.isInteger(a.rows) || a.rows < 1) throw new Error(`--rows must be a positive integer, got ${values.rows}`);
  if (!Number.isInteger(a.rounds) || a.rounds < 1) throw new Error(`--rounds must be a positive integer, got ${values.rounds}`);
  return a;
}

function main(): void {
  const a = parseArgs(process.argv.slice(2));
  const threads = dr.numThreads();
  const cols = 1024;
  let bs = memoryBenches(a.rows, cols).filter((b) => !b.reference);
  if (a.filter.length) bs = bs.filter((b) => a.filter.some((f) => b.op.toLowerCase().includes(f)));
  const tiny = new Map(memoryBenches(1, 16).map((b) => [b.op, b]));
  const gen = new dr.Generator(5);
  // tens of milliseconds of big calls a measurement (4096 calls at 32 rows)
  const calls = Math.max(200, Math.round(131072 / a.rows));
  const time = (run: () => dr.Tensor[], n: number) => {
    dr.synchronize();
    const t0 = performance.now();
    for (let i = 0; i < n; ++i) dr.dispose(run());
    dr.synchronize();
    return (performance.now() - t0) / n;
  };
  dr.setNumThreads(1);
  const rows: Array<{ op: string; bytes: number; usNet: number; usRange: [number, number]; gbpsCore: number; gbpsCeiling: number }> = [];
  try {
    for (const b of bs) {
      const t = tiny.get(b.op)!;
      const xs = b.make(gen), ts = t.make(gen);
      time(() => b.run(xs), calls);  // warm-up
      const net: number[] = [];
      for (let r = 0; r < a.rounds; ++r) {
        const big = time(() => b.run(xs), calls), small = time(() => t.run(ts), calls);
        net.push(Math.max(big - small, 1e-6));
      }
      dr.dispose([...xs, ...ts]);
      const s = stats(net);
      const gbpsCore = b.bytes / (s.median * 1e6);
      rows.push({ op: b.op, bytes: b.bytes, usNet: s.median * 1e3, usRange: [s.min * 1e3, s.max * 1e3], gbpsCore, gbpsCeiling: gbpsCore * threads });
    }
  } finally {
    dr.setNumThreads(threads);
  }
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  console.log(`compute ceilings: one thread, float32 ${a.rows}x${cols} (${((a.rows * cols * 4) / 1024).toFixed(0)} KiB an array, in L2), ${a.rounds} rounds, ${cpu}; x ${threads} threads for the ceiling`);
  const w = Math.max(...rows.map((r) => r.op.length));
  console.log(`${'op'.padEnd(w)}  ${'us net'.padStart(8)}  ${'(min..max)'.padEnd(16)}  ${'GB/s a core'.padStart(11)}  ${`x ${threads} threads`.padStart(11)}`);
  for (const r of rows) {
    console.log(`${r.op.padEnd(w)}  ${r.usNet.toFixed(1).padStart(8)}  ${`(${r.usRange[0].toFixed(1)}..${r.usRange[1].toFixed(1)})`.padEnd(16)}  ${r.gbpsCore.toFixed(1).padStart(11)}  ${r.gbpsCeiling.toFixed(1).padStart(11)}`);
  }
  if (a.json) {
    const out = { date: new Date().toISOString(), machine: { cpu, threads }, rows: a.rows, cols, rounds: a.rounds, calls, results: rows };
    fs.writeFileSync(a.json + '.tmp', JSON.stringify(out, null, 2) + '\n');
    fs.renameSync(a.json + '.tmp', a.json);
  }
}

if (require.main === module) main();
