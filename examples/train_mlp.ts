// A worked training loop: a two-layer MLP learns to classify points of three interleaved
// spirals, on the default device, with AdamW, a cosine schedule, gradient clipping and a
// progress bar; it saves a checkpoint at the end.
//   node dist/examples/train_mlp.js [--steps 300] [--out /tmp/mlp.safetensors]
import { SingleBar, Presets } from 'cli-progress';
import * as dr from '../lib';
import { nn, optim } from '../lib';
import { saveCheckpoint } from '../lib/train/checkpoint';

/** Three spiral arms of n points each in 2-d, labelled by arm. */
export function spirals(n: number, seed = 0): { x: dr.Tensor; y: dr.Tensor } {
  const g = new dr.Generator(seed);
  const noise = dr.randn([3 * n, 2], { generator: g, std: 0.08 }).dataSync();
  const pts = new Float32Array(3 * n * 2);
  const labels = new Int32Array(3 * n);
  for (let k = 0; k < 3; ++k) {
    for (let i = 0; i < n; ++i) {
      const r = i / n;
      const th = (k * 2 * Math.PI) / 3 + 4 * r;
      const j = k * n + i;
      pts[2 * j] = r * Math.cos(th) + noise[2 * j];
      pts[2 * j + 1] = r * Math.sin(th) + noise[2 * j + 1];
      labels[j] = k;
    }
  }
  return { x: dr.tensor(pts, [3 * n, 2]), y: dr.tensor(labels, [3 * n]) };
}

export class Classifier extends nn.Module {
  l1: nn.Linear;
  norm: nn.LayerNorm;
  l2: nn.Linear;
  constructor(hidden: number, g: dr.Generator) {
    super();
    this.l1 = new nn.Linear(2, hidden, { generator: g });
    this.norm = new nn.LayerNorm(hidden);
    this.l2 = new nn.Linear(hidden, 3, { generator: g });
  }
  forward(x: dr.Tensor): dr.Tensor {
    return dr.tidy(() => this.l2.forward(this.norm.forward(this.l1.forward(x)).gelu()));
  }
}

/** Trains and returns the losses; shows a progress bar when quiet is false. */
export function train(steps: number, options: { quiet?: boolean; seed?: number } = {}): { losses: number[]; accuracy: number; model: Classifier; opt: optim.AdamW } {
  const g = new dr.Generator(options.seed ?? 0);
  const { x, y } = spirals(100, 1);
  const model = new Classifier(64, g);
  const opt = new optim.AdamW(model.parameters(), { lr: 1e-2, weightDecay: 1e-4 });
  const sched = new optim.LRScheduler(opt, optim.cosine({ lr: 2e-2, warmupSteps: 10, totalSteps: steps, minLr: 1e-3 }));
  const bar = options.quiet ? null : new SingleBar({ format: 'train |{bar}| {value}/{total} loss {loss} lr {lr}' }, Presets.shades_classic);
  bar?.start(steps, 0, { loss: '-', lr: '-' });
  const losses: number[] = [];
  for (let s = 0; s < steps; ++s) {
    dr.tidy(() => {
      opt.zeroGrad();
      const loss = dr.crossEntropy(model.forward(x), y);
      loss.backward();
      optim.clipGradNorm(model.parameters(), 1.0);
      opt.step();
      sched.step();
      losses.push(loss.item());
    });
    bar?.update(s + 1, { loss: losses[s].toFixed(4), lr: opt.lr.toExponential(2) });
  }
  bar?.stop();
  const accuracy = dr.tidy(() => dr.noGrad(() => model.forward(x).argmax(1).eq(y).to('float32').mean().item()));
  x.dispose();
  y.dispose();
  return { losses, accuracy, model, opt };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const steps = Number(args[args.indexOf('--steps') + 1]) || 300;
  const out = args.includes('--out') ? args[args.indexOf('--out') + 1] : undefined;
  console.log(`training a 2-64-3 MLP on spirals for ${steps} steps on ${dr.defaultDevice()}`);
  const { losses, accuracy, model, opt } = train(steps);
  console.log(`loss ${losses[0].toFixed(4)} -> ${losses[losses.length - 1].toFixed(4)}, train accuracy ${(100 * accuracy).toFixed(1)}%`);
  if (out) {
    await saveCheckpoint(out, { model, optimizer: opt, step: steps, config: { hidden: 64 } });
    console.log(`checkpoint written to ${out}`);
  }
  model.dispose();
  opt.dispose();
}

if (require.main === module) main().catch((e) => {
  console.error(e);
  process.exit(1);
});
