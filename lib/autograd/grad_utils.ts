// Small helpers for backward rules.
import { Tensor } from '../tensor';
import { reshape } from '../ops/shape';
import { sum } from '../ops/reduce';

/**
 * Sums a broadcast gradient back to `shape` (numpy broadcasting in reverse): leading extra
 * dims and dims where shape has 1 are summed away. Returns g itself (an alias) when no
 * reduction is needed.
 */
export function sumToShape(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g.alias();
  const lead = g.shape.length - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.shape.length; ++i) {
    if (i < lead) axes.push(i);
    else if (shape[i - lead] === 1 && g.shape[i] !== 1) axes.push(i);
  }
  const s = axes.length ? sum(g, axes, { keepDims: true }) : g.alias();
  const r = reshape(s, shape.slice());
  s.dispose();
  return r;
}

/** Disposes temporaries after computing a result from them. */
export function using2<T>(tmp: Tensor[], v: T): T {
  for (const t of tmp) t.dispose();
  return v;
}
