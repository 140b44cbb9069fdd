// The routing issue's figures, measured in one run with the runs being compared interleaved
// (round after round, medians and the spread across rounds):
//
//   moe     routerGate + moeDispatch + moeCombine at T 8192, d 1024, E 8, top-2 (float32), in GB/s
//           of the minimum traffic, beside the copy bandwidth measured on the same bytes
//           (target >= 50% of it)
//   segment segmentAttention S 16384, segment 64, topK 8, H8 D64 float32 (causal): GFLOP/s beside
//           our float32 matmul 2048^3 (target >= 0.5x), and its time beside causal global attention
//           at the same size (target: >= 4x faster)
//
//   node dist/bench/routing.js [--device cpu|cuda] [--rounds N] [--only moe|segment] [--small]
//                              [--json path]
//
// Minimum traffic of the MoE step (each tensor read or written once): the gate reads the logits
// [T, E]; dispatch reads x [T, d] and writes the grouped buffer [T K, d]; combine reads the buffer
// and the weights and writes [T, d]: bytes = 4 (T E + 2 T d + 2 T K d + T K). The copy figure is
// one clone of a [T K, d] tensor: 2 x 4 T K d bytes.
// Segment attention FLOPs: 4 D per (query, visible key) pair (QK^T and PV), counted exactly from
// the causal geometry (a query at p keeps min(topK, p / segment + 1) segments; its own is cut at
// p), plus the selection's scores (2 D per query and segment it can see, its own and those
// before: the fused selection scores no others). Causal global attention: 4 D per
// pair, S (S + 1) / 2 pairs per head.
import * as fs from 'fs';
import * as dr from '../lib';

interface Opts { device: dr.Device; rounds: number; only: string; small: boolean; json: string }

function parse(argv: string[]): Opts {
  const o: Opts = { device: 'cpu', rounds: 5, only: '', small: false, json: '' };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--device') o.device = val() as dr.Device;
    else if (a === '--rounds') o.rounds = Number(val());
    else if (a === '--only') o.only = val();
    else if (a === '--small') o.small = true;
    else if (a === '--json') o.json = val();
    else {
      console.error(`usage: node dist/bench/routing.js [--device cpu|cuda] [--rounds N] [--only moe|segment] [--small] [--json path]`);
      process.exit(2);
    }
  }
  if (!(o.rounds >= 1)) throw new Error('--rounds must be >= 1');
  return o;
}

/** ms of one call of fn (synchronised), the fastest of `inner` calls when a call is short. */
function timeOnce(fn: () => dr.Tensor | dr.Tensor[]): number {
  dr.synchronize();
  const t0 = process.hrtime.bigint();
  const out = fn();
  dr.synchronize();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  for (const t of Array.isArray(out) ? out : [out]) t.dispose();
  return ms;
}

interface Stat { median: number; min: number; max: number }
const stat = (xs: number[]): Stat => {
  const s = xs.slice().sort((a, b) => a - b);
  return { median: s[Math.floor(s.length / 2)], min: s[0], max: s[s.length - 1] };
};

/** Runs the named calls round after round (each warmed once first); their times per round. */
function interleave(rounds: number, calls: Record<string, () => dr.Tensor | dr.Tensor[]>): Record<string, Stat> {
  const names = Object.keys(calls);
  for (const n of names) timeOnce(calls[n]);
  const times: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 0; r < rounds; ++r) for (const n of names) times[n].push(timeOnce(calls[n]));
  return Object.fromEntries(names.map((n) => [n, stat(times[n])]));
}

const fmtStat = (s: Stat) => `${s.median.toFixed(2)} ms (${s.min.toFixed(2)}..${s.max.toFixed(2)})`;

function moeFigure(o: Opts): Record<string, unknown> {
  const [T, d, E, K] = o.small ? [1024, 256, 8, 2] : [8192, 1024, 8, 2];
  const dev = o.device;
  const gen = new dr.Generator(7);
  const x = dr.randn([T, d], { device: dev, generator: gen });
  const logits = dr.randn([T, E], { device: dev, generator: gen });
  const big = dr.randn([T * K, d], { device: dev, generator: gen });
  const step = () => dr.tidy(() => {
    const g = dr.routerGate(logits, { topK: K });
    const disp = dr.moeDispatch(x, g.indices, g.positions, { counts: g.counts });
    return dr.moeCombine(disp.buffer, g.indices, g.positions, g.weights, { plan: disp.plan });
  });
  const parts = {
    gate: () => { const g = dr.routerGate(logits, { topK: K }); return [g.indices, g.weights, g.positions, g.counts, g.auxLoss, g.zLoss]; },
    step,
    copy: () => dr.clone(big),
  };
  const s = interleave(o.rounds, parts);
  const bytes = 4 * (T * E + 2 * T * d + 2 * T * K * d + T * K);
  const copyBytes = 2 * 4 * T * K * d;
  const gbps = bytes / (s.step.median * 1e6);
  const copyGbps = copyBytes / (s.copy.median * 1e6);
  [x, logits, big].forEach((t) => t.dispose());
  const res = {
    shape: `T${T} d${d} E${E} top${K} float32`,
    step: s.step, gate: s.gate, copy: s.copy, bytes, copyBytes,
    gbps, copyGbps, ratio: gbps / copyGbps, target: 0.5,
  };
  console.log(`moe ${res.shape}: routerGate+dispatch+combine ${fmtStat(s.step)} = ${gbps.toFixed(1)} GB/s of ${(bytes / 1e6).toFixed(0)} MB minimum traffic;` +
    ` copy ${fmtStat(s.copy)} = ${copyGbps.toFixed(1)} GB/s; ratio ${(gbps / copyGbps).toFixed(2)} (target >= 0.5); gate alone ${fmtStat(s.gate)}`);
  return res;
}

function segmentPairs(S: number, seg: number, topK: number): number {
  let pairs = 0;
  for (let p = 0; p < S; ++p) {
    const own = Math.floor(p / seg);
    const kept = Math.min(topK, own + 1);
    pairs += (kept - 1) * seg + (p - own * seg + 1);
  }
  return pairs;
}

function segmentFigure(o: Opts): Record<string, unknown> {
  const [B, H, S, D, seg, topK] = o.small ? [1, 2, 2048, 64, 64, 8] : [1, 8, 16384, 64, 64, 8];
  const dev = o.device;
  const gen = new dr.Generator(11);
  const q = dr.randn([B, H, S, D], { device: dev, generator: gen });
  const k = dr.randn([B, H, S, D], { device: dev, generator: gen });
  const v = dr.randn([B, H, S, D], { device: dev, generator: gen });
  const n = 2048;
  const a = dr.randn([n, n], { device: dev, generator: gen }), b = dr.randn([n, n], { device: dev, generator: gen });
  const sel = dr.segmentAttention(q, k, v, { segment: seg, topK, returnIndices: true });
  sel.out.dispose();
  sel.lse.dispose();
  const indices = sel.indices;
  const s = interleave(o.rounds, {
    matmul: () => dr.matmul(a, b),
    segment: () => dr.segmentAttention(q, k, v, { segment: seg, topK }),
    segmentKernel: () => dr.segmentAttention(q, k, v, { segment: seg, indices }),
    global: () => dr.globalAttention(q, k, v, { causal: true }),
  });
  const nseg = Math.ceil(S / seg);
  const attnFlops = 4 * D * B * H * segmentPairs(S, seg, topK);
  // the fused selection scores each query against the segments it can see (causal: up to its own)
  let visible = 0;
  for (let p = 0; p < S; ++p) visible += Math.min(nseg, Math.floor(p / seg) + 1);
  const selFlops = 2 * D * B * H * visible;
  const globalFlops = 4 * D * B * H * (S * (S + 1)) / 2;
  const mmGflops = (2 * n * n * n) / (s.matmul.median * 1e6);
  const segGflops = (attnFlops + selFlops) / (s.segment.median * 1e6);
  const kerGflops = attnFlops / (s.segmentKernel.median * 1e6);
  const globalGflops = globalFlops / (s.global.median * 1e6);
  [q, k, v, a, b, indices].forEach((t) => t.dispose());
  const res = {
    shape: `B${B} H${H} S${S} D${D} segment ${seg} topK ${topK} float32 causal`,
    matmul: s.matmul, segment: s.segment, segmentKernel: s.segmentKernel, global: s.global,
    attnFlops, selFlops, globalFlops, mmGflops, segGflops, kerGflops, globalGflops,
    ratioToMatmul: segGflops / mmGflops, kernelRatioToMatmul: kerGflops / mmGflops, speedupOverGlobal: s.global.median / s.segment.median,
  };
  console.log(`segment ${res.shape}:`);
  console.log(`  segmentAttention (scores + selection + attention) ${fmtStat(s.segment)} = ${segGflops.toFixed(1)} GFLOP/s = ${(segGflops / mmGflops).toFixed(2)}x our matmul (target >= 0.5)`);
  console.log(`  the fused kernel alone (given indices) ${fmtStat(s.segmentKernel)} = ${kerGflops.toFixed(1)} GFLOP/s = ${(kerGflops / mmGflops).toFixed(2)}x our matmul`);
  console.log(`  matmul ${n}^3 float32 ${fmtStat(s.matmul)} = ${mmGflops.toFixed(1)} GFLOP/s`);
  console.log(`  causal global attention ${fmtStat(s.global)} = ${globalGflops.toFixed(1)} GFLOP/s; segmentAttention is ${(s.global.median / s.segment.median).toFixed(2)}x faster (target >= 4)`);
  return res;
}

function main(): void {
  const o = parse(process.argv.slice(2));
  const info = dr.devices();
  console.log(`routing bench on ${o.device} (${o.device === 'cpu' ? `${info.cpu.threads} threads, ${info.cpu.simd}` : 'cuda'}), ${o.rounds} interleaved rounds: median (min..max)`);
  const out: Record<string, unknown> = { date: new Date().toISOString(), device: o.device, rounds: o.rounds, small: o.small };
  if (!o.only || o.only === 'moe') out.moe = moeFigure(o);
  if (!o.only || o.only === 'segment') out.segment = segmentFigure(o);
  if (o.json) {
    const tmp = `${o.json}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify(out, null, 2));
    fs.renameSync(tmp, o.json);
  }
}

main();
