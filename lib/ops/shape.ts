// Views and layout: reshape, transpose, permute, slice, squeeze/unsqueeze, expand, concat,
// split, contiguous, and moving between devices and dtypes. Views share storage (no copy);
// ops that need contiguous memory copy only when the layout asks for it.
import { DType, checkDType } from '../dtype';
import { Device, checkDevice, requireCuda } from '../device';
import { DTypeError, DeviceError, ShapeError, ValueError, describe } from '../errors';
import { op } from '../native';
import { Tensor, contiguousStrides, copyOf, rowMajorStrides, sizeOf } from '../tensor';
import { allocLike, checkShape, checkTensor, empty, normAxis, viewOf } from './util';
import { checkElements } from '../limits';
import { record } from '../tape';

// reshape-like views: the gradient takes the source's shape back.
function asShapeOf(out: Tensor, x: Tensor, name: string): Tensor {
  return record(out, name, [x], [], { shape: x.shape });
}

/** A copy with contiguous layout, or the tensor itself (a new handle) when already contiguous. */
export function contiguous(x: Tensor): Tensor {
  checkTensor(x, 'contiguous', 'x');
  let out: Tensor;
  if (x.isContiguous) {
    out = viewOf(x, x.shape, rowMajorStrides(x.shape), x.offset);
  } else {
    out = allocLike(x);
    op.copy({ out, x });
  }
  return record(out, 'contiguous', [x], []);
}

/** A copy that owns its storage. */
export function clone(x: Tensor): Tensor {
  checkTensor(x, 'clone', 'x');
  const out = allocLike(x);
  op.copy({ out, x });
  return record(out, 'clone', [x], []);
}

function resolveShape(op: string, shape: number[], size: number): number[] {
  if (!Array.isArray(shape)) throw new ShapeError(`${op}: Expected an array for shape but received ${describe(shape)}`);
  const s = copyOf(shape);
  const infer = s.indexOf(-1);
  if (infer !== s.lastIndexOf(-1)) throw new ShapeError(`${op}: at most one dimension can be -1, got [${s.join(', ')}]`);
  if (infer >= 0) {
    const rest = sizeOf(s.filter((_, i) => i !== infer));
    if (rest === 0 || size % rest !== 0) throw new ShapeError(`${op}: cannot infer -1 in [${s.join(', ')}] for ${size} elements`);
    s[infer] = size / rest;
  }
  checkShape(s, op);
  if (sizeOf(s) !== size) throw new ShapeError(`${op}: shape [${s.join(', ')}] has ${sizeOf(s)} elements, the tensor has ${size}`);
  return s;
}

/** Same elements, new shape (one dimension may be -1). A view when the layout allows, else a copy. */
export function reshape(x: Tensor, shape: number[]): Tensor {
  checkTensor(x, 'reshape', 'x');
  const s = resolveShape('reshape', shape, x.size);
  if (x.isContiguous) return asShapeOf(viewOf(x, s, contiguousStrides(s), x.offset), x, 'reshape');
  const c = contiguous(x);
  try {
    return asShapeOf(viewOf(c, s, contiguousStrides(s), 0), c, 'reshape');
  } finally {
    c.dispose();
  }
}

/** Like reshape, but never copies: throws when x is not contiguous. */
export function view(x: Tensor, shape: number[]): Tensor {
  checkTensor(x, 'view', 'x');
  const s = resolveShape('view', shape, x.size);
  if (!x.isContiguous) throw new ShapeError('view: the tensor is not contiguous; use reshape() or contiguous() first');
  return asShapeOf(viewOf(x, s, contiguousStrides(s), x.offset), x, 'view');
}

export function flatten(x: Tensor, startAxis = 0, endAxis = -1): Tensor {
  checkTensor(x, 'flatten', 'x');
  if (x.ndim === 0) return reshape(x, [1]);
  const a = normAxis(startAxis, x.ndim, 'flatten', 'startAxis');
  const b = normAxis(endAxis, x.ndim, 'flatten', 'endAxis');
  if (b < a) throw new ValueError(`flatten: endAxis (${endAxis}) is before startAxis (${startAxis})`);
  const s = [...x.shape.slice(0, a), sizeOf(x.shape.slice(a, b + 1)), ...x.shape.slice(b + 1)];
  return reshape(x, s);
}

/** Reorders dimensions: out.shape[i] = x.shape[dims[i]]. A view. */
export function permute(x: Tensor, dims: number[]): Tensor {
  checkTensor(x, 'permute', 'x');
  if (!Array.isArray(dims) || dims.length !== x.ndim) {
    throw new ShapeError(`permute: Expected ${x.ndim} dims but received ${describe(dims)}`);
  }
  const d = dims.map((v) => normAxis(v, x.ndim, 'permute', 'dims'));
  if (new Set(d).size !== d.length) throw new ValueError(`permute: dims [${dims.join(', ')}] repeat an axis`);
  const out = viewOf(x, d.map((i) => x.shape[i]), d.map((i) => x.strides[i]), x.offset);
  const inverse = new Array<number>(d.length);
  d.forEach((v, i) => (inverse[v] = i));
  return record(out, 'permute', [x], [], { inverse });
}

/** Swaps two dimensions (default the last two). A view. */
export function transpose(x: Tensor, axis0 = -2, axis1 = -1): Tensor {
  checkTensor(x, 'transpose', 'x');
  if (x.ndim < 2 && axis0 === -2 && axis1 === -1) return asShapeOf(viewOf(x, x.shape, x.strides, x.offset), x, 'transpose');
  const a = normAxis(axis0, x.ndim, 'transpose', 'axis0');
  const b = normAxis(axis1, x.ndim, 'transpose', 'axis1');
  const dims = x.shape.map((_, i) => i);
  dims[a] = b;
  dims[b] = a;
  return permute(x, dims);
}

/** Inserts a size-1 dimension at axis. */
export function unsqueeze(x: Tensor, axis: number): Tensor {
  checkTensor(x, 'unsqueeze', 'x');
  const a = normAxis(axis, x.ndim + 1, 'unsqueeze');
  const shape = copyOf(x.shape);
  const strides = copyOf(x.strides);
  shape.splice(a, 0, 1);
  strides.splice(a, 0, a < x.ndim ? x.strides[a] * x.shape[a] : 1);
  return asShapeOf(viewOf(x, shape, strides, x.offset), x, 'unsqueeze');
}

/** Removes size-1 dimensions (all, or the given axes, which must have size 1). */
export function squeeze(x: Tensor, axes?: number | number[]): Tensor {
  checkTensor(x, 'squeeze', 'x');
  const list = axes === undefined ? x.shape.map((d, i) => (d === 1 ? i : -1)).filter((i) => i >= 0)
    : (Array.isArray(axes) ? axes : [axes]).map((a) => normAxis(a, x.ndim, 'squeeze', 'axes'));
  for (const a of list) {
    if (x.shape[a] !== 1) throw new ShapeError(`squeeze: axis ${a} has size ${x.shape[a]}, not 1`);
  }
  const keep = x.shape.map((_, i) => !list.includes(i));
  const shape: number[] = [];
  const strides: number[] = [];
  for (let i = 0; i < x.ndim; ++i) {
    if (!keep[i]) continue;
    shape.push(x.shape[i]);
    strides.push(x.strides[i]);
  }
  return asShapeOf(viewOf(x, shape, strides, x.offset), x, 'squeeze');
}

/** Broadcasts to a larger shape without copying (stride 0 on repeated dimensions). */
export function expand(x: Tensor, shape: number[]): Tensor {
  checkTensor(x, 'expand', 'x');
  if (!Array.isArray(shape)) throw new ShapeError(`expand: Expected an array of sizes for shape but received ${describe(shape)}`);
  checkShape(shape.map((d) => (d === -1 ? 0 : d)), 'expand');
  if (shape.length < x.ndim) throw new ShapeError(`expand: cannot expand [${x.shape.join(', ')}] to fewer dimensions [${shape.join(', ')}]`);
  const off = shape.length - x.ndim;
  const s: number[] = [];
  const st: number[] = [];
  for (let i = 0; i < shape.length; ++i) {
    const xd = i - off;
    const want = shape[i] === -1 && xd >= 0 ? x.shape[xd] : shape[i];
    if (xd < 0) {
      s.push(want);
      st.push(0);
    } else if (x.shape[xd] === want) {
      s.push(want);
      st.push(x.strides[xd]);
    } else if (x.shape[xd] === 1) {
      s.push(want);
      st.push(0);
    } else {
      throw new ShapeError(`expand: cannot expand [${x.shape.join(', ')}] to [${shape.join(', ')}] (dimension ${i})`);
    }
  }
  checkElements('expand', s);
  return record(viewOf(x, s, st, x.offset), 'expand', [x], [], { shape: x.shape });
}
export const broadcastTo = expand;

/** length elements of axis starting at start. A view. */
export function narrow(x: Tensor, axis: number, start: number, length: number): Tensor {
  checkTensor(x, 'narrow', 'x');
  const a = normAxis(axis, x.ndim, 'narrow');
  const n = x.shape[a];
  if (!Number.isInteger(start) || start < -n || start > n) throw new ShapeError(`narrow: start ${describe(start)} is outside [${-n}, ${n}] for axis ${a} of size ${n}`);
  const s0 = start < 0 ? start + n : start;
  if (!Number.isInteger(length) || length < 0 || s0 + length > n) {
    throw new ShapeError(`narrow: length ${describe(length)} from ${s0} exceeds axis ${a} of size ${n}`);
  }
  const shape = copyOf(x.shape);
  shape[a] = length;
  const begin = x.shape.map((_, i) => (i === a ? s0 : 0));
  return record(viewOf(x, shape, x.strides, x.offset + s0 * x.strides[a]), 'narrow', [x], [], { shape: x.shape, begin });
}

/**
 * A box of x: begin[i] .. begin[i] + size[i] on each axis (size -1: to the end; missing
 * entries take the whole axis), as tf.slice. A view.
 */
export function slice(x: Tensor, begin: number[] | number, size?: number[] | number): Tensor {
  checkTensor(x, 'slice', 'x');
  const b = Array.isArray(begin) ? begin : [begin];
  const sz = size === undefined ? [] : Array.isArray(size) ? size : [size];
  for (const [list, arg] of [[b, 'begin'], [sz, 'size']] as const) {
    const bad = list.find((v) => !Number.isInteger(v));
    if (bad !== undefined) throw new ShapeError(`slice: Expected integers for ${arg} but received ${describe(bad)}`);
  }
  if (b.length > x.ndim) throw new ShapeError(`slice: begin has ${b.length} entries for a ${x.ndim}-d tensor`);
  const shape = copyOf(x.shape);
  let offset = x.offset;
  const starts: number[] = [];
  for (let i = 0; i < x.ndim; ++i) {
    const n = x.shape[i];
    let s = b[i] ?? 0;
    if (!Number.isInteger(s) || s < -n || s > n) throw new ShapeError(`slice: begin[${i}] = ${s} is outside [${-n}, ${n}]`);
    if (s < 0) s += n;
    let len = sz[i] ?? -1;
    if (len === -1) len = n - s;
    if (!Number.isInteger(len) || len < 0 || s + len > n) throw new ShapeError(`slice: size[${i}] = ${sz[i]} from ${s} exceeds ${n}`);
    shape[i] = len;
    offset += s * x.strides[i];
    starts.push(s);
  }
  return record(viewOf(x, shape, x.strides, offset), 'slice', [x], [], { shape: x.shape, begin: starts });
}

/** Joins tensors along an existing axis. */
export function concat(tensors: Tensor[], axis = 0): Tensor {
  if (!Array.isArray(tensors) || tensors.length === 0) throw new ValueError(`concat: Expected a non-empty array of tensors but received ${describe(tensors)}`);
  tensors.forEach((t, i) => checkTensor(t, 'concat', `tensors[${i}]`));
  const first = tensors[0];
  const a = normAxis(axis, first.ndim, 'concat');
  let total = 0;
  tensors.forEach((t, i) => {
    if (t.ndim !== first.ndim || t.shape.some((d, k) => k !== a && d !== first.shape[k])) {
      throw new ShapeError(`concat: tensors[${i}] has shape [${t.shape.join(', ')}], which does not match [${first.shape.join(', ')}] outside axis ${a}`);
    }
    if (t.dtype !== first.dtype) throw new DTypeError(`concat: tensors[${i}] is ${t.dtype}, tensors[0] is ${first.dtype}`);
    if (t.device !== first.device) throw new DeviceError(`concat: tensors[${i}] is on ${t.device}, tensors[0] on ${first.device}`);
    total += t.shape[a];
  });
  const shape = copyOf(first.shape);
  shape[a] = total;
  const out = empty(shape, first.dtype, first.device);
  let at = 0;
  const starts: number[] = [];
  for (const t of tensors) {
    const part = viewOf(out, t.shape.map((d, k) => (k === a ? t.shape[a] : d)), out.strides, at * out.strides[a]);
    try {
      op.copy({ out: part, x: t });
    } finally {
      part.dispose();
    }
    starts.push(at);
    at += t.shape[a];
  }
  return record(out, 'concat', tensors, [], { axis: a, starts, sizes: tensors.map((t) => t.shape[a]) });
}

/** Joins tensors along a new axis. */
export function stack(tensors: Tensor[], axis = 0): Tensor {
  if (!Array.isArray(tensors) || tensors.length === 0) throw new ValueError(`stack: Expected a non-empty array of tensors but received ${describe(tensors)}`);
  const parts = tensors.map((t) => unsqueeze(t, axis));
  try {
    return concat(parts, axis);
  } finally {
    parts.forEach((p) => p.dispose());
  }
}

function pieces(x: Tensor, a: number, list: number[]): Tensor[] {
  const r: Tensor[] = [];
  let at = 0;
  for (const s of list) {
    r.push(narrow(x, a, at, s));
    at += s;
  }
  return r;
}

/**
 * Splits along axis as torch.split does: into pieces of `size` (the last one smaller when the
 * axis does not divide), or of the listed sizes, which must add up to the axis. Views. To cut
 * into n pieces, use chunk(x, n).
 */
export function split(x: Tensor, sizes: number | number[], axis = 0): Tensor[] {
  checkTensor(x, 'split', 'x');
  const a = normAxis(axis, x.ndim, 'split');
  const n = x.shape[a];
  if (typeof sizes === 'number') {
    if (!Number.isInteger(sizes) || sizes <= 0) throw new ValueError(`split: Expected a positive integer piece size but received ${describe(sizes)} (to cut into n pieces, use chunk)`);
    const list: number[] = [];
    for (let at = 0; at < n; at += sizes) list.push(Math.min(sizes, n - at));
    return pieces(x, a, list);
  }
  if (!Array.isArray(sizes) || sizes.some((v) => !Number.isInteger(v) || v < 0)) throw new ValueError(`split: Expected a size or a list of sizes but received ${describe(sizes)}`);
  if (sizes.reduce((s, v) => s + v, 0) !== n) throw new ShapeError(`split: sizes [${sizes.join(', ')}] do not add up to ${n}, the size of axis ${a}`);
  return pieces(x, a, sizes);
}

/**
 * Cuts along axis into n pieces as torch.chunk does: each of ceil(size / n) (the last one
 * smaller, and fewer than n pieces when the axis is too short to give n). Views.
 */
export function chunk(x: Tensor, n: number, axis = 0): Tensor[] {
  checkTensor(x, 'chunk', 'x');
  if (!Number.isInteger(n) || n <= 0) throw new ValueError(`chunk: Expected a positive integer number of chunks but received ${describe(n)}`);
  const a = normAxis(axis, x.ndim, 'chunk');
  const len = x.shape[a];
  return split(x, Math.max(1, Math.ceil(len / n)), a);
}

/** A copy on another device, or with another dtype (a new handle on the same data when nothing changes). */
export function to(x: Tensor, target: Device | DType | { device?: Device; dtype?: DType }): Tensor {
  checkTensor(x, 'to', 'x');
  let device: Device | undefined;
  let dtype: DType | undefined;
  if (target === 'cpu' || target === 'cuda') device = target;
  else if (typeof target === 'string') dtype = checkDType(target, 'to');
  else if (target && typeof target === 'object') {
    if (target.device !== undefined) device = checkDevice(target.device);
    if (target.dtype !== undefined) dtype = checkDType(target.dtype);
  } else throw new ValueError(`to: Expected a device, a dtype or {device, dtype} but received ${describe(target)}`);
  let cur = x;
  let owned = false;
  if (dtype !== undefined && dtype !== cur.dtype) {
    const out = allocLike(cur, dtype);
    op.copy({ out, x: cur });
    cur = out;
    owned = true;
  }
  if (device !== undefined && device !== cur.device) {
    if (device === 'cuda') requireCuda();
    const src = cur;
    cur = empty(src.shape, src.dtype, device);
    op.transfer({ out: cur, x: src });
    if (owned) src.dispose();
    owned = true;
  }
  if (!owned) cur = viewOf(x, x.shape, x.strides, x.offset);
  // the engine casts/moves the gradient back to x's dtype and device
  return record(cur, 'to', [x], []);
}

export function cast(x: Tensor, dtype: DType): Tensor {
  return to(x, checkDType(dtype, 'dtype'));
}
