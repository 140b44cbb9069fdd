// Attention against the project's own matmul, interleaved (issue 17, item 2: float32 local
// attention at window 256, causal global attention at S4096 and segment attention, forward and
// forward + backward, each >= 0.7x the matmul rate measured in the same run).
//
// On a shared machine the rate of one row moves with the load from minute to minute, so a
// ratio of two rows timed a minute apart (bench/run.ts's summary lines) says as much about the
// load as about the kernels. Here every attention row is paired with a matmul 2048^3 timed just
// before or after it (the order flips every round), and the ratio is taken per pair: the table
// gives the median ratio over the rounds and its range, with each side's median rate.
//
//   node dist/bench/attention.js [--rounds N] [--json path] [--only text]
//
// --only keeps the rows whose op name contains the text (e.g. --only segment).
//
// Shapes and FLOP counts are bench/run.ts's (its attentionBench / segmentBench rows): B1 H8
// S4096 D64, window 256, segment 64 top 8. Plain node only, like bench/run.ts.
import * as fs from 'fs';
import * as os from 'os';
import * as dr from '../lib';
import { Bench, attentionBench, matmulBench, segmentBench } from './run';
import { parseRounds, stats } from './rounds';

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

/** Median ms of `calls` calls (after one warm-up call), outputs disposed as they come. */
function timeCalls(b: Bench, xs: dr.Tensor[], calls: number): number {
  dr.synchronize();
  b.run(xs).dispose();
  dr.synchronize();
  const ts: number[] = [];
  for (let i = 0; i < calls; ++i) {
    const t0 = nowMs();
    const out = b.run(xs);
    dr.synchronize();
    ts.push(nowMs() - t0);
    out.dispose();
  }
  return stats(ts).median;
}

function main(): void {
  const argv = process.argv.slice(2);
  const at = argv.indexOf('--only');
  const only = at >= 0 && at + 1 < argv.length ? argv.splice(at, 2)[1] : '';
  const o = parseRounds(argv, 'attention', 5);
  const [S, H, D] = [4096, 8, 64];
  const anchor = matmulBench(2048, 'float32', false);
  const rows: Bench[] = [];
  for (const bwd of [false, true]) {
    rows.push(attentionBench('local', 1, H, S, D, 256, 'float32', bwd, H, false));
    rows.push(attentionBench('global', 1, H, S, D, 0, 'float32', bwd, H, false));
    rows.push(attentionBench('dual', 1, H, S, D, 256, 'float32', bwd, H, false));
    rows.push(segmentBench(1, H, S, D, 64, 8, bwd, false));
  }
  if (only) rows.splice(0, rows.length, ...rows.filter((b) => b.op.includes(only)));
  const gen = new dr.Generator(11);
  const ax = anchor.make('cpu', 'float32', gen);
  const inputs = rows.map((b) => b.make('cpu', 'float32', gen));
  const ratio: number[][] = rows.map(() => []);
  const rowRate: number[][] = rows.map(() => []);
  const mmRate: number[] = [];
  const gflops = (b: Bench, ms: number) => (b.flops ?? 0) / (ms * 1e6);
  const load0 = os.loadavg()[0];
  for (let r = 0; r < o.rounds; ++r) {
    rows.forEach((b, i) => {
      const calls = (b.flops ?? 0) > 5e10 ? 2 : 3;
      let mm = 0, at = 0;
      if (r % 2 === 0) {
        mm = timeCalls(anchor, ax, 3);
        at = timeCalls(b, inputs[i], calls);
      } else {
        at = timeCalls(b, inputs[i], calls);
        mm = timeCalls(anchor, ax, 3);
      }
      const m = gflops(anchor, mm), a = gflops(b, at);
      mmRate.push(m);
      rowRate[i].push(a);
      ratio[i].push(a / m);
    });
  }
  const load1 = os.loadavg()[0];
  const mm = stats(mmRate);
  console.log(`attention vs matmul 2048^3, float32, CPU (${os.cpus()[0]?.model.trim() ?? 'cpu'}, ${dr.numThreads()} threads), ${o.rounds} rounds, each row paired with a matmul timed beside it`);
  console.log(`load average ${load0.toFixed(1)} at the start, ${load1.toFixed(1)} at the end; matmul ${mm.median.toFixed(1)} GFLOP/s (${mm.min.toFixed(1)}..${mm.max.toFixed(1)})`);
  console.log(`${'op'.padEnd(16)}${'shape'.padEnd(30)}${'GFLOP/s'.padStart(9)}  ${'ratio to matmul'.padEnd(26)}target 0.7`);
  const out = rows.map((b, i) => {
    const q = stats(ratio[i]), g = stats(rowRate[i]);
    const ok = q.median >= 0.7 ? 'reached' : 'below';
    console.log(`${b.op.padEnd(16)}${b.shape.padEnd(30)}${g.median.toFixed(1).padStart(9)}  ${`${q.median.toFixed(3)} (${q.min.toFixed(2)}..${q.max.toFixed(2)})`.padEnd(26)}${ok}`);
    return { op: b.op, shape: b.shape, gflops: g, ratio: q, ratios: ratio[i] };
  });
  dr.dispose([...ax, ...inputs.flat()]);
  if (o.json) {
    const doc = { when: new Date().toISOString(), cpu: os.cpus()[0]?.model.trim(), rounds: o.rounds, load: [load0, load1], matmul: { shape: anchor.shape, gflops: mm, rates: mmRate }, rows: out };
    const tmp = `${o.json}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify(doc, null, 2));
    fs.renameSync(tmp, o.json);
    console.log(`wrote ${o.json}`);
  }
}

main();
