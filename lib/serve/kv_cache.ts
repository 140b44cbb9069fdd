// KV caches for decoding.
//
// RingKVCache keeps the keys and values of the last `window` positions of a local (sliding-
// window) attention layer in a fixed-size ring: position t lives in slot t % window, so memory
// stays [batch, heads, window, headDim] however long generation runs, and appending a token
// writes one slot (no shifting). For a decode step (one new query at the newest position) every
// cached key is inside the window, and attention does not depend on the order of its keys (RoPE
// has already rotated each key by its own position), so the step attends over the ring as it
// is, with the slots not yet written masked as padding: the kernel reads the ring buffer
// directly.
import { DType } from '../dtype';
import { Device } from '../device';
import { DTypeError, OutOfRangeError, ShapeError, ValueError, describe } from '../errors';
import { Tensor, tidy, untracked } from '../tensor';
import { globalAttention } from '../ops/attention';
import { SegmentAttentionOptions, segmentAttention, segmentMean } from '../ops/segment';
import { full, zeros } from '../ops/creation';
import { narrow } from '../ops/shape';
import { copy_, fill_ } from '../ops/inplace';
import { noGrad } from '../tape';
import { checkOptions } from '../ops/util';

export interface RingKVCacheOptions {
  batch: number;
  /** Key/value heads. */
  heads: number;
  headDim: number;
  window: number;
  dtype?: DType;
  device?: Device;
}

export class RingKVCache {
  readonly k: Tensor;
  readonly v: Tensor;
  /** true where a slot holds no position yet (a key padding mask). */
  private empty: Tensor;
  /** Positions appended so far. */
  length = 0;
  readonly window: number;

  constructor(readonly o: RingKVCacheOptions) {
    for (const n of ['batch', 'heads', 'headDim', 'window'] as const) {
      if (!Number.isInteger(o?.[n]) || o[n] < 1) throw new ValueError(`RingKVCache: Expected a positive integer for ${n} but received ${describe(o?.[n])}`);
    }
    this.window = o.window;
    const shape = [o.batch, o.heads, o.window, o.headDim];
    const opts = { dtype: o.dtype ?? 'float32', device: o.device };
    [this.k, this.v, this.empty] = untracked(() => [zeros(shape, opts), zeros(shape, opts), full([o.batch, o.window], true, { device: o.device })]);
  }

  /** Appends keys and values [batch, heads, n, headDim] (already rotated by RoPE); keeps the last `window`. */
  append(k: Tensor, v: Tensor): void {
    const [B, H, n, D] = k.shape;
    if (k.ndim !== 4 || B !== this.o.batch || H !== this.o.heads || D !== this.o.headDim || v.shape.some((d, i) => d !== k.shape[i])) {
      throw new ShapeError(`RingKVCache.append: Expected k and v of shape [${this.o.batch}, ${this.o.heads}, n, ${this.o.headDim}] but received ${describe(k)} and ${describe(v)}`);
    }
    const start = Math.max(0, n - this.window);  // only the last `window` positions can ever be seen
    for (let i = start; i < n; ) {
      const pos = this.length + i;
      const slot = pos % this.window;
      const len = Math.min(n - i, this.window - slot);  // a run of consecutive slots
      noGrad(() => untracked(() => {
        const pairs: Array<[Tensor, Tensor]> = [[this.k, k], [this.v, v]];
        for (const [dst, src] of pairs) {
          const d = narrow(dst, 2, slot, len);
          const s = narrow(src, 2, i, len);
          copy_(d, s);
          d.dispose();
          s.dispose();
        }
        const e = narrow(this.empty, 1, slot, len);
        fill_(e, false);
        e.dispose();
      }));
      i += len;
    }
    this.length += n;
  }

  /**
   * Attention of one new query per sequence, q [batch, qHeads, 1, headDim], against the cached
   * window (the query is the newest appended position). Equals localAttention(..., {window,
   * causal: true}) at that position.
   */
  attend(q: Tensor, options: { scale?: number } = {}): Tensor {
    options = checkOptions(options, 'RingKVCache.attend');
    if (q.ndim !== 4 || q.shape[2] !== 1) throw new ShapeError(`RingKVCache.attend: Expected one query per sequence [batch, heads, 1, headDim] but received ${describe(q)}`);
    if (this.length === 0) throw new ValueError('RingKVCache.attend: the cache is empty; append the step\'s key and value first');
    return globalAttention(q, this.k, this.v, { keyPaddingMask: this.empty, scale: options.scale });
  }

  dispose(): void {
    this.k.dispose();
    this.v.dispose();
    this.empty.dispose();
  }
}

export interface SegmentKVCacheOptions {
  batch: number;
  /** Key/value heads. */
  heads: number;
  headDim: number;
  /** Keys per segment (as segmentAttention's). */
  segment: number;
  /** Positions the cache can hold. */
  capacity: number;
  dtype?: DType;
  device?: Device;
}

/**
 * The KV cache of a segment-routed layer (segmentAttention): keys and values of every position
 * in [batch, heads, capacity, headDim] buffers, and the mean key of every segment, kept as
 * positions arrive. An append recomputes only the means of the segments it touches (from the at
 * most `segment` keys of each), so a decode step scores the segments against the kept means
 * without re-reading the keys, then attends at token level over its top-k segments, reading the
 * buffers in place (MoBA has no decode path: it falls back to full attention). A step equals
 * the full-sequence segmentAttention at that position: the means are the same sums in the same
 * order.
 */
export class SegmentKVCache {
  readonly k: Tensor;
  readonly v: Tensor;
  /** [batch, heads, ceil(capacity / segment), headDim]: the mean key of each segment so far. */
  readonly means: Tensor;
  /** Positions appended so far. */
  length = 0;

  constructor(readonly o: SegmentKVCacheOptions) {
    for (const n of ['batch', 'heads', 'headDim', 'segment', 'capacity'] as const) {
      if (!Number.isInteger(o?.[n]) || o[n] < 1) throw new ValueError(`SegmentKVCache: Expected a positive integer for ${n} but received ${describe(o?.[n])}`);
    }
    const opts = { dtype: o.dtype ?? 'float32', device: o.device };
    const shape = [o.batch, o.heads, o.capacity, o.headDim];
    [this.k, this.v, this.means] = untracked(() => [zeros(shape, opts), zeros(shape, opts),
      zeros([o.batch, o.heads, Math.ceil(o.capacity / o.segment), o.headDim], opts)]);
  }

  /** Appends keys and values [batch, heads, n, headDim] (already rotated by RoPE). */
  append(k: Tensor, v: Tensor): void {
    const o = this.o;
    const [B, H, n, D] = k.shape;
    if (k.ndim !== 4 || B !== o.batch || H !== o.heads || D !== o.headDim || v.ndim !== 4 || v.shape.some((d, i) => d !== k.shape[i])) {
      throw new ShapeError(`SegmentKVCache.append: Expected k and v of shape [${o.batch}, ${o.heads}, n, ${o.headDim}] but received ${describe(k)} and ${describe(v)}`);
    }
    if (k.dtype !== this.k.dtype || v.dtype !== this.k.dtype) throw new DTypeError(`SegmentKVCache.append: Expected ${this.k.dtype} keys and values but received ${k.dtype} and ${v.dtype}`);
    if (this.length + n > o.capacity) throw new OutOfRangeError(`SegmentKVCache.append: ${this.length} + ${n} positions exceed the capacity ${o.capacity}`);
    if (n === 0) return;
    const L = this.length + n, s0 = Math.floor(this.length / o.segment), s1 = Math.ceil(L / o.segment);
    noGrad(() => untracked(() => tidy(() => {
      copy_(narrow(this.k, 2, this.length, n), k);
      copy_(narrow(this.v, 2, this.length, n), v);
      // the touched segments' means from their keys (the same rows, in the same order, as segmentMean over all keys)
      const fresh = segmentMean(narrow(this.k, 2, s0 * o.segment, L - s0 * o.segment), o.segment);
      copy_(narrow(this.means, 2, s0, s1 - s0), fresh);
    })));
    this.length = L;
  }

  /**
   * Segment attention of queries q [batch, qHeads, Sq, headDim] at the newest Sq positions
   * (Sq = 1 for a decode step) over the cache: the top-k segments by the kept means, then token
   * attention over their keys. Options as segmentAttention's (segment and summaries are the cache's).
   */
  attend(q: Tensor, options: Omit<SegmentAttentionOptions, 'segment' | 'summaries' | 'indices'>): Tensor {
    const name = 'SegmentKVCache.attend';
    const opts = checkOptions<Omit<SegmentAttentionOptions, 'segment' | 'summaries' | 'indices'>>(options, name);
    if (this.length === 0) throw new ValueError(`${name}: the cache is empty; append the step's keys and values first`);
    return tidy(() => {
      const L = this.length;
      const k = narrow(this.k, 2, 0, L), v = narrow(this.v, 2, 0, L);
      const summaries = narrow(this.means, 2, 0, Math.ceil(L / this.o.segment));
      return segmentAttention(q, k, v, { ...opts, returnIndices: false, segment: this.o.segment, summaries });
    });
  }

  dispose(): void {
    this.k.dispose();
    this.v.dispose();
    this.means.dispose();
  }
}
