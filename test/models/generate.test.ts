// Generation: sampling against its definition (greedy, top-k, top-p), determinism for a seed,
// stop sequences, batches of different lengths, abort, option errors, a non-blocked event loop.
import * as dr from '../../lib';
import { models } from '../../lib';

const lm = () => new dr.DualRouteLM({ vocabSize: 11, dModel: 8, nHeads: 2, nLayers: 2, maxSeq: 24, pattern: [{ local: 'conv', global: 'none' }, { window: 4 }], seed: 3 });

describe('sampleToken', () => {
  const logits = [0.5, 2, -1, 2, 1];
  test('greedy takes the largest (ties to the lower id)', () => {
    expect(models.sampleToken(logits, { temperature: 0, topK: 5, topP: 1 }, 0.99)).toBe(1);
  });
  test('every token kept: the draw walks the softmax in id order', () => {
    const e = logits.map((x) => Math.exp(x - 2));
    const z = e.reduce((a, b) => a + b, 0);
    const cdf = e.map((_, i) => e.slice(0, i + 1).reduce((a, b) => a + b, 0) / z);
    const o = { temperature: 1, topK: 5, topP: 1 };
    cdf.forEach((c, i) => {
      expect(models.sampleToken(logits, o, c - 1e-9)).toBe(i);
      if (i + 1 < cdf.length) expect(models.sampleToken(logits, o, c + 1e-9)).toBe(i + 1);
    });
    expect(models.sampleToken(logits, o, 0)).toBe(0);
    expect(models.sampleToken(logits, o, 0.999999)).toBe(4);
    // temperature scales the logits before the softmax
    const t = { temperature: 0.5, topK: 5, topP: 1 };
    const e2 = logits.map((x) => Math.exp((x - 2) / 0.5));
    expect(models.sampleToken(logits, t, e2[0] / e2.reduce((a, b) => a + b, 0) + 1e-9)).toBe(1);
  });
  test('a cut (topK or topP): the draw walks the kept tokens in order of probability', () => {
    // order: 1, 3 (tie, lower first), 4, 0, 2; topK 4 drops token 2
    const e = [2, 2, 1, 0.5].map((x) => Math.exp(x - 2));
    const z = e.reduce((a, b) => a + b, 0);
    const cdf = e.map((_, i) => e.slice(0, i + 1).reduce((a, b) => a + b, 0) / z);
    const o = { temperature: 1, topK: 4, topP: 1 };
    expect(models.sampleToken(logits, o, cdf[0] - 1e-9)).toBe(1);
    expect(models.sampleToken(logits, o, cdf[0] + 1e-9)).toBe(3);
    expect(models.sampleToken(logits, o, cdf[2] + 1e-9)).toBe(0);
    expect(models.sampleToken(logits, o, 0.999999)).toBe(0);
  });
  test('topK and topP cut the tail', () => {
    expect(models.sampleToken(logits, { temperature: 1, topK: 2, topP: 1 }, 0.999)).toBe(3);
    // the two tied best carry ~0.6 of the mass: topP 0.5 keeps them only
    expect(models.sampleToken(logits, { temperature: 1, topK: 5, topP: 0.5 }, 0.999)).toBe(3);
  });
});

describe('DualRouteLM.generate', () => {
  test('greedy generation equals the argmax of a full forward at each step', async () => {
    const m = lm();
    m.eval();
    const prompt = [1, 2, 3];
    const [out] = await m.generateTokens(prompt, { maxTokens: 5, temperature: 0 });
    expect(out.length).toBe(5);
    const seq = prompt.slice();
    for (const t of out) {
      const logits = dr.tidy(() => Array.from(dr.narrow(m.forward(dr.tensor(Int32Array.from(seq), [1, seq.length])), 1, seq.length - 1, 1).dataSync()));
      expect(t).toBe(logits.indexOf(Math.max(...logits)));
      seq.push(t);
    }
    m.dispose();
  });

  test('a seed repeats; batches of different lengths give each prompt its own tokens', async () => {
    const m = lm();
    const a = await m.generateTokens([[1], [4, 5, 6, 7]], { maxTokens: 6, seed: 5, topK: 4 });
    const b = await m.generateTokens([[1], [4, 5, 6, 7]], { maxTokens: 6, seed: 5, topK: 4 });
    expect(a).toEqual(b);
    expect(a.map((x) => x.length)).toEqual([6, 6]);
    expect(m.training).toBe(true);  // restored after generating
    m.dispose();
  });

  test('stop sequences end a generation; maxSeq bounds it', async () => {
    const m = lm();
    const [free] = await m.generateTokens([2, 3], { maxTokens: 8, temperature: 0 });
    const [stopped] = await m.generateTokens([2, 3], { maxTokens: 8, temperature: 0, stop: [[free[2]]] });
    expect(stopped).toEqual(free.slice(0, free.indexOf(free[2])));
    const [long] = await m.generateTokens([1, 2, 3, 4], { maxTokens: 100, temperature: 0 });
    expect(long.length).toBe(24 - 4);
    m.dispose();
  });

  test('an AbortSignal stops it, and the event loop runs between steps', async () => {
    const m = lm();
    const ac = new AbortController();
    let ticks = 0;
    const timer = setInterval(() => ++ticks, 0);
    const got: number[] = [];
    for await (const t of m.generate([1, 2], { maxTokens: 50, signal: ac.signal })) {
      got.push(t.token);
      if (got.length === 3) ac.abort();
    }
    clearInterval(timer);
    expect(got.length).toBe(3);
    expect(ticks).toBeGreaterThan(0);
    m.dispose();
  });

  test('bad options and prompts are typed errors', async () => {
    const m = lm();
    await expect(m.generateTokens([1], { temperature: -1 })).rejects.toThrow(/temperature >= 0/);
    await expect(m.generateTokens([1], { topP: 0 })).rejects.toThrow(/topP in \(0, 1\]/);
    await expect(m.generateTokens([1], { topK: 0 })).rejects.toThrow(/topK >= 1/);
    await expect(m.generateTokens([1], { maxTokens: -2 })).rejects.toThrow(/maxTokens >= 0/);
    await expect(m.generateTokens([1], { stop: [[]] })).rejects.toThrow(/stop as an array/);
    await expect(m.generateTokens([1], { bogus: 1 } as never)).rejects.toThrow(/unknown option 'bogus'/);
    await expect(m.generateTokens([11], {})).rejects.toThrow(/token ids in \[0, 11\)/);
    await expect(m.generateTokens([], {})).rejects.toThrow(dr.ValueError);
    m.dispose();
  });
});
