// Backend agreement harness: runs every op on the CPU and on another device (CUDA by default)
// on the same random inputs of awkward shapes and checks that the two agree within dtype
// tolerances. With --device cpu it instead checks float32/bfloat16 CPU results against a float64
// CPU run of the same op, so the harness itself can be exercised on a machine without a GPU.
//
//   node dist/test/backends.js [--device cuda|cpu] [--dtype float32,bfloat16] [--filter matmul]
//                              [--seed N] [--json out.json] [--verbose | --quiet] [--ref float64|same]
//
// --ref same with --device cpu compares the CPU with itself in the tested dtype: the code path of
// a CUDA run (exact Philox draws, poisoning, same-dtype budgets), for smoke-testing the harness.
//
// Exit status: 0 all agree, 1 some case failed or threw, 2 the device is not available.
// Plain node only (the GPU machine has no npm, jest or ts-node), so it imports nothing but lib/
// and test/reference.ts.
//
// Adding an op: push one OpEntry onto REGISTRY (name, the native ops it runs, case generator, run,
// tolerance); the dtypes it is tested in come from supports() (the op table), not from the entry.
import * as fs from 'fs';
import * as path from 'path';
import * as dr from '../lib';
import { selectSegments } from '../lib/ops/segment';
import { UNARY_OPS, BINARY_OPS, UnaryName, BinaryName, OpName, supports } from '../lib/native';
import { prng } from './reference';

type DType = dr.DType;
type Device = dr.Device;
type Tensor = dr.Tensor;

// ---- registry types -------------------------------------------------------------------------

/**
 * One input of a case, described on the host so each side builds its own copy. dtype 'T' is the
 * dtype under test (float64 on the reference side of --device cpu when that dtype is a float
 * one); a fixed dtype (int32 ids, bool masks) is the same on both sides.
 */
export interface Input {
  shape: number[];
  data: ArrayLike<number>;
  dtype: 'T' | DType;
  /** Makes the op see a strided view (transpose, slice, expand) instead of the stored layout. */
  view?: (t: Tensor) => Tensor;
}

/** max|a-b| / (atol + rtol |ref|) <= 1, exact equality, or within n units in the last place of the output dtype. */
export type Tol = { kind: 'close'; atol: number; rtol: number } | { kind: 'exact' } | { kind: 'ulp'; ulps: number };

export interface Ctx {
  device: Device;
  /** The dtype 'T' inputs have on this side (the tested dtype, or float64 for the reference). */
  dtype: DType;
  /** The dtype under test, also on the float64 reference side (for ops whose output dtype is fixed). */
  testDtype: DType;
  seed: number;
  reference: boolean;
}

export interface Case {
  /** Shown in the shape column. */
  label: string;
  inputs: Input[];
  /** Per-case parameters for run (axis, flags, ...). */
  p?: Record<string, unknown>;
  /** The reduction length: float tolerances scale by sqrt(k). */
  k?: number;
  /** Overrides the entry's tolerance. */
  tol?: Tol;
}

export interface OpEntry {
  name: string;
  /**
   * The native ops the entry runs (forward and backward). The dtypes under test ('T' inputs
   * take each in turn) are those every one of them supports on the device under test and on
   * the cpu, as the op table says (supports()): no per-entry list to fall out of date.
   */
  ops: OpName[];
  /** Narrows the dtypes for what the public API means (rand draws floats; randint is its int32 form). */
  accepts?: (dtype: DType) => boolean;
  cases: (dtype: DType, rnd: Rnd) => Case[];
  /** Runs the op on inputs already on ctx.device; returns one tensor (the others are disposed by the harness). */
  run: (xs: Tensor[], c: Case, ctx: Ctx) => Tensor;
  /** Default: close with the dtype's budget, scaled by sqrt(k); exact for int32/bool outputs. */
  tol?: (dtype: DType, c: Case, reference: boolean) => Tol;
}

/** The dtypes an entry tests on a device: what its ops support there and on the cpu (float64 is the reference). */
export function dtypesOf(e: OpEntry, device: Device): DType[] {
  const candidates: DType[] = ['float32', 'bfloat16', 'int32', 'bool'];
  return candidates.filter((d) => e.ops.every((op) => supports(op, d, device) && supports(op, d, 'cpu')) && (!e.accepts || e.accepts(d)));
}

// ---- host-side inputs -------------------------------------------------------------------------

export class Rnd {
  private r: () => number;
  constructor(seed: number) {
    this.r = prng(seed);
  }
  next(): number {
    return this.r();
  }
  uniform(n: number, lo = -2, hi = 2): Float64Array {
    const a = new Float64Array(n);
    for (let i = 0; i < n; ++i) a[i] = lo + (hi - lo) * this.r();
    return a;
  }
  /** Multiples of q in [lo, hi]: gives ties for comparisons, halves for round(). */
  grid(n: number, lo: number, hi: number, q: number): Float64Array {
    const a = new Float64Array(n);
    const steps = Math.round((hi - lo) / q);
    for (let i = 0; i < n; ++i) a[i] = lo + q * Math.floor(this.r() * (steps + 1));
    return a;
  }
  ints(n: number, lo: number, hi: number): Float64Array {
    const a = new Float64Array(n);
    for (let i = 0; i < n; ++i) a[i] = lo + Math.floor(this.r() * (hi - lo));
    return a;
  }
}

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const fmtShape = (s: readonly number[]) => `[${s.join(',')}]`;
const T = (shape: number[], data: ArrayLike<number>, view?: (t: Tensor) => Tensor): Input => ({ shape, data, dtype: 'T', view });
const I32 = (shape: number[], data: ArrayLike<number>): Input => ({ shape, data, dtype: 'int32' });
const BOOL = (shape: number[], data: ArrayLike<number>): Input => ({ shape, data, dtype: 'bool' });
const tr = (t: Tensor) => t.transpose(-2, -1);

const isFloatDType = (d: DType) => d === 'float32' || d === 'bfloat16' || d === 'float64';
const BASE_TOL: Record<string, [number, number]> = {
  float32: [1e-5, 1e-4],
  bfloat16: [2e-2, 2e-2],
  float64: [1e-12, 1e-10],
};

/**
 * The dtype's budget, grown with the reduction length k: float32 rounding differences of a
 * k-term sum grow like sqrt(k). bfloat16 kernels are expected to accumulate in float32, so their error is the
 * final rounding to bfloat16 (one ulp, 2^-8 relative); only long sums move it, hence the
 * much slower growth.
 */
function defaultTol(dtype: DType, c: Case): Tol {
  const [atol, rtol] = BASE_TOL[dtype] ?? [0, 0];
  if (dtype === 'int32' || dtype === 'bool') return { kind: 'exact' };
  const k = c.k && c.k > 1 ? c.k : 1;
  const s = dtype === 'bfloat16' ? Math.max(1, Math.sqrt(k) / 16) : Math.sqrt(k);
  return { kind: 'close', atol: atol * s, rtol: rtol * s };
}
const exact = (): Tol => ({ kind: 'exact' });

// ---- the registry --------------------------------------------------------------------------------

export const REGISTRY: OpEntry[] = [];

// fill / zeros / full
REGISTRY.push({
  name: 'full',
  ops: ['fill'],
  cases: (d) => {
    const vals = d === 'bool' ? [0, 1] : d === 'int32' ? [0, -7, 123456] : [0, 1.5, -3.25, 1e30, NaN, -Infinity];
    const shapes = [[1], [7], [129, 257], [3, 1, 1031]];
    const out: Case[] = [];
    for (const s of shapes) for (const v of vals) out.push({ label: `${fmtShape(s)}=${v}`, inputs: [], p: { s, v } });
    out.push({ label: '[0]', inputs: [], p: { s: [0], v: 1 } });
    return out;
  },
  run: (_, c, ctx) => {
    const { s, v } = c.p as { s: number[]; v: number };
    const o = { dtype: ctx.dtype, device: ctx.device };
    if (v === 0) return dr.zeros(s, o);
    return dr.full(s, ctx.dtype === 'bool' ? v !== 0 : v, o);
  },
  tol: exact,
});

// arange
REGISTRY.push({
  name: 'arange',
  ops: ['arange'],
  cases: (d) => {
    const r: Array<[number, number, number]> = [[0, 1, 1], [0, 7, 1], [-5, 1026, 1], [0, 70001, 1], [10, -3, -3]];
    if (d !== 'int32') r.push([-3.5, 10, 0.25], [0, 1, 1 / 1031]);
    return r.map(([a, b, st]) => ({ label: `(${a},${b},${+st.toPrecision(4)})`, inputs: [], p: { a, b, st } }));
  },
  run: (_, c, ctx) => {
    const { a, b, st } = c.p as { a: number; b: number; st: number };
    return dr.arange(a, b, st, { dtype: ctx.dtype, device: ctx.device });
  },
  // the default budget: a device may form start + i*step in float rather than double
});

// rand / randn: the same (seed, offset) is the same Philox draw on every device
REGISTRY.push({
  name: 'rand',
  ops: ['random'],
  accepts: isFloatDType,
  cases: () =>
    [[1], [7], [1031], [257, 129]].flatMap((s) => [
      { label: `${fmtShape(s)} U[0,1)`, inputs: [], p: { s, lo: 0, hi: 1 } },
      { label: `${fmtShape(s)} U[-3,5)`, inputs: [], p: { s, lo: -3, hi: 5 } },
    ]),
  run: (_, c, ctx) => {
    const { s, lo, hi } = c.p as { s: number[]; lo: number; hi: number };
    const g = new dr.Generator(ctx.seed);
    g.take(12);  // a non-zero counter start
    return dr.rand(s, { dtype: ctx.dtype, device: ctx.device, generator: g, low: lo, high: hi });
  },
  // CUDA must reproduce the CPU bits exactly (and the float64 draw rounded once, on the CPU)
  tol: exact,
});
REGISTRY.push({
  name: 'randn',
  ops: ['random'],
  accepts: isFloatDType,
  cases: () =>
    [[1], [7], [1031], [257, 129]].flatMap((s) => [
      { label: `${fmtShape(s)} N(0,1)`, inputs: [], p: { s, mean: 0, std: 1 } },
      { label: `${fmtShape(s)} N(2,0.5)`, inputs: [], p: { s, mean: 2, std: 0.5 } },
    ]),
  run: (_, c, ctx) => {
    const { s, mean, std } = c.p as { s: number[]; mean: number; std: number };
    const g = new dr.Generator(ctx.seed + 1);
    return dr.randn(s, { dtype: ctx.dtype, device: ctx.device, generator: g, mean, std });
  },
  // log/cos may differ in the last bit between libm and the CUDA math library
  tol: () => ({ kind: 'ulp', ulps: 1 }),
});

// to(dtype): every pair among float32, bfloat16, int32, bool; sources include a strided view
const CAST_DTYPES: DType[] = ['float32', 'bfloat16', 'int32', 'bool'];
REGISTRY.push({
  name: 'to(dtype)',
  ops: ['copy'],
  cases: (d, rnd) => {
    const gen = (n: number) =>
      d === 'bool' ? rnd.ints(n, 0, 2) : d === 'int32' ? rnd.ints(n, -300, 300) : rnd.grid(n, -300, 300, 0.125).map((v, i) => (i % 5 === 0 ? rnd.uniform(1, -3, 3)[0] : i % 7 === 0 ? 0 : v));
    const out: Case[] = [];
    for (const target of CAST_DTYPES) {
      if (target === d) continue;
      out.push({ label: `[1]->${target}`, inputs: [T([1], gen(1))], p: { target } });
      out.push({ label: `[1031]->${target}`, inputs: [T([1031], gen(1031))], p: { target } });
      out.push({ label: `[129,257]T->${target}`, inputs: [T([129, 257], gen(129 * 257), tr)], p: { target } });
    }
    return out;
  },
  run: (xs, c) => xs[0].to(c.p!.target as DType),
  tol: exact,
});

// contiguous of strided views
REGISTRY.push({
  name: 'contiguous',
  ops: ['copy'],
  cases: (d, rnd) => {
    const gen = (n: number) => (d === 'bool' ? rnd.ints(n, 0, 2) : d === 'int32' ? rnd.ints(n, -1000, 1000) : rnd.uniform(n));
    return [
      { label: '[129,257]T', inputs: [T([129, 257], gen(129 * 257), tr)] },
      { label: '[1,1031]T', inputs: [T([1, 1031], gen(1031), tr)] },
      { label: '[3,33,65].permute(2,0,1)', inputs: [T([3, 33, 65], gen(3 * 33 * 65), (t) => t.permute([2, 0, 1]))] },
      { label: '[64,257].narrow(1,3,129)', inputs: [T([64, 257], gen(64 * 257), (t) => t.narrow(1, 3, 129))] },
      { label: '[1,1031].expand(7,1031)', inputs: [T([1, 1031], gen(1031), (t) => t.expand([7, 1031]))] },
      { label: '[2,5,7,9].slice', inputs: [T([2, 5, 7, 9], gen(630), (t) => dr.slice(t, [1, 1, 0, 2], [1, 3, 7, 5]))] },
    ];
  },
  run: (xs) => xs[0].contiguous(),
  tol: exact,
});

// every unary op
const POSITIVE = new Set<string>(['log', 'sqrt', 'rsqrt', 'reciprocal']);
for (const name of UNARY_OPS) {
  const intOk = ['neg', 'abs', 'square', 'sign'].includes(name);
  REGISTRY.push({
    name: `unary:${name}`,
    ops: ['unary'],
    // int32 and bool inputs of float ops are promoted to float32 by the API (tested so too)
    cases: (d, rnd) => {
      const gen = (n: number): Float64Array => {
        if (d === 'bool') return rnd.ints(n, 0, 2);
        if (d === 'int32') return rnd.ints(n, -1000, 1000);
        if (POSITIVE.has(name)) return rnd.uniform(n, 0.05, 8);
        if (name === 'log1p') return rnd.uniform(n, -0.95, 4);
        if (name === 'exp' || name === 'expm1') return rnd.uniform(n, -6, 6);
        if (['floor', 'ceil', 'round', 'sign', 'relu', 'logicalNot'].includes(name)) return rnd.grid(n, -6, 6, 0.25);
        return rnd.uniform(n, -5, 5);
      };
      return [
        { label: '[1]', inputs: [T([1], gen(1))] },
        { label: '[7]', inputs: [T([7], gen(7))] },
        { label: '[1031]', inputs: [T([1031], gen(1031))] },
        { label: '[3,129,257]', inputs: [T([3, 129, 257], gen(3 * 129 * 257))] },
        { label: '[257,129]T', inputs: [T([257, 129], gen(257 * 129), tr)] },
      ];
    },
    run: (xs) => dr.unary(name as UnaryName, xs[0]),
  });
}

// every binary op, tensor-tensor with broadcasting and views, and tensor-scalar both ways
const COMPARISONS = new Set<string>(['eq', 'ne', 'lt', 'le', 'gt', 'ge', 'logicalAnd', 'logicalOr']);
// floorDiv / remainder: quotients exact in every dtype (a on a grid, b a signed power of two), so
// that floor() sees the same number on both sides; int32 divisors include 0 (defined as 0)
const FLOORED = new Set<string>(['floorDiv', 'remainder']);
const pow2 = (rnd: Rnd, n: number) => Float64Array.from({ length: n }, () => [0.5, 1, 2, 4][Math.floor(rnd.next() * 4)] * (rnd.next() < 0.5 ? -1 : 1));
for (const name of BINARY_OPS) {
  REGISTRY.push({
    name: `binary:${name}`,
    ops: ['binary', 'binaryScalar'],
    // bool operands of arithmetic are promoted to int32 by the API; bool is tested by where/eq
    accepts: (d) => d !== 'bool',
    cases: (d, rnd) => {
      // a: pow needs a positive base; b: div keeps away from 0; comparisons want ties and zeros
      const ga = (n: number) =>
        d === 'int32' ? rnd.ints(n, -20, 20) : name === 'pow' ? rnd.uniform(n, 0.1, 3) : COMPARISONS.has(name) ? rnd.grid(n, -2, 2, 0.5)
          : FLOORED.has(name) ? rnd.grid(n, -8, 8, 0.25) : rnd.uniform(n);
      const gb = (n: number) => {
        if (d === 'int32') return rnd.ints(n, -20, 20);
        if (FLOORED.has(name)) return pow2(rnd, n);
        if (name === 'div') return rnd.uniform(n, 0.5, 2).map((v, i) => (i % 2 ? -v : v));
        if (COMPARISONS.has(name)) return rnd.grid(n, -2, 2, 0.5);
        return rnd.uniform(n);
      };
      const s = name === 'pow' ? 1.75 : name === 'div' ? -1.5 : COMPARISONS.has(name) ? 0.5 : d === 'int32' ? 3 : FLOORED.has(name) ? -0.5 : 0.75;
      return [
        { label: '[1]+[1]', inputs: [T([1], ga(1)), T([1], gb(1))] },
        { label: '[1031]+[1031]', inputs: [T([1031], ga(1031)), T([1031], gb(1031))] },
        { label: '[1]+[33]', inputs: [T([1], ga(1)), T([33], gb(33))] },
        { label: '[129,1]+[1,257]', inputs: [T([129, 1], ga(129)), T([1, 257], gb(257))] },
        { label: '[3,1,65]+[7,65]', inputs: [T([3, 1, 65], ga(195)), T([7, 65], gb(455))] },
        { label: '[257,129]T+[129,257]', inputs: [T([257, 129], ga(257 * 129), tr), T([129, 257], gb(129 * 257))] },
        { label: `[1031]+${s}`, inputs: [T([1031], ga(1031))], p: { s, first: false } },
        { label: `${name === 'pow' ? 1.5 : s}+[129,257]T`, inputs: [T([257, 129], name === 'div' || FLOORED.has(name) ? gb(257 * 129) : ga(257 * 129), tr)], p: { s: name === 'pow' ? 1.5 : s, first: true } },
      ];
    },
    run: (xs, c) => {
      if (c.p) return c.p.first ? dr.binary(name as BinaryName, c.p.s as number, xs[0]) : dr.binary(name as BinaryName, xs[0], c.p.s as number);
      return dr.binary(name as BinaryName, xs[0], xs[1]);
    },
  });
}

// where
REGISTRY.push({
  name: 'where',
  ops: ['where'],
  cases: (d, rnd) => {
    const g = (n: number) => (d === 'int32' ? rnd.ints(n, -100, 100) : rnd.uniform(n));
    const m = (n: number) => rnd.ints(n, 0, 2);
    return [
      { label: '[1031]', inputs: [BOOL([1031], m(1031)), T([1031], g(1031)), T([1031], g(1031))] },
      { label: '[129,1]?[1,257]:[129,257]', inputs: [BOOL([129, 1], m(129)), T([1, 257], g(257)), T([129, 257], g(129 * 257))] },
      { label: '[3,33,65]?[65]:-1.5', inputs: [BOOL([3, 33, 65], m(3 * 33 * 65)), T([65], g(65))], p: { b: -1.5 } },
      { label: '[257,129]T?2:[129,257]T', inputs: [BOOL([257, 129], m(257 * 129), ), T([257, 129], g(257 * 129), tr)], p: { a: 2, viewCond: true } },
    ];
  },
  run: (xs, c) => {
    const p = c.p ?? {};
    if (p.b !== undefined) return dr.where(xs[0], xs[1], p.b as number);
    if (p.a !== undefined) {
      const cond = xs[0].transpose(0, 1);
      try {
        return dr.where(cond, p.a as number, xs[1]);
      } finally {
        cond.dispose();
      }
    }
    return dr.where(xs[0], xs[1], xs[2]);
  },
  tol: exact,
});

// sum / mean / max / min over rows, columns, all and more
for (const kind of ['sum', 'mean', 'max', 'min'] as const) {
  REGISTRY.push({
    name: kind,
    ops: ['reduce'],
    cases: (d, rnd) => {
      const g = (n: number) => (d === 'int32' ? rnd.ints(n, -50, 50) : rnd.uniform(n));
      const sets: Array<[number[], number | number[] | undefined, boolean, boolean?]> = [
        [[1], undefined, false],
        [[1031], undefined, false],
        [[1, 1], [0, 1], false],
        [[129, 257], 0, false],
        [[129, 257], 1, false],
        [[129, 257], undefined, false],
        [[129, 257], -1, true],
        [[3, 33, 65], [0, 2], false],
        [[3, 33, 65], 1, true],
        [[64, 5000], 1, false],
        [[257, 129], 1, false, true],
        [[257, 129], 0, false, true],
      ];
      return sets.map(([s, axis, keepDims, transposed]) => {
        const viewShape = transposed ? [s[1], s[0]] : s;
        const axes = axis === undefined ? viewShape.map((_, i) => i) : (Array.isArray(axis) ? axis : [axis]).map((a) => (a < 0 ? a + viewShape.length : a));
        const k = axes.reduce((acc, a) => acc * viewShape[a], 1);
        return {
          label: `${fmtShape(s)}${transposed ? 'T' : ''} axis=${axis === undefined ? 'all' : JSON.stringify(axis)}${keepDims ? ' keep' : ''}`,
          inputs: [T(s, g(numel(s)), transposed ? tr : undefined)],
          p: { axis, keepDims },
          k: kind === 'sum' || kind === 'mean' ? k : undefined,
        };
      });
    },
    run: (xs, c) => dr[kind](xs[0], c.p!.axis as number | number[] | undefined, { keepDims: c.p!.keepDims as boolean }),
    tol: (d, c) => (kind === 'max' || kind === 'min' ? exact() : defaultTol(d, c)),
  });
}

// argmax / argmin (ties: the first index wins on every backend)
for (const kind of ['argmax', 'argmin'] as const) {
  REGISTRY.push({
    name: kind,
    ops: ['argReduce'],
    cases: (d, rnd) => {
      const g = (n: number) => (d === 'int32' ? rnd.ints(n, -30, 30) : rnd.uniform(n));
      const sets: Array<[number[], number | undefined, boolean?]> = [
        [[1], undefined], [[1031], undefined], [[1031], 0], [[129, 257], 0], [[129, 257], 1], [[129, 257], undefined],
        [[3, 33, 65], 1], [[3, 33, 65], -1], [[16, 5000], 1], [[257, 129], 1, true], [[7, 1], 1],
      ];
      return sets.map(([s, axis, transposed]) => ({
        label: `${fmtShape(s)}${transposed ? 'T' : ''} axis=${axis ?? 'all'}`,
        inputs: [T(s, g(numel(s)), transposed ? tr : undefined)],
        p: { axis },
      }));
    },
    run: (xs, c) => dr[kind](xs[0], c.p!.axis as number | undefined),
    tol: exact,
  });
}

// cumsum: k = the scanned length (the running sums' rounding grows with it)
REGISTRY.push({
  name: 'cumsum',
  ops: ['cumsum'],
  cases: (d, rnd) => {
    const g = (n: number) => (d === 'int32' ? rnd.ints(n, -30, 30) : rnd.uniform(n));
    const sets: Array<[number[], number, boolean, boolean, boolean?]> = [
      [[1], 0, false, false], [[1031], 0, false, false], [[129, 257], 1, false, false], [[129, 257], 0, true, false],
      [[3, 33, 65], 1, false, true], [[3, 33, 65], 2, true, true], [[4, 5000], 1, false, false], [[257, 129], 1, false, false, true],
    ];
    return sets.map(([s, axis, reverse, exclusive, transposed]) => ({
      label: `${fmtShape(s)}${transposed ? 'T' : ''} axis=${axis}${reverse ? ' rev' : ''}${exclusive ? ' excl' : ''}`,
      inputs: [T(s, g(numel(s)), transposed ? tr : undefined)],
      p: { axis, reverse, exclusive },
      k: s[axis],
    }));
  },
  run: (xs, c) => dr.cumsum(xs[0], c.p!.axis as number, { reverse: c.p!.reverse as boolean, exclusive: c.p!.exclusive as boolean }),
});

// topk and sort: values on a grid every dtype holds exactly (ties included), so the orders, and
// hence indices and values, are identical on every backend and dtype
const sortCases = (d: DType, rnd: Rnd, withK: boolean): Case[] => {
  const g = (n: number) => (d === 'int32' ? rnd.ints(n, -20, 20) : rnd.grid(n, -8, 8, 0.25));
  const sets: Array<[number[], number, number, boolean]> = [
    [[1], 0, 1, true], [[7], 0, 3, false], [[129, 257], 1, 8, true], [[129, 257], 0, 1, false], [[33, 5000], 1, 50, true],
    [[3, 33, 65], 1, 33, false], [[2, 4097], 1, 4097, true], [[64, 9], 1, 2, true],
  ];
  return sets.map(([s, axis, k, flag]) => ({
    label: `${fmtShape(s)} axis=${axis}${withK ? ` k=${k}` : ''}${flag ? (withK ? ' largest' : ' desc') : ''}`,
    inputs: [T(s, g(numel(s)))],
    p: { axis, k, flag },
  }));
};
for (const part of ['values', 'indices'] as const) {
  REGISTRY.push({
    name: `topk ${part}`,
    ops: ['topk'],
    cases: (d, rnd) => sortCases(d, rnd, true),
    run: (xs, c) => {
      const r = dr.topk(xs[0], c.p!.k as number, { axis: c.p!.axis as number, largest: c.p!.flag as boolean });
      const other = part === 'values' ? r.indices : r.values;
      other.dispose();
      return r[part];
    },
    tol: exact,
  });
  REGISTRY.push({
    name: `sort ${part}`,
    ops: ['sort'],
    cases: (d, rnd) => sortCases(d, rnd, false),
    run: (xs, c) => {
      const r = dr.sort(xs[0], { axis: c.p!.axis as number, descending: c.p!.flag as boolean });
      const other = part === 'values' ? r.indices : r.values;
      other.dispose();
      return r[part];
    },
    tol: exact,
  });
}

// bincount (scatterAdd of ones, or of the weights) and nonzero (cumsum, scatterAdd, floorDiv, remainder)
REGISTRY.push({
  name: 'bincount',
  ops: ['scatterAdd', 'fill'],
  accepts: (d) => d !== 'bool',
  cases: (d, rnd) =>
    ([[1], [1031], [64, 33]] as number[][]).map((s) => ({
      label: `${fmtShape(s)}${d === 'int32' ? '' : ' weighted'}`,
      inputs: [I32(s, rnd.ints(numel(s), 0, 17)), T(s, d === 'int32' ? rnd.ints(numel(s), -5, 5) : rnd.uniform(numel(s)))],
      k: numel(s) / 17,
    })),
  run: (xs, _c, ctx) => (ctx.testDtype === 'int32' ? dr.bincount(xs[0], { length: 17 }) : dr.bincount(xs[0], { length: 17, weights: xs[1] })),
  // bfloat16 bins round after every add (scatterAdd's rule): the error grows with the hits
  tol: (d, c) => {
    if (d === 'int32') return exact();
    const [atol, rtol] = BASE_TOL[d];
    const s = Math.sqrt(c.k ?? 1);
    return { kind: 'close', atol: atol * s, rtol: rtol * s };
  },
});
REGISTRY.push({
  name: 'nonzero',
  ops: ['cumsum', 'scatterAdd', 'binary'],
  cases: (d, rnd) =>
    ([[1], [7], [33, 65], [3, 5, 129]] as number[][]).map((s) => ({
      label: fmtShape(s),
      inputs: [T(s, d === 'bool' ? rnd.ints(numel(s), 0, 2) : rnd.grid(numel(s), -1, 1, 0.5))],
    })),
  run: (xs) => dr.nonzeroSync(xs[0]),
  tol: exact,
});

// routerGate: per-row permutations of a grid (well separated scores, so every dtype and device
// makes the same choices)
const T_ = T; // the tensor input helper, under another name where T counts tokens
const gateLogits = (rnd: Rnd, T: number, E: number): Float64Array => {
  const out = new Float64Array(T * E);
  for (let t = 0; t < T; ++t) {
    const perm = Array.from({ length: E }, (_, e) => e);
    for (let i = E - 1; i > 0; --i) {
      const j = Math.floor(rnd.next() * (i + 1));
      [perm[i], perm[j]] = [perm[j], perm[i]];
    }
    perm.forEach((p, e) => (out[t * E + e] = (p - E / 2) * (4 / E)));
  }
  return out;
};
const GATE_CASES: Array<[number, number, number, Record<string, unknown>]> = [
  [1, 1, 1, {}], [37, 8, 2, {}], [1031, 8, 2, { capacityFactor: 1.25 }], [300, 64, 6, { score: 'sigmoid', groups: 8, topGroups: 3, routeScale: 2.5 }],
  [65, 100, 3, { normalize: true, capacityFactor: 0.5 }],
];
for (const part of ['indices', 'weights', 'positions', 'counts', 'auxLoss', 'zLoss'] as const) {
  REGISTRY.push({
    name: `routerGate ${part}`,
    ops: ['routerGate'],
    cases: (_d, rnd) => GATE_CASES.map(([T, E, k, o]) => ({
      label: `T${T} E${E} k${k}${Object.keys(o).length ? ' ' + Object.entries(o).map(([a, b]) => `${a}=${b}`).join(' ') : ''}`,
      inputs: [T_([T, E], gateLogits(rnd, T, E))],
      p: { k, ...o },
    })),
    run: (xs, c) => {
      const { k, ...o } = c.p as Record<string, unknown>;
      const r = dr.routerGate(xs[0], { topK: k as number, ...(o as dr.RouterGateOptions) });
      for (const key of ['indices', 'weights', 'positions', 'counts', 'auxLoss', 'zLoss'] as const) if (key !== part) r[key].dispose();
      return r[part];
    },
    tol: (d, c) => (part === 'weights' || part === 'auxLoss' || part === 'zLoss' ? defaultTol('float32', c) : exact()),
  });
}

// MoE: routings built here (distinct experts per token, slots first choices first, -1 past a
// capacity), an expert without tokens; dispatch / combine in both layouts, the grouped GEMM, the
// expert FFN, and their gradients (the plan, moePlan, is int32 and runs inside every entry).
interface MoeRouting { T: number; E: number; K: number; cap: number; indices: Float64Array; positions: Float64Array; counts: Float64Array; offsets: number[] }
const moeRouting = (rnd: Rnd, T: number, E: number, K: number, cap: number, skip: number): MoeRouting => {
  const indices = new Float64Array(T * K), positions = new Float64Array(T * K), run = new Array(E).fill(0);
  for (let t = 0; t < T; ++t) {
    const pool = Array.from({ length: E }, (_, e) => e).filter((e) => e !== skip);
    for (let i = pool.length - 1; i > 0; --i) {
      const j = Math.floor(rnd.next() * (i + 1));
      [pool[i], pool[j]] = [pool[j], pool[i]];
    }
    for (let k = 0; k < K; ++k) indices[t * K + k] = pool[k];
  }
  for (let k = 0; k < K; ++k)
    for (let t = 0; t < T; ++t) {
      const e = indices[t * K + k], q = run[e]++;
      positions[t * K + k] = cap > 0 && q >= cap ? -1 : q;
    }
  const counts = Float64Array.from(run.map((c) => (cap > 0 ? Math.min(c, cap) : c)));
  const offsets = [0];
  counts.forEach((c, e) => offsets.push(offsets[e] + c));
  return { T, E, K, cap, indices, positions, counts, offsets };
};
// T, E, K, capacity (0: dropless routing), expert without tokens
const MOE_CASES: Array<[number, number, number, number, number]> = [[1, 1, 1, 0, -1], [37, 8, 2, 0, 3], [300, 8, 2, 60, -1], [65, 5, 5, 0, -1], [129, 16, 4, 40, 7]];
const moeLabel = (R: MoeRouting, D: number, layout: string) => `T${R.T} E${R.E} K${R.K}${R.cap ? ` cap${R.cap}` : ''} D${D} ${layout}`;
const moeOpts = (xs: Tensor[], c: Case): dr.MoeLayoutOptions =>
  (c.p!.layout === 'dropless' ? { counts: xs[2] } : { capacity: c.p!.C as number, experts: c.p!.E as number });
for (const layout of ['dropless', 'capacity'] as const) {
  const capOf = (R: MoeRouting) => R.cap || Math.max(1, ...Array.from(R.counts));
  REGISTRY.push({
    name: `moeDispatch ${layout}`,
    ops: ['moeGather'],
    cases: (_d, rnd) => MOE_CASES.map(([T, E, K, cap, skip], i) => {
      const R = moeRouting(rnd, T, E, K, cap, skip);
      const D = [1, 33, 64, 7, 129][i];
      return { label: moeLabel(R, D, layout), inputs: [I32([T, K], R.indices), I32([T, K], R.positions), I32([E], R.counts), T_([T, D], rnd.uniform(T * D))], p: { layout, C: capOf(R), E } };
    }),
    run: (xs, c) => {
      const r = dr.moeDispatch(xs[3], xs[0], xs[1], moeOpts(xs, c));
      [r.offsets, r.plan.rows, r.plan.sources].forEach((t) => t.dispose());
      return r.buffer;
    },
    tol: exact,
  });
  REGISTRY.push({
    name: `moeCombine ${layout}`,
    ops: ['moeCombine'],
    cases: (_d, rnd) => MOE_CASES.map(([T, E, K, cap, skip], i) => {
      const R = moeRouting(rnd, T, E, K, cap, skip);
      const D = [1, 33, 64, 7, 129][i];
      const C = capOf(R);
      const yshape = layout === 'dropless' ? [T * K, D] : [E, C, D];
      return { label: moeLabel(R, D, layout), inputs: [I32([T, K], R.indices), I32([T, K], R.positions), I32([E], R.counts), T_(yshape, rnd.uniform(numel(yshape))), T_([T, K], rnd.uniform(T * K, 0, 1))], p: { layout, C, E }, k: K };
    }),
    run: (xs, c) => dr.moeCombine(xs[3], xs[0], xs[1], xs[4], moeOpts(xs, c)),
  });
}
// grouped GEMM over offsets with an empty expert, an expert longer than a tile, rows after the last
const GG_CASES: Array<[number, number, number, number[]]> = [[1, 1, 1, [0, 1]], [150, 33, 17, [0, 5, 5, 120, 131]], [300, 64, 129, [3, 100, 180, 180, 299]], [20, 8, 70, [2, 9, 9, 9, 18]]];
REGISTRY.push({
  name: 'groupedMatmul',
  ops: ['groupedMatmul'],
  cases: (_d, rnd) => GG_CASES.flatMap(([N, K, n, off]) => [false, true].map((tb) => {
    const E = off.length - 1;
    const b = tb ? [E, n, K] : [E, K, n];
    return { label: `N${N} k${K} n${n} E${E}${tb ? ' transB' : ''}`, inputs: [T_([N, K], rnd.uniform(N * K)), T_(b, rnd.uniform(numel(b))), I32([E + 1], off)], p: { tb }, k: K };
  })),
  run: (xs, c) => dr.groupedMatmul(xs[0], xs[1], xs[2], { transB: c.p!.tb as boolean }),
});
// the expert FFN: [N, D] dropless with offsets, or [E, C, D]. bfloat16 against the float64
// reference: the hidden layer and its activation are stored in bfloat16 (rounded twice between the
// GEMMs, as in the capacity layout's plain matmuls), which the reference never rounds: a wider
// budget there; CPU against CUDA keeps the default.
const ffnTol = (d: DType, c: Case, reference: boolean): Tol =>
  (reference && d === 'bfloat16' ? { kind: 'close', atol: 1e-1, rtol: 1e-1 } : defaultTol(d, c));
const FFN_CASES: Array<[number, number, number, number[]]> = [[150, 33, 17, [0, 5, 5, 120, 131]], [64, 16, 40, [0, 30, 64]], [9, 8, 3, [0, 9]]];
for (const act of ['swiglu', 'gelu'] as const) {
  const F1 = (F: number) => (act === 'swiglu' ? 2 * F : F);
  REGISTRY.push({
    name: `moeExpertFFN ${act}`,
    ops: ['groupedMatmul', 'matmul', act === 'swiglu' ? 'swiglu' : 'unary'],
    cases: (_d, rnd) => FFN_CASES.flatMap(([N, D, F, off]) => {
      const E = off.length - 1;
      const w = [T_([E, D, F1(F)], rnd.uniform(E * D * F1(F), -0.5, 0.5)), T_([E, F, D], rnd.uniform(E * F * D, -0.5, 0.5))];
      const C = Math.ceil(N / E);
      return [
        { label: `N${N} D${D} F${F} E${E} dropless`, inputs: [T_([N, D], rnd.uniform(N * D)), ...w, I32([E + 1], off)], k: D + F },
        { label: `[${E},${C},${D}] F${F} capacity`, inputs: [T_([E, C, D], rnd.uniform(E * C * D)), ...w], k: D + F },
      ];
    }),
    run: (xs) => dr.moeExpertFFN(xs[0], xs[1], xs[2], { activation: act, offsets: xs[3] }),
    tol: ffnTol,
  });
}
gradEntry('moeDispatch+moeCombine', ['moeGather', 'moeCombine', 'moeCombineWeightGrad'], (rnd) => MOE_CASES.slice(1).flatMap(([T, E, K, cap, skip]) => {
  const R = moeRouting(rnd, T, E, K, cap, skip);
  const D = 19;
  // x -> dispatch -> scale by a fixed tensor -> combine with weights: gradients to x and the weights
  return [{ label: moeLabel(R, D, 'dropless'), inputs: [T_([T, D], rnd.uniform(T * D)), T_([T * K, D], rnd.uniform(T * K * D)), T_([T, K], rnd.uniform(T * K, 0, 1)), I32([T, K], R.indices), I32([T, K], R.positions), I32([E], R.counts)], out: [T, D], k: Math.max(D, K) }];
}), (xs) => {
  const [x, s, w, ind, pos, counts] = xs;
  const d = dr.moeDispatch(x, ind, pos, { counts });
  return dr.moeCombine(dr.mul(d.buffer, s), ind, pos, w, { plan: d.plan });
});
gradEntry('moeExpertFFN swiglu dropless', ['groupedMatmul', 'groupedMatmulWeightGrad', 'swiglu', 'swigluBackward'], (rnd) => FFN_CASES.map(([N, D, F, off]) => {
  const E = off.length - 1;
  return { label: `N${N} D${D} F${F} E${E}`, inputs: [T_([N, D], rnd.uniform(N * D)), T_([E, D, 2 * F], rnd.uniform(E * D * 2 * F, -0.5, 0.5)), T_([E, F, D], rnd.uniform(E * F * D, -0.5, 0.5)), I32([E + 1], off)], out: [N, D], k: Math.max(N, D + F) };
}), (xs) => dr.moeExpertFFN(xs[0], xs[1], xs[2], { offsets: xs[3] }));
REGISTRY[REGISTRY.length - 1].tol = ffnTol;

// matmul
REGISTRY.push({
  name: 'matmul',
  ops: ['matmul'],
  cases: (d, rnd) => {
    const out: Case[] = [];
    const mm = (label: string, as: number[], bs: number[], k: number, p: Record<string, unknown> = {}, va?: (t: Tensor) => Tensor, vb?: (t: Tensor) => Tensor) =>
      out.push({ label, inputs: [T(as, rnd.uniform(numel(as), -1, 1), va), T(bs, rnd.uniform(numel(bs), -1, 1), vb)], p, k });
    mm('1x1x1', [1, 1], [1, 1], 1);
    mm('3x5x7', [3, 5], [5, 7], 5);
    mm('3x13x5 (k%8)', [3, 13], [13, 5], 13);
    mm('65x127x129', [65, 127], [127, 129], 127);
    mm('100x1031x7', [100, 1031], [1031, 7], 1031);
    mm('256x512x384', [256, 512], [512, 384], 512);
    mm('[129]@[129,7] vec', [129], [129, 7], 129);
    mm('[33,17]@[17] vec', [33, 17], [17], 17);
    mm('[4,1,33,17]@[3,17,9] bcast', [4, 1, 33, 17], [3, 17, 9], 17);
    mm('[5,65,31]@[31,66] bcast', [5, 65, 31], [31, 66], 31);
    mm('65x127x129 transA', [127, 65], [127, 129], 127, { transA: true });
    mm('65x127x129 transB', [65, 127], [129, 127], 127, { transB: true });
    mm('[3,33,20]x[3,21,20] tA+tB', [3, 20, 33], [3, 21, 20], 20, { transA: true, transB: true });
    mm('strided a.T@b.T views', [127, 65], [129, 127], 127, {}, tr, tr);
    if (d === 'float32') mm('1030x1030x1030', [1030, 1030], [1030, 1030], 1030);
    return out;
  },
  run: (xs, c) => dr.matmul(xs[0], xs[1], { transA: !!c.p?.transA, transB: !!c.p?.transB }),
});

// softmax / logSoftmax along the last and a middle axis
for (const kind of ['softmax', 'logSoftmax'] as const) {
  REGISTRY.push({
    name: kind,
    ops: ['softmax'],
    cases: (_d, rnd) => {
      const sets: Array<[number[], number]> = [
        [[7, 1], -1], [[33, 33], -1], [[16, 1000], -1], [[8, 5000], -1], [[2, 3, 1031], -1],
        [[4, 33, 7], 1], [[2, 1000, 3], 1], [[3, 1, 5], 1], [[5, 5000, 2], 1],
      ];
      const out: Case[] = sets.map(([s, axis]) => ({ label: `${fmtShape(s)} axis=${axis}`, inputs: [T(s, rnd.uniform(numel(s), -6, 6))], p: { axis }, k: s[axis < 0 ? s.length + axis : axis] }));
      out.push({ label: '[257,129]T axis=-1', inputs: [T([257, 129], rnd.uniform(257 * 129, -6, 6), tr)], p: { axis: -1 }, k: 257 });
      return out;
    },
    run: (xs, c) => dr[kind](xs[0], c.p!.axis as number),
  });
}

// rmsNorm / layerNorm over the last axis, with and without affine parameters
for (const kind of ['rmsNorm', 'layerNorm'] as const) {
  REGISTRY.push({
    name: kind,
    ops: [kind],
    cases: (_d, rnd) => {
      const out: Case[] = [];
      for (const cols of [1, 7, 64, 1031, 4096]) {
        const rows = cols >= 1031 ? 33 : 65;
        const x = [rows, cols];
        out.push({ label: `${fmtShape(x)} w${kind === 'layerNorm' ? '+b' : ''}`, inputs: [T(x, rnd.uniform(rows * cols, -3, 3)), T([cols], rnd.uniform(cols, 0.5, 1.5)), T([cols], rnd.uniform(cols, -0.5, 0.5))], p: { affine: true }, k: cols });
        out.push({ label: `${fmtShape(x)} plain`, inputs: [T(x, rnd.uniform(rows * cols, -3, 3))], p: { affine: false }, k: cols });
      }
      out.push({ label: '[2,3,1031] w', inputs: [T([2, 3, 1031], rnd.uniform(6186, -3, 3)), T([1031], rnd.uniform(1031, 0.5, 1.5)), T([1031], rnd.uniform(1031))], p: { affine: true }, k: 1031 });
      out.push({ label: '[64,33]T w', inputs: [T([64, 33], rnd.uniform(64 * 33, -3, 3), tr), T([64], rnd.uniform(64, 0.5, 1.5)), T([64], rnd.uniform(64))], p: { affine: true }, k: 64 });
      return out;
    },
    run: (xs, c) => {
      const affine = c.p!.affine as boolean;
      if (kind === 'rmsNorm') return dr.rmsNorm(xs[0], affine ? xs[1] : null);
      return dr.layerNorm(xs[0], affine ? xs[1] : null, affine ? xs[2] : null);
    },
  });
}

// gelu (both forms) / silu / swiglu through the nn-level functions
REGISTRY.push({
  name: 'gelu',
  ops: ['unary'],
  cases: (_d, rnd) =>
    (['none', 'tanh'] as const).flatMap((approximate) => [
      { label: `[1031] ${approximate}`, inputs: [T([1031], rnd.uniform(1031, -6, 6))], p: { approximate } },
      { label: `[4,33,257] ${approximate}`, inputs: [T([4, 33, 257], rnd.uniform(4 * 33 * 257, -6, 6))], p: { approximate } },
    ]),
  run: (xs, c) => dr.gelu(xs[0], { approximate: c.p!.approximate as 'none' | 'tanh' }),
});
REGISTRY.push({
  name: 'silu',
  ops: ['unary'],
  cases: (_d, rnd) => [
    { label: '[1]', inputs: [T([1], rnd.uniform(1, -6, 6))] },
    { label: '[4,33,257]', inputs: [T([4, 33, 257], rnd.uniform(4 * 33 * 257, -8, 8))] },
  ],
  run: (xs) => dr.silu(xs[0]),
});
REGISTRY.push({
  name: 'swiglu',
  ops: ['swiglu'],
  cases: (_d, rnd) =>
    [[7, 2], [33, 2062], [2, 3, 128], [1, 8192]].map((s) => ({ label: fmtShape(s), inputs: [T(s, rnd.uniform(numel(s), -5, 5))] })),
  run: (xs) => dr.swiglu(xs[0]),
});

// embedding, gather, scatterAdd
REGISTRY.push({
  name: 'embedding',
  ops: ['embedding'],
  cases: (_d, rnd) => {
    const out: Case[] = [];
    for (const [V, D, ids] of [[1, 7, [1]], [50, 129, [3, 17]], [1031, 64, [2, 5, 7]], [10, 4096, [33]]] as Array<[number, number, number[]]>) {
      const n = numel(ids);
      const idx = rnd.ints(n, 0, V);
      idx[0] = V - 1;  // both ends of the table
      if (n > 1) idx[n - 1] = 0;
      out.push({ label: `V${V}xD${D} ids${fmtShape(ids)}`, inputs: [I32(ids, idx), T([V, D], rnd.uniform(V * D))] });
    }
    return out;
  },
  run: (xs) => dr.embedding(xs[0], xs[1]),
  tol: exact,
});
REGISTRY.push({
  name: 'gather',
  ops: ['gather'],
  cases: (d, rnd) => {
    const g = (n: number) => (d === 'int32' ? rnd.ints(n, -1000, 1000) : rnd.uniform(n));
    const sets: Array<[number[], number, number[]]> = [[[7], 0, [7]], [[129, 257], 0, [33, 257]], [[129, 257], 1, [129, 300]], [[3, 33, 65], 2, [3, 20, 5]], [[3, 33, 65], 1, [1, 1, 1]]];
    return sets.map(([s, axis, is]) => ({ label: `${fmtShape(s)} ax${axis} idx${fmtShape(is)}`, inputs: [T(s, g(numel(s))), I32(is, rnd.ints(numel(is), 0, s[axis]))], p: { axis } }));
  },
  run: (xs, c) => dr.gather(xs[0], c.p!.axis as number, xs[1]),
  tol: exact,
});
REGISTRY.push({
  name: 'scatterAdd',
  ops: ['scatterAdd'],
  cases: (_d, rnd) => {
    // repeated indices accumulate in a device-dependent order: k = the most hits per target, roughly
    const sets: Array<[number[], number, number[]]> = [[[7], 0, [20]], [[33, 65], 0, [100, 65]], [[33, 65], 1, [33, 200]], [[3, 17, 129], 2, [3, 17, 1031]], [[1031, 64], 0, [4096, 64]]];
    return sets.map(([s, axis, is]) => ({
      label: `${fmtShape(s)} ax${axis} src${fmtShape(is)}`,
      inputs: [T(s, rnd.uniform(numel(s))), I32(is, rnd.ints(numel(is), 0, s[axis])), T(is, rnd.uniform(numel(is)))],
      p: { axis },
      k: Math.max(4, (3 * is[axis]) / s[axis]),
    }));
  },
  run: (xs, c) => dr.scatterAdd(xs[0], c.p!.axis as number, xs[1], xs[2]),
  // bfloat16 rounds after every add (as PyTorch does), so its error grows with the hits too
  tol: (d, c) => {
    const [atol, rtol] = BASE_TOL[d];
    const s = Math.sqrt(c.k ?? 1);
    return { kind: 'close', atol: atol * s, rtol: rtol * s };
  },
});

// crossEntropy with ignored rows and label smoothing; the loss is float32 for float32/bfloat16 logits
REGISTRY.push({
  name: 'crossEntropy',
  ops: ['crossEntropy'],
  cases: (_d, rnd) => {
    const out: Case[] = [];
    // ignore: -100 (the default) or a real class (3), so both skip paths are covered
    const sets: Array<[number[], number, number, 'mean' | 'sum' | 'none', number]> = [
      [[1], 1, 0, 'mean', -100], [[7], 33, 0, 'none', -100], [[64], 1000, 0, 'mean', 3], [[64], 1000, 0.1, 'none', -100],
      [[16], 5000, 0.1, 'mean', -100], [[2, 3], 129, 0, 'sum', 3], [[33], 257, 0.2, 'mean', 3],
    ];
    for (const [lead, C, smoothing, reduction, ignore] of sets) {
      const n = numel(lead);
      const t = rnd.ints(n, 0, C);
      for (let i = 0; i < n; ++i) if (i % 5 === 2) t[i] = ignore;
      out.push({
        label: `${fmtShape(lead)}x${C} ls${smoothing} ${reduction} ign${ignore}`,
        inputs: [T([...lead, C], rnd.uniform(n * C, -8, 8)), I32(lead, t)],
        p: { smoothing, reduction, ignore },
        k: C,
      });
    }
    return out;
  },
  run: (xs, c) => {
    const p = c.p as { smoothing: number; reduction: 'mean' | 'sum' | 'none'; ignore: number };
    return dr.crossEntropy(xs[0], xs[1], { labelSmoothing: p.smoothing, reduction: p.reduction, ignoreIndex: p.ignore });
  },
  // the inputs are the same bfloat16 numbers on both sides and the loss is float32
  tol: (_d, c) => defaultTol('float32', c),
});

// ---- gradients ----------------------------------------------------------------------------------
// Each entry runs the forward with every float input requiring grad, back-propagates a fixed
// upstream gradient (the last input, shaped like the output) and returns the input gradients
// flattened and joined, so the CPU and CUDA backward kernels are compared element by element.

function gradRun(forward: (xs: Tensor[], c: Case) => Tensor) {
  return (xs: Tensor[], c: Case): Tensor =>
    dr.tidy(() => {
      const up = xs[xs.length - 1];
      const ins = xs.slice(0, -1).map((x) => (x.dtype === 'int32' || x.dtype === 'bool' ? x : x.detach().requiresGrad_()));
      const y = forward(ins, c);
      y.backward(up.to(y.dtype));
      const grads = ins.filter((x) => x.requiresGrad).map((x) => x.grad!.to(up.dtype).reshape([-1]));
      return dr.concat(grads, 0);
    });
}

function gradEntry(name: string, ops: OpName[], cases: (rnd: Rnd) => Array<{ label: string; inputs: Input[]; out: number[]; k?: number; p?: Record<string, unknown> }>,
                   forward: (xs: Tensor[], c: Case) => Tensor, accepts: (d: DType) => boolean = isFloatDType): void {
  REGISTRY.push({
    name: `grad:${name}`,
    ops,
    accepts,
    cases: (_d, rnd) => cases(rnd).map((c) => ({ label: c.label, p: c.p, k: c.k, inputs: [...c.inputs, T(c.out, rnd.uniform(numel(c.out), -1, 1))] })),
    run: gradRun(forward),
  });
}

gradEntry('matmul', ['matmul'], (rnd) => [[3, 5, 7], [65, 127, 33], [1, 1, 1], [129, 64, 257]].flatMap(([m, k, n]) => [
  { label: `${m}x${k}x${n}`, inputs: [T([m, k], rnd.uniform(m * k)), T([k, n], rnd.uniform(k * n))], out: [m, n], k: Math.max(k, m, n) },
  { label: `${m}x${k}x${n} transA transB`, inputs: [T([k, m], rnd.uniform(m * k)), T([n, k], rnd.uniform(k * n))], out: [m, n], k: Math.max(k, m, n), p: { t: true } },
]), (xs, c) => dr.matmul(xs[0], xs[1], c.p?.t ? { transA: true, transB: true } : {}));
gradEntry('matmul batched broadcast', ['matmul', 'reduce'], (rnd) => [{ label: '[3,17,9]@[9,5]', inputs: [T([3, 17, 9], rnd.uniform(3 * 17 * 9)), T([9, 5], rnd.uniform(45))], out: [3, 17, 5], k: 51 }],
  (xs) => dr.matmul(xs[0], xs[1]));
for (const log of [false, true]) {
  gradEntry(log ? 'logSoftmax' : 'softmax', ['softmax', 'softmaxBackward'], (rnd) => [[1, 1], [7, 33], [4, 1000], [3, 5000]].map(([r, cc]) => (
    { label: `[${r},${cc}]`, inputs: [T([r, cc], rnd.uniform(r * cc, -4, 4))], out: [r, cc], k: cc })),
  (xs) => (log ? dr.logSoftmax(xs[0]) : dr.softmax(xs[0])));
}
gradEntry('rmsNorm', ['rmsNorm', 'rmsNormBackward'], (rnd) => [[1, 1], [5, 7], [33, 64], [3, 1031], [2, 4096]].map(([r, cc]) => (
  { label: `[${r},${cc}]`, inputs: [T([r, cc], rnd.uniform(r * cc)), T([cc], rnd.uniform(cc, 0.5, 1.5))], out: [r, cc], k: Math.max(r, cc) })),
(xs) => dr.rmsNorm(xs[0], xs[1], 1e-5));
gradEntry('layerNorm', ['layerNorm', 'layerNormBackward'], (rnd) => [[1, 7], [5, 7], [33, 64], [3, 1031]].map(([r, cc]) => (
  { label: `[${r},${cc}]`, inputs: [T([r, cc], rnd.uniform(r * cc)), T([cc], rnd.uniform(cc, 0.5, 1.5)), T([cc], rnd.uniform(cc))], out: [r, cc], k: Math.max(r, cc) })),
(xs) => dr.layerNorm(xs[0], xs[1], xs[2], 1e-5));
// the fused ops: h + y of addRmsNorm (the add's gradient reaches h twice: the rule's pending dh)
gradEntry('addRmsNorm', ['addRmsNorm', 'addRmsNormBackward', 'binary'], (rnd) => [[1, 1], [5, 17], [33, 64], [3, 1023], [2, 1025], [2, 4096]].map(([r, cc]) => (
  { label: `[${r},${cc}]`, inputs: [T([r, cc], rnd.uniform(r * cc)), T([r, cc], rnd.uniform(r * cc)), T([cc], rnd.uniform(cc, 0.5, 1.5))], out: [r, cc], k: Math.max(r, cc) })),
(xs) => { const { h, y } = dr.addRmsNorm(xs[0], xs[1], xs[2], 1e-5); return dr.add(h, y); });
for (const act of dr.BIAS_ACTIVATIONS) {
  gradEntry(`biasAct ${act}`, ['biasAct', 'biasActBackward'], (rnd) => [[1, 1], [7, 33], [65, 1031], [2, 3, 17]].map((s) => (
    { label: fmtShape(s), inputs: [T(s, rnd.uniform(numel(s), -4, 4)), T([s[s.length - 1]], rnd.uniform(s[s.length - 1]))], out: s, k: numel(s) / s[s.length - 1] })),
  (xs) => dr.biasAct(xs[0], xs[1], act));
}
gradEntry('swiglu', ['swiglu', 'swigluBackward'], (rnd) => [[1, 2], [7, 66], [33, 1030]].map(([r, cc]) => (
  { label: `[${r},${cc}]`, inputs: [T([r, cc], rnd.uniform(r * cc))], out: [r, cc / 2] })),
(xs) => dr.swiglu(xs[0]));
for (const op of ['exp', 'tanh', 'sigmoid', 'gelu', 'geluTanh', 'silu', 'relu', 'sqrt', 'log', 'erf', 'square'] as const) {
  const pos = op === 'sqrt' || op === 'log';
  gradEntry(`unary ${op}`, ['unary', 'unaryBackward'], (rnd) => [[1], [1031], [33, 129]].map((s) => (
    { label: fmtShape(s), inputs: [T(s, rnd.uniform(numel(s), pos ? 0.2 : -3, 3))], out: s })),
  (xs) => dr.unary(op, xs[0]));
}
gradEntry('mul/div broadcast', ['binary', 'reduce'], (rnd) => [{ label: '[5,1,7]x[3,7]', inputs: [T([5, 1, 7], rnd.uniform(35)), T([3, 7], rnd.uniform(21, 0.5, 2))], out: [5, 3, 7], k: 5 }],
  (xs) => dr.div(dr.mul(xs[0], xs[1]), xs[1].add(1)));
gradEntry('sum/max reductions', ['reduce', 'where'], (rnd) => [{ label: '[9,129] axis 1', inputs: [T([9, 129], rnd.uniform(9 * 129))], out: [9], k: 129 }],
  (xs) => dr.add(dr.sum(xs[0], 1), dr.max(xs[0], 1)));
gradEntry('crossEntropy', ['crossEntropy', 'crossEntropyBackward'], (rnd) => [[7, 33], [64, 1000], [16, 5000]].map(([r, C]) => {
  const t = rnd.ints(r, 0, C);
  t[0] = -100;
  return { label: `[${r},${C}] ls0.1`, inputs: [T([r, C], rnd.uniform(r * C, -6, 6)), I32([r], t)], out: [r], k: C };
}), (xs) => dr.crossEntropy(xs[0], xs[1], { reduction: 'none', labelSmoothing: 0.1 }));
gradEntry('embedding', ['embedding', 'scatterAdd'], (rnd) => [{ label: 'V=37 D=19 n=64', inputs: [I32([64], rnd.ints(64, 0, 37)), T([37, 19], rnd.uniform(37 * 19))], out: [64, 19], k: 8 }],
  (xs) => dr.embedding(xs[0], xs[1]));

// ---- attention ----------------------------------------------------------------------------------
// [B, H, S, D] shapes of the tile sizes' awkward neighbours: odd lengths, Sq != Sk, one query,
// grouped heads, head dims of the fast paths (32, 64, 128) and a generic one.
const ATTN_SHAPES: Array<[number, number, number, number, number, number]> = [
  // B, Hq, Hkv, Sq, Sk, D
  [1, 1, 1, 1, 1, 64], [2, 4, 2, 37, 37, 64], [1, 8, 2, 130, 257, 128], [1, 2, 1, 1, 1031, 64], [2, 3, 3, 65, 65, 32], [1, 2, 2, 33, 50, 24],
];
function attnCases(rnd: Rnd, extra: (S: number) => Array<Record<string, unknown>>): Case[] {
  const out: Case[] = [];
  for (const [B, Hq, Hkv, Sq, Sk, D] of ATTN_SHAPES) {
    for (const p of extra(Sk)) {
      out.push({
        label: `B${B} H${Hq}/${Hkv} S${Sq}/${Sk} D${D} ${Object.entries(p).map(([k, v]) => `${k}=${v}`).join(' ')}`,
        inputs: [T([B, Hq, Sq, D], rnd.uniform(B * Hq * Sq * D)), T([B, Hkv, Sk, D], rnd.uniform(B * Hkv * Sk * D)), T([B, Hkv, Sk, D], rnd.uniform(B * Hkv * Sk * D)),
          ...(p.dual ? [T([B, Sq, 2], rnd.uniform(B * Sq * 2, 0, 1))] : [])],
        p,
        k: Sk,
      });
    }
  }
  return out;
}
REGISTRY.push({
  name: 'globalAttention',
  ops: ['attentionForward'],
  cases: (_d, rnd) => attnCases(rnd, () => [{ causal: false }, { causal: true }]),
  run: (xs, c) => dr.globalAttention(xs[0], xs[1], xs[2], { causal: c.p!.causal as boolean }),
});
REGISTRY.push({
  name: 'globalAttention queryIndex (ragged)',
  ops: ['attentionForward'],
  cases: (_d, rnd) => attnCases(rnd, () => [{ causal: true }]).map((c) => {
    const [B, , Sq] = c.inputs[0].shape;
    const n = Math.max(1, Math.ceil(Sq / 3));
    // batch 0 keeps about half its rows, batch 1 none; padding entries hold indices never read
    const counts = Array.from({ length: B }, (_, b) => (b % 2 ? 0 : Math.ceil(n / 2)));
    const idx = rnd.ints(B * n, 0, Sq).map((v, i) => (i % n < counts[Math.floor(i / n)] ? v : -7));
    return { ...c, label: `${c.label} n=${n}`, inputs: [...c.inputs, I32([B, n], idx), I32([B], counts)] };
  }),
  run: (xs) => dr.globalAttention(xs[0], xs[1], xs[2], { causal: true, queryIndex: xs[3], queryCount: xs[4] }),
});
REGISTRY.push({
  name: 'localAttention',
  ops: ['attentionForward'],
  cases: (_d, rnd) => attnCases(rnd, (S) => [
    { window: 1, causal: true, mode: 'sliding' }, { window: 16, causal: true, mode: 'sliding' }, { window: 7, causal: false, mode: 'sliding' },
    { window: S + 3, causal: true, mode: 'sliding' }, { window: 64, causal: true, mode: 'block' }, { window: 5, causal: false, mode: 'block' },
  ]),
  run: (xs, c) => dr.localAttention(xs[0], xs[1], xs[2], { window: c.p!.window as number, causal: c.p!.causal as boolean, mode: c.p!.mode as 'sliding' | 'block' }),
});
REGISTRY.push({
  name: 'dualAttention',
  ops: ['dualAttentionForward'],
  cases: (_d, rnd) => attnCases(rnd, () => [{ window: 16, causal: true, dual: 1 }, { window: 3, causal: false, dual: 1 }]),
  run: (xs, c) => dr.dualAttention(xs[0], xs[1], xs[2], { window: c.p!.window as number, causal: c.p!.causal as boolean, gates: xs[3] }),
});
// the segment-routed global path, segment 16: 2 segments per row (own first when causal) in
// float32 only (bfloat16's segment means round to bfloat16, so its selection may differ from
// float64's where two segments score alike), and every segment kept in every dtype (one
// selection); per-row gates, and per-head gates in block mode
for (const [perHead, topK] of [[false, 2], [true, 2], [false, 1000], [true, 1000]] as const) {
  REGISTRY.push({
    name: `dualAttention segment topK ${topK} ${perHead ? 'per-head gates' : 'shared gates'}`,
    ops: ['dualSegmentAttentionForward'],
    accepts: (d) => topK > 2 || d === 'float32',
    cases: (_d, rnd) => attnCases(rnd, () => (perHead ? [{ window: 5, causal: false, mode: 'block' }] : [{ window: 16, causal: true, mode: 'sliding' }, { window: 3, causal: false, mode: 'sliding' }])).map((c) => {
      const [B, H, Sq] = c.inputs[0].shape;
      const g = perHead ? [B, H, Sq, 2] : [B, Sq, 2];
      return { ...c, inputs: [...c.inputs, T(g, rnd.uniform(numel(g), 0, 1))] };
    }),
    run: (xs, c) => dr.dualAttention(xs[0], xs[1], xs[2], { window: c.p!.window as number, causal: c.p!.causal as boolean, mode: c.p!.mode as 'sliding' | 'block',
      gates: xs[3], segment: { segment: 16, topK } }),
  });
}
REGISTRY.push({
  name: 'rope',
  ops: ['rope'],
  cases: (_d, rnd) => [[1, 1, 1, 2], [2, 3, 37, 64], [1, 2, 129, 128]].map((s) => ({
    label: fmtShape(s), inputs: [T(s, rnd.uniform(numel(s))), I32([s[2]], rnd.ints(s[2], 0, 5000))],
  })),
  run: (xs) => dr.rope(xs[0], xs[1]),
});
// segment attention over a caller's selection: 3 entries per row in [-1, nseg) (repeats, and
// segments after the query, included), segment 16; and the segment means
function segCases(rnd: Rnd, causal: boolean) {
  return attnCases(rnd, () => [{ causal }]).map((c) => {
    const [B, Hq, Sq] = c.inputs[0].shape;
    const nseg = Math.ceil(c.inputs[1].shape[2] / 16);
    return { ...c, inputs: [...c.inputs, I32([B, Hq, Sq, 3], rnd.ints(B * Hq * Sq * 3, -1, nseg))] };
  });
}
for (const causal of [true, false]) {
  REGISTRY.push({
    name: `segmentAttention causal=${causal}`,
    ops: ['segmentAttentionForward'],
    cases: (_d, rnd) => segCases(rnd, causal),
    run: (xs) => dr.segmentAttention(xs[0], xs[1], xs[2], { segment: 16, causal, indices: xs[3] }),
  });
}
// segmentSelect over per-row permutations of quarter integers (exact in every dtype, group sums
// too: ties are true ties, and every dtype breaks them alike)
const SELECT_CASES: Array<[number, number, number, number, number, number]> = [
  // H, Sq, Sk, segment, topK, groupHeads
  [1, 1, 1, 1, 1, 1], [2, 13, 18, 2, 3, 1], [6, 9, 40, 4, 4, 3], [2, 33, 33, 1, 40, 1],
];
for (const part of ['indices', 'weights'] as const) {
  REGISTRY.push({
    name: `segmentSelect ${part}`,
    ops: ['segmentSelect'],
    cases: (_d, rnd) => SELECT_CASES.map(([H, Sq, Sk, seg, k, g]) => {
      const nseg = Math.ceil(Sk / seg);
      return { label: `H${H} Sq${Sq} Sk${Sk} segment ${seg} topK ${k} groupHeads ${g}`, inputs: [T_([1, H, Sq, nseg], gateLogits(rnd, H * Sq, nseg).map((x) => Math.round(x * nseg) / 4))], p: { Sk, seg, k, g } };
    }),
    run: (xs, c) => {
      const p = c.p as Record<string, number>;
      const r = dr.segmentSelect(xs[0], { topK: p.k, groupHeads: p.g, segment: p.seg, keyLength: p.Sk });
      (part === 'indices' ? r.weights : r.indices).dispose();
      return r[part];
    },
    tol: (d, c) => (part === 'weights' ? defaultTol('float32', c) : exact()),
  });
}
// selectSegments (the fused segmentTopk) over quarter-grid q and k, segments of 2 or 4 keys
// (power-of-two means), scale 1/2: the means and every score are exact in every dtype, so ties
// are true ties and every dtype breaks them alike; one case with eighth-grid summaries given
const TOPK_CASES: Array<[number, number, number, number, number, number, number, number, number, boolean, boolean]> = [
  // B, Hq, Hkv, Sq, Sk, D, segment, topK, group, causal, summaries
  [1, 1, 1, 1, 4, 4, 4, 1, 1, true, false], [2, 4, 2, 13, 24, 8, 4, 3, 2, true, false], [1, 6, 2, 9, 40, 16, 4, 4, 3, false, false],
  [1, 8, 1, 33, 64, 16, 2, 40, 8, true, false], [1, 2, 2, 70, 200, 5, 2, 6, 1, true, false], [1, 4, 2, 17, 30, 8, 3, 5, 2, true, true],
];
REGISTRY.push({
  name: 'selectSegments (segmentTopk)',
  ops: ['segmentTopk', 'segmentMean'],
  cases: (_d, rnd) => TOPK_CASES.map(([B, Hq, Hkv, Sq, Sk, D, seg, k, g, causal, sum]) => {
    const nseg = Math.ceil(Sk / seg);
    const inputs = [T([B, Hq, Sq, D], rnd.grid(B * Hq * Sq * D, -2, 2, 0.25)), T([B, Hkv, Sk, D], rnd.grid(B * Hkv * Sk * D, -2, 2, 0.25))];
    if (sum) inputs.push(T([B, Hkv, nseg, D], rnd.grid(B * Hkv * nseg * D, -1, 1, 0.125)));
    return { label: `B${B} H${Hq}/${Hkv} Sq${Sq} Sk${Sk} D${D} segment ${seg} topK ${k} group ${g}${causal ? ' causal' : ''}${sum ? ' summaries' : ''}`, inputs, p: { Sk, seg, k, g, causal } };
  }),
  run: (xs, c) => {
    const p = c.p as { Sk: number; seg: number; k: number; g: number; causal: boolean };
    return selectSegments(xs[0], xs[1], { Sk: p.Sk, scale: 0.5 }, { segment: p.seg, topK: p.k, group: p.g, causal: p.causal, summaries: xs[2] });
  },
  tol: () => exact(),
});
REGISTRY.push({
  name: 'segmentMean',
  ops: ['segmentMean'],
  cases: (_d, rnd) => [[1, 1, 1, 1, 1], [2, 3, 37, 64, 16], [1, 2, 129, 8, 200]].map(([b, h, S, D, seg]) => ({
    label: `[${b},${h},${S},${D}] segment ${seg}`, inputs: [T([b, h, S, D], rnd.uniform(b * h * S * D))], p: { seg }, k: seg,
  })),
  run: (xs, c) => dr.segmentMean(xs[0], c.p!.seg as number),
});
for (const kind of ['global', 'local', 'dual'] as const) {
  gradEntry(`${kind}Attention`, kind === 'dual' ? ['dualAttentionForward', 'dualAttentionBackward'] : ['attentionForward', 'attentionBackward'], (rnd) => attnCases(rnd, () => [{ causal: true }]).filter((c) => c.inputs[0].shape[2] <= 130).map((c) => {
    const [B, H, Sq, D] = c.inputs[0].shape;
    const extra = kind === 'dual' ? [T([B, Sq, 2], rnd.uniform(B * Sq * 2, 0, 1))] : [];
    // the gate gradients are sums over heads x headDim: that is their reduction length
    return { label: c.label, inputs: [...c.inputs, ...extra], out: [B, H, Sq, D], k: kind === 'dual' ? Math.max(c.k ?? 1, H * D) : c.k };
  }), (xs) => kind === 'global' ? dr.globalAttention(xs[0], xs[1], xs[2], { causal: true })
    : kind === 'local' ? dr.localAttention(xs[0], xs[1], xs[2], { window: 16, causal: true })
      : dr.dualAttention(xs[0], xs[1], xs[2], { window: 16, causal: true, gates: xs[3] }));
}
gradEntry('segmentAttention', ['segmentAttentionForward', 'segmentAttentionBackward'], (rnd) => segCases(rnd, true).filter((c) => c.inputs[0].shape[2] <= 130).map((c) => {
  const [B, H, Sq, D] = c.inputs[0].shape;
  return { label: c.label, inputs: c.inputs, out: [B, H, Sq, D], k: c.k };
}), (xs) => dr.segmentAttention(xs[0], xs[1], xs[2], { segment: 16, indices: xs[3] }));
for (const topK of [2, 1000])
  gradEntry(`dualAttention segment topK ${topK}`, ['dualSegmentAttentionForward', 'dualSegmentAttentionBackward'], (rnd) => attnCases(rnd, () => [{ causal: true }]).filter((c) => c.inputs[0].shape[2] <= 130).map((c) => {
    const [B, H, Sq, D] = c.inputs[0].shape;
    // the gate gradients are sums over heads x headDim: that is their reduction length
    return { label: c.label, inputs: [...c.inputs, T([B, Sq, 2], rnd.uniform(B * Sq * 2, 0, 1))], out: [B, H, Sq, D], k: Math.max(c.k ?? 1, H * D) };
  }), (xs) => dr.dualAttention(xs[0], xs[1], xs[2], { window: 16, causal: true, gates: xs[3], segment: { segment: 16, topK } }),
  topK > 2 ? isFloatDType : (d) => d === 'float32');  // as the forward entries above
gradEntry('segmentMean', ['segmentMean'], (rnd) => [{ label: '[2,3,37,16] segment 5', inputs: [T([2, 3, 37, 16], rnd.uniform(2 * 3 * 37 * 16))], out: [2, 3, 8, 16], k: 5 }],
  (xs) => dr.segmentMean(xs[0], 5));
// lstm (lib/ops/rnn.ts): one fused layer, forward (h every step, last h and c, concatenated)
// and backward to x, both weights, both biases, h0 and c0. Weights ~ U(-1/sqrt(H), 1/sqrt(H))
// as initialised, so the gates are not saturated; H around the CPU vector width, the matmul's
// tiles and the CUDA block (256 threads).
const LSTM_CASES: Array<[number, number, number, number]> = [[1, 1, 1, 1], [3, 7, 5, 9], [2, 5, 33, 65], [4, 3, 8, 300]];
function lstmInputs(rnd: Rnd, [B, S, I, H]: [number, number, number, number]): Input[] {
  const k = 1 / Math.sqrt(H);
  return [T([B, S, I], rnd.uniform(B * S * I, -1.5, 1.5)), T([4 * H, I], rnd.uniform(4 * H * I, -k, k)), T([4 * H, H], rnd.uniform(4 * H * H, -k, k)),
    T([4 * H], rnd.uniform(4 * H, -k, k)), T([4 * H], rnd.uniform(4 * H, -k, k)), T([B, H], rnd.uniform(B * H, -1, 1)), T([B, H], rnd.uniform(B * H, -1, 1))];
}
function lstmRun(xs: Tensor[]): Tensor {
  const r = dr.lstm(xs[0], { wIh: xs[1], wHh: xs[2], bIh: xs[3], bHh: xs[4] }, { h0: xs[5], c0: xs[6] });
  return dr.tidy(() => dr.concat([r.out.reshape([-1]), r.h.reshape([-1]), r.c.reshape([-1])], 0));
}
const lstmLabel = ([B, S, I, H]: number[]) => `B${B} S${S} in${I} H${H}`;
REGISTRY.push({
  name: 'lstm',
  ops: ['lstmForward', 'matmul', 'binary'],
  // sums of the input and recurrent products, compounded over the steps
  cases: (_d, rnd) => LSTM_CASES.map((c) => ({ label: lstmLabel(c), inputs: lstmInputs(rnd, c), k: c[2] + c[3] * c[1] })),
  run: (xs) => lstmRun(xs),
});
gradEntry('lstm', ['lstmForward', 'lstmBackward', 'matmul', 'binary', 'reduce'], (rnd) => LSTM_CASES.map((c) => {
  const [B, S, , H] = c;
  return { label: lstmLabel(c), inputs: lstmInputs(rnd, c), out: [B * S * H + 2 * B * H], k: Math.max(B * S, 4 * H) * S };
}), (xs) => lstmRun(xs));
gradEntry('rope', ['rope'], (rnd) => [{ label: '[2,3,37,64]', inputs: [T([2, 3, 37, 64], rnd.uniform(2 * 3 * 37 * 64)), I32([37], rnd.ints(37, 0, 5000))], out: [2, 3, 37, 64] }],
  (xs) => dr.rope(xs[0], xs[1]));
gradEntry('routerGate losses', ['routerLosses', 'routerLossesBackward'], (rnd) => GATE_CASES.slice(1).map(([T, E, k, o]) => ({
  label: `T${T} E${E} k${k}`, inputs: [T_([T, E], gateLogits(rnd, T, E))], out: [], k: T, p: { k, ...o },
})), (xs, c) => {
  const { k, ...o } = c.p as Record<string, unknown>;
  const r = dr.routerGate(xs[0], { topK: k as number, ...(o as dr.RouterGateOptions) });
  for (const key of ['indices', 'weights', 'positions', 'counts'] as const) r[key].dispose();
  return dr.add(r.auxLoss, dr.mul(r.zLoss, 0.5));
});
gradEntry('routerGate weights', ['routerGate', 'routerGateBackward'], (rnd) => GATE_CASES.slice(1).map(([T, E, k, o]) => ({
  label: `T${T} E${E} k${k}`, inputs: [T_([T, E], gateLogits(rnd, T, E))], out: [T, k], p: { k, ...o },
})), (xs, c) => {
  const { k, ...o } = c.p as Record<string, unknown>;
  const r = dr.routerGate(xs[0], { topK: k as number, ...(o as dr.RouterGateOptions) });
  for (const key of ['indices', 'positions', 'counts', 'auxLoss', 'zLoss'] as const) r[key].dispose();
  return r.weights;
});

// randomRoute, hashRoute, ruleRoute, layerDrop (lib/ops/route_rules.ts): integer arithmetic on
// Philox draws and tables, so a device must give the CPU's routes exactly (the same seed and
// generator offset); layerDrop's mask is rand()'s, its output one rounding of x / (1 - p).
const ROUTE_PROBS: number[][] = [[1], [0.7, 0.3], [0.1, 0.25, 0, 0.4, 0.25], Array.from({ length: 100 }, (_, i) => (i % 7 === 3 ? 0 : 1 + (i % 5))).map((v, _, a) => v / a.reduce((x, y) => x + y, 0))];
REGISTRY.push({
  name: 'randomRoute',
  ops: ['randomRoute'],
  cases: () => [1, 7, 1031, 70001].flatMap((n) => ROUTE_PROBS.map((probs) => ({ label: `T${n} P${probs.length}`, inputs: [], p: { n, probs } }))),
  run: (_, c, ctx) => {
    const { n, probs } = c.p as { n: number; probs: number[] };
    const g = new dr.Generator(ctx.seed + 2 ** 33);
    g.take(13);  // offset 16: not the stream's start
    const r = dr.randomRoute(n, probs, { generator: g, device: ctx.device });
    r.weights.dispose();
    return r.route;
  },
  tol: exact,
});
REGISTRY.push({
  name: 'hashRoute',
  ops: ['hashRoute'],
  cases: (_d, rnd) => ([[1, 1], [7, 2], [1031, 13], [257, 2 ** 31 - 1], [70001, 64]] as Array<[number, number]>).map(([n, E]) => ({
    label: `[${n}] E${E}`, inputs: [I32([n], rnd.ints(n, 0, 2 ** 31 - 1))], p: { E },
  })),
  run: (xs, c, ctx) => dr.hashRoute(xs[0], c.p!.E as number, { seed: ctx.seed }),
  tol: exact,
});
const RULE_TABLE: dr.RouteRule[] = [{ ids: [0, 5, 9, 4095], route: 2 }, { range: [10, 100], route: 1 }, { range: [100, 2000], route: 3 }, { ids: [2001, 50000], route: 4 }, { range: [60000, 2 ** 31], route: 5 }];
for (const lookup of ['dense', 'search'] as const) {
  REGISTRY.push({
    name: `ruleRoute ${lookup}`,
    ops: ['ruleRoute'],
    cases: (_d, rnd) => [[1], [7], [33, 65], [70001]].map((s) => ({
      label: fmtShape(s), inputs: [I32(s, rnd.ints(numel(s), 0, lookup === 'dense' ? 5000 : 100000))],
    })),
    run: (xs) => dr.ruleRoute(xs[0], lookup === 'dense' ? RULE_TABLE.slice(0, 3) : RULE_TABLE, { default: 7, lookup }),
    tol: exact,
  });
}
REGISTRY.push({
  name: 'layerDrop',
  ops: ['random', 'binary', 'binaryScalar', 'copy'],
  accepts: isFloatDType,
  cases: (_d, rnd) => [[1, 3], [7, 5], [1031, 2, 3]].map((s) => ({ label: fmtShape(s), inputs: [T(s, rnd.uniform(numel(s)))] })),
  run: (xs, _c, ctx) => dr.layerDrop(xs[0], 0.3, { generator: new dr.Generator(ctx.seed) }),
});
gradEntry('layerDrop', ['random', 'binary', 'binaryScalar', 'copy'], (rnd) => [[7, 5], [1031, 2, 3]].map((s) => ({
  label: fmtShape(s), inputs: [T(s, rnd.uniform(numel(s)))], out: s,
})), (xs) => dr.layerDrop(xs[0], 0.3, { generator: new dr.Generator(11) }));

// optimizer updates: a few AdamW and SGD steps from the same state and gradients
REGISTRY.push({
  name: 'optim:adamw+sgd',
  ops: ['adamwStep', 'sgdStep'],
  cases: (_d, rnd) => [1, 1031, 70000].map((n) => ({ label: `[${n}] x3 steps`, inputs: [T([n], rnd.uniform(n)), T([3, n], rnd.uniform(3 * n))] })),
  run: (xs) => dr.tidy(() => {
    const n = xs[0].shape[0];
    const a = xs[0].detach().clone().requiresGrad_();
    const b = xs[0].detach().clone().requiresGrad_();
    const adam = new dr.optim.AdamW([a], { lr: 0.01, weightDecay: 0.1 });
    const sgd = new dr.optim.SGD([b], { lr: 0.01, momentum: 0.9, nesterov: true });
    for (let s = 0; s < 3; ++s) {
      a.grad = xs[1].narrow(0, s, 1).reshape([n]).contiguous();
      b.grad = xs[1].narrow(0, s, 1).reshape([n]).contiguous();
      adam.step();
      sgd.step();
    }
    adam.dispose();
    sgd.dispose();
    return dr.concat([a.detach(), b.detach()]);
  }),
});

// ---- comparison ----------------------------------------------------------------------------------

function ulpOf(x: number, dtype: DType): number {
  const mant = dtype === 'bfloat16' ? 7 : dtype === 'float64' ? 52 : 23;
  const ax = Math.abs(x);
  if (ax === 0 || !Number.isFinite(ax)) return Math.pow(2, dtype === 'float64' ? -1074 : -149);
  return Math.pow(2, Math.floor(Math.log2(ax)) - mant);
}

interface Mismatch {
  index: number;
  coord: number[];
  got: number;
  want: number;
}

interface Result {
  op: string;
  dtype: DType;
  shape: string;
  out: string;
  ratio: number;
  pass: boolean;
  tol: string;
  mismatches?: Mismatch[];
  error?: string;
  ms: number;
}

function coordOf(i: number, shape: readonly number[]): number[] {
  const c = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; --d) {
    c[d] = i % shape[d];
    i = Math.floor(i / shape[d]);
  }
  return c;
}

/** Error ratio (<= 1 passes) per element and the first few elements over budget. */
function compare(got: ArrayLike<number>, want: ArrayLike<number>, shape: readonly number[], tol: Tol, gotDtype: DType): { ratio: number; bad: Mismatch[] } {
  let worst = 0;
  const bad: Mismatch[] = [];
  for (let i = 0; i < want.length; ++i) {
    const g = got[i];
    const w = want[i];
    let r: number;
    if (Number.isNaN(g) || Number.isNaN(w)) r = Number.isNaN(g) && Number.isNaN(w) ? 0 : Infinity;
    else if (g === w) r = 0;
    else if (!Number.isFinite(g) || !Number.isFinite(w)) r = Infinity;
    else if (tol.kind === 'exact') r = Infinity;
    else if (tol.kind === 'ulp') r = Math.abs(g - w) / (tol.ulps * ulpOf(Math.max(Math.abs(g), Math.abs(w)), gotDtype));
    else r = Math.abs(g - w) / (tol.atol + tol.rtol * Math.abs(w));
    if (r > worst) worst = r;
    if (r > 1 && bad.length < 5) bad.push({ index: i, coord: coordOf(i, shape), got: g, want: w });
  }
  return { ratio: worst, bad };
}

function tolString(t: Tol): string {
  if (t.kind === 'exact') return 'exact';
  if (t.kind === 'ulp') return `${t.ulps}ulp`;
  return `a${t.atol.toExponential(0)} r${t.rtol.toExponential(0)}`;
}

// ---- running a case --------------------------------------------------------------------------------

/**
 * Poisoning. The ops allocate their outputs themselves, so we cannot pre-fill an output buffer.
 * Instead we fill the device's allocator with garbage right before the op: allocate tensors of
 * the output's byte size (and a ladder of nearby sizes for the op's temporaries), fill them with
 * NaN (float32) or 0x7fffffff (int32: NaN as float32 and as both bfloat16 halves, an absurd
 * int32, and bytes that are not a valid bool), then dispose them. The CUDA caching allocator
 * hands exactly these blocks to the op's next allocations, so an element the kernel forgot to
 * write shows up as NaN/garbage instead of as a lucky zero from a fresh cudaMalloc. On the CPU
 * malloc may or may not reuse the blocks; it costs little and sometimes catches the same bug.
 */
function poison(device: Device, outElems: number): void {
  const sizes = new Set<number>();
  for (const es of [1, 2, 4, 8]) sizes.add(Math.max(1, Math.ceil((outElems * es) / 4)));
  const cap = device === 'cuda' ? 1 << 24 : 1 << 20;  // in 4-byte words: 64 MiB on the GPU, 4 MiB here
  for (let w = 128; w <= Math.min(cap, Math.max(256, outElems * 2)); w *= 2) sizes.add(w);
  const ts: Tensor[] = [];
  try {
    for (const w of sizes) {
      if (w > cap * 2) continue;
      ts.push(dr.full([w], NaN, { dtype: 'float32', device }));
      ts.push(dr.full([w], 2147483647, { dtype: 'int32', device }));
    }
  } finally {
    // disposal order: the allocator keeps the most recently freed blocks on top
    for (let i = ts.length - 1; i >= 0; --i) ts[i].dispose();
  }
}

/** Host data rounded to the stored values of `dtype`, so the float64 reference sees the same numbers. */
function rounded(data: ArrayLike<number>, shape: number[], dtype: DType): Float64Array {
  const t = dr.tensor(Float64Array.from(data), shape, { dtype, device: 'cpu' });
  try {
    return Float64Array.from(t.dataSync());
  } finally {
    t.dispose();
  }
}

function build(inp: Input, data: ArrayLike<number>, ctx: Ctx, keep: Tensor[]): Tensor {
  const dtype = inp.dtype === 'T' ? ctx.dtype : inp.dtype;
  const base = dr.tensor(Float64Array.from(data), inp.shape, { dtype, device: ctx.device });
  keep.push(base);
  if (!inp.view) return base;
  const v = inp.view(base);
  keep.push(v);
  return v;
}

interface Output {
  data: ArrayLike<number>;
  shape: number[];
  dtype: DType;
}

function runSide(entry: OpEntry, c: Case, data: ArrayLike<number>[], ctx: Ctx, poisonElems: number | null): Output {
  const keep: Tensor[] = [];
  try {
    const xs = c.inputs.map((inp, i) => build(inp, data[i], ctx, keep));
    if (poisonElems !== null) poison(ctx.device, poisonElems);
    const out = entry.run(xs, c, ctx);
    keep.push(out);
    // dataSync waits for the device, so a kernel fault surfaces here, inside this case
    return { data: out.dataSync(), shape: out.shape.slice(), dtype: out.dtype };
  } finally {
    for (const t of keep) t.dispose();
  }
}

function runCase(entry: OpEntry, dtype: DType, c: Case, device: Device, seed: number, reference: boolean): Result {
  const t0 = process.hrtime.bigint();
  const isF = dtype === 'float32' || dtype === 'bfloat16';
  const refCtx: Ctx = { device: 'cpu', dtype: reference && isF ? 'float64' : dtype, testDtype: dtype, seed, reference };
  const gotCtx: Ctx = { device, dtype, testDtype: dtype, seed, reference };
  const res: Result = { op: entry.name, dtype, shape: c.label, out: '', ratio: NaN, pass: false, tol: '', ms: 0 };
  try {
    const data = c.inputs.map((inp) => (inp.dtype === 'T' ? rounded(inp.data, inp.shape, dtype) : inp.data));
    const want = runSide(entry, c, data, refCtx, null);
    const got = runSide(entry, c, data, gotCtx, want.data.length);
    // The correct float32/bfloat16 answer is the float64 one rounded once; comparing against
    // that lets exact ops (fill, copies, Philox draws) stay exact on the float64 reference side.
    if (reference && want.dtype === 'float64' && (got.dtype === 'float32' || got.dtype === 'bfloat16')) {
      want.data = rounded(want.data, want.shape, got.dtype);
    }
    res.out = `${fmtShape(got.shape)} ${got.dtype}`;
    if (fmtShape(got.shape) !== fmtShape(want.shape)) throw new Error(`shape ${fmtShape(got.shape)} vs reference ${fmtShape(want.shape)}`);
    const tol = got.dtype === 'int32' || got.dtype === 'bool' ? exact() : (entry.tol ?? defaultTol)(dtype, c, reference);
    // the loss of crossEntropy and similar fixed-dtype outputs keep the tested dtype's budget
    res.tol = tolString(tol);
    const { ratio, bad } = compare(got.data, want.data, got.shape, tol, got.dtype);
    res.ratio = ratio;
    res.pass = ratio <= 1;
    if (bad.length) res.mismatches = bad;
  } catch (e) {
    res.error = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    res.pass = false;
  }
  res.ms = Number(process.hrtime.bigint() - t0) / 1e6;
  return res;
}

// ---- command line ----------------------------------------------------------------------------------

interface Args {
  device: Device;
  dtypes: DType[] | null;
  filter: string[] | null;
  seed: number;
  json: string | null;
  verbose: boolean;
  /** --quiet: print only the cases that disagree, and the summary. */
  quiet: boolean;
  /** --ref same: CPU against CPU in the same dtype, i.e. the code path of a device run (a smoke test without a GPU). */
  sameRef: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { device: 'cuda', dtypes: null, filter: null, seed: 1234, json: null, verbose: false, quiet: false, sameRef: false };
  for (let i = 0; i < argv.length; ++i) {
    const k = argv[i];
    const eq = k.indexOf('=');
    const key = eq > 0 ? k.slice(0, eq) : k;
    const val = () => (eq > 0 ? k.slice(eq + 1) : argv[++i]);
    switch (key) {
      case '--device': {
        const v = val();
        if (v !== 'cpu' && v !== 'cuda') usage(`--device must be cpu or cuda, not ${v}`);
        a.device = v as Device;
        break;
      }
      case '--dtype':
        a.dtypes = val().split(',').filter(Boolean) as DType[];
        break;
      case '--filter':
        a.filter = val().split(',').filter(Boolean);
        break;
      case '--seed':
        a.seed = Number(val());
        if (!Number.isSafeInteger(a.seed) || a.seed < 0) usage('--seed must be a non-negative integer');
        break;
      case '--json':
        a.json = val();
        break;
      case '--ref': {
        const v = val();
        if (v !== 'same' && v !== 'float64') usage(`--ref must be float64 or same, not ${v}`);
        a.sameRef = v === 'same';
        break;
      }
      case '--verbose':
      case '-v':
        a.verbose = true;
        break;
      case '--quiet':
      case '-q':
        a.quiet = true;
        break;
      case '--help':
      case '-h':
        usage();
        break;
      default:
        usage(`unknown argument ${k}`);
    }
  }
  return a;
}

function usage(msg?: string): never {
  if (msg) console.error(msg);
  console.error('usage: node dist/test/backends.js [--device cuda|cpu] [--dtype float32,bfloat16] [--filter op,...] [--seed N] [--json out.json] [--verbose | --quiet] [--ref float64|same]');
  process.exit(msg ? 1 : 0);
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}
function fmtRatio(r: number): string {
  if (Number.isNaN(r)) return '-';
  if (!Number.isFinite(r)) return 'inf';
  return r === 0 ? '0' : r < 0.001 ? r.toExponential(1) : r.toFixed(3);
}

export function main(argv = process.argv.slice(2)): void {
  const args = parseArgs(argv);
  const info = dr.devices();
  if (args.device === 'cuda' && !info.cuda.available) {
    console.error(`CUDA is not available: ${info.cuda.reason ?? 'unknown reason'} (build: ${info.cuda.build})`);
    process.exit(2);
  }
  const reference = args.device === 'cpu' && !args.sameRef;
  const mode = reference ? 'cpu float32/bfloat16 vs cpu float64 (harness self-check)' : `${args.device} vs cpu`;
  const dev = args.device === 'cuda' ? info.cuda.devices[0]?.name ?? 'cuda' : `${info.cpu.name} (${info.cpu.threads} threads, ${info.cpu.simd})`;
  console.log(`backend agreement: ${mode}; device ${dev}; seed ${args.seed}`);

  const entries = REGISTRY.filter((e) => !args.filter || args.filter.some((f) => e.name.toLowerCase().includes(f.toLowerCase())));
  if (entries.length === 0) usage(`--filter ${args.filter?.join(',')} matches no op`);
  const W = [22, 9, 34, 9, 5];
  const header = `${pad('op', W[0])} ${pad('dtype', W[1])} ${pad('shape', W[2])} ${pad('max err', W[3])} ${pad('', W[4])} tol`;
  console.log(header);
  console.log('-'.repeat(header.length + 12));
  const results: Result[] = [];
  const t0 = Date.now();
  for (const e of entries) {
    for (const dtype of dtypesOf(e, args.device)) {
      if (args.dtypes && !args.dtypes.includes(dtype)) continue;
      // every (op, dtype) gets its own input stream, so --filter does not change the inputs
      const rnd = new Rnd(hash(`${args.seed}:${e.name}:${dtype}`));
      for (const c of e.cases(dtype, rnd)) {
        const r = runCase(e, dtype, c, args.device, hash(`${args.seed}:${e.name}:${dtype}:${c.label}`) % 1_000_000_007, reference);
        results.push(r);
        const status = r.pass ? 'PASS' : r.error ? 'ERROR' : 'FAIL';
        if (args.quiet && r.pass) continue;
        console.log(`${pad(r.op, W[0])} ${pad(r.dtype, W[1])} ${pad(r.shape, W[2])} ${pad(fmtRatio(r.ratio), W[3])} ${pad(status, W[4])} ${r.tol}${args.verbose ? `  ${r.ms.toFixed(0)}ms` : ''}`);
        if (r.error) console.log(`    ${r.error.split('\n')[0]}`);
        for (const m of r.mismatches ?? []) console.log(`    at [${m.coord.join(',')}] (flat ${m.index}): got ${m.got}, want ${m.want}`);
      }
    }
  }
  const failed = results.filter((r) => !r.pass);
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  console.log('-'.repeat(header.length + 12));
  console.log(`${results.length - failed.length}/${results.length} cases agree across ${entries.length} ops in ${secs}s${failed.length ? `; FAILED: ${[...new Set(failed.map((r) => `${r.op}/${r.dtype}`))].join(', ')}` : ''}`);
  if (args.json) {
    const doc = { device: args.device, machine: info, seed: args.seed, date: new Date().toISOString(), seconds: Number(secs), passed: failed.length === 0, results };
    const tmp = `${args.json}.${process.pid}.tmp`;
    fs.mkdirSync(path.dirname(path.resolve(args.json)), { recursive: true });
    fs.writeFileSync(tmp, JSON.stringify(doc, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v), 1));
    fs.renameSync(tmp, args.json);
  }
  process.exitCode = failed.length ? 1 : 0;
}

/** FNV-1a: a stable 32-bit seed per (seed, op, dtype). */
function hash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; ++i) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

if (require.main === module) main();
