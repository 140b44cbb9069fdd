// Every op is also a method: a.add(b), x.softmax(-1), x.to('cuda'), x.add_(1), y.backward().
// The methods forward to the functions of the same name. This is the library's top layer, for
// users: nothing inside lib/ calls ops as methods (the autograd engine and the rules call the
// functions), so the engine works whether or not this file was loaded.
import { DType } from './dtype';
import { Device } from './device';
import { Tensor } from './tensor';
import * as ew from './ops/elementwise';
import * as idx from './ops/indexing';
import * as la from './ops/linalg';
import * as nn from './ops/nn';
import * as red from './ops/reduce';
import * as sh from './ops/shape';
import * as so from './ops/sort';

type S = ew.TensorOrScalar;

declare module './tensor' {
  interface Tensor {
    add(b: S): Tensor;
    sub(b: S): Tensor;
    mul(b: S): Tensor;
    div(b: S): Tensor;
    pow(b: S): Tensor;
    maximum(b: S): Tensor;
    minimum(b: S): Tensor;
    floorDiv(b: S): Tensor;
    remainder(b: S): Tensor;
    eq(b: S): Tensor;
    ne(b: S): Tensor;
    lt(b: S): Tensor;
    le(b: S): Tensor;
    gt(b: S): Tensor;
    ge(b: S): Tensor;
    logicalAnd(b: S): Tensor;
    logicalOr(b: S): Tensor;
    neg(): Tensor;
    abs(): Tensor;
    exp(): Tensor;
    log(): Tensor;
    sqrt(): Tensor;
    rsqrt(): Tensor;
    sin(): Tensor;
    cos(): Tensor;
    tanh(): Tensor;
    sigmoid(): Tensor;
    relu(): Tensor;
    silu(): Tensor;
    square(): Tensor;
    reciprocal(): Tensor;
    floor(): Tensor;
    ceil(): Tensor;
    round(): Tensor;
    sign(): Tensor;
    erf(): Tensor;
    log1p(): Tensor;
    expm1(): Tensor;
    logicalNot(): Tensor;
    gelu(options?: { approximate?: 'none' | 'tanh' }): Tensor;
    clamp(min?: number, max?: number): Tensor;
    where(cond: Tensor, other: S): Tensor;
    sum(axis?: number | number[], options?: red.ReduceOptions): Tensor;
    mean(axis?: number | number[], options?: red.ReduceOptions): Tensor;
    max(axis?: number | number[], options?: red.ReduceOptions): Tensor;
    min(axis?: number | number[], options?: red.ReduceOptions): Tensor;
    argmax(axis?: number, options?: red.ReduceOptions): Tensor;
    argmin(axis?: number, options?: red.ReduceOptions): Tensor;
    cumsum(axis: number, options?: so.CumsumOptions): Tensor;
    topk(k: number, options?: so.TopkOptions): so.SortResult;
    sort(options?: so.SortOptions): so.SortResult;
    argsort(options?: so.SortOptions): Tensor;
    matmul(b: Tensor, options?: la.MatmulOptions): Tensor;
    softmax(axis?: number): Tensor;
    logSoftmax(axis?: number): Tensor;
    rmsNorm(weight?: Tensor | null, eps?: number): Tensor;
    layerNorm(weight?: Tensor | null, bias?: Tensor | null, eps?: number): Tensor;
    swiglu(): Tensor;
    crossEntropy(targets: Tensor, options?: nn.CrossEntropyOptions): Tensor;
    embedding(table: Tensor): Tensor;
    gather(axis: number, index: Tensor): Tensor;
    scatterAdd(axis: number, index: Tensor, src: Tensor): Tensor;
    reshape(shape: number[]): Tensor;
    view(shape: number[]): Tensor;
    flatten(startAxis?: number, endAxis?: number): Tensor;
    permute(dims: number[]): Tensor;
    transpose(axis0?: number, axis1?: number): Tensor;
    readonly T: Tensor;
    unsqueeze(axis: number): Tensor;
    squeeze(axes?: number | number[]): Tensor;
    expand(shape: number[]): Tensor;
    narrow(axis: number, start: number, length: number): Tensor;
    slice(begin: number[] | number, size?: number[] | number): Tensor;
    split(sizes: number | number[], axis?: number): Tensor[];
    chunk(n: number, axis?: number): Tensor[];
    concat(others: Tensor[], axis?: number): Tensor;
    contiguous(): Tensor;
    clone(): Tensor;
    to(target: Device | DType | { device?: Device; dtype?: DType }): Tensor;
    cast(dtype: DType): Tensor;
  }
}

const P = Tensor.prototype as unknown as Record<string, unknown>;
for (const name of ['add', 'sub', 'mul', 'div', 'pow', 'maximum', 'minimum', 'floorDiv', 'remainder', 'eq', 'ne', 'lt', 'le', 'gt', 'ge',
  'logicalAnd', 'logicalOr'] as const) {
  P[name] = function (this: Tensor, b: S) {
    return ew.binary(name, this, b);
  };
}
for (const name of ['neg', 'abs', 'exp', 'log', 'sqrt', 'rsqrt', 'sin', 'cos', 'tanh', 'sigmoid', 'relu', 'silu',
  'square', 'reciprocal', 'floor', 'ceil', 'round', 'sign', 'erf', 'log1p', 'expm1', 'logicalNot'] as const) {
  P[name] = function (this: Tensor) {
    return ew.unary(name, this);
  };
}
Object.assign(P, {
  gelu(this: Tensor, o?: { approximate?: 'none' | 'tanh' }) { return ew.gelu(this, o); },
  clamp(this: Tensor, lo?: number, hi?: number) { return ew.clamp(this, lo, hi); },
  where(this: Tensor, cond: Tensor, other: S) { return ew.where(cond, this, other); },
  sum(this: Tensor, a?: number | number[], o?: red.ReduceOptions) { return red.sum(this, a, o); },
  mean(this: Tensor, a?: number | number[], o?: red.ReduceOptions) { return red.mean(this, a, o); },
  max(this: Tensor, a?: number | number[], o?: red.ReduceOptions) { return red.max(this, a, o); },
  min(this: Tensor, a?: number | number[], o?: red.ReduceOptions) { return red.min(this, a, o); },
  argmax(this: Tensor, a?: number, o?: red.ReduceOptions) { return red.argmax(this, a, o); },
  argmin(this: Tensor, a?: number, o?: red.ReduceOptions) { return red.argmin(this, a, o); },
  cumsum(this: Tensor, a: number, o?: so.CumsumOptions) { return so.cumsum(this, a, o); },
  topk(this: Tensor, k: number, o?: so.TopkOptions) { return so.topk(this, k, o); },
  sort(this: Tensor, o?: so.SortOptions) { return so.sort(this, o); },
  argsort(this: Tensor, o?: so.SortOptions) { return so.argsort(this, o); },
  matmul(this: Tensor, b: Tensor, o?: la.MatmulOptions) { return la.matmul(this, b, o); },
  softmax(this: Tensor, a?: number) { return nn.softmax(this, a); },
  logSoftmax(this: Tensor, a?: number) { return nn.logSoftmax(this, a); },
  rmsNorm(this: Tensor, w?: Tensor | null, eps?: number) { return nn.rmsNorm(this, w, eps); },
  layerNorm(this: Tensor, w?: Tensor | null, b?: Tensor | null, eps?: number) { return nn.layerNorm(this, w, b, eps); },
  swiglu(this: Tensor) { return nn.swiglu(this); },
  crossEntropy(this: Tensor, t: Tensor, o?: nn.CrossEntropyOptions) { return nn.crossEntropy(this, t, o); },
  embedding(this: Tensor, table: Tensor) { return idx.embedding(this, table); },
  gather(this: Tensor, axis: number, index: Tensor) { return idx.gather(this, axis, index); },
  scatterAdd(this: Tensor, axis: number, index: Tensor, src: Tensor) { return idx.scatterAdd(this, axis, index, src); },
  reshape(this: Tensor, s: number[]) { return sh.reshape(this, s); },
  view(this: Tensor, s: number[]) { return sh.view(this, s); },
  flatten(this: Tensor, a?: number, b?: number) { return sh.flatten(this, a, b); },
  permute(this: Tensor, d: number[]) { return sh.permute(this, d); },
  transpose(this: Tensor, a?: number, b?: number) { return sh.transpose(this, a, b); },
  unsqueeze(this: Tensor, a: number) { return sh.unsqueeze(this, a); },
  squeeze(this: Tensor, a?: number | number[]) { return sh.squeeze(this, a); },
  expand(this: Tensor, s: number[]) { return sh.expand(this, s); },
  narrow(this: Tensor, a: number, s: number, l: number) { return sh.narrow(this, a, s, l); },
  slice(this: Tensor, b: number[] | number, s?: number[] | number) { return sh.slice(this, b, s); },
  split(this: Tensor, s: number | number[], a?: number) { return sh.split(this, s, a); },
  chunk(this: Tensor, n: number, a?: number) { return sh.chunk(this, n, a); },
  concat(this: Tensor, others: Tensor[], a?: number) { return sh.concat([this, ...(Array.isArray(others) ? others : [others])], a); },
  contiguous(this: Tensor) { return sh.contiguous(this); },
  clone(this: Tensor) { return sh.clone(this); },
  to(this: Tensor, t: Device | DType | { device?: Device; dtype?: DType }) { return sh.to(this, t); },
  cast(this: Tensor, d: DType) { return sh.cast(this, d); },
});
Object.defineProperty(Tensor.prototype, 'T', {
  get(this: Tensor) {
    return sh.transpose(this);
  },
});

// ---- in-place methods (x.add_(y).mul_(2)) ----
import * as ip from './ops/inplace';
declare module './tensor' {
  interface Tensor {
    copy_(src: Tensor): Tensor;
    fill_(value: number | boolean): Tensor;
    zero_(): Tensor;
    add_(y: S, options?: { alpha?: number }): Tensor;
    sub_(y: S, options?: { alpha?: number }): Tensor;
    mul_(y: S): Tensor;
    div_(y: S): Tensor;
  }
}
Object.assign(P, {
  copy_(this: Tensor, src: Tensor) { return ip.copy_(this, src); },
  fill_(this: Tensor, v: number | boolean) { return ip.fill_(this, v); },
  zero_(this: Tensor) { return ip.zero_(this); },
  add_(this: Tensor, y: S, o?: { alpha?: number }) { return ip.add_(this, y, o); },
  sub_(this: Tensor, y: S, o?: { alpha?: number }) { return ip.sub_(this, y, o); },
  mul_(this: Tensor, y: S) { return ip.mul_(this, y); },
  div_(this: Tensor, y: S) { return ip.div_(this, y); },
});

// ---- autograd methods ----
import * as ag from './autograd/engine';
declare module './tensor' {
  interface Tensor {
    /** Accumulates gradients of this tensor into the leaves' .grad (see autograd). */
    backward(grad?: Tensor, options?: ag.BackwardOptions): void;
    /** The same data with no autograd history (a new handle, shares storage). */
    detach(): Tensor;
  }
}
Object.assign(P, {
  backward(this: Tensor, g?: Tensor, o?: ag.BackwardOptions) { ag.backward(this, g, o); },
  detach(this: Tensor) { return this.alias(); },
});

// ---- attention methods (q.localAttention(k, v, {window})) ----
import * as at from './ops/attention';
declare module './tensor' {
  interface Tensor {
    globalAttention(k: Tensor, v: Tensor, options?: at.GlobalAttentionOptions): Tensor;
    localAttention(k: Tensor, v: Tensor, options: at.LocalAttentionOptions): Tensor;
    dualAttention(k: Tensor, v: Tensor, options: at.DualAttentionOptions): Tensor;
    rope(positions: Tensor, options?: { base?: number }): Tensor;
  }
}
Object.assign(P, {
  globalAttention(this: Tensor, k: Tensor, v: Tensor, o?: at.GlobalAttentionOptions) { return at.globalAttention(this, k, v, { ...o, returnLse: false }); },
  localAttention(this: Tensor, k: Tensor, v: Tensor, o: at.LocalAttentionOptions) { return at.localAttention(this, k, v, { ...o, returnLse: false }); },
  dualAttention(this: Tensor, k: Tensor, v: Tensor, o: at.DualAttentionOptions) { return at.dualAttention(this, k, v, { ...o, returnLse: false }); },
  rope(this: Tensor, pos: Tensor, o?: { base?: number }) { return at.rope(this, pos, o); },
});
