// safetensors files (https://github.com/huggingface/safetensors), the layout shared with
// PyTorch/numpy/Rust tooling:
//   [8 bytes]  N, the header length, little-endian u64
//   [N bytes]  UTF-8 JSON object: optional "__metadata__": {string: string}, and per tensor
//              "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
//              (offsets relative to the first byte after the header), padded with spaces so
//              that the data starts at a multiple of 8
//   [rest]     every tensor's little-endian, row-major bytes, back to back with no gaps
// dualroute reads and writes F32, F64, BF16, I32 and BOOL. Writes are atomic: the file is
// built under a temporary name in the same folder, fsync'd, then renamed over the target.
import * as fs from 'fs';
import * as nodePath from 'path';
import { randomBytes } from 'crypto';
import { threadId } from 'worker_threads';
import { DType, DTYPE_SIZE } from '../dtype';
import { Device } from '../device';
import { FormatError, ValueError, describe } from '../errors';
import { tensor } from '../ops/creation';
import { checkOptions, resolveDevice } from '../ops/util';
import { Tensor } from '../tensor';

/** Same limit as the reference implementation: a larger header is treated as corruption. */
export const MAX_HEADER_BYTES = 100_000_000;
const MAX_DIMS = 8; // the native core's limit

const TO_ST: Record<DType, string> = { float32: 'F32', float64: 'F64', bfloat16: 'BF16', int32: 'I32', bool: 'BOOL' };
const FROM_ST: Record<string, DType> = { F32: 'float32', F64: 'float64', BF16: 'bfloat16', I32: 'int32', BOOL: 'bool' };
// Valid safetensors dtypes that dualroute has no storage for; named separately so the error can
// tell "not supported here" apart from "not a safetensors dtype at all".
const OTHER_ST = new Set(['F16', 'F8_E4M3', 'F8_E5M2', 'F8_E8M0', 'F6_E2M3', 'F6_E3M2', 'F4', 'I8', 'U8', 'I16', 'U16',
  'U32', 'I64', 'U64', 'C64']);
const READABLE = Object.keys(FROM_ST).join(', ');
const ST_RANK: Record<DType, number> = { float64: 0, float32: 1, int32: 2, bfloat16: 3, bool: 4 };

// The file is little-endian; typed arrays use the host's order.
const HOST_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export interface SafetensorsEntry {
  name: string;
  dtype: DType;
  shape: number[];
  /** Byte range within the data section (after the 8-byte length and the header). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** N, the JSON header's length in bytes (padding included). */
  headerLength: number;
  /** Where the data section starts in the file: 8 + N. */
  dataStart: number;
  metadata: Record<string, string>;
  /** Sorted by begin, i.e. in file order. */
  entries: SafetensorsEntry[];
}

export interface LoadOptions {
  /** Where the tensors go (default: the default device). */
  device?: Device;
}

export interface Loaded {
  tensors: Record<string, Tensor>;
  metadata: Record<string, string>;
}

// ---- header parsing ------------------------------------------------------------------------------

/** Checks the 8-byte length prefix against the file size; returns N. */
function headerLength(prefix: Uint8Array, fileSize: number, src: string): number {
  if (fileSize < 8) throw new FormatError(`${src}: not a safetensors file: ${fileSize} bytes, shorter than the 8-byte header length`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  // compared as bigint: a garbage length such as 2^62 does not survive conversion to number
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new FormatError(`${src}: header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt or not a safetensors file)`);
  }
  if (n > BigInt(fileSize - 8)) {
    throw new FormatError(`${src}: truncated: the header length says ${n} bytes but only ${fileSize - 8} follow the length field`);
  }
  return Number(n);
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
// Not isSafeInteger: a huge but integral value is then reported as out of range / mismatched,
// which says more than "not an integer"; the range checks below keep arithmetic exact.
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;

/** Parses and validates the JSON header against a data section of dataLength bytes. */
function parseHeaderJson(json: Uint8Array, headerLen: number, dataLength: number, src: string): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(json);
  } catch {
    throw new FormatError(`${src}: the header is not valid UTF-8`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    const head = text.length > 60 ? `${text.slice(0, 60)}...` : text;
    throw new FormatError(`${src}: the header is not valid JSON (${(e as Error).message}): ${JSON.stringify(head)}`);
  }
  if (!isObject(parsed)) throw new FormatError(`${src}: the header must be a JSON object but is ${describe(parsed)}`);
  // JSON.parse keeps the last of repeated keys; the format forbids repeats, and another reader
  // keeping the first would see different tensors in the same file
  const repeated = firstRepeatedKey(text);
  if (repeated !== null) throw new FormatError(`${src}: the header names ${JSON.stringify(repeated)} twice (names must be unique)`);

  const metadata: Array<[string, string]> = [];
  const entries: SafetensorsEntry[] = [];
  for (const [name, info] of Object.entries(parsed)) {
    if (name === '__metadata__') {
      if (info === null) continue; // the reference reads null as "no metadata"
      if (!isObject(info)) throw new FormatError(`${src}: __metadata__ must be an object of strings but is ${describe(info)}`);
      for (const [k, v] of Object.entries(info)) {
        if (typeof v !== 'string') throw new FormatError(`${src}: __metadata__ entry ${JSON.stringify(k)} must be a string but is ${describe(v)}`);
        metadata.push([k, v]);
      }
      continue;
    }
    const at = `${src}: tensor ${JSON.stringify(name)}`;
    if (!isObject(info)) throw new FormatError(`${at}: expected an object {dtype, shape, data_offsets} but found ${describe(info)}`);
    const { dtype: st, shape, data_offsets: offs } = info;
    if (typeof st !== 'string') throw new FormatError(`${at}: "dtype" must be a string but is ${describe(st)}`);
    const dtype = FROM_ST[st];
    if (dtype === undefined) {
      const why = OTHER_ST.has(st) ? 'unsupported dtype' : 'unsupported dtype (not a safetensors dtype)';
      throw new FormatError(`${at}: ${why} ${JSON.stringify(st)}; dualroute reads ${READABLE}`);
    }
    if (!Array.isArray(shape)) throw new FormatError(`${at}: "shape" must be an array but is ${describe(shape)}`);
    const bad = shape.findIndex((d) => !isCount(d));
    if (bad >= 0) {
      throw new FormatError(`${at}: shape ${JSON.stringify(shape)} has an invalid dimension ${JSON.stringify(shape[bad])} at ${bad} (dims must be non-negative integers)`);
    }
    if (!Array.isArray(offs) || offs.length !== 2 || !isCount(offs[0]) || !isCount(offs[1])) {
      throw new FormatError(`${at}: "data_offsets" must be [begin, end] non-negative integers but is ${JSON.stringify(offs) ?? describe(offs)}`);
    }
    const [begin, end] = offs as number[];
    if (begin > end || end > dataLength) {
      throw new FormatError(`${at}: data_offsets [${begin}, ${end}] out of range: the data section has ${dataLength} bytes`);
    }
    // bigint: a product of many large dims may pass 2^53 before we can compare it
    const want = shape.reduce((p: bigint, d: number) => p * BigInt(d), BigInt(DTYPE_SIZE[dtype]));
    if (want !== BigInt(end - begin)) {
      throw new FormatError(`${at}: size mismatch: ${st} of shape [${shape.join(', ')}] needs ${want} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`);
    }
    entries.push({ name, dtype, shape: (shape as number[]).map((d) => d + 0 /* -0 -> 0 */), begin, end });
  }

  // Every data byte must belong to exactly one tensor: overlap would alias two tensors and a gap
  // hides bytes that no reader sees. Zero-size tensors sort before others at the same offset.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev = '';
  for (const e of entries) {
    if (e.begin < pos) {
      throw new FormatError(`${src}: tensor ${JSON.stringify(e.name)}: data_offsets [${e.begin}, ${e.end}] overlap tensor ${JSON.stringify(prev)} (which ends at ${pos})`);
    }
    if (e.begin > pos) {
      const after = prev ? `after tensor ${JSON.stringify(prev)}` : 'at the start of the data';
      throw new FormatError(`${src}: tensor ${JSON.stringify(e.name)}: gap of ${e.begin - pos} unused bytes ${after} (data_offsets [${e.begin}, ${e.end}])`);
    }
    pos = e.end;
    prev = e.name;
  }
  if (pos !== dataLength) {
    throw new FormatError(`${src}: ${dataLength - pos} trailing data bytes (from ${pos} to ${dataLength}) belong to no tensor`);
  }
  // fromEntries defines own properties, so a key such as "__proto__" stays plain data
  return { headerLength: headerLen, dataStart: 8 + headerLen, metadata: Object.fromEntries(metadata), entries };
}

/** The first top-level key of a JSON object text that appears twice, or null. */
function firstRepeatedKey(text: string): string | null {
  const seen = new Set<string>();
  let depth = 0;
  for (let i = 0; i < text.length; ++i) {
    const c = text[i];
    if (c === '{' || c === '[') ++depth;
    else if (c === '}' || c === ']') --depth;
    else if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1) {
        // a key when a colon follows
        let k = j + 1;
        while (k < text.length && /\s/.test(text[k])) ++k;
        if (text[k] === ':') {
          const key = JSON.parse(text.slice(i, j + 1)) as string;
          if (seen.has(key)) return key;
          seen.add(key);
        }
      }
      i = j;
    }
  }
  return null;
}

/**
 * Parses and validates the header of a whole safetensors file held in memory; throws
 * FormatError on anything malformed. `source` names the file in messages.
 */
export function parseSafetensorsHeader(buf: Uint8Array, source = '<buffer>'): SafetensorsHeader {
  if (!(buf instanceof Uint8Array)) throw new ValueError(`parseSafetensorsHeader: Expected a Uint8Array (a Buffer) but received ${describe(buf)}`);
  if (typeof source !== 'string') throw new ValueError(`parseSafetensorsHeader: Expected a string for source but received ${describe(source)}`);
  const n = headerLength(buf, buf.length, source);
  return parseHeaderJson(buf.subarray(8, 8 + n), n, buf.length - 8 - n, source);
}

// ---- loading -------------------------------------------------------------------------------------

function checkPath(path: unknown, op: string): string {
  if (typeof path !== 'string' || path === '') throw new ValueError(`${op}: Expected a file path for path but received ${describe(path)}`);
  return path;
}

function swapBytes(b: Uint8Array, size: number): void {
  for (let i = 0; i < b.length; i += size) b.subarray(i, i + size).reverse();
}

function checkLoadable(h: SafetensorsHeader, src: string): void {
  for (const e of h.entries) {
    if (e.shape.length > MAX_DIMS) {
      throw new FormatError(`${src}: tensor ${JSON.stringify(e.name)}: ${e.shape.length} dimensions, dualroute tensors have at most ${MAX_DIMS}`);
    }
    // only reachable with a zero elsewhere in the shape (else the size check fails first)
    const huge = e.shape.find((d) => !Number.isSafeInteger(d));
    if (huge !== undefined) {
      throw new FormatError(`${src}: tensor ${JSON.stringify(e.name)}: dimension ${huge} is larger than dualroute supports (2^53 - 1)`);
    }
  }
}

/** A tensor from its file bytes (bytes is owned: it may be byte-swapped in place). */
function makeTensor(e: SafetensorsEntry, bytes: Uint8Array, device: Device): Tensor {
  const size = DTYPE_SIZE[e.dtype];
  if (!HOST_LE && size > 1) swapBytes(bytes, size);
  const n = bytes.length / size;
  const b = bytes.buffer;
  const o = bytes.byteOffset; // 0: each tensor gets its own buffer, so the views are aligned
  switch (e.dtype) {
    case 'float32':
      return tensor(new Float32Array(b, o, n), e.shape, { dtype: 'float32', device });
    case 'float64':
      return tensor(new Float64Array(b, o, n), e.shape, { dtype: 'float64', device });
    case 'int32':
      return tensor(new Int32Array(b, o, n), e.shape, { dtype: 'int32', device });
    case 'bfloat16':
      // a Uint16Array is taken as raw bf16 bits, no rounding
      return tensor(new Uint16Array(b, o, n), e.shape, { dtype: 'bfloat16', device });
    case 'bool':
      return tensor(bytes, e.shape, { dtype: 'bool', device });
  }
}

function buildTensors(h: SafetensorsHeader, read: (e: SafetensorsEntry) => Uint8Array, device: Device): Record<string, Tensor> {
  const made: Array<[string, Tensor]> = [];
  try {
    for (const e of h.entries) made.push([e.name, makeTensor(e, read(e), device)]);
  } catch (err) {
    for (const [, t] of made) t.dispose();
    throw err;
  }
  return Object.fromEntries(made);
}

function readFully(fd: number, into: Uint8Array, position: number, src: string): void {
  let done = 0;
  while (done < into.length) {
    const got = fs.readSync(fd, into, done, into.length - done, position + done);
    if (got === 0) throw new FormatError(`${src}: the file shrank while being read`);
    done += got;
  }
}

async function readFullyAsync(fh: fs.promises.FileHandle, into: Uint8Array, position: number, src: string): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const { bytesRead } = await fh.read(into, done, into.length - done, position + done);
    if (bytesRead === 0) throw new FormatError(`${src}: the file shrank while being read`);
    done += bytesRead;
  }
}

/** A FormatError naming the path for a file that cannot be opened (missing, a dangling link, a link loop, ...). */
function openError(path: string, e: unknown): FormatError {
  const code = (e as NodeJS.ErrnoException)?.code;
  const why: Record<string, string> = {
    ENOENT: 'no such file (or a symbolic link to nothing)',
    ELOOP: 'a loop of symbolic links',
    EACCES: 'permission denied',
    ENOTDIR: 'a part of the path is not a folder',
    ENAMETOOLONG: 'the name is too long',
  };
  return new FormatError(`${path}: cannot open: ${(code && why[code]) ?? (e as Error)?.message ?? String(e)}`);
}

// Non-blocking, so that a FIFO or a device does not wait forever for a writer; the type check
// below then refuses anything but a regular file.
function openForReading(path: string): number {
  try {
    return fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (e) {
    throw openError(path, e);
  }
}

function regularFileSize(st: fs.Stats, path: string): number {
  if (!st.isFile()) {
    const kind = st.isDirectory() ? 'a folder' : st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : st.isCharacterDevice() || st.isBlockDevice() ? 'a device' : 'not a regular file';
    throw new FormatError(`${path}: not a safetensors file: ${kind}`);
  }
  return st.size;
}

/**
 * Reads a safetensors file into tensors on options.device (default: the default device).
 * Every malformed header or data layout is a FormatError naming the file and the tensor.
 */
export function loadSafetensorsSync(path: string, options: LoadOptions = {}): Loaded {
  options = checkOptions(options, 'loadSafetensorsSync');
  checkPath(path, 'loadSafetensors');
  const device = resolveDevice(options?.device);
  const fd = openForReading(path);
  try {
    const size = regularFileSize(fs.fstatSync(fd), path);
    const prefix = new Uint8Array(8);
    if (size >= 8) readFully(fd, prefix, 0, path);
    const n = headerLength(prefix, size, path);
    const json = new Uint8Array(n);
    readFully(fd, json, 8, path);
    const h = parseHeaderJson(json, n, size - 8 - n, path);
    checkLoadable(h, path);
    const tensors = buildTensors(h, (e) => {
      const bytes = new Uint8Array(e.end - e.begin);
      readFully(fd, bytes, h.dataStart + e.begin, path);
      return bytes;
    }, device);
    return { tensors, metadata: h.metadata };
  } finally {
    fs.closeSync(fd);
  }
}

async function openAsync(path: string): Promise<fs.promises.FileHandle> {
  try {
    return await fs.promises.open(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (e) {
    throw openError(path, e);
  }
}

// The parsed header of an open file (a regular file, checked here).
async function headerOf(fh: fs.promises.FileHandle, path: string): Promise<SafetensorsHeader> {
  const size = regularFileSize(await fh.stat(), path);
  const prefix = new Uint8Array(8);
  if (size >= 8) await readFullyAsync(fh, prefix, 0, path);
  const n = headerLength(prefix, size, path);
  const json = new Uint8Array(n);
  await readFullyAsync(fh, json, 8, path);
  return parseHeaderJson(json, n, size - 8 - n, path);
}

/** The header of a safetensors file (entries and metadata), without reading the tensors' data. */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  checkPath(path, 'readSafetensorsHeader');
  const fh = await openAsync(path);
  try {
    return await headerOf(fh, path);
  } finally {
    await fh.close();
  }
}

/** loadSafetensorsSync without blocking the event loop on file reads. */
export async function loadSafetensors(path: string, options: LoadOptions = {}): Promise<Loaded> {
  options = checkOptions(options, 'loadSafetensors');
  checkPath(path, 'loadSafetensors');
  const device = resolveDevice(options?.device);
  const fh = await openAsync(path);
  try {
    const h = await headerOf(fh, path);
    checkLoadable(h, path);
    // read everything first (async), then build the tensors synchronously so that a failure
    // part-way can dispose what was made
    const chunks = new Map<SafetensorsEntry, Uint8Array>();
    for (const e of h.entries) {
      const bytes = new Uint8Array(e.end - e.begin);
      await readFullyAsync(fh, bytes, h.dataStart + e.begin, path);
      chunks.set(e, bytes);
    }
    return { tensors: buildTensors(h, (e) => chunks.get(e)!, device), metadata: h.metadata };
  } finally {
    await fh.close();
  }
}

// ---- saving --------------------------------------------------------------------------------------

interface Plan {
  header: Uint8Array;
  order: Array<[string, Tensor]>;
}

function plan(op: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>): Plan {
  if (!isObject(tensors)) throw new ValueError(`${op}: Expected an object of name -> Tensor for tensors but received ${describe(tensors)}`);
  const wellFormed = (s: string) => (s as unknown as { isWellFormed(): boolean }).isWellFormed();
  const items = Object.entries(tensors);
  for (const [name, t] of items) {
    if (!(t instanceof Tensor)) throw new ValueError(`${op}: Expected a Tensor for tensors[${JSON.stringify(name)}] but received ${describe(t)}`);
    t.checkLive(`${op}: tensors[${JSON.stringify(name)}]`);
    if (name === '__metadata__') throw new ValueError(`${op}: "__metadata__" is reserved and cannot name a tensor`);
    // a lone surrogate has no UTF-8 encoding, so other readers would choke on the header
    if (!wellFormed(name)) throw new ValueError(`${op}: tensor name ${JSON.stringify(name)} is not well-formed Unicode`);
  }
  if (metadata !== undefined && metadata !== null) {
    if (!isObject(metadata)) throw new ValueError(`${op}: Expected an object of strings for metadata but received ${describe(metadata)}`);
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new ValueError(`${op}: metadata[${JSON.stringify(k)}] must be a string but is ${describe(v)}`);
      if (!wellFormed(k) || !wellFormed(v)) throw new ValueError(`${op}: metadata[${JSON.stringify(k)}] is not well-formed Unicode`);
    }
  }
  // The reference writer's order: by dtype, widest first (F64, F32, I32, BF16, BOOL), then by
  // name in UTF-8 byte order. With the data section 8-aligned every tensor then starts aligned
  // to its element size, which zero-copy readers (mmap + typed views) need, and the same
  // tensors give the same bytes as the reference whatever order the record lists them in.
  const key = new Map(items.map(([name]) => [name, Buffer.from(name, 'utf8')]));
  const order = items.slice().sort((a, b) => ST_RANK[a[1].dtype] - ST_RANK[b[1].dtype] || Buffer.compare(key.get(a[0])!, key.get(b[0])!));
  // Built by hand rather than JSON.stringify of an object, which would move integer-like names
  // ("0", "1") to the front; this way the header lists tensors in file order.
  const parts: string[] = [];
  if (metadata !== undefined && metadata !== null) parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  let pos = 0;
  for (const [name, t] of order) {
    const end = pos + t.byteSize;
    parts.push(`${JSON.stringify(name)}:${JSON.stringify({ dtype: TO_ST[t.dtype], shape: t.shape, data_offsets: [pos, end] })}`);
    pos = end;
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded > MAX_HEADER_BYTES) throw new ValueError(`${op}: the header would take ${padded} bytes, over the ${MAX_HEADER_BYTES}-byte limit readers accept`);
  const header = new Uint8Array(8 + padded);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  header.fill(0x20, 8 + json.length);
  return { header, order };
}

/** The tensor's bytes as stored in the file (host copy, row-major, little-endian). */
function fileBytes(t: Tensor, data: ArrayLike<number> & ArrayBufferView): Uint8Array {
  let view: ArrayBufferView = data;
  if (t.dtype === 'bfloat16') {
    // dataSync widens bf16 to f32 by appending 16 zero bits, so the top half is the original
    // value bit for bit (NaN payloads included, which re-rounding via floatToBf16Bits would not keep)
    const wide = new Uint32Array(data.buffer, data.byteOffset, data.length);
    const bits = new Uint16Array(wide.length);
    for (let i = 0; i < wide.length; ++i) bits[i] = wide[i] >>> 16;
    view = bits;
  }
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  if (!HOST_LE && DTYPE_SIZE[t.dtype] > 1) {
    const copy = bytes.slice();
    swapBytes(copy, DTYPE_SIZE[t.dtype]);
    return copy;
  }
  return bytes;
}

// Temporary files: <target>.tmp-<pid>-<thread>-<12 hex>. A save killed part-way (kill -9, a
// power cut) leaves its file behind; the next save of the same target removes those whose
// writer is gone: another process that no longer runs, or this thread when it is not writing
// that file now. Other threads' files of this process are left alone.
const activeTemps = new Set<string>();
const TEMP_RE = /^(\d+)-(\d+)-[0-9a-f]{12}$/;

function tempName(path: string): string {
  removeStaleTemps(path);
  const name = `${path}.tmp-${process.pid}-${threadId}-${randomBytes(6).toString('hex')}`;
  activeTemps.add(name);
  return name;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function removeStaleTemps(path: string): void {
  const dir = nodePath.dirname(path);
  const prefix = `${nodePath.basename(path)}.tmp-`;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return; // the save itself will report an unusable folder
  }
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const m = TEMP_RE.exec(n.slice(prefix.length));
    if (!m) continue;
    const full = nodePath.join(dir, n);
    const pid = Number(m[1]);
    const ours = pid === process.pid;
    if (ours ? Number(m[2]) !== threadId || activeTemps.has(full) : processAlive(pid)) continue;
    try {
      fs.unlinkSync(full);
    } catch {
      // gone already, or not ours to remove
    }
  }
}

/** Makes the rename itself durable; some platforms cannot open a folder, which is not fatal. */
function syncDir(path: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(nodePath.dirname(path), 'r');
    fs.fsyncSync(fd);
  } catch {
    // best effort
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

function writeFully(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += fs.writeSync(fd, bytes, done, bytes.length - done);
}

async function writeAt(fh: fs.promises.FileHandle, bytes: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < bytes.length) done += (await fh.write(bytes, done, bytes.length - done, position + done)).bytesWritten;
  return position + done;
}

/**
 * Writes tensors (copied to the host, row-major) and optional string metadata to a
 * safetensors file. The file is replaced atomically: on any failure the previous file, if
 * any, is untouched and no temporary file is left behind.
 */
export function saveSafetensorsSync(path: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>): void {
  checkPath(path, 'saveSafetensors');
  const { header, order } = plan('saveSafetensors', tensors, metadata);
  const tmp = tempName(path);
  const fd = fs.openSync(tmp, 'wx');
  let open = true;
  try {
    writeFully(fd, header);
    for (const [, t] of order) writeFully(fd, fileBytes(t, t.dataSync()));
    fs.fsyncSync(fd);
    open = false;
    fs.closeSync(fd);
    fs.renameSync(tmp, path);
  } catch (e) {
    if (open) {
      try { fs.closeSync(fd); } catch { /* already failing */ }
    }
    try { fs.unlinkSync(tmp); } catch { /* already failing */ }
    throw e;
  } finally {
    activeTemps.delete(tmp);
  }
  syncDir(path);
}

/** saveSafetensorsSync, reading device memory and writing the file without blocking the event loop. */
export async function saveSafetensors(path: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>): Promise<void> {
  checkPath(path, 'saveSafetensors');
  const { header, order } = plan('saveSafetensors', tensors, metadata);
  // every read is issued now, before anything is awaited: the file holds the values as of this
  // call, even if training updates the tensors in place while it is written
  const reads = order.map(([, t]) => t.data());
  reads.forEach((r) => r.catch(() => undefined)); // the first failure is the one awaited below
  const tmp = tempName(path);
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(tmp, 'wx');
  } catch (e) {
    activeTemps.delete(tmp);
    throw e;
  }
  let open = true;
  try {
    let pos = await writeAt(fh, header, 0);
    for (let i = 0; i < order.length; ++i) {
      const data = (await reads[i]) as ArrayLike<number> & ArrayBufferView;
      pos = await writeAt(fh, fileBytes(order[i][1], data), pos);
    }
    await fh.sync();
    open = false;
    await fh.close();
    await fs.promises.rename(tmp, path);
  } catch (e) {
    if (open) await fh.close().catch(() => undefined);
    await fs.promises.unlink(tmp).catch(() => undefined);
    throw e;
  } finally {
    activeTemps.delete(tmp);
  }
  syncDir(path);
}
