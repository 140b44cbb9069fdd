// Conv1d (channels last; causal or centred; full or depthwise) against the formula in float64,
// with gradchecks through the input and the parameters.
import * as dr from '../../lib';
import { nn } from '../../lib';
import { expectClose } from '../helpers';
import { randArray } from '../reference';

const arr = (t: dr.Tensor) => Float64Array.from(t.dataSync());

function convRef(m: nn.Conv1d, x: Float64Array, B: number, S: number): Float64Array {
  const C = m.inChannels, O = m.outChannels, k = m.kernelSize;
  const W = arr(m.weight), bias = m.bias ? arr(m.bias) : null;
  const left = m.causal ? k - 1 : (k - 1) / 2;
  const cin = C / m.groups;
  const y = new Float64Array(B * S * O);
  for (let b = 0; b < B; ++b)
    for (let t = 0; t < S; ++t)
      for (let o = 0; o < O; ++o) {
        let s = bias ? bias[o] : 0;
        for (let i = 0; i < k; ++i) {
          const src = t - left + i;
          if (src < 0 || src >= S) continue;
          for (let cc = 0; cc < cin; ++cc) {
            const c = m.groups === 1 ? cc : o;
            s += W[(o * cin + cc) * k + i] * x[(b * S + src) * C + c];
          }
        }
        y[(b * S + t) * O + o] = s;
      }
  return y;
}

// module parameters swapped for gradcheck's leaves
function withParams<T>(m: nn.Conv1d, ps: dr.Tensor[], fn: () => T): T {
  const [w, b] = [m.weight, m.bias];
  m.weight = ps[0];
  if (ps[1]) m.bias = ps[1];
  try {
    return fn();
  } finally {
    m.weight = w;
    m.bias = b;
  }
}

describe('Conv1d', () => {
  const cases = [
    { B: 1, S: 1, C: 1, O: 1, k: 1, groups: 1, causal: true },
    { B: 2, S: 7, C: 3, O: 5, k: 3, groups: 1, causal: true },
    { B: 1, S: 9, C: 4, O: 4, k: 4, groups: 4, causal: true },
    { B: 2, S: 5, C: 3, O: 2, k: 5, groups: 1, causal: false },
    { B: 1, S: 3, C: 6, O: 6, k: 7, groups: 6, causal: false },
    { B: 1, S: 2, C: 2, O: 3, k: 6, groups: 1, causal: true },
  ];
  for (const c of cases) {
    test(`B${c.B} S${c.S} C${c.C} O${c.O} k${c.k} ${c.groups === 1 ? 'full' : 'depthwise'} ${c.causal ? 'causal' : 'centred'}`, () => {
      dr.tidy(() => {
        const m = new nn.Conv1d(c.C, c.O, c.k, { groups: c.groups, causal: c.causal, dtype: 'float64', generator: new dr.Generator(c.k) });
        const x = dr.tensor(randArray(c.B * c.S * c.C, c.S, -1, 1), [c.B, c.S, c.C], { dtype: 'float64' });
        expectClose(m.forward(x), convRef(m, arr(x), c.B, c.S), 'float64');
        const ps = [m.weight, m.bias!].map((p) => dr.tensor(arr(p), p.shape.slice(), { dtype: 'float64' }).requiresGrad_());
        const xg = dr.tensor(arr(x), x.shape.slice(), { dtype: 'float64' }).requiresGrad_();
        expect(dr.gradcheck((xx, w, b) => withParams(m, [w, b], () => m.forward(xx)), [xg, ...ps]).ok).toBe(true);
        m.dispose();
      });
    });
  }

  test('a causal output does not depend on later inputs; float32 matches float64', () => {
    dr.tidy(() => {
      const m = new nn.Conv1d(3, 3, 3, { groups: 3, generator: new dr.Generator(2) });
      const a = randArray(2 * 6 * 3, 1, -1, 1);
      const b = a.slice();
      for (let i = 4 * 3; i < 6 * 3; ++i) b[i] = 7;  // change positions 4 and 5 of batch row 0
      const ya = m.forward(dr.tensor(a, [2, 6, 3])).dataSync(), yb = m.forward(dr.tensor(b, [2, 6, 3])).dataSync();
      expect(Array.from(ya.slice(0, 4 * 3))).toEqual(Array.from(yb.slice(0, 4 * 3)));
      expect(Array.from(ya.slice(4 * 3, 6 * 3))).not.toEqual(Array.from(yb.slice(4 * 3, 6 * 3)));
      m.dispose();
    });
  });

  test('bad options and inputs are typed errors; PyTorch weight layout and bounds', () => {
    expect(() => new nn.Conv1d(4, 4, 0)).toThrow(/positive integer for kernelSize/);
    expect(() => new nn.Conv1d(4, 4, 3, { groups: 2 })).toThrow(/groups 1 \(full\) or 4 \(depthwise\)/);
    expect(() => new nn.Conv1d(4, 5, 3, { groups: 4 })).toThrow(/Expected outChannels 4/);
    expect(() => new nn.Conv1d(4, 4, 2, { causal: false })).toThrow(/odd kernelSize/);
    const m = new nn.Conv1d(4, 6, 3, { bias: false });
    expect(m.weight.shape).toEqual([6, 4, 3]);
    expect(m.bias).toBeNull();
    expect(Math.max(...Array.from(m.weight.dataSync(), Math.abs))).toBeLessThanOrEqual(1 / Math.sqrt(12));
    expect(() => m.forward(dr.zeros([1, 5, 3]))).toThrow(dr.ShapeError);
    m.dispose();
  });
});
