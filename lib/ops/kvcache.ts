// Decode caches shared by many sequences (continuous batching): N sequences, each in its own slot
// of a cache tensor and at its own length, append their new keys and values and attend over
// their slots in one call per layer, as FlashAttention's flash_attn_with_kvcache does with
// cache_seqlens and cache_batch_idx. Contract: native/core/kvcache.h.
//
//   kvCacheAppend(kCache, vCache, k, v, {lengths, slots, means?, segment?})
//       caches [S, Hkv, C, D]; k, v [N, Hkv, Sq, D]; position lengths[n] + i of sequence n goes
//       to row (lengths[n] + i) % C of slot slots[n] (a ring when C is shorter than the text);
//       means [S, Hkv, ceil(C / segment), D] (float32; float64 for float64): the touched
//       segments' mean keys, for segment routing
//   kvCacheAttention(q, kCache, vCache, {lengths, slots, mask?, window?, means?, segment?, topK?, group?, scale?})
//       q [N, Hq, Sq, D] -> [N, Hq, Sq, D]: query i of sequence n at position lengths[n] - Sq + i
//       (lengths counts the positions after the append), causal; sliding / block masks, or with
//       means the top-k segments (own first) by the mean keys, as segmentAttention selects them
// Neither records for autograd: they are inference ops.
import { isFloat } from '../dtype';
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { op } from '../native';
import { Tensor } from '../tensor';
import { tensor } from './creation';
import { checkOptions, checkTensor, empty, sameDevice } from './util';

export type CacheIndex = Tensor | Int32Array | readonly number[];

const statsDType = (t: Tensor) => (t.dtype === 'float64' ? 'float64' : 'float32');

// an int32 [N] tensor on `like`'s device (made here from an array; a given tensor is checked)
function indexTensor(name: string, arg: string, v: CacheIndex, n: number, like: Tensor): { t: Tensor; owned: boolean } {
  if (v instanceof Tensor) {
    checkTensor(v, name, arg);
    if (v.dtype !== 'int32' || v.ndim !== 1 || v.shape[0] !== n) throw new ShapeError(`${name}: Expected ${arg} as int32 [${n}] but received ${describe(v)}`);
    sameDevice(name, like, v);
    return { t: v, owned: false };
  }
  if (!(v instanceof Int32Array) && !Array.isArray(v)) throw new ValueError(`${name}: Expected ${arg} as an array of ${n} integers or an int32 tensor but received ${describe(v)}`);
  if (v.length !== n || !Array.from(v).every((x) => Number.isInteger(x) && x >= 0 && x < 2 ** 31)) {
    throw new ValueError(`${name}: Expected ${arg} as ${n} non-negative integers (one per sequence) but received ${describe(v)}`);
  }
  return { t: tensor(Int32Array.from(v), [n], { dtype: 'int32', device: like.device }), owned: true };
}

function checkCaches(name: string, kCache: Tensor, vCache: Tensor, dtype: Tensor['dtype'], H: number, D: number): void {
  checkTensor(kCache, name, 'kCache');
  checkTensor(vCache, name, 'vCache');
  if (kCache.ndim !== 4 || vCache.shape.length !== 4 || kCache.shape.some((d, i) => d !== vCache.shape[i])) {
    throw new ShapeError(`${name}: Expected kCache and vCache of shape [slots, heads, capacity, headDim] alike but received ${describe(kCache)} and ${describe(vCache)}`);
  }
  if (kCache.shape[1] !== H || kCache.shape[3] !== D) throw new ShapeError(`${name}: Expected caches with ${H} key/value heads of dim ${D} but received ${describe(kCache)}`);
  if (kCache.dtype !== dtype || vCache.dtype !== dtype) throw new DTypeError(`${name}: Expected ${dtype} caches but received ${kCache.dtype} and ${vCache.dtype}`);
  if (!kCache.isContiguous || !vCache.isContiguous) throw new ValueError(`${name}: the caches must be contiguous (they are written in place)`);
}

function checkMeans(name: string, means: Tensor, kCache: Tensor, segment: unknown): number {
  checkTensor(means, name, 'means');
  if (!Number.isInteger(segment) || (segment as number) < 1) throw new ValueError(`${name}: Expected an integer segment >= 1 with means but received ${describe(segment)}`);
  const [S, H, C, D] = kCache.shape;
  const M = Math.ceil(C / (segment as number));
  if (means.ndim !== 4 || means.shape[0] !== S || means.shape[1] !== H || means.shape[2] !== M || means.shape[3] !== D) {
    throw new ShapeError(`${name}: Expected means of shape [${S}, ${H}, ${M}, ${D}] but received ${describe(means)}`);
  }
  if (means.dtype !== statsDType(kCache)) throw new DTypeError(`${name}: Expected ${statsDType(kCache)} means but received ${describe(means)}`);
  if (!means.isContiguous) throw new ValueError(`${name}: means must be contiguous (it is written in place)`);
  return segment as number;
}

export interface KVCacheAppendOptions {
  /** Positions already in each sequence's slot (int32 [N] or N integers). */
  lengths: CacheIndex;
  /** Each sequence's slot (distinct). */
  slots: CacheIndex;
  /** Segment mean keys [S, Hkv, ceil(C / segment), D] to keep up to date (segment routing). */
  means?: Tensor;
  segment?: number;
}

/** Writes k, v [N, Hkv, Sq, D] into the sequences' slots at their lengths (see the file's head). */
export function kvCacheAppend(kCache: Tensor, vCache: Tensor, k: Tensor, v: Tensor, options: KVCacheAppendOptions): void {
  const name = 'kvCacheAppend';
  const o = checkOptions<KVCacheAppendOptions>(options, name);
  checkTensor(k, name, 'k');
  checkTensor(v, name, 'v');
  if (k.ndim !== 4 || v.ndim !== 4 || k.shape.some((d, i) => d !== v.shape[i])) throw new ShapeError(`${name}: Expected k and v of shape [sequences, heads, n, headDim] alike but received ${describe(k)} and ${describe(v)}`);
  if (!isFloat(k.dtype) || v.dtype !== k.dtype) throw new DTypeError(`${name}: Expected float k and v of one dtype but received ${describe(k)} and ${describe(v)}`);
  const [N, H, , D] = k.shape;
  checkCaches(name, kCache, vCache, k.dtype, H, D);
  sameDevice(name, kCache, vCache, k, v);
  const segment = o.means !== undefined ? checkMeans(name, o.means, kCache, o.segment) : 0;
  if (o.means !== undefined) sameDevice(name, kCache, o.means);
  const lengths = indexTensor(name, 'lengths', o.lengths, N, k);
  const slots = indexTensor(name, 'slots', o.slots, N, k);
  try {
    const sl = Array.isArray(o.slots) || o.slots instanceof Int32Array ? Array.from(o.slots as ArrayLike<number>) : null;
    if (sl && new Set(sl).size !== sl.length) throw new ValueError(`${name}: Expected distinct slots but received ${describe(o.slots)}`);
    if (sl && sl.some((s) => s >= kCache.shape[0])) throw new ValueError(`${name}: Expected slots in [0, ${kCache.shape[0]}) but received ${describe(o.slots)}`);
    op.kvCacheAppend({ kCache, vCache, means: o.means ?? null, k, v, lengths: lengths.t, slots: slots.t, segment });
  } finally {
    if (lengths.owned) lengths.t.dispose();
    if (slots.owned) slots.t.dispose();
  }
}

export interface KVCacheAttentionOptions {
  /** Positions in each sequence's slot, the new ones included (int32 [N] or N integers). */
  lengths: CacheIndex;
  slots: CacheIndex;
  /** 'global' (default), 'sliding' or 'block'. */
  mask?: 'global' | 'sliding' | 'block';
  /** The local window (sliding, block). */
  window?: number;
  /** Segment routing: the segment mean keys kept by kvCacheAppend; then topK segments per query. */
  means?: Tensor;
  segment?: number;
  topK?: number;
  /** Query heads that share one segment selection (a divisor of Hq / Hkv; default 1). */
  group?: number;
  /** Default 1 / sqrt(headDim). */
  scale?: number;
}

/** Attention of each sequence's newest queries q [N, Hq, Sq, D] over its slot (see the file's head). */
export function kvCacheAttention(q: Tensor, kCache: Tensor, vCache: Tensor, options: KVCacheAttentionOptions): Tensor {
  const name = 'kvCacheAttention';
  const o = checkOptions<KVCacheAttentionOptions>(options, name);
  checkTensor(q, name, 'q');
  if (q.ndim !== 4 || !isFloat(q.dtype)) throw new ShapeError(`${name}: Expected a float q of shape [sequences, heads, n, headDim] but received ${describe(q)}`);
  const [N, Hq, Sq, D] = q.shape;
  checkTensor(kCache, name, 'kCache');
  if (kCache.ndim !== 4) throw new ShapeError(`${name}: Expected kCache of shape [slots, heads, capacity, headDim] but received ${describe(kCache)}`);
  const Hkv = kCache.shape[1];
  if (Hq % Hkv !== 0) throw new ShapeError(`${name}: the query heads (${Hq}) must be a multiple of the key/value heads (${Hkv})`);
  checkCaches(name, kCache, vCache, q.dtype, Hkv, D);
  sameDevice(name, q, kCache, vCache);
  const mask = o.mask ?? 'global';
  if (!['global', 'sliding', 'block'].includes(mask)) throw new ValueError(`${name}: Expected mask 'global', 'sliding' or 'block' but received ${describe(o.mask)}`);
  const window = o.window ?? 0;
  if (mask !== 'global' && (!Number.isInteger(window) || window < 1)) throw new ValueError(`${name}: Expected an integer window >= 1 for the ${mask} mask but received ${describe(o.window)}`);
  let segment = 0, topK = 0, group = 1;
  if (o.means !== undefined) {
    segment = checkMeans(name, o.means, kCache, o.segment);
    sameDevice(name, q, o.means);
    if (mask !== 'global') throw new ValueError(`${name}: segment routing (means) takes the global mask, received '${mask}'`);
    topK = o.topK ?? 1;
    if (!Number.isInteger(topK) || topK < 1) throw new ValueError(`${name}: Expected an integer topK >= 1 but received ${describe(o.topK)}`);
    group = o.group ?? 1;
    if (!Number.isInteger(group) || group < 1 || (Hq / Hkv) % group !== 0) throw new ValueError(`${name}: Expected group, a divisor of ${Hq / Hkv} (query heads per key/value head), but received ${describe(o.group)}`);
  }
  const scale = o.scale ?? 1 / Math.sqrt(D);
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new ValueError(`${name}: Expected a finite number for scale but received ${describe(o.scale)}`);
  const lengths = indexTensor(name, 'lengths', o.lengths, N, q);
  const slots = indexTensor(name, 'slots', o.slots, N, q);
  const out = empty([N, Hq, Sq, D], q.dtype, q.device);
  try {
    const ls = Array.isArray(o.lengths) || o.lengths instanceof Int32Array ? Array.from(o.lengths as ArrayLike<number>) : null;
    if (ls && ls.some((l) => l < Sq)) throw new ValueError(`${name}: Expected every length >= the ${Sq} queries (the new positions are in the cache) but received ${describe(o.lengths)}`);
    op.kvCacheAttention({ out, q, kCache, vCache, lengths: lengths.t, slots: slots.t, means: o.means ?? null, mask, window, segment, topK, group, scale });
  } catch (e) {
    out.dispose();
    throw e;
  } finally {
    if (lengths.owned) lengths.t.dispose();
    if (slots.owned) slots.t.dispose();
  }
  return out;
}
