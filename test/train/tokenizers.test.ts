// Tokenizers: the byte tokenizer's round trips and its handling of invalid UTF-8, Hugging Face
// tokenizer.json files the test writes itself (WordLevel and BPE models, special tokens,
// tokenizer_config.json), typed errors naming the path, and loadTokenizer of every spec kind.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FormatError, OutOfRangeError, ValueError } from '../../lib/errors';
import { ByteTokenizer, HFTokenizer, loadTokenizer } from '../../lib/train/tokenizers';
import * as dr from '../../lib';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-tokenizers-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});
let counter = 0;
/** A fresh folder holding the given files (objects written as JSON). */
function folder(files: Record<string, unknown>): string {
  const d = path.join(dir, `t${++counter}`);
  fs.mkdirSync(d);
  for (const [name, content] of Object.entries(files)) {
    fs.writeFileSync(path.join(d, name), typeof content === 'string' ? content : JSON.stringify(content));
  }
  return d;
}

const utf8 = (s: string) => Array.from(new TextEncoder().encode(s));

describe('ByteTokenizer', () => {
  const t = new ByteTokenizer();

  test('ids are the UTF-8 bytes; specials at 256, 257, 258', () => {
    expect(t.vocabSize).toBe(259);
    expect([t.bosId, t.eosId, t.padId]).toEqual([256, 257, 258]);
    expect(t.kind).toBe('byte');
    expect(t.encode('Hi!')).toEqual([72, 105, 33]);
    expect(t.encode('é')).toEqual([0xc3, 0xa9]);
    expect(t.encode('')).toEqual([]);
    expect(t.encode('', { addBos: true, addEos: true })).toEqual([256, 257]);
    expect(t.encode('a', { addBos: true })).toEqual([256, 97]);
    expect(t.encode('a', { addEos: true })).toEqual([97, 257]);
  });

  test.each([
    ['ASCII', 'The quick brown fox, 123 ~!'],
    ['empty', ''],
    ['Latin-1 and combining marks', 'naïve café e\u0301'],
    ['CJK', '漢字かなカナ한국어'],
    ['emoji (4-byte, a ZWJ sequence, flags)', '🙂 👩‍👩‍👧 🇫🇷'],
    ['a leading byte-order mark and control characters', '\ufeffa\u0000b\n\t\r'],
    ['the largest code point', '\u{10ffff}'],
  ])('round trip: %s', (_, s) => {
    const ids = t.encode(s);
    expect(ids).toEqual(utf8(s));
    expect(t.decode(ids)).toBe(s);
    const wrapped = t.encode(s, { addBos: true, addEos: true });
    expect(wrapped[0]).toBe(256);
    expect(wrapped[wrapped.length - 1]).toBe(257);
    expect(t.decode(wrapped)).toBe(s);
    expect(t.decode(wrapped, { skipSpecial: false })).toBe(`<bos>${s}<eos>`);
  });

  test('a lone surrogate encodes as U+FFFD', () => {
    expect(t.decode(t.encode('a\ud800b'))).toBe('a\ufffdb');
  });

  test('invalid UTF-8 decodes to U+FFFD', () => {
    expect(t.decode([0xff])).toBe('\ufffd');
    expect(t.decode([0x61, 0x80, 0x62])).toBe('a\ufffdb'); // a lone continuation byte
    expect(t.decode([0xe6, 0xbc])).toBe('\ufffd'); // a truncated 3-byte sequence
    expect(t.decode([0xc0, 0xaf])).toBe('\ufffd\ufffd'); // an overlong encoding
    expect(t.decode([0xed, 0xa0, 0x80])).toBe('\ufffd\ufffd\ufffd'); // an encoded surrogate
  });

  test('specials split byte runs only when written out', () => {
    const e = utf8('é'); // 2 bytes
    // skipped: the bytes on either side join again
    expect(t.decode([e[0], 256, e[1]])).toBe('é');
    // written: the halves are invalid on their own
    expect(t.decode([e[0], 258, e[1]], { skipSpecial: false })).toBe('\ufffd<pad>\ufffd');
    expect(t.decode([256, 257, 258])).toBe('');
    expect(t.decode([256, 257, 258], { skipSpecial: false })).toBe('<bos><eos><pad>');
    expect(t.decode(Int32Array.from([104, 105]) as unknown as number[])).toBe('hi');
  });

  test('bad arguments are typed errors', () => {
    expect(() => t.decode([259])).toThrow(OutOfRangeError);
    expect(() => t.decode([0, -1])).toThrow(/token id -1 at index 1 is outside the vocabulary \[0, 259\)/);
    expect(() => t.decode([1.5])).toThrow(ValueError);
    expect(() => t.decode('ab' as unknown as number[])).toThrow(ValueError);
    expect(() => t.encode(3 as unknown as string)).toThrow(/ByteTokenizer.encode: Expected a string for text but received number 3/);
    expect(() => t.encode('a', { addBOS: true } as never)).toThrow(/unknown option 'addBOS'/);
  });

  test('toJSON', () => {
    expect(t.toJSON()).toEqual({ kind: 'byte' });
    expect(JSON.parse(JSON.stringify(t))).toEqual({ kind: 'byte' });
  });
});

// A WordLevel model: a dozen words, a whitespace pre-tokenizer, [UNK], and <s> </s> <pad> as
// added special tokens.
const VOCAB: Record<string, number> = {
  '[UNK]': 0, '<s>': 1, '</s>': 2, '<pad>': 3, the: 4, cat: 5, sat: 6, on: 7, mat: 8, '.': 9, a: 10, dog: 11, ran: 12,
};
const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
const wordLevel = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [special(0, '[UNK]'), special(1, '<s>'), special(2, '</s>'), special(3, '<pad>')],
  normalizer: null,
  pre_tokenizer: { type: 'Whitespace' },
  post_processor: null,
  decoder: null,
  model: { type: 'WordLevel', vocab: VOCAB, unk_token: '[UNK]' },
};

// A BPE model with merges, an end-of-word-free vocabulary and an added special token past the
// model's vocabulary (so vocabSize counts it).
const bpe = {
  version: '1.0',
  added_tokens: [special(8, '<|endoftext|>')],
  normalizer: null,
  pre_tokenizer: { type: 'Whitespace' },
  post_processor: null,
  decoder: null,
  model: {
    type: 'BPE', dropout: null, unk_token: '[UNK]', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false,
    byte_fallback: false, vocab: { '[UNK]': 0, l: 1, o: 2, w: 3, e: 4, r: 5, lo: 6, low: 7 }, merges: ['l o', 'lo w'],
  },
};

describe('HFTokenizer', () => {
  test('a WordLevel tokenizer.json: ids as the vocabulary says, decode, special ids', () => {
    const d = folder({ 'tokenizer.json': wordLevel });
    const t = HFTokenizer.fromFile(path.join(d, 'tokenizer.json'));
    expect(t.kind).toBe('hf');
    expect(t.modelType).toBe('WordLevel');
    expect(t.vocabSize).toBe(13);
    // no tokenizer_config.json: the common names are found in the vocabulary
    expect([t.bosId, t.eosId, t.padId]).toEqual([1, 2, 3]);
    expect([t.bosToken, t.eosToken, t.padToken]).toEqual(['<s>', '</s>', '<pad>']);
    expect(t.chatTemplate).toBeNull();
    expect(t.configPath).toBeNull();

    const ids = t.encode('the cat sat on the mat.');
    expect(ids).toEqual(['the', 'cat', 'sat', 'on', 'the', 'mat', '.'].map((w) => VOCAB[w]));
    expect(t.encode('the zebra ran')).toEqual([4, 0, 12]); // unknown word -> [UNK]
    expect(t.encode('a dog', { addBos: true, addEos: true })).toEqual([1, 10, 11, 2]);
    expect(t.encode('')).toEqual([]);
    expect(t.encode('<s> a')).toEqual([1, 10]); // added tokens are matched in text
    // no decoder: tokens joined by spaces, then the usual clean-up (" ." -> ".")
    expect(t.decode(ids)).toBe('the cat sat on the mat.');
    expect(t.decode([1, 10, 11, 2, 3, 3])).toBe('a dog');
    expect(t.decode([1, 10, 11, 2], { skipSpecial: false })).toBe('<s> a dog </s>');
    expect(t.decode([])).toBe('');
    expect(t.decode([1, 2, 3])).toBe('');
    expect(t.idToToken(5)).toBe('cat');
    expect(t.tokenToId('mat')).toBe(8);
    expect(() => t.decode([13])).toThrow(OutOfRangeError);
    expect(t.toJSON()).toEqual({ kind: 'hf', path: path.join(d, 'tokenizer.json') });
  });

  test('a BPE tokenizer.json: merges apply, added tokens count in vocabSize', () => {
    const d = folder({ 'tokenizer.json': bpe });
    const t = HFTokenizer.fromFile(d); // a folder holding tokenizer.json
    expect(t.modelType).toBe('BPE');
    expect(t.vocabSize).toBe(9);
    expect(t.encode('low lower')).toEqual([7, 7, 4, 5]);
    expect(t.encode('lol')).toEqual([6, 1]);
    expect(t.encode('lox')).toEqual([6, 0]);
    expect(t.bosId).toBeNull(); // <|endoftext|> is an eos name, and nothing looks like a bos
    expect(t.eosId).toBe(8);
    expect(t.padId).toBeNull();
    expect(t.encode('low', { addEos: true })).toEqual([7, 8]);
    expect(() => t.encode('low', { addBos: true })).toThrow(/addBos was asked for but the tokenizer has no bos token/);
    expect(t.decode([7, 8])).toBe('low');
  });

  test('tokenizer_config.json beside it names the specials and the chat template', () => {
    const config = {
      bos_token: { content: '</s>', lstrip: false, normalized: false, rstrip: false, single_word: false },
      eos_token: '<s>',
      pad_token: null,
      chat_template: '{% for m in messages %}{{ m.content }}{% endfor %}',
    };
    const d = folder({ 'tokenizer.json': wordLevel, 'tokenizer_config.json': config });
    const t = HFTokenizer.fromFile(d);
    expect([t.bosId, t.eosId, t.padId]).toEqual([2, 1, null]);
    expect(t.chatTemplate).toBe(config.chat_template);
    expect(t.configPath).toBe(path.join(d, 'tokenizer_config.json'));
    expect(t.toJSON()).toEqual({ kind: 'hf', path: path.join(d, 'tokenizer.json') });

    // a config named explicitly wins and is part of the spec; a list of templates gives the default
    const other = folder({ 'cfg.json': { eos_token: '</s>', chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D' }] } });
    const u = HFTokenizer.fromFile(d, { configPath: path.join(other, 'cfg.json') });
    expect(u.eosId).toBe(2);
    expect(u.bosId).toBe(1); // not in that config: guessed
    expect(u.chatTemplate).toBe('D');
    expect(u.toJSON()).toEqual({ kind: 'hf', path: path.join(d, 'tokenizer.json'), configPath: path.join(other, 'cfg.json') });
  });

  test('a missing file is a FormatError naming the path', () => {
    const p = path.join(dir, 'nowhere', 'tokenizer.json');
    expect(() => HFTokenizer.fromFile(p)).toThrow(FormatError);
    expect(() => HFTokenizer.fromFile(p)).toThrow(`${p}: cannot read: no such file`);
    const empty = folder({});
    expect(() => HFTokenizer.fromFile(empty)).toThrow(`${path.join(empty, 'tokenizer.json')}: cannot read: no such file`);
    const d = folder({ 'tokenizer.json': wordLevel });
    const cfg = path.join(d, 'missing_config.json');
    expect(() => HFTokenizer.fromFile(d, { configPath: cfg })).toThrow(`${cfg}: cannot read: no such file`);
  });

  test('bad JSON is a FormatError naming the path', () => {
    const d = folder({ 'tokenizer.json': '{"model": {"type": "BPE",' });
    const p = path.join(d, 'tokenizer.json');
    expect(() => HFTokenizer.fromFile(p)).toThrow(FormatError);
    expect(() => HFTokenizer.fromFile(p)).toThrow(new RegExp(`${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not valid JSON`));
    const c = folder({ 'tokenizer.json': wordLevel, 'tokenizer_config.json': '{bos_token: 1}' });
    expect(() => HFTokenizer.fromFile(c)).toThrow(`${path.join(c, 'tokenizer_config.json')}: not valid JSON`);
    const arr = folder({ 'tokenizer.json': [1, 2] });
    expect(() => HFTokenizer.fromFile(arr)).toThrow(/Expected a JSON object \(a tokenizer.json\) but received an array of length 2/);
    const bad = folder({ 'tokenizer.json': wordLevel, 'tokenizer_config.json': { bos_token: 7 } });
    expect(() => HFTokenizer.fromFile(bad)).toThrow(/Expected a string or \{content\} for bos_token but received number 7/);
  });

  test('an unsupported or broken model is a FormatError naming the path', () => {
    const d = folder({ 'tokenizer.json': { ...wordLevel, model: { type: 'Magic', vocab: {} } } });
    const p = path.join(d, 'tokenizer.json');
    expect(() => HFTokenizer.fromFile(p)).toThrow(FormatError);
    expect(() => HFTokenizer.fromFile(p)).toThrow(`${p}: unsupported tokenizer model the string "Magic"; supported: BPE, WordPiece, Unigram, WordLevel`);
    const none = folder({ 'tokenizer.json': { version: '1.0' } });
    expect(() => HFTokenizer.fromFile(none)).toThrow(/tokenizer.json: Expected a "model" object but received undefined/);
    const broken = folder({ 'tokenizer.json': { ...wordLevel, pre_tokenizer: { type: 'NoSuchPreTokenizer' } } });
    expect(() => HFTokenizer.fromFile(broken)).toThrow(/tokenizer.json: @huggingface\/tokenizers cannot load it: Unknown PreTokenizer type: NoSuchPreTokenizer/);
  });

  test('a word outside the vocabulary with no unknown token is a ValueError', () => {
    const { unk_token: _, ...model } = wordLevel.model;
    const d = folder({ 'tokenizer.json': { ...wordLevel, added_tokens: [], model } });
    const t = HFTokenizer.fromFile(d);
    expect(t.encode('the cat')).toEqual([4, 5]);
    expect(() => t.encode('the gnu')).toThrow(/the piece "gnu" is not in the vocabulary and the model has no unknown token/);
  });
});

describe('loadTokenizer', () => {
  test('every kind of spec', () => {
    expect(loadTokenizer('byte')).toBeInstanceOf(ByteTokenizer);
    expect(loadTokenizer({ kind: 'byte' })).toBeInstanceOf(ByteTokenizer);
    const d = folder({ 'tokenizer.json': wordLevel });
    const p = path.join(d, 'tokenizer.json');
    for (const spec of [p, d, { kind: 'hf' as const, path: p }]) {
      const t = loadTokenizer(spec);
      expect(t).toBeInstanceOf(HFTokenizer);
      expect(t.encode('the dog ran')).toEqual([4, 11, 12]);
    }
    // a toJSON() result round-trips through JSON
    const cfg = path.join(folder({ 'c.json': { eos_token: '<pad>' } }), 'c.json');
    const t = HFTokenizer.fromFile(p, { configPath: cfg });
    const again = loadTokenizer(JSON.parse(JSON.stringify(t.toJSON())));
    expect(again.eosId).toBe(3);
    expect(again.toJSON()).toEqual(t.toJSON());
    expect(loadTokenizer(new ByteTokenizer().toJSON()).vocabSize).toBe(259);
  });

  test('bad specs', () => {
    expect(() => loadTokenizer('')).toThrow(ValueError);
    expect(() => loadTokenizer(3 as never)).toThrow(/loadTokenizer: Expected 'byte', a path or a tokenizer spec \{kind, ...\} but received number 3/);
    expect(() => loadTokenizer({ kind: 'sentencepiece' } as never)).toThrow(/Expected a spec kind 'byte' or 'hf' but received the string "sentencepiece"/);
    expect(() => loadTokenizer({ kind: 'hf' } as never)).toThrow(/Expected a path for an hf spec's path but received undefined/);
    expect(() => loadTokenizer({ kind: 'byte', vocab: 3 } as never)).toThrow(/unknown key 'vocab'/);
    expect(() => loadTokenizer(path.join(dir, 'none.json'))).toThrow(FormatError);
  });

  test('exported from the package root', () => {
    expect(dr.ByteTokenizer).toBe(ByteTokenizer);
    expect(dr.HFTokenizer).toBe(HFTokenizer);
    expect(dr.loadTokenizer).toBe(loadTokenizer);
  });
});
