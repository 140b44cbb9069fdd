// The server's routing view: `routing: true` on completions and chat (whole and streamed) gives
// every generated token's per-layer routing, equal to model.routingTrace over prompt + tokens;
// a non-boolean is refused (400); GET /v1/routing describes the layers; GET / is the page.
import * as dr from '../../lib';
import { serve, Server, TokenRoute } from '../../lib/serve/server';

const tok = new dr.ByteTokenizer();
let model: dr.DualRouteLM;
let server: Server;

beforeAll(async () => {
  model = new dr.DualRouteLM({ vocabSize: tok.vocabSize, dModel: 32, nHeads: 2, nLayers: 3, maxSeq: 128, seed: 9, ffn: 'moe', moe: { experts: 4, topK: 2 },
    layers: [
      { local: 'window', window: 8, global: 'routed', capacity: 0.5, fusion: 'gated' },
      { local: 'conv', global: 'segment', segment: 4, topK: 2, fusion: 'softmax' },
      { local: 'none', global: 'full' },
    ] });
  server = await serve({ model, tokenizer: tok, port: 0, limits: { maxTokens: 64 } });
});
afterAll(async () => {
  await server.close();
  model.dispose();
});

async function post(path: string, body: object) {
  const r = await fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const json: any = await r.json().catch(() => null);
  return { status: r.status, json };
}

// the chunks of a streamed request
// eslint-disable-next-line @typescript-eslint/no-explicit-any
async function stream(path: string, body: object): Promise<any[]> {
  const r = await fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }) });
  expect(r.status).toBe(200);
  const text = await r.text();
  const events = text.split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
  expect(events[events.length - 1]).toBe('[DONE]');
  return events.slice(0, -1).map((e) => JSON.parse(e));
}

// each token's routing against the trace of prompt + tokens at its position
function expectTraceAgrees(prompt: string, routes: TokenRoute[]): void {
  const ids = [...tok.encode(prompt), ...routes.map((r) => r.token)];
  const tr = model.routingTrace(dr.tensor(Int32Array.from(ids), [1, ids.length]));
  const P = ids.length - routes.length;
  routes.forEach((r, k) => {
    expect(r.piece).toBe(tok.decode([r.token]));
    expect(r.layers).toHaveLength(3);
    r.layers.forEach((L, i) => {
      const T = tr.layers[i];
      if (T.gates) T.gates[P + k].forEach((g, j) => expect(Math.abs(L.gates![j] - g)).toBeLessThan(1e-5));
      else expect(L.gates).toBeNull();
      expect(L.routed).toEqual(T.routed ? T.routed[P + k] : null);
      expect(L.expert).toEqual(T.expert![P + k]);
      expect(L.segments).toEqual(T.segments ? T.segments[P + k] : null);
    });
  });
}

describe('routing: true', () => {
  test('a whole completion: one entry per generated token, as routingTrace gives', async () => {
    const r = await post('/v1/completions', { prompt: 'The router', max_tokens: 20, temperature: 0, routing: true });
    expect(r.status).toBe(200);
    const c = r.json.choices[0];
    expect(c.routing).toHaveLength(r.json.usage.completion_tokens);
    expect(tok.decode(c.routing.map((x: TokenRoute) => x.token))).toBe(c.text);
    expectTraceAgrees('The router', c.routing);
    expect(c.routing[0].layers[0].routed).not.toBeNull();
    expect(c.routing[0].layers[1].segments![0]).toBe(Math.floor(tok.encode('The router').length / 4));
    // without it, no routing field; the text is the same
    const plain = await post('/v1/completions', { prompt: 'The router', max_tokens: 20, temperature: 0 });
    expect(plain.json.choices[0].text).toBe(c.text);
    expect('routing' in plain.json.choices[0]).toBe(false);
  });

  test('streamed: one chunk per token carrying {token, piece, layers}; the texts add up', async () => {
    const whole = await post('/v1/completions', { prompt: 'segment', max_tokens: 24, temperature: 0, routing: true });
    const chunks = await stream('/v1/completions', { prompt: 'segment', max_tokens: 24, temperature: 0, routing: true });
    const withRouting = chunks.filter((c) => c.choices[0]?.routing);
    expect(withRouting).toHaveLength(24);
    expect(withRouting.map((c) => c.choices[0].routing)).toEqual(whole.json.choices[0].routing);
    expect(chunks.map((c) => c.choices[0]?.text ?? '').join('')).toBe(whole.json.choices[0].text);
    expect(chunks[chunks.length - 1].choices[0].finish_reason).toBe('length');
    withRouting.forEach((c) => expect(typeof c.choices[0].text).toBe('string'));
  });

  test('a stop string: the token that completes it is reported, the text ends before it', async () => {
    const full = (await post('/v1/completions', { prompt: 'local path', max_tokens: 40, temperature: 0 })).json.choices[0].text as string;
    const stop = full.slice(5, 7);
    const r = await post('/v1/completions', { prompt: 'local path', max_tokens: 40, temperature: 0, stop: [stop], routing: true });
    const c = r.json.choices[0];
    expect(c.finish_reason).toBe('stop');
    expect(c.text).toBe(full.slice(0, full.indexOf(stop)));
    expect(c.routing).toHaveLength(r.json.usage.completion_tokens);
    expect(tok.decode(c.routing.map((x: TokenRoute) => x.token)).startsWith(c.text + stop)).toBe(true);
  });

  test('chat, whole and streamed', async () => {
    const messages = [{ role: 'user', content: 'Hi' }];
    const r = await post('/v1/chat/completions', { messages, max_tokens: 8, temperature: 0, routing: true });
    expect(r.json.choices[0].routing).toHaveLength(8);
    expectTraceAgrees('user: Hi\nassistant:', r.json.choices[0].routing);
    const chunks = await stream('/v1/chat/completions', { messages, max_tokens: 8, temperature: 0, routing: true });
    const routed = chunks.filter((c) => c.choices[0]?.routing);
    expect(routed.map((c) => c.choices[0].routing)).toEqual(r.json.choices[0].routing);
    expect(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('')).toBe(r.json.choices[0].message.content);
  });

  test('n choices each carry their own', async () => {
    const r = await post('/v1/completions', { prompt: ['ab', 'xyz'], max_tokens: 5, temperature: 1, seed: 3, routing: true });
    expect(r.json.choices).toHaveLength(2);
    expectTraceAgrees('ab', r.json.choices[0].routing);
    expectTraceAgrees('xyz', r.json.choices[1].routing);
  });

  test('a non-boolean is refused like any bad field', async () => {
    for (const v of ['yes', 1, [], {}]) {
      const r = await post('/v1/completions', { prompt: 'x', routing: v });
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe('routing');
      expect(r.json.error.message).toMatch(/boolean for 'routing'/);
    }
    const c = await post('/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], routing: 'on' });
    expect(c.status).toBe(400);
    expect(c.json.error.param).toBe('routing');
  });
});

describe('routing metrics', () => {
  test('per layer: gate means, routed fraction, expert tokens, segment choices', async () => {
    await post('/v1/completions', { prompt: 'metrics for every layer', max_tokens: 12, temperature: 0 });
    const text = await (await fetch(`${server.url}/metrics`)).text();
    const num = (re: RegExp) => Number(re.exec(text)![1]);
    const gl = num(/dualroute_gate_mean\{layer="0",path="global"\} ([\d.e-]+)/), lo = num(/dualroute_gate_mean\{layer="0",path="local"\} ([\d.e-]+)/);
    expect(gl).toBeGreaterThan(0);
    expect(lo).toBeGreaterThan(0);
    const routed = num(/dualroute_routed_fraction\{layer="0"\} ([\d.e-]+)/);
    expect(routed).toBeGreaterThanOrEqual(0);
    expect(routed).toBeLessThanOrEqual(1);
    // layer 1 reads its own segment and up to one more (topK 2): at most one other read per token, never ahead
    const reads = num(/dualroute_segment_choice\{layer="1",stat="reads"\} ([\d.e-]+)/);
    expect(reads).toBeGreaterThan(0);
    expect(reads).toBeLessThanOrEqual(1);
    expect(num(/dualroute_segment_choice\{layer="1",stat="distance"\} ([\d.e-]+)/)).toBeGreaterThanOrEqual(1);
    const experts = [...text.matchAll(/dualroute_expert_tokens\{layer="2",expert="\d+"\} (\d+)/g)].map((m) => Number(m[1]));
    expect(experts.length).toBeGreaterThan(1);
    expect(experts.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(12);
    expect(text).not.toMatch(/dualroute_segment_choice\{layer="0"/);
  });
});

describe('GET /v1/routing and GET /', () => {
  test('the layers from the config', async () => {
    const r = await (await fetch(`${server.url}/v1/routing`)).json() as unknown;
    expect(r).toEqual({
      model: 'dualroute',
      layers: [
        { index: 0, local: 'window', global: 'routed', fusion: 'gated', moe: true },
        { index: 1, local: 'conv', global: 'segment', fusion: 'softmax', moe: true },
        { index: 2, local: 'none', global: 'full', fusion: null, moe: true },
      ],
    });
  });

  test('the page: self-contained HTML', async () => {
    const r = await fetch(`${server.url}/`);
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/html; charset=utf-8/);
    expect(r.headers.get('content-security-policy')).toMatch(/default-src 'none'/);
    const html = await r.text();
    expect(html).toMatch(/^<!doctype html>/);
    // no external assets: no link, no src, no url(); the only address is the SVG namespace
    expect(html).not.toMatch(/<link|\bsrc=|url\(|@import/i);
    expect(html.match(/https?:\/\/[^\s"')]+/g)).toEqual(['http://www.w3.org/2000/svg', 'http://www.w3.org/2000/svg']);
    for (const id of ['prompt', 'max-tokens', 'temperature', 'generate', 'layer-select', 'colour-by', 'tokens', 'chart', 'legend']) expect(html).toContain(`data-testid="${id}"`);
  });
});
