// Training data: text corpora, token streams packed into language-model windows, JSONL
// classification and source/target pair sets, and synthetic tasks where routing matters.
//
//   readTextCorpus -> tokenizeCorpus -> splitTrainVal -> LMBatcher      (next-token prediction)
//   readJsonl -> ClassificationDataset (ids, labels) | PairDataset (src, tgt, targets)
//   associativeRecall | longRangeCopy | localPattern                    (synthetic LM batches)
//
// Every batch is a set of dualroute int32 tensors the caller disposes. Targets hold -100 where
// a position is not scored (the models' ignoreIndex). Random draws come from a dualroute
// Generator seeded by the `seed` option (Philox: the same on every device), and every sampler
// has state() (a small JSON object) and restore(state): a restored sampler continues with the
// same batches, bit for bit.
import * as fs from 'fs';
import * as nodePath from 'path';
import { Device } from '../device';
import { DTypeError, FormatError, ShapeError, ValueError, describe } from '../errors';
import { randint, tensor } from '../ops/creation';
import { Generator } from '../random';
import { Tensor } from '../tensor';
import { Tokenizer } from './tokenizers';

/** The target value of positions that are not scored (the models' ignoreIndex). */
export const IGNORE_INDEX = -100;

// ---- small helpers -------------------------------------------------------------------------------

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function checkOptions<T extends object>(op: string, options: unknown, keys: string[]): T {
  if (options === undefined) return {} as T;
  if (!isObject(options)) throw new ValueError(`${op}: Expected an options object but received ${describe(options)}`);
  for (const k of Object.keys(options)) {
    if (!keys.includes(k)) throw new ValueError(`${op}: unknown option '${k}' (known: ${keys.join(', ')})`);
  }
  return options as T;
}

function checkInt(op: string, name: string, v: unknown, min: number, max = 2 ** 31 - 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    const range = max === 2 ** 31 - 1 ? `>= ${min}` : `in [${min}, ${max}]`;
    throw new ValueError(`${op}: Expected an integer ${range} for ${name} but received ${describe(v)}`);
  }
  return v;
}

function checkSeed(op: string, v: unknown): number {
  if (v === undefined) return 0;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new ValueError(`${op}: Expected a non-negative integer for seed but received ${describe(v)}`);
  return v;
}

function checkGeneratorState(op: string, s: unknown): { seed: number; offset: number } {
  if (!isObject(s) || !Number.isSafeInteger(s.seed) || (s.seed as number) < 0 || !Number.isSafeInteger(s.offset) || (s.offset as number) < 0) {
    throw new ValueError(`${op}: Expected a generator state {seed, offset} but received ${describe(s)}`);
  }
  return { seed: s.seed as number, offset: s.offset as number };
}

/** Checks that a saved state is for a sampler like this one: same kind and the same settings. */
function checkState(op: string, state: unknown, expect: Record<string, unknown>): Record<string, unknown> {
  if (!isObject(state)) throw new ValueError(`${op}: Expected a state object from state() but received ${describe(state)}`);
  for (const [k, v] of Object.entries(expect)) {
    if (JSON.stringify(state[k]) !== JSON.stringify(v)) {
      throw new ValueError(`${op}: the state is for a different sampler: Expected ${k} ${JSON.stringify(v)} but received ${JSON.stringify(state[k]) ?? 'undefined'}`);
    }
  }
  return state;
}

// Random integers: randint's 31-bit draws, read back on the CPU. `below(r, m)` maps one to [0, m).
const R = 2147483647;
function drawInts(gen: Generator, n: number): Int32Array {
  if (n === 0) return new Int32Array(0);
  const t = randint(0, R, [n], { generator: gen, device: 'cpu' });
  try {
    return t.dataSync() as Int32Array;
  } finally {
    t.dispose();
  }
}
const below = (r: number, m: number): number => Math.floor((r / R) * m);

/** A permutation of 0..n-1 (Fisher-Yates on n - 1 draws). */
function permutation(gen: Generator, n: number): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; ++i) p[i] = i;
  const r = drawInts(gen, Math.max(0, n - 1));
  for (let i = n - 1; i > 0; --i) {
    const j = below(r[n - 1 - i], i + 1);
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

/** FNV-1a over the values: a cheap fingerprint so that restore() notices a different stream. */
function checksum(a: Int32Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < a.length; ++i) {
    const v = a[i];
    h = Math.imul(h ^ (v & 0xff), 0x01000193);
    h = Math.imul(h ^ ((v >>> 8) & 0xff), 0x01000193);
    h = Math.imul(h ^ ((v >>> 16) & 0xff), 0x01000193);
    h = Math.imul(h ^ (v >>> 24), 0x01000193);
  }
  return h >>> 0;
}

function fileError(op: string, path: string, e: unknown): FormatError {
  const code = (e as NodeJS.ErrnoException)?.code;
  const why: Record<string, string> = {
    ENOENT: 'no such file or folder',
    EACCES: 'permission denied',
    EISDIR: 'a folder, not a file',
    ENOTDIR: 'a part of the path is not a folder',
    ELOOP: 'a loop of symbolic links',
  };
  return new FormatError(`${op}: ${path}: cannot read: ${(code && why[code]) ?? (e as Error)?.message ?? String(e)}`);
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }); // strips a leading BOM

// ---- text corpora --------------------------------------------------------------------------------

/** One document of a text corpus. */
export interface TextDocument {
  path: string;
  text: string;
}

/** Options of readTextCorpus. */
export interface ReadTextCorpusOptions {
  /**
   * In folders, read only files whose names end with one of these (case-insensitive; '.txt' or
   * 'txt'). Default: every file. Files named directly are read whatever their extension.
   */
  extensions?: string[];
  /**
   * At most this many UTF-8 bytes of text in all: the file that crosses the budget is cut at
   * the last whole character that fits, and no later file is read. Default: no limit.
   */
  maxBytes?: number;
  /** Called for each file a folder walk leaves out, with the reason ('binary', 'not UTF-8', 'extension', ...). */
  onSkip?: (path: string, reason: string) => void;
}

/**
 * Reads text files and folders (recursively) into documents, in a deterministic order: the
 * paths in the order given, each folder's entries sorted by name (code units). In folders,
 * names starting with '.' are left out, and so are files that are not UTF-8 text (a NUL byte,
 * an invalid sequence): a file named directly must be text (else a FormatError naming it). A
 * leading byte-order mark is dropped. A file reached twice is read once. A FormatError names a
 * missing or unreadable path.
 */
export function readTextCorpus(paths: string | string[], options?: ReadTextCorpusOptions): TextDocument[] {
  const op = 'readTextCorpus';
  const list = typeof paths === 'string' ? [paths] : paths;
  if (!Array.isArray(list) || list.length === 0) throw new ValueError(`${op}: Expected a path or a non-empty array of paths but received ${describe(paths)}`);
  list.forEach((p, i) => {
    if (typeof p !== 'string' || p === '') throw new ValueError(`${op}: Expected a path at index ${i} but received ${describe(p)}`);
  });
  const o = checkOptions<ReadTextCorpusOptions>(op, options, ['extensions', 'maxBytes', 'onSkip']);
  let exts: string[] | null = null;
  if (o.extensions !== undefined) {
    if (!Array.isArray(o.extensions) || o.extensions.some((e) => typeof e !== 'string' || e === '' || e === '.')) {
      throw new ValueError(`${op}: Expected an array of extensions such as ['.txt'] but received ${describe(o.extensions)}`);
    }
    exts = o.extensions.map((e) => (e.startsWith('.') ? e : `.${e}`).toLowerCase());
  }
  if (o.maxBytes !== undefined && (typeof o.maxBytes !== 'number' || !Number.isSafeInteger(o.maxBytes) || o.maxBytes < 0)) {
    throw new ValueError(`${op}: Expected a non-negative integer for maxBytes but received ${describe(o.maxBytes)}`);
  }
  if (o.onSkip !== undefined && typeof o.onSkip !== 'function') throw new ValueError(`${op}: Expected a function for onSkip but received ${describe(o.onSkip)}`);
  const skip = (p: string, why: string) => o.onSkip?.(p, why);

  const docs: TextDocument[] = [];
  const seenFiles = new Set<string>();
  const seenDirs = new Set<string>();
  let budget = o.maxBytes ?? Infinity;

  // false once the byte budget is spent
  const readFile = (p: string, named: boolean): boolean => {
    if (!named && exts !== null && !exts.some((e) => p.toLowerCase().endsWith(e))) {
      skip(p, 'extension');
      return true;
    }
    let real: string;
    let buf: Buffer;
    try {
      real = fs.realpathSync(p);
      if (seenFiles.has(real)) return true;
      buf = fs.readFileSync(p);
    } catch (e) {
      throw fileError(op, p, e);
    }
    seenFiles.add(real);
    let text: string;
    if (buf.includes(0)) {
      if (named) throw new FormatError(`${op}: ${p}: not a text file (it holds NUL bytes)`);
      skip(p, 'binary');
      return true;
    }
    try {
      text = utf8.decode(buf);
    } catch {
      if (named) throw new FormatError(`${op}: ${p}: not a text file (not valid UTF-8)`);
      skip(p, 'not UTF-8');
      return true;
    }
    const bom = buf.length >= 3 && buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf ? 3 : 0;
    const bytes = buf.length - bom;
    if (bytes > budget) {
      // cut before the character that crosses the budget (never inside a multi-byte sequence)
      let cut = bom + budget;
      while (cut > bom && (buf[cut] & 0xc0) === 0x80) --cut;
      if (cut > bom) docs.push({ path: p, text: utf8.decode(buf.subarray(bom, cut)) });
      budget = 0;
      return false;
    }
    budget -= bytes;
    docs.push({ path: p, text });
    return true;
  };

  const walk = (dir: string): boolean => {
    let real: string;
    let names: string[];
    try {
      real = fs.realpathSync(dir);
      if (seenDirs.has(real)) return true; // a link back up the tree, or a folder named twice
      seenDirs.add(real);
      names = fs.readdirSync(dir);
    } catch (e) {
      throw fileError(op, dir, e);
    }
    names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (const name of names) {
      if (name.startsWith('.')) continue;
      const p = nodePath.join(dir, name);
      let st: fs.Stats;
      try {
        st = fs.statSync(p);
      } catch (e) {
        throw fileError(op, p, e);
      }
      if (st.isDirectory()) {
        if (!walk(p)) return false;
      } else if (st.isFile()) {
        if (!readFile(p, false)) return false;
      } else skip(p, 'not a regular file');
    }
    return true;
  };

  // every named path first: a typo fails before gigabytes are read
  const stats = list.map((p) => {
    try {
      return fs.statSync(p);
    } catch (e) {
      throw fileError(op, p, e);
    }
  });
  for (let i = 0; i < list.length; ++i) {
    const p = list[i];
    const st = stats[i];
    const more = st.isDirectory() ? walk(p) : st.isFile() ? readFile(p, true) : (() => {
      throw new FormatError(`${op}: ${p}: not a file or a folder`);
    })();
    if (!more) break;
  }
  return docs;
}

/** Options of tokenizeCorpus. */
export interface TokenizeCorpusOptions {
  /** Put the tokenizer's eos after every document (default true). */
  eos?: boolean;
  /** Put the tokenizer's bos before every document (default false). */
  bos?: boolean;
}

/**
 * The token stream of documents (TextDocument or plain strings): each document's ids, with
 * eos after each one (and bos before it, if asked), back to back.
 */
export function tokenizeCorpus(docs: ReadonlyArray<TextDocument | string>, tokenizer: Tokenizer, options?: TokenizeCorpusOptions): Int32Array {
  const op = 'tokenizeCorpus';
  if (!Array.isArray(docs)) throw new ValueError(`${op}: Expected an array of documents but received ${describe(docs)}`);
  if (!tokenizer || typeof tokenizer.encode !== 'function') throw new ValueError(`${op}: Expected a Tokenizer but received ${describe(tokenizer)}`);
  const o = checkOptions<TokenizeCorpusOptions>(op, options, ['eos', 'bos']);
  const addEos = o.eos ?? true;
  const addBos = o.bos ?? false;
  if (addEos && tokenizer.eosId === null) throw new ValueError(`${op}: eos between documents was asked for but the tokenizer has no eos token (pass {eos: false})`);
  if (addBos && tokenizer.bosId === null) throw new ValueError(`${op}: bos was asked for but the tokenizer has no bos token`);
  let out = new Int32Array(1024);
  let n = 0;
  docs.forEach((d, i) => {
    const text = typeof d === 'string' ? d : isObject(d) && typeof d.text === 'string' ? d.text : null;
    if (text === null) throw new ValueError(`${op}: Expected a string or {path, text} at index ${i} but received ${describe(d)}`);
    const ids = tokenizer.encode(text, { addBos, addEos });
    if (n + ids.length > out.length) {
      const grown = new Int32Array(Math.max(2 * out.length, n + ids.length));
      grown.set(out.subarray(0, n));
      out = grown;
    }
    out.set(ids, n);
    n += ids.length;
  });
  return out.slice(0, n);
}

/** Options of splitTrainVal. */
export interface SplitOptions {
  /** Require each part to hold at least one window of seqLen + 1 tokens. */
  seqLen?: number;
}

/**
 * Splits a token stream into train (the head) and val (the last round(valFraction * length)
 * tokens); both are views of tokens. valFraction must be in (0, 1) and leave each part at
 * least one token (or one window of seqLen + 1 tokens, given seqLen).
 */
export function splitTrainVal(tokens: Int32Array, valFraction: number, options?: SplitOptions): { train: Int32Array; val: Int32Array } {
  const op = 'splitTrainVal';
  if (!(tokens instanceof Int32Array)) throw new ValueError(`${op}: Expected an Int32Array token stream but received ${describe(tokens)}`);
  if (typeof valFraction !== 'number' || !(valFraction > 0 && valFraction < 1)) {
    throw new ValueError(`${op}: Expected valFraction in (0, 1) but received ${describe(valFraction)}`);
  }
  const o = checkOptions<SplitOptions>(op, options, ['seqLen']);
  const need = o.seqLen === undefined ? 1 : checkInt(op, 'seqLen', o.seqLen, 1) + 1;
  const nVal = Math.round(tokens.length * valFraction);
  const nTrain = tokens.length - nVal;
  if (nVal < need || nTrain < need) {
    throw new ValueError(`${op}: valFraction ${valFraction} of ${tokens.length} tokens leaves ${nTrain} for train and ${nVal} for val; each part needs at least ${need}`);
  }
  return { train: tokens.subarray(0, nTrain), val: tokens.subarray(nTrain) };
}

// ---- language-model windows ----------------------------------------------------------------------

/** A language-model batch: ids [B, S] and the next tokens targets [B, S] (-100: not scored). */
export interface LMBatch {
  ids: Tensor;
  targets: Tensor;
}

/** Options of LMBatcher. */
export interface LMBatcherOptions {
  /** Positions per row, S: a window is S + 1 tokens (ids its first S, targets its last S). */
  seqLen: number;
  batchSize: number;
  /** Seed of the generator that draws the windows (default 0). */
  seed?: number;
  /** The id that fills the last evaluation window past the stream's end (default 0; its targets are -100). */
  padId?: number;
  /** Where the batches go (default: the default device). */
  device?: Device;
}

/** The state of an LMBatcher (JSON). */
export interface LMBatcherState {
  kind: 'LMBatcher';
  length: number;
  checksum: number;
  seqLen: number;
  batchSize: number;
  step: number;
  generator: { seed: number; offset: number };
}

/**
 * Packs a token stream into language-model windows. next() draws batchSize windows of
 * seqLen + 1 tokens at uniformly random starts (any start with a whole window) and returns
 * ids = window[0..S-1] and targets = window[1..S], both int32 [B, S]. evalBatches() walks the
 * stream in order instead: window k starts at token k*S, so every token after the first is a
 * target exactly once; the last window is filled with padId and -100 targets past the end.
 */
export class LMBatcher {
  readonly tokens: Int32Array;
  readonly seqLen: number;
  readonly batchSize: number;
  readonly padId: number;
  readonly device: Device | undefined;
  private readonly gen: Generator;
  private _step = 0;
  private _checksum: number | null = null;

  constructor(tokens: Int32Array, options: LMBatcherOptions) {
    const op = 'LMBatcher';
    if (!(tokens instanceof Int32Array)) throw new ValueError(`${op}: Expected an Int32Array token stream but received ${describe(tokens)}`);
    if (!isObject(options)) throw new ValueError(`${op}: Expected options {seqLen, batchSize, seed?} but received ${describe(options)}`);
    const o = checkOptions<LMBatcherOptions>(op, options, ['seqLen', 'batchSize', 'seed', 'padId', 'device']);
    this.seqLen = checkInt(op, 'seqLen', o.seqLen, 1);
    this.batchSize = checkInt(op, 'batchSize', o.batchSize, 1);
    this.padId = o.padId === undefined ? 0 : checkInt(op, 'padId', o.padId, 0);
    this.device = o.device;
    this.gen = new Generator(checkSeed(op, o.seed));
    if (tokens.length < this.seqLen + 1) {
      throw new ValueError(`${op}: Expected a token stream of at least seqLen + 1 = ${this.seqLen + 1} tokens (one window) but received ${tokens.length}`);
    }
    for (let i = 0; i < tokens.length; ++i) {
      if (tokens[i] < 0) throw new ValueError(`${op}: Expected non-negative token ids but received ${tokens[i]} at index ${i}`);
    }
    this.tokens = tokens;
  }

  /** Batches drawn by next() so far. */
  get step(): number {
    return this._step;
  }

  /** How many window starts next() can draw: length - seqLen. */
  get numStarts(): number {
    return this.tokens.length - this.seqLen;
  }

  /** The starts of the next batch's windows (advances like next(), without building tensors). */
  nextStarts(): number[] {
    const r = drawInts(this.gen, this.batchSize);
    this._step++;
    return Array.from(r, (x) => below(x, this.numStarts));
  }

  /** The next random batch. */
  next(): LMBatch {
    return this.build(this.nextStarts());
  }

  /** Number of windows evalBatches() yields: ceil((length - 1) / seqLen). */
  get numEvalWindows(): number {
    return Math.ceil((this.tokens.length - 1) / this.seqLen);
  }

  /** The stream in order, in batches of at most batchSize windows (see the class). */
  *evalBatches(batchSize: number = this.batchSize): IterableIterator<LMBatch> {
    checkInt('LMBatcher.evalBatches', 'batchSize', batchSize, 1);
    const W = this.numEvalWindows;
    for (let k = 0; k < W; k += batchSize) {
      const starts: number[] = [];
      for (let j = k; j < Math.min(W, k + batchSize); ++j) starts.push(j * this.seqLen);
      yield this.build(starts);
    }
  }

  /** The rows of windows at the given starts (ids past the end are padId, their targets -100). */
  windows(starts: readonly number[]): { ids: Int32Array; targets: Int32Array } {
    const S = this.seqLen;
    const N = this.tokens.length;
    const ids = new Int32Array(starts.length * S);
    const targets = new Int32Array(starts.length * S);
    starts.forEach((s, b) => {
      for (let j = 0; j < S; ++j) {
        ids[b * S + j] = s + j < N ? this.tokens[s + j] : this.padId;
        targets[b * S + j] = s + j + 1 < N ? this.tokens[s + j + 1] : IGNORE_INDEX;
      }
    });
    return { ids, targets };
  }

  private build(starts: number[]): LMBatch {
    const { ids, targets } = this.windows(starts);
    const shape = [starts.length, this.seqLen];
    const opts = this.device ? { device: this.device } : {};
    const t = tensor(ids, shape, opts);
    try {
      return { ids: t, targets: tensor(targets, shape, opts) };
    } catch (e) {
      t.dispose();
      throw e;
    }
  }

  /** Where the random batches stand (JSON): restore() continues from here. */
  state(): LMBatcherState {
    this._checksum ??= checksum(this.tokens);
    return {
      kind: 'LMBatcher', length: this.tokens.length, checksum: this._checksum, seqLen: this.seqLen, batchSize: this.batchSize,
      step: this._step, generator: this.gen.getState(),
    };
  }

  /** Continues from a state() of a batcher over the same stream with the same seqLen and batchSize. */
  restore(state: LMBatcherState): void {
    const op = 'LMBatcher.restore';
    this._checksum ??= checksum(this.tokens);
    const s = checkState(op, state, { kind: 'LMBatcher', length: this.tokens.length, checksum: this._checksum, seqLen: this.seqLen, batchSize: this.batchSize });
    const g = checkGeneratorState(op, s.generator);
    this._step = checkInt(op, 'step', s.step, 0, Number.MAX_SAFE_INTEGER);
    this.gen.setState(g);
  }
}

// ---- JSONL ---------------------------------------------------------------------------------------

/**
 * The objects of a JSON Lines file, one a line (blank lines skipped, \r\n allowed). A
 * FormatError names the path and the line for invalid JSON or a value that is not an object.
 */
export function readJsonl(path: string): Record<string, unknown>[] {
  const op = 'readJsonl';
  if (typeof path !== 'string' || path === '') throw new ValueError(`${op}: Expected a path but received ${describe(path)}`);
  let buf: Buffer;
  try {
    buf = fs.readFileSync(path);
  } catch (e) {
    throw fileError(op, path, e);
  }
  let text: string;
  try {
    text = utf8.decode(buf);
  } catch {
    throw new FormatError(`${op}: ${path}: not valid UTF-8`);
  }
  const out: Record<string, unknown>[] = [];
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new FormatError(`${op}: ${path} line ${i + 1}: invalid JSON (${(e as Error).message})`);
    }
    if (!isObject(v)) throw new FormatError(`${op}: ${path} line ${i + 1}: Expected a JSON object but received ${describe(v)}`);
    out.push(v);
  });
  return out;
}

// ---- shuffled record datasets --------------------------------------------------------------------

/** Epochs of shuffled indices 0..n-1; a batch that crosses an epoch's end continues into the next. */
class EpochOrder {
  private readonly gen: Generator;
  private perm: Int32Array | null = null;
  private epochStart: { seed: number; offset: number };
  epoch = 0;
  pos = 0;

  constructor(readonly n: number, seed: number) {
    this.gen = new Generator(seed);
    this.epochStart = this.gen.getState();
  }

  take(count: number): number[] {
    const out: number[] = [];
    while (out.length < count) {
      if (this.perm === null || this.pos === this.n) {
        if (this.perm !== null) this.epoch++;
        this.epochStart = this.gen.getState();
        this.perm = permutation(this.gen, this.n);
        this.pos = 0;
      }
      out.push(this.perm[this.pos++]);
    }
    return out;
  }

  state(): { epoch: number; pos: number; started: boolean; generator: { seed: number; offset: number } } {
    return { epoch: this.epoch, pos: this.pos, started: this.perm !== null, generator: { ...this.epochStart } };
  }

  restore(op: string, s: unknown): void {
    if (!isObject(s) || typeof s.started !== 'boolean') throw new ValueError(`${op}: Expected an order state {epoch, pos, started, generator} but received ${describe(s)}`);
    const g = checkGeneratorState(op, s.generator);
    const epoch = checkInt(op, 'epoch', s.epoch, 0, Number.MAX_SAFE_INTEGER);
    const pos = checkInt(op, 'pos', s.pos, 0, this.n);
    this.gen.setState(g);
    this.epochStart = g;
    this.perm = s.started ? permutation(this.gen, this.n) : null;
    this.epoch = epoch;
    this.pos = pos;
  }
}

/** Options shared by the record datasets. */
export interface RecordDatasetOptions {
  batchSize: number;
  /** Seed of the shuffle (default 0). */
  seed?: number;
  /** The padding id (default: the tokenizer's padId). */
  padId?: number;
  /** Where the batches go (default: the default device). */
  device?: Device;
}

/** The state of a ClassificationDataset or PairDataset (JSON). */
export interface RecordDatasetState {
  kind: string;
  size: number;
  batchSize: number;
  order: { epoch: number; pos: number; started: boolean; generator: { seed: number; offset: number } };
}

/**
 * Records in shuffled epochs (next(): every batch full, the order reshuffled each epoch from
 * the seed) and in their own order (evalBatches(): the last batch may be smaller).
 */
abstract class RecordDataset<B> {
  readonly batchSize: number;
  readonly device: Device | undefined;
  private readonly order: EpochOrder;

  protected constructor(protected readonly op: string, readonly size: number, o: RecordDatasetOptions) {
    this.batchSize = checkInt(op, 'batchSize', o.batchSize, 1);
    this.device = o.device;
    if (size === 0) throw new ValueError(`${op}: Expected at least one record but received none`);
    this.order = new EpochOrder(size, checkSeed(op, o.seed));
  }

  /** Epochs begun so far, minus one (0 during the first). */
  get epoch(): number {
    return this.order.epoch;
  }

  /** The record indices of the next shuffled batch (advances like next(), without building tensors). */
  nextIndices(): number[] {
    return this.order.take(this.batchSize);
  }

  /** The next shuffled batch. */
  next(): B {
    return this.batch(this.nextIndices());
  }

  /** Every record once, in order, in batches of at most batchSize. */
  *evalBatches(batchSize: number = this.batchSize): IterableIterator<B> {
    checkInt(`${this.op}.evalBatches`, 'batchSize', batchSize, 1);
    for (let k = 0; k < this.size; k += batchSize) {
      const idx: number[] = [];
      for (let j = k; j < Math.min(this.size, k + batchSize); ++j) idx.push(j);
      yield this.batch(idx);
    }
  }

  /** The batch of the given record indices. */
  abstract batch(indices: readonly number[]): B;

  state(): RecordDatasetState {
    return { kind: this.op, size: this.size, batchSize: this.batchSize, order: this.order.state() };
  }

  /** Continues from a state() of a dataset over the same records with the same batchSize. */
  restore(state: RecordDatasetState): void {
    const op = `${this.op}.restore`;
    const s = checkState(op, state, { kind: this.op, size: this.size, batchSize: this.batchSize });
    this.order.restore(op, s.order);
  }

  protected tensors(parts: Array<[Int32Array, number[]]>): Tensor[] {
    const opts = this.device ? { device: this.device } : {};
    const out: Tensor[] = [];
    try {
      for (const [data, shape] of parts) out.push(tensor(data, shape, opts));
    } catch (e) {
      out.forEach((t) => t.dispose());
      throw e;
    }
    return out;
  }
}

function checkRecords(op: string, records: unknown): Record<string, unknown>[] {
  if (!Array.isArray(records)) throw new ValueError(`${op}: Expected an array of records but received ${describe(records)}`);
  records.forEach((r, i) => {
    if (!isObject(r)) throw new ValueError(`${op}: record ${i}: Expected an object but received ${describe(r)}`);
  });
  return records as Record<string, unknown>[];
}

function recordString(op: string, r: Record<string, unknown>, i: number, key: string): string {
  const v = r[key];
  if (typeof v !== 'string') throw new ValueError(`${op}: record ${i}: Expected a string for ${key} but received ${describe(v)}`);
  return v;
}

function resolvePad(op: string, padId: unknown, tokenizer: Tokenizer): number | null {
  if (padId !== undefined) return checkInt(op, 'padId', padId, 0);
  return tokenizer.padId;
}

function checkTokenizer(op: string, tokenizer: unknown): Tokenizer {
  if (!tokenizer || typeof (tokenizer as Tokenizer).encode !== 'function') throw new ValueError(`${op}: Expected a Tokenizer but received ${describe(tokenizer)}`);
  return tokenizer as Tokenizer;
}

/** A classification record: text and its label (a string or a non-negative integer). */
export interface ClassificationRecord {
  text: string;
  label: string | number;
}

/** Options of ClassificationDataset. */
export interface ClassificationDatasetOptions extends RecordDatasetOptions {
  /** Positions per row: longer texts keep their first seqLen ids, shorter ones are padded. */
  seqLen: number;
  /**
   * The label list: class i is labels[i] (pass the training set's `labels` to a validation
   * set). Default: the sorted distinct string labels, or 0..max for integer labels.
   */
  labels?: ReadonlyArray<string | number>;
  /** Where padding goes (default 'right'; 'left' puts every text's last token at position S-1). */
  padSide?: 'right' | 'left';
  /** Put bos first / eos last in every text before truncation (default false). */
  addBos?: boolean;
  addEos?: boolean;
}

/** A classification batch: ids [B, S], labels [B] (class indices), lengths [B] (ids before padding). */
export interface ClassificationBatch {
  ids: Tensor;
  labels: Tensor;
  lengths: Tensor;
  /** The records' indices. */
  indices: number[];
}

/** Records {text, label} tokenized once, in batches of ids [B, seqLen] and labels [B]. */
export class ClassificationDataset extends RecordDataset<ClassificationBatch> {
  readonly seqLen: number;
  /** The label list: class i is labels[i]. */
  readonly labels: ReadonlyArray<string | number>;
  readonly numClasses: number;
  readonly padSide: 'right' | 'left';
  readonly padId: number | null;
  private readonly ids: Int32Array[];
  private readonly classes: Int32Array;

  constructor(records: ReadonlyArray<ClassificationRecord>, tokenizer: Tokenizer, options: ClassificationDatasetOptions) {
    const op = 'ClassificationDataset';
    const recs = checkRecords(op, records);
    if (!isObject(options)) throw new ValueError(`${op}: Expected options {seqLen, batchSize, ...} but received ${describe(options)}`);
    const o = checkOptions<ClassificationDatasetOptions>(op, options, ['batchSize', 'seed', 'padId', 'device', 'seqLen', 'labels', 'padSide', 'addBos', 'addEos']);
    super(op, recs.length, o);
    checkTokenizer(op, tokenizer);
    this.seqLen = checkInt(op, 'seqLen', o.seqLen, 1);
    if (o.padSide !== undefined && o.padSide !== 'right' && o.padSide !== 'left') throw new ValueError(`${op}: Expected 'right' or 'left' for padSide but received ${describe(o.padSide)}`);
    this.padSide = o.padSide ?? 'right';
    this.padId = resolvePad(op, o.padId, tokenizer);

    const raw = recs.map((r, i) => {
      const label = r.label;
      if (typeof label === 'string') return label;
      if (typeof label === 'number' && Number.isInteger(label) && label >= 0) return label;
      throw new ValueError(`${op}: record ${i}: Expected a string or a non-negative integer for label but received ${describe(label)}`);
    });
    if (o.labels !== undefined) {
      if (!Array.isArray(o.labels) || o.labels.length === 0 || o.labels.some((l) => typeof l !== 'string' && typeof l !== 'number') || new Set(o.labels).size !== o.labels.length) {
        throw new ValueError(`${op}: Expected a non-empty list of distinct labels but received ${describe(o.labels)}`);
      }
      this.labels = [...o.labels];
    } else if (raw.every((l) => typeof l === 'string')) {
      this.labels = [...new Set(raw as string[])].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    } else if (raw.every((l) => typeof l === 'number')) {
      this.labels = Array.from({ length: Math.max(...(raw as number[])) + 1 }, (_, i) => i);
    } else {
      const i = raw.findIndex((l) => typeof l !== typeof raw[0]);
      throw new ValueError(`${op}: record ${i}: labels mix strings and integers (record 0's is ${describe(raw[0])}, this one's ${describe(raw[i])})`);
    }
    this.numClasses = this.labels.length;
    const index = new Map<string | number, number>(this.labels.map((l, i) => [l, i]));
    this.classes = Int32Array.from(raw, (l, i) => {
      const c = index.get(l);
      if (c === undefined) throw new ValueError(`${op}: record ${i}: label ${JSON.stringify(l)} is not in the label list`);
      return c;
    });

    const enc = { addBos: o.addBos ?? false, addEos: o.addEos ?? false };
    this.ids = recs.map((r, i) => {
      const ids = tokenizer.encode(recordString(op, r, i, 'text'), enc);
      if (ids.length < this.seqLen && this.padId === null) {
        throw new ValueError(`${op}: record ${i} needs padding but the tokenizer has no pad token (pass padId)`);
      }
      return Int32Array.from(ids.length > this.seqLen ? ids.slice(0, this.seqLen) : ids);
    });
  }

  /** The class index of record i. */
  classOf(i: number): number {
    return this.classes[i];
  }

  batch(indices: readonly number[]): ClassificationBatch {
    const S = this.seqLen;
    const B = indices.length;
    const ids = new Int32Array(B * S).fill(this.padId ?? 0);
    const labels = new Int32Array(B);
    const lengths = new Int32Array(B);
    indices.forEach((r, b) => {
      const x = this.ids[r];
      ids.set(x, b * S + (this.padSide === 'left' ? S - x.length : 0));
      labels[b] = this.classes[r];
      lengths[b] = x.length;
    });
    const [t, l, n] = this.tensors([[ids, [B, S]], [labels, [B]], [lengths, [B]]]);
    return { ids: t, labels: l, lengths: n, indices: [...indices] };
  }
}

/** A sequence-to-sequence record. */
export interface PairRecord {
  source: string;
  target: string;
}

/** Options of PairDataset. */
export interface PairDatasetOptions extends RecordDatasetOptions {
  /** Source positions Se: longer sources keep their first Se ids. */
  sourceLen: number;
  /** Target positions St: <bos> + target and target + <eos> keep their first St. */
  targetLen: number;
  /** Put eos after every source (default false). */
  sourceEos?: boolean;
}

/**
 * A pair batch for DualRouteSeq2Seq: src [B, Se] (padded with pad), tgt [B, St] = <bos> +
 * target (padded), targets [B, St] = target + <eos> (-100 on padding), and srcLengths [B].
 */
export interface PairBatch {
  src: Tensor;
  tgt: Tensor;
  targets: Tensor;
  srcLengths: Tensor;
  indices: number[];
}

/** Records {source, target} tokenized once, in teacher-forcing batches (see PairBatch). */
export class PairDataset extends RecordDataset<PairBatch> {
  readonly sourceLen: number;
  readonly targetLen: number;
  readonly padId: number;
  readonly bosId: number;
  readonly eosId: number;
  private readonly src: Int32Array[];
  private readonly tgt: Int32Array[];

  constructor(records: ReadonlyArray<PairRecord>, tokenizer: Tokenizer, options: PairDatasetOptions) {
    const op = 'PairDataset';
    const recs = checkRecords(op, records);
    if (!isObject(options)) throw new ValueError(`${op}: Expected options {sourceLen, targetLen, batchSize, ...} but received ${describe(options)}`);
    const o = checkOptions<PairDatasetOptions>(op, options, ['batchSize', 'seed', 'padId', 'device', 'sourceLen', 'targetLen', 'sourceEos']);
    super(op, recs.length, o);
    checkTokenizer(op, tokenizer);
    this.sourceLen = checkInt(op, 'sourceLen', o.sourceLen, 1);
    this.targetLen = checkInt(op, 'targetLen', o.targetLen, 1);
    const pad = resolvePad(op, o.padId, tokenizer);
    if (pad === null) throw new ValueError(`${op}: the tokenizer has no pad token (pass padId)`);
    if (tokenizer.bosId === null || tokenizer.eosId === null) throw new ValueError(`${op}: the tokenizer needs bos and eos tokens (bos ${tokenizer.bosId}, eos ${tokenizer.eosId})`);
    this.padId = pad;
    this.bosId = tokenizer.bosId;
    this.eosId = tokenizer.eosId;
    this.src = recs.map((r, i) => Int32Array.from(tokenizer.encode(recordString(op, r, i, 'source'), { addEos: o.sourceEos ?? false }).slice(0, this.sourceLen)));
    this.tgt = recs.map((r, i) => Int32Array.from(tokenizer.encode(recordString(op, r, i, 'target')).slice(0, this.targetLen)));
  }

  batch(indices: readonly number[]): PairBatch {
    const Se = this.sourceLen;
    const St = this.targetLen;
    const B = indices.length;
    const src = new Int32Array(B * Se).fill(this.padId);
    const tgt = new Int32Array(B * St).fill(this.padId);
    const targets = new Int32Array(B * St).fill(IGNORE_INDEX);
    const lengths = new Int32Array(B);
    indices.forEach((r, b) => {
      const s = this.src[r];
      src.set(s, b * Se);
      lengths[b] = s.length;
      const t = this.tgt[r]; // at most St ids
      tgt[b * St] = this.bosId;
      for (let j = 0; j < t.length; ++j) {
        if (j + 1 < St) tgt[b * St + j + 1] = t[j];
        targets[b * St + j] = t[j];
      }
      if (t.length < St) targets[b * St + t.length] = this.eosId;
    });
    const [a, c, d, e] = this.tensors([[src, [B, Se]], [tgt, [B, St]], [targets, [B, St]], [lengths, [B]]]);
    return { src: a, tgt: c, targets: d, srcLengths: e, indices: [...indices] };
  }
}

// ---- synthetic tasks -----------------------------------------------------------------------------

/** The state of a synthetic task (JSON). */
export interface SyntheticTaskState {
  kind: string;
  config: Record<string, number>;
  step: number;
  generator: { seed: number; offset: number };
}

/**
 * A generator of language-model batches for a synthetic task. Rows are independent draws;
 * targets are -100 where the task scores nothing. For a held-out set, make a second task with
 * another seed.
 */
export abstract class SyntheticTask {
  /** The vocabulary the task's ids and targets live in. */
  abstract readonly vocabSize: number;
  /**
   * The expected accuracy over scored positions of a predictor that ignores the context
   * (a fixed or uniformly random answer among the task's answer tokens).
   */
  abstract readonly chance: number;
  readonly seqLen: number;
  readonly device: Device | undefined;
  private readonly gen: Generator;
  private _step = 0;

  protected constructor(readonly name: string, protected readonly config: Record<string, number>, seed: unknown, seqLen: number, device: Device | undefined) {
    if (typeof name !== 'string') throw new ValueError(`SyntheticTask: build a task with associativeRecall, longRangeCopy or localPattern (received a name ${describe(name)})`);
    this.gen = new Generator(checkSeed(name, seed));
    this.seqLen = seqLen;
    this.device = device;
  }

  /** Batches drawn so far. */
  get step(): number {
    return this._step;
  }

  /** Random ints each row draws. */
  protected abstract drawsPerRow(): number;
  /** Fills row ids and targets (both seqLen long; ids start as 0, targets as -100) from draws r. */
  protected abstract fillRow(r: Int32Array, ids: Int32Array, targets: Int32Array): void;

  /** The next batch as arrays (advances like next()). */
  nextArrays(batchSize: number): { ids: Int32Array; targets: Int32Array } {
    checkInt(`${this.name}.next`, 'batchSize', batchSize, 1);
    const S = this.seqLen;
    const k = this.drawsPerRow();
    const r = drawInts(this.gen, batchSize * k);
    this._step++;
    const ids = new Int32Array(batchSize * S);
    const targets = new Int32Array(batchSize * S).fill(IGNORE_INDEX);
    for (let b = 0; b < batchSize; ++b) {
      this.fillRow(r.subarray(b * k, (b + 1) * k), ids.subarray(b * S, (b + 1) * S), targets.subarray(b * S, (b + 1) * S));
    }
    return { ids, targets };
  }

  /** The next batch: ids and targets int32 [batchSize, seqLen]. */
  next(batchSize: number): LMBatch {
    const { ids, targets } = this.nextArrays(batchSize);
    const opts = this.device ? { device: this.device } : {};
    const t = tensor(ids, [batchSize, this.seqLen], opts);
    try {
      return { ids: t, targets: tensor(targets, [batchSize, this.seqLen], opts) };
    } catch (e) {
      t.dispose();
      throw e;
    }
  }

  state(): SyntheticTaskState {
    return { kind: this.name, config: { ...this.config }, step: this._step, generator: this.gen.getState() };
  }

  restore(state: SyntheticTaskState): void {
    const op = `${this.name}.restore`;
    const s = checkState(op, state, { kind: this.name, config: this.config });
    const g = checkGeneratorState(op, s.generator);
    this._step = checkInt(op, 'step', s.step, 0, Number.MAX_SAFE_INTEGER);
    this.gen.setState(g);
  }
}

/** Options of associativeRecall. */
export interface AssociativeRecallOptions {
  /** Vocabulary size V >= 4: 0 pad, 1 the query marker, keys [2, 2 + K), values [2 + K, V), K = floor((V - 2) / 2). */
  vocab: number;
  /** Key-value pairs per row, 1..K (keys distinct within a row). */
  pairs: number;
  /** Positions per row, >= 2 * pairs + 2. */
  seqLen: number;
  seed?: number;
  device?: Device;
}

class AssociativeRecall extends SyntheticTask {
  readonly vocabSize: number;
  readonly chance: number;
  readonly numKeys: number;
  readonly numValues: number;
  readonly pairs: number;

  constructor(o: AssociativeRecallOptions) {
    const op = 'associativeRecall';
    if (!isObject(o)) throw new ValueError(`${op}: Expected options {vocab, pairs, seqLen} but received ${describe(o)}`);
    checkOptions(op, o, ['vocab', 'pairs', 'seqLen', 'seed', 'device']);
    const V = checkInt(op, 'vocab', o.vocab, 4);
    const K = Math.floor((V - 2) / 2);
    const P = checkInt(op, 'pairs', o.pairs, 1, K);
    const S = checkInt(op, 'seqLen', o.seqLen, 1);
    if (S < 2 * P + 2) throw new ValueError(`${op}: Expected seqLen >= 2 * pairs + 2 = ${2 * P + 2} but received ${S}`);
    super(op, { vocab: V, pairs: P, seqLen: S }, o.seed, S, o.device);
    this.vocabSize = V;
    this.numKeys = K;
    this.numValues = V - 2 - K;
    this.pairs = P;
    this.chance = 1 / this.numValues;
  }

  protected drawsPerRow(): number {
    return 2 * this.pairs + 1;
  }

  protected fillRow(r: Int32Array, ids: Int32Array, targets: Int32Array): void {
    const P = this.pairs;
    const K = this.numKeys;
    // distinct keys: a partial Fisher-Yates over 0..K-1, the swaps kept sparse
    const swapped = new Map<number, number>();
    const keys: number[] = [];
    for (let i = 0; i < P; ++i) {
      const j = i + below(r[i], K - i);
      const kj = swapped.get(j) ?? j;
      swapped.set(j, swapped.get(i) ?? i);
      keys.push(2 + kj);
    }
    for (let i = 0; i < P; ++i) {
      ids[2 * i] = keys[i];
      ids[2 * i + 1] = 2 + K + below(r[P + i], this.numValues);
    }
    const q = below(r[2 * P], P);
    ids[2 * P] = 1;
    ids[2 * P + 1] = keys[q];
    targets[2 * P + 1] = ids[2 * q + 1];
  }
}

/**
 * Associative recall: a row is k1 v1 k2 v2 ... kP vP <query> kq, then padding (id 0); the one
 * scored target, at kq's position, is the value paired with kq earlier in the row. Recalling
 * it needs attention to wherever the pair happens to be. Chance accuracy (a context-free
 * guess among the values): 1 / (V - 2 - K); guessing among the row's P values gives ~1/P.
 */
export function associativeRecall(options: AssociativeRecallOptions): SyntheticTask & { readonly numKeys: number; readonly numValues: number; readonly pairs: number } {
  return new AssociativeRecall(options);
}

/** Options of longRangeCopy. */
export interface LongRangeCopyOptions {
  /** Vocabulary size V >= 3: 0 pad, 1 the separator, content tokens [2, V). */
  vocab: number;
  /** Tokens to copy, L >= 1. */
  length: number;
  /** Positions per row, >= 2 * length. */
  seqLen: number;
  seed?: number;
  device?: Device;
}

class LongRangeCopy extends SyntheticTask {
  readonly vocabSize: number;
  readonly chance: number;
  readonly length: number;

  constructor(o: LongRangeCopyOptions) {
    const op = 'longRangeCopy';
    if (!isObject(o)) throw new ValueError(`${op}: Expected options {vocab, length, seqLen} but received ${describe(o)}`);
    checkOptions(op, o, ['vocab', 'length', 'seqLen', 'seed', 'device']);
    const V = checkInt(op, 'vocab', o.vocab, 3);
    const L = checkInt(op, 'length', o.length, 1);
    const S = checkInt(op, 'seqLen', o.seqLen, 1);
    if (S < 2 * L) throw new ValueError(`${op}: Expected seqLen >= 2 * length = ${2 * L} but received ${S}`);
    super(op, { vocab: V, length: L, seqLen: S }, o.seed, S, o.device);
    this.vocabSize = V;
    this.length = L;
    this.chance = 1 / (V - 2);
  }

  protected drawsPerRow(): number {
    return this.length;
  }

  protected fillRow(r: Int32Array, ids: Int32Array, targets: Int32Array): void {
    const L = this.length;
    for (let i = 0; i < L; ++i) {
      const x = 2 + below(r[i], this.vocabSize - 2);
      ids[i] = x;
      if (i < L - 1) ids[L + 1 + i] = x;
      targets[L + i] = x;
    }
    ids[L] = 1;
  }
}

/**
 * Long-range copy: a row is x1..xL <sep> x1..xL (then padding, id 0); only the copied half is
 * scored (the separator's position predicts x1, ...), each target L + 1 positions after its
 * source: it needs attention over that distance. Chance accuracy: 1 / (V - 2).
 */
export function longRangeCopy(options: LongRangeCopyOptions): SyntheticTask & { readonly length: number } {
  return new LongRangeCopy(options);
}

/** Options of localPattern. */
export interface LocalPatternOptions {
  /** Vocabulary size V >= 2: every token is in [0, V). */
  vocab: number;
  /** Positions per row, >= 2. */
  seqLen: number;
  /** Chance, in [0, 1), that a token is drawn at random instead of following the rule (default 0.05). */
  noise?: number;
  seed?: number;
  device?: Device;
}

class LocalPattern extends SyntheticTask {
  readonly vocabSize: number;
  readonly chance: number;
  readonly noise: number;
  /** The best expected accuracy: 1 - noise + noise / V. */
  readonly ceiling: number;

  constructor(o: LocalPatternOptions) {
    const op = 'localPattern';
    if (!isObject(o)) throw new ValueError(`${op}: Expected options {vocab, seqLen, noise?} but received ${describe(o)}`);
    checkOptions(op, o, ['vocab', 'seqLen', 'noise', 'seed', 'device']);
    const V = checkInt(op, 'vocab', o.vocab, 2);
    const S = checkInt(op, 'seqLen', o.seqLen, 2);
    const noise = o.noise ?? 0.05;
    if (typeof noise !== 'number' || !(noise >= 0 && noise < 1)) throw new ValueError(`${op}: Expected noise in [0, 1) but received ${describe(noise)}`);
    super(op, { vocab: V, seqLen: S, noise }, o.seed, S, o.device);
    this.vocabSize = V;
    this.noise = noise;
    this.chance = 1 / V;
    this.ceiling = 1 - noise + noise / V;
  }

  protected drawsPerRow(): number {
    return 2 + 2 * (this.seqLen - 1);
  }

  protected fillRow(r: Int32Array, ids: Int32Array, targets: Int32Array): void {
    const V = this.vocabSize;
    const S = this.seqLen;
    // the row's S + 1 tokens t: ids = t[0..S-1], targets = t[1..S]
    let a = below(r[0], V);
    let b = below(r[1], V);
    ids[0] = a;
    ids[1] = b;
    for (let i = 2; i <= S; ++i) {
      const noisy = r[2 * i - 2] / R < this.noise;
      const c = noisy ? below(r[2 * i - 1], V) : (a + b) % V;
      if (i < S) ids[i] = c;
      targets[i - 1] = c;
      a = b;
      b = c;
    }
  }
}

/**
 * Local pattern: t0, t1 random, then t_i = (t_{i-1} + t_{i-2}) mod V, or with probability
 * noise a random token. Every position but the first is scored (t1 follows no rule): the
 * previous two tokens suffice, so a local path is enough. Chance accuracy: 1 / V; the best
 * possible, `ceiling`, is 1 - noise + noise / V.
 */
export function localPattern(options: LocalPatternOptions): SyntheticTask & { readonly noise: number; readonly ceiling: number } {
  return new LocalPattern(options);
}

// ---- metrics -------------------------------------------------------------------------------------

/**
 * Argmax accuracy of logits [..., C] against int32 targets [...] over the scored positions
 * (targets != -100; the first maximum wins ties). accuracy is NaN when nothing is scored.
 */
export function accuracy(logits: Tensor, targets: Tensor): { correct: number; total: number; accuracy: number } {
  const op = 'accuracy';
  if (!(logits instanceof Tensor)) throw new ValueError(`${op}: Expected a tensor for logits but received ${describe(logits)}`);
  if (!(targets instanceof Tensor)) throw new ValueError(`${op}: Expected a tensor for targets but received ${describe(targets)}`);
  if (targets.dtype !== 'int32') throw new DTypeError(`${op}: Expected int32 targets but received ${describe(targets)}`);
  if (logits.dtype === 'int32' || logits.dtype === 'bool') throw new DTypeError(`${op}: Expected float logits but received ${describe(logits)}`);
  const ls = logits.shape;
  if (ls.length !== targets.ndim + 1 || ls.length < 1 || targets.shape.some((d, i) => d !== ls[i])) {
    throw new ShapeError(`${op}: Expected targets of shape [${ls.slice(0, -1).join(', ')}] (logits' shape without the last axis) but received ${describe(targets)} for logits ${describe(logits)}`);
  }
  const C = ls[ls.length - 1];
  const x = logits.dataSync();
  const y = targets.dataSync();
  let correct = 0;
  let total = 0;
  for (let i = 0; i < y.length; ++i) {
    if (y[i] === IGNORE_INDEX) continue;
    ++total;
    if (C === 0) continue;
    let best = 0;
    let bv = x[i * C];
    for (let c = 1; c < C; ++c) {
      if (x[i * C + c] > bv) {
        bv = x[i * C + c];
        best = c;
      }
    }
    if (best === y[i]) ++correct;
  }
  return { correct, total, accuracy: total === 0 ? NaN : correct / total };
}
