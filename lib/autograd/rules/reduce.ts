// Backward rules of the reductions (lib/ops/reduce.ts).
import { REDUCE_OPS, ReduceName } from '../../native';
import { Tensor } from '../../tensor';
import { div, eq, mul, where } from '../../ops/elementwise';
import { sum } from '../../ops/reduce';
import { contiguous, expand, reshape } from '../../ops/shape';
import { registerGradient } from '../registry';

// The gradient of a reduction, broadcast back over the reduced axes (saved: x, out).
function reduceGrad(kind: ReduceName, g: Tensor, x: Tensor, out: Tensor, axes: number[]): Tensor {
  const kept = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const back = (t: Tensor) => contiguous(expand(reshape(t, kept), x.shape.slice()));
  const count = axes.reduce((n, a) => n * x.shape[a], 1);
  if (kind === 'sum') return back(g);
  if (kind === 'mean') return back(mul(g, 1 / Math.max(count, 1)));
  // max/min: the positions that hold the extreme share the gradient equally
  const hit = eq(x, back(out));
  const hits = sum(where(hit, 1, 0), axes, { keepDims: true });
  return where(hit, div(back(g), expand(hits, x.shape.slice())), 0);
}

for (const kind of REDUCE_OPS) {
  registerGradient<{ axes: number[] }>(kind, ({ grad, saved: [x, out], attrs }) => [reduceGrad(kind, grad, x, out, attrs.axes)]);
}
