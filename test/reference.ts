// Independent references for the tests: written from the formulas in float64 with plain
// loops, never calling dualroute's kernels. Inputs come from a small seeded PRNG here too, so
// a test does not depend on the library's own random numbers.

export type Arr = Float64Array;

/** mulberry32: a tiny seeded PRNG for test inputs. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randArray(n: number, seed: number, lo = -2, hi = 2): Float64Array {
  const r = prng(seed);
  const a = new Float64Array(n);
  for (let i = 0; i < n; ++i) a[i] = lo + (hi - lo) * r();
  return a;
}

export function size(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function stridesOf(shape: readonly number[]): number[] {
  const s = new Array(shape.length);
  let n = 1;
  for (let i = shape.length - 1; i >= 0; --i) {
    s[i] = n;
    n *= shape[i];
  }
  return s;
}

/** Coordinates of flat index i in shape. */
export function coords(i: number, shape: readonly number[]): number[] {
  const c = new Array(shape.length);
  for (let d = shape.length - 1; d >= 0; --d) {
    c[d] = i % shape[d];
    i = Math.floor(i / shape[d]);
  }
  return c;
}

export function broadcastShape(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const r: number[] = [];
  for (let i = 0; i < n; ++i) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    r.push(da === 1 ? db : da);
  }
  return r;
}

/** Element of x (shape xs) that position c of a larger broadcast shape reads. */
function bcIndex(c: number[], xs: readonly number[]): number {
  const off = c.length - xs.length;
  let idx = 0;
  for (let d = 0; d < xs.length; ++d) idx = idx * xs[d] + (xs[d] === 1 ? 0 : c[d + off]);
  return idx;
}

export function binaryRef(f: (a: number, b: number) => number, a: ArrayLike<number>, as: number[], b: ArrayLike<number>, bs: number[]): { data: Float64Array; shape: number[] } {
  const shape = broadcastShape(as, bs);
  const n = size(shape);
  const out = new Float64Array(n);
  for (let i = 0; i < n; ++i) {
    const c = coords(i, shape);
    out[i] = f(a[bcIndex(c, as)], b[bcIndex(c, bs)]);
  }
  return { data: out, shape };
}

export function erf(x: number): number {
  // Abramowitz-Stegun 7.1.26 is too coarse for 1e-6 checks; use the series / continued fraction.
  const ax = Math.abs(x);
  if (ax < 3) {
    // Taylor series: erf x = 2/sqrt(pi) sum (-1)^n x^(2n+1) / (n! (2n+1))
    let term = ax, sum = ax;
    for (let n = 1; n < 200; ++n) {
      term *= -ax * ax / n;
      const t = term / (2 * n + 1);
      sum += t;
      if (Math.abs(t) < 1e-17 * Math.abs(sum)) break;
    }
    const r = (2 / Math.sqrt(Math.PI)) * sum;
    return x < 0 ? -r : r;
  }
  const c = erfcTail(ax);
  return x < 0 ? c - 1 : 1 - c;
}

// erfc(a) for a >= 3 by its continued fraction (relatively accurate however small it gets).
function erfcTail(a: number): number {
  let f = 0;
  for (let n = 60; n >= 1; --n) f = n / 2 / (a + f);
  return Math.exp(-a * a) / Math.sqrt(Math.PI) / (a + f);
}

/** erfc(x) = 1 - erf(x), keeping its relative accuracy in the upper tail. */
export function erfc(x: number): number {
  return x >= 3 ? erfcTail(x) : 1 - erf(x);
}

/** GELU, x Phi(x) = x erfc(-x / sqrt 2) / 2: relatively accurate in the lower tail too. */
export function gelu(x: number): number {
  return 0.5 * x * erfc(-x / Math.SQRT2);
}

export const unaryRef: Record<string, (x: number) => number> = {
  neg: (x) => -x,
  abs: Math.abs,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  sin: Math.sin,
  cos: Math.cos,
  tanh: Math.tanh,
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  relu: (x) => (x > 0 ? x : 0),
  gelu,
  geluTanh: (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))),
  silu: (x) => x / (1 + Math.exp(-x)),
  square: (x) => x * x,
  reciprocal: (x) => 1 / x,
  floor: Math.floor,
  ceil: Math.ceil,
  round: (x) => {
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;  // half to even
  },
  sign: Math.sign,
  erf,
  log1p: Math.log1p,
  expm1: Math.expm1,
};

/** Reduces x (shape) over axes with f; keeps the other axes in order. */
export function reduceRef(x: ArrayLike<number>, shape: number[], axes: number[], kind: 'sum' | 'mean' | 'max' | 'min'): { data: Float64Array; shape: number[] } {
  const outShape = shape.filter((_, i) => !axes.includes(i));
  const n = size(outShape);
  const init = kind === 'max' ? -Infinity : kind === 'min' ? Infinity : 0;
  const acc = new Float64Array(n).fill(init);
  let count = 1;
  for (const a of axes) count *= shape[a];
  for (let i = 0; i < x.length; ++i) {
    const c = coords(i, shape);
    const oc = c.filter((_, d) => !axes.includes(d));
    let o = 0;
    for (let d = 0; d < oc.length; ++d) o = o * outShape[d] + oc[d];
    const v = x[i];
    if (kind === 'max') acc[o] = Number.isNaN(v) || Number.isNaN(acc[o]) ? NaN : Math.max(acc[o], v);
    else if (kind === 'min') acc[o] = Number.isNaN(v) || Number.isNaN(acc[o]) ? NaN : Math.min(acc[o], v);
    else acc[o] += v;
  }
  if (kind === 'mean') for (let i = 0; i < n; ++i) acc[i] /= count;
  return { data: acc, shape: outShape };
}

/** Batched matmul with broadcasting of batch dims: a [..., m, k] @ b [..., k, n]. */
export function matmulRef(a: ArrayLike<number>, as: number[], b: ArrayLike<number>, bs: number[]): { data: Float64Array; shape: number[] } {
  const m = as[as.length - 2], k = as[as.length - 1], n = bs[bs.length - 1];
  const ab = as.slice(0, -2), bb = bs.slice(0, -2);
  const batch = broadcastShape(ab, bb);
  const nb = size(batch);
  const out = new Float64Array(nb * m * n);
  for (let t = 0; t < nb; ++t) {
    const c = coords(t, batch);
    const ia = bcIndex(c, ab), ib = bcIndex(c, bb);
    for (let i = 0; i < m; ++i)
      for (let j = 0; j < n; ++j) {
        let s = 0;
        for (let p = 0; p < k; ++p) s += a[ia * m * k + i * k + p] * b[ib * k * n + p * n + j];
        out[t * m * n + i * n + j] = s;
      }
  }
  return { data: out, shape: [...batch, m, n] };
}

/** Transposes the last two dims of a row-major array. */
export function transposeLast(x: ArrayLike<number>, shape: number[]): { data: Float64Array; shape: number[] } {
  const r = shape[shape.length - 2], c = shape[shape.length - 1];
  const nb = size(shape.slice(0, -2));
  const out = new Float64Array(x.length);
  for (let t = 0; t < nb; ++t) for (let i = 0; i < r; ++i) for (let j = 0; j < c; ++j) out[t * r * c + j * r + i] = x[t * r * c + i * c + j];
  return { data: out, shape: [...shape.slice(0, -2), c, r] };
}

/** Applies f to each row along axis (as [outer, dim, inner]). */
export function alongAxis(x: ArrayLike<number>, shape: number[], axis: number, f: (row: number[]) => number[]): Float64Array {
  const outer = size(shape.slice(0, axis)), dim = shape[axis], inner = size(shape.slice(axis + 1));
  const out = new Float64Array(x.length);
  for (let o = 0; o < outer; ++o)
    for (let i = 0; i < inner; ++i) {
      const row: number[] = [];
      for (let d = 0; d < dim; ++d) row.push(x[(o * dim + d) * inner + i]);
      const r = f(row);
      for (let d = 0; d < dim; ++d) out[(o * dim + d) * inner + i] = r[d];
    }
  return out;
}

export function softmaxRow(row: number[]): number[] {
  const m = Math.max(...row);
  const e = row.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}
export function logSoftmaxRow(row: number[]): number[] {
  const m = Math.max(...row);
  const lse = m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0));
  return row.map((v) => v - lse);
}

/** Max |a - b| / (atol + rtol |b|): <= 1 passes. NaN in either fails unless both are NaN. */
export function maxErrRatio(got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol: number): { ratio: number; at: number } {
  let worst = 0, at = -1;
  for (let i = 0; i < want.length; ++i) {
    const g = got[i], w = want[i];
    if (Number.isNaN(w) || Number.isNaN(g)) {
      if (Number.isNaN(w) && Number.isNaN(g)) continue;
      return { ratio: Infinity, at: i };
    }
    if (!Number.isFinite(w) || !Number.isFinite(g)) {
      if (g === w) continue;
      return { ratio: Infinity, at: i };
    }
    const r = Math.abs(g - w) / (atol + rtol * Math.abs(w));
    if (r > worst) {
      worst = r;
      at = i;
    }
  }
  return { ratio: worst, at };
}

/**
 * One LSTM layer, batch first, from the equations (gates i, f, g, o as PyTorch): x [B, S, I],
 * wih [4H, I], whh [4H, H], biases [4H] or null, h0 / c0 [B, H] or null (0). Returns h of every
 * step [B, S, H] and the last h, c [B, H].
 */
export function lstmRef(x: ArrayLike<number>, B: number, S: number, I: number, H: number, wih: ArrayLike<number>, whh: ArrayLike<number>,
  bih: ArrayLike<number> | null, bhh: ArrayLike<number> | null, h0: ArrayLike<number> | null, c0: ArrayLike<number> | null): { out: Arr; h: Arr; c: Arr } {
  const sig = (v: number) => 1 / (1 + Math.exp(-v));
  const out = new Float64Array(B * S * H), hN = new Float64Array(B * H), cN = new Float64Array(B * H);
  for (let b = 0; b < B; ++b) {
    let h = Array.from({ length: H }, (_, k) => (h0 ? h0[b * H + k] : 0));
    let c = Array.from({ length: H }, (_, k) => (c0 ? c0[b * H + k] : 0));
    for (let t = 0; t < S; ++t) {
      const a = new Array<number>(4 * H);
      for (let j = 0; j < 4 * H; ++j) {
        let s = (bih ? bih[j] : 0) + (bhh ? bhh[j] : 0);
        for (let p = 0; p < I; ++p) s += wih[j * I + p] * x[(b * S + t) * I + p];
        for (let p = 0; p < H; ++p) s += whh[j * H + p] * h[p];
        a[j] = s;
      }
      const nh = new Array<number>(H), nc = new Array<number>(H);
      for (let k = 0; k < H; ++k) {
        const i = sig(a[k]), f = sig(a[H + k]), g = Math.tanh(a[2 * H + k]), o = sig(a[3 * H + k]);
        nc[k] = f * c[k] + i * g;
        nh[k] = o * Math.tanh(nc[k]);
        out[(b * S + t) * H + k] = nh[k];
      }
      h = nh;
      c = nc;
    }
    for (let k = 0; k < H; ++k) {
      hN[b * H + k] = h[k];
      cN[b * H + k] = c[k];
    }
  }
  return { out, h: hN, c: cN };
}
