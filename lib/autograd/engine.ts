// The autograd engine: backward(). It walks the nodes the tape recorded (lib/tape.ts) in reverse
// topological order under noGrad, runs each node's rule from the gradient registry
// (lib/autograd/registry.ts, rules in ./rules), casts gradients back to each input's dtype and
// device, sums the gradients of tensors used more than once, adds into leaves' .grad, and frees
// the saved tensors. It calls ops as functions: nothing here relies on Tensor methods.
import { DTypeError, ShapeError, ValueError, describe } from '../errors';
import { Node, noGrad } from '../tape';
import { Tensor, tidy, untracked } from '../tensor';
import { full } from '../ops/creation';
import { add } from '../ops/elementwise';
import { contiguous, to } from '../ops/shape';
import { gradientFold, gradientRule } from './registry';
import './rules';
import { checkOptions } from '../ops/util';

export { enableGrad, isGradEnabled, needsGrad, noGrad, record } from '../tape';

export interface BackwardOptions {
  /** Keep the graph (saved tensors) for another backward through it. */
  retainGraph?: boolean;
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/**
 * Accumulates d(root)/d(leaf) into every leaf's .grad. `grad` is the gradient of the root
 * (required unless the root has one element, where it defaults to 1).
 */
export function backward(root: Tensor, grad?: Tensor, options: BackwardOptions = {}): void {
  options = checkOptions(options, 'backward');
  if (!(root instanceof Tensor)) throw new ValueError(`backward: Expected a Tensor but received ${describe(root)}`);
  root.checkLive('backward');
  if (options === null || typeof options !== 'object') throw new ValueError(`backward: Expected an object for options but received ${describe(options)}`);
  if (!root.requiresGrad) {
    throw new ValueError('backward: the tensor does not require grad and has no grad_fn (did an input set requiresGrad?)');
  }
  if (grad === undefined && root.size !== 1) {
    throw new ShapeError(`backward: a gradient is needed for a non-scalar output of shape [${root.shape.join(', ')}]`);
  }
  if (grad !== undefined) {
    if (!(grad instanceof Tensor)) throw new ValueError(`backward: Expected a Tensor for grad but received ${describe(grad)}`);
    if (!sameShape(grad.shape, root.shape)) {
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
    const node = t.gradFn as Node | null;
    if (node) {
      if (node.released) {
        throw new ValueError(`backward: the graph through ${node.name} was already freed; pass {retainGraph: true} to the first backward to go through it twice`);
      }
      node.checkVersions();
      for (const i of node.inputs) if (i && !seen.has(i)) stack.push([i, false]);
    }
  }
  order.reverse();
  noGrad(() => {
    const grads = new Map<Tensor, Tensor>();
    const seed = untracked(() => (grad ? grad.alias() : full(root.shape.slice(), 1, { dtype: root.dtype, device: root.device })));
    grads.set(root, seed);
    const nodes: Node[] = [];
    try {
      for (const t of order) {
        const g = grads.get(t);
        if (!g) continue;
        grads.delete(t);
        const node = t.gradFn as Node | null;
        if (!node) {
          if (t.requiresGrad) accumulateLeaf(t, g);
          g.dispose();
          continue;
        }
        nodes.push(node);
        const rule = gradientRule(node.name);
        const needs = node.inputs.map((i) => i !== null);
        // a rule that folds an input's pending gradient into its own takes it out of the map
        const fold = gradientFold(node.name);
        const foldInput = fold >= 0 ? node.inputs[fold] ?? null : null;
        const pending = foldInput ? grads.get(foldInput) ?? null : null;
        if (pending) grads.delete(foldInput!);
        // each rule runs in its own scope: its temporaries go, the gradients it returns stay
        let ins: Array<Tensor | null | undefined>;
        try {
          ins = tidy(() => rule({ grad: g, saved: node.saved, attrs: node.attrs as Record<string, unknown>, needs, pending }));
        } finally {
          pending?.dispose();
        }
        g.dispose();
        node.inputs.forEach((input, k) => {
          let gk = ins[k];
          if (!input || !gk) {
            gk?.dispose();
            return;
          }
          if (!sameShape(gk.shape, input.shape)) {
            throw new ShapeError(`backward of ${node.name}: gradient for input ${k} has shape [${gk.shape.join(', ')}], expected [${input.shape.join(', ')}] (a bug in the backward rule)`);
          }
          if (gk.dtype !== input.dtype || gk.device !== input.device) {
            // an input that was cast (or moved) inside the op gets its gradient back in its own dtype
            const c = to(gk, { dtype: input.dtype, device: input.device });
            gk.dispose();
            gk = c;
          }
          const prev = grads.get(input);
          if (prev) {
            const s = add(prev, gk);
            prev.dispose();
            gk.dispose();
            grads.set(input, s);
          } else {
            grads.set(input, gk);
          }
        });
      }
    } finally {
      for (const g of grads.values()) g.dispose();
      if (!options.retainGraph) for (const n of nodes) n.release();
    }
  });
}

function accumulateLeaf(t: Tensor, g: Tensor): void {
  untracked(() => {
    // leaves get contiguous gradients of their own dtype (optimizers update them in place)
    let gg: Tensor;
    if (g.dtype === t.dtype && g.device === t.device) {
      gg = contiguous(g);
    } else {
      const c = to(g, { dtype: t.dtype, device: t.device });
      gg = contiguous(c);
      c.dispose();
    }
    if (t.grad) {
      const s = add(t.grad, gg);
      gg.dispose();
      gg = s;
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
