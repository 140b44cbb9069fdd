// The autograd tape: what forward ops record. An op that sees an input requiring a gradient
// records a Node on its output: the op's name (its backward rule is looked up by that name in
// lib/autograd/registry.ts when backward() runs), the inputs gradients flow to, aliases of the
// tensors its backward reads (so disposing or tidying the originals does not free them) with
// their storage versions, and the op's non-tensor arguments.
//
// This file knows nothing of ops or rules: lib/ops imports it to record, lib/autograd imports
// lib/ops to differentiate, and nothing imports the other way round.
//
// Saved tensors are released as soon as no backward can reach them: when a node's output
// tensor is disposed and no later node takes it as an input (the count of such consumers falls
// to zero as they are released in turn). A forward pass under tidy() that never calls
// backward() therefore frees its saved tensors when the scope ends, not at garbage collection.
import { ValueError, describe } from './errors';
import { GradNode, Tensor, untracked } from './tensor';

let gradEnabled = true;

/** True unless inside noGrad(). */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

function withGradMode<T>(enabled: boolean, fn: () => T): T {
  if (typeof fn !== 'function') throw new ValueError(`${enabled ? 'enableGrad' : 'noGrad'}: Expected a function but received ${describe(fn)}`);
  const prev = gradEnabled;
  gradEnabled = enabled;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** Runs fn without recording operations for autograd. */
export const noGrad = <T>(fn: () => T): T => withGradMode(false, fn);

/** Runs fn with recording on (inside a noGrad block). */
export const enableGrad = <T>(fn: () => T): T => withGradMode(true, fn);

export class Node implements GradNode {
  released = false;
  /** Nodes recorded later that take this node's output as an input. */
  consumers = 0;
  private outputDisposed = false;

  constructor(
    readonly name: string,
    /** One entry per differentiable input position (null where the input needs no gradient). */
    readonly inputs: Array<Tensor | null>,
    readonly saved: Tensor[],
    /** The storage version of each saved tensor when it was saved. */
    readonly versions: number[],
    /** The op's non-tensor arguments, for its backward rule. */
    readonly attrs: unknown,
  ) {
    for (const i of inputs) if (i?.gradFn instanceof Node) i.gradFn.consumers += 1;
  }

  /** Frees the saved tensors; the nodes feeding this one may then be releasable too. */
  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.saved.length) {
      for (const t of this.saved) t.dispose();
      this.saved.length = 0;
    }
    for (const i of this.inputs) {
      const n = i?.gradFn;
      if (n instanceof Node) {
        n.consumers -= 1;
        n.releaseIfUnreachable();
      }
    }
  }

  /** Called by Tensor.dispose() of the node's output. */
  onOutputDisposed(): void {
    this.outputDisposed = true;
    this.releaseIfUnreachable();
  }

  private releaseIfUnreachable(): void {
    if (this.outputDisposed && this.consumers <= 0) this.release();
  }

  /** Throws when a saved tensor was updated in place after it was saved. */
  checkVersions(): void {
    this.saved.forEach((t, k) => {
      if (t.storage.version !== this.versions[k]) {
        throw new ValueError(`backward of ${this.name}: a tensor it saved (input ${k} of shape [${t.shape.join(', ')}]) was modified by an in-place op after the forward pass (version ${this.versions[k]} -> ${t.storage.version}); clone it before updating it in place`);
      }
    });
  }
}

/** True when recording is on and some input requires a gradient. */
export function needsGrad(...inputs: unknown[]): boolean {
  if (!gradEnabled) return false;
  for (let i = 0; i < inputs.length; ++i) {
    const t = inputs[i];
    if (t instanceof Tensor && t.requiresGrad) return true;
  }
  return false;
}

const NONE: never[] = [];
const NO_ATTRS = Object.freeze({});

/**
 * Records how out was made and returns out. `inputs` are the tensors gradients flow to (others
 * may be passed as null or numbers); `save` are the tensors the backward rule reads; `attrs`
 * the op's other arguments. The rule registered under `name` returns one gradient per input.
 */
export function record(out: Tensor, name: string, inputs: unknown[], save: Tensor[], attrs?: unknown): Tensor {
  if (!gradEnabled) return out;
  let any = false;
  const ins: Array<Tensor | null> = [];
  for (let i = 0; i < inputs.length; ++i) {
    const t = inputs[i];
    if (t instanceof Tensor && t.requiresGrad) {
      ins.push(t);
      any = true;
    } else {
      ins.push(null);
    }
  }
  if (!any) return out;
  let saved: Tensor[] = NONE;
  let versions: number[] = NONE;
  if (save.length) {
    saved = [];
    versions = [];
    untracked(() => {
      for (let i = 0; i < save.length; ++i) {
        saved.push(save[i].alias());
        versions.push(save[i].storage.version);
      }
    });
  }
  out.setGradFn(new Node(name, ins, saved, versions, attrs ?? NO_ATTRS));
  return out;
}
