import * as dr from '../../lib';
import { nn } from '../../lib';

class Block extends nn.Module {
  norm = new nn.RMSNorm(4);
  mlp: nn.MLP;
  layers: nn.Linear[];
  constructor(g: dr.Generator) {
    super();
    this.mlp = new nn.MLP(4, 8, 'swiglu', { generator: g });
    this.layers = [new nn.Linear(4, 4, { generator: g }), new nn.Linear(4, 2, { generator: g, bias: false })];
  }
  forward(x: dr.Tensor): dr.Tensor {
    return dr.tidy(() => this.layers[1].forward(this.layers[0].forward(this.mlp.forward(this.norm.forward(x)))));
  }
}

describe('Module', () => {
  test('named parameters follow the field path', () => {
    const m = new Block(new dr.Generator(0));
    expect(m.namedParameters().map(([k, p]) => `${k}:${p.shape.join('x')}`)).toEqual([
      'norm.weight:4', 'mlp.up.weight:16x4', 'mlp.up.bias:16', 'mlp.down.weight:4x8', 'mlp.down.bias:4',
      'layers.0.weight:4x4', 'layers.0.bias:4', 'layers.1.weight:2x4',
    ]);
    expect(m.numParameters()).toBe(4 + 64 + 16 + 32 + 4 + 16 + 4 + 8);
    expect(m.parameters().every((p) => p.requiresGrad)).toBe(true);
    m.dispose();
  });

  test('initialisation is seedable and follows PyTorch bounds', () => {
    const a = new nn.Linear(16, 3, { generator: new dr.Generator(5) });
    const b = new nn.Linear(16, 3, { generator: new dr.Generator(5) });
    expect(a.weight.dataSync()).toEqual(b.weight.dataSync());
    const w = a.weight.dataSync();
    expect(Math.max(...Array.from(w, Math.abs))).toBeLessThanOrEqual(0.25);
    const n = new nn.LayerNorm(3);
    expect(Array.from(n.weight.dataSync())).toEqual([1, 1, 1]);
    expect(Array.from(n.bias.dataSync())).toEqual([0, 0, 0]);
    [a, b, n].forEach((m) => m.dispose());
  });

  test('Linear computes x W^T + b', () => {
    dr.tidy(() => {
      const l = new nn.Linear(2, 3);
      l.loadStateDict({ weight: dr.tensor([[1, 0], [0, 1], [1, 1]]), bias: dr.tensor([0.5, 0, -1]) });
      expect(l.forward(dr.tensor([[2, 3]])).arraySync()).toEqual([[2.5, 3, 4]]);
      expect(() => l.forward(dr.zeros([1, 3]))).toThrow(/Expected input with last dimension 2/);
      l.dispose();
    });
  });

  test('stateDict round trip; strict loading lists missing, unexpected and mis-shaped keys', () => {
    const a = new Block(new dr.Generator(1));
    const b = new Block(new dr.Generator(2));
    const sd = a.stateDict();
    b.loadStateDict(sd);
    for (const [k, p] of b.namedParameters()) expect(p.dataSync()).toEqual(sd[k].dataSync());
    const partial = { ...sd };
    delete partial['norm.weight'];
    expect(() => b.loadStateDict(partial)).toThrow(/missing keys: norm.weight/);
    expect(() => b.loadStateDict({ ...sd, extra: dr.zeros([1]) })).toThrow(/unexpected keys: extra/);
    expect(() => b.loadStateDict({ ...sd, 'norm.weight': dr.zeros([5]) })).toThrow(/norm.weight: expected \[4\], got \[5\]/);
    const r = b.loadStateDict(partial, { strict: false });
    expect(r.missing).toEqual(['norm.weight']);
    dr.dispose(Object.values(sd));
    a.dispose();
    b.dispose();
  });

  test('train/eval toggles Dropout; Dropout scales kept values', () => {
    dr.tidy(() => {
      const d = new nn.Dropout(0.5, new dr.Generator(3));
      const s = new nn.Sequential(new nn.Linear(4, 4), d);
      s.eval();
      expect(d.training).toBe(false);
      const x = dr.ones([1000]);
      expect(Array.from(d.forward(x).dataSync()).every((v) => v === 1)).toBe(true);
      s.train();
      const y = Array.from(d.forward(x).dataSync());
      expect(y.every((v) => v === 0 || v === 2)).toBe(true);
      const kept = y.filter((v) => v === 2).length;
      expect(kept).toBeGreaterThan(400);
      expect(kept).toBeLessThan(600);
      s.dispose();
    });
  });

  test('to(dtype) replaces parameters; zeroGrad clears gradients', () => {
    const l = new nn.Linear(3, 2);
    l.to('float64');
    expect(l.weight.dtype).toBe('float64');
    expect(l.weight.requiresGrad).toBe(true);
    dr.tidy(() => l.forward(dr.ones([1, 3], { dtype: 'float64' })).sum().backward());
    expect(l.weight.grad).not.toBeNull();
    l.zeroGrad();
    expect(l.weight.grad).toBeNull();
    l.dispose();
  });

  test('Embedding, RMSNorm and MLP(gelu) forward shapes', () => {
    dr.tidy(() => {
      const e = new nn.Embedding(10, 6);
      const out = e.forward(dr.tensor(new Int32Array([1, 2, 3, 9]), [2, 2]));
      expect(out.shape).toEqual([2, 2, 6]);
      const m = new nn.MLP(6, 12);
      expect(m.forward(out).shape).toEqual([2, 2, 6]);
      e.dispose();
      m.dispose();
    });
  });
});

describe('Module: what a new user hit', () => {
  test('module.to() after the optimizer was made: parameters keep their identity, training goes on', () => {
    const g = new dr.Generator(3);
    const model = new nn.Sequential(new nn.Linear(4, 8, { generator: g }), new nn.Linear(8, 2, { generator: g }));
    const before = model.parameters();
    const opt = new dr.optim.AdamW(before, { lr: 0.05, weightDecay: 0 });
    const x = dr.randn([32, 4], { generator: g, dtype: 'float64' });
    const xs = x.dataSync();
    const t = dr.tensor(new Int32Array(32).map((_, i) => (xs[4 * i] + xs[4 * i + 1] > 0 ? 1 : 0)));
    model.to('float64');
    const after = model.parameters();
    after.forEach((p, i) => {
      expect(p).toBe(before[i]);
      expect(p.dtype).toBe('float64');
    });
    const losses: number[] = [];
    for (let i = 0; i < 30; ++i) {
      const loss = dr.tidy(() => {
        opt.zeroGrad();
        const l = dr.crossEntropy(model.forward(x), t);
        l.backward();
        opt.step();
        return l;
      });
      losses.push(loss.item());
      loss.dispose();
    }
    expect(losses[29]).toBeLessThan(losses[0] * 0.5);
    // cast to bfloat16: updates go through float32 master copies, and still move the loss
    model.to('bfloat16');
    expect(model.parameters()[0].dtype).toBe('bfloat16');
    const xb = x.to('bfloat16');
    const lossAt = () => dr.tidy(() => dr.crossEntropy(model.forward(xb), t).item());
    const l0 = lossAt();
    for (let i = 0; i < 20; ++i) {
      dr.tidy(() => {
        opt.zeroGrad();
        dr.crossEntropy(model.forward(xb), t).backward();
        opt.step();
      });
    }
    expect(lossAt()).toBeLessThan(l0);
    dr.dispose([x, t, xb]);
    opt.dispose();
    model.dispose();
  });

  test('ModuleList, ModuleDict and ParameterList register what they hold', () => {
    class Net extends nn.Module {
      blocks = new nn.ModuleList([new nn.Linear(2, 2, { bias: false }), new nn.Linear(2, 3, { bias: false })]);
      heads = new nn.ModuleDict({ a: new nn.Linear(3, 1, { bias: false }) });
      scales = new nn.ParameterList([dr.ones([3]), dr.ones([1])]);
      forward(x: dr.Tensor): dr.Tensor {
        return x;
      }
    }
    const n = new Net();
    expect(n.namedParameters().map(([k]) => k)).toEqual(['blocks.0.weight', 'blocks.1.weight', 'heads.a.weight', 'scales.0', 'scales.1']);
    expect(n.parameters().every((p) => p.requiresGrad)).toBe(true);
    expect(n.blocks.length).toBe(2);
    expect([...n.blocks].length).toBe(2);
    expect(n.heads.get('a')).toBeInstanceOf(nn.Linear);
    expect(() => n.heads.get('b')).toThrow(/no module named "b" \(have a\)/);
    n.dispose();
  });

  test('parameters a Module cannot see are an error naming the field, never silence', () => {
    class ArrayOfParams extends nn.Module {
      ws = [dr.ones([2]).requiresGrad_(), dr.ones([2]).requiresGrad_(), dr.ones([2]).requiresGrad_()];
      forward(): void {}
    }
    class ObjectOfModules extends nn.Module {
      layers = { a: new nn.Linear(2, 2), b: new nn.Linear(2, 2) };
      forward(): void {}
    }
    class MapOfModules extends nn.Module {
      layers = new Map([['a', new nn.Linear(2, 2)]]);
      forward(): void {}
    }
    class LooseLeaf extends nn.Module {
      w = dr.ones([2]).requiresGrad_();
      forward(): void {}
    }
    expect(() => new ArrayOfParams().parameters()).toThrow(/ArrayOfParams: field 'ws' is an array holding parameters, .* use nn.ParameterList/);
    expect(() => new ObjectOfModules().parameters()).toThrow(/field 'layers' is a plain object holding modules, .* use nn.ModuleDict/);
    expect(() => new MapOfModules().parameters()).toThrow(/field 'layers' is a Map holding modules/);
    // a leaf tensor that requires grad in a field is taken as a parameter
    const l = new LooseLeaf();
    expect(l.namedParameters().map(([k]) => k)).toEqual(['w']);
    l.dispose();
  });
});

describe('buffers', () => {
  class Stat extends nn.Module {
    lin = new nn.Linear(2, 2, { generator: new dr.Generator(1) });
    running: dr.Tensor;
    constructor() {
      super();
      this.running = this.buffer(() => dr.tensor([1, 2, 3], [3]));
    }
    forward(x: dr.Tensor): dr.Tensor {
      return this.lin.forward(x);
    }
  }

  test('saved and loaded with the parameters, not trained, cast with float32/float64 but kept float32 under bfloat16, freed with the module', () => {
    const m = new Stat();
    expect(m.parameters().length).toBe(2);
    expect(m.namedBuffers().map(([n]) => n)).toEqual(['running']);
    const sd = m.stateDict();
    expect(Object.keys(sd).sort()).toEqual(['lin.bias', 'lin.weight', 'running']);
    Object.values(sd).forEach((t) => t.dispose());
    const other = new Stat();
    dr.noGrad(() => dr.tidy(() => other.running.copy_(dr.tensor([7, 8, 9], [3]))));
    const sd2 = other.stateDict();
    m.loadStateDict(sd2);
    Object.values(sd2).forEach((t) => t.dispose());
    expect(Array.from(m.running.dataSync())).toEqual([7, 8, 9]);
    expect(() => m.loadStateDict({ 'lin.weight': m.lin.weight, 'lin.bias': m.lin.bias! })).toThrow(/missing keys: running/);
    m.to('float64');
    expect(m.running.dtype).toBe('float64');
    m.to('bfloat16');
    expect(m.running.dtype).toBe('float32');
    const t = m.running;
    m.dispose();
    expect(t.isDisposed).toBe(true);
    other.dispose();
  });

  test("a TokenChoiceMoE's balancing bias survives a checkpoint", async () => {
    const fs = await import('fs'), os = await import('os'), path = await import('path');
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'dr-buf-')), 'moe.safetensors');
    const m = new nn.TokenChoiceMoE(4, 3, { experts: 3, biasBalancing: 0.1, generator: new dr.Generator(2) });
    dr.tidy(() => m.forward(dr.randn([2, 5, 4])));
    m.updateBias();
    const bias = Array.from(m.routerBias!.dataSync());
    expect(bias.some((b) => b !== 0)).toBe(true);
    await dr.saveCheckpoint(file, { model: m });
    const back = new nn.TokenChoiceMoE(4, 3, { experts: 3, biasBalancing: 0.1, generator: new dr.Generator(9) });
    await dr.loadCheckpoint(file, { model: back });
    expect(Array.from(back.routerBias!.dataSync())).toEqual(bias);
    m.dispose();
    back.dispose();
  });
});
