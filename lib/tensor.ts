// Tensor: a handle to a native strided view plus its shape, strides, dtype and device.
// Views (reshape, transpose, slice, ...) share storage; the buffer is freed when the last
// tensor on it is disposed. Ops are attached as methods by lib/ops (every op is both a
// function and a method).
import { DType, DTYPE_CODE, DTYPE_SIZE, TypedArray, decode } from './dtype';
import { Device } from './device';
import { DTypeError, DisposedError, MemoryError, ShapeError, ValueError, describe, toTypedError } from './errors';
import { MAX_ARRAY_ELEMENTS, checkReadBytes } from './limits';
import { Handle, native, op } from './native';

// `using t = ...` needs Symbol.dispose; Node 20 defines it only in some contexts (not in vm
// contexts such as jest's), so use Node's registered symbol where it is missing.
if (typeof (Symbol as { dispose?: symbol }).dispose !== 'symbol') {
  Object.defineProperty(Symbol, 'dispose', { value: Symbol.for('nodejs.dispose'), configurable: true });
}

// ---- lifetime: scopes and the GC safety net ----------------------------------------------------

interface Scope {
  tensors: Set<Tensor>;
}
const scopes: Scope[] = [];
let untrackedDepth = 0;
// (not scopes[scopes.length - 1]: scopes[-1] is a property lookup by the name "-1", slow)
const currentScope = (): Scope | undefined => (scopes.length ? scopes[scopes.length - 1] : undefined);

/**
 * Runs fn with tensor creation outside every tidy() scope: for tensors whose lifetime the
 * library manages itself (gradients, saved tensors of the autograd tape, optimizer state).
 */
export function untracked<T>(fn: () => T): T {
  ++untrackedDepth;
  try {
    return fn();
  } finally {
    --untrackedDepth;
  }
}
const kept = new WeakSet<Tensor>();

// The GC safety net: when a tensor is garbage-collected without dispose(), its native handle
// is released by `registry`. Registering costs more than a tiny op, and most tensors are
// disposed soon after they are made (tidy, dispose, the saved tensors of a released tape node),
// so a new tensor waits in `nursery` (a plain array) and is registered only if it is still live
// when the nursery is swept: at the next turn of the event loop, or sooner, after
// NURSERY_TENSORS new tensors or NURSERY_BYTES of new tensors' elements. The nursery holds its
// tensors strongly, so an undisposed tensor becomes collectable at most one sweep later than
// it would have.
const registry = new FinalizationRegistry<Handle>((h) => {
  try {
    native.release(h);
  } catch {
    // the addon may be unloading at exit
  }
});
const NURSERY_TENSORS = 256;
const NURSERY_BYTES = 64 * 1024 * 1024;
let nursery: Tensor[] = [];
let nurseryBytes = 0;
let sweepPending = false;  // a setImmediate will sweep

function sweepNursery(): void {
  const list = nursery;
  nursery = [];
  nurseryBytes = 0;
  for (let i = 0; i < list.length; ++i) list[i]._register();
}

function sweepLater(): void {
  sweepPending = false;
  sweepNursery();
}

function addToNursery(t: Tensor, bytes: number): void {
  nursery.push(t);
  nurseryBytes += bytes;
  if (nursery.length >= NURSERY_TENSORS || nurseryBytes >= NURSERY_BYTES) {
    sweepNursery();
  } else if (!sweepPending) {
    sweepPending = true;
    // (unref: a pending sweep does not keep the process alive)
    setImmediate(sweepLater).unref();
  }
}

// Set by makeTensor for the constructor call it makes: the arrays are frozen already.
let trusted = false;

/**
 * @internal new Tensor(...) for the library's ops, whose shape and strides are frozen arrays
 * already (a tensor's own, shared, or fresh ones frozen for it): no checks, no copies.
 */
export function makeTensor(handle: Handle, shape: readonly number[], strides: readonly number[], offset: number,
                           dtype: DType, device: Device, storage?: StorageRef): Tensor {
  trusted = true;
  return new Tensor(handle, shape, strides, offset, dtype, device, storage);
}

/** Runs fn; disposes every tensor it created except those returned (in any nesting) or kept. */
export function tidy<T>(fn: () => T): T;
export function tidy<T>(name: string, fn: () => T): T;
export function tidy<T>(a: string | (() => T), b?: () => T): T {
  const fn = typeof a === 'function' ? a : b;
  if (typeof fn !== 'function' || (typeof a !== 'function' && typeof a !== 'string')) {
    throw new ValueError(`tidy: Expected a function (optionally after a name) but received ${describe(a)}${b === undefined ? '' : ` and ${describe(b)}`}`);
  }
  const scope: Scope = { tensors: new Set() };
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
    if (result instanceof Promise) {
      throw new TypeError('tidy: fn must be synchronous (an async function cannot be tidied; dispose explicitly)');
    }
  } catch (e) {
    scopes.pop();
    for (const t of scope.tensors) if (!kept.has(t)) t.dispose();
    throw e;
  }
  scopes.pop();
  const survivors = new Set<Tensor>();
  collectTensors(result, survivors);
  const parent = currentScope();
  for (const t of scope.tensors) {
    if (survivors.has(t) || kept.has(t)) {
      if (parent && !kept.has(t)) parent.tensors.add(t);
    } else {
      t.dispose();
    }
  }
  return result;
}

function collectTensors(v: unknown, out: Set<Tensor>, depth = 0): void {
  if (depth > 8 || v === null || typeof v !== 'object') return;
  if (v instanceof Tensor) {
    out.add(v);
  } else if (Array.isArray(v)) {
    for (const x of v) collectTensors(x, out, depth + 1);
  } else if (v instanceof Map) {
    for (const x of v.values()) collectTensors(x, out, depth + 1);
  } else if (Object.getPrototypeOf(v) === Object.prototype) {
    for (const x of Object.values(v)) collectTensors(x, out, depth + 1);
  }
}

/** Marks a tensor to outlive every enclosing tidy() (it must then be disposed by hand). */
export function keep<T extends Tensor>(t: T): T {
  if (!(t instanceof Tensor)) throw new ValueError(`keep: Expected a Tensor but received ${describe(t)}`);
  kept.add(t);
  return t;
}

/** Disposes a tensor, or every tensor in an array or object. */
export function dispose(v: unknown): void {
  const s = new Set<Tensor>();
  collectTensors(v, s);
  for (const t of s) t.dispose();
}

// ---- the tensor ------------------------------------------------------------------------------------

export type NestedArray = number | boolean | NestedArray[];

/** @internal What a tensor knows of the tape node that made it (lib/tape.ts). */
export interface GradNode {
  readonly name: string;
  onOutputDisposed(): void;
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let n = 1;
  for (let i = shape.length - 1; i >= 0; --i) {
    s[i] = n;
    n *= shape[i];
  }
  return s;
}

export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (let i = 0; i < shape.length; ++i) n *= shape[i];
  return n;
}

// A tensor's shape and strides are frozen arrays. Freezing costs about as much as a tiny op's
// native call, and V8's array builtins (slice, filter, some, every) take slow paths on frozen
// arrays, so the hot paths share frozen arrays between tensors instead of copying them (a frozen
// array cannot change) and copy with loops.

/** @internal A plain copy of a (frozen) array: not Array.prototype.slice, slow on frozen arrays. */
export function copyOf(a: readonly number[]): number[] {
  const r: number[] = [];
  for (let i = 0; i < a.length; ++i) r.push(a[i]);
  return r;
}

/** @internal a itself when it is frozen (shared: it cannot change), else a frozen copy. */
export function frozen(a: readonly number[]): readonly number[] {
  return Object.isFrozen(a) ? a : Object.freeze(copyOf(a));
}

// the frozen row-major strides of each frozen shape seen (shapes are shared between tensors)
const rowMajor = new WeakMap<readonly number[], readonly number[]>();

/** @internal The row-major strides of a frozen shape, frozen, made once per shape array. */
export function rowMajorStrides(shape: readonly number[]): readonly number[] {
  let s = rowMajor.get(shape);
  if (s === undefined) {
    s = Object.freeze(contiguousStrides(shape));
    rowMajor.set(shape, s);
  }
  return s;
}

/**
 * @internal What every view of one storage shares: in-place ops bump `version`, so autograd can
 * tell when a tensor it saved for a backward pass was overwritten afterwards.
 */
export class StorageRef {
  version = 0;
}

// The elements a read returned: bfloat16 comes back widened to float32 by the addon.
const READ_ARRAY: Record<DType, { name: string; of: (x: unknown) => boolean }> = {
  float32: { name: 'Float32Array', of: (x) => x instanceof Float32Array },
  bfloat16: { name: 'Float32Array', of: (x) => x instanceof Float32Array },
  float64: { name: 'Float64Array', of: (x) => x instanceof Float64Array },
  int32: { name: 'Int32Array', of: (x) => x instanceof Int32Array },
  bool: { name: 'Uint8Array', of: (x) => x instanceof Uint8Array },
};

/** Checks the destination of dataSync(into) / data(into): the dtype's read array type, `size` elements. */
function checkReadInto(into: unknown, t: Tensor, op: string): void {
  const want = READ_ARRAY[t.dtype];
  if (!want.of(into)) {
    throw new DTypeError(`${op}: Expected a ${want.name} for a ${t.dtype} tensor but received ${describe(into)}`);
  }
  const n = (into as TypedArray).length;
  if (n !== t.size) {
    throw new ShapeError(`${op}: Expected ${t.size} elements (shape [${t.shape.join(', ')}]) but the array holds ${n}`);
  }
}

function decodeRead(buf: ArrayBuffer, dtype: DType): TypedArray {
  return dtype === 'bfloat16' ? new Float32Array(buf) : decode(buf, dtype);
}

export class Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  /** Element strides of this view (0 where broadcast). */
  readonly strides: readonly number[];
  /** Element offset of this view into its storage. */
  readonly offset: number;
  /** @internal the native handle */
  readonly handle: Handle;
  /** @internal shared by the views of this tensor's storage */
  readonly storage: StorageRef;
  private _disposed = false;
  /** Registered with the GC safety net (see `nursery`). */
  private _registered = false;

  /** @internal Use tensor(), zeros(), ... to make tensors. */
  constructor(handle: Handle, shape: readonly number[], strides: readonly number[], offset: number, dtype: DType,
              device: Device, storage?: StorageRef) {
    if (trusted) {
      trusted = false;
      this.shape = shape;
      this.strides = strides;
    } else {
      if (typeof handle !== 'number' || !Array.isArray(shape) || !Array.isArray(strides) || typeof offset !== 'number') {
        throw new ValueError('Tensor: tensors are made by tensor(), zeros(), randn() and the ops, not by new Tensor()');
      }
      this.shape = frozen(shape);
      this.strides = frozen(strides);
    }
    this.handle = handle;
    this.offset = offset;
    this.dtype = dtype;
    this.device = device;
    this.storage = storage ?? new StorageRef();
    addToNursery(this, sizeOf(this.shape) * DTYPE_SIZE[dtype]);
    const scope = currentScope();
    if (scope && untrackedDepth === 0) scope.tensors.add(this);
  }

  /** @internal Puts this tensor under the GC safety net (the nursery's sweep calls it). */
  _register(): void {
    if (this._disposed || this._registered) return;
    this._registered = true;
    registry.register(this, this.handle, this);
  }

  // ---- autograd state (lib/tape.ts records, lib/autograd/engine.ts runs backward) ----
  private _requiresGrad = false;
  private _gradFn: GradNode | null = null;
  /** The accumulated gradient of a leaf tensor after backward(); null before. */
  grad: Tensor | null = null;

  /** Whether gradients flow to this tensor (set it on parameters and inputs). */
  get requiresGrad(): boolean {
    return this._requiresGrad;
  }
  set requiresGrad(v: boolean) {
    if (v) {
      if (this.dtype !== 'float32' && this.dtype !== 'float64' && this.dtype !== 'bfloat16') {
        throw new DTypeError(`requiresGrad: only float tensors can require gradients, this one is ${this.dtype}`);
      }
    } else if (this._gradFn) {
      throw new ValueError('requiresGrad: cannot turn off gradients of a non-leaf tensor; use detach()');
    }
    this._requiresGrad = !!v;
  }
  /** Sets requiresGrad and returns this, for chaining: randn([3]).requiresGrad_(). */
  requiresGrad_(v = true): this {
    this.requiresGrad = v;
    return this;
  }
  /** The node that produced this tensor (null for leaves and tensors outside autograd). */
  get gradFn(): GradNode | null {
    return this._gradFn;
  }
  /** True for tensors not produced by a recorded op. */
  get isLeaf(): boolean {
    return this._gradFn === null;
  }
  /** @internal */
  setGradFn(n: GradNode): void {
    this._gradFn = n;
    this._requiresGrad = true;
  }
  /** A new handle on the same storage and layout (no copy, no autograd history). */
  alias(): Tensor {
    this.checkLive('alias');
    try {
      return makeTensor(native.alias(this.handle), this.shape, this.strides, this.offset, this.dtype, this.device, this.storage);
    } catch (e) {
      throw toTypedError(e);
    }
  }

  /** Number of elements. */
  get size(): number {
    return sizeOf(this.shape);
  }
  get ndim(): number {
    return this.shape.length;
  }
  get rank(): number {
    return this.shape.length;
  }
  get isDisposed(): boolean {
    return this._disposed;
  }
  /** Bytes of this view's elements (not of the whole storage). */
  get byteSize(): number {
    return this.size * DTYPE_SIZE[this.dtype];
  }

  /** True when the elements are laid out row-major without gaps. */
  get isContiguous(): boolean {
    let expect = 1;
    for (let i = this.shape.length - 1; i >= 0; --i) {
      if (this.shape[i] !== 1 && this.strides[i] !== expect) return false;
      expect *= this.shape[i];
    }
    return true;
  }

  /** Frees this tensor's reference to its buffer now. Safe to call twice. */
  dispose(): void {
    if (this._disposed) return;
    this._disposed = true;
    // The node stays while a later node takes this tensor as an input (the graph still runs
    // through it); otherwise its saved tensors are freed now (lib/tape.ts).
    this._gradFn?.onOutputDisposed();
    if (this.grad) {
      this.grad.dispose();
      this.grad = null;
    }
    if (this._registered) registry.unregister(this);
    native.release(this.handle);
    const scope = currentScope();
    if (scope) scope.tensors.delete(this);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /**
   * @internal Makes this tensor take over src's data (handle, layout, dtype, device) and leaves
   * src disposed. Module.to() uses it so a parameter keeps its identity when it is moved or
   * cast, as in PyTorch: optimizers and user code holding it see the new data.
   */
  takeData(src: Tensor): void {
    this.checkLive('takeData');
    src.checkLive('takeData');
    if (src === this) return;
    if (this._registered) registry.unregister(this);
    native.release(this.handle);
    if (src._registered) registry.unregister(src);
    const self = this as unknown as Record<string, unknown>;
    self.handle = src.handle;
    self.shape = src.shape;
    self.strides = src.strides;
    self.offset = src.offset;
    self.dtype = src.dtype;
    self.device = src.device;
    self.storage = src.storage;
    this._registered = true;
    registry.register(this, this.handle, this);
    src._disposed = true;  // the handle is ours now
    for (const s of scopes) s.tensors.delete(src);
  }

  /** @internal Throws DisposedError when used after dispose(). */
  checkLive(what = 'tensor'): void {
    if (this._disposed) throw new DisposedError(`${what}: the tensor was disposed`);
  }

  /** Checks a read of this tensor may go ahead; true when it returns bfloat16 widened to float32. */
  private checkRead(op: string): boolean {
    this.checkLive(op);
    const bytes = this.size * DTYPE_SIZE[this.dtype];
    const widen = this.dtype === 'bfloat16';
    checkReadBytes(op, widen ? 2 * bytes : bytes);
    return widen;
  }


  /**
   * The elements in row-major order, as of this call (later in-place updates do not show). Waits
   * without blocking the event loop for the ops this tensor depends on, and raises the failure of
   * one of them. At most MAX_READ_BYTES (4 GiB) per read.
   *
   * With `into` (the read's array type, exactly `size` elements, as for dataSync(into)) the
   * elements are written there and the promise resolves to `into`, so a loop of awaited reads
   * allocates no ArrayBuffer (none for the collector to chase) and touches no fresh page. The
   * copy into `into` runs on the JavaScript thread (about a memcpy: 0.2-0.4 ms for 8 MiB), at
   * once when nothing queued writes the tensor, else once the read staged in a host block lands.
   * `into` must not be detached (transferred) before the promise settles: it then rejects with a
   * ValueError.
   */
  data(): Promise<TypedArray>;
  data<A extends TypedArray>(into: A): Promise<A>;
  async data(into?: TypedArray): Promise<TypedArray> {
    const widen = this.checkRead(into === undefined ? 'data()' : 'data(into)');
    if (into !== undefined) checkReadInto(into, this, 'data(into)');
    try {
      if (into !== undefined) return await native.read(this.handle, widen, into);
      return decodeRead(await native.read(this.handle, widen), this.dtype);
    } catch (e) {
      throw toTypedError(e);
    }
  }

  /**
   * The elements in row-major order, synchronously (waits for the ops this tensor depends on).
   * With `into` (the read's array type: Float32Array for float32 and bfloat16, Float64Array,
   * Int32Array, Uint8Array for bool; exactly `size` elements) the elements are written there
   * and `into` is returned: a loop that reads into the same array touches no fresh memory.
   */
  dataSync<A extends TypedArray = TypedArray>(into?: A): A {
    const widen = this.checkRead('dataSync()');
    if (into !== undefined) checkReadInto(into, this, 'dataSync(into)');
    try {
      if (into !== undefined) return native.readSync(this.handle, widen, into);
      return decodeRead(native.readSync(this.handle, widen), this.dtype) as A;
    } catch (e) {
      throw toTypedError(e);
    }
  }

  private checkArraySize(op: string): void {
    if (this.size > MAX_ARRAY_ELEMENTS) {
      throw new MemoryError(`${op}: ${this.size} elements are too many for nested JavaScript arrays (at most ${MAX_ARRAY_ELEMENTS}); use data()`);
    }
  }

  /** The elements as nested arrays (at most MAX_ARRAY_ELEMENTS of them). */
  async array(): Promise<NestedArray> {
    this.checkArraySize('array()');
    return nest(await this.data(), this.shape, this.dtype);
  }
  arraySync(): NestedArray {
    this.checkArraySize('arraySync()');
    return nest(this.dataSync(), this.shape, this.dtype);
  }

  /** The value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) {
      throw new ShapeError(`item(): expected a tensor with one element but received shape [${this.shape.join(', ')}]`);
    }
    return Number(this.dataSync()[0]);
  }

  toString(): string {
    if (this._disposed) return `Tensor(disposed, shape=[${this.shape.join(', ')}], dtype=${this.dtype})`;
    return formatTensor(this);
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }
}

function nest(data: TypedArray, shape: readonly number[], dtype: DType): NestedArray {
  const conv = dtype === 'bool' ? (v: number) => v !== 0 : (v: number) => v;
  if (shape.length === 0) return conv(data[0]);
  let i = 0;
  const build = (d: number): NestedArray[] => {
    const r: NestedArray[] = [];
    for (let k = 0; k < shape[d]; ++k) r.push(d === shape.length - 1 ? conv(data[i++]) : build(d + 1));
    return r;
  };
  return build(0);
}

const EDGE = 3;

// The elements printing shows, as a small contiguous tensor: along each dimension longer than
// 2 * EDGE only the first and last EDGE entries (copied block by block), so printing a huge
// tensor reads a few hundred elements, not all of it.
function summaryData(t: Tensor): TypedArray {
  const big = t.shape.map((n) => n > 2 * EDGE);
  if (!big.some(Boolean)) return t.dataSync();
  const small = t.shape.map((n, d) => (big[d] ? 2 * EDGE : n));
  const temps: Tensor[] = [];
  const wrap = (h: Handle, shape: number[], strides: readonly number[], offset: number) => {
    const v = untracked(() => new Tensor(h, shape, strides, offset, t.dtype, t.device));
    temps.push(v);
    return v;
  };
  const out = wrap(native.empty(small, DTYPE_CODE[t.dtype], t.device === 'cpu' ? 0 : 1), small, contiguousStrides(small), 0);
  try {
    const dims = t.shape.map((_, d) => d).filter((d) => big[d]);
    const outStrides = contiguousStrides(small);
    for (let mask = 0; mask < 1 << dims.length; ++mask) {
      // block `mask`: the tail along dims whose bit is set, the head along the others
      let srcOffset = t.offset;
      let dstOffset = 0;
      const shape = small.slice();
      dims.forEach((d, i) => {
        shape[d] = EDGE;
        if (mask & (1 << i)) {
          srcOffset += (t.shape[d] - EDGE) * t.strides[d];
          dstOffset += EDGE * outStrides[d];
        }
      });
      const src = wrap(native.view(t.handle, shape, t.strides as number[], srcOffset), shape, t.strides, srcOffset);
      const dst = wrap(native.view(out.handle, shape, outStrides, dstOffset), shape, outStrides, dstOffset);
      op.copy({ out: dst, x: src });
    }
    return out.dataSync();
  } finally {
    for (const v of temps) v.dispose();
  }
}

// Readable printing: at most 6 entries per dimension (first 3 and last 3).
function formatTensor(t: Tensor): string {
  const data = summaryData(t);
  const isInt = t.dtype === 'int32' || t.dtype === 'bool';
  const fmt = (v: number) =>
    t.dtype === 'bool' ? (v ? 'true' : 'false') : isInt ? String(v) : Number.isInteger(v) && Math.abs(v) < 1e6 ? v.toFixed(1) : Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(4) : v.toFixed(4);
  // indices into the summary: along a long dimension 0..EDGE-1, then "...", then EDGE..2*EDGE-1
  const small = t.shape.map((n) => (n > 2 * EDGE ? 2 * EDGE : n));
  const strides = contiguousStrides(small);
  const edge = EDGE;
  const rec = (d: number, base: number, indent: string): string => {
    if (t.shape.length === 0) return fmt(data[0]);
    const n = t.shape[d];
    const idx: Array<number | null> = [];
    if (n > 2 * edge) {
      for (let k = 0; k < edge; ++k) idx.push(k);
      idx.push(null);
      for (let k = edge; k < 2 * edge; ++k) idx.push(k);
    } else {
      for (let k = 0; k < n; ++k) idx.push(k);
    }
    if (d === t.shape.length - 1) {
      return '[' + idx.map((k) => (k === null ? '...' : fmt(data[base + k]))).join(', ') + ']';
    }
    const sep = ',\n' + indent + ' ';
    return '[' + idx.map((k) => (k === null ? '...' : rec(d + 1, base + k * strides[d], indent + ' '))).join(sep) + ']';
  };
  return `Tensor(${rec(0, 0, '       ')}, shape=[${t.shape.join(', ')}], dtype=${t.dtype}, device=${t.device})`;
}
