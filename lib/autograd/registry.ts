// The gradient registry: each op's backward rule, registered under the name the forward op
// records (lib/tape.ts), apart from the forward code, as tfjs's gradient registry and PyTorch's
// derivatives.yaml keep them. The rules live in lib/autograd/rules/<family>.ts.
import { InternalError, ValueError } from '../errors';
import { Tensor } from '../tensor';

export interface GradContext<A = Record<string, unknown>> {
  /** The gradient of the op's output. */
  grad: Tensor;
  /** The tensors the forward op saved, in the order it saved them. */
  saved: Tensor[];
  /** The forward op's other arguments. */
  attrs: A;
  /** needs[k]: input k requires a gradient (a rule may skip the work for the others). */
  needs: boolean[];
  /**
   * For a rule registered with `foldsInto: k`: the gradient that input k has collected so far
   * from its other uses (null when none yet). The rule's gradient for input k must include it
   * (one fused pass instead of the engine's separate add); the engine disposes it afterwards.
   */
  pending: Tensor | null;
}

/** Returns one gradient per input (null or undefined for inputs without one), in each input's shape. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type GradientRule<A = any> = (ctx: GradContext<A>) => Array<Tensor | null | undefined>;

const rules = new Map<string, GradientRule>();
const folds = new Map<string, number>();

/**
 * Registers the backward rule of the op recorded as `name` (once per name). `foldsInto: k`: the
 * rule adds input k's pending gradient into its own (GradContext.pending).
 */
export function registerGradient<A>(name: string, rule: GradientRule<A>, options: { foldsInto?: number } = {}): void {
  if (rules.has(name)) throw new ValueError(`registerGradient: ${name} already has a gradient rule`);
  const k = options.foldsInto;
  if (k !== undefined && !(Number.isInteger(k) && k >= 0)) throw new ValueError(`registerGradient: Expected a non-negative integer for foldsInto but received ${k}`);
  rules.set(name, rule as GradientRule);
  if (k !== undefined) folds.set(name, k);
}

/** The input whose pending gradient the rule of `name` folds in, or -1. */
export function gradientFold(name: string): number {
  return folds.get(name) ?? -1;
}

export function gradientRule(name: string): GradientRule {
  const r = rules.get(name);
  if (!r) throw new InternalError(`backward: no gradient rule is registered for ${name}`);
  return r;
}

/** The names that have a rule (for tests). */
export function registeredGradients(): string[] {
  return [...rules.keys()];
}
