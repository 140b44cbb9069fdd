// Recurrent modules. LSTM stacks lstm() layers (lib/ops/rnn.ts: one fused scan per layer),
// batch first, with PyTorch's parameter names, layout and initialisation, so a PyTorch
// nn.LSTM(batch_first=True) state dict loads as it is:
//   weight_ih_l{k} [4H, in] (in = inputSize for layer 0, else H), weight_hh_l{k} [4H, H],
//   bias_ih_l{k}, bias_hh_l{k} [4H] (bias: true), all ~ U(-1/sqrt(H), 1/sqrt(H)), drawn in
//   that order, layer by layer; gate blocks i, f, g, o.
import { DType, isFloat } from '../dtype';
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { Tensor, tidy } from '../tensor';
import { rand } from '../ops/creation';
import { lstm } from '../ops/rnn';
import { narrow, reshape, stack } from '../ops/shape';
import { checkOptions, checkTensor } from '../ops/util';
import { Module } from './module';
import { Dropout, InitOptions } from './layers';

export interface LSTMOptions extends InitOptions {
  /** Stacked layers (default 1). */
  numLayers?: number;
  /** b_ih and b_hh per layer (default true). */
  bias?: boolean;
  /** Dropout on the outputs of every layer but the last, in training mode (default 0). */
  dropout?: number;
}

export interface LSTMState {
  /** Hidden state [numLayers, B, H]. */
  h: Tensor;
  /** Cell state [numLayers, B, H]. */
  c: Tensor;
}

export interface LSTMOutput extends LSTMState {
  /** The last layer's h of every step [B, S, H]. */
  out: Tensor;
}

const KEYS = ['numLayers', 'bias', 'dropout', 'dtype', 'device', 'generator'];

/** A stacked LSTM, batch first: forward(x [B, S, inputSize], state?) -> { out [B, S, H], h, c }. */
export class LSTM extends Module {
  readonly numLayers: number;
  readonly bias: boolean;
  readonly dropout: number;
  private readonly drop: Dropout | null;

  constructor(readonly inputSize: number, readonly hiddenSize: number, options: LSTMOptions = {}) {
    super();
    const o = checkOptions<LSTMOptions>(options, 'LSTM');
    for (const k of Object.keys(o)) {
      if (!KEYS.includes(k)) throw new ValueError(`LSTM: unknown option '${k}' (expected one of ${KEYS.join(', ')})`);
    }
    for (const [arg, v] of [['inputSize', inputSize], ['hiddenSize', hiddenSize], ['numLayers', o.numLayers ?? 1]] as const) {
      if (!Number.isInteger(v) || (v as number) <= 0) throw new ValueError(`LSTM: Expected a positive integer for ${arg} but received ${describe(v)}`);
    }
    if (o.bias !== undefined && typeof o.bias !== 'boolean') throw new ValueError(`LSTM: Expected a boolean for bias but received ${describe(o.bias)}`);
    const p = o.dropout ?? 0;
    if (typeof p !== 'number' || !(p >= 0 && p < 1)) throw new ValueError(`LSTM: Expected dropout in [0, 1) but received ${describe(p)}`);
    if (o.dtype !== undefined && !isFloat(o.dtype as DType)) throw new DTypeError(`LSTM: Expected a float dtype but received ${describe(o.dtype)}`);
    this.numLayers = o.numLayers ?? 1;
    this.bias = o.bias ?? true;
    this.dropout = p;
    this.drop = p > 0 && this.numLayers > 1 ? new Dropout(p, o.generator) : null;
    const H = hiddenSize, k = 1 / Math.sqrt(H);
    const init = { dtype: o.dtype, device: o.device, generator: o.generator, low: -k, high: k };
    const self = this as unknown as Record<string, Tensor>;
    for (let l = 0; l < this.numLayers; ++l) {
      self[`weight_ih_l${l}`] = this.param(() => rand([4 * H, l === 0 ? inputSize : H], init));
      self[`weight_hh_l${l}`] = this.param(() => rand([4 * H, H], init));
      if (this.bias) {
        self[`bias_ih_l${l}`] = this.param(() => rand([4 * H], init));
        self[`bias_hh_l${l}`] = this.param(() => rand([4 * H], init));
      }
    }
  }

  private layer(l: number): { wIh: Tensor; wHh: Tensor; bIh: Tensor | null; bHh: Tensor | null } {
    const self = this as unknown as Record<string, Tensor>;
    return {
      wIh: self[`weight_ih_l${l}`],
      wHh: self[`weight_hh_l${l}`],
      bIh: this.bias ? self[`bias_ih_l${l}`] : null,
      bHh: this.bias ? self[`bias_hh_l${l}`] : null,
    };
  }

  forward(x: Tensor, state?: LSTMState): LSTMOutput {
    const name = `LSTM(${this.inputSize}, ${this.hiddenSize})`;
    checkTensor(x, name, 'x');
    const w0 = this.layer(0).wIh;
    if (x.ndim !== 3 || x.shape[2] !== this.inputSize) {
      throw new ShapeError(`${name}: Expected x of shape [batch, seq, ${this.inputSize}] but received ${describe(x)}`);
    }
    if (x.dtype !== w0.dtype) throw new DTypeError(`${name}: Expected x of dtype ${w0.dtype} (the parameters') but received ${describe(x)}`);
    const B = x.shape[0], H = this.hiddenSize, L = this.numLayers;
    if (state !== undefined) {
      const s = checkOptions<LSTMState>(state, name, 'state');
      for (const arg of ['h', 'c'] as const) {
        const t = checkTensor(s[arg], name, `state.${arg}`);
        if (t.ndim !== 3 || t.shape[0] !== L || t.shape[1] !== B || t.shape[2] !== H) {
          throw new ShapeError(`${name}: Expected state.${arg} of shape [${L}, ${B}, ${H}] but received ${describe(t)}`);
        }
        if (t.dtype !== x.dtype) throw new DTypeError(`${name}: Expected state.${arg} of dtype ${x.dtype} but received ${describe(t)}`);
      }
    }
    return tidy(() => {
      let input = x;
      let out: Tensor = x;
      const hs: Tensor[] = [], cs: Tensor[] = [];
      for (let l = 0; l < L; ++l) {
        const at = (t: Tensor) => reshape(narrow(t, 0, l, 1), [B, H]);
        const r = lstm(input, this.layer(l), state ? { h0: at(state.h), c0: at(state.c) } : {});
        hs.push(r.h);
        cs.push(r.c);
        out = r.out;
        input = this.drop && l < L - 1 ? this.drop.forward(r.out) : r.out;
      }
      return { out, h: stack(hs, 0), c: stack(cs, 0) };
    });
  }
}
