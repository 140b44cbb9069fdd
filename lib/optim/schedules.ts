// Learning-rate schedules: functions from the step (0-based) to the learning rate.
import { ValueError, describe } from '../errors';
import { Optimizer } from './optimizers';

export type Schedule = (step: number) => number;

function check(name: string, v: number, min = 0): void {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min) throw new ValueError(`Expected a finite number >= ${min} for ${name} but received ${describe(v)}`);
}

export function constant(lr: number): Schedule {
  check('lr', lr);
  return () => lr;
}

/** Linear warm-up from 0 to lr over warmupSteps, then constant. */
export function linearWarmup(lr: number, warmupSteps: number): Schedule {
  check('lr', lr);
  check('warmupSteps', warmupSteps);
  return (step) => (warmupSteps > 0 && step < warmupSteps ? (lr * (step + 1)) / warmupSteps : lr);
}

/** Linear warm-up, then cosine decay from lr to minLr at totalSteps (minLr after). */
export function cosine(o: { lr: number; totalSteps: number; warmupSteps?: number; minLr?: number }): Schedule {
  if (o === null || typeof o !== 'object') throw new ValueError(`cosine: Expected {lr, totalSteps, warmupSteps?, minLr?} but received ${describe(o)}`);
  const warm = o.warmupSteps ?? 0;
  const min = o.minLr ?? 0;
  check('lr', o.lr);
  check('totalSteps', o.totalSteps, 1);
  check('warmupSteps', warm);
  check('minLr', min);
  return (step) => {
    if (step < warm) return (o.lr * (step + 1)) / warm;
    if (step >= o.totalSteps) return min;
    const t = (step - warm) / Math.max(1, o.totalSteps - warm);
    return min + 0.5 * (o.lr - min) * (1 + Math.cos(Math.PI * t));
  };
}

/** Sets optimizer.lr from a schedule: call step() once per optimizer step. */
export class LRScheduler {
  private at = 0;
  constructor(readonly optimizer: Optimizer, readonly schedule: Schedule) {
    if (!(optimizer instanceof Optimizer)) throw new ValueError(`LRScheduler: Expected an Optimizer but received ${describe(optimizer)}`);
    if (typeof schedule !== 'function') throw new ValueError(`LRScheduler: Expected a schedule function (step -> lr) but received ${describe(schedule)}`);
    optimizer.lr = this.lrAt(0);
  }
  // the schedule's lr at a step, refused unless a finite number >= 0
  private lrAt(step: number): number {
    const lr = this.schedule(step);
    if (typeof lr !== 'number' || !Number.isFinite(lr) || lr < 0) {
      throw new ValueError(`LRScheduler: the schedule gave ${describe(lr)} at step ${step}; expected a finite number >= 0`);
    }
    return lr;
  }
  step(): number {
    const lr = this.lrAt(this.at + 1);
    this.at += 1;
    this.optimizer.lr = lr;
    return lr;
  }
  get lastStep(): number {
    return this.at;
  }
  set lastStep(s: number) {
    if (!Number.isInteger(s) || s < 0) throw new ValueError(`LRScheduler: Expected an integer >= 0 for lastStep but received ${describe(s)}`);
    const lr = this.lrAt(s);
    this.at = s;
    this.optimizer.lr = lr;
  }
}
