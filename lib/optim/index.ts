// optim: optimizers, gradient clipping and learning-rate schedules.
export { Optimizer, SGD, AdamW, clipGradNorm } from './optimizers';
export type { SGDOptions, AdamWOptions, OptimizerState } from './optimizers';
export { constant, linearWarmup, cosine, LRScheduler } from './schedules';
export type { Schedule } from './schedules';
