// The autograd tape. An op that sees an input with requiresGrad records a Node on its output:
// the inputs (for graph traversal and leaf accumulation), aliases of the tensors its backward
// reads (so that disposing or tidying the originals does not free them), and the backward
// function. backward() walks the nodes in reverse topological order under noGrad, accumulates
// gradients per tensor, adds them into leaves' .grad, and frees the saved aliases.
import { ValueError, DTypeError, ShapeError, describe } from '../errors';
import { Tensor, tidy, untracked } from '../tensor';

let gradEnabled = true;

/** True unless inside noGrad(). */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs fn without recording operations for autograd. */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** Runs fn with recording on (inside a noGrad block). */
export function enableGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = true;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

export type BackwardFn = (grad: Tensor, saved: Tensor[]) => Array<Tensor | null | undefined>;

export class Node {
  released = false;
  constructor(
    readonly name: string,
    /** One entry per differentiable input position (null where the input needs no gradient). */
    readonly inputs: Array<Tensor | null>,
    readonly saved: Tensor[],
    readonly backward: BackwardFn,
  ) {}

  release(): void {
    if (this.released) return;
    this.released = true;
    for (const t of this.saved) t.dispose();
    this.saved.length = 0;
  }
}

/** True when recording is on and some input requires a gradient. */
export function needsGrad(...inputs: unknown[]): boolean {
  if (!gradEnabled) return false;
  for (const t of inputs) if (t instanceof Tensor && t.requiresGrad) return true;
  return false;
}

/**
 * Records how out was made. `inputs` are the tensors gradients flow to (others may be passed
 * as null or numbers); `save` are the tensors backward reads; backward returns one gradient per
 * input (null for none). Gradients come back in each input's shape and dtype.
 */
export function record(out: Tensor, name: string, inputs: unknown[], save: Tensor[], backward: BackwardFn): Tensor {
  if (!needsGrad(...inputs)) return out;
  const ins = inputs.map((t) => (t instanceof Tensor && t.requiresGrad ? t : null));
  const saved = untracked(() => save.map((t) => t.alias()));
  out.setGradFn(new Node(name, ins, saved, backward));
  return out;
}

export interface BackwardOptions {
  /** Keep the graph (saved tensors) for another backward through it. */
  retainGraph?: boolean;
}

/**
 * Accumulates d(root)/d(leaf) into every leaf's .grad. `grad` is the gradient of the root
 * (required unless the root has one element, where it defaults to 1).
 */
export function backward(root: Tensor, grad?: Tensor, options: BackwardOptions = {}): void {
  root.checkLive('backward');
  if (!root.requiresGrad) {
    throw new ValueError('backward: the tensor does not require grad and has no grad_fn (did an input set requiresGrad?)');
  }
  if (grad === undefined && root.size !== 1) {
    throw new ShapeError(`backward: a gradient is needed for a non-scalar output of shape [${root.shape.join(', ')}]`);
  }
  if (grad !== undefined) {
    if (!(grad instanceof Tensor)) throw new ValueError(`backward: Expected a Tensor for grad but received ${describe(grad)}`);
    if (grad.shape.length !== root.shape.length || grad.shape.some((d, i) => d !== root.shape[i])) {
      throw new ShapeError(`backward: grad has shape [${grad.shape.join(', ')}], the output [${root.shape.join(', ')}]`);
    }
  }
  // Reverse topological order of the nodes reachable from root.
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  const stack: Array<[Tensor, boolean]> = [[root, false]];
  while (stack.length) {
    const [t, done] = stack.pop()!;
    if (done) {
      order.push(t);
      continue;
    }
    if (seen.has(t)) continue;
    seen.add(t);
    stack.push([t, true]);
    const node = t.gradFn;
    if (node) {
      if (node.released) {
        throw new ValueError(`backward: the graph through ${node.name} was already freed; pass {retainGraph: true} to the first backward to go through it twice`);
      }
      for (const i of node.inputs) if (i && !seen.has(i)) stack.push([i, false]);
    }
  }
  order.reverse();
  noGrad(() => {
    const grads = new Map<Tensor, Tensor>();
    const seed = untracked(() => (grad ? grad.alias() : onesLikeOf(root)));
    grads.set(root, seed);
    const nodes: Node[] = [];
    for (const t of order) {
      const g = grads.get(t);
      if (!g) continue;
      grads.delete(t);
      const node = t.gradFn;
      if (!node) {
        if (t.requiresGrad) accumulateLeaf(t, g);
        g.dispose();
        continue;
      }
      nodes.push(node);
      // each rule runs in its own scope: its temporaries go, the gradients it returns stay
      const ins = tidy(() => node.backward(g, node.saved));
      g.dispose();
      node.inputs.forEach((input, k) => {
        const gi = ins[k];
        if (!input || !gi) {
          if (gi) gi.dispose();
          return;
        }
        if (gi.shape.length !== input.shape.length || gi.shape.some((d, i) => d !== input.shape[i])) {
          throw new ShapeError(`backward of ${node.name}: gradient for input ${k} has shape [${gi.shape.join(', ')}], expected [${input.shape.join(', ')}] (a bug in the backward rule)`);
        }
        if (gi.dtype !== input.dtype || gi.device !== input.device) {
          // an input that was cast (or moved) inside the op gets its gradient back in its own dtype
          const c = gi.to({ dtype: input.dtype, device: input.device });
          gi.dispose();
          ins[k] = c;
        }
        const gk = ins[k]!;
        const prev = grads.get(input);
        if (prev) {
          const sum = prev.add(gk);
          prev.dispose();
          gk.dispose();
          grads.set(input, sum);
        } else {
          grads.set(input, gk);
        }
      });
      // gradients not consumed because a backward returned extra ones are freed above
    }
    for (const g of grads.values()) g.dispose();
    if (!options.retainGraph) for (const n of nodes) n.release();
  });
}

function onesLikeOf(t: Tensor): Tensor {
  const { full } = require('../ops/creation') as typeof import('../ops/creation');
  return full(t.shape.slice(), 1, { dtype: t.dtype, device: t.device });
}

function accumulateLeaf(t: Tensor, g: Tensor): void {
  untracked(() => {
    // leaves get contiguous gradients of their own dtype (optimizers update them in place)
    let gg: Tensor;
    if (g.dtype === t.dtype && g.device === t.device) {
      gg = g.contiguous();
    } else {
      const c = g.to({ dtype: t.dtype, device: t.device });
      gg = c.contiguous();
      c.dispose();
    }
    if (t.grad) {
      const sum = t.grad.add(gg);
      gg.dispose();
      gg = sum;
      t.grad.dispose();
    }
    t.grad = gg;
  });
}

export function checkRequiresGradDType(t: Tensor): void {
  if (t.dtype !== 'float32' && t.dtype !== 'float64' && t.dtype !== 'bfloat16') {
    throw new DTypeError(`requiresGrad: only float tensors can require gradients, received ${describe(t)}`);
  }
}
