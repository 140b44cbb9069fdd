// Size limits (lib/limits.ts): one rule for creation and views, reads that fail with a typed
// error instead of a fatal V8 one, printing that reads only what it shows.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as dr from '../lib';
import { MAX_ARRAY_ELEMENTS, MAX_ELEMENTS, MAX_READ_BYTES } from '../lib/limits';

describe('limits', () => {
  test('one shape rule: every dimension and the element count at most 2^36, zeros or not', () => {
    for (const shape of [[2 ** 62, 0], [0, 2 ** 62], [2 ** 37], [2 ** 20, 2 ** 20]]) {
      expect(() => dr.zeros(shape)).toThrow(dr.ShapeError);
      expect(() => dr.ones([1]).expand(shape)).toThrow(dr.ShapeError);
    }
    expect(() => dr.ones([1]).expand([2 ** 40])).toThrow(/exceeds the limit of 2\^36/);
    expect(() => dr.ones([1]).expand([2 ** 40]).sum()).toThrow(dr.ShapeError); // refused before any work
    // at the limit, as a view, is fine
    const v = dr.ones([1]).expand([MAX_ELEMENTS]);
    expect(v.size).toBe(MAX_ELEMENTS);
    v.dispose();
    // the native side holds the same rule whatever the caller passes
    const { native } = require('../lib/native');
    expect(() => native.empty([0, 2 ** 40], 0, 0)).toThrow(/outside \[0, 2\^36\]/);
    // and its fast entries, which take the shape (and strides) in a Float64Array's buffer
    const dims = new Float64Array(16);
    dims.set([0, 2 ** 40]);
    expect(() => native.emptyFrom(dims.buffer, 2, 0, 0)).toThrow(/outside \[0, 2\^36\]/);
    expect(() => native.emptyFrom(dims.buffer, 9, 0, 0)).toThrow(/at most 8 dimensions/);
    expect(() => native.emptyFrom(new ArrayBuffer(8), 2, 0, 0)).toThrow(/at most 8 dimensions/);
    expect(() => native.emptyFrom([0, 1], 2, 0, 0)).toThrow(/expected the ArrayBuffer of a Float64Array/);
    dims.set([1.5]);
    expect(() => native.emptyFrom(dims.buffer, 1, 0, 0)).toThrow(/must be an integer/);
    const base = dr.ones([4]);
    dims.set([2, 0, 0, 0, 0, 0, 0, 0, 3]);  // shape [2], strides [3]: element 3 is the last one
    const h = native.viewFrom(base.handle, dims.buffer, 1, 0);
    native.release(h);
    expect(() => native.viewFrom(base.handle, dims.buffer, 1, 1)).toThrow(/exceed the storage of 4 elements/);
    expect(() => native.viewFrom(-1, dims.buffer, 1, 0)).toThrow(/disposed/);
    expect(() => native.alias(-1)).toThrow(/disposed/);
    base.dispose();
  });

  test('reads past what a buffer holds are MemoryErrors, from every read path', async () => {
    const huge = dr.ones([1]).expand([2 ** 34]);
    expect(() => huge.dataSync()).toThrow(dr.MemoryError);
    expect(() => huge.item()).toThrow(dr.ShapeError);
    await expect(huge.data()).rejects.toThrow(/more than one read returns \(4294967296\); read it in parts/);
    expect(() => huge.arraySync()).toThrow(dr.MemoryError);
    await expect(huge.array()).rejects.toThrow(dr.MemoryError);
    // bfloat16 widens to float32 when read: the widened size counts
    const half = dr.ones([1], { dtype: 'bfloat16' }).expand([MAX_READ_BYTES / 2 + 1]);
    expect(() => half.dataSync()).toThrow(dr.MemoryError);
    // nested arrays have their own, lower limit
    const big = dr.zeros([1]).expand([MAX_ARRAY_ELEMENTS + 1]);
    expect(() => big.arraySync()).toThrow(/too many for nested JavaScript arrays/);
    const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'dr-limits-')), 'huge.safetensors');
    expect(() => dr.saveSafetensorsSync(f, { huge })).toThrow(dr.MemoryError);
    await expect(dr.saveSafetensors(f, { huge })).rejects.toThrow(dr.MemoryError);
    expect(fs.readdirSync(path.dirname(f))).toEqual([]); // no temp file left
    dr.dispose([huge, half, big]);
  });

  test('printing reads only the edges it shows', () => {
    const huge = dr.arange(0, 10, 1, { dtype: 'float32' }).reshape([1, 10]).expand([2 ** 30, 10]);
    const s = huge.toString();
    expect(s).toContain('[0.0, 1.0, 2.0, ..., 7.0, 8.0, 9.0]');
    expect(s).toContain('shape=[1073741824, 10]');
    const t = dr.arange(0, 1000).reshape([10, 10, 10]);
    const lines = t.toString().split('\n');
    expect(lines[0]).toBe('Tensor([[[0, 1, 2, ..., 7, 8, 9],');
    expect(t.toString()).toContain('[990, 991, 992, ..., 997, 998, 999]]]');
    dr.dispose([huge, t]);
  });
});
