// Module: the base of every layer. Parameters are tensors made with this.param(...) (or any
// leaf tensor that requires grad held in a field); sub-modules are fields holding Modules, arrays
// of Modules, or the containers ModuleList, ModuleDict and ParameterList. Names follow the field
// path, as in PyTorch: "layers.0.weight". stateDict() names are stable and documented in
// docs/weights.md. A parameter or module the Module cannot see (inside a plain object, a Map, an
// array of tensors) is an error naming the field, never a silent omission.
//
// Modules are not callable: call model.forward(x) (a JavaScript class instance cannot be a
// function without a Proxy on every call).
import { DType, isFloat } from '../dtype';
import { Device } from '../device';
import { ShapeError, ValueError, DTypeError, describe } from '../errors';
import { Tensor, untracked } from '../tensor';
import { noGrad } from '../tape';
import { copy_ } from '../ops/inplace';
import { to } from '../ops/shape';
import { checkOptions } from '../ops/util';

const parameters = new WeakSet<Tensor>();

/** Marks t as a trainable parameter (requiresGrad, outside tidy scopes' reach). */
export function asParameter(t: Tensor): Tensor {
  if (!(t instanceof Tensor) || t.isDisposed) throw new ValueError(`asParameter: Expected a live Tensor but received ${describe(t)}`);
  parameters.add(t);
  t.requiresGrad = true;
  return t;
}
export function isParameter(t: unknown): t is Tensor {
  return t instanceof Tensor && parameters.has(t);
}

// Buffers: state a module keeps that is not trained (a router's balancing bias, running
// statistics) but belongs in its state dict, travels with to(device) and is freed with it.
const buffers = new WeakSet<Tensor>();
const isBufferField = (v: unknown): v is Tensor => v instanceof Tensor && !v.isDisposed && buffers.has(v);

// A field value the Module takes as a parameter: a registered parameter, or a leaf tensor that
// requires grad (registered on first sight, as if made with this.param()).
function isParameterLike(v: unknown): v is Tensor {
  return v instanceof Tensor && !v.isDisposed && (parameters.has(v) || (v.requiresGrad && v.isLeaf));
}

// Fields that hold parameters or modules where the Module does not look: refused, naming the
// field and the container to use instead.
function checkHidden(owner: Module, field: string, v: unknown): void {
  if (v === null || typeof v !== 'object' || v instanceof Tensor) return;
  const values = Array.isArray(v) ? v : v instanceof Map ? [...v.values()] : Object.getPrototypeOf(v) === Object.prototype ? Object.values(v as object) : null;
  if (!values) return;
  const hasModule = values.some((x) => x instanceof Module);
  const hasParam = values.some((x) => isParameterLike(x));
  if (!hasModule && !hasParam) return;
  const kind = Array.isArray(v) ? 'an array' : v instanceof Map ? 'a Map' : 'a plain object';
  const what = hasModule && hasParam ? 'modules and parameters' : hasModule ? 'modules' : 'parameters';
  const use = hasParam && !hasModule ? 'nn.ParameterList' : Array.isArray(v) ? 'nn.ModuleList (an array of modules only)' : 'nn.ModuleDict';
  throw new ValueError(`${owner.constructor.name}: field '${field}' is ${kind} holding ${what}, which the module cannot register; use ${use}`);
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

  /** Makes a buffer (state saved in stateDict but not trained) from a tensor. */
  protected buffer(make: () => Tensor): Tensor {
    const t = untracked(make);
    buffers.add(t);
    return t;
  }

  /** [name, buffer] for this module and every descendant, named as parameters are. */
  namedBuffers(prefix = ''): Array<[string, Tensor]> {
    const out: Array<[string, Tensor]> = Object.entries(this).filter(([, v]) => isBufferField(v)).map(([k, v]) => [prefix + k, v as Tensor]);
    for (const [k, m] of this.namedChildren()) out.push(...m.namedBuffers(`${prefix}${k}.`));
    return out;
  }

  /** [name, module] for the direct children, in field order. */
  namedChildren(): Array<[string, Module]> {
    const out: Array<[string, Module]> = [];
    for (const [k, v] of Object.entries(this)) {
      if (v instanceof Module) out.push([k, v]);
      else if (Array.isArray(v) && v.length && v.every((m) => m instanceof Module)) v.forEach((m, i) => out.push([`${k}.${i}`, m]));
      else checkHidden(this, k, v);
    }
    return out;
  }

  /** [name, parameter] directly held by this module (not its children). */
  protected ownParameters(): Array<[string, Tensor]> {
    const out: Array<[string, Tensor]> = [];
    for (const [k, v] of Object.entries(this)) if (isParameterLike(v)) out.push([k, asParameter(v)]);
    return out;
  }

  /** [name, parameter] for this module and every descendant ("block.0.attn.weight"). */
  namedParameters(prefix = ''): Array<[string, Tensor]> {
    if (typeof prefix !== 'string') throw new ValueError(`${this.constructor.name}.namedParameters: Expected a string for prefix but received ${describe(prefix)}`);
    const out: Array<[string, Tensor]> = this.ownParameters().map(([k, p]) => [prefix + k, p]);
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

  /** The parameters and buffers by name (aliases: they share storage with the module's tensors). */
  stateDict(): Record<string, Tensor> {
    const out: Record<string, Tensor> = {};
    for (const [k, p] of [...this.namedParameters(), ...this.namedBuffers()]) out[k] = untracked(() => p.alias());
    return out;
  }

  /**
   * Copies values into the parameters, in place (optimizers keep their references). Strict by
   * default: a missing, unexpected or mis-shaped key is an error that lists them all.
   */
  loadStateDict(state: Record<string, Tensor>, options: LoadOptions = {}): { missing: string[]; unexpected: string[] } {
    options = checkOptions(options, 'Module.loadStateDict');
    if (!state || typeof state !== 'object' || Array.isArray(state)) throw new ValueError(`loadStateDict: Expected an object of name -> Tensor but received ${describe(state)}`);
    if (typeof options !== 'object' || options === null) throw new ValueError(`loadStateDict: Expected an options object but received ${describe(options)}`);
    const strict = options.strict ?? true;
    const own = new Map([...this.namedParameters(), ...this.namedBuffers()]);
    // every value must be a live tensor: a 0 or NaN is not "missing", it is wrong
    for (const [k, t] of Object.entries(state)) {
      if (!(t instanceof Tensor) || t.isDisposed) throw new ValueError(`loadStateDict: Expected a live Tensor for ${k} but received ${describe(t)}`);
    }
    const missing = [...own.keys()].filter((k) => !Object.prototype.hasOwnProperty.call(state, k));
    const unexpected = Object.keys(state).filter((k) => !own.has(k));
    const misshaped: string[] = [];
    for (const [k, p] of own) {
      const t = state[k];
      if (!t) continue;
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

  /**
   * Moves (or casts) every parameter in place, as PyTorch's Module.to does: each parameter keeps
   * its identity (an optimizer made before still updates it; its state follows on the next
   * step), and gradients are moved along. Float buffers follow, except that a bfloat16 cast
   * leaves them float32.
   */
  to(target: Device | DType): this {
    if (target !== 'cpu' && target !== 'cuda' && target !== 'float32' && target !== 'float64' && target !== 'bfloat16') {
      throw new DTypeError(`Module.to: Expected a device ('cpu', 'cuda') or a float dtype but received ${describe(target)}`);
    }
    noGrad(() =>
      untracked(() => {
        for (const [, p] of this.namedParameters()) {
          p.takeData(to(p, target));
          if (p.grad) {
            const g = to(p.grad, target);
            p.grad.dispose();
            p.grad = g;
          }
        }
        // buffers follow a device move, and a cast to float32 or float64; under bfloat16 they
        // stay float32 (statistics and balancing biases keep their precision)
        for (const [, b] of this.namedBuffers()) {
          if (!isFloat(b.dtype)) continue;
          const want = target === 'bfloat16' ? 'float32' : target;
          if (want !== b.dtype && want !== b.device) b.takeData(to(b, want));
        }
      }),
    );
    return this;
  }

  /** Frees every parameter and buffer. */
  dispose(): void {
    for (const p of this.parameters()) p.dispose();
    for (const [, b] of this.namedBuffers()) b.dispose();
  }
}

/** Modules in a list, registered as children named 0, 1, ... (PyTorch's ModuleList). */
export class ModuleList extends Module {
  private readonly items: Module[];
  constructor(modules: Iterable<Module> = []) {
    super();
    this.items = [];
    if (modules === null || typeof (modules as Iterable<Module>)[Symbol.iterator] !== 'function') {
      throw new ValueError(`ModuleList: Expected an iterable of modules but received ${describe(modules)}`);
    }
    for (const m of modules) this.push(m);
  }
  push(m: Module): this {
    if (!(m instanceof Module)) throw new ValueError(`ModuleList.push: Expected a Module but received ${describe(m)}`);
    this.items.push(m);
    return this;
  }
  get(i: number): Module {
    const m = this.items[i < 0 ? this.items.length + i : i];
    if (!m) throw new ValueError(`ModuleList.get: index ${i} is outside [0, ${this.items.length})`);
    return m;
  }
  get length(): number {
    return this.items.length;
  }
  [Symbol.iterator](): Iterator<Module> {
    return this.items[Symbol.iterator]();
  }
  namedChildren(): Array<[string, Module]> {
    return this.items.map((m, i) => [String(i), m]);
  }
  forward(): never {
    throw new ValueError('ModuleList has no forward(); call its modules');
  }
}

/** Modules by name, registered as children under those names (PyTorch's ModuleDict). */
export class ModuleDict extends Module {
  private readonly items = new Map<string, Module>();
  constructor(modules: Record<string, Module> = {}) {
    super();
    if (modules === null || typeof modules !== 'object') throw new ValueError(`ModuleDict: Expected an object of name -> module but received ${describe(modules)}`);
    for (const [k, m] of Object.entries(modules)) this.set(k, m);
  }
  set(name: string, m: Module): this {
    if (!(m instanceof Module)) throw new ValueError(`ModuleDict.set: Expected a Module for ${name} but received ${describe(m)}`);
    if (!/^[A-Za-z0-9_]+$/.test(name)) throw new ValueError(`ModuleDict.set: names are letters, digits and _, received ${describe(name)}`);
    this.items.set(name, m);
    return this;
  }
  get(name: string): Module {
    const m = this.items.get(name);
    if (!m) throw new ValueError(`ModuleDict.get: no module named ${JSON.stringify(name)} (have ${[...this.items.keys()].join(', ')})`);
    return m;
  }
  has(name: string): boolean {
    return this.items.has(name);
  }
  keys(): string[] {
    return [...this.items.keys()];
  }
  namedChildren(): Array<[string, Module]> {
    return [...this.items.entries()];
  }
  forward(): never {
    throw new ValueError('ModuleDict has no forward(); call its modules');
  }
}

/** Parameters in a list, registered as 0, 1, ... (PyTorch's ParameterList). */
export class ParameterList extends Module {
  private readonly items: Tensor[] = [];
  constructor(params: Iterable<Tensor> = []) {
    super();
    if (params === null || typeof (params as Iterable<Tensor>)[Symbol.iterator] !== 'function') {
      throw new ValueError(`ParameterList: Expected an iterable of tensors but received ${describe(params)}`);
    }
    for (const p of params) this.push(p);
  }
  push(p: Tensor): this {
    if (!(p instanceof Tensor)) throw new ValueError(`ParameterList.push: Expected a Tensor but received ${describe(p)}`);
    this.items.push(asParameter(p));
    return this;
  }
  get(i: number): Tensor {
    const p = this.items[i < 0 ? this.items.length + i : i];
    if (!p) throw new ValueError(`ParameterList.get: index ${i} is outside [0, ${this.items.length})`);
    return p;
  }
  get length(): number {
    return this.items.length;
  }
  [Symbol.iterator](): Iterator<Tensor> {
    return this.items[Symbol.iterator]();
  }
  protected ownParameters(): Array<[string, Tensor]> {
    return this.items.map((p, i) => [String(i), p]);
  }
  namedChildren(): Array<[string, Module]> {
    return [];
  }
  forward(): never {
    throw new ValueError('ParameterList has no forward(); use its tensors');
  }
}
