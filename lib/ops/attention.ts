// Attention: the two paths of dual-level routing as fused kernels (FlashAttention-style online
// softmax, no score matrix in memory), forward and backward, and rotary position embeddings.
//
// Tensors are [batch, heads, seq, headDim]; k and v may have fewer heads than q when they
// divide them (grouped-query attention). Query row i sits at absolute position
// p = i + (Sk - Sq), so a decode step against a KV cache is the same call.
//   globalAttention: key j visible when j <= p (causal) or always
//   localAttention, mode 'sliding': p - window < j <= p (causal) or |p - j| < window
//                   mode 'block':   j and p in the same block of `window` positions (and j <= p if causal)
//   dualAttention:  g_local * local + g_global * global, both paths in one kernel pass
import { DType, isFloat } from '../dtype';
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { op } from '../native';
import { Tensor, tidy } from '../tensor';
import { needsGrad, record } from '../tape';
import { cast, concat, reshape } from './shape';
import { arange, full, zeros } from './creation';
import { gt, lt, where } from './elementwise';
import { scatterAdd } from './indexing';
import { checkOptions, checkTensor, empty, sameDevice } from './util';
import { selectSegments } from './segment';

type Mask = 'global' | 'sliding' | 'block';

export interface AttentionOptions {
  /** Key j is visible to the query at position p only when j <= p. Default false. */
  causal?: boolean;
  /** Score scale (default 1 / sqrt(headDim)). */
  scale?: number;
  /** bool [batch, Sk]: true marks a padding key that no query attends to. */
  keyPaddingMask?: Tensor;
  /** Also return the per-row log-sum-exp (float32; float64 for float64 inputs). */
  returnLse?: boolean;
}
export interface GlobalAttentionOptions extends AttentionOptions {
  /** int32 [batch, n]: compute only these query rows, written in this order (repeats allowed). */
  queryIndex?: Tensor;
  /**
   * int32 [batch], with queryIndex: the real rows of each batch row (a router keeps a different
   * number of tokens in each sequence); rows r >= queryCount[b] are padding: their index is never
   * read, their output is 0 (lse -inf) and they get no gradient.
   */
  queryCount?: Tensor;
}
export interface LocalAttentionOptions extends AttentionOptions {
  /** Keys seen per query (sliding) or the block length (block); >= 1. */
  window: number;
  /** 'sliding' (default) or 'block' (chunked local attention). */
  mode?: 'sliding' | 'block';
}
export interface DualAttentionOptions extends LocalAttentionOptions {
  /** [batch, Sq, 2] or [batch, heads, Sq, 2]: (g_local, g_global) per query. */
  gates: Tensor;
  /** int32 [batch, n]: the rows the global path is computed for (the router's selection); others get none. */
  queryIndex?: Tensor;
  /** int32 [batch], with queryIndex: entries r >= queryCount[b] are padding and select nothing. */
  queryCount?: Tensor;
  /**
   * A segment-routed global path (segmentAttention: each query reads the keys of its topK
   * segments of `segment` keys, selected as segmentAttention selects them) instead of full
   * global attention, for long inputs; both paths and the gates in one kernel pass each way.
   */
  segment?: { segment: number; topK: number; groupHeads?: boolean | number };
}

export interface AttentionResult {
  out: Tensor;
  lse: Tensor;
}

interface Prepared {
  B: number;
  Hq: number;
  Sq: number;
  Sk: number;
  D: number;
  scale: number;
}

function check(op: string, q: Tensor, k: Tensor, v: Tensor, o: AttentionOptions): Prepared {
  checkTensor(q, op, 'q');
  checkTensor(k, op, 'k');
  checkTensor(v, op, 'v');
  sameDevice(op, q, k, v);
  for (const [t, n] of [[q, 'q'], [k, 'k'], [v, 'v']] as const) {
    if (t.ndim !== 4) throw new ShapeError(`${op}: Expected ${n} of shape [batch, heads, seq, headDim] but received ${describe(t)}`);
    if (!isFloat(t.dtype)) throw new DTypeError(`${op}: Expected a float tensor for ${n} but received ${describe(t)}`);
  }
  if (k.dtype !== q.dtype || v.dtype !== q.dtype) throw new DTypeError(`${op}: q, k and v must share a dtype, received ${q.dtype}, ${k.dtype}, ${v.dtype}`);
  const [B, Hq, Sq, D] = q.shape;
  const [kb, Hkv, Sk, kd] = k.shape;
  if (kb !== B || kd !== D || v.shape.some((d, i) => d !== k.shape[i])) {
    throw new ShapeError(`${op}: Expected k and v of shape [${B}, heads, Sk, ${D}] but received k ${describe(k)} and v ${describe(v)}`);
  }
  if (Hq % Hkv !== 0) throw new ShapeError(`${op}: the query heads (${Hq}) must be a multiple of the key/value heads (${Hkv})`);
  if (o.causal !== undefined && typeof o.causal !== 'boolean') throw new ValueError(`${op}: Expected a boolean for causal but received ${describe(o.causal)}`);
  // fewer keys than queries is cross-attention (to a routed subset of encoder states, say); with
  // causal the last query would sit before the first key's position, which means nothing here
  if (Sk < Sq && o.causal) throw new ShapeError(`${op}: causal attention needs at least as many keys as queries (Sk ${Sk} >= Sq ${Sq}); without causal, fewer keys are allowed`);
  const scale = o.scale ?? 1 / Math.sqrt(D);
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new ValueError(`${op}: Expected a finite number for scale but received ${describe(scale)}`);
  if (o.keyPaddingMask !== undefined) {
    const m = checkTensor(o.keyPaddingMask, op, 'keyPaddingMask');
    if (m.dtype !== 'bool' || m.ndim !== 2 || m.shape[0] !== B || m.shape[1] !== Sk) {
      throw new ShapeError(`${op}: Expected a bool keyPaddingMask of shape [${B}, ${Sk}] but received ${describe(m)}`);
    }
    sameDevice(op, q, m);
  }
  return { B, Hq, Sq, Sk, D, scale };
}

function checkWindow(name: string, o: LocalAttentionOptions): Mask {
  if (!Number.isInteger(o?.window) || o.window < 1) throw new ValueError(`${name}: Expected an integer window >= 1 but received ${describe(o?.window)}`);
  const mode = o.mode ?? 'sliding';
  if (mode !== 'sliding' && mode !== 'block') throw new ValueError(`${name}: Expected 'sliding' or 'block' for mode but received ${describe(mode)}`);
  return mode;
}

function checkQueryIndex(op: string, qi: Tensor | undefined, B: number, q: Tensor): number | undefined {
  if (qi === undefined) return undefined;
  checkTensor(qi, op, 'queryIndex');
  if (qi.dtype !== 'int32' || qi.ndim !== 2 || qi.shape[0] !== B) throw new ShapeError(`${op}: Expected an int32 queryIndex of shape [${B}, n] but received ${describe(qi)}`);
  sameDevice(op, q, qi);
  return qi.shape[1];
}

function checkQueryCount(op: string, qc: Tensor | undefined, qi: Tensor | undefined, B: number, q: Tensor): void {
  if (qc === undefined) return;
  checkTensor(qc, op, 'queryCount');
  if (!qi) throw new ValueError(`${op}: queryCount counts the real rows of queryIndex; give a queryIndex too`);
  if (qc.dtype !== 'int32' || qc.ndim !== 1 || qc.shape[0] !== B) throw new ShapeError(`${op}: Expected an int32 queryCount of shape [${B}] but received ${describe(qc)}`);
  sameDevice(op, q, qc);
}

const statsDType = (d: DType): DType => (d === 'float64' ? 'float64' : 'float32');

// One fused call, recorded for autograd.
function attend(name: string, q: Tensor, k: Tensor, v: Tensor, p: Prepared, mask: Mask, causal: boolean, window: number,
                kp: Tensor | undefined, qi: Tensor | undefined, wantLse: boolean, qc?: Tensor): AttentionResult | Tensor {
  const n = qi ? qi.shape[1] : p.Sq;
  const out = empty([p.B, p.Hq, n, p.D], q.dtype, q.device);
  const grad = needsGrad(q, k, v);
  const lse = wantLse || grad ? empty([p.B, p.Hq, n], statsDType(q.dtype), q.device) : null;
  try {
    op.attentionForward({ out, lse, q, k, v, mask, causal, window, scale: p.scale, keyPadding: kp, queryIndex: qi, queryCount: qc });
  } catch (e) {
    out.dispose();
    lse?.dispose();
    throw e;
  }
  if (grad) {
    const save = [q, k, v, out, lse!, ...(kp ? [kp] : []), ...(qi ? [qi] : []), ...(qc ? [qc] : [])];
    record(out, name, [q, k, v], save, { mask, causal, window, scale: p.scale, hasKeyPadding: !!kp, hasQueryIndex: !!qi, hasQueryCount: !!qc });
  }
  if (!wantLse) {
    lse?.dispose();
    return out;
  }
  return { out, lse: lse! };
}

/** softmax(q k^T * scale + mask) v over all (or causally visible) keys. */
export function globalAttention(q: Tensor, k: Tensor, v: Tensor, options: GlobalAttentionOptions & { returnLse: true }): AttentionResult;
export function globalAttention(q: Tensor, k: Tensor, v: Tensor, options?: GlobalAttentionOptions): Tensor;
export function globalAttention(q: Tensor, k: Tensor, v: Tensor, options: GlobalAttentionOptions = {}): Tensor | AttentionResult {
  options = checkOptions(options, 'globalAttention');
  const p = check('globalAttention', q, k, v, options);
  checkQueryIndex('globalAttention', options.queryIndex, p.B, q);
  checkQueryCount('globalAttention', options.queryCount, options.queryIndex, p.B, q);
  return attend('globalAttention', q, k, v, p, 'global', !!options.causal, 1, options.keyPaddingMask, options.queryIndex, !!options.returnLse, options.queryCount);
}

/** Sliding-window or blocked local attention; invisible key blocks are skipped, not masked. */
export function localAttention(q: Tensor, k: Tensor, v: Tensor, options: LocalAttentionOptions & { returnLse: true }): AttentionResult;
export function localAttention(q: Tensor, k: Tensor, v: Tensor, options: LocalAttentionOptions): Tensor;
export function localAttention(q: Tensor, k: Tensor, v: Tensor, options: LocalAttentionOptions): Tensor | AttentionResult {
  const p = check('localAttention', q, k, v, options ?? ({} as LocalAttentionOptions));
  const mask = checkWindow('localAttention', options);
  return attend('localAttention', q, k, v, p, mask, !!options.causal, options.window, options.keyPaddingMask, undefined, !!options.returnLse);
}

/**
 * out = g_local * localAttention + g_global * globalAttention in one kernel that reads each K/V
 * block once. With queryIndex the global path runs only for those rows. Gradients flow to q,
 * k, v and the gates. With returnLse, lse is [2, batch, heads, Sq] (local, global).
 */
export function dualAttention(q: Tensor, k: Tensor, v: Tensor, options: DualAttentionOptions & { returnLse: true }): AttentionResult;
export function dualAttention(q: Tensor, k: Tensor, v: Tensor, options: DualAttentionOptions): Tensor;
export function dualAttention(q: Tensor, k: Tensor, v: Tensor, options: DualAttentionOptions): Tensor | AttentionResult {
  const name = 'dualAttention';
  const p = check(name, q, k, v, options ?? ({} as DualAttentionOptions));
  const mask = checkWindow(name, options);
  const gates = checkTensor(options.gates, name, 'gates');
  const perHead = gates.ndim === 4;
  const want = perHead ? [p.B, p.Hq, p.Sq, 2] : [p.B, p.Sq, 2];
  if (gates.ndim !== want.length || gates.shape.some((d, i) => d !== want[i])) {
    throw new ShapeError(`${name}: Expected gates of shape [${p.B}, ${p.Sq}, 2] or [${p.B}, ${p.Hq}, ${p.Sq}, 2] but received ${describe(gates)}`);
  }
  if (gates.dtype !== q.dtype) throw new DTypeError(`${name}: Expected gates of dtype ${q.dtype} but received ${describe(gates)}`);
  sameDevice(name, q, gates);
  checkQueryIndex(name, options.queryIndex, p.B, q);
  checkQueryCount(name, options.queryCount, options.queryIndex, p.B, q);
  const causal = !!options.causal;
  const kp = options.keyPaddingMask;
  if (options.segment !== undefined) return dualSegment(q, k, v, options, p, mask, perHead);
  // the router's selection as a per-row flag (repeated indices select a row once)
  let rows: Tensor | undefined;
  if (options.queryIndex) {
    const qi = options.queryIndex, qc = options.queryCount;
    rows = tidy(() => {
      const hits = zeros([p.B, p.Sq], { dtype: 'int32', device: q.device });
      if (!qc) return gt(scatterAdd(hits, 1, qi, full(qi.shape.slice(), 1, { dtype: 'int32', device: q.device })), 0);
      // padding entries (r >= queryCount[b]) add nothing, at a harmless index
      const r = arange(0, qi.shape[1], 1, { dtype: 'int32', device: q.device });
      const real = lt(reshape(r, [1, qi.shape[1]]), reshape(qc, [p.B, 1]));
      return gt(scatterAdd(hits, 1, where(real, qi, 0), cast(real, 'int32')), 0);
    });
  }
  const shape = [p.B, p.Hq, p.Sq, p.D];
  const sd = statsDType(q.dtype);
  const out = empty(shape, q.dtype, q.device);
  const outL = empty(shape, q.dtype, q.device);
  const outG = empty(shape, q.dtype, q.device);
  const lseL = empty([p.B, p.Hq, p.Sq], sd, q.device);
  const lseG = empty([p.B, p.Hq, p.Sq], sd, q.device);
  try {
    op.dualAttentionForward({ out, outLocal: outL, outGlobal: outG, lseLocal: lseL, lseGlobal: lseG, q, k, v, gates, mask, causal,
      window: options.window, scale: p.scale, keyPadding: kp, globalRows: rows });
  } catch (e) {
    [out, outL, outG, lseL, lseG].forEach((t) => t.dispose());
    rows?.dispose();
    throw e;
  }
  if (needsGrad(q, k, v, gates)) {
    const save = [q, k, v, outL, outG, lseL, lseG, gates, ...(kp ? [kp] : []), ...(rows ? [rows] : [])];
    record(out, name, [q, k, v, gates], save, { mask, causal, window: options.window, scale: p.scale, hasKeyPadding: !!kp,
      hasRows: !!rows, perHead });
  }
  if (options.returnLse) {
    const parts = [reshape(lseL, [1, ...lseL.shape]), reshape(lseG, [1, ...lseG.shape])];
    const l = concat(parts, 0);
    [outL, outG, lseL, lseG, ...parts].forEach((t) => t.dispose());
    rows?.dispose();
    return { out, lse: l };
  }
  [outL, outG, lseL, lseG].forEach((t) => t.dispose());
  rows?.dispose();
  return out;
}

// dualAttention with a segment-routed global path: the local path and segment attention over
// the segments selectSegments picks (as segmentAttention would), mixed by the gates, in one
// kernel pass per block of query rows; the backward is one op (dq, dk, dv of both paths and
// the gates' gradient).
function dualSegment(q: Tensor, k: Tensor, v: Tensor, o: DualAttentionOptions, p: Prepared, mask: Mask, perHead: boolean): Tensor | AttentionResult {
  const name = 'dualAttention';
  const sg = o.segment!;
  if (sg === null || typeof sg !== 'object') throw new ValueError(`${name}: Expected an object {segment, topK} for segment but received ${describe(sg)}`);
  if (o.queryIndex !== undefined) throw new ValueError(`${name}: queryIndex selects rows for full global attention; the segment path routes every row by its segments (give one or the other)`);
  if (o.keyPaddingMask !== undefined) throw new ValueError(`${name}: keyPaddingMask is not supported with the segment path`);
  const segment = sg.segment;
  if (!Number.isInteger(segment) || segment < 1) throw new ValueError(`${name}: Expected an integer segment >= 1 but received ${describe(segment)}`);
  if (!Number.isInteger(sg.topK) || sg.topK < 1) throw new ValueError(`${name}: Expected an integer topK >= 1 but received ${describe(sg.topK)}`);
  const G = p.Hq / k.shape[1];
  const gh = sg.groupHeads === undefined || sg.groupHeads === false ? 1 : sg.groupHeads === true ? G : sg.groupHeads;
  if (!Number.isInteger(gh) || gh < 1 || G % gh !== 0) throw new ValueError(`${name}: Expected groupHeads true, false or an integer dividing the ${G} query heads per kv head, but received ${describe(sg.groupHeads)}`);
  const causal = !!o.causal;
  const indices = selectSegments(q, k, p, { segment, topK: sg.topK, group: gh, causal });
  const shape = [p.B, p.Hq, p.Sq, p.D];
  const sd = statsDType(q.dtype);
  const out = empty(shape, q.dtype, q.device);
  const outL = empty(shape, q.dtype, q.device);
  const outG = empty(shape, q.dtype, q.device);
  const lseL = empty([p.B, p.Hq, p.Sq], sd, q.device);
  const lseG = empty([p.B, p.Hq, p.Sq], sd, q.device);
  try {
    op.dualSegmentAttentionForward({ out, outLocal: outL, outGlobal: outG, lseLocal: lseL, lseGlobal: lseG, q, k, v, gates: o.gates,
      indices, mask, causal, window: o.window, scale: p.scale, segment });
  } catch (e) {
    [out, outL, outG, lseL, lseG, indices].forEach((t) => t.dispose());
    throw e;
  }
  if (needsGrad(q, k, v, o.gates)) {
    record(out, 'dualSegmentAttention', [q, k, v, o.gates], [q, k, v, outL, outG, lseL, lseG, o.gates, indices],
      { mask, causal, window: o.window, scale: p.scale, segment });
  }
  [outL, outG, indices].forEach((t) => t.dispose());
  if (!o.returnLse) {
    [lseL, lseG].forEach((t) => t.dispose());
    return out;
  }
  const parts = [reshape(lseL, [1, ...lseL.shape]), reshape(lseG, [1, ...lseG.shape])];
  const l = concat(parts, 0);
  [lseL, lseG, ...parts].forEach((t) => t.dispose());
  return { out, lse: l };
}

/**
 * Rotary position embedding (rotate-half, as LLaMA): x [batch, heads, seq, headDim] with an even
 * headDim; positions int32 [seq] or [batch, seq] (a decode step passes its own). Fused, with
 * backward (the inverse rotation).
 */
export function rope(x: Tensor, positions: Tensor, options: { base?: number } = {}): Tensor {
  options = checkOptions(options, 'rope');
  checkTensor(x, 'rope', 'x');
  checkTensor(positions, 'rope', 'positions');
  if (x.ndim !== 4 || x.shape[3] % 2 !== 0) throw new ShapeError(`rope: Expected x of shape [batch, heads, seq, headDim] with an even headDim but received ${describe(x)}`);
  if (!isFloat(x.dtype)) throw new DTypeError(`rope: Expected a float tensor for x but received ${describe(x)}`);
  const [B, , S] = x.shape;
  if (positions.dtype !== 'int32' || !((positions.ndim === 1 && positions.shape[0] === S) || (positions.ndim === 2 && positions.shape[0] === B && positions.shape[1] === S))) {
    throw new ShapeError(`rope: Expected int32 positions of shape [${S}] or [${B}, ${S}] but received ${describe(positions)}`);
  }
  sameDevice('rope', x, positions);
  const base = options.base ?? 10000;
  if (typeof base !== 'number' || !(base > 0) || !Number.isFinite(base)) throw new ValueError(`rope: Expected a finite base > 0 but received ${describe(base)}`);
  const out = empty(x.shape, x.dtype, x.device);
  op.rope({ out, x, positions, base, inverse: false });
  return record(out, 'rope', [x], [positions], { base });
}

