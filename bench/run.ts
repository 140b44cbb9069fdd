// Per-op microbenchmarks (matmul, softmax, rmsNorm, attention) with rates, roofline floors and
// anchors (numpy measured in the same run for CPU matmul; other figures from a file), so a kernel
// change can be judged against what the hardware and other libraries reach; and, for CI,
// instruction counts under callgrind compared with a committed baseline (bench/counts.ts), and a
// table and plot of every row against its floor and anchor (bench/report.ts).
//
//   node dist/bench/run.js [--device cpu|cuda] [--quick] [--json path] [--filter name] [--repeat N]
//                          [--anchors anchors.json] [--peak-bf16 TFLOPS] [--peak-fp32 TFLOPS]
//                          [--peak-gbps GB/s] [--no-numpy] [--seed N]
//                          [--counts] [--compare baseline.json] [--threshold PCT] [--report prefix]
//
// Plain node only (the GPU machine has no npm/ts-node). See bench/README.md for the columns.
//
// Adding a row: write (or reuse) a factory returning a Bench (op, shape, dtype, make, run, flops
// or bytes, and `counted`, the same kernel at a small shape for the instruction count) and push
// it in benches(); the timing, floors, counts, comparison, table and plot pick it up.
//
// Anchors file (--anchors): JSON, either an array of entries or {"source": "...", "entries": [...]}.
// Each entry names the benchmark row it anchors and the other library's time or rate:
//   {"op": "matmul", "shape": "4096x4096x4096", "dtype": "bfloat16", "device": "cuda",
//    "ms": 0.21, "label": "torch 2.5 cuBLAS"}
// op/shape/dtype must equal this table's columns; device defaults to the row's; give ms, or
// gflops (matmul) / gbps (memory-bound ops) instead of ms. label (default "anchor") is printed.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as dr from '../lib';
import { MemBench, memoryBenches } from './elementwise';
import { compareCounts, compareLines, countChild, countInstructions, rowKey, type CompareResult, type CountsInfo } from './counts';
import { writeReport } from './report';

type DType = dr.DType;
type Device = dr.Device;
type Tensor = dr.Tensor;

// ---- benchmark definitions ----------------------------------------------------------------------

export interface Bench {
  op: string;
  /** Shown as is; with op and dtype, the key anchors and baselines match on. */
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
  /**
   * The same kernel at a small fixed shape, run under callgrind for the row's instruction count
   * (--counts, --compare); absent: the row itself. callgrind runs AVX2 code 100x or more slower
   * than the CPU does, so keep it to a few million instructions (a matmul 256^3 is 4.7 M, about
   * 2 s under callgrind on the development machine).
   */
  counted?: Bench;
}

export const ELT: Record<DType, number> = { float32: 4, float64: 8, bfloat16: 2, int32: 4, bool: 1 };

// Counted shapes: a quarter of a matmul side (at most 256); softmax/norm rows of the same length,
// 64K elements at most; attention at one head (two over one kv head for a grouped row), S <= 256.
const countSide = (n: number): number => Math.max(16, Math.min(256, Math.floor(n / 4)));
const countRows = (rows: number, cols: number): number => Math.max(1, Math.min(rows, Math.floor(65536 / cols)));

export function matmulBench(n: number, dtype: DType, counted = true): Bench {
  return {
    op: 'matmul',
    shape: `${n}x${n}x${n}`,
    dtype,
    make: (device, d, gen) => [dr.randn([n, n], { device, dtype: d, generator: gen }), dr.randn([n, n], { device, dtype: d, generator: gen })],
    run: ([a, b]) => dr.matmul(a, b),
    flops: 2 * n * n * n,
    numpyN: dtype === 'float32' ? n : undefined,
    counted: counted && countSide(n) !== n ? matmulBench(countSide(n), dtype, false) : undefined,
  };
}

function softmaxBench(rows: number, cols: number, dtype: DType, counted = true): Bench {
  return {
    op: 'softmax',
    shape: `${rows}x${cols}`,
    dtype,
    make: (device, d, gen) => [dr.randn([rows, cols], { device, dtype: d, generator: gen })],
    run: ([x]) => dr.softmax(x, -1),
    bytes: 2 * rows * cols * ELT[dtype],  // read x, write y
    counted: counted && countRows(rows, cols) !== rows ? softmaxBench(countRows(rows, cols), cols, dtype, false) : undefined,
  };
}

function rmsNormBench(rows: number, cols: number, dtype: DType, counted = true): Bench {
  return {
    op: 'rmsNorm',
    shape: `${rows}x${cols}`,
    dtype,
    make: (device, d, gen) => [dr.randn([rows, cols], { device, dtype: d, generator: gen }), dr.rand([cols], { device, dtype: d, generator: gen, low: 0.5, high: 1.5 })],
    run: ([x, w]) => dr.rmsNorm(x, w),
    bytes: (2 * rows * cols + cols) * ELT[dtype],  // read x, read w, write y
    counted: counted && countRows(rows, cols) !== rows ? rmsNormBench(countRows(rows, cols), cols, dtype, false) : undefined,
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
export function attentionBench(kind: 'local' | 'global' | 'dual', B: number, H: number, S: number, D: number, window: number, dtype: DType, backward: boolean, Hkv = H, counted = true): Bench {
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
  // counted: one head (two over one kv head for a grouped row), at most 256 positions, the window
  // at most half of them (so the band still slides)
  const cS = Math.min(S, 256), cH = Hkv !== H ? 2 : 1, cHkv = Hkv !== H ? 1 : cH, cW = Math.min(window, cS / 2);
  const small = counted && (B !== 1 || H !== cH || S !== cS || Hkv !== cHkv || (kind !== 'global' && window !== cW));
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
    counted: small ? attentionBench(kind, 1, cH, cS, D, kind === 'global' ? window : cW, dtype, backward, cHkv, false) : undefined,
  };
}

/**
 * Segment attention (MoBA-style selection) at [B, H, S, D], causal, segment `seg`, top `topK`:
 * the kernel over given indices (the selection made once in make()), forward or forward +
 * backward. A query in segment j reads min(topK - 1, j) whole earlier segments and its own up
 * to itself: FLOPs 4 B H D (keys read), 3.5x that with the backward, as for attention.
 */
export function segmentBench(B: number, H: number, S: number, D: number, seg: number, topK: number, backward: boolean, counted = true): Bench {
  let keys = 0;
  for (let p = 0; p < S; ++p) keys += Math.min(topK - 1, Math.floor(p / seg)) * seg + (p % seg) + 1;
  const fwd = 4 * B * H * keys * D;
  const cS = Math.min(S, 256), cSeg = Math.min(seg, 32), cTop = Math.min(topK, 4);
  const small = counted && (B !== 1 || H !== 1 || S !== cS || seg !== cSeg || topK !== cTop);
  return {
    op: `segmentAttn${backward ? '+bwd' : ''}`,
    shape: `B${B} H${H} S${S} D${D} seg${seg} top${topK}`,
    dtype: 'float32',
    make: (device, d, gen) => {
      const mk = () => dr.randn([B, H, S, D], { device, dtype: d, generator: gen });
      const xs = [mk(), mk(), mk()];
      const sel = dr.segmentAttention(xs[0], xs[1], xs[2], { segment: seg, topK, returnIndices: true });
      sel.out.dispose();
      sel.lse.dispose();
      if (backward) {
        xs.forEach((t) => t.requiresGrad_());
        xs.push(mk());
      }
      return [...xs, sel.indices];
    },
    run: (xs) => {
      const [q, k, v] = xs;
      const indices = xs[xs.length - 1];
      const out = dr.segmentAttention(q, k, v, { segment: seg, indices });
      if (!backward) return out;
      out.backward(xs[3]);
      out.dispose();
      for (const t of [q, k, v]) {
        if (t.grad) {
          t.grad.dispose();
          t.grad = null;
        }
      }
      return dr.zeros([1], { device: q.device });
    },
    flops: backward ? 3.5 * fwd : fwd,
    counted: small ? segmentBench(1, 1, cS, D, cSeg, cTop, backward, false) : undefined,
  };
}

// The memory-bound rows of bench/elementwise.ts (element-wise math, log-softmax, layerNorm,
// GELU/SiLU/SwiGLU, casts, cross-entropy, the backward kernels, AdamW) as rows of this table,
// float32 on the CPU, counted at 64 x 1024. copy, add, softmax and rmsNorm are rows already.
function memoryRows(quick: boolean): Bench[] {
  const [rows, cols] = quick ? [1024, 1024] : [16384, 1024];
  const small = memoryBenches(64, 1024);
  const asBench = (b: MemBench, counted?: MemBench): Bench => ({
    op: b.op,
    shape: b.shape,
    dtype: 'float32',
    make: (_device, _dtype, gen) => b.make(gen),
    run: (xs) => {
      const outs = b.run(xs);
      outs.slice(1).forEach((t) => t.dispose());
      return outs.length ? outs[0] : dr.zeros([1]);
    },
    bytes: b.bytes,
    counted: counted ? asBench(counted) : undefined,
  });
  return memoryBenches(rows, cols)
    .filter((b) => !['copy', 'add', 'rmsNorm', 'softmax'].includes(b.op))
    .map((b) => asBench(b, small.find((c) => c.op === b.op)));
}

export function benches(device: Device, quick: boolean): Bench[] {
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
    for (const bwd of [false, true]) out.push(segmentBench(1, H, S, 64, 64, 8, bwd));
    out.push(...memoryRows(quick));
  }
  return out;
}

/**
 * The probes of the CPU's memory bandwidth, measured in the same run when no --peak-gbps is
 * given: a copy (clone) and an add of 16M floats (64 MiB per tensor, past the caches); the
 * ceiling is the best rate (fastest batch) of either.
 */
function bandwidthProbes(): Bench[] {
  const n = 16 << 20;
  return [
    { op: 'copy', shape: `${n}`, dtype: 'float32', make: (device, d) => [dr.full([n], 1, { device, dtype: d })], run: ([x]) => dr.clone(x), bytes: 2 * n * 4 },
    { op: 'add', shape: `${n}`, dtype: 'float32', make: (device, d) => [dr.full([n], 1, { device, dtype: d }), dr.full([n], 2, { device, dtype: d })], run: ([a, b]) => dr.add(a, b), bytes: 3 * n * 4 },
  ];
}

/** float32 FLOPs per cycle of one core: two FMA pipes of the widest vectors the kernels use. */
function flopsPerCycle(simd: string): number {
  return simd === 'avx512' ? 64 : simd === 'avx2' ? 32 : 8;
}

/** The CPU's clock in MHz as the OS reports it (the highest core; /proc/cpuinfo's "cpu MHz" when node reports 0), or null. */
function cpuMHz(): number | null {
  let mhz = Math.max(0, ...os.cpus().map((c) => c.speed || 0));
  if (!(mhz > 0)) {
    try {
      const found = [...fs.readFileSync('/proc/cpuinfo', 'utf8').matchAll(/^cpu MHz\s*:\s*([\d.]+)/gm)].map((m) => Number(m[1]));
      mhz = Math.max(0, ...found);
    } catch {
      mhz = 0;
    }
  }
  return mhz > 0 ? mhz : null;
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
  peakBf16: number | null;  // TFLOP/s
  peakFp32: number | null;  // TFLOP/s
  peakGbps: number | null;  // GB/s
  seed: number;
  counts: boolean;
  compare: string | null;
  threshold: number;  // percent
  countWarmup: number;
  countCalls: number;
  report: string | null;
  keepDumps: string | null;
  /** Internal: run as the callgrind child, writing the row keys to this file. */
  child: string | null;
}

// Defaults for CUDA: H100 SXM dense ceilings (bf16 tensor cores, fp32 CUDA cores, HBM3 copy bandwidth).
const H100 = { bf16: 767, fp32: 51, gbps: 2978 };

function usage(msg?: string): never {
  if (msg) console.error(msg);
  console.error('usage: node dist/bench/run.js [--device cpu|cuda] [--quick] [--json path] [--filter name,...] [--repeat N]\n' +
    '                          [--anchors file.json] [--peak-bf16 TFLOPS] [--peak-fp32 TFLOPS] [--peak-gbps GBPS] [--no-numpy] [--seed N]\n' +
    '                          [--counts] [--compare baseline.json] [--threshold PCT] [--count-calls N] [--count-warmup N] [--keep-dumps dir] [--report prefix]');
  process.exit(msg ? 1 : 0);
}

function parseArgs(argv: string[]): Args {
  const a: Args = { device: 'cpu', quick: false, json: null, filter: null, repeat: null, anchors: null, numpy: true,
    peakBf16: null, peakFp32: null, peakGbps: null, seed: 42, counts: false, compare: null, threshold: 3, countWarmup: 1, countCalls: 1, report: null, keepDumps: null, child: null };
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
    const count = (): number => {
      const v = Number(val());
      if (!Number.isInteger(v) || v < 0 || v > 100) usage(`${key} needs an integer in 0..100`);
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
      case '--peak-bf16': a.peakBf16 = num(); break;
      case '--peak-fp32': a.peakFp32 = num(); break;
      case '--peak-gbps': a.peakGbps = num(); break;
      case '--seed': a.seed = Math.round(num()); break;
      case '--counts': a.counts = true; break;
      case '--compare': a.compare = val(); a.counts = true; break;
      case '--threshold': a.threshold = num(); break;
      case '--count-calls': a.countCalls = Math.max(1, count()); break;
      case '--count-warmup': a.countWarmup = count(); break;
      case '--report': a.report = val(); break;
      case '--keep-dumps': a.keepDumps = val(); a.counts = true; break;
      case '--callgrind-child': a.child = val(); break;
      // the child's own names for the two above
      case '--calls': a.countCalls = Math.max(1, count()); break;
      case '--warmup': a.countWarmup = count(); break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown argument ${k}`);
    }
  }
  // CI runs --quick on CPU-only machines: quick means the small CPU sizes unless a device is named;
  // otherwise CUDA when it is available (the callgrind child never asks: that would load the CUDA
  // library under valgrind)
  if (!deviceGiven && !a.quick && !a.child) a.device = dr.cudaAvailable() ? 'cuda' : 'cpu';
  if (a.child) a.device = 'cpu';
  if (a.counts && a.device !== 'cpu') usage('--counts and --compare count CPU instructions (callgrind): use them with --device cpu');
  return a;
}

export interface Row {
  op: string;
  shape: string;
  dtype: DType;
  device: Device;
  ms: number;
  min_ms: number;
  reps: number;
  batch: number;
  flops?: number;
  bytes?: number;
  gflops?: number;
  gbps?: number;
  /** Which ceiling the floor comes from (the larger of FLOPs / peak and bytes / bandwidth). */
  bound?: 'compute' | 'memory';
  floor_ms?: number;
  /** floor_ms / ms in percent: how close to the roofline the row runs. */
  pct_of_floor?: number;
  anchor?: string;
  anchor_ms?: number;
  ratio_to_anchor?: number;
  /** CPU attention rows: GFLOP/s over our float32 matmul measured in the same run. */
  ratio_to_matmul?: number;
  /** Instructions per call under callgrind (--counts), at count_shape. */
  instructions?: number;
  count_shape?: string;
}

/** The ceilings the floors are computed from, with where each came from. */
export interface Ceilings {
  fp32_gflops: number | null;
  bf16_gflops: number | null;
  gbps: number | null;
  compute_source: string;
  bandwidth_source: string;
  /** CPU, measured in this run: the bandwidth probes' best rates (GB/s). */
  probes?: Record<string, number>;
}

/** The JSON document --json writes. */
export interface BenchDoc {
  command: string;
  machine: dr.DevicesInfo;
  device: Device;
  /** One line naming the device: CPU model, threads, SIMD level (or the GPU's name). */
  device_name: string;
  threads: number;
  /** os.loadavg() at the start (1, 5, 15 minutes). */
  loadavg: number[];
  node: string;
  /** When the run started. */
  date: string;
  quick: boolean;
  ceilings: Ceilings;
  seconds: number;
  rows: Row[];
  counts: CountsInfo | null;
  compare?: CompareResult;
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

function writeAtomic(file: string, text: string): void {
  const dir = path.dirname(path.resolve(file));
  fs.mkdirSync(dir, { recursive: true });
  // a reader (CI, a dashboard) never sees a half-written file
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

/** Sets each row's floor from the ceilings: the larger of FLOPs / peak and bytes / bandwidth. */
function applyFloors(rows: Row[], c: Ceilings): void {
  for (const r of rows) {
    const peak = r.dtype === 'bfloat16' ? c.bf16_gflops : c.fp32_gflops;
    const fc = r.flops && peak ? r.flops / (peak * 1e6) : 0;
    const fm = r.bytes && c.gbps ? r.bytes / (c.gbps * 1e6) : 0;
    if (fc > 0 || fm > 0) {
      r.bound = fc >= fm ? 'compute' : 'memory';
      r.floor_ms = Math.max(fc, fm);
      r.pct_of_floor = (100 * r.floor_ms) / r.ms;
    } else {
      delete r.bound;
      delete r.floor_ms;
      delete r.pct_of_floor;
    }
  }
}

export async function main(argv = process.argv.slice(2)): Promise<number> {
  const t0 = nowMs();
  const started = { date: new Date().toISOString(), loadavg: os.loadavg() };
  const args = parseArgs(argv);
  let list = benches(args.device, args.quick);
  if (args.filter) list = list.filter((b) => args.filter!.some((f) => b.op.toLowerCase().includes(f.toLowerCase()) || `${b.op} ${b.shape} ${b.dtype}`.includes(f)));
  if (list.length === 0) usage(`--filter ${args.filter?.join(',')} matches nothing`);
  if (args.child) {
    countChild(list, args.child, args.countWarmup, args.countCalls, args.seed);
    return 0;
  }
  const command = ['node dist/bench/run.js', ...argv].join(' ');
  const info = dr.devices();
  if (args.device === 'cuda' && !info.cuda.available) {
    console.error(`CUDA is not available: ${info.cuda.reason ?? 'unknown reason'}`);
    return 2;
  }
  // instruction counts need valgrind: fail before the timing, not after it
  if (args.counts && spawnSync('valgrind', ['--version']).status !== 0) {
    console.error('valgrind is not installed (Debian: apt-get install valgrind); --counts and --compare need it');
    return 3;
  }
  let baseline: BenchDoc | null = null;
  if (args.compare) {
    try {
      baseline = JSON.parse(fs.readFileSync(args.compare, 'utf8')) as BenchDoc;
    } catch (e) {
      console.error(`--compare ${args.compare}: ${(e as Error).message}`);
      return 3;
    }
  }

  const anchors = args.anchors ? loadAnchors(args.anchors) : [];
  const threads = dr.numThreads();
  const devName = args.device === 'cuda' ? `${info.cuda.devices[0]?.name ?? 'cuda'}` : `${info.cpu.name}, ${threads} threads, ${info.cpu.simd}`;

  // Ceilings. CUDA: the H100 defaults unless given. CPU: the bandwidth measured here (probes) and
  // the compute peak of the clock (threads x MHz x FLOPs/cycle), raised to the best matmul of
  // this run if that is faster; each replaced by its --peak-* flag.
  const ceilings: Ceilings = { fp32_gflops: null, bf16_gflops: null, gbps: null, compute_source: '', bandwidth_source: '' };
  if (args.device === 'cuda') {
    const given = args.peakBf16 !== null || args.peakFp32 !== null || args.peakGbps !== null;
    ceilings.bf16_gflops = (args.peakBf16 ?? H100.bf16) * 1e3;
    ceilings.fp32_gflops = (args.peakFp32 ?? H100.fp32) * 1e3;
    ceilings.gbps = args.peakGbps ?? H100.gbps;
    ceilings.compute_source = ceilings.bandwidth_source = given ? 'given (--peak-*), H100 SXM datasheet for the rest' : 'H100 SXM datasheet (dense bf16 767, fp32 51 TFLOP/s; 2978 GB/s)';
  } else {
    const mhz = cpuMHz();
    if (args.peakFp32 !== null) {
      ceilings.fp32_gflops = args.peakFp32 * 1e3;
      ceilings.compute_source = 'given (--peak-fp32)';
    } else if (mhz) {
      ceilings.fp32_gflops = (threads * mhz * flopsPerCycle(info.cpu.simd)) / 1e3;
      ceilings.compute_source = `theoretical: ${threads} threads x ${mhz.toFixed(0)} MHz x ${flopsPerCycle(info.cpu.simd)} FLOP/cycle (${info.cpu.simd}: two FMA pipes)`;
    }
    ceilings.bf16_gflops = args.peakBf16 !== null ? args.peakBf16 * 1e3 : ceilings.fp32_gflops;
    if (args.peakGbps !== null) {
      ceilings.gbps = args.peakGbps;
      ceilings.bandwidth_source = 'given (--peak-gbps)';
    } else {
      ceilings.probes = {};
      for (const p of bandwidthProbes()) {
        const t = time(p, 'cpu', null, true, args.seed);
        ceilings.probes[p.op] = p.bytes! / (t.min * 1e6);
      }
      const best = Object.entries(ceilings.probes).sort((x, y) => y[1] - x[1])[0];
      ceilings.gbps = best[1];
      ceilings.bandwidth_source = `measured: best of ${Object.entries(ceilings.probes).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')} GB/s (16M floats, fastest batch)`;
    }
  }
  console.log(`dualroute bench on ${args.device} (${devName})${args.quick ? ', quick' : ''}`);
  console.log(`ceilings: compute ${fmt(ceilings.fp32_gflops ?? undefined, 4)} GFLOP/s fp32 (${ceilings.compute_source || 'unknown'}); bandwidth ${fmt(ceilings.gbps ?? undefined, 4)} GB/s (${ceilings.bandwidth_source})`);

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
    if (b.flops) {
      row.flops = b.flops;
      row.gflops = b.flops / (t.median * 1e6);
    }
    if (b.bytes) {
      row.bytes = b.bytes;
      row.gbps = b.bytes / (t.median * 1e6);
    }
    applyFloors([row], ceilings);
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

  // CPU: a matmul of this run faster than the clock's peak means the peak was set too low (a
  // turbo clock, a wider machine): the best matmul is the compute ceiling then
  if (args.device === 'cpu' && args.peakFp32 === null) {
    const best = rows.filter((r) => r.op === 'matmul' && r.dtype === 'float32' && r.gflops).sort((x, y) => y.gflops! - x.gflops!)[0];
    if (best && (ceilings.fp32_gflops === null || best.gflops! > ceilings.fp32_gflops)) {
      const was = ceilings.compute_source ? ` (above the ${ceilings.compute_source.replace(/^theoretical: /, 'theoretical ')} = ${fmt(ceilings.fp32_gflops ?? undefined, 4)})` : '';
      ceilings.fp32_gflops = ceilings.bf16_gflops = best.gflops!;
      ceilings.compute_source = `measured: our best matmul of this run, ${best.shape}${was}`;
      applyFloors(rows, ceilings);
      console.log(`compute ceiling raised to ${fmt(best.gflops, 4)} GFLOP/s: ${ceilings.compute_source}`);
    }
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
  const timedSecs = (nowMs() - t0) / 1000;
  console.log(`${rows.length} benchmarks timed in ${timedSecs.toFixed(1)}s`);

  // Instruction counts: the same rows (at their counted shapes) in a child under callgrind.
  let counts: CountsInfo | null = null;
  let exit = 0;
  if (args.counts) {
    const childArgs = [...(args.quick ? ['--quick'] : []), ...(args.filter ? ['--filter', args.filter.join(',')] : []), '--seed', String(args.seed)];
    console.log(`instruction counts under callgrind (1 thread, ${args.countWarmup} warm-up and ${args.countCalls} counted call(s) per row):`);
    try {
      const c = countInstructions(list, { warmup: args.countWarmup, calls: args.countCalls, childArgs, script: __filename, timeoutS: 900, keepDir: args.keepDumps });
      counts = c.info;
      const byKey = new Map(c.rows.map((r) => [r.key, r]));
      for (const r of rows) {
        const k = byKey.get(rowKey(r));
        if (k) {
          r.instructions = k.instructions;
          r.count_shape = k.countShape;
        }
      }
      console.log(`callgrind pass: ${c.rows.length} rows in ${c.info.seconds.toFixed(1)}s`);
    } catch (e) {
      console.error((e as Error).message);
      exit = 3;
    }
  }

  const doc: BenchDoc = {
    command, machine: info, device: args.device, device_name: devName, threads, loadavg: started.loadavg, node: process.version,
    date: started.date, quick: args.quick, ceilings, seconds: 0, rows, counts,
  };
  if (baseline && counts) {
    doc.compare = compareCounts(doc, baseline, args.compare!, args.threshold, args.filter !== null);
    for (const l of compareLines(doc.compare, counts)) console.log(l);
    if (doc.compare.incomparable) exit = 3;
    else if (doc.compare.regressions > 0) exit = 1;
  } else if (counts) {
    for (const r of rows) console.log(`${pad(r.op, 14)} ${pad(r.shape, 22)} ${pad(r.dtype, 9)} counted at ${pad(r.count_shape ?? '-', 20)} ${pad((r.instructions ?? 0).toLocaleString('en-US'), 14, true)} instructions per call`);
  }
  doc.seconds = (nowMs() - t0) / 1000;
  if (args.json) {
    writeAtomic(args.json, JSON.stringify(doc, null, 1) + '\n');
    console.log(`wrote ${args.json}`);
  }
  if (args.report) {
    const p = await writeReport(args.report, doc);
    console.log(`wrote ${p.join(', ')}`);
  }
  console.log(`bench: ${rows.length} rows in ${doc.seconds.toFixed(1)}s${doc.compare ? `; ${doc.compare.incomparable ? 'counts not comparable' : `${doc.compare.regressions} instruction-count regression(s)`}` : ''}`);
  return exit;
}

function printRow(r: Row): void {
  const rate = r.gflops !== undefined ? `${fmt(r.gflops, 4)} GFLOP/s` : r.gbps !== undefined ? `${fmt(r.gbps, 4)} GB/s` : '-';
  const xf = r.floor_ms ? r.ms / r.floor_ms : undefined;
  const anc = r.anchor ? `  ${r.anchor} ${fmt(r.anchor_ms)} ms, ours/anchor ${r.ratio_to_anchor!.toFixed(2)}` : '';
  console.log([pad(r.op, 14), pad(r.shape, 22), pad(r.dtype, 9), pad(r.device, 6), pad(fmt(r.ms, 4), 9, true), pad(rate, 16, true),
    pad(r.floor_ms !== undefined ? fmt(r.floor_ms) : '-', 9, true), pad(xf !== undefined ? xf.toFixed(1) : '-', 8, true)].join(' ') + anc);
}

if (require.main === module) {
  main().then((code) => process.exit(code), (e) => {
    console.error(e);
    process.exit(1);
  });
}
