// Every differentiable op passes a float64 gradient check (central differences).
import * as dr from '../../lib';
import { prng, randArray } from '../reference';

const f64 = (shape: number[], seed: number, lo = -2, hi = 2) =>
  dr.tensor(randArray(shape.reduce((a, b) => a * b, 1), seed, lo, hi), shape, { dtype: 'float64', device: 'cpu' }).requiresGrad_();
const ids = (vals: number[], shape?: number[]) => dr.tensor(new Int32Array(vals), shape ?? [vals.length]);

function check(name: string, fn: (...xs: dr.Tensor[]) => dr.Tensor, inputs: () => dr.Tensor[]) {
  test(name, () => {
    dr.tidy(() => {
      const r = dr.gradcheck(fn, inputs());
      expect(r.ok).toBe(true);
    });
  });
}

describe('gradcheck: element-wise', () => {
  for (const op of ['add', 'sub', 'mul', 'div', 'maximum', 'minimum'] as const) {
    check(`${op} with broadcasting [3,1,4] x [2,4]`, (a, b) => dr.binary(op, a, b), () => [f64([3, 1, 4], 1), f64([2, 4], 2, 0.5, 2)]);
    check(`${op} same shape [5]`, (a, b) => dr.binary(op, a, b), () => [f64([5], 3), f64([5], 4, 0.5, 2)]);
  }
  check('pow (positive base)', (a, b) => dr.pow(a, b), () => [f64([2, 3], 5, 0.5, 2), f64([3], 6)]);
  check('scalar ops on both sides', (a) => dr.add(dr.mul(dr.sub(2, a), 3), dr.div(1, dr.add(dr.pow(a, 2), 1))), () => [f64([4], 7)]);
  check('pow with a scalar exponent and base', (a) => dr.add(dr.pow(a.abs().add(0.5), 3), dr.pow(2, a)), () => [f64([4], 8)]);
  check('maximum/minimum with a scalar', (a) => dr.add(dr.maximum(a, 0.3), dr.minimum(a, -0.2)), () => [f64([6], 9)]);
  // (each op saves only what its rule reads: these cover every saved set of the binary ops)
  check('division by a scalar, and a scalar minus and plus', (a) => dr.add(dr.div(a, 4), dr.add(dr.sub(a, 3), dr.add(5, a))), () => [f64([5], 100)]);
  check('remainder, tensor and scalar on either side', (a, b) => dr.add(dr.add(dr.remainder(a, b), dr.remainder(a, 0.7)), dr.remainder(2.5, b)),
    () => [f64([6], 101, 0.1, 0.4), f64([6], 102, 1.3, 1.9)]);
  check('a tensor times itself, divided by itself squared', (a) => dr.div(dr.mul(a, a), dr.add(dr.mul(a, a), 1)), () => [f64([4], 103)]);
  const positive = new Set(['log', 'sqrt', 'rsqrt', 'reciprocal']);
  for (const op of ['neg', 'abs', 'exp', 'log', 'sqrt', 'rsqrt', 'sin', 'cos', 'tanh', 'sigmoid', 'relu', 'gelu', 'geluTanh', 'silu', 'square', 'reciprocal', 'erf', 'log1p', 'expm1'] as const) {
    const [lo, hi] = positive.has(op) ? [0.3, 2] : op === 'log1p' ? [-0.5, 2] : [-2, 2];
    // keep abs/relu away from their kink at 0
    check(`unary ${op}`, (x) => dr.unary(op, x), () => [op === 'abs' || op === 'relu' ? f64([7], 10, 0.1, 2).mul(dr.tensor(new Float64Array([1, -1, 1, -1, 1, -1, 1]))) : f64([2, 5], 11, lo, hi)]);
  }
  check('floor/sign have zero gradient', (x) => dr.add(dr.floor(x), dr.sign(x)).add(x), () => [f64([5], 12, 0.1, 0.9)]);
  check('where', (a, b) => dr.where(dr.tensor([[true, false, true]]), a, b), () => [f64([2, 3], 13), f64([3], 14)]);
  check('clamp', (x) => dr.clamp(x, -0.5, 0.5), () => [f64([8], 15)]);
  check('casts inside the graph (float32 round trip is not exact: float64 -> float64)', (x) => x.to('float64').mul(2), () => [f64([3], 16)]);
});

describe('gradcheck: reductions', () => {
  check('sum all', (x) => dr.sum(x), () => [f64([3, 4], 20)]);
  check('sum axes [0, 2] keepDims', (x) => dr.sum(x, [0, 2], { keepDims: true }), () => [f64([2, 3, 4], 21)]);
  check('mean axis 1', (x) => dr.mean(x, 1), () => [f64([3, 5], 22)]);
  check('max axis -1', (x) => dr.max(x, -1), () => [f64([4, 6], 23)]);
  check('min all', (x) => dr.min(x), () => [f64([7], 24)]);
});

describe('gradcheck: matmul', () => {
  check('[3,4] @ [4,5]', (a, b) => dr.matmul(a, b), () => [f64([3, 4], 30), f64([4, 5], 31)]);
  check('batched with broadcast [2,3,4] @ [4,2]', (a, b) => dr.matmul(a, b), () => [f64([2, 3, 4], 32), f64([4, 2], 33)]);
  check('transA, transB', (a, b) => dr.matmul(a, b, { transA: true, transB: true }), () => [f64([4, 3], 34), f64([2, 4], 35)]);
  check('transB with alpha', (a, b) => dr.matmul(a, b, { transB: true, alpha: 0.5 }), () => [f64([3, 4], 36), f64([5, 4], 37)]);
  check('vector @ matrix', (a, b) => dr.matmul(a, b), () => [f64([4], 38), f64([4, 3], 39)]);
  check('a transposed view', (a, b) => dr.matmul(a.T, b), () => [f64([4, 3], 40), f64([4, 2], 41)]);
});

describe('gradcheck: nn', () => {
  check('softmax last axis', (x) => dr.softmax(x), () => [f64([3, 5], 50)]);
  check('softmax axis 0', (x) => dr.softmax(x, 0), () => [f64([4, 3], 51)]);
  check('logSoftmax', (x) => dr.logSoftmax(x, 1), () => [f64([2, 4, 3], 52)]);
  check('rmsNorm with weight', (x, w) => dr.rmsNorm(x, w, 1e-5), () => [f64([3, 6], 53), f64([6], 54, 0.5, 1.5)]);
  check('rmsNorm without weight', (x) => dr.rmsNorm(x, null, 1e-5), () => [f64([2, 5], 55)]);
  check('layerNorm with weight and bias', (x, w, b) => dr.layerNorm(x, w, b, 1e-5), () => [f64([3, 6], 56), f64([6], 57, 0.5, 1.5), f64([6], 58)]);
  check('layerNorm without affine', (x) => dr.layerNorm(x, null, null, 1e-5), () => [f64([4, 3], 59)]);
  check('gelu tanh', (x) => dr.gelu(x, { approximate: 'tanh' }), () => [f64([6], 60)]);
  check('swiglu', (x) => dr.swiglu(x), () => [f64([3, 8], 61)]);
  check('crossEntropy mean with ignored rows and smoothing', (x) => dr.crossEntropy(x, ids([1, -100, 0, 3]), { labelSmoothing: 0.125 }), () => [f64([4, 5], 62)]);
  check('crossEntropy sum, leading dims', (x) => dr.crossEntropy(x, ids([1, 2, 0, 3, 4, 0], [2, 3]), { reduction: 'sum' }), () => [f64([2, 3, 5], 63)]);
  check('crossEntropy none', (x) => dr.crossEntropy(x, ids([2, 0, 1]), { reduction: 'none' }), () => [f64([3, 4], 64)]);
});

describe('gradcheck: indexing and views', () => {
  check('embedding (repeated ids accumulate)', (t) => dr.embedding(ids([1, 3, 1, 0], [2, 2]), t), () => [f64([5, 3], 70)]);
  check('gather axis 1', (x) => dr.gather(x, 1, ids([0, 2, 2, 1, 0, 0], [2, 3])), () => [f64([2, 4], 71)]);
  check('scatterAdd to x and src', (x, s) => dr.scatterAdd(x, 0, ids([1, 0, 1], [3, 1]), s), () => [f64([2, 1], 72), f64([3, 1], 73)]);
  check('reshape, transpose, permute, unsqueeze, squeeze', (x) => x.reshape([6, 2]).T.unsqueeze(0).permute([2, 0, 1]).squeeze(1).mul(dr.arange(12, undefined, 1, { dtype: 'float64' }).reshape([6, 2])), () => [f64([3, 4], 74)]);
  check('expand (sums back)', (x) => x.expand([3, 2, 4]).mul(dr.arange(24, undefined, 1, { dtype: 'float64' }).reshape([3, 2, 4])), () => [f64([2, 1], 75)]);
  check('slice and narrow', (x) => dr.add(x.slice([1, 0], [2, 3]), x.narrow(0, 0, 2).narrow(1, 1, 3)), () => [f64([3, 4], 76)]);
  check('concat, stack, split', (a, b) => {
    const c = dr.concat([a, b], 1);
    const [p, q] = c.split([1, 4], 1);
    return dr.stack([p.mul(2).expand([3, 4]), q.slice([0, 0], [3, 4])]);
  }, () => [f64([3, 2], 77), f64([3, 3], 78)]);
  check('contiguous and clone', (x) => x.T.contiguous().clone().mul(dr.arange(6, undefined, 1, { dtype: 'float64' }).reshape([3, 2])), () => [f64([2, 3], 79)]);
});

describe('gradcheck: a small network', () => {
  check('two-layer MLP with rmsNorm and cross-entropy', (x, w1, w2, g) => {
    const h = dr.rmsNorm(dr.matmul(x, w1).gelu(), g);
    return dr.crossEntropy(dr.matmul(h, w2), ids([0, 2, 1]));
  }, () => [f64([3, 4], 90), f64([4, 6], 91), f64([6, 3], 92), f64([6], 93, 0.5, 1.5)]);
  test('random projection seeds differ but both pass', () => {
    const r = prng(5);
    expect(r()).not.toBe(r());
  });
});
