// The OpenAI-compatible server, driven by the official `openai` client: models, completions and
// chat (whole and streamed, with usage), stop sequences, seeds, cancellation through the client's
// AbortController; bad requests answered with the right status and OpenAI's error body, the
// server serving on afterwards; the queue limit (429); /health while decoding; /metrics.
import OpenAI from 'openai';
import * as dr from '../../lib';
import { serve, Server } from '../../lib/serve/server';

const tok = new dr.ByteTokenizer();
let model: dr.DualRouteLM;
let server: Server;
let client: OpenAI;

beforeAll(async () => {
  model = new dr.DualRouteLM({ vocabSize: tok.vocabSize, dModel: 32, nHeads: 2, nLayers: 2, maxSeq: 256, seed: 4,
    pattern: [{ local: 'window', window: 8, global: 'none' }, { local: 'conv', global: 'full', fusion: 'gated' }] });
  server = await serve({ model, tokenizer: tok, port: 0, limits: { concurrency: 2, queue: 1, maxTokens: 200, bodyBytes: 4096 } });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0 });
});
afterAll(async () => {
  await server.close();
  model.dispose();
});

const greedy = async (prompt: string, n: number) => tok.decode((await model.generateTokens(tok.encode(prompt), { maxTokens: n, temperature: 0 }))[0]);

async function post(path: string, body: string, headers: Record<string, string> = { 'content-type': 'application/json' }) {
  const r = await fetch(`${server.url}${path}`, { method: 'POST', headers, body });
  return { status: r.status, json: await r.json().catch(() => null) };
}

describe('serve: the openai client', () => {
  test('models', async () => {
    const list = await client.models.list();
    expect(list.data.map((m) => m.id)).toEqual(['dualroute']);
  });

  test('a completion: greedy text equals the model\'s own generation; usage counts', async () => {
    const want = await greedy('The router', 12);
    const r = await client.completions.create({ model: 'dualroute', prompt: 'The router', max_tokens: 12, temperature: 0 });
    expect(r.object).toBe('text_completion');
    expect(r.choices[0].text).toBe(want);
    expect(r.choices[0].finish_reason).toBe('length');
    expect(r.usage).toEqual({ prompt_tokens: 10, completion_tokens: 12, total_tokens: 22 });
  });

  test('n choices, a seed repeats its draw', async () => {
    const a = await client.completions.create({ model: 'dualroute', prompt: 'abc', max_tokens: 6, temperature: 1, seed: 7, n: 2 });
    const b = await client.completions.create({ model: 'dualroute', prompt: 'abc', max_tokens: 6, temperature: 1, seed: 7, n: 2 });
    expect(a.choices).toHaveLength(2);
    expect(a.choices.map((c) => c.text)).toEqual(b.choices.map((c) => c.text));
  });

  test('stop sequences cut the text before them', async () => {
    const full = await greedy('local path', 40);
    // a stop string that occurs in the greedy continuation
    const stop = full.slice(6, 8);
    expect(stop.length).toBe(2);
    const r = await client.completions.create({ model: 'dualroute', prompt: 'local path', max_tokens: 40, temperature: 0, stop: [stop] });
    expect(r.choices[0].text).toBe(full.slice(0, full.indexOf(stop)));
    expect(r.choices[0].finish_reason).toBe('stop');
    const s = await client.completions.create({ model: 'dualroute', prompt: 'local path', max_tokens: 40, temperature: 0, stop: stop, stream: true });
    let text = '';
    for await (const c of s) text += c.choices[0]?.text ?? '';
    expect(text).toBe(full.slice(0, full.indexOf(stop)));
  });

  test('streaming with usage: the pieces make the whole text', async () => {
    const want = await greedy('segment', 20);
    const s = await client.completions.create({ model: 'dualroute', prompt: 'segment', max_tokens: 20, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage: unknown = null;
    let finish: string | null = null;
    for await (const c of s) {
      if (c.usage) usage = c.usage;
      for (const ch of c.choices) {
        text += ch.text;
        if (ch.finish_reason) finish = ch.finish_reason;
      }
    }
    expect(text).toBe(want);
    expect(finish).toBe('length');
    expect(usage).toEqual({ prompt_tokens: 7, completion_tokens: 20, total_tokens: 27 });
  });

  test('chat, whole and streamed', async () => {
    const messages = [{ role: 'system' as const, content: 'Be brief.' }, { role: 'user' as const, content: 'Hi' }];
    const r = await client.chat.completions.create({ model: 'dualroute', messages, max_tokens: 10, temperature: 0 });
    expect(r.object).toBe('chat.completion');
    expect(r.choices[0].message.role).toBe('assistant');
    expect(r.choices[0].message.content).toBe(await greedy('system: Be brief.\nuser: Hi\nassistant:', 10));
    const s = await client.chat.completions.create({ model: 'dualroute', messages, max_tokens: 10, temperature: 0, stream: true });
    let text = '';
    for await (const c of s) text += c.choices[0]?.delta?.content ?? '';
    expect(text).toBe(r.choices[0].message.content);
  });

  test('cancellation through the client\'s AbortController stops the generation and frees the slot; the server serves on', async () => {
    const generated = async () => Number((await (await fetch(`${server.url}/metrics`)).text()).match(/dualroute_tokens_total\{kind="generated"\} (\d+)/)?.[1] ?? 0);
    const before = await generated();
    const ac = new AbortController();
    // a fixed seed: with a fresh one per request the untrained model's draws could end the stream
    // (its end token) or hold back the bytes of an incomplete character before three chunks came
    // (seen once in CI); this seed's first four draws are printable ASCII (each its own chunk)
    const s = await client.completions.create({ model: 'dualroute', prompt: 'long', max_tokens: 200, temperature: 1, stream: true, seed: 59 }, { signal: ac.signal });
    // read three chunks, then abort and leave the iterator alone: the client's SSE iterator can
    // stay pending after an abort mid-iteration (openai/openai-node#2613; seen here once in ~100
    // runs of `for await` + abort, while the server had already stopped the generation)
    const it = s[Symbol.asyncIterator]();
    let got = 0;
    while (got < 3) {
      const r = await it.next();
      if (r.done) break;
      got += r.value.choices.length;
    }
    expect(got).toBe(3);
    ac.abort();
    for (let i = 0; i < 100; ++i) {
      const h = await (await fetch(`${server.url}/health`)).json();
      if (h.running === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect((await (await fetch(`${server.url}/health`)).json()).running).toBe(0);
    // the server stopped generating soon after the client left (200 tokens were asked for)
    expect((await generated()) - before).toBeLessThan(100);
    const r = await client.completions.create({ model: 'dualroute', prompt: 'after', max_tokens: 3 });
    expect(r.choices[0].text.length).toBeGreaterThan(0);
  });
});

describe('serve: bad requests', () => {
  const cases: Array<[string, string, number, RegExp, Record<string, string>?]> = [
    ['malformed JSON', '{"prompt": "x",', 400, /Invalid request/],
    ['max_tokens of the wrong type', JSON.stringify({ prompt: 'x', max_tokens: 'many' }), 400, /max_tokens/],
    ['negative max_tokens', JSON.stringify({ prompt: 'x', max_tokens: -1 }), 400, /max_tokens/],
    ['huge max_tokens', JSON.stringify({ prompt: 'x', max_tokens: 1e9 }), 400, /max_tokens/],
    ['an unknown field', JSON.stringify({ prompt: 'x', temprature: 0.5 }), 400, /Unrecognized request argument supplied: temprature/],
    ['no prompt', JSON.stringify({ max_tokens: 2 }), 400, /prompt/],
    ['a prompt longer than the model', JSON.stringify({ prompt: 'x'.repeat(400) }), 400, /at most 255/],
    ['an unknown model', JSON.stringify({ model: 'gpt-9', prompt: 'x' }), 404, /does not exist/],
    ['a body over the limit', JSON.stringify({ prompt: 'x'.repeat(5000) }), 413, /larger than 4096 bytes/],
    ['not JSON', 'prompt=x', 415, /Content-Type/, { 'content-type': 'application/x-www-form-urlencoded' }],
    ['stream_options without stream', JSON.stringify({ prompt: 'x', stream_options: { include_usage: true } }), 400, /stream_options/],
  ];
  for (const [what, body, status, re, headers] of cases) {
    test(what, async () => {
      const r = await post('/v1/completions', body, headers);
      expect(r.status).toBe(status);
      expect(r.json.error.message).toMatch(re);
      expect(typeof r.json.error.type).toBe('string');
    });
  }
  test('chat messages of the wrong shape', async () => {
    const r = await post('/v1/chat/completions', JSON.stringify({ messages: [{ role: 'wizard', content: 'x' }] }));
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe('messages[0].role');
  });
  test('the client sees these as its typed errors, and the server serves on', async () => {
    await expect(client.completions.create({ model: 'dualroute', prompt: 'x', max_tokens: -5 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    await expect(client.completions.create({ model: 'nope', prompt: 'x' })).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
  });
});

describe('serve: limits, health and metrics', () => {
  test('past the slots and the queue: 429', async () => {
    // 2 slots and 1 queue place: the fourth concurrent request is refused. The long requests
    // decode greedily, which for this model and prompt never reaches the end-of-text token in
    // 200 tokens (checked first): sampled at temperature 1 about half of them stopped early, and
    // a slot freed before the fourth request arrived made this test flaky.
    const greedyIds = (await model.generateTokens(tok.encode('q'), { maxTokens: 200, temperature: 0 }))[0];
    expect(greedyIds).toHaveLength(200);
    expect(greedyIds).not.toContain(tok.eosId);
    const long = () => client.completions.create({ model: 'dualroute', prompt: 'q', max_tokens: 200, temperature: 0 });
    const running = [long(), long(), long()];
    // wait until two generate and one waits (a loaded machine takes a while to get there)
    let seen = false;
    for (let i = 0; i < 500 && !seen; ++i) {
      const h = await (await fetch(`${server.url}/health`)).json();
      seen = h.running === 2 && h.queued === 1;
      if (!seen) await new Promise((r) => setTimeout(r, 10));
    }
    expect(seen).toBe(true);
    const r = await post('/v1/completions', JSON.stringify({ prompt: 'q', max_tokens: 5 }));
    expect(r.status).toBe(429);
    expect(r.json.error.type).toBe('rate_limit_exceeded');
    await Promise.all(running);
  });

  test('/health answers within 50 ms while two requests decode', async () => {
    const work = [0, 1].map(() => client.completions.create({ model: 'dualroute', prompt: 'busy', max_tokens: 150, temperature: 1 }));
    await new Promise((r) => setTimeout(r, 30));
    const times: number[] = [];
    for (let i = 0; i < 10; ++i) {
      const t = performance.now();
      const h = await fetch(`${server.url}/health`);
      expect(h.status).toBe(200);
      times.push(performance.now() - t);
      await new Promise((r) => setTimeout(r, 10));
    }
    await Promise.all(work);
    times.sort((a, b) => a - b);
    expect(times[Math.floor(times.length / 2)]).toBeLessThan(50);
  });

  test('logprobs: completions (alternatives per token) and chat (streamed), equal to the model\'s log-softmax', async () => {
    const r = await client.completions.create({ model: 'dualroute', prompt: 'gates', max_tokens: 5, temperature: 0, logprobs: 2 });
    const lp = r.choices[0].logprobs!;
    expect(lp.tokens!.join('')).toBe(r.choices[0].text);
    expect(lp.token_logprobs).toHaveLength(5);
    expect(lp.text_offset![0]).toBe(0);
    // the first token's log-probability from a full forward of the prompt
    const ids = tok.encode('gates');
    const row = dr.tidy(() => dr.logSoftmax(model.forward(dr.tensor(Int32Array.from(ids), [1, ids.length], { dtype: 'int32' })), -1).dataSync().slice((ids.length - 1) * model.config.vocabSize));
    const first = tok.encode(r.choices[0].text)[0];
    expect(lp.token_logprobs![0]).toBeCloseTo(row[first], 4);
    lp.top_logprobs!.forEach((top, i) => {
      expect(Object.keys(top).length).toBeGreaterThanOrEqual(1);
      expect(Math.max(...Object.values(top))).toBeCloseTo(lp.token_logprobs![i], 5);  // greedy: the token is the best
    });
    const stream = await client.chat.completions.create({ model: 'dualroute', messages: [{ role: 'user', content: 'hi' }], max_tokens: 6, temperature: 0,
      logprobs: true, top_logprobs: 3, stream: true, stream_options: { include_usage: true } });
    const content: Array<{ token: string; logprob: number; top_logprobs: unknown[] }> = [];
    let usage = 0;
    for await (const c of stream) {
      if (c.usage) usage = c.usage.completion_tokens;
      for (const ch of c.choices) content.push(...((ch.logprobs?.content ?? []) as typeof content));
    }
    expect(content).toHaveLength(usage);
    content.forEach((e) => {
      expect(e.top_logprobs).toHaveLength(3);
      expect(e.logprob).toBeLessThanOrEqual(0);
    });
    expect((await post('/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', content: 'x' }], top_logprobs: 2 }))).status).toBe(400);
    expect((await post('/v1/completions', JSON.stringify({ prompt: 'x', logprobs: 6 }))).json.error.param).toBe('logprobs');
  });

  test('/metrics in the Prometheus format', async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    expect(text).toMatch(/dualroute_requests_total\{route="\/v1\/completions",status="200"\} \d+/);
    expect(text).toMatch(/dualroute_tokens_total\{kind="generated"\} \d+/);
    expect(text).toMatch(/dualroute_time_to_first_token_seconds_bucket/);
    expect(text).toMatch(/dualroute_queue_depth 0/);
    // the engine's and the router's figures
    expect(text).toMatch(/dualroute_kv_cache_bytes\{kind="window",state="allocated"\} [1-9]\d*/);
    expect(text).toMatch(/dualroute_kv_cache_bytes\{kind="full",state="used"\} 0/);  // nothing running now
    expect(text).toMatch(/dualroute_engine_steps_total\{kind="decode"\} [1-9]\d*/);
    const gl = Number(/dualroute_gate_mean\{layer="1",path="global"\} ([\d.e-]+)/.exec(text)![1]);
    const lo = Number(/dualroute_gate_mean\{layer="1",path="local"\} ([\d.e-]+)/.exec(text)![1]);
    expect(gl).toBeGreaterThan(0);
    expect(gl).toBeLessThan(1);
    expect(lo).toBeGreaterThan(0);
    expect(text).not.toMatch(/dualroute_gate_mean\{layer="0"/);  // layer 0 has one path
  });
});

describe('serve: continuous batching across requests', () => {
  test('eight concurrent requests share decode steps; each equals its generation alone', async () => {
    const srv = await serve({ model, tokenizer: tok, port: 0, limits: { concurrency: 8, batch: 8 } });
    try {
      const c = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const prompts = Array.from({ length: 8 }, (_, i) => 'prompt number ' + 'x'.repeat(i * 3));
      const got = await Promise.all(prompts.map((p, i) => c.completions.create({ model: 'dualroute', prompt: p, max_tokens: 20 + i, temperature: 0 })));
      for (let i = 0; i < prompts.length; ++i) expect(got[i].choices[0].text).toBe(await greedy(prompts[i], 20 + i));
      expect(srv.engine.stats.peakBatch).toBeGreaterThanOrEqual(4);
      expect(srv.engine.stats.decodeSteps).toBeLessThan(got.reduce((a, r) => a + r.usage!.completion_tokens, 0) / 2);
    } finally {
      await srv.close();
    }
  });
});
