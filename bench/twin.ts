// The small default DualRouteLM (bench/models.ts's SMALL) against its PyTorch twin
// (python/dualroute_twin, Debian's torch with OpenBLAS, two threads) in one run: tokens/s of a
// training step (forward, backward and AdamW over B8 S128) and of greedy decoding at batch 1 (a
// 16-token prompt fed one token per step through the decode caches, then 32 new tokens).
//
// Both sides start from the same weights: the model built here is saved (saveModel) and the twin
// loads that checkpoint; the batch is written beside it. One long-lived Python process
// (python/bench_twin.py) answers "run one measurement" over stdin/stdout and times itself, so
// the rounds interleave: each round measures both libraries' training step, then both decodes,
// in an order that alternates from round to round, with a pause between measurements so that
// one side's spinning worker threads have gone quiet before the other starts. Reported: median
// (min..max) per side, the ratio of the medians (ours / torch tokens/s) and the median of the
// per-round ratios; the losses of both sides (the same initial loss, and the same path after)
// and whether the greedy tokens agree, as checks that both ran the same model.
//
//   node dist/bench/twin.js [--rounds N | --quick] [--settle ms] [--python path] [--json path]
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
  settleMs: number;
  python: string;
  threads: number;
  json: string;
}

const USAGE = 'usage: node dist/bench/twin.js [--rounds N | --quick] [--settle ms] [--python path] [--threads n] [--json path]';

function parse(argv: string[]): Options {
  const o: Options = { rounds: 9, settleMs: 150, python: process.env.DUALROUTE_PYTHON || '/usr/bin/python3', threads: 2, json: '' };
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
    else if (a === '--settle') o.settleMs = Number(next());
    else if (a === '--python') o.python = next();
    else if (a === '--threads') o.threads = Number(next());
    else if (a === '--json') o.json = next();
    else {
      console.error(USAGE);
      process.exit(2);
    }
  }
  if (!(Number.isInteger(o.rounds) && o.rounds >= 1)) {
    console.error('--rounds must be an integer >= 1');
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

  const proc = spawn(o.python, [path.join(__dirname, '..', '..', 'python', 'bench_twin.py')], {
    env: { ...process.env, OPENBLAS_NUM_THREADS: String(o.threads), OMP_NUM_THREADS: String(o.threads) },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const twin = new Twin(proc);
  const exited = new Promise<void>((r) => proc.on('exit', () => r()));
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

    const setup = await twin.ask<Record<string, unknown> & { initialLoss: number; threads: number }>({
      cmd: 'init', model: ckpt, inputs, lr, betas: [opt.beta1, opt.beta2], eps: opt.eps, weightDecay: opt.weightDecay, threads: o.threads, prompt,
    });
    step();  // warm-up, as the twin's init ran one
    await decodeModel.generateTokens(prompt, { maxTokens: 2, temperature: 0 });

    const ours = { train: [] as number[], decode: [] as number[], loss: [] as number[] };
    const torch = { train: [] as number[], decode: [] as number[], loss: [] as number[] };
    let tokensAgree = 0;
    let oursTokens: number[] = [], twinTokens: number[] = [];
    for (let r = 0; r < o.rounds; ++r) {
      const oursFirst = r % 2 === 0;
      const trainOurs = async () => {
        const t0 = process.hrtime.bigint();
        step();
        ours.train.push(ms(t0));
        ours.loss.push(lastLoss);
      };
      const trainTwin = async () => {
        const a = await twin.ask<{ ms: number; loss: number }>({ cmd: 'train' });
        torch.train.push(a.ms);
        torch.loss.push(a.loss);
      };
      const decodeOurs = async () => {
        const t0 = process.hrtime.bigint();
        oursTokens = (await decode())[0];
        ours.decode.push(ms(t0));
      };
      const decodeTwin = async () => {
        const a = await twin.ask<{ ms: number; tokens: number[] }>({ cmd: 'decode', prompt, newTokens });
        torch.decode.push(a.ms);
        twinTokens = a.tokens;
      };
      const order = oursFirst ? [trainOurs, trainTwin, decodeOurs, decodeTwin] : [trainTwin, trainOurs, decodeTwin, decodeOurs];
      for (const f of order) {
        await sleep(o.settleMs);
        await f();
      }
      if (oursTokens.length === twinTokens.length && oursTokens.every((t, i) => t === twinTokens[i])) tokensAgree += 1;
    }
    await twin.ask({ cmd: 'quit' });
    await exited;

    const perRound = (a: number[], b: number[]) => stats(a.map((v, i) => b[i] / v));  // torch ms / ours ms = ours tokens/s / torch tokens/s
    const side = (xs: number[], tokens: number) => {
      const s = stats(xs);
      return { ms: s, tokensPerSecond: tokens / (s.median / 1e3) };
    };
    const trainO = side(ours.train, B * S), trainT = side(torch.train, B * S);
    const decO = side(ours.decode, newTokens), decT = side(torch.decode, newTokens);
    const maxLossDiff = Math.max(...ours.loss.map((l, i) => Math.abs(l - torch.loss[i])));
    const res = {
      date: new Date().toISOString(),
      machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, loadavgStart: load0, loadavgEnd: os.loadavg() },
      ours: { threads: dr.numThreads() },
      torch: setup,
      config: SMALL, params: model.numParameters(), rounds: o.rounds, settleMs: o.settleMs,
      train: {
        batch: B, seq: S, optimizer: { name: 'AdamW', lr, betas: [opt.beta1, opt.beta2], eps: opt.eps, weightDecay: opt.weightDecay },
        ours: trainO, torch: trainT,
        ratio: trainO.tokensPerSecond / trainT.tokensPerSecond, ratioPerRound: perRound(ours.train, torch.train),
        loss: { initial: { ours: initialLoss, torch: setup.initialLoss }, maxStepDiff: maxLossDiff, ours: ours.loss, torch: torch.loss },
        raw: { ours: ours.train, torch: torch.train },
      },
      decode: {
        batch: 1, prompt: prompt.length, newTokens, greedy: true,
        what: 'prompt fed one token per step through per-layer KV caches, then 32 greedy tokens (47 steps); ours: DualRouteLM.generateTokens; torch: dualroute_twin.decode.generate_cached',
        ours: decO, torch: decT,
        ratio: decO.tokensPerSecond / decT.tokensPerSecond, ratioPerRound: perRound(ours.decode, torch.decode),
        tokensAgreeRounds: tokensAgree, tokens: { ours: oursTokens, torch: twinTokens },
        raw: { ours: ours.decode, torch: torch.decode },
      },
    };
    const f = (s: { median: number; min: number; max: number }) => `${s.median.toFixed(1)} ms (${s.min.toFixed(1)}..${s.max.toFixed(1)})`;
    const rr = (s: { median: number; min: number; max: number }) => `${s.median.toFixed(2)}x (${s.min.toFixed(2)}..${s.max.toFixed(2)})`;
    console.log(`DualRouteLM small (${(res.params / 1e6).toFixed(2)} M parameters) against the PyTorch twin (torch ${setup.torch}, ${setup.threads} threads, ${(setup.blasLibraries as string[]).filter((l) => l.includes('blas')).join(' ') || 'BLAS ?'}), ${o.rounds} rounds interleaved: median (min..max)`);
    console.log(`  load average at start ${load0.map((v) => v.toFixed(2)).join(' ')}, at end ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}`);
    console.log(`  training step B${B} S${S} (AdamW): ours ${f(trainO.ms)} = ${trainO.tokensPerSecond.toFixed(0)} tokens/s; torch ${f(trainT.ms)} = ${trainT.tokensPerSecond.toFixed(0)} tokens/s; ours/torch ${res.train.ratio.toFixed(2)}x (per round ${rr(res.train.ratioPerRound)})`);
    console.log(`    loss of the initial weights: ours ${initialLoss.toFixed(6)}, torch ${setup.initialLoss.toFixed(6)}; largest difference of a measured step's loss ${maxLossDiff.toExponential(2)}`);
    console.log(`  decode batch 1 (${prompt.length}-token prompt fed through the caches, ${newTokens} greedy tokens): ours ${f(decO.ms)} = ${decO.tokensPerSecond.toFixed(1)} tokens/s; torch ${f(decT.ms)} = ${decT.tokensPerSecond.toFixed(1)} tokens/s; ours/torch ${res.decode.ratio.toFixed(2)}x (per round ${rr(res.decode.ratioPerRound)})`);
    console.log(`    greedy tokens equal in ${tokensAgree} of ${o.rounds} rounds`);
    if (o.json) {
      const tmp = `${o.json}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, JSON.stringify(res, null, 2) + '\n');
      fs.renameSync(tmp, o.json);
    }
  } finally {
    if (proc.exitCode === null) proc.kill();
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
