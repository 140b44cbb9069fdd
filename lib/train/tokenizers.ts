// Tokenizers for training and serving: one small interface with two implementations.
//
//   ByteTokenizer  ids 0..255 are the UTF-8 bytes of the text, 256 <bos>, 257 <eos>, 258 <pad>
//                  (vocabSize 259). Needs no file, no download and no dependency.
//   HFTokenizer    a Hugging Face tokenizer.json (BPE, WordPiece, Unigram or WordLevel model)
//                  through @huggingface/tokenizers (pure JS), with tokenizer_config.json beside
//                  it (or named) for the bos/eos/pad tokens and the chat template.
//
// encode() never adds special tokens on its own, whatever the tokenizer.json's post-processor
// says: addBos/addEos ask for them, so that every caller sees the same rule for both kinds.
// loadTokenizer() rebuilds either kind from 'byte', a path, or a toJSON() result.
import * as fs from 'fs';
import * as nodePath from 'path';
import { Tokenizer as HFCore } from '@huggingface/tokenizers';
import { FormatError, OutOfRangeError, ValueError, describe } from '../errors';

/** Options of Tokenizer.encode. */
export interface EncodeOptions {
  /** Put the tokenizer's bos id first (default false; a ValueError if it has none). */
  addBos?: boolean;
  /** Put the tokenizer's eos id last (default false; a ValueError if it has none). */
  addEos?: boolean;
}

/** Options of Tokenizer.decode. */
export interface DecodeOptions {
  /** Leave out special tokens (bos, eos, pad and the like; default true). */
  skipSpecial?: boolean;
}

/** What dualroute's training, evaluation and serving code needs of a tokenizer. */
export interface Tokenizer {
  /** One more than the largest id the tokenizer can produce (special tokens included). */
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly padId: number | null;
  /** 'byte' or 'hf'. */
  readonly kind: string;
  encode(text: string, options?: EncodeOptions): number[];
  decode(ids: readonly number[], options?: DecodeOptions): string;
  /** Enough to rebuild the tokenizer with loadTokenizer: {kind: 'byte'} or {kind: 'hf', path}. */
  toJSON(): TokenizerSpec;
}

/** A toJSON() result: what loadTokenizer takes to rebuild a tokenizer. */
export type TokenizerSpec = { kind: 'byte' } | { kind: 'hf'; path: string; configPath?: string };

function checkText(op: string, text: unknown): asserts text is string {
  if (typeof text !== 'string') throw new ValueError(`${op}: Expected a string for text but received ${describe(text)}`);
}

function checkOptions<T extends object>(op: string, options: unknown, keys: string[]): T {
  if (options === undefined) return {} as T;
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ValueError(`${op}: Expected an options object but received ${describe(options)}`);
  }
  for (const k of Object.keys(options)) {
    if (!keys.includes(k)) throw new ValueError(`${op}: unknown option '${k}' (known: ${keys.join(', ')})`);
  }
  return options as T;
}

function checkIds(op: string, ids: unknown, vocabSize: number): readonly number[] {
  if (!Array.isArray(ids) && !(ArrayBuffer.isView(ids) && !(ids instanceof DataView))) {
    throw new ValueError(`${op}: Expected an array of token ids but received ${describe(ids)}`);
  }
  const a = ids as unknown as ArrayLike<unknown>;
  for (let i = 0; i < a.length; ++i) {
    const v = a[i];
    if (typeof v !== 'number' || !Number.isInteger(v)) throw new ValueError(`${op}: Expected integer token ids but received ${describe(v)} at index ${i}`);
    if (v < 0 || v >= vocabSize) throw new OutOfRangeError(`${op}: token id ${v} at index ${i} is outside the vocabulary [0, ${vocabSize})`);
  }
  return a as readonly number[];
}

function addSpecials(op: string, ids: number[], options: EncodeOptions, bos: number | null, eos: number | null): number[] {
  if (options.addBos) {
    if (bos === null) throw new ValueError(`${op}: addBos was asked for but the tokenizer has no bos token`);
    ids.unshift(bos);
  }
  if (options.addEos) {
    if (eos === null) throw new ValueError(`${op}: addEos was asked for but the tokenizer has no eos token`);
    ids.push(eos);
  }
  return ids;
}

const ENCODE_KEYS = ['addBos', 'addEos'];
const DECODE_KEYS = ['skipSpecial'];

// ---- bytes ---------------------------------------------------------------------------------------

const BYTE_SPECIALS = ['<bos>', '<eos>', '<pad>'];

/**
 * The byte-level tokenizer: ids 0..255 are the bytes of the text's UTF-8 encoding, 256 is
 * <bos>, 257 <eos> and 258 <pad> (vocabSize 259). decode() turns invalid UTF-8 into U+FFFD.
 */
export class ByteTokenizer implements Tokenizer {
  readonly kind = 'byte';
  readonly vocabSize = 259;
  readonly bosId = 256;
  readonly eosId = 257;
  readonly padId = 258;
  private readonly encoder = new TextEncoder();
  // ignoreBOM: a leading U+FEFF is text like any other and must survive a round trip
  private readonly decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

  /** The UTF-8 bytes of text (lone surrogates become U+FFFD's bytes), with bos/eos if asked. */
  encode(text: string, options?: EncodeOptions): number[] {
    checkText('ByteTokenizer.encode', text);
    const o = checkOptions<EncodeOptions>('ByteTokenizer.encode', options, ENCODE_KEYS);
    return addSpecials('ByteTokenizer.encode', Array.from(this.encoder.encode(text)), o, this.bosId, this.eosId);
  }

  /**
   * The text of ids. Specials are left out (skipSpecial, the default; the bytes on either side
   * then decode as one run) or written as "<bos>", "<eos>", "<pad>".
   */
  decode(ids: readonly number[], options?: DecodeOptions): string {
    const a = checkIds('ByteTokenizer.decode', ids, this.vocabSize);
    const skip = checkOptions<DecodeOptions>('ByteTokenizer.decode', options, DECODE_KEYS).skipSpecial ?? true;
    let out = '';
    let run: number[] = [];
    const flush = () => {
      if (run.length) out += this.decoder.decode(Uint8Array.from(run));
      run = [];
    };
    for (let i = 0; i < a.length; ++i) {
      const id = a[i];
      if (id < 256) run.push(id);
      else if (!skip) {
        flush();
        out += BYTE_SPECIALS[id - 256];
      }
    }
    flush();
    return out;
  }

  toJSON(): TokenizerSpec {
    return { kind: 'byte' };
  }
}

// ---- Hugging Face tokenizer.json -----------------------------------------------------------------

/** The tokenizer.json model types @huggingface/tokenizers runs. */
export const HF_MODEL_TYPES = ['BPE', 'WordPiece', 'Unigram', 'WordLevel'];

// Used only when there is no tokenizer_config.json to say (a key it leaves out is also guessed).
const GUESS = {
  bos: ['<s>', '<bos>', '<|begin_of_text|>', '<|startoftext|>', '<|im_start|>'],
  eos: ['</s>', '<eos>', '<|endoftext|>', '<|end_of_text|>', '<|im_end|>'],
  pad: ['<pad>', '[PAD]', '<|pad|>', '<|padding|>'],
};

/** Options of HFTokenizer.fromFile. */
export interface HFTokenizerOptions {
  /** tokenizer_config.json to read (default: the one beside tokenizer.json, when there is one). */
  configPath?: string;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A FormatError naming the path for a file that cannot be read. */
function readError(op: string, path: string, e: unknown): FormatError {
  const code = (e as NodeJS.ErrnoException)?.code;
  const why: Record<string, string> = {
    ENOENT: 'no such file',
    EACCES: 'permission denied',
    EISDIR: 'a folder, not a file',
    ENOTDIR: 'a part of the path is not a folder',
    ELOOP: 'a loop of symbolic links',
  };
  return new FormatError(`${op}: ${path}: cannot read: ${(code && why[code]) ?? (e as Error)?.message ?? String(e)}`);
}

function readJsonFile(op: string, path: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (e) {
    throw readError(op, path, e);
  }
  try {
    return JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
  } catch (e) {
    throw new FormatError(`${op}: ${path}: not valid JSON (${(e as Error).message})`);
  }
}

/** A token named by tokenizer_config.json: a string, {content: string} (an AddedToken), or null. */
function tokenName(op: string, path: string, key: string, v: unknown): string | null | undefined {
  if (v === undefined || v === null) return v;
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  throw new FormatError(`${op}: ${path}: Expected a string or {content} for ${key} but received ${describe(v)}`);
}

const CONSTRUCT = Symbol('HFTokenizer.construct');

/**
 * A Hugging Face tokenizer (tokenizer.json) run by @huggingface/tokenizers. Build it with
 * HFTokenizer.fromFile. bos/eos/pad come from tokenizer_config.json when it names them, else
 * from common names (<s>, </s>, <|endoftext|>, <pad>, ...) found in the vocabulary, else null.
 */
export class HFTokenizer implements Tokenizer {
  readonly kind = 'hf';
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly padId: number | null;
  /** The token strings of bosId, eosId, padId (null where none). */
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  /** tokenizer_config.json's chat_template (the "default" one of a list), kept for a server; null if none. */
  readonly chatTemplate: string | null;
  /** The tokenizer.json's model type (BPE, WordPiece, Unigram, WordLevel). */
  readonly modelType: string;
  /** Absolute path of the tokenizer.json. */
  readonly path: string;
  /** Absolute path of the tokenizer_config.json read, or null. */
  readonly configPath: string | null;
  private readonly core: HFCore;
  private readonly explicitConfig: boolean;
  private readonly specialIds: Set<number>;

  private constructor(key: symbol, core: HFCore, info: {
    path: string; configPath: string | null; explicitConfig: boolean; modelType: string; chatTemplate: string | null;
    bos: string | null; eos: string | null; pad: string | null; vocabSize: number; specialIds: number[];
  }) {
    // TypeScript's private does not stop JavaScript callers
    if (key !== CONSTRUCT) throw new ValueError('HFTokenizer: build it with HFTokenizer.fromFile(path) (the constructor is internal)');
    this.core = core;
    this.path = info.path;
    this.configPath = info.configPath;
    this.explicitConfig = info.explicitConfig;
    this.modelType = info.modelType;
    this.chatTemplate = info.chatTemplate;
    this.vocabSize = info.vocabSize;
    const id = (t: string | null) => (t === null ? null : core.token_to_id(t) ?? null);
    this.bosId = id(info.bos);
    this.eosId = id(info.eos);
    this.padId = id(info.pad);
    this.bosToken = this.bosId === null ? null : info.bos;
    this.eosToken = this.eosId === null ? null : info.eos;
    this.padToken = this.padId === null ? null : info.pad;
    this.specialIds = new Set(info.specialIds);
    for (const s of [this.bosId, this.eosId, this.padId]) if (s !== null) this.specialIds.add(s);
  }

  /**
   * Loads tokenizer.json at path (or in the folder path), with tokenizer_config.json beside it
   * or at options.configPath. FormatError naming the path for a missing or unreadable file,
   * invalid JSON, or a model @huggingface/tokenizers cannot run.
   */
  static fromFile(path: string, options?: HFTokenizerOptions): HFTokenizer {
    const op = 'HFTokenizer.fromFile';
    if (typeof path !== 'string' || path === '') throw new ValueError(`${op}: Expected a path for path but received ${describe(path)}`);
    const o = checkOptions<HFTokenizerOptions>(op, options, ['configPath']);
    if (o.configPath !== undefined && (typeof o.configPath !== 'string' || o.configPath === '')) {
      throw new ValueError(`${op}: Expected a path for configPath but received ${describe(o.configPath)}`);
    }
    let file = nodePath.resolve(path);
    try {
      if (fs.statSync(file).isDirectory()) file = nodePath.join(file, 'tokenizer.json');
    } catch (e) {
      throw readError(op, path, e);
    }
    const json = readJsonFile(op, file);
    if (!isObject(json)) throw new FormatError(`${op}: ${file}: Expected a JSON object (a tokenizer.json) but received ${describe(json)}`);
    const model = json.model;
    if (!isObject(model)) throw new FormatError(`${op}: ${file}: Expected a "model" object but received ${describe(model)}`);
    if (model.type !== undefined && !HF_MODEL_TYPES.includes(model.type as string)) {
      throw new FormatError(`${op}: ${file}: unsupported tokenizer model ${describe(model.type)}; supported: ${HF_MODEL_TYPES.join(', ')}`);
    }
    if (json.added_tokens !== undefined && json.added_tokens !== null && !Array.isArray(json.added_tokens)) {
      throw new FormatError(`${op}: ${file}: Expected an array for added_tokens but received ${describe(json.added_tokens)}`);
    }

    let configPath: string | null = null;
    if (o.configPath !== undefined) configPath = nodePath.resolve(o.configPath);
    else {
      const beside = nodePath.join(nodePath.dirname(file), 'tokenizer_config.json');
      if (fs.existsSync(beside)) configPath = beside;
    }
    let config: Record<string, unknown> = {};
    if (configPath !== null) {
      const c = readJsonFile(op, configPath);
      if (!isObject(c)) throw new FormatError(`${op}: ${configPath}: Expected a JSON object (a tokenizer_config.json) but received ${describe(c)}`);
      config = c;
    }
    const names: Record<'bos' | 'eos' | 'pad', string | null | undefined> = {
      bos: tokenName(op, configPath ?? '', 'bos_token', config.bos_token),
      eos: tokenName(op, configPath ?? '', 'eos_token', config.eos_token),
      pad: tokenName(op, configPath ?? '', 'pad_token', config.pad_token),
    };
    let chatTemplate: string | null = null;
    const ct = config.chat_template;
    if (typeof ct === 'string') chatTemplate = ct;
    else if (Array.isArray(ct)) {
      const d = ct.find((x) => isObject(x) && x.name === 'default') ?? ct[0];
      if (isObject(d) && typeof d.template === 'string') chatTemplate = d.template;
    }

    // The library wants every top-level part present (null when absent) and the special tokens
    // as plain strings; a WordLevel model's unknown token comes from the config it is given.
    const tj: Record<string, unknown> = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, ...json, added_tokens: json.added_tokens ?? [] };
    const cfg: Record<string, unknown> = { ...config };
    for (const k of ['bos', 'eos', 'pad'] as const) {
      if (names[k] === undefined) delete cfg[`${k}_token`];
      else cfg[`${k}_token`] = names[k];
    }
    const unk = typeof model.unk_token === 'string' ? model.unk_token : tokenName(op, configPath ?? '', 'unk_token', config.unk_token);
    if (unk === undefined || unk === null) delete cfg.unk_token;
    else cfg.unk_token = unk;
    let core: HFCore;
    try {
      core = new HFCore(tj, cfg);
    } catch (e) {
      throw new FormatError(`${op}: ${file}: @huggingface/tokenizers cannot load it: ${(e as Error)?.message ?? String(e)}`);
    }

    let vocabSize = 0;
    for (const id of core.get_vocab(true).values()) if (id + 1 > vocabSize) vocabSize = id + 1;
    const added = core.get_added_tokens_decoder();
    for (const id of added.keys()) if (id + 1 > vocabSize) vocabSize = id + 1;
    const specialIds = [...added.values()].filter((t) => t.special).map((t) => t.id);
    const pick = (k: 'bos' | 'eos' | 'pad'): string | null => {
      const n = names[k];
      if (n !== undefined) return n;
      return GUESS[k].find((t) => core.token_to_id(t) !== undefined) ?? null;
    };
    return new HFTokenizer(CONSTRUCT, core, {
      path: file, configPath, explicitConfig: o.configPath !== undefined, modelType: String(model.type ?? 'inferred'), chatTemplate,
      bos: pick('bos'), eos: pick('eos'), pad: pick('pad'), vocabSize, specialIds,
    });
  }

  /**
   * The ids of text (no special tokens unless addBos/addEos ask). A ValueError if a piece of
   * text is not in the vocabulary and the model has no unknown token.
   */
  encode(text: string, options?: EncodeOptions): number[] {
    const op = 'HFTokenizer.encode';
    checkText(op, text);
    const o = checkOptions<EncodeOptions>(op, options, ENCODE_KEYS);
    const enc = this.core.encode(text, { add_special_tokens: false });
    const ids = enc.ids.slice();
    for (let i = 0; i < ids.length; ++i) {
      if (typeof ids[i] !== 'number') {
        throw new ValueError(`${op}: ${this.path}: the piece ${JSON.stringify(enc.tokens[i])} is not in the vocabulary and the model has no unknown token`);
      }
    }
    return addSpecials(op, ids, o, this.bosId, this.eosId);
  }

  /** The text of ids; special tokens (added tokens marked special, bos, eos, pad) are left out by default. */
  decode(ids: readonly number[], options?: DecodeOptions): string {
    const op = 'HFTokenizer.decode';
    const a = checkIds(op, ids, this.vocabSize);
    const skip = checkOptions<DecodeOptions>(op, options, DECODE_KEYS).skipSpecial ?? true;
    const keep: number[] = [];
    for (let i = 0; i < a.length; ++i) {
      if (this.core.id_to_token(a[i]) === undefined) throw new OutOfRangeError(`${op}: token id ${a[i]} at index ${i} names no token of ${this.path}`);
      if (!(skip && this.specialIds.has(a[i]))) keep.push(a[i]);
    }
    if (keep.length === 0) return ''; // the library refuses an empty list
    return this.core.decode(keep, { skip_special_tokens: skip });
  }

  /** The token string of an id (undefined if none). */
  idToToken(id: number): string | undefined {
    return this.core.id_to_token(id);
  }
  /** The id of a token string (undefined if none). */
  tokenToId(token: string): number | undefined {
    return this.core.token_to_id(token);
  }

  toJSON(): TokenizerSpec {
    return this.explicitConfig && this.configPath !== null ? { kind: 'hf', path: this.path, configPath: this.configPath } : { kind: 'hf', path: this.path };
  }
}

/**
 * A tokenizer from 'byte', a path (a tokenizer.json or a folder holding one), or a toJSON()
 * result ({kind: 'byte'} or {kind: 'hf', path, configPath?}).
 */
export function loadTokenizer(spec: 'byte' | string | TokenizerSpec): Tokenizer {
  const op = 'loadTokenizer';
  if (spec === 'byte') return new ByteTokenizer();
  if (typeof spec === 'string') {
    if (spec === '') throw new ValueError(`${op}: Expected 'byte', a path or a tokenizer spec but received the empty string`);
    return HFTokenizer.fromFile(spec);
  }
  if (!isObject(spec)) throw new ValueError(`${op}: Expected 'byte', a path or a tokenizer spec {kind, ...} but received ${describe(spec)}`);
  const s = spec as Record<string, unknown>;
  if (s.kind === 'byte') {
    const extra = Object.keys(s).filter((k) => k !== 'kind');
    if (extra.length) throw new ValueError(`${op}: unknown key '${extra[0]}' in a byte tokenizer spec`);
    return new ByteTokenizer();
  }
  if (s.kind === 'hf') {
    const extra = Object.keys(s).filter((k) => !['kind', 'path', 'configPath'].includes(k));
    if (extra.length) throw new ValueError(`${op}: unknown key '${extra[0]}' in an hf tokenizer spec (known: kind, path, configPath)`);
    if (typeof s.path !== 'string' || s.path === '') throw new ValueError(`${op}: Expected a path for an hf spec's path but received ${describe(s.path)}`);
    return HFTokenizer.fromFile(s.path, s.configPath === undefined ? {} : { configPath: s.configPath as string });
  }
  throw new ValueError(`${op}: Expected a spec kind 'byte' or 'hf' but received ${describe(s.kind)}`);
}
