// The models issue's figures for a small DualRouteLM on this CPU: tokens/s of a training step
// (forward, backward and AdamW over a batch) and of generation (one new token per step, batch 1)
// with the per-layer decode caches and, interleaved in the same rounds, recomputing the prefix at
// every step; medians over rounds with the spread.
//
//   node dist/bench/models.js [--rounds N] [--json path]
import * as fs from 'fs';
import * as dr from '../lib';
import { parseRounds, stats } from './rounds';

const parse = (argv: string[]) => parseRounds(argv, 'models', 5);

// The default small model: byte vocabulary, 4 layers (local windows with a gated full-attention
// path every second layer), SwiGLU.
export const SMALL: dr.DualRouteLMConfig = {
  vocabSize: 256, dModel: 128, nHeads: 4, nLayers: 4, maxSeq: 256,
  pattern: [{ local: 'window', window: 32, global: 'none' }, { local: 'window', window: 32, global: 'full', fusion: 'gated' }],
  seed: 1,
};

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const B = 8, S = 128;
  const model = new dr.DualRouteLM(SMALL);
  const opt = new dr.optim.AdamW(model.parameters(), { lr: 1e-3 });
  const ids = dr.randint(0, 256, [B, S + 1], { dtype: 'int32', generator: new dr.Generator(2) });
  const x = dr.narrow(ids, 1, 0, S).contiguous(), y = dr.narrow(ids, 1, 1, S).contiguous();
  const step = () => {
    opt.zeroGrad();
    dr.tidy(() => {
      const { loss } = model.loss(x, y);
      dr.backward(loss);
    });
    opt.step();
    dr.synchronize();
  };
  step();  // warm-up
  const train: number[] = [], gen: number[] = [], genRecompute: number[] = [];
  const prompt = Array.from({ length: 16 }, (_, i) => (i * 37) % 256);
  const newTokens = 32;
  for (let r = 0; r < o.rounds; ++r) {
    let t0 = process.hrtime.bigint();
    step();
    train.push(Number(process.hrtime.bigint() - t0) / 1e6);
    t0 = process.hrtime.bigint();
    await model.generateTokens(prompt, { maxTokens: newTokens, temperature: 0 });
    gen.push(Number(process.hrtime.bigint() - t0) / 1e6);
    t0 = process.hrtime.bigint();
    await model.generateTokens(prompt, { maxTokens: newTokens, temperature: 0, cache: false });
    genRecompute.push(Number(process.hrtime.bigint() - t0) / 1e6);
    model.train();
  }
  const st = stats(train), sg = stats(gen), sr = stats(genRecompute);
  const res = {
    date: new Date().toISOString(), threads: dr.numThreads(), config: SMALL, params: model.numParameters(),
    train: { batch: B, seq: S, ms: st, tokensPerSecond: (B * S) / (st.median / 1e3) },
    generate: { prompt: prompt.length, newTokens, cached: true, ms: sg, tokensPerSecond: newTokens / (sg.median / 1e3) },
    generateRecompute: { prompt: prompt.length, newTokens, cached: false, ms: sr, tokensPerSecond: newTokens / (sr.median / 1e3) },
  };
  const f = (s: { median: number; min: number; max: number }) => `${s.median.toFixed(1)} ms (${s.min.toFixed(1)}..${s.max.toFixed(1)})`;
  console.log(`DualRouteLM small (${(res.params / 1e6).toFixed(2)} M parameters, ${res.threads} threads), ${o.rounds} rounds: median (min..max)`);
  console.log(`  training step B${B} S${S}: ${f(st)} = ${res.train.tokensPerSecond.toFixed(0)} tokens/s`);
  console.log(`  generation (batch 1, ${prompt.length}-token prompt, ${newTokens} new tokens, greedy), decode caches: ${f(sg)} = ${res.generate.tokensPerSecond.toFixed(1)} tokens/s (prompt fed through the caches included)`);
  console.log(`  the same, recomputing the prefix each step: ${f(sr)} = ${res.generateRecompute.tokensPerSecond.toFixed(1)} tokens/s`);
  if (o.json) fs.writeFileSync(o.json, JSON.stringify(res, null, 2) + '\n');
  [ids, x, y].forEach((t) => t.dispose());
  model.dispose();
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
