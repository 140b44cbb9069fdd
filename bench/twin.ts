// The small default DualRouteLM (bench/models.ts's SMALL) against its PyTorch twin
// (python/dualroute_twin, Debian's torch with OpenBLAS, two threads) in one run: tokens/s of a
// training step (forward, backward and AdamW over B8 S128) and of greedy decoding at batch 1 (a
// 16-token prompt fed one token per step through the decode caches, then 32 new tokens).
//
// Both sides start from the same weights: the model built here is saved (saveModel) and the twin
// loads that checkpoint; the batch is written beside it. A long-lived Python process
// (python/bench_twin.py) answers "run one measurement" over stdin/stdout and times itself, so
// the rounds interleave: each round measures both libraries' training step, then both decodes,
// in an order that reverses from round to round, with a pause between measurements so that one
// side's spinning worker threads have gone quiet before the other starts. Reported: median
// (min..max) per side, the ratio of the medians (ours / torch tokens/s) and the median of the
// per-round ratios; the losses of both sides (the same initial loss, the same path after) and
// whether the greedy tokens agree, as checks that both ran the same model.
//
// --variants adds two more twin processes to the same rounds, for context: torch on one thread,
// and on two threads with OMP_WAIT_POLICY=PASSIVE (torch's OpenMP workers then sleep instead of
// spinning while OpenBLAS's own threads want the cores).
//
// --warmup N (default 10) rounds run first, the same way, and are left out of the medians: the
// figures are those of a process that has decoded before (a server's), not of V8 compiling our
// JavaScript (our first generations run 2-4x slower until it has). The first warm-up round's
// decode on each side is reported apart as "first decode".
//
//   node dist/bench/twin.js [--rounds N | --quick] [--warmup N] [--settle ms] [--threads n]
//                           [--variants] [--python path] [--json path]
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as readline from 'readline';
import { spawn, ChildProcessByStdio } from 'child_process';
import type { Readable, Writable } from 'stream';
import * as dr from '../lib';
import { SMALL } from './models';
import { stats } from './rounds';

interface Options {
  rounds: number;
  warmup: number;
  settleMs: number;
  python: string;
  threads: number;
  variants: boolean;
  json: string;
}

interface TwinSetup {
  name: string;
  threads: number;
  env: Record<string, string>;
}

const USAGE = 'usage: node dist/bench/twin.js [--rounds N | --quick] [--warmup N] [--settle ms] [--python path] [--threads n] [--variants] [--json path]';

function parse(argv: string[]): Options {
  const o: Options = { rounds: 9, warmup: 10, settleMs: 150, python: process.env.DUALROUTE_PYTHON || '/usr/bin/python3', threads: 2, variants: false, json: '' };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) {
        console.error(USAGE);
        process.exit(2);
      }
      return argv[++i];
    };
    if (a === '--rounds') o.rounds = Number(next());
    else if (a === '--quick') o.rounds = 3;
    else if (a === '--warmup') o.warmup = Number(next());
    else if (a === '--settle') o.settleMs = Number(next());
    else if (a === '--python') o.python = next();
    else if (a === '--threads') o.threads = Number(next());
    else if (a === '--variants') o.variants = true;
    else if (a === '--json') o.json = next();
    else {
      console.error(USAGE);
      process.exit(2);
    }
  }
  if (!(Number.isInteger(o.rounds) && o.rounds >= 1) || !(Number.isInteger(o.warmup) && o.warmup >= 0)) {
    console.error('--rounds must be an integer >= 1 and --warmup an integer >= 0');
    process.exit(2);
  }
  if (!(o.settleMs >= 0) || !(Number.isInteger(o.threads) && o.threads >= 1)) {
    console.error('--settle must be >= 0 and --threads a positive integer');
    process.exit(2);
  }
  return o;
}

// one request per line, one answer per line
class Twin {
  private lines: AsyncIterableIterator<string>;
  constructor(private proc: ChildProcessByStdio<Writable, Readable, null>) {
    this.lines = readline.createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  }
  async ask<T>(req: object): Promise<T> {
    this.proc.stdin.write(JSON.stringify(req) + '\n');
    const r = await this.lines.next();
    if (r.done) throw new Error(`the twin (python/bench_twin.py) exited before answering ${JSON.stringify(req)}`);
    const out = JSON.parse(r.value);
    if (out.error) throw new Error(`the twin failed: ${out.error}`);
    return out as T;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const B = 8, S = 128, lr = 1e-3;
  const prompt = Array.from({ length: 16 }, (_, i) => (i * 37) % 256);
  const newTokens = 32;
  const load0 = os.loadavg();

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-twin-bench-'));
  const ckpt = path.join(dir, 'model.safetensors'), inputs = path.join(dir, 'inputs.safetensors');
  const model = new dr.DualRouteLM(SMALL);
  await dr.saveModel(ckpt, model);
  const ids = dr.randint(0, 256, [B, S + 1], { dtype: 'int32', generator: new dr.Generator(2) });
  const x = dr.narrow(ids, 1, 0, S).contiguous(), y = dr.narrow(ids, 1, 1, S).contiguous();
  dr.saveSafetensorsSync(inputs, { ids: x, targets: y });
  const decodeModel = (await dr.loadModel(ckpt)) as dr.DualRouteLM;
  const opt = new dr.optim.AdamW(model.parameters(), { lr });

  // the twin as the issue sets it up (o.threads threads), and with --variants two other setups
  // of the same library in the same rounds, for context
  const setups: TwinSetup[] = [{ name: 'torch', threads: o.threads, env: {} }];
  if (o.variants) {
    setups.push({ name: 'torch, 1 thread', threads: 1, env: {} });
    setups.push({ name: `torch, ${o.threads} threads, OMP_WAIT_POLICY=PASSIVE`, threads: o.threads, env: { OMP_WAIT_POLICY: 'PASSIVE' } });
  }
  const twins = setups.map((t) => {
    const proc = spawn(o.python, [path.join(__dirname, '..', '..', 'python', 'bench_twin.py')], {
      env: { ...process.env, OPENBLAS_NUM_THREADS: String(t.threads), OMP_NUM_THREADS: String(t.threads), ...t.env },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    return { setup: t, proc, twin: new Twin(proc), exited: new Promise<void>((r) => proc.on('exit', () => r())) };
  });
  try {
    const initialLoss = dr.tidy(() => dr.noGrad(() => model.loss(x, y).loss.dataSync()[0]));
    let lastLoss = NaN;
    const step = () => {
      opt.zeroGrad();
      dr.tidy(() => {
        const { loss } = model.loss(x, y);
        dr.backward(loss);
        lastLoss = loss.dataSync()[0];
      });
      opt.step();
      dr.synchronize();
    };
    const decode = () => decodeModel.generateTokens(prompt, { maxTokens: newTokens, temperature: 0 });

    const info: Array<Record<string, unknown> & { initialLoss: number; threads: number; torch: string; blasLibraries: string[] }> = [];
    for (const t of twins) {
      info.push(await t.twin.ask({
        cmd: 'init', model: ckpt, inputs, lr, betas: [opt.beta1, opt.beta2], eps: opt.eps, weightDecay: opt.weightDecay, threads: t.setup.threads, prompt,
      }));
    }
    step();  // warm-up, as the twin's init ran one
    await decodeModel.generateTokens(prompt, { maxTokens: 2, temperature: 0 });

    interface Side { train: number[]; decode: number[]; loss: number[]; tokens: number[]; agree: number }
    const newSide = (): Side => ({ train: [], decode: [], loss: [], tokens: [], agree: 0 });
    const ours = newSide();
    const theirs = twins.map(newSide);
    // warm-up rounds first (r < 0), the same way; their entries are cut off below
    for (let r = -o.warmup; r < o.rounds; ++r) {
      // ours, then each twin; the next round in the reverse order
      const trains: Array<() => Promise<void>> = [async () => {
        const t0 = process.hrtime.bigint();
        step();
        ours.train.push(ms(t0));
        ours.loss.push(lastLoss);
      }];
      const decodes: Array<() => Promise<void>> = [async () => {
        const t0 = process.hrtime.bigint();
        ours.tokens = (await decode())[0];
        ours.decode.push(ms(t0));
      }];
      twins.forEach((t, i) => {
        trains.push(async () => {
          const a = await t.twin.ask<{ ms: number; loss: number }>({ cmd: 'train' });
          theirs[i].train.push(a.ms);
          theirs[i].loss.push(a.loss);
        });
        decodes.push(async () => {
          const a = await t.twin.ask<{ ms: number; tokens: number[] }>({ cmd: 'decode', prompt, newTokens });
          theirs[i].decode.push(a.ms);
          theirs[i].tokens = a.tokens;
        });
      });
      if ((r + o.warmup) % 2 === 1) {
        trains.reverse();
        decodes.reverse();
      }
      for (const f of [...trains, ...decodes]) {
        await sleep(o.settleMs);
        await f();
      }
      if (r < 0) continue;
      for (const t of theirs) if (t.tokens.length === ours.tokens.length && t.tokens.every((v, i) => v === ours.tokens[i])) t.agree += 1;
    }
    // the first decode of each side (the first warm-up round's; the first measured one without warm-up)
    const firstDecode = { ours: ours.decode[0], torch: theirs.map((t) => t.decode[0]) };
    for (const side of [ours, ...theirs]) {
      side.train.splice(0, o.warmup);
      side.decode.splice(0, o.warmup);
      side.loss.splice(0, o.warmup);
    }
    for (const t of twins) {
      await t.twin.ask({ cmd: 'quit' });
      await t.exited;
    }

    const side = (xs: number[], tokens: number) => {
      const s = stats(xs);
      return { ms: s, tokensPerSecond: tokens / (s.median / 1e3) };
    };
    // torch ms / ours ms = ours tokens/s / torch tokens/s, round by round
    const perRound = (a: number[], b: number[]) => stats(a.map((v, i) => b[i] / v));
    const trainO = side(ours.train, B * S), decO = side(ours.decode, newTokens);
    const compared = twins.map((t, i) => {
      const th = theirs[i];
      const tr = side(th.train, B * S), de = side(th.decode, newTokens);
      return {
        name: t.setup.name, setup: { threads: t.setup.threads, env: { OPENBLAS_NUM_THREADS: String(t.setup.threads), OMP_NUM_THREADS: String(t.setup.threads), ...t.setup.env } },
        torch: info[i],
        train: { torch: tr, ratio: trainO.tokensPerSecond / tr.tokensPerSecond, ratioPerRound: perRound(ours.train, th.train),
          initialLoss: info[i].initialLoss, maxStepLossDiff: Math.max(...ours.loss.map((l, k) => Math.abs(l - th.loss[k]))), raw: th.train, loss: th.loss },
        decode: { torch: de, ratio: decO.tokensPerSecond / de.tokensPerSecond, ratioPerRound: perRound(ours.decode, th.decode),
          tokensAgreeRounds: th.agree, tokens: th.tokens, raw: th.decode, firstMs: firstDecode.torch[i] },
      };
    });
    const res = {
      date: new Date().toISOString(),
      command: `node dist/bench/twin.js ${process.argv.slice(2).join(' ')}`.trim(),
      machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, loadavgStart: load0, loadavgEnd: os.loadavg() },
      config: SMALL, params: model.numParameters(), rounds: o.rounds, warmupRounds: o.warmup, settleMs: o.settleMs,
      train: { batch: B, seq: S, optimizer: { name: 'AdamW', lr, betas: [opt.beta1, opt.beta2], eps: opt.eps, weightDecay: opt.weightDecay } },
      decode: {
        batch: 1, prompt: prompt.length, newTokens, greedy: true,
        what: 'the prompt fed one token per step through per-layer KV caches, then 32 greedy tokens (47 steps); ours: DualRouteLM.generateTokens; torch: dualroute_twin.decode.generate_cached',
      },
      ours: { threads: dr.numThreads(), train: { ...trainO, initialLoss, loss: ours.loss, raw: ours.train }, decode: { ...decO, tokens: ours.tokens, raw: ours.decode, firstMs: firstDecode.ours } },
      twins: compared,
    };
    const f = (s: { median: number; min: number; max: number }) => `${s.median.toFixed(1)} ms (${s.min.toFixed(1)}..${s.max.toFixed(1)})`;
    const rr = (s: { median: number; min: number; max: number }) => `${s.median.toFixed(2)}x (${s.min.toFixed(2)}..${s.max.toFixed(2)})`;
    const blas = (info[0].blasLibraries || []).filter((l) => /libopenblas|libblas/.test(l)).join(' ') || 'BLAS ?';
    console.log(`DualRouteLM small (${(res.params / 1e6).toFixed(2)} M parameters) against its PyTorch twin (torch ${info[0].torch}, ${blas}); ${o.rounds} rounds interleaved after ${o.warmup} warm-up rounds: median (min..max)`);
    console.log(`  load average at start ${load0.map((v) => v.toFixed(2)).join(' ')}, at end ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);
    console.log(`  training step B${B} S${S} (AdamW): ours (${dr.numThreads()} threads) ${f(trainO.ms)} = ${trainO.tokensPerSecond.toFixed(0)} tokens/s; initial loss ${initialLoss.toFixed(6)}`);
    for (const c of compared) {
      console.log(`    ${c.name}: ${f(c.train.torch.ms)} = ${c.train.torch.tokensPerSecond.toFixed(0)} tokens/s; ours/torch ${c.train.ratio.toFixed(2)}x (per round ${rr(c.train.ratioPerRound)}); initial loss ${c.train.initialLoss.toFixed(6)}, steps' losses within ${c.train.maxStepLossDiff.toExponential(1)}`);
    }
    console.log(`  decode, batch 1 (${prompt.length}-token prompt fed through the caches, ${newTokens} greedy tokens): ours ${f(decO.ms)} = ${decO.tokensPerSecond.toFixed(1)} tokens/s`);
    for (const c of compared) {
      console.log(`    ${c.name}: ${f(c.decode.torch.ms)} = ${c.decode.torch.tokensPerSecond.toFixed(1)} tokens/s; ours/torch ${c.decode.ratio.toFixed(2)}x (per round ${rr(c.decode.ratioPerRound)}); the same tokens in ${c.decode.tokensAgreeRounds} of ${o.rounds} rounds`);
    }
    console.log(`  first decode (${o.warmup ? 'the first warm-up round' : 'the first round'}): ours ${firstDecode.ours.toFixed(1)} ms; ${compared.map((c) => `${c.name} ${c.decode.firstMs.toFixed(1)} ms`).join('; ')}`);
    if (o.json) {
      const tmp = `${o.json}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, JSON.stringify(res, null, 2) + '\n');
      fs.renameSync(tmp, o.json);
    }
  } finally {
    for (const t of twins) if (t.proc.exitCode === null) t.proc.kill();
    [ids, x, y].forEach((t) => t.dispose());
    model.dispose();
    decodeModel.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
