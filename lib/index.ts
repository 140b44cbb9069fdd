// dualroute: dual-level routing language models on a native C++/CUDA core.
import './ops/methods';

export { Tensor, tidy, keep, dispose } from './tensor';
export type { NestedArray } from './tensor';
export type { DType } from './dtype';
export type { Device, DevicesInfo } from './device';
export { devices, defaultDevice, setDefaultDevice, cudaAvailable, numThreads, setNumThreads } from './device';
export { memory, synchronize, emptyCache } from './memory';
export type { MemoryInfo } from './memory';
export { Generator, manualSeed, defaultGenerator } from './random';
export * from './errors';
export * from './ops/creation';
export * from './ops/shape';
export * from './ops/elementwise';
export * from './ops/reduce';
export * from './ops/linalg';
export * from './ops/nn';
export * from './ops/indexing';
export { empty } from './ops/util';
