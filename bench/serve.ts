// The serving issue's figures for the default small model (the `small` preset with the byte
// tokenizer: what `npm start` trains and `dualroute serve` serves) on this CPU:
//   decode tokens/s at batch 1 and batch 32 (the engine's decode steps alone, from its step hook)
//   time to first token over HTTP (a 16-token prompt, streamed): alone, and with 32 requests in flight
//   aggregate tokens/s of 32 requests (96 tokens each) served with continuous batching (batch 32)
//   against the same 32 requests served one at a time (batch 1), over HTTP
// Rounds interleave the variants; medians with the spread (min..max). The floor is the decode
// step's matmul FLOPs over the rate the project's own matmul reaches in the same run.
//
//   node dist/bench/serve.js [--rounds N] [--json path]
import * as fs from 'fs';
import * as dr from '../lib';
import { PRESETS } from '../lib/cli/presets';
import { serve } from '../lib/serve/server';
import { BatchEngine, StepInfo } from '../lib/serve/engine';
import { parseRounds, stats } from './rounds';

const parse = (argv: string[]) => parseRounds(argv, 'serve', 3);
const fmt = (x: { median: number; min: number; max: number }, d = 1) => `${x.median.toFixed(d)} (${x.min.toFixed(d)}..${x.max.toFixed(d)})`;

const tok = new dr.ByteTokenizer();
const PROMPT_LEN = 16, NEW = 96, MANY = 32;
const promptText = (i: number) => `request ${String(i).padStart(2, '0')}: the `.padEnd(PROMPT_LEN, 'x').slice(0, PROMPT_LEN);

// decode tokens/s at batch B: the engine's decode steps only (prefill excluded)
async function decodeRate(model: dr.DualRouteLM, B: number): Promise<{ tokensPerS: number; stepMs: number }> {
  let tokens = 0, ms = 0;
  const steps: number[] = [];
  const engine = new BatchEngine(model, { maxBatch: B, onStep: (s: StepInfo) => {
    if (s.kind !== 'decode' || s.sequences !== B) return;
    tokens += s.sequences;
    ms += s.ms;
    steps.push(s.ms);
  } });
  await Promise.all(Array.from({ length: B }, async (_, i) => {
    for await (const _t of engine.submit(tok.encode(promptText(i)), { maxTokens: NEW, temperature: 1, seed: i })) { /* drain */ }
  }));
  await engine.close();
  return { tokensPerS: (tokens / ms) * 1000, stepMs: stats(steps).median };
}

async function ttft(url: string, prompt: string): Promise<number> {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: 8, temperature: 1, stream: true }) });
  const reader = r.body!.getReader();
  let first = -1;
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    if (first < 0 && /"text":"[^"]/.test(buf)) first = performance.now() - t0;
  }
  return first;
}

// 32 requests at once against a server whose engine has `batch` slots: aggregate tokens/s and TTFT p50
async function serveMany(model: dr.DualRouteLM, batch: number): Promise<{ tokensPerS: number; ttftMs: number }> {
  const srv = await serve({ model, tokenizer: tok, port: 0, limits: { concurrency: MANY, batch, queue: MANY } });
  try {
    const t0 = performance.now();
    const counts = await Promise.all(Array.from({ length: MANY }, async (_, i) => {
      const r = await fetch(`${srv.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: promptText(i), max_tokens: NEW, temperature: 1, seed: i, stream: true, stream_options: { include_usage: true } }) });
      const text = await r.text();
      const m = /"completion_tokens":(\d+)/.exec(text);
      return m ? Number(m[1]) : 0;
    }));
    const wall = performance.now() - t0;
    const total = counts.reduce((a, b) => a + b, 0);
    // TTFT with the batch busy: a 33rd request while 32 are decoding
    const busy = Array.from({ length: MANY }, (_, i) => fetch(`${srv.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: promptText(i), max_tokens: NEW, temperature: 1, seed: i }) }).then((r) => r.text()));
    await new Promise((r) => setTimeout(r, 300));
    const loaded = batch > 1 ? await ttft(srv.url, promptText(99)) : NaN;
    await Promise.all(busy);
    return { tokensPerS: (total / wall) * 1000, ttftMs: loaded };
  } finally {
    await srv.close();
  }
}

function matmulRate(): number {
  const n = 512;
  const a = dr.randn([n, n], { generator: new dr.Generator(1) }), b = dr.randn([n, n], { generator: new dr.Generator(2) });
  const times: number[] = [];
  for (let r = 0; r < 7; ++r) {
    const t0 = performance.now();
    for (let i = 0; i < 5; ++i) dr.matmul(a, b).dispose();
    dr.synchronize();
    times.push((performance.now() - t0) / 5);
  }
  a.dispose();
  b.dispose();
  return (2 * n ** 3) / (stats(times).median / 1000) / 1e9;
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const model = new dr.DualRouteLM({ ...PRESETS.small, vocabSize: tok.vocabSize });
  model.eval();
  const params = model.parameters().reduce((a, p) => a + p.size, 0);
  const c = model.config;
  // matmul FLOPs of one decode token: every projection and the (tied) output head; attention over
  // at most maxSeq keys is small beside them at this length
  const flopsPerToken = 2 * (params - c.vocabSize * c.dModel) + 2 * c.vocabSize * c.dModel;
  const d1: number[] = [], d32: number[] = [], step1: number[] = [], step32: number[] = [];
  const alone: number[] = [], many: number[] = [], single: number[] = [], loadedTtft: number[] = [], gf: number[] = [];
  const srv = await serve({ model, tokenizer: tok, port: 0, limits: { concurrency: 4, batch: 4 } });
  for (let r = 0; r < o.rounds; ++r) {
    gf.push(matmulRate());
    const a = await decodeRate(model, 1);
    d1.push(a.tokensPerS);
    step1.push(a.stepMs);
    const b = await decodeRate(model, MANY);
    d32.push(b.tokensPerS);
    step32.push(b.stepMs);
    alone.push(await ttft(srv.url, promptText(r)));
    const cb = await serveMany(model, MANY);
    many.push(cb.tokensPerS);
    loadedTtft.push(cb.ttftMs);
    single.push((await serveMany(model, 1)).tokensPerS);
    console.error(`round ${r + 1}/${o.rounds}: decode b1 ${a.tokensPerS.toFixed(0)} tok/s, b32 ${b.tokensPerS.toFixed(0)} tok/s; 32 requests batched ${cb.tokensPerS.toFixed(0)} vs one at a time ${single[single.length - 1].toFixed(0)} tok/s`);
  }
  await srv.close();
  const rate = stats(gf).median;
  const floor1 = flopsPerToken / (rate * 1e9) * 1000, floor32 = floor1 * MANY;
  const res = {
    model: `small preset (dModel ${c.dModel}, ${c.nLayers} layers, window 32 + gated full every second layer, vocab ${c.vocabSize}, ${(params / 1e6).toFixed(2)} M params)`,
    threads: dr.numThreads(),
    matmulGflops: stats(gf),
    decode: {
      batch1: { tokensPerS: stats(d1), stepMs: stats(step1), floorStepMs: floor1 },
      batch32: { tokensPerS: stats(d32), stepMs: stats(step32), floorStepMs: floor32 },
    },
    ttftMs: { alone: stats(alone), with32InFlight: stats(loadedTtft) },
    requests32: { batchedTokensPerS: stats(many), oneAtATimeTokensPerS: stats(single), ratio: stats(many).median / stats(single).median },
    rounds: o.rounds,
  };
  console.log(`serving figures, ${res.model}; ${o.rounds} rounds, median (min..max)`);
  console.log(`  matmul 512^3 in this run: ${fmt(res.matmulGflops)} GFLOP/s (the floor's rate)`);
  console.log(`  decode batch 1:  ${fmt(res.decode.batch1.tokensPerS, 0)} tokens/s, step ${fmt(res.decode.batch1.stepMs, 2)} ms (floor ${floor1.toFixed(3)} ms: ${(floor1 / res.decode.batch1.stepMs.median * 100).toFixed(1)}% of it)`);
  console.log(`  decode batch 32: ${fmt(res.decode.batch32.tokensPerS, 0)} tokens/s, step ${fmt(res.decode.batch32.stepMs, 2)} ms (floor ${floor32.toFixed(3)} ms: ${(floor32 / res.decode.batch32.stepMs.median * 100).toFixed(1)}% of it)`);
  console.log(`  time to first token (HTTP, ${PROMPT_LEN}-token prompt): alone ${fmt(res.ttftMs.alone)} ms; with 32 requests decoding ${fmt(res.ttftMs.with32InFlight)} ms`);
  console.log(`  32 requests x ${NEW} tokens over HTTP: continuous batching ${fmt(res.requests32.batchedTokensPerS, 0)} tokens/s vs one at a time ${fmt(res.requests32.oneAtATimeTokensPerS, 0)} tokens/s: ${res.requests32.ratio.toFixed(1)}x`);
  if (o.json) {
    const tmp = `${o.json}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify(res, null, 2));
    fs.renameSync(tmp, o.json);
  }
  model.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
