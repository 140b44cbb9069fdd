// Plain float64 references shared by the nn tests, written from the formulas.
import * as dr from '../../lib';
import { nn } from '../../lib';

export const arr = (t: dr.Tensor) => Float64Array.from(t.dataSync());

/** y[r, o] = sum_i x[r, i] W[o, i] + b[o] for a row-major x [rows, I] and W [O, I]. */
export function lin(x: Float64Array, rows: number, W: Float64Array, I: number, O: number, b?: Float64Array | null): Float64Array {
  const y = new Float64Array(rows * O);
  for (let r = 0; r < rows; ++r)
    for (let o = 0; o < O; ++o) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < I; ++i) s += x[r * I + i] * W[o * I + i];
      y[r * O + o] = s;
    }
  return y;
}

/** A Linear module's map, with its own weights read back. */
export const linRef = (x: Float64Array, rows: number, l: nn.Linear): Float64Array =>
  lin(x, rows, arr(l.weight), l.inFeatures, l.outFeatures, l.bias ? arr(l.bias) : null);

/** Rotate-half RoPE, in place, of the head vector x[off .. off + hd) at position p. */
export function ropeRef(x: Float64Array, off: number, hd: number, p: number, base = 10000): void {
  const half = hd / 2;
  for (let i = 0; i < half; ++i) {
    const th = p * Math.pow(base, (-2 * i) / hd);
    const a = x[off + i], c = x[off + i + half];
    x[off + i] = a * Math.cos(th) - c * Math.sin(th);
    x[off + i + half] = c * Math.cos(th) + a * Math.sin(th);
  }
}
