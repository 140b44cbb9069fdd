// safetensors I/O: bit-exact round trips, the byte layout of the spec, rejection of malformed
// files, and atomic replacement. Imports the modules directly rather than lib/index so the
// suite does not depend on unrelated ops (autograd kernels) being importable.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { tensor } from '../../lib/ops/creation';
import { fill_ } from '../../lib/ops/inplace';
import { viewOf } from '../../lib/ops/util';
import { cudaAvailable } from '../../lib/device';
import { DeviceError, FormatError, ValueError } from '../../lib/errors';
import { memory } from '../../lib/memory';
import { Tensor, dispose } from '../../lib/tensor';
import { DType } from '../../lib/dtype';
import {
  loadSafetensors, loadSafetensorsSync, parseSafetensorsHeader, saveSafetensors, saveSafetensorsSync,
} from '../../lib/train/safetensors';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-safetensors-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});
let counter = 0;
const file = (name = 'f') => path.join(dir, `${name}-${++counter}.safetensors`);

/** The stored bytes of a tensor (bf16 as its raw 16-bit values, not widened). */
function rawBytes(t: Tensor): Uint8Array {
  const d = t.dataSync();
  if (t.dtype === 'bfloat16') {
    const w = new Uint32Array(d.buffer, d.byteOffset, d.length);
    return new Uint8Array(Uint16Array.from(w, (x) => x >>> 16).buffer);
  }
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

// Deterministic values with the awkward cases up front: signed zeros, infinities, NaNs with
// payloads, subnormals, extremes.
function values(dtype: DType, n: number): Float32Array | Float64Array | Int32Array | Uint8Array | Uint16Array {
  let s = 12345 + n;
  const next = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0), s);
  switch (dtype) {
    case 'float32': {
      const u = new Uint32Array(n);
      const special = [0x80000000, 0x7f800000, 0xff800000, 0x7fc00001, 0x7f800001, 0x00000001, 0x7f7fffff];
      for (let i = 0; i < n; ++i) u[i] = i < special.length ? special[i] : next();
      return new Float32Array(u.buffer);
    }
    case 'float64': {
      const u = new Uint32Array(2 * n);
      for (let i = 0; i < 2 * n; ++i) u[i] = next();
      if (n > 0) u[1] = 0x7ff00000 | 0x1234, u[0] = 1; // NaN with a payload
      return new Float64Array(u.buffer);
    }
    case 'bfloat16': {
      const special = [0x8000, 0x7f81 /* signalling NaN */, 0xffc1, 0x0001, 0x7f80, 0xff7f];
      return Uint16Array.from({ length: n }, (_, i) => (i < special.length ? special[i] : next() & 0xffff));
    }
    case 'int32': {
      const a = new Int32Array(n);
      for (let i = 0; i < n; ++i) a[i] = i === 0 ? -2147483648 : i === 1 ? 2147483647 : next() | 0;
      return a;
    }
    case 'bool':
      return Uint8Array.from({ length: n }, () => next() & 1);
  }
}

const DTYPES: DType[] = ['float32', 'float64', 'bfloat16', 'int32', 'bool'];
const SHAPES = [[], [1], [3, 5], [0, 4], [2, 3, 129]];

function sample(): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const dtype of DTYPES) {
    for (const shape of SHAPES) {
      const n = shape.reduce((a, b) => a * b, 1);
      out[`${dtype}/${shape.join('x') || 'scalar'}`] = tensor(values(dtype, n), shape, { dtype, device: 'cpu' });
    }
  }
  return out;
}

function expectSame(got: Record<string, Tensor>, want: Record<string, Tensor>): void {
  expect(Object.keys(got).sort()).toEqual(Object.keys(want).sort());
  for (const [k, w] of Object.entries(want)) {
    const g = got[k];
    expect({ k, dtype: g.dtype, shape: g.shape }).toEqual({ k, dtype: w.dtype, shape: w.shape });
    expect(Buffer.from(rawBytes(g)).equals(Buffer.from(rawBytes(w)))).toBe(true);
  }
}

describe('round trip', () => {
  test('every dtype and awkward shapes, sync, bit for bit, with metadata', () => {
    const ts = sample();
    const meta = { note: 'héllo ✓ 🚀', ['__proto__']: 'plain data', empty: '' };
    const f = file();
    saveSafetensorsSync(f, ts, meta);
    const { tensors, metadata } = loadSafetensorsSync(f, { device: 'cpu' });
    expectSame(tensors, ts);
    expect(Object.getPrototypeOf(metadata)).toBe(Object.prototype);
    expect(Object.entries(metadata)).toEqual(Object.entries(meta));
    dispose([ts, tensors]);
  });

  test('async save and load, and files without metadata', async () => {
    const ts = sample();
    const f = file();
    await saveSafetensors(f, ts);
    const { tensors, metadata } = await loadSafetensors(f, { device: 'cpu' });
    expectSame(tensors, ts);
    expect(metadata).toEqual({});
    expect(JSON.stringify(parseSafetensorsHeader(fs.readFileSync(f)))).not.toContain('__metadata__');
    // the sync and async writers produce the same bytes
    const f2 = file();
    saveSafetensorsSync(f2, ts);
    expect(fs.readFileSync(f).equals(fs.readFileSync(f2))).toBe(true);
    dispose([ts, tensors]);
  });

  test('bfloat16 is stored as its raw 16-bit values (NaN payloads too)', () => {
    const bits = Uint16Array.from([0x3f80, 0x7f81, 0xffc1, 0x8000, 0x0001, 0x4049]);
    const t = tensor(bits, [6], { dtype: 'bfloat16', device: 'cpu' });
    const f = file();
    saveSafetensorsSync(f, { b: t });
    const buf = fs.readFileSync(f);
    const h = parseSafetensorsHeader(buf);
    expect(h.entries[0]).toMatchObject({ name: 'b', dtype: 'bfloat16', shape: [6], begin: 0, end: 12 });
    const stored = buf.subarray(h.dataStart);
    expect(Array.from(new Uint16Array(stored.buffer.slice(stored.byteOffset, stored.byteOffset + 12)))).toEqual(Array.from(bits));
    t.dispose();
  });

  test('a non-contiguous view is written in row-major order', () => {
    const base = tensor(values('float32', 15), [3, 5], { device: 'cpu' });
    // what transpose(base, 0, 1) makes, built from the view primitive to keep the imports small
    const tr = viewOf(base, [5, 3], [1, 5], 0);
    expect(tr.isContiguous).toBe(false);
    const f = file();
    saveSafetensorsSync(f, { tr });
    const { tensors } = loadSafetensorsSync(f, { device: 'cpu' });
    expect(tensors.tr.shape).toEqual([5, 3]);
    expect(Buffer.from(rawBytes(tensors.tr)).equals(Buffer.from(rawBytes(tr)))).toBe(true);
    // and really transposed: element [1][0] of the view is element [0][1] of the base
    expect(Object.is(tensors.tr.dataSync()[3], base.dataSync()[1])).toBe(true);
    dispose([base, tr, tensors]);
  });

  test('odd tensor names keep their names and the header lists them in file order', () => {
    const ts = { '0': tensor([1], [1], { device: 'cpu' }), ['__proto__']: tensor([2], [1], { device: 'cpu' }), 'ä.b/c': tensor([3], [1], { device: 'cpu' }) };
    const f = file();
    saveSafetensorsSync(f, ts);
    const { tensors } = loadSafetensorsSync(f, { device: 'cpu' });
    expect(Object.keys(tensors).sort()).toEqual(['0', '__proto__', 'ä.b/c'].sort());
    expect(Object.getPrototypeOf(tensors)).toBe(Object.prototype);
    expect(Array.from(tensors['__proto__'].dataSync())).toEqual([2]);
    dispose([Object.values(ts), Object.values(tensors)]);
  });

  test('tensors are laid out as the reference does: by dtype, widest first, then by name', () => {
    const ts = {
      b: tensor([true, false, true], [3], { device: 'cpu' }),
      h: tensor([1, 2, 3], [3], { dtype: 'bfloat16', device: 'cpu' }),
      z: tensor([1], [1], { device: 'cpu' }),
      i: tensor(new Int32Array([1]), [1], { device: 'cpu' }),
      f: tensor([1], [1], { device: 'cpu' }),
      d: tensor([1], [1], { dtype: 'float64', device: 'cpu' }),
    };
    const f = file();
    saveSafetensorsSync(f, ts);
    const h = parseSafetensorsHeader(fs.readFileSync(f));
    expect(h.dataStart % 8).toBe(0);
    expect(h.entries.map((e) => e.name)).toEqual(['d', 'f', 'z', 'i', 'h', 'b']);
    // every tensor starts aligned to its element size
    for (const e of h.entries) expect(e.begin % { float64: 8, float32: 4, int32: 4, bfloat16: 2, bool: 1 }[e.dtype]).toBe(0);
    dispose(Object.values(ts));
  });

  test('loading onto cuda: a round trip with a GPU, a DeviceError (and nothing leaked) without', async () => {
    if (!cudaAvailable()) {
      const f = file();
      const t = tensor([1, 2, 3]);
      await saveSafetensors(f, { t });
      const before = memory().tensors;
      await expect(loadSafetensors(f, { device: 'cuda' })).rejects.toThrow(DeviceError);
      // no more live tensors than before (the garbage collector may free earlier tests' tensors
      // meanwhile, so the count can only be bounded, not matched)
      expect(memory().tensors).toBeLessThanOrEqual(before);
      t.dispose();
      return;
    }
    const ts: Record<string, Tensor> = {};
    for (const dtype of DTYPES) ts[dtype] = tensor(values(dtype, 2 * 3 * 129), [2, 3, 129], { dtype, device: 'cuda' });
    const f = file();
    await saveSafetensors(f, ts);
    const { tensors } = await loadSafetensors(f, { device: 'cuda' });
    for (const t of Object.values(tensors)) expect(t.device).toBe('cuda');
    expectSame(tensors, ts);
    dispose([ts, tensors]);
  });
});

describe('byte layout', () => {
  test('{"a": F32 [2] = [1, 2]} matches the spec byte for byte', () => {
    const json = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}';
    expect(json.length).toBe(54); // padded to 56 so the data starts at 8 + 56 = 64
    const expected = Buffer.concat([
      Buffer.from([56, 0, 0, 0, 0, 0, 0, 0]),
      Buffer.from(json + '  ', 'utf8'),
      Buffer.from([0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40]),
    ]);
    const t = tensor([1, 2], [2], { device: 'cpu' });
    const f = file();
    saveSafetensorsSync(f, { a: t });
    expect(fs.readFileSync(f).toString('hex')).toBe(expected.toString('hex'));
    t.dispose();
  });

  test('metadata goes first; an exactly aligned header gets no padding', () => {
    const t = tensor(new Int32Array([-2]), [], { device: 'cpu' });
    const json = '{"__metadata__":{"k":"vvv"},"s":{"dtype":"I32","shape":[],"data_offsets":[0,4]}}';
    expect(json.length % 8).toBe(0);
    const f = file();
    saveSafetensorsSync(f, { s: t }, { k: 'vvv' });
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    expect(fs.readFileSync(f).toString('hex')).toBe(Buffer.concat([len, Buffer.from(json), Buffer.from([0xfe, 0xff, 0xff, 0xff])]).toString('hex'));
    t.dispose();
  });

  test('an empty dict is a valid file', () => {
    const f = file();
    saveSafetensorsSync(f, {});
    expect(fs.readFileSync(f).toString('latin1')).toBe('\x08\0\0\0\0\0\0\0{}      ');
    expect(loadSafetensorsSync(f)).toEqual({ tensors: {}, metadata: {} });
  });
});

describe('malformed files', () => {
  // A file with the given header (object or raw text) followed by dataLength bytes.
  function craft(header: unknown, dataLength = 0, lengthField?: bigint): string {
    const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(lengthField ?? BigInt(json.length));
    const f = file('bad');
    fs.writeFileSync(f, Buffer.concat([len, json, Buffer.alloc(dataLength, 7)]));
    return f;
  }
  const entry = (dtype: unknown, shape: unknown, offs: unknown) => ({ dtype, shape, data_offsets: offs });

  // each file is rejected by both loaders with a FormatError matching `message`
  async function rejects(f: string, message: RegExp): Promise<void> {
    let err: unknown;
    try {
      loadSafetensorsSync(f, { device: 'cpu' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FormatError);
    expect((err as Error).message).toContain(f);
    expect((err as Error).message).toMatch(message);
    await expect(loadSafetensors(f, { device: 'cpu' })).rejects.toThrow(message);
    await expect(loadSafetensors(f, { device: 'cpu' })).rejects.toBeInstanceOf(FormatError);
  }

  test('shorter than 8 bytes', async () => {
    const f = file('bad');
    fs.writeFileSync(f, Buffer.from([1, 0, 0]));
    await rejects(f, /3 bytes, shorter than the 8-byte header length/);
    fs.writeFileSync(f, Buffer.alloc(0));
    await rejects(f, /0 bytes/);
  });

  test('truncated: the header length says more than the file holds', async () => {
    await rejects(craft({}, 0, 100n), /truncated: the header length says 100 bytes but only 2 follow/);
  });

  test('huge header length', async () => {
    await rejects(craft({}, 0, 2n ** 62n), /header length 4611686018427387904 exceeds the 100000000-byte limit/);
    await rejects(craft({}, 0, 2n ** 64n - 1n), /exceeds/);
  });

  test('empty, garbage or non-object header', async () => {
    await rejects(craft('', 0), /not valid JSON/);
    await rejects(craft('{"a": ', 0), /not valid JSON/);
    await rejects(craft('[1, 2]', 0), /must be a JSON object but is an array/);
    await rejects(craft('null', 0), /must be a JSON object but is null/);
    const f = file('bad');
    fs.writeFileSync(f, Buffer.from([4, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0xff, 0xfe, 0x7d]));
    await rejects(f, /not valid UTF-8/);
  });

  test('entries with missing or mistyped fields', async () => {
    await rejects(craft({ w: 3 }, 0), /tensor "w": expected an object/);
    await rejects(craft({ w: { shape: [1], data_offsets: [0, 4] } }, 4), /tensor "w": "dtype" must be a string but is undefined/);
    await rejects(craft({ w: entry('F32', '1', [0, 4]) }, 4), /tensor "w": "shape" must be an array/);
    await rejects(craft({ w: entry('F32', [1], undefined) }, 4), /tensor "w": "data_offsets" must be \[begin, end\]/);
    await rejects(craft({ w: entry('F32', [1], [0]) }, 4), /"data_offsets" must be \[begin, end\]/);
    await rejects(craft({ w: entry('F32', [1], [0, 4.5]) }, 4), /"data_offsets" must be/);
    await rejects(craft({ w: entry('F32', [1], ['0', 4]) }, 4), /"data_offsets" must be/);
  });

  test('bad or unsupported dtypes name what can be read', async () => {
    await rejects(craft({ w: entry('F8', [1], [0, 1]) }, 1), /tensor "w": unsupported dtype \(not a safetensors dtype\) "F8"; dualroute reads F32, F64, BF16, I32, BOOL/);
    for (const d of ['F16', 'I8', 'U8', 'I64']) {
      await rejects(craft({ w: entry(d, [], [0, 0]) }, 0), new RegExp(`unsupported dtype "${d}"; dualroute reads F32`));
    }
  });

  test('negative or non-integer dims', async () => {
    await rejects(craft({ w: entry('F32', [2, -1], [0, 0]) }, 0), /tensor "w": shape \[2,-1\] has an invalid dimension -1 at 1/);
    await rejects(craft({ w: entry('F32', [1.5], [0, 4]) }, 4), /invalid dimension 1.5/);
    await rejects(craft({ w: entry('F32', [null], [0, 4]) }, 4), /invalid dimension null/);
  });

  test('data_offsets out of range', async () => {
    await rejects(craft({ w: entry('F32', [2], [0, 8]) }, 4), /tensor "w": data_offsets \[0, 8\] out of range: the data section has 4 bytes/);
    await rejects(craft({ w: entry('F32', [0], [4, 0]) }, 4), /data_offsets \[4, 0\] out of range/);
    await rejects(craft({ w: entry('F32', [1], [-4, 0]) }, 4), /"data_offsets" must be/);
    await rejects(craft({ w: entry('F32', [1], [2 ** 60, 2 ** 60 + 4]) }, 4), /out of range/);
  });

  test('size mismatch between shape and offsets', async () => {
    await rejects(craft({ w: entry('F32', [3], [0, 8]) }, 8), /tensor "w": size mismatch: F32 of shape \[3\] needs 12 bytes but data_offsets \[0, 8\] hold 8/);
    // a product beyond 2^53 must not wrap around to something that fits
    await rejects(craft({ w: entry('BOOL', [2 ** 52, 2 ** 52, 0x10000], [0, 0]) }, 0), /size mismatch/);
  });

  test('overlaps, gaps and uncovered bytes', async () => {
    await rejects(craft({ a: entry('F32', [2], [0, 8]), b: entry('F32', [2], [4, 12]) }, 12), /tensor "b": data_offsets \[4, 12\] overlap tensor "a"/);
    await rejects(craft({ a: entry('F32', [1], [0, 4]), b: entry('F32', [1], [0, 4]) }, 4), /overlap/);
    await rejects(craft({ a: entry('F32', [1], [0, 4]), b: entry('F32', [1], [8, 12]) }, 12), /tensor "b": gap of 4 unused bytes after tensor "a"/);
    await rejects(craft({ a: entry('F32', [1], [4, 8]) }, 8), /tensor "a": gap of 4 unused bytes at the start of the data/);
    await rejects(craft({ a: entry('F32', [1], [0, 4]) }, 6), /2 trailing data bytes \(from 4 to 6\) belong to no tensor/);
    await rejects(craft({}, 3), /3 trailing data bytes/);
  });

  test('metadata that is not a string -> string map', async () => {
    await rejects(craft({ __metadata__: { step: 3 } }, 0), /__metadata__ entry "step" must be a string but is number 3/);
    await rejects(craft({ __metadata__: ['x'] }, 0), /__metadata__ must be an object of strings/);
    // null is what the reference writes for "none"
    expect(loadSafetensorsSync(craft({ __metadata__: null }, 0)).metadata).toEqual({});
  });

  test('more dimensions, or larger ones, than dualroute tensors have', async () => {
    await rejects(craft({ w: entry('F32', [1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 4]) }, 4), /tensor "w": 9 dimensions, dualroute tensors have at most 8/);
    await rejects(craft({ w: entry('F32', [0, 2 ** 60], [0, 0]) }, 0), /tensor "w": dimension 1152921504606847000 is larger than dualroute supports/);
  });

  test('a name given twice is refused, even when one of the two entries is valid (the format forbids repeats)', async () => {
    // JSON.parse would keep the last; another reader might keep the first
    const valid = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}';
    await rejects(craft(`{"a":{"dtype":"X","shape":[],"data_offsets":[0,0]},${valid.slice(1)}`, 4), /names "a" twice/);
    await rejects(craft(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}, "a" :{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4), /names "a" twice/);
    // escapes name the same key; keys inside an entry are not top-level names
    await rejects(craft(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"\\u0061":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), /names "a" twice/);
    expect(() => loadSafetensorsSync(craft(valid, 4), { device: 'cpu' })).not.toThrow();
  });

  test('a folder, a FIFO, a link loop and a dangling link are FormatErrors naming the path, and nothing hangs', async () => {
    const folder = path.join(dir, 'a-folder.safetensors');
    fs.mkdirSync(folder);
    await rejects(folder, /not a safetensors file: a folder/);
    const fifo = path.join(dir, 'a-fifo.safetensors');
    require('child_process').execFileSync('mkfifo', [fifo]);
    await rejects(fifo, /not a safetensors file: a FIFO/);
    const loop = path.join(dir, 'loop.safetensors');
    fs.symlinkSync(loop, loop);
    await rejects(loop, /cannot open: a loop of symbolic links/);
    const dangling = path.join(dir, 'dangling.safetensors');
    fs.symlinkSync(path.join(dir, 'nothing-here'), dangling);
    await rejects(dangling, /cannot open: no such file/);
  });

  test('a missing file is a FormatError naming the path', () => {
    const p = path.join(dir, 'nope.safetensors');
    expect(() => loadSafetensorsSync(p)).toThrow(FormatError);
    expect(() => loadSafetensorsSync(p)).toThrow(`${p}: cannot open: no such file`);
  });
});

describe('saving', () => {
  const tempsIn = (d: string) => fs.readdirSync(d).filter((n) => n.includes('.tmp-'));

  // a real tensor whose read fails, so the failure happens after the temp file is open
  function failing(seen: string[][]): Tensor {
    const t = tensor([1, 2, 3], [3], { device: 'cpu' });
    const boom = () => {
      seen.push(tempsIn(dir));
      throw new Error('read failed');
    };
    Object.defineProperty(t, 'dataSync', { value: boom });
    // the async save issues every read before it opens the file: this one fails a little later
    Object.defineProperty(t, 'data', { value: async () => new Promise((_, reject) => setTimeout(() => {
      try {
        boom();
      } catch (e) {
        reject(e);
      }
    }, 30)) });
    return t;
  }

  test.each(['sync', 'async'])('a failed write (%s) leaves the old file intact and no temp file', async (mode) => {
    const f = file('atomic');
    const good = tensor([9, 8, 7], [3], { device: 'cpu' });
    saveSafetensorsSync(f, { good }, { v: '1' });
    const before = fs.readFileSync(f);
    const seen: string[][] = [];
    const bad = failing(seen);
    const ts = { good, zbad: bad };
    if (mode === 'sync') expect(() => saveSafetensorsSync(f, ts)).toThrow('read failed');
    else await expect(saveSafetensors(f, ts)).rejects.toThrow('read failed');
    // the temp file existed while the tensors were being written...
    expect(seen).toHaveLength(1);
    expect(seen[0]).toHaveLength(1);
    expect(seen[0][0].startsWith(`${path.basename(f)}.tmp-${process.pid}-`)).toBe(true);
    // ...and is gone, with the old file untouched
    expect(tempsIn(dir)).toEqual([]);
    expect(fs.readFileSync(f).equals(before)).toBe(true);
    expect(loadSafetensorsSync(f, { device: 'cpu' }).metadata).toEqual({ v: '1' });
    dispose([good, bad]);
  });

  test('temp files of saves killed part-way are removed by the next save of the same target', async () => {
    const f = file('stale');
    const t = tensor([1, 2], [2], { device: 'cpu' });
    const dead = 2 ** 22 + 12345; // above the default pid_max: no such process
    const { threadId } = require('worker_threads');
    const stale = [`${f}.tmp-${dead}-0-0123456789ab`, `${f}.tmp-${process.pid}-${threadId}-ba9876543210`];
    // a live writer's (this process, another thread) and another target's are left alone
    const kept = [`${f}.tmp-${process.pid}-${threadId + 1000}-aaaaaaaaaaaa`, `${f}x.tmp-${dead}-0-0123456789ab`];
    for (const p of [...stale, ...kept]) fs.writeFileSync(p, 'partial');
    saveSafetensorsSync(f, { t });
    for (const p of stale) expect(fs.existsSync(p)).toBe(false);
    for (const p of kept) expect(fs.existsSync(p)).toBe(true);
    fs.writeFileSync(stale[0], 'partial');
    await saveSafetensors(f, { t });
    expect(fs.existsSync(stale[0])).toBe(false);
    for (const p of kept) fs.unlinkSync(p);
    t.dispose();
  });

  test('an async save holds the values as of its call, not of updates made while it writes', async () => {
    const f = file('snapshot');
    const ws = [1, 2, 3].map((v) => tensor(new Float32Array(300000).fill(v), [300000], { device: 'cpu' }));
    const saving = saveSafetensors(f, { a: ws[0], b: ws[1], c: ws[2] });
    for (const w of ws) fill_(w, -1); // a training step landing during the save
    await saving;
    const { tensors } = loadSafetensorsSync(f, { device: 'cpu' });
    expect([tensors.a, tensors.b, tensors.c].map((t) => t.dataSync()[299999])).toEqual([1, 2, 3]);
    dispose([...ws, tensors]);
  });

  test('a successful save replaces the file', async () => {
    const f = file('replace');
    const a = tensor([1], [1], { device: 'cpu' });
    const b = tensor([1, 2], [2], { device: 'cpu' });
    saveSafetensorsSync(f, { a });
    await saveSafetensors(f, { b });
    const { tensors } = loadSafetensorsSync(f, { device: 'cpu' });
    expect(Object.keys(tensors)).toEqual(['b']);
    expect(tempsIn(dir)).toEqual([]);
    dispose([a, b, tensors]);
  });

  test('invalid arguments are ValueErrors and write nothing', async () => {
    const t = tensor([1], [1], { device: 'cpu' });
    const f = file('args');
    expect(() => saveSafetensorsSync(f, { w: [1, 2] as never })).toThrow(ValueError);
    expect(() => saveSafetensorsSync(f, { __metadata__: t })).toThrow(/reserved/);
    expect(() => saveSafetensorsSync(f, { w: t }, { step: 3 as never })).toThrow(/metadata\["step"\] must be a string/);
    expect(() => saveSafetensorsSync(f, { ['a\ud800']: t })).toThrow(/well-formed/);
    await expect(saveSafetensors(f, null as never)).rejects.toThrow(ValueError);
    const gone = tensor([1], [1], { device: 'cpu' });
    gone.dispose();
    expect(() => saveSafetensorsSync(f, { gone })).toThrow(/disposed/);
    expect(fs.existsSync(f)).toBe(false);
    expect(tempsIn(dir)).toEqual([]);
    t.dispose();
  });

  test('a missing folder fails without leaving anything', () => {
    const t = tensor([1], [1], { device: 'cpu' });
    expect(() => saveSafetensorsSync(path.join(dir, 'no', 'such', 'x.safetensors'), { t })).toThrow(/ENOENT/);
    t.dispose();
  });
});
