// Recurrent layers. lstm() runs one LSTM layer over a whole sequence (batch first) as one fused
// scan: the input projection x W_ih^T + b_ih + b_hh for every step is one matmul up front, and
// the native op (lstmForward / lstmBackward, native/*/rnn.*) runs the recurrence with
// h_{t-1} W_hh^T inside, keeping the activated gates and c of every step for the backward.
// Gates in PyTorch's order i, f, g, o (rows of W_ih, W_hh, b_ih, b_hh in blocks of H).
//
// The op has three outputs (h every step, the last h and the last c) but the tape records one
// output per node, so they live in one flat buffer [B S H | B H | B H]: the node is recorded on
// the buffer, and out, h, c are views of it (narrow + reshape, themselves recorded). Gradients
// from any of the three land in the buffer's gradient and one lstmBackward handles them all.
import { DType, isFloat } from '../dtype';
import { DTypeError, ShapeError, describe } from '../errors';
import { op } from '../native';
import { Tensor, tidy } from '../tensor';
import { record } from '../tape';
import { zeros } from './creation';
import { add } from './elementwise';
import { matmul } from './linalg';
import { narrow, reshape } from './shape';
import { checkOptions, checkTensor, empty, sameDevice, viewOf } from './util';

const statsDType = (d: DType): DType => (d === 'float64' ? 'float64' : 'float32');

/** One layer's parameters, PyTorch's layout: W_ih [4H, in], W_hh [4H, H], b_ih, b_hh [4H]. */
export interface LstmWeights {
  wIh: Tensor;
  wHh: Tensor;
  bIh?: Tensor | null;
  bHh?: Tensor | null;
}

export interface LstmOptions {
  /** Initial hidden state [B, H] (default 0). */
  h0?: Tensor | null;
  /** Initial cell state [B, H] (default 0). */
  c0?: Tensor | null;
}

export interface LstmResult {
  /** h of every step [B, S, H]. */
  out: Tensor;
  /** The last hidden state [B, H] (h0 when S = 0). */
  h: Tensor;
  /** The last cell state [B, H] (c0 when S = 0). */
  c: Tensor;
}

function checkWeight(name: string, arg: string, t: unknown, shape: number[], dtype: DType): Tensor {
  const w = checkTensor(t, name, arg);
  if (w.dtype !== dtype) throw new DTypeError(`${name}: Expected ${arg} of dtype ${dtype} (x's) but received ${describe(w)}`);
  if (w.ndim !== shape.length || w.shape.some((d, i) => d !== shape[i])) {
    throw new ShapeError(`${name}: Expected ${arg} of shape [${shape.join(', ')}] but received ${describe(w)}`);
  }
  return w;
}

/**
 * One LSTM layer over x [B, S, in] (batch first): returns h of every step [B, S, H] and the
 * final state h, c [B, H]. Differentiable to x, the weights, the biases, h0 and c0.
 */
export function lstm(x: Tensor, weights: LstmWeights, options: LstmOptions = {}): LstmResult {
  const name = 'lstm';
  checkTensor(x, name, 'x');
  if (x.ndim !== 3) throw new ShapeError(`${name}: Expected x of shape [batch, seq, inputSize] but received ${describe(x)}`);
  if (!isFloat(x.dtype)) throw new DTypeError(`${name}: Expected a float tensor for x but received ${describe(x)}`);
  const w = checkOptions<LstmWeights>(weights, name, 'weights');
  const o = checkOptions<LstmOptions>(options, name);
  const [B, S, I] = x.shape;
  const wHh = checkTensor(w.wHh, name, 'weights.wHh');
  if (wHh.ndim !== 2 || wHh.shape[1] < 1 || wHh.shape[0] !== 4 * wHh.shape[1]) {
    throw new ShapeError(`${name}: Expected weights.wHh of shape [4 * hiddenSize, hiddenSize] but received ${describe(wHh)}`);
  }
  const H = wHh.shape[1], G = 4 * H, dt = x.dtype;
  checkWeight(name, 'weights.wHh', wHh, [G, H], dt);
  const wIh = checkWeight(name, 'weights.wIh', w.wIh, [G, I], dt);
  const bIh = w.bIh == null ? null : checkWeight(name, 'weights.bIh', w.bIh, [G], dt);
  const bHh = w.bHh == null ? null : checkWeight(name, 'weights.bHh', w.bHh, [G], dt);
  const h0 = o.h0 == null ? null : checkWeight(name, 'h0', o.h0, [B, H], dt);
  const c0 = o.c0 == null ? null : checkWeight(name, 'c0', o.c0, [B, H], dt);
  const device = sameDevice(name, x, wIh, wHh, ...[bIh, bHh, h0, c0].filter((t): t is Tensor => t !== null));
  const nh = B * S * H, ns = B * H;
  return tidy(() => {
    // xw = x W_ih^T + (b_ih + b_hh): [B, S, 4H], contiguous (a fresh matmul / add output)
    let xw = matmul(x, wIh, { transB: true });
    const bias = bIh && bHh ? add(bIh, bHh) : (bIh ?? bHh);
    if (bias) xw = add(xw, bias);
    const hInit = h0 ?? zeros([B, H], { dtype: dt, device });
    const cInit = c0 ?? zeros([B, H], { dtype: dt, device });
    const buf = empty([nh + 2 * ns], dt, device);
    const saved = empty([B, S, 5 * H], statsDType(dt), device);
    op.lstmForward({
      h: viewOf(buf, [B, S, H], [S * H, H, 1], 0),
      hN: viewOf(buf, [B, H], [H, 1], nh),
      cN: viewOf(buf, [B, H], [H, 1], nh + ns),
      saved,
      xw,
      whh: wHh,
      h0: hInit,
      c0: cInit,
    });
    record(buf, 'lstm', [xw, wHh, h0, c0], [buf, saved, wHh, hInit, cInit], { B, S, H });
    return {
      out: reshape(narrow(buf, 0, 0, nh), [B, S, H]),
      h: reshape(narrow(buf, 0, nh, ns), [B, H]),
      c: reshape(narrow(buf, 0, nh + ns, ns), [B, H]),
    };
  });
}
