// The op table (native/optable.js) is the one declaration of every native op: the addon's
// entries, the argument structs, the CUDA table and lib/generated/native_ops.ts come from it.
import { execFileSync } from 'child_process';
import * as path from 'path';
import * as dr from '../lib';
import { addon } from '../lib/addon';
import { OP_NAMES, OP_TABLE, op, supports } from '../lib/native';

const ROOT = path.resolve(__dirname, '..');
// eslint-disable-next-line @typescript-eslint/no-var-requires
const gen = require(path.join(ROOT, 'scripts', 'gen-ops.js'));
const table = require(path.join(ROOT, 'native', 'optable.js'));
const RUNTIME = ['empty', 'fromBytes', 'view', 'alias', 'emptyFrom', 'viewFrom', 'release', 'isLive', 'readSync', 'read', 'devices', 'memory', 'numThreads',
  'setNumThreads', 'synchronize', 'synchronizeAsync', 'pending', 'emptyCache', 'streamStats', 'cpuStats', 'setEnv'];

describe('the op table', () => {
  test('the addon exports exactly the table\'s ops (and its runtime entries)', () => {
    const exported = Object.keys(addon as object).filter((k) => typeof (addon as Record<string, unknown>)[k] === 'function');
    expect(new Set(exported)).toEqual(new Set([...OP_NAMES, ...RUNTIME]));
    expect([...OP_NAMES]).toEqual(table.ops.map((o: { name: string }) => o.name));
  });

  test('the generated files are those of the table as it is now', () => {
    // exits 1 naming any stale or missing file
    expect(() => execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'gen-ops.js'), '--check'], { stdio: 'pipe' })).not.toThrow();
  });

  test('a table that does not read fails the generator (and so the build) with the fault named', () => {
    const base = { enums: table.enums, kernels: table.kernels };
    const bad = (ops: unknown[]) => () => gen.load({ ...base, ops });
    const ok = { name: 'foo', family: 'x', args: 'out Tensor out, Tensor x', dtypes: { cpu: ['float32'], cuda: [] } };
    expect(() => gen.load({ ...base, ops: [ok] })).not.toThrow();
    expect(bad([ok, ok])).toThrow(/foo is declared twice/);
    expect(bad([{ ...ok, args: 'out Tensor out, Tensr x' }])).toThrow(/unknown type "Tensr" of x/);
    expect(bad([{ ...ok, args: 'Tensor x' }])).toThrow(/writes at least one tensor/);
    expect(bad([{ ...ok, dtypes: { cpu: ['float16'], cuda: [] } }])).toThrow(/unknown dtype float16/);
    expect(bad([{ ...ok, dtypeOf: 'y' }])).toThrow(/dtypeOf "y"/);
    expect(() => gen.load({ ...base, ops: [ok], kernels: [...table.kernels, { name: 'k', params: 'View a, Blob b' }] })).toThrow(/unknown parameter type "Blob"/);
  });

  test('arguments are named: a wrong one is a ValueError naming the op and the argument', () => {
    const x = dr.ones([2, 3]);
    const out = dr.empty([2, 3]);
    expect(() => op.rmsNorm({ out, x, eps: 'tiny' as unknown as number })).toThrow(dr.ValueError);
    expect(() => op.rmsNorm({ out, x, eps: 'tiny' as unknown as number })).toThrow(/rmsNorm: Expected a number for eps but received a string/);
    expect(() => op.softmax({ out, x, axis: 1.5, log: false })).toThrow(/softmax: Expected an integer in .* for axis but received the number 1.5/);
    expect(() => op.unary({ op: 'cube' as never, out, x })).toThrow(/unary: Expected one of neg, abs, .* for op but received the string "cube"/);
    expect(() => op.copy({ out, x: { handle: -5 } as unknown as dr.Tensor })).toThrow(/copy: x: the tensor was disposed/);
    // and the addon refuses an extra positional argument (a wrapper out of step with the table)
    expect(() => (addon as Record<string, (...a: unknown[]) => void>).fill(out.handle, 1, 2)).toThrow(/fill: Expected 2 arguments but received 3/);
    dr.dispose([x, out]);
  });

  test('supports() is the one gate: the addon refuses what the table does not list, naming what it supports', () => {
    expect(supports('adamwStep', 'bfloat16', 'cpu')).toBe(false);
    expect(supports('adamwStep', 'float64', 'cpu')).toBe(true);
    expect(supports('adamwStep', 'float64', 'cuda')).toBe(false);
    expect(supports('matmul', 'int32', 'cpu')).toBe(false);
    const p = dr.zeros([4], { dtype: 'bfloat16' });
    expect(() => op.adamwStep({ param: p, grad: p, expAvg: p, expAvgSq: p, lr: 1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0, step: 1, gradScale: 1 }))
      .toThrow(/adamwStep: bfloat16 is not supported on cpu \(supported: float32, float64\)/);
    const i = dr.zeros([2, 2], { dtype: 'int32' });
    expect(() => op.matmul({ out: i, a: i, b: i, transA: false, transB: false, alpha: 1, beta: 0 })).toThrow(dr.DTypeError);
    dr.dispose([p, i]);
    for (const name of OP_NAMES) {
      const e = OP_TABLE[name];
      expect(e.dtypes.cpu.length).toBeGreaterThan(0);
      // the CUDA backend computes in float32/bfloat16 (and int32/bool where they mean something); float64 is CPU-only
      expect(e.dtypes.cuda).not.toContain('float64');
    }
  });
});
