// Training data: corpus reading order and filters, token streams, LM window packing against
// plain loops (awkward lengths, seqLen 1, the last evaluation window), exact resume of every
// sampler, JSONL errors with line numbers, classification and pair batches, and the synthetic
// tasks' definitions and chance accuracies.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as dr from '../../lib';
import { FormatError, ShapeError, ValueError, DTypeError } from '../../lib/errors';
import { ByteTokenizer, Tokenizer } from '../../lib/train/tokenizers';
import {
  ClassificationDataset, LMBatcher, PairDataset, accuracy, associativeRecall, localPattern, longRangeCopy, readJsonl,
  readTextCorpus, splitTrainVal, tokenizeCorpus,
} from '../../lib/train/data';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dr-data-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});
let counter = 0;
/** A fresh folder with the given files (relative paths; folders made as needed). */
function tree(files: Record<string, string | Uint8Array>): string {
  const d = path.join(dir, `d${++counter}`);
  for (const [name, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(d, name)), { recursive: true });
    fs.writeFileSync(path.join(d, name), content);
  }
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** The arrays of a batch's tensors, disposing them. */
function read<T extends object>(batch: T): { [K in keyof T]: T[K] extends dr.Tensor ? number[] : T[K] } {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(batch)) {
    if (v instanceof dr.Tensor) {
      out[k] = Array.from(v.dataSync() as Int32Array);
      v.dispose();
    } else out[k] = v;
  }
  return out as never;
}
function shapes(batch: object): Record<string, readonly number[]> {
  return Object.fromEntries(Object.entries(batch).filter(([, v]) => v instanceof dr.Tensor).map(([k, v]) => [k, (v as dr.Tensor).shape]));
}

const byte = new ByteTokenizer();
const stream = (n: number) => Int32Array.from({ length: n }, (_, i) => 1000 + i);

describe('readTextCorpus', () => {
  const files = {
    'b.txt': 'bee',
    'a.md': '# a',
    'Upper.TXT': 'upper',
    'sub/c.txt': 'see',
    'sub/z/d.txt': 'dee',
    'sub/0.txt': '\ufeffwith a BOM',
    '.hidden.txt': 'hidden',
    '.git/x.txt': 'git',
    'img.bin': Uint8Array.from([0x89, 0x50, 0x00, 0x01]),
    'latin1.txt': Uint8Array.from([0x63, 0x61, 0x66, 0xe9]), // "café" in Latin-1: not UTF-8
    'e.txt': '',
  };

  test('folders recursively, in sorted order, hidden names left out', () => {
    const d = tree(files);
    const skipped: Array<[string, string]> = [];
    const docs = readTextCorpus(d, { onSkip: (p, why) => skipped.push([path.relative(d, p), why]) });
    expect(docs.map((x) => path.relative(d, x.path))).toEqual(['Upper.TXT', 'a.md', 'b.txt', 'e.txt', 'sub/0.txt', 'sub/c.txt', 'sub/z/d.txt']);
    expect(docs.map((x) => x.text)).toEqual(['upper', '# a', 'bee', '', 'with a BOM', 'see', 'dee']);
    expect(skipped).toEqual([['img.bin', 'binary'], ['latin1.txt', 'not UTF-8']]);
  });

  test('the extension filter (case-insensitive, dot optional) applies to folder walks only', () => {
    const d = tree(files);
    const docs = readTextCorpus(d, { extensions: ['.txt'] });
    expect(docs.map((x) => path.relative(d, x.path))).toEqual(['Upper.TXT', 'b.txt', 'e.txt', 'sub/0.txt', 'sub/c.txt', 'sub/z/d.txt']);
    expect(readTextCorpus(d, { extensions: ['md'] }).map((x) => x.text)).toEqual(['# a']);
    // a file named directly is read whatever its extension; paths keep their order; a file
    // reached twice is read once
    const both = readTextCorpus([path.join(d, 'a.md'), path.join(d, 'sub'), path.join(d, 'sub', 'c.txt')], { extensions: ['.txt'] });
    expect(both.map((x) => x.text)).toEqual(['# a', 'with a BOM', 'see', 'dee']);
  });

  test('maxBytes stops at a whole character', () => {
    const d = tree({ '1.txt': 'abc', '2.txt': 'é€x', '3.txt': 'never' });
    expect(readTextCorpus(d, { maxBytes: 3 }).map((x) => x.text)).toEqual(['abc']);
    expect(readTextCorpus(d, { maxBytes: 4 }).map((x) => x.text)).toEqual(['abc']); // 'é' is 2 bytes
    expect(readTextCorpus(d, { maxBytes: 5 }).map((x) => x.text)).toEqual(['abc', 'é']);
    expect(readTextCorpus(d, { maxBytes: 7 }).map((x) => x.text)).toEqual(['abc', 'é']); // '€' is 3 bytes
    expect(readTextCorpus(d, { maxBytes: 8 }).map((x) => x.text)).toEqual(['abc', 'é€']);
    expect(readTextCorpus(d, { maxBytes: 1000 }).map((x) => x.text)).toEqual(['abc', 'é€x', 'never']);
    expect(readTextCorpus(d, { maxBytes: 0 })).toEqual([]);
  });

  test('a link back up the tree is walked once', () => {
    const d = tree({ 'a.txt': 'a', 'sub/b.txt': 'b' });
    fs.symlinkSync('..', path.join(d, 'sub', 'up'));
    expect(readTextCorpus(d).map((x) => x.text)).toEqual(['a', 'b']);
  });

  test('missing, unreadable and non-text paths are FormatErrors naming the path', () => {
    const missing = path.join(dir, 'no', 'such', 'corpus');
    expect(() => readTextCorpus(missing)).toThrow(FormatError);
    const d = tree(files);
    let skips = 0;
    expect(() => readTextCorpus([d, missing], { onSkip: () => ++skips })).toThrow(`readTextCorpus: ${missing}: cannot read: no such file or folder`);
    expect(skips).toBe(0); // checked before anything is read
    expect(() => readTextCorpus(path.join(d, 'img.bin'))).toThrow(`${path.join(d, 'img.bin')}: not a text file (it holds NUL bytes)`);
    expect(() => readTextCorpus(path.join(d, 'latin1.txt'))).toThrow(`${path.join(d, 'latin1.txt')}: not a text file (not valid UTF-8)`);
    fs.symlinkSync(path.join(d, 'nothing'), path.join(d, 'dangling.txt'));
    expect(() => readTextCorpus(d)).toThrow(`${path.join(d, 'dangling.txt')}: cannot read: no such file or folder`);
    if (process.getuid?.() !== 0) {
      const locked = tree({ 'x.txt': 'x' });
      fs.chmodSync(path.join(locked, 'x.txt'), 0o000);
      expect(() => readTextCorpus(locked)).toThrow(`${path.join(locked, 'x.txt')}: cannot read: permission denied`);
    }
    expect(() => readTextCorpus([])).toThrow(ValueError);
    expect(() => readTextCorpus(d, { extensions: '.txt' as never })).toThrow(/Expected an array of extensions/);
    expect(() => readTextCorpus(d, { maxBytes: -1 })).toThrow(/Expected a non-negative integer for maxBytes/);
  });
});

describe('tokenizeCorpus and splitTrainVal', () => {
  test('eos after every document, bos before if asked', () => {
    expect(Array.from(tokenizeCorpus(['ab', '', 'c'], byte))).toEqual([97, 98, 257, 257, 99, 257]);
    expect(Array.from(tokenizeCorpus([{ path: 'x', text: 'ab' }, 'c'], byte, { bos: true }))).toEqual([256, 97, 98, 257, 256, 99, 257]);
    expect(Array.from(tokenizeCorpus(['ab', 'c'], byte, { eos: false }))).toEqual([97, 98, 99]);
    expect(tokenizeCorpus([], byte)).toEqual(new Int32Array(0));
    const long = 'x'.repeat(5000);
    const t = tokenizeCorpus([long, long], byte);
    expect(t.length).toBe(10002);
    expect(t[5000]).toBe(257);
    const noEos: Tokenizer = { vocabSize: 3, bosId: null, eosId: null, padId: null, kind: 'fake', encode: () => [1], decode: () => '', toJSON: () => ({ kind: 'byte' }) };
    expect(() => tokenizeCorpus(['a'], noEos)).toThrow(/the tokenizer has no eos token \(pass \{eos: false\}\)/);
    expect(Array.from(tokenizeCorpus(['a', 'b'], noEos, { eos: false }))).toEqual([1, 1]);
    expect(() => tokenizeCorpus([3 as never], byte)).toThrow(/Expected a string or \{path, text\} at index 0 but received number 3/);
  });

  test('the tail is validation', () => {
    const s = stream(10);
    const { train, val } = splitTrainVal(s, 0.2);
    expect(Array.from(train)).toEqual(Array.from(s.subarray(0, 8)));
    expect(Array.from(val)).toEqual([1008, 1009]);
    expect(splitTrainVal(s, 0.26).val.length).toBe(3);
    expect(splitTrainVal(s, 0.05 + 1e-9).val.length).toBe(1);
    for (const f of [0, 1, -0.1, 1.5, NaN, '0.1']) expect(() => splitTrainVal(s, f as number)).toThrow(/Expected valFraction in \(0, 1\)/);
    expect(() => splitTrainVal(s, 0.01)).toThrow(/leaves 10 for train and 0 for val; each part needs at least 1/);
    expect(() => splitTrainVal(s, 0.99)).toThrow(/leaves 0 for train and 10 for val/);
    expect(() => splitTrainVal(s, 0.3, { seqLen: 3 })).toThrow(/leaves 7 for train and 3 for val; each part needs at least 4/);
    expect(splitTrainVal(s, 0.4, { seqLen: 3 }).val.length).toBe(4);
    expect(() => splitTrainVal([1, 2] as never, 0.5)).toThrow(/Expected an Int32Array token stream/);
  });
});

describe('LMBatcher', () => {
  test.each([
    [2, 1, 1], // the smallest stream: one window
    [5, 4, 3], // length = seqLen + 1: every window starts at 0
    [7, 3, 5],
    [10, 1, 4], // seqLen 1
    [101, 7, 3],
    [64, 16, 8],
  ])('random windows: N=%i seqLen=%i batch=%i against a plain loop', (N, S, B) => {
    const tokens = stream(N);
    const lm = new LMBatcher(tokens, { seqLen: S, batchSize: B, seed: 3 });
    const twin = new LMBatcher(tokens, { seqLen: S, batchSize: B, seed: 3 });
    const seen = new Set<number>();
    for (let step = 0; step < 6; ++step) {
      const starts = twin.nextStarts();
      const batch = lm.next();
      expect(shapes(batch)).toEqual({ ids: [B, S], targets: [B, S] });
      expect(batch.ids.dtype).toBe('int32');
      const { ids, targets } = read(batch);
      const wantIds: number[] = [];
      const wantTargets: number[] = [];
      for (const s of starts) {
        expect(Number.isInteger(s) && s >= 0 && s + S + 1 <= N).toBe(true);
        seen.add(s);
        for (let j = 0; j < S; ++j) {
          wantIds.push(tokens[s + j]);
          wantTargets.push(tokens[s + j + 1]);
        }
      }
      expect(ids).toEqual(wantIds);
      expect(targets).toEqual(wantTargets);
    }
    expect(lm.step).toBe(6);
    if (N - S <= 4) expect(seen.size).toBe(N - S); // few starts: all of them drawn
  });

  test('starts are spread over the whole stream', () => {
    const lm = new LMBatcher(stream(13), { seqLen: 3, batchSize: 50, seed: 1 });
    const counts = new Array(10).fill(0);
    for (let i = 0; i < 20; ++i) for (const s of lm.nextStarts()) counts[s]++;
    // 1000 draws over 10 starts: each near 100
    for (const c of counts) expect(c).toBeGreaterThan(60);
  });

  test('a stream shorter than a window is a clear error', () => {
    expect(() => new LMBatcher(stream(4), { seqLen: 4, batchSize: 1 })).toThrow(ValueError);
    expect(() => new LMBatcher(stream(4), { seqLen: 4, batchSize: 1 })).toThrow('LMBatcher: Expected a token stream of at least seqLen + 1 = 5 tokens (one window) but received 4');
    expect(() => new LMBatcher(new Int32Array(0), { seqLen: 1, batchSize: 1 })).toThrow(/at least seqLen \+ 1 = 2 tokens/);
    expect(() => new LMBatcher(stream(9), { seqLen: 0, batchSize: 1 })).toThrow(/Expected an integer >= 1 for seqLen but received number 0/);
    expect(() => new LMBatcher(stream(9), { seqLen: 2, batchSize: 1.5 })).toThrow(/for batchSize/);
    expect(() => new LMBatcher(Int32Array.from([1, -2, 3]), { seqLen: 1, batchSize: 1 })).toThrow(/non-negative token ids but received -2 at index 1/);
    expect(() => new LMBatcher([1, 2, 3] as never, { seqLen: 1, batchSize: 1 })).toThrow(/Expected an Int32Array token stream/);
    expect(() => new LMBatcher(stream(9), { seqLen: 2, batchSize: 1, shuffle: true } as never)).toThrow(/unknown option 'shuffle'/);
  });

  test.each([
    [2, 1, 1],
    [9, 4, 2], // (N - 1) / S whole: no padding
    [10, 4, 2], // one token left over: a window of one target
    [12, 4, 5], // all windows in one smaller batch
    [7, 1, 4], // seqLen 1
    [5, 4, 3],
    [23, 5, 2],
  ])('evaluation windows cover the stream once: N=%i seqLen=%i batch=%i', (N, S, B) => {
    const tokens = stream(N);
    const lm = new LMBatcher(tokens, { seqLen: S, batchSize: B, padId: 7 });
    const W = Math.ceil((N - 1) / S);
    expect(lm.numEvalWindows).toBe(W);
    const scored: number[] = [];
    let rows = 0;
    const batches = [...lm.evalBatches()];
    expect(batches.length).toBe(Math.ceil(W / B));
    for (const batch of batches) {
      const rowsHere = batch.ids.shape[0];
      expect(rowsHere).toBe(Math.min(B, W - rows));
      expect(batch.targets.shape).toEqual([rowsHere, S]);
      const { ids, targets } = read(batch);
      for (let r = 0; r < rowsHere; ++r, ++rows) {
        for (let j = 0; j < S; ++j) {
          const at = rows * S + j; // the id's position in the stream
          expect(ids[r * S + j]).toBe(at < N ? tokens[at] : 7);
          expect(targets[r * S + j]).toBe(at + 1 < N ? tokens[at + 1] : -100);
          if (targets[r * S + j] !== -100) scored.push(targets[r * S + j]);
        }
      }
    }
    expect(rows).toBe(W);
    // every token but the first is a target exactly once, in order
    expect(scored).toEqual(Array.from(tokens.subarray(1)));
    // evaluation does not move the random stream
    expect(lm.step).toBe(0);
    expect([...lm.evalBatches(1000)].map((b) => read(b).ids.length)).toEqual([W * S]);
  });

  test('resume: a restored batcher continues bit for bit', () => {
    const tokens = Int32Array.from({ length: 997 }, (_, i) => (i * 7919) % 251);
    const a = new LMBatcher(tokens, { seqLen: 9, batchSize: 4, seed: 42 });
    for (let i = 0; i < 5; ++i) read(a.next());
    const saved = JSON.parse(JSON.stringify(a.state()));
    expect(saved.step).toBe(5);
    const after = [0, 1, 2].map(() => read(a.next()));
    const b = new LMBatcher(tokens, { seqLen: 9, batchSize: 4, seed: 42 });
    read(b.next()); // wherever b stood, restore moves it
    b.restore(saved);
    expect([0, 1, 2].map(() => read(b.next()))).toEqual(after);
    expect(b.step).toBe(8);
    // a different seed draws differently; the same seed the same
    const c = new LMBatcher(tokens, { seqLen: 9, batchSize: 4, seed: 43 });
    const d = new LMBatcher(tokens, { seqLen: 9, batchSize: 4, seed: 42 });
    expect(c.nextStarts()).not.toEqual(d.nextStarts());
  });

  test('restore refuses a state of another batcher', () => {
    const a = new LMBatcher(stream(50), { seqLen: 5, batchSize: 2 });
    const s = a.state();
    expect(() => new LMBatcher(stream(50), { seqLen: 6, batchSize: 2 }).restore(s)).toThrow(/the state is for a different sampler: Expected seqLen 6 but received 5/);
    expect(() => new LMBatcher(stream(51), { seqLen: 5, batchSize: 2 }).restore(s)).toThrow(/Expected length 51 but received 50/);
    const other = stream(50);
    other[10] = 0;
    expect(() => new LMBatcher(other, { seqLen: 5, batchSize: 2 }).restore(s)).toThrow(/Expected checksum/);
    expect(() => a.restore({ ...s, generator: { seed: -1, offset: 0 } })).toThrow(/Expected a generator state/);
    expect(() => a.restore(null as never)).toThrow(/Expected a state object/);
  });
});

describe('readJsonl', () => {
  const write = (text: string) => {
    const p = path.join(tree({}), 'data.jsonl');
    fs.writeFileSync(p, text);
    return p;
  };

  test('one object a line, blank lines and CRLF allowed', () => {
    const p = write('{"text": "a", "label": 1}\r\n\n   \n{"text": "b"}\n');
    expect(readJsonl(p)).toEqual([{ text: 'a', label: 1 }, { text: 'b' }]);
    expect(readJsonl(write(''))).toEqual([]);
    expect(readJsonl(write('\ufeff{"a": 1}'))).toEqual([{ a: 1 }]);
  });

  test('errors name the path and the line', () => {
    const bad = write('{"a": 1}\n\n{"a": \n');
    expect(() => readJsonl(bad)).toThrow(FormatError);
    expect(() => readJsonl(bad)).toThrow(`readJsonl: ${bad} line 3: invalid JSON`);
    const arr = write('{"a": 1}\n[1, 2]\n');
    expect(() => readJsonl(arr)).toThrow(`readJsonl: ${arr} line 2: Expected a JSON object but received an array of length 2`);
    const str = write('"text"');
    expect(() => readJsonl(str)).toThrow(`readJsonl: ${str} line 1: Expected a JSON object but received the string "text"`);
    const nul = write('{"a": 1}\nnull');
    expect(() => readJsonl(nul)).toThrow(`line 2: Expected a JSON object but received null`);
    const missing = path.join(dir, 'missing.jsonl');
    expect(() => readJsonl(missing)).toThrow(`readJsonl: ${missing}: cannot read: no such file or folder`);
    const latin = write('');
    fs.writeFileSync(latin, Uint8Array.from([0x7b, 0xe9, 0x7d]));
    expect(() => readJsonl(latin)).toThrow(`${latin}: not valid UTF-8`);
  });
});

describe('ClassificationDataset', () => {
  const records = [
    { text: 'good', label: 'pos' },
    { text: 'bad!', label: 'neg' },
    { text: 'so-so, really', label: 'neutral' },
    { text: '', label: 'neg' },
    { text: 'fine', label: 'pos' },
    { text: 'awful', label: 'neg' },
    { text: 'ok', label: 'neutral' },
  ];

  test('string labels: a sorted list; ids truncated or padded; lengths', () => {
    const ds = new ClassificationDataset(records, byte, { seqLen: 5, batchSize: 3 });
    expect(ds.labels).toEqual(['neg', 'neutral', 'pos']);
    expect(ds.numClasses).toBe(3);
    const b = ds.batch([0, 2, 3]);
    expect(shapes(b)).toEqual({ ids: [3, 5], labels: [3], lengths: [3] });
    expect(b.labels.dtype).toBe('int32');
    const r = read(b);
    const P = 258;
    expect(r.ids).toEqual([...byte.encode('good'), P, ...byte.encode('so-so'), P, P, P, P, P]);
    expect(r.labels).toEqual([2, 1, 0]);
    expect(r.lengths).toEqual([4, 5, 0]);
    expect(r.indices).toEqual([0, 2, 3]);
    // left padding puts every text's last token last
    const left = new ClassificationDataset(records, byte, { seqLen: 5, batchSize: 3, padSide: 'left', addEos: true });
    expect(read(left.batch([0, 6])).ids).toEqual([...byte.encode('good'), 257, P, P, ...byte.encode('ok'), 257]);
  });

  test('integer labels are class ids; an explicit label list maps others', () => {
    const ints = new ClassificationDataset([{ text: 'a', label: 2 }, { text: 'b', label: 0 }, { text: 'c', label: 5 }], byte, { seqLen: 2, batchSize: 2 });
    expect(ints.numClasses).toBe(6);
    expect(read(ints.batch([0, 1, 2])).labels).toEqual([2, 0, 5]);
    const listed = new ClassificationDataset(records.slice(0, 3), byte, { seqLen: 2, batchSize: 2, labels: ['pos', 'neutral', 'neg', 'other'] });
    expect(listed.numClasses).toBe(4);
    expect(read(listed.batch([0, 1, 2])).labels).toEqual([0, 2, 1]);
    expect(() => new ClassificationDataset(records, byte, { seqLen: 2, batchSize: 2, labels: ['pos', 'neg'] })).toThrow(/record 2: label "neutral" is not in the label list/);
    expect(() => new ClassificationDataset([{ text: 'a', label: 'x' }, { text: 'b', label: 1 }], byte, { seqLen: 2, batchSize: 1 })).toThrow(/record 1: labels mix strings and integers/);
    expect(() => new ClassificationDataset([{ text: 'a', label: -1 }], byte, { seqLen: 2, batchSize: 1 })).toThrow(/record 0: Expected a string or a non-negative integer for label but received number -1/);
    expect(() => new ClassificationDataset([{ text: 3, label: 1 }] as never, byte, { seqLen: 2, batchSize: 1 })).toThrow(/record 0: Expected a string for text but received number 3/);
    expect(() => new ClassificationDataset([], byte, { seqLen: 2, batchSize: 1 })).toThrow(/at least one record/);
    const noPad: Tokenizer = { ...byte, kind: 'fake', padId: null, vocabSize: 259, bosId: null, eosId: null, encode: (s: string) => byte.encode(s), decode: () => '', toJSON: () => ({ kind: 'byte' }) };
    expect(() => new ClassificationDataset(records, noPad, { seqLen: 5, batchSize: 1 })).toThrow(/record 0 needs padding but the tokenizer has no pad token \(pass padId\)/);
    expect(read(new ClassificationDataset(records, noPad, { seqLen: 5, batchSize: 1, padId: 0 }).batch([1])).ids).toEqual([...byte.encode('bad!'), 0]);
  });

  test('shuffled epochs: each record once per epoch, batches crossing epochs stay full', () => {
    const ds = new ClassificationDataset(records, byte, { seqLen: 4, batchSize: 3, seed: 5 });
    const idx: number[] = [];
    for (let i = 0; i < 7; ++i) {
      const b = ds.next();
      expect(b.ids.shape).toEqual([3, 4]);
      idx.push(...read(b).indices);
    }
    for (let e = 0; e < 3; ++e) expect([...idx.slice(7 * e, 7 * e + 7)].sort()).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(idx.slice(0, 7)).not.toEqual(idx.slice(7, 14)); // reshuffled
    expect(ds.epoch).toBe(2);
    // the batch of next() is batch(indices)
    const twin = new ClassificationDataset(records, byte, { seqLen: 4, batchSize: 3, seed: 5 });
    const first = twin.nextIndices();
    expect(first).toEqual(idx.slice(0, 3));
  });

  test('evaluation order: every record once, in order', () => {
    const ds = new ClassificationDataset(records, byte, { seqLen: 4, batchSize: 3 });
    const batches = [...ds.evalBatches()].map(read);
    expect(batches.map((b) => b.indices)).toEqual([[0, 1, 2], [3, 4, 5], [6]]);
    expect(batches[2].labels).toEqual([1]);
    expect([...ds.evalBatches(7)].map((b) => read(b).indices)).toEqual([[0, 1, 2, 3, 4, 5, 6]]);
  });

  test.each([[3, 5], [3, 2], [2, 0], [7, 1]])('resume (batchSize %i after %i batches) continues bit for bit', (B, before) => {
    const a = new ClassificationDataset(records, byte, { seqLen: 6, batchSize: B, seed: 9 });
    for (let i = 0; i < before; ++i) read(a.next());
    const saved = JSON.parse(JSON.stringify(a.state()));
    const after = [0, 1, 2].map(() => read(a.next()));
    const b = new ClassificationDataset(records, byte, { seqLen: 6, batchSize: B, seed: 9 });
    read(b.next());
    b.restore(saved);
    expect([0, 1, 2].map(() => read(b.next()))).toEqual(after);
    const c = new ClassificationDataset(records, byte, { seqLen: 6, batchSize: B + 1, seed: 9 });
    expect(() => c.restore(saved)).toThrow(/Expected batchSize/);
  });
});

describe('PairDataset', () => {
  const P = 258;
  const BOS = 256;
  const EOS = 257;
  const ch = (s: string) => byte.encode(s);
  const records = [
    { source: 'ab', target: 'xyz' }, // shorter than both lengths
    { source: 'abcdefg', target: 'abcdef' }, // both truncated
    { source: '', target: '' }, // empty
    { source: 'q', target: 'uv' }, // target + eos exactly targetLen... with targetLen 3
  ];

  test('src, <bos> + target, target + <eos> with -100 on padding', () => {
    const ds = new PairDataset(records, byte, { sourceLen: 4, targetLen: 3, batchSize: 2 });
    const b = ds.batch([0, 1, 2, 3]);
    expect(shapes(b)).toEqual({ src: [4, 4], tgt: [4, 3], targets: [4, 3], srcLengths: [4] });
    const r = read(b);
    expect(r.src).toEqual([...ch('ab'), P, P, ...ch('abcd'), P, P, P, P, ...ch('q'), P, P, P]);
    expect(r.srcLengths).toEqual([2, 4, 0, 1]);
    expect(r.tgt).toEqual([BOS, ...ch('xy'), BOS, ...ch('ab'), BOS, P, P, BOS, ...ch('uv')]);
    expect(r.targets).toEqual([...ch('xyz'), ...ch('abc'), EOS, -100, -100, ...ch('uv'), EOS]);
    // a longer target length: the eos follows xyz, then -100
    const wide = read(new PairDataset(records, byte, { sourceLen: 2, targetLen: 6, batchSize: 1, sourceEos: true }).batch([0]));
    expect(wide.src).toEqual(ch('ab'));
    expect(wide.tgt).toEqual([BOS, ...ch('xyz'), P, P]);
    expect(wide.targets).toEqual([...ch('xyz'), EOS, -100, -100]);
    expect(read(new PairDataset(records, byte, { sourceLen: 4, targetLen: 1, batchSize: 1, sourceEos: true }).batch([0, 2]))).toEqual({
      src: [...ch('ab'), EOS, P, EOS, P, P, P], tgt: [BOS, BOS], targets: [ch('x')[0], EOS], srcLengths: [3, 1], indices: [0, 2],
    });
  });

  test('the tokenizer needs bos, eos and pad', () => {
    const fake = (over: Partial<Tokenizer>): Tokenizer => ({ vocabSize: 259, bosId: 256, eosId: 257, padId: 258, kind: 'fake', encode: (s: string) => byte.encode(s), decode: () => '', toJSON: () => ({ kind: 'byte' }), ...over });
    expect(() => new PairDataset(records, fake({ padId: null }), { sourceLen: 2, targetLen: 2, batchSize: 1 })).toThrow(/no pad token \(pass padId\)/);
    expect(() => new PairDataset(records, fake({ bosId: null }), { sourceLen: 2, targetLen: 2, batchSize: 1 })).toThrow(/needs bos and eos tokens/);
    expect(() => new PairDataset([{ source: 'a' }] as never, byte, { sourceLen: 2, targetLen: 2, batchSize: 1 })).toThrow(/record 0: Expected a string for target but received undefined/);
    expect(() => new PairDataset(records, byte, { sourceLen: 0, targetLen: 2, batchSize: 1 })).toThrow(/for sourceLen/);
  });

  test('shuffled batches resume bit for bit; evaluation in order', () => {
    const many = Array.from({ length: 11 }, (_, i) => ({ source: `s${i}`, target: `t${i * 3}` }));
    const a = new PairDataset(many, byte, { sourceLen: 3, targetLen: 4, batchSize: 4, seed: 2 });
    const seen: number[] = [];
    for (let i = 0; i < 5; ++i) seen.push(...read(a.next()).indices);
    expect([...seen.slice(0, 11)].sort((x, y) => x - y)).toEqual([...Array(11).keys()]);
    const saved = JSON.parse(JSON.stringify(a.state()));
    const after = [0, 1, 2].map(() => read(a.next()));
    const b = new PairDataset(many, byte, { sourceLen: 3, targetLen: 4, batchSize: 4, seed: 2 });
    b.restore(saved);
    expect([0, 1, 2].map(() => read(b.next()))).toEqual(after);
    expect([...b.evalBatches()].map((x) => read(x).indices)).toEqual([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]);
    // a classification state does not fit a pair dataset
    const cls = new ClassificationDataset([{ text: 'a', label: 0 }], byte, { seqLen: 2, batchSize: 4 });
    expect(() => b.restore(cls.state())).toThrow(/Expected kind "PairDataset" but received "ClassificationDataset"/);
  });
});

/** One-hot logits [B, S, V] that always answer `token`. */
function constantLogits(B: number, S: number, V: number, token: number): dr.Tensor {
  const x = new Float32Array(B * S * V);
  for (let i = 0; i < B * S; ++i) x[i * V + token] = 1;
  return dr.tensor(x, [B, S, V]);
}
/** Logits [B, S, V] that answer exactly `answers` (ids per position; -100 -> token 0). */
function answerLogits(answers: number[], B: number, S: number, V: number): dr.Tensor {
  const x = new Float32Array(B * S * V);
  answers.forEach((a, i) => (x[i * V + (a < 0 ? 0 : a)] = 1));
  return dr.tensor(x, [B, S, V]);
}
/** |observed - p| within 4.5 standard deviations of a binomial proportion over n trials. */
function nearChance(observed: number, p: number, n: number): void {
  expect(Math.abs(observed - p)).toBeLessThan(4.5 * Math.sqrt((p * (1 - p)) / n));
}

describe('synthetic tasks', () => {
  test('associative recall: the answer is the value paired with the query key', () => {
    const task = associativeRecall({ vocab: 20, pairs: 4, seqLen: 12, seed: 1 });
    expect(task.vocabSize).toBe(20);
    expect([task.numKeys, task.numValues]).toEqual([9, 9]);
    expect(task.chance).toBeCloseTo(1 / 9);
    const B = 64;
    const batch = task.next(B);
    expect(shapes(batch)).toEqual({ ids: [B, 12], targets: [B, 12] });
    const { ids, targets } = read(batch);
    const answers: number[] = [];
    for (let b = 0; b < B; ++b) {
      const row = ids.slice(b * 12, b * 12 + 12);
      const tgt = targets.slice(b * 12, b * 12 + 12);
      const keys = [0, 2, 4, 6].map((i) => row[i]);
      const vals = [1, 3, 5, 7].map((i) => row[i]);
      expect(new Set(keys).size).toBe(4);
      for (const k of keys) expect(k >= 2 && k < 11).toBe(true);
      for (const v of vals) expect(v >= 11 && v < 20).toBe(true);
      expect(row[8]).toBe(1); // the query marker
      const q = row[9];
      expect(keys).toContain(q);
      expect(row.slice(10)).toEqual([0, 0]); // padding
      // only the query position is scored, with the value that followed the key
      expect(tgt.map((t, i) => (t === -100 ? -1 : i)).filter((i) => i >= 0)).toEqual([9]);
      expect(tgt[9]).toBe(vals[keys.indexOf(q)]);
      answers.push(tgt[9]);
    }
    // every key and value is used somewhere
    expect(new Set(ids.filter((_, i) => i % 12 < 8 && i % 2 === 0)).size).toBe(9);
    expect(new Set(answers).size).toBeGreaterThan(5);
  });

  test('associative recall with as many pairs as keys, and seqLen at its minimum', () => {
    const task = associativeRecall({ vocab: 6, pairs: 2, seqLen: 6, seed: 0 });
    const { ids } = read(task.next(40));
    for (let b = 0; b < 40; ++b) expect([ids[b * 6], ids[b * 6 + 2]].sort()).toEqual([2, 3]);
    expect(() => associativeRecall({ vocab: 6, pairs: 3, seqLen: 20 })).toThrow(/Expected an integer in \[1, 2\] for pairs but received number 3/);
    expect(() => associativeRecall({ vocab: 20, pairs: 4, seqLen: 9 })).toThrow(/Expected seqLen >= 2 \* pairs \+ 2 = 10 but received 9/);
    expect(() => associativeRecall({ vocab: 3, pairs: 1, seqLen: 9 })).toThrow(/for vocab/);
  });

  test('long-range copy: the second half repeats the first, only it is scored', () => {
    const L = 5;
    const task = longRangeCopy({ vocab: 10, length: L, seqLen: 13, seed: 4 });
    expect(task.chance).toBeCloseTo(1 / 8);
    const B = 16;
    const { ids, targets } = read(task.next(B));
    for (let b = 0; b < B; ++b) {
      const row = ids.slice(b * 13, b * 13 + 13);
      const tgt = targets.slice(b * 13, b * 13 + 13);
      const first = row.slice(0, L);
      for (const x of first) expect(x >= 2 && x < 10).toBe(true);
      expect(row[L]).toBe(1);
      expect(row.slice(L + 1, 2 * L)).toEqual(first.slice(0, L - 1));
      expect(row.slice(2 * L)).toEqual([0, 0, 0]);
      expect(tgt.slice(L, 2 * L)).toEqual(first);
      expect(tgt.filter((t) => t !== -100).length).toBe(L);
      // each scored target is the id the model sees next
      for (let j = L; j < 2 * L - 1; ++j) expect(tgt[j]).toBe(row[j + 1]);
    }
    const tight = read(longRangeCopy({ vocab: 3, length: 1, seqLen: 2 }).next(3));
    expect(tight.ids).toEqual([2, 1, 2, 1, 2, 1]);
    expect(tight.targets).toEqual([-100, 2, -100, 2, -100, 2]);
    expect(() => longRangeCopy({ vocab: 10, length: 5, seqLen: 9 })).toThrow(/Expected seqLen >= 2 \* length = 10 but received 9/);
  });

  test('local pattern: each token is the sum of the previous two mod V, but for noise', () => {
    const V = 7;
    const S = 33;
    const exact = read(localPattern({ vocab: V, seqLen: S, noise: 0, seed: 2 }).next(8));
    for (let b = 0; b < 8; ++b) {
      const row = exact.ids.slice(b * S, b * S + S);
      const tgt = exact.targets.slice(b * S, b * S + S);
      expect(tgt[0]).toBe(-100);
      for (let i = 1; i < S; ++i) expect(tgt[i]).toBe((row[i] + row[i - 1]) % V);
      for (let i = 1; i < S; ++i) expect(row[i]).toBe(tgt[i - 1] === -100 ? row[i] : tgt[i - 1]);
    }
    const noisy = localPattern({ vocab: V, seqLen: S, noise: 0.2, seed: 2 });
    expect(noisy.ceiling).toBeCloseTo(0.8 + 0.2 / 7);
    const B = 100;
    const { ids, targets } = read(noisy.next(B));
    let follow = 0;
    for (let b = 0; b < B; ++b) for (let i = 1; i < S; ++i) if (targets[b * S + i] === (ids[b * S + i] + ids[b * S + i - 1]) % V) ++follow;
    nearChance(follow / (B * (S - 1)), noisy.ceiling, B * (S - 1));
    expect(() => localPattern({ vocab: V, seqLen: 1 })).toThrow(/for seqLen/);
    expect(() => localPattern({ vocab: V, seqLen: 4, noise: 1 })).toThrow(/Expected noise in \[0, 1\) but received number 1/);
  });

  test('a trivial predictor scores chance; a perfect one scores 1', () => {
    const recall = associativeRecall({ vocab: 18, pairs: 3, seqLen: 8, seed: 7 });
    const copy = longRangeCopy({ vocab: 8, length: 4, seqLen: 8, seed: 7 });
    const local = localPattern({ vocab: 6, seqLen: 8, noise: 0.1, seed: 7 });
    for (const [task, constant] of [[recall, 10], [copy, 5], [local, 3]] as const) {
      const B = 1500;
      const batch = task.next(B);
      const logits = constantLogits(B, 8, task.vocabSize, constant);
      const { correct, total, accuracy: acc } = accuracy(logits, batch.targets);
      const scoredPerRow = task === recall ? 1 : task === copy ? 4 : 7;
      expect(total).toBe(B * scoredPerRow);
      expect(correct).toBe(Math.round(acc * total));
      nearChance(acc, task.chance, total);
      const perfect = answerLogits(Array.from(batch.targets.dataSync()), B, 8, task.vocabSize);
      expect(accuracy(perfect, batch.targets).accuracy).toBe(1);
      dr.dispose([logits, perfect, batch.ids, batch.targets]);
    }
  });

  test('tasks resume bit for bit and depend on their seed', () => {
    const make = (seed: number) => associativeRecall({ vocab: 30, pairs: 5, seqLen: 16, seed });
    const a = make(3);
    for (let i = 0; i < 5; ++i) read(a.next(4));
    const saved = JSON.parse(JSON.stringify(a.state()));
    const after = [0, 1, 2].map(() => read(a.next(4)));
    const b = make(3);
    b.restore(saved);
    expect([0, 1, 2].map(() => read(b.next(4)))).toEqual(after);
    expect(read(make(3).next(4))).not.toEqual(read(make(4).next(4)));
    expect(() => associativeRecall({ vocab: 30, pairs: 4, seqLen: 16 }).restore(saved)).toThrow(/Expected config/);
    expect(() => longRangeCopy({ vocab: 30, length: 4, seqLen: 16 }).restore(saved)).toThrow(/Expected kind "longRangeCopy" but received "associativeRecall"/);
    const l = localPattern({ vocab: 9, seqLen: 5, seed: 1 });
    read(l.next(2));
    const ls = l.state();
    const x = read(l.next(3));
    const l2 = localPattern({ vocab: 9, seqLen: 5, seed: 1 });
    l2.restore(ls);
    expect(read(l2.next(3))).toEqual(x);
  });
});

describe('accuracy', () => {
  test('argmax against targets over scored positions; the first maximum wins ties', () => {
    const logits = dr.tensor([[[0, 2, 1], [5, 5, 0]], [[0, 0, 0], [1, -1, 3]]]);
    const targets = dr.tensor(Int32Array.from([1, 1, -100, 2]), [2, 2]);
    expect(accuracy(logits, targets)).toEqual({ correct: 2, total: 3, accuracy: 2 / 3 });
    const none = dr.tensor(Int32Array.from([-100, -100, -100, -100]), [2, 2]);
    expect(accuracy(logits, none).total).toBe(0);
    expect(accuracy(logits, none).accuracy).toBeNaN();
    // classification logits [B, C] against labels [B]
    const cls = dr.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]);
    expect(accuracy(cls, dr.tensor(Int32Array.from([1, 1, 1]), [3])).correct).toBe(2);
    expect(() => accuracy(logits, dr.tensor(Int32Array.from([1, 1]), [2]))).toThrow(ShapeError);
    expect(() => accuracy(logits, dr.tensor(Int32Array.from([1, 1, 1, 1]), [4]))).toThrow(/Expected targets of shape \[2, 2\]/);
    expect(() => accuracy(logits, dr.tensor([[1, 1], [1, 1]]))).toThrow(DTypeError);
  });

  test('exported from the package root', () => {
    expect(dr.LMBatcher).toBe(LMBatcher);
    expect(dr.accuracy).toBe(accuracy);
    expect(dr.readTextCorpus).toBe(readTextCorpus);
    expect(dr.IGNORE_INDEX).toBe(-100);
  });
});

describe('batches feed the models', () => {
  test('LM windows, pair batches, classification batches and a synthetic task', () => {
    const tokens = tokenizeCorpus(['the cat sat on the mat', 'a dog ran'], byte);
    const lmData = new LMBatcher(tokens, { seqLen: 8, batchSize: 2, seed: 1 });
    const lm = new dr.DualRouteLM({ vocabSize: byte.vocabSize, dModel: 16, nHeads: 2, nLayers: 1, maxSeq: 16, seed: 1 });
    const batch = lmData.next();
    const last = [...lmData.evalBatches()].pop()!; // padded with -100 targets
    for (const b of [batch, last]) {
      const { loss, lmLoss } = lm.loss(b.ids, b.targets);
      expect(Number.isFinite(lmLoss.item())).toBe(true);
      dr.dispose([loss, lmLoss, b.ids, b.targets]);
    }

    const pairs = new PairDataset([{ source: 'abc', target: 'xy' }, { source: 'de', target: 'uvw' }], byte, { sourceLen: 6, targetLen: 5, batchSize: 2 });
    const s2s = new dr.DualRouteSeq2Seq({ vocabSize: byte.vocabSize, dModel: 16, nHeads: 2, encoderLayers: 1, decoderLayers: 1, maxSource: 6, maxTarget: 5, seed: 2 });
    const p = pairs.next();
    const loss = s2s.loss(p.src, p.tgt, p.targets);
    expect(Number.isFinite(loss.item())).toBe(true);
    dr.dispose([loss, p.src, p.tgt, p.targets, p.srcLengths]);

    const cls = new ClassificationDataset([{ text: 'good', label: 'pos' }, { text: 'bad', label: 'neg' }], byte, { seqLen: 6, batchSize: 2, padSide: 'left' });
    const head = new dr.DualRouteClassifier(lm, cls.numClasses, 'last');
    const c = cls.next();
    const logits = head.forward(c.ids);
    expect(logits.shape).toEqual([2, 2]);
    expect(accuracy(logits, c.labels).total).toBe(2);
    dr.dispose([logits, c.ids, c.labels, c.lengths]);

    const task = associativeRecall({ vocab: 12, pairs: 2, seqLen: 8, seed: 3 });
    const small = new dr.DualRouteLM({ vocabSize: task.vocabSize, dModel: 16, nHeads: 2, nLayers: 1, maxSeq: 8, seed: 3 });
    const t = task.next(4);
    const out = small.forward(t.ids);
    expect(accuracy(out, t.targets).total).toBe(4);
    const l = small.loss(t.ids, t.targets);
    expect(Number.isFinite(l.lmLoss.item())).toBe(true);
    dr.dispose([out, l.loss, l.lmLoss, t.ids, t.targets]);
    for (const m of [head, s2s, small]) m.dispose(); // head holds lm as its backbone
  });
});
