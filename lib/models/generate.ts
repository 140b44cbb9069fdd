// Text generation from DualRouteLM: an async iterator of tokens with temperature, top-k, top-p
// (nucleus), stop sequences, a seed and an AbortSignal, for one prompt or a batch of prompts of
// different lengths. The iterator yields to the event loop between steps, so a server stays
// responsive and an abort takes effect at the next step.
//
// With the model's decode caches (DualRouteLM.decodeCache, the default) a step feeds one token
// through per-layer caches; `cache: false` recomputes the whole prefix at every step (the
// reference the caches are tested against).
//
// `routing: true` makes each yielded token carry how every layer routed it (DecodeCache's
// lastRouting): the token is fed through the caches as soon as it is drawn (the step the next
// draw needs anyway; one more step after the last token), so its routing is that of its own
// position, as DualRouteLM.routingTrace reports it over the prompt and the tokens so far.
import { ValueError, describe } from '../errors';
import { Generator } from '../random';
import { Tensor, tidy } from '../tensor';
import { tensor } from '../ops/creation';
import { narrow } from '../ops/shape';
import { noGrad } from '../tape';
import type { TokenRouting } from './decode';

export interface GenerateOptions {
  /** Tokens to generate per prompt (default 32). */
  maxTokens?: number;
  /** Softmax temperature; 0 picks the most likely token (default 1). */
  temperature?: number;
  /** Keep only the k most likely tokens (default: all). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (default 1: all). */
  topP?: number;
  /** Token sequences that end a generation (not yielded). */
  stop?: number[][];
  /** Seeds the sampling (default: a fixed 0, so runs repeat). */
  seed?: number;
  /** Use the model's per-layer decode caches (default true when it has them); false recomputes the prefix each step. */
  cache?: boolean;
  /** Each token carries its routing (GeneratedToken.routing; needs the decode caches). Default false. */
  routing?: boolean;
  signal?: AbortSignal;
}

export interface GeneratedToken {
  /** Which prompt of the batch. */
  index: number;
  token: number;
  /**
   * With options.routing: how every layer routed this token at its own position (fed as the
   * input of the decode step after the one that drew it), as routingTrace over prompt + tokens.
   */
  routing?: TokenRouting;
}

function checkOptions(o: GenerateOptions, vocab: number): Required<Omit<GenerateOptions, 'signal'>> & { signal?: AbortSignal } {
  if (o === null || typeof o !== 'object') throw new ValueError(`generate: Expected an options object but received ${describe(o)}`);
  const known = ['maxTokens', 'temperature', 'topK', 'topP', 'stop', 'seed', 'signal', 'cache', 'routing'];
  for (const k of Object.keys(o)) if (!known.includes(k)) throw new ValueError(`generate: unknown option '${k}' (known: ${known.join(', ')})`);
  const maxTokens = o.maxTokens ?? 32;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new ValueError(`generate: Expected an integer maxTokens >= 0 but received ${describe(o.maxTokens)}`);
  const temperature = o.temperature ?? 1;
  if (typeof temperature !== 'number' || !(temperature >= 0) || !Number.isFinite(temperature)) throw new ValueError(`generate: Expected a finite temperature >= 0 but received ${describe(o.temperature)}`);
  const topK = o.topK ?? vocab;
  if (!Number.isInteger(topK) || topK < 1) throw new ValueError(`generate: Expected an integer topK >= 1 but received ${describe(o.topK)}`);
  const topP = o.topP ?? 1;
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) throw new ValueError(`generate: Expected topP in (0, 1] but received ${describe(o.topP)}`);
  const stop = o.stop ?? [];
  if (!Array.isArray(stop) || stop.some((s) => !Array.isArray(s) || s.length === 0 || s.some((t) => !Number.isInteger(t)))) {
    throw new ValueError(`generate: Expected stop as an array of non-empty token id arrays but received ${describe(o.stop)}`);
  }
  const seed = o.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0) throw new ValueError(`generate: Expected an integer seed >= 0 but received ${describe(o.seed)}`);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new ValueError(`generate: Expected an AbortSignal for signal but received ${describe(o.signal)}`);
  const cache = o.cache ?? true;
  if (typeof cache !== 'boolean') throw new ValueError(`generate: Expected a boolean for cache but received ${describe(o.cache)}`);
  const routing = o.routing ?? false;
  if (typeof routing !== 'boolean') throw new ValueError(`generate: Expected a boolean for routing but received ${describe(o.routing)}`);
  if (routing && !cache) throw new ValueError('generate: routing needs the decode caches (cache: true)');
  return { maxTokens, temperature, topK: Math.min(topK, vocab), topP, stop, seed, cache, routing, signal: o.signal };
}

/**
 * The next token from the logits of one position: greedy at temperature 0, else a draw u in
 * [0, 1) from the tokens kept by topK and topP, with probabilities softmax(logits / T).
 */
export function sampleToken(logits: ArrayLike<number>, o: { temperature: number; topK: number; topP: number }, u: number): number {
  const n = logits.length;
  if (o.temperature === 0) {
    // the most likely token, ties to the lower id (one pass, no sort)
    let best = 0;
    for (let i = 1; i < n; ++i) if (logits[i] > logits[best]) best = i;
    return best;
  }
  if (o.topK >= n && o.topP >= 1) {
    // every token kept: the draw walks them in id order (no sort of the vocabulary)
    let m = -Infinity;
    for (let i = 0; i < n; ++i) if (logits[i] > m) m = logits[i];
    const w = new Float64Array(n);
    let z = 0;
    for (let i = 0; i < n; ++i) z += (w[i] = Math.exp((logits[i] - m) / o.temperature));
    let acc = 0;
    const target = u * z;
    for (let i = 0; i < n; ++i) {
      acc += w[i];
      if (target < acc) return i;
    }
    for (let i = n - 1; i >= 0; --i) if (w[i] > 0) return i;  // rounding left u * z at the total
    return n - 1;
  }
  // the tokens in the order the draw walks them: most likely first (ties to the lower id)
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  const kept = order.slice(0, Math.max(1, Math.min(o.topK, n)));
  const m = logits[kept[0]];
  const w = kept.map((i) => Math.exp((logits[i] - m) / o.temperature));
  const z = w.reduce((a, b) => a + b, 0);
  // nucleus: the shortest prefix (most likely first) whose mass reaches topP
  let mass = 0, cut = kept.length;
  for (let i = 0; i < kept.length; ++i) {
    mass += w[i] / z;
    if (mass >= o.topP) {
      cut = i + 1;
      break;
    }
  }
  const zz = w.slice(0, cut).reduce((a, b) => a + b, 0);
  let acc = 0;
  for (let i = 0; i < cut; ++i) {
    acc += w[i] / zz;
    if (u < acc) return kept[i];
  }
  return kept[cut - 1];
}

/** What generation needs of a model (DualRouteLM has it; no import of the model here, so no cycle). */
export interface CausalLM {
  readonly config: { vocabSize: number; maxSeq: number };
  training: boolean;
  forward(ids: Tensor): Tensor;
  eval(): unknown;
  train(mode?: boolean): unknown;
  /** When the model has one, generation feeds one token per step through per-layer caches. */
  decodeCache?(batch: number): { step(ids: number[]): Tensor; dispose(): void; lastRouting?(row?: number): TokenRouting };
}

const isCausalLM = (m: unknown): m is CausalLM =>
  m !== null && typeof m === 'object' && typeof (m as CausalLM).forward === 'function' &&
  typeof (m as CausalLM).config?.vocabSize === 'number' && typeof (m as CausalLM).config?.maxSeq === 'number';

const endsWith = (seq: number[], tail: number[]) => tail.length <= seq.length && tail.every((t, i) => seq[seq.length - tail.length + i] === t);

/**
 * Generates from prompt(s) (token ids; a batch as an array of arrays of different lengths):
 * yields {index, token} as each is chosen, prompts interleaved step by step. A generation ends
 * after maxTokens, at a stop sequence (whose tokens already yielded are all but its last), or at
 * the model's maxSeq.
 */
export async function* generate(model: CausalLM, prompt: number[] | number[][], options: GenerateOptions = {}): AsyncGenerator<GeneratedToken> {
  if (!isCausalLM(model)) throw new ValueError(`generate: Expected a DualRouteLM (a model with forward(ids) and config.vocabSize, maxSeq) but received ${describe(model)}`);
  const o = checkOptions(options, model.config.vocabSize);
  const batch = Array.isArray(prompt) && prompt.length > 0 && Array.isArray(prompt[0]) ? (prompt as number[][]) : [prompt as number[]];
  batch.forEach((p, i) => {
    if (!Array.isArray(p) || p.length === 0 || p.some((t) => !Number.isInteger(t) || t < 0 || t >= model.config.vocabSize)) {
      throw new ValueError(`generate: Expected prompt ${i} as a non-empty array of token ids in [0, ${model.config.vocabSize}) but received ${describe(p)}`);
    }
  });
  const gen = new Generator(o.seed);
  const seqs = batch.map((p) => p.slice());
  const done = batch.map(() => false);
  const wasTraining = model.training;
  model.eval();
  // one cache per prompt (rows decode at their own positions), fed the prompt up to its last token
  const caches = o.cache && model.decodeCache ? seqs.map(() => model.decodeCache!(1)) : null;
  if (o.routing && !(caches && caches.every((c) => typeof c.lastRouting === 'function'))) {
    caches?.forEach((c) => c.dispose());
    throw new ValueError(`generate: routing needs a model with decode caches that report routing (DualRouteLM) but received ${describe(model)}`);
  }
  const fed = seqs.map(() => 0);
  // routing: the logits of a token fed as soon as it was drawn, for the next draw
  const ahead: Array<Float64Array | null> = seqs.map(() => null);
  try {
    for (let step = 0; step < o.maxTokens; ++step) {
      for (let b = 0; b < seqs.length; ++b) {
        if (done[b]) continue;
        if (o.signal?.aborted) return;
        const seq = seqs[b];
        if (seq.length >= model.config.maxSeq) {
          done[b] = true;
          continue;
        }
        const { logits, u } = noGrad(() => tidy(() => {
          let last: ArrayLike<number>;
          if (ahead[b]) {
            last = ahead[b]!;
            ahead[b] = null;
          } else if (caches) {
            let lg!: Tensor;
            for (; fed[b] < seq.length; ++fed[b]) lg = caches[b].step([seq[fed[b]]]);
            last = lg.dataSync();
          } else {
            const ids = tensor(Int32Array.from(seq), [1, seq.length], { dtype: 'int32' });
            last = narrow(model.forward(ids), 1, seq.length - 1, 1).dataSync();
          }
          const draw = gen.uniform();  // as rand([1], {generator: gen}), on the host
          return { logits: Float64Array.from(last), u: draw };
        }));
        const token = sampleToken(logits, o, u);
        seq.push(token);
        const stopped = o.stop.some((s) => endsWith(seq, s));
        if (stopped) {
          done[b] = true;
          continue;
        }
        if (o.routing) {
          // feed the token now: its own position's routing; the logits wait for the next draw
          ahead[b] = noGrad(() => tidy(() => Float64Array.from(caches![b].step([token]).dataSync())));
          fed[b] += 1;
          yield { index: b, token, routing: caches![b].lastRouting!(0) };
        } else {
          yield { index: b, token };
        }
      }
      if (done.every(Boolean)) return;
      // let the event loop run (requests, aborts) between steps
      await new Promise((r) => setImmediate(r));
    }
  } finally {
    caches?.forEach((c) => c.dispose());
    if (wasTraining) model.train();
  }
}

/** Generates and returns the new tokens of each prompt (see generate). */
export async function generateTokens(model: CausalLM, prompt: number[] | number[][], options: GenerateOptions = {}): Promise<number[][]> {
  const batch = Array.isArray(prompt) && prompt.length > 0 && Array.isArray(prompt[0]) ? (prompt as number[][]) : [prompt as number[]];
  const out: number[][] = batch.map(() => []);
  for await (const t of generate(model, prompt, options)) out[t.index].push(t.token);
  return out;
}
