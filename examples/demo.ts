// npm start: the core ops on the best available device, each checked for a sane result and
// timed. Later issues turn this into training and sampling a dual-routing model.
import * as dr from '../lib';

function time(fn: () => dr.Tensor, repeat: number): { ms: number; out: dr.Tensor } {
  fn().dispose(); // warm-up
  dr.synchronize();
  const times: number[] = [];
  let out!: dr.Tensor;
  for (let i = 0; i < repeat; ++i) {
    const t0 = process.hrtime.bigint();
    const o = fn();
    dr.synchronize();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (i < repeat - 1) o.dispose();
    else out = o;
  }
  times.sort((a, b) => a - b);
  return { ms: times[times.length >> 1], out };
}

function main(): void {
  const info = dr.devices();
  const device = info.default;
  console.log(`dualroute demo on ${device}`);
  console.log(`  cpu: ${info.cpu.name}, ${info.cpu.threads} threads, SIMD ${info.cpu.simd}`);
  console.log(`  cuda: ${info.cuda.available ? info.cuda.devices.map((d) => `${d.name} (sm_${d.computeCapability.replace('.', '')}, cuBLASLt ${d.cublasLt ? 'on' : 'off'})`).join(', ') : `off (${info.cuda.reason})`}`);
  const n = device === 'cuda' ? 4096 : 1024;
  const dtype: dr.DType = device === 'cuda' ? 'bfloat16' : 'float32';
  const g = new dr.Generator(0);
  const rows: Array<[string, string, number, string]> = [];
  dr.tidy(() => {
    const a = dr.randn([n, n], { device, dtype, generator: g });
    const b = dr.randn([n, n], { device, dtype, generator: g });
    const mm = time(() => dr.matmul(a, b), 5);
    rows.push(['matmul', `${n}x${n}x${n} ${dtype}`, mm.ms, `${((2 * n ** 3) / mm.ms / 1e6).toFixed(1)} GFLOP/s`]);
    const x = dr.randn([4096, 1024], { device, generator: g });
    const bytes = 2 * x.byteSize;
    const sm = time(() => dr.softmax(x), 10);
    rows.push(['softmax', '4096x1024 float32', sm.ms, `${(bytes / sm.ms / 1e6).toFixed(1)} GB/s`]);
    const rowSums = sm.out.sum(-1).dataSync();
    if (rowSums.some((s) => Math.abs(s - 1) > 1e-4)) throw new Error('softmax rows do not sum to 1');
    const w = dr.ones([1024], { device });
    const rn = time(() => dr.rmsNorm(x, w), 10);
    rows.push(['rmsNorm', '4096x1024 float32', rn.ms, `${(bytes / rn.ms / 1e6).toFixed(1)} GB/s`]);
    const gl = time(() => dr.gelu(x), 10);
    rows.push(['gelu', '4096x1024 float32', gl.ms, `${(bytes / gl.ms / 1e6).toFixed(1)} GB/s`]);
    const targets = dr.randint(0, 1024, [4096], { device, generator: g });
    const ce = time(() => dr.crossEntropy(x, targets), 10);
    rows.push(['crossEntropy', '4096x1024 float32', ce.ms, `loss ${ce.out.item().toFixed(3)} (about ln 1024 + 0.5 = ${(Math.log(1024) + 0.5).toFixed(3)})`]);
    const [H, S, D, W] = device === 'cuda' ? [16, 4096, 64, 256] : [8, 2048, 64, 256];
    const q = dr.randn([1, H, S, D], { device, dtype, generator: g });
    const kv = dr.randn([1, H, S, D], { device, dtype, generator: g });
    let keys = 0;
    for (let p = 0; p < S; ++p) keys += Math.min(W, p + 1);
    const la = time(() => dr.localAttention(q, kv, kv, { window: W, causal: true }), 5);
    rows.push(['localAttention', `B1 H${H} S${S} D${D} W${W} ${dtype}`, la.ms, `${((4 * H * keys * D) / la.ms / 1e6).toFixed(1)} GFLOP/s`]);
    const gates = dr.rand([1, S, 2], { device, dtype, generator: g });
    const da = time(() => dr.dualAttention(q, kv, kv, { window: W, causal: true, gates }), 3);
    rows.push(['dualAttention', `B1 H${H} S${S} D${D} W${W} ${dtype}`, da.ms, 'local + global paths in one pass']);
    const table = dr.randn([32000, 512], { device, generator: g });
    const ids = dr.randint(0, 32000, [8, 512], { device, generator: g });
    const em = time(() => dr.embedding(ids, table), 10);
    rows.push(['embedding', '8x512 ids, 32000x512 table', em.ms, `${((2 * 8 * 512 * 512 * 4) / em.ms / 1e6).toFixed(1)} GB/s`]);
  });
  console.log('');
  console.log('op             shape                           median ms   rate');
  for (const [op, shape, ms, rate] of rows) console.log(`${op.padEnd(14)} ${shape.padEnd(31)} ${ms.toFixed(3).padStart(9)}   ${rate}`);
  const m = dr.memory();
  console.log(`\nlive tensors after the demo: ${m.tensors} (${m.bytes} bytes)`);
}

main();
