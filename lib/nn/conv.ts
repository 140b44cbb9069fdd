// Conv1d over a sequence, channels last ([batch, seq, channels], the layout of every other layer
// here; PyTorch's Conv1d takes [batch, channels, seq]). Weights keep PyTorch's layout
// [out, in / groups, kernel] so that they map over by name. Causal (the default: y[t] reads
// x[t - k + 1 .. t], zeros before the start, as a decoder's local path must) or centred ('same'
// length, odd kernels). Full (groups 1: one matmul over the k shifted copies side by side) or
// depthwise (groups = channels: k fused multiply-adds of shifted views); both differentiable
// through the tape.
import { ShapeError, ValueError, describe } from '../errors';
import { Tensor, tidy } from '../tensor';
import { rand, zeros } from '../ops/creation';
import { add, mul } from '../ops/elementwise';
import { matmul } from '../ops/linalg';
import { concat, narrow, permute, reshape } from '../ops/shape';
import { checkOptions, checkTensor } from '../ops/util';
import { Module } from './module';
import { InitOptions } from './layers';

export interface Conv1dOptions extends InitOptions {
  /** 1 (full) or inChannels (depthwise, with outChannels = inChannels). Default 1. */
  groups?: number;
  /** y[t] sees x[t - kernel + 1 .. t] only (left zero padding). Default true; false pads both sides (odd kernel). */
  causal?: boolean;
  bias?: boolean;
}

export class Conv1d extends Module {
  weight: Tensor;
  bias: Tensor | null;
  readonly groups: number;
  readonly causal: boolean;

  constructor(readonly inChannels: number, readonly outChannels: number, readonly kernelSize: number, options: Conv1dOptions = {}) {
    super();
    const name = 'Conv1d';
    const o = checkOptions<Conv1dOptions>(options, name);
    for (const [n, v] of [['inChannels', inChannels], ['outChannels', outChannels], ['kernelSize', kernelSize]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new ValueError(`${name}: Expected a positive integer for ${n} but received ${describe(v)}`);
    }
    this.groups = o.groups ?? 1;
    if (this.groups !== 1 && this.groups !== inChannels) throw new ValueError(`${name}: Expected groups 1 (full) or ${inChannels} (depthwise) but received ${describe(o.groups)}`);
    if (this.groups !== 1 && outChannels !== inChannels) throw new ValueError(`${name}: a depthwise convolution keeps the channels: Expected outChannels ${inChannels} but received ${describe(outChannels)}`);
    this.causal = o.causal ?? true;
    if (typeof this.causal !== 'boolean') throw new ValueError(`${name}: Expected a boolean for causal but received ${describe(o.causal)}`);
    if (!this.causal && kernelSize % 2 === 0) throw new ValueError(`${name}: a centred (non-causal) convolution needs an odd kernelSize but received ${kernelSize}`);
    // PyTorch's init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in / groups * kernel
    const bound = 1 / Math.sqrt((inChannels / this.groups) * kernelSize);
    const init = { dtype: o.dtype, device: o.device, generator: o.generator, low: -bound, high: bound };
    this.weight = this.param(() => rand([outChannels, inChannels / this.groups, kernelSize], init));
    this.bias = o.bias === false ? null : this.param(() => rand([outChannels], init));
  }

  /** x [batch, seq, inChannels] -> [batch, seq, outChannels]. */
  forward(x: Tensor): Tensor {
    const name = `Conv1d(${this.inChannels}, ${this.outChannels}, ${this.kernelSize})`;
    checkTensor(x, name, 'x');
    if (x.ndim !== 3 || x.shape[2] !== this.inChannels) throw new ShapeError(`${name}: Expected x of shape [batch, seq, ${this.inChannels}] but received ${describe(x)}`);
    const [B, S, C] = x.shape;
    const k = this.kernelSize;
    return tidy(() => {
      const left = this.causal ? k - 1 : (k - 1) / 2, right = k - 1 - left;
      const parts = [];
      if (left) parts.push(zeros([B, left, C], { dtype: x.dtype, device: x.device }));
      parts.push(x);
      if (right) parts.push(zeros([B, right, C], { dtype: x.dtype, device: x.device }));
      const xp = parts.length > 1 ? concat(parts, 1) : x;
      // tap i reads x[t - left + i]
      const tap = (i: number) => narrow(xp, 1, i, S);
      let y: Tensor;
      if (this.groups === 1) {
        const cols = k === 1 ? x : concat(Array.from({ length: k }, (_, i) => tap(i)), 2);  // [B, S, k C], tap-major
        const w = reshape(permute(this.weight, [0, 2, 1]), [this.outChannels, k * C]);
        y = matmul(cols, w, { transB: true });
      } else {
        const w = reshape(this.weight, [C, k]);
        y = mul(tap(0), reshape(narrow(w, 1, 0, 1), [C]));
        for (let i = 1; i < k; ++i) y = add(y, mul(tap(i), reshape(narrow(w, 1, i, 1), [C])));
      }
      return this.bias ? add(y, this.bias) : y;
    });
  }
}
