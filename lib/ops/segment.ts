// Segment routing for long inputs (MoBA, and the selection and compressed branches of DeepSeek's
// Native Sparse Attention): the keys fall into ceil(Sk / segment) segments (the last may be
// short), each query scores the segments by their mean key, keeps its top k (its own segment
// always, when causal) and attends at token level over the keys of the kept segments only.
//
//   segmentMean(x, segment)            [..., S, D] -> [..., nseg, D], differentiable
//   segmentScores(q, k, {segment})     float32 [B, Hq, Sq, nseg] = scale * q . mean(k of s);
//                                      causal: -inf for segments that start after the query
//   segmentSelect(scores, {topK})      int32 indices [B, Hq, Sq, topK] (own segment first, then
//                                      by score, ties to the lower index, -1 for none) and the
//                                      softmax weights of the kept scores
//   selectSegments(q, k, ...)          segmentAttention's own selection: segmentSelect's indices over
//                                      segmentScores, fused (the segmentTopk kernel: no score tensor)
//   segmentAttention(q, k, v, {...})   the fused kernel over the kept segments (no gathered K/V)
//   compressedAttention(q, k, v, ...)  attention over the segment means, a query seeing a
//                                      segment only once the whole segment is at or before it
//   SegmentCache                       decode: keys, values and per-segment key sums kept as
//                                      tokens arrive, so a step scores segments without
//                                      re-reading the keys
// Query row i sits at position p = i + Sk - Sq, as in attention (a decode step is the same call).
import { DType, isFloat } from '../dtype';
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { op } from '../native';
import { Tensor, tidy } from '../tensor';
import { needsGrad, noGrad, record } from '../tape';
import { arange, full } from './creation';
import { add, ge, gt, logicalAnd, mul } from './elementwise';
import { matmul } from './linalg';
import { softmax } from './nn';
import { maskedFill } from './select';
import { cast, reshape } from './shape';
import { checkOptions, checkTensor, empty, sameDevice } from './util';

const statsDType = (d: DType): DType => (d === 'float64' ? 'float64' : 'float32');

function checkSegment(op: string, segment: unknown): number {
  if (!Number.isInteger(segment) || (segment as number) < 1) throw new ValueError(`${op}: Expected an integer segment >= 1 but received ${describe(segment)}`);
  return segment as number;
}

function checkBool(op: string, name: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw new ValueError(`${op}: Expected a boolean for ${name} but received ${describe(v)}`);
  return v;
}

interface Qkv {
  B: number;
  Hq: number;
  Hkv: number;
  Sq: number;
  Sk: number;
  D: number;
  scale: number;
}

function checkQk(op: string, q: Tensor, k: Tensor, v: Tensor | null, scale: unknown): Qkv {
  checkTensor(q, op, 'q');
  checkTensor(k, op, 'k');
  if (v) checkTensor(v, op, 'v');
  sameDevice(op, q, k, ...(v ? [v] : []));
  for (const [t, n] of [[q, 'q'], [k, 'k'], ...(v ? [[v, 'v']] : [])] as [Tensor, string][]) {
    if (t.ndim !== 4) throw new ShapeError(`${op}: Expected ${n} of shape [batch, heads, seq, headDim] but received ${describe(t)}`);
    if (!isFloat(t.dtype)) throw new DTypeError(`${op}: Expected a float tensor for ${n} but received ${describe(t)}`);
  }
  if (k.dtype !== q.dtype || (v && v.dtype !== q.dtype)) throw new DTypeError(`${op}: q, k${v ? ' and v' : ''} must share a dtype, received ${q.dtype}, ${k.dtype}${v ? `, ${v.dtype}` : ''}`);
  const [B, Hq, Sq, D] = q.shape;
  const [kb, Hkv, Sk, kd] = k.shape;
  if (kb !== B || kd !== D || (v && v.shape.some((d, i) => d !== k.shape[i]))) {
    throw new ShapeError(`${op}: Expected k${v ? ' and v' : ''} of shape [${B}, heads, Sk, ${D}] but received k ${describe(k)}${v ? ` and v ${describe(v)}` : ''}`);
  }
  if (Hq % Hkv !== 0) throw new ShapeError(`${op}: the query heads (${Hq}) must be a multiple of the key/value heads (${Hkv})`);
  if (Sk < Sq) throw new ShapeError(`${op}: Expected at least as many keys as queries (Sk ${Sk} >= Sq ${Sq})`);
  const s = scale ?? 1 / Math.sqrt(D);
  if (typeof s !== 'number' || !Number.isFinite(s)) throw new ValueError(`${op}: Expected a finite number for scale but received ${describe(s)}`);
  return { B, Hq, Hkv, Sq, Sk, D, scale: s };
}

/**
 * The mean of each segment of `segment` rows along the second-to-last axis: x [..., S, D] ->
 * [..., ceil(S / segment), D] (the last segment may be shorter). Differentiable.
 */
export function segmentMean(x: Tensor, segment: number): Tensor {
  checkTensor(x, 'segmentMean', 'x');
  checkSegment('segmentMean', segment);
  if (x.ndim < 2) throw new ShapeError(`segmentMean: Expected x of shape [..., rows, dim] but received ${describe(x)}`);
  if (!isFloat(x.dtype)) throw new DTypeError(`segmentMean: Expected a float tensor for x but received ${describe(x)}`);
  const S = x.shape[x.ndim - 2], D = x.shape[x.ndim - 1];
  const lead = x.shape.slice(0, -2);
  const outer = lead.reduce((a, b) => a * b, 1);
  const nseg = Math.ceil(S / segment);
  const out = empty([...lead, nseg, D], x.dtype, x.device);
  const x3 = reshape(x, [outer, S, D]);
  const o3 = reshape(out, [outer, nseg, D]);
  try {
    op.segmentMean({ out: o3, x: x3, segment, backward: false });
  } catch (e) {
    out.dispose();
    throw e;
  } finally {
    if (x3 !== x) x3.dispose();
    if (o3 !== out) o3.dispose();
  }
  return record(out, 'segmentMean', [x], [], { segment, shape: x.shape.slice() });
}

export interface SegmentScoresOptions {
  /** Keys per segment (>= 1). */
  segment: number;
  /** Segments that start after the query's position score -inf. Default true. */
  causal?: boolean;
  /** Score scale, default 1 / sqrt(headDim). */
  scale?: number;
  /** [B, Hkv, nseg, D] segment mean keys kept by the caller (a decode cache): k is then not read. */
  summaries?: Tensor;
}

/**
 * Every query against every segment's mean key, in float32 (float64 for float64 inputs):
 * [B, Hq, Sq, ceil(Sk / segment)]. Causal: a segment starting after the query's position is
 * -inf. Differentiable (to q, and to k through the means).
 */
export function segmentScores(q: Tensor, k: Tensor, options: SegmentScoresOptions): Tensor {
  const name = 'segmentScores';
  const o = checkOptions<SegmentScoresOptions>(options, name);
  const segment = checkSegment(name, o.segment);
  const causal = checkBool(name, 'causal', o.causal, true);
  const p = checkQk(name, q, k, null, o.scale);
  const nseg = Math.ceil(p.Sk / segment);
  if (o.summaries !== undefined) checkSummaries(name, q, o.summaries, p, nseg);
  const sd = statsDType(q.dtype);
  const G = p.Hq / p.Hkv;
  return tidy(() => {
    const kbar = o.summaries ?? segmentMean(k, segment);
    const q2 = reshape(q.dtype === sd ? q : cast(q, sd), [p.B, p.Hkv, G * p.Sq, p.D]);
    const kb = kbar.dtype === sd ? kbar : cast(kbar, sd);
    let s = reshape(scaledScores(q2, kb, p.scale), [p.B, p.Hq, p.Sq, nseg]);
    if (causal) s = maskedFill(s, segmentStartsAfter(p.Sq, p.Sk, segment, q.device), -Infinity);
    return s;
  });
}

function checkSummaries(name: string, q: Tensor, summaries: Tensor, p: Qkv, nseg: number): void {
  const s = checkTensor(summaries, name, 'summaries');
  if (s.ndim !== 4 || s.shape[0] !== p.B || s.shape[1] !== p.Hkv || s.shape[2] !== nseg || s.shape[3] !== p.D) {
    throw new ShapeError(`${name}: Expected summaries of shape [${p.B}, ${p.Hkv}, ${nseg}, ${p.D}] but received ${describe(s)}`);
  }
  if (!isFloat(s.dtype)) throw new DTypeError(`${name}: Expected float summaries but received ${describe(s)}`);
  sameDevice(name, q, s);
}

// scale * a b^T; matmul's alpha is a float, so float64 scales after the product
const scaledScores = (a: Tensor, b: Tensor, scale: number): Tensor =>
  a.dtype === 'float64' ? mul(matmul(a, b, { transB: true }), scale) : matmul(a, b, { transB: true, alpha: scale });

/** bool [Sq, nseg]: segment s starts after the position of query row i. */
function segmentStartsAfter(Sq: number, Sk: number, segment: number, device: Tensor['device']): Tensor {
  return tidy(() => {
    const starts = reshape(arange(0, Math.ceil(Sk / segment) * segment, segment, { dtype: 'int32', device }), [1, Math.ceil(Sk / segment)]);
    const pos = reshape(arange(Sk - Sq, Sk, 1, { dtype: 'int32', device }), [Sq, 1]);
    return gt(starts, pos);
  });
}

export interface SegmentSelectOptions {
  /** Segments kept per query (>= 1). More than there are: the rest of the row is -1. */
  topK: number;
  /**
   * Query heads that share one selection (the query heads of a kv head, as NSA): their scores
   * are summed first. Default 1 (every head selects for itself).
   */
  groupHeads?: number;
  /** Keep each query's own segment (its position's) whatever it scores. Default true. */
  keepOwn?: boolean;
  /** Keys per segment: needed to find the own segment. */
  segment?: number;
  /** The number of keys Sk (query row i sits at i + Sk - Sq). Default: the number of queries. */
  keyLength?: number;
}

export interface SegmentSelection {
  /** int32 [B, Hq, Sq, topK]: the own segment first, then by score (ties to the lower index); -1 pads. */
  indices: Tensor;
  /** float32 [B, Hq, Sq, topK]: softmax of the kept (group-summed) scores; 0 for -1 entries. */
  weights: Tensor;
}

/** The top-k segments of each query from segmentScores' scores (not differentiable: a choice). */
export function segmentSelect(scores: Tensor, options: SegmentSelectOptions): SegmentSelection {
  const name = 'segmentSelect';
  const o = checkOptions<SegmentSelectOptions>(options, name);
  checkTensor(scores, name, 'scores');
  if (scores.ndim !== 4) throw new ShapeError(`${name}: Expected scores of shape [batch, heads, Sq, segments] but received ${describe(scores)}`);
  if (!isFloat(scores.dtype)) throw new DTypeError(`${name}: Expected float scores but received ${describe(scores)}`);
  const [B, Hq, Sq, nseg] = scores.shape;
  if (!Number.isInteger(o.topK) || o.topK < 1) throw new ValueError(`${name}: Expected an integer topK >= 1 but received ${describe(o.topK)}`);
  const g = o.groupHeads ?? 1;
  if (!Number.isInteger(g) || g < 1 || Hq % g !== 0) throw new ValueError(`${name}: Expected groupHeads, an integer >= 1 dividing the ${Hq} heads, but received ${describe(o.groupHeads)}`);
  const keepOwn = checkBool(name, 'keepOwn', o.keepOwn, true);
  const Sk = o.keyLength ?? Sq;
  if (!Number.isInteger(Sk) || Sk < Sq) throw new ValueError(`${name}: Expected an integer keyLength >= ${Sq} (the queries) but received ${describe(o.keyLength)}`);
  let segment = 0;
  if (keepOwn) {
    if (o.segment === undefined) throw new ValueError(`${name}: keepOwn needs the segment length: give segment (or keepOwn: false)`);
    segment = checkSegment(name, o.segment);
    if (Math.ceil(Sk / segment) !== nseg) throw new ShapeError(`${name}: ${Sk} keys in segments of ${segment} make ${Math.ceil(Sk / segment)} segments, but scores has ${nseg}`);
  }
  if (nseg === 0 || B * Hq * Sq === 0) {
    const z = [B, Hq, Sq, o.topK];
    return { indices: full(z, -1, { dtype: 'int32', device: scores.device }), weights: full(z, 0, { dtype: 'float32', device: scores.device }) };
  }
  return selectKernel(scores, o.topK, g, keepOwn, keepOwn ? segment : 1, Sk, keepOwn);
}

// The segment_select kernel over float32 / float64 scores; causal excludes the segments that start
// after each row's position (segmentScores' -inf there excludes them all the same).
function selectKernel(scores: Tensor, topK: number, group: number, keepOwn: boolean, segment: number, Sk: number, causal: boolean): SegmentSelection {
  const [B, Hq, Sq] = scores.shape;
  return noGrad(() => tidy(() => {
    const sc = scores.dtype === 'float64' || scores.dtype === 'float32' ? scores : cast(scores, 'float32');
    const indices = empty([B, Hq, Sq, topK], 'int32', scores.device);
    const weights = empty([B, Hq, Sq, topK], sc.dtype, scores.device);
    op.segmentSelect({ indices, weights, scores: sc, group, causal, keepOwn, segment, keyLength: Sk });
    return { indices, weights };
  }));
}

/** What segmentAttention's own selection needs (options already checked). */
export interface SelectSegmentsArgs {
  segment: number;
  topK: number;
  /** Query heads sharing one selection (divides the query heads per kv head). */
  group: number;
  causal: boolean;
  /** [B, Hkv, nseg, D] segment mean keys (checked here). */
  summaries?: Tensor;
  /** The caller's name for errors. Default 'selectSegments'. */
  op?: string;
}

/**
 * The segments each query row attends to, as segmentAttention picks them when no indices are
 * given: int32 [B, Hq, Sq, topK] (own segment first when causal, then by score, -1 padding),
 * exactly segmentSelect over segmentScores (group heads summed), fused: the segmentTopk kernel
 * scores blocks of rows against the segments they can see and selects at once, never forming
 * the [B, Hq, Sq, nseg] scores. Not differentiable (a choice). Used by segmentAttention and
 * dualAttention's segment path.
 */
export function selectSegments(q: Tensor, k: Tensor, p: { Sk: number; scale: number }, a: SelectSegmentsArgs): Tensor {
  const ao = a !== null && typeof a === 'object' ? a : undefined;
  const name = typeof ao?.op === 'string' ? ao.op : 'selectSegments';
  if (a === undefined) throw new ValueError(`${name}: Expected an object for args but received ${describe(a)}`);
  const o = checkOptions<SelectSegmentsArgs>(a, name, 'args');
  const po = checkOptions<{ Sk: number; scale: number }>(p, name, 'p');
  const d = checkQk(name, q, k, null, po.scale);
  if (po.Sk !== d.Sk) throw new ValueError(`${name}: Expected Sk = ${d.Sk} (the keys) but received ${describe(po.Sk)}`);
  const segment = checkSegment(name, o.segment);
  if (!Number.isInteger(o.topK) || o.topK < 1) throw new ValueError(`${name}: Expected an integer topK >= 1 but received ${describe(o.topK)}`);
  const G = d.Hq / d.Hkv;
  if (!Number.isInteger(o.group) || o.group < 1 || G % o.group !== 0) throw new ValueError(`${name}: Expected group, an integer dividing the ${G} query heads per kv head, but received ${describe(o.group)}`);
  const causal = checkBool(name, 'causal', o.causal, true);
  const nseg = Math.ceil(d.Sk / segment);
  if (o.summaries !== undefined) checkSummaries(name, q, o.summaries, d, nseg);
  if (d.B * d.Hq * d.Sq === 0) return full([d.B, d.Hq, d.Sq, o.topK], -1, { dtype: 'int32', device: q.device });
  return noGrad(() => tidy(() => {
    const sd = statsDType(q.dtype);
    const kbar = o.summaries ?? segmentMean(k, segment);
    const indices = empty([d.B, d.Hq, d.Sq, o.topK], 'int32', q.device);
    op.segmentTopk({ indices, q, summaries: kbar.dtype === sd ? kbar : cast(kbar, sd), scale: d.scale, group: o.group, causal, segment, keyLength: d.Sk });
    return indices;
  }));
}

export interface SegmentAttentionOptions {
  /** Keys per segment (>= 1). */
  segment: number;
  /** Segments each query attends to, its own included (>= 1). Ignored with indices. */
  topK?: number;
  /** Key j is visible to the query at position p only when j <= p. Default true. */
  causal?: boolean;
  scale?: number;
  /**
   * The query heads of a kv head share one selection (their scores summed, as NSA's selection
   * branch): true for all G of them, or a number dividing the heads. Default false.
   */
  groupHeads?: boolean | number;
  /** int32 [B, Hq, Sq, K]: the caller's selection (entries in [-1, nseg); -1 and repeats ignored). */
  indices?: Tensor;
  /** [B, Hkv, nseg, D] segment mean keys (a decode cache keeps them), used for the selection. */
  summaries?: Tensor;
  /** Also return the selection and the per-row log-sum-exp. */
  returnIndices?: boolean;
}

export interface SegmentAttentionResult {
  out: Tensor;
  indices: Tensor;
  lse: Tensor;
}

/**
 * Token-level attention over the keys of each query's top-k segments (MoBA; NSA's selection
 * branch), in one fused kernel that walks the kept segments: no gathered copy of K/V, memory
 * as the fused global attention's plus the selection. Gradients reach q, k and v through the
 * attention (the selection is a choice). When topK * segment >= Sk it equals causal global
 * attention.
 */
export function segmentAttention(q: Tensor, k: Tensor, v: Tensor, options: SegmentAttentionOptions & { returnIndices: true }): SegmentAttentionResult;
export function segmentAttention(q: Tensor, k: Tensor, v: Tensor, options: SegmentAttentionOptions): Tensor;
export function segmentAttention(q: Tensor, k: Tensor, v: Tensor, options: SegmentAttentionOptions): Tensor | SegmentAttentionResult {
  const name = 'segmentAttention';
  const o = checkOptions<SegmentAttentionOptions>(options, name);
  const segment = checkSegment(name, o.segment);
  const causal = checkBool(name, 'causal', o.causal, true);
  const p = checkQk(name, q, k, v, o.scale);
  let indices = o.indices;
  if (indices !== undefined) {
    checkTensor(indices, name, 'indices');
    if (indices.dtype !== 'int32' || indices.ndim !== 4 || indices.shape[0] !== p.B || indices.shape[1] !== p.Hq || indices.shape[2] !== p.Sq || indices.shape[3] < 1) {
      throw new ShapeError(`${name}: Expected int32 indices of shape [${p.B}, ${p.Hq}, ${p.Sq}, topK] but received ${describe(indices)}`);
    }
    sameDevice(name, q, indices);
  } else {
    if (!Number.isInteger(o.topK) || (o.topK as number) < 1) throw new ValueError(`${name}: Expected an integer topK >= 1 but received ${describe(o.topK)}`);
    const G = p.Hq / p.Hkv;
    const gh = o.groupHeads === undefined || o.groupHeads === false ? 1 : o.groupHeads === true ? G : o.groupHeads;
    if (!Number.isInteger(gh) || gh < 1 || G % gh !== 0) throw new ValueError(`${name}: Expected groupHeads true, false or an integer dividing the ${G} query heads per kv head, but received ${describe(o.groupHeads)}`);
    indices = selectSegments(q, k, p, { segment, topK: o.topK as number, group: gh, causal, summaries: o.summaries, op: name });
  }
  const ownIndices = indices !== o.indices;
  const out = empty([p.B, p.Hq, p.Sq, p.D], q.dtype, q.device);
  const grad = needsGrad(q, k, v);
  const lse = o.returnIndices || grad ? empty([p.B, p.Hq, p.Sq], statsDType(q.dtype), q.device) : null;
  try {
    op.segmentAttentionForward({ out, lse, q, k, v, indices: indices!, segment, causal, scale: p.scale });
  } catch (e) {
    out.dispose();
    lse?.dispose();
    if (ownIndices) indices!.dispose();
    throw e;
  }
  if (grad) record(out, name, [q, k, v], [q, k, v, out, lse!, indices!], { segment, causal, scale: p.scale });
  if (o.returnIndices) return { out, indices: indices!, lse: lse! };
  lse?.dispose();
  if (ownIndices) indices!.dispose();
  return out;
}

export interface CompressedAttentionOptions {
  /** Keys per segment (>= 1). */
  segment: number;
  /** A query at position p sees segment s only when the whole segment lies at or before p. Default true. */
  causal?: boolean;
  scale?: number;
}

/**
 * NSA's compressed branch: attention over the segment means of the keys and values. Causal: the
 * query at position p sees segment s only when the whole segment, (s + 1) * segment keys, lies at
 * or before p (a short last segment is seen by no query); a query that sees no segment gets 0. Composed of differentiable ops (scores [B, Hq, Sq, nseg] are formed:
 * nseg = Sk / segment is small).
 */
export function compressedAttention(q: Tensor, k: Tensor, v: Tensor, options: CompressedAttentionOptions): Tensor {
  const name = 'compressedAttention';
  const o = checkOptions<CompressedAttentionOptions>(options, name);
  const segment = checkSegment(name, o.segment);
  const causal = checkBool(name, 'causal', o.causal, true);
  const p = checkQk(name, q, k, v, o.scale);
  const nseg = Math.ceil(p.Sk / segment);
  const G = p.Hq / p.Hkv;
  return tidy(() => {
    const kbar = segmentMean(k, segment), vbar = segmentMean(v, segment);
    const s = scaledScores(reshape(q, [p.B, p.Hkv, G * p.Sq, p.D]), kbar, p.scale);
    if (!causal) return reshape(matmul(softmax(s, -1), vbar), [p.B, p.Hq, p.Sq, p.D]);
    // segment s is whole once position (s + 1) * segment - 1 has passed; hidden before that. A
    // short last segment is never whole: were it seen, a query's output would depend on how long
    // the sequence is (the same position in a longer text, or in a decode, would not see it)
    const ends = reshape(arange(0, nseg, 1, { dtype: 'int32', device: q.device }), [1, nseg]);
    const last = add(mul(ends, segment), segment - 1);
    const pos = reshape(arange(p.Sk - p.Sq, p.Sk, 1, { dtype: 'int32', device: q.device }), [p.Sq, 1]);
    const hidden = gt(last, pos); // [Sq, nseg]
    // rows that see no segment yet (before the first segment's end) keep finite scores, and
    // their uniform softmax is multiplied by 0: neither the output nor the gradient meets a NaN
    const rowSees = ge(pos, segment - 1); // [Sq, 1]
    const hideNow = logicalAnd(hidden, rowSees);
    const s4 = maskedFill(reshape(s, [p.B, p.Hq, p.Sq, nseg]), hideNow, -Infinity);
    const probs = mul(softmax(s4, -1), cast(rowSees, s4.dtype));
    return reshape(matmul(reshape(probs, [p.B, p.Hkv, G * p.Sq, nseg]), vbar), [p.B, p.Hq, p.Sq, p.D]);
  });
}
