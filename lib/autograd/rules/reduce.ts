// Backward rules of the reductions (lib/ops/reduce.ts).
import { REDUCE_OPS, ReduceName } from '../../native';
import { Tensor } from '../../tensor';
import { div, eq, mul, where } from '../../ops/elementwise';
import { sum } from '../../ops/reduce';
import { contiguous, expand, reshape } from '../../ops/shape';
import { registerGradient } from '../registry';

// The gradient of a reduction, broadcast back over the reduced axes (attrs: the axes and x's
// shape; saved: x and out for max and min, nothing for sum and mean).
function reduceGrad(kind: ReduceName, g: Tensor, saved: Tensor[], axes: number[], shape: readonly number[]): Tensor {
  const kept = shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const back = (t: Tensor) => contiguous(expand(reshape(t, kept), [...shape]));
  const count = axes.reduce((n, a) => n * shape[a], 1);
  if (kind === 'sum') return back(g);
  if (kind === 'mean') return back(mul(g, 1 / Math.max(count, 1)));
  // max/min: the positions that hold the extreme share the gradient equally
  const [x, out] = saved;
  const hit = eq(x, back(out));
  const hits = sum(where(hit, 1, 0), axes, { keepDims: true });
  return where(hit, div(back(g), expand(hits, [...shape])), 0);
}

for (const kind of REDUCE_OPS) {
  registerGradient<{ axes: number[]; shape: readonly number[] }>(kind, ({ grad, saved, attrs }) => [reduceGrad(kind, grad, saved, attrs.axes, attrs.shape)]);
}
