// Loads the addon and describes its surface. Only lib/ talks to it; every call site wraps
// native errors with toTypedError.
import bindings from 'bindings';

export type Handle = number;

export interface NativeDevices {
  cpu: { name: string; threads: number; simd: string; features: string };
  cuda: {
    available: boolean;
    reason: string;
    build: string;
    devices: Array<{
      name: string;
      totalMemory: number;
      freeMemory: number;
      computeCapability: string;
      multiprocessors: number;
      cublasLt: boolean;
      cublasLtStatus: string;
    }>;
  };
}

export interface NativeMemory {
  cpu: { tensors: number; bytes: number; buffers: number; cachedBytes: number };
  cuda: { tensors: number; bytes: number; buffers: number; reservedBytes?: number };
}

export interface Native {
  empty(shape: number[], dtype: number, device: number): Handle;
  fromBytes(bytes: Uint8Array, shape: number[], dtype: number, device: number): Handle;
  view(h: Handle, shape: number[], strides: number[], offset: number): Handle;
  release(h: Handle): boolean;
  isLive(h: Handle): boolean;
  readSync(h: Handle): ArrayBuffer;
  read(h: Handle): Promise<ArrayBuffer>;
  toDevice(h: Handle, device: number): Handle;
  devices(): NativeDevices;
  memory(): NativeMemory;
  numThreads(): number;
  setNumThreads(n: number): void;
  synchronize(): void;
  emptyCache(): void;
  opNames(): { unary: string[]; binary: string[] };
  fill(out: Handle, value: number): void;
  arange(out: Handle, start: number, step: number): void;
  random(out: Handle, kind: number, seed: number, offset: number, a: number, b: number): void;
  copy(out: Handle, x: Handle): void;
  unary(op: number, out: Handle, x: Handle): void;
  binary(op: number, out: Handle, a: Handle, b: Handle): void;
  binaryScalar(op: number, out: Handle, a: Handle, s: number, scalarFirst: boolean): void;
  where(out: Handle, cond: Handle, a: Handle, b: Handle): void;
  reduce(op: number, out: Handle, x: Handle, axes: number[]): void;
  argReduce(op: number, out: Handle, x: Handle, axis: number): void;
  matmul(out: Handle, a: Handle, b: Handle, transA: boolean, transB: boolean, alpha: number, beta: number): void;
  softmax(out: Handle, x: Handle, axis: number, log: boolean): void;
  rmsNorm(out: Handle, x: Handle, weight: Handle, eps: number, rstd: Handle): void;
  layerNorm(out: Handle, x: Handle, weight: Handle, bias: Handle, eps: number, mean: Handle, rstd: Handle): void;
  swiglu(out: Handle, x: Handle): void;
  embedding(out: Handle, ids: Handle, table: Handle): void;
  gather(out: Handle, x: Handle, index: Handle, axis: number): void;
  scatterAdd(out: Handle, index: Handle, src: Handle, axis: number): void;
  crossEntropy(loss: Handle, logits: Handle, targets: Handle, ignoreIndex: number, smoothing: number, lse: Handle): void;
  // Backward kernels and fused optimizer steps (optional tensors: -1). Statistics (rstd, mean,
  // lse) and dloss are float32, float64 for float64 inputs.
  softmaxBackward(dx: Handle, y: Handle, dy: Handle, axis: number, log: boolean): void;
  rmsNormBackward(dx: Handle, dweight: Handle, x: Handle, weight: Handle, rstd: Handle, dy: Handle): void;
  layerNormBackward(dx: Handle, dweight: Handle, dbias: Handle, x: Handle, weight: Handle, mean: Handle, rstd: Handle, dy: Handle): void;
  crossEntropyBackward(dlogits: Handle, logits: Handle, targets: Handle, lse: Handle, dloss: Handle, ignoreIndex: number, smoothing: number): void;
  unaryBackward(op: number, dx: Handle, x: Handle, dy: Handle): void;
  swigluBackward(dx: Handle, x: Handle, dy: Handle): void;
  adamwStep(param: Handle, grad: Handle, expAvg: Handle, expAvgSq: Handle, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, step: number, gradScale: number): void;
  sgdStep(param: Handle, grad: Handle, momentumBuf: Handle, lr: number, momentum: number, dampening: number, weightDecay: number, nesterov: boolean, firstStep: boolean, gradScale: number): void;
  attentionForward(out: Handle, lse: Handle, q: Handle, k: Handle, v: Handle, mask: number, causal: boolean, window: number,
                   scale: number, keyPadding: Handle, queryIndex: Handle): void;
  attentionBackward(dq: Handle, dk: Handle, dv: Handle, q: Handle, k: Handle, v: Handle, out: Handle, dout: Handle, lse: Handle,
                    mask: number, causal: boolean, window: number, scale: number, keyPadding: Handle, queryIndex: Handle): void;
  dualAttentionForward(out: Handle, outLocal: Handle, outGlobal: Handle, lseLocal: Handle, lseGlobal: Handle, q: Handle,
                       k: Handle, v: Handle, gates: Handle, mask: number, causal: boolean, window: number, scale: number,
                       keyPadding: Handle, globalRows: Handle): void;
  /** The dual forward's q/k/v gradient, added into dq, dk, dv. */
  dualAttentionBackward(dq: Handle, dk: Handle, dv: Handle, q: Handle, k: Handle, v: Handle, outLocal: Handle, outGlobal: Handle,
                        dout: Handle, lseLocal: Handle, lseGlobal: Handle, gates: Handle, mask: number, causal: boolean,
                        window: number, scale: number, keyPadding: Handle, globalRows: Handle): void;
  rope(out: Handle, x: Handle, positions: Handle, base: number, inverse: boolean): void;
}

// DUALROUTE_ADDON_DIR points at another build folder (a second build tree, a packed copy).
export const native: Native = process.env.DUALROUTE_ADDON_DIR
  ? require(require('path').resolve(process.env.DUALROUTE_ADDON_DIR, 'dualroute.node'))
  : bindings('dualroute');

/** Unary and binary op codes, in the order of native/core/ops.h (checked in a test). */
export const UNARY_OPS = [
  'neg', 'abs', 'exp', 'log', 'sqrt', 'rsqrt', 'sin', 'cos', 'tanh', 'sigmoid', 'relu', 'gelu', 'geluTanh',
  'silu', 'square', 'reciprocal', 'floor', 'ceil', 'round', 'sign', 'erf', 'log1p', 'expm1', 'logicalNot',
] as const;
export type UnaryName = (typeof UNARY_OPS)[number];
export const BINARY_OPS = [
  'add', 'sub', 'mul', 'div', 'pow', 'maximum', 'minimum', 'eq', 'ne', 'lt', 'le', 'gt', 'ge', 'logicalAnd',
  'logicalOr',
] as const;
export type BinaryName = (typeof BINARY_OPS)[number];
export const REDUCE_OPS = { sum: 0, mean: 1, max: 2, min: 3 } as const;
