// The addon's runtime surface: handles, reads, devices, memory, streams. The ops themselves are
// declared once in native/optable.js; `op` (lib/generated/native_ops.ts, generated from it) calls
// them with named arguments. Only lib/ talks to the addon; every call site maps native errors
// with toTypedError (the op wrappers do it themselves).
import { addon } from './addon';

export * as op from './generated/native_ops';
export { UNARY_OPS, BINARY_OPS, REDUCE_OPS, OP_NAMES, OP_TABLE, supports } from './generated/native_ops';
export type { UnaryOp as UnaryName, BinaryOp as BinaryName, ReduceOp as ReduceName, OpName, OpDevice } from './generated/native_ops';

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
  /** Copies the tensor's elements, in order, into `into` (exactly its size) and returns it. */
  /** The elements in order; a bfloat16 tensor's widened to float32 bits when `widen`. */
  readSync(h: Handle, widen: boolean): ArrayBuffer;
  read(h: Handle, widen: boolean): Promise<ArrayBuffer>;
  devices(): NativeDevices;
  memory(): NativeMemory;
  numThreads(): number;
  setNumThreads(n: number): void;
  /** Waits for every queued op (and the CUDA device); raises the first failure no read has raised. */
  synchronize(): void;
  emptyCache(): void;
  /** Resolves when every op queued so far is done; rejects with the first failure no read has raised. */
  synchronizeAsync(): Promise<void>;
  /** Ops queued and not finished, per device. */
  pending(): { cpu: number; cuda: number };
}

export const native = addon as Native;
