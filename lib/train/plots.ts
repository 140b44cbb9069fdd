// Plots of a training run, written into the run folder as SVG and PNG: loss curves (train and
// validation) and a routing heatmap (per layer and position: the global path's weight, routed
// tokens, NSA gates; expert choice and chosen segments in panels beside). A chart is a
// vega-lite spec (a plain object, so a caller can adjust it); renderSvg compiles and renders it
// with vega (no DOM, no canvas), svgToPng rasterises the SVG with resvg (system fonts). Only
// inline data is rendered: the loader refuses URLs and files, so a plot never reaches the network.
// vega, vega-lite and resvg are loaded on the first call, not when dualroute is imported.
import * as fs from 'fs';
import * as nodePath from 'path';
import { randomBytes } from 'crypto';
import { FormatError, ShapeError, ValueError, describe } from '../errors';
import type { RoutingTrace } from '../models/dual_route_lm';
import type { LayerTrace } from '../models/layer';

/** A vega-lite specification (https://vega.github.io/vega-lite/docs/spec.html), as a plain object. */
export type VegaLiteSpec = Record<string, unknown>;

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v5.json';
/** Line colours of the loss curves (Tableau blue and orange). */
export const LOSS_COLORS = { train: '#1f77b4', val: '#ff7f0e' } as const;

// ---- rendering -------------------------------------------------------------------------------

type Vega = typeof import('vega');
type VegaLite = typeof import('vega-lite');
type Resvg = typeof import('@resvg/resvg-js');

let libs: { vega: Vega; vl: VegaLite } | null = null;
function vegaLibs(): { vega: Vega; vl: VegaLite } {
  if (!libs) libs = { vega: require('vega') as Vega, vl: require('vega-lite') as VegaLite };
  return libs;
}

const MARKS = ['arc', 'area', 'bar', 'image', 'line', 'point', 'rect', 'rule', 'text', 'tick', 'trail', 'circle', 'square', 'geoshape', 'boxplot', 'errorband', 'errorbar'];

// vega-lite's own message for an unknown mark is a TypeError from deep inside: name it here
function checkMarks(v: unknown, path: string, depth = 0): void {
  if (depth > 16 || v === null || typeof v !== 'object') return;
  if (Array.isArray(v)) {
    v.forEach((x, i) => checkMarks(x, `${path}[${i}]`, depth + 1));
    return;
  }
  const o = v as Record<string, unknown>;
  if ('mark' in o) {
    const m = o.mark;
    const type = typeof m === 'object' && m !== null ? (m as { type?: unknown }).type : m;
    if (typeof type !== 'string' || !MARKS.includes(type)) {
      throw new ValueError(`renderSvg: ${path}.mark: Expected one of ${MARKS.map((s) => `'${s}'`).join(', ')} but received ${describe(type)}`);
    }
  }
  for (const k of ['layer', 'hconcat', 'vconcat', 'concat', 'spec']) if (k in o) checkMarks(o[k], `${path}.${k}`, depth + 1);
}

interface Logged { errors: string[]; warnings: string[] }

// a vega logger that records instead of printing
function recordingLogger(log: Logged) {
  let lvl = 2;
  const logger = {
    level(l?: number) {
      if (l === undefined) return lvl as never;
      lvl = l;
      return logger;
    },
    error(...a: unknown[]) { log.errors.push(a.map(String).join(' ')); return logger; },
    warn(...a: unknown[]) { log.warnings.push(a.map(String).join(' ')); return logger; },
    info() { return logger; },
    debug() { return logger; },
  };
  return logger;
}

/**
 * Renders a vega-lite spec to an SVG document (a string). The spec is checked (an object, known
 * marks), compiled and rendered headless; data must be inline (`data.values`): loading a URL or
 * a file is refused. Errors are ValueErrors naming what failed.
 */
export async function renderSvg(vegaLiteSpec: object): Promise<string> {
  const name = 'renderSvg';
  if (vegaLiteSpec === null || typeof vegaLiteSpec !== 'object' || Array.isArray(vegaLiteSpec)) {
    throw new ValueError(`${name}: Expected a vega-lite spec (an object) but received ${describe(vegaLiteSpec)}`);
  }
  checkMarks(vegaLiteSpec, 'spec');
  const { vega, vl } = vegaLibs();
  const log: Logged = { errors: [], warnings: [] };
  let runtime: ReturnType<Vega['parse']>;
  try {
    const compiled = vl.compile(vegaLiteSpec as Parameters<VegaLite['compile']>[0], { logger: recordingLogger(log) as never }).spec;
    runtime = vega.parse(compiled);
  } catch (e) {
    throw new ValueError(`${name}: the vega-lite spec does not compile: ${(e as Error).message}`);
  }
  const refused: string[] = [];
  const refuse = (uri: unknown) => {
    refused.push(String(uri));
    return Promise.reject(new Error(`plots render inline data only (refused ${String(uri)})`));
  };
  const loader = { load: refuse, sanitize: refuse, http: refuse, file: refuse };
  const view = new vega.View(runtime, { renderer: 'none', loader: loader as never, logger: recordingLogger(log) as never });
  let svg: string;
  try {
    svg = await view.toSVG();
  } catch (e) {
    throw new ValueError(`${name}: the spec does not render: ${(e as Error).message}`);
  } finally {
    view.finalize();
  }
  if (refused.length > 0) throw new ValueError(`${name}: Expected inline data (data.values) but the spec loads ${refused.map((u) => JSON.stringify(u)).join(', ')}; plots never read URLs or files`);
  if (log.errors.length > 0) throw new ValueError(`${name}: the spec does not render: ${log.errors.join('; ')}`);
  return svg;
}

/** Options of svgToPng. */
export interface PngOptions {
  /** Width of the PNG in pixels; the height follows the SVG's aspect ratio. Default: twice the SVG's width. */
  width?: number;
}

/** The most pixels a side of a PNG may have. */
export const MAX_PNG_SIDE = 16384;

/**
 * Rasterises an SVG document to a PNG (a Buffer) of exactly options.width pixels (default twice
 * the SVG's own width), on white, with the system's fonts (DejaVu Sans for sans-serif when
 * installed). A document that does not parse is a FormatError.
 */
export function svgToPng(svg: string, options: PngOptions = {}): Buffer {
  const name = 'svgToPng';
  if (typeof svg !== 'string' || svg.trim() === '') throw new ValueError(`${name}: Expected an SVG document (a non-empty string) but received ${describe(svg)}`);
  if (options === null || typeof options !== 'object') throw new ValueError(`${name}: Expected an options object { width? } but received ${describe(options)}`);
  const w = options.width;
  if (w !== undefined && (!Number.isInteger(w) || w < 1 || w > MAX_PNG_SIDE)) {
    throw new ValueError(`${name}: Expected options.width, an integer in [1, ${MAX_PNG_SIDE}], but received ${describe(w)}`);
  }
  const { Resvg } = require('@resvg/resvg-js') as Resvg;
  let png: Buffer;
  try {
    const r = new Resvg(svg, {
      fitTo: w === undefined ? { mode: 'zoom', value: 2 } : { mode: 'width', value: w },
      background: 'white',
      font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans', sansSerifFamily: 'DejaVu Sans' },
    });
    png = r.render().asPng();
  } catch (e) {
    throw new FormatError(`${name}: the SVG does not render: ${(e as Error).message}`);
  }
  return png;
}

// ---- loss curves -----------------------------------------------------------------------------

/** One loss value of a run (a line of metrics.jsonl). */
export interface LossRecord {
  step: number;
  split: 'train' | 'val';
  loss: number;
}

/** Options of lossCurvesSpec. */
export interface LossCurvesOptions {
  /** Default 'Loss'. */
  title?: string;
  /** A logarithmic loss axis (every loss must be > 0). Default false. */
  logScale?: boolean;
  /** Plot area in pixels. Defaults 480 and 260. */
  width?: number;
  height?: number;
  /** More train records than this are averaged in consecutive buckets down to it. Default 2000. */
  maxPoints?: number;
}

function posInt(name: string, arg: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isInteger(v) || (v as number) < 1) throw new ValueError(`${name}: Expected ${arg}, a positive integer, but received ${describe(v)}`);
  return v as number;
}

function optString(name: string, arg: string, v: unknown, dflt: string): string {
  if (v === undefined) return dflt;
  if (typeof v !== 'string') throw new ValueError(`${name}: Expected ${arg}, a string, but received ${describe(v)}`);
  return v;
}

// consecutive buckets of n records -> their means (steps and losses)
function thin(rs: LossRecord[], max: number): LossRecord[] {
  if (rs.length <= max) return rs;
  const out: LossRecord[] = [];
  const per = rs.length / max;
  for (let b = 0; b < max; ++b) {
    const part = rs.slice(Math.floor(b * per), Math.floor((b + 1) * per));
    if (part.length === 0) continue;
    out.push({ step: part.reduce((a, r) => a + r.step, 0) / part.length, split: part[0].split, loss: part.reduce((a, r) => a + r.loss, 0) / part.length });
  }
  return out;
}

/**
 * A vega-lite spec of loss against step, one coloured line per split: train as a thin line
 * (averaged in buckets beyond options.maxPoints records), val as a line with points; labelled
 * axes, a legend and a title.
 */
export function lossCurvesSpec(records: LossRecord[], options: LossCurvesOptions = {}): VegaLiteSpec {
  const name = 'lossCurvesSpec';
  if (!Array.isArray(records) || records.length === 0) throw new ValueError(`${name}: Expected a non-empty array of {step, split, loss} records but received ${describe(records)}`);
  if (options === null || typeof options !== 'object') throw new ValueError(`${name}: Expected an options object but received ${describe(options)}`);
  const logScale = options.logScale ?? false;
  if (typeof logScale !== 'boolean') throw new ValueError(`${name}: Expected options.logScale, a boolean, but received ${describe(logScale)}`);
  records.forEach((r, i) => {
    if (r === null || typeof r !== 'object') throw new ValueError(`${name}: Expected records[${i}], a {step, split, loss} object, but received ${describe(r)}`);
    if (typeof r.step !== 'number' || !Number.isFinite(r.step)) throw new ValueError(`${name}: Expected records[${i}].step, a finite number, but received ${describe(r.step)}`);
    if (r.split !== 'train' && r.split !== 'val') throw new ValueError(`${name}: Expected records[${i}].split, 'train' or 'val', but received ${describe(r.split)}`);
    if (typeof r.loss !== 'number' || !Number.isFinite(r.loss)) throw new ValueError(`${name}: Expected records[${i}].loss, a finite number, but received ${describe(r.loss)}`);
    if (logScale && !(r.loss > 0)) throw new ValueError(`${name}: Expected records[${i}].loss > 0 for a log scale but received ${describe(r.loss)}`);
  });
  const maxPoints = posInt(name, 'options.maxPoints', options.maxPoints, 2000);
  const bySplit = (s: 'train' | 'val') => records.filter((r) => r.split === s).map((r) => ({ step: r.step, split: r.split, loss: r.loss })).sort((a, b) => a.step - b.step);
  const train = thin(bySplit('train'), maxPoints);
  const val = bySplit('val');
  const splits = (['train', 'val'] as const).filter((s) => (s === 'train' ? train : val).length > 0);
  return {
    $schema: SCHEMA,
    title: { text: optString(name, 'options.title', options.title, 'Loss'), anchor: 'start' },
    width: posInt(name, 'options.width', options.width, 480),
    height: posInt(name, 'options.height', options.height, 260),
    background: 'white',
    data: { values: [...train, ...val] },
    encoding: {
      x: { field: 'step', type: 'quantitative', title: 'Step', axis: { format: '~s' } },
      y: { field: 'loss', type: 'quantitative', title: logScale ? 'Loss (log scale)' : 'Loss', scale: logScale ? { type: 'log' } : { zero: false } },
      color: {
        field: 'split', type: 'nominal', title: 'Split',
        scale: { domain: splits, range: splits.map((s) => LOSS_COLORS[s]) },
        legend: { labelExpr: "datum.label === 'val' ? 'validation' : datum.label" },
      },
    },
    layer: [
      { transform: [{ filter: "datum.split === 'train'" }], mark: { type: 'line', strokeWidth: 1.25, interpolate: 'linear' } },
      { transform: [{ filter: "datum.split === 'val'" }], mark: { type: 'line', strokeWidth: 2, point: { filled: true, size: 36 } } },
    ],
  };
}

// ---- routing heatmap -------------------------------------------------------------------------

/** Options of routingHeatmapSpec. */
export interface RoutingHeatmapOptions {
  /** Token text for the position labels: one string per position, or a function of the token id. */
  tokens?: readonly string[] | ((id: number) => string);
  /** Default 'Routing per layer and position'. */
  title?: string;
  /** The widest the position axis may be, in pixels (cells shrink to fit, to 2 pixels). Default 900. */
  maxWidth?: number;
}

const NSA_BRANCHES = ['compressed', 'selected', 'sliding'];

// a token as a short, visible label
function tokenLabel(s: string): string {
  const v = s.replace(/\n/g, '\\n').replace(/\t/g, '\\t').replace(/\r/g, '\\r').replace(/ /g, '·').replace(/[\u0000-\u001f\u007f]/g, '?');
  return v.length > 12 ? `${v.slice(0, 11)}…` : v;
}

function checkTrace(name: string, trace: unknown): RoutingTrace {
  const t = trace as RoutingTrace;
  if (t === null || typeof t !== 'object' || !Array.isArray(t.tokens) || !Array.isArray(t.layers)) {
    throw new ValueError(`${name}: Expected a RoutingTrace { tokens, layers } (DualRouteLM.routingTrace) but received ${describe(trace)}`);
  }
  const S = t.tokens.length;
  if (S === 0) throw new ShapeError(`${name}: Expected a trace of at least one position but trace.tokens is empty`);
  t.layers.forEach((L, i) => {
    if (L === null || typeof L !== 'object') throw new ValueError(`${name}: Expected trace.layers[${i}], a LayerTrace, but received ${describe(L)}`);
    for (const k of ['gates', 'routed', 'expert', 'nsaGates', 'segments'] as const) {
      const v = L[k];
      if (v === null || v === undefined) continue;
      if (!Array.isArray(v) || v.length !== S) throw new ShapeError(`${name}: Expected trace.layers[${i}].${k} with one entry per position (${S}) but received ${describe(v)}`);
    }
  });
  return t;
}

// every k-th position labelled so that labels of `px` pixels do not overlap on cells of `w` pixels
function labelStep(S: number, w: number, px: number): number {
  const k = Math.max(1, Math.ceil(px / w));
  const nice = [1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 256, 500, 1000];
  return nice.find((n) => n >= k) ?? k;
}

/**
 * A vega-lite spec of a routing trace: a heatmap whose rows are the layers' routing quantities
 * (the global path's gate, routed 0/1, the NSA branch gates; a grey row for a layer with none)
 * and whose columns are positions, on one sequential 0..1 colour scale with a legend; below it,
 * when the trace has them, the first-choice expert per MoE layer and position, and per segment
 * layer the segments each position reads (own segment and the others). Position labels are the
 * token text when options.tokens is given (every k-th label when cells are narrow), else numbers.
 */
export function routingHeatmapSpec(trace: RoutingTrace, options: RoutingHeatmapOptions = {}): VegaLiteSpec {
  const name = 'routingHeatmapSpec';
  const t = checkTrace(name, trace);
  if (options === null || typeof options !== 'object') throw new ValueError(`${name}: Expected an options object but received ${describe(options)}`);
  const S = t.tokens.length;
  let text: string[] | null = null;
  const tk = options.tokens;
  if (typeof tk === 'function') text = t.tokens.map((id) => String(tk(id)));
  else if (Array.isArray(tk)) {
    if (tk.length !== S) throw new ShapeError(`${name}: Expected options.tokens with one string per position (${S}) but received ${describe(tk)}`);
    text = tk.map(String);
  } else if (tk !== undefined) throw new ValueError(`${name}: Expected options.tokens, an array of strings or a function of the token id, but received ${describe(tk)}`);
  const maxWidth = posInt(name, 'options.maxWidth', options.maxWidth, 900);
  const cell = Math.max(2, Math.min(24, Math.floor(maxWidth / S)));
  const labels = text ? text.map(tokenLabel) : null;
  const step = labelStep(S, cell, labels ? 11 : 26);
  const positions = Array.from({ length: S }, (_, i) => i).filter((i) => i % step === 0);
  const xAxis = {
    title: labels ? 'Token' : 'Position', values: positions, labelAngle: labels ? -60 : 0, labelAlign: labels ? 'right' : 'center',
    labelFontSize: 10, labelOverlap: false, ticks: true,
    ...(labels ? { labelExpr: `${JSON.stringify(labels)}[datum.value]` } : {}),
  };
  const x = { field: 'pos', type: 'ordinal', axis: xAxis, scale: { domain: Array.from({ length: S }, (_, i) => i) } };

  // the heatmap rows: (layer, quantity) -> a value in [0, 1] per position, or none
  const cells: Array<{ row: string; pos: number; value: number | null; what: string }> = [];
  const rows: string[] = [];
  const add = (row: string, what: string, v: (s: number) => number | null) => {
    rows.push(row);
    for (let s = 0; s < S; ++s) cells.push({ row, pos: s, value: v(s), what });
  };
  t.layers.forEach((L: LayerTrace, i) => {
    let any = false;
    if (L.gates) { add(`L${i} global gate`, 'weight of the global path', (s) => L.gates![s][1]); any = true; }
    if (L.routed) { add(`L${i} routed`, 'routed through attention', (s) => (L.routed![s] ? 1 : 0)); any = true; }
    if (L.nsaGates) {
      NSA_BRANCHES.forEach((b, k) => add(`L${i} nsa ${b}`, `gate of the ${b} branch`, (s) => L.nsaGates![s][k]));
      any = true;
    }
    if (!any) add(`L${i} (no gate)`, L.fusion === 'concat' ? 'concat fusion: no gate' : 'one path: no gate', () => null);
  });
  const rowStep = 16;
  const heat = {
    title: { text: 'Routing weights', fontSize: 12, anchor: 'start' },
    width: { step: cell },
    height: { step: rowStep },
    data: { values: cells },
    mark: { type: 'rect' },
    encoding: {
      x,
      y: { field: 'row', type: 'ordinal', title: null, sort: rows, axis: { labelFontSize: 10, labelLimit: 160 } },
      color: {
        condition: { test: 'datum.value === null', value: '#d9d9d9' },
        field: 'value', type: 'quantitative', title: ['weight', '(0 = local/off,', '1 = global/on)'],
        scale: { domain: [0, 1], scheme: 'viridis' },
        legend: { orient: 'right', gradientLength: Math.max(60, Math.min(200, rows.length * rowStep)) },
      },
      tooltip: [{ field: 'row' }, { field: 'pos', title: 'position' }, { field: 'what' }, { field: 'value', format: '.3f' }],
    },
  };
  const panels: object[] = [heat];

  const moe = t.layers.map((L, i) => [L, i] as const).filter(([L]) => L.expert);
  if (moe.length > 0) {
    const E = Math.max(1, ...moe.map(([L]) => (L.expertLoad ? L.expertLoad.length : Math.max(...L.expert!) + 1)));
    const values = moe.flatMap(([L, i]) => L.expert!.map((e, s) => ({ row: `L${i} expert`, pos: s, expert: e })));
    panels.push({
      title: { text: 'First-choice expert', fontSize: 12, anchor: 'start' },
      width: { step: cell },
      height: { step: rowStep },
      data: { values },
      mark: { type: 'rect' },
      encoding: {
        x,
        y: { field: 'row', type: 'ordinal', title: null, sort: moe.map(([, i]) => `L${i} expert`), axis: { labelFontSize: 10 } },
        color: { field: 'expert', type: 'ordinal', title: 'expert', scale: { domain: Array.from({ length: E }, (_, e) => e), scheme: E <= 10 ? 'category10' : 'category20' } },
      },
    });
  }

  for (const [L, i] of t.layers.map((l, j) => [l, j] as const).filter(([l]) => l.segments)) {
    const values = L.segments!.flatMap((segs, s) => segs.map((g, r) => ({ pos: s, segment: g, choice: r === 0 ? 'own segment' : 'selected' })));
    const nseg = Math.max(1, ...values.map((v) => v.segment + 1));
    const segStep = Math.max(3, Math.min(12, Math.floor(160 / nseg)));
    panels.push({
      title: { text: `L${i}: segments read (head 0)`, fontSize: 12, anchor: 'start' },
      width: { step: cell },
      height: { step: segStep },
      data: { values },
      mark: { type: 'rect' },
      encoding: {
        x,
        y: { field: 'segment', type: 'ordinal', title: 'segment', scale: { domain: Array.from({ length: nseg }, (_, g) => g) }, axis: { values: Array.from({ length: nseg }, (_, g) => g).filter((g) => g % labelStep(nseg, segStep, 12) === 0) } },
        color: { field: 'choice', type: 'nominal', title: 'read', scale: { domain: ['own segment', 'selected'], range: ['#9ecae1', '#08519c'] } },
      },
    });
  }
  // the position axis's title once, under the last panel
  panels.forEach((p, k) => {
    if (k < panels.length - 1) {
      const enc = (p as { encoding: { x: object } }).encoding;
      enc.x = { ...x, axis: { ...xAxis, title: null } };
    }
  });
  return {
    $schema: SCHEMA,
    title: { text: optString(name, 'options.title', options.title, 'Routing per layer and position'), anchor: 'start' },
    background: 'white',
    vconcat: panels,
    spacing: 18,
    resolve: { scale: { color: 'independent', x: 'shared' }, legend: { color: 'independent' } },
  };
}

// ---- files -------------------------------------------------------------------------------------

// a file in dir written whole under a temporary name, then renamed over the target
async function writeAtomic(target: string, data: string | Buffer): Promise<void> {
  const tmp = `${target}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  try {
    const fh = await fs.promises.open(tmp, 'wx');
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.promises.rename(tmp, target);
  } catch (e) {
    await fs.promises.unlink(tmp).catch(() => undefined);
    throw e;
  }
}

/** Options of writePlots. */
export interface WritePlotsOptions {
  /** Width of the PNG in pixels (see svgToPng). */
  width?: number;
}

/**
 * Renders a vega-lite spec and writes dir/name.svg and dir/name.png, each atomically (a
 * temporary file renamed over the target: a reader sees the old plot or the new one, never
 * half of one). Creates dir. Returns the two paths.
 */
export async function writePlots(dir: string, name: string, spec: object, options: WritePlotsOptions = {}): Promise<{ svg: string; png: string }> {
  const op = 'writePlots';
  if (typeof dir !== 'string' || dir === '') throw new ValueError(`${op}: Expected dir, a folder path, but received ${describe(dir)}`);
  if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name) || name.includes('..')) {
    throw new ValueError(`${op}: Expected name, a file name of letters, digits, '.', '_' or '-' (no folder), but received ${describe(name)}`);
  }
  if (options === null || typeof options !== 'object') throw new ValueError(`${op}: Expected an options object { width? } but received ${describe(options)}`);
  const svg = await renderSvg(spec);
  const png = svgToPng(svg, { width: options.width });
  await fs.promises.mkdir(dir, { recursive: true });
  const paths = { svg: nodePath.join(dir, `${name}.svg`), png: nodePath.join(dir, `${name}.png`) };
  await writeAtomic(paths.svg, svg);
  await writeAtomic(paths.png, png);
  return paths;
}

/** Options of plotRun. */
export interface PlotRunOptions extends LossCurvesOptions, WritePlotsOptions {}

/**
 * Reads the loss records of a run from runDir/metrics.jsonl ({step, split: 'train' | 'val',
 * loss} per line, other fields ignored; lines without them, blank lines and a truncated last
 * line skipped) and writes runDir/loss.svg and runDir/loss.png. A missing file or one without
 * any record is a ValueError.
 */
export async function plotRun(runDir: string, options: PlotRunOptions = {}): Promise<{ svg: string; png: string }> {
  const name = 'plotRun';
  if (typeof runDir !== 'string' || runDir === '') throw new ValueError(`${name}: Expected runDir, a folder path, but received ${describe(runDir)}`);
  const file = nodePath.join(runDir, 'metrics.jsonl');
  let text: string;
  try {
    text = await fs.promises.readFile(file, 'utf8');
  } catch (e) {
    throw new ValueError(`${name}: Expected a metrics file at ${file} but it cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const records = readLossRecords(text);
  if (records.length === 0) throw new ValueError(`${name}: Expected {step, split: 'train' | 'val', loss} records in ${file} but found none`);
  const { width, ...curves } = options;
  return writePlots(runDir, 'loss', lossCurvesSpec(records, curves), { width });
}

/** The {step, split, loss} records of metrics.jsonl text (see plotRun). */
export function readLossRecords(text: string): LossRecord[] {
  if (typeof text !== 'string') throw new ValueError(`readLossRecords: Expected the text of a metrics.jsonl file but received ${describe(text)}`);
  const out: LossRecord[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    let r: unknown;
    try {
      r = JSON.parse(line);
    } catch {
      continue;  // a truncated (last) line, or not JSON
    }
    if (r === null || typeof r !== 'object') continue;
    const { step, split, loss } = r as Record<string, unknown>;
    if (typeof step !== 'number' || !Number.isFinite(step) || (split !== 'train' && split !== 'val') || typeof loss !== 'number' || !Number.isFinite(loss)) continue;
    out.push({ step, split, loss });
  }
  return out;
}

/**
 * Writes the routing heatmap of a trace (DualRouteLM.routingTrace of a validation text) as
 * runDir/routing.svg and runDir/routing.png; tokenStrings label the positions (see
 * routingHeatmapSpec's options.tokens).
 */
export async function plotRouting(runDir: string, trace: RoutingTrace, tokenStrings?: readonly string[] | ((id: number) => string), options: WritePlotsOptions = {}): Promise<{ svg: string; png: string }> {
  if (typeof runDir !== 'string' || runDir === '') throw new ValueError(`plotRouting: Expected runDir, a folder path, but received ${describe(runDir)}`);
  return writePlots(runDir, 'routing', routingHeatmapSpec(trace, { tokens: tokenStrings }), options);
}
