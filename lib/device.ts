// Devices: which backends exist, which one is the default, and what they report.
import { isMainThread } from 'worker_threads';
import { DeviceError, ValueError, describe, toTypedError } from './errors';
import { native, NativeDevices } from './native';

export type Device = 'cpu' | 'cuda';
export const DEVICE_CODE: Record<Device, number> = { cpu: 0, cuda: 1 };

let cachedDevices: NativeDevices | undefined;
function nativeDevices(): NativeDevices {
  if (!cachedDevices) cachedDevices = native.devices();
  return cachedDevices;
}

/** True when the CUDA backend loaded and found a GPU (loads it on first call). */
export function cudaAvailable(): boolean {
  return nativeDevices().cuda.available;
}

export interface DevicesInfo {
  /** The device tensors go to when none is named. */
  default: Device;
  cpu: { name: string; threads: number; simd: string; features: string[] };
  cuda: {
    available: boolean;
    /** Why CUDA is off, when it is. */
    reason?: string;
    /** How the addon was built (CUDA architectures, or why CUDA was not built). */
    build: string;
    devices: NativeDevices['cuda']['devices'];
  };
}

/** What is available: CPU threads and SIMD level, GPUs with memory and compute capability. */
export function devices(): DevicesInfo {
  const d = native.devices();
  cachedDevices = d;
  return {
    default: defaultDevice(),
    cpu: { ...d.cpu, features: d.cpu.features ? d.cpu.features.split(' ') : [] },
    cuda: {
      available: d.cuda.available,
      ...(d.cuda.available ? {} : { reason: d.cuda.reason }),
      build: d.cuda.build,
      devices: d.cuda.devices,
    },
  };
}

let chosen: Device | undefined;

/**
 * The default device: DUALROUTE_DEVICE when set (cpu or cuda; cuda must be available), else
 * cuda when a GPU is usable, else cpu.
 */
export function defaultDevice(): Device {
  if (chosen) return chosen;
  const env = process.env.DUALROUTE_DEVICE;
  if (env !== undefined && env !== '') {
    const want = checkDevice(env, 'DUALROUTE_DEVICE');
    if (want === 'cuda' && !cudaAvailable())
      throw new DeviceError(`DUALROUTE_DEVICE=cuda but CUDA is not available: ${nativeDevices().cuda.reason}`);
    chosen = want;
  } else {
    chosen = cudaAvailable() ? 'cuda' : 'cpu';
  }
  return chosen;
}

/** Sets the default device for tensors created without one. */
export function setDefaultDevice(d: Device): void {
  const dev = checkDevice(d, 'device');
  if (dev === 'cuda') requireCuda();
  chosen = dev;
}

export function checkDevice(d: unknown, arg = 'device'): Device {
  if (d === 'cpu' || d === 'cuda') return d;
  throw new DeviceError(`Expected 'cpu' or 'cuda' for ${arg} but received ${describe(d)}`);
}

export function requireCuda(): void {
  if (!cudaAvailable()) throw new DeviceError(`device 'cuda' is not available: ${nativeDevices().cuda.reason}`);
}

/** CPU threads used by the kernels (DUALROUTE_NUM_THREADS sets the start value). */
export function numThreads(): number {
  return native.numThreads();
}
/**
 * Sets the CPU threads the kernels use. The thread pool is shared by the whole process (every
 * worker_thread included), so this may be called only from the main thread.
 */
export function setNumThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > 1024) throw new ValueError(`setNumThreads: Expected an integer in 1..1024 but received ${describe(n)}`);
  if (!isMainThread) {
    throw new ValueError('setNumThreads: the CPU thread pool is shared by the whole process; set it from the main thread (or with DUALROUTE_NUM_THREADS)');
  }
  try {
    native.setNumThreads(n);
  } catch (e) {
    throw toTypedError(e);
  }
  cachedDevices = undefined;
}
