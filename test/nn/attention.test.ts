// nn attention layers (MultiheadAttention, TransformerBlock, positional embeddings), activation
// modules and mseLoss against plain float64 references written from the formulas, with the
// modules' own weights read back; float64 gradchecks through inputs and parameters.
import * as dr from '../../lib';
import { nn } from '../../lib';
import { expectClose } from '../helpers';
import { randArray } from '../reference';
import { arr, linRef, ropeRef } from './ref';

interface MhaRefOpts { causal: boolean; kind: 'global' | 'local'; window: number; mode: 'sliding' | 'block'; rope: boolean; pad?: boolean[][] }

// The whole layer from the formula: x [B, S, dModel] (context [B, Sc, dc] for cross-attention).
function mhaRef(m: nn.MultiheadAttention, x: Float64Array, B: number, S: number, o: MhaRefOpts, ctx?: { data: Float64Array; Sc: number }): Float64Array {
  const H = m.nHeads, Hk = m.nKvHeads, hd = m.headDim, G = H / Hk;
  const Sk = ctx ? ctx.Sc : S;
  const q = linRef(x, B * S, m.q_proj);
  const k = linRef(ctx ? ctx.data : x, B * Sk, m.k_proj);
  const v = linRef(ctx ? ctx.data : x, B * Sk, m.v_proj);
  if (o.rope) {
    for (let b = 0; b < B; ++b)
      for (let s = 0; s < S; ++s) {
        for (let h = 0; h < H; ++h) ropeRef(q, (b * S + s) * H * hd + h * hd, hd, s, m.ropeBase);
        for (let h = 0; h < Hk; ++h) ropeRef(k, (b * Sk + s) * Hk * hd + h * hd, hd, s, m.ropeBase);
      }
  }
  const merged = new Float64Array(B * S * H * hd);
  const scale = 1 / Math.sqrt(hd);
  for (let b = 0; b < B; ++b)
    for (let h = 0; h < H; ++h)
      for (let i = 0; i < S; ++i) {
        const p = i + Sk - S, kh = Math.floor(h / G);
        const sc: number[] = [], js: number[] = [];
        for (let j = 0; j < Sk; ++j) {
          if (o.causal && j > p) continue;
          if (o.kind === 'local') {
            if (o.mode === 'sliding' && !(o.causal ? j > p - o.window : Math.abs(p - j) < o.window)) continue;
            if (o.mode === 'block' && Math.floor(j / o.window) !== Math.floor(p / o.window)) continue;
          }
          if (o.pad && o.pad[b][j]) continue;
          let d = 0;
          for (let t = 0; t < hd; ++t) d += q[(b * S + i) * H * hd + h * hd + t] * k[(b * Sk + j) * Hk * hd + kh * hd + t];
          sc.push(d * scale);
          js.push(j);
        }
        if (!sc.length) continue;
        const mx = Math.max(...sc);
        const e = sc.map((s) => Math.exp(s - mx));
        const z = e.reduce((a, c) => a + c, 0);
        for (let t = 0; t < js.length; ++t)
          for (let d = 0; d < hd; ++d) merged[(b * S + i) * H * hd + h * hd + d] += (e[t] / z) * v[(b * Sk + js[t]) * Hk * hd + kh * hd + d];
      }
  return linRef(merged, B * S, m.o_proj);
}

function input(shape: number[], seed: number, dtype: dr.DType = 'float64') {
  const data = randArray(shape.reduce((a, b) => a * b, 1), seed, -1, 1);
  const t = dr.tensor(data, shape, { dtype });
  return { t, data: arr(t) };
}

// Runs fn with the module's parameters (by field path) replaced by the given tensors: lets
// gradcheck differentiate through parameters.
function withParams<T>(m: nn.Module, ps: dr.Tensor[], fn: () => T): T {
  const named = m.namedParameters();
  const saved: Array<[Record<string, unknown>, string, unknown]> = [];
  named.forEach(([path], i) => {
    const parts = path.split('.');
    let obj = m as unknown as Record<string, unknown>;
    for (const p of parts.slice(0, -1)) obj = obj[p] as Record<string, unknown>;
    const key = parts[parts.length - 1];
    saved.push([obj, key, obj[key]]);
    obj[key] = ps[i];
  });
  try {
    return fn();
  } finally {
    for (const [obj, key, v] of saved) obj[key] = v;
  }
}

describe('MultiheadAttention', () => {
  const shapes: Array<{ B: number; S: number; d: number; H: number; Hk: number; hd?: number }> = [
    { B: 1, S: 1, d: 4, H: 1, Hk: 1 },
    { B: 2, S: 7, d: 12, H: 3, Hk: 1 },
    { B: 1, S: 9, d: 16, H: 8, Hk: 8, hd: 2 },
    { B: 2, S: 5, d: 6, H: 3, Hk: 3, hd: 4 },
  ];
  const kinds: MhaRefOpts[] = [
    { causal: true, kind: 'global', window: 0, mode: 'sliding', rope: true },
    { causal: false, kind: 'global', window: 0, mode: 'sliding', rope: false },
    { causal: true, kind: 'local', window: 3, mode: 'sliding', rope: true },
    { causal: true, kind: 'local', window: 2, mode: 'block', rope: false },
    { causal: false, kind: 'local', window: 2, mode: 'sliding', rope: true },
  ];
  for (const sh of shapes)
    for (const k of kinds) {
      test(`B${sh.B} S${sh.S} d${sh.d} H${sh.H}/${sh.Hk} ${k.kind}${k.kind === 'local' ? ` ${k.mode} w${k.window}` : ''} causal ${k.causal} rope ${k.rope}`, () => {
        dr.tidy(() => {
          const m = new nn.MultiheadAttention(sh.d, sh.H, {
            nKvHeads: sh.Hk, headDim: sh.hd, kind: k.kind, causal: k.causal, rope: k.rope, dtype: 'float64', generator: new dr.Generator(3),
            ...(k.kind === 'local' ? { window: k.window, mode: k.mode } : {}), bias: sh.S % 2 === 1,
          });
          const x = input([sh.B, sh.S, sh.d], 11);
          expectClose(m.forward(x.t), mhaRef(m, x.data, sh.B, sh.S, k), 'float64');
          m.dispose();
        });
      });
    }

  test('float32 and key padding', () => {
    dr.tidy(() => {
      const m = new nn.MultiheadAttention(8, 2, { generator: new dr.Generator(1) });
      const x = input([2, 6, 8], 5, 'float32');
      const pad = [[false, false, true, false, false, false], [true, false, false, false, false, true]];
      const mask = dr.tensor(pad.flat(), [2, 6], { dtype: 'bool' });
      const ref = { causal: true, kind: 'global' as const, window: 0, mode: 'sliding' as const, rope: true, pad };
      expectClose(m.forward(x.t, { keyPaddingMask: mask }), mhaRef(m, x.data, 2, 6, ref), 'float32', 4);
      m.dispose();
    });
  });

  test('cross-attention to a context of another width and length', () => {
    dr.tidy(() => {
      const m = new nn.MultiheadAttention(6, 2, { dContext: 5, dtype: 'float64', generator: new dr.Generator(2) });
      expect(m.causal).toBe(false);
      const x = input([2, 3, 6], 7);
      const c = input([2, 8, 5], 8);
      const ref = { causal: false, kind: 'global' as const, window: 0, mode: 'sliding' as const, rope: false };
      expectClose(m.forward(x.t, { context: c.t }), mhaRef(m, x.data, 2, 3, ref, { data: c.data, Sc: 8 }), 'float64');
      expect(() => m.forward(x.t)).toThrow(/needs options.context/);
      expect(() => m.forward(x.t, { context: dr.zeros([2, 8, 4], { dtype: 'float64' }) })).toThrow(/context of shape \[2, Sc, 5\]/);
      m.dispose();
    });
  });

  test('gradcheck through the input and every parameter (GQA, rope, local)', () => {
    dr.tidy(() => {
      const m = new nn.MultiheadAttention(8, 2, { nKvHeads: 1, kind: 'local', window: 2, bias: true, dtype: 'float64', generator: new dr.Generator(4) });
      const x = input([1, 4, 8], 9).t.requiresGrad_();
      const ps = m.parameters().map((p) => dr.tensor(arr(p), p.shape.slice(), { dtype: 'float64' }).requiresGrad_());
      expect(dr.gradcheck((xx, ...pp) => withParams(m, pp, () => m.forward(xx)), [x, ...ps]).ok).toBe(true);
      m.dispose();
    });
  });

  test("kind 'segment' reads the top segments; with every segment kept it equals causal global attention", () => {
    dr.tidy(() => {
      const mk = (kind: 'global' | 'segment', topK?: number) => new nn.MultiheadAttention(8, 4, {
        nKvHeads: 2, kind, dtype: 'float64', generator: new dr.Generator(12), ...(kind === 'segment' ? { segment: 3, topK } : {}),
      });
      const x = input([2, 10, 8], 13);
      const g = mk('global'), all = mk('segment', 4), few = mk('segment', 1);
      expectClose(all.forward(x.t), g.forward(x.t).dataSync(), 'float64');
      // topK 1 keeps only the own segment: a block-local attention of block 3
      const ref = mhaRef(few, x.data, 2, 10, { causal: true, kind: 'local', window: 3, mode: 'block', rope: true });
      expectClose(few.forward(x.t), ref, 'float64');
      expect(() => new nn.MultiheadAttention(8, 4, { kind: 'segment', segment: 4 })).toThrow(/positive integer for topK/);
      expect(() => new nn.MultiheadAttention(8, 4, { segment: 4 })).toThrow(/apply to kind 'segment' only/);
      [g, all, few].forEach((m) => m.dispose());
    });
  });

  test('parameter names follow Llama', () => {
    const m = new nn.MultiheadAttention(8, 4, { nKvHeads: 2 });
    expect(m.namedParameters().map(([n, p]) => `${n}:${p.shape.join('x')}`)).toEqual([
      'q_proj.weight:8x8', 'k_proj.weight:4x8', 'v_proj.weight:4x8', 'o_proj.weight:8x8',
    ]);
    m.dispose();
  });

  test('bad options and inputs are typed errors naming the argument', () => {
    expect(() => new nn.MultiheadAttention(8, 3)).toThrow(/not a multiple of nHeads/);
    expect(() => new nn.MultiheadAttention(8, 4, { nKvHeads: 3 })).toThrow(/nKvHeads dividing nHeads/);
    expect(() => new nn.MultiheadAttention(8, 4, { kind: 'local' })).toThrow(/positive integer for window/);
    expect(() => new nn.MultiheadAttention(8, 4, { window: 4 })).toThrow(/window applies to kind 'local'/);
    expect(() => new nn.MultiheadAttention(8, 4, { kind: 'dense' as never })).toThrow(dr.ValueError);
    expect(() => new nn.MultiheadAttention(6, 2, { headDim: 3 })).toThrow(/even headDim/);
    expect(() => new nn.MultiheadAttention(8, 4, { dContext: 4, rope: true })).toThrow(/self-attention only/);
    const m = new nn.MultiheadAttention(8, 4);
    expect(() => m.forward(dr.zeros([1, 3, 7]))).toThrow(dr.ShapeError);
    expect(() => m.forward(dr.zeros([1, 3, 8]), { context: dr.zeros([1, 2, 8]) })).toThrow(/constructed with dContext|cross-attention/);
    m.dispose();
  });

  test('no tensors leak across forward and backward', () => {
    const m = new nn.MultiheadAttention(8, 2, { generator: new dr.Generator(6) });
    const x = dr.randn([2, 5, 8]);
    const run = () => {
      const y = m.forward(x);
      const l = dr.sum(y);
      dr.backward(l);
      [y, l].forEach((t) => t.dispose());
      m.parameters().forEach((p) => { p.grad?.dispose(); p.grad = null; });
    };
    run();
    const before = dr.memory().tensors;
    for (let i = 0; i < 3; ++i) run();
    expect(dr.memory().tensors).toBe(before);
    x.dispose();
    m.dispose();
  });
});

describe('TransformerBlock', () => {
  test('pre-norm residual block against the composition of its parts', () => {
    dr.tidy(() => {
      for (const ffn of ['swiglu', 'gelu'] as const) {
        const blk = new nn.TransformerBlock(8, 2, { ffn, ffnHidden: 6, dtype: 'float64', generator: new dr.Generator(8) });
        const B = 2, S = 5, d = 8;
        const x = input([B, S, d], 12);
        // rms norms have weights 1 at init: set them to something else
        dr.noGrad(() => {
          blk.input_layernorm.weight.copy_(dr.tensor(randArray(d, 13, 0.5, 1.5), [d], { dtype: 'float64' }));
          blk.post_attention_layernorm.weight.copy_(dr.tensor(randArray(d, 14, 0.5, 1.5), [d], { dtype: 'float64' }));
        });
        const rms = (v: Float64Array, w: Float64Array) => {
          const out = new Float64Array(v.length);
          for (let r = 0; r < v.length / d; ++r) {
            let ss = 0;
            for (let i = 0; i < d; ++i) ss += v[r * d + i] ** 2;
            const inv = 1 / Math.sqrt(ss / d + 1e-6);
            for (let i = 0; i < d; ++i) out[r * d + i] = v[r * d + i] * inv * w[i];
          }
          return out;
        };
        const ref = { causal: true, kind: 'global' as const, window: 0, mode: 'sliding' as const, rope: true };
        const a = mhaRef(blk.self_attn, rms(x.data, arr(blk.input_layernorm.weight)), B, S, ref);
        const h = x.data.map((v, i) => v + a[i]);
        const n2 = rms(h, arr(blk.post_attention_layernorm.weight));
        const up = linRef(n2, B * S, blk.mlp.up);
        const hid = 6;
        const act = new Float64Array(B * S * hid);
        for (let r = 0; r < B * S; ++r)
          for (let i = 0; i < hid; ++i) {
            if (ffn === 'gelu') {
              const u = up[r * hid + i];
              act[r * hid + i] = 0.5 * u * (1 + erf(u / Math.SQRT2));
            } else {
              const g = up[r * 2 * hid + i], u = up[r * 2 * hid + hid + i];
              act[r * hid + i] = (g / (1 + Math.exp(-g))) * u;
            }
          }
        const down = linRef(act, B * S, blk.mlp.down);
        expectClose(blk.forward(x.t), h.map((v, i) => v + down[i]), 'float64');
        expect(blk.namedParameters().map(([n]) => n)).toEqual([
          'input_layernorm.weight', 'self_attn.q_proj.weight', 'self_attn.k_proj.weight', 'self_attn.v_proj.weight', 'self_attn.o_proj.weight',
          'post_attention_layernorm.weight', 'mlp.up.weight', 'mlp.down.weight',
        ]);
        blk.dispose();
      }
    });
  });

  test('gradcheck through the input and parameters', () => {
    dr.tidy(() => {
      const blk = new nn.TransformerBlock(4, 2, { ffnHidden: 3, kind: 'local', window: 2, dtype: 'float64', generator: new dr.Generator(9) });
      const x = input([1, 3, 4], 15).t.requiresGrad_();
      const ps = blk.parameters().map((p) => dr.tensor(arr(p), p.shape.slice(), { dtype: 'float64' }).requiresGrad_());
      expect(dr.gradcheck((xx, ...pp) => withParams(blk, pp, () => blk.forward(xx)), [x, ...ps]).ok).toBe(true);
      blk.dispose();
    });
  });
});

// erf by its series / continued fraction is overkill here: Abramowitz-Stegun 7.1.26 is 1.5e-7,
// too coarse for float64; use the Taylor series (|x| small in these tests) with many terms.
function erf(x: number): number {
  if (Math.abs(x) > 3) return Math.sign(x) * (1 - 2.2e-5);
  let term = x, sum = x;
  for (let n = 1; n < 60; ++n) {
    term *= (-x * x) / n;
    sum += term / (2 * n + 1);
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

describe('positional embeddings and activations', () => {
  test('sinusoidal table against the formula', () => {
    dr.tidy(() => {
      const pe = new nn.SinusoidalPositionalEmbedding(6, 10000, 'float64');
      const pos = [0, 1, 5, 1000];
      const got = arr(pe.forward(dr.tensor(new Int32Array(pos))));
      const want = new Float64Array(pos.length * 6);
      pos.forEach((p, r) => {
        for (let i = 0; i < 3; ++i) {
          const w = Math.pow(10000, (-2 * i) / 6);
          want[r * 6 + 2 * i] = Math.sin(p * w);
          want[r * 6 + 2 * i + 1] = Math.cos(p * w);
        }
      });
      expectClose(got, want, 'float64', 100);
      expect(() => new nn.SinusoidalPositionalEmbedding(5)).toThrow(/even dim/);
      expect(() => pe.forward(dr.zeros([3]))).toThrow(dr.DTypeError);
    });
  });

  test('ReLU, GELU and SiLU modules in a Sequential', () => {
    dr.tidy(() => {
      const x = input([7], 16);
      const seq = new nn.Sequential(new nn.ReLU(), new nn.SiLU(), new nn.GELU());
      const want = x.data.map((v) => {
        const r = Math.max(0, v);
        const s = r / (1 + Math.exp(-r));
        return 0.5 * s * (1 + erf(s / Math.SQRT2));
      });
      expectClose(seq.forward(x.t), want, 'float64', 10);
      expect(() => new nn.GELU('fast' as never)).toThrow(/'none' or 'tanh'/);
    });
  });
});

describe('mseLoss', () => {
  test('mean, sum and none against the formula; gradcheck', () => {
    dr.tidy(() => {
      const a = input([3, 5], 17), b = input([3, 5], 18);
      const sq = a.data.map((v, i) => (v - b.data[i]) ** 2);
      const total = sq.reduce((s, v) => s + v, 0);
      expectClose(dr.mseLoss(a.t, b.t), [total / 15], 'float64');
      expectClose(dr.mseLoss(a.t, b.t, { reduction: 'sum' }), [total], 'float64');
      expectClose(dr.mseLoss(a.t, b.t, { reduction: 'none' }), sq, 'float64');
      expect(dr.gradcheck((x, y) => dr.mseLoss(x, y), [a.t.clone().requiresGrad_(), b.t.clone().requiresGrad_()]).ok).toBe(true);
      expect(() => dr.mseLoss(a.t, dr.zeros([5, 3], { dtype: 'float64' }))).toThrow(/target of shape \[3, 5\]/);
      expect(() => dr.mseLoss(a.t, b.t, { reduction: 'avg' as never })).toThrow(dr.ValueError);
      expect(() => dr.mseLoss(a.t, dr.zeros([3, 5]))).toThrow(dr.DTypeError);
    });
  });
});

describe('identity layers keep the tape', () => {
  test('Dropout in eval or with p = 0, and an empty Sequential, pass gradients through', () => {
    dr.tidy(() => {
      for (const make of [() => new nn.Dropout(0), () => { const d = new nn.Dropout(0.5); d.eval(); return d; }, () => new nn.Sequential()]) {
        const x = dr.tensor([1, 2, 3], [3], { dtype: 'float64' }).requiresGrad_();
        const y = make().forward(x);
        dr.backward(dr.sum(dr.mul(y, y)));
        expect(Array.from(x.grad!.dataSync())).toEqual([2, 4, 6]);
      }
    });
  });
});
