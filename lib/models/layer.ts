// One dual-routing layer (see lib/models/dual_route_lm.ts for the equation) and its local paths.
import { OutOfRangeError, ShapeError, ValueError, describe } from '../errors';
import { Generator } from '../random';
import { noGrad } from '../tape';
import { Tensor, tidy, keep } from '../tensor';
import { add } from '../ops/elementwise';
import { full } from '../ops/creation';
import { cast, concat, narrow, reshape } from '../ops/shape';
import { mean } from '../ops/reduce';
import { softmax } from '../ops/nn';
import { layerDrop } from '../ops/route_rules';
import { Module } from '../nn/module';
import { Dropout, Linear, MLP, PendingResidual, RMSNorm, addAndNorm, addAndNormPending } from '../nn/layers';
import { MultiheadAttention } from '../nn/attention';
import { RoutedAttention } from '../nn/routed';
import { NSAAttention } from '../nn/nsa';
import { Conv1d } from '../nn/conv';
import { SiLU } from '../nn/activations';
import { LSTM } from '../nn/rnn';
import { RandomRouter, RuleRouter, SigmoidGates, SoftmaxGates, TokenChoiceMoE, mixPaths } from '../nn/routers';
import { FusionKind, GlobalKind, LocalKind, ResolvedConfig, ResolvedLayer } from './config';

const asDType = (t: Tensor, d: Tensor['dtype']): Tensor => (t.dtype === d ? t : cast(t, d));

/** The conv local path: a causal depthwise convolution, SiLU, then a projection (the low path). */
export class ConvPath extends Module {
  conv: Conv1d;
  act = new SiLU();
  proj: Linear;
  constructor(d: number, kernel: number, init: { generator: Generator; causal?: boolean }) {
    super();
    this.conv = new Conv1d(d, d, kernel, { groups: d, causal: init.causal ?? true, generator: init.generator });
    this.proj = new Linear(d, d, { generator: init.generator, bias: false });
  }
  forward(x: Tensor): Tensor {
    return tidy(() => this.proj.forward(this.act.forward(this.conv.forward(x))));
  }
}

/** The LSTM local path: a one-layer LSTM of width d over the normalised input (its output sequence). */
export class LSTMPath extends Module {
  lstm: LSTM;
  constructor(d: number, init: { generator: Generator }) {
    super();
    this.lstm = new LSTM(d, d, { generator: init.generator });
  }
  forward(x: Tensor): Tensor {
    return tidy(() => this.lstm.forward(x).out);
  }
}

/** What a layer routed in its last forward (means over the batch and positions). */
export interface LayerRouting {
  /** Mean weight of (local, global) per token, when both paths run. */
  gates: [number, number] | null;
  /** Tokens (or token choices) per expert of the MoE feed-forward block. */
  expertLoad: number[] | null;
  /** A 'routed' global path: the fraction of tokens it took, and (training) how often its causal predictor agreed. */
  routed: { routed: number; agreement: number | null } | null;
  /** An 'nsa' global path: mean gate of its (compressed, selected, sliding) branches. */
  nsaGates: [number, number, number] | null;
}

/**
 * What a layer routed at each position of one batch row (DualRouteLM.routingTrace); S positions.
 * A field is null when the layer has no such routing.
 */
export interface LayerTrace {
  /** The layer's paths and fusion (fusion null when only one path runs). */
  local: LocalKind;
  global: GlobalKind;
  fusion: FusionKind | null;
  /** [S][2]: the weight of (local, global) at each position; per-channel gates averaged over channels; 1, 1 for 'sum'. */
  gates: number[][] | null;
  /** A 'routed' global path: whether each position went through its attention. */
  routed: boolean[] | null;
  /** An MoE feed-forward block: the first-choice expert of each position (dropped by the capacity or not). */
  expert: number[] | null;
  /** An MoE feed-forward block: entries (position, choice) of this row kept per expert. */
  expertLoad: number[] | null;
  /** An 'nsa' global path: [S][3], the gates of its (compressed, selected, sliding) branches. */
  nsaGates: number[][] | null;
  /** A 'segment' or 'nsa' global path: the segments the position's query reads (head 0; own segment first, then by score). */
  segments: number[][] | null;
}

/** One dual-routing layer (see the file's head). */
export class DualRouteLayer extends Module {
  input_layernorm: RMSNorm;
  local: MultiheadAttention | ConvPath | LSTMPath | null;
  global: MultiheadAttention | RoutedAttention | NSAAttention | null;
  gate: SigmoidGates | SoftmaxGates | Linear | RuleRouter | RandomRouter | null = null;
  post_attention_layernorm: RMSNorm;
  mlp: MLP | TokenChoiceMoE;
  dropout: Dropout;
  /** Decoder layers of a seq2seq model: cross-attention to the kept encoder states. */
  cross_attn_layernorm: RMSNorm | null = null;
  encoder_attn: MultiheadAttention | null = null;
  private lastGates: Tensor | null = null;
  // set by setTracing: forward keeps its two normalised inputs for routingTrace()
  private tracing = false;
  private traced: { a: Tensor; m: Tensor } | null = null;

  /**
   * options.causal false: a bidirectional (encoder) layer; options.cross: a decoder layer that
   * also cross-attends to a context after its two paths.
   */
  constructor(readonly c: ResolvedConfig, readonly spec: ResolvedLayer, private readonly g: Generator, options: { causal?: boolean; cross?: boolean } = {}) {
    super();
    const d = c.dModel;
    const causal = options.causal ?? true;
    this.input_layernorm = new RMSNorm(d, c.normEps);
    this.post_attention_layernorm = new RMSNorm(d, c.normEps);
    const attn = { nKvHeads: c.nKvHeads, rope: c.rope, ropeBase: c.ropeBase, generator: g, causal };
    this.local = spec.local === 'window'
      ? new MultiheadAttention(d, c.nHeads, { ...attn, kind: 'local', window: spec.window, mode: spec.windowMode })
      : spec.local === 'conv' ? new ConvPath(d, spec.convKernel, { generator: g, causal })
        : spec.local === 'lstm' ? new LSTMPath(d, { generator: g }) : null;
    this.global = spec.global === 'full'
      ? new MultiheadAttention(d, c.nHeads, attn)
      : spec.global === 'segment' ? new MultiheadAttention(d, c.nHeads, { ...attn, kind: 'segment', segment: spec.segment, topK: spec.topK })
        : spec.global === 'routed' ? new RoutedAttention(d, c.nHeads, { nKvHeads: c.nKvHeads, rope: c.rope, ropeBase: c.ropeBase, generator: g, capacity: spec.capacity })
          : spec.global === 'nsa' ? new NSAAttention(d, c.nHeads, { nKvHeads: c.nKvHeads, rope: c.rope, ropeBase: c.ropeBase, generator: g, segment: spec.segment, topK: spec.topK, window: spec.window })
            : null;
    if (this.local && this.global) {
      const units = spec.gateUnits === 'channel' ? d : 1;
      switch (spec.fusion) {
        case 'gated': this.gate = new SigmoidGates(d, 2, { units, generator: g }); break;
        case 'softmax': this.gate = new SoftmaxGates(d, 2, { units, generator: g }); break;
        // weights from the two outputs themselves: a shared score of each path's output, softmax over the two
        case 'attention': this.gate = new Linear(d, 1, { generator: g }); break;
        case 'concat': this.gate = new Linear(2 * d, d, { generator: g, bias: false }); break;
        case 'rule': this.gate = new RuleRouter(spec.rules, 2, { default: spec.ruleDefault, vocabSize: c.vocabSize }); break;
        case 'random': this.gate = new RandomRouter(spec.randomProbs, { generator: g }); break;
        case 'sum': break;
      }
    }
    this.mlp = c.ffn === 'moe'
      ? new TokenChoiceMoE(d, c.ffnHidden, { experts: c.moe!.experts, topK: c.moe!.topK, capacityFactor: c.moe!.capacityFactor, score: c.moe!.score,
        auxLossWeight: c.moe!.auxLossWeight, zLossWeight: c.moe!.zLossWeight, generator: g })
      : new MLP(d, c.ffnHidden, c.ffn, { generator: g, bias: false });
    this.dropout = new Dropout(c.dropout, g);
    if (options.cross) {
      this.cross_attn_layernorm = new RMSNorm(d, c.normEps);
      this.encoder_attn = new MultiheadAttention(d, c.nHeads, { nKvHeads: c.nKvHeads, dContext: d, generator: g });
    }
  }

  /**
   * The gates of the last fuse (a gated, softmax, attention, rule or random fusion): [B, S, 2], or
   * [B, S, 2, d] per channel; null before the first and for 'sum' and 'concat'. Owned by the
   * layer and freed at the next fuse: alias it to keep it (DecodeCache records a step's).
   */
  get fusionGates(): Tensor | null {
    return this.lastGates;
  }

  /**
   * The mixed output of the two paths (a = the normalised input; ids for rule routing); keeps the
   * gates for routing(). `gates`: a 'gated' or 'softmax' fusion's gates of a, when the caller has
   * computed them (a decode step, with stacked weights it keeps); by default the gate module's.
   */
  fuse(l: Tensor, gl: Tensor, a: Tensor, ids: Tensor, gates?: Tensor): Tensor {
    const keepGates = (t: Tensor) => {
      this.lastGates?.dispose();
      this.lastGates = keep(t);
      return t;
    };
    const gate = this.gate;
    switch (this.spec.fusion) {
      case 'sum': return add(l, gl);
      case 'gated': case 'softmax': {
        const gt = keepGates(gates ?? (gate as SigmoidGates | SoftmaxGates).forward(a));
        return mixPaths([l, gl], gt);
      }
      case 'attention': {
        const lin = gate as Linear;
        const scores = concat([lin.forward(l), lin.forward(gl)], -1);  // [B, S, 2]
        return mixPaths([l, gl], keepGates(softmax(scores, -1)));
      }
      case 'concat': return (gate as Linear).forward(concat([l, gl], -1));
      // one-hot (or expected) gates come as float32: in the paths' dtype
      case 'rule': return mixPaths([l, gl], keepGates(asDType((gate as RuleRouter).forward(ids), l.dtype)));
      case 'random': {
        // eval: the expectation, exact in the paths' dtype (the router's gates are float32)
        if (this.training) return mixPaths([l, gl], keepGates(asDType((gate as RandomRouter).forward(ids), l.dtype)));
        const [p0, p1] = this.spec.randomProbs;
        const lead = l.shape.slice(0, -1);
        return mixPaths([l, gl], keepGates(concat([full([...lead, 1], p0, { dtype: l.dtype, device: l.device }), full([...lead, 1], p1, { dtype: l.dtype, device: l.device })], -1)));
      }
    }
  }

  /**
   * x [B, S, d], ids [B, S] (rule and random routing), context [B, Sc, d] for a decoder layer.
   * Returns the layer's output, the residual stream with the feed-forward branch added (to chain
   * layers, forwardPending saves that add's pass).
   */
  forward(x: Tensor, ids: Tensor, context?: Tensor): Tensor {
    return tidy(() => {
      const { h, r } = this.forwardPending(x, ids, context);
      return add(h, r);
    });
  }

  /**
   * forward with the last residual add left pending: returns the residual stream h and the
   * feed-forward branch r (dropout and layerDrop applied) whose sum is forward's output. The next
   * layer takes { h, r } as its input and adds them in its input norm's pass (addAndNorm), and a
   * model's final norm does the same (pendingNorm): each layer boundary is one pass instead of
   * an add, then a norm reading the sum. x: a tensor (the first layer) or a previous layer's
   * { h, r }.
   */
  forwardPending(x: Tensor | PendingResidual, ids: Tensor, context?: Tensor): PendingResidual {
    return tidy(() => {
      const start = addAndNormPending(x, this.input_layernorm, 'DualRouteLayer.forwardPending');
      let h = start.h;
      const a = start.y;
      const l = this.local ? this.local.forward(a) : null;
      const gl = this.global ? this.global.forward(a) : null;
      const mixed = l && gl ? this.fuse(l, gl, a, ids) : (l ?? gl)!;
      const drop = (t: Tensor) => (this.c.layerDrop > 0 ? layerDrop(t, this.c.layerDrop, { training: this.training, generator: this.g }) : t);
      // each residual add feeds a norm: both in one pass (addAndNorm)
      let r = drop(this.dropout.forward(mixed));
      if (this.encoder_attn) {
        if (!context) throw new ShapeError('DualRouteLayer: a decoder layer needs the encoder context');
        const c = addAndNorm(h, r, this.cross_attn_layernorm!);
        h = c.h;
        r = drop(this.dropout.forward(this.encoder_attn.forward(c.y, { context })));
      }
      const { h: hn, y: m } = addAndNorm(h, r, this.post_attention_layernorm);
      if (this.tracing) this.keepTraced(a, m);
      return { h: hn, r: drop(this.dropout.forward(this.mlp.forward(m))) };
    });
  }

  private keepTraced(a: Tensor, m: Tensor): void {
    this.dropTraced();
    this.traced = { a: keep(a.alias()), m: keep(m.alias()) };  // views without the graph
  }

  private dropTraced(): void {
    this.traced?.a.dispose();
    this.traced?.m.dispose();
    this.traced = null;
  }

  /**
   * While on, each forward keeps the layer's normalised inputs (of its paths and of its
   * feed-forward block) for routingTrace(); off frees them. DualRouteLM.routingTrace sets it
   * around its own forward, so that an ordinary forward keeps nothing more than routing() needs.
   */
  setTracing(on: boolean): void {
    this.tracing = on;
    if (!on) this.dropTraced();
  }

  /**
   * Per-position routing of batch row `row` in the last forward run with setTracing(true): the
   * kept gates, and the routed tokens, experts and segments recomputed from the kept inputs by
   * the paths' own selection (in the current training mode). Reads the device.
   */
  routingTrace(row = 0): LayerTrace {
    const name = 'DualRouteLayer.routingTrace';
    const t = this.traced;
    if (!t) throw new ValueError(`${name}: no traced forward to read (run a forward after setTracing(true), or use DualRouteLM.routingTrace)`);
    const [B, S] = t.a.shape;
    if (!Number.isInteger(row) || row < 0 || row >= B) throw new OutOfRangeError(`${name}: Expected row, an integer in [0, ${B}) (the batch), but received ${describe(row)}`);
    const spec = this.spec;
    const both = !!(this.local && this.global);
    const out: LayerTrace = {
      local: spec.local, global: spec.global, fusion: both ? spec.fusion : null,
      gates: null, routed: null, expert: null, expertLoad: null, nsaGates: null, segments: null,
    };
    // rows [S][P] of a [B, S, P] tensor's batch row
    const rows = (x: Tensor, P: number): number[][] => {
      const v = narrow(x.dtype === 'float32' || x.dtype === 'float64' ? x : cast(x, 'float32'), 0, row, 1).dataSync();
      return Array.from({ length: S }, (_, s) => Array.from({ length: P }, (_, p) => Number(v[s * P + p])));
    };
    noGrad(() => tidy(() => {
      const g = this.lastGates;
      if (g && g.shape[0] === B && g.shape[1] === S) out.gates = rows(g.ndim === 4 ? mean(g, 3) : g, 2);
      else if (both && spec.fusion === 'sum') out.gates = Array.from({ length: S }, () => [1, 1]);
      if (this.global instanceof RoutedAttention) {
        out.routed = Array.from(narrow(this.global.routedMask(t.a), 0, row, 1).dataSync(), (v) => Number(v) !== 0);
      }
      if (this.global instanceof NSAAttention) out.nsaGates = rows(this.global.gate.forward(t.a), 3);
      const sel = this.global instanceof NSAAttention || (this.global instanceof MultiheadAttention && this.global.kind === 'segment')
        ? this.global.selectedSegments(t.a) : null;
      if (sel) {
        const K = sel.shape[3];
        const v = narrow(narrow(sel, 0, row, 1), 1, 0, 1).dataSync();  // head 0: [S, K]
        out.segments = Array.from({ length: S }, (_, s) => Array.from(v.subarray(s * K, (s + 1) * K), Number).filter((i) => i >= 0));
      }
      if (this.mlp instanceof TokenChoiceMoE) {
        const K = this.mlp.topK, E = this.mlp.experts;
        const r = this.mlp.route(t.m);
        const idx = r.indices.dataSync(), pos = r.positions.dataSync();
        const load = new Array<number>(E).fill(0);
        const expert: number[] = [];
        for (let s = 0; s < S; ++s) {
          const base = (row * S + s) * K;
          expert.push(Number(idx[base]));
          for (let k = 0; k < K; ++k) if (Number(pos[base + k]) >= 0) load[Number(idx[base + k])] += 1;
        }
        out.expert = expert;
        out.expertLoad = load;
      }
    }));
    return out;
  }

  /** The routing of the last forward (reads the device). */
  routing(): LayerRouting {
    let gates: [number, number] | null = null;
    if (this.lastGates) {
      const g = this.lastGates;
      const m = tidy(() => {
        // per-channel gates [B, S, 2, d]: their mean over channels too
        const t = g.ndim === 4 ? mean(g, [0, 1, 3]) : mean(reshape(g, [-1, 2]), 0);
        return Array.from(t.dataSync(), Number);
      });
      gates = [m[0], m[1]];
    } else if (this.local && this.global && this.spec.fusion === 'sum') {
      gates = [1, 1];
    }
    const expertLoad = this.mlp instanceof TokenChoiceMoE ? this.mlp.lastRouting?.counts ?? null : null;
    const routed = this.global instanceof RoutedAttention ? this.global.routing() : null;
    const nsaGates = this.global instanceof NSAAttention ? this.global.routing() : null;
    return { gates, expertLoad, routed, nsaGates };
  }

  dispose(): void {
    this.lastGates?.dispose();
    this.lastGates = null;
    this.dropTraced();
    if (this.mlp instanceof TokenChoiceMoE) this.mlp.releaseRouting();
    super.dispose();
  }
}

