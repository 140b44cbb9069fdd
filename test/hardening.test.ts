// Faults a reliability probe found (issue 12), each kept fixed; where a fault is one of a class,
// the test sweeps the class.
import * as path from 'path';
import * as dr from '../lib';
import { nn, optim } from '../lib';

const DIST = path.resolve(__dirname, '../dist/lib');

describe('values an int32 cannot hold are refused, never clamped or wrapped', () => {
  const big = [2 ** 31, -(2 ** 31) - 1, 2 ** 40, -(2 ** 53)];
  test('every entry point that turns a number into an int32', () => {
    const x = dr.tensor(new Int32Array([1, 2, 3]));
    for (const v of big) {
      expect(() => dr.tensor([1, v], undefined, { dtype: 'int32' })).toThrow(dr.OutOfRangeError);
      expect(() => dr.full([2], v, { dtype: 'int32' })).toThrow(dr.OutOfRangeError);
      expect(() => dr.add(x, v)).toThrow(dr.OutOfRangeError);
      expect(() => dr.mul(v, x)).toThrow(dr.OutOfRangeError);
      expect(() => dr.maximum(x, v)).toThrow(dr.OutOfRangeError);
      expect(() => dr.eq(x, v)).toThrow(dr.OutOfRangeError);
      expect(() => dr.where(dr.tensor([true, false, true]), x, v)).toThrow(dr.OutOfRangeError);
      expect(() => x.fill_(v)).toThrow(dr.OutOfRangeError);
      expect(() => x.add_(v)).toThrow(dr.OutOfRangeError);
    }
    expect(() => dr.arange(2 ** 31 - 2, 2 ** 31 + 3)).toThrow(/the last value .* does not fit in int32/);
    expect(() => dr.arange(-(2 ** 31) - 1, 0)).toThrow(dr.OutOfRangeError);
    expect(() => dr.randint(0, 2 ** 40, [5])).toThrow(dr.OutOfRangeError);
    // the edges themselves are fine
    expect(dr.arange(2 ** 31 - 3, 2 ** 31).arraySync()).toEqual([2 ** 31 - 3, 2 ** 31 - 2, 2 ** 31 - 1]);
    expect(dr.full([1], -(2 ** 31), { dtype: 'int32' }).item()).toBe(-(2 ** 31));
    expect(dr.randint(-(2 ** 31), 2 ** 31, [4]).dtype).toBe('int32');
    x.dispose();
  });
});

describe('arguments that were accepted and silently did something else', () => {
  test('an optimizer refuses a gradient of another shape than its parameter', () => {
    const p = dr.zeros([2, 3]).requiresGrad_();
    p.grad = dr.ones([3, 2]);
    for (const opt of [new optim.AdamW([p], { lr: 0.1 }), new optim.SGD([p], { lr: 0.1 })]) {
      expect(() => opt.step()).toThrow(/params\[0\] has shape \[2, 3\] but its grad \[3, 2\]/);
    }
    expect(p.arraySync()).toEqual([[0, 0, 0], [0, 0, 0]]);
    p.dispose();
  });

  test('loadStateDict: a value that is not a tensor is an error, not a silent skip', () => {
    const l = new nn.Linear(2, 2);
    for (const bad of [0, NaN, null, 'w', {}]) {
      expect(() => l.loadStateDict({ weight: bad as never, bias: l.bias })).toThrow(/Expected a live Tensor for weight/);
    }
    l.dispose();
  });

  test('an optimizer state with a bad lr or step is refused', () => {
    const p = dr.zeros([2]).requiresGrad_();
    const opt = new optim.AdamW([p], { lr: 0.1 });
    for (const lr of [-1, NaN, Infinity, '0.1']) expect(() => opt.loadStateDict({ step: 1, lr: lr as number, slots: {} })).toThrow(dr.ValueError);
    for (const step of [-1, 1.5, NaN]) expect(() => opt.loadStateDict({ step, lr: 0.1, slots: {} })).toThrow(dr.ValueError);
    expect(() => opt.loadStateDict({ step: 1, lr: 0.1, slots: { '0.expAvg': 3 as never } })).toThrow(/Expected a live Tensor for slot 0.expAvg/);
    expect(opt.lr).toBe(0.1);
    p.dispose();
  });

  test('LRScheduler refuses a step it cannot schedule, and keeps its count', () => {
    const p = dr.zeros([1]).requiresGrad_();
    const opt = new optim.SGD([p], { lr: 1 });
    const s = new optim.LRScheduler(opt, optim.cosine({ lr: 1, totalSteps: 10, warmupSteps: 2 }));
    for (const bad of [-1, 0.5, NaN]) expect(() => (s.lastStep = bad)).toThrow(dr.ValueError);
    expect(s.lastStep).toBe(0);
    expect(Number.isFinite(opt.lr)).toBe(true);
    const broken = new optim.LRScheduler(opt, (step) => (step === 2 ? NaN : 0.5));
    broken.step();
    expect(() => broken.step()).toThrow(/the schedule gave number NaN at step 2/);
    expect(broken.lastStep).toBe(1);
    expect(opt.lr).toBe(0.5);
    p.dispose();
  });

  test('random draws refuse non-finite parameters', () => {
    for (const o of [{ std: NaN }, { mean: Infinity }, { std: -1 }]) expect(() => dr.randn([2], o)).toThrow(dr.ValueError);
    for (const o of [{ low: NaN }, { high: Infinity }, { low: 2, high: 1 }]) expect(() => dr.rand([2], o)).toThrow(dr.ValueError);
    expect(() => dr.rand([2], { generator: {} as never })).toThrow(/Expected a Generator for generator/);
  });

  test('setNumThreads takes integers only, and only on the main thread (the pool is the whole process\'s)', async () => {
    for (const n of [1.9, NaN, 0, 2000, '2']) expect(() => dr.setNumThreads(n as number)).toThrow(dr.ValueError);
    const { Worker } = require('worker_threads');
    const w = new Worker(`
      const dr = require(${JSON.stringify(DIST)});
      const { parentPort } = require('worker_threads');
      try { dr.setNumThreads(1); parentPort.postMessage('accepted'); }
      catch (e) { parentPort.postMessage(e.constructor.name + ': ' + e.message); }`, { eval: true });
    const msg = await new Promise((r) => w.once('message', r));
    expect(msg).toMatch(/^ValueError: setNumThreads: the CPU thread pool is shared by the whole process/);
    await w.terminate();
  });
});

describe('empty tensors', () => {
  // ops whose outputs are empty are checked, then skipped: kernels never see a zero-size output
  // (swiglu on [0] divided by its half-width before this)
  test('ops on tensors with a zero-size axis return empty results of the right shape', () => {
    for (const shape of [[0], [2, 0], [0, 4], [1, 2, 0, 8]]) {
      const x = dr.zeros(shape);
      const d = shape[shape.length - 1];
      if (d % 2 === 0) expect(dr.swiglu(x).shape).toEqual([...shape.slice(0, -1), d / 2]);
      expect(dr.softmax(x, -1).shape).toEqual(shape);
      expect(dr.rmsNorm(x, dr.ones([d])).shape).toEqual(shape);
      expect(dr.gelu(x).shape).toEqual(shape);
      expect(dr.add(x, x).shape).toEqual(shape);
      expect(dr.matmul(x, dr.zeros([d, 3])).shape).toEqual([...shape.slice(0, -1), 3]);
    }
  });
  test('reductions and products over an empty axis give their identities', () => {
    expect(Array.from(dr.sum(dr.zeros([2, 0]), -1).dataSync())).toEqual([0, 0]);
    expect(Array.from(dr.matmul(dr.zeros([2, 0]), dr.zeros([0, 3])).dataSync())).toEqual([0, 0, 0, 0, 0, 0]);
    expect(Array.from(dr.mean(dr.zeros([2, 0]), -1).dataSync()).every(Number.isNaN)).toBe(true);
    expect(() => dr.max(dr.zeros([2, 0]), -1)).toThrow(dr.ShapeError);
  });
});

describe('faults the fuzzer found after the sweep', () => {
  test('tensor(data, null) is a ShapeError, not a TypeError from reading null options', () => {
    expect(() => dr.tensor(1.5, null as unknown as number[])).toThrow(dr.ShapeError);
    expect(() => dr.tensor([1, 2], [2], null as unknown as dr.CreateOptions)).toThrow(dr.ValueError);
  });
  test('narrow with a symbol start or length is a ShapeError', () => {
    const x = dr.zeros([4]);
    expect(() => dr.narrow(x, 0, Symbol('s') as unknown as number, 1)).toThrow(dr.ShapeError);
    expect(() => dr.narrow(x, 0, 0, Symbol('s') as unknown as number)).toThrow(dr.ShapeError);
  });
});
