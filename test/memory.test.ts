import { spawnSync } from 'child_process';
import * as path from 'path';
import * as dr from '../lib';

/** Tensors to read into arrays: every dtype's read array, a strided view, bfloat16 widened, a
 * subarray at an offset, a computed one, one over a SharedArrayBuffer. */
function readIntoCases(): Array<[dr.Tensor, () => ArrayBufferView & { length: number }]> {
  return [
    [dr.tensor(new Float64Array([0.1, -2, 3.5])), () => new Float64Array(3)],
    [dr.tensor(new Int32Array([7, -8, 9, 10])).reshape([2, 2]).transpose(0, 1), () => new Int32Array(4)],
    [dr.tensor([1, 0, 1], [3], { dtype: 'bool' }), () => new Uint8Array(3)],
    [dr.tensor([1.5, -0.25, 3], [3], { dtype: 'bfloat16' }), () => new Float32Array(3)],
    [dr.randn([5, 7]).narrow(1, 2, 3), () => new Float32Array(new ArrayBuffer(4 * 20), 8, 15)],
    [dr.randn([61, 70]).mul(3), () => new Float32Array(61 * 70)],
    [dr.randn([4, 5]), () => new Float32Array(new SharedArrayBuffer(4 * 20))],
  ];
}

describe('memory', () => {
  test('10,000 create/compute/dispose iterations return to the starting counts', () => {
    dr.synchronize(); // what earlier tests queued is freed first
    const start = dr.memory();
    for (let i = 0; i < 10000; ++i) {
      const a = dr.randn([17, 5]);
      const b = a.mul(2);
      const c = b.add(1);
      const d = c.softmax(-1);
      const e = d.sum(0);
      const r = e.reshape([1, 5]);
      const v = r.T;
      for (const t of [a, b, c, d, e, r, v]) t.dispose();
    }
    expect(dr.memory().cpu.tensors).toBe(start.cpu.tensors);
    // buffers that queued ops still read are freed as those ops finish
    dr.synchronize();
    const end = dr.memory();
    expect(end.cpu.tensors).toBe(start.cpu.tensors);
    expect(end.cpu.bytes).toBe(start.cpu.bytes);
    expect(end.cpu.buffers).toBe(start.cpu.buffers);
  });

  test('a large read returns host memory that goes back to the cache once collected, never a live result\'s', async () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (!gc) throw new Error('run jest with node --expose-gc (npm test does)');
    const n = (1 << 20) + 5;  // 4 MiB and a bit: a pooled read
    const x = dr.arange(0, n, 1, { dtype: 'float32' });
    const kept = x.dataSync();
    const snapshot = kept.slice();
    const turn = () => new Promise((r) => setImmediate(r));
    dr.emptyCache();
    for (let i = 1; i <= 12; ++i) {
      const y = x.mul(i);
      const r = i % 2 ? await y.data() : y.dataSync();
      expect(r.length).toBe(n);
      expect([r[0], r[1], r[n - 1]]).toEqual([0, i, (n - 1) * i]);
      y.dispose();
      gc();
      await turn();
      await turn();
    }
    gc();
    await turn();
    await turn();
    // two blocks of this size are cached: the products' (disposed) and the reads' (collected;
    // Node returns them on a later turn of the loop), each handed out again every round
    expect(dr.memory().cpu.cachedBytes).toBeGreaterThanOrEqual(8 * n);
    expect(dr.memory().cpu.cachedBytes).toBeLessThan(16 * n);
    // and the result still held was never handed out again
    expect(kept).toEqual(snapshot);
    x.dispose();
  });

  test('a synchronous loop of large reads past 64 MiB still reads into host blocks, every one back in the cache once it yields', async () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (!gc) throw new Error('run jest with node --expose-gc (npm test does)');
    const turn = () => new Promise((r) => setImmediate(r));
    const n = 2 * 1024 * 1024;  // 8 MiB a read, 20 reads: 160 MiB outstanding before the loop yields
    const x = dr.arange(0, n, 1, { dtype: 'float32' });
    dr.synchronize();
    dr.emptyCache();
    let sum = 0;
    for (let i = 0; i < 20; ++i) {
      const r = x.dataSync();
      expect(r.length).toBe(n);
      sum += r[i] + r[n - 1 - i];
    }
    expect(sum).toBe(20 * (n - 1));
    for (let k = 0; k < 10 && dr.memory().cpu.cachedBytes < 20 * 4 * n; ++k) {
      gc();
      await turn();
      await turn();
    }
    // the reads' blocks came back (all 20 as a rule; 16 allowed for a collection that keeps a
    // few a while): with reads past 64 MiB going to Node Buffers, 8 at most would
    expect(dr.memory().cpu.cachedBytes).toBeGreaterThanOrEqual(16 * 4 * n);
    x.dispose();
    dr.emptyCache();
  });

  test('dataSync(into) writes the elements into the caller\'s array and returns it; a wrong array is refused by name', () => {
    dr.tidy(() => {
      const n = (1 << 18) + 3;  // 1 MiB and a bit: the size that would take a pooled buffer
      const x = dr.arange(0, n, 1, { dtype: 'float32' });
      const dst = new Float32Array(n).fill(-1);
      for (let i = 1; i <= 3; ++i) {
        const got = x.mul(i).dataSync(dst);
        expect(got).toBe(dst);
        expect([dst[0], dst[1], dst[n - 1]]).toEqual([0, i, (n - 1) * i]);
      }
      for (const [t, make] of readIntoCases()) {
        const into = make();
        expect(Array.from(t.dataSync(into as never))).toEqual(Array.from(t.dataSync()));
      }
      // the elements outside a subarray are not touched
      const whole = new Float32Array(9).fill(7);
      dr.tensor([1, 2, 3]).dataSync(whole.subarray(3, 6));
      expect(Array.from(whole)).toEqual([7, 7, 7, 1, 2, 3, 7, 7, 7]);
      const y = dr.tensor([1, 2, 3]);
      expect(() => y.dataSync(new Float64Array(3) as never)).toThrow(dr.DTypeError);
      expect(() => y.dataSync(new Float64Array(3) as never)).toThrow(/dataSync\(into\): Expected a Float32Array for a float32 tensor/);
      expect(() => y.dataSync(new Float32Array(4))).toThrow(dr.ShapeError);
      expect(() => y.dataSync(new Float32Array(2))).toThrow(/Expected 3 elements \(shape \[3\]\) but the array holds 2/);
      expect(() => y.dataSync([1, 2, 3] as never)).toThrow(dr.DTypeError);
      expect(() => dr.tensor([1, 0], [2], { dtype: 'bfloat16' }).dataSync(new Uint16Array(2) as never)).toThrow(dr.DTypeError);
    });
  });

  test('data(into) writes into the caller\'s array and resolves to it, queued or not, small or staged; wrong arrays refused by name', async () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (!gc) throw new Error('run jest with node --expose-gc (npm test does)');
    const turn = () => new Promise((r) => setImmediate(r));
    const n = (1 << 20) + 3;  // 4 MiB and a bit: staged in a host block
    const x = dr.arange(0, n, 1, { dtype: 'float32' });
    const dst = new Float32Array(n).fill(-1);
    for (let i = 1; i <= 6; ++i) {
      const y = x.mul(i);  // queued, or already run: the read is staged or copied at once
      const got = await y.data(dst);
      expect(got).toBe(dst);
      expect([dst[0], dst[1], dst[n - 1]]).toEqual([0, i, (n - 1) * i]);
      y.dispose();
    }
    // small, already computed (read at once)
    for (const [t, make] of readIntoCases()) {
      const into = make();
      expect(await t.data(into as never)).toBe(into);
      expect(Array.from(into)).toEqual(Array.from(t.dataSync()));
      t.dispose();
    }
    const y = dr.tensor([1, 2, 3]);
    await expect(y.data(new Float64Array(3) as never)).rejects.toThrow(dr.DTypeError);
    await expect(y.data(new Float64Array(3) as never)).rejects.toThrow(/data\(into\): Expected a Float32Array for a float32 tensor/);
    await expect(y.data(new Float32Array(4))).rejects.toThrow(/data\(into\): Expected 3 elements \(shape \[3\]\) but the array holds 4/);
    y.dispose();
    x.dispose();
  });

  test('data(into) staged behind a long op: lands in the array, or rejects by name when the array was detached meanwhile', async () => {
    // a 2048^3 matmul takes tens of milliseconds: the reads below are queued behind it, staged
    // in a host block and copied into their array once they land
    const a = dr.randn([2048, 2048], { generator: new dr.Generator(11) });
    dr.synchronize();
    dr.emptyCache();
    const m = dr.matmul(a, a);
    const into = new Float32Array(2048 * 2048);
    const p = m.data(into);
    structuredClone(into.buffer, { transfer: [into.buffer] });  // detaches `into`
    await expect(p).rejects.toThrow(dr.ValueError);
    await expect(m.data(new Float32Array(2048 * 2048).buffer as never)).rejects.toThrow(dr.DTypeError);
    const h = dr.matmul(a, a, { alpha: 0.5 });
    const into2 = new Float32Array(2048 * 2048).fill(NaN);
    const got = h.data(into2);
    expect(into2[0]).toBeNaN();  // nothing written before the read lands
    expect(await got).toBe(into2);
    // the staging block (16 MiB) went back to the cache (with the reads' buffers collected from
    // earlier tests, if any: a lower bound)
    expect(dr.memory().cpu.cachedBytes).toBeGreaterThanOrEqual(16 * 2 ** 20);
    // an array over a SharedArrayBuffer, staged too (its memory is reached without ArrayBuffer())
    const shared = new Float32Array(new SharedArrayBuffer(4 * 2048 * 2048));
    const h2 = dr.matmul(a, a, { alpha: 0.25 });
    expect(await h2.data(shared)).toBe(shared);
    expect([shared[0], shared[2048 * 2048 - 1]]).toEqual([into2[0] / 2, into2[2048 * 2048 - 1] / 2]);
    h2.dispose();
    const want = h.dataSync();
    let differ = 0;
    for (let i = 0; i < want.length; ++i) differ += into2[i] === want[i] ? 0 : 1;
    expect(differ).toBe(0);
    const table = dr.randn([8, 4]);
    const bad = dr.embedding(dr.tensor(new Int32Array([3, 8])), table);
    const kept = new Float32Array(8).fill(5);
    await expect(bad.data(kept)).rejects.toThrow(dr.OutOfRangeError);
    await expect(bad.data(kept)).rejects.toThrow(/data\(into\)/);
    expect(Array.from(kept)).toEqual(new Array(8).fill(5));
    dr.dispose([a, m, h, table, bad]);
  });

  test('dataSync(into) raises the failure of the op it depends on and leaves the array as it was', () => {
    const table = dr.randn([8, 4]);
    const bad = dr.embedding(dr.tensor(new Int32Array([3, 8])), table);
    const into = new Float32Array(8).fill(5);
    expect(() => bad.dataSync(into)).toThrow(dr.OutOfRangeError);
    expect(Array.from(into)).toEqual(new Array(8).fill(5));
    dr.dispose([table, bad]);
  });

  test('tidy disposes intermediates and keeps what is returned (nested too)', () => {
    const start = dr.memory().tensors;
    const out = dr.tidy(() => {
      const a = dr.ones([3]);
      const b = a.add(1);
      const c = b.mul(b);
      return { c, list: [b.sum()] };
    });
    expect(dr.memory().tensors).toBe(start + 2);
    expect(out.c.arraySync()).toEqual([4, 4, 4]);
    dr.dispose(out);
    expect(dr.memory().tensors).toBe(start);
  });

  test('keep() survives tidy; nested tidy hands survivors to its parent', () => {
    const start = dr.memory().tensors;
    let kept!: dr.Tensor;
    const outer = dr.tidy(() => {
      const inner = dr.tidy(() => {
        kept = dr.keep(dr.zeros([2]));
        dr.zeros([5]);
        return dr.ones([2]);
      });
      expect(dr.memory().tensors).toBe(start + 2);
      return inner.add(1);
    });
    expect(dr.memory().tensors).toBe(start + 2);
    expect(kept.isDisposed).toBe(false);
    kept.dispose();
    outer.dispose();
    expect(dr.memory().tensors).toBe(start);
  });

  test('tidy cleans up when fn throws; async fns are refused', () => {
    const start = dr.memory().tensors;
    expect(() => dr.tidy(() => {
      dr.zeros([3]);
      throw new Error('boom');
    })).toThrow('boom');
    expect(dr.memory().tensors).toBe(start);
    expect(() => dr.tidy((async () => 1) as never)).toThrow(/synchronous/);
  });

  test('using disposes at the end of the block', () => {
    const start = dr.memory().tensors;
    {
      using a = dr.zeros([4]);
      expect(a.size).toBe(4);
      expect(dr.memory().tensors).toBe(start + 1);
    }
    expect(dr.memory().tensors).toBe(start);
  });

  test('use after dispose throws DisposedError; dispose twice is harmless', () => {
    const a = dr.zeros([2]);
    a.dispose();
    a.dispose();
    expect(() => a.dataSync()).toThrow(dr.DisposedError);
    expect(() => a.add(1)).toThrow(dr.DisposedError);
    expect(() => dr.matmul(a, a)).toThrow(/disposed/);
  });

  test('large blocks come in 2 MiB pages (DUALROUTE_CPU_HUGEPAGES=0: 4 KiB pages), whatever their size, from 1.5 MiB, with the same values', () => {
    const mode = (() => {
      try {
        return /\[(\w+)\]/.exec(require('fs').readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1] ?? 'none';
      } catch {
        return 'none';
      }
    })();
    const run = (huge: string) => {
      const r = spawnSync(process.execPath, [path.join(__dirname, 'gc', 'huge_pages.js')],
                          { encoding: 'utf8', timeout: 60_000, env: { ...process.env, DUALROUTE_CPU_HUGEPAGES: huge } });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      return JSON.parse(r.stdout) as { before: number; during: number; afterSmall: number; checks: Array<{ n: number; bad: number; length: number }> };
    };
    for (const huge of ['1', '0']) {
      const out = run(huge);
      const small = [445645, 0, 445645];
      expect(out.checks.map((c) => [c.n, c.bad, c.length])).toEqual([[1310721, 0, 1310721], [16777215, 0, 16777215], [2359312, 0, 2359312], small, small, small, small]);
      // with THP in "madvise" mode (these machines), only the advised blocks get huge pages:
      // the 64 MiB pair alone is 62 whole 2 MiB pages of which some must be huge; the eight
      // 1.7 MiB blocks are a 2 MiB page each (16 MiB), of which at least half must be huge
      if (mode === 'madvise' && out.before >= 0) {
        if (huge === '1') {
          expect(out.during - out.before).toBeGreaterThanOrEqual(8 * 1024);
          expect(out.afterSmall - out.during).toBeGreaterThanOrEqual(8 * 1024);
        } else {
          expect(out.during - out.before).toBeLessThan(8 * 1024);
          expect(out.afterSmall - out.during).toBeLessThan(8 * 1024);
        }
      }
    }
  });

  test('the GC safety net frees tensors that were never disposed: a few, a long synchronous burst, never a held one', () => {
    // run in a fresh process, the library loaded once as a program has it (test/gc/safety_net.js
    // says why not inside jest's in-band run); new tensors wait for a sweep before they are
    // registered: after 256 of them, after 64 MiB of them, or at the next turn of the event loop
    const r = spawnSync(process.execPath, ['--expose-gc', path.join(__dirname, 'gc', 'safety_net.js')],
                        { encoding: 'utf8', timeout: 120_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    type Counts = { tensors: number; bytes: number };
    const out = JSON.parse(r.stdout) as { scenarios: Array<{ name: string; start: Counts; made: Counts; end: Counts }>; heldSum: number };
    const by = Object.fromEntries(out.scenarios.map((s) => [s.name, s]));
    expect(by.few.made.tensors).toBe(by.few.start.tensors + 200);
    expect(by.few.end).toEqual(by.few.start);
    expect(by.burst.made.tensors).toBe(by.burst.start.tensors + 6006);
    expect(by.burst.made.bytes).toBeGreaterThan(by.burst.start.bytes + 6 * 16 * 2 ** 20 - 1);
    expect(by.burst.end).toEqual(by.burst.start);
    expect(by.held.end.tensors).toBe(by.held.start.tensors + 10);
    expect(out.heldSum).toBe(30);
  });
});
