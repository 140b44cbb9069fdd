// The routing page end to end in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core; no downloaded browser): the real server with a tiny DualRouteLM (gated
// fusion, a routed global path, an MoE), the page driven by its labels: it streams a greedy
// completion whose tokens and text are the API's, colours each token by the selected layer's
// gates (checked on the computed styles and on the pixels of a screenshot), recolours on a layer
// switch and by expert, and charts each layer's mean global weight. It fails, not skips, when
// Chromium is missing: CI installs it (.ci/run).
import { existsSync } from 'fs';
import { PNG } from 'pngjs';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import * as dr from '../../lib';
import { serve, Server, TokenRoute } from '../../lib/serve/server';
import { CHART_BAR_HEIGHT, EXPERT_COLOURS, GLOBAL_COLOUR, LOCAL_COLOUR } from '../../lib/serve/page';

// the page's globals, in callbacks that run in the browser (the tests compile without the DOM library)
// eslint-disable-next-line @typescript-eslint/no-explicit-any
declare const document: any;
declare function getComputedStyle(e: unknown): { backgroundColor: string };

const CHROMIUM = '/usr/bin/chromium';
const PROMPT = 'The router sends';
const N = 24;
const LONG = 180_000;

const tok = new dr.ByteTokenizer();
let model: dr.DualRouteLM;
let server: Server;
let browser: Browser;
let context: BrowserContext;
let page: Page;
const requests: string[] = [];
const pageErrors: string[] = [];
let api: { text: string; routing: TokenRoute[] };

// the page's documented mapping: LOCAL + w (GLOBAL - LOCAL), w = gates[1] / (gates[0] + gates[1])
const weight = (g: [number, number]) => g[1] / (g[0] + g[1]);
const colourFor = (w: number) => [0, 1, 2].map((i) => Math.round(LOCAL_COLOUR[i] + w * (GLOBAL_COLOUR[i] - LOCAL_COLOUR[i])));
const parseRgb = (s: string) => (s.match(/\d+/g) ?? []).slice(0, 3).map(Number);
const near = (a: number[], b: number[], tol: number) => a.length === 3 && a.every((v, i) => Math.abs(v - b[i]) <= tol);

interface SpanInfo { text: string; token: number; bg: string; colour: string; title: string; cls: string; x: number; y: number; w: number; h: number }
const spans = (): Promise<SpanInfo[]> => page.$$eval('[data-testid="token"]', (els) => {
  const area = document.querySelector('[data-testid="tokens"]')!.getBoundingClientRect();
  return els.map((e) => {
    const r = e.getBoundingClientRect();
    return {
      text: e.getAttribute('data-text') ?? '', token: Number(e.getAttribute('data-token')), bg: getComputedStyle(e).backgroundColor,
      colour: e.getAttribute('data-colour') ?? '', title: e.getAttribute('title') ?? '', cls: e.className,
      x: r.left - area.left, y: r.top - area.top, w: r.width, h: r.height,
    };
  });
});

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`page test: Debian's Chromium is missing (${CHROMIUM}); install it with 'apt-get install -y --no-install-recommends chromium' (.ci/run does)`);
  }
  model = new dr.DualRouteLM({ vocabSize: tok.vocabSize, dModel: 32, nHeads: 2, nLayers: 3, maxSeq: 256, seed: 6, tieEmbeddings: false, ffn: 'moe', moe: { experts: 4, topK: 2 },
    layers: [
      { local: 'window', window: 8, global: 'full', fusion: 'gated' },
      { local: 'conv', global: 'routed', capacity: 0.5, fusion: 'gated' },
      { local: 'window', window: 4, global: 'segment', segment: 8, topK: 2, fusion: 'gated' },
    ] });
  // sharper gates than the initialisation's, so that tokens differ clearly in colour
  dr.noGrad(() => model.layers.forEach((l) => (l.gate as dr.nn.SigmoidGates).proj.forEach((p) => dr.mul_(p.weight, 4))));
  server = await serve({ model, tokenizer: tok, port: 0 });
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { chromium } = require('playwright-core') as typeof import('playwright-core');
  browser = await chromium.launch({
    executablePath: CHROMIUM, timeout: LONG,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking', '--no-first-run'],
  });
  context = await browser.newContext({ viewport: { width: 1000, height: 1000 }, deviceScaleFactor: 1, colorScheme: 'light' });
  context.setDefaultTimeout(LONG);
  page = await context.newPage();
  page.on('request', (r) => requests.push(r.url()));
  page.on('pageerror', (e) => pageErrors.push(String(e)));
}, LONG);

afterAll(async () => {
  await context?.close().catch(() => undefined);
  await browser?.close().catch(() => undefined);
  await server?.close();
  model?.dispose();
}, LONG);

test('the page generates: its tokens and text are the API\'s greedy completion', async () => {
  await page.goto(`${server.url}/`);
  await page.waitForSelector('body[data-ready="true"]');
  expect(await page.locator('[data-testid="layer-select"] option').count()).toBe(3);
  await page.getByLabel('Prompt').fill(PROMPT);
  await page.getByLabel('Max tokens').fill(String(N));
  await page.getByLabel('Temperature').fill('0');
  await page.getByRole('button', { name: 'Generate' }).click();
  await page.waitForSelector('[data-testid="tokens"][data-done="true"], [data-testid="tokens"][data-done="error"]');
  const done = await page.getAttribute('[data-testid="tokens"]', 'data-done');
  if (done !== 'true') throw new Error(`the page failed: ${await page.textContent('[data-testid="error"]')}`);

  const r = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: PROMPT, max_tokens: N, temperature: 0, routing: true }) });
  const c = ((await r.json()) as { choices: Array<{ text: string; routing: TokenRoute[] }> }).choices[0];
  api = { text: c.text, routing: c.routing };
  expect(api.routing).toHaveLength(N);
  // greedy: the model's own generation
  expect(api.routing.map((t) => t.token)).toEqual((await model.generateTokens(tok.encode(PROMPT), { maxTokens: N, temperature: 0 }))[0]);

  const s = await spans();
  expect(s).toHaveLength(api.routing.length);
  expect(s.map((x) => x.token)).toEqual(api.routing.map((t) => t.token));
  expect(s.map((x) => x.text).join('')).toBe(api.text);
  expect(await page.textContent('[data-testid="status"]')).toMatch(new RegExp(`Done: ${N} tokens`));
  // hovering shows the token's routing
  expect(s[0].title).toContain(`token ${api.routing[0].token}`);
  expect(s[0].title).toMatch(/layer 0: local [\d.]+, global [\d.]+/);
  // everything came from the server: no external request
  expect(requests.length).toBeGreaterThan(0);
  expect(requests.filter((u) => !u.startsWith(server.url))).toEqual([]);
  expect(pageErrors).toEqual([]);
}, LONG);

test('the layer switch recolours every token by that layer\'s gates; a routed layer marks taken and skipped tokens', async () => {
  expect(api).toBeDefined();
  const byLayer: string[][] = [];
  for (let layer = 0; layer < 3; ++layer) {
    await page.getByLabel('Layer', { exact: true }).selectOption(String(layer));
    const s = await spans();
    s.forEach((x, k) => {
      const want = colourFor(weight(api.routing[k].layers[layer].gates!));
      expect(near(parseRgb(x.bg), want, 1)).toBe(true);
      expect(near(x.colour.split(',').map(Number), want, 1)).toBe(true);
    });
    byLayer.push(s.map((x) => x.bg));
    if (layer === 1) {
      s.forEach((x, k) => {
        const routed = api.routing[k].layers[1].routed;
        expect(x.cls.split(' ')).toContain(routed ? 'taken' : 'skipped');
      });
      expect(await page.getByTestId('legend').textContent()).toMatch(/taken by global attention/);
    }
  }
  // the layers' colours differ
  expect(byLayer[0]).not.toEqual(byLayer[1]);
  expect(byLayer[1]).not.toEqual(byLayer[2]);

  // colour by expert (the MoE's first choice)
  await page.getByLabel('Layer', { exact: true }).selectOption('2');
  await page.getByLabel('Colour by').selectOption('expert');
  const e = await spans();
  e.forEach((x, k) => expect(parseRgb(x.bg)).toEqual(EXPERT_COLOURS[api.routing[k].layers[2].expert! % 8]));
  expect(await page.getByTestId('legend').textContent()).toMatch(/expert \d/);
  await page.getByLabel('Colour by').selectOption('path');
}, LONG);

test('the chart: one bar per layer, its height the layer\'s mean global weight', async () => {
  expect(api).toBeDefined();
  const bars = await page.$$eval('[data-testid="chart-bar"]', (els) => els.map((e) => ({
    layer: Number(e.getAttribute('data-layer')), mean: Number(e.getAttribute('data-mean')), height: Number(e.getAttribute('height')), bbox: (e as unknown as { getBBox(): { height: number } }).getBBox().height,
  })));
  expect(bars.map((b) => b.layer)).toEqual([0, 1, 2]);
  bars.forEach((b, i) => {
    const mean = api.routing.reduce((a, t) => a + weight(t.layers[i].gates!), 0) / api.routing.length;
    expect(Math.abs(b.mean - mean)).toBeLessThan(1e-6);
    expect(Math.abs(b.height - mean * CHART_BAR_HEIGHT)).toBeLessThan(1e-3);
    expect(Math.abs(b.bbox - mean * CHART_BAR_HEIGHT)).toBeLessThan(0.01);
  });
}, LONG);

test('a screenshot: each token box has its mapped colour, and the colours differ', async () => {
  expect(api).toBeDefined();
  await page.getByLabel('Layer', { exact: true }).selectOption('0');
  await page.getByLabel('Colour by').selectOption('path');
  const area = page.getByTestId('tokens');
  await area.scrollIntoViewIfNeeded();
  const png = PNG.sync.read(await area.screenshot({ animations: 'disabled', caret: 'hide' }));
  const s = await spans();
  const pixel = (x: number, y: number) => {
    const i = (Math.floor(y) * png.width + Math.floor(x)) * 4;
    return [png.data[i], png.data[i + 1], png.data[i + 2]];
  };
  const seen: number[][] = [];
  let checked = 0;
  s.forEach((x, k) => {
    if (x.w < 6 || x.h < 12) return;
    // the box's centre column, in its bottom padding (glyph-free: only the box's colour)
    const px = pixel(x.x + x.w / 2, x.y + x.h - 4);
    const want = colourFor(weight(api.routing[k].layers[0].gates!));
    if (!near(px, want, 3)) throw new Error(`token ${k} (${JSON.stringify(x.text)}): pixel ${px} at (${Math.floor(x.x + x.w / 2)}, ${Math.floor(x.y + x.h - 4)}), want ${want}`);
    seen.push(px);
    checked += 1;
  });
  expect(checked).toBeGreaterThanOrEqual(Math.min(10, s.length));
  // at least two clearly different colours
  let spread = 0;
  for (const a of seen) for (const b of seen) spread = Math.max(spread, Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]));
  expect(spread).toBeGreaterThan(60);
}, LONG);
