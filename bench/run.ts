// Per-op microbenchmarks (matmul, softmax, rmsNorm) with rates, roofline floors and optional
// anchors (numpy measured in the same run for CPU matmul; PyTorch figures from a file), so a
// kernel change can be judged against what the hardware and other libraries reach.
//
//   node dist/bench/run.js [--device cpu|cuda] [--quick] [--json path] [--filter name] [--repeat N]
//                          [--anchors anchors.json] [--peak-bf16 TFLOPS] [--peak-fp32 TFLOPS]
//                          [--peak-gbps GB/s] [--no-numpy]
//
// Plain node only (the GPU machine has no npm/ts-node). See bench/README.md for the columns.
//
// Anchors file (--anchors): JSON, either an array of entries or {"source": "...", "entries": [...]}.
// Each entry names the benchmark row it anchors and the other library's time or rate:
//   {"op": "matmul", "shape": "4096x4096x4096", "dtype": "bfloat16", "device": "cuda",
//    "ms": 0.21, "label": "torch 2.5 cuBLAS"}
// op/shape/dtype must equal this table's columns; device defaults to the row's; give ms, or
// gflops (matmul) / gbps (memory-bound ops) instead of ms. label (default "anchor") is printed.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import * as dr from '../lib';

type DType = dr.DType;
type Device = dr.Device;
type Tensor = dr.Tensor;

// ---- benchmark definitions ----------------------------------------------------------------------

interface Bench {
  op: string;
  /** Shown as is; also the key anchors match on. */
  shape: string;
  dtype: DType;
  /** Makes one input set on the device. */
  make: (device: Device, dtype: DType, gen: dr.Generator) => Tensor[];
  run: (xs: Tensor[]) => Tensor;
  /** Floating-point operations of one call (compute-bound ops). */
  flops?: number;
  /** Bytes one call must move at least (memory-bound ops). */
  bytes?: number;
  /** Square matmul size, for the numpy anchor. */
  numpyN?: number;
}

const ELT: Record<DType, number> = { float32: 4, float64: 8, bfloat16: 2, int32: 4, bool: 1 };

function matmulBench(n: number, dtype: DType): Bench {
  return {
    op: 'matmul',
    shape: `${n}x${n}x${n}`,
    dtype,
    make: (device, d, gen) => [dr.randn([n, n], { device, dtype: d, generator: gen }), dr.randn([n, n], { device, dtype: d, generator: gen })],
    run: ([a, b]) => dr.matmul(a, b),
    flops: 2 * n * n * n,
    numpyN: dtype === 'float32' ? n : undefined,
  };
}

function softmaxBench(rows: number, cols: number, dtype: DType): Bench {
  return {
    op: 'softmax',
    shape: `${rows}x${cols}`,
    dtype,
    make: (device, d, gen) => [dr.randn([rows, cols], { device, dtype: d, generator: gen })],
    run: ([x]) => dr.softmax(x, -1),
    bytes: 2 * rows * cols * ELT[dtype],  // read x, write y
  };
}

function rmsNormBench(rows: number, cols: number, dtype: DType): Bench {
  return {
    op: 'rmsNorm',
    shape: `${rows}x${cols}`,
    dtype,
    make: (device, d, gen) => [dr.randn([rows, cols], { device, dtype: d, generator: gen }), dr.rand([cols], { device, dtype: d, generator: gen, low: 0.5, high: 1.5 })],
    run: ([x, w]) => dr.rmsNorm(x, w),
    bytes: (2 * rows * cols + cols) * ELT[dtype],  // read x, read w, write y
  };
}

// Keys a causal query at position p visits: min(window, p + 1) (sliding), p + 1 (global).
function visited(S: number, window: number | null): number {
  let n = 0;
  for (let p = 0; p < S; ++p) n += window === null ? p + 1 : Math.min(window, p + 1);
  return n;
}

/**
 * Attention at [B, H, S, D], causal. FLOPs: 4 B H (keys visited) D forward (QK^T and PV), and
 * 2.5x that again for the backward; dual counts both paths.
 */
function attentionBench(kind: 'local' | 'global' | 'dual', B: number, H: number, S: number, D: number, window: number, dtype: DType, backward: boolean, Hkv = H): Bench {
  const keys = kind === 'local' ? visited(S, window) : kind === 'global' ? visited(S, null) : visited(S, window) + visited(S, null);
  const fwd = 4 * B * H * keys * D;
  const run = (xs: Tensor[]): Tensor => {
    const [q, k, v, g] = xs;
    const out = kind === 'local' ? dr.localAttention(q, k, v, { window, causal: true })
      : kind === 'global' ? dr.globalAttention(q, k, v, { causal: true })
        : dr.dualAttention(q, k, v, { window, causal: true, gates: g });
    if (!backward) return out;
    const up = xs[xs.length - 1];
    out.backward(up);
    out.dispose();
    for (const t of xs) {
      if (t.grad) {
        t.grad.dispose();
        t.grad = null;
      }
    }
    return dr.zeros([1], { device: q.device });
  };
  return {
    op: `${kind}Attn${backward ? '+bwd' : ''}`,
    shape: `B${B} H${H}${Hkv !== H ? `/${Hkv}` : ''} S${S} D${D}${kind === 'global' ? '' : ` W${window}`}`,
    dtype,
    make: (device, d, gen) => {
      const mk = (h = H) => dr.randn([B, h, S, D], { device, dtype: d, generator: gen });
      const xs = [mk(), mk(Hkv), mk(Hkv)];
      if (kind === 'dual') xs.push(dr.rand([B, S, 2], { device, dtype: d, generator: gen }));
      if (backward) {
        xs.forEach((t) => t.requiresGrad_());
        xs.push(mk());
      }
      return xs;
    },
    run,
    flops: backward ? 3.5 * fwd : fwd,
  };
}

function benches(device: Device, quick: boolean): Bench[] {
  const dtypes: DType[] = device === 'cuda' ? ['float32', 'bfloat16'] : ['float32'];
  const mm = quick ? [256, 512, 1024] : [1024, 2048, 4096];
  const rowShapes: Array<[number, number]> = quick ? [[1024, 1024], [4096, 256]] : [[4096, 4096], [16384, 1024]];
  const out: Bench[] = [];
  for (const d of dtypes) for (const n of mm) out.push(matmulBench(n, d));
  for (const d of dtypes) for (const [r, c] of rowShapes) out.push(softmaxBench(r, c, d));
  for (const d of dtypes) for (const [r, c] of rowShapes) out.push(rmsNormBench(r, c, d));
  if (device === 'cuda') {
    // the attention issue's shapes: B4 H16 S4096 D64
    for (const d of dtypes) {
      for (const bwd of [false, true]) {
        out.push(attentionBench('local', 4, 16, 4096, 64, 256, d, bwd));
        if (d === 'bfloat16') {
          out.push(attentionBench('local', 4, 16, 4096, 64, 1024, d, bwd));
          out.push(attentionBench('global', 4, 16, 4096, 64, 0, d, bwd));
          out.push(attentionBench('dual', 4, 16, 4096, 64, 256, d, bwd));
        }
      }
    }
  } else {
    // the CPU figure: float32 local attention B1 H8 S4096 D64 W256, beside matmul 2048^3
    const [S, H] = quick ? [1024, 4] : [4096, 8];
    out.push(attentionBench('local', 1, H, S, 64, 256, 'float32', false));
    out.push(attentionBench('local', 1, H, S, 64, 256, 'float32', true));
    if (!quick) {
      for (const bwd of [false, true]) {
        out.push(attentionBench('global', 1, H, S, 64, 0, 'float32', bwd));
        out.push(attentionBench('dual', 1, H, S, 64, 256, 'float32', bwd));
      }
      // grouped-query attention with one kv head: the backward's split form
      out.push(attentionBench('local', 1, H, S, 64, 256, 'float32', true, 1));
    }
  }
  return out;
}

// ---- timing ------------------------------------------------------------------------------------------

interface Timing {
  median: number;
  min: number;
  /** Timed batches. */
  reps: number;
  /** Calls per timed batch. */
  batch: number;
}

function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/**
 * Median wall time of one call. Calls are timed between synchronize()s, so a CUDA launch is
 * charged its kernel time, not just the enqueue. Calls faster than ~1 ms are timed in batches
 * (sync, k calls, sync) and divided by k, so the sync round trip does not swamp a 20 us kernel.
 * Outputs are disposed as we go so the allocator state is steady. Small inputs rotate among
 * several sets, so a CPU call does not find its operands in cache from the previous call.
 */
function time(b: Bench, device: Device, repeat: number | null, quick: boolean, seed: number): Timing {
  const gen = new dr.Generator(seed);
  const first = b.make(device, b.dtype, gen);
  const setBytes = first.reduce((s, t) => s + t.byteSize, 0);
  const sets = [first];
  const nSets = setBytes < (32 << 20) ? 4 : 1;
  while (sets.length < nSets) sets.push(b.make(device, b.dtype, gen));
  try {
    let it = 0;
    const batch = (k: number): number => {
      dr.synchronize();
      const t0 = nowMs();
      for (let j = 0; j < k; ++j) b.run(sets[it++ % sets.length]).dispose();
      dr.synchronize();
      return (nowMs() - t0) / k;
    };
    // warm-up: first-call costs (thread pool spin-up, cuBLAS handles, allocator growth)
    const warmBudget = quick ? 50 : 200;
    const w0 = nowMs();
    let last = 0;
    for (let i = 0; i < 2 || (nowMs() - w0 < warmBudget && i < 20); ++i) last = batch(1);
    const per = Math.max(1, Math.min(50, Math.ceil(1 / Math.max(last, 1e-3))));
    let reps = repeat ?? Math.round((quick ? 500 : 1000) / Math.max(last * per, 1e-3));
    if (repeat === null) reps = Math.max(quick ? 3 : 5, Math.min(quick ? 100 : 200, reps));
    const ts: number[] = [];
    for (let i = 0; i < reps; ++i) ts.push(batch(per));
    ts.sort((a, c) => a - c);
    const mid = ts.length >> 1;
    const median = ts.length % 2 ? ts[mid] : (ts[mid - 1] + ts[mid]) / 2;
    return { median, min: ts[0], reps, batch: per };
  } finally {
    for (const s of sets) dr.dispose(s);
  }
}

// ---- anchors ---------------------------------------------------------------------------------------

interface Anchor {
  op: string;
  shape: string;
  dtype: string;
  device?: string;
  ms?: number;
  gflops?: number;
  gbps?: number;
  label?: string;
}

/** numpy's float32 a @ b at each size: median ms, timed by python3 itself; null when numpy is absent. */
function numpyMatmul(sizes: number[], quick: boolean): Map<number, number> | null {
  if (sizes.length === 0) return null;
  const script = `
import json, sys, time
import numpy as np
out = {}
for n in ${JSON.stringify(sizes)}:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    (a @ b); (a @ b)
    t0 = time.perf_counter(); (a @ b); one = time.perf_counter() - t0
    reps = max(${quick ? 3 : 5}, min(${quick ? 30 : 50}, int(${quick ? 0.25 : 1.0} / max(one, 1e-6))))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); c = a @ b; ts.append(time.perf_counter() - t0)
    ts.sort()
    out[n] = ts[len(ts) // 2] * 1e3 if len(ts) % 2 else (ts[len(ts) // 2 - 1] + ts[len(ts) // 2]) / 2 * 1e3
print(json.dumps(out))
`;
  try {
    const r = spawnSync('python3', ['-c', script], { encoding: 'utf8', timeout: 180_000 });
    if (r.status !== 0 || !r.stdout) return null;
    const parsed = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, number>;
    return new Map(Object.entries(parsed).map(([k, v]) => [Number(k), v]));
  } catch {
    return null;
  }
}

function loadAnchors(file: string): Anchor[] {
  const raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  const list = Array.isArray(raw) ? raw : raw.entries;
  if (!Array.isArray(list)) throw new Error(`${file}: expected an array or {"entries": [...]}`);
  const source = Array.isArray(raw) ? undefined : raw.source;
  return list.map((a: Anchor) => ({ ...a, label: a.label ?? source ?? 'anchor' }));
}

/** An anchor's time for this row: given directly, or from its rate and the row's work. */
function anchorMs(a: Anchor, b: Bench): number | undefined {
  if (typeof a.ms === 'number') return a.ms;
  if (typeof a.gflops === 'number' && b.flops) return b.flops / (a.gflops * 1e6);
  if (typeof a.gbps === 'number' && b.bytes) return b.bytes / (a.gbps * 1e6);
  return undefined;
}

// ---- command line -----------------------------------------------------------------------------------

interface Args {
  device: Device;
  quick: boolean;
  json: string | null;
  filter: string[] | null;
  repeat: number | null;
  anchors: string | null;
  numpy: boolean;
  peakBf16: number;  // TFLOP/s
  peakFp32: number;  // TFLOP/s
  peakGbps: number;  // GB/s
  peaksGiven: boolean;
  seed: number;
}

function usage(msg?: string): never {
  if (msg) console.error(msg);
  console.error('usage: node dist/bench/run.js [--device cpu|cuda] [--quick] [--json path] [--filter name,...] [--repeat N]\n' +
    '                          [--anchors file.json] [--peak-bf16 TFLOPS] [--peak-fp32 TFLOPS] [--peak-gbps GBPS] [--no-numpy] [--seed N]');
  process.exit(msg ? 1 : 0);
}

function parseArgs(argv: string[]): Args {
  // Defaults: H100 SXM dense ceilings (bf16 tensor cores, fp32 CUDA cores, HBM3 copy bandwidth).
  const a: Args = { device: dr.cudaAvailable() ? 'cuda' : 'cpu', quick: false, json: null, filter: null, repeat: null, anchors: null, numpy: true,
    peakBf16: 767, peakFp32: 51, peakGbps: 2978, peaksGiven: false, seed: 42 };
  let deviceGiven = false;
  for (let i = 0; i < argv.length; ++i) {
    const k = argv[i];
    const eq = k.indexOf('=');
    const key = eq > 0 ? k.slice(0, eq) : k;
    const val = (): string => {
      const v = eq > 0 ? k.slice(eq + 1) : argv[++i];
      if (v === undefined) usage(`${key} needs a value`);
      return v;
    };
    const num = (): number => {
      const v = Number(val());
      if (!(v > 0) || !Number.isFinite(v)) usage(`${key} needs a positive number`);
      return v;
    };
    switch (key) {
      case '--device': {
        const v = val();
        if (v !== 'cpu' && v !== 'cuda') usage(`--device must be cpu or cuda, not ${v}`);
        a.device = v as Device;
        deviceGiven = true;
        break;
      }
      case '--quick': a.quick = true; break;
      case '--json': a.json = val(); break;
      case '--filter': a.filter = val().split(',').filter(Boolean); break;
      case '--repeat': a.repeat = Math.round(num()); break;
      case '--anchors': a.anchors = val(); break;
      case '--no-numpy': a.numpy = false; break;
      case '--peak-bf16': a.peakBf16 = num(); a.peaksGiven = true; break;
      case '--peak-fp32': a.peakFp32 = num(); a.peaksGiven = true; break;
      case '--peak-gbps': a.peakGbps = num(); a.peaksGiven = true; break;
      case '--seed': a.seed = Math.round(num()); break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown argument ${k}`);
    }
  }
  // CI runs --quick on CPU-only machines: quick means the small CPU sizes unless a device is named
  if (a.quick && !deviceGiven) a.device = 'cpu';
  return a;
}

interface Row {
  op: string;
  shape: string;
  dtype: DType;
  device: Device;
  ms: number;
  min_ms: number;
  reps: number;
  batch: number;
  gflops?: number;
  gbps?: number;
  floor_ms?: number;
  anchor?: string;
  anchor_ms?: number;
  ratio_to_anchor?: number;
  /** CPU attention rows: GFLOP/s over our float32 matmul measured in the same run. */
  ratio_to_matmul?: number;
}

function pad(s: string, n: number, right = false): string {
  if (s.length >= n) return s;
  return right ? ' '.repeat(n - s.length) + s : s + ' '.repeat(n - s.length);
}
function fmt(v: number | undefined, digits = 3): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  if (v >= 1000) return v.toFixed(0);
  return v.toPrecision(digits);
}

export function main(argv = process.argv.slice(2)): void {
  const t0 = nowMs();
  const args = parseArgs(argv);
  const info = dr.devices();
  if (args.device === 'cuda' && !info.cuda.available) {
    console.error(`CUDA is not available: ${info.cuda.reason ?? 'unknown reason'}`);
    process.exit(2);
  }
  let list = benches(args.device, args.quick);
  if (args.filter) list = list.filter((b) => args.filter!.some((f) => b.op.toLowerCase().includes(f.toLowerCase()) || `${b.op} ${b.shape} ${b.dtype}`.includes(f)));
  if (list.length === 0) usage(`--filter ${args.filter?.join(',')} matches nothing`);

  // Floors only where the ceilings mean something: the H100 defaults for CUDA, or ceilings
  // the caller passed for whatever device this is.
  const floors = args.device === 'cuda' || args.peaksGiven;
  const anchors = args.anchors ? loadAnchors(args.anchors) : [];
  const devName = args.device === 'cuda' ? `${info.cuda.devices[0]?.name ?? 'cuda'}` : `${info.cpu.name}, ${dr.numThreads()} threads, ${info.cpu.simd}`;
  console.log(`dualroute bench on ${args.device} (${devName})${args.quick ? ', quick' : ''}` +
    (floors ? `; ceilings bf16 ${args.peakBf16} TFLOP/s, fp32 ${args.peakFp32} TFLOP/s, ${args.peakGbps} GB/s` : ''));

  // numpy runs before our rows (spawnSync blocks, so its threads never compete with ours) and
  // then stands beside our CPU matmul rows as their anchor unless an anchors file names one
  const npSizes = args.device === 'cpu' && args.numpy ? list.filter((b) => b.numpyN).map((b) => b.numpyN!) : [];
  const np = numpyMatmul(npSizes, args.quick);
  if (npSizes.length && !np) console.log('(numpy not available: CPU matmul rows have no anchor)');

  const rows: Row[] = [];
  const header = [pad('op', 14), pad('shape', 22), pad('dtype', 9), pad('device', 6), pad('ms', 9, true), pad('rate', 16, true),
    pad('floor ms', 9, true), pad('x floor', 8, true), '  anchor'].join(' ');
  console.log(header);
  console.log('-'.repeat(header.length + 30));
  for (const [i, b] of list.entries()) {
    const t = time(b, args.device, args.repeat, args.quick, args.seed + i);
    const row: Row = { op: b.op, shape: b.shape, dtype: b.dtype, device: args.device, ms: t.median, min_ms: t.min, reps: t.reps, batch: t.batch };
    if (b.flops) row.gflops = b.flops / (t.median * 1e6);
    if (b.bytes) row.gbps = b.bytes / (t.median * 1e6);
    if (floors) {
      if (b.flops) row.floor_ms = b.flops / ((b.dtype === 'bfloat16' ? args.peakBf16 : args.peakFp32) * 1e9);
      else if (b.bytes) row.floor_ms = b.bytes / (args.peakGbps * 1e6);
    }
    if (b.numpyN && np?.has(b.numpyN)) {
      row.anchor = 'numpy';
      row.anchor_ms = np.get(b.numpyN)!;
      row.ratio_to_anchor = row.anchor_ms / t.median;
    }
    const a = anchors.find((x) => x.op === b.op && x.shape === b.shape && x.dtype === b.dtype && (x.device ?? args.device) === args.device);
    if (a) {
      const ams = anchorMs(a, b);
      if (ams !== undefined) {
        row.anchor = a.label;
        row.anchor_ms = ams;
        row.ratio_to_anchor = ams / t.median;
      }
    }
    rows.push(row);
    printRow(row);
  }

  // The CPU attention figure is relative to our own matmul measured in this run.
  const mmRow = rows.find((r) => r.op === 'matmul' && r.dtype === 'float32' && r.shape === '2048x2048x2048' && r.device === 'cpu')
    ?? rows.filter((r) => r.op === 'matmul' && r.dtype === 'float32' && r.device === 'cpu').pop();
  if (mmRow?.gflops) {
    for (const r of rows) {
      if (r.device === 'cpu' && r.op.endsWith('Attn') && r.gflops) {
        r.ratio_to_matmul = r.gflops / mmRow.gflops;
        console.log(`${r.op} ${r.shape}: ${fmt(r.gflops, 4)} GFLOP/s = ${fmt(r.ratio_to_matmul, 3)}x our matmul ${mmRow.shape} (${fmt(mmRow.gflops, 4)} GFLOP/s)`);
      }
    }
  }

  const secs = (nowMs() - t0) / 1000;
  console.log(`${rows.length} benchmarks in ${secs.toFixed(1)}s`);

  if (args.json) {
    const doc = { machine: info, threads: dr.numThreads(), date: new Date().toISOString(), quick: args.quick,
      ceilings: floors ? { bf16_tflops: args.peakBf16, fp32_tflops: args.peakFp32, gbps: args.peakGbps } : null, seconds: secs, rows };
    const dir = path.dirname(path.resolve(args.json));
    fs.mkdirSync(dir, { recursive: true });
    // a reader (CI, a dashboard) never sees a half-written file
    const tmp = path.join(dir, `.${path.basename(args.json)}.${process.pid}.tmp`);
    fs.writeFileSync(tmp, JSON.stringify(doc, null, 1) + '\n');
    fs.renameSync(tmp, args.json);
    console.log(`wrote ${args.json}`);
  }
}

function printRow(r: Row): void {
  const rate = r.gflops !== undefined ? `${fmt(r.gflops, 4)} GFLOP/s` : r.gbps !== undefined ? `${fmt(r.gbps, 4)} GB/s` : '-';
  const xf = r.floor_ms ? r.ms / r.floor_ms : undefined;
  const anc = r.anchor ? `  ${r.anchor} ${fmt(r.anchor_ms)} ms, ours/anchor ${r.ratio_to_anchor!.toFixed(2)}` : '';
  console.log([pad(r.op, 14), pad(r.shape, 22), pad(r.dtype, 9), pad(r.device, 6), pad(fmt(r.ms, 4), 9, true), pad(rate, 16, true),
    pad(r.floor_ms !== undefined ? fmt(r.floor_ms) : '-', 9, true), pad(xf !== undefined ? xf.toFixed(1) : '-', 8, true)].join(' ') + anc);
}

if (require.main === module) main();
