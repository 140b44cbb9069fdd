import * as dr from '../../lib';
import { optim } from '../../lib';

// PyTorch's AdamW written out in float64.
function adamwRef(p: number[], grads: number[][], o: { lr: number; b1: number; b2: number; eps: number; wd: number }): number[] {
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  grads.forEach((g, s) => {
    const t = s + 1;
    for (let i = 0; i < p.length; ++i) {
      p[i] -= o.lr * o.wd * p[i];
      m[i] = o.b1 * m[i] + (1 - o.b1) * g[i];
      v[i] = o.b2 * v[i] + (1 - o.b2) * g[i] * g[i];
      const mh = m[i] / (1 - o.b1 ** t);
      const vh = v[i] / (1 - o.b2 ** t);
      p[i] -= (o.lr * mh) / (Math.sqrt(vh) + o.eps);
    }
  });
  return p;
}

describe('optimizers', () => {
  test('AdamW matches the PyTorch update (float64)', () => {
    const init = [0.5, -1, 2, 0];
    const grads = [[0.1, -0.2, 0.3, 0], [0.5, 0.5, -1, 2], [-0.3, 0.1, 0.2, 0.05]];
    const p = dr.tensor(new Float64Array(init)).requiresGrad_();
    const opt = new optim.AdamW([p], { lr: 0.1, betas: [0.9, 0.99], eps: 1e-8, weightDecay: 0.05 });
    for (const g of grads) {
      p.grad = dr.tensor(new Float64Array(g));
      opt.step();
    }
    const want = adamwRef(init.slice(), grads, { lr: 0.1, b1: 0.9, b2: 0.99, eps: 1e-8, wd: 0.05 });
    Array.from(p.dataSync()).forEach((v, i) => expect(v).toBeCloseTo(want[i], 12));
    opt.dispose();
    p.dispose();
  });

  test('SGD with momentum, nesterov and weight decay matches PyTorch', () => {
    const p = dr.tensor(new Float64Array([1, -2])).requiresGrad_();
    const opt = new optim.SGD([p], { lr: 0.1, momentum: 0.9, weightDecay: 0.01, nesterov: true });
    const ref = [1, -2];
    const buf = [0, 0];
    const grads = [[0.5, -1], [0.2, 0.3], [-0.4, 0.1]];
    grads.forEach((g, s) => {
      p.grad = dr.tensor(new Float64Array(g));
      opt.step();
      for (let i = 0; i < 2; ++i) {
        const gi = g[i] + 0.01 * ref[i];
        buf[i] = s === 0 ? gi : 0.9 * buf[i] + gi;
        ref[i] -= 0.1 * (gi + 0.9 * buf[i]);
      }
    });
    Array.from(p.dataSync()).forEach((v, i) => expect(v).toBeCloseTo(ref[i], 12));
    opt.dispose();
    p.dispose();
  });

  test('clipGradNorm scales to the max norm and returns the norm before', () => {
    const a = dr.tensor([3, 0]).requiresGrad_();
    const b = dr.tensor([4]).requiresGrad_();
    a.grad = dr.tensor([3, 0]);
    b.grad = dr.tensor([4]);
    const n = optim.clipGradNorm([a, b], 1);
    expect(n.shape).toEqual([]);
    expect(n.item()).toBeCloseTo(5, 5);
    expect(a.grad.dataSync()[0]).toBeCloseTo(0.6, 5);
    expect(b.grad.dataSync()[0]).toBeCloseTo(0.8, 5);
    // below the limit the gradients stay as they are
    const m = optim.clipGradNorm([a, b], 10);
    expect(m.item()).toBeCloseTo(1, 5);
    expect(a.grad.dataSync()[0]).toBeCloseTo(0.6, 5);
    dr.dispose([a, b, n, m]);
  });

  test('schedules: warm-up and cosine', () => {
    const c = optim.cosine({ lr: 1, totalSteps: 110, warmupSteps: 10, minLr: 0.1 });
    expect(c(0)).toBeCloseTo(0.1);
    expect(c(9)).toBeCloseTo(1);
    expect(c(10)).toBeCloseTo(1);
    expect(c(60)).toBeCloseTo(0.55);
    expect(c(110)).toBeCloseTo(0.1);
    expect(optim.linearWarmup(2, 4)(1)).toBeCloseTo(1);
    expect(optim.constant(3)(100)).toBe(3);
    expect(() => optim.cosine({ lr: -1, totalSteps: 10 })).toThrow(dr.ValueError);
  });

  test('bfloat16 parameters train through a float32 master copy', () => {
    const p = dr.tensor([1, 1], undefined, { dtype: 'bfloat16' }).requiresGrad_();
    const opt = new optim.SGD([p], { lr: 0.001 });
    for (let i = 0; i < 10; ++i) {
      p.grad = dr.tensor([1, 1], undefined, { dtype: 'bfloat16' });
      opt.step();
    }
    // 1 - 10 * 0.001 = 0.99: a bf16 parameter updated directly would stay at 1 (0.001 < half an ulp)
    expect(p.dataSync()[0]).toBeCloseTo(0.99, 2);
    expect(p.dataSync()[0]).toBeLessThan(1);
    opt.dispose();
    p.dispose();
  });

  test('argument errors', () => {
    const p = dr.zeros([2]).requiresGrad_();
    expect(() => new optim.AdamW([p], { lr: -1 })).toThrow(/lr/);
    expect(() => new optim.AdamW([], { lr: 1 })).toThrow(/non-empty/);
    expect(() => new optim.SGD([dr.zeros([1])], { lr: 1 })).toThrow(/does not require grad/);
    expect(() => new optim.SGD([p], { lr: 1, nesterov: true })).toThrow(/nesterov/);
    p.dispose();
  });
});

describe('training', () => {
  test('a 200-step training run converges on CPU', () => {
    const { train } = require('../../examples/train_mlp');
    const { losses, accuracy, model, opt } = train(200, { quiet: true });
    expect(losses[0]).toBeGreaterThan(0.9);
    expect(losses[losses.length - 1]).toBeLessThan(0.35 * losses[0]);
    expect(accuracy).toBeGreaterThan(0.85);
    model.dispose();
    opt.dispose();
  });

  test('gradient accumulation over micro-batches equals one full batch', () => {
    const g = new dr.Generator(4);
    const x = dr.randn([8, 3], { generator: g, dtype: 'float64' });
    const w = dr.randn([3, 2], { generator: g, dtype: 'float64' }).requiresGrad_();
    dr.tidy(() => x.matmul(w).square().mean().backward());
    const full = Float64Array.from(w.grad!.dataSync());
    w.grad!.dispose();
    w.grad = null;
    for (const half of x.chunk(2, 0)) dr.tidy(() => half.matmul(w).square().mean().mul(0.5).backward());
    Array.from(w.grad!.dataSync()).forEach((v, i) => expect(v).toBeCloseTo(full[i], 12));
    dr.dispose([x, w]);
  });
});
