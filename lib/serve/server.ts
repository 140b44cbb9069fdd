// An OpenAI-compatible HTTP server for a DualRouteLM (fastify): POST /v1/completions and
// /v1/chat/completions (whole answers or server-sent events), GET /v1/models, GET /health and
// GET /metrics (Prometheus, prom-client); the routing view: `routing: true` on a completion adds
// each generated token's per-layer routing, GET /v1/routing describes the layers and GET / serves
// a page that streams a completion coloured by it (lib/serve/page.ts). Requests are checked field by field and refused with
// OpenAI's error body and the right status (400 bad field, 404 unknown model, 413 body too large,
// 429 queue full); a client that disconnects aborts its generation. Generation runs through the
// model's decode caches; the kernels run off the JavaScript thread, so /health answers while
// requests decode.
//
// Generation runs through a BatchEngine (lib/serve/engine.ts): every choice of every request is
// a sequence of one continuous batch, so concurrent requests share each decode step. Requests
// past `concurrency` wait in a queue of `queue` places; past that, 429.
import { randomInt, randomUUID } from 'crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ValueError, describe } from '../errors';
import { DualRouteLM } from '../models/dual_route_lm';
import { BatchEngine, EngineToken } from './engine';
import { renderChat } from './chat';
import { PAGE_HTML } from './page';
import type { StepLayerRouting } from '../models/decode';
import type { Tokenizer } from '../train/tokenizers';

export interface ServeLimits {
  /** Largest request body in bytes (default 1 MiB): past it, 413. */
  bodyBytes?: number;
  /** Longest prompt in tokens (default: the model's maxSeq - 1). */
  promptTokens?: number;
  /** Largest max_tokens (default 1024). */
  maxTokens?: number;
  /** Requests generating at once (default 32). */
  concurrency?: number;
  /** Sequences sharing a decode step (the engine's cache slots; default 16); more wait for a slot. */
  batch?: number;
  /** Requests waiting for a slot (default 64): past it, 429. */
  queue?: number;
}

export interface ServeOptions {
  model: DualRouteLM;
  tokenizer: Tokenizer;
  /** The model id clients name (default 'dualroute'). */
  modelName?: string;
  host?: string;
  /** 0: any free port. Default 8080. */
  port?: number;
  limits?: ServeLimits;
}

export interface Server {
  app: FastifyInstance;
  engine: BatchEngine;
  /** http://host:port */
  url: string;
  close(): Promise<void>;
}

/** A request error: the status and OpenAI's error body. */
class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly type: string, readonly param: string | null = null, readonly code: string | null = null) {
    super(message);
  }
}

const bad = (message: string, param: string | null = null) => new ApiError(400, message, 'invalid_request_error', param);

const COMPLETION_KEYS = ['model', 'prompt', 'max_tokens', 'temperature', 'top_p', 'n', 'stream', 'stream_options', 'stop', 'seed', 'logprobs', 'user', 'echo', 'presence_penalty', 'frequency_penalty', 'best_of', 'logit_bias', 'suffix', 'routing'];
const CHAT_KEYS = ['model', 'messages', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'n', 'stream', 'stream_options', 'stop', 'seed', 'logprobs', 'top_logprobs', 'user', 'presence_penalty', 'frequency_penalty', 'logit_bias', 'response_format', 'routing'];

interface Sampling {
  maxTokens: number;
  temperature: number;
  topP: number;
  n: number;
  stop: string[];
  seed: number | undefined;
  stream: boolean;
  includeUsage: boolean;
  /** null: no logprobs; else the number of alternatives per token (0: the token's own only). */
  logprobs: number | null;
  routing: boolean;
}

/** With `routing: true`, each generated token's routing: its id, its own text and every layer's StepLayerRouting. */
export interface TokenRoute {
  token: number;
  /** tokenizer.decode([token]) */
  piece: string;
  layers: StepLayerRouting[];
}

function checkObject(body: unknown, keys: string[]): Record<string, unknown> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw bad(`Expected a JSON object as the request body but received ${describe(body)}`);
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) if (!keys.includes(k)) throw bad(`Unrecognized request argument supplied: ${k}`, k);
  return b;
}

function numberIn(b: Record<string, unknown>, k: string, lo: number, hi: number, dflt: number, integer = false): number {
  const v = b[k];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi || (integer && !Number.isInteger(v))) {
    throw bad(`Expected ${integer ? 'an integer' : 'a number'} in [${lo}, ${hi}] for '${k}' but received ${describe(v)}`, k);
  }
  return v;
}

function sampling(b: Record<string, unknown>, limits: Required<ServeLimits>, chat: boolean): Sampling {
  const maxKey = chat && b.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens';
  const maxTokens = numberIn(b, maxKey, 1, limits.maxTokens, Math.min(16, limits.maxTokens), true);
  const temperature = numberIn(b, 'temperature', 0, 2, 1);
  const topP = numberIn(b, 'top_p', 0, 1, 1);
  if (b.top_p !== undefined && b.top_p !== null && topP === 0) throw bad(`Expected top_p in (0, 1] but received 0`, 'top_p');
  const n = numberIn(b, 'n', 1, 8, 1, true);
  let stop: string[] = [];
  if (b.stop !== undefined && b.stop !== null) {
    const s = typeof b.stop === 'string' ? [b.stop] : b.stop;
    if (!Array.isArray(s) || s.length > 4 || s.some((x) => typeof x !== 'string' || x === '')) throw bad(`Expected a non-empty string or up to 4 of them for 'stop' but received ${describe(b.stop)}`, 'stop');
    stop = s as string[];
  }
  let seed: number | undefined;
  if (b.seed !== undefined && b.seed !== null) {
    if (!Number.isSafeInteger(b.seed) || (b.seed as number) < 0) throw bad(`Expected a non-negative integer for 'seed' but received ${describe(b.seed)}`, 'seed');
    seed = b.seed as number;
  }
  if (b.stream !== undefined && b.stream !== null && typeof b.stream !== 'boolean') throw bad(`Expected a boolean for 'stream' but received ${describe(b.stream)}`, 'stream');
  const stream = b.stream === true;
  let includeUsage = false;
  if (b.stream_options !== undefined && b.stream_options !== null) {
    const so = b.stream_options as Record<string, unknown>;
    if (typeof so !== 'object' || Array.isArray(so) || Object.keys(so).some((k) => k !== 'include_usage') || (so.include_usage !== undefined && typeof so.include_usage !== 'boolean')) {
      throw bad(`Expected {include_usage: boolean} for 'stream_options' but received ${describe(b.stream_options)}`, 'stream_options');
    }
    if (!stream) throw bad(`'stream_options' is only allowed when 'stream' is true`, 'stream_options');
    includeUsage = so.include_usage === true;
  }
  // completions: logprobs = alternatives per token (0..5); chat: logprobs true, top_logprobs 0..20
  let logprobs: number | null = null;
  if (chat) {
    if (b.logprobs !== undefined && b.logprobs !== null && typeof b.logprobs !== 'boolean') throw bad(`Expected a boolean for 'logprobs' but received ${describe(b.logprobs)}`, 'logprobs');
    const top = numberIn(b, 'top_logprobs', 0, 20, 0, true);
    if (b.top_logprobs !== undefined && b.top_logprobs !== null && b.logprobs !== true) throw bad(`'top_logprobs' needs 'logprobs' set to true`, 'top_logprobs');
    if (b.logprobs === true) logprobs = top;
  } else if (b.logprobs !== undefined && b.logprobs !== null) {
    logprobs = numberIn(b, 'logprobs', 0, 5, 0, true);
  }
  for (const k of ['echo', 'best_of', 'suffix', 'logit_bias']) {
    const v = b[k];
    if (v !== undefined && v !== null && v !== false && !(k === 'best_of' && v === 1)) throw bad(`'${k}' is not supported by this server yet`, k);
  }
  for (const k of ['presence_penalty', 'frequency_penalty']) {
    if (b[k] !== undefined && b[k] !== null && b[k] !== 0) throw bad(`'${k}' is not supported by this server yet (only 0)`, k);
  }
  if (b.routing !== undefined && b.routing !== null && typeof b.routing !== 'boolean') throw bad(`Expected a boolean for 'routing' but received ${describe(b.routing)}`, 'routing');
  return { maxTokens, temperature, topP, n, stop, seed, stream, includeUsage, logprobs, routing: b.routing === true };
}

/** A slot gate: `concurrency` holders at once, `queue` waiters, then refusals. */
class Slots {
  private active = 0;
  private waiting: Array<() => void> = [];
  constructor(private readonly concurrency: number, private readonly queue: number) {}
  get depth(): number {
    return this.waiting.length;
  }
  get running(): number {
    return this.active;
  }
  async acquire(signal: AbortSignal): Promise<void> {
    if (this.active < this.concurrency) {
      this.active++;
      return;
    }
    if (this.waiting.length >= this.queue) throw new ApiError(429, `The server is at capacity (${this.concurrency} generating, ${this.queue} queued); retry later`, 'rate_limit_exceeded');
    await new Promise<void>((resolve, reject) => {
      const go = () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = () => {
        this.waiting = this.waiting.filter((w) => w !== go);
        reject(new ApiError(499, 'client closed the request', 'aborted'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(go);
    });
  }
  release(): void {
    const next = this.waiting.shift();
    if (next) next();  // the slot passes straight to the next waiter
    else this.active--;
  }
}

/** Builds the app (not listening); serve() listens. */
export async function buildApp(o: ServeOptions): Promise<{ app: FastifyInstance; slots: Slots; engine: BatchEngine }> {
  if (!(o?.model instanceof DualRouteLM)) throw new ValueError(`serve: Expected a DualRouteLM for model but received ${describe(o?.model)}`);
  if (!o.tokenizer || typeof o.tokenizer.encode !== 'function') throw new ValueError(`serve: Expected a tokenizer but received ${describe(o.tokenizer)}`);
  if (o.tokenizer.vocabSize > o.model.config.vocabSize) {
    throw new ValueError(`serve: the tokenizer's vocabulary (${o.tokenizer.vocabSize}) is larger than the model's (${o.model.config.vocabSize})`);
  }
  const model = o.model;
  const tok = o.tokenizer;
  const name = o.modelName ?? 'dualroute';
  const l: Required<ServeLimits> = {
    bodyBytes: o.limits?.bodyBytes ?? 1 << 20,
    promptTokens: o.limits?.promptTokens ?? model.config.maxSeq - 1,
    maxTokens: o.limits?.maxTokens ?? 1024,
    concurrency: o.limits?.concurrency ?? 32,
    batch: o.limits?.batch ?? 16,
    queue: o.limits?.queue ?? 64,
  };
  for (const [k, v] of Object.entries(l)) {
    if (!Number.isInteger(v) || v < (k === 'queue' ? 0 : 1)) throw new ValueError(`serve: Expected a positive integer for limits.${k} but received ${describe(v)}`);
  }
  model.eval();
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const Fastify = require('fastify') as typeof import('fastify');
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const prom = require('prom-client') as typeof import('prom-client');
  const app = Fastify.default({ bodyLimit: l.bodyBytes, logger: false });
  const slots = new Slots(l.concurrency, l.queue);
  const registry = new prom.Registry();
  const stepTime = new prom.Histogram({ name: 'dualroute_decode_step_seconds', help: 'Wall time of a decode step (every running sequence one token)', buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5], registers: [registry] });
  const batchSize = new prom.Histogram({ name: 'dualroute_decode_batch_size', help: 'Sequences sharing a decode step', buckets: [1, 2, 4, 8, 16, 32, 64, 128], registers: [registry] });
  const engine = new BatchEngine(model, {
    maxBatch: l.batch, collectRouting: true,
    onStep: (st) => {
      if (st.kind !== 'decode') return;
      stepTime.observe(st.ms / 1000);
      batchSize.observe(st.sequences);
    },
  });
  app.addHook('onClose', async () => {
    await engine.close();
  });

  const requests = new prom.Counter({ name: 'dualroute_requests_total', help: 'HTTP requests by route and status', labelNames: ['route', 'status'], registers: [registry] });
  const tokens = new prom.Counter({ name: 'dualroute_tokens_total', help: 'Tokens by kind (prompt, generated)', labelNames: ['kind'], registers: [registry] });
  new prom.Gauge({ name: 'dualroute_queue_depth', help: 'Requests waiting for a generation slot', registers: [registry], collect() { this.set(slots.depth); } });
  new prom.Gauge({ name: 'dualroute_running', help: 'Requests generating', registers: [registry], collect() { this.set(slots.running); } });
  const ttft = new prom.Histogram({ name: 'dualroute_time_to_first_token_seconds', help: 'Time from request to first generated token', buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [registry] });
  const perToken = new prom.Histogram({ name: 'dualroute_time_per_output_token_seconds', help: 'Time between generated tokens', buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers: [registry] });

  // the engine: sequences, steps, cache bytes per path kind, and the routing seen per layer
  new prom.Gauge({ name: 'dualroute_sequences', help: 'Sequences in the continuous batch (running) or waiting for a cache slot', labelNames: ['state'], registers: [registry],
    collect() {
      this.set({ state: 'running' }, engine.runningCount);
      this.set({ state: 'waiting' }, engine.waitingCount);
    } });
  const seen = { decode: 0, prefill: 0 };
  new prom.Counter({ name: 'dualroute_engine_steps_total', help: 'Engine steps: decode (every running sequence one token) and prefill (one prompt chunk)', labelNames: ['kind'], registers: [registry],
    collect() {
      this.inc({ kind: 'decode' }, engine.stats.decodeSteps - seen.decode);
      this.inc({ kind: 'prefill' }, engine.stats.prefillSteps - seen.prefill);
      seen.decode = engine.stats.decodeSteps;
      seen.prefill = engine.stats.prefillSteps;
    } });
  new prom.Gauge({ name: 'dualroute_decode_batch', help: 'Sequences in the last decode step', registers: [registry], collect() { this.set(engine.stats.lastBatch); } });
  new prom.Gauge({ name: 'dualroute_kv_cache_bytes', help: 'Decode cache bytes by path kind: allocated, and holding positions of running sequences (used)', labelNames: ['kind', 'state'], registers: [registry],
    collect() {
      for (const [kind, b] of Object.entries(engine.cacheBytes())) {
        this.set({ kind, state: 'allocated' }, b.allocated);
        this.set({ kind, state: 'used' }, b.used);
      }
    } });
  const layerKinds = model.config.layers.map((c, i) => ({ layer: String(i), local: c.local, global: c.global }));
  new prom.Gauge({ name: 'dualroute_gate_mean', help: 'Mean weight of each path per generated token, per layer (layers mixing two paths)', labelNames: ['layer', 'path'], registers: [registry],
    collect() {
      engine.stats.layers.forEach((st, i) => {
        if (!st.gates || !st.tokens) return;
        this.set({ layer: layerKinds[i].layer, path: 'local' }, st.gates[0] / st.tokens);
        this.set({ layer: layerKinds[i].layer, path: 'global' }, st.gates[1] / st.tokens);
      });
    } });
  new prom.Gauge({ name: 'dualroute_routed_fraction', help: 'Fraction of generated tokens a routed (Mixture-of-Depths) global path took, per layer', labelNames: ['layer'], registers: [registry],
    collect() {
      engine.stats.layers.forEach((st, i) => {
        if (st.routed !== null && st.tokens) this.set({ layer: layerKinds[i].layer }, st.routed / st.tokens);
      });
    } });
  new prom.Gauge({ name: 'dualroute_segment_choice', help: 'Segment or NSA global paths, per layer: segments read per token besides its own (reads), and their mean distance back from it in segments (distance)', labelNames: ['layer', 'stat'], registers: [registry],
    collect() {
      engine.stats.layers.forEach((st, i) => {
        if (st.segmentReads === null || !st.tokens) return;
        this.set({ layer: layerKinds[i].layer, stat: 'reads' }, st.segmentReads / st.tokens);
        this.set({ layer: layerKinds[i].layer, stat: 'distance' }, st.segmentReads ? st.segmentDistance! / st.segmentReads : 0);
      });
    } });
  new prom.Gauge({ name: 'dualroute_expert_tokens', help: 'Generated tokens whose first choice was each expert, per MoE layer', labelNames: ['layer', 'expert'], registers: [registry],
    collect() {
      engine.stats.layers.forEach((st, i) => st.experts?.forEach((c, e) => this.set({ layer: layerKinds[i].layer, expert: String(e) }, c)));
    } });

  const sendError = (reply: FastifyReply, e: ApiError) => {
    reply.code(e.status).send({ error: { message: e.message, type: e.type, param: e.param, code: e.code } });
  };
  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    if (err instanceof ApiError) return sendError(reply, err);
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    const type = status === 413 ? 'request_too_large' : status < 500 ? 'invalid_request_error' : 'server_error';
    const message = status === 413 ? `The request body is larger than ${l.bodyBytes} bytes` : err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' ? 'Expected Content-Type: application/json' : status < 500 ? `Invalid request: ${err.message}` : 'The server failed on this request';
    sendError(reply, new ApiError(status, message, type));
  });
  app.addHook('onResponse', async (req, reply) => {
    requests.inc({ route: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) });
  });

  app.get('/health', async () => ({ status: 'ok', running: slots.running, queued: slots.depth }));
  app.get('/v1/models', async () => ({ object: 'list', data: [{ id: name, object: 'model', created: 0, owned_by: 'dualroute' }] }));
  // the routing view: the layers' paths, and the page
  app.get('/v1/routing', async () => ({
    model: name,
    layers: model.config.layers.map((L, index) => ({
      index, local: L.local, global: L.global, fusion: L.local !== 'none' && L.global !== 'none' ? L.fusion : null, moe: model.config.ffn === 'moe',
    })),
  }));
  app.get('/', async (_req, reply) => {
    reply.header('content-type', 'text/html; charset=utf-8');
    reply.header('content-security-policy', "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'");
    return PAGE_HTML;
  });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', registry.contentType);
    return registry.metrics();
  });

  // the prompt's ids, checked against the limits
  const encode = (text: string, param: string): number[] => {
    const ids = tok.encode(text);
    if (ids.length === 0 && tok.bosId !== null) ids.push(tok.bosId);
    if (ids.length === 0) throw bad(`Expected a non-empty prompt`, param);
    if (ids.length > l.promptTokens) throw bad(`The prompt is ${ids.length} tokens long; at most ${l.promptTokens} are allowed`, param);
    return ids;
  };

  interface Choice { text: string; finish: 'stop' | 'length'; tokens: number; logprobs: TokenLogprob[]; routing: TokenRoute[] | null }
  interface TokenLogprob { token: string; logprob: number; bytes: number[]; top: Array<{ token: string; logprob: number; bytes: number[] }>; offset: number }

  const piece = (id: number) => tok.decode([id]);
  const bytesOf = (t: string) => Array.from(Buffer.from(t, 'utf8'));
  const entry = (t: EngineToken, offset: number): TokenLogprob => {
    const text = piece(t.token);
    return {
      token: text, logprob: t.logprob ?? 0, bytes: bytesOf(text), offset,
      top: (t.top ?? []).map((x) => ({ token: piece(x.token), logprob: x.logprob, bytes: bytesOf(piece(x.token)) })),
    };
  };

  // one choice: streams text pieces (and the logprobs of the tokens they cover) to onText; with
  // s.routing once per token, with its routing and the text it shows (maybe ''); stops at a stop
  // string, eos, maxTokens or abort
  const generate = async (prompt: number[], s: Sampling, seed: number, signal: AbortSignal,
    onText: (piece: string, logprobs: TokenLogprob[], route?: TokenRoute) => void, t0: number): Promise<Choice> => {
    const ids: number[] = [];
    const logprobs: TokenLogprob[] = [];
    const routes: TokenRoute[] | null = s.routing ? [] : null;
    let pending = 0;  // logprobs not yet sent with a piece
    let shown = 0;
    let text = '';
    let finish: Choice['finish'] = 'length';
    const room = Math.min(s.maxTokens, model.config.maxSeq - prompt.length);
    let last = t0;
    const inner = new AbortController();
    const onAbort = () => inner.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    const flush = (p: string, route?: TokenRoute) => {
      onText(p, logprobs.slice(pending), route);
      pending = logprobs.length;
    };
    try {
      if (room <= 0) return { text: '', finish: 'length', tokens: 0, logprobs, routing: routes };
      const it = engine.submit(prompt, { maxTokens: room, temperature: s.temperature, topP: s.topP, seed, signal: inner.signal, routing: s.routing, ...(s.logprobs !== null ? { logprobs: s.logprobs } : {}) });
      for await (const t of it) {
        const now = performance.now();
        if (ids.length === 0) ttft.observe((now - t0) / 1000);
        else perToken.observe((now - last) / 1000);
        last = now;
        if (tok.eosId !== null && t.token === tok.eosId) {
          finish = 'stop';
          break;
        }
        ids.push(t.token);
        if (s.logprobs !== null) logprobs.push(entry(t, text.length));
        text = tok.decode(ids);
        // a stop string ends the text before it
        let cut = -1;
        for (const st of s.stop) {
          const at = text.indexOf(st, Math.max(0, shown - st.length));
          if (at >= 0 && (cut < 0 || at < cut)) cut = at;
        }
        if (cut >= 0) {
          text = text.slice(0, cut);
          finish = 'stop';
        }
        // hold back what could still become a stop string or an incomplete character
        let safe = text.length;
        if (finish !== 'stop') {
          if (text.endsWith('\uFFFD')) safe = text.lastIndexOf('\uFFFD');
          for (const st of s.stop) for (let k = Math.min(st.length - 1, text.length); k > 0; --k) if (text.endsWith(st.slice(0, k))) safe = Math.min(safe, text.length - k);
        }
        const piece = safe > shown ? text.slice(shown, safe) : '';
        shown = Math.max(shown, safe);
        if (routes && t.routing) {
          const r = { token: t.token, piece: tok.decode([t.token]), layers: t.routing.layers };
          routes.push(r);
          flush(piece, r);
        } else if (piece) {
          flush(piece);
        }
        if (finish === 'stop') break;
      }
    } catch (e) {
      if (!(e instanceof Error && e.name === 'AbortError') && !signal.aborted && !inner.signal.aborted) throw e;
    } finally {
      inner.abort();
      signal.removeEventListener('abort', onAbort);
    }
    if (text.length > shown || pending < logprobs.length) flush(text.slice(shown));
    tokens.inc({ kind: 'generated' }, ids.length);
    return { text, finish, tokens: ids.length, logprobs, routing: routes };
  };

  // OpenAI's logprobs objects: completions (tokens, token_logprobs, top_logprobs, text_offset) and chat (content)
  const completionLogprobs = (lp: TokenLogprob[]) => ({
    tokens: lp.map((e) => e.token),
    token_logprobs: lp.map((e) => e.logprob),
    top_logprobs: lp.map((e) => Object.fromEntries(e.top.map((x) => [x.token, x.logprob]))),
    text_offset: lp.map((e) => e.offset),
  });
  const chatLogprobs = (lp: TokenLogprob[]) => ({
    content: lp.map((e) => ({ token: e.token, logprob: e.logprob, bytes: e.bytes, top_logprobs: e.top })),
    refusal: null,
  });

  const handle = (chat: boolean) => async (req: FastifyRequest, reply: FastifyReply) => {
    const t0 = performance.now();
    const b = checkObject(req.body, chat ? CHAT_KEYS : COMPLETION_KEYS);
    if (b.model !== undefined && b.model !== name) throw new ApiError(404, `The model '${String(b.model)}' does not exist (this server serves '${name}')`, 'invalid_request_error', 'model', 'model_not_found');
    let prompts: number[][];
    if (chat) {
      const msgs = b.messages;
      if (!Array.isArray(msgs) || msgs.length === 0) throw bad(`Expected a non-empty array for 'messages' but received ${describe(msgs)}`, 'messages');
      const checked = msgs.map((m, i) => {
        if (m === null || typeof m !== 'object' || typeof (m as { role?: unknown }).role !== 'string' || typeof (m as { content?: unknown }).content !== 'string') {
          throw bad(`Expected messages[${i}] to be {role, content} with string values but received ${describe(m)}`, `messages[${i}]`);
        }
        const { role, content } = m as { role: string; content: string };
        if (!['system', 'user', 'assistant', 'developer'].includes(role)) throw bad(`Expected messages[${i}].role to be system, user, assistant or developer but received '${role}'`, `messages[${i}].role`);
        return { role, content };
      });
      // the tokenizer's chat template when it has one (a template refusing the conversation: 400)
      let text: string;
      try {
        text = renderChat(tok, checked);
      } catch (e) {
        throw bad((e as Error).message, 'messages');
      }
      prompts = [encode(text, 'messages')];
    } else {
      const p = b.prompt;
      if (typeof p === 'string') prompts = [encode(p, 'prompt')];
      else if (Array.isArray(p) && p.length > 0 && p.length <= 16 && p.every((x) => typeof x === 'string')) prompts = (p as string[]).map((x, i) => encode(x, `prompt[${i}]`));
      else throw bad(`Expected a string or an array of up to 16 strings for 'prompt' but received ${describe(p)}`, 'prompt');
    }
    const s = sampling(b, l, chat);
    const promptTokens = prompts.reduce((a, p) => a + p.length, 0);
    const abort = new AbortController();
    // a client that goes away aborts its generation (and frees its caches)
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) abort.abort();
    });
    await slots.acquire(abort.signal);
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const object = chat ? 'chat.completion' : 'text_completion';
    tokens.inc({ kind: 'prompt' }, promptTokens * s.n);
    // no seed: a fresh one per request (a given seed repeats the draws; choice k takes seed + k)
    const base = s.seed ?? randomInt(0, 2 ** 31);
    try {
      const jobs = prompts.flatMap((p, pi) => Array.from({ length: s.n }, (_, k) => ({ p, index: pi * s.n + k, seed: base + k })));
      const lpOf = (lp: TokenLogprob[]) => (s.logprobs === null ? null : chat ? chatLogprobs(lp) : completionLogprobs(lp));
      if (!s.stream) {
        // every choice is a sequence of the batch: they decode together
        const out = await Promise.all(jobs.map((j) => generate(j.p, s, j.seed, abort.signal, () => undefined, t0)));
        const completion = out.reduce((a, c) => a + c.tokens, 0);
        return {
          id, object, created, model: name,
          choices: out.map((c, i) => ({
            ...(chat
              ? { index: i, message: { role: 'assistant', content: c.text }, finish_reason: c.finish, logprobs: lpOf(c.logprobs) }
              : { index: i, text: c.text, finish_reason: c.finish, logprobs: lpOf(c.logprobs) }),
            ...(c.routing ? { routing: c.routing } : {}),
          })),
          usage: { prompt_tokens: promptTokens * s.n, completion_tokens: completion, total_tokens: promptTokens * s.n + completion },
        };
      }
      reply.hijack();
      const raw = reply.raw;
      raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
      const chunkType = chat ? 'chat.completion.chunk' : 'text_completion';
      const send = (obj: object) => {
        if (!raw.writableEnded && !raw.destroyed) raw.write(`data: ${JSON.stringify(obj)}\n\n`);
      };
      const chunk = (index: number, delta: { text?: string; role?: boolean; finish?: string }, lp: TokenLogprob[] | null, route?: TokenRoute) => (chat
        ? { id, object: chunkType, created, model: name, choices: [{ index, delta: delta.role ? { role: 'assistant', content: '' } : delta.text !== undefined ? { content: delta.text } : {}, finish_reason: delta.finish ?? null, logprobs: lp && lp.length ? lpOf(lp) : null, ...(route ? { routing: route } : {}) }] }
        : { id, object: chunkType, created, model: name, choices: [{ index, text: delta.text ?? '', finish_reason: delta.finish ?? null, logprobs: lp && lp.length ? lpOf(lp) : null, ...(route ? { routing: route } : {}) }] });
      const results = await Promise.all(jobs.map(async (j) => {
        if (chat) send(chunk(j.index, { role: true }, null));
        const c = await generate(j.p, s, j.seed, abort.signal, (text, lp, route) => send(chunk(j.index, { text }, lp, route)), t0);
        if (!abort.signal.aborted) send(chunk(j.index, { finish: c.finish }, null));
        return c;
      }));
      const completion = results.reduce((a, c) => a + c.tokens, 0);
      if (s.includeUsage) send({ id, object: chunkType, created, model: name, choices: [], usage: { prompt_tokens: promptTokens * s.n, completion_tokens: completion, total_tokens: promptTokens * s.n + completion } });
      if (!raw.writableEnded && !raw.destroyed) raw.end('data: [DONE]\n\n');
      requests.inc({ route: chat ? '/v1/chat/completions' : '/v1/completions', status: '200' });
      return reply;
    } finally {
      slots.release();
    }
  };
  app.post('/v1/completions', handle(false));
  app.post('/v1/chat/completions', handle(true));
  return { app, slots, engine };
}

/** Builds the app and listens on host:port (default 127.0.0.1:8080). */
export async function serve(o: ServeOptions): Promise<Server> {
  const { app, engine } = await buildApp(o);
  const host = o.host ?? '127.0.0.1';
  await app.listen({ host, port: o.port ?? 8080 });
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : o.port ?? 8080;
  return { app, engine, url: `http://${host}:${port}`, close: () => app.close() };
}
