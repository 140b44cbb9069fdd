// Module: the base of every layer. Parameters are tensors made with this.param(...); sub-modules
// are fields holding Modules (or arrays of them). Names follow the field path, as in PyTorch:
// "layers.0.weight". stateDict() names are stable and documented in docs/weights.md.
import { DType } from '../dtype';
import { Device } from '../device';
import { ShapeError, ValueError, DTypeError, describe } from '../errors';
import { Tensor, untracked } from '../tensor';
import { noGrad } from '../tape';
import { copy_ } from '../ops/inplace';

const parameters = new WeakSet<Tensor>();

/** Marks t as a trainable parameter (requiresGrad, outside tidy scopes' reach). */
export function asParameter(t: Tensor): Tensor {
  parameters.add(t);
  t.requiresGrad = true;
  return t;
}
export function isParameter(t: unknown): t is Tensor {
  return t instanceof Tensor && parameters.has(t);
}

export interface LoadOptions {
  /** Every parameter must be present and nothing else (default true). */
  strict?: boolean;
}

export abstract class Module {
  /** True in training mode (Dropout is active); see train()/eval(). */
  training = true;

  abstract forward(...args: unknown[]): unknown;

  /** Makes a parameter from a tensor (created outside any tidy so it lives with the module). */
  protected param(make: () => Tensor): Tensor {
    return asParameter(untracked(make));
  }

  /** [name, module] for the direct children, in field order. */
  namedChildren(): Array<[string, Module]> {
    const out: Array<[string, Module]> = [];
    for (const [k, v] of Object.entries(this)) {
      if (v instanceof Module) out.push([k, v]);
      else if (Array.isArray(v)) v.forEach((m, i) => m instanceof Module && out.push([`${k}.${i}`, m]));
    }
    return out;
  }

  /** [name, parameter] for this module and every descendant ("block.0.attn.weight"). */
  namedParameters(prefix = ''): Array<[string, Tensor]> {
    const out: Array<[string, Tensor]> = [];
    for (const [k, v] of Object.entries(this)) if (isParameter(v)) out.push([prefix + k, v]);
    for (const [k, m] of this.namedChildren()) out.push(...m.namedParameters(`${prefix}${k}.`));
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, p]) => p);
  }

  /** Number of scalar parameters. */
  numParameters(): number {
    return this.parameters().reduce((n, p) => n + p.size, 0);
  }

  modules(): Module[] {
    return [this, ...this.namedChildren().flatMap(([, m]) => m.modules())];
  }

  train(mode = true): this {
    for (const m of this.modules()) m.training = mode;
    return this;
  }
  eval(): this {
    return this.train(false);
  }

  /** Clears every parameter's gradient. */
  zeroGrad(): void {
    for (const p of this.parameters()) {
      if (p.grad) {
        p.grad.dispose();
        p.grad = null;
      }
    }
  }

  /** The parameters by name (aliases: they share storage with the module's tensors). */
  stateDict(): Record<string, Tensor> {
    const out: Record<string, Tensor> = {};
    for (const [k, p] of this.namedParameters()) out[k] = untracked(() => p.alias());
    return out;
  }

  /**
   * Copies values into the parameters, in place (optimizers keep their references). Strict by
   * default: a missing, unexpected or mis-shaped key is an error that lists them all.
   */
  loadStateDict(state: Record<string, Tensor>, options: LoadOptions = {}): { missing: string[]; unexpected: string[] } {
    const strict = options.strict ?? true;
    const own = new Map(this.namedParameters());
    const missing = [...own.keys()].filter((k) => !(k in state));
    const unexpected = Object.keys(state).filter((k) => !own.has(k));
    const misshaped: string[] = [];
    for (const [k, p] of own) {
      const t = state[k];
      if (!t) continue;
      if (!(t instanceof Tensor)) throw new ValueError(`loadStateDict: Expected a Tensor for ${k} but received ${describe(t)}`);
      if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) {
        misshaped.push(`${k}: expected [${p.shape.join(', ')}], got [${t.shape.join(', ')}]`);
      }
    }
    if (misshaped.length || (strict && (missing.length || unexpected.length))) {
      const parts: string[] = [];
      if (missing.length) parts.push(`missing keys: ${missing.join(', ')}`);
      if (unexpected.length) parts.push(`unexpected keys: ${unexpected.join(', ')}`);
      if (misshaped.length) parts.push(`shape mismatches: ${misshaped.join('; ')}`);
      throw new (misshaped.length ? ShapeError : ValueError)(`loadStateDict: ${parts.join('; ')}`);
    }
    for (const [k, p] of own) {
      const t = state[k];
      if (!t) continue;
      // copy_ converts dtype and device
      noGrad(() => copy_(p, t));
    }
    return { missing, unexpected };
  }

  /** Moves (or casts) every parameter; parameters are replaced by new tensors. */
  to(target: Device | DType): this {
    for (const m of this.modules()) {
      for (const [k, v] of Object.entries(m)) {
        if (!isParameter(v)) continue;
        if (typeof target === 'string' && target !== 'cpu' && target !== 'cuda' && target !== 'float32' && target !== 'float64' && target !== 'bfloat16') {
          throw new DTypeError(`Module.to: parameters must stay float, received ${target}`);
        }
        const moved = untracked(() => {
          const d = v.detach();
          const r = d.to(target);
          d.dispose();
          return r;
        });
        v.dispose();
        (m as unknown as Record<string, Tensor>)[k] = asParameter(moved);
      }
    }
    return this;
  }

  /** Frees every parameter. */
  dispose(): void {
    for (const p of this.parameters()) p.dispose();
  }
}
