// gradcheck: compares the gradients autograd computes with float64 central differences.
// L = sum(fn(inputs) * v) for a fixed random v (so every output element matters); for each
// element x_i of each input, dL/dx_i is estimated as (L(x_i + eps) - L(x_i - eps)) / (2 eps)
// and compared with the backward pass. Inputs must be float64 CPU tensors.
import { DTypeError, DeviceError, ValueError, describe } from '../errors';
import { Tensor, tidy } from '../tensor';
import { tensor } from '../ops/creation';
import { backward, noGrad } from './engine';
import { checkOptions } from '../ops/util';

export interface GradcheckOptions {
  eps?: number;
  atol?: number;
  rtol?: number;
  /** Seed of the projection v. */
  seed?: number;
  /** Throw on a mismatch (default true); else return the report. */
  raise?: boolean;
}

export interface GradcheckReport {
  ok: boolean;
  maxAbsError: number;
  worst?: { input: number; index: number; analytical: number; numerical: number };
}

function projection(n: number, seed: number): Float64Array {
  let a = seed >>> 0;
  const v = new Float64Array(n);
  for (let i = 0; i < n; ++i) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    v[i] = ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5;
  }
  return v;
}

type Fn = (...xs: Tensor[]) => Tensor;

/**
 * Checks fn's gradients w.r.t. every input that requires grad. Inputs are float64 CPU tensors;
 * inputs without requiresGrad (indices, masks) are passed through unchanged.
 */
export function gradcheck(fn: Fn, inputs: Tensor[], options: GradcheckOptions = {}): GradcheckReport {
  options = checkOptions(options, 'gradcheck');
  if (typeof fn !== 'function') throw new ValueError(`gradcheck: Expected a function for fn but received ${describe(fn)}`);
  if (!Array.isArray(inputs) || inputs.some((x) => !(x instanceof Tensor) || x.isDisposed)) {
    throw new ValueError(`gradcheck: Expected an array of live tensors for inputs but received ${describe(inputs)}`);
  }
  if (options === null || typeof options !== 'object') throw new ValueError(`gradcheck: Expected an object for options but received ${describe(options)}`);
  const eps = options.eps ?? 1e-6;
  const atol = options.atol ?? 1e-5;
  const rtol = options.rtol ?? 1e-4;
  for (const [i, x] of inputs.entries()) {
    if (!x.requiresGrad) continue;
    if (x.dtype !== 'float64') throw new DTypeError(`gradcheck: input ${i} must be float64, got ${x.dtype}`);
    if (x.device !== 'cpu') throw new DeviceError(`gradcheck: input ${i} must be on the cpu, got ${x.device}`);
  }
  const base = inputs.map((x) => (x.requiresGrad ? Float64Array.from(x.dataSync()) : null));
  // analytical: backward of L = sum(out * v)
  let v!: Float64Array;
  const analytical = tidy(() => {
    const leaves = inputs.map((x, i) => (base[i] ? tensor(base[i]!, x.shape.slice(), { dtype: 'float64', device: 'cpu' }).requiresGrad_() : x));
    const out = fn(...leaves);
    if (!out.requiresGrad) throw new ValueError('gradcheck: the output does not depend on any input that requires grad');
    v = projection(out.size, options.seed ?? 1);
    const vt = tensor(v, out.shape.slice(), { dtype: out.dtype, device: out.device });
    backward(out, vt);
    return leaves.map((l, i) => (base[i] ? (l.grad ? Float64Array.from(l.grad.dataSync()) : new Float64Array(l.size)) : null));
  });
  const loss = (xs: Array<Float64Array | null>): number =>
    noGrad(() =>
      tidy(() => {
        const ts = inputs.map((x, i) => (xs[i] ? tensor(xs[i]!, x.shape.slice(), { dtype: 'float64', device: 'cpu' }) : x));
        const out = fn(...ts).dataSync();
        let s = 0;
        for (let k = 0; k < out.length; ++k) s += out[k] * v[k];
        return s;
      }),
    );
  let worst: GradcheckReport['worst'];
  let maxAbs = 0;
  let ok = true;
  for (let i = 0; i < inputs.length; ++i) {
    const b = base[i];
    if (!b) continue;
    for (let k = 0; k < b.length; ++k) {
      const xs = base.map((a) => (a ? a.slice() : null));
      xs[i]![k] = b[k] + eps;
      const lp = loss(xs);
      xs[i]![k] = b[k] - eps;
      const lm = loss(xs);
      const num = (lp - lm) / (2 * eps);
      const ana = analytical[i]![k];
      const err = Math.abs(num - ana);
      if (err > maxAbs) maxAbs = err;
      if (!(err <= atol + rtol * Math.abs(num))) {
        if (ok || err > Math.abs((worst?.numerical ?? 0) - (worst?.analytical ?? 0))) worst = { input: i, index: k, analytical: ana, numerical: num };
        ok = false;
      }
    }
  }
  const report: GradcheckReport = { ok, maxAbsError: maxAbs, ...(worst ? { worst } : {}) };
  if (!ok && options.raise !== false) {
    throw new ValueError(`gradcheck failed: input ${worst!.input}, element ${worst!.index}: analytical ${worst!.analytical}, numerical ${worst!.numerical} (max abs error ${maxAbs})`);
  }
  return report;
}
