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
