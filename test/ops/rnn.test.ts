// lstm (one fused LSTM layer, lib/ops/rnn.ts) against a float64 plain-loop reference written from
// the LSTM equations (test/reference.ts lstmRef), on awkward shapes (B 1, S 1, S 0, odd sizes,
// H wider than a vector and than the matmul's tiles), with and without biases and initial
// states; float64 gradchecks through x, both weights, both biases, h0 and c0, from each output;
// float32 gradients against float64 ones; bfloat16 forward; typed errors naming the argument;
// no tensor leak.
import * as dr from '../../lib';
import { expectClose, input } from '../helpers';
import { lstmRef } from '../reference';

interface Case { B: number; S: number; I: number; H: number; bias: boolean; state: boolean }

const CASES: Case[] = [
  { B: 1, S: 1, I: 1, H: 1, bias: true, state: false },
  { B: 3, S: 7, I: 5, H: 9, bias: true, state: true },
  { B: 2, S: 5, I: 3, H: 37, bias: false, state: true },
  { B: 1, S: 4, I: 70, H: 70, bias: true, state: false },
  { B: 5, S: 3, I: 4, H: 130, bias: true, state: true },
  { B: 2, S: 0, I: 3, H: 6, bias: true, state: true },
];

function make(c: Case, dtype: dr.DType, seed: number) {
  const G = 4 * c.H, k = 1 / Math.sqrt(c.H);
  const x = input([c.B, c.S, c.I], seed, dtype, -1.5, 1.5);
  const wIh = input([G, c.I], seed + 1, dtype, -k, k);
  const wHh = input([G, c.H], seed + 2, dtype, -k, k);
  const bIh = c.bias ? input([G], seed + 3, dtype, -k, k) : null;
  const bHh = c.bias ? input([G], seed + 4, dtype, -k, k) : null;
  const h0 = c.state ? input([c.B, c.H], seed + 5, dtype, -1, 1) : null;
  const c0 = c.state ? input([c.B, c.H], seed + 6, dtype, -1.5, 1.5) : null;
  const ref = lstmRef(x.data, c.B, c.S, c.I, c.H, wIh.data, wHh.data, bIh?.data ?? null, bHh?.data ?? null, h0?.data ?? null, c0?.data ?? null);
  const weights = { wIh: wIh.t, wHh: wHh.t, bIh: bIh?.t ?? null, bHh: bHh?.t ?? null };
  const all = [x.t, wIh.t, wHh.t, bIh?.t, bHh?.t, h0?.t, c0?.t].filter((t): t is dr.Tensor => !!t);
  return { x: x.t, weights, h0: h0?.t ?? null, c0: c0?.t ?? null, ref, dispose: () => all.forEach((t) => t.dispose()) };
}

const tag = (c: Case) => `B${c.B} S${c.S} I${c.I} H${c.H}${c.bias ? '' : ' no bias'}${c.state ? ' h0/c0' : ''}`;

describe('lstm forward', () => {
  for (const dtype of ['float64', 'float32'] as const) {
    test.each(CASES.map((c) => [tag(c), c] as const))(`${dtype} %s`, (_, c) => {
      dr.tidy(() => {
        const m = make(c, dtype, 11 + c.H);
        const r = dr.lstm(m.x, m.weights, { h0: m.h0, c0: m.c0 });
        expect(r.out.shape).toEqual([c.B, c.S, c.H]);
        expect(r.h.shape).toEqual([c.B, c.H]);
        expect(r.c.shape).toEqual([c.B, c.H]);
        expect(r.out.dtype).toBe(dtype);
        // the recurrence compounds rounding over the steps
        const scale = dtype === 'float32' ? 4 : 1;
        expectClose(r.out, m.ref.out, dtype, scale);
        expectClose(r.h, m.ref.h, dtype, scale);
        expectClose(r.c, m.ref.c, dtype, scale);
        m.dispose();
      });
    });
  }

  test('bfloat16 storage: float compute, outputs rounded once', () => {
    dr.tidy(() => {
      for (const c of [CASES[1], CASES[2], CASES[4]]) {
        const m = make(c, 'bfloat16', 40 + c.H);
        const r = dr.lstm(m.x, m.weights, { h0: m.h0, c0: m.c0 });
        expect(r.out.dtype).toBe('bfloat16');
        expectClose(r.out, m.ref.out, 'bfloat16');
        expectClose(r.h, m.ref.h, 'bfloat16');
        expectClose(r.c, m.ref.c, 'bfloat16');
        m.dispose();
      }
    });
  });

  test('a strided x and state (views) give the same result', () => {
    dr.tidy(() => {
      const c = CASES[1];
      const m = make(c, 'float64', 77);
      const xt = dr.transpose(dr.contiguous(dr.transpose(m.x, 0, 1)), 0, 1);
      const h0t = dr.transpose(dr.contiguous(dr.transpose(m.h0!, 0, 1)), 0, 1);
      expect(xt.isContiguous).toBe(false);
      const r = dr.lstm(xt, m.weights, { h0: h0t, c0: m.c0 });
      expectClose(r.out, m.ref.out, 'float64');
      expectClose(r.c, m.ref.c, 'float64');
    });
  });
});

describe('lstm backward', () => {
  const flat = (r: dr.LstmResult) => dr.concat([dr.reshape(r.out, [-1]), dr.reshape(r.h, [-1]), dr.reshape(r.c, [-1])]);

  test.each([
    { B: 2, S: 3, I: 3, H: 4, bias: true, state: true },
    { B: 1, S: 1, I: 2, H: 3, bias: true, state: true },
    { B: 3, S: 4, I: 2, H: 5, bias: false, state: true },
  ].map((c) => [tag(c), c] as const))('float64 gradcheck through x, weights, biases, h0, c0 (%s)', (_, c) => {
    dr.tidy(() => {
      const m = make(c, 'float64', 5 + c.H);
      const w = m.weights;
      const ins = [m.x, w.wIh, w.wHh, ...(c.bias ? [w.bIh!, w.bHh!] : []), m.h0!, m.c0!].map((t) => t.requiresGrad_());
      const fn = (x: dr.Tensor, wIh: dr.Tensor, wHh: dr.Tensor, ...rest: dr.Tensor[]) => {
        const [bIh, bHh, h0, c0] = c.bias ? rest : [null, null, ...rest];
        return flat(dr.lstm(x, { wIh, wHh, bIh, bHh }, { h0, c0 }));
      };
      expect(dr.gradcheck(fn, ins).ok).toBe(true);
      // each output alone (the others' gradients absent) and without initial states
      expect(dr.gradcheck((x, wHh) => dr.lstm(x, { wIh: w.wIh, wHh }).h, [m.x, w.wHh]).ok).toBe(true);
      expect(dr.gradcheck((x, c0) => dr.lstm(x, w, { c0 }).c, [m.x, m.c0!]).ok).toBe(true);
      expect(dr.gradcheck((x, h0) => dr.lstm(x, w, { h0 }).out, [m.x, m.h0!]).ok).toBe(true);
    });
  });

  test('float32 gradients match the float64 ones (H above the vector width)', () => {
    dr.tidy(() => {
      const c = { B: 3, S: 6, I: 5, H: 37, bias: true, state: true };
      const grads = (['float64', 'float32'] as const).map((dtype) => {
        const m = make(c, dtype, 9);
        const w = m.weights;
        const ins = [m.x, w.wIh, w.wHh, w.bIh!, w.bHh!, m.h0!, m.c0!].map((t) => t.requiresGrad_());
        const r = dr.lstm(m.x, w, { h0: m.h0, c0: m.c0 });
        const v = input([c.B, c.S, c.H], 3, dtype).t;
        const loss = dr.add(dr.add(dr.sum(dr.mul(r.out, v)), dr.sum(r.h)), dr.sum(dr.mul(r.c, 0.5)));
        dr.backward(loss);
        return ins.map((t) => Float64Array.from(t.grad!.dataSync()));
      });
      grads[0].forEach((g64, i) => expectClose(grads[1][i], g64, 'float32', 10));
    });
  });

  test('bfloat16 gradients are close to the float64 ones', () => {
    dr.tidy(() => {
      const c = { B: 2, S: 4, I: 3, H: 20, bias: true, state: true };
      const grads = (['float64', 'bfloat16'] as const).map((dtype) => {
        const m = make(c, dtype, 19);
        const w = m.weights;
        const ins = [m.x, w.wIh, w.wHh, m.h0!, m.c0!].map((t) => t.requiresGrad_());
        const r = dr.lstm(m.x, w, { h0: m.h0, c0: m.c0 });
        dr.backward(dr.add(dr.sum(r.out), dr.sum(r.c)));
        return ins.map((t) => Float64Array.from(t.grad!.dataSync()));
      });
      // bf16 inputs differ from the float64 ones by their rounding: a loose budget
      grads[0].forEach((g64, i) => expectClose(grads[1][i], g64, 'bfloat16', 3));
    });
  });
});

describe('lstm errors', () => {
  test('bad shapes and dtypes are typed errors naming the argument', () => {
    dr.tidy(() => {
      const x = dr.zeros([2, 3, 4]);
      const w = { wIh: dr.zeros([8, 4]), wHh: dr.zeros([8, 2]) };
      expect(() => dr.lstm(dr.zeros([3, 4]), w)).toThrow(dr.ShapeError);
      expect(() => dr.lstm(dr.zeros([2, 3, 4], { dtype: 'int32' }), w)).toThrow(dr.DTypeError);
      expect(() => dr.lstm(x, { wIh: w.wIh, wHh: dr.zeros([6, 2]) })).toThrow(/weights\.wHh/);
      expect(() => dr.lstm(x, { wIh: w.wIh, wHh: dr.zeros([6, 2]) })).toThrow(dr.ShapeError);
      expect(() => dr.lstm(x, { wIh: dr.zeros([8, 5]), wHh: w.wHh })).toThrow(/weights\.wIh/);
      expect(() => dr.lstm(x, { wIh: dr.zeros([8, 4], { dtype: 'float64' }), wHh: w.wHh })).toThrow(dr.DTypeError);
      expect(() => dr.lstm(x, { ...w, bIh: dr.zeros([7]) })).toThrow(/weights\.bIh/);
      expect(() => dr.lstm(x, w, { h0: dr.zeros([2, 3]) })).toThrow(/h0/);
      expect(() => dr.lstm(x, w, { c0: dr.zeros([2, 2], { dtype: 'float64' }) })).toThrow(dr.DTypeError);
      expect(() => dr.lstm(x, w, { c0: dr.zeros([2, 2], { dtype: 'float64' }) })).toThrow(/c0/);
      expect(() => dr.lstm(x, null as unknown as dr.LstmWeights)).toThrow(dr.ValueError);
      expect(() => dr.lstm(x, { wIh: w.wIh } as unknown as dr.LstmWeights)).toThrow(/weights\.wHh/);
    });
  });
});

describe('lstm memory', () => {
  test('forward and backward leave no tensor behind', () => {
    const c = CASES[1];
    const m = make(c, 'float32', 3);
    const w = m.weights;
    for (const t of [m.x, w.wIh, w.wHh, w.bIh!, w.bHh!, m.h0!, m.c0!]) t.requiresGrad_();
    dr.synchronize();
    const start = dr.memory().tensors;
    for (let step = 0; step < 2; ++step) {
      const loss = dr.tidy(() => {
        const r = dr.lstm(m.x, w, { h0: m.h0, c0: m.c0 });
        return dr.add(dr.sum(r.out), dr.sum(r.h));
      });
      dr.backward(loss);
      loss.dispose();
      for (const t of [m.x, w.wIh, w.wHh, w.bIh!, w.bHh!, m.h0!, m.c0!]) {
        expect(t.grad).not.toBeNull();
        t.grad!.dispose();
        t.grad = null;
      }
      // a forward without backward frees what it saved at the end of its scope
      dr.tidy(() => {
        dr.lstm(m.x, w, { h0: m.h0, c0: m.c0 });
      });
      dr.synchronize();
      expect(dr.memory().tensors).toBe(start);
    }
    m.dispose();
  });
});
