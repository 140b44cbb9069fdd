// Autograd is its own layer: forward ops record names and arguments on the tape (lib/tape.ts);
// backward rules live in a registry (lib/autograd/rules); the engine calls ops as functions.
import * as fs from 'fs';
import * as path from 'path';
import * as dr from '../../lib';
import { registeredGradients } from '../../lib/autograd/registry';
import { record } from '../../lib/tape';

const LIB = path.resolve(__dirname, '../../lib');

// module -> the lib modules it imports (static imports and require calls)
function importGraph(): Map<string, string[]> {
  const files: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith('.ts')) files.push(p);
    }
  };
  walk(LIB);
  const g = new Map<string, string[]>();
  for (const f of files) {
    const src = fs.readFileSync(f, 'utf8');
    const deps: string[] = [];
    const re = /(?:import|export)\s[^'"]*?from\s+'(\.[^']+)'|import\s+'(\.[^']+)'|require\('(\.[^']+)'\)/g;
    for (let m = re.exec(src); m; m = re.exec(src)) {
      if (/^\s*import\s+type\b/.test(src.slice(m.index, m.index + 12))) continue;
      const spec = m[1] ?? m[2] ?? m[3];
      let target = path.resolve(path.dirname(f), spec);
      if (fs.existsSync(`${target}.ts`)) target = `${target}.ts`;
      else if (fs.existsSync(path.join(target, 'index.ts'))) target = path.join(target, 'index.ts');
      deps.push(path.relative(LIB, target));
    }
    g.set(path.relative(LIB, f), deps);
  }
  return g;
}

describe('autograd as its own layer', () => {
  test('lib/ops never imports lib/autograd, and the tape imports neither', () => {
    const g = importGraph();
    for (const [file, deps] of g) {
      if (file.startsWith('ops/')) expect({ file, deps: deps.filter((d) => d.startsWith('autograd/')) }).toEqual({ file, deps: [] });
    }
    expect(g.get('tape.ts')!.filter((d) => d.startsWith('ops/') || d.startsWith('autograd/'))).toEqual([]);
  });

  test('no import cycle anywhere in lib/', () => {
    const g = importGraph();
    const state = new Map<string, number>();
    const cycles: string[] = [];
    const visit = (f: string, trail: string[]) => {
      if (state.get(f) === 2) return;
      if (state.get(f) === 1) {
        cycles.push([...trail.slice(trail.indexOf(f)), f].join(' -> '));
        return;
      }
      state.set(f, 1);
      for (const d of g.get(f) ?? []) visit(d, [...trail, f]);
      state.set(f, 2);
    };
    for (const f of g.keys()) visit(f, []);
    expect(cycles).toEqual([]);
  });

  test('every differentiable op has a registered rule, and a missing rule is a clear error', () => {
    const names = registeredGradients();
    for (const n of ['matmul', 'add', 'mulScalar', 'exp', 'where', 'sum', 'mean', 'softmax', 'logSoftmax', 'rmsNorm', 'layerNorm', 'swiglu',
      'crossEntropy', 'embedding', 'gather', 'scatterAdd', 'reshape', 'permute', 'expand', 'narrow', 'slice', 'concat', 'to',
      'globalAttention', 'localAttention', 'dualAttention', 'rope']) {
      expect(names).toContain(n);
    }
    const x = dr.ones([2]).requiresGrad_();
    const y = dr.noGrad(() => x.mul(2));
    record(y, 'noSuchOp', [x], []);
    expect(() => y.sum().backward()).toThrow(/no gradient rule is registered for noSuchOp/);
    dr.dispose([x, y]);
  });

  test('the engine works without the Tensor methods (a module graph without lib/methods.ts)', () => {
    jest.isolateModules(() => {
      const { Tensor } = require('../../lib/tensor');
      const { randn, tensor } = require('../../lib/ops/creation');
      const { matmul } = require('../../lib/ops/linalg');
      const { crossEntropy, rmsNorm } = require('../../lib/ops/nn');
      const { backward } = require('../../lib/autograd/engine');
      expect(Tensor.prototype.add).toBeUndefined();
      expect(Tensor.prototype.backward).toBeUndefined();
      const w = randn([4, 3]);
      w.requiresGrad = true;
      const x = randn([5, 4]);
      const t = tensor(new Int32Array([0, 1, 2, 0, 1]));
      const loss = crossEntropy(rmsNorm(matmul(x, w)), t);
      backward(loss);
      expect(w.grad.shape).toEqual([4, 3]);
      expect(Array.from(w.grad.dataSync() as Float32Array).every(Number.isFinite)).toBe(true);
    });
  });

  test('a graph recorded but never run backward frees its saved tensors when its scope ends', () => {
    const w = dr.randn([64, 64]).requiresGrad_();
    const x = dr.randn([16, 64]);
    const start = dr.memory().tensors;
    for (let i = 0; i < 30; ++i) {
      // an evaluation pass that forgot noGrad(): every op records and saves tensors
      const loss = dr.tidy(() => dr.crossEntropy(x.matmul(w).relu().matmul(w).layerNorm().softmax(), dr.zeros([16], { dtype: 'int32' })));
      expect(loss.requiresGrad).toBe(true);
      loss.dispose();
    }
    expect(dr.memory().tensors).toBe(start);
    // a graph that is still reachable keeps what its backward needs
    const kept = dr.tidy(() => x.matmul(w).sum());
    expect(dr.memory().tensors).toBeGreaterThan(start + 1);
    kept.backward();
    expect(w.grad!.shape).toEqual([64, 64]);
    kept.dispose();
    dr.dispose([w, x]);
  });

  test('an op saves only what its backward reads: add may see its inputs updated in place afterwards, mul may not', () => {
    // as in PyTorch: the gradient of a + b is the incoming gradient alone, that of a * b reads a and b
    const x = dr.tensor([1, 2, 3]).requiresGrad_();
    const a = x.mul(1);
    const s = dr.add(dr.add(a, 2), dr.sum(a));
    dr.noGrad(() => a.add_(10));
    s.sum().backward();
    expect(Array.from(x.grad!.dataSync())).toEqual([4, 4, 4]);
    const m = dr.mul(a, a);
    dr.noGrad(() => a.add_(1));
    expect(() => m.sum().backward()).toThrow(/backward of mul: a tensor it saved .* was modified by an in-place op/);
    dr.dispose([x, a, s, m]);
  });

  test('recording ops that save nothing holds no handle beyond their outputs', () => {
    const x = dr.tensor([1, 2, 3]).requiresGrad_();
    const start = dr.memory().tensors;
    const y = dr.tidy(() => dr.add(dr.mul(x, 2), 1));  // tidy disposes mul's output
    expect(dr.memory().tensors).toBe(start + 1);
    const g = dr.ones([3]);
    y.backward(g);
    expect(Array.from(x.grad!.dataSync())).toEqual([2, 2, 2]);
    dr.dispose([x, y, g]);
    expect(dr.memory().tensors).toBe(start - 1);
  });

  test('backward through a tensor updated in place after it was saved is refused', () => {
    const x = dr.tensor([1, 2, 3]).requiresGrad_();
    const y = x.mul(2);
    const z = y.exp(); // saves y
    dr.noGrad(() => y.add_(1));
    expect(() => z.sum().backward()).toThrow(/backward of exp: a tensor it saved .* was modified by an in-place op/);
    dr.dispose([x, y, z]);
  });
});
