// Large outputs through the cache against around it (non-temporal stores; native/cpu/prefetch.h
// stream_stores), in one process: each row of bench/elementwise.ts whose kernel streams (and a
// few that do not, as controls) over 64 MiB, the two forms alternated call by call over the same
// inputs (DUALROUTE_CPU_STREAM_BYTES 1e15 against 0), fresh inputs each round. Prints the median
// ms of each form and their ratio. Rates differ from process to process on these machines; the
// ratio inside one process is the figure to trust.
//
//   node dist/bench/stores.js [--rounds 5] [--filter swiglu,norm]
import * as dr from '../lib';
import { native } from '../lib/native';
import { memoryBenches } from './elementwise';
import { stats } from './rounds';

const STREAMED = ['rmsNorm', 'layerNorm', 'swiglu', 'swigluBackward', 'rmsNormBackward', 'layerNormBackward', 'addRmsNormBackward fused', 'siluBackward'];
const CONTROLS = ['copy', 'logSoftmax', 'gelu', 'geluBackward', 'biasAct gelu fused'];

function main(): void {
  const argv = process.argv.slice(2);
  let rounds = 5;
  let filter: string[] = [];
  for (let i = 0; i < argv.length; ++i) {
    if (argv[i] === '--rounds') rounds = Number(argv[++i]);
    else if (argv[i] === '--filter') filter = (argv[++i] ?? '').toLowerCase().split(',').filter(Boolean);
    else throw new Error(`unknown argument ${argv[i]} (see the header of bench/stores.ts)`);
  }
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error('--rounds must be a positive integer');
  const want = [...STREAMED, ...CONTROLS].filter((op) => !filter.length || filter.some((f) => op.toLowerCase().includes(f)));
  const bs = memoryBenches(16384, 1024).filter((b) => want.includes(b.op));
  const forms: Array<[string, string]> = [['through', '1e15'], ['around', '0']];
  const t = new Map<string, number[][]>(bs.map((b) => [b.op, [[], []]]));
  const gen = new dr.Generator(7);
  const saved = process.env.DUALROUTE_CPU_STREAM_BYTES;
  try {
    for (let r = 0; r < rounds; ++r) {
      for (const b of bs) {
        const xs = b.make(gen);
        dr.dispose(b.run(xs));
        // the order of the two forms flips every call pair (A B B A ...): a call that follows the
        // other form runs on the output block that one left (in cache, or not), so a fixed order
        // favours one form (copy, a control, ran 1.11x faster second than first)
        for (let i = 0; i < 6; ++i) {
          const order = i % 2 ? [1, 0] : [0, 1];
          order.forEach((k) => {
            const v = forms[k][1];
            native.setEnv('DUALROUTE_CPU_STREAM_BYTES', v);
            dr.synchronize();
            const t0 = performance.now();
            const outs = b.run(xs);
            dr.synchronize();
            t.get(b.op)![k].push(performance.now() - t0);
            dr.dispose(outs);
          });
        }
        dr.dispose(xs);
      }
    }
  } finally {
    native.setEnv('DUALROUTE_CPU_STREAM_BYTES', saved);
  }
  console.log(`outputs through the cache and around it, float32 16384x1024, ${dr.numThreads()} threads, ${rounds} rounds x 6 calls a form`);
  for (const b of bs) {
    const [th, ar] = t.get(b.op)!.map((x) => stats(x).median);
    const tag = STREAMED.includes(b.op) ? '' : '  (control: keeps ordinary stores)';
    console.log(`${b.op.padEnd(26)} through ${th.toFixed(3)} ms  around ${ar.toFixed(3)} ms  ${(th / ar).toFixed(2)}x${tag}`);
  }
}

if (require.main === module) main();
