// Memory-bound kernels against the memory rate measured in the same run: element-wise math,
// softmax and log-softmax, the norms, GELU/SiLU/SwiGLU, casts, cross-entropy and the optimizer
// update, forward and backward, each over 64 MiB of float32 (16 M elements). A row's bytes are
// the least traffic a single-pass kernel needs (every input read once, every output written
// once); its rate is those bytes over the median time. The memory rate is the best of a plain
// copy, an add and an rmsNorm over the same 64 MiB, measured in the same rounds (the issue's
// yardstick). Rows run interleaved, round by round, so they see the same machine at the same
// moments; the table gives the median and the spread (min..max over rounds).
//
// Each row is also timed on two cache-resident slices (256 and 1024 rows: 1 and 4 MiB an array, in
// the caches, whose rate is about twice the memory's), interleaved with the rest; the extra bytes
// of the larger over its extra time is the op's rate in cache net of its fixed cost per call (a
// difference of two times: noisy for the cheap rows, telling for the heavy ones). A row below 70%
// whose in-cache rate is below 70% of the memory rate too is bound by its arithmetic (it cannot
// reach the target from memory whatever the traffic costs); one whose in-cache rate is above it
// loses the difference to memory traffic and arithmetic not overlapping.
//
// Then the cost of reading 8 MiB back to JavaScript (dataSync, data) beside plain copies, and of
// a 64 MiB output in memory the process has not touched yet beside one in a cached block.
//
//   node dist/bench/elementwise.js [--rounds N] [--quick] [--filter a,b] [--json path]
//
// --quick uses 4 MiB (a smoke run for CI: that fits in the last-level cache, so its rates are
// not memory rates). Plain node only, like bench/run.ts.
import * as fs from 'fs';
import * as dr from '../lib';
import * as gk from '../lib/ops/grad_kernels';
import * as fused from '../lib/ops/fused';
import { stats } from './rounds';

type Tensor = dr.Tensor;

export interface MemBench {
  op: string;
  shape: string;
  /** Least bytes one call moves. */
  bytes: number;
  /** One of the rows that define the memory rate. */
  reference?: boolean;
  make: (gen: dr.Generator) => Tensor[];
  /** Runs once; returns what to dispose (outputs). */
  run: (xs: Tensor[]) => Tensor[];
}

/** The rows over `rows x cols` float32 (64 MiB at 16384 x 1024). */
export function memoryBenches(rows: number, cols: number): MemBench[] {
  const n = rows * cols;
  const shape = `${rows}x${cols}`;
  const F = 4;
  const randn = (gen: dr.Generator, s = [rows, cols]) => dr.randn(s, { generator: gen });
  const weight = (gen: dr.Generator) => dr.rand([cols], { generator: gen, low: 0.5, high: 1.5 });
  const unary = (op: string, f: (x: Tensor) => Tensor): MemBench => ({
    op, shape, bytes: 2 * n * F, make: (g) => [randn(g)], run: ([x]) => [f(x)],
  });
  const unaryBwd = (name: Parameters<typeof gk.unaryBackward>[0]): MemBench => ({
    op: `${name}Backward`, shape, bytes: 3 * n * F, make: (g) => [randn(g), randn(g)], run: ([x, dy]) => [gk.unaryBackward(name, x, dy)],
  });
  const out: MemBench[] = [
    { op: 'copy', shape, bytes: 2 * n * F, reference: true, make: (g) => [randn(g), dr.empty([rows, cols])], run: ([x, y]) => (dr.copy_(y, x), []) },
    { op: 'add', shape, bytes: 3 * n * F, reference: true, make: (g) => [randn(g), randn(g)], run: ([a, b]) => [dr.add(a, b)] },
    { op: 'rmsNorm', shape, bytes: 2 * n * F + cols * F, reference: true, make: (g) => [randn(g), weight(g)], run: ([x, w]) => [dr.rmsNorm(x, w)] },
    unary('mul scalar', (x) => dr.mul(x, 1.5)),
    unary('exp', dr.exp),
    unary('sigmoid', dr.sigmoid),
    unary('tanh', dr.tanh),
    unary('gelu', (x) => dr.gelu(x)),
    unary('gelu tanh', (x) => dr.gelu(x, { approximate: 'tanh' })),
    unary('silu', dr.silu),
    unary('softmax', (x) => dr.softmax(x, -1)),
    unary('logSoftmax', (x) => dr.logSoftmax(x, -1)),
    { op: 'layerNorm', shape, bytes: 2 * n * F + 2 * cols * F, make: (g) => [randn(g), weight(g), randn(g, [cols])], run: ([x, w, b]) => [dr.layerNorm(x, w, b)] },
    // x [rows, cols] = [gate | up] -> [rows, cols / 2]
    { op: 'swiglu', shape, bytes: n * F + (n / 2) * F, make: (g) => [randn(g)], run: ([x]) => [dr.swiglu(x)] },
    { op: 'cast f32->bf16', shape, bytes: n * (F + 2), make: (g) => [randn(g)], run: ([x]) => [dr.cast(x, 'bfloat16')] },
    { op: 'cast bf16->f32', shape, bytes: n * (F + 2), make: (g) => [dr.randn([rows, cols], { generator: g, dtype: 'bfloat16' })], run: ([x]) => [dr.cast(x, 'float32')] },
    {
      // logits [rows, cols] read once (the log-sum-exp per row), targets [rows]
      op: 'crossEntropy', shape, bytes: n * F + rows * 4,
      make: (g) => [randn(g), dr.randint(0, cols, [rows], { generator: g, dtype: 'int32' })],
      run: ([x, t]) => { const r = gk.crossEntropyWithLse(x, t, -100, 0); return [r.loss, r.lse]; },
    },
    {
      op: 'crossEntropyBackward', shape, bytes: 2 * n * F + rows * 12,
      make: (g) => {
        const x = randn(g);
        const t = dr.randint(0, cols, [rows], { generator: g, dtype: 'int32' });
        const { loss, lse } = gk.crossEntropyWithLse(x, t, -100, 0);
        loss.dispose();
        return [x, t, lse, dr.full([rows], 1 / rows)];
      },
      run: ([x, t, lse, d]) => [gk.crossEntropyBackward(x, t, lse, d, -100, 0)],
    },
    {
      op: 'softmaxBackward', shape, bytes: 3 * n * F,
      make: (g) => { const x = randn(g); const y = dr.softmax(x, -1); x.dispose(); return [y, randn(g)]; },
      run: ([y, dy]) => [gk.softmaxBackward(y, dy, -1, false)],
    },
    {
      op: 'rmsNormBackward', shape, bytes: 3 * n * F + 2 * cols * F + rows * F,
      make: (g) => { const x = randn(g); const w = weight(g); const { y, rstd } = gk.rmsNormWithStats(x, w, 1e-6); y.dispose(); return [x, w, rstd, randn(g)]; },
      run: ([x, w, rstd, dy]) => { const r = gk.rmsNormBackward(x, w, rstd, dy, true); return [r.dx, r.dweight!]; },
    },
    {
      op: 'layerNormBackward', shape, bytes: 3 * n * F + 3 * cols * F + 2 * rows * F,
      make: (g) => {
        const x = randn(g); const w = weight(g);
        const { y, mean, rstd } = gk.layerNormWithStats(x, w, null, 1e-5);
        y.dispose();
        return [x, w, mean, rstd, randn(g)];
      },
      run: ([x, w, mean, rstd, dy]) => { const r = gk.layerNormBackward(x, w, mean, rstd, dy, true, true); return [r.dx, r.dweight!, r.dbias!]; },
    },
    unaryBwd('gelu'),
    unaryBwd('silu'),
    {
      op: 'swigluBackward', shape, bytes: 2.5 * n * F,
      make: (g) => [randn(g), randn(g, [rows, cols / 2])],
      run: ([x, dy]) => [gk.swigluBackward(x, dy)],
    },
    {
      // reads param, grad, both moments; writes param and both moments
      op: 'adamwStep', shape, bytes: 7 * n * F,
      make: (g) => [randn(g), randn(g), dr.zeros([rows, cols]), dr.zeros([rows, cols])],
      run: ([p, gr, m, v]) => {
        gk.adamwStep(p, gr, m, v, { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 1 });
        return [];
      },
    },
  ];
  out.push(...fusedBenches(rows, cols));
  return out;
}

/**
 * The fused ops (lib/ops/fused.ts) beside the separate ops they replace, on the same inputs.
 * Both rows of a pair count the fused op's least traffic (the job's bytes), so their rates
 * compare directly: the separate ops move more bytes for the same job, which shows as a lower
 * rate. addRmsNorm: read x, residual, w; write h, y. Its backward: read h, dy, dh, w, rstd;
 * write dx, dw (separate: rmsNormBackward, then the add of dh). biasAct: read x, bias; write y
 * (separate: add, then gelu). Its backward: read x, bias, dy; write dx, dbias (separate: the
 * gelu backward of the saved x + bias, then the row sum).
 */
function fusedBenches(rows: number, cols: number): MemBench[] {
  const n = rows * cols;
  const shape = `${rows}x${cols}`;
  const F = 4;
  const randn = (gen: dr.Generator, s = [rows, cols]) => dr.randn(s, { generator: gen });
  const weight = (gen: dr.Generator) => dr.rand([cols], { generator: gen, low: 0.5, high: 1.5 });
  const normInputs = (gen: dr.Generator) => {
    const h = randn(gen); const w = weight(gen);
    const { y, rstd } = gk.rmsNormWithStats(h, w, 1e-6);
    y.dispose();
    return [h, w, rstd, randn(gen), randn(gen)];
  };
  const normFwd = 4 * n * F + cols * F;
  const normBwd = 4 * n * F + 2 * cols * F + rows * F;
  const actFwd = 2 * n * F + cols * F;
  const actBwd = 3 * n * F + 2 * cols * F;
  return [
    { op: 'add+rmsNorm separate', shape, bytes: normFwd, make: (g) => [randn(g), randn(g), weight(g)], run: ([x, r, w]) => { const h = dr.add(x, r); return [h, dr.rmsNorm(h, w)]; } },
    { op: 'addRmsNorm fused', shape, bytes: normFwd, make: (g) => [randn(g), randn(g), weight(g)], run: ([x, r, w]) => { const o = dr.addRmsNorm(x, r, w); return [o.h, o.y]; } },
    {
      op: 'rmsNormBackward+add separate', shape, bytes: normBwd, make: normInputs,
      run: ([h, w, rstd, dy, dh]) => { const r = gk.rmsNormBackward(h, w, rstd, dy, true); const dx = dr.add(dh, r.dx); r.dx.dispose(); return [dx, r.dweight!]; },
    },
    {
      op: 'addRmsNormBackward fused', shape, bytes: normBwd, make: normInputs,
      run: ([h, w, rstd, dy, dh]) => { const r = fused.addRmsNormBackward(h, w, rstd, dy, dh, true); return [r.dx, r.dweight!]; },
    },
    { op: 'add+gelu separate', shape, bytes: actFwd, make: (g) => [randn(g), randn(g, [cols])], run: ([x, b]) => { const z = dr.add(x, b); const y = dr.gelu(z); z.dispose(); return [y]; } },
    { op: 'biasAct gelu fused', shape, bytes: actFwd, make: (g) => [randn(g), randn(g, [cols])], run: ([x, b]) => [dr.biasAct(x, b, 'gelu')] },
    {
      // the unfused backward reads the saved z = x + bias
      op: 'geluBackward+sum separate', shape, bytes: actBwd, make: (g) => { const x = randn(g); const b = randn(g, [cols]); const z = dr.add(x, b); x.dispose(); return [z, randn(g)]; },
      run: ([z, dy]) => { const dx = gk.unaryBackward('gelu', z, dy); return [dx, dr.sum(dx, 0)]; },
    },
    {
      op: 'biasActBackward gelu fused', shape, bytes: actBwd, make: (g) => [randn(g), randn(g, [cols]), randn(g)],
      run: ([x, b, dy]) => { const r = fused.biasActBackward('gelu', x, b, dy, true); return [r.dx, r.dbias!]; },
    },
  ];
}

interface Args {
  rounds: number;
  quick: boolean;
  filter: string[];
  json: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { rounds: 5, quick: false, filter: [], json: '' };
  for (let i = 0; i < argv.length; ++i) {
    const k = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${k} needs a value`);
      return argv[++i];
    };
    if (k === '--rounds') a.rounds = Number(val());
    else if (k === '--quick') a.quick = true;
    else if (k === '--filter') a.filter = val().toLowerCase().split(',').filter(Boolean);
    else if (k === '--json') a.json = val();
    else throw new Error(`unknown argument ${k} (see the header of bench/elementwise.ts)`);
  }
  if (!Number.isInteger(a.rounds) || a.rounds < 1) throw new Error('--rounds must be a positive integer');
  return a;
}

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

/** The median ms of `calls` calls of one row (fresh inputs, one warm-up call first). */
function timeRow(b: MemBench, gen: dr.Generator, calls: number): number {
  const xs = b.make(gen);
  try {
    dr.dispose(b.run(xs));  // warm-up: the output's block comes from the host cache after this
    const ts: number[] = [];
    for (let i = 0; i < calls; ++i) {
      dr.synchronize();
      const t0 = nowMs();
      const outs = b.run(xs);
      dr.synchronize();
      ts.push(nowMs() - t0);
      dr.dispose(outs);
    }
    return stats(ts).median;
  } finally {
    dr.dispose(xs);
  }
}

interface ReadStat {
  row: string;
  median: number;
  p90: number;
  max: number;
  /** p90 of the first round's calls alone and of the later rounds' (reads only): the first round
   * of a fresh process is the one that can meet memory the process never touched */
  p90First?: number;
  p90Later?: number;
}

const p90Of = (sorted: number[]) => sorted[Math.floor(sorted.length * 0.9)];
const sorted = (times: number[]) => times.slice().sort((p, q) => p - q);

/** Median, 90th percentile and worst of one row's per-call times (and, given the calls per round,
 * the p90 of the first round and of the others). */
function readStat(row: string, times: number[], perRound?: number): ReadStat {
  const v = sorted(times);
  const st: ReadStat = { row, median: v[v.length >> 1], p90: p90Of(v), max: v[v.length - 1] };
  if (perRound && times.length > perRound) {
    st.p90First = p90Of(sorted(times.slice(0, perRound)));
    st.p90Later = p90Of(sorted(times.slice(perRound)));
  }
  return st;
}

/**
 * What a read of 8 MiB (2M float32) costs: dataSync() in a synchronous loop (Node gives the
 * collected buffers back only once the loop yields), data() awaited in a loop, dataSync(into)
 * into one array reused in a synchronous loop, data(into) into it in an awaited loop, and two plain
 * JavaScript copies of the same bytes for scale: into a fresh Float32Array (fresh pages) and
 * into one array reused (the copy alone). Every call is timed; per row the median, 90th
 * percentile and worst over all rounds.
 */
async function reads(rounds: number, calls: number): Promise<ReadStat[]> {
  const n = 2 * 1024 * 1024;
  const x = dr.randn([n], { generator: new dr.Generator(3) });
  const src = x.dataSync().slice();
  const reused = new Float32Array(n);
  const dst = new Float32Array(n);
  const t = new Map<string, number[]>();  // a row's per-call times, rows in the order first timed
  const series = (row: string) => {
    let ts = t.get(row);
    if (!ts) t.set(row, (ts = []));
    return ts;
  };
  let sink = 0;
  // each call of f timed, `calls` in a row; the synchronous rows never yield between calls
  const timed = (row: string, f: (i: number) => number) => {
    const ts = series(row);
    for (let i = 0; i < calls; ++i) {
      const t0 = performance.now();
      sink += f(i);
      ts.push(performance.now() - t0);
    }
  };
  const awaited = async (row: string, f: (i: number) => Promise<number>) => {
    const ts = series(row);
    for (let i = 0; i < calls; ++i) {
      const t0 = performance.now();
      sink += await f(i);
      ts.push(performance.now() - t0);
    }
  };
  for (let r = 0; r < rounds; ++r) {
    timed('dataSync() 8 MiB, synchronous loop', (i) => x.dataSync()[i]);
    await awaited('data() 8 MiB, awaited loop', async (i) => (await x.data())[i]);
    timed('dataSync(into) 8 MiB, synchronous loop', (i) => x.dataSync(dst)[i]);
    await awaited('data(into) 8 MiB, awaited loop', async (i) => (await x.data(dst))[i]);
    timed('JavaScript copy into a fresh array', (i) => {
      const f = new Float32Array(n);
      f.set(src);
      return f[i];
    });
    timed('JavaScript copy into a reused array', (i) => {
      reused.set(src);
      return reused[i];
    });
    await new Promise((res) => setImmediate(res));
  }
  x.dispose();
  if (Number.isNaN(sink)) console.log('');  // keeps the reads observable
  return [...t].map(([row, times]) => readStat(row, times, calls));
}

/**
 * What a large output costs in memory the process has not touched yet: exp over 64 MiB right
 * after dr.emptyCache() (its output block is new, mapped and faulted as the kernel writes it; in
 * 2 MiB pages unless DUALROUTE_CPU_HUGEPAGES=0) beside the same exp into a block the host cache
 * hands back, alternating. Per row the median, 90th percentile and worst.
 */
function freshOutputs(rounds: number, calls: number, elems: number): ReadStat[] {
  const x = dr.randn([elems], { generator: new dr.Generator(5) });
  const mib = ((elems * 4) / 2 ** 20).toFixed(0);
  const keys = [`exp ${mib} MiB, output in fresh memory`, `exp ${mib} MiB, output block from the cache`];
  const t: number[][] = [[], []];
  const once = (k: number) => {
    dr.synchronize();
    const t0 = performance.now();
    const y = dr.exp(x);
    dr.synchronize();
    t[k].push(performance.now() - t0);
    y.dispose();
  };
  for (let i = 0; i < rounds * calls; ++i) {
    dr.emptyCache();
    once(0);
    once(1);
  }
  x.dispose();
  return keys.map((row, k) => readStat(row, t[k]));
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const [rows, cols] = a.quick ? [1024, 1024] : [16384, 1024];
  let bs = memoryBenches(rows, cols);
  if (a.filter.length) bs = bs.filter((b) => b.reference || a.filter.some((f) => b.op.toLowerCase().includes(f)));
  const calls = a.quick ? 3 : 5;
  const gen = new dr.Generator(7);
  const times: number[][] = bs.map(() => []);
  // the same rows on two cache-resident slices (skipped by --quick, whose whole size is in
  // cache): the difference of their times over the difference of their bytes is the op's rate
  // in cache without its fixed cost per call (waking the pool, queueing, small outputs)
  const [cacheLo, cacheHi] = [256, 1024];
  const pick = (r: number) => (a.quick ? [] : memoryBenches(r, cols).filter((b) => bs.some((f) => f.op === b.op)));
  const smallLo = pick(cacheLo), smallHi = pick(cacheHi);
  const ctLo: number[][] = smallLo.map(() => []), ctHi: number[][] = smallHi.map(() => []);
  for (let r = 0; r < a.rounds; ++r) {
    bs.forEach((b, i) => times[i].push(timeRow(b, gen, calls)));
    smallHi.forEach((b, i) => {
      ctHi[i].push(timeRow(b, gen, 21));
      ctLo[i].push(timeRow(smallLo[i], gen, 21));
    });
  }
  const roundRate = Array.from({ length: a.rounds }, (_, r) =>
    Math.max(...bs.map((b, i) => (b.reference ? b.bytes / (times[i][r] * 1e6) : 0))));
  const res = bs.map((b, i) => {
    const s = stats(times[i]);
    const gbps = (ms: number) => b.bytes / (ms * 1e6);
    const k = smallHi.findIndex((c) => c.op === b.op);
    const cache = k < 0 ? undefined : (() => {
      const hi = stats(ctHi[k]).median, lo = stats(ctLo[k]).median;
      const dBytes = smallHi[k].bytes - smallLo[k].bytes;
      return { shapes: [smallLo[k].shape, smallHi[k].shape], ms: [lo, hi], gbps: dBytes / (Math.max(hi - lo, 1e-6) * 1e6) };
    })();
    // the row's rate over the memory rate of its own round (the best reference row timed in the
    // same round, minutes apart at most): a view that drift of the machine over the run moves less
    const perRound = times[i].map((ms, r) => gbps(ms) / roundRate[r]);
    const pr = stats(perRound);
    return { op: b.op, shape: b.shape, bytes: b.bytes, reference: !!b.reference, ms: s, gbps: gbps(s.median), gbpsRange: [gbps(s.max), gbps(s.min)], cache, perRoundShare: { median: pr.median, min: pr.min, max: pr.max } };
  });
  const memRate = Math.max(...res.filter((r) => r.reference).map((r) => r.gbps));
  const best = res.find((r) => r.reference && r.gbps === memRate)!;
  const cpu = (require('os') as typeof import('os')).cpus()[0]?.model ?? 'unknown CPU';
  console.log(`memory-bound kernels, float32 ${rows}x${cols} (${((rows * cols * 4) / 2 ** 20).toFixed(0)} MiB), ${dr.numThreads()} threads, ${cpu}, ${a.rounds} rounds`);
  console.log(`memory rate (best of copy, add, rmsNorm in this run): ${memRate.toFixed(1)} GB/s (${best.op}); target >= 70% of it`);
  const w = Math.max(...res.map((r) => r.op.length));
  const cacheHead = a.quick ? '' : `  ${'in cache'.padStart(9)}  ${'of mem.'.padStart(7)}`;
  console.log(`${'op'.padEnd(w)}  ${'ms'.padStart(8)}  ${'(min..max)'.padEnd(16)}  ${'GB/s'.padStart(7)}  ${'of memory rate'.padStart(14)}  ${'per round (min..max)'.padEnd(20)}${cacheHead}`);
  for (const r of res) {
    const pct = (100 * r.gbps) / memRate;
    const cpct = r.cache ? (100 * r.cache.gbps) / memRate : NaN;
    const why = !r.cache ? '' : cpct < 70 ? ' (arithmetic-bound)' : ' (memory and arithmetic do not overlap)';
    const mark = r.reference ? ' (reference)' : pct >= 70 ? '' : `  below 70%${why}`;
    const cacheCols = r.cache ? `  ${r.cache.gbps.toFixed(1).padStart(9)}  ${cpct.toFixed(0).padStart(6)}%` : '';
    const q = r.perRoundShare;
    const perRound = `${(100 * q.median).toFixed(0)}% (${(100 * q.min).toFixed(0)}..${(100 * q.max).toFixed(0)})`;
    console.log(`${r.op.padEnd(w)}  ${r.ms.median.toFixed(2).padStart(8)}  ${`(${r.ms.min.toFixed(2)}..${r.ms.max.toFixed(2)})`.padEnd(16)}  ${r.gbps.toFixed(1).padStart(7)}  ${pct.toFixed(0).padStart(13)}%  ${perRound.padEnd(20)}${cacheCols}${mark}`);
  }
  console.log('per round: the row over the best reference row of the same round (median of the rounds, and their spread)');
  if (smallHi.length) console.log(`in cache: the same op over ${cacheLo}x${cols} and ${cacheHi}x${cols} (1 and 4 MiB an array, in the last-level cache); the extra bytes over the extra time, GB/s and share of the memory rate`);
  const rd = await reads(a.rounds, a.quick ? 5 : 40);
  console.log(`reads of 8 MiB (ms per call over ${a.rounds} rounds: median, p90, max; p90 of the first round, p90 of the later ones)`);
  const opt = (v?: number) => (v === undefined ? '' : v.toFixed(2)).padStart(7);
  for (const r of rd) console.log(`  ${r.row.padEnd(38)} ${r.median.toFixed(2).padStart(6)} ${r.p90.toFixed(2).padStart(6)} ${r.max.toFixed(2).padStart(7)} ${opt(r.p90First)} ${opt(r.p90Later)}`);
  const fo = freshOutputs(a.rounds, a.quick ? 2 : 5, rows * cols);
  console.log(`large outputs (ms per call over ${a.rounds} rounds: median, p90, max)`);
  for (const r of fo) console.log(`  ${r.row.padEnd(42)} ${r.median.toFixed(2).padStart(6)} ${r.p90.toFixed(2).padStart(6)} ${r.max.toFixed(2).padStart(7)}`);
  if (a.json) {
    const out = { date: new Date().toISOString(), machine: { cpu, threads: dr.numThreads() }, rows, cols, rounds: a.rounds, quick: a.quick, memoryRateGBps: memRate, results: res, reads: rd, freshOutputs: fo };
    fs.writeFileSync(a.json + '.tmp', JSON.stringify(out, null, 2) + '\n');
    fs.renameSync(a.json + '.tmp', a.json);
  }
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
