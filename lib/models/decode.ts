// Cached decoding of DualRouteLM: one token per step through every layer, each path keeping what
// it needs of the past instead of recomputing the prefix:
//   window attention (sliding or block)
//                               a ring of the last `window` keys and values: memory flat however
//                               long the text
//   full attention, routed (MoD)
//                               every key and value (capacity maxSeq)
//                               (both: kvCacheAppend writes the step's key and value in place and
//                               kvCacheAttention attends over the buffer where it lies, the row
//                               of each batch row in its own slot: two ops per attention a step)
//   segment / NSA attention     a growing buffer of every key and value (capacity maxSeq); the
//                               step is the same fused kernel with one query at the newest
//                               position (segment selection over the means of whole keys so far)
//   routed (Mixture-of-Depths)  the causal predictor decides for the new token, as in eval
//   conv                        the last kernel - 1 inputs
//   lstm                        h and c
// Everything else (norms, gates, fusion, feed-forward) is per token. A step equals the full
// forward in eval at that position (tested for every kind); an MoE feed-forward with a capacity
// factor is the exception, since its drops depend on every token of the batch (dropless is exact).
//
// Each step also records how every layer routed the token it fed (lastRouting(row)): the fusion
// gates, the routed path's choice, the MoE's first expert and the segments read. It keeps small
// views of what the step computed anyway and reads them only when asked.
import { OutOfRangeError, ValueError, describe } from '../errors';
import { Tensor, tidy, untracked, keep } from '../tensor';
import { gt, mul, sigmoid } from '../ops/elementwise';
import { mean } from '../ops/reduce';
import { cast, concat, narrow, reshape, transpose } from '../ops/shape';
import { matmul } from '../ops/linalg';
import { tensor, zeros } from '../ops/creation';
import { copy_ } from '../ops/inplace';
import { localAttention, rope } from '../ops/attention';
import { compressedAttention, segmentAttention } from '../ops/segment';
import { noGrad } from '../tape';
import { kvCacheAppend, kvCacheAttention } from '../ops/kvcache';
import { MultiheadAttention } from '../nn/attention';
import { RoutedAttention } from '../nn/routed';
import { NSAAttention } from '../nn/nsa';
import { SigmoidGates, TokenChoiceMoE, mixPaths } from '../nn/routers';
import { ConvPath, DualRouteLayer, LSTMPath } from './layer';
import type { ResolvedConfig } from './config';
import type { Embedding, Linear, RMSNorm } from '../nn/layers';
import { PendingResidual, addAndNorm, addAndNormPending, pendingNorm } from '../nn/layers';

/** What a decode needs of the model (DualRouteLM; typed by shape so that the model file can use this one). */
export interface DecodableLM {
  readonly config: ResolvedConfig;
  embed_tokens: Embedding;
  layers: DualRouteLayer[];
  norm: RMSNorm;
  lm_head: Linear | null;
}

// The keys and values of one attention for kvCacheAppend / kvCacheAttention: [B, Hk, capacity, hd]
// buffers, batch row b in slot b, position p in row p % capacity (a ring when capacity is short).
class SlotKV {
  readonly k: Tensor;
  readonly v: Tensor;
  constructor(B: number, Hk: number, capacity: number, hd: number, like: Tensor) {
    [this.k, this.v] = untracked(() => [zeros([B, Hk, capacity, hd], { dtype: like.dtype, device: like.device }), zeros([B, Hk, capacity, hd], { dtype: like.dtype, device: like.device })]);
  }
  dispose(): void {
    this.k.dispose();
    this.v.dispose();
  }
}

// Every key and value so far, [B, Hk, capacity, hd] buffers filled up to `length`.
class KVBuffer {
  readonly k: Tensor;
  readonly v: Tensor;
  length = 0;
  constructor(B: number, Hk: number, capacity: number, hd: number, like: Tensor) {
    [this.k, this.v] = untracked(() => [zeros([B, Hk, capacity, hd], { dtype: like.dtype, device: like.device }), zeros([B, Hk, capacity, hd], { dtype: like.dtype, device: like.device })]);
  }
  append(k: Tensor, v: Tensor): void {
    noGrad(() => tidy(() => {
      copy_(narrow(this.k, 2, this.length, 1), k);
      copy_(narrow(this.v, 2, this.length, 1), v);
    }));
    this.length += 1;
  }
  // the keys and values so far (contiguous copies: the kernels take them as [B, Hk, len, hd])
  prefix(): [Tensor, Tensor] {
    return [narrow(this.k, 2, 0, this.length).contiguous(), narrow(this.v, 2, 0, this.length).contiguous()];
  }
  dispose(): void {
    this.k.dispose();
    this.v.dispose();
  }
}

/**
 * How one layer routed one token in a decode step (DecodeCache.lastRouting); the same values as
 * that position's LayerTrace (DualRouteLM.routingTrace). A field is null where the layer has no
 * such routing.
 */
export interface StepLayerRouting {
  /**
   * The weight of (local, global) for this token: the fusion's gates (per-channel gates averaged
   * over channels), [1, 1] for 'sum'; null when only one path runs or for 'concat'.
   */
  gates: [number, number] | null;
  /** A 'routed' (Mixture-of-Depths) global path: whether this token went through its attention. */
  routed: boolean | null;
  /** An MoE feed-forward block: the token's first-choice expert. */
  expert: number | null;
  /** A 'segment' or 'nsa' global path: the segments head 0 of this token read, its own first, then by score. */
  segments: number[] | null;
}

/** How every layer routed one token (one StepLayerRouting per layer, in order). */
export interface TokenRouting {
  layers: StepLayerRouting[];
}

// what a step kept of one layer's routing (views; read on demand)
interface LayerRecord {
  gates: Tensor | null;  // [B, 1, 2] or [B, 1, 2, d]
  sum: boolean;  // 'sum' fusion: 1, 1
  routed: Tensor | null;  // bool [B, 1, 1]
  moe: TokenChoiceMoE | null;
  moeInput: Tensor | null;  // [B, 1, d]: the MoE's input (its route is recomputed when read)
  segments: Tensor | null;  // int32 [B, H, 1, topK]
}

const disposeRecord = (r: LayerRecord) => [r.gates, r.routed, r.moeInput, r.segments].forEach((t) => t?.dispose());

type PathState = KVBuffer | SlotKV | { window: Tensor | null } | { h: Tensor; c: Tensor } | null;

/** The per-layer state of one decode (batch rows decode together, one token each per step). */
export class DecodeCache {
  /** Positions decoded so far. */
  position = 0;
  private states = new Map<object, PathState>();
  // the routing of the last step: kept views per layer, then (once read) the values per row
  private record: LayerRecord[] | null = null;
  private building: LayerRecord[] | null = null;
  private readRows: StepLayerRouting[][] | null = null;
  // what every attention of a step shares, made once per step: the position (RoPE) and, per batch
  // row, its slot and length before and after the step (kvCacheAppend / kvCacheAttention)
  private ix: { pos: Tensor; slots: Tensor; before: Tensor; after: Tensor } | null = null;
  private slots: Tensor | null = null;  // batch row b in slot b, for the whole decode
  // per attention, its q, k and v projection weights stacked (batch 1; see qkv)
  private stacked = new Map<object, Tensor>();
  private gateWeights = new Map<SigmoidGates, { weight: Tensor; bias: Tensor | null }>();

  constructor(readonly model: DecodableLM, readonly batch = 1) {
    if (!model || typeof model !== 'object' || !Array.isArray(model.layers) || !model.config) throw new ValueError(`DecodeCache: Expected a DualRouteLM but received ${describe(model)}`);
    if (!Number.isInteger(batch) || batch < 1) throw new ValueError(`DecodeCache: Expected a positive integer batch but received ${describe(batch)}`);
  }

  /**
   * Feeds one token per batch row (ids [batch]) at the next position and returns the logits of
   * that position, [batch, vocabSize]. The model should be in eval mode.
   */
  step(ids: number[] | Int32Array): Tensor {
    const m = this.model, c = m.config;
    if (ids.length !== this.batch) throw new ValueError(`DecodeCache.step: Expected ${this.batch} token ids (one per batch row) but received ${describe(ids)}`);
    if (this.position >= c.maxSeq) throw new ValueError(`DecodeCache.step: the model's maxSeq (${c.maxSeq}) positions are used up`);
    this.dropRecord();
    const built: LayerRecord[] = (this.building = []);
    let out: Tensor;
    try {
      out = noGrad(() => tidy(() => {
        const t = tensor(Int32Array.from(ids), [this.batch, 1], { dtype: 'int32' });
        const B = this.batch, p = this.position;
        if (!this.slots) this.slots = untracked(() => tensor(Int32Array.from({ length: B }, (_, i) => i), [B], { dtype: 'int32' }));
        const before = tensor(new Int32Array(B).fill(p), [B], { dtype: 'int32' });
        this.ix = {
          pos: B === 1 ? before : tensor(Int32Array.of(p), [1], { dtype: 'int32' }),
          slots: this.slots, before,
          after: tensor(new Int32Array(B).fill(p + 1), [B], { dtype: 'int32' }),
        };
        // as the full forward: each layer's last residual add goes into the next norm's pass
        let h: Tensor | PendingResidual = m.embed_tokens.forward(t);
        for (const layer of m.layers) h = this.layerStep(layer, h, t);
        const n = pendingNorm(h, m.norm);
        const logits = m.lm_head ? m.lm_head.forward(n) : matmul(n, m.embed_tokens.weight, { transB: true });
        return reshape(logits, [this.batch, c.vocabSize]);
      }));
    } catch (e) {
      built.forEach(disposeRecord);
      throw e;
    } finally {
      this.building = null;
      this.ix = null;  // freed with the step's tidy
    }
    this.record = built;
    this.position += 1;
    return out;
  }

  /**
   * How every layer routed the token that batch row `row` fed in the last step (the position
   * before `position`): the same values as that position of DualRouteLM.routingTrace over the
   * text so far. Reads the device (once per step; a second row or call reuses the read).
   */
  lastRouting(row = 0): TokenRouting {
    const name = 'DecodeCache.lastRouting';
    if (!Number.isInteger(row) || row < 0 || row >= this.batch) throw new OutOfRangeError(`${name}: Expected row, an integer in [0, ${this.batch}) (the batch), but received ${describe(row)}`);
    if (!this.record) throw new ValueError(`${name}: no step to report (run step() first)`);
    if (!this.readRows) this.readRows = this.readRecord(this.record);
    // copies: the caller may keep or change them
    return { layers: this.readRows[row].map((r) => ({ gates: r.gates ? [r.gates[0], r.gates[1]] : null, routed: r.routed, expert: r.expert, segments: r.segments ? r.segments.slice() : null })) };
  }

  private readRecord(rec: LayerRecord[]): StepLayerRouting[][] {
    const B = this.batch;
    const rows: StepLayerRouting[][] = Array.from({ length: B }, () => []);
    noGrad(() => tidy(() => {
      const floats = (t: Tensor) => (t.dtype === 'float32' || t.dtype === 'float64' ? t : cast(t, 'float32')).dataSync();
      for (const r of rec) {
        let gates: ArrayLike<number> | null = null;
        if (r.gates) gates = floats(r.gates.ndim === 4 ? mean(r.gates, 3) : r.gates);  // [B, 1, 2]
        const routed = r.routed ? r.routed.dataSync() : null;
        let expert: ArrayLike<number> | null = null, K = 1;
        if (r.moe && r.moeInput) {
          K = r.moe.topK;
          expert = r.moe.route(r.moeInput).indices.dataSync();  // [B, topK]
        }
        let seg: ArrayLike<number> | null = null, H = 1, S = 1;
        if (r.segments) {
          [, H, , S] = r.segments.shape;
          seg = r.segments.dataSync();  // [B, H, 1, topK]
        }
        for (let b = 0; b < B; ++b) {
          rows[b].push({
            gates: gates ? [Number(gates[b * 2]), Number(gates[b * 2 + 1])] : r.sum ? [1, 1] : null,
            routed: routed ? Number(routed[b]) !== 0 : null,
            expert: expert ? Number(expert[b * K]) : null,
            segments: seg ? Array.from({ length: S }, (_, k) => Number(seg![b * H * S + k])).filter((i) => i >= 0) : null,
          });
        }
      }
    }));
    return rows;
  }

  private dropRecord(): void {
    this.record?.forEach(disposeRecord);
    this.record = null;
    this.readRows = null;
  }

  // x: the embeddings or the previous layer's pending { h, r }; returns this layer's (as forwardPending)
  private layerStep(L: DualRouteLayer, input: Tensor | PendingResidual, ids: Tensor): PendingResidual {
    const rec: LayerRecord = { gates: null, sum: false, routed: null, moe: null, moeInput: null, segments: null };
    this.building?.push(rec);
    const { h: x, y: a } = addAndNormPending(input, L.input_layernorm);
    const l = L.local ? this.pathStep(L.local, a) : null;
    const g = L.global ? this.pathStep(L.global, a, rec) : null;
    let mixed: Tensor;
    if (l && g) {
      const before = L.fusionGates;
      mixed = L.fuse(l, g, a, ids, L.gate instanceof SigmoidGates ? L.gate.forward(a, this.stackedGates(L.gate)) : undefined);
      const gates = L.fusionGates;
      if (gates && gates !== before) rec.gates = keep(gates.alias());  // the layer frees its own at the next fuse
      rec.sum = L.spec.fusion === 'sum';
    } else {
      mixed = (l ?? g)!;
    }
    const { h, y: m } = addAndNorm(x, mixed, L.post_attention_layernorm);
    if (L.mlp instanceof TokenChoiceMoE) {
      rec.moe = L.mlp;
      rec.moeInput = keep(m.alias());
    }
    return { h, r: L.mlp.forward(m) };
  }

  private state<T extends PathState>(key: object, make: () => T): T {
    if (!this.states.has(key)) this.states.set(key, make());
    return this.states.get(key) as T;
  }

  // rec: the layer's routing record, for a global path's choices
  private pathStep(p: object, a: Tensor, rec?: LayerRecord): Tensor {
    if (p instanceof MultiheadAttention) return this.attnStep(p, a, rec);
    if (p instanceof ConvPath) {
      const s = this.state(p, () => ({ window: null as Tensor | null }));
      const k = p.conv.kernelSize;
      const win = s.window ? concat([s.window, a], 1) : a;  // the last k inputs (fewer at the start)
      const y = p.forward(win);
      const last = narrow(y, 1, win.shape[1] - 1, 1);
      const keepN = Math.min(k - 1, win.shape[1]);
      const next = keepN > 0 ? keep(narrow(win, 1, win.shape[1] - keepN, keepN).contiguous()) : null;
      s.window?.dispose();
      s.window = next;
      return last;
    }
    if (p instanceof LSTMPath) {
      const s = this.state<{ h: Tensor; c: Tensor } | null>(p, () => null);
      const r = p.lstm.forward(a, s ?? undefined);
      if (s) [s.h, s.c].forEach((t) => t.dispose());
      this.states.set(p, { h: keep(r.h), c: keep(r.c) });
      return r.out;
    }
    if (p instanceof RoutedAttention) return this.routedStep(p, a, rec);
    if (p instanceof NSAAttention) return this.nsaStep(p, a, rec);
    throw new ValueError(`DecodeCache: no decode step for ${describe(p)}`);
  }

  // a SigmoidGates' stacked weights, made once per decode (as qkv's)
  private stackedGates(gate: SigmoidGates): { weight: Tensor; bias: Tensor | null } {
    let s = this.gateWeights.get(gate);
    if (!s) {
      s = untracked(() => gate.stacked());
      this.gateWeights.set(gate, s);
    }
    return s;
  }

  // q, k, v of the new token, rotated at its position: q [B, H, 1, hd], k and v [B, Hk, 1, hd]
  private qkv(proj: { q_proj: Linear; k_proj: Linear; v_proj: Linear },
    a: Tensor, H: number, Hk: number, hd: number, useRope: boolean, base: number): [Tensor, Tensor, Tensor] {
    const B = a.shape[0];
    if (B === 1 && !proj.q_proj.bias && !proj.k_proj.bias && !proj.v_proj.bias) {
      // one row: one product with the three weights stacked ([H + 2 Hk] hd rows, stacked once per
      // decode: its keys and values hold for these weights only), one rotation of q and k
      // together; q, k and v are views of the result (one row: contiguous)
      let w = this.stacked.get(proj);
      if (!w) {
        w = untracked(() => concat([proj.q_proj.weight, proj.k_proj.weight, proj.v_proj.weight], 0));
        this.stacked.set(proj, w);
      }
      const y = reshape(matmul(a, w, { transB: true }), [1, H + 2 * Hk, 1, hd]);
      let qk = narrow(y, 1, 0, H + Hk);
      if (useRope) qk = rope(qk, this.ix!.pos, { base });
      return [narrow(qk, 1, 0, H), narrow(qk, 1, H, Hk), narrow(y, 1, H + Hk, Hk)];
    }
    // [B, 1, n hd] -> [B, n, 1, hd]: with one position the same memory order (a view, no copy)
    const heads = (t: Tensor, n: number) => reshape(t, [B, n, 1, hd]);
    let q = heads(proj.q_proj.forward(a), H), k = heads(proj.k_proj.forward(a), Hk);
    const v = heads(proj.v_proj.forward(a), Hk);
    if (useRope) {
      const pos = this.ix!.pos;
      q = rope(q, pos, { base });
      k = rope(k, pos, { base });
    }
    return [q, k, v];
  }

  // o [B, H, 1, hd] (contiguous) -> [B, 1, H hd]: a view, then the output projection
  private merge(o: Tensor, m: { o_proj: { forward(x: Tensor): Tensor } }, width: number): Tensor {
    return m.o_proj.forward(reshape(o, [o.shape[0], 1, width]));
  }

  // the step's key and value into p's slot buffers (capacity rows), then the attention of its query
  private slotAttend(p: object, q: Tensor, k: Tensor, v: Tensor, capacity: number, mask: 'global' | 'sliding' | 'block', window: number): Tensor {
    const ix = this.ix!;
    const kv = this.state(p, () => new SlotKV(this.batch, k.shape[1], capacity, k.shape[3], k));
    kvCacheAppend(kv.k, kv.v, k, v, { lengths: ix.before, slots: ix.slots });
    return kvCacheAttention(q, kv.k, kv.v, { lengths: ix.after, slots: ix.slots, mask, window });
  }

  private attnStep(p: MultiheadAttention, a: Tensor, rec?: LayerRecord): Tensor {
    const [q, k, v] = this.qkv(p, a, p.nHeads, p.nKvHeads, p.headDim, p.useRope, p.ropeBase);
    let o: Tensor;
    const maxSeq = this.model.config.maxSeq;
    // a step sees at most the last `window` positions (sliding and block): a ring of that many rows
    if (p.kind === 'local') o = this.slotAttend(p, q, k, v, Math.min(maxSeq, p.window), p.mode, p.window);
    else if (p.kind === 'global') o = this.slotAttend(p, q, k, v, maxSeq, 'global', 0);
    else {
      // segment: the selection reads the whole prefix (and its indices are recorded)
      const buf = this.state(p, () => new KVBuffer(this.batch, p.nKvHeads, maxSeq, p.headDim, k));
      buf.append(k, v);
      const [K, V] = buf.prefix();
      const r = segmentAttention(q, K, V, { segment: p.segment, topK: p.topK, causal: true, groupHeads: p.groupHeads, returnIndices: true });
      o = r.out;
      if (rec) rec.segments = keep(r.indices);
    }
    return this.merge(o, p, p.nHeads * p.headDim);
  }

  private routedStep(p: RoutedAttention, a: Tensor, rec?: LayerRecord): Tensor {
    const at = p.attn;
    const [q, k, v] = this.qkv(at, a, at.nHeads, at.nKvHeads, at.headDim, at.useRope, at.ropeBase);
    // every token's key is kept: a routed token attends to all that came before it
    const rows = this.merge(this.slotAttend(p, q, k, v, this.model.config.maxSeq, 'global', 0), at, at.nHeads * at.headDim);  // [B, 1, d]
    const routed = gt(p.predictor.forward(a), 0);  // [B, 1, 1]
    if (rec) rec.routed = keep(routed.alias());
    const w = mul(sigmoid(p.router.forward(a)), routed.dtype === rows.dtype ? routed : routed.to(rows.dtype));
    return mul(rows, w);
  }

  private nsaStep(p: NSAAttention, a: Tensor, rec?: LayerRecord): Tensor {
    const [q, k, v] = this.qkv(p, a, p.nHeads, p.nKvHeads, p.headDim, p.useRope, p.ropeBase);
    const buf = this.state(p, () => new KVBuffer(this.batch, p.nKvHeads, this.model.config.maxSeq, p.headDim, k));
    buf.append(k, v);
    const [K, V] = buf.prefix();
    const d = p.dModel;
    const merge = (o: Tensor) => reshape(transpose(o, 1, 2), [this.batch, 1, d]);
    const cmp = merge(compressedAttention(q, K, V, { segment: p.segment }));
    const r = segmentAttention(q, K, V, { segment: p.segment, topK: p.topK, groupHeads: true, returnIndices: true });
    if (rec) rec.segments = keep(r.indices);
    const sel = merge(r.out);
    const win = merge(localAttention(q, K, V, { window: p.window, causal: true }));
    return p.o_proj.forward(mixPaths([cmp, sel, win], p.gate.forward(a)));
  }

  /** Frees every cache. */
  dispose(): void {
    this.dropRecord();
    for (const s of this.states.values()) {
      if (!s) continue;
      if (s instanceof KVBuffer || s instanceof SlotKV) s.dispose();
      else if ('window' in s) s.window?.dispose();
      else [s.h, s.c].forEach((t) => t.dispose());
    }
    this.states.clear();
    this.slots?.dispose();
    this.slots = null;
    for (const w of this.stacked.values()) w.dispose();
    this.stacked.clear();
    for (const s of this.gateWeights.values()) [s.weight, s.bias].forEach((t) => t?.dispose());
    this.gateWeights.clear();
  }
}
