// Where the small DualRouteLM (bench/models.ts's SMALL) spends a training step and a decode step,
// op by op: every native op call is wrapped so that it runs alone (synchronize before and after)
// and is timed, so the figures are kernel times without overlap (their sum is more than a step
// takes when the JavaScript thread and the stream overlap, and every op pays a hand-off). Also
// counted: views (native.view), outputs (native.empty) and host tensors (native.fromBytes) per
// decode step, and a decode step's JavaScript issue time against its whole time.
//
//   node dist/bench/opprofile.js [--steps N] [--top K]
import * as dr from '../lib';
import { SMALL } from './models';

interface Stat { n: number; us: number }

// eslint-disable-next-line @typescript-eslint/no-var-requires
const ops = require('../lib/generated/native_ops') as Record<string, unknown> & { OP_NAMES: readonly string[] };
// eslint-disable-next-line @typescript-eslint/no-var-requires
const { native } = require('../lib/native') as { native: Record<string, unknown> & { synchronize(): void } };

let timing = false, counting = false;
const stats = new Map<string, Stat>();
const counts = new Map<string, number>();

function signature(a: Record<string, unknown> | undefined): string {
  if (!a || typeof a !== 'object') return '';
  const parts: string[] = [];
  if (typeof a.op === 'string') parts.push(`op=${a.op}`);
  for (const k of ['x', 'a', 'b', 'q', 'k', 'out', 'grad', 'dy']) {
    const t = a[k] as { shape?: number[] } | undefined;
    if (t && Array.isArray(t.shape)) parts.push(`${k}[${t.shape.join(',')}]`);
  }
  if (a.transA || a.transB) parts.push(`t${a.transA ? 'A' : ''}${a.transB ? 'B' : ''}`);
  return parts.join(' ');
}

for (const name of ops.OP_NAMES) {
  const f = ops[name];
  if (typeof f !== 'function') continue;
  ops[name] = function (this: unknown, a: Record<string, unknown>) {
    if (counting) counts.set(name, (counts.get(name) ?? 0) + 1);
    if (!timing) return f.call(this, a);
    native.synchronize();
    const t0 = process.hrtime.bigint();
    const r = f.call(this, a);
    native.synchronize();
    const key = `${name} ${signature(a)}`;
    const s = stats.get(key) ?? { n: 0, us: 0 };
    s.n += 1;
    s.us += Number(process.hrtime.bigint() - t0) / 1e3;
    stats.set(key, s);
    return r;
  };
}
for (const name of ['view', 'empty', 'fromBytes']) {
  const f = native[name] as (...args: unknown[]) => unknown;
  native[name] = function (this: unknown, ...args: unknown[]) {
    if (counting) counts.set(`native.${name}`, (counts.get(`native.${name}`) ?? 0) + 1);
    return f.apply(this, args);
  };
}

function parse(argv: string[]): { steps: number; top: number } {
  const o = { steps: 3, top: 25 };
  for (let i = 0; i < argv.length; ++i) {
    if (argv[i] === '--steps' && i + 1 < argv.length) o.steps = Number(argv[++i]);
    else if (argv[i] === '--top' && i + 1 < argv.length) o.top = Number(argv[++i]);
    else {
      console.error('usage: node dist/bench/opprofile.js [--steps N] [--top K]');
      process.exit(2);
    }
  }
  return o;
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const B = 8, S = 128;
  const model = new dr.DualRouteLM(SMALL);
  const opt = new dr.optim.AdamW(model.parameters(), { lr: 1e-3 });
  const ids = dr.randint(0, 256, [B, S + 1], { dtype: 'int32', generator: new dr.Generator(2) });
  const x = dr.narrow(ids, 1, 0, S).contiguous(), y = dr.narrow(ids, 1, 1, S).contiguous();
  const step = () => {
    opt.zeroGrad();
    dr.tidy(() => dr.backward(model.loss(x, y).loss));
    opt.step();
    dr.synchronize();
  };
  step();
  step();
  timing = counting = true;
  for (let i = 0; i < o.steps; ++i) step();
  timing = counting = false;
  const byOp = new Map<string, Stat>();
  let total = 0, calls = 0;
  for (const [k, s] of stats) {
    const name = k.split(' ')[0];
    const b = byOp.get(name) ?? { n: 0, us: 0 };
    b.n += s.n;
    b.us += s.us;
    byOp.set(name, b);
    total += s.us;
    calls += s.n;
  }
  const per = (v: number) => v / o.steps;
  console.log(`training step B${B} S${S} (${dr.numThreads()} threads): ${per(calls).toFixed(0)} op calls, ${(per(total) / 1e3).toFixed(1)} ms of kernel time run op by op`);
  for (const [k, s] of [...byOp].sort((a, b) => b[1].us - a[1].us)) {
    console.log(`  ${(per(s.us) / 1e3).toFixed(2).padStart(7)} ms ${(100 * s.us / total).toFixed(1).padStart(5)}% ${per(s.n).toFixed(0).padStart(4)} calls  ${k}`);
  }
  console.log(`  the ${o.top} costliest signatures:`);
  for (const [k, s] of [...stats].sort((a, b) => b[1].us - a[1].us).slice(0, o.top)) {
    console.log(`  ${(per(s.us) / 1e3).toFixed(2).padStart(7)} ms ${per(s.n).toFixed(0).padStart(4)} calls ${(s.us / s.n).toFixed(0).padStart(6)} us each  ${k}`);
  }

  // decode: counts per step, and the JavaScript issue time against the whole step
  const prompt = Array.from({ length: 16 }, (_, i) => (i * 37) % 256);
  await model.generateTokens(prompt, { maxTokens: 32, temperature: 0 });
  counts.clear();
  counting = true;
  await model.generateTokens(prompt, { maxTokens: 32, temperature: 0 });
  counting = false;
  const steps = prompt.length + 32 - 1;
  let opCalls = 0;
  for (const [k, v] of counts) if (!k.startsWith('native.')) opCalls += v;
  console.log(`decode, batch 1: per step ${(opCalls / steps).toFixed(1)} op calls; ${[...counts].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${(v / steps).toFixed(1)}`).join(', ')}`);
  model.eval();
  const issue: number[] = [], whole: number[] = [];
  for (let r = 0; r < 7; ++r) {
    const c = model.decodeCache(1);
    let iss = 0, all = 0;
    for (let p = 0; p < steps; ++p) {
      const t0 = process.hrtime.bigint();
      dr.tidy(() => {
        const lg = c.step([prompt[p % prompt.length]]);
        iss += Number(process.hrtime.bigint() - t0) / 1e3;
        lg.dataSync();
      });
      all += Number(process.hrtime.bigint() - t0) / 1e3;
    }
    c.dispose();
    issue.push(iss / steps);
    whole.push(all / steps);
  }
  const med = (v: number[]) => v.slice().sort((a, b) => a - b)[v.length >> 1];
  console.log(`decode step: ${med(issue).toFixed(0)} us to issue on the JavaScript thread, ${med(whole).toFixed(0)} us with its logits read (median of 7 decodes of ${steps} steps)`);
  [ids, x, y].forEach((t) => t.dispose());
  model.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
