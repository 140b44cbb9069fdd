// nn.LSTM (lib/nn/rnn.ts) against the float64 plain-loop reference of one layer (test/reference.ts
// lstmRef) applied layer after layer: one and three stacked layers, with and without biases, a
// given initial state, B 1 and S 1; PyTorch's parameter names, shapes, order and init range;
// dropout between layers only in training mode; float64 gradchecks through x, every parameter and
// the initial state; bfloat16 forward; typed errors naming the option or argument; no tensor leak.
import * as dr from '../../lib';
import { nn } from '../../lib';
import { expectClose, input } from '../helpers';
import { lstmRef } from '../reference';

const f64 = 'float64' as const;
const data = (t: dr.Tensor) => Float64Array.from(t.dataSync());

// The stacked reference from the module's own parameters: out [B, S, H], h, c [L, B, H].
function stackedRef(m: nn.LSTM, x: Float64Array, B: number, S: number, h0?: Float64Array, c0?: Float64Array) {
  const P = Object.fromEntries(m.namedParameters().map(([k, p]) => [k, data(p)]));
  const H = m.hiddenSize;
  let inp = x, I = m.inputSize;
  const hs: number[] = [], cs: number[] = [];
  for (let l = 0; l < m.numLayers; ++l) {
    const part = (a: Float64Array | undefined) => (a ? a.subarray(l * B * H, (l + 1) * B * H) : null);
    const r = lstmRef(inp, B, S, I, H, P[`weight_ih_l${l}`], P[`weight_hh_l${l}`], P[`bias_ih_l${l}`] ?? null, P[`bias_hh_l${l}`] ?? null, part(h0), part(c0));
    hs.push(...r.h);
    cs.push(...r.c);
    inp = r.out;
    I = H;
  }
  return { out: inp, h: Float64Array.from(hs), c: Float64Array.from(cs) };
}

describe('LSTM', () => {
  test('parameters: PyTorch names, shapes, order, U(-1/sqrt(H), 1/sqrt(H))', () => {
    const m = new nn.LSTM(5, 7, { numLayers: 2, generator: new dr.Generator(1) });
    expect(m.namedParameters().map(([k, p]) => [k, p.shape])).toEqual([
      ['weight_ih_l0', [28, 5]], ['weight_hh_l0', [28, 7]], ['bias_ih_l0', [28]], ['bias_hh_l0', [28]],
      ['weight_ih_l1', [28, 7]], ['weight_hh_l1', [28, 7]], ['bias_ih_l1', [28]], ['bias_hh_l1', [28]],
    ]);
    const k = 1 / Math.sqrt(7);
    for (const [, p] of m.namedParameters()) {
      const d = data(p);
      expect(Math.max(...d)).toBeLessThanOrEqual(k);
      expect(Math.min(...d)).toBeGreaterThanOrEqual(-k);
      expect(Math.max(...d) - Math.min(...d)).toBeGreaterThan(k);  // spread over the range, not constant
    }
    const nb = new nn.LSTM(3, 4, { bias: false });
    expect(nb.namedParameters().map(([k2]) => k2)).toEqual(['weight_ih_l0', 'weight_hh_l0']);
    // same generator seed, same parameters
    const a = new nn.LSTM(3, 4, { generator: new dr.Generator(9) }), b = new nn.LSTM(3, 4, { generator: new dr.Generator(9) });
    expect(data(a.namedParameters()[1][1])).toEqual(data(b.namedParameters()[1][1]));
    for (const mm of [m, nb, a, b]) mm.dispose();
  });

  const CASES = [
    { B: 1, S: 1, I: 1, H: 1, L: 1, bias: true, state: false },
    { B: 3, S: 6, I: 5, H: 9, L: 1, bias: true, state: true },
    { B: 2, S: 5, I: 4, H: 37, L: 3, bias: true, state: true },
    { B: 1, S: 4, I: 3, H: 20, L: 2, bias: false, state: false },
  ];
  for (const dtype of ['float64', 'float32'] as const) {
    test.each(CASES.map((c) => [`B${c.B} S${c.S} in${c.I} H${c.H} layers ${c.L}${c.bias ? '' : ' no bias'}${c.state ? ' state' : ''}`, c] as const))(`${dtype} forward %s`, (_, c) => {
      dr.tidy(() => {
        const m = new nn.LSTM(c.I, c.H, { numLayers: c.L, bias: c.bias, dtype, generator: new dr.Generator(c.H) });
        const x = input([c.B, c.S, c.I], 3, dtype);
        const h0 = input([c.L, c.B, c.H], 4, dtype, -1, 1), c0 = input([c.L, c.B, c.H], 5, dtype);
        const r = m.forward(x.t, c.state ? { h: h0.t, c: c0.t } : undefined);
        const ref = stackedRef(m, x.data, c.B, c.S, c.state ? h0.data : undefined, c.state ? c0.data : undefined);
        expect(r.out.shape).toEqual([c.B, c.S, c.H]);
        expect(r.h.shape).toEqual([c.L, c.B, c.H]);
        expect(r.c.shape).toEqual([c.L, c.B, c.H]);
        const scale = dtype === 'float32' ? 4 : 1;
        expectClose(r.out, ref.out, dtype, scale);
        expectClose(r.h, ref.h, dtype, scale);
        expectClose(r.c, ref.c, dtype, scale);
        m.dispose();
      });
    });
  }

  test('bfloat16 forward', () => {
    dr.tidy(() => {
      const m = new nn.LSTM(6, 33, { numLayers: 2, dtype: 'bfloat16', generator: new dr.Generator(2) });
      const x = input([2, 5, 6], 7, 'bfloat16');
      const r = m.forward(x.t);
      expect(r.out.dtype).toBe('bfloat16');
      const ref = stackedRef(m, x.data, 2, 5);
      expectClose(r.out, ref.out, 'bfloat16');
      expectClose(r.c, ref.c, 'bfloat16');
      m.dispose();
    });
  });

  test('float64 gradcheck through x, every parameter and the initial state (two layers)', () => {
    dr.tidy(() => {
      const m = new nn.LSTM(3, 4, { numLayers: 2, dtype: f64, generator: new dr.Generator(3) });
      const names = m.namedParameters().map(([k]) => k);
      const ps = m.namedParameters().map(([, p]) => p.detach().clone().requiresGrad_());
      const x = input([2, 3, 3], 8, f64).t.requiresGrad_();
      const h = input([2, 2, 4], 9, f64, -1, 1).t.requiresGrad_(), c = input([2, 2, 4], 10, f64).t.requiresGrad_();
      const self = m as unknown as Record<string, dr.Tensor>;
      const fn = (xx: dr.Tensor, hh: dr.Tensor, cc: dr.Tensor, ...w: dr.Tensor[]) => {
        const old = names.map((k) => self[k]);
        names.forEach((k, i) => (self[k] = w[i]));
        try {
          const r = m.forward(xx, { h: hh, c: cc });
          return dr.concat([r.out.reshape([-1]), r.h.reshape([-1]), r.c.reshape([-1])]);
        } finally {
          names.forEach((k, i) => (self[k] = old[i]));
        }
      };
      expect(dr.gradcheck(fn, [x, h, c, ...ps]).ok).toBe(true);
      m.dispose();
    });
  });

  test('dropout between layers: active in training only, and never after the last layer', () => {
    dr.tidy(() => {
      const m = new nn.LSTM(4, 6, { numLayers: 2, dropout: 0.5, generator: new dr.Generator(4) });
      const x = input([2, 5, 4], 11).t;
      const ref = stackedRef(m, data(x), 2, 5);
      m.eval();
      expectClose(m.forward(x).out, ref.out);
      m.train();
      const a = data(m.forward(x).out);
      expect(a.some((v, i) => Math.abs(v - ref.out[i]) > 1e-3)).toBe(true);
      // the first layer's state is never dropped
      expectClose(m.forward(x).h.narrow(0, 0, 1).reshape([-1]), ref.h.subarray(0, 12));
      // one layer: the option has nothing to drop
      const one = new nn.LSTM(4, 6, { dropout: 0.5, generator: new dr.Generator(4) });
      expectClose(one.forward(x).out, stackedRef(one, data(x), 2, 5).out);
      m.dispose();
      one.dispose();
    });
  });

  test('typed errors naming the option or argument', () => {
    expect(() => new nn.LSTM(0, 4)).toThrow(/inputSize/);
    expect(() => new nn.LSTM(3, 2.5)).toThrow(dr.ValueError);
    expect(() => new nn.LSTM(3, 4, { numLayers: 0 })).toThrow(/numLayers/);
    expect(() => new nn.LSTM(3, 4, { dropout: 1 })).toThrow(/dropout/);
    expect(() => new nn.LSTM(3, 4, { bias: 1 as unknown as boolean })).toThrow(/bias/);
    expect(() => new nn.LSTM(3, 4, { numLayer: 2 } as unknown as nn.LSTMOptions)).toThrow(/unknown option 'numLayer'/);
    expect(() => new nn.LSTM(3, 4, { dtype: 'int32' })).toThrow(dr.DTypeError);
    const m = new nn.LSTM(3, 4, { numLayers: 2 });
    dr.tidy(() => {
      expect(() => m.forward(dr.zeros([2, 3]))).toThrow(dr.ShapeError);
      expect(() => m.forward(dr.zeros([2, 5, 4]))).toThrow(/\[batch, seq, 3\]/);
      expect(() => m.forward(dr.zeros([2, 5, 3], { dtype: 'float64' }))).toThrow(dr.DTypeError);
      const x = dr.zeros([2, 5, 3]);
      expect(() => m.forward(x, { h: dr.zeros([1, 2, 4]), c: dr.zeros([2, 2, 4]) })).toThrow(/state\.h/);
      expect(() => m.forward(x, { h: dr.zeros([2, 2, 4]), c: dr.zeros([2, 2, 4], { dtype: 'float64' }) })).toThrow(/state\.c/);
      expect(() => m.forward(x, { h: dr.zeros([2, 2, 4]) } as unknown as nn.LSTMState)).toThrow(/state\.c/);
    });
    m.dispose();
  });

  test('no tensor leaks: forward, backward, dispose', () => {
    dr.synchronize();
    const start = dr.memory().tensors;
    const m = new nn.LSTM(4, 5, { numLayers: 2, dropout: 0.2, generator: new dr.Generator(6) });
    const x = dr.randn([3, 4, 4], { generator: new dr.Generator(7) }).requiresGrad_();
    const s = { h: dr.zeros([2, 3, 5]), c: dr.zeros([2, 3, 5]) };
    const afterSetup = dr.memory().tensors;
    for (let step = 0; step < 2; ++step) {
      const loss = dr.tidy(() => {
        const r = m.forward(x, s);
        return dr.add(dr.add(dr.sum(r.out), dr.sum(r.h)), dr.sum(r.c));
      });
      dr.backward(loss);
      loss.dispose();
      m.zeroGrad();
      x.grad?.dispose();
      x.grad = null;
      dr.tidy(() => {
        m.forward(x);
      });
      dr.synchronize();
      expect(dr.memory().tensors).toBe(afterSetup);
    }
    m.dispose();
    x.dispose();
    s.h.dispose();
    s.c.dispose();
    dr.synchronize();
    expect(dr.memory().tensors).toBe(start);
  });
});
