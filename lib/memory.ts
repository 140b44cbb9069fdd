// memory(): live tensors and bytes per device, as the addon counts them.
import { toTypedError } from './errors';
import { native } from './native';

export interface MemoryInfo {
  cpu: { tensors: number; bytes: number; buffers: number; cachedBytes: number };
  cuda: { tensors: number; bytes: number; buffers: number; reservedBytes?: number };
  /** All devices together. */
  tensors: number;
  bytes: number;
}

/**
 * Live tensor handles and allocated bytes per device. `buffers` counts storages (views share
 * one); cpu.cachedBytes and cuda.reservedBytes are blocks held for reuse (emptyCache() frees them).
 * Ops run on their device's stream after the call returns: a CPU op's output is allocated when
 * the op runs, and a buffer that queued ops still read is freed when they have run, so call
 * synchronize() first for figures that include everything issued so far.
 */
export function memory(): MemoryInfo {
  const m = native.memory();
  return { ...m, tensors: m.cpu.tensors + m.cuda.tensors, bytes: m.cpu.bytes + m.cuda.bytes };
}

/**
 * Waits, blocking, until every op queued so far has run (on every device), then raises the
 * first failure of an op that no read has raised yet. Ops run on their device's stream off the
 * JavaScript thread; a read (data(), item()) waits only for what it depends on, so scripts
 * rarely need this; benchmarks and tests do.
 */
export function synchronize(): void {
  try {
    native.synchronize();
  } catch (e) {
    throw toTypedError(e);
  }
}

/** synchronize() without blocking the event loop. */
export async function synchronizeAsync(): Promise<void> {
  try {
    await native.synchronizeAsync();
  } catch (e) {
    throw toTypedError(e);
  }
}

/** Ops queued and not yet finished, per device. */
export function pendingOps(): { cpu: number; cuda: number } {
  return native.pending();
}

/** Returns cached CUDA blocks to the driver. */
export function emptyCache(): void {
  native.emptyCache();
}
