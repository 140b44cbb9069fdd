// Continuous batching for DualRouteLM: many generations share each decode step.
//
// The engine owns `maxBatch` slots. A sequence gets a slot when it is admitted, fills it with
// its prompt in chunks (at most `prefillChunk` positions per step, so a long prompt never stalls
// the others for long), then decodes one token per step together with every other decoding
// sequence: ids [N, 1] through the layers in one batch, each sequence at its own position. Between
// steps new sequences join and finished or aborted ones leave (their slot is free at once).
//
// Per layer, what a step needs of the past lives in per-slot state:
//   window attention (sliding or block)  a ring of window + prefillChunk - 1 rows per slot:
//                                        memory flat however long the text
//   full attention, routed (MoD)         every position (maxSeq rows per slot)
//   segment attention                    every position plus the mean key of each segment
//   NSA                                  every position with segment mean keys (selection and
//                                        window branches), and each whole segment's mean key
//                                        and value (the compressed branch)
//   conv                                 the last kernel - 1 inputs of each sequence
//   lstm                                 h and c of each sequence
// and the attention of all sequences is one kvCacheAttention call per layer (lib/ops/kvcache.ts:
// per-sequence lengths and slots, as FlashAttention's varlen/with_kvcache APIs; NSA's three
// branches are three such calls, save for a prefill chunk's compressed branch, which runs on its
// one sequence with compressedAttention). Everything else
// (projections, norms, gates, fusion, feed-forward, MoE) runs on the packed batch. A sequence's
// tokens equal a generation on its own (tested), save for an MoE block with a capacity factor,
// whose drops depend on the batch.
//
// The JavaScript thread only queues ops: the kernels run on the addon's stream thread and the
// engine awaits the logits (data(into)), so the event loop serves requests while a step computes.
import { DTYPE_SIZE, TypedArray } from '../dtype';
import { ValueError, describe } from '../errors';
import { Generator } from '../random';
import { Tensor, keep, tidy, untracked } from '../tensor';
import { gt, mul, sigmoid } from '../ops/elementwise';
import { concat, narrow, reshape, transpose } from '../ops/shape';
import { matmul } from '../ops/linalg';
import { full, tensor, zeros } from '../ops/creation';
import { mean } from '../ops/reduce';
import { logSoftmax } from '../ops/nn';
import { PendingResidual, addAndNorm, addAndNormPending, pendingNorm } from '../nn/layers';
import { rope } from '../ops/attention';
import { compressedAttention, segmentMean, selectSegments } from '../ops/segment';
import { copy_ } from '../ops/inplace';
import { kvCacheAppend, kvCacheAttention } from '../ops/kvcache';
import { noGrad } from '../tape';
import { MultiheadAttention } from '../nn/attention';
import { RoutedAttention } from '../nn/routed';
import { NSAAttention } from '../nn/nsa';
import { TokenChoiceMoE, mixPaths } from '../nn/routers';
import { ConvPath, DualRouteLayer, LSTMPath } from '../models/layer';
import type { DecodableLM, StepLayerRouting, TokenRouting } from '../models/decode';
import { sampleToken } from '../models/generate';

// A token's routing is how the layers treated that token (its own position, as
// model.routingTrace reports it): known once the token has been fed, so a sequence asking for
// routing holds each token back one step (and feeds its last token once more than it samples).
export type { StepLayerRouting, TokenRouting };

export interface EngineOptions {
  /** Sequences decoding at once (cache slots; default 16). */
  maxBatch?: number;
  /** Prompt positions fed per step for a joining sequence (default 64). */
  prefillChunk?: number;
  /** Read every step's per-layer routing (for metrics) even when no request asks for it (default false). */
  collectRouting?: boolean;
  /** Called after each step with its kind, sequences, positions fed and wall time (queue to logits read). */
  onStep?: (s: StepInfo) => void;
}

export interface StepInfo {
  kind: 'prefill' | 'decode';
  sequences: number;
  positions: number;
  ms: number;
}

export interface SubmitOptions {
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  /** Seeds the sampling (default 0, as generate). */
  seed?: number;
  /** Report each token's log-probability and this many alternatives (0: the token's only; default: none). */
  logprobs?: number;
  /** Report each token's routing. */
  routing?: boolean;
  signal?: AbortSignal;
}

export interface EngineToken {
  token: number;
  /** log p(token) under the model's distribution (before temperature and top-p). */
  logprob?: number;
  /** The most likely tokens and their log-probabilities, best first. */
  top?: Array<{ token: number; logprob: number }>;
  routing?: TokenRouting;
}

/** Totals since the engine started, and the routing seen (per layer), for metrics. */
export interface EngineStats {
  steps: number;
  decodeSteps: number;
  prefillSteps: number;
  /** Sequences in the last decode step, and the most in any. */
  lastBatch: number;
  peakBatch: number;
  tokens: number;
  /** Per layer: sums over the tokens whose routing was read. */
  layers: Array<{
    tokens: number; gates: [number, number] | null; routed: number | null; experts: number[] | null;
    /** segment / NSA paths: segments read besides the own one, and the sum of their distances (in segments) back from it */
    segmentReads: number | null; segmentDistance: number | null;
  }>;
}

interface Sequence {
  prompt: number[];
  o: Required<Omit<SubmitOptions, 'signal' | 'logprobs'>> & { logprobs: number | null };
  signal?: AbortSignal;
  gen: Generator;
  slot: number;
  /** Positions in the slot so far. */
  length: number;
  /** Prompt positions fed so far. */
  fed: number;
  generated: number;
  last: number;
  /** routing: the newest token, pushed once the next step has fed it (and so routed it) */
  held: EngineToken | null;
  /** routing: the last token is being fed only for its routing; then the sequence ends */
  flushing: boolean;
  // the consumer's side: tokens not yet taken, and a waiting consumer
  queue: EngineToken[];
  done: boolean;
  error: unknown;
  wake: (() => void) | null;
  /** conv / lstm state of this sequence, by path */
  state: Map<object, Tensor[]>;
}

type SlotCache = { k: Tensor; v: Tensor; means: Tensor | null; segment: number; kind: string; /** positions per row (NSA's compressed cache: a segment) */ per: number };

// an NSA path's compressed-branch cache is keyed by this stand-in (its main cache by the path)
const NSA_COMPRESSED = new WeakMap<object, object>();

// the segments per query of a segment or NSA global path (0 for other layers)
const segmentTopK = (L: DualRouteLayer) => (L.global instanceof NSAAttention ? L.global.topK
  : L.global instanceof MultiheadAttention && L.global.kind === 'segment' ? L.global.topK : 0);

// a layer whose two paths are mixed by weights (every fusion but 'concat')
const hasGates = (L: DualRouteLayer) => !!(L.local && L.global) && L.spec.fusion !== 'concat';

const KINDS = ['window', 'full', 'segment', 'routed', 'nsa', 'conv', 'lstm'] as const;

/** A continuous-batching decoder over one DualRouteLM (see the file's head). */
export class BatchEngine {
  readonly maxBatch: number;
  readonly prefillChunk: number;
  private readonly collect: boolean;
  private readonly onStep: ((s: StepInfo) => void) | null;
  private readonly free: number[];
  private waiting: Sequence[] = [];
  private active: Sequence[] = [];
  private caches = new Map<object, SlotCache>();
  private running = false;
  private closed = false;
  private idle: Array<() => void> = [];
  // the arrays each step's logits, log-probabilities and routing are read into (grown as needed):
  // steps run one at a time and use what they read before the next, so one array a kind serves
  // every step, and a decode loop makes no ArrayBuffer a step for the collector to chase
  private readArrays = new Map<string, Float32Array>();
  readonly stats: EngineStats;

  constructor(readonly model: DecodableLM & { eval(): unknown }, options: EngineOptions = {}) {
    if (!model || typeof model !== 'object' || !Array.isArray(model.layers) || !model.config) throw new ValueError(`BatchEngine: Expected a DualRouteLM but received ${describe(model)}`);
    if (options === null || typeof options !== 'object') throw new ValueError(`BatchEngine: Expected an options object but received ${describe(options)}`);
    const known = ['maxBatch', 'prefillChunk', 'collectRouting', 'onStep'];
    for (const k of Object.keys(options)) if (!known.includes(k)) throw new ValueError(`BatchEngine: unknown option '${k}' (known: ${known.join(', ')})`);
    this.maxBatch = options.maxBatch ?? 16;
    this.prefillChunk = options.prefillChunk ?? 64;
    for (const [k, v] of [['maxBatch', this.maxBatch], ['prefillChunk', this.prefillChunk]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new ValueError(`BatchEngine: Expected a positive integer for ${k} but received ${describe(v)}`);
    }
    if (options.collectRouting !== undefined && typeof options.collectRouting !== 'boolean') throw new ValueError(`BatchEngine: Expected a boolean for collectRouting but received ${describe(options.collectRouting)}`);
    this.collect = options.collectRouting ?? false;
    if (options.onStep !== undefined && typeof options.onStep !== 'function') throw new ValueError(`BatchEngine: Expected a function for onStep but received ${describe(options.onStep)}`);
    this.onStep = options.onStep ?? null;
    this.free = Array.from({ length: this.maxBatch }, (_, i) => this.maxBatch - 1 - i);
    model.eval();
    this.stats = {
      steps: 0, decodeSteps: 0, prefillSteps: 0, lastBatch: 0, peakBatch: 0, tokens: 0,
      layers: model.layers.map((L) => ({
        tokens: 0,
        gates: hasGates(L) ? [0, 0] : null,
        routed: L.global instanceof RoutedAttention ? 0 : null,
        experts: L.mlp instanceof TokenChoiceMoE ? new Array<number>(L.mlp.experts).fill(0) : null,
        segmentReads: segmentTopK(L) ? 0 : null,
        segmentDistance: segmentTopK(L) ? 0 : null,
      })),
    };
  }

  /** Sequences decoding or filling their slot. */
  get runningCount(): number {
    return this.active.length;
  }

  /** Sequences waiting for a slot. */
  get waitingCount(): number {
    return this.waiting.length;
  }

  /** Bytes of the per-slot caches by path kind: allocated, and holding positions of live sequences. */
  cacheBytes(): Record<(typeof KINDS)[number], { allocated: number; used: number }> {
    const out = Object.fromEntries(KINDS.map((k) => [k, { allocated: 0, used: 0 }])) as Record<(typeof KINDS)[number], { allocated: number; used: number }>;
    for (const c of this.caches.values()) {
      const [, H, C, D] = c.k.shape;
      const o = out[c.kind as (typeof KINDS)[number]];
      o.allocated += c.k.byteSize + c.v.byteSize + (c.means?.byteSize ?? 0);
      const meanRow = c.means ? H * D * DTYPE_SIZE[c.means.dtype] : 0;
      for (const s of this.active) {
        const rows = Math.min(Math.floor(s.length / c.per), C);
        o.used += rows * 2 * H * D * DTYPE_SIZE[c.k.dtype] + (c.means ? Math.ceil(rows / c.segment) * meanRow : 0);
      }
    }
    for (const s of this.active) {
      for (const [p, ts] of s.state) {
        const b = ts.reduce((a, t) => a + t.byteSize, 0);
        const o = out[p instanceof ConvPath ? 'conv' : 'lstm'];
        o.allocated += b;
        o.used += b;
      }
    }
    return out;
  }

  /**
   * Queues a generation of up to maxTokens tokens after `prompt` (token ids) and yields its
   * tokens as they are chosen. It ends at maxTokens, at the model's maxSeq, or when the signal
   * aborts (or the consumer stops iterating), freeing its slot.
   */
  submit(prompt: number[], options: SubmitOptions = {}): AsyncGenerator<EngineToken> {
    const V = this.model.config.vocabSize;
    if (this.closed) throw new ValueError('BatchEngine.submit: the engine is closed');
    if (!Array.isArray(prompt) || prompt.length === 0 || prompt.some((t) => !Number.isInteger(t) || t < 0 || t >= V)) {
      throw new ValueError(`BatchEngine.submit: Expected a non-empty array of token ids in [0, ${V}) but received ${describe(prompt)}`);
    }
    if (prompt.length >= this.model.config.maxSeq) throw new ValueError(`BatchEngine.submit: the prompt (${prompt.length} tokens) leaves no room under maxSeq ${this.model.config.maxSeq}`);
    if (options === null || typeof options !== 'object') throw new ValueError(`BatchEngine.submit: Expected an options object but received ${describe(options)}`);
    const o = options;
    const known = ['maxTokens', 'temperature', 'topK', 'topP', 'seed', 'logprobs', 'routing', 'signal'];
    for (const k of Object.keys(o)) if (!known.includes(k)) throw new ValueError(`BatchEngine.submit: unknown option '${k}' (known: ${known.join(', ')})`);
    const maxTokens = o.maxTokens ?? 32, temperature = o.temperature ?? 1, topK = o.topK ?? V, topP = o.topP ?? 1, seed = o.seed ?? 0;
    if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new ValueError(`BatchEngine.submit: Expected an integer maxTokens >= 0 but received ${describe(o.maxTokens)}`);
    if (typeof temperature !== 'number' || !(temperature >= 0) || !Number.isFinite(temperature)) throw new ValueError(`BatchEngine.submit: Expected a finite temperature >= 0 but received ${describe(o.temperature)}`);
    if (!Number.isInteger(topK) || topK < 1) throw new ValueError(`BatchEngine.submit: Expected an integer topK >= 1 but received ${describe(o.topK)}`);
    if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) throw new ValueError(`BatchEngine.submit: Expected topP in (0, 1] but received ${describe(o.topP)}`);
    if (!Number.isInteger(seed) || seed < 0) throw new ValueError(`BatchEngine.submit: Expected an integer seed >= 0 but received ${describe(o.seed)}`);
    if (o.logprobs !== undefined && (!Number.isInteger(o.logprobs) || o.logprobs < 0 || o.logprobs > 20)) throw new ValueError(`BatchEngine.submit: Expected logprobs, an integer in [0, 20], but received ${describe(o.logprobs)}`);
    if (o.routing !== undefined && typeof o.routing !== 'boolean') throw new ValueError(`BatchEngine.submit: Expected a boolean for routing but received ${describe(o.routing)}`);
    if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new ValueError(`BatchEngine.submit: Expected an AbortSignal for signal but received ${describe(o.signal)}`);
    const seq: Sequence = {
      prompt: prompt.slice(),
      o: { maxTokens: Math.min(maxTokens, this.model.config.maxSeq - prompt.length), temperature, topK: Math.min(topK, V), topP, seed, routing: o.routing ?? false, logprobs: o.logprobs ?? null },
      signal: o.signal, gen: new Generator(seed), slot: -1, length: 0, fed: 0, generated: 0, last: -1, held: null, flushing: false,
      queue: [], done: false, error: null, wake: null, state: new Map(),
    };
    if (seq.o.maxTokens === 0) seq.done = true;
    else this.waiting.push(seq);
    const onAbort = () => this.wakeLoop();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    this.wakeLoop();
    const self = this;
    return (async function* () {
      try {
        for (;;) {
          if (seq.queue.length) {
            yield seq.queue.shift()!;
            continue;
          }
          if (seq.error) throw seq.error;
          if (seq.done) return;
          await new Promise<void>((r) => (seq.wake = r));
        }
      } finally {
        // the consumer stopped (or the generation ended): leave the batch
        o.signal?.removeEventListener('abort', onAbort);
        if (!seq.done) {
          seq.done = true;
          self.wakeLoop();
        }
      }
    })();
  }

  /** Resolves when no sequence runs or waits. */
  drained(): Promise<void> {
    if (!this.running && !this.waiting.length && !this.active.length) return Promise.resolve();
    return new Promise((r) => this.idle.push(r));
  }

  /** Ends every generation and frees the caches. */
  async close(): Promise<void> {
    this.closed = true;
    for (const s of [...this.waiting, ...this.active]) this.finish(s);
    this.waiting = [];
    await this.drained();
    this.disposeCaches();
    this.readArrays.clear();
  }

  private disposeCaches(): void {
    for (const c of this.caches.values()) [c.k, c.v, c.means].forEach((t) => t?.dispose());
    this.caches.clear();
  }

  private wakeLoop(): void {
    if (this.running) return;
    this.running = true;
    // on a later turn: submit() returns first
    setImmediate(() => {
      this.loop().catch((e) => {
        for (const s of [...this.active, ...this.waiting]) this.fail(s, e);
      }).finally(() => {
        this.running = false;
        if (this.waiting.length || this.active.length) this.wakeLoop();
        else this.idle.splice(0).forEach((r) => r());
      });
    });
  }

  private push(s: Sequence, t: EngineToken): void {
    s.queue.push(t);
    s.wake?.();
    s.wake = null;
  }

  private finish(s: Sequence): void {
    s.done = true;
    this.release(s);
    s.wake?.();
    s.wake = null;
  }

  private fail(s: Sequence, e: unknown): void {
    s.error = e;
    this.finish(s);
  }

  private release(s: Sequence): void {
    const i = this.active.indexOf(s);
    if (i >= 0) this.active.splice(i, 1);
    const w = this.waiting.indexOf(s);
    if (w >= 0) this.waiting.splice(w, 1);
    if (s.slot >= 0) {
      this.free.push(s.slot);
      s.slot = -1;
    }
    for (const ts of s.state.values()) ts.forEach((t) => t.dispose());
    s.state.clear();
  }

  private async loop(): Promise<void> {
    for (;;) {
      // leave: aborted or stopped by the consumer
      for (const s of [...this.active, ...this.waiting]) if (s.done || s.signal?.aborted) this.finish(s);
      // join: free slots to waiting sequences, in order
      while (this.waiting.length && this.free.length) {
        const s = this.waiting.shift()!;
        s.slot = this.free.pop()!;
        this.active.push(s);
      }
      if (!this.active.length) return;
      // one prefill chunk (the oldest filling sequence), then one decode step of every decoding sequence
      const filling = this.active.find((s) => s.fed < s.prompt.length);
      if (filling) {
        const n = Math.min(this.prefillChunk, filling.prompt.length - filling.fed);
        const ids = filling.prompt.slice(filling.fed, filling.fed + n);
        const last = filling.fed + n === filling.prompt.length;
        const t0 = performance.now();
        await this.step([filling], [ids], last);
        this.stats.prefillSteps++;
        this.onStep?.({ kind: 'prefill', sequences: 1, positions: n, ms: performance.now() - t0 });
      }
      const decoding = this.active.filter((s) => s.fed === s.prompt.length && s.last >= 0 && !s.done && !s.signal?.aborted);
      if (decoding.length) {
        const t0 = performance.now();
        await this.step(decoding, decoding.map((s) => [s.last]), true);
        this.stats.decodeSteps++;
        this.onStep?.({ kind: 'decode', sequences: decoding.length, positions: decoding.length, ms: performance.now() - t0 });
        this.stats.lastBatch = decoding.length;
        this.stats.peakBatch = Math.max(this.stats.peakBatch, decoding.length);
      }
      // let the event loop run between steps
      await new Promise((r) => setImmediate(r));
    }
  }

  // One forward of `seqs` (each feeding ids[i], all of one length) through the slot caches;
  // when `sample`, each sequence's next token from its last position's logits.
  private async step(seqs: Sequence[], ids: number[][], sample: boolean): Promise<void> {
    const N = seqs.length, Sq = ids[0].length;
    const wantRouting = sample && (this.collect || seqs.some((s) => s.o.routing));
    const wantLogprobs = seqs.some((s) => s.o.logprobs !== null);
    const out = noGrad(() => tidy(() => {
      const m = this.model, c = m.config;
      const idT = tensor(Int32Array.from(ids.flat()), [N, Sq], { dtype: 'int32' });
      const pos = tensor(Int32Array.from(seqs.flatMap((s) => Array.from({ length: Sq }, (_, i) => s.length + i))), [N, Sq], { dtype: 'int32' });
      const after = seqs.map((s) => s.length + Sq);
      const i32 = (xs: number[]) => tensor(Int32Array.from(xs), [N], { dtype: 'int32' });
      this.index = { slots: i32(seqs.map((s) => s.slot)), before: i32(seqs.map((s) => s.length)), lengths: i32(after), after };
      const routing: Tensor[] = [];
      // each layer's last residual add goes into the next norm's pass (as DualRouteLayer.forwardPending)
      let h: Tensor | PendingResidual = m.embed_tokens.forward(idT);
      for (const L of m.layers) h = this.layerStep(L, h, idT, pos, seqs, wantRouting ? routing : null);
      if (!sample) return { logits: null, logp: null, routing: null };  // a prefill chunk before the prompt's last
      // only the last position of each sequence is sampled: the last layer's add and the final
      // norm run on that position alone
      const lastCol = (t: Tensor) => (Sq > 1 ? narrow(t, 1, Sq - 1, 1) : t);
      const n = pendingNorm(h instanceof Tensor ? lastCol(h) : { h: lastCol(h.h), r: lastCol(h.r) }, m.norm);
      const logits = reshape(m.lm_head ? m.lm_head.forward(n) : matmul(n, m.embed_tokens.weight, { transB: true }), [N, c.vocabSize]);
      return {
        logits,
        logp: wantLogprobs ? logSoftmax(logits.to('float32'), -1) : null,
        routing: routing.length ? concat(routing, 1) : null,
      };
    }));
    this.index = null;  // (its tensors went with the step's tidy)
    for (const s of seqs) s.length += Sq;
    seqs.forEach((s, i) => {
      if (s.fed < s.prompt.length) s.fed += ids[i].length;
    });
    this.stats.steps++;
    if (!sample) return;
    try {
      const [lg, lp, rt] = await Promise.all([this.read(out.logits!, 'logits'), out.logp && this.read(out.logp, 'logp'), out.routing && this.read(out.routing, 'routing')]);
      const V = this.model.config.vocabSize;
      const routes = rt ? this.readRouting(rt, N) : null;
      const maxSeq = this.model.config.maxSeq;
      seqs.forEach((s, i) => {
        if (s.done) return;
        // the token this step fed has its routing now
        if (s.held) {
          if (routes) s.held.routing = routes[i];
          this.push(s, s.held);
          s.held = null;
        }
        if (s.flushing) {
          this.finish(s);
          return;
        }
        const row = lg.subarray(i * V, (i + 1) * V) as ArrayLike<number>;
        const u = s.gen.uniform();  // as rand([1], {generator}), on the host: no op per sequence
        const token = sampleToken(Float64Array.from(row), s.o, u);
        const t: EngineToken = { token };
        if (lp && s.o.logprobs !== null) {
          const r = lp.subarray(i * V, (i + 1) * V) as ArrayLike<number>;
          t.logprob = Number(r[token]);
          if (s.o.logprobs > 0) {
            const order = Array.from({ length: V }, (_, j) => j).sort((a, b) => Number(r[b]) - Number(r[a]) || a - b);
            t.top = order.slice(0, s.o.logprobs).map((j) => ({ token: j, logprob: Number(r[j]) }));
          }
        }
        s.last = token;
        s.generated++;
        this.stats.tokens++;
        const ending = s.generated >= s.o.maxTokens || s.length + 1 > maxSeq;
        if (!s.o.routing) {
          this.push(s, t);
          if (ending) this.finish(s);
        } else if (!ending) {
          s.held = t;
        } else if (s.length + 1 <= maxSeq) {
          // one more step feeds the last token for its routing
          s.held = t;
          s.flushing = true;
        } else {
          this.push(s, t);  // no position left to feed it: it goes without routing
          this.finish(s);
        }
      });
    } finally {
      out.logits?.dispose();
      out.logp?.dispose();
      out.routing?.dispose();
    }
  }

  /** A step's result read into this engine's array for `kind` (float32 and bfloat16; others as data()). */
  private read(t: Tensor, kind: string): Promise<TypedArray> {
    if (t.dtype !== 'float32' && t.dtype !== 'bfloat16') return t.data();
    let a = this.readArrays.get(kind);
    if (!a || a.length < t.size) {
      a = new Float32Array(Math.max(t.size, 2 * (a?.length ?? 0)));
      this.readArrays.set(kind, a);
    }
    return t.data(a.subarray(0, t.size));
  }

  // routing values per sequence, [N, F]: per layer gates (2), routed (1), expert (1) where present
  private readRouting(v: ArrayLike<number>, N: number): TokenRouting[] {
    const F = v.length / N;
    const res: TokenRouting[] = [];
    for (let i = 0; i < N; ++i) {
      let at = i * F;
      const layers = this.model.layers.map((L, li) => {
        const st = this.stats.layers[li];
        const r: StepLayerRouting = { gates: null, routed: null, expert: null, segments: null };
        if (hasGates(L)) {
          r.gates = [Number(v[at]), Number(v[at + 1])];
          at += 2;
          st.gates![0] += r.gates[0];
          st.gates![1] += r.gates[1];
        }
        if (L.global instanceof RoutedAttention) {
          r.routed = Number(v[at++]) > 0;
          st.routed! += r.routed ? 1 : 0;
        }
        const K = segmentTopK(L);
        if (K) {
          r.segments = Array.from({ length: K }, (_, k) => Number(v[at + k])).filter((x) => x >= 0);
          at += K;
          // how far back the reads go: the own segment's distance to each other segment read
          for (const sg of r.segments.slice(1)) st.segmentDistance! += r.segments[0] - sg;
          st.segmentReads! += r.segments.length - 1;
        }
        if (L.mlp instanceof TokenChoiceMoE) {
          r.expert = Number(v[at++]);
          st.experts![r.expert] += 1;
        }
        st.tokens++;
        return r;
      });
      res.push({ layers });
    }
    return res;
  }

  // input: the embeddings or the previous layer's pending { h, r }; returns this layer's
  private layerStep(L: DualRouteLayer, input: Tensor | PendingResidual, ids: Tensor, pos: Tensor, seqs: Sequence[], routing: Tensor[] | null): PendingResidual {
    const { h: x, y: a } = addAndNormPending(input, L.input_layernorm);
    const N = x.shape[0], Sq = x.shape[1];
    const lastCol = (t: Tensor) => (Sq > 1 ? narrow(t, 1, Sq - 1, 1) : t);  // [N, 1, ...]
    const l = L.local ? this.pathStep(L.local, a, pos, seqs) : null;
    this.routedMask = null;
    this.segmentRows = null;
    this.wantSegments = routing !== null;
    const g = L.global ? this.pathStep(L.global, a, pos, seqs) : null;
    let mixed: Tensor;
    if (l && g) {
      mixed = L.fuse(l, g, a, ids);
      // in readRouting's order: gates, routed, expert
      if (routing && hasGates(L)) {
        const gates = L.fusionGates;
        routing.push(gates ? reshape(lastCol(gates.ndim === 4 ? mean(gates, 3) : gates).to('float32'), [N, 2]) : full([N, 2], 1));
      }
    } else mixed = (l ?? g)!;
    if (routing && this.routedMask) routing.push(reshape(lastCol(this.routedMask).to('float32'), [N, 1]));
    if (routing && this.segmentRows) routing.push(this.segmentRows);
    const { h, y: mIn } = addAndNorm(x, mixed, L.post_attention_layernorm);
    if (routing && L.mlp instanceof TokenChoiceMoE) {
      const r = L.mlp.route(lastCol(mIn));
      routing.push(reshape(narrow(r.indices, 1, 0, 1), [N, 1]).to('float32'));
    }
    return { h, r: L.mlp.forward(mIn) };
  }

  // the routed path's mask [N, Sq, 1] of the layer being stepped
  private routedMask: Tensor | null = null;
  // a segment or NSA path's selection for the last position of each sequence, head 0: float32 [N, topK] (-1 pads)
  private segmentRows: Tensor | null = null;
  private wantSegments = false;

  // the segments head 0 of each sequence's last query reads, as segmentAttention selects them
  private selectRows(q: Tensor, c: SlotCache, lengths: number[], seqs: Sequence[], segment: number, topK: number, group: number): Tensor {
    const Sq = q.shape[2], D = q.shape[3];
    const rows = seqs.map((s, i) => {
      const len = lengths[i];
      const K = narrow(narrow(c.k, 0, s.slot, 1), 2, 0, len).contiguous();
      const qi = narrow(narrow(q, 0, i, 1), 2, Sq - 1, 1).contiguous();
      const summaries = c.means ? narrow(narrow(c.means, 0, s.slot, 1), 2, 0, Math.ceil(len / segment)).contiguous() : undefined;
      const idx = selectSegments(qi, K, { Sk: len, scale: 1 / Math.sqrt(D) }, { segment, topK, group, causal: true, ...(summaries ? { summaries } : {}) });
      return reshape(narrow(idx, 1, 0, 1), [1, topK]);
    });
    return concat(rows, 0).to('float32');
  }

  private cache(p: object, kind: string, Hk: number, hd: number, capacity: number, like: Tensor, segment = 0, per = 1): SlotCache {
    let c = this.caches.get(p);
    if (!c) {
      const shape = [this.maxBatch, Hk, capacity, hd];
      const opts = { dtype: like.dtype, device: like.device };
      c = untracked(() => ({
        k: zeros(shape, opts), v: zeros(shape, opts),
        means: segment ? zeros([this.maxBatch, Hk, Math.ceil(capacity / segment), hd], { dtype: like.dtype === 'float64' ? 'float64' : 'float32', device: like.device }) : null,
        segment, kind, per,
      }));
      this.caches.set(p, c);
    }
    return c;
  }

  // q [N, H, Sq, hd] and k, v [N, Hk, Sq, hd] of the step's tokens, rotated at their positions
  private qkv(proj: { q_proj: { forward(x: Tensor): Tensor }; k_proj: { forward(x: Tensor): Tensor }; v_proj: { forward(x: Tensor): Tensor } },
    a: Tensor, H: number, Hk: number, hd: number, useRope: boolean, base: number, pos: Tensor): [Tensor, Tensor, Tensor] {
    const [N, Sq] = a.shape;
    const heads = (t: Tensor, n: number) => transpose(reshape(t, [N, Sq, n, hd]), 1, 2).contiguous();
    let q = heads(proj.q_proj.forward(a), H), k = heads(proj.k_proj.forward(a), Hk);
    const v = heads(proj.v_proj.forward(a), Hk);
    if (useRope) {
      q = rope(q, pos, { base });
      k = rope(k, pos, { base });
    }
    return [q, k, v];
  }

  private merge(o: Tensor, width: number): Tensor {
    return reshape(transpose(o, 1, 2), [o.shape[0], o.shape[2], width]);
  }

  // the step's slots and lengths (before and after its positions), as int32 tensors made once per
  // step (every attention layer's append and attention take them) and as numbers
  private index: { slots: Tensor; before: Tensor; lengths: Tensor; after: number[] } | null = null;

  private append(c: SlotCache, k: Tensor, v: Tensor, segment = 0): { lengths: Tensor; slots: Tensor; after: number[] } {
    const ix = this.index!;
    kvCacheAppend(c.k, c.v, k, v, { lengths: ix.before, slots: ix.slots, means: c.means ?? undefined, segment: segment || undefined });
    return { lengths: ix.lengths, slots: ix.slots, after: ix.after };
  }

  private pathStep(p: object, a: Tensor, pos: Tensor, seqs: Sequence[]): Tensor {
    const maxSeq = this.model.config.maxSeq;
    if (p instanceof MultiheadAttention) {
      const [q, k, v] = this.qkv(p, a, p.nHeads, p.nKvHeads, p.headDim, p.useRope, p.ropeBase, pos);
      let o: Tensor;
      if (p.kind === 'local') {
        const c = this.cache(p, 'window', p.nKvHeads, p.headDim, Math.min(maxSeq, p.window + this.prefillChunk - 1), k);
        const ix = this.append(c, k, v);
        o = kvCacheAttention(q, c.k, c.v, { lengths: ix.lengths, slots: ix.slots, mask: p.mode, window: p.window });
      } else if (p.kind === 'segment') {
        const c = this.cache(p, 'segment', p.nKvHeads, p.headDim, maxSeq, k, p.segment);
        const ix = this.append(c, k, v, p.segment);
        const group = p.groupHeads ? p.nHeads / p.nKvHeads : 1;
        o = kvCacheAttention(q, c.k, c.v, { lengths: ix.lengths, slots: ix.slots, means: c.means!, segment: p.segment, topK: p.topK, group });
        if (this.wantSegments) this.segmentRows = this.selectRows(q, c, ix.after, seqs, p.segment, p.topK, group);
      } else {
        const c = this.cache(p, 'full', p.nKvHeads, p.headDim, maxSeq, k);
        const ix = this.append(c, k, v);
        o = kvCacheAttention(q, c.k, c.v, { lengths: ix.lengths, slots: ix.slots });
      }
      return p.o_proj.forward(this.merge(o, p.nHeads * p.headDim));
    }
    if (p instanceof RoutedAttention) {
      const at = p.attn;
      const [q, k, v] = this.qkv(at, a, at.nHeads, at.nKvHeads, at.headDim, at.useRope, at.ropeBase, pos);
      // every token's key is kept: a routed token attends to all that came before it
      const c = this.cache(p, 'routed', at.nKvHeads, at.headDim, maxSeq, k);
      const ix = this.append(c, k, v);
      const rows = at.o_proj.forward(this.merge(kvCacheAttention(q, c.k, c.v, { lengths: ix.lengths, slots: ix.slots }), at.nHeads * at.headDim));
      const routed = gt(p.predictor.forward(a), 0);  // [N, Sq, 1]
      this.routedMask = routed;
      const w = mul(sigmoid(p.router.forward(a)), routed.to(rows.dtype));
      return mul(rows, w);
    }
    if (p instanceof NSAAttention) {
      const [q, k, v] = this.qkv(p, a, p.nHeads, p.nKvHeads, p.headDim, p.useRope, p.ropeBase, pos);
      const seg = p.segment, G = p.nHeads / p.nKvHeads, Sq = a.shape[1];
      // every position, with its segments' mean keys (the selection branch's scores)
      const c = this.cache(p, 'nsa', p.nKvHeads, p.headDim, maxSeq, k, seg);
      const before = seqs.map((s) => s.length);
      const ix = this.append(c, k, v, seg);
      // the compressed branch's keys and values: each whole segment's mean key and value, written
      // when the segment completes
      const cc = this.cache(NSA_COMPRESSED.get(p) ?? NSA_COMPRESSED.set(p, {}).get(p)!, 'nsa', p.nKvHeads, p.headDim, Math.ceil(maxSeq / seg), k, 0, seg);
      seqs.forEach((s, i) => {
        for (let g = Math.floor(before[i] / seg); g < Math.floor(ix.after[i] / seg); ++g) {
          for (const [src, dst] of [[c.k, cc.k], [c.v, cc.v]] as const) {
            copy_(narrow(narrow(dst, 0, s.slot, 1), 2, g, 1), segmentMean(narrow(narrow(src, 0, s.slot, 1), 2, g * seg, seg), seg));
          }
        }
      });
      const sel = kvCacheAttention(q, c.k, c.v, { lengths: ix.lengths, slots: ix.slots, means: c.means!, segment: seg, topK: p.topK, group: G });
      const win = kvCacheAttention(q, c.k, c.v, { lengths: ix.lengths, slots: ix.slots, mask: 'sliding', window: p.window });
      let cmp: Tensor;
      if (Sq === 1) {
        // a query sees the segments wholly at or before it: the first floor(length / segment)
        const whole = ix.after.map((L) => Math.floor(L / seg));
        const o = kvCacheAttention(q, cc.k, cc.v, { lengths: whole.map((w) => Math.max(1, w)), slots: ix.slots });
        cmp = whole.every((w) => w > 0) ? o : mul(o, tensor(Float32Array.from(whole, (w) => (w > 0 ? 1 : 0)), [seqs.length, 1, 1, 1]).to(o.dtype));
      } else {
        // a prefill chunk (one sequence): its rows see different numbers of whole segments
        cmp = concat(seqs.map((s, i) => compressedAttention(narrow(q, 0, i, 1),
          narrow(narrow(c.k, 0, s.slot, 1), 2, 0, ix.after[i]).contiguous(), narrow(narrow(c.v, 0, s.slot, 1), 2, 0, ix.after[i]).contiguous(), { segment: seg })), 0);
      }
      if (this.wantSegments) this.segmentRows = this.selectRows(q, c, ix.after, seqs, seg, p.topK, G);
      const d = p.dModel;
      return p.o_proj.forward(mixPaths([this.merge(cmp, d), this.merge(sel, d), this.merge(win, d)], p.gate.forward(a)));
    }
    if (p instanceof ConvPath) {
      const kz = p.conv.kernelSize, d = a.shape[2];
      // each sequence's last kernel - 1 inputs (zeros at the start: the causal padding)
      const hist = concat(seqs.map((s) => s.state.get(p)?.[0] ?? zeros([1, kz - 1, d], { dtype: a.dtype, device: a.device })), 0);
      const win = concat([hist, a], 1);
      const y = p.forward(win);
      const W = win.shape[1];
      seqs.forEach((s, i) => {
        s.state.get(p)?.forEach((t) => t.dispose());
        s.state.set(p, [keep(narrow(narrow(win, 0, i, 1), 1, W - (kz - 1), kz - 1).contiguous())]);
      });
      return narrow(y, 1, W - a.shape[1], a.shape[1]);
    }
    if (p instanceof LSTMPath) {
      let state: { h: Tensor; c: Tensor } | undefined;
      if (seqs.some((s) => s.state.has(p))) {
        const d = a.shape[2];
        const part = (s: Sequence, j: number) => s.state.get(p)?.[j] ?? zeros([1, 1, d], { dtype: a.dtype, device: a.device });
        state = { h: concat(seqs.map((s) => part(s, 0)), 1), c: concat(seqs.map((s) => part(s, 1)), 1) };
      }
      const r = p.lstm.forward(a, state);
      seqs.forEach((s, i) => {
        s.state.get(p)?.forEach((t) => t.dispose());
        s.state.set(p, [keep(narrow(r.h, 1, i, 1).contiguous()), keep(narrow(r.c, 1, i, 1).contiguous())]);
      });
      return r.out;
    }
    throw new ValueError(`BatchEngine: no batched step for ${describe(p)}`);
  }
}
