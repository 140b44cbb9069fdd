// lib/train/plots.ts: vega-lite specs rendered to SVG (titles, axis titles, token labels) and to
// PNG (decoded with pngjs: the asked width, a plausible height, not blank, the loss lines'
// colours, more than one heatmap colour where gates differ), atomic writes into the run folder,
// metrics.jsonl with a truncated last line, and the errors of bad specs and arguments.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PNG } from 'pngjs';
import * as dr from '../../lib';
import { LOSS_COLORS, lossCurvesSpec, plotRouting, plotRun, readLossRecords, renderSvg, routingHeatmapSpec, svgToPng, writePlots } from '../../lib/train/plots';
import type { LayerTrace, RoutingTrace } from '../../lib/models';

const made: string[] = [];
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'dualroute-plots-'));
  made.push(d);
  return d;
};
afterAll(() => made.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

const records = () => {
  const r: Array<{ step: number; split: 'train' | 'val'; loss: number }> = [];
  for (let s = 0; s <= 200; s += 4) r.push({ step: s, split: 'train', loss: 3 * Math.exp(-s / 60) + 1 + 0.1 * Math.sin(s) });
  for (let s = 0; s <= 200; s += 40) r.push({ step: s, split: 'val', loss: 3 * Math.exp(-s / 60) + 1.2 });
  return r;
};

const hex = (c: string) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));

// pixels within `tol` (per channel) of a colour
function countNear(img: PNG, rgb: number[], tol = 24): number {
  let n = 0;
  for (let i = 0; i < img.data.length; i += 4) {
    if (Math.abs(img.data[i] - rgb[0]) <= tol && Math.abs(img.data[i + 1] - rgb[1]) <= tol && Math.abs(img.data[i + 2] - rgb[2]) <= tol) n += 1;
  }
  return n;
}

// colours (exact RGB) by pixel count
function histogram(img: PNG): Map<number, number> {
  const h = new Map<number, number>();
  for (let i = 0; i < img.data.length; i += 4) {
    const k = (img.data[i] << 16) | (img.data[i + 1] << 8) | img.data[i + 2];
    h.set(k, (h.get(k) ?? 0) + 1);
  }
  return h;
}

// colourful (not white, grey or black) colours covering at least `min` pixels: heatmap cells, not text or gradients
function cellColours(img: PNG, min: number): number {
  let n = 0;
  for (const [k, c] of histogram(img)) {
    const r = (k >> 16) & 255, g = (k >> 8) & 255, b = k & 255;
    if (c >= min && Math.max(r, g, b) - Math.min(r, g, b) > 40) n += 1;
  }
  return n;
}

const svgSize = (svg: string) => {
  const m = /<svg[^>]*\swidth="([\d.]+)"[^>]*\sheight="([\d.]+)"/.exec(svg)!;
  return [Number(m[1]), Number(m[2])];
};

function trace(S: number, gate: (s: number) => number, extra: Partial<LayerTrace> = {}): RoutingTrace {
  const layer: LayerTrace = {
    local: 'window', global: 'full', fusion: 'gated', gates: Array.from({ length: S }, (_, s) => [1 - gate(s), gate(s)]),
    routed: null, expert: null, expertLoad: null, nsaGates: null, segments: null, ...extra,
  };
  return { tokens: Array.from({ length: S }, (_, s) => s % 5), layers: [layer] };
}

describe('loss curves', () => {
  test('SVG has the title and axis titles; the PNG has the asked width, a plausible height, and both lines\' colours', async () => {
    const spec = lossCurvesSpec(records(), { title: 'Tiny run', width: 200, height: 120 });
    const svg = await renderSvg(spec);
    expect(svg.startsWith('<svg')).toBe(true);
    for (const s of ['>Tiny run<', '>Step<', '>Loss<', '>train<', '>validation<']) expect(svg).toContain(s);
    const [w, h] = svgSize(svg);
    const img = PNG.sync.read(svgToPng(svg, { width: 500 }));
    expect(img.width).toBe(500);
    expect(Math.abs(img.height - Math.round((h * 500) / w))).toBeLessThanOrEqual(1);
    expect(img.height).toBeGreaterThan(150);
    expect(histogram(img).size).toBeGreaterThan(20);
    expect(countNear(img, hex(LOSS_COLORS.train))).toBeGreaterThan(100);
    expect(countNear(img, hex(LOSS_COLORS.val))).toBeGreaterThan(100);
    // the default width: twice the SVG's
    expect(PNG.sync.read(svgToPng(svg)).width).toBe(2 * w);
  });

  test('log scale, thinning of long train series, and record checks naming the field', () => {
    const spec = lossCurvesSpec(records(), { logScale: true }) as { encoding: { y: { scale: unknown; title: string } } };
    expect(spec.encoding.y.scale).toEqual({ type: 'log' });
    expect(spec.encoding.y.title).toMatch(/log/);
    const many = Array.from({ length: 5000 }, (_, i) => ({ step: i, split: 'train' as const, loss: 1 + 1 / (i + 1) }));
    const thin = lossCurvesSpec([...many, { step: 10, split: 'val', loss: 2 }], { maxPoints: 500 }) as { data: { values: Array<{ split: string; step: number }> } };
    expect(thin.data.values.filter((r) => r.split === 'train')).toHaveLength(500);
    expect(thin.data.values.filter((r) => r.split === 'val')).toHaveLength(1);
    expect(thin.data.values[0].step).toBeCloseTo(4.5, 6);  // the mean of steps 0..9
    const bad = [{ step: 1, split: 'train', loss: 1 }, { step: 2, split: 'test', loss: 1 }] as never;
    expect(() => lossCurvesSpec(bad)).toThrow(dr.ValueError);
    expect(() => lossCurvesSpec(bad)).toThrow(/records\[1\]\.split, 'train' or 'val', but received the string "test"/);
    expect(() => lossCurvesSpec([{ step: 1, split: 'train', loss: NaN }])).toThrow(/records\[0\]\.loss, a finite number/);
    expect(() => lossCurvesSpec([{ step: 1, split: 'train', loss: 0 }], { logScale: true })).toThrow(/> 0 for a log scale/);
    expect(() => lossCurvesSpec([])).toThrow(/non-empty array/);
  });
});

describe('routing heatmap', () => {
  test('differing gates give several cell colours, equal gates one; token labels in the SVG', async () => {
    const S = 8;
    const labels = ['The', ' cat', ' sat', '\n', 'on', ' the', ' mat', '.'];
    const varied = await renderSvg(routingHeatmapSpec(trace(S, (s) => s / (S - 1)), { tokens: labels, title: 'Gates' }));
    expect(varied).toContain('>Gates<');
    expect(varied).toContain('>L0 global gate<');
    expect(varied).toContain('·cat');
    expect(varied).toContain('\\n');
    const a = PNG.sync.read(svgToPng(varied, { width: 600 }));
    expect(a.width).toBe(600);
    expect(cellColours(a, 150)).toBeGreaterThanOrEqual(6);
    const flat = PNG.sync.read(svgToPng(await renderSvg(routingHeatmapSpec(trace(S, () => 0.3), { tokens: labels })), { width: 600 }));
    expect(cellColours(flat, 150)).toBe(1);
  });

  test('panels for experts and segments; routed and NSA rows; a decode function labels tokens', async () => {
    const S = 6;
    const t = trace(S, () => 0.5, { routed: [true, false, true, true, false, false], expert: [0, 1, 1, 0, 1, 0], expertLoad: [3, 3], segments: [[0], [0], [1, 0], [1, 0], [2, 1], [2, 0]] });
    t.layers.push({ local: 'none', global: 'nsa', fusion: null, gates: null, routed: null, expert: null, expertLoad: null, nsaGates: Array.from({ length: S }, () => [0.2, 0.5, 0.9]), segments: null });
    t.layers.push({ local: 'conv', global: 'full', fusion: 'concat', gates: null, routed: null, expert: null, expertLoad: null, nsaGates: null, segments: null });
    const spec = routingHeatmapSpec(t, { tokens: (id) => `tok${id}` }) as { vconcat: unknown[] };
    expect(spec.vconcat).toHaveLength(3);
    const svg = await renderSvg(spec);
    for (const s of ['>L0 routed<', '>L1 nsa selected<', '>L2 (no gate)<', '>First-choice expert<', '>L0: segments read (head 0)<', '>tok3<']) expect(svg).toContain(s);
    const img = PNG.sync.read(svgToPng(svg, { width: 400 }));
    expect(img.width).toBe(400);
    // category10's first two colours: the two experts
    expect(countNear(img, hex('#1f77b4'), 6)).toBeGreaterThan(50);
    expect(countNear(img, hex('#ff7f0e'), 6)).toBeGreaterThan(50);
  });

  test('256 positions: narrow cells and at most ~64 position labels', () => {
    const spec = routingHeatmapSpec(trace(256, (s) => (s % 7) / 6), { tokens: Array.from({ length: 256 }, (_, i) => `t${i}`) }) as {
      vconcat: Array<{ width: { step: number }; encoding: { x: { axis: { values: number[] } } } }>;
    };
    const p = spec.vconcat[0];
    expect(p.width.step * 256).toBeLessThanOrEqual(900);
    expect(p.encoding.x.axis.values.length).toBeLessThanOrEqual(64);
    expect(p.encoding.x.axis.values[0]).toBe(0);
  });

  test('bad traces and options are typed errors', () => {
    expect(() => routingHeatmapSpec({} as RoutingTrace)).toThrow(/Expected a RoutingTrace/);
    const t = trace(4, () => 0.5);
    t.layers[0].gates!.pop();
    expect(() => routingHeatmapSpec(t)).toThrow(dr.ShapeError);
    expect(() => routingHeatmapSpec(t)).toThrow(/trace.layers\[0\].gates with one entry per position \(4\) but received an array of length 3/);
    expect(() => routingHeatmapSpec(trace(4, () => 0.5), { tokens: ['a'] })).toThrow(/options.tokens with one string per position \(4\)/);
  });
});

describe('rendering errors', () => {
  test('a bad spec is a clear ValueError', async () => {
    await expect(renderSvg(null as unknown as object)).rejects.toThrow(/Expected a vega-lite spec \(an object\) but received null/);
    await expect(renderSvg({ data: { values: [{ a: 1 }] }, mark: 'nonsense' })).rejects.toThrow(/spec\.mark: Expected one of 'arc'.* but received the string "nonsense"/);
    await expect(renderSvg({ layer: [{ mark: 'line' }, { mark: { type: 'pie' } }] })).rejects.toThrow(/spec\.layer\[1\]\.mark/);
    await expect(renderSvg({})).rejects.toThrow(dr.ValueError);
    await expect(renderSvg({})).rejects.toThrow(/does not compile/);
    await expect(renderSvg({ data: { values: [{ a: 1 }] }, mark: 'point', transform: [{ filter: 'datum.a +* 2' }] })).rejects.toThrow(/does not compile/);
    await expect(renderSvg({ data: { url: 'http://example.com/data.json' }, mark: 'point', encoding: { x: { field: 'a', type: 'quantitative' } } }))
      .rejects.toThrow(/Expected inline data .*http:\/\/example.com\/data.json/);
  });

  test('svgToPng: an SVG that does not parse is a FormatError; a bad width a ValueError', () => {
    expect(() => svgToPng('<svg><g>')).toThrow(dr.FormatError);
    expect(() => svgToPng('')).toThrow(/Expected an SVG document/);
    const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="5"><rect width="10" height="5" fill="red"/></svg>';
    expect(() => svgToPng(svg, { width: 0 })).toThrow(/options.width, an integer in \[1, 16384\], but received number 0/);
    const img = PNG.sync.read(svgToPng(svg, { width: 30 }));
    expect([img.width, img.height]).toEqual([30, 15]);
  });
});

describe('files in the run folder', () => {
  test('writePlots writes name.svg and name.png, leaves no temporary file, replaces atomically', async () => {
    const dir = path.join(tmp(), 'run');
    const small = (title: string) => lossCurvesSpec(records(), { title, width: 120, height: 80 });
    const p = await writePlots(dir, 'loss', small('First'), { width: 300 });
    expect(p).toEqual({ svg: path.join(dir, 'loss.svg'), png: path.join(dir, 'loss.png') });
    expect(fs.readdirSync(dir).sort()).toEqual(['loss.png', 'loss.svg']);
    expect(PNG.sync.read(fs.readFileSync(p.png)).width).toBe(300);
    const before = fs.statSync(p.svg).ino;
    await writePlots(dir, 'loss', small('Second'), { width: 300 });
    expect(fs.readFileSync(p.svg, 'utf8')).toContain('>Second<');
    expect(fs.statSync(p.svg).ino).not.toBe(before);  // a new file renamed over the old one
    expect(fs.readdirSync(dir).sort()).toEqual(['loss.png', 'loss.svg']);
    // a failing render leaves the previous plots as they were
    await expect(writePlots(dir, 'loss', { mark: 'nonsense' })).rejects.toThrow(dr.ValueError);
    expect(fs.readFileSync(p.svg, 'utf8')).toContain('>Second<');
    expect(fs.readdirSync(dir).sort()).toEqual(['loss.png', 'loss.svg']);
    await expect(writePlots(dir, '../escape', small('x'))).rejects.toThrow(/Expected name, a file name/);
    await expect(writePlots(dir, 'a/b', small('x'))).rejects.toThrow(/no folder/);
  });

  test('plotRun reads metrics.jsonl (other lines and fields ignored, a truncated last line tolerated)', async () => {
    const dir = tmp();
    const lines = records().map((r) => JSON.stringify({ ...r, lr: 0.001, tokens: 1000 }));
    lines.splice(3, 0, JSON.stringify({ step: 12, event: 'checkpoint' }), '', 'not json');
    const text = `${lines.join('\n')}\n{"step": 204, "split": "tra`;
    fs.writeFileSync(path.join(dir, 'metrics.jsonl'), text);
    expect(readLossRecords(text)).toHaveLength(records().length);
    const p = await plotRun(dir, { title: 'From metrics', width: 360 });
    expect(fs.readFileSync(p.svg, 'utf8')).toContain('>From metrics<');
    const img = PNG.sync.read(fs.readFileSync(p.png));
    expect(img.width).toBe(360);
    expect(countNear(img, hex(LOSS_COLORS.val))).toBeGreaterThan(20);
    expect(fs.readdirSync(dir).sort()).toEqual(['loss.png', 'loss.svg', 'metrics.jsonl']);
    await expect(plotRun(path.join(dir, 'missing'))).rejects.toThrow(/Expected a metrics file at .*metrics.jsonl but it cannot be read \(ENOENT\)/);
    const empty = tmp();
    fs.writeFileSync(path.join(empty, 'metrics.jsonl'), '{"step": 1, "lr": 0.1}\n');
    await expect(plotRun(empty)).rejects.toThrow(/found none/);
  });

  test('plotRouting writes the heatmap of a model\'s routing trace', async () => {
    const m = new dr.DualRouteLM({ vocabSize: 11, dModel: 8, nHeads: 2, nLayers: 2, maxSeq: 16, ffn: 'moe', moe: { experts: 3, topK: 1 },
      layers: [{ global: 'full', fusion: 'gated', window: 2 }, { local: 'conv', global: 'segment', segment: 3, topK: 2 }], seed: 1 });
    const ids = dr.tensor(Int32Array.from([1, 4, 2, 9, 3, 3, 7, 0, 5]), [1, 9]);
    const tr = m.routingTrace(ids);
    const dir = tmp();
    const p = await plotRouting(dir, tr, (id) => `w${id}`, { width: 500 });
    const svg = fs.readFileSync(p.svg, 'utf8');
    for (const s of ['>L0 global gate<', '>L1 global gate<', '>First-choice expert<', '>L1: segments read (head 0)<', '>w9<']) expect(svg).toContain(s);
    expect(PNG.sync.read(fs.readFileSync(p.png)).width).toBe(500);
    expect(fs.readdirSync(dir).sort()).toEqual(['routing.png', 'routing.svg']);
    ids.dispose();
    m.dispose();
  });
});
