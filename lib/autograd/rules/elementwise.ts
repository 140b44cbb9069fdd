// Backward rules of the element-wise ops (lib/ops/elementwise.ts).
import { BINARY_OPS, BinaryName, UNARY_OPS } from '../../native';
import { Tensor } from '../../tensor';
import { div, eq, floorDiv, gt, log, lt, mul, neg, pow, sub, where } from '../../ops/elementwise';
import { unaryBackward } from '../../ops/grad_kernels';
import { sumToShape } from '../grad_utils';
import { registerGradient } from '../registry';

// unary ops: the fused dy * f'(x) kernel (saved: x)
for (const name of UNARY_OPS) {
  if (name === 'logicalNot') continue;
  registerGradient(name, ({ grad, saved: [x] }) => [unaryBackward(name, x, grad)]);
}

// a op b with broadcasting: d/da and d/db times g, summed back to each shape (attrs: the shapes).
// The op saves only what its rule reads (binarySaves in lib/ops/elementwise.ts): mul, maximum,
// minimum, remainder [a, b]; div [b, out]; pow [a, b, out]; add and sub nothing.
function binaryGrads(name: BinaryName, g: Tensor, saved: Tensor[], aShape: readonly number[], bShape: readonly number[]): Array<Tensor | null> {
  let ga: Tensor;
  let gb: Tensor;
  switch (name) {
    case 'add':
      ga = g;
      gb = g;
      break;
    case 'sub':
      ga = g;
      gb = neg(g);
      break;
    case 'mul': {
      const [a, b] = saved;
      ga = mul(g, b);
      gb = mul(g, a);
      break;
    }
    case 'div': {
      const [b, out] = saved;
      ga = div(g, b);
      gb = neg(div(mul(g, out), b));
      break;
    }
    case 'pow': {
      // d/da a^b = b a^(b-1); d/db a^b = a^b log a (0 where a = 0 and the term would be 0 * -inf)
      const [a, b, out] = saved;
      ga = mul(g, mul(b, pow(a, sub(b, 1))));
      gb = where(eq(a, 0), 0, mul(g, mul(out, log(a))));
      break;
    }
    case 'maximum':
    case 'minimum': {
      // the larger (smaller) side takes the gradient; ties split it evenly, as in PyTorch
      const [a, b] = saved;
      const win = name === 'maximum' ? gt(a, b) : lt(a, b);
      const tie = eq(a, b);
      const half = mul(g, 0.5);
      ga = where(win, g, where(tie, half, 0));
      gb = where(win, 0, where(tie, half, g));
      break;
    }
    case 'remainder': {
      // a - b floor(a / b): d/da = 1, d/db = -floor(a / b) (floorDiv itself is flat: no gradient)
      const [a, b] = saved;
      ga = g.alias();
      gb = neg(mul(g, floorDiv(a, b)));
      break;
    }
    default:
      return [null, null];
  }
  return [sumToShape(ga, aShape), sumToShape(gb, bShape)];
}

// a op s or s op a (attrs: the scalar and its side). Saved (scalarSaves in
// lib/ops/elementwise.ts): s / x [x, out]; x ^ s [x]; s ^ x [out]; maximum, minimum [x];
// s % x [x]; the others nothing.
function scalarGrad(name: BinaryName, g: Tensor, saved: Tensor[], s: number, scalarFirst: boolean): Tensor | null {
  switch (name) {
    case 'add':
      return g.alias();
    case 'sub':
      return scalarFirst ? neg(g) : g.alias();
    case 'mul':
      return mul(g, s);
    case 'div':
      return scalarFirst ? neg(div(mul(g, saved[1]), saved[0])) : mul(g, 1 / s);
    case 'pow':
      // x^s: s x^(s-1); s^x: s^x log s
      return scalarFirst ? mul(g, mul(saved[0], Math.log(s))) : mul(g, mul(pow(saved[0], s - 1), s));
    case 'maximum':
    case 'minimum': {
      const x = saved[0];
      const win = name === 'maximum' ? gt(x, s) : lt(x, s);
      return where(win, g, where(eq(x, s), mul(g, 0.5), 0));
    }
    case 'remainder':
      return scalarFirst ? neg(mul(g, floorDiv(s, saved[0]))) : g.alias();
    default:
      return null;
  }
}

for (const name of BINARY_OPS) {
  registerGradient<{ aShape: readonly number[]; bShape: readonly number[] }>(name, ({ grad, saved, attrs }) =>
    binaryGrads(name, grad, saved, attrs.aShape, attrs.bShape));
  registerGradient<{ scalar: number; scalarFirst: boolean }>(`${name}Scalar`, ({ grad, saved, attrs }) => [
    scalarGrad(name, grad, saved, attrs.scalar, attrs.scalarFirst),
  ]);
}

// cond ? a : b (saved: cond, a, b)
registerGradient('where', ({ grad, saved: [c, a, b] }) => [
  null,
  sumToShape(where(c, grad, 0), a.shape),
  sumToShape(where(c, 0, grad), b.shape),
]);
