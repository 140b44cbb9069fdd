import * as dr from '../../lib';

describe('autograd engine', () => {
  test('leaf gradients accumulate across backward calls; zeroing by setting grad = null', () => {
    const x = dr.tensor([1, 2, 3]).requiresGrad_();
    dr.tidy(() => x.mul(x).sum().backward());
    expect(Array.from(x.grad!.dataSync())).toEqual([2, 4, 6]);
    dr.tidy(() => x.mul(3).sum().backward());
    expect(Array.from(x.grad!.dataSync())).toEqual([5, 7, 9]);
    x.grad!.dispose();
    x.grad = null;
    dr.tidy(() => x.sum().backward());
    expect(Array.from(x.grad!.dataSync())).toEqual([1, 1, 1]);
    x.dispose();
  });

  test('backward from a non-scalar needs a gradient of its shape', () => {
    dr.tidy(() => {
      const x = dr.tensor([[1, 2], [3, 4]]).requiresGrad_();
      const y = x.mul(2);
      expect(() => y.backward()).toThrow(/non-scalar/);
      expect(() => y.backward(dr.ones([3]))).toThrow(dr.ShapeError);
      y.backward(dr.tensor([[1, 0], [0, 1]]));
      expect(x.grad!.arraySync()).toEqual([[2, 0], [0, 2]]);
    });
  });

  test('noGrad records nothing; detach cuts the graph', () => {
    dr.tidy(() => {
      const x = dr.tensor([1, 2]).requiresGrad_();
      const y = dr.noGrad(() => x.mul(2));
      expect(y.requiresGrad).toBe(false);
      expect(dr.isGradEnabled()).toBe(true);
      const z = x.detach().mul(2);
      expect(z.requiresGrad).toBe(false);
      const w = x.mul(x.detach());
      w.sum().backward();
      expect(Array.from(x.grad!.dataSync())).toEqual([1, 2]);
    });
  });

  test('the graph is freed after backward unless retained', () => {
    dr.tidy(() => {
      const x = dr.tensor([1, 2]).requiresGrad_();
      const y = x.exp().sum();
      y.backward(undefined, { retainGraph: true });
      y.backward();
      expect(x.grad!.dataSync()[0]).toBeCloseTo(2 * Math.E, 5);
      expect(() => y.backward()).toThrow(/already freed/);
    });
  });

  test('tidy around the forward pass keeps the graph usable', () => {
    const w = dr.tensor([[1, 2], [3, 4]]).requiresGrad_();
    const loss = dr.tidy(() => {
      const h = dr.matmul(dr.tensor([[1, 1]]), w).relu();
      return h.softmax().max();
    });
    loss.backward();
    expect(w.grad!.shape).toEqual([2, 2]);
    loss.dispose();
    w.dispose();
  });

  test('memory returns to its start after a training-like loop', () => {
    const w = dr.randn([8, 4]).requiresGrad_();
    const x = dr.randn([16, 8]);
    const t = dr.tensor(new Int32Array(16).map((_, i) => i % 4));
    dr.synchronize(); // what earlier tests queued is freed first
    const start = dr.memory();
    for (let i = 0; i < 50; ++i) {
      dr.tidy(() => {
        const loss = dr.crossEntropy(x.matmul(w).layerNorm(), t);
        loss.backward();
        dr.noGrad(() => {
          const upd = w.grad!.mul(0.1);
          upd.dispose();
        });
        w.grad!.dispose();
        w.grad = null;
      });
    }
    expect(dr.memory().tensors).toBe(start.tensors);
    // buffers that queued ops still read are freed as those ops finish
    dr.synchronize();
    expect(dr.memory().bytes).toBe(start.bytes);
    dr.dispose([w, x, t]);
  });

  test('requiresGrad only on float tensors; int inputs pass through', () => {
    expect(() => dr.tensor(new Int32Array([1])).requiresGrad_()).toThrow(dr.DTypeError);
    dr.tidy(() => {
      const x = dr.tensor([1.5, 2.5]).requiresGrad_();
      const y = x.add(dr.tensor(new Int32Array([1, 2])));
      expect(y.requiresGrad).toBe(true);
      y.sum().backward();
      expect(Array.from(x.grad!.dataSync())).toEqual([1, 1]);
    });
  });

  test('bfloat16 leaves get bfloat16 gradients', () => {
    dr.tidy(() => {
      const x = dr.tensor([1, 2, 3], undefined, { dtype: 'bfloat16' }).requiresGrad_();
      x.to('float32').square().sum().backward();
      expect(x.grad!.dtype).toBe('bfloat16');
      expect(Array.from(x.grad!.dataSync())).toEqual([2, 4, 6]);
    });
  });
});
