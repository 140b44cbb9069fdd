// The addon's runtime surface: handles, reads, devices, memory, streams. The ops themselves are
// declared once in native/optable.js; `op` (lib/generated/native_ops.ts, generated from it) calls
// them with named arguments. Only lib/ talks to the addon; every call site maps native errors
// with toTypedError (the op wrappers do it themselves).
import { addon } from './addon';
import * as ops from './generated/native_ops';

// (plain constants, not `export ... from`: re-exports compile to getters, which turn this
// module's exports object into a dictionary, and every `native.x` / `op.x` load in the ops into
// a hash lookup)
export const op = ops;
export const UNARY_OPS = ops.UNARY_OPS;
export const BINARY_OPS = ops.BINARY_OPS;
export const REDUCE_OPS = ops.REDUCE_OPS;
export const OP_NAMES = ops.OP_NAMES;
export const OP_TABLE = ops.OP_TABLE;
export const supports = ops.supports;
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
  /** A new handle on the same storage with the same layout (a view of all of it, as it is). */
  alias(h: Handle): Handle;
  /** empty() with the shape in dims[0, ndim), dims the buffer of a Float64Array (see emptyOf). */
  emptyFrom(dims: ArrayBuffer, ndim: number, dtype: number, device: number): Handle;
  /** view() with the shape in dims[0, ndim) and the strides in dims[8, 8 + ndim) (see viewFrom). */
  viewFrom(h: Handle, dims: ArrayBuffer, ndim: number, offset: number): Handle;
  release(h: Handle): boolean;
  isLive(h: Handle): boolean;
  /** Copies the tensor's elements, in order, into `into` (exactly its size) and returns it. */
  /** The elements in order; a bfloat16 tensor's widened to float32 bits when `widen`. */
  readSync(h: Handle, widen: boolean): ArrayBuffer;
  readSync<A extends ArrayBufferView>(h: Handle, widen: boolean, into: A): A;
  read(h: Handle, widen: boolean): Promise<ArrayBuffer>;
  /** Reads into `into` (exactly the read's bytes), copied on the JavaScript thread: at once when ready, else from a host block the read task filled. */
  read<A extends ArrayBufferView>(h: Handle, widen: boolean, into: A): Promise<A>;
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
  /** How many times a thread blocked in a wait on a device's stream (dataSync, synchronize) was woken, per device (for tests). */
  streamStats(): { cpu: { waiterWakes: number }; cuda: { waiterWakes: number } };
  /** CPU kernel counters: calls that stored their output around the caches (tests only). */
  cpuStats(): { bypassedOutputs: number };
  /** Sets (value undefined: removes) a variable of the process's C environment, which kernels read per call (tests: Jest's process.env is a copy). */
  setEnv(name: string, value?: string | null): void;
}

export const native = addon as Native;

// Shapes and strides cross to the addon in one Float64Array rather than as JavaScript arrays,
// which the addon would read element by element through N-API (slowly, and more slowly still
// for the frozen arrays tensors hold). Shape and strides must have at most 8 entries (the
// callers check); a longer one goes through the plain entry, which refuses it with its error.
const dims = new Float64Array(16);
const dimsBuffer = dims.buffer;

/** native.empty(shape, dtype, device) through the shared Float64Array. */
export function emptyOf(shape: readonly number[], dtype: number, device: number): Handle {
  const n = shape.length;
  if (n > 8) return native.empty(shape as number[], dtype, device);
  for (let i = 0; i < n; ++i) dims[i] = shape[i];
  return native.emptyFrom(dimsBuffer, n, dtype, device);
}

/** native.view(h, shape, strides, offset) through the shared Float64Array. */
export function viewFrom(h: Handle, shape: readonly number[], strides: readonly number[], offset: number): Handle {
  const n = shape.length;
  if (n > 8 || strides.length !== n) return native.view(h, shape as number[], strides as number[], offset);
  for (let i = 0; i < n; ++i) {
    dims[i] = shape[i];
    dims[8 + i] = strides[i];
  }
  return native.viewFrom(h, dimsBuffer, n, offset);
}
