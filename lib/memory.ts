// memory(): live tensors and bytes per device, as the addon counts them.
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
 */
export function memory(): MemoryInfo {
  const m = native.memory();
  return { ...m, tensors: m.cpu.tensors + m.cuda.tensors, bytes: m.cpu.bytes + m.cuda.bytes };
}

/** Waits for queued CUDA work (no-op on CPU). */
export function synchronize(): void {
  native.synchronize();
}

/** Returns cached CUDA blocks to the driver. */
export function emptyCache(): void {
  native.emptyCache();
}
